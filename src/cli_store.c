/*
 * mdhunt diff | status | devices: read the store without locking it.
 *
 * Tables and CSV go through md_output_write(), so that they escape and
 * neutralise values as `mdhunt hunt` does; JSON is built with jansson.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mdhunt/cli.h"
#include "mdhunt/diff.h"
#include "mdhunt/exclusions.h"
#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/output.h"
#include "mdhunt/rule.h"
#include "mdhunt/runner.h"
#include "mdhunt/store.h"
#include "mdhunt/table.h"

static const char diff_usage[] =
"Usage: mdhunt diff [--rule ID] [--run N] [--format table|json|csv]\n"
"\n"
"Show the diff of a stored run: the devices that were new, gone,\n"
"returned or renamed, as reported when the run finished, then those that\n"
"exclusions removed and those no longer excluded (uncovered).  Default:\n"
"the newest successful run, of rule ID when --rule is given.\n"
"\n"
"Options:\n"
"  -r, --rule ID      the newest successful run of this rule\n"
"  -n, --run N        the run with this id (see mdhunt status)\n"
"  -f, --format FMT   table (default), json or csv\n"
"  -h, --help         show this help\n";

static const char status_usage[] =
"Usage: mdhunt status [--format table|json]\n"
"\n"
"Show each rule's last run and its result, the rows and the new and\n"
"gone devices it found, the next due time, the failed runs in a row\n"
"and the last error; then the mail digests waiting for delivery and the\n"
"dead letters (digests whose delivery gave up; see mdhunt outbox).\n"
"\n"
"Options:\n"
"  -f, --format FMT   table (default) or json\n"
"  -h, --help         show this help\n";

static const char devices_usage[] =
"Usage: mdhunt devices [--rule ID] [--since DURATION] "
"[--format table|json|csv]\n"
"\n"
"List every device (or other key) the rules have returned, with the\n"
"times mdhunt first and last saw it and the telemetry's FirstSeen and\n"
"LastSeen.\n"
"\n"
"Options:\n"
"  -r, --rule ID          only the devices of this rule\n"
"  -s, --since DURATION   only devices mdhunt first saw within DURATION\n"
"                         before now (5m, 12h, 7d)\n"
"  -f, --format FMT       table (default), json or csv\n"
"  -h, --help             show this help\n";

/* The column types the tables below use, by service type name. */
#define TYPE_STRING "String"
#define TYPE_TIME "DateTime"
#define TYPE_INT "Int64"

struct column_spec {
    const char *name;
    const char *type;
};

/* ---- Shared helpers ---------------------------------------------------- */

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
}

/* Parse --format against the formats a command accepts. */
static int parse_format(const char *cmd, const char *name, int allow_csv,
                        enum md_format *format, struct md_error *err)
{
    if (md_format_from_name(name, format, err) != 0)
        return md_error_prefix(err, "%s", cmd);
    if (*format == MD_FORMAT_NDJSON ||
        (*format == MD_FORMAT_CSV && !allow_csv))
        return md_error_set(err, MD_E_USAGE, "%s: format \"%s\" is not "
                            "available here; use %s", cmd, name,
                            allow_csv ? "table, json or csv"
                                      : "table or json");
    return 0;
}

/* Load the configuration (the defaults when no file exists) and open the
 * store it names read-only. */
static int open_store(struct md_cli *cli, struct md_store **st,
                      struct md_error *err)
{
    if (md_cli_load_config(cli, 0, err) != 0)
        return -1;
    return md_store_open(cli->cfg.store.path, MD_STORE_READ_ONLY, st, err);
}

static struct md_table *new_table(const struct column_spec *cols, size_t n,
                                  struct md_error *err)
{
    struct md_table *t = md_table_new();

    if (t == NULL) {
        oom(err);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (md_table_add_column(t, cols[i].name, cols[i].type, err) != 0) {
            md_table_free(t);
            return NULL;
        }
    }
    return t;
}

/* Set a string cell; NULL leaves it null. */
static int set_text_len(struct md_table *t, struct md_cell *cell,
                        const char *s, size_t len, struct md_error *err)
{
    if (s == NULL)
        return 0;
    cell->len = len;
    cell->text = md_table_strdup(t, s, len);
    if (cell->text == NULL)
        return oom(err);
    cell->kind = MD_J_STRING;
    return 0;
}

static int set_text(struct md_table *t, struct md_cell *cell, const char *s,
                    struct md_error *err)
{
    if (s == NULL)
        return 0;
    cell->len = strlen(s);
    cell->text = md_table_strdup(t, s, cell->len);
    if (cell->text == NULL)
        return oom(err);
    cell->kind = MD_J_STRING;
    return 0;
}

/* Set a datetime cell; MD_STORE_TIME_NONE leaves it null. */
static int set_time(struct md_table *t, struct md_cell *cell, md_instant v,
                    struct md_error *err)
{
    char text[MD_TIME_TEXT_MAX];

    if (v == MD_STORE_TIME_NONE)
        return 0;
    if (set_text(t, cell, md_time_format_seconds(v, text, sizeof(text)),
                 err) != 0)
        return -1;
    cell->v.t = v;
    return 0;
}

static int set_int(struct md_table *t, struct md_cell *cell, int64_t v,
                   struct md_error *err)
{
    char text[32];

