/* The pickle and Parquet table readers against damaged and hostile input:
 * truncations at many cut points, flipped bytes, corrupt Thrift, lengths past
 * the end, huge declared sizes, refused pickle globals and opcodes. Each must
 * end in a one-line error naming the file (never a crash; run under ASan and
 * UBSan too). Also a numpy-2 module-path variant of a pandas pickle, and a
 * hand-made Parquet file (our own Thrift writer) for the size checks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "test.h"

static const char *testdata(const char *rel)
{
    static char buf[4096];
    const char *d = getenv("CP_TESTDATA");
    snprintf(buf, sizeof buf, "%s/%s", d && *d ? d : "testdata", rel);
    return buf;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

/* Read path; returns the status. On failure the message must be one line
 * naming the file. */
static int try_read(const char *path, size_t *rows)
{
    cp_stable t;
    int rc = cp_spot_table_read(path, NULL, &t);
    if (rc == 0) {
        if (rows)
            *rows = t.nrows;
        cp_stable_free(&t);
    } else {
        const char *m = cp_errmsg();
        CHECKF(strstr(m, path) != NULL && !strchr(m, '\n'), "message [%s] for %s", m, path);
    }
    return rc;
}

static void truncations(const char *rel, const char *ext)
{
    size_t n;
    uint8_t *b = test_slurp(testdata(rel), &n);
    CHECKF(b != NULL, "%s", rel);
    if (!b)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/cut%s", test_tmp_dir(), ext);
    size_t step = n / 300 + 1;
    int fails = 0, cuts = 0;
    for (size_t cut = 0; cut < n; cut += (cut + 64 > n ? 1 : step)) {
        spit(path, b, cut);
        cuts++;
        fails += try_read(path, NULL) != 0;
    }
    CHECKF(fails == cuts, "%s: %d of %d truncations were refused", rel, fails, cuts);
    free(b);
}

static void flips(const char *rel, const char *ext, uint64_t seed)
{
    size_t n;
    uint8_t *b = test_slurp(testdata(rel), &n);
    if (!b)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/flip%s", test_tmp_dir(), ext);
    uint8_t *c = malloc(n);
    /* CP_FUZZ_ITERS raises the count for a longer local run */
    int iters = getenv("CP_FUZZ_ITERS") ? atoi(getenv("CP_FUZZ_ITERS")) : 400;
    for (int k = 0; k < iters; k++) {
        memcpy(c, b, n);
        for (int j = 0; j < 1 + k % 3; j++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(seed >> 33) % n;
            c[at] ^= (uint8_t)(seed >> 13 | 1);
        }
        spit(path, c, n);
        try_read(path, NULL); /* success or a clean error: both fine, no crash */
    }
    CHECK(1);
    free(c);
    free(b);
}

static void expect_error(const char *name, const uint8_t *b, size_t n, const char *needle)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_tmp_dir(), name);
    spit(path, b, n);
    int rc = try_read(path, NULL);
    CHECKF(rc != 0, "%s was accepted", name);
    if (rc && needle)
        CHECKF(strstr(cp_errmsg(), needle) != NULL, "%s: [%s] lacks [%s]", name, cp_errmsg(), needle);
}

