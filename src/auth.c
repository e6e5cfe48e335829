#include "mdhunt/auth.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"

/* Largest expires_in accepted, in seconds (a year); Entra ID tokens live
 * about an hour. */
#define EXPIRES_IN_MAX 31536000

/* Renew when less than max(RENEW_MIN_SECONDS, lifetime / 10) remains. */
#define RENEW_MIN_SECONDS 60

/* Bytes of a reply body quoted when it is not the expected JSON. */
#define QUOTE_MAX 200

struct md_auth {
    struct md_http *http;
    char *token_url;
    char *client_id;
    char *scope;
    struct md_secret secret;
    struct md_secret token;
    md_instant obtained_at;
    md_instant expires_at;
};

struct cloud_entry {
    enum md_cloud cloud;
    const char *authority;
};

static const struct cloud_entry clouds[] = {
    { MD_CLOUD_PUBLIC, "https://login.microsoftonline.com" },
};

struct api_entry {
    enum md_backend_kind kind;
    enum md_cloud cloud;
    const char *scope;
    const char *url;
};

static const struct api_entry apis[] = {
    { MD_BACKEND_GRAPH, MD_CLOUD_PUBLIC,
      "https://graph.microsoft.com/.default",
      "https://graph.microsoft.com" },
    { MD_BACKEND_DEFENDER, MD_CLOUD_PUBLIC,
      "https://api.security.microsoft.com/.default",
      "https://api.security.microsoft.com" },
    { MD_BACKEND_SENTINEL, MD_CLOUD_PUBLIC,
      "https://api.loganalytics.io/.default",
      "https://api.loganalytics.azure.com" },
};

const char *md_auth_cloud_authority(enum md_cloud cloud)
{
    for (size_t i = 0; i < sizeof(clouds) / sizeof(clouds[0]); i++) {
        if (clouds[i].cloud == cloud)
            return clouds[i].authority;
    }
    return NULL;
}

static const struct api_entry *find_api(enum md_backend_kind kind,
                                        enum md_cloud cloud)
{
    for (size_t i = 0; i < sizeof(apis) / sizeof(apis[0]); i++) {
        if (apis[i].kind == kind && apis[i].cloud == cloud)
            return &apis[i];
    }
    return NULL;
}

const char *md_auth_default_scope(enum md_backend_kind kind,
                                  enum md_cloud cloud)
{
    const struct api_entry *e = find_api(kind, cloud);

    return e != NULL ? e->scope : NULL;
}

const char *md_auth_default_api_url(enum md_backend_kind kind,
                                    enum md_cloud cloud)
{
    const struct api_entry *e = find_api(kind, cloud);

    return e != NULL ? e->url : NULL;
}

const char *md_auth_authority(const struct md_config *cfg)
{
    if (cfg->auth.authority_url != NULL)
        return cfg->auth.authority_url;
    return md_auth_cloud_authority(cfg->auth.cloud);
}

const char *md_auth_scope(const struct md_config *cfg)
{
    if (cfg->auth.scope != NULL)
        return cfg->auth.scope;
    return md_auth_default_scope(cfg->api.backend, cfg->auth.cloud);
}

const char *md_auth_api_url(const struct md_config *cfg)
{
    if (cfg->api.url != NULL)
        return cfg->api.url;
    return md_auth_default_api_url(cfg->api.backend, cfg->auth.cloud);
}

/* A tenant is a GUID or a domain name; it goes into the URL path, so only
 * letters, digits, dots and hyphens are allowed. */
