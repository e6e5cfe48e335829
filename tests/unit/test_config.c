/* Tests for the INI configuration: defaults, every key, errors with their
 * line, secrets and permission warnings.  Fixtures are written to a
 * temporary directory. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mdhunt/config.h"
#include "mdhunt/log.h"

#define GUID_A "8f2c1a4e-6b3d-4e5f-9a1b-2c3d4e5f6a7b"
#define GUID_B "11111111-2222-3333-4444-555555555555"

/* Maximum line length, without the line ending, that Debian's inih
 * accepts: its INI_MAX_LINE buffer less room for the newline and NUL. */
#define LINE_LIMIT (INI_MAX_LINE - 2)

static char tmpdir[] = "/tmp/mdhunt-test-config-XXXXXX";

static int make_dir(void **state)
{
    (void)state;
    md_log_set_level(MD_LOG_ERROR);
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_dir(void **state)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char path[512];

    (void)state;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return rmdir(tmpdir);
}

/* Write len bytes to tmpdir/name with mode; path receives the file name. */
static void write_bytes(const char *name, const void *data, size_t len,
                        mode_t mode, char *path, size_t size)
{
    FILE *f;

    snprintf(path, size, "%s/%s", tmpdir, name);
    unlink(path);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

static void write_text(const char *name, const char *text, mode_t mode,
                       char *path, size_t size)
{
    write_bytes(name, text, strlen(text), mode, path, size);
}

static int load_text(const char *text, struct md_config *cfg,
                     struct md_error *err)
{
    char path[512];

    write_text("t.ini", text, 0600, path, sizeof(path));
    return md_config_load(path, cfg, err);
}

static void load_ok(const char *text, struct md_config *cfg)
{
    struct md_error err;

    if (load_text(text, cfg, &err) != 0)
        fail_msg("load failed: %s", err.message);
}

/* Load text, expect a configuration error and return its message. */
static const char *load_fails(const char *text, struct md_error *err)
{
    struct md_config cfg;

    assert_int_equal(load_text(text, &cfg, err), -1);
    assert_int_equal(err->kind, MD_E_CONFIG);
    return err->message;
}

static void assert_contains(const char *text, const char *part)
{
    if (strstr(text, part) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", text, part);
}

static void assert_lacks(const char *text, const char *part)
{
    if (strstr(text, part) != NULL)
        fail_msg("\"%s\" contains \"%s\"", text, part);
}

static void clear_secret_env(void)
{
    unsetenv("MDHUNT_CLIENT_SECRET");
    unsetenv("MDHUNT_SMTP_PASSWORD");
}

/* ---- Defaults and values ---- */

static void defaults_without_file(void **state)
{
    struct md_config cfg;

    (void)state;
    assert_int_equal(md_config_init(&cfg), 0);
    assert_null(cfg.path);
    assert_null(cfg.auth.tenant_id);
    assert_int_equal(cfg.auth.cloud, MD_CLOUD_PUBLIC);
    assert_int_equal(cfg.api.backend, MD_BACKEND_GRAPH);
    assert_null(cfg.api.url);
    assert_int_equal(cfg.api.connect_timeout, 15);
    assert_int_equal(cfg.api.timeout, 200);
    assert_true(cfg.api.max_reply_size == (size_t)256 * 1024 * 1024);
    assert_string_equal(cfg.rules.paths[0], "/etc/mdhunt/rules");
    assert_null(cfg.rules.paths[1]);
    assert_string_equal(cfg.store.path, "/var/lib/mdhunt/mdhunt.db");
    assert_int_equal(cfg.store.keep_runs, 100);
    assert_true(cfg.store.keep_days == 90 * 86400);
    assert_true(cfg.schedule.default_frequency == 3600);
    assert_true(cfg.schedule.jitter == 0);
    assert_true(cfg.report.realert_after == 30 * 86400);
    assert_int_equal(cfg.report.first_run, MD_FIRST_RUN_BASELINE);
    assert_false(cfg.mail.enabled);
    assert_string_equal(cfg.mail.subject_prefix, "[mdhunt]");
    assert_int_equal(cfg.mail.send_when, MD_SEND_NEW);
    assert_true(cfg.mail.digest_every == 3600);
    assert_int_equal(cfg.mail.max_rows_in_body, 200);
    assert_int_equal(cfg.nrule_configs, 0);
    md_config_free(&cfg);
}

static const char full_config[] =
    "[auth]\n"
    "tenant_id = contoso.onmicrosoft.com\n"
    "client_id = " GUID_A "\n"
    "client_secret_file = /etc/mdhunt/secret\n"
    "cloud = public\n"
    "authority_url = https://127.0.0.1:8443\n"
    "scope = https://api.security.microsoft.com/.default\n"
    "[api]\n"
    "backend = defender\n"
    "url = https://[::1]:9443/base\n"
    "ca_file = /tmp/ca.pem\n"
    "connect_timeout = 5\n"
    "timeout = 60\n"
    "proxy = http://proxy:3128\n"
    "max_reply_size = 2G\n"
    "workspace_id = " GUID_B "\n"
    "[rules]\n"
    "path = /a/rules, /b/one.yaml\n"
    "[store]\n"
    "path = /tmp/x.db\n"
    "keep_runs = 7\n"
    "keep_days = 14d\n"
    "[schedule]\n"
    "default_frequency = 15m\n"
    "jitter = 30s\n"
    "[report]\n"
    "realert_after = 7d\n"
    "first_run = report\n"
    "[mail]\n"
    "smtp_url = smtp://mail.example.com:587\n"
    "username = mdhunt\n"
    "password_file = /etc/mdhunt/smtp\n"
    "ca_file = /tmp/mail-ca.pem\n"
    "from = mdhunt@example.com\n"
    "to = soc@example.com, it@example.com\n"
    "cc = boss@example.com\n"
    "subject_prefix = [hunt]\n"
    "send_when = always\n"
    "digest_every = 0s\n"
    "max_rows_in_body = 50\n";

static void load_sets_auth_and_api(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok(full_config, &cfg);
    assert_string_equal(cfg.auth.tenant_id, "contoso.onmicrosoft.com");
    assert_string_equal(cfg.auth.client_id, GUID_A);
    assert_string_equal(cfg.auth.client_secret_file, "/etc/mdhunt/secret");
    assert_false(cfg.auth.client_secret_inline);
    assert_null(cfg.auth.client_secret.value);
    assert_string_equal(cfg.auth.authority_url, "https://127.0.0.1:8443");
    assert_string_equal(cfg.auth.scope,
                        "https://api.security.microsoft.com/.default");
    assert_int_equal(cfg.api.backend, MD_BACKEND_DEFENDER);
    assert_string_equal(cfg.api.url, "https://[::1]:9443/base");
    assert_string_equal(cfg.api.ca_file, "/tmp/ca.pem");
    assert_int_equal(cfg.api.connect_timeout, 5);
    assert_int_equal(cfg.api.timeout, 60);
    assert_string_equal(cfg.api.proxy, "http://proxy:3128");
    assert_true(cfg.api.max_reply_size == (size_t)2 << 30);
    assert_string_equal(cfg.api.workspace_id, GUID_B);
    md_config_free(&cfg);
}

static void load_sets_other_sections(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok(full_config, &cfg);
    assert_string_equal(cfg.rules.paths[0], "/a/rules");
    assert_string_equal(cfg.rules.paths[1], "/b/one.yaml");
    assert_null(cfg.rules.paths[2]);
    assert_string_equal(cfg.store.path, "/tmp/x.db");
    assert_int_equal(cfg.store.keep_runs, 7);
    assert_true(cfg.store.keep_days == 14 * 86400);
    assert_true(cfg.schedule.default_frequency == 900);
    assert_true(cfg.schedule.jitter == 30);
    assert_true(cfg.report.realert_after == 7 * 86400);
    assert_int_equal(cfg.report.first_run, MD_FIRST_RUN_REPORT);
    md_config_free(&cfg);
}

static void load_sets_mail(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok(full_config, &cfg);
    assert_true(cfg.mail.enabled);
    assert_string_equal(cfg.mail.smtp_url, "smtp://mail.example.com:587");
    assert_string_equal(cfg.mail.username, "mdhunt");
    assert_string_equal(cfg.mail.password_file, "/etc/mdhunt/smtp");
    assert_string_equal(cfg.mail.ca_file, "/tmp/mail-ca.pem");
    assert_string_equal(cfg.mail.from, "mdhunt@example.com");
    assert_string_equal(cfg.mail.to[0], "soc@example.com");
    assert_string_equal(cfg.mail.to[1], "it@example.com");
    assert_null(cfg.mail.to[2]);
    assert_string_equal(cfg.mail.cc[0], "boss@example.com");
    assert_null(cfg.mail.cc[1]);
    assert_string_equal(cfg.mail.subject_prefix, "[hunt]");
    assert_int_equal(cfg.mail.send_when, MD_SEND_ALWAYS);
    assert_true(cfg.mail.digest_every == 0);
    assert_int_equal(cfg.mail.max_rows_in_body, 50);
    md_config_free(&cfg);
}

static void load_keeps_path(void **state)
{
    struct md_config cfg;
    char path[512];
    struct md_error err;

    (void)state;
    write_text("path.ini", "[api]\n", 0600, path, sizeof(path));
    assert_int_equal(md_config_load(path, &cfg, &err), 0);
    assert_string_equal(cfg.path, path);
    md_config_free(&cfg);
}

static void size_suffixes(void **state)
{
    static const struct {
        const char *text;
        size_t bytes;
    } cases[] = {
        { "1048576", 1048576 },
        { "1024k", 1048576 },
        { "1024K", 1048576 },
        { "3M", 3 * 1048576 },
        { "1g", 1073741824 },
    };
    struct md_config cfg;
    char text[128];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text), "[api]\nmax_reply_size = %s\n",
                 cases[i].text);
        load_ok(text, &cfg);
        assert_true(cfg.api.max_reply_size == cases[i].bytes);
        md_config_free(&cfg);
    }
}

