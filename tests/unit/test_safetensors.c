/* Tests of the safetensors reader: files written here with known contents (every dtype, a
 * 2-shard archive) read back exactly; each kind of malformed file or index is an error whose
 * message names the file and the tensor; every truncation and random header corruption of a
 * valid file is an error, never a crash; the fixture model's archives open. */
#include "engine/safetensors.h"

#include "common/err.h"
#include "tests/unit/check.h"

#include <ftw.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char tmp_root[512];

static void make_tmp(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/focus-st-XXXXXX", base ? base : P_tmpdir);
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        exit(2);
    }
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void tmp_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", tmp_root, name);
}

static void write_bytes(const char *path, const void *data, size_t n)
{
    /* a fresh file rather than a truncated one, which ext4 flushes to disk on every rewrite */
    unlink(path);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

/* Writes an 8-byte length (hlen, or the header's own length when hlen < 0), the header text
 * and ndata bytes of data. */
static void write_st(const char *path, const char *header, long long hlen, const void *data,
                     size_t ndata)
{
    size_t h = strlen(header);
    uint64_t len = hlen < 0 ? h : (uint64_t)hlen;
    size_t n = 8 + h + ndata;
    unsigned char *buf = malloc(n);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(len >> (8 * i));
    memcpy(buf + 8, header, h);
    if (ndata)
        memcpy(buf + 8 + h, data, ndata);
    write_bytes(path, buf, n);
    free(buf);
}

typedef struct tensor_spec {
    const char *name, *dtype;
    int ndim;
    int64_t shape[KN_MAX_DIMS];
    size_t elem;
} tensor_spec;

static size_t spec_bytes(const tensor_spec *t)
{
    size_t n = t->elem;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

/* A well-formed file holding the given tensors, each aligned to 8 bytes, with the header
 * padded with spaces as the reference writer does; byte k of the data section is (k * 7 + 3)
 * mod 251, so every tensor's contents are known. Returns the file size. */
static size_t build_st(const char *path, const tensor_spec *ts, int n, size_t misalign)
{
    json_t *root = json_object();
    json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt"));
    size_t off = misalign;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < ts[i].ndim; d++)
            json_array_append_new(shape, json_integer(ts[i].shape[d]));
        size_t nb = spec_bytes(&ts[i]);
        json_object_set_new(root, ts[i].name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", ts[i].dtype, "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + nb)));
        off += nb;
        if (!misalign)
            off = (off + 7) / 8 * 8;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    size_t h = strlen(text), padded = (h + 7) / 8 * 8;
    char *header = malloc(padded + 1);
    memcpy(header, text, h);
    memset(header + h, ' ', padded - h);
    header[padded] = 0;
    unsigned char *data = malloc(off + 1);
    for (size_t k = 0; k < off; k++)
        data[k] = (unsigned char)((k * 7 + 3) % 251);
    write_st(path, header, -1, data, off);
    free(data);
    free(header);
    free(text);
    json_decref(root);
    return 8 + padded + off;
}

static bool data_matches(const st_entry *e, size_t begin)
{
    const unsigned char *p = e->tensor.data;
    size_t nb = kn_nbytes(&e->tensor);
    for (size_t k = 0; k < nb; k++)
        if (p[k] != (unsigned char)(((begin + k) * 7 + 3) % 251))
            return false;
    return true;
}

static const tensor_spec all_dtypes[] = {
    {"a.f32", "F32", 2, {2, 3}, 4},       {"b.f16", "F16", 1, {5}, 2},
    {"c.bf16", "BF16", 2, {2, 2}, 2},     {"d.e4m3", "F8_E4M3", 1, {3}, 1},
    {"e.e5m2", "F8_E5M2", 1, {3}, 1},     {"f.f64", "F64", 1, {2}, 8},
    {"g.i64", "I64", 1, {2}, 8},          {"h.i32", "I32", 1, {3}, 4},
    {"i.i16", "I16", 1, {2}, 2},          {"j.i8", "I8", 1, {5}, 1},
    {"k.u8", "U8", 3, {1, 2, 3}, 1},      {"l.bool", "BOOL", 1, {2}, 1},
    {"m.scalar", "F32", 0, {0}, 4},       {"n.empty", "F32", 2, {0, 4}, 4},
    {"o.rank5", "BF16", 5, {1, 2, 1, 2, 1}, 2},
};
#define N_ALL ((int)(sizeof all_dtypes / sizeof all_dtypes[0]))

