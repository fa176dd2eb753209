/* Random small label images (holes, several pieces, lines) against direct,
 * slow re-computations of the definitions: convex hull membership by
 * an exact separating-line test on the edge midpoints, Euler number by flood fills,
 * skimage's perimeter on the whole image. */
#include "cellpose/cellpose.h"
#include "test.h"

#define N 9

static uint64_t rs = 0x9E3779B97F4A7C15ULL;
static unsigned rnd(unsigned n)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (unsigned)(rs % n);
}

/* q is strictly outside conv(P) iff some ray q->p_i has every point strictly
 * on one side of its line or on the ray itself (rotate a separating line
 * until it touches a point). Exact in integers. */
static int in_hull(const long *px, const long *py, int n, long qx, long qy)
{
    for (int i = 0; i < n; i++)
        if (px[i] == qx && py[i] == qy)
            return 1;
    for (int i = 0; i < n; i++) {
        long ax = px[i] - qx, ay = py[i] - qy;
        for (int side = -1; side <= 1; side += 2) {
            int ok = 1;
            for (int j = 0; j < n && ok; j++) {
                long bx = px[j] - qx, by = py[j] - qy;
                long c = side * (ax * by - ay * bx);
                ok = c > 0 || (c == 0 && ax * bx + ay * by > 0);
            }
            if (ok)
                return 0;
        }
    }
    return 1;
}

static void flood(int *g, int h, int w, int y, int x, int from, int to, int conn8)
{
    if (y < 0 || x < 0 || y >= h || x >= w || g[y * w + x] != from)
        return;
    g[y * w + x] = to;
    for (int dy = -1; dy <= 1; dy++)
        for (int dx = -1; dx <= 1; dx++)
            if ((dy || dx) && (conn8 || !dy || !dx))
                flood(g, h, w, y + dy, x + dx, from, to, conn8);
}

static int euler(const uint32_t *lab, uint32_t L)
{
    int h = N + 2, w = N + 2, g[(N + 2) * (N + 2)];
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            g[y * w + x] = (y && x && y <= N && x <= N && lab[(y - 1) * N + x - 1] == L) ? 1 : 0;
    int obj = 0, holes = 0;
    flood(g, h, w, 0, 0, 0, 2, 0); /* outside background, 4-connected */
    for (int i = 0; i < h * w; i++) {
        if (g[i] == 1) {
            obj++;
            flood(g, h, w, i / w, i % w, 1, 3, 1);
        } else if (g[i] == 0) {
            holes++;
            flood(g, h, w, i / w, i % w, 0, 4, 0);
        }
    }
    return obj - holes;
}

static double perimeter(const uint32_t *lab, uint32_t L)
{
    int m[N + 2][N + 2] = {{0}}, b[N + 2][N + 2] = {{0}};
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++)
            m[y + 1][x + 1] = lab[y * N + x] == L;
    for (int y = 1; y <= N; y++)
        for (int x = 1; x <= N; x++)
            b[y][x] = m[y][x] && !(m[y - 1][x] && m[y + 1][x] && m[y][x - 1] && m[y][x + 1]);
    double p = 0;
    static const int k[3][3] = {{10, 2, 10}, {2, 1, 2}, {10, 2, 10}};
    for (int y = 1; y <= N; y++)
        for (int x = 1; x <= N; x++) {
            int c = 0;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++)
                    c += k[dy + 1][dx + 1] * b[y + dy][x + dx];
            if (c == 5 || c == 7 || c == 15 || c == 17 || c == 25 || c == 27)
                p += 1;
            else if (c == 21 || c == 33)
                p += sqrt(2.0);
            else if (c == 13 || c == 23)
                p += (1 + sqrt(2.0)) / 2;
        }
    return p;
}

/* cp_match (sparse overlaps, zero-cost private columns) against Cellpose's
 * dense formulation solved on the full IoU matrix, gaps in labels included. */
