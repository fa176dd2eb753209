/* Core: error convention, image type, label validation, atomic files, paths. */
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "cellpose/cellpose.h"
#include "cellpose/zip.h"
#include "core/sha256.h"
#include "test.h"

static void test_image(void)
{
    cp_image *img;
    CHECK_OK(cp_image_create(&img, 3, 2, 1, 1, CP_I32));
    int32_t *p = img->data;
    for (int i = 0; i < 6; i++)
        p[i] = i;
    CHECK(cp_image_get(img, 0, 1, 2, 0) == 5);
    uint32_t *lab;
    CHECK_OK(cp_image_labels_u32(img, "x", &lab));
    CHECK(lab[5] == 5);
    free(lab);
    p[4] = -3;
    CHECK(cp_image_labels_u32(img, "neg.tif", &lab) == CP_EFORMAT);
    CHECKF(strstr(cp_errmsg(), "neg.tif") && strstr(cp_errmsg(), "negative"), "%s", cp_errmsg());
    cp_image_free(img);

    CHECK_OK(cp_image_create(&img, 2, 2, 1, 1, CP_F32));
    CHECK(cp_image_labels_u32(img, "f.tif", &lab) == CP_EFORMAT);
    cp_image_free(img);

    /* a header claiming a huge size must not allocate */
    cp_set_max_pixels(1000);
    CHECK(cp_image_create(&img, 100, 100, 1, 1, CP_U8) == CP_ELIMIT);
    CHECK(img == NULL);
    cp_set_max_pixels(0);
    CHECK(cp_image_create(&img, 0, 5, 1, 1, CP_U8) == CP_EINVAL);
}

static void test_atomic(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/out.txt", test_tmp_dir());
    unlink(path);
    cp_atomic a;
    CHECK_OK(cp_atomic_open(&a, path));
    fputs("hello", a.fp);
    CHECK(!cp_path_exists(path)); /* invisible until committed */
    CHECK_OK(cp_atomic_commit(&a));
    CHECK(cp_path_exists(path));
    CHECK_OK(cp_atomic_open(&a, path));
    fputs("other", a.fp);
    cp_atomic_abort(&a);
    FILE *f = fopen(path, "r");
    char buf[16] = {0};
    CHECK(f && fread(buf, 1, 15, f) == 5 && strcmp(buf, "hello") == 0);
    if (f)
        fclose(f);
    CHECK(cp_atomic_open(&a, "/nonexistent-dir/x.txt") == CP_EIO);
    CHECKF(strstr(cp_errmsg(), "/nonexistent-dir/x.txt") != NULL, "%s", cp_errmsg());
}

static void test_paths(void)
{
    char *s = cp_path_stem("a/b/img_1.ome.tif");
    CHECK(strcmp(s, "img_1.ome") == 0);
    free(s);
    s = cp_path_stem("x.npy.gz");
    CHECK(strcmp(s, "x") == 0);
    free(s);
    s = cp_path_pair_key("dir/cell_00849_cp_masks.tif");
    CHECK(strcmp(s, "cell_00849") == 0);
    free(s);
    s = cp_path_pair_key("abc_masks.tif");
    CHECK(strcmp(s, "abc") == 0);
    free(s);
    s = cp_path_dir("file");
    CHECK(strcmp(s, ".") == 0);
    free(s);
    CHECK(cp_is_image_name("A.TIFF") && cp_is_image_name("m.npy.gz") && !cp_is_image_name("x.csv"));

    char dir[4096];
    snprintf(dir, sizeof dir, "%s/list/sub", test_tmp_dir());
    CHECK_OK(cp_mkdirs(dir));
    const char *names[] = {"list/b.tif", "list/a.png", "list/sub/c.tif", "list/notes.txt", "list/.hidden.tif"};
    for (size_t i = 0; i < 5; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", test_tmp_dir(), names[i]);
        FILE *f = fopen(p, "w");
        if (f)
            fclose(f);
    }
    snprintf(dir, sizeof dir, "%s/list", test_tmp_dir());
    cp_strlist l = {0};
    CHECK_OK(cp_list_images(dir, 0, NULL, &l));
    CHECK(l.n == 2 && strstr(l.items[0], "/a.png") && strstr(l.items[1], "/b.tif"));
    cp_strlist_free(&l);
    CHECK_OK(cp_list_images(dir, 1, "*.tif", &l));
    CHECK(l.n == 2 && strstr(l.items[0], "/b.tif") && strstr(l.items[1], "/sub/c.tif"));
    cp_strlist_free(&l);
    const char *in[] = {"/no/such/path"};
    CHECK(cp_expand_inputs(in, 1, 0, NULL, &l) == CP_EIO);
    cp_strlist_free(&l);
}

