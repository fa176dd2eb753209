#!/usr/bin/env python3
"""Python Cellpose 3 (v3.1.1.3 through ../shared/ref/refenv.py) on one (Z, Y, X)
volume, as the peer of `cpseg --do-3d` / `--stitch-threshold` in make bench.
usage: peer_cellpose3_3d.py REF_DIR VOLUME.tif WEIGHTS.pth DIAMETER do3d|stitch
Prints one line: eval seconds (network + dynamics as eval runs them), the
seconds of Cellpose's 3D mask creation alone on eval's flows (do3d), masks."""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import refenv  # noqa: E402
refenv.setup("v3")
import numpy as np, tifffile, torch  # noqa: E402
torch.set_num_threads(int(os.environ.get("PEER_THREADS", "2")))
from cellpose import models, dynamics  # noqa: E402

vol = tifffile.imread(sys.argv[2])
diam, mode = float(sys.argv[4]), sys.argv[5]
t0 = time.perf_counter()
m = models.CellposeModel(pretrained_model=sys.argv[3])
t1 = time.perf_counter()
kw = dict(do_3D=True) if mode == "do3d" else dict(stitch_threshold=0.5)
masks, flows, _ = m.eval(vol, diameter=diam, channels=[0, 0], z_axis=0, **kw)
t2 = time.perf_counter()
dyn = float("nan")
if mode == "do3d":
    niter = int(np.uint32(200 * diam / m.diam_mean))
    t3 = time.perf_counter()
    dynamics.resize_and_compute_masks(flows[1], flows[2], niter=niter, do_3D=True, min_size=15)
    dyn = time.perf_counter() - t3
print(f"load {t1 - t0:.2f} eval {t2 - t1:.2f} dynamics {dyn:.2f} masks {int(masks.max())}", flush=True)