static int check_tenant(const char *tenant, struct md_error *err)
{
    static const char *const shared[] = {
        "common", "organizations", "consumers"
    };

    if (tenant == NULL || *tenant == '\0')
        return md_error_set(err, MD_E_CONFIG,
                            "[auth] tenant_id is missing; set it to the "
                            "directory (tenant) ID of the app "
                            "registration");
    for (const char *p = tenant; *p != '\0'; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
            return md_error_set(err, MD_E_CONFIG,
                                "[auth] tenant_id \"%.100s\" is invalid: "
                                "give the directory (tenant) ID GUID or a "
                                "verified domain name", tenant);
    }
    for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
        if (md_strcasecmp(tenant, shared[i]) == 0)
            return md_error_set(err, MD_E_CONFIG,
                                "[auth] tenant_id \"%s\" cannot be used "
                                "with the client credentials grant; give "
                                "the directory (tenant) ID of your tenant",
                                tenant);
    }
    return 0;
}

static char *make_token_url(const char *authority, const char *tenant)
{
    size_t len = strlen(authority);
    struct md_buf url = MD_BUF_INIT;

    while (len > 0 && authority[len - 1] == '/')
        len--;
    if (md_buf_printf(&url, "%.*s/%s/oauth2/v2.0/token", (int)len,
                      authority, tenant) != 0) {
        md_buf_free(&url);
        return NULL;
    }
    return md_buf_detach(&url);
}

int md_auth_new(const struct md_config *cfg, struct md_http *http,
                struct md_auth **out, struct md_error *err)
{
    const char *authority = md_auth_authority(cfg);
    const char *scope = md_auth_scope(cfg);
    const struct md_secret *secret = &cfg->auth.client_secret;
    struct md_auth *auth;

    *out = NULL;
    if (check_tenant(cfg->auth.tenant_id, err) != 0)
        return -1;
    if (cfg->auth.client_id == NULL || cfg->auth.client_id[0] == '\0')
        return md_error_set(err, MD_E_CONFIG,
                            "[auth] client_id is missing; set it to the "
                            "application (client) ID of the app "
                            "registration");
    if (secret->value == NULL || secret->len == 0)
        return md_error_set(err, MD_E_CONFIG,
                            "no client secret is loaded; set [auth] "
                            "client_secret_file or MDHUNT_CLIENT_SECRET");
    if (authority == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "no authority is known for this cloud; set "
                            "[auth] authority_url");
    if (scope == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "no token scope is known for the %s backend "
                            "in this cloud; set [auth] scope",
                            md_backend_kind_name(cfg->api.backend));

    auth = calloc(1, sizeof(*auth));
    if (auth == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    auth->http = http;
    auth->token_url = make_token_url(authority, cfg->auth.tenant_id);
    auth->client_id = md_strdup(cfg->auth.client_id);
    auth->scope = md_strdup(scope);
    if (auth->token_url == NULL || auth->client_id == NULL
        || auth->scope == NULL
        || md_secret_set(&auth->secret, secret->value, secret->len) != 0) {
        md_auth_free(auth);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }
    *out = auth;
    return 0;
}

void md_auth_free(struct md_auth *auth)
{
    if (auth == NULL)
        return;
    md_secret_clear(&auth->secret);
    md_secret_clear(&auth->token);
    free(auth->token_url);
    free(auth->client_id);
    free(auth->scope);
    free(auth);
}

void md_auth_invalidate(struct md_auth *auth)
{
    md_secret_clear(&auth->token);
    auth->obtained_at = 0;
    auth->expires_at = 0;
}

static int is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
        || c == '~';
}

/* Percent-encode src into dst (when dst is not NULL); returns the encoded
 * length. */
static size_t form_encode(char *dst, const char *src, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];

        if (is_unreserved(c)) {
            if (dst != NULL)
                dst[n] = (char)c;
            n++;
            continue;
        }
        if (dst != NULL) {
            dst[n] = '%';
            dst[n + 1] = hex[c >> 4];
            dst[n + 2] = hex[c & 0x0f];
        }
        n += 3;
    }
    return n;
}

