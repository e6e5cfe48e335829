/*
 * Tests of the SQLite store: schema and migrations, WAL, one transaction
 * per run (including a process killed before the commit), interrupted
 * runs, retention, the outbox and the reading functions.
 */
#include "testutil.h"

#include <sys/stat.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mdhunt/diff.h"
#include "mdhunt/log.h"
#include "mdhunt/store.h"

#define DAY (86400 * MD_TICKS_PER_SECOND)
#define HOUR (3600 * MD_TICKS_PER_SECOND)
/* 2025-01-01T00:00:00Z */
#define BASE ((md_instant)1735689600 * MD_TICKS_PER_SECOND)

static const char HASH_A[] =
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct fixture {
    char dir[64];
    char path[128];
    struct md_store *st;
};

/* ---- Fixture ------------------------------------------------------------- */

static void open_store(struct fixture *fx, int flags)
{
    struct md_error err;

    md_error_clear(&err);
    if (md_store_open(fx->path, flags, &fx->st, &err) != 0)
        fail_msg("md_store_open: %s", err.message);
}

static void reopen_store(struct fixture *fx)
{
    md_store_close(fx->st);
    fx->st = NULL;
    open_store(fx, 0);
}

static int setup_dir(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));

    if (fx == NULL)
        return -1;
    strcpy(fx->dir, "/tmp/mdhunt-store-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof(fx->path), "%s/mdhunt.db", fx->dir);
    *state = fx;
    return 0;
}

static int setup_store(void **state)
{
    if (setup_dir(state) != 0)
        return -1;
    open_store(*state, 0);
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    static const char *const suffixes[] = { "", "-wal", "-shm",
                                            "-journal" };
    char file[160];

    md_store_close(fx->st);
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(file, sizeof(file), "%s%s", fx->path, suffixes[i]);
        unlink(file);
    }
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* ---- SQL helpers for checks ---------------------------------------------- */

static int64_t sql_int(sqlite3 *db, const char *sql, int64_t param)
{
    sqlite3_stmt *stmt;
    int64_t value = -1;

    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL),
                     SQLITE_OK);
    if (sqlite3_bind_parameter_count(stmt) > 0)
        sqlite3_bind_int64(stmt, 1, param);
    if (sqlite3_step(stmt) == SQLITE_ROW)
        value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return value;
}

/* The first column of the first row as text (static buffer). */
static const char *sql_text(sqlite3 *db, const char *sql)
{
    static char buf[256];
    sqlite3_stmt *stmt;

    buf[0] = '\0';
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL),
                     SQLITE_OK);
    if (sqlite3_step(stmt) == SQLITE_ROW &&
        sqlite3_column_text(stmt, 0) != NULL)
        snprintf(buf, sizeof(buf), "%s", sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    return buf;
}

static void sql_exec(const char *path, const char *sql)
{
    sqlite3 *db;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static int64_t file_int(const char *path, const char *sql)
{
    sqlite3 *db;
    int64_t value;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    value = sql_int(db, sql, 0);
    sqlite3_close(db);
    return value;
}

/* ---- Tables and runs ----------------------------------------------------- */

#define COLUMNS "DeviceId:String,DeviceName:String,Count:Int64"

static struct md_table *make_table(void)
{
    struct md_table *t = md_table_new();
    struct md_error err;

    md_error_clear(&err);
    assert_non_null(t);
    assert_int_equal(md_table_add_column(t, "DeviceId", "String", &err), 0);
    assert_int_equal(md_table_add_column(t, "DeviceName", "String", &err),
                     0);
    assert_int_equal(md_table_add_column(t, "Count", "Int64", &err), 0);
    return t;
}

/* Append a device row: id, name, count. */
static void add_device(struct md_table *t, const char *id, const char *name,
                       long count)
{
    struct md_cell *cells = md_table_add_row(t);
    struct md_error err;
    json_t *v[3];

    assert_non_null(cells);
    md_error_clear(&err);
    v[0] = id != NULL ? json_string(id) : json_null();
    v[1] = json_string(name);
    v[2] = json_integer(count);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(md_table_set_cell_json(t, &cells[i], i, v[i],
                                                &err), 0);
        json_decref(v[i]);
    }
}

