/*
 * The scheduled runner: due times, the lock, cycles, the daemon loop and
 * reloads.  See include/mdhunt/runner.h for the schedule's rules.
 */
#include "mdhunt/runner.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "mdhunt/backend.h"
#include "mdhunt/budget.h"
#include "mdhunt/buf.h"
#include "mdhunt/diff.h"
#include "mdhunt/exclusions.h"
#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"
#include "mdhunt/outbox.h"

struct md_runner {
    struct md_config cfg;
    struct md_ruleset rules;
    struct md_runner_lock lock;
    struct md_store *store;
    struct md_backend *backend;     /* NULL when hooks.query is set */
    struct md_exclusions *exclusions;   /* NULL without [report]
                                           exclusions */
    struct md_runner_hooks hooks;
    int daemon;
    int all;
    char *rule_id;                  /* opts->rule_id, or NULL */
    int rule_problems;              /* some rule files were skipped */
};

static volatile sig_atomic_t reload_requested;

/* ---- Lock -------------------------------------------------------------- */

int md_runner_lock_acquire(const char *store_path,
                           struct md_runner_lock *lock,
                           struct md_error *err)
{
    struct md_buf path = MD_BUF_INIT;
    int fd;

    lock->fd = -1;
    lock->path = NULL;
    if (md_buf_puts(&path, store_path) != 0 ||
        md_buf_puts(&path, MD_RUNNER_LOCK_SUFFIX) != 0) {
        md_buf_free(&path);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }

    fd = open(path.data, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        md_error_set(err, MD_E_STORE, "cannot open the lock file %s: %s; "
                     "create its directory, give the mdhunt user write "
                     "access to it, or set [store] path", path.data,
                     strerror(errno));
        md_buf_free(&path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int saved = errno;

        close(fd);
        if (saved == EWOULDBLOCK)
            md_error_set(err, MD_E_LOCK, "another mdhunt runner holds the "
                         "lock %s; wait for it to finish, or stop the "
                         "daemon before running `mdhunt run --once`",
                         path.data);
        else
            md_error_set(err, MD_E_STORE, "cannot lock %s: %s", path.data,
                         strerror(saved));
        md_buf_free(&path);
        return -1;
    }

    lock->fd = fd;
    lock->path = path.data;
    return 0;
}

void md_runner_lock_release(struct md_runner_lock *lock)
{
    if (lock->fd >= 0) {
        flock(lock->fd, LOCK_UN);
        close(lock->fd);
    }
    lock->fd = -1;
    free(lock->path);
    lock->path = NULL;
}

/* ---- Schedule ---------------------------------------------------------- */

int64_t md_runner_frequency(const struct md_rule *rule,
                            const struct md_config *cfg)
{
    if (rule->frequency > 0)
        return rule->frequency;
    return cfg->schedule.default_frequency;
}

int md_runner_check_frequency(const struct md_rule *rule, int64_t frequency)
{
    char freq_text[32];
    char period_text[32];

    if (rule->period <= 0 || frequency <= rule->period)
        return 0;
    md_warn("%s: rule %s runs every %s but looks back only %s "
            "(queryPeriod), so devices seen only in between are missed; "
            "make queryPeriod at least as long as the frequency",
            rule->file != NULL ? rule->file : "-", rule->id,
            md_duration_format(frequency, freq_text, sizeof(freq_text)),
            md_duration_format(rule->period, period_text,
                               sizeof(period_text)));
    return 1;
}

/* seconds * MD_TICKS_PER_SECOND, saturated at INT64_MAX. */
static md_instant seconds_to_ticks(int64_t seconds)
{
    md_instant ticks;

    if (seconds <= 0)
        return 0;
    if (__builtin_mul_overflow(seconds, MD_TICKS_PER_SECOND, &ticks))
        return INT64_MAX;
    return ticks;
}

/* a + b for b >= 0, saturated at INT64_MAX. */
static md_instant add_ticks(md_instant a, md_instant b)
{
    md_instant sum;

    if (__builtin_add_overflow(a, b, &sum))
        return INT64_MAX;
    return sum;
}

/* The 64-bit finaliser of SplitMix64: spreads every input bit over the
 * whole output, so neighbouring slots get unrelated delays. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

md_instant md_runner_jitter(const char *rule_id, md_instant slot,
                            int64_t jitter_seconds)
{
    /* FNV-1a over the id bytes and the slot's 8 bytes, least significant
     * first, so the value does not depend on the host's byte order. */
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    uint64_t s = (uint64_t)slot;

    if (jitter_seconds <= 0)
        return 0;
    for (const unsigned char *p = (const unsigned char *)rule_id; *p; p++) {
        h ^= *p;
        h *= UINT64_C(0x100000001b3);
    }
    for (int i = 0; i < 8; i++) {
        h ^= (s >> (8 * i)) & 0xff;
        h *= UINT64_C(0x100000001b3);
    }
    return seconds_to_ticks(
        (int64_t)(mix64(h) % ((uint64_t)jitter_seconds + 1)));
}