static void accepted_values(void **state)
{
    static const char *const lines[] = {
        "[auth]\ntenant_id = " GUID_A "\n",
        "[auth]\ntenant_id = CONTOSO.onmicrosoft.com\n",
        "[auth]\ntenant_id = fabrikam.com\n",
        "[auth]\nclient_id = 8F2C1A4E-6B3D-4E5F-9A1B-2C3D4E5F6A7B\n",
        "[auth]\nauthority_url = HTTPS://login.example.com/\n",
        "[api]\nurl = https://host:1/\n",
        "[api]\nurl = https://host:65535\n",
        "[api]\nbackend = sentinel\n",
        "[mail]\nsmtp_url = smtps://h\nfrom = a@b.c\nto = d@e.f\n",
        "[schedule]\ndefault_frequency = 5m\n",
        "[schedule]\ndefault_frequency = 01:00:00\n",
        "[schedule]\njitter = 1h\n",
        "[store]\nkeep_runs = 1000000\n",
    };
    struct md_config cfg;

    (void)state;
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        load_ok(lines[i], &cfg);
        md_config_free(&cfg);
    }
}

/* ---- Errors and their line ---- */

struct bad_case {
    const char *line5;
    const char *line6;
    const char *line7;
    const char *expect;
};

static const struct bad_case bad_cases[] = {
    { "", "[api]", "timeout = abc", "whole number of seconds from 1" },
    { "", "[api]", "timeout = 3601", "from 1 to 3600" },
    { "", "[api]", "connect_timeout = -1", "from 1 to 600" },
    { "", "[api]", "timeout = 10s", "[api] timeout \"10s\"" },
    { "", "[api]", "backend = foo", "graph, defender or sentinel" },
    { "", "[api]", "max_reply_size = 12X", "K, M or G" },
    { "", "[api]", "max_reply_size = 1023K", "at least 1M" },
    { "", "[api]", "max_reply_size = 99999999999999999999",
      "at least 1M" },
    { "", "[api]", "url = http://example.com", "https:// URL" },
    { "", "[api]", "url = https://", "https:// URL" },
    { "", "[api]", "url = https://:80/", "https:// URL" },
    { "", "[api]", "url = https://host:0", "port" },
    { "", "[api]", "url = https://host:99999", "port" },
    { "", "[api]", "url = https://user:pw@host", "user name or password" },
    { "", "[api]", "workspace_id = 1234", "GUID" },
    { "", "[api]", "default_timespan = 30d", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = P1M", "P365D" },
    { "", "[api]", "default_timespan = P1Y", "P365D" },
    { "", "[api]", "default_timespan = P0DT0H", "longer than zero" },
    { "", "[api]", "default_timespan = P", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = PT", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = P5DT", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = PT1D", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = P1H", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = PT1S2M", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = P1W2D", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = p7d", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = PT1.S", "ISO 8601 duration" },
    { "", "[api]", "default_timespan = P1234567890D",
      "ISO 8601 duration" },
    { "", "[api]", "colour = red", "unknown key 'colour' in [api]" },
    { "", "[api]", "timeout =", "empty" },
    { "", "[store]", "keep_days = 90", "lower case" },
    { "", "[store]", "keep_days = 1H", "lower case" },
    { "", "[store]", "keep_days = 12h", "at least 1d" },
    { "", "[store]", "keep_runs = 0", "from 1 to 1000000" },
    { "", "[schedule]", "default_frequency = 4m", "at least 5m" },
    { "", "[schedule]", "jitter = 2h", "from 0s to 1h" },
    { "", "[report]", "first_run = all", "baseline or report" },
    { "", "[auth]", "tenant_id = common", "client credentials" },
    { "", "[auth]", "tenant_id = organizations", "client credentials" },
    { "", "[auth]", "tenant_id = Consumers", "client credentials" },
    { "", "[auth]", "tenant_id = contoso", "verified domain" },
    { "", "[auth]", "tenant_id = -bad.example.com", "verified domain" },
    { "", "[auth]", "client_id = not-a-guid", "GUID" },
    { "", "[auth]", "client_id = " GUID_A "0", "GUID" },
    { "", "[auth]", "cloud = azure", "expected public" },
    { "", "[auth]", "authority_url = login.example.com", "https://" },
    { "[mail]", "smtp_url = smtps://h", "from = not an address",
      "mail address" },
    { "[mail]", "smtp_url = smtps://h", "to = a@b.c,,d@e.f", "empty" },
    { "[mail]", "from = a@b.c", "smtp_url = https://h",
      "smtp://HOST[:PORT]" },
    { "[mail]", "from = a@b.c", "send_when = sometimes",
      "new, always or never" },
    { "", "[rule \"r1\"]", "key = Device Id", "column name" },
    { "", "[rule \"r1\"]", "track = a,b", "column name" },
    { "", "[rule \"r1\"]", "colour = red", "unknown key 'colour'" },
    { "", ";", "[colour]", "unknown section [colour]" },
    { "", ";", "[ auth ]", "unknown section [ auth ]" },
    { "", ";", "[auth] x", "after ']'" },
    { "", ";", "[auth", "closing ']'" },
    { "", ";", "[rule abc]", "double quotes" },
    { "", ";", "[rule \"\"]", "1 to" },
    { "", ";", "[rule \"a\" b]", "double quotes" },
    { "", ";", "[rule \"a]", "double quotes" },
    { "", ";", "timeout = 5", "before any [section]" },
    { "", "[api]", "just words", "expected KEY = VALUE" },
    { "[api]", "timeout = 5", "timeout = 6",
      "duplicate key [api] timeout (first set on line 6)" },
    { "[api]", "[store]", "[api]", "duplicate section [api]" },
    { "[rule \"A\"]", "[api]", "[rule \"a\"]", "duplicate section" },
};

static void bad_value_names_line(void **state)
{
    char text[512];
    struct md_error err;
    const char *msg;

    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];

        snprintf(text, sizeof(text), "; line 1\n\n# line 3\n;\n%s\n%s\n%s\n"
                 "; line 8\n", c->line5, c->line6, c->line7);
        msg = load_fails(text, &err);
        assert_contains(msg, "t.ini:7: ");
        assert_contains(msg, c->expect);
    }
}

