/*
 * The SQLite store.  The contract is in include/mdhunt/store.h.
 *
 * Every statement is a named constant below with bound parameters.  Each
 * function takes what it needs from prepare() and gives it back with
 * release() before returning; the store keeps the statements prepared.
 */
#include "mdhunt/store.h"

#include <limits.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "mdhunt/buf.h"
#include "mdhunt/log.h"

/* Statements kept prepared for the life of the connection, keyed by the
 * address of their SQL constant.  A run executes about 25 statements
 * (more when it mails), so a cycle of small runs would otherwise spend
 * much of its time compiling SQL. */
#define STMT_CACHE_SIZE 64

struct cached_stmt {
    const char *sql;
    sqlite3_stmt *stmt;
    int in_use;
};

struct md_store {
    struct cached_stmt cache[STMT_CACHE_SIZE];
    sqlite3 *db;
    char *path;
    int read_only;
    long interrupted_at_open;
};

/* ---- Schema -------------------------------------------------------------- */

/*
 * Version 1.  Instants are md_instant ticks, durations seconds.  Row,
 * entity and event JSON is compact text.  run_row is the only table that
 * retention prunes.
 */
static const char SQL_SCHEMA_1[] =
    "CREATE TABLE query ("
    " hash TEXT PRIMARY KEY,"
    " text TEXT NOT NULL);"

    "CREATE TABLE rule ("
    " id TEXT PRIMARY KEY,"
    " name TEXT,"
    " file TEXT,"
    " query_hash TEXT NOT NULL REFERENCES query (hash));"

    "CREATE TABLE run ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " rule_id TEXT NOT NULL REFERENCES rule (id),"
    " tenant TEXT,"
    " backend TEXT NOT NULL,"
    " period INTEGER NOT NULL DEFAULT 0,"
    " due INTEGER,"
    " started INTEGER NOT NULL,"
    " ended INTEGER,"
    " status TEXT NOT NULL CHECK (status IN"
    "  ('running', 'ok', 'failed', 'interrupted')),"
    " error_kind TEXT,"
    " http_status INTEGER,"
    " request_id TEXT,"
    " error_message TEXT,"
    " row_count INTEGER,"
    " truncated INTEGER NOT NULL DEFAULT 0,"
    " query_hash TEXT NOT NULL REFERENCES query (hash),"
    " exclusions_hash TEXT,"
    " baseline INTEGER NOT NULL DEFAULT 0,"
    " key_count INTEGER,"
    " unchanged_count INTEGER);"
    "CREATE INDEX run_by_rule ON run (rule_id, status, id);"
    "CREATE INDEX run_by_status ON run (status);"

    "CREATE TABLE run_row ("
    " run_id INTEGER NOT NULL REFERENCES run (id),"
    " idx INTEGER NOT NULL,"
    " row_json TEXT NOT NULL,"
    " PRIMARY KEY (run_id, idx)) WITHOUT ROWID;"

    "CREATE TABLE entity ("
    " rule_id TEXT NOT NULL REFERENCES rule (id),"
    " key TEXT NOT NULL,"
    " device_id TEXT,"
    " device_name TEXT,"
    " first_run INTEGER NOT NULL REFERENCES run (id),"
    " first_seen INTEGER NOT NULL,"
    " last_run INTEGER NOT NULL REFERENCES run (id),"
    " last_seen INTEGER NOT NULL,"
    " telemetry_first_seen INTEGER,"
    " telemetry_last_seen INTEGER,"
    " runs_seen INTEGER NOT NULL,"
    " tracked_values TEXT,"
    " row_json TEXT,"
    " PRIMARY KEY (rule_id, key)) WITHOUT ROWID;"
    "CREATE INDEX entity_by_last_seen ON entity (last_seen);"

    "CREATE TABLE diff_event ("
    " run_id INTEGER NOT NULL REFERENCES run (id),"
    " seq INTEGER NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('new', 'returned', 'gone',"
    "  'renamed', 'baseline', 'tracked', 'empty_key')),"
    " key TEXT NOT NULL,"
    " row_json TEXT,"
    " first_seen INTEGER,"
    " last_seen INTEGER,"
    " days_away INTEGER,"
    " old_name TEXT,"
    " new_name TEXT,"
    " value TEXT,"
    " PRIMARY KEY (run_id, seq)) WITHOUT ROWID;"

    "CREATE TABLE outbox ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " created INTEGER NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending'"
    "  CHECK (state IN ('pending', 'sent', 'dead')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt INTEGER,"
    " last_error TEXT,"
    " message BLOB,"
    " message_id TEXT);"
    "CREATE INDEX outbox_by_state ON outbox (state, next_attempt);"

    "CREATE TABLE outbox_run ("
    " outbox_id INTEGER NOT NULL REFERENCES outbox (id),"
    " run_id INTEGER NOT NULL REFERENCES run (id),"
    " PRIMARY KEY (outbox_id, run_id)) WITHOUT ROWID;"

    "PRAGMA user_version = 1;";

/*
 * Version 2: exclusions.  SQLite cannot change a CHECK constraint, so
 * diff_event is copied into a table that accepts the kinds "excluded"
 * and "uncovered" and keeps the exclusion entry of those events.  An
 * entity keeps the entry that excluded it, so that the run after the
 * entry expires reports the key as uncovered once.
 */
static const char SQL_SCHEMA_2[] =
    "CREATE TABLE diff_event_2 ("
    " run_id INTEGER NOT NULL REFERENCES run (id),"
    " seq INTEGER NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('new', 'returned', 'gone',"
    "  'renamed', 'baseline', 'tracked', 'empty_key', 'excluded',"
    "  'uncovered')),"
    " key TEXT NOT NULL,"
    " row_json TEXT,"
    " first_seen INTEGER,"
    " last_seen INTEGER,"
    " days_away INTEGER,"
    " old_name TEXT,"
    " new_name TEXT,"
    " value TEXT,"
    " exclusion_id TEXT,"
    " exclusion_reason TEXT,"
    " exclusion_owner TEXT,"
    " exclusion_expires INTEGER,"
    " first_excluded INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (run_id, seq)) WITHOUT ROWID;"
    "INSERT INTO diff_event_2 (run_id, seq, kind, key, row_json,"
    " first_seen, last_seen, days_away, old_name, new_name, value)"
    " SELECT run_id, seq, kind, key, row_json, first_seen, last_seen,"
    " days_away, old_name, new_name, value FROM diff_event;"
    "DROP TABLE diff_event;"
    "ALTER TABLE diff_event_2 RENAME TO diff_event;"

    "ALTER TABLE entity ADD COLUMN excluded_by TEXT;"
    "ALTER TABLE entity ADD COLUMN exclusion_reason TEXT;"
    "ALTER TABLE entity ADD COLUMN exclusion_owner TEXT;"
    "ALTER TABLE entity ADD COLUMN exclusion_expires INTEGER;"

    "CREATE TABLE run_exclusion_issue ("
    " run_id INTEGER NOT NULL REFERENCES run (id),"
    " seq INTEGER NOT NULL,"
    " entry_id TEXT NOT NULL,"
    " message TEXT NOT NULL,"
    " PRIMARY KEY (run_id, seq)) WITHOUT ROWID;"

    "PRAGMA user_version = 2;";

/*
 * Version 3: mail digests.  A digest batches outbox items into one
 * message and also covers every run finished up to last_run, for its
 * health section.  The message is rendered once and its bytes are kept,
 * so that a resend is identical.  An outbox item gets digest_id when a
 * digest takes it; its state follows the digest: "sent" once the digest
 * was delivered or skipped (send_when decided against mailing), "dead"
 * when delivery gave up.
 */
static const char SQL_SCHEMA_3[] =
    "CREATE TABLE digest ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " created INTEGER NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN"
    "  ('pending', 'sent', 'dead', 'skipped')),"
    " reason TEXT NOT NULL,"
    " last_run INTEGER NOT NULL,"
    " new_devices INTEGER NOT NULL DEFAULT 0,"
    " subject TEXT,"
    " message_id TEXT,"
    " message BLOB,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt INTEGER,"
    " last_attempt INTEGER,"
    " sent INTEGER,"
    " last_error TEXT);"
    "CREATE INDEX digest_by_state ON digest (state, next_attempt);"

    "ALTER TABLE outbox ADD COLUMN digest_id INTEGER"
    " REFERENCES digest (id);"
    "CREATE INDEX outbox_by_digest ON outbox (digest_id);"

    "PRAGMA user_version = 3;";

/*
 * Version 4: no index on entity (last_seen).  No query used it, and each
 * run rewrote one entry of it per device seen.
 */
static const char SQL_SCHEMA_4[] =
    "DROP INDEX IF EXISTS entity_by_last_seen;"
    "PRAGMA user_version = 4;";

static const struct md_store_migration migrations[] = {
    { 1, SQL_SCHEMA_1 },
    { 2, SQL_SCHEMA_2 },
    { 3, SQL_SCHEMA_3 },
    { 4, SQL_SCHEMA_4 },
};

#define NMIGRATIONS (sizeof(migrations) / sizeof(migrations[0]))

_Static_assert(NMIGRATIONS == MD_STORE_SCHEMA_VERSION,
               "one migration step per schema version");

/* ---- Statements ---------------------------------------------------------- */

static const char SQL_USER_VERSION[] = "PRAGMA user_version";
static const char SQL_WAL[] = "PRAGMA journal_mode = WAL";
/* In WAL mode NORMAL syncs at checkpoints, not at every commit.  A power
 * loss may then undo the last commits but never damages the database.  A
 * run so lost is marked interrupted at the next open, or is gone, and its
 * rule runs again: its new devices are reported twice, not missed. */
static const char SQL_SYNCHRONOUS[] = "PRAGMA synchronous = NORMAL";
static const char SQL_FOREIGN_KEYS[] = "PRAGMA foreign_keys = ON";
static const char SQL_FOREIGN_KEYS_OFF[] = "PRAGMA foreign_keys = OFF";

/* Entities from which md_store_run_finish_ok() writes with foreign keys
 * off; its comment says why. */
#define FOREIGN_KEYS_OFF_MIN_ENTITIES 1000
static const char SQL_BEGIN[] = "BEGIN IMMEDIATE";
static const char SQL_COMMIT[] = "COMMIT";
static const char SQL_ROLLBACK[] = "ROLLBACK";

static const char SQL_MARK_INTERRUPTED[] =
    "UPDATE run SET status = 'interrupted', error_kind = 'interrupted',"
    " error_message = ?1 WHERE status = 'running'";

static const char SQL_QUERY_INSERT[] =
    "INSERT INTO query (hash, text) VALUES (?1, ?2)"
    " ON CONFLICT (hash) DO NOTHING";

static const char SQL_RULE_UPSERT[] =
    "INSERT INTO rule (id, name, file, query_hash) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
    " file = excluded.file, query_hash = excluded.query_hash";

static const char SQL_RUN_INSERT[] =
    "INSERT INTO run (rule_id, tenant, backend, period, due, started,"
    " status, query_hash, exclusions_hash)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8)";

static const char SQL_RUN_RULE_STATUS[] =
    "SELECT rule_id, status FROM run WHERE id = ?1";

static const char SQL_RUN_FINISH_OK[] =
    "UPDATE run SET status = 'ok', ended = ?2, row_count = ?3,"
    " truncated = ?4, baseline = ?5, key_count = ?6, unchanged_count = ?7"
    " WHERE id = ?1 AND status = 'running'";

static const char SQL_RUN_FINISH_FAILED[] =
    "UPDATE run SET status = ?2, ended = ?3, error_kind = ?4,"
    " http_status = ?5, request_id = ?6, error_message = ?7"
    " WHERE id = ?1 AND status = 'running'";

static const char SQL_RUN_ROW_INSERT[] =
    "INSERT INTO run_row (run_id, idx, row_json) VALUES (?1, ?2, ?3)";

static const char SQL_ENTITY_UPSERT[] =
    "INSERT INTO entity (rule_id, key, device_id, device_name, first_run,"
    " first_seen, last_run, last_seen, telemetry_first_seen,"
    " telemetry_last_seen, runs_seen, tracked_values, row_json,"
    " excluded_by, exclusion_reason, exclusion_owner, exclusion_expires)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,"
    " ?14, ?15, ?16, ?17)"
    " ON CONFLICT (rule_id, key) DO UPDATE SET"
    " device_id = excluded.device_id, device_name = excluded.device_name,"
    " first_run = excluded.first_run, first_seen = excluded.first_seen,"
    " last_run = excluded.last_run, last_seen = excluded.last_seen,"
    " telemetry_first_seen = excluded.telemetry_first_seen,"
    " telemetry_last_seen = excluded.telemetry_last_seen,"
    " runs_seen = excluded.runs_seen,"
    " tracked_values = excluded.tracked_values,"
    " row_json = excluded.row_json,"
    " excluded_by = excluded.excluded_by,"
    " exclusion_reason = excluded.exclusion_reason,"
    " exclusion_owner = excluded.exclusion_owner,"
    " exclusion_expires = excluded.exclusion_expires";

/* The entity update of a run: the same parameters as SQL_ENTITY_UPSERT,
 * which adds the entity when this changed no row. */
static const char SQL_ENTITY_UPDATE[] =
    "UPDATE entity SET device_id = ?3, device_name = ?4, first_run = ?5,"
    " first_seen = ?6, last_run = ?7, last_seen = ?8,"
    " telemetry_first_seen = ?9, telemetry_last_seen = ?10,"
    " runs_seen = ?11, tracked_values = ?12, row_json = ?13,"
    " excluded_by = ?14, exclusion_reason = ?15, exclusion_owner = ?16,"
    " exclusion_expires = ?17 WHERE rule_id = ?1 AND key = ?2";

