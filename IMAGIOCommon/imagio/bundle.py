"""Slicer scene bundles (.mrb): save a whole scene, load one back, unpack archives safely."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from .errors import ImagioError


def save_mrb(scene, path) -> Path:
    """Write ``scene`` with all its nodes' data as a Slicer scene bundle (.mrb) at ``path``."""
    p = Path(path)
    if p.suffix.lower() != ".mrb":
        raise ImagioError(f"{p.name}: a scene bundle is written as .mrb", "Name the file *.mrb")
    if not p.parent.is_dir():
        raise ImagioError(f"The folder {p.parent} does not exist", "Create it or choose another output folder")
    work = Path(tempfile.mkdtemp(prefix="imagio-mrb-"))
    try:
        scene.SetRootDirectory(str(work))
        target = work / p.name
        if not scene.WriteToMRB(str(target)) or not target.exists():
            raise ImagioError(f"Could not write the scene bundle {p}", "Check free disk space and permissions")
        shutil.move(str(target), str(p))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return p


def safe_extract_zip(zip_path, target_dir) -> list[Path]:
    """Unpack ``zip_path`` inside ``target_dir`` only.

    Refuses (before writing anything) absolute names, names that climb out
    with '..', and symbolic links.
    """
    target = Path(target_dir).resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise ImagioError(f"{zip_path} is not a valid scene bundle (zip archive)",
                          "Give a .mrb written by Slicer or IMAGIO") from None
    with zf:
        members = zf.infolist()
        for m in members:
            name = m.filename
            dest = (target / name).resolve()
            mode = (m.external_attr >> 16) & 0o170000
            if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in Path(name).parts:
                raise ImagioError(f"{zip_path}: member '{name}' would be written outside {target}",
                                  "The archive is unsafe; do not use it")
            if os.path.commonpath([str(target), str(dest)]) != str(target):
                raise ImagioError(f"{zip_path}: member '{name}' would be written outside {target}",
                                  "The archive is unsafe; do not use it")
            if mode == stat.S_IFLNK:
                raise ImagioError(f"{zip_path}: member '{name}' is a symbolic link", "The archive is unsafe; do not use it")
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for m in members:
            zf.extract(m, target)
            written.append(target / m.filename)
    return written


def load_mrb(path, scene=None):
    """Load a scene bundle into ``scene`` (a new one by default) and return the scene."""
    from .scene import new_scene

    p = Path(path)
    if not p.is_file():
        raise ImagioError(f"{p} does not exist", "Check the path of the .mrb file")
    scene = scene if scene is not None else new_scene()
    work = Path(tempfile.mkdtemp(prefix="imagio-mrb-load-"))
    try:
        safe_extract_zip(p, work)
        mrml = sorted(work.rglob("*.mrml"))
        if not mrml:
            raise ImagioError(f"{p} contains no .mrml scene file", "Give a .mrb written by Slicer or IMAGIO")
        scene.SetURL(str(mrml[0]))
        scene.SetRootDirectory(str(mrml[0].parent))
        if not scene.Import():
            raise ImagioError(f"Could not load the scene in {p}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return scene
