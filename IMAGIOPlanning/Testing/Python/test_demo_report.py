"""The demo report's planning verdict says what happened: a refused seeded segmentation is a warning with its
reason, never a green "nan ml" (seen on LUNG1-001, whose 156 ml GTV is larger than a lung nodule)."""

from types import SimpleNamespace

from imagio.report import Report
from IMAGIOPlanningLib.report import demo_report


def _verdicts(planning_summary: dict, is_phantom: bool = False):
    ctx = SimpleNamespace(summary={"planning": planning_summary}, report=Report("t"),
                          case=SimpleNamespace(is_phantom=is_phantom, results={}))
    demo_report(ctx)
    return ctx.report.verdicts


def test_refused_seeded_segmentation_is_a_warning_with_its_reason():
    reason = "Not a lung nodule at the seed: the region is 92.6 ml, more than 65.0 ml"
    [(text, level)] = _verdicts({"seeded": {"kind": "lung-nodule", "segment": "GTV-1", "refused": reason}})
    assert level == "warn" and "nan" not in text
    assert text == f"Segmentation: seeded lung-nodule refused: {reason}"


def test_seeded_segmentation_gives_its_volume_and_dice():
    [(text, level)] = _verdicts({"seeded": {"kind": "soft-tissue", "segment": "GTV", "volume_ml": 89.66,
                                            "dice_vs_truth": 0.7425}})
    assert level == "ok" and text == "Segmentation: seeded soft-tissue: 89.66 ml (Dice 0.74 vs the case's 'GTV')"
