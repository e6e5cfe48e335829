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
 *
 * Reply keys and schema entry keys are matched case-insensitively, because
 * Microsoft's documentation shows both spellings.  The query reaches the
 * service byte for byte as the rule contains it.
 */
#ifndef MDHUNT_BACKEND_H
#define MDHUNT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/http.h"
#include "mdhunt/table.h"

/* A backend with its HTTP context and token source (opaque). */
struct md_backend;

/*
 * Create the backend named by cfg->api.backend, with the client secret
 * already loaded (md_config_require_auth).  The settings are copied, so
 * cfg may be freed afterwards.  The sentinel backend is MD_E_CONFIG (not
 * supported yet).  Free with md_backend_free().
 */
int md_backend_new(const struct md_config *cfg, struct md_backend **out,
                   struct md_error *err);
void md_backend_free(struct md_backend *backend);

/* Show the waiting time on stderr while the service works (when stderr is
 * a terminal). */
#define MD_BACKEND_PROGRESS 0x1

/*
 * Run one hunting query.  period_seconds is the rule's queryPeriod: graph
 * sends it as Timespan when > 0 (otherwise Graph scans its default of 30
 * days); defender ignores it, since the time range must be in the KQL.
 * flags: MD_BACKEND_PROGRESS or 0.
 *
 * On success *out is a new table (free with md_table_free) whose truncated
 * flag is set when the reply held MD_SERVICE_ROW_LIMIT rows or more.
 * On failure err carries http_status, service_code and request_id where
 * the service gave them.  The kinds are those of md_backend_map_error(),
 * MD_E_RULE for a query that is not valid UTF-8, MD_E_SERVICE for an
 * unreadable reply, and the errors of md_auth_token() and
 * md_http_perform().
 */
int md_backend_run(struct md_backend *backend, const char *query,
                   size_t len, int64_t period_seconds, int flags,
                   struct md_table **out, struct md_error *err);

/*
 * Build the JSON request body for a backend: UTF-8, non-ASCII characters
 * unescaped.  A query that is not valid UTF-8 is MD_E_RULE.  *body is
 * NUL-terminated; free it with free().
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

#endif