static const char SQL_EVENT_INSERT[] =
    "INSERT INTO diff_event (run_id, seq, kind, key, row_json, first_seen,"
    " last_seen, days_away, old_name, new_name, value, exclusion_id,"
    " exclusion_reason, exclusion_owner, exclusion_expires,"
    " first_excluded)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
    " ?15, ?16)";

static const char SQL_ISSUE_INSERT[] =
    "INSERT INTO run_exclusion_issue (run_id, seq, entry_id, message)"
    " VALUES (?1, ?2, ?3, ?4)";

static const char SQL_OUTBOX_INSERT[] =
    "INSERT INTO outbox (created, state, attempts, next_attempt)"
    " VALUES (?1, 'pending', 0, ?1)";

static const char SQL_OUTBOX_RUN_INSERT[] =
    "INSERT INTO outbox_run (outbox_id, run_id) VALUES (?1, ?2)";

static const char SQL_PRUNE_BY_AGE[] =
    "DELETE FROM run_row WHERE run_id IN"
    " (SELECT id FROM run WHERE started < ?1)";

static const char SQL_PRUNE_BY_COUNT[] =
    "DELETE FROM run_row WHERE run_id IN"
    " (SELECT id FROM (SELECT id, ROW_NUMBER() OVER"
    "  (PARTITION BY rule_id ORDER BY id DESC) AS n"
    "  FROM run WHERE status = 'ok') WHERE n > ?1)";

static const char SQL_LAST_OK_RUN[] =
    "SELECT id, query_hash FROM run WHERE rule_id = ?1 AND status = 'ok'"
    " ORDER BY id DESC LIMIT 1";

/* The first successful run since the query last changed. */
static const char SQL_QUERY_EPOCH_START[] =
    "SELECT MIN(id) FROM run WHERE rule_id = ?1 AND status = 'ok'"
    " AND id > IFNULL((SELECT MAX(id) FROM run WHERE rule_id = ?1"
    "  AND status = 'ok' AND query_hash <> ?2), 0)";

static const char SQL_LAST_COMPLETE_RUN[] =
    "SELECT MAX(id) FROM run WHERE rule_id = ?1 AND status = 'ok'"
    " AND truncated = 0 AND id >= ?2";

#define ENTITY_COLUMNS \
    "key, device_id, device_name, first_run, first_seen, last_run," \
    " last_seen, telemetry_first_seen, telemetry_last_seen, runs_seen," \
    " tracked_values"

/* Read by read_entity() from column 13 on. */
#define EXCLUSION_COLUMNS \
    "excluded_by, exclusion_reason, exclusion_owner, exclusion_expires"

static const char SQL_STATE_ENTITIES[] =
    "SELECT " ENTITY_COLUMNS ","
    " CASE WHEN last_run >= ?2 THEN row_json END, NULL, " EXCLUSION_COLUMNS
    " FROM entity WHERE rule_id = ?1 ORDER BY key";

static const char SQL_DEVICES[] =
    "SELECT " ENTITY_COLUMNS ", row_json, rule_id, " EXCLUSION_COLUMNS
    " FROM entity"
    " WHERE (?1 IS NULL OR rule_id = ?1)"
    " AND (?2 IS NULL OR last_seen >= ?2)"
    " ORDER BY rule_id, first_seen, key";

static const char SQL_RUN_GET[] =
    "SELECT id, rule_id, tenant, backend, period, due, started, ended,"
    " status, error_kind, http_status, request_id, error_message,"
    " row_count, truncated, query_hash, exclusions_hash, baseline,"
    " key_count, unchanged_count FROM run WHERE id = ?1";

static const char SQL_RUN_EVENT_COUNTS[] =
    "SELECT kind, COUNT(*) FROM diff_event WHERE run_id = ?1 GROUP BY kind";

static const char SQL_ANY_LAST_OK_RUN[] =
    "SELECT MAX(id) FROM run WHERE status = 'ok'"
    " AND (?1 IS NULL OR rule_id = ?1)";

static const char SQL_LAST_DUE[] =
    "SELECT due FROM run WHERE rule_id = ?1 ORDER BY id DESC LIMIT 1";

static const char SQL_RULE_GET[] =
    "SELECT id, name, file, query_hash FROM rule WHERE id = ?1";

static const char SQL_RULE_IDS[] = "SELECT id FROM rule ORDER BY id";

static const char SQL_RULE_SUMMARY[] =
    "SELECT (SELECT MAX(id) FROM run WHERE rule_id = ?1),"
    " (SELECT MAX(id) FROM run WHERE rule_id = ?1 AND status = 'ok'),"
    " (SELECT MAX(id) FROM run WHERE rule_id = ?1 AND status = 'failed'),"
    " (SELECT COUNT(*) FROM run WHERE rule_id = ?1 AND status = 'failed'"
    "  AND id > IFNULL((SELECT MAX(id) FROM run WHERE rule_id = ?1"
    "  AND status = 'ok'), 0)),"
    " (SELECT COUNT(*) FROM entity WHERE rule_id = ?1)";

static const char SQL_RUN_EVENTS[] =
    "SELECT kind, key, row_json, first_seen, last_seen, days_away,"
    " old_name, new_name, value, exclusion_id, exclusion_reason,"
    " exclusion_owner, exclusion_expires, first_excluded"
    " FROM diff_event WHERE run_id = ?1 ORDER BY seq";

static const char SQL_RUN_ISSUES[] =
    "SELECT entry_id, message FROM run_exclusion_issue WHERE run_id = ?1"
    " ORDER BY seq";

/* Excluded events of each rule's newest successful run, by entry. */
static const char SQL_EXCLUSION_COUNTS[] =
    "SELECT r.rule_id, e.exclusion_id, r.id, COUNT(*) FROM diff_event e"
    " JOIN (SELECT rule_id, MAX(id) AS id FROM run WHERE status = 'ok'"
    "  GROUP BY rule_id) r ON e.run_id = r.id"
    " WHERE e.kind = 'excluded' AND e.exclusion_id IS NOT NULL"
    " GROUP BY r.rule_id, e.exclusion_id, r.id"
    " ORDER BY r.rule_id, e.exclusion_id";

/* The message stored for runs found "running" at open. */
static const char INTERRUPTED_MESSAGE[] =
    "the process running this rule ended before the run finished "
    "(killed or crashed); the run was marked when the store was next "
    "opened";

/* ---- Names --------------------------------------------------------------- */

static const char *const run_status_names[] = {
    [MD_RUN_RUNNING] = "running",
    [MD_RUN_OK] = "ok",
    [MD_RUN_FAILED] = "failed",
    [MD_RUN_INTERRUPTED] = "interrupted",
};

static const char *const event_kind_names[MD_EVENT_KIND_COUNT] = {
    [MD_EVENT_NEW] = "new",
    [MD_EVENT_RETURNED] = "returned",
    [MD_EVENT_GONE] = "gone",
    [MD_EVENT_RENAMED] = "renamed",
    [MD_EVENT_BASELINE] = "baseline",
    [MD_EVENT_TRACKED] = "tracked",
    [MD_EVENT_EMPTY_KEY] = "empty_key",
    [MD_EVENT_EXCLUDED] = "excluded",
    [MD_EVENT_UNCOVERED] = "uncovered",
};

const char *md_run_status_name(enum md_run_status status)
{
    if ((int)status < 0 || status > MD_RUN_INTERRUPTED)
        return "unknown";
    return run_status_names[status];
}

static int run_status_from_name(const char *name, enum md_run_status *out)
{
    for (int i = 0; i <= MD_RUN_INTERRUPTED; i++) {
        if (name != NULL && strcmp(name, run_status_names[i]) == 0) {
            *out = (enum md_run_status)i;
            return 0;
        }
    }
    return -1;
}

const char *md_event_kind_name(enum md_event_kind kind)
{
    if ((int)kind < 0 || kind >= MD_EVENT_KIND_COUNT)
        return "unknown";
    return event_kind_names[kind];
}

int md_event_kind_from_name(const char *name, enum md_event_kind *out)
{
    for (int i = 0; i < MD_EVENT_KIND_COUNT; i++) {
        if (name != NULL && strcmp(name, event_kind_names[i]) == 0) {
            *out = (enum md_event_kind)i;
            return 0;
        }
    }
    return -1;
}

/* ---- Error and statement helpers ----------------------------------------- */

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
}

/* A hint for the user about an SQLite result code, or "". */
static const char *sqlite_hint(int code)
{
    switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return " (another process kept the database locked; retry later)";
    case SQLITE_FULL:
        return " (the disk is full; free space and retry)";
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_CANTOPEN:
        return " (check that the file and its directory exist and that"
               " this user may write to them, or set [store] path)";
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return " (the file is damaged or not an mdhunt store; restore it"
               " from a backup or set another [store] path)";
    default:
        return "";
    }
}

/* Set an MD_E_STORE error for a failed SQLite call while doing `what`. */
static int db_error(const struct md_store *st, sqlite3 *db, const char *what,
                    struct md_error *err)
{
    int code = sqlite3_extended_errcode(db);

    return md_error_set(err, MD_E_STORE, "store %s: cannot %s: %s%s",
                        st->path, what, sqlite3_errmsg(db),
                        sqlite_hint(code));
}

static int prepare(struct md_store *st, const char *sql, sqlite3_stmt **stmt,
                   struct md_error *err)
{
    struct cached_stmt *free_slot = NULL;

    for (size_t i = 0; i < STMT_CACHE_SIZE; i++) {
        struct cached_stmt *c = &st->cache[i];

        if (c->sql == sql && !c->in_use) {
            c->in_use = 1;
            *stmt = c->stmt;
            return 0;
        }
        if (c->sql == NULL && free_slot == NULL)
            free_slot = c;
    }
    if (sqlite3_prepare_v3(st->db, sql, -1,
                           free_slot != NULL ? SQLITE_PREPARE_PERSISTENT : 0,
                           stmt, NULL) != SQLITE_OK) {
        *stmt = NULL;
        return db_error(st, st->db, "prepare a statement", err);
    }
    if (free_slot != NULL) {
        free_slot->sql = sql;
        free_slot->stmt = *stmt;
        free_slot->in_use = 1;
    }
    return 0;
}

/* Give back a statement of prepare(): a cached one is reset for its next
 * use, any other finalized.  NULL is ignored. */
static void release(struct md_store *st, sqlite3_stmt *stmt)
{
    if (stmt == NULL)
        return;
    for (size_t i = 0; i < STMT_CACHE_SIZE; i++) {
        if (st->cache[i].stmt == stmt) {
            sqlite3_reset(stmt);
            sqlite3_clear_bindings(stmt);
            st->cache[i].in_use = 0;
            return;
        }
    }
    sqlite3_finalize(stmt);
}

/* Run a prepared statement that returns no row, then reset it. */
static int step_done(struct md_store *st, sqlite3_stmt *stmt,
                     const char *what, struct md_error *err)
{
    int rc = sqlite3_step(stmt);

    if (rc != SQLITE_DONE) {
        db_error(st, st->db, what, err);
        sqlite3_reset(stmt);
        return -1;
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return 0;
}

/* Run one constant statement without parameters. */
static int exec_const(struct md_store *st, const char *sql, const char *what,
                      struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, sql, &stmt, err) != 0)
        return -1;
    rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        db_error(st, st->db, what, err);
    release(st, stmt);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static void rollback(struct md_store *st)
{
    if (!sqlite3_get_autocommit(st->db))
        sqlite3_exec(st->db, SQL_ROLLBACK, NULL, NULL, NULL);
}

static int bind_text(sqlite3_stmt *stmt, int idx, const char *s)
{
    if (s == NULL)
        return sqlite3_bind_null(stmt, idx);
    return sqlite3_bind_text(stmt, idx, s, -1, SQLITE_TRANSIENT);
}

/* Bind a string without copying it, so that no allocation can fail.  The
 * string must outlive every step of the statement. */
static void bind_static(sqlite3_stmt *stmt, int idx, const char *s)
{
    if (s == NULL)
        sqlite3_bind_null(stmt, idx);
    else
        sqlite3_bind_text(stmt, idx, s, -1, SQLITE_STATIC);
}

static int bind_time(sqlite3_stmt *stmt, int idx, md_instant t)
{
    if (t == MD_STORE_TIME_NONE)
        return sqlite3_bind_null(stmt, idx);
    return sqlite3_bind_int64(stmt, idx, t);
}

/* Bind an integer, or NULL when it is 0 ("none"). */
static int bind_nonzero(sqlite3_stmt *stmt, int idx, int64_t value)
{
    if (value == 0)
        return sqlite3_bind_null(stmt, idx);
    return sqlite3_bind_int64(stmt, idx, value);
}

/* Callers OR the results of several binds together: any nonzero result
 * means one failed, which with valid indexes is out of memory or a value
 * beyond SQLite's size limit. */
static int check_binds(int rc, struct md_error *err)
{
    if (rc != SQLITE_OK)
        return md_error_set(err, MD_E_INTERNAL,
                            "cannot bind statement parameters: out of "
                            "memory, or a value exceeds SQLite's limit");
    return 0;
}

/* Copy a text column; NULL stays NULL.  Returns -1 when out of memory. */
static int column_strdup(sqlite3_stmt *stmt, int col, char **out)
{
    const unsigned char *text = sqlite3_column_text(stmt, col);

    *out = NULL;
    if (text == NULL)
        return sqlite3_column_type(stmt, col) == SQLITE_NULL ? 0 : -1;
    *out = md_strndup((const char *)text,
                      (size_t)sqlite3_column_bytes(stmt, col));
    return *out == NULL ? -1 : 0;
}

