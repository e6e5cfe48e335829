/* Tests for the HTTP layer: Retry-After parsing, and single transfers
 * against a TLS server on 127.0.0.1 that runs in a thread and serves one
 * connection with a canned reply. */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mdhunt/http.h"
#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"

#define TLS_DIR MD_TEST_DATA "/tls/"
#define CA_FILE TLS_DIR "ca.pem"

/* Every wait of the test server ends after this many milliseconds. */
#define SERVER_WAIT_MS 10000

struct server {
    int listen_fd;
    char url[64];
    SSL_CTX *ctx;
    pthread_t thread;
    const char *reply;          /* sent after the request; NULL: none */
    int raise_interrupt;        /* request a stop instead of replying */
    char request[16384];        /* what the client sent */
    size_t request_len;
    int joined;
};

static int wait_readable(int fd)
{
    struct pollfd p = { fd, POLLIN, 0 };

    return poll(&p, 1, SERVER_WAIT_MS) == 1;
}

/* Read the request head and a body of Content-Length bytes. */
static void read_request(struct server *s, SSL *ssl, int fd)
{
    char *end = NULL;
    size_t want = 0;

    while (s->request_len + 1 < sizeof(s->request)) {
        int n;

        if (SSL_pending(ssl) == 0 && !wait_readable(fd))
            return;
        n = SSL_read(ssl, s->request + s->request_len,
                     (int)(sizeof(s->request) - 1 - s->request_len));
        if (n <= 0)
            return;
        s->request_len += (size_t)n;
        s->request[s->request_len] = '\0';
        if (end == NULL && (end = strstr(s->request, "\r\n\r\n")) != NULL) {
            const char *cl = strcasestr(s->request, "\r\nContent-Length:");

            want = (size_t)(end + 4 - s->request);
            if (cl != NULL && cl < end)
                want += strtoul(cl + 17, NULL, 10);
        }
        if (end != NULL && s->request_len >= want)
            return;
    }
}

static void *serve_one(void *arg)
{
    struct server *s = arg;
    SSL *ssl;
    int fd;
    char drain[256];

    if (!wait_readable(s->listen_fd))
        return NULL;
    fd = accept(s->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    ssl = SSL_new(s->ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1)
        goto out;

    read_request(s, ssl, fd);
    if (s->raise_interrupt) {
        md_interrupt_request(SIGINT);
        /* Wait for the client to give up and close. */
        while (wait_readable(fd) && SSL_read(ssl, drain, sizeof(drain)) > 0)
            ;
    } else if (s->reply != NULL) {
        SSL_write(ssl, s->reply, (int)strlen(s->reply));
        SSL_shutdown(ssl);
    }

out:
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    return NULL;
}

static struct server *server_start(const char *reply)
{
    struct server *s = calloc(1, sizeof(*s));
    struct sockaddr_in addr;
    socklen_t addr_len = sizeof(addr);

    assert_non_null(s);
    s->reply = reply;
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(s->ctx);
    assert_int_equal(SSL_CTX_use_certificate_file(s->ctx, TLS_DIR
                                                  "server.pem",
                                                  SSL_FILETYPE_PEM), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(s->ctx, TLS_DIR
                                                 "server.key",
                                                 SSL_FILETYPE_PEM), 1);

    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->listen_fd >= 0);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&addr,
                          sizeof(addr)), 0);
    assert_int_equal(listen(s->listen_fd, 4), 0);
    assert_int_equal(getsockname(s->listen_fd, (struct sockaddr *)&addr,
                                 &addr_len), 0);
    snprintf(s->url, sizeof(s->url), "https://127.0.0.1:%u",
             ntohs(addr.sin_port));
    return s;
}

static void server_run(struct server *s)
{
    assert_int_equal(pthread_create(&s->thread, NULL, serve_one, s), 0);
}

/* Wait until the server thread has handled its connection. */
static void server_join(struct server *s)
{
    if (!s->joined)
        pthread_join(s->thread, NULL);
    s->joined = 1;
}

static void server_stop(struct server *s)
{
    server_join(s);
    close(s->listen_fd);
    SSL_CTX_free(s->ctx);
    free(s);
}

static struct md_http *new_http(const char *ca_file, size_t max)
{
    struct md_http_options opts = { ca_file, NULL, 5, 10, max };
    struct md_http *http = NULL;
    struct md_error err;