static int64_t begin_run(struct fixture *fx, const char *rule_id,
                         md_instant started)
{
    struct md_run_start start;
    struct md_error err;
    int64_t run_id = 0;

    memset(&start, 0, sizeof(start));
    start.rule_id = rule_id;
    start.rule_name = "Remote tools";
    start.rule_file = "/etc/mdhunt/rules/remote.yaml";
    start.query = "DeviceProcessEvents | take 10";
    start.query_hash = HASH_A;
    start.tenant = "contoso.example";
    start.backend = "graph";
    start.period = 5 * 86400;
    start.due = started - 60 * MD_TICKS_PER_SECOND;
    start.started = started;
    md_error_clear(&err);
    if (md_store_run_begin(fx->st, &start, &run_id, &err) != 0)
        fail_msg("md_store_run_begin: %s", err.message);
    return run_id;
}

static struct md_diff_options options(const char *rule_id)
{
    struct md_diff_options o;

    memset(&o, 0, sizeof(o));
    o.rule_id = rule_id;
    o.realert_after = 30 * 86400;
    o.first_run = MD_FIRST_RUN_BASELINE;
    return o;
}

/* Begin and record a successful run of rule_id returning table. */
static int64_t ok_run(struct fixture *fx, const char *rule_id,
                      md_instant started, struct md_table *t,
                      enum md_send_when outbox_when, int64_t *outbox_id)
{
    struct md_diff_options o = options(rule_id);
    int64_t run_id = begin_run(fx, rule_id, started);
    struct md_error err;

    md_error_clear(&err);
    if (md_diff_record_run(fx->st, run_id, t, &o, started + HOUR,
                           outbox_when, NULL, outbox_id, &err) != 0)
        fail_msg("md_diff_record_run: %s", err.message);
    return run_id;
}

/* An ok run of rule_id with devices d1..dn (names PCi). */
static int64_t ok_run_devices(struct fixture *fx, const char *rule_id,
                              md_instant started, int first, int last)
{
    struct md_table *t = make_table();
    char id[16];
    char name[16];
    int64_t run_id;

    for (int i = first; i <= last; i++) {
        snprintf(id, sizeof(id), "d%d", i);
        snprintf(name, sizeof(name), "PC%d", i);
        add_device(t, id, name, i);
    }
    run_id = ok_run(fx, rule_id, started, t, MD_SEND_NEVER, NULL);
    md_table_free(t);
    return run_id;
}

static void failed_run(struct fixture *fx, const char *rule_id,
                       md_instant started, const char *message)
{
    int64_t run_id = begin_run(fx, rule_id, started);
    struct md_error run_err;
    struct md_error err;

    md_error_clear(&run_err);
    md_error_clear(&err);
    md_error_set(&run_err, MD_E_THROTTLED, "%s", message);
    run_err.http_status = 429;
    snprintf(run_err.request_id, sizeof(run_err.request_id), "req-42");
    assert_int_equal(md_store_run_finish_failed(fx->st, run_id,
                                                started + HOUR, &run_err,
                                                &err), 0);
}

/* ---- Schema -------------------------------------------------------------- */

static void test_open_creates_schema(void **state)
{
    struct fixture *fx = *state;
    static const char *const tables[] = {
        "rule", "query", "run", "run_row", "entity", "diff_event",
        "outbox", "outbox_run"
    };
    FILE *f = fopen(fx->path, "w");
    sqlite3 *db;

    /* An empty file is a version 0 database. */
    assert_non_null(f);
    fclose(f);
    open_store(fx, 0);
    db = md_store_handle(fx->st);

    assert_int_equal(sql_int(db, "PRAGMA user_version", 0),
                     MD_STORE_SCHEMA_VERSION);
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        sqlite3_stmt *stmt;

        assert_int_equal(sqlite3_prepare_v2(db,
                             "SELECT COUNT(*) FROM sqlite_master"
                             " WHERE type = 'table' AND name = ?1", -1,
                             &stmt, NULL), SQLITE_OK);
        sqlite3_bind_text(stmt, 1, tables[i], -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
        if (sqlite3_column_int(stmt, 0) != 1)
            fail_msg("table %s missing", tables[i]);
        sqlite3_finalize(stmt);
    }
}

static void test_open_enables_wal(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);

    assert_string_equal(sql_text(db, "PRAGMA journal_mode"), "wal");
    assert_int_equal(sql_int(db, "PRAGMA busy_timeout", 0),
                     MD_STORE_BUSY_TIMEOUT_MS);
    assert_int_equal(sql_int(db, "PRAGMA foreign_keys", 0), 1);
}

