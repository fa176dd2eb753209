/* The restricted pickle VM shared by the torch, size-model and pandas
 * readers (lib/core/pickle.c): values and numpy arrays of protocols 2-5
 * (pickles written by Python's pickle module), one-line errors for damaged
 * and hostile input, and each reader's own list of globals refusing the
 * others'. */
#include "test.h"

#include "cellpose/models.h"
#include "cellpose/net.h"
#include "cellpose/spots.h"
#include "core/pickle.h"
#include "io/io_internal.h"

/* pickle.dumps of {'a': [1, -2, 3.5, True, None, 'x', b'yz', (1, 2), 2**70,
 * -300, 70000, 2**40], 'b': {'k': 'v'}} (protocols 2 and 5) and of
 * [np.array([[1, 2, 3], [4, 5, -6]], '>i4'), np.float32(2.5),
 * np.array(['s', 7], object), np.uint8(200)] (protocols 2 and 4). */
static const char BASIC2[] =
    "\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x61\x71\x01\x5d\x71\x02\x28\x4b\x01\x4a\xfe\xff\xff"
    "\xff\x47\x40\x0c\x00\x00\x00\x00\x00\x00\x88\x4e\x58\x01\x00\x00\x00\x78\x71\x03\x63\x5f\x63\x6f"
    "\x64\x65\x63\x73\x0a\x65\x6e\x63\x6f\x64\x65\x0a\x71\x04\x58\x02\x00\x00\x00\x79\x7a\x71\x05\x58"
    "\x06\x00\x00\x00\x6c\x61\x74\x69\x6e\x31\x71\x06\x86\x71\x07\x52\x71\x08\x4b\x01\x4b\x02\x86\x71"
    "\x09\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40\x4a\xd4\xfe\xff\xff\x4a\x70\x11\x01\x00\x8a\x06"
    "\x00\x00\x00\x00\x00\x01\x65\x58\x01\x00\x00\x00\x62\x71\x0a\x7d\x71\x0b\x58\x01\x00\x00\x00\x6b"
    "\x71\x0c\x58\x01\x00\x00\x00\x76\x71\x0d\x73\x75\x2e";
static const char BASIC5[] =
    "\x80\x05\x95\x5a\x00\x00\x00\x00\x00\x00\x00\x7d\x94\x28\x8c\x01\x61\x94\x5d\x94\x28\x4b\x01\x4a"
    "\xfe\xff\xff\xff\x47\x40\x0c\x00\x00\x00\x00\x00\x00\x88\x4e\x8c\x01\x78\x94\x43\x02\x79\x7a\x94"
    "\x4b\x01\x4b\x02\x86\x94\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40\x4a\xd4\xfe\xff\xff\x4a\x70"
    "\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\x01\x65\x8c\x01\x62\x94\x7d\x94\x8c\x01\x6b\x94\x8c\x01"
    "\x76\x94\x73\x75\x2e";
