/* Thrift compact protocol decoder (see thrift.h). */
#include <string.h>

#include "table/thrift.h"

void tc_init(tcur *c, const uint8_t *p, size_t n)
{
    memset(c, 0, sizeof *c);
    c->p = p;
    c->end = p + n;
}

static uint8_t byte(tcur *c)
{
    if (c->err || c->p >= c->end) {
        c->err = 1;
        return 0;
    }
    return *c->p++;
}

uint64_t tc_varint(tcur *c)
{
    uint64_t v = 0;
    for (int s = 0; s < 64; s += 7) {
        uint8_t b = byte(c);
        v |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80))
            return c->err ? 0 : v;
    }
    c->err = 1;
    return 0;
}

int64_t tc_zigzag(tcur *c)
{
    uint64_t u = tc_varint(c);
    return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

void tc_struct_begin(tcur *c)
{
    if (c->depth >= 32) {
        c->err = 1;
        return;
    }
    c->last[++c->depth] = 0;
}

void tc_struct_end(tcur *c)
{
    if (c->depth > 0)
        c->depth--;
}

int tc_field(tcur *c, int16_t *id, int *type)
{
    uint8_t b = byte(c);
    if (c->err || b == 0)
        return 0;
    int delta = b >> 4;
    *type = b & 15;
    if (delta)
        *id = (int16_t)(c->last[c->depth] + delta);
    else
        *id = (int16_t)tc_zigzag(c);
    c->last[c->depth] = *id;
    if (*type > TT_STRUCT) {
        c->err = 1;
        return 0;
    }
    return !c->err;
}

uint32_t tc_list(tcur *c, int *etype)
{
    uint8_t b = byte(c);
    uint64_t n = b >> 4;
    *etype = b & 15;
    if (n == 15)
        n = tc_varint(c);
    if (c->err || n > (uint64_t)(c->end - c->p) || *etype > TT_STRUCT) {
        c->err = 1;
        return 0;
    }
    return (uint32_t)n;
}

const uint8_t *tc_binary(tcur *c, size_t *n)
{
    uint64_t len = tc_varint(c);
    if (c->err || len > (uint64_t)(c->end - c->p)) {
        c->err = 1;
        *n = 0;
        return NULL;
    }
    const uint8_t *p = c->p;
    c->p += len;
    *n = (size_t)len;
    return p;
}

int64_t tc_int(tcur *c, int type)
{
    switch (type) {
    case TT_TRUE: return 1;
    case TT_FALSE: return 0;
    case TT_BYTE: return (int8_t)byte(c);
    case TT_I16: case TT_I32: case TT_I64: return tc_zigzag(c);
    default:
        tc_skip(c, type);
        c->err = 1;
        return 0;
    }
}

void tc_skip(tcur *c, int type)
{
    if (c->err)
        return;
    switch (type) {
    case TT_TRUE: case TT_FALSE: return;
    case TT_BYTE: byte(c); return;
    case TT_I16: case TT_I32: case TT_I64: tc_varint(c); return;
    case TT_DOUBLE:
        if (c->end - c->p < 8)
            c->err = 1;
        else
            c->p += 8;
        return;
    case TT_BINARY: {
        size_t n;
        tc_binary(c, &n);
        return;
    }
    case TT_LIST: case TT_SET: {
        int et;
        uint32_t n = tc_list(c, &et);
        if (c->depth >= 32) {
            c->err = 1;
            return;
        }
        c->depth++;
        for (uint32_t i = 0; i < n && !c->err; i++)
            tc_skip(c, et == TT_TRUE || et == TT_FALSE ? TT_BYTE : et);
        c->depth--;
        return;
    }
    case TT_MAP: {
        uint64_t n = tc_varint(c);
        if (n == 0)
            return;
        if (n > (uint64_t)(c->end - c->p)) {
            c->err = 1;
            return;
        }
        uint8_t kv = byte(c);
        int kt = kv >> 4, vt = kv & 15;
        if (c->depth >= 32) {
            c->err = 1;
            return;
        }
        c->depth++;
        for (uint64_t i = 0; i < n && !c->err; i++) {
            tc_skip(c, kt == TT_TRUE || kt == TT_FALSE ? TT_BYTE : kt);
            tc_skip(c, vt == TT_TRUE || vt == TT_FALSE ? TT_BYTE : vt);
        }
        c->depth--;
        return;
    }
    case TT_STRUCT: {
        tc_struct_begin(c);
        int16_t id;
        int t;
        while (!c->err && tc_field(c, &id, &t))
            tc_skip(c, t);
        tc_struct_end(c);
        return;
    }
    default: c->err = 1; return;
    }
}
