"""Helpers for command-line entry points: safe output folders, points, JSON."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import ImagioError


@contextlib.contextmanager
def staged_output(out_dir, inputs=()):
    """Write into a staging folder; move the files into ``out_dir`` only if the block succeeds.

    On any error nothing is written to ``out_dir``. A file that would replace
    one of ``inputs`` is refused before anything moves.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ImagioError(f"{out} exists and is not a folder", "Give a folder for --out")
    staging = Path(tempfile.mkdtemp(prefix="imagio-out-"))
    try:
        yield staging
        input_paths = {Path(i).expanduser().resolve() for i in inputs if i}
        files = [f for f in staging.rglob("*") if f.is_file()]
        for f in files:
            dest = (out / f.relative_to(staging)).resolve()
            if dest in input_paths or any(dest.is_relative_to(i) for i in input_paths if i.is_dir()):
                raise ImagioError(f"Writing {dest} would overwrite an input", "Choose another --out folder")
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            dest = out / f.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), str(dest))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parse_point(text: str, what: str = "point") -> np.ndarray:
    """Parse "R,A,S" (mm) into a float array."""
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ImagioError(f"'{text}' is not a {what}", "Write it as R,A,S in millimetres, e.g. 12.5,-40,80")
    return np.array(values)


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_jsonable(obj):
    """numpy-safe, NaN-free (NaN/inf -> null) copy of ``obj`` for JSON."""
    return _clean(obj)


def write_json(path, obj) -> Path:
    p = Path(path)
    p.write_text(json.dumps(_clean(obj), indent=2) + "\n")
    return p
