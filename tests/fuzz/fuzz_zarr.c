/* A Zarr array from one input: a 2-byte little-endian length, that many
 * bytes of JSON written as both .zarray and .zattrs, and the rest as the
 * array's first chunk; opened, read, rewritten and read as a volume. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/cellpose.h"
#include "fuzz.h"

static void put(const char *path, const void *data, size_t size)
{
    FILE *fp = fopen(path, "wb");
    if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp)) {
        perror(path);
        abort();
    }
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    if (flag == FTW_DP)
        rmdir(p);
    else
        unlink(p);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t jn = data[0] | (size_t)data[1] << 8;
    if (jn > size - 2)
        jn = size - 2;
    static char dir[4200];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/a.zarr", fuzz_dir());
        cp_set_max_pixels(1u << 20); /* keep every chunk small */
    }
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); /* nothing left from the last input */
    mkdir(dir, 0700);
    char path[4400];
    snprintf(path, sizeof path, "%s/.zarray", dir);
    put(path, data + 2, jn);
    snprintf(path, sizeof path, "%s/.zattrs", dir);
    put(path, data + 2, jn);
    cp_zarr *z = NULL;
    if (cp_zarr_open(dir, &z) != CP_OK)
        return 0;
    /* chunk 0 under both separators' names */
    int nd = cp_zarr_ndim(z);
    char dot[4400], slash[4400];
    size_t a = (size_t)snprintf(dot, sizeof dot, "%s/0", dir), b = (size_t)snprintf(slash, sizeof slash, "%s/0", dir);
    for (int i = 1; i < nd; i++) {
        mkdir(slash, 0700);
        a += (size_t)snprintf(dot + a, sizeof dot - a, ".0");
        b += (size_t)snprintf(slash + b, sizeof slash - b, "/0");
    }
    put(dot, data + 2 + jn, size - 2 - jn);
    if (nd > 1)
        put(slash, data + 2 + jn, size - 2 - jn);
    int64_t start[CP_ZARR_MAX_DIM] = {0}, count[CP_ZARR_MAX_DIM];
    size_t n = 1;
    for (int i = 0; i < nd; i++) {
        count[i] = cp_zarr_shape(z)[i] < cp_zarr_chunks(z)[i] ? cp_zarr_shape(z)[i] : cp_zarr_chunks(z)[i];
        n *= (size_t)count[i];
    }
    void *buf = malloc(n * cp_dtype_size(cp_zarr_dtype(z)) + 1);
    if (buf && cp_zarr_read(z, start, count, buf) == CP_OK)
        cp_zarr_write(z, start, count, buf);
    free(buf);
    cp_zarr_close(z);
    cp_ome_info info;
    if (cp_ome_open(dir, 0, &info, &z) == CP_OK)
        cp_zarr_close(z);
    cp_vol_reader *r = NULL;
    if (cp_vol_open(dir, CP_AXIS_AUTO, CP_AXIS_AUTO, &r) == CP_OK) {
        int64_t D, H, W;
        int C;
        cp_vol_shape(r, &D, &H, &W, &C);
        cp_image *img = NULL;
        if (cp_vol_read(r, 0, 0, 0, D < 2 ? D : 2, H < 16 ? H : 16, W < 16 ? W : 16, &img) == CP_OK)
            cp_image_free(img);
        cp_voxel_size vs;
        int found;
        cp_vol_voxel_size(r, &vs, &found);
        cp_vol_close(r);
    }
    return 0;
}