void md_runner_next_due(const char *rule_id, md_instant last_due,
                        int64_t frequency, int64_t jitter_seconds,
                        md_instant now, struct md_due *out)
{
    md_instant step = seconds_to_ticks(frequency > 0 ? frequency : 1);
    md_instant slot;

    if (last_due == MD_STORE_TIME_NONE) {
        out->slot = now;
        out->ready = now;
        return;
    }

    slot = add_ticks(last_due, step);
    if (slot <= now) {
        md_instant behind;

        /* Overdue: the latest slot at or before now, so that a rule runs
         * once after downtime instead of once per missed slot. */
        if (__builtin_sub_overflow(now, last_due, &behind))
            slot = now;
        else
            slot = last_due + behind / step * step;
    }

    /* A delay of a whole frequency or more would let the next slot pass
     * before the rule is ready, and the rule would never run. */
    if (jitter_seconds >= frequency)
        jitter_seconds = frequency - 1;
    out->slot = slot;
    out->ready = add_ticks(slot, md_runner_jitter(rule_id, slot,
                                                  jitter_seconds));
}

int md_runner_rule_due(struct md_store *st, const struct md_rule *rule,
                       const struct md_config *cfg, md_instant now,
                       struct md_due *out, struct md_error *err)
{
    int64_t frequency = md_runner_frequency(rule, cfg);
    struct md_rule_status status;
    md_instant last_due;

    if (md_store_last_due(st, rule->id, &last_due, err) != 0)
        return -1;
    if (last_due != MD_STORE_TIME_NONE) {
        if (md_store_rule_status(st, rule->id, &status, err) != 0)
            return -1;
        /* Going back one step makes the computation pick the
         * interrupted run's slot again (or a later one after downtime). */
        if (status.last_run.status == MD_RUN_INTERRUPTED &&
            __builtin_sub_overflow(last_due, seconds_to_ticks(frequency),
                                   &last_due))
            last_due = MD_STORE_TIME_NONE;
        md_rule_status_clear(&status);
    }
    md_runner_next_due(rule->id, last_due, frequency, cfg->schedule.jitter,
                       now, out);
    return 0;
}

/* ---- Signals and sleeping ---------------------------------------------- */

static void on_sighup(int signo)
{
    (void)signo;
    reload_requested = 1;
}

void md_runner_install_reload_signal(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sighup;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
}

void md_runner_request_reload(void)
{
    reload_requested = 1;
}

int md_runner_reload_pending(void)
{
    return reload_requested;
}

const char *md_runner_signal_name(int signo)
{
    switch (signo) {
    case SIGINT:
        return "SIGINT";
    case SIGTERM:
        return "SIGTERM";
    case SIGHUP:
        return "SIGHUP";
    default:
        return "a signal";
    }
}

static md_instant default_now(void *ctx)
{
    (void)ctx;
    return md_now();
}

#define MAX_TIMER_SECONDS ((time_t)(INT64_MAX / 1000000000 - 1))

static struct timespec instant_to_timespec(md_instant t)
{
    struct timespec ts;

    if (t <= 0) {
        /* An all-zero it_value would disarm a timerfd instead of firing
         * it; the earliest instant after the epoch is as good. */
        ts.tv_sec = 0;
        ts.tv_nsec = 1;
        return ts;
    }
    ts.tv_sec = (time_t)(t / MD_TICKS_PER_SECOND);
    ts.tv_nsec = (long)(t % MD_TICKS_PER_SECOND) * 100;
    /* Linux keeps timers in signed 64-bit nanoseconds (until 2262);
     * "never" becomes the latest time it can hold. */
    if (ts.tv_sec > MAX_TIMER_SECONDS)
        ts.tv_sec = MAX_TIMER_SECONDS;
    return ts;
}

/* The deadline on CLOCK_REALTIME.  In test builds md_now() may follow
 * MDHUNT_TEST_NOW, so the wait keeps the distance to the deadline. */
static md_instant realtime_deadline(md_instant deadline)
{
#ifdef MDHUNT_TEST_CLOCK
    struct timespec ts;
    md_instant real;
    md_instant left = deadline - md_now();

    clock_gettime(CLOCK_REALTIME, &ts);
    real = (md_instant)ts.tv_sec * MD_TICKS_PER_SECOND + ts.tv_nsec / 100;
    return left > 0 ? add_ticks(real, left) : real;
#else
    return deadline;
#endif
}

