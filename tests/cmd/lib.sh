# Shared helpers for command-level tests (sourced). Each check counts; the
# script ends with `finish`, which prints `RESULT <passed> <failed>`.
set -u
PASS=0; FAIL=0
BIN=${CP_BIN:?run through tests/run}
SHARED=${CP_SHARED:?}
TESTDATA=${CP_TESTDATA:?}
T=${CP_TMP:?}

ok()   { PASS=$((PASS + 1)); }
bad()  { FAIL=$((FAIL + 1)); echo "FAIL: $*" >&2; }
# check DESCRIPTION COMMAND...: the command must succeed
check() { local d=$1; shift; if "$@"; then ok; else bad "$d"; fi; }
# check_fails DESCRIPTION EXPECTED_EXIT COMMAND...: must exit with that code
check_fails() {
    local d=$1 want=$2; shift 2
    "$@" > "$T/last.out" 2> "$T/last.err"
    local rc=$?
    if [ "$rc" -eq "$want" ]; then ok; else bad "$d (exit $rc, wanted $want): $(head -c 300 "$T/last.err")"; fi
}
# check_eq DESCRIPTION GOT WANT
check_eq() { if [ "$2" = "$3" ]; then ok; else bad "$1: got [$2] want [$3]"; fi; }
# check_same DESCRIPTION FILE1 FILE2: byte-identical
check_same() { if cmp -s "$2" "$3"; then ok; else bad "$1: $2 and $3 differ"; fi; }
finish() { echo "RESULT $PASS $FAIL"; [ "$FAIL" -eq 0 ]; }
