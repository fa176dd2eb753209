#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

static _Thread_local char errbuf[1024];

int cp_error(int code, const char *fmt, ...)
{
    /* formatted aside first: callers may wrap the last message (cp_errmsg())
     * in the new one, and vsnprintf must not read the buffer it writes */
    char msg[sizeof errbuf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(errbuf, msg, sizeof msg);
    return code;
}

const char *cp_errmsg(void) { return errbuf; }

const char *cp_strstatus(int status)
{
    switch (status) {
    case CP_OK: return "success";
    case CP_EIO: return "I/O error";
    case CP_EFORMAT: return "bad format";
    case CP_EUNSUPPORTED: return "unsupported";
    case CP_ELIMIT: return "size limit exceeded";
    case CP_ENOMEM: return "out of memory";
    case CP_EINVAL: return "invalid argument";
    case CP_EMODEL: return "model error";
    case CP_EINTR: return "interrupted";
    case CP_EEXIST: return "output exists";
    default: return "unknown error";
    }
}

const char *cp_version(void) { return CP_VERSION_STRING; }

int cp_mul_overflow(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 1;
    *out = a * b;
    return 0;
}

void *cp_malloc(size_t n, const char *what)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        cp_error(CP_ENOMEM, "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *cp_calloc(size_t count, size_t size, const char *what)
{
    size_t n;
    if (cp_mul_overflow(count, size, &n)) {
        cp_error(CP_ENOMEM, "size overflow allocating %s", what);
        return NULL;
    }
    void *p = calloc(n ? count : 1, n ? size : 1);
    if (!p)
        cp_error(CP_ENOMEM, "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *cp_malloc_array(size_t count, size_t size, const char *what)
{
    size_t n;
    if (cp_mul_overflow(count, size, &n)) {
        cp_error(CP_ENOMEM, "size overflow allocating %s", what);
        return NULL;
    }
    return cp_malloc(n, what);
}

char *cp_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = cp_malloc(n, "string");
    if (p)
        memcpy(p, s, n);
    return p;
}
