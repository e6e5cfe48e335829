/* Mail composition and SMTP delivery; see include/mdhunt/mail.h. */
#include "mdhunt/mail.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"

/* Header lines are folded before this width (RFC 5322 section 2.1.1). */
#define HEADER_WIDTH 78
/* Encoded body lines stay within this width (RFC 2045 section 6.7). */
#define BODY_WIDTH 76
/* Bytes of UTF-8 per B encoded-word: 42 bytes are 56 base64 characters,
 * and "=?UTF-8?B?" plus "?=" make 68, within the limit of 75 and short
 * enough to follow "Subject: " on one line of 78. */
#define WORD_BYTES 42
/* RFC 5321 limits a path to 256 octets. */
#define ADDRESS_MAX 254
/* Reply text kept for error messages. */
#define REPLY_MAX 200

/* libcurl 8.2 renamed the option; 7.69 to 8.1 spell it with three Ls. */
#ifndef CURLOPT_MAIL_RCPT_ALLOWFAILS
#define CURLOPT_MAIL_RCPT_ALLOWFAILS CURLOPT_MAIL_RCPT_ALLLOWFAILS
#endif

void md_mail_settings_from_config(const struct md_config *cfg,
                                  struct md_mail_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->smtp_url = cfg->mail.smtp_url;
    s->username = cfg->mail.username;
    s->password = &cfg->mail.password;
    s->ca_file = cfg->mail.ca_file;
    s->from = cfg->mail.from;
    s->to = (const char *const *)cfg->mail.to;
    s->cc = (const char *const *)cfg->mail.cc;
}

/* ---- addresses ------------------------------------------------------ */

/* An address split into its display name and its addr-spec. */
struct address {
    char phrase[256];
    char spec[ADDRESS_MAX + 1];
};

static int spec_char(char c)
{
    return c > 0x20 && c < 0x7f && strchr("<>()[],;:\\\"", c) == NULL;
}

static int valid_spec(const char *spec)
{
    const char *at = strchr(spec, '@');
    size_t len = strlen(spec);

    if (len == 0 || len > ADDRESS_MAX || at == NULL || at == spec ||
        at[1] == '\0' || strchr(at + 1, '@') != NULL)
        return 0;
    for (const char *p = spec; *p != '\0'; p++) {
        if (!spec_char(*p))
            return 0;
    }
    return 1;
}

/* Copy at most size - 1 bytes of s[0..len) with CR, LF and other control
 * characters (tab aside) dropped and outer blanks trimmed.  A cut never
 * splits a UTF-8 character. */
static void copy_clean(char *dst, size_t size, const char *s, size_t len)
{
    size_t n = 0;
    size_t i = 0;

    while (len > 0 && (*s == ' ' || *s == '\t'))
        s++, len--;
    for (; i < len && n + 1 < size; i++) {
        unsigned char c = (unsigned char)s[i];

        if ((c < 0x20 && c != '\t') || c == 0x7f)
            continue;
        dst[n++] = (char)c;
    }
    if (i < len) {
        while (n > 0 && ((unsigned char)dst[n - 1] & 0xc0) == 0x80)
            n--;
        if (n > 0 && (unsigned char)dst[n - 1] >= 0xc0)
            n--;
    }
    while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == '\t'))
        n--;
    dst[n] = '\0';
}

/*
 * Parse "local@domain" or "Display Name <local@domain>".  Quotes around
 * the display name are dropped.  An invalid address is a configuration
 * error naming the value.
 */
static int parse_address(const char *text, const char *field,
                         struct address *a, struct md_error *err)
{
    const char *open = strchr(text, '<');
    const char *close = open != NULL ? strchr(open, '>') : NULL;

    a->phrase[0] = '\0';
    if (open != NULL && close != NULL) {
        copy_clean(a->phrase, sizeof(a->phrase), text, (size_t)(open - text));
        copy_clean(a->spec, sizeof(a->spec), open + 1,
                   (size_t)(close - open - 1));
    } else {
        copy_clean(a->spec, sizeof(a->spec), text, strlen(text));
    }
    if (a->phrase[0] == '"') {
        size_t len = strlen(a->phrase);

        if (len >= 2 && a->phrase[len - 1] == '"') {
            memmove(a->phrase, a->phrase + 1, len - 2);
            a->phrase[len - 2] = '\0';
        }
    }
    if (close != NULL && close[strspn(close + 1, " \t\r\n") + 1] != '\0')
        close = NULL;
    if ((open != NULL) != (close != NULL) || !valid_spec(a->spec))
        return md_error_set(err, MD_E_CONFIG,
                            "mail: %s address \"%.100s\" is invalid; write "
                            "local@domain or Name <local@domain> (ASCII "
                            "only)", field, a->spec[0] != '\0' ? a->spec
                                                               : text);
    return 0;
}

/* ---- headers -------------------------------------------------------- */

/* A header being written, with the column of its current line. */
struct header {
    struct md_buf *out;
    size_t column;
    int failed;
};

