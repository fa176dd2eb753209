/* The whole flows-to-masks pipeline (spec 5): Euler -> get_masks -> flow QC
 * -> fill holes / min size, with per-stage timing for cpseg. */
#include <omp.h>
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
