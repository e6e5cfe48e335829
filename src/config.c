/*
 * The INI configuration: one table of keys drives defaults, parsing,
 * validation and freeing.
 *
 * inih parses the file, but through ini_parse_stream() with our own line
 * reader, for three reasons.  Debian's libinih is built without line
 * numbers in the handler, so the reader counts lines.  inih cuts a line
 * longer than its buffer, passes the cut value on and parses the rest as
 * a line of its own, so the reader rejects such a line itself.  And inih
 * joins an indented line to the previous value (multi-line values), so
 * the reader removes leading blanks and an indented "key = value" stays
 * a key of its own.
 */
#include "mdhunt/config.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Errors after the first are logged, up to this many. */
#define MAX_LOGGED_ERRORS 20

/* A secret file larger than this is rejected as not a secret file (Entra
 * ID client secrets are about 40 characters). */
#define MAX_SECRET_FILE 4096

/* A PEM file with an RSA key of 16384 bits and a certificate chain fits
 * easily. */
#define MAX_KEY_FILE 65536

#define MAX_RULE_ID 256

enum section_id {
    SEC_AUTH,
    SEC_API,
    SEC_RULES,
    SEC_STORE,
    SEC_SCHEDULE,
    SEC_REPORT,
    SEC_MAIL,
    SEC_FIXED_COUNT,
    SEC_RULE = SEC_FIXED_COUNT,  /* [rule "ID"]: fields of md_rule_config */
    SEC_NONE                     /* before the first header */
};

static const char *const section_names[SEC_FIXED_COUNT] = {
    [SEC_AUTH] = "auth",
    [SEC_API] = "api",
    [SEC_RULES] = "rules",
    [SEC_STORE] = "store",
    [SEC_SCHEDULE] = "schedule",
    [SEC_REPORT] = "report",
    [SEC_MAIL] = "mail",
};

/* Value types and the C type of the field each one fills. */
enum key_type {
    T_STRING,       /* char * */
    T_PATH,         /* char * */
    T_INT,          /* long, within min..max */
    T_SIZE,         /* size_t: bytes with an optional K, M or G suffix */
    T_DURATION,     /* int64_t seconds, md_duration_parse() */
    T_ENUM,         /* an enum, stored as int */
    T_LIST,         /* char **, NULL-terminated, from "a, b, c" */
    T_SECRET        /* struct md_secret */
};

#define F_REQUIRED 1u   /* required when its section is present */
#define F_SECRET 2u     /* never quote the value in a message */

struct enum_name {
    const char *name;
    int value;
};

/* Checks the shape of a string value (of each item, for a list); on
 * failure writes the accepted form into hint. */
typedef int (*check_fn)(const char *value, char *hint, size_t size);

struct key_spec {
    enum section_id section;
    const char *name;
    enum key_type type;
    const char *def;        /* default, as it would be written in the file */
    int64_t min;            /* bounds for T_INT, T_SIZE and T_DURATION */
    int64_t max;
    const char *unit;       /* unit of a T_INT, for messages */
    const struct enum_name *names;  /* T_ENUM: NULL-terminated */
    check_fn check;
    size_t offset;          /* in struct md_config, or md_rule_config */
    unsigned flags;
    const char *help;
};

_Static_assert(sizeof(enum md_backend_kind) == sizeof(int) &&
               sizeof(enum md_cloud) == sizeof(int) &&
               sizeof(enum md_assertion_alg) == sizeof(int) &&
               sizeof(enum md_first_run) == sizeof(int) &&
               sizeof(enum md_send_when) == sizeof(int),
               "T_ENUM fields are written as int");

static const struct enum_name backend_names[] = {
    { "graph", MD_BACKEND_GRAPH },
    { "defender", MD_BACKEND_DEFENDER },
    { "sentinel", MD_BACKEND_SENTINEL },
    { NULL, 0 }
};

static const struct enum_name cloud_names[] = {
    { "public", MD_CLOUD_PUBLIC },
    { "usgov", MD_CLOUD_USGOV },
    { "usgov-high", MD_CLOUD_USGOV_HIGH },
    { "dod", MD_CLOUD_DOD },
    { "china", MD_CLOUD_CHINA },
    { NULL, 0 }
};

static const struct enum_name assertion_alg_names[] = {
    { "PS256", MD_ASSERTION_PS256 },
    { "RS256", MD_ASSERTION_RS256 },
    { NULL, 0 }
};

static const struct enum_name first_run_names[] = {
    { "baseline", MD_FIRST_RUN_BASELINE },
    { "report", MD_FIRST_RUN_REPORT },
    { NULL, 0 }
};

static const struct enum_name send_when_names[] = {
    { "new", MD_SEND_NEW },
    { "always", MD_SEND_ALWAYS },
    { "never", MD_SEND_NEVER },
    { NULL, 0 }
};

static int check_text(const char *value, char *hint, size_t size);
static int check_guid(const char *value, char *hint, size_t size);
static int check_iso_duration(const char *value, char *hint,
                              size_t size);
static int check_tenant(const char *value, char *hint, size_t size);
static int check_https_url(const char *value, char *hint, size_t size);
static int check_smtp_url(const char *value, char *hint, size_t size);
static int check_address(const char *value, char *hint, size_t size);
static int check_column(const char *value, char *hint, size_t size);
static int check_proxy_url(const char *value, char *hint, size_t size);

#define CFG(field) offsetof(struct md_config, field)
#define RULE(field) offsetof(struct md_rule_config, field)
#define MINUTE INT64_C(60)
#define HOUR INT64_C(3600)
#define DAY INT64_C(86400)
#define MIB INT64_C(1048576)

