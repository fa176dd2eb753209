/* libcellpose ZIP writer: deflate (zlib) or stored entries, streamed to a FILE*
 * (a pipe is fine: nothing is ever seeked) or to a file written atomically.
 *
 * Archives are reproducible: every entry carries the fixed timestamp
 * 1980-01-01 00:00:00 and mode 0644, entries are written in the order they
 * are added, and no extra field is written unless ZIP64 needs one, so the same
 * entries give byte-identical archives between runs. ZIP64 records are used
 * only when needed (an entry or offset >= 4 GiB, or more than 65534 entries).
 * Each entry's bytes are given in memory, so sizes and CRC-32 go straight into
 * the local header (no data descriptors). */
#ifndef CELLPOSE_ZIP_H
#define CELLPOSE_ZIP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_zip cp_zip;

typedef struct cp_zip_opts {
    /* zlib level 1..9; 0 stores every entry; -1 (or any other value) = 6.
     * An entry that deflate does not shrink is stored. */
    int level;
    /* Write ZIP64 records even when not needed (tests; readers that must cope). */
    int force_zip64;
} cp_zip_opts;

/* Stream an archive to fp (not closed by cp_zip_close). `name` is used in
 * messages ("-" for stdout is fine). opts may be NULL. */
int cp_zip_open_fp(cp_zip **out, FILE *fp, const char *name, const cp_zip_opts *opts);
/* Write an archive to path atomically (temp + rename on cp_zip_close).
 * Refuses (CP_EEXIST) when path exists unless overwrite is set. */
int cp_zip_open(cp_zip **out, const char *path, int overwrite, const cp_zip_opts *opts);

/* Add one entry (a file; name uses '/' separators, no leading '/', no "..").
 * Names must be unique within the archive. */
int cp_zip_add(cp_zip *z, const char *name, const void *data, size_t size);

/* Entries added so far, and bytes written so far. */
size_t cp_zip_count(const cp_zip *z);
uint64_t cp_zip_bytes(const cp_zip *z);

/* Write the central directory, flush, and (for cp_zip_open) rename into
 * place. Frees z in every case; on failure nothing is left under the final
 * name. */
int cp_zip_close(cp_zip *z);
/* Give up: frees z and removes the temporary file (cp_zip_open). A streamed
 * archive is left truncated (without a central directory: readers reject it). */
void cp_zip_abort(cp_zip *z);

/* CRC-32 (the ZIP/PNG/gzip polynomial) of size bytes, continuing from crc
 * (start with 0). */
uint32_t cp_crc32(uint32_t crc, const void *data, size_t size);

#ifdef __cplusplus
}
#endif
#endif