static void test_all_dtypes(void)
{
    char path[2048];
    tmp_path(path, sizeof path, "all.safetensors");
    size_t size = build_st(path, all_dtypes, N_ALL, 0);
    st_archive *a = NULL;
    int rc = st_archive_open_file(path, &a);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc)
        return;
    CHECK(st_count(a) == (size_t)N_ALL);
    CHECK(st_file_bytes(a) == size);
    CHECK(strcmp(st_archive_path(a), path) == 0);
    size_t begin = 0;
    for (int i = 0; i < N_ALL; i++) {
        const tensor_spec *t = &all_dtypes[i];
        const st_entry *e = st_find(a, t->name);
        CHECKF(e != NULL, "%s", t->name);
        if (!e)
            continue;
        CHECK(strcmp(e->name, t->name) == 0);
        CHECK(strcmp(e->file, path) == 0);
        CHECKF(strcmp(kn_dtype_name(e->tensor.dtype), t->dtype) == 0, "%s", t->name);
        CHECK(e->tensor.device == KN_CPU && e->tensor.owned == 0);
        CHECK(e->tensor.ndim == t->ndim);
        for (int d = 0; d < t->ndim; d++)
            CHECK(e->tensor.shape[d] == t->shape[d]);
        CHECK(kn_nbytes(&e->tensor) == spec_bytes(t));
        CHECKF(data_matches(e, begin), "%s", t->name);
        begin = (begin + spec_bytes(t) + 7) / 8 * 8;
    }
    /* entries come back sorted by name, and st_at walks them */
    for (size_t i = 1; i < st_count(a); i++)
        CHECK(strcmp(st_at(a, i - 1)->name, st_at(a, i)->name) < 0);
    CHECK(st_at(a, st_count(a)) == NULL);
    CHECK(st_find(a, "absent") == NULL);
    CHECK(st_find(a, "__metadata__") == NULL);
    st_archive_close(a);
}

/* A writer that does not align tensors still yields aligned data the kernels can read. */
static void test_misaligned_tensor_copied(void)
{
    static const tensor_spec ts[] = {{"a.u8", "U8", 1, {1}, 1}, {"b.f32", "F32", 1, {3}, 4}};
    char path[2048];
    tmp_path(path, sizeof path, "misaligned.safetensors");
    build_st(path, ts, 2, 1);
    st_archive *a = NULL;
    int rc = st_archive_open_file(path, &a);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc)
        return;
    const st_entry *e = st_find(a, "b.f32");
    CHECK(e && (uintptr_t)e->tensor.data % 4 == 0);
    CHECK(e && data_matches(e, 2));
    st_archive_close(a);
}

static void expect_err(int rc, int code, const char *msg_has1, const char *msg_has2)
{
    CHECKF(rc == code, "rc %s, expected %s: %s", err_code_name(rc), err_code_name(code),
           err_msg());
    if (msg_has1)
        CHECKF(strstr(err_msg(), msg_has1) != NULL, "message lacks \"%s\": %s", msg_has1,
               err_msg());
    if (msg_has2)
        CHECKF(strstr(err_msg(), msg_has2) != NULL, "message lacks \"%s\": %s", msg_has2,
               err_msg());
}

/* Writes a file with this header and data and expects opening it to fail with code, naming
 * the file and (when not NULL) the tensor. */
static void bad_header(const char *file, const char *header, long long hlen, size_t ndata,
                       int code, const char *tensor)
{
    char path[2048];
    tmp_path(path, sizeof path, file);
    unsigned char *data = calloc(1, ndata + 1);
    write_st(path, header, hlen, data, ndata);
    free(data);
    st_archive *a = (st_archive *)path; /* any non-NULL value: a failed open must reset it */
    int rc = st_archive_open_file(path, &a);
    expect_err(rc, code, path, tensor);
    CHECK(a == NULL);
}