static void hostile_pickles(void)
{
    static const uint8_t os_system[] = "\x80\x02" "cos\nsystem\n" "X\x07\0\0\0echo hi" "\x85R.";
    expect_error("system.pkl", os_system, sizeof os_system - 1, "os.system");
    static const uint8_t stack_glob[] = "\x80\x04\x8c\x08" "builtins" "\x8c\x04" "eval" "\x93" "N\x85R.";
    expect_error("eval.pkl", stack_glob, sizeof stack_glob - 1, "builtins.eval");
    static const uint8_t huge[] = "\x80\x05\x8e\xff\xff\xff\xff\xff\xff\xff\x7f" "abc.";
    expect_error("huge.pkl", huge, sizeof huge - 1, "past the end");
    static const uint8_t huge2[] = "\x80\x05\x96\x00\x00\x00\x00\x01\x00\x00\x00" "abc.";
    expect_error("huge2.pkl", huge2, sizeof huge2 - 1, "past the end");
    static const uint8_t memo[] = "\x80\x02Nr\xff\xff\xff\x7f.";
    expect_error("memo.pkl", memo, sizeof memo - 1, "memo");
    static const uint8_t get[] = "\x80\x02h\x05.";
    expect_error("get.pkl", get, sizeof get - 1, "memo");
    static const uint8_t nextbuf[] = "\x80\x05\x97.";
    expect_error("nextbuf.pkl", nextbuf, sizeof nextbuf - 1, "out-of-band");
    static const uint8_t proto[] = "\x80\x06N.";
    expect_error("proto.pkl", proto, sizeof proto - 1, "protocol");
    static const uint8_t inst[] = "\x80\x02(ios\nsystem\n.";
    expect_error("inst.pkl", inst, sizeof inst - 1, "opcode");
    static const uint8_t persid[] = "\x80\x02N" "Q.";
    expect_error("persid.pkl", persid, sizeof persid - 1, "opcode");
    static const uint8_t notdf[] = "\x80\x02N.";
    expect_error("none.pkl", notdf, sizeof notdf - 1, "DataFrame");
    static const uint8_t under[] = "\x80\x02" "0.";
    expect_error("under.pkl", under, sizeof under - 1, "underflow");
    expect_error("empty.pkl", (const uint8_t *)"", 0, NULL);
    /* many marks: bounded by the file size, refused at the end */
    size_t n = 100000;
    uint8_t *marks = malloc(n + 3);
    marks[0] = 0x80;
    marks[1] = 2;
    memset(marks + 2, '(', n);
    marks[n + 2] = '.';
    expect_error("marks.pkl", marks, n + 3, NULL);
    /* deeply nested empty lists appended into each other */
    marks[2] = ']';
    for (size_t i = 3; i + 1 < n + 2; i += 2) {
        marks[i] = ']';
        marks[i + 1] = 'a';
    }
    expect_error("lists.pkl", marks, n + 3, NULL);
    free(marks);
}

/* numpy 2 writes numpy._core.* where numpy 1 wrote numpy.core.*: rewrite the
 * module names of a pandas 1.5 pickle (SHORT_BINUNICODE, length byte + 1) and
 * drop the FRAME opcode (its length would change). */
static void numpy2_variant(void)
{
    size_t n;
    uint8_t *b = test_slurp(testdata("spots/pkl_dataset/unmixed_spots_R2_minDist_3.pkl"), &n);
    if (!b) {
        CHECK(!"fixture");
        return;
    }
    uint8_t *o = malloc(n * 2);
    size_t m = 0, i = 0;
    if (n > 11 && b[2] == 0x95) {
        memcpy(o, b, 2);
        m = i = 2;
        i += 9;
    }
    int renamed = 0;
    while (i < n) {
        if (b[i] == 0x8c && i + 1 < n && b[i + 1] >= 11 && i + 2 + b[i + 1] <= n &&
            !memcmp(b + i + 2, "numpy.core.", 11)) {
            size_t len = b[i + 1];
            o[m++] = 0x8c;
            o[m++] = (uint8_t)(len + 1);
            memcpy(o + m, "numpy._core.", 12);
            m += 12;
            memcpy(o + m, b + i + 2 + 11, len - 11);
            m += len - 11;
            i += 2 + len;
            renamed++;
        } else {
            o[m++] = b[i++];
        }
    }
    CHECKF(renamed >= 2, "renamed %d module names", renamed);
    char path[4096], ref[4096];
    snprintf(path, sizeof path, "%s/numpy2.pkl", test_tmp_dir());
    snprintf(ref, sizeof ref, "%s", testdata("spots/pkl_dataset/unmixed_spots_R2_minDist_3.pkl"));
    spit(path, o, m);
    cp_stable a, c;
    CHECK_OK(cp_spot_table_read(path, NULL, &a));
    CHECK_OK(cp_spot_table_read(ref, NULL, &c));
    CHECK(a.nrows == c.nrows && a.ncols == c.ncols && a.nrows == 22);
    int same = a.nrows == c.nrows && a.ncols == c.ncols;
    for (int k = 0; same && k < a.ncols; k++)
        for (size_t r = 0; r < a.nrows; r++) {
            double x = cp_scol_num(&a.cols[k], r), y = cp_scol_num(&c.cols[k], r);
            const char *s = cp_scol_str(&a.cols[k], r), *t = cp_scol_str(&c.cols[k], r);
            if (!((x == y || (x != x && y != y)) && (s == t || (s && t && !strcmp(s, t)))))
                same = 0;
        }
    CHECK(same);
    cp_stable_free(&a);
    cp_stable_free(&c);
    free(o);
    free(b);
}

