/* safetensors reader (see safetensors.h): maps each file read-only, validates its header
 * completely before any tensor is exposed, and for sharded archives cross-checks the index
 * against the shards. Not a writer, and not a converter: tensors keep their stored dtype. */
#include "engine/safetensors.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Real headers are a few hundred KB even for the 9 GB T5; anything near this cap is an attack
 * or corruption, and jansson would otherwise try to parse it into memory. */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

typedef struct st_file {
    char *path;
    const char *shard; /* the name the index uses for it; NULL for a single-file archive */
    void *map;
    size_t size;
} st_file;

struct st_archive {
    char *path;
    st_file *files;
    size_t nfiles;
    st_entry *entries; /* sorted by name */
    size_t n, cap;
    /* Tensors whose offset in the file is not a multiple of their element size are copied
     * into aligned memory so that kernels may dereference them; writers that pad the header
     * (all current ones) never produce such tensors. */
    void **copies;
    size_t ncopies;
};

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = xmalloc(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int map_file(const char *path, st_file *f)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return err_set(ERR_MISSING, "%s: no such file", path);
        return err_set(ERR_IO, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return err_set(ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(ERR_FORMAT, "%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        close(fd);
        return err_set(ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                       path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return err_set(ERR_IO, "%s: mmap: %s", path, strerror(e));
    }
    return 0;
}

/* A non-negative JSON integer, or -1. */
static long long json_uint(const json_t *v)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    return (long long)json_integer_value(v);
}

typedef struct span {
    uint64_t begin, end;
    const char *name;
} span;

static int span_cmp(const void *pa, const void *pb)
{
    const span *a = pa, *b = pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    return a->end < b->end ? -1 : a->end > b->end;
}

static void push_entry(st_archive *a, const st_entry *e)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->entries = xrealloc(a->entries, a->cap * sizeof *a->entries);
    }
    a->entries[a->n++] = *e;
}

static int tensor_entry(st_archive *a, const st_file *f, const char *name, const json_t *info,
                        const uint8_t *data, uint64_t data_size, span *sp)
{
    const char *path = f->path;
    if (!json_is_object(info))
        return err_set(ERR_FORMAT, "%s: tensor %s: header entry is not a JSON object", path, name);
    const json_t *jd = json_object_get(info, "dtype");
    const json_t *js = json_object_get(info, "shape");
    const json_t *jo = json_object_get(info, "data_offsets");
    if (!json_is_string(jd))
        return err_set(ERR_FORMAT, "%s: tensor %s: \"dtype\" missing or not a string", path, name);
    kn_dtype dt;
    if (kn_dtype_parse(json_string_value(jd), &dt) != 0)
        return err_set(ERR_FORMAT, "%s: tensor %s: unknown dtype \"%s\"", path, name,
                       json_string_value(jd));
    if (!json_is_array(js))
        return err_set(ERR_FORMAT, "%s: tensor %s: \"shape\" missing or not an array", path, name);
    size_t ndim = json_array_size(js);
    if (ndim > KN_MAX_DIMS)
        return err_set(ERR_FORMAT, "%s: tensor %s: rank %zu exceeds the supported %d", path, name,
                       ndim, KN_MAX_DIMS);
    int64_t shape[KN_MAX_DIMS];
    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        long long d = json_uint(json_array_get(js, i));
        if (d < 0)
            return err_set(ERR_FORMAT,
                           "%s: tensor %s: shape[%zu] is not a non-negative integer", path, name, i);
        shape[i] = d;
        if (__builtin_mul_overflow(numel, (uint64_t)d, &numel))
            return err_set(ERR_FORMAT, "%s: tensor %s: element count overflows", path, name);
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)kn_dtype_size(dt), &nbytes))
        return err_set(ERR_FORMAT, "%s: tensor %s: byte size overflows", path, name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return err_set(ERR_FORMAT, "%s: tensor %s: \"data_offsets\" missing or not [begin, end]",
                       path, name);
    long long b = json_uint(json_array_get(jo, 0)), e = json_uint(json_array_get(jo, 1));
    if (b < 0 || e < 0)
        return err_set(ERR_FORMAT, "%s: tensor %s: data_offsets are not non-negative integers",
                       path, name);
    if (b > e)
        return err_set(ERR_FORMAT, "%s: tensor %s: data_offsets [%lld, %lld] end before they begin",
                       path, name, b, e);
    if ((uint64_t)e > data_size)
        return err_set(ERR_FORMAT,
                       "%s: tensor %s: data_offsets [%lld, %lld] past the end of the file (data "
                       "section is %llu bytes)",
                       path, name, b, e, (unsigned long long)data_size);
    if ((uint64_t)(e - b) != nbytes)
        return err_set(ERR_FORMAT,
                       "%s: tensor %s: %s shape of %llu elements needs %llu bytes but "
                       "data_offsets [%lld, %lld] hold %lld",
                       path, name, kn_dtype_name(dt), (unsigned long long)numel,
                       (unsigned long long)nbytes, b, e, e - b);

    void *ptr = (void *)(data + b);
    size_t align = kn_dtype_size(dt);
    if ((uintptr_t)ptr % align != 0 && nbytes > 0) {
        void *copy = aligned_alloc(align, ((size_t)nbytes + align - 1) / align * align);
        if (!copy)
            return err_set(ERR_NOMEM, "%s: tensor %s: out of memory copying a misaligned tensor",
                           path, name);
        memcpy(copy, ptr, (size_t)nbytes);
        a->copies = xrealloc(a->copies, (a->ncopies + 1) * sizeof *a->copies);
        a->copies[a->ncopies++] = copy;
        ptr = copy;
    }
    st_entry ent = {.name = xstrdup(name), .file = f->path,
                    .tensor = kn_host_tensor(ptr, dt, (int)ndim, shape)};
    push_entry(a, &ent);
    *sp = (span){(uint64_t)b, (uint64_t)e, ent.name};
    return 0;
}