int md_auth_build_form(const char *client_id, const char *scope,
                       const struct md_secret *secret, char **form,
                       size_t *len, struct md_error *err)
{
    static const char grant[] = "client_credentials";
    const char *names[] = {
        "client_id", "scope", "client_secret", "grant_type"
    };
    const char *values[] = { client_id, scope, secret->value, grant };
    size_t lens[] = {
        strlen(client_id), strlen(scope), secret->len, sizeof(grant) - 1
    };
    size_t total = 0;
    size_t n = 0;
    char *p;

    /* Size the buffer first: growing it with realloc() could leave
     * copies of the secret in freed memory. */
    for (size_t i = 0; i < 4; i++)
        total += (i > 0) + strlen(names[i]) + 1
                 + form_encode(NULL, values[i], lens[i]);
    p = malloc(total + 1);
    if (p == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    for (size_t i = 0; i < 4; i++) {
        if (i > 0)
            p[n++] = '&';
        memcpy(p + n, names[i], strlen(names[i]));
        n += strlen(names[i]);
        p[n++] = '=';
        n += form_encode(p + n, values[i], lens[i]);
    }
    p[n] = '\0';
    *form = p;
    *len = n;
    return 0;
}

/* Read expires_in: a JSON integer, or a string of decimal digits as v1
 * replies and some v2 replies send it. */
static int read_expires_in(json_t *value, int64_t *out)
{
    const char *s;
    int64_t v = 0;

    if (json_is_integer(value)) {
        v = json_integer_value(value);
    } else if (json_is_real(value)) {
        double d = json_real_value(value);

        if (!(d >= 1 && d <= EXPIRES_IN_MAX) || d != (double)(int64_t)d)
            return -1;
        v = (int64_t)d;
    } else if (json_is_string(value)) {
        s = json_string_value(value);
        if (*s == '\0' || strlen(s) != json_string_length(value))
            return -1;
        for (; *s != '\0'; s++) {
            if (*s < '0' || *s > '9' || v > EXPIRES_IN_MAX)
                return -1;
            v = v * 10 + (*s - '0');
        }
    } else {
        return -1;
    }
    if (v < 1 || v > EXPIRES_IN_MAX)
        return -1;
    *out = v;
    return 0;
}

/* A bearer token goes into an HTTP header: visible ASCII only. */
static int is_header_safe(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* Overwrite a parsed string that contained a secret before jansson frees
 * it. */
static void wipe_json_string(json_t *value)
{
    if (json_is_string(value))
        md_wipe((char *)json_string_value(value),
                json_string_length(value));
}

int md_auth_parse_token_reply(const char *body, size_t len,
                              struct md_secret *token, int64_t *expires_in,
                              struct md_error *err)
{
    json_error_t jerr;
    json_t *root;
    json_t *access;
    json_t *type;
    int rc = -1;

    /* NOTE: jansson's parser buffers are freed without being wiped; only
     * the parsed token string is overwritten below. */
    root = json_loadb(body, len, 0, &jerr);
    if (root == NULL)
        return md_error_set(err, MD_E_SERVICE,
                            "invalid token reply from Entra ID: not JSON "
                            "(error at byte %d)", jerr.position);
    access = json_object_get(root, "access_token");
    type = json_object_get(root, "token_type");

    if (!json_is_object(root)) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: not a JSON "
                     "object");
    } else if (!json_is_string(access) || json_string_length(access) == 0) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: access_token is "
                     "missing or empty");
    } else if (!is_header_safe(json_string_value(access),
                               json_string_length(access))) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: access_token "
                     "holds characters a bearer token cannot contain");
    } else if (!json_is_string(type)
               || md_strcasecmp(json_string_value(type), "Bearer") != 0) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: token_type is "
                     "not Bearer");
    } else if (read_expires_in(json_object_get(root, "expires_in"),
                               expires_in) != 0) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: expires_in is "
                     "missing or not a number of seconds from 1 to %d",
                     EXPIRES_IN_MAX);
    } else if (md_secret_set(token, json_string_value(access),
                             json_string_length(access)) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
    } else {
        rc = 0;
    }

    wipe_json_string(access);
    json_decref(root);
    return rc;
}

