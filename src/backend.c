#include "mdhunt/backend.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mdhunt/auth.h"
#include "mdhunt/backend_la.h"
#include "mdhunt/budget.h"
#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"

/* Bytes of a service message or an unexpected body quoted in an error. */
#define MESSAGE_QUOTE_MAX 400
#define BODY_QUOTE_MAX 200

/* Backoff ceilings: 1 s for the first retry, doubling up to 60 s. */
#define BASE_DELAY_MS 1000
#define MAX_DELAY_MS 60000

/* The window of a call-rate 429 whose message names none: the
 * per-minute quota is the one a cycle of rules usually hits. */
#define DEFAULT_QUOTA_WINDOW 60

/* A stop request ends a default sleep within this many milliseconds. */
#define SLEEP_STEP_MS 100

struct md_backend {
    enum md_backend_kind kind;
    struct md_http *http;
    struct md_auth *auth;
    struct md_budget *budget;
    struct md_budget_limits limits;
    char *tenant_id;
    char *client_id;
    char *url;              /* the hunting endpoint */
    char *workspace_id;     /* sentinel */
    char *default_timespan; /* sentinel: [api] default_timespan */
    char prefer[64];        /* sentinel: "Prefer: wait=N", or "" */
    struct md_retry_policy policy;
    struct md_backend_hooks hooks;
    int budget_failed;      /* a budget error was logged once */
};

/* A backend's request path, reply key spellings and required permission. */
struct service {
    enum md_backend_kind kind;
    const char *name;           /* in messages */
    const char *path;
    const char *schema_key;     /* the documented spelling */
    const char *results_key;
    const char *name_key;
    const char *type_key;
    const char *role;           /* application permission */
    const char *api;            /* the API that grants it */
    const char *permission;     /* both, for messages */
};

static const struct service services[] = {
    { MD_BACKEND_GRAPH, "Graph", "/v1.0/security/runHuntingQuery",
      "schema", "results", "name", "type",
      "ThreatHunting.Read.All", "Microsoft Graph",
      "the ThreatHunting.Read.All application permission of Microsoft "
      "Graph" },
    { MD_BACKEND_DEFENDER, "Defender", "/api/advancedhunting/run",
      "Schema", "Results", "Name", "Type",
      "AdvancedHunting.Read.All", "Microsoft Threat Protection",
      "the AdvancedHunting.Read.All application permission of the "
      "Microsoft Threat Protection API" },
    /* Log Analytics: requests and replies in backend_la.c.  Access comes
     * from an Azure role on the workspace, not an application role. */
    { MD_BACKEND_SENTINEL, "Log Analytics", NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, "the Log Analytics Reader role on the workspace" },
};

static const struct service *find_service(enum md_backend_kind kind)
{
    for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++) {
        if (services[i].kind == kind)
            return &services[i];
    }
    return NULL;
}

const char *md_backend_permission(enum md_backend_kind kind)
{
    const struct service *svc = find_service(kind);

    return svc != NULL ? svc->role : NULL;
}

const char *md_backend_permission_api(enum md_backend_kind kind)
{
    const struct service *svc = find_service(kind);

    return svc != NULL ? svc->api : NULL;
}

void md_backend_policy_from_config(const struct md_config *cfg,
                                   struct md_retry_policy *policy)
{
    policy->max_retries = cfg->api.max_retries;
    policy->max_retry_time = cfg->api.max_retry_time;
    policy->base_delay_ms = BASE_DELAY_MS;
    policy->max_delay_ms = MAX_DELAY_MS;
}

void md_backend_set_policy(struct md_backend *backend,
                           const struct md_retry_policy *policy)
{
    backend->policy = *policy;
}

void md_backend_set_hooks(struct md_backend *backend,
                          const struct md_backend_hooks *hooks)
{
    backend->hooks = *hooks;
}

struct md_http *md_backend_http(struct md_backend *backend)
{
    return backend->http;
}

int md_backend_use_budget_file(struct md_backend *backend, const char *path,
                               struct md_error *err)
{
    struct md_budget *budget;

    if (md_budget_open(path, backend->tenant_id, backend->client_id,
                       &backend->limits, &budget, err) != 0)
        return -1;
    md_budget_free(backend->budget);
    backend->budget = budget;
    backend->budget_failed = 0;
    return 0;
}

/* Open the budget beside the store when the configuration has one, else
 * in memory. */
static int open_budget(struct md_backend *b, const struct md_config *cfg,
                       struct md_error *err)
{
    struct md_buf path = MD_BUF_INIT;
    struct md_error file_err;
    int rc;

    if (cfg->store.configured && cfg->store.path != NULL) {
        if (md_buf_puts(&path, cfg->store.path) != 0 ||
            md_buf_puts(&path, MD_BUDGET_SUFFIX) != 0) {
            md_buf_free(&path);
            return md_error_set(err, MD_E_INTERNAL, "out of memory");
        }
        md_error_clear(&file_err);
        rc = md_backend_use_budget_file(b, path.data, &file_err);
        md_buf_free(&path);
        if (rc == 0)
            return 0;
        md_warn("%s; counting API calls in memory, not shared with other "
                "mdhunt processes", file_err.message);
    }
    return md_budget_open(NULL, b->tenant_id, b->client_id, &b->limits,
                          &b->budget, err);
}

