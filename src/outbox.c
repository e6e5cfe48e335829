/*
 * The mail outbox: composing digests and delivering them.  The contract
 * is in include/mdhunt/outbox.h.
 */
#include "mdhunt/outbox.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "mdhunt/buf.h"
#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"
#include "mdhunt/report.h"

/* Text of an error kept with a digest: "kind: message". */
#define LAST_ERROR_MAX (MD_ERR_MESSAGE_MAX + 32)

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
}

static md_instant seconds_to_ticks(int64_t seconds)
{
    md_instant ticks;

    if (seconds <= 0)
        return 0;
    if (__builtin_mul_overflow(seconds, MD_TICKS_PER_SECOND, &ticks))
        return INT64_MAX;
    return ticks;
}

/* A stored time for the report model, where 0 means unknown. */
static md_instant known_or_zero(md_instant t)
{
    return t == MD_STORE_TIME_NONE ? 0 : t;
}

/* ---- The runs a digest covers ------------------------------------------ */

static int compare_ids(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/*
 * Merge the runs finished since the previous digest with the runs of the
 * queued items into one ascending list without duplicates.
 */
static int covered_runs(const int64_t *after, size_t nafter,
                        const struct md_outbox_item *items, size_t nitems,
                        int64_t **out, size_t *n)
{
    size_t total = nafter;
    size_t count = 0;
    int64_t *ids;

    *out = NULL;
    *n = 0;
    for (size_t i = 0; i < nitems; i++)
        total += items[i].nrun_ids;
    if (total == 0)
        return 0;
    ids = malloc(total * sizeof(*ids));
    if (ids == NULL)
        return -1;
    memcpy(ids, after, nafter * sizeof(*ids));
    count = nafter;
    for (size_t i = 0; i < nitems; i++) {
        memcpy(ids + count, items[i].run_ids,
               items[i].nrun_ids * sizeof(*ids));
        count += items[i].nrun_ids;
    }
    qsort(ids, count, sizeof(*ids), compare_ids);

    *n = 0;
    for (size_t i = 0; i < count; i++) {
        if (*n == 0 || ids[*n - 1] != ids[i])
            ids[(*n)++] = ids[i];
    }
    *out = ids;
    return 0;
}

/* ---- Rules: health over the covered runs ------------------------------- */

/* Totals of the covered runs of one rule. */
struct rule_acc {
    struct md_run latest;       /* the newest covered run */
    int64_t latest_ok;          /* the newest covered successful run */
    long excluded;              /* its excluded devices */
    long runs;
    long failed;
    long truncated;
    long throttled;
};

struct compose_ctx {
    struct md_store *st;
    const struct md_config *cfg;
    const struct md_ruleset *rules;
    struct md_digest *digest;
    struct rule_acc *accs;      /* in the digest's rule order */
    size_t naccs;
    int64_t *runs;              /* covered, ascending */
    size_t nruns;
    unsigned char *has_events;  /* per run: events worth loading */
};

static void compose_ctx_free(struct compose_ctx *c)
{
    for (size_t i = 0; i < c->naccs; i++)
        md_run_clear(&c->accs[i].latest);
    free(c->accs);
    free(c->runs);
    free(c->has_events);
    md_digest_free(c->digest);
}

static long find_acc(const struct compose_ctx *c, const char *rule_id)
{
    for (size_t i = 0; i < c->naccs; i++) {
        if (strcmp(c->accs[i].latest.rule_id, rule_id) == 0)
            return (long)i;
    }
    return -1;
}

/* Whether a run stored events that the digest shows. */
static int run_has_events(const struct md_run *run)
{
    for (int k = 0; k < MD_EVENT_KIND_COUNT; k++) {
        if (k != MD_EVENT_EMPTY_KEY && run->event_counts[k] > 0)
            return 1;
    }
    return 0;
}

/* Add one run to its rule's totals.  When run is the rule's newest, the
 * totals take over its strings and run is left empty. */
static int count_run(struct compose_ctx *c, struct md_run *run)
{
    long i = find_acc(c, run->rule_id);
    struct rule_acc *acc;

    if (i < 0) {
        struct rule_acc *accs = realloc(c->accs,
                                        (c->naccs + 1) * sizeof(*accs));

        if (accs == NULL)
            return -1;
        c->accs = accs;
        i = (long)c->naccs++;
        memset(&c->accs[i], 0, sizeof(c->accs[i]));
    }
    acc = &c->accs[i];
    /* find_acc() returns an index only into a non-empty c->accs, which
     * the clang analyzer does not follow this deep. */
    /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
    acc->runs++;
    if (run->status == MD_RUN_FAILED)
        acc->failed++;
    if (run->status == MD_RUN_OK && run->truncated)
        acc->truncated++;
    if (run->error_kind == MD_E_THROTTLED || run->error_kind == MD_E_CPU_QUOTA)
        acc->throttled++;
    if (run->status == MD_RUN_OK && run->id > acc->latest_ok) {
        acc->latest_ok = run->id;
        acc->excluded = (long)run->event_counts[MD_EVENT_EXCLUDED];
    }
    if (run->id > acc->latest.id) {
        md_run_clear(&acc->latest);
        acc->latest = *run;
        memset(run, 0, sizeof(*run));
    }
    return 0;
}

static int load_runs(struct compose_ctx *c, struct md_error *err)
{
    int rc;

    c->has_events = calloc(c->nruns > 0 ? c->nruns : 1, 1);
    if (c->has_events == NULL)
        return oom(err);
    for (size_t i = 0; i < c->nruns; i++) {
        struct md_run run;

        if (md_store_run_get(c->st, c->runs[i], &run, err) != 0)
            return -1;
        c->has_events[i] = (unsigned char)run_has_events(&run);
        rc = count_run(c, &run);
        md_run_clear(&run);
        if (rc != 0)
            return oom(err);
    }
    return 0;
}

static int64_t rule_frequency(const struct md_rule *rule,
                              const struct md_config *cfg)
{
    if (rule != NULL && rule->frequency > 0)
        return rule->frequency;
    return cfg->schedule.default_frequency;
}

/* The excluded devices per entry and the exclusion issues of a rule's
 * newest covered successful run, as add_rule() passes them on. */
struct rule_exclusions {
    struct md_run_diff diff;            /* owns the strings */
    struct md_digest_exclusion *v;
    size_t n;
    const char **issues;
    size_t nissues;
};

static void rule_exclusions_free(struct rule_exclusions *rx)
{
    md_run_diff_clear(&rx->diff);
    free(rx->v);
    free(rx->issues);
    memset(rx, 0, sizeof(*rx));
}

static int count_exclusion(struct rule_exclusions *rx,
                           const struct md_event *ev)
{
    struct md_digest_exclusion *v;

    for (size_t i = 0; i < rx->n; i++) {
        if (strcmp(rx->v[i].id, ev->exclusion_id) == 0) {
            rx->v[i].devices++;
            return 0;
        }
    }
    v = realloc(rx->v, (rx->n + 1) * sizeof(*v));
    if (v == NULL)
        return -1;
    rx->v = v;
    memset(&v[rx->n], 0, sizeof(v[rx->n]));
    v[rx->n].id = ev->exclusion_id;
    v[rx->n].reason = ev->exclusion_reason;
    v[rx->n].owner = ev->exclusion_owner;
    v[rx->n].expires = known_or_zero(ev->exclusion_expires);
    v[rx->n].devices = 1;
    rx->n++;
    return 0;
}

static int load_rule_exclusions(struct compose_ctx *c, int64_t run_id,
                                struct rule_exclusions *rx,
                                struct md_error *err)
{
    memset(rx, 0, sizeof(*rx));
    if (run_id == 0)
        return 0;
    if (md_store_run_diff(c->st, run_id, &rx->diff, err) != 0)
        return -1;
    for (size_t i = 0; i < rx->diff.nevents; i++) {
        const struct md_event *ev = &rx->diff.events[i];

        if (ev->kind == MD_EVENT_EXCLUDED && ev->exclusion_id != NULL &&
            count_exclusion(rx, ev) != 0)
            return oom(err);
    }
    if (rx->diff.nexclusion_issues == 0)
        return 0;
    rx->issues = calloc(rx->diff.nexclusion_issues, sizeof(*rx->issues));
    if (rx->issues == NULL)
        return oom(err);
    for (size_t i = 0; i < rx->diff.nexclusion_issues; i++)
        rx->issues[rx->nissues++] = rx->diff.exclusion_issues[i].message;
    return 0;
}

/* Add the rule of acc to the digest with its metadata and health. */
static int add_rule(struct compose_ctx *c, const struct rule_acc *acc,
                    struct md_error *err)
{
    const struct md_run *run = &acc->latest;
    const struct md_rule *rule = NULL;
    struct md_rule_status status;
    struct md_digest_rule dr;
    struct rule_exclusions rx;
    md_instant first_started;
    int rc = -1;

    memset(&rx, 0, sizeof(rx));
    if (c->rules != NULL)
        rule = md_ruleset_find(c->rules, run->rule_id);
    if (md_store_rule_status(c->st, run->rule_id, &status, err) != 0)
        return -1;
    if (load_rule_exclusions(c, acc->latest_ok, &rx, err) != 0)
        goto out;
    if (md_store_rule_first_started(c->st, run->rule_id, &first_started,
                                    err) != 0)
        goto out;

    memset(&dr, 0, sizeof(dr));
    dr.rule_id = run->rule_id;
    dr.name = rule != NULL ? rule->name : status.name;
    if (rule != NULL) {
        dr.severity = rule->severity;
        dr.tactics = (const char *const *)rule->tactics;
        dr.ntactics = rule->ntactics;
        dr.techniques = (const char *const *)rule->techniques;
        dr.ntechniques = rule->ntechniques;
    }
    dr.backend = run->backend;
    dr.window_end = known_or_zero(run->started);
    if (run->period > 0 && dr.window_end != 0)
        dr.window_start = dr.window_end - seconds_to_ticks(run->period);
    dr.query_sha256 = run->query_hash[0] != '\0' ? run->query_hash : NULL;
    dr.frequency = rule_frequency(rule, c->cfg);
    dr.gone_after = run->period;
    dr.excluded = acc->excluded;
    dr.runs = acc->runs;
    dr.failed_runs = acc->failed;
    dr.truncated_runs = acc->truncated;
    dr.throttled_runs = acc->throttled;
    dr.consecutive_failures = (long)status.consecutive_failures;
    if (status.last_ok_run.id != 0)
        dr.last_success = known_or_zero(status.last_ok_run.ended);
    dr.first_run = known_or_zero(first_started);
    if (status.consecutive_failures > 0 && status.last_failed_run.id != 0) {
        dr.last_error_kind =
            md_err_kind_name(status.last_failed_run.error_kind);
        dr.last_error = status.last_failed_run.error_message;
    }
    dr.exclusions = rx.v;
    dr.nexclusions = rx.n;
    dr.exclusion_issues = rx.issues;
    dr.nexclusion_issues = rx.nissues;
    rc = md_digest_add_rule(c->digest, &dr, NULL, err);

out:
    rule_exclusions_free(&rx);
    md_rule_status_clear(&status);
    return rc;
}

/* ---- Hits: devices from the stored events ------------------------------ */

/* Whether name is a column that describes the device itself.  Every
 * other column of a row is shown with the hit. */
static int device_column(const char *name)
{
    static const char *const names[] = {
        "DeviceId", "DeviceName", "FirstSeen", "LastSeen"
    };

    if (strncmp(name, "mdhunt_", 7) == 0)
        return 1;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (md_strcasecmp(name, names[i]) == 0)
            return 1;
    }
    return 0;
}

