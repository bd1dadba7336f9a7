/* How `focus` shows what the daemon said: JSON objects (jansson) for --json, one per line on
 * stdout, and the human forms of job status, times, sizes and checksums. Nothing here talks
 * to the daemon or decides exit statuses. */
#ifndef FOCUS_CLIENT_OUTPUT_H
#define FOCUS_CLIENT_OUTPUT_H

#include "client/focus.h"

#include <jansson.h>
#include <stdio.h>

/* Prints obj compactly as one line on stdout and releases it. */
void fc_out_json(json_t *obj);
/* {"error": {"status": EXIT, "message": MESSAGE}} on stdout, for --json runs that fail. */
void fc_out_error(const struct fc_ctx *ctx, const char *message);

/* Seconds (durations, Unix times) rounded to the millisecond. */
json_t *fc_json_seconds(double s);
/* Seeds above INT64_MAX, which jansson cannot hold as integers, become decimal strings. */
json_t *fc_json_u64(uint64_t v);
json_t *fc_json_params(const struct proto_submit *p);
json_t *fc_json_status(const struct proto_job_status *st);
json_t *fc_json_event(const struct proto_event *ev);

/* The human "key: value" block of one job. */
void fc_print_status(FILE *f, const struct proto_job_status *st);

void fc_format_hex(const uint8_t *bytes, size_t n, char *out); /* out: 2n + 1 chars */
/* Local date and time of a Unix time; "-" for 0. */
void fc_format_time(double unix_time, char *buf, size_t n);
/* "1:02:03", "2:03" or "12.3 s" */
void fc_format_duration(double seconds, char *buf, size_t n);
/* "1.5 GiB", "12 MiB", "300 B" */
void fc_format_bytes(uint64_t bytes, char *buf, size_t n);

#endif
