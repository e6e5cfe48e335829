/*
 * The call budget and the CPU-quota pause, in memory or in a JSON file
 * shared between processes.  The file looks like this:
 *
 *   {"format": "mdhunt.budget/1",
 *    "apps": {"TENANT CLIENT_ID": {"calls": [[SECOND, COUNT], ...],
 *                                  "hold_until_ms": MS}},
 *    "tenants": {"TENANT": {"paused_until_ms": MS}}}
 *
 * SECOND is whole seconds and MS milliseconds since the Unix epoch.
 * "calls" lists the seconds at which calls were sent or reserved, oldest
 * first, and how many calls each second has.
 */
#include "mdhunt/budget.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mdhunt/buf.h"
#include "mdhunt/log.h"

#define FORMAT "mdhunt.budget/1"

#define MINUTE 60
#define HOUR 3600

/*
 * A call counted at second s happened in [s, s + 1), so two calls are
 * surely more than W seconds apart when their seconds differ by W + 1.
 */
#define WINDOW_SLACK 1

/* Reservations, holds and pauses further ahead than this come from a
 * clock that was moved back, and are dropped. */
#define MAX_AHEAD (2 * 86400)

/* A larger file cannot be a budget file, so it is started afresh. */
#define MAX_FILE_SIZE (8 * 1024 * 1024)

struct md_budget {
    char *path;             /* NULL in memory */
    int fd;                 /* -1 in memory */
    json_t *memory;         /* the state of a budget in memory */
    char *app_key;          /* "tenant client_id", lower case */
    char *tenant_key;       /* tenant, lower case */
    struct md_budget_limits limits;
    int damage_reported;
};

/* Seconds of the calls of one application, oldest first. */
struct call {
    int64_t second;
    long count;
};

struct calls {
    struct call *items;
    size_t n;
    size_t cap;
};

static char *lower_copy(const char *a, const char *b)
{
    struct md_buf out = MD_BUF_INIT;

    if (md_buf_puts(&out, a) != 0 ||
        (b != NULL && (md_buf_putc(&out, ' ') != 0 ||
                       md_buf_puts(&out, b) != 0))) {
        md_buf_free(&out);
        return NULL;
    }
    for (size_t i = 0; i < out.len; i++) {
        if (out.data[i] >= 'A' && out.data[i] <= 'Z')
            out.data[i] = (char)(out.data[i] - 'A' + 'a');
    }
    return md_buf_detach(&out);
}

static json_t *new_state(void)
{
    return json_pack("{s:s, s:{}, s:{}}", "format", FORMAT, "apps",
                     "tenants");
}

int md_budget_open(const char *path, const char *tenant,
                   const char *client_id,
                   const struct md_budget_limits *limits,
                   struct md_budget **out, struct md_error *err)
{
    struct md_budget *b;

    *out = NULL;
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    b->fd = -1;
    b->limits = *limits;
    b->app_key = lower_copy(tenant, client_id);
    b->tenant_key = lower_copy(tenant, NULL);
    if (path != NULL)
        b->path = md_strdup(path);
    else
        b->memory = new_state();
    if (b->app_key == NULL || b->tenant_key == NULL ||
        (path != NULL && b->path == NULL) ||
        (path == NULL && b->memory == NULL)) {
        md_budget_free(b);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }

    if (path != NULL) {
        b->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
        if (b->fd < 0) {
            md_error_set(err, MD_E_STORE, "cannot open the call budget "
                         "file %s: %s; give the mdhunt user write access "
                         "to its directory, or set [store] path", path,
                         strerror(errno));
            md_budget_free(b);
            return -1;
        }
    }
    *out = b;
    return 0;
}

void md_budget_free(struct md_budget *b)
{
    if (b == NULL)
        return;
    if (b->fd >= 0)
        close(b->fd);
    json_decref(b->memory);
    free(b->path);
    free(b->app_key);
    free(b->tenant_key);
    free(b);
}

const char *md_budget_path(const struct md_budget *b)
{
    return b->path;
}

/* ---- The state file ---------------------------------------------------- */

static int lock_file(struct md_budget *b, struct md_error *err)
{
    while (flock(b->fd, LOCK_EX) != 0) {
        if (errno != EINTR)
            return md_error_set(err, MD_E_STORE, "cannot lock the call "
                                "budget file %s: %s", b->path,
                                strerror(errno));
    }
    return 0;
}