static int check_metadata(const char *path, const json_t *meta)
{
    if (!json_is_object(meta))
        return err_set(ERR_FORMAT, "%s: __metadata__ is not a JSON object", path);
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)meta, k, v) {
        if (!json_is_string(v))
            return err_set(ERR_FORMAT, "%s: __metadata__ key \"%s\" is not a string", path, k);
    }
    return 0;
}

/* Parses and validates f's header, appending its tensors to a->entries. */
static int parse_header(st_archive *a, const st_file *f)
{
    const uint8_t *base = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | base[i];
    if (hlen > ST_MAX_HEADER)
        return err_set(ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", f->path,
                       (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return err_set(ERR_FORMAT, "%s: header length %llu is larger than the file (%zu bytes)",
                       f->path, (unsigned long long)hlen, f->size);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return err_set(ERR_FORMAT, "%s: header is not valid JSON: %s (byte %d)", f->path,
                       jerr.text, jerr.position);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = err_set(ERR_FORMAT, "%s: header is not a JSON object", f->path);
        goto out;
    }
    const uint8_t *data = base + 8 + hlen;
    uint64_t data_size = f->size - 8 - hlen;
    span *spans = xmalloc((json_object_size(root) + 1) * sizeof *spans);
    size_t nspans = 0;
    const char *name;
    json_t *info;
    json_object_foreach(root, name, info) {
        if (strcmp(name, "__metadata__") == 0)
            rc = check_metadata(f->path, info);
        else
            rc = tensor_entry(a, f, name, info, data, data_size, &spans[nspans++]);
        if (rc)
            break;
    }
    if (!rc) {
        qsort(spans, nspans, sizeof *spans, span_cmp);
        const span *prev = NULL; /* the non-empty span reaching furthest so far */
        for (size_t i = 0; i < nspans && !rc; i++) {
            if (spans[i].begin == spans[i].end)
                continue;
            if (prev && spans[i].begin < prev->end)
                rc = err_set(ERR_FORMAT,
                             "%s: tensors %s [%llu, %llu] and %s [%llu, %llu] overlap", f->path,
                             prev->name, (unsigned long long)prev->begin,
                             (unsigned long long)prev->end, spans[i].name,
                             (unsigned long long)spans[i].begin,
                             (unsigned long long)spans[i].end);
            if (!prev || spans[i].end > prev->end)
                prev = &spans[i];
        }
    }
    free(spans);
out:
    json_decref(root);
    return rc;
}

static int entry_cmp(const void *pa, const void *pb)
{
    return strcmp(((const st_entry *)pa)->name, ((const st_entry *)pb)->name);
}

/* Sorts the entries for st_find and rejects a name held twice (by two shards). */
static int index_entries(st_archive *a)
{
    qsort(a->entries, a->n, sizeof *a->entries, entry_cmp);
    for (size_t i = 1; i < a->n; i++)
        if (strcmp(a->entries[i - 1].name, a->entries[i].name) == 0)
            return err_set(ERR_FORMAT, "%s: tensor %s is stored twice, in %s and in %s", a->path,
                           a->entries[i].name, a->entries[i - 1].file, a->entries[i].file);
    return 0;
}

static st_archive *archive_new(const char *path)
{
    st_archive *a = xcalloc(1, sizeof *a);
    a->path = xstrdup(path);
    return a;
}

static int add_file(st_archive *a, const char *path, const char *shard)
{
    a->files = xrealloc(a->files, (a->nfiles + 1) * sizeof *a->files);
    st_file *f = &a->files[a->nfiles++];
    *f = (st_file){.path = xstrdup(path), .shard = shard};
    int rc = map_file(path, f);
    return rc ? rc : parse_header(a, f);
}

int st_archive_open_file(const char *path, st_archive **out)
{
    *out = NULL;
    st_archive *a = archive_new(path);
    int rc = add_file(a, path, NULL);
    if (!rc)
        rc = index_entries(a);
    if (rc) {
        st_archive_close(a);
        return rc;
    }
    *out = a;
    return 0;
}

/* Every tensor the index lists must be in the shard it names, and every tensor of every shard
 * must be listed there, which together with index_entries() makes the assignment exact. */
static int check_index(const st_archive *a, const json_t *wmap)
{
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)wmap, name, v) {
        const st_entry *e = st_find(a, name);
        const char *shard = json_string_value(v);
        if (!e)
            return err_set(ERR_MISSING, "%s: tensor %s: the index assigns it to %s, which lacks it",
                           a->path, name, shard);
    }
    for (size_t i = 0; i < a->n; i++) {
        const st_entry *e = &a->entries[i];
        const json_t *sv = json_object_get(wmap, e->name);
        if (!sv)
            return err_set(ERR_FORMAT, "%s: tensor %s is not listed in the index %s", e->file,
                           e->name, a->path);
        const char *want = json_string_value(sv);
        for (size_t k = 0; k < a->nfiles; k++)
            if (a->files[k].path == e->file && strcmp(a->files[k].shard, want) != 0)
                return err_set(ERR_FORMAT, "%s: tensor %s: the index %s assigns it to %s instead",
                               e->file, e->name, a->path, want);
    }
    return 0;
}

