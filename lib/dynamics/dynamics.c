/* The whole flows-to-masks pipeline (spec 5): Euler -> get_masks -> flow QC
 * -> fill holes / min size, with per-stage timing for cpseg. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/dynamics.h"
#include "core/internal.h"
#include "dynamics/internal.h"

int cp_dynamics(const float *dP, const float *cellprob, int Ly, int Lx,
                const cp_dyn_params *prm, uint32_t *labels, cp_dyn_stats *stats)
{
    cp_dyn_stats st;
    memset(&st, 0, sizeof st);
    if (!dP || !cellprob || !prm || !labels)
        return cp_error(CP_EINVAL, "dynamics: NULL argument");
    if (Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "dynamics: bad image size %dx%d", Lx, Ly);
    if (prm->variant != CP_DYN_V3 && prm->variant != CP_DYN_V4)
        return cp_error(CP_EINVAL, "dynamics: unknown variant %d", (int)prm->variant);
    if (prm->niter < 0)
        return cp_error(CP_EINVAL, "dynamics: negative niter %d", prm->niter);
    double t0 = omp_get_wtime(), t;
    size_t npix = (size_t)Ly * Lx;
    memset(labels, 0, npix * sizeof *labels);
    st.niter = prm->niter > 0 ? prm->niter
                              : cp_dyn_niter(prm->variant, prm->diameter, prm->diam_mean);
    st.followed = cp_dyn_count_followed(cellprob, npix, prm->cellprob_threshold);
    int rc = CP_OK;
    float *p = NULL;
    if (st.followed == 0)
        goto done;
    p = cp_malloc_array(st.followed, 2 * sizeof *p, "final positions");
    if (!p) {
        rc = CP_ENOMEM;
        goto done;
    }
    t = omp_get_wtime();
    rc = cp_dyn_euler(dP, cellprob, Ly, Lx, prm->cellprob_threshold, prm->variant, st.niter,
                      prm->threads, p);
    st.ms_euler = 1e3 * (omp_get_wtime() - t);
    if (rc != CP_OK)
        goto done;
    t = omp_get_wtime();
    rc = dyn_get_masks(p, cellprob, Ly, Lx, prm->cellprob_threshold, prm->max_size_fraction,
                       prm->threads, labels, &st.masks_seeded, &st.seeds);
    st.ms_seeds = 1e3 * (omp_get_wtime() - t);
    free(p);
    p = NULL;
    if (rc != CP_OK || st.seeds == 0)
        goto done;
    if (st.masks_seeded > 0 && prm->flow_threshold > 0) {
        t = omp_get_wtime();
        rc = cp_dyn_remove_bad_flow_masks(labels, Ly, Lx, dP, prm->variant, prm->flow_threshold,
                                          prm->threads, &st.masks_removed_qc);
        st.ms_qc = 1e3 * (omp_get_wtime() - t);
        if (rc != CP_OK)
            goto done;
    }
    t = omp_get_wtime();
    uint32_t cells = 0;
    rc = dyn_fill_holes_and_remove_small(labels, Ly, Lx, prm->min_size, prm->v3_label_bug,
                                         prm->threads, &cells);
    st.ms_fill = 1e3 * (omp_get_wtime() - t);
    st.cells = (int)cells;
done:
    free(p);
    if (rc != CP_OK)
        memset(labels, 0, npix * sizeof *labels);
    st.ms_total = 1e3 * (omp_get_wtime() - t0);
    if (stats)
        *stats = st;
    return rc;
}

int dyn_dims3(int Lz, int Ly, int Lx, const char *what, size_t *nvox)
{
    *nvox = 0;
    if (Lz <= 0 || Ly <= 0 || Lx <= 0)
        return cp_error(CP_EINVAL, "%s: bad volume size %dx%dx%d", what, Lx, Ly, Lz);
    size_t plane = (size_t)Ly * (size_t)Lx; /* < 2^62 */
    if ((size_t)Lz > SIZE_MAX / 4 / sizeof(double) / plane)
        return cp_error(CP_ELIMIT, "%s: volume %dx%dx%d is too large", what, Lx, Ly, Lz);
    *nvox = plane * (size_t)Lz;
    return CP_OK;
}

/* Cellpose's do_3D mask step: resize_and_compute_masks(do_3D=True) = Euler
 * (grid_sample), get_masks, no flow QC, then fill holes / min_size. */
int cp_dynamics3d(const float *dP, const float *cellprob, int Lz, int Ly, int Lx,
                  const cp_dyn_params *prm, uint32_t *labels, cp_dyn_stats *stats)
{
    cp_dyn_stats st;
    memset(&st, 0, sizeof st);
    if (stats)
        *stats = st;
    if (!dP || !cellprob || !prm || !labels)
        return cp_error(CP_EINVAL, "dynamics3d: NULL argument");
    size_t nvox;
    int rc = dyn_dims3(Lz, Ly, Lx, "dynamics3d", &nvox);
    if (rc != CP_OK)
        return rc;
    if (Lz < 2 || Ly < 2 || Lx < 2)
        return cp_error(CP_EINVAL, "dynamics3d: need a volume at least 2x2x2, got %dx%dx%d", Lx,
                        Ly, Lz);
    if (prm->variant != CP_DYN_V3 && prm->variant != CP_DYN_V4)
        return cp_error(CP_EINVAL, "dynamics3d: unknown variant %d", (int)prm->variant);
    if (prm->niter < 0)
        return cp_error(CP_EINVAL, "dynamics3d: negative niter %d", prm->niter);
    double t0 = omp_get_wtime(), t;
    memset(labels, 0, nvox * sizeof *labels);
    st.niter = prm->niter > 0 ? prm->niter
                              : cp_dyn_niter(prm->variant, prm->diameter, prm->diam_mean);
    st.followed = cp_dyn_count_followed(cellprob, nvox, prm->cellprob_threshold);
    float *p = NULL;
    if (st.followed == 0)
        goto done;
    p = cp_malloc_array(st.followed, 3 * sizeof *p, "final positions");
    if (!p) {
        rc = CP_ENOMEM;
        goto done;
    }
    t = omp_get_wtime();
    rc = cp_dyn_euler3d(dP, cellprob, Lz, Ly, Lx, prm->cellprob_threshold, 1, st.niter,
                        prm->threads, p);
    st.ms_euler = 1e3 * (omp_get_wtime() - t);
    if (rc != CP_OK)
        goto done;
    t = omp_get_wtime();
    rc = dyn_get_masks_nd(p, cellprob, Lz, Ly, Lx, 1, prm->cellprob_threshold,
                          prm->max_size_fraction, prm->threads, labels, &st.masks_seeded,
                          &st.seeds);
    st.ms_seeds = 1e3 * (omp_get_wtime() - t);
    free(p);
    p = NULL;
    if (rc != CP_OK || st.seeds == 0)
        goto done;
    t = omp_get_wtime();
    uint32_t cells = 0;
    rc = dyn_fill_holes_nd(labels, Lz, Ly, Lx, 1, prm->min_size, 0, prm->threads, &cells);
    st.ms_fill = 1e3 * (omp_get_wtime() - t);
    st.cells = (int)cells;
done:
    free(p);
    if (rc != CP_OK)
        memset(labels, 0, nvox * sizeof *labels);
    st.ms_total = 1e3 * (omp_get_wtime() - t0);
    if (stats)
        *stats = st;
    return rc;
}