static void hdr_raw(struct header *h, const char *s, size_t len)
{
    if (!h->failed && md_buf_append(h->out, s, len) != 0)
        h->failed = 1;
    h->column += len;
}

static void hdr_start(struct header *h, const char *name)
{
    h->column = 0;
    hdr_raw(h, name, strlen(name));
    hdr_raw(h, ":", 1);
}

/* Append one unbreakable token after a space, folding first when the line
 * would pass HEADER_WIDTH. */
static void hdr_token(struct header *h, const char *tok, size_t len)
{
    if (h->column + 1 + len > HEADER_WIDTH && h->column > 1) {
        hdr_raw(h, "\r\n", 2);
        h->column = 0;
    }
    hdr_raw(h, " ", 1);
    hdr_raw(h, tok, len);
}

static void hdr_end(struct header *h)
{
    hdr_raw(h, "\r\n", 2);
}

static int is_ascii_printable(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return 0;
    }
    return 1;
}

/* Bytes of the UTF-8 character that starts with byte c. */
static size_t utf8_width(unsigned char c)
{
    if (c >= 0xf0)
        return 4;
    if (c >= 0xe0)
        return 3;
    if (c >= 0xc0)
        return 2;
    return 1;
}

/* Append s as RFC 2047 B encoded-words, each a token of at most 68
 * characters and never splitting a UTF-8 character. */
static void hdr_encoded_words(struct header *h, const char *s)
{
    size_t len = strlen(s);
    size_t pos = 0;

    while (pos < len) {
        unsigned char b64[4 * WORD_BYTES / 3 + 1];
        char word[WORD_BYTES * 2];
        size_t n = 0;
        int wlen;

        while (pos + n < len) {
            /* The analyzer loses strlen() of the malloc'ed subject and
             * takes s[pos + n] for uninitialized; pos + n < len. */
            /* NOLINTNEXTLINE(clang-analyzer-core.CallAndMessage) */
            size_t w = utf8_width((unsigned char)s[pos + n]);

            if (n + w > WORD_BYTES)
                break;
            n += w;
        }
        if (n == 0 || pos + n > len)
            n = len - pos < WORD_BYTES ? len - pos : 1;
        EVP_EncodeBlock(b64, (const unsigned char *)s + pos, (int)n);
        wlen = snprintf(word, sizeof(word), "=?UTF-8?B?%s?=", b64);
        hdr_token(h, word, (size_t)wlen);
        pos += n;
    }
}

/* Append free text (Subject) as words folded at spaces.  Text that is
 * not plain ASCII, contains "=?" or has a word too long to fold becomes
 * encoded-words. */
static void hdr_text(struct header *h, const char *s)
{
    const char *p = s;
    int encode = !is_ascii_printable(s) || strstr(s, "=?") != NULL;

    for (const char *q = s; !encode && *q != '\0';) {
        size_t word = strcspn(q, " ");

        encode = word > HEADER_WIDTH - 10;
        q += word;
        q += *q == ' ';
    }
    if (encode) {
        hdr_encoded_words(h, s);
        return;
    }
    while (*p != '\0') {
        size_t word;

        while (*p == ' ')
            p++;
        word = strcspn(p, " ");
        if (word > 0)
            hdr_token(h, p, word);
        p += word;
    }
}

/* Whether a display name is words of RFC 5322 atext, which need no
 * quotes. */
static int is_atom_phrase(const char *s)
{
    /* "=?" would start an encoded-word for the reader. */
    if (strstr(s, "=?") != NULL)
        return 0;
    for (; *s != '\0'; s++) {
        char c = *s;

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == ' ' ||
              strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL))
            return 0;
    }
    return 1;
}

/* Append an address as "phrase <spec>" with the phrase quoted or
 * encoded as needed; sep is appended to the last token (a comma). */
static void hdr_address(struct header *h, const struct address *a,
                        const char *sep)
{
    char tok[ADDRESS_MAX + 8];
    int n;

    if (a->phrase[0] != '\0') {
        if (is_atom_phrase(a->phrase)) {
            hdr_text(h, a->phrase);
        } else if (is_ascii_printable(a->phrase) &&
                   strstr(a->phrase, "=?") == NULL) {
            struct md_buf q = MD_BUF_INIT;
            int rc = md_buf_putc(&q, '"');

            for (const char *p = a->phrase; *p != '\0' && rc == 0; p++) {
                if (*p == '"' || *p == '\\')
                    rc = md_buf_putc(&q, '\\');
                if (rc == 0)
                    rc = md_buf_putc(&q, *p);
            }
            if (rc == 0)
                rc = md_buf_putc(&q, '"');
            if (rc != 0)
                h->failed = 1;
            else
                hdr_token(h, q.data, q.len);
            md_buf_free(&q);
        } else {
            hdr_encoded_words(h, a->phrase);
        }
    }
    n = snprintf(tok, sizeof(tok), a->phrase[0] != '\0' ? "<%s>%s" : "%s%s",
                 a->spec, sep);
    hdr_token(h, tok, (size_t)n);
}

