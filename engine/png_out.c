/* Post-processing to 8-bit RGB and PNG output (see png_out.h).
 *
 * The rounding follows diffusers 0.31.0's VaeImageProcessor: denormalize() is
 * (x / 2 + 0.5).clamp(0, 1) in the tensor's dtype, pt_to_numpy() widens to float32, and
 * numpy_to_pil() does (images * 255).round().astype("uint8") in float32 numpy, whose round is
 * rint (half to even).
 *
 * Files are written the way a crash cannot corrupt: the PNG is encoded in memory first, so a
 * libpng failure never touches the disk; then a temporary file beside the target is written,
 * fsync'ed and renamed over it. */
#include "engine/png_out.h"

#include "common/err.h"
#include "kernels/kn_convert.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

/* Rounds a float32 value to dt and widens it back: one torch op's result in that dtype. */
static float in_dtype(float x, kn_dtype dt)
{
    uint16_t narrow[2];
    float r;
    kn_convert_from_f32(narrow, &x, dt, 1);
    kn_convert_to_f32(&r, narrow, dt, 1);
    return r;
}

uint8_t png_out_unit_to_u8(float x)
{
    float v = rintf(x * 255.0f);
    if (!(v >= 0.0f))
        return 0;
    return v >= 255.0f ? 255 : (uint8_t)v;
}

int png_out_postprocess(const float *chw, int width, int height, kn_dtype dt, float *unit, uint8_t *rgb)
{
    if (dt != KN_F32 && dt != KN_F16 && dt != KN_BF16)
        return err_set(ERR_INVALID, "image postprocess: dtype %s is not F32, F16 or BF16", kn_dtype_name(dt));
    if (width < 1 || height < 1)
        return err_set(ERR_INVALID, "image postprocess: size %dx%d", width, height);
    size_t plane = (size_t)width * (size_t)height;
    for (size_t c = 0; c < 3; c++) {
        for (size_t p = 0; p < plane; p++) {
            float t = in_dtype(chw[c * plane + p] / 2.0f, dt);
            t = in_dtype(t + 0.5f, dt);
            /* torch.clamp keeps NaN */
            if (t < 0.0f)
                t = 0.0f;
            else if (t > 1.0f)
                t = 1.0f;
            if (unit)
                unit[p * 3 + c] = t;
            rgb[p * 3 + c] = png_out_unit_to_u8(t);
        }
    }
    return 0;
}

/* PNG keyword rules (PNG spec 11.3.4.2), restricted to printable ASCII. */
static bool keyword_ok(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > 79 || k[0] == ' ' || k[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (k[i] < 0x20 || k[i] > 0x7e || (k[i] == ' ' && k[i + 1] == ' '))
            return false;
    }
    return true;
}

static bool is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s > 0x7f)
            return false;
    return true;
}

static bool is_utf8(const char *s)
{
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)strlen(s);
    while (left > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
        if (n <= 0)
            return false;
        p += n;
        left -= n;
    }
    return true;
}

typedef struct png_mem {
    uint8_t *data;
    size_t len, cap;
    char err[256]; /* libpng's message when it fails */
} png_mem;

static void mem_write(png_structp png, png_bytep data, png_size_t n)
{
    png_mem *m = png_get_io_ptr(png);
    if (n > m->cap - m->len) {
        size_t cap = m->cap ? m->cap : 65536;
        while (cap - m->len < n) {
            if (cap > SIZE_MAX / 2)
                png_error(png, "image too large for memory");
            cap *= 2;
        }
        uint8_t *d = realloc(m->data, cap);
        if (!d)
            png_error(png, "out of memory");
        m->data = d;
        m->cap = cap;
    }
    memcpy(m->data + m->len, data, n);
    m->len += n;
}

static void mem_flush(png_structp png)
{
    (void)png;
}

