# cpseg: batches, outputs, resume, shards, bad inputs, interrupts, determinism.
. "$(dirname "$0")/lib.sh"
W=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
SEG="$BIN/cpseg --model $W --diameter 30"

mkdir -p "$T/in" && cp "$TESTDATA"/seg/*.png "$T/in/"

# help, version, usage errors, missing model
check "--help" sh -c "$BIN/cpseg --help | grep -q -- --from-flows"
check "--help lists --cellpose-v3-compat" sh -c "$BIN/cpseg --help | grep -q -- --cellpose-v3-compat"
check_eq "--version" "$($BIN/cpseg --version)" "cpseg (cptools) $(sed -n 's/^#define CP_VERSION_STRING "\(.*\)"/\1/p' "$CP_ROOT/include/cellpose/core.h")"
check_fails "bad flag" 2 $BIN/cpseg --bogus "$T/in"
check_fails "bad number" 2 $SEG --flow-threshold abc "$T/in"
check_fails "bad save word" 2 $SEG --save masks,nonsense "$T/in"
check_fails "bad shard" 2 $SEG --shard 3/3 "$T/in"
check_fails "no inputs" 2 $SEG
check_fails "missing model" 3 $BIN/cpseg --model /nonexistent/cyto3 "$T/in"
grep -q "/nonexistent/cyto3" "$T/last.err" && ok || bad "missing model message names the file"
printf 'PK\003\004 not a model' > "$T/bad.pth"
check_fails "corrupt model" 3 $BIN/cpseg --model "$T/bad.pth" "$T/in"
grep -q "bad.pth" "$T/last.err" && ok || bad "corrupt model message names the file"
CELLPOSE_LOCAL_MODELS_PATH=$T HOME=$T check_fails "unknown model name" 3 $BIN/cpseg --model cyto3 "$T/in"
grep -q "cellpose/models" "$T/last.err" && ok || bad "unknown model message says where it looked"

# a batch with every output, and a manifest
check "batch" $SEG -q --savedir "$T/o1" --save masks_npy,flows,overlay,outlines,rois,png --manifest "$T/m1.jsonl" "$T/in"
for n in a b c d; do
    for s in _cp_masks.tif _masks.npy _flows.npy _overlay.png _cp_outlines.txt _rois.zip _cp_masks.png; do
        [ -e "$T/o1/$n$s" ] && ok || bad "missing $n$s"
    done
done
check_eq "no temporaries left" "$(ls -A "$T/o1" | grep -c '^\.')" 0
check_eq "manifest lines" "$(wc -l < "$T/m1.jsonl")" 4
check "manifest is JSON with the fields" python3 -c "
import json,sys
for line in open('$T/m1.jsonl'):
    r=json.loads(line)
    assert r['status']=='ok' and r['error'] is None and len(r['outputs'])==7, r
    assert set(r['seconds'])=={'read','network','dynamics','write','total'}
    assert len(r['model']['sha256'])==64 and r['model']['arch']=='cpnet' and r['niter']==352
"
check "rois zip is valid" python3 -c "
import zipfile; z=zipfile.ZipFile('$T/o1/c_rois.zip'); assert z.testzip() is None
for n in z.namelist(): d=z.read(n); assert d[:4]==b'Iout' and n.endswith('.roi')
"

# rerun skips finished images; --force redoes them
before=$(stat -c %Y.%s "$T/o1/a_cp_masks.tif")
check "rerun" $SEG -q --savedir "$T/o1" --save masks_npy,flows,overlay,outlines,rois,png --manifest "$T/m2.jsonl" "$T/in"
check_eq "rerun skipped all" "$(grep -c '"status":"skipped"' "$T/m2.jsonl")" 4
check_eq "skipped outputs untouched" "$(stat -c %Y.%s "$T/o1/a_cp_masks.tif")" "$before"
rm "$T/o1/b_flows.npy"
check "resume" $SEG -q --savedir "$T/o1" --save masks_npy,flows,overlay,outlines,rois,png --manifest "$T/m3.jsonl" "$T/in"
check_eq "only the unfinished image redone" "$(grep -c '"status":"ok"' "$T/m3.jsonl")" 1
[ -s "$T/o1/b_flows.npy" ] && ok || bad "b_flows.npy not rewritten"

# determinism: threads and parallel images do not change bytes
check "j1 t1" $SEG -q -j 1 --threads 1 --savedir "$T/t1" --save flows "$T/in"
check "j2 t2" $SEG -q -j 2 --threads 2 --savedir "$T/t2" --save flows "$T/in"
for n in a b c d; do
    check_same "masks $n -j1 vs -j2" "$T/t1/${n}_cp_masks.tif" "$T/t2/${n}_cp_masks.tif"
    check_same "flows $n -j1 vs -j2" "$T/t1/${n}_flows.npy" "$T/t2/${n}_flows.npy"
    check_same "masks $n batch vs single" "$T/t1/${n}_cp_masks.tif" "$T/o1/${n}_cp_masks.tif"
done

# the batch size changes no byte: on the CPU the tiles go through the network
# one at a time (the 512x512 demo image makes 9 tiles at diameter 17)
for bs in 1 8; do
    check "batch size $bs" $BIN/cpseg -q --model $W --diameter 17 --batch-size $bs --save flows \
        --savedir "$T/bs$bs" "$TESTDATA/demo/nuclei.tif"
done
check_same "flows --batch-size 1 vs 8" "$T/bs1/nuclei_flows.npy" "$T/bs8/nuclei_flows.npy"
check_same "masks --batch-size 1 vs 8" "$T/bs1/nuclei_cp_masks.tif" "$T/bs8/nuclei_cp_masks.tif"

# --from-flows gives the same masks as the network run, and honours new thresholds
mkdir -p "$T/ff" && cp "$T/t1/c_flows.npy" "$T/ff/"
check "from flows" $BIN/cpseg -q --model $W --diameter 30 --from-flows "$T/ff/c_flows.npy"
check_same "from-flows masks" "$T/ff/c_cp_masks.tif" "$T/t1/c_cp_masks.tif"
# the v3 compat flag (its effect is in test_segment) changes nothing without flow-check gaps
mkdir -p "$T/ffc" && cp "$T/t1/c_flows.npy" "$T/ffc/"
check "from flows, v3 compat" $BIN/cpseg -q --model $W --diameter 30 --cellpose-v3-compat \
    --from-flows "$T/ffc/c_flows.npy"
check_same "v3 compat masks" "$T/ffc/c_cp_masks.tif" "$T/t1/c_cp_masks.tif"
check "from flows, other threshold" $BIN/cpseg -q --model $W --diameter 30 --force --cellprob-threshold 1e9 \
    --save masks_npy --from-flows "$T/ff/c_flows.npy"
check "high threshold gives no cells" python3 -c "
d=open('$T/ff/c_masks.npy','rb').read(); h=int.from_bytes(d[8:10],'little'); assert set(d[10+h:])=={0}"

# libtorch (its backend, lib/cellpose/libcellpose_torch.so) is loaded only when
# a network runs: not for --version or masks from flows, even with a model
loads_torch() { LD_DEBUG=files "$@" > /dev/null 2> "$T/ld.log"; grep -q 'file=libtorch_cpu\.so' "$T/ld.log"; }
loads_torch $BIN/cpseg --version && bad "--version loads libtorch" || ok
loads_torch $BIN/cpseg -q --force --from-flows "$T/ff/c_flows.npy" && bad "--from-flows loads libtorch" || ok
loads_torch $BIN/cpseg -q --force --model $W --from-flows "$T/ff/c_flows.npy" &&
    bad "--from-flows with --model loads libtorch" || ok
loads_torch $SEG -q --force --savedir "$T/lt" "$T/in/a.png" && ok || bad "segmenting does not load libtorch"
check_same "masks after a lazy load" "$T/lt/a_cp_masks.tif" "$T/t1/a_cp_masks.tif"
# a missing or broken backend: one line naming the file, exit 3, no crash;
# masks from flows need no backend
printf 'not a shared object\n' > "$T/broken.so"
# (and a real shared object that is not a backend: zlib)
for be in /nonexistent/libcellpose_torch.so "$T/broken.so" $(ls /lib/*/libz.so.1 /usr/lib/*/libz.so.1 2> /dev/null | head -1); do
    CELLPOSE_TORCH_BACKEND=$be check_fails "backend $be" 3 $SEG --force --savedir "$T/nb" "$T/in/a.png"
    check_eq "backend $be: one line" "$(wc -l < "$T/last.err")" 1
    grep -q "CELLPOSE_TORCH_BACKEND=$be" "$T/last.err" && ok || bad "backend $be: not named: $(cat "$T/last.err")"
    CELLPOSE_TORCH_BACKEND=$be check "from flows without the backend $be" \
        $BIN/cpseg -q --force --model $W --savedir "$T/nb" --from-flows "$T/ff/c_flows.npy"
    check_same "from flows without the backend $be: masks" "$T/nb/c_cp_masks.tif" "$T/t1/c_cp_masks.tif"
done
# a backend of another cptools build (an older interface, as after an
# upgrade that left the old backend installed): refused before any call
printf 'struct b { int abi; const char *version; };\nstatic const struct b B = {3, "0.0.1"};\n%s\n' \
    'const void *cp_torch_backend_init(const void *h) { (void)h; return &B; }' > "$T/oldbe.c"
if cc -shared -fPIC -o "$T/oldbe.so" "$T/oldbe.c" 2> /dev/null; then
    CELLPOSE_TORCH_BACKEND=$T/oldbe.so check_fails "old backend" 3 $SEG --force --savedir "$T/nb" "$T/in/a.png"
    check_eq "old backend: one line" "$(wc -l < "$T/last.err")" 1
    grep -q "oldbe.so: libtorch backend of cptools 0.0.1 (interface 3), but this libcellpose is" "$T/last.err" &&
        ok || bad "old backend: $(cat "$T/last.err")"
fi
# a program with no lib/cellpose/ beside its bin/: the folders looked in, one
# line (unless a backend is installed under the default PREFIX, looked in last)
mkdir -p "$T/alone/bin" && cp $BIN/cpseg "$T/alone/bin/"
[ -e /usr/local/lib/cellpose/libcellpose_torch.so ] || check_fails "no backend beside the program" 3 "$T/alone/bin/cpseg" --model $W --savedir "$T/nb" "$T/in/a.png"
if [ ! -e /usr/local/lib/cellpose/libcellpose_torch.so ]; then
    grep -q "libcellpose_torch.so was not found in $(cd "$T/alone" && pwd -P)/lib/cellpose" "$T/last.err" && ok ||
        bad "no backend: message does not say where: $(cat "$T/last.err")"
    check_eq "no backend: one line" "$(wc -l < "$T/last.err")" 1
fi

# shards: together exactly the batch, no overlap
for k in 0 1 2; do
    check "shard $k/3" $SEG -q --shard $k/3 --savedir "$T/s$k" "$T/in"
done
check_eq "shards cover the batch once" "$(ls "$T"/s0 "$T"/s1 "$T"/s2 | grep -c _cp_masks.tif)" 4
for n in a b c d; do
    f=$(ls "$T"/s*/"${n}_cp_masks.tif")
    check_same "shard output $n" "$f" "$T/t1/${n}_cp_masks.tif"
