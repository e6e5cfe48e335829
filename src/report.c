/* The mail digest model and its renderings; see include/mdhunt/report.h. */
#include "mdhunt/report.h"

#include <openssl/evp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mdhunt/exclusions.h"
#include "mdhunt/output.h"

#define PORTAL_MACHINE_URL "https://security.microsoft.com/machines/v2/"
#define MITRE_TECHNIQUE_URL "https://attack.mitre.org/techniques/"

/* Gone devices named in the body per rule before "and N more". */
#define GONE_NAMES_MAX 10

/* Every allocation a digest made for copied strings and arrays. */
struct md_digest_strings {
    void **items;
    size_t n;
    size_t cap;
};

/* ---- the model ---------------------------------------------------- */

const char *md_change_name(enum md_change change)
{
    switch (change) {
    case MD_CHANGE_NEW:
        return "new";
    case MD_CHANGE_RETURNED:
        return "returned";
    case MD_CHANGE_RENAMED:
        return "renamed";
    case MD_CHANGE_TRACKED:
        return "tracked";
    case MD_CHANGE_BASELINE:
        return "baseline";
    case MD_CHANGE_GONE:
        return "gone";
    case MD_CHANGE_EXCLUDED:
        return "excluded";
    case MD_CHANGE_UNCOVERED:
        return "uncovered";
    }
    return "unknown";
}

int md_digest_new(const char *tenant, md_instant generated,
                  struct md_digest **out, struct md_error *err)
{
    struct md_digest *d = calloc(1, sizeof(*d));

    *out = NULL;
    if (d == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    d->strings = calloc(1, sizeof(*d->strings));
    d->tenant = md_strdup(tenant != NULL ? tenant : "");
    if (d->strings == NULL || d->tenant == NULL) {
        md_digest_free(d);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }
    d->generated = generated;
    *out = d;
    return 0;
}

void md_digest_free(struct md_digest *d)
{
    if (d == NULL)
        return;
    if (d->strings != NULL) {
        for (size_t i = 0; i < d->strings->n; i++)
            free(d->strings->items[i]);
        free(d->strings->items);
        free(d->strings);
    }
    free(d->tenant);
    free(d->rules);
    free(d->hits);
    free(d->run_ids);
    free(d);
}

/* Record an allocation in the digest, or free it when that fails. */
static void *keep(struct md_digest *d, void *p)
{
    struct md_digest_strings *s = d->strings;

    if (p == NULL)
        return NULL;
    if (s->n == s->cap) {
        size_t cap = s->cap != 0 ? s->cap * 2 : 64;
        void **items = realloc(s->items, cap * sizeof(*items));

        if (items == NULL) {
            free(p);
            return NULL;
        }
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n++] = p;
    return p;
}

/* Copy a string into the digest.  NULL stays NULL; *failed is set when
 * memory runs out. */
static const char *keep_string(struct md_digest *d, const char *s,
                               int *failed)
{
    const char *copy;

    if (s == NULL)
        return NULL;
    copy = keep(d, md_strdup(s));
    if (copy == NULL)
        *failed = 1;
    return copy;
}

static const char *const *keep_strings(struct md_digest *d,
                                       const char *const *v, size_t n,
                                       int *failed)
{
    const char **copy;

    if (v == NULL || n == 0)
        return NULL;
    copy = keep(d, calloc(n, sizeof(*copy)));
    if (copy == NULL) {
        *failed = 1;
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        copy[i] = keep_string(d, v[i] != NULL ? v[i] : "", failed);
    return copy;
}

/*
 * Make room for element n + 1 of an array that contains n.  The capacity is
 * implied by n: 16 up to 16 elements, then the next power of two, so the
 * array grows only when n is 16 or a larger power of two.
 */
static int grow(void **array, size_t n, size_t elem)
{
    size_t cap = n < 16 ? 16 : n * 2;
    void *p;

    if (*array != NULL && (n < 16 || (n & (n - 1)) != 0))
        return 0;
    if (cap > SIZE_MAX / elem)
        return -1;
    p = realloc(*array, cap * elem);
    if (p == NULL)
        return -1;
    *array = p;
    return 0;
}

/* Copy a rule's exclusion entries into the digest. */
static const struct md_digest_exclusion *keep_exclusions(
    struct md_digest *d, const struct md_digest_exclusion *v, size_t n,
    int *failed)
{
    struct md_digest_exclusion *copy;

    if (v == NULL || n == 0)
        return NULL;
    copy = keep(d, calloc(n, sizeof(*copy)));
    if (copy == NULL) {
        *failed = 1;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        copy[i] = v[i];
        copy[i].id = keep_string(d, v[i].id != NULL ? v[i].id : "", failed);
        copy[i].reason = keep_string(d, v[i].reason, failed);
        copy[i].owner = keep_string(d, v[i].owner, failed);
    }
    return copy;
}

int md_digest_add_rule(struct md_digest *d, const struct md_digest_rule *rule,
                       size_t *index, struct md_error *err)
{
    struct md_digest_rule copy = *rule;
    int failed = 0;

    if (rule->rule_id == NULL)
        return md_error_set(err, MD_E_INTERNAL,
                            "digest rule without a rule id");
    if (grow((void **)&d->rules, d->nrules, sizeof(*d->rules)) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    copy.rule_id = keep_string(d, rule->rule_id, &failed);
    copy.name = keep_string(d, rule->name, &failed);
    copy.severity = keep_string(d, rule->severity, &failed);
    copy.tactics = keep_strings(d, rule->tactics, rule->ntactics, &failed);
    copy.ntactics = copy.tactics != NULL ? rule->ntactics : 0;
    copy.techniques = keep_strings(d, rule->techniques, rule->ntechniques,
                                   &failed);
    copy.ntechniques = copy.techniques != NULL ? rule->ntechniques : 0;
    copy.backend = keep_string(d, rule->backend, &failed);
    copy.query_sha256 = keep_string(d, rule->query_sha256, &failed);
    copy.last_error_kind = keep_string(d, rule->last_error_kind, &failed);
    copy.last_error = keep_string(d, rule->last_error, &failed);
    copy.exclusions = keep_exclusions(d, rule->exclusions,
                                      rule->nexclusions, &failed);
    copy.nexclusions = copy.exclusions != NULL ? rule->nexclusions : 0;
    copy.exclusion_issues = keep_strings(d, rule->exclusion_issues,
                                         rule->nexclusion_issues, &failed);
    copy.nexclusion_issues = copy.exclusion_issues != NULL
                                 ? rule->nexclusion_issues : 0;
    if (failed)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    if (index != NULL)
        *index = d->nrules;
    d->rules[d->nrules++] = copy;
    return 0;
}

int md_digest_add_hit(struct md_digest *d, const struct md_digest_hit *hit,
                      struct md_error *err)
{
    struct md_digest_hit copy = *hit;
    struct md_digest_column *columns = NULL;
    int failed = 0;

    if (hit->rule >= d->nrules)
        return md_error_set(err, MD_E_INTERNAL,
                            "digest hit for rule index %zu, but the digest "
                            "has %zu rules", hit->rule, d->nrules);
    if (grow((void **)&d->hits, d->nhits, sizeof(*d->hits)) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    copy.device_id = keep_string(d, hit->device_id, &failed);
    copy.device_name = keep_string(d, hit->device_name, &failed);
    copy.previous_name = keep_string(d, hit->previous_name, &failed);
    copy.tracked_column = keep_string(d, hit->tracked_column, &failed);
    copy.tracked_value = keep_string(d, hit->tracked_value, &failed);
    copy.exclusion_id = keep_string(d, hit->exclusion_id, &failed);
    copy.exclusion_reason = keep_string(d, hit->exclusion_reason, &failed);
    copy.exclusion_owner = keep_string(d, hit->exclusion_owner, &failed);
    if (hit->ncolumns > 0) {
        columns = keep(d, calloc(hit->ncolumns, sizeof(*columns)));
        if (columns == NULL)
            failed = 1;
        for (size_t i = 0; columns != NULL && i < hit->ncolumns; i++) {
            const char *name = hit->columns[i].name;

            columns[i].name = keep_string(d, name != NULL ? name : "",
                                          &failed);
            columns[i].value = keep_string(d, hit->columns[i].value,
                                           &failed);
        }
    }
    copy.columns = columns;
    copy.ncolumns = columns != NULL ? hit->ncolumns : 0;
    if (failed)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    d->hits[d->nhits++] = copy;
    return 0;
}

int md_digest_add_run(struct md_digest *d, int64_t run_id,
                      struct md_error *err)
{
    if (grow((void **)&d->run_ids, d->nrun_ids, sizeof(*d->run_ids)) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    d->run_ids[d->nrun_ids++] = run_id;
    return 0;
}

static int compare_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

void md_digest_fingerprint(const struct md_digest *d, char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int64_t *ids = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;

    /* The ids are hashed sorted so that the order in which the runner
     * added them does not matter. */
    if (d->nrun_ids > 0) {
        ids = malloc(d->nrun_ids * sizeof(*ids));
        ok = ok && ids != NULL;
    }
    if (ok && ids != NULL) {
        memcpy(ids, d->run_ids, d->nrun_ids * sizeof(*ids));
        qsort(ids, d->nrun_ids, sizeof(*ids), compare_int64);
    }
    for (size_t i = 0; ok && i < d->nrun_ids; i++) {
        char text[32];
        int n;

        if (i > 0 && ids[i] == ids[i - 1])
            continue;
        n = snprintf(text, sizeof(text), "%lld\n", (long long)ids[i]);
        ok = EVP_DigestUpdate(ctx, text, (size_t)n) == 1;
    }
    /* Run ids start at 1 in every store, so the tenant and the times of
     * the covered runs keep two stores (a rebuilt one, or one per tenant)
     * from giving their first digests one Message-ID.  The same runs still
     * give the same fingerprint. */
    for (size_t i = 0; ok && i < d->nrules; i++) {
        char text[48];
        int n = snprintf(text, sizeof(text), "window %lld\n",
                         (long long)d->rules[i].window_end);

        ok = EVP_DigestUpdate(ctx, text, (size_t)n) == 1;
    }
    if (ok && d->nrun_ids == 0) {
        char text[48];
        int n = snprintf(text, sizeof(text), "generated %lld\n",
                         (long long)d->generated);

        ok = EVP_DigestUpdate(ctx, text, (size_t)n) == 1;
    }
    if (ok && d->tenant != NULL)
        ok = EVP_DigestUpdate(ctx, d->tenant, strlen(d->tenant)) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    free(ids);

    /* NOTE: only an allocation failure inside OpenSSL reaches this; the
     * fingerprint is then all zeros rather than an error. */
    if (!ok)
        memset(md, 0, 32);
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 0x0f];
    }
    hex[64] = '\0';
}

/* Key that groups a hit's device: the DeviceId, else the DeviceName. */
static const char *device_key(const struct md_digest_hit *hit)
{
    if (hit->device_id != NULL && hit->device_id[0] != '\0')
        return hit->device_id;
    if (hit->device_name != NULL)
        return hit->device_name;
    return "";
}

static int compare_keys(const void *a, const void *b)
{
    return md_strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

size_t md_digest_count_devices(const struct md_digest *d,
                               enum md_change change)
{
    const char **keys = malloc((d->nhits > 0 ? d->nhits : 1) *
                               sizeof(*keys));
    size_t nkeys = 0;
    size_t count = 0;

    /* NOTE: without memory for the sort, every hit counts as a device. */
    for (size_t i = 0; i < d->nhits; i++) {
        if (d->hits[i].change != change)
            continue;
        if (keys != NULL)
            keys[nkeys] = device_key(&d->hits[i]);
        nkeys++;
    }
    if (keys == NULL)
        return nkeys;

    qsort(keys, nkeys, sizeof(*keys), compare_keys);
    for (size_t i = 0; i < nkeys; i++)
        count += i == 0 || md_strcasecmp(keys[i - 1], keys[i]) != 0;
    free(keys);
    return count;
}

/* ---- the send decision --------------------------------------------- */

static int rule_failing(const struct md_digest_rule *rule)
{
    return rule->consecutive_failures >= MD_HEALTH_MAX_FAILURES;
}

static int rule_stale(const struct md_digest_rule *rule, md_instant now)
{
    md_instant since = rule->last_success;

    if (rule->frequency <= 0)
        return 0;
    if (since == 0)
        since = rule->first_run;
    if (since == 0)
        return 0;
    return now - since > 2 * rule->frequency * MD_TICKS_PER_SECOND;
}

int md_digest_rule_unhealthy(const struct md_digest_rule *rule,
                             md_instant now)
{
    return rule_failing(rule) || rule_stale(rule, now);
}

enum md_send_reason md_digest_should_send(const struct md_digest *d,
                                          enum md_send_when when,
                                          md_instant now)
{
    int baseline = 0;

    if (when == MD_SEND_NEVER)
        return MD_SEND_REASON_NONE;
    if (when == MD_SEND_ALWAYS)
        return MD_SEND_REASON_ALWAYS;

    for (size_t i = 0; i < d->nhits; i++) {
        enum md_change change = d->hits[i].change;

        if (change == MD_CHANGE_NEW || change == MD_CHANGE_RETURNED ||
            change == MD_CHANGE_RENAMED || change == MD_CHANGE_TRACKED ||
            change == MD_CHANGE_UNCOVERED)
            return MD_SEND_REASON_CHANGES;
        if (change == MD_CHANGE_BASELINE)
            baseline = 1;
    }
    if (baseline)
        return MD_SEND_REASON_BASELINE;
    for (size_t i = 0; i < d->nrules; i++) {
        if (rule_failing(&d->rules[i]))
            return MD_SEND_REASON_FAILING;
    }
    for (size_t i = 0; i < d->nrules; i++) {
        if (rule_stale(&d->rules[i], now))
            return MD_SEND_REASON_STALE;
    }
    return MD_SEND_REASON_NONE;
}

const char *md_send_reason_name(enum md_send_reason reason)
{
    switch (reason) {
    case MD_SEND_REASON_NONE:
        return "none";
    case MD_SEND_REASON_ALWAYS:
        return "always";
    case MD_SEND_REASON_CHANGES:
        return "changes";
    case MD_SEND_REASON_BASELINE:
        return "baseline";
    case MD_SEND_REASON_FAILING:
        return "failing";
    case MD_SEND_REASON_STALE:
        return "stale";
    }
    return "unknown";
}

/* ---- escaping ------------------------------------------------------ */

/*
 * Decode one UTF-8 character of s (len > 0 bytes).  Returns the bytes it
 * takes and stores the code point, or -1 for an invalid sequence
 * (overlong, surrogate, beyond U+10FFFF, cut off), which takes 1 byte.
 */
static size_t utf8_decode(const unsigned char *s, size_t len, long *cp)
{
    size_t need;
    long min;
    long c;

    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xe0) == 0xc0) {
        need = 2, min = 0x80, c = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        need = 3, min = 0x800, c = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        need = 4, min = 0x10000, c = s[0] & 0x07;
    } else {
        *cp = -1;
        return 1;
    }
    if (len < need) {
        *cp = -1;
        return 1;
    }
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *cp = -1;
            return 1;
        }
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
        *cp = -1;
        return 1;
    }
    *cp = c;
    return need;
}

