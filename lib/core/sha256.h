/* SHA-256 (FIPS 180-4), for checksums of model files and test data. */
#ifndef CP_SHA256_H
#define CP_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_sha256 {
    uint32_t h[8];
    uint64_t len;       /* bytes hashed so far */
    uint8_t buf[64];
    size_t nbuf;
} cp_sha256;

void cp_sha256_init(cp_sha256 *s);
void cp_sha256_update(cp_sha256 *s, const void *data, size_t n);
/* Finish and write 64 lowercase hex digits + NUL into hex[65]. */
void cp_sha256_hex(cp_sha256 *s, char hex[65]);
/* One-shot convenience. */
void cp_sha256_buf(const void *data, size_t n, char hex[65]);

#ifdef __cplusplus
}
#endif
#endif