static int hdr_address_list(struct header *h, const char *name,
                            const char *const *list, struct md_error *err)
{
    struct address a;

    hdr_start(h, name);
    for (size_t i = 0; list[i] != NULL; i++) {
        if (parse_address(list[i], name, &a, err) != 0)
            return -1;
        hdr_address(h, &a, list[i + 1] != NULL ? "," : "");
    }
    hdr_end(h);
    return 0;
}

static void hdr_date(struct header *h, md_instant t)
{
    static const char *const days[] = {
        "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"
    };
    static const char *const months[] = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun",
        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
    };
    time_t secs = (time_t)(t / MD_TICKS_PER_SECOND);
    struct tm tm;
    char text[64];
    int n;

    if (t < 0 || gmtime_r(&secs, &tm) == NULL) {
        secs = 0;
        gmtime_r(&secs, &tm);
    }
    n = snprintf(text, sizeof(text), "%s, %02d %s %04d %02d:%02d:%02d +0000",
                 days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
                 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    hdr_start(h, "Date");
    hdr_token(h, text, (size_t)n);
    hdr_end(h);
}

/* ---- body encodings ------------------------------------------------- */

/*
 * Append data as quoted-printable (RFC 2045 section 6.7).  "\n" and
 * "\r\n" become CRLF line breaks, and soft breaks keep lines within
 * BODY_WIDTH.  "=", control bytes, non-ASCII bytes, blanks at a line end
 * and a leading "From " or "." are encoded.  The output ends where the
 * data ends, without a line break of its own.
 */
static int encode_qp(struct md_buf *out, const char *data, size_t len)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t column = 0;
    int rc = 0;

    for (size_t i = 0; i < len && rc == 0; i++) {
        unsigned char c = (unsigned char)data[i];
        int line_end = i + 1 == len || data[i + 1] == '\n' ||
                       (data[i + 1] == '\r' && i + 2 < len &&
                        data[i + 2] == '\n');
        int literal;
        char tok[3];
        size_t toklen;

        if (c == '\n' || (c == '\r' && i + 1 < len && data[i + 1] == '\n')) {
            if (c == '\r')
                i++;
            rc = md_buf_puts(out, "\r\n");
            column = 0;
            continue;
        }
        literal = (c >= 33 && c <= 126 && c != '=') ||
                  ((c == ' ' || c == '\t') && !line_end);
        if (column == 0 && (c == '.' ||
                            (c == 'F' && len - i >= 5 &&
                             memcmp(data + i, "From ", 5) == 0)))
            literal = 0;
        if (literal) {
            tok[0] = (char)c;
            toklen = 1;
        } else {
            tok[0] = '=';
            tok[1] = digits[c >> 4];
            tok[2] = digits[c & 0x0f];
            toklen = 3;
        }
        if (column + toklen > BODY_WIDTH - 1) {
            rc = md_buf_puts(out, "=\r\n");
            column = 0;
        }
        if (rc == 0)
            rc = md_buf_append(out, tok, toklen);
        column += toklen;
    }
    return rc;
}

/* Append data as base64 in lines of 76 characters. */
static int encode_base64(struct md_buf *out, const char *data, size_t len)
{
    const size_t chunk = BODY_WIDTH / 4 * 3;
    unsigned char line[BODY_WIDTH + 1];

    for (size_t pos = 0; pos < len; pos += chunk) {
        size_t n = len - pos < chunk ? len - pos : chunk;
        int w = EVP_EncodeBlock(line, (const unsigned char *)data + pos,
                                (int)n);

        if (md_buf_append(out, line, (size_t)w) != 0 ||
            md_buf_puts(out, "\r\n") != 0)
            return -1;
    }
    return 0;
}

/* ---- composing ------------------------------------------------------ */

