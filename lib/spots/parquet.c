/* Parquet reader (placeholder until the real one lands). */
#include <string.h>
#include "cellpose/spots.h"
#include "core/internal.h"
static int pq_match(const char *path) { (void)path; return 0; }
static int pq_read(const char *path, const cp_sread_opts *o, cp_stable *out) { (void)o; (void)out; return cp_error(CP_EUNSUPPORTED, "%s: Parquet not supported", path); }
static int pq_header(const char *path, cp_strlist *n) { (void)n; return cp_error(CP_EUNSUPPORTED, "%s: Parquet not supported", path); }
const cp_table_reader cp_parquet_reader = {"parquet", pq_match, pq_read, pq_header};
