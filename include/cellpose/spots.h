/* libcellpose spots: SeeSpot HCR spot tables (mixed/unmixed, merged), queried
 * without a server: the SeeSpot column schema, the dataset layout, the mixed
 * <- unmixed merge, filters, seeded sampling, count matrices (by the tables'
 * cell_id or by the cells of a label volume), summaries and Neuroglancer
 * links. Tables, their file formats and their output are
 * cellpose/table.h. */
#ifndef CELLPOSE_SPOTS_H
#define CELLPOSE_SPOTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cellpose/files.h"
#include "cellpose/table.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Schema type of a known SeeSpot column name, or -1 when unknown (the
 * column_type of cp_sread_opts for spot tables). */
int cp_spot_column_type(const char *name);
/* cp_stable_read with the SeeSpot schema (o may be NULL). */
int cp_spot_table_read(const char *path, const cp_sread_opts *o, cp_stable *out);

/* ---- datasets ----------------------------------------------------------- */

typedef struct cp_spot_part {
    char *mixed;      /* table path (a single-table source has only this) */
    char *unmixed;    /* NULL when absent */
    char *ratios;     /* r<N>_ratios.txt or NULL */
    char *summary;    /* round_<N>_summary_stats.csv or NULL */
    char *tile;       /* tile folder name or NULL */
    int round;        /* from the file name, -1 unknown */
    size_t nrows;     /* rows after the last load (for cp_spot_load_rows) */
} cp_spot_part;

typedef struct cp_spot_dataset {
    char *root;       /* dataset folder (NULL for a single table) */
    char *name;       /* base name of root */
    char *manifest;   /* path or NULL */
    cp_strlist channels;      /* spot channels: manifest, else table columns */
    cp_strlist gene_chan, gene_name; /* manifest gene_dict */
    int manifest_round;       /* -1 when absent */
    char *ng_json;    /* phase_correlation_stitching_neuroglancer.json or NULL */
    cp_spot_part *parts;
    int nparts;
    int single;       /* 1: SOURCE was one table file */
    int spooled;      /* 1: stdin copied to a temporary file (removed by free) */
} cp_spot_dataset;

/* A dataset folder (layout of the SeeSpot spec, tiled or not) or one table
 * file. */
int cp_spot_dataset_open(const char *path, cp_spot_dataset *d);
void cp_spot_dataset_free(cp_spot_dataset *d);

typedef struct cp_spot_load_opts {
    const char *const *columns; /* merged columns wanted (NULL = all) */
    int ncolumns;
    const int *rounds;          /* only parts of these rounds (NULL = all) */
    int nrounds;
    int threads;
} cp_spot_load_opts;

/* Read and merge every part: left join mixed <- unmixed on (chan,
 * chan_spot_id), unmixed_removed, reassigned, spot_id = 1.. over all parts.
 * The result always holds spot_id, chan, chan_spot_id, unmixed_chan (when an
 * unmixed table exists), unmixed_removed and reassigned, plus the columns
 * asked for. */
int cp_spot_load(cp_spot_dataset *d, const cp_spot_load_opts *o, cp_stable *out);
/* Only the rows with these spot_ids (sorted, 1-based; after cp_spot_load with
 * the same rounds) and these mixed-table columns. */
int cp_spot_load_rows(cp_spot_dataset *d, const cp_spot_load_opts *o, const uint32_t *spot_ids,
                      size_t n, cp_stable *out);

/* Every merged column name in table order (spot_id first, unmixed-only
 * columns, unmixed_removed and reassigned last), from the table headers. */
int cp_spot_columns(cp_spot_dataset *d, cp_strlist *out);
/* Rows of a loaded table with the given columns, in that order; columns the
 * table lacks are read from the mixed tables for those rows only. */
int cp_spot_select(cp_spot_dataset *d, const cp_spot_load_opts *o, const cp_stable *t, const uint32_t *rows,
                   size_t n, const char *const *columns, int ncolumns, cp_stable *out);

/* 1 when the row's spot was removed by unmixing: no unmixed row, or
 * unmixed_chan null, "none" or "". */
int cp_spot_is_removed(const cp_stable *t, size_t row);

/* Channels known to the dataset; fills from the table's chan/intensity
 * columns when the manifest has none. */
int cp_spot_channels(cp_spot_dataset *d, const cp_stable *t);

/* ---- filters and sampling ---------------------------------------------- */

typedef enum { CP_OP_EQ, CP_OP_NE, CP_OP_LT, CP_OP_LE, CP_OP_GT, CP_OP_GE } cp_op;

typedef struct cp_spot_where {
    char *col;
    cp_op op;
    char *value;
} cp_spot_where;