static int valid_seed(const char *seed)
{
    size_t len = seed != NULL ? strlen(seed) : 0;

    if (len == 0 || len > 40)
        return 0;
    for (; *seed != '\0'; seed++) {
        char c = *seed;

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

static int valid_message_id(const char *id)
{
    size_t len = id != NULL ? strlen(id) : 0;

    if (len < 5 || len > 250 || id[0] != '<' || id[len - 1] != '>' ||
        strchr(id, '@') == NULL)
        return 0;
    for (size_t i = 1; i + 1 < len; i++) {
        if (!spec_char(id[i]))
            return 0;
    }
    return 1;
}

/* An attachment file name limited to characters that need no encoding. */
static void safe_file_name(char *dst, size_t size, const char *name)
{
    size_t n = 0;

    for (; *name != '\0' && n + 1 < size; name++) {
        char c = *name;
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                 (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';

        dst[n++] = ok ? c : '_';
    }
    dst[n] = '\0';
    if (n == 0)
        snprintf(dst, size, "attachment");
}

static int put_text_part(struct md_buf *out, const char *type,
                         const char *data, size_t len)
{
    if (md_buf_printf(out, "Content-Type: %s; charset=UTF-8\r\n"
                      "Content-Transfer-Encoding: quoted-printable\r\n\r\n",
                      type) != 0)
        return -1;
    /* The CRLF before a boundary belongs to the boundary (RFC 2046
     * section 5.1.1), so one more ends the content itself. */
    if (encode_qp(out, data, len) != 0)
        return -1;
    return md_buf_puts(out, "\r\n");
}

static int put_attachment_part(struct md_buf *out,
                               const struct md_mail_message *msg)
{
    char name[128];
    const char *type = msg->attachment_type != NULL
                           ? msg->attachment_type
                           : "application/octet-stream";

    safe_file_name(name, sizeof(name), msg->attachment_name);
    if (!is_ascii_printable(type) || strlen(type) > 60)
        type = "application/octet-stream";
    if (md_buf_printf(out, "Content-Type: %s; name=\"%s\"\r\n"
                      "Content-Disposition: attachment; filename=\"%s\"\r\n"
                      "Content-Transfer-Encoding: base64\r\n\r\n",
                      type, name, name) != 0)
        return -1;
    return encode_base64(out, msg->attachment, msg->attachment_len);
}

/* The body below the top-level headers: alternatives and attachment. */
static int put_body(struct md_buf *out, const struct md_mail_message *msg)
{
    int mixed = msg->attachment_name != NULL;
    int alternative = msg->html != NULL;
    const char *seed = msg->boundary_seed;
    int rc = 0;

    if (mixed)
        rc = md_buf_printf(out, "Content-Type: multipart/mixed;\r\n"
                           " boundary=\"=_mdhunt_mixed_%s\"\r\n\r\n"
                           "This is a MIME message.\r\n"
                           "--=_mdhunt_mixed_%s\r\n", seed, seed);
    if (rc == 0 && alternative)
        rc = md_buf_printf(out, "Content-Type: multipart/alternative;\r\n"
                           " boundary=\"=_mdhunt_alt_%s\"\r\n\r\n"
                           "--=_mdhunt_alt_%s\r\n", seed, seed);
    if (rc == 0)
        rc = put_text_part(out, "text/plain", msg->text, msg->text_len);
    if (rc == 0 && alternative) {
        rc = md_buf_printf(out, "--=_mdhunt_alt_%s\r\n", seed);
        if (rc == 0)
            rc = put_text_part(out, "text/html", msg->html, msg->html_len);
        if (rc == 0)
            rc = md_buf_printf(out, "--=_mdhunt_alt_%s--\r\n", seed);
    }
    if (rc == 0 && mixed) {
        rc = md_buf_printf(out, "--=_mdhunt_mixed_%s\r\n", seed);
        if (rc == 0)
            rc = put_attachment_part(out, msg);
        if (rc == 0)
            rc = md_buf_printf(out, "--=_mdhunt_mixed_%s--\r\n", seed);
    }
    return rc;
}

int md_mail_compose(const struct md_mail_message *msg, struct md_buf *out,
                    struct md_error *err)
{
    struct header h = { out, 0, 0 };
    size_t subject_len = msg->subject != NULL ? strlen(msg->subject) : 0;
    char *subject;
    struct address from;

    if (!valid_message_id(msg->message_id))
        return md_error_set(err, MD_E_INTERNAL,
                            "mail: invalid Message-ID \"%.100s\"",
                            msg->message_id != NULL ? msg->message_id : "");
    if (!valid_seed(msg->boundary_seed))
        return md_error_set(err, MD_E_INTERNAL,
                            "mail: invalid MIME boundary seed");
    if (msg->to == NULL || msg->to[0] == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "mail: no recipient; set to = in [mail]");
    if (msg->from == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "mail: no sender; set from = in [mail]");
    if (parse_address(msg->from, "From", &from, err) != 0)
        return -1;

    hdr_date(&h, msg->date);
    hdr_start(&h, "From");
    hdr_address(&h, &from, "");
    hdr_end(&h);
    if (hdr_address_list(&h, "To", msg->to, err) != 0)
        return -1;
    if (msg->cc != NULL && msg->cc[0] != NULL &&
        hdr_address_list(&h, "Cc", msg->cc, err) != 0)
        return -1;
    subject = malloc(subject_len + 1);
    if (subject == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    copy_clean(subject, subject_len + 1, subject_len > 0 ? msg->subject : "",
               subject_len);
    hdr_start(&h, "Subject");
    hdr_text(&h, subject);
    hdr_end(&h);
    free(subject);
    hdr_start(&h, "Message-ID");
    hdr_token(&h, msg->message_id, strlen(msg->message_id));
    hdr_end(&h);
    hdr_start(&h, "MIME-Version");
    hdr_token(&h, "1.0", 3);
    hdr_end(&h);
    hdr_start(&h, "Auto-Submitted");
    hdr_token(&h, "auto-generated", 14);
    hdr_end(&h);

    if (h.failed || put_body(out, msg) != 0)
        return md_error_set(err, MD_E_INTERNAL,
                            "out of memory while composing a mail");
    return 0;
}

/* The domain of the From address, for the Message-ID. */
static int from_domain(const char *from, char *domain, size_t size,
                       struct md_error *err)
{
    struct address a;

    if (from == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "mail: no sender; set from = in [mail]");
    if (parse_address(from, "From", &a, err) != 0)
        return -1;
    snprintf(domain, size, "%s", strchr(a.spec, '@') + 1);
    return 0;
}

int md_mail_compose_digest(const struct md_mail_settings *s,
                           const struct md_digest *d,
                           const struct md_report_options *opts,
                           struct md_buf *out, struct md_error *err)
{
    struct md_buf subject = MD_BUF_INIT;
    struct md_buf text = MD_BUF_INIT;
    struct md_buf html = MD_BUF_INIT;
    struct md_buf csv = MD_BUF_INIT;
    struct md_mail_message msg;
    char fingerprint[65];
    char domain[ADDRESS_MAX + 1];
    char message_id[ADDRESS_MAX + 64];
    char csv_name[64];
    int rc = -1;

    if (from_domain(s->from, domain, sizeof(domain), err) != 0)
        return -1;
    if (md_report_subject(d, opts, &subject, err) != 0 ||
        md_report_text(d, opts, &text, err) != 0 ||
        md_report_html(d, opts, &html, err) != 0 ||
        md_report_csv(d, &csv, err) != 0)
        goto out;

    md_digest_fingerprint(d, fingerprint);
    snprintf(message_id, sizeof(message_id), "<mdhunt.%.32s@%s>",
             fingerprint, domain);
    md_report_csv_name(d, csv_name, sizeof(csv_name));

    memset(&msg, 0, sizeof(msg));
    msg.from = s->from;
    msg.to = s->to;
    msg.cc = s->cc;
    msg.subject = subject.data;
    msg.date = d->generated;
    msg.message_id = message_id;
    msg.boundary_seed = fingerprint + 32;
    msg.text = text.data != NULL ? text.data : "";
    msg.text_len = text.len;
    msg.html = html.data != NULL ? html.data : "";
    msg.html_len = html.len;
    msg.attachment_name = csv_name;
    msg.attachment_type = "text/csv; charset=UTF-8";
    msg.attachment = csv.data != NULL ? csv.data : "";
    msg.attachment_len = csv.len;
    rc = md_mail_compose(&msg, out, err);

out:
    md_buf_free(&subject);
    md_buf_free(&text);
    md_buf_free(&html);
    md_buf_free(&csv);
    return rc;
}

/* ---- delivery -------------------------------------------------------- */

/* The state of one delivery: the message being read out and what the
 * SMTP dialogue showed so far. */
struct session {
    const char *data;           /* the message bytes */
    size_t len;
    size_t pos;
    const char *command;        /* the last command sent, a literal */
    char rcpt[ADDRESS_MAX + 3]; /* the address of the last RCPT TO */
    long code;                  /* the code of the last complete reply
                                   before QUIT */
    char reply[REPLY_MAX];      /* and its text, control characters
                                   replaced */
    long failed_code;           /* the last reply of 400 or more */
    char failed_reply[REPLY_MAX];
    const char *failed_command;
    size_t accepted;
    size_t rejected;
    X509 **cas;                 /* extra trusted certificates */
    size_t ncas;
};

static size_t read_message(char *buffer, size_t size, size_t nitems,
                           void *userdata)
{
    struct session *ss = userdata;
    size_t room = size * nitems;
    size_t n = ss->len - ss->pos < room ? ss->len - ss->pos : room;

    memcpy(buffer, ss->data + ss->pos, n);
    ss->pos += n;
    return n;
}

/*
 * Name a command line the client sent.  Only these literals are kept:
 * the lines of an AUTH exchange carry credentials, so no byte of a line
 * outside the known commands is ever stored.
 */
static const char *command_name(const char *line, size_t len)
{
    static const char *const known[] = {
        "EHLO", "HELO", "STARTTLS", "MAIL", "RCPT", "DATA", "QUIT", "RSET",
        "NOOP", "AUTH"
    };

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        size_t n = strlen(known[i]);

        if (len >= n && strncasecmp(line, known[i], n) == 0 &&
            (len == n || line[n] == ' ' || line[n] == '\r'))
            return known[i];
    }
    return "AUTH";
}

static void note_command(struct session *ss, const char *line, size_t len)
{
    const char *open;
    const char *close;
    size_t n;

    ss->command = command_name(line, len);
    if (strcmp(ss->command, "RCPT") != 0)
        return;
    open = memchr(line, '<', len);
    close = open != NULL ? memchr(open, '>', len - (size_t)(open - line))
                         : NULL;
    n = open != NULL && close != NULL ? (size_t)(close - open - 1) : 0;
    if (n >= sizeof(ss->rcpt))
        n = sizeof(ss->rcpt) - 1;
    memcpy(ss->rcpt, open != NULL ? open + 1 : "", n);
    ss->rcpt[n] = '\0';
}

static void note_reply(struct session *ss, const char *line, size_t len)
{
    size_t n = 0;
    long code;

    /* Only the last line of a reply, "NNN text", completes it. */
    if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' ||
        line[1] > '9' || line[2] < '0' || line[2] > '9' ||
        (len > 3 && line[3] == '-'))
        return;
    /* The reply to QUIT is not part of the delivery's outcome. */
    if (ss->command != NULL && strcmp(ss->command, "QUIT") == 0)
        return;
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    ss->code = code;
    for (size_t i = 0; i < len && n + 1 < sizeof(ss->reply); i++) {
        unsigned char c = (unsigned char)line[i];

        if (c == '\r' || c == '\n')
            break;
        ss->reply[n++] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
    }
    ss->reply[n] = '\0';

    if (ss->command != NULL && strcmp(ss->command, "RCPT") == 0) {
        if (code < 300) {
            ss->accepted++;
        } else {
            ss->rejected++;
            md_warn("mail: the SMTP server rejected recipient %s: %s",
                    ss->rcpt, ss->reply);
        }
    }
    if (code >= 400) {
        ss->failed_code = code;
        ss->failed_command = ss->command != NULL ? ss->command : "connect";
        memcpy(ss->failed_reply, ss->reply, sizeof(ss->reply));
    }
}

static int debug_callback(CURL *curl, curl_infotype type, char *data,
                          size_t size, void *userdata)
{
    struct session *ss = userdata;

    (void)curl;
    if (type == CURLINFO_HEADER_OUT)
        note_command(ss, data, size);
    else if (type == CURLINFO_HEADER_IN)
        note_reply(ss, data, size);
    else if (type == CURLINFO_DATA_OUT)
        ss->command = "DATA";
    return 0;
}

static int progress_callback(void *userdata, curl_off_t dltotal,
                             curl_off_t dlnow, curl_off_t ultotal,
                             curl_off_t ulnow)
{
    (void)userdata;
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return md_interrupt_pending() != 0;
}

static CURLcode ssl_ctx_callback(CURL *curl, void *ssl_ctx, void *userdata)
{
    struct session *ss = userdata;
    X509_STORE *store = SSL_CTX_get_cert_store(ssl_ctx);

    (void)curl;
    for (size_t i = 0; i < ss->ncas; i++) {
        /* A certificate already in the store is not an error. */
        X509_STORE_add_cert(store, ss->cas[i]);
    }
    return CURLE_OK;
}

static void free_cas(struct session *ss)
{
    for (size_t i = 0; i < ss->ncas; i++)
        X509_free(ss->cas[i]);
    free(ss->cas);
    ss->cas = NULL;
    ss->ncas = 0;
}

/* Read every certificate of a PEM file; none is a configuration error. */
static int load_cas(struct session *ss, const char *path,
                    struct md_error *err)
{
    FILE *f = fopen(path, "r");
    X509 *cert;

    if (f == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "mail: cannot read ca_file %s; point ca_file "
                            "in [mail] at a readable PEM file", path);
    while ((cert = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        X509 **cas = realloc(ss->cas, (ss->ncas + 1) * sizeof(*cas));

        if (cas == NULL) {
            X509_free(cert);
            fclose(f);
            return md_error_set(err, MD_E_INTERNAL, "out of memory");
        }
        ss->cas = cas;
        ss->cas[ss->ncas++] = cert;
    }
    fclose(f);
    if (ss->ncas == 0)
        return md_error_set(err, MD_E_CONFIG,
                            "mail: ca_file %s contains no PEM certificate; "
                            "point it at a PEM CA certificate",
                            path);
    return 0;
}

/* Check the URL: smtp or smtps, and no credentials in it. */
static int check_url(const char *url, struct md_error *err)
{
    const char *rest;
    size_t authority;

    if (url == NULL || url[0] == '\0')
        return md_error_set(err, MD_E_CONFIG,
                            "mail: smtp_url is missing; set it in [mail], "
                            "e.g. smtp://mail.example.com:587");
    if (strncasecmp(url, "smtp://", 7) == 0)
        rest = url + 7;
    else if (strncasecmp(url, "smtps://", 8) == 0)
        rest = url + 8;
    else
        return md_error_set(err, MD_E_CONFIG,
                            "mail: smtp_url must start with smtp:// "
                            "(STARTTLS) or smtps:// (implicit TLS)");
    authority = strcspn(rest, "/?#");
    if (memchr(rest, '@', authority) != NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "mail: smtp_url must not contain credentials; "
                            "set username and password_file in [mail]");
    return 0;
}

static struct curl_slist *envelope_recipients(const struct md_mail_settings *s,
                                              struct md_error *err)
{
    const char *const *lists[2] = { s->to, s->cc };
    struct curl_slist *list = NULL;

    for (int l = 0; l < 2; l++) {
        for (size_t i = 0; lists[l] != NULL && lists[l][i] != NULL; i++) {
            struct address a;
            char path[ADDRESS_MAX + 3];
            struct curl_slist *next;

            if (parse_address(lists[l][i], l == 0 ? "To" : "Cc", &a,
                              err) != 0)
                goto fail;
            snprintf(path, sizeof(path), "<%s>", a.spec);
            next = curl_slist_append(list, path);
            if (next == NULL) {
                md_error_set(err, MD_E_INTERNAL, "out of memory");
                goto fail;
            }
            list = next;
        }
    }
    if (list == NULL)
        md_error_set(err, MD_E_CONFIG,
                     "mail: no recipient; set to = in [mail]");
    return list;

fail:
    curl_slist_free_all(list);
    return NULL;
}

static int setup_handle(CURL *curl, const struct md_mail_settings *s,
                        struct session *ss, const char *from_path,
                        struct curl_slist *rcpts, char *errbuf)
{
    CURLcode rc = CURLE_OK;

#define SET(opt, val) \
    do { \
        if (rc == CURLE_OK) \
            rc = curl_easy_setopt(curl, opt, val); \
    } while (0)

    SET(CURLOPT_URL, s->smtp_url);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "smtp,smtps");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_SMTP | CURLPROTO_SMTPS));
#endif
    SET(CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_MAIL_FROM, from_path);
    SET(CURLOPT_MAIL_RCPT, rcpts);
    SET(CURLOPT_MAIL_RCPT_ALLOWFAILS, 1L);
    SET(CURLOPT_UPLOAD, 1L);
    SET(CURLOPT_READFUNCTION, read_message);
    SET(CURLOPT_READDATA, ss);
    SET(CURLOPT_CONNECTTIMEOUT, s->connect_timeout > 0 ? s->connect_timeout
                                                       : 30L);
    SET(CURLOPT_TIMEOUT, s->timeout > 0 ? s->timeout : 300L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    /* VERBOSE only feeds the debug callback, which records commands and
     * replies; libcurl prints nothing itself. */
    SET(CURLOPT_VERBOSE, 1L);
    SET(CURLOPT_DEBUGFUNCTION, debug_callback);
    SET(CURLOPT_DEBUGDATA, ss);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, progress_callback);
    if (s->username != NULL && s->username[0] != '\0') {
        SET(CURLOPT_USERNAME, s->username);
        SET(CURLOPT_PASSWORD, s->password != NULL && s->password->value
                                  ? s->password->value
                                  : "");
    }
    if (ss->ncas > 0) {
        SET(CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_callback);
        SET(CURLOPT_SSL_CTX_DATA, ss);
    }
#undef SET
    return rc == CURLE_OK ? 0 : -1;
}

