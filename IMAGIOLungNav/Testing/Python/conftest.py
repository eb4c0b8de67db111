"""Fixtures of the IMAGIOLungNav tests: the analytic Y and the phantom."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _lungnav_synth import make_y  # noqa: E402


@pytest.fixture(scope="session")
def y_mask():
    return make_y()


@pytest.fixture(scope="session")
def phantom():
    from imagio.phantom import make_phantom

    return make_phantom(0)
