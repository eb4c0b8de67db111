"""Segment roles, terminology and tumour sites: the one place where segments are recognised (imagio.naming)."""

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import io, naming
from imagio.testing import data_path


@pytest.mark.parametrize(("name", "role", "type_code"), [
    ("GTV-1", "lesion", "108369006"),            # Neoplasm
    ("GTV_Mass_CT", "lesion", "4147007"),        # Mass
    ("liver_tumor", "lesion", "108369006"),
    ("lung_nodule", "lesion", "27925004"),       # Nodule
    ("metastasis 2", "lesion", "14799000"),      # Neoplasm, metastatic
    ("Lung-Left", "lung", "39607008"),
    ("lungs", "lung", "39607008"),
    ("hepaticVein", "vessel", "8993003"),
    ("portalvein", "vessel", "32764006"),
    ("hepatic_vessels", "vessel", "59820001"),   # Blood vessel, not the liver
    ("airway_lumen", "airway", "89187006"),
    ("airway_wall", "airway_wall", "89187006"),
    ("Spinal-Cord", "spinal_cord", "2748008"),
    ("ribs", "bone", "113197003"),
    ("planned_ablation_zone", "ablation_zone", "6574001"),   # Necrosis, not a tumour
    ("PTV", "planning_volume", "85756007"),      # a planning volume is no tumour
    ("Segment_1", None, "85756007"),             # unknown: Slicer's default "Tissue"
])
def test_roles_and_codes_from_names(name, role, type_code):
    assert naming.role_from_name(name) == role
    term = naming.terminology_from_name(name)
    assert term.type.value == type_code and term.type.scheme == "SCT"
    assert term.category.scheme == "SCT"


def test_laterality_modifier():
    assert naming.terminology_from_name("Lung-Right").modifier.meaning == "Right"
    assert naming.terminology_from_name("Lung-Left").modifier.value == "7771000"
    assert naming.terminology_from_name("lungs").modifier is None


def test_terminology_tag_wins_over_name_and_round_trips():
    tag = ("Segmentation.Status:inprogress|TerminologyEntry:Segmentation category and type - 3D Slicer General "
           "Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master "
           "list~^^~^^|")
    ref = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    seg = io.Segment("Segment_7", ref, tags={"terminology": tag})
    term = naming.terminology_of(seg)
    assert (term.type.value, term.type.meaning, term.source) == ("10200004", "Liver", "terminology tag")
    assert naming.role_of(seg) == "liver"  # the name says nothing, the tag says liver
    again = naming.parse_terminology("TerminologyEntry:" + naming.terminology_tag(term))
    assert again.category == term.category and again.type == term.type


def test_choose_tumor_by_name_or_largest():
    ref = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    small, big = sitk.Image(ref), sitk.Image(ref)
    small[1, 1, 1] = 1
    for i in range(5):
        big[i, 2, 2] = 1
    segs = [io.Segment("liver", ref), io.Segment("nodule a", small), io.Segment("GTV", big)]
    assert naming.choose_tumor(segs).name == "GTV"
    assert naming.choose_tumor(segs, "NODULE A").name == "nodule a"
    with pytest.raises(Exception, match="No segment named"):
        naming.choose_tumor(segs, "tumour 3")
    assert naming.choose_tumor([io.Segment("liver", big)]) is None


def test_site_of_real_lesions():
    """LUNG1-001's GTV (from its lung contours), LIDC-0314's nodule (from the aerated CT around it),
    a Med-MPD liver tumour (inside its liver mask) and a sarcoma (neither): the four sites we meet."""
    lung1 = data_path("chest-lung1-001/derived_labels")
    segs = {n: io.read_segmentation(lung1 / f"{n}.seg.nrrd")[0] for n in ("GTV-1", "Lung-Left", "Lung-Right")}
    site, why = naming.lesion_site(segs["GTV-1"], segs.values())
    assert site == "lung" and "Lung-" in why

    ct = io.read_image(data_path("chest-lidc0314/ct.nrrd"))
    nodule = io.read_segmentation(data_path("chest-lidc0314/nodule_consensus50.seg.nrrd"), reference=ct)[0]
    assert naming.role_of(nodule) == "lesion"
    site, why = naming.lesion_site(nodule, [], ct)
    assert site == "lung" and "aerated" in why

    liver = io.read_segmentation(data_path("medmpd-liver-p1/liver.nii.gz"))[0]
    tumour = io.read_segmentation(data_path("medmpd-liver-p1/nodule.nii.gz"), reference=liver.mask)[0]
    assert naming.role_of(tumour) == "lesion"
    site, why = naming.lesion_site(tumour, [liver, tumour])
    assert site == "liver" and "'liver'" in why

    sts = data_path("sarcoma-sts001")
    sct = io.read_image(sts / "dicom" / "image")
    gtv = io.read_segmentation(sts / "dicom" / "mask" / "RS.dcm", reference=sct)[0]
    assert gtv.name == "GTV_Mass_CT" and naming.role_of(gtv) == "lesion"
    site, why = naming.lesion_site(gtv, [gtv], sct)
    assert site == "soft_tissue", why
    # the same mask called a liver tumour is taken at its word
    renamed = io.Segment("liver tumour", gtv.mask)
    assert naming.lesion_site(renamed, [], sct)[0] == "liver"


def test_site_from_ct_alone_on_a_synthetic_lung():
    """A lesion surrounded by -850 HU is in the lung; the same lesion in 40 HU tissue is not."""
    arr = np.full((40, 40, 40), -850, np.int16)
    les = np.zeros(arr.shape, np.uint8)
    les[15:25, 15:25, 15:25] = 1
    ct = sitk.GetImageFromArray(arr)
    mask = sitk.GetImageFromArray(les)
    seg = io.Segment("lesion", mask)
    assert naming.lesion_site(seg, [], ct)[0] == "lung"
    assert naming.lesion_site(seg, [], sitk.GetImageFromArray(np.full_like(arr, 40)))[0] == "soft_tissue"


def test_terminology_survives_writing_and_reading(tmp_path):
    """A terminology tag read from a .seg.nrrd goes through the scene and `write_segmentation` unchanged, so
    `convert` and the demo keep what a user coded in Slicer."""
    tag = ("TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^"
           "Morphologically Abnormal Structure~SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~^^~^^|")
    mask = sitk.Image([6, 6, 6], sitk.sitkUInt8)
    mask[2, 3, 3] = 1
    io.write_segmentation(tmp_path / "a.seg.nrrd", [io.Segment("Segment_1", mask, (1, 0, 0), tags={"terminology": tag})])
    back = io.read_segmentation(tmp_path / "a.seg.nrrd")[0]
    assert naming.terminology_of(back).type.meaning == "Mass" and naming.role_of(back) == "lesion"