/* The string member of obj named name, ignoring ASCII case, or NULL. */
/* Replace the NUL bytes inside the row's string values with U+FFFD: the
 * digest works on C strings, and a name cut at a NUL could pass for a
 * known device's name. */
static void replace_nuls(json_t *row)
{
    const char *key;
    json_t *value;

    json_object_foreach(row, key, value) {
        const char *text = json_is_string(value) ? json_string_value(value)
                                                 : NULL;
        size_t len = text != NULL ? json_string_length(value) : 0;
        struct md_buf fixed = MD_BUF_INIT;
        int failed = 0;

        if (text == NULL || strlen(text) == len)
            continue;
        for (size_t i = 0; i < len && !failed; i++) {
            if (text[i] == '\0')
                failed = md_buf_puts(&fixed, "\xef\xbf\xbd") != 0;
            else
                failed = md_buf_putc(&fixed, text[i]) != 0;
        }
        if (!failed)
            json_string_setn(value, fixed.data, fixed.len);
        md_buf_free(&fixed);
    }
}

static const char *member_text(json_t *obj, const char *name)
{
    const char *key;
    json_t *value;

    json_object_foreach(obj, key, value) {
        if (md_strcasecmp(key, name) == 0)
            return json_is_string(value) ? json_string_value(value) : NULL;
    }
    return NULL;
}

