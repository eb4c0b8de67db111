"""Micro-benchmark: ms per sliding window of the engine's float16 aggregation, before (numpy float16 buffers,
``(a.astype(float32) + pred).astype(float16)``) and now (float32-held float16 values, ``round_to_float16``),
on the bench model's patch (48x64x64, 3 classes) over a 512-wide plane, in one run. Only the window update
(accumulator + weight sum); no network. Run: python benchmarks/bench_aggregation.py [--windows N]."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from imagio.engine import gaussian_importance_map, round_to_float16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    patch, nout, plane = (48, 64, 64), 3, 512
    pz, py, px = patch
    g32 = gaussian_importance_map(patch).astype(np.float32)
    rng = np.random.default_rng(0)
    preds = [rng.normal(0, 3, (nout, *patch)).astype(np.float32) for _ in range(4)]
    pos = [(int(y), int(x)) for y, x in rng.integers(0, plane - 64, (a.windows, 2))]

    def old():
        acc = np.zeros((nout, pz, plane, plane), np.float16)
        wsum = np.zeros((pz, plane, plane), np.float16)
        t0 = time.perf_counter()
        for i, (y, x) in enumerate(pos):
            pred = preds[i % 4] * g32
            r = (slice(None), slice(y, y + py), slice(x, x + px))
            acc[(slice(None), *r)] = (acc[(slice(None), *r)].astype(np.float32) + pred).astype(np.float16)
            wsum[r] = (wsum[r].astype(np.float32) + g32).astype(np.float16)
        return (time.perf_counter() - t0) / len(pos) * 1e3, acc, wsum

    def new():
        acc = np.zeros((nout, pz, plane, plane), np.float32)
        wsum = np.zeros((pz, plane, plane), np.float32)
        scratch = np.empty((nout, *patch), np.uint32)
        work = np.empty((nout, *patch), np.float32)
        wtmp = np.empty(patch, np.float32)
        t0 = time.perf_counter()
        for i, (y, x) in enumerate(pos):
            pred = preds[i % 4] * g32
            r = (slice(None), slice(y, y + py), slice(x, x + px))
            av = acc[(slice(None), *r)]
            np.add(av, pred, out=pred)
            round_to_float16(pred, out=av, scratch=scratch, work=work)
            wv = wsum[r]
            np.add(wv, g32, out=wtmp)
            round_to_float16(wtmp, out=wv, scratch=scratch[0], work=work[0])
        return (time.perf_counter() - t0) / len(pos) * 1e3, acc, wsum

    res = {"old_ms_per_window": [], "new_ms_per_window": []}
    for _ in range(a.repeats):
        t_old, acc_o, w_o = old()
        t_new, acc_n, w_n = new()
        res["old_ms_per_window"].append(round(t_old, 2))
        res["new_ms_per_window"].append(round(t_new, 2))
    same = (np.array_equal(acc_o.view(np.uint16), acc_n.astype(np.float16).view(np.uint16))
            and np.array_equal(w_o.view(np.uint16), w_n.astype(np.float16).view(np.uint16)))
    res.update(windows=a.windows, patch=list(patch), classes=nout, bit_identical=bool(same),
               speedup_median=round(float(np.median(res["old_ms_per_window"]) / np.median(res["new_ms_per_window"])), 1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
