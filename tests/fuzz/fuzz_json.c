/* A SeeSpot dataset's JSON files: the processing manifest (channels, round,
 * gene names), the Neuroglancer state and the fused image's .zattrs (voxel
 * size), all given the input, read through spotquery's dataset and link code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cellpose/cellpose.h"
#include "fuzz.h"

static void put(const char *dir, const char *name, const void *data, size_t size)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (!fp || (size && fwrite(data, 1, size, fp) != size) || fclose(fp)) {
        perror(path);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char root[4200];
    static const char table[] = "spot_id,chan,chan_spot_id,z,y,x\n1,488,1,1.5,2,3\n2,561,1,4,5,6e3\n";
    const char *dir = fuzz_dir();
    if (!root[0]) {
        snprintf(root, sizeof root, "%s/ds", dir);
        mkdir(root, 0700);
        put(root, "mixed_spots_R1.csv", table, sizeof table - 1);
        const char *zarr[] = {"/image_tile_fusing", "/image_tile_fusing/fused",
                              "/image_tile_fusing/fused/channel_488.zarr"};
        char p[4400];
        for (int i = 0; i < 3; i++) {
            snprintf(p, sizeof p, "%s%s", root, zarr[i]);
            mkdir(p, 0700);
        }
    }
    put(root, "processing_manifest.json", data, size);
    put(root, "phase_correlation_stitching_neuroglancer.json", data, size);
    put(root, "image_tile_fusing/fused/channel_488.zarr/.zattrs", data, size);

    cp_spot_dataset d;
    cp_stable t = {0};
    if (cp_spot_dataset_open(root, &d) == CP_OK) {
        cp_spot_load_opts lo = {0};
        lo.threads = 1;
        if (cp_spot_load(&d, &lo, &t) == CP_OK) {
            uint32_t rows[2] = {0, 1};
            cp_ng_opts no = {0};
            char *json = NULL;
            if (cp_spot_ng_state(&d, &t, rows, t.nrows < 2 ? t.nrows : 2, &no, &json) == CP_OK) {
                free(cp_spot_ng_url(json));
                free(json);
            }
        }
    }
    cp_stable_free(&t);
    cp_spot_dataset_free(&d);
    return 0;
}
