/*
 * Fuzz the digest renderers and the mail composer with hostile strings.
 *
 * The input is read as a digest: bytes and 32-bit numbers choose counts,
 * kinds and times, and NUL-separated strings fill every text field (an
 * empty string stands for NULL where a field may be NULL).  The digest is
 * rendered as subject, text, HTML and CSV and composed into a mail, and
 * each rendering is checked against what report.h and mail.h promise.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "mdhunt/buf.h"
#include "mdhunt/mail.h"
#include "mdhunt/report.h"

#define FUZZ_REPORT_MAX_RULES 3
#define FUZZ_REPORT_MAX_HITS 8
#define FUZZ_REPORT_MAX_COLUMNS 3
#define FUZZ_REPORT_MAX_STRINGS 256

/* 2020-01-01T00:00:00Z, so that times from 32-bit offsets look real. */
#define FUZZ_REPORT_EPOCH INT64_C(1577836800)

/* Every string taken from the input, freed together at the end. */
struct fuzz_report_strings {
    char *items[FUZZ_REPORT_MAX_STRINGS];
    size_t n;
    int failed;
};

/* Take a string; "" becomes NULL when nullable is set.  Marks failed and
 * returns NULL when out of memory or out of slots. */
static const char *fuzz_report_string(struct fuzz_reader *r,
                                      struct fuzz_report_strings *s,
                                      int nullable)
{
    char *value;

    if (s->n == FUZZ_REPORT_MAX_STRINGS) {
        s->failed = 1;
        return NULL;
    }
    value = fuzz_take_string(r);
    if (value == NULL) {
        s->failed = 1;
        return NULL;
    }
    s->items[s->n++] = value;
    return nullable && value[0] == '\0' ? NULL : value;
}

/* An instant from a 32-bit offset, or 0 (unknown) when it is 0. */
static md_instant fuzz_report_instant(struct fuzz_reader *r)
{
    uint32_t offset = fuzz_take_u32(r);

    if (offset == 0)
        return 0;
    return (FUZZ_REPORT_EPOCH + (int64_t)offset) * MD_TICKS_PER_SECOND;
}

static int fuzz_report_add_rule(struct md_digest *d, struct fuzz_reader *r,
                                struct fuzz_report_strings *s)
{
    const char *tactics[2];
    const char *techniques[2];
    struct md_digest_rule rule;
    struct md_error err;

    memset(&rule, 0, sizeof(rule));
    rule.rule_id = fuzz_report_string(r, s, 0);
    rule.name = fuzz_report_string(r, s, 1);
    rule.severity = fuzz_report_string(r, s, 1);
    tactics[0] = fuzz_report_string(r, s, 0);
    tactics[1] = fuzz_report_string(r, s, 0);
    rule.tactics = tactics;
    rule.ntactics = fuzz_take_byte(r) % 3;
    techniques[0] = fuzz_report_string(r, s, 0);
    techniques[1] = fuzz_report_string(r, s, 0);
    rule.techniques = techniques;
    rule.ntechniques = fuzz_take_byte(r) % 3;
    rule.backend = fuzz_report_string(r, s, 1);
    rule.query_sha256 = fuzz_report_string(r, s, 1);
    rule.last_error_kind = fuzz_report_string(r, s, 1);
    rule.last_error = fuzz_report_string(r, s, 1);
    if (s->failed || rule.rule_id == NULL)
        return -1;

    rule.window_start = fuzz_report_instant(r);
    rule.window_end = fuzz_report_instant(r);
    rule.last_success = fuzz_report_instant(r);
    rule.first_run = fuzz_report_instant(r);
    rule.frequency = (int64_t)fuzz_take_byte(r) * 300;
    rule.gone_after = (int64_t)fuzz_take_byte(r) * 86400;
    rule.excluded = (long)fuzz_take_byte(r);
    rule.runs = (long)fuzz_take_byte(r);
    rule.failed_runs = (long)fuzz_take_byte(r);
    rule.truncated_runs = (long)fuzz_take_byte(r);
    rule.throttled_runs = (long)fuzz_take_byte(r);
    rule.consecutive_failures = (long)fuzz_take_byte(r);
    return md_digest_add_rule(d, &rule, NULL, &err);
}

static int fuzz_report_add_hit(struct md_digest *d, struct fuzz_reader *r,
                               struct fuzz_report_strings *s)
{
    struct md_digest_column columns[FUZZ_REPORT_MAX_COLUMNS];
    struct md_digest_hit hit;
    struct md_error err;

