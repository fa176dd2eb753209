/* SeeSpot dataset folders: discovery, manifest, and the mixed <- unmixed merge. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cellpose/spots.h"
#include "core/internal.h"
#include "spots/spots_internal.h"

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

char *cp_spot_read_text(const char *path, size_t max, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    while (b) {
        if (n + 1 >= cap) {
            if (cap >= max) {
                free(b);
                fclose(fp);
                cp_error(CP_ELIMIT, "%s: larger than %zu bytes", path, max);
                return NULL;
            }
            char *nb = realloc(b, cap * 2);
            if (!nb)
                break;
            b = nb;
            cap *= 2;
        }
        size_t got = fread(b + n, 1, cap - n - 1, fp);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (!b || bad) {
        free(b);
        cp_error(bad ? CP_EIO : CP_ENOMEM, "%s: cannot read", path);
        return NULL;
    }
    b[n] = '\0';
    if (len)
        *len = n;
    return b;
}

static int json_to_str(const cJSON *j, char *buf, size_t n)
{
    if (cJSON_IsString(j))
        snprintf(buf, n, "%s", j->valuestring);
    else if (cJSON_IsNumber(j))
        snprintf(buf, n, "%.17g", j->valuedouble);
    else
        return -1;
    return 0;
}

static int read_manifest(cp_spot_dataset *d)
{
    char *text = cp_spot_read_text(d->manifest, 64u << 20, NULL);
    if (!text)
        return CP_EIO;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return cp_error(CP_EFORMAT, "%s: not a JSON object", d->manifest);
    }
    int rc = CP_OK;
    char buf[256];
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "spot_channels"), *it;
    if (ch && cJSON_IsArray(ch))
        cJSON_ArrayForEach(it, ch) {
            if (json_to_str(it, buf, sizeof buf) == 0 && !rc)
                rc = cp_strlist_push(&d->channels, buf);
        }
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "round");
    if (cJSON_IsNumber(r))
        d->manifest_round = (int)r->valuedouble;
    else if (cJSON_IsString(r))
        d->manifest_round = atoi(r->valuestring[0] == 'R' ? r->valuestring + 1 : r->valuestring);
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(j, "gene_dict");
    if (g && cJSON_IsObject(g))
        cJSON_ArrayForEach(it, g) {
            const cJSON *v = it;
            if (cJSON_IsObject(v)) {
                const cJSON *gn = cJSON_GetObjectItemCaseSensitive(v, "gene");
                v = gn ? gn : cJSON_GetObjectItemCaseSensitive(v, "name");
            }
            if (v && json_to_str(v, buf, sizeof buf) == 0 && !rc) {
                rc = cp_strlist_push(&d->gene_chan, it->string);
                if (!rc)
                    rc = cp_strlist_push(&d->gene_name, buf);
            }
        }
    cJSON_Delete(j);
    return rc;
}

/* "<prefix><N><rest>" -> N (or -1). */
static int round_of(const char *name, const char *prefix)
{
    size_t k = strlen(prefix);
    if (strncmp(name, prefix, k) || name[k] < '0' || name[k] > '9')
        return -1;
    return atoi(name + k);
}

static int table_ext_ok(const char *name, const char *stem_end)
{
    (void)stem_end;
    return cp_is_table_name(name);
}

static int has_binary_ext(const char *n)
{
    size_t a = strlen(n);
    return (a > 4 && !strcmp(n + a - 4, ".pkl")) || (a > 8 && !strcmp(n + a - 8, ".parquet"));
}

