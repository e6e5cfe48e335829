/* Tests for the Entra ID token source: tables, form, replies, caching. */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mdhunt/auth.h"
#include "mdhunt/http.h"

#define REPLIES MD_TEST_DATA "/replies/"

static char *read_fixture(const char *name, size_t *len)
{
    char path[512];
    FILE *f;
    char *data;
    long size;

    snprintf(path, sizeof(path), "%s%s", REPLIES, name);
    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    size = ftell(f);
    assert_true(size >= 0);
    rewind(f);
    data = malloc((size_t)size + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)size, f), (size_t)size);
    data[size] = '\0';
    fclose(f);
    *len = (size_t)size;
    return data;
}

/* A zeroed configuration with the auth fields a token source needs. */
static void make_config(struct md_config *cfg, enum md_backend_kind kind)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->auth.tenant_id = "contoso.onmicrosoft.com";
    cfg->auth.client_id = "00000000-0000-4000-8000-0000000000aa";
    cfg->auth.cloud = MD_CLOUD_PUBLIC;
    cfg->api.backend = kind;
    assert_int_equal(md_secret_set(&cfg->auth.client_secret, "s3cret", 6),
                     0);
}

static void free_config(struct md_config *cfg)
{
    md_secret_clear(&cfg->auth.client_secret);
}

static void cloud_table_public_authority(void **state)
{
    (void)state;
    assert_string_equal(md_auth_cloud_authority(MD_CLOUD_PUBLIC),
                        "https://login.microsoftonline.com");
}

static void scope_table_per_backend(void **state)
{
    (void)state;
    assert_string_equal(md_auth_default_scope(MD_BACKEND_GRAPH,
                                              MD_CLOUD_PUBLIC),
                        "https://graph.microsoft.com/.default");
    assert_string_equal(md_auth_default_scope(MD_BACKEND_DEFENDER,
                                              MD_CLOUD_PUBLIC),
                        "https://api.security.microsoft.com/.default");
    assert_string_equal(md_auth_default_scope(MD_BACKEND_SENTINEL,
                                              MD_CLOUD_PUBLIC),
                        "https://api.loganalytics.io/.default");
}

static void api_url_table_per_backend(void **state)
{
    (void)state;
    assert_string_equal(md_auth_default_api_url(MD_BACKEND_GRAPH,
                                                MD_CLOUD_PUBLIC),
                        "https://graph.microsoft.com");
    assert_string_equal(md_auth_default_api_url(MD_BACKEND_DEFENDER,
                                                MD_CLOUD_PUBLIC),
                        "https://api.security.microsoft.com");
    assert_string_equal(md_auth_default_api_url(MD_BACKEND_SENTINEL,
                                                MD_CLOUD_PUBLIC),
                        "https://api.loganalytics.azure.com");
}

static void url_override_keeps_scope(void **state)
{
    struct md_config cfg;

    (void)state;
    make_config(&cfg, MD_BACKEND_DEFENDER);
    cfg.api.url = "https://127.0.0.1:8443";
    assert_string_equal(md_auth_api_url(&cfg), "https://127.0.0.1:8443");
    assert_string_equal(md_auth_scope(&cfg),
                        "https://api.security.microsoft.com/.default");
    assert_string_equal(md_auth_authority(&cfg),
                        "https://login.microsoftonline.com");
    free_config(&cfg);
}

static void scope_and_authority_overrides(void **state)
{
    struct md_config cfg;

    (void)state;
    make_config(&cfg, MD_BACKEND_GRAPH);
    cfg.auth.scope = "api://custom/.default";
    cfg.auth.authority_url = "https://127.0.0.1:9443";
    assert_string_equal(md_auth_scope(&cfg), "api://custom/.default");
    assert_string_equal(md_auth_authority(&cfg), "https://127.0.0.1:9443");
    assert_string_equal(md_auth_api_url(&cfg), "https://graph.microsoft.com");
    free_config(&cfg);
}

static void form_encodes_every_field(void **state)
{
    struct md_secret secret = { NULL, 0 };
    struct md_error err;
    char *form = NULL;
    size_t len = 0;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_secret_set(&secret, "a+b/c=d&e f~\xc3\xa9", 14), 0);
    assert_int_equal(md_auth_build_form("id-1", "https://graph.microsoft.com"
                                        "/.default", &secret, &form, &len,
                                        &err), 0);
    assert_string_equal(form,
                        "client_id=id-1"
                        "&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
                        "&client_secret=a%2Bb%2Fc%3Dd%26e%20f~%C3%A9"
                        "&grant_type=client_credentials");
    assert_int_equal(len, strlen(form));
    md_wipe(form, len);
    free(form);
    md_secret_clear(&secret);
}