static void test_truncated_length(void)
{
    char path[2048];
    tmp_path(path, sizeof path, "short.safetensors");
    write_bytes(path, "\x10\x00\x00", 3);
    st_archive *a = NULL;
    expect_err(st_archive_open_file(path, &a), ERR_FORMAT, path, "too short");
    tmp_path(path, sizeof path, "empty.safetensors");
    write_bytes(path, "", 0);
    expect_err(st_archive_open_file(path, &a), ERR_FORMAT, path, "too short");
}

static void test_header_cut(void)
{
    /* the length promises 64 header bytes; the file ends after 20 */
    bad_header("hcut.safetensors", "{\"x\":{\"dtype\":\"F32\"", 64, 0, ERR_FORMAT,
               "larger than the file");
}

static void test_header_length_huge(void)
{
    bad_header("huge.safetensors", "{}", 1LL << 40, 0, ERR_FORMAT, "limit");
    bad_header("huge2.safetensors", "{}", 3, 0, ERR_FORMAT, "larger than the file");
}

static void test_data_cut(void)
{
    bad_header("dcut.safetensors",
               "{\"w.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", -1, 10,
               ERR_FORMAT, "tensor w.weight: data_offsets [0, 16] past the end of the file");
}

static void test_header_not_json(void)
{
    bad_header("notjson.safetensors", "{\"a\": {\"dtype\": ", -1, 0, ERR_FORMAT,
               "not valid JSON");
    bad_header("dupkey.safetensors",
               "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
               "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
               -1, 1, ERR_FORMAT, "not valid JSON");
}

static void test_header_not_object(void)
{
    bad_header("array.safetensors", "[1, 2, 3]", -1, 0, ERR_FORMAT, "not a JSON object");
    bad_header("entry.safetensors", "{\"t.bias\": 5}", -1, 0, ERR_FORMAT, "tensor t.bias");
}

static void test_bad_metadata(void)
{
    bad_header("meta.safetensors", "{\"__metadata__\":{\"format\":1}}", -1, 0, ERR_FORMAT,
               "__metadata__ key \"format\"");
}

static void test_unknown_dtype(void)
{
    bad_header("dtype.safetensors",
               "{\"x.weight\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,2]}}", -1, 2,
               ERR_FORMAT, "tensor x.weight: unknown dtype \"F7\"");
    bad_header("dtype2.safetensors", "{\"x.weight\":{\"shape\":[2],\"data_offsets\":[0,2]}}", -1,
               2, ERR_FORMAT, "tensor x.weight: \"dtype\"");
}

static void test_shape_size_mismatch(void)
{
    bad_header("mismatch.safetensors",
               "{\"m.weight\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,8]}}", -1,
               16, ERR_FORMAT, "tensor m.weight: BF16 shape of 6 elements needs 12 bytes");
    bad_header("overflow.safetensors",
               "{\"o.weight\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,8]}}",
               -1, 16, ERR_FORMAT, "tensor o.weight: element count overflows");
    bad_header("overflow2.safetensors",
               "{\"o.weight\":{\"dtype\":\"F64\",\"shape\":[4294967296,1073741824],"
               "\"data_offsets\":[0,8]}}",
               -1, 16, ERR_FORMAT, "tensor o.weight: byte size overflows");
}

static void test_offsets_bad(void)
{
    bad_header("past.safetensors",
               "{\"p.weight\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[100,104]}}", -1, 8,
               ERR_FORMAT, "tensor p.weight: data_offsets [100, 104] past the end of the file");
    bad_header("reversed.safetensors",
               "{\"r.weight\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", -1, 8,
               ERR_FORMAT, "tensor r.weight: data_offsets [4, 0]");
    bad_header("negoff.safetensors",
               "{\"n.weight\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-4,0]}}", -1, 8,
               ERR_FORMAT, "tensor n.weight: data_offsets");
    bad_header("oneoff.safetensors",
               "{\"n.weight\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4]}}", -1, 8,
               ERR_FORMAT, "tensor n.weight: \"data_offsets\"");
}