static int copy_settings(struct md_backend *b, const struct md_config *cfg,
                         const struct service *svc, const char *base)
{
    struct md_buf url = MD_BUF_INIT;
    size_t base_len = strlen(base);

    while (base_len > 0 && base[base_len - 1] == '/')
        base_len--;
    /* The sentinel URL names the workspace: new_sentinel() builds it. */
    if (svc->path != NULL
        && (md_buf_printf(&url, "%.*s%s", (int)base_len, base,
                          svc->path) != 0
            || (b->url = md_buf_detach(&url)) == NULL)) {
        md_buf_free(&url);
        return -1;
    }
    b->kind = cfg->api.backend;
    b->tenant_id = md_strdup(cfg->auth.tenant_id != NULL
                             ? cfg->auth.tenant_id : "");
    b->client_id = md_strdup(cfg->auth.client_id != NULL
                             ? cfg->auth.client_id : "");
    b->limits.per_minute = cfg->api.max_calls_per_minute;
    b->limits.per_hour = cfg->api.max_calls_per_hour;
    md_backend_policy_from_config(cfg, &b->policy);
    return b->tenant_id != NULL && b->client_id != NULL ? 0 : -1;
}

/* The sentinel backend's URL, workspace, timespan and Prefer header. */
static int new_sentinel(struct md_backend *b, const struct md_config *cfg,
                        const char *base, struct md_error *err)
{
    if (md_la_build_url(base, cfg->api.workspace_id, &b->url, err) != 0)
        return -1;
    b->workspace_id = md_strdup(cfg->api.workspace_id);
    b->default_timespan = md_strdup(cfg->api.default_timespan);
    if (b->workspace_id == NULL
        || (cfg->api.default_timespan != NULL && b->default_timespan == NULL))
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    md_la_prefer_header(cfg->api.timeout, b->prefer, sizeof(b->prefer));
    return 0;
}

int md_backend_new(const struct md_config *cfg, struct md_backend **out,
                   struct md_error *err)
{
    const struct service *svc = find_service(cfg->api.backend);
    struct md_http_options opts;
    struct md_backend *b;
    const char *base;

    *out = NULL;
    if (svc == NULL)
        return md_error_set(err, MD_E_INTERNAL, "no such backend: %d",
                            (int)cfg->api.backend);
    base = md_auth_api_url(cfg);
    if (base == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "no API URL is known for the %s backend in "
                            "the %s cloud; set [api] url", svc->name,
                            md_cloud_name(cfg->auth.cloud));

    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    if (copy_settings(b, cfg, svc, base) != 0) {
        md_backend_free(b);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }
    if (b->kind == MD_BACKEND_SENTINEL
        && new_sentinel(b, cfg, base, err) != 0) {
        md_backend_free(b);
        return -1;
    }

    memset(&opts, 0, sizeof(opts));
    opts.ca_file = cfg->api.ca_file;
    opts.proxy = cfg->api.proxy;
    opts.connect_timeout = cfg->api.connect_timeout;
    opts.timeout = cfg->api.timeout;
    opts.max_reply_size = cfg->api.max_reply_size;
    if (md_http_new(&opts, &b->http, err) != 0
        || md_auth_new(cfg, b->http, &b->auth, err) != 0
        || open_budget(b, cfg, err) != 0) {
        md_backend_free(b);
        return -1;
    }
    *out = b;
    return 0;
}

void md_backend_free(struct md_backend *backend)
{
    if (backend == NULL)
        return;
    md_auth_free(backend->auth);
    md_http_free(backend->http);
    md_budget_free(backend->budget);
    free(backend->tenant_id);
    free(backend->client_id);
    free(backend->url);
    free(backend->workspace_id);
    free(backend->default_timespan);
    free(backend);
}

/* Offset of the first byte that breaks UTF-8 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or len when valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned long cp;

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

int md_backend_build_body(enum md_backend_kind kind, const char *query,
                          size_t len, int64_t period_seconds, char **body,
                          size_t *body_len, struct md_error *err)
{
    size_t bad = utf8_invalid_at((const unsigned char *)query, len);
    char timespan[64];
    json_t *root;
    int rc = 0;

    *body = NULL;
    if (kind == MD_BACKEND_SENTINEL)
        return md_la_build_body(query, len, period_seconds, NULL, body,
                                body_len, err);
    if (bad < len)
        return md_error_set(err, MD_E_RULE,
                            "the query is not valid UTF-8 (byte %zu of "
                            "%zu); save the rule file as UTF-8", bad + 1,
                            len);

    root = json_object();
    if (root == NULL
        || json_object_set_new(root, "Query", json_stringn(query, len)))
        rc = -1;
    if (rc == 0 && kind == MD_BACKEND_GRAPH && period_seconds > 0) {
        md_duration_iso8601(period_seconds, timespan, sizeof(timespan));
        rc = json_object_set_new(root, "Timespan", json_string(timespan));
    }
    if (rc == 0)
        *body = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (*body == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    *body_len = strlen(*body);
    return 0;
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

/* Copy at most max bytes of text for an error message, control
 * characters replaced. */
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

static int add_columns(const struct service *svc, json_t *schema,
                       struct md_table *t, struct md_error *err)
{
    size_t i;
    json_t *entry;