static const char NP2[] =
    "\x80\x02\x5d\x71\x00\x28\x63\x6e\x75\x6d\x70\x79\x2e\x63\x6f\x72\x65\x2e\x6d\x75\x6c\x74\x69\x61"
    "\x72\x72\x61\x79\x0a\x5f\x72\x65\x63\x6f\x6e\x73\x74\x72\x75\x63\x74\x0a\x71\x01\x63\x6e\x75\x6d"
    "\x70\x79\x0a\x6e\x64\x61\x72\x72\x61\x79\x0a\x71\x02\x4b\x00\x85\x71\x03\x63\x5f\x63\x6f\x64\x65"
    "\x63\x73\x0a\x65\x6e\x63\x6f\x64\x65\x0a\x71\x04\x58\x01\x00\x00\x00\x62\x71\x05\x58\x06\x00\x00"
    "\x00\x6c\x61\x74\x69\x6e\x31\x71\x06\x86\x71\x07\x52\x71\x08\x87\x71\x09\x52\x71\x0a\x28\x4b\x01"
    "\x4b\x02\x4b\x03\x86\x71\x0b\x63\x6e\x75\x6d\x70\x79\x0a\x64\x74\x79\x70\x65\x0a\x71\x0c\x58\x02"
    "\x00\x00\x00\x69\x34\x71\x0d\x89\x88\x87\x71\x0e\x52\x71\x0f\x28\x4b\x03\x58\x01\x00\x00\x00\x3e"
    "\x71\x10\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\x4b\x00\x74\x71\x11\x62\x89\x68\x04"
    "\x58\x1c\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00"
    "\x05\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xba\x71\x12\x68\x06\x86\x71\x13\x52\x71\x14\x74\x71\x15\x62\x63"
    "\x6e\x75\x6d\x70\x79\x2e\x63\x6f\x72\x65\x2e\x6d\x75\x6c\x74\x69\x61\x72\x72\x61\x79\x0a\x73\x63"
    "\x61\x6c\x61\x72\x0a\x71\x16\x68\x0c\x58\x02\x00\x00\x00\x66\x34\x71\x17\x89\x88\x87\x71\x18\x52"
    "\x71\x19\x28\x4b\x03\x58\x01\x00\x00\x00\x3c\x71\x1a\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff"
    "\xff\xff\x4b\x00\x74\x71\x1b\x62\x68\x04\x58\x04\x00\x00\x00\x00\x00\x20\x40\x71\x1c\x68\x06\x86"
    "\x71\x1d\x52\x71\x1e\x86\x71\x1f\x52\x71\x20\x68\x01\x68\x02\x4b\x00\x85\x71\x21\x68\x08\x87\x71"
    "\x22\x52\x71\x23\x28\x4b\x01\x4b\x02\x85\x71\x24\x68\x0c\x58\x02\x00\x00\x00\x4f\x38\x71\x25\x89"
    "\x88\x87\x71\x26\x52\x71\x27\x28\x4b\x03\x58\x01\x00\x00\x00\x7c\x71\x28\x4e\x4e\x4e\x4a\xff\xff"
    "\xff\xff\x4a\xff\xff\xff\xff\x4b\x3f\x74\x71\x29\x62\x89\x5d\x71\x2a\x28\x58\x01\x00\x00\x00\x73"
    "\x71\x2b\x4b\x07\x65\x74\x71\x2c\x62\x68\x16\x68\x0c\x58\x02\x00\x00\x00\x75\x31\x71\x2d\x89\x88"
    "\x87\x71\x2e\x52\x71\x2f\x28\x4b\x03\x68\x28\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff"
    "\x4b\x00\x74\x71\x30\x62\x68\x04\x58\x02\x00\x00\x00\xc3\x88\x71\x31\x68\x06\x86\x71\x32\x52\x71"
    "\x33\x86\x71\x34\x52\x71\x35\x65\x2e";
static const char NP4[] =
    "\x80\x04\x95\x5b\x01\x00\x00\x00\x00\x00\x00\x5d\x94\x28\x8c\x15\x6e\x75\x6d\x70\x79\x2e\x63\x6f"
    "\x72\x65\x2e\x6d\x75\x6c\x74\x69\x61\x72\x72\x61\x79\x94\x8c\x0c\x5f\x72\x65\x63\x6f\x6e\x73\x74"
    "\x72\x75\x63\x74\x94\x93\x94\x8c\x05\x6e\x75\x6d\x70\x79\x94\x8c\x07\x6e\x64\x61\x72\x72\x61\x79"
    "\x94\x93\x94\x4b\x00\x85\x94\x43\x01\x62\x94\x87\x94\x52\x94\x28\x4b\x01\x4b\x02\x4b\x03\x86\x94"
    "\x68\x04\x8c\x05\x64\x74\x79\x70\x65\x94\x93\x94\x8c\x02\x69\x34\x94\x89\x88\x87\x94\x52\x94\x28"
    "\x4b\x03\x8c\x01\x3e\x94\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff\xff\xff\xff\x4b\x00\x74\x94\x62"
    "\x89\x43\x18\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00\x05\xff"
    "\xff\xff\xfa\x94\x74\x94\x62\x68\x01\x8c\x06\x73\x63\x61\x6c\x61\x72\x94\x93\x94\x68\x0d\x8c\x02"
    "\x66\x34\x94\x89\x88\x87\x94\x52\x94\x28\x4b\x03\x8c\x01\x3c\x94\x4e\x4e\x4e\x4a\xff\xff\xff\xff"
    "\x4a\xff\xff\xff\xff\x4b\x00\x74\x94\x62\x43\x04\x00\x00\x20\x40\x94\x86\x94\x52\x94\x68\x03\x68"
    "\x06\x4b\x00\x85\x94\x68\x08\x87\x94\x52\x94\x28\x4b\x01\x4b\x02\x85\x94\x68\x0d\x8c\x02\x4f\x38"
    "\x94\x89\x88\x87\x94\x52\x94\x28\x4b\x03\x8c\x01\x7c\x94\x4e\x4e\x4e\x4a\xff\xff\xff\xff\x4a\xff"
    "\xff\xff\xff\x4b\x3f\x74\x94\x62\x89\x5d\x94\x28\x8c\x01\x73\x94\x4b\x07\x65\x74\x94\x62\x68\x16"
    "\x68\x0d\x8c\x02\x75\x31\x94\x89\x88\x87\x94\x52\x94\x28\x4b\x03\x68\x26\x4e\x4e\x4e\x4a\xff\xff"
    "\xff\xff\x4a\xff\xff\xff\xff\x4b\x00\x74\x94\x62\x43\x01\xc8\x94\x86\x94\x52\x94\x65\x2e";