static void random_matching(void)
{
    int bad = 0, runs = 0;
    double th[3] = {0.1, 0.3, 0.5};
    for (int trial = 0; trial < 300; trial++) {
        uint32_t t[N * N], p[N * N];
        for (int i = 0; i < N * N; i++) {
            t[i] = rnd(3) ? 1 + rnd(5) * 2 : 0;
            p[i] = rnd(3) ? 1 + rnd(6) : 0;
        }
        /* smooth a little so masks overlap in blocks */
        for (int i = N; i < N * N; i++)
            if (rnd(2))
                t[i] = t[i - N];
        uint32_t mt = 0, mp = 0;
        for (int i = 0; i < N * N; i++) {
            if (t[i] > mt) mt = t[i];
            if (p[i] > mp) mp = p[i];
        }
        if (!mt || !mp)
            continue;
        double ov[16][16] = {{0}}, iou[16][16];
        for (int i = 0; i < N * N; i++)
            ov[t[i]][p[i]]++;
        for (uint32_t a = 0; a <= mt; a++)
            for (uint32_t b = 0; b <= mp; b++) {
                double ra = 0, cb = 0;
                for (uint32_t k = 0; k <= mp; k++) ra += ov[a][k];
                for (uint32_t k = 0; k <= mt; k++) cb += ov[k][b];
                double u = ra + cb - ov[a][b];
                iou[a][b] = u > 0 ? ov[a][b] / u : 0;
            }
        cp_match_opts o = {th, 3, 1};
        cp_match_result r;
        CHECK_OK(cp_match(t, p, N, N, &o, &r));
        double nmin = mt < mp ? mt : mp;
        for (int k = 0; k < 3; k++) {
            double cost[256];
            for (uint32_t a = 0; a < mt; a++)
                for (uint32_t b = 0; b < mp; b++) {
                    double v = iou[a + 1][b + 1];
                    cost[a * mp + b] = -(double)(v >= th[k]) - v / (2 * nmin);
                }
            size_t rows[16], cols[16], np;
            CHECK_OK(cp_linear_sum_assignment(cost, mt, mp, rows, cols, &np));
            long tp = 0;
            for (size_t q = 0; q < np; q++)
                tp += iou[rows[q] + 1][cols[q] + 1] >= th[k];
            bad += tp != r.tp[k];
            runs++;
        }
    }
    CHECKF(runs > 500 && bad == 0, "%d of %d TP counts differ", bad, runs);
}

int main(void)
{
    random_matching();
    int bad_hull = 0, bad_euler = 0, bad_per = 0, bad_area = 0, cells = 0;
    for (int trial = 0; trial < 400; trial++) {
        uint32_t lab[N * N];
        unsigned dens = 2 + rnd(6);
        for (int i = 0; i < N * N; i++)
            lab[i] = rnd(10) < dens ? 1 + rnd(trial % 4 + 1) * 7 : 0;
        cp_cell_table t;
        CHECK_OK(cp_measure_cells(lab, N, N, NULL, &t));
        for (size_t c = 0; c < t.n; c++) {
            const cp_cell_props *p = t.cells + c;
            uint32_t L = p->label;
            long px[4 * N * N], py[4 * N * N];
            int np = 0, area = 0;
            for (int y = 0; y < N; y++)
                for (int x = 0; x < N; x++)
                    if (lab[y * N + x] == L) {
                        area++;
                        /* an interior pixel's midpoints are shared with its neighbours */
                        if (y > 0 && x > 0 && y < N - 1 && x < N - 1 && lab[(y - 1) * N + x] == L &&
                            lab[(y + 1) * N + x] == L && lab[y * N + x - 1] == L && lab[y * N + x + 1] == L)
                            continue;
                        long X = 2 * x, Y = 2 * y;
                        long ox[4] = {X - 1, X + 1, X, X}, oy[4] = {Y, Y, Y - 1, Y + 1};
                        for (int q = 0; q < 4; q++) {
                            px[np] = ox[q];
                            py[np] = oy[q];
                            np++;
                        }
                    }
            /* the hull lies within the bounding box */
            int hull = 0;
            for (int y = p->bbox_min_row; y < p->bbox_max_row; y++)
                for (int x = p->bbox_min_col; x < p->bbox_max_col; x++)
                    hull += in_hull(px, py, np, 2 * x, 2 * y);
            bad_hull += hull != p->convex_area;
            bad_euler += euler(lab, L) != p->euler_number;
            bad_per += fabs(perimeter(lab, L) - p->perimeter) > 1e-12;
            bad_area += area != p->area;
            cells++;
        }
        cp_cell_table_free(&t);
    }
    CHECKF(cells > 400, "%d cells", cells);
    CHECKF(bad_area == 0, "%d", bad_area);
    CHECKF(bad_hull == 0, "%d of %d convex areas differ", bad_hull, cells);
    CHECKF(bad_euler == 0, "%d of %d Euler numbers differ", bad_euler, cells);
    CHECKF(bad_per == 0, "%d of %d perimeters differ", bad_per, cells);
    return test_result();
}
