"""The extension's metadata as the Slicer Extensions Index checks it (CMakeLists.txt, IMAGIO.json, LICENSE).

The rules are those of the Index's own checker and schema (Slicer/ExtensionsIndex at 07f1d1b, August 2026):
``scripts/check_description_files.py`` (accepted categories, project name = description file name,
icon and screenshot URLs that are images, a licence file in the root, repository name starting with
"Slicer") and ``schemas/slicer-extension-catalog-entry-schema-v1.0.2.json`` (the newest catalog-entry
schema, also in Slicer's ``Schemas/`` folder). The raw URLs are checked against this repository: each
names a file that exists here and is a PNG image, so it resolves once the repository is published.
"""

import json
import re
import tomllib
from pathlib import Path

import pytest
import slicer

from imagio.testing_slicer import MODULES

ROOT = Path(__file__).resolve().parents[2]

#: ACCEPTED_EXTENSION_CATEGORIES of check_description_files.py (ExtensionsIndex 07f1d1b)
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda", "Converters",
    "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation", "Filtering",
    "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT", "Informatics",
    "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology",
    "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration", "Remote",
    "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression", "Shape Visualization",
    "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely", "Surface Models", "SurfaceLearner",
    "Tomographic Reconstruction", "Tracking", "Tractography", "Training", "Ultrasound", "Utilities",
    "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools", "Web System Tools", "Wizards",
}
#: the newest catalog-entry schema and its properties (additionalProperties: false; required keys)
SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
SCHEMA_PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                     "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
                     "enabled": bool, "tier": int}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
#: check_license_file's names
LICENSE_NAMES = ["LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt"]
CONTRIBUTOR = re.compile(r"^[^()]+ \([^()]+\)$")


def _cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text()


def _cmake_var(name: str) -> str:
    m = re.search(rf'set\s*\({name}\s*"([^"]+)"\s*\)', _cmake())
    assert m, f"CMakeLists.txt sets no {name}"
    return m.group(1)


def _entry() -> dict:
    return json.loads((ROOT / "IMAGIO.json").read_text())


def _repo_file(url: str) -> Path:
    """The file of this repository that a raw.githubusercontent.com URL of the homepage's repository names."""
    home = _cmake_var("EXTENSION_HOMEPAGE")
    owner_repo = home.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/{_entry()['scm_revision']}/"
    assert url.startswith(prefix), f"{url} is not a raw URL of {home} at {_entry()['scm_revision']}"
    return ROOT / url.removeprefix(prefix)


def test_category_is_accepted_and_the_same_in_cmake_and_the_catalog_entry():
    category = _cmake_var("EXTENSION_CATEGORY")
    assert category in ACCEPTED_CATEGORIES
    assert _entry()["category"] == category


def test_catalog_entry_follows_the_current_schema():
    entry = _entry()
    assert entry["$schema"] == SCHEMA
    assert SCHEMA_REQUIRED <= set(entry)
    unknown = set(entry) - set(SCHEMA_PROPERTIES)
    assert not unknown, f"keys the schema does not allow: {unknown}"
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_PROPERTIES[key]), key
    assert 1 <= entry["tier"] <= 5
    assert b"\r" not in (ROOT / "IMAGIO.json").read_bytes()  # the Index's LF-only rule


def test_catalog_entry_dependencies_match_cmake():
    """The Index's checklist: the description file agrees with the top-level CMakeLists.txt (dependencies)."""
    depends = _cmake_var("EXTENSION_DEPENDS")
    assert _entry()["build_dependencies"] == ([] if depends == "NA" else depends.split())
    modules = re.findall(r"^add_subdirectory\((\w+)\)", _cmake(), re.MULTILINE)
    assert tuple(modules) == MODULES  # every module is built, IMAGIOCommon first


def test_names_match_the_index_rules():
    project = re.search(r"project\s*\(\s*([^\s)]+)", _cmake(), re.IGNORECASE).group(1)
    assert (ROOT / f"{project}.json").is_file()  # the description file is named after the project
    repo = _entry()["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert repo.startswith("Slicer") and not project.lower().startswith("slicer")
    assert _entry()["scm_url"].removesuffix(".git") == _cmake_var("EXTENSION_HOMEPAGE")


@pytest.mark.parametrize("var", ["EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"])
def test_icon_and_screenshot_urls_name_png_files_of_this_repository(var):
    urls = _cmake_var(var).split()
    assert urls
    for url in urls:
        path = _repo_file(url)
        assert path.is_file(), f"{var}: {url} names {path.relative_to(ROOT)}, which does not exist"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
        assert len(data) < 400_000, f"{path.name} is {len(data)} bytes; keep pictures small"


def test_licence_file_in_the_root_is_the_declared_bsd_3_clause():
    found = [n for n in LICENSE_NAMES if (ROOT / n).is_file()]
    assert found, "no licence file in the repository root"
    text = (ROOT / found[0]).read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    # PEP 639: an SPDX expression and the licence files (the TOML table form is deprecated by setuptools 77+,
    # which printed a notice on every install); no licence classifier beside it (setuptools refuses both)
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == [found[0]]
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    assert text.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder nor the names of its" in text  # the third clause


def test_contributors_in_cmake_are_name_and_organization():
    contributors = [c.strip() for c in _cmake_var("EXTENSION_CONTRIBUTORS").split(",")]
    assert all(CONTRIBUTOR.match(c) for c in contributors), contributors


def test_minimum_slicer_version_is_stated():
    assert re.search(r"find_package\(Slicer 5\.10 REQUIRED\)", _cmake())
    assert "Slicer 5.10 or later" in _cmake_var("EXTENSION_DESCRIPTION")
    assert "Slicer >= 5.10" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", MODULES)
def test_module_category_is_under_the_extension_category_and_links_the_homepage(slicer_app, name):
    slicer_app.load_module(name)
    parent = getattr(slicer.modules, name.lower())
    assert parent.categories == [f"{_cmake_var('EXTENSION_CATEGORY')}.IMAGIO"]
    links = re.findall(r"href='([^']+)'", parent.helpText)
    assert links and all(link == _cmake_var("EXTENSION_HOMEPAGE") for link in links), links