static const struct key_spec keys[] = {
    { SEC_AUTH, "tenant_id", T_STRING, NULL, 0, 0, NULL, NULL,
      check_tenant, CFG(auth.tenant_id), 0,
      "directory (tenant) ID, or a verified domain of the tenant" },
    { SEC_AUTH, "client_id", T_STRING, NULL, 0, 0, NULL, NULL,
      check_guid, CFG(auth.client_id), 0,
      "application (client) ID of the app registration" },
    { SEC_AUTH, "client_secret_file", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(auth.client_secret_file), 0,
      "file holding the client secret value" },
    { SEC_AUTH, "client_secret", T_SECRET, NULL, 0, 0, NULL, NULL,
      check_text, CFG(auth.client_secret), F_SECRET,
      "client secret value written inline (prefer client_secret_file)" },
    { SEC_AUTH, "cloud", T_ENUM, "public", 0, 0, NULL, cloud_names,
      NULL, CFG(auth.cloud), 0,
      "national cloud of the tenant" },
    { SEC_AUTH, "authority_url", T_STRING, NULL, 0, 0, NULL, NULL,
      check_https_url, CFG(auth.authority_url), 0,
      "login host to use in place of the cloud's (a proxy or a test)" },
    { SEC_AUTH, "scope", T_STRING, NULL, 0, 0, NULL, NULL,
      check_text, CFG(auth.scope), 0,
      "token scope to request in place of the backend's" },
    { SEC_AUTH, "certificate_file", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(auth.certificate_file), 0,
      "PEM certificate of the app registration, used instead of a "
      "client secret" },
    { SEC_AUTH, "private_key_file", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(auth.private_key_file), 0,
      "PEM private key of the certificate" },
    { SEC_AUTH, "passphrase_file", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(auth.passphrase_file), 0,
      "file holding the passphrase of an encrypted private key" },
    { SEC_AUTH, "assertion_alg", T_ENUM, "PS256", 0, 0, NULL,
      assertion_alg_names, NULL, CFG(auth.assertion_alg), 0,
      "signature algorithm of the client assertion" },

    { SEC_API, "backend", T_ENUM, "graph", 0, 0, NULL, backend_names,
      NULL, CFG(api.backend), 0,
      "service that runs the queries" },
    { SEC_API, "url", T_STRING, NULL, 0, 0, NULL, NULL,
      check_https_url, CFG(api.url), 0,
      "API base URL in place of the backend's" },
    { SEC_API, "ca_file", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(api.ca_file), 0,
      "PEM file of CA certificates to trust in place of the system's" },
    { SEC_API, "connect_timeout", T_INT, "15", 1, 600, "seconds", NULL,
      NULL, CFG(api.connect_timeout), 0,
      "seconds allowed to connect" },
    { SEC_API, "timeout", T_INT, "200", 1, 3600, "seconds", NULL,
      NULL, CFG(api.timeout), 0,
      "seconds allowed for a whole request" },
    { SEC_API, "proxy", T_STRING, NULL, 0, 0, NULL, NULL,
      check_proxy_url, CFG(api.proxy), 0,
      "HTTP(S) proxy URL" },
    { SEC_API, "max_reply_size", T_SIZE, "256M", MIB, INT64_MAX, NULL,
      NULL, NULL, CFG(api.max_reply_size), 0,
      "largest reply accepted, in bytes" },
    { SEC_API, "workspace_id", T_STRING, NULL, 0, 0, NULL, NULL,
      check_guid, CFG(api.workspace_id), 0,
      "Log Analytics workspace ID, for the sentinel backend" },
    { SEC_API, "default_timespan", T_STRING, "P30D", 0, 0, NULL, NULL,
      check_iso_duration, CFG(api.default_timespan), 0,
      "time range of a sentinel query whose rule has no queryPeriod, "
      "as an ISO 8601 duration" },
    { SEC_API, "max_retries", T_INT, "4", 0, 20, "retries", NULL,
      NULL, CFG(api.max_retries), 0,
      "retries of a failed request; 0 turns retrying off" },
    { SEC_API, "max_retry_time", T_DURATION, "5m", 0, DAY, NULL, NULL,
      NULL, CFG(api.max_retry_time), 0,
      "time a request may spend waiting to be retried" },
    { SEC_API, "max_calls_per_minute", T_INT, "40", 1, 1000, "calls",
      NULL, NULL, CFG(api.max_calls_per_minute), 0,
      "API calls per minute for the tenant and application" },
    { SEC_API, "max_calls_per_hour", T_INT, "1400", 1, 100000, "calls",
      NULL, NULL, CFG(api.max_calls_per_hour), 0,
      "API calls per hour for the tenant and application" },

    { SEC_RULES, "path", T_LIST, "/etc/mdhunt/rules", 0, 0, NULL, NULL,
      check_text, CFG(rules.paths), 0,
      "rule files and directories, comma-separated" },

    { SEC_STORE, "path", T_PATH, "/var/lib/mdhunt/mdhunt.db", 0, 0, NULL,
      NULL, check_text, CFG(store.path), 0,
      "SQLite database file" },
    { SEC_STORE, "keep_runs", T_INT, "100", 1, 1000000, "runs", NULL,
      NULL, CFG(store.keep_runs), 0,
      "runs kept per rule" },
    { SEC_STORE, "keep_days", T_DURATION, "90d", DAY, INT64_MAX, NULL,
      NULL, NULL, CFG(store.keep_days), 0,
      "age after which runs are deleted" },

    { SEC_SCHEDULE, "default_frequency", T_DURATION, "1h", 5 * MINUTE,
      INT64_MAX, NULL, NULL, NULL, CFG(schedule.default_frequency), 0,
      "interval for rules without a queryFrequency" },
    { SEC_SCHEDULE, "jitter", T_DURATION, "0s", 0, HOUR, NULL, NULL,
      NULL, CFG(schedule.jitter), 0,
      "largest random delay added to each due time" },

    { SEC_REPORT, "realert_after", T_DURATION, "30d", 0, INT64_MAX, NULL,
      NULL, NULL, CFG(report.realert_after), 0,
      "absence after which a device counts as new again" },
    { SEC_REPORT, "first_run", T_ENUM, "baseline", 0, 0, NULL,
      first_run_names, NULL, CFG(report.first_run), 0,
      "what a rule's first run does with the devices it finds" },
    { SEC_REPORT, "exclusions", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(report.exclusions), 0,
      "YAML file of reviewed exclusions" },
    { SEC_REPORT, "max_exclusion_age", T_DURATION, "365d", DAY, 3650 * DAY,
      NULL, NULL, NULL, CFG(report.max_exclusion_age), 0,
      "latest expiry an exclusion may have, counted from now" },

    { SEC_MAIL, "smtp_url", T_STRING, NULL, 0, 0, NULL, NULL,
      check_smtp_url, CFG(mail.smtp_url), F_REQUIRED,
      "mail server, smtp://HOST[:PORT] or smtps://HOST[:PORT]" },
    { SEC_MAIL, "username", T_STRING, NULL, 0, 0, NULL, NULL,
      check_text, CFG(mail.username), 0,
      "SMTP user name" },
    { SEC_MAIL, "password_file", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(mail.password_file), 0,
      "file holding the SMTP password" },
    { SEC_MAIL, "ca_file", T_PATH, NULL, 0, 0, NULL, NULL,
      check_text, CFG(mail.ca_file), 0,
      "PEM file of CA certificates for the mail server" },
    { SEC_MAIL, "from", T_STRING, NULL, 0, 0, NULL, NULL,
      check_address, CFG(mail.from), F_REQUIRED,
      "sender address" },
    { SEC_MAIL, "to", T_LIST, NULL, 0, 0, NULL, NULL,
      check_address, CFG(mail.to), F_REQUIRED,
      "recipient addresses, comma-separated" },
    { SEC_MAIL, "cc", T_LIST, NULL, 0, 0, NULL, NULL,
      check_address, CFG(mail.cc), 0,
      "copy addresses, comma-separated" },
    { SEC_MAIL, "subject_prefix", T_STRING, "[mdhunt]", 0, 0, NULL, NULL,
      check_text, CFG(mail.subject_prefix), 0,
      "text in front of every subject" },
    { SEC_MAIL, "send_when", T_ENUM, "new", 0, 0, NULL, send_when_names,
      NULL, CFG(mail.send_when), 0,
      "when a report is mailed" },
    { SEC_MAIL, "digest_every", T_DURATION, "1h", 0, INT64_MAX, NULL,
      NULL, NULL, CFG(mail.digest_every), 0,
      "reports found within this interval go out in one mail" },
    { SEC_MAIL, "max_rows_in_body", T_INT, "200", 0, 100000, "rows", NULL,
      NULL, CFG(mail.max_rows_in_body), 0,
      "rows shown in the mail body" },

    { SEC_RULE, "key", T_LIST, NULL, 0, 0, NULL, NULL,
      check_column, RULE(key_columns), 0,
      "columns of the rule's result that identify a device" },
    { SEC_RULE, "track", T_STRING, NULL, 0, 0, NULL, NULL,
      check_column, RULE(track_column), 0,
      "column whose newly seen values are reported" },
};

