/* Seeded synthetic SeeSpot datasets in the spec layout (tests, benchmarks).
 * Numbers are written as fixed decimals from integers, so the generator is
 * fast and the values are exact decimal data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cellpose/spots.h"
#include "core/internal.h"
#include "spots/spots_internal.h"

static const char *CH[5] = {"488", "514", "561", "594", "638"};

void cp_spot_synth_defaults(cp_spot_synth_opts *o)
{
    memset(o, 0, sizeof *o);
    o->seed = 1;
    o->nspots = 1000;
    o->nchannels = 5;
    o->nrounds = 1;
    o->ntiles = 1;
    o->ncells = 50;
    o->with_optional = 1;
    o->removed_rate = 0.05;
    o->none_rate = 0.03;
    o->null_rate = 0.01;
}

typedef struct out {
    FILE *fp;
    gzFile gz;
    char *buf;
    size_t n;
} out;

static int out_open(out *o, const char *path, int gz)
{
    memset(o, 0, sizeof *o);
    o->buf = malloc(1 << 20);
    if (gz)
        o->gz = gzopen(path, "wb1");
    else
        o->fp = fopen(path, "wb");
    if (!o->buf || (!o->fp && !o->gz))
        return cp_error(CP_EIO, "%s: cannot create", path);
    return CP_OK;
}

static void out_flush(out *o)
{
    if (o->gz)
        gzwrite(o->gz, o->buf, (unsigned)o->n);
    else
        fwrite(o->buf, 1, o->n, o->fp);
    o->n = 0;
}

static int out_close(out *o)
{
    out_flush(o);
    int bad = o->gz ? gzclose(o->gz) != Z_OK : fclose(o->fp) != 0;
    free(o->buf);
    return bad ? cp_error(CP_EIO, "write error") : CP_OK;
}

static void put(out *o, const char *s)
{
    size_t n = strlen(s);
    if (o->n + n > (1 << 20) - 64)
        out_flush(o);
    memcpy(o->buf + o->n, s, n);
    o->n += n;
}

static void putc_(out *o, char c)
{
    if (o->n > (1 << 20) - 64)
        out_flush(o);
    o->buf[o->n++] = c;
}

/* v / 10^dec as a fixed decimal ("-12.05"). */
static void putfix(out *o, int64_t v, int dec)
{
    char t[32];
    int k = 0, neg = v < 0;
    uint64_t u = neg ? (uint64_t)(-v) : (uint64_t)v;
    for (int d = 0; d < dec; d++) {
        t[k++] = (char)('0' + u % 10);
        u /= 10;
    }
    if (dec)
        t[k++] = '.';
    do {
        t[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (neg)
        t[k++] = '-';
    if (o->n > (1 << 20) - 64)
        out_flush(o);
    while (k)
        o->buf[o->n++] = t[--k];
}

static double urand(uint64_t *s) { return (double)(cp_rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

typedef struct spot {
    int chan, cell, z, y, x, zc, yc, xc, dist, r; /* fixed decimals: c 3, dist/r 3 */
    int64_t fg[5], bg[5];                            /* hundredths */
    int um;        /* unmixed channel index, -1 null, -2 "none", -3 no row */
    int distr;     /* dist_r in hundredths */
    int over;
} spot;

static void write_header(out *o, int nch, int unmixed)
{
    put(o, "spot_id,chan,chan_spot_id,cell_id,round,z,y,x,z_center,y_center,x_center,dist,r");
    char b[64];
    for (int c = 0; c < nch; c++) {
        snprintf(b, sizeof b, ",chan_%s_fg,chan_%s_bg", CH[c], CH[c]);
        put(o, b);
    }
    for (int c = 0; c < nch; c++) {
        snprintf(b, sizeof b, ",chan_%s_intensity", CH[c]);
        put(o, b);
    }
    put(o, ",over_thresh");
    if (unmixed)
        put(o, ",unmixed_chan,valid_spot,dye_line_dist_ratio");
    putc_(o, '\n');
}

static void write_row(out *o, const spot *s, int64_t spot_id, int64_t chan_spot_id, int round, int nch, int unmixed,
                      int null_cell)
{
    putfix(o, spot_id, 0);
    putc_(o, ',');
    put(o, CH[s->chan]);
    putc_(o, ',');
    putfix(o, chan_spot_id, 0);
    putc_(o, ',');
    if (!null_cell)
        putfix(o, s->cell, 0);
    putc_(o, ',');
    putfix(o, round, 0);
    int v[6] = {s->z, s->y, s->x, s->zc, s->yc, s->xc};
    for (int k = 0; k < 6; k++) {
        putc_(o, ',');
        putfix(o, k < 3 ? (int64_t)v[k] * 10 : v[k], k < 3 ? 1 : 3);
    }
    putc_(o, ',');
    putfix(o, s->dist, 3);
    putc_(o, ',');
    putfix(o, s->r, 3);
    for (int c = 0; c < nch; c++) {
        putc_(o, ',');
        putfix(o, s->fg[c], 2);
        putc_(o, ',');
        putfix(o, s->bg[c], 2);
    }
    for (int c = 0; c < nch; c++) {
        putc_(o, ',');
        putfix(o, s->fg[c] - s->bg[c], 2);
    }
    put(o, s->over ? ",True" : ",False");
    if (unmixed) {
        putc_(o, ',');
        if (s->um >= 0)
            put(o, CH[s->um]);
        else if (s->um == -2)
            put(o, "none");
        int valid = s->um >= 0 && s->dist < 1000 && s->r > 500 && s->distr > 400;
        put(o, s->um == -1 ? "," : valid ? ",True" : ",False");
        putc_(o, ',');
        if (s->um != -1)
            putfix(o, s->distr, 2);
    }
    putc_(o, '\n');
}

static int synth_part(const char *dir, const cp_spot_synth_opts *o, int round, uint64_t *rng)
{
    size_t n = o->nspots;
    int nch = o->nchannels;
    spot *sp = cp_malloc_array(n + 1, sizeof *sp, "synthetic spots");
    size_t *per = cp_calloc((size_t)nch, sizeof *per, "synthetic spots");
    if (!sp || !per) {
        free(sp);
        free(per);
        return CP_ENOMEM;
    }
    /* spots ordered by channel like the upstream tables */
    size_t k = 0;
    for (int c = 0; c < nch; c++) {
        size_t cnt = c == nch - 1 ? n - k : n / (size_t)nch + (size_t)(cp_rng_below(rng, 3)) - 1;
        if (cnt > n - k)
            cnt = n - k;
        for (size_t i = 0; i < cnt; i++, k++) {
            spot *s = &sp[k];
            s->chan = c;
            s->cell = (int)cp_rng_below(rng, (uint64_t)(o->ncells + 1)); /* 0 = background */
            s->z = (int)cp_rng_below(rng, 200);
            s->y = (int)cp_rng_below(rng, 2000);
            s->x = (int)cp_rng_below(rng, 2000);
            s->zc = s->z * 1000 + (int)cp_rng_below(rng, 1000) - 500;
            s->yc = s->y * 1000 + (int)cp_rng_below(rng, 1000) - 500;
            s->xc = s->x * 1000 + (int)cp_rng_below(rng, 1000) - 500;
            s->dist = (int)cp_rng_below(rng, 1500);
            s->r = (int)cp_rng_below(rng, 1000);
            for (int q = 0; q < nch; q++) {
                s->bg[q] = 10000 + (int64_t)cp_rng_below(rng, 5000);
                s->fg[q] = s->bg[q] + (q == c ? 20000 : 0) + (int64_t)cp_rng_below(rng, 10000);
            }
            s->over = (int)cp_rng_below(rng, 2);
            s->distr = (int)cp_rng_below(rng, 1000);
            double u = urand(rng);
            if (u < o->removed_rate)
                s->um = -3;
            else if (u < o->removed_rate + o->none_rate)
                s->um = -2;
            else if (u < o->removed_rate + o->none_rate + o->null_rate)
                s->um = -1;
            else if (urand(rng) < 0.1)
                s->um = (int)cp_rng_below(rng, (uint64_t)nch);
            else
                s->um = c;
        }
        per[c] = cnt;
    }
    n = k;
    char name[256], *path;
    const char *ext = o->gzip ? ".csv.gz" : ".csv";
    out w;
    int rc;
    /* mixed */
    snprintf(name, sizeof name, "mixed_spots_R%d%s", round, ext);
    path = cp_path_join(dir, name);
    rc = out_open(&w, path, o->gzip);
    free(path);
    if (rc)
        goto done;
    write_header(&w, nch, 0);
    size_t base = 0;
    for (int c = 0; c < nch; c++) {
        for (size_t i = 0; i < per[c]; i++)
            write_row(&w, &sp[base + i], (int64_t)(i + 1), (int64_t)(i + 1), round, nch, 0, 0);
        base += per[c];
    }
    if ((rc = out_close(&w)))
        goto done;
    /* unmixed: same spots, removed ones left out, each channel in reverse */
    snprintf(name, sizeof name, "unmixed_spots_R%d_minDist_3%s", round, ext);
    path = cp_path_join(dir, name);
    rc = out_open(&w, path, o->gzip);
    free(path);
    if (rc)
        goto done;
    write_header(&w, nch, 1);
    base = 0;
    for (int c = 0; c < nch; c++) {
        for (size_t i = per[c]; i-- > 0;)
            if (sp[base + i].um != -3)
                write_row(&w, &sp[base + i], (int64_t)(i + 1), (int64_t)(i + 1), round, nch, 1, 0);
        base += per[c];
    }
    if ((rc = out_close(&w)))
        goto done;
    if (o->with_optional) {
        /* ratios: 100 on the diagonal, small leaks */
        snprintf(name, sizeof name, "r%d_ratios.txt", round);
        path = cp_path_join(dir, name);
        FILE *fp = fopen(path, "w");
        free(path);
        if (!fp) {
            rc = cp_error(CP_EIO, "%s: cannot create ratios", dir);
            goto done;
        }
        for (int a = 0; a < nch; a++)
            for (int b = 0; b < nch; b++)
                fprintf(fp, "%d%c", a == b ? 100 : (int)((a * 7 + b * 13) % 30), b == nch - 1 ? '\n' : ' ');
        fclose(fp);
        /* summary: per channel counts that agree with the tables */
        snprintf(name, sizeof name, "round_%d_summary_stats.csv", round);
        path = cp_path_join(dir, name);
        fp = fopen(path, "w");
        free(path);
        if (!fp) {
            rc = cp_error(CP_EIO, "%s: cannot create summary", dir);
            goto done;
        }
        fprintf(fp, "min_dist,round,total_spots,kept_spots,reassigned_spots,gene,channel\n");
        base = 0;
        for (int c = 0; c < nch; c++) {
            size_t kept = 0, re = 0;
            for (size_t i = 0; i < per[c]; i++) {
                int um = sp[base + i].um;
                kept += um >= 0;
                re += um >= 0 && um != c;
            }
            fprintf(fp, "3,%d,%zu,%zu,%zu,Gene%d,%s\n", round, per[c], kept, re, c + 1, CH[c]);
            base += per[c];
        }
        fclose(fp);
    }
done:
    free(sp);
    free(per);
    return rc;
}

int cp_spot_synth(const char *dir, const cp_spot_synth_opts *o)
{
    if (o->nchannels < 1 || o->nchannels > 5 || o->nrounds < 1 || o->ntiles < 1)
        return cp_error(CP_EINVAL, "synthetic dataset: 1-5 channels, >= 1 round and tile");
    uint64_t rng = o->seed;
    char *sd = cp_path_join(dir, "image_spot_spectral_unmixing");
    int rc = sd ? cp_mkdirs(sd) : CP_ENOMEM;
    /* manifest */
    if (!rc) {
        char *md = o->manifest_in_derived ? cp_path_join(dir, "derived") : cp_strdup(dir);
        char *mp = md ? cp_path_join(md, "processing_manifest.json") : NULL;
        rc = md && mp ? cp_mkdirs(md) : CP_ENOMEM;
        FILE *fp = rc ? NULL : fopen(mp, "w");
        if (!rc && !fp)
            rc = cp_error(CP_EIO, "%s: cannot create", mp);
        if (fp) {
            fprintf(fp, "{\n  \"spot_channels\": [");
            for (int c = 0; c < o->nchannels; c++)
                fprintf(fp, "%s\"%s\"", c ? ", " : "", CH[c]);
            fprintf(fp, "],\n  \"round\": %d,\n  \"segmentation_channels\": [\"405\"],\n  \"gene_dict\": {", 1);
            for (int c = 0; c < o->nchannels; c++)
                fprintf(fp, "%s\"%s\": \"Gene%d\"", c ? ", " : "", CH[c], c + 1);
            fprintf(fp, "}\n}\n");
            fclose(fp);
        }
        free(md);
        free(mp);
    }
    for (int r = 1; r <= o->nrounds && !rc; r++)
        for (int t = 0; t < o->ntiles && !rc; t++) {
            char tn[64], *td;
            if (o->ntiles > 1) {
                snprintf(tn, sizeof tn, "Tile_X_%04d_Y_0000_Z_0000", t);
                td = cp_path_join(sd, tn);
            } else {
                td = cp_strdup(sd);
            }
            rc = td ? cp_mkdirs(td) : CP_ENOMEM;
            if (!rc)
                rc = synth_part(td, o, r, &rng);
            free(td);
        }
    if (!rc && o->with_optional) {
        for (int c = 0; c < o->nchannels && !rc; c++) {
            char rel[128];
            snprintf(rel, sizeof rel, "image_tile_fusing/fused/channel_%s.zarr", CH[c]);
            char *zd = cp_path_join(dir, rel);
            rc = zd ? cp_mkdirs(zd) : CP_ENOMEM;
            char *za = rc ? NULL : cp_path_join(zd, ".zattrs");
            FILE *fp = za ? fopen(za, "w") : NULL;
            if (fp) {
                fprintf(fp, "{\"multiscales\": [{\"datasets\": [{\"path\": \"0\", \"coordinateTransformations\": "
                            "[{\"type\": \"scale\", \"scale\": [1.0, 1.0, 1.0, 0.24, 0.24]}]}]}]}\n");
                fclose(fp);
            }
            free(za);
            free(zd);
        }
    }
    free(sd);
    return rc;
}
