/*
 * Tests for mail composition (checked by a small MIME reader below) and
 * for SMTP delivery against tests/smtp/smtpserver.py on 127.0.0.1.
 */
#include "testutil.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mdhunt/log.h"
#include "mdhunt/mail.h"
#include "mdhunt/report.h"

#define SMTP_SERVER "tests/smtp/smtpserver.py"
#define PYTHON "/usr/bin/python3"
#define TENANT "contoso.onmicrosoft.com"
#define PASSWORD "Corr3ct-Horse-Battery"
/* base64 of "\0mdhunt\0" PASSWORD (AUTH PLAIN) and of PASSWORD (LOGIN). */
#define PASSWORD_PLAIN_B64 "AG1kaHVudABDb3JyM2N0LUhvcnNlLUJhdHRlcnk="
#define PASSWORD_LOGIN_B64 "Q29ycjNjdC1Ib3JzZS1CYXR0ZXJ5"

/* 2025-03-01T12:00:00Z, a Saturday */
#define T0 (INT64_C(1740830400) * MD_TICKS_PER_SECOND)

static const char *const to_list[] = { "SOC <soc@example.com>", NULL };
static const char *const cc_list[] = { "lead@example.com", NULL };

/* ---- a digest to compose -------------------------------------------- */

static struct md_digest *make_digest(const char *tenant, int reverse_runs)
{
    static const char *const techniques[] = { "T1219" };
    struct md_digest_column column = { "Signer", "=HYPERLINK(\"x\")" };
    struct md_digest_rule rule;
    struct md_digest_hit hit;
    struct md_digest *d = NULL;
    struct md_error err;
    size_t index;

    md_error_clear(&err);
    assert_int_equal(md_digest_new(tenant, T0, &d, &err), 0);
    memset(&rule, 0, sizeof(rule));
    rule.rule_id = "zoho-signature";
    rule.name = "ZohoAssist file signature";
    rule.severity = "High";
    rule.techniques = techniques;
    rule.ntechniques = 1;
    rule.runs = 1;
    rule.last_success = T0;
    assert_int_equal(md_digest_add_rule(d, &rule, &index, &err), 0);

    memset(&hit, 0, sizeof(hit));
    hit.rule = index;
    hit.change = MD_CHANGE_NEW;
    hit.device_id = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
    hit.device_name = "ws-042 <b>\xc3\xa9t\xc3\xa9</b>";
    hit.first_seen = T0;
    hit.observed = T0;
    hit.columns = &column;
    hit.ncolumns = 1;
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    hit.device_id = "1111";
    hit.device_name = "ws-043";
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);

    for (int i = 0; i < 3; i++) {
        int64_t id = reverse_runs ? 3 - i : i + 1;

        assert_int_equal(md_digest_add_run(d, id, &err), 0);
    }
    return d;
}

static void settings_init(struct md_mail_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->from = "mdhunt <mdhunt@example.com>";
    s->to = to_list;
    s->cc = cc_list;
}

static char *compose_digest(const struct md_digest *d, const char *prefix,
                            size_t *len)
{
    struct md_report_options opts = { prefix, 50 };
    struct md_mail_settings s;
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;

    settings_init(&s);
    md_error_clear(&err);
    if (md_mail_compose_digest(&s, d, &opts, &out, &err) != 0)
        fail_msg("compose failed: %s", err.message);
    *len = out.len;
    return md_buf_detach(&out);
}

/* ---- a small MIME reader ------------------------------------------------ */

/* The unfolded value of a header in a header block, or NULL. */
static char *header_value(const char *headers, const char *name)
{
    size_t nlen = strlen(name);
    const char *p = headers;

    while (*p != '\0') {
        const char *eol = strstr(p, "\r\n");

        if (eol == NULL)
            eol = p + strlen(p);
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            char *value = malloc(strlen(p) + 1);
            size_t n = 0;
            const char *q = p + nlen + 1;

            assert_non_null(value);
            for (;;) {
                while (q < eol)
                    value[n++] = *q++;
                if (eol[0] == '\0' || (eol[2] != ' ' && eol[2] != '\t'))
                    break;
                q = eol + 2;
                eol = strstr(q, "\r\n");
                if (eol == NULL)
                    eol = q + strlen(q);
            }
            value[n] = '\0';
            return value;
        }
        p = eol[0] != '\0' ? eol + 2 : eol;
    }
    return NULL;
}

static char *boundary_of(const char *content_type)
{
    const char *p = strstr(content_type, "boundary=\"");
    const char *end;

    if (p == NULL)
        return NULL;
    p += 10;
    end = strchr(p, '"');
    assert_non_null(end);
    return strndup(p, (size_t)(end - p));
}

struct part {
    char *headers;
    char *body;
};

/*
 * Find the first leaf part whose Content-Type starts with type, walking
 * multiparts depth first.  Fails the test when a multipart is malformed.
 */
static int find_part(const char *entity, size_t len, const char *type,
                     struct part *out)
{
    const char *sep = strstr(entity, "\r\n\r\n");
    char *headers;
    char *ctype;
    char *boundary;
    char delim[128];
    const char *p;
    int found = 0;

