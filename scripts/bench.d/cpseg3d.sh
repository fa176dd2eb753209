#!/usr/bin/env bash
# cpseg in 3D: --do-3d and --stitch-threshold 0.5 on a 64x256x256 uint16
# volume (make_golden_3d.py synth3d: 120 ellipsoid nuclei of diameter 17,
# seed 7) with the nuclei-like CPnet of the golden set at diameter 17:
# seconds per volume split by stage (from --manifest) and peak RSS. When the
# reference sources are set up (../shared/ref/README.md), Python Cellpose 3
# runs on the same volume and weights in the same run, and each line gives
# the ratio: end to end (goal >= 3x), 3D mask creation alone (goal >= 10x:
# Cellpose's resize_and_compute_masks on its own flows vs our dynamics
# stage) and peak RSS (goal: below Python's).
# Usage: scripts/bench.d/cpseg3d.sh BUILD_DIR
set -eu
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${CP_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
BIN=$ROOT/$BUILD/bin
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

/usr/bin/python3 "$SHARED/ref/make_golden_3d.py" synth3d "$T" --shape 64,256,256 --n 120 --seed 7 \
    --diam 17 --name vol > /dev/null
V=$T/vol.tif
[ -f "$V" ] || { echo "cpseg3d: no volume made (make_golden_3d.py synth3d)"; exit 1; }
. "$ROOT/scripts/bench.d/peer.inc"

for mode in do3d stitch; do
    flag=--do-3d; [ $mode = stitch ] && flag="--stitch-threshold 0.5"
    rm -rf "$T/out" "$T/m.jsonl"
    # shellcheck disable=SC2086
    /usr/bin/time -f '%M %e' -o "$T/time" "$BIN/cpseg" -q --model "$W" --diameter 17 $flag \
        --threads 2 --savedir "$T/out" --manifest "$T/m.jsonl" "$V"
    read -r rss_kb wall < "$T/time"
    peer="peer not available (no reference sources or python3-torch: see ../shared/ref/README.md)"
    if [ $peer_ok = 1 ]; then
        /usr/bin/time -f '%M %e' -o "$T/ptime" /usr/bin/python3 "$ROOT/scripts/bench.d/peer_cellpose3_3d.py" \
            "$SHARED/ref" "$V" "$W" 17 $mode > "$T/peer.out" 2> "$T/peer.err" || true
        read -r prss_kb pwall < "$T/ptime" || true
        peer=$(/usr/bin/python3 - "$T/m.jsonl" "$T/peer.out" "$prss_kb" "$pwall" "$rss_kb" "$wall" <<'PY'
import json, sys
m = json.loads(open(sys.argv[1]).readline())
try:
    f = open(sys.argv[2]).read().split()
    p = dict(zip(f[0::2], f[1::2]))
    pe, pd = float(p["eval"]), float(p["dynamics"])
except Exception:
    print("peer failed (see its stderr)")
    sys.exit()
prss, pwall, rss, wall = int(sys.argv[3]) / 1024, float(sys.argv[4]), int(sys.argv[5]) / 1024, float(sys.argv[6])
s = m["seconds"]
out = (f"Python Cellpose 3 in this run: eval {pe:.1f} s, process {pwall:.1f} s, peak RSS {prss:.0f} MB "
       f"-> end to end {pwall / wall:.2f}x faster (goal 3x), RSS {prss / rss:.2f}x lower")
if pd == pd:
    out += f"; 3D mask creation {pd:.2f} s vs {s['dynamics']:.2f} s -> {pd / s['dynamics']:.1f}x (goal 10x)"
print(out)
PY
)
    fi
    /usr/bin/python3 - "$T/m.jsonl" "$mode" "$rss_kb" "$wall" "$peer" <<'PY'
import json, sys
m = json.loads(open(sys.argv[1]).readline())
s = m["seconds"]
print(f"cpseg {'--do-3d' if sys.argv[2] == 'do3d' else '--stitch-threshold 0.5'} on 64x256x256 "
      f"(synth3d seed 7, nuclei-like CPnet, diameter 17): {s['total']:.2f} s/volume (read {s['read']:.2f}, "
      f"network {s['network']:.2f}, dynamics {s['dynamics']:.2f}, write {s['write']:.2f}), process "
      f"{float(sys.argv[4]):.2f} s, peak RSS {int(sys.argv[3]) / 1024:.0f} MB; {sys.argv[5]}")
PY
done
# 3D mask creation alone, on Cellpose's own flows of golden/3d eval3d
# v3_do3D_a1_d17 (32x80x80, niter 200): cpseg --do-3d --from-flows (its
# dynamics stage, best of 3) vs Cellpose 3's resize_and_compute_masks (best
# of 2, after one warm-up call), same run, 2 threads.
G=$SHARED/golden/3d/eval3d/v3_do3D_a1_d17
/usr/bin/python3 -c "
import numpy as np, sys
np.save(sys.argv[3], np.concatenate([np.load(sys.argv[1]), np.load(sys.argv[2])[None]]).astype(np.float32))
" "$G/dP.npy" "$G/cellprob.npy" "$T/g_flows.npy"
best=
for i in 1 2 3; do
    rm -rf "$T/gout" "$T/g.jsonl"
    "$BIN/cpseg" -q --do-3d --from-flows "$T/g_flows.npy" --niter 200 --threads 2 --savedir "$T/gout" --manifest "$T/g.jsonl"
    s=$(/usr/bin/python3 -c "import json, sys; print(json.loads(open(sys.argv[1]).readline())['seconds']['dynamics'])" "$T/g.jsonl")
    best=$(awk -v a="$best" -v b="$s" 'BEGIN { print (a == "" || b < a) ? b : a }')
done
peer="peer not available (no reference sources or python3-torch)"
if [ $peer_ok = 1 ]; then
    p=$(/usr/bin/python3 - "$SHARED/ref" "$G" <<'PY' 2> /dev/null || true
import sys, time
sys.path.insert(0, sys.argv[1])
import refenv
refenv.setup("v3")
import numpy as np, torch
torch.set_num_threads(2)
from cellpose import dynamics
dP, cp = np.load(sys.argv[2] + "/dP.npy"), np.load(sys.argv[2] + "/cellprob.npy")
t = []
for i in range(3):
    t0 = time.perf_counter()
    dynamics.resize_and_compute_masks(dP, cp, niter=200, do_3D=True, min_size=15)
    t.append(time.perf_counter() - t0)
print(min(t[1:]))
PY
)
    [ -n "$p" ] && peer=$(awk -v p="$p" -v c="$best" 'BEGIN { printf "Python Cellpose 3 in this run %.3f s -> %.1fx faster (goal 10x)", p, p / c }')
fi
printf '3D mask creation alone (golden v3_do3D_a1_d17 flows, 32x80x80, niter 200): %.3f s; %s\n' "$best" "$peer"
echo "load average while measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
