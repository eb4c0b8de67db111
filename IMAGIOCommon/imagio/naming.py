"""What a segment is: its role from its terminology or its name, and its DICOM codes. The ONE place.

Algorithms take segments chosen by the user (a node and a segment ID in Slicer, a file and
``--*-segment NAME`` on the command line). Guessing what a segment is from how it is called
happens only at the edges (``imagio demo --case``, the CLI's defaults, ``imagio export-dicom``)
and only here, so every edge guesses the same way:

1. a Slicer terminology tag (``TerminologyEntry`` in a ``.seg.nrrd``: SNOMED CT category and
   type) decides when the segment has one (:func:`parse_terminology`);
2. otherwise the words of its name (``GTV-1``, ``liver_tumor``, ``Lung-Left``, ``hepaticVein``)
   are matched against :data:`ROLE_WORDS` (:func:`role_from_name`).

Codes are taken from pydicom's copy of the DICOM code dictionary (``pydicom.sr.codedict``),
never typed in by hand, so a code here is the one DICOM defines for that meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ImagioError

#: Roles, most specific first. ``lesion`` is any tumour-like target (GTV, tumour, nodule, mass,
#: metastasis, ...); ``ablation_zone`` wins over ``lesion`` ("ablation zone of tumour 1").
ROLES = ("ablation_zone", "planning_volume", "lesion", "airway_wall", "airway", "vessel", "lung", "liver", "body",
         "bone", "spinal_cord", "heart")

#: Name words that make a role (matched against whole words of the name, lower case).
ROLE_WORDS: dict[str, tuple[str, ...]] = {
    "ablation_zone": ("ablation", "ablated", "coagulation", "zone", "necrosis"),
    # PTV/CTV/ITV are planning volumes (tumour + margins), not the tumour itself
    "planning_volume": ("ptv", "ctv", "itv", "planning"),
    "lesion": ("gtv", "tumor", "tumour", "tumors", "tumours", "lesion", "lesions", "nodule", "nodules", "mass",
               "metastasis", "metastases", "mets", "met", "hcc", "carcinoma", "cancer", "neoplasm", "sarcoma",
               "malignancy", "target"),
    "airway_wall": (),  # by the two words "airway" + "wall" (see role_from_name)
    "airway": ("airway", "airways", "bronchus", "bronchi", "bronchial", "trachea", "bronchialtree"),
    "lung": ("lung", "lungs", "pulmonary", "pulmo"),
    "liver": ("liver", "hepar", "hepatic"),
    "vessel": ("vessel", "vessels", "vein", "veins", "artery", "arteries", "portal", "cava", "aorta", "ivc",
               "vasculature", "vascular", "hepaticvein", "hepaticartery", "portalvein"),
    "body": ("body", "skin", "external", "outline", "patient"),
    "bone": ("rib", "ribs", "bone", "bones", "vertebra", "vertebrae", "spine", "sternum", "scapula"),
    "spinal_cord": ("cord", "spinalcord"),
    "heart": ("heart", "cardiac"),
}

#: Which organ a lesion name may carry ("liver_tumor", "lung nodule").
SITE_WORDS = {"lung": ROLE_WORDS["lung"], "liver": ("liver", "hepatic", "hcc", "hepatocellular")}

SITES = ("lung", "liver", "soft_tissue")


@dataclass(frozen=True)
class Coded:
    """One coded concept: (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.value, self.scheme, self.meaning)


@dataclass(frozen=True)
class Terminology:
    """SNOMED CT (or other) category, type and optional type modifier of a segment."""

    category: Coded
    type: Coded
    modifier: Coded | None = None
    source: str = "name"  # "terminology tag" or "name" or "default"


def _sct(keyword: str) -> Coded:
    from pydicom.sr.codedict import codes

    c = getattr(codes.SCT, keyword)
    return Coded(str(c.value), str(c.scheme_designator), str(c.meaning))


