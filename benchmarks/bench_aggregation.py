"""Micro-benchmark: ms per sliding window of the engine's float16 aggregation, before (numpy float16 buffers,
``(a.astype(float32) + pred).astype(float16)``) and now (float32-held float16 values, ``round_to_float16``),
on the bench model's patch (48 x 64 x 64, 3 classes, its Gaussian importance map) over a 512-wide plane, in one
run. Only the window update (accumulator + weight sum); no network. The two are timed window by window,
interleaved, so the shared machine's load hits both alike; the accumulators are compared bit for bit.
Run: python benchmarks/bench_aggregation.py [--windows N] [--logit-sd S].

``--against REV``: instead, the whole engine at git revision REV (e.g. a353ee0~1, before this change) and the
current one, each run twice, interleaved, with the shipped phantom model (patch 32^3, 3 outputs, 1 thread) on
LIDC-0314 slices 60-199 (512 x 512 x 140, real CT from $IMAGIO_DATA): their timings and whether labels and
probabilities are identical bit for bit."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imagio import engine
from imagio.engine import gaussian_importance_map, round_to_float16

REPO = Path(__file__).resolve().parents[1]


def against(rev: str) -> dict:
    import SimpleITK as sitk

    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:IMAGIOCommon/imagio/engine.py"], check=True,
                         capture_output=True, text=True).stdout
    src = src.replace("from .model_card import", "from imagio.model_card import")
    tmp = Path(tempfile.mkdtemp()) / "engine_at_rev.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location("engine_at_rev", tmp)
    old = importlib.util.module_from_spec(spec)
    sys.modules["engine_at_rev"] = old
    spec.loader.exec_module(old)
    data = Path(os.environ.get("IMAGIO_DATA", REPO.parent / "shared" / "data"))
    img = sitk.ReadImage(str(data / "chest-lidc0314" / "ct.nrrd"))[:, :, 60:200]
    card = REPO / "IMAGIOCommon" / "imagio" / "models" / "phantom_lesions" / "phantom_lesions.json"
    out, last = {"revision": rev, "case": "LIDC-0314 slices 60-199 (512x512x140)", "old": [], "new": []}, {}
    for _ in range(2):
        for name, mod in (("old", old), ("new", engine)):
            r = mod.OnnxSegmenter(card, threads=1).predict(img, probabilities=True)
            out[name].append({k: round(v, 2) for k, v in r.timings_s.items()})
            out["windows"] = r.windows
            last[name] = (sitk.GetArrayFromImage(r.labels),
                          {k: sitk.GetArrayFromImage(v) for k, v in r.probabilities.items()})
    (lo, po), (ln, pn) = last["old"], last["new"]
    out["labels_identical"] = bool(np.array_equal(lo, ln))
    out["probabilities_identical_bits"] = bool(po.keys() == pn.keys() and all(
        np.array_equal(po[k].view(np.uint32), pn[k].view(np.uint32)) for k in po))
    out["label_voxels"] = {int(v): int((ln == v).sum()) for v in np.unique(ln)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--logit-sd", type=float, default=3.0, help="standard deviation of the fake logits")
    ap.add_argument("--against", metavar="REV", help="compare whole predictions with the engine at git REV")
    a = ap.parse_args()
    if a.against:
        print(json.dumps(against(a.against)))
        return
    patch, nout, plane = (48, 64, 64), 3, 512
    pz, py, px = patch
    g32 = gaussian_importance_map(patch).astype(np.float32)
    rng = np.random.default_rng(0)
    preds = [rng.normal(0, a.logit_sd, (nout, *patch)).astype(np.float32) for _ in range(4)]
    step = 32  # nnU-Net's 0.5 overlap in-plane
    pos = [(int(y), int(x)) for y in range(0, plane - py + 1, step) for x in range(0, plane - px + 1, step)]
    pos = [pos[i % len(pos)] for i in range(a.windows)]

    acc_o = np.zeros((nout, pz, plane, plane), np.float16)
    w_o = np.zeros((pz, plane, plane), np.float16)
    acc_n = np.zeros((nout, pz, plane, plane), np.float32)
    w_n = np.zeros((pz, plane, plane), np.float32)
    scratch = np.empty((nout, *patch), np.uint32)
    work = np.empty((nout, *patch), np.float32)
    wtmp = np.empty(patch, np.float32)
    t_old, t_new = [], []
    tiny = 0
    for i, (y, x) in enumerate(pos):
        r = (slice(None), slice(y, y + py), slice(x, x + px))
        pred = preds[i % 4] * g32
        t0 = time.perf_counter()
        acc_o[(slice(None), *r)] = (acc_o[(slice(None), *r)].astype(np.float32) + pred).astype(np.float16)
        w_o[r] = (w_o[r].astype(np.float32) + g32).astype(np.float16)
        t1 = time.perf_counter()
        av = acc_n[(slice(None), *r)]
        np.add(av, pred, out=pred)
        round_to_float16(pred, out=av, scratch=scratch, work=work)
        wv = w_n[r]
        np.add(wv, g32, out=wtmp)
        round_to_float16(wtmp, out=wv, scratch=scratch[0], work=work[0])
        t2 = time.perf_counter()
        t_old.append((t1 - t0) * 1e3)
        t_new.append((t2 - t1) * 1e3)
        tiny += int(((pred != 0) & (np.abs(pred) < 2.0 ** -14)).sum())
    same = (np.array_equal(acc_o.view(np.uint16), acc_n.astype(np.float16).view(np.uint16))
            and np.array_equal(w_o.view(np.uint16), w_n.astype(np.float16).view(np.uint16)))
    res = {"windows": a.windows, "patch": list(patch), "classes": nout, "logit_sd": a.logit_sd,
           "old_ms_per_window_median": round(float(np.median(t_old)), 2), "old_ms_per_window_min": round(min(t_old), 2),
           "new_ms_per_window_median": round(float(np.median(t_new)), 2), "new_ms_per_window_min": round(min(t_new), 2),
           "speedup_median": round(float(np.median(t_old) / np.median(t_new)), 1),
           "speedup_min": round(min(t_old) / min(t_new), 1),
           "share_of_sums_in_float16_subnormal_range": round(tiny / (a.windows * nout * pz * py * px), 4),
           "bit_identical": bool(same), "numpy": np.__version__}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
