/* Private helpers of lib/table: the column store's internals, field parsing
 * and the sinks the file readers share. */
#ifndef CP_TABLE_INTERNAL_H
#define CP_TABLE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/table.h"

size_t cp_scol_elem_size(cp_scol_type t);
int cp_scol_null_bitmap(cp_scol *c, size_t cap);

/* Field text to numbers. 0 = value, 1 = null token, -1 = not a number. */
int cp_parse_na(const char *s, size_t n);
int cp_parse_f32(const char *s, size_t n, float *out);
int cp_parse_f64(const char *s, size_t n, double *out);
int cp_parse_i64(const char *s, size_t n, int64_t *out);
int cp_parse_bool(const char *s, size_t n, int *out);

/* Bytes the CSV reader takes per block (default 32 MiB). */
extern size_t cp_csv_block;

/* ---- sinks for the binary readers (pickle, Parquet): typed file values into
 * the column store, with the CSV reader's typing (schema by name, else the
 * file's own type), so a table gives the same rows in every format. ---- */
/* Output type of a column whose file type is native (F32 for numbers, BOOL,
 * STR). */
int cp_sbin_col_type(const cp_sread_opts *o, const char *name, int native);
/* 0 = stored, -1 = the value does not fit the column's type. Rows must be
 * below the table's cap; nulls need cp_scol_null_bitmap first (done here). */
int cp_sput_f64(cp_scol *c, size_t cap, size_t row, double v);
int cp_sput_i64(cp_scol *c, size_t cap, size_t row, int64_t v);
int cp_sput_bool(cp_scol *c, size_t cap, size_t row, int v);
int cp_sput_str(cp_scol *c, size_t cap, size_t row, const char *s, size_t n);
int cp_sput_null(cp_scol *c, size_t cap, size_t row);
/* Drop null bitmaps that stayed empty. */
void cp_stable_trim_nulls(cp_stable *t);
/* Whole file, read-only (mmap when it can); bounded by the file's size. */
typedef struct cp_fmap {
    const uint8_t *p;
    size_t n;
    int mapped;
} cp_fmap;
int cp_fmap_open(cp_fmap *m, const char *path);
void cp_fmap_close(cp_fmap *m);

#endif