    assert_non_null(sep);
    headers = strndup(entity, (size_t)(sep - entity) + 2);
    ctype = header_value(headers, "Content-Type");
    assert_non_null(ctype);
    if (strncmp(ctype + 1, "multipart/", 10) != 0) {
        if (strncmp(ctype + 1, type, strlen(type)) == 0) {
            out->headers = headers;
            out->body = strndup(sep + 4, len - (size_t)(sep + 4 - entity));
            free(ctype);
            return 1;
        }
        free(headers);
        free(ctype);
        return 0;
    }

    boundary = boundary_of(ctype);
    assert_non_null(boundary);
    snprintf(delim, sizeof(delim), "\r\n--%s", boundary);
    /* The first delimiter may open the body without a CRLF before it. */
    p = strstr(sep + 2, delim);
    assert_non_null(p);
    while (!found) {
        const char *start = p + strlen(delim);
        const char *next;

        if (strncmp(start, "--", 2) == 0)
            break;
        assert_true(strncmp(start, "\r\n", 2) == 0);
        start += 2;
        next = strstr(start, delim);
        assert_non_null(next);
        {
            char *child = strndup(start, (size_t)(next - start));

            found = find_part(child, strlen(child), type, out);
            free(child);
        }
        p = next;
    }
    free(boundary);
    free(headers);
    free(ctype);
    return found;
}

static void part_free(struct part *p)
{
    free(p->headers);
    free(p->body);
}

static char *decode_base64(const char *body, size_t *len)
{
    char *clean = malloc(strlen(body) + 1);
    unsigned char *out;
    size_t n = 0;
    size_t pad = 0;
    int w;

    assert_non_null(clean);
    for (const char *p = body; *p != '\0'; p++) {
        if (*p != '\r' && *p != '\n')
            clean[n++] = *p;
    }
    clean[n] = '\0';
    out = malloc(n + 1);
    assert_non_null(out);
    w = EVP_DecodeBlock(out, (unsigned char *)clean, (int)n);
    assert_true(w >= 0);
    pad = (n > 0 && clean[n - 1] == '=') + (n > 1 && clean[n - 2] == '=');
    *len = (size_t)w - pad;
    out[*len] = '\0';
    free(clean);
    return (char *)out;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static char *decode_qp(const char *body)
{
    char *out = malloc(strlen(body) + 1);
    size_t n = 0;

    assert_non_null(out);
    for (const char *p = body; *p != '\0'; p++) {
        if (*p != '=') {
            out[n++] = *p;
        } else if (p[1] == '\r' && p[2] == '\n') {
            p += 2;
        } else {
            int hi = hex_value(p[1]);
            int lo = hi >= 0 ? hex_value(p[2]) : -1;

            assert_true(lo >= 0);
            out[n++] = (char)(hi * 16 + lo);
            p += 2;
        }
    }
    out[n] = '\0';
    return out;
}

/* text with every "\n" turned into "\r\n". */
static char *crlf(const char *text)
{
    struct md_buf b = MD_BUF_INIT;

    for (; *text != '\0'; text++) {
        if (*text == '\n')
            assert_int_equal(md_buf_putc(&b, '\r'), 0);
        assert_int_equal(md_buf_putc(&b, *text), 0);
    }
    return md_buf_detach(&b);
}

static size_t longest_line(const char *msg, size_t len)
{
    size_t longest = 0;
    size_t start = 0;

    for (size_t i = 0; i + 1 < len; i++) {
        if (msg[i] == '\r' && msg[i + 1] == '\n') {
            if (i - start > longest)
                longest = i - start;
            start = i + 2;
        }
    }
    return longest;
}

static int has_bare_line_break(const char *msg, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (msg[i] == '\n' && (i == 0 || msg[i - 1] != '\r'))
            return 1;
        if (msg[i] == '\r' && (i + 1 == len || msg[i + 1] != '\n'))
            return 1;
    }
    return 0;
}

static char *top_headers(const char *msg)
{
    const char *sep = strstr(msg, "\r\n\r\n");

    assert_non_null(sep);
    return strndup(msg, (size_t)(sep - msg) + 2);
}

/* ---- composition ---------------------------------------------------- */

static void compose_has_headers(void **state)
{
    struct md_digest *d = make_digest(TENANT, 0);
    size_t len;
    char *msg = compose_digest(d, "[mdhunt]", &len);
    char *headers = top_headers(msg);
    char *value;
    char fingerprint[65];
    char expected[128];

    (void)state;
    value = header_value(headers, "Date");
    assert_string_equal(value, " Sat, 01 Mar 2025 12:00:00 +0000");
    free(value);
    value = header_value(headers, "From");
    assert_string_equal(value, " mdhunt <mdhunt@example.com>");
    free(value);
    value = header_value(headers, "To");
    assert_string_equal(value, " SOC <soc@example.com>");
    free(value);
    value = header_value(headers, "Cc");
    assert_string_equal(value, " lead@example.com");
    free(value);
    value = header_value(headers, "Subject");
    assert_string_equal(value, " [mdhunt] 2 new devices (tenant " TENANT
                               ")");
    free(value);
    value = header_value(headers, "MIME-Version");
    assert_string_equal(value, " 1.0");
    free(value);

    md_digest_fingerprint(d, fingerprint);
    snprintf(expected, sizeof(expected), " <mdhunt.%.32s@example.com>",
             fingerprint);
    value = header_value(headers, "Message-ID");
    assert_string_equal(value, expected);
    free(value);
    free(headers);
    free(msg);
    md_digest_free(d);
}