static void default_timespan_forms_accepted(void **state)
{
    static const char *const forms[] = {
        "P7D", "PT12H", "P1DT6H30M", "PT90M", "PT0.5S", "P2W", "P0DT1S",
    };
    char text[128];

    (void)state;
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        struct md_config cfg;

        print_message("%s\n", forms[i]);
        snprintf(text, sizeof(text), "[api]\ndefault_timespan = %s\n",
                 forms[i]);
        load_ok(text, &cfg);
        assert_string_equal(cfg.api.default_timespan, forms[i]);
        md_config_free(&cfg);
    }
}

static void default_timespan_is_p30d(void **state)
{
    struct md_config cfg;

    (void)state;
    assert_int_equal(md_config_init(&cfg), 0);
    assert_string_equal(cfg.api.default_timespan, "P30D");
    md_config_free(&cfg);
}

static void long_line_rejected(void **state)
{
    char text[INI_MAX_LINE * 2];
    char expect[64];
    struct md_error err;
    int n;

    (void)state;
    n = snprintf(text, sizeof(text), "[auth]\n;\n;\n;\n;\n;\nscope = ");
    memset(text + n, 'a', LINE_LIMIT + 1 - 8);
    strcpy(text + n + LINE_LIMIT + 1 - 8, "\n");
    snprintf(expect, sizeof(expect), "t.ini:7: line longer than %d bytes",
             LINE_LIMIT);
    assert_contains(load_fails(text, &err), expect);
}

