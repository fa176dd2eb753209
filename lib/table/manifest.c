/* Run manifests: one JSON record per line. Appended lines go out in one
 * write(2) on an O_APPEND descriptor, so jobs sharing a manifest never
 * interleave inside a line; a replaced manifest appears only when complete. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cellpose/table.h"
#include "core/internal.h"

int cp_manifest_open(cp_manifest *m, const char *path, int append)
{
    memset(m, 0, sizeof *m);
    m->fd = m->at.fd = -1;
    m->append = append;
    if (append) {
        m->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
        if (m->fd < 0)
            return cp_error(CP_EIO, "%s: cannot open manifest: %s", path, strerror(errno));
    } else {
        int rc = cp_atomic_open(&m->at, path);
        if (rc)
            return rc;
    }
    m->path = cp_strdup(path);
    if (!m->path) {
        cp_manifest_abort(m);
        return CP_ENOMEM;
    }
    pthread_mutex_init(&m->lock, NULL);
    return CP_OK;
}

int cp_manifest_write(cp_manifest *m, const char *json, size_t n)
{
    char *line = malloc(n + 1);
    if (!line)
        return cp_error(CP_ENOMEM, "out of memory writing the manifest");
    memcpy(line, json, n);
    line[n] = '\n';
    pthread_mutex_lock(&m->lock);
    int ok = m->append ? write(m->fd, line, n + 1) == (ssize_t)(n + 1)
                       : fwrite(line, 1, n + 1, m->at.fp) == n + 1;
    int err = errno;
    pthread_mutex_unlock(&m->lock);
    free(line);
    if (!ok)
        return cp_error(CP_EIO, "%s: manifest write failed: %s", m->path, strerror(err));
    return CP_OK;
}

int cp_manifest_close(cp_manifest *m)
{
    int rc = CP_OK;
    if (m->append) {
        if (m->fd >= 0 && close(m->fd))
            rc = cp_error(CP_EIO, "%s: manifest write failed: %s", m->path, strerror(errno));
    } else if (m->path) {
        rc = cp_atomic_commit(&m->at);
    }
    if (m->path)
        pthread_mutex_destroy(&m->lock);
    free(m->path);
    memset(m, 0, sizeof *m);
    m->fd = m->at.fd = -1;
    return rc;
}

void cp_manifest_abort(cp_manifest *m)
{
    if (!m->append && m->at.tmp_path)
        cp_atomic_abort(&m->at);
    else if (m->fd >= 0)
        close(m->fd);
    if (m->path)
        pthread_mutex_destroy(&m->lock);
    free(m->path);
    memset(m, 0, sizeof *m);
    m->fd = m->at.fd = -1;
}
