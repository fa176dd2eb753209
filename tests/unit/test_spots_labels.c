/* Spots to the cells of a label volume: on random volumes (TIFF and Zarr,
 * random chunks, axes of size 1) and random spots (edges, .5 ties, outside,
 * NaN), every region size gives the label a direct lookup gives; the label
 * list and the count matrix with given cells. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "cellpose/zarr.h"
#include "spots/spots_internal.h"
#include "test.h"

static uint64_t rng = 12345;

static int64_t below(int64_t n) { return (int64_t)cp_rng_below(&rng, (uint64_t)n); }

/* A table of n spots with float32 z, y, x and a chan column. */
static void spot_table(cp_stable *t, size_t n)
{
    memset(t, 0, sizeof *t);
    static const char *ax[3] = {"z", "y", "x"};
    for (int a = 0; a < 3; a++)
        cp_stable_add_col(t, ax[a], CP_SCOL_F32);
    cp_stable_add_col(t, "chan", CP_SCOL_STR);
    cp_stable_reserve(t, n);
    t->nrows = n;
}

/* A coordinate near the volume on one axis: voxel centres, .5 ties, edges,
 * outside, NaN now and then. */
static float coord(int64_t ext, double scale)
{
    switch (below(6)) {
    case 0: return (float)((double)below(ext) / scale);                  /* a centre */
    case 1: return (float)(((double)below(ext + 1) - 0.5) / scale);      /* a tie */
    case 2: return below(20) ? (float)(-0.5 / scale) : NAN;              /* the low edge */
    case 3: return (float)(((double)ext - 0.5) / scale);                 /* just outside */
    default: return (float)(((double)below(1000) / 1000.0 * (double)(ext + 2) - 1.0) / scale);
    }
}

/* The direct lookup: floor(c * s + 0.5) per axis, 0 outside. */
static int64_t want_label(const uint16_t *lab, const int64_t ext[3], const float c[3], const double s[3])
{
    int64_t v[3];
    for (int a = 0; a < 3; a++) {
        double p = floor((double)c[a] * s[a] + 0.5);
        if (!(p >= 0 && p < (double)ext[a]))
            return 0;
        v[a] = (int64_t)p;
    }
    return lab[(v[0] * ext[1] + v[1]) * ext[2] + v[2]];
}

