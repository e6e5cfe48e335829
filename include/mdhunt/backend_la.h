/*
 * The Azure Monitor Log Analytics query API, through which the sentinel
 * backend hunts in a Microsoft Sentinel workspace.
 *
 *   POST {url}/v1/workspaces/{workspace_id}/query
 *   {"query": "...", "timespan": "P5D"}
 *   reply {"tables": [{"name": "PrimaryResult",
 *                      "columns": [{"name": ..., "type": "datetime"}],
 *                      "rows": [[value, ...], ...]}]}
 *
 * Unlike Graph and Defender, column types are lower-case Kusto names and
 * rows are positional arrays.  A 200 reply may carry an "error" object
 * (code PartialError) beside the tables: the result is then incomplete.
 * Reply keys are matched case-insensitively, as the other backends do.
 */
#ifndef MDHUNT_BACKEND_LA_H
#define MDHUNT_BACKEND_LA_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/error.h"
#include "mdhunt/http.h"
#include "mdhunt/table.h"

/* Rows a Log Analytics query returns at most; a reply of that many rows
 * is flagged as possibly truncated. */
#define MD_LA_ROW_LIMIT 500000

/* The timespan sent when neither the rule's queryPeriod nor [api]
 * default_timespan gives one: 30 days, as Graph scans by default. */
#define MD_LA_DEFAULT_TIMESPAN "P30D"

/* Seconds the service lets a query run without a Prefer: wait header,
 * and the most that header may ask for. */
#define MD_LA_DEFAULT_WAIT 180
#define MD_LA_MAX_WAIT 600

/*
 * Build the query URL "{base}/v1/workspaces/{workspace_id}/query"; one
 * trailing slash of base is dropped.  A missing workspace_id, or one that
 * is not a GUID, is MD_E_CONFIG naming [api] workspace_id.  *url is
 * NUL-terminated; free it with free().
 */
int md_la_build_url(const char *base, const char *workspace_id,
                    char **url, struct md_error *err);

/*
 * Build the JSON request body {"query": ..., "timespan": ...}: UTF-8,
 * non-ASCII characters unescaped.  The timespan is the rule's queryPeriod
 * as an ISO 8601 duration when period_seconds > 0, else default_timespan,
 * else MD_LA_DEFAULT_TIMESPAN.  A query that is not valid UTF-8 is
 * MD_E_RULE.  *body is NUL-terminated; free it with free().
 */
int md_la_build_body(const char *query, size_t len, int64_t period_seconds,
                     const char *default_timespan, char **body,
                     size_t *body_len, struct md_error *err);

/*
 * Format the "Prefer: wait=N" header into buf (size bytes) and return 1
 * when the transfer timeout leaves the service more than its default
 * MD_LA_DEFAULT_WAIT seconds.  Otherwise return 0 and leave buf empty.
 * N is the timeout less 10 seconds, at most MD_LA_MAX_WAIT.  The margin
 * lets the service's own timeout reply (504) arrive before mdhunt gives
 * up on the transfer.
 */
int md_la_prefer_header(long timeout_seconds, char *buf, size_t size);

/*
 * Parse a 200 reply body into a new table (free with md_table_free).
 * Only the table named PrimaryResult is used.  Each row is an array of
 * one value per column; a dynamic cell whose text is a JSON object or
 * array becomes that value (md_table_set_cell_json).
 *
 * An "error" object beside the tables marks a partial result, so the
 * table is flagged truncated.  When partial is not NULL, *partial then
 * receives a one-line description of the error and its details (free
 * with free()), and NULL for a complete result.  A result of
 * MD_LA_ROW_LIMIT rows or more is flagged truncated too.
 *
 * An empty body, a body that is not JSON, missing or malformed tables,
 * columns or rows, a row whose length differs from the columns' and a
 * value that does not fit its column are MD_E_SERVICE errors saying what
 * is wrong.
 */
int md_la_parse_reply(const char *body, size_t len, struct md_table **out,
                      char **partial, struct md_error *err);

/*
 * Turn a reply with a status other than 200 or 204 into err and return
 * -1.  Fills http_status, service_code (error.code), request_id (the
 * x-ms-request-id header, else request-id) and retry_after.
 *   400  MD_E_QUERY_SYNTAX (BadArgumentError, innererror SyntaxError and
 *        the rest), MD_E_QUERY_TOO_LARGE or MD_E_QUERY_PREEMPTED when the
 *        message speaks of the result size or of a timeout
 *   401  MD_E_AUTH
 *   403  MD_E_AUTH for InvalidAuthenticationToken and
 *        InvalidAuthenticationTokenAudience, else MD_E_PERMISSION
 *        (InsufficientAccessError), naming workspace_id
 *   404  MD_E_CONFIG naming workspace_id and [api] workspace_id
 *   408, 504  MD_E_QUERY_PREEMPTED: the query ran out of time
 *   429  MD_E_THROTTLED
 *   other statuses  MD_E_SERVICE
 * workspace_id may be NULL.
 */
int md_la_map_error(const struct md_http_response *resp,
                    const char *workspace_id, struct md_error *err);

/*
 * Turn any reply into a table: 200 is parsed by md_la_parse_reply(),
 * 204 No Content (a workspace without data) is an empty table and every
 * other status goes through md_la_map_error().  Owns and frees like
 * md_la_parse_reply(); on failure *out and *partial are NULL.
 */
int md_la_read_reply(const struct md_http_response *resp,
                     const char *workspace_id, struct md_table **out,
                     char **partial, struct md_error *err);

#endif
