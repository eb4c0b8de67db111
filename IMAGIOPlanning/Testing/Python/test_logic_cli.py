"""PlanningLogic on a real vtkMRMLScene, the `imagio segment` / `imagio models` CLI, the background worker."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.cli import main
from imagio.engine import CPU_PROVIDERS
from imagio.errors import ImagioError
from imagio.geometry import ijk_to_ras, make_image, rotation_matrix
from imagio.io import read_segmentation
from imagio.mrml import volume_node_from_image
from imagio.scene import new_scene
from IMAGIOPlanningLib.background import BackgroundJob
from IMAGIOPlanningLib.logic import PlanningLogic


def two_class_ct():
    """Oblique anisotropic CT: a 12 mm sphere of 60 HU and a denser 6 mm sphere (400 HU) in -1000 HU air."""
    size = (56, 48, 28)
    img = make_image(size, (1.4, 1.5, 2.2), origin_ras=(5, -8, 30), direction_ras=rotation_matrix((0, 1, 1), 30),
                     pixel=sitk.sitkInt16)
    kk, jj, ii = np.mgrid[:size[2], :size[1], :size[0]]
    ras = ijk_to_ras(img, np.c_[ii.ravel(), jj.ravel(), kk.ravel()]).reshape(size[2], size[1], size[0], 3)
    c1, c2 = ijk_to_ras(img, [20, 24, 14]), ijk_to_ras(img, [42, 24, 14])
    arr = np.full(ras.shape[:3], -1000, np.int16)
    arr[np.linalg.norm(ras - c1, axis=-1) < 12] = 60
    arr[np.linalg.norm(ras - c2, axis=-1) < 6] = 400
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out, c1


@pytest.fixture
def three_class_card(tmp_path, models):
    # logits: class 1 0.01 (x + 300), class 2 0.02 (x + 300) - 2, so class 2 wins above -100 HU
    models.pointwise(tmp_path / "m3.onnx", classes=3, threshold_hu=-300.0)
    return models.card(tmp_path, "m3.onnx", classes=3, spacing=(2.2, 1.5, 1.4))


def test_logic_model_adds_named_coded_segments(three_class_card):
    ct, _ = two_class_ct()
    scene = new_scene()
    node = volume_node_from_image(scene, ct, "CT")
    before = sitk.GetArrayFromImage(ct).copy()
    res = PlanningLogic(scene).segment_with_model_nodes(node, three_class_card)
    assert res.method == "model" and res.execution_provider in CPU_PROVIDERS
    names = [s["name"] for s in res.segments]
    seg = res.node.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == names
    import vtk

    tag = vtk.reference("")
    assert seg.GetNthSegment(0).GetTag("TerminologyEntry", tag)
    assert "SCT^108369006^Tumor" in str(tag)
    for s in res.segments:
        assert s["voxel_count"] > 0 and s["volume_ml"] == pytest.approx(s["voxel_count"] * 1.4 * 1.5 * 2.2 / 1000, rel=1e-3)
    from imagio.mrml import image_from_volume_node
    assert np.array_equal(sitk.GetArrayFromImage(image_from_volume_node(node)), before)  # input untouched


def test_logic_flags_labels_the_model_did_not_find(tmp_path, models):
    models.pointwise(tmp_path / "m3.onnx", classes=3, threshold_hu=-300.0)
    card = models.card(tmp_path, "m3.onnx", classes=3, spacing=(2.2, 1.5, 1.4))
    ct, _ = two_class_ct()
    arr = sitk.GetArrayFromImage(ct)
    arr[arr > 0] = 60  # only the first kind of tissue left: the dense class is absent
    ct2 = sitk.GetImageFromArray(arr)
    ct2.CopyInformation(ct)
    scene = new_scene()
    res = PlanningLogic(scene).segment_with_model_nodes(volume_node_from_image(scene, ct2, "CT"), card)
    assert res.empty_labels  # reported, not returned as an empty segment
    assert all(s["voxel_count"] > 0 for s in res.segments)


def test_logic_refuses_when_nothing_is_found(pointwise_card):
    ct = sitk.GetImageFromArray(np.where(np.arange(20 * 30 * 30).reshape(20, 30, 30) % 7 == 0, -1000, -900)
                                .astype(np.int16))
    scene = new_scene()
    with pytest.raises(ImagioError, match="found none of its labels"):
        PlanningLogic(scene).segment_with_model_nodes(volume_node_from_image(scene, ct, "CT"), pointwise_card)


def test_logic_seeded_segment(tmp_path):
    ct, c1 = two_class_ct()
    scene = new_scene()
    res = PlanningLogic(scene).segment_from_seed_nodes(volume_node_from_image(scene, ct, "CT"), c1, "soft-tissue")
    assert res.segments[0]["name"] == "Soft-tissue lesion"
    true_ml = 4 / 3 * np.pi * 12 ** 3 / 1000
    assert res.segments[0]["volume_ml"] == pytest.approx(true_ml, rel=0.1)


def _write(tmp_path, image, name="ct.nrrd"):
    p = tmp_path / name
    sitk.WriteImage(image, str(p))
    return p


def test_cli_segment_with_model(tmp_path, three_class_card, capsys):
    ct, _ = two_class_ct()
    ct_path = _write(tmp_path, ct)
    out = tmp_path / "out"
    assert main(["segment", "--ct", str(ct_path), "--model", str(three_class_card), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "segment.json").read_text())
    for key in ("segments", "runtime_s", "execution_provider", "method"):
        assert key in summary
    assert summary["execution_provider"] in CPU_PROVIDERS
    segs = read_segmentation(out / "segmentation.seg.nrrd", reference=ct)
    assert [s.name for s in segs] == [s["name"] for s in summary["segments"]]
    for s, row in zip(segs, summary["segments"], strict=True):
        assert s.voxel_count() == row["voxel_count"]
        assert row["volume_ml"] == pytest.approx(s.volume_ml(), rel=1e-3)
    assert (out / "segment.mrb").stat().st_size > 1000
    assert "ml" in capsys.readouterr().out


def test_cli_segment_with_seed(tmp_path):
    ct, c1 = two_class_ct()
    ct_path = _write(tmp_path, ct)
    out = tmp_path / "seeded"
    seed = ",".join(f"{v:.3f}" for v in c1)
    assert main(["segment", "--ct", str(ct_path), f"--seed={seed}", "--kind", "soft-tissue", "--radius", "12",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "segment.json").read_text())
    assert summary["method"] == "seeded" and summary["radius_mm"] == 12.0
    assert summary["segments"][0]["volume_ml"] == pytest.approx(4 / 3 * np.pi * 1.728, rel=0.1)


@pytest.mark.parametrize("args,message", [
    (["--seed=900,0,0"], "outside the CT"),
    (["--model", "/nonexistent/model.json"], "does not exist"),
    (["--model", "no-such-model-name"], "No model card named"),
    (["--seed=1,2"], "is not a seed point"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    ct, _ = two_class_ct()
    ct_path = _write(tmp_path, ct)
    out = tmp_path / "never"
    assert main(["segment", "--ct", str(ct_path), *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def _bad_model(kind, d, models):
    if kind == "channels":  # the network takes 2 channels, its card says 1
        models.pointwise(d / "m.onnx", channels=2)
        return models.card(d, "m.onnx", channels=1)
    if kind == "patch":  # a fixed 32^3 input, the card says 16 x 24 x 24
        models.pointwise(d / "m.onnx", spatial=(32, 32, 32))
        return models.card(d, "m.onnx", patch=(16, 24, 24))
    if kind == "not-onnx":  # a pickle-like blob named .onnx: never unpickled, refused as not ONNX
        (d / "m.onnx").write_bytes(b"\x80\x04\x95" + b"not a model " * 40)
        return models.card(d, "m.onnx")
    # windows: overlap 0.9 with a 4 x 4 x 4 patch at 0.5 mm on the 78 x 72 x 62 mm CT: 300,000+ windows
    models.pointwise(d / "m.onnx")
    return models.card(d, "m.onnx", patch=(4, 4, 4), spacing=(0.5, 0.5, 0.5), overlap=0.9)


@pytest.mark.parametrize("kind,message", [
    ("channels", "expects 2 input channels but its card says 1"),
    ("patch", "has a fixed input size [32, 32, 32] that differs from the card's patch_size_kji [16, 24, 24]"),
    ("not-onnx", "m.onnx is not a valid ONNX model or is truncated"),
    ("windows", "sliding windows of 4 x 4 x 4 voxels on this CT"),
])
def test_cli_bad_model_one_line_exit_2_nothing_written(tmp_path, capsys, models, kind, message):
    """A card that lies about its network, a file that is not ONNX, a run of unbounded length: one line, exit 2."""
    ct, _ = two_class_ct()
    ct_path = _write(tmp_path, ct)
    (tmp_path / "model").mkdir()
    card = _bad_model(kind, tmp_path / "model", models)
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    out = tmp_path / "never"
    assert main(["segment", "--ct", str(ct_path), "--model", str(card), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imagio: error: ") and message in err[0], err
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before


def test_card_folder_scan_skips_binary_and_pipe_json(tmp_path, models):
    """A folder with the card, a binary weights.json and a named pipe *.json: the card is found, nothing blocks."""
    import os

    from imagio.model_card import load_card

    models.pointwise(tmp_path / "m.onnx")
    models.card(tmp_path, "m.onnx", name="the-card")
    (tmp_path / "weights.json").write_bytes(bytes(range(256)) * 8)  # not UTF-8
    os.mkfifo(tmp_path / "pipe.json")
    assert load_card(tmp_path).name == "the-card"
    (tmp_path / "m.json").unlink()
    with pytest.raises(ImagioError, match="must hold exactly one model card, found none"):
        load_card(tmp_path)


def test_window_bound_is_stated_and_counted_as_nnunet_tiles():
    from imagio.engine import MAX_WINDOWS, window_count

    # nnU-Net's tiles: (100 - 48) / 24 -> 4 positions, 48 -> 1, (60 - 48) / 24 -> 2: 8 windows
    assert window_count((100, 48, 60), (48, 48, 48), 0.5) == 8
    assert window_count((10, 10, 10), (48, 48, 48), 0.5) == 1  # padded to the patch
    # the benchmark's 48 x 64 x 64 model on a 512 x 512 x 300 CT (200 x 400 x 400 at 1.5 x 1 x 1 mm): 8 x 12 x 12
    assert window_count((200, 400, 400), (48, 64, 64), 0.5) == 1152 < MAX_WINDOWS
    # the attack: overlap 0.9 (a step of 32 x (1 - 0.9) = 3.1999... voxels), 0.5 mm, 32^3 on 120 x 120 x 100 mm:
    # ceil(168 / 3.2) + 1 = 54 and ceil(208 / 3.1999...) + 1 = 67 positions per axis
    assert window_count((200, 240, 240), (32, 32, 32), 0.9) == 54 * 67 * 67 > MAX_WINDOWS


def test_window_bound_can_be_moved_by_the_environment(tmp_path, models, monkeypatch):
    from imagio.engine import OnnxSegmenter

    ct, _ = two_class_ct()
    models.pointwise(tmp_path / "m.onnx")
    card = models.card(tmp_path, "m.onnx", spacing=(2.2, 1.5, 1.4), patch=(8, 16, 16))
    seg = OnnxSegmenter(card)
    n = seg.predict(ct).windows
    monkeypatch.setenv("IMAGIO_MAX_WINDOWS", str(n - 1))
    with pytest.raises(ImagioError, match=f"would need {n:,} sliding windows .* more than the {n - 1:,} windows"):
        seg.predict(ct)
    monkeypatch.setenv("IMAGIO_MAX_WINDOWS", str(n))
    assert seg.predict(ct).windows == n
    monkeypatch.setenv("IMAGIO_MAX_WINDOWS", "many")
    with pytest.raises(ImagioError, match="IMAGIO_MAX_WINDOWS must be a whole number"):
        seg.predict(ct)


def test_cli_models_lists_shipped_and_env(tmp_path, models, monkeypatch, capsys):
    models.pointwise(tmp_path / "extra.onnx")
    models.card(tmp_path, "extra.onnx", name="my-extra-model")
    monkeypatch.setenv("IMAGIO_MODELS", str(tmp_path))
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in listed["models"]]
    assert "my-extra-model" in names
    assert "phantom-lesions" in names
    shipped = next(m for m in listed["models"] if m["name"] == "phantom-lesions")
    assert shipped["clinical_use"] is False


def test_background_job_runs_and_reports(tmp_path, three_class_card):
    ct, _ = two_class_ct()
    job = BackgroundJob(ct, three_class_card, work_dir=tmp_path / "job")
    try:
        deadline = time.monotonic() + 120
        status = job.poll()
        while status.state == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
            status = job.poll()
        assert status.state == "done", status.message
        labels = job.labels()
        assert labels.GetSize() == ct.GetSize() and labels.GetOrigin() == ct.GetOrigin()
        assert job.result()["execution_provider"] in CPU_PROVIDERS
        from imagio.engine import OnnxSegmenter

        same = OnnxSegmenter(three_class_card).predict(ct).labels  # the worker gives what the engine gives in-process
        assert np.array_equal(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(same))
        assert sitk.GetArrayViewFromImage(labels).max() > 0
    finally:
        job.cleanup()
    assert not (tmp_path / "job").exists()


def test_background_job_reports_user_errors(tmp_path, models):
    models.pointwise(tmp_path / "m.onnx", channels=2)
    card = models.card(tmp_path, "m.onnx", channels=1)
    ct, _ = two_class_ct()
    job = BackgroundJob(ct, card, work_dir=tmp_path / "job")
    try:
        job.process.wait(timeout=120)
        status = job.poll()
        assert status.state == "failed" and "input channels" in status.message
        assert job.process.returncode == 2
    finally:
        job.cleanup()


def test_background_job_cancel_ends_the_process(tmp_path, three_class_card):
    ct, _ = two_class_ct()
    job = BackgroundJob(ct, three_class_card, work_dir=tmp_path / "job")
    job.cancel()
    assert job.process.poll() is not None  # the process (group) is gone
    assert job.poll().state == "cancelled"
    assert not (tmp_path / "job" / "labels.nrrd").exists()
    job.cleanup()


def test_worker_imports_no_slicer_code():
    """The background script must start with Slicer's plain Python: no slicer, vtk or Qt imports."""
    import subprocess
    import sys

    code = ("import sys\nfor m in ('slicer', 'vtk', 'qt', 'ctk'): sys.modules[m] = None\n"
            "import IMAGIOPlanningLib.worker, imagio.engine, imagio.model_card\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
