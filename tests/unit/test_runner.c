/*
 * Tests for the runner: due times, jitter, the lock, cycles and the
 * daemon loop, driven by a fake clock, a fake sleep and a fake query so
 * that nothing sleeps or touches the network.
 */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"
#include "mdhunt/runner.h"
#include "mdhunt/store.h"

#define HOUR (3600 * MD_TICKS_PER_SECOND)
#define MINUTE (60 * MD_TICKS_PER_SECOND)

/* 2025-03-01T00:00:00Z */
#define T0 ((md_instant)1740787200 * MD_TICKS_PER_SECOND)

#define MAX_CALLS 32

/* The fake environment of a runner: a clock, a sleep and a query. */
struct fake {
    md_instant now;
    int sleeps;
    md_instant deadlines[MAX_CALLS];
    int stop_after_sleeps;      /* request a stop in this sleep; 0: never */
    void (*on_sleep)(struct fake *f);   /* called in every sleep */
    char queried[MAX_CALLS][16];        /* rule ids, in call order */
    int nqueried;
    const char *fail_rule;      /* this rule's query fails ... */
    enum md_err_kind fail_kind; /* ... with this kind */
    const char *signal_rule;    /* this rule's query raises SIGTERM */
    char dir[64];               /* the test's directory */
};

struct fixture {
    struct fake fake;
    struct md_runner_hooks hooks;
    struct md_runner *runner;
};

static md_instant fake_now(void *ctx)
{
    return ((struct fake *)ctx)->now;
}

static void fake_sleep(md_instant deadline, void *ctx)
{
    struct fake *f = ctx;

    if (f->sleeps < MAX_CALLS)
        f->deadlines[f->sleeps] = deadline;
    f->sleeps++;
    if (deadline > f->now)
        f->now = deadline;
    if (f->on_sleep != NULL)
        f->on_sleep(f);
    /* Bound every loop, whatever the test asked for. */
    if (f->sleeps == f->stop_after_sleeps || f->sleeps >= MAX_CALLS)
        md_interrupt_request(SIGTERM);
}

/* Two devices for every rule. */
static int fake_table(struct md_table **out, struct md_error *err)
{
    static const char *const rows[][2] = {
        { "1111111111111111111111111111111111111111", "wks-1" },
        { "2222222222222222222222222222222222222222", "wks-2" },
    };
    struct md_table *t = md_table_new();

    if (t == NULL ||
        md_table_add_column(t, "DeviceId", "String", err) != 0 ||
        md_table_add_column(t, "DeviceName", "String", err) != 0)
        goto fail;
    for (size_t i = 0; i < 2; i++) {
        struct md_cell *cells = md_table_add_row(t);

        for (size_t col = 0; col < 2; col++) {
            json_t *v = json_string(rows[i][col]);
            int rc = md_table_set_cell_json(t, &cells[col], col, v, err);

            json_decref(v);
            if (rc != 0)
                goto fail;
        }
    }
    *out = t;
    return 0;

fail:
    md_table_free(t);
    return -1;
}

static int fake_query(const struct md_rule *rule, struct md_table **out,
                      struct md_error *err, void *ctx)
{
    struct fake *f = ctx;

    if (f->nqueried < MAX_CALLS)
        snprintf(f->queried[f->nqueried], sizeof(f->queried[0]), "%s",
                 rule->id);
    f->nqueried++;
    if (f->signal_rule != NULL && strcmp(rule->id, f->signal_rule) == 0) {
        raise(SIGTERM);
        return md_error_set(err, MD_E_INTERRUPTED, "request stopped by a "
                            "stop request");
    }
    if (f->fail_rule != NULL && strcmp(rule->id, f->fail_rule) == 0) {
        err->http_status = 401;
        snprintf(err->request_id, sizeof(err->request_id), "req-1");
        return md_error_set(err, f->fail_kind, "token rejected");
    }
    return fake_table(out, err);
}

static int count_queries(const struct fake *f, const char *rule_id)
{
    int n = 0;

    for (int i = 0; i < f->nqueried && i < MAX_CALLS; i++)
        n += strcmp(f->queried[i], rule_id) == 0;
    return n;
}