done

# stdin list
printf '%s\n' "$T/in/a.png" "$T/in/d.png" | $SEG -q --savedir "$T/stdin" - && ok || bad "stdin list"
check_eq "stdin images" "$(ls "$T/stdin" | tr '\n' ' ')" "a_cp_masks.tif d_cp_masks.tif "

# a corrupt image and a missing one: reported, the batch goes on, exit 1
mkdir -p "$T/bad" && cp "$T/in/a.png" "$T/in/b.png" "$T/bad/" && head -c 300 "$T/in/c.png" > "$T/bad/c.png"
check_fails "corrupt image in batch" 1 $SEG --savedir "$T/ob" --manifest "$T/mb.jsonl" "$T/bad"
grep -q "c.png" "$T/last.err" && ok || bad "error names the corrupt file"
check_eq "error is one line" "$(wc -l < "$T/last.err")" 2   # the error and the batch summary
check_eq "other images done" "$(ls "$T/ob" | tr '\n' ' ')" "a_cp_masks.tif b_cp_masks.tif "
check_eq "manifest records the error" "$(grep -c '"status":"error"' "$T/mb.jsonl")" 1
check_fails "--fail-fast stops" 1 $SEG --fail-fast --force --savedir "$T/ob2" "$T/bad/c.png" "$T/bad/a.png"
[ ! -e "$T/ob2/a_cp_masks.tif" ] && ok || bad "--fail-fast went on"
check_fails "missing input" 2 $SEG "$T/nonexistent.png"