static void default_sleep_until(md_instant deadline, void *ctx)
{
    struct itimerspec its;
    struct pollfd pfd;
    sigset_t block;
    sigset_t old;
    int fd;

    (void)ctx;
    memset(&its, 0, sizeof(its));
    its.it_value = instant_to_timespec(realtime_deadline(deadline));

    /* Block the signals before the check below, so that one arriving
     * between the check and the wait is not lost until the deadline.
     * ppoll() unblocks them atomically while it waits. */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    if (md_interrupt_pending() || reload_requested)
        goto out;

    fd = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
    if (fd >= 0 && timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) == 0) {
        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        ppoll(&pfd, 1, NULL, &old);
        close(fd);
        goto out;
    }

    /* NOTE: without a timerfd a signal that arrives between unblocking
     * and clock_nanosleep() waits for the deadline to be noticed. */
    md_warn("cannot set up the wake-up timer (%s); sleeping with "
            "clock_nanosleep instead", strerror(errno));
    if (fd >= 0)
        close(fd);
    sigprocmask(SIG_SETMASK, &old, NULL);
    clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &its.it_value, NULL);
    return;

out:
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* ---- Creating and freeing ---------------------------------------------- */

static int default_query(struct md_runner *r, const struct md_rule *rule,
                         struct md_table **out, struct md_error *err)
{
    if (r->hooks.query != NULL)
        return r->hooks.query(rule, out, err, r->hooks.ctx);
    return md_backend_run(r->backend, rule->query, rule->query_len,
                          rule->period, 0, out, err);
}

static md_instant runner_now(const struct md_runner *r)
{
    return r->hooks.now(r->hooks.ctx);
}

static size_t count_paths(char **paths)
{
    size_t n = 0;

    while (paths != NULL && paths[n] != NULL)
        n++;
    return n;
}

static void check_frequencies(const struct md_ruleset *rules,
                              const struct md_config *cfg)
{
    for (size_t i = 0; i < rules->nrules; i++)
        md_runner_check_frequency(rules->rules[i],
                                  md_runner_frequency(rules->rules[i], cfg));
}

/*
 * Keep the backend's call budget beside the store, whether or not the
 * configuration has a [store] section, so that every `run --once` process
 * and the daemon pace their calls together.  A budget file that cannot
 * be opened is warned about, and the calls are counted in memory then.
 */
static void share_budget(const char *store_path, struct md_backend *backend)
{
    struct md_buf path = MD_BUF_INIT;
    struct md_error e;

    md_error_clear(&e);
    if (md_buf_puts(&path, store_path) != 0 ||
        md_buf_puts(&path, MD_BUDGET_SUFFIX) != 0)
        md_error_set(&e, MD_E_INTERNAL, "out of memory");
    else if (md_backend_use_budget_file(backend, path.data, &e) == 0)
        md_debug("call budget in %s", path.data);
    if (e.kind != MD_OK)
        md_warn("%s; the API calls of this runner are counted in memory, "
                "not shared with other mdhunt processes", e.message);
    md_buf_free(&path);
}

/*
 * Load the rules of cfg.  A rule file with a problem is logged and
 * skipped, so that one broken file does not stop every other rule;
 * *problems is set then.  Fails only when no rule could be loaded or
 * something other than a rule file failed.
 */
static int load_rules(const struct md_config *cfg, struct md_ruleset *rules,
                      int *problems, struct md_error *err)
{
    *problems = 0;
    if (md_ruleset_load((const char *const *)cfg->rules.paths,
                        count_paths(cfg->rules.paths), 1, rules, err) == 0)
        return 0;
    if (err->kind == MD_E_RULE && rules->nrules > 0) {
        md_error_log("some rule files were skipped (see above); the other "
                     "%zu rules run", rules->nrules);
        md_error_clear(err);
        *problems = 1;
        return 0;
    }
    md_ruleset_free(rules);
    return -1;
}

/* Load the rules, the secret and the backend of cfg. */
static int load_parts(struct md_runner *r, struct md_config *cfg,
                      struct md_ruleset *rules, struct md_backend **backend,
                      struct md_error *err)
{
    *backend = NULL;
    if (load_rules(cfg, rules, &r->rule_problems, err) != 0)
        return -1;
    if (r->hooks.query != NULL)
        return 0;
    if (md_config_require_auth(cfg, err) != 0 ||
        md_backend_new(cfg, backend, err) != 0) {
        md_ruleset_free(rules);
        return -1;
    }
    share_budget(r->cfg.store.path, *backend);
    return 0;
}

/*
 * Load [report] exclusions of cfg, checking rule ids against rules, into
 * *out (NULL when the key is unset).  Errors name the file and line.
 */
static int load_exclusions(const struct md_runner *r,
                           const struct md_config *cfg,
                           const struct md_ruleset *rules,
                           struct md_exclusions **out, struct md_error *err)
{
    struct md_exclusions_options opts;
    size_t expired = 0;

