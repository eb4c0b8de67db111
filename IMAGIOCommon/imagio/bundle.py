"""Slicer scene bundles (.mrb): save a whole scene, load one back, unpack archives safely."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree

from .cli_utils import check_readable_path
from .errors import ImagioError
from .guards import check_image_file, format_bytes, native_stderr


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


#: Bounds of an archive IMAGIO unpacks: total unpacked bytes (also at most 90 % of the free disk), and for
#: archives over 1 GiB unpacked, the ratio unpacked / packed (deflate reaches ~1000:1 only on near-constant
#: data: a "zip bomb"; IMAGIO's own bundles hold compressed NRRDs, about 1:1).
MAX_UNPACKED_BYTES = 16 * 2**30
MAX_RATIO = 200
RATIO_CHECK_FROM_BYTES = 2**30
MAX_MEMBERS = 100_000
MAX_MRML_BYTES = 64 * 2**20
#: Attributes of MRML nodes that name files the scene reads.
_FILE_ATTRIBUTES = re.compile(r"^(fileName|fileListMember\d+|uri|URI|FileName|filename)$")


def safe_extract_zip(zip_path, target_dir, max_bytes: int | None = None) -> list[Path]:
    """Unpack ``zip_path`` inside ``target_dir`` only.

    Refuses (before writing anything) absolute names, names that climb out with '..', symbolic links,
    more than :data:`MAX_MEMBERS` members, more than ``max_bytes`` (default :data:`MAX_UNPACKED_BYTES`, and
    never more than 90 % of the free disk) unpacked, and an unpacked/packed ratio above :data:`MAX_RATIO`
    for archives over 1 GiB.
    """
    target = Path(target_dir).resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ImagioError(f"{zip_path} is not a valid scene bundle (zip archive)",
                          "Give a .mrb written by Slicer or IMAGIO") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise ImagioError(f"{zip_path} holds {len(members)} files, more than {MAX_MEMBERS}",
                              "The archive is unsafe or not a scene bundle; do not use it")
        for m in members:
            name = m.filename
            dest = (target / name).resolve()
            mode = (m.external_attr >> 16) & 0o170000
            if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in Path(name).parts or "\0" in name:
                raise ImagioError(f"{zip_path}: member '{name}' would be written outside {target}",
                                  "The archive is unsafe; do not use it")
            if os.path.commonpath([str(target), str(dest)]) != str(target):
                raise ImagioError(f"{zip_path}: member '{name}' would be written outside {target}",
                                  "The archive is unsafe; do not use it")
            if mode == stat.S_IFLNK:
                raise ImagioError(f"{zip_path}: member '{name}' is a symbolic link", "The archive is unsafe; do not use it")
        unpacked = sum(m.file_size for m in members)
        packed = sum(m.compress_size for m in members)
        limit = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
        anchor = target if target.exists() else next((a for a in target.parents if a.exists()), Path("/"))
        try:
            free = shutil.disk_usage(anchor).free
            limit = min(limit, int(0.9 * free))
        except OSError:
            pass
        if unpacked > limit:
            raise ImagioError(f"{zip_path} unpacks to {format_bytes(unpacked)}, more than the {format_bytes(limit)} "
                              "IMAGIO allows here (the cap, or 90 % of the free disk)",
                              "The archive is unsafe or too large; free disk space or unpack it yourself")
        if unpacked > RATIO_CHECK_FROM_BYTES and unpacked > MAX_RATIO * max(packed, 1):
            raise ImagioError(f"{zip_path} unpacks {format_bytes(packed)} into {format_bytes(unpacked)} "
                              f"({unpacked / max(packed, 1):.0f}:1)", "The archive looks like a zip bomb; do not use it")
        target.mkdir(parents=True, exist_ok=True)
        written = []
        try:
            for m in members:
                zf.extract(m, target)
                written.append(target / m.filename)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as e:
            raise ImagioError(f"{zip_path} is damaged ({type(e).__name__}: {str(e)[:100]})",
                              "Give a complete .mrb written by Slicer or IMAGIO") from None
    return written


def check_scene_files(mrml: Path, root: Path) -> list[Path]:
    """Every file the scene ``mrml`` would read (storage nodes' fileName, fileListMember*, uri) lies inside
    ``root``; image headers there are checked (size, truncation, detached data inside ``root``).

    Returns the files named. Refuses, before anything is imported, a name that is absolute, climbs out of
    ``root`` (also once %-decoded), or points through a symbolic link outside; and XML with entity
    declarations (entity expansion bombs).
    """
    root = Path(root).resolve()
    try:
        if mrml.stat().st_size > MAX_MRML_BYTES:
            raise ImagioError(f"{mrml.name} is {format_bytes(mrml.stat().st_size)}, larger than a scene file can be",
                              "The bundle is unsafe or damaged; do not use it")
        text = mrml.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ImagioError(f"{mrml.name} cannot be read ({e.strerror})", "The bundle is damaged") from None
    if re.search(r"<!(ENTITY|DOCTYPE)", text, re.I):
        raise ImagioError(f"{mrml.name} declares XML entities", "The bundle is unsafe; do not use it")
    try:
        tree = ElementTree.fromstring(text)
    except ElementTree.ParseError as e:
        raise ImagioError(f"{mrml.name} is not a valid scene file ({e})", "The bundle is damaged") from None
    base = mrml.parent.resolve()
    named = []
    for el in tree.iter():
        for key, value in el.attrib.items():
            if not _FILE_ATTRIBUTES.match(key) or not value.strip():
                continue
            for candidate in {value, unquote(value)}:
                if re.match(r"^[a-z][a-z0-9+.-]*://", candidate, re.I) and not candidate.lower().startswith("file://"):
                    raise ImagioError(f"{mrml.name}: node {el.get('id', el.tag)} reads from {candidate[:80]!r}",
                                      "A scene bundle may only read its own files; do not use it")
                c = candidate[7:] if candidate.lower().startswith("file://") else candidate
                path = Path(c)
                if path.is_absolute():
                    raise ImagioError(f"{mrml.name}: node {el.get('id', el.tag)} reads the file {c[:80]!r} outside "
                                      "the bundle", "A scene bundle may only read its own files; do not use it")
                resolved = (base / path).resolve()
                if not (resolved == root or resolved.is_relative_to(root)):
                    raise ImagioError(f"{mrml.name}: node {el.get('id', el.tag)} reads {c[:80]!r}, outside the "
                                      "bundle", "A scene bundle may only read its own files; do not use it")
                named.append(resolved)
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.name.lower().endswith((".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".hdr")):
            check_image_file(f, inside=root)
    return named


def load_mrb(path, scene=None):
    """Load a scene bundle into ``scene`` (a new one by default) and return the scene.

    The bundle is unpacked safely (:func:`safe_extract_zip`), and the scene is imported only after
    :func:`check_scene_files` found every file it reads inside the bundle.
    """
    from .scene import new_scene

    p = Path(path)
    if not p.is_file():
        check_readable_path(p, "scene bundle")
        raise ImagioError(f"{p} does not exist", "Check the path of the .mrb file")
    check_readable_path(p, "scene bundle")
    scene = scene if scene is not None else new_scene()
    work = Path(tempfile.mkdtemp(prefix="imagio-mrb-load-"))
    try:
        safe_extract_zip(p, work)
        mrml = sorted(work.rglob("*.mrml"))
        if not mrml:
            raise ImagioError(f"{p} contains no .mrml scene file", "Give a .mrb written by Slicer or IMAGIO")
        check_scene_files(mrml[0], work)
        scene.SetURL(str(mrml[0]))
        scene.SetRootDirectory(str(mrml[0].parent))
        with native_stderr():
            ok = scene.Import()
        if not ok:
            raise ImagioError(f"Could not load the scene in {p}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return scene