static void compose_mime_structure(void **state)
{
    struct md_digest *d = make_digest(TENANT, 0);
    size_t len;
    char *msg = compose_digest(d, "[mdhunt]", &len);
    char *headers = top_headers(msg);
    char *ctype = header_value(headers, "Content-Type");
    char *boundary = boundary_of(ctype);
    char delim[128];
    char end[128];

    (void)state;
    assert_non_null(strstr(ctype, "multipart/mixed;"));
    assert_non_null(boundary);
    snprintf(delim, sizeof(delim), "\r\n--%s\r\n", boundary);
    snprintf(end, sizeof(end), "\r\n--%s--\r\n", boundary);
    /* Two parts: the alternatives and the attachment. */
    assert_non_null(strstr(msg, delim));
    assert_non_null(strstr(strstr(msg, delim) + 1, delim));
    assert_null(strstr(strstr(strstr(msg, delim) + 1, delim) + 1, delim));
    assert_non_null(strstr(msg, end));
    assert_non_null(strstr(msg, "Content-Type: multipart/alternative;"));
    assert_false(has_bare_line_break(msg, len));
    assert_true(longest_line(msg, len) <= 78);
    free(boundary);
    free(ctype);
    free(headers);
    free(msg);
    md_digest_free(d);
}

static void compose_parts_decode_back(void **state)
{
    struct md_report_options opts = { "[mdhunt]", 50 };
    struct md_digest *d = make_digest(TENANT, 0);
    struct md_buf text = MD_BUF_INIT;
    struct md_buf html = MD_BUF_INIT;
    struct md_buf csv = MD_BUF_INIT;
    struct md_error err;
    struct part part;
    size_t len;
    size_t dlen;
    char *msg = compose_digest(d, "[mdhunt]", &len);
    char *decoded;
    char *expected;

    (void)state;
    assert_int_equal(md_report_text(d, &opts, &text, &err), 0);
    assert_int_equal(md_report_html(d, &opts, &html, &err), 0);
    assert_int_equal(md_report_csv(d, &csv, &err), 0);

    assert_true(find_part(msg, len, "text/plain", &part));
    assert_non_null(strstr(part.headers, "charset=UTF-8"));
    assert_non_null(strstr(part.headers, "Content-Transfer-Encoding: "
                                         "quoted-printable"));
    decoded = decode_qp(part.body);
    expected = crlf(text.data);
    assert_string_equal(decoded, expected);
    free(decoded);
    free(expected);
    part_free(&part);

    assert_true(find_part(msg, len, "text/html", &part));
    decoded = decode_qp(part.body);
    expected = crlf(html.data);
    assert_string_equal(decoded, expected);
    free(decoded);
    free(expected);
    part_free(&part);

    assert_true(find_part(msg, len, "text/csv", &part));
    assert_non_null(strstr(part.headers, "Content-Transfer-Encoding: "
                                         "base64"));
    assert_non_null(strstr(part.headers, "filename=\"mdhunt-20250301-"
                                         "120000.csv\""));
    decoded = decode_base64(part.body, &dlen);
    assert_int_equal(dlen, csv.len);
    assert_memory_equal(decoded, csv.data, csv.len);
    free(decoded);
    part_free(&part);

    md_buf_free(&text);
    md_buf_free(&html);
    md_buf_free(&csv);
    free(msg);
    md_digest_free(d);
}

/* Decode the encoded-words of a Subject value; fails on other text. */
static char *decode_words(const char *value)
{
    struct md_buf out = MD_BUF_INIT;
    const char *p = value;

    while (*p != '\0') {
        const char *end;
        char *word;
        char *bytes;
        size_t n;

        while (*p == ' ')
            p++;
        if (*p == '\0')
            break;
        assert_true(strncmp(p, "=?UTF-8?B?", 10) == 0);
        end = strstr(p + 10, "?=");
        assert_non_null(end);
        assert_true(end + 2 - p <= 75);
        word = strndup(p + 10, (size_t)(end - p - 10));
        bytes = decode_base64(word, &n);
        assert_int_equal(md_buf_append(&out, bytes, n), 0);
        free(word);
        free(bytes);
        p = end + 2;
    }
    return md_buf_detach(&out);
}

static void subject_encodes_non_ascii(void **state)
{
    const char *tenant = "m\xc3\xbcller-\xe6\x97\xa5\xe6\x9c\xac"
                         ".onmicrosoft.com";
    struct md_digest *d = make_digest(tenant, 0);
    size_t len;
    char *msg = compose_digest(d, "[mdh\xc3\xbcnt \xe2\x9a\xa0]", &len);
    char *headers = top_headers(msg);
    char *value = header_value(headers, "Subject");
    char *decoded = decode_words(value);
    char expected[256];

    (void)state;
    snprintf(expected, sizeof(expected), "[mdh\xc3\xbcnt \xe2\x9a\xa0] "
             "2 new devices (tenant %s)", tenant);
    assert_string_equal(decoded, expected);
    assert_true(longest_line(headers, strlen(headers)) <= 78);
    free(decoded);
    free(value);
    free(headers);
    free(msg);
    md_digest_free(d);
}