static int add_part(cp_spot_dataset *d, const char *dir, const char *tile, cp_strlist *files)
{
    /* rounds present: mixed tables in a readable format */
    int rc = CP_OK;
    for (size_t i = 0; i < files->n && !rc; i++) {
        const char *f = files->items[i];
        int r = round_of(f, "mixed_spots_R");
        if (r < 0 || !table_ext_ok(f, NULL))
            continue;
        cp_spot_part *np = realloc(d->parts, (size_t)(d->nparts + 1) * sizeof *np);
        if (!np)
            return cp_error(CP_ENOMEM, "out of memory");
        d->parts = np;
        cp_spot_part *p = &d->parts[d->nparts++];
        memset(p, 0, sizeof *p);
        p->round = r;
        p->mixed = cp_path_join(dir, f);
        p->tile = tile ? cp_strdup(tile) : NULL;
        char pre[64], rat[64], sum[64];
        snprintf(pre, sizeof pre, "unmixed_spots_R%d_", r);
        snprintf(rat, sizeof rat, "r%d_ratios.txt", r);
        snprintf(sum, sizeof sum, "round_%d_summary_stats.csv", r);
        for (size_t k = 0; k < files->n; k++) {
            const char *g = files->items[k];
            if (!p->unmixed && !strncmp(g, pre, strlen(pre)) && cp_is_table_name(g))
                p->unmixed = cp_path_join(dir, g);
            if (!p->ratios && !strcmp(g, rat))
                p->ratios = cp_path_join(dir, g);
            if (!p->summary && !strcmp(g, sum))
                p->summary = cp_path_join(dir, g);
        }
        if (!p->mixed)
            rc = CP_ENOMEM;
    }
    return rc;
}