static void test_overlap(void)
{
    bad_header("overlap.safetensors",
               "{\"a.w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"z.w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[30,31]},"
               "\"b.w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
               -1, 32, ERR_FORMAT, "tensors a.w [0, 16] and b.w [8, 24] overlap");
    /* a tensor nested inside a longer one, after a third that starts between them */
    bad_header("nested.safetensors",
               "{\"big\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
               "\"mid\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
               "\"late\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[20,22]}}",
               -1, 32, ERR_FORMAT, "big [0, 32] and mid");
    char path[2048];
    tmp_path(path, sizeof path, "emptyok.safetensors");
    unsigned char data[8] = {0};
    /* empty tensors take no bytes, so sharing an offset is not an overlap */
    write_st(path,
             "{\"e1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
             -1, data, 8);
    st_archive *a = NULL;
    int rc = st_archive_open_file(path, &a);
    CHECKF(rc == 0, "%s", err_msg());
    st_archive_close(a);
}

static void test_bad_shape(void)
{
    bad_header("negshape.safetensors",
               "{\"s.weight\":{\"dtype\":\"U8\",\"shape\":[-1,2],\"data_offsets\":[0,0]}}", -1, 4,
               ERR_FORMAT, "tensor s.weight: shape[0] is not a non-negative integer");
    bad_header("realshape.safetensors",
               "{\"s.weight\":{\"dtype\":\"U8\",\"shape\":[2,1.5],\"data_offsets\":[0,3]}}", -1, 4,
               ERR_FORMAT, "tensor s.weight: shape[1] is not a non-negative integer");
    bad_header("strshape.safetensors",
               "{\"s.weight\":{\"dtype\":\"U8\",\"shape\":\"[2]\",\"data_offsets\":[0,2]}}", -1,
               4, ERR_FORMAT, "tensor s.weight: \"shape\"");
    bad_header("rank6.safetensors",
               "{\"s.weight\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
               -1, 4, ERR_FORMAT, "tensor s.weight: rank 6");
}

/* Two shards and an index written as transformers would; extra_json is appended to the
 * weight_map so tests can name tensors or shards that do not exist. */
static const tensor_spec shard1[] = {{"enc.0.w", "BF16", 2, {4, 2}, 2},
                                     {"enc.0.b", "BF16", 1, {4}, 2}};
static const tensor_spec shard2[] = {{"enc.1.w", "BF16", 2, {4, 4}, 2},
                                     {"shared.weight", "F32", 2, {3, 2}, 4}};

static void build_sharded(const char *sub, const char *extra_json, bool list_all)
{
    char path[2048], dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", tmp_root, sub);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    build_st(path, shard1, 2, 0);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    build_st(path, shard2, 2, 0);
    char index[2048];
    snprintf(index, sizeof index,
             "{\"metadata\":{\"total_size\":136},\"weight_map\":{"
             "\"enc.0.w\":\"model-00001-of-00002.safetensors\","
             "\"enc.0.b\":\"model-00001-of-00002.safetensors\","
             "%s\"enc.1.w\":\"model-00002-of-00002.safetensors\"%s%s}}",
             list_all ? "\"shared.weight\":\"model-00002-of-00002.safetensors\"," : "",
             extra_json ? "," : "", extra_json ? extra_json : "");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    write_bytes(path, index, strlen(index));
}

static void test_sharded(void)
{
    build_sharded("sharded", NULL, true);
    char dir[1024], shard[2048];
    snprintf(dir, sizeof dir, "%s/sharded", tmp_root);
    st_archive *a = NULL;
    int rc = st_archive_open(dir, "model", &a);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc)
        return;
    CHECK(st_count(a) == 4);
    CHECK(strstr(st_archive_path(a), "sharded/model.safetensors.index.json") != NULL);
    for (int i = 0; i < 4; i++) {
        const tensor_spec *t = i < 2 ? &shard1[i] : &shard2[i - 2];
        const st_entry *e = st_find(a, t->name);
        CHECKF(e != NULL, "%s", t->name);
        if (!e)
            continue;
        snprintf(shard, sizeof shard, "%s/model-0000%d-of-00002.safetensors", dir, i < 2 ? 1 : 2);
        CHECKF(strcmp(e->file, shard) == 0, "%s in %s", t->name, e->file);
        CHECK(kn_nbytes(&e->tensor) == spec_bytes(t));
        CHECK(data_matches(e, i == 1 ? 16 : i == 3 ? 32 : 0));
    }
    kn_tensor w;
    const int64_t s[2] = {3, 2};
    rc = st_weight(a, "shared.weight", 2, s, &w);
    CHECKF(rc == 0, "%s", err_msg());
    CHECK(w.dtype == KN_F32 && w.ndim == 2 && w.shape[0] == 3 && w.data != NULL);
    st_archive_close(a);
}