static void token_reply_number_expiry(void **state)
{
    struct md_secret token = { NULL, 0 };
    struct md_error err;
    int64_t expires_in = 0;
    size_t len;
    char *body = read_fixture("token_ok_number.json", &len);

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_auth_parse_token_reply(body, len, &token,
                                               &expires_in, &err), 0);
    assert_int_equal(expires_in, 3599);
    assert_non_null(token.value);
    assert_true(strncmp(token.value, "eyJ0eXAi", 8) == 0);
    assert_int_equal(token.len, strlen(token.value));
    md_secret_clear(&token);
    free(body);
}

static void token_reply_string_expiry(void **state)
{
    struct md_secret token = { NULL, 0 };
    struct md_error err;
    int64_t expires_in = 0;
    size_t len;
    char *body = read_fixture("token_ok_string.json", &len);

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_auth_parse_token_reply(body, len, &token,
                                               &expires_in, &err), 0);
    assert_int_equal(expires_in, 86399);
    md_secret_clear(&token);
    free(body);
}

static void token_reply_lowercase_bearer(void **state)
{
    struct md_secret token = { NULL, 0 };
    struct md_error err;
    int64_t expires_in = 0;
    size_t len;
    char *body = read_fixture("token_lowercase_type.json", &len);

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_auth_parse_token_reply(body, len, &token,
                                               &expires_in, &err), 0);
    assert_string_equal(token.value, "abc.def.ghi");
    md_secret_clear(&token);
    free(body);
}

static void token_reply_rejects_bad_fields(void **state)
{
    static const struct {
        const char *file;
        const char *words;
    } cases[] = {
        { "token_missing_access.json", "access_token is missing" },
        { "token_empty_access.json", "access_token is missing or empty" },
        { "token_type_pop.json", "token_type is not Bearer" },
        { "token_expires_zero.json", "expires_in" },
        { "token_expires_huge.json", "expires_in" },
        { "token_expires_text.json", "expires_in" },
        { "token_expires_missing.json", "expires_in" },
        { "token_access_with_newline.json", "cannot contain" },
        { "not_json.html", "not JSON" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_secret token = { NULL, 0 };
        struct md_error err;
        int64_t expires_in = 0;
        size_t len;
        char *body = read_fixture(cases[i].file, &len);

        md_error_clear(&err);
        print_message("case %s\n", cases[i].file);
        assert_int_equal(md_auth_parse_token_reply(body, len, &token,
                                                   &expires_in, &err), -1);
        assert_int_equal(err.kind, MD_E_SERVICE);
        assert_non_null(strstr(err.message, cases[i].words));
        assert_null(token.value);
        free(body);
    }
}

static void token_errors_name_the_fix(void **state)
{
    static const struct {
        const char *file;
        long status;
        const char *code;
        const char *hint;
        const char *trace;
    } cases[] = {
        { "token_error_7000215.json", 401, "AADSTS7000215",
          "not its Secret ID", "0f0e0d0c-0000-4000-8000-000000000001" },
        { "token_error_7000222.json", 401, "AADSTS7000222",
          "create a new one", "0f0e0d0c-0000-4000-8000-000000000002" },
        { "token_error_700016.json", 400, "AADSTS700016",
          "check [auth] client_id and [auth] tenant_id",
          "0f0e0d0c-0000-4000-8000-000000000003" },
        { "token_error_90002.json", 400, "AADSTS90002",
          "tenant was not found", "0f0e0d0c-0000-4000-8000-000000000004" },
        { "token_error_900023.json", 400, "AADSTS900023",
          "tenant identifier is malformed",
          "0f0e0d0c-0000-4000-8000-000000000005" },
        { "token_error_70011.json", 400, "AADSTS70011",
          "scope is invalid", "0f0e0d0c-0000-4000-8000-000000000006" },
        { "token_error_500011.json", 400, "AADSTS500011",
          "service principal does not exist",
          "0f0e0d0c-0000-4000-8000-000000000007" },
        { "token_error_9001023.json", 400, "AADSTS9001023",
          "/common or /organizations",
          "0f0e0d0c-0000-4000-8000-000000000008" },
        { "token_error_70002.json", 401, "AADSTS70002",
          "check [auth] tenant_id, [auth] client_id and the client secret",
          "0f0e0d0c-0000-4000-8000-000000000009" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error err;
        size_t len;
        char *body = read_fixture(cases[i].file, &len);

        md_error_clear(&err);
        print_message("case %s\n", cases[i].file);
        assert_int_equal(md_auth_error_from_reply(cases[i].status, body,
                                                  len, &err), -1);
        assert_int_equal(err.kind, MD_E_AUTH);
        assert_int_equal(err.http_status, cases[i].status);
        assert_non_null(strstr(err.message, cases[i].code));
        assert_non_null(strstr(err.message, cases[i].hint));
        assert_string_equal(err.request_id, cases[i].trace);
        /* Only the description's first line is quoted. */
        assert_null(strstr(err.message, "Trace ID"));
        free(body);
    }
}

static void token_error_keeps_oauth_code(void **state)
{
    struct md_error err;
    size_t len;
    char *body = read_fixture("token_error_7000215.json", &len);

    (void)state;
    md_error_clear(&err);
    md_auth_error_from_reply(401, body, len, &err);
    assert_string_equal(err.service_code, "invalid_client");
    free(body);
}

static void token_error_unavailable_is_service(void **state)
{
    struct md_error err;
    size_t len;
    char *body = read_fixture("token_error_unavailable.json", &len);

    (void)state;
    md_error_clear(&err);
    md_auth_error_from_reply(400, body, len, &err);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_string_equal(err.service_code, "temporarily_unavailable");
    free(body);
}

static void token_error_5xx_is_service(void **state)
{
    struct md_error err;
    size_t len;
    char *body = read_fixture("token_error_70002.json", &len);

    (void)state;
    md_error_clear(&err);
    md_auth_error_from_reply(503, body, len, &err);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_int_equal(err.http_status, 503);
    free(body);
}

static void token_error_html_is_quoted(void **state)
{
    struct md_error err;
    size_t len;
    char *body = read_fixture("not_json.html", &len);

    (void)state;
    md_error_clear(&err);
    md_auth_error_from_reply(502, body, len, &err);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "HTTP 502"));
    assert_non_null(strstr(err.message, "<title>502 Bad Gateway</title>"));
    assert_null(strchr(err.message, '\n'));
    free(body);
}

