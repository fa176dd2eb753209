/* Private helpers shared by the training files (lib/train). Not installed. */
#ifndef CP_TRAIN_INTERNAL_H
#define CP_TRAIN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cellpose/train.h"

/* Random streams: stream s of epoch e depends only on (seed, e, s), so a
 * resumed run draws what an uninterrupted one would. */
enum { CP_STREAM_TRAIN = 0, CP_STREAM_VAL = 1, CP_STREAM_SIZE = 2, CP_STREAM_SIZE_TEST = 3 };
uint64_t cp_train_stream_seed(uint64_t seed, int epoch, int stream);

/* The samples of one epoch: nper draws with replacement from n images when
 * nper != n (Cellpose's random choice), else a permutation of 0..n-1. */
void cp_train_epoch_order(cp_xoshiro *rng, size_t n, size_t nper, size_t *perm);

#endif
