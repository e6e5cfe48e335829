/*
 * The Log Analytics query API: request body, reply parsing and error
 * mapping for the sentinel backend.  backend.c sends the request.
 */
#include "mdhunt/backend_la.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/backend.h"
#include "mdhunt/buf.h"
#include "mdhunt/mdtime.h"

#define SERVICE "Log Analytics"

/* Name of the result table; the service may send more tables. */
#define PRIMARY_TABLE "PrimaryResult"

/* Bytes of a service message or an unexpected body quoted in an error. */
#define MESSAGE_QUOTE_MAX 400
#define BODY_QUOTE_MAX 200

/* Details of a partial error described, and nested innererror levels
 * followed, at most. */
#define PARTIAL_DETAILS_MAX 3
#define INNER_ERROR_DEPTH_MAX 8

/* Length in bytes after which a partial-error description stops adding
 * details. */
#define PARTIAL_TEXT_MAX 1500

/* Seconds between the service's own timeout and mdhunt's, so that the
 * service's 504 reply arrives before the transfer times out. */
#define WAIT_MARGIN 10

int md_la_build_url(const char *base, const char *workspace_id,
                    char **url, struct md_error *err)
{
    struct md_buf buf = MD_BUF_INIT;
    size_t base_len = strlen(base);
    size_t i;

    *url = NULL;
    if (workspace_id == NULL || workspace_id[0] == '\0')
        return md_error_set(err, MD_E_CONFIG,
                            "[api] workspace_id is missing; the sentinel "
                            "backend needs the Workspace ID (a GUID) shown "
                            "on the Log Analytics workspace's Overview "
                            "page");
    for (i = 0; workspace_id[i] != '\0'; i++) {
        char c = workspace_id[i];
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        int hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')
                  || (c >= 'A' && c <= 'F');

        if (dash ? c != '-' : !hex)
            break;
    }
    if (i != 36 || workspace_id[i] != '\0')
        return md_error_set(err, MD_E_CONFIG,
                            "[api] workspace_id \"%.64s\" is not a GUID; "
                            "give the Workspace ID shown on the Log "
                            "Analytics workspace's Overview page, not its "
                            "resource ID", workspace_id);

    if (base_len > 0 && base[base_len - 1] == '/')
        base_len--;
    if (md_buf_printf(&buf, "%.*s/v1/workspaces/%s/query", (int)base_len,
                      base, workspace_id) != 0
        || (*url = md_buf_detach(&buf)) == NULL) {
        md_buf_free(&buf);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }
    return 0;
}

/* Offset of the first byte that breaks UTF-8 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or len when valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        unsigned long cp;
        size_t n;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (len - i <= n)
            return i;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)
            || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return i;
        i += n + 1;
    }
    return len;
}

int md_la_build_body(const char *query, size_t len, int64_t period_seconds,
                     const char *default_timespan, char **body,
                     size_t *body_len, struct md_error *err)
{
    size_t bad = utf8_invalid_at((const unsigned char *)query, len);
    const char *timespan = default_timespan;
    char period[64];
    json_t *root;

    *body = NULL;
    if (bad < len)
        return md_error_set(err, MD_E_RULE,
                            "the query is not valid UTF-8 (byte %zu of "
                            "%zu); save the rule file as UTF-8", bad + 1,
                            len);
    if (period_seconds > 0)
        timespan = md_duration_iso8601(period_seconds, period,
                                       sizeof(period));
    if (timespan == NULL || timespan[0] == '\0')
        timespan = MD_LA_DEFAULT_TIMESPAN;

    root = json_object();
    if (root != NULL
        && json_object_set_new(root, "query",
                               json_stringn(query, len)) == 0
        && json_object_set_new(root, "timespan",
                               json_string(timespan)) == 0)
        *body = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (*body == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    *body_len = strlen(*body);
    return 0;
}

int md_la_prefer_header(long timeout_seconds, char *buf, size_t size)
{
    long wait = timeout_seconds - WAIT_MARGIN;

    if (size > 0)
        buf[0] = '\0';
    if (wait <= MD_LA_DEFAULT_WAIT)
        return 0;
    if (wait > MD_LA_MAX_WAIT)
        wait = MD_LA_MAX_WAIT;
    snprintf(buf, size, "Prefer: wait=%ld", wait);
    return 1;
}

/* Member of an object by key: the exact spelling first, else the first
 * key equal to it ignoring ASCII case. */
