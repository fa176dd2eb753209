# cpseg --precision / CELLPOSE_PRECISION: parsing, which one wins, bf16 output.
. "$(dirname "$0")/lib.sh"
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
SEG="$BIN/cpseg -q --model $W --diameter 30 --save flows"

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
check "--precision bf16" $SEG --precision bf16 --savedir "$T/b16" --manifest "$T/b16.jsonl" "$T/in"
check_eq "the manifest records it" "$(grep -c '"arch":"cpnet","precision":"bf16"' "$T/b16.jsonl")" 1
CELLPOSE_PRECISION=bf16 check "CELLPOSE_PRECISION=bf16" $SEG --savedir "$T/b16e" "$T/in"
check_same "the variable gives --precision bf16's flows" "$T/b16/a_flows.npy" "$T/b16e/a_flows.npy"
check_same "and its masks" "$T/b16/a_cp_masks.tif" "$T/b16e/a_cp_masks.tif"
CELLPOSE_PRECISION=bf16 check "--precision fp32 wins over CELLPOSE_PRECISION=bf16" \
    $SEG --precision fp32 --savedir "$T/f32c" "$T/in"
check_same "... giving fp32 flows" "$T/f32/a_flows.npy" "$T/f32c/a_flows.npy"
# bf16 really changes the flows, by bf16's rounding and not more (independent check)
check "bf16 flows close to fp32, not equal" /usr/bin/python3 -c "
import numpy as np
a = np.load('$T/f32/a_flows.npy'); b = np.load('$T/b16/a_flows.npy')
d = np.abs(a - b); s = np.abs(a).max()
print('bf16 vs fp32 flows: max|d| %.4g mean|d| %.4g max|x| %.4g' % (d.max(), d.mean(), s))
assert a.shape == b.shape and 0 < d.mean() and d.max() <= 64 / 512 * s, (d.max(), d.mean(), s)
"
# a CPU without AVX-512 (oneDNN limited to AVX2 here): bf16 stops at load with
# one line (exit 3); fp32 runs
ONEDNN_MAX_CPU_ISA=AVX2 check_fails "bf16 without AVX-512" 3 $SEG --precision bf16 --savedir "$T/avx2" "$T/in"
check_eq "... one line saying so" \
    "$(wc -l < "$T/last.err") $(grep -c "bf16: this CPU cannot run bfloat16 convolutions (oneDNN needs AVX-512: .*); use fp32" "$T/last.err")" "1 1"
ONEDNN_MAX_CPU_ISA=AVX2 check "fp32 without AVX-512" $SEG --savedir "$T/avx2" "$T/in"
finish