    memset(&hit, 0, sizeof(hit));
    hit.rule = fuzz_take_byte(r) % d->nrules;
    hit.change = (enum md_change)(fuzz_take_byte(r) % 5);
    hit.device_id = fuzz_report_string(r, s, 1);
    hit.device_name = fuzz_report_string(r, s, 1);
    hit.previous_name = fuzz_report_string(r, s, 1);
    hit.first_seen = fuzz_report_instant(r);
    hit.last_seen = fuzz_report_instant(r);
    hit.observed = fuzz_report_instant(r);
    hit.ncolumns = fuzz_take_byte(r) % (FUZZ_REPORT_MAX_COLUMNS + 1);
    for (size_t i = 0; i < hit.ncolumns; i++) {
        columns[i].name = fuzz_report_string(r, s, 0);
        columns[i].value = fuzz_report_string(r, s, 1);
    }
    hit.columns = columns;
    if (s->failed)
        return -1;
    return md_digest_add_hit(d, &hit, &err);
}

/* Whether s contains needle, ignoring ASCII case. */
static int fuzz_report_contains_ci(const char *s, size_t len,
                                   const char *needle)
{
    size_t n = strlen(needle);

    for (size_t i = 0; i + n <= len; i++) {
        size_t k = 0;

        while (k < n && (s[i + k] | 0x20) == needle[k])
            k++;
        if (k == n)
            return 1;
    }
    return 0;
}

/* Whether the UTF-8 at u[i..len) starts with a bidirectional formatting
 * character (U+202A-U+202E, U+2066-U+2069). */
static int fuzz_report_bidi_at(const unsigned char *u, size_t i,
                               size_t len)
{
    if (i + 2 >= len || u[i] != 0xe2)
        return 0;
    if (u[i + 1] == 0x80 && u[i + 2] >= 0xaa && u[i + 2] <= 0xae)
        return 1;
    return u[i + 1] == 0x81 && u[i + 2] >= 0xa6 && u[i + 2] <= 0xa9;
}

/* Subject and text body: no control character but the text's LF, and
 * no bidirectional override. */
static void fuzz_report_check_text(const struct md_buf *b, int allow_lf)
{
    const unsigned char *u = (const unsigned char *)b->data;

    for (size_t i = 0; i < b->len; i++) {
        FUZZ_CHECK(u[i] >= 0x20 || (allow_lf && u[i] == '\n'));
        FUZZ_CHECK(u[i] != 0x7f);
        FUZZ_CHECK(!fuzz_report_bidi_at(u, i, b->len));
    }
}

/* HTML: a value can add no element or script, and every link goes to an
 * https URL. */
static void fuzz_report_check_html(const struct md_buf *b)
{
    static const char href[] = "href=\"";
    const char *p = b->data;
    const char *end = b->data + b->len;

    FUZZ_CHECK(!fuzz_report_contains_ci(b->data, b->len, "<script"));
    FUZZ_CHECK(!fuzz_report_contains_ci(b->data, b->len, "<img"));
    while ((p = memmem(p, (size_t)(end - p), href, sizeof(href) - 1))
           != NULL) {
        p += sizeof(href) - 1;
        FUZZ_CHECK((size_t)(end - p) > 8 && memcmp(p, "https://", 8) == 0);
    }
}

/*
 * CSV: records end in CRLF outside quoted fields, quotes balance, and no
 * field starts with a character that makes a spreadsheet read a formula.
 */
static void fuzz_report_check_csv(const struct md_buf *b)
{
    const char *s = b->data;
    size_t i = 0;

    while (i < b->len) {
        /* The start of a field. */
        if (s[i] == '"') {
            FUZZ_CHECK(i + 1 < b->len);
            FUZZ_CHECK(strchr("=+-@\t\r", s[i + 1]) == NULL
                       || s[i + 1] == '\0');
            for (i++; i < b->len; i++) {
                if (s[i] == '"' && i + 1 < b->len && s[i + 1] == '"')
                    i++;
                else if (s[i] == '"')
                    break;
            }
            FUZZ_CHECK(i < b->len);
            i++;
        } else {
            FUZZ_CHECK(strchr("=+-@\t", s[i]) == NULL || s[i] == '\0');
            while (i < b->len && s[i] != ',' && s[i] != '\r') {
                FUZZ_CHECK(s[i] != '"' && s[i] != '\n');
                i++;
            }
        }
        /* After a field: a separator or the end of the record. */
        FUZZ_CHECK(i < b->len);
        if (s[i] == ',') {
            i++;
            continue;
        }
        FUZZ_CHECK(s[i] == '\r' && i + 1 < b->len && s[i + 1] == '\n');
        i += 2;
    }
}

