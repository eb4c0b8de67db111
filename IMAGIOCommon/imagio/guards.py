"""Guards every reader uses: memory asked for before it is allocated, declared sizes against the bytes on
disk, and the native libraries' console output kept off the user's terminal.

* :func:`require_memory` refuses an allocation larger than a share of the memory available (``MemAvailable``,
  the cgroup limit, ``RLIMIT_AS``; or ``$IMAGIO_MEMORY_LIMIT``) with the size it would need.
* :func:`check_image_file` reads the header of a NIfTI, NRRD or MetaImage file (never its data), bounds its
  declared size, and compares the bytes the header declares with the bytes that are there; a file cut short
  is refused, naming how many bytes are missing.
* :func:`native_stderr` captures what ITK, GDCM and MetaIO print on the process's stderr (file descriptor 2)
  during a call, so it can be logged, or turned into IMAGIO's own words, instead of leaking raw.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import math
import os
import re
import resource
import struct
import sys
import tempfile
import zlib
from pathlib import Path

from .cli_utils import check_readable_path
from .errors import ImagioError

log = logging.getLogger(__name__)

#: One array may take at most this share of the memory available (the rest is for the copies and
#: the masks that the work on it needs).
MEMORY_SHARE = 0.5
#: No volume IMAGIO reads may have more voxels than this (2^31: 1290 x 1290 x 1290), whatever the memory.
MAX_VOXELS = 2**31
MEMORY_ENV = "IMAGIO_MEMORY_LIMIT"
_MAX_HEADER_BYTES = 1 << 20
_CHUNK = 1 << 22


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def _parse_size(text: str) -> int | None:
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        return None
    return int(float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)])


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def available_memory_bytes() -> int:
    """Memory this process can still use: the least of MemAvailable, the cgroup's free limit and RLIMIT_AS."""
    env = os.environ.get(MEMORY_ENV)
    if env and _parse_size(env):
        return _parse_size(env)
    candidates = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, use = _read_int(limit), _read_int(usage)
        if lim is not None and lim < 2**60:
            candidates.append(max(lim - (use or 0), 0))
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            candidates.append(soft)
    except (ValueError, OSError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            candidates.append(8 * 2**30)
    return int(min(candidates))


def require_memory(nbytes: float, what: str, hint: str = "", share: float = MEMORY_SHARE) -> None:
    """Refuse, before allocating, ``nbytes`` for ``what`` when it exceeds ``share`` of the available memory."""
    avail = available_memory_bytes()
    if nbytes > share * avail:
        raise ImagioError(f"{what} would need {format_bytes(nbytes)} of memory, and {format_bytes(avail)} is "
                          f"available (IMAGIO uses at most {share:.0%} of it for one array)",
                          hint or "Crop or downsample the data, or use a machine with more memory")


def require_voxels(size, what: str, hint: str = "") -> int:
    """The voxel count of ``size`` (a sequence of axis lengths), refused beyond :data:`MAX_VOXELS` or if an axis < 1."""
    size = [int(s) for s in size]
    if any(s < 1 for s in size):
        raise ImagioError(f"{what} declares an empty grid ({' x '.join(map(str, size))} voxels)",
                          hint or "Give an image that contains voxels")
    n = math.prod(size)
    if n > MAX_VOXELS:
        raise ImagioError(f"{what} declares {' x '.join(map(str, size))} = {n:.3g} voxels, more than IMAGIO reads "
                          f"({MAX_VOXELS:.3g})", hint or "The header is damaged, or crop the image first")
    return n


# ---------------------------------------------------------------------------------------------- file headers
_NRRD_TYPES = {1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
               2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                   "unsigned short", "unsigned short int", "uint16", "uint16_t"),
               4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
               8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                   "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                   "double")}
_NRRD_TYPE_BYTES = {name: n for n, names in _NRRD_TYPES.items() for name in names}
_MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}


