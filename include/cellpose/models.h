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

/* ---- Size models (Cellpose 3's automatic diameter) ---------------------- */

/* A size model: the linear regression from a network's style vector to the
 * log of the object diameter, written by Cellpose 3's train_size beside the
 * weights. diam_style = max(5, exp(A . (style - smean) + ln(diam_mean) + ymean)). */
typedef struct cp_size_model {
    int nstyle;          /* length of A and smean (256 for CPnet) */
    double *A;           /* float64 in the file (float32 accepted) */
    float *smean;        /* float32 in the file */
    double diam_mean;    /* the size model's own diam_mean */
    float ymean;         /* float32 in the file (a Python float accepted) */
} cp_size_model;

/* Read a size file: an .npy holding the pickled dict {A, smean, diam_mean,
 * ymean} (np.save, numpy 1 or 2 module names). The pickle is interpreted by
 * the weight reader's restricted unpickler, never executed. Errors name the
 * file; values that cannot be a size model (lengths differ, diam_mean not
 * positive, non-finite numbers) are refused. */
int cp_size_model_load(const char *path, cp_size_model **out);
void cp_size_model_free(cp_size_model *sm);
/* Write a size file as Cellpose's np.save of the dict does with numpy 1.x
 * (.npy v1.0, a 0-d object array, protocol-3 pickle, byte for byte as numpy
 * 1.24): A float64, smean float32, diam_mean a Python float, ymean a numpy
 * float32 scalar, so np.load(path, allow_pickle=True).item() reads it.
 * Atomic: the file is complete or absent. */
int cp_size_model_save(const cp_size_model *sm, const char *path);

/* Where Cellpose keeps the size model of a resolved model: beside the weights,
 * size_cyto3.npy for cyto3, size_<file>torch_0.npy for cyto, cyto2 and
 * nuclei, and the weight file's path + "_size.npy" (X.pth -> X.pth_size.npy)
 * for anything else. *path (free it) is set even when the file is missing;
 * then the call fails with CP_EIO and a message naming it. The built-in
 * model's size model is compiled in: *path is "builtin:cptools_nuclei_size",
 * which cp_size_model_load reads from memory. Cellpose-SAM has no size
 * model (CP_EUNSUPPORTED, *path NULL). */
int cp_size_model_path(const cp_model_ref *ref, char **path);

/* The regression on one image's style (nstyle floats, L2-normalised), in
 * Cellpose's arithmetic: style - smean in float32, the rest in float64, the
 * result clipped below at 5. A result of 0 or NaN gives diam_mean, as
 * Cellpose's SizeModel.eval does. */
double cp_size_model_predict(const cp_size_model *sm, const float *style);

#ifdef __cplusplus
}
#endif
#endif