    md_error_clear(&err);
    if (md_http_new(&opts, &http, &err) != 0)
        fail_msg("md_http_new: %s", err.message);
    return http;
}

/* POST a small JSON body to url + path. */
static int post(struct md_http *http, const char *url,
                const struct md_secret *bearer,
                struct md_http_response *resp, struct md_error *err)
{
    static const char *const headers[] = {
        "Content-Type: application/json; charset=utf-8", NULL
    };
    struct md_http_request req;
    char full[128];

    snprintf(full, sizeof(full), "%s/api/advancedhunting/run", url);
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = full;
    req.headers = headers;
    req.bearer = bearer;
    req.body = "{\"Query\":\"T\"}";
    req.body_len = 13;
    md_error_clear(err);
    return md_http_perform(http, &req, resp, err);
}

static void retry_after_seconds(void **state)
{
    (void)state;
    assert_int_equal(md_http_parse_retry_after("120", 0), 120);
    assert_int_equal(md_http_parse_retry_after("0", 0), 0);
    assert_int_equal(md_http_parse_retry_after("2147483647", 0),
                     2147483647L);
}

static void retry_after_rejects_junk(void **state)
{
    static const char *const bad[] = {
        "", "-1", "12a", " 12", "1.5", "2147483648", "99999999999999999999",
        "Wed, 21 Oct 2015 07:28:00 UTC", "Wed, 31 Feb 2015 07:28:00 GMT",
        "Xyz, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Foo 2015 07:28:00 GMT",
        "Wednesday, 21-Oct-15 07:28:00 GMT", "Wed, 21 Oct 2015 25:28:00 GMT",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        print_message("value \"%s\"\n", bad[i]);
        assert_int_equal(md_http_parse_retry_after(bad[i], 0), -1);
    }
    assert_int_equal(md_http_parse_retry_after(NULL, 0), -1);
}

static void retry_after_http_date(void **state)
{
    const char *now_text = "2015-10-21T07:27:00Z";
    md_instant now;

    (void)state;
    assert_int_equal(md_time_parse(now_text, strlen(now_text), &now), 0);
    assert_int_equal(md_http_parse_retry_after(
                         "Wed, 21 Oct 2015 07:28:00 GMT", now), 60);
    assert_int_equal(md_http_parse_retry_after(
                         "Wed, 21 Oct 2015 07:26:00 GMT", now), 0);
}

static void reply_and_headers_captured(void **state)
{
    struct server *s = server_start(
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        "request-id: 11111111-2222-4333-8444-555555555555\r\n"
        "client-request-id: abc\r\n"
        "x-ms-request-id: ms-1\r\n"
        "Retry-After: 7\r\n"
        "Content-Length: 11\r\n"
        "Connection: close\r\n\r\n"
        "{\"ok\":true}");
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_response resp;
    struct md_secret token = { NULL, 0 };
    struct md_error err;

    (void)state;
    assert_int_equal(md_secret_set(&token, "tok.en", 6), 0);
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, &token, &resp, &err), 0);
    server_stop(s);

    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body.len, 11);
    assert_string_equal(resp.body.data, "{\"ok\":true}");
    assert_string_equal(resp.request_id,
                        "11111111-2222-4333-8444-555555555555");
    assert_string_equal(resp.client_request_id, "abc");
    assert_string_equal(resp.ms_request_id, "ms-1");
    assert_int_equal(resp.retry_after, 7);
    assert_string_equal(resp.content_type,
                        "application/json; charset=utf-8");
    md_http_response_free(&resp);
    md_secret_clear(&token);
    md_http_free(http);
}

static void request_sent_as_given(void **state)
{
    struct server *s = server_start(
        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_response resp;
    struct md_secret token = { NULL, 0 };
    struct md_error err;

    (void)state;
    assert_int_equal(md_secret_set(&token, "tok.en", 6), 0);
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, &token, &resp, &err), 0);
    server_join(s);

    assert_true(strncmp(s->request, "POST /api/advancedhunting/run HTTP/1.1",
                        38) == 0);
    assert_non_null(strstr(s->request, "\r\nAuthorization: Bearer tok.en"));
    assert_non_null(strstr(s->request, "\r\nUser-Agent: mdhunt/"));
    assert_non_null(strstr(s->request, "\r\nContent-Type: application/json;"
                                       " charset=utf-8\r\n"));
    assert_non_null(strstr(s->request, "\r\n\r\n{\"Query\":\"T\"}"));
    server_stop(s);
    md_http_response_free(&resp);
    md_secret_clear(&token);
    md_http_free(http);
}

