# make install: commands, library, headers, man pages and a pkg-config file
# that a program can build against.
. "$(dirname "$0")/lib.sh"
BUILD=$(basename "$(dirname "$BIN")")
D=$T/dest
check "make install" make -C "$CP_ROOT" -s install BUILD="$BUILD" PREFIX=/opt/cp DESTDIR="$D"
for f in bin/cpseg bin/cpmetrics bin/cpcells bin/spotquery lib/libcellpose.a lib/libcellpose.so \
         include/cellpose/cellpose.h lib/pkgconfig/cellpose.pc share/man/man1/cpseg.1; do
    [ -e "$D/opt/cp/$f" ] && ok || bad "not installed: $f"
done
for m in "$D"/opt/cp/share/man/man1/*.1; do
    grep -q '^\.SH EXIT STATUS' "$m" && ok || bad "$(basename "$m"): no EXIT STATUS section"
done
cat > "$T/prog.c" <<'C'
#include <cellpose/cellpose.h>
#include <stdio.h>
int main(void)
{
    cp_image *img;
    int rc = cp_image_read("/nonexistent.tif", NULL, &img);
    printf("%s %d %s\n", cp_version(), rc, cp_errmsg());
    return rc == CP_EIO ? 0 : 1;
}
C
flags=$(PKG_CONFIG_PATH=$D/opt/cp/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$D pkg-config --static --cflags --libs cellpose)
san=; [ "${CP_SANITIZERS:-0}" = 1 ] && san="-fsanitize=address,undefined"  # the sanitizer build's library needs its runtime
check "build against the installed library" sh -c "cc $san -o '$T/prog' '$T/prog.c' $flags"
check_eq "program runs" "$(LD_LIBRARY_PATH=$D/opt/cp/lib "$T/prog")" "$(sed -n 's/^#define CP_VERSION_STRING "\(.*\)"/\1/p' "$CP_ROOT/include/cellpose/core.h") 1 /nonexistent.tif: cannot open: No such file or directory"
grep -q torch "$D/opt/cp/lib/pkgconfig/cellpose.pc" && bad "cellpose.pc lists libtorch" || ok

# networks: the installed commands and libraries load the installed backend
# (lib/cellpose/libcellpose_torch.so), not the build tree's; a program linked
# with libcellpose.a elsewhere finds it through CELLPOSE_TORCH_BACKEND
P=$(cd "$D/opt/cp" && pwd -P)
W8=$SHARED/golden/weights/cpnet_nucleilike_s2_legacy.pth
LD_DEBUG=files "$P/bin/cpseg" -q --model "$W8" --diameter 30 --savedir "$T/seg" "$TESTDATA/seg/a.png" \
    > /dev/null 2> "$T/ld.log" && ok || bad "installed cpseg segments: $(grep -v '^ *[0-9]*:' "$T/ld.log" | head -3)"
grep -qF "file=$P/lib/cellpose/libcellpose_torch.so " "$T/ld.log" && ok || bad "installed cpseg: not the installed backend"
cat > "$T/net.c" <<'C'
#include <cellpose/cellpose.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    cp_model *m;
    if (argc != 2 || cp_model_load(argv[1], NULL, &m) != CP_OK) {
        printf("%s\n", cp_errmsg());
        return 1;
    }
    printf("%s\n", cp_model_get_info(m)->arch == CP_ARCH_CPNET ? "cpnet" : "?");
    cp_model_free(m);
    return 0;
}
C
check "build a network program (shared)" sh -c "cc $san -o '$T/net' '$T/net.c' $flags"
LD_DEBUG=files LD_LIBRARY_PATH=$P/lib "$T/net" "$W8" > "$T/net.out" 2> "$T/ld.log"
check_eq "network program (shared) runs" "$(cat "$T/net.out")" cpnet
grep -qF "file=$P/lib/cellpose/libcellpose_torch.so " "$T/ld.log" && ok || bad "network program (shared): not the installed backend"
sflags=$(PKG_CONFIG_PATH=$P/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$D pkg-config --static --libs-only-l cellpose | sed 's/-lcellpose//')
check "build a network program (static)" sh -c "cc $san -fopenmp -I'$P/include' -o '$T/nets' '$T/net.c' '$P/lib/libcellpose.a' $sflags"
check_eq "network program (static), backend by CELLPOSE_TORCH_BACKEND" \
    "$(CELLPOSE_TORCH_BACKEND=$P/lib/cellpose/libcellpose_torch.so "$T/nets" "$W8")" cpnet
check_eq "static program without a backend: one line naming it" \
    "$(CELLPOSE_TORCH_BACKEND=$T/none.so "$T/nets" "$W8" | grep -c "none.so")" 1
check "uninstall" make -C "$CP_ROOT" -s uninstall BUILD="$BUILD" PREFIX=/opt/cp DESTDIR="$D"
check_eq "nothing left but folders" "$(find "$D" -type f -o -type l | wc -l)" 0
finish
