/*
 * The diff: which devices of a rule's result are new, back, gone, renamed
 * or carry a new value of the tracked column, compared with what the store
 * knew before the run.
 *
 * md_diff_compute() is a pure function of the result table, the rule's
 * previous state (md_store_load_state()) and the options; it does no I/O.
 *
 * A row's key is its DeviceId column when the result has one.  Without
 * it, the key is the column of the rule's Host entity mapping (identifier
 * HostName), and without that the columns of `key = COLUMN[,COLUMN]` in
 * the rule's [rule "ID"] section.  A key taken from DeviceName or from a
 * Host mapping is stored in lower case, so it compares case-insensitively.
 * A key of several columns is stored as a JSON array of the values.
 *
 * Rows sharing a key are merged into one: earliest FirstSeen, latest
 * LastSeen, summed Count, and the DeviceName (and the rest of the row) of
 * the row with the latest LastSeen.
 *
 * Exclusions (exclusions.h) are matched against each row at the run's
 * start.  A key is excluded only when every one of its rows matches an
 * entry, so one row that no entry covers keeps the device reported.  The
 * entry named is the one matching the row with the latest LastSeen.  An
 * excluded key is still stored as an entity and gets an "excluded" event
 * in every run, in place of any other event.  A key excluded at its
 * previous sighting and no longer excluded gets one "uncovered" event,
 * in place of the others (a baseline included).  An excluded entity is
 * never reported gone.
 */
#ifndef MDHUNT_DIFF_H
#define MDHUNT_DIFF_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/exclusions.h"
#include "mdhunt/rule.h"
#include "mdhunt/store.h"
#include "mdhunt/table.h"

/* The "format" member of md_diff_json(). */
#define MD_DIFF_JSON_FORMAT "mdhunt.diff/1"

struct md_diff_options {
    const char *rule_id;                  /* for messages */
    const struct md_rule *rule;           /* entity mappings; may be NULL */
    const struct md_rule_config *rule_config;  /* key, track; may be NULL */
    int64_t realert_after;                /* seconds; 0: never again */
    enum md_first_run first_run;          /* [report] first_run */
    const struct md_exclusions *exclusions;   /* may be NULL */
};

/* The outcome of md_diff_compute().  Free with md_diff_free(). */
struct md_diff {
    int baseline;               /* first run, or the query changed */
    int query_changed;          /* the query differs from the last run's */
    int64_t key_count;          /* distinct non-empty keys */
    int64_t unchanged_count;    /* keys with no event */
    int64_t event_counts[MD_EVENT_KIND_COUNT];
    struct md_event *events;    /* empty_key, then per key, then gone */
    size_t nevents;
    struct md_entity *entities; /* new state of every key in the result */
    size_t nentities;
    struct md_exclusion_issue *exclusion_issues;  /* entries not applied */
    size_t nexclusion_issues;
};

void md_diff_free(struct md_diff *d);

/*
 * Compute the diff of a successful run.  run supplies id, started (the
 * instant recorded as "seen"), query_hash; table its rows and truncated
 * flag; prev the state before the run.
 *
 * New: a key never seen for the rule, or (event "returned") last seen more
 * than realert_after seconds before run->started.  Gone: a key of the
 * reference set absent from this result; a truncated result, a baseline
 * and a changed query produce none.  Renamed: a known DeviceId whose
 * DeviceName changed other than in letter case.  Tracked: a value of the
 * track column not seen before on a known key (values compare
 * case-insensitively).  Baseline: the rule's first successful run, or the
 * first after its query changed, unless first_run is "report".  In a
 * baseline every key gets a baseline event and none is new.
 *
 * Errors: MD_E_RULE when a result with rows has no usable key (naming
 * the rule, its columns and the [rule "ID"] key to set) or lacks the
 * track or key column configured; MD_E_INTERNAL when out of memory.
 */
int md_diff_compute(const struct md_diff_options *opts,
                    const struct md_run *run, const struct md_table *table,
                    const struct md_rule_state *prev, struct md_diff *out,
                    struct md_error *err);

/*
 * Return nonzero when the diff has something to report under [mail]
 * send_when = new: a new, returned, tracked, renamed, uncovered or
 * baseline event.  Gone, excluded and empty_key events alone do not
 * count.
 */
int md_diff_is_newsworthy(const struct md_diff *d);

/*
 * Record a successful run: load the rule's state, compute the diff and
 * write everything with md_store_run_finish_ok() in one transaction.  An
 * outbox item is added when outbox_when is MD_SEND_ALWAYS, or
 * MD_SEND_NEW and the diff is newsworthy (pass MD_SEND_NEVER when mail
 * is off).  On success *out (may be NULL) receives the diff, which the
 * caller frees with md_diff_free().  On failure the run stays "running",
 * and the caller records the error with md_store_run_finish_failed().
 * Every exclusion issue is logged as a warning and stored with the run.
 */
int md_diff_record_run(struct md_store *st, int64_t run_id,
                       const struct md_table *table,
                       const struct md_diff_options *opts,
                       md_instant ended, enum md_send_when outbox_when,
                       struct md_diff *out, int64_t *outbox_id,
                       struct md_error *err);

/*
 * Build the JSON document of a stored diff:
 *
 *   {"format": "mdhunt.diff/1",
 *    "rule": {"id", "name", "file"},
 *    "run": {"id", "status", "tenant", "backend", "due", "started",
 *            "ended", "rows", "truncated", "query_hash",
 *            "exclusions_hash", "period", "error"},
 *    "baseline": bool,
 *    "new": [rows], "gone": [rows], "returned": [rows],
 *    "renamed": [rows], "baseline_rows": [rows], "empty_key": [rows],
 *    "excluded": [rows], "uncovered": [rows],
 *    "exclusion_issues": [{"entry", "message"}],
 *    "unchanged": count}
 *
 * Each row is the rule's row as reported plus members "mdhunt_event",
 * "mdhunt_key" and "mdhunt_first_seen", and by kind "mdhunt_last_seen"
 * (returned, gone), "mdhunt_days_away" (returned), "mdhunt_old_name" and
 * "mdhunt_new_name" (renamed), "mdhunt_value" (tracked),
 * "mdhunt_exclusion" (excluded, uncovered: an object with "id", "reason",
 * "owner" and "expires" as md_exclusion_format_expiry() writes it) and
 * "mdhunt_first_excluded" (excluded: true when the entry did not exclude
 * the key at its previous sighting).
 * Tracked events are listed under "new".  Times are md_time_format()
 * text, or null when unknown.  "error" is null unless the run failed or
 * was interrupted, and then contains "kind", "message", "http_status"
 * and "request_id".  Returns a new reference, or NULL with err set.
 */
json_t *md_diff_json(const struct md_run_diff *d, struct md_error *err);

#endif
