/*
 * mdhunt outbox | mail-test: the mail digests in the store, delivering
 * them by hand, and a test message with the configured settings.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mdhunt/cli.h"
#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"
#include "mdhunt/mail.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/outbox.h"
#include "mdhunt/output.h"
#include "mdhunt/runner.h"
#include "mdhunt/store.h"
#include "mdhunt/table.h"

static const char outbox_usage[] =
"Usage: mdhunt outbox [--all] [--format table|json]\n"
"       mdhunt outbox --show ID\n"
"       mdhunt outbox --retry [ID...]\n"
"\n"
"List the mail digests in the store: pending ones wait for delivery or\n"
"for their next attempt, dead ones were given up (a 5xx reply, or too\n"
"many attempts), sent ones were accepted by the mail server.\n"
"\n"
"Options:\n"
"  -a, --all          also list the digests that send_when skipped\n"
"  -s, --show ID      print the stored message of digest ID as it is\n"
"                     sent (RFC 5322, CRLF line ends)\n"
"  -r, --retry        deliver now every pending and dead digest, or only\n"
"                     the digests whose ids follow; a digest that fails\n"
"                     again keeps its state.  Takes the runner lock, so\n"
"                     stop the daemon first.\n"
"  -f, --format FMT   table (default) or json\n"
"  -h, --help         show this help\n"
"\n"
"Exit status of --retry: 0 when every digest was delivered, else the\n"
"status of the last delivery error (5 for network, TLS or a reply of the\n"
"server, 3 for a rejected login).\n";

static const char mail_test_usage[] =
"Usage: mdhunt mail-test\n"
"\n"
"Send a short test message to the [mail] recipients with the configured\n"
"server, login and TLS settings, and report whether the server accepted\n"
"it.  Nothing is stored.\n"
"\n"
"Options:\n"
"  -h, --help   show this help\n";

/* ---- Helpers ----------------------------------------------------------- */

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
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

/* A JSON string, or null for NULL.  Invalid UTF-8 becomes null too. */
static json_t *json_text(const char *s)
{
    json_t *v;

    if (s == NULL)
        return json_null();
    v = json_string(s);
    return v != NULL ? v : json_null();
}

static json_t *json_time(md_instant t)
{
    char text[MD_TIME_TEXT_MAX];

    if (t == MD_STORE_TIME_NONE)
        return json_null();
    return json_string(md_time_format(t, text, sizeof(text)));
}

/* ---- mdhunt outbox: the list ------------------------------------------- */

static const struct {
    const char *name;
    const char *type;
} outbox_columns[] = {
    { "id", "Int64" },
    { "state", "String" },
    { "created", "DateTime" },
    { "reason", "String" },
    { "new", "Int64" },
    { "attempts", "Int64" },
    { "next_attempt", "DateTime" },
    { "sent", "DateTime" },
    { "subject", "String" },
    { "last_error", "String" },
};

enum {
    OC_ID, OC_STATE, OC_CREATED, OC_REASON, OC_NEW, OC_ATTEMPTS, OC_NEXT,
    OC_SENT, OC_SUBJECT, OC_ERROR, OC_COUNT
};

static int add_digest_row(struct md_table *t, const struct md_outbox_digest *d,
                          struct md_error *err)
{
    struct md_cell *row = md_table_add_row(t);

    if (row == NULL)
        return oom(err);
    if (set_int(t, &row[OC_ID], d->id, err) != 0 ||
        set_text(t, &row[OC_STATE], md_digest_state_name(d->state),
                 err) != 0 ||
        set_time(t, &row[OC_CREATED], d->created, err) != 0 ||
        set_text(t, &row[OC_REASON], d->reason, err) != 0 ||
        set_int(t, &row[OC_NEW], d->new_devices, err) != 0 ||
        set_int(t, &row[OC_ATTEMPTS], d->attempts, err) != 0 ||
        set_time(t, &row[OC_NEXT], d->next_attempt, err) != 0 ||
        set_time(t, &row[OC_SENT], d->sent, err) != 0 ||
        set_text(t, &row[OC_SUBJECT], d->subject, err) != 0 ||
        set_text(t, &row[OC_ERROR], d->last_error, err) != 0)
        return -1;
    return 0;
}

