#include "mdhunt/http.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"

#ifndef MDHUNT_VERSION
#define MDHUNT_VERSION "unknown"
#endif

#define USER_AGENT "mdhunt/" MDHUNT_VERSION

/* Bounds of what the debug trace collects, so a hostile reply with
 * thousands of headers cannot grow it without limit. */
#define TRACE_MAX 2048

/* Largest Retry-After accepted, in seconds (about 68 years). */
#define RETRY_AFTER_MAX 2147483647L

struct md_http {
    CURL *curl;
    char *ca_file;
    char *proxy;
    long connect_timeout;
    long timeout;
    size_t max_reply_size;
    char errbuf[CURL_ERROR_SIZE];
    md_http_transport_fn transport;     /* tests: replaces libcurl */
    void *transport_ctx;
};

/* State of one transfer, shared by the libcurl callbacks. */
struct transfer {
    struct md_http *http;
    struct md_http_response *resp;
    struct md_buf header_names;   /* for the debug trace */
    int too_large;
    int out_of_memory;
    int interrupted;
    int show_progress;
    int progress_shown;
    int64_t start_ms;
    int64_t shown_seconds;
};

int md_http_global_init(struct md_error *err)
{
    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);

    if (rc != CURLE_OK)
        return md_error_set(err, MD_E_INTERNAL,
                            "cannot initialise libcurl: %s",
                            curl_easy_strerror(rc));
    return 0;
}

void md_http_global_cleanup(void)
{
    curl_global_cleanup();
}

void md_http_response_init(struct md_http_response *resp)
{
    memset(resp, 0, sizeof(*resp));
    md_buf_init(&resp->body, 0);
    resp->retry_after = -1;
}

void md_http_response_free(struct md_http_response *resp)
{
    if (resp->secret_body && resp->body.data != NULL)
        md_wipe(resp->body.data, resp->body.cap);
    md_buf_free(&resp->body);
    md_http_response_init(resp);
}

/* Check early that the extra CA bundle can be loaded, so that a wrong path
 * is a configuration error and not a TLS failure at the first request. */
static int check_ca_file(const char *path, struct md_error *err)
{
    X509_STORE *store;
    FILE *f;
    int ok;

    f = fopen(path, "r");
    if (f == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "cannot open the CA file %s ([api] ca_file): %s",
                            path, strerror(errno));
    fclose(f);

    store = X509_STORE_new();
    if (store == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    ok = X509_STORE_load_file(store, path);
    X509_STORE_free(store);
    ERR_clear_error();
    if (ok != 1)
        return md_error_set(err, MD_E_CONFIG,
                            "the CA file %s ([api] ca_file) contains no "
                            "readable PEM certificate; give a PEM bundle",
                            path);
    return 0;
}

/* Add the extra CA bundle to the store libcurl filled with the system
 * CAs, so both stay trusted. */
static CURLcode add_ca_file(CURL *curl, void *ssl_ctx, void *userdata)
{
    struct md_http *http = userdata;
    X509_STORE *store = SSL_CTX_get_cert_store((SSL_CTX *)ssl_ctx);

    (void)curl;
    if (store == NULL || X509_STORE_load_file(store, http->ca_file) != 1) {
        ERR_clear_error();
        return CURLE_SSL_CACERT_BADFILE;
    }
    return CURLE_OK;
}

static CURLcode set_fixed_options(struct md_http *http)
{
    CURL *c = http->curl;
    CURLcode rc = CURLE_OK;

#define SET(opt, val) \
    do { \
        if (rc == CURLE_OK) \
            rc = curl_easy_setopt(c, opt, val); \
    } while (0)

    SET(CURLOPT_ERRORBUFFER, http->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_USERAGENT, USER_AGENT);
    SET(CURLOPT_ACCEPT_ENCODING, "");
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_CONNECTTIMEOUT, http->connect_timeout);
    SET(CURLOPT_TIMEOUT, http->timeout);
    if (http->max_reply_size > 0)
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)http->max_reply_size);
    if (http->proxy != NULL)
        SET(CURLOPT_PROXY, http->proxy);
    if (http->ca_file != NULL) {
        SET(CURLOPT_SSL_CTX_FUNCTION, add_ca_file);
        SET(CURLOPT_SSL_CTX_DATA, http);
        /* With libcurl's CA cache (7.87 and later) one store would be
         * shared by several connections; load a fresh one for each. */
        SET(CURLOPT_CA_CACHE_TIMEOUT, 0L);
    }
