/* Error reporting shared by every module: a function that fails returns a negative code and
 * leaves a human-readable message in a thread-local buffer, naming the file, tensor or field
 * at fault. The caller either adds context with err_prefix() or hands the message on. */
#ifndef FOCUS_COMMON_ERR_H
#define FOCUS_COMMON_ERR_H

enum err_code {
    ERR_OK = 0,
    ERR_IO = -1,       /* open, read, mmap, write failed */
    ERR_FORMAT = -2,   /* a file or message is malformed */
    ERR_SHAPE = -3,    /* tensor shape or dtype does not match what the config says */
    ERR_MISSING = -4,  /* a required file, tensor or key is absent */
    ERR_RANGE = -5,    /* a value is outside its allowed range */
    ERR_NOMEM = -6,    /* allocation failed */
    ERR_INVALID = -7,  /* bad argument from the caller */
    ERR_DEVICE = -8,   /* backend failure (CUDA error, unsupported dtype on a device) */
    ERR_CANCELED = -9, /* work stopped because it was asked to */
    /* The device is unusable for the rest of the process (a sticky CUDA error: a kernel fault,
     * an uncorrectable ECC error, a lost context); only a new process can use it again. */
    ERR_DEVICE_LOST = -10,
};

/* Sets the message and returns code, so that `return err_set(ERR_IO, "...")` reads naturally. */
int err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends context to the current message ("loading text_encoder: " + old) and returns code. */
int err_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The current thread's last message; never NULL. */
const char *err_msg(void);
/* The code the current thread's last err_set or err_prefix returned (ERR_OK before any): for
 * functions that report failure by a NULL pointer. */
int err_code(void);
const char *err_code_name(int code);

#endif