static int open_index(st_archive *a, const char *dir)
{
    json_error_t jerr;
    json_t *root = json_load_file(a->path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return err_set(ERR_FORMAT, "%s: not valid JSON: %s (line %d)", a->path, jerr.text,
                       jerr.line);
    int rc = 0;
    const json_t *wmap = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(root))
        rc = err_set(ERR_FORMAT, "%s: not a JSON object", a->path);
    else if (!json_is_object(wmap))
        rc = err_set(ERR_FORMAT, "%s: \"weight_map\" missing or not an object", a->path);
    else if (json_object_size(wmap) == 0)
        rc = err_set(ERR_FORMAT, "%s: \"weight_map\" is empty", a->path);
    const char *name;
    json_t *v;
    if (!rc) {
        json_object_foreach((json_t *)wmap, name, v) {
            const char *shard = json_string_value(v);
            /* Shards live beside the index; a path would let an index reach anywhere. */
            if (!shard || !*shard || strchr(shard, '/')) {
                rc = err_set(ERR_FORMAT, "%s: weight_map entry %s is not a plain file name",
                             a->path, name);
                break;
            }
            bool seen = false;
            for (size_t k = 0; k < a->nfiles && !seen; k++)
                seen = strcmp(a->files[k].shard, shard) == 0;
            if (seen)
                continue;
            char *p = path_join(dir, shard);
            /* shard points into root, which lives until the index checks are done */
            rc = add_file(a, p, shard);
            free(p);
            if (rc) {
                if (rc == ERR_MISSING)
                    err_prefix(rc, "%s: shard %s named by the index: ", a->path, shard);
                break;
            }
        }
    }
    if (!rc)
        rc = index_entries(a);
    if (!rc)
        rc = check_index(a, wmap);
    for (size_t k = 0; k < a->nfiles; k++)
        a->files[k].shard = NULL;
    json_decref(root);
    return rc;
}