#undef SET
    return rc;
}

int md_http_new(const struct md_http_options *opts, struct md_http **out,
                struct md_error *err)
{
    struct md_http *http;
    CURLcode rc;

    *out = NULL;
    if (opts->ca_file != NULL && check_ca_file(opts->ca_file, err) != 0)
        return -1;

    http = calloc(1, sizeof(*http));
    if (http == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    http->connect_timeout = opts->connect_timeout;
    http->timeout = opts->timeout;
    http->max_reply_size = opts->max_reply_size;
    http->ca_file = md_strdup(opts->ca_file);
    http->proxy = md_strdup(opts->proxy);
    http->curl = curl_easy_init();
    if (http->curl == NULL || (opts->ca_file != NULL && !http->ca_file)
        || (opts->proxy != NULL && http->proxy == NULL)) {
        md_http_free(http);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }

    rc = set_fixed_options(http);
    if (rc != CURLE_OK) {
        md_http_free(http);
        return md_error_set(err, MD_E_INTERNAL,
                            "cannot set up libcurl: %s",
                            curl_easy_strerror(rc));
    }
    *out = http;
    return 0;
}

void md_http_free(struct md_http *http)
{
    if (http == NULL)
        return;
    if (http->curl != NULL)
        curl_easy_cleanup(http->curl);
    free(http->ca_file);
    free(http->proxy);
    free(http);
}

void md_http_set_transport(struct md_http *http, md_http_transport_fn fn,
                           void *ctx)
{
    http->transport = fn;
    http->transport_ctx = ctx;
}

/* Copy a header value, replacing control characters and truncating. */
static void copy_value(char *dst, size_t size, const char *src, size_t len)
{
    size_t i;

    if (len >= size)
        len = size - 1;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];

        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    dst[len] = '\0';
}

static int parse_delay_seconds(const char *s, long *out)
{
    long v = 0;

    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (v > (RETRY_AFTER_MAX - (*s - '0')) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return 0;
}

/* Parse an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT", RFC 9110) by
 * rewriting it as RFC 3339 for md_time_parse(). */
static int parse_http_date(const char *s, md_instant *out)
{
    static const char *const days[] = {
        "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"
    };
    static const char *const months[] = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun",
        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
    };
    char iso[32];
    int day_ok = 0;
    int month = 0;

    if (strlen(s) != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' '
        || s[11] != ' ' || s[16] != ' ' || strcmp(s + 25, " GMT") != 0)
        return -1;
    for (int i = 0; i < 7; i++)
        day_ok |= strncmp(s, days[i], 3) == 0;
    for (int i = 0; i < 12; i++) {
        if (strncmp(s + 8, months[i], 3) == 0)
            month = i + 1;
    }
    if (!day_ok || month == 0)
        return -1;

    /* s + 5: "DD", s + 12: "YYYY", s + 17: "HH:MM:SS" */
    snprintf(iso, sizeof(iso), "%.4s-%02d-%.2sT%.8sZ", s + 12, month, s + 5,
             s + 17);
    return md_time_parse(iso, strlen(iso), out);
}

long md_http_parse_retry_after(const char *value, md_instant now)
{
    md_instant when;
    int64_t delta;
    long seconds;

    if (value == NULL)
        return -1;
    if (*value >= '0' && *value <= '9')
        return parse_delay_seconds(value, &seconds) == 0 ? seconds : -1;
    if (parse_http_date(value, &when) != 0)
        return -1;

    if (when <= now)
        return 0;
    delta = (when - now + MD_TICKS_PER_SECOND - 1) / MD_TICKS_PER_SECOND;
    return delta > RETRY_AFTER_MAX ? -1 : (long)delta;
}

/* Name equality for "Name: value" header lines, ignoring case. */
static int header_is(const char *name, size_t len, const char *want)
{
    char buf[64];

    if (len != strlen(want) || len >= sizeof(buf))
        return 0;
    memcpy(buf, name, len);
    buf[len] = '\0';
    return md_strcasecmp(buf, want) == 0;
}

static void reset_captured(struct transfer *t)
{
    struct md_http_response *r = t->resp;

    r->request_id[0] = '\0';
    r->client_request_id[0] = '\0';
    r->ms_request_id[0] = '\0';
    r->content_type[0] = '\0';
    r->retry_after = -1;
    md_buf_reset(&t->header_names);
}

