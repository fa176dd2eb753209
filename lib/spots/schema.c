/* The SeeSpot column schema: what the spot tables' known columns hold,
 * whatever the file format says. */
#include <string.h>

#include "core/internal.h"
#include "spots/spots_internal.h"

int cp_spot_column_type(const char *name)
{
    static const char *str[] = {"chan", "unmixed_chan", NULL};
    static const char *i32[] = {"spot_id", "chan_spot_id", "cell_id", NULL};
    static const char *f32[] = {"z", "y", "x", "z_center", "y_center", "x_center", "dist", "r",
                                "dye_line_dist_ratio", NULL};
    for (int i = 0; str[i]; i++)
        if (!strcmp(name, str[i]))
            return CP_SCOL_STR;
    for (int i = 0; i32[i]; i++)
        if (!strcmp(name, i32[i]))
            return CP_SCOL_I32;
    for (int i = 0; f32[i]; i++)
        if (!strcmp(name, f32[i]))
            return CP_SCOL_F32;
    if (!strcmp(name, "round"))
        return CP_SCOL_I8;
    if (!strcmp(name, "valid_spot") || !strcmp(name, "unmixed_removed") || !strcmp(name, "reassigned"))
        return CP_SCOL_BOOL;
    if (!strncmp(name, "chan_", 5) &&
        (cp_ends_with(name, "_fg") || cp_ends_with(name, "_bg") || cp_ends_with(name, "_intensity")))
        return CP_SCOL_F32;
    return -1;
}

int cp_spot_table_read(const char *path, const cp_sread_opts *o, cp_stable *out)
{
    cp_sread_opts so = {0};
    if (o)
        so = *o;
    so.column_type = cp_spot_column_type;
    return cp_stable_read(path, &so, out);
}

int cp_spot_removed_str(const char *s) { return !s || !*s || strcmp(s, "none") == 0; }
