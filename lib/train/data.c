/* Training data: image/label pairs, normalised inputs and cached flow targets. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "core/internal.h"

void cp_dataset_opts_init(cp_dataset_opts *o)
{
    memset(o, 0, sizeof *o);
    o->min_masks = 5;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double cp_label_diameter(const uint32_t *labels, size_t n, int *nmasks)
{
    uint32_t maxl = 0;
    for (size_t i = 0; i < n; i++)
        if (labels[i] > maxl)
            maxl = labels[i];
    *nmasks = 0;
    if (!maxl)
        return 0;
    size_t *cnt = calloc((size_t)maxl + 1, sizeof *cnt);
    double *r = malloc(((size_t)maxl + 1) * sizeof *r);
    if (!cnt || !r) {
        free(cnt);
        free(r);
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        cnt[labels[i]]++;
    size_t k = 0;
    /* Cellpose drops the first unique value as background: without a 0 pixel
       that is the smallest label's area */
    int skip = cnt[0] == 0;
    for (uint32_t l = 1; l <= maxl; l++) {
        if (!cnt[l])
            continue;
        if (skip) {
            skip = 0;
            continue;
        }
        r[k++] = sqrt((double)cnt[l]);
    }
    if (!k) {
        free(cnt);
        free(r);
        return 0;
    }
    qsort(r, k, sizeof *r, cmp_double);
    double md = k % 2 ? r[k / 2] : 0.5 * (r[k / 2 - 1] + r[k / 2]);
    *nmasks = (int)k;
    free(cnt);
    free(r);
    return md / (sqrt(M_PI) / 2.0);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int is_label_name(const char *stem)
{
    static const char *const suf[] = {"_masks", "_cp_masks", "_flows", "_seg", "_label", "_labels", "_gt"};
    for (size_t i = 0; i < sizeof suf / sizeof *suf; i++)
        if (ends_with(stem, suf[i]))
            return 1;
    return 0;
}

/* The label file for an image, or NULL. */
static char *find_mask(const char *dir, const char *stem, const cp_dataset_opts *o)
{
    const char *filters[2] = {o->mask_filter ? o->mask_filter : "_masks", o->mask_filter ? NULL : "_cp_masks"};
    const char *img_filter = o->img_filter ? o->img_filter : "_img";
    static const char *const ext[] = {".tif", ".tiff", ".png", ".npy"};
    char base[2][1024];
    int nb = 0;
    snprintf(base[nb++], sizeof base[0], "%s", stem);
    if (*img_filter && ends_with(stem, img_filter))
        snprintf(base[nb++], sizeof base[0], "%.*s", (int)(strlen(stem) - strlen(img_filter)), stem);
    for (int b = nb; b-- > 0;)
        for (int f = 0; f < 2; f++) {
            if (!filters[f])
                continue;
            for (size_t e = 0; e < sizeof ext / sizeof *ext; e++) {
                char name[1200];
                snprintf(name, sizeof name, "%s%s%s", base[b], filters[f], ext[e]);
                char *p = cp_path_join(dir, name);
                if (p && cp_path_exists(p))
                    return p;
                free(p);
            }
        }
    return NULL;
}

