"""Helpers for command-line entry points: the argument parser, checked numbers and points, safe output folders, JSON.

* :class:`ArgumentParser` (used for ``imagio`` and every sub-command) takes values that start with ``-`` when
  they are numbers or number lists (``--target -12.5,30,40``), and reports a bad argument on one line.
* :func:`number` and :func:`point` are argparse types: finite, bounded values with a one-line error that names
  the option, the value and the allowed range. :func:`harden_parser` gives every ``type=float``/``type=int``
  option the same checks and every sub-command with ``--out`` an ``--overwrite`` flag.
* :func:`staged_output` writes a command's files into a hidden staging folder beside ``--out`` (same file
  system) and publishes them with one rename, so ``--out`` holds either the whole result or nothing.

This module imports no numpy, SimpleITK or VTK at import time (``imagio --help`` stays quick).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import errno
import json
import math
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path

from . import __version__
from .errors import Cancelled, ImagioError

# ---------------------------------------------------------------------------------------------- the parser
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|infinity|nan)"
#: A command-line value that starts with '-' and is a number or a list of numbers separated by ',' or ':'
#: ("-12.5", "-57,-10,3", "-1e3, 4, 5", "-41.5,12,-30:-80,40,-22", "-nan"): a value, never an option name.
NEGATIVE_VALUE_RE = re.compile(rf"^-(?:\d+\.?\d*|\.\d+|inf|infinity|nan)(?:[eE][-+]?\d+)?(?:\s*[,:]\s*(?:{_NUM}))*$",
                               re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with numbers that start with '-' read as values and one-line errors.

    argparse treats ``-12.5,30,40`` as an unknown option ("expected one argument"); this parser treats
    every negative number or number list as a value, so points on the patient's right (negative R)
    and below the origin are written the natural way. Sub-parsers inherit the class.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_VALUE_RE

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        group._negative_number_matcher = NEGATIVE_VALUE_RE
        return group

    def add_mutually_exclusive_group(self, **kwargs):
        group = super().add_mutually_exclusive_group(**kwargs)
        group._negative_number_matcher = NEGATIVE_VALUE_RE
        return group

    def error(self, message):
        """One line on stderr, exit status 2 (argparse prints the usage block instead)."""
        message = str(message).strip().rstrip(".")
        self.exit(2, f"imagio: error: {message}. See '{self.prog} --help'\n")


# ---------------------------------------------------------------------------------------------- numbers
#: Magnitude bound of a float option that states no range of its own: no length (mm), time (s), power (W),
#: intensity (HU) or percentage IMAGIO takes comes near it, and it keeps 1e308-style inputs out.
FLOAT_LIMIT = 1e6
#: Magnitude bound of an integer option without a range of its own: every 32-bit random seed fits.
INT_LIMIT = 2**32 - 1
#: Coordinates of a point (mm) beyond this are refused (100 m from the scanner's origin).
POINT_LIMIT_MM = 1e5


def _fmt_float(v: float) -> str:
    return f"{v:g}"


def _fmt_int(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


class Number:
    """An argparse type (and a plain checker): a finite number within a range, with a one-line error.

    ``Number(min=0, max=3600, unit="s")("nan")`` raises ``argparse.ArgumentTypeError`` (argparse adds the
    option name: "argument --time: 'nan' is not a finite number: give 0 to 3600 s").
    """

    def __init__(self, min: float | None = None, max: float | None = None, unit: str = "", integer: bool = False,
                 min_inclusive: bool = True, max_inclusive: bool = True, limit: float | None = None):
        self.min, self.max, self.unit, self.integer = min, max, unit, integer
        self.min_inclusive, self.max_inclusive = min_inclusive, max_inclusive
        if limit is None and min is None and max is None:
            limit = INT_LIMIT if integer else FLOAT_LIMIT
        self.limit = limit
        self.__name__ = "whole number" if integer else "number"

    def describe(self) -> str:
        u = f" {self.unit}" if self.unit else ""
        _fmt = _fmt_int if self.integer else _fmt_float
        lo, hi = self.min, self.max
        if lo is not None and hi is not None:
            if self.min_inclusive and self.max_inclusive:
                text = f"{_fmt(lo)} to {_fmt(hi)}{u}"
            else:
                text = (f"{'at least' if self.min_inclusive else 'more than'} {_fmt(lo)}{u} and "
                        f"{'at most' if self.max_inclusive else 'less than'} {_fmt(hi)}{u}")
        elif lo is not None:
            text = f"{'at least' if self.min_inclusive else 'more than'} {_fmt(lo)}{u}"
        elif hi is not None:
            text = f"{'at most' if self.max_inclusive else 'less than'} {_fmt(hi)}{u}"
        else:
            text = f"a value from {_fmt(-self.limit)} to {_fmt(self.limit)}{u}"
        return ("a whole number, " if self.integer else "") + text

    def check(self, value: float, what: str = "value"):
        """``value`` checked (float, or int when ``integer``); raises ImagioError naming ``what``."""
        try:
            return self._check(value)
        except argparse.ArgumentTypeError as e:
            raise ImagioError(f"{what}: {e}") from None

    def _check(self, value, shown=None):
        value_shown = value if shown is None else shown
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"{value_shown!r} is not a number: give {self.describe()}")
        if isinstance(value, int):
            v = value  # exact, even beyond float range
        else:
            try:
                v = float(value)
            except (TypeError, ValueError, OverflowError):
                raise argparse.ArgumentTypeError(f"{value_shown!r} is not a number: give {self.describe()}") from None
        if not isinstance(v, int) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{value_shown!r} is not a finite number: give {self.describe()}")
        if self.integer:
            if v != int(v):
                raise argparse.ArgumentTypeError(f"{value_shown!r} is not a whole number: give {self.describe()}")
            v = int(v)
        if self.limit is not None and abs(v) > self.limit:
            raise argparse.ArgumentTypeError(f"{value_shown!r} is out of range: give {self.describe()}")
        lo, hi = self.min, self.max
        if lo is not None and (v < lo or (v == lo and not self.min_inclusive)):
            raise argparse.ArgumentTypeError(f"{value_shown!r} is out of range: give {self.describe()}")
        if hi is not None and (v > hi or (v == hi and not self.max_inclusive)):
            raise argparse.ArgumentTypeError(f"{value_shown!r} is out of range: give {self.describe()}")
        return v

    def __call__(self, text):
        if isinstance(text, str):
            text = text.strip()
            if self.integer and re.fullmatch(r"[-+]?\d+", text):
                return self._check(int(text), text)
        return self._check(text)

    def __repr__(self) -> str:
        return f"number({self.describe()})"


def number(min: float | None = None, max: float | None = None, unit: str = "", integer: bool = False,
           min_inclusive: bool = True, max_inclusive: bool = True, limit: float | None = None) -> Number:
    """argparse type for a finite number in [min, max] (open ends with ``min_inclusive=False`` etc.).

    Without ``min`` and ``max`` the magnitude is still bounded (:data:`FLOAT_LIMIT`, :data:`INT_LIMIT`).
    Example: ``p.add_argument("--time", type=number(min=0, max=3600, unit="s", min_inclusive=False))``.
    """
    return Number(min, max, unit, integer, min_inclusive, max_inclusive, limit)


def parse_point(text, what: str = "point", limit_mm: float = POINT_LIMIT_MM):
    """Parse "R,A,S" (mm; or a sequence of 3 numbers) into a float array; finite and within ``limit_mm``."""
    import numpy as np

    if isinstance(text, str):
        parts = text.replace(" ", "").split(",")
    else:
        try:
            parts = list(np.asarray(text, dtype=float).ravel())
        except (TypeError, ValueError):
            parts = []
    try:
        values = [float(v) for v in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ImagioError(f"'{text}' is not a {what}", "Write it as R,A,S in millimetres, e.g. 12.5,-40,80")
    if max(abs(v) for v in values) > limit_mm:
        raise ImagioError(f"The {what} {text} is {max(abs(v) for v in values):g} mm from the origin on one axis",
                          f"Give R,A,S in millimetres, each within +-{limit_mm:g} mm")
    return np.array(values)


def point(text):
    """argparse type for a point "R,A,S" in mm (finite, each coordinate within +-1e5 mm) -> numpy array (3,)."""
    try:
        return parse_point(text)
    except ImagioError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


point.__name__ = "point"


def _sub_parsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for sub in action.choices.values():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield sub


def iter_parsers(parser: argparse.ArgumentParser):
    """``parser`` and every sub-parser below it (depth first)."""
    yield parser
    for sub in _sub_parsers(parser):
        yield from iter_parsers(sub)


def harden_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every sub-command the same checks, whatever its module wrote.

    * ``type=float`` / ``type=int`` options become :func:`number` (finite, magnitude bounded);
    * a sub-command with ``--out`` and no ``--overwrite`` gets ``--overwrite``.
    """
    for p in iter_parsers(parser):
        for action in p._actions:
            if action.type is float:
                action.type = number()
            elif action.type is int:
                action.type = number(integer=True)
        if "--out" in p._option_string_actions and "--overwrite" not in p._option_string_actions:
            p.add_argument("--overwrite", action="store_true",
                           help="replace --out if it exists (only a folder IMAGIO wrote; inputs inside it refused)")
    return parser


