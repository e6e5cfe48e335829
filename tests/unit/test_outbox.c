/*
 * Tests of the mail outbox: the store's digest records, the composer
 * (items taken once, skipped digests, health) and the sender's retry
 * schedule, with delivery replaced by a hook.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "mdhunt/config.h"
#include "mdhunt/diff.h"
#include "mdhunt/log.h"
#include "mdhunt/outbox.h"
#include "mdhunt/store.h"

#define MINUTE (60 * MD_TICKS_PER_SECOND)
#define HOUR (3600 * MD_TICKS_PER_SECOND)
/* 2025-01-01T00:00:00Z */
#define BASE ((md_instant)1735689600 * MD_TICKS_PER_SECOND)

static const char HASH_A[] =
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/* The delivery hook's outcome and the bytes it received. */
struct fake_smtp {
    int outcome;            /* -1: accept; else an md_mail_outcome */
    enum md_err_kind kind;  /* of a failure */
    int calls;
    char *last;             /* the bytes of the last attempt */
    size_t last_len;
};

struct fixture {
    char dir[64];
    char path[128];
    char ini[128];
    struct md_store *st;
    struct md_config cfg;
    struct fake_smtp smtp;
    struct md_outbox_hooks hooks;
};

/* ---- Fixture ------------------------------------------------------------- */

static int fake_send(const struct md_mail_settings *s, const char *bytes,
                     size_t len, struct md_mail_result *res,
                     struct md_error *err, void *ctx)
{
    struct fake_smtp *smtp = ctx;

    (void)s;
    smtp->calls++;
    free(smtp->last);
    smtp->last = malloc(len + 1);
    assert_non_null(smtp->last);
    memcpy(smtp->last, bytes, len);
    smtp->last[len] = '\0';
    smtp->last_len = len;
    memset(res, 0, sizeof(*res));
    if (smtp->outcome < 0) {
        res->outcome = MD_MAIL_SENT;
        res->accepted = 1;
        return 0;
    }
    res->outcome = (enum md_mail_outcome)smtp->outcome;
    return md_error_set(err, smtp->kind, "mail: fake failure");
}

