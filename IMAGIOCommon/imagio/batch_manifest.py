"""The case manifest of `imagio batch`: reading, validation, and each row's step command line.

A manifest is a CSV file with a header. Its columns are ``case_id``, ``step``
and then the step's own command-line options, written with underscores
(``pre_ct`` for ``--pre-ct``). Relative paths are relative to the manifest's
folder; an empty cell leaves the option out. A flag (``--largest-component``)
is set by ``true``/``yes``/``1``/``x`` and left out by ``false``/``no``/``0`` or
an empty cell. An option that takes several values (``--avoid A B``, or one
given several times such as ``--seg``) takes them separated by ``;``. Points
(``R,A,S``) are written as in the step command; quote the cell, since it
holds commas. A row whose ``case_id`` starts with ``#`` is a comment.

Each row becomes the argument list of the step's own sub-command (for
example ``["ablation", "zone", "--device=emprint", ...]``) and is parsed by
the very parser that ``imagio <step>`` uses, so a row is checked exactly as
the command checks its arguments. Everything here is plain Python: it needs
neither dask nor the step modules' heavy code.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImagioError

#: step name in the manifest -> the `imagio` sub-command path that runs it (public contract of issue 15).
STEP_COMMANDS: dict[str, tuple[str, ...]] = {
    "segment": ("segment",),
    "lungnav": ("lungnav",),
    "margin": ("margin",),
    "ablation-zone": ("ablation", "zone"),
    "ablation-plan": ("ablation", "plan"),
    "ablation-replan": ("ablation", "replan"),
    "export-dicom": ("export-dicom",),
    "demo": ("demo",),
}

#: options whose value is always a file or folder (by their argparse dest), whatever it looks like.
PATH_DESTS = frozenset({
    "ct", "tumor", "ablation", "pre_ct", "post_ct", "organ", "vessels", "avoid", "airway", "lesion", "library",
    "landmarks_pre", "landmarks_post", "airway_model", "case", "seg", "margin", "plan", "route",
})
#: other string values are taken as paths when they look like one (a folder separator or a file suffix).
PATH_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm", ".json", ".txt", ".csv", ".onnx", ".mrb",
                 ".ima", ".img", ".hdr")

RESERVED_COLUMNS = ("case_id", "step")
#: columns that the batch itself decides
FORBIDDEN_COLUMNS = {"out": "the batch writes each case into DIR/<case_id>/<step>/"}
#: names a case_id cannot take: they are the batch's own files in DIR
RESERVED_NAMES = {"summary.csv", "batch.json", "cohort.html", "logs"}
CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
LIST_SEPARATOR = ";"
TRUE_WORDS = {"true", "yes", "1", "x", "on"}
FALSE_WORDS = {"false", "no", "0", "off", ""}
MAX_REPORTED = 6


@dataclass
class StepOption:
    """One long option of a step's parser, as a manifest column sees it."""

    column: str            # e.g. "pre_ct"
    flag: str              # e.g. "--pre-ct"
    dest: str
    kind: str              # "value" | "flag" | "list" | "repeat"
    typed: bool = False    # a number, a point or another typed value: never a path
    choices: tuple = ()


@dataclass
class CaseSpec:
    """One validated manifest row: what a worker needs to run it."""

    case_id: str
    step: str
    line: int
    argv: list[str]                       # the step's sub-command and options, without --out
    options: dict[str, object]            # column -> value(s) as given (paths made absolute)
    inputs: dict[str, list[str]] = field(default_factory=dict)   # column -> absolute input paths
    input_sha256: dict[str, list[str]] = field(default_factory=dict)

    def options_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.argv, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "step": self.step, "line": self.line, "argv": list(self.argv),
                "inputs": {k: [{"path": p, "sha256": h} for p, h in zip(v, self.input_sha256.get(k, []), strict=False)]
                           for k, v in self.inputs.items()},
                "options_sha256": self.options_sha256()}


@dataclass
class Manifest:
    path: Path
    sha256: str
    cases: list[CaseSpec]

    @property
    def folder(self) -> Path:
        return self.path.parent


# ------------------------------------------------------------------------------------------ step parsers
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-commands in a _SubParsersAction
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def step_parser(root: argparse.ArgumentParser, step: str) -> argparse.ArgumentParser | None:
    """The parser of ``imagio <step command>`` or None when this imagio does not have that command."""
    parser = root
    for word in STEP_COMMANDS[step]:
        parser = _subparsers(parser).get(word)
        if parser is None:
            return None
    return parser


