/* Tests for the national cloud table and the configuration keys of
 * retries, the call budget and certificate credentials. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/auth.h"
#include "mdhunt/config.h"

/* Load text as a configuration file; returns md_config_load's result. */
static int load(const char *text, struct md_config *cfg,
                struct md_error *err)
{
    char path[] = "/tmp/mdhunt-test-clouds-XXXXXX";
    int fd = mkstemp(path);
    int rc;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    md_error_clear(err);
    rc = md_config_load(path, cfg, err);
    unlink(path);
    return rc;
}

static void load_ok(const char *text, struct md_config *cfg)
{
    struct md_error err;

    if (load(text, cfg, &err) != 0)
        fail_msg("%s", err.message);
}

static void assert_load_fails(const char *text, const char *line,
                              const char *fragment)
{
    struct md_config cfg;
    struct md_error err;

    assert_int_equal(load(text, &cfg, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    if (strstr(err.message, line) == NULL ||
        strstr(err.message, fragment) == NULL)
        fail_msg("\"%s\" lacks \"%s\" or \"%s\"", err.message, line,
                 fragment);
}

/* ---- The cloud table ---- */

struct cloud_case {
    const char *name;
    enum md_cloud cloud;
    const char *authority;
    const char *graph;
    const char *defender;
    const char *portal;
};

static const struct cloud_case clouds[] = {
    { "public", MD_CLOUD_PUBLIC, "https://login.microsoftonline.com",
      "https://graph.microsoft.com", "https://api.security.microsoft.com",
      "https://security.microsoft.com" },
    { "usgov", MD_CLOUD_USGOV, "https://login.microsoftonline.com",
      "https://graph.microsoft.com",
      "https://api-gcc.security.microsoft.us",
      "https://security.microsoft.com" },
    { "usgov-high", MD_CLOUD_USGOV_HIGH, "https://login.microsoftonline.us",
      "https://graph.microsoft.us", "https://api-gov.security.microsoft.us",
      "https://security.microsoft.us" },
    { "dod", MD_CLOUD_DOD, "https://login.microsoftonline.us",
      "https://dod-graph.microsoft.us",
      "https://api-gov.security.microsoft.us", "https://security.apps.mil" },
    { "china", MD_CLOUD_CHINA, "https://login.partner.microsoftonline.cn",
      NULL, NULL, NULL },
};

static void assert_same(const char *got, const char *want)
{
    if (want == NULL)
        assert_null(got);
    else
        assert_string_equal(got, want);
}

static void cloud_hosts_per_cloud(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(clouds) / sizeof(clouds[0]); i++) {
        const struct cloud_case *c = &clouds[i];

        print_message("cloud %s\n", c->name);
        assert_string_equal(md_cloud_name(c->cloud), c->name);
        assert_string_equal(md_auth_cloud_authority(c->cloud), c->authority);
        assert_same(md_auth_default_api_url(MD_BACKEND_GRAPH, c->cloud),
                    c->graph);
        assert_same(md_auth_default_api_url(MD_BACKEND_DEFENDER, c->cloud),
                    c->defender);
        assert_same(md_auth_portal_url(c->cloud), c->portal);
    }
}

/* Each scope is its API host's root followed by /.default. */
static void scope_is_host_root(void **state)
{
    static const enum md_backend_kind kinds[] = {
        MD_BACKEND_GRAPH, MD_BACKEND_DEFENDER
    };

    (void)state;
    for (size_t i = 0; i < sizeof(clouds) / sizeof(clouds[0]); i++) {
        for (size_t k = 0; k < 2; k++) {
            const char *url = md_auth_default_api_url(kinds[k],
                                                      clouds[i].cloud);
            const char *scope = md_auth_default_scope(kinds[k],
                                                      clouds[i].cloud);
            char want[128];

            if (url == NULL) {
                assert_null(scope);
                continue;
            }
            snprintf(want, sizeof(want), "%s/.default", url);
            assert_string_equal(scope, want);
        }
    }
}

static void cloud_names_parsed(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(clouds) / sizeof(clouds[0]); i++) {
        struct md_config cfg;
        char text[128];

        snprintf(text, sizeof(text), "[auth]\ncloud = %s\n[api]\n"
                 "backend = %s\n", clouds[i].name,
                 clouds[i].cloud == MD_CLOUD_CHINA ? "sentinel" : "graph");
        load_ok(text, &cfg);
        assert_int_equal(cfg.auth.cloud, clouds[i].cloud);
        md_config_free(&cfg);
    }
}

static void gov_cloud_settings_in_effect(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[auth]\ncloud = usgov-high\n[api]\nbackend = graph\n", &cfg);
    assert_string_equal(md_auth_authority(&cfg),
                        "https://login.microsoftonline.us");
    assert_string_equal(md_auth_scope(&cfg),
                        "https://graph.microsoft.us/.default");
    assert_string_equal(md_auth_api_url(&cfg), "https://graph.microsoft.us");
    md_config_free(&cfg);
}