static int list_dir(const char *dir, cp_strlist *files, cp_strlist *tiles)
{
    DIR *dh = opendir(dir);
    if (!dh)
        return cp_error(CP_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = CP_OK;
    while ((e = readdir(dh)) && !rc) {
        if (e->d_name[0] == '.')
            continue;
        char *p = cp_path_join(dir, e->d_name);
        if (!p) {
            rc = CP_ENOMEM;
            break;
        }
        if (tiles && !strncmp(e->d_name, "Tile_", 5) && is_dir(p))
            rc = cp_strlist_push(tiles, e->d_name);
        else if (is_file(p))
            rc = cp_strlist_push(files, e->d_name);
        free(p);
    }
    closedir(dh);
    cp_strlist_sort(files);
    if (tiles)
        cp_strlist_sort(tiles);
    return rc;
}

static int part_cmp(const void *a, const void *b)
{
    const cp_spot_part *x = a, *y = b;
    if (x->round != y->round)
        return x->round < y->round ? -1 : 1;
    if (!x->tile || !y->tile)
        return x->tile ? 1 : (y->tile ? -1 : 0);
    return strcmp(x->tile, y->tile);
}

static int spool_stdin(char **pathp)
{
    const char *tmp = getenv("TMPDIR");
    char *path = cp_path_join(tmp && *tmp ? tmp : "/tmp", "spotquery-stdin.XXXXXX.csv");
    if (!path)
        return CP_ENOMEM;
    int fd = mkstemps(path, 4);
    if (fd < 0) {
        int rc = cp_error(CP_EIO, "%s: cannot create: %s", path, strerror(errno));
        free(path);
        return rc;
    }
    char buf[1 << 16];
    ssize_t got;
    int rc = CP_OK;
    while ((got = read(0, buf, sizeof buf)) > 0)
        if (write(fd, buf, (size_t)got) != got) {
            rc = cp_error(CP_EIO, "%s: write error", path);
            break;
        }
    if (got < 0)
        rc = cp_error(CP_EIO, "stdin: read error: %s", strerror(errno));
    close(fd);
    if (rc) {
        unlink(path);
        free(path);
        return rc;
    }
    *pathp = path;
    return CP_OK;
}

int cp_spot_dataset_open(const char *path, cp_spot_dataset *d)
{
    memset(d, 0, sizeof *d);
    d->manifest_round = -1;
    if (strcmp(path, "-") && !cp_path_exists(path))
        return cp_error(CP_EIO, "%s: no such file or folder", path);
    if (!strcmp(path, "-") || !is_dir(path)) {
        if (has_binary_ext(path) && !cp_is_table_name(path))
            return cp_error(CP_EUNSUPPORTED, "%s: pandas pickle / Parquet tables are not read yet; "
                                             "convert to CSV", path);
        d->single = 1;
        d->parts = cp_calloc(1, sizeof *d->parts, "dataset");
        if (!d->parts)
            return CP_ENOMEM;
        d->nparts = 1;
        if (!strcmp(path, "-")) {
            /* stdin is read more than once (header, rows): spool it */
            int rc = spool_stdin(&d->parts[0].mixed);
            if (rc)
                return rc;
            d->spooled = 1;
        } else if (!(d->parts[0].mixed = cp_strdup(path))) {
            return CP_ENOMEM;
        }
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        int r = round_of(base, "mixed_spots_R");
        d->parts[0].round = r >= 0 ? r : round_of(base, "unmixed_spots_R");
        return CP_OK;
    }
    d->root = cp_strdup(path);
    size_t L = strlen(d->root);
    while (L > 1 && d->root[L - 1] == '/')
        d->root[--L] = '\0';
    const char *base = strrchr(d->root, '/');
    d->name = cp_strdup(base ? base + 1 : d->root);
    char *m = cp_path_join(d->root, "processing_manifest.json");
    if (m && !is_file(m)) {
        free(m);
        m = cp_path_join(d->root, "derived/processing_manifest.json");
        if (m && !is_file(m)) {
            free(m);
            m = NULL;
        }
    }
    d->manifest = m;
    int rc;
    if (d->manifest && (rc = read_manifest(d)))
        return rc;
    char *ng = cp_path_join(d->root, "phase_correlation_stitching_neuroglancer.json");
    if (ng && is_file(ng))
        d->ng_json = ng;
    else
        free(ng);
    char *sd = cp_path_join(d->root, "image_spot_spectral_unmixing");
    if (!sd)
        return CP_ENOMEM;
    if (!is_dir(sd)) {
        free(sd);
        sd = cp_strdup(d->root); /* the unmixing folder itself */
    }
    cp_strlist files = {0}, tiles = {0};
    rc = list_dir(sd, &files, &tiles);
    if (!rc)
        rc = add_part(d, sd, NULL, &files);
    for (size_t t = 0; t < tiles.n && !rc; t++) {
        char *td = cp_path_join(sd, tiles.items[t]);
        cp_strlist tf = {0};
        rc = td ? list_dir(td, &tf, NULL) : CP_ENOMEM;
        if (!rc)
            rc = add_part(d, td, tiles.items[t], &tf);
        cp_strlist_free(&tf);
        free(td);
    }
    int binary = 0;
    for (size_t i = 0; i < files.n; i++)
        binary |= has_binary_ext(files.items[i]) && round_of(files.items[i], "mixed_spots_R") >= 0;
    cp_strlist_free(&files);
    cp_strlist_free(&tiles);
    if (!rc && d->nparts == 0)
        rc = binary ? cp_error(CP_EUNSUPPORTED, "%s: only pandas pickle / Parquet spot tables (not read yet); "
                                                "convert them to mixed_spots_R<N>.csv", sd)
                    : cp_error(CP_EFORMAT, "%s: no mixed_spots_R<N> table", sd);
    free(sd);
    if (!rc)
        qsort(d->parts, (size_t)d->nparts, sizeof *d->parts, part_cmp);
    return rc;
}

void cp_spot_dataset_free(cp_spot_dataset *d)
{
    if (d->spooled && d->parts && d->parts[0].mixed)
        unlink(d->parts[0].mixed);
    for (int i = 0; i < d->nparts; i++) {
        cp_spot_part *p = &d->parts[i];
        free(p->mixed);
        free(p->unmixed);
        free(p->ratios);
        free(p->summary);
        free(p->tile);
    }
    free(d->parts);
    free(d->root);
    free(d->name);
    free(d->manifest);
    free(d->ng_json);
    cp_strlist_free(&d->channels);
    cp_strlist_free(&d->gene_chan);
    cp_strlist_free(&d->gene_name);
    memset(d, 0, sizeof *d);
}

/* ---- merge ---------------------------------------------------------------- */

static int in_list(const cp_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->items[i], s))
            return 1;
    return 0;
}

static int wanted(const cp_spot_load_opts *o, const char *name)
{
    if (!o || !o->columns)
        return 1;
    for (int i = 0; i < o->ncolumns; i++)
        if (!strcmp(o->columns[i], name))
            return 1;
    return 0;
}