static md_instant member_time(json_t *obj, const char *name)
{
    const char *text = member_text(obj, name);
    md_instant t;

    if (text == NULL || md_time_parse(text, strlen(text), &t) != 0)
        return 0;
    return t;
}

static int change_of(enum md_event_kind kind, enum md_change *change)
{
    switch (kind) {
    case MD_EVENT_NEW:
        *change = MD_CHANGE_NEW;
        return 0;
    case MD_EVENT_RETURNED:
        *change = MD_CHANGE_RETURNED;
        return 0;
    case MD_EVENT_RENAMED:
        *change = MD_CHANGE_RENAMED;
        return 0;
    case MD_EVENT_TRACKED:
        *change = MD_CHANGE_TRACKED;
        return 0;
    case MD_EVENT_BASELINE:
        *change = MD_CHANGE_BASELINE;
        return 0;
    case MD_EVENT_GONE:
        *change = MD_CHANGE_GONE;
        return 0;
    case MD_EVENT_EXCLUDED:
        *change = MD_CHANGE_EXCLUDED;
        return 0;
    case MD_EVENT_UNCOVERED:
        *change = MD_CHANGE_UNCOVERED;
        return 0;
    default:
        return -1;
    }
}

/* The other columns of a row with their values as text, as
 * fill_columns() allocates them. */