static void test_new_store_owner_only(void **state)
{
    struct fixture *fx = *state;
    char wal[1024];
    struct stat st;

    assert_int_equal(stat(fx->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(wal, sizeof(wal), "%s-wal", fx->path);
    assert_int_equal(stat(wal, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_wal_file_kept_after_close(void **state)
{
    struct fixture *fx = *state;
    char wal[160];
    struct md_store *ro;
    struct md_error err;

    md_store_close(fx->st);
    fx->st = NULL;
    snprintf(wal, sizeof(wal), "%s-wal", fx->path);
    md_error_clear(&err);

    assert_int_equal(access(wal, F_OK), 0);
    assert_int_equal(md_store_open(fx->path, MD_STORE_READ_ONLY, &ro, &err),
                     0);
    md_store_close(ro);
}

static void test_open_twice_keeps_data(void **state)
{
    struct fixture *fx = *state;
    struct md_entity *devices;
    size_t n;
    struct md_error err;

    ok_run_devices(fx, "R1", BASE, 1, 3);
    reopen_store(fx);
    md_error_clear(&err);

    assert_int_equal(md_store_devices(fx->st, NULL, MD_STORE_TIME_NONE,
                                      &devices, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(md_store_interrupted_at_open(fx->st), 0);
    md_entities_free(devices, n);
}

static void test_newer_schema_rejected(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    sql_exec(fx->path, "PRAGMA user_version = 7");
    md_error_clear(&err);

    assert_int_equal(md_store_open(fx->path, 0, &fx->st, &err), -1);
    assert_null(fx->st);
    assert_int_equal(err.kind, MD_E_STORE);
    assert_non_null(strstr(err.message, "newer mdhunt"));
    assert_non_null(strstr(err.message, fx->path));
    assert_int_equal(file_int(fx->path, "PRAGMA user_version"), 7);
}

/* A pretend history: version 1 knew devices by name only, version 2 adds
 * a column and fills it from the old rows. */
static const struct md_store_migration pretend_steps[] = {
    { 1, "CREATE TABLE device (name TEXT NOT NULL);"
         "PRAGMA user_version = 1;" },
    { 2, "ALTER TABLE device ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;"
         "UPDATE device SET runs = length(name);"
         "PRAGMA user_version = 2;" },
};

static void test_migration_keeps_old_rows(void **state)
{
    struct fixture *fx = *state;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_apply_migrations(fx->path, pretend_steps, 1,
                                               &err), 0);
    sql_exec(fx->path, "INSERT INTO device (name) VALUES ('pc1'),"
                       " ('laptop-22')");

    assert_int_equal(md_store_apply_migrations(fx->path, pretend_steps, 2,
                                               &err), 0);
    assert_int_equal(file_int(fx->path, "PRAGMA user_version"), 2);
    assert_int_equal(file_int(fx->path, "SELECT COUNT(*) FROM device"), 2);
    assert_int_equal(file_int(fx->path, "SELECT runs FROM device"
                                        " WHERE name = 'laptop-22'"), 9);
}

static void test_failed_migration_rolls_back(void **state)
{
    struct fixture *fx = *state;
    const struct md_store_migration steps[] = {
        pretend_steps[0],
        { 2, "CREATE TABLE half (a INTEGER);"
             "INSERT INTO missing_table VALUES (1);"
             "PRAGMA user_version = 2;" },
    };
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_apply_migrations(fx->path, steps, 2, &err),
                     -1);
    assert_int_equal(err.kind, MD_E_STORE);
    assert_non_null(strstr(err.message, "version 2"));
    assert_int_equal(file_int(fx->path, "PRAGMA user_version"), 1);
    assert_int_equal(file_int(fx->path, "SELECT COUNT(*) FROM sqlite_master"
                                        " WHERE name = 'half'"), 0);
}

static void test_migration_must_set_version(void **state)
{
    struct fixture *fx = *state;
    const struct md_store_migration steps[] = {
        { 1, "CREATE TABLE t (a INTEGER);" },
    };
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_apply_migrations(fx->path, steps, 1, &err),
                     -1);
    assert_int_equal(err.kind, MD_E_INTERNAL);
    assert_int_equal(file_int(fx->path, "PRAGMA user_version"), 0);
}

static void test_read_only_needs_store(void **state)
{
    struct fixture *fx = *state;
    struct md_store *st = NULL;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_open(fx->path, MD_STORE_READ_ONLY, &st, &err),
                     -1);
    assert_int_equal(err.kind, MD_E_STORE);
    assert_non_null(strstr(err.message, fx->path));
    assert_non_null(strstr(err.message, "not found"));

    sql_exec(fx->path, "CREATE TABLE unrelated (a INTEGER)");
    md_error_clear(&err);
    assert_int_equal(md_store_open(fx->path, MD_STORE_READ_ONLY, &st, &err),
                     -1);
    assert_non_null(strstr(err.message, "no mdhunt data"));
}

static void test_read_only_rejects_writes(void **state)
{
    struct fixture *fx = *state;
    struct md_store *ro;
    struct md_error err;
    struct md_run_start start;
    int64_t run_id;

    md_error_clear(&err);
    assert_int_equal(md_store_open(fx->path, MD_STORE_READ_ONLY, &ro, &err),
                     0);
    memset(&start, 0, sizeof(start));
    start.rule_id = "R1";
    start.query = "x";
    start.query_hash = HASH_A;
    start.backend = "graph";
    start.started = BASE;

    assert_int_equal(md_store_run_begin(ro, &start, &run_id, &err), -1);
    assert_int_equal(run_id, 0);
    md_store_close(ro);
}

static void test_reader_sees_only_commits(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    struct md_store *ro;
    struct md_rule_status *v;
    size_t n;
    struct md_error err;

    ok_run_devices(fx, "R1", BASE, 1, 2);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE;"
                                      " DELETE FROM diff_event;"
                                      " UPDATE rule SET name = 'changed'",
                                  NULL, NULL, NULL), SQLITE_OK);
    md_error_clear(&err);

    assert_int_equal(md_store_open(fx->path, MD_STORE_READ_ONLY, &ro, &err),
                     0);
    assert_int_equal(md_store_status_all(ro, &v, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].name, "Remote tools");
    assert_int_equal(v[0].last_ok_run.event_counts[MD_EVENT_BASELINE], 2);
    md_rule_statuses_free(v, n);
    md_store_close(ro);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL),
                     SQLITE_OK);
}