/* Characters that reorder or hide text without being visible: bidi
 * embeddings, overrides and isolates, marks, zero-width characters and
 * line or paragraph separators. */
static int invisible_format(long cp)
{
    return cp == 0x061c || (cp >= 0x200b && cp <= 0x200f) ||
           (cp >= 0x2028 && cp <= 0x202e) ||
           (cp >= 0x2060 && cp <= 0x2069) || cp == 0xfeff ||
           (cp >= 0xfff9 && cp <= 0xfffb);
}

int md_text_sanitize(struct md_buf *out, const char *s, size_t max_chars)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s);
    size_t chars = 0;
    size_t left_out = 0;
    int rc = 0;

    while (len > 0 && rc == 0) {
        long cp;
        size_t n = utf8_decode(p, len, &cp);

        if (max_chars != 0 && chars >= max_chars) {
            left_out++;
        } else if (cp < 0) {
            rc = md_buf_puts(out, "\xef\xbf\xbd");
        } else if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f)) {
            rc = md_buf_putc(out, '?');
        } else if (invisible_format(cp)) {
            rc = md_buf_printf(out, "<U+%04lX>", cp);
        } else {
            rc = md_buf_append(out, p, n);
        }
        chars++;
        p += n;
        len -= n;
    }
    if (rc == 0 && left_out > 0)
        rc = md_buf_printf(out, "... [%zu more characters]", left_out);
    return rc;
}

int md_html_escape(struct md_buf *out, const char *s)
{
    int rc = 0;

    for (; *s != '\0' && rc == 0; s++) {
        switch (*s) {
        case '&':
            rc = md_buf_puts(out, "&amp;");
            break;
        case '<':
            rc = md_buf_puts(out, "&lt;");
            break;
        case '>':
            rc = md_buf_puts(out, "&gt;");
            break;
        case '"':
            rc = md_buf_puts(out, "&quot;");
            break;
        case '\'':
            rc = md_buf_puts(out, "&#39;");
            break;
        default:
            rc = md_buf_putc(out, *s);
        }
    }
    return rc;
}

static int url_encode(struct md_buf *out, const char *s)
{
    static const char digits[] = "0123456789ABCDEF";
    int rc = 0;

    for (; *s != '\0' && rc == 0; s++) {
        unsigned char c = (unsigned char)*s;

        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~') {
            rc = md_buf_putc(out, (char)c);
        } else {
            char esc[3] = { '%', digits[c >> 4], digits[c & 0x0f] };

            rc = md_buf_append(out, esc, sizeof(esc));
        }
    }
    return rc;
}