struct hit_columns {
    struct md_digest_column *v;
    char **owned;               /* JSON text of non-string values */
    size_t n;
};

static void hit_columns_free(struct hit_columns *hc)
{
    for (size_t i = 0; i < hc->n; i++)
        free(hc->owned[i]);
    free(hc->owned);
    free(hc->v);
    memset(hc, 0, sizeof(*hc));
}

static int fill_columns(json_t *row, struct hit_columns *hc)
{
    size_t size = json_object_size(row);
    const char *key;
    json_t *value;

    memset(hc, 0, sizeof(*hc));
    if (size == 0)
        return 0;
    hc->v = calloc(size, sizeof(*hc->v));
    hc->owned = calloc(size, sizeof(*hc->owned));
    if (hc->v == NULL || hc->owned == NULL)
        return -1;
    json_object_foreach(row, key, value) {
        struct md_digest_column *col = &hc->v[hc->n];

        if (device_column(key))
            continue;
        col->name = key;
        if (json_is_string(value)) {
            col->value = json_string_value(value);
        } else if (!json_is_null(value)) {
            hc->owned[hc->n] = json_dumps(value, JSON_COMPACT |
                                                 JSON_ENCODE_ANY);
            if (hc->owned[hc->n] == NULL)
                return -1;
            col->value = hc->owned[hc->n];
        }
        hc->n++;
    }
    return 0;
}

static int add_hit(struct compose_ctx *c, size_t rule,
                   const struct md_event *ev, struct md_error *err)
{
    const struct md_rule_config *rc_cfg;
    struct md_digest_hit hit;
    struct hit_columns hc;
    json_t *row = NULL;
    int rc;

    memset(&hit, 0, sizeof(hit));
    if (change_of(ev->kind, &hit.change) != 0)
        return 0;
    /* Every run repeats its excluded devices, so the digest lists a
     * device only from the run that excluded it first.
     * load_rule_exclusions() counts them per entry. */
    if (ev->kind == MD_EVENT_EXCLUDED && !ev->first_excluded)
        return 0;
    hit.rule = rule;
    if (ev->row_json != NULL)
        row = json_loads(ev->row_json, JSON_ALLOW_NUL, NULL);
    if (row != NULL && !json_is_object(row)) {
        json_decref(row);
        row = NULL;
    }
    if (row != NULL)
        replace_nuls(row);
    if (row != NULL) {
        hit.device_id = member_text(row, "DeviceId");
        hit.device_name = member_text(row, "DeviceName");
        hit.first_seen = member_time(row, "FirstSeen");
        hit.last_seen = member_time(row, "LastSeen");
    }
    if (hit.device_name == NULL && hit.device_id == NULL)
        hit.device_name = ev->key;
    if (ev->kind == MD_EVENT_RENAMED) {
        hit.previous_name = ev->old_name;
        if (ev->new_name != NULL)
            hit.device_name = ev->new_name;
    }
    if (ev->kind == MD_EVENT_TRACKED) {
        rc_cfg = md_config_rule(c->cfg, c->accs[rule].latest.rule_id);
        hit.tracked_column = rc_cfg != NULL ? rc_cfg->track_column : NULL;
        hit.tracked_value = ev->value;
    }
    hit.observed = known_or_zero(ev->first_seen);
    if (ev->kind == MD_EVENT_EXCLUDED || ev->kind == MD_EVENT_UNCOVERED) {
        hit.exclusion_id = ev->exclusion_id;
        hit.exclusion_reason = ev->exclusion_reason;
        hit.exclusion_owner = ev->exclusion_owner;
        hit.exclusion_expires = known_or_zero(ev->exclusion_expires);
    }

    if (fill_columns(row, &hc) != 0) {
        hit_columns_free(&hc);
        json_decref(row);
        return oom(err);
    }
    hit.columns = hc.v;
    hit.ncolumns = hc.n;
    rc = md_digest_add_hit(c->digest, &hit, err);
    hit_columns_free(&hc);
    json_decref(row);
    return rc;
}