def step_options(parser: argparse.ArgumentParser) -> dict[str, StepOption]:
    """column name -> option, for every long option of a step parser (help and version excluded)."""
    out = {}
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        longs = [s for s in a.option_strings if s.startswith("--")]
        if not longs:
            continue
        if a.nargs == 0:
            kind = "flag"
        elif isinstance(a, argparse._AppendAction):
            kind = "repeat"
        elif a.nargs in ("*", "+") or (isinstance(a.nargs, int) and a.nargs > 1):
            kind = "list"
        else:
            kind = "value"
        # only plain string options can name files: numbers, points and other typed values never do
        textual = a.type is None or a.type is str or (isinstance(a.type, type) and issubclass(a.type, os.PathLike))
        for flag in longs:
            col = flag[2:].replace("-", "_")
            out[col] = StepOption(col, flag, a.dest, kind, not textual, tuple(a.choices or ()))
    return out


def _parse_check(root: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """Parse ``argv`` with the real `imagio` parser; the error line argparse prints, or None."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            root.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):
            return "the options ask for help, not a run"
        lines = [ln.strip() for ln in err.getvalue().splitlines() if ln.strip()]
        if not lines:
            return f"the command line is invalid (argparse exit {e.code})"
        line = lines[-1]
        m = re.match(r"^imagio: error: (.*?)\.? See '(.*?) --help'$", line)
        return f"{m.group(2)}: {m.group(1)}" if m else line.removeprefix("imagio: error: ")
    return None


# ------------------------------------------------------------------------------------------ hashing
def sha256_path(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes; of a folder: of its files' relative paths and contents, in sorted order."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            h.update(sha256_path(f).encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ reading
def _looks_like_path(value: str) -> bool:
    v = value.lower()
    return "/" in value or os.sep in value or v.endswith(PATH_SUFFIXES)


def _truth(value: str):
    v = value.strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    return None


def read_manifest(path, root_parser: argparse.ArgumentParser | None = None, hash_inputs: bool = True) -> Manifest:
    """Read and validate a manifest; ImagioError (exit 2) naming every bad line, column and file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImagioError(f"Manifest {path} does not exist or is not a file", "Give a CSV file with a header row")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ImagioError(f"Manifest {path} is not UTF-8 text", "Save it as a UTF-8 CSV file") from e
    if root_parser is None:
        from .cli import build_parser

        root_parser = build_parser()
    base = path.resolve().parent
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ImagioError(f"Manifest {path} is empty", "Its first line names the columns: case_id,step,...") from None
    except csv.Error as e:
        raise ImagioError(f"Manifest {path} is not a valid CSV file: {e}", "Check its quoting") from None
    columns = [c.strip().lstrip("-").replace("-", "_") for c in header]
    problems: list[str] = []
    for need in RESERVED_COLUMNS:
        if need not in columns:
            raise ImagioError(f"Manifest {path} has no '{need}' column",
                              "The header must start with case_id,step and then the steps' options")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise ImagioError(f"Manifest {path} names column(s) {', '.join(dup)} twice", "Give each column once")
    if "" in columns:
        raise ImagioError(f"Manifest {path} has a column without a name (column {columns.index('') + 1})",
                          "Name every column in the header, or remove the empty one")
    for c in columns:
        if c in FORBIDDEN_COLUMNS:
            raise ImagioError(f"Manifest column '{c}' is not allowed: {FORBIDDEN_COLUMNS[c]}", "Remove the column")

    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, [c.strip() for c in row]))
    except csv.Error as e:
        raise ImagioError(f"Manifest {path} line {reader.line_num}: not valid CSV ({e})", "Check its quoting") from None
    rows = [(line, cells) for line, cells in rows if any(cells) and not cells[0].startswith("#")]
    parsers: dict[str, argparse.ArgumentParser | None] = {}
    options: dict[str, dict[str, StepOption]] = {}
    for step in STEP_COMMANDS:
        parsers[step] = step_parser(root_parser, step)
        options[step] = step_options(parsers[step]) if parsers[step] is not None else {}
    # a column that no step knows is a typo, even where its cells are empty
    known = set(RESERVED_COLUMNS).union(*[set(o) for o in options.values()])
    unknown = [c for c in columns if c not in known]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)}: no step has "
                        + ", ".join("--" + c.replace("_", "-") for c in unknown))

    cases: list[CaseSpec] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) > len(columns):
            problems.append(f"line {line}: {len(cells)} cells but the header has {len(columns)} columns")
            continue
        cells = cells + [""] * (len(columns) - len(cells))
        values = {c: v for c, v in zip(columns, cells, strict=True) if c not in unknown}
        case_id, step = values["case_id"], values["step"]
        where = f"line {line} (case {case_id or '?'})"
        if not CASE_ID_RE.match(case_id) or case_id.lower() in RESERVED_NAMES:
            problems.append(f"{where}: case_id '{case_id}' is not a usable folder name (letters, digits, . _ + -; "
                            f"not {', '.join(sorted(RESERVED_NAMES))})")
            continue
        if case_id.lower() in seen:
            problems.append(f"{where}: duplicate case_id (first on line {seen[case_id.lower()]})")
            continue
        seen[case_id.lower()] = line
        if step not in STEP_COMMANDS:
            problems.append(f"{where}: unknown step '{step}' (steps: {', '.join(STEP_COMMANDS)})")
            continue
        if parsers[step] is None:
            problems.append(f"{where}: step '{step}' needs `imagio {' '.join(STEP_COMMANDS[step])}`, which this "
                            f"imagio does not have")
            continue
        spec, errs = _row_to_case(case_id, step, line, values, options[step], base)
        if errs:
            problems.extend(f"{where}: {e}" for e in errs)
            continue
        err = _parse_check(root_parser, [*spec.argv, "--out", str(base / ".imagio-batch-parse-check")])
        if err:
            problems.append(f"{where}: {err}")
            continue
        cases.append(spec)

    if problems:
        shown = "; ".join(problems[:MAX_REPORTED]) + (f"; ... and {len(problems) - MAX_REPORTED} more"
                                                       if len(problems) > MAX_REPORTED else "")
        raise ImagioError(f"Manifest {path}: {len(problems)} problem(s): {shown}",
                          "Fix these rows; nothing was run")
    if not cases:
        raise ImagioError(f"Manifest {path} has no cases", "Add one row per case under the header")
    manifest = Manifest(path.resolve(), hashlib.sha256(raw).hexdigest(), cases)
    if hash_inputs:
        hash_case_inputs(manifest.cases)
    return manifest


