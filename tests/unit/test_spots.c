/* lib/spots: number parsing and printing, the CSV reader, merge, sampling. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "spots/spots_internal.h"
#include "test.h"

static const char *write_file(const char *name, const char *text)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_tmp_dir(), name);
    FILE *fp = fopen(path, "w");
    fputs(text, fp);
    fclose(fp);
    return path;
}

static void test_format(void)
{
    char b[64];
    cp_format_f32(b, sizeof b, 0.1f);
    CHECK(!strcmp(b, "0.1"));
    cp_format_f32(b, sizeof b, 16777217.0f); /* rounds to 16777216 */
    CHECK(!strcmp(b, "16777216"));
    cp_format_f32(b, sizeof b, 1.0f / 3.0f);
    CHECK(!strcmp(b, "0.33333334"));
    cp_format_f64(b, sizeof b, 0.1 + 0.2);
    CHECK(!strcmp(b, "0.30000000000000004"));
    /* every float in a sweep reads back to itself */
    int bad = 0;
    for (uint32_t u = 0x3c000000u; u < 0x4c000000u; u += 9973) {
        float f;
        memcpy(&f, &u, 4);
        cp_format_f32(b, sizeof b, f);
        bad += strtof(b, NULL) != f;
    }
    CHECK(bad == 0);
}

static void test_reader(void)
{
    const char *p = write_file("t.csv", "spot_id,chan,chan_spot_id,r,valid_spot,note\n"
                                        "1,488,1,0.5,True,\"a,\"\"b\"\"\"\n"
                                        "\n"
                                        "2,,2,,False,x\r\n"
                                        "3,561,3,1e-3,,y\n");
    cp_stable t;
    CHECK_OK(cp_spot_table_read(p, NULL, &t));
    CHECK(t.nrows == 3 && t.ncols == 6);
    int r = cp_stable_find(&t, "r"), c = cp_stable_find(&t, "chan"), v = cp_stable_find(&t, "valid_spot"),
        n = cp_stable_find(&t, "note");
    CHECK(t.cols[r].type == CP_SCOL_F32 && t.cols[c].type == CP_SCOL_STR && t.cols[v].type == CP_SCOL_BOOL);
    CHECK(t.cols[n].type == CP_SCOL_STR);
    CHECK(((float *)t.cols[r].v)[2] == 1e-3f);
    CHECK(cp_scol_is_null(&t.cols[r], 1) && cp_scol_is_null(&t.cols[c], 1) && cp_scol_is_null(&t.cols[v], 2));
    CHECK(cp_scol_get_bool(&t.cols[v], 0) && !cp_scol_get_bool(&t.cols[v], 1));
    CHECK(!strcmp(cp_scol_str(&t.cols[n], 0), "a,\"b\""));
    cp_stable_free(&t);

    /* projection and a row mask */
    const char *cols[] = {"chan_spot_id"};
    uint64_t mask = 5; /* rows 0 and 2 */
    cp_sread_opts o = {0};
    o.columns = cols;
    o.ncolumns = 1;
    o.row_mask = &mask;
    o.mask_rows = 3;
    CHECK_OK(cp_spot_table_read(p, &o, &t));
    CHECK(t.ncols == 1 && t.nrows == 2 && ((int32_t *)t.cols[0].v)[1] == 3);
    cp_stable_free(&t);

    p = write_file("bad.csv", "chan,r\n488,0.5\n488,zz\n");
    CHECK(cp_spot_table_read(p, NULL, &t) == CP_EFORMAT);
    CHECKF(strstr(cp_errmsg(), "bad.csv:3:5: column 'r': 'zz' is not a number") != NULL, "%s", cp_errmsg());
}

/* A NUL inside a text value once made the CSV reader compare past the end of
   the shorter dictionary entry (found by a mutated spot table). */