/* ---- Files of the test directory --------------------------------------- */

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[256];
    FILE *fp;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fp = fopen(path, "w");
    assert_non_null(fp);
    assert_true(fputs(text, fp) >= 0);
    assert_int_equal(fclose(fp), 0);
}

static void write_rule(const char *dir, const char *id, const char *freq,
                       const char *period)
{
    char name[64];
    char text[512];

    snprintf(name, sizeof(name), "rules/%s.yaml", id);
    snprintf(text, sizeof(text),
             "id: %s\n"
             "name: Test rule %s\n"
             "queryFrequency: %s\n"
             "queryPeriod: %s\n"
             "query: |\n"
             "  DeviceInfo | where DeviceName has '%s'\n",
             id, id, freq, period, id);
    write_file(dir, name, text);
}

static void write_config(const char *dir, const char *extra)
{
    char text[1024];

    snprintf(text, sizeof(text),
             "[rules]\npath = %s/rules\n\n[store]\npath = %s/store.db\n%s",
             dir, dir, extra);
    write_file(dir, "mdhunt.ini", text);
}

static void remove_tree(const char *dir)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    char rules[96];

    if (fx == NULL)
        return -1;
    snprintf(fx->fake.dir, sizeof(fx->fake.dir), "/tmp/mdhunt-runner-XXXXXX");
    if (mkdtemp(fx->fake.dir) == NULL) {
        free(fx);
        return -1;
    }
    snprintf(rules, sizeof(rules), "%s/rules", fx->fake.dir);
    if (mkdir(rules, 0700) != 0) {
        free(fx);
        return -1;
    }
    fx->fake.now = T0;
    fx->hooks.now = fake_now;
    fx->hooks.sleep_until = fake_sleep;
    fx->hooks.query = fake_query;
    fx->hooks.ctx = &fx->fake;
    md_interrupt_reset();
    md_log_set_level(MD_LOG_ERROR);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    md_runner_free(fx->runner);
    remove_tree(fx->fake.dir);
    md_interrupt_reset();
    free(fx);
    return 0;
}

/* Two rules: "hourly" every hour, "twohourly" every two hours. */
static void write_two_rules(struct fixture *fx, const char *extra_config)
{
    write_rule(fx->fake.dir, "hourly", "1h", "1d");
    write_rule(fx->fake.dir, "twohourly", "2h", "1d");
    write_config(fx->fake.dir, extra_config);
}

static int open_runner(struct fixture *fx, int daemon, int all,
                       const char *rule_id, struct md_error *err)
{
    struct md_runner_options opts;
    struct md_config cfg;
    char path[128];

    md_runner_free(fx->runner);
    fx->runner = NULL;
    snprintf(path, sizeof(path), "%s/mdhunt.ini", fx->fake.dir);
    assert_int_equal(md_config_load(path, &cfg, err), 0);
    memset(&opts, 0, sizeof(opts));
    opts.daemon = daemon;
    opts.all = all;
    opts.rule_id = rule_id;
    opts.hooks = &fx->hooks;
    return md_runner_new(&cfg, &opts, &fx->runner, err);
}

static void cycle_ok(struct fixture *fx, struct md_cycle_result *res)
{
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_runner_cycle(fx->runner, res, &err), 0);
}

static md_instant last_due(struct fixture *fx, const char *rule_id)
{
    struct md_error err;
    md_instant due = 0;

    assert_int_equal(md_store_last_due(md_runner_store(fx->runner), rule_id,
                                       &due, &err), 0);
    return due;
}

static enum md_run_status last_status(struct fixture *fx,
                                      const char *rule_id,
                                      enum md_err_kind *kind)
{
    struct md_rule_status s;
    struct md_error err;
    enum md_run_status status;

    assert_int_equal(md_store_rule_status(md_runner_store(fx->runner),
                                          rule_id, &s, &err), 0);
    status = s.last_run.status;
    if (kind != NULL)
        *kind = s.last_run.error_kind;
    md_rule_status_clear(&s);
    return status;
}