    *out = NULL;
    if (cfg->report.exclusions == NULL)
        return 0;
    memset(&opts, 0, sizeof(opts));
    opts.rules = rules;
    opts.max_age = cfg->report.max_exclusion_age;
    opts.now = runner_now(r);
    if (md_exclusions_load(cfg->report.exclusions, &opts, out, err) != 0)
        return -1;
    for (size_t i = 0; i < (*out)->nentries; i++)
        expired += md_exclusion_expired(&(*out)->entries[i], opts.now) != 0;
    md_info("exclusions: %zu entr%s from %s, %zu expired (sha256 %.12s)",
            (*out)->nentries, (*out)->nentries == 1 ? "y" : "ies",
            cfg->report.exclusions, expired, (*out)->hash);
    return 0;
}

int md_runner_new(struct md_config *cfg, const struct md_runner_options *opts,
                  struct md_runner **out, struct md_error *err)
{
    struct md_runner *r;

    *out = NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        md_config_free(cfg);
        memset(cfg, 0, sizeof(*cfg));
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }
    r->cfg = *cfg;
    memset(cfg, 0, sizeof(*cfg));
    r->lock.fd = -1;
    r->daemon = opts->daemon;
    r->all = opts->all;
    if (opts->hooks != NULL)
        r->hooks = *opts->hooks;
    if (r->hooks.now == NULL)
        r->hooks.now = default_now;
    if (r->hooks.sleep_until == NULL)
        r->hooks.sleep_until = default_sleep_until;
    if (opts->rule_id != NULL) {
        r->rule_id = md_strdup(opts->rule_id);
        if (r->rule_id == NULL) {
            md_error_set(err, MD_E_INTERNAL, "out of memory");
            goto fail;
        }
    }

    if (load_rules(&r->cfg, &r->rules, &r->rule_problems, err) != 0)
        goto fail;
    if (r->rule_id != NULL && md_ruleset_find(&r->rules, r->rule_id) == NULL) {
        md_error_set(err, MD_E_USAGE, "no rule with id \"%s\" under the "
                     "[rules] paths of %s; list them with `mdhunt rules "
                     "validate`", r->rule_id,
                     r->cfg.path != NULL ? r->cfg.path : "the defaults");
        goto fail;
    }
    check_frequencies(&r->rules, &r->cfg);
    if (load_exclusions(r, &r->cfg, &r->rules, &r->exclusions, err) != 0)
        goto fail;
    if (r->hooks.query == NULL && md_config_require_auth(&r->cfg, err) != 0)
        goto fail;

    /* The lock comes before the read-write open, which marks runs left
     * "running" as interrupted and must not touch another runner's. */
    if (md_runner_lock_acquire(r->cfg.store.path, &r->lock, err) != 0)
        goto fail;
    if (md_store_open(r->cfg.store.path, 0, &r->store, err) != 0)
        goto fail;
    if (r->hooks.query == NULL &&
        md_backend_new(&r->cfg, &r->backend, err) != 0)
        goto fail;
    if (r->backend != NULL)
        share_budget(r->cfg.store.path, r->backend);

    md_info("runner started: mdhunt %s, %zu rules, store %s, %s",
            MDHUNT_VERSION, r->rules.nrules, r->cfg.store.path,
            r->daemon ? "daemon" : "one cycle");
    *out = r;
    return 0;

fail:
    md_runner_free(r);
    return -1;
}

void md_runner_free(struct md_runner *r)
{
    if (r == NULL)
        return;
    md_backend_free(r->backend);
    md_store_close(r->store);
    md_runner_lock_release(&r->lock);
    md_ruleset_free(&r->rules);
    md_exclusions_free(r->exclusions);
    md_config_free(&r->cfg);
    free(r->rule_id);
    free(r);
}

struct md_store *md_runner_store(struct md_runner *r)
{
    return r->store;
}

const struct md_ruleset *md_runner_rules(const struct md_runner *r)
{
    return &r->rules;
}

/* ---- One run ----------------------------------------------------------- */

static double elapsed_seconds(int64_t start_ms)
{
    return (double)(md_monotonic_ms() - start_ms) / 1000.0;
}

/* Log a failed run with the error's kind, HTTP status and request id. */
static void log_run_error(const struct md_rule *rule, int64_t run_id,
                          double seconds, const struct md_error *e)
{
    char extra[256] = "";
    size_t n = 0;

    if (e->http_status != 0)
        n += (size_t)snprintf(extra + n, sizeof(extra) - n, ", HTTP %ld",
                              e->http_status);
    if (e->service_code[0] != '\0' && n < sizeof(extra))
        n += (size_t)snprintf(extra + n, sizeof(extra) - n, ", code %s",
                              e->service_code);
    if (e->request_id[0] != '\0' && n < sizeof(extra))
        snprintf(extra + n, sizeof(extra) - n, ", request id %s",
                 e->request_id);

    if (e->kind == MD_E_INTERRUPTED)
        md_warn("rule %s: run %lld interrupted after %.1f s: %s", rule->id,
                (long long)run_id, seconds, e->message);
    else
        md_error_log("rule %s: run %lld failed after %.1f s (%s%s): %s",
                     rule->id, (long long)run_id, seconds,
                     md_err_kind_name(e->kind), extra, e->message);
}