static void token_error_quote_is_bounded(void **state)
{
    char body[1000];
    struct md_error err;

    (void)state;
    memset(body, 'x', sizeof(body));
    md_error_clear(&err);
    md_auth_error_from_reply(400, body, sizeof(body), &err);
    assert_non_null(strstr(err.message, "\"xxxx"));
    assert_true(strlen(err.message) < 200 + 100);
}

static void new_rejects_bad_tenant(void **state)
{
    static const char *const tenants[] = {
        "", "contoso/../x", "a b", "common", "Organizations"
    };

    (void)state;
    for (size_t i = 0; i < sizeof(tenants) / sizeof(tenants[0]); i++) {
        struct md_config cfg;
        struct md_auth *auth = (struct md_auth *)1;
        struct md_error err;

        make_config(&cfg, MD_BACKEND_GRAPH);
        cfg.auth.tenant_id = (char *)tenants[i];
        md_error_clear(&err);
        print_message("tenant \"%s\"\n", tenants[i]);
        assert_int_equal(md_auth_new(&cfg, NULL, &auth, &err), -1);
        assert_int_equal(err.kind, MD_E_CONFIG);
        assert_null(auth);
        free_config(&cfg);
    }
}

static void new_requires_secret(void **state)
{
    struct md_config cfg;
    struct md_auth *auth;
    struct md_error err;

    (void)state;
    make_config(&cfg, MD_BACKEND_GRAPH);
    md_secret_clear(&cfg.auth.client_secret);
    md_error_clear(&err);
    assert_int_equal(md_auth_new(&cfg, NULL, &auth, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "client secret"));
}

/* An https URL on a loopback port that refuses connections: bound but
 * never listening. */
static int refusing_url(char *url, size_t size)
{
    struct sockaddr_in addr;
    socklen_t addr_len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &addr_len),
                     0);
    snprintf(url, size, "https://127.0.0.1:%u", ntohs(addr.sin_port));
    return fd;
}

struct cache_fixture {
    struct md_config cfg;
    struct md_http *http;
    struct md_auth *auth;
    char url[64];
    int fd;
};

static int cache_setup(void **state)
{
    struct md_http_options opts = { NULL, NULL, 5, 5, 1 << 20 };
    struct cache_fixture *f = calloc(1, sizeof(*f));
    struct md_error err;
    size_t len;
    char *body;

    assert_non_null(f);
    md_error_clear(&err);
    f->fd = refusing_url(f->url, sizeof(f->url));
    make_config(&f->cfg, MD_BACKEND_DEFENDER);
    f->cfg.auth.authority_url = f->url;
    assert_int_equal(md_http_new(&opts, &f->http, &err), 0);
    assert_int_equal(md_auth_new(&f->cfg, f->http, &f->auth, &err), 0);

    setenv("MDHUNT_TEST_NOW", "1735725600", 1);
    body = read_fixture("token_ok_number.json", &len);
    assert_int_equal(md_auth_accept_reply(f->auth, body, len, &err), 0);
    free(body);
    *state = f;
    return 0;
}

