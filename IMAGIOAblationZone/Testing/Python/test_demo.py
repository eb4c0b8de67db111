"""The ablation step of `imagio demo` on the phantom's liver tumour."""

import json

from imagio.demo import run_demo


def test_demo_step_plans_the_phantom_liver_tumour(tmp_path):
    summary = run_demo(tmp_path / "demo", steps=["ablation"])
    a = summary["ablation"]
    assert a["status"] == "ok", a
    assert a["feasible"] and a["coverage_percent"] >= 99.0 and a["probe_count"] >= 1
    assert a["runtime_s"] < 60  # generous; the benchmark measures speed
    assert 0 < a["bioheat_probe1"]["coverage_percent"] <= 100
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["ablation"]["feasible"]
    assert (tmp_path / "demo" / "images" / "ablation_axial.png").exists()