static void capture_header(struct transfer *t, const char *name,
                           size_t name_len, const char *value,
                           size_t value_len)
{
    struct md_http_response *r = t->resp;
    char text[MD_HTTP_ID_MAX];

    if (header_is(name, name_len, "request-id"))
        copy_value(r->request_id, sizeof(r->request_id), value, value_len);
    else if (header_is(name, name_len, "client-request-id"))
        copy_value(r->client_request_id, sizeof(r->client_request_id),
                   value, value_len);
    else if (header_is(name, name_len, "x-ms-request-id"))
        copy_value(r->ms_request_id, sizeof(r->ms_request_id), value,
                   value_len);
    else if (header_is(name, name_len, "content-type"))
        copy_value(r->content_type, sizeof(r->content_type), value,
                   value_len);
    else if (header_is(name, name_len, "retry-after")) {
        copy_value(text, sizeof(text), value, value_len);
        r->retry_after = md_http_parse_retry_after(text, md_now());
    }

    if (t->header_names.len + name_len + 2 < TRACE_MAX) {
        if (t->header_names.len > 0)
            md_buf_puts(&t->header_names, ", ");
        md_buf_append(&t->header_names, name, name_len);
    }
}

static size_t on_header(char *data, size_t size, size_t nitems,
                        void *userdata)
{
    struct transfer *t = userdata;
    size_t len = size * nitems;
    const char *colon;
    size_t name_len;
    const char *value;
    size_t value_len;

    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        /* A new status line: forget headers of an interim reply. */
        reset_captured(t);
        return len;
    }
    colon = memchr(data, ':', len);
    if (colon == NULL)
        return len;

    name_len = (size_t)(colon - data);
    value = colon + 1;
    value_len = len - name_len - 1;
    while (value_len > 0 && (*value == ' ' || *value == '\t')) {
        value++;
        value_len--;
    }
    while (value_len > 0 && (value[value_len - 1] == '\r'
                             || value[value_len - 1] == '\n'
                             || value[value_len - 1] == ' '
                             || value[value_len - 1] == '\t'))
        value_len--;
    capture_header(t, data, name_len, value, value_len);
    return len;
}

/* Append to a buffer that contains a secret, wiping the old memory when it
 * grows, because realloc() could leave copies behind. */