    snprintf(text, sizeof(text), "%" PRId64, v);
    if (set_text(t, cell, text, err) != 0)
        return -1;
    cell->kind = MD_J_INTEGER;
    cell->v.i = v;
    return 0;
}

/* Write a table in table or csv format to stdout. */
static int write_table(const struct md_table *t, enum md_format format,
                       struct md_error *err)
{
    struct md_output_options opts;

    md_output_options_init(&opts);
    opts.format = format;
    if (md_output_write(stdout, t, &opts, err) != 0)
        return errno == EPIPE ? 0 : -1;
    return 0;
}

/* A JSON string, or null for NULL.  Text that is not valid UTF-8 gets a
 * '?' for every byte outside ASCII, because JSON text must be Unicode. */
static json_t *json_text(const char *s)
{
    json_t *v;
    char *copy;

    if (s == NULL)
        return json_null();
    v = json_string(s);
    if (v != NULL)
        return v;
    copy = md_strdup(s);
    if (copy == NULL)
        return NULL;
    for (char *p = copy; *p; p++) {
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    }
    v = json_string(copy);
    free(copy);
    return v;
}

static json_t *json_time(md_instant t)
{
    char text[MD_TIME_TEXT_MAX];

    if (t == MD_STORE_TIME_NONE)
        return json_null();
    return json_string(md_time_format(t, text, sizeof(text)));
}

/* Set key of obj to value, taking the reference; a NULL value (out of
 * memory) is reported as -1. */
static int put(json_t *obj, const char *key, json_t *value)
{
    if (value == NULL)
        return -1;
    return json_object_set_new(obj, key, value);
}

/* Write a JSON document to stdout, followed by a newline. */
static int write_json(const json_t *doc, struct md_error *err)
{
    if (json_dumpf(doc, stdout, JSON_INDENT(2)) != 0 ||
        fputc('\n', stdout) == EOF) {
        if (errno == EPIPE)
            return 0;
        return md_error_set(err, MD_E_INTERNAL, "writing the result "
                            "failed: %s", strerror(errno));
    }
    return 0;
}

/* Parse a strictly positive decimal integer. */
static int parse_id(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v <= 0)
        return -1;
    *out = v;
    return 0;
}

/* Print text for people: control characters become '?'. */
static void print_plain(const char *s)
{
    for (; s != NULL && *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        putchar(c < 0x20 || c == 0x7f ? '?' : c);
    }
}

/* ---- mdhunt diff ------------------------------------------------------- */

static const struct column_spec diff_columns[] = {
    { "event", TYPE_STRING },
    { "DeviceName", TYPE_STRING },
    { "DeviceId", TYPE_STRING },
    { "mdhunt_first_seen", TYPE_TIME },
    { "FirstSeen", TYPE_STRING },
    { "LastSeen", TYPE_STRING },
    { "details", TYPE_STRING },
    { "exclusion", TYPE_STRING },
    { "exclusion_expires", TYPE_STRING },
    { "exclusion_reason", TYPE_STRING },
    { "exclusion_owner", TYPE_STRING },
};

/* The table format shows the first DC_COUNT columns and the exclusion
 * columns in sections of their own; CSV has all DC_ALL in one table. */
enum {
    DC_EVENT, DC_NAME, DC_ID, DC_MDHUNT_FIRST, DC_FIRST, DC_LAST,
    DC_DETAILS, DC_COUNT,
    DC_EXCLUSION = DC_COUNT, DC_EXCLUSION_EXPIRES, DC_EXCLUSION_REASON,
    DC_EXCLUSION_OWNER, DC_ALL
};

/* The columns of the excluded and uncovered sections of the table. */
static const struct column_spec exclusion_columns[] = {
    { "DeviceName", TYPE_STRING },
    { "DeviceId", TYPE_STRING },
    { "exclusion", TYPE_STRING },
    { "expires", TYPE_STRING },
    { "reason", TYPE_STRING },
    { "owner", TYPE_STRING },
    { "details", TYPE_STRING },
};

enum {
    XC_NAME, XC_ID, XC_EXCLUSION, XC_EXPIRES, XC_REASON, XC_OWNER,
    XC_DETAILS, XC_COUNT
};

/* A duration in words: "5 days", "1 hour", "90 minutes". */
static void duration_words(int64_t seconds, char *buf, size_t size)
{
    static const struct {
        int64_t seconds;
        const char *unit;
    } units[] = {
        { 86400, "day" }, { 3600, "hour" }, { 60, "minute" }, { 1, "second" },
    };

    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        int64_t n;

        if (seconds % units[i].seconds != 0)
            continue;
        n = seconds / units[i].seconds;
        snprintf(buf, size, "%" PRId64 " %s%s", n, units[i].unit,
                 n == 1 ? "" : "s");
        return;
    }
}