    json_array_foreach(schema, i, entry) {
        json_t *name = get_ci(entry, svc->name_key);
        json_t *type = get_ci(entry, svc->type_key);
        const char *type_name = json_is_string(type)
                                ? json_string_value(type) : "";

        if (!json_is_object(entry))
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from %s: schema entry %zu "
                                "is not a JSON object", svc->name, i + 1);
        if (!json_is_string(name) || json_string_length(name) == 0)
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from %s: schema entry %zu "
                                "has no column name", svc->name, i + 1);
        if (strlen(json_string_value(name)) != json_string_length(name))
            return md_error_set(err, MD_E_SERVICE,
                                "invalid reply from %s: the name of "
                                "schema entry %zu contains a NUL byte",
                                svc->name, i + 1);
        if (md_table_add_column(t, json_string_value(name), type_name,
                                err) != 0)
            return md_error_prefix(err, "invalid reply from %s",
                                   svc->name);
    }
    return 0;
}

/* Log the first row key that names no column, once per reply. */
static void note_unknown_key(const struct service *svc, json_t *row,
                             size_t row_index, const struct md_table *t)
{
    const char *key;
    json_t *value;

    json_object_foreach(row, key, value) {
        size_t c;

        for (c = 0; c < t->ncolumns; c++) {
            if (strcmp(t->columns[c].name, key) == 0)
                break;
        }
        if (c == t->ncolumns) {
            md_debug("backend: %s reply: ignoring key \"%s\" of row %zu "
                     "and any other key outside the schema", svc->name,
                     key, row_index + 1);
            return;
        }
    }
}

static int add_row(const struct service *svc, json_t *row, size_t index,
                   struct md_table *t, int *unknown_noted,
                   struct md_error *err)
{
    struct md_cell *cells;
    size_t found = 0;

    if (!json_is_object(row))
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from %s: result row %zu is not "
                            "a JSON object", svc->name, index + 1);
    cells = md_table_add_row(t);
    if (cells == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    for (size_t c = 0; c < t->ncolumns; c++) {
        json_t *value = json_object_get(row, t->columns[c].name);

        if (value == NULL)
            continue;
        found++;
        if (md_table_set_cell_json(t, &cells[c], c, value, err) != 0)
            return md_error_prefix(err, "invalid reply from %s",
                                   svc->name);
    }
    /* A row with members but none of the schema's columns does not fit
     * the schema.  Kept, it would be a row of nulls, and every device of
     * the rule would look gone. */
    if (found == 0 && json_object_size(row) > 0)
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from %s: result row %zu has "
                            "none of the %zu columns of the schema",
                            svc->name, index + 1, t->ncolumns);
    if (found < json_object_size(row) && !*unknown_noted) {
        note_unknown_key(svc, row, index, t);
        *unknown_noted = 1;
    }
    return 0;
}

static int parse_reply(const struct service *svc, const char *body,
                       size_t len, struct md_table **out,
                       struct md_error *err)
{
    char text[sizeof(((json_error_t *)0)->text)];
    json_error_t jerr;
    json_t *root;
    json_t *schema;
    json_t *results;
    json_t *row;
    struct md_table *t = NULL;
    int unknown_noted = 0;
    size_t i;
    int rc = -1;

    *out = NULL;
    root = md_json_load_reply(body, len, &jerr);
    if (root == NULL) {
        quote_text(text, sizeof(text), jerr.text, strlen(jerr.text),
                   sizeof(text));
        return md_error_set(err, MD_E_SERVICE,
                            "invalid reply from %s: not JSON or cut off "
                            "(%s, at byte %d of %zu)", svc->name, text,
                            jerr.position, len);
    }
    schema = get_ci(root, svc->schema_key);
    results = get_ci(root, svc->results_key);

    if (!json_is_object(root)) {
        md_error_set(err, MD_E_SERVICE, "invalid reply from %s: not a JSON "
                     "object", svc->name);
        goto out;
    }
    if (!json_is_array(schema)) {
        md_error_set(err, MD_E_SERVICE, "invalid reply from %s: \"%s\" is "
                     "%s", svc->name, svc->schema_key,
                     schema == NULL ? "missing" : "not an array");
        goto out;
    }
    if (!json_is_array(results)) {
        md_error_set(err, MD_E_SERVICE, "invalid reply from %s: \"%s\" is "
                     "%s", svc->name, svc->results_key,
                     results == NULL ? "missing" : "not an array");
        goto out;
    }

    t = md_table_new();
    if (t == NULL) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    if (add_columns(svc, schema, t, err) != 0)
        goto out;
    json_array_foreach(results, i, row) {
        if (add_row(svc, row, i, t, &unknown_noted, err) != 0)
            goto out;
    }
    if (t->nrows >= MD_SERVICE_ROW_LIMIT)
        t->truncated = 1;

    *out = t;
    t = NULL;
    rc = 0;

out:
    md_table_free(t);
    json_decref(root);
    return rc;
}

int md_backend_parse_graph(const char *body, size_t len,
                           struct md_table **out, struct md_error *err)
{
    return parse_reply(find_service(MD_BACKEND_GRAPH), body, len, out, err);
}

int md_backend_parse_defender(const char *body, size_t len,
                              struct md_table **out, struct md_error *err)
{
    return parse_reply(find_service(MD_BACKEND_DEFENDER), body, len, out,
                       err);
}

/* ASCII case-insensitive substring test, independent of the locale. */
static int contains_ci(const char *haystack, const char *needle)
{
    size_t n = strlen(needle);

    for (const char *p = haystack; *p != '\0'; p++) {
        size_t k = 0;

        while (k < n && p[k] != '\0') {
            char a = p[k];
            char b = needle[k];

            if (a >= 'A' && a <= 'Z')
                a = (char)(a - 'A' + 'a');
            if (b >= 'A' && b <= 'Z')
                b = (char)(b - 'A' + 'a');
            if (a != b)
                break;
            k++;
        }
        if (k == n)
            return 1;
    }
    return 0;
}