static md_instant column_time(sqlite3_stmt *stmt, int col)
{
    if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
        return MD_STORE_TIME_NONE;
    return sqlite3_column_int64(stmt, col);
}

static void column_hash(sqlite3_stmt *stmt, int col,
                        char hash[MD_STORE_HASH_SIZE])
{
    const unsigned char *text = sqlite3_column_text(stmt, col);

    hash[0] = '\0';
    if (text != NULL) {
        strncpy(hash, (const char *)text, MD_STORE_HASH_SIZE - 1);
        hash[MD_STORE_HASH_SIZE - 1] = '\0';
    }
}

/* Grow *array (of elements of size) to hold at least n + 1 elements. */
static int grow(void **array, size_t *cap, size_t n, size_t size)
{
    size_t new_cap;
    void *p;

    if (n < *cap)
        return 0;
    new_cap = *cap == 0 ? 16 : *cap * 2;
    if (new_cap > SIZE_MAX / size)
        return -1;
    p = realloc(*array, new_cap * size);
    if (p == NULL)
        return -1;
    *array = p;
    *cap = new_cap;
    return 0;
}

/* Read one integer from a statement returning one row; NULL gives dflt. */
static int query_int64(struct md_store *st, sqlite3_stmt *stmt,
                       int64_t dflt, int64_t *out, const char *what,
                       struct md_error *err)
{
    int rc = sqlite3_step(stmt);

    *out = dflt;
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(stmt, 0) != SQLITE_NULL)
            *out = sqlite3_column_int64(stmt, 0);
    } else if (rc != SQLITE_DONE) {
        db_error(st, st->db, what, err);
        sqlite3_reset(stmt);
        return -1;
    }
    sqlite3_reset(stmt);
    return 0;
}

/* ---- Records ------------------------------------------------------------- */

void md_entity_clear(struct md_entity *e)
{
    if (e == NULL)
        return;
    free(e->rule_id);
    free(e->key);
    free(e->device_id);
    free(e->device_name);
    for (size_t i = 0; i < e->ntracked_values; i++)
        free(e->tracked_values[i]);
    free(e->tracked_values);
    free(e->row_json);
    free(e->excluded_by);
    free(e->exclusion_reason);
    free(e->exclusion_owner);
    memset(e, 0, sizeof(*e));
}

void md_entities_free(struct md_entity *entities, size_t n)
{
    if (entities == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        md_entity_clear(&entities[i]);
    free(entities);
}

void md_event_clear(struct md_event *ev)
{
    if (ev == NULL)
        return;
    free(ev->key);
    free(ev->row_json);
    free(ev->old_name);
    free(ev->new_name);
    free(ev->value);
    free(ev->exclusion_id);
    free(ev->exclusion_reason);
    free(ev->exclusion_owner);
    memset(ev, 0, sizeof(*ev));
}

void md_events_free(struct md_event *events, size_t n)
{
    if (events == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        md_event_clear(&events[i]);
    free(events);
}

void md_run_clear(struct md_run *run)
{
    if (run == NULL)
        return;
    free(run->rule_id);
    free(run->tenant);
    free(run->backend);
    free(run->request_id);
    free(run->error_message);
    free(run->exclusions_hash);
    memset(run, 0, sizeof(*run));
}

void md_rule_status_clear(struct md_rule_status *s)
{
    if (s == NULL)
        return;
    free(s->rule_id);
    free(s->name);
    free(s->file);
    md_run_clear(&s->last_run);
    md_run_clear(&s->last_ok_run);
    md_run_clear(&s->last_failed_run);
    memset(s, 0, sizeof(*s));
}

void md_rule_statuses_free(struct md_rule_status *v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        md_rule_status_clear(&v[i]);
    free(v);
}

void md_run_diff_clear(struct md_run_diff *d)
{
    if (d == NULL)
        return;
    md_run_clear(&d->run);
    free(d->rule_name);
    free(d->rule_file);
    md_events_free(d->events, d->nevents);
    md_exclusion_issues_free(d->exclusion_issues, d->nexclusion_issues);
    memset(d, 0, sizeof(*d));
}

void md_exclusion_issues_free(struct md_exclusion_issue *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].entry_id);
        free(v[i].message);
    }
    free(v);
}

void md_exclusion_counts_free(struct md_exclusion_count *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].rule_id);
        free(v[i].exclusion_id);
    }
    free(v);
}

void md_rule_state_free(struct md_rule_state *state)
{
    if (state == NULL)
        return;
    md_entities_free(state->entities, state->nentities);
    memset(state, 0, sizeof(*state));
}

/* ---- The row format ------------------------------------------------------ */

/* The JSON value of a cell as the service typed it, or NULL when its text
 * is not valid JSON or UTF-8, or memory ran out. */
static json_t *cell_value(const struct md_cell *c)
{
    json_t *value = NULL;

    switch (c->kind) {
    case MD_J_NULL:
        value = json_null();
        break;
    case MD_J_BOOL:
        value = json_boolean(c->len == 4 && memcmp(c->text, "true", 4) == 0);
        break;
    case MD_J_STRING:
        value = json_stringn(c->text, c->len);
        break;
    case MD_J_INTEGER:
    case MD_J_REAL:
    case MD_J_OBJECT:
    case MD_J_ARRAY:
        value = json_loadb(c->text, c->len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                           NULL);
        /* An integer beyond 64 bits keeps its digits as a string. */
        if (value == NULL && c->kind == MD_J_INTEGER)
            value = json_stringn(c->text, c->len);
        break;
    }
    return value;
}

static int cell_error(const struct md_table *t, size_t row, size_t col,
                      struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL,
                        "cannot convert row %zu, column %s to JSON: the "
                        "value is not valid JSON text or UTF-8, or memory "
                        "ran out", row, t->columns[col].name);
}

json_t *md_store_cell_json(const struct md_table *t, size_t row, size_t col,
                           struct md_error *err)
{
    json_t *value = cell_value(md_table_cell(t, row, col));

    if (value == NULL)
        cell_error(t, row, col, err);
    return value;
}

json_t *md_store_row_object(const struct md_table *t, size_t row,
                            struct md_error *err)
{
    json_t *obj = json_object();

    if (obj == NULL) {
        oom(err);
        return NULL;
    }
    for (size_t col = 0; col < t->ncolumns; col++) {
        json_t *value = md_store_cell_json(t, row, col, err);

        if (value == NULL)
            goto fail;
        if (json_object_set_new(obj, t->columns[col].name, value) != 0) {
            md_error_set(err, MD_E_INTERNAL,
                         "cannot add column %s to a JSON row: the name is "
                         "not valid UTF-8, or memory ran out",
                         t->columns[col].name);
            goto fail;
        }
    }
    return obj;

fail:
    json_decref(obj);
    return NULL;
}

char *md_store_json_text(const json_t *value, struct md_error *err)
{
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);

    if (text == NULL)
        oom(err);
    return text;
}

/* Whether a JSON string must escape the byte c: a control character, '"'
 * or '\\'. */
static int needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\';
}

/* The most bytes write_json_string() writes for len bytes of text, or
 * SIZE_MAX when that does not fit a size_t. */
static size_t json_string_room(size_t len)
{
    return len > (SIZE_MAX - 3) / 6 ? SIZE_MAX : 6 * len + 2;
}

/*
 * Write s at p as a JSON string with the escapes json_dumps() uses: \",
 * \\, \b, \f, \n, \r, \t and \u00XX for the other control characters.
 * p must have json_string_room(len) bytes.  Returns the end.
 */
static char *write_json_string(char *p, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    static const char short_escapes[0x20] = {
        ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
    };

    *p++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!needs_escape(c)) {
            *p++ = (char)c;
            continue;
        }
        *p++ = '\\';
        if (c >= 0x20) {
            *p++ = (char)c;
        } else if (short_escapes[c] != 0) {
            *p++ = short_escapes[c];
        } else {
            memcpy(p, "u00", 3);
            p[3] = hex[c >> 4];
            p[4] = hex[c & 0xf];
            p += 5;
        }
    }
    *p++ = '"';
    return p;
}

static int put_json_string(struct md_buf *b, const char *s, size_t len)
{
    size_t room = json_string_room(len);

    if (room == SIZE_MAX || md_buf_reserve(b, room) != 0)
        return -1;
    b->len = (size_t)(write_json_string(b->data + b->len, s, len) - b->data);
    b->data[b->len] = '\0';
    return 0;
}

/* Whether text is a JSON number by the grammar of RFC 8259. */
static int is_json_number(const char *text, size_t len)
{
    size_t i = 0;
    size_t digits;

    if (i < len && text[i] == '-')
        i++;
    for (digits = 0; i + digits < len && text[i + digits] >= '0' &&
                     text[i + digits] <= '9'; )
        digits++;
    if (digits == 0 || (digits > 1 && text[i] == '0'))
        return 0;
    i += digits;
    if (i < len && text[i] == '.') {
        for (i++, digits = 0; i < len && text[i] >= '0' && text[i] <= '9';
             i++)
            digits++;
        if (digits == 0)
            return 0;
    }
    if (i < len && (text[i] == 'e' || text[i] == 'E')) {
        i++;
        if (i < len && (text[i] == '+' || text[i] == '-'))
            i++;
        for (digits = 0; i < len && text[i] >= '0' && text[i] <= '9'; i++)
            digits++;
        if (digits == 0)
            return 0;
    }
    return i == len;
}

/* Append a number cell through jansson, as md_store_row_object() does,
 * when its text is no plain JSON number or is an integer that may not
 * fit 64 bits (jansson then makes it a string). */
static int put_number_slowly(struct md_buf *b, const struct md_table *t,
                             size_t row, size_t col, const struct md_cell *c,
                             struct md_error *err)
{
    json_t *value = cell_value(c);
    char *text;
    int rc;

    if (value == NULL)
        return cell_error(t, row, col, err);
    text = md_store_json_text(value, err);
    json_decref(value);
    if (text == NULL)
        return -1;
    rc = md_buf_puts(b, text);
    free(text);
    return rc != 0 ? oom(err) : 0;
}

/* The longest integer text (sign excluded) that always fits 64 bits. */
#define SAFE_INTEGER_DIGITS 18

static int put_cell(struct md_buf *b, const struct md_table *t, size_t row,
                    size_t col, const struct md_cell *c,
                    struct md_error *err)
{
    int is_true;
    int rc;

    switch (c->kind) {
    case MD_J_NULL:
        rc = md_buf_append(b, "null", 4);
        break;
    case MD_J_BOOL:
        is_true = c->len == 4 && memcmp(c->text, "true", 4) == 0;
        rc = md_buf_puts(b, is_true ? "true" : "false");
        break;
    case MD_J_STRING:
        rc = put_json_string(b, c->text, c->len);
        break;
    case MD_J_INTEGER:
    case MD_J_REAL:
        if (!is_json_number(c->text, c->len) ||
            (c->kind == MD_J_INTEGER &&
             c->len > SAFE_INTEGER_DIGITS + (c->text[0] == '-')))
            return put_number_slowly(b, t, row, col, c, err);
        rc = md_buf_append(b, c->text, c->len);
        break;
    default:
        /* table.h: an object's or array's text is compact JSON. */
        rc = md_buf_append(b, c->text, c->len);
        break;
    }
    return rc != 0 ? oom(err) : 0;
}

int md_store_row_text(const struct md_table *t, size_t row,
                      const struct md_cell *const *cells, struct md_buf *b,
                      struct md_error *err)
{
    if (md_buf_putc(b, '{') != 0)
        return oom(err);
    for (size_t col = 0; col < t->ncolumns; col++) {
        const char *name = t->columns[col].name;
        const struct md_cell *c = md_table_cell(t, row, col);

        if (cells != NULL && cells[col] != NULL)
            c = cells[col];
        if ((col > 0 && md_buf_putc(b, ',') != 0) ||
            put_json_string(b, name, strlen(name)) != 0 ||
            md_buf_putc(b, ':') != 0)
            return oom(err);
        if (put_cell(b, t, row, col, c, err) != 0)
            return -1;
    }
    if (md_buf_putc(b, '}') != 0)
        return oom(err);
    return 0;
}

/* ---- Opening and migrations ---------------------------------------------- */

const char *md_store_path(const struct md_store *st)
{
    return st->path;
}

struct sqlite3 *md_store_handle(struct md_store *st)
{
    return st->db;
}

long md_store_interrupted_at_open(const struct md_store *st)
{
    return st->interrupted_at_open;
}

static int read_user_version(struct md_store *st, int64_t *version,
                             struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, SQL_USER_VERSION, &stmt, err) != 0)
        return -1;
    rc = query_int64(st, stmt, 0, version, "read the schema version", err);
    release(st, stmt);
    return rc;
}

static int newer_schema_error(const struct md_store *st, int64_t version,
                              size_t known, struct md_error *err)
{
    return md_error_set(err, MD_E_STORE,
                        "store %s: schema version %lld was written by a "
                        "newer mdhunt; this one knows up to version %zu, so "
                        "upgrade mdhunt or set another [store] path",
                        st->path, (long long)version, known);
}

/* Apply one step in its own transaction; *done is set when the schema
 * was already at the last version. */
