/* libcellpose tables: a compact column store (dictionary-encoded strings,
 * int8/int32/int64, bit flags, float32/float64 values), the readers of tabular
 * file formats (CSV/TSV plain or gzip, pandas pickles, Parquet), the one table
 * writer (CSV, TSV, JSON, NDJSON, Parquet) every command's tables go through,
 * table merging and run manifests (one JSON line per input). */
#ifndef CELLPOSE_TABLE_H
#define CELLPOSE_TABLE_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>

#include "cellpose/core.h"
#include "cellpose/files.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- column store ------------------------------------------------------ */

typedef enum cp_scol_type {
    CP_SCOL_STR = 0, /* int32 dictionary code per row, -1 = null */
    CP_SCOL_I32,     /* int32, nulls in the null bitmap */
    CP_SCOL_I8,      /* int8, nulls in the null bitmap */
    CP_SCOL_BOOL,    /* one bit per row, nulls in the null bitmap */
    CP_SCOL_F32,     /* float, NaN = null */
    CP_SCOL_I64,     /* results only (counts) */
    CP_SCOL_F64      /* results only (percentages) */
} cp_scol_type;

/* Interned strings; codes count from 0 in first-appearance order. */
typedef struct cp_sdict {
    char **s;
    int32_t n, cap;
    int32_t *slots;   /* open addressing, -1 = empty */
    uint32_t nslots;
} cp_sdict;

typedef struct cp_scol {
    char *name;
    cp_scol_type type;
    void *v;          /* values, layout by type (BOOL: bit i of byte i/8) */
    uint8_t *nulls;   /* bit set = null; NULL while the column has none */
    cp_sdict dict;    /* CP_SCOL_STR */
    int json_numbers; /* STR: print number-looking strings unquoted in JSON */
} cp_scol;

typedef struct cp_stable {
    size_t nrows, cap;
    int ncols;
    cp_scol *cols;
} cp_stable;

void cp_stable_free(cp_stable *t);
/* Index of the column called name, or -1. */
int cp_stable_find(const cp_stable *t, const char *name);
/* Append an empty column (values for the current nrows, all null). */
int cp_stable_add_col(cp_stable *t, const char *name, cp_scol_type type);
/* Make room for at least n rows in every column. */
int cp_stable_reserve(cp_stable *t, size_t n);
/* Append the rows of src (same column names and types) to dst; src is
 * emptied (moved when dst is empty). */
int cp_stable_append(cp_stable *dst, cp_stable *src);
/* A new table with the given rows of src (and only cols[], or all if NULL). */
int cp_stable_gather(const cp_stable *src, const uint32_t *rows, size_t n,
                     const int *cols, int ncols, cp_stable *out);

int cp_sdict_intern(cp_sdict *d, const char *s, size_t len, int32_t *code);
/* Code of s, or -1 when absent. */
int32_t cp_sdict_find(const cp_sdict *d, const char *s);
void cp_sdict_free(cp_sdict *d);

int cp_scol_is_null(const cp_scol *c, size_t i);
void cp_scol_set_null(cp_scol *c, size_t i); /* I8/I32/I64/BOOL: only once the column has its null bitmap */
int cp_scol_get_bool(const cp_scol *c, size_t i);
void cp_scol_set_bool(cp_scol *c, size_t i, int v);
/* Numeric value (NaN when null or a string column). */
double cp_scol_num(const cp_scol *c, size_t i);
/* String value of a STR column (NULL when null). */
const char *cp_scol_str(const cp_scol *c, size_t i);

/* ---- table readers: one per file format (CSV/TSV, pandas pickle, Parquet),
 * all behind one interface -------------------------------------------------- */

typedef struct cp_sread_opts {
    const char *const *columns; /* only these columns (NULL = all) */
    int ncolumns;
    int optional_columns;       /* 1: absent requested columns are skipped */
    const uint64_t *row_mask;   /* keep data row r iff bit r set (NULL = all) */
    size_t mask_rows;
    int all_str;                /* every column as STR (small metadata files) */
    int threads;                /* 0 = OpenMP default */
    /* Schema: the type of a column by name, or -1 for the file's own type
     * (binary formats) or the type of its first value (CSV). NULL = none. */
    int (*column_type)(const char *name);
} cp_sread_opts;

