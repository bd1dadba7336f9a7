/* focusd's configuration: the focusd.conf file (`key = value` lines, `[model NAME]` sections)
 * with command-line overrides layered on top, parsed into one struct config. The daemon reads
 * it at start and again on SIGHUP; the overrides are kept so that a reload applies them again.
 * Every key is documented in etc/focusd.conf. Not for runtime state: a config is immutable once
 * loaded, and a reload builds a new one. */
#ifndef FOCUS_DAEMON_CONFIG_H
#define FOCUS_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_NAME_MAX 64

struct config_model {
    char name[CONFIG_NAME_MAX + 1];
    char *path;   /* the diffusers-layout model directory */
    char *device; /* NULL: the top-level device */
};

struct config {
    char *listen;                /* ipc:// endpoint */
    char *tcp;                   /* tcp:// endpoint, NULL when off */
    char *curve_secret_key_file; /* Z85 secret key of the server (tcp only) */
    char *curve_authorized_keys; /* file of Z85 client public keys (tcp only) */
    int socket_mode;             /* permission bits of the ipc socket file; -1: leave as bound */
    char *socket_group;          /* group of the ipc socket file; NULL: leave */
    char **allow_users;          /* ipc peers admitted; none configured (and no groups): all */
    size_t n_allow_users;
    char **allow_groups;
    size_t n_allow_groups;
    char *state_dir;
    char *store;       /* "sqlite", or a postgresql:// URI of a store shared by daemons */
    double lease_time; /* shared store: seconds a daemon's claim on a job lasts unrenewed */
    char *device;        /* auto, cpu, cuda, cuda:N */
    char *precision;     /* auto, fp32, bf16, fp16 (engine_precision_parse) */
    bool text_on_cpu;    /* text_device = cpu: the text encoders on the CPU */
    char *default_model; /* NULL: the first model */
    uint32_t max_queue;  /* queued jobs before submit answers busy */
    uint32_t max_jobs_per_peer;    /* queued jobs of one peer (uid or CURVE key) */
    uint32_t max_sessions;         /* sessions in all */
    uint32_t max_sessions_per_peer;
    uint32_t batch_max;        /* compatible jobs advanced by one engine_step */
    uint64_t max_job_pixels;   /* width * height * count above which submit is too_large */
    uint64_t memory_limit;     /* device bytes a model and one job may take; 0: the device's */
    double retention_age;      /* seconds a finished job and its images are kept; 0: forever */
    uint64_t retention_bytes;  /* total image bytes kept; 0: no limit */
    double retention_interval; /* seconds between retention passes */
    uint64_t client_buffer;    /* bytes queued towards one slow client before busy answers */
    uint32_t client_backlog;   /* busy answers waiting for one client before all are dropped */
    double session_timeout;    /* seconds after which an idle client's session is forgotten */
    int log_level;
    struct config_model *models;
    size_t n_models;
};

/* What the command line said, applied over the file on every (re)load. */
struct config_overrides {
    char *config_file; /* NULL: no file, defaults and overrides only */
    char **keys, **values;
    size_t n;
};

/* Parses argv into ov. Returns 0, 1 when --help or --version printed something and the
 * program should exit 0, or a negative code (message via err_set) for a bad command line. */
int config_parse_args(int argc, char **argv, struct config_overrides *ov);
void config_overrides_free(struct config_overrides *ov);

/* Builds a config from the defaults, the file (when ov names one) and the overrides. Errors
 * name the file, the line and the key. */
int config_load(const struct config_overrides *ov, struct config **out);
void config_free(struct config *c);

const struct config_model *config_find_model(const struct config *c, const char *name);
/* The device a model runs on: its own setting or the top-level one. */
const char *config_model_device(const struct config *c, const struct config_model *m);

#endif