static int round_wanted(const cp_spot_load_opts *o, int r)
{
    if (!o || !o->rounds)
        return 1;
    for (int i = 0; i < o->nrounds; i++)
        if (o->rounds[i] == r)
            return 1;
    return 0;
}

static int push_unique(cp_strlist *l, const char *s) { return in_list(l, s) ? CP_OK : cp_strlist_push(l, s); }

/* Move column k to the front. */
static void col_to_front(cp_stable *t, int k)
{
    cp_scol c = t->cols[k];
    memmove(t->cols + 1, t->cols, (size_t)k * sizeof c);
    t->cols[0] = c;
}

/* Fill column dst (new, in t) from src rows match[i] (-1 = null); dst takes
 * over src's dictionary. */
static int gather_col(cp_stable *t, cp_scol *dst, cp_scol *src, const int32_t *match)
{
    size_t n = t->nrows;
    if (src->type == CP_SCOL_STR) {
        cp_sdict_free(&dst->dict);
        dst->dict = src->dict;
        memset(&src->dict, 0, sizeof src->dict);
    }
    /* start from "no null": matched rows get values, the rest are set null */
    free(dst->nulls);
    dst->nulls = NULL;
    if (src->type != CP_SCOL_STR && src->type != CP_SCOL_F32 && cp_scol_null_bitmap(dst, t->cap))
        return CP_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int32_t j = match[i];
        if (j < 0 || cp_scol_is_null(src, (size_t)j)) {
            cp_scol_set_null(dst, i);
            continue;
        }
        switch (src->type) {
        case CP_SCOL_BOOL: cp_scol_set_bool(dst, i, cp_scol_get_bool(src, (size_t)j)); break;
        default: {
            size_t es = cp_scol_elem_size(src->type);
            memcpy((char *)dst->v + i * es, (char *)src->v + (size_t)j * es, es);
        }
        }
    }
    return CP_OK;
}

/* match[i] = unmixed row of mixed row i, or -1. */
static int join_rows(const cp_spot_part *p, const cp_stable *mx, const cp_stable *um, int32_t **matchp)
{
    int mc = cp_stable_find(mx, "chan"), mi = cp_stable_find(mx, "chan_spot_id");
    int uc = cp_stable_find(um, "chan"), ui = cp_stable_find(um, "chan_spot_id");
    const cp_scol *MC = &mx->cols[mc], *MI = &mx->cols[mi], *UC = &um->cols[uc], *UI = &um->cols[ui];
    int nch = MC->dict.n;
    int32_t *umap = cp_malloc_array((size_t)UC->dict.n + 1, sizeof *umap, "join");
    int64_t *maxid = cp_calloc((size_t)nch + 1, sizeof *maxid, "join");
    int32_t **idx = cp_calloc((size_t)nch + 1, sizeof *idx, "join");
    int32_t *match = cp_malloc_array(mx->nrows + 1, sizeof *match, "join");
    int rc = !umap || !maxid || !idx || !match ? CP_ENOMEM : CP_OK;
    for (int32_t k = 0; !rc && k < UC->dict.n; k++)
        umap[k] = cp_sdict_find(&MC->dict, UC->dict.s[k]);
    const int32_t *uch = UC->v, *uid = UI->v, *mch = MC->v, *mid = MI->v;
    for (size_t j = 0; !rc && j < um->nrows; j++) {
        if (uch[j] < 0 || umap[uch[j]] < 0 || cp_scol_is_null(UI, j) || uid[j] < 0)
            continue;
        int c = umap[uch[j]];
        if (uid[j] > maxid[c])
            maxid[c] = uid[j];
    }
    for (int c = 0; !rc && c < nch; c++) {
        if (maxid[c] > (int64_t)(16 * um->nrows + 1024)) {
            rc = cp_error(CP_ELIMIT, "%s: chan_spot_id values up to %lld for %zu rows: too sparse to index",
                          p->unmixed, (long long)maxid[c], um->nrows);
            break;
        }
        idx[c] = cp_malloc_array((size_t)maxid[c] + 1, sizeof(int32_t), "join index");
        if (!idx[c]) {
            rc = CP_ENOMEM;
            break;
        }
        for (int64_t k = 0; k <= maxid[c]; k++)
            idx[c][k] = -1;
    }
    for (size_t j = 0; !rc && j < um->nrows; j++) {
        if (uch[j] < 0 || umap[uch[j]] < 0 || cp_scol_is_null(UI, j) || uid[j] < 0)
            continue;
        int c = umap[uch[j]];
        if (idx[c][uid[j]] >= 0)
            rc = cp_error(CP_EFORMAT, "%s: duplicate (chan, chan_spot_id) = (%s, %d) at data rows %d and %zu",
                          p->unmixed, MC->dict.s[c], uid[j], idx[c][uid[j]] + 1, j + 1);
        else
            idx[c][uid[j]] = (int32_t)j;
    }
    for (size_t i = 0; !rc && i < mx->nrows; i++) {
        int c = mch[i];
        match[i] = c >= 0 && !cp_scol_is_null(MI, i) && mid[i] >= 0 && mid[i] <= maxid[c] ? idx[c][mid[i]] : -1;
    }
    for (int c = 0; c < nch && idx; c++)
        free(idx[c]);
    free(idx);
    free(maxid);
    free(umap);
    if (rc) {
        free(match);
        return rc;
    }
    *matchp = match;
    return CP_OK;
}