/* ---- Runs ---------------------------------------------------------------- */

static void test_run_begin_is_running(void **state)
{
    struct fixture *fx = *state;
    int64_t run_id = begin_run(fx, "R1", BASE);
    struct md_run run;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_run_get(fx->st, run_id, &run, &err), 0);
    assert_int_equal(run.status, MD_RUN_RUNNING);
    assert_string_equal(run.rule_id, "R1");
    assert_string_equal(run.tenant, "contoso.example");
    assert_string_equal(run.query_hash, HASH_A);
    assert_true(run.started == BASE);
    assert_true(run.ended == MD_STORE_TIME_NONE);
    assert_int_equal(run.period, 5 * 86400);
    assert_null(run.exclusions_hash);
    md_run_clear(&run);
}

static void test_run_ok_writes_everything(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    struct md_table *t = make_table();
    int64_t run_id;
    struct md_run run;
    struct md_error err;

    add_device(t, "d1", "PC1", 1);
    add_device(t, "d2", "PC2", 2);
    add_device(t, NULL, "PC3", 3);
    run_id = ok_run(fx, "R1", BASE, t, MD_SEND_NEVER, NULL);
    md_error_clear(&err);

    assert_int_equal(md_store_run_get(fx->st, run_id, &run, &err), 0);
    assert_int_equal(run.status, MD_RUN_OK);
    assert_int_equal(run.row_count, 3);
    assert_int_equal(run.key_count, 2);
    assert_true(run.baseline);
    assert_true(run.ended == BASE + HOUR);
    assert_int_equal(run.event_counts[MD_EVENT_BASELINE], 2);
    assert_int_equal(run.event_counts[MD_EVENT_EMPTY_KEY], 1);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM run_row"
                                 " WHERE run_id = ?1", run_id), 3);
    assert_string_equal(sql_text(db, "SELECT row_json FROM run_row"
                                     " WHERE idx = 0"),
                        "{\"DeviceId\":\"d1\",\"DeviceName\":\"PC1\","
                        "\"Count\":1}");
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM entity", 0), 2);
    md_run_clear(&run);
    md_table_free(t);
}

static void test_run_ok_keeps_foreign_keys(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    struct md_table *t = make_table();

    add_device(t, "d1", "PC1", 1);
    ok_run(fx, "R1", BASE, t, MD_SEND_NEVER, NULL);
    ok_run(fx, "R1", BASE + DAY, t, MD_SEND_NEVER, NULL);

    assert_int_equal(sql_int(db, "PRAGMA foreign_keys", 0), 1);
    assert_int_equal(sql_int(db, "SELECT runs_seen FROM entity", 0), 2);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM entity", 0), 1);
    md_table_free(t);
}