#define N(b) (sizeof(b) - 1)

static const pk_global GLOBALS[] = {PK_NUMPY_GLOBALS, {"_codecs", "encode", PK_G_ENCODE}};
static const pk_caller CALLER = {GLOBALS, sizeof GLOBALS / sizeof *GLOBALS, "numpy only", "a test pickle",
                                 0, NULL, NULL, NULL};

static int run(const pk_caller *c, const char *b, size_t n, size_t budget, pk_vm *m, pk_val **top)
{
    pk_init(m, "t.pkl", c, (const uint8_t *)b, n, budget);
    return pk_run(m, top);
}

static int one_line(const char *name)
{
    const char *e = cp_errmsg();
    return strstr(e, name) && !strchr(e, '\n');
}

static void basic(const char *b, size_t n)
{
    pk_vm m;
    pk_val *top = NULL;
    CHECK_OK(run(&CALLER, b, n, 1 << 20, &m, &top));
    const pk_val *a = top ? pk_get(top, "a") : NULL, *d = top ? pk_get(top, "b") : NULL;
    CHECK(m.p == m.end && a && a->kind == PK_LIST && a->ni == 12 && d && pk_str_is(pk_get(d, "k"), "v"));
    if (a && a->ni == 12) {
        pk_val **it = a->items;
        int64_t i[6];
        CHECK(pk_int(it[0], &i[0]) && i[0] == 1 && pk_int(it[1], &i[1]) && i[1] == -2);
        CHECK(it[2]->kind == PK_FLOAT && it[2]->f == 3.5 && it[3]->kind == PK_BOOL && it[3]->i == 1);
        CHECK(it[4]->kind == PK_NONE && pk_str_is(it[5], "x"));
        CHECK(it[6]->kind == PK_BYTES && it[6]->n == 2 && !memcmp(it[6]->s, "yz", 2));
        CHECK(it[7]->kind == PK_TUPLE && it[7]->ni == 2 && it[7]->items[1]->i == 2);
        CHECK(it[8]->kind == PK_BIGINT && it[8]->n == 9 && it[8]->s[8] == 0x40);
        CHECK(it[9]->i == -300 && it[10]->i == 70000 && it[11]->kind == PK_INT && it[11]->i == 1ll << 40);
    }
    pk_free(&m);
}

static void arrays(const char *b, size_t n)
{
    pk_vm m;
    pk_val *top = NULL;
    CHECK_OK(run(&CALLER, b, n, 1 << 20, &m, &top));
    CHECK(top && top->kind == PK_LIST && top->ni == 4);
    if (top && top->ni == 4) {
        const pk_val *a = top->items[0], *o = top->items[2];
        pk_val e0, e5;
        CHECK(a->kind == PK_ARRAY && a->dkind == 'i' && a->dsize == 4 && a->swap && a->ndim == 2 &&
              a->shape[0] == 2 && a->shape[1] == 3 && pk_numel(a) == 6);
        CHECK(pk_elem(a, 0, &e0) && e0.kind == PK_INT && e0.i == 1 && pk_elem(a, 5, &e5) && e5.i == -6);
        CHECK(top->items[1]->kind == PK_FLOAT && top->items[1]->f == 2.5);
        CHECK(o->kind == PK_ARRAY && o->dkind == 'O' && o->ndim == 1 && ((const pk_val *)o->x)->ni == 2 &&
              pk_str_is(((const pk_val *)o->x)->items[0], "s") && ((const pk_val *)o->x)->items[1]->i == 7);
        CHECK(top->items[3]->kind == PK_INT && top->items[3]->i == 200);
    }
    pk_free(&m);
    /* a reader of native arrays only refuses the big-endian one */
    pk_caller native = CALLER;
    native.native_only = 1;
    CHECK(run(&native, b, n, 1 << 20, &m, &top) == CP_EUNSUPPORTED && strstr(cp_errmsg(), "big-endian"));
    pk_free(&m);
}

static void expect(const char *b, size_t n, size_t budget, int code, const char *needle)
{
    pk_vm m;
    pk_val *top;
    int rc = run(&CALLER, b, n, budget, &m, &top);
    CHECKF(rc == code && one_line("t.pkl") && (!needle || strstr(cp_errmsg(), needle)), "rc %d: %s (want %s)", rc,
           cp_errmsg(), needle ? needle : "");
    pk_free(&m);
}

