/*
 * Tests of the diff: keys, merging, every event kind, the JSON document,
 * and a long simulated history checked against an independent model.
 */
#include "testutil.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/buf.h"
#include "mdhunt/diff.h"
#include "mdhunt/exclusions.h"
#include "mdhunt/log.h"
#include "mdhunt/store.h"

#define DAY (86400 * MD_TICKS_PER_SECOND)
#define HOUR (3600 * MD_TICKS_PER_SECOND)
/* 2025-01-01T00:00:00Z */
#define BASE ((md_instant)1735689600 * MD_TICKS_PER_SECOND)

static const char HASH_A[] =
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char HASH_B[] =
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/* ---- Building tables ----------------------------------------------------- */

/* A table from "Name:Type,Name:Type" with service type names. */
static struct md_table *make_table(const char *spec)
{
    struct md_table *t = md_table_new();
    char *copy = strdup(spec);
    char *save = NULL;
    struct md_error err;

    assert_non_null(t);
    assert_non_null(copy);
    md_error_clear(&err);
    for (char *col = strtok_r(copy, ",", &save); col != NULL;
         col = strtok_r(NULL, ",", &save)) {
        char *type = strchr(col, ':');

        assert_non_null(type);
        *type++ = '\0';
        assert_int_equal(md_table_add_column(t, col, type, &err), 0);
    }
    free(copy);
    return t;
}

/* Append a row given as a JSON array with one value per column. */
static void add_row(struct md_table *t, const char *json)
{
    json_error_t jerr;
    json_t *values = json_loads(json, 0, &jerr);
    struct md_cell *cells;
    struct md_error err;

    assert_non_null(values);
    assert_int_equal(json_array_size(values), t->ncolumns);
    cells = md_table_add_row(t);
    assert_non_null(cells);
    md_error_clear(&err);
    for (size_t i = 0; i < t->ncolumns; i++)
        assert_int_equal(md_table_set_cell_json(t, &cells[i], i,
                                                json_array_get(values, i),
                                                &err), 0);
    json_decref(values);
}

/* ---- Previous state ------------------------------------------------------ */

static void add_prev(struct md_rule_state *s, const char *key,
                     const char *device_id, const char *device_name,
                     int64_t last_run, md_instant last_seen)
{
    struct md_entity *e;

    s->entities = realloc(s->entities,
                          (s->nentities + 1) * sizeof(*s->entities));
    assert_non_null(s->entities);
    e = &s->entities[s->nentities++];
    memset(e, 0, sizeof(*e));
    e->key = strdup(key);
    e->device_id = device_id != NULL ? strdup(device_id) : NULL;
    e->device_name = device_name != NULL ? strdup(device_name) : NULL;
    e->first_run = 1;
    e->first_seen = BASE;
    e->last_run = last_run;
    e->last_seen = last_seen;
    e->telemetry_first_seen = MD_STORE_TIME_NONE;
    e->telemetry_last_seen = MD_STORE_TIME_NONE;
    e->runs_seen = 1;
    e->row_json = strdup("{\"DeviceId\":\"old\"}");
}

static void add_prev_value(struct md_rule_state *s, const char *value)
{
    struct md_entity *e = &s->entities[s->nentities - 1];

    e->tracked_values = realloc(e->tracked_values,
                                (e->ntracked_values + 1) * sizeof(char *));
    assert_non_null(e->tracked_values);
    e->tracked_values[e->ntracked_values++] = strdup(value);
}

/* A state after one successful run (id 1) of query HASH_A. */
static void known_state(struct md_rule_state *s)
{
    memset(s, 0, sizeof(*s));
    s->last_ok_run = 1;
    s->reference_run = 1;
    strcpy(s->last_ok_query_hash, HASH_A);
}

static struct md_run make_run(int64_t id, md_instant started,
                              const char *hash)
{
    struct md_run run;

    memset(&run, 0, sizeof(run));
    run.id = id;
    run.started = started;
    run.status = MD_RUN_RUNNING;
    strcpy(run.query_hash, hash);
    return run;
}

static struct md_diff_options make_options(void)
{
    struct md_diff_options o;

    memset(&o, 0, sizeof(o));
    o.rule_id = "R1";
    o.realert_after = 30 * 86400;
    o.first_run = MD_FIRST_RUN_BASELINE;
    return o;
}

static const struct md_event *find_event(const struct md_diff *d,
                                         enum md_event_kind kind,
                                         const char *key)
{
    for (size_t i = 0; i < d->nevents; i++) {
        if (d->events[i].kind == kind && strcmp(d->events[i].key, key) == 0)
            return &d->events[i];
    }
    return NULL;
}

static const struct md_entity *find_entity(const struct md_diff *d,
                                           const char *key)
{
    for (size_t i = 0; i < d->nentities; i++) {
        if (strcmp(d->entities[i].key, key) == 0)
            return &d->entities[i];
    }
    return NULL;
}

/* Run md_diff_compute() on a table against a state; fails the test when
 * the diff fails. */
static void compute(const struct md_diff_options *o, struct md_table *t,
                    const struct md_rule_state *prev, md_instant started,
                    const char *hash, struct md_diff *d)
{
    struct md_run run = make_run(2, started, hash);
    struct md_error err;

    md_error_clear(&err);
    if (md_diff_compute(o, &run, t, prev, d, &err) != 0)
        fail_msg("md_diff_compute: %s", err.message);
}

#define DEVICE_COLUMNS "DeviceId:String,DeviceName:String"

/* ---- Keys ---------------------------------------------------------------- */