static void test_run_failure_changes_nothing(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    struct md_rule_status status;
    struct md_error err;

    ok_run_devices(fx, "R1", BASE, 1, 2);
    failed_run(fx, "R1", BASE + DAY, "429 Too Many Requests");
    md_error_clear(&err);

    assert_int_equal(md_store_rule_status(fx->st, "R1", &status, &err), 0);
    assert_int_equal(status.last_run.status, MD_RUN_FAILED);
    assert_int_equal(status.last_run.error_kind, MD_E_THROTTLED);
    assert_int_equal(status.last_run.http_status, 429);
    assert_string_equal(status.last_run.request_id, "req-42");
    assert_string_equal(status.last_run.error_message,
                        "429 Too Many Requests");
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM entity"
                                 " WHERE last_run = ?1",
                             status.last_ok_run.id), 2);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM diff_event"
                                 " WHERE run_id = ?1",
                             status.last_run.id), 0);
    md_rule_status_clear(&status);
}

static void test_interrupted_error_status(void **state)
{
    struct fixture *fx = *state;
    int64_t run_id = begin_run(fx, "R1", BASE);
    struct md_error run_err;
    struct md_error err;
    struct md_run run;

    md_error_clear(&run_err);
    md_error_clear(&err);
    md_error_set(&run_err, MD_E_INTERRUPTED, "stopped by SIGTERM");
    assert_int_equal(md_store_run_finish_failed(fx->st, run_id, BASE + HOUR,
                                                &run_err, &err), 0);

    assert_int_equal(md_store_run_get(fx->st, run_id, &run, &err), 0);
    assert_int_equal(run.status, MD_RUN_INTERRUPTED);
    assert_int_equal(run.error_kind, MD_E_INTERRUPTED);
    md_run_clear(&run);
}

static void test_finished_run_not_finished_again(void **state)
{
    struct fixture *fx = *state;
    int64_t run_id = ok_run_devices(fx, "R1", BASE, 1, 1);
    struct md_run_finish fin;
    struct md_error run_err;
    struct md_error err;

    memset(&fin, 0, sizeof(fin));
    fin.ended = BASE + DAY;
    md_error_clear(&err);
    md_error_clear(&run_err);

    assert_int_equal(md_store_run_finish_ok(fx->st, run_id, &fin, NULL,
                                            &err), -1);
    assert_int_equal(err.kind, MD_E_STORE);
    assert_non_null(strstr(err.message, "not running"));
    md_error_set(&run_err, MD_E_NETWORK, "late");
    assert_int_equal(md_store_run_finish_failed(fx->st, run_id, BASE + DAY,
                                                &run_err, &err), -1);
}

static void test_unfinished_run_interrupted(void **state)
{
    struct fixture *fx = *state;
    int64_t run_id = begin_run(fx, "R1", BASE);
    struct md_run run;
    struct md_error err;

    reopen_store(fx);
    md_error_clear(&err);

    assert_int_equal(md_store_interrupted_at_open(fx->st), 1);
    assert_int_equal(md_store_run_get(fx->st, run_id, &run, &err), 0);
    assert_int_equal(run.status, MD_RUN_INTERRUPTED);
    assert_int_equal(run.error_kind, MD_E_INTERRUPTED);
    assert_true(run.ended == MD_STORE_TIME_NONE);
    assert_non_null(strstr(run.error_message, "ended before"));
    md_run_clear(&run);
}

/* The commit (counted from 1) at which the child process exits. */
static int exit_at_commit;
static int commits_seen;

/* Exit the process from inside SQLite's commit, as a kill would. */
static int exit_in_commit(void *arg)
{
    (void)arg;
    if (++commits_seen == exit_at_commit)
        _exit(0);
    return 0;
}

/*
 * In a child process: record a run of rule_id returning 500 devices, and
 * exit inside commit number `commit` after the run began.  Exits with 4
 * when the run was recorded before that commit came.
 */
static void killed_child(struct fixture *fx, const char *rule_id,
                         int commit)
{
    struct md_diff_options o = options(rule_id);
    struct md_table *t = make_table();
    struct md_store *st;
    struct md_error err;
    int64_t run_id;
    int rc;

    md_error_clear(&err);
    if (md_store_open(fx->path, 0, &st, &err) != 0)
        _exit(2);
    fx->st = st;
    run_id = begin_run(fx, rule_id, BASE + DAY);
    for (int i = 0; i < 500; i++) {
        char id[16];

        snprintf(id, sizeof(id), "k%d", i);
        add_device(t, id, "host", i);
    }
    exit_at_commit = commit;
    sqlite3_commit_hook(md_store_handle(st), exit_in_commit, NULL);
    rc = md_diff_record_run(st, run_id, t, &o, BASE + DAY + HOUR,
                            MD_SEND_ALWAYS, NULL, NULL, &err);
    _exit(rc == 0 ? 4 : 5);
}