static int write_digest_table(const struct md_outbox_digest *v, size_t n,
                              struct md_error *err)
{
    struct md_output_options opts;
    struct md_table *t = md_table_new();
    int rc = -1;

    if (t == NULL)
        return oom(err);
    for (size_t i = 0; i < OC_COUNT; i++) {
        if (md_table_add_column(t, outbox_columns[i].name,
                                outbox_columns[i].type, err) != 0)
            goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (add_digest_row(t, &v[i], err) != 0)
            goto out;
    }
    md_output_options_init(&opts);
    opts.format = MD_FORMAT_TABLE;
    rc = md_output_write(stdout, t, &opts, err);
    if (rc != 0 && errno == EPIPE)
        rc = 0;

out:
    md_table_free(t);
    return rc;
}

static json_t *digest_json(const struct md_outbox_digest *d)
{
    json_t *o = json_object();
    json_t *items = json_array();

    if (o == NULL || items == NULL) {
        json_decref(o);
        json_decref(items);
        return NULL;
    }
    for (size_t i = 0; i < d->noutbox_ids; i++) {
        if (json_array_append_new(items,
                                  json_integer(d->outbox_ids[i])) != 0) {
            json_decref(o);
            json_decref(items);
            return NULL;
        }
    }
    if (json_object_set_new(o, "id", json_integer(d->id)) != 0 ||
        json_object_set_new(o, "state", json_string(
                                md_digest_state_name(d->state))) != 0 ||
        json_object_set_new(o, "created", json_time(d->created)) != 0 ||
        json_object_set_new(o, "reason", json_text(d->reason)) != 0 ||
        json_object_set_new(o, "new_devices",
                            json_integer(d->new_devices)) != 0 ||
        json_object_set_new(o, "subject", json_text(d->subject)) != 0 ||
        json_object_set_new(o, "message_id", json_text(d->message_id)) != 0 ||
        json_object_set_new(o, "attempts", json_integer(d->attempts)) != 0 ||
        json_object_set_new(o, "next_attempt",
                            json_time(d->next_attempt)) != 0 ||
        json_object_set_new(o, "last_attempt",
                            json_time(d->last_attempt)) != 0 ||
        json_object_set_new(o, "sent", json_time(d->sent)) != 0 ||
        json_object_set_new(o, "last_error", json_text(d->last_error)) != 0 ||
        json_object_set_new(o, "last_run", json_integer(d->last_run)) != 0 ||
        json_object_set_new(o, "outbox_items", items) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int write_digest_json(const struct md_outbox_digest *v, size_t n,
                             const char *store_path, struct md_error *err)
{
    json_t *doc = json_object();
    json_t *list = json_array();
    int rc = 0;

    if (doc == NULL || list == NULL ||
        json_object_set_new(doc, "format",
                            json_string("mdhunt.outbox/1")) != 0 ||
        json_object_set_new(doc, "store", json_text(store_path)) != 0) {
        json_decref(doc);
        json_decref(list);
        return oom(err);
    }
    if (json_object_set_new(doc, "digests", list) != 0) {
        json_decref(doc);
        return oom(err);
    }
    for (size_t i = 0; i < n; i++) {
        if (json_array_append_new(list, digest_json(&v[i])) != 0) {
            json_decref(doc);
            return oom(err);
        }
    }
    if (json_dumpf(doc, stdout, JSON_INDENT(2)) != 0 ||
        fputc('\n', stdout) == EOF) {
        if (errno != EPIPE)
            rc = md_error_set(err, MD_E_INTERNAL, "writing the result "
                              "failed: %s", strerror(errno));
    }
    json_decref(doc);
    return rc;
}

static int open_store_read_only(struct md_cli *cli, struct md_store **st,
                                struct md_error *err)
{
    if (md_cli_load_config(cli, 0, err) != 0)
        return -1;
    return md_store_open(cli->cfg.store.path, MD_STORE_READ_ONLY, st, err);
}

static int outbox_list(struct md_cli *cli, int all, int json,
                       struct md_error *err)
{
    unsigned states = (1u << MD_DIGEST_PENDING) | (1u << MD_DIGEST_DEAD) |
                      (1u << MD_DIGEST_SENT);
    struct md_outbox_digest *v = NULL;
    struct md_store *st = NULL;
    size_t n = 0;
    int rc = -1;

    if (all)
        states |= 1u << MD_DIGEST_SKIPPED;
    if (open_store_read_only(cli, &st, err) != 0)
        return -1;
    if (md_store_digest_list(st, states, &v, &n, err) != 0)
        goto out;
    if (json)
        rc = write_digest_json(v, n, md_store_path(st), err);
    else
        rc = write_digest_table(v, n, err);

out:
    md_outbox_digests_free(v, n);
    md_store_close(st);
    return rc;
}

/* ---- mdhunt outbox --show ---------------------------------------------- */

static int outbox_show(struct md_cli *cli, int64_t id, struct md_error *err)
{
    struct md_outbox_digest d;
    struct md_store *st = NULL;
    int rc = -1;

    if (open_store_read_only(cli, &st, err) != 0)
        return -1;
    if (md_store_digest_get(st, id, 1, &d, err) != 0)
        goto out;
    if (d.message == NULL) {
        md_error_set(err, MD_E_USAGE, "outbox: digest %" PRId64 " was %s "
                     "and has no message", id,
                     md_digest_state_name(d.state));
    } else if (fwrite(d.message, 1, d.message_len, stdout) !=
                   d.message_len && errno != EPIPE) {
        md_error_set(err, MD_E_INTERNAL, "writing the message failed: %s",
                     strerror(errno));
    } else {
        rc = 0;
    }
    md_outbox_digest_clear(&d);

out:
    md_store_close(st);
    return rc;
}

/* ---- mdhunt outbox --retry --------------------------------------------- */

/* The ids to retry: those given, else every pending and dead digest. */
static int retry_ids(struct md_store *st, int argc, char **argv,
                     int64_t **ids, size_t *n, struct md_error *err)
{
    struct md_outbox_digest *v = NULL;
    size_t nv = 0;

    *n = 0;
    *ids = calloc(argc > 0 ? (size_t)argc : 1, sizeof(**ids));
    if (*ids == NULL)
        return oom(err);
    for (int i = 0; i < argc; i++) {
        if (parse_id(argv[i], &(*ids)[i]) != 0)
            return md_error_set(err, MD_E_USAGE, "outbox: \"%s\" is not a "
                                "digest id (a positive whole number); see "
                                "mdhunt outbox", argv[i]);
    }
    *n = (size_t)argc;
    if (argc > 0)
        return 0;

    free(*ids);
    *ids = NULL;
    if (md_store_digest_list(st, (1u << MD_DIGEST_PENDING) |
                                 (1u << MD_DIGEST_DEAD), &v, &nv, err) != 0)
        return -1;
    *ids = calloc(nv > 0 ? nv : 1, sizeof(**ids));
    if (*ids == NULL) {
        md_outbox_digests_free(v, nv);
        return oom(err);
    }
    for (size_t i = 0; i < nv; i++)
        (*ids)[i] = v[i].id;
    *n = nv;
    md_outbox_digests_free(v, nv);
    return 0;
}

/* Deliver each digest of ids and print its outcome. */
static int deliver_ids(struct md_store *st, struct md_config *cfg,
                       const int64_t *ids, size_t n, struct md_error *err)
{
    struct md_delivery_result res;
    struct md_error last;
    int failed = 0;

    memset(&res, 0, sizeof(res));
    md_error_clear(&last);
    for (size_t i = 0; i < n && !res.interrupted; i++) {
        size_t sent = res.sent;
        struct md_error e;

        if (md_interrupt_pending())
            break;
        md_error_clear(&e);
        if (md_outbox_deliver(st, cfg, NULL, ids[i], md_now(), &res,
                              &e) != 0) {
            if (e.kind == MD_E_STORE) {
                *err = e;
                return -1;
            }
            md_cli_print_error(&e);
            last = e;
            failed = 1;
            continue;
        }
        if (res.sent > sent) {
            printf("digest %" PRId64 ": delivered\n", ids[i]);
        } else {
            printf("digest %" PRId64 ": not delivered (%s)\n", ids[i],
                   md_err_kind_name(res.last_error.kind));
            last = res.last_error;
            failed = 1;
        }
    }
    if (md_interrupt_pending())
        return md_error_set(err, MD_E_INTERRUPTED, "outbox: stopped by a "
                            "signal; the remaining digests stay queued");
    if (n == 0)
        printf("no pending or dead digest to deliver\n");
    if (failed) {
        *err = last;
        return -1;
    }
    return 0;
}

static int outbox_retry(struct md_cli *cli, int argc, char **argv,
                        struct md_error *err)
{
    struct md_runner_lock lock = MD_RUNNER_LOCK_INIT;
    struct md_store *st = NULL;
    int64_t *ids = NULL;
    size_t n = 0;
    int rc = -1;

    if (md_cli_load_config(cli, 1, err) != 0 ||
        md_config_require_mail(&cli->cfg, err) != 0)
        return -1;
    /* Delivering changes the store, which only the lock holder may do. */
    if (md_runner_lock_acquire(cli->cfg.store.path, &lock, err) != 0)
        return -1;
    if (md_store_open(cli->cfg.store.path, 0, &st, err) != 0)
        goto out;
    if (retry_ids(st, argc, argv, &ids, &n, err) != 0)
        goto out;
    rc = deliver_ids(st, &cli->cfg, ids, n, err);

out:
    free(ids);
    md_store_close(st);
    md_runner_lock_release(&lock);
    return rc;
}

int md_cmd_outbox(struct md_cli *cli, int argc, char **argv,
                  struct md_error *err)
{
    static const struct option options[] = {
        { "all", no_argument, NULL, 'a' },
        { "show", required_argument, NULL, 's' },
        { "retry", no_argument, NULL, 'r' },
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *format_name = "table";
    enum md_format format;
    int64_t show = 0;
    int retry = 0;
    int all = 0;
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "as:rf:h", options, NULL)) != -1) {
        switch (c) {
        case 'a':
            all = 1;
            break;
        case 's':
            if (parse_id(optarg, &show) != 0)
                return md_error_set(err, MD_E_USAGE, "outbox: --show \"%s\""
                                    " is not a digest id (a positive whole "
                                    "number)", optarg);
            break;
        case 'r':
            retry = 1;
            break;
        case 'f':
            format_name = optarg;
            break;
        case 'h':
            fputs(outbox_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE, "outbox: unknown option "
                                "or missing value: %s; see mdhunt outbox "
                                "--help", argv[optind - 1]);
        }
    }
    if (retry + (show != 0) > 1)
        return md_error_set(err, MD_E_USAGE, "outbox: give --show or "
                            "--retry, not both");
    if (retry)
        return outbox_retry(cli, argc - optind, argv + optind, err);
    if (optind < argc)
        return md_error_set(err, MD_E_USAGE, "outbox: unexpected argument "
                            "\"%s\"; digest ids follow --retry only",
                            argv[optind]);
    if (show != 0)
        return outbox_show(cli, show, err);
    if (md_format_from_name(format_name, &format, err) != 0)
        return md_error_prefix(err, "outbox");
    if (format != MD_FORMAT_TABLE && format != MD_FORMAT_JSON)
        return md_error_set(err, MD_E_USAGE, "outbox: format \"%s\" is not "
                            "available here; use table or json",
                            format_name);
    return outbox_list(cli, all, format == MD_FORMAT_JSON, err);
}