static int migrate_one(struct md_store *st,
                       const struct md_store_migration *steps, size_t nsteps,
                       int *done, struct md_error *err)
{
    int64_t version;
    const struct md_store_migration *step;
    char *errmsg = NULL;

    if (exec_const(st, SQL_BEGIN, "start a schema upgrade", err) != 0)
        return -1;
    if (read_user_version(st, &version, err) != 0)
        goto fail;
    if (version < 0 || (uint64_t)version > nsteps) {
        newer_schema_error(st, version, nsteps, err);
        goto fail;
    }
    if ((size_t)version == nsteps) {
        *done = 1;
        return exec_const(st, SQL_COMMIT, "finish a schema upgrade", err);
    }

    step = &steps[version];
    if (sqlite3_exec(st->db, step->sql, NULL, NULL, &errmsg) != SQLITE_OK) {
        md_error_set(err, MD_E_STORE,
                     "store %s: cannot upgrade the schema to version %d: "
                     "%s%s", st->path, step->version,
                     errmsg != NULL ? errmsg : "unknown error",
                     sqlite_hint(sqlite3_extended_errcode(st->db)));
        sqlite3_free(errmsg);
        goto fail;
    }
    if (read_user_version(st, &version, err) != 0)
        goto fail;
    if (version != step->version) {
        md_error_set(err, MD_E_INTERNAL,
                     "store %s: migration step %d left user_version at %lld;"
                     " the step must set PRAGMA user_version = %d",
                     st->path, step->version, (long long)version,
                     step->version);
        goto fail;
    }
    if (exec_const(st, SQL_COMMIT, "finish a schema upgrade", err) != 0)
        goto fail;
    md_info("store %s: schema upgraded to version %d", st->path,
            step->version);
    return 0;

fail:
    rollback(st);
    return -1;
}

static int migrate(struct md_store *st,
                   const struct md_store_migration *steps, size_t nsteps,
                   struct md_error *err)
{
    int done = 0;

    /* Bounded: each pass moves up one version or stops. */
    for (size_t pass = 0; pass <= nsteps && !done; pass++) {
        if (migrate_one(st, steps, nsteps, &done, err) != 0)
            return -1;
    }
    return 0;
}

static struct md_store *store_alloc(const char *path, struct md_error *err)
{
    struct md_store *st = calloc(1, sizeof(*st));

    if (st == NULL) {
        oom(err);
        return NULL;
    }
    st->path = md_strdup(path);
    if (st->path == NULL) {
        free(st);
        oom(err);
        return NULL;
    }
    return st;
}

void md_store_close(struct md_store *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < STMT_CACHE_SIZE; i++)
        sqlite3_finalize(st->cache[i].stmt);
    if (st->db != NULL && sqlite3_close(st->db) != SQLITE_OK)
        md_warn("store %s: closing left statements open: %s", st->path,
                sqlite3_errmsg(st->db));
    free(st->path);
    free(st);
}

static int open_connection(struct md_store *st, int flags,
                           struct md_error *err)
{
    int rc;

    /* The store names the organisation's devices: create it readable by
     * its owner only.  SQLite gives the -wal and -shm files the same
     * mode. */
    if ((flags & SQLITE_OPEN_CREATE) != 0) {
        int fd = open(st->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

        if (fd >= 0)
            close(fd);
    }
    /* mdhunt uses each connection from one thread only, so SQLite's
     * mutexes around every call are not needed. */
    rc = sqlite3_open_v2(st->path, &st->db, flags | SQLITE_OPEN_NOMUTEX,
                             NULL);

    if (rc != SQLITE_OK) {
        if (st->db == NULL)
            return oom(err);
        if ((flags & SQLITE_OPEN_CREATE) == 0 && access(st->path, F_OK) != 0)
            return md_error_set(err, MD_E_STORE,
                                "store %s: not found; `mdhunt run` creates "
                                "it on its first run, or set [store] path",
                                st->path);
        return db_error(st, st->db, "open the database", err);
    }
    sqlite3_extended_result_codes(st->db, 1);
    if (sqlite3_busy_timeout(st->db, MD_STORE_BUSY_TIMEOUT_MS) != SQLITE_OK)
        return db_error(st, st->db, "set the busy timeout", err);
    return exec_const(st, SQL_FOREIGN_KEYS, "enable foreign keys", err);
}

static int enable_wal(struct md_store *st, struct md_error *err)
{
    sqlite3_stmt *stmt;
    const unsigned char *mode;
    int persist = 1;
    int ok;

    if (prepare(st, SQL_WAL, &stmt, err) != 0)
        return -1;
    if (sqlite3_step(stmt) != SQLITE_ROW) {
        db_error(st, st->db, "switch the journal to WAL", err);
        release(st, stmt);
        return -1;
    }
    mode = sqlite3_column_text(stmt, 0);
    ok = mode != NULL && strcmp((const char *)mode, "wal") == 0;
    if (!ok)
        md_error_set(err, MD_E_STORE,
                     "store %s: the journal stayed in mode %s instead of "
                     "WAL; put the store on a local file system that "
                     "supports shared memory", st->path,
                     mode != NULL ? (const char *)mode : "(unknown)");
    release(st, stmt);
    if (!ok)
        return -1;

    /* Keep the -wal and -shm files after close: SQLite can open a WAL
     * database read-only only when they exist or can be created, and a
     * reader may lack write access to the store's directory. */
    if (sqlite3_file_control(st->db, "main", SQLITE_FCNTL_PERSIST_WAL,
                             &persist) != SQLITE_OK)
        md_warn("store %s: cannot keep the WAL file after close; reading "
                "commands may fail without write access to its directory",
                st->path);
    return 0;
}

static int mark_interrupted(struct md_store *st, struct md_error *err)
{
    sqlite3_stmt *stmt;

    if (prepare(st, SQL_MARK_INTERRUPTED, &stmt, err) != 0)
        return -1;
    if (check_binds(bind_text(stmt, 1, INTERRUPTED_MESSAGE), err) != 0 ||
        step_done(st, stmt, "mark unfinished runs as interrupted",
                  err) != 0) {
        release(st, stmt);
        return -1;
    }
    release(st, stmt);
    st->interrupted_at_open = sqlite3_changes(st->db);
    if (st->interrupted_at_open > 0)
        md_warn("store %s: marked %ld unfinished run(s) as interrupted; "
                "a previous mdhunt process ended during a run", st->path,
                st->interrupted_at_open);
    return 0;
}

static int reject_newer(struct md_store *st, struct md_error *err)
{
    int64_t version;

    if (read_user_version(st, &version, err) != 0)
        return -1;
    if (version > (int64_t)NMIGRATIONS)
        return newer_schema_error(st, version, NMIGRATIONS, err);
    return 0;
}

static int check_read_only_version(struct md_store *st,
                                   struct md_error *err)
{
    int64_t version;

    if (read_user_version(st, &version, err) != 0)
        return -1;
    if (version == MD_STORE_SCHEMA_VERSION)
        return 0;
    if (version > MD_STORE_SCHEMA_VERSION)
        return newer_schema_error(st, version, MD_STORE_SCHEMA_VERSION, err);
    if (version == 0)
        return md_error_set(err, MD_E_STORE,
                            "store %s: the file holds no mdhunt data yet; "
                            "the runner creates it on its first run",
                            st->path);
    return md_error_set(err, MD_E_STORE,
                        "store %s: schema version %lld is older than this "
                        "mdhunt's version %d; run the runner once (opening "
                        "the store read-write upgrades it)", st->path,
                        (long long)version, MD_STORE_SCHEMA_VERSION);
}

int md_store_open(const char *path, int flags, struct md_store **out,
                  struct md_error *err)
{
    struct md_store *st;
    int read_only = (flags & MD_STORE_READ_ONLY) != 0;
    int open_flags = read_only ? SQLITE_OPEN_READONLY
                               : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;

    *out = NULL;
    st = store_alloc(path, err);
    if (st == NULL)
        return -1;
    st->read_only = read_only;

    if (open_connection(st, open_flags, err) != 0)
        goto fail;

    if (read_only) {
        if (check_read_only_version(st, err) != 0)
            goto fail;
    } else {
        /* Leave a newer store untouched, even its journal mode. */
        if (reject_newer(st, err) != 0 ||
            enable_wal(st, err) != 0 ||
            exec_const(st, SQL_SYNCHRONOUS, "set the sync mode", err) != 0 ||
            migrate(st, migrations, NMIGRATIONS, err) != 0 ||
            mark_interrupted(st, err) != 0)
            goto fail;
    }
    *out = st;
    return 0;

fail:
    md_store_close(st);
    return -1;
}

int md_store_apply_migrations(const char *path,
                              const struct md_store_migration *steps,
                              size_t nsteps, struct md_error *err)
{
    struct md_store *st = store_alloc(path, err);
    int rc;

    if (st == NULL)
        return -1;
    rc = open_connection(st, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                         err);
    if (rc == 0)
        rc = migrate(st, steps, nsteps, err);
    md_store_close(st);
    return rc;
}

/* ---- Writing a run ------------------------------------------------------- */

static int read_only_error(const struct md_store *st, struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL,
                        "store %s: opened read-only, cannot write",
                        st->path);
}

static int insert_run_header(struct md_store *st,
                             const struct md_run_start *s, int64_t *run_id,
                             struct md_error *err)
{
    sqlite3_stmt *stmt = NULL;
    int rc = -1;

    if (prepare(st, SQL_QUERY_INSERT, &stmt, err) != 0)
        goto out;
    if (check_binds(bind_text(stmt, 1, s->query_hash) |
                    bind_text(stmt, 2, s->query), err) != 0 ||
        step_done(st, stmt, "record the query", err) != 0)
        goto out;
    release(st, stmt);

    if (prepare(st, SQL_RULE_UPSERT, &stmt, err) != 0)
        goto out;
    if (check_binds(bind_text(stmt, 1, s->rule_id) |
                    bind_text(stmt, 2, s->rule_name) |
                    bind_text(stmt, 3, s->rule_file) |
                    bind_text(stmt, 4, s->query_hash), err) != 0 ||
        step_done(st, stmt, "record the rule", err) != 0)
        goto out;
    release(st, stmt);

    if (prepare(st, SQL_RUN_INSERT, &stmt, err) != 0)
        goto out;
    if (check_binds(bind_text(stmt, 1, s->rule_id) |
                    bind_text(stmt, 2, s->tenant) |
                    bind_text(stmt, 3, s->backend) |
                    sqlite3_bind_int64(stmt, 4, s->period) |
                    bind_time(stmt, 5, s->due) |
                    bind_time(stmt, 6, s->started) |
                    bind_text(stmt, 7, s->query_hash) |
                    bind_text(stmt, 8, s->exclusions_hash), err) != 0 ||
        step_done(st, stmt, "record the start of the run", err) != 0)
        goto out;
    *run_id = sqlite3_last_insert_rowid(st->db);
    rc = 0;

out:
    release(st, stmt);
    return rc;
}

int md_store_run_begin(struct md_store *st, const struct md_run_start *start,
                       int64_t *run_id, struct md_error *err)
{
    *run_id = 0;
    if (st->read_only)
        return read_only_error(st, err);
    if (start->rule_id == NULL || start->query == NULL ||
        start->query_hash == NULL || start->backend == NULL ||
        start->started == MD_STORE_TIME_NONE)
        return md_error_set(err, MD_E_INTERNAL,
                            "md_store_run_begin: rule_id, query, query_hash,"
                            " backend and started are required");

    if (exec_const(st, SQL_BEGIN, "start a transaction", err) != 0)
        return -1;
    if (insert_run_header(st, start, run_id, err) != 0 ||
        exec_const(st, SQL_COMMIT, "commit the start of the run",
                   err) != 0) {
        rollback(st);
        *run_id = 0;
        return -1;
    }
    md_debug("store: run %lld of rule %s started",
             (long long)*run_id, start->rule_id);
    return 0;
}

/* Check that run_id is running and copy its rule id.  Caller frees. */
static int running_rule_id(struct md_store *st, int64_t run_id,
                           char **rule_id, struct md_error *err)
{
    sqlite3_stmt *stmt;
    const unsigned char *status;
    int rc;

    *rule_id = NULL;
    if (prepare(st, SQL_RUN_RULE_STATUS, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, run_id);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) {
        md_error_set(err, MD_E_STORE, "store %s: run %lld not found",
                     st->path, (long long)run_id);
        goto fail;
    }
    if (rc != SQLITE_ROW) {
        db_error(st, st->db, "read the run", err);
        goto fail;
    }
    status = sqlite3_column_text(stmt, 1);
    if (status == NULL || strcmp((const char *)status, "running") != 0) {
        md_error_set(err, MD_E_STORE,
                     "store %s: run %lld is %s, not running; it was "
                     "finished already or marked interrupted by another "
                     "process", st->path, (long long)run_id,
                     status != NULL ? (const char *)status : "(null)");
        goto fail;
    }
    if (column_strdup(stmt, 0, rule_id) != 0) {
        oom(err);
        goto fail;
    }
    release(st, stmt);
    return 0;

fail:
    release(st, stmt);
    return -1;
}

static int insert_rows(struct md_store *st, int64_t run_id,
                       const struct md_table *table, struct md_error *err)
{
    struct md_buf text = MD_BUF_INIT;
    sqlite3_stmt *stmt;
    int rc = -1;

    if (table == NULL)
        return 0;
    if (prepare(st, SQL_RUN_ROW_INSERT, &stmt, err) != 0)
        return -1;
    for (size_t row = 0; row < table->nrows; row++) {
        int brc;

        md_buf_reset(&text);
        if (md_store_row_text(table, row, NULL, &text, err) != 0)
            goto out;
        /* text stays unchanged until the step is done. */
        brc = sqlite3_bind_int64(stmt, 1, run_id) |
              sqlite3_bind_int64(stmt, 2, (int64_t)row) |
              sqlite3_bind_text64(stmt, 3, text.data, text.len,
                                  SQLITE_STATIC, SQLITE_UTF8);
        if (check_binds(brc, err) != 0 ||
            step_done(st, stmt, "store a result row", err) != 0)
            goto out;
    }
    rc = 0;

out:
    release(st, stmt);
    md_buf_free(&text);
    return rc;
}

