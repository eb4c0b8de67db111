"""The `imagio` command line: phantom, demo, and the modules' sub-commands.

Bad input ends with one line ``imagio: error: <what>. <what to do>`` on
stderr and exit status 2, without a traceback, and without output files.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import Cancelled, ImagioError

MODULE_CLIS = ("IMAGIOPlanningLib.cli", "IMAGIOAblationZoneLib.cli", "IMAGIOLungNavLib.cli", "IMAGIOMarginLib.cli")


def _quiet_vtk(debug: bool) -> None:
    import vtk

    if not debug:
        vtk.vtkObject.GlobalWarningDisplayOff()
        if hasattr(vtk, "vtkLogger"):
            vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)


def _cmd_phantom(args) -> int:
    from .cli_utils import staged_output
    from .phantom import make_phantom, write_phantom

    with staged_output(args.out) as stage:
        ph = make_phantom(args.seed)
        write_phantom(ph, stage)
    print(f"phantom (seed {args.seed}) written to {args.out}: ct.nrrd, truth.seg.nrrd, "
          f"airway_centerlines.json, case.json")
    return 0


def _cmd_convert(args) -> int:
    from .cli_utils import staged_output, write_json
    from .geometry import describe_grid
    from .io import read_image, read_segmentation, require_nonempty, write_image, write_segmentation

    ct = read_image(args.ct, args.series_uid)
    segments = []
    for path in args.seg or ():
        for s in read_segmentation(path, reference=ct):
            require_nonempty(s, "segment")
            segments.append(s)
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

    steps = [s.strip() for s in args.steps.split(",")] if args.steps else None
    summary = run_demo(Path(args.out), Path(args.case) if args.case else None, args.seed, steps)
    out = Path(args.out)
    print(f"wrote {out / 'scene.mrb'}, {out / 'report.html'}, {out / 'summary.json'} "
          f"in {summary['total_runtime_s']:.1f} s")
    for line in demo_numbers(summary):
        print(line)
    failed = [k for k, v in summary.items() if isinstance(v, dict) and v.get("status") == "failed"]
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagio", description="IMAGIO: interventional oncology planning and "
                                     "assessment on Slicer's MRML (points in RAS millimetres).")
    parser.add_argument("--version", action="version", version=f"imagio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and VTK warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("phantom", help="write the digital phantom (CT in HU with ground-truth segmentations)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_phantom)
    p = sub.add_parser("convert", help="read a CT (DICOM folder, NRRD, NIfTI, MHA) and segmentations (.seg.nrrd, "
                       "label maps, RTSTRUCT, DICOM SEG) into a case folder for Slicer and 'imagio demo --case'")
    p.add_argument("--ct", required=True, help="CT: DICOM series folder or image file")
    p.add_argument("--series-uid", help="series to read when the DICOM folder holds several")
    p.add_argument("--seg", nargs="*", help="segmentation files (rasterised on the CT grid)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_convert)
    p = sub.add_parser("demo", help="run the whole workflow on the phantom (or --case) and write scene.mrb + report")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--case", help="case folder with ct.nrrd (or a DICOM folder image/) and *.seg.nrrd files")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--steps", help="comma-separated subset of: planning,ablation,lungnav,margin")
    p.set_defaults(func=_cmd_demo)
    for name in MODULE_CLIS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.register_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="imagio: %(message)s")
    _quiet_vtk(args.debug)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("imagio: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("imagio: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (e.g. `imagio ... | head`)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ImagioError as e:
        if args.debug:
            raise
        print(f"imagio: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(f"imagio: internal error: {type(e).__name__}: {e} (rerun with --debug for details and report it)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
