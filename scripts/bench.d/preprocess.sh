#!/usr/bin/env bash
# Preprocessing + tiling + blending overhead (everything in cp_eval_flows but
# the network), measured with a do-nothing network, against the real
# cyto3-shaped network on the same image. Goal: overhead < 5% of the network.
set -u
BUILD=${1:-build}
CP_SHARED=${CP_SHARED:-../shared}
W=$CP_SHARED/golden/weights/cpnet_cyto3like_s1.pth
IMG=$CP_SHARED/golden/inputs/stardist_img2d.tif
BIN=$BUILD/bench/preprocess
mkdir -p "$BUILD/bench"
cat > "$BUILD/bench/preprocess.c" <<'CEOF'
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "cellpose/cellpose.h"
static int zero_net(void *ctx, const float *in, int n, int ty, int tx, float *out)
{
    (void)ctx; (void)in;
    for (size_t i = 0; i < (size_t)n * 3 * ty * tx; i++) out[i] = 0.5f;
    return 0;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double run_fake(const cp_image *img, double diameter)
{
    cp_net_desc net = {CP_ARCH_CPNET, 2, 3, 224, 30, 30, zero_net, NULL};
    cp_eval_params p; cp_eval_params_init(&p); p.diameter = diameter;
    cp_flows *f; double t = now();
    if (cp_eval_flows_net(&net, img, 0, &p, &f, NULL)) { fprintf(stderr, "%s\n", cp_errmsg()); exit(1); }
    t = now() - t; cp_flows_free(f); return t;
}
int main(int argc, char **argv)
{
    cp_image *img;
    if (cp_image_read(argv[2], NULL, &img)) { fprintf(stderr, "%s\n", cp_errmsg()); return 1; }
    double mp = img->width * (double)img->height / 1e6;
    double tf = run_fake(img, 30);
    cp_model *m;
    if (cp_model_load(argv[1], NULL, &m)) { fprintf(stderr, "%s\n", cp_errmsg()); return 1; }
    cp_eval_params p; cp_eval_params_init(&p); p.diameter = 30;
    cp_flows *f; double t = now();
    if (cp_eval_flows(m, img, 0, &p, &f, NULL)) { fprintf(stderr, "%s\n", cp_errmsg()); return 1; }
    double tn = now() - t;
    cp_flows_free(f);
    printf("preprocess overhead, %dx%d uint16, scale 1, 9 tiles: %.3f s/MP without network vs %.3f s/MP with cyto3-shaped network: %.1f%% of total (goal < 5%%, ratio %.2f)\n",
           img->width, img->height, tf / mp, tn / mp, 100 * tf / tn, (tf / tn) / 0.05);
    /* large synthetic image, upscaled 1.5x: the resizes and blending dominate */
    cp_image *big; cp_image_create(&big, 4096, 4096, 1, 1, CP_U16);
    unsigned short *d = big->data;
    for (size_t i = 0; i < (size_t)4096 * 4096; i++) d[i] = (unsigned short)((i * 2654435761u) >> 20);
    double tb = run_fake(big, 20);
    printf("preprocess overhead, 4096x4096 uint16, scale 1.5 (resize in and out, 33x33 tiles): %.3f s/MP without network (network alone would be ~%.0fx longer)\n",
           tb / 16.777216, (tn / mp) * 2.25 / (tb / 16.777216));
    cp_image_free(big); cp_model_free(m); cp_image_free(img);
    return 0;
}
CEOF
cc -std=c11 -O2 -fopenmp -Iinclude -o "$BIN" "$BUILD/bench/preprocess.c" "$BUILD/libcellpose.a" \
   -ltiff -lpng -lz -lcjson -lgomp -lm -lpthread -ldl || exit 1
"$BIN" "$W" "$IMG"
