/* Thrift compact protocol, read side only: what Parquet's metadata needs.
 * A cursor never reads past its end; the first failure sticks (err != 0) and
 * every later read returns zeros, so parsers check once per structure. */
#ifndef CP_SPOTS_THRIFT_H
#define CP_SPOTS_THRIFT_H

#include <stddef.h>
#include <stdint.h>

enum {
    TT_STOP = 0, TT_TRUE = 1, TT_FALSE = 2, TT_BYTE = 3, TT_I16 = 4, TT_I32 = 5, TT_I64 = 6,
    TT_DOUBLE = 7, TT_BINARY = 8, TT_LIST = 9, TT_SET = 10, TT_MAP = 11, TT_STRUCT = 12
};

typedef struct tcur {
    const uint8_t *p, *end;
    int err;          /* 0, or 1 after a read past the end or a malformed value */
    int depth;        /* nesting, bounded */
    int16_t last[33]; /* last field id per struct level */
} tcur;

void tc_init(tcur *c, const uint8_t *p, size_t n);
uint64_t tc_varint(tcur *c);
int64_t tc_zigzag(tcur *c);
/* Next field of the current struct: 0 at its end (STOP), else 1 with *id and
 * *type (TT_TRUE/TT_FALSE carry the boolean value). */
int tc_field(tcur *c, int16_t *id, int *type);
void tc_struct_begin(tcur *c);
void tc_struct_end(tcur *c);
/* A list/set header: element count (at most the bytes left) and type. */
uint32_t tc_list(tcur *c, int *etype);
/* Binary/string: pointer into the buffer and length. */
const uint8_t *tc_binary(tcur *c, size_t *n);
int64_t tc_int(tcur *c, int type); /* any integer type, or a boolean */
void tc_skip(tcur *c, int type);

#endif