#define NKEYS ARRAY_LEN(keys)

/* The state of one md_config_load() call. */
struct parser {
    const char *path;
    FILE *fp;
    struct md_config *cfg;
    struct md_error *err;
    int line;                   /* number of the line last read */
    enum section_id section;
    int section_bad;            /* header rejected: skip its keys */
    size_t rule;                /* current index in cfg->rule_configs */
    int section_line[SEC_FIXED_COUNT];
    int key_line[NKEYS];        /* where each key was set, 0 if not */
    unsigned nerrors;
    int out_of_memory;
    int read_errno;
};

static void *field(void *base, const struct key_spec *k)
{
    return (char *)base + k->offset;
}

static const char *config_name(const struct md_config *cfg)
{
    return cfg->path != NULL ? cfg->path : "the configuration";
}

/* Record a configuration error at a line.  The first one goes into
 * p->err and later ones are logged, so that one run shows them all. */
__attribute__((format(printf, 3, 4)))
static void report(struct parser *p, int line, const char *fmt, ...)
{
    char msg[MD_ERR_MESSAGE_MAX];
    int n;
    va_list ap;

    n = snprintf(msg, sizeof(msg), "%s:%d: ", p->path, line);
    if (n < 0 || (size_t)n >= sizeof(msg))
        n = 0;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);

    p->nerrors++;
    if (p->nerrors == 1)
        md_error_set(p->err, MD_E_CONFIG, "%s", msg);
    else if (p->nerrors <= MAX_LOGGED_ERRORS + 1)
        md_error_log("%s", msg);
    else if (p->nerrors == MAX_LOGGED_ERRORS + 2)
        md_error_log("%s: further configuration errors are not shown; fix "
                     "the ones above first", p->path);
}

/* ---- Value shapes ---- */

/* Format hint and return -1, so that a check can end with
 * "return set_hint(...)". */
__attribute__((format(printf, 3, 4)))
static int set_hint(char *hint, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(hint, size, fmt, ap);
    va_end(ap);
    return -1;
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(int c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_alnum(int c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int has_control(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c < 0x20 || c == 0x7f)
            return 1;
    }
    return 0;
}

/* A proxy URL may carry a user name and password, and libcurl quotes a
 * URL it cannot read in its error messages: check it here, where the
 * value is never shown. */
static int check_proxy_url(const char *value, char *hint, size_t size)
{
    CURLU *url;
    CURLUcode rc;

    if (has_control(value))
        return set_hint(hint, size, "control characters are not allowed");
    url = curl_url();
    if (url == NULL)
        return set_hint(hint, size, "out of memory");
    rc = curl_url_set(url, CURLUPART_URL, value, CURLU_NON_SUPPORT_SCHEME);
    curl_url_cleanup(url);
    if (rc != CURLUE_OK)
        return set_hint(hint, size, "not a URL; write it as "
                        "http://HOST:PORT and percent-encode special "
                        "characters of a user name or password");
    return 0;
}

static int check_text(const char *value, char *hint, size_t size)
{
    if (has_control(value))
        return set_hint(hint, size, "control characters are not allowed");
    return 0;
}

static int is_guid(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!is_hex((unsigned char)s[i])) {
            return 0;
        }
    }
    return i == 36;
}

static int check_guid(const char *value, char *hint, size_t size)
{
    if (!is_guid(value))
        return set_hint(hint, size, "expected a GUID such as "
                        "00000000-0000-0000-0000-000000000000");
    return 0;
}

/*
 * An ISO 8601 duration as Log Analytics takes for its timespan: PnW, or
 * P[nD][T[nH][nM][n[.f]S]] with at least one part and more than zero
 * time in all.  Years and months are rejected, because their length
 * varies.
 */
static int check_iso_duration(const char *value, char *hint, size_t size)
{
    static const char form[] = "expected an ISO 8601 duration such as "
                               "P30D, P7D or PT12H";
    const char *p = value;
    const char *units = "WD";
    int in_time = 0;
    int parts = 0;
    int nonzero = 0;

    if (*p++ != 'P')
        return set_hint(hint, size, form);
    while (*p != '\0') {
        const char *start = p;
        const char *unit;

        if (*p == 'T' && !in_time) {
            in_time = 1;
            units = "HMS";
            p++;
            if (*p == '\0')
                return set_hint(hint, size, form);
            continue;
        }
        while (is_digit((unsigned char)*p))
            p++;
        if (p == start || p - start > 9)
            return set_hint(hint, size, form);
        for (const char *d = start; d < p; d++)
            nonzero |= *d != '0';
        if (*p == '.' && in_time) {
            const char *fraction = ++p;

            while (is_digit((unsigned char)*p))
                nonzero |= *p++ != '0';
            if (p == fraction || *p != 'S')
                return set_hint(hint, size, form);
        }
        if (*p == 'Y' || (*p == 'M' && !in_time))
            return set_hint(hint, size, "years and months have no fixed "
                            "length; give days, e.g. P365D");
        unit = *p != '\0' ? strchr(units, *p) : NULL;
        if (unit == NULL)
            return set_hint(hint, size, form);
        /* Each unit once, in order; a week stands alone. */
        if (*p == 'W' && p[1] != '\0')
            return set_hint(hint, size, form);
        units = unit + 1;
        parts++;
        p++;
    }
    if (parts == 0)
        return set_hint(hint, size, form);
    if (!nonzero)
        return set_hint(hint, size, "the duration must be longer than "
                        "zero");
    return 0;
}

/* A DNS name of two labels or more: letters, digits and inner hyphens. */
static int is_domain(const char *s)
{
    size_t label = 0;
    size_t labels = 1;
    size_t len = strlen(s);

    if (len == 0 || len > 253)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return 0;
            label = 0;
            labels++;
        } else if (is_alnum(c) || (c == '-' && label > 0)) {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label > 0 && s[len - 1] != '-' && labels >= 2;
}

static int check_tenant(const char *value, char *hint, size_t size)
{
    static const char *const shared[] = {
        "common", "consumers", "organizations"
    };

    for (size_t i = 0; i < ARRAY_LEN(shared); i++) {
        if (md_strcasecmp(value, shared[i]) == 0)
            return set_hint(hint, size, "\"%s\" names no single tenant, but "
                            "client credentials need one: use the "
                            "directory (tenant) ID or a verified domain "
                            "such as contoso.onmicrosoft.com", shared[i]);
    }
    if (!is_guid(value) && !is_domain(value))
        return set_hint(hint, size, "expected the directory (tenant) ID, a "
                        "GUID, or a verified domain such as "
                        "contoso.onmicrosoft.com");
    return 0;
}

/* Whether value looks like "SCHEME://USER:PASSWORD@HOST...": a message
 * must not repeat such a value, because the password is in it. */
static int has_url_credentials(const char *value)
{
    const char *rest = strstr(value, "://");

    if (rest == NULL)
        return 0;
    rest += 3;
    return memchr(rest, '@', strcspn(rest, "/?#")) != NULL;
}

/* Check "SCHEME://HOST[:PORT][/...]" for one of the schemes (lower or
 * upper case).  Credentials in the URL are rejected because the file
 * would then contain a secret in plain sight. */