static void on_png_error(png_structp png, png_const_charp msg)
{
    png_mem *m = png_get_error_ptr(png);
    snprintf(m->err, sizeof m->err, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* The libpng calls, kept apart so that nothing this frame modifies after setjmp is read after
 * a longjmp. */
static int encode_rows(png_structp png, png_infop info, png_mem *m, const uint8_t *rgb, int width, int height,
                       png_text *chunks, int nchunks)
{
    if (setjmp(png_jmpbuf(png)))
        return -1;
    png_set_write_fn(png, m, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (nchunks > 0)
        png_set_text(png, info, chunks, nchunks);
    png_write_info(png, info);
    for (int y = 0; y < height; y++)
        png_write_row(png, rgb + (size_t)y * (size_t)width * 3);
    png_write_end(png, info);
    return 0;
}

int png_out_encode(const uint8_t *rgb, int width, int height, const png_out_kv *text, int ntext, uint8_t **out,
                   size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (width < 1 || height < 1 || width > PNG_USER_WIDTH_MAX || height > PNG_USER_HEIGHT_MAX)
        return err_set(ERR_INVALID, "PNG: image size %dx%d is outside 1..%d", width, height, PNG_USER_WIDTH_MAX);
    if (ntext < 0 || (ntext > 0 && !text))
        return err_set(ERR_INVALID, "PNG: bad text chunk list (%d entries)", ntext);
    for (int i = 0; i < ntext; i++) {
        if (!text[i].key || !keyword_ok(text[i].key))
            return err_set(ERR_INVALID, "PNG: text key \"%s\" is not a PNG keyword (1-79 printable ASCII "
                                        "characters, no leading, trailing or doubled spaces)",
                           text[i].key ? text[i].key : "(null)");
        if (!text[i].value || !is_utf8(text[i].value))
            return err_set(ERR_INVALID, "PNG: value of text key \"%s\" is %s", text[i].key,
                           text[i].value ? "not valid UTF-8" : "missing");
    }

    png_text *chunks = ntext > 0 ? calloc((size_t)ntext, sizeof *chunks) : NULL;
    if (ntext > 0 && !chunks)
        return err_set(ERR_NOMEM, "PNG: no memory for %d text chunks", ntext);
    for (int i = 0; i < ntext; i++) {
        /* libpng copies these strings; it never writes through the pointers. */
        chunks[i].key = (png_charp)(uintptr_t)text[i].key;
        chunks[i].text = (png_charp)(uintptr_t)text[i].value;
        if (is_ascii(text[i].value)) {
            chunks[i].compression = PNG_TEXT_COMPRESSION_NONE;
        } else {
            chunks[i].compression = PNG_ITXT_COMPRESSION_NONE;
            chunks[i].lang = (png_charp)(uintptr_t) "";
            chunks[i].lang_key = (png_charp)(uintptr_t) "";
        }
    }

    png_mem m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &m, on_png_error, on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    int rc = 0;
    if (!png || !info)
        rc = err_set(ERR_NOMEM, "PNG: cannot create the libpng writer");
    else if (encode_rows(png, info, &m, rgb, width, height, chunks, ntext) != 0)
        rc = err_set(ERR_IO, "PNG: encoding a %dx%d image failed: %s", width, height, m.err);
    png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
    free(chunks);
    if (rc) {
        free(m.data);
        return rc;
    }
    *out = m.data;
    *out_len = m.len;
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes bytes to a new file beside path and renames it over path. */
static int write_atomic(const char *path, const uint8_t *bytes, size_t len)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!*base)
        return err_set(ERR_INVALID, "writing image %s: the path names no file", path);
    int dirlen = slash ? (int)(slash - path) : 1;
    const char *dir = slash ? path : ".";
    if (slash == path)
        dirlen = 1; /* a file in "/" */

    static atomic_uint seq;
    char tmp[4096];
    int fd = -1;
    for (int attempt = 0; attempt < 16 && fd < 0; attempt++) {
        int n = snprintf(tmp, sizeof tmp, "%.*s/.%s.%ld.%u.tmp", dirlen, dir, base, (long)getpid(),
                         atomic_fetch_add(&seq, 1u));
        if (n < 0 || (size_t)n >= sizeof tmp)
            return err_set(ERR_INVALID, "writing image %s: path too long", path);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            return err_set(ERR_IO, "writing image %s: cannot create a file in %.*s: %s", path, dirlen, dir,
                           strerror(errno));
    }
    if (fd < 0)
        return err_set(ERR_IO, "writing image %s: no free temporary name in %.*s", path, dirlen, dir);

    const char *step = NULL;
    if (write_all(fd, bytes, len) != 0)
        step = "write";
    else if (fsync(fd) != 0)
        step = "fsync";
    int saved = errno;
    if (close(fd) != 0 && !step) {
        step = "close";
        saved = errno;
    }
    if (!step && rename(tmp, path) != 0) {
        step = "rename";
        saved = errno;
    }
    if (step) {
        unlink(tmp);
        return err_set(ERR_IO, "writing image %s (%zu bytes): %s failed: %s", path, len, step, strerror(saved));
    }

    /* The rename is durable only once the directory itself is on disk. */
    char dirpath[4096];
    snprintf(dirpath, sizeof dirpath, "%.*s", dirlen, dir);
    int dfd = open(dirpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL)) {
        saved = errno;
        if (dfd >= 0)
            close(dfd);
        return err_set(ERR_IO, "writing image %s: written, but syncing directory %s failed: %s", path, dirpath, strerror(saved));
    }
    close(dfd);
    return 0;
}

int png_out_write(const char *path, const uint8_t *rgb, int width, int height, const png_out_kv *text, int ntext)
{
    uint8_t *bytes;
    size_t len;
    int rc = png_out_encode(rgb, width, height, text, ntext, &bytes, &len);
    if (rc)
        return err_prefix(rc, "writing image %s: ", path);
    rc = write_atomic(path, bytes, len);
    free(bytes);
    return rc;
}
