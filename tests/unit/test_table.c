/* lib/table: the table writer (CSV/TSV quoting, JSON escaping, NA and
 * non-finite numbers, nested JSON keys, parallel chunks), merging and
 * manifests; CSV and JSON read back by pandas and Python's json. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cellpose/cellpose.h"
#include "table/table_internal.h"
#include "test.h"

static const char *COLS[] = {"name", "n", "x", "f", "ok", "na"};
#define NC 6
/* strings that need quoting or escaping in every format */
static const char *NAMES[] = {"plain", "a,b", "say \"hi\"", "two\nlines", "tab\there", "cr\rx", "back\\slash",
                              "bell\x07", "caf\xc3\xa9", ""};
#define NR 10

static void row(cp_table_writer *w, int i)
{
    static const double X[] = {1.0, 0.1, -2.5, 1e-5, 1e16, NAN, INFINITY, -INFINITY, 0.30000000000000004, 0.0};
    cp_tw_str(w, NAMES[i]);
    cp_tw_int(w, i - 3);
    cp_tw_num(w, X[i]);
    cp_tw_f32(w, i == 5 ? NAN : 1.0f / (float)(i + 1));
    cp_tw_bool(w, i & 1);
    if (i & 1)
        cp_tw_null(w);
    else
        cp_tw_str(w, NULL);
    cp_tw_end_row(w);
}

/* The whole table as text. */
static char *table_text(cp_table_format fmt, cp_float_style fl)
{
    char *text = NULL;
    size_t n = 0;
    FILE *fp = open_memstream(&text, &n);
    cp_table_writer w;
    CHECK_OK(cp_tw_begin(&w, fp, fmt, fl, COLS, NC));
    for (int i = 0; i < NR; i++)
        row(&w, i);
    CHECK_OK(cp_tw_end(&w));
    fclose(fp);
    return text;
}

static void test_csv(void)
{
    char *t = table_text(CP_FMT_CSV, CP_FLOATS_PYTHON);
    const char *want = "name,n,x,f,ok,na\n"
                       "plain,-3,1.0,1,False,\n"
                       "\"a,b\",-2,0.1,0.5,True,\n"
                       "\"say \"\"hi\"\"\",-1,-2.5,0.33333334,False,\n"
                       "\"two\nlines\",0,1e-05,0.25,True,\n"
                       "tab\there,1,1e+16,0.2,False,\n"
                       "\"cr\rx\",2,nan,nan,True,\n"
                       "back\\slash,3,inf,0.14285715,False,\n"
                       "bell\x07,4,-inf,0.125,True,\n"
                       "caf\xc3\xa9,5,0.30000000000000004,0.11111111,False,\n"
                       ",6,0.0,0.1,True,\n";
    CHECKF(!strcmp(t, want), "csv:\n%s", t);
    free(t);
    /* the other float style: %g digits */
    t = table_text(CP_FMT_CSV, CP_FLOATS_SHORTEST);
    CHECKF(strstr(t, "plain,-3,1,1,") && strstr(t, ",1e+16,") && strstr(t, ",0,0.1,True"), "%s", t);
    free(t);
    t = table_text(CP_FMT_TSV, CP_FLOATS_PYTHON);
    CHECKF(strstr(t, "name\tn\tx\tf\tok\tna\n") && strstr(t, "\ntwo lines\t0\t") && strstr(t, "\ntab here\t1\t") &&
               strstr(t, "\ncr x\t") && strstr(t, "\na,b\t") && strstr(t, "\nsay \"hi\"\t"),
           "tsv:\n%s", t);
    free(t);
}

