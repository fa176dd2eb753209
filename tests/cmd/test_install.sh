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
check "uninstall" make -C "$CP_ROOT" -s uninstall BUILD="$BUILD" PREFIX=/opt/cp DESTDIR="$D"
check_eq "nothing left but folders" "$(find "$D" -type f -o -type l | wc -l)" 0
finish