static int add_hits_of_run(struct compose_ctx *c, int64_t run_id,
                           struct md_error *err)
{
    struct md_run_diff diff;
    long rule;
    int rc = 0;

    if (md_store_run_diff(c->st, run_id, &diff, err) != 0)
        return -1;
    rule = find_acc(c, diff.run.rule_id);
    for (size_t i = 0; rule >= 0 && i < diff.nevents && rc == 0; i++)
        rc = add_hit(c, (size_t)rule, &diff.events[i], err);
    md_run_diff_clear(&diff);
    return rc;
}

/* ---- Composing --------------------------------------------------------- */

static const char *digest_tenant(const struct compose_ctx *c)
{
    if (c->cfg->auth.tenant_id != NULL)
        return c->cfg->auth.tenant_id;
    for (size_t i = 0; i < c->naccs; i++) {
        if (c->accs[i].latest.tenant != NULL)
            return c->accs[i].latest.tenant;
    }
    return "";
}

static int build_digest(struct compose_ctx *c, md_instant now,
                        struct md_error *err)
{
    if (load_runs(c, err) != 0)
        return -1;
    if (md_digest_new(digest_tenant(c), now, &c->digest, err) != 0)
        return -1;
    for (size_t i = 0; i < c->nruns; i++) {
        if (md_digest_add_run(c->digest, c->runs[i], err) != 0)
            return -1;
    }
    for (size_t i = 0; i < c->naccs; i++) {
        if (add_rule(c, &c->accs[i], err) != 0)
            return -1;
    }
    for (size_t i = 0; i < c->nruns; i++) {
        if (c->has_events[i] && add_hits_of_run(c, c->runs[i], err) != 0)
            return -1;
    }
    return 0;
}

/* Copy the value of header name from the header block of a message. */
static char *header_value(const char *msg, size_t len, const char *name)
{
    size_t nlen = strlen(name);
    size_t pos = 0;

    while (pos < len) {
        const char *line = msg + pos;
        const char *end = memchr(line, '\n', len - pos);
        size_t llen = end != NULL ? (size_t)(end - line) : len - pos;

        if (llen == 0 || (llen == 1 && line[0] == '\r'))
            break;
        if (llen > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            size_t vlen = llen - nlen - 1;

            while (vlen > 0 && (*v == ' ' || *v == '\t')) {
                v++;
                vlen--;
            }
            while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == ' '))
                vlen--;
            return md_strndup(v, vlen);
        }
        pos += llen + 1;
    }
    return NULL;
}

/* Render the digest's message and fill the record's text fields. */
static int render(const struct compose_ctx *c, struct md_outbox_digest *rec,
                  struct md_error *err)
{
    struct md_mail_settings s;
    struct md_report_options opts;
    struct md_buf bytes = MD_BUF_INIT;
    struct md_buf subject = MD_BUF_INIT;

    md_mail_settings_from_config(c->cfg, &s);
    memset(&opts, 0, sizeof(opts));
    opts.subject_prefix = c->cfg->mail.subject_prefix;
    opts.max_rows_in_body = c->cfg->mail.max_rows_in_body;
    if (md_mail_compose_digest(&s, c->digest, &opts, &bytes, err) != 0 ||
        md_report_subject(c->digest, &opts, &subject, err) != 0)
        goto fail;

    rec->message_len = bytes.len;
    rec->message = md_buf_detach(&bytes);
    rec->subject = md_buf_detach(&subject);
    if (rec->message == NULL || rec->subject == NULL) {
        oom(err);
        goto fail;
    }
    rec->message_id = header_value(rec->message, rec->message_len,
                                   "Message-ID");
    if (rec->message_id == NULL) {
        md_error_set(err, MD_E_INTERNAL, "mail: the composed digest has "
                     "no Message-ID header");
        goto fail;
    }
    return 0;

fail:
    md_buf_free(&bytes);
    md_buf_free(&subject);
    return -1;
}

