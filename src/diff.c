/*
 * The diff of a run against the rule's previous state.  The contract is in
 * include/mdhunt/diff.h.
 *
 * md_diff_compute() works in four passes.  It resolves the key and the
 * merge columns and sorts the rows by key.  Then it turns each group of
 * rows sharing a key into one entity and its events.  Last, it lists the
 * keys of the reference set that are missing from the result.
 * Exclusion entries are matched against each row while the rows are
 * collected.
 */
#include "mdhunt/diff.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/buf.h"
#include "mdhunt/log.h"

#define TICKS_PER_DAY (86400 * MD_TICKS_PER_SECOND)

/* The columns that make a row's key. */
struct key_spec {
    int *cols;              /* table column indexes */
    size_t ncols;
    int *lower;             /* per column: compare case-insensitively */
};

/* Columns the merge and the events read; -1 when absent. */
struct diff_columns {
    int device_id;
    int device_name;
    int first_seen;         /* only when its type is datetime */
    int last_seen;          /* only when its type is datetime */
    int count;              /* only when its type is int */
    int track;
};

struct keyed_row {
    char *key;
    size_t row;
    const struct md_exclusion *excluded;    /* the entry matching the row */
};

/* Everything md_diff_compute() passes between its steps. */
struct diff_ctx {
    const struct md_diff_options *opts;
    const char *rule_id;
    const struct md_run *run;
    const struct md_table *table;
    const struct md_rule_state *prev;
    struct key_spec key;
    struct diff_columns cols;
    struct md_exclusion_matcher *matcher;
    const struct md_entity **prev_sorted;   /* prev entities by key */
    unsigned char *prev_seen;               /* parallel to prev_sorted */
    struct md_diff *out;
    size_t events_cap;
    size_t entities_cap;
};

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
}

void md_diff_free(struct md_diff *d)
{
    if (d == NULL)
        return;
    md_events_free(d->events, d->nevents);
    md_entities_free(d->entities, d->nentities);
    md_exclusion_issues_free(d->exclusion_issues, d->nexclusion_issues);
    memset(d, 0, sizeof(*d));
}

int md_diff_is_newsworthy(const struct md_diff *d)
{
    return d->event_counts[MD_EVENT_NEW] > 0 ||
           d->event_counts[MD_EVENT_RETURNED] > 0 ||
           d->event_counts[MD_EVENT_TRACKED] > 0 ||
           d->event_counts[MD_EVENT_RENAMED] > 0 ||
           d->event_counts[MD_EVENT_UNCOVERED] > 0 ||
           d->event_counts[MD_EVENT_BASELINE] > 0;
}

/* ---- Resolving columns --------------------------------------------------- */

static int typed_column(const struct md_table *t, const char *name,
                        enum md_type type)
{
    int col = md_table_column_index(t, name);

    if (col >= 0 && t->columns[col].type != type)
        return -1;
    return col;
}

/* The column of the rule's Host entity mapping (identifier HostName). */
static const char *host_mapping_column(const struct md_rule *rule)
{
    if (rule == NULL)
        return NULL;
    for (size_t i = 0; i < rule->nmappings; i++) {
        const struct md_entity_mapping *m = &rule->mappings[i];

        if (m->entity_type == NULL ||
            md_strcasecmp(m->entity_type, "Host") != 0)
            continue;
        for (size_t j = 0; j < m->nfields; j++) {
            if (m->fields[j].identifier != NULL &&
                m->fields[j].column != NULL &&
                md_strcasecmp(m->fields[j].identifier, "HostName") == 0)
                return m->fields[j].column;
        }
    }
    return NULL;
}

/* Append the list of the table's columns to b, for messages. */
static void describe_columns(const struct md_table *t, struct md_buf *b)
{
    for (size_t i = 0; i < t->ncolumns; i++)
        md_buf_printf(b, "%s%s", i > 0 ? ", " : "", t->columns[i].name);
    if (t->ncolumns == 0)
        md_buf_puts(b, "(none)");
}

static int no_key_error(const struct diff_ctx *c, struct md_error *err)
{
    struct md_buf cols = MD_BUF_INIT;

    describe_columns(c->table, &cols);
    md_error_set(err, MD_E_RULE,
                 "rule %s: no column identifies a device: the result has "
                 "no DeviceId column and the rule no Host entity mapping "
                 "with HostName; add `key = COLUMN[,COLUMN]` to a "
                 "[rule \"%s\"] section (the result's columns: %s)",
                 c->rule_id, c->rule_id,
                 cols.data != NULL ? cols.data : "?");
    md_buf_free(&cols);
    return -1;
}

static int key_spec_alloc(struct key_spec *k, size_t n, struct md_error *err)
{
    k->cols = calloc(n, sizeof(*k->cols));
    k->lower = calloc(n, sizeof(*k->lower));
    if (k->cols == NULL || k->lower == NULL)
        return oom(err);
    k->ncols = n;
    return 0;
}

static int key_from_config(struct diff_ctx *c, struct md_error *err)
{
    const struct md_rule_config *rc = c->opts->rule_config;
    size_t n = 0;

    while (rc->key_columns[n] != NULL)
        n++;
    if (n == 0)
        return no_key_error(c, err);
    if (key_spec_alloc(&c->key, n, err) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int col = md_table_column_index(c->table, rc->key_columns[i]);

        if (col < 0)
            return md_error_set(err, MD_E_RULE,
                                "rule %s: key column %s of [rule \"%s\"] "
                                "is not in the result; fix `key` or the "
                                "query", c->rule_id, rc->key_columns[i],
                                c->rule_id);
        c->key.cols[i] = col;
        c->key.lower[i] =
            md_strcasecmp(c->table->columns[col].name, "DeviceName") == 0;
    }
    return 0;
}