# an unwritable save folder: every image fails, nothing half-written
check_fails "unwritable savedir" 1 $SEG --savedir /proc "$T/in/a.png" "$T/in/b.png"
check_eq "each image reported" "$(grep -c "^cpseg: /proc/" "$T/last.err")" 2
check_fails "savedir is a file" 3 $SEG --savedir "$T/in/a.png" "$T/in/b.png"

# SIGINT mid-batch: exit 130, no partial files; a rerun completes the batch
mkdir -p "$T/many"
for i in $(seq 1 12); do cp "$T/in/$(printf 'a\nb\nc\nd\n' | sed -n "$(( (i % 4) + 1 ))p").png" "$T/many/img$i.png"; done
$SEG -q -j 1 --threads 1 --savedir "$T/om" "$T/many" & pid=$!
for _ in $(seq 1 200); do [ "$(ls "$T/om" 2>/dev/null | wc -l)" -ge 1 ] && break; sleep 0.1; done
kill -INT $pid; wait $pid; rc=$?   # one signal: the current image finishes, then it stops
check_eq "interrupted exit status" "$rc" 130
check_eq "no temporaries after SIGINT" "$(ls -A "$T/om" | grep -c '^\.')" 0
done_before=$(ls "$T/om" | wc -l)
[ "$done_before" -lt 12 ] && ok || bad "interrupt came too late to test ($done_before done)"
check "rerun after interrupt" $SEG -q --savedir "$T/om" --manifest "$T/mi.jsonl" "$T/many"
check_eq "rerun finished the rest" "$(ls "$T/om" | wc -l)" 12
check_eq "rerun skipped the finished" "$(grep -c '"status":"skipped"' "$T/mi.jsonl")" "$done_before"
finish
