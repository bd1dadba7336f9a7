/* engine/npy: round trips, byte-for-byte agreement with numpy.save's format, files numpy wrote
 * (the committed goldens and literal numpy outputs), and the refusals of malformed files. */
#include "tests/unit/check.h"

#include "common/err.h"
#include "engine/npy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_root[512];

static void tmp_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", tmp_root, name);
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

static size_t read_bytes(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* numpy.save's v1.0 header for `dict`: magic, version, length, the dict padded with spaces to
 * a 64-byte boundary, newline. */
static size_t numpy_header(const char *dict, unsigned char *out)
{
    size_t n = strlen(dict);
    size_t total = (10 + n + 1 + 63) / 64 * 64;
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (unsigned char)((total - 10) & 0xff);
    out[9] = (unsigned char)((total - 10) >> 8);
    memcpy(out + 10, dict, n);
    memset(out + 10 + n, ' ', total - 10 - n - 1);
    out[total - 1] = '\n';
    return total;
}

static void test_f32_round_trip(void)
{
    char path[600];
    tmp_path(path, sizeof path, "f32.npy");
    float data[2 * 3 * 4];
    for (int i = 0; i < 24; i++)
        data[i] = (float)i * 0.37f - 3.0f;
    int64_t shape[3] = {2, 3, 4};
    CHECK(npy_write_f32(path, data, 3, shape) == 0);
    npy_array a;
    CHECK(npy_read_f32(path, &a) == 0);
    CHECK(a.ndim == 3 && a.shape[0] == 2 && a.shape[1] == 3 && a.shape[2] == 4 && a.count == 24);
    CHECK(a.f32 && memcmp(a.f32, data, sizeof data) == 0);
    npy_array_free(&a);

    /* 0-d and empty arrays keep their shapes. */
    float one = 42.5f;
    CHECK(npy_write_f32(path, &one, 0, NULL) == 0);
    CHECK(npy_read_f32(path, &a) == 0);
    CHECK(a.ndim == 0 && a.count == 1 && a.f32[0] == 42.5f);
    npy_array_free(&a);
    int64_t empty[2] = {0, 5};
    CHECK(npy_write_f32(path, NULL, 2, empty) == 0);
    CHECK(npy_read_f32(path, &a) == 0);
    CHECK(a.ndim == 2 && a.shape[0] == 0 && a.shape[1] == 5 && a.count == 0);
    npy_array_free(&a);
}

static void test_int_round_trip(void)
{
    char path[600];
    tmp_path(path, sizeof path, "int.npy");
    int32_t v32[5] = {-2147483647 - 1, -1, 0, 49407, 2147483647};
    int64_t shape[1] = {5};
    CHECK(npy_write_i32(path, v32, 1, shape) == 0);
    npy_array a;
    CHECK(npy_read_int(path, &a) == 0);
    CHECK(a.ndim == 1 && a.shape[0] == 5);
    for (int i = 0; i < 5; i++)
        CHECKF(a.i64[i] == v32[i], "element %d: %lld", i, (long long)a.i64[i]);
    npy_array_free(&a);

    int64_t v64[2] = {INT64_MIN, (int64_t)1 << 40};
    int64_t shape2[2] = {1, 2};
    CHECK(npy_write_i64(path, v64, 2, shape2) == 0);
    CHECK(npy_read_int(path, &a) == 0);
    CHECK(a.ndim == 2 && a.i64[0] == INT64_MIN && a.i64[1] == (int64_t)1 << 40);
    /* A float reader refuses integers and vice versa. */
    npy_array b;
    CHECK(npy_read_f32(path, &b) == ERR_FORMAT);
    npy_array_free(&a);
}

/* The files must be what numpy.save writes, so that numpy and any other reader accept them. */
static void test_header_matches_numpy(void)
{
    char path[600];
    tmp_path(path, sizeof path, "hdr.npy");
    unsigned char want[256], got[256];
    float data[6] = {0};
    int64_t s23[2] = {2, 3};
    size_t n = numpy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", want);
    CHECK(n == 128);
    CHECK(npy_write_f32(path, data, 2, s23) == 0);
    CHECK(read_bytes(path, got, sizeof got) == n + sizeof data);
    CHECK(memcmp(got, want, n) == 0);

    int32_t ids[4] = {0};
    int64_t s4[1] = {4};
    n = numpy_header("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", want);
    CHECK(npy_write_i32(path, ids, 1, s4) == 0);
    CHECK(read_bytes(path, got, sizeof got) == n + sizeof ids);
    CHECK(memcmp(got, want, n) == 0);
}

/* Literal numpy.save outputs of the dtypes the goldens may use. */
static void test_reads_numpy_files(void)
{
    char path[600];
    tmp_path(path, sizeof path, "np.npy");
    unsigned char buf[256];
    npy_array a;

    size_t n = numpy_header("{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", buf);
    memcpy(buf + n, "\x00\x3e\x00\xb4\xff\x7b", 6); /* 1.5, -0.25, 65504 */
    write_bytes(path, buf, n + 6);
    CHECK(npy_read_f32(path, &a) == 0);
    CHECK(a.count == 3 && a.f32[0] == 1.5f && a.f32[1] == -0.25f && a.f32[2] == 65504.0f);
    npy_array_free(&a);

    n = numpy_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }", buf);
    double d = -0.1;
    memcpy(buf + n, &d, 8);
    write_bytes(path, buf, n + 8);
    CHECK(npy_read_f32(path, &a) == 0);
    CHECK(a.ndim == 2 && a.f32[0] == (float)-0.1);
    npy_array_free(&a);

    n = numpy_header("{'descr': '|b1', 'fortran_order': False, 'shape': (1, 2), }", buf);
    memcpy(buf + n, "\x01\x00", 2);
    write_bytes(path, buf, n + 2);
    CHECK(npy_read_int(path, &a) == 0);
    CHECK(a.i64[0] == 1 && a.i64[1] == 0);
    npy_array_free(&a);

    n = numpy_header("{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }", buf);
    memcpy(buf + n, "\xfe\xff\x05\x00", 4); /* -2, 5: sign extension */
    write_bytes(path, buf, n + 4);
    CHECK(npy_read_int(path, &a) == 0);
    CHECK(a.i64[0] == -2 && a.i64[1] == 5);
    npy_array_free(&a);

    /* A golden written by tools/reference with numpy. */
    char golden[600];
    snprintf(golden, sizeof golden, "%s/golden/encode/simple/pooled_prompt_embeds.npy",
             fixtures_dir());
    CHECKF(npy_read_f32(golden, &a) == 0, "%s", err_msg());
    CHECK(a.ndim == 2 && a.shape[0] == 1 && a.count == (size_t)a.shape[1]);
    npy_array_free(&a);
}

