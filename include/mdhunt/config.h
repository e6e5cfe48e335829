/*
 * The INI configuration (default /etc/mdhunt/mdhunt.ini).
 *
 * md_config_load() reads and validates the whole file.  Unknown sections
 * and keys, malformed values, a key or section given twice, missing
 * required keys and over-long lines are configuration errors
 * (MD_E_CONFIG) whose message names the file, the line and the key.
 * Every key, its default and its unit are documented in
 * config/mdhunt.ini.example.
 *
 * Secrets (the client secret, a private key and its passphrase, the SMTP
 * password) are read only into struct md_secret fields and never appear
 * in a message.
 */
#ifndef MDHUNT_CONFIG_H
#define MDHUNT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/buf.h"
#include "mdhunt/error.h"

#define MD_DEFAULT_CONFIG_PATH "/etc/mdhunt/mdhunt.ini"

enum md_backend_kind {
    MD_BACKEND_GRAPH = 0,
    MD_BACKEND_DEFENDER,
    MD_BACKEND_SENTINEL
};

/* National clouds; see md_auth_cloud_authority() for their hosts. */
enum md_cloud {
    MD_CLOUD_PUBLIC = 0,
    MD_CLOUD_USGOV,         /* US Government Community Cloud (GCC) */
    MD_CLOUD_USGOV_HIGH,    /* GCC High */
    MD_CLOUD_DOD,           /* US Department of Defense */
    MD_CLOUD_CHINA          /* operated by 21Vianet: no hunting API */
};

/* Signature algorithm of a certificate's client assertion. */
enum md_assertion_alg {
    MD_ASSERTION_PS256 = 0, /* RSASSA-PSS with SHA-256, x5t#S256 header */
    MD_ASSERTION_RS256      /* RSASSA-PKCS1-v1_5 with SHA-256, x5t header */
};

enum md_first_run {
    MD_FIRST_RUN_BASELINE = 0,
    MD_FIRST_RUN_REPORT
};

enum md_send_when {
    MD_SEND_NEW = 0,
    MD_SEND_ALWAYS,
    MD_SEND_NEVER
};

/* Per-rule overrides from a [rule "ID"] section. */
struct md_rule_config {
    char *rule_id;
    char **key_columns;     /* key = COLUMN[,COLUMN]; NULL-terminated */
    char *track_column;     /* track = COLUMN, or NULL */
    int line;               /* line of the section header */
};

struct md_config {
    char *path;             /* the file read, or NULL for defaults only */

    struct {
        char *tenant_id;
        char *client_id;
        char *client_secret_file;
        int client_secret_inline;     /* client_secret = ... was used */
        struct md_secret client_secret;
        enum md_cloud cloud;
        char *authority_url;          /* NULL: from the cloud table */
        char *scope;                  /* NULL: by backend and cloud */
        char *certificate_file;       /* PEM certificate: use a client
                                         assertion instead of a secret */
        char *private_key_file;       /* NULL: the key is in
                                         certificate_file */
        char *passphrase_file;        /* for an encrypted private key */
        enum md_assertion_alg assertion_alg;    /* default PS256 */
        struct md_secret private_key; /* PEM text of the key */
        struct md_secret passphrase;
    } auth;

    struct {
        enum md_backend_kind backend;
        char *url;                    /* NULL: the backend's default host */
        char *ca_file;
        long connect_timeout;         /* seconds, default 15 */
        long timeout;                 /* seconds, default 200 */
        char *proxy;
        size_t max_reply_size;        /* bytes, default 256 MiB */
        char *workspace_id;           /* sentinel backend */
        char *default_timespan;       /* sentinel backend: ISO 8601
                                         duration, default P30D */
        long max_retries;             /* retries of a request, default 4;
                                         0: none */
        int64_t max_retry_time;       /* seconds a request may spend
                                         waiting to retry, default 5m */
        long max_calls_per_minute;    /* client-side budget per tenant
                                         and application, default 40 */
        long max_calls_per_hour;      /* default 1400 */
    } api;

