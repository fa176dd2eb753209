/* Atomic output files: hidden temp name in the destination folder, renamed on
 * commit, so readers and reruns never see a half-written output. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"

/* Fixed-size registry so a signal handler can unlink temps without locks or
 * allocation. Slots beyond the table are still atomic, just not auto-cleaned. */
#define CP_TMP_SLOTS 256
#define CP_TMP_PATHLEN 4096
static char tmp_slot_path[CP_TMP_SLOTS][CP_TMP_PATHLEN];
static atomic_int tmp_slot_used[CP_TMP_SLOTS];

static int slot_register(const char *path)
{
    if (strlen(path) >= CP_TMP_PATHLEN)
        return -1;
    for (int i = 0; i < CP_TMP_SLOTS; i++) {
        int expect = 0;
        if (atomic_compare_exchange_strong(&tmp_slot_used[i], &expect, 2)) {
            strcpy(tmp_slot_path[i], path);
            atomic_store(&tmp_slot_used[i], 1);
            return i;
        }
    }
    return -1;
}

static void slot_release(const char *path)
{
    for (int i = 0; i < CP_TMP_SLOTS; i++)
        if (atomic_load(&tmp_slot_used[i]) == 1 && strcmp(tmp_slot_path[i], path) == 0) {
            atomic_store(&tmp_slot_used[i], 0);
            return;
        }
}

static mode_t process_umask;
static pthread_once_t umask_once = PTHREAD_ONCE_INIT;
static void read_umask(void)
{
    process_umask = umask(0);
    umask(process_umask);
}

void cp_atomic_cleanup_all(void)
{
    for (int i = 0; i < CP_TMP_SLOTS; i++)
        if (atomic_load(&tmp_slot_used[i]) == 1)
            unlink(tmp_slot_path[i]);
    cp_atomic_dir_cleanup_all();
}

int cp_atomic_open(cp_atomic *a, const char *final_path)
{
    memset(a, 0, sizeof *a);
    a->fd = -1;
    const char *slash = strrchr(final_path, '/');
    size_t dirlen = slash ? (size_t)(slash - final_path) + 1 : 0;
    const char *base = slash ? slash + 1 : final_path;
    size_t n = strlen(final_path) + 16;
    a->tmp_path = cp_malloc(n, "temp path");
    a->final_path = cp_strdup(final_path);
    if (!a->tmp_path || !a->final_path) {
        cp_atomic_abort(a);
        return CP_ENOMEM;
    }
    snprintf(a->tmp_path, n, "%.*s.%s.XXXXXX", (int)dirlen, final_path, base);
    a->fd = mkstemp(a->tmp_path);
    if (a->fd < 0) {
        int e = errno;
        free(a->tmp_path);
        a->tmp_path = NULL;
        cp_atomic_abort(a);
        return cp_error(CP_EIO, "%s: cannot create output: %s", final_path, strerror(e));
    }
    slot_register(a->tmp_path);
    a->fp = fdopen(a->fd, "wb");
    if (!a->fp) {
        int e = errno;
        cp_atomic_abort(a);
        return cp_error(CP_EIO, "%s: cannot open output: %s", final_path, strerror(e));
    }
    return CP_OK;
}

int cp_atomic_commit(cp_atomic *a)
{
    int rc = CP_OK;
    if (!a->fp) {
        cp_atomic_abort(a);
        return cp_error(CP_EIO, "%s: output not open", a->final_path ? a->final_path : "?");
    }
    /* mkstemp gives 0600; outputs should follow the umask like any created file. */
    pthread_once(&umask_once, read_umask);
    if (fchmod(a->fd, 0666 & ~process_umask) != 0) { /* best effort: mode only */ }
    int bad = ferror(a->fp);
    if (fclose(a->fp) != 0 || bad)
        rc = cp_error(CP_EIO, "%s: write failed: %s", a->final_path, strerror(errno));
    a->fp = NULL;
    a->fd = -1;
    if (rc == CP_OK && rename(a->tmp_path, a->final_path) != 0)
        rc = cp_error(CP_EIO, "%s: cannot rename temporary file: %s", a->final_path, strerror(errno));
    if (rc != CP_OK) {
        cp_atomic_abort(a);
        return rc;
    }
    slot_release(a->tmp_path);
    free(a->tmp_path);
    free(a->final_path);
    a->tmp_path = a->final_path = NULL;
    return CP_OK;
}

void cp_atomic_abort(cp_atomic *a)
{
    if (a->fp)
        fclose(a->fp);
    else if (a->fd >= 0)
        close(a->fd);
    if (a->tmp_path) {
        unlink(a->tmp_path);
        slot_release(a->tmp_path);
    }
    free(a->tmp_path);
    free(a->final_path);
    memset(a, 0, sizeof *a);
    a->fd = -1;
}