static int load_sample(const char *img_path, const char *mask_path, const cp_dataset_opts *o,
                       cp_train_sample *s)
{
    cp_image *img = NULL, *lab = NULL;
    cp_planes *pl = NULL;
    uint32_t *labels = NULL;
    double *mu = NULL;
    int rc;
    /* images as cpseg reads them (PNG alpha dropped, as Cellpose's reader) */
    static const cp_read_opts ropts = {.pages = CP_PAGES_AUTO, .drop_alpha = 1};
    if ((rc = cp_image_read(img_path, &ropts, &img)) || (rc = cp_image_read(mask_path, NULL, &lab)))
        goto done;
    if (lab->width != img->width || lab->height != img->height) {
        rc = cp_error(CP_EFORMAT, "%s: labels are %dx%d but the image %s is %dx%d", mask_path, lab->width,
                      lab->height, img_path, img->width, img->height);
        goto done;
    }
    if (lab->planes != 1 || img->planes != 1) {
        rc = cp_error(CP_EUNSUPPORTED, "%s: training takes 2-D images (this one has %d planes)",
                      lab->planes != 1 ? mask_path : img_path, lab->planes != 1 ? lab->planes : img->planes);
        goto done;
    }
    if ((rc = cp_image_labels_u32(lab, mask_path, &labels)))
        goto done;
    if ((rc = cp_select_channels(img, 0, CP_ARCH_CPNET, o->chan, o->chan2, &pl)) ||
        (rc = cp_normalize(pl, CP_ARCH_CPNET, 1.0, 99.0)))
        goto done;
    int H = img->height, W = img->width;
    size_t n = (size_t)H * W;
    if (!(mu = cp_malloc_array(2 * n, sizeof *mu, "flows")) ||
        !(s->lbl = cp_malloc_array(3 * n, sizeof *s->lbl, "flow targets"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    if ((rc = cp_masks_to_flows(labels, H, W, CP_DYN_V3, o->threads, mu)))
        goto done;
    for (size_t i = 0; i < n; i++) {
        s->lbl[i] = labels[i] ? 1.0f : 0.0f;
        s->lbl[n + i] = (float)mu[i];
        s->lbl[2 * n + i] = (float)mu[n + i];
    }
    s->diameter = cp_label_diameter(labels, n, &s->nmasks);
    if (s->diameter < 5)
        s->diameter = 5;
    s->x = pl->data;
    pl->data = NULL;
    s->height = H;
    s->width = W;
    if (!(s->image_path = cp_strdup(img_path)) || !(s->mask_path = cp_strdup(mask_path)))
        rc = CP_ENOMEM;
done:
    cp_image_free(img);
    cp_image_free(lab);
    cp_planes_free(pl);
    free(labels);
    free(mu);
    return rc;
}

static void sample_free(cp_train_sample *s)
{
    free(s->image_path);
    free(s->mask_path);
    free(s->x);
    free(s->lbl);
    memset(s, 0, sizeof *s);
}

int cp_dataset_load(const char *dir, const cp_dataset_opts *o, cp_dataset **out)
{
    *out = NULL;
    cp_dataset_opts defaults;
    if (!o) {
        cp_dataset_opts_init(&defaults);
        o = &defaults;
    }
    cp_strlist files = {0};
    int rc = cp_list_images(dir, 0, NULL, &files);
    if (rc)
        return rc;
    cp_dataset *d = cp_calloc(1, sizeof *d, "dataset");
    char **imgs = NULL, **masks = NULL;
    size_t np = 0;
    if (!d || !(imgs = cp_calloc(files.n + 1, sizeof *imgs, "pairs")) ||
        !(masks = cp_calloc(files.n + 1, sizeof *masks, "pairs"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < files.n; i++) {
        char *stem = cp_path_stem(files.items[i]);
        if (!stem) {
            rc = CP_ENOMEM;
            goto done;
        }
        if (!is_label_name(stem)) {
            char *m = find_mask(dir, stem, o);
            if (m) {
                imgs[np] = files.items[i];
                masks[np++] = m;
            }
        }
        free(stem);
    }
    if (!np) {
        rc = cp_error(CP_EIO, "%s: no image/label pairs (NAME.ext with NAME%s.tif%s)", dir,
                      o->mask_filter ? o->mask_filter : "_masks", o->mask_filter ? "" : " or NAME_cp_masks.tif");
        goto done;
    }
    if (!(d->s = cp_calloc(np, sizeof *d->s, "dataset"))) {
        rc = CP_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < np; i++) {
        cp_train_sample s = {0};
        if ((rc = load_sample(imgs[i], masks[i], o, &s))) {
            sample_free(&s);
            goto done;
        }
        if (s.nmasks < o->min_masks) {
            d->skipped++;
            sample_free(&s);
            continue;
        }
        d->s[d->n++] = s;
    }
    if (!d->n) {
        rc = cp_error(CP_EINVAL, "%s: every image has fewer than %d masks", dir, o->min_masks);
        goto done;
    }
done:
    for (size_t i = 0; masks && i < np; i++)
        free(masks[i]);
    free(imgs);
    free(masks);
    cp_strlist_free(&files);
    if (rc) {
        cp_dataset_free(d);
        return rc;
    }
    *out = d;
    return CP_OK;
}

void cp_dataset_free(cp_dataset *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        sample_free(&d->s[i]);
    free(d->s);
    free(d);
}