/* ---- a writer that remembers the first failure --------------------- */

struct writer {
    struct md_buf *out;
    struct md_buf tmp;      /* scratch for escaping in two steps */
    md_instant now;         /* the digest's time, for health */
    int failed;
};

static void put(struct writer *w, const char *s)
{
    if (!w->failed && md_buf_puts(w->out, s) != 0)
        w->failed = 1;
}

static void putf(struct writer *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void putf(struct writer *w, const char *fmt, ...)
{
    va_list ap;
    char *text;
    int n;

    if (w->failed)
        return;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    text = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (text == NULL) {
        w->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(text, (size_t)n + 1, fmt, ap);
    va_end(ap);
    put(w, text);
    free(text);
}

/* A value for the text part: sanitised and cut at max characters. */
static void put_text(struct writer *w, const char *s, size_t max)
{
    if (!w->failed && md_text_sanitize(w->out, s != NULL ? s : "", max) != 0)
        w->failed = 1;
}

/* A value for the HTML part: sanitised, cut, then HTML-escaped. */
static void put_html(struct writer *w, const char *s, size_t max)
{
    if (w->failed)
        return;
    md_buf_reset(&w->tmp);
    if (md_text_sanitize(&w->tmp, s != NULL ? s : "", max) != 0 ||
        md_html_escape(w->out, w->tmp.data != NULL ? w->tmp.data : "") != 0)
        w->failed = 1;
}

static void put_url_part(struct writer *w, const char *s)
{
    if (!w->failed && url_encode(w->out, s) != 0)
        w->failed = 1;
}

static void put_time(struct writer *w, md_instant t)
{
    char text[MD_TIME_TEXT_MAX];

    if (t == 0)
        put(w, "unknown");
    else
        put(w, md_time_format_seconds(t, text, sizeof(text)));
}

/* The first 12 hex digits of a query hash, enough to tell versions
 * apart. */
static void put_short_hash(struct writer *w, const char *sha256)
{
    char text[13];
    size_t n = 0;

    for (; sha256 != NULL && sha256[n] != '\0' && n < 12; n++) {
        char c = sha256[n];

        text[n] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ? c : '?';
    }
    text[n] = '\0';
    put(w, n > 0 ? text : "unknown");
}

/* Seconds in words: "5 days", "1 hour", "90 minutes", "45 seconds". */
static void put_duration(struct writer *w, int64_t seconds)
{
    static const struct {
        int64_t seconds;
        const char *unit;
    } units[] = {
        { 86400, "day" }, { 3600, "hour" }, { 60, "minute" }, { 1, "second" },
    };

    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        int64_t n;

        if (seconds % units[i].seconds != 0 && units[i].seconds != 1)
            continue;
        n = seconds / units[i].seconds;
        putf(w, "%lld %s%s", (long long)n, units[i].unit, n == 1 ? "" : "s");
        return;
    }
}

static int writer_finish(struct writer *w, struct md_error *err)
{
    md_buf_free(&w->tmp);
    if (w->failed)
        return md_error_set(err, MD_E_INTERNAL,
                            "out of memory while rendering the digest");
    return 0;
}

/* ---- grouping devices across rules ---------------------------------- */

static int severity_rank(const char *severity)
{
    static const char *const names[] = {
        "informational", "low", "medium", "high"
    };

    if (severity == NULL)
        return -1;
    for (int i = 0; i < 4; i++) {
        if (md_strcasecmp(severity, names[i]) == 0)
            return i;
    }
    return -1;
}

/* A case hit and the key of its device. */
struct keyed_hit {
    const char *key;
    size_t hit;
};

/* One device of the body, with the hits of every rule that found it. */
struct device_group {
    struct keyed_hit key;   /* the device key and its first hit */
    size_t first;           /* into the sorted hit index */
    size_t count;
    int severity;           /* highest severity of its rules */
    md_instant first_seen;  /* earliest over its hits; 0: unknown */
    md_instant last_seen;   /* latest */
    md_instant observed;    /* earliest */
};

struct grouping {
    struct keyed_hit *order;    /* case hits, sorted by device key */
    size_t norder;
    struct device_group *groups;
    size_t ngroups;
    const struct md_digest *digest;
};

/* Whether a hit is one the body lists by device: new, returned, renamed
 * or tracked. */
static int is_case(enum md_change change)
{
    return change == MD_CHANGE_NEW || change == MD_CHANGE_RETURNED ||
           change == MD_CHANGE_RENAMED || change == MD_CHANGE_TRACKED;
}

static int compare_keyed(const void *a, const void *b)
{
    const struct keyed_hit *x = a;
    const struct keyed_hit *y = b;
    int c = md_strcasecmp(x->key, y->key);

    if (c != 0)
        return c;
    return (x->hit > y->hit) - (x->hit < y->hit);
}

static md_instant min_known(md_instant a, md_instant b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    return a < b ? a : b;
}

/* Most severe first, then the earliest telemetry, then by key; the key
 * and the first hit's index are unique, so the order is total. */
static int compare_groups(const void *a, const void *b)
{
    const struct device_group *x = a;
    const struct device_group *y = b;
    md_instant tx = min_known(x->first_seen, x->observed);
    md_instant ty = min_known(y->first_seen, y->observed);

    if (x->severity != y->severity)
        return y->severity - x->severity;
    if (tx != ty)
        return (tx > ty) - (tx < ty);
    return compare_keyed(&x->key, &y->key);
}

static void grouping_free(struct grouping *g)
{
    free(g->order);
    free(g->groups);
}

static int group_devices(const struct md_digest *d, struct grouping *g)
{
    memset(g, 0, sizeof(*g));
    g->digest = d;
    if (d->nhits == 0)
        return 0;
    g->order = calloc(d->nhits, sizeof(*g->order));
    g->groups = calloc(d->nhits, sizeof(*g->groups));
    if (g->order == NULL || g->groups == NULL) {
        grouping_free(g);
        return -1;
    }

    for (size_t i = 0; i < d->nhits; i++) {
        if (!is_case(d->hits[i].change))
            continue;
        g->order[g->norder].key = device_key(&d->hits[i]);
        g->order[g->norder].hit = i;
        g->norder++;
    }
    qsort(g->order, g->norder, sizeof(*g->order), compare_keyed);

    for (size_t i = 0; i < g->norder; i++) {
        const struct md_digest_hit *hit = &d->hits[g->order[i].hit];
        struct device_group *group;
        int severity = severity_rank(d->rules[hit->rule].severity);

        if (i == 0 || md_strcasecmp(g->order[i - 1].key,
                                    g->order[i].key) != 0) {
            group = &g->groups[g->ngroups++];
            group->key = g->order[i];
            group->first = i;
            group->severity = -1;
        }
        group = &g->groups[g->ngroups - 1];
        group->count++;
        if (severity > group->severity)
            group->severity = severity;
        group->first_seen = min_known(group->first_seen, hit->first_seen);
        group->observed = min_known(group->observed, hit->observed);
        if (hit->last_seen > group->last_seen)
            group->last_seen = hit->last_seen;
    }
    qsort(g->groups, g->ngroups, sizeof(*g->groups), compare_groups);
    return 0;
}

static const struct md_digest_hit *group_hit(const struct grouping *g,
                                             const struct device_group *grp,
                                             size_t i)
{
    return &g->digest->hits[g->order[grp->first + i].hit];
}

/* The group's display name: the first non-empty DeviceName. */
static const char *group_name(const struct grouping *g,
                              const struct device_group *grp)
{
    for (size_t i = 0; i < grp->count; i++) {
        const char *name = group_hit(g, grp, i)->device_name;

        if (name != NULL && name[0] != '\0')
            return name;
    }
    return "(no DeviceName)";
}

static const char *group_id(const struct grouping *g,
                            const struct device_group *grp)
{
    for (size_t i = 0; i < grp->count; i++) {
        const char *id = group_hit(g, grp, i)->device_id;

        if (id != NULL && id[0] != '\0')
            return id;
    }
    return NULL;
}

static size_t body_rows(const struct md_report_options *opts, size_t n)
{
    long max = opts != NULL ? opts->max_rows_in_body : 200;

    if (max < 0)
        max = 0;
    return (size_t)max < n ? (size_t)max : n;
}

/* ---- links and the pivot -------------------------------------------- */

static void put_portal_url(struct writer *w, const char *tenant,
                           const char *device_id)
{
    put(w, PORTAL_MACHINE_URL);
    put_url_part(w, device_id);
    put(w, "/overview?tid=");
    put_url_part(w, tenant);
}

/* Whether id is a technique id, "T1219" or "T1566.001". */
static int valid_technique(const char *id)
{
    size_t len = strlen(id);

    if (len != 5 && len != 9)
        return 0;
    if (id[0] != 'T')
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (i == 5 ? id[i] != '.' : (id[i] < '0' || id[i] > '9'))
            return 0;
    }
    return 1;
}