static void test_single_file_preferred(void)
{
    char dir[1024], path[2048];
    snprintf(dir, sizeof dir, "%s/single", tmp_root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    build_st(path, shard2, 2, 0);
    st_archive *a = NULL;
    int rc = st_archive_open(dir, "diffusion_pytorch_model", &a);
    CHECKF(rc == 0, "%s", err_msg());
    if (!rc)
        CHECK(strcmp(st_archive_path(a), path) == 0 && st_count(a) == 2);
    st_archive_close(a);
    expect_err(st_archive_open(dir, "model", &a), ERR_MISSING, dir,
               "neither model.safetensors nor model.safetensors.index.json");
}

static void open_dir_expect(const char *sub, int code, const char *has1, const char *has2)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", tmp_root, sub);
    st_archive *a = NULL;
    expect_err(st_archive_open(dir, "model", &a), code, has1, has2);
    CHECK(a == NULL);
}

static void test_index_missing_shard(void)
{
    build_sharded("noshard", "\"x.w\":\"model-00003-of-00003.safetensors\"", true);
    open_dir_expect("noshard", ERR_MISSING, "noshard/model.safetensors.index.json",
                    "model-00003-of-00003.safetensors");
}

static void test_index_tensor_absent(void)
{
    build_sharded("notensor", "\"ghost.weight\":\"model-00002-of-00002.safetensors\"", true);
    open_dir_expect("notensor", ERR_MISSING, "model.safetensors.index.json",
                    "tensor ghost.weight: the index assigns it to model-00002-of-00002");
}

static void test_index_tensor_unlisted(void)
{
    build_sharded("unlisted", NULL, false);
    open_dir_expect("unlisted", ERR_FORMAT, "unlisted/model-00002-of-00002.safetensors",
                    "tensor shared.weight is not listed in the index");
}

static void test_index_wrong_shard(void)
{
    build_sharded("wrong", "\"shared.weight\":\"model-00001-of-00002.safetensors\"", false);
    open_dir_expect("wrong", ERR_FORMAT, "model-00002-of-00002.safetensors: tensor shared.weight",
                    "assigns it to model-00001-of-00002.safetensors instead");
}

static void test_index_duplicate_tensor(void)
{
    char dir[1024], path[2048];
    build_sharded("dup", NULL, true);
    snprintf(dir, sizeof dir, "%s/dup", tmp_root);
    /* the second shard now also holds enc.0.w, which the index gives to the first */
    static const tensor_spec both[] = {{"enc.0.w", "BF16", 2, {4, 2}, 2},
                                       {"enc.1.w", "BF16", 2, {4, 4}, 2},
                                       {"shared.weight", "F32", 2, {3, 2}, 4}};
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    build_st(path, both, 3, 0);
    open_dir_expect("dup", ERR_FORMAT, "tensor enc.0.w", "model-00002-of-00002.safetensors");
}