class ImageHeader:
    """What a header declares: ``size`` (voxels per axis), ``bytes_per_voxel`` (all components), and where
    its data lie (``data_path``, ``offset``, ``encoding`` raw|gzip|zlib|bzip2|other)."""

    def __init__(self, path: Path, size, bytes_per_voxel: int, data_path: Path | None, offset: int,
                 encoding: str, offset_is_from_end: bool = False, inner_offset: int = 0):
        self.path, self.size, self.bytes_per_voxel = path, [int(s) for s in size], int(bytes_per_voxel)
        self.data_path, self.offset, self.encoding = data_path, int(offset), encoding
        self.offset_is_from_end = offset_is_from_end
        self.inner_offset = int(inner_offset)  # bytes before the data inside the decompressed stream (.nii.gz)

    @property
    def data_bytes(self) -> int:
        return math.prod(self.size) * self.bytes_per_voxel


def _bad(p: Path, what: str) -> ImagioError:
    return ImagioError(f"{p} is not an image file IMAGIO can read: {what}",
                       "The file is damaged or not what its name says; re-export it")


def _read_text_header(p: Path, end_re: bytes) -> tuple[list[str], int]:
    """Header lines of a text header and the byte offset where the data start (``end_re`` ends the header)."""
    with open(p, "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
    m = re.search(end_re, head)
    if m is None:
        if len(head) >= _MAX_HEADER_BYTES:
            raise _bad(p, f"the header is longer than {_MAX_HEADER_BYTES} bytes")
        return head.decode("latin-1").splitlines(), len(head)
    return head[:m.start()].decode("latin-1").splitlines(), m.end()


def _ints(p: Path, key: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise _bad(p, f"its '{key}' is not a list of whole numbers ({text.strip()[:40]!r})") from None
    return values


def _detached(p: Path, name: str, inside: Path | None) -> Path:
    d = Path(name.strip())
    d = d if d.is_absolute() else p.parent / d
    if inside is not None:
        root, target = Path(inside).resolve(), d.resolve()
        if not (target == root or target.is_relative_to(root)):
            raise ImagioError(f"{p}: its data file {name.strip()!r} lies outside {root}",
                              "Only files inside the bundle or folder are read")
    check_readable_path(d, f"data file of {p.name}")
    return d


def _nrrd_header(p: Path, inside: Path | None) -> ImageHeader | None:
    lines, offset = _read_text_header(p, rb"\r?\n\r?\n")
    if not lines or not lines[0].startswith("NRRD"):
        raise _bad(p, "it does not start with a NRRD magic line")
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":=") if ":=" in line else line.partition(":")
        if ":=" not in line:
            fields[key.strip().lower()] = value.strip()
    if "sizes" not in fields or "type" not in fields:
        raise _bad(p, "the NRRD header has no 'sizes' or 'type'")
    sizes = _ints(p, "sizes", fields["sizes"])
    type_bytes = _NRRD_TYPE_BYTES.get(fields["type"].lower())
    if type_bytes is None:
        if fields["type"].lower() == "block":
            type_bytes = (_ints(p, "block size", fields.get("block size", fields.get("blocksize", "0"))) or [0])[0]
        else:
            raise _bad(p, f"unknown NRRD type {fields['type']!r}")
    enc = fields.get("encoding", "raw").lower()
    enc = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}.get(enc, "other")
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is not None and (data_file.strip().upper().startswith("LIST") or "%" in data_file
                                  or len(data_file.split()) > 1):
        return None  # several data files: ITK checks them
    skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
    if data_file is not None:
        return ImageHeader(p, sizes, type_bytes, _detached(p, data_file, inside), max(skip, 0), enc,
                           offset_is_from_end=skip == -1)
    return ImageHeader(p, sizes, type_bytes, p, offset + max(skip, 0), enc, offset_is_from_end=skip == -1)


