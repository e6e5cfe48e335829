/*
 * The scheduled runner: due times, the runner lock, one cycle of rule
 * runs, the daemon loop and reloading on SIGHUP.
 *
 * Schedule.  A rule runs every queryFrequency (else [schedule]
 * default_frequency).  Its slots lie on a grid through the due time of
 * its previous run: last_due + k * frequency.  A rule that has never run
 * is due at once.  Otherwise its next slot is the latest slot at or
 * before now, or the first one after last_due when none has passed yet.
 * So after downtime an overdue rule runs once, and the run after it falls
 * on the first slot after now.  A rule becomes ready at its slot plus a
 * delay in [0, [schedule] jitter] whole seconds (kept below the
 * frequency) that is a hash of the rule id and the slot, so every process
 * computes the same delay.  The store records the slot as the run's due
 * time.  An interrupted run does not use up its slot: its rule is due
 * again at once, so a restart repeats the run.  A run forced before its
 * slot (--all, --rule) is recorded as due at its start, which starts a
 * new grid.
 *
 * Lock.  Only one runner may write to a store.  It holds an exclusive
 * flock() on STORE_PATH.lock (never on the database file, whose locks
 * SQLite manages) from before it opens the store read-write until it
 * exits.
 *
 * Throttling.  The backend's call budget lives in STORE_PATH.budget, so
 * every runner and `hunt` of the store paces its calls together.  After
 * a 429 for the tenant's CPU quota the cycle's remaining rules are not
 * sent but recorded as failed runs of kind cpu_quota.  A rule whose query
 * the service stopped (preempted, timed out, too large) is tried once
 * more at its next slot; when that run is stopped too, the rule is held
 * back until its query changes or a run is forced (--all, --rule).
 *
 * Signals.  SIGINT and SIGTERM set the stop request of interrupt.h: a
 * query in progress is aborted, its run is recorded as interrupted and
 * the runner stops.  SIGHUP requests that the daemon reload its
 * configuration and rules between runs.
 */
#ifndef MDHUNT_RUNNER_H
#define MDHUNT_RUNNER_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/rule.h"
#include "mdhunt/store.h"
#include "mdhunt/table.h"

/* ---- Lock -------------------------------------------------------------- */

/* Suffix of the lock file beside the store. */
#define MD_RUNNER_LOCK_SUFFIX ".lock"

struct md_runner_lock {
    int fd;                 /* -1 when not held */
    char *path;             /* STORE_PATH.lock */
};

#define MD_RUNNER_LOCK_INIT { -1, NULL }

/*
 * Take the runner lock of the store at store_path: an exclusive,
 * non-blocking flock() on store_path + ".lock", created with mode 0600
 * when missing.  The descriptor is close-on-exec.  When another process
 * holds the lock the error is MD_E_LOCK naming the lock file; other
 * failures are MD_E_STORE.  Release with md_runner_lock_release().
 */
int md_runner_lock_acquire(const char *store_path,
                           struct md_runner_lock *lock,
                           struct md_error *err);

/* Release the lock and free the path; a lock not held is ignored.  The
 * lock file stays, so that the next runner locks the same inode. */
void md_runner_lock_release(struct md_runner_lock *lock);

/* ---- Schedule ---------------------------------------------------------- */

/* Seconds between runs of rule: its queryFrequency, else the configured
 * default_frequency. */
int64_t md_runner_frequency(const struct md_rule *rule,
                            const struct md_config *cfg);

/*
 * Warn when frequency is longer than the rule's queryPeriod, because
 * devices active only between two lookback windows would never be seen.
 * Returns 1 when it warned, else 0 (also when the period is unknown).
 */
int md_runner_check_frequency(const struct md_rule *rule, int64_t frequency);

/*
 * The jitter of a rule's slot: a delay in [0, jitter_seconds] whole
 * seconds, returned in md_instant ticks.  It is a hash of rule_id and
 * slot, so the same rule and slot always give the same delay.
 */
md_instant md_runner_jitter(const char *rule_id, md_instant slot,
                            int64_t jitter_seconds);

/* When a rule is next due. */
struct md_due {
    md_instant slot;        /* the due time recorded with the run */
    md_instant ready;       /* slot plus jitter: when the rule may run */
};

/*
 * Compute a rule's next slot from the due time of its last run
 * (MD_STORE_TIME_NONE when it never ran), as the header comment
 * describes.  A rule that never ran gets slot = ready = now.
 * frequency is in seconds and must be positive; jitter is in seconds.
 */
void md_runner_next_due(const char *rule_id, md_instant last_due,
                        int64_t frequency, int64_t jitter_seconds,
                        md_instant now, struct md_due *out);

/*
 * Compute when rule is next due from its last run in st.  A run that
 * was interrupted (by a stop request, or a process that was killed) did
 * not finish its slot, so its rule is due again at once.
 */
int md_runner_rule_due(struct md_store *st, const struct md_rule *rule,
                       const struct md_config *cfg, md_instant now,
                       struct md_due *out, struct md_error *err);

/* ---- The runner -------------------------------------------------------- */