static int resolve_key(struct diff_ctx *c, struct md_error *err)
{
    const struct md_rule_config *rc = c->opts->rule_config;
    const char *host = host_mapping_column(c->opts->rule);
    int col;

    col = md_table_column_index(c->table, "DeviceId");
    if (col >= 0) {
        if (key_spec_alloc(&c->key, 1, err) != 0)
            return -1;
        c->key.cols[0] = col;
        return 0;
    }

    col = host != NULL ? md_table_column_index(c->table, host) : -1;
    if (col >= 0) {
        if (key_spec_alloc(&c->key, 1, err) != 0)
            return -1;
        c->key.cols[0] = col;
        c->key.lower[0] = 1;
        return 0;
    }

    if (rc != NULL && rc->key_columns != NULL)
        return key_from_config(c, err);
    return no_key_error(c, err);
}

static int resolve_columns(struct diff_ctx *c, struct md_error *err)
{
    const struct md_rule_config *rc = c->opts->rule_config;
    const struct md_table *t = c->table;

    c->cols.device_id = md_table_column_index(t, "DeviceId");
    c->cols.device_name = md_table_column_index(t, "DeviceName");
    c->cols.first_seen = typed_column(t, "FirstSeen", MD_T_DATETIME);
    c->cols.last_seen = typed_column(t, "LastSeen", MD_T_DATETIME);
    c->cols.count = typed_column(t, "Count", MD_T_INT);
    c->cols.track = -1;
    if (rc != NULL && rc->track_column != NULL) {
        c->cols.track = md_table_column_index(t, rc->track_column);
        if (c->cols.track < 0)
            return md_error_set(err, MD_E_RULE,
                                "rule %s: track column %s of [rule \"%s\"] "
                                "is not in the result; fix `track` or the "
                                "query", c->rule_id, rc->track_column,
                                c->rule_id);
    }
    return 0;
}

/* ---- Keys ---------------------------------------------------------------- */

static int cell_is_empty(const struct md_cell *cell)
{
    return cell->kind == MD_J_NULL || cell->len == 0;
}

/*
 * Copy a cell's text as a C string.  An embedded NUL byte (which a C
 * string cannot hold) becomes U+FFFD, and lower folds ASCII letters.
 */
static char *cell_text(const struct md_cell *cell, int lower)
{
    size_t nuls = 0;
    char *text;
    char *p;

    if (cell->kind == MD_J_NULL)
        return md_strdup("");
    for (const char *q = memchr(cell->text, '\0', cell->len); q != NULL;
         q = memchr(q + 1, '\0', cell->len - (size_t)(q + 1 - cell->text)))
        nuls++;
    /* Each NUL grows by 2 bytes into U+FFFD; nuls <= len. */
    if (cell->len > (SIZE_MAX - 1) / 3)
        return NULL;
    text = malloc(cell->len + 2 * nuls + 1);
    if (text == NULL)
        return NULL;
    p = text;
    for (size_t i = 0; i < cell->len; i++) {
        char ch = cell->text[i];

        if (ch == '\0') {
            memcpy(p, "\xEF\xBF\xBD", 3);
            p += 3;
        } else if (lower && ch >= 'A' && ch <= 'Z') {
            *p++ = (char)(ch - 'A' + 'a');
        } else {
            *p++ = ch;
        }
    }
    *p = '\0';
    return text;
}

/* Set *key to the row's key, or to NULL when a part is empty or null.
 * Returns -1 only when out of memory. */
static int row_key(const struct diff_ctx *c, size_t row, char **key)
{
    json_t *parts = NULL;

    *key = NULL;
    for (size_t i = 0; i < c->key.ncols; i++) {
        if (cell_is_empty(md_table_cell(c->table, row, c->key.cols[i])))
            return 0;
    }
    if (c->key.ncols == 1) {
        *key = cell_text(md_table_cell(c->table, row, c->key.cols[0]),
                         c->key.lower[0]);
        return *key == NULL ? -1 : 0;
    }

    parts = json_array();
    if (parts == NULL)
        return -1;
    for (size_t i = 0; i < c->key.ncols; i++) {
        char *text = cell_text(md_table_cell(c->table, row, c->key.cols[i]),
                               c->key.lower[i]);

        if (text == NULL || json_array_append_new(parts,
                                                  json_string(text)) != 0) {
            free(text);
            json_decref(parts);
            return -1;
        }
        free(text);
    }
    *key = json_dumps(parts, JSON_COMPACT);
    json_decref(parts);
    return *key == NULL ? -1 : 0;
}

static int compare_keyed_rows(const void *a, const void *b)
{
    const struct keyed_row *x = a;
    const struct keyed_row *y = b;
    int rc = strcmp(x->key, y->key);

    if (rc != 0)
        return rc;
    return x->row < y->row ? -1 : x->row > y->row;
}

static int compare_entity_ptrs(const void *a, const void *b)
{
    const struct md_entity *const *x = a;
    const struct md_entity *const *y = b;

    return strcmp((*x)->key, (*y)->key);
}