static int append_secret(struct md_buf *b, const char *data, size_t len)
{
    size_t need;
    size_t cap;
    char *p;

    if (len > SIZE_MAX - b->len - 1)
        return -1;
    need = b->len + len + 1;
    if (need > b->cap) {
        cap = b->cap != 0 ? b->cap : 4096;
        while (cap < need) {
            if (cap > SIZE_MAX / 2)
                return -1;
            cap *= 2;
        }
        p = malloc(cap);
        if (p == NULL)
            return -1;
        if (b->data != NULL) {
            memcpy(p, b->data, b->len);
            md_wipe(b->data, b->cap);
            free(b->data);
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb,
                       void *userdata)
{
    struct transfer *t = userdata;
    struct md_buf *body = &t->resp->body;
    size_t len = size * nmemb;
    size_t max = t->http->max_reply_size;
    int rc;

    if (max > 0 && (body->len > max || len > max - body->len)) {
        t->too_large = 1;
        return 0;
    }
    if (t->resp->secret_body)
        rc = append_secret(body, data, len);
    else
        rc = md_buf_append(body, data, len);
    if (rc != 0) {
        t->out_of_memory = 1;
        return 0;
    }
    return len;
}

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
    struct transfer *t = userdata;
    int64_t seconds;

    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    if (md_interrupt_pending()) {
        t->interrupted = 1;
        return 1;
    }
    if (!t->show_progress)
        return 0;

    seconds = (md_monotonic_ms() - t->start_ms) / 1000;
    if (seconds >= 1 && seconds != t->shown_seconds) {
        fprintf(stderr, "\rwaiting for the service: %lld s",
                (long long)seconds);
        fflush(stderr);
        t->shown_seconds = seconds;
        t->progress_shown = 1;
    }
    return 0;
}

static void clear_progress(struct transfer *t)
{
    if (!t->progress_shown)
        return;
    fprintf(stderr, "\r%40s\r", "");
    fflush(stderr);
}

/* Build the request headers.  The Authorization line contains the token,
 * so it is assembled in memory that is wiped afterwards. */
static struct curl_slist *build_headers(const struct md_http_request *req)
{
    static const char prefix[] = "Authorization: Bearer ";
    struct curl_slist *list = NULL;
    struct curl_slist *next;
    char *line;
    size_t len;

    for (size_t i = 0; req->headers != NULL && req->headers[i]; i++) {
        next = curl_slist_append(list, req->headers[i]);
        if (next == NULL)
            goto fail;
        list = next;
    }
    /* An empty "Expect:" stops libcurl from waiting for 100-continue. */
    next = curl_slist_append(list, "Expect:");
    if (next == NULL)
        goto fail;
    list = next;

    if (req->bearer == NULL || req->bearer->value == NULL)
        return list;
    len = sizeof(prefix) - 1 + req->bearer->len;
    line = malloc(len + 1);
    if (line == NULL)
        goto fail;
    memcpy(line, prefix, sizeof(prefix) - 1);
    memcpy(line + sizeof(prefix) - 1, req->bearer->value, req->bearer->len);
    line[len] = '\0';
    next = curl_slist_append(list, line);
    md_wipe(line, len);
    free(line);
    if (next == NULL)
        goto fail;
    return next;

fail:
    curl_slist_free_all(list);
    return NULL;
}

static void free_headers(struct curl_slist *list)
{
    for (struct curl_slist *p = list; p != NULL; p = p->next)
        md_wipe(p->data, strlen(p->data));
    curl_slist_free_all(list);
}

static int is_form(const struct md_http_request *req)
{
    static const char want[] =
        "content-type: application/x-www-form-urlencoded";

    for (size_t i = 0; req->headers != NULL && req->headers[i]; i++) {
        if (strncasecmp(req->headers[i], want, sizeof(want) - 1) == 0)
            return 1;
    }
    return 0;
}

static int is_secret_field(const char *name, size_t len)
{
    return (len == 13 && memcmp(name, "client_secret", 13) == 0)
        || (len == 16 && memcmp(name, "client_assertion", 16) == 0);
}

/* Log a form body with the values of secret fields replaced. */
static void trace_form(const char *body, size_t len)
{
    struct md_buf out = MD_BUF_INIT;
    const char *end = body + len;
    const char *field = body;

    md_buf_init(&out, TRACE_MAX);
    while (field < end) {
        const char *amp = memchr(field, '&', (size_t)(end - field));
        const char *stop = amp != NULL ? amp : end;
        const char *eq = memchr(field, '=', (size_t)(stop - field));
        size_t name_len = (size_t)((eq != NULL ? eq : stop) - field);
        int rc;

        if (out.len > 0)
            md_buf_putc(&out, '&');
        if (is_secret_field(field, name_len))
            rc = md_buf_printf(&out, "%.*s=[redacted]", (int)name_len,
                               field);
        else
            rc = md_buf_append(&out, field, (size_t)(stop - field));
        if (rc != 0)
            break;
        field = stop + 1;
    }
    md_debug("http: request body: %s", out.data != NULL ? out.data : "");
    md_buf_free(&out);
}

static void trace_request(const struct md_http_request *req)
{
    if (md_log_get_level() < MD_LOG_DEBUG)
        return;
    md_debug("http: %s %s", req->method, req->url);
    for (size_t i = 0; req->headers != NULL && req->headers[i]; i++)
        md_debug("http: request header %s", req->headers[i]);
    if (req->bearer != NULL)
        md_debug("http: request header Authorization: [redacted]");
    if (req->body == NULL)
        return;
    if (is_form(req))
        trace_form(req->body, req->body_len);
    else
        md_debug("http: request body: %zu bytes", req->body_len);
}

static void trace_reply(const struct transfer *t)
{
    if (md_log_get_level() < MD_LOG_DEBUG)
        return;
    md_debug("http: status %ld, %zu bytes, headers: %s", t->resp->status,
             t->resp->body.len,
             t->header_names.data != NULL ? t->header_names.data : "");
}

static CURLcode set_request_options(CURL *c, const struct md_http_request *req,
                                    struct curl_slist *headers,
                                    struct transfer *t)
{
    CURLcode rc = CURLE_OK;

#define SET(opt, val) \
    do { \
        if (rc == CURLE_OK) \
            rc = curl_easy_setopt(c, opt, val); \
    } while (0)

    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, t);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, t);
    SET(CURLOPT_XFERINFOFUNCTION, on_progress);
    SET(CURLOPT_XFERINFODATA, t);
    SET(CURLOPT_HTTPGET, 1L);
    SET(CURLOPT_CUSTOMREQUEST, (char *)NULL);
    if (strcmp(req->method, "POST") == 0) {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SET(CURLOPT_POSTFIELDS, req->body != NULL ? req->body : "");
    } else if (strcmp(req->method, "GET") != 0) {
        SET(CURLOPT_CUSTOMREQUEST, req->method);
    }
