/* safetensors archives: one file, or the shards listed by a *.safetensors.index.json, mapped
 * read-only with mmap. Every header is validated before use (length bounds, well-formed JSON,
 * known dtype, shape x dtype size == byte length, offsets inside the file and not overlapping);
 * for a sharded archive every shard named by the index must exist and hold the tensors the
 * index assigns to it. Tensors are exposed as host kn_tensors pointing into the mapping. */
#ifndef FOCUS_ENGINE_SAFETENSORS_H
#define FOCUS_ENGINE_SAFETENSORS_H

#include "kernels/kn.h"

#include <stddef.h>
#include <stdint.h>

typedef struct st_entry {
    const char *name;
    const char *file; /* path of the file holding it, for messages */
    kn_tensor tensor; /* host tensor into the mapping (owned = 0) */
} st_entry;

typedef struct st_archive st_archive;

/* Opens `dir/stem.safetensors`, or `dir/stem.safetensors.index.json` and its shards when the
 * single file is absent. stem is "model" (transformers) or "diffusion_pytorch_model" (diffusers). */
int st_archive_open(const char *dir, const char *stem, st_archive **out);
/* Opens one .safetensors file. */
int st_archive_open_file(const char *path, st_archive **out);
void st_archive_close(st_archive *a);

/* NULL when absent. */
const st_entry *st_find(const st_archive *a, const char *name);
size_t st_count(const st_archive *a);
const st_entry *st_at(const st_archive *a, size_t i);
/* Total bytes of the mapped files. */
uint64_t st_file_bytes(const st_archive *a);
/* A path naming the archive in messages (the file, or the index). */
const char *st_archive_path(const st_archive *a);

/* Looks up a float tensor that must exist with exactly this shape (ERR_MISSING when absent,
 * ERR_SHAPE for another shape or a non-float dtype). On error the message names the file and
 * the tensor: "DIR/model.safetensors: tensor text_model.x.weight: shape [768]
 * where the config implies [1024]". */
int st_weight(const st_archive *a, const char *name, int ndim, const int64_t *shape,
              kn_tensor *out);
/* The same for an optional tensor: returns 0 and sets out->data = NULL when absent. */
int st_weight_opt(const st_archive *a, const char *name, int ndim, const int64_t *shape,
                  kn_tensor *out);
/* st_weight, naming in a mismatch message the config values the expected shape comes from,
 * e.g. why = "hidden_size=1024": "...: shape [768] where the config (hidden_size=1024) implies
 * [1024]". This is how a loader reports a config that contradicts the weights. */
int st_weight_cfg(const st_archive *a, const char *name, int ndim, const int64_t *shape,
                  const char *why, kn_tensor *out);

#endif