static void unlock_file(struct md_budget *b)
{
    flock(b->fd, LOCK_UN);
}

static int read_file(struct md_budget *b, struct md_buf *text,
                     struct md_error *err)
{
    char chunk[8192];
    off_t offset = 0;
    ssize_t n;

    for (;;) {
        n = pread(b->fd, chunk, sizeof(chunk), offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return md_error_set(err, MD_E_STORE, "cannot read the call "
                                "budget file %s: %s", b->path,
                                strerror(errno));
        if (n == 0)
            return 0;
        if (text->len + (size_t)n > MAX_FILE_SIZE)
            return 1;
        if (md_buf_append(text, chunk, (size_t)n) != 0)
            return md_error_set(err, MD_E_INTERNAL, "out of memory");
        offset += n;
    }
}

static int is_state(json_t *root)
{
    json_t *format = json_object_get(root, "format");

    return json_is_object(root) && json_is_string(format) &&
           strcmp(json_string_value(format), FORMAT) == 0 &&
           json_is_object(json_object_get(root, "apps")) &&
           json_is_object(json_object_get(root, "tenants"));
}

/* Parse the file.  A damaged one gives a fresh state and one warning. */
static int load_file(struct md_budget *b, json_t **root,
                     struct md_error *err)
{
    struct md_buf text = MD_BUF_INIT;
    json_error_t jerr;
    int rc = read_file(b, &text, err);

    *root = NULL;
    if (rc < 0) {
        md_buf_free(&text);
        return -1;
    }
    if (rc == 0 && text.len > 0) {
        *root = json_loadb(text.data, text.len, 0, &jerr);
        if (*root != NULL && !is_state(*root)) {
            json_decref(*root);
            *root = NULL;
        }
    }
    if (*root == NULL && text.len > 0 && !b->damage_reported) {
        md_warn("the call budget file %s is damaged; starting it afresh "
                "(the calls counted in it are forgotten)", b->path);
        b->damage_reported = 1;
    }
    md_buf_free(&text);
    if (*root == NULL)
        *root = new_state();
    if (*root == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    return 0;
}

static int save_file(struct md_budget *b, json_t *root,
                     struct md_error *err)
{
    char *text = json_dumps(root, JSON_COMPACT);
    size_t len;
    size_t done = 0;
    ssize_t n;
    int rc = 0;