static int load_part(cp_spot_part *p, const cp_spot_load_opts *o, cp_stable *out)
{
    cp_strlist mh = {0}, uh = {0}, mcols = {0}, ucols = {0}, uonly = {0};
    cp_stable mx = {0}, um = {0};
    int32_t *match = NULL;
    int rc = cp_stable_read_header(p->mixed, &mh);
    if (!rc && p->unmixed)
        rc = cp_stable_read_header(p->unmixed, &uh);
    /* mixed columns: the wanted ones plus the join keys; spot_id is renumbered */
    for (size_t i = 0; !rc && i < mh.n; i++) {
        const char *c = mh.items[i];
        if (!strcmp(c, "spot_id") || !*c || !strncmp(c, "Unnamed: ", 9))
            continue;
        if (!strcmp(c, "chan") || !strcmp(c, "chan_spot_id") || (!p->unmixed && !strcmp(c, "unmixed_chan")) ||
            wanted(o, c))
            rc = push_unique(&mcols, c);
    }
    if (!rc && !p->unmixed && !in_list(&mh, "unmixed_chan") && !in_list(&mh, "chan"))
        rc = cp_error(CP_EFORMAT, "%s:1: missing column 'chan'", p->mixed);
    if (!rc && p->unmixed) {
        if (!in_list(&mh, "chan") || !in_list(&mh, "chan_spot_id"))
            rc = cp_error(CP_EFORMAT, "%s:1: missing column '%s'", p->mixed,
                          in_list(&mh, "chan") ? "chan_spot_id" : "chan");
        rc = rc ? rc : push_unique(&ucols, "chan");
        rc = rc ? rc : push_unique(&ucols, "chan_spot_id");
        for (size_t i = 0; !rc && i < uh.n; i++) {
            const char *c = uh.items[i];
            if (in_list(&mh, c) || !strcmp(c, "spot_id") || !*c || !strncmp(c, "Unnamed: ", 9))
                continue;
            rc = push_unique(&uonly, c);
            rc = rc ? rc : push_unique(&ucols, c);
        }
    }
    cp_sread_opts ro = {0};
    ro.threads = o ? o->threads : 0;
    if (!rc) {
        ro.columns = (const char *const *)mcols.items;
        ro.ncolumns = (int)mcols.n;
        rc = cp_spot_table_read(p->mixed, &ro, &mx);
    }
    if (!rc && p->unmixed) {
        ro.columns = (const char *const *)ucols.items;
        ro.ncolumns = (int)ucols.n;
        rc = cp_spot_table_read(p->unmixed, &ro, &um);
    }
    if (!rc && p->unmixed) {
        if (mx.cols[cp_stable_find(&mx, "chan")].type != CP_SCOL_STR ||
            mx.cols[cp_stable_find(&mx, "chan_spot_id")].type != CP_SCOL_I32)
            rc = cp_error(CP_EFORMAT, "%s: chan / chan_spot_id of unexpected type", p->mixed);
        else
            rc = join_rows(p, &mx, &um, &match);
    }
    /* unmixed-only columns */
    for (size_t k = 0; !rc && k < uonly.n; k++) {
        cp_scol *s = &um.cols[cp_stable_find(&um, uonly.items[k])];
        rc = cp_stable_add_col(&mx, s->name, s->type);
        if (!rc)
            rc = gather_col(&mx, &mx.cols[mx.ncols - 1], s, match);
    }
    /* flags */
    if (!rc)
        rc = cp_stable_add_col(&mx, "unmixed_removed", CP_SCOL_BOOL);
    if (!rc)
        rc = cp_stable_add_col(&mx, "reassigned", CP_SCOL_BOOL);
    if (!rc) {
        cp_scol *rem = &mx.cols[mx.ncols - 2], *rea = &mx.cols[mx.ncols - 1];
        free(rem->nulls); /* every row gets a value below */
        free(rea->nulls);
        rem->nulls = rea->nulls = NULL;
        int ci = cp_stable_find(&mx, "chan"), ui = cp_stable_find(&mx, "unmixed_chan");
        const cp_scol *C = ci >= 0 ? &mx.cols[ci] : NULL, *U = ui >= 0 ? &mx.cols[ui] : NULL;
        int *uo = cp_calloc(uonly.n + 1, sizeof *uo, "merge");
        int32_t *u2c = NULL;
        if (U && U->type == CP_SCOL_STR && C && C->type == CP_SCOL_STR) {
            u2c = cp_malloc_array((size_t)U->dict.n + 1, sizeof *u2c, "merge");
            for (int32_t k = 0; u2c && k < U->dict.n; k++)
                u2c[k] = cp_spot_removed_str(U->dict.s[k]) ? -2 : cp_sdict_find(&C->dict, U->dict.s[k]);
        }
        if (!uo || (U && U->type == CP_SCOL_STR && C && C->type == CP_SCOL_STR && !u2c))
            rc = CP_ENOMEM;
        for (size_t k = 0; !rc && k < uonly.n; k++)
            uo[k] = cp_stable_find(&mx, uonly.items[k]);
        for (size_t i = 0; !rc && i < mx.nrows; i++) {
            int removed;
            if (p->unmixed) {
                removed = 1;
                for (size_t k = 0; k < uonly.n && removed; k++)
                    removed = cp_scol_is_null(&mx.cols[uo[k]], i);
            } else { /* one table: removed when it has no unmixed channel */
                removed = !U || cp_scol_is_null(U, i);
            }
            cp_scol_set_bool(rem, i, removed);
            int re = 0;
            if (u2c) {
                int32_t uc = ((int32_t *)U->v)[i], cc = ((int32_t *)C->v)[i];
                re = uc >= 0 && u2c[uc] != -2 && u2c[uc] != cc;
            }
            cp_scol_set_bool(rea, i, re);
        }
        free(uo);
        free(u2c);
    }
    if (!rc && (rc = cp_stable_add_col(&mx, "spot_id", CP_SCOL_I32)) == CP_OK)
        col_to_front(&mx, mx.ncols - 1);
    if (!rc) {
        p->nrows = mx.nrows;
        rc = cp_stable_append(out, &mx);
    }
    free(match);
    cp_stable_free(&mx);
    cp_stable_free(&um);
    cp_strlist_free(&mh);
    cp_strlist_free(&uh);
    cp_strlist_free(&mcols);
    cp_strlist_free(&ucols);
    cp_strlist_free(&uonly);
    return rc;
}

