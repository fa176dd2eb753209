/* libcellpose: Cellpose segmentation, measurement and spot tables in C.
 * Include this header for the whole public API (prefix cp_). */
#ifndef CELLPOSE_CELLPOSE_H
#define CELLPOSE_CELLPOSE_H

#include "cellpose/core.h"
#include "cellpose/image.h"
#include "cellpose/io.h"
#include "cellpose/files.h"
#include "cellpose/cells.h"
#include "cellpose/dynamics.h"
#include "cellpose/imagej.h"
#include "cellpose/measure.h"
#include "cellpose/models.h"
#include "cellpose/net.h"
#include "cellpose/outline.h"
#include "cellpose/preprocess.h"
#include "cellpose/segment.h"
#include "cellpose/table.h"
#include "cellpose/spots.h"
#include "cellpose/train.h"
#include "cellpose/zip.h"
#include "cellpose/zarr.h"
#include "cellpose/blocks.h"

#endif
