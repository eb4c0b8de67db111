"""Fixtures of the Slicer-side tests: Slicer 5.10's framework over slicer-core (see README.md here)."""

import pytest

from imagio.testing_slicer import SlicerHarness


@pytest.fixture
def slicer_app():
    """A fresh harness: real framework files and scene, stand-ins for Qt/CTK/PythonQt; IMAGIOCommon loaded."""
    with SlicerHarness() as h:
        h.load_module("IMAGIOCommon")
        yield h