static void event_details(const struct md_event *ev,
                          const struct md_run *run, char *buf, size_t size)
{
    int64_t period = run->period;
    char words[64];

    buf[0] = '\0';
    switch (ev->kind) {
    case MD_EVENT_RETURNED:
        snprintf(buf, size, "returned after %" PRId64 " day%s",
                 ev->days_away, ev->days_away == 1 ? "" : "s");
        break;
    case MD_EVENT_GONE:
        if (period > 0) {
            duration_words(period, words, sizeof(words));
            snprintf(buf, size, "not seen in the last %s", words);
        } else {
            snprintf(buf, size, "not in this run's result");
        }
        break;
    case MD_EVENT_RENAMED:
        snprintf(buf, size, "renamed from %s",
                 ev->old_name != NULL ? ev->old_name : "(unknown)");
        break;
    case MD_EVENT_TRACKED:
        snprintf(buf, size, "new value %s",
                 ev->value != NULL ? ev->value : "(null)");
        break;
    case MD_EVENT_EMPTY_KEY:
        snprintf(buf, size, "row without a key value");
        break;
    case MD_EVENT_EXCLUDED:
        snprintf(buf, size, "%s", ev->first_excluded
                 ? "excluded for the first time" : "excluded");
        break;
    case MD_EVENT_UNCOVERED:
        snprintf(buf, size, "%s", ev->exclusion_expires != MD_STORE_TIME_NONE
                 && run->started >= ev->exclusion_expires
                 ? "no longer excluded: the entry expired"
                 : "no longer excluded: the entry no longer applies");
        break;
    default:
        break;
    }
}

/* Set a cell from member name of a stored row: strings as they are,
 * other values as compact JSON, null and absent as null. */
static int set_member(struct md_table *t, struct md_cell *cell,
                      json_t *row, const char *name, struct md_error *err)
{
    json_t *v = row != NULL ? json_object_get(row, name) : NULL;
    char *text;
    int rc;

    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_string(v))
        return set_text_len(t, cell, json_string_value(v),
                            json_string_length(v), err);
    text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text == NULL)
        return oom(err);
    rc = set_text(t, cell, text, err);
    free(text);
    return rc;
}

static int is_exclusion_event(const struct md_event *ev)
{
    return ev->kind == MD_EVENT_EXCLUDED || ev->kind == MD_EVENT_UNCOVERED;
}

/* Set the exclusion cells of a CSV row, from column first on. */
static int set_exclusion_cells(struct md_table *t, struct md_cell *cells,
                               int first, const struct md_event *ev,
                               struct md_error *err)
{
    char expires[MD_TIME_TEXT_MAX];

    if (!is_exclusion_event(ev))
        return 0;
    if (set_text(t, &cells[first], ev->exclusion_id, err) != 0 ||
        (ev->exclusion_expires != MD_STORE_TIME_NONE &&
         set_text(t, &cells[first + 1],
                  md_exclusion_format_expiry(ev->exclusion_expires, expires,
                                             sizeof(expires)),
                  err) != 0) ||
        set_text(t, &cells[first + 2], ev->exclusion_reason, err) != 0 ||
        set_text(t, &cells[first + 3], ev->exclusion_owner, err) != 0)
        return -1;
    return 0;
}

/* Parse a stored row; NULL when it is missing or not a JSON object. */
static json_t *stored_row(const struct md_event *ev)
{
    json_t *row = NULL;

    if (ev->row_json != NULL)
        row = json_loads(ev->row_json, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                         NULL);
    if (row != NULL && !json_is_object(row)) {
        json_decref(row);
        row = NULL;
    }
    return row;
}

/* Add a row to the excluded or uncovered section of the table format. */
static int add_exclusion_row(struct md_table *t, const struct md_event *ev,
                             const struct md_run *run, struct md_error *err)
{
    char details[512];
    json_t *row = stored_row(ev);
    struct md_cell *cells = md_table_add_row(t);
    int rc = -1;

    if (cells == NULL) {
        oom(err);
        goto out;
    }
    event_details(ev, run, details, sizeof(details));
    if (set_member(t, &cells[XC_NAME], row, "DeviceName", err) != 0 ||
        set_member(t, &cells[XC_ID], row, "DeviceId", err) != 0 ||
        set_text(t, &cells[XC_DETAILS], details, err) != 0)
        goto out;
    rc = set_exclusion_cells(t, cells, XC_EXCLUSION, ev, err);

out:
    json_decref(row);
    return rc;
}

static int add_event_row(struct md_table *t, const struct md_event *ev,
                         const struct md_run *run, struct md_error *err)
{
    char details[512];
    json_t *row = stored_row(ev);
    struct md_cell *cells;
    int rc = -1;

    cells = md_table_add_row(t);
    if (cells == NULL) {
        oom(err);
        goto out;
    }
    event_details(ev, run, details, sizeof(details));

    if (set_text(t, &cells[DC_EVENT], md_event_kind_name(ev->kind),
                 err) != 0 ||
        set_member(t, &cells[DC_ID], row, "DeviceId", err) != 0 ||
        set_time(t, &cells[DC_MDHUNT_FIRST], ev->first_seen, err) != 0 ||
        set_member(t, &cells[DC_FIRST], row, "FirstSeen", err) != 0 ||
        set_member(t, &cells[DC_LAST], row, "LastSeen", err) != 0 ||
        set_text(t, &cells[DC_DETAILS], details[0] ? details : NULL,
                 err) != 0)
        goto out;
    if (t->ncolumns > DC_COUNT &&
        set_exclusion_cells(t, cells, DC_EXCLUSION, ev, err) != 0)
        goto out;
    if (ev->kind == MD_EVENT_RENAMED && ev->new_name != NULL)
        rc = set_text(t, &cells[DC_NAME], ev->new_name, err);
    else
        rc = set_member(t, &cells[DC_NAME], row, "DeviceName", err);

out:
    json_decref(row);
    return rc;
}