static void test_key_uses_device_id(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    memset(&prev, 0, sizeof(prev));
    add_row(t, "[\"Dev-1\", \"PC1\"]");
    compute(&o, t, &prev, BASE, HASH_A, &d);

    assert_int_equal(d.nentities, 1);
    assert_string_equal(d.entities[0].key, "Dev-1");
    assert_string_equal(d.entities[0].device_name, "PC1");
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_key_uses_host_mapping(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table("Computer:String,User:String");
    struct md_field_mapping field = { "HostName", "Computer" };
    struct md_entity_mapping mapping = { "Host", &field, 1 };
    struct md_rule rule;
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    memset(&rule, 0, sizeof(rule));
    rule.mappings = &mapping;
    rule.nmappings = 1;
    o.rule = &rule;
    memset(&prev, 0, sizeof(prev));
    add_row(t, "[\"WS-Finance.corp\", \"alice\"]");
    compute(&o, t, &prev, BASE, HASH_A, &d);

    assert_int_equal(d.nentities, 1);
    assert_string_equal(d.entities[0].key, "ws-finance.corp");
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_key_uses_config_columns(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table("AccountName:String,DeviceName:String");
    char *columns[] = { "AccountName", "DeviceName", NULL };
    struct md_rule_config rc = { "R1", columns, NULL, 1 };
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    o.rule_config = &rc;
    memset(&prev, 0, sizeof(prev));
    add_row(t, "[\"Alice\", \"PC1\"]");
    compute(&o, t, &prev, BASE, HASH_A, &d);

    assert_int_equal(d.nentities, 1);
    assert_string_equal(d.entities[0].key, "[\"Alice\",\"pc1\"]");
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_key_missing_is_rule_error(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table("FileName:String,Count:Int64");
    struct md_rule_state prev;
    struct md_run run = make_run(1, BASE, HASH_A);
    struct md_diff d;
    struct md_error err;

    (void)state;
    memset(&prev, 0, sizeof(prev));
    md_error_clear(&err);
    add_row(t, "[\"x.exe\", 1]");

    assert_int_equal(md_diff_compute(&o, &run, t, &prev, &d, &err), -1);
    assert_int_equal(err.kind, MD_E_RULE);
    assert_non_null(strstr(err.message, "[rule \"R1\"]"));
    assert_non_null(strstr(err.message, "key = COLUMN"));
    assert_non_null(strstr(err.message, "FileName, Count"));
    md_table_free(t);
}

static void test_config_key_column_missing(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table("AccountName:String");
    char *columns[] = { "UserPrincipal", NULL };
    struct md_rule_config rc = { "R1", columns, NULL, 1 };
    struct md_rule_state prev;
    struct md_run run = make_run(1, BASE, HASH_A);
    struct md_diff d;
    struct md_error err;

    (void)state;
    o.rule_config = &rc;
    memset(&prev, 0, sizeof(prev));
    md_error_clear(&err);
    add_row(t, "[\"alice\"]");

    assert_int_equal(md_diff_compute(&o, &run, t, &prev, &d, &err), -1);
    assert_int_equal(err.kind, MD_E_RULE);
    assert_non_null(strstr(err.message, "UserPrincipal"));
    md_table_free(t);
}

static void test_track_column_missing(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_config rc = { "R1", NULL, "ProcessName", 1 };
    struct md_rule_state prev;
    struct md_run run = make_run(1, BASE, HASH_A);
    struct md_diff d;
    struct md_error err;

    (void)state;
    o.rule_config = &rc;
    memset(&prev, 0, sizeof(prev));
    md_error_clear(&err);
    add_row(t, "[\"d1\", \"PC1\"]");

    assert_int_equal(md_diff_compute(&o, &run, t, &prev, &d, &err), -1);
    assert_int_equal(err.kind, MD_E_RULE);
    assert_non_null(strstr(err.message, "ProcessName"));
    md_table_free(t);
}

static void test_empty_key_reported(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_row(t, "[null, \"PC1\"]");
    add_row(t, "[\"\", \"PC2\"]");
    add_row(t, "[\"d3\", \"PC3\"]");
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.event_counts[MD_EVENT_EMPTY_KEY], 2);
    assert_int_equal(d.key_count, 1);
    assert_int_equal(d.events[0].kind, MD_EVENT_EMPTY_KEY);
    assert_string_equal(d.events[0].key, "");
    assert_string_equal(d.events[0].row_json,
                        "{\"DeviceId\":null,\"DeviceName\":\"PC1\"}");
    assert_string_equal(d.events[1].row_json,
                        "{\"DeviceId\":\"\",\"DeviceName\":\"PC2\"}");
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

/* ---- Merging ------------------------------------------------------------- */

#define MERGE_COLUMNS \
    "DeviceId:String,DeviceName:String,FirstSeen:DateTime," \
    "LastSeen:DateTime,Count:Int64"

static void test_rows_merge_by_key(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(MERGE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;
    const struct md_entity *e;
    md_instant first;
    md_instant last;

    (void)state;
    memset(&prev, 0, sizeof(prev));
    add_row(t, "[\"d1\", \"pc-new\", \"2025-01-03T00:00:00Z\","
               " \"2025-01-05T00:00:00Z\", 2]");
    add_row(t, "[\"d1\", \"pc-old\", \"2025-01-01T00:00:00Z\","
               " \"2025-01-02T00:00:00Z\", 3]");
    add_row(t, "[\"d1\", \"pc-mid\", \"2025-01-02T00:00:00Z\","
               " \"2025-01-04T00:00:00Z\", 4]");
    compute(&o, t, &prev, BASE + 5 * DAY, HASH_A, &d);
    assert_int_equal(md_time_parse("2025-01-01T00:00:00Z", 20, &first), 0);
    assert_int_equal(md_time_parse("2025-01-05T00:00:00Z", 20, &last), 0);

    assert_int_equal(d.nentities, 1);
    e = &d.entities[0];
    assert_string_equal(e->device_name, "pc-new");
    assert_true(e->telemetry_first_seen == first);
    assert_true(e->telemetry_last_seen == last);
    assert_string_equal(e->row_json,
                        "{\"DeviceId\":\"d1\",\"DeviceName\":\"pc-new\","
                        "\"FirstSeen\":\"2025-01-01T00:00:00Z\","
                        "\"LastSeen\":\"2025-01-05T00:00:00Z\","
                        "\"Count\":9}");
    assert_int_equal(d.key_count, 1);
    assert_int_equal(d.nevents, 1);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_merge_keeps_telemetry_history(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(MERGE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;
    md_instant old_first = BASE - 100 * DAY;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "pc1", 1, BASE);
    prev.entities[0].telemetry_first_seen = old_first;
    prev.entities[0].runs_seen = 4;
    add_row(t, "[\"d1\", \"pc1\", \"2025-01-03T00:00:00Z\","
               " \"2025-01-05T00:00:00Z\", 2]");
    compute(&o, t, &prev, BASE + 5 * DAY, HASH_A, &d);

    assert_true(d.entities[0].telemetry_first_seen == old_first);
    assert_int_equal(d.entities[0].runs_seen, 5);
    assert_true(d.entities[0].first_seen == BASE);
    assert_int_equal(d.entities[0].first_run, 1);
    assert_int_equal(d.entities[0].last_run, 2);
    assert_int_equal(d.unchanged_count, 1);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

/* ---- Event kinds --------------------------------------------------------- */

static void test_first_run_is_baseline(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    memset(&prev, 0, sizeof(prev));
    add_row(t, "[\"d1\", \"PC1\"]");
    add_row(t, "[\"d2\", \"PC2\"]");
    compute(&o, t, &prev, BASE, HASH_A, &d);

    assert_true(d.baseline);
    assert_int_equal(d.event_counts[MD_EVENT_BASELINE], 2);
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 0);
    assert_true(md_diff_is_newsworthy(&d));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_first_run_report_is_new(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    o.first_run = MD_FIRST_RUN_REPORT;
    memset(&prev, 0, sizeof(prev));
    add_row(t, "[\"d1\", \"PC1\"]");
    compute(&o, t, &prev, BASE, HASH_A, &d);

    assert_false(d.baseline);
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 1);
    assert_int_equal(d.event_counts[MD_EVENT_BASELINE], 0);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_query_change_is_baseline(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    add_row(t, "[\"d2\", \"PC2\"]");
    compute(&o, t, &prev, BASE + DAY, HASH_B, &d);

    assert_true(d.baseline);
    assert_true(d.query_changed);
    assert_non_null(find_event(&d, MD_EVENT_BASELINE, "d2"));
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 0);
    assert_int_equal(d.event_counts[MD_EVENT_GONE], 0);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_unknown_key_is_new(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;
    const struct md_event *ev;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    add_row(t, "[\"d1\", \"PC1\"]");
    add_row(t, "[\"d2\", \"PC2\"]");
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_false(d.baseline);
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 1);
    ev = find_event(&d, MD_EVENT_NEW, "d2");
    assert_non_null(ev);
    assert_true(ev->first_seen == BASE + DAY);
    assert_int_equal(d.unchanged_count, 1);
    assert_true(md_diff_is_newsworthy(&d));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_returned_after_realert(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;
    const struct md_event *ev;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    add_row(t, "[\"d1\", \"PC1\"]");
    compute(&o, t, &prev, BASE + 40 * DAY + HOUR, HASH_A, &d);

    ev = find_event(&d, MD_EVENT_RETURNED, "d1");
    assert_non_null(ev);
    assert_int_equal(ev->days_away, 40);
    assert_true(ev->last_seen == BASE);
    assert_true(ev->first_seen == BASE);
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 0);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_absence_within_realert_silent(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    add_row(t, "[\"d1\", \"PC1\"]");
    compute(&o, t, &prev, BASE + 30 * DAY, HASH_A, &d);

    assert_int_equal(d.nevents, 0);
    assert_int_equal(d.unchanged_count, 1);
    assert_false(md_diff_is_newsworthy(&d));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_gone_from_reference_set(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;
    const struct md_event *ev;

    (void)state;
    known_state(&prev);
    prev.last_ok_run = 5;
    prev.reference_run = 4;
    add_prev(&prev, "d1", "d1", "PC1", 5, BASE);
    add_prev(&prev, "d2", "d2", "PC2", 4, BASE);
    add_prev(&prev, "d3", "d3", "PC3", 3, BASE);
    add_prev(&prev, "d4", "d4", "PC4", 5, BASE);
    add_row(t, "[\"d4\", \"PC4\"]");
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.event_counts[MD_EVENT_GONE], 2);
    ev = find_event(&d, MD_EVENT_GONE, "d1");
    assert_non_null(ev);
    assert_string_equal(ev->row_json, "{\"DeviceId\":\"old\"}");
    assert_true(ev->last_seen == BASE);
    assert_non_null(find_event(&d, MD_EVENT_GONE, "d2"));
    assert_null(find_event(&d, MD_EVENT_GONE, "d3"));
    assert_false(md_diff_is_newsworthy(&d));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_truncated_result_has_no_gone(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    add_row(t, "[\"d2\", \"PC2\"]");
    t->truncated = 1;
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.event_counts[MD_EVENT_GONE], 0);
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 1);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_empty_result_needs_no_key(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table("FileName:String");
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.key_count, 0);
    assert_non_null(find_event(&d, MD_EVENT_GONE, "d1"));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_rename_reported(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;
    const struct md_event *ev;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    add_prev(&prev, "d2", "d2", "PC2", 1, BASE);
    add_row(t, "[\"d1\", \"LAPTOP-7\"]");
    add_row(t, "[\"d2\", \"pc2\"]");
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.event_counts[MD_EVENT_RENAMED], 1);
    ev = find_event(&d, MD_EVENT_RENAMED, "d1");
    assert_non_null(ev);
    assert_string_equal(ev->old_name, "PC1");
    assert_string_equal(ev->new_name, "LAPTOP-7");
    assert_string_equal(find_entity(&d, "d2")->device_name, "pc2");
    assert_int_equal(d.unchanged_count, 1);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_tracked_value_reported(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS ",App:String");
    struct md_rule_config rc = { "R1", NULL, "App", 1 };
    struct md_rule_state prev;
    struct md_diff d;
    const struct md_event *ev;
    const struct md_entity *e;

    (void)state;
    o.rule_config = &rc;
    known_state(&prev);
    add_prev(&prev, "d1", "d1", "PC1", 1, BASE);
    add_prev_value(&prev, "TeamViewer");
    add_row(t, "[\"d1\", \"PC1\", \"teamviewer\"]");
    add_row(t, "[\"d1\", \"PC1\", \"AnyDesk\"]");
    add_row(t, "[\"d2\", \"PC2\", \"RustDesk\"]");
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.event_counts[MD_EVENT_TRACKED], 1);
    ev = find_event(&d, MD_EVENT_TRACKED, "d1");
    assert_non_null(ev);
    assert_string_equal(ev->value, "AnyDesk");
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 1);
    e = find_entity(&d, "d1");
    assert_int_equal(e->ntracked_values, 2);
    assert_string_equal(e->tracked_values[1], "AnyDesk");
    assert_int_equal(find_entity(&d, "d2")->ntracked_values, 1);
    assert_true(md_diff_is_newsworthy(&d));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_device_name_key_ignores_case(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table("DeviceName:String");
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "pc1", NULL, "pc1", 1, BASE);
    add_row(t, "[\"PC1\"]");
    o.rule_config = &(struct md_rule_config){
        "R1", (char *[]){ "DeviceName", NULL }, NULL, 1 };
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.nevents, 0);
    assert_int_equal(d.unchanged_count, 1);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

/* ---- JSON ---------------------------------------------------------------- */

static void test_diff_json_shape(void **state)
{
    struct md_run_diff rd;
    struct md_event events[3];
    struct md_error err;
    json_t *doc;
    json_t *row;

    (void)state;
    memset(&rd, 0, sizeof(rd));
    memset(events, 0, sizeof(events));
    rd.run = make_run(7, BASE, HASH_A);
    rd.run.status = MD_RUN_OK;
    rd.run.rule_id = "R1";
    rd.run.ended = MD_STORE_TIME_NONE;
    rd.run.due = BASE;
    rd.run.unchanged_count = 4;
    rd.rule_name = "Remote tools";
    events[0] = (struct md_event){ .kind = MD_EVENT_NEW, .key = "d1",
                                   .row_json = "{\"DeviceId\":\"d1\"}",
                                   .first_seen = BASE,
                                   .last_seen = MD_STORE_TIME_NONE };
    events[1] = (struct md_event){ .kind = MD_EVENT_RETURNED, .key = "d2",
                                   .first_seen = BASE,
                                   .last_seen = BASE - 40 * DAY,
                                   .days_away = 40 };
    events[2] = (struct md_event){ .kind = MD_EVENT_TRACKED, .key = "d3",
                                   .row_json = "{}", .first_seen = BASE,
                                   .last_seen = MD_STORE_TIME_NONE,
                                   .value = "AnyDesk" };
    rd.events = events;
    rd.nevents = 3;
    md_error_clear(&err);

    doc = md_diff_json(&rd, &err);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "format")),
                        "mdhunt.diff/1");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(doc, "rule"), "name")),
                        "Remote tools");
    assert_true(json_is_null(json_object_get(
        json_object_get(doc, "run"), "ended")));
    assert_true(json_is_false(json_object_get(doc, "baseline")));
    assert_int_equal(json_integer_value(json_object_get(doc, "unchanged")),
                     4);
    assert_int_equal(json_array_size(json_object_get(doc, "new")), 2);
    assert_int_equal(json_array_size(json_object_get(doc, "gone")), 0);
    row = json_array_get(json_object_get(doc, "new"), 0);
    assert_string_equal(json_string_value(json_object_get(row, "DeviceId")),
                        "d1");
    assert_string_equal(json_string_value(json_object_get(
                            row, "mdhunt_first_seen")),
                        "2025-01-01T00:00:00.0000000Z");
    row = json_array_get(json_object_get(doc, "returned"), 0);
    assert_int_equal(json_integer_value(json_object_get(
                         row, "mdhunt_days_away")), 40);
    row = json_array_get(json_object_get(doc, "new"), 1);
    assert_string_equal(json_string_value(json_object_get(
                            row, "mdhunt_value")), "AnyDesk");
    assert_string_equal(json_string_value(json_object_get(
                            row, "mdhunt_event")), "tracked");
    json_decref(doc);
}