static json_t *get_ci(json_t *object, const char *key)
{
    json_t *value = json_object_get(object, key);
    const char *k;
    json_t *v;

    if (value != NULL || !json_is_object(object))
        return value;
    json_object_foreach(object, k, v) {
        if (md_strcasecmp(k, key) == 0)
            return v;
    }
    return NULL;
}

/* Copy at most max bytes of text for a message, control characters
 * replaced by spaces and trailing spaces dropped. */
static void quote_text(char *dst, size_t size, const char *src, size_t len,
                       size_t max)
{
    size_t n = len < max ? len : max;

    if (n >= size)
        n = size - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];

        dst[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    while (n > 0 && dst[n - 1] == ' ')
        n--;
    dst[n] = '\0';
}

static void copy_string(char *dst, size_t size, json_t *value)
{
    dst[0] = '\0';
    if (json_is_string(value))
        quote_text(dst, size, json_string_value(value),
                   json_string_length(value), size - 1);
}

/* Append ' CODE: "message"' for one error object, as far as it has
 * either. */
static int describe_error_object(struct md_buf *b, json_t *object)
{
    char code[64];
    char message[MESSAGE_QUOTE_MAX + 1];

    copy_string(code, sizeof(code), get_ci(object, "code"));
    copy_string(message, sizeof(message), get_ci(object, "message"));
    if (code[0] != '\0' && md_buf_puts(b, code) != 0)
        return -1;
    if (message[0] == '\0')
        return 0;
    return md_buf_printf(b, "%s\"%s\"", code[0] != '\0' ? ": " : "",
                         message);
}

/* Append '<sep>LABEL CODE: "message"' for object and for each level of
 * its innererror chain, and set *sep to "; " after the first. */
static int describe_chain(struct md_buf *b, json_t *object,
                          const char *label, const char **sep)
{
    for (int depth = 0; json_is_object(object)
                        && depth < INNER_ERROR_DEPTH_MAX; depth++) {
        if (b->len >= PARTIAL_TEXT_MAX)
            return 0;
        if (md_buf_printf(b, "%s%s ", *sep, depth == 0 ? label : "inner")
            != 0 || describe_error_object(b, object) != 0)
            return -1;
        *sep = "; ";
        object = get_ci(object, "innererror");
    }
    return 0;
}

/* One line for a partial error: the error, its first details and the
 * innererror chains, e.g. 'PartialError: "There were some errors ..."
 * (detail EngineError: "..."; inner -2133196753: "Query result set has
 * exceeded ...")'. */
static char *describe_partial(json_t *error)
{
    struct md_buf b = MD_BUF_INIT;
    json_t *details = get_ci(error, "details");
    const char *sep = " (";
    json_t *detail;
    size_t i;
    int rc;

    rc = describe_error_object(&b, error);
    if (rc == 0 && b.len == 0)
        rc = md_buf_puts(&b, "an error without code or message");
    json_array_foreach(details, i, detail) {
        if (rc != 0 || i >= PARTIAL_DETAILS_MAX)
            break;
        rc = describe_chain(&b, detail, "detail", &sep);
    }
    if (rc == 0)
        rc = describe_chain(&b, get_ci(error, "innererror"), "inner", &sep);
    if (rc == 0 && sep[0] == ';')
        rc = md_buf_putc(&b, ')');
    if (rc != 0) {
        md_buf_free(&b);
        return NULL;
    }
    return md_buf_detach(&b);
}

static int add_columns(json_t *columns, struct md_table *t,
                       struct md_error *err)
{
    json_t *entry;
    size_t i;

    json_array_foreach(columns, i, entry) {
        json_t *name = get_ci(entry, "name");
        json_t *type = get_ci(entry, "type");
        const char *type_name = json_is_string(type)
                                ? json_string_value(type) : "";

        if (!json_is_object(entry))
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from " SERVICE ": column %zu "
                                "is not a JSON object", i + 1);
        if (!json_is_string(name) || json_string_length(name) == 0)
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from " SERVICE ": column %zu "
                                "has no name", i + 1);
        if (strlen(json_string_value(name)) != json_string_length(name))
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from " SERVICE ": the name "
                                "of column %zu contains a NUL byte", i + 1);
        if (md_table_add_column(t, json_string_value(name), type_name,
                                err) != 0)
            return md_error_prefix(err, "invalid reply from " SERVICE);
    }
    return 0;
}