static void write_ini(struct fixture *fx, const char *send_when,
                      const char *digest_every)
{
    FILE *f = fopen(fx->ini, "w");
    struct md_error err;

    assert_non_null(f);
    fprintf(f, "[store]\npath = %s\n\n[schedule]\ndefault_frequency = 1h\n"
            "\n[mail]\nsmtp_url = smtp://127.0.0.1:25\n"
            "from = mdhunt@example.com\nto = soc@example.com\n"
            "send_when = %s\ndigest_every = %s\n", fx->path, send_when,
            digest_every);
    fclose(f);
    md_config_free(&fx->cfg);
    md_error_clear(&err);
    if (md_config_load(fx->ini, &fx->cfg, &err) != 0)
        fail_msg("md_config_load: %s", err.message);
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    struct md_error err;

    if (fx == NULL)
        return -1;
    md_log_set_level(MD_LOG_ERROR);
    strcpy(fx->dir, "/tmp/mdhunt-outbox-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof(fx->path), "%s/mdhunt.db", fx->dir);
    snprintf(fx->ini, sizeof(fx->ini), "%s/mdhunt.ini", fx->dir);
    write_ini(fx, "new", "1h");
    md_error_clear(&err);
    if (md_store_open(fx->path, 0, &fx->st, &err) != 0)
        fail_msg("md_store_open: %s", err.message);
    fx->smtp.outcome = -1;
    fx->hooks.send = fake_send;
    fx->hooks.ctx = &fx->smtp;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    static const char *const suffixes[] = { "", "-wal", "-shm" };
    char file[160];

    md_store_close(fx->st);
    md_config_free(&fx->cfg);
    free(fx->smtp.last);
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(file, sizeof(file), "%s%s", fx->path, suffixes[i]);
        unlink(file);
    }
    unlink(fx->ini);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* ---- Runs ---------------------------------------------------------------- */

static int64_t begin_run(struct fixture *fx, md_instant started)
{
    struct md_run_start start;
    struct md_error err;
    int64_t run_id = 0;

    memset(&start, 0, sizeof(start));
    start.rule_id = "zoho";
    start.rule_name = "ZohoAssist signature";
    start.query = "DeviceFileCertificateInfo | take 10";
    start.query_hash = HASH_A;
    start.tenant = "contoso.example";
    start.backend = "graph";
    start.period = 86400;
    start.due = started;
    start.started = started;
    md_error_clear(&err);
    if (md_store_run_begin(fx->st, &start, &run_id, &err) != 0)
        fail_msg("md_store_run_begin: %s", err.message);
    return run_id;
}

/* A successful run returning devices d1..dn; queues an item when the diff
 * has news under send_when = new. */
static int64_t ok_run(struct fixture *fx, md_instant started, int ndevices)
{
    struct md_table *t = md_table_new();
    struct md_diff_options o;
    struct md_error err;
    int64_t run_id = begin_run(fx, started);

    md_error_clear(&err);
    assert_non_null(t);
    assert_int_equal(md_table_add_column(t, "DeviceId", "String", &err), 0);
    assert_int_equal(md_table_add_column(t, "DeviceName", "String", &err),
                     0);
    for (int i = 1; i <= ndevices; i++) {
        struct md_cell *cells = md_table_add_row(t);
        char text[32];
        json_t *v;

        assert_non_null(cells);
        snprintf(text, sizeof(text), "d%d", i);
        v = json_string(text);
        assert_int_equal(md_table_set_cell_json(t, &cells[0], 0, v, &err),
                         0);
        json_decref(v);
        snprintf(text, sizeof(text), "PC%d", i);
        v = json_string(text);
        assert_int_equal(md_table_set_cell_json(t, &cells[1], 1, v, &err),
                         0);
        json_decref(v);
    }
    memset(&o, 0, sizeof(o));
    o.rule_id = "zoho";
    o.realert_after = 30 * 86400;
    if (md_diff_record_run(fx->st, run_id, t, &o, started, MD_SEND_NEW,
                           NULL, NULL, &err) != 0)
        fail_msg("md_diff_record_run: %s", err.message);
    md_table_free(t);
    return run_id;
}

static void failed_run(struct fixture *fx, md_instant started)
{
    int64_t run_id = begin_run(fx, started);
    struct md_error run_err;
    struct md_error err;

    md_error_clear(&run_err);
    md_error_clear(&err);
    md_error_set(&run_err, MD_E_AUTH, "token request rejected");
    assert_int_equal(md_store_run_finish_failed(fx->st, run_id, started,
                                                &run_err, &err), 0);
}

static int64_t compose(struct fixture *fx, md_instant now,
                       enum md_digest_state *state)
{
    struct md_error err;
    int64_t id = -1;

    md_error_clear(&err);
    if (md_outbox_compose(fx->st, &fx->cfg, NULL, now, &id, state,
                          &err) != 0)
        fail_msg("md_outbox_compose: %s", err.message);
    return id;
}

static void deliver(struct fixture *fx, int64_t id, md_instant now)
{
    struct md_delivery_result res;
    struct md_error err;

    memset(&res, 0, sizeof(res));
    md_error_clear(&err);
    if (md_outbox_deliver(fx->st, &fx->cfg, &fx->hooks, id, now, &res,
                          &err) != 0)
        fail_msg("md_outbox_deliver: %s", err.message);
}

static void get_digest(struct fixture *fx, int64_t id, int with_message,
                       struct md_outbox_digest *d)
{
    struct md_error err;

    md_error_clear(&err);
    if (md_store_digest_get(fx->st, id, with_message, d, &err) != 0)
        fail_msg("md_store_digest_get: %s", err.message);
}

static int64_t sql_int(struct fixture *fx, const char *sql)
{
    sqlite3_stmt *stmt;
    int64_t value = -1;

    assert_int_equal(sqlite3_prepare_v2(md_store_handle(fx->st), sql, -1,
                                        &stmt, NULL), SQLITE_OK);
    if (sqlite3_step(stmt) == SQLITE_ROW)
        value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return value;
}

/* ---- Composing ----------------------------------------------------------- */

static void test_compose_takes_items(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;
    enum md_digest_state st;
    int64_t id;

    ok_run(fx, BASE, 2);
    id = compose(fx, BASE + MINUTE, &st);
    get_digest(fx, id, 1, &d);

    assert_int_equal(id, 1);
    assert_int_equal(st, MD_DIGEST_PENDING);
    assert_int_equal(d.noutbox_ids, 1);
    assert_string_equal(d.reason, "baseline");
    assert_int_equal(d.last_run, 1);
    assert_int_equal(d.next_attempt, BASE + MINUTE);
    assert_non_null(strstr(d.message, "Message-ID: <mdhunt."));
    assert_string_equal(d.message_id + strlen(d.message_id) - 13,
                        "@example.com>");
    assert_int_equal(sql_int(fx, "SELECT digest_id FROM outbox"), 1);
    md_outbox_digest_clear(&d);
}

static void test_compose_again_finds_nothing(void **state)
{
    struct fixture *fx = *state;

    ok_run(fx, BASE, 2);
    compose(fx, BASE + MINUTE, NULL);

    assert_int_equal(compose(fx, BASE + 2 * MINUTE, NULL), 0);
}

static void test_compose_batches_items(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;

    ok_run(fx, BASE, 2);
    ok_run(fx, BASE + HOUR, 3);
    get_digest(fx, compose(fx, BASE + HOUR, NULL), 0, &d);

    assert_int_equal(d.noutbox_ids, 2);
    assert_int_equal(d.new_devices, 1);
    assert_int_equal(d.last_run, 2);
    md_outbox_digest_clear(&d);
}

static void test_quiet_run_skipped(void **state)
{
    struct fixture *fx = *state;
    enum md_digest_state st;
    struct md_outbox_digest d;
    int64_t id;

    ok_run(fx, BASE, 2);
    compose(fx, BASE, NULL);
    ok_run(fx, BASE + HOUR, 2);
    id = compose(fx, BASE + HOUR, &st);
    get_digest(fx, id, 1, &d);

    assert_int_equal(st, MD_DIGEST_SKIPPED);
    assert_null(d.message);
    assert_null(d.message_id);
    assert_int_equal(d.last_run, 2);
    md_outbox_digest_clear(&d);
}

static void test_third_failure_overrides_new(void **state)
{
    struct fixture *fx = *state;
    enum md_digest_state st;
    struct md_outbox_digest d;
    int64_t id;

    ok_run(fx, BASE, 2);
    compose(fx, BASE, NULL);
    failed_run(fx, BASE + 10 * MINUTE);
    compose(fx, BASE + 10 * MINUTE, &st);
    assert_int_equal(st, MD_DIGEST_SKIPPED);
    failed_run(fx, BASE + 20 * MINUTE);
    failed_run(fx, BASE + 30 * MINUTE);
    id = compose(fx, BASE + 30 * MINUTE, &st);
    get_digest(fx, id, 1, &d);

    assert_int_equal(st, MD_DIGEST_PENDING);
    assert_string_equal(d.reason, "failing");
    assert_non_null(strstr(d.message, "3 failures in a row"));
    md_outbox_digest_clear(&d);
}

static void test_send_when_never_composes_nothing(void **state)
{
    struct fixture *fx = *state;

    ok_run(fx, BASE, 2);
    write_ini(fx, "never", "1h");

    assert_int_equal(compose(fx, BASE, NULL), 0);
    assert_int_equal(sql_int(fx, "SELECT COUNT(*) FROM digest"), 0);
}

static void test_same_runs_same_message_id(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;
    char first[128];

    ok_run(fx, BASE, 2);
    get_digest(fx, compose(fx, BASE, NULL), 0, &d);
    snprintf(first, sizeof(first), "%s", d.message_id);
    md_outbox_digest_clear(&d);
    /* Composing the same runs again, later, gives the same Message-ID. */
    assert_int_equal(sqlite3_exec(md_store_handle(fx->st),
                                  "UPDATE outbox SET digest_id = NULL;"
                                  "DELETE FROM digest", NULL, NULL, NULL),
                     SQLITE_OK);
    get_digest(fx, compose(fx, BASE + HOUR, NULL), 0, &d);

    assert_string_equal(d.message_id, first);
    md_outbox_digest_clear(&d);
}

/* ---- Delivering ---------------------------------------------------------- */

static void test_sent_marks_items(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;

    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    get_digest(fx, 1, 0, &d);

    assert_int_equal(d.state, MD_DIGEST_SENT);
    assert_int_equal(d.attempts, 1);
    assert_int_equal(d.sent, BASE);
    assert_int_equal(d.next_attempt, MD_STORE_TIME_NONE);
    assert_int_equal(sql_int(fx, "SELECT COUNT(*) FROM outbox"
                                 " WHERE state = 'sent'"), 1);
    md_outbox_digest_clear(&d);
}

static void test_temporary_failure_schedules_retry(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;

    fx->smtp.outcome = MD_MAIL_TEMPORARY;
    fx->smtp.kind = MD_E_NETWORK;
    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    get_digest(fx, 1, 0, &d);

    assert_int_equal(d.state, MD_DIGEST_PENDING);
    assert_int_equal(d.attempts, 1);
    assert_int_equal(d.next_attempt, BASE + MINUTE);
    assert_string_equal(d.last_error, "network: mail: fake failure");
    md_outbox_digest_clear(&d);
}

static void test_permanent_failure_is_dead(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;

    fx->smtp.outcome = MD_MAIL_PERMANENT;
    fx->smtp.kind = MD_E_SERVICE;
    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    get_digest(fx, 1, 0, &d);

    assert_int_equal(d.state, MD_DIGEST_DEAD);
    assert_int_equal(sql_int(fx, "SELECT COUNT(*) FROM outbox"
                                 " WHERE state = 'dead'"), 1);
    md_outbox_digest_clear(&d);
}

static void test_too_many_attempts_is_dead(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;
    md_instant now = BASE;

    fx->smtp.outcome = MD_MAIL_TEMPORARY;
    fx->smtp.kind = MD_E_NETWORK;
    ok_run(fx, BASE, 2);
    compose(fx, BASE, NULL);
    for (int i = 0; i < MD_MAIL_MAX_ATTEMPTS; i++) {
        deliver(fx, 1, now);
        get_digest(fx, 1, 0, &d);
        if (d.state == MD_DIGEST_PENDING)
            now = d.next_attempt;
        md_outbox_digest_clear(&d);
    }
    get_digest(fx, 1, 0, &d);

    assert_int_equal(d.state, MD_DIGEST_DEAD);
    assert_int_equal(d.attempts, MD_MAIL_MAX_ATTEMPTS);
    md_outbox_digest_clear(&d);
}

static void test_resend_uses_stored_bytes(void **state)
{
    struct fixture *fx = *state;
    char *first;

    fx->smtp.outcome = MD_MAIL_TEMPORARY;
    fx->smtp.kind = MD_E_NETWORK;
    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    first = fx->smtp.last;
    fx->smtp.last = NULL;
    fx->smtp.outcome = -1;
    deliver(fx, 1, BASE + 2 * HOUR);

    assert_int_equal(fx->smtp.calls, 2);
    assert_string_equal(fx->smtp.last, first);
    free(first);
}

static void test_sent_digest_not_delivered_again(void **state)
{
    struct fixture *fx = *state;
    struct md_delivery_result res;
    struct md_error err;

    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    memset(&res, 0, sizeof(res));
    md_error_clear(&err);

    assert_int_equal(md_outbox_deliver(fx->st, &fx->cfg, &fx->hooks, 1,
                                       BASE, &res, &err), -1);
    assert_int_equal(err.kind, MD_E_USAGE);
    assert_int_equal(fx->smtp.calls, 1);
}

static void test_dead_retry_by_hand_sends(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;

    fx->smtp.outcome = MD_MAIL_PERMANENT;
    fx->smtp.kind = MD_E_SERVICE;
    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    fx->smtp.outcome = -1;
    deliver(fx, 1, BASE + HOUR);
    get_digest(fx, 1, 0, &d);

    assert_int_equal(d.state, MD_DIGEST_SENT);
    assert_int_equal(d.attempts, 2);
    md_outbox_digest_clear(&d);
}

static void test_deliver_due_skips_later_retry(void **state)
{
    struct fixture *fx = *state;
    struct md_delivery_result res;
    struct md_error err;

    fx->smtp.outcome = MD_MAIL_TEMPORARY;
    fx->smtp.kind = MD_E_NETWORK;
    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    md_error_clear(&err);

    assert_int_equal(md_outbox_deliver_due(fx->st, &fx->cfg, &fx->hooks,
                                           BASE + MINUTE - 1, &res, &err),
                     0);
    assert_int_equal(res.attempted, 0);
    assert_int_equal(md_outbox_deliver_due(fx->st, &fx->cfg, &fx->hooks,
                                           BASE + MINUTE, &res, &err), 0);
    assert_int_equal(res.attempted, 1);
}

/* ---- Scheduling ---------------------------------------------------------- */

static void test_compose_waits_digest_every(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;
    int due = -1;

    ok_run(fx, BASE, 2);
    compose(fx, BASE, NULL);
    ok_run(fx, BASE + 10 * MINUTE, 3);
    md_error_clear(&err);

    assert_int_equal(md_outbox_compose_due(fx->st, &fx->cfg,
                                           BASE + 59 * MINUTE, &due, &err),
                     0);
    assert_int_equal(due, 0);
    assert_int_equal(md_outbox_compose_due(fx->st, &fx->cfg, BASE + HOUR,
                                           &due, &err), 0);
    assert_int_equal(due, 1);
}

static void test_compose_not_due_when_idle(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;
    md_instant wakeup = 0;
    int due = -1;

    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    md_error_clear(&err);

    assert_int_equal(md_outbox_compose_due(fx->st, &fx->cfg, BASE + 5 * HOUR,
                                           &due, &err), 0);
    assert_int_equal(due, 0);
    assert_int_equal(md_outbox_next_wakeup(fx->st, &fx->cfg, BASE + 5 * HOUR,
                                           &wakeup, &err), 0);
    assert_int_equal(wakeup, MD_STORE_TIME_NONE);
}

static void test_wakeup_at_retry(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;
    md_instant wakeup = 0;

    fx->smtp.outcome = MD_MAIL_TEMPORARY;
    fx->smtp.kind = MD_E_NETWORK;
    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    md_error_clear(&err);

    assert_int_equal(md_outbox_next_wakeup(fx->st, &fx->cfg, BASE, &wakeup,
                                           &err), 0);
    assert_int_equal(wakeup, BASE + MINUTE);
}

static void test_wakeup_never_in_past(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;
    md_instant wakeup = 0;

    ok_run(fx, BASE, 2);
    md_error_clear(&err);

    assert_int_equal(md_outbox_next_wakeup(fx->st, &fx->cfg, BASE, &wakeup,
                                           &err), 0);
    assert_int_equal(wakeup, BASE + MD_OUTBOX_RECHECK_SECONDS *
                                        MD_TICKS_PER_SECOND);
}

/* ---- Store rules --------------------------------------------------------- */

static void test_item_taken_once(void **state)
{
    struct fixture *fx = *state;
    struct md_outbox_digest d;
    struct md_error err;
    int64_t ids[] = { 1 };
    int64_t id = -1;

    ok_run(fx, BASE, 2);
    compose(fx, BASE, NULL);
    memset(&d, 0, sizeof(d));
    d.created = BASE;
    d.state = MD_DIGEST_SKIPPED;
    d.outbox_ids = ids;
    d.noutbox_ids = 1;
    md_error_clear(&err);

    assert_int_equal(md_store_digest_add(fx->st, &d, &id, &err), -1);
    assert_int_equal(err.kind, MD_E_STORE);
    assert_int_equal(sql_int(fx, "SELECT COUNT(*) FROM digest"), 1);
}

static void test_sent_digest_cannot_retry(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    md_error_clear(&err);

    assert_int_equal(md_store_digest_mark_retry(fx->st, 1, BASE, BASE,
                                                "late", &err), -1);
    assert_int_equal(err.kind, MD_E_STORE);
}

static void test_counts_by_state(void **state)
{
    struct fixture *fx = *state;
    int64_t counts[MD_DIGEST_STATE_COUNT];
    struct md_error err;

    ok_run(fx, BASE, 2);
    deliver(fx, compose(fx, BASE, NULL), BASE);
    ok_run(fx, BASE + HOUR, 2);
    compose(fx, BASE + HOUR, NULL);
    md_error_clear(&err);

    assert_int_equal(md_store_digest_counts(fx->st, counts, &err), 0);
    assert_int_equal(counts[MD_DIGEST_SENT], 1);
    assert_int_equal(counts[MD_DIGEST_SKIPPED], 1);
    assert_int_equal(counts[MD_DIGEST_PENDING], 0);
}

#define OUTBOX_TEST(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        OUTBOX_TEST(test_compose_takes_items),
        OUTBOX_TEST(test_compose_again_finds_nothing),
        OUTBOX_TEST(test_compose_batches_items),
        OUTBOX_TEST(test_quiet_run_skipped),
        OUTBOX_TEST(test_third_failure_overrides_new),
        OUTBOX_TEST(test_send_when_never_composes_nothing),
        OUTBOX_TEST(test_same_runs_same_message_id),
        OUTBOX_TEST(test_sent_marks_items),
        OUTBOX_TEST(test_temporary_failure_schedules_retry),
        OUTBOX_TEST(test_permanent_failure_is_dead),
        OUTBOX_TEST(test_too_many_attempts_is_dead),
        OUTBOX_TEST(test_resend_uses_stored_bytes),
        OUTBOX_TEST(test_sent_digest_not_delivered_again),
        OUTBOX_TEST(test_dead_retry_by_hand_sends),
        OUTBOX_TEST(test_deliver_due_skips_later_retry),
        OUTBOX_TEST(test_compose_waits_digest_every),
        OUTBOX_TEST(test_compose_not_due_when_idle),
        OUTBOX_TEST(test_wakeup_at_retry),
        OUTBOX_TEST(test_wakeup_never_in_past),
        OUTBOX_TEST(test_item_taken_once),
        OUTBOX_TEST(test_sent_digest_cannot_retry),
        OUTBOX_TEST(test_counts_by_state),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
