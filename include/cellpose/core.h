/* libcellpose core: status codes, error messages, version, atomic output files.
 *
 * Error convention (every public function): return CP_OK (0) on success or a
 * negative-free cp_status code on failure; the message of the last failure in the
 * calling thread is cp_errmsg(). The library never prints and never exits. */
#ifndef CELLPOSE_CORE_H
#define CELLPOSE_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CP_VERSION_MAJOR 0
#define CP_VERSION_MINOR 1
#define CP_VERSION_PATCH 0
#define CP_VERSION_STRING "0.1.0"

typedef enum cp_status {
    CP_OK = 0,
    CP_EIO = 1,          /* missing, unreadable or unwritable file */
    CP_EFORMAT = 2,      /* not the expected format, corrupt or truncated */
    CP_EUNSUPPORTED = 3, /* well-formed but a layout we do not handle */
    CP_ELIMIT = 4,       /* a size beyond the configured limit */
    CP_ENOMEM = 5,       /* allocation failed */
    CP_EINVAL = 6,       /* bad argument or parameter value */
    CP_EMODEL = 7,       /* weights or network failure */
    CP_EINTR = 8,        /* cancelled by the caller */
    CP_EEXIST = 9        /* output exists and overwriting was not asked for */
} cp_status;

/* Message of the last failure in this thread ("" if none). */
const char *cp_errmsg(void);
/* Record a failure for cp_errmsg() and return its code, so code built on the
 * library reports errors the same way:
 * `return cp_error(CP_EIO, "%s: cannot open: %s", path, strerror(errno));` */
int cp_error(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Short name of a status code ("I/O error", "bad format", ...). */
const char *cp_strstatus(int status);
/* Library version string, e.g. "0.1.0". */
const char *cp_version(void);
/* Seconds on a monotonic clock, for timing stages. */
double cp_seconds(void);

/* Upper bound on the pixels (width*height*channels*planes) any reader will
 * allocate; protects against absurd header sizes. Default 2^31 samples
 * (8 GiB as float32). 0 restores the default. Process-wide. */
void cp_set_max_pixels(uint64_t max_samples);
uint64_t cp_get_max_pixels(void);

/* Atomic output: write to a hidden temporary file in the destination's folder,
 * then rename over the destination on commit. Abort (or a crash) never leaves a
 * half-written file under the final name. */
typedef struct cp_atomic {
    FILE *fp;            /* open for writing ("wb") */
    int fd;              /* fp's descriptor */
    char *tmp_path;      /* the temporary file */
    char *final_path;    /* where commit renames it */
} cp_atomic;

int cp_atomic_open(cp_atomic *a, const char *final_path);
/* Flush, close and rename. Returns CP_EIO (and removes the temp) on failure. */
int cp_atomic_commit(cp_atomic *a);
/* Close and remove the temporary file. Safe to call after a failed commit. */
void cp_atomic_abort(cp_atomic *a);
/* Remove every temporary file still open in this process. Async-signal-safe:
 * meant for a SIGINT/SIGTERM handler in a command. */
void cp_atomic_cleanup_all(void);

/* Atomic output folder: filled under a hidden temporary name next to
 * final_path ("<dir>/.<name>.tmp-XXXXXX") and renamed into place on commit, so
 * final_path exists only complete. The temporary folder is flat (files only)
 * and is removed by abort and by cp_atomic_cleanup_all. */
typedef struct cp_atomic_dir {
    char *tmp_path;      /* write the folder's files here */
    char *final_path;
} cp_atomic_dir;

/* Creates missing parent folders. Refuses (CP_EEXIST) when final_path exists
 * unless overwrite is set. */
int cp_atomic_dir_open(cp_atomic_dir *d, const char *final_path, int overwrite);
/* Rename into place; an existing final_path (with overwrite) is moved aside
 * first and deleted after, so the name never shows a half-built folder. */
int cp_atomic_dir_commit(cp_atomic_dir *d);
/* Remove the temporary folder and its files. */
void cp_atomic_dir_abort(cp_atomic_dir *d);

#ifdef __cplusplus
}
#endif
#endif