/* A message may wrap the previous one (cp_error(..., cp_errmsg())). */
static void test_error_wrap(void)
{
    cp_error(CP_EIO, "plan.json: cannot open: No such file or directory");
    int rc = cp_error(CP_EIO, "work: no plan here (%s): run cpseg --plan first", cp_errmsg());
    CHECK(rc == CP_EIO);
    CHECKF(strcmp(cp_errmsg(), "work: no plan here (plan.json: cannot open: No such file or directory): "
                               "run cpseg --plan first") == 0,
           "%s", cp_errmsg());
}

/* FIPS 180-4 examples through both compressions (SHA extensions where the
 * CPU has them, the portable one forced by CP_SHA256_PORTABLE), the
 * million-'a' message in uneven pieces so that the buffered path joins both. */
static void test_sha256(void)
{
    static const char *want[] = {"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                                 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                                 "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"};
    char *a = malloc(1000000);
    CHECK(a != NULL);
    if (!a)
        return;
    memset(a, 'a', 1000000);
    for (int portable = 0; portable < 2; portable++) {
        if (portable)
            setenv("CP_SHA256_PORTABLE", "1", 1);
        char hex[65];
        cp_sha256_buf("abc", 3, hex);
        CHECKF(!strcmp(hex, want[0]), "abc (portable %d): %s", portable, hex);
        cp_sha256_buf("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
        CHECKF(!strcmp(hex, want[1]), "448 bits (portable %d): %s", portable, hex);
        cp_sha256 s;
        cp_sha256_init(&s);
        for (size_t k = 0, step = 1; k < 1000000; k += step, step = step * 7 % 1013 + 1)
            cp_sha256_update(&s, a + k, step < 1000000 - k ? step : 1000000 - k);
        cp_sha256_hex(&s, hex);
        CHECKF(!strcmp(hex, want[2]), "million a (portable %d): %s", portable, hex);
    }
    unsetenv("CP_SHA256_PORTABLE");
    free(a);
}

/* cp_crc32 (carry-less multiplication where the CPU has it) against zlib's
 * crc32: every length around the fold's block sizes, unaligned starts,
 * continued CRCs, and the check value of the standard. */
static void test_crc32(void)
{
    size_t n = (1 << 20) + 77;
    unsigned char *a = malloc(n);
    CHECK(a != NULL);
    if (!a)
        return;
    uint32_t r = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 17, r ^= r << 5;
        a[i] = (unsigned char)r;
    }
    CHECK(cp_crc32(0, "123456789", 9) == 0xCBF43926u);
    int bad = 0;
    for (size_t len = 0; len < 1200; len++)
        for (size_t off = 0; off < 3; off++)
            bad += cp_crc32(0, a + off, len) != (uint32_t)crc32(0, a + off, (uInt)len);
    CHECKF(bad == 0, "%d lengths differ from zlib", bad);
    CHECK(cp_crc32(0, a + 1, n - 1) == (uint32_t)crc32(0, a + 1, (uInt)(n - 1)));
    uint32_t c = 0;
    for (size_t k = 0, step = 1; k < n; k += step, step = step * 31 % 4099 + 1)
        c = cp_crc32(c, a + k, step < n - k ? step : n - k);
    CHECK(c == (uint32_t)crc32(0, a, (uInt)n));
    free(a);
}

int main(void)
{
    test_crc32();
    test_sha256();
    test_image();
    test_error_wrap();
    test_atomic();
    test_paths();
    return test_result();
}
