/* libcellpose model lookup: where Python Cellpose keeps its weights, and the
 * names its users type (cyto3, nuclei, cpsam, ...). */
#ifndef CELLPOSE_MODELS_H
#define CELLPOSE_MODELS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cp_model_ref {
    char *path;          /* weight file to load */
    char *name;          /* the built-in name it was found under, or NULL for a path */
    float diam_mean;     /* Cellpose 3 uses 30 (17 for nuclei) for built-in names
                            instead of the file's value; 0 = use the file's */
} cp_model_ref;

/* Resolve `spec` (a path, or a model name) to a weight file.
 * A spec with a '/' or naming an existing file is a path. A name is looked up
 * in $CELLPOSE_LOCAL_MODELS_PATH, then ~/.cellpose/models, under Cellpose's
 * own file names (nuclei -> nucleitorch_0, cyto2 -> cyto2torch_0, cyto ->
 * cytotorch_0, others as given). spec NULL or "" means $CELLPOSE_MODEL_PATH.
 * Fails with CP_EIO and a message listing where it looked. */
int cp_model_resolve(const char *spec, cp_model_ref *out);
void cp_model_ref_free(cp_model_ref *r);

/* The model shipped with cptools (fluorescent nuclei), used when no model is
 * given or configured. It is compiled into the library: out->path is
 * "builtin:cptools_nuclei", which cp_weights_load / cp_model_load read from
 * memory. cp_model_resolve also maps the names "cptools_nuclei" and
 * "builtin" to it. */
int cp_model_builtin(cp_model_ref *out);

#ifdef __cplusplus
}
#endif
#endif