static void expect_format_error(const char *dict, size_t data_bytes, const char *what)
{
    char path[600];
    tmp_path(path, sizeof path, "bad.npy");
    unsigned char buf[512] = {0};
    size_t n = numpy_header(dict, buf);
    write_bytes(path, buf, n + data_bytes);
    npy_array a;
    int rc = npy_read_f32(path, &a);
    CHECKF(rc == ERR_FORMAT, "%s: rc %d", what, rc);
    CHECKF(strstr(err_msg(), path) != NULL, "%s: message '%s' does not name the file", what,
           err_msg());
}

static void test_refusals(void)
{
    expect_format_error("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16,
                        "fortran order");
    expect_format_error("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8,
                        "big endian");
    expect_format_error("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20,
                        "truncated data");
    expect_format_error("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 28,
                        "trailing data");
    expect_format_error("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", 8,
                        "object dtype");
    expect_format_error("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", 8,
                        "complex dtype");
    expect_format_error("{'fortran_order': False, 'shape': (1,), }", 4, "no descr");
    expect_format_error(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775807, 4), }", 0,
        "shape overflow");

    char path[600];
    tmp_path(path, sizeof path, "magic.npy");
    write_bytes(path, "PK\x03\x04 not numpy at all", 22);
    npy_array a;
    CHECK(npy_read_f32(path, &a) == ERR_FORMAT);
    tmp_path(path, sizeof path, "absent.npy");
    CHECK(npy_read_f32(path, &a) == ERR_MISSING);
    /* A write into a directory that does not exist fails with ERR_IO and names the path. */
    tmp_path(path, sizeof path, "no/such/dir.npy");
    float x = 0;
    int64_t s1[1] = {1};
    CHECK(npy_write_f32(path, &x, 1, s1) == ERR_IO);
    CHECK(strstr(err_msg(), "no/such/dir.npy") != NULL);
}

static void remove_tmp(void)
{
    static const char *const names[] = {"f32.npy", "int.npy", "hdr.npy",
                                        "np.npy",  "bad.npy", "magic.npy"};
    char path[600];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        tmp_path(path, sizeof path, names[i]);
        unlink(path);
    }
    rmdir(tmp_root);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/focus-npy-XXXXXX", base ? base : P_tmpdir);
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 2;
    }
    RUN(test_f32_round_trip);
    RUN(test_int_round_trip);
    RUN(test_header_matches_numpy);
    RUN(test_reads_numpy_files);
    RUN(test_refusals);
    remove_tmp();
    CHECK_DONE();
}
