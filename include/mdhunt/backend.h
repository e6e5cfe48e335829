/*
 * The hunting backends: one KQL query in, one result table out.
 *
 *   graph     POST {url}/v1.0/security/runHuntingQuery
 *             {"Query": "...", "Timespan": "P5D"}
 *             reply {"schema": [{"name", "type"}], "results": [{...}]}
 *   defender  POST {url}/api/advancedhunting/run
 *             {"Query": "..."}
 *             reply {"Stats": {...}, "Schema": [{"Name", "Type"}],
 *                    "Results": [{...}]}
 *   sentinel  POST {url}/v1/workspaces/{workspace_id}/query
 *             {"query": "...", "timespan": "P5D"}, see backend_la.h
 *
 * Reply keys and schema entry keys are matched case-insensitively, because
 * Microsoft's documentation shows both spellings.  The query reaches the
 * service byte for byte as the rule contains it.
 *
 * Retries.  md_backend_run() tries a query again after a failure that
 * may pass:
 *   network failures, resets, timeouts, 5xx replies and 200 replies
 *   that are not JSON or are cut off
 *           exponential backoff with full jitter: a random wait from 0 to
 *           1 s, 2 s, 4 s ... (at most 60 s), or the Retry-After a 5xx
 *           carries
 *   429 for the call rate
 *           Retry-After (seconds or an HTTP date), else half to all of the
 *           window the message names ("45 per 00:01:00": 30 to 60 s);
 *           no call of the application starts before then (budget)
 *   429 for the CPU quota
 *           the tenant is paused for Retry-After, else 15 minutes, in the
 *           budget; the query waits only when that fits max_retry_time
 *   401     a new token, and one retry at once; a second 401 in a row
 *           fails
 * and never after 400 (syntax, too large, preempted), 403, 404, 408 and
 * 504 (preempted: a timed-out query has already spent CPU quota), TLS
 * failures and a reply over max_reply_size.  [api] max_retries bounds
 * the retries (0: none) and [api] max_retry_time the time spent waiting:
 * a wait that would pass it is not started, and the last error is
 * returned.  Every retry is logged on one line with the word "retry", the
 * attempt, the HTTP status, the wait and the request id.
 *
 * Budget.  Before every attempt a slot is reserved in the call budget of
 * the tenant and application (see budget.h): in STORE_PATH.budget when
 * the configuration has a [store] section, else in memory.  A call that
 * must wait for its slot is paced; one whose slot lies beyond
 * max_retry_time fails with MD_E_THROTTLED, and one of a paused tenant
 * with MD_E_CPU_QUOTA.
 */
#ifndef MDHUNT_BACKEND_H
#define MDHUNT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/http.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/table.h"

/* A backend with its HTTP context and token source (opaque). */
struct md_backend;

/*
 * Create the backend named by cfg->api.backend, with the credential
 * already loaded (md_config_require_auth).  The settings are copied, so
 * cfg may be freed afterwards.  The sentinel backend needs [api]
 * workspace_id (MD_E_CONFIG without it).  The call budget goes into STORE_PATH.budget when cfg
 * has a [store] section.  A file that cannot be opened is warned about,
 * and the budget is kept in memory then.  Free with md_backend_free().
 */
int md_backend_new(const struct md_config *cfg, struct md_backend **out,
                   struct md_error *err);
void md_backend_free(struct md_backend *backend);

/* Show the waiting time on stderr while the service works (when stderr is
 * a terminal). */
#define MD_BACKEND_PROGRESS 0x1

/* How often and how long a failed request is tried again. */
struct md_retry_policy {
    long max_retries;           /* retries after the first attempt */
    int64_t max_retry_time;     /* seconds all waits may add up to */
    int64_t base_delay_ms;      /* backoff ceiling of the first retry */
    int64_t max_delay_ms;       /* largest backoff ceiling */
};

/* The policy of a configuration: [api] max_retries and max_retry_time,
 * with a backoff from 1 s up to 60 s. */
void md_backend_policy_from_config(const struct md_config *cfg,
                                   struct md_retry_policy *policy);

void md_backend_set_policy(struct md_backend *backend,
                           const struct md_retry_policy *policy);

/*
 * Replaceable parts, so that tests run the retry loop without waiting.
 * A NULL member uses the real one.
 */
struct md_backend_hooks {
    /* The current time; default md_now(). */
    md_instant (*now)(void *ctx);

    /* Wait ms milliseconds; return -1 when a stop request cut the wait
     * short.  The default sleeps in steps that check
     * md_interrupt_pending(). */
    int (*sleep)(int64_t ms, void *ctx);

    /* A random number in [0, 1) for jitter; default from RAND_bytes(). */
    double (*random)(void *ctx);

    void *ctx;
};

/* Replace the hooks; they are copied. */
void md_backend_set_hooks(struct md_backend *backend,
                          const struct md_backend_hooks *hooks);

