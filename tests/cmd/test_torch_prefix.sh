# make TORCH=/path/to/libtorch: the backend built against a libtorch laid out
# like the official archives (here one made of symlinks to Debian's files)
# carries an rpath to it, loads its libraries from there without
# LD_LIBRARY_PATH, and segments exactly like the default build.
. "$(dirname "$0")/lib.sh"
W8=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
MK="make -C $CP_ROOT --no-print-directory"

# the prefix: include/{ATen,c10,caffe2,torch}, lib/libtorch*.so*, libc10.so*
# (Debian's sonames are libtorch_cpu.so.1.13 etc., so those links are there too)
P=$T/libtorch
mkdir -p "$P/include" "$P/lib"
for d in ATen c10 caffe2 torch; do ln -s "/usr/include/$d" "$P/include/$d"; done
for f in /usr/lib/x86_64-linux-gnu/libtorch*.so* /usr/lib/x86_64-linux-gnu/libc10.so*; do
    [ -e "$f" ] && ln -s "$f" "$P/lib/"
done
[ -e "$P/lib/libtorch_cpu.so" ] && ok || bad "no Debian libtorch_cpu.so to lay out a prefix from"

# the flags (dry run): headers and libraries from the prefix, an rpath to it;
# libtorch_cuda kept with --no-as-needed when the prefix has it
n=$($MK -n TORCH="$P" BUILD="$T/b" backend)
for want in "-isystem $P/include " "-isystem $P/include/torch/csrc/api/include " "-L$P/lib " "-Wl,-rpath,$P/lib "; do
    grep -qF -- "$want" <<< "$n" && ok || bad "make -n TORCH=...: no '$want'"
done
grep -q "cuda" <<< "$n" && bad "CUDA libraries linked from a CPU-only prefix" || ok
C=$T/cudatorch
mkdir -p "$C/lib" && ln -s "$P/include" "$C/include"
for f in libtorch.so libtorch_cpu.so libc10.so libtorch_cuda.so libc10_cuda.so; do : > "$C/lib/$f"; done
n=$($MK -n TORCH="$C" BUILD="$T/bc" backend)
grep -qF -- "-Wl,--no-as-needed -ltorch_cuda -Wl,--as-needed" <<< "$n" && ok || bad "CUDA prefix: libtorch_cuda not linked --no-as-needed"
grep -qF -- "-lc10_cuda" <<< "$n" && ok || bad "CUDA prefix: libc10_cuda not linked"
check_fails "TORCH without a libtorch there" 2 $MK -n TORCH="$T/nothing" BUILD="$T/bn" backend
check_eq "TORCH without a libtorch: one line naming it" "$(grep -c "TORCH=$T/nothing" "$T/last.err")" 1
# the default build is untouched: Debian's headers and system libraries
n=$(env -u TORCH $MK -n BUILD="$T/bd" backend)
grep -qF -- "-isystem /usr/include/torch/csrc/api/include " <<< "$n" && ok || bad "default build: not Debian's headers"
grep -q -- "-rpath\|-L" <<< "$n" && bad "default build: has an rpath or -L" || ok

# --device cuda on this CPU-only libtorch: one line, exit 3, no output
mkdir -p "$T/in" && cp "$TESTDATA/seg/a.png" "$T/in/"
check_fails "--device cuda without CUDA" 3 "$BIN/cpseg" --model "$W8" --diameter 30 --device cuda --savedir "$T/cuda" "$T/in"
check_eq "--device cuda without CUDA: one line" "$(wc -l < "$T/last.err")" 1
grep -q "CUDA requested but this libtorch has no usable CUDA device" "$T/last.err" && ok || bad "--device cuda: $(cat "$T/last.err")"
check_eq "--device cuda without CUDA: nothing written" "$(ls "$T/cuda" 2>/dev/null | wc -l)" 0

if [ "${CP_SANITIZERS:-0}" = 1 ]; then
    # compiling the backend again takes about a minute; the normal run does it
    echo "skipped under sanitizers: building the backend against the prefix (time)"
    finish; exit
fi

# build only the backend against the prefix
S=$(date +%s)
check "make TORCH=... backend" $MK -s TORCH="$P" BUILD="$T/b" backend
echo "backend built against the prefix in $(($(date +%s) - S)) s"
B=$T/b/lib/cellpose/libcellpose_torch.so
readelf -d "$B" | grep -E "\((RUNPATH|RPATH)\)" | grep -qF "$P/lib" && ok || bad "backend: no RUNPATH/RPATH to $P/lib"
got=$(env -u LD_LIBRARY_PATH ldd "$B" | awk '$1 ~ /^libtorch_cpu\.so/ {print $3}')
check_eq "ldd: libtorch_cpu from the prefix, without LD_LIBRARY_PATH" "$got" "$P/lib/$(readelf -d "$B" | sed -n 's/.*NEEDED.*\[\(libtorch_cpu\.so[^]]*\)\]/\1/p')"

# segmenting with it: masks byte-identical to the default build's backend
check "cpseg, default backend" "$BIN/cpseg" -q --model "$W8" --diameter 30 --savedir "$T/def" "$T/in"
env -u LD_LIBRARY_PATH CELLPOSE_TORCH_BACKEND="$B" LD_DEBUG=libs "$BIN/cpseg" -q --model "$W8" --diameter 30 \
    --savedir "$T/pre" "$T/in" > /dev/null 2> "$T/ld.log" && ok || bad "cpseg with the prefix's backend: $(grep -v '^ *[0-9]*:' "$T/ld.log" | head -3)"
grep -qF "calling init: $P/lib/libtorch_cpu.so" "$T/ld.log" && ok || bad "cpseg: libtorch_cpu not loaded from the prefix"
check_same "masks identical to the default build's" "$T/def/a_cp_masks.tif" "$T/pre/a_cp_masks.tif"
finish
