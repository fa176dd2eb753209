/* Bench input for cpmetrics: a 4096x4096 label image with ~20,000 elliptic
 * cells on a jittered grid (some touching), written as uint16 .npy or .tif.
 * Built and run by scripts/bench.d/cpmetrics.sh; not part of the library. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cellpose/cellpose.h"

static unsigned long long s = 12345;
static double rnd(void)
{
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(s >> 11) / 9007199254740992.0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cpmetrics_gen OUT.(npy|tif)\n");
        return 2;
    }
    const int N = 4096, step = 29;
    cp_image *img;
    if (cp_image_create(&img, N, N, 1, 1, CP_U16))
        return 1;
    uint16_t *p = img->data;
    int label = 0;
    for (int gy = step / 2; gy < N; gy += step)
        for (int gx = step / 2; gx < N; gx += step) {
            double cy = gy + (rnd() - 0.5) * 8, cx = gx + (rnd() - 0.5) * 8;
            double a = 8 + rnd() * 7, b = 6 + rnd() * 5, t = rnd() * M_PI;
            double ct = cos(t), st = sin(t);
            label++;
            int R = (int)ceil(a) + 1;
            for (int y = (int)cy - R; y <= (int)cy + R; y++)
                for (int x = (int)cx - R; x <= (int)cx + R; x++) {
                    if (y < 0 || x < 0 || y >= N || x >= N)
                        continue;
                    double dy = y - cy, dx = x - cx;
                    double u = (dx * ct + dy * st) / a, v = (-dx * st + dy * ct) / b;
                    if (u * u + v * v <= 1 && !p[(size_t)y * N + x])
                        p[(size_t)y * N + x] = (uint16_t)label;
                }
        }
    int rc = cp_image_write(argv[1], img, NULL);
    if (rc)
        fprintf(stderr, "%s\n", cp_errmsg());
    else
        printf("%d cells\n", label);
    cp_image_free(img);
    return rc ? 1 : 0;
}