static int check_url(const char *value, const char *const *schemes,
                     const char *form, char *hint, size_t size)
{
    const char *rest = NULL;
    const char *host;
    const char *end;
    const char *port = NULL;

    for (size_t i = 0; schemes[i] != NULL && rest == NULL; i++) {
        size_t n = strlen(schemes[i]);

        if (strncasecmp(value, schemes[i], n) == 0)
            rest = value + n;
    }
    if (rest == NULL || has_control(value) || strchr(value, ' ') != NULL)
        return set_hint(hint, size, "expected %s", form);

    end = rest + strcspn(rest, "/?#");
    if (memchr(rest, '@', (size_t)(end - rest)) != NULL)
        return set_hint(hint, size, "a user name or password in the URL is "
                        "not allowed; use the separate keys");
    host = rest;
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(end - host));

        if (close == NULL || close == host + 1)
            return set_hint(hint, size, "expected %s", form);
        if (close + 1 < end)
            port = close + 1;
    } else {
        port = memchr(host, ':', (size_t)(end - host));
        if (port == host || host == end)
            return set_hint(hint, size, "expected %s", form);
    }
    if (port != NULL) {
        long number = 0;
        const char *d = port + 1;

        if (*port != ':' || d == end)
            return set_hint(hint, size, "expected %s", form);
        for (; d < end; d++) {
            if (!is_digit((unsigned char)*d) || number > 65535)
                return set_hint(hint, size, "expected %s", form);
            number = number * 10 + (*d - '0');
        }
        if (number < 1 || number > 65535)
            return set_hint(hint, size, "the port must be from 1 to 65535");
    }
    return 0;
}

static int check_https_url(const char *value, char *hint, size_t size)
{
    static const char *const schemes[] = { "https://", NULL };

    return check_url(value, schemes, "an https:// URL", hint, size);
}

static int check_smtp_url(const char *value, char *hint, size_t size)
{
    static const char *const schemes[] = { "smtp://", "smtps://", NULL };

    return check_url(value, schemes,
                     "smtp://HOST[:PORT] or smtps://HOST[:PORT]", hint, size);
}

/* A bare address: LOCAL@DOMAIN, no display name or angle brackets. */
static int check_address(const char *value, char *hint, size_t size)
{
    const char *at = strrchr(value, '@');

    if (at == NULL || at == value || at[1] == '\0' ||
        has_control(value) || strpbrk(value, " <>()[],;:\"\\") != NULL ||
        strchr(at + 1, '.') == NULL)
        return set_hint(hint, size, "expected a mail address such as "
                        "soc@example.com");
    return 0;
}

static int check_column(const char *value, char *hint, size_t size)
{
    for (const char *s = value; *s != '\0'; s++) {
        if (!is_alnum((unsigned char)*s) && *s != '_')
            return set_hint(hint, size, "expected a column name of letters, "
                            "digits and underscores, such as DeviceId");
    }
    return 0;
}

/* ---- Parsing a value into its field ---- */

/* Parse decimal digits into an int64_t; -1 when empty, not all digits or
 * too large. */
static int parse_digits(const char *s, size_t len, int64_t *out)
{
    int64_t n = 0;

    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit((unsigned char)s[i]))
            return -1;
        if (n > (INT64_MAX - (s[i] - '0')) / 10)
            return -1;
        n = n * 10 + (s[i] - '0');
    }
    *out = n;
    return 0;
}

/* Parse a byte size: digits with an optional K, M or G (any case), which
 * multiply by 1024, 1024^2 or 1024^3. */
static int parse_size(const char *s, int64_t *out)
{
    size_t len = strlen(s);
    int64_t unit = 1;
    int64_t n;

    if (len > 0) {
        switch (s[len - 1]) {
        case 'k': case 'K':
            unit = INT64_C(1) << 10;
            break;
        case 'm': case 'M':
            unit = INT64_C(1) << 20;
            break;
        case 'g': case 'G':
            unit = INT64_C(1) << 30;
            break;
        }
        if (unit != 1)
            len--;
    }
    if (parse_digits(s, len, &n) != 0 || n > INT64_MAX / unit)
        return -1;
    *out = n * unit;
    return 0;
}

static void format_size(int64_t n, char *buf, size_t size)
{
    static const char suffix[] = "GMK";

    for (int i = 0; i < 3; i++) {
        int64_t unit = INT64_C(1) << (10 * (3 - i));

        if (n != 0 && n % unit == 0) {
            snprintf(buf, size, "%lld%c", (long long)(n / unit), suffix[i]);
            return;
        }
    }
    snprintf(buf, size, "%lld", (long long)n);
}

static void describe_range(const struct key_spec *k, char *hint, size_t size)
{
    char lo[32];
    char hi[32];
    char range[80];

    switch (k->type) {
    case T_INT:
        set_hint(hint, size, "expected a whole number of %s from %lld to "
                 "%lld", k->unit, (long long)k->min, (long long)k->max);
        break;
    case T_SIZE:
        format_size(k->min, lo, sizeof(lo));
        set_hint(hint, size, "expected a size of at least %s: a whole number "
                 "of bytes with an optional K, M or G suffix (1K = 1024)",
                 lo);
        break;
    default:
        md_duration_format(k->min, lo, sizeof(lo));
        if (k->max == INT64_MAX) {
            snprintf(range, sizeof(range), "of at least %s", lo);
        } else {
            md_duration_format(k->max, hi, sizeof(hi));
            snprintf(range, sizeof(range), "from %s to %s", lo, hi);
        }
        set_hint(hint, size, "expected a duration %s: a whole number "
                 "followed by s, m, h or d in lower case, such as %s",
                 range, k->def != NULL ? k->def : "1h");
        break;
    }
}

static int parse_number(const struct key_spec *k, const char *value,
                        int64_t *out, char *hint, size_t size)
{
    int rc;

    if (k->type == T_INT)
        rc = parse_digits(value, strlen(value), out);
    else if (k->type == T_SIZE)
        rc = parse_size(value, out);
    else
        rc = md_duration_parse(value, out);
    if (rc != 0 || *out < k->min || *out > k->max) {
        describe_range(k, hint, size);
        return -1;
    }
    return 0;
}

static int parse_enum(const struct key_spec *k, const char *value,
                      int *out, char *hint, size_t size)
{
    size_t n = 0;

    for (const struct enum_name *e = k->names; e->name != NULL; e++) {
        if (strcmp(value, e->name) == 0) {
            *out = e->value;
            return 0;
        }
    }
    n += (size_t)snprintf(hint, size, "expected ");
    for (const struct enum_name *e = k->names; e->name != NULL; e++) {
        const char *separator = ", ";

        if (e == k->names)
            separator = "";
        else if (e[1].name == NULL)
            separator = " or ";
        if (n >= size)
            break;
        n += (size_t)snprintf(hint + n, size - n, "%s%s", separator,
                              e->name);
    }
    return -1;
}

static void free_list(char **list)
{
    if (list == NULL)
        return;
    for (char **s = list; *s != NULL; s++)
        free(*s);
    free(list);
}

/* Split "a, b ,c" into a NULL-terminated array of trimmed items.
 * Returns 0, -1 for an invalid item (hint filled), -2 when out of memory. */
