#!/usr/bin/env bash
# cpseg end to end: seconds per image and per megapixel split by stage (read,
# network, dynamics, write, from --manifest) and peak RSS, on the 1000x1200
# CellProfiler Speckles image and a 256x256 DSB image, with the cyto3-shaped
# CPnet of the golden set (same architecture and cost as cyto3) at diameter 30.
# Peer: Python Cellpose 3 (../shared/ref/peer/cellpose3_eval.py, 2 threads)
# on the same image and weights in the same run, when the reference sources
# are set up (../shared/ref/README.md); the ratios are its process time and
# peak RSS over cpseg's.
# Last, 16 DSB images with -j 1 (one image at a time, 2 threads) and -j 2
# (two images at a time, 1 thread each): images per second and cores kept
# busy ((user + sys) / wall).
# Usage: scripts/bench.d/cpseg.sh BUILD_DIR
set -eu
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${CP_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
BIN=$ROOT/$BUILD/bin
W=$SHARED/golden/weights/cpnet_cyto3like_s1.pth
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

. "$ROOT/scripts/bench.d/peer.inc"
bench_one() { # label image
    rm -rf "$T/out" "$T/m.jsonl"
    /usr/bin/time -f '%M %e' -o "$T/time" "$BIN/cpseg" -q --model "$W" --diameter 30 \
        --savedir "$T/out" --manifest "$T/m.jsonl" "$2"
    read -r rss_kb wall < "$T/time"
    local prss=0 pwall=0
    if [ $peer_ok = 1 ] && /usr/bin/time -f '%M %e' -o "$T/ptime" /usr/bin/python3 \
        "$SHARED/ref/peer/cellpose3_eval.py" "$2" "$W" 30 > /dev/null 2> "$T/peer.err"; then
        read -r prss pwall < "$T/ptime"
    fi
    /usr/bin/python3 - "$T/m.jsonl" "$1" "$rss_kb" "$wall" "$prss" "$pwall" <<'PY'
import json, sys
m = json.loads(open(sys.argv[1]).readline())
label, rss_kb, wall = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
prss, pwall = int(sys.argv[5]), float(sys.argv[6])
s, mp = m["seconds"], m["width"] * m["height"] / 1e6
peer = (f"Python Cellpose 3 in this run {pwall:.2f} s, peak RSS {prss / 1024:.0f} MB -> "
        f"{pwall / wall:.2f}x faster, RSS {prss / rss_kb:.2f}x lower" if pwall > 0 else
        "peer not available (reference sources or python3-torch missing: ../shared/ref/README.md)")
print(f"cpseg {label}: {s['total']:.2f} s/image (read {s['read']:.3f}, network {s['network']:.2f}, "
      f"dynamics {s['dynamics']:.3f}, write {s['write']:.3f}), {s['total'] / mp:.2f} s/MP, "
      f"process wall {wall:.2f} s, peak RSS {rss_kb / 1024:.0f} MB; {peer}")
PY
}

bench_one "Speckles 1000x1200 (cellprofiler_speckles_1-162hrh2ax2.tif)" \
    "$SHARED/data/nogt/cellprofiler_speckles_1-162hrh2ax2.tif"
awk -F'\t' '$2=="fluorescence" && $3==256 && $4==256 {print $1}' "$SHARED/data/dsb2018/index.tsv" |
    head -16 > "$T/dsb.txt"
dsb=$(head -1 "$T/dsb.txt")
bench_one "DSB 256x256 ($dsb)" "$SHARED/data/dsb2018/${dsb}_img.png"
mkdir -p "$T/many"
while read -r id; do ln -s "$SHARED/data/dsb2018/${id}_img.png" "$T/many/$id.png"; done < "$T/dsb.txt"
for j in 1 2; do
    rm -rf "$T/outj"
    /usr/bin/time -f '%e %U %S' -o "$T/time" "$BIN/cpseg" -q --model "$W" --diameter 30 \
        --threads 2 -j "$j" --savedir "$T/outj" "$T/many"
    read -r wall user sys < "$T/time"
    awk -v j="$j" -v w="$wall" -v u="$user" -v s="$sys" 'BEGIN {
        printf "cpseg 16 DSB 256x256 images, -j %d --threads 2: %.2f s wall, %.2f images/s, %.2f of 2 cores busy\n",
            j, w, 16 / w, (u + s) / w }'
done
echo "load average while measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