def words(name: str) -> list[str]:
    """Lower-case words of a segment name: splits on non-letters and camelCase ('hepaticVein' -> hepatic, vein)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name))
    return [w for w in re.split(r"[^a-z]+", spaced.lower()) if w]


def role_from_name(name: str) -> str | None:
    """The role of a segment from its name alone, or None when the name says nothing we know."""
    ws = set(words(name))
    joined = "".join(words(name))
    if not ws:
        return None
    if "airway" in ws and "wall" in ws:
        return "airway_wall"
    if "spinal" in ws and "cord" in ws:
        return "spinal_cord"
    for role in ROLES:
        vocab = ROLE_WORDS[role]
        if ws & set(vocab) or (joined in vocab):
            return role
    return None


# ------------------------------------------------------------------------------------ terminology
def _parse_code(text: str) -> Coded | None:
    parts = text.split("^")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return None
    return Coded(parts[1].strip(), parts[0].strip(), parts[2].strip())


def parse_terminology(tags) -> Terminology | None:
    """Category/type/modifier from Slicer's segment tags, or None when there is no usable entry.

    ``tags`` is the ``Segment<N>_Tags`` value of a ``.seg.nrrd`` ("key:value|key:value|"), or a dict
    with a ``TerminologyEntry`` (or ``terminology``) key. The entry reads
    ``context~catScheme^catCode^catMeaning~typeScheme^typeCode^typeMeaning~modScheme^modCode^modMeaning~...``.
    """
    if not tags:
        return None
    entry = None
    if isinstance(tags, dict):
        entry = tags.get("TerminologyEntry")
        if entry is None and tags.get("terminology"):
            return parse_terminology(tags["terminology"])
    else:
        for item in str(tags).split("|"):
            key, _, value = item.partition(":")
            if key.strip() == "TerminologyEntry":
                entry = value
    if not entry:
        return None
    fields = str(entry).split("~")
    if len(fields) < 3:
        return None
    category, type_ = _parse_code(fields[1]), _parse_code(fields[2])
    if category is None or type_ is None:
        return None
    modifier = _parse_code(fields[3]) if len(fields) > 3 else None
    return Terminology(category, type_, modifier, "terminology tag")


def terminology_tag(term: Terminology) -> str:
    """Slicer's ``TerminologyEntry`` value for ``term`` (the inverse of :func:`parse_terminology`)."""
    def code(c):
        return f"{c.scheme}^{c.value}^{c.meaning}" if c is not None else "^^"

    return ("Segmentation category and type - 3D Slicer General Anatomy list"
            f"~{code(term.category)}~{code(term.type)}~{code(term.modifier)}"
            "~Anatomic codes - DICOM master list~^^~^^")


#: SNOMED CT type codes (pydicom keywords) per role/word; lesion words first.
_LESION_TYPES = (("metastasis", "NeoplasmMetastatic"), ("metastases", "NeoplasmMetastatic"),
                 ("mets", "NeoplasmMetastatic"), ("met", "NeoplasmMetastatic"), ("nodule", "Nodule"),
                 ("nodules", "Nodule"), ("mass", "Mass"), ("lesion", "Lesion"), ("lesions", "Lesion"),
                 ("sarcoma", "Sarcoma"))
_VESSEL_TYPES = (("portal", "PortalVein"), ("portalvein", "PortalVein"), ("artery", "HepaticArtery"),
                 ("hepaticartery", "HepaticArtery"), ("cava", "InferiorVenaCava"), ("ivc", "InferiorVenaCava"),
                 ("aorta", "Aorta"), ("vein", "HepaticVein"), ("hepaticvein", "HepaticVein"))


def terminology_from_name(name: str) -> Terminology:
    """The documented mapping of our common names to SNOMED CT category and type.

    | role | category | type |
    |---|---|---|
    | lesion (GTV, tumour, ...) | Morphologically Abnormal Structure | Neoplasm (Nodule, Mass, Lesion, Metastatic neoplasm, Sarcoma when the name says so) |
    | ablation zone | Morphologically Abnormal Structure | Necrosis |
    | liver | Anatomical Structure | Liver |
    | lung | Anatomical Structure | Lung (modifier Right/Left from the name) |
    | airway (+ wall) | Anatomical Structure | Airway structure (Trachea, Bronchus when named) |
    | vessels | Anatomical Structure | Blood vessel (Hepatic vein, Portal vein, Hepatic artery, Inferior vena cava, Aorta when named; a hepatic artery only with "artery" + a liver word) |
    | body | Anatomical Structure | Entire body |
    | bone | Anatomical Structure | Bone (Rib, Vertebra when named) |
    | spinal cord, heart | Anatomical Structure | Spinal cord, Heart |
    | anything else | Tissue | Tissue (Slicer's default: unspecified) |
    """
    role = role_from_name(name)
    ws = words(name)
    wset = set(ws)
    abnormal, anatomical = _sct("MorphologicallyAbnormalStructure"), _sct("AnatomicalStructure")
    if role == "lesion":
        kw = next((k for w, k in _LESION_TYPES if w in wset), "Neoplasm")
        return Terminology(abnormal, _sct(kw))
    if role == "ablation_zone":
        return Terminology(abnormal, _sct("Necrosis"))
    if role == "liver":
        return Terminology(anatomical, _sct("Liver"))
    if role == "lung":
        side = "Right" if wset & {"right", "r", "rt"} else "Left" if wset & {"left", "l", "lt"} else None
        return Terminology(anatomical, _sct("Lung"), _sct(side) if side else None)
    if role in ("airway", "airway_wall"):
        kw = "Trachea" if "trachea" in wset else "Bronchus" if wset & {"bronchus", "bronchi"} else "AirwayStructure"
        return Terminology(anatomical, _sct(kw))
    if role == "vessel":
        joined = "".join(ws)
        kw = "BloodVessel"
        for w, k in _VESSEL_TYPES:
            if w in wset or w == joined:
                kw = k
                break
        if kw in ("HepaticVein", "HepaticArtery") and not (wset & {"hepatic", "liver", "hepaticvein", "hepaticartery"}
                                                           or joined in ("hepaticvein", "hepaticartery")):
            kw = "BloodVessel"
        return Terminology(anatomical, _sct(kw))
    if role == "body":
        return Terminology(anatomical, _sct("EntireBody"))
    if role == "bone":
        kw = "Rib" if wset & {"rib", "ribs"} else "Vertebra" if wset & {"vertebra", "vertebrae"} else "Bone"
        return Terminology(anatomical, _sct(kw))
    if role == "spinal_cord":
        return Terminology(anatomical, _sct("SpinalCord"))
    if role == "heart":
        return Terminology(anatomical, _sct("Heart"))
    return Terminology(_sct("Tissue"), _sct("Tissue"), source="default")


