/*
 * Reviewed exclusions.  The contract is in include/mdhunt/exclusions.h.
 *
 * libyaml's document API parses the file; every message takes its line
 * from the node marks (0-based in libyaml, 1-based here).  Validation
 * goes on after an error, so that one check lists every problem.
 */
#include "mdhunt/exclusions.h"

#include <errno.h>
#include <fnmatch.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <yaml.h>

#include "mdhunt/buf.h"
#include "mdhunt/log.h"

/* Errors after the first are logged, up to this many. */
#define MAX_LOGGED_ERRORS 20

#define TICKS_PER_DAY (INT64_C(86400) * MD_TICKS_PER_SECOND)

/* Deepest nesting of YAML collections accepted; an entry needs 3. */
#define YAML_DEPTH_MAX 64

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
}

const char *md_match_kind_name(enum md_match_kind kind)
{
    switch (kind) {
    case MD_MATCH_EQUAL:
        return "equal";
    case MD_MATCH_GLOB:
        return "glob";
    case MD_MATCH_REGEX:
        return "regex";
    case MD_MATCH_EXACT:
        return "exact";
    }
    return "unknown";
}

/* ---- Case folding -------------------------------------------------------- */

/* Code points first..last fold to code point + delta; with alternate set
 * only first, first + 2, first + 4 ... fold (upper and lower case
 * letters take turns). */
struct fold_range {
    uint32_t first;
    uint32_t last;
    int32_t delta;
    int alternate;
};

/* Simple case folding, from the Unicode Character Database's
 * CaseFolding.txt (statuses C and S) for the blocks named in
 * exclusions.h, plus U+0130 to "i" as its lower-case mapping. */
static const struct fold_range fold_ranges[] = {
    { 0x0041, 0x005A, 32, 0 },
    { 0x00B5, 0x00B5, 775, 0 },         /* micro sign to Greek mu */
    { 0x00C0, 0x00D6, 32, 0 },
    { 0x00D8, 0x00DE, 32, 0 },
    { 0x0100, 0x012E, 1, 1 },
    { 0x0130, 0x0130, -199, 0 },        /* dotted capital I to i */
    { 0x0132, 0x0136, 1, 1 },
    { 0x0139, 0x0147, 1, 1 },
    { 0x014A, 0x0176, 1, 1 },
    { 0x0178, 0x0178, -121, 0 },        /* Y with diaeresis */
    { 0x0179, 0x017D, 1, 1 },
    { 0x017F, 0x017F, -268, 0 },        /* long s to s */
    { 0x01C4, 0x01C4, 2, 0 },
    { 0x01C5, 0x01C5, 1, 0 },
    { 0x01C7, 0x01C7, 2, 0 },
    { 0x01C8, 0x01C8, 1, 0 },
    { 0x01CA, 0x01CA, 2, 0 },
    { 0x01CB, 0x01DB, 1, 1 },
    { 0x01DE, 0x01EE, 1, 1 },
    { 0x01F1, 0x01F1, 2, 0 },
    { 0x01F2, 0x01F2, 1, 0 },
    { 0x01F4, 0x01F4, 1, 0 },
    { 0x01F8, 0x021E, 1, 1 },
    { 0x0222, 0x0232, 1, 1 },
    { 0x0246, 0x024E, 1, 1 },
    { 0x0386, 0x0386, 38, 0 },
    { 0x0388, 0x038A, 37, 0 },
    { 0x038C, 0x038C, 64, 0 },
    { 0x038E, 0x038F, 63, 0 },
    { 0x0391, 0x03A1, 32, 0 },
    { 0x03A3, 0x03AB, 32, 0 },
    { 0x03C2, 0x03C2, 1, 0 },           /* final sigma to sigma */
    { 0x03D8, 0x03EE, 1, 1 },
    { 0x0400, 0x040F, 80, 0 },
    { 0x0410, 0x042F, 32, 0 },
    { 0x0460, 0x0480, 1, 1 },
    { 0x048A, 0x04BE, 1, 1 },
    { 0x04C0, 0x04C0, 15, 0 },
    { 0x04C1, 0x04CD, 1, 1 },
    { 0x04D0, 0x052E, 1, 1 },
    { 0x0531, 0x0556, 48, 0 },
    { 0x10A0, 0x10C5, 7264, 0 },
    { 0x1E00, 0x1E94, 1, 1 },
    { 0x1E9E, 0x1E9E, -7615, 0 },       /* capital sharp s to sharp s */
    { 0x1EA0, 0x1EFE, 1, 1 },
    { 0xFF21, 0xFF3A, 32, 0 },
};

static uint32_t fold_code_point(uint32_t cp)
{
    size_t n = sizeof(fold_ranges) / sizeof(fold_ranges[0]);

    for (size_t i = 0; i < n; i++) {
        const struct fold_range *r = &fold_ranges[i];

        if (cp < r->first)
            break;
        if (cp > r->last)
            continue;
        if (r->alternate && (cp - r->first) % 2 != 0)
            return cp;
        return (uint32_t)((int32_t)cp + r->delta);
    }
    return cp;
}