static int contains_any(const char *text, const char *const *needles)
{
    for (size_t i = 0; needles[i] != NULL; i++) {
        if (contains_ci(text, needles[i]))
            return 1;
    }
    return 0;
}

static const char *const too_large_words[] = {
    "result size", "result set", "data size limit", NULL
};

/* Phrases of the service's messages; a bare "timeout" could be a column
 * name quoted in a syntax error. */
static const char *const preempted_words[] = {
    "timeout period", "timed out", "preempted", "excessive resource",
    "exceeded the allowed limits", NULL
};

int md_backend_message_too_large(const char *message)
{
    return contains_any(message, too_large_words);
}

int md_backend_message_preempted(const char *message)
{
    return contains_any(message, preempted_words);
}

static const char *const cpu_words[] = {
    "processing resources", "cpu", NULL
};

/* The fields of an error envelope, copied out of the JSON. */
struct api_error {
    char code[64];
    char message[MESSAGE_QUOTE_MAX + 1];
    char request_id[MD_HTTP_ID_MAX];    /* innerError or target */
    int readable;                       /* an {"error": {...}} envelope */
};

static void copy_string(char *dst, size_t size, json_t *value)
{
    if (json_is_string(value))
        quote_text(dst, size, json_string_value(value),
                   json_string_length(value), size - 1);
}

static void read_envelope(enum md_backend_kind kind,
                          const struct md_http_response *resp,
                          struct api_error *e)
{
    json_error_t jerr;
    json_t *root;
    json_t *error;

    memset(e, 0, sizeof(*e));
    root = json_loadb(resp->body.data, resp->body.len, 0, &jerr);
    error = get_ci(root, "error");
    if (json_is_object(error)) {
        e->readable = 1;
        copy_string(e->code, sizeof(e->code), get_ci(error, "code"));
        copy_string(e->message, sizeof(e->message),
                    get_ci(error, "message"));
        if (kind == MD_BACKEND_GRAPH)
            copy_string(e->request_id, sizeof(e->request_id),
                        get_ci(get_ci(error, "innerError"), "request-id"));
        else
            copy_string(e->request_id, sizeof(e->request_id),
                        get_ci(error, "target"));
    }
    json_decref(root);

    if (!e->readable)
        quote_text(e->message, sizeof(e->message), resp->body.data,
                   resp->body.len, BODY_QUOTE_MAX);
}

static void fill_ids(enum md_backend_kind kind,
                     const struct md_http_response *resp,
                     const struct api_error *e, struct md_error *err)
{
    const char *id = "";

    if (kind == MD_BACKEND_GRAPH && resp->request_id[0] != '\0')
        id = resp->request_id;
    else if (e->request_id[0] != '\0')
        id = e->request_id;
    else if (resp->ms_request_id[0] != '\0')
        id = resp->ms_request_id;
    else
        id = resp->request_id;
    snprintf(err->request_id, sizeof(err->request_id), "%s", id);
    snprintf(err->service_code, sizeof(err->service_code), "%s", e->code);
    err->http_status = resp->status;
    err->retry_after = resp->retry_after;
}

/* "45 per 00:01:00" from "... maximum allowed 45 per 00:01:00". */
static void quota_name(const char *message, char *dst, size_t size)
{
    static const char marker[] = "maximum allowed ";
    const char *p = strstr(message, marker);
    size_t n;

    dst[0] = '\0';
    if (p == NULL)
        return;
    p += sizeof(marker) - 1;
    n = strcspn(p, ".;,");
    if (n >= size)
        n = size - 1;
    memcpy(dst, p, n);
    dst[n] = '\0';
}

/* Format the service's reply for messages: '(HTTP 400, BadRequest):
 * "text"', '(HTTP 500, UnknownError) with no message', or the start of an
 * unexpected body. */
static void describe(long status, const struct api_error *e, char *dst,
                     size_t size)
{
    char head[96];

    if (e->code[0] != '\0')
        snprintf(head, sizeof(head), "(HTTP %ld, %s)", status, e->code);
    else
        snprintf(head, sizeof(head), "(HTTP %ld)", status);
    if (!e->readable)
        snprintf(dst, size, "%s with an unexpected body: \"%s\"", head,
                 e->message);
    else if (e->message[0] == '\0')
        snprintf(dst, size, "%s with no message", head);
    else
        snprintf(dst, size, "%s: \"%s\"", head, e->message);
}

static int map_400(const struct service *svc, const struct api_error *e,
                   const char *what, struct md_error *err)
{
    if (strcmp(e->code, "InvalidRequestBody") == 0
        || strcmp(e->code, "MissingRequiredParameter") == 0)
        return md_error_set(err, MD_E_INTERNAL,
                            "%s could not read mdhunt's request %s; this "
                            "is a bug in mdhunt, please report it",
                            svc->name, what);
    if (contains_any(e->message, too_large_words))
        return md_error_set(err, MD_E_QUERY_TOO_LARGE,
                            "the query's result is too large for %s %s; "
                            "reduce it with summarize, project or take",
                            svc->name, what);
    if (contains_any(e->message, preempted_words))
        return md_error_set(err, MD_E_QUERY_PREEMPTED,
                            "%s stopped the query %s; make it cheaper "
                            "(filter early, narrow the time range) or "
                            "retry later", svc->name, what);
    return md_error_set(err, MD_E_QUERY_SYNTAX,
                        "the service rejected the query %s; fix the KQL",
                        what);
}