_TISSUE = "85756007"


def _informative(term: Terminology | None) -> Terminology | None:
    """None for Slicer's default entry (category Tissue, type Tissue: every new segment has it, it says nothing)."""
    if term is None or (term.category.value == _TISSUE and term.type.value == _TISSUE and term.modifier is None):
        return None
    return term


def terminology_of(segment) -> Terminology:
    """The segment's terminology: its tag when it says something (not Slicer's default Tissue/Tissue), else its name."""
    term = _informative(parse_terminology(getattr(segment, "tags", None)))
    return term if term is not None else terminology_from_name(segment.name)


#: Roles of SNOMED CT type codes (for segments that carry a terminology tag).
_ROLE_OF_TYPE = {
    "108369006": "lesion", "4147007": "lesion", "27925004": "lesion", "52988006": "lesion", "14799000": "lesion",
    "128462008": "lesion", "1187396000": "lesion", "228791009": "lesion", "786838002": "lesion", "6574001": "ablation_zone",
    "10200004": "liver", "39607008": "lung", "89187006": "airway", "44567001": "airway", "955009": "airway",
    "59820001": "vessel", "8993003": "vessel", "32764006": "vessel", "76015000": "vessel", "64131007": "vessel",
    "15825003": "vessel", "38266002": "body", "39937001": "body", "113197003": "bone", "272673000": "bone",
    "51282000": "bone", "2748008": "spinal_cord", "80891009": "heart",
}
_LESION_CATEGORY = "49755003"  # Morphologically Abnormal Structure


def role_of(segment) -> str | None:
    """The role of a segment: from its terminology tag when it has one we know, else from its name."""
    term = _informative(parse_terminology(getattr(segment, "tags", None)))
    if term is not None:
        role = _ROLE_OF_TYPE.get(term.type.value)
        if role is None and term.category.value == _LESION_CATEGORY and role_from_name(segment.name) != "ablation_zone":
            role = "lesion"
        if role is not None:
            return role
    return role_from_name(segment.name)


def site_from_name(name: str) -> str | None:
    """'lung' or 'liver' when a lesion's name says where it is ('liver_tumor', 'lung nodule'), else None."""
    ws = set(words(name))
    for site, vocab in SITE_WORDS.items():
        if ws & set(vocab):
            return site
    return None


# ------------------------------------------------------------------------------------ choosing
def lesions(segments) -> list:
    """The tumour-like segments (role ``lesion``), in the given order."""
    return [s for s in _values(segments) if role_of(s) == "lesion"]


def with_role(segments, role: str) -> list:
    return [s for s in _values(segments) if role_of(s) == role]


def _values(segments):
    return list(segments.values()) if isinstance(segments, dict) else list(segments)


def choose_tumor(segments, name: str | None = None):
    """The target lesion: the segment called ``name`` (case-insensitive), else the one lesion-like segment.

    Several lesion-like segments: the largest one (its choice is reported by the caller).
    Raises ImagioError when ``name`` is not there; returns None when nothing looks like a lesion.
    """
    segs = _values(segments)
    if name is not None:
        for s in segs:
            if s.name.lower() == str(name).lower():
                return s
        raise ImagioError(f"No segment named '{name}'", "Segments: " + ", ".join(s.name for s in segs))
    found = [s for s in lesions(segs) if s.voxel_count() > 0]
    if not found:
        return None
    return max(found, key=lambda s: s.voxel_count())