typedef struct cp_table_reader {
    const char *name;
    /* 1 when this reader takes that file name ("-" is stdin). */
    int (*match)(const char *path);
    int (*read)(const char *path, const cp_sread_opts *o, cp_stable *out);
    /* Column names in file order. */
    int (*header)(const char *path, cp_strlist *names);
} cp_table_reader;

/* Register another reader (tried before the built-in CSV/TSV one). */
int cp_register_table_reader(const cp_table_reader *r);
/* Read a table with the first reader that matches the name. */
int cp_stable_read(const char *path, const cp_sread_opts *o, cp_stable *out);
/* Column names in file order, appended to an empty list (left empty on failure). */
int cp_stable_read_header(const char *path, cp_strlist *names);
/* 1 if the name is a table some registered reader takes. */
int cp_is_table_name(const char *path);

/* The built-in reader: CSV (comma) or TSV (tab; chosen by a .tsv name or a
 * header with tabs and no commas), plain or gzip, '-' = stdin. Errors name
 * file:line:column. Types come from the schema (column_type) by column name;
 * other columns take the type of their first value. */
extern const cp_table_reader cp_csv_reader;
/* pandas DataFrame pickles (.pkl, .pickle; protocols 2-5, pandas 1.5/2.x,
 * numpy 1/2): a restricted interpreter that models the frame, block and
 * index reconstructors and refuses every other global (nothing executes). */
extern const cp_table_reader cp_pickle_reader;
/* Parquet (.parquet): flat schemas; PLAIN and dictionary encodings; data
 * pages v1 and v2; uncompressed, snappy, gzip and zstd; reads only the
 * column chunks of the requested columns. */
extern const cp_table_reader cp_parquet_reader;

/* ---- the table writer ---------------------------------------------------- */

typedef enum { CP_FMT_CSV = 0, CP_FMT_TSV, CP_FMT_JSON, CP_FMT_NDJSON, CP_FMT_PARQUET } cp_table_format;

/* Python repr of a double: the shortest decimal that reads back to the same
 * value, "inf", "-inf", "nan"; fixed notation with a ".0" for integral values
 * when 1e-4 <= |x| < 1e16, else d.ddde+XX. buf needs 32 bytes. Returns buf. */
char *cp_format_double(double x, char *buf);
/* Shortest %g decimal that reads back to the same float / double. */
int cp_format_f32(char *buf, size_t n, float v);
int cp_format_f64(char *buf, size_t n, double v);
/* Write rows (NULL = all) and columns (NULL = all) of a table. */
int cp_stable_write(FILE *fp, const cp_stable *t, const uint32_t *rows, size_t n, const int *cols,
                    int ncols, cp_table_format fmt);
/* The same as snappy-compressed Parquet (flat schema, PLAIN data pages v1,
 * row groups of 1M rows; columns with nulls OPTIONAL); readable by pandas,
 * polars and arrow. cp_stable_write with CP_FMT_PARQUET calls this. */
int cp_stable_write_parquet(FILE *fp, const cp_stable *t, const uint32_t *rows, size_t n, const int *cols,
                            int ncols);
/* One cell as JSON text / CSV text into buf (numbers round-trip exact). */
int cp_scol_format(const cp_scol *c, size_t row, int json, char *buf, size_t n);


/* Format names "csv", "tsv", "json", "ndjson", "parquet"; -1 when unknown. */
int cp_table_format_parse(const char *name);

/* Row by row, for tables produced as they are measured. Cells are given in
 * column order and a row ends with cp_tw_end_row. CSV: header line, fields
 * quoted when they hold a comma, quote or line break (quotes doubled); TSV:
 * tabs and line breaks in strings become spaces; JSON: an array of objects
 * ("[\n{...},\n{...}\n]\n", "[]\n" when empty), NDJSON: one object per
 * line; keys and strings escaped as Python's json does. Output is buffered
 * and flushed to fp every 64 KiB (fp NULL: kept in memory, see cp_tw_fork).
 * Errors (memory, writing) are kept and returned by cp_tw_end. */
