/* Output images: the pipeline's post-processing from VAE output to 8-bit RGB (rounded exactly as
 * diffusers and numpy round), and PNG encoding with libpng into memory or into a file written
 * atomically, carrying the generation parameters as text chunks.
 *
 * Not for: reading PNGs, other pixel formats (alpha, 16-bit, palette), or choosing which
 * parameters to record; the caller passes the key/value list it wants stored. */
#ifndef FOCUS_ENGINE_PNG_OUT_H
#define FOCUS_ENGINE_PNG_OUT_H

#include "kernels/kn.h"

#include <stddef.h>
#include <stdint.h>

/* One text chunk. key: 1-79 printable ASCII characters, no leading, trailing or doubled spaces
 * (the PNG keyword rules), e.g. "prompt", "seed", "Software". value: UTF-8; stored as tEXt when
 * it is plain ASCII, else as iTXt. */
typedef struct png_out_kv {
    const char *key;
    const char *value;
} png_out_kv;

/* VaeImageProcessor.postprocess of one image. chw: the VAE output, 3 planes of height x width,
 * holding values of dtype dt (KN_F32, or exact KN_F16/KN_BF16 values widened to float). Like
 * diffusers, (x / 2 + 0.5).clamp(0, 1) runs in dt, then the image is widened to float32 and
 * permuted to HWC. unit (may be NULL) receives that [0, 1] HWC image, what output_type="np"
 * returns; rgb receives height x width x 3 bytes, each png_out_unit_to_u8 of it.
 * ERR_INVALID for another dtype or a size below 1. */
int png_out_postprocess(const float *chw, int width, int height, kn_dtype dt, float *unit, uint8_t *rgb);

/* numpy's (x * 255).round().astype(uint8) for x in [0, 1]: a float32 product, then rounding
 * half to even (127.5 -> 128, 126.5 -> 126). NaN gives 0. */
uint8_t png_out_unit_to_u8(float x);

/* Encodes rgb (height rows of width x 3 bytes, top row first) as an 8-bit RGB PNG with the
 * ntext text chunks in order. *out is malloc'ed; the caller frees it. */
int png_out_encode(const uint8_t *rgb, int width, int height, const png_out_kv *text, int ntext, uint8_t **out,
                   size_t *out_len);

/* png_out_encode's bytes written to path atomically: a temporary file in the same directory,
 * fsync, rename over path, fsync of the directory. On any failure (missing or unwritable
 * directory, full disk, file size limit) it returns ERR_IO naming the path and the system's
 * reason, and leaves neither the temporary file nor anything at path behind (an existing file at
 * path is kept as it was). The one exception is a failed fsync of the directory after the
 * rename: the complete image is then in place, and the message says the directory sync failed. */
int png_out_write(const char *path, const uint8_t *rgb, int width, int height, const png_out_kv *text, int ntext);

#endif