static int map_429(const struct service *svc, const struct api_error *e,
                   const char *what, long retry_after,
                   struct md_error *err)
{
    char quota[64];
    char wait[64] = "";

    if (retry_after >= 0)
        snprintf(wait, sizeof(wait), " (Retry-After: %ld s)", retry_after);
    if (contains_any(e->message, cpu_words))
        return md_error_set(err, MD_E_CPU_QUOTA,
                            "the tenant's advanced hunting CPU quota is "
                            "used up %s%s; wait for the next 15-minute "
                            "cycle or make the queries cheaper", what,
                            wait);
    quota_name(e->message, quota, sizeof(quota));
    if (quota[0] != '\0')
        return md_error_set(err, MD_E_THROTTLED,
                            "%s throttled mdhunt: call quota of %s "
                            "exceeded%s; run rules less often", svc->name,
                            quota, wait);
    return md_error_set(err, MD_E_THROTTLED,
                        "%s throttled mdhunt %s%s; run rules less often",
                        svc->name, what, wait);
}

int md_backend_map_error(enum md_backend_kind kind,
                         const struct md_http_response *resp,
                         struct md_error *err)
{
    const struct service *svc = find_service(kind);
    const char *url = md_auth_default_api_url(kind, MD_CLOUD_PUBLIC);
    char what[MESSAGE_QUOTE_MAX + 200];
    struct api_error e;
    long status = resp->status;

    if (svc == NULL)
        return md_error_set(err, MD_E_INTERNAL, "no such backend");
    if (kind == MD_BACKEND_SENTINEL)
        return md_la_map_error(resp, NULL, err);
    read_envelope(kind, resp, &e);
    if (err == NULL)
        return -1;
    fill_ids(kind, resp, &e, err);
    describe(status, &e, what, sizeof(what));

    switch (status) {
    case 400:
        return map_400(svc, &e, what, err);
    case 401:
        return md_error_set(err, MD_E_AUTH,
                            "%s rejected the access token %s; check that "
                            "[auth] scope is unset or names this API",
                            svc->name, what);
    case 403:
        return md_error_set(err, MD_E_PERMISSION,
                            "%s denied access %s; give the app "
                            "registration %s and grant admin consent",
                            svc->name, what, svc->permission);
    case 404:
        return md_error_set(err, MD_E_CONFIG,
                            "%s found no hunting endpoint %s; check [api] "
                            "url, which must be the API's base URL such as "
                            "%s", svc->name, what,
                            url != NULL ? url : "the default");
    case 408:
    case 504:
        return md_error_set(err, MD_E_QUERY_PREEMPTED,
                            "the query timed out at %s %s; make it cheaper "
                            "(filter early, narrow the time range) or "
                            "retry later", svc->name, what);
    case 429:
        return map_429(svc, &e, what, resp->retry_after, err);
    default:
        break;
    }
    if (status >= 500)
        return md_error_set(err, MD_E_SERVICE,
                            "%s failed %s; try again later", svc->name,
                            what);
    return md_error_set(err, MD_E_SERVICE, "unexpected reply from %s %s",
                        svc->name, what);
}

/* ---- One attempt ------------------------------------------------------- */

/* The place of an attempt's failure, for the retry decision. */
struct attempt_outcome {
    int at_api;             /* the API replied or failed, not Entra ID */
    int unreadable;         /* a 200 reply that is not JSON or cut off */
};

static int is_json(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *root = md_json_load_reply(body, len, &jerr);

    json_decref(root);
    return root != NULL;
}

/* A Log Analytics reply into a table.  A partial result is logged, and
 * its table is flagged truncated, so that the diff reports no device
 * gone. */
static int read_sentinel_reply(struct md_backend *b,
                               const struct md_http_response *resp,
                               struct md_table **out, struct md_error *err)
{
    char *partial = NULL;

    if (md_la_read_reply(resp, b->workspace_id, out, &partial, err) != 0)
        return -1;
    if (partial != NULL) {
        md_warn("backend: Log Analytics returned a partial result of %zu "
                "rows, which may lack devices (request id %s): %s",
                (*out)->nrows, resp->ms_request_id[0] != '\0'
                               ? resp->ms_request_id : "none", partial);
        free(partial);
    }
    return 0;
}

/* One attempt: token, request, reply. */
static int run_once(struct md_backend *b, const char *body, size_t body_len,
                    int flags, struct md_table **out,
                    struct attempt_outcome *outcome, struct md_error *err)
{
    const char *headers[] = {
        "Content-Type: application/json; charset=utf-8",
        "Accept: application/json",
        NULL,               /* sentinel: Prefer: wait=N */
        NULL
    };
    const struct service *svc = find_service(b->kind);
    const struct md_secret *token;
    struct md_http_request req;
    struct md_http_response resp;
    int rc = -1;

    memset(outcome, 0, sizeof(*outcome));
    if (md_auth_token(b->auth, &token, err) != 0)
        return -1;
    outcome->at_api = 1;
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = b->url;
    if (b->prefer[0] != '\0')
        headers[2] = b->prefer;
    req.headers = headers;
    req.bearer = token;
    req.body = body;
    req.body_len = body_len;
    req.show_progress = (flags & MD_BACKEND_PROGRESS) != 0;
    md_http_response_init(&resp);

