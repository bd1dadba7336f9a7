/* NumPy .npy files (format versions 1.0 to 3.0, C order, little-endian): written by
 * `focus-run encode --dump` and the engine's debug dumps, read by the tests to compare against
 * the reference goldens that tools/reference writes with numpy.save. Only the plain numeric
 * dtypes are handled (float16/32/64, signed and unsigned integers, bool); object arrays,
 * structured dtypes, Fortran order and big-endian data are refused with a clear error. */
#ifndef FOCUS_ENGINE_NPY_H
#define FOCUS_ENGINE_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8

typedef struct npy_array {
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    size_t count; /* product of shape (1 for a 0-d array) */
    float *f32;   /* set by npy_read_f32 */
    int64_t *i64; /* set by npy_read_int */
} npy_array;

/* Writes data[count] as '<f4' / '<i4' / '<i8' with the given shape (ndim 0..NPY_MAX_DIMS). */
int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape);
int npy_write_i32(const char *path, const int32_t *data, int ndim, const int64_t *shape);
int npy_write_i64(const char *path, const int64_t *data, int ndim, const int64_t *shape);

/* Reads a float array ('<f2', '<f4', '<f8') as float32 into out->f32. */
int npy_read_f32(const char *path, npy_array *out);
/* Reads an integer or bool array as int64 into out->i64 ('<u8' values above INT64_MAX are
 * refused). */
int npy_read_int(const char *path, npy_array *out);
void npy_array_free(npy_array *a);

#endif
