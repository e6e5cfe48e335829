#include "mdhunt/backend.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/auth.h"
#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"

/* Bytes of a service message or an unexpected body quoted in an error. */
#define MESSAGE_QUOTE_MAX 400
#define BODY_QUOTE_MAX 200

struct md_backend {
    enum md_backend_kind kind;
    struct md_http *http;
    struct md_auth *auth;
    char *url;              /* the hunting endpoint */
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
    const char *permission;
};

static const struct service services[] = {
    { MD_BACKEND_GRAPH, "Graph", "/v1.0/security/runHuntingQuery",
      "schema", "results", "name", "type",
      "the ThreatHunting.Read.All application permission of Microsoft "
      "Graph" },
    { MD_BACKEND_DEFENDER, "Defender", "/api/advancedhunting/run",
      "Schema", "Results", "Name", "Type",
      "the AdvancedHunting.Read.All application permission of the "
      "Microsoft Threat Protection API" },
};

static const struct service *find_service(enum md_backend_kind kind)
{
    for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++) {
        if (services[i].kind == kind)
            return &services[i];
    }
    return NULL;
}

int md_backend_new(const struct md_config *cfg, struct md_backend **out,
                   struct md_error *err)
{
    const struct service *svc = find_service(cfg->api.backend);
    struct md_http_options opts;
    struct md_backend *b;
    struct md_buf url = MD_BUF_INIT;
    const char *base;
    size_t base_len;

    *out = NULL;
    if (svc == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "the %s backend is not supported yet; set "
                            "[api] backend to graph or defender",
                            md_backend_kind_name(cfg->api.backend));
    base = md_auth_api_url(cfg);
    if (base == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "no API URL is known for the %s backend in "
                            "this cloud; set [api] url", svc->name);

    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    b->kind = cfg->api.backend;
    base_len = strlen(base);
    while (base_len > 0 && base[base_len - 1] == '/')
        base_len--;
    if (md_buf_printf(&url, "%.*s%s", (int)base_len, base, svc->path) != 0
        || (b->url = md_buf_detach(&url)) == NULL) {
        md_buf_free(&url);
        md_backend_free(b);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }

    memset(&opts, 0, sizeof(opts));
    opts.ca_file = cfg->api.ca_file;
    opts.proxy = cfg->api.proxy;
    opts.connect_timeout = cfg->api.connect_timeout;
    opts.timeout = cfg->api.timeout;
    opts.max_reply_size = cfg->api.max_reply_size;
    if (md_http_new(&opts, &b->http, err) != 0
        || md_auth_new(cfg, b->http, &b->auth, err) != 0) {
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
    free(backend->url);
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
    root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
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

/* One attempt: token, request, reply.  A retry loop calls this again. */
static int run_once(struct md_backend *b, const char *body, size_t body_len,
                    int flags, struct md_table **out, struct md_error *err)
{
    static const char *const headers[] = {
        "Content-Type: application/json; charset=utf-8",
        "Accept: application/json",
        NULL
    };
    const struct service *svc = find_service(b->kind);
    const struct md_secret *token;
    struct md_http_request req;
    struct md_http_response resp;
    int rc = -1;

    if (md_auth_token(b->auth, &token, err) != 0)
        return -1;
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = b->url;
    req.headers = headers;
    req.bearer = token;
    req.body = body;
    req.body_len = body_len;
    req.show_progress = (flags & MD_BACKEND_PROGRESS) != 0;
    md_http_response_init(&resp);

    if (md_http_perform(b->http, &req, &resp, err) != 0)
        goto out;
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
    }

out:
    md_http_response_free(&resp);
    return rc;
}

int md_backend_run(struct md_backend *backend, const char *query,
                   size_t len, int64_t period_seconds, int flags,
                   struct md_table **out, struct md_error *err)
{
    char *body;
    size_t body_len;
    int64_t start = md_monotonic_ms();
    int rc;

    *out = NULL;
    if (md_backend_build_body(backend->kind, query, len, period_seconds,
                              &body, &body_len, err) != 0)
        return -1;
    rc = run_once(backend, body, body_len, flags, out, err);
    free(body);
    if (rc != 0)
        return -1;

    md_debug("backend: %s returned %zu rows and %zu columns in %lld ms",
             find_service(backend->kind)->name, (*out)->nrows,
             (*out)->ncolumns, (long long)(md_monotonic_ms() - start));
    return 0;
}