static void subject_long_non_ascii_words(void **state)
{
    struct md_mail_message m;
    struct md_buf out = MD_BUF_INIT;
    struct md_buf subject = MD_BUF_INIT;
    struct md_error err;
    char *value;
    char *decoded;

    (void)state;
    /* 2- and 3-byte characters, so that words must end between them. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(md_buf_puts(&subject, "\xc3\xa9\xe2\x82\xac"), 0);
    memset(&m, 0, sizeof(m));
    m.from = "a@example.com";
    m.to = to_list;
    m.subject = subject.data;
    m.message_id = "<x@example.com>";
    m.boundary_seed = "seed";
    m.text = "hi\n";
    m.text_len = 3;
    assert_int_equal(md_mail_compose(&m, &out, &err), 0);
    assert_true(longest_line(out.data, out.len) <= 78);
    value = header_value(out.data, "Subject");
    decoded = decode_words(value);
    assert_string_equal(decoded, subject.data);
    free(decoded);
    free(value);
    md_buf_free(&subject);
    md_buf_free(&out);
}

static void from_display_name_encoded(void **state)
{
    struct md_mail_message m;
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;
    char *value;

    (void)state;
    memset(&m, 0, sizeof(m));
    m.from = "Pr\xc3\xbc" "fung <check@example.com>";
    m.to = to_list;
    m.subject = "s";
    m.message_id = "<x@example.com>";
    m.boundary_seed = "seed";
    m.text = "hi\n";
    m.text_len = 3;
    assert_int_equal(md_mail_compose(&m, &out, &err), 0);
    value = header_value(out.data, "From");
    assert_string_equal(value, " =?UTF-8?B?UHLDvGZ1bmc=?= <check@example.com>");
    free(value);
    md_buf_free(&out);
}

static void subject_folds_long_ascii(void **state)
{
    struct md_mail_message m;
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;
    char subject[400];
    char *value;

    (void)state;
    memset(subject, 0, sizeof(subject));
    for (int i = 0; i < 50; i++)
        strcat(subject, "word ");
    memset(&m, 0, sizeof(m));
    m.from = "a@example.com";
    m.to = to_list;
    m.subject = subject;
    m.message_id = "<x@example.com>";
    m.boundary_seed = "seed";
    m.text = "hi\n";
    m.text_len = 3;
    assert_int_equal(md_mail_compose(&m, &out, &err), 0);
    assert_true(longest_line(out.data, out.len) <= 78);
    value = header_value(out.data, "Subject");
    assert_non_null(value);
    assert_int_equal(strlen(value), 1 + 50 * 5 - 1);
    free(value);
    md_buf_free(&out);
}

static void header_injection_stripped(void **state)
{
    static const char *const to[] = {
        "\"Evil\r\nBcc: spy@example.net\" <soc@example.com>", NULL
    };
    struct md_mail_message m;
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;
    char *headers;

    (void)state;
    memset(&m, 0, sizeof(m));
    m.from = "mdhunt@example.com";
    m.to = to;
    m.subject = "hello\r\nBcc: spy@example.net\r\n\r\nforged body";
    m.message_id = "<x@example.com>";
    m.boundary_seed = "seed";
    m.text = "hi\n";
    m.text_len = 3;
    assert_int_equal(md_mail_compose(&m, &out, &err), 0);
    headers = top_headers(out.data);
    assert_null(strstr(out.data, "\r\nBcc:"));
    assert_null(strstr(headers, "\nforged body"));
    assert_non_null(strstr(headers, "Subject: helloBcc: spy@example.net"
                                    "forged body\r\n"));
    free(headers);
    md_buf_free(&out);
}

static void address_injection_rejected(void **state)
{
    static const char *const to[] = {
        "soc@example.com\r\nBcc: spy@example.net", NULL
    };
    struct md_mail_message m;
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;

    (void)state;
    memset(&m, 0, sizeof(m));
    m.from = "mdhunt@example.com";
    m.to = to;
    m.subject = "s";
    m.message_id = "<x@example.com>";
    m.boundary_seed = "seed";
    m.text = "hi\n";
    m.text_len = 3;
    md_error_clear(&err);
    assert_int_equal(md_mail_compose(&m, &out, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "To address"));
    md_buf_free(&out);
}

static void address_trailing_text_rejected(void **state)
{
    static const char *const to[] = { "<soc@example.com> junk", NULL };
    struct md_mail_message m;
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;

    (void)state;
    memset(&m, 0, sizeof(m));
    m.from = "mdhunt@example.com";
    m.to = to;
    m.message_id = "<x@example.com>";
    m.boundary_seed = "seed";
    m.text = "";
    md_error_clear(&err);
    assert_int_equal(md_mail_compose(&m, &out, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    md_buf_free(&out);
}

static void compose_is_deterministic(void **state)
{
    struct md_digest *a = make_digest(TENANT, 0);
    struct md_digest *b = make_digest(TENANT, 1);
    size_t alen;
    size_t blen;
    size_t clen;
    char *ma = compose_digest(a, "[mdhunt]", &alen);
    char *mb = compose_digest(b, "[mdhunt]", &blen);
    char *mc = compose_digest(a, "[mdhunt]", &clen);

    (void)state;
    assert_int_equal(alen, blen);
    assert_memory_equal(ma, mb, alen);
    assert_int_equal(alen, clen);
    assert_memory_equal(ma, mc, alen);
    free(ma);
    free(mb);
    free(mc);
    md_digest_free(a);
    md_digest_free(b);
}

static void qp_keeps_long_lines_short(void **state)
{
    struct md_mail_message m;
    struct md_buf out = MD_BUF_INIT;
    struct md_buf text = MD_BUF_INIT;
    struct md_error err;
    struct part part;
    char *decoded;
    char *expected;

    (void)state;
    for (int i = 0; i < 1000; i++)
        assert_int_equal(md_buf_puts(&text, "a=\xc3\xa9 "), 0);
    assert_int_equal(md_buf_puts(&text, "  \nFrom here\n.dot\ttab\t\n"),
                     0);
    memset(&m, 0, sizeof(m));
    m.from = "a@example.com";
    m.to = to_list;
    m.subject = "s";
    m.message_id = "<x@example.com>";
    m.boundary_seed = "seed";
    m.text = text.data;
    m.text_len = text.len;
    m.html = "<p>x</p>";
    m.html_len = 8;
    assert_int_equal(md_mail_compose(&m, &out, &err), 0);
    assert_true(longest_line(out.data, out.len) <= 76);
    assert_null(strstr(out.data, "\r\nFrom "));
    assert_null(strstr(out.data, " \r\n"));
    assert_true(find_part(out.data, out.len, "text/plain", &part));
    decoded = decode_qp(part.body);
    expected = crlf(text.data);
    assert_string_equal(decoded, expected);
    free(decoded);
    free(expected);
    part_free(&part);
    md_buf_free(&out);
    md_buf_free(&text);
}

static void retry_schedule_delays(void **state)
{
    static const struct {
        unsigned attempts;
        int64_t delay;
    } cases[] = {
        { 1, 60 }, { 2, 300 }, { 3, 900 }, { 4, 3600 }, { 5, 3600 },
        { 23, 3600 },
    };
    md_instant next = 0;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(md_mail_next_attempt(cases[i].attempts, T0, 0,
                                              &next), 1);
        assert_true(next == T0 + cases[i].delay * MD_TICKS_PER_SECOND);
    }
}

static void retry_schedule_ends_dead(void **state)
{
    md_instant next = 0;

    (void)state;
    assert_int_equal(md_mail_next_attempt(MD_MAIL_MAX_ATTEMPTS, T0, 0,
                                          &next), 0);
    assert_int_equal(md_mail_next_attempt(3, T0, 3, &next), 0);
    assert_int_equal(md_mail_next_attempt(2, T0, 3, &next), 1);
}

/* ---- delivery against the loopback server -------------------------- */

struct server {
    char dir[64];
    char port_file[96];
    char ca_file[96];
    char save_dir[96];
    char url[64];
    pid_t pid;
};

/* The server of the running test; the teardown stops it even when an
 * assertion ended the test early. */
static struct server active_server;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Start the server with extra arguments (NULL-terminated) and wait until
 * its port file appears. */
static void server_start(struct server *srv, const char *scheme,
                         const char *const *extra)
{
    const char *argv[40];
    size_t argc = 0;
    FILE *f;
    int port = 0;

    memset(srv, 0, sizeof(*srv));
    snprintf(srv->dir, sizeof(srv->dir), "/tmp/mdhunt-mail-XXXXXX");
    assert_non_null(mkdtemp(srv->dir));
    snprintf(srv->port_file, sizeof(srv->port_file), "%s/port", srv->dir);
    snprintf(srv->ca_file, sizeof(srv->ca_file), "%s/ca.pem", srv->dir);
    snprintf(srv->save_dir, sizeof(srv->save_dir), "%s/mail", srv->dir);

    argv[argc++] = PYTHON;
    argv[argc++] = SMTP_SERVER;
    argv[argc++] = "--port-file";
    argv[argc++] = srv->port_file;
    argv[argc++] = "--ca-file";
    argv[argc++] = srv->ca_file;
    argv[argc++] = "--save-dir";
    argv[argc++] = srv->save_dir;
    argv[argc++] = "--lifetime";
    argv[argc++] = "60";
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;

    fflush(stderr);
    srv->pid = fork();
    assert_true(srv->pid >= 0);
    if (srv->pid == 0) {
        execv(PYTHON, (char *const *)argv);
        _exit(127);
    }

    /* Wait at most 15 s for the certificates and the listening socket. */
    for (int i = 0; i < 300 && port == 0; i++) {
        f = fopen(srv->port_file, "r");
        if (f != NULL) {
            if (fscanf(f, "%d", &port) != 1)
                port = 0;
            fclose(f);
        }
        if (port == 0) {
            struct timespec ts = { 0, 50 * 1000 * 1000 };

            assert_int_equal(waitpid(srv->pid, NULL, WNOHANG), 0);
            nanosleep(&ts, NULL);
        }
    }
    assert_true(port > 0);
    snprintf(srv->url, sizeof(srv->url), "%s://127.0.0.1:%d", scheme, port);
}

static void server_stop(struct server *srv)
{
    int status;

    if (srv->pid > 0) {
        kill(srv->pid, SIGTERM);
        for (int i = 0; i < 100; i++) {
            struct timespec ts = { 0, 50 * 1000 * 1000 };

            if (waitpid(srv->pid, &status, WNOHANG) == srv->pid) {
                srv->pid = 0;
                break;
            }
            nanosleep(&ts, NULL);
        }
        if (srv->pid > 0) {
            kill(srv->pid, SIGKILL);
            waitpid(srv->pid, &status, 0);
        }
    }
    if (srv->dir[0] != '\0')
        nftw(srv->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    srv->dir[0] = '\0';
}

static int server_teardown(void **state)
{
    (void)state;
    server_stop(&active_server);
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    struct md_buf b = MD_BUF_INIT;
    char chunk[4096];
    size_t n;

    if (f == NULL)
        return NULL;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        assert_int_equal(md_buf_append(&b, chunk, n), 0);
    fclose(f);
    *len = b.len;
    return md_buf_detach(&b);
}

static int saved_exists(const struct server *srv, const char *name)
{
    char path[160];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", srv->save_dir, name);
    return stat(path, &st) == 0;
}

static char *saved_file(const struct server *srv, const char *name,
                        size_t *len)
{
    char path[160];

    snprintf(path, sizeof(path), "%s/%s", srv->save_dir, name);
    return read_file(path, len);
}

/* Everything written to stderr between capture_start and capture_end. */
struct capture {
    int saved;
    FILE *file;
};

static void capture_start(struct capture *c)
{
    fflush(stderr);
    c->file = tmpfile();
    assert_non_null(c->file);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fileno(c->file), STDERR_FILENO) >= 0);
}