# ---------------------------------------------------------------------------------------------- input paths
def check_readable_path(path, what: str = "input") -> Path:
    """An existing regular file or folder; a FIFO, socket or device (which would hang or stream) is refused."""
    if path is None or str(path).strip() == "":
        raise ImagioError(f"No path given for the {what}", "Give the path of a file or folder")
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImagioError(f"{p} does not exist", "Check the path (and the current folder)") from None
    except (OSError, ValueError) as e:
        raise ImagioError(f"{p} cannot be read ({getattr(e, 'strerror', None) or e})", "Check the path") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device file"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise ImagioError(f"{p} is {kind}", f"Give the {what} as a regular file or folder")
    return p


def path_arguments(args: argparse.Namespace, skip=("out",)) -> list[Path]:
    """Every argument value that names an existing path (the command's inputs), except ``skip``."""
    out = []
    for key, value in vars(args).items():
        if key in skip or callable(value):
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (str, os.PathLike)) and str(v).strip():
                try:
                    if os.path.lexists(os.path.expanduser(str(v))):
                        out.append(Path(v).expanduser())
                except (ValueError, OSError):
                    continue
    return out


# ---------------------------------------------------------------------------------------------- outputs
#: Set by the command line around a handler: whether ``--overwrite`` was given, and the command's inputs.
OVERWRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("imagio_overwrite", default=False)
INPUTS: contextvars.ContextVar[tuple] = contextvars.ContextVar("imagio_inputs", default=())
#: A hidden file in every folder IMAGIO publishes; ``--overwrite`` replaces only folders that hold it.
MARKER = ".imagio-output.json"
_STAGING_TAG = ".imagio-staging-"
_OLD_TAG = ".imagio-old-"
_PSEUDO_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
              "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "efivarfs", "binfmt_misc", "autofs"}