static void errors(void)
{
    /* every truncation: a one-line error naming the file */
    const char *all[] = {BASIC2, BASIC5, NP2, NP4};
    size_t ns[] = {N(BASIC2), N(BASIC5), N(NP2), N(NP4)};
    int bad = 0;
    for (int k = 0; k < 4; k++)
        for (size_t n = 0; n < ns[k]; n++) {
            pk_vm m;
            pk_val *top;
            bad += !(run(&CALLER, all[k], n, 1 << 20, &m, &top) == CP_EFORMAT && one_line("t.pkl"));
            pk_free(&m);
        }
    CHECKF(bad == 0, "%d truncations without a one-line format error", bad);
    expect(NP4, N(NP4), 600, CP_ELIMIT, "memory");
    expect("\x80\x02" "cos\nsystem\n" "X\x02\0\0\0ls" "\x85R.", 22, 1 << 20, CP_EFORMAT, "os.system");
    expect("\x80\x02NQ.", 5, 1 << 20, CP_EFORMAT, "opcode 0x51"); /* BINPERSID without a hook */
    expect("\x80\x02N\x81.", 5, 1 << 20, CP_EFORMAT, "underflow");
    expect("\x80\x02N(0.", 6, 1 << 20, CP_EFORMAT, "underflow");
    expect("\x80\x02(u.", 5, 1 << 20, CP_EFORMAT, "underflow");
    expect("\x80\x02NNa.", 6, 1 << 20, CP_EFORMAT, "non-list");
    expect("\x80\x02Nr\xff\xff\xff\x7f.", 9, 1 << 20, CP_EFORMAT, "memo");
    expect("\x80\x02h\x00.", 5, 1 << 20, CP_EFORMAT, "memo");
    expect("\x80\x01N.", 4, 1 << 20, CP_EFORMAT, "protocol");
    expect("\x80\x06N.", 4, 1 << 20, CP_EFORMAT, "protocol");
    expect("\x80\x04\x8c\x05numpy\x8c\x05" "dtype\x93\x8c\x02" "c8\x85R.", 25, 1 << 20, CP_EUNSUPPORTED, "'c8'");
    expect("\x80\x04\x8c\x05numpy\x8c\x07ndarray\x93)R.", 21, 1 << 20, CP_EFORMAT, "ndarray");
}

/* A pickle for each reader from a file: torch (legacy .pth), size (.npy), pandas (.pkl). */
static int load(int reader, const char *b, size_t n)
{
    static const char *names[] = {"w.pth", "s.npy", "t.pkl"};
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_tmp_dir(), names[reader]);
    int rc;
    if (reader == 0) {
        cp_weights *w = NULL;
        rc = cp_weights_load_mem(b, n, path, &w);
        cp_weights_free(w);
    } else if (reader == 1) {
        cp_size_model *sm = NULL;
        rc = cp_npy_write_pickle(path, b, n);
        if (!rc)
            rc = cp_size_model_load(path, &sm);
        cp_size_model_free(sm);
    } else {
        FILE *f = fopen(path, "wb");
        fwrite(b, 1, n, f);
        fclose(f);
        cp_stable t;
        if (!(rc = cp_spot_table_read(path, NULL, &t)))
            cp_stable_free(&t);
    }
    CHECKF(rc == 0 || one_line(names[reader]), "%s", cp_errmsg());
    return rc;
}

static void readers(void)
{
    static const char *glob[] = {
        "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n.", "\x80\x02" "ccollections\nOrderedDict\n.",
        "\x80\x02" "cnumpy\ndtype\n.", "\x80\x02" "cpandas.core.frame\nDataFrame\n.", "\x80\x02" "cbuiltins\nslice\n.",
    };
    static const char *shown[] = {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict", "numpy.dtype",
                                  "pandas.core.frame.DataFrame", "builtins.slice"};
    /* which reader lists which: torch, size, pandas */
    static const int allowed[5][3] = {{1, 0, 0}, {1, 0, 0}, {0, 1, 1}, {0, 0, 1}, {0, 0, 1}};
    for (int g = 0; g < 5; g++)
        for (int r = 0; r < 3; r++) {
            int rc = load(r, glob[g], strlen(glob[g]));
            int refused = rc == CP_EFORMAT && strstr(cp_errmsg(), shown[g]) && strstr(cp_errmsg(), "refuses");
            /* an allowed global alone is no model: an error, but not a refusal */
            CHECKF(rc != 0 && refused == !allowed[g][r], "reader %d, %s: %s", r, shown[g], cp_errmsg());
        }
    /* a truncated pickle: one line naming the file, for each reader */
    for (int r = 0; r < 3; r++)
        CHECK(load(r, BASIC5, N(BASIC5) / 2) == CP_EFORMAT && strstr(cp_errmsg(), "truncated"));
}

int main(void)
{
    basic(BASIC2, N(BASIC2));
    basic(BASIC5, N(BASIC5));
    arrays(NP2, N(NP2));
    arrays(NP4, N(NP4));
    errors();
    readers();
    return test_result();
}