typedef struct cp_spot_filter {
    int valid_only;
    cp_strlist channels, unmixed_channels, cells; /* empty = any */
    const char *cell_col;      /* column --cell reads; NULL = "cell_id" */
    int reassigned, removed;   /* -1 any, 0 no, 1 yes */
    cp_spot_where *where;      /* all must hold (add with cp_spot_filter_where) */
    int nwhere;
} cp_spot_filter;

void cp_spot_filter_init(cp_spot_filter *f);
void cp_spot_filter_free(cp_spot_filter *f);
/* Parse "COL OP VALUE" (OP one of = == != < <= > >=). */
int cp_spot_where_parse(const char *s, cp_spot_where *w);
/* Add the condition COL OP VALUE (strings copied; VALUE is text, read when
 * the rows are filtered). Numbers compare as pandas compares a Series with a
 * Python literal (numpy 1.x, as SeeSpot): a float literal against a float32
 * column is rounded to float32 first, so 'r > 0.8' leaves out r = 0.8;
 * integer and bool columns compare exactly with any literal (int8 < 300 holds
 * for every row, 2 == 2.5 never). Strings compare by bytes. A null (NaN)
 * passes only !=. A range "lo <= z <= hi" is two conditions. */
int cp_spot_filter_where(cp_spot_filter *f, const char *col, cp_op op, const char *value);
/* Columns the filter reads (appended to names). */
int cp_spot_filter_columns(const cp_spot_filter *f, cp_strlist *names);
/* Rows (0-based) passing every condition, ascending. */
int cp_spot_filter_rows(const cp_stable *t, const cp_spot_filter *f, uint32_t **rows, size_t *n);

typedef enum { CP_SAMPLE_CLASS_BALANCED = 0, CP_SAMPLE_RANDOM = 1 } cp_sample_mode;

/* Pick k of the n rows without repetition (all of them when n <= k),
 * deterministic for a seed; result ascending. class_balanced: k / nclasses
 * from each class of class_col (null is its own class), the shortfall filled
 * at random from the rows not yet picked. */
int cp_spot_sample(const cp_stable *t, const uint32_t *rows, size_t n, size_t k, cp_sample_mode mode,
                   int class_col, uint64_t seed, uint32_t **out, size_t *nout);

/* ---- derived tables ------------------------------------------------------ */

/* All 2-combinations of the sorted channels: columns chan_a, chan_b. */
int cp_spot_pairs(const cp_strlist *channels, cp_stable *out);
/* Ratio matrix file: rows of whitespace separated numbers. */
int cp_spot_read_ratios(const char *path, double **m, int *rows, int *cols);
/* Summary rows of every part's summary CSV (tiles summed by round, channel and
 * min_dist) plus removed_spots and unchanged_spots. CP_EIO when no part has a
 * summary file. */
int cp_spot_summary_files(const cp_spot_dataset *d, const int *rounds, int nrounds, cp_stable *out);
/* The same columns recomputed from a merged table, per round and channel. */
int cp_spot_summary_compute(const cp_spot_dataset *d, const cp_stable *t, cp_stable *out);

typedef struct cp_sankey_link {
    char *source, *target;     /* channel names; target "Removed" */
    int64_t value;
    const char *flow_type;     /* unchanged / reassigned / removed */
    double percentage;         /* rounded to 2 decimals */
} cp_sankey_link;

typedef struct cp_sankey {
    cp_strlist original, final; /* node channels, sorted ("Removed" last) */
    cp_sankey_link *links;
    int nlinks;
    int64_t total, threshold;
} cp_sankey;

int cp_spot_sankey(const cp_stable *t, cp_sankey *s);
/* The links as a table: source, target, value, flow_type, percentage. */
int cp_sankey_table(const cp_sankey *s, cp_stable *out);
void cp_sankey_free(cp_sankey *s);

typedef enum { CP_COUNT_UNMIXED = 0, CP_COUNT_MIXED = 1 } cp_count_by;

/* cell x channel counts over the given rows: column cell_id then one per
 * channel (named by gene when genes is set and the manifest has it). Cells
 * sorted ascending; null cell ids never count, cell 0 only with background. */
int cp_spot_counts(const cp_spot_dataset *d, const cp_stable *t, const uint32_t *rows, size_t n,
                   cp_count_by by, int genes, int background, cp_stable *out);

typedef struct cp_count_opts {
    cp_count_by by;
    int genes;            /* columns named by the manifest gene_dict */
    int background;       /* cell 0 counts */
    const char *cell_col; /* integer column of the cells; NULL = "cell_id" */
    const int64_t *cells; /* a row for each of these too, spots or not (any order) */
    size_t ncells;
} cp_count_opts;