static void test_json(void)
{
    char *t = table_text(CP_FMT_JSON, CP_FLOATS_PYTHON);
    const char *first = "[\n{\"name\": \"plain\", \"n\": -3, \"x\": 1.0, \"f\": 1, \"ok\": false, \"na\": null},\n";
    CHECKF(!strncmp(t, first, strlen(first)), "%s", t);
    CHECK(strstr(t, "\"name\": \"say \\\"hi\\\"\"") != NULL);
    CHECK(strstr(t, "\"name\": \"two\\nlines\"") != NULL);
    CHECK(strstr(t, "\"name\": \"tab\\there\"") != NULL);
    CHECK(strstr(t, "\"name\": \"cr\\rx\"") != NULL);
    CHECK(strstr(t, "\"name\": \"back\\\\slash\"") != NULL);
    CHECK(strstr(t, "\"name\": \"bell\\u0007\"") != NULL);
    CHECK(strstr(t, "\"x\": null, \"f\": null") != NULL); /* NaN */
    CHECK(strstr(t, "\"n\": 3, \"x\": null,") != NULL);   /* inf */
    size_t n = strlen(t);
    CHECK(n > 4 && !strcmp(t + n - 4, "}\n]\n"));
    free(t);
    t = table_text(CP_FMT_NDJSON, CP_FLOATS_PYTHON);
    int lines = 0;
    for (char *p = t; *p; p++)
        lines += *p == '\n';
    CHECK(lines == NR && t[0] == '{');
    free(t);

    /* empty tables */
    char *e = NULL;
    size_t en = 0;
    FILE *fp = open_memstream(&e, &en);
    cp_table_writer w;
    cp_tw_begin(&w, fp, CP_FMT_JSON, CP_FLOATS_PYTHON, COLS, NC);
    CHECK_OK(cp_tw_end(&w));
    fclose(fp);
    CHECK(!strcmp(e, "[]\n"));
    free(e);
}

static void test_nested_and_absent(void)
{
    static const char *cols[] = {"image", "total", "a_mean", "a_max", "b_mean", "err"};
    static const char *keys[] = {"image", "s/total", "s/a/mean", "s/a/max", "s/b/mean", "err"};
    cp_table_writer w;
    cp_tw_begin(&w, NULL, CP_FMT_NDJSON, CP_FLOATS_PYTHON, cols, 6);
    w.json_keys = keys;
    for (int r = 0; r < 2; r++) {
        cp_tw_str(&w, "im");
        cp_tw_int(&w, 3);
        cp_tw_num(&w, 1.5);
        cp_tw_num(&w, NAN);
        cp_tw_num(&w, 2);
        if (r)
            cp_tw_str(&w, "bad");
        else
            cp_tw_absent(&w);
        cp_tw_end_row(&w);
    }
    const char *t = cp_tw_text(&w, NULL);
    CHECKF(!strcmp(t, "{\"image\": \"im\", \"s\": {\"total\": 3, \"a\": {\"mean\": 1.5, \"max\": null}, \"b\": {\"mean\": 2.0}}}\n"
                      "{\"image\": \"im\", \"s\": {\"total\": 3, \"a\": {\"mean\": 1.5, \"max\": null}, \"b\": {\"mean\": 2.0}}, \"err\": \"bad\"}\n"),
           "%s", t);
    CHECK_OK(cp_tw_end(&w));
    /* CSV ignores the keys; an absent cell is an empty field */
    cp_tw_begin(&w, NULL, CP_FMT_CSV, CP_FLOATS_PYTHON, cols, 6);
    w.json_keys = keys;
    cp_tw_str(&w, "im");
    cp_tw_int(&w, 3);
    cp_tw_num(&w, 1.5);
    cp_tw_num(&w, NAN);
    cp_tw_num(&w, 2);
    cp_tw_absent(&w);
    cp_tw_end_row(&w);
    CHECK(!strcmp(cp_tw_text(&w, NULL), "image,total,a_mean,a_max,b_mean,err\nim,3,1.5,nan,2.0,\n"));
    CHECK_OK(cp_tw_end(&w));
    /* a plain column name may hold '/' */
    static const char *slash[] = {"a/b"};
    cp_tw_begin(&w, NULL, CP_FMT_NDJSON, CP_FLOATS_PYTHON, slash, 1);
    cp_tw_int(&w, 1);
    cp_tw_end_row(&w);
    CHECK(!strcmp(cp_tw_text(&w, NULL), "{\"a/b\": 1}\n"));
    CHECK_OK(cp_tw_end(&w));
}