static void test_index_malformed(void)
{
    char dir[1024], path[2048];
    snprintf(dir, sizeof dir, "%s/badindex", tmp_root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    write_bytes(path, "{\"weight_map\": [", 16);
    open_dir_expect("badindex", ERR_FORMAT, path, "not valid JSON");
    write_bytes(path, "{\"metadata\": {}}", 16);
    open_dir_expect("badindex", ERR_FORMAT, path, "weight_map");
    const char *escape = "{\"weight_map\": {\"a\": \"../x.safetensors\"}}";
    write_bytes(path, escape, strlen(escape));
    open_dir_expect("badindex", ERR_FORMAT, path, "weight_map entry a is not a plain file name");
}

static st_archive *open_all_dtypes(void)
{
    char path[2048];
    tmp_path(path, sizeof path, "weights.safetensors");
    build_st(path, all_dtypes, N_ALL, 0);
    st_archive *a = NULL;
    if (st_archive_open_file(path, &a) != 0)
        fprintf(stderr, "  %s\n", err_msg());
    return a;
}

static void test_weight_shape(void)
{
    st_archive *a = open_all_dtypes();
    CHECK(a != NULL);
    if (!a)
        return;
    kn_tensor t = {.data = (void *)1};
    const int64_t good[2] = {2, 3}, bad[2] = {3, 2}, flat[1] = {6};
    CHECK(st_weight(a, "a.f32", 2, good, &t) == 0 && t.data != NULL && t.dtype == KN_F32);
    expect_err(st_weight(a, "a.f32", 2, bad, &t), ERR_SHAPE, "weights.safetensors: tensor a.f32",
               "shape [2, 3] where the config implies [3, 2]");
    expect_err(st_weight(a, "a.f32", 1, flat, &t), ERR_SHAPE, "tensor a.f32", "implies [6]");
    expect_err(st_weight_cfg(a, "a.f32", 2, bad, "hidden_size=3", &t), ERR_SHAPE,
               "weights.safetensors: tensor a.f32",
               "shape [2, 3] where the config (hidden_size=3) implies [3, 2]");
    CHECK(st_weight_cfg(a, "a.f32", 2, good, "hidden_size=3", &t) == 0);
    const int64_t b16[1] = {5}, e4[1] = {3};
    CHECK(st_weight(a, "b.f16", 1, b16, &t) == 0 && t.dtype == KN_F16);
    CHECK(st_weight(a, "d.e4m3", 1, e4, &t) == 0 && t.dtype == KN_F8_E4M3);
    CHECK(st_weight(a, "m.scalar", 0, NULL, &t) == 0 && t.ndim == 0);
    st_archive_close(a);
}

static void test_weight_dtype_and_absence(void)
{
    st_archive *a = open_all_dtypes();
    CHECK(a != NULL);
    if (!a)
        return;
    kn_tensor t;
    const int64_t s2[1] = {2}, s3[1] = {3};
    expect_err(st_weight(a, "g.i64", 1, s2, &t), ERR_SHAPE, "tensor g.i64", "dtype I64");
    expect_err(st_weight(a, "l.bool", 1, s2, &t), ERR_SHAPE, "tensor l.bool", "dtype BOOL");
    expect_err(st_weight(a, "f.f64", 1, s2, &t), ERR_SHAPE, "tensor f.f64", "dtype F64");
    expect_err(st_weight(a, "h.i32", 1, s3, &t), ERR_SHAPE, "weights.safetensors", "dtype I32");
    expect_err(st_weight(a, "missing.weight", 1, s2, &t), ERR_MISSING, "weights.safetensors",
               "tensor missing.weight is missing");
    t.data = (void *)1;
    CHECK(st_weight_opt(a, "missing.weight", 1, s2, &t) == 0 && t.data == NULL);
    expect_err(st_weight_opt(a, "a.f32", 1, s2, &t), ERR_SHAPE, "tensor a.f32", "[2, 3]");
    st_archive_close(a);
}

/* Every proper prefix of a valid file and every corruption of its header bytes must give an
 * error or a valid archive, never a crash (the sanitizer build checks the reads). */
static void test_truncations_and_corruption(void)
{
    char src[2048], path[2048];
    tmp_path(src, sizeof src, "fuzz-src.safetensors");
    size_t size = build_st(src, all_dtypes, N_ALL, 0);
    unsigned char *orig = malloc(size), *buf = malloc(size);
    FILE *f = fopen(src, "rb");
    CHECK(f && fread(orig, 1, size, f) == size);
    if (f)
        fclose(f);
    tmp_path(path, sizeof path, "fuzz.safetensors");
    int errors = 0;
    for (size_t n = 0; n < size; n++) {
        write_bytes(path, orig, n);
        st_archive *a = NULL;
        int rc = st_archive_open_file(path, &a);
        errors += rc < 0;
        if (rc == 0)
            st_archive_close(a);
        else
            CHECKF(strstr(err_msg(), path) != NULL, "%s", err_msg());
    }
    /* the last tensor ends at the end of the file, so no proper prefix is valid */
    CHECK(errors == (int)size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | orig[i];
    uint32_t seed = 12345;
    int opened = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, orig, size);
        for (int k = 0; k < 1 + iter % 3; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % (8 + hlen);
            seed = seed * 1103515245u + 12345u;
            static const char json_chars[] = "0123456789[]{},:\"-";
            buf[at] = iter % 2 ? (unsigned char)(seed >> 16)
                               : (unsigned char)json_chars[(seed >> 16) % (sizeof json_chars - 1)];
        }
        write_bytes(path, buf, size);
        st_archive *a = NULL;
        int rc = st_archive_open_file(path, &a);
        CHECK(rc <= 0 && (rc == 0) == (a != NULL));
        if (rc == 0) {
            opened++;
            for (size_t i = 0; i < st_count(a); i++)
                CHECK(kn_nbytes(&st_at(a, i)->tensor) <= size);
            st_archive_close(a);
        }
    }
    CHECK(opened < 3000);
    free(orig);
    free(buf);
}