static void print_diff_summary(const struct md_run_diff *d)
{
    char started[MD_TIME_TEXT_MAX];
    const struct md_run *run = &d->run;

    fputs("rule ", stdout);
    print_plain(run->rule_id);
    if (d->rule_name != NULL) {
        fputs(": ", stdout);
        print_plain(d->rule_name);
    }
    printf("\nrun %" PRId64 " (%s), started %s, %" PRId64 " rows%s, "
           "%" PRId64 " unchanged%s\n\n", run->id,
           md_run_status_name(run->status),
           md_time_format_seconds(run->started, started, sizeof(started)),
           run->row_count, run->truncated ? " (possibly truncated)" : "",
           run->unchanged_count, run->baseline ? ", baseline" : "");
}

/* Print the table of the events of kind under a heading; nothing when
 * there is none. */
static int write_exclusion_section(const struct md_run_diff *d,
                                   enum md_event_kind kind,
                                   const char *heading, struct md_error *err)
{
    struct md_table *t;
    int rc;

    if (d->run.event_counts[kind] == 0)
        return 0;
    t = new_table(exclusion_columns, XC_COUNT, err);
    if (t == NULL)
        return -1;
    for (size_t i = 0; i < d->nevents; i++) {
        if (d->events[i].kind == kind &&
            add_exclusion_row(t, &d->events[i], &d->run, err) != 0) {
            md_table_free(t);
            return -1;
        }
    }
    printf("\n%s (%zu):\n", heading, t->nrows);
    rc = write_table(t, MD_FORMAT_TABLE, err);
    md_table_free(t);
    return rc;
}

/* The excluded and uncovered sections and the exclusion issues that
 * follow the main table. */
static int write_exclusion_sections(const struct md_run_diff *d,
                                    struct md_error *err)
{
    if (write_exclusion_section(d, MD_EVENT_EXCLUDED, "excluded", err) != 0 ||
        write_exclusion_section(d, MD_EVENT_UNCOVERED,
                                "uncovered, no longer excluded", err) != 0)
        return -1;
    if (d->nexclusion_issues > 0)
        printf("\nexclusion entries not applied:\n");
    for (size_t i = 0; i < d->nexclusion_issues; i++) {
        fputs("  ", stdout);
        print_plain(d->exclusion_issues[i].message);
        putchar('\n');
    }
    return 0;
}

static int write_diff(const struct md_run_diff *d, enum md_format format,
                      struct md_error *err)
{
    struct md_table *t;
    json_t *doc;
    int rc;

    if (format == MD_FORMAT_JSON) {
        doc = md_diff_json(d, err);
        if (doc == NULL)
            return -1;
        rc = write_json(doc, err);
        json_decref(doc);
        return rc;
    }

    t = new_table(diff_columns, format == MD_FORMAT_CSV ? DC_ALL : DC_COUNT,
                  err);
    if (t == NULL)
        return -1;
    for (size_t i = 0; i < d->nevents; i++) {
        if (format == MD_FORMAT_TABLE && is_exclusion_event(&d->events[i]))
            continue;
        if (add_event_row(t, &d->events[i], &d->run, err) != 0) {
            md_table_free(t);
            return -1;
        }
    }
    if (format == MD_FORMAT_TABLE)
        print_diff_summary(d);
    rc = write_table(t, format, err);
    md_table_free(t);
    if (rc == 0 && format == MD_FORMAT_TABLE)
        rc = write_exclusion_sections(d, err);
    return rc;
}

/* Find the run to show: --run, else the newest successful run. */
static int pick_run(struct md_store *st, const char *rule_id,
                    int64_t run_id, struct md_run_diff *d,
                    struct md_error *err)
{
    if (run_id == 0) {
        if (md_store_last_ok_run(st, rule_id, &run_id, err) != 0)
            return -1;
        if (run_id == 0)
            return md_error_set(err, MD_E_USAGE, "diff: store %s has no "
                                "successful run%s%s yet; see mdhunt status",
                                md_store_path(st),
                                rule_id != NULL ? " of rule " : "",
                                rule_id != NULL ? rule_id : "");
    }
    if (md_store_run_diff(st, run_id, d, err) != 0)
        return -1;
    if (rule_id != NULL && md_strcasecmp(d->run.rule_id, rule_id) != 0) {
        md_error_set(err, MD_E_USAGE, "diff: run %" PRId64 " belongs to "
                     "rule %s, not %s", run_id, d->run.rule_id, rule_id);
        md_run_diff_clear(d);
        return -1;
    }
    return 0;
}