static void test_errors(void)
{
    cp_table_writer w;
    cp_tw_begin(&w, NULL, CP_FMT_CSV, CP_FLOATS_PYTHON, COLS, 2);
    cp_tw_int(&w, 1);
    cp_tw_end_row(&w); /* one cell short */
    CHECK(cp_tw_end(&w) == CP_EINVAL);
    cp_tw_begin(&w, NULL, CP_FMT_CSV, CP_FLOATS_PYTHON, COLS, 1);
    cp_tw_int(&w, 1);
    cp_tw_int(&w, 2); /* one too many */
    cp_tw_end_row(&w);
    CHECK(cp_tw_end(&w) == CP_EINVAL);
    CHECK(cp_tw_begin(&w, NULL, CP_FMT_PARQUET, CP_FLOATS_PYTHON, COLS, 1) == CP_EINVAL);
    cp_tw_end(&w);
    CHECK(cp_table_format_parse("ndjson") == CP_FMT_NDJSON && cp_table_format_parse("xls") == -1);
}

/* Chunks formatted apart and joined give the bytes of one pass. */
static void test_fork_join(void)
{
    for (int fmt = CP_FMT_CSV; fmt <= CP_FMT_NDJSON; fmt++) {
        char *one = table_text((cp_table_format)fmt, CP_FLOATS_PYTHON), *two = NULL;
        size_t n = 0;
        FILE *fp = open_memstream(&two, &n);
        cp_table_writer w, parts[3];
        cp_tw_begin(&w, fp, (cp_table_format)fmt, CP_FLOATS_PYTHON, COLS, NC);
#pragma omp parallel for
        for (int c = 0; c < 3; c++) {
            cp_tw_fork(&w, (size_t)c * 4, parts + c);
            for (int i = c * 4; i < NR && i < c * 4 + 4; i++)
                row(parts + c, i);
        }
        for (int c = 0; c < 3; c++)
            cp_tw_join(&w, parts + c);
        CHECK(w.rows == NR);
        CHECK_OK(cp_tw_end(&w));
        fclose(fp);
        CHECKF(!strcmp(one, two), "format %d", fmt);
        free(one);
        free(two);
    }
}

/* The column store writes through the same writer: nulls of every type. */
static void test_columnar(void)
{
    cp_stable t = {0};
    CHECK_OK(cp_stable_add_col(&t, "s", CP_SCOL_STR));
    CHECK_OK(cp_stable_add_col(&t, "i", CP_SCOL_I32));
    CHECK_OK(cp_stable_add_col(&t, "b", CP_SCOL_BOOL));
    CHECK_OK(cp_stable_add_col(&t, "f", CP_SCOL_F32));
    CHECK_OK(cp_stable_add_col(&t, "d", CP_SCOL_F64));
    CHECK_OK(cp_stable_reserve(&t, 2));
    t.nrows = 2;
    CHECK_OK(cp_scol_null_bitmap(&t.cols[1], t.cap));
    CHECK_OK(cp_scol_null_bitmap(&t.cols[2], t.cap));
    int32_t code;
    CHECK_OK(cp_sdict_intern(&t.cols[0].dict, "x,y", 3, &code));
    ((int32_t *)t.cols[0].v)[0] = code;
    ((int32_t *)t.cols[0].v)[1] = -1;
    ((int32_t *)t.cols[1].v)[0] = 7;
    cp_scol_set_null(&t.cols[1], 1);
    cp_scol_set_bool(&t.cols[2], 0, 1);
    cp_scol_set_null(&t.cols[2], 1);
    ((float *)t.cols[3].v)[0] = 0.1f;
    ((float *)t.cols[3].v)[1] = NAN;
    ((double *)t.cols[4].v)[0] = 1.0;
    ((double *)t.cols[4].v)[1] = INFINITY;
    char *s = NULL;
    size_t n = 0;
    FILE *fp = open_memstream(&s, &n);
    CHECK_OK(cp_stable_write(fp, &t, NULL, 0, NULL, 0, CP_FMT_CSV));
    CHECK_OK(cp_stable_write(fp, &t, NULL, 0, NULL, 0, CP_FMT_NDJSON));
    fclose(fp);
    CHECKF(!strcmp(s, "s,i,b,f,d\n\"x,y\",7,True,0.1,1\n,,,,inf\n"
                      "{\"s\": \"x,y\", \"i\": 7, \"b\": true, \"f\": 0.1, \"d\": 1}\n"
                      "{\"s\": null, \"i\": null, \"b\": null, \"f\": null, \"d\": null}\n"),
           "%s", s);
    free(s);
    cp_stable_free(&t);
}