static void number_spots(cp_stable *t)
{
    cp_scol *c = &t->cols[cp_stable_find(t, "spot_id")];
    free(c->nulls);
    c->nulls = NULL;
    for (size_t i = 0; i < t->nrows; i++)
        ((int32_t *)c->v)[i] = (int32_t)(i + 1);
}

int cp_spot_load(cp_spot_dataset *d, const cp_spot_load_opts *o, cp_stable *out)
{
    memset(out, 0, sizeof *out);
    int any = 0;
    for (int i = 0; i < d->nparts; i++) {
        d->parts[i].nrows = 0;
        if (!round_wanted(o, d->parts[i].round) && !d->single)
            continue;
        any = 1;
        int rc = load_part(&d->parts[i], o, out);
        if (rc) {
            cp_stable_free(out);
            return rc;
        }
    }
    if (!any)
        return cp_error(CP_EINVAL, "%s: no table of the requested round(s)", d->root ? d->root : "dataset");
    if (out->nrows > INT32_MAX) {
        cp_stable_free(out);
        return cp_error(CP_ELIMIT, "more than 2^31 spots");
    }
    number_spots(out);
    return CP_OK;
}

int cp_spot_load_rows(cp_spot_dataset *d, const cp_spot_load_opts *o, const uint32_t *ids, size_t n,
                      cp_stable *out)
{
    memset(out, 0, sizeof *out);
    size_t base = 0, k = 0;
    int rc = CP_OK;
    for (int i = 0; i < d->nparts && !rc; i++) {
        cp_spot_part *p = &d->parts[i];
        if (!p->nrows && !(n == 0 && i == 0))
            continue;
        size_t k0 = k;
        while (k < n && ids[k] - 1 < base + p->nrows)
            k++;
        /* with no row at all, the first part still gives the columns */
        if (k > k0 || (n == 0 && base == 0)) {
            uint64_t *mask = cp_calloc(p->nrows / 64 + 1, 8, "row mask");
            cp_strlist mh = {0}, cols = {0};
            cp_stable part = {0};
            rc = mask ? cp_stable_read_header(p->mixed, &mh) : CP_ENOMEM;
            for (size_t j = k0; j < k && !rc; j++) {
                size_t r = ids[j] - 1 - base;
                mask[r >> 6] |= 1ull << (r & 63);
            }
            for (size_t c = 0; c < mh.n && !rc; c++)
                if (strcmp(mh.items[c], "spot_id") && wanted(o, mh.items[c]))
                    rc = cp_strlist_push(&cols, mh.items[c]);
            if (!rc) {
                cp_sread_opts ro = {0};
                ro.columns = (const char *const *)cols.items;
                ro.ncolumns = (int)cols.n;
                ro.row_mask = mask;
                ro.mask_rows = p->nrows;
                ro.threads = o ? o->threads : 0;
                rc = cp_spot_table_read(p->mixed, &ro, &part);
            }
            if (!rc && part.nrows != k - k0)
                rc = cp_error(CP_EIO, "%s: changed since it was first read", p->mixed);
            if (!rc)
                rc = cp_stable_append(out, &part);
            cp_stable_free(&part);
            cp_strlist_free(&mh);
            cp_strlist_free(&cols);
            free(mask);
        }
        base += p->nrows;
    }
    if (rc)
        cp_stable_free(out);
    return rc;
}