/* JSON array text of an entity's tracked values, or NULL for none. */
static int tracked_values_text(const struct md_entity *e, char **out,
                               struct md_error *err)
{
    json_t *array;

    *out = NULL;
    if (e->ntracked_values == 0)
        return 0;
    array = json_array();
    if (array == NULL)
        return oom(err);
    for (size_t i = 0; i < e->ntracked_values; i++) {
        if (json_array_append_new(array,
                                  json_string(e->tracked_values[i])) != 0) {
            json_decref(array);
            return md_error_set(err, MD_E_INTERNAL,
                                "cannot store tracked value of %s: not "
                                "valid UTF-8, or memory ran out", e->key);
        }
    }
    *out = md_store_json_text(array, err);
    json_decref(array);
    return *out == NULL ? -1 : 0;
}

/* Bind an entity's columns.  The strings are bound without a copy, so
 * e and tracked must stay unchanged until the step is done. */
static int bind_entity(sqlite3_stmt *stmt, const char *rule_id,
                       const struct md_entity *e, const char *tracked,
                       struct md_error *err)
{
    int rc;

    bind_static(stmt, 1, rule_id);
    bind_static(stmt, 2, e->key);
    bind_static(stmt, 3, e->device_id);
    bind_static(stmt, 4, e->device_name);
    bind_static(stmt, 12, tracked);
    bind_static(stmt, 13, e->row_json);
    bind_static(stmt, 14, e->excluded_by);
    bind_static(stmt, 15, e->exclusion_reason);
    bind_static(stmt, 16, e->exclusion_owner);
    rc = sqlite3_bind_int64(stmt, 5, e->first_run) |
         sqlite3_bind_int64(stmt, 6, e->first_seen) |
         sqlite3_bind_int64(stmt, 7, e->last_run) |
         sqlite3_bind_int64(stmt, 8, e->last_seen) |
         bind_time(stmt, 9, e->telemetry_first_seen) |
         bind_time(stmt, 10, e->telemetry_last_seen) |
         sqlite3_bind_int64(stmt, 11, e->runs_seen) |
         bind_time(stmt, 17, e->excluded_by != NULL
                                 ? e->exclusion_expires
                                 : MD_STORE_TIME_NONE);
    return check_binds(rc, err);
}

/* Update an entity, or add it when the update changed no row.  Updating
 * first costs a new entity one failed lookup, and spares the 99% of keys
 * that a run sees again the conflict handling of an upsert. */
static int write_entity(struct md_store *st, sqlite3_stmt *update,
                        sqlite3_stmt *insert, const char *rule_id,
                        const struct md_entity *e, struct md_error *err)
{
    char *tracked;
    int rc;

    if (tracked_values_text(e, &tracked, err) != 0)
        return -1;
    rc = bind_entity(update, rule_id, e, tracked, err);
    if (rc == 0)
        rc = step_done(st, update, "update an entity", err);
    if (rc == 0 && sqlite3_changes(st->db) == 0) {
        rc = bind_entity(insert, rule_id, e, tracked, err);
        if (rc == 0)
            rc = step_done(st, insert, "add an entity", err);
    }
    free(tracked);
    return rc;
}

static int upsert_entities(struct md_store *st, const char *rule_id,
                           const struct md_run_finish *fin,
                           struct md_error *err)
{
    sqlite3_stmt *update = NULL;
    sqlite3_stmt *insert = NULL;
    int rc = -1;

    if (prepare(st, SQL_ENTITY_UPDATE, &update, err) != 0 ||
        prepare(st, SQL_ENTITY_UPSERT, &insert, err) != 0)
        goto out;
    for (size_t i = 0; i < fin->nentities; i++) {
        if (write_entity(st, update, insert, rule_id, &fin->entities[i],
                         err) != 0)
            goto out;
    }
    rc = 0;

out:
    release(st, update);
    release(st, insert);
    return rc;
}

static int insert_events(struct md_store *st, int64_t run_id,
                         const struct md_run_finish *fin,
                         struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc = -1;

    if (prepare(st, SQL_EVENT_INSERT, &stmt, err) != 0)
        return -1;
    for (size_t i = 0; i < fin->nevents; i++) {
        const struct md_event *ev = &fin->events[i];
        int brc;

        brc = sqlite3_bind_int64(stmt, 1, run_id) |
              sqlite3_bind_int64(stmt, 2, (int64_t)i) |
              bind_text(stmt, 3, md_event_kind_name(ev->kind)) |
              bind_text(stmt, 4, ev->key != NULL ? ev->key : "") |
              bind_text(stmt, 5, ev->row_json) |
              bind_time(stmt, 6, ev->first_seen) |
              bind_time(stmt, 7, ev->last_seen) |
              sqlite3_bind_int64(stmt, 8, ev->days_away) |
              bind_text(stmt, 9, ev->old_name) |
              bind_text(stmt, 10, ev->new_name) |
              bind_text(stmt, 11, ev->value) |
              bind_text(stmt, 12, ev->exclusion_id) |
              bind_text(stmt, 13, ev->exclusion_reason) |
              bind_text(stmt, 14, ev->exclusion_owner) |
              bind_time(stmt, 15, ev->exclusion_id != NULL
                                      ? ev->exclusion_expires
                                      : MD_STORE_TIME_NONE) |
              sqlite3_bind_int(stmt, 16, ev->first_excluded != 0);
        if (check_binds(brc, err) != 0 ||
            step_done(st, stmt, "store a diff event", err) != 0)
            goto out;
    }
    rc = 0;

out:
    release(st, stmt);
    return rc;
}

static int insert_issues(struct md_store *st, int64_t run_id,
                         const struct md_run_finish *fin,
                         struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc = -1;

    if (fin->nexclusion_issues == 0)
        return 0;
    if (prepare(st, SQL_ISSUE_INSERT, &stmt, err) != 0)
        return -1;
    for (size_t i = 0; i < fin->nexclusion_issues; i++) {
        const struct md_exclusion_issue *is = &fin->exclusion_issues[i];
        int brc;

        brc = sqlite3_bind_int64(stmt, 1, run_id) |
              sqlite3_bind_int64(stmt, 2, (int64_t)i) |
              bind_text(stmt, 3, is->entry_id) |
              bind_text(stmt, 4, is->message);
        if (check_binds(brc, err) != 0 ||
            step_done(st, stmt, "store an exclusion issue", err) != 0)
            goto out;
    }
    rc = 0;

out:
    release(st, stmt);
    return rc;
}

static int insert_outbox(struct md_store *st, md_instant created,
                         const int64_t *run_ids, size_t nrun_ids,
                         int64_t *outbox_id, struct md_error *err)
{
    sqlite3_stmt *stmt;

    if (prepare(st, SQL_OUTBOX_INSERT, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, created);
    if (step_done(st, stmt, "queue a report in the outbox", err) != 0) {
        release(st, stmt);
        return -1;
    }
    release(st, stmt);
    *outbox_id = sqlite3_last_insert_rowid(st->db);

    if (prepare(st, SQL_OUTBOX_RUN_INSERT, &stmt, err) != 0)
        return -1;
    for (size_t i = 0; i < nrun_ids; i++) {
        sqlite3_bind_int64(stmt, 1, *outbox_id);
        sqlite3_bind_int64(stmt, 2, run_ids[i]);
        if (step_done(st, stmt, "link a run to its outbox item",
                      err) != 0) {
            release(st, stmt);
            return -1;
        }
    }
    release(st, stmt);
    return 0;
}

static int update_run_ok(struct md_store *st, int64_t run_id,
                         const struct md_run_finish *fin,
                         struct md_error *err)
{
    sqlite3_stmt *stmt;
    int64_t nrows = fin->table != NULL ? (int64_t)fin->table->nrows : 0;
    int truncated = fin->table != NULL && fin->table->truncated;
    int rc;

    if (prepare(st, SQL_RUN_FINISH_OK, &stmt, err) != 0)
        return -1;
    rc = sqlite3_bind_int64(stmt, 1, run_id) |
         bind_time(stmt, 2, fin->ended) |
         sqlite3_bind_int64(stmt, 3, nrows) |
         sqlite3_bind_int(stmt, 4, truncated) |
         sqlite3_bind_int(stmt, 5, fin->baseline != 0) |
         sqlite3_bind_int64(stmt, 6, fin->key_count) |
         sqlite3_bind_int64(stmt, 7, fin->unchanged_count);
    rc = check_binds(rc, err);
    if (rc == 0)
        rc = step_done(st, stmt, "record the end of the run", err);
    release(st, stmt);
    return rc;
}

/* The transaction of md_store_run_finish_ok().  Sets *rule_id (the
 * caller frees it) as soon as it is known. */
static int write_run_ok(struct md_store *st, int64_t run_id,
                        const struct md_run_finish *fin, char **rule_id,
                        int64_t *outbox_id, struct md_error *err)
{
    if (exec_const(st, SQL_BEGIN, "start a transaction", err) != 0)
        return -1;
    if (running_rule_id(st, run_id, rule_id, err) != 0 ||
        insert_rows(st, run_id, fin->table, err) != 0 ||
        upsert_entities(st, *rule_id, fin, err) != 0 ||
        insert_events(st, run_id, fin, err) != 0 ||
        insert_issues(st, run_id, fin, err) != 0)
        goto fail;
    if (fin->add_outbox &&
        insert_outbox(st, fin->ended, &run_id, 1, outbox_id, err) != 0)
        goto fail;
    if (update_run_ok(st, run_id, fin, err) != 0 ||
        exec_const(st, SQL_COMMIT, "commit the run", err) != 0)
        goto fail;
    return 0;

fail:
    rollback(st);
    return -1;
}

int md_store_run_finish_ok(struct md_store *st, int64_t run_id,
                           const struct md_run_finish *fin,
                           int64_t *outbox_id, struct md_error *err)
{
    char *rule_id = NULL;
    int64_t item = 0;
    int fk_off;
    int rc;

    if (outbox_id != NULL)
        *outbox_id = 0;
    if (st->read_only)
        return read_only_error(st, err);

    /*
     * With foreign keys on, SQLite keeps a statement journal for each
     * entity update, in case it has to undo it: 1.5 GB written to a
     * temporary file for 100,000 entities.  Every key this transaction
     * writes is the running run's or was read from the store, so a large
     * run turns the checks off.  A small one keeps them: switching them
     * expires every prepared statement.
     */
    fk_off = fin->nentities >= FOREIGN_KEYS_OFF_MIN_ENTITIES;
    if (fk_off && exec_const(st, SQL_FOREIGN_KEYS_OFF,
                             "turn foreign keys off", err) != 0)
        return -1;
    rc = write_run_ok(st, run_id, fin, &rule_id, &item, err);
    if (fk_off &&
        sqlite3_exec(st->db, SQL_FOREIGN_KEYS, NULL, NULL, NULL)
        != SQLITE_OK)
        md_warn("store %s: cannot turn foreign keys back on: %s",
                st->path, sqlite3_errmsg(st->db));
    if (rc != 0) {
        md_error_prefix(err, "run %lld of rule %s not recorded",
                        (long long)run_id, rule_id != NULL ? rule_id : "?");
        free(rule_id);
        return -1;
    }

    if (outbox_id != NULL)
        *outbox_id = item;
    md_debug("store: run %lld of rule %s finished: %zu rows, %zu events",
             (long long)run_id, rule_id,
             fin->table != NULL ? fin->table->nrows : 0, fin->nevents);
    free(rule_id);
    return 0;
}

int md_store_run_finish_failed(struct md_store *st, int64_t run_id,
                               md_instant ended,
                               const struct md_error *run_error,
                               struct md_error *err)
{
    sqlite3_stmt *stmt;
    int interrupted = run_error->kind == MD_E_INTERRUPTED;
    int rc;

    if (st->read_only)
        return read_only_error(st, err);
    if (prepare(st, SQL_RUN_FINISH_FAILED, &stmt, err) != 0)
        return -1;
    rc = sqlite3_bind_int64(stmt, 1, run_id) |
         bind_text(stmt, 2, interrupted ? "interrupted" : "failed") |
         bind_time(stmt, 3, ended) |
         bind_text(stmt, 4, md_err_kind_name(run_error->kind)) |
         bind_nonzero(stmt, 5, run_error->http_status) |
         bind_text(stmt, 6, run_error->request_id[0] != '\0'
                                ? run_error->request_id : NULL) |
         bind_text(stmt, 7, run_error->message);
    rc = check_binds(rc, err);
    if (rc == 0)
        rc = step_done(st, stmt, "record the failed run", err);
    release(st, stmt);
    if (rc != 0)
        return -1;
    if (sqlite3_changes(st->db) != 1)
        return md_error_set(err, MD_E_STORE,
                            "store %s: run %lld not found or not running; "
                            "its failure was not recorded", st->path,
                            (long long)run_id);
    return 0;
}

int md_store_outbox_add(struct md_store *st, md_instant created,
                        const int64_t *run_ids, size_t nrun_ids,
                        int64_t *outbox_id, struct md_error *err)
{
    *outbox_id = 0;
    if (st->read_only)
        return read_only_error(st, err);
    if (exec_const(st, SQL_BEGIN, "start a transaction", err) != 0)
        return -1;
    if (insert_outbox(st, created, run_ids, nrun_ids, outbox_id, err) != 0 ||
        exec_const(st, SQL_COMMIT, "commit the outbox item", err) != 0) {
        rollback(st);
        *outbox_id = 0;
        return -1;
    }
    return 0;
}

/* ---- The mail outbox ----------------------------------------------------- */

static const char SQL_OUTBOX_PENDING[] =
    "SELECT o.id, o.created, r.run_id FROM outbox o"
    " LEFT JOIN outbox_run r ON r.outbox_id = o.id"
    " WHERE o.digest_id IS NULL AND o.state = 'pending'"
    " AND o.created <= ?1 ORDER BY o.id, r.run_id";

static const char SQL_RUNS_AFTER[] =
    "SELECT id FROM run WHERE id > ?1 AND status <> 'running' ORDER BY id";

static const char SQL_DIGEST_LAST_RUN[] = "SELECT MAX(last_run) FROM digest";

static const char SQL_DIGEST_LAST_CREATED[] =
    "SELECT created FROM digest ORDER BY id DESC LIMIT 1";

static const char SQL_RULE_FIRST_STARTED[] =
    "SELECT MIN(started) FROM run WHERE rule_id = ?1";

static const char SQL_DIGEST_INSERT[] =
    "INSERT INTO digest (created, state, reason, last_run, new_devices,"
    " subject, message_id, message, next_attempt)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

static const char SQL_OUTBOX_TAKE[] =
    "UPDATE outbox SET digest_id = ?1,"
    " state = CASE WHEN ?2 THEN 'sent' ELSE state END"
    " WHERE id = ?3 AND digest_id IS NULL";

#define DIGEST_COLUMNS \
    "id, created, state, reason, last_run, new_devices, subject," \
    " message_id, attempts, next_attempt, last_attempt, sent, last_error"

static const char SQL_DIGEST_GET[] =
    "SELECT " DIGEST_COLUMNS ", message FROM digest WHERE id = ?1";

static const char SQL_DIGEST_LIST[] =
    "SELECT " DIGEST_COLUMNS " FROM digest ORDER BY id";

static const char SQL_DIGEST_ITEMS[] =
    "SELECT id FROM outbox WHERE digest_id = ?1 ORDER BY id";

static const char SQL_DIGESTS_DUE[] =
    "SELECT id FROM digest WHERE state = 'pending' AND next_attempt <= ?1"
    " ORDER BY id";

static const char SQL_DIGEST_NEXT_ATTEMPT[] =
    "SELECT MIN(next_attempt) FROM digest WHERE state = 'pending'";

static const char SQL_DIGEST_COUNTS[] =
    "SELECT state, COUNT(*) FROM digest GROUP BY state";

/* ?2 lists the states the digest may be in for the change. */
static const char SQL_DIGEST_MARK[] =
    "UPDATE digest SET state = ?3, attempts = attempts + 1,"
    " last_attempt = ?4, next_attempt = ?5, last_error = ?6,"
    " sent = CASE WHEN ?3 = 'sent' THEN ?4 ELSE sent END"
    " WHERE id = ?1 AND instr(?2, ',' || state || ',') > 0";

static const char SQL_OUTBOX_FOLLOW[] =
    "UPDATE outbox SET state = ?2 WHERE digest_id = ?1";

static const char *const digest_state_names[MD_DIGEST_STATE_COUNT] = {
    [MD_DIGEST_PENDING] = "pending",
    [MD_DIGEST_SENT] = "sent",
    [MD_DIGEST_DEAD] = "dead",
    [MD_DIGEST_SKIPPED] = "skipped",
};

const char *md_digest_state_name(enum md_digest_state state)
{
    if ((unsigned)state >= MD_DIGEST_STATE_COUNT)
        return "unknown";
    return digest_state_names[state];
}

int md_digest_state_from_name(const char *name, enum md_digest_state *out)
{
    for (int i = 0; name != NULL && i < MD_DIGEST_STATE_COUNT; i++) {
        if (strcmp(name, digest_state_names[i]) == 0) {
            *out = (enum md_digest_state)i;
            return 0;
        }
    }
    return -1;
}

void md_outbox_items_free(struct md_outbox_item *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i].run_ids);
    free(items);
}