static void put_technique_url(struct writer *w, const char *id)
{
    put(w, MITRE_TECHNIQUE_URL);
    if (!w->failed && md_buf_append(w->out, id, 5) != 0)
        w->failed = 1;
    put(w, "/");
    if (id[5] == '.') {
        put(w, id + 6);
        put(w, "/");
    }
}

/* DeviceIds are 40 hex digits; anything outside this set gets no pivot,
 * so that a hostile id can never break out of the KQL string. */
static int safe_kql_id(const char *id)
{
    if (id == NULL || id[0] == '\0' || strlen(id) > 128)
        return 0;
    for (; *id != '\0'; id++) {
        char c = *id;

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* Write the pivot query, each line preceded by indent.  The caller checks
 * the id with safe_kql_id() first. */
static void put_pivot(struct writer *w, const char *indent, const char *id,
                      md_instant around)
{
    char from[MD_TIME_TEXT_MAX];
    char to[MD_TIME_TEXT_MAX];
    md_instant hour = 3600 * MD_TICKS_PER_SECOND;

    putf(w, "%sunion DeviceProcessEvents, DeviceNetworkEvents\n", indent);
    putf(w, "%s| where DeviceId == \"%s\"\n", indent, id);
    if (around != 0) {
        putf(w, "%s| where Timestamp between (datetime(%s) .. "
             "datetime(%s))\n", indent,
             md_time_format_seconds(around - hour, from, sizeof(from)),
             md_time_format_seconds(around + hour, to, sizeof(to)));
    } else {
        putf(w, "%s| where Timestamp > ago(1d)\n", indent);
    }
    putf(w, "%s| project Timestamp, ActionType, FileName, "
         "ProcessCommandLine, RemoteIP, RemoteUrl\n", indent);
}

static const char *rule_title(const struct md_digest_rule *rule)
{
    return rule->name != NULL && rule->name[0] != '\0' ? rule->name
                                                       : rule->rule_id;
}

/* Write the change of a hit, "renamed from OLD" and "tracked: new
 * COLUMN value VALUE" included, through the text or HTML value writer. */
static void put_change(struct writer *w, const struct md_digest_hit *hit,
                       void (*value)(struct writer *, const char *, size_t))
{
    put(w, md_change_name(hit->change));
    if (hit->change == MD_CHANGE_RENAMED && hit->previous_name != NULL) {
        put(w, " from ");
        value(w, hit->previous_name, MD_REPORT_VALUE_MAX);
    }
    if (hit->change == MD_CHANGE_TRACKED && hit->tracked_column != NULL) {
        put(w, ": new ");
        value(w, hit->tracked_column, MD_REPORT_VALUE_MAX);
        put(w, " value ");
        value(w, hit->tracked_value != NULL ? hit->tracked_value : "(null)",
              MD_REPORT_VALUE_MAX);
    }
}

/* ---- the text part --------------------------------------------------- */

static void text_rule_of_hit(struct writer *w, const struct md_digest *d,
                             const struct md_digest_hit *hit)
{
    const struct md_digest_rule *rule = &d->rules[hit->rule];

    put(w, "   - ");
    put_text(w, rule_title(rule), MD_REPORT_VALUE_MAX);
    put(w, " (");
    put_text(w, rule->rule_id, MD_REPORT_VALUE_MAX);
    put(w, "), severity ");
    put_text(w, rule->severity != NULL ? rule->severity : "unknown",
             MD_REPORT_VALUE_MAX);
    put(w, ", ");
    put_change(w, hit, put_text);
    put(w, "\n");

    if (rule->ntactics > 0) {
        put(w, "     Tactics: ");
        for (size_t i = 0; i < rule->ntactics; i++) {
            put(w, i > 0 ? ", " : "");
            put_text(w, rule->tactics[i], MD_REPORT_VALUE_MAX);
        }
        put(w, "\n");
    }
    for (size_t i = 0; i < rule->ntechniques; i++) {
        put(w, "     Technique: ");
        put_text(w, rule->techniques[i], MD_REPORT_VALUE_MAX);
        if (valid_technique(rule->techniques[i])) {
            put(w, " <");
            put_technique_url(w, rule->techniques[i]);
            put(w, ">");
        }
        put(w, "\n");
    }
    for (size_t i = 0; i < hit->ncolumns; i++) {
        put(w, "     ");
        put_text(w, hit->columns[i].name, MD_REPORT_VALUE_MAX);
        put(w, ": ");
        put_text(w, hit->columns[i].value != NULL ? hit->columns[i].value
                                                  : "(null)",
                 MD_REPORT_VALUE_MAX);
        put(w, "\n");
    }
}

static void text_device(struct writer *w, const struct grouping *g,
                        const struct device_group *grp, size_t number)
{
    const struct md_digest *d = g->digest;
    const char *id = group_id(g, grp);

    putf(w, "%zu. ", number);
    put_text(w, group_name(g, grp), MD_REPORT_VALUE_MAX);
    put(w, "\n   DeviceId: ");
    put_text(w, id != NULL ? id : "unknown", MD_REPORT_VALUE_MAX);
    if (id != NULL) {
        put(w, "\n   Portal: ");
        put_portal_url(w, d->tenant, id);
    }
    put(w, "\n   FirstSeen: ");
    put_time(w, grp->first_seen);
    put(w, "  LastSeen: ");
    put_time(w, grp->last_seen);
    put(w, "\n   First observed by mdhunt: ");
    put_time(w, grp->observed);
    put(w, "\n   Found by:\n");
    for (size_t i = 0; i < grp->count; i++)
        text_rule_of_hit(w, d, group_hit(g, grp, i));

    if (safe_kql_id(id)) {
        put(w, "   Pivot (KQL for advanced hunting):\n");
        put_pivot(w, "     ", id, min_known(grp->first_seen, grp->observed));
    } else if (id != NULL) {
        put(w, "   No KQL pivot: the DeviceId has characters outside "
            "A-Z a-z 0-9 - _ .\n");
    }
    put(w, "\n");
}

/* Count a rule's hits of one change. */
static size_t rule_hits(const struct md_digest *d, size_t rule,
                        enum md_change change)
{
    size_t n = 0;

    for (size_t i = 0; i < d->nhits; i++)
        n += d->hits[i].rule == rule && d->hits[i].change == change;
    return n;
}

static void text_gone(struct writer *w, const struct md_digest *d,
                      size_t rule, size_t ngone)
{
    size_t named = 0;

    putf(w, "  Gone: %zu device%s not seen", ngone, ngone == 1 ? "" : "s");
    if (d->rules[rule].gone_after > 0) {
        put(w, " in the last ");
        put_duration(w, d->rules[rule].gone_after);
    }
    put(w, ": ");
    for (size_t i = 0; i < d->nhits && named < GONE_NAMES_MAX; i++) {
        const struct md_digest_hit *hit = &d->hits[i];

        if (hit->rule != rule || hit->change != MD_CHANGE_GONE)
            continue;
        put(w, named > 0 ? ", " : "");
        put_text(w, hit->device_name != NULL ? hit->device_name
                                             : device_key(hit),
                 MD_REPORT_VALUE_MAX);
        named++;
    }
    if (ngone > named)
        putf(w, " and %zu more", ngone - named);
    put(w, "\n");
}

/* Append the end of an exclusion entry as the file writes it. */
static void put_expiry(struct writer *w, md_instant expires)
{
    char text[MD_TIME_TEXT_MAX];

    if (expires == 0) {
        put(w, "unknown");
        return;
    }
    put(w, md_exclusion_format_expiry(expires, text, sizeof(text)));
}

static void text_rule_exclusion(struct writer *w,
                                const struct md_digest_exclusion *x)
{
    put(w, "  Excluded by ");
    put_text(w, x->id, MD_REPORT_VALUE_MAX);
    putf(w, ": %ld device%s (reason: ", x->devices,
         x->devices == 1 ? "" : "s");
    put_text(w, x->reason != NULL ? x->reason : "", MD_REPORT_VALUE_MAX);
    put(w, "; owner: ");
    put_text(w, x->owner != NULL ? x->owner : "", MD_REPORT_VALUE_MAX);
    put(w, "; expires ");
    put_expiry(w, x->expires);
    put(w, ")\n");
}

static void text_rule(struct writer *w, const struct md_digest *d,
                      size_t index)
{
    const struct md_digest_rule *rule = &d->rules[index];
    size_t nbaseline = rule_hits(d, index, MD_CHANGE_BASELINE);
    size_t ngone = rule_hits(d, index, MD_CHANGE_GONE);

    put(w, "- ");
    put_text(w, rule_title(rule), MD_REPORT_VALUE_MAX);
    put(w, " (");
    put_text(w, rule->rule_id, MD_REPORT_VALUE_MAX);
    put(w, ")\n  Window: ");
    put_time(w, rule->window_start);
    put(w, " to ");
    put_time(w, rule->window_end);
    put(w, ", backend ");
    put_text(w, rule->backend != NULL ? rule->backend : "unknown", 32);
    put(w, ", tenant ");
    put_text(w, d->tenant, MD_REPORT_VALUE_MAX);
    put(w, ", query ");
    put_short_hash(w, rule->query_sha256);
    put(w, "\n  Result: ");
    if (rule->truncated_runs > 0)
        putf(w, "may be truncated (%ld run%s reached the row limit)",
             rule->truncated_runs, rule->truncated_runs == 1 ? "" : "s");
    else
        put(w, "complete");
    putf(w, "; %ld device%s excluded\n", rule->excluded,
         rule->excluded == 1 ? "" : "s");
    for (size_t i = 0; i < rule->nexclusions; i++)
        text_rule_exclusion(w, &rule->exclusions[i]);
    if (nbaseline > 0)
        putf(w, "  Baseline: %zu device%s, review once (listed in the "
             "attached CSV)\n", nbaseline, nbaseline == 1 ? "" : "s");
    if (ngone > 0)
        text_gone(w, d, index, ngone);
}

struct health_totals {
    size_t rules_run;
    long runs;
    long failed;
    long truncated;
    long throttled;
    size_t unhealthy;
};

static void health_totals(const struct md_digest *d, md_instant now,
                          struct health_totals *t)
{
    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < d->nrules; i++) {
        const struct md_digest_rule *rule = &d->rules[i];

        t->rules_run += rule->runs > 0;
        t->runs += rule->runs;
        t->failed += rule->failed_runs;
        t->truncated += rule->truncated_runs;
        t->throttled += rule->throttled_runs;
        t->unhealthy += md_digest_rule_unhealthy(rule, now) ||
                        rule->consecutive_failures > 0;
    }
}

/* Whether a rule is listed among the problems of the health section. */
static int rule_has_problem(const struct md_digest_rule *rule,
                            md_instant now)
{
    return rule->consecutive_failures > 0 ||
           md_digest_rule_unhealthy(rule, now);
}

static void text_problem(struct writer *w, const struct md_digest_rule *rule,
                         md_instant now)
{
    put(w, "- ");
    put_text(w, rule->rule_id, MD_REPORT_VALUE_MAX);
    put(w, ": ");
    if (rule->consecutive_failures > 0)
        putf(w, "%ld failure%s in a row; ", rule->consecutive_failures,
             rule->consecutive_failures == 1 ? "" : "s");
    put(w, "last success ");
    if (rule->last_success == 0)
        put(w, "never");
    else
        put_time(w, rule->last_success);
    if (rule_stale(rule, now)) {
        put(w, ", more than twice its frequency (");
        put_duration(w, rule->frequency);
        put(w, ") ago");
    }
    if (rule->last_error_kind != NULL || rule->last_error != NULL) {
        put(w, "\n  Last error (");
        put_text(w, rule->last_error_kind != NULL ? rule->last_error_kind
                                                  : "unknown", 32);
        put(w, "): ");
        put_text(w, rule->last_error != NULL ? rule->last_error : "",
                 4 * MD_REPORT_VALUE_MAX);
    }
    put(w, "\n");
}

static void text_health(struct writer *w, const struct md_digest *d)
{
    struct health_totals t;

    health_totals(d, w->now, &t);
    put(w, "## Health\n\n");
    putf(w, "Rules run: %zu (%ld runs). Failed runs: %ld. Truncated runs: "
         "%ld. Throttled runs: %ld.\n", t.rules_run, t.runs, t.failed,
         t.truncated, t.throttled);
    if (t.unhealthy == 0) {
        put(w, "Every rule's last run succeeded.\n");
        return;
    }
    put(w, "Rules with problems:\n");
    for (size_t i = 0; i < d->nrules; i++) {
        if (rule_has_problem(&d->rules[i], w->now))
            text_problem(w, &d->rules[i], w->now);
    }
}

/* Count the hits of one change over every rule. */
static size_t change_hits(const struct md_digest *d, enum md_change change)
{
    size_t n = 0;

    for (size_t i = 0; i < d->nhits; i++)
        n += d->hits[i].change == change;
    return n;
}

static size_t exclusion_issue_count(const struct md_digest *d)
{
    size_t n = 0;

    for (size_t i = 0; i < d->nrules; i++)
        n += d->rules[i].nexclusion_issues;
    return n;
}

static void text_exclusion_hit(struct writer *w, const struct md_digest *d,
                               const struct md_digest_hit *hit)
{
    put(w, "- ");
    put_text(w, hit->device_name != NULL ? hit->device_name
                                         : device_key(hit),
             MD_REPORT_VALUE_MAX);
    if (hit->device_id != NULL && hit->device_name != NULL) {
        put(w, " (");
        put_text(w, hit->device_id, MD_REPORT_VALUE_MAX);
        put(w, ")");
    }
    put(w, "\n  Rule: ");
    put_text(w, rule_title(&d->rules[hit->rule]), MD_REPORT_VALUE_MAX);
    put(w, "\n  Exclusion ");
    put_text(w, hit->exclusion_id != NULL ? hit->exclusion_id : "(unknown)",
             MD_REPORT_VALUE_MAX);
    put(w, ": ");
    put_text(w, hit->exclusion_reason != NULL ? hit->exclusion_reason : "",
             MD_REPORT_VALUE_MAX);
    put(w, "; owner ");
    put_text(w, hit->exclusion_owner != NULL ? hit->exclusion_owner : "",
             MD_REPORT_VALUE_MAX);
    put(w, "; expires ");
    put_expiry(w, hit->exclusion_expires);
    put(w, "\n");
}

/* List the hits of change, at most max of them. */
static void text_exclusion_list(struct writer *w, const struct md_digest *d,
                                enum md_change change, size_t max)
{
    size_t n = change_hits(d, change);
    size_t listed = 0;

    if (n == 0)
        return;
    if (change == MD_CHANGE_UNCOVERED)
        putf(w, "No longer excluded (uncovered), review as new: %zu "
             "device%s\n", n, n == 1 ? "" : "s");
    else
        putf(w, "Excluded for the first time: %zu device%s\n", n,
             n == 1 ? "" : "s");
    for (size_t i = 0; i < d->nhits && listed < max; i++) {
        if (d->hits[i].change != change)
            continue;
        text_exclusion_hit(w, d, &d->hits[i]);
        listed++;
    }
    if (n > listed)
        putf(w, "... and %zu more in the attached CSV.\n", n - listed);
    put(w, "\n");
}

static void text_exclusions(struct writer *w, const struct md_digest *d,
                            size_t max)
{
    if (change_hits(d, MD_CHANGE_UNCOVERED) == 0 &&
        change_hits(d, MD_CHANGE_EXCLUDED) == 0)
        return;
    put(w, "## Exclusions\n\n");
    text_exclusion_list(w, d, MD_CHANGE_UNCOVERED, max);
    text_exclusion_list(w, d, MD_CHANGE_EXCLUDED, max);
}

static void text_exclusion_issues(struct writer *w, const struct md_digest *d)
{
    if (exclusion_issue_count(d) == 0)
        return;
    put(w, "Exclusion entries not applied:\n");
    for (size_t i = 0; i < d->nrules; i++) {
        const struct md_digest_rule *rule = &d->rules[i];

        for (size_t k = 0; k < rule->nexclusion_issues; k++) {
            put(w, "- ");
            put_text(w, rule->rule_id, MD_REPORT_VALUE_MAX);
            put(w, ": ");
            put_text(w, rule->exclusion_issues[k], 4 * MD_REPORT_VALUE_MAX);
            put(w, "\n");
        }
    }
}

static void put_summary(struct writer *w, const struct md_digest *d)
{
    size_t nnew = md_digest_count_devices(d, MD_CHANGE_NEW);
    size_t nreturned = md_digest_count_devices(d, MD_CHANGE_RETURNED);
    size_t nrenamed = md_digest_count_devices(d, MD_CHANGE_RENAMED);
    size_t ntracked = md_digest_count_devices(d, MD_CHANGE_TRACKED);
    size_t nuncovered = md_digest_count_devices(d, MD_CHANGE_UNCOVERED);

    putf(w, "New devices: %zu, returned: %zu, renamed: %zu, tracked: %zu",
         nnew, nreturned, nrenamed, ntracked);
    if (nuncovered > 0)
        putf(w, ", no longer excluded: %zu", nuncovered);
}

int md_report_text(const struct md_digest *d,
                   const struct md_report_options *opts,
                   struct md_buf *out, struct md_error *err)
{
    struct writer w = { out, MD_BUF_INIT, d->generated, 0 };
    struct grouping g;
    size_t in_body;

    if (group_devices(d, &g) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    in_body = body_rows(opts, g.ngroups);

    put(&w, "mdhunt digest for tenant ");
    put_text(&w, d->tenant, MD_REPORT_VALUE_MAX);
    put(&w, " at ");
    put_time(&w, d->generated);
    put(&w, "\n\n");
    put_summary(&w, d);
    put(&w, ".\n\n## Devices\n\n");
    if (g.ngroups == 0)
        put(&w, "No new, returned, renamed or tracked devices.\n\n");
    for (size_t i = 0; i < in_body; i++)
        text_device(&w, &g, &g.groups[i], i + 1);
    if (g.ngroups > in_body)
        putf(&w, "... and %zu more device%s in the attached CSV.\n\n",
             g.ngroups - in_body, g.ngroups - in_body == 1 ? "" : "s");

    put(&w, "## Rules\n\n");
    for (size_t i = 0; i < d->nrules; i++)
        text_rule(&w, d, i);
    put(&w, "\n");
    text_exclusions(&w, d, body_rows(opts, d->nhits));
    text_health(&w, d);
    text_exclusion_issues(&w, d);
    grouping_free(&g);
    return writer_finish(&w, err);
}

/* ---- the HTML part --------------------------------------------------- */

#define STYLE_BODY "font-family:Arial,Helvetica,sans-serif;font-size:14px;" \
                   "color:#222222"
#define STYLE_CARD "border:1px solid #cccccc;padding:8px;margin:8px 0"
#define STYLE_LABEL "color:#666666;padding-right:12px;vertical-align:top"
#define STYLE_PRE "background:#f4f4f4;padding:6px;font-size:12px;" \
                  "white-space:pre-wrap"

static void html_link_open(struct writer *w)
{
    put(w, "<a style=\"color:#0b5cad\" href=\"");
}

static void html_row_label(struct writer *w, const char *label)
{
    putf(w, "<tr><td style=\"%s\">%s</td><td>", STYLE_LABEL, label);
}

static void html_rule_of_hit(struct writer *w, const struct md_digest *d,
                             const struct md_digest_hit *hit)
{
    const struct md_digest_rule *rule = &d->rules[hit->rule];

    put(w, "<li><b>");
    put_html(w, rule_title(rule), MD_REPORT_VALUE_MAX);
    put(w, "</b> (");
    put_html(w, rule->rule_id, MD_REPORT_VALUE_MAX);
    put(w, "), severity ");
    put_html(w, rule->severity != NULL ? rule->severity : "unknown",
             MD_REPORT_VALUE_MAX);
    put(w, ", ");
    put_change(w, hit, put_html);
    if (rule->ntactics > 0) {
        put(w, "<br>Tactics: ");
        for (size_t i = 0; i < rule->ntactics; i++) {
            put(w, i > 0 ? ", " : "");
            put_html(w, rule->tactics[i], MD_REPORT_VALUE_MAX);
        }
    }
    if (rule->ntechniques > 0)
        put(w, "<br>Techniques: ");
    for (size_t i = 0; i < rule->ntechniques; i++) {
        const char *id = rule->techniques[i];

        put(w, i > 0 ? ", " : "");
        if (valid_technique(id)) {
            html_link_open(w);
            put_technique_url(w, id);
            put(w, "\">");
            put(w, id);
            put(w, "</a>");
        } else {
            put_html(w, id, MD_REPORT_VALUE_MAX);
        }
    }
    for (size_t i = 0; i < hit->ncolumns; i++) {
        put(w, "<br>");
        put_html(w, hit->columns[i].name, MD_REPORT_VALUE_MAX);
        put(w, ": ");
        put_html(w, hit->columns[i].value != NULL ? hit->columns[i].value
                                                  : "(null)",
                 MD_REPORT_VALUE_MAX);
    }
    put(w, "</li>\n");
}

static void html_device(struct writer *w, const struct grouping *g,
                        const struct device_group *grp)
{
    const struct md_digest *d = g->digest;
    const char *id = group_id(g, grp);

    putf(w, "<div style=\"%s\">\n<div style=\"font-size:16px;"
         "font-weight:bold\">", STYLE_CARD);
    put_html(w, group_name(g, grp), MD_REPORT_VALUE_MAX);
    put(w, "</div>\n<table style=\"border-collapse:collapse\">\n");
    html_row_label(w, "DeviceId");
    if (id != NULL) {
        html_link_open(w);
        put_portal_url(w, d->tenant, id);
        put(w, "\">");
        put_html(w, id, MD_REPORT_VALUE_MAX);
        put(w, "</a>");
    } else {
        put(w, "unknown");
    }
    put(w, "</td></tr>\n");
    html_row_label(w, "FirstSeen");
    put_time(w, grp->first_seen);
    put(w, "</td></tr>\n");
    html_row_label(w, "LastSeen");
    put_time(w, grp->last_seen);
    put(w, "</td></tr>\n");
    html_row_label(w, "First observed by mdhunt");
    put_time(w, grp->observed);
    put(w, "</td></tr>\n</table>\n<ul>\n");
    for (size_t i = 0; i < grp->count; i++)
        html_rule_of_hit(w, d, group_hit(g, grp, i));
    put(w, "</ul>\n");

    if (safe_kql_id(id)) {
        struct md_buf query = MD_BUF_INIT;
        struct writer qw = { &query, MD_BUF_INIT, 0, 0 };

        putf(w, "<div>Pivot (KQL for advanced hunting):</div>\n"
             "<pre style=\"%s\">", STYLE_PRE);
        put_pivot(&qw, "", id, min_known(grp->first_seen, grp->observed));
        if (qw.failed || md_html_escape(w->out, query.data) != 0)
            w->failed = 1;
        md_buf_free(&query);
        put(w, "</pre>\n");
    }
    put(w, "</div>\n");
}

static void html_rule_exclusion(struct writer *w,
                                const struct md_digest_exclusion *x)
{
    put(w, "<br>Excluded by <b>");
    put_html(w, x->id, MD_REPORT_VALUE_MAX);
    putf(w, "</b>: %ld device%s (reason: ", x->devices,
         x->devices == 1 ? "" : "s");
    put_html(w, x->reason != NULL ? x->reason : "", MD_REPORT_VALUE_MAX);
    put(w, "; owner: ");
    put_html(w, x->owner != NULL ? x->owner : "", MD_REPORT_VALUE_MAX);
    put(w, "; expires ");
    put_expiry(w, x->expires);
    put(w, ")");
}

static void html_rule(struct writer *w, const struct md_digest *d,
                      size_t index)
{
    const struct md_digest_rule *rule = &d->rules[index];
    size_t nbaseline = rule_hits(d, index, MD_CHANGE_BASELINE);
    size_t ngone = rule_hits(d, index, MD_CHANGE_GONE);
    size_t named = 0;

    put(w, "<li><b>");
    put_html(w, rule_title(rule), MD_REPORT_VALUE_MAX);
    put(w, "</b> (");
    put_html(w, rule->rule_id, MD_REPORT_VALUE_MAX);
    put(w, ")<br>Window: ");
    put_time(w, rule->window_start);
    put(w, " to ");
    put_time(w, rule->window_end);
    put(w, ", backend ");
    put_html(w, rule->backend != NULL ? rule->backend : "unknown", 32);
    put(w, ", tenant ");
    put_html(w, d->tenant, MD_REPORT_VALUE_MAX);
    put(w, ", query ");
    put_short_hash(w, rule->query_sha256);
    put(w, "<br>Result: ");
    if (rule->truncated_runs > 0)
        putf(w, "<b>may be truncated</b> (%ld run%s reached the row limit)",
             rule->truncated_runs, rule->truncated_runs == 1 ? "" : "s");
    else
        put(w, "complete");
    putf(w, "; %ld device%s excluded", rule->excluded,
         rule->excluded == 1 ? "" : "s");
    for (size_t i = 0; i < rule->nexclusions; i++)
        html_rule_exclusion(w, &rule->exclusions[i]);
    if (nbaseline > 0)
        putf(w, "<br>Baseline: %zu device%s, review once (listed in the "
             "attached CSV)", nbaseline, nbaseline == 1 ? "" : "s");
    if (ngone > 0) {
        putf(w, "<br>Gone: %zu device%s not seen", ngone,
             ngone == 1 ? "" : "s");
        if (rule->gone_after > 0) {
            put(w, " in the last ");
            put_duration(w, rule->gone_after);
        }
        put(w, ": ");
        for (size_t i = 0; i < d->nhits && named < GONE_NAMES_MAX; i++) {
            const struct md_digest_hit *hit = &d->hits[i];

            if (hit->rule != index || hit->change != MD_CHANGE_GONE)
                continue;
            put(w, named > 0 ? ", " : "");
            put_html(w, hit->device_name != NULL ? hit->device_name
                                                 : device_key(hit),
                     MD_REPORT_VALUE_MAX);
            named++;
        }
        if (ngone > named)
            putf(w, " and %zu more", ngone - named);
    }
    put(w, "</li>\n");
}

static void html_problem(struct writer *w, const struct md_digest_rule *rule,
                         md_instant now)
{
    put(w, "<li><b>");
    put_html(w, rule->rule_id, MD_REPORT_VALUE_MAX);
    put(w, "</b>: ");
    if (rule->consecutive_failures > 0)
        putf(w, "%ld failure%s in a row; ", rule->consecutive_failures,
             rule->consecutive_failures == 1 ? "" : "s");
    put(w, "last success ");
    if (rule->last_success == 0)
        put(w, "never");
    else
        put_time(w, rule->last_success);
    if (rule_stale(rule, now)) {
        put(w, ", more than twice its frequency (");
        put_duration(w, rule->frequency);
        put(w, ") ago");
    }
    if (rule->last_error_kind != NULL || rule->last_error != NULL) {
        put(w, "<br>Last error (");
        put_html(w, rule->last_error_kind != NULL ? rule->last_error_kind
                                                  : "unknown", 32);
        put(w, "): ");
        put_html(w, rule->last_error != NULL ? rule->last_error : "",
                 4 * MD_REPORT_VALUE_MAX);
    }
    put(w, "</li>\n");
}

static void html_health(struct writer *w, const struct md_digest *d)
{
    struct health_totals t;

    health_totals(d, w->now, &t);
    put(w, "<h3>Health</h3>\n");
    putf(w, "<p>Rules run: %zu (%ld runs). Failed runs: %ld. Truncated "
         "runs: %ld. Throttled runs: %ld.</p>\n", t.rules_run, t.runs,
         t.failed, t.truncated, t.throttled);
    if (t.unhealthy == 0) {
        put(w, "<p>Every rule's last run succeeded.</p>\n");
        return;
    }
    put(w, "<p style=\"color:#b00020\">Rules with problems:</p>\n<ul>\n");
    for (size_t i = 0; i < d->nrules; i++) {
        if (rule_has_problem(&d->rules[i], w->now))
            html_problem(w, &d->rules[i], w->now);
    }
    put(w, "</ul>\n");
}

static void html_exclusion_hit(struct writer *w, const struct md_digest *d,
                               const struct md_digest_hit *hit)
{
    put(w, "<li><b>");
    put_html(w, hit->device_name != NULL ? hit->device_name
                                         : device_key(hit),
             MD_REPORT_VALUE_MAX);
    put(w, "</b>");
    if (hit->device_id != NULL && hit->device_name != NULL) {
        put(w, " (");
        put_html(w, hit->device_id, MD_REPORT_VALUE_MAX);
        put(w, ")");
    }
    put(w, "<br>Rule: ");
    put_html(w, rule_title(&d->rules[hit->rule]), MD_REPORT_VALUE_MAX);
    put(w, "<br>Exclusion <b>");
    put_html(w, hit->exclusion_id != NULL ? hit->exclusion_id : "(unknown)",
             MD_REPORT_VALUE_MAX);
    put(w, "</b>: ");
    put_html(w, hit->exclusion_reason != NULL ? hit->exclusion_reason : "",
             MD_REPORT_VALUE_MAX);
    put(w, "; owner ");
    put_html(w, hit->exclusion_owner != NULL ? hit->exclusion_owner : "",
             MD_REPORT_VALUE_MAX);
    put(w, "; expires ");
    put_expiry(w, hit->exclusion_expires);
    put(w, "</li>\n");
}

static void html_exclusion_list(struct writer *w, const struct md_digest *d,
                                enum md_change change, size_t max)
{
    size_t n = change_hits(d, change);
    size_t listed = 0;

    if (n == 0)
        return;
    if (change == MD_CHANGE_UNCOVERED)
        putf(w, "<p style=\"color:#b00020\">No longer excluded "
             "(uncovered), review as new: %zu device%s</p>\n", n,
             n == 1 ? "" : "s");
    else
        putf(w, "<p>Excluded for the first time: %zu device%s</p>\n", n,
             n == 1 ? "" : "s");
    put(w, "<ul>\n");
    for (size_t i = 0; i < d->nhits && listed < max; i++) {
        if (d->hits[i].change != change)
            continue;
        html_exclusion_hit(w, d, &d->hits[i]);
        listed++;
    }
    put(w, "</ul>\n");
    if (n > listed)
        putf(w, "<p>... and %zu more in the attached CSV.</p>\n",
             n - listed);
}

static void html_exclusions(struct writer *w, const struct md_digest *d,
                            size_t max)
{
    if (change_hits(d, MD_CHANGE_UNCOVERED) == 0 &&
        change_hits(d, MD_CHANGE_EXCLUDED) == 0)
        return;
    put(w, "<h3>Exclusions</h3>\n");
    html_exclusion_list(w, d, MD_CHANGE_UNCOVERED, max);
    html_exclusion_list(w, d, MD_CHANGE_EXCLUDED, max);
}

static void html_exclusion_issues(struct writer *w,
                                  const struct md_digest *d)
{
    if (exclusion_issue_count(d) == 0)
        return;
    put(w, "<p style=\"color:#b00020\">Exclusion entries not "
        "applied:</p>\n<ul>\n");
    for (size_t i = 0; i < d->nrules; i++) {
        const struct md_digest_rule *rule = &d->rules[i];

        for (size_t k = 0; k < rule->nexclusion_issues; k++) {
            put(w, "<li><b>");
            put_html(w, rule->rule_id, MD_REPORT_VALUE_MAX);
            put(w, "</b>: ");
            put_html(w, rule->exclusion_issues[k], 4 * MD_REPORT_VALUE_MAX);
            put(w, "</li>\n");
        }
    }
    put(w, "</ul>\n");
}

int md_report_html(const struct md_digest *d,
                   const struct md_report_options *opts,
                   struct md_buf *out, struct md_error *err)
{
    struct writer w = { out, MD_BUF_INIT, d->generated, 0 };
    struct grouping g;
    size_t in_body;

    if (group_devices(d, &g) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    in_body = body_rows(opts, g.ngroups);

    put(&w, "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>mdhunt digest</title>\n</head>\n");
    putf(&w, "<body style=\"%s\">\n<h2>mdhunt digest for tenant ",
         STYLE_BODY);
    put_html(&w, d->tenant, MD_REPORT_VALUE_MAX);
    put(&w, "</h2>\n<p>");
    put_time(&w, d->generated);
    put(&w, ": ");
    put_summary(&w, d);
    put(&w, ".</p>\n<h3>Devices</h3>\n");
    if (g.ngroups == 0)
        put(&w, "<p>No new, returned, renamed or tracked devices.</p>\n");
    for (size_t i = 0; i < in_body; i++)
        html_device(&w, &g, &g.groups[i]);
    if (g.ngroups > in_body)
        putf(&w, "<p>... and %zu more device%s in the attached CSV.</p>\n",
             g.ngroups - in_body, g.ngroups - in_body == 1 ? "" : "s");

    put(&w, "<h3>Rules</h3>\n<ul>\n");
    for (size_t i = 0; i < d->nrules; i++)
        html_rule(&w, d, i);
    put(&w, "</ul>\n");
    html_exclusions(&w, d, body_rows(opts, d->nhits));
    html_health(&w, d);
    html_exclusion_issues(&w, d);
    put(&w, "</body>\n</html>\n");
    grouping_free(&g);
    return writer_finish(&w, err);
}

/* ---- the CSV attachment ---------------------------------------------- */

static const char *const csv_fixed_columns[] = {
    "change", "review", "device_name", "device_id", "previous_name",
    "tracked_column", "tracked_value",
    "first_seen", "last_seen", "observed_by_mdhunt", "rule_id", "rule_name",
    "severity", "tactics", "techniques", "portal_url", "exclusion_id",
    "exclusion_reason", "exclusion_owner", "exclusion_expires",
};

#define CSV_FIXED (sizeof(csv_fixed_columns) / sizeof(csv_fixed_columns[0]))

/* The result column names of the hits in the CSV, in order of first
 * appearance. */
struct name_list {
    const char **names;
    size_t n;
};

static int collect_columns(const struct md_digest *d, struct name_list *l)
{
    size_t max = 0;

    for (size_t i = 0; i < d->nhits; i++)
        max += d->hits[i].ncolumns;
    l->names = calloc(max > 0 ? max : 1, sizeof(*l->names));
    l->n = 0;
    if (l->names == NULL)
        return -1;
    for (size_t i = 0; i < d->nhits; i++) {
        const struct md_digest_hit *hit = &d->hits[i];

        if (hit->change == MD_CHANGE_GONE)
            continue;
        for (size_t c = 0; c < hit->ncolumns; c++) {
            size_t k = 0;

            while (k < l->n && strcmp(l->names[k], hit->columns[c].name) != 0)
                k++;
            if (k == l->n)
                l->names[l->n++] = hit->columns[c].name;
        }
    }
    return 0;
}

/* A CSV stream that remembers the first failed write. */
struct csv {
    FILE *f;
    int failed;
};

/* Write a field, neutralised against formulas; NULL writes an empty
 * field. */
static void csv_field(struct csv *c, const char *value, int first)
{
    if (c->failed)
        return;
    if (!first && putc(',', c->f) == EOF)
        c->failed = 1;
    else if (value != NULL &&
             md_csv_write_field(c->f, value, strlen(value), 1) != 0)
        c->failed = 1;
}

static void csv_time_field(struct csv *c, md_instant t)
{
    char text[MD_TIME_TEXT_MAX];

    csv_field(c, t != 0 ? md_time_format_seconds(t, text, sizeof(text))
                        : NULL, 0);
}

/* Write several values as one field, separated by ";". */
static void csv_joined_field(struct csv *c, struct md_buf *tmp,
                             const char *const *v, size_t n)
{
    md_buf_reset(tmp);
    for (size_t i = 0; i < n && !c->failed; i++) {
        if ((i > 0 && md_buf_puts(tmp, ";") != 0) ||
            md_buf_puts(tmp, v[i]) != 0)
            c->failed = 1;
    }
    csv_field(c, n > 0 ? tmp->data : NULL, 0);
}

static void csv_row(struct csv *c, const struct md_digest *d,
                    const struct md_digest_hit *hit,
                    const struct name_list *extra, struct md_buf *tmp)
{
    const struct md_digest_rule *rule = &d->rules[hit->rule];
    struct writer url = { tmp, MD_BUF_INIT, 0, 0 };
    char expires[MD_TIME_TEXT_MAX];

    csv_field(c, md_change_name(hit->change), 1);
    csv_field(c, hit->change == MD_CHANGE_BASELINE ? "review" : NULL, 0);
    csv_field(c, hit->device_name, 0);
    csv_field(c, hit->device_id, 0);
    csv_field(c, hit->previous_name, 0);
    csv_field(c, hit->tracked_column, 0);
    csv_field(c, hit->tracked_value, 0);
    csv_time_field(c, hit->first_seen);
    csv_time_field(c, hit->last_seen);
    csv_time_field(c, hit->observed);
    csv_field(c, rule->rule_id, 0);
    csv_field(c, rule->name, 0);
    csv_field(c, rule->severity, 0);
    csv_joined_field(c, tmp, rule->tactics, rule->ntactics);
    csv_joined_field(c, tmp, rule->techniques, rule->ntechniques);
    md_buf_reset(tmp);
    if (hit->device_id != NULL && hit->device_id[0] != '\0') {
        put_portal_url(&url, d->tenant, hit->device_id);
        c->failed |= url.failed;
    }
    csv_field(c, tmp->len > 0 ? tmp->data : NULL, 0);
    csv_field(c, hit->exclusion_id, 0);
    csv_field(c, hit->exclusion_reason, 0);
    csv_field(c, hit->exclusion_owner, 0);
    csv_field(c, hit->exclusion_expires != 0
                     ? md_exclusion_format_expiry(hit->exclusion_expires,
                                                  expires, sizeof(expires))
                     : NULL, 0);

    for (size_t k = 0; k < extra->n; k++) {
        const char *value = NULL;

        for (size_t i = 0; i < hit->ncolumns; i++) {
            if (strcmp(hit->columns[i].name, extra->names[k]) == 0) {
                value = hit->columns[i].value;
                break;
            }
        }
        csv_field(c, value, 0);
    }
    if (!c->failed && fputs("\r\n", c->f) == EOF)
        c->failed = 1;
}

static void csv_rows(struct csv *c, const struct md_digest *d,
                     const struct grouping *g, const struct name_list *extra,
                     struct md_buf *tmp)
{
    for (size_t i = 0; i < CSV_FIXED; i++)
        csv_field(c, csv_fixed_columns[i], i == 0);
    for (size_t k = 0; k < extra->n; k++)
        csv_field(c, extra->names[k], 0);
    if (!c->failed && fputs("\r\n", c->f) == EOF)
        c->failed = 1;

    /* Devices in the body's order, then the baselines, the uncovered
     * and the newly excluded devices. */
    for (size_t i = 0; i < g->ngroups; i++) {
        for (size_t h = 0; h < g->groups[i].count; h++)
            csv_row(c, d, group_hit(g, &g->groups[i], h), extra, tmp);
    }
    for (size_t i = 0; i < d->nhits; i++) {
        if (d->hits[i].change == MD_CHANGE_BASELINE)
            csv_row(c, d, &d->hits[i], extra, tmp);
    }
    for (size_t i = 0; i < d->nhits; i++) {
        if (d->hits[i].change == MD_CHANGE_UNCOVERED)
            csv_row(c, d, &d->hits[i], extra, tmp);
    }
    for (size_t i = 0; i < d->nhits; i++) {
        if (d->hits[i].change == MD_CHANGE_EXCLUDED)
            csv_row(c, d, &d->hits[i], extra, tmp);
    }
}

int md_report_csv(const struct md_digest *d, struct md_buf *out,
                  struct md_error *err)
{
    struct md_buf tmp = MD_BUF_INIT;
    struct name_list extra = { NULL, 0 };
    struct csv c = { NULL, 0 };
    struct grouping g;
    char *data = NULL;
    size_t size = 0;
    int failed;

    if (group_devices(d, &g) != 0)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    /* The rows go through output.c's field writer, which needs a stream,
     * so they are written to memory first. */
    c.f = open_memstream(&data, &size);
    c.failed = c.f == NULL || collect_columns(d, &extra) != 0;
    if (!c.failed)
        csv_rows(&c, d, &g, &extra, &tmp);
    failed = c.failed;
    if (c.f != NULL && fclose(c.f) != 0)
        failed = 1;
    if (!failed && md_buf_append(out, data, size) != 0)
        failed = 1;

    free(data);
    free(extra.names);
    md_buf_free(&tmp);
    grouping_free(&g);
    if (failed)
        return md_error_set(err, MD_E_INTERNAL,
                            "out of memory while rendering the CSV");
    return 0;
}

void md_report_csv_name(const struct md_digest *d, char *buf, size_t size)
{
    time_t secs = (time_t)(d->generated / MD_TICKS_PER_SECOND);
    struct tm tm;

    if (d->generated < 0 || gmtime_r(&secs, &tm) == NULL) {
        snprintf(buf, size, "mdhunt.csv");
        return;
    }
    snprintf(buf, size, "mdhunt-%04d%02d%02d-%02d%02d%02d.csv",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec);
}

/* ---- the subject ----------------------------------------------------- */

int md_report_subject(const struct md_digest *d,
                      const struct md_report_options *opts,
                      struct md_buf *out, struct md_error *err)
{
    struct writer w = { out, MD_BUF_INIT, d->generated, 0 };
    const char *prefix = opts != NULL && opts->subject_prefix != NULL
                             ? opts->subject_prefix
                             : "[mdhunt]";
    size_t nnew = md_digest_count_devices(d, MD_CHANGE_NEW);
    size_t nreturned = md_digest_count_devices(d, MD_CHANGE_RETURNED);
    size_t nrenamed = md_digest_count_devices(d, MD_CHANGE_RENAMED);
    size_t ntracked = md_digest_count_devices(d, MD_CHANGE_TRACKED);
    size_t nbaseline = md_digest_count_devices(d, MD_CHANGE_BASELINE);
    size_t nuncovered = md_digest_count_devices(d, MD_CHANGE_UNCOVERED);
    size_t nproblems = 0;

    for (size_t i = 0; i < d->nrules; i++)
        nproblems += md_digest_rule_unhealthy(&d->rules[i], d->generated);

    put_text(&w, prefix, MD_REPORT_VALUE_MAX);
    if (prefix[0] != '\0')
        put(&w, " ");
    putf(&w, "%zu new device%s", nnew, nnew == 1 ? "" : "s");
    if (nreturned > 0)
        putf(&w, ", %zu returned", nreturned);
    if (nrenamed > 0)
        putf(&w, ", %zu renamed", nrenamed);
    if (ntracked > 0)
        putf(&w, ", %zu tracked", ntracked);
    if (nuncovered > 0)
        putf(&w, ", %zu no longer excluded", nuncovered);
    if (nbaseline > 0)
        putf(&w, ", baseline of %zu to review", nbaseline);
    if (nproblems > 0)
        putf(&w, ", %zu failing rule%s", nproblems,
             nproblems == 1 ? "" : "s");
    put(&w, " (tenant ");
    put_text(&w, d->tenant, MD_REPORT_VALUE_MAX);
    put(&w, ")");
    return writer_finish(&w, err);
}