static void log_run_ok(const struct md_rule *rule, int64_t run_id,
                       const struct md_table *table,
                       const struct md_diff *diff, double seconds)
{
    const int64_t *c = diff->event_counts;

    if (diff->baseline)
        md_info("rule %s: run %lld ok: %zu rows, baseline of %lld "
                "devices, %.1f s", rule->id, (long long)run_id,
                table->nrows, (long long)c[MD_EVENT_BASELINE], seconds);
    else
        md_info("rule %s: run %lld ok: %zu rows, %lld new, %lld gone, "
                "%lld returned, %lld renamed, %.1f s", rule->id,
                (long long)run_id, table->nrows,
                (long long)c[MD_EVENT_NEW], (long long)c[MD_EVENT_GONE],
                (long long)c[MD_EVENT_RETURNED],
                (long long)c[MD_EVENT_RENAMED], seconds);
    if (c[MD_EVENT_EXCLUDED] > 0 || c[MD_EVENT_UNCOVERED] > 0)
        md_info("rule %s: run %lld: %lld excluded, %lld uncovered "
                "(no longer excluded)", rule->id, (long long)run_id,
                (long long)c[MD_EVENT_EXCLUDED],
                (long long)c[MD_EVENT_UNCOVERED]);
    if (table->truncated)
        md_warn("rule %s: run %lld returned %zu rows and may be truncated "
                "at the service's limit of %d rows, so no device is "
                "reported gone; narrow the query or its time range",
                rule->id, (long long)run_id, table->nrows,
                MD_SERVICE_ROW_LIMIT);
}

/* Compute and record the diff of a successful query. */
static int record_ok(struct md_runner *r, const struct md_rule *rule,
                     int64_t run_id, const struct md_table *table,
                     struct md_diff *diff, struct md_error *run_err)
{
    struct md_diff_options dopts;
    enum md_send_when outbox_when = MD_SEND_NEVER;

    memset(&dopts, 0, sizeof(dopts));
    dopts.rule_id = rule->id;
    dopts.rule = rule;
    dopts.rule_config = md_config_rule(&r->cfg, rule->id);
    dopts.realert_after = r->cfg.report.realert_after;
    dopts.first_run = r->cfg.report.first_run;
    dopts.exclusions = r->exclusions;
    /* The mail digest reads the outbox; queue an item when mail is on. */
    if (r->cfg.mail.enabled)
        outbox_when = r->cfg.mail.send_when;

    return md_diff_record_run(r->store, run_id, table, &dopts,
                              runner_now(r), outbox_when, diff, NULL,
                              run_err);
}

/*
 * Run one rule for slot and record the outcome.  A failed run fills
 * res->last_error and returns 0; -1 means the store failed.
 */
static int run_rule(struct md_runner *r, const struct md_rule *rule,
                    md_instant slot, struct md_cycle_result *res,
                    struct md_error *err)
{
    struct md_run_start start;
    struct md_table *table = NULL;
    struct md_diff diff;
    struct md_error run_err;
    int64_t run_id;
    int64_t start_ms;
    int rc;

    memset(&start, 0, sizeof(start));
    start.rule_id = rule->id;
    start.rule_name = rule->name;
    start.rule_file = rule->file;
    start.query = rule->query;
    start.query_hash = rule->query_sha256;
    start.tenant = r->cfg.auth.tenant_id;
    start.backend = md_backend_kind_name(r->cfg.api.backend);
    start.exclusions_hash = r->exclusions != NULL ? r->exclusions->hash
                                                  : NULL;
    start.period = rule->period;
    start.due = slot;
    start.started = runner_now(r);
    if (md_store_run_begin(r->store, &start, &run_id, err) != 0)
        return -1;
    res->ran++;

    md_error_clear(&run_err);
    memset(&diff, 0, sizeof(diff));
    start_ms = md_monotonic_ms();
    md_debug("rule %s: run %lld started", rule->id, (long long)run_id);
    rc = default_query(r, rule, &table, &run_err);
    if (rc == 0)
        rc = record_ok(r, rule, run_id, table, &diff, &run_err);

    if (rc == 0) {
        log_run_ok(rule, run_id, table, &diff, elapsed_seconds(start_ms));
        res->ok++;
    } else {
        if (run_err.kind == MD_OK)
            md_error_set(&run_err, MD_E_INTERNAL, "the run failed without "
                         "a message");
        log_run_error(rule, run_id, elapsed_seconds(start_ms), &run_err);
        res->failed++;
        res->last_error = run_err;
        if (md_store_run_finish_failed(r->store, run_id, runner_now(r),
                                       &run_err, err) != 0) {
            md_table_free(table);
            return -1;
        }
    }

