"""Speed of IMAGIOLungNav, CT -> airway -> centerlines -> route, on LIDC-IDRI-0314 (512 x 512 x 275 CT).

Measured in the same run, each the median of ``--repeat`` repetitions, on ``--threads`` threads
(SimpleITK's global thread count and the usual OMP/numba variables):

* ``imagio`` - the whole pipeline: airway segmentation from the CT (trachea detection, adaptive
  region growing with explosion checks, peripheral leak control), the centerline graph by
  wave-front clustering (generations, lengths, diameters, names) and the route to the nodule
  (exit point, gap, lumen, turning angle, bronchus sign); reading the CT is timed apart;
* peer for the centerline step: ``skimage+skan`` - scikit-image's 3D ``skeletonize`` of the same
  airway mask (cropped to the same bounding box our method works in) followed by skan's
  ``Skeleton`` + ``summarize`` to get a branch graph (no radii, no generations, no names).

The ratio ``peer / ours`` compares the centerline steps on the same airway (ours from the full-grid
mask, as in the pipeline, and from the same cropped mask the peer gets). The agreement of the
two centerlines (% of each within 2 mm of the other) is printed as a sanity check.

Run: ``python benchmarks/bench_lungnav.py [--repeat 3] [--threads 2] [--out FILE]``.
Needs the shared data (IMAGIO_DATA) and, for the peer, scikit-image and skan.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    _set_threads(args.threads)

    import numpy as np
    import SimpleITK as sitk

    from imagio import geometry as g
    from imagio.io import read_image
    from imagio.testing import data_root
    from IMAGIOLungNavLib.centerline import _prepare_mask, extract_centerlines
    from IMAGIOLungNavLib.route import _resample, plan_route
    from IMAGIOLungNavLib.segment import segment_airway

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    folder = data_root() / "chest-lidc0314"
    if not (folder / "ct.nrrd").exists():
        print(f"LIDC-0314 not found under {folder}; set IMAGIO_DATA", file=sys.stderr)
        return 2
    ann = json.loads((folder / "nodule_annotations.json").read_text())
    target = g.lps_to_ras(np.array(ann["consensus_centroid_LPS_mm"]))

    t_read, t_seg, t_cl, t_route, t_total, t_peer = [], [], [], [], [], []
    result = {}
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        ct = read_image(folder / "ct.nrrd")
        t1 = time.perf_counter()
        seg = segment_airway(ct)
        t2 = time.perf_counter()
        tree = extract_centerlines(seg.mask)
        t3 = time.perf_counter()
        route = plan_route(tree, target_ras=target, scope_diameter_mm=4.2, airway_mask=seg.mask)
        t4 = time.perf_counter()
        t_read.append(t1 - t0)
        t_seg.append(t2 - t1)
        t_cl.append(t3 - t2)
        t_route.append(t4 - t3)
        t_total.append(t4 - t1)
        result = {"airway_volume_ml": round(seg.volume_ml, 2), "branch_count": tree.n_branches,
                  "max_generation": tree.max_generation, "gap_to_target_mm": round(route.gap_to_target_mm, 2),
                  "route_generation": route.generation, "path_length_mm": round(route.path_length_mm, 1)}

    peer = None
    try:
        from skan import Skeleton, summarize
        from skimage.morphology import skeletonize
    except ImportError as e:
        print(f"peer not available ({e}); pip install scikit-image skan", file=sys.stderr)
    else:
        work = _prepare_mask(seg.mask)  # the same cropped, hole-filled grid our method starts from
        arr = sitk.GetArrayFromImage(work).astype(bool)
        spacing = work.GetSpacing()[::-1]
        t_cl_crop = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            extract_centerlines(work)
            t_cl_crop.append(time.perf_counter() - t0)
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            skel = skeletonize(arr)
            graph = summarize(Skeleton(skel, spacing=spacing), separator="_")
            t_peer.append(time.perf_counter() - t0)
        kji = np.argwhere(skel)
        peer_pts = g.ijk_to_ras(work, kji[:, ::-1].astype(float))
        ours = np.vstack([_resample(b.points_ras, 0.5) for b in tree.branches if len(b.points_ras) > 1])
        d1 = np.array([np.linalg.norm(ours - p, axis=1).min() for p in peer_pts])
        d2 = np.array([np.linalg.norm(peer_pts - p, axis=1).min() for p in ours])
        peer = {"branch_count": int(len(graph)), "skeleton_voxels": int(len(kji)),
                "peer_within_2mm_of_ours_percent": round(100 * float(np.mean(d1 <= 2.0)), 1),
                "ours_within_2mm_of_peer_percent": round(100 * float(np.mean(d2 <= 2.0)), 1)}

    med = statistics.median
    out = {
        "case": "LIDC-IDRI-0314 ct.nrrd 512x512x275, 0.78x0.78x1.0 mm", "threads": args.threads,
        "repeat": args.repeat, "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "read_ct_s": round(med(t_read), 3), "segment_airway_s": round(med(t_seg), 3),
        "centerlines_s": round(med(t_cl), 3), "route_s": round(med(t_route), 3),
        "ct_to_route_s": round(med(t_total), 3), "ct_to_route_with_read_s": round(med(t_total) + med(t_read), 3),
        "result": result,
    }
    if peer is not None:
        out["peer"] = "scikit-image skeletonize (3D) + skan Skeleton/summarize"
        out["peer_centerlines_s"] = round(med(t_peer), 3)
        out["peer_over_ours_ratio"] = round(med(t_peer) / med(t_cl), 2)
        out["centerlines_on_cropped_mask_s"] = round(med(t_cl_crop), 3)
        out["peer_over_ours_same_input_ratio"] = round(med(t_peer) / med(t_cl_crop), 2)
        out["peer_result"] = peer
    print(f"{'step':32s} {'median s':>9s}")
    for k in ("read_ct_s", "segment_airway_s", "centerlines_s", "route_s", "ct_to_route_s", "ct_to_route_with_read_s",
              "centerlines_on_cropped_mask_s", "peer_centerlines_s"):
        if k in out:
            print(f"{k:32s} {out[k]:9.3f}")
    if "peer_over_ours_ratio" in out:
        print(f"centerlines: skimage+skan / imagio = {out['peer_over_ours_ratio']:.2f}x "
              f"(same cropped input: {out['peer_over_ours_same_input_ratio']:.2f}x)")
    print(json.dumps({"result": result, "peer_result": peer}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