/* Turn a finished transfer into an outcome and an error. */
static int classify(CURLcode rc, const struct session *ss,
                    const struct md_mail_settings *s, const char *errbuf,
                    struct md_mail_result *res, struct md_error *err)
{
    const char *detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);

    res->outcome = MD_MAIL_TEMPORARY;
    if (rc == CURLE_OK)
        return 0;
    if (ss->failed_code >= 400 && err != NULL)
        snprintf(err->service_code, sizeof(err->service_code), "%ld",
                 ss->failed_code);
    if (rc == CURLE_ABORTED_BY_CALLBACK)
        return md_error_set(err, MD_E_INTERRUPTED,
                            "mail: delivery to %s was interrupted by a stop "
                            "request (SIGINT or SIGTERM)", s->smtp_url);
    if (rc == CURLE_USE_SSL_FAILED)
        return md_error_set(err, MD_E_TLS,
                            "mail: %s did not offer STARTTLS or rejected it "
                            "(%s); no mail was sent, because mdhunt never "
                            "sends mail in clear text.  Use a server that "
                            "offers STARTTLS, or smtps:// for implicit TLS",
                            s->smtp_url, ss->code >= 400 ? ss->reply
                                                         : detail);
    if (rc == CURLE_LOGIN_DENIED)
        return md_error_set(err, MD_E_AUTH,
                            "mail: %s rejected the login of user %s (%s); "
                            "check username and password_file in [mail]",
                            s->smtp_url, s->username != NULL ? s->username
                                                             : "",
                            ss->code >= 400 ? ss->reply : detail);
    if (ss->failed_code >= 400 &&
        strcmp(ss->failed_command, "AUTH") != 0) {
        int permanent = ss->failed_code >= 500;

        res->outcome = permanent ? MD_MAIL_PERMANENT : MD_MAIL_TEMPORARY;
        return md_error_set(err, MD_E_SERVICE,
                            "mail: %s replied to %s with \"%s\"; %s",
                            s->smtp_url, ss->failed_command,
                            ss->failed_reply,
                            permanent ? "a permanent failure"
                                      : "a temporary failure");
    }
    switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
        return md_error_set(err, MD_E_TLS,
                            "mail: TLS with %s failed: %s; check the "
                            "server's certificate and ca_file in [mail]",
                            s->smtp_url, detail);
    default:
        return md_error_set(err, MD_E_NETWORK,
                            "mail: delivery to %s failed: %s; check that "
                            "smtp_url names a reachable server",
                            s->smtp_url, detail);
    }
}