static void longest_line_accepted(void **state)
{
    char text[INI_MAX_LINE * 2];
    struct md_config cfg;
    int n;

    (void)state;
    n = snprintf(text, sizeof(text), "[auth]\nscope = ");
    memset(text + n, 'a', LINE_LIMIT - 8);
    strcpy(text + n + LINE_LIMIT - 8, "\r\n[api]\ntimeout = 9\n");
    load_ok(text, &cfg);
    assert_int_equal(strlen(cfg.auth.scope), LINE_LIMIT - 8);
    assert_int_equal(cfg.api.timeout, 9);
    md_config_free(&cfg);
}

/* The part of a long line that does not fit must not be read as a line
 * of its own. */
static void long_line_tail_ignored(void **state)
{
    char text[INI_MAX_LINE * 3];
    struct md_error err;
    int n;

    (void)state;
    n = snprintf(text, sizeof(text), "[auth]\nscope = ");
    memset(text + n, 'a', INI_MAX_LINE + 20);
    strcpy(text + n + INI_MAX_LINE + 20, "\n[api]\ntimeout = 9\n");
    assert_lacks(load_fails(text, &err), "more error");
}

static void nul_byte_rejected(void **state)
{
    static const char text[] = "[api]\ntimeout = 1\0 0\n";
    char path[512];
    struct md_config cfg;
    struct md_error err;

    (void)state;
    write_bytes("nul.ini", text, sizeof(text) - 1, 0600, path, sizeof(path));
    assert_int_equal(md_config_load(path, &cfg, &err), -1);
    assert_contains(err.message, "nul.ini:2: ");
    assert_contains(err.message, "NUL byte");
}

static void missing_mail_keys_rejected(void **state)
{
    struct md_error err;
    const char *msg;

    (void)state;
    msg = load_fails("[api]\n\n[mail]\nfrom = a@b.c\n", &err);
    assert_contains(msg, "t.ini:3: [mail] has no smtp_url");
    assert_contains(msg, "(1 more error logged above)");
}

static void empty_mail_section_rejected(void **state)
{
    struct md_error err;

    (void)state;
    assert_contains(load_fails("[mail]\n", &err), "[mail] has no smtp_url");
}

static void first_of_many_errors_returned(void **state)
{
    struct md_error err;
    const char *msg;

    (void)state;
    msg = load_fails("[api]\ntimeout = x\nbackend = y\n[nope]\n", &err);
    assert_contains(msg, "t.ini:2: ");
    assert_contains(msg, "(2 more errors logged above)");
}