static void error_status_is_not_failure(void **state)
{
    struct server *s = server_start(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n"
        "Connection: close\r\n\r\nbusy");
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, NULL, &resp, &err), 0);
    server_stop(s);
    assert_int_equal(resp.status, 503);
    assert_string_equal(resp.body.data, "busy");
    assert_int_equal(resp.retry_after, -1);
    md_http_response_free(&resp);
    md_http_free(http);
}

static void redirect_not_followed(void **state)
{
    struct server *s = server_start(
        "HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:1/elsewhere\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n");
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, NULL, &resp, &err), 0);
    server_stop(s);
    assert_int_equal(resp.status, 302);
    md_http_response_free(&resp);
    md_http_free(http);
}

static void oversized_reply_rejected(void **state)
{
    static char reply[2048];
    struct server *s;
    struct md_http *http = new_http(CA_FILE, 100);
    struct md_http_response resp;
    struct md_error err;
    int n;

    (void)state;
    /* No Content-Length: the size is only known while reading. */
    n = snprintf(reply, sizeof(reply),
                 "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    memset(reply + n, 'x', 1000);
    reply[n + 1000] = '\0';
    s = server_start(reply);
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, NULL, &resp, &err), -1);
    server_stop(s);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "max_reply_size (100 bytes)"));
    md_http_response_free(&resp);
    md_http_free(http);
}

static void announced_oversize_rejected(void **state)
{
    struct server *s = server_start(
        "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n"
        "\r\n");
    struct md_http *http = new_http(CA_FILE, 100);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, NULL, &resp, &err), -1);
    server_stop(s);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "max_reply_size (100 bytes)"));
    md_http_response_free(&resp);
    md_http_free(http);
}

static void untrusted_certificate_is_tls(void **state)
{
    struct server *s = server_start("HTTP/1.1 200 OK\r\n\r\n");
    struct md_http *http = new_http(NULL, 1 << 20);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, NULL, &resp, &err), -1);
    server_stop(s);
    assert_int_equal(err.kind, MD_E_TLS);
    assert_non_null(strstr(err.message, "[api] ca_file"));
    md_http_response_free(&resp);
    md_http_free(http);
}

static void empty_reply_is_network(void **state)
{
    struct server *s = server_start(NULL);
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, NULL, &resp, &err), -1);
    server_stop(s);
    assert_int_equal(err.kind, MD_E_NETWORK);
    md_http_response_free(&resp);
    md_http_free(http);
}

static void refused_connection_is_network(void **state)
{
    struct server *s = server_start(NULL);
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_response resp;
    struct md_error err;
    char url[64];

    (void)state;
    /* Close the listener first: nothing accepts on that port any more. */
    snprintf(url, sizeof(url), "%s", s->url);
    close(s->listen_fd);
    SSL_CTX_free(s->ctx);
    free(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, url, NULL, &resp, &err), -1);
    assert_int_equal(err.kind, MD_E_NETWORK);
    md_http_response_free(&resp);
    md_http_free(http);
}

static void plain_http_url_rejected(void **state)
{
    struct md_http *http = new_http(NULL, 1 << 20);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    md_http_response_init(&resp);
    assert_int_equal(post(http, "http://127.0.0.1:1", NULL, &resp, &err),
                     -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "https"));
    md_http_response_free(&resp);
    md_http_free(http);
}

static void stop_request_aborts_transfer(void **state)
{
    struct server *s = server_start(NULL);
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    s->raise_interrupt = 1;
    server_run(s);
    md_http_response_init(&resp);
    assert_int_equal(post(http, s->url, NULL, &resp, &err), -1);
    server_stop(s);
    md_interrupt_reset();
    assert_int_equal(err.kind, MD_E_INTERRUPTED);
    md_http_response_free(&resp);
    md_http_free(http);
}

static void pending_stop_sends_nothing(void **state)
{
    struct md_http *http = new_http(NULL, 1 << 20);
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    md_interrupt_request(SIGTERM);
    md_http_response_init(&resp);
    assert_int_equal(post(http, "https://127.0.0.1:1", NULL, &resp, &err),
                     -1);
    md_interrupt_reset();
    assert_int_equal(err.kind, MD_E_INTERRUPTED);
    md_http_response_free(&resp);
    md_http_free(http);
}