/* cp_spot_counts with the cells taken from any integer column (the first
 * output column has its name and type) and rows for the given cells even
 * without spots. */
int cp_spot_counts_ex(const cp_spot_dataset *d, const cp_stable *t, const uint32_t *rows, size_t n,
                      const cp_count_opts *o, cp_stable *out);

/* ---- spots to the cells of a label volume -------------------------------- */

typedef struct cp_spot_label_opts {
    /* z, y, x: label voxels per unit of the spot coordinates (0 = 1). Integer
     * coordinates are voxel centres in both, so a spot at c falls in label
     * voxel floor(c * scale + 0.5) on each axis. */
    double scale[3];
    int64_t max_voxels;   /* largest region read at once; 0 = 8 Mi */
    const char *coords[3]; /* the z, y, x columns; NULL = "z", "y", "x" */
    /* Called after each region with regions done and their total; a non-zero
     * return stops (CP_EINTR). May be NULL. */
    int (*progress)(void *user, size_t done, size_t total);
    void *user;
} cp_spot_label_opts;

/* Add the int64 column `name` (an error if the table has it): the label
 * under each row's z, y, x (o->coords) in the label volume at path (one
 * channel of integer labels, any file cp_vol_open reads); 0 = background,
 * also for a spot outside the volume or with a null coordinate. The volume
 * is read region by region, each region holding spots once, in z, y, x
 * order: memory is the table and its new column, 8 bytes a row more, and
 * one region. */
int cp_spot_assign_labels(cp_stable *t, const char *path, const cp_spot_label_opts *o, const char *name);

/* Voxel size (z, y, x, micrometres) of the spots' coordinates: the scale of
 * the dataset's first fused channel (image_tile_fusing/fused/channel_<ch>.zarr
 * .zattrs, its last three axes); 1 and *found = 0 when there is none. */
int cp_spot_voxel_size(const cp_spot_dataset *d, double zyx[3], int *found);
/* scale for cp_spot_label_opts from the voxel sizes: the spots' (above) over
 * the label volume's (OME-NGFF scale and unit, or the ImageJ calibration),
 * axis by axis. CP_EINVAL, naming what is missing, when either is unknown or
 * the volume's unit is not a length (nanometre, micrometre or millimetre
 * spellings; no unit = micrometres). */
int cp_spot_label_scale(const cp_spot_dataset *d, const char *path, double scale[3]);

/* Every label > 0 of the volume, ascending (*ids to free); reads the whole
 * volume once, region by region. */
int cp_label_volume_ids(const char *path, const cp_spot_label_opts *o, int64_t **ids, size_t *n);

/* Folders under root: name, modified (UTC "YYYY-MM-DD HH:MM:SS"), has_data;
 * newest first. */
int cp_spot_datasets(const char *root, cp_stable *out);

/* ---- Neuroglancer ------------------------------------------------------ */

typedef struct cp_ng_opts {
    const char *bucket;          /* default "aind-open-data" */
    const char *color;           /* annotation colour, default "#FFFF00" */
    double cross_section_scale;  /* default 1.0 */
    const char *layer_name;      /* default "spots" */
} cp_ng_opts;

/* Neuroglancer state (JSON text, newly allocated) with a point annotation for
 * each given row, position at their mean. */
int cp_spot_ng_state(const cp_spot_dataset *d, const cp_stable *t, const uint32_t *rows, size_t n,
                     const cp_ng_opts *o, char **json);
/* "https://neuroglancer-demo.appspot.com/#!" + percent-encoded JSON. */
char *cp_spot_ng_url(const char *json);
/* s3://<bucket>/<dataset>/image_tile_fusing/fused/channel_<ch>.zarr */
int cp_spot_fused_paths(const cp_spot_dataset *d, const char *bucket, cp_strlist *out);

/* ---- synthetic datasets (tests and benchmarks) --------------------------- */

typedef struct cp_spot_synth_opts {
    uint64_t seed;
    size_t nspots;       /* per round and tile */
    int nchannels;       /* 3 or 5 (488 514 561 [594 638]) */
    int nrounds;         /* rounds 1..nrounds */
    int ntiles;          /* > 1: Tile_X_000i_Y_0000_Z_0000 sub-folders */
    int ncells;
    int gzip;            /* write .csv.gz */
    int manifest_in_derived;
    int with_optional;   /* ratios, summary, neuroglancer JSON, .zattrs */
    double removed_rate, none_rate, null_rate;
} cp_spot_synth_opts;

void cp_spot_synth_defaults(cp_spot_synth_opts *o);
/* Write a dataset folder in the spec layout with CSV tables. */
int cp_spot_synth(const char *dir, const cp_spot_synth_opts *o);

#ifdef __cplusplus
}
#endif
#endif
