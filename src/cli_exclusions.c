/*
 * mdhunt exclusions check | list: validate the exclusions file and show
 * its entries with what they matched.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mdhunt/buf.h"
#include "mdhunt/cli.h"
#include "mdhunt/exclusions.h"
#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/output.h"
#include "mdhunt/rule.h"
#include "mdhunt/store.h"
#include "mdhunt/table.h"

static const char exclusions_usage[] =
"Usage: mdhunt exclusions check [FILE]\n"
"       mdhunt exclusions list [--format table|json|csv] [FILE]\n"
"\n"
"check  validate the exclusions file ([report] exclusions, or FILE):\n"
"       YAML, required keys, rule ids against the configured rules,\n"
"       dates, [report] max_exclusion_age and regular expressions;\n"
"       every problem is reported with its file and line (exit status\n"
"       2 when there is one)\n"
"list   show each entry, soonest expiry first, with the devices it\n"
"       excluded in each rule's newest successful run; rule ids are\n"
"       not checked here\n"
"\n"
"Options of list:\n"
"  -f, --format FMT   table (default), json or csv\n"
"  -h, --help         show this help\n";

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
}

/* The file to read: FILE when given, else [report] exclusions. */
static int exclusions_path(struct md_cli *cli, const char *cmd,
                           const char *file, const char **path,
                           struct md_error *err)
{
    if (md_cli_load_config(cli, file == NULL, err) != 0)
        return -1;
    *path = file != NULL ? file : cli->cfg.report.exclusions;
    if (*path == NULL)
        return md_error_set(err, MD_E_USAGE, "exclusions %s: no exclusions "
                            "file; set [report] exclusions in %s or name "
                            "the file", cmd, cli->config_path);
    return 0;
}

/* ---- check ------------------------------------------------------------- */

/* Load the configured rules.  When one fails, none is kept and rule ids
 * are not checked; `mdhunt rules validate` shows why. */
static int load_rules(const struct md_config *cfg, struct md_ruleset *set)
{
    struct md_error e;
    size_t n = 0;

    while (cfg->rules.paths != NULL && cfg->rules.paths[n] != NULL)
        n++;
    md_error_clear(&e);
    if (md_ruleset_load((const char *const *)cfg->rules.paths, n, 0, set,
                        &e) == 0)
        return 0;
    md_warn("exclusions check: rule ids not checked, because the rules "
            "did not load: %s", e.message);
    return -1;
}

static int cmd_check(struct md_cli *cli, const char *file,
                     struct md_error *err)
{
    struct md_exclusions_options opts;
    struct md_exclusions *x = NULL;
    struct md_ruleset set = { NULL, 0 };
    const char *path;
    size_t expired = 0;
    int rc;

    if (exclusions_path(cli, "check", file, &path, err) != 0)
        return -1;
    memset(&opts, 0, sizeof(opts));
    if (load_rules(&cli->cfg, &set) == 0)
        opts.rules = &set;
    opts.max_age = cli->cfg.report.max_exclusion_age;
    opts.now = md_now();
    rc = md_exclusions_load(path, &opts, &x, err);
    md_ruleset_free(&set);
    if (rc != 0)
        return -1;

    for (size_t i = 0; i < x->nentries; i++) {
        const struct md_exclusion *e = &x->entries[i];

        if (!md_exclusion_expired(e, opts.now))
            continue;
        expired++;
        md_warn("%s:%d: entry %s expired (expires %s) and no longer "
                "applies; renew or remove it", path, e->line, e->id,
                e->expires_text);
    }
    printf("%s: valid, %zu entr%s, %zu expired, sha256 %s\n", path,
           x->nentries, x->nentries == 1 ? "y" : "ies", expired, x->hash);
    md_exclusions_free(x);
    return 0;
}

/* ---- list -------------------------------------------------------------- */

/* One line of the list: an entry and what it matched. */
struct list_line {
    const struct md_exclusion *entry;
    int64_t devices;            /* -1: unknown (no store) */
    char *by_rule;              /* "RULE: N, ..." or NULL */
};

static int compare_lines(const void *a, const void *b)
{
    const struct list_line *x = a;
    const struct list_line *y = b;

    if (x->entry->expires != y->entry->expires)
        return x->entry->expires < y->entry->expires ? -1 : 1;
    return strcmp(x->entry->id, y->entry->id);
}

/* Read the counts from the store, or leave *counts NULL with a warning
 * when the store cannot be read (no run yet, for one). */
static int read_counts(struct md_cli *cli, struct md_exclusion_count **counts,
                       size_t *n, struct md_error *err)
{
    struct md_store *st = NULL;
    struct md_error e;

    *counts = NULL;
    *n = 0;
    md_error_clear(&e);
    if (md_store_open(cli->cfg.store.path, MD_STORE_READ_ONLY, &st,
                      &e) != 0) {
        md_warn("exclusions list: matched devices unknown: %s", e.message);
        return 0;
    }
    if (md_store_exclusion_counts(st, counts, n, err) != 0) {
        md_store_close(st);
        return -1;
    }
    md_store_close(st);
    return 1;
}