int md_auth_accept_reply(struct md_auth *auth, const char *body, size_t len,
                         struct md_error *err)
{
    struct md_secret token = { NULL, 0 };
    int64_t expires_in;

    if (md_auth_parse_token_reply(body, len, &token, &expires_in, err) != 0)
        return -1;
    md_secret_clear(&auth->token);
    auth->token = token;
    auth->obtained_at = md_now();
    auth->expires_at = auth->obtained_at
                       + (md_instant)expires_in * MD_TICKS_PER_SECOND;
    md_debug("auth: received a token valid for %lld s",
             (long long)expires_in);
    return 0;
}

struct aadsts_hint {
    long long code;
    const char *hint;
};

static const struct aadsts_hint hints[] = {
    { 7000215, "the client secret is wrong: give the secret's Value "
               "(shown once when it was created), not its Secret ID" },
    { 7000222, "the client secret has expired: create a new one under "
               "App registrations > Certificates & secrets and store it "
               "in the client secret file" },
    { 700016, "no application with this client_id exists in the tenant: "
              "check [auth] client_id and [auth] tenant_id" },
    { 90002, "the tenant was not found: check [auth] tenant_id (the "
             "directory ID or a verified domain name)" },
    { 900023, "the tenant identifier is malformed: set [auth] tenant_id "
              "to the directory (tenant) ID GUID or a verified domain "
              "name" },
    { 70011, "the scope is invalid: remove [auth] scope to use the "
             "backend's default, or give an API's App ID URI followed by "
             "/.default" },
    { 500011, "the API's service principal does not exist in this "
              "tenant: check [auth] tenant_id and [auth] scope, and that "
              "the tenant has the product (Defender XDR, Graph) enabled" },
    { 9001023, "the client credentials grant does not work with /common "
               "or /organizations: set [auth] tenant_id to your tenant's "
               "directory ID" },
};

static const char *hint_for(long long code)
{
    for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++) {
        if (hints[i].code == code)
            return hints[i].hint;
    }
    return "check [auth] tenant_id, [auth] client_id and the client "
           "secret";
}

/* Copy text up to its first line break, replacing control characters. */
static void first_line(char *dst, size_t size, const char *src, size_t len)
{
    size_t n = 0;

    while (n < len && n + 1 < size && src[n] != '\r' && src[n] != '\n') {
        unsigned char c = (unsigned char)src[n];

        dst[n] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
        n++;
    }
    dst[n] = '\0';
}

static void copy_field(char *dst, size_t size, json_t *value)
{
    if (json_is_string(value))
        first_line(dst, size, json_string_value(value),
                   json_string_length(value));
}

/* The AADSTS number: error_codes[0], else the number after "AADSTS" at
 * the start of the description; 0 when neither is present. */
static long long aadsts_code(json_t *root, const char *description)
{
    json_t *codes = json_object_get(root, "error_codes");
    long long code = 0;

    if (json_is_array(codes) && json_is_integer(json_array_get(codes, 0)))
        return json_integer_value(json_array_get(codes, 0));
    if (strncmp(description, "AADSTS", 6) != 0)
        return 0;
    for (const char *p = description + 6; *p >= '0' && *p <= '9'; p++) {
        if (code > 1000000000)
            return 0;
        code = code * 10 + (*p - '0');
    }
    return code;
}

static int set_unreadable(long status, const char *body, size_t len,
                          struct md_error *err)
{
    char quote[QUOTE_MAX + 1];
    size_t n = len < QUOTE_MAX ? len : QUOTE_MAX;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)body[i];

        quote[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    quote[n] = '\0';
    return md_error_set(err, MD_E_SERVICE,
                        "the Entra ID token endpoint answered HTTP %ld "
                        "with an unexpected body: \"%s\"", status, quote);
}