static void test_nul_bytes(void)
{
    static const char csv[] = "chan,note\n488,a\n488,a\0bcdefghijklmnop\n";
    char path[4096];
    snprintf(path, sizeof path, "%s/nul.csv", test_tmp_dir());
    FILE *fp = fopen(path, "wb");
    fwrite(csv, 1, sizeof csv - 1, fp);
    fclose(fp);
    cp_stable t;
    CHECK(cp_spot_table_read(path, NULL, &t) == CP_EFORMAT);
    CHECKF(strstr(cp_errmsg(), "nul.csv:3:5: column 'note': NUL byte in a text value") != NULL, "%s", cp_errmsg());

    /* other readers intern raw bytes: a value is its text up to the NUL */
    cp_sdict d = {0};
    int32_t a, b, c;
    CHECK_OK(cp_sdict_intern(&d, "a", 1, &a));
    CHECK_OK(cp_sdict_intern(&d, "a\0bcdefghijklmnop", 17, &b));
    CHECK_OK(cp_sdict_intern(&d, "ab", 2, &c));
    CHECK(a == b && c != a && d.n == 2);
    cp_sdict_free(&d);
}

static void test_sample(void)
{
    cp_stable t = {0};
    CHECK_OK(cp_stable_add_col(&t, "chan", CP_SCOL_STR));
    CHECK_OK(cp_stable_reserve(&t, 1000));
    const char *ch[3] = {"488", "514", "561"};
    for (int i = 0; i < 1000; i++) {
        int k = i < 900 ? 0 : (i < 990 ? 1 : 2); /* 900 / 90 / 10 */
        int32_t code;
        cp_sdict_intern(&t.cols[0].dict, ch[k], 3, &code);
        ((int32_t *)t.cols[0].v)[i] = code;
    }
    t.nrows = 1000;
    uint32_t rows[1000], *s1, *s2;
    for (int i = 0; i < 1000; i++)
        rows[i] = (uint32_t)i;
    size_t n1, n2;
    CHECK_OK(cp_spot_sample(&t, rows, 1000, 90, CP_SAMPLE_CLASS_BALANCED, 0, 42, &s1, &n1));
    CHECK_OK(cp_spot_sample(&t, rows, 1000, 90, CP_SAMPLE_CLASS_BALANCED, 0, 42, &s2, &n2));
    CHECK(n1 == 90 && n2 == 90 && !memcmp(s1, s2, 90 * sizeof *s1));
    int per[3] = {0}, dup = 0;
    for (size_t i = 0; i < n1; i++) {
        per[s1[i] < 900 ? 0 : s1[i] < 990 ? 1 : 2]++;
        dup += i && s1[i] == s1[i - 1];
    }
    /* 30 each, but only 10 of 561: the 20 short come from the others */
    CHECKF(per[2] == 10 && per[0] + per[1] == 80 && per[0] >= 30 && per[1] >= 30, "%d %d %d", per[0], per[1], per[2]);
    CHECK(dup == 0);
    free(s1);
    free(s2);
    cp_stable_free(&t);
}