/*
 * Mail: 7-bit text with CRLF line ends and lines within 998 octets
 * (RFC 5322), and no header that a value could have added.
 */
static void fuzz_report_check_mail(const struct md_buf *b)
{
    const char *s = b->data;
    size_t line_start = 0;
    int in_headers = 1;

    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)s[i];

        FUZZ_CHECK(c != 0 && c < 0x80);
        if (c == '\r') {
            FUZZ_CHECK(i + 1 < b->len && s[i + 1] == '\n');
            FUZZ_CHECK(i - line_start <= 998);
            if (in_headers && i == line_start)
                in_headers = 0;
            else if (in_headers && i - line_start >= 4)
                FUZZ_CHECK(!fuzz_report_contains_ci(s + line_start, 4,
                                                     "bcc:"));
            i++;
            line_start = i + 1;
        } else {
            FUZZ_CHECK(c != '\n');
        }
    }
    FUZZ_CHECK(line_start == b->len);
}

static void fuzz_report_render(const struct md_digest *d,
                               const struct md_report_options *opts)
{
    static const char *const to[] = { "soc@example.com", NULL };
    struct md_mail_settings settings;
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;
    char name[64];
    char hex[65];

    md_digest_fingerprint(d, hex);
    FUZZ_CHECK(strlen(hex) == 64);
    md_report_csv_name(d, name, sizeof(name));

    if (md_report_subject(d, opts, &out, &err) == 0)
        fuzz_report_check_text(&out, 0);
    md_buf_reset(&out);
    if (md_report_text(d, opts, &out, &err) == 0)
        fuzz_report_check_text(&out, 1);
    md_buf_reset(&out);
    if (md_report_html(d, opts, &out, &err) == 0)
        fuzz_report_check_html(&out);
    md_buf_reset(&out);
    if (md_report_csv(d, &out, &err) == 0)
        fuzz_report_check_csv(&out);
    md_buf_reset(&out);

    memset(&settings, 0, sizeof(settings));
    settings.smtp_url = "smtp://127.0.0.1:587";
    settings.from = "mdhunt <mdhunt@example.com>";
    settings.to = to;
    if (md_mail_compose_digest(&settings, d, opts, &out, &err) == 0)
        fuzz_report_check_mail(&out);
    md_buf_free(&out);
}

static int fuzz_report(const uint8_t *data, size_t size)
{
    struct fuzz_reader r = { data, size };
    struct fuzz_report_strings strings;
    struct md_report_options opts;
    struct md_digest *d = NULL;
    struct md_error err;
    const char *tenant;
    md_instant generated;
    size_t nrules;
    size_t nhits;
    unsigned when;

    fuzz_quiet_logging();
    memset(&strings, 0, sizeof(strings));
    nrules = 1 + fuzz_take_byte(&r) % FUZZ_REPORT_MAX_RULES;
    nhits = fuzz_take_byte(&r) % (FUZZ_REPORT_MAX_HITS + 1);
    when = fuzz_take_byte(&r);
    memset(&opts, 0, sizeof(opts));
    opts.max_rows_in_body = (long)fuzz_take_byte(&r) - 8;
    opts.subject_prefix = fuzz_report_string(&r, &strings, 1);
    generated = fuzz_report_instant(&r);
    tenant = fuzz_report_string(&r, &strings, 0);
    if (strings.failed || md_digest_new(tenant, generated, &d, &err) != 0)
        goto out;

    for (size_t i = 0; i < nrules; i++) {
        if (fuzz_report_add_rule(d, &r, &strings) != 0)
            goto out;
    }
    for (size_t i = 0; i < nhits; i++) {
        if (fuzz_report_add_hit(d, &r, &strings) != 0)
            goto out;
    }
    for (size_t i = 0; i < nhits; i++) {
        if (md_digest_add_run(d, (int64_t)fuzz_take_u32(&r), &err) != 0)
            goto out;
    }

    md_digest_should_send(d, (enum md_send_when)(when % 3), generated);
    for (int change = MD_CHANGE_NEW; change <= MD_CHANGE_GONE; change++)
        FUZZ_CHECK(md_digest_count_devices(d, (enum md_change)change)
                   <= d->nhits);
    fuzz_report_render(d, &opts);
out:
    md_digest_free(d);
    for (size_t i = 0; i < strings.n; i++)
        free(strings.items[i]);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_report(data, size);
}
#endif
