/*
 * The SQLite store: rules, runs, result rows, entities (the devices a rule
 * has returned), diff events and the mail outbox.
 *
 * Every instant in the database is an INTEGER holding md_instant ticks
 * (100 ns since 1970-01-01T00:00:00Z, UTC), and every duration is an
 * INTEGER number of seconds.  The schema is versioned with PRAGMA
 * user_version and upgraded forward when the store is opened read-write.
 * The journal is in WAL mode, so reading commands can open the store
 * read-only while a runner writes to it.
 *
 * The flow of one scheduled run:
 *
 *   md_store_run_begin()          inserts the run with status "running"
 *                                 in its own short transaction
 *   the backend runs the query    (network, may take minutes)
 *   on failure:
 *     md_store_run_finish_failed() records the error; no entity changes
 *   on success:
 *     md_store_load_state()        the rule's entities before this run
 *     md_diff_compute() (diff.h)   events and new entity state
 *     md_store_run_finish_ok()     rows, entities, events, outbox item and
 *                                  the status, in one transaction
 *   md_store_prune()               drops old result rows
 *
 * md_diff_record_run() in diff.h does the success branch in one call.
 *
 * Strings returned inside the structs below are owned by the struct and
 * freed by the matching *_clear() or *_free() function.
 */
#ifndef MDHUNT_STORE_H
#define MDHUNT_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "mdhunt/buf.h"
#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/table.h"

/* The schema version this binary creates and reads. */
#define MD_STORE_SCHEMA_VERSION 4

/* How long a statement waits for another connection's lock, in ms. */
#define MD_STORE_BUSY_TIMEOUT_MS 10000

/* An unknown instant (a NULL in the database). */
#define MD_STORE_TIME_NONE INT64_MIN

/* The text of md_rule.query_sha256: 64 hex digits and a NUL. */
#define MD_STORE_HASH_SIZE 65

struct md_store;
struct sqlite3;

/* Flags of md_store_open(). */
#define MD_STORE_READ_ONLY 0x1

/*
 * Open the store at path.
 *
 * Read-write (flags 0): creates the file when missing, switches to WAL
 * (keeping the -wal and -shm files after close, for read-only openers),
 * applies pending migrations and marks runs still "running" (left by a
 * process that was killed) as "interrupted".  Only one process may write:
 * the caller must hold the runner lock before opening read-write, or it
 * would mark another runner's current run as interrupted.
 *
 * Read-only (MD_STORE_READ_ONLY): takes no lock and changes nothing; the
 * file must exist and have the current schema version.
 *
 * A store written by a newer mdhunt (higher user_version) is an error.
 * Errors are MD_E_STORE naming the path.  Close with md_store_close().
 */
int md_store_open(const char *path, int flags, struct md_store **out,
                  struct md_error *err);

/* Close the store; NULL is ignored. */
void md_store_close(struct md_store *st);

/* The path given to md_store_open(), owned by the store. */
const char *md_store_path(const struct md_store *st);

/*
 * The SQLite connection, for tests and diagnostics (integrity checks,
 * pragmas).  Writing through it bypasses every rule of this module.
 */
struct sqlite3 *md_store_handle(struct md_store *st);

/* Number of runs md_store_open() marked as interrupted. */
long md_store_interrupted_at_open(const struct md_store *st);

/*
 * Schema migrations.  Step i moves the schema from version i to i + 1.
 * Its SQL ends with "PRAGMA user_version = <version>;" (the pragma takes
 * no bound parameter) and runs in one transaction, so a failing step
 * leaves the previous version intact.  A step that leaves another
 * user_version behind is rolled back as an error.
 */
struct md_store_migration {
    int version;        /* the version this step produces */
    const char *sql;    /* one or more statements */
};

/*
 * Bring the database file at path to the last version of steps (steps
 * are ordered, steps[i].version == i + 1).  md_store_open() calls this
 * with the built-in steps; it is exposed so that tests can migrate
 * through a pretend older layout.
 */
int md_store_apply_migrations(const char *path,
                              const struct md_store_migration *steps,
                              size_t nsteps, struct md_error *err);