typedef enum {
    CP_FLOATS_SHORTEST = 0, /* %g with the fewest digits that read back ("1", "0.1") */
    CP_FLOATS_PYTHON        /* Python's repr ("1.0", "0.1", "1e-05") */
} cp_float_style;

typedef struct cp_table_writer {
    FILE *fp;
    cp_table_format fmt;          /* CSV, TSV, JSON or NDJSON */
    cp_float_style floats;        /* of cp_tw_num */
    const char *const *cols;      /* column names (borrowed) */
    const char *const *json_keys; /* NULL = cols; "a/b" nests b in object a
                                   * (consecutive columns share objects) */
    int ncols;
    size_t rows;                  /* rows ended so far */
    int field;                    /* cells given in the current row */
    int last;                     /* JSON: column of the last key written in the row, -1 = none */
    char *buf;
    size_t len, cap;
    int err;
} cp_table_writer;

/* Start a table on fp (the CSV/TSV header is written here). */
int cp_tw_begin(cp_table_writer *w, FILE *fp, cp_table_format fmt, cp_float_style floats,
                const char *const *cols, int ncols);
void cp_tw_str(cp_table_writer *w, const char *s);   /* NULL = null */
void cp_tw_int(cp_table_writer *w, long long v);
void cp_tw_num(cp_table_writer *w, double v);        /* non-finite: nan/inf in CSV, null in JSON */
void cp_tw_f32(cp_table_writer *w, float v);         /* shortest float32 digits */
void cp_tw_bool(cp_table_writer *w, int v);          /* True/False, JSON true/false */
void cp_tw_null(cp_table_writer *w);                 /* empty field, JSON null */
void cp_tw_absent(cp_table_writer *w);               /* empty field; JSON leaves the key out */
/* A number kept as text: unquoted in JSON when it is a JSON number. */
void cp_tw_numtext(cp_table_writer *w, const char *s);
void cp_tw_end_row(cp_table_writer *w);
/* A writer in memory that continues w's table at row row0, so rows can be
 * formatted in parallel and joined in order (same bytes for any thread
 * count). cp_tw_join appends child's rows to w and frees child. */
void cp_tw_fork(const cp_table_writer *w, size_t row0, cp_table_writer *child);
void cp_tw_join(cp_table_writer *w, cp_table_writer *child);
/* Close the table (JSON "]"), flush, free; the first error, or CP_OK. */
int cp_tw_end(cp_table_writer *w);
/* Memory writers: the bytes so far (NUL-terminated), and forget them. */
const char *cp_tw_text(const cp_table_writer *w, size_t *len);
void cp_tw_clear(cp_table_writer *w);

/* ---- merging tables of one format (header once) --------------------------- */

typedef struct cp_table_merge {
    FILE *out;
    cp_table_format fmt;
    char *header;       /* CSV/TSV: the first table's header line */
    size_t json_rows;
} cp_table_merge;

void cp_table_merge_begin(cp_table_merge *m, FILE *out, cp_table_format fmt);
/* Append one table written by the table writer; CSV/TSV headers must match
 * the first one (else nothing of that table is written). */
int cp_table_merge_add(cp_table_merge *m, const char *path);
int cp_table_merge_end(cp_table_merge *m);

/* ---- run manifests: one JSON line per input ---------------------------------- */

typedef struct cp_manifest {
    char *path;
    int append;          /* 1: lines appended with O_APPEND (whole lines, also
                          * across processes); 0: the file replaced atomically */
    int fd;
    cp_atomic at;
    pthread_mutex_t lock;
} cp_manifest;

int cp_manifest_open(cp_manifest *m, const char *path, int append);
/* One record (JSON text without the newline); thread-safe. */
int cp_manifest_write(cp_manifest *m, const char *json, size_t n);
/* Close (and commit the replaced file); abort removes it instead. */
int cp_manifest_close(cp_manifest *m);
void cp_manifest_abort(cp_manifest *m);

#ifdef __cplusplus
}
#endif
#endif