static void one_volume(int trial)
{
    int64_t ext[3] = {1 + below(9), 1 + below(13), 1 + below(17)};
    int tiff = trial % 2 == 0;
    if (tiff && ext[0] < 2)
        ext[0] = 2; /* one page is a 2-D image, not a volume */
    size_t nv = (size_t)(ext[0] * ext[1] * ext[2]);
    cp_image *im;
    CHECK_OK(cp_image_create(&im, (int)ext[2], (int)ext[1], 1, (int)ext[0], CP_U16));
    uint16_t *lab = im->data;
    for (size_t i = 0; i < nv; i++) /* runs of labels with gaps, a few large */
        lab[i] = (uint16_t)(i && below(3) ? lab[i - 1] : below(4) ? 0 : below(2) ? 1 + below(30) : 60000 + below(9));
    char path[4096];
    snprintf(path, sizeof path, "%s/lab%d.%s", test_tmp_dir(), trial, tiff ? "tif" : "zarr");
    if (tiff) {
        CHECK_OK(cp_image_write(path, im, NULL));
    } else {
        int64_t ch[3] = {1 + below(ext[0]), 1 + below(ext[1]), 1 + below(ext[2])}, o[3] = {0, 0, 0};
        cp_zarr *z;
        CHECK_OK(cp_ome_create(path, 3, ext, ch, CP_U16, NULL, NULL, 1, &z));
        CHECK_OK(cp_zarr_write(z, o, ext, lab));
        cp_zarr_close(z);
    }
    static const double scales[] = {1, 0.5, 2, 0.3, 1.7};
    cp_spot_label_opts o = {0};
    for (int a = 0; a < 3; a++)
        o.scale[a] = scales[below(5)];
    size_t n = 200;
    cp_stable t;
    spot_table(&t, n);
    for (size_t r = 0; r < n; r++)
        for (int a = 0; a < 3; a++)
            ((float *)t.cols[a].v)[r] = coord(ext[a], o.scale[a]);
    int64_t *want = malloc(n * sizeof *want);
    for (size_t r = 0; r < n; r++) {
        float c[3] = {((float *)t.cols[0].v)[r], ((float *)t.cols[1].v)[r], ((float *)t.cols[2].v)[r]};
        want[r] = want_label(lab, ext, c, o.scale);
    }
    static const int64_t regions[] = {0, 1, 7, 64, 1000};
    for (int k = 0; k < 5; k++) {
        o.max_voxels = regions[k];
        cp_stable u;
        spot_table(&u, n);
        for (int a = 0; a < 3; a++)
            memcpy(u.cols[a].v, t.cols[a].v, n * sizeof(float));
        CHECK_OK(cp_spot_assign_labels(&u, path, &o, "cell"));
        int ci = cp_stable_find(&u, "cell");
        size_t bad = 0;
        for (size_t r = 0; r < n; r++)
            bad += ci < 0 || cp_scol_is_null(&u.cols[ci], r) || ((int64_t *)u.cols[ci].v)[r] != want[r];
        CHECKF(bad == 0, "%s %lldx%lldx%lld scale %g,%g,%g region %lld: %zu spots differ", path, (long long)ext[0],
               (long long)ext[1], (long long)ext[2], o.scale[0], o.scale[1], o.scale[2], (long long)regions[k], bad);
        CHECK(cp_spot_assign_labels(&u, path, &o, "cell") == CP_EINVAL); /* the column exists */
        cp_stable_free(&u);
    }
    /* every label of the volume, whatever the regions */
    int64_t *ids;
    size_t nids;
    o.max_voxels = 1 + below(50);
    CHECK_OK(cp_label_volume_ids(path, &o, &ids, &nids));
    uint8_t seen[60010] = {0};
    size_t nwant = 0;
    for (size_t i = 0; i < nv; i++)
        if (lab[i] && !seen[lab[i]]++)
            nwant++;
    int ok = nids == nwant;
    for (size_t i = 0; ok && i < nids; i++)
        ok = ids[i] > 0 && ids[i] < 60010 && seen[ids[i]] && (i == 0 || ids[i] > ids[i - 1]);
    CHECKF(ok, "%s: %zu labels, want %zu", path, nids, nwant);
    free(ids);
    free(want);
    cp_stable_free(&t);
    cp_image_free(im);
}

/* counts per I64 cell with rows for cells that have no spot */
static void counts_with_cells(void)
{
    cp_spot_dataset d = {0};
    cp_strlist_push(&d.channels, "488");
    cp_strlist_push(&d.channels, "561");
    cp_stable t = {0};
    cp_stable_add_col(&t, "chan", CP_SCOL_STR);
    cp_stable_add_col(&t, "cell", CP_SCOL_I64);
    cp_stable_reserve(&t, 4);
    int32_t c488, c561;
    CHECK_OK(cp_sdict_intern(&t.cols[0].dict, "488", 3, &c488));
    CHECK_OK(cp_sdict_intern(&t.cols[0].dict, "561", 3, &c561));
    int32_t chan[4] = {c488, c561, c561, c488};
    int64_t cell[4] = {5000000000, 0, 5000000000, 7};
    memcpy(t.cols[0].v, chan, sizeof chan);
    memcpy(t.cols[1].v, cell, sizeof cell);
    t.nrows = 4;
    int64_t extra[3] = {9, 0, 7};
    cp_count_opts o = {CP_COUNT_MIXED, 0, 1, "cell", extra, 3};
    cp_stable out;
    CHECK_OK(cp_spot_counts_ex(&d, &t, NULL, 4, &o, &out));
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    CHECK_OK(cp_stable_write(fp, &out, NULL, 0, NULL, 0, CP_FMT_CSV));
    fclose(fp);
    CHECKF(buf && !strcmp(buf, "cell,488,561\n0,0,1\n7,1,0\n9,0,0\n5000000000,1,1\n"), "got [%s]", buf);
    free(buf);
    cp_stable_free(&out);
    cp_stable_free(&t);
    cp_strlist_free(&d.channels);
}

int main(void)
{
    for (int trial = 0; trial < 16; trial++)
        one_volume(trial);
    counts_with_cells();
    return test_result();
}
