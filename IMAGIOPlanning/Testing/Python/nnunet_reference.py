"""A plain transcription of nnU-Net v2's prediction steps in numpy/scipy, for tests (no torch, no streaming).

It follows nnU-Net 2.x's code path for ``nnUNetPredictor.predict_single_npy_array``
(read from its source, written again here): ``DefaultPreprocessor.run_case_npy``
(transpose, ``crop_to_nonzero``, normalisation, ``resample_data_or_seg_to_shape``
with scikit-image's ``resize(order, mode='edge', anti_aliasing=False)``, which is
``scipy.ndimage.zoom(..., mode='nearest', grid_mode=True)`` followed by clipping
to the input's range, and ``map_coordinates(order_z, mode='nearest')`` along a
separate axis), ``pad_nd_image``, the sliding window with whole-volume float16
logits and weights (the way torch rounds ``half += float`` and ``half / half``),
fold logits summed in float16, and ``convert_predicted_logits_to_segmentation_with_correct_shape``.
Memory is whatever that takes: only for small arrays.

``networks`` are callables ``x (1, C, patch) float32 -> (1, K, patch)``.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.ndimage import binary_fill_holes, gaussian_filter, map_coordinates, zoom

F16, F32 = np.float16, np.float32


def skimage_resize(img: np.ndarray, new_shape, order: int) -> np.ndarray:
    """scikit-image's ``resize(img, new_shape, order, mode='edge', anti_aliasing=False)`` for float64 input."""
    factors = np.divide(img.shape, new_shape)
    out = zoom(img, [1 / f for f in factors], order=order, mode="nearest", grid_mode=True)
    np.clip(out, img.min(), img.max(), out=out)
    return out


def sep_axis(force, current, new, thr=3.0):
    def lowres(sp):
        sp = np.asarray(sp, float)
        return np.where(max(sp) / sp == 1)[0]

    if force is not None:
        axis = lowres(current) if force else None
    elif max(current) / min(current) > thr:
        axis = lowres(current)
    elif max(new) / min(new) > thr:
        axis = lowres(new)
    else:
        axis = None
    if axis is not None and len(axis) != 1:
        axis = None
    return None if axis is None else int(axis[0])


def resample(data: np.ndarray, new_shape, current, new, order: int, order_z: int = 0, force=None) -> np.ndarray:
    """``resample_data_or_seg_to_shape(data (C, ...), is_seg=False)``: output in ``data``'s dtype."""
    new_shape = np.array(new_shape)
    shape = np.array(data[0].shape)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    if not np.any(shape != new_shape):
        return data
    axis = sep_axis(force, current, new)
    data = data.astype(float)
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = skimage_resize(data[c], new_shape, order)
            continue
        tmp = new_shape.copy()
        tmp[axis] = shape[axis]
        here = np.zeros(tmp)
        inplane = new_shape[[a for a in range(3) if a != axis]]
        for s in range(shape[axis]):
            idx = [slice(None)] * 3
            idx[axis] = s
            here[tuple(idx)] = skimage_resize(data[c][tuple(idx)], inplane, order)
        if shape[axis] != new_shape[axis]:
            rows, cols, dim = new_shape
            orows, ocols, odim = here.shape
            mr, mc, md = np.mgrid[:rows, :cols, :dim]
            coords = np.array([float(orows) / rows * (mr + 0.5) - 0.5, float(ocols) / cols * (mc + 0.5) - 0.5,
                               float(odim) / dim * (md + 0.5) - 0.5])
            out[c] = map_coordinates(here, coords, order=order_z, mode="nearest")
        else:
            out[c] = here
    return out


def normalise(x: np.ndarray, norm: dict, mask=None) -> np.ndarray:
    x = x.astype(F32, copy=False)
    if norm["scheme"] == "CT":
        np.clip(x, norm["clip_low"], norm["clip_high"], out=x)
        x -= norm["mean"]
        x /= max(norm["std"], 1e-8)
    elif norm["scheme"] == "ZScore":
        if norm.get("use_mask_for_norm"):
            m, s = x[mask].mean(), x[mask].std()
            x[mask] = (x[mask] - m) / max(s, 1e-8)
        else:
            m, s = x.mean(), x.std()
            x -= m
            x /= max(s, 1e-8)
    return x


def steps_for(image_size, tile, step):
    n = [int(np.ceil((i - k) / (k * step))) + 1 for i, k in zip(image_size, tile, strict=True)]
    out = []
    for d in range(len(tile)):
        mx = image_size[d] - tile[d]
        a = mx / (n[d] - 1) if n[d] > 1 else 99999999999
        out.append([int(np.round(a * i)) for i in range(n[d])])
    return out