int cp_spot_is_removed(const cp_stable *t, size_t row)
{
    int u = cp_stable_find(t, "unmixed_chan");
    if (u >= 0 && t->cols[u].type == CP_SCOL_STR && cp_spot_removed_str(cp_scol_str(&t->cols[u], row)))
        return 1;
    int r = cp_stable_find(t, "unmixed_removed");
    return r >= 0 && cp_scol_get_bool(&t->cols[r], row);
}

static int str_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int cp_spot_channels(cp_spot_dataset *d, const cp_stable *t)
{
    if (d->channels.n || !t)
        return CP_OK;
    int rc = CP_OK;
    for (int k = 0; k < t->ncols && !rc; k++) {
        const char *n = t->cols[k].name;
        size_t L = strlen(n);
        if (!strncmp(n, "chan_", 5) && L > 15 && !strcmp(n + L - 10, "_intensity")) {
            char buf[128];
            snprintf(buf, sizeof buf, "%.*s", (int)(L - 15), n + 5);
            rc = push_unique(&d->channels, buf);
        }
    }
    int c = cp_stable_find(t, "chan");
    if (c >= 0 && t->cols[c].type == CP_SCOL_STR)
        for (int32_t k = 0; k < t->cols[c].dict.n && !rc; k++)
            rc = push_unique(&d->channels, t->cols[c].dict.s[k]);
    if (d->channels.n > 1)
        qsort(d->channels.items, d->channels.n, sizeof(char *), str_cmp);
    return rc;
}