int md_mail_send(const struct md_mail_settings *s, const char *bytes,
                 size_t len, struct md_mail_result *res,
                 struct md_error *err)
{
    struct session ss;
    struct curl_slist *rcpts = NULL;
    struct address from;
    char from_path[ADDRESS_MAX + 3];
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *curl = NULL;
    CURLcode rc;
    int ret = -1;

    memset(res, 0, sizeof(*res));
    res->outcome = MD_MAIL_PERMANENT;
    memset(&ss, 0, sizeof(ss));
    ss.data = bytes;
    ss.len = len;

    if (check_url(s->smtp_url, err) != 0)
        return -1;
    if (s->from == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "mail: no sender; set from = in [mail]");
    if (parse_address(s->from, "From", &from, err) != 0)
        return -1;
    snprintf(from_path, sizeof(from_path), "<%s>", from.spec);
    rcpts = envelope_recipients(s, err);
    if (rcpts == NULL)
        return -1;
    if (s->ca_file != NULL && load_cas(&ss, s->ca_file, err) != 0)
        goto out;

    curl = curl_easy_init();
    if (curl == NULL || setup_handle(curl, s, &ss, from_path, rcpts,
                                     errbuf) != 0) {
        res->outcome = MD_MAIL_TEMPORARY;
        md_error_set(err, MD_E_INTERNAL,
                     "mail: setting up libcurl for SMTP failed (out of "
                     "memory, or a libcurl without SMTP or TLS)");
        goto out;
    }

