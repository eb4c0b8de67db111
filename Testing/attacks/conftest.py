"""Shared pieces of the attack suite: run `imagio` as a user does, and check the promises of a refusal.

A refused attack must end with exit status 2 and exactly one line ``imagio: error: ...`` on stderr (no
traceback, no raw ITK/GDCM/VTK output), write nothing (no --out, no staging folder left beside it) and
leave every input byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

RAW_MARKERS = ("Traceback", "WARNING: In ", "ERROR: In ", "itk::", "MetaImage:", "gdcm", "vtkDebugLeaks",
               "RuntimeWarning", "UserWarning")


def run_imagio(*args, env=None, timeout=300, cwd=None):
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "imagio.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=cwd)


def digest(*paths) -> dict:
    """sha256 of every regular file under ``paths`` (FIFOs and devices are listed, never opened)."""
    out = {}
    for base in paths:
        base = Path(base)
        items = [base] if not base.is_dir() else sorted(base.rglob("*"))
        for p in items:
            if p.is_symlink() or not p.exists():
                out[str(p)] = "link" if p.is_symlink() else "missing"
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif not p.is_dir():
                out[str(p)] = "special"
    return out


def no_output(out: Path) -> None:
    assert not os.path.lexists(out), f"{out} was written"
    if out.parent.is_dir():
        left = [p.name for p in out.parent.iterdir() if ".imagio-staging-" in p.name or ".imagio-old-" in p.name]
        assert not left, f"staging left behind: {left}"


def assert_refused(r, out: Path, needle: str, before: dict, *inputs) -> str:
    """The promises of a refusal; returns the error line."""
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert len(err) == 1 and err[0].startswith("imagio: error: "), r.stderr[-3000:]
    assert needle.lower() in err[0].lower(), err[0]
    assert not any(m in r.stderr for m in RAW_MARKERS), r.stderr
    no_output(out)
    assert digest(*inputs) == before, "an input changed"
    return err[0]


def write_ct(path: Path, shape_kji=(12, 20, 24), dtype=np.int16, compress=False, spacing=(0.8, 0.9, 2.0),
             origin=(-10.0, 20.0, -30.0)) -> sitk.Image:
    """A small CT-like volume (HU-like ramp) written to ``path``."""
    arr = (np.arange(int(np.prod(shape_kji))).reshape(shape_kji) % 1500 - 1000).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path), compress)
    return img


def cut(path: Path, keep: float = 0.5) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


@pytest.fixture
def attack(capfd, monkeypatch):
    """The helpers above (pytest's importlib mode cannot import a conftest by name); ``main`` runs the command
    in this process (no interpreter start: for rows refused before any work), capturing file descriptors 1, 2."""

    def run_main(*args, env=None):
        from imagio.cli import main

        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capfd.readouterr()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
        out, err = capfd.readouterr()
        for k in env or {}:
            monkeypatch.delenv(k)
        return subprocess.CompletedProcess(args, rc, out, err)

    return SimpleNamespace(run=run_imagio, main=run_main, digest=digest, refused=assert_refused, no_output=no_output,
                           write_ct=write_ct, cut=cut)
