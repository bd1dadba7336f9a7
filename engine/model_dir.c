/* Where a model named on a command line or in focusd.conf lives: a directory path as given, or
 * a Hugging Face repository id (`ericbill21/focus_sd35`) found in the hub cache the way
 * huggingface_hub finds it, so that what `huggingface-cli download` left is served as is. The
 * cache directory follows huggingface_hub's constants.py: HF_HUB_CACHE, else the legacy
 * HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, HF_HOME defaulting to $XDG_CACHE_HOME/huggingface
 * and XDG_CACHE_HOME to ~/.cache; the result goes through expanduser and expandvars as there.
 * Nothing is downloaded: the network is never touched. */
#include "engine/model_dir.h"

#include "common/err.h"
#include "common/xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REPO_ID_MAX 96 /* huggingface_hub's validate_repo_id */

typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* posixpath.expanduser: a leading "~" is $HOME (else the passwd entry), "~user" that user's
 * home; anything else, or an unknown user, is left as it is. */
static void expand_user(sbuf *out, const char *p)
{
    if (p[0] != '~') {
        sb_str(out, p);
        return;
    }
    const char *rest = strchr(p, '/');
    size_t ulen = rest ? (size_t)(rest - p - 1) : strlen(p + 1);
    const char *home = NULL;
    if (ulen == 0) {
        home = getenv("HOME");
        if (!home) {
            const struct passwd *pw = getpwuid(getuid());
            home = pw ? pw->pw_dir : NULL;
        }
    } else {
        char *user = xmalloc(ulen + 1);
        memcpy(user, p + 1, ulen);
        user[ulen] = '\0';
        const struct passwd *pw = getpwnam(user);
        free(user);
        home = pw ? pw->pw_dir : NULL;
    }
    if (!home) {
        sb_str(out, p);
        return;
    }
    /* Python strips the home's trailing slash, and keeps "/" when that leaves nothing. */
    size_t hlen = strlen(home);
    while (hlen > 1 && home[hlen - 1] == '/')
        hlen--;
    sb_put(out, home, hlen);
    if (rest) sb_str(out, hlen == 1 && home[0] == '/' ? rest + 1 : rest);
}

/* posixpath.expandvars: $NAME and ${NAME} with NAME of word characters; a variable that is not
 * set is left as written. */
static void expand_vars(sbuf *out, const char *p)
{
    while (*p) {
        const char *dollar = strchr(p, '$');
        if (!dollar) {
            sb_str(out, p);
            return;
        }
        sb_put(out, p, (size_t)(dollar - p));
        const char *name = dollar + 1, *end;
        bool braced = *name == '{';
        if (braced) {
            name++;
            end = strchr(name, '}');
        } else {
            end = name;
            while (isalnum((unsigned char)*end) || *end == '_')
                end++;
        }
        if (!end || end == name) {
            sb_put(out, "$", 1);
            p = dollar + 1;
            continue;
        }
        char *var = xmalloc((size_t)(end - name) + 1);
        memcpy(var, name, (size_t)(end - name));
        var[end - name] = '\0';
        const char *val = getenv(var);
        free(var);
        const char *after = braced ? end + 1 : end;
        if (val)
            sb_str(out, val);
        else
            sb_put(out, dollar, (size_t)(after - dollar));
        p = after;
    }
}

/* os.path.expandvars(os.path.expanduser(p)), huggingface_hub's order. */
static char *expand(const char *p)
{
    sbuf u = {0}, v = {0};
    expand_user(&u, p);
    expand_vars(&v, u.s ? u.s : "");
    free(u.s);
    return v.s ? v.s : xstrdup("");
}

char *model_dir_hub_cache(void)
{
    const char *env = getenv("HF_HUB_CACHE");
    if (!env) env = getenv("HUGGINGFACE_HUB_CACHE");
    if (env) return expand(env);
    sbuf home = {0};
    const char *hf_home = getenv("HF_HOME");
    if (hf_home) {
        sb_str(&home, hf_home);
    } else {
        const char *xdg = getenv("XDG_CACHE_HOME");
        sb_str(&home, xdg ? xdg : "~/.cache");
        sb_str(&home, "/huggingface");
    }
    char *hub = expand(home.s);
    free(home.s);
    sbuf out = {0};
    sb_str(&out, hub);
    sb_str(&out, "/hub");
    free(hub);
    return out.s;
}

/* huggingface_hub's validate_repo_id: [namespace/]name of word characters, '-' and '.', neither
 * starting nor ending with '-' or '.', no "--" or "..", at most 96 characters. */
bool model_dir_is_repo_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > REPO_ID_MAX || strstr(s, "--") || strstr(s, "..")) return false;
    int slashes = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '/') {
            if (++slashes > 1) return false;
            continue;
        }
        if (!isalnum(c) && c != '_' && c != '-' && c != '.') return false;
        bool edge = i == 0 || i == n - 1 || s[i - 1] == '/' || s[i + 1] == '/';
        if (edge && (c == '-' || c == '.')) return false;
    }
    return s[0] != '/' && s[n - 1] != '/';
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The commit refs/main names, as huggingface_hub writes it (no newline; one tolerated). */
static int read_ref(const char *path, char **commit)
{
    FILE *fp = fopen(path, "r");
    if (!fp) return err_set(errno == ENOENT ? ERR_MISSING : ERR_IO, "%s", strerror(errno));
    char buf[128];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    while (n && isspace((unsigned char)buf[n - 1]))
        buf[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)buf[i]))
            return err_set(ERR_FORMAT, "does not hold a commit hash");
    if (n == 0) return err_set(ERR_FORMAT, "is empty");
    *commit = xstrdup(buf);
    return 0;
}

int model_dir_resolve(const char *spec, char **dir)
{
    *dir = NULL;
    if (is_dir(spec)) {
        *dir = xstrdup(spec);
        return 0;
    }
    if (!model_dir_is_repo_id(spec))
        return err_set(ERR_MISSING, "model \"%s\": no such directory", spec);
    char *cache = model_dir_hub_cache();
    /* huggingface_hub's repo_folder_name: "models--" + the id with "/" written as "--" */
    sbuf repo = {0}, ref = {0};
    sb_str(&repo, cache);
    sb_str(&repo, "/models--");
    for (const char *p = spec; *p; p++)
        sb_put(&repo, *p == '/' ? "--" : p, *p == '/' ? 2 : 1);
    sb_str(&ref, repo.s);
    sb_str(&ref, "/refs/main");
    char *commit = NULL;
    int rc = read_ref(ref.s, &commit);
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "%s", err_msg());
        rc = err_set(ERR_MISSING,
                     "model \"%s\" not found: tried the directory %s (no such directory) and "
                     "the Hugging Face cache entry %s (%s); `huggingface-cli download %s` puts "
                     "it there",
                     spec, spec, ref.s, why, spec);
    } else {
        sbuf snap = {0};
        sb_str(&snap, repo.s);
        sb_str(&snap, "/snapshots/");
        sb_str(&snap, commit);
        if (is_dir(snap.s)) {
            *dir = snap.s;
        } else {
            rc = err_set(ERR_MISSING,
                         "model \"%s\" not found: tried the directory %s (no such directory) "
                         "and the Hugging Face cache, where %s names commit %s but %s is not a "
                         "directory",
                         spec, spec, ref.s, commit, snap.s);
            free(snap.s);
        }
    }
    free(commit);
    free(ref.s);
    free(repo.s);
    free(cache);
    return rc;
}