/* Decode one UTF-8 sequence at s (n bytes left).  Returns its length, or
 * 0 when the bytes are not valid UTF-8. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t v;

    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        len = 2;
        v = s[0] & 0x1F;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        len = 3;
        v = s[0] & 0x0F;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        len = 4;
        v = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF))) ||
        (len == 4 && (v < 0x10000 || v > 0x10FFFF)))
        return 0;
    *cp = v;
    return len;
}

static int utf8_encode(struct md_buf *b, uint32_t cp)
{
    char out[4];
    size_t len;

    if (cp < 0x80) {
        out[0] = (char)cp;
        len = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        len = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        len = 3;
    } else {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        len = 4;
    }
    return md_buf_append(b, out, len);
}

char *md_exclusion_fold(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    struct md_buf b = MD_BUF_INIT;
    size_t i = 0;

    if (md_buf_puts(&b, "") != 0)
        return NULL;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_decode(p + i, len - i, &cp);
        int rc;

        if (n == 0) {
            rc = md_buf_putc(&b, (char)p[i]);
            n = 1;
        } else {
            rc = utf8_encode(&b, fold_code_point(cp));
        }
        if (rc != 0) {
            md_buf_free(&b);
            return NULL;
        }
        i += n;
    }
    return md_buf_detach(&b);
}

/* Copy len bytes as a C string, with each NUL byte (which a C string
 * cannot hold) replaced by U+FFFD. */
static char *text_without_nul(const char *s, size_t len)
{
    struct md_buf b = MD_BUF_INIT;

    if (md_buf_puts(&b, "") != 0)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        int rc = s[i] == '\0' ? md_buf_puts(&b, "\xEF\xBF\xBD")
                              : md_buf_putc(&b, s[i]);

        if (rc != 0) {
            md_buf_free(&b);
            return NULL;
        }
    }
    return md_buf_detach(&b);
}

/* ---- Conditions ---------------------------------------------------------- */

/* The prepared form of a condition, for matching. */
struct compiled {
    char **folded;          /* equal: each value; glob: the pattern */
    size_t nfolded;
    regex_t regex;
    int has_regex;
};

static void compiled_free(struct compiled *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nfolded; i++)
        free(c->folded[i]);
    free(c->folded);
    if (c->has_regex)
        regfree(&c->regex);
    free(c);
}

/* Compile a condition.  Returns 0, -1 for an invalid regular expression
 * (with its text in msg) or -2 when out of memory. */
static int compile_condition(struct md_exclusion_condition *c, char *msg,
                             size_t size)
{
    struct compiled *cc = calloc(1, sizeof(*cc));
    int rc;

    if (cc == NULL)
        return -2;
    c->compiled = cc;
    if (c->kind == MD_MATCH_EXACT)
        return 0;
    if (c->kind == MD_MATCH_REGEX) {
        rc = regcomp(&cc->regex, c->values[0], REG_EXTENDED | REG_ICASE);
        if (rc == REG_ESPACE)
            return -2;
        if (rc != 0) {
            regerror(rc, &cc->regex, msg, size);
            return -1;
        }
        cc->has_regex = 1;
        return 0;
    }
    cc->folded = calloc(c->nvalues, sizeof(*cc->folded));
    if (cc->folded == NULL)
        return -2;
    for (size_t i = 0; i < c->nvalues; i++) {
        cc->folded[i] = md_exclusion_fold(c->values[i],
                                          strlen(c->values[i]));
        if (cc->folded[i] == NULL)
            return -2;
        cc->nfolded++;
    }
    return 0;
}

static int regex_matches_whole(const regex_t *re, const char *text)
{
    regmatch_t m;

    /* POSIX takes the leftmost and then longest match, so a match of the
     * whole text exists exactly when this one starts at 0 and ends at
     * the end. */
    if (regexec(re, text, 1, &m, 0) != 0)
        return 0;
    return m.rm_so == 0 && (size_t)m.rm_eo == strlen(text);
}

int md_exclusion_condition_matches(const struct md_exclusion_condition *c,
                                   const char *value, size_t len)
{
    const struct compiled *cc = c->compiled;
    char *text;
    char *folded = NULL;
    int match = 0;

    if (c->kind == MD_MATCH_EXACT)
        return len == strlen(c->values[0]) &&
               memcmp(value, c->values[0], len) == 0;

    text = text_without_nul(value, len);
    if (text == NULL)
        return -1;
    if (c->kind == MD_MATCH_REGEX) {
        match = regex_matches_whole(&cc->regex, text);
        free(text);
        return match;
    }

    folded = md_exclusion_fold(text, strlen(text));
    free(text);
    if (folded == NULL)
        return -1;
    if (c->kind == MD_MATCH_GLOB) {
        match = fnmatch(cc->folded[0], folded, FNM_NOESCAPE) == 0;
    } else {
        for (size_t i = 0; i < cc->nfolded && !match; i++)
            match = strcmp(cc->folded[i], folded) == 0;
    }
    free(folded);
    return match;
}

/* ---- Entries ------------------------------------------------------------- */

static void condition_clear(struct md_exclusion_condition *c)
{
    free(c->column);
    for (size_t i = 0; i < c->nvalues; i++)
        free(c->values[i]);
    free(c->values);
    compiled_free(c->compiled);
    memset(c, 0, sizeof(*c));
}

static void entry_clear(struct md_exclusion *e)
{
    free(e->id);
    free(e->rule_id);
    free(e->reason);
    free(e->owner);
    free(e->expires_text);
    for (size_t i = 0; i < e->nconditions; i++)
        condition_clear(&e->conditions[i]);
    free(e->conditions);
    memset(e, 0, sizeof(*e));
}

void md_exclusions_free(struct md_exclusions *x)
{
    if (x == NULL)
        return;
    for (size_t i = 0; i < x->nentries; i++)
        entry_clear(&x->entries[i]);
    free(x->entries);
    free(x->path);
    free(x);
}

const struct md_exclusion *md_exclusions_find(const struct md_exclusions *x,
                                              const char *id)
{
    for (size_t i = 0; x != NULL && i < x->nentries; i++) {
        if (md_strcasecmp(x->entries[i].id, id) == 0)
            return &x->entries[i];
    }
    return NULL;
}