@contextlib.contextmanager
def output_policy(overwrite: bool = False, inputs=()):
    """Within the block, :func:`staged_output` uses ``overwrite`` and also protects ``inputs``."""
    t1 = OVERWRITE.set(bool(overwrite))
    t2 = INPUTS.set(tuple(inputs))
    try:
        yield
    finally:
        OVERWRITE.reset(t1)
        INPUTS.reset(t2)


def _mount_type(path: Path) -> str:
    """File-system type of the mount holding ``path`` ('' if unknown)."""
    best, kind = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        return ""
    return kind


def _existing_ancestor(p: Path) -> Path:
    a = p.parent
    while not os.path.lexists(a) and a != a.parent:
        a = a.parent
    return a


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        return child == parent or child.is_relative_to(parent)
    except ValueError:
        return False


def _resolved(p) -> Path:
    try:
        return Path(p).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(os.path.expanduser(str(p))))


def check_out_dir(out_dir, inputs=(), overwrite: bool | None = None) -> Path:
    """The absolute ``--out`` folder, or a one-line ImagioError before any work is done.

    Refused: an empty path; a path that exists and is not a folder, or lies under a file; a folder on a
    pseudo file system (/proc, /sys, /dev); a folder where nothing can be created; an existing non-empty
    folder unless ``overwrite`` (then only one IMAGIO wrote, holding no input and not the current folder).
    """
    if overwrite is None:
        overwrite = OVERWRITE.get()
    if out_dir is None or str(out_dir).strip() == "":
        raise ImagioError("--out is empty", "Give an output folder, e.g. --out results")
    out = _resolved(out_dir)
    anchor = out if os.path.lexists(out) else _existing_ancestor(out)
    if anchor != out and not anchor.is_dir():
        raise ImagioError(f"--out {out_dir}: {anchor} is a file, so no folder can be made under it",
                          "Choose an output folder outside it")
    if os.path.lexists(out) and not out.is_dir():
        raise ImagioError(f"--out {out_dir} exists and is not a folder", "Give a folder for --out")
    fs = _mount_type(out if anchor == out else anchor)
    if fs in _PSEUDO_FS:
        raise ImagioError(f"--out {out_dir} is on the system's {fs} file system, not on a disk",
                          "Choose an output folder on a disk")
    for inp in list(inputs) + list(INPUTS.get()):
        if inp is None or str(inp).strip() == "":
            continue
        ip = _resolved(inp)
        if ip == out or (out.exists() and _is_inside(ip, out)):
            raise ImagioError(f"Writing into {out} would overwrite an input ({ip})", "Choose another --out folder")
    if out.is_dir():
        try:
            entries = [e for e in os.listdir(out) if e != MARKER]
        except OSError as e:
            raise ImagioError(f"--out {out_dir} cannot be read ({e.strerror})", "Choose another output folder") from None
        if entries or (out / MARKER).exists():
            if not overwrite:
                raise ImagioError(f"--out {out_dir} exists and is not empty ({len(entries)} entries)",
                                  "Choose a new folder, or add --overwrite to replace it")
            if not (out / MARKER).is_file():
                raise ImagioError(f"--out {out_dir} was not written by IMAGIO (it has no {MARKER}), so "
                                  "--overwrite does not replace it", "Choose a new folder, or empty it yourself")
            if _is_inside(_resolved(Path.cwd()), out):
                raise ImagioError(f"--out {out_dir} holds the current folder", "Run from another folder")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