/* Log what was composed. */
static void log_composed(int64_t id, const struct md_outbox_digest *rec,
                         size_t nitems, size_t nruns)
{
    if (rec->state == MD_DIGEST_SKIPPED)
        md_info("mail: digest %lld covers %zu runs and %zu reports; "
                "nothing to mail under send_when, so it is skipped",
                (long long)id, nruns, nitems);
    else
        md_info("mail: digest %lld composed (%s): %zu runs, %zu reports, "
                "%lld new devices, %zu bytes, Message-ID %s",
                (long long)id, rec->reason, nruns, nitems,
                (long long)rec->new_devices, rec->message_len,
                rec->message_id);
}

int md_outbox_compose(struct md_store *st, const struct md_config *cfg,
                      const struct md_ruleset *rules, md_instant now,
                      int64_t *digest_id, enum md_digest_state *state,
                      struct md_error *err)
{
    struct compose_ctx c;
    struct md_outbox_item *items = NULL;
    struct md_outbox_digest rec;
    enum md_send_reason reason;
    int64_t *after = NULL;
    size_t nitems = 0;
    size_t nafter = 0;
    int64_t last_run;
    int rc = -1;

    *digest_id = 0;
    if (state != NULL)
        *state = MD_DIGEST_PENDING;
    memset(&c, 0, sizeof(c));
    memset(&rec, 0, sizeof(rec));
    if (!cfg->mail.enabled || cfg->mail.send_when == MD_SEND_NEVER)
        return 0;
    c.st = st;
    c.cfg = cfg;
    c.rules = rules;

    if (md_store_outbox_pending(st, now, &items, &nitems, err) != 0 ||
        md_store_digest_last_run(st, &last_run, err) != 0 ||
        md_store_runs_after(st, last_run, &after, &nafter, err) != 0)
        goto out;
    if (covered_runs(after, nafter, items, nitems, &c.runs, &c.nruns) != 0) {
        oom(err);
        goto out;
    }
    if (c.nruns == 0 && nitems == 0) {
        rc = 0;
        goto out;
    }
    if (build_digest(&c, now, err) != 0)
        goto out;

    reason = md_digest_should_send(c.digest, cfg->mail.send_when, now);
    rec.created = now;
    rec.state = reason == MD_SEND_REASON_NONE ? MD_DIGEST_SKIPPED
                                              : MD_DIGEST_PENDING;
    rec.reason = (char *)md_send_reason_name(reason);
    rec.last_run = c.nruns > 0 && c.runs[c.nruns - 1] > last_run
                       ? c.runs[c.nruns - 1] : last_run;
    rec.new_devices = (int64_t)md_digest_count_devices(c.digest,
                                                       MD_CHANGE_NEW);
    rec.outbox_ids = malloc((nitems > 0 ? nitems : 1) * sizeof(int64_t));
    if (rec.outbox_ids == NULL) {
        oom(err);
        goto out;
    }
    for (size_t i = 0; i < nitems; i++)
        rec.outbox_ids[i] = items[i].id;
    rec.noutbox_ids = nitems;
    if (rec.state == MD_DIGEST_PENDING && render(&c, &rec, err) != 0)
        goto out;
    if (md_store_digest_add(st, &rec, digest_id, err) != 0)
        goto out;

    log_composed(*digest_id, &rec, nitems, c.nruns);
    if (state != NULL)
        *state = rec.state;
    rc = 0;

out:
    rec.reason = NULL;      /* a constant string */
    md_outbox_digest_clear(&rec);
    md_outbox_items_free(items, nitems);
    free(after);
    compose_ctx_free(&c);
    return rc;
}

/* ---- Delivering -------------------------------------------------------- */

static int send_bytes(const struct md_outbox_hooks *hooks,
                      const struct md_mail_settings *s,
                      const struct md_outbox_digest *d,
                      struct md_mail_result *res, struct md_error *err)
{
    if (hooks != NULL && hooks->send != NULL)
        return hooks->send(s, d->message, d->message_len, res, err,
                           hooks->ctx);
    return md_mail_send(s, d->message, d->message_len, res, err);
}