    if (text == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    len = strlen(text);
    if (ftruncate(b->fd, 0) != 0)
        rc = -1;
    while (rc == 0 && done < len) {
        n = pwrite(b->fd, text + done, len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = -1;
        else
            done += (size_t)n;
    }
    free(text);
    if (rc != 0)
        return md_error_set(err, MD_E_STORE, "cannot write the call budget "
                            "file %s: %s", b->path, strerror(errno));
    return 0;
}

/* An operation on the state.  It changes root and returns 0, or returns
 * -1 with err set. */
typedef int (*update_fn)(struct md_budget *b, json_t *root,
                         md_instant now, void *arg, struct md_error *err);

/* Run fn on the current state, holding the file's lock throughout, and
 * save what it changed. */
static int update(struct md_budget *b, md_instant now, update_fn fn,
                  void *arg, struct md_error *err)
{
    json_t *root;
    int rc;

    if (b->fd < 0)
        return fn(b, b->memory, now, arg, err);

    if (lock_file(b, err) != 0)
        return -1;
    rc = load_file(b, &root, err);
    if (rc == 0)
        rc = fn(b, root, now, arg, err);
    if (rc == 0)
        rc = save_file(b, root, err);
    unlock_file(b);
    json_decref(root);
    return rc;
}

/* ---- Calls ------------------------------------------------------------- */

static int64_t floor_seconds(md_instant t)
{
    int64_t s = t / MD_TICKS_PER_SECOND;

    return (t % MD_TICKS_PER_SECOND < 0) ? s - 1 : s;
}

/* Add count calls at second, keeping the seconds in order. */
static int calls_add(struct calls *c, int64_t second, long count)
{
    struct call *items;
    size_t at = c->n;
    size_t cap;

    while (at > 0 && c->items[at - 1].second > second)
        at--;
    if (at > 0 && c->items[at - 1].second == second) {
        c->items[at - 1].count += count;
        return 0;
    }
    if (c->n == c->cap) {
        cap = c->cap != 0 ? c->cap * 2 : 16;
        items = realloc(c->items, cap * sizeof(*items));
        if (items == NULL)
            return -1;
        c->items = items;
        c->cap = cap;
    }
    memmove(c->items + at + 1, c->items + at,
            (c->n - at) * sizeof(*c->items));
    c->items[at].second = second;
    c->items[at].count = count;
    c->n++;
    return 0;
}

/* Read an app's "calls" in order, keeping only the entries within the
 * last hour and not implausibly far ahead. */
static int read_calls(json_t *app, int64_t now_s, struct calls *c)
{
    json_t *list = json_object_get(app, "calls");
    json_t *entry;
    size_t i;

    json_array_foreach(list, i, entry) {
        json_t *second = json_array_get(entry, 0);
        json_t *count = json_array_get(entry, 1);
        int64_t s;
        json_int_t n;

        if (!json_is_integer(second) || !json_is_integer(count))
            continue;
        s = json_integer_value(second);
        n = json_integer_value(count);
        if (n <= 0 || n > 1000000 || s < now_s - HOUR - WINDOW_SLACK ||
            s > now_s + MAX_AHEAD)
            continue;
        if (calls_add(c, s, (long)n) != 0)
            return -1;
    }
    return 0;
}

static json_t *calls_to_json(const struct calls *c)
{
    json_t *list = json_array();

    for (size_t i = 0; list != NULL && i < c->n; i++) {
        if (json_array_append_new(list, json_pack("[I, I]",
                                  (json_int_t)c->items[i].second,
                                  (json_int_t)c->items[i].count)) != 0) {
            json_decref(list);
            return NULL;
        }
    }
    return list;
}

/*
 * Return the earliest second t at which one more call keeps every window
 * that contains it within limit.  Counting all calls after t - window,
 * the reserved ones ahead of t included, is enough: that is one window
 * and the slack after the second at which the newest calls add up to
 * limit.
 */
static int64_t earliest_within(const struct calls *c, long limit,
                               int64_t window)
{
    long sum = 0;

    for (size_t i = c->n; i-- > 0;) {
        sum += c->items[i].count;
        if (sum >= limit)
            return c->items[i].second + window + WINDOW_SLACK;
    }
    return INT64_MIN;
}

#define TICKS_PER_MS (MD_TICKS_PER_SECOND / 1000)

/* A recorded end time, or 0 when it is absent, past or implausibly far
 * ahead. */
static md_instant read_until(json_t *object, const char *key,
                             md_instant now)
{
    json_t *value = json_object_get(object, key);
    md_instant until;

    if (!json_is_integer(value))
        return 0;
    until = (md_instant)json_integer_value(value) * TICKS_PER_MS;
    if (until <= now || until > now + MAX_AHEAD * MD_TICKS_PER_SECOND)
        return 0;
    return until;
}

/* Get or create an object member. */
static json_t *member(json_t *parent, const char *key)
{
    json_t *child = json_object_get(parent, key);

    if (json_is_object(child))
        return child;
    child = json_object();
    if (child == NULL || json_object_set_new(parent, key, child) != 0)
        return NULL;
    return child;
}

/* Drop other entries that no longer matter, so the file stays small. */
static void prune(json_t *root, md_instant now)
{
    int64_t now_s = floor_seconds(now);
    json_t *apps = json_object_get(root, "apps");
    json_t *tenants = json_object_get(root, "tenants");
    const char *key;
    json_t *value;
    void *tmp;

    json_object_foreach_safe(apps, tmp, key, value) {
        struct calls c = { NULL, 0, 0 };
        int keep;

        keep = read_calls(value, now_s, &c) != 0 || c.n > 0 ||
               read_until(value, "hold_until_ms", now) != 0;
        free(c.items);
        if (!keep)
            json_object_del(apps, key);
    }
    json_object_foreach_safe(tenants, tmp, key, value) {
        if (read_until(value, "paused_until_ms", now) == 0)
            json_object_del(tenants, key);
    }
}

struct reserve_arg {
    md_instant latest;
    struct md_budget_slot *slot;
};

static md_instant max_instant(md_instant a, md_instant b)
{
    return a > b ? a : b;
}

/* The instant a second's count starts, or now for the current second. */
static md_instant second_start(int64_t second, md_instant now)
{
    if (second == INT64_MIN || second <= floor_seconds(now))
        return now;
    return second * MD_TICKS_PER_SECOND;
}

static int do_reserve(struct md_budget *b, json_t *root, md_instant now,
                      void *arg, struct md_error *err)
{
    struct reserve_arg *r = arg;
    struct md_budget_slot *slot = r->slot;
    int64_t now_s = floor_seconds(now);
    json_t *tenant;
    json_t *app;
    json_t *list;
    struct calls c = { NULL, 0, 0 };
    md_instant at;
    int rc = -1;

    prune(root, now);
    tenant = json_object_get(json_object_get(root, "tenants"),
                             b->tenant_key);
    slot->paused_until = read_until(tenant, "paused_until_ms", now);
    if (slot->paused_until != 0) {
        slot->at = slot->paused_until;
        return 0;
    }

    app = member(json_object_get(root, "apps"), b->app_key);
    if (app == NULL || read_calls(app, now_s, &c) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    at = now;
    at = max_instant(at, second_start(
        earliest_within(&c, b->limits.per_minute, MINUTE), now));
    at = max_instant(at, second_start(
        earliest_within(&c, b->limits.per_hour, HOUR), now));
    at = max_instant(at, read_until(app, "hold_until_ms", now));
    slot->at = at;

    if (at <= r->latest) {
        if (calls_add(&c, floor_seconds(at), 1) != 0) {
            md_error_set(err, MD_E_INTERNAL, "out of memory");
            goto out;
        }
        slot->reserved = 1;
    }
    list = calls_to_json(&c);
    if (list == NULL || json_object_set_new(app, "calls", list) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    rc = 0;

out:
    free(c.items);
    return rc;
}

int md_budget_reserve(struct md_budget *b, md_instant now,
                      md_instant latest, struct md_budget_slot *slot,
                      struct md_error *err)
{
    /* cppcheck-suppress ctuuninitvar ; slot is an output, filled below */
    struct reserve_arg arg = { latest, slot };

    memset(slot, 0, sizeof(*slot));
    slot->at = now;
    return update(b, now, do_reserve, &arg, err);
}

/* ---- Holds and pauses --------------------------------------------------- */

struct until_arg {
    const char *table;      /* "apps" or "tenants" */
    const char *key;
    const char *field;
    md_instant until;
};

static int do_set_until(struct md_budget *b, json_t *root, md_instant now,
                        void *arg, struct md_error *err)
{
    struct until_arg *u = arg;
    md_instant until = u->until;
    json_t *entry;

    (void)b;
    prune(root, now);
    if (until <= now)
        return 0;
    if (until > now + MAX_AHEAD * MD_TICKS_PER_SECOND)
        until = now + MAX_AHEAD * MD_TICKS_PER_SECOND;
    entry = member(json_object_get(root, u->table), u->key);
    if (entry == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    if (read_until(entry, u->field, now) >= until)
        return 0;
    if (json_object_set_new(entry, u->field, json_integer(
            (json_int_t)((until + TICKS_PER_MS - 1) / TICKS_PER_MS))) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    return 0;
}

int md_budget_hold(struct md_budget *b, md_instant now, md_instant until,
                   struct md_error *err)
{
    struct until_arg arg = { "apps", b->app_key, "hold_until_ms", until };

    return update(b, now, do_set_until, &arg, err);
}

int md_budget_pause_tenant(struct md_budget *b, md_instant now,
                           md_instant until, struct md_error *err)
{
    struct until_arg arg = {
        "tenants", b->tenant_key, "paused_until_ms", until
    };

    return update(b, now, do_set_until, &arg, err);
}

static int do_read_pause(struct md_budget *b, json_t *root, md_instant now,
                         void *arg, struct md_error *err)
{
    md_instant *until = arg;
    json_t *tenant = json_object_get(json_object_get(root, "tenants"),
                                     b->tenant_key);

    (void)err;
    *until = read_until(tenant, "paused_until_ms", now);
    return 0;
}

int md_budget_paused_until(struct md_budget *b, md_instant now,
                           md_instant *until, struct md_error *err)
{
    *until = 0;
    return update(b, now, do_read_pause, until, err);
}
