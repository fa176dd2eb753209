/* Shared by blocks.c and blocks_merge.c. */
#ifndef CP_BLOCKS_INTERNAL_H
#define CP_BLOCKS_INTERNAL_H

#include <cjson/cJSON.h>

#include "cellpose/blocks.h"

/* workdir/blocks/K (malloc'd). */
char *cp_blocks_dir(const char *workdir, int64_t k);
/* block.json of block k, checked to belong to pl (CP_EIO when absent). */
int cp_blocks_read_block_json(const cp_blocks_plan *pl, const char *workdir, int64_t k, cJSON **out);
/* A text file written atomically, with a final newline. */
int cp_blocks_write_text(const char *path, const char *text);

#endif