/* Record a failed attempt: pending until the next attempt, or dead. */
static int record_failure(struct md_store *st, const struct md_outbox_digest *d,
                          const struct md_mail_result *mres,
                          const struct md_error *send_err, md_instant now,
                          struct md_delivery_result *res,
                          struct md_error *err)
{
    char text[LAST_ERROR_MAX];
    char when[MD_TIME_TEXT_MAX];
    long attempt = d->attempts + 1;
    md_instant next = 0;
    int dead = mres->outcome == MD_MAIL_PERMANENT ||
               d->state == MD_DIGEST_DEAD ||
               !md_mail_next_attempt((unsigned)attempt, now, 0, &next);

    snprintf(text, sizeof(text), "%s: %s", md_err_kind_name(send_err->kind),
             send_err->message);
    res->last_error = *send_err;
    if (dead) {
        md_error_log("mail: digest %lld (Message-ID %s): delivery attempt "
                     "%ld failed (%s): %s; the digest is now a dead letter, "
                     "and `mdhunt outbox --retry %lld` sends it again",
                     (long long)d->id, d->message_id, attempt,
                     md_err_kind_name(send_err->kind), send_err->message,
                     (long long)d->id);
        res->dead++;
        return md_store_digest_mark_dead(st, d->id, now, text, err);
    }
    md_error_log("mail: digest %lld (Message-ID %s): delivery attempt %ld "
                 "failed (%s): %s; it stays queued, next attempt at %s",
                 (long long)d->id, d->message_id, attempt,
                 md_err_kind_name(send_err->kind), send_err->message,
                 md_time_format_seconds(next, when, sizeof(when)));
    res->retrying++;
    return md_store_digest_mark_retry(st, d->id, now, next, text, err);
}

int md_outbox_deliver(struct md_store *st, const struct md_config *cfg,
                      const struct md_outbox_hooks *hooks, int64_t id,
                      md_instant now, struct md_delivery_result *res,
                      struct md_error *err)
{
    struct md_outbox_digest d;
    struct md_mail_settings s;
    struct md_mail_result mres;
    struct md_error send_err;
    int rc;

    if (md_store_digest_get(st, id, 1, &d, err) != 0)
        return -1;
    if (d.state == MD_DIGEST_SENT || d.state == MD_DIGEST_SKIPPED ||
        d.message == NULL) {
        md_error_set(err, MD_E_USAGE, "mail: digest %lld is %s; only "
                     "pending and dead digests are delivered",
                     (long long)id, md_digest_state_name(d.state));
        md_outbox_digest_clear(&d);
        return -1;
    }

    md_mail_settings_from_config(cfg, &s);
    md_error_clear(&send_err);
    res->attempted++;
    md_debug("mail: delivering digest %lld, attempt %ld", (long long)id,
             d.attempts + 1);
    if (send_bytes(hooks, &s, &d, &mres, &send_err) == 0) {
        md_info("mail: digest %lld delivered (Message-ID %s, attempt %ld)",
                (long long)id, d.message_id, d.attempts + 1);
        res->sent++;
        rc = md_store_digest_mark_sent(st, id, now, err);
    } else {
        if (send_err.kind == MD_OK)
            md_error_set(&send_err, MD_E_INTERNAL, "mail: delivery failed "
                         "without a message");
        if (send_err.kind == MD_E_INTERRUPTED)
            res->interrupted = 1;
        rc = record_failure(st, &d, &mres, &send_err, now, res, err);
    }
    md_outbox_digest_clear(&d);
    return rc;
}

int md_outbox_deliver_due(struct md_store *st, struct md_config *cfg,
                          const struct md_outbox_hooks *hooks, md_instant now,
                          struct md_delivery_result *res,
                          struct md_error *err)
{
    struct md_error e;
    int64_t *ids = NULL;
    size_t n = 0;
    int rc = 0;

    memset(res, 0, sizeof(*res));
    md_error_clear(&res->last_error);
    if (md_store_digests_due(st, now, &ids, &n, err) != 0)
        return -1;
    if (n == 0)
        return 0;

    md_error_clear(&e);
    if (md_config_require_mail(cfg, &e) != 0) {
        md_error_log("mail: %zu digest%s not delivered: %s; they stay "
                     "queued", n, n == 1 ? "" : "s", e.message);
        res->last_error = e;
        free(ids);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (md_interrupt_pending()) {
            res->interrupted = 1;
            break;
        }
        md_error_clear(&e);
        if (md_outbox_deliver(st, cfg, hooks, ids[i], now, res, &e) != 0) {
            if (e.kind == MD_E_STORE) {
                *err = e;
                rc = -1;
                break;
            }
            md_error_log("%s", e.message);
        }
        if (res->interrupted)
            break;
    }
    free(ids);
    return rc;
}