/* The fixture pipeline's archives: F16 CLIP-L, F32 transformer and the two-shard BF16 T5,
 * whose index must agree with what the shards hold. */
static void test_fixture_archives(void)
{
    char dir[1024], path[2048];
    snprintf(dir, sizeof dir, "%s/tiny-sd35/text_encoder_3", fixtures_dir());
    st_archive *a = NULL;
    int rc = st_archive_open(dir, "model", &a);
    CHECKF(rc == 0, "%s", err_msg());
    if (rc)
        return;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_t *index = json_load_file(path, 0, NULL);
    json_t *wmap = json_object_get(index, "weight_map");
    CHECK(json_object_size(wmap) == st_count(a) && st_count(a) > 0);
    const char *name;
    json_t *shard;
    json_object_foreach(wmap, name, shard) {
        const st_entry *e = st_find(a, name);
        CHECKF(e != NULL, "%s", name);
        if (!e)
            continue;
        size_t fl = strlen(e->file), sl = strlen(json_string_value(shard));
        CHECK(fl > sl && strcmp(e->file + fl - sl, json_string_value(shard)) == 0);
        CHECK(e->tensor.dtype == KN_BF16);
    }
    json_decref(index);
    st_archive_close(a);

    static const struct {
        const char *sub, *stem;
        kn_dtype dt;
    } singles[] = {{"text_encoder", "model", KN_F16},
                   {"text_encoder_2", "model", KN_BF16},
                   {"transformer", "diffusion_pytorch_model", KN_F32},
                   {"vae", "diffusion_pytorch_model", KN_F16}};
    for (size_t i = 0; i < sizeof singles / sizeof singles[0]; i++) {
        snprintf(dir, sizeof dir, "%s/tiny-sd35/%s", fixtures_dir(), singles[i].sub);
        rc = st_archive_open(dir, singles[i].stem, &a);
        CHECKF(rc == 0, "%s", err_msg());
        if (rc)
            continue;
        int floats = 0;
        for (size_t k = 0; k < st_count(a); k++)
            floats += st_at(a, k)->tensor.dtype == singles[i].dt;
        CHECKF(floats > 0, "%s has no %s tensors", singles[i].sub, kn_dtype_name(singles[i].dt));
        st_archive_close(a);
    }
}

int main(void)
{
    make_tmp();
    RUN(test_all_dtypes);
    RUN(test_misaligned_tensor_copied);
    RUN(test_truncated_length);
    RUN(test_header_cut);
    RUN(test_header_length_huge);
    RUN(test_data_cut);
    RUN(test_header_not_json);
    RUN(test_header_not_object);
    RUN(test_bad_metadata);
    RUN(test_unknown_dtype);
    RUN(test_shape_size_mismatch);
    RUN(test_offsets_bad);
    RUN(test_overlap);
    RUN(test_bad_shape);
    RUN(test_sharded);
    RUN(test_single_file_preferred);
    RUN(test_index_missing_shard);
    RUN(test_index_tensor_absent);
    RUN(test_index_tensor_unlisted);
    RUN(test_index_wrong_shard);
    RUN(test_index_duplicate_tensor);
    RUN(test_index_malformed);
    RUN(test_weight_shape);
    RUN(test_weight_dtype_and_absence);
    RUN(test_truncations_and_corruption);
    RUN(test_fixture_archives);
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    CHECK_DONE();
}