static void test_dataset(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/ds", test_tmp_dir());
    cp_spot_synth_opts o;
    cp_spot_synth_defaults(&o);
    o.nspots = 500;
    o.nchannels = 3;
    CHECK_OK(cp_spot_synth(dir, &o));
    cp_spot_dataset d;
    CHECK_OK(cp_spot_dataset_open(dir, &d));
    CHECK(d.nparts == 1 && d.channels.n == 3 && d.gene_name.n == 3);
    cp_stable t;
    CHECK_OK(cp_spot_load(&d, NULL, &t));
    CHECK(t.nrows == 500);
    int removed = 0, re = 0, rei = cp_stable_find(&t, "reassigned");
    for (size_t i = 0; i < t.nrows; i++) {
        removed += cp_spot_is_removed(&t, i);
        re += cp_scol_get_bool(&t.cols[rei], i);
        CHECK(!(cp_spot_is_removed(&t, i) && cp_scol_get_bool(&t.cols[rei], i)));
    }
    CHECK(removed > 0 && re > 0);
    cp_sankey s;
    CHECK_OK(cp_spot_sankey(&t, &s));
    CHECK(s.total == 500 && s.threshold == 5 && !strcmp(s.final.items[s.final.n - 1], "Removed"));
    /* the links as a table: one row a link, the same values */
    cp_stable st;
    CHECK_OK(cp_sankey_table(&s, &st));
    CHECK(st.nrows == (size_t)s.nlinks && st.ncols == 5 && s.nlinks > 0);
    int64_t links_total = 0;
    for (int i = 0; i < s.nlinks && st.ncols == 5; i++) {
        CHECK(!strcmp(cp_scol_str(&st.cols[0], i), s.links[i].source));
        CHECK(!strcmp(cp_scol_str(&st.cols[1], i), s.links[i].target));
        CHECK(!strcmp(cp_scol_str(&st.cols[3], i), s.links[i].flow_type));
        CHECK(((const int64_t *)st.cols[2].v)[i] == s.links[i].value);
        CHECK(((const double *)st.cols[4].v)[i] == s.links[i].percentage);
        links_total += s.links[i].value;
    }
    CHECK(links_total > 0 && links_total <= s.total);
    cp_stable_free(&st);
    cp_sankey_free(&s);
    char *json = NULL;
    uint32_t row = 4;
    CHECK_OK(cp_spot_ng_state(&d, &t, &row, 1, NULL, &json));
    CHECK(json && strstr(json, "\"annotationColor\":\"#FFFF00\"") && strstr(json, "\"CH_561\""));
    char *url = cp_spot_ng_url(json);
    CHECK(url && !strncmp(url, "https://neuroglancer-demo.appspot.com/#!%7B%22", 46));
    free(url);
    free(json);
    cp_stable_free(&t);
    cp_spot_dataset_free(&d);
}

/* The same table whatever the block size and thread count: block edges,
 * the carried-over partial row, the prefetch buffer swap and its fallback
 * (a row longer than the carry room). */
static void test_blocks(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/blocks.csv", test_tmp_dir());
    FILE *fp = fopen(path, "w");
    fprintf(fp, "chan,cell_id,r,note\n");
    for (int i = 0; i < 20000; i++) {
        fprintf(fp, "%s,%d,%d.%03d,", i % 3 ? "488" : "561", i, i % 7, i % 1000);
        if (i == 7777)
            for (int k = 0; k < 3000; k++)
                fputc('x', fp);
        fprintf(fp, "n%d\n", i % 5);
    }
    fclose(fp);
    cp_stable ref;
    CHECK_OK(cp_spot_table_read(path, NULL, &ref));
    CHECK(ref.nrows == 20000);
    size_t blocks[3] = {4096, 70000, 1u << 20};
    for (int b = 0; b < 3; b++)
        for (int th = 1; th <= 3; th += 2) {
            cp_csv_block = blocks[b];
            cp_sread_opts o = {0};
            o.threads = th;
            cp_stable t;
            CHECK_OK(cp_spot_table_read(path, &o, &t));
            int same = t.nrows == ref.nrows && t.ncols == ref.ncols;
            for (int c = 0; same && c < t.ncols; c++)
                for (size_t i = 0; same && i < t.nrows; i++) {
                    char x[64], y[64];
                    cp_scol_format(&t.cols[c], i, 0, x, sizeof x);
                    cp_scol_format(&ref.cols[c], i, 0, y, sizeof y);
                    same = !strcmp(x, y);
                }
            CHECKF(same, "block %zu threads %d", blocks[b], th);
            CHECK(!strcmp(t.cols[0].dict.s[0], "561")); /* first-appearance order */
            cp_stable_free(&t);
        }
    cp_csv_block = 32u << 20;
    cp_stable_free(&ref);
}

int main(void)
{
    test_blocks();
    test_format();
    test_reader();
    test_nul_bytes();
    test_sample();
    test_dataset();
    return test_result();
}