/* ---- Records ------------------------------------------------------------- */

enum md_run_status {
    MD_RUN_RUNNING = 0,
    MD_RUN_OK,
    MD_RUN_FAILED,
    MD_RUN_INTERRUPTED
};

/* "running", "ok", "failed", "interrupted". */
const char *md_run_status_name(enum md_run_status status);

enum md_event_kind {
    MD_EVENT_NEW = 0,     /* a key never seen for the rule */
    MD_EVENT_RETURNED,    /* a key not seen for longer than realert_after */
    MD_EVENT_GONE,        /* in the previous run, absent from this one */
    MD_EVENT_RENAMED,     /* a known DeviceId under a new DeviceName */
    MD_EVENT_BASELINE,    /* first run or first run after a query change */
    MD_EVENT_TRACKED,     /* a new value of the track column */
    MD_EVENT_EMPTY_KEY,   /* a row whose key is empty or null */
    MD_EVENT_EXCLUDED,    /* a key whose rows an exclusion entry matched */
    MD_EVENT_UNCOVERED,   /* a key excluded at its previous sighting and
                             no longer (the entry expired, was removed or
                             no longer matches) */
    MD_EVENT_KIND_COUNT
};

/* "new", "returned", "gone", "renamed", "baseline", "tracked",
 * "empty_key", "excluded", "uncovered". */
const char *md_event_kind_name(enum md_event_kind kind);

/* Parse a name written by md_event_kind_name(); returns 0, or -1 when
 * unknown. */
int md_event_kind_from_name(const char *name, enum md_event_kind *out);

/*
 * A device (or other entity) as the store keeps it for one rule.  Times
 * without a value are MD_STORE_TIME_NONE.
 */
struct md_entity {
    char *rule_id;              /* set by md_store_devices(), else NULL */
    char *key;
    char *device_id;            /* latest DeviceId, or NULL */
    char *device_name;          /* latest DeviceName, or NULL */
    int64_t first_run;          /* the run that first returned the key */
    md_instant first_seen;      /* start of that run */
    int64_t last_run;           /* the latest successful run returning it */
    md_instant last_seen;       /* start of that run */
    md_instant telemetry_first_seen;   /* earliest FirstSeen cell */
    md_instant telemetry_last_seen;    /* latest LastSeen cell */
    int64_t runs_seen;          /* successful runs that returned the key */
    char **tracked_values;      /* values of the track column seen */
    size_t ntracked_values;
    char *row_json;             /* the latest merged row, compact JSON */
    char *excluded_by;          /* the exclusion entry that matched it at
                                   its latest sighting, or NULL */
    char *exclusion_reason;     /* that entry's reason and owner */
    char *exclusion_owner;
    md_instant exclusion_expires;   /* when that entry stops applying */
};

void md_entity_clear(struct md_entity *e);
void md_entities_free(struct md_entity *entities, size_t n);

/*
 * One diff event, stored as it was reported so that `mdhunt diff` can show
 * it again without recomputing it.
 */
struct md_event {
    enum md_event_kind kind;
    char *key;                  /* "" for MD_EVENT_EMPTY_KEY */
    char *row_json;             /* the row as reported (compact JSON) */
    md_instant first_seen;      /* when mdhunt first saw the key */
    md_instant last_seen;       /* returned, gone: the previous sighting */
    int64_t days_away;          /* returned: whole days since last_seen */
    char *old_name;             /* renamed */
    char *new_name;             /* renamed */
    char *value;                /* tracked: the new value */
    /* excluded, uncovered: the exclusion entry (for uncovered, the one
     * that no longer applies) */
    char *exclusion_id;
    char *exclusion_reason;
    char *exclusion_owner;
    md_instant exclusion_expires;   /* when the entry stops applying */
    int first_excluded;         /* excluded: the key was not excluded by
                                   this entry at its previous sighting */
};

void md_event_clear(struct md_event *ev);
void md_events_free(struct md_event *events, size_t n);

/* A run header.  The reading functions (md_store_run_get() and those that
 * embed a run) also fill the event counts. */