static void test_kill_before_commit_leaves_nothing(void **state)
{
    struct fixture *fx = *state;
    static const char *const rules[] = { "K1", "K2", "K3" };
    sqlite3 *db;

    ok_run_devices(fx, "R1", BASE, 1, 2);

    /* A run written in more than one transaction would leave part of
     * itself behind when the process dies at its second commit. */
    for (int k = 1; k <= 3; k++) {
        const char *rule = rules[k - 1];
        int64_t run_id;
        pid_t pid;
        int status;

        md_store_close(fx->st);
        fx->st = NULL;
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            killed_child(fx, rule, k);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));

        open_store(fx, 0);
        db = md_store_handle(fx->st);
        assert_string_equal(sql_text(db, "PRAGMA integrity_check"), "ok");
        run_id = sql_int(db, "SELECT MAX(id) FROM run", 0);
        if (WEXITSTATUS(status) == 4) {
            assert_int_equal(md_store_interrupted_at_open(fx->st), 0);
            assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM run_row"
                                         " WHERE run_id = ?1", run_id),
                             500);
            continue;
        }
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_int_equal(md_store_interrupted_at_open(fx->st), 1);
        assert_string_equal(sql_text(db, "SELECT status FROM run"
                                         " ORDER BY id DESC"),
                            "interrupted");
        assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM run_row"
                                     " WHERE run_id = ?1", run_id), 0);
        assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM diff_event"
                                     " WHERE run_id = ?1", run_id), 0);
        assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM outbox_run"
                                     " WHERE run_id = ?1", run_id), 0);
        assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM entity", 0), 2);
    }
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM outbox", 0), 2);
}

/* ---- Retention and the outbox -------------------------------------------- */

static void test_prune_keeps_entities_and_events(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    int64_t deleted;
    struct md_error err;

    for (int day = 0; day < 5; day++)
        ok_run_devices(fx, "R1", BASE + day * DAY, 1, 2 + day);
    ok_run_devices(fx, "R2", BASE, 1, 1);
    md_error_clear(&err);

    assert_int_equal(md_store_prune(fx->st, BASE + 5 * DAY, 2, 0, &deleted,
                                    &err), 0);
    assert_int_equal(deleted, 2 + 3 + 4);
    assert_int_equal(sql_int(db, "SELECT COUNT(DISTINCT run_id)"
                                 " FROM run_row", 0), 3);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM run", 0), 6);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM entity", 0), 7);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM diff_event", 0),
                     2 + 1 + 1 + 1 + 1 + 1);

    assert_int_equal(md_store_prune(fx->st, BASE + 5 * DAY, 0, 2 * 86400,
                                    &deleted, &err), 0);
    assert_int_equal(deleted, 1);
    assert_int_equal(sql_int(db, "SELECT MIN(run_id) FROM run_row", 0), 4);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM entity", 0), 7);
}

static void test_outbox_item_with_run(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    struct md_table *t = make_table();
    int64_t run_id;
    int64_t item;

    add_device(t, "d1", "PC1", 1);
    run_id = ok_run(fx, "R1", BASE, t, MD_SEND_ALWAYS, &item);

    assert_true(item > 0);
    assert_string_equal(sql_text(db, "SELECT state FROM outbox"), "pending");
    assert_int_equal(sql_int(db, "SELECT run_id FROM outbox_run"
                                 " WHERE outbox_id = ?1", item), run_id);
    assert_int_equal(sql_int(db, "SELECT next_attempt FROM outbox", 0),
                     BASE + HOUR);
    md_table_free(t);
}

static void test_outbox_only_for_news(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    struct md_table *t = make_table();
    int64_t item = -1;

    add_device(t, "d1", "PC1", 1);
    ok_run(fx, "R1", BASE, t, MD_SEND_NEW, &item);
    assert_true(item > 0);
    ok_run(fx, "R1", BASE + DAY, t, MD_SEND_NEW, &item);

    assert_int_equal(item, 0);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM outbox", 0), 1);
    md_table_free(t);
}

static void test_outbox_add_covers_runs(void **state)
{
    struct fixture *fx = *state;
    sqlite3 *db = md_store_handle(fx->st);
    int64_t runs[2];
    int64_t item;
    struct md_error err;

    runs[0] = ok_run_devices(fx, "R1", BASE, 1, 1);
    runs[1] = ok_run_devices(fx, "R2", BASE, 1, 1);
    md_error_clear(&err);

    assert_int_equal(md_store_outbox_add(fx->st, BASE + DAY, runs, 2, &item,
                                         &err), 0);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM outbox_run"
                                 " WHERE outbox_id = ?1", item), 2);
    runs[1] = 999;
    assert_int_equal(md_store_outbox_add(fx->st, BASE + DAY, runs, 2, &item,
                                         &err), -1);
    assert_int_equal(sql_int(db, "SELECT COUNT(*) FROM outbox", 0), 1);
}