    md_diff_free(&diff);
    md_table_free(table);
    return 0;
}

/* ---- Cycles ------------------------------------------------------------ */

static int selected(const struct md_runner *r, const struct md_rule *rule)
{
    return r->rule_id == NULL || md_strcasecmp(r->rule_id, rule->id) == 0;
}

static int rule_due(struct md_runner *r, const struct md_rule *rule,
                    md_instant now, struct md_due *due, struct md_error *err)
{
    return md_runner_rule_due(r->store, rule, &r->cfg, now, due, err);
}

static void prune(struct md_runner *r)
{
    struct md_error e;
    int64_t deleted = 0;

    md_error_clear(&e);
    if (md_store_prune(r->store, runner_now(r), r->cfg.store.keep_runs,
                       r->cfg.store.keep_days, &deleted, &e) != 0) {
        md_error_log("pruning old result rows failed: %s", e.message);
        return;
    }
    if (deleted > 0)
        md_debug("pruned %lld old result rows", (long long)deleted);
}

/*
 * Set *held when the rule is held back because the service stopped its
 * query (preempted, timed out or a result too large).  Such a query has
 * already spent the tenant's CPU quota, so the backend does not retry
 * it.  The runner tries it once more at its next slot, and then no more
 * until its query changes or a run is forced with --rule or --all.
 * NOTE: the store keeps the kind of the last failure only, so "the last
 * run was stopped after an earlier failed run" stands for "stopped twice
 * in a row": a rule stopped once after a network failure is held back
 * one slot early.
 */
static int held_back(struct md_runner *r, const struct md_rule *rule,
                     int *held, struct md_error *err)
{
    struct md_rule_status status;
    md_instant last_due;
    enum md_err_kind kind;

    *held = 0;
    if (md_store_last_due(r->store, rule->id, &last_due, err) != 0)
        return -1;
    if (last_due == MD_STORE_TIME_NONE)
        return 0;
    if (md_store_rule_status(r->store, rule->id, &status, err) != 0)
        return -1;
    kind = status.last_run.error_kind;
    *held = status.last_run.status == MD_RUN_FAILED &&
            (kind == MD_E_QUERY_PREEMPTED || kind == MD_E_QUERY_TOO_LARGE) &&
            status.consecutive_failures >= 2 &&
            strcmp(status.last_run.query_hash, rule->query_sha256) == 0;
    md_rule_status_clear(&status);
    return 0;
}

static void log_held_back(const struct md_rule *rule)
{
    md_warn("rule %s: not run: the service stopped its query again at "
            "its last run (preempted, timed out or too large), after an "
            "earlier failure; make the query cheaper, which runs it again "
            "at its next slot, or run it now with mdhunt run --once "
            "--rule %s", rule->id, rule->id);
}

/* Record a run of rule that was not sent because the tenant's queries
 * are paused. */
static int record_paused(struct md_runner *r, const struct md_rule *rule,
                         md_instant slot, md_instant until,
                         struct md_cycle_result *res, struct md_error *err)
{
    struct md_run_start start;
    struct md_error run_err;
    char text[MD_TIME_TEXT_MAX];
    md_instant now = runner_now(r);
    int64_t run_id;

    memset(&start, 0, sizeof(start));
    start.rule_id = rule->id;
    start.rule_name = rule->name;
    start.rule_file = rule->file;
    start.query = rule->query;
    start.query_hash = rule->query_sha256;
    start.tenant = r->cfg.auth.tenant_id;
    start.backend = md_backend_kind_name(r->cfg.api.backend);
    start.exclusions_hash = r->exclusions != NULL ? r->exclusions->hash
                                                  : NULL;
    start.period = rule->period;
    start.due = slot;
    start.started = now;
    if (md_store_run_begin(r->store, &start, &run_id, err) != 0)
        return -1;
    res->ran++;
    res->failed++;

    md_error_clear(&run_err);
    run_err.retry_after = (long)((until - now) / MD_TICKS_PER_SECOND);
    md_error_set(&run_err, MD_E_CPU_QUOTA, "throttled: not sent, because "
                 "the tenant's advanced hunting CPU quota is used up and "
                 "its queries are paused until %s",
                 md_time_format_seconds(until, text, sizeof(text)));
    res->last_error = run_err;
    md_debug("rule %s: run %lld skipped: %s", rule->id, (long long)run_id,
             run_err.message);
    return md_store_run_finish_failed(r->store, run_id, now, &run_err, err);
}

/* Return the end of the tenant's pause after a run failed for the CPU
 * quota, else 0. */