int md_auth_error_from_reply(long status, const char *body, size_t len,
                             struct md_error *err)
{
    char description[300] = "";
    char code_text[32] = "";
    json_error_t jerr;
    json_t *root;
    json_t *error;
    long long code;

    if (err != NULL)
        err->http_status = status;
    root = json_loadb(body, len, 0, &jerr);
    error = json_object_get(root, "error");
    if (!json_is_string(error)) {
        json_decref(root);
        return set_unreadable(status, body, len, err);
    }

    if (err != NULL) {
        copy_field(err->service_code, sizeof(err->service_code), error);
        copy_field(err->request_id, sizeof(err->request_id),
                   json_object_get(root, "trace_id"));
    }
    copy_field(description, sizeof(description),
               json_object_get(root, "error_description"));
    code = aadsts_code(root, description);
    if (description[0] == '\0' && code != 0)
        snprintf(description, sizeof(description), "AADSTS%lld", code);
    else if (code != 0 && strncmp(description, "AADSTS", 6) != 0)
        snprintf(code_text, sizeof(code_text), "AADSTS%lld: ", code);

    if (status >= 500
        || strcmp(json_string_value(error), "temporarily_unavailable") == 0)
        md_error_set(err, MD_E_SERVICE,
                     "Entra ID cannot issue a token now (HTTP %ld, %s): "
                     "\"%s%s\"; try again later", status,
                     json_string_value(error), code_text, description);
    else
        md_error_set(err, MD_E_AUTH,
                     "Entra ID rejected the token request (HTTP %ld, %s): "
                     "\"%s%s\"; %s", status, json_string_value(error),
                     code_text, description, hint_for(code));
    json_decref(root);
    return -1;
}

static int request_token(struct md_auth *auth, struct md_error *err)
{
    const char *headers[] = {
        "Content-Type: application/x-www-form-urlencoded",
        "Accept: application/json",
        NULL
    };
    struct md_http_request req;
    struct md_http_response resp;
    char *form = NULL;
    size_t form_len = 0;
    int rc = -1;

    if (md_auth_build_form(auth->client_id, auth->scope, &auth->secret,
                           &form, &form_len, err) != 0)
        return -1;
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = auth->token_url;
    req.headers = headers;
    req.body = form;
    req.body_len = form_len;
    req.secret_reply = 1;
    md_http_response_init(&resp);

    md_debug("auth: requesting a token for scope %s", auth->scope);
    if (md_http_perform(auth->http, &req, &resp, err) != 0) {
        md_error_prefix(err, "cannot get an access token from Entra ID");
        goto out;
    }
    if (resp.status == 200) {
        rc = md_auth_accept_reply(auth, resp.body.data, resp.body.len, err);
        goto out;
    }

    md_auth_error_from_reply(resp.status, resp.body.data, resp.body.len,
                             err);
    if (err != NULL && err->request_id[0] == '\0')
        snprintf(err->request_id, sizeof(err->request_id), "%s",
                 resp.ms_request_id);

out:
    md_wipe(form, form_len);
    free(form);
    md_http_response_free(&resp);
    return rc;
}

static int token_is_fresh(const struct md_auth *auth, md_instant now)
{
    md_instant lifetime = auth->expires_at - auth->obtained_at;
    md_instant margin = lifetime / 10;

    if (auth->token.value == NULL)
        return 0;
    if (margin < RENEW_MIN_SECONDS * MD_TICKS_PER_SECOND)
        margin = RENEW_MIN_SECONDS * MD_TICKS_PER_SECOND;
    return now < auth->expires_at - margin;
}

int md_auth_token(struct md_auth *auth, const struct md_secret **token,
                  struct md_error *err)
{
    *token = NULL;
    if (!token_is_fresh(auth, md_now())) {
        md_auth_invalidate(auth);
        if (request_token(auth, err) != 0)
            return -1;
    }
    *token = &auth->token;
    return 0;
}