static void both_client_secrets_rejected(void **state)
{
    struct md_error err;

    (void)state;
    assert_contains(load_fails("[auth]\nclient_secret_file = /x\n"
                               "client_secret = abc\n", &err),
                    "t.ini:3: [auth] has both");
}

static void password_file_needs_username(void **state)
{
    struct md_error err;

    (void)state;
    assert_contains(load_fails("[mail]\nsmtp_url = smtp://h\nfrom = a@b.c\n"
                               "to = d@e.f\npassword_file = /x\n", &err),
                    "t.ini:5: [mail] password_file is set but username");
}

static void secret_value_not_shown(void **state)
{
    struct md_error err;

    (void)state;
    assert_lacks(load_fails("[auth]\nclient_secret = hunter2\x01\n", &err),
                 "hunter2");
}

static void bad_proxy_url_not_shown(void **state)
{
    struct md_error err;
    const char *message;

    (void)state;
    message = load_fails("[api]\nproxy = http://user:pa/ss@127.0.0.1:3128\n",
                         &err);
    assert_contains(message, "t.ini:2:");
    assert_contains(message, "[api] proxy");
    assert_lacks(message, "pa/ss");
}

static void missing_file_names_path(void **state)
{
    struct md_config cfg;
    struct md_error err;
    char path[512];

    (void)state;
    snprintf(path, sizeof(path), "%s/absent.ini", tmpdir);
    assert_int_equal(md_config_load(path, &cfg, &err), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_contains(err.message, path);
    assert_contains(err.message, strerror(ENOENT));
}

static void directory_rejected(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    assert_int_equal(md_config_load(tmpdir, &cfg, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_contains(err.message, "is a directory");
}

/* ---- File syntax ---- */

static void comments_and_blank_lines(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("; comment\n# comment\n\n   \n[api] ; trailing comment\n"
            "  ; indented comment\n"
            "timeout = 42 ; inline comment\n\n# end\n", &cfg);
    assert_int_equal(cfg.api.timeout, 42);
    md_config_free(&cfg);
}

static void crlf_line_endings(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("; comment\r\n[api]\r\nbackend = defender\r\n"
            "[store]\r\npath = /tmp/db\r\n", &cfg);
    assert_int_equal(cfg.api.backend, MD_BACKEND_DEFENDER);
    assert_string_equal(cfg.store.path, "/tmp/db");
    md_config_free(&cfg);
}

static void byte_order_mark(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("\xEF\xBB\xBF[api]\ntimeout = 7\n", &cfg);
    assert_int_equal(cfg.api.timeout, 7);
    md_config_free(&cfg);
}

static void byte_order_mark_line_counted(void **state)
{
    struct md_error err;

    (void)state;
    assert_contains(load_fails("\xEF\xBB\xBF; x\n[api]\ntimeout = q\n", &err),
                    "t.ini:3: ");
}

static void missing_final_newline(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[api]\ntimeout = 8", &cfg);
    assert_int_equal(cfg.api.timeout, 8);
    md_config_free(&cfg);
}

/* inih would join an indented line to the previous value. */
static void indented_keys_stay_separate(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[api]\n    timeout = 9\n    connect_timeout = 3\n", &cfg);
    assert_int_equal(cfg.api.timeout, 9);
    assert_int_equal(cfg.api.connect_timeout, 3);
    md_config_free(&cfg);
}

static void quotes_removed(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[mail]\nsmtp_url = smtp://h\nfrom = a@b.c\nto = d@e.f\n"
            "subject_prefix = \" [x] \"\n", &cfg);
    assert_string_equal(cfg.mail.subject_prefix, " [x] ");
    md_config_free(&cfg);
}

static void list_items_trimmed(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[rules]\npath =  /a ,/b,\t/c d \n", &cfg);
    assert_string_equal(cfg.rules.paths[0], "/a");
    assert_string_equal(cfg.rules.paths[1], "/b");
    assert_string_equal(cfg.rules.paths[2], "/c d");
    assert_null(cfg.rules.paths[3]);
    md_config_free(&cfg);
}

/* Every "key = value" line of the example, uncommented, must load, except
 * client_secret, which conflicts with client_secret_file. */
static void example_loads_uncommented(void **state)
{
    FILE *in = fopen("config/mdhunt.ini.example", "r");
    char line[512];
    char text[16384] = "";
    struct md_config cfg;
    size_t n = 0;

    (void)state;
    assert_non_null(in);
    while (fgets(line, sizeof(line), in) != NULL) {
        const char *out = line;

        if ((line[0] == ';' && line[1] == '[') ||
            (line[0] == ';' && line[1] >= 'a' && line[1] <= 'z' &&
             strstr(line, " = ") != NULL &&
             strncmp(line, ";client_secret =", 16) != 0))
            out = line + 1;
        n += (size_t)snprintf(text + n, sizeof(text) - n, "%s", out);
        assert_true(n < sizeof(text));
    }
    fclose(in);
    load_ok(text, &cfg);
    assert_true(cfg.mail.enabled);
    assert_int_equal(cfg.nrule_configs, 1);
    assert_int_equal(cfg.api.timeout, 200);
    assert_true(cfg.store.keep_days == 90 * 86400);
    md_config_free(&cfg);
}

/* ---- Rule sections ---- */

static void rule_sections_parsed(void **state)
{
    struct md_config cfg;
    const struct md_rule_config *rc;

    (void)state;
    load_ok("[api]\n[rule \"" GUID_A "\"]\nkey = DeviceId, DeviceName\n"
            "track = AccountName\n\n[rule \"Odd file name\"]\n"
            "key = DeviceId\n", &cfg);
    assert_int_equal(cfg.nrule_configs, 2);
    rc = md_config_rule(&cfg, GUID_A);
    assert_non_null(rc);
    assert_int_equal(rc->line, 2);
    assert_string_equal(rc->key_columns[0], "DeviceId");
    assert_string_equal(rc->key_columns[1], "DeviceName");
    assert_null(rc->key_columns[2]);
    assert_string_equal(rc->track_column, "AccountName");
    rc = md_config_rule(&cfg, "Odd file name");
    assert_non_null(rc);
    assert_null(rc->track_column);
    md_config_free(&cfg);
}

static void rule_lookup_ignores_case(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[rule \"ab-CD\"]\nkey = DeviceId\n", &cfg);
    assert_non_null(md_config_rule(&cfg, "AB-cd"));
    assert_null(md_config_rule(&cfg, "ab-cd-e"));
    md_config_free(&cfg);
}

static void rule_key_set_again_in_other_rule(void **state)
{
    struct md_config cfg;

    (void)state;
    load_ok("[rule \"a\"]\nkey = A\n[rule \"b\"]\nkey = B\n", &cfg);
    assert_string_equal(md_config_rule(&cfg, "b")->key_columns[0], "B");
    md_config_free(&cfg);
}

/* ---- Secrets ---- */

static void config_with(const char *auth_extra, struct md_config *cfg)
{
    char text[1024];

    snprintf(text, sizeof(text), "[auth]\ntenant_id = " GUID_A "\n"
             "client_id = " GUID_B "\n%s", auth_extra);
    load_ok(text, cfg);
}

static void secret_from_file(const char *content, size_t len,
                             struct md_config *cfg, struct md_error *err)
{
    char path[512];
    char line[600];

    write_bytes("secret", content, len, 0600, path, sizeof(path));
    snprintf(line, sizeof(line), "client_secret_file = %s\n", path);
    config_with(line, cfg);
    assert_int_equal(md_config_require_auth(cfg, err), 0);
}

static void secret_file_strips_newline(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    clear_secret_env();
    secret_from_file("s3cret\n", 7, &cfg, &err);
    assert_string_equal(cfg.auth.client_secret.value, "s3cret");
    assert_int_equal(cfg.auth.client_secret.len, 6);
    md_config_free(&cfg);
}

static void secret_file_strips_crlf(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    secret_from_file("s3cret\r\n", 8, &cfg, &err);
    assert_string_equal(cfg.auth.client_secret.value, "s3cret");
    md_config_free(&cfg);
}

static void secret_file_strips_one_newline(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    secret_from_file("s3cret\n\n", 8, &cfg, &err);
    assert_string_equal(cfg.auth.client_secret.value, "s3cret\n");
    md_config_free(&cfg);
}

static void secret_file_without_newline(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    secret_from_file("s3cret", 6, &cfg, &err);
    assert_string_equal(cfg.auth.client_secret.value, "s3cret");
    md_config_free(&cfg);
}

static void secret_file_beats_env(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    setenv("MDHUNT_CLIENT_SECRET", "from-env", 1);
    secret_from_file("from-file\n", 10, &cfg, &err);
    clear_secret_env();
    assert_string_equal(cfg.auth.client_secret.value, "from-file");
    md_config_free(&cfg);
}

static int require_auth_with_file(const char *content, size_t len,
                                  struct md_error *err)
{
    struct md_config cfg;
    char path[512];
    char line[600];
    int rc;

    write_bytes("secret", content, len, 0600, path, sizeof(path));
    snprintf(line, sizeof(line), "client_secret_file = %s\n", path);
    config_with(line, &cfg);
    rc = md_config_require_auth(&cfg, err);
    md_config_free(&cfg);
    return rc;
}

static void secret_file_empty_rejected(void **state)
{
    struct md_error err;

    (void)state;
    assert_int_equal(require_auth_with_file("\n", 1, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_contains(err.message, "/secret: [auth] client_secret_file is "
                    "empty");
}

static void secret_file_too_large_rejected(void **state)
{
    static char big[5000];
    struct md_error err;

    (void)state;
    memset(big, 'x', sizeof(big));
    assert_int_equal(require_auth_with_file(big, sizeof(big), &err), -1);
    assert_contains(err.message, "larger than");
    assert_lacks(err.message, "xxxx");
}

static void secret_file_missing_names_path(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    config_with("client_secret_file = /nonexistent/mdhunt-secret\n", &cfg);
    assert_int_equal(md_config_require_auth(&cfg, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_contains(err.message, "/nonexistent/mdhunt-secret");
    assert_contains(err.message, strerror(ENOENT));
    md_config_free(&cfg);
}

static void secret_from_env(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    setenv("MDHUNT_CLIENT_SECRET", "env-secret", 1);
    config_with("", &cfg);
    assert_int_equal(md_config_require_auth(&cfg, &err), 0);
    clear_secret_env();
    assert_string_equal(cfg.auth.client_secret.value, "env-secret");
    md_config_free(&cfg);
}

static void inline_secret_warns(void **state)
{
    struct md_config cfg;
    struct md_error err;
    unsigned long before;

    (void)state;
    clear_secret_env();
    config_with("client_secret = inline-secret\n", &cfg);
    assert_true(cfg.auth.client_secret_inline);
    before = md_log_warning_count();
    assert_int_equal(md_config_require_auth(&cfg, &err), 0);
    assert_int_equal(md_log_warning_count(), before + 1);
    assert_string_equal(cfg.auth.client_secret.value, "inline-secret");
    md_config_free(&cfg);
}

static void no_secret_rejected(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    clear_secret_env();
    config_with("", &cfg);
    assert_int_equal(md_config_require_auth(&cfg, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_contains(err.message, "MDHUNT_CLIENT_SECRET");
    md_config_free(&cfg);
}

static void missing_tenant_rejected(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    load_ok("[auth]\nclient_id = " GUID_A "\nclient_secret = x\n", &cfg);
    assert_int_equal(md_config_require_auth(&cfg, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_contains(err.message, "t.ini: [auth] tenant_id is missing");
    md_config_free(&cfg);
}

static void missing_client_id_rejected(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    load_ok("[auth]\ntenant_id = " GUID_A "\n", &cfg);
    assert_int_equal(md_config_require_auth(&cfg, &err), -1);
    assert_contains(err.message, "[auth] client_id is missing");
    md_config_free(&cfg);
}

static void defaults_need_auth(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    assert_int_equal(md_config_init(&cfg), 0);
    assert_int_equal(md_config_require_auth(&cfg, &err), -1);
    assert_contains(err.message, "[auth] tenant_id");
    md_config_free(&cfg);
}

static const char mail_base[] =
    "[mail]\nsmtp_url = smtps://h\nfrom = a@b.c\nto = d@e.f\n";

static void mail_without_username(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    setenv("MDHUNT_SMTP_PASSWORD", "unused", 1);
    load_ok(mail_base, &cfg);
    assert_int_equal(md_config_require_mail(&cfg, &err), 0);
    clear_secret_env();
    assert_null(cfg.mail.password.value);
    md_config_free(&cfg);
}

static void mail_password_from_env(void **state)
{
    struct md_config cfg;
    struct md_error err;
    char text[256];

    (void)state;
    setenv("MDHUNT_SMTP_PASSWORD", "pw", 1);
    snprintf(text, sizeof(text), "%susername = u\n", mail_base);
    load_ok(text, &cfg);
    assert_int_equal(md_config_require_mail(&cfg, &err), 0);
    clear_secret_env();
    assert_string_equal(cfg.mail.password.value, "pw");
    md_config_free(&cfg);
}

static void mail_password_from_file(void **state)
{
    struct md_config cfg;
    struct md_error err;
    char path[512];
    char text[1024];

    (void)state;
    write_text("smtp", "pw-file\n", 0600, path, sizeof(path));
    snprintf(text, sizeof(text), "%susername = u\npassword_file = %s\n",
             mail_base, path);
    load_ok(text, &cfg);
    assert_int_equal(md_config_require_mail(&cfg, &err), 0);
    assert_string_equal(cfg.mail.password.value, "pw-file");
    md_config_free(&cfg);
}

static void mail_password_missing(void **state)
{
    struct md_config cfg;
    struct md_error err;
    char text[256];

    (void)state;
    clear_secret_env();
    snprintf(text, sizeof(text), "%susername = u\n", mail_base);
    load_ok(text, &cfg);
    assert_int_equal(md_config_require_mail(&cfg, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_contains(err.message, "MDHUNT_SMTP_PASSWORD");
    md_config_free(&cfg);
}

static void mail_not_configured(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    load_ok("[api]\n", &cfg);
    assert_int_equal(md_config_require_mail(&cfg, &err), -1);
    assert_contains(err.message, "no [mail] section");
    md_config_free(&cfg);
}

/* ---- Permission warnings ---- */

static unsigned long warnings_loading(const char *text, mode_t mode)
{
    struct md_config cfg;
    struct md_error err;
    char path[512];
    unsigned long before;

    write_text("perm.ini", text, mode, path, sizeof(path));
    before = md_log_warning_count();
    assert_int_equal(md_config_load(path, &cfg, &err), 0);
    md_config_free(&cfg);
    return md_log_warning_count() - before;
}

static void readable_secret_config_warns(void **state)
{
    (void)state;
    assert_int_equal(warnings_loading("[auth]\nclient_secret = x\n", 0640),
                     1);
    assert_int_equal(warnings_loading("[auth]\nclient_secret = x\n", 0604),
                     1);
}

static void private_secret_config_quiet(void **state)
{
    (void)state;
    assert_int_equal(warnings_loading("[auth]\nclient_secret = x\n", 0600),
                     0);
}

static void readable_config_without_secret_quiet(void **state)
{
    (void)state;
    assert_int_equal(warnings_loading("[api]\ntimeout = 5\n", 0644), 0);
}

static unsigned long warnings_reading_secret(mode_t mode)
{
    struct md_config cfg;
    struct md_error err;
    char path[512];
    char line[600];
    unsigned long before;

    clear_secret_env();
    write_text("secret", "abc\n", mode, path, sizeof(path));
    snprintf(line, sizeof(line), "client_secret_file = %s\n", path);
    config_with(line, &cfg);
    before = md_log_warning_count();
    assert_int_equal(md_config_require_auth(&cfg, &err), 0);
    md_config_free(&cfg);
    return md_log_warning_count() - before;
}

static void secret_file_readable_by_others_warns(void **state)
{
    (void)state;
    assert_int_equal(warnings_reading_secret(0604), 1);
}

static void secret_file_readable_by_group_quiet(void **state)
{
    (void)state;
    assert_int_equal(warnings_reading_secret(0640), 0);
}

static void backend_names(void **state)
{
    (void)state;
    assert_string_equal(md_backend_kind_name(MD_BACKEND_GRAPH), "graph");
    assert_string_equal(md_backend_kind_name(MD_BACKEND_DEFENDER),
                        "defender");
    assert_string_equal(md_backend_kind_name(MD_BACKEND_SENTINEL),
                        "sentinel");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_without_file),
        cmocka_unit_test(load_sets_auth_and_api),
        cmocka_unit_test(load_sets_other_sections),
        cmocka_unit_test(load_sets_mail),
        cmocka_unit_test(load_keeps_path),
        cmocka_unit_test(size_suffixes),
        cmocka_unit_test(accepted_values),
        cmocka_unit_test(bad_value_names_line),
        cmocka_unit_test(default_timespan_forms_accepted),
        cmocka_unit_test(default_timespan_is_p30d),
        cmocka_unit_test(long_line_rejected),
        cmocka_unit_test(longest_line_accepted),
        cmocka_unit_test(long_line_tail_ignored),
        cmocka_unit_test(nul_byte_rejected),
        cmocka_unit_test(missing_mail_keys_rejected),
        cmocka_unit_test(empty_mail_section_rejected),
        cmocka_unit_test(first_of_many_errors_returned),
        cmocka_unit_test(both_client_secrets_rejected),
        cmocka_unit_test(password_file_needs_username),
        cmocka_unit_test(secret_value_not_shown),
        cmocka_unit_test(bad_proxy_url_not_shown),
        cmocka_unit_test(missing_file_names_path),
        cmocka_unit_test(directory_rejected),
        cmocka_unit_test(comments_and_blank_lines),
        cmocka_unit_test(crlf_line_endings),
        cmocka_unit_test(byte_order_mark),
        cmocka_unit_test(byte_order_mark_line_counted),
        cmocka_unit_test(missing_final_newline),
        cmocka_unit_test(indented_keys_stay_separate),
        cmocka_unit_test(quotes_removed),
        cmocka_unit_test(list_items_trimmed),
        cmocka_unit_test(example_loads_uncommented),
        cmocka_unit_test(rule_sections_parsed),
        cmocka_unit_test(rule_lookup_ignores_case),
        cmocka_unit_test(rule_key_set_again_in_other_rule),
        cmocka_unit_test(secret_file_strips_newline),
        cmocka_unit_test(secret_file_strips_crlf),
        cmocka_unit_test(secret_file_strips_one_newline),
        cmocka_unit_test(secret_file_without_newline),
        cmocka_unit_test(secret_file_beats_env),
        cmocka_unit_test(secret_file_empty_rejected),
        cmocka_unit_test(secret_file_too_large_rejected),
        cmocka_unit_test(secret_file_missing_names_path),
        cmocka_unit_test(secret_from_env),
        cmocka_unit_test(inline_secret_warns),
        cmocka_unit_test(no_secret_rejected),
        cmocka_unit_test(missing_tenant_rejected),
        cmocka_unit_test(missing_client_id_rejected),
        cmocka_unit_test(defaults_need_auth),
        cmocka_unit_test(mail_without_username),
        cmocka_unit_test(mail_password_from_env),
        cmocka_unit_test(mail_password_from_file),
        cmocka_unit_test(mail_password_missing),
        cmocka_unit_test(mail_not_configured),
        cmocka_unit_test(readable_secret_config_warns),
        cmocka_unit_test(private_secret_config_quiet),
        cmocka_unit_test(readable_config_without_secret_quiet),
        cmocka_unit_test(secret_file_readable_by_others_warns),
        cmocka_unit_test(secret_file_readable_by_group_quiet),
        cmocka_unit_test(backend_names),
    };

    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