static const char *tmp(const char *name)
{
    static char p[8][4096];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s", test_tmp_dir(), name);
    return p[k];
}

static char *write_table(const char *name, cp_table_format fmt, int from, int to)
{
    const char *path = tmp(name);
    FILE *fp = fopen(path, "wb");
    cp_table_writer w;
    cp_tw_begin(&w, fp, fmt, CP_FLOATS_PYTHON, COLS, NC);
    for (int i = from; i < to; i++)
        row(&w, i);
    CHECK_OK(cp_tw_end(&w));
    fclose(fp);
    return strdup(path);
}

static void test_merge(void)
{
    for (int fmt = CP_FMT_CSV; fmt <= CP_FMT_NDJSON; fmt++) {
        char *a = write_table("m_a", (cp_table_format)fmt, 0, 4), *b = write_table("m_b", (cp_table_format)fmt, 4, 4),
             *c = write_table("m_c", (cp_table_format)fmt, 4, NR);
        char *whole = table_text((cp_table_format)fmt, CP_FLOATS_PYTHON), *s = NULL;
        size_t n = 0;
        FILE *fp = open_memstream(&s, &n);
        cp_table_merge m;
        cp_table_merge_begin(&m, fp, (cp_table_format)fmt);
        CHECK_OK(cp_table_merge_add(&m, a));
        CHECK_OK(cp_table_merge_add(&m, b)); /* empty part */
        CHECK(cp_table_merge_add(&m, tmp("m_none")) == CP_EIO);
        CHECK_OK(cp_table_merge_add(&m, c));
        CHECK_OK(cp_table_merge_end(&m));
        fclose(fp);
        CHECKF(!strcmp(s, whole), "merge format %d:\n%s", fmt, s);
        free(s);
        free(whole);
        free(a);
        free(b);
        free(c);
    }
    /* a CSV with another header is refused whole */
    FILE *fp = fopen(tmp("m_other"), "w");
    fputs("x,y\n1,2\n", fp);
    fclose(fp);
    char *a = write_table("m_a", CP_FMT_CSV, 0, 1), *s = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&s, &n);
    cp_table_merge m;
    cp_table_merge_begin(&m, out, CP_FMT_CSV);
    CHECK_OK(cp_table_merge_add(&m, a));
    CHECK(cp_table_merge_add(&m, tmp("m_other")) == CP_EFORMAT);
    CHECK(strstr(cp_errmsg(), "header differs") != NULL);
    cp_table_merge_end(&m);
    fclose(out);
    CHECK(!strcmp(s, "name,n,x,f,ok,na\nplain,-3,1.0,1,False,\n"));
    free(s);
    free(a);
}

