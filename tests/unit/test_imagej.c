/* ImageJ outlines text and ROI records, decoded here field by field with the
 * layout ImageJ's RoiDecoder reads (big-endian). */
#include "cellpose/cellpose.h"
#include "test.h"

static int get16(const uint8_t *p) { return (int16_t)((p[0] << 8) | p[1]); }
static uint32_t get32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }

int main(void)
{
    int32_t sq[] = {12, 10, 12, 11, 13, 12, 14, 11, 14, 10, 13, 10};
    int32_t tiny[] = {3, 4, 4, 4};
    cp_outline o[2] = {{5, 6, sq}, {9, 2, tiny}};

    char path[4096];
    snprintf(path, sizeof path, "%s/x_cp_outlines.txt", test_tmp_dir());
    CHECK_OK(cp_write_outlines_txt(path, o, 2));
    FILE *f = fopen(path, "r");
    char buf[256] = {0};
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    CHECKF(n && strcmp(buf, "12,10,12,11,13,12,14,11,14,10,13,10\n\n") == 0, "[%s]", buf);

    uint8_t *roi;
    size_t len;
    CHECK_OK(cp_roi_encode(&o[0], "5", &roi, &len));
    CHECK(len == 64 + 4 * 6 + 64 + 2);
    CHECK(memcmp(roi, "Iout", 4) == 0);
    CHECK(get16(roi + 4) == 226);
    CHECK(roi[6] == 7);                          /* freehand */
    CHECK(get16(roi + 8) == 10 && get16(roi + 10) == 12);   /* top, left */
    CHECK(get16(roi + 12) == 13 && get16(roi + 14) == 15);  /* bottom, right: max + 1 */
    CHECK(get16(roi + 16) == 6);
    CHECK(get16(roi + 50) == 40);                /* OVERLAY_BACKGROUNDS | OVERLAY_LABELS */
    uint32_t h2 = get32(roi + 60);
    CHECK(h2 == 64 + 24);
    int ok = 1;
    for (int i = 0; i < 6; i++)
        ok &= get16(roi + 64 + 2 * i) + 12 == sq[2 * i] && get16(roi + 64 + 12 + 2 * i) + 10 == sq[2 * i + 1];
    CHECK(ok);
    CHECK(get32(roi + h2 + 16) == h2 + 64 && get32(roi + h2 + 20) == 1);
    CHECK(get16(roi + h2 + 64) == '5');
    free(roi);

    int32_t far[] = {40000, 1};
    cp_outline big = {1, 1, far};
    CHECK(cp_roi_encode(&big, NULL, &roi, &len) == CP_EUNSUPPORTED);
    return test_result();
}
