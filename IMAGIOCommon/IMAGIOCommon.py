"""IMAGIOCommon: a hidden Slicer module that carries IMAGIO's shared core (the ``imagio`` package).

Slicer puts each scripted module's folder on ``sys.path``, so loading this
module makes ``import imagio`` work for the four IMAGIO modules, exactly as
``pip install`` does outside Slicer.
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class IMAGIOCommon(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Common"
        self.parent.categories = ["IMAGIO"]
        self.parent.dependencies = []
        self.parent.contributors = ["IMAGIO developers"]
        self.parent.helpText = (
            "Shared code of the IMAGIO modules: scene access, RAS/LPS geometry, image and segmentation I/O, "
            "scene bundles, the digital phantom and reports. See "
            "<a href='https://github.com/imagio-slicer/SlicerIMAGIO'>the documentation</a>."
        )
        self.parent.acknowledgementText = "Built on 3D Slicer, VTK, SimpleITK, pydicom and ONNX Runtime."
        self.parent.hidden = True