/* ---- a hand-made Parquet file: one required INT32 column "cell_id" -------- */

typedef struct wb {
    uint8_t b[4096];
    size_t n;
    int16_t last[8];
    int depth;
} wb;

static void put(wb *w, uint8_t c) { w->b[w->n++] = c; }
static void varint(wb *w, uint64_t v)
{
    while (v >= 0x80) {
        put(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put(w, (uint8_t)v);
}
static void zz(wb *w, int64_t v) { varint(w, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63)); }
static void field(wb *w, int16_t id, int type)
{
    int16_t d = (int16_t)(id - w->last[w->depth]);
    if (d > 0 && d <= 15) {
        put(w, (uint8_t)(d << 4 | type));
    } else {
        put(w, (uint8_t)type);
        zz(w, id);
    }
    w->last[w->depth] = id;
}
static void fint(wb *w, int16_t id, int type, int64_t v) { field(w, id, type), zz(w, v); }
static void fbin(wb *w, int16_t id, const char *s)
{
    field(w, id, 8);
    varint(w, strlen(s));
    memcpy(w->b + w->n, s, strlen(s));
    w->n += strlen(s);
}
static void begin(wb *w) { w->last[++w->depth] = 0; }
static void end(wb *w) { put(w, 0), w->depth--; }
static void list(wb *w, int16_t id, int et, int n) { field(w, id, 9), put(w, (uint8_t)(n << 4 | et)); }

typedef struct pq_spec {
    int64_t usize_delta, csize_delta, rows, num_values, footer_delta, chunk_size_delta, data_offset;
    int codec, optional_levels;
} pq_spec;

static size_t make_parquet(uint8_t *out, const pq_spec *s)
{
    int32_t vals[3] = {7, -2, 40};
    wb page = {0};
    /* page header then PLAIN values */
    begin(&page);
    fint(&page, 1, 5, 0);                                  /* DATA_PAGE */
    fint(&page, 2, 5, 12 + s->usize_delta);                /* uncompressed size */
    fint(&page, 3, 5, 12 + s->csize_delta);                /* compressed size */
    field(&page, 5, 12);
    begin(&page);
    fint(&page, 1, 5, s->num_values);
    fint(&page, 2, 5, 0);
    fint(&page, 3, 5, 3);
    fint(&page, 4, 5, 3);
    end(&page);
    end(&page);
    memcpy(page.b + page.n, vals, 12);
    page.n += 12;
    size_t n = 0;
    memcpy(out, "PAR1", 4);
    n = 4;
    memcpy(out + n, page.b, page.n);
    n += page.n;
    wb f = {0};
    begin(&f);
    fint(&f, 1, 5, 1);
    list(&f, 2, 12, 2);
    begin(&f);
    fbin(&f, 4, "schema");
    fint(&f, 5, 5, 1);
    end(&f);
    begin(&f);
    fint(&f, 1, 5, 1);
    fint(&f, 3, 5, 0);
    fbin(&f, 4, "cell_id");
    end(&f);
    fint(&f, 3, 6, s->rows);
    list(&f, 4, 12, 1);
    begin(&f);
    list(&f, 1, 12, 1);
    begin(&f);
    fint(&f, 2, 6, 4);
    field(&f, 3, 12);
    begin(&f);
    fint(&f, 1, 5, 1);
    list(&f, 2, 5, 1);
    zz(&f, 0);
    list(&f, 3, 8, 1);
    varint(&f, 7);
    memcpy(f.b + f.n, "cell_id", 7);
    f.n += 7;
    fint(&f, 4, 5, s->codec);
    fint(&f, 5, 6, 3);
    fint(&f, 6, 6, (int64_t)page.n);
    fint(&f, 7, 6, (int64_t)page.n + s->chunk_size_delta);
    fint(&f, 9, 6, s->data_offset ? s->data_offset : 4);
    end(&f);
    end(&f);
    fint(&f, 2, 6, 100);
    fint(&f, 3, 6, s->rows);
    end(&f);
    end(&f);
    memcpy(out + n, f.b, f.n);
    n += f.n;
    uint32_t fl = (uint32_t)((int64_t)f.n + s->footer_delta);
    memcpy(out + n, &fl, 4);
    n += 4;
    memcpy(out + n, "PAR1", 4);
    return n + 4;
}

static void hostile_parquet(void)
{
    uint8_t buf[8192];
    const pq_spec ok = {0, 0, 3, 3, 0, 0, 0, 0, 0};
    size_t n = make_parquet(buf, &ok);
    char path[4096];
    snprintf(path, sizeof path, "%s/made.parquet", test_tmp_dir());
    spit(path, buf, n);
    cp_stable t;
    CHECK_OK(cp_spot_table_read(path, NULL, &t));
    if (t.nrows == 3 && t.ncols == 1) {
        CHECK(t.cols[0].type == CP_SCOL_I32);
        CHECK(cp_scol_num(&t.cols[0], 0) == 7 && cp_scol_num(&t.cols[0], 1) == -2 && cp_scol_num(&t.cols[0], 2) == 40);
    } else {
        CHECKF(0, "rows %zu cols %d", t.nrows, t.ncols);
    }
    cp_stable_free(&t);
    struct {
        const char *name, *needle;
        pq_spec s;
    } cases[] = {
        {"usize.parquet", "refused", {0x7fffff00, 0, 3, 3, 0, 0, 0, 1, 0}},
        {"usize_zstd.parquet", "refused", {0x7fffff00, 0, 3, 3, 0, 0, 0, 6, 0}},
        {"csize.parquet", "runs past", {0, 1000, 3, 3, 0, 0, 0, 0, 0}},
        {"rows.parquet", "values for", {0, 0, (int64_t)1 << 60, 3, 0, 0, 0, 0, 0}},
        {"nvalues.parquet", "rows left", {0, 0, 3, 1000000, 0, 0, 0, 0, 0}},
        {"footer.parquet", "footer", {0, 0, 3, 3, 1 << 20, 0, 0, 0, 0}},
        {"footer2.parquet", "corrupt", {0, 0, 3, 3, -5, 0, 0, 0, 0}},
        {"chunk.parquet", "outside the file", {0, 0, 3, 3, 0, 1 << 20, 0, 0, 0}},
        {"offset.parquet", "outside the file", {0, 0, 3, 3, 0, 0, (int64_t)1 << 40, 0, 0}},
        {"codec.parquet", "codec", {0, 0, 3, 3, 0, 0, 0, 4, 0}},
        {"short.parquet", "values for", {0, 0, 4, 3, 0, 0, 0, 0, 0}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        n = make_parquet(buf, &cases[k].s);
        expect_error(cases[k].name, buf, n, cases[k].needle);
    }
    /* corrupt Thrift: every byte of the footer replaced by 0xff in turn */
    n = make_parquet(buf, &ok);
    uint32_t fl;
    memcpy(&fl, buf + n - 8, 4);
    for (size_t at = n - 8 - fl; at < n - 8; at++) {
        uint8_t keep = buf[at];
        buf[at] = 0xff;
        spit(path, buf, n);
        try_read(path, NULL);
        buf[at] = keep;
    }
    CHECK(1);
    truncations("spots/hp_snappy.parquet", ".parquet");
}

static int same_tables(const cp_stable *a, const cp_stable *c)
{
    if (a->nrows != c->nrows || a->ncols != c->ncols)
        return 0;
    for (int k = 0; k < a->ncols; k++) {
        if (strcmp(a->cols[k].name, c->cols[k].name) || a->cols[k].type != c->cols[k].type)
            return 0;
        for (size_t r = 0; r < a->nrows; r++) {
            double x = cp_scol_num(&a->cols[k], r), y = cp_scol_num(&c->cols[k], r);
            const char *s = cp_scol_str(&a->cols[k], r), *t = cp_scol_str(&c->cols[k], r);
            if (cp_scol_is_null(&a->cols[k], r) != cp_scol_is_null(&c->cols[k], r) ||
                !(x == y || (x != x && y != y)) || !(s == t || (s && t && !strcmp(s, t))))
                return 0;
        }
    }
    return 1;
}

/* Our Parquet writer: every column type, nulls in STR/BOOL/I32, a row subset. */
static void writer_roundtrip(void)
{
    cp_stable t, back;
    CHECK_OK(cp_spot_table_read(testdata("spots/merged.csv"), NULL, &t));
    char path[4096];
    snprintf(path, sizeof path, "%s/w.parquet", test_tmp_dir());
    FILE *fp = fopen(path, "wb");
    CHECK_OK(cp_stable_write(fp, &t, NULL, 0, NULL, 0, CP_FMT_PARQUET));
    fclose(fp);
    CHECK_OK(cp_spot_table_read(path, NULL, &back));
    CHECK(same_tables(&t, &back));
    cp_stable_free(&back);
    uint32_t rows[] = {2, 3, 9, 1};
    int cols[] = {1, 23, 24, 0};
    fp = fopen(path, "wb");
    CHECK_OK(cp_stable_write(fp, &t, rows, 4, cols, 4, CP_FMT_PARQUET));
    fclose(fp);
    cp_stable sub;
    CHECK_OK(cp_stable_gather(&t, rows, 4, cols, 4, &sub));
    CHECK_OK(cp_spot_table_read(path, NULL, &back));
    /* the file keeps the given column order; the reader gives file order */
    CHECK(back.nrows == 4 && back.ncols == 4 && same_tables(&sub, &back));
    cp_stable_free(&back);
    cp_stable_free(&sub);
    cp_stable_free(&t);
}

int main(void)
{
    writer_roundtrip();
    truncations("spots/pkl_dataset/unmixed_spots_R2_minDist_3.pkl", ".pkl");
    truncations("spots/compact_p2.pkl", ".pkl");
    truncations("spots/pw_zstd_v2.parquet", ".parquet");
    truncations("spots/pw_gzip.parquet", ".parquet");
    flips("spots/blocks.pkl", ".pkl", 1);
    flips("spots/pw_snappy.parquet", ".parquet", 2);
    flips("spots/hp_gzip.parquet", ".parquet", 3);
    flips("spots/pw_none.parquet", ".parquet", 4);
    flips("spots/compact_p2.pkl", ".pkl", 5);
    flips("spots/pw_zstd_v2.parquet", ".parquet", 6);
    flips("spots/pw_plain.parquet", ".parquet", 7);
    hostile_pickles();
    numpy2_variant();
    hostile_parquet();
    return test_result();
}