void md_outbox_digest_clear(struct md_outbox_digest *d)
{
    free(d->reason);
    free(d->subject);
    free(d->message_id);
    free(d->message);
    free(d->last_error);
    free(d->outbox_ids);
    memset(d, 0, sizeof(*d));
}

void md_outbox_digests_free(struct md_outbox_digest *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        md_outbox_digest_clear(&v[i]);
    free(v);
}

/* Append value to an int64 array. */
static int push_id(int64_t **ids, size_t *n, size_t *cap, int64_t value)
{
    if (grow((void **)ids, cap, *n, sizeof(**ids)) != 0)
        return -1;
    (*ids)[(*n)++] = value;
    return 0;
}

/* Read the first column of every row as an id.  Finalizes stmt. */
static int read_ids(struct md_store *st, sqlite3_stmt *stmt, int64_t **out,
                    size_t *n, const char *what, struct md_error *err)
{
    size_t cap = 0;
    int rc;

    *out = NULL;
    *n = 0;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (push_id(out, n, &cap, sqlite3_column_int64(stmt, 0)) != 0) {
            release(st, stmt);
            free(*out);
            *out = NULL;
            *n = 0;
            return oom(err);
        }
    }
    if (rc != SQLITE_DONE) {
        db_error(st, st->db, what, err);
        release(st, stmt);
        free(*out);
        *out = NULL;
        *n = 0;
        return -1;
    }
    release(st, stmt);
    return 0;
}

int md_store_outbox_pending(struct md_store *st, md_instant due,
                            struct md_outbox_item **out, size_t *n,
                            struct md_error *err)
{
    sqlite3_stmt *stmt;
    struct md_outbox_item *items = NULL;
    size_t count = 0;
    size_t cap = 0;
    size_t run_cap = 0;
    int rc;

    *out = NULL;
    *n = 0;
    if (prepare(st, SQL_OUTBOX_PENDING, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, due);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(stmt, 0);
        struct md_outbox_item *item;

        /* One row per run, grouped by item. */
        if (count == 0 || items[count - 1].id != id) {
            if (grow((void **)&items, &cap, count, sizeof(*items)) != 0)
                goto fail_oom;
            item = &items[count++];
            memset(item, 0, sizeof(*item));
            item->id = id;
            item->created = sqlite3_column_int64(stmt, 1);
            run_cap = 0;
        }
        item = &items[count - 1];
        if (sqlite3_column_type(stmt, 2) != SQLITE_NULL &&
            push_id(&item->run_ids, &item->nrun_ids, &run_cap,
                    sqlite3_column_int64(stmt, 2)) != 0)
            goto fail_oom;
    }
    if (rc != SQLITE_DONE) {
        db_error(st, st->db, "list the pending outbox items", err);
        goto fail;
    }
    release(st, stmt);
    *out = items;
    *n = count;
    return 0;

fail_oom:
    oom(err);
fail:
    release(st, stmt);
    md_outbox_items_free(items, count);
    return -1;
}

int md_store_runs_after(struct md_store *st, int64_t after, int64_t **out,
                        size_t *n, struct md_error *err)
{
    sqlite3_stmt *stmt;

    *out = NULL;
    *n = 0;
    if (prepare(st, SQL_RUNS_AFTER, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, after);
    return read_ids(st, stmt, out, n, "list the finished runs", err);
}

/* Run a one-row, one-column query with an optional text parameter. */
static int query_one(struct md_store *st, const char *sql, const char *param,
                     int64_t dflt, int64_t *out, const char *what,
                     struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, sql, &stmt, err) != 0)
        return -1;
    if (param != NULL)
        bind_static(stmt, 1, param);
    rc = query_int64(st, stmt, dflt, out, what, err);
    release(st, stmt);
    return rc;
}

int md_store_digest_last_run(struct md_store *st, int64_t *run_id,
                             struct md_error *err)
{
    return query_one(st, SQL_DIGEST_LAST_RUN, NULL, 0, run_id,
                     "read the runs the digests cover", err);
}

int md_store_digest_last_created(struct md_store *st, md_instant *created,
                                 struct md_error *err)
{
    return query_one(st, SQL_DIGEST_LAST_CREATED, NULL, MD_STORE_TIME_NONE,
                     created, "read the newest digest", err);
}

int md_store_rule_first_started(struct md_store *st, const char *rule_id,
                                md_instant *started, struct md_error *err)
{
    return query_one(st, SQL_RULE_FIRST_STARTED, rule_id,
                     MD_STORE_TIME_NONE, started,
                     "read the rule's first run", err);
}

static int insert_digest(struct md_store *st, const struct md_outbox_digest *d,
                         int64_t *digest_id, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int pending = d->state == MD_DIGEST_PENDING;
    int rc;

    if (prepare(st, SQL_DIGEST_INSERT, &stmt, err) != 0)
        return -1;
    rc = sqlite3_bind_int64(stmt, 1, d->created) |
         bind_text(stmt, 2, md_digest_state_name(d->state)) |
         bind_text(stmt, 3, d->reason != NULL ? d->reason : "none") |
         sqlite3_bind_int64(stmt, 4, d->last_run) |
         sqlite3_bind_int64(stmt, 5, d->new_devices) |
         bind_text(stmt, 6, d->subject) |
         bind_text(stmt, 7, d->message_id) |
         (d->message != NULL
              ? sqlite3_bind_blob64(stmt, 8, d->message, d->message_len,
                                    SQLITE_TRANSIENT)
              : sqlite3_bind_null(stmt, 8)) |
         bind_time(stmt, 9, pending ? d->created : MD_STORE_TIME_NONE);
    rc = check_binds(rc, err);
    if (rc == 0)
        rc = step_done(st, stmt, "record the digest", err);
    release(st, stmt);
    if (rc == 0)
        *digest_id = sqlite3_last_insert_rowid(st->db);
    return rc;
}

static int take_items(struct md_store *st, const struct md_outbox_digest *d,
                      int64_t digest_id, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc = 0;

    if (prepare(st, SQL_OUTBOX_TAKE, &stmt, err) != 0)
        return -1;
    for (size_t i = 0; i < d->noutbox_ids && rc == 0; i++) {
        sqlite3_bind_int64(stmt, 1, digest_id);
        sqlite3_bind_int(stmt, 2, d->state == MD_DIGEST_SKIPPED);
        sqlite3_bind_int64(stmt, 3, d->outbox_ids[i]);
        rc = step_done(st, stmt, "give an outbox item its digest", err);
        if (rc == 0 && sqlite3_changes(st->db) != 1)
            rc = md_error_set(err, MD_E_STORE,
                              "store %s: outbox item %lld not found or "
                              "taken by another digest already", st->path,
                              (long long)d->outbox_ids[i]);
    }
    release(st, stmt);
    return rc;
}

int md_store_digest_add(struct md_store *st, const struct md_outbox_digest *d,
                        int64_t *digest_id, struct md_error *err)
{
    *digest_id = 0;
    if (st->read_only)
        return read_only_error(st, err);
    if (d->state != MD_DIGEST_PENDING && d->state != MD_DIGEST_SKIPPED)
        return md_error_set(err, MD_E_INTERNAL,
                            "md_store_digest_add: a new digest is pending "
                            "or skipped, not %s",
                            md_digest_state_name(d->state));

    if (exec_const(st, SQL_BEGIN, "start a transaction", err) != 0)
        return -1;
    if (insert_digest(st, d, digest_id, err) != 0 ||
        take_items(st, d, *digest_id, err) != 0 ||
        exec_const(st, SQL_COMMIT, "commit the digest", err) != 0) {
        rollback(st);
        *digest_id = 0;
        return -1;
    }
    return 0;
}

/* Read DIGEST_COLUMNS starting at column 0.  Returns -1 when out of
 * memory. */
static int read_digest_columns(sqlite3_stmt *stmt, struct md_outbox_digest *d)
{
    const char *state = (const char *)sqlite3_column_text(stmt, 2);

    d->id = sqlite3_column_int64(stmt, 0);
    d->created = column_time(stmt, 1);
    if (md_digest_state_from_name(state, &d->state) != 0)
        d->state = MD_DIGEST_DEAD;
    d->last_run = sqlite3_column_int64(stmt, 4);
    d->new_devices = sqlite3_column_int64(stmt, 5);
    d->attempts = (long)sqlite3_column_int64(stmt, 8);
    d->next_attempt = column_time(stmt, 9);
    d->last_attempt = column_time(stmt, 10);
    d->sent = column_time(stmt, 11);
    if (column_strdup(stmt, 3, &d->reason) != 0 ||
        column_strdup(stmt, 6, &d->subject) != 0 ||
        column_strdup(stmt, 7, &d->message_id) != 0 ||
        column_strdup(stmt, 12, &d->last_error) != 0)
        return -1;
    return 0;
}

static int read_digest_items(struct md_store *st, struct md_outbox_digest *d,
                             struct md_error *err)
{
    sqlite3_stmt *stmt;

    if (prepare(st, SQL_DIGEST_ITEMS, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, d->id);
    return read_ids(st, stmt, &d->outbox_ids, &d->noutbox_ids,
                    "list the digest's outbox items", err);
}

/* Copy the message blob of column col. */
static int read_message_blob(sqlite3_stmt *stmt, int col,
                             struct md_outbox_digest *d)
{
    const void *blob = sqlite3_column_blob(stmt, col);
    int len = sqlite3_column_bytes(stmt, col);