/* ---- Reading side -------------------------------------------------------- */

static void test_status_counts_failures(void **state)
{
    struct fixture *fx = *state;
    struct md_rule_status status;
    struct md_error err;

    failed_run(fx, "R1", BASE - DAY, "first failure");
    ok_run_devices(fx, "R1", BASE, 1, 2);
    ok_run_devices(fx, "R1", BASE + DAY, 2, 4);
    failed_run(fx, "R1", BASE + 2 * DAY, "timed out");
    failed_run(fx, "R1", BASE + 3 * DAY, "429 Too Many Requests");
    md_error_clear(&err);

    assert_int_equal(md_store_rule_status(fx->st, "R1", &status, &err), 0);
    assert_string_equal(status.name, "Remote tools");
    assert_int_equal(status.consecutive_failures, 2);
    assert_int_equal(status.last_run.status, MD_RUN_FAILED);
    assert_string_equal(status.last_failed_run.error_message,
                        "429 Too Many Requests");
    assert_int_equal(status.last_ok_run.id, 3);
    assert_int_equal(status.last_ok_run.row_count, 3);
    assert_int_equal(status.last_ok_run.event_counts[MD_EVENT_NEW], 2);
    assert_int_equal(status.last_ok_run.event_counts[MD_EVENT_GONE], 1);
    assert_int_equal(status.entity_count, 4);
    md_rule_status_clear(&status);
}

static void test_status_unknown_rule(void **state)
{
    struct fixture *fx = *state;
    struct md_rule_status status;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_rule_status(fx->st, "nope", &status, &err),
                     -1);
    assert_int_equal(err.kind, MD_E_USAGE);
    assert_non_null(strstr(err.message, "nope"));
}

static void test_last_due_and_last_ok(void **state)
{
    struct fixture *fx = *state;
    md_instant due;
    int64_t run_id;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_last_due(fx->st, "R1", &due, &err), 0);
    assert_true(due == MD_STORE_TIME_NONE);
    assert_int_equal(md_store_last_ok_run(fx->st, "R1", &run_id, &err), 0);
    assert_int_equal(run_id, 0);

    ok_run_devices(fx, "R1", BASE, 1, 1);
    failed_run(fx, "R1", BASE + DAY, "x");
    assert_int_equal(md_store_last_due(fx->st, "R1", &due, &err), 0);
    assert_true(due == BASE + DAY - 60 * MD_TICKS_PER_SECOND);
    assert_int_equal(md_store_last_ok_run(fx->st, "R1", &run_id, &err), 0);
    assert_int_equal(run_id, 1);
    assert_int_equal(md_store_last_ok_run(fx->st, NULL, &run_id, &err), 0);
    assert_int_equal(run_id, 1);
}

static void test_devices_filter_rule_and_since(void **state)
{
    struct fixture *fx = *state;
    struct md_entity *v;
    size_t n;
    struct md_error err;

    ok_run_devices(fx, "R1", BASE, 1, 3);
    ok_run_devices(fx, "R1", BASE + 10 * DAY, 3, 3);
    ok_run_devices(fx, "R2", BASE, 7, 8);
    md_error_clear(&err);

    assert_int_equal(md_store_devices(fx->st, NULL, MD_STORE_TIME_NONE, &v,
                                      &n, &err), 0);
    assert_int_equal(n, 5);
    md_entities_free(v, n);

    assert_int_equal(md_store_devices(fx->st, "R2", MD_STORE_TIME_NONE, &v,
                                      &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].rule_id, "R2");
    assert_string_equal(v[0].key, "d7");
    md_entities_free(v, n);

    assert_int_equal(md_store_devices(fx->st, "R1", BASE + 5 * DAY, &v, &n,
                                      &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].key, "d3");
    assert_string_equal(v[0].device_name, "PC3");
    assert_true(v[0].first_seen == BASE);
    assert_true(v[0].last_seen == BASE + 10 * DAY);
    assert_int_equal(v[0].runs_seen, 2);
    md_entities_free(v, n);
}