static int parse_list(const struct key_spec *k, const char *value,
                      char ***out, char *hint, size_t size)
{
    size_t count = 1;
    size_t i = 0;
    char **list = NULL;
    const char *item = value;

    for (const char *s = value; *s != '\0'; s++)
        count += *s == ',';
    list = calloc(count + 1, sizeof(*list));
    if (list == NULL)
        return -2;

    for (;;) {
        size_t len = strcspn(item, ",");
        const char *start = item;

        while (len > 0 && (*start == ' ' || *start == '\t')) {
            start++;
            len--;
        }
        while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t'))
            len--;
        if (len == 0) {
            free_list(list);
            return set_hint(hint, size, "an item is empty; separate items "
                            "with single commas");
        }
        list[i] = md_strndup(start, len);
        if (list[i] == NULL) {
            free_list(list);
            return -2;
        }
        if (k->check != NULL && k->check(list[i], hint, size) != 0) {
            free_list(list);
            return -1;
        }
        i++;
        item = start + len + strspn(start + len, " \t");
        if (*item != ',')
            break;
        item++;
    }
    *out = list;
    return 0;
}

/*
 * Parse value into the field of k inside base (a struct md_config, or a
 * struct md_rule_config for SEC_RULE keys), replacing what it held.
 * Returns 0, -1 for an invalid value (hint then describes the accepted
 * form) or -2 when out of memory.
 */
static int apply_value(const struct key_spec *k, void *base,
                       const char *value, char *hint, size_t size)
{
    void *dst = field(base, k);
    int64_t number;
    int choice;
    char **list = NULL;
    char *copy;

    if (value[0] == '\0')
        return set_hint(hint, size, "the value is empty; remove the line "
                        "to use the default");
    if (k->type != T_LIST && k->check != NULL &&
        k->check(value, hint, size) != 0)
        return -1;

    switch (k->type) {
    case T_STRING:
    case T_PATH:
        copy = md_strdup(value);
        if (copy == NULL)
            return -2;
        free(*(char **)dst);
        *(char **)dst = copy;
        return 0;
    case T_INT:
        if (parse_number(k, value, &number, hint, size) != 0)
            return -1;
        *(long *)dst = (long)number;
        return 0;
    case T_SIZE:
        if (parse_number(k, value, &number, hint, size) != 0)
            return -1;
#if SIZE_MAX < INT64_MAX
        if (number > (int64_t)SIZE_MAX)
            return set_hint(hint, size, "the size is too large for this "
                            "system");
#endif
        *(size_t *)dst = (size_t)number;
        return 0;
    case T_DURATION:
        if (parse_number(k, value, &number, hint, size) != 0)
            return -1;
        *(int64_t *)dst = number;
        return 0;
    case T_ENUM:
        if (parse_enum(k, value, &choice, hint, size) != 0)
            return -1;
        *(int *)dst = choice;
        return 0;
    case T_LIST: {
        int rc = parse_list(k, value, &list, hint, size);

        if (rc != 0)
            return rc;
        free_list(*(char ***)dst);
        *(char ***)dst = list;
        return 0;
    }
    case T_SECRET:
        if (md_secret_set(dst, value, strlen(value)) != 0)
            return -2;
        return 0;
    }
    return set_hint(hint, size, "unsupported value type");
}

static void free_value(const struct key_spec *k, void *base)
{
    void *dst = field(base, k);

    switch (k->type) {
    case T_STRING:
    case T_PATH:
        free(*(char **)dst);
        *(char **)dst = NULL;
        break;
    case T_LIST:
        free_list(*(char ***)dst);
        *(char ***)dst = NULL;
        break;
    case T_SECRET:
        md_secret_clear(dst);
        break;
    default:
        break;
    }
}

/* Set the defaults of one section's keys in base. */
static int apply_defaults(enum section_id section, void *base)
{
    char hint[256];

    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].section != section || keys[i].def == NULL)
            continue;
        if (apply_value(&keys[i], base, keys[i].def, hint, sizeof(hint)) != 0)
            return -1;
    }
    return 0;
}

/* ---- Sections ---- */

static void section_label(const struct parser *p, char *buf, size_t size)
{
    if (p->section == SEC_RULE)
        snprintf(buf, size, "[rule \"%s\"]",
                 p->cfg->rule_configs[p->rule].rule_id);
    else if (p->section < SEC_FIXED_COUNT)
        snprintf(buf, size, "[%s]", section_names[p->section]);
    else
        snprintf(buf, size, "(no section)");
}

/* Parse the text of a rule section header, `rule "ID"`, into a new copy
 * of ID.  Returns 0, -1 when malformed (hint filled), -2 when out of
 * memory, -3 when the name is not a rule section at all. */
static int parse_rule_header(const char *name, char **id, char *hint,
                             size_t size)
{
    const char *start;
    const char *end;

    if (strncmp(name, "rule", 4) != 0 || (name[4] != ' ' && name[4] != '\t'))
        return -3;
    start = name + 4 + strspn(name + 4, " \t");
    end = start[0] == '"' ? strchr(start + 1, '"') : NULL;
    if (end == NULL || end[1] != '\0')
        return set_hint(hint, size, "expected [rule \"ID\"] with the rule "
                        "id in double quotes");
    start++;
    if (end == start || (size_t)(end - start) > MAX_RULE_ID)
        return set_hint(hint, size, "the rule id must have 1 to %d "
                        "characters", MAX_RULE_ID);
    for (const char *s = start; s < end; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f || *s == '\\')
            return set_hint(hint, size, "the rule id must not contain "
                            "control characters or backslashes");
    }
    *id = md_strndup(start, (size_t)(end - start));
    return *id == NULL ? -2 : 0;
}

static void begin_rule_section(struct parser *p, const char *name)
{
    struct md_config *cfg = p->cfg;
    struct md_rule_config *rule;
    char hint[256];
    char *id = NULL;
    int parsed = parse_rule_header(name, &id, hint, sizeof(hint));

    if (parsed == -2) {
        p->out_of_memory = 1;
        return;
    }
    if (parsed == -3) {
        p->section_bad = 1;
        report(p, p->line, "unknown section [%s]; the sections are [auth], "
               "[api], [rules], [store], [schedule], [report], [mail] and "
               "[rule \"ID\"]", name);
        return;
    }
    if (parsed != 0) {
        p->section_bad = 1;
        report(p, p->line, "invalid section header [%s]: %s", name, hint);
        return;
    }
    for (size_t i = 0; i < cfg->nrule_configs; i++) {
        if (md_strcasecmp(cfg->rule_configs[i].rule_id, id) == 0) {
            p->section_bad = 1;
            report(p, p->line, "duplicate section [rule \"%s\"] (first on "
                   "line %d); merge the two", id,
                   cfg->rule_configs[i].line);
            free(id);
            return;
        }
    }

    rule = realloc(cfg->rule_configs,
                   (cfg->nrule_configs + 1) * sizeof(*rule));
    if (rule == NULL) {
        free(id);
        p->out_of_memory = 1;
        return;
    }
    cfg->rule_configs = rule;
    rule = &cfg->rule_configs[cfg->nrule_configs++];
    memset(rule, 0, sizeof(*rule));
    rule->rule_id = id;
    rule->line = p->line;
    p->rule = cfg->nrule_configs - 1;
    p->section = SEC_RULE;
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].section == SEC_RULE)
            p->key_line[i] = 0;
    }
}