static char *capture_end(struct capture *c)
{
    struct md_buf b = MD_BUF_INIT;
    char chunk[4096];
    size_t n;

    fflush(stderr);
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    rewind(c->file);
    while ((n = fread(chunk, 1, sizeof(chunk), c->file)) > 0)
        assert_int_equal(md_buf_append(&b, chunk, n), 0);
    fclose(c->file);
    /* Echo it, so that a failing test still shows the log. */
    if (b.len > 0)
        fwrite(b.data, 1, b.len, stderr);
    return md_buf_detach(&b);
}

static void delivery_settings(struct md_mail_settings *s,
                              const struct server *srv,
                              const struct md_secret *password)
{
    settings_init(s);
    s->smtp_url = srv->url;
    s->ca_file = srv->ca_file;
    s->connect_timeout = 5;
    s->timeout = 20;
    if (password != NULL) {
        s->username = "mdhunt";
        s->password = password;
    }
}

static int send_bytes(const struct md_mail_settings *s, const char *bytes,
                      size_t len, struct md_mail_result *res,
                      struct md_error *err)
{
    md_error_clear(err);
    return md_mail_send(s, bytes, len, res, err);
}

static void send_starttls_auth_saves_bytes(void **state)
{
    static const char *const extra[] = {
        "--user", "mdhunt", "--password", PASSWORD, NULL
    };
    struct md_secret password = { NULL, 0 };
    struct md_digest *d = make_digest(TENANT, 0);
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;
    size_t len;
    size_t saved_len;
    char *msg = compose_digest(d, "[mdhunt]", &len);
    char *saved;
    char *envelope;

    (void)state;
    assert_int_equal(md_secret_set(&password, PASSWORD, strlen(PASSWORD)),
                     0);
    server_start(srv, "smtp", extra);
    delivery_settings(&s, srv, &password);
    if (send_bytes(&s, msg, len, &res, &err) != 0)
        fail_msg("send failed: %s", err.message);
    assert_int_equal(res.outcome, MD_MAIL_SENT);
    assert_int_equal(res.smtp_code, 250);
    assert_int_equal(res.accepted, 2);
    assert_int_equal(res.rejected, 0);

    saved = saved_file(srv, "0001.eml", &saved_len);
    assert_non_null(saved);
    assert_int_equal(saved_len, len);
    assert_memory_equal(saved, msg, len);
    envelope = saved_file(srv, "0001.json", &saved_len);
    assert_non_null(envelope);
    assert_non_null(strstr(envelope, "\"mail_from\": \"mdhunt@example.com\""));
    assert_non_null(strstr(envelope, "\"soc@example.com\""));
    assert_non_null(strstr(envelope, "\"lead@example.com\""));
    assert_non_null(strstr(envelope, "\"tls\": true"));
    assert_non_null(strstr(envelope, "\"auth\": \"mdhunt\""));

    free(saved);
    free(envelope);
    server_stop(srv);
    md_secret_clear(&password);
    free(msg);
    md_digest_free(d);
}