static md_instant tenant_paused_until(struct md_runner *r,
                                      const struct md_cycle_result *res)
{
    md_instant until = 0;
    struct md_error e;

    if (r->backend == NULL || res->last_error.kind != MD_E_CPU_QUOTA)
        return 0;
    md_error_clear(&e);
    if (md_backend_paused_until(r->backend, &until, &e) != 0) {
        md_warn("%s", e.message);
        return 0;
    }
    return until;
}

int md_runner_cycle(struct md_runner *r, struct md_cycle_result *res,
                    struct md_error *err)
{
    int forced = r->all || r->rule_id != NULL;
    md_instant paused_until = 0;
    size_t paused_rules = 0;
    char text[MD_TIME_TEXT_MAX];

    memset(res, 0, sizeof(*res));
    md_error_clear(&res->last_error);

    for (size_t i = 0; i < r->rules.nrules; i++) {
        const struct md_rule *rule = r->rules.rules[i];
        md_instant now;
        struct md_due due;
        int held;

        if (!selected(r, rule))
            continue;
        if (md_interrupt_pending()) {
            res->interrupted = 1;
            break;
        }

        now = runner_now(r);
        if (rule_due(r, rule, now, &due, err) != 0)
            return -1;
        if (!forced && now < due.ready)
            continue;
        /* A forced run before its slot starts a new grid at now. */
        if (due.slot > now)
            due.slot = now;
        if (!forced && held_back(r, rule, &held, err) != 0)
            return -1;
        if (!forced && held) {
            log_held_back(rule);
            continue;
        }

        if (paused_until > now) {
            if (record_paused(r, rule, due.slot, paused_until, res,
                              err) != 0)
                return -1;
            paused_rules++;
            continue;
        }
        if (run_rule(r, rule, due.slot, res, err) != 0)
            return -1;
        if (res->last_error.kind == MD_E_INTERRUPTED ||
            md_interrupt_pending()) {
            res->interrupted = 1;
            break;
        }
        if (paused_until == 0)
            paused_until = tenant_paused_until(r, res);
    }
    if (paused_rules > 0)
        md_warn("%zu rule%s skipped and recorded as failed (cpu_quota): "
                "the tenant's CPU quota is used up until %s", paused_rules,
                paused_rules == 1 ? "" : "s",
                md_time_format_seconds(paused_until, text, sizeof(text)));

    if (res->ran > 0)
        prune(r);
    return 0;
}

/* Bring *deadline forward to the outbox's next compose or retry time. */
static int mail_wakeup(struct md_runner *r, md_instant now,
                       md_instant *deadline, struct md_error *err)
{
    md_instant mail;

    if (md_outbox_next_wakeup(r->store, &r->cfg, now, &mail, err) != 0)
        return -1;
    if (mail != MD_STORE_TIME_NONE &&
        (*deadline == MD_STORE_TIME_NONE || mail < *deadline))
        *deadline = mail;
    return 0;
}

int md_runner_next_wakeup(struct md_runner *r, md_instant *deadline,
                          struct md_error *err)
{
    md_instant now = runner_now(r);

    *deadline = MD_STORE_TIME_NONE;
    for (size_t i = 0; i < r->rules.nrules; i++) {
        const struct md_rule *rule = r->rules.rules[i];
        struct md_due due;
        int held = 0;

        if (!selected(r, rule))
            continue;
        if (rule_due(r, rule, now, &due, err) != 0)
            return -1;
        /* A held-back rule is not run, so it cannot wake the daemon. */
        if (!r->all && r->rule_id == NULL &&
            held_back(r, rule, &held, err) != 0)
            return -1;
        if (held)
            continue;
        if (*deadline == MD_STORE_TIME_NONE || due.ready < *deadline)
            *deadline = due.ready;
    }
    return mail_wakeup(r, now, deadline, err);
}

/* ---- Mail -------------------------------------------------------------- */

int md_runner_mail(struct md_runner *r, int compose, struct md_error *err)
{
    md_instant now = runner_now(r);
    int due = compose;

    if (!compose &&
        md_outbox_compose_due(r->store, &r->cfg, now, &due, err) != 0)
        return -1;
    return md_outbox_run(r->store, &r->cfg, &r->rules, NULL, now, due,
                         err);
}

/* ---- Reload ------------------------------------------------------------ */

