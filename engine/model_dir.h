/* Names a model directory: a path, or a Hugging Face repository id looked up in the local hub
 * cache as huggingface_hub lays it out (models--ORG--NAME/refs/main naming a snapshots/ entry). */
#ifndef FOCUS_ENGINE_MODEL_DIR_H
#define FOCUS_ENGINE_MODEL_DIR_H

#include <stdbool.h>

/* An existing directory `spec` is the model itself; otherwise a repository id `ORG/NAME` is
 * HUB/models--ORG--NAME/snapshots/<refs/main>/. *dir is malloc'd. ERR_MISSING names every path
 * tried when neither exists. */
int model_dir_resolve(const char *spec, char **dir);
/* huggingface_hub's cache directory (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
 * $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub), malloc'd. */
char *model_dir_hub_cache(void);
/* Whether s is a repository id as huggingface_hub's validate_repo_id accepts it. */
bool model_dir_is_repo_id(const char *s);

#endif
