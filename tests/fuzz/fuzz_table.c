/* Spot tables: CSV/TSV, pandas pickles and Parquet (thrift footer, pages,
 * every codec), chosen by magic bytes as a user's file name would; text is
 * also read as a dye ratio matrix (spotquery ratios). */
#include <stdlib.h>
#include <string.h>

#include "cellpose/cellpose.h"
#include "fuzz.h"

static const char *suffix_of(const uint8_t *d, size_t n)
{
    if (n >= 4 && !memcmp(d, "PAR1", 4))
        return ".parquet";
    if (n >= 1 && d[0] == 0x80) /* pickle protocol 2+ */
        return ".pkl";
    if (n >= 2 && d[0] == 0x1f && d[1] == 0x8b)
        return ".csv.gz";
    return n % 2 ? ".tsv" : ".csv";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = fuzz_file(data, size, suffix_of(data, size));
    cp_stable t;
    if (cp_spot_table_read(p, NULL, &t) == CP_OK) {
        char buf[512];
        for (int c = 0; c < t.ncols; c++)
            for (size_t r = 0; r < t.nrows && r < 64; r++)
                cp_scol_format(&t.cols[c], r, (int)(r & 1), buf, sizeof buf);
        cp_stable_free(&t);
    }
    cp_strlist names = {0};
    if (cp_stable_read_header(p, &names) == CP_OK)
        cp_strlist_free(&names);
    double *m = NULL;
    int rows, cols;
    if (cp_spot_read_ratios(p, &m, &rows, &cols) == CP_OK)
        free(m);
    return 0;
}