struct md_run {
    int64_t id;                 /* 0 when the struct contains no run */
    char *rule_id;
    char *tenant;
    char *backend;
    int64_t period;             /* queryPeriod in seconds, 0: unknown */
    md_instant due;
    md_instant started;
    md_instant ended;           /* MD_STORE_TIME_NONE while running */
    enum md_run_status status;
    enum md_err_kind error_kind;  /* MD_OK unless failed/interrupted */
    long http_status;
    char *request_id;
    char *error_message;
    int64_t row_count;
    int truncated;
    char query_hash[MD_STORE_HASH_SIZE];
    char *exclusions_hash;      /* NULL: no exclusions recorded */
    int baseline;
    int64_t key_count;          /* distinct keys in the result */
    int64_t unchanged_count;    /* keys with no event */
    int64_t event_counts[MD_EVENT_KIND_COUNT];
};

void md_run_clear(struct md_run *run);

/* ---- Writing a run ------------------------------------------------------- */

/* The header of a run about to start.  Strings are copied. */
struct md_run_start {
    const char *rule_id;
    const char *rule_name;      /* may be NULL */
    const char *rule_file;      /* may be NULL */
    const char *query;          /* the query text sent */
    const char *query_hash;     /* md_rule.query_sha256 */
    const char *tenant;         /* may be NULL */
    const char *backend;        /* md_backend_kind_name() */
    const char *exclusions_hash;  /* may be NULL */
    int64_t period;             /* seconds, 0 when unknown */
    md_instant due;
    md_instant started;
};

/*
 * Record the rule, its query and a new run with status "running", in one
 * short transaction of its own.  Sets *run_id.
 */
int md_store_run_begin(struct md_store *st, const struct md_run_start *start,
                       int64_t *run_id, struct md_error *err);

/* An exclusion entry that could not be applied in a run, for the
 * digest's health section. */
struct md_exclusion_issue {
    char *entry_id;
    char *message;
};

void md_exclusion_issues_free(struct md_exclusion_issue *v, size_t n);

/* Everything a successful run writes.  md_diff_compute() fills the diff
 * part; nothing is copied or freed by the store. */
struct md_run_finish {
    md_instant ended;
    const struct md_table *table;   /* the rows, kept in run_row */
    int baseline;
    int64_t key_count;
    int64_t unchanged_count;
    const struct md_event *events;
    size_t nevents;
    const struct md_entity *entities;  /* new state of each key seen */
    size_t nentities;
    int add_outbox;                 /* queue a report of this run */
    const struct md_exclusion_issue *exclusion_issues;
    size_t nexclusion_issues;
};

/*
 * Finish a running run as "ok": its rows, the entity updates, the events,
 * the outbox item (when fin->add_outbox) and the status are written in
 * one transaction, so that either all of it or none is visible.
 * *outbox_id (may be NULL) is set to the new item's id, or 0.
 * A run that is not "running" is an MD_E_STORE error.
 */
int md_store_run_finish_ok(struct md_store *st, int64_t run_id,
                           const struct md_run_finish *fin,
                           int64_t *outbox_id, struct md_error *err);

/*
 * Finish a running run as "failed" (or "interrupted" when run_error->kind
 * is MD_E_INTERRUPTED) and record the error's kind, HTTP status, request id
 * and message.  No entity changes.
 */
int md_store_run_finish_failed(struct md_store *st, int64_t run_id,
                               md_instant ended,
                               const struct md_error *run_error,
                               struct md_error *err);

/*
 * Queue a report covering run_ids (all of them must exist) in its own
 * transaction, state "pending", due at created.  Sets *outbox_id.  The
 * mail composer takes it into a digest (md_store_digest_add()).
 */
int md_store_outbox_add(struct md_store *st, md_instant created,
                        const int64_t *run_ids, size_t nrun_ids,
                        int64_t *outbox_id, struct md_error *err);

/*
 * Delete stored result rows (run_row) of runs that started before
 * now - keep_days seconds, and of every successful run of a rule beyond
 * its newest keep_runs.  0 disables a limit.  Run headers, entities and
 * events stay, or old devices would come back as new.  *deleted (may be
 * NULL) is set to the number of rows deleted.
 */