/* ---- Due times ---------------------------------------------------------- */

static void due_never_run_is_now(void **state)
{
    struct md_due due;

    (void)state;
    md_runner_next_due("r", MD_STORE_TIME_NONE, 3600, 600, T0, &due);
    assert_true(due.slot == T0);
    assert_true(due.ready == T0);
}

static void due_follows_previous_grid(void **state)
{
    struct md_due due;

    (void)state;
    /* Last due at 00:07 and now 00:30, so the next slot is 01:07. */
    md_runner_next_due("r", T0 + 7 * MINUTE, 3600, 0, T0 + 30 * MINUTE,
                       &due);
    assert_true(due.slot == T0 + HOUR + 7 * MINUTE);
    assert_true(due.ready == due.slot);
}

static void due_on_the_slot_is_ready(void **state)
{
    struct md_due due;

    (void)state;
    md_runner_next_due("r", T0, 3600, 0, T0 + HOUR, &due);
    assert_true(due.slot == T0 + HOUR);
    assert_true(due.ready == T0 + HOUR);
}

static void due_after_downtime_once(void **state)
{
    struct md_due due;
    struct md_due next;
    md_instant now = T0 + 5 * HOUR + 30 * MINUTE;

    (void)state;
    md_runner_next_due("r", T0, 3600, 0, now, &due);
    assert_true(due.slot == T0 + 5 * HOUR);
    assert_true(due.ready <= now);

    /* Recorded with that slot, the next run is the first slot after now,
     * not one of the four missed ones. */
    md_runner_next_due("r", due.slot, 3600, 0, now, &next);
    assert_true(next.slot == T0 + 6 * HOUR);
    assert_true(next.ready > now);
}

static void jitter_is_deterministic(void **state)
{
    (void)state;
    assert_true(md_runner_jitter("rule-a", T0, 600) ==
                md_runner_jitter("rule-a", T0, 600));
    assert_true(md_runner_jitter("rule-a", T0 + HOUR, 900) ==
                md_runner_jitter("rule-a", T0 + HOUR, 900));
}

static void jitter_within_bounds(void **state)
{
    md_instant min = INT64_MAX;
    md_instant max = 0;

    (void)state;
    for (int i = 0; i < 2000; i++) {
        md_instant j = md_runner_jitter("rule-a", T0 + i * HOUR, 600);

        assert_true(j >= 0);
        assert_true(j <= 600 * MD_TICKS_PER_SECOND);
        assert_true(j % MD_TICKS_PER_SECOND == 0);
        if (j < min)
            min = j;
        if (j > max)
            max = j;
    }
    /* Spread over the range rather than stuck on a few values. */
    assert_true(min < 30 * MD_TICKS_PER_SECOND);
    assert_true(max > 570 * MD_TICKS_PER_SECOND);
}

static void jitter_differs_between_rules(void **state)
{
    int same = 0;

    (void)state;
    for (int i = 0; i < 100; i++)
        same += md_runner_jitter("rule-a", T0 + i * HOUR, 3600) ==
                md_runner_jitter("rule-b", T0 + i * HOUR, 3600);
    assert_true(same < 5);
}

static void jitter_zero_when_off(void **state)
{
    (void)state;
    assert_true(md_runner_jitter("rule-a", T0, 0) == 0);
}

static void jitter_delays_ready_time(void **state)
{
    struct md_due due;

    (void)state;
    md_runner_next_due("rule-a", T0, 3600, 600, T0 + HOUR, &due);
    assert_true(due.slot == T0 + HOUR);
    assert_true(due.ready == due.slot + md_runner_jitter("rule-a", due.slot,
                                                         600));
}

static void jitter_capped_below_frequency(void **state)
{
    (void)state;
    /* A 5-minute rule with an hour of jitter must still become ready
     * before its next slot passes. */
    for (int i = 0; i < 200; i++) {
        struct md_due due;

        md_runner_next_due("rule-a", T0, 300, 3600,
                           T0 + 300 * MD_TICKS_PER_SECOND + i * MINUTE / 7,
                           &due);
        assert_true(due.ready - due.slot < 300 * MD_TICKS_PER_SECOND);
    }
}