#undef SET
    return rc;
}

/* Detach per-request pointers so that nothing dangles into freed
 * memory between requests. */
static void unset_request_options(CURL *c)
{
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, (char *)NULL);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
}

static int set_tls_error(const struct md_http *http, const char *url,
                         const char *detail, struct md_error *err)
{
    if (http->ca_file != NULL)
        return md_error_set(err, MD_E_TLS,
                            "TLS failure talking to %s: %s; check that the "
                            "CA file %s ([api] ca_file) contains the CA that "
                            "signed the server's certificate", url, detail,
                            http->ca_file);
    return md_error_set(err, MD_E_TLS,
                        "TLS failure talking to %s: %s; if a TLS-inspecting "
                        "proxy sits in between, put its CA certificate in a "
                        "PEM file named by [api] ca_file", url, detail);
}

static int classify(CURLcode rc, const struct transfer *t, const char *url,
                    struct md_error *err)
{
    const struct md_http *http = t->http;
    const char *text = http->errbuf;
    char detail[CURL_ERROR_SIZE];

    if (text[0] == '\0')
        text = curl_easy_strerror(rc);
    copy_value(detail, sizeof(detail), text, strlen(text));

    if (t->interrupted || rc == CURLE_ABORTED_BY_CALLBACK)
        return md_error_set(err, MD_E_INTERRUPTED,
                            "request to %s stopped by a stop request", url);
    if (t->too_large || rc == CURLE_FILESIZE_EXCEEDED)
        return md_error_set(err, MD_E_SERVICE,
                            "reply from %s larger than max_reply_size "
                            "(%zu bytes); make the query return less or "
                            "raise [api] max_reply_size", url,
                            http->max_reply_size);
    if (t->out_of_memory || rc == CURLE_OUT_OF_MEMORY)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return md_error_set(err, MD_E_CONFIG,
                            "cannot use the URL %s: %s; only https URLs "
                            "are accepted ([api] url, [auth] "
                            "authority_url)", url, detail);
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return set_tls_error(http, url, detail, err);
    case CURLE_OPERATION_TIMEDOUT:
        return md_error_set(err, MD_E_NETWORK,
                            "request to %s timed out: %s (limits: "
                            "[api] connect_timeout %ld s, timeout %ld s)",
                            url, detail, http->connect_timeout,
                            http->timeout);
    default:
        return md_error_set(err, MD_E_NETWORK,
                            "request to %s failed: %s; check the network, "
                            "the proxy and the URL", url, detail);
    }
}

int md_http_perform(struct md_http *http, const struct md_http_request *req,
                    struct md_http_response *resp, struct md_error *err)
{
    struct transfer t;
    struct curl_slist *headers;
    CURLcode rc;
    long status = 0;
    int result = -1;

    memset(&t, 0, sizeof(t));
    t.http = http;
    t.resp = resp;
    t.show_progress = req->show_progress && isatty(STDERR_FILENO);
    t.start_ms = md_monotonic_ms();
    md_buf_init(&t.header_names, 0);

    if (resp->secret_body && resp->body.data != NULL)
        md_wipe(resp->body.data, resp->body.cap);
    md_buf_reset(&resp->body);
    resp->status = 0;
    resp->secret_body = req->secret_reply;
    reset_captured(&t);

    if (md_interrupt_pending())
        return md_error_set(err, MD_E_INTERRUPTED,
                            "request to %s not sent: a stop was requested",
                            req->url);
    if (http->transport != NULL) {
        md_buf_free(&t.header_names);
        trace_request(req);
        return http->transport(req, resp, err, http->transport_ctx);
    }

    headers = build_headers(req);
    if (headers == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    http->errbuf[0] = '\0';
    rc = set_request_options(http->curl, req, headers, &t);
    if (rc != CURLE_OK) {
        md_error_set(err, MD_E_INTERNAL, "cannot set up libcurl: %s",
                     curl_easy_strerror(rc));
        goto out;
    }

    trace_request(req);
    rc = curl_easy_perform(http->curl);
    clear_progress(&t);
    if (rc != CURLE_OK) {
        classify(rc, &t, req->url, err);
        goto out;
    }

    curl_easy_getinfo(http->curl, CURLINFO_RESPONSE_CODE, &status);
    resp->status = status;
    trace_reply(&t);
    result = 0;

out:
    unset_request_options(http->curl);
    free_headers(headers);
    md_buf_free(&t.header_names);
    return result;
}