    struct {
        char **paths;                 /* NULL-terminated; default
                                         /etc/mdhunt/rules */
    } rules;

    struct {
        char *path;                   /* default /var/lib/mdhunt/mdhunt.db */
        int configured;               /* a [store] section was present */
        long keep_runs;               /* default 100 */
        int64_t keep_days;            /* seconds, default 90d */
    } store;

    struct {
        int64_t default_frequency;    /* seconds, default 1h */
        int64_t jitter;               /* seconds, default 0 */
    } schedule;

    struct {
        int64_t realert_after;        /* seconds, default 30d */
        enum md_first_run first_run;
        char *exclusions;             /* exclusions YAML file, or NULL */
        int64_t max_exclusion_age;    /* seconds, default 365d */
    } report;

    struct {
        int enabled;                  /* a [mail] section was present */
        char *smtp_url;
        char *username;
        char *password_file;
        struct md_secret password;
        char *ca_file;
        char *from;
        char **to;                    /* NULL-terminated */
        char **cc;                    /* NULL-terminated */
        char *subject_prefix;         /* default "[mdhunt]" */
        enum md_send_when send_when;
        int64_t digest_every;         /* seconds, default 1h */
        long max_rows_in_body;        /* default 200 */
    } mail;

    struct md_rule_config *rule_configs;
    size_t nrule_configs;
};

/* Fill cfg with the defaults, with no file read.  Free with
 * md_config_free(). */
int md_config_init(struct md_config *cfg);

/*
 * Read and validate path into cfg (which md_config_load initialises).
 * The whole file is checked: the first error is returned in err and
 * every later one is logged, up to 20, so that one run shows them all.
 * On error cfg contains nothing that needs freeing; when the file could not
 * be opened, errno keeps the reason (ENOENT for a missing file).  Warns
 * (through the log) when the file contains an inline client_secret and
 * group or others can read it.
 */
int md_config_load(const char *path, struct md_config *cfg,
                   struct md_error *err);

/*
 * Check what commands that call the API need: tenant_id, client_id and a
 * credential.  With [auth] certificate_file the credential is a
 * certificate: the PEM private key (private_key_file, else
 * certificate_file) is loaded into cfg->auth.private_key and the
 * passphrase_file, when set, into cfg->auth.passphrase; a client secret
 * set as well is an error.  Otherwise it is a client secret
 * (client_secret_file, else $MDHUNT_CLIENT_SECRET, else an inline
 * client_secret, which is warned about), loaded into
 * cfg->auth.client_secret.  A secret or passphrase file loses one
 * trailing LF or CRLF; an empty, unreadable or oversized file (4096
 * bytes, 65536 for a key) is an error naming its path, and a file that
 * others can read is warned about.
 */
int md_config_require_auth(struct md_config *cfg, struct md_error *err);

/* Check that a [mail] section exists and, when [mail] username is set,
 * load the SMTP password into cfg->mail.password (password_file, read as
 * the client secret file is, else $MDHUNT_SMTP_PASSWORD).  Without a
 * username no password is needed or loaded. */
int md_config_require_mail(struct md_config *cfg, struct md_error *err);

/* The [rule "ID"] section for a rule id (compared ignoring ASCII case,
 * as GUIDs are), or NULL. */
const struct md_rule_config *md_config_rule(const struct md_config *cfg,
                                            const char *rule_id);

/* Wipe secrets, free everything cfg owns and zero cfg, so that freeing
 * it twice is harmless. */
void md_config_free(struct md_config *cfg);

/* The name a backend has in the file: "graph", "defender", "sentinel". */
const char *md_backend_kind_name(enum md_backend_kind kind);

/* The name a cloud has in the file: "public", "usgov", "usgov-high",
 * "dod", "china". */
const char *md_cloud_name(enum md_cloud cloud);

#endif