static void frequency_longer_than_period_warns(void **state)
{
    struct md_rule rule;
    unsigned long before = md_log_warning_count();

    (void)state;
    memset(&rule, 0, sizeof(rule));
    rule.id = "r";
    rule.period = 3600;
    assert_int_equal(md_runner_check_frequency(&rule, 7200), 1);
    assert_int_equal(md_log_warning_count(), before + 1);
}

static void frequency_within_period_is_quiet(void **state)
{
    struct md_rule rule;
    unsigned long before = md_log_warning_count();

    (void)state;
    memset(&rule, 0, sizeof(rule));
    rule.id = "r";
    rule.period = 3600;
    assert_int_equal(md_runner_check_frequency(&rule, 3600), 0);
    rule.period = 0;
    assert_int_equal(md_runner_check_frequency(&rule, 7200), 0);
    assert_int_equal(md_log_warning_count(), before);
}

static void frequency_falls_back_to_default(void **state)
{
    struct md_config cfg;
    struct md_rule rule;

    (void)state;
    assert_int_equal(md_config_init(&cfg), 0);
    memset(&rule, 0, sizeof(rule));
    assert_int_equal(md_runner_frequency(&rule, &cfg), 3600);
    rule.frequency = 900;
    assert_int_equal(md_runner_frequency(&rule, &cfg), 900);
    md_config_free(&cfg);
}

/* ---- Lock --------------------------------------------------------------- */

static void lock_is_file_beside_store(void **state)
{
    struct fixture *fx = *state;
    struct md_runner_lock lock = MD_RUNNER_LOCK_INIT;
    struct md_error err;
    char store[128];
    char expected[160];
    struct stat st;

    snprintf(store, sizeof(store), "%s/store.db", fx->fake.dir);
    snprintf(expected, sizeof(expected), "%s.lock", store);
    assert_int_equal(md_runner_lock_acquire(store, &lock, &err), 0);
    assert_string_equal(lock.path, expected);
    assert_int_equal(stat(expected, &st), 0);
    /* The database file itself is not touched. */
    assert_int_not_equal(stat(store, &st), 0);
    md_runner_lock_release(&lock);
    assert_int_equal(lock.fd, -1);
}

/* In a child: try the lock and exit with the error kind (0 when taken). */
static int child_lock_kind(const char *store)
{
    pid_t pid = fork();
    int status = 0;

    assert_true(pid >= 0);
    if (pid == 0) {
        struct md_runner_lock lock = MD_RUNNER_LOCK_INIT;
        struct md_error err;

        md_error_clear(&err);
        md_runner_lock_acquire(store, &lock, &err);
        _exit((int)err.kind);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void lock_held_rejects_child(void **state)
{
    struct fixture *fx = *state;
    struct md_runner_lock lock = MD_RUNNER_LOCK_INIT;
    struct md_error err;
    char store[128];

    snprintf(store, sizeof(store), "%s/store.db", fx->fake.dir);
    assert_int_equal(md_runner_lock_acquire(store, &lock, &err), 0);
    assert_int_equal(child_lock_kind(store), MD_E_LOCK);
    md_runner_lock_release(&lock);
    assert_int_equal(child_lock_kind(store), MD_OK);
}

static void lock_error_names_file(void **state)
{
    struct fixture *fx = *state;
    struct md_runner_lock lock = MD_RUNNER_LOCK_INIT;
    struct md_runner_lock second = MD_RUNNER_LOCK_INIT;
    struct md_error err;
    char store[128];

    snprintf(store, sizeof(store), "%s/store.db", fx->fake.dir);
    assert_int_equal(md_runner_lock_acquire(store, &lock, &err), 0);
    /* flock() locks belong to the open file, so a second open in the
     * same process conflicts as another process would. */
    assert_int_equal(md_runner_lock_acquire(store, &second, &err), -1);
    assert_int_equal(err.kind, MD_E_LOCK);
    assert_non_null(strstr(err.message, "store.db.lock"));
    md_runner_lock_release(&lock);
}

static void lock_missing_directory_fails(void **state)
{
    struct fixture *fx = *state;
    struct md_runner_lock lock = MD_RUNNER_LOCK_INIT;
    struct md_error err;
    char store[128];

    snprintf(store, sizeof(store), "%s/missing/store.db", fx->fake.dir);
    assert_int_equal(md_runner_lock_acquire(store, &lock, &err), -1);
    assert_int_equal(err.kind, MD_E_STORE);
    assert_non_null(strstr(err.message, "missing/store.db.lock"));
}

static void runner_new_fails_when_locked(void **state)
{
    struct fixture *fx = *state;
    struct md_runner_lock lock = MD_RUNNER_LOCK_INIT;
    struct md_error err;
    char store[128];

    write_two_rules(fx, "");
    snprintf(store, sizeof(store), "%s/store.db", fx->fake.dir);
    assert_int_equal(md_runner_lock_acquire(store, &lock, &err), 0);
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), -1);
    assert_int_equal(err.kind, MD_E_LOCK);
    assert_null(fx->runner);
    md_runner_lock_release(&lock);
}