/* The backend's HTTP context, for md_http_set_transport() in tests.
 * Borrowed from backend. */
struct md_http *md_backend_http(struct md_backend *backend);

/*
 * Keep the call budget in the file at path (created when missing),
 * shared with other processes, instead of where md_backend_new() put it.
 * The runner uses STORE_PATH + MD_BUDGET_SUFFIX.  A file that cannot be
 * opened is MD_E_STORE and leaves the budget as it was.
 */
int md_backend_use_budget_file(struct md_backend *backend, const char *path,
                               struct md_error *err);

/* Set *until to the end of the tenant's CPU-quota pause, or 0 when the
 * tenant is not paused now. */
int md_backend_paused_until(struct md_backend *backend, md_instant *until,
                            struct md_error *err);

/* The application permission a backend needs, e.g.
 * "ThreatHunting.Read.All"; NULL for an unsupported backend. */
const char *md_backend_permission(enum md_backend_kind kind);

/* Where that permission is granted, e.g. "Microsoft Graph". */
const char *md_backend_permission_api(enum md_backend_kind kind);

/*
 * Run one hunting query.  period_seconds is the rule's queryPeriod: graph
 * sends it as Timespan when > 0 (otherwise Graph scans its default of 30
 * days); defender ignores it, since the time range must be in the KQL;
 * sentinel sends it as timespan, else [api] default_timespan.
 * flags: MD_BACKEND_PROGRESS or 0.
 *
 * On success *out is a new table (free with md_table_free) whose truncated
 * flag is set when the reply held MD_SERVICE_ROW_LIMIT rows or more
 * (sentinel: MD_LA_ROW_LIMIT rows, or a partial result, which is logged).
 * Failures are retried as the header comment describes.  On failure err
 * carries http_status, service_code and request_id where the service gave
 * them.  The kinds are those of md_backend_map_error(), of
 * md_auth_token() and of md_http_perform(), and these:
 *   MD_E_RULE         a query that is not valid UTF-8
 *   MD_E_SERVICE      an unreadable reply
 *   MD_E_THROTTLED    the call budget has no slot in time
 *   MD_E_CPU_QUOTA    the tenant is paused
 *   MD_E_INTERRUPTED  a stop request ended a wait
 */
int md_backend_run(struct md_backend *backend, const char *query,
                   size_t len, int64_t period_seconds, int flags,
                   struct md_table **out, struct md_error *err);

/*
 * Build the JSON request body for a backend: UTF-8, non-ASCII characters
 * unescaped.  A query that is not valid UTF-8 is MD_E_RULE.  *body is
 * NUL-terminated; free it with free().  sentinel: md_la_build_body()
 * without a default_timespan.
 */
int md_backend_build_body(enum md_backend_kind kind, const char *query,
                          size_t len, int64_t period_seconds, char **body,
                          size_t *body_len, struct md_error *err);

/*
 * Parse a 200 reply body into a new table (free with md_table_free).
 * Rows are objects keyed by column name; a missing key is null and a key
 * outside the schema is ignored.  A body that is not JSON, a missing or
 * malformed schema or results array, a row that is not an object and a
 * value that does not fit its column are MD_E_SERVICE errors saying what
 * is wrong.
 */
int md_backend_parse_graph(const char *body, size_t len,
                           struct md_table **out, struct md_error *err);
int md_backend_parse_defender(const char *body, size_t len,
                              struct md_table **out, struct md_error *err);

/*
 * Turn a reply with a status other than 200 into err and return -1.
 * sentinel: md_la_map_error() without a workspace id.
 * Fills http_status, service_code (error.code) and request_id (Graph:
 * the request-id header or error.innerError.request-id; Defender:
 * error.target; else the x-ms-request-id header).  retry_after comes from
 * the Retry-After header.
 *   400  MD_E_QUERY_SYNTAX, or MD_E_QUERY_TOO_LARGE when the message
 *        speaks of the result size, MD_E_QUERY_PREEMPTED when it speaks of
 *        a timeout, preemption or excessive resource use, MD_E_INTERNAL
 *        for InvalidRequestBody / MissingRequiredParameter
 *  401  MD_E_AUTH          403  MD_E_PERMISSION    404  MD_E_CONFIG
 *  408, 504  MD_E_QUERY_PREEMPTED: the service gave up on the query in
 *        time, which a cheaper query avoids
 *  429  MD_E_THROTTLED, or MD_E_CPU_QUOTA when the message speaks of
 *        processing resources or CPU
 *  other statuses  MD_E_SERVICE
 */
int md_backend_map_error(enum md_backend_kind kind,
                         const struct md_http_response *resp,
                         struct md_error *err);

/* Whether a service's error message says the result was too large, or
 * that the query was preempted or ran out of time (ASCII letters
 * compared ignoring case).  Shared by every backend's error mapping. */
int md_backend_message_too_large(const char *message);
int md_backend_message_preempted(const char *message);

#endif
