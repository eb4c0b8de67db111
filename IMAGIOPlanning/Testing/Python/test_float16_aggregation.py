"""The engine's float16 window aggregation, done without numpy's slow float32 -> float16 cast, is bit for bit
the straightforward one (nnU-Net's float16 accumulator as the engine computed it before; kept below as
``reference_run``): exhaustively on every float16 value and its rounding boundaries, and on whole sliding-window
runs (overlaps, padding, several classes, folds, mirroring, tiny and large logits)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from imagio.engine import ImagioError, SlidingWindow, _predict_mirrored, compute_steps, round_to_float16


def reference_run(sw: SlidingWindow, data: np.ndarray, sink) -> int:
    """The aggregation as it was (engine before the float32-held accumulator): float16 buffers, every update
    ``(a.astype(float32) + pred).astype(float16)``."""
    c = sw.card
    patch = np.array(c.patch_size_kji)
    model_shape = np.array(data.shape[1:])
    pad = np.maximum(patch - model_shape, 0)
    pad_lo = pad // 2
    if pad.any():
        data = np.pad(data, [(0, 0)] + [(int(lo), int(n - lo)) for lo, n in zip(pad_lo, pad, strict=True)])
    pz, py, px = (int(v) for v in patch)
    padded = data.shape[1:]
    steps = compute_steps(padded, patch, 1.0 - c.overlap)
    nout = c.num_outputs
    nf = len(sw.backends)
    acc = np.zeros((nf, nout, pz, padded[1], padded[2]), np.float16)
    wsum = np.zeros((pz, padded[1], padded[2]), np.float16)
    b0 = 0
    zlo, ylo, xlo = (int(v) for v in pad_lo)
    zm, ym, xm = (int(v) for v in model_shape)
    for ti, sz in enumerate(steps[0]):
        o = sz - b0
        for sy in steps[1]:
            for sx in steps[2]:
                tile = np.ascontiguousarray(data[:, sz:sz + pz, sy:sy + py, sx:sx + px])
                region = (slice(o, o + pz), slice(sy, sy + py), slice(sx, sx + px))
                for f, backend in enumerate(sw.backends):
                    pred = _predict_mirrored(backend, tile, sw.mirror_axes)
                    pred *= sw.gauss32
                    a = acc[(f, slice(None), *region)]
                    acc[(f, slice(None), *region)] = (a.astype(np.float32) + pred).astype(np.float16)
                w = wsum[region]
                wsum[region] = (w.astype(np.float32) + sw.gauss32).astype(np.float16)
        f_end = steps[0][ti + 1] if ti + 1 < len(steps[0]) else padded[0]
        n = f_end - b0
        lo_m, hi_m = max(b0, zlo), min(f_end, zlo + zm)
        if hi_m > lo_m:
            zs = slice(lo_m - b0, hi_m - b0)
            w32 = wsum[zs, ylo:ylo + ym, xlo:xlo + xm].astype(np.float32)
            total16 = None
            for f in range(nf):
                lf = (acc[f, :, zs, ylo:ylo + ym, xlo:xlo + xm].astype(np.float32) / w32).astype(np.float16)
                total16 = lf if total16 is None else (total16.astype(np.float32) + lf).astype(np.float16)
            if nf > 1:
                total16 = (total16.astype(np.float32) / np.float32(nf)).astype(np.float16)
            if np.isinf(total16).any():
                raise ImagioError("The model's logits overflow float16 (as nnU-Net aggregates them)", "")
            sink.push(total16, lo_m - zlo)
        if n < pz:
            acc[:, :, :pz - n] = acc[:, :, n:].copy()
            wsum[:pz - n] = wsum[n:].copy()
            acc[:, :, pz - n:] = 0
            wsum[pz - n:] = 0
        else:
            acc[:] = 0
            wsum[:] = 0
        b0 = f_end
    sink.finish()
    return len(steps[0]) * len(steps[1]) * len(steps[2])


def bits32(x):
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def test_round_to_float16_is_numpys_cast_on_every_boundary():
    h = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # every finite f16 >= 0
    mid = (h[:-1].astype(np.float64) + h[1:]) / 2                                   # exact in float32
    mid = mid.astype(np.float32)
    near = [h, mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf)),
            np.nextafter(h, np.float32(0)), np.nextafter(h, np.float32(np.inf))]
    rng = np.random.default_rng(3)
    rand = (2.0 ** rng.uniform(-30, 17, 200_000)).astype(np.float32)               # f16 subnormals to overflow
    special = np.array([0, 65504, 65519.996, 65520, 65536, 1e-30, 2.0 ** -25, 2.0 ** -24 * 1.5, 2.0 ** -14,
                        np.float32(2.0 ** -14) - np.float32(2.0 ** -26), 1e-45], np.float32)
    x = np.concatenate(near + [rand, special])
    x = np.concatenate([x, -x])
    expect = x.astype(np.float16).astype(np.float32)
    # finite values up to 65519.99 take the fast path (no fallback), all of them in one call
    fast = np.abs(x) < 65520
    assert np.array_equal(bits32(round_to_float16(x[fast])), bits32(expect[fast]))
    assert np.array_equal(bits32(round_to_float16(x)), bits32(expect))          # with overflow: numpy's path
    # into a strided view, as the engine writes an accumulator region
    buf = np.zeros((2, x.size), np.float32)
    round_to_float16(x[fast], out=buf[1, : fast.sum()])
    assert np.array_equal(bits32(buf[1, : fast.sum()]), bits32(expect[fast]))
    for v in (np.inf, -np.inf, np.nan):
        y = round_to_float16(np.array([1.0, v], np.float32))
        assert y[0] == 1.0 and (np.isnan(y[1]) if np.isnan(v) else y[1] == v)


class Recorder:
    def __init__(self):
        self.slabs = []

    def push(self, logits16, start):
        assert logits16.dtype == np.float16
        self.slabs.append((start, logits16.copy()))

    def finish(self):
        self.slabs.append(("end", None))


class TileBackend:
    """A deterministic 'network': per-class functions of the tile, with values set on float16 half steps."""

    def __init__(self, nout, seed, scale):
        r = np.random.default_rng(seed)
        self.w = r.normal(0, 1, (nout, 1, 1, 1)).astype(np.float32)
        self.b = r.normal(0, 1, (nout, 1, 1, 1)).astype(np.float32)
        self.scale = np.float32(scale)

    def run(self, x):
        t = x[0, 0]
        v = (self.w * t[None] + self.b * np.cos(t)[None]) * self.scale
        # move every value onto a float16 tie (midpoint of two float16 neighbours) or one float32 step off it
        lo = v.astype(np.float16).astype(np.float32)
        hi = np.nextafter(lo.astype(np.float16), np.float16(np.inf)).astype(np.float32)
        mid = ((lo.astype(np.float64) + hi) / 2).astype(np.float32)
        jitter = np.sign(np.sin(t * 7.0))[None].astype(np.float32)
        return np.where(np.cos(t * 3.0)[None] > 0, mid, np.nextafter(mid, mid + jitter))[None]


CASES = [  # patch, overlap, classes, folds, mirror axes, model grid (k, j, i), logit scale
    ((8, 12, 10), 0.5, 3, 1, [], (21, 30, 7), 1.0),
    ((6, 8, 8), 0.3, 4, 2, [0, 2], (13, 9, 20), 50.0),
    ((8, 8, 12), 0.5, 2, 3, [1], (5, 17, 25), 1e-3),
    ((10, 6, 6), 0.75, 3, 1, [], (17, 6, 11), 300.0),
]


@pytest.mark.parametrize("patch,overlap,nout,nf,mirror,shape,scale", CASES)
def test_sliding_window_aggregation_bit_for_bit(patch, overlap, nout, nf, mirror, shape, scale):
    card = SimpleNamespace(patch_size_kji=list(patch), overlap=overlap, num_outputs=nout)
    rng = np.random.default_rng(sum(shape))
    data = rng.normal(0, 2, (1, *shape)).astype(np.float32)
    backends = [TileBackend(nout, seed=f, scale=scale) for f in range(nf)]
    new, old = Recorder(), Recorder()
    sw = SlidingWindow(backends, card, mirror)
    assert sw.run(data, new) == reference_run(SlidingWindow(backends, card, mirror), data, old)
    assert len(new.slabs) == len(old.slabs) >= 2
    for (s1, a1), (s2, a2) in zip(new.slabs, old.slabs, strict=True):
        assert s1 == s2
        if a1 is not None:
            assert np.array_equal(a1.view(np.uint16), a2.view(np.uint16))
    got = np.concatenate([a for s, a in new.slabs if a is not None], axis=1)
    assert got.shape == (nout, *shape)
    assert (np.abs(got) > 0).mean() > 0.9 and (got != got.astype(np.float16)).sum() == 0


def test_overflow_refused_as_before():
    card = SimpleNamespace(patch_size_kji=[6, 6, 6], overlap=0.5, num_outputs=2)
    data = np.random.default_rng(1).normal(0, 1, (1, 9, 9, 9)).astype(np.float32)
    backends = [TileBackend(2, seed=0, scale=3e4)]
    with pytest.raises(ImagioError, match="overflow float16"):
        reference_run(SlidingWindow(backends, card, []), data, Recorder())
    with pytest.raises(ImagioError, match="overflow float16"):
        SlidingWindow(backends, card, []).run(data, Recorder())