static int fill_line(struct list_line *l, const struct md_exclusion_count *c,
                     size_t n)
{
    struct md_buf b = MD_BUF_INIT;

    l->devices = 0;
    for (size_t i = 0; i < n; i++) {
        if (md_strcasecmp(c[i].exclusion_id, l->entry->id) != 0)
            continue;
        l->devices += c[i].devices;
        if (md_buf_printf(&b, "%s%s: %" PRId64, b.len > 0 ? ", " : "",
                          c[i].rule_id, c[i].devices) != 0) {
            md_buf_free(&b);
            return -1;
        }
    }
    if (b.len > 0) {
        l->by_rule = md_buf_detach(&b);
        if (l->by_rule == NULL)
            return -1;
    }
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

static const char *const list_columns[] = {
    "id", "rule", "expires", "state", "devices", "by_rule", "reason",
    "owner"
};

enum {
    LC_ID, LC_RULE, LC_EXPIRES, LC_STATE, LC_DEVICES, LC_BY_RULE,
    LC_REASON, LC_OWNER, LC_COUNT
};

static int add_list_row(struct md_table *t, const struct list_line *l,
                        md_instant now, struct md_error *err)
{
    const struct md_exclusion *e = l->entry;
    struct md_cell *cells = md_table_add_row(t);
    char devices[32];

    if (cells == NULL)
        return oom(err);
    snprintf(devices, sizeof(devices), "%" PRId64, l->devices);
    if (set_text(t, &cells[LC_ID], e->id, err) != 0 ||
        set_text(t, &cells[LC_RULE], e->rule_id, err) != 0 ||
        set_text(t, &cells[LC_EXPIRES], e->expires_text, err) != 0 ||
        set_text(t, &cells[LC_STATE], md_exclusion_expired(e, now)
                                      ? "expired" : "active", err) != 0 ||
        set_text(t, &cells[LC_DEVICES], l->devices >= 0 ? devices : NULL,
                 err) != 0 ||
        set_text(t, &cells[LC_BY_RULE], l->by_rule, err) != 0 ||
        set_text(t, &cells[LC_REASON], e->reason, err) != 0 ||
        set_text(t, &cells[LC_OWNER], e->owner, err) != 0)
        return -1;
    if (l->devices >= 0) {
        cells[LC_DEVICES].kind = MD_J_INTEGER;
        cells[LC_DEVICES].v.i = l->devices;
    }
    return 0;
}

static int write_list_table(const struct list_line *lines, size_t n,
                            enum md_format format, md_instant now,
                            struct md_error *err)
{
    struct md_output_options opts;
    struct md_table *t = md_table_new();
    int rc = -1;

    if (t == NULL)
        return oom(err);
    for (size_t i = 0; i < LC_COUNT; i++) {
        if (md_table_add_column(t, list_columns[i],
                                i == LC_DEVICES ? "Int64" : "String",
                                err) != 0)
            goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (add_list_row(t, &lines[i], now, err) != 0)
            goto out;
    }
    md_output_options_init(&opts);
    opts.format = format;
    rc = md_output_write(stdout, t, &opts, err);
    if (rc != 0 && errno == EPIPE)
        rc = 0;

out:
    md_table_free(t);
    return rc;
}

static json_t *line_json(const struct list_line *l,
                         const struct md_exclusion_count *counts,
                         size_t ncounts, md_instant now)
{
    const struct md_exclusion *e = l->entry;
    char expires[MD_TIME_TEXT_MAX];
    json_t *o = json_object();
    json_t *matched = l->devices >= 0 ? json_array() : json_null();
    int rc;

    for (size_t i = 0; matched != NULL && json_is_array(matched) &&
                       i < ncounts; i++) {
        json_t *m;

        if (md_strcasecmp(counts[i].exclusion_id, e->id) != 0)
            continue;
        m = json_pack("{s:s, s:I, s:I}", "rule", counts[i].rule_id, "run",
                      (json_int_t)counts[i].run_id, "devices",
                      (json_int_t)counts[i].devices);
        if (json_array_append_new(matched, m) != 0) {
            json_decref(matched);
            matched = NULL;
        }
    }
    if (o == NULL || matched == NULL) {
        json_decref(o);
        json_decref(matched);
        return NULL;
    }
    md_time_format(e->expires, expires, sizeof(expires));
    rc = json_object_set_new(o, "id", json_string(e->id)) |
         json_object_set_new(o, "rule", json_string(e->rule_id)) |
         json_object_set_new(o, "reason", json_string(e->reason)) |
         json_object_set_new(o, "owner", json_string(e->owner)) |
         json_object_set_new(o, "created", e->created[0] != '\0'
                                           ? json_string(e->created)
                                           : json_null()) |
         json_object_set_new(o, "expires", json_string(e->expires_text)) |
         json_object_set_new(o, "ends", json_string(expires)) |
         json_object_set_new(o, "expired",
                             json_boolean(md_exclusion_expired(e, now))) |
         json_object_set_new(o, "line", json_integer(e->line)) |
         json_object_set_new(o, "devices", l->devices >= 0
                                           ? json_integer(l->devices)
                                           : json_null()) |
         json_object_set_new(o, "matched", matched);
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int write_list_json(const struct md_exclusions *x,
                           const struct list_line *lines, size_t n,
                           const struct md_exclusion_count *counts,
                           size_t ncounts, md_instant now,
                           struct md_error *err)
{
    json_t *doc = json_pack("{s:s, s:s, s:s}", "format",
                            "mdhunt.exclusions/1", "file", x->path,
                            "sha256", x->hash);
    json_t *list = json_array();

    if (doc == NULL || list == NULL ||
        json_object_set_new(doc, "entries", list) != 0) {
        json_decref(doc);
        return oom(err);
    }
    for (size_t i = 0; i < n; i++) {
        if (json_array_append_new(list, line_json(&lines[i], counts,
                                                  ncounts, now)) != 0) {
            json_decref(doc);
            return oom(err);
        }
    }
    if (json_dumpf(doc, stdout, JSON_INDENT(2)) != 0 ||
        fputc('\n', stdout) == EOF) {
        json_decref(doc);
        if (errno == EPIPE)
            return 0;
        return md_error_set(err, MD_E_INTERNAL, "writing the result "
                            "failed: %s", strerror(errno));
    }
    json_decref(doc);
    return 0;
}

static int cmd_list(struct md_cli *cli, const char *file,
                    enum md_format format, struct md_error *err)
{
    struct md_exclusions_options opts;
    struct md_exclusions *x = NULL;
    struct md_exclusion_count *counts = NULL;
    struct list_line *lines = NULL;
    size_t ncounts = 0;
    const char *path;
    int have_counts;
    int rc = -1;

    if (exclusions_path(cli, "list", file, &path, err) != 0)
        return -1;
    memset(&opts, 0, sizeof(opts));
    opts.max_age = cli->cfg.report.max_exclusion_age;
    opts.now = md_now();
    if (md_exclusions_load(path, &opts, &x, err) != 0)
        return -1;
    have_counts = read_counts(cli, &counts, &ncounts, err);
    if (have_counts < 0)
        goto out;

    lines = calloc(x->nentries + 1, sizeof(*lines));
    if (lines == NULL) {
        oom(err);
        goto out;
    }
    for (size_t i = 0; i < x->nentries; i++) {
        lines[i].entry = &x->entries[i];
        lines[i].devices = -1;
        if (have_counts && fill_line(&lines[i], counts, ncounts) != 0) {
            oom(err);
            goto out;
        }
    }
    qsort(lines, x->nentries, sizeof(*lines), compare_lines);
    if (format == MD_FORMAT_JSON)
        rc = write_list_json(x, lines, x->nentries, counts, ncounts,
                             opts.now, err);
    else
        rc = write_list_table(lines, x->nentries, format, opts.now, err);

out:
    for (size_t i = 0; lines != NULL && i < x->nentries; i++)
        free(lines[i].by_rule);
    free(lines);
    md_exclusion_counts_free(counts, ncounts);
    md_exclusions_free(x);
    return rc;
}

static int parse_list(struct md_cli *cli, int argc, char **argv,
                      struct md_error *err)
{
    static const struct option options[] = {
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    enum md_format format;
    const char *format_name = "table";
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "f:h", options, NULL)) != -1) {
        switch (c) {
        case 'f':
            format_name = optarg;
            break;
        case 'h':
            fputs(exclusions_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE, "exclusions list: unknown "
                                "option or missing value: %s; see mdhunt "
                                "exclusions --help", argv[optind - 1]);
        }
    }
    if (argc - optind > 1)
        return md_error_set(err, MD_E_USAGE, "exclusions list: unexpected "
                            "argument \"%s\"", argv[optind + 1]);
    if (md_format_from_name(format_name, &format, err) != 0)
        return md_error_prefix(err, "exclusions list");
    if (format == MD_FORMAT_NDJSON)
        return md_error_set(err, MD_E_USAGE, "exclusions list: format "
                            "\"%s\" is not available here; use table, json "
                            "or csv", format_name);
    return cmd_list(cli, optind < argc ? argv[optind] : NULL, format, err);
}

int md_cmd_exclusions(struct md_cli *cli, int argc, char **argv,
                      struct md_error *err)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        fputs(exclusions_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? md_error_set(err, MD_E_USAGE, "exclusions: name "
                                       "a subcommand, check or list") : 0;
    }
    if (strcmp(argv[1], "check") == 0) {
        if (argc > 3)
            return md_error_set(err, MD_E_USAGE, "exclusions check: name "
                                "at most one file");
        if (argc == 3 && (strcmp(argv[2], "--help") == 0 ||
                          strcmp(argv[2], "-h") == 0)) {
            fputs(exclusions_usage, stdout);
            return 0;
        }
        return cmd_check(cli, argc == 3 ? argv[2] : NULL, err);
    }
    if (strcmp(argv[1], "list") == 0)
        return parse_list(cli, argc - 1, argv + 1, err);
    return md_error_set(err, MD_E_USAGE, "exclusions: unknown subcommand "
                        "\"%s\"; use check or list", argv[1]);
}