/* The previous entity of key, or NULL; marks it as seen in this run. */
static const struct md_entity *find_prev(struct diff_ctx *c, const char *key)
{
    size_t lo = 0;
    size_t hi = c->prev->nentities;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int rc = strcmp(key, c->prev_sorted[mid]->key);

        if (rc == 0) {
            c->prev_seen[mid] = 1;
            return c->prev_sorted[mid];
        }
        if (rc < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- Appending results --------------------------------------------------- */

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

/* Append a zeroed event of kind with a copy of key and row_json. */
static struct md_event *add_event(struct diff_ctx *c, enum md_event_kind kind,
                                  const char *key, const char *row_json)
{
    struct md_diff *d = c->out;
    struct md_event *ev;

    if (grow((void **)&d->events, &c->events_cap, d->nevents,
             sizeof(*d->events)) != 0)
        return NULL;
    ev = &d->events[d->nevents];
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->first_seen = MD_STORE_TIME_NONE;
    ev->last_seen = MD_STORE_TIME_NONE;
    ev->key = md_strdup(key);
    ev->row_json = md_strdup(row_json);
    if (ev->key == NULL || (row_json != NULL && ev->row_json == NULL)) {
        md_event_clear(ev);
        return NULL;
    }
    d->nevents++;
    d->event_counts[kind]++;
    return ev;
}

static char *row_json_text(const struct md_table *t, size_t row,
                           struct md_error *err)
{
    struct md_buf b = MD_BUF_INIT;
    char *text;

    if (md_store_row_text(t, row, NULL, &b, err) != 0) {
        md_buf_free(&b);
        return NULL;
    }
    text = md_buf_detach(&b);
    if (text == NULL)
        oom(err);
    return text;
}

static int add_empty_key_event(struct diff_ctx *c, size_t row,
                               struct md_error *err)
{
    char *json = row_json_text(c->table, row, err);
    struct md_event *ev;

    if (json == NULL)
        return -1;
    ev = add_event(c, MD_EVENT_EMPTY_KEY, "", json);
    free(json);
    return ev == NULL ? oom(err) : 0;
}

/* ---- Merging one key's rows ---------------------------------------------- */

/* The merge of the rows sharing one key. */
struct merged {
    size_t newest_row;          /* latest LastSeen, else the last row */
    size_t earliest_row;        /* earliest FirstSeen */
    int has_first_seen;
    md_instant first_seen;
    int has_last_seen;
    md_instant last_seen;
    int has_count;
    int64_t count;
    const struct md_cell *name; /* newest non-empty DeviceName */
    md_instant name_seen;
};

static int64_t add_saturating(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b)
        return INT64_MIN;
    return a + b;
}

static void merge_row(const struct diff_ctx *c, size_t row, struct merged *m)
{
    const struct md_table *t = c->table;
    md_instant seen = MD_STORE_TIME_NONE;

    if (c->cols.first_seen >= 0) {
        const struct md_cell *fs = md_table_cell(t, row, c->cols.first_seen);

        if (fs->kind != MD_J_NULL &&
            (!m->has_first_seen || fs->v.t < m->first_seen)) {
            m->has_first_seen = 1;
            m->first_seen = fs->v.t;
            m->earliest_row = row;
        }
    }
    if (c->cols.last_seen >= 0) {
        const struct md_cell *ls = md_table_cell(t, row, c->cols.last_seen);

        if (ls->kind != MD_J_NULL) {
            seen = ls->v.t;
            if (!m->has_last_seen || ls->v.t >= m->last_seen) {
                m->has_last_seen = 1;
                m->last_seen = ls->v.t;
                m->newest_row = row;
            }
        }
    }
    if (!m->has_last_seen)
        m->newest_row = row;
    if (c->cols.count >= 0) {
        const struct md_cell *n = md_table_cell(t, row, c->cols.count);

        if (n->kind != MD_J_NULL) {
            m->has_count = 1;
            m->count = add_saturating(m->count, n->v.i);
        }
    }
    if (c->cols.device_name >= 0) {
        const struct md_cell *name = md_table_cell(t, row,
                                                   c->cols.device_name);

        if (!cell_is_empty(name) &&
            (m->name == NULL || m->name_seen == MD_STORE_TIME_NONE ||
             (seen != MD_STORE_TIME_NONE && seen >= m->name_seen))) {
            m->name = name;
            m->name_seen = seen;
        }
    }
}

/* The newest row as JSON, with the merged FirstSeen and Count. */
static char *merged_row_json(const struct diff_ctx *c, const struct merged *m,
                             size_t nrows, struct md_error *err)
{
    const struct md_table *t = c->table;
    int earlier_first = m->has_first_seen &&
                        m->earliest_row != m->newest_row;
    int summed = m->has_count && nrows > 1;
    const struct md_cell **cells = NULL;
    struct md_cell count;
    char number[32];
    struct md_buf b = MD_BUF_INIT;
    char *text = NULL;

    if (earlier_first || summed) {
        cells = calloc(t->ncolumns, sizeof(*cells));
        if (cells == NULL) {
            oom(err);
            return NULL;
        }
    }
    if (earlier_first)
        cells[c->cols.first_seen] =
            md_table_cell(t, m->earliest_row, (size_t)c->cols.first_seen);
    if (summed) {
        memset(&count, 0, sizeof(count));
        count.kind = MD_J_INTEGER;
        count.len = (size_t)snprintf(number, sizeof(number), "%lld",
                                     (long long)m->count);
        count.text = number;
        count.v.i = m->count;
        cells[c->cols.count] = &count;
    }
    if (md_store_row_text(t, m->newest_row, cells, &b, err) == 0) {
        text = md_buf_detach(&b);
        if (text == NULL)
            oom(err);
    }
    md_buf_free(&b);
    free(cells);
    return text;
}

/* ---- Tracked values ------------------------------------------------------ */

static int has_value(char *const *values, size_t n, const char *value)
{
    for (size_t i = 0; i < n; i++) {
        if (md_strcasecmp(values[i], value) == 0)
            return 1;
    }
    return 0;
}

/* Add value to the entity's set when absent, setting *added to 1 if so. */
static int add_tracked_value(struct md_entity *e, const char *value,
                             int *added)
{
    char **values;

    *added = 0;
    if (has_value(e->tracked_values, e->ntracked_values, value))
        return 0;
    values = realloc(e->tracked_values,
                     (e->ntracked_values + 1) * sizeof(*values));
    if (values == NULL)
        return -1;
    e->tracked_values = values;
    values[e->ntracked_values] = md_strdup(value);
    if (values[e->ntracked_values] == NULL)
        return -1;
    e->ntracked_values++;
    *added = 1;
    return 0;
}

/* ---- One key ------------------------------------------------------------- */

static md_instant min_time(md_instant a, int has_b, md_instant b)
{
    if (!has_b)
        return a;
    if (a == MD_STORE_TIME_NONE || b < a)
        return b;
    return a;
}

static md_instant max_time(md_instant a, int has_b, md_instant b)
{
    if (!has_b)
        return a;
    if (a == MD_STORE_TIME_NONE || b > a)
        return b;
    return a;
}

/* Copy the previous state of the key (or start a new one) into e. */
static int entity_start(const struct diff_ctx *c, const char *key,
                        const struct md_entity *prev, struct md_entity *e)
{
    memset(e, 0, sizeof(*e));
    e->key = md_strdup(key);
    if (e->key == NULL)
        return -1;
    e->first_run = prev != NULL ? prev->first_run : c->run->id;
    e->first_seen = prev != NULL ? prev->first_seen : c->run->started;
    e->telemetry_first_seen =
        prev != NULL ? prev->telemetry_first_seen : MD_STORE_TIME_NONE;
    e->telemetry_last_seen =
        prev != NULL ? prev->telemetry_last_seen : MD_STORE_TIME_NONE;
    e->runs_seen = prev != NULL ? prev->runs_seen : 0;
    if (prev != NULL) {
        int added;

        e->device_id = md_strdup(prev->device_id);
        e->device_name = md_strdup(prev->device_name);
        if ((prev->device_id != NULL && e->device_id == NULL) ||
            (prev->device_name != NULL && e->device_name == NULL))
            return -1;
        for (size_t i = 0; i < prev->ntracked_values; i++) {
            if (add_tracked_value(e, prev->tracked_values[i], &added) != 0)
                return -1;
        }
    }
    return 0;
}

/* Replace *field with the cell's text when the cell is not empty. */
static int update_text(char **field, const struct md_cell *cell)
{
    char *text;

    if (cell == NULL || cell_is_empty(cell))
        return 0;
    text = cell_text(cell, 0);
    if (text == NULL)
        return -1;
    free(*field);
    *field = text;
    return 0;
}

/* The event for a key seen before (or none), by the rules in diff.h. */
static enum md_event_kind classify(const struct diff_ctx *c,
                                   const struct md_entity *prev)
{
    int64_t limit = c->opts->realert_after;

    if (c->out->baseline)
        return MD_EVENT_BASELINE;
    if (prev == NULL)
        return MD_EVENT_NEW;
    if (limit > 0 && limit <= INT64_MAX / MD_TICKS_PER_SECOND &&
        c->run->started - prev->last_seen > limit * MD_TICKS_PER_SECOND)
        return MD_EVENT_RETURNED;
    return MD_EVENT_KIND_COUNT;
}

static int add_key_event(struct diff_ctx *c, enum md_event_kind kind,
                         const struct md_entity *e,
                         const struct md_entity *prev, struct md_error *err)
{
    struct md_event *ev = add_event(c, kind, e->key, e->row_json);

    if (ev == NULL)
        return oom(err);
    ev->first_seen = e->first_seen;
    if (kind == MD_EVENT_RETURNED) {
        ev->last_seen = prev->last_seen;
        ev->days_away = (c->run->started - prev->last_seen) / TICKS_PER_DAY;
    }
    return 0;
}

static int add_renamed_event(struct diff_ctx *c, const struct md_entity *e,
                             const struct md_entity *prev,
                             struct md_error *err)
{
    struct md_event *ev = add_event(c, MD_EVENT_RENAMED, e->key,
                                    e->row_json);

    if (ev == NULL)
        return oom(err);
    ev->first_seen = e->first_seen;
    ev->old_name = md_strdup(prev->device_name);
    ev->new_name = md_strdup(e->device_name);
    if (ev->old_name == NULL || ev->new_name == NULL)
        return oom(err);
    return 0;
}

/* Record the key's track values; a value new on a known key is an event
 * when report_new is set. */
static int track_values(struct diff_ctx *c, const struct keyed_row *rows,
                        size_t n, struct md_entity *e, int report_new,
                        int *reported, struct md_error *err)
{
    for (size_t i = 0; i < n && c->cols.track >= 0; i++) {
        const struct md_cell *cell = md_table_cell(c->table, rows[i].row,
                                                   (size_t)c->cols.track);
        char *value;
        int added;
        struct md_event *ev;

        if (cell_is_empty(cell))
            continue;
        value = cell_text(cell, 0);
        if (value == NULL || add_tracked_value(e, value, &added) != 0) {
            free(value);
            return oom(err);
        }
        if (added && report_new) {
            ev = add_event(c, MD_EVENT_TRACKED, e->key, e->row_json);
            if (ev != NULL)
                ev->value = md_strdup(value);
            if (ev == NULL || ev->value == NULL) {
                free(value);
                return oom(err);
            }
            ev->first_seen = e->first_seen;
            *reported = 1;
        }
        free(value);
    }
    return 0;
}

static int is_renamed(const struct diff_ctx *c, const struct md_entity *e,
                      const struct md_entity *prev)
{
    return c->cols.device_id >= 0 && c->cols.device_name >= 0 &&
           prev->device_name != NULL && e->device_name != NULL &&
           md_strcasecmp(prev->device_name, e->device_name) != 0;
}

/* Copy the exclusion of an entry, or of a previous entity when entry
 * is NULL, into the four fields given. */
static int copy_exclusion(const struct md_exclusion *entry,
                          const struct md_entity *prev, char **id,
                          char **reason, char **owner, md_instant *expires)
{
    const char *src_id;
    const char *src_reason;
    const char *src_owner;

    /* Callers pass entry or prev.  Checking it keeps cppcheck and the
     * clang analyzer from following a path where both are NULL. */
    if (entry == NULL && prev == NULL)
        return -1;
    src_id = entry != NULL ? entry->id : prev->excluded_by;
    src_reason = entry != NULL ? entry->reason : prev->exclusion_reason;
    src_owner = entry != NULL ? entry->owner : prev->exclusion_owner;

    *id = md_strdup(src_id);
    *reason = md_strdup(src_reason);
    *owner = md_strdup(src_owner);
    *expires = entry != NULL ? entry->expires : prev->exclusion_expires;
    if (*id == NULL || (src_reason != NULL && *reason == NULL) ||
        (src_owner != NULL && *owner == NULL))
        return -1;
    return 0;
}

/* Record that entry excludes the key whose new state is e. */
static int add_excluded_event(struct diff_ctx *c, struct md_entity *e,
                              const struct md_entity *prev,
                              const struct md_exclusion *entry,
                              struct md_error *err)
{
    struct md_event *ev = add_event(c, MD_EVENT_EXCLUDED, e->key,
                                    e->row_json);

    if (ev == NULL)
        return oom(err);
    ev->first_seen = e->first_seen;
    ev->first_excluded = prev == NULL || prev->excluded_by == NULL ||
                         md_strcasecmp(prev->excluded_by, entry->id) != 0;
    if (copy_exclusion(entry, NULL, &ev->exclusion_id, &ev->exclusion_reason,
                       &ev->exclusion_owner, &ev->exclusion_expires) != 0 ||
        copy_exclusion(entry, NULL, &e->excluded_by, &e->exclusion_reason,
                       &e->exclusion_owner, &e->exclusion_expires) != 0)
        return oom(err);
    return 0;
}

/* Report once a key that its previous exclusion no longer covers. */
static int add_uncovered_event(struct diff_ctx *c, const struct md_entity *e,
                               const struct md_entity *prev,
                               struct md_error *err)
{
    struct md_event *ev = add_event(c, MD_EVENT_UNCOVERED, e->key,
                                    e->row_json);

    if (ev == NULL)
        return oom(err);
    ev->first_seen = e->first_seen;
    ev->last_seen = prev->last_seen;
    if (copy_exclusion(NULL, prev, &ev->exclusion_id, &ev->exclusion_reason,
                       &ev->exclusion_owner, &ev->exclusion_expires) != 0)
        return oom(err);
    return 0;
}

/* Add the events of one key, whose new state is e; excluded is the entry
 * that covers all its rows, or NULL. */
static int key_events(struct diff_ctx *c, const struct keyed_row *rows,
                      size_t n, struct md_entity *e,
                      const struct md_entity *prev,
                      const struct md_exclusion *excluded,
                      struct md_error *err)
{
    enum md_event_kind kind = classify(c, prev);
    int reported = 0;

    /* Known values are recorded, but not reported, so that a key that
     * is uncovered later does not report them as new. */
    if (excluded != NULL) {
        if (add_excluded_event(c, e, prev, excluded, err) != 0)
            return -1;
        return track_values(c, rows, n, e, 0, &reported, err);
    }
    if (prev != NULL && prev->excluded_by != NULL) {
        if (add_uncovered_event(c, e, prev, err) != 0)
            return -1;
        return track_values(c, rows, n, e, 0, &reported, err);
    }

    if (kind != MD_EVENT_KIND_COUNT) {
        if (add_key_event(c, kind, e, prev, err) != 0)
            return -1;
        return track_values(c, rows, n, e, 0, &reported, err);
    }
    if (is_renamed(c, e, prev)) {
        if (add_renamed_event(c, e, prev, err) != 0)
            return -1;
        reported = 1;
    }
    if (track_values(c, rows, n, e, 1, &reported, err) != 0)
        return -1;
    if (!reported)
        c->out->unchanged_count++;
    return 0;
}

/* The entry that excludes a key: the one of its newest row, when every
 * row of the key matches an entry; else NULL. */
static const struct md_exclusion *key_exclusion(const struct keyed_row *rows,
                                                size_t n, size_t newest_row)
{
    const struct md_exclusion *entry = NULL;

    for (size_t i = 0; i < n; i++) {
        if (rows[i].excluded == NULL)
            return NULL;
        if (rows[i].row == newest_row)
            entry = rows[i].excluded;
    }
    return entry != NULL ? entry : rows[0].excluded;
}

/* Turn the rows sharing one key into its entity and events. */
static int diff_key(struct diff_ctx *c, const struct keyed_row *rows,
                    size_t n, struct md_error *err)
{
    const struct md_entity *prev = find_prev(c, rows[0].key);
    struct md_diff *d = c->out;
    struct md_entity *e;
    struct merged m;

    memset(&m, 0, sizeof(m));
    m.name_seen = MD_STORE_TIME_NONE;
    for (size_t i = 0; i < n; i++)
        merge_row(c, rows[i].row, &m);

    if (grow((void **)&d->entities, &c->entities_cap, d->nentities,
             sizeof(*d->entities)) != 0)
        return oom(err);
    e = &d->entities[d->nentities++];
    if (entity_start(c, rows[0].key, prev, e) != 0)
        return oom(err);
    e->last_run = c->run->id;
    e->last_seen = c->run->started;
    e->runs_seen++;
    e->telemetry_first_seen = min_time(e->telemetry_first_seen,
                                       m.has_first_seen, m.first_seen);
    e->telemetry_last_seen = max_time(e->telemetry_last_seen,
                                      m.has_last_seen, m.last_seen);
    if ((c->cols.device_id >= 0 &&
         update_text(&e->device_id,
                     md_table_cell(c->table, m.newest_row,
                                   (size_t)c->cols.device_id)) != 0) ||
        update_text(&e->device_name, m.name) != 0)
        return oom(err);
    e->row_json = merged_row_json(c, &m, n, err);
    if (e->row_json == NULL)
        return -1;
    d->key_count++;
    return key_events(c, rows, n, e, prev,
                      key_exclusion(rows, n, m.newest_row), err);
}

/* ---- The whole run ------------------------------------------------------- */

/* Sort the result's keyed rows; rows with an empty key become events. */
static int collect_rows(struct diff_ctx *c, struct keyed_row **out,
                        size_t *n, struct md_error *err)
{
    struct keyed_row *rows = NULL;
    size_t count = 0;

    if (c->table->nrows > 0) {
        rows = calloc(c->table->nrows, sizeof(*rows));
        if (rows == NULL)
            return oom(err);
    }
    for (size_t row = 0; row < c->table->nrows; row++) {
        char *key;

        if (row_key(c, row, &key) != 0)
            goto oom_fail;
        if (key == NULL) {
            if (add_empty_key_event(c, row, err) != 0)
                goto fail;
            continue;
        }
        rows[count].key = key;
        rows[count].row = row;
        count++;
        if (c->matcher != NULL &&
            md_exclusion_match_row(c->matcher, row, &rows[count - 1].excluded,
                                   err) != 0)
            goto fail;
    }
    if (count > 1)
        qsort(rows, count, sizeof(*rows), compare_keyed_rows);
    *out = rows;
    *n = count;
    return 0;

oom_fail:
    oom(err);
fail:
    for (size_t i = 0; i < count; i++)
        free(rows[i].key);
    free(rows);
    return -1;
}

static int sort_prev(struct diff_ctx *c, struct md_error *err)
{
    size_t n = c->prev->nentities;

    if (n == 0)
        return 0;
    c->prev_sorted = calloc(n, sizeof(*c->prev_sorted));
    c->prev_seen = calloc(n, 1);
    if (c->prev_sorted == NULL || c->prev_seen == NULL)
        return oom(err);
    for (size_t i = 0; i < n; i++)
        c->prev_sorted[i] = &c->prev->entities[i];
    qsort(c->prev_sorted, n, sizeof(*c->prev_sorted), compare_entity_ptrs);
    return 0;
}

static int gone_events(struct diff_ctx *c, struct md_error *err)
{
    const struct md_rule_state *prev = c->prev;

    if (c->out->baseline || c->out->query_changed || c->table->truncated ||
        prev->reference_run == 0)
        return 0;
    for (size_t i = 0; i < prev->nentities; i++) {
        const struct md_entity *e = c->prev_sorted[i];
        struct md_event *ev;

        if (c->prev_seen[i] || e->last_run < prev->reference_run ||
            e->excluded_by != NULL)
            continue;
        ev = add_event(c, MD_EVENT_GONE, e->key, e->row_json);
        if (ev == NULL)
            return oom(err);
        ev->first_seen = e->first_seen;
        ev->last_seen = e->last_seen;
    }
    return 0;
}

static void decide_baseline(struct diff_ctx *c)
{
    const struct md_rule_state *prev = c->prev;
    struct md_diff *d = c->out;

    d->query_changed = prev->last_ok_run != 0 &&
                       strcmp(prev->last_ok_query_hash,
                              c->run->query_hash) != 0;
    d->baseline = c->opts->first_run == MD_FIRST_RUN_BASELINE &&
                  (prev->last_ok_run == 0 || d->query_changed);
}

/* Prepare the exclusion matcher and copy its problems into the diff. */
static int prepare_exclusions(struct diff_ctx *c, struct md_error *err)
{
    const struct md_exclusion_problem *problems;
    struct md_diff *d = c->out;
    size_t n;

    if (c->opts->exclusions == NULL)
        return 0;
    if (md_exclusion_matcher_new(c->opts->exclusions, c->rule_id, c->table,
                                 c->run->started, &c->matcher, err) != 0)
        return -1;
    problems = md_exclusion_matcher_problems(c->matcher, &n);
    if (n == 0)
        return 0;
    d->exclusion_issues = calloc(n, sizeof(*d->exclusion_issues));
    if (d->exclusion_issues == NULL)
        return oom(err);
    for (size_t i = 0; i < n; i++) {
        struct md_exclusion_issue *is = &d->exclusion_issues[i];

        d->nexclusion_issues++;
        is->entry_id = md_strdup(problems[i].entry->id);
        is->message = md_strdup(problems[i].message);
        if (is->entry_id == NULL || is->message == NULL)
            return oom(err);
    }
    return 0;
}

static int diff_all(struct diff_ctx *c, struct md_error *err)
{
    struct keyed_row *rows = NULL;
    size_t nrows = 0;
    int rc = -1;

    /* An empty result needs no key: some services send no columns with
     * it, and it still makes the reference set gone. */
    if (c->table->nrows > 0 &&
        (resolve_key(c, err) != 0 || resolve_columns(c, err) != 0))
        return -1;
    if (sort_prev(c, err) != 0 || prepare_exclusions(c, err) != 0)
        return -1;
    decide_baseline(c);
    if (collect_rows(c, &rows, &nrows, err) != 0)
        return -1;

    for (size_t i = 0; i < nrows;) {
        size_t j = i + 1;

        while (j < nrows && strcmp(rows[i].key, rows[j].key) == 0)
            j++;
        if (diff_key(c, &rows[i], j - i, err) != 0)
            goto out;
        i = j;
    }
    rc = gone_events(c, err);

out:
    for (size_t i = 0; i < nrows; i++)
        free(rows[i].key);
    free(rows);
    return rc;
}

int md_diff_compute(const struct md_diff_options *opts,
                    const struct md_run *run, const struct md_table *table,
                    const struct md_rule_state *prev, struct md_diff *out,
                    struct md_error *err)
{
    struct diff_ctx c;
    int rc;

    memset(out, 0, sizeof(*out));
    memset(&c, 0, sizeof(c));
    c.opts = opts;
    c.rule_id = opts->rule_id != NULL ? opts->rule_id : run->rule_id;
    if (c.rule_id == NULL)
        c.rule_id = "?";
    c.run = run;
    c.table = table;
    c.prev = prev;
    c.out = out;

    rc = diff_all(&c, err);
    free(c.key.cols);
    free(c.key.lower);
    free(c.prev_sorted);
    free(c.prev_seen);
    md_exclusion_matcher_free(c.matcher);
    if (rc != 0)
        md_diff_free(out);
    return rc;
}

/* ---- Recording a run ----------------------------------------------------- */

int md_diff_record_run(struct md_store *st, int64_t run_id,
                       const struct md_table *table,
                       const struct md_diff_options *opts,
                       md_instant ended, enum md_send_when outbox_when,
                       struct md_diff *out, int64_t *outbox_id,
                       struct md_error *err)
{
    struct md_run run;
    struct md_rule_state prev;
    struct md_diff diff;
    struct md_run_finish fin;
    int rc = -1;

    memset(&prev, 0, sizeof(prev));
    memset(&diff, 0, sizeof(diff));
    if (md_store_run_get(st, run_id, &run, err) != 0)
        return -1;
    if (md_store_load_state(st, run.rule_id, &prev, err) != 0 ||
        md_diff_compute(opts, &run, table, &prev, &diff, err) != 0)
        goto out;

    memset(&fin, 0, sizeof(fin));
    fin.ended = ended;
    fin.table = table;
    fin.baseline = diff.baseline;
    fin.key_count = diff.key_count;
    fin.unchanged_count = diff.unchanged_count;
    fin.events = diff.events;
    fin.nevents = diff.nevents;
    fin.entities = diff.entities;
    fin.nentities = diff.nentities;
    fin.exclusion_issues = diff.exclusion_issues;
    fin.nexclusion_issues = diff.nexclusion_issues;
    for (size_t i = 0; i < diff.nexclusion_issues; i++)
        md_warn("rule %s: %s", run.rule_id, diff.exclusion_issues[i].message);
    fin.add_outbox = outbox_when == MD_SEND_ALWAYS ||
                     (outbox_when == MD_SEND_NEW &&
                      md_diff_is_newsworthy(&diff));
    if (md_store_run_finish_ok(st, run_id, &fin, outbox_id, err) != 0)
        goto out;
    if (out != NULL) {
        *out = diff;
        memset(&diff, 0, sizeof(diff));
    }
    rc = 0;

out:
    md_diff_free(&diff);
    md_rule_state_free(&prev);
    md_run_clear(&run);
    return rc;
}

/* ---- JSON ---------------------------------------------------------------- */

static json_t *time_json(md_instant t)
{
    char text[MD_TIME_TEXT_MAX];

    if (t == MD_STORE_TIME_NONE)
        return json_null();
    if (md_time_format(t, text, sizeof(text)) == NULL)
        return json_null();
    return json_string(text);
}

static json_t *string_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

/* Set obj[name] = value, taking the reference; -1 when value is NULL or
 * memory ran out. */
static int set(json_t *obj, const char *name, json_t *value)
{
    if (value == NULL)
        return -1;
    return json_object_set_new(obj, name, value);
}

static json_t *rule_json(const struct md_run_diff *d)
{
    json_t *rule = json_object();

    if (rule == NULL ||
        set(rule, "id", string_or_null(d->run.rule_id)) != 0 ||
        set(rule, "name", string_or_null(d->rule_name)) != 0 ||
        set(rule, "file", string_or_null(d->rule_file)) != 0) {
        json_decref(rule);
        return NULL;
    }
    return rule;
}

static json_t *error_json(const struct md_run *r)
{
    json_t *e;

    if (r->status == MD_RUN_OK || r->status == MD_RUN_RUNNING)
        return json_null();
    e = json_object();
    if (e == NULL ||
        set(e, "kind", json_string(md_err_kind_name(r->error_kind))) != 0 ||
        set(e, "message", string_or_null(r->error_message)) != 0 ||
        set(e, "http_status", r->http_status != 0
                                  ? json_integer(r->http_status)
                                  : json_null()) != 0 ||
        set(e, "request_id", string_or_null(r->request_id)) != 0) {
        json_decref(e);
        return NULL;
    }
    return e;
}

static json_t *run_json(const struct md_run *r)
{
    json_t *run = json_object();

    if (run == NULL ||
        set(run, "id", json_integer(r->id)) != 0 ||
        set(run, "status", json_string(md_run_status_name(r->status))) != 0 ||
        set(run, "tenant", string_or_null(r->tenant)) != 0 ||
        set(run, "backend", string_or_null(r->backend)) != 0 ||
        set(run, "due", time_json(r->due)) != 0 ||
        set(run, "started", time_json(r->started)) != 0 ||
        set(run, "ended", time_json(r->ended)) != 0 ||
        set(run, "rows", json_integer(r->row_count)) != 0 ||
        set(run, "truncated", json_boolean(r->truncated)) != 0 ||
        set(run, "query_hash", json_string(r->query_hash)) != 0 ||
        set(run, "exclusions_hash", string_or_null(r->exclusions_hash)) != 0 ||
        set(run, "period", json_integer(r->period)) != 0 ||
        set(run, "error", error_json(r)) != 0) {
        json_decref(run);
        return NULL;
    }
    return run;
}

static json_t *expiry_json(md_instant t)
{
    char text[MD_TIME_TEXT_MAX];

    if (t == MD_STORE_TIME_NONE)
        return json_null();
    return json_string(md_exclusion_format_expiry(t, text, sizeof(text)));
}

/* The exclusion entry of an excluded or uncovered event. */
static json_t *exclusion_json(const struct md_event *ev)
{
    json_t *o = json_object();

    if (o == NULL ||
        set(o, "id", string_or_null(ev->exclusion_id)) != 0 ||
        set(o, "reason", string_or_null(ev->exclusion_reason)) != 0 ||
        set(o, "owner", string_or_null(ev->exclusion_owner)) != 0 ||
        set(o, "expires", expiry_json(ev->exclusion_expires)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The event's row with the mdhunt_* members of its kind. */
static json_t *event_row_json(const struct md_event *ev)
{
    json_t *row = NULL;
    int rc;

    if (ev->row_json != NULL)
        row = json_loads(ev->row_json, JSON_ALLOW_NUL, NULL);
    if (row == NULL || !json_is_object(row)) {
        json_decref(row);
        row = json_object();
        if (row == NULL)
            return NULL;
    }
    rc = set(row, "mdhunt_event",
             json_string(md_event_kind_name(ev->kind))) |
         set(row, "mdhunt_key", json_string(ev->key)) |
         set(row, "mdhunt_first_seen", time_json(ev->first_seen));
    if (ev->kind == MD_EVENT_RETURNED || ev->kind == MD_EVENT_GONE)
        rc |= set(row, "mdhunt_last_seen", time_json(ev->last_seen));
    if (ev->kind == MD_EVENT_RETURNED)
        rc |= set(row, "mdhunt_days_away", json_integer(ev->days_away));
    if (ev->kind == MD_EVENT_RENAMED)
        rc |= set(row, "mdhunt_old_name", string_or_null(ev->old_name)) |
              set(row, "mdhunt_new_name", string_or_null(ev->new_name));
    if (ev->kind == MD_EVENT_TRACKED)
        rc |= set(row, "mdhunt_value", string_or_null(ev->value));
    if (ev->kind == MD_EVENT_EXCLUDED || ev->kind == MD_EVENT_UNCOVERED)
        rc |= set(row, "mdhunt_exclusion", exclusion_json(ev));
    if (ev->kind == MD_EVENT_EXCLUDED)
        rc |= set(row, "mdhunt_first_excluded",
                  json_boolean(ev->first_excluded));
    if (rc != 0) {
        json_decref(row);
        return NULL;
    }
    return row;
}

/* The member of the diff document that lists events of kind. */
static const char *list_name(enum md_event_kind kind)
{
    switch (kind) {
    case MD_EVENT_NEW:
    case MD_EVENT_TRACKED:
        return "new";
    case MD_EVENT_RETURNED:
        return "returned";
    case MD_EVENT_GONE:
        return "gone";
    case MD_EVENT_RENAMED:
        return "renamed";
    case MD_EVENT_BASELINE:
        return "baseline_rows";
    case MD_EVENT_EXCLUDED:
        return "excluded";
    case MD_EVENT_UNCOVERED:
        return "uncovered";
    case MD_EVENT_EMPTY_KEY:
    default:
        return "empty_key";
    }
}

static int add_lists(json_t *doc, const struct md_run_diff *d)
{
    static const char *const lists[] = {
        "new", "gone", "returned", "renamed", "baseline_rows", "empty_key",
        "excluded", "uncovered"
    };

    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        if (set(doc, lists[i], json_array()) != 0)
            return -1;
    }
    for (size_t i = 0; i < d->nevents; i++) {
        json_t *list = json_object_get(doc, list_name(d->events[i].kind));
        json_t *row = event_row_json(&d->events[i]);

        if (row == NULL || json_array_append_new(list, row) != 0)
            return -1;
    }
    return 0;
}

static json_t *issues_json(const struct md_run_diff *d)
{
    json_t *list = json_array();

    for (size_t i = 0; list != NULL && i < d->nexclusion_issues; i++) {
        const struct md_exclusion_issue *is = &d->exclusion_issues[i];
        json_t *o = json_object();

        if (o == NULL || json_array_append_new(list, o) != 0 ||
            set(o, "entry", string_or_null(is->entry_id)) != 0 ||
            set(o, "message", string_or_null(is->message)) != 0) {
            json_decref(list);
            return NULL;
        }
    }
    return list;
}

json_t *md_diff_json(const struct md_run_diff *d, struct md_error *err)
{
    json_t *doc = json_object();

    if (doc == NULL ||
        set(doc, "format", json_string(MD_DIFF_JSON_FORMAT)) != 0 ||
        set(doc, "rule", rule_json(d)) != 0 ||
        set(doc, "run", run_json(&d->run)) != 0 ||
        set(doc, "baseline", json_boolean(d->run.baseline)) != 0 ||
        add_lists(doc, d) != 0 ||
        set(doc, "exclusion_issues", issues_json(d)) != 0 ||
        set(doc, "unchanged", json_integer(d->run.unchanged_count)) != 0) {
        json_decref(doc);
        md_error_set(err, MD_E_INTERNAL,
                     "cannot build the diff of run %lld as JSON: out of "
                     "memory or text that is not valid UTF-8",
                     (long long)d->run.id);
        return NULL;
    }
    return doc;
}