/* ---- Exclusions ---------------------------------------------------------- */

/* Load an exclusions file for rule "R1"; entries expire as written. */
static struct md_exclusions *exclusions(const char *text)
{
    struct md_exclusions_options o;
    struct md_exclusions *x = NULL;
    struct md_error err;

    memset(&o, 0, sizeof(o));
    o.now = BASE;
    md_error_clear(&err);
    if (md_exclusions_load_buffer("ex.yaml", text, strlen(text), &o, &x,
                                  &err) != 0)
        fail_msg("md_exclusions_load_buffer: %s", err.message);
    return x;
}

/* One entry of rule R1 excluding DeviceId d1 until 2025-01-31. */
#define EXCLUDE_D1 \
    "- id: vendor-laptop\n  rule: R1\n  reason: approved in CHG-1\n" \
    "  owner: soc@example.org\n  expires: 2025-01-31\n  DeviceId: d1\n"

/* 2025-02-01T00:00:00Z, when EXCLUDE_D1 stops applying. */
#define EXCLUDE_D1_END (BASE + 31 * DAY)

static void test_excluded_key_not_new(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_exclusions *x = exclusions(EXCLUDE_D1);
    struct md_rule_state prev;
    const struct md_event *ev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_prev(&prev, "d0", "d0", "PC0", 1, BASE);
    add_row(t, "[\"d1\", \"PC1\"]");
    add_row(t, "[\"d2\", \"PC2\"]");
    o.exclusions = x;
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.event_counts[MD_EVENT_NEW], 1);
    assert_non_null(find_event(&d, MD_EVENT_NEW, "d2"));
    assert_int_equal(d.event_counts[MD_EVENT_EXCLUDED], 1);
    ev = find_event(&d, MD_EVENT_EXCLUDED, "d1");
    assert_non_null(ev);
    assert_string_equal(ev->exclusion_id, "vendor-laptop");
    assert_string_equal(ev->exclusion_reason, "approved in CHG-1");
    assert_string_equal(ev->exclusion_owner, "soc@example.org");
    assert_int_equal(ev->exclusion_expires, EXCLUDE_D1_END);
    assert_true(ev->first_excluded);
    assert_string_equal(find_entity(&d, "d1")->excluded_by, "vendor-laptop");
    assert_null(find_entity(&d, "d2")->excluded_by);
    assert_true(md_diff_is_newsworthy(&d));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_only_excluded_not_newsworthy(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_exclusions *x = exclusions(EXCLUDE_D1);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    known_state(&prev);
    add_row(t, "[\"d1\", \"PC1\"]");
    o.exclusions = x;
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_int_equal(d.event_counts[MD_EVENT_EXCLUDED], 1);
    assert_int_equal(md_diff_is_newsworthy(&d), 0);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_partly_excluded_key_reported(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS ",Signer:String");
    struct md_exclusions *x;
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    x = exclusions("- id: zoho\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                   "  expires: 2025-01-31\n  Signer: Zoho Corp\n");
    known_state(&prev);
    add_row(t, "[\"d1\", \"PC1\", \"Zoho Corp\"]");
    add_row(t, "[\"d1\", \"PC1\", \"Evil Inc\"]");
    add_row(t, "[\"d2\", \"PC2\", \"ZOHO CORP\"]");
    o.exclusions = x;
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_non_null(find_event(&d, MD_EVENT_NEW, "d1"));
    assert_non_null(find_event(&d, MD_EVENT_EXCLUDED, "d2"));
    assert_int_equal(d.event_counts[MD_EVENT_EXCLUDED], 1);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
    md_exclusions_free(x);
}

/* A state whose entity d1 EXCLUDE_D1 excluded in run 1. */
static void excluded_state(struct md_rule_state *prev)
{
    struct md_entity *e;

    known_state(prev);
    add_prev(prev, "d1", "d1", "PC1", 1, BASE);
    e = &prev->entities[prev->nentities - 1];
    e->excluded_by = strdup("vendor-laptop");
    e->exclusion_reason = strdup("approved in CHG-1");
    e->exclusion_owner = strdup("soc@example.org");
    e->exclusion_expires = EXCLUDE_D1_END;
}

static void test_expiry_uncovers_key(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_exclusions *x = exclusions(EXCLUDE_D1);
    struct md_rule_state prev;
    const struct md_event *ev;
    struct md_diff d;

    (void)state;
    excluded_state(&prev);
    add_row(t, "[\"d1\", \"PC1\"]");
    o.exclusions = x;

    /* The last instant of the expiry day still excludes. */
    compute(&o, t, &prev, EXCLUDE_D1_END - 1, HASH_A, &d);
    ev = find_event(&d, MD_EVENT_EXCLUDED, "d1");
    assert_non_null(ev);
    assert_false(ev->first_excluded);
    md_diff_free(&d);

    compute(&o, t, &prev, EXCLUDE_D1_END, HASH_A, &d);
    assert_int_equal(d.event_counts[MD_EVENT_EXCLUDED], 0);
    assert_int_equal(d.event_counts[MD_EVENT_NEW], 0);
    ev = find_event(&d, MD_EVENT_UNCOVERED, "d1");
    assert_non_null(ev);
    assert_string_equal(ev->exclusion_id, "vendor-laptop");
    assert_string_equal(ev->exclusion_owner, "soc@example.org");
    assert_int_equal(ev->exclusion_expires, EXCLUDE_D1_END);
    assert_null(find_entity(&d, "d1")->excluded_by);
    assert_true(md_diff_is_newsworthy(&d));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_excluded_entity_never_gone(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    excluded_state(&prev);
    add_prev(&prev, "d2", "d2", "PC2", 1, BASE);
    add_row(t, "[\"d3\", \"PC3\"]");
    compute(&o, t, &prev, BASE + DAY, HASH_A, &d);

    assert_non_null(find_event(&d, MD_EVENT_GONE, "d2"));
    assert_null(find_event(&d, MD_EVENT_GONE, "d1"));
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
}

static void test_missing_column_uncovers_key(void **state)
{
    struct md_diff_options o = make_options();
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_exclusions *x;
    struct md_rule_state prev;
    struct md_diff d;

    (void)state;
    /* The rule's query no longer returns Signer. */
    x = exclusions("- id: vendor-laptop\n  rule: R1\n  reason: r\n"
                   "  owner: o\n  expires: 2025-01-31\n"
                   "  Signer: Zoho Corp\n");
    excluded_state(&prev);
    add_row(t, "[\"d1\", \"PC1\"]");
    o.exclusions = x;
    compute(&o, t, &prev, BASE + DAY, HASH_B, &d);

    assert_int_equal(d.nexclusion_issues, 1);
    assert_string_equal(d.exclusion_issues[0].entry_id, "vendor-laptop");
    assert_non_null(strstr(d.exclusion_issues[0].message, "Signer"));
    assert_non_null(find_event(&d, MD_EVENT_UNCOVERED, "d1"));
    assert_int_equal(d.event_counts[MD_EVENT_BASELINE], 0);
    md_diff_free(&d);
    md_rule_state_free(&prev);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_diff_json_lists_exclusions(void **state)
{
    struct md_run_diff rd;
    struct md_event events[2];
    struct md_exclusion_issue issue = { "e9", "ex.yaml:3: no column" };
    struct md_error err;
    json_t *doc;
    json_t *row;
    json_t *entry;

    (void)state;
    memset(&rd, 0, sizeof(rd));
    memset(events, 0, sizeof(events));
    rd.run = make_run(8, BASE, HASH_A);
    rd.run.status = MD_RUN_OK;
    rd.run.rule_id = "R1";
    events[0].kind = MD_EVENT_EXCLUDED;
    events[0].key = "d1";
    events[0].row_json = "{\"DeviceId\":\"d1\"}";
    events[0].first_seen = BASE;
    events[0].exclusion_id = "vendor-laptop";
    events[0].exclusion_reason = "approved";
    events[0].exclusion_owner = "soc@example.org";
    events[0].exclusion_expires = EXCLUDE_D1_END;
    events[0].first_excluded = 1;
    events[1] = events[0];
    events[1].kind = MD_EVENT_UNCOVERED;
    events[1].key = "d2";
    events[1].row_json = "{\"DeviceId\":\"d2\"}";
    rd.events = events;
    rd.nevents = 2;
    rd.exclusion_issues = &issue;
    rd.nexclusion_issues = 1;
    md_error_clear(&err);

    doc = md_diff_json(&rd, &err);
    assert_non_null(doc);
    assert_int_equal(json_array_size(json_object_get(doc, "new")), 0);
    row = json_array_get(json_object_get(doc, "excluded"), 0);
    assert_string_equal(json_string_value(json_object_get(row, "DeviceId")),
                        "d1");
    assert_true(json_is_true(json_object_get(row, "mdhunt_first_excluded")));
    entry = json_object_get(row, "mdhunt_exclusion");
    assert_string_equal(json_string_value(json_object_get(entry, "id")),
                        "vendor-laptop");
    assert_string_equal(json_string_value(json_object_get(entry, "reason")),
                        "approved");
    assert_string_equal(json_string_value(json_object_get(entry, "owner")),
                        "soc@example.org");
    assert_string_equal(json_string_value(json_object_get(entry, "expires")),
                        "2025-01-31");
    row = json_array_get(json_object_get(doc, "uncovered"), 0);
    assert_string_equal(json_string_value(json_object_get(row, "DeviceId")),
                        "d2");
    assert_null(json_object_get(row, "mdhunt_first_excluded"));
    entry = json_array_get(json_object_get(doc, "exclusion_issues"), 0);
    assert_string_equal(json_string_value(json_object_get(entry, "entry")),
                        "e9");
    json_decref(doc);
}

/* Record a run of R1 at started through the store; returns its id. */
static int64_t record(struct md_store *st, const struct md_exclusions *x,
                      struct md_table *t, md_instant started)
{
    struct md_diff_options o = make_options();
    struct md_run_start start;
    struct md_error err;
    int64_t run_id;

    memset(&start, 0, sizeof(start));
    start.rule_id = "R1";
    start.query = "q";
    start.query_hash = HASH_A;
    start.backend = "graph";
    start.exclusions_hash = x != NULL ? x->hash : NULL;
    start.due = started;
    start.started = started;
    o.exclusions = x;
    o.first_run = MD_FIRST_RUN_REPORT;
    md_error_clear(&err);
    if (md_store_run_begin(st, &start, &run_id, &err) != 0 ||
        md_diff_record_run(st, run_id, t, &o, started + HOUR, MD_SEND_NEW,
                           NULL, NULL, &err) != 0)
        fail_msg("%s", err.message);
    return run_id;
}

static void load_run(struct md_store *st, int64_t run_id,
                     struct md_run_diff *rd)
{
    struct md_error err;

    md_error_clear(&err);
    if (md_store_run_diff(st, run_id, rd, &err) != 0)
        fail_msg("%s", err.message);
}

static void test_exclusions_stored_and_uncovered_once(void **state)
{
    char dir[] = "/tmp/mdhunt-excl-XXXXXX";
    char path[96];
    struct md_store *st = NULL;
    struct md_exclusions *x = exclusions(EXCLUDE_D1);
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_run_diff rd;
    struct md_exclusion_count *counts = NULL;
    size_t ncounts = 0;
    struct md_error err;
    int64_t run_id;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/mdhunt.db", dir);
    md_error_clear(&err);
    assert_int_equal(md_store_open(path, 0, &st, &err), 0);
    add_row(t, "[\"d1\", \"PC1\"]");
    add_row(t, "[\"d2\", \"PC2\"]");

    run_id = record(st, x, t, BASE);
    load_run(st, run_id, &rd);
    assert_string_equal(rd.run.exclusions_hash, x->hash);
    assert_int_equal(rd.run.event_counts[MD_EVENT_NEW], 1);
    assert_int_equal(rd.run.event_counts[MD_EVENT_EXCLUDED], 1);
    for (size_t i = 0; i < rd.nevents; i++) {
        if (rd.events[i].kind != MD_EVENT_EXCLUDED)
            continue;
        assert_string_equal(rd.events[i].key, "d1");
        assert_string_equal(rd.events[i].exclusion_id, "vendor-laptop");
        assert_string_equal(rd.events[i].exclusion_reason,
                            "approved in CHG-1");
        assert_int_equal(rd.events[i].exclusion_expires, EXCLUDE_D1_END);
        assert_true(rd.events[i].first_excluded);
    }
    md_run_diff_clear(&rd);
    assert_int_equal(md_store_exclusion_counts(st, &counts, &ncounts, &err),
                     0);
    assert_int_equal(ncounts, 1);
    assert_string_equal(counts[0].rule_id, "R1");
    assert_string_equal(counts[0].exclusion_id, "vendor-laptop");
    assert_int_equal(counts[0].run_id, run_id);
    assert_int_equal(counts[0].devices, 1);
    md_exclusion_counts_free(counts, ncounts);

    run_id = record(st, x, t, BASE + DAY);
    load_run(st, run_id, &rd);
    assert_int_equal(rd.run.event_counts[MD_EVENT_EXCLUDED], 1);
    assert_false(rd.events[0].first_excluded);
    md_run_diff_clear(&rd);

    run_id = record(st, x, t, EXCLUDE_D1_END);
    load_run(st, run_id, &rd);
    assert_int_equal(rd.run.event_counts[MD_EVENT_UNCOVERED], 1);
    assert_int_equal(rd.run.event_counts[MD_EVENT_EXCLUDED], 0);
    assert_string_equal(rd.events[0].exclusion_id, "vendor-laptop");
    assert_string_equal(rd.events[0].exclusion_owner, "soc@example.org");
    md_run_diff_clear(&rd);
    assert_int_equal(md_store_exclusion_counts(st, &counts, &ncounts, &err),
                     0);
    assert_int_equal(ncounts, 0);
    md_exclusion_counts_free(counts, ncounts);

    run_id = record(st, x, t, EXCLUDE_D1_END + DAY);
    load_run(st, run_id, &rd);
    assert_int_equal(rd.nevents, 0);
    assert_int_equal(rd.run.unchanged_count, 2);
    md_run_diff_clear(&rd);

    md_store_close(st);
    md_table_free(t);
    md_exclusions_free(x);
    snprintf(path, sizeof(path), "%s/mdhunt.db", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/mdhunt.db-wal", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/mdhunt.db-shm", dir);
    unlink(path);
    rmdir(dir);
}

static void test_exclusion_issue_stored(void **state)
{
    char dir[] = "/tmp/mdhunt-excl-XXXXXX";
    char path[96];
    struct md_store *st = NULL;
    struct md_exclusions *x;
    struct md_table *t = make_table(DEVICE_COLUMNS);
    struct md_run_diff rd;
    struct md_error err;

    (void)state;
    x = exclusions("- id: by-signer\n  rule: R1\n  reason: r\n  owner: o\n"
                   "  expires: 2025-01-31\n  Signer: Zoho Corp\n");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/mdhunt.db", dir);
    md_error_clear(&err);
    assert_int_equal(md_store_open(path, 0, &st, &err), 0);
    add_row(t, "[\"d1\", \"PC1\"]");

    load_run(st, record(st, x, t, BASE), &rd);
    assert_int_equal(rd.nexclusion_issues, 1);
    assert_string_equal(rd.exclusion_issues[0].entry_id, "by-signer");
    assert_non_null(strstr(rd.exclusion_issues[0].message, "ex.yaml:6: "));
    md_run_diff_clear(&rd);

    md_store_close(st);
    md_table_free(t);
    md_exclusions_free(x);
    snprintf(path, sizeof(path), "%s/mdhunt.db", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/mdhunt.db-wal", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/mdhunt.db-shm", dir);
    unlink(path);
    rmdir(dir);
}

/* ---- A long simulated history -------------------------------------------- */

/*
 * Devices appear, vanish for 1 to 60 days, come back, are renamed, gain
 * remote tools, and return several rows each.  Runs fail, are truncated or
 * are killed; the query changes twice and the store is reopened now and
 * then.  After every successful run, the events stored for it must
 * equal what the model below expects.  The model keeps per-device flags
 * in plain arrays and uses neither the diff's sorting nor the store.
 */

#define SIM_DEVICES 30
#define SIM_DAYS 420
#define SIM_APPS 4
#define SIM_REALERT_DAYS 30

static const char *const sim_apps[SIM_APPS] = {
    "TeamViewer", "AnyDesk", "RustDesk", "Splashtop"
};

struct sim_device {
    int present;
    int back_on_day;        /* absent until this day */
    int name_version;
    int upper;              /* name in upper case (a case-only change) */
    unsigned char apps[SIM_APPS];
};

struct model_device {
    int known;
    md_instant last_seen;
    char name[64];
    unsigned char apps[SIM_APPS];
    int in_reference;
};

struct expected {
    enum md_event_kind kind;
    char key[32];
    char detail[160];
};

struct sim {
    uint64_t prng;
    char dir[64];
    char path[96];
    struct md_store *st;
    struct sim_device world[SIM_DEVICES];
    struct model_device model[SIM_DEVICES];
    int model_has_ok;
    const char *model_hash;
    const char *hash;
    struct expected *expected;
    size_t nexpected;
    /* Tallies for the summary checks. */
    long appearances;
    long new_events;
    long baselines;
    long renames_expected;
    long renames_reported;
    long failed;
    long truncated;
    long killed;
    long reopened;
};

static uint64_t sim_next(struct sim *s)
{
    s->prng ^= s->prng << 13;
    s->prng ^= s->prng >> 7;
    s->prng ^= s->prng << 17;
    return s->prng;
}

/* 1 with probability percent / 100. */
static int sim_chance(struct sim *s, unsigned percent)
{
    return sim_next(s) % 100 < percent;
}

static void sim_device_name(const struct sim *s, int dev, char *buf,
                            size_t size, int version)
{
    snprintf(buf, size, "%s-%02d-v%d", s->world[dev].upper ? "HOST" : "host",
             dev, version);
}

static void sim_world_step(struct sim *s, int day)
{
    for (int i = 0; i < SIM_DEVICES; i++) {
        struct sim_device *w = &s->world[i];

        if (!w->present && day >= w->back_on_day) {
            w->present = 1;
        } else if (w->present && sim_chance(s, 8)) {
            w->present = 0;
            w->back_on_day = day + 1 + (int)(sim_next(s) % 60);
        }
        if (w->present && sim_chance(s, 3))
            w->name_version++;
        if (w->present && sim_chance(s, 2))
            w->upper = !w->upper;
        if (w->present && sim_chance(s, 3))
            w->apps[sim_next(s) % SIM_APPS] = 1;
    }
}

/* Append the rows of device dev: one per app it has, plus up to two more.
 * The row with the latest LastSeen has the current name, and older rows
 * may have the name before it.  The caller shuffles the rows. */
static void sim_device_rows(struct sim *s, int dev, md_instant now,
                            json_t *rows)
{
    struct sim_device *w = &s->world[dev];
    int napps = 0;
    int apps[SIM_APPS];
    int nrows;
    char id[16];
    char name[64];

    for (int a = 0; a < SIM_APPS; a++) {
        if (w->apps[a])
            apps[napps++] = a;
    }
    nrows = napps + (int)(sim_next(s) % 3);
    snprintf(id, sizeof(id), "dev-%02d", dev);
    for (int r = 0; r < nrows; r++) {
        int newest = r == nrows - 1;
        int version = newest || w->name_version == 0 || sim_chance(s, 50)
                          ? w->name_version : w->name_version - 1;
        const char *app = sim_apps[apps[r % napps]];
        char first[MD_TIME_TEXT_MAX];
        char last[MD_TIME_TEXT_MAX];
        char lower_app[16];

        sim_device_name(s, dev, name, sizeof(name), version);
        md_time_format(now - (nrows - r) * HOUR - 2 * DAY, first,
                       sizeof(first));
        md_time_format(now - (nrows - r) * HOUR, last, sizeof(last));
        if (sim_chance(s, 20)) {
            size_t k;

            for (k = 0; app[k] != '\0' && k + 1 < sizeof(lower_app); k++)
                lower_app[k] = (char)tolower((unsigned char)app[k]);
            lower_app[k] = '\0';
            app = lower_app;
        }
        json_array_append_new(rows, json_pack("[sssssi]", id, name, first,
                                              last, app,
                                              1 + (int)(sim_next(s) % 5)));
    }
}

/* Build the run's table; devices dropped by a truncation are marked in
 * in_result. */
static struct md_table *sim_table(struct sim *s, md_instant now,
                                  int truncated, int *in_result)
{
    struct md_table *t = make_table(
        "DeviceId:String,DeviceName:String,FirstSeen:DateTime,"
        "LastSeen:DateTime,App:String,Count:Int64");
    json_t *rows = json_array();
    size_t n;

    assert_non_null(rows);
    for (int i = 0; i < SIM_DEVICES; i++) {
        in_result[i] = s->world[i].present &&
                       !(truncated && sim_chance(s, 30));
        if (in_result[i])
            sim_device_rows(s, i, now, rows);
    }
    if (sim_chance(s, 10))
        json_array_append_new(rows, json_pack("[nsssss]", "nameless",
                                              "2025-01-01T00:00:00Z",
                                              "2025-01-01T00:00:00Z",
                                              "AnyDesk", "1"));

    n = json_array_size(rows);
    for (size_t i = n; i > 1; i--) {
        size_t j = sim_next(s) % i;
        json_t *a = json_incref(json_array_get(rows, i - 1));
        json_t *b = json_incref(json_array_get(rows, j));

        json_array_set_new(rows, i - 1, b);
        json_array_set_new(rows, j, a);
    }
    for (size_t i = 0; i < n; i++) {
        char *text = json_dumps(json_array_get(rows, i), 0);

        assert_non_null(text);
        add_row(t, text);
        free(text);
    }
    json_decref(rows);
    t->truncated = truncated;
    return t;
}

static void expect_event(struct sim *s, enum md_event_kind kind, int dev,
                         const char *detail)
{
    struct expected *e;

    s->expected = realloc(s->expected,
                          (s->nexpected + 1) * sizeof(*s->expected));
    assert_non_null(s->expected);
    e = &s->expected[s->nexpected++];
    e->kind = kind;
    if (dev >= 0)
        snprintf(e->key, sizeof(e->key), "dev-%02d", dev);
    else
        e->key[0] = '\0';
    snprintf(e->detail, sizeof(e->detail), "%s", detail);
}

static int model_app_known(const struct model_device *m, int app)
{
    return m->apps[app];
}

/* The model's reading of one known, recently seen device. */
static void model_known_device(struct sim *s, int dev, const char *name)
{
    struct model_device *m = &s->model[dev];
    char detail[160];

    if (md_strcasecmp(m->name, name) != 0) {
        snprintf(detail, sizeof(detail), "%s>%s", m->name, name);
        expect_event(s, MD_EVENT_RENAMED, dev, detail);
        s->renames_expected++;
    }
    for (int a = 0; a < SIM_APPS; a++) {
        if (s->world[dev].apps[a] && !model_app_known(m, a)) {
            snprintf(detail, sizeof(detail), "%s", sim_apps[a]);
            for (char *p = detail; *p != '\0'; p++)
                *p = (char)tolower((unsigned char)*p);
            expect_event(s, MD_EVENT_TRACKED, dev, detail);
        }
    }
}

/* What the model expects of a successful run. */
static void model_run(struct sim *s, md_instant now, int truncated,
                      const int *in_result, int nameless)
{
    int query_changed = s->model_has_ok &&
                        strcmp(s->model_hash, s->hash) != 0;
    int baseline = !s->model_has_ok || query_changed;
    char detail[160];

    s->nexpected = 0;
    for (int i = 0; i < nameless; i++)
        expect_event(s, MD_EVENT_EMPTY_KEY, -1, "");
    for (int i = 0; i < SIM_DEVICES; i++) {
        struct model_device *m = &s->model[i];
        char name[64];

        if (!in_result[i])
            continue;
        sim_device_name(s, i, name, sizeof(name),
                        s->world[i].name_version);
        if (baseline) {
            expect_event(s, MD_EVENT_BASELINE, i, "");
        } else if (!m->known) {
            expect_event(s, MD_EVENT_NEW, i, "");
            s->appearances++;
        } else if (now - m->last_seen > SIM_REALERT_DAYS * DAY) {
            snprintf(detail, sizeof(detail), "%lld",
                     (long long)((now - m->last_seen) / DAY));
            expect_event(s, MD_EVENT_RETURNED, i, detail);
            s->appearances++;
        } else {
            model_known_device(s, i, name);
        }
        m->known = 1;
        m->last_seen = now;
        snprintf(m->name, sizeof(m->name), "%s", name);
        for (int a = 0; a < SIM_APPS; a++)
            m->apps[a] |= s->world[i].apps[a];
    }

    for (int i = 0; i < SIM_DEVICES; i++) {
        struct model_device *m = &s->model[i];

        if (!baseline && !truncated && m->in_reference && !in_result[i])
            expect_event(s, MD_EVENT_GONE, i, "");
        if (baseline || !truncated)
            m->in_reference = in_result[i];
        else
            m->in_reference |= in_result[i];
    }
    s->model_has_ok = 1;
    s->model_hash = s->hash;
}

static void lower_copy(char *dst, size_t size, const char *src)
{
    size_t i;

    for (i = 0; src != NULL && src[i] != '\0' && i + 1 < size; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

/* The stored event in the model's form. */
static void stored_as_expected(const struct md_event *ev,
                               struct expected *out)
{
    out->kind = ev->kind;
    snprintf(out->key, sizeof(out->key), "%s", ev->key);
    out->detail[0] = '\0';
    if (ev->kind == MD_EVENT_RENAMED)
        snprintf(out->detail, sizeof(out->detail), "%s>%s", ev->old_name,
                 ev->new_name);
    else if (ev->kind == MD_EVENT_RETURNED)
        snprintf(out->detail, sizeof(out->detail), "%lld",
                 (long long)ev->days_away);
    else if (ev->kind == MD_EVENT_TRACKED)
        lower_copy(out->detail, sizeof(out->detail), ev->value);
}

static int compare_expected(const void *a, const void *b)
{
    const struct expected *x = a;
    const struct expected *y = b;
    int rc;

    if (x->kind != y->kind)
        return (int)x->kind - (int)y->kind;
    rc = strcmp(x->key, y->key);
    return rc != 0 ? rc : strcmp(x->detail, y->detail);
}

static void sim_check_run(struct sim *s, int64_t run_id, int day)
{
    struct md_run_diff rd;
    struct md_error err;
    struct expected *got;

    md_error_clear(&err);
    if (md_store_run_diff(s->st, run_id, &rd, &err) != 0)
        fail_msg("day %d: %s", day, err.message);
    got = calloc(rd.nevents + 1, sizeof(*got));
    assert_non_null(got);
    for (size_t i = 0; i < rd.nevents; i++)
        stored_as_expected(&rd.events[i], &got[i]);
    qsort(got, rd.nevents, sizeof(*got), compare_expected);
    qsort(s->expected, s->nexpected, sizeof(*s->expected),
          compare_expected);

    if (rd.nevents != s->nexpected)
        fail_msg("day %d: %zu events stored, the model expects %zu", day,
                 rd.nevents, s->nexpected);
    for (size_t i = 0; i < rd.nevents; i++) {
        if (compare_expected(&got[i], &s->expected[i]) != 0)
            fail_msg("day %d: stored %s %s %s, the model expects %s %s %s",
                     day, md_event_kind_name(got[i].kind), got[i].key,
                     got[i].detail,
                     md_event_kind_name(s->expected[i].kind),
                     s->expected[i].key, s->expected[i].detail);
        if (got[i].kind == MD_EVENT_NEW || got[i].kind == MD_EVENT_RETURNED)
            s->new_events++;
        if (got[i].kind == MD_EVENT_RENAMED)
            s->renames_reported++;
    }
    if (rd.run.baseline)
        s->baselines++;
    if (rd.run.truncated)
        assert_int_equal(rd.run.event_counts[MD_EVENT_GONE], 0);
    free(got);
    md_run_diff_clear(&rd);
}

static void sim_open(struct sim *s)
{
    struct md_error err;

    md_error_clear(&err);
    if (md_store_open(s->path, 0, &s->st, &err) != 0)
        fail_msg("%s", err.message);
}

static int64_t sim_begin(struct sim *s, md_instant now)
{
    struct md_run_start start;
    struct md_error err;
    int64_t run_id;

    memset(&start, 0, sizeof(start));
    start.rule_id = "remote-tools";
    start.query = s->hash;
    start.query_hash = s->hash;
    start.backend = "graph";
    start.due = now;
    start.started = now;
    md_error_clear(&err);
    if (md_store_run_begin(s->st, &start, &run_id, &err) != 0)
        fail_msg("%s", err.message);
    return run_id;
}

static void sim_failed_run(struct sim *s, int64_t run_id, md_instant now)
{
    struct md_error run_err;
    struct md_error err;
    struct md_run run;

    md_error_clear(&run_err);
    md_error_clear(&err);
    md_error_set(&run_err, MD_E_THROTTLED, "429 Too Many Requests");
    run_err.http_status = 429;
    assert_int_equal(md_store_run_finish_failed(s->st, run_id, now + HOUR,
                                                &run_err, &err), 0);
    assert_int_equal(md_store_run_get(s->st, run_id, &run, &err), 0);
    assert_int_equal(run.status, MD_RUN_FAILED);
    assert_int_equal(run.event_counts[MD_EVENT_NEW], 0);
    md_run_clear(&run);
    s->failed++;
}

static void sim_killed_run(struct sim *s, int64_t run_id)
{
    struct md_error err;
    struct md_run run;

    md_store_close(s->st);
    sim_open(s);
    assert_int_equal(md_store_interrupted_at_open(s->st), 1);
    md_error_clear(&err);
    assert_int_equal(md_store_run_get(s->st, run_id, &run, &err), 0);
    assert_int_equal(run.status, MD_RUN_INTERRUPTED);
    md_run_clear(&run);
    s->killed++;
}

static void sim_ok_run(struct sim *s, int64_t run_id, md_instant now,
                       int day)
{
    static const struct md_rule_config rc = { "remote-tools", NULL, "App",
                                              1 };
    struct md_diff_options o = make_options();
    int truncated = sim_chance(s, 8);
    int in_result[SIM_DEVICES];
    struct md_table *t = sim_table(s, now, truncated, in_result);
    int nameless = 0;
    struct md_error err;

    o.rule_id = "remote-tools";
    o.rule_config = &rc;
    o.realert_after = SIM_REALERT_DAYS * 86400;
    for (size_t r = 0; r < t->nrows; r++) {
        if (md_table_cell(t, r, 0)->kind == MD_J_NULL)
            nameless++;
    }
    md_error_clear(&err);
    if (md_diff_record_run(s->st, run_id, t, &o, now + HOUR, MD_SEND_NEW,
                           NULL, NULL, &err) != 0)
        fail_msg("day %d: %s", day, err.message);
    model_run(s, now, truncated, in_result, nameless);
    sim_check_run(s, run_id, day);
    s->truncated += truncated;
    md_table_free(t);
}

static void sim_day(struct sim *s, int day)
{
    md_instant now = BASE + day * DAY + 9 * HOUR;
    int64_t run_id;

    if (day == 150)
        s->hash = HASH_B;
    if (day == 300)
        s->hash = HASH_A;
    sim_world_step(s, day);
    run_id = sim_begin(s, now);
    if (sim_chance(s, 2))
        sim_killed_run(s, run_id);
    else if (sim_chance(s, 10))
        sim_failed_run(s, run_id, now);
    else
        sim_ok_run(s, run_id, now, day);
    if (sim_chance(s, 5)) {
        md_store_close(s->st);
        sim_open(s);
        s->reopened++;
    }
}

static void sim_init(struct sim *s, uint64_t seed)
{
    memset(s, 0, sizeof(*s));
    s->prng = seed;
    s->hash = HASH_A;
    strcpy(s->dir, "/tmp/mdhunt-diff-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->path, sizeof(s->path), "%s/mdhunt.db", s->dir);
    for (int i = 0; i < SIM_DEVICES; i++) {
        s->world[i].apps[i % SIM_APPS] = 1;
        s->world[i].back_on_day = i < 20 ? 0 : (int)(sim_next(s) % 200);
    }
    sim_open(s);
}

static void sim_finish(struct sim *s)
{
    char file[128];

    md_store_close(s->st);
    free(s->expected);
    snprintf(file, sizeof(file), "%s/mdhunt.db", s->dir);
    unlink(file);
    snprintf(file, sizeof(file), "%s/mdhunt.db-wal", s->dir);
    unlink(file);
    snprintf(file, sizeof(file), "%s/mdhunt.db-shm", s->dir);
    unlink(file);
    rmdir(s->dir);
}

static void run_history(uint64_t seed)
{
    struct sim *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    sim_init(s, seed);
    for (int day = 0; day < SIM_DAYS; day++)
        sim_day(s, day);

    /* Every appearance was reported once, and only the first run and the
     * first after each of the two query changes were baselines. */
    assert_int_equal(s->new_events, s->appearances);
    assert_int_equal(s->renames_reported, s->renames_expected);
    assert_int_equal(s->baselines, 3);
    /* The seed must exercise every kind of disturbance. */
    assert_true(s->appearances > 10);
    assert_true(s->renames_expected > 3);
    assert_true(s->failed > 5);
    assert_true(s->truncated > 5);
    assert_true(s->killed > 0);
    assert_true(s->reopened > 5);
    sim_finish(s);
    free(s);
}

static void test_history_matches_model(void **state)
{
    (void)state;
    run_history(UINT64_C(0x9E3779B97F4A7C15));
    run_history(UINT64_C(0x1234567887654321));
    run_history(UINT64_C(0x0DDBA11CAFEF00D5));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_uses_device_id),
        cmocka_unit_test(test_key_uses_host_mapping),
        cmocka_unit_test(test_key_uses_config_columns),
        cmocka_unit_test(test_key_missing_is_rule_error),
        cmocka_unit_test(test_config_key_column_missing),
        cmocka_unit_test(test_track_column_missing),
        cmocka_unit_test(test_empty_key_reported),
        cmocka_unit_test(test_rows_merge_by_key),
        cmocka_unit_test(test_merge_keeps_telemetry_history),
        cmocka_unit_test(test_first_run_is_baseline),
        cmocka_unit_test(test_first_run_report_is_new),
        cmocka_unit_test(test_query_change_is_baseline),
        cmocka_unit_test(test_unknown_key_is_new),
        cmocka_unit_test(test_returned_after_realert),
        cmocka_unit_test(test_absence_within_realert_silent),
        cmocka_unit_test(test_gone_from_reference_set),
        cmocka_unit_test(test_truncated_result_has_no_gone),
        cmocka_unit_test(test_empty_result_needs_no_key),
        cmocka_unit_test(test_rename_reported),
        cmocka_unit_test(test_tracked_value_reported),
        cmocka_unit_test(test_device_name_key_ignores_case),
        cmocka_unit_test(test_diff_json_shape),
        cmocka_unit_test(test_excluded_key_not_new),
        cmocka_unit_test(test_only_excluded_not_newsworthy),
        cmocka_unit_test(test_partly_excluded_key_reported),
        cmocka_unit_test(test_expiry_uncovers_key),
        cmocka_unit_test(test_excluded_entity_never_gone),
        cmocka_unit_test(test_missing_column_uncovers_key),
        cmocka_unit_test(test_diff_json_lists_exclusions),
        cmocka_unit_test(test_exclusions_stored_and_uncovered_once),
        cmocka_unit_test(test_exclusion_issue_stored),
        cmocka_unit_test(test_history_matches_model),
    };

    md_log_set_level(MD_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