static int add_rows(json_t *rows, struct md_table *t, struct md_error *err)
{
    json_t *row;
    size_t i;

    json_array_foreach(rows, i, row) {
        struct md_cell *cells;

        if (!json_is_array(row))
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from " SERVICE ": row %zu is "
                                "not a JSON array", i + 1);
        if (json_array_size(row) != t->ncolumns)
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from " SERVICE ": row %zu "
                                "has %zu values for %zu columns", i + 1,
                                json_array_size(row), t->ncolumns);
        cells = md_table_add_row(t);
        if (cells == NULL)
            return md_error_set(err, MD_E_INTERNAL, "out of memory");
        for (size_t c = 0; c < t->ncolumns; c++) {
            if (md_table_set_cell_json(t, &cells[c], c,
                                       json_array_get(row, c), err) != 0)
                return md_error_prefix(err, "invalid reply from " SERVICE);
        }
    }
    return 0;
}

/* Find the PrimaryResult table of a reply and store it in *primary, or
 * NULL when there is none.  An entry of tables that is not an object is
 * an error. */
static int find_primary(json_t *tables, json_t **primary,
                        struct md_error *err)
{
    json_t *table;
    size_t i;

    *primary = NULL;
    json_array_foreach(tables, i, table) {
        json_t *name = get_ci(table, "name");

        if (!json_is_object(table))
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from " SERVICE ": table %zu "
                                "is not a JSON object", i + 1);
        if (json_is_string(name)
            && strcmp(json_string_value(name), PRIMARY_TABLE) == 0) {
            *primary = table;
            return 0;
        }
    }
    return 0;
}

/* Fill t from the PrimaryResult table. */
static int fill_table(json_t *primary, struct md_table *t,
                      struct md_error *err)
{
    json_t *columns = get_ci(primary, "columns");
    json_t *rows = get_ci(primary, "rows");

    if (!json_is_array(columns))
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from " SERVICE ": \"columns\" "
                            "of table " PRIMARY_TABLE " is %s",
                            columns == NULL ? "missing" : "not an array");
    if (!json_is_array(rows))
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from " SERVICE ": \"rows\" of "
                            "table " PRIMARY_TABLE " is %s",
                            rows == NULL ? "missing" : "not an array");
    if (add_columns(columns, t, err) != 0)
        return -1;
    return add_rows(rows, t, err);
}

/* Check the top level of a reply: an object with a "tables" array and
 * an optional "error" object. */
static int check_top_level(json_t *root, json_t *tables, json_t *error,
                           struct md_error *err)
{
    char code[64];
    char message[MESSAGE_QUOTE_MAX + 1];

    if (!json_is_object(root))
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from " SERVICE ": not a JSON "
                            "object");
    if (error != NULL && !json_is_object(error))
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from " SERVICE ": \"error\" is "
                            "not a JSON object");
    if (json_is_array(tables))
        return 0;
    if (error == NULL)
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from " SERVICE ": \"tables\" is "
                            "%s", tables == NULL ? "missing"
                                                 : "not an array");
    copy_string(code, sizeof(code), get_ci(error, "code"));
    copy_string(message, sizeof(message), get_ci(error, "message"));
    if (err != NULL)
        snprintf(err->service_code, sizeof(err->service_code), "%s", code);
    return md_error_set(err, MD_E_SERVICE,
                        SERVICE " returned an error and no result (HTTP "
                        "200, %s): \"%s\"; try again later",
                        code[0] != '\0' ? code : "no code", message);
}

int md_la_parse_reply(const char *body, size_t len, struct md_table **out,
                      char **partial, struct md_error *err)
{
    char text[sizeof(((json_error_t *)0)->text)];
    json_error_t jerr;
    json_t *root;
    json_t *tables;
    json_t *error;
    json_t *primary = NULL;
    struct md_table *t = NULL;
    char *note = NULL;
    int rc = -1;

    *out = NULL;
    if (partial != NULL)
        *partial = NULL;
    if (len == 0)
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from " SERVICE ": HTTP 200 with "
                            "an empty body, which the service sends when "
                            "the request has no JSON body or no "
                            "Content-Type: application/json");
    root = md_json_load_reply(body, len, &jerr);
    if (root == NULL) {
        quote_text(text, sizeof(text), jerr.text, strlen(jerr.text),
                   sizeof(text));
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from " SERVICE ": not JSON or "
                            "cut off (%s, at byte %d of %zu)", text,
                            jerr.position, len);
    }
    tables = get_ci(root, "tables");
    error = get_ci(root, "error");
    if (check_top_level(root, tables, error, err) != 0
        || find_primary(tables, &primary, err) != 0)
        goto out;
    if (primary == NULL && error == NULL) {
        md_error_set(err, MD_E_SERVICE, "invalid reply from " SERVICE ": "
                     "no table named " PRIMARY_TABLE);
        goto out;
    }

    t = md_table_new();
    if (t == NULL) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    /* A partial error may come without the table: an empty result that
     * is flagged truncated below. */
    if (primary != NULL && fill_table(primary, t, err) != 0)
        goto out;
    if (error != NULL) {
        t->truncated = 1;
        if (partial != NULL && (note = describe_partial(error)) == NULL) {
            md_error_set(err, MD_E_INTERNAL, "out of memory");
            goto out;
        }
    }
    if (t->nrows >= MD_LA_ROW_LIMIT)
        t->truncated = 1;

    *out = t;
    t = NULL;
    if (partial != NULL)
        *partial = note;
    note = NULL;
    rc = 0;