    md_debug("mail: sending %zu bytes via %s", len, s->smtp_url);
    rc = curl_easy_perform(curl);
    res->smtp_code = ss.code;
    res->accepted = ss.accepted;
    res->rejected = ss.rejected;
    if (classify(rc, &ss, s, errbuf, res, err) != 0)
        goto out;
    res->outcome = MD_MAIL_SENT;
    md_info("mail: %s accepted the message for %zu recipient%s",
            s->smtp_url, ss.accepted, ss.accepted == 1 ? "" : "s");
    ret = 0;

out:
    curl_easy_cleanup(curl);
    curl_slist_free_all(rcpts);
    free_cas(&ss);
    return ret;
}

/* ---- the test message and the retry schedule ------------------------- */

int md_mail_test(const struct md_mail_settings *s,
                 const char *subject_prefix, struct md_mail_result *res,
                 struct md_error *err)
{
    struct md_buf subject = MD_BUF_INIT;
    struct md_buf text = MD_BUF_INIT;
    struct md_buf bytes = MD_BUF_INIT;
    struct md_mail_message msg;
    char host[256] = "unknown host";
    char when[MD_TIME_TEXT_MAX];
    char domain[ADDRESS_MAX + 1];
    char message_id[ADDRESS_MAX + 64];
    char seed[24];
    md_instant now = md_now();
    int ret = -1;