/* ---- Cycles ------------------------------------------------------------- */

static void runner_unknown_rule_is_usage(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 0, 0, "nosuchrule", &err), -1);
    assert_int_equal(err.kind, MD_E_USAGE);
}

static void cycle_runs_never_run_rules(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 2);
    assert_int_equal(res.ok, 2);
    assert_true(last_due(fx, "hourly") == T0);
    assert_int_equal(last_status(fx, "hourly", NULL), MD_RUN_OK);
}

static void cycle_skips_rules_not_due(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);

    fx->fake.now = T0 + 30 * MINUTE;
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 0);

    fx->fake.now = T0 + HOUR + 5 * MINUTE;
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 1);
    assert_int_equal(count_queries(&fx->fake, "hourly"), 2);
    assert_int_equal(count_queries(&fx->fake, "twohourly"), 1);
    /* The due time recorded is the slot, not the start. */
    assert_true(last_due(fx, "hourly") == T0 + HOUR);
}

static void cycle_after_downtime_runs_once(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;
    md_instant wake;

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);

    /* A new process, five and a half hours later. */
    fx->fake.now = T0 + 5 * HOUR + 30 * MINUTE;
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 2);
    assert_true(last_due(fx, "hourly") == T0 + 5 * HOUR);
    assert_true(last_due(fx, "twohourly") == T0 + 4 * HOUR);
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 0);

    assert_int_equal(md_runner_next_wakeup(fx->runner, &wake, &err), 0);
    assert_true(wake == T0 + 6 * HOUR);
}

static void cycle_forced_rule_runs_early(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);

    fx->fake.now = T0 + 10 * MINUTE;
    assert_int_equal(open_runner(fx, 0, 0, "TwoHourly", &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 1);
    assert_int_equal(count_queries(&fx->fake, "twohourly"), 2);
    assert_int_equal(count_queries(&fx->fake, "hourly"), 1);
    /* The early run starts a new grid at its own time. */
    assert_true(last_due(fx, "twohourly") == T0 + 10 * MINUTE);
}

static void cycle_all_runs_every_rule(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);

    fx->fake.now = T0 + MINUTE;
    assert_int_equal(open_runner(fx, 0, 1, NULL, &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 2);
}

static void cycle_failed_rule_others_run(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;
    enum md_err_kind kind;

    write_two_rules(fx, "");
    fx->fake.fail_rule = "hourly";
    fx->fake.fail_kind = MD_E_AUTH;
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 2);
    assert_int_equal(res.ok, 1);
    assert_int_equal(res.failed, 1);
    assert_int_equal(res.last_error.kind, MD_E_AUTH);
    assert_int_equal(res.last_error.http_status, 401);
    assert_int_equal(last_status(fx, "hourly", &kind), MD_RUN_FAILED);
    assert_int_equal(kind, MD_E_AUTH);
    assert_int_equal(last_status(fx, "twohourly", NULL), MD_RUN_OK);
}