out:
    free(note);
    md_table_free(t);
    json_decref(root);
    return rc;
}

/* The fields of an error envelope, copied out of the JSON. */
struct api_error {
    char code[64];
    char inner_code[64];                /* first innererror's code */
    char message[MESSAGE_QUOTE_MAX + 1];    /* innermost message */
    int readable;                       /* an {"error": {...}} envelope */
};

/* Read {"error": {"code", "message", "innererror": {...}}}.  The message
 * of the innermost error that has one is kept, because it is the most
 * specific ("Query could not be parsed at ..."). */
static void read_envelope(const struct md_http_response *resp,
                          struct api_error *e)
{
    json_t *root;
    json_t *error;
    json_t *inner;

    memset(e, 0, sizeof(*e));
    root = json_loadb(resp->body.data, resp->body.len, 0, NULL);
    error = get_ci(root, "error");
    if (json_is_object(error)) {
        e->readable = 1;
        copy_string(e->code, sizeof(e->code), get_ci(error, "code"));
        copy_string(e->message, sizeof(e->message),
                    get_ci(error, "message"));
        inner = get_ci(error, "innererror");
        copy_string(e->inner_code, sizeof(e->inner_code),
                    get_ci(inner, "code"));
        for (int depth = 0; json_is_object(inner)
                            && depth < INNER_ERROR_DEPTH_MAX; depth++) {
            json_t *message = get_ci(inner, "message");

            if (json_is_string(message) && json_string_length(message) > 0)
                copy_string(e->message, sizeof(e->message), message);
            inner = get_ci(inner, "innererror");
        }
    }
    json_decref(root);

    if (!e->readable)
        quote_text(e->message, sizeof(e->message), resp->body.data,
                   resp->body.len, BODY_QUOTE_MAX);
}

static void fill_ids(const struct md_http_response *resp,
                     const struct api_error *e, struct md_error *err)
{
    const char *id = resp->ms_request_id[0] != '\0' ? resp->ms_request_id
                                                    : resp->request_id;

    snprintf(err->request_id, sizeof(err->request_id), "%s", id);
    snprintf(err->service_code, sizeof(err->service_code), "%s", e->code);
    err->http_status = resp->status;
    err->retry_after = resp->retry_after;
}

/* Format the reply for messages: '(HTTP 400, BadArgumentError/
 * SyntaxError): "text"', '(HTTP 500) with no message', or the start of
 * an unexpected body. */
static void describe(long status, const struct api_error *e, char *dst,
                     size_t size)
{
    char head[160];

    if (e->code[0] != '\0' && e->inner_code[0] != '\0')
        snprintf(head, sizeof(head), "(HTTP %ld, %s/%s)", status, e->code,
                 e->inner_code);
    else if (e->code[0] != '\0')
        snprintf(head, sizeof(head), "(HTTP %ld, %s)", status, e->code);
    else
        snprintf(head, sizeof(head), "(HTTP %ld)", status);
    if (!e->readable && e->message[0] != '\0')
        snprintf(dst, size, "%s with an unexpected body: \"%s\"", head,
                 e->message);
    else if (e->message[0] == '\0')
        snprintf(dst, size, "%s with no message", head);
    else
        snprintf(dst, size, "%s: \"%s\"", head, e->message);
}