int md_cmd_diff(struct md_cli *cli, int argc, char **argv,
                struct md_error *err)
{
    static const struct option options[] = {
        { "rule", required_argument, NULL, 'r' },
        { "run", required_argument, NULL, 'n' },
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct md_run_diff d;
    struct md_store *st = NULL;
    enum md_format format;
    const char *rule_id = NULL;
    const char *format_name = "table";
    int64_t run_id = 0;
    int rc;
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "r:n:f:h", options, NULL)) != -1) {
        switch (c) {
        case 'r':
            rule_id = optarg;
            break;
        case 'n':
            if (parse_id(optarg, &run_id) != 0)
                return md_error_set(err, MD_E_USAGE, "diff: --run \"%s\" "
                                    "is not a run id (a positive whole "
                                    "number)", optarg);
            break;
        case 'f':
            format_name = optarg;
            break;
        case 'h':
            fputs(diff_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE, "diff: unknown option or "
                                "missing value: %s; see mdhunt diff --help",
                                argv[optind - 1]);
        }
    }
    if (optind < argc)
        return md_error_set(err, MD_E_USAGE, "diff: unexpected argument "
                            "\"%s\"; see mdhunt diff --help", argv[optind]);
    if (parse_format("diff", format_name, 1, &format, err) != 0)
        return -1;

    if (open_store(cli, &st, err) != 0)
        return -1;
    memset(&d, 0, sizeof(d));
    rc = pick_run(st, rule_id, run_id, &d, err);
    if (rc == 0) {
        rc = write_diff(&d, format, err);
        md_run_diff_clear(&d);
    }
    md_store_close(st);
    return rc;
}

/* ---- mdhunt status ----------------------------------------------------- */

static const struct column_spec status_columns[] = {
    { "rule", TYPE_STRING },
    { "last_run", TYPE_TIME },
    { "result", TYPE_STRING },
    { "rows", TYPE_INT },
    { "new", TYPE_INT },
    { "gone", TYPE_INT },
    { "next_due", TYPE_TIME },
    { "failures", TYPE_INT },
    { "last_error", TYPE_STRING },
};

enum {
    SC_RULE, SC_LAST, SC_RESULT, SC_ROWS, SC_NEW, SC_GONE, SC_NEXT,
    SC_FAILURES, SC_ERROR, SC_COUNT
};

/* One line of the status: the rule's summary from the store and, when the
 * rule is among the configured ones, its next due time. */
struct status_line {
    const char *rule_id;
    const struct md_rule_status *stored;    /* NULL: never ran */
    const struct md_rule *rule;             /* NULL: not configured */
    md_instant next_due;                    /* MD_STORE_TIME_NONE: unknown */
};

/*
 * Load the configured rules for the next due times.  Their warnings were
 * shown by `rules validate` and `run`, so only errors are logged here,
 * and a rule set that does not load leaves the next due times unknown.
 */
static void load_rules_quietly(const struct md_config *cfg,
                               struct md_ruleset *set)
{
    enum md_log_level level = md_log_get_level();
    struct md_error e;
    size_t n = 0;

    while (cfg->rules.paths != NULL && cfg->rules.paths[n] != NULL)
        n++;
    md_error_clear(&e);
    if (level > MD_LOG_ERROR)
        md_log_set_level(MD_LOG_ERROR);
    if (md_ruleset_load((const char *const *)cfg->rules.paths, n, 0, set,
                        &e) != 0)
        md_error_log("status: next due times unknown: %s", e.message);
    md_log_set_level(level);
}

static int next_due(struct md_store *st, const struct md_config *cfg,
                    const struct md_rule *rule, md_instant now,
                    md_instant *out, struct md_error *err)
{
    struct md_due due;

    if (md_runner_rule_due(st, rule, cfg, now, &due, err) != 0)
        return -1;
    *out = due.ready;
    return 0;
}

/* Merge the stored rules with the configured ones that never ran. */
static int build_status_lines(struct md_store *st, const struct md_config *cfg,
                              const struct md_rule_status *stored,
                              size_t nstored, const struct md_ruleset *set,
                              struct status_line **out, size_t *n,
                              struct md_error *err)
{
    struct status_line *lines;
    md_instant now = md_now();
    size_t count = 0;

    lines = calloc(nstored + set->nrules + 1, sizeof(*lines));
    if (lines == NULL)
        return oom(err);
    for (size_t i = 0; i < nstored; i++) {
        lines[count].rule_id = stored[i].rule_id;
        lines[count].stored = &stored[i];
        lines[count].rule = md_ruleset_find(set, stored[i].rule_id);
        count++;
    }
    for (size_t i = 0; i < set->nrules; i++) {
        int known = 0;

        for (size_t j = 0; j < nstored && !known; j++)
            known = md_strcasecmp(stored[j].rule_id, set->rules[i]->id) == 0;
        if (known)
            continue;
        lines[count].rule_id = set->rules[i]->id;
        lines[count].rule = set->rules[i];
        count++;
    }
    for (size_t i = 0; i < count; i++) {
        lines[i].next_due = MD_STORE_TIME_NONE;
        if (lines[i].rule != NULL &&
            next_due(st, cfg, lines[i].rule, now, &lines[i].next_due,
                     err) != 0) {
            free(lines);
            return -1;
        }
    }
    *out = lines;
    *n = count;
    return 0;
}

/* The result of a run in a word or two: "ok", "ok (baseline)",
 * "failed", "interrupted". */
static const char *run_result(const struct md_run *run)
{
    if (run->status == MD_RUN_OK && run->baseline)
        return "ok (baseline)";
    return md_run_status_name(run->status);
}