_STALE_RE = re.compile(r"^\..+(?:\.imagio-staging-|\.imagio-old-)(\d+)-[0-9a-f]{8}$")


def _remove_stale(folder: Path) -> None:
    """Remove the hidden staging folders of earlier runs in ``folder`` whose process is gone (SIGKILL, power loss)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for e in entries:
        m = _STALE_RE.match(e)
        if m and not _pid_alive(int(m.group(1))) and (folder / e).is_dir() and not (folder / e).is_symlink():
            shutil.rmtree(folder / e, ignore_errors=True)


#: A file system with less than this free (for unprivileged users) after a failed write is taken as full.
FULL_BELOW_BYTES = 1 << 20
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _free_bytes(path) -> int | None:
    try:
        st = os.statvfs(path)
    except (OSError, ValueError):
        return None
    return st.f_bavail * st.f_frsize


def _newest_file(folder: Path) -> str | None:
    """The name (relative to ``folder``) of the file written last in it: the one a failed writer was writing."""
    best, name = -1, None
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                t = os.lstat(os.path.join(root, f)).st_mtime_ns
            except OSError:
                continue
            if t > best:
                best, name = t, os.path.relpath(os.path.join(root, f), folder)
    return name


def _disk_full_error(e: BaseException, out: Path, staging: Path) -> ImagioError | None:
    """The one-line error for a write that failed because a disk is full, else None.

    Writers report a full disk in different ways: Python raises OSError(ENOSPC) (without a file name from
    ``write``), pydicom re-raises it as an OSError without errno, ITK's writers raise RuntimeError with their
    own text, VTK's return failure. So besides the errno, the free space of the staging folder's file
    system (and of the temporary folder, where scenes are assembled) is checked after the failure.
    """
    if isinstance(e, Cancelled) or getattr(e, "disk_full", False):
        return None  # a cancel stays a cancel; an inner staged_output's message stays as it is
    quota = isinstance(e, OSError) and e.errno == getattr(errno, "EDQUOT", None)
    by_errno = isinstance(e, OSError) and e.errno in _FULL_ERRNOS
    disk = staging if os.path.isdir(staging) else _existing_ancestor(staging)
    free = _free_bytes(disk)
    if by_errno or (free is not None and free < FULL_BELOW_BYTES):
        name = None
        for f in (getattr(e, "filename2", None), getattr(e, "filename", None)):
            if f and _is_inside(_resolved(f), _resolved(staging)):
                name = os.path.relpath(_resolved(f), _resolved(staging))
                break
        if name is None and os.path.isdir(staging):
            name = _newest_file(staging)
        where = f" while writing {name}" if name else ""
        err = ImagioError(f"{'Disk quota exceeded on' if quota else 'No space left on'} the disk holding {out}{where}",
                          "Free disk space or choose an --out folder on another disk, and run again")
    else:
        tmp = tempfile.gettempdir()
        tmp_free = _free_bytes(tmp)
        if tmp_free is None or tmp_free >= FULL_BELOW_BYTES:
            return None
        err = ImagioError(f"No space left in the temporary folder {tmp} while writing the results for {out}",
                          "Free disk space there, or set TMPDIR to a folder on a disk with space, and run again")
    err.disk_full = True
    return err


@contextlib.contextmanager
def _signals_blocked():
    sigs = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _write_marker(staging: Path) -> None:
    info = {"written_by": f"imagio {__version__}", "command": " ".join(["imagio", *sys.argv[1:]])[:2000]}
    (staging / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the finished staging folder to ``out`` with one rename (the old ``out`` renamed aside first)."""
    with _signals_blocked():
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(out) or (out.is_dir() and not os.listdir(out)):
            os.replace(staging, out)  # an empty folder is replaced atomically (rename(2))
            return
        if not overwrite:
            raise ImagioError(f"--out {out} was filled while IMAGIO was running", "Choose a new folder")
        aside = out.parent / f".{out.name}{_OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(out, aside)
        try:
            os.rename(staging, out)
        except OSError:
            os.rename(aside, out)
            raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_output(out_dir, inputs=(), overwrite: bool | None = None):
    """Write into a staging folder; ``out_dir`` gets all of it on success, and nothing otherwise.

    The staging folder is a hidden sibling of ``out_dir`` (same file system), published with one
    rename; with ``overwrite`` (default: the command's ``--overwrite``) the old folder is renamed aside,
    the new one renamed in, the old one removed. An error, Ctrl-C or SIGTERM (handlers installed by
    ``imagio.cli.main``) removes the staging folder. ``out_dir`` is checked by :func:`check_out_dir`
    first; a folder holding one of ``inputs`` is refused. An ``OSError`` on the output folder becomes a
    one-line ImagioError; so does any failure while the disk is full (:func:`_disk_full_error`: ITK's and
    VTK's writers do not raise OSError), naming the disk, the file being written and what to do.
    """
    if overwrite is None:
        overwrite = OVERWRITE.get()
    out = check_out_dir(out_dir, inputs, overwrite)
    anchor = out.parent if out.parent.is_dir() else _existing_ancestor(out)
    _remove_stale(anchor)
    staging = anchor / f".{out.name}{_STAGING_TAG}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(staging)
    except OSError as e:
        full = _disk_full_error(e, out, staging) if e.errno in _FULL_ERRNOS else None
        if full is not None:
            raise full from e
        raise ImagioError(f"Cannot write in {anchor} for --out {out_dir} ({e.strerror or e})",
                          "Choose an output folder you can write to") from None
    try:
        try:
            yield staging
        except Exception as e:  # a full disk first: whatever way the writer reported it
            full = _disk_full_error(e, out, staging)
            if full is not None:
                raise full from e
            if isinstance(e, OSError) and e.filename and _is_inside(_resolved(e.filename), staging):
                raise ImagioError(f"Could not write the results for {out} ({e.strerror or e})",
                                  "Check free disk space and permissions") from None
            raise
        input_paths = {_resolved(i) for i in list(inputs) + list(INPUTS.get()) if i}
        for f in staging.rglob("*"):
            dest = _resolved(out / f.relative_to(staging))
            if dest in input_paths:
                raise ImagioError(f"Writing {dest} would overwrite an input", "Choose another --out folder")
        try:
            _write_marker(staging)
            _publish(staging, out, overwrite)
        except OSError as e:
            full = _disk_full_error(e, out, staging)
            if full is not None:
                raise full from e
            raise ImagioError(f"Could not move the results into {out} ({e.strerror or e})",
                              "Check permissions and free space, or choose another --out folder") from None
    finally:
        if os.path.lexists(staging):
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- JSON
def _clean(obj):
    import numpy as np

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