static void send_implicit_tls(void **state)
{
    static const char *const extra[] = { "--tls", "implicit", NULL };
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;
    const char *msg = "Subject: t\r\n\r\nbody\r\n";

    (void)state;
    server_start(srv, "smtps", extra);
    delivery_settings(&s, srv, NULL);
    if (send_bytes(&s, msg, strlen(msg), &res, &err) != 0)
        fail_msg("send failed: %s", err.message);
    assert_int_equal(res.outcome, MD_MAIL_SENT);
    assert_true(saved_exists(srv, "0001.eml"));
    server_stop(srv);
}

static void send_server_down_temporary(void **state)
{
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    char url[64];
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    (void)state;
    /* A port that was free a moment ago: nothing listens there. */
    assert_true(fd >= 0);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &alen), 0);
    close(fd);
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", ntohs(addr.sin_port));

    settings_init(&s);
    s.smtp_url = url;
    s.connect_timeout = 5;
    s.timeout = 10;
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(res.outcome, MD_MAIL_TEMPORARY);
    assert_int_equal(err.kind, MD_E_NETWORK);
}

static void send_4xx_temporary(void **state)
{
    static const char *const extra[] = {
        "--fail-mail", "451 4.3.0 try again later", NULL
    };
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;

    (void)state;
    server_start(srv, "smtp", extra);
    delivery_settings(&s, srv, NULL);
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(res.outcome, MD_MAIL_TEMPORARY);
    assert_int_equal(res.smtp_code, 451);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_string_equal(err.service_code, "451");
    assert_non_null(strstr(err.message, "MAIL"));
    assert_non_null(strstr(err.message, "451 4.3.0 try again later"));
    assert_false(saved_exists(srv, "0001.eml"));
    server_stop(srv);
}