    if (md_http_perform(b->http, &req, &resp, err) != 0)
        goto out;
    if (b->kind == MD_BACKEND_SENTINEL) {
        rc = read_sentinel_reply(b, &resp, out, err);
        outcome->unreadable = rc != 0 && resp.status == 200 &&
                              err->kind == MD_E_SERVICE &&
                              !is_json(resp.body.data, resp.body.len);
        goto out;
    }
    if (resp.status != 200) {
        md_backend_map_error(b->kind, &resp, err);
        goto out;
    }
    rc = parse_reply(svc, resp.body.data, resp.body.len, out, err);
    if (rc != 0 && err != NULL) {
        err->http_status = resp.status;
        snprintf(err->request_id, sizeof(err->request_id), "%s",
                 resp.request_id[0] != '\0' ? resp.request_id
                                            : resp.ms_request_id);
        outcome->unreadable = err->kind == MD_E_SERVICE &&
                              !is_json(resp.body.data, resp.body.len);
    }

out:
    md_http_response_free(&resp);
    return rc;
}

/* ---- Hooks ------------------------------------------------------------- */

static md_instant hook_now(const struct md_backend *b)
{
    return b->hooks.now != NULL ? b->hooks.now(b->hooks.ctx) : md_now();
}

static int default_sleep(int64_t ms)
{
    while (ms > 0) {
        int64_t step = ms < SLEEP_STEP_MS ? ms : SLEEP_STEP_MS;
        struct timespec ts = {
            (time_t)(step / 1000), (long)(step % 1000) * 1000000L
        };

        if (md_interrupt_pending())
            return -1;
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return md_interrupt_pending() ? -1 : 0;
}

static int hook_sleep(const struct md_backend *b, int64_t ms)
{
    if (b->hooks.sleep != NULL)
        return b->hooks.sleep(ms, b->hooks.ctx);
    return default_sleep(ms);
}

static double hook_random(const struct md_backend *b)
{
    unsigned char bytes[4];
    uint32_t v;

    if (b->hooks.random != NULL)
        return b->hooks.random(b->hooks.ctx);
    if (RAND_bytes(bytes, sizeof(bytes)) != 1)
        return 0.5;
    v = ((uint32_t)bytes[0] << 24) | ((uint32_t)bytes[1] << 16)
        | ((uint32_t)bytes[2] << 8) | bytes[3];
    return v / 4294967296.0;
}

/* ---- The retry loop ----------------------------------------------------- */

/* The next step after a failed attempt. */
enum next_step {
    STEP_FAIL,              /* give up with the error */
    STEP_NEW_TOKEN,         /* 401: new token, retry at once */
    STEP_BACKOFF,           /* exponential backoff with full jitter */
    STEP_THROTTLED,         /* 429 for the call rate */
    STEP_CPU_QUOTA          /* 429 for the CPU quota: pause the tenant */
};

/* The state of one md_backend_run(). */
struct run_state {
    struct md_backend *b;
    md_instant start;
    int64_t waited_ms;      /* sum of the waits so far */
    long retries;           /* retries started */
    int last_was_401;
};

static enum next_step next_step(const struct md_error *err,
                                const struct attempt_outcome *o,
                                int last_was_401)
{
    switch (err->kind) {
    case MD_E_NETWORK:
        return STEP_BACKOFF;
    case MD_E_SERVICE:
        /* Not a reply over max_reply_size, which has no status, nor a
         * well-formed reply of an unexpected shape. */
        if (err->http_status >= 500 || (o->unreadable && o->at_api) ||
            (!o->at_api && err->http_status != 0))
            return STEP_BACKOFF;
        return STEP_FAIL;
    case MD_E_AUTH:
        return o->at_api && !last_was_401 ? STEP_NEW_TOKEN : STEP_FAIL;
    case MD_E_THROTTLED:
        return o->at_api ? STEP_THROTTLED : STEP_FAIL;
    case MD_E_CPU_QUOTA:
        return o->at_api ? STEP_CPU_QUOTA : STEP_FAIL;
    default:
        return STEP_FAIL;
    }
}

/* Milliseconds waited or passed since the run started, whichever is
 * more: a test clock may stand still. */
static int64_t elapsed_ms(const struct run_state *st)
{
    int64_t passed = (hook_now(st->b) - st->start) / (MD_TICKS_PER_SECOND
                                                       / 1000);

    return passed > st->waited_ms ? passed : st->waited_ms;
}

static int64_t remaining_ms(const struct run_state *st)
{
    int64_t left = st->b->policy.max_retry_time * 1000 - elapsed_ms(st);

    return left > 0 ? left : 0;
}

static int64_t backoff_ms(const struct run_state *st)
{
    const struct md_retry_policy *p = &st->b->policy;
    int64_t ceiling = p->base_delay_ms;

    for (long i = 0; i < st->retries && ceiling < p->max_delay_ms; i++)
        ceiling *= 2;
    if (ceiling > p->max_delay_ms)
        ceiling = p->max_delay_ms;
    return (int64_t)(hook_random(st->b) * (double)ceiling);
}

/* The window of a call-quota message, "... 45 per 00:01:00 ...", in
 * seconds; DEFAULT_QUOTA_WINDOW when it names none. */
static int64_t quota_window(const char *message)
{
    const char *p = strstr(message, " per ");
    char text[32];
    size_t n;
    int64_t seconds;

    if (p == NULL)
        return DEFAULT_QUOTA_WINDOW;
    p += 5;
    n = strspn(p, "0123456789:.");
    if (n == 0 || n >= sizeof(text))
        return DEFAULT_QUOTA_WINDOW;
    memcpy(text, p, n);
    text[n] = '\0';
    if (text[n - 1] == '.')
        text[n - 1] = '\0';
    if (md_duration_parse(text, &seconds) != 0 || seconds <= 0)
        return DEFAULT_QUOTA_WINDOW;
    return seconds;
}

/* The longest wait a reply may impose: the longest quota window the
 * services document is one hour ("1500 per 01:00:00").  A larger
 * Retry-After would otherwise hold every later call, of this process and
 * of the next ones through the budget file, for days. */
#define MAX_SERVER_WAIT_SECONDS 3600

static int64_t retry_after_ms(const struct md_error *err)
{
    long seconds = err->retry_after;

    if (seconds > MAX_SERVER_WAIT_SECONDS)
        seconds = MAX_SERVER_WAIT_SECONDS;
    return (int64_t)seconds * 1000;
}

/* Equal jitter within the window: between half of it and all of it, so
 * that rules hit together do not retry together. */
static int64_t throttle_ms(const struct run_state *st,
                           const struct md_error *err)
{
    int64_t window;

    if (err->retry_after >= 0)
        return retry_after_ms(err);
    window = quota_window(err->message) * 1000;
    return window / 2 + (int64_t)(hook_random(st->b) * (double)window / 2);
}

static void budget_warning(struct md_backend *b, const struct md_error *err)
{
    if (b->budget_failed)
        return;
    md_warn("%s; going on without the call budget", err->message);
    b->budget_failed = 1;
}

static void pause_tenant(struct run_state *st, const struct md_error *err,
                         int64_t pause_ms)
{
    struct md_backend *b = st->b;
    md_instant now = hook_now(b);
    struct md_error budget_err;
    char text[MD_TIME_TEXT_MAX];

    md_error_clear(&budget_err);
    if (md_budget_pause_tenant(b->budget, now, now + pause_ms *
                               (MD_TICKS_PER_SECOND / 1000),
                               &budget_err) != 0)
        budget_warning(b, &budget_err);
    md_warn("the CPU quota of tenant %s is used up: its queries are paused "
            "until %s (HTTP %ld, request id %s)", b->tenant_id,
            md_time_format_seconds(now + pause_ms *
                                   (MD_TICKS_PER_SECOND / 1000),
                                   text, sizeof(text)),
            err->http_status,
            err->request_id[0] != '\0' ? err->request_id : "none");
}

static void hold_calls(struct run_state *st, int64_t wait_ms)
{
    struct md_backend *b = st->b;
    md_instant now = hook_now(b);
    struct md_error budget_err;

    md_error_clear(&budget_err);
    if (md_budget_hold(b->budget, now, now + wait_ms *
                       (MD_TICKS_PER_SECOND / 1000), &budget_err) != 0)
        budget_warning(b, &budget_err);
}

static void log_retry(const struct run_state *st, int64_t wait_ms,
                      const struct md_error *err)
{
    char status[32];

    if (err->http_status != 0)
        snprintf(status, sizeof(status), "HTTP %ld", err->http_status);
    else
        snprintf(status, sizeof(status), "no HTTP status");
    md_info("retry %ld of %ld in %.1f s after %s (%s, request id %s): %s",
            st->retries + 1, st->b->policy.max_retries, wait_ms / 1000.0,
            status, md_err_kind_name(err->kind),
            err->request_id[0] != '\0' ? err->request_id : "none",
            err->message);
}

/* Append why no retry follows to err's message. */
static void explain_stop(struct md_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void explain_stop(struct md_error *err, const char *fmt, ...)
{
    size_t len = strlen(err->message);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err->message + len, sizeof(err->message) - len, fmt, ap);
    va_end(ap);
}

/*
 * Decide whether and how long to wait before the next attempt.  Returns
 * 1 with *wait_ms set to retry, 0 to give up with err as it is (and a
 * note why appended).
 */
static int plan_retry(struct run_state *st, const struct attempt_outcome *o,
                      struct md_error *err, int64_t *wait_ms)
{
    enum next_step step = next_step(err, o, st->last_was_401);
    const struct md_retry_policy *p = &st->b->policy;

    st->last_was_401 = 0;
    if (step == STEP_FAIL)
        return 0;
    switch (step) {
    case STEP_NEW_TOKEN:
        md_auth_invalidate(st->b->auth);
        st->last_was_401 = 1;
        *wait_ms = 0;
        break;
    case STEP_BACKOFF:
        *wait_ms = err->retry_after >= 0 ? retry_after_ms(err)
                                         : backoff_ms(st);
        break;
    case STEP_THROTTLED:
        *wait_ms = throttle_ms(st, err);
        hold_calls(st, *wait_ms);
        break;
    default:
        *wait_ms = err->retry_after > 0
                   ? retry_after_ms(err)
                   : (int64_t)MD_BUDGET_CPU_PAUSE_SECONDS * 1000;
        pause_tenant(st, err, *wait_ms);
        break;
    }

    if (p->max_retries == 0)
        return 0;
    if (st->retries >= p->max_retries) {
        explain_stop(err, " (gave up after %ld retr%s, [api] max_retries)",
                     st->retries, st->retries == 1 ? "y" : "ies");
        return 0;
    }
    if (*wait_ms > remaining_ms(st)) {
        explain_stop(err, " (not retried: waiting %.0f s would pass [api] "
                     "max_retry_time of %lld s)", *wait_ms / 1000.0,
                     (long long)p->max_retry_time);
        return 0;
    }
    return 1;
}

static int wait_ms_interruptible(struct run_state *st, int64_t ms,
                                 struct md_error *err)
{
    if (ms <= 0)
        return 0;
    st->waited_ms += ms;
    if (hook_sleep(st->b, ms) != 0)
        return md_error_set(err, MD_E_INTERRUPTED, "stopped by a stop "
                            "request while waiting to call %s",
                            find_service(st->b->kind)->name);
    return 0;
}

static int fail_paused(struct run_state *st, md_instant now,
                       md_instant until, struct md_error *err)
{
    char text[MD_TIME_TEXT_MAX];
    const char *path = md_budget_path(st->b->budget);

    md_error_clear(err);
    err->retry_after = (long)((until - now + MD_TICKS_PER_SECOND - 1)
                              / MD_TICKS_PER_SECOND);
    return md_error_set(err, MD_E_CPU_QUOTA, "not sent: the advanced "
                        "hunting CPU quota of tenant %s is used up and its "
                        "queries are paused until %s%s%s; wait, or make "
                        "the queries cheaper", st->b->tenant_id,
                        md_time_format_seconds(until, text, sizeof(text)),
                        path != NULL ? " (recorded in " : "",
                        path != NULL ? path : "");
}

static int fail_no_slot(struct run_state *st, md_instant at,
                        struct md_error *err)
{
    char text[MD_TIME_TEXT_MAX];

    md_error_clear(err);
    return md_error_set(err, MD_E_THROTTLED, "not sent: the call budget of "
                        "[api] max_calls_per_minute = %ld and "
                        "max_calls_per_hour = %ld has no slot before %s, "
                        "later than [api] max_retry_time allows; the "
                        "limits, or a wait the service asked for with "
                        "HTTP 429, fill it (state in %s); run fewer rules, "
                        "less often, or raise the limits",
                        st->b->limits.per_minute, st->b->limits.per_hour,
                        md_time_format_seconds(at, text, sizeof(text)),
                        md_budget_path(st->b->budget) != NULL
                        ? md_budget_path(st->b->budget) : "memory");
}

/* Reserve the call in the budget and wait for its slot. */
static int pace(struct run_state *st, struct md_error *err)
{
    struct md_backend *b = st->b;
    md_instant now = hook_now(b);
    md_instant latest = now + remaining_ms(st) * (MD_TICKS_PER_SECOND
                                                  / 1000);
    struct md_budget_slot slot;
    struct md_error budget_err;
    int64_t wait;

    md_error_clear(&budget_err);
    if (md_budget_reserve(b->budget, now, latest, &slot, &budget_err) != 0) {
        budget_warning(b, &budget_err);
        return 0;
    }
    if (slot.paused_until != 0 && slot.paused_until > latest)
        return fail_paused(st, now, slot.paused_until, err);
    if (slot.paused_until == 0 && !slot.reserved)
        return fail_no_slot(st, slot.at, err);

    wait = (slot.at - now) / (MD_TICKS_PER_SECOND / 1000);
    if (wait <= 0)
        return 0;
    if (slot.paused_until != 0)
        md_info("waiting %.1f s for the end of the CPU-quota pause of "
                "tenant %s", wait / 1000.0, b->tenant_id);
    else
        md_log(wait >= 1000 ? MD_LOG_INFO : MD_LOG_DEBUG,
               "pacing: waiting %.1f s for a slot in the call budget "
               "(max_calls_per_minute = %ld, max_calls_per_hour = %ld)",
               wait / 1000.0, b->limits.per_minute, b->limits.per_hour);
    if (wait_ms_interruptible(st, wait, err) != 0)
        return -1;
    return slot.paused_until != 0 ? pace(st, err) : 0;
}

int md_backend_run(struct md_backend *backend, const char *query,
                   size_t len, int64_t period_seconds, int flags,
                   struct md_table **out, struct md_error *err)
{
    struct run_state st;
    struct attempt_outcome outcome;
    struct md_error local;
    char *body;
    size_t body_len;
    int64_t start_ms = md_monotonic_ms();
    int64_t wait;
    int rc;

    *out = NULL;
    if (err == NULL)
        err = &local;
    if (backend->kind == MD_BACKEND_SENTINEL
        ? md_la_build_body(query, len, period_seconds,
                           backend->default_timespan, &body, &body_len, err)
        : md_backend_build_body(backend->kind, query, len, period_seconds,
                                &body, &body_len, err))
        return -1;
    memset(&st, 0, sizeof(st));
    st.b = backend;
    st.start = hook_now(backend);

    for (;;) {
        /* A call the budget refuses is not sent, so not retried. */
        rc = pace(&st, err);
        if (rc != 0)
            break;
        md_error_clear(err);
        rc = run_once(backend, body, body_len, flags, out, &outcome, err);
        if (rc == 0 || err->kind == MD_E_INTERRUPTED)
            break;
        if (!plan_retry(&st, &outcome, err, &wait))
            break;
        log_retry(&st, wait, err);
        st.retries++;
        if (wait_ms_interruptible(&st, wait, err) != 0)
            break;
    }
    free(body);
    if (rc != 0)
        return -1;

    md_debug("backend: %s returned %zu rows and %zu columns in %lld ms",
             find_service(backend->kind)->name, (*out)->nrows,
             (*out)->ncolumns, (long long)(md_monotonic_ms() - start_ms));
    return 0;
}

int md_backend_paused_until(struct md_backend *backend, md_instant *until,
                            struct md_error *err)
{
    return md_budget_paused_until(backend->budget, hook_now(backend), until,
                                  err);
}