int st_archive_open(const char *dir, const char *stem, st_archive **out)
{
    *out = NULL;
    size_t n = strlen(stem);
    char *single = xmalloc(n + sizeof ".safetensors");
    memcpy(single, stem, n);
    memcpy(single + n, ".safetensors", sizeof ".safetensors");
    char *path = path_join(dir, single);
    free(single);
    struct stat st;
    if (stat(path, &st) == 0 || errno != ENOENT) {
        int rc = st_archive_open_file(path, out);
        free(path);
        return rc;
    }
    char *index = xmalloc(strlen(path) + sizeof ".index.json");
    strcpy(index, path);
    strcat(index, ".index.json");
    int rc;
    if (stat(index, &st) != 0 && errno == ENOENT) {
        rc = err_set(ERR_MISSING, "%s: neither %s.safetensors nor %s.safetensors.index.json exists",
                     dir, stem, stem);
    } else {
        st_archive *a = archive_new(index);
        rc = open_index(a, dir);
        if (rc)
            st_archive_close(a);
        else
            *out = a;
    }
    free(index);
    free(path);
    return rc;
}

void st_archive_close(st_archive *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        free((char *)a->entries[i].name);
    for (size_t i = 0; i < a->nfiles; i++) {
        if (a->files[i].map)
            munmap(a->files[i].map, a->files[i].size);
        free(a->files[i].path);
    }
    for (size_t i = 0; i < a->ncopies; i++)
        free(a->copies[i]);
    free(a->copies);
    free(a->files);
    free(a->entries);
    free(a->path);
    free(a);
}

const st_entry *st_find(const st_archive *a, const char *name)
{
    st_entry key = {.name = name};
    return bsearch(&key, a->entries, a->n, sizeof key, entry_cmp);
}

size_t st_count(const st_archive *a)
{
    return a->n;
}

const st_entry *st_at(const st_archive *a, size_t i)
{
    return i < a->n ? &a->entries[i] : NULL;
}

uint64_t st_file_bytes(const st_archive *a)
{
    uint64_t total = 0;
    for (size_t i = 0; i < a->nfiles; i++)
        total += a->files[i].size;
    return total;
}

const char *st_archive_path(const st_archive *a)
{
    return a->path;
}

static int weight_lookup(const st_archive *a, const char *name, int ndim, const int64_t *shape,
                         const char *why, bool optional, kn_tensor *out)
{
    if (ndim < 0 || ndim > KN_MAX_DIMS)
        return err_set(ERR_INVALID, "%s: tensor %s: expected rank %d is not supported", a->path,
                       name, ndim);
    const st_entry *e = st_find(a, name);
    if (!e) {
        if (optional) {
            *out = (kn_tensor){.data = NULL};
            return 0;
        }
        return err_set(ERR_MISSING, "%s: tensor %s is missing", a->path, name);
    }
    if (!kn_dtype_is_float(e->tensor.dtype))
        return err_set(ERR_SHAPE,
                       "%s: tensor %s: dtype %s where a float weight (F32, F16, BF16, F8_E4M3, "
                       "F8_E5M2) is expected",
                       e->file, name, kn_dtype_name(e->tensor.dtype));
    kn_tensor want = kn_host_tensor(NULL, e->tensor.dtype, ndim, shape);
    if (!kn_same_shape(&e->tensor, &want)) {
        char have[128], need[128];
        kn_shape_str(&want, need, sizeof need);
        kn_shape_str(&e->tensor, have, sizeof have);
        if (why)
            return err_set(ERR_SHAPE, "%s: tensor %s: shape %s where the config (%s) implies %s",
                           e->file, name, have, why, need);
        return err_set(ERR_SHAPE, "%s: tensor %s: shape %s where the config implies %s", e->file,
                       name, have, need);
    }
    *out = e->tensor;
    return 0;
}

int st_weight(const st_archive *a, const char *name, int ndim, const int64_t *shape,
              kn_tensor *out)
{
    return weight_lookup(a, name, ndim, shape, NULL, false, out);
}

int st_weight_opt(const st_archive *a, const char *name, int ndim, const int64_t *shape,
                  kn_tensor *out)
{
    return weight_lookup(a, name, ndim, shape, NULL, true, out);
}

int st_weight_cfg(const st_archive *a, const char *name, int ndim, const int64_t *shape,
                  const char *why, kn_tensor *out)
{
    return weight_lookup(a, name, ndim, shape, why, false, out);
}
