/* png_out: PNGs read back with libpng (size, format, pixels, text chunks and their types), the
 * file variant byte-equal to the memory variant, atomic replacement, failures that leave nothing
 * behind (missing directory, a file as directory, a file-size limit standing in for a full disk,
 * a read-only directory when not root), and the float -> uint8 rounding against the pipeline
 * goldens (numpy's round half to even) and exact halfway cases. */
#include "common/err.h"
#include "engine/npy.h"
#include "engine/png_out.h"
#include "tests/unit/check.h"

#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <errno.h>
#include <math.h>
#include <png.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[4096];

/* ---- reading back ---- */

typedef struct png_src {
    const uint8_t *data;
    size_t len, pos;
} png_src;

static void src_read(png_structp png, png_bytep out, png_size_t n)
{
    png_src *s = png_get_io_ptr(png);
    if (n > s->len - s->pos)
        png_error(png, "read past the end");
    memcpy(out, s->data + s->pos, n);
    s->pos += n;
}

typedef struct decoded {
    png_uint_32 width, height;
    int bit_depth, color_type;
    uint8_t *rgb;
    int ntext;
    char keys[8][80], values[8][512];
    int compression[8];
} decoded;

static int decode(const uint8_t *data, size_t len, decoded *d)
{
    memset(d, 0, sizeof *d);
    png_src src = {data, len, 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_set_read_fn(png, &src, src_read);
    png_read_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_get_IHDR(png, info, &d->width, &d->height, &d->bit_depth, &d->color_type, NULL, NULL, NULL);
    png_bytepp rows = png_get_rows(png, info);
    d->rgb = malloc((size_t)d->width * d->height * 3);
    for (png_uint_32 y = 0; y < d->height; y++)
        memcpy(d->rgb + (size_t)y * d->width * 3, rows[y], (size_t)d->width * 3);
    png_textp text;
    int n = 0;
    png_get_text(png, info, &text, &n);
    for (int i = 0; i < n && i < 8; i++) {
        snprintf(d->keys[i], sizeof d->keys[i], "%s", text[i].key);
        snprintf(d->values[i], sizeof d->values[i], "%s", text[i].text);
        d->compression[i] = text[i].compression;
    }
    d->ntext = n;
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

/* Entries in dir other than . and .. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void make_dir(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", tmpdir, name);
    CHECKF(mkdir(out, 0755) == 0, "mkdir %s: %s", out, strerror(errno));
}

static uint8_t *test_image(int w, int h)
{
    uint8_t *rgb = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++)
        rgb[i] = (uint8_t)(i * 7 + i / 3);
    return rgb;
}

static const png_out_kv params[] = {
    {"prompt", "a photo of a cat \xc3\xa0 la fran\xc3\xa7" "aise, \xe7\x8c\xab"},
    {"negative_prompt", ""},
    {"seed", "42"},
    {"steps", "28"},
    {"guidance", "4.5"},
    {"size", "96x64"},
    {"Software", "focusd 0.1"},
};
#define NPARAMS ((int)(sizeof params / sizeof params[0]))

/* ---- tests ---- */

static void test_encode_read_back(void)
{
    int w = 96, h = 64;
    uint8_t *rgb = test_image(w, h), *png;
    size_t len;
    CHECKF(png_out_encode(rgb, w, h, params, NPARAMS, &png, &len) == 0, "%s", err_msg());
    decoded d;
    CHECK(decode(png, len, &d) == 0);
    CHECK(d.width == (png_uint_32)w && d.height == (png_uint_32)h);
    CHECK(d.bit_depth == 8 && d.color_type == PNG_COLOR_TYPE_RGB);
    CHECK(d.rgb && memcmp(d.rgb, rgb, (size_t)w * h * 3) == 0);
    CHECK(d.ntext == NPARAMS);
    for (int i = 0; i < NPARAMS && i < d.ntext; i++) {
        CHECKF(!strcmp(d.keys[i], params[i].key) && !strcmp(d.values[i], params[i].value), "chunk %d: %s=%s", i,
               d.keys[i], d.values[i]);
    }
    /* Non-ASCII values go to iTXt, ASCII ones to tEXt. */
    CHECK(d.compression[0] == PNG_ITXT_COMPRESSION_NONE);
    CHECK(d.compression[2] == PNG_TEXT_COMPRESSION_NONE);
    free(d.rgb);
    free(png);
    free(rgb);
}

static void test_bad_arguments(void)
{
    uint8_t rgb[3] = {1, 2, 3}, *png;
    size_t len;
    png_out_kv bad_key[] = {{"two  spaces", "x"}};
    CHECK(png_out_encode(rgb, 1, 1, bad_key, 1, &png, &len) == ERR_INVALID && strstr(err_msg(), "two  spaces"));
    png_out_kv long_key[] = {{"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk", "x"}};
    CHECK(png_out_encode(rgb, 1, 1, long_key, 1, &png, &len) == ERR_INVALID);
    png_out_kv bad_utf8[] = {{"prompt", "caf\xe9"}};
    CHECK(png_out_encode(rgb, 1, 1, bad_utf8, 1, &png, &len) == ERR_INVALID && strstr(err_msg(), "prompt"));
    CHECK(png_out_encode(rgb, 0, 1, NULL, 0, &png, &len) == ERR_INVALID && png == NULL);
    CHECK(png_out_encode(rgb, 1, 1, NULL, 0, &png, &len) == 0 && len > 0);
    free(png);
}

static void test_file_equals_memory_and_replaces(void)
{
    char dir[4200], path[4300];
    make_dir(dir, sizeof dir, "ok");
    snprintf(path, sizeof path, "%s/image.png", dir);
    int w = 33, h = 17;
    uint8_t *rgb = test_image(w, h), *png, *file;
    size_t len, flen;
    CHECK(png_out_encode(rgb, w, h, params, NPARAMS, &png, &len) == 0);
    CHECKF(png_out_write(path, rgb, w, h, params, NPARAMS) == 0, "%s", err_msg());
    file = read_file(path, &flen);
    CHECK(file && flen == len && memcmp(file, png, len) == 0);
    free(file);

    /* A second write replaces the first and leaves no temporary file. */
    rgb[0] ^= 0xff;
    CHECKF(png_out_write(path, rgb, w, h, NULL, 0) == 0, "%s", err_msg());
    file = read_file(path, &flen);
    decoded d;
    CHECK(file && decode(file, flen, &d) == 0 && d.ntext == 0 && d.rgb[0] == rgb[0]);
    free(d.rgb);
    free(file);
    CHECK(dir_entries(dir) == 1);
    free(png);
    free(rgb);
}

static void test_unwritable_leaves_nothing(void)
{
    uint8_t rgb[3 * 4] = {0};
    char path[4300], dir[4200];

    snprintf(path, sizeof path, "%s/missing/image.png", tmpdir);
    CHECK(png_out_write(path, rgb, 2, 2, NULL, 0) == ERR_IO);
    CHECKF(strstr(err_msg(), path) && strstr(err_msg(), strerror(ENOENT)), "%s", err_msg());

    /* A regular file where the directory should be. */
    snprintf(path, sizeof path, "%s/plainfile", tmpdir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f)
        fclose(f);
    snprintf(path, sizeof path, "%s/plainfile/image.png", tmpdir);
    CHECK(png_out_write(path, rgb, 2, 2, NULL, 0) == ERR_IO && strstr(err_msg(), strerror(ENOTDIR)));

    /* Permission bits do not stop root, so this part runs only for other users. */
    if (geteuid() != 0) {
        make_dir(dir, sizeof dir, "readonly");
        chmod(dir, 0555);
        snprintf(path, sizeof path, "%s/image.png", dir);
        CHECK(png_out_write(path, rgb, 2, 2, NULL, 0) == ERR_IO && strstr(err_msg(), strerror(EACCES)));
        CHECK(dir_entries(dir) == 0);
        chmod(dir, 0755);
    }
}

/* A file-size limit makes write() fail part-way, as a full disk does: the target keeps its old
 * contents and no temporary file remains. */
static void test_write_failure_midway(void)
{
    char dir[4200], path[4300];
    make_dir(dir, sizeof dir, "limited");
    snprintf(path, sizeof path, "%s/image.png", dir);
    uint8_t small[3] = {9, 9, 9};
    CHECK(png_out_write(path, small, 1, 1, NULL, 0) == 0);
    size_t before_len;
    uint8_t *before = read_file(path, &before_len);

    int w = 256, h = 256;
    uint8_t *noise = malloc((size_t)w * h * 3);
    uint32_t x = 1;
    for (int i = 0; i < w * h * 3; i++) { /* incompressible, so the PNG is large */
        x = x * 1664525u + 1013904223u;
        noise[i] = (uint8_t)(x >> 24);
    }
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = png_out_write(path, noise, w, h, params, NPARAMS);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK(rc == ERR_IO);
    CHECKF(strstr(err_msg(), path) && strstr(err_msg(), "write failed") && strstr(err_msg(), strerror(EFBIG)), "%s",
           err_msg());
    CHECK(dir_entries(dir) == 1);
    size_t after_len;
    uint8_t *after = read_file(path, &after_len);
    CHECK(before && after && after_len == before_len && memcmp(before, after, before_len) == 0);
    free(before);
    free(after);
    free(noise);
}

/* x * 255 == n + 0.5 exactly in float32 rounds to the even neighbour. */
static void test_round_half_even(void)
{
    CHECK(png_out_unit_to_u8(0.5f) == 128); /* 127.5 */
    int found = 0;
    for (int n = 0; n < 255; n++) {
        float x = (float)((2.0 * n + 1.0) / 510.0);
        for (int k = 0; k < 8; k++, x = nextafterf(x, 2.0f)) {
            if (x * 255.0f == (float)n + 0.5f) {
                CHECKF(png_out_unit_to_u8(x) == (n % 2 ? n + 1 : n), "x=%a n=%d", (double)x, n);
                found++;
            }
            if (x * 255.0f > (float)n + 0.5f) {
                CHECK(png_out_unit_to_u8(x) == n + 1);
                break;
            }
        }
    }
    CHECK(found > 20);
    CHECK(png_out_unit_to_u8(0.0f) == 0 && png_out_unit_to_u8(1.0f) == 255 && png_out_unit_to_u8(NAN) == 0);
}

/* numpy's rounding of the pipeline's float images: <case>/image.npy against <case>/image_u8.npy
 * for each case of golden/pipeline/cases.json that keeps its float image (at least one). */
static void test_pipeline_golden_rounding(void)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/golden/pipeline/cases.json", fixtures_dir());
    json_error_t jerr;
    json_t *cases = json_load_file(p, 0, &jerr);
    CHECKF(json_array_size(cases) > 0, "%s: %s", p, jerr.text);
    size_t c;
    json_t *e;
    int compared = 0;
    json_array_foreach(cases, c, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        npy_array img, u8;
        snprintf(p, sizeof p, "%s/golden/pipeline/%s/image.npy", fixtures_dir(), name ? name : "?");
        if (access(p, F_OK) != 0)
            continue;
        compared++;
        int rc = npy_read_f32(p, &img);
        CHECKF(rc == 0, "%s", err_msg());
        snprintf(p, sizeof p, "%s/golden/pipeline/%s/image_u8.npy", fixtures_dir(), name ? name : "?");
        int rc2 = npy_read_int(p, &u8);
        CHECKF(rc2 == 0, "%s", err_msg());
        if (rc == 0 && rc2 == 0) {
            CHECK(img.count == u8.count && img.count > 0);
            size_t bad = 0;
            for (size_t i = 0; i < img.count && i < u8.count; i++)
                bad += png_out_unit_to_u8(img.f32[i]) != u8.i64[i];
            CHECKF(bad == 0, "%s: %zu of %zu values differ", name, bad, img.count);
        }
        if (rc == 0)
            npy_array_free(&img);
        if (rc2 == 0)
            npy_array_free(&u8);
    }
    CHECK(compared >= 1);
    json_decref(cases);
}

static void test_postprocess(void)
{
    /* 2x1 image, planes R, G, B: VAE values -> (x/2 + 0.5).clamp(0,1) -> HWC. */
    const float chw[6] = {-1.0f, 1.0f, 0.0f, -3.0f, 2.0f, NAN};
    float unit[6];
    uint8_t rgb[6];
    CHECK(png_out_postprocess(chw, 2, 1, KN_F32, unit, rgb) == 0);
    CHECK(unit[0] == 0.0f && unit[1] == 0.5f && unit[2] == 1.0f); /* pixel 0: R, G, B */
    CHECK(unit[3] == 1.0f && unit[4] == 0.0f && isnan(unit[5]));
    CHECK(rgb[0] == 0 && rgb[1] == 128 && rgb[2] == 255 && rgb[3] == 255 && rgb[4] == 0 && rgb[5] == 0);

    /* The add runs in the pipeline dtype: bf16 0.010009765625 / 2 + 0.5 rounds to 0.50390625
     * (-> 128.496 -> 128), where float32 keeps 0.5050049 (-> 128.776 -> 129). */
    const float v[3] = {0.010009765625f, 0.010009765625f, 0.010009765625f};
    CHECK(png_out_postprocess(v, 1, 1, KN_BF16, unit, rgb) == 0 && unit[0] == 0.50390625f && rgb[0] == 128);
    CHECK(png_out_postprocess(v, 1, 1, KN_F32, NULL, rgb) == 0 && rgb[0] == 129);
    CHECK(png_out_postprocess(v, 1, 1, KN_F16, unit, rgb) == 0 && unit[0] == 0.5048828125f && rgb[0] == 129);
    CHECK(png_out_postprocess(v, 1, 1, KN_F64, unit, rgb) == ERR_INVALID);
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/test_png_out.XXXXXX", base && *base ? base : P_tmpdir);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return 1;
    }
    RUN(test_encode_read_back);
    RUN(test_bad_arguments);
    RUN(test_file_equals_memory_and_replaces);
    RUN(test_unwritable_leaves_nothing);
    RUN(test_write_failure_midway);
    RUN(test_round_half_even);
    RUN(test_pipeline_golden_rounding);
    RUN(test_postprocess);
    if (nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "could not remove %s: %s\n", tmpdir, strerror(errno));
    CHECK_DONE();
}