def gaussian16(tile):
    tmp = np.zeros(tile)
    tmp[tuple(i // 2 for i in tile)] = 1
    g = gaussian_filter(tmp, [i / 8 for i in tile], 0, mode="constant", cval=0)
    g /= np.max(g) / 10
    g = g.astype(F16)
    g[g == 0] = g[g != 0].min()
    return g


def predict(arr_kji: np.ndarray, spacing_kji, card: dict, networks, mirror_axes=(), return_probabilities=False):
    """Labels (and probabilities) for a (C, k, j, i) float array, as nnU-Net's predictor gives them."""
    t = card["transpose_forward"]
    data = arr_kji.astype(F32).transpose([0, *[i + 1 for i in t]])
    spacing = [spacing_kji[i] for i in t]
    shape_before = data.shape[1:]
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    mask = binary_fill_holes(mask)
    if card.get("crop_to_nonzero", True):
        idx = [np.where(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
        bbox = [(int(i[0]), int(i[-1]) + 1) for i in idx]
    else:
        bbox = [(0, n) for n in shape_before]
    sl = tuple(slice(a, b) for a, b in bbox)
    data = data[(slice(None), *sl)]
    mask = mask[sl]
    cropped = data.shape[1:]
    target = card["target_spacing_kji_mm"]
    new_shape = [int(round(i / j * k)) for i, j, k in zip(spacing, target, cropped, strict=True)]
    for c, norm in enumerate(card["normalization"]):
        data[c] = normalise(data[c], norm, mask)
    rs = card.get("resampling", {})
    rd = {"order": 3, "order_z": 0, "force_separate_z": None, **rs.get("data", {})}
    rp = {"order": 1, "order_z": 0, "force_separate_z": None, **rs.get("probabilities", {})}
    data = resample(data, new_shape, spacing, target, rd["order"], rd["order_z"], rd["force_separate_z"])
    # pad_nd_image
    patch = card["patch_size_kji"]
    diff = np.maximum(np.array(patch) - np.array(data.shape[1:]), 0)
    lo = diff // 2
    data = np.pad(data, [(0, 0)] + [(int(a), int(d - a)) for a, d in zip(lo, diff, strict=True)])
    steps = steps_for(data.shape[1:], patch, 1 - card.get("overlap", 0.5))
    g16 = gaussian16(patch)
    g32 = g16.astype(F32)
    total = None
    for net in networks:
        k = None
        logits = n = None
        for sz, sy, sx in itertools.product(*steps):
            s = (slice(sz, sz + patch[0]), slice(sy, sy + patch[1]), slice(sx, sx + patch[2]))
            x = np.ascontiguousarray(data[(slice(None), *s)])[None]
            pred = np.array(net(x)[0], F32)
            axes = [m + 1 for m in mirror_axes]
            combos = [cm for i in range(len(axes)) for cm in itertools.combinations(axes, i + 1)]
            for cm in combos:
                pred += np.flip(net(np.ascontiguousarray(np.flip(x[0], cm))[None])[0], cm)
            if combos:
                pred /= len(combos) + 1
            if logits is None:
                k = pred.shape[0]
                logits = np.zeros((k, *data.shape[1:]), F16)
                n = np.zeros(data.shape[1:], F16)
            pred *= g32
            logits[(slice(None), *s)] = (logits[(slice(None), *s)].astype(F32) + pred).astype(F16)
            n[s] = (n[s].astype(F32) + g32).astype(F16)
        logits = (logits.astype(F32) / n.astype(F32)).astype(F16)
        total = logits if total is None else (total.astype(F32) + logits).astype(F16)
    if len(networks) > 1:
        total = (total.astype(F32) / F32(len(networks))).astype(F16)
    unpad = tuple(slice(int(a), int(a) + m) for a, m in zip(lo, new_shape, strict=True))
    total = total[(slice(None), *unpad)]
    total = resample(total, cropped, target, spacing, rp["order"], rp["order_z"], rp["force_separate_z"])
    out = card.get("output", {})
    if out.get("activation") == "sigmoid":
        probs = 1 / (1 + np.exp(-total.astype(F32)))
        seg = np.zeros(cropped, np.uint16)
        for i, c in enumerate(out["regions_class_order"]):
            seg[probs[i] > 0.5] = c
    else:
        seg = total.argmax(0)
        x = total.astype(F32)
        e = np.exp(x - x.max(0, keepdims=True))
        probs = e / e.sum(0, keepdims=True)
    full = np.zeros(shape_before, np.uint8)
    full[sl] = seg
    inv = np.argsort(t)
    if return_probabilities:
        pf = np.zeros((probs.shape[0], *shape_before), F32)
        pf[(slice(None), *sl)] = probs
        return full.transpose(inv), pf.transpose([0, *[i + 1 for i in inv]])
    return full.transpose(inv)
