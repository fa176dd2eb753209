# cpseg --precision / CELLPOSE_PRECISION: parsing, which one wins, bf16
# output where this CPU runs bf16, the fp32 fallback (one warning) where not.
. "$(dirname "$0")/lib.sh"
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
LOUD="$BIN/cpseg --model $W --diameter 30 --save flows"
SEG="$LOUD -q"
WARN="warning: bf16 unavailable: this CPU cannot run bfloat16 convolutions (oneDNN needs AVX-512: .*); running in fp32"
# manifest_model FILE: the model entry's precision and the requested one
manifest_model() {
    /usr/bin/python3 -c "import json,sys; m = json.loads(open(sys.argv[1]).readline())['model']; print(m['precision'], m['precision_requested'])" "$1"
}

mkdir -p "$T/in" && cp "$TESTDATA"/seg/a.png "$T/in/"

check "--help lists --precision" sh -c "$BIN/cpseg --help | grep -q -- '--precision fp32|bf16'"
check_fails "bad --precision" 2 $SEG --precision fp16 "$T/in"
check_eq "bad --precision: one line naming the flag" \
    "$(wc -l < "$T/last.err") $(grep -c -- "--precision: 'fp16' is not fp32 or bf16" "$T/last.err")" "1 1"
CELLPOSE_PRECISION=half check_fails "bad CELLPOSE_PRECISION" 2 $SEG "$T/in"
check_eq "bad CELLPOSE_PRECISION: one line naming the variable" \
    "$(wc -l < "$T/last.err") $(grep -c "CELLPOSE_PRECISION: 'half' is not fp32 or bf16" "$T/last.err")" "1 1"

check "fp32 (default)" $SEG --savedir "$T/f32" "$T/in"
CELLPOSE_PRECISION=half check "the flag wins over the variable" $SEG --precision fp32 --savedir "$T/f32b" "$T/in"
check_same "--precision fp32 is the default" "$T/f32/a_flows.npy" "$T/f32b/a_flows.npy"
check_fails "--precision bf16" 0 $LOUD --precision bf16 --savedir "$T/b16" --manifest "$T/b16.jsonl" "$T/in"
eff=$(manifest_model "$T/b16.jsonl")
if [ "$eff" = "bf16 bf16" ]; then
    check_eq "bf16 runs: no warning" "$(wc -c < "$T/last.err")" 0
    CELLPOSE_PRECISION=bf16 check "CELLPOSE_PRECISION=bf16" $SEG --savedir "$T/b16e" "$T/in"
    check_same "the variable gives --precision bf16's flows" "$T/b16/a_flows.npy" "$T/b16e/a_flows.npy"
    check_same "and its masks" "$T/b16/a_cp_masks.tif" "$T/b16e/a_cp_masks.tif"
    # bf16 really changes the flows, by bf16's rounding and not more (independent check)
    check "bf16 flows close to fp32, not equal" /usr/bin/python3 -c "
import numpy as np
a = np.load('$T/f32/a_flows.npy'); b = np.load('$T/b16/a_flows.npy')
d = np.abs(a - b); s = np.abs(a).max()
print('bf16 vs fp32 flows: max|d| %.4g mean|d| %.4g max|x| %.4g' % (d.max(), d.mean(), s))
assert a.shape == b.shape and 0 < d.mean() and d.max() <= 64 / 512 * s, (d.max(), d.mean(), s)
"
else
    check_eq "no bf16 here: the manifest says fp32 ran, bf16 was asked" "$eff" "fp32 bf16"
    check_eq "... one warning line" "$(wc -l < "$T/last.err") $(grep -c -- "$WARN" "$T/last.err")" "1 1"
    check_same "... the fp32 flows" "$T/f32/a_flows.npy" "$T/b16/a_flows.npy"
    check_same "... and masks" "$T/f32/a_cp_masks.tif" "$T/b16/a_cp_masks.tif"
    echo "bf16 numerics skipped: this CPU does not run bf16 ($(head -c 300 "$T/last.err"))"
fi
CELLPOSE_PRECISION=bf16 check "--precision fp32 wins over CELLPOSE_PRECISION=bf16" \
    $SEG --precision fp32 --savedir "$T/f32c" --manifest "$T/f32c.jsonl" "$T/in"
check_same "... giving fp32 flows" "$T/f32/a_flows.npy" "$T/f32c/a_flows.npy"
check_eq "... and the manifest says so" "$(manifest_model "$T/f32c.jsonl")" "fp32 fp32"
# a CPU without AVX-512 (oneDNN limited to AVX2 here): bf16 falls back to
# fp32 with one warning line, the same bytes as fp32 there
ONEDNN_MAX_CPU_ISA=AVX2 check "fp32 without AVX-512" $SEG --savedir "$T/avx2f" "$T/in"
ONEDNN_MAX_CPU_ISA=AVX2 check_fails "bf16 without AVX-512: runs" 0 \
    $LOUD --precision bf16 --savedir "$T/avx2" --manifest "$T/avx2.jsonl" "$T/in"
check_eq "... one warning line saying it runs fp32" \
    "$(wc -l < "$T/last.err") $(grep -c -- "$WARN" "$T/last.err")" "1 1"
check_same "... flows identical to fp32" "$T/avx2f/a_flows.npy" "$T/avx2/a_flows.npy"
check_same "... and masks" "$T/avx2f/a_cp_masks.tif" "$T/avx2/a_cp_masks.tif"
check_eq "... the manifest: fp32 ran, bf16 was asked" "$(manifest_model "$T/avx2.jsonl")" "fp32 bf16"
ONEDNN_MAX_CPU_ISA=AVX2 CELLPOSE_PRECISION=bf16 check_fails "-q: no warning" 0 \
    $SEG --savedir "$T/avx2q" "$T/in"
check_eq "... nothing on stderr" "$(wc -c < "$T/last.err")" 0
finish