/* Handle the header line "[name]" (leading blanks already removed). */
static void begin_section(struct parser *p, const char *line)
{
    const char *close = strchr(line, ']');
    const char *after;
    char name[MAX_RULE_ID + 16];
    size_t len;

    p->section = SEC_NONE;
    p->section_bad = 1;
    if (close == NULL) {
        report(p, p->line, "section header without a closing ']'");
        return;
    }
    after = close + 1 + strspn(close + 1, " \t");
    if (*after != '\0' && *after != ';' && *after != '#') {
        report(p, p->line, "unexpected text after ']'; write a comment on "
               "a line of its own");
        return;
    }
    len = (size_t)(close - line - 1);
    if (len >= sizeof(name)) {
        report(p, p->line, "section name longer than %zu bytes",
               sizeof(name) - 1);
        return;
    }
    memcpy(name, line + 1, len);
    name[len] = '\0';

    for (int s = 0; s < SEC_FIXED_COUNT; s++) {
        if (strcmp(name, section_names[s]) != 0)
            continue;
        if (p->section_line[s] != 0) {
            report(p, p->line, "duplicate section [%s] (first on line %d); "
                   "merge the two", name, p->section_line[s]);
            return;
        }
        p->section_line[s] = p->line;
        p->section = (enum section_id)s;
        p->section_bad = 0;
        if (s == SEC_MAIL)
            p->cfg->mail.enabled = 1;
        else if (s == SEC_STORE)
            p->cfg->store.configured = 1;
        return;
    }
    p->section_bad = 0;
    begin_rule_section(p, name);
}

/* ---- inih callbacks ---- */

/*
 * Read one line for inih into str (num bytes, counting the NUL).  Counts
 * lines, strips a UTF-8 byte order mark, a CR before the LF and leading
 * blanks, and follows section headers.  A line that does not fit, or that
 * contains a NUL byte, is reported and handed to inih as an empty line,
 * so that inih never parses a cut value.  Returns NULL at the end of the
 * file, on a read error and when out of memory.
 */
static char *read_line(char *str, int num, void *stream)
{
    struct parser *p = stream;
    size_t room;
    size_t len = 0;
    size_t skip;
    int c = EOF;
    int last = EOF;
    int nul = 0;

    if (p->out_of_memory || num < 3)
        return NULL;
    room = (size_t)num - 2;     /* leave space for '\n' and NUL */
    while ((c = getc(p->fp)) != EOF && c != '\n') {
        if (c == '\0')
            nul = 1;
        if (len < room)
            str[len] = (char)c;
        len++;
        last = c;
    }
    if (c == EOF && ferror(p->fp)) {
        p->read_errno = errno != 0 ? errno : EIO;
        return NULL;
    }
    if (c == EOF && len == 0)
        return NULL;
    p->line++;
    if (last == '\r')
        len--;

    if (len > room || nul) {
        if (nul)
            report(p, p->line, "the line contains a NUL byte");
        else
            report(p, p->line, "line longer than %zu bytes; shorten it "
                   "(inih, the INI parser, reads no more per line)", room);
        str[0] = '\n';
        str[1] = '\0';
        return str;
    }

    skip = 0;
    if (p->line == 1 && len >= 3 && memcmp(str, "\xEF\xBB\xBF", 3) == 0)
        skip = 3;
    while (skip < len && (str[skip] == ' ' || str[skip] == '\t'))
        skip++;
    memmove(str, str + skip, len - skip);
    len -= skip;
    str[len] = '\0';

    if (str[0] == '[')
        begin_section(p, str);
    else if (len > 0 && str[0] != ';' && str[0] != '#' &&
             strpbrk(str, "=:") == NULL)
        report(p, p->line, "expected KEY = VALUE, a [section] header or a "
               "comment");
    str[len] = '\n';
    str[len + 1] = '\0';
    return str;
}

static const struct key_spec *find_key(enum section_id section,
                                       const char *name, size_t *index)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].section == section && strcmp(keys[i].name, name) == 0) {
            *index = i;
            return &keys[i];
        }
    }
    return NULL;
}

static void report_unknown_key(struct parser *p, const char *label,
                               const char *name)
{
    char known[512];
    size_t n = 0;

    known[0] = '\0';
    for (size_t i = 0; i < NKEYS && n < sizeof(known); i++) {
        if (keys[i].section != p->section)
            continue;
        n += (size_t)snprintf(known + n, sizeof(known) - n, "%s%s",
                              n > 0 ? ", " : "", keys[i].name);
    }
    report(p, p->line, "unknown key '%s' in %s; the keys there are %s",
           name, label, known);
}

/* Remove one pair of double quotes around value in place, which lets a
 * value keep leading or trailing blanks. */
static void unquote(char *value)
{
    size_t len = strlen(value);

    if (len < 2 || value[0] != '"' || value[len - 1] != '"')
        return;
    memmove(value, value + 1, len - 2);
    value[len - 2] = '\0';
}

/* Check and store one "key = value" of the current section (the inih
 * handler).  Errors are recorded in p, and 1 is always returned so that
 * inih goes on to the next line. */
static int on_value(void *user, const char *section, const char *name,
                    const char *value)
{
    struct parser *p = user;
    const struct key_spec *k;
    size_t index;
    void *base;
    char label[MAX_RULE_ID + 16];
    char hint[512];
    size_t size = strlen(value) + 1;
    char *copy;
    int rc;

    (void)section;      /* read_line() follows the headers itself */
    if (p->out_of_memory || p->section_bad)
        return 1;
    if (p->section == SEC_NONE) {
        report(p, p->line, "key '%s' comes before any [section] header",
               name);
        return 1;
    }
    section_label(p, label, sizeof(label));
    k = find_key(p->section, name, &index);
    if (k == NULL) {
        report_unknown_key(p, label, name);
        return 1;
    }
    if (p->key_line[index] != 0) {
        report(p, p->line, "duplicate key %s %s (first set on line %d); "
               "keep one", label, name, p->key_line[index]);
        return 1;
    }
    p->key_line[index] = p->line;

    copy = md_strndup(value, size - 1);
    if (copy == NULL) {
        p->out_of_memory = 1;
        return 1;
    }
    unquote(copy);
    base = p->section == SEC_RULE ? (void *)&p->cfg->rule_configs[p->rule]
                                  : (void *)p->cfg;
    rc = apply_value(k, base, copy, hint, sizeof(hint));
    /* NOTE: only this copy is wiped; inih's line buffer and the stdio
     * buffer keep an inline secret until they are reused. */
    md_wipe(copy, size);
    free(copy);
    if (rc == -2)
        p->out_of_memory = 1;
    else if (rc != 0 && ((k->flags & F_SECRET) != 0 ||
                         k->check == check_proxy_url ||
                         has_url_credentials(value)))
        report(p, p->line, "invalid %s %s (value not shown): %s", label,
               name, hint);
    else if (rc != 0)
        report(p, p->line, "invalid %s %s \"%s\": %s", label, name, value,
               hint);
    return 1;
}

/* ---- Whole-file checks ---- */

static int key_index(enum section_id section, const char *name)
{
    size_t index = 0;

    find_key(section, name, &index);
    return (int)index;
}

static void check_required(struct parser *p)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key_spec *k = &keys[i];

        if ((k->flags & F_REQUIRED) == 0 || k->section >= SEC_FIXED_COUNT)
            continue;
        if (p->section_line[k->section] == 0 || p->key_line[i] != 0)
            continue;
        report(p, p->section_line[k->section], "[%s] has no %s; set it "
               "(%s)", section_names[k->section], k->name, k->help);
    }
}

static int later_line(int a, int b)
{
    return a > b ? a : b;
}

/* A key file or passphrase means nothing without the certificate.  Both a
 * certificate and a client secret are checked by md_config_require_auth,
 * since the example configuration sets every key at once. */