/* ---- mdhunt mail-test -------------------------------------------------- */

int md_cmd_mail_test(struct md_cli *cli, int argc, char **argv,
                     struct md_error *err)
{
    static const struct option options[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct md_mail_settings s;
    struct md_mail_result res;
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (c == 'h') {
            fputs(mail_test_usage, stdout);
            return 0;
        }
        return md_error_set(err, MD_E_USAGE, "mail-test: unknown option: "
                            "%s; see mdhunt mail-test --help",
                            argv[optind - 1]);
    }
    if (optind < argc)
        return md_error_set(err, MD_E_USAGE, "mail-test: unexpected "
                            "argument \"%s\"", argv[optind]);

    if (md_cli_load_config(cli, 1, err) != 0 ||
        md_config_require_mail(&cli->cfg, err) != 0)
        return -1;
    md_mail_settings_from_config(&cli->cfg, &s);
    if (md_mail_test(&s, cli->cfg.mail.subject_prefix, &res, err) != 0)
        return -1;
    printf("mail-test: %s accepted the test message for %zu recipient%s",
           s.smtp_url, res.accepted, res.accepted == 1 ? "" : "s");
    if (res.rejected > 0)
        printf(" and rejected %zu (see the warnings above)", res.rejected);
    printf("\n");
    return 0;
}