    if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
        return 0;
    d->message = malloc((size_t)len + 1);
    if (d->message == NULL)
        return -1;
    if (len > 0)
        memcpy(d->message, blob, (size_t)len);
    d->message[len] = '\0';
    d->message_len = (size_t)len;
    return 0;
}

int md_store_digest_get(struct md_store *st, int64_t id, int with_message,
                        struct md_outbox_digest *out, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    memset(out, 0, sizeof(*out));
    if (prepare(st, SQL_DIGEST_GET, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, id);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) {
        release(st, stmt);
        return md_error_set(err, MD_E_USAGE,
                            "store %s: digest %lld not found; `mdhunt "
                            "outbox` lists the digests", st->path,
                            (long long)id);
    }
    if (rc != SQLITE_ROW) {
        db_error(st, st->db, "read a digest", err);
        release(st, stmt);
        return -1;
    }
    rc = read_digest_columns(stmt, out);
    if (rc == 0 && with_message)
        rc = read_message_blob(stmt, 13, out);
    release(st, stmt);
    if (rc != 0) {
        md_outbox_digest_clear(out);
        return oom(err);
    }
    if (read_digest_items(st, out, err) != 0) {
        md_outbox_digest_clear(out);
        return -1;
    }
    return 0;
}

int md_store_digest_list(struct md_store *st, unsigned states,
                         struct md_outbox_digest **out, size_t *n,
                         struct md_error *err)
{
    sqlite3_stmt *stmt;
    struct md_outbox_digest *v = NULL;
    size_t count = 0;
    size_t cap = 0;
    int rc;

    *out = NULL;
    *n = 0;
    if (prepare(st, SQL_DIGEST_LIST, &stmt, err) != 0)
        return -1;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct md_outbox_digest d;

        memset(&d, 0, sizeof(d));
        if (read_digest_columns(stmt, &d) != 0) {
            md_outbox_digest_clear(&d);
            goto fail_oom;
        }
        if ((states & (1u << d.state)) == 0) {
            md_outbox_digest_clear(&d);
            continue;
        }
        if (grow((void **)&v, &cap, count, sizeof(*v)) != 0) {
            md_outbox_digest_clear(&d);
            goto fail_oom;
        }
        v[count++] = d;
    }
    release(st, stmt);
    if (rc != SQLITE_DONE) {
        md_outbox_digests_free(v, count);
        return db_error(st, st->db, "list the digests", err);
    }
    for (size_t i = 0; i < count; i++) {
        if (read_digest_items(st, &v[i], err) != 0) {
            md_outbox_digests_free(v, count);
            return -1;
        }
    }
    *out = v;
    *n = count;
    return 0;

fail_oom:
    release(st, stmt);
    md_outbox_digests_free(v, count);
    return oom(err);
}

int md_store_digests_due(struct md_store *st, md_instant now, int64_t **ids,
                         size_t *n, struct md_error *err)
{
    sqlite3_stmt *stmt;

    *ids = NULL;
    *n = 0;
    if (prepare(st, SQL_DIGESTS_DUE, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, now);
    return read_ids(st, stmt, ids, n, "list the digests due", err);
}

int md_store_digest_next_attempt(struct md_store *st, md_instant *next,
                                 struct md_error *err)
{
    return query_one(st, SQL_DIGEST_NEXT_ATTEMPT, NULL, MD_STORE_TIME_NONE,
                     next, "read the next delivery attempt", err);
}

int md_store_digest_counts(struct md_store *st,
                           int64_t counts[MD_DIGEST_STATE_COUNT],
                           struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    memset(counts, 0, MD_DIGEST_STATE_COUNT * sizeof(counts[0]));
    if (prepare(st, SQL_DIGEST_COUNTS, &stmt, err) != 0)
        return -1;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        enum md_digest_state state;

        if (md_digest_state_from_name(
                (const char *)sqlite3_column_text(stmt, 0), &state) == 0)
            counts[state] = sqlite3_column_int64(stmt, 1);
    }
    release(st, stmt);
    if (rc != SQLITE_DONE)
        return db_error(st, st->db, "count the digests", err);
    return 0;
}

/*
 * Change a digest to state after an attempt at when, if its state is one
 * of from (a list such as ",pending,dead,"), and make its items follow.
 */
static int mark_digest(struct md_store *st, int64_t id, const char *from,
                       enum md_digest_state state, md_instant when,
                       md_instant next, const char *error,
                       struct md_error *err)
{
    const char *name = md_digest_state_name(state);
    sqlite3_stmt *stmt = NULL;
    int rc;

    if (st->read_only)
        return read_only_error(st, err);
    if (exec_const(st, SQL_BEGIN, "start a transaction", err) != 0)
        return -1;
    if (prepare(st, SQL_DIGEST_MARK, &stmt, err) != 0)
        goto fail;
    rc = sqlite3_bind_int64(stmt, 1, id) |
         bind_text(stmt, 2, from) |
         bind_text(stmt, 3, name) |
         sqlite3_bind_int64(stmt, 4, when) |
         bind_time(stmt, 5, next) |
         bind_text(stmt, 6, error);
    if (check_binds(rc, err) != 0 ||
        step_done(st, stmt, "record the delivery attempt", err) != 0)
        goto fail;
    release(st, stmt);
    stmt = NULL;
    if (sqlite3_changes(st->db) != 1) {
        md_error_set(err, MD_E_STORE, "store %s: digest %lld not found, or "
                     "its state does not allow it to become %s", st->path,
                     (long long)id, name);
        goto fail;
    }

    if (state != MD_DIGEST_PENDING) {
        if (prepare(st, SQL_OUTBOX_FOLLOW, &stmt, err) != 0)
            goto fail;
        sqlite3_bind_int64(stmt, 1, id);
        bind_static(stmt, 2, name);
        if (step_done(st, stmt, "update the digest's outbox items",
                      err) != 0)
            goto fail;
        release(st, stmt);
        stmt = NULL;
    }
    if (exec_const(st, SQL_COMMIT, "commit the delivery attempt", err) != 0)
        goto fail;
    return 0;

fail:
    release(st, stmt);
    rollback(st);
    return -1;
}

int md_store_digest_mark_sent(struct md_store *st, int64_t id,
                              md_instant when, struct md_error *err)
{
    return mark_digest(st, id, ",pending,dead,", MD_DIGEST_SENT, when,
                       MD_STORE_TIME_NONE, NULL, err);
}

int md_store_digest_mark_retry(struct md_store *st, int64_t id,
                               md_instant when, md_instant next,
                               const char *error, struct md_error *err)
{
    return mark_digest(st, id, ",pending,", MD_DIGEST_PENDING, when, next,
                       error, err);
}

int md_store_digest_mark_dead(struct md_store *st, int64_t id,
                              md_instant when, const char *error,
                              struct md_error *err)
{
    return mark_digest(st, id, ",pending,dead,", MD_DIGEST_DEAD, when,
                       MD_STORE_TIME_NONE, error, err);
}

static int prune_step(struct md_store *st, const char *sql, int64_t param,
                      int64_t *deleted, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, sql, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, param);
    rc = step_done(st, stmt, "prune old result rows", err);
    release(st, stmt);
    if (rc == 0)
        *deleted += sqlite3_changes(st->db);
    return rc;
}

int md_store_prune(struct md_store *st, md_instant now, long keep_runs,
                   int64_t keep_days, int64_t *deleted,
                   struct md_error *err)
{
    int64_t total = 0;

    if (deleted != NULL)
        *deleted = 0;
    if (st->read_only)
        return read_only_error(st, err);
    if (keep_runs < 0 || keep_days < 0 ||
        keep_days > INT64_MAX / MD_TICKS_PER_SECOND)
        return md_error_set(err, MD_E_INTERNAL,
                            "md_store_prune: keep_runs %ld or keep_days %lld"
                            " out of range", keep_runs,
                            (long long)keep_days);

    if (exec_const(st, SQL_BEGIN, "start a transaction", err) != 0)
        return -1;
    if (keep_days > 0 &&
        prune_step(st, SQL_PRUNE_BY_AGE,
                   now - keep_days * MD_TICKS_PER_SECOND, &total, err) != 0)
        goto fail;
    if (keep_runs > 0 &&
        prune_step(st, SQL_PRUNE_BY_COUNT, keep_runs, &total, err) != 0)
        goto fail;
    if (exec_const(st, SQL_COMMIT, "commit the pruning", err) != 0)
        goto fail;
    if (deleted != NULL)
        *deleted = total;
    if (total > 0)
        md_debug("store: pruned %lld result rows", (long long)total);
    return 0;

fail:
    rollback(st);
    return -1;
}

/* ---- State for the diff -------------------------------------------------- */

static int parse_tracked_values(const char *text, struct md_entity *e)
{
    json_t *array;
    size_t i;
    json_t *value;

    if (text == NULL)
        return 0;
    array = json_loads(text, JSON_ALLOW_NUL, NULL);
    if (array == NULL || !json_is_array(array)) {
        json_decref(array);
        return -1;
    }
    e->tracked_values = calloc(json_array_size(array) + 1,
                               sizeof(*e->tracked_values));
    if (e->tracked_values == NULL) {
        json_decref(array);
        return -1;
    }
    json_array_foreach(array, i, value) {
        char *copy;

        if (!json_is_string(value))
            continue;
        copy = md_strdup(json_string_value(value));
        if (copy == NULL) {
            json_decref(array);
            return -1;
        }
        e->tracked_values[e->ntracked_values++] = copy;
    }
    json_decref(array);
    return 0;
}

/*
 * Read ENTITY_COLUMNS starting at column 0, then row_json (col 11),
 * when with_rule rule_id (col 12), and EXCLUSION_COLUMNS (col 13 on).
 * Returns -1 when out of memory or tracked_values is not a JSON array.
 */
static int read_entity(sqlite3_stmt *stmt, int with_rule,
                       struct md_entity *e)
{
    char *tracked = NULL;
    int rc;

    memset(e, 0, sizeof(*e));
    if (column_strdup(stmt, 0, &e->key) != 0 ||
        column_strdup(stmt, 1, &e->device_id) != 0 ||
        column_strdup(stmt, 2, &e->device_name) != 0 ||
        column_strdup(stmt, 10, &tracked) != 0 ||
        column_strdup(stmt, 11, &e->row_json) != 0 ||
        (with_rule && column_strdup(stmt, 12, &e->rule_id) != 0) ||
        column_strdup(stmt, 13, &e->excluded_by) != 0 ||
        column_strdup(stmt, 14, &e->exclusion_reason) != 0 ||
        column_strdup(stmt, 15, &e->exclusion_owner) != 0)
        goto fail;
    e->exclusion_expires = column_time(stmt, 16);
    e->first_run = sqlite3_column_int64(stmt, 3);
    e->first_seen = column_time(stmt, 4);
    e->last_run = sqlite3_column_int64(stmt, 5);
    e->last_seen = column_time(stmt, 6);
    e->telemetry_first_seen = column_time(stmt, 7);
    e->telemetry_last_seen = column_time(stmt, 8);
    e->runs_seen = sqlite3_column_int64(stmt, 9);
    rc = parse_tracked_values(tracked, e);
    free(tracked);
    tracked = NULL;     /* the fail: path frees it too */
    if (rc != 0)
        goto fail;
    if (e->key == NULL)
        goto fail;
    return 0;

fail:
    free(tracked);
    md_entity_clear(e);
    return -1;
}

/* Step stmt to the end, appending every row as an entity. */
static int read_entities(struct md_store *st, sqlite3_stmt *stmt,
                         int with_rule, struct md_entity **out, size_t *n,
                         struct md_error *err)
{
    struct md_entity *v = NULL;
    size_t count = 0;
    size_t cap = 0;
    int rc;

    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (grow((void **)&v, &cap, count, sizeof(*v)) != 0) {
            oom(err);
            goto fail;
        }
        if (read_entity(stmt, with_rule, &v[count]) != 0) {
            md_error_set(err, MD_E_STORE,
                         "store %s: cannot read an entity: out of memory, "
                         "or its tracked_values is not a JSON array",
                         st->path);
            goto fail;
        }
        count++;
    }
    if (rc != SQLITE_DONE) {
        db_error(st, st->db, "read the entities", err);
        goto fail;
    }
    *out = v;
    *n = count;
    return 0;

fail:
    md_entities_free(v, count);
    return -1;
}

static int load_last_ok(struct md_store *st, const char *rule_id,
                        struct md_rule_state *state, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, SQL_LAST_OK_RUN, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        state->last_ok_run = sqlite3_column_int64(stmt, 0);
        column_hash(stmt, 1, state->last_ok_query_hash);
    } else if (rc != SQLITE_DONE) {
        db_error(st, st->db, "read the last successful run", err);
        release(st, stmt);
        return -1;
    }
    release(st, stmt);
    return 0;
}

static int load_reference_run(struct md_store *st, const char *rule_id,
                              struct md_rule_state *state,
                              struct md_error *err)
{
    sqlite3_stmt *stmt;
    int64_t epoch_start;
    int64_t complete;
    int rc;