int md_store_prune(struct md_store *st, md_instant now, long keep_runs,
                   int64_t keep_days, int64_t *deleted,
                   struct md_error *err);

/* ---- State for the diff -------------------------------------------------- */

/*
 * The state of a rule before a run, for md_diff_compute().
 *
 * The reference set for "gone" is every entity with
 * last_run >= reference_run: the keys seen by the newest complete
 * (not truncated) successful run and by any truncated one after it, all
 * within the current query.  When every run of the current query was
 * truncated, reference_run is the first of them.
 */
struct md_rule_state {
    int64_t last_ok_run;                  /* 0: never succeeded */
    char last_ok_query_hash[MD_STORE_HASH_SIZE];  /* "" when none */
    int64_t reference_run;                /* 0 when last_ok_run is 0 */
    struct md_entity *entities;           /* every key, sorted by key */
    size_t nentities;
};

/*
 * Load the state of rule_id.  To keep memory bounded, row_json is loaded
 * only for entities in the reference set (the only ones that can become
 * "gone" events).  Free with md_rule_state_free().
 */
int md_store_load_state(struct md_store *st, const char *rule_id,
                        struct md_rule_state *state, struct md_error *err);

void md_rule_state_free(struct md_rule_state *state);

/* ---- Reading side -------------------------------------------------------- */

/* Load one run with its event counts.  An unknown id is MD_E_USAGE. */
int md_store_run_get(struct md_store *st, int64_t run_id,
                     struct md_run *run, struct md_error *err);

/* Set *run_id to the newest successful run of rule_id (any rule when
 * NULL), or 0 when there is none. */
int md_store_last_ok_run(struct md_store *st, const char *rule_id,
                         int64_t *run_id, struct md_error *err);

/* Set *due to the due time of the newest run of rule_id (any status), or
 * MD_STORE_TIME_NONE when the rule never ran. */
int md_store_last_due(struct md_store *st, const char *rule_id,
                      md_instant *due, struct md_error *err);

/* Per-rule summary for `mdhunt status`. */
struct md_rule_status {
    char *rule_id;
    char *name;
    char *file;
    char query_hash[MD_STORE_HASH_SIZE];   /* the rule's current query */
    struct md_run last_run;      /* id 0 when the rule never ran */
    struct md_run last_ok_run;   /* id 0 when it never succeeded */
    struct md_run last_failed_run;  /* with the last error; id 0: none */
    int64_t consecutive_failures;   /* "failed" runs since the last "ok" */
    int64_t entity_count;
};

void md_rule_status_clear(struct md_rule_status *s);
void md_rule_statuses_free(struct md_rule_status *v, size_t n);

/* Summary of one rule; an unknown rule is MD_E_USAGE. */
int md_store_rule_status(struct md_store *st, const char *rule_id,
                         struct md_rule_status *status,
                         struct md_error *err);

/* Summaries of every rule the store has seen, by rule id.  Free with
 * md_rule_statuses_free(). */
int md_store_status_all(struct md_store *st, struct md_rule_status **out,
                        size_t *n, struct md_error *err);

/*
 * Entities of rule_id (every rule when NULL) last seen by mdhunt at or
 * after since (MD_STORE_TIME_NONE: all), ordered by rule and first_seen.
 * Free with md_entities_free().
 */
int md_store_devices(struct md_store *st, const char *rule_id,
                     md_instant since, struct md_entity **out, size_t *n,
                     struct md_error *err);

/* A run's diff as it was stored. */
struct md_run_diff {
    struct md_run run;
    char *rule_name;            /* may be NULL */
    char *rule_file;            /* may be NULL */
    struct md_event *events;    /* in the order they were reported */
    size_t nevents;
    struct md_exclusion_issue *exclusion_issues;
    size_t nexclusion_issues;
};

/* Load the diff of run_id; an unknown run is MD_E_USAGE.  Free with
 * md_run_diff_clear(). */
int md_store_run_diff(struct md_store *st, int64_t run_id,
                      struct md_run_diff *out, struct md_error *err);

