/*
 * The mail digest: a model of what several runs of several rules found,
 * the decision whether to send it, and its text, HTML and CSV renderings.
 *
 * The runner fills a digest from stored diff events with md_digest_add_*;
 * every string passed in is copied, so values read from SQLite may be
 * freed right after the call.  All strings are treated as untrusted: the
 * renderings escape or neutralise them for their format.
 */
#ifndef MDHUNT_REPORT_H
#define MDHUNT_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/buf.h"
#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"

/* The change of a device in a run against the rule's earlier runs. */
enum md_change {
    MD_CHANGE_NEW = 0,      /* never seen by this rule before */
    MD_CHANGE_RETURNED,     /* seen before, then gone, now back */
    MD_CHANGE_RENAMED,      /* same DeviceId under another DeviceName */
    MD_CHANGE_TRACKED,      /* a known device with a new value of the
                               rule's track column */
    MD_CHANGE_BASELINE,     /* found by the rule's first run: review once */
    MD_CHANGE_GONE,         /* not seen for the rule's gone period */
    MD_CHANGE_EXCLUDED,     /* excluded by an exclusion entry for the first
                               time */
    MD_CHANGE_UNCOVERED     /* excluded before, no longer: its entry
                               expired, was removed or no longer matches */
};

/* Lower-case name of a change: "new", "returned", "renamed", "tracked",
 * "baseline", "gone", "excluded", "uncovered". */
const char *md_change_name(enum md_change change);

/* A result column of a hit other than the device columns ("Signer",
 * "FileName", "Count" ...), as text. */
struct md_digest_column {
    const char *name;
    const char *value;          /* NULL for a null cell */
};

/* One device found by one rule. */
struct md_digest_hit {
    size_t rule;                /* index returned by md_digest_add_rule() */
    enum md_change change;
    const char *device_id;      /* DeviceId, or NULL when the rule has none */
    const char *device_name;    /* DeviceName, or NULL */
    const char *previous_name;  /* MD_CHANGE_RENAMED: the earlier name */
    const char *tracked_column; /* MD_CHANGE_TRACKED: the track column */
    const char *tracked_value;  /* and its new value */
    md_instant first_seen;      /* the telemetry's FirstSeen; 0: unknown */
    md_instant last_seen;       /* the telemetry's LastSeen; 0: unknown */
    md_instant observed;        /* when mdhunt first stored it; 0: unknown */
    const struct md_digest_column *columns;
    size_t ncolumns;
    /* MD_CHANGE_EXCLUDED, MD_CHANGE_UNCOVERED: the exclusion entry */
    const char *exclusion_id;
    const char *exclusion_reason;
    const char *exclusion_owner;
    md_instant exclusion_expires;   /* when it stops applying; 0: unknown */
};

/* The devices one exclusion entry excluded in a rule's latest successful
 * run. */
struct md_digest_exclusion {
    const char *id;
    const char *reason;
    const char *owner;
    md_instant expires;         /* when it stops applying; 0: unknown */
    long devices;
};

/* One rule covered by the digest: its metadata, its latest run and its
 * health over the runs the digest covers. */
struct md_digest_rule {
    const char *rule_id;
    const char *name;           /* NULL: the id is shown */
    const char *severity;       /* "High", "Medium" ..., or NULL */
    const char *const *tactics;
    size_t ntactics;
    const char *const *techniques;  /* "T1219", "T1566.001" ... */
    size_t ntechniques;
    const char *backend;        /* md_backend_kind_name() */
    md_instant window_start;    /* time window of the latest run */
    md_instant window_end;
    const char *query_sha256;   /* hex SHA-256 of the query, or NULL */
    int64_t frequency;          /* seconds between runs; 0: unknown */
    int64_t gone_after;         /* seconds unseen before a device is gone */
    long excluded;              /* devices removed by exclusions */

    long runs;                  /* runs in the digest, failed ones too */
    long failed_runs;
    long truncated_runs;        /* results possibly cut at the row limit */
    long throttled_runs;        /* runs that met a 429 or a CPU quota */
    long consecutive_failures;  /* failed runs in a row, up to the last */
    md_instant last_success;    /* end of the last successful run; 0: never */
    md_instant first_run;       /* the rule's first run ever; 0: unknown */
    const char *last_error_kind;    /* md_err_kind_name() of the last
                                       failure, or NULL */
    const char *last_error;     /* its message, or NULL */
    const struct md_digest_exclusion *exclusions;   /* per entry, in the
                                                       latest run */
    size_t nexclusions;
    const char *const *exclusion_issues;    /* entries the latest run could
                                               not apply, with file and
                                               line */
    size_t nexclusion_issues;
};

/*
 * A digest.  Read its fields freely, but change it only through the
 * md_digest_* functions, which own every string and array in it.
 */
struct md_digest {
    char *tenant;               /* tenant domain or id */
    md_instant generated;       /* the digest's time (the mail's Date) */
    struct md_digest_rule *rules;
    size_t nrules;
    struct md_digest_hit *hits;
    size_t nhits;
    int64_t *run_ids;           /* the stored runs the digest covers */
    size_t nrun_ids;
    struct md_digest_strings *strings;  /* private: the copied strings */
};

/*
 * Create an empty digest for a tenant at a time.  Free it with
 * md_digest_free().
 */
int md_digest_new(const char *tenant, md_instant generated,
                  struct md_digest **out, struct md_error *err);
void md_digest_free(struct md_digest *d);

/* Add a rule (deep copy) and store its index in *index when index is not
 * NULL. */
int md_digest_add_rule(struct md_digest *d, const struct md_digest_rule *rule,
                       size_t *index, struct md_error *err);