/* The error shown in the table: that of the last run when it failed. */
static const char *current_error(const struct md_rule_status *s)
{
    if (s == NULL || s->last_run.id == 0 ||
        s->last_run.status == MD_RUN_OK ||
        s->last_run.status == MD_RUN_RUNNING)
        return NULL;
    return s->last_run.error_message;
}

static int add_status_row(struct md_table *t, const struct status_line *l,
                          struct md_error *err)
{
    const struct md_rule_status *s = l->stored;
    const struct md_run *run = s != NULL ? &s->last_run : NULL;
    struct md_cell *cells = md_table_add_row(t);

    if (cells == NULL)
        return oom(err);
    if (set_text(t, &cells[SC_RULE], l->rule_id, err) != 0 ||
        set_time(t, &cells[SC_NEXT], l->next_due, err) != 0)
        return -1;
    if (run == NULL || run->id == 0)
        return set_text(t, &cells[SC_RESULT], "never run", err);

    if (set_time(t, &cells[SC_LAST], run->started, err) != 0 ||
        set_text(t, &cells[SC_RESULT], run_result(run), err) != 0 ||
        set_int(t, &cells[SC_FAILURES], s->consecutive_failures, err) != 0 ||
        set_text(t, &cells[SC_ERROR], current_error(s), err) != 0)
        return -1;
    if (run->status != MD_RUN_OK)
        return 0;
    if (set_int(t, &cells[SC_ROWS], run->row_count, err) != 0 ||
        set_int(t, &cells[SC_NEW], run->event_counts[MD_EVENT_NEW], err) != 0 ||
        set_int(t, &cells[SC_GONE], run->event_counts[MD_EVENT_GONE],
                err) != 0)
        return -1;
    return 0;
}

static json_t *event_counts_json(const struct md_run *run)
{
    json_t *counts = json_object();

    if (counts == NULL)
        return NULL;
    for (int k = 0; k < MD_EVENT_KIND_COUNT; k++) {
        if (put(counts, md_event_kind_name((enum md_event_kind)k),
                json_integer(run->event_counts[k])) != 0) {
            json_decref(counts);
            return NULL;
        }
    }
    return counts;
}