static void cycle_failed_run_keeps_slot(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;

    write_two_rules(fx, "");
    fx->fake.fail_rule = "hourly";
    fx->fake.fail_kind = MD_E_NETWORK;
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);
    /* A failed rule waits for its next slot like any other. */
    fx->fake.now = T0 + 20 * MINUTE;
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 0);
}

static void cycle_signal_interrupts_run(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;
    enum md_err_kind kind;

    write_two_rules(fx, "");
    md_interrupt_install();
    fx->fake.signal_rule = "hourly";
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.interrupted, 1);
    assert_int_equal(res.ran, 1);
    assert_int_equal(count_queries(&fx->fake, "twohourly"), 0);
    assert_int_equal(last_status(fx, "hourly", &kind), MD_RUN_INTERRUPTED);
    assert_int_equal(kind, MD_E_INTERRUPTED);
}

static void cycle_interrupted_run_repeats_slot(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;

    write_two_rules(fx, "");
    md_interrupt_install();
    fx->fake.signal_rule = "hourly";
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.interrupted, 1);

    /* The next process runs the interrupted rule again at once, for the
     * same slot. */
    md_interrupt_reset();
    fx->fake.signal_rule = NULL;
    fx->fake.now = T0 + 2 * MINUTE;
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    cycle_ok(fx, &res);
    assert_int_equal(res.ran, 2);
    assert_int_equal(count_queries(&fx->fake, "hourly"), 2);
    assert_true(last_due(fx, "hourly") == T0);
    assert_int_equal(last_status(fx, "hourly", NULL), MD_RUN_OK);
}

static void cycle_pending_stop_runs_nothing(void **state)
{
    struct fixture *fx = *state;
    struct md_cycle_result res;
    struct md_error err;

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 0, 0, NULL, &err), 0);
    md_interrupt_request(SIGINT);
    cycle_ok(fx, &res);
    assert_int_equal(res.interrupted, 1);
    assert_int_equal(res.ran, 0);
    assert_int_equal(fx->fake.nqueried, 0);
}

/* ---- The daemon --------------------------------------------------------- */

static void loop_follows_schedule(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    write_two_rules(fx, "");
    fx->fake.stop_after_sleeps = 3;
    assert_int_equal(open_runner(fx, 1, 0, NULL, &err), 0);
    assert_int_equal(md_runner_loop(fx->runner, &err), 0);

    assert_int_equal(fx->fake.sleeps, 3);
    assert_true(fx->fake.deadlines[0] == T0 + HOUR);
    assert_true(fx->fake.deadlines[1] == T0 + 2 * HOUR);
    assert_true(fx->fake.deadlines[2] == T0 + 3 * HOUR);
    assert_int_equal(count_queries(&fx->fake, "hourly"), 3);
    assert_int_equal(count_queries(&fx->fake, "twohourly"), 2);
}

static void loop_sleeps_until_jittered_time(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;
    md_instant slot = T0 + HOUR;

    write_rule(fx->fake.dir, "hourly", "1h", "1d");
    write_config(fx->fake.dir, "\n[schedule]\njitter = 10m\n");
    fx->fake.stop_after_sleeps = 1;
    assert_int_equal(open_runner(fx, 1, 0, NULL, &err), 0);
    assert_int_equal(md_runner_loop(fx->runner, &err), 0);
    assert_true(fx->fake.deadlines[0] ==
                slot + md_runner_jitter("hourly", slot, 600));
}

static void loop_stops_on_signal_in_query(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    write_two_rules(fx, "");
    md_interrupt_install();
    fx->fake.signal_rule = "twohourly";
    assert_int_equal(open_runner(fx, 1, 0, NULL, &err), 0);
    assert_int_equal(md_runner_loop(fx->runner, &err), 0);
    assert_int_equal(fx->fake.sleeps, 0);
    assert_int_equal(last_status(fx, "twohourly", NULL), MD_RUN_INTERRUPTED);
}

