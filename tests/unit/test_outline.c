/* Outlines traced like OpenCV findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE). */
#include "cellpose/cellpose.h"
#include "test.h"

#define H 8
#define W 8

static void test_spec_example(void)
{
    /* spec 7.3: the 4x4 square at rows 1-4, columns 2-5 plus pixel (5, 3) */
    uint32_t m[H * W] = {0};
    for (int y = 1; y <= 4; y++)
        for (int x = 2; x <= 5; x++)
            m[y * W + x] = 7;
    m[5 * W + 3] = 7;
    cp_outline *o;
    size_t n;
    CHECK_OK(cp_outlines_list(m, H, W, &o, &n));
    static const int32_t want[] = {2, 1, 2, 2, 2, 3, 2, 4, 3, 5, 4, 4, 5, 4, 5, 3, 5, 2, 5, 1, 4, 1, 3, 1};
    CHECK(n == 1 && o[0].label == 7);
    CHECKF(o[0].n == 12, "got %zu points", o[0].n);
    if (o[0].n == 12)
        CHECK(memcmp(o[0].xy, want, sizeof want) == 0);
    cp_outlines_free(o, n);
}

static void test_holes_and_pieces(void)
{
    /* a ring (hole borders are not outlines), a single pixel, and a piece of
     * label 2 inside label 1's hole... with label 1 also split in two */
    uint32_t m[H * W] = {0};
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 5; x++)
            m[y * W + x] = (y == 0 || y == 4 || x == 0 || x == 4) ? 1 : 0;
    m[2 * W + 2] = 2;      /* label 2 alone in the hole */
    m[7 * W + 7] = 1;      /* a second, one-pixel piece of label 1 */
    uint8_t out[H * W];
    CHECK_OK(cp_masks_to_outlines(m, H, W, out));
    int ring = 0, inner = 0;
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 5; x++)
            if (m[y * W + x] == 1)
                ring += out[y * W + x];
    inner = out[2 * W + 2];
    CHECK(ring == 16);     /* every ring pixel is on its outer border */
    CHECK(inner == 1);     /* label 2's own outline (it is external for label 2) */
    CHECK(out[7 * W + 7] == 1);
    CHECK(out[1 * W + 1] == 0);

    cp_outline *o;
    size_t n;
    CHECK_OK(cp_outlines_list(m, H, W, &o, &n));
    CHECK(n == 2 && o[0].label == 1 && o[1].label == 2);
    CHECKF(n == 2 && o[0].n == 16, "ring outline has %zu points", n ? o[0].n : 0);
    CHECK(n == 2 && o[1].n == 1 && o[1].xy[0] == 2 && o[1].xy[1] == 2);
    cp_outlines_free(o, n);
}

static void test_sparse_labels(void)
{
    uint32_t m[4] = {0, 4000000000u, 0, 17};
    cp_outline *o;
    size_t n;
    CHECK_OK(cp_outlines_list(m, 2, 2, &o, &n));
    CHECK(n == 2 && o[0].label == 17 && o[1].label == 4000000000u);
    cp_outlines_free(o, n);
}

int main(void)
{
    test_spec_example();
    test_holes_and_pieces();
    test_sparse_labels();
    return test_result();
}