static json_t *run_json(const struct md_run *run)
{
    json_t *o;

    if (run->id == 0)
        return json_null();
    o = json_object();
    if (o == NULL)
        return NULL;
    if (put(o, "id", json_integer(run->id)) != 0 ||
        put(o, "status", json_string(md_run_status_name(run->status))) != 0 ||
        put(o, "due", json_time(run->due)) != 0 ||
        put(o, "started", json_time(run->started)) != 0 ||
        put(o, "ended", json_time(run->ended)) != 0 ||
        put(o, "rows", json_integer(run->row_count)) != 0 ||
        put(o, "truncated", json_boolean(run->truncated)) != 0 ||
        put(o, "baseline", json_boolean(run->baseline)) != 0 ||
        put(o, "new", json_integer(run->event_counts[MD_EVENT_NEW])) != 0 ||
        put(o, "gone", json_integer(run->event_counts[MD_EVENT_GONE])) != 0 ||
        put(o, "events", event_counts_json(run)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *error_json(const struct md_run *run)
{
    json_t *o;

    if (run->id == 0)
        return json_null();
    o = json_object();
    if (o == NULL)
        return NULL;
    if (put(o, "run", json_integer(run->id)) != 0 ||
        put(o, "at", json_time(run->ended != MD_STORE_TIME_NONE
                               ? run->ended : run->started)) != 0 ||
        put(o, "kind", json_string(md_err_kind_name(run->error_kind))) != 0 ||
        put(o, "http_status", run->http_status != 0
                              ? json_integer(run->http_status)
                              : json_null()) != 0 ||
        put(o, "request_id", json_text(run->request_id)) != 0 ||
        put(o, "message", json_text(run->error_message)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *status_line_json(const struct status_line *l)
{
    const struct md_rule_status *s = l->stored;
    const char *name = s != NULL ? s->name : l->rule->name;
    /* A status line has a stored status, a configured rule or both, so
     * s is not NULL when l->rule is. */
    /* cppcheck-suppress nullPointerRedundantCheck */
    const char *file = l->rule != NULL ? l->rule->file : s->file;
    json_t *o = json_object();

    if (o == NULL)
        return NULL;
    if (put(o, "id", json_text(l->rule_id)) != 0 ||
        put(o, "name", json_text(name)) != 0 ||
        put(o, "file", json_text(file)) != 0 ||
        put(o, "configured", json_boolean(l->rule != NULL)) != 0 ||
        put(o, "last_run", s != NULL ? run_json(&s->last_run)
                                     : json_null()) != 0 ||
        put(o, "last_ok_run", s != NULL ? run_json(&s->last_ok_run)
                                        : json_null()) != 0 ||
        put(o, "next_due", json_time(l->next_due)) != 0 ||
        put(o, "consecutive_failures",
            json_integer(s != NULL ? s->consecutive_failures : 0)) != 0 ||
        put(o, "last_error", s != NULL ? error_json(&s->last_failed_run)
                                       : json_null()) != 0 ||
        put(o, "entities", json_integer(s != NULL ? s->entity_count
                                                  : 0)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The ids of the pending and of the dead mail digests, as JSON arrays
 * under "pending" and "dead". */
static json_t *mail_json(struct md_store *st, struct md_error *err)
{
    struct md_outbox_digest *v = NULL;
    json_t *o = NULL;
    size_t n = 0;

    if (md_store_digest_list(st, (1u << MD_DIGEST_PENDING) |
                                 (1u << MD_DIGEST_DEAD), &v, &n, err) != 0)
        return NULL;
    o = json_pack("{s:[], s:[]}", "pending", "dead");
    for (size_t i = 0; o != NULL && i < n; i++) {
        json_t *list = json_object_get(o, v[i].state == MD_DIGEST_DEAD
                                              ? "dead" : "pending");

        if (json_array_append_new(list, json_integer(v[i].id)) != 0) {
            json_decref(o);
            o = NULL;
        }
    }
    md_outbox_digests_free(v, n);
    if (o == NULL)
        oom(err);
    return o;
}

/* Print a line per non-empty list of mail_json() below the table. */
static void print_mail_status(const json_t *mail)
{
    static const char *const lists[] = { "dead", "pending" };

    for (size_t l = 0; l < 2; l++) {
        const json_t *ids = json_object_get(mail, lists[l]);
        size_t n = json_array_size(ids);

        if (n == 0)
            continue;
        if (l == 0)
            printf("\nmail: %zu dead letter%s (delivery gave up), digest%s",
                   n, n == 1 ? "" : "s", n == 1 ? "" : "s");
        else
            printf("\nmail: %zu digest%s waiting for delivery,", n,
                   n == 1 ? "" : "s");
        for (size_t i = 0; i < n; i++)
            printf("%s %" JSON_INTEGER_FORMAT, i > 0 ? "," : "",
                   json_integer_value(json_array_get(ids, i)));
        printf("; see mdhunt outbox\n");
    }
}

static int write_status(struct md_store *st, const struct status_line *lines,
                        size_t n, enum md_format format, struct md_error *err)
{
    json_t *mail;
    struct md_table *t;
    json_t *doc;
    json_t *rules;
    int rc;

    if (format == MD_FORMAT_JSON) {
        doc = json_object();
        rules = json_array();
        if (doc == NULL || rules == NULL ||
            put(doc, "format", json_string("mdhunt.status/1")) != 0 ||
            put(doc, "store", json_text(md_store_path(st))) != 0) {
            json_decref(rules);
            json_decref(doc);
            return oom(err);
        }
        if (put(doc, "rules", rules) != 0) {
            json_decref(doc);
            return oom(err);
        }
        mail = mail_json(st, err);
        if (mail == NULL || put(doc, "mail", mail) != 0) {
            json_decref(doc);
            return mail == NULL ? -1 : oom(err);
        }
        for (size_t i = 0; i < n; i++) {
            if (json_array_append_new(rules, status_line_json(&lines[i]))) {
                json_decref(doc);
                return oom(err);
            }
        }
        rc = write_json(doc, err);
        json_decref(doc);
        return rc;
    }

    t = new_table(status_columns, SC_COUNT, err);
    if (t == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (add_status_row(t, &lines[i], err) != 0) {
            md_table_free(t);
            return -1;
        }
    }
    rc = write_table(t, format, err);
    md_table_free(t);
    if (rc == 0) {
        mail = mail_json(st, err);
        if (mail == NULL)
            return -1;
        print_mail_status(mail);
        json_decref(mail);
    }
    return rc;
}

int md_cmd_status(struct md_cli *cli, int argc, char **argv,
                  struct md_error *err)
{
    static const struct option options[] = {
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct md_ruleset set = { NULL, 0 };
    struct md_rule_status *stored = NULL;
    struct status_line *lines = NULL;
    struct md_store *st = NULL;
    enum md_format format;
    const char *format_name = "table";
    size_t nstored = 0;
    size_t nlines = 0;
    int rc = -1;
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "f:h", options, NULL)) != -1) {
        switch (c) {
        case 'f':
            format_name = optarg;
            break;
        case 'h':
            fputs(status_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE, "status: unknown option "
                                "or missing value: %s; see mdhunt status "
                                "--help", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return md_error_set(err, MD_E_USAGE, "status: unexpected argument "
                            "\"%s\"", argv[optind]);
    if (parse_format("status", format_name, 0, &format, err) != 0)
        return -1;

    if (open_store(cli, &st, err) != 0)
        return -1;
    if (md_store_status_all(st, &stored, &nstored, err) != 0)
        goto out;
    load_rules_quietly(&cli->cfg, &set);
    if (build_status_lines(st, &cli->cfg, stored, nstored, &set, &lines,
                           &nlines, err) != 0)
        goto out;
    rc = write_status(st, lines, nlines, format, err);

out:
    free(lines);
    md_ruleset_free(&set);
    md_rule_statuses_free(stored, nstored);
    md_store_close(st);
    return rc;
}

/* ---- mdhunt devices ---------------------------------------------------- */

static const struct column_spec device_columns[] = {
    { "rule", TYPE_STRING },
    { "DeviceName", TYPE_STRING },
    { "DeviceId", TYPE_STRING },
    { "first_seen", TYPE_TIME },
    { "last_seen", TYPE_TIME },
    { "FirstSeen", TYPE_TIME },
    { "LastSeen", TYPE_TIME },
    { "runs", TYPE_INT },
    { "key", TYPE_STRING },
};

enum {
    VC_RULE, VC_NAME, VC_ID, VC_FIRST, VC_LAST, VC_TFIRST, VC_TLAST,
    VC_RUNS, VC_KEY, VC_COUNT
};

static int add_device_row(struct md_table *t, const struct md_entity *e,
                          struct md_error *err)
{
    struct md_cell *cells = md_table_add_row(t);

    if (cells == NULL)
        return oom(err);
    if (set_text(t, &cells[VC_RULE], e->rule_id, err) != 0 ||
        set_text(t, &cells[VC_NAME], e->device_name, err) != 0 ||
        set_text(t, &cells[VC_ID], e->device_id, err) != 0 ||
        set_time(t, &cells[VC_FIRST], e->first_seen, err) != 0 ||
        set_time(t, &cells[VC_LAST], e->last_seen, err) != 0 ||
        set_time(t, &cells[VC_TFIRST], e->telemetry_first_seen, err) != 0 ||
        set_time(t, &cells[VC_TLAST], e->telemetry_last_seen, err) != 0 ||
        set_int(t, &cells[VC_RUNS], e->runs_seen, err) != 0 ||
        set_text(t, &cells[VC_KEY], e->key, err) != 0)
        return -1;
    return 0;
}

static json_t *device_json(const struct md_entity *e)
{
    json_t *o = json_object();

    if (o == NULL)
        return NULL;
    if (put(o, "rule", json_text(e->rule_id)) != 0 ||
        put(o, "key", json_text(e->key)) != 0 ||
        put(o, "DeviceName", json_text(e->device_name)) != 0 ||
        put(o, "DeviceId", json_text(e->device_id)) != 0 ||
        put(o, "first_seen", json_time(e->first_seen)) != 0 ||
        put(o, "first_run", json_integer(e->first_run)) != 0 ||
        put(o, "last_seen", json_time(e->last_seen)) != 0 ||
        put(o, "last_run", json_integer(e->last_run)) != 0 ||
        put(o, "FirstSeen", json_time(e->telemetry_first_seen)) != 0 ||
        put(o, "LastSeen", json_time(e->telemetry_last_seen)) != 0 ||
        put(o, "runs", json_integer(e->runs_seen)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int write_devices(struct md_entity *v, size_t n, md_instant since,
                         enum md_format format, struct md_error *err)
{
    struct md_table *t = NULL;
    json_t *doc = NULL;
    json_t *list = NULL;
    int rc = -1;

    if (format == MD_FORMAT_JSON) {
        doc = json_object();
        list = json_array();
        if (doc == NULL || list == NULL ||
            put(doc, "format", json_string("mdhunt.devices/1")) != 0) {
            json_decref(list);
            goto fail_oom;
        }
        if (put(doc, "devices", list) != 0)
            goto fail_oom;
    } else {
        t = new_table(device_columns, VC_COUNT, err);
        if (t == NULL)
            return -1;
    }

    for (size_t i = 0; i < n; i++) {
        if (since != MD_STORE_TIME_NONE && v[i].first_seen < since)
            continue;
        if (doc != NULL) {
            if (json_array_append_new(list, device_json(&v[i])) != 0)
                goto fail_oom;
        } else if (add_device_row(t, &v[i], err) != 0) {
            goto out;
        }
    }
    rc = doc != NULL ? write_json(doc, err) : write_table(t, format, err);
    goto out;

fail_oom:
    oom(err);
out:
    json_decref(doc);
    md_table_free(t);
    return rc;
}

int md_cmd_devices(struct md_cli *cli, int argc, char **argv,
                   struct md_error *err)
{
    static const struct option options[] = {
        { "rule", required_argument, NULL, 'r' },
        { "since", required_argument, NULL, 's' },
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct md_entity *v = NULL;
    struct md_store *st = NULL;
    enum md_format format;
    const char *rule_id = NULL;
    const char *format_name = "table";
    md_instant since = MD_STORE_TIME_NONE;
    int64_t seconds;
    size_t n = 0;
    int rc;
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "r:s:f:h", options, NULL)) != -1) {
        switch (c) {
        case 'r':
            rule_id = optarg;
            break;
        case 's':
            if (md_duration_parse(optarg, &seconds) != 0)
                return md_error_set(err, MD_E_USAGE, "devices: --since "
                                    "\"%s\" is not a duration; write a "
                                    "number and a unit s, m, h or d "
                                    "(12h, 7d)", optarg);
            if (seconds < INT64_MAX / MD_TICKS_PER_SECOND)
                since = md_now() - seconds * MD_TICKS_PER_SECOND;
            break;
        case 'f':
            format_name = optarg;
            break;
        case 'h':
            fputs(devices_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE, "devices: unknown option "
                                "or missing value: %s; see mdhunt devices "
                                "--help", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return md_error_set(err, MD_E_USAGE, "devices: unexpected argument "
                            "\"%s\"", argv[optind]);
    if (parse_format("devices", format_name, 1, &format, err) != 0)
        return -1;

    if (open_store(cli, &st, err) != 0)
        return -1;
    rc = md_store_devices(st, rule_id, MD_STORE_TIME_NONE, &v, &n, err);
    if (rc == 0)
        rc = write_devices(v, n, since, format, err);
    md_entities_free(v, n);
    md_store_close(st);
    return rc;
}