    if (prepare(st, SQL_QUERY_EPOCH_START, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    bind_static(stmt, 2, state->last_ok_query_hash);
    rc = query_int64(st, stmt, state->last_ok_run, &epoch_start,
                     "find the first run of the current query", err);
    release(st, stmt);
    if (rc != 0)
        return -1;

    if (prepare(st, SQL_LAST_COMPLETE_RUN, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    sqlite3_bind_int64(stmt, 2, epoch_start);
    rc = query_int64(st, stmt, epoch_start, &complete,
                     "find the last complete run", err);
    release(st, stmt);
    if (rc != 0)
        return -1;
    state->reference_run = complete;
    return 0;
}

int md_store_load_state(struct md_store *st, const char *rule_id,
                        struct md_rule_state *state, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    memset(state, 0, sizeof(*state));
    if (load_last_ok(st, rule_id, state, err) != 0)
        return -1;
    if (state->last_ok_run != 0 &&
        load_reference_run(st, rule_id, state, err) != 0)
        return -1;

    if (prepare(st, SQL_STATE_ENTITIES, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    sqlite3_bind_int64(stmt, 2, state->reference_run != 0
                                    ? state->reference_run : INT64_MAX);
    rc = read_entities(st, stmt, 0, &state->entities, &state->nentities,
                       err);
    release(st, stmt);
    if (rc != 0)
        md_rule_state_free(state);
    return rc;
}

/* ---- Reading side -------------------------------------------------------- */

static int read_run_columns(sqlite3_stmt *stmt, struct md_run *run)
{
    const char *status = (const char *)sqlite3_column_text(stmt, 8);
    const char *kind = (const char *)sqlite3_column_text(stmt, 9);

    run->id = sqlite3_column_int64(stmt, 0);
    if (column_strdup(stmt, 1, &run->rule_id) != 0 ||
        column_strdup(stmt, 2, &run->tenant) != 0 ||
        column_strdup(stmt, 3, &run->backend) != 0 ||
        column_strdup(stmt, 11, &run->request_id) != 0 ||
        column_strdup(stmt, 12, &run->error_message) != 0 ||
        column_strdup(stmt, 16, &run->exclusions_hash) != 0)
        return -1;
    run->period = sqlite3_column_int64(stmt, 4);
    run->due = column_time(stmt, 5);
    run->started = column_time(stmt, 6);
    run->ended = column_time(stmt, 7);
    if (run_status_from_name(status, &run->status) != 0)
        run->status = MD_RUN_FAILED;
    run->error_kind = kind != NULL ? md_err_kind_from_name(kind) : MD_OK;
    run->http_status = (long)sqlite3_column_int64(stmt, 10);
    run->row_count = sqlite3_column_int64(stmt, 13);
    run->truncated = sqlite3_column_int(stmt, 14);
    column_hash(stmt, 15, run->query_hash);
    run->baseline = sqlite3_column_int(stmt, 17);
    run->key_count = sqlite3_column_int64(stmt, 18);
    run->unchanged_count = sqlite3_column_int64(stmt, 19);
    return 0;
}

static int read_event_counts(struct md_store *st, struct md_run *run,
                             struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, SQL_RUN_EVENT_COUNTS, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, run->id);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(stmt, 0);
        enum md_event_kind kind;

        if (md_event_kind_from_name(name, &kind) == 0)
            run->event_counts[kind] = sqlite3_column_int64(stmt, 1);
    }
    release(st, stmt);
    if (rc != SQLITE_DONE)
        return db_error(st, st->db, "count the run's events", err);
    return 0;
}

int md_store_run_get(struct md_store *st, int64_t run_id,
                     struct md_run *run, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    memset(run, 0, sizeof(*run));
    if (prepare(st, SQL_RUN_GET, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, run_id);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) {
        release(st, stmt);
        return md_error_set(err, MD_E_USAGE,
                            "store %s: run %lld not found; `mdhunt status` "
                            "lists the latest runs", st->path,
                            (long long)run_id);
    }
    if (rc != SQLITE_ROW) {
        db_error(st, st->db, "read a run", err);
        release(st, stmt);
        return -1;
    }
    rc = read_run_columns(stmt, run);
    release(st, stmt);
    if (rc != 0) {
        md_run_clear(run);
        return oom(err);
    }
    if (read_event_counts(st, run, err) != 0) {
        md_run_clear(run);
        return -1;
    }
    return 0;
}

int md_store_last_ok_run(struct md_store *st, const char *rule_id,
                         int64_t *run_id, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, SQL_ANY_LAST_OK_RUN, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    rc = query_int64(st, stmt, 0, run_id, "find the last successful run",
                     err);
    release(st, stmt);
    return rc;
}

int md_store_last_due(struct md_store *st, const char *rule_id,
                      md_instant *due, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, SQL_LAST_DUE, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    rc = query_int64(st, stmt, MD_STORE_TIME_NONE, due,
                     "read the last due time", err);
    release(st, stmt);
    return rc;
}

static int read_rule(struct md_store *st, const char *rule_id,
                     struct md_rule_status *s, struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    if (prepare(st, SQL_RULE_GET, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) {
        release(st, stmt);
        return md_error_set(err, MD_E_USAGE,
                            "store %s: rule %s has never run; check the id "
                            "with `mdhunt status`", st->path, rule_id);
    }
    if (rc != SQLITE_ROW) {
        db_error(st, st->db, "read a rule", err);
        release(st, stmt);
        return -1;
    }
    if (column_strdup(stmt, 0, &s->rule_id) != 0 ||
        column_strdup(stmt, 1, &s->name) != 0 ||
        column_strdup(stmt, 2, &s->file) != 0) {
        release(st, stmt);
        return oom(err);
    }
    column_hash(stmt, 3, s->query_hash);
    release(st, stmt);
    return 0;
}

/* Load run_id into run when it is not 0. */
static int run_get_optional(struct md_store *st, int64_t run_id,
                            struct md_run *run, struct md_error *err)
{
    if (run_id == 0)
        return 0;
    return md_store_run_get(st, run_id, run, err);
}

int md_store_rule_status(struct md_store *st, const char *rule_id,
                         struct md_rule_status *status,
                         struct md_error *err)
{
    sqlite3_stmt *stmt;
    int64_t ids[3];
    int rc;

    memset(status, 0, sizeof(*status));
    if (read_rule(st, rule_id, status, err) != 0)
        goto fail;

    if (prepare(st, SQL_RULE_SUMMARY, &stmt, err) != 0)
        goto fail;
    bind_static(stmt, 1, rule_id);
    rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW) {
        db_error(st, st->db, "summarise the rule's runs", err);
        release(st, stmt);
        goto fail;
    }
    for (int i = 0; i < 3; i++)
        ids[i] = sqlite3_column_int64(stmt, i);
    status->consecutive_failures = sqlite3_column_int64(stmt, 3);
    status->entity_count = sqlite3_column_int64(stmt, 4);
    release(st, stmt);

    if (run_get_optional(st, ids[0], &status->last_run, err) != 0 ||
        run_get_optional(st, ids[1], &status->last_ok_run, err) != 0 ||
        run_get_optional(st, ids[2], &status->last_failed_run, err) != 0)
        goto fail;
    return 0;

fail:
    md_rule_status_clear(status);
    return -1;
}

/* Copy every rule id, in order. */
static int read_rule_ids(struct md_store *st, char ***out, size_t *n,
                         struct md_error *err)
{
    sqlite3_stmt *stmt;
    char **ids = NULL;
    size_t count = 0;
    size_t cap = 0;
    int rc;

    if (prepare(st, SQL_RULE_IDS, &stmt, err) != 0)
        return -1;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (grow((void **)&ids, &cap, count, sizeof(*ids)) != 0 ||
            column_strdup(stmt, 0, &ids[count]) != 0) {
            oom(err);
            goto fail;
        }
        count++;
    }
    if (rc != SQLITE_DONE) {
        db_error(st, st->db, "list the rules", err);
        goto fail;
    }
    release(st, stmt);
    *out = ids;
    *n = count;
    return 0;

fail:
    release(st, stmt);
    for (size_t i = 0; i < count; i++)
        free(ids[i]);
    free(ids);
    return -1;
}

int md_store_status_all(struct md_store *st, struct md_rule_status **out,
                        size_t *n, struct md_error *err)
{
    char **ids = NULL;
    size_t nids = 0;
    struct md_rule_status *v = NULL;
    size_t count = 0;
    int rc = -1;

    *out = NULL;
    *n = 0;
    if (read_rule_ids(st, &ids, &nids, err) != 0)
        return -1;
    if (nids > 0) {
        v = calloc(nids, sizeof(*v));
        if (v == NULL) {
            oom(err);
            goto out;
        }
    }
    for (; count < nids; count++) {
        if (md_store_rule_status(st, ids[count], &v[count], err) != 0)
            goto out;
    }
    *out = v;
    *n = count;
    v = NULL;
    rc = 0;

out:
    md_rule_statuses_free(v, count);
    for (size_t i = 0; i < nids; i++)
        free(ids[i]);
    free(ids);
    return rc;
}

int md_store_devices(struct md_store *st, const char *rule_id,
                     md_instant since, struct md_entity **out, size_t *n,
                     struct md_error *err)
{
    sqlite3_stmt *stmt;
    int rc;

    *out = NULL;
    *n = 0;
    if (prepare(st, SQL_DEVICES, &stmt, err) != 0)
        return -1;
    bind_static(stmt, 1, rule_id);
    bind_time(stmt, 2, since);
    rc = read_entities(st, stmt, 1, out, n, err);
    release(st, stmt);
    return rc;
}

static int read_event(sqlite3_stmt *stmt, struct md_event *ev)
{
    const char *kind = (const char *)sqlite3_column_text(stmt, 0);

    memset(ev, 0, sizeof(*ev));
    if (md_event_kind_from_name(kind, &ev->kind) != 0)
        return -1;
    if (column_strdup(stmt, 1, &ev->key) != 0 ||
        column_strdup(stmt, 2, &ev->row_json) != 0 ||
        column_strdup(stmt, 6, &ev->old_name) != 0 ||
        column_strdup(stmt, 7, &ev->new_name) != 0 ||
        column_strdup(stmt, 8, &ev->value) != 0 ||
        column_strdup(stmt, 9, &ev->exclusion_id) != 0 ||
        column_strdup(stmt, 10, &ev->exclusion_reason) != 0 ||
        column_strdup(stmt, 11, &ev->exclusion_owner) != 0) {
        md_event_clear(ev);
        return -1;
    }
    ev->exclusion_expires = column_time(stmt, 12);
    ev->first_excluded = sqlite3_column_int(stmt, 13);
    ev->first_seen = column_time(stmt, 3);
    ev->last_seen = column_time(stmt, 4);
    ev->days_away = sqlite3_column_int64(stmt, 5);
    return 0;
}

static int read_events(struct md_store *st, struct md_run_diff *d,
                       struct md_error *err)
{
    sqlite3_stmt *stmt;
    size_t cap = 0;
    int rc;

    if (prepare(st, SQL_RUN_EVENTS, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, d->run.id);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (grow((void **)&d->events, &cap, d->nevents,
                 sizeof(*d->events)) != 0) {
            release(st, stmt);
            return oom(err);
        }
        if (read_event(stmt, &d->events[d->nevents]) != 0) {
            release(st, stmt);
            return md_error_set(err, MD_E_STORE,
                                "store %s: cannot read event %zu of run "
                                "%lld: unknown kind, or out of memory",
                                st->path, d->nevents, (long long)d->run.id);
        }
        d->nevents++;
    }
    release(st, stmt);
    if (rc != SQLITE_DONE)
        return db_error(st, st->db, "read the run's events", err);
    return 0;
}

static int read_issues(struct md_store *st, struct md_run_diff *d,
                       struct md_error *err)
{
    sqlite3_stmt *stmt;
    size_t cap = 0;
    int rc;

    if (prepare(st, SQL_RUN_ISSUES, &stmt, err) != 0)
        return -1;
    sqlite3_bind_int64(stmt, 1, d->run.id);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct md_exclusion_issue *is;

        if (grow((void **)&d->exclusion_issues, &cap, d->nexclusion_issues,
                 sizeof(*d->exclusion_issues)) != 0) {
            release(st, stmt);
            return oom(err);
        }
        is = &d->exclusion_issues[d->nexclusion_issues];
        memset(is, 0, sizeof(*is));
        d->nexclusion_issues++;
        if (column_strdup(stmt, 0, &is->entry_id) != 0 ||
            column_strdup(stmt, 1, &is->message) != 0) {
            release(st, stmt);
            return oom(err);
        }
    }
    release(st, stmt);
    if (rc != SQLITE_DONE)
        return db_error(st, st->db, "read the run's exclusion issues", err);
    return 0;
}

int md_store_run_diff(struct md_store *st, int64_t run_id,
                      struct md_run_diff *out, struct md_error *err)
{
    struct md_rule_status rule;

    memset(out, 0, sizeof(*out));
    memset(&rule, 0, sizeof(rule));
    if (md_store_run_get(st, run_id, &out->run, err) != 0)
        return -1;
    if (read_rule(st, out->run.rule_id, &rule, err) != 0)
        goto fail;
    out->rule_name = rule.name;
    out->rule_file = rule.file;
    rule.name = NULL;
    rule.file = NULL;
    md_rule_status_clear(&rule);
    if (read_events(st, out, err) != 0 || read_issues(st, out, err) != 0)
        goto fail;
    return 0;

fail:
    md_rule_status_clear(&rule);
    md_run_diff_clear(out);
    return -1;
}

int md_store_exclusion_counts(struct md_store *st,
                              struct md_exclusion_count **out, size_t *n,
                              struct md_error *err)
{
    sqlite3_stmt *stmt;
    struct md_exclusion_count *v = NULL;
    size_t count = 0;
    size_t cap = 0;
    int rc;

    *out = NULL;
    *n = 0;
    if (prepare(st, SQL_EXCLUSION_COUNTS, &stmt, err) != 0)
        return -1;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        struct md_exclusion_count *c;

        if (grow((void **)&v, &cap, count, sizeof(*v)) != 0)
            goto fail_oom;
        c = &v[count];
        memset(c, 0, sizeof(*c));
        count++;
        if (column_strdup(stmt, 0, &c->rule_id) != 0 ||
            column_strdup(stmt, 1, &c->exclusion_id) != 0)
            goto fail_oom;
        c->run_id = sqlite3_column_int64(stmt, 2);
        c->devices = sqlite3_column_int64(stmt, 3);
    }
    release(st, stmt);
    if (rc != SQLITE_DONE) {
        md_exclusion_counts_free(v, count);
        return db_error(st, st->db, "count the excluded devices", err);
    }
    *out = v;
    *n = count;
    return 0;

fail_oom:
    release(st, stmt);
    md_exclusion_counts_free(v, count);
    return oom(err);
}