/*
 * Replaceable parts, so that tests can drive the runner without a clock,
 * a sleep or a network.  A NULL member uses the real one.
 */
struct md_runner_hooks {
    /* The current time; default md_now(). */
    md_instant (*now)(void *ctx);

    /*
     * Sleep until deadline (an instant of now()) or until a signal
     * arrives, whichever is first.  The default returns at once when a
     * stop or reload is pending.  Otherwise it waits in ppoll() on a
     * CLOCK_REALTIME timerfd armed for the absolute deadline, so it
     * wakes only for the deadline or a signal, never periodically.
     */
    void (*sleep_until)(md_instant deadline, void *ctx);

    /*
     * Run a rule's query; on success *out is a new table.  The default
     * is md_backend_run() on the configured backend.  When set, the
     * runner neither loads the client secret nor creates a backend.
     */
    int (*query)(const struct md_rule *rule, struct md_table **out,
                 struct md_error *err, void *ctx);

    void *ctx;
};

struct md_runner_options {
    int daemon;             /* loop until a stop request; else one cycle */
    int all;                /* one cycle: run every rule, due or not */
    const char *rule_id;    /* one cycle: run only this rule, due or not */
    const struct md_runner_hooks *hooks;    /* NULL: all defaults */
};

/* The outcome of one cycle. */
struct md_cycle_result {
    size_t ran;             /* runs started */
    size_t ok;
    size_t failed;          /* failed or interrupted */
    int interrupted;        /* a stop request ended the cycle */
    struct md_error last_error;     /* of the last failed run */
};

struct md_runner;

/*
 * Create a runner from a loaded configuration, taking ownership of *cfg
 * (which is zeroed; md_runner_free() frees it).  Loads the rules under
 * [rules] paths, warns about frequencies longer than their periods, then
 * takes the runner lock, opens the store read-write and creates the
 * backend.  Errors: MD_E_CONFIG and MD_E_RULE for the configuration and
 * the rules, MD_E_USAGE for an unknown opts->rule_id, MD_E_LOCK when
 * another runner holds the lock, MD_E_STORE, and the backend's errors.
 * On failure *cfg is freed too.  opts->hooks must outlive the runner.
 */
int md_runner_new(struct md_config *cfg, const struct md_runner_options *opts,
                  struct md_runner **out, struct md_error *err);

/* Close the store, release the lock and free everything; NULL is
 * ignored. */
void md_runner_free(struct md_runner *r);

/* The open store, for tests. */
struct md_store *md_runner_store(struct md_runner *r);

/* The loaded rules. */
const struct md_ruleset *md_runner_rules(const struct md_runner *r);

/*
 * Run every selected rule that is ready (all of them with opts->all, the
 * one named with opts->rule_id), one after another, then prune the
 * store.  A failing rule is logged and recorded, and the others still
 * run.  A stop request ends the cycle after recording the current run as
 * interrupted.  Returns -1 only when the store itself failed (the runs
 * cannot be recorded); res describes the runs either way.
 */
int md_runner_cycle(struct md_runner *r, struct md_cycle_result *res,
                    struct md_error *err);

/*
 * Set *deadline to the earliest instant at which a rule becomes ready,
 * or the outbox has work (md_outbox_next_wakeup()), whichever is first.
 * With neither it is MD_STORE_TIME_NONE.
 */
int md_runner_next_wakeup(struct md_runner *r, md_instant *deadline,
                          struct md_error *err);

/*
 * The mail step after a cycle (outbox.h): compose a digest of the queued
 * reports, at once when compose is nonzero (`run --once`), else when
 * [mail] digest_every has passed since the previous one, then deliver the
 * digests that are due.  Does nothing without [mail] or with send_when =
 * never.  Mail errors are logged and leave the digests queued; -1 means
 * the store failed.
 */
int md_runner_mail(struct md_runner *r, int compose, struct md_error *err);

/*
 * Read the configuration file and the rules again.  On success the new
 * ones replace the old, and the rules added, removed and whose query
 * changed are logged.  On failure the old ones stay and err describes
 * the problem.
 * A changed [store] path is ignored with a warning, because the lock and
 * the open store belong to the old one.
 */
int md_runner_reload(struct md_runner *r, struct md_error *err);

/*
 * The daemon: cycles until a stop request, running the mail step after
 * each cycle, sleeping until the next rule is ready or the outbox has
 * work in between, and reloading after SIGHUP.  Returns 0 after a
 * stop request, or -1 when the store failed.
 */
int md_runner_loop(struct md_runner *r, struct md_error *err);

/* Install the SIGHUP handler that requests a reload. */
void md_runner_install_reload_signal(void);

/* Request a reload, as SIGHUP does (async-signal-safe). */
void md_runner_request_reload(void);

/* Whether a reload was requested and not yet done. */
int md_runner_reload_pending(void);

/* "SIGINT", "SIGTERM", "SIGHUP", else "a signal". */
const char *md_runner_signal_name(int signo);

/* Nonzero when some rule files had problems and were skipped; run --once
 * then exits with MD_EXIT_PARTIAL even when every run succeeded. */
int md_runner_rule_problems(const struct md_runner *r);

#endif
