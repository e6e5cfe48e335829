/*
 * Mail: composing a digest into RFC 5322 bytes, delivering stored bytes
 * over SMTP with libcurl, and the retry schedule of the outbox.
 *
 * A digest is composed once and its bytes are stored; a resend sends the
 * same bytes, so the Message-ID, Date and MIME boundaries never change.
 * They derive from the digest's fingerprint, never from random numbers.
 *
 * Delivery always uses TLS and verifies the server: smtp://host:587
 * requires STARTTLS (a server that does not offer it, or rejects it, gets
 * no mail, never clear text) and smtps://host:465 is implicit TLS.
 */
#ifndef MDHUNT_MAIL_H
#define MDHUNT_MAIL_H

#include <stddef.h>

#include "mdhunt/buf.h"
#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/report.h"

/* The delivery settings.  Every pointer is borrowed. */
struct md_mail_settings {
    const char *smtp_url;           /* smtp://host:587 or smtps://host:465 */
    const char *username;           /* NULL: no AUTH */
    const struct md_secret *password;
    const char *ca_file;            /* extra trusted CA (PEM), or NULL; the
                                       system CAs stay trusted */
    const char *from;               /* "addr@host" or "Name <addr@host>" */
    const char *const *to;          /* NULL-terminated */
    const char *const *cc;          /* NULL-terminated, or NULL */
    long connect_timeout;           /* seconds; 0: 30 */
    long timeout;                   /* seconds for a whole delivery; 0: 300 */
};

/* Point s at cfg's [mail] section (nothing is copied; cfg must outlive
 * s). */
void md_mail_settings_from_config(const struct md_config *cfg,
                                  struct md_mail_settings *s);

/* A message to compose.  Every pointer is borrowed. */
struct md_mail_message {
    const char *from;
    const char *const *to;          /* NULL-terminated */
    const char *const *cc;          /* NULL-terminated, or NULL */
    const char *subject;            /* UTF-8; RFC 2047-encoded if needed */
    md_instant date;
    const char *message_id;         /* "<...@...>" */
    const char *boundary_seed;      /* letters and digits, at most 40; the
                                       MIME boundaries derive from it */
    const char *text;               /* text/plain body, UTF-8, "\n" lines */
    size_t text_len;
    const char *html;               /* text/html body, or NULL */
    size_t html_len;
    const char *attachment_name;    /* NULL: no attachment */
    const char *attachment_type;    /* e.g. "text/csv; charset=UTF-8" */
    const char *attachment;
    size_t attachment_len;
};

/*
 * Append the message as RFC 5322 bytes with CRLF line ends to out.  It is
 * a multipart/mixed that contains a multipart/alternative (text/plain and
 * text/html, quoted-printable) and the attachment (base64).  Without html
 * and attachment it is a single text/plain part.
 * Body lines stay within 76 octets.  Headers are folded to stay within 78
 * where they have a place to break, but an address is never broken.  CR,
 * LF and other control characters in header values are removed, and
 * non-ASCII header text becomes RFC 2047 encoded-words.  The same input
 * always gives the same bytes.  An address that is empty or not
 * "local@domain" is an MD_E_CONFIG error.
 */
int md_mail_compose(const struct md_mail_message *msg, struct md_buf *out,
                    struct md_error *err);

/*
 * Render a digest (subject, text, HTML, CSV) and compose it, with the
 * Message-ID "<mdhunt.FINGERPRINT@DOMAIN>" where DOMAIN is the domain of
 * the From address.
 */
int md_mail_compose_digest(const struct md_mail_settings *s,
                           const struct md_digest *d,
                           const struct md_report_options *opts,
                           struct md_buf *out, struct md_error *err);

enum md_mail_outcome {
    MD_MAIL_SENT = 0,       /* at least one recipient accepted it */
    MD_MAIL_TEMPORARY,      /* keep it queued and retry later */
    MD_MAIL_PERMANENT       /* a 5xx reply: move it to the dead letters */
};

struct md_mail_result {
    enum md_mail_outcome outcome;
    long smtp_code;         /* the last SMTP reply code, 0 when none */
    size_t accepted;        /* recipients the server accepted */
    size_t rejected;        /* recipients it rejected (each is logged) */
};

/*
 * Deliver stored message bytes to every To and Cc recipient, with the
 * From address as the envelope sender.  Returns 0 when at least one
 * recipient accepted the message, else -1 with res->outcome and err set:
 *   temporary  MD_E_NETWORK (no connection, timeout, connection lost),
 *              MD_E_SERVICE with a 4xx reply, MD_E_TLS (handshake or
 *              certificate failure, STARTTLS not offered or rejected),
 *              MD_E_AUTH (login rejected), MD_E_INTERRUPTED (a stop
 *              request)
 *   permanent  MD_E_SERVICE with a 5xx reply to MAIL, RCPT or DATA (all
 *              recipients rejected included), and MD_E_CONFIG for
 *              settings that cannot work (no recipient, an invalid
 *              address, a URL that is not smtp or smtps or that contains
 *              credentials, an unreadable ca_file)
 * For a reply, err->service_code contains its code ("550") and the
 * message names the SMTP command and the reply text.  No error or log
 * line contains the password.  Each rejected recipient is logged as a
 * warning.
 */
int md_mail_send(const struct md_mail_settings *s, const char *bytes,
                 size_t len, struct md_mail_result *res,
                 struct md_error *err);

/*
 * Compose and send a short test message with the settings (for
 * `mdhunt mail-test`).  Returns like md_mail_send().
 */
int md_mail_test(const struct md_mail_settings *s,
                 const char *subject_prefix, struct md_mail_result *res,
                 struct md_error *err);

/* Delivery attempts after which a queued message is dead: 1 min, 5 min,
 * 15 min, 1 h, then hourly makes 24 attempts about 21 hours. */
#define MD_MAIL_MAX_ATTEMPTS 24

/*
 * The outbox retry schedule.  After `attempts` failed attempts (1 or
 * more), the last at `last`, store the time of the next attempt in *next
 * and return 1; return 0 when the message is dead (attempts >=
 * max_attempts; max_attempts 0 means MD_MAIL_MAX_ATTEMPTS).  The delays
 * are 1 min, 5 min, 15 min, 1 h, then 1 h each.
 */
int md_mail_next_attempt(unsigned attempts, md_instant last,
                         unsigned max_attempts, md_instant *next);

#endif