static void send_5xx_data_permanent(void **state)
{
    static const char *const extra[] = {
        "--fail-data", "554 5.7.1 message refused", NULL
    };
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;

    (void)state;
    server_start(srv, "smtp", extra);
    delivery_settings(&s, srv, NULL);
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(res.outcome, MD_MAIL_PERMANENT);
    assert_int_equal(res.smtp_code, 554);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_string_equal(err.service_code, "554");
    assert_non_null(strstr(err.message, "554 5.7.1 message refused"));
    server_stop(srv);
}

static void send_5xx_every_rcpt_permanent(void **state)
{
    static const char *const extra[] = {
        "--fail-rcpt", "550 5.1.1 no such user", NULL
    };
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;

    (void)state;
    server_start(srv, "smtp", extra);
    delivery_settings(&s, srv, NULL);
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(res.outcome, MD_MAIL_PERMANENT);
    assert_int_equal(res.rejected, 2);
    assert_non_null(strstr(err.message, "RCPT"));
    server_stop(srv);
}

static void check_no_clear_text(const char *mode)
{
    const char *extra[] = { "--tls", mode, NULL };
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;

    server_start(srv, "smtp", extra);
    delivery_settings(&s, srv, NULL);
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(res.outcome, MD_MAIL_TEMPORARY);
    assert_int_equal(err.kind, MD_E_TLS);
    assert_non_null(strstr(err.message, "STARTTLS"));
    assert_non_null(strstr(err.message, "no mail was sent"));
    /* The server would have accepted clear text; nothing arrived. */
    assert_false(saved_exists(srv, "0001.eml"));
    server_stop(srv);
}

static void send_starttls_rejected_no_mail(void **state)
{
    (void)state;
    check_no_clear_text("reject");
}

static void send_starttls_absent_no_mail(void **state)
{
    (void)state;
    check_no_clear_text("none");
}

static void send_one_rcpt_rejected_sent(void **state)
{
    static const char *const extra[] = {
        "--reject-rcpt", "lead@example.com", NULL
    };
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct capture cap;
    struct server *srv = &active_server;
    char *log;
    int rc;

    (void)state;
    server_start(srv, "smtp", extra);
    delivery_settings(&s, srv, NULL);
    capture_start(&cap);
    rc = send_bytes(&s, "x\r\n", 3, &res, &err);
    log = capture_end(&cap);
    assert_int_equal(rc, 0);
    assert_int_equal(res.outcome, MD_MAIL_SENT);
    assert_int_equal(res.accepted, 1);
    assert_int_equal(res.rejected, 1);
    assert_non_null(strstr(log, "rejected recipient lead@example.com"));
    assert_true(saved_exists(srv, "0001.eml"));
    free(log);
    server_stop(srv);
}

static void assert_no_password(const char *text)
{
    assert_null(strstr(text, PASSWORD));
    assert_null(strstr(text, PASSWORD_PLAIN_B64));
    assert_null(strstr(text, PASSWORD_LOGIN_B64));
}