static void add_rule_and_hup(struct fake *f)
{
    if (f->sleeps != 1)
        return;
    write_rule(f->dir, "added", "1h", "1d");
    raise(SIGHUP);
}

static void loop_reloads_on_sighup(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    write_two_rules(fx, "");
    fx->fake.on_sleep = add_rule_and_hup;
    fx->fake.stop_after_sleeps = 2;
    assert_int_equal(open_runner(fx, 1, 0, NULL, &err), 0);
    assert_int_equal(md_runner_loop(fx->runner, &err), 0);
    assert_int_equal(md_runner_rules(fx->runner)->nrules, 3);
    assert_int_equal(count_queries(&fx->fake, "added"), 1);
    assert_int_equal(md_runner_reload_pending(), 0);
}

static void break_config_and_hup(struct fake *f)
{
    if (f->sleeps != 1)
        return;
    write_file(f->dir, "mdhunt.ini", "[store]\nno_such_key = 1\n");
    write_rule(f->dir, "added", "1h", "1d");
    raise(SIGHUP);
}

static void loop_keeps_config_on_bad_reload(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    write_two_rules(fx, "");
    fx->fake.on_sleep = break_config_and_hup;
    fx->fake.stop_after_sleeps = 2;
    assert_int_equal(open_runner(fx, 1, 0, NULL, &err), 0);
    assert_int_equal(md_runner_loop(fx->runner, &err), 0);
    assert_int_equal(md_runner_rules(fx->runner)->nrules, 2);
    assert_int_equal(count_queries(&fx->fake, "added"), 0);
    /* The old rules kept running on their schedule. */
    assert_int_equal(count_queries(&fx->fake, "hourly"), 2);
}

static void reload_keeps_store_path(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;
    char text[256];

    write_two_rules(fx, "");
    assert_int_equal(open_runner(fx, 1, 0, NULL, &err), 0);
    snprintf(text, sizeof(text),
             "[rules]\npath = %s/rules\n\n[store]\npath = %s/other.db\n",
             fx->fake.dir, fx->fake.dir);
    write_file(fx->fake.dir, "mdhunt.ini", text);
    assert_int_equal(md_runner_reload(fx->runner, &err), 0);
    assert_non_null(strstr(md_store_path(md_runner_store(fx->runner)),
                           "/store.db"));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(due_never_run_is_now),
        cmocka_unit_test(due_follows_previous_grid),
        cmocka_unit_test(due_on_the_slot_is_ready),
        cmocka_unit_test(due_after_downtime_once),
        cmocka_unit_test(jitter_is_deterministic),
        cmocka_unit_test(jitter_within_bounds),
        cmocka_unit_test(jitter_differs_between_rules),
        cmocka_unit_test(jitter_zero_when_off),
        cmocka_unit_test(jitter_delays_ready_time),
        cmocka_unit_test(jitter_capped_below_frequency),
        cmocka_unit_test(frequency_longer_than_period_warns),
        cmocka_unit_test(frequency_within_period_is_quiet),
        cmocka_unit_test(frequency_falls_back_to_default),
        T(lock_is_file_beside_store),
        T(lock_held_rejects_child),
        T(lock_error_names_file),
        T(lock_missing_directory_fails),
        T(runner_new_fails_when_locked),
        T(runner_unknown_rule_is_usage),
        T(cycle_runs_never_run_rules),
        T(cycle_skips_rules_not_due),
        T(cycle_after_downtime_runs_once),
        T(cycle_forced_rule_runs_early),
        T(cycle_all_runs_every_rule),
        T(cycle_failed_rule_others_run),
        T(cycle_failed_run_keeps_slot),
        T(cycle_signal_interrupts_run),
        T(cycle_interrupted_run_repeats_slot),
        T(cycle_pending_stop_runs_nothing),
        T(loop_follows_schedule),
        T(loop_sleeps_until_jittered_time),
        T(loop_stops_on_signal_in_query),
        T(loop_reloads_on_sighup),
        T(loop_keeps_config_on_bad_reload),
        T(reload_keeps_store_path),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