static void test_manifest(void)
{
    const char *p = tmp("man.jsonl");
    remove(p);
    cp_manifest m;
    for (int run = 0; run < 2; run++) { /* append: a second run adds lines */
        CHECK_OK(cp_manifest_open(&m, p, 1));
        CHECK_OK(cp_manifest_write(&m, "{\"a\": 1}", 8));
        CHECK_OK(cp_manifest_close(&m));
    }
    char *t = test_slurp(p, NULL);
    CHECK(t && !strcmp(t, "{\"a\": 1}\n{\"a\": 1}\n"));
    free(t);
    /* replace: nothing there until closed, then only this run's lines */
    CHECK_OK(cp_manifest_open(&m, p, 0));
    CHECK_OK(cp_manifest_write(&m, "{\"b\": 2}xx", 8));
    t = test_slurp(p, NULL);
    CHECK(t && !strcmp(t, "{\"a\": 1}\n{\"a\": 1}\n"));
    free(t);
    CHECK_OK(cp_manifest_close(&m));
    t = test_slurp(p, NULL);
    CHECK(t && !strcmp(t, "{\"b\": 2}\n"));
    free(t);
    const char *q = tmp("man2.jsonl");
    remove(q);
    CHECK_OK(cp_manifest_open(&m, q, 0));
    cp_manifest_abort(&m);
    struct stat st;
    CHECK(stat(q, &st) != 0);
    CHECK(cp_manifest_open(&m, "/nonexistent/dir/m.jsonl", 1) == CP_EIO);
}

/* pandas and json read the values back. */
static void test_python_readers(void)
{
    char *csv = write_table("pd.csv", CP_FMT_CSV, 0, NR), *json = write_table("pd.json", CP_FMT_JSON, 0, NR),
         *nd = write_table("pd.ndjson", CP_FMT_NDJSON, 0, NR);
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"\n"
             "import json, math, sys, pandas as pd\n"
             "names = ['plain', 'a,b', 'say \\\"hi\\\"', 'two\\nlines', 'tab\\there', 'cr\\rx', 'back\\\\\\\\slash',\n"
             "         'bell\\x07', 'caf\\u00e9', '']\n"
             "xs = [1.0, 0.1, -2.5, 1e-5, 1e16, math.nan, math.inf, -math.inf, 0.30000000000000004, 0.0]\n"
             "d = pd.read_csv(sys.argv[1], keep_default_na=False, na_values={'x': ['nan'], 'f': ['nan']},\n"
             "                dtype={'name': str}, float_precision='round_trip')\n"
             "assert list(d.columns) == ['name', 'n', 'x', 'f', 'ok', 'na'], list(d.columns)\n"
             "assert list(d['name']) == names, list(d['name'])\n"
             "assert list(d['n']) == list(range(-3, 7))\n"
             "for a, b in zip(d['x'], xs): assert (math.isnan(a) and math.isnan(b)) or a == b, (a, b)\n"
             "assert list(d['ok']) == [bool(i & 1) for i in range(10)]\n"
             "assert (d['na'] == '').all()\n"
             "for path in sys.argv[2:]:\n"
             "    rows = json.load(open(path)) if path.endswith('.json') else [json.loads(l) for l in open(path)]\n"
             "    assert [r['name'] for r in rows] == names\n"
             "    for r, x in zip(rows, xs): assert r['x'] == (x if math.isfinite(x) else None)\n"
             "    assert all(r['na'] is None for r in rows) and rows[5]['f'] is None\n"
             "print('ok')\n"
             "\" '%s' '%s' '%s'",
             csv, json, nd);
    FILE *p = popen(cmd, "r");
    char out[256] = "";
    if (p) {
        if (!fgets(out, sizeof out, p))
            out[0] = 0;
        pclose(p);
    }
    CHECKF(!strcmp(out, "ok\n"), "python readers: '%s'", out);
    free(csv);
    free(json);
    free(nd);
}

int main(void)
{
    test_csv();
    test_json();
    test_nested_and_absent();
    test_errors();
    test_fork_join();
    test_columnar();
    test_merge();
    test_manifest();
    test_python_readers();
    return test_result();
}