static int cache_teardown(void **state)
{
    struct cache_fixture *f = *state;

    unsetenv("MDHUNT_TEST_NOW");
    md_auth_free(f->auth);
    md_http_free(f->http);
    free_config(&f->cfg);
    close(f->fd);
    free(f);
    return 0;
}

static void cached_token_is_reused(void **state)
{
    struct cache_fixture *f = *state;
    const struct md_secret *token = NULL;
    struct md_error err;

#ifndef MDHUNT_TEST_CLOCK
    skip();
#endif
    md_error_clear(&err);
    /* 3599 s lifetime: renewal starts 360 s before the end. */
    setenv("MDHUNT_TEST_NOW", "1735728838", 1);
    assert_int_equal(md_auth_token(f->auth, &token, &err), 0);
    assert_non_null(token);
    assert_true(strncmp(token->value, "eyJ0eXAi", 8) == 0);
}

static void token_renewed_near_expiry(void **state)
{
    struct cache_fixture *f = *state;
    const struct md_secret *token = NULL;
    struct md_error err;

#ifndef MDHUNT_TEST_CLOCK
    skip();
#endif
    md_error_clear(&err);
    setenv("MDHUNT_TEST_NOW", "1735728840", 1);
    /* The renewal goes to the refusing authority, so it fails. */
    assert_int_equal(md_auth_token(f->auth, &token, &err), -1);
    assert_int_equal(err.kind, MD_E_NETWORK);
    assert_non_null(strstr(err.message, "Entra ID"));
    assert_null(token);
}

static void short_token_renewed_a_minute_early(void **state)
{
    struct cache_fixture *f = *state;
    const struct md_secret *token = NULL;
    struct md_error err;
    const char *reply = "{\"token_type\":\"Bearer\",\"expires_in\":300,"
                        "\"access_token\":\"short.lived.token\"}";

#ifndef MDHUNT_TEST_CLOCK
    skip();
#endif
    md_error_clear(&err);
    assert_int_equal(md_auth_accept_reply(f->auth, reply, strlen(reply),
                                          &err), 0);
    setenv("MDHUNT_TEST_NOW", "1735725839", 1);
    assert_int_equal(md_auth_token(f->auth, &token, &err), 0);
    assert_string_equal(token->value, "short.lived.token");
    setenv("MDHUNT_TEST_NOW", "1735725841", 1);
    assert_int_equal(md_auth_token(f->auth, &token, &err), -1);
}

static void invalidate_forces_request(void **state)
{
    struct cache_fixture *f = *state;
    const struct md_secret *token = NULL;
    struct md_error err;

    md_error_clear(&err);
    md_auth_invalidate(f->auth);
    assert_int_equal(md_auth_token(f->auth, &token, &err), -1);
    assert_int_equal(err.kind, MD_E_NETWORK);
}

static void errors_never_show_secret(void **state)
{
    struct cache_fixture *f = *state;
    const struct md_secret *token = NULL;
    struct md_error err;

    md_error_clear(&err);
    md_auth_invalidate(f->auth);
    md_auth_token(f->auth, &token, &err);
    assert_null(strstr(err.message, "s3cret"));
    assert_null(strstr(err.message, "eyJ0eXAi"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cloud_table_public_authority),
        cmocka_unit_test(scope_table_per_backend),
        cmocka_unit_test(api_url_table_per_backend),
        cmocka_unit_test(url_override_keeps_scope),
        cmocka_unit_test(scope_and_authority_overrides),
        cmocka_unit_test(form_encodes_every_field),
        cmocka_unit_test(token_reply_number_expiry),
        cmocka_unit_test(token_reply_string_expiry),
        cmocka_unit_test(token_reply_lowercase_bearer),
        cmocka_unit_test(token_reply_rejects_bad_fields),
        cmocka_unit_test(token_errors_name_the_fix),
        cmocka_unit_test(token_error_keeps_oauth_code),
        cmocka_unit_test(token_error_unavailable_is_service),
        cmocka_unit_test(token_error_5xx_is_service),
        cmocka_unit_test(token_error_html_is_quoted),
        cmocka_unit_test(token_error_quote_is_bounded),
        cmocka_unit_test(new_rejects_bad_tenant),
        cmocka_unit_test(new_requires_secret),
        cmocka_unit_test_setup_teardown(cached_token_is_reused,
                                        cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(token_renewed_near_expiry,
                                        cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(short_token_renewed_a_minute_early,
                                        cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(invalidate_forces_request,
                                        cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(errors_never_show_secret,
                                        cache_setup, cache_teardown),
    };
    struct md_error err;
    int failed;

    md_error_clear(&err);
    if (md_http_global_init(&err) != 0)
        return 1;
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    md_http_global_cleanup();
    return failed;
}