def _meta_header(p: Path, inside: Path | None) -> ImageHeader | None:
    lines, offset = _read_text_header(p, rb"ElementDataFile\s*=\s*[^\r\n]*\r?\n")
    fields = {}
    for line in lines:
        key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
    with open(p, "rb") as f:  # the ElementDataFile line itself
        head = f.read(offset)
    m = re.search(rb"ElementDataFile\s*=\s*([^\r\n]*)", head)
    if m is None or "dimsize" not in fields or "elementtype" not in fields:
        raise _bad(p, "the MetaImage header has no DimSize, ElementType or ElementDataFile")
    data_file = m.group(1).decode("latin-1").strip()
    sizes = _ints(p, "DimSize", fields["dimsize"])
    tb = _MET_TYPE_BYTES.get(fields["elementtype"].upper())
    if tb is None:
        raise _bad(p, f"unknown MetaImage ElementType {fields['elementtype']!r}")
    channels = (_ints(p, "ElementNumberOfChannels", fields.get("elementnumberofchannels", "1")) or [1])[0]
    compressed = fields.get("compresseddata", "false").lower() == "true"
    enc = "zlib" if compressed else "raw"
    if data_file.upper() == "LOCAL":
        return ImageHeader(p, sizes, tb * max(channels, 1), p, offset, enc)
    if data_file.upper().startswith("LIST") or "%" in data_file or len(data_file.split()) > 1:
        return None
    header_size = int(fields.get("headersize", "0") or 0)
    return ImageHeader(p, sizes, tb * max(channels, 1), _detached(p, data_file, inside), max(header_size, 0), enc,
                       offset_is_from_end=header_size == -1)


