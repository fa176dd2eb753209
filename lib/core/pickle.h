/* A restricted pickle virtual machine (protocols 2-5) shared by the torch
 * weight and size-model readers (lib/net/weights.c) and the pandas table
 * reader (lib/table/pickle.c). Not installed.
 *
 * Nothing is ever called or executed: a global is a name looked up in the
 * caller's table, and REDUCE, NEWOBJ, BUILD and BINPERSID on the caller's
 * globals go to the caller's hooks, which model the object in C. numpy's
 * array, dtype and scalar reconstructors (numpy 1 and numpy 2 module paths)
 * and _codecs.encode are modelled here, for callers that list them.
 *
 * Every value is made by an opcode of at least one byte, so values, stack
 * entries and memo slots are bounded by the input's size; every length is
 * checked against the bytes that remain; all memory the VM holds is charged
 * to a budget the caller sets (CP_ELIMIT beyond it). Errors are one line
 * naming the file (cp_error). */
#ifndef CP_PICKLE_H
#define CP_PICKLE_H

#include <stddef.h>
#include <stdint.h>

enum {
    PK_NONE, PK_BOOL, PK_INT, PK_BIGINT, PK_FLOAT, PK_STR, PK_BYTES, PK_TUPLE, PK_LIST, PK_DICT,
    PK_GLOBAL, PK_DTYPE, PK_ARRAY,
    PK_USER /* first kind of a caller's modelled objects */
};

#define PK_MAXDIM 8

typedef struct pk_val pk_val;
struct pk_val {
    uint8_t kind;
    uint8_t dkind, dsize, swap; /* DTYPE, ARRAY: 'f' 'i' 'u' 'b' 'O' (ARRAY: 0 until BUILD), item bytes, big-endian */
    uint8_t fortran, ndim;      /* ARRAY */
    union {
        int64_t i;              /* INT, BOOL; GLOBAL: its id in the caller's table */
        double f;               /* FLOAT */
    };
    const uint8_t *s;           /* STR, BYTES, BIGINT (little-endian two's complement); ARRAY data */
    size_t n;
    pk_val **items;             /* TUPLE, LIST (sets too), DICT as key, value pairs */
    uint32_t ni, cap;
    int64_t *shape;             /* ARRAY: ndim sizes */
    void *x;                    /* ARRAY of objects: the LIST of its items; caller kinds: their record */
};

/* Global ids below PK_G_USER are modelled here; a caller's own start there. */
enum {
    PK_G_NP_RECONSTRUCT = 1, PK_G_NP_NDARRAY, PK_G_NP_DTYPE, PK_G_NP_FROMBUFFER, PK_G_NP_SCALAR,
    PK_G_ENCODE, PK_G_USER = 64
};

typedef struct pk_global {
    const char *mod, *name;
    int id;
} pk_global;

/* numpy's reconstructors under numpy 1 (numpy.core) and numpy 2 (numpy._core). */
#define PK_NUMPY_GLOBALS                                                                          \
    {"numpy.core.multiarray", "_reconstruct", PK_G_NP_RECONSTRUCT},                               \
    {"numpy._core.multiarray", "_reconstruct", PK_G_NP_RECONSTRUCT},                              \
    {"numpy", "ndarray", PK_G_NP_NDARRAY}, {"numpy", "dtype", PK_G_NP_DTYPE},                     \
    {"numpy.core.numeric", "_frombuffer", PK_G_NP_FROMBUFFER},                                    \
    {"numpy._core.numeric", "_frombuffer", PK_G_NP_FROMBUFFER},                                   \
    {"numpy.core.multiarray", "scalar", PK_G_NP_SCALAR},                                          \
    {"numpy._core.multiarray", "scalar", PK_G_NP_SCALAR}

typedef struct pk_vm pk_vm;

/* What one reader accepts. A NULL hook refuses its opcode. */
typedef struct pk_caller {
    const pk_global *globals;
    size_t nglobals;
    const char *allows;  /* for the refusal of any other global */
    const char *what;    /* what the reader reads, for an opcode it refuses */
    int native_only;     /* refuse big-endian and Fortran-ordered numpy arrays */
    /* fn is one of the caller's globals; newobj: NEWOBJ / NEWOBJ_EX */
    int (*reduce)(pk_vm *m, const pk_val *fn, const pk_val *args, int newobj, pk_val **out);
    int (*build)(pk_vm *m, pk_val *obj, const pk_val *state); /* obj not numpy's */
    int (*persid)(pk_vm *m, const pk_val *pid, pk_val **out);
} pk_caller;

struct pk_vm {
    const char *path;
    const pk_caller *c;
    const uint8_t *p, *end, *base;
    size_t budget;              /* bytes the VM may still allocate */
    int err;                    /* why the last pk_new or pk_alloc gave NULL */
    pk_val **st;                /* private from here */
    size_t nst, capst;
    size_t *marks, nmarks, capmarks;
    pk_val **memo;
    size_t nmemo, capmemo;
    void **owned;               /* pk_alloc buffers, value blocks among them */
    size_t nowned, capowned;
    pk_val *block;              /* values are taken from here */
    size_t used;
    pk_val *none, *yes, *no, *empty;
};

/* The memory a reader lets the VM hold for an input of n bytes. */
#define PK_BUDGET(n) (64 * (size_t)(n) + ((size_t)1 << 20))

/* Reads n bytes at p; budget bounds the memory the VM may hold. */
void pk_init(pk_vm *m, const char *path, const pk_caller *c, const uint8_t *p, size_t n, size_t budget);
/* One pickle from m->p: *top is what STOP leaves and m->p points past it.
 * Values stay valid until pk_free, across runs. */
int pk_run(pk_vm *m, pk_val **top);
void pk_free(pk_vm *m);

/* For hooks: a new value, NULL with the error set and its code in m->err. */
pk_val *pk_new(pk_vm *m, int kind);
/* Zeroed, charged memory freed by pk_free; NULL as pk_new. */
void *pk_alloc(pk_vm *m, size_t n);
int pk_add(pk_vm *m, pk_val *c, pk_val *item);
/* cp_error(code, "<path>: <fmt>", ...). */
int pk_fail(const pk_vm *m, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

int pk_str_is(const pk_val *v, const char *s);
/* The value for a string key of a DICT, or NULL. */
const pk_val *pk_get(const pk_val *dict, const char *key);
/* An INT or BOOL: 1 and *out; else 0. */
int pk_int(const pk_val *v, int64_t *out);
/* Elements of a built ARRAY. */
size_t pk_numel(const pk_val *a);
/* Element i of a built numeric ARRAY as a FLOAT, INT or BOOL in *out;
 * 0 for a uint64 beyond int64. */
int pk_elem(const pk_val *a, size_t i, pk_val *out);

#endif
