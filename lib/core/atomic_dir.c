/* Atomic output folders: the folder counterpart of cp_atomic (atomic.c). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cellpose/files.h"
#include "core/internal.h"

/* Fixed registry, as for files, so a signal handler can remove folders
 * without locks or allocation. */
#define DIR_SLOTS 32
#define DIR_PATHLEN 4096
static char dir_slot_path[DIR_SLOTS][DIR_PATHLEN];
static atomic_int dir_slot_used[DIR_SLOTS];

static void dir_register(const char *path)
{
    if (strlen(path) >= DIR_PATHLEN)
        return;
    for (int i = 0; i < DIR_SLOTS; i++) {
        int expect = 0;
        if (atomic_compare_exchange_strong(&dir_slot_used[i], &expect, 2)) {
            strcpy(dir_slot_path[i], path);
            atomic_store(&dir_slot_used[i], 1);
            return;
        }
    }
}

static void dir_release(const char *path)
{
    for (int i = 0; i < DIR_SLOTS; i++)
        if (atomic_load(&dir_slot_used[i]) == 1 && strcmp(dir_slot_path[i], path) == 0) {
            atomic_store(&dir_slot_used[i], 0);
            return;
        }
}

/* Empty a flat folder and remove it using only async-signal-safe system
 * calls (no opendir: it allocates). */
struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static void remove_flat_dir_signal_safe(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[8192] __attribute__((aligned(8)));
        for (;;) {
            long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
            if (n <= 0)
                break;
            for (long off = 0; off < n;) {
                struct linux_dirent64 *e = (struct linux_dirent64 *)(buf + off);
                if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                    unlinkat(fd, e->d_name, 0);
                off += e->d_reclen;
            }
            lseek(fd, 0, SEEK_SET);
        }
        close(fd);
    }
    rmdir(path);
}

void cp_atomic_dir_cleanup_all(void)
{
    for (int i = 0; i < DIR_SLOTS; i++)
        if (atomic_load(&dir_slot_used[i]) == 1)
            remove_flat_dir_signal_safe(dir_slot_path[i]);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* "<dir>/.<base>.<tag>XXXXXX" created by mkdtemp; NULL (error set) on failure. */
static char *temp_sibling(const char *path, const char *tag)
{
    char *dir = cp_path_dir(path);
    if (!dir)
        return NULL;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t len = strlen(dir) + strlen(base) + strlen(tag) + 16;
    char *t = cp_malloc(len, "temp path");
    if (t) {
        snprintf(t, len, "%s/.%s.%sXXXXXX", dir, base, tag);
        if (!mkdtemp(t)) {
            cp_error(CP_EIO, "%s: cannot create a folder next to it: %s", path, strerror(errno));
            free(t);
            t = NULL;
        }
    }
    free(dir);
    return t;
}

int cp_atomic_dir_open(cp_atomic_dir *d, const char *final_path, int overwrite)
{
    memset(d, 0, sizeof *d);
    char *final = cp_strdup(final_path);
    if (!final)
        return CP_ENOMEM;
    size_t n = strlen(final);
    while (n > 1 && final[n - 1] == '/')
        final[--n] = 0;
    if (!overwrite && cp_path_exists(final)) {
        free(final);
        return cp_error(CP_EEXIST, "%s: exists (use --force to replace it)", final_path);
    }
    char *parent = cp_path_dir(final);
    int rc = parent ? cp_mkdirs(parent) : CP_ENOMEM;
    free(parent);
    char *tmp = rc == CP_OK ? temp_sibling(final, "tmp-") : NULL;
    if (!tmp) {
        free(final);
        return rc != CP_OK ? rc : CP_EIO;
    }
    /* mkdtemp gives 0700; the result should follow the umask like mkdir. */
    mode_t um = umask(0);
    umask(um);
    chmod(tmp, 0777 & ~um);
    dir_register(tmp);
    d->tmp_path = tmp;
    d->final_path = final;
    return CP_OK;
}

void cp_atomic_dir_abort(cp_atomic_dir *d)
{
    if (d->tmp_path) {
        remove_tree(d->tmp_path);
        dir_release(d->tmp_path);
    }
    free(d->tmp_path);
    free(d->final_path);
    memset(d, 0, sizeof *d);
}

int cp_atomic_dir_commit(cp_atomic_dir *d)
{
    if (!d->tmp_path)
        return cp_error(CP_EIO, "output folder not open");
    int rc = CP_OK;
    struct stat st;
    const char *final = d->final_path;
    if (lstat(final, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            char *old = temp_sibling(final, "old-");
            int moved = 0;
            if (!old)
                rc = CP_EIO;
            else if (rename(final, old) != 0)
                rc = cp_error(CP_EIO, "%s: cannot move the old output aside: %s", final, strerror(errno));
            else
                moved = 1;
            if (rc == CP_OK && rename(d->tmp_path, final) != 0) {
                rc = cp_error(CP_EIO, "%s: cannot rename the new output into place: %s", final, strerror(errno));
                if (rename(old, final) == 0)
                    moved = 0;
            }
            if (old && (rc == CP_OK || !moved)) /* never delete the only copy of the old output */
                remove_tree(old);
            free(old);
            if (rc == CP_OK) {
                dir_release(d->tmp_path);
                free(d->tmp_path);
                free(d->final_path);
                memset(d, 0, sizeof *d);
                return CP_OK;
            }
        } else if (unlink(final) != 0) {
            rc = cp_error(CP_EIO, "%s: cannot replace: %s", final, strerror(errno));
        }
    }
    if (rc == CP_OK && rename(d->tmp_path, final) != 0)
        rc = cp_error(CP_EIO, "%s: cannot rename the new output into place: %s", final, strerror(errno));
    if (rc != CP_OK) {
        cp_atomic_dir_abort(d);
        return rc;
    }
    dir_release(d->tmp_path);
    free(d->tmp_path);
    free(d->final_path);
    memset(d, 0, sizeof *d);
    return CP_OK;
}