static void check_certificate_keys(struct parser *p)
{
    static const char *const needs_certificate[] = {
        "private_key_file", "passphrase_file"
    };
    int cert_line = p->key_line[key_index(SEC_AUTH, "certificate_file")];

    for (size_t i = 0; i < ARRAY_LEN(needs_certificate); i++) {
        int line = p->key_line[key_index(SEC_AUTH, needs_certificate[i])];

        if (line != 0 && cert_line == 0)
            report(p, line, "[auth] %s is set but certificate_file is not; "
                   "set certificate_file too, or remove %s",
                   needs_certificate[i], needs_certificate[i]);
    }
}

/* Microsoft 365 operated by 21Vianet offers neither Graph's
 * runHuntingQuery nor the Defender hunting API. */
static void check_cloud(struct parser *p)
{
    int cloud_line = p->key_line[key_index(SEC_AUTH, "cloud")];
    int backend_line = p->key_line[key_index(SEC_API, "backend")];
    enum md_backend_kind backend = p->cfg->api.backend;

    if (p->cfg->auth.cloud != MD_CLOUD_CHINA ||
        backend == MD_BACKEND_SENTINEL)
        return;
    report(p, later_line(cloud_line, backend_line), "[auth] cloud = china "
           "cannot be used with [api] backend = %s: the China cloud has "
           "no advanced hunting API; use backend = sentinel or another "
           "cloud", md_backend_kind_name(backend));
}

static void check_call_limits(struct parser *p)
{
    int minute_line = p->key_line[key_index(SEC_API,
                                            "max_calls_per_minute")];
    int hour_line = p->key_line[key_index(SEC_API, "max_calls_per_hour")];

    if (p->cfg->api.max_calls_per_minute <= p->cfg->api.max_calls_per_hour)
        return;
    report(p, later_line(minute_line, hour_line), "[api] "
           "max_calls_per_minute (%ld) is larger than max_calls_per_hour "
           "(%ld); lower it or raise max_calls_per_hour",
           p->cfg->api.max_calls_per_minute,
           p->cfg->api.max_calls_per_hour);
}

/* Check keys that are wrong only in combination with others. */
static void check_pairs(struct parser *p)
{
    int inline_line = p->key_line[key_index(SEC_AUTH, "client_secret")];
    int file_line = p->key_line[key_index(SEC_AUTH, "client_secret_file")];
    int user_line = p->key_line[key_index(SEC_MAIL, "username")];
    int pass_line = p->key_line[key_index(SEC_MAIL, "password_file")];

    p->cfg->auth.client_secret_inline = inline_line != 0;
    if (inline_line != 0 && file_line != 0)
        report(p, inline_line > file_line ? inline_line : file_line,
               "[auth] has both client_secret and client_secret_file; "
               "keep client_secret_file");
    if (pass_line != 0 && user_line == 0)
        report(p, pass_line, "[mail] password_file is set but username is "
               "not; set username too, or remove password_file");
    check_certificate_keys(p);
    check_cloud(p);
    check_call_limits(p);
}

/* Warn, as ssh does for keys, when a file that contains a secret can be
 * read by users other than its owner. */
static void warn_if_exposed(const char *path, const struct stat *st,
                            mode_t mask, const char *who)
{
    if ((st->st_mode & mask) != 0)
        md_warn("%s is readable by %s and contains a secret; chmod 600 %s",
                path, who, path);
}

/* ---- Public functions ---- */

int md_config_init(struct md_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (int s = 0; s < SEC_FIXED_COUNT; s++) {
        if (apply_defaults((enum section_id)s, cfg) != 0) {
            md_config_free(cfg);
            return -1;
        }
    }
    return 0;
}

static int parse_file(struct parser *p)
{
    int rc = ini_parse_stream(read_line, p, on_value, p);

    if (p->out_of_memory || rc == -2)
        return md_error_set(p->err, MD_E_INTERNAL, "out of memory while "
                            "reading %s", p->path);
    if (p->read_errno != 0)
        return md_error_set(p->err, MD_E_CONFIG, "%s: read failed: %s",
                            p->path, strerror(p->read_errno));
    if (rc > 0 && p->nerrors == 0)
        report(p, rc, "syntax error; expected KEY = VALUE");
    if (rc < 0 && p->nerrors == 0)
        return md_error_set(p->err, MD_E_INTERNAL, "%s: the INI parser "
                            "failed (%d)", p->path, rc);
    return 0;
}

/* Append " (N more errors logged above)" to the first error. */
static void count_other_errors(struct parser *p)
{
    unsigned logged = p->nerrors - 1;
    size_t len;

    if (p->err == NULL)
        return;
    len = strlen(p->err->message);
    if (logged > MAX_LOGGED_ERRORS)
        logged = MAX_LOGGED_ERRORS;
    snprintf(p->err->message + len, sizeof(p->err->message) - len,
             " (%u more error%s logged above)", logged,
             logged == 1 ? "" : "s");
}

int md_config_load(const char *path, struct md_config *cfg,
                   struct md_error *err)
{
    struct parser p;
    struct stat st;
    int saved_errno;

    md_error_clear(err);
    if (md_config_init(cfg) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    memset(&p, 0, sizeof(p));
    p.path = path;
    p.cfg = cfg;
    p.err = err;
    p.section = SEC_NONE;

    cfg->path = md_strdup(path);
    if (cfg->path == NULL) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto fail;
    }
    p.fp = fopen(path, "rb");
    if (p.fp == NULL || fstat(fileno(p.fp), &st) != 0) {
        md_error_set(err, MD_E_CONFIG, "%s: cannot read the configuration "
                     "file: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        md_error_set(err, MD_E_CONFIG, "%s: is a directory; name the "
                     "configuration file itself", path);
        goto fail;
    }

    if (parse_file(&p) != 0)
        goto fail;
    check_required(&p);
    check_pairs(&p);
    if (p.nerrors > 0) {
        if (p.nerrors > 1)
            count_other_errors(&p);
        goto fail;
    }

    if (cfg->auth.client_secret_inline)
        warn_if_exposed(path, &st, S_IRGRP | S_IROTH, "group or others");
    fclose(p.fp);
    return 0;

fail:
    saved_errno = errno;
    if (p.fp != NULL)
        fclose(p.fp);
    md_config_free(cfg);
    errno = saved_errno;
    return -1;
}

/* What read_secret_file() accepts: the largest size, whether one
 * trailing LF or CRLF is removed, and what the file must contain (for
 * messages). */
struct secret_kind {
    size_t max;
    int trim_newline;
    const char *content;
};

static const struct secret_kind plain_secret = {
    MAX_SECRET_FILE, 1, "the secret"
};

static const struct secret_kind pem_key = {
    MAX_KEY_FILE, 0, "one PEM private key"
};