#: Aerated lung on CT: below this (HU) in the shell around a lesion.
AERATED_LUNG_HU = -500.0
#: A lesion is in the lung when at least this share of the shell around it is lung (segment or aerated CT).
LUNG_SHELL_SHARE = 0.25
#: A lesion is in the liver when at least this share of it (or of the shell around it) lies in a liver segment.
LIVER_SHARE = 0.5
#: Thickness of the shell around a lesion that is looked at (mm).
SHELL_MM = 5.0


def lesion_site(lesion, segments=(), ct=None) -> tuple[str, str]:
    """Where a lesion is: ``("lung" | "liver" | "soft_tissue", why)``.

    In this order: the lesion's name ('liver_tumor', 'lung nodule'); a liver segment holding at least
    half of the lesion or of the 5 mm shell around it; lung segments, or aerated CT voxels (below
    -500 HU), making up at least a quarter of that shell; otherwise soft tissue. The reason is
    written into the demo summary so that a wrong guess is visible (and ``--tumor-segment`` or a
    terminology tag fixes it).
    """
    import numpy as np
    import SimpleITK as sitk

    from .geometry import same_grid, signed_distance_mm

    named = site_from_name(lesion.name)
    if named is not None:
        return named, f"the segment name '{lesion.name}' says {named}"
    full = sitk.GetArrayViewFromImage(lesion.mask) > 0
    if not full.any():
        return "soft_tissue", "the lesion is empty"
    # look only at a box around the lesion (the shell fits in it)
    kji = np.argwhere(full)
    pad = np.ceil(SHELL_MM / np.array(lesion.mask.GetSpacing())[::-1]).astype(int) + 1
    lo = np.maximum(kji.min(axis=0) - pad, 0)
    hi = np.minimum(kji.max(axis=0) + pad + 1, np.array(full.shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    arr = full[box]
    dist = signed_distance_mm(arr, lesion.mask.GetSpacing())
    shell = (dist > 0) & (dist <= SHELL_MM)
    n_shell = max(int(shell.sum()), 1)
    others = [s for s in _values(segments) if s is not lesion and same_grid(s.mask, lesion.mask)]
    for s in others:
        if role_of(s) == "liver":
            m = sitk.GetArrayViewFromImage(s.mask)[box] > 0
            inside = float((m & arr).sum()) / float(arr.sum())
            around = float((m & shell).sum()) / n_shell
            if max(inside, around) >= LIVER_SHARE:
                return "liver", f"{100 * max(inside, around):.0f} % of it or of the {SHELL_MM:g} mm around it lies in '{s.name}'"
    lung = np.zeros(arr.shape, bool)
    lung_names = []
    for s in others:
        if role_of(s) == "lung":
            lung |= sitk.GetArrayViewFromImage(s.mask)[box] > 0
            lung_names.append(s.name)
    if lung_names:
        share = float((lung & shell).sum()) / n_shell
        if share >= LUNG_SHELL_SHARE:
            return "lung", f"{100 * share:.0f} % of the {SHELL_MM:g} mm around it lies in {', '.join(lung_names)}"
    if ct is not None and same_grid(ct, lesion.mask):
        hu = sitk.GetArrayViewFromImage(ct)[box]
        share = float((hu[shell] < AERATED_LUNG_HU).sum()) / n_shell
        if share >= LUNG_SHELL_SHARE:
            return "lung", f"{100 * share:.0f} % of the {SHELL_MM:g} mm around it is aerated lung (< {AERATED_LUNG_HU:g} HU)"
        return "soft_tissue", (f"only {100 * share:.0f} % of the {SHELL_MM:g} mm around it is aerated lung and no liver "
                               "segment holds it")
    return "soft_tissue", "no lung or liver segment holds it"


def apply_renames(segments, renames) -> None:
    """``OLD=NEW`` renames (case-insensitive OLD); every OLD must exist and the new names must stay unique."""
    segs = _values(segments)
    for text in renames:
        old, sep, new = str(text).partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise ImagioError(f"--rename '{text}' is not OLD=NEW", "Write it as OLD=NEW, e.g. --rename GTV-1=lung_tumor")
        hits = [s for s in segs if s.name.lower() == old.lower()]
        if not hits:
            raise ImagioError(f"--rename: no segment named '{old}'", "Segments: " + ", ".join(s.name for s in segs))
        if any(s.name.lower() == new.lower() for s in segs if s not in hits):
            raise ImagioError(f"--rename: a segment named '{new}' exists already", "Choose another new name")
        for s in hits:
            s.name = new


__all__ = ["apply_renames", "lesion_site", "ROLES", "ROLE_WORDS", "SITES", "Coded", "Terminology", "words", "role_from_name", "role_of",
           "parse_terminology", "terminology_tag", "terminology_from_name", "terminology_of", "site_from_name",
           "lesions", "with_role", "choose_tumor"]