int cp_spot_columns(cp_spot_dataset *d, cp_strlist *out)
{
    cp_strlist mh = {0}, uh = {0};
    const cp_spot_part *p = &d->parts[0];
    int rc = cp_stable_read_header(p->mixed, &mh);
    if (!rc && p->unmixed)
        rc = cp_stable_read_header(p->unmixed, &uh);
    rc = rc ? rc : push_unique(out, "spot_id");
    for (size_t i = 0; i < mh.n && !rc; i++)
        if (*mh.items[i] && strncmp(mh.items[i], "Unnamed: ", 9))
            rc = push_unique(out, mh.items[i]);
    for (size_t i = 0; i < uh.n && !rc; i++)
        if (*uh.items[i] && strncmp(uh.items[i], "Unnamed: ", 9))
            rc = push_unique(out, uh.items[i]);
    rc = rc ? rc : push_unique(out, "unmixed_removed");
    rc = rc ? rc : push_unique(out, "reassigned");
    cp_strlist_free(&mh);
    cp_strlist_free(&uh);
    return rc;
}

int cp_spot_select(cp_spot_dataset *d, const cp_spot_load_opts *o, const cp_stable *t, const uint32_t *rows,
                   size_t n, const char *const *columns, int ncolumns, cp_stable *out)
{
    int *have = cp_malloc_array((size_t)ncolumns + 1, sizeof *have, "select");
    cp_strlist missing = {0};
    cp_stable extra = {0};
    uint32_t *ids = cp_malloc_array(n + 1, sizeof *ids, "select");
    int rc = have && ids ? CP_OK : CP_ENOMEM, nhave = 0;
    int si = cp_stable_find(t, "spot_id");
    for (int k = 0; k < ncolumns && !rc; k++) {
        int c = cp_stable_find(t, columns[k]);
        if (c >= 0)
            have[nhave++] = c;
        else
            rc = cp_strlist_push(&missing, columns[k]);
    }
    if (!rc)
        rc = cp_stable_gather(t, rows, n, have, nhave, out);
    if (!rc && missing.n) {
        for (size_t i = 0; i < n; i++)
            ids[i] = (uint32_t)((const int32_t *)t->cols[si].v)[rows[i]];
        cp_spot_load_opts lo = o ? *o : (cp_spot_load_opts){0};
        lo.columns = (const char *const *)missing.items;
        lo.ncolumns = (int)missing.n;
        rc = cp_spot_load_rows(d, &lo, ids, n, &extra);
        for (size_t k = 0; k < missing.n && !rc; k++) {
            int c = cp_stable_find(&extra, missing.items[k]);
            if (c < 0) {
                rc = cp_error(CP_EINVAL, "no column '%s' in the spot tables", missing.items[k]);
                break;
            }
            cp_scol *nc = realloc(out->cols, (size_t)(out->ncols + 1) * sizeof *nc);
            if (!nc) {
                rc = cp_error(CP_ENOMEM, "out of memory");
                break;
            }
            out->cols = nc;
            /* extra has exactly n rows; capacities may differ, so grow */
            out->cols[out->ncols++] = extra.cols[c];
            memset(&extra.cols[c], 0, sizeof extra.cols[c]);
            extra.cols[c].name = cp_strdup("");
        }
        /* every column holds at least n rows; n is the safe capacity */
        if (!rc)
            out->cap = n;
    }
    /* requested order */
    if (!rc) {
        cp_scol *ord = cp_malloc_array((size_t)ncolumns + 1, sizeof *ord, "select");
        if (!ord)
            rc = CP_ENOMEM;
        for (int k = 0; k < ncolumns && !rc; k++)
            ord[k] = out->cols[cp_stable_find(out, columns[k])];
        if (!rc) {
            free(out->cols);
            out->cols = ord;
            out->ncols = ncolumns;
        }
    }
    free(have);
    free(ids);
    cp_strlist_free(&missing);
    cp_stable_free(&extra);
    if (rc)
        cp_stable_free(out);
    return rc;
}