/* Add a hit (deep copy).  hit->rule must be an index of an added rule. */
int md_digest_add_hit(struct md_digest *d, const struct md_digest_hit *hit,
                      struct md_error *err);

/* Record a stored run the digest covers.  The run ids decide the
 * digest's fingerprint. */
int md_digest_add_run(struct md_digest *d, int64_t run_id,
                      struct md_error *err);

/*
 * Write the hex SHA-256 of the covered run ids (sorted, duplicates
 * ignored), the rules' run windows and the tenant into hex, which needs 65
 * bytes; a digest without runs hashes its time instead.  The same runs
 * always give the same fingerprint.  The mail's Message-ID and MIME
 * boundaries derive from it.
 */
void md_digest_fingerprint(const struct md_digest *d, char hex[65]);

/* Number of distinct devices with a hit of this change; a device found by
 * two rules counts once. */
size_t md_digest_count_devices(const struct md_digest *d,
                               enum md_change change);

/* Consecutive failures after which a rule's health forces a digest out. */
#define MD_HEALTH_MAX_FAILURES 3

/* The reason to send a digest; MD_SEND_REASON_NONE means none. */
enum md_send_reason {
    MD_SEND_REASON_NONE = 0,
    MD_SEND_REASON_ALWAYS,      /* send_when = always */
    MD_SEND_REASON_CHANGES,     /* new, returned, renamed, tracked or
                                   uncovered devices */
    MD_SEND_REASON_BASELINE,    /* a baseline to review */
    MD_SEND_REASON_FAILING,     /* a rule failed MD_HEALTH_MAX_FAILURES
                                   times in a row */
    MD_SEND_REASON_STALE        /* a rule's last success is older than
                                   twice its frequency */
};

/*
 * Decide whether to send a digest at now.  send_when = never sends
 * nothing, and always sends every digest.  new sends when a device is
 * new, returned, renamed, tracked or uncovered, or when a baseline waits
 * for review.  Excluded devices alone send nothing.
 * It also
 * sends when a rule's health is bad (a failing rule or a stale last
 * success), so that an expired secret does not look like a quiet week.
 * A rule that never succeeded is stale when its first run is older than
 * twice its frequency.
 */
enum md_send_reason md_digest_should_send(const struct md_digest *d,
                                          enum md_send_when when,
                                          md_instant now);

/* Lower-case name of a reason, for logs ("changes", "failing" ...). */
const char *md_send_reason_name(enum md_send_reason reason);

/* Whether a rule's health is bad at now (failing or stale). */
int md_digest_rule_unhealthy(const struct md_digest_rule *rule,
                             md_instant now);

struct md_report_options {
    const char *subject_prefix;     /* NULL: "[mdhunt]" */
    long max_rows_in_body;          /* devices shown in the body; the rest
                                       are only in the CSV; < 0: 0 */
};

/* Maximum characters of one value shown in the text and HTML parts; the
 * CSV attachment keeps values whole. */
#define MD_REPORT_VALUE_MAX 200

/*
 * Append the subject, e.g. "[mdhunt] 2 new devices (tenant
 * contoso.onmicrosoft.com)", as UTF-8 with control characters removed.
 * Mail encodes it for the header.
 */
int md_report_subject(const struct md_digest *d,
                      const struct md_report_options *opts,
                      struct md_buf *out, struct md_error *err);

/*
 * Append the text/plain body (UTF-8, lines ending in "\n").  It lists
 * new, returned, renamed and tracked devices grouped across rules, then a
 * section per rule with its baseline and gone devices in short form and
 * its excluded devices per exclusion entry.  The exclusions section lists
 * the devices excluded for the first time and those no longer excluded
 * (uncovered).  The health section ends with the exclusion entries a run
 * could not apply.  Control characters and bidi controls in values are
 * replaced with visible marks.
 */
int md_report_text(const struct md_digest *d,
                   const struct md_report_options *opts,
                   struct md_buf *out, struct md_error *err);

/* Append the text/html body: the same content, every value HTML-escaped,
 * inline styles only, no script and no remote content. */
int md_report_html(const struct md_digest *d,
                   const struct md_report_options *opts,
                   struct md_buf *out, struct md_error *err);

/*
 * Append the CSV attachment (RFC 4180, CRLF line ends, a header row).  It
 * has one row per new, returned, renamed, tracked, baseline, excluded
 * (for the first time) or uncovered hit, with baseline rows marked for
 * review and the exclusion entry of the last two.  One column per result
 * column of any rule follows.  Fields are written by md_csv_write_field()
 * with formula neutralisation, so a value starting with = + - @ tab or CR
 * gets a leading apostrophe.
 */
int md_report_csv(const struct md_digest *d, struct md_buf *out,
                  struct md_error *err);

/* Write the attachment's name, "mdhunt-YYYYMMDD-HHMMSS.csv" from the
 * digest time, into buf (at least 32 bytes). */
void md_report_csv_name(const struct md_digest *d, char *buf, size_t size);

/* Append s with & < > " ' replaced by character references. */
int md_html_escape(struct md_buf *out, const char *s);

/*
 * Append s for a plain-text reader: invalid UTF-8 becomes U+FFFD, control
 * characters become '?', and bidi and invisible format characters
 * (U+200B-U+200F, U+202A-U+202E, U+2066-U+2069, U+061C, U+FEFF ...)
 * become a visible "<U+202E>".  At most max_chars characters are kept
 * (0: no limit), followed by "..." and the count left out.
 */
int md_text_sanitize(struct md_buf *out, const char *s, size_t max_chars);

#endif
