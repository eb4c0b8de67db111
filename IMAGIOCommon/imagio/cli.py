"""The `imagio` command line: phantom, convert, demo, and the modules' sub-commands.

Bad input ends with one line ``imagio: error: <what>. <what to do>`` on
stderr and exit status 2, without a traceback, and without output files.

Every sub-command gets, centrally (:func:`imagio.cli_utils.harden_parser`): values such as
``-12.5,30,40`` read as values; ``type=float``/``int`` options checked finite and bounded;
``--overwrite`` where there is ``--out``; its path arguments checked (no FIFOs or devices);
``--out`` checked before the work starts. SIGINT and SIGTERM remove a half-written output.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path

from . import __version__
from .batch import register_cli as register_batch  # light: dask is imported only when a batch runs
from .cli_utils import (
    ArgumentParser,
    check_out_dir,
    check_readable_path,
    harden_parser,
    number,
    output_policy,
    path_arguments,
    staged_output,
    write_json,
)
from .dicom_export import register_cli as register_export_dicom
from .errors import Cancelled, ImagioError
from .naming import apply_renames
from .progress import end_live_lines

#: The modules' command-line parts, in workflow order; each has ``register_cli(subparsers)``.
#: Core commands are registered by :func:`_register_core`; add a core command there, a module here.
MODULE_CLIS = ("IMAGIOPlanningLib.cli", "IMAGIOAblationZoneLib.cli", "IMAGIOLungNavLib.cli", "IMAGIOMarginLib.cli")

RANDOM_SEED = number(min=0, max=2**32 - 1, integer=True)


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived: unwind (removing staged outputs) and exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _below_error_dropped(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _quiet_native(debug: bool) -> None:
    """VTK's, ITK's and pydicom's warnings off the terminal (readers capture and translate what matters).

    pydicom logs each value of an input that breaks the standard's length limits ("The value length (18)
    exceeds the maximum length of 16 allowed for VR SH": STS-002's StudyID) as a WARNING on the "pydicom"
    logger, which printed as bare "imagio: ..." lines, three of them before any result or error line. A filter,
    not a level: importing pydicom sets its logger's level.
    """
    if debug:
        logging.getLogger("pydicom").removeFilter(_below_error_dropped)
        return
    logging.getLogger("pydicom").addFilter(_below_error_dropped)
    try:  # vtkCommonCore alone: ~30 ms, unlike `import vtk` (~300 ms)
        from vtkmodules.vtkCommonCore import vtkLogger, vtkObject

        vtkObject.GlobalWarningDisplayOff()
        vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
    except ImportError:
        pass
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    except (ImportError, AttributeError):
        pass


#: numpy's floating-point RuntimeWarnings: IMAGIO checks the results themselves (NaN, empty, out of range)
#: and says so in its own words, so the raw warning is only logged (visible with --debug).
_NUMERIC_WARNING = re.compile(r"encountered in|divide by zero|overflow|underflow|Mean of empty slice|"
                              r"Degrees of freedom|invalid value", re.I)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    if issubclass(category, RuntimeWarning) and _NUMERIC_WARNING.search(text):
        logging.getLogger("imagio").debug("numeric warning at %s:%s: %s", filename, lineno, text)
        return
    if issubclass(category, DeprecationWarning):
        logging.getLogger("imagio").debug("%s at %s:%s: %s", category.__name__, filename, lineno, text)
        return
    print(f"imagio: warning: {text[:300]}", file=sys.stderr)


def _random_seed(args, command: str) -> int:
    """``--random-seed``; the old ``--seed`` still works for one release, with a warning."""
    if getattr(args, "seed_deprecated", None) is not None:
        print(f"imagio: warning: '{command} --seed' is deprecated and will be removed; use --random-seed",
              file=sys.stderr)
        if args.random_seed is not None and args.random_seed != args.seed_deprecated:
            raise ImagioError(f"--seed {args.seed_deprecated} and --random-seed {args.random_seed} disagree",
                              "Give only --random-seed")
        return args.seed_deprecated
    return 0 if args.random_seed is None else args.random_seed


def _add_random_seed(p, what: str) -> None:
    p.add_argument("--random-seed", type=RANDOM_SEED, default=None, metavar="N",
                   help=f"{what} (0 to 2^32-1, default 0)")
    p.add_argument("--seed", dest="seed_deprecated", type=RANDOM_SEED, default=None, metavar="N",
                   help="deprecated: the same as --random-seed")


def _cmd_phantom(args) -> int:
    from .phantom import make_phantom, write_phantom

    seed = _random_seed(args, "phantom")
    with staged_output(args.out) as stage:
        ph = make_phantom(seed)
        write_phantom(ph, stage)
    print(f"phantom (random seed {seed}) written to {args.out}: ct.nrrd, truth.seg.nrrd, "
          f"airway_centerlines.json, case.json")
    return 0


def _cmd_convert(args) -> int:
    from .geometry import describe_grid
    from .io import combine_segments, read_image, read_segmentation, require_nonempty, write_image, write_segmentation

    ct = read_image(args.ct, args.series_uid)
    seg_paths = list(args.seg or ())
    segments = combine_segments([read_segmentation(path, reference=ct) for path in seg_paths],
                                [Path(path).name for path in seg_paths])
    for s in segments:
        require_nonempty(s, "segment")
    apply_renames(segments, args.rename or ())
    inputs = [args.ct, *(args.seg or ())]
    with staged_output(args.out, inputs=inputs) as stage:
        write_image(stage / "ct.nrrd", ct)
        info = {"source_ct": str(args.ct), "grid": describe_grid(ct), "size_ijk": list(ct.GetSize()),
                "spacing_mm": list(ct.GetSpacing()), "segments": []}
        if segments:
            write_segmentation(stage / "segmentation.seg.nrrd", segments, ct)
            info["segments"] = [{"name": s.name, "volume_ml": round(s.volume_ml(), 4), "voxels": s.voxel_count()}
                                for s in segments]
        write_json(stage / "case.json", info)
    print(f"case written to {args.out}: ct.nrrd" + (", segmentation.seg.nrrd" if segments else "") + ", case.json")
    for s in info["segments"]:
        print(f"  {s['name']}: {s['volume_ml']:.2f} ml")
    return 0


def _cmd_demo(args) -> int:
    from .demo import demo_numbers, run_demo

    seed = _random_seed(args, "demo")
    steps = [s.strip() for s in args.steps.split(",")] if args.steps else None
    summary = run_demo(Path(args.out), Path(args.case) if args.case else None, seed, steps,
                       tumor_segment=args.tumor_segment)
    out = Path(args.out)
    print(f"wrote {out / 'scene.mrb'}, {out / 'report.html'}, {out / 'summary.json'} "
          f"in {summary['total_runtime_s']:.1f} s")
    for line in demo_numbers(summary):
        print(line)
    failed = [k for k, v in summary.items() if isinstance(v, dict) and v.get("status") == "failed"]
    return 1 if failed else 0


def _register_core(sub) -> None:
    p = sub.add_parser("phantom", help="write the digital phantom (CT in HU with ground-truth segmentations)")
    p.add_argument("--out", required=True, help="output folder")
    _add_random_seed(p, "random seed of the phantom's shapes and noise")
    p.set_defaults(func=_cmd_phantom)
    p = sub.add_parser("convert", help="read a CT (DICOM folder, NRRD, NIfTI, MHA) and segmentations (.seg.nrrd, "
                       "label maps, RTSTRUCT, DICOM SEG) into a case folder for Slicer and 'imagio demo --case'")
    p.add_argument("--ct", required=True, help="CT: DICOM series folder or image file")
    p.add_argument("--series-uid", help="series to read when the DICOM folder holds several")
    p.add_argument("--seg", nargs="*", help="segmentation files (rasterised on the CT grid)")
    p.add_argument("--rename", action="append", metavar="OLD=NEW",
                   help="rename a segment (repeatable), e.g. --rename GTV-1=lung_tumor")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_convert)
    p = sub.add_parser("demo", help="run the whole workflow on the phantom (or --case) and write scene.mrb + report")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--case", help="case folder with ct.nrrd (or a DICOM folder image/) and *.seg.nrrd files")
    _add_random_seed(p, "random seed of the phantom")
    p.add_argument("--steps", help="comma-separated subset of: planning,ablation,lungnav,margin")
    p.add_argument("--tumor-segment", help="the tumour segment of --case (default: recognised by terminology or "
                   "name: GTV, tumour, lesion, nodule, mass, metastasis, ...)")
    p.set_defaults(func=_cmd_demo)
    register_batch(sub)
    register_export_dicom(sub)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="imagio", description="IMAGIO: interventional oncology planning and "
                            "assessment on Slicer's MRML (points in RAS millimetres).")
    parser.add_argument("--version", action="version", version=f"imagio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and VTK warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    _register_core(sub)
    for name in MODULE_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise  # a missing dependency inside an installed module is a real failure
            continue
        module.register_cli(sub)
    return harden_parser(parser)


def _check_arguments(args):
    """Before any work: input paths are regular files or folders; ``--out`` is usable."""
    inputs = path_arguments(args)
    for p in inputs:
        check_readable_path(p)
    if getattr(args, "out", None) is not None:
        check_out_dir(args.out, inputs, bool(getattr(args, "overwrite", False)))
    return inputs


def _install_signal_handlers():
    """SIGTERM/SIGHUP raise :class:`Terminated` (SIGINT raises KeyboardInterrupt), so outputs unwind."""
    def on_signal(signum, frame):
        raise Terminated(signum)

    old = {}
    try:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if s is not None:
                old[s] = signal.signal(s, on_signal)
    except ValueError:  # not the main thread: leave signals alone
        pass
    return old


def _restore_signal_handlers(old) -> None:
    for s, h in old.items():
        try:
            signal.signal(s, h)
        except (ValueError, TypeError):
            pass


def _fail(message: str) -> None:
    end_live_lines()
    print(message, file=sys.stderr)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="imagio: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    old_handlers = _install_signal_handlers()
    old_showwarning = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _show_warning
    try:
        inputs = _check_arguments(args)
        _quiet_native(args.debug)
        with output_policy(bool(getattr(args, "overwrite", False)), inputs):
            return int(args.func(args) or 0)
    except Cancelled:
        _fail("imagio: cancelled")
        return 130
    except KeyboardInterrupt:
        _fail("imagio: interrupted")
        return 130
    except Terminated as e:
        _fail(f"imagio: terminated by signal {e.signum}")
        return 128 + e.signum
    except BrokenPipeError:  # the reader of our output went away (e.g. `imagio ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ImagioError as e:
        if args.debug:
            raise
        _fail(f"imagio: error: {e}")
        return 2
    except MemoryError:
        if args.debug:
            raise
        _fail("imagio: error: not enough memory for this input. Use a smaller input or a machine with more memory")
        return 2
    except Exception as e:  # noqa: BLE001 - a last line of defence: one line, not a traceback
        if args.debug:
            raise
        _fail(f"imagio: internal error: {type(e).__name__}: {e} (rerun with --debug for details and report it)")
        return 1
    finally:
        _restore_signal_handlers(old_handlers)
        warnings.showwarning = old_showwarning


if __name__ == "__main__":
    sys.exit(main())