char *md_exclusion_format_expiry(md_instant expires, char *buf,
                                 size_t size)
{
    if (expires % TICKS_PER_DAY != 0) {
        md_time_format(expires, buf, size);
        return buf;
    }
    md_time_format_seconds(expires - TICKS_PER_DAY, buf, size);
    if (size > 10)
        buf[10] = '\0';
    return buf;
}

int md_exclusion_expired(const struct md_exclusion *e, md_instant at)
{
    return at >= e->expires;
}

int md_exclusion_for_rule(const struct md_exclusion *e, const char *rule_id)
{
    return strcmp(e->rule_id, MD_EXCLUSION_ANY_RULE) == 0 ||
           (rule_id != NULL && md_strcasecmp(e->rule_id, rule_id) == 0);
}

/* ---- Loading ------------------------------------------------------------- */

struct loader {
    const char *path;
    yaml_document_t *doc;
    const struct md_exclusions_options *opts;
    struct md_exclusions *x;
    size_t entries_cap;
    struct md_error *err;
    unsigned nerrors;
    int out_of_memory;
};

/* Record an error at a line of the file.  The first one goes into
 * ld->err and later ones are logged. */
__attribute__((format(printf, 3, 4)))
static void report(struct loader *ld, int line, const char *fmt, ...)
{
    char msg[MD_ERR_MESSAGE_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ld->nerrors++;
    if (ld->nerrors == 1)
        md_error_set(ld->err, MD_E_CONFIG, "%s:%d: %s", ld->path, line, msg);
    else if (ld->nerrors <= MAX_LOGGED_ERRORS + 1)
        md_error_log("%s:%d: %s", ld->path, line, msg);
}

static void report_oom(struct loader *ld)
{
    ld->out_of_memory = 1;
}

static int node_line(const yaml_node_t *node)
{
    return (int)node->start_mark.line + 1;
}

static yaml_node_t *node_at(const struct loader *ld, int index)
{
    return yaml_document_get_node(ld->doc, index);
}

static const char *scalar_text(const yaml_node_t *node)
{
    return (const char *)node->data.scalar.value;
}

/* Is the node YAML's null: nothing, "~" or "null" as a plain scalar? */
static int is_null(const yaml_node_t *node)
{
    const char *s;

    if (node->type != YAML_SCALAR_NODE ||
        node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    s = scalar_text(node);
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

/*
 * Copy the text of a value that must be a non-empty scalar.  Returns 0,
 * or -1 after reporting what is wrong (a list, a mapping, null, empty or
 * a NUL character).  what names the value in the message.
 */
static int scalar_value(struct loader *ld, const yaml_node_t *node,
                        const char *what, char **out)
{
    *out = NULL;
    if (node->type != YAML_SCALAR_NODE) {
        report(ld, node_line(node), "%s must be text, not a %s", what,
               node->type == YAML_SEQUENCE_NODE ? "list" : "mapping");
        return -1;
    }
    if (is_null(node) || node->data.scalar.length == 0) {
        report(ld, node_line(node), "%s is empty; write a value", what);
        return -1;
    }
    if (strlen(scalar_text(node)) != node->data.scalar.length) {
        report(ld, node_line(node), "%s contains a NUL character", what);
        return -1;
    }
    *out = md_strdup(scalar_text(node));
    if (*out == NULL) {
        report_oom(ld);
        return -1;
    }
    return 0;
}

/* Parse "YYYY-MM-DD" into the instant 00:00:00Z of that day. */
static int parse_date(const char *s, md_instant *out)
{
    char stamp[32];

    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return -1;
    for (int i = 0; i < 10; i++) {
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
            return -1;
    }
    snprintf(stamp, sizeof(stamp), "%sT00:00:00Z", s);
    return md_time_parse(stamp, strlen(stamp), out);
}

/* The first instant of the UTC day that contains t. */
static md_instant day_start(md_instant t)
{
    md_instant rem = t % TICKS_PER_DAY;

    return rem >= 0 ? t - rem : t - rem - TICKS_PER_DAY;
}

static void check_max_age(struct loader *ld, const struct md_exclusion *e,
                          const char *label, int is_date, int line)
{
    const struct md_exclusions_options *o = ld->opts;
    md_instant limit;
    char text[MD_TIME_TEXT_MAX];
    char age[32];

    if (o->max_age <= 0 ||
        o->max_age > (INT64_MAX - o->now) / MD_TICKS_PER_SECOND)
        return;
    limit = o->now + o->max_age * MD_TICKS_PER_SECOND;
    if (is_date ? e->expires - TICKS_PER_DAY <= day_start(limit)
                : e->expires <= limit)
        return;
    md_duration_format(o->max_age, age, sizeof(age));
    report(ld, line, "expires %s of entry %s is more than %s ahead (the "
           "latest allowed is %.10s); choose an earlier date, or raise "
           "[report] max_exclusion_age", e->expires_text, label, age,
           md_time_format_seconds(limit, text, sizeof(text)));
}

static void load_expires(struct loader *ld, struct md_exclusion *e,
                         const char *label, int line)
{
    md_instant t;
    int is_date = parse_date(e->expires_text, &t) == 0;

    if (is_date) {
        e->expires = t + TICKS_PER_DAY;
    } else if (md_time_parse(e->expires_text, strlen(e->expires_text),
                             &t) == 0) {
        e->expires = t;
    } else {
        report(ld, line, "expires \"%s\" of entry %s is not a date; write "
               "YYYY-MM-DD (the entry then ends with that day, UTC) or a "
               "timestamp such as 2026-03-31T18:00:00Z", e->expires_text,
               label);
        return;
    }
    check_max_age(ld, e, label, is_date, line);
}

static void load_created(struct loader *ld, struct md_exclusion *e,
                         const char *text, int line)
{
    md_instant t;

    if (parse_date(text, &t) != 0) {
        report(ld, line, "created \"%s\" is not a date; write YYYY-MM-DD",
               text);
        return;
    }
    memcpy(e->created, text, MD_EXCLUSION_DATE_SIZE);
}

/* The reserved keys, in the order of enum reserved_key. */
static const char *const reserved_keys[] = {
    "id", "rule", "reason", "owner", "created", "expires"
};

enum reserved_key {
    KEY_ID, KEY_RULE, KEY_REASON, KEY_OWNER, KEY_CREATED, KEY_EXPIRES,
    KEY_COUNT
};

static struct md_exclusion_condition *add_condition(struct md_exclusion *e)
{
    struct md_exclusion_condition *v;

    v = realloc(e->conditions, (e->nconditions + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    e->conditions = v;
    memset(&v[e->nconditions], 0, sizeof(*v));
    return &v[e->nconditions++];
}

static int push_value(struct md_exclusion_condition *c, char *value)
{
    char **v = realloc(c->values, (c->nvalues + 1) * sizeof(*v));

    if (v == NULL) {
        free(value);
        return -1;
    }
    c->values = v;
    v[c->nvalues++] = value;
    return 0;
}

/* Read COLUMN: {glob|regex|exact: VALUE} into c. */
static int load_operator(struct loader *ld, const yaml_node_t *value,
                         struct md_exclusion_condition *c, const char *what)
{
    static const struct {
        const char *name;
        enum md_match_kind kind;
    } ops[] = {
        { "glob", MD_MATCH_GLOB },
        { "regex", MD_MATCH_REGEX },
        { "exact", MD_MATCH_EXACT },
    };
    yaml_node_pair_t *pair = value->data.mapping.pairs.start;
    const yaml_node_t *key;
    char *text;

    if (value->data.mapping.pairs.top - pair != 1) {
        report(ld, node_line(value), "%s must have exactly one of glob, "
               "regex or exact, as in {glob: \"adm-*\"}", what);
        return -1;
    }
    key = node_at(ld, pair->key);
    for (size_t i = 0; key != NULL && key->type == YAML_SCALAR_NODE &&
                       i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (strcmp(scalar_text(key), ops[i].name) != 0)
            continue;
        c->kind = ops[i].kind;
        if (scalar_value(ld, node_at(ld, pair->value), what, &text) != 0)
            return -1;
        if (push_value(c, text) != 0) {
            report_oom(ld);
            return -1;
        }
        return 0;
    }
    report(ld, node_line(value), "%s: unknown match kind; write {glob: "
           "PATTERN}, {regex: EXPRESSION} or {exact: VALUE}", what);
    return -1;
}

/* Read COLUMN: [v1, v2, ...] into c. */
static int load_value_list(struct loader *ld, const yaml_node_t *value,
                           struct md_exclusion_condition *c,
                           const char *what)
{
    yaml_node_item_t *it = value->data.sequence.items.start;
    int rc = 0;

    if (it == value->data.sequence.items.top) {
        report(ld, node_line(value), "%s is an empty list; list at least "
               "one value", what);
        return -1;
    }
    for (; it < value->data.sequence.items.top; it++) {
        char *text;

        if (scalar_value(ld, node_at(ld, *it), what, &text) != 0) {
            rc = -1;
            continue;
        }
        if (push_value(c, text) != 0) {
            report_oom(ld);
            return -1;
        }
    }
    return rc;
}

static void load_condition(struct loader *ld, struct md_exclusion *e,
                           const yaml_node_t *key, const yaml_node_t *value)
{
    struct md_exclusion_condition *c = add_condition(e);
    char what[300];
    char msg[256];
    int rc;

    if (c == NULL) {
        report_oom(ld);
        return;
    }
    c->line = node_line(key);
    c->column = md_strdup(scalar_text(key));
    if (c->column == NULL) {
        report_oom(ld);
        return;
    }
    snprintf(what, sizeof(what), "the condition on column %s", c->column);

    c->kind = MD_MATCH_EQUAL;
    if (value->type == YAML_MAPPING_NODE) {
        rc = load_operator(ld, value, c, what);
    } else if (value->type == YAML_SEQUENCE_NODE) {
        rc = load_value_list(ld, value, c, what);
    } else {
        char *text;

        rc = scalar_value(ld, value, what, &text);
        if (rc == 0 && push_value(c, text) != 0) {
            report_oom(ld);
            rc = -1;
        }
    }
    if (rc != 0)
        return;

    rc = compile_condition(c, msg, sizeof(msg));
    if (rc == -2)
        report_oom(ld);
    else if (rc == -1)
        report(ld, node_line(value), "invalid regular expression \"%s\" "
               "in %s: %s; write a POSIX extended regular expression",
               c->values[0], what, msg);
}

static int reserved_index(const char *key)
{
    for (int i = 0; i < KEY_COUNT; i++) {
        if (strcmp(key, reserved_keys[i]) == 0)
            return i;
    }
    return -1;
}

/* Store the text of reserved key number `reserved` into e, and its line
 * into lines[reserved]. */
static void load_reserved(struct loader *ld, struct md_exclusion *e,
                          int lines[KEY_COUNT], int reserved,
                          const yaml_node_t *key, const yaml_node_t *value)
{
    char what[64];
    char *text;

    lines[reserved] = node_line(key);
    snprintf(what, sizeof(what), "'%s'", reserved_keys[reserved]);
    if (scalar_value(ld, value, what, &text) != 0)
        return;
    switch (reserved) {
    case KEY_ID:
        e->id = text;
        break;
    case KEY_RULE:
        e->rule_id = text;
        break;
    case KEY_REASON:
        e->reason = text;
        break;
    case KEY_OWNER:
        e->owner = text;
        break;
    case KEY_CREATED:
        load_created(ld, e, text, lines[reserved]);
        free(text);
        break;
    default:
        e->expires_text = text;
        break;
    }
}

/* Report keys written twice in an entry, ignoring case, since column
 * names match ignoring case. */
static int check_duplicate_keys(struct loader *ld, const yaml_node_t *map)
{
    const yaml_node_pair_t *start = map->data.mapping.pairs.start;
    const yaml_node_pair_t *top = map->data.mapping.pairs.top;
    int rc = 0;

    for (const yaml_node_pair_t *p = start; p < top; p++) {
        const yaml_node_t *key = node_at(ld, p->key);

        if (key == NULL || key->type != YAML_SCALAR_NODE) {
            report(ld, key != NULL ? node_line(key) : node_line(map),
                   "a key must be text");
            rc = -1;
            continue;
        }
        for (const yaml_node_pair_t *q = start; q < p; q++) {
            const yaml_node_t *other = node_at(ld, q->key);

            if (other != NULL && other->type == YAML_SCALAR_NODE &&
                md_strcasecmp(scalar_text(other), scalar_text(key)) == 0) {
                report(ld, node_line(key), "duplicate key '%s' (first at "
                       "line %d); remove one of them", scalar_text(key),
                       node_line(other));
                rc = -1;
                break;
            }
        }
    }
    return rc;
}

static int rule_known(const struct loader *ld, const char *rule_id)
{
    return ld->opts->rules == NULL ||
           strcmp(rule_id, MD_EXCLUSION_ANY_RULE) == 0 ||
           md_ruleset_find(ld->opts->rules, rule_id) != NULL;
}

/* Check what needs every key of the entry: required keys, the rule id,
 * the expiry and the id's uniqueness. */
static void check_entry(struct loader *ld, struct md_exclusion *e,
                        const int lines[KEY_COUNT])
{
    static const struct {
        enum reserved_key key;
        const char *example;
    } required[] = {
        { KEY_ID, "id: vendor-laptop" },
        { KEY_RULE, "rule: RULE-ID, or rule: \"*\" for every rule" },
        { KEY_REASON, "reason: approved in change CHG-1234" },
        { KEY_OWNER, "owner: soc-lead@example.org" },
        { KEY_EXPIRES, "expires: 2026-12-31" },
    };
    const char *label = e->id != NULL ? e->id : "without id";
    const struct md_exclusion *first;

    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (lines[required[i].key] == 0)
            report(ld, e->line, "entry %s has no '%s'; add a line such as "
                   "\"%s\"", label, reserved_keys[required[i].key],
                   required[i].example);
    }
    if (e->nconditions == 0)
        report(ld, e->line, "entry %s has no condition, so it would exclude "
               "every row; add at least one COLUMN: value", label);
    if (e->rule_id != NULL && !rule_known(ld, e->rule_id))
        report(ld, lines[KEY_RULE], "entry %s names rule %s, which no "
               "loaded rule has; check the id with `mdhunt rules validate`, "
               "or write rule: \"*\" for every rule", label, e->rule_id);
    if (e->expires_text != NULL)
        load_expires(ld, e, label, lines[KEY_EXPIRES]);
    first = e->id != NULL ? md_exclusions_find(ld->x, e->id) : NULL;
    if (first != NULL)
        report(ld, lines[KEY_ID], "duplicate id %s (first used by the entry "
               "at line %d); give each entry its own id", e->id,
               first->line);
}

static void load_entry(struct loader *ld, const yaml_node_t *map)
{
    struct md_exclusion e;
    int lines[KEY_COUNT] = { 0 };
    unsigned before = ld->nerrors;

    memset(&e, 0, sizeof(e));
    e.line = node_line(map);
    if (check_duplicate_keys(ld, map) != 0)
        return;

    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top && !ld->out_of_memory; p++) {
        const yaml_node_t *key = node_at(ld, p->key);
        const yaml_node_t *value = node_at(ld, p->value);
        int reserved = reserved_index(scalar_text(key));

        if (reserved >= 0)
            load_reserved(ld, &e, lines, reserved, key, value);
        else
            load_condition(ld, &e, key, value);
    }
    if (!ld->out_of_memory)
        check_entry(ld, &e, lines);

    if (ld->out_of_memory || ld->nerrors != before) {
        entry_clear(&e);
        return;
    }
    if (ld->x->nentries == ld->entries_cap) {
        size_t cap = ld->entries_cap == 0 ? 16 : ld->entries_cap * 2;
        struct md_exclusion *v = realloc(ld->x->entries, cap * sizeof(*v));

        if (v == NULL) {
            entry_clear(&e);
            report_oom(ld);
            return;
        }
        ld->x->entries = v;
        ld->entries_cap = cap;
    }
    ld->x->entries[ld->x->nentries++] = e;
}

static void load_root(struct loader *ld, const yaml_node_t *root)
{
    size_t index = 0;

    if (root->type == YAML_SCALAR_NODE && is_null(root))
        return;
    if (root->type != YAML_SEQUENCE_NODE) {
        report(ld, node_line(root), "the file must be a YAML list of "
               "entries, each starting with \"- id: NAME\"");
        return;
    }
    for (yaml_node_item_t *it = root->data.sequence.items.start;
         it < root->data.sequence.items.top && !ld->out_of_memory; it++) {
        const yaml_node_t *item = node_at(ld, *it);

        index++;
        if (item->type != YAML_MAPPING_NODE) {
            report(ld, node_line(item), "entry %zu is not a mapping; each "
                   "entry is a list item of KEY: VALUE lines starting with "
                   "\"- id: NAME\"", index);
            continue;
        }
        load_entry(ld, item);
    }
}

static void syntax_error(struct loader *ld, const yaml_parser_t *parser)
{
    if (parser->error == YAML_MEMORY_ERROR) {
        report_oom(ld);
        return;
    }
    report(ld, (int)parser->problem_mark.line + 1, "invalid YAML at column "
           "%d: %s%s%s; check the indentation and quoting of this line "
           "and the lines above it", (int)parser->problem_mark.column + 1,
           parser->problem != NULL ? parser->problem : "syntax error",
           parser->context != NULL ? " " : "",
           parser->context != NULL ? parser->context : "");
}

/* Report a second document after the first. */
static void check_single_document(struct loader *ld, yaml_parser_t *parser)
{
    yaml_document_t doc;
    yaml_node_t *root;

    if (!yaml_parser_load(parser, &doc)) {
        syntax_error(ld, parser);
        return;
    }
    root = yaml_document_get_root_node(&doc);
    if (root != NULL && !(root->type == YAML_SCALAR_NODE && is_null(root)))
        report(ld, node_line(root), "a second YAML document starts here; "
               "keep every entry in one list");
    yaml_document_delete(&doc);
}

/*
 * Report YAML nested deeper than YAML_DEPTH_MAX and return nonzero,
 * reading events only up to that depth.  libyaml's scanner takes time
 * quadratic in the depth of nested flow collections (100,000 "[" take
 * minutes), so this runs before the document is loaded.  A syntax error
 * is left for the loader to report.
 */
static int too_deep(struct loader *ld, const char *data, size_t len)
{
    yaml_parser_t parser;
    yaml_event_t event;
    int depth = 0;
    int done = 0;
    int deep = 0;

    if (!yaml_parser_initialize(&parser)) {
        report_oom(ld);
        return 1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    while (!done && !deep && yaml_parser_parse(&parser, &event)) {
        if (event.type == YAML_SEQUENCE_START_EVENT
            || event.type == YAML_MAPPING_START_EVENT)
            depth++;
        else if (event.type == YAML_SEQUENCE_END_EVENT
                 || event.type == YAML_MAPPING_END_EVENT)
            depth--;
        deep = depth > YAML_DEPTH_MAX;
        if (deep)
            report(ld, (int)event.start_mark.line + 1, "the YAML is nested "
                   "deeper than %d levels, which no entry needs",
                   YAML_DEPTH_MAX);
        done = event.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&event);
    }
    yaml_parser_delete(&parser);
    return deep;
}

static void parse(struct loader *ld, const char *data, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;

    if (too_deep(ld, data, len))
        return;
    if (!yaml_parser_initialize(&parser)) {
        report_oom(ld);
        return;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    if (!yaml_parser_load(&parser, &doc)) {
        syntax_error(ld, &parser);
        yaml_parser_delete(&parser);
        return;
    }
    ld->doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (root != NULL) {
        load_root(ld, root);
        if (!ld->out_of_memory)
            check_single_document(ld, &parser);
    }
    ld->doc = NULL;
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
}

/* ---- The canonical hash -------------------------------------------------- */

static json_t *condition_json(const struct md_exclusion_condition *c)
{
    json_t *v;

    if (c->kind != MD_MATCH_EQUAL) {
        v = json_object();
        if (v != NULL && json_object_set_new(v, md_match_kind_name(c->kind),
                                             json_string(c->values[0])) != 0) {
            json_decref(v);
            return NULL;
        }
        return v;
    }
    v = json_array();
    for (size_t i = 0; v != NULL && i < c->nvalues; i++) {
        if (json_array_append_new(v, json_string(c->values[i])) != 0) {
            json_decref(v);
            return NULL;
        }
    }
    return v;
}

static json_t *entry_json(const struct md_exclusion *e)
{
    json_t *o = json_object();
    int rc;

    if (o == NULL)
        return NULL;
    rc = json_object_set_new(o, "id", json_string(e->id)) |
         json_object_set_new(o, "rule", json_string(e->rule_id)) |
         json_object_set_new(o, "reason", json_string(e->reason)) |
         json_object_set_new(o, "owner", json_string(e->owner)) |
         json_object_set_new(o, "expires", json_string(e->expires_text));
    if (e->created[0] != '\0')
        rc |= json_object_set_new(o, "created", json_string(e->created));
    for (size_t i = 0; i < e->nconditions; i++)
        rc |= json_object_set_new(o, e->conditions[i].column,
                                  condition_json(&e->conditions[i]));
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Set x->hash to the hex SHA-256 of the entries as compact JSON with
 * sorted keys.  Returns -1 when out of memory. */
static int hash_entries(struct md_exclusions *x)
{
    json_t *all = json_array();
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    char *text;
    int ok;

    if (all == NULL)
        return -1;
    for (size_t i = 0; i < x->nentries; i++) {
        if (json_array_append_new(all, entry_json(&x->entries[i])) != 0) {
            json_decref(all);
            return -1;
        }
    }
    text = json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(all);
    if (text == NULL)
        return -1;
    ok = EVP_Digest(text, strlen(text), digest, &dlen, EVP_sha256(), NULL);
    free(text);
    if (!ok || dlen != 32)
        return -1;
    for (unsigned int i = 0; i < dlen; i++)
        snprintf(x->hash + 2 * i, 3, "%02x", digest[i]);
    return 0;
}

/* ---- Entry points -------------------------------------------------------- */

int md_exclusions_load_buffer(const char *name, const char *data,
                              size_t len,
                              const struct md_exclusions_options *opts,
                              struct md_exclusions **out,
                              struct md_error *err)
{
    struct loader ld;
    struct md_exclusions *x;

    *out = NULL;
    x = calloc(1, sizeof(*x));
    if (x == NULL || (x->path = md_strdup(name)) == NULL) {
        free(x);
        return oom(err);
    }
    memset(&ld, 0, sizeof(ld));
    ld.path = name;
    ld.opts = opts;
    ld.x = x;
    ld.err = err;
    parse(&ld, data, len);
    if (!ld.out_of_memory && ld.nerrors == 0 && hash_entries(x) != 0)
        ld.out_of_memory = 1;

    if (ld.out_of_memory) {
        md_exclusions_free(x);
        return oom(err);
    }
    if (ld.nerrors > MAX_LOGGED_ERRORS + 1)
        md_error_log("%s: %u more errors not shown", name,
                     ld.nerrors - MAX_LOGGED_ERRORS - 1);
    if (ld.nerrors > 0) {
        md_exclusions_free(x);
        return -1;
    }
    *out = x;
    return 0;
}

static int read_file(const char *path, char **data, size_t *len,
                     struct md_error *err)
{
    FILE *f = fopen(path, "rb");
    struct md_buf b;
    char chunk[8192];
    size_t n;

    if (f == NULL)
        return md_error_set(err, MD_E_CONFIG, "%s: cannot open the "
                            "exclusions file: %s; fix [report] exclusions",
                            path, strerror(errno));
    md_buf_init(&b, MD_EXCLUSIONS_FILE_MAX);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (md_buf_append(&b, chunk, n) != 0) {
            fclose(f);
            md_buf_free(&b);
            return md_error_set(err, MD_E_CONFIG, "%s: the exclusions file "
                                "is larger than %u bytes, or memory ran "
                                "out", path, MD_EXCLUSIONS_FILE_MAX);
        }
    }
    if (ferror(f)) {
        int saved = errno;

        fclose(f);
        md_buf_free(&b);
        return md_error_set(err, MD_E_CONFIG, "%s: cannot read the "
                            "exclusions file: %s", path, strerror(saved));
    }
    fclose(f);
    *len = b.len;
    *data = md_buf_detach(&b);
    return *data == NULL ? oom(err) : 0;
}

int md_exclusions_load(const char *path,
                       const struct md_exclusions_options *opts,
                       struct md_exclusions **out, struct md_error *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    if (read_file(path, &data, &len, err) != 0)
        return -1;
    rc = md_exclusions_load_buffer(path, data, len, opts, out, err);
    free(data);
    return rc;
}

/* ---- Matching a result --------------------------------------------------- */

/* An entry ready for one table: the column of each condition. */
struct bound_entry {
    const struct md_exclusion *entry;
    int *cols;
};

/* The texts a cell is compared as, for the current row. */
struct cell_texts {
    int ready;
    char **texts;           /* NULL-free; none for a null cell */
    size_t *lens;
    size_t n;
};

struct md_exclusion_matcher {
    const struct md_table *table;
    struct bound_entry *entries;
    size_t nentries;
    struct md_exclusion_problem *problems;
    size_t nproblems;
    struct cell_texts *cache;   /* per column, for the current row */
};

static void cell_texts_clear(struct cell_texts *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->texts[i]);
    free(c->texts);
    free(c->lens);
    memset(c, 0, sizeof(*c));
}

void md_exclusion_matcher_free(struct md_exclusion_matcher *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nentries; i++)
        free(m->entries[i].cols);
    free(m->entries);
    for (size_t i = 0; i < m->nproblems; i++)
        free(m->problems[i].message);
    free(m->problems);
    if (m->cache != NULL) {
        for (size_t i = 0; i < m->table->ncolumns; i++)
            cell_texts_clear(&m->cache[i]);
        free(m->cache);
    }
    free(m);
}

const struct md_exclusion_problem *md_exclusion_matcher_problems(
    const struct md_exclusion_matcher *m, size_t *n)
{
    *n = m != NULL ? m->nproblems : 0;
    return m != NULL ? m->problems : NULL;
}

static int add_problem(struct md_exclusion_matcher *m,
                       const struct md_exclusions *x,
                       const struct md_exclusion *e,
                       const struct md_exclusion_condition *c,
                       const char *rule_id)
{
    struct md_exclusion_problem *v;
    struct md_buf msg = MD_BUF_INIT;

    v = realloc(m->problems, (m->nproblems + 1) * sizeof(*v));
    if (v == NULL)
        return -1;
    m->problems = v;
    md_buf_printf(&msg, "%s:%d: exclusion %s names column %s, which the "
                  "result of rule %s lacks, so the entry was not applied; "
                  "fix the column name or the entry's rule (the result's "
                  "columns: ", x->path, c->line, e->id, c->column, rule_id);
    for (size_t i = 0; i < m->table->ncolumns; i++)
        md_buf_printf(&msg, "%s%s", i > 0 ? ", " : "",
                      m->table->columns[i].name);
    if (md_buf_puts(&msg, ")") != 0) {
        md_buf_free(&msg);
        return -1;
    }
    v[m->nproblems].entry = e;
    v[m->nproblems].message = md_buf_detach(&msg);
    if (v[m->nproblems].message == NULL)
        return -1;
    m->nproblems++;
    return 0;
}

/* Resolve the columns of e; *missing is set to the first condition whose
 * column the table lacks, or NULL. */
static int bind_entry(struct md_exclusion_matcher *m,
                      const struct md_exclusion *e,
                      const struct md_exclusion_condition **missing)
{
    struct bound_entry *b = &m->entries[m->nentries];

    *missing = NULL;
    b->entry = e;
    b->cols = calloc(e->nconditions, sizeof(*b->cols));
    if (b->cols == NULL)
        return -1;
    for (size_t i = 0; i < e->nconditions; i++) {
        b->cols[i] = md_table_column_index(m->table,
                                           e->conditions[i].column);
        if (b->cols[i] < 0) {
            *missing = &e->conditions[i];
            free(b->cols);
            b->cols = NULL;
            return 0;
        }
    }
    m->nentries++;
    return 0;
}

int md_exclusion_matcher_new(const struct md_exclusions *x,
                             const char *rule_id,
                             const struct md_table *table, md_instant at,
                             struct md_exclusion_matcher **out,
                             struct md_error *err)
{
    struct md_exclusion_matcher *m = calloc(1, sizeof(*m));

    *out = NULL;
    if (m == NULL)
        return oom(err);
    m->table = table;
    if (x == NULL || table->nrows == 0) {
        *out = m;
        return 0;
    }
    m->entries = calloc(x->nentries, sizeof(*m->entries));
    m->cache = calloc(table->ncolumns + 1, sizeof(*m->cache));
    if ((x->nentries > 0 && m->entries == NULL) || m->cache == NULL)
        goto fail;

    for (size_t i = 0; i < x->nentries; i++) {
        const struct md_exclusion *e = &x->entries[i];
        const struct md_exclusion_condition *missing;

        if (!md_exclusion_for_rule(e, rule_id) ||
            md_exclusion_expired(e, at))
            continue;
        if (bind_entry(m, e, &missing) != 0)
            goto fail;
        /* A "*" entry without its columns does not concern this rule. */
        if (missing != NULL &&
            strcmp(e->rule_id, MD_EXCLUSION_ANY_RULE) != 0 &&
            add_problem(m, x, e, missing, rule_id) != 0)
            goto fail;
    }
    *out = m;
    return 0;

fail:
    md_exclusion_matcher_free(m);
    return oom(err);
}

static int push_text(struct cell_texts *c, const char *s, size_t len)
{
    char **texts = realloc(c->texts, (c->n + 1) * sizeof(*texts));
    size_t *lens;

    if (texts == NULL)
        return -1;
    c->texts = texts;
    lens = realloc(c->lens, (c->n + 1) * sizeof(*lens));
    if (lens == NULL)
        return -1;
    c->lens = lens;
    texts[c->n] = md_strndup(s, len);
    if (texts[c->n] == NULL)
        return -1;
    lens[c->n++] = len;
    return 0;
}

/* Fill c with the texts of an array cell's elements: strings as they are,
 * other values as compact JSON.  An element that is null leaves c empty,
 * so the cell matches nothing.  Returns 1 when the text was no JSON
 * array, 0 when done, -1 when out of memory. */
static int array_texts(const struct md_cell *cell, struct cell_texts *c)
{
    json_t *array = json_loadb(cell->text, cell->len, JSON_ALLOW_NUL, NULL);
    size_t i;
    json_t *v;
    int rc = 0;

    if (array == NULL || !json_is_array(array)) {
        json_decref(array);
        return 1;
    }
    json_array_foreach(array, i, v) {
        char *text;

        if (json_is_null(v)) {
            cell_texts_clear(c);
            break;
        }
        if (json_is_string(v)) {
            rc = push_text(c, json_string_value(v), json_string_length(v));
        } else {
            text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            rc = text == NULL ? -1 : push_text(c, text, strlen(text));
            free(text);
        }
        if (rc != 0)
            break;
    }
    json_decref(array);
    return rc;
}

static int cell_texts(struct md_exclusion_matcher *m, size_t row, int col,
                      const struct cell_texts **out)
{
    struct cell_texts *c = &m->cache[col];
    const struct md_cell *cell = md_table_cell(m->table, row, (size_t)col);
    int rc = 0;

    *out = c;
    if (c->ready)
        return 0;
    c->ready = 1;
    if (cell->kind == MD_J_NULL)
        return 0;
    if (cell->kind == MD_J_ARRAY)
        rc = array_texts(cell, c);
    if (rc == 1 || cell->kind != MD_J_ARRAY)
        rc = push_text(c, cell->text, cell->len);
    return rc;
}

/* 1 when every text of the cell matches (and there is one), 0 when not,
 * -1 when out of memory. */
static int condition_holds(struct md_exclusion_matcher *m, size_t row,
                           int col, const struct md_exclusion_condition *c)
{
    const struct cell_texts *texts;

    if (cell_texts(m, row, col, &texts) != 0)
        return -1;
    if (texts->n == 0)
        return 0;
    for (size_t i = 0; i < texts->n; i++) {
        int rc = md_exclusion_condition_matches(c, texts->texts[i],
                                                texts->lens[i]);

        if (rc != 1)
            return rc;
    }
    return 1;
}

int md_exclusion_match_row(struct md_exclusion_matcher *m, size_t row,
                           const struct md_exclusion **entry,
                           struct md_error *err)
{
    int rc = 0;

    *entry = NULL;
    for (size_t i = 0; i < m->nentries && *entry == NULL && rc >= 0; i++) {
        const struct bound_entry *b = &m->entries[i];

        rc = 1;
        for (size_t j = 0; j < b->entry->nconditions && rc == 1; j++)
            rc = condition_holds(m, row, b->cols[j],
                                 &b->entry->conditions[j]);
        if (rc == 1)
            *entry = b->entry;
    }
    for (size_t col = 0; m->cache != NULL && col < m->table->ncolumns; col++)
        cell_texts_clear(&m->cache[col]);
    if (rc < 0) {
        *entry = NULL;
        return oom(err);
    }
    return 0;
}