/* Log the rules added, removed and changed; returns how many changed. */
static size_t log_rule_changes(const struct md_ruleset *old,
                               const struct md_ruleset *new)
{
    size_t changes = 0;

    for (size_t i = 0; i < new->nrules; i++) {
        const struct md_rule *n = new->rules[i];
        const struct md_rule *o = md_ruleset_find(old, n->id);

        if (o == NULL) {
            md_info("reload: rule %s added (%s)", n->id, n->file);
            changes++;
        } else if (strcmp(o->query_sha256, n->query_sha256) != 0) {
            md_info("reload: rule %s changed its query (%s)", n->id,
                    n->file);
            changes++;
        } else if (o->frequency != n->frequency ||
                   o->period != n->period) {
            md_info("reload: rule %s changed its queryFrequency or "
                    "queryPeriod (%s)", n->id, n->file);
            changes++;
        }
    }
    for (size_t i = 0; i < old->nrules; i++) {
        if (md_ruleset_find(new, old->rules[i]->id) == NULL) {
            md_info("reload: rule %s removed", old->rules[i]->id);
            changes++;
        }
    }
    return changes;
}

int md_runner_reload(struct md_runner *r, struct md_error *err)
{
    struct md_config cfg;
    struct md_ruleset rules = { NULL, 0 };
    struct md_backend *backend = NULL;
    struct md_exclusions *exclusions = NULL;
    char *path;
    size_t changes;

    if (r->cfg.path == NULL)
        return md_error_set(err, MD_E_CONFIG, "reload: the runner was "
                            "started without a configuration file, so "
                            "there is nothing to read again");
    if (md_config_load(r->cfg.path, &cfg, err) != 0)
        return md_error_prefix(err, "reload failed, keeping the previous "
                               "configuration");
    if (load_parts(r, &cfg, &rules, &backend, err) != 0) {
        md_config_free(&cfg);
        return md_error_prefix(err, "reload failed, keeping the previous "
                               "configuration");
    }
    if (load_exclusions(r, &cfg, &rules, &exclusions, err) != 0) {
        md_backend_free(backend);
        md_ruleset_free(&rules);
        md_config_free(&cfg);
        return md_error_prefix(err, "reload failed, keeping the previous "
                               "configuration, rules and exclusions");
    }

    if (strcmp(cfg.store.path, r->cfg.store.path) != 0)
        md_warn("reload: [store] path changed from %s to %s; restart "
                "mdhunt to use the new store, it keeps the old one until "
                "then", r->cfg.store.path, cfg.store.path);
    /* Keep the store path the lock and the open store belong to; the old
     * configuration frees the new string below. */
    path = cfg.store.path;
    cfg.store.path = r->cfg.store.path;
    r->cfg.store.path = path;

    changes = log_rule_changes(&r->rules, &rules);
    check_frequencies(&rules, &cfg);

    /* The backend borrows its configuration: free it first. */
    md_backend_free(r->backend);
    md_ruleset_free(&r->rules);
    md_exclusions_free(r->exclusions);
    md_config_free(&r->cfg);
    r->cfg = cfg;
    r->rules = rules;
    r->backend = backend;
    r->exclusions = exclusions;
    md_info("reloaded %s: %zu rules, %zu changed", r->cfg.path,
            r->rules.nrules, changes);
    return 0;
}

/* ---- The daemon -------------------------------------------------------- */

static void reload_if_requested(struct md_runner *r)
{
    struct md_error e;

    if (!reload_requested)
        return;
    reload_requested = 0;
    md_info("SIGHUP received: reloading %s",
            r->cfg.path != NULL ? r->cfg.path : "the configuration");
    md_error_clear(&e);
    if (md_runner_reload(r, &e) != 0)
        md_error_log("%s", e.message);
}

static void log_next_wakeup(md_instant deadline)
{
    char text[MD_TIME_TEXT_MAX];

    if (deadline == MD_STORE_TIME_NONE)
        md_debug("no rule to schedule; waiting for a signal");
    else
        md_debug("sleeping until %s",
                 md_time_format_seconds(deadline, text, sizeof(text)));
}

int md_runner_loop(struct md_runner *r, struct md_error *err)
{
    struct md_cycle_result res;
    md_instant deadline;
    int rc = 0;

    md_runner_install_reload_signal();
    for (;;) {
        if (md_interrupt_pending())
            break;
        reload_if_requested(r);

        if (md_runner_cycle(r, &res, err) != 0) {
            rc = -1;
            break;
        }
        if (res.interrupted || md_interrupt_pending())
            break;
        if (md_runner_mail(r, 0, err) != 0) {
            rc = -1;
            break;
        }

        if (md_runner_next_wakeup(r, &deadline, err) != 0) {
            rc = -1;
            break;
        }
        log_next_wakeup(deadline);
        if (deadline == MD_STORE_TIME_NONE)
            deadline = INT64_MAX;
        if (deadline > runner_now(r))
            r->hooks.sleep_until(deadline, r->hooks.ctx);
    }

    if (md_interrupt_pending())
        md_info("runner stopped by %s", md_runner_signal_name(
                                            md_interrupt_pending()));
    else if (rc != 0)
        md_error_log("runner stopped: %s", err->message);
    return rc;
}

int md_runner_rule_problems(const struct md_runner *r)
{
    return r->rule_problems;
}