static void overrides_win_in_gov_cloud(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[auth]\ncloud = dod\nauthority_url = https://login.test\n"
            "scope = https://api.test/.default\n[api]\nbackend = defender\n"
            "url = https://api.test\n", &cfg);
    assert_string_equal(md_auth_authority(&cfg), "https://login.test");
    assert_string_equal(md_auth_scope(&cfg), "https://api.test/.default");
    assert_string_equal(md_auth_api_url(&cfg), "https://api.test");
    md_config_free(&cfg);
}

static void china_without_hunting_api_rejected(void **state)
{
    (void)state;
    assert_load_fails("[auth]\ncloud = china\n", ":2:",
                      "cannot be used with [api] backend = graph");
    assert_load_fails("[auth]\ncloud = china\n\n[api]\n"
                      "backend = defender\n", ":5:", "no advanced hunting");
    /* Explicit hosts do not make up for the missing API. */
    assert_load_fails("[auth]\ncloud = china\n"
                      "scope = https://api.test/.default\n[api]\n"
                      "url = https://api.test\n", ":2:", "china");
}

static void unknown_cloud_lists_names(void **state)
{
    (void)state;
    assert_load_fails("[auth]\ncloud = azure\n", ":2:",
                      "public, usgov, usgov-high, dod or china");
}

/* ---- Retries and the budget ---- */

static void retry_and_budget_defaults(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[api]\n", &cfg);
    assert_int_equal(cfg.api.max_retries, 4);
    assert_true(cfg.api.max_retry_time == 300);
    assert_int_equal(cfg.api.max_calls_per_minute, 40);
    assert_int_equal(cfg.api.max_calls_per_hour, 1400);
    assert_false(cfg.store.configured);
    md_config_free(&cfg);
}

static void retry_and_budget_keys_parsed(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[api]\nmax_retries = 0\nmax_retry_time = 90s\n"
            "max_calls_per_minute = 45\nmax_calls_per_hour = 1500\n"
            "[store]\n", &cfg);
    assert_int_equal(cfg.api.max_retries, 0);
    assert_true(cfg.api.max_retry_time == 90);
    assert_int_equal(cfg.api.max_calls_per_minute, 45);
    assert_int_equal(cfg.api.max_calls_per_hour, 1500);
    assert_true(cfg.store.configured);
    md_config_free(&cfg);
}

static void retry_and_budget_bounds(void **state)
{
    (void)state;
    assert_load_fails("[api]\nmax_retries = 21\n", ":2:", "0 to 20");
    assert_load_fails("[api]\nmax_retry_time = 2d\n", ":2:", "0s to 1d");
    assert_load_fails("[api]\nmax_calls_per_minute = 0\n", ":2:",
                      "1 to 1000");
    assert_load_fails("[api]\nmax_calls_per_hour = 30\n", ":2:",
                      "larger than max_calls_per_hour");
}

/* ---- Certificate keys ---- */

static void certificate_keys_parsed(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[auth]\ncertificate_file = /etc/mdhunt/app.pem\n"
            "private_key_file = /etc/mdhunt/app.key\n"
            "passphrase_file = /etc/mdhunt/passphrase\n"
            "assertion_alg = RS256\n", &cfg);
    assert_string_equal(cfg.auth.certificate_file, "/etc/mdhunt/app.pem");
    assert_string_equal(cfg.auth.private_key_file, "/etc/mdhunt/app.key");
    assert_string_equal(cfg.auth.passphrase_file, "/etc/mdhunt/passphrase");
    assert_int_equal(cfg.auth.assertion_alg, MD_ASSERTION_RS256);
    md_config_free(&cfg);

    load_ok("[auth]\n", &cfg);
    assert_int_equal(cfg.auth.assertion_alg, MD_ASSERTION_PS256);
    md_config_free(&cfg);
}

static void certificate_key_checks(void **state)
{
    (void)state;
    assert_load_fails("[auth]\nassertion_alg = ES256\n", ":2:",
                      "PS256 or RS256");
    assert_load_fails("[auth]\nprivate_key_file = /k\n", ":2:",
                      "certificate_file is not");
    assert_load_fails("[auth]\npassphrase_file = /p\n", ":2:",
                      "certificate_file is not");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cloud_hosts_per_cloud),
        cmocka_unit_test(scope_is_host_root),
        cmocka_unit_test(cloud_names_parsed),
        cmocka_unit_test(gov_cloud_settings_in_effect),
        cmocka_unit_test(overrides_win_in_gov_cloud),
        cmocka_unit_test(china_without_hunting_api_rejected),
        cmocka_unit_test(unknown_cloud_lists_names),
        cmocka_unit_test(retry_and_budget_defaults),
        cmocka_unit_test(retry_and_budget_keys_parsed),
        cmocka_unit_test(retry_and_budget_bounds),
        cmocka_unit_test(certificate_keys_parsed),
        cmocka_unit_test(certificate_key_checks),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