static void password_never_logged(void **state)
{
    static const char *const extra[] = {
        "--user", "mdhunt", "--password", "another-password", NULL
    };
    struct md_secret password = { NULL, 0 };
    enum md_log_level level = md_log_get_level();
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct capture cap;
    struct server *srv = &active_server;
    char *log;
    int rc;

    (void)state;
    assert_int_equal(md_secret_set(&password, PASSWORD, strlen(PASSWORD)),
                     0);
    server_start(srv, "smtp", extra);
    delivery_settings(&s, srv, &password);
    md_log_set_level(MD_LOG_DEBUG);
    capture_start(&cap);
    rc = send_bytes(&s, "x\r\n", 3, &res, &err);
    log = capture_end(&cap);
    md_log_set_level(level);

    assert_int_equal(rc, -1);
    assert_int_equal(res.outcome, MD_MAIL_TEMPORARY);
    assert_int_equal(err.kind, MD_E_AUTH);
    assert_non_null(strstr(err.message, "user mdhunt"));
    assert_no_password(log);
    assert_no_password(err.message);
    free(log);
    server_stop(srv);
    md_secret_clear(&password);
}

static void send_untrusted_certificate_fails(void **state)
{
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;

    (void)state;
    server_start(srv, "smtp", NULL);
    delivery_settings(&s, srv, NULL);
    s.ca_file = NULL;
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(res.outcome, MD_MAIL_TEMPORARY);
    assert_int_equal(err.kind, MD_E_TLS);
    assert_false(saved_exists(srv, "0001.eml"));
    server_stop(srv);
}

static void mail_test_sends_message(void **state)
{
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;
    struct server *srv = &active_server;
    size_t len;
    char *saved;

    (void)state;
    server_start(srv, "smtp", NULL);
    delivery_settings(&s, srv, NULL);
    md_error_clear(&err);
    if (md_mail_test(&s, "[mdhunt]", &res, &err) != 0)
        fail_msg("mail test failed: %s", err.message);
    saved = saved_file(srv, "0001.eml", &len);
    assert_non_null(saved);
    assert_non_null(strstr(saved, "\r\nSubject: [mdhunt] test message\r\n"));
    assert_non_null(strstr(saved, "Mail delivery works."));
    free(saved);
    server_stop(srv);
}

static void send_rejects_url_credentials(void **state)
{
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;

    (void)state;
    settings_init(&s);
    s.smtp_url = "smtp://user:secret@127.0.0.1:25";
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_int_equal(res.outcome, MD_MAIL_PERMANENT);
    assert_null(strstr(err.message, "secret"));
}

static void send_rejects_other_schemes(void **state)
{
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;

    (void)state;
    settings_init(&s);
    s.smtp_url = "http://127.0.0.1:25";
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
}

static void send_rejects_unreadable_ca(void **state)
{
    struct md_mail_settings s;
    struct md_mail_result res;
    struct md_error err;

    (void)state;
    settings_init(&s);
    s.smtp_url = "smtp://127.0.0.1:25";
    s.ca_file = "/nonexistent/ca.pem";
    assert_int_equal(send_bytes(&s, "x\r\n", 3, &res, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "/nonexistent/ca.pem"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(compose_has_headers),
        cmocka_unit_test(compose_mime_structure),
        cmocka_unit_test(compose_parts_decode_back),
        cmocka_unit_test(subject_encodes_non_ascii),
        cmocka_unit_test(subject_folds_long_ascii),
        cmocka_unit_test(subject_long_non_ascii_words),
        cmocka_unit_test(from_display_name_encoded),
        cmocka_unit_test(header_injection_stripped),
        cmocka_unit_test(address_injection_rejected),
        cmocka_unit_test(address_trailing_text_rejected),
        cmocka_unit_test(compose_is_deterministic),
        cmocka_unit_test(qp_keeps_long_lines_short),
        cmocka_unit_test(retry_schedule_delays),
        cmocka_unit_test(retry_schedule_ends_dead),
        cmocka_unit_test_teardown(send_starttls_auth_saves_bytes,
                                  server_teardown),
        cmocka_unit_test_teardown(send_implicit_tls,
                                  server_teardown),
        cmocka_unit_test(send_server_down_temporary),
        cmocka_unit_test_teardown(send_4xx_temporary,
                                  server_teardown),
        cmocka_unit_test_teardown(send_5xx_data_permanent,
                                  server_teardown),
        cmocka_unit_test_teardown(send_5xx_every_rcpt_permanent,
                                  server_teardown),
        cmocka_unit_test_teardown(send_starttls_rejected_no_mail,
                                  server_teardown),
        cmocka_unit_test_teardown(send_starttls_absent_no_mail,
                                  server_teardown),
        cmocka_unit_test_teardown(send_one_rcpt_rejected_sent,
                                  server_teardown),
        cmocka_unit_test_teardown(password_never_logged,
                                  server_teardown),
        cmocka_unit_test_teardown(send_untrusted_certificate_fails,
                                  server_teardown),
        cmocka_unit_test_teardown(mail_test_sends_message,
                                  server_teardown),
        cmocka_unit_test(send_rejects_url_credentials),
        cmocka_unit_test(send_rejects_other_schemes),
        cmocka_unit_test(send_rejects_unreadable_ca),
    };
    static const char *const proxy_vars[] = {
        "all_proxy", "ALL_PROXY", "smtp_proxy", "smtps_proxy",
    };
    int failed;

    /* Delivery must reach the loopback server directly. */
    for (size_t i = 0; i < sizeof(proxy_vars) / sizeof(proxy_vars[0]); i++)
        unsetenv(proxy_vars[i]);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return failed;
}
