/* libstdc++'s std::sort (introsort, GCC's bits/stl_algo.h and stl_heap.h)
 * written out in C for one comparator: seeds by count, ascending. torch 1.13's
 * CPU argsort (stable=False) is std::sort over (value, index) pairs comparing
 * values only, so the order it gives to equal counts is this algorithm's:
 * median-of-three pivot moved to the front, unguarded Hoare partition,
 * recursion on the right part, depth limit 2*floor(log2 n) then heapsort,
 * and a final insertion sort (threshold 16). Reproduced step for step. */
#include "dynamics/internal.h"

#define S_THRESHOLD 16

static inline int less(const dyn_seed *a, const dyn_seed *b)
{
    return a->count < b->count;
}

static inline void swap(dyn_seed *a, dyn_seed *b)
{
    dyn_seed t = *a;
    *a = *b;
    *b = t;
}

/* ---- heap (stl_heap.h) ---- */
static void push_heap(dyn_seed *first, ptrdiff_t hole, ptrdiff_t top, dyn_seed value)
{
    ptrdiff_t parent = (hole - 1) / 2;
    while (hole > top && less(first + parent, &value)) {
        first[hole] = first[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    first[hole] = value;
}

static void adjust_heap(dyn_seed *first, ptrdiff_t hole, ptrdiff_t len, dyn_seed value)
{
    const ptrdiff_t top = hole;
    ptrdiff_t child = hole;
    while (child < (len - 1) / 2) {
        child = 2 * (child + 1);
        if (less(first + child, first + (child - 1)))
            child--;
        first[hole] = first[child];
        hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
        child = 2 * (child + 1);
        first[hole] = first[child - 1];
        hole = child - 1;
    }
    push_heap(first, hole, top, value);
}

static void make_heap(dyn_seed *first, dyn_seed *last)
{
    ptrdiff_t len = last - first;
    if (len < 2)
        return;
    ptrdiff_t parent = (len - 2) / 2;
    for (;;) {
        dyn_seed value = first[parent];
        adjust_heap(first, parent, len, value);
        if (parent == 0)
            return;
        parent--;
    }
}

static void pop_heap(dyn_seed *first, dyn_seed *last, dyn_seed *result)
{
    dyn_seed value = *result;
    *result = *first;
    adjust_heap(first, 0, last - first, value);
}

/* std::__partial_sort(first, last, last): heap_select then sort_heap. */
static void heap_sort(dyn_seed *first, dyn_seed *last)
{
    make_heap(first, last);
    while (last - first > 1) {
        --last;
        pop_heap(first, last, last);
    }
}

/* ---- introsort ---- */
static void move_median_to_first(dyn_seed *result, dyn_seed *a, dyn_seed *b, dyn_seed *c)
{
    if (less(a, b)) {
        if (less(b, c))
            swap(result, b);
        else if (less(a, c))
            swap(result, c);
        else
            swap(result, a);
    } else if (less(a, c)) {
        swap(result, a);
    } else if (less(b, c)) {
        swap(result, c);
    } else {
        swap(result, b);
    }
}

static dyn_seed *unguarded_partition(dyn_seed *first, dyn_seed *last, const dyn_seed *pivot)
{
    for (;;) {
        while (less(first, pivot))
            ++first;
        --last;
        while (less(pivot, last))
            --last;
        if (!(first < last))
            return first;
        swap(first, last);
        ++first;
    }
}

static dyn_seed *unguarded_partition_pivot(dyn_seed *first, dyn_seed *last)
{
    dyn_seed *mid = first + (last - first) / 2;
    move_median_to_first(first, first + 1, mid, last - 1);
    return unguarded_partition(first + 1, last, first);
}

static void introsort_loop(dyn_seed *first, dyn_seed *last, ptrdiff_t depth_limit)
{
    while (last - first > S_THRESHOLD) {
        if (depth_limit == 0) {
            heap_sort(first, last);
            return;
        }
        --depth_limit;
        dyn_seed *cut = unguarded_partition_pivot(first, last);
        introsort_loop(cut, last, depth_limit);
        last = cut;
    }
}

static void unguarded_linear_insert(dyn_seed *last)
{
    dyn_seed val = *last;
    dyn_seed *next = last - 1;
    while (less(&val, next)) {
        *last = *next;
        last = next;
        --next;
    }
    *last = val;
}

static void insertion_sort(dyn_seed *first, dyn_seed *last)
{
    if (first == last)
        return;
    for (dyn_seed *i = first + 1; i != last; ++i) {
        if (less(i, first)) {
            dyn_seed val = *i;
            for (dyn_seed *j = i; j != first; --j)
                *j = *(j - 1);
            *first = val;
        } else {
            unguarded_linear_insert(i);
        }
    }
}

static void final_insertion_sort(dyn_seed *first, dyn_seed *last)
{
    if (last - first > S_THRESHOLD) {
        insertion_sort(first, first + S_THRESHOLD);
        for (dyn_seed *i = first + S_THRESHOLD; i != last; ++i)
            unguarded_linear_insert(i);
    } else {
        insertion_sort(first, last);
    }
}

static ptrdiff_t floor_log2(size_t n)
{
    ptrdiff_t k = 0;
    while (n > 1) {
        n >>= 1;
        k++;
    }
    return k;
}

void dyn_stdsort_seeds(dyn_seed *a, size_t n)
{
    if (n == 0)
        return;
    introsort_loop(a, a + n, floor_log2(n) * 2);
    final_insertion_sort(a, a + n);
}