def _nifti_header(p: Path, inside: Path | None) -> ImageHeader:
    gz = p.name.lower().endswith(".gz")
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:
            h = f.read(540)
    except (OSError, EOFError, zlib.error) as e:
        raise _bad(p, f"its compressed header cannot be read ({e})") from None
    if len(h) < 348:
        raise _bad(p, f"it is {len(h)} bytes long, shorter than a NIfTI header (348 bytes)")
    for endian in "<>":
        sizeof = struct.unpack_from(endian + "i", h, 0)[0]
        if sizeof in (348, 540):
            break
    else:
        raise _bad(p, "it has no NIfTI header (sizeof_hdr is neither 348 nor 540)")
    if sizeof == 348:
        dims = struct.unpack_from(endian + "8h", h, 40)
        bitpix = struct.unpack_from(endian + "h", h, 72)[0]
        vox_offset = struct.unpack_from(endian + "f", h, 108)[0]
        magic = h[344:348]
    else:
        if len(h) < 540:
            raise _bad(p, "it is shorter than a NIfTI-2 header (540 bytes)")
        bitpix = struct.unpack_from(endian + "h", h, 14)[0]
        dims = struct.unpack_from(endian + "8q", h, 16)
        vox_offset = struct.unpack_from(endian + "q", h, 168)[0]
        magic = h[4:8]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise _bad(p, f"its NIfTI header declares {ndim} dimensions")
    if bitpix <= 0 or bitpix % 8:
        raise _bad(p, f"its NIfTI header declares {bitpix} bits per voxel")
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise _bad(p, f"its NIfTI header declares the data at offset {vox_offset}")
    size = [max(int(d), 0) for d in dims[1:ndim + 1]]
    if magic[:3] in (b"ni1", b"ni2"):  # a .hdr/.img pair
        img = p.with_name(re.sub(r"\.hdr(\.gz)?$", r".img\1", p.name, flags=re.I))
        if not img.exists():
            img = p.with_name(re.sub(r"\.hdr(\.gz)?$", ".img", p.name, flags=re.I))
        data = _detached(p, img.name, inside)
        return ImageHeader(p, size, bitpix // 8, data, 0, "gzip" if data.name.lower().endswith(".gz") else "raw")
    if gz:
        return ImageHeader(p, size, bitpix // 8, p, 0, "gzip", inner_offset=int(vox_offset))
    return ImageHeader(p, size, bitpix // 8, p, int(vox_offset), "raw")


def read_image_header(path, inside=None) -> ImageHeader | None:
    """The declared geometry and data location of a NIfTI, NRRD or MetaImage file (None for other formats)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz")):
        return _nifti_header(p, inside)
    if name.endswith((".nrrd", ".nhdr")):
        return _nrrd_header(p, inside)
    if name.endswith((".mha", ".mhd")):
        return _meta_header(p, inside)
    return None


def _stream_bytes(path: Path, offset: int, encoding: str, limit: int) -> int:
    """Bytes obtained from ``path`` after ``offset`` (decompressed), counting up to ``limit`` + 1."""
    if encoding == "raw":
        return max(path.stat().st_size - offset, 0)
    if encoding == "bzip2":
        dec = bz2.BZ2Decompressor()
    else:
        dec = zlib.decompressobj(31 if encoding == "gzip" else 15 + 32)
    n = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while n <= limit:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            try:
                n += len(dec.decompress(chunk, max(limit + 1 - n, 1)) if encoding != "bzip2"
                         else dec.decompress(chunk))
                while encoding != "bzip2" and dec.unconsumed_tail and n <= limit:
                    n += len(dec.decompress(dec.unconsumed_tail, max(limit + 1 - n, 1)))
            except (zlib.error, OSError, EOFError, ValueError):
                break  # a damaged stream: what was decoded so far is what there is
            if getattr(dec, "eof", False):
                rest = dec.unused_data if encoding != "bzip2" else dec.unused_data
                if encoding == "gzip" and rest:  # a further gzip member
                    dec = zlib.decompressobj(31)
                    n += len(dec.decompress(rest))
                else:
                    break
    return n


def check_image_file(path, inside=None, count_compressed: bool | None = None) -> ImageHeader | None:
    """Check a NIfTI/NRRD/MetaImage file against its header before it is read.

    Refuses a declared grid beyond :data:`MAX_VOXELS` or the available memory (with the size it would
    need), and a file whose data are shorter than declared (naming how many bytes are missing). Detached
    data files must be regular files (and lie inside ``inside`` when given). Compressed data are counted
    by decompressing them when ``count_compressed`` (default: for NIfTI only, whose reader fills a
    truncated .nii.gz with zeros without a word; ITK's NRRD and MetaImage readers fail on one, and
    :func:`imagio.io.read_image` then counts to say how much is missing). Returns the header.
    """
    p = Path(path)
    h = read_image_header(p, inside)
    if h is None:
        return None
    require_voxels(h.size, f"{p}")
    require_memory(h.data_bytes, f"Reading {p} ({' x '.join(map(str, h.size))} voxels of {h.bytes_per_voxel} bytes)",
                   "The header may be damaged; otherwise crop or downsample the image first")
    if count_compressed is None:
        count_compressed = p.name.lower().endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz"))
    if h.encoding == "other" or (h.encoding != "raw" and not count_compressed):
        return h
    need = h.data_bytes
    if h.offset_is_from_end:  # data at the end of the file (NRRD byte skip -1, MetaImage HeaderSize -1)
        have = h.data_path.stat().st_size if h.encoding == "raw" else need
    else:
        have = _stream_bytes(h.data_path, h.offset, h.encoding, need + h.inner_offset) - h.inner_offset
    have = max(have, 0)
    if have < need:
        missing = need - have
        where = "" if h.data_path == p else f" (data file {h.data_path.name})"
        raise ImagioError(f"{p} is cut short{where}: its header declares {need} bytes of voxel data and "
                          f"{have} are there ({missing} bytes, {100 * missing / need:.1f} % missing)",
                          "The file was not completely copied or written; copy or export it again")
    return h


# ---------------------------------------------------------------------------------------------- native output
@contextlib.contextmanager
def native_stderr():
    """Capture what native code (ITK, GDCM, MetaIO, VTK) writes to file descriptor 2 during the block.

    Yields a list that holds the captured lines once the block ends (logged at debug level). Python code
    inside the block should not log: its messages would be captured too.
    """
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(1 << 20).decode("utf-8", errors="replace")
            lines.extend(line for line in text.splitlines() if line.strip())
            if lines:
                log.debug("native library output:\n%s", "\n".join(lines))