def _row_to_case(case_id, step, line, values, opts: dict[str, StepOption], base: Path):
    errors: list[str] = []
    argv = list(STEP_COMMANDS[step])
    given: dict[str, object] = {}
    inputs: dict[str, list[str]] = {}
    for col, cell in values.items():
        if col in RESERVED_COLUMNS or cell == "":
            continue
        opt = opts.get(col)
        if opt is None:
            errors.append(f"step {step} has no option --{col.replace('_', '-')} (column {col})")
            continue
        if opt.kind == "flag":
            t = _truth(cell)
            if t is None:
                errors.append(f"column {col}: '{cell}' is not yes/no (a flag: true/false, yes/no, 1/0)")
            elif t:
                argv.append(opt.flag)
                given[col] = True
            continue
        items = [v.strip() for v in cell.split(LIST_SEPARATOR)] if opt.kind in ("list", "repeat") else [cell]
        items = [v for v in items if v]
        resolved = []
        for v in items:
            if not opt.typed and not opt.choices and (opt.dest in PATH_DESTS or _looks_like_path(v)):
                p = Path(v).expanduser()
                p = p if p.is_absolute() else base / p
                p = Path(os.path.abspath(p))
                if not p.exists():
                    errors.append(f"column {col}: {v} does not exist (looked for {p})")
                    continue
                inputs.setdefault(col, []).append(str(p))
                v = str(p)
            resolved.append(v)
        if opt.kind == "list":
            argv.append(opt.flag)
            argv.extend(resolved)
        elif opt.kind == "repeat":
            argv.extend(f"{opt.flag}={v}" for v in resolved)
        else:
            argv.append(f"{opt.flag}={resolved[0]}" if resolved else opt.flag)
        given[col] = resolved if opt.kind in ("list", "repeat") else (resolved[0] if resolved else "")
    return CaseSpec(case_id, step, line, argv, given, inputs), errors


def hash_case_inputs(cases: list[CaseSpec], threads: int = 4) -> None:
    """Fill each case's input_sha256 (files shared by several cases are hashed once)."""
    paths = sorted({p for c in cases for ps in c.inputs.values() for p in ps})
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths) or 1))) as pool:
        digests = dict(zip(paths, pool.map(lambda p: sha256_path(Path(p)), paths), strict=True))
    for c in cases:
        c.input_sha256 = {k: [digests[p] for p in v] for k, v in c.inputs.items()}


__all__ = ["STEP_COMMANDS", "CaseSpec", "Manifest", "read_manifest", "step_parser", "step_options", "sha256_path",
           "hash_case_inputs"]