static void test_state_reference_run(void **state)
{
    struct fixture *fx = *state;
    struct md_rule_state s;
    struct md_table *t = make_table();
    struct md_error err;

    ok_run_devices(fx, "R1", BASE, 1, 3);
    add_device(t, "d1", "PC1", 1);
    t->truncated = 1;
    ok_run(fx, "R1", BASE + DAY, t, MD_SEND_NEVER, NULL);
    md_error_clear(&err);

    assert_int_equal(md_store_load_state(fx->st, "R1", &s, &err), 0);
    assert_int_equal(s.last_ok_run, 2);
    assert_int_equal(s.reference_run, 1);
    assert_string_equal(s.last_ok_query_hash, HASH_A);
    assert_int_equal(s.nentities, 3);
    assert_non_null(s.entities[2].row_json);
    md_rule_state_free(&s);
    md_table_free(t);
}

static void test_diff_json_from_store(void **state)
{
    struct fixture *fx = *state;
    struct md_run_diff rd;
    struct md_error err;
    int64_t run_id;
    json_t *doc;
    json_t *row;

    ok_run_devices(fx, "R1", BASE, 1, 2);
    run_id = ok_run_devices(fx, "R1", BASE + DAY, 2, 3);
    md_error_clear(&err);

    assert_int_equal(md_store_run_diff(fx->st, run_id, &rd, &err), 0);
    assert_string_equal(rd.rule_name, "Remote tools");
    doc = md_diff_json(&rd, &err);
    assert_non_null(doc);
    assert_true(json_is_false(json_object_get(doc, "baseline")));
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(doc, "run"), "status")), "ok");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(doc, "run"), "rows")), 2);
    assert_int_equal(json_integer_value(json_object_get(doc, "unchanged")),
                     1);
    assert_int_equal(json_array_size(json_object_get(doc, "new")), 1);
    row = json_array_get(json_object_get(doc, "new"), 0);
    assert_string_equal(json_string_value(json_object_get(row,
                                                          "DeviceName")),
                        "PC3");
    assert_int_equal(json_integer_value(json_object_get(row, "Count")), 3);
    assert_string_equal(json_string_value(json_object_get(
                            row, "mdhunt_first_seen")),
                        "2025-01-02T00:00:00.0000000Z");
    assert_int_equal(json_array_size(json_object_get(doc, "gone")), 1);
    row = json_array_get(json_object_get(doc, "gone"), 0);
    assert_string_equal(json_string_value(json_object_get(row, "DeviceId")),
                        "d1");
    assert_string_equal(json_string_value(json_object_get(
                            row, "mdhunt_last_seen")),
                        "2025-01-01T00:00:00.0000000Z");
    json_decref(doc);
    md_run_diff_clear(&rd);
}

static void test_run_diff_unknown_run(void **state)
{
    struct fixture *fx = *state;
    struct md_run_diff rd;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_store_run_diff(fx->st, 42, &rd, &err), -1);
    assert_int_equal(err.kind, MD_E_USAGE);
    assert_non_null(strstr(err.message, "run 42 not found"));
}

#define STORE_TEST(f) cmocka_unit_test_setup_teardown(f, setup_store, teardown)
#define DIR_TEST(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        DIR_TEST(test_open_creates_schema),
        STORE_TEST(test_open_enables_wal),
        STORE_TEST(test_new_store_owner_only),
        STORE_TEST(test_wal_file_kept_after_close),
        STORE_TEST(test_open_twice_keeps_data),
        DIR_TEST(test_newer_schema_rejected),
        DIR_TEST(test_migration_keeps_old_rows),
        DIR_TEST(test_failed_migration_rolls_back),
        DIR_TEST(test_migration_must_set_version),
        DIR_TEST(test_read_only_needs_store),
        STORE_TEST(test_read_only_rejects_writes),
        STORE_TEST(test_reader_sees_only_commits),
        STORE_TEST(test_run_begin_is_running),
        STORE_TEST(test_run_ok_writes_everything),
        STORE_TEST(test_run_ok_keeps_foreign_keys),
        STORE_TEST(test_run_failure_changes_nothing),
        STORE_TEST(test_interrupted_error_status),
        STORE_TEST(test_finished_run_not_finished_again),
        STORE_TEST(test_unfinished_run_interrupted),
        STORE_TEST(test_kill_before_commit_leaves_nothing),
        STORE_TEST(test_prune_keeps_entities_and_events),
        STORE_TEST(test_outbox_item_with_run),
        STORE_TEST(test_outbox_only_for_news),
        STORE_TEST(test_outbox_add_covers_runs),
        STORE_TEST(test_status_counts_failures),
        STORE_TEST(test_status_unknown_rule),
        STORE_TEST(test_last_due_and_last_ok),
        STORE_TEST(test_devices_filter_rule_and_since),
        STORE_TEST(test_state_reference_run),
        STORE_TEST(test_diff_json_from_store),
        STORE_TEST(test_run_diff_unknown_run),
    };

    md_log_set_level(MD_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