int md_outbox_run(struct md_store *st, struct md_config *cfg,
                  const struct md_ruleset *rules,
                  const struct md_outbox_hooks *hooks, md_instant now,
                  int compose, struct md_error *err)
{
    struct md_delivery_result res;
    struct md_error e;
    int64_t id;
    int rc = 0;

    if (!cfg->mail.enabled || cfg->mail.send_when == MD_SEND_NEVER)
        return 0;

    md_error_clear(&e);
    if (compose && md_outbox_compose(st, cfg, rules, now, &id, NULL,
                                     &e) != 0) {
        md_error_log("mail: composing the digest failed: %s; the reports "
                     "stay queued", e.message);
        if (e.kind == MD_E_STORE) {
            *err = e;
            rc = -1;
        }
    }

    md_error_clear(&e);
    if (md_outbox_deliver_due(st, cfg, hooks, now, &res, &e) != 0) {
        md_error_log("mail: delivering the digests failed: %s", e.message);
        *err = e;
        rc = -1;
    }
    if (res.attempted > 0)
        md_info("mail: %zu digest%s delivered, %zu queued for a retry, "
                "%zu dead", res.sent, res.sent == 1 ? "" : "s",
                res.retrying, res.dead);
    return rc;
}

/* Whether an item is queued or a run finished that no digest covers. */
static int something_queued(struct md_store *st, int *queued,
                            struct md_error *err)
{
    struct md_outbox_item *items;
    size_t nitems;
    int64_t last_run;
    int64_t *after;
    size_t nafter;

    *queued = 0;
    if (md_store_outbox_pending(st, INT64_MAX, &items, &nitems, err) != 0)
        return -1;
    md_outbox_items_free(items, nitems);
    if (nitems > 0) {
        *queued = 1;
        return 0;
    }
    if (md_store_digest_last_run(st, &last_run, err) != 0 ||
        md_store_runs_after(st, last_run, &after, &nafter, err) != 0)
        return -1;
    free(after);
    *queued = nafter > 0;
    return 0;
}

/* When the next digest may be composed, or MD_STORE_TIME_NONE when
 * nothing is queued. */
static int compose_time(struct md_store *st, const struct md_config *cfg,
                        md_instant *when, struct md_error *err)
{
    md_instant last;
    int queued;

    *when = MD_STORE_TIME_NONE;
    if (!cfg->mail.enabled || cfg->mail.send_when == MD_SEND_NEVER)
        return 0;
    if (something_queued(st, &queued, err) != 0)
        return -1;
    if (!queued)
        return 0;
    if (md_store_digest_last_created(st, &last, err) != 0)
        return -1;
    if (last == MD_STORE_TIME_NONE) {
        *when = 0;
        return 0;
    }
    *when = last + seconds_to_ticks(cfg->mail.digest_every);
    return 0;
}

int md_outbox_compose_due(struct md_store *st, const struct md_config *cfg,
                          md_instant now, int *due, struct md_error *err)
{
    md_instant when;

    *due = 0;
    if (compose_time(st, cfg, &when, err) != 0)
        return -1;
    *due = when != MD_STORE_TIME_NONE && when <= now;
    return 0;
}

int md_outbox_next_wakeup(struct md_store *st, const struct md_config *cfg,
                          md_instant now, md_instant *wakeup,
                          struct md_error *err)
{
    md_instant compose;
    md_instant retry = MD_STORE_TIME_NONE;

    *wakeup = MD_STORE_TIME_NONE;
    if (!cfg->mail.enabled || cfg->mail.send_when == MD_SEND_NEVER)
        return 0;
    if (compose_time(st, cfg, &compose, err) != 0 ||
        md_store_digest_next_attempt(st, &retry, err) != 0)
        return -1;

    if (compose != MD_STORE_TIME_NONE)
        *wakeup = compose;
    if (retry != MD_STORE_TIME_NONE &&
        (*wakeup == MD_STORE_TIME_NONE || retry < *wakeup))
        *wakeup = retry;
    if (*wakeup != MD_STORE_TIME_NONE && *wakeup <= now)
        *wakeup = now + seconds_to_ticks(MD_OUTBOX_RECHECK_SECONDS);
    return 0;
}