void md_run_diff_clear(struct md_run_diff *d);

/* Devices an exclusion entry matched in a rule's newest successful run. */
struct md_exclusion_count {
    char *rule_id;
    char *exclusion_id;
    int64_t run_id;
    int64_t devices;
};

/*
 * List, for the newest successful run of every rule, how many excluded
 * events each exclusion entry produced, by rule id and entry id.  Free
 * with md_exclusion_counts_free().
 */
int md_store_exclusion_counts(struct md_store *st,
                              struct md_exclusion_count **out, size_t *n,
                              struct md_error *err);

void md_exclusion_counts_free(struct md_exclusion_count *v, size_t n);

/* ---- The mail outbox ----------------------------------------------------- */

/*
 * Outbox items are queued by the runs (md_store_run_finish_ok()).  The
 * mail composer batches the items not yet taken into a digest, which also
 * covers every run finished since the previous digest (its health
 * section counts failed runs that queued no item).  A digest is rendered
 * once: its message bytes and Message-ID are stored with it, and every
 * delivery attempt sends those bytes.
 */

enum md_digest_state {
    MD_DIGEST_PENDING = 0,  /* waiting for delivery (or a retry) */
    MD_DIGEST_SENT,         /* the server accepted it */
    MD_DIGEST_DEAD,         /* delivery gave up: a 5xx reply, or too many
                               attempts */
    MD_DIGEST_SKIPPED,      /* send_when decided against mailing it */
    MD_DIGEST_STATE_COUNT
};

/* "pending", "sent", "dead", "skipped". */
const char *md_digest_state_name(enum md_digest_state state);

/* Parse a name written by md_digest_state_name(); returns 0, or -1 when
 * unknown. */
int md_digest_state_from_name(const char *name, enum md_digest_state *out);

/* An outbox item: a report of one or more runs. */
struct md_outbox_item {
    int64_t id;
    md_instant created;
    int64_t *run_ids;           /* ascending */
    size_t nrun_ids;
};

void md_outbox_items_free(struct md_outbox_item *items, size_t n);

/*
 * List the items that no digest has taken yet, created at or before due,
 * oldest first.  Free with md_outbox_items_free().
 */
int md_store_outbox_pending(struct md_store *st, md_instant due,
                            struct md_outbox_item **out, size_t *n,
                            struct md_error *err);

/* List the ids of finished runs (any status but "running") with an id
 * greater than after, ascending.  The caller frees *out with free(). */
int md_store_runs_after(struct md_store *st, int64_t after, int64_t **out,
                        size_t *n, struct md_error *err);

/* Set *run_id to the highest last_run of any digest, or 0 when there is
 * no digest: the runs up to it are covered. */
int md_store_digest_last_run(struct md_store *st, int64_t *run_id,
                             struct md_error *err);

/* Set *created to the creation time of the newest digest, or
 * MD_STORE_TIME_NONE when there is none. */
int md_store_digest_last_created(struct md_store *st, md_instant *created,
                                 struct md_error *err);

/* Set *started to the start of rule_id's first run, or
 * MD_STORE_TIME_NONE when it never ran. */
int md_store_rule_first_started(struct md_store *st, const char *rule_id,
                                md_instant *started, struct md_error *err);

/* A digest as stored.  Times without a value are MD_STORE_TIME_NONE. */
struct md_outbox_digest {
    int64_t id;
    md_instant created;
    enum md_digest_state state;
    char *reason;               /* md_send_reason_name() of the decision */
    int64_t last_run;           /* the highest run id it covers */
    int64_t new_devices;
    char *subject;              /* UTF-8; NULL when skipped */
    char *message_id;           /* "<...>"; NULL when skipped */
    char *message;              /* RFC 5322 bytes; NULL when skipped or
                                   not loaded */
    size_t message_len;
    long attempts;              /* delivery attempts so far */
    md_instant next_attempt;    /* pending: when it is due */
    md_instant last_attempt;
    md_instant sent;            /* when the server accepted it */
    char *last_error;           /* of the last failed attempt, or NULL */
    int64_t *outbox_ids;        /* the items it covers, ascending */
    size_t noutbox_ids;
};