    memset(res, 0, sizeof(*res));
    res->outcome = MD_MAIL_PERMANENT;
    if (from_domain(s->from, domain, sizeof(domain), err) != 0)
        return -1;
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    md_time_format_seconds(now, when, sizeof(when));
    snprintf(seed, sizeof(seed), "test%lld", (long long)now);
    snprintf(message_id, sizeof(message_id), "<mdhunt.test.%lld@%s>",
             (long long)now, domain);

    if (md_buf_printf(&subject, "%s test message",
                      subject_prefix != NULL ? subject_prefix
                                             : "[mdhunt]") != 0 ||
        md_buf_puts(&text, "This is a test message from mdhunt on ") != 0 ||
        md_text_sanitize(&text, host, 64) != 0 ||
        md_buf_printf(&text, ", sent at %s through %s.\nMail delivery "
                      "works.\n", when, s->smtp_url) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    memset(&msg, 0, sizeof(msg));
    msg.from = s->from;
    msg.to = s->to;
    msg.cc = s->cc;
    msg.subject = subject.data;
    msg.date = now;
    msg.message_id = message_id;
    msg.boundary_seed = seed;
    msg.text = text.data;
    msg.text_len = text.len;
    if (md_mail_compose(&msg, &bytes, err) != 0)
        goto out;
    ret = md_mail_send(s, bytes.data, bytes.len, res, err);

out:
    md_buf_free(&subject);
    md_buf_free(&text);
    md_buf_free(&bytes);
    return ret;
}

int md_mail_next_attempt(unsigned attempts, md_instant last,
                         unsigned max_attempts, md_instant *next)
{
    static const int64_t delays[] = { 60, 300, 900, 3600 };
    size_t n = sizeof(delays) / sizeof(delays[0]);
    int64_t delay;

    if (max_attempts == 0)
        max_attempts = MD_MAIL_MAX_ATTEMPTS;
    if (attempts >= max_attempts)
        return 0;
    delay = delays[attempts == 0 ? 0 : (attempts - 1 < n ? attempts - 1
                                                         : n - 1)];
    *next = last + delay * MD_TICKS_PER_SECOND;
    return 1;
}
