/*
 * One HTTPS request with libcurl, its outcome classified.
 *
 * md_http_perform() makes exactly one attempt.  Transport failures become
 * errors (MD_E_NETWORK, MD_E_TLS, MD_E_INTERRUPTED, MD_E_SERVICE for an
 * oversized reply).  Any HTTP status, 4xx and 5xx included, counts as a
 * success here, and the caller interprets it.  Retries belong to the
 * caller.
 *
 * Every transfer verifies the server's certificate and host name.  Only
 * https URLs are accepted and redirects are not followed.
 */
#ifndef MDHUNT_HTTP_H
#define MDHUNT_HTTP_H

#include <stddef.h>

#include "mdhunt/buf.h"
#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"

/* Call once before the first md_http_new() (curl_global_init) and once at
 * exit. */
int md_http_global_init(struct md_error *err);
void md_http_global_cleanup(void);

struct md_http_options {
    const char *ca_file;        /* extra trusted CA bundle (PEM), or NULL;
                                   the system CAs stay trusted */
    const char *proxy;          /* proxy URL, or NULL: libcurl reads
                                   HTTPS_PROXY / NO_PROXY itself */
    long connect_timeout;       /* seconds, 0: libcurl's default */
    long timeout;               /* seconds for the whole transfer, 0: none */
    size_t max_reply_size;      /* bytes, 0: no maximum */
};

/* A connection context (one libcurl easy handle, which keeps connections
 * open between requests). */
struct md_http;

/*
 * Create a context.  The strings in opts are copied.  A ca_file that
 * cannot be read or contains no PEM certificate is an MD_E_CONFIG error.
 * Free with md_http_free().
 */
int md_http_new(const struct md_http_options *opts, struct md_http **out,
                struct md_error *err);
void md_http_free(struct md_http *http);

struct md_http_request {
    const char *method;             /* "GET" or "POST" */
    const char *url;                /* https only */
    const char *const *headers;     /* "Name: value" lines, NULL-terminated,
                                       or NULL; never an Authorization
                                       header (use bearer) */
    const struct md_secret *bearer; /* sent as "Authorization: Bearer ...",
                                       or NULL */
    const char *body;               /* request body, or NULL */
    size_t body_len;
    int secret_reply;               /* the reply contains a token:
                                       its buffer is wiped when it grows
                                       and when it is freed */
    int show_progress;              /* show the waiting time on stderr
                                       when stderr is a terminal */
};

#define MD_HTTP_ID_MAX 128

/* A reply: status, body and the headers mdhunt uses.  Header values are
 * copied with control characters replaced and truncated to fit.  An
 * absent header is an empty string. */
struct md_http_response {
    long status;
    struct md_buf body;
    char request_id[MD_HTTP_ID_MAX];         /* request-id */
    char client_request_id[MD_HTTP_ID_MAX];  /* client-request-id */
    char ms_request_id[MD_HTTP_ID_MAX];      /* x-ms-request-id */
    char content_type[MD_HTTP_ID_MAX];
    long retry_after;       /* seconds from now; -1 when absent or invalid */
    int secret_body;        /* wipe body on free */
};

void md_http_response_init(struct md_http_response *resp);

/* Free the body (wiped first when it contained a token) and reset resp. */
void md_http_response_free(struct md_http_response *resp);

/*
 * Send one request and receive the reply into resp, which the caller has
 * initialised and frees.  Returns 0 when an HTTP reply arrived, whatever
 * its status, and -1 with err set otherwise:
 *   MD_E_NETWORK      name resolution, connect, reset, timeout, empty or
 *                     cut-off reply
 *   MD_E_TLS          handshake or certificate failure
 *   MD_E_INTERRUPTED  md_interrupt_pending() was set during the transfer
 *   MD_E_SERVICE      reply larger than max_reply_size
 *   MD_E_CONFIG       a URL that is not https or cannot be parsed
 *   MD_E_INTERNAL     out of memory
 */
int md_http_perform(struct md_http *http, const struct md_http_request *req,
                    struct md_http_response *resp, struct md_error *err);

/*
 * A replacement for the network, for tests: md_http_perform() calls it
 * instead of libcurl, after its own checks.  It fills resp (status, body,
 * the header fields) and returns 0, or returns -1 with err set as
 * md_http_perform() would.
 */
typedef int (*md_http_transport_fn)(const struct md_http_request *req,
                                    struct md_http_response *resp,
                                    struct md_error *err, void *ctx);

/* Send the requests of http through fn (NULL: the network again). */
void md_http_set_transport(struct md_http *http, md_http_transport_fn fn,
                           void *ctx);

/*
 * Parse a Retry-After value: delay-seconds ("120") or an IMF-fixdate
 * ("Wed, 21 Oct 2015 07:28:00 GMT") turned into seconds after now
 * (0 when the date has passed).  Returns the seconds, or -1 when the value
 * is malformed or out of range.
 */
long md_http_parse_retry_after(const char *value, md_instant now);

#endif