void md_outbox_digest_clear(struct md_outbox_digest *d);
void md_outbox_digests_free(struct md_outbox_digest *v, size_t n);

/*
 * Record a digest, in one transaction: insert it with d->state (pending
 * or skipped) and, when pending, next_attempt = d->created; give every
 * item of d->outbox_ids its digest_id, and mark them "sent" when the
 * digest is skipped.  An item that another digest has taken already is
 * an MD_E_STORE error and nothing is written.  The id, attempts and
 * times other than created are ignored.  Sets *digest_id.
 */
int md_store_digest_add(struct md_store *st, const struct md_outbox_digest *d,
                        int64_t *digest_id, struct md_error *err);

/* Load one digest, with its message bytes when with_message.  An unknown
 * id is MD_E_USAGE.  Clear with md_outbox_digest_clear(). */
int md_store_digest_get(struct md_store *st, int64_t id, int with_message,
                        struct md_outbox_digest *out, struct md_error *err);

/* List the digests whose state bit (1u << state) is set in states, by
 * id, without their message bytes.  Free with md_outbox_digests_free(). */
int md_store_digest_list(struct md_store *st, unsigned states,
                         struct md_outbox_digest **out, size_t *n,
                         struct md_error *err);

/* List the ids of pending digests due at now (next_attempt <= now),
 * oldest first.  The caller frees *ids with free(). */
int md_store_digests_due(struct md_store *st, md_instant now, int64_t **ids,
                         size_t *n, struct md_error *err);

/* Set *next to the earliest next_attempt of a pending digest, or
 * MD_STORE_TIME_NONE when none is pending. */
int md_store_digest_next_attempt(struct md_store *st, md_instant *next,
                                 struct md_error *err);

/* Count the digests in each state. */
int md_store_digest_counts(struct md_store *st,
                           int64_t counts[MD_DIGEST_STATE_COUNT],
                           struct md_error *err);

/*
 * Record a delivery attempt at when.  Sent: the server accepted the
 * message (call it only then); the digest and its items become "sent".
 * Retry: the attempt failed and the digest stays pending until next.
 * Dead: delivery gives up; the digest and its items become "dead".  Each
 * adds one attempt; error (may be NULL for sent) is kept as last_error.
 * A dead digest may be marked sent or dead again (a retry by hand), but
 * not retried; a sent or skipped one cannot change (MD_E_STORE).
 */
int md_store_digest_mark_sent(struct md_store *st, int64_t id,
                              md_instant when, struct md_error *err);
int md_store_digest_mark_retry(struct md_store *st, int64_t id,
                               md_instant when, md_instant next,
                               const char *error, struct md_error *err);
int md_store_digest_mark_dead(struct md_store *st, int64_t id,
                              md_instant when, const char *error,
                              struct md_error *err);

/* ---- The row format ------------------------------------------------------ */

/*
 * Convert the cell at row, col to JSON as the service typed it: null,
 * string, number, boolean, object or array.  Returns a new reference, or
 * NULL with err set (MD_E_INTERNAL).
 */
json_t *md_store_cell_json(const struct md_table *t, size_t row, size_t col,
                           struct md_error *err);

/* Convert a row to a JSON object keyed by column name (new reference). */
json_t *md_store_row_object(const struct md_table *t, size_t row,
                            struct md_error *err);

/* Compact JSON text of a JSON value; the caller frees it with free(). */
char *md_store_json_text(const json_t *value, struct md_error *err);

/*
 * Append a row to b as compact JSON text: the object that
 * md_store_row_object() builds, written straight from the cells without
 * jansson values.  cells, when not NULL, has t->ncolumns entries, and a
 * non-NULL entry replaces the row's cell of that column.  A real keeps
 * the table's text, which may differ in digits from json_dumps() but
 * reads back as the same number.  Errors are MD_E_INTERNAL: out of
 * memory, or a cell whose text is not valid JSON.
 */
int md_store_row_text(const struct md_table *t, size_t row,
                      const struct md_cell *const *cells, struct md_buf *b,
                      struct md_error *err);

#endif