static int read_all(int fd, char *buf, size_t size, size_t *len)
{
    ssize_t n;

    *len = 0;
    while (*len < size) {
        n = read(fd, buf + *len, size - *len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        *len += (size_t)n;
    }
    return 0;
}

/*
 * Read a secret from path into secret: at most kind->max bytes, with one
 * trailing LF or CRLF removed when kind->trim_newline is set.  label
 * names the key in messages, which never contain the content.
 */
static int read_secret_file(const char *path, const char *label,
                            const struct secret_kind *kind,
                            struct md_secret *secret, struct md_error *err)
{
    char *buf = NULL;
    struct stat st;
    size_t len = 0;
    int fd;
    int rc = -1;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 || fstat(fd, &st) != 0) {
        md_error_set(err, MD_E_CONFIG, "%s: cannot read %s: %s", path,
                     label, strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        md_error_set(err, MD_E_CONFIG, "%s: %s names a directory; name the "
                     "file that holds the secret", path, label);
        goto out;
    }
    warn_if_exposed(path, &st, S_IROTH, "others");

    buf = malloc(kind->max + 1);
    if (buf == NULL) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    if (read_all(fd, buf, kind->max + 1, &len) != 0) {
        md_error_set(err, MD_E_CONFIG, "%s: cannot read %s: %s", path,
                     label, strerror(errno));
        goto out;
    }
    if (len > kind->max) {
        md_error_set(err, MD_E_CONFIG, "%s: %s is larger than %zu bytes; it "
                     "must hold only %s", path, label, kind->max,
                     kind->content);
        goto out;
    }

    if (kind->trim_newline && len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0) {
        md_error_set(err, MD_E_CONFIG, "%s: %s is empty; write %s into it",
                     path, label, kind->content);
        goto out;
    }
    if (memchr(buf, '\0', len) != NULL) {
        md_error_set(err, MD_E_CONFIG, "%s: %s contains a NUL byte; it "
                     "must hold only %s", path, label, kind->content);
        goto out;
    }
    if (md_secret_set(secret, buf, len) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    rc = 0;

out:
    if (buf != NULL) {
        md_wipe(buf, kind->max + 1);
        free(buf);
    }
    if (fd >= 0)
        close(fd);
    return rc;
}

static int secret_from_env(const char *name, struct md_secret *secret,
                           struct md_error *err)
{
    const char *value = getenv(name);

    if (value == NULL || value[0] == '\0')
        return 1;
    if (md_secret_set(secret, value, strlen(value)) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    return 0;
}

/* Load the private key of [auth] certificate_file and its passphrase. */
static int load_certificate_key(struct md_config *cfg, const char *name,
                                struct md_error *err)
{
    const char *key_file = cfg->auth.private_key_file;
    const char *label = "[auth] private_key_file";

    if (cfg->auth.client_secret_file != NULL ||
        cfg->auth.client_secret_inline)
        return md_error_set(err, MD_E_CONFIG, "%s: [auth] sets both "
                            "certificate_file and a client secret "
                            "(client_secret_file or client_secret); keep "
                            "one of them", name);
    if (getenv("MDHUNT_CLIENT_SECRET") != NULL)
        md_debug("ignoring $MDHUNT_CLIENT_SECRET: [auth] certificate_file "
                 "is set");
    if (key_file == NULL) {
        key_file = cfg->auth.certificate_file;
        label = "[auth] certificate_file (no private_key_file is set, so "
                "it must hold the key too)";
    }

    md_secret_clear(&cfg->auth.private_key);
    md_secret_clear(&cfg->auth.passphrase);
    if (read_secret_file(key_file, label, &pem_key, &cfg->auth.private_key,
                         err) != 0)
        return -1;
    if (cfg->auth.passphrase_file != NULL &&
        read_secret_file(cfg->auth.passphrase_file, "[auth] passphrase_file",
                         &plain_secret, &cfg->auth.passphrase, err) != 0) {
        md_secret_clear(&cfg->auth.private_key);
        return -1;
    }
    return 0;
}

int md_config_require_auth(struct md_config *cfg, struct md_error *err)
{
    const char *name = config_name(cfg);
    int rc;

    if (cfg->auth.tenant_id == NULL)
        return md_error_set(err, MD_E_CONFIG, "%s: [auth] tenant_id is "
                            "missing; set it to the directory (tenant) ID "
                            "or a verified domain of the tenant", name);
    if (cfg->auth.client_id == NULL)
        return md_error_set(err, MD_E_CONFIG, "%s: [auth] client_id is "
                            "missing; set it to the application (client) "
                            "ID of the app registration", name);

    if (cfg->auth.certificate_file != NULL)
        return load_certificate_key(cfg, name, err);
    if (cfg->auth.client_secret_file != NULL)
        return read_secret_file(cfg->auth.client_secret_file,
                                "[auth] client_secret_file", &plain_secret,
                                &cfg->auth.client_secret, err);
    rc = secret_from_env("MDHUNT_CLIENT_SECRET", &cfg->auth.client_secret,
                         err);
    if (rc <= 0)
        return rc;
    if (cfg->auth.client_secret_inline) {
        md_warn("%s: [auth] client_secret is written in the file; move it "
                "to client_secret_file or $MDHUNT_CLIENT_SECRET", name);
        return 0;
    }
    return md_error_set(err, MD_E_CONFIG, "%s: no client secret; set "
                        "[auth] client_secret_file or the environment "
                        "variable MDHUNT_CLIENT_SECRET", name);
}

int md_config_require_mail(struct md_config *cfg, struct md_error *err)
{
    const char *name = config_name(cfg);
    int rc;

    if (!cfg->mail.enabled)
        return md_error_set(err, MD_E_CONFIG, "%s: no [mail] section; add "
                            "one with smtp_url, from and to", name);
    if (cfg->mail.username == NULL)
        return 0;
    if (cfg->mail.password_file != NULL)
        return read_secret_file(cfg->mail.password_file,
                                "[mail] password_file", &plain_secret,
                                &cfg->mail.password, err);
    rc = secret_from_env("MDHUNT_SMTP_PASSWORD", &cfg->mail.password, err);
    if (rc <= 0)
        return rc;
    return md_error_set(err, MD_E_CONFIG, "%s: [mail] username is set but "
                        "there is no password; set [mail] password_file or "
                        "the environment variable MDHUNT_SMTP_PASSWORD",
                        name);
}

const struct md_rule_config *md_config_rule(const struct md_config *cfg,
                                            const char *rule_id)
{
    for (size_t i = 0; i < cfg->nrule_configs; i++) {
        if (md_strcasecmp(cfg->rule_configs[i].rule_id, rule_id) == 0)
            return &cfg->rule_configs[i];
    }
    return NULL;
}

void md_config_free(struct md_config *cfg)
{
    for (size_t r = 0; r < cfg->nrule_configs; r++) {
        for (size_t i = 0; i < NKEYS; i++) {
            if (keys[i].section == SEC_RULE)
                free_value(&keys[i], &cfg->rule_configs[r]);
        }
        free(cfg->rule_configs[r].rule_id);
    }
    free(cfg->rule_configs);

    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].section < SEC_FIXED_COUNT)
            free_value(&keys[i], cfg);
    }
    md_secret_clear(&cfg->auth.client_secret);
    md_secret_clear(&cfg->auth.private_key);
    md_secret_clear(&cfg->auth.passphrase);
    md_secret_clear(&cfg->mail.password);
    free(cfg->path);
    memset(cfg, 0, sizeof(*cfg));
}

const char *md_cloud_name(enum md_cloud cloud)
{
    for (const struct enum_name *e = cloud_names; e->name != NULL; e++) {
        if (e->value == (int)cloud)
            return e->name;
    }
    return "unknown";
}

const char *md_backend_kind_name(enum md_backend_kind kind)
{
    for (const struct enum_name *e = backend_names; e->name != NULL; e++) {
        if (e->value == (int)kind)
            return e->name;
    }
    return "unknown";
}
