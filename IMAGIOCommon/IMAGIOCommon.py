"""IMAGIOCommon: a hidden Slicer module that carries IMAGIO's shared core (the ``imagio`` package).

Slicer puts each scripted module's folder on ``sys.path``, so loading this module makes ``import
imagio`` work for the four IMAGIO modules, exactly as ``pip install`` does outside Slicer. It also:

* says clearly, at start-up, when this Slicer is older than IMAGIO supports (the other modules would
  fail with obscure errors on Slicer 5.8's Python 3.9); this file itself stays Python 3.9 syntax;
* registers the IMAGIO digital phantom as sample data (category "IMAGIO"): generated on this
  computer when the user asks for it, nothing is downloaded.
"""

import logging
import sys

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

#: Oldest supported 3D Slicer (major, minor): Python 3.12, numpy 2 and scipy are bundled from 5.10.
MINIMUM_SLICER = (5, 10)
SAMPLE_CATEGORY = "IMAGIO"
SAMPLE_NAME = "IMAGIOPhantom"


def unsupportedSlicerMessage(app=None) -> str:
    """Empty when this Slicer is supported; otherwise the message to show (what is wrong, what to do)."""
    app = app if app is not None else slicer.app
    have = (int(app.majorVersion), int(app.minorVersion))
    if have >= MINIMUM_SLICER:
        return ""
    need = f"{MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]}"
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return (f"IMAGIO needs 3D Slicer {need} or later; this is Slicer {app.applicationVersion} with Python {python}. "
            f"The IMAGIO modules will not work in it. Install 3D Slicer {need} or later from "
            "https://download.slicer.org and install IMAGIO there.")


class IMAGIOCommon(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "IMAGIO Common"
        self.parent.categories = ["IGT.IMAGIO"]
        self.parent.dependencies = []
        self.parent.contributors = ["IMAGIO developers (imagio-slicer project)"]
        self.parent.helpText = (
            "Shared code of the IMAGIO modules: scene access, RAS/LPS geometry, image and segmentation I/O, "
            "background jobs, scene bundles, the digital phantom (Sample Data, category IMAGIO) and reports. "
            "Needs 3D Slicer 5.10 or later. See "
            "<a href='https://github.com/imagio-slicer/SlicerIMAGIO'>the documentation</a>."
        )
        self.parent.acknowledgementText = "Built on 3D Slicer, VTK, SimpleITK, pydicom and ONNX Runtime."
        self.parent.hidden = True
        problem = unsupportedSlicerMessage()
        if problem:
            logging.error(problem)
            slicer.app.connect("startupCompleted()", lambda: slicer.util.errorDisplay(problem))
            return
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData(sampleDataLogic=None) -> None:
    """Add the phantom to the Sample Data module (category "IMAGIO"); ``sampleDataLogic`` defaults to Slicer's."""
    import os

    if sampleDataLogic is None:
        import SampleData

        sampleDataLogic = SampleData.SampleDataLogic
    icons = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    sampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(icons, SAMPLE_NAME + ".png"),
        uris=[None],  # nothing to download: loadPhantom makes it here
        fileNames=["IMAGIOPhantom-seed0"],
        nodeNames=["IMAGIO phantom CT"],
        loadFiles=[False],
        customDownloader=loadPhantom,
    )


def loadPhantom(source=None, scene=None, seed: int = 0):
    """Make the IMAGIO phantom (chest and liver CT with its true segments) and add it to the scene.

    Returns ``[ct_volume_node, truth_segmentation_node]``; the CT is shown in the slice views.
    Every IMAGIO module can be tried on it: its lung nodule (Planning, LungNav), liver tumour and
    hepatic vessels (AblationZone, Margin), airway (LungNav).
    """
    from imagio.mrml import segmentation_node_from_segments, volume_node_from_image
    from imagio.phantom import make_phantom

    scene = scene if scene is not None else slicer.mrmlScene
    with slicer.util.WaitCursor():
        ph = make_phantom(seed)
        ct = volume_node_from_image(scene, ph.ct, "IMAGIO phantom CT")
        truth = segmentation_node_from_segments(scene, list(ph.segments.values()), "IMAGIO phantom truth", ct)
    if scene is slicer.mrmlScene:
        slicer.util.setSliceViewerLayers(background=ct, fit=True)
    return [ct, truth]


class IMAGIOCommonTest(ScriptedLoadableModuleTest):
    """The shared core inside Slicer: the phantom sample data and the version check."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_sample_loads()
        self.setUp()
        self.test_version_check()

    def test_phantom_sample_loads(self):
        import numpy as np

        from imagio.mrml import image_from_volume_node, segments_from_segmentation_node

        self.delayDisplay("Generating the IMAGIO phantom")
        ct, truth = loadPhantom()
        image = image_from_volume_node(ct)
        self.assertEqual(image.GetSize(), (288, 208, 224))
        self.assertTrue(np.allclose(image.GetSpacing(), (1.0, 1.0, 1.25)))
        segments = {s.name: s for s in segments_from_segmentation_node(truth, ct)}
        for name in ("airway_lumen", "lung_nodule", "liver_tumor", "hepatic_vessels"):
            self.assertGreater(segments[name].voxel_count(), 0, name)
        self.delayDisplay("Phantom test passed")

    def test_version_check(self):
        class Old:
            majorVersion, minorVersion, applicationVersion = 5, 8, "5.8.1"

        message = unsupportedSlicerMessage(Old())
        self.assertIn("3D Slicer 5.10 or later", message)
        self.assertIn("5.8.1", message)
        self.assertEqual(unsupportedSlicerMessage(slicer.app), "")