static void missing_ca_file_is_config(void **state)
{
    struct md_http_options opts = { TLS_DIR "absent.pem", NULL, 5, 5, 0 };
    struct md_http *http = (struct md_http *)1;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_http_new(&opts, &http, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "absent.pem"));
    assert_null(http);
}

static void non_pem_ca_file_is_config(void **state)
{
    struct md_http_options opts = {
        MD_TEST_DATA "/replies/not_json.html", NULL, 5, 5, 0
    };
    struct md_http *http = (struct md_http *)1;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_http_new(&opts, &http, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "PEM"));
}

/* Run a form POST with debug logging while stderr goes to a file, and
 * return what was logged. */
static char *trace_form_post(const char *url)
{
    static const char *const headers[] = {
        "Content-Type: application/x-www-form-urlencoded", NULL
    };
    static const char form[] =
        "client_id=app&scope=s&client_secret=hunter2secret"
        "&grant_type=client_credentials";
    struct md_http *http = new_http(CA_FILE, 1 << 20);
    struct md_http_request req;
    struct md_http_response resp;
    struct md_secret token = { NULL, 0 };
    struct md_error err;
    char path[] = "/tmp/mdhunt-test-http-XXXXXX";
    int fd = mkstemp(path);
    int saved = dup(STDERR_FILENO);
    char *log = calloc(1, 65536);

    assert_true(fd >= 0);
    assert_non_null(log);
    assert_int_equal(md_secret_set(&token, "bearer-token-value", 18), 0);
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = url;
    req.headers = headers;
    req.bearer = &token;
    req.body = form;
    req.body_len = sizeof(form) - 1;
    md_http_response_init(&resp);

    fflush(stderr);
    dup2(fd, STDERR_FILENO);
    md_log_set_level(MD_LOG_DEBUG);
    md_error_clear(&err);
    md_http_perform(http, &req, &resp, &err);
    md_log_set_level(MD_LOG_INFO);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);

    assert_true(pread(fd, log, 65535, 0) >= 0);
    close(fd);
    unlink(path);
    md_http_response_free(&resp);
    md_secret_clear(&token);
    md_http_free(http);
    return log;
}

static void debug_trace_redacts_secrets(void **state)
{
    struct server *s = server_start(
        "HTTP/1.1 200 OK\r\nContent-Length: 27\r\nConnection: close\r\n\r\n"
        "{\"access_token\":\"reply-tok\"}");
    char url[96];
    char *log;

    (void)state;
    server_run(s);
    snprintf(url, sizeof(url), "%s/tenant/oauth2/v2.0/token", s->url);
    log = trace_form_post(url);
    server_stop(s);
    assert_non_null(strstr(log, "client_secret=[redacted]"));
    assert_non_null(strstr(log, "Authorization: [redacted]"));
    assert_non_null(strstr(log, "status 200"));
    assert_null(strstr(log, "hunter2secret"));
    assert_null(strstr(log, "bearer-token-value"));
    assert_null(strstr(log, "reply-tok"));
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(retry_after_seconds),
        cmocka_unit_test(retry_after_rejects_junk),
        cmocka_unit_test(retry_after_http_date),
        cmocka_unit_test(reply_and_headers_captured),
        cmocka_unit_test(request_sent_as_given),
        cmocka_unit_test(error_status_is_not_failure),
        cmocka_unit_test(redirect_not_followed),
        cmocka_unit_test(oversized_reply_rejected),
        cmocka_unit_test(announced_oversize_rejected),
        cmocka_unit_test(untrusted_certificate_is_tls),
        cmocka_unit_test(empty_reply_is_network),
        cmocka_unit_test(refused_connection_is_network),
        cmocka_unit_test(plain_http_url_rejected),
        cmocka_unit_test(stop_request_aborts_transfer),
        cmocka_unit_test(pending_stop_sends_nothing),
        cmocka_unit_test(missing_ca_file_is_config),
        cmocka_unit_test(non_pem_ca_file_is_config),
        cmocka_unit_test(debug_trace_redacts_secrets),
    };
    struct md_error err;
    int failed;

    md_error_clear(&err);
    if (md_http_global_init(&err) != 0)
        return 1;
    /* A client that gives up mid-reply must not kill the server thread. */
    signal(SIGPIPE, SIG_IGN);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    md_http_global_cleanup();
    return failed;
}