static int map_400(const struct api_error *e, const char *what,
                   struct md_error *err)
{
    if (md_backend_message_too_large(e->message))
        return md_error_set(err, MD_E_QUERY_TOO_LARGE,
                            "the query's result is too large for " SERVICE
                            " %s; reduce it with summarize, project or "
                            "take", what);
    if (md_backend_message_preempted(e->message))
        return md_error_set(err, MD_E_QUERY_PREEMPTED,
                            SERVICE " stopped the query %s; make it "
                            "cheaper (filter early, narrow the time range) "
                            "or retry later", what);
    return md_error_set(err, MD_E_QUERY_SYNTAX,
                        SERVICE " rejected the query %s; fix the KQL",
                        what);
}

static int map_403(const struct api_error *e, const char *what,
                   const char *workspace, struct md_error *err)
{
    if (strcmp(e->code, "InvalidAuthenticationTokenAudience") == 0)
        return md_error_set(err, MD_E_AUTH,
                            SERVICE " rejected the access token, which "
                            "was issued for another API %s; unset [auth] "
                            "scope, or set it to the Log Analytics API's "
                            "scope (https://api.loganalytics.io/.default "
                            "in the public cloud)", what);
    if (strcmp(e->code, "InvalidAuthenticationToken") == 0)
        return md_error_set(err, MD_E_AUTH,
                            SERVICE " rejected the access token %s; check "
                            "that [auth] tenant_id is the workspace's "
                            "tenant and that [auth] scope is unset",
                            what);
    return md_error_set(err, MD_E_PERMISSION,
                        SERVICE " denied access to workspace %s %s; give "
                        "the app registration the Log Analytics Reader "
                        "role on that workspace (or on its resource group "
                        "or subscription)", workspace, what);
}

int md_la_map_error(const struct md_http_response *resp,
                    const char *workspace_id, struct md_error *err)
{
    const char *workspace = workspace_id != NULL ? workspace_id : "(unset)";
    char what[MESSAGE_QUOTE_MAX + 300];
    char wait[64] = "";
    struct api_error e;
    long status = resp->status;

    if (err == NULL)
        return -1;
    read_envelope(resp, &e);
    fill_ids(resp, &e, err);
    describe(status, &e, what, sizeof(what));

    switch (status) {
    case 400:
        return map_400(&e, what, err);
    case 401:
        return md_error_set(err, MD_E_AUTH,
                            SERVICE " rejected the request as not "
                            "authenticated %s; check that [auth] scope is "
                            "unset or names the Log Analytics API", what);
    case 403:
        return map_403(&e, what, workspace, err);
    case 404:
        return md_error_set(err, MD_E_CONFIG,
                            SERVICE " found no workspace %s %s; check "
                            "[api] workspace_id (the Workspace ID on the "
                            "workspace's Overview page) and [api] url",
                            workspace, what);
    case 408:
    case 504:
        return md_error_set(err, MD_E_QUERY_PREEMPTED,
                            "the query ran out of time at " SERVICE " %s; "
                            "make it cheaper (filter early, narrow the "
                            "time range) or raise [api] timeout, up to the "
                            "service's 10 minutes", what);
    case 429:
        if (resp->retry_after >= 0)
            snprintf(wait, sizeof(wait), " (Retry-After: %ld s)",
                     resp->retry_after);
        return md_error_set(err, MD_E_THROTTLED,
                            SERVICE " throttled mdhunt %s%s; it allows "
                            "200 requests per 30 seconds and 5 concurrent "
                            "queries per identity, so run rules less "
                            "often", what, wait);
    default:
        break;
    }
    if (status >= 500)
        return md_error_set(err, MD_E_SERVICE,
                            SERVICE " failed %s; try again later", what);
    return md_error_set(err, MD_E_SERVICE, "unexpected reply from " SERVICE
                        " %s", what);
}

int md_la_read_reply(const struct md_http_response *resp,
                     const char *workspace_id, struct md_table **out,
                     char **partial, struct md_error *err)
{
    *out = NULL;
    if (partial != NULL)
        *partial = NULL;
    if (resp->status == 204) {
        *out = md_table_new();
        if (*out == NULL)
            return md_error_set(err, MD_E_INTERNAL, "out of memory");
        return 0;
    }
    if (resp->status != 200)
        return md_la_map_error(resp, workspace_id, err);
    if (md_la_parse_reply(resp->body.data, resp->body.len, out, partial,
                          err) == 0)
        return 0;
    if (err != NULL) {
        err->http_status = resp->status;
        snprintf(err->request_id, sizeof(err->request_id), "%s",
                 resp->ms_request_id[0] != '\0' ? resp->ms_request_id
                                                : resp->request_id);
    }
    return -1;
}
