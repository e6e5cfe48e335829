/* Tests for the retry loop of the backends: which failures are retried,
 * how long each wait is, and when the loop gives up.  Replies come from a
 * scripted transport and the waits from an injected clock, so nothing
 * waits and nothing touches the network. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/backend.h"
#include "mdhunt/budget.h"
#include "mdhunt/config.h"
#include "mdhunt/http.h"
#include "mdhunt/log.h"
#include "mdhunt/table.h"

#define TENANT "3f1c2a9e-7b4d-4c8e-9a61-5d2e8f0b7c34"
#define CLIENT "8d0e5b17-2f6a-4e39-b1c4-7a9d3e6f2051"
#define QUERY "DeviceInfo | take 1"

#define GRAPH_OK \
    "{\"schema\":[{\"name\":\"DeviceName\",\"type\":\"String\"}]," \
    "\"results\":[{\"DeviceName\":\"wks-1\"}]}"
#define GRAPH_503 \
    "{\"error\":{\"code\":\"ServiceUnavailable\",\"message\":\"busy\"}}"
#define GRAPH_401 \
    "{\"error\":{\"code\":\"InvalidAuthenticationToken\",\"message\":" \
    "\"Lifetime validation failed, the token is expired.\"}}"
#define GRAPH_403 \
    "{\"error\":{\"code\":\"Forbidden\",\"message\":\"Missing role\"}}"
#define GRAPH_SYNTAX \
    "{\"error\":{\"code\":\"BadRequest\",\"message\":\"A recognition " \
    "error occurred.\"}}"
#define GRAPH_PREEMPTED \
    "{\"error\":{\"code\":\"BadRequest\",\"message\":\"Query execution " \
    "has exceeded the allowed limits. The query execution was " \
    "preempted.\"}}"
#define GRAPH_TOO_LARGE \
    "{\"error\":{\"code\":\"BadRequest\",\"message\":\"Query execution " \
    "has exceeded the allowed result size.\"}}"
#define DEFENDER_MINUTE \
    "{\"error\":{\"code\":\"429\",\"message\":\"API calls quota " \
    "exceeded! maximum allowed 45 per 00:01:00\",\"target\":\"|t.\"}}"
#define DEFENDER_HOUR \
    "{\"error\":{\"code\":\"429\",\"message\":\"API calls quota " \
    "exceeded! maximum allowed 1500 per 01:00:00\",\"target\":\"|t.\"}}"
#define CPU_QUOTA \
    "{\"error\":{\"code\":\"429\",\"message\":\"You have exceeded " \
    "processing resources allocated to this tenant.\",\"target\":\"|t.\"}}"
#define TOKEN_OK \
    "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"tok\"}"

/* T0, 2025-03-01T00:00:00Z, in ticks. */
#define T0 (INT64_C(1740787200) * MD_TICKS_PER_SECOND)

/* One scripted outcome: a reply, or a transport failure when fail is not
 * MD_OK. */
struct step {
    long status;
    const char *body;
    long retry_after;
    const char *request_id;
    enum md_err_kind fail;
};

#define REPLY(status, body) { status, body, -1, "req", MD_OK }
#define REPLY_AFTER(status, body, after) { status, body, after, "req", MD_OK }
#define FAIL(kind) { 0, NULL, -1, "", kind }

struct script {
    const struct step *api;
    size_t napi;
    size_t api_calls;
    const struct step *token;       /* NULL: every token request succeeds */
    size_t ntoken;
    size_t token_calls;
    md_instant now;
    int64_t waits[64];
    size_t nwaits;
    double random;
    int stop_in_sleep;
};

static int play(const struct step *s, const struct md_http_request *req,
                struct md_http_response *resp, struct md_error *err)
{
    if (s->fail != MD_OK)
        return md_error_set(err, s->fail, "request to %s failed: scripted",
                            req->url);
    resp->status = s->status;
    resp->retry_after = s->retry_after;
    snprintf(resp->request_id, sizeof(resp->request_id), "%s",
             s->request_id);
    assert_int_equal(md_buf_puts(&resp->body, s->body), 0);
    return 0;
}

static int transport(const struct md_http_request *req,
                     struct md_http_response *resp, struct md_error *err,
                     void *ctx)
{
    struct script *sc = ctx;

    if (strstr(req->url, "/oauth2/") != NULL) {
        size_t i = sc->token_calls++;

        if (sc->token != NULL && i < sc->ntoken)
            return play(&sc->token[i], req, resp, err);
        resp->status = 200;
        assert_int_equal(md_buf_puts(&resp->body, TOKEN_OK), 0);
        return 0;
    }
    if (sc->api_calls >= sc->napi)
        fail_msg("API call %zu was not scripted", sc->api_calls + 1);
    assert_non_null(req->bearer);
    return play(&sc->api[sc->api_calls++], req, resp, err);
}

static md_instant fake_now(void *ctx)
{
    return ((struct script *)ctx)->now;
}

static int fake_sleep(int64_t ms, void *ctx)
{
    struct script *sc = ctx;

    assert_true(sc->nwaits < 64);
    sc->waits[sc->nwaits++] = ms;
    sc->now += ms * (MD_TICKS_PER_SECOND / 1000);
    return sc->stop_in_sleep ? -1 : 0;
}

static double fake_random(void *ctx)
{
    return ((struct script *)ctx)->random;
}

struct fixture {
    struct md_config cfg;
    struct md_backend *backend;
    struct script script;
};

static void make_config(struct md_config *cfg, enum md_backend_kind kind)
{
    assert_int_equal(md_config_init(cfg), 0);
    cfg->api.backend = kind;
    cfg->auth.tenant_id = md_strdup(TENANT);
    cfg->auth.client_id = md_strdup(CLIENT);
    cfg->auth.authority_url = md_strdup("https://login.example.test");
    cfg->api.url = md_strdup("https://api.example.test");
    assert_non_null(cfg->auth.tenant_id);
    assert_int_equal(md_secret_set(&cfg->auth.client_secret, "s3cret", 6),
                     0);
}

/* Create the backend for kind with its transport and hooks scripted. */
static struct fixture *start(enum md_backend_kind kind,
                             const struct step *api, size_t napi)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct md_backend_hooks hooks = {
        fake_now, fake_sleep, fake_random, NULL
    };
    struct md_error err;

    assert_non_null(f);
    make_config(&f->cfg, kind);
    if (md_backend_new(&f->cfg, &f->backend, &err) != 0)
        fail_msg("md_backend_new: %s", err.message);
    f->script.api = api;
    f->script.napi = napi;
    f->script.now = T0;
    f->script.random = 0.5;
    hooks.ctx = &f->script;
    md_backend_set_hooks(f->backend, &hooks);
    md_http_set_transport(md_backend_http(f->backend), transport,
                          &f->script);
    return f;
}

static void finish(struct fixture *f)
{
    md_backend_free(f->backend);
    md_config_free(&f->cfg);
    free(f);
}

static void set_policy(struct fixture *f, long max_retries,
                       int64_t max_retry_time)
{
    struct md_retry_policy p;

    md_backend_policy_from_config(&f->cfg, &p);
    p.max_retries = max_retries;
    p.max_retry_time = max_retry_time;
    md_backend_set_policy(f->backend, &p);
}

/* Run the query; returns md_backend_run's result with err filled. */
static int run(struct fixture *f, struct md_error *err)
{
    struct md_table *t = NULL;
    int rc;

    md_error_clear(err);
    rc = md_backend_run(f->backend, QUERY, strlen(QUERY), 0, 0, &t, err);
    if (rc == 0) {
        assert_non_null(t);
        assert_int_equal(t->nrows, 1);
    } else {
        assert_null(t);
    }
    md_table_free(t);
    return rc;
}

#define START(kind, steps) start(kind, steps, sizeof(steps) / sizeof(steps[0]))

/* ---- Retried failures ---- */

static void server_error_retried(void **state)
{
    static const struct step steps[] = {
        REPLY(503, GRAPH_503), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.api_calls, 2);
    assert_int_equal(f->script.nwaits, 1);
    /* Full jitter: random 0.5 of the first ceiling, 1 s. */
    assert_int_equal(f->script.waits[0], 500);
    finish(f);
}

static void backoff_doubles_per_retry(void **state)
{
    static const struct step steps[] = {
        REPLY(500, GRAPH_503), REPLY(502, GRAPH_503), REPLY(503, GRAPH_503),
        REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    f->script.random = 0.75;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 3);
    assert_int_equal(f->script.waits[0], 750);
    assert_int_equal(f->script.waits[1], 1500);
    assert_int_equal(f->script.waits[2], 3000);
    finish(f);
}

static void backoff_capped_at_a_minute(void **state)
{
    static const struct step steps[] = {
        REPLY(500, GRAPH_503), REPLY(500, GRAPH_503), REPLY(500, GRAPH_503),
        REPLY(500, GRAPH_503), REPLY(500, GRAPH_503), REPLY(500, GRAPH_503),
        REPLY(500, GRAPH_503), REPLY(500, GRAPH_503), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    set_policy(f, 10, 3600);
    f->script.random = 0.999;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 8);
    assert_true(f->script.waits[5] < 60000);
    assert_true(f->script.waits[6] > 59000);
    assert_true(f->script.waits[7] < 60000);
    finish(f);
}

static void network_failure_retried(void **state)
{
    static const struct step steps[] = {
        FAIL(MD_E_NETWORK), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.api_calls, 2);
    finish(f);
}

static void non_json_reply_retried(void **state)
{
    static const struct step steps[] = {
        REPLY(200, "<html>Service Unavailable</html>"),
        REPLY(200, "{\"schema\":[{\"name\":\"Dev"),
        REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.api_calls, 3);
    finish(f);
}

static void retry_after_seconds_honoured(void **state)
{
    static const struct step steps[] = {
        REPLY_AFTER(429, DEFENDER_MINUTE, 7), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 1);
    assert_int_equal(f->script.waits[0], 7000);
    finish(f);
}

static void huge_retry_after_capped(void **state)
{
    static const struct step steps[] = {
        REPLY_AFTER(429, DEFENDER_MINUTE, 99999999), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    set_policy(f, 4, 7200);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 1);
    /* No documented quota window is longer than an hour. */
    assert_int_equal(f->script.waits[0], 3600 * 1000);
    finish(f);
}

static void server_error_retry_after_honoured(void **state)
{
    static const struct step steps[] = {
        REPLY_AFTER(503, GRAPH_503, 12), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.waits[0], 12000);
    finish(f);
}

static void minute_quota_waits_within_window(void **state)
{
    static const char ok[] =
        "{\"Schema\":[{\"Name\":\"DeviceName\",\"Type\":\"String\"}],"
        "\"Results\":[{\"DeviceName\":\"wks-1\"}]}";
    static const struct step steps[] = {
        REPLY(429, DEFENDER_MINUTE), REPLY(200, ok)
    };
    struct fixture *f = START(MD_BACKEND_DEFENDER, steps);
    struct md_error err;

    (void)state;
    f->script.random = 0.5;
    assert_int_equal(run(f, &err), 0);
    /* Half the window plus half of the other half. */
    assert_int_equal(f->script.waits[0], 45000);
    finish(f);
}

static void hour_quota_fails_without_waiting(void **state)
{
    static const struct step steps[] = { REPLY(429, DEFENDER_HOUR) };
    struct fixture *f = START(MD_BACKEND_DEFENDER, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_THROTTLED);
    assert_int_equal(f->script.nwaits, 0);
    assert_non_null(strstr(err.message, "1500 per 01:00:00"));
    assert_non_null(strstr(err.message, "max_retry_time"));
    finish(f);
}

static void throttle_holds_later_calls(void **state)
{
    static const struct step steps[] = {
        REPLY_AFTER(429, DEFENDER_MINUTE, 20), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    f->script.stop_in_sleep = 1;
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_INTERRUPTED);
    /* The wait was cut short at its start: the next call must still wait
     * for the end of the hold. */
    f->script.stop_in_sleep = 0;
    f->script.now = T0 + 5 * MD_TICKS_PER_SECOND;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 2);
    assert_int_equal(f->script.waits[1], 15000);
    finish(f);
}

/* ---- 401 ---- */

static void unauthorized_gets_new_token(void **state)
{
    static const struct step steps[] = {
        REPLY(401, GRAPH_401), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.token_calls, 2);
    assert_int_equal(f->script.api_calls, 2);
    assert_int_equal(f->script.nwaits, 0);
    finish(f);
}

static void second_unauthorized_fails(void **state)
{
    static const struct step steps[] = {
        REPLY(401, GRAPH_401), REPLY(401, GRAPH_401), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_AUTH);
    assert_int_equal(f->script.api_calls, 2);
    assert_int_equal(f->script.token_calls, 2);
    finish(f);
}

static void token_endpoint_outage_retried(void **state)
{
    static const struct step tokens[] = {
        REPLY(503, "{\"error\":\"temporarily_unavailable\"}"),
        FAIL(MD_E_NETWORK)
    };
    static const struct step steps[] = { REPLY(200, GRAPH_OK) };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    f->script.token = tokens;
    f->script.ntoken = 2;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.token_calls, 3);
    assert_int_equal(f->script.nwaits, 2);
    finish(f);
}

static void token_rejection_not_retried(void **state)
{
    static const struct step tokens[] = {
        REPLY(401, "{\"error\":\"invalid_client\",\"error_codes\":[7000215]}")
    };
    static const struct step steps[] = { REPLY(200, GRAPH_OK) };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    f->script.token = tokens;
    f->script.ntoken = 1;
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_AUTH);
    assert_int_equal(f->script.token_calls, 1);
    assert_int_equal(f->script.api_calls, 0);
    finish(f);
}

/* ---- Failures never retried ---- */

static void final_failures_not_retried(void **state)
{
    static const struct {
        struct step step;
        enum md_err_kind kind;
    } cases[] = {
        { REPLY(400, GRAPH_SYNTAX), MD_E_QUERY_SYNTAX },
        { REPLY(400, GRAPH_PREEMPTED), MD_E_QUERY_PREEMPTED },
        { REPLY(400, GRAPH_TOO_LARGE), MD_E_QUERY_TOO_LARGE },
        { REPLY(403, GRAPH_403), MD_E_PERMISSION },
        { REPLY(404, GRAPH_403), MD_E_CONFIG },
        { REPLY(408, GRAPH_503), MD_E_QUERY_PREEMPTED },
        { REPLY(504, GRAPH_503), MD_E_QUERY_PREEMPTED },
        { REPLY(200, "{\"schema\":{},\"results\":[]}"), MD_E_SERVICE },
        { FAIL(MD_E_TLS), MD_E_TLS },
        /* A reply over max_reply_size: md_http_perform gives no status. */
        { FAIL(MD_E_SERVICE), MD_E_SERVICE },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct step steps[2] = { cases[i].step, REPLY(200, GRAPH_OK) };
        struct fixture *f = start(MD_BACKEND_GRAPH, steps, 2);
        struct md_error err;

        print_message("case %zu\n", i);
        assert_int_equal(run(f, &err), -1);
        assert_int_equal(err.kind, cases[i].kind);
        assert_int_equal(f->script.api_calls, 1);
        assert_int_equal(f->script.nwaits, 0);
        finish(f);
    }
}

/* ---- Bounds ---- */

static void zero_retries_means_none(void **state)
{
    static const struct step steps[] = {
        REPLY(401, GRAPH_401), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    set_policy(f, 0, 300);
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_AUTH);
    assert_int_equal(f->script.api_calls, 1);
    finish(f);
}

static void gives_up_after_max_retries(void **state)
{
    static const struct step steps[] = {
        REPLY(503, GRAPH_503), REPLY(503, GRAPH_503), REPLY(503, GRAPH_503),
        REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    set_policy(f, 2, 300);
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_int_equal(err.http_status, 503);
    assert_int_equal(f->script.api_calls, 3);
    assert_non_null(strstr(err.message, "gave up after 2 retries"));
    finish(f);
}

static void wait_past_max_retry_time_not_started(void **state)
{
    static const struct step steps[] = {
        REPLY_AFTER(503, GRAPH_503, 8), REPLY_AFTER(503, GRAPH_503, 8),
        REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    set_policy(f, 4, 10);
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(f->script.nwaits, 1);
    assert_int_equal(f->script.api_calls, 2);
    assert_non_null(strstr(err.message, "max_retry_time of 10 s"));
    finish(f);
}

static void stop_request_ends_wait(void **state)
{
    static const struct step steps[] = {
        REPLY(503, GRAPH_503), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    f->script.stop_in_sleep = 1;
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_INTERRUPTED);
    assert_int_equal(f->script.api_calls, 1);
    finish(f);
}

/* ---- CPU quota ---- */

static void cpu_quota_pauses_tenant(void **state)
{
    static const struct step steps[] = {
        REPLY(429, CPU_QUOTA), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;
    md_instant until = 0;

    (void)state;
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_CPU_QUOTA);
    assert_int_equal(f->script.nwaits, 0);
    assert_int_equal(md_backend_paused_until(f->backend, &until, &err), 0);
    assert_true(until == T0 + MD_BUDGET_CPU_PAUSE_SECONDS
                           * MD_TICKS_PER_SECOND);

    /* Later calls fail at once, without a request. */
    f->script.now = T0 + 60 * MD_TICKS_PER_SECOND;
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_CPU_QUOTA);
    assert_int_equal(f->script.api_calls, 1);
    assert_int_equal(err.retry_after, MD_BUDGET_CPU_PAUSE_SECONDS - 60);

    /* After the window the tenant is queried again. */
    f->script.now = T0 + 901 * MD_TICKS_PER_SECOND;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.api_calls, 2);
    finish(f);
}

static void cpu_quota_waited_when_it_fits(void **state)
{
    static const struct step steps[] = {
        REPLY_AFTER(429, CPU_QUOTA, 120), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.api_calls, 2);
    assert_int_equal(f->script.waits[0], 120000);
    finish(f);
}

/* ---- Budget ---- */

/* Create the backend again from f->cfg, as changed by the test. */
static void restart(struct fixture *f)
{
    struct md_backend_hooks hooks = {
        fake_now, fake_sleep, fake_random, &f->script
    };
    struct md_error err;

    md_backend_free(f->backend);
    if (md_backend_new(&f->cfg, &f->backend, &err) != 0)
        fail_msg("md_backend_new: %s", err.message);
    md_backend_set_hooks(f->backend, &hooks);
    md_http_set_transport(md_backend_http(f->backend), transport,
                          &f->script);
}

static void budget_paces_calls(void **state)
{
    static const struct step steps[] = {
        REPLY(200, GRAPH_OK), REPLY(200, GRAPH_OK), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    f->cfg.api.max_calls_per_minute = 2;
    restart(f);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 0);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 1);
    /* Whole seconds are counted, with one second to spare. */
    assert_int_equal(f->script.waits[0], 61000);
    finish(f);
}

static void budget_without_slot_fails(void **state)
{
    static const struct step steps[] = {
        REPLY(200, GRAPH_OK), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    struct md_error err;

    (void)state;
    f->cfg.api.max_calls_per_minute = 1;
    f->cfg.api.max_retry_time = 30;
    restart(f);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(run(f, &err), -1);
    assert_int_equal(err.kind, MD_E_THROTTLED);
    assert_non_null(strstr(err.message, "max_calls_per_minute = 1"));
    assert_int_equal(f->script.api_calls, 1);
    assert_int_equal(f->script.nwaits, 0);
    finish(f);
}

static void budget_file_used_with_store(void **state)
{
    static const struct step steps[] = {
        REPLY(200, GRAPH_OK), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    char dir[] = "/tmp/mdhunt-test-retry-XXXXXX";
    char store[64];
    char budget[80];
    struct md_error err;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(store, sizeof(store), "%s/mdhunt.db", dir);
    snprintf(budget, sizeof(budget), "%s%s", store, MD_BUDGET_SUFFIX);
    free(f->cfg.store.path);
    f->cfg.store.path = md_strdup(store);
    f->cfg.store.configured = 1;
    f->cfg.api.max_calls_per_minute = 1;
    restart(f);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(access(budget, R_OK), 0);

    /* A second backend, as in another process, sees the call. */
    restart(f);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.nwaits, 1);
    finish(f);
    unlink(budget);
    rmdir(dir);
}

/* ---- Logging ---- */

/* Run with stderr sent to a file; returns what was logged. */
static char *run_logged(struct fixture *f, int *rc)
{
    static char text[8192];
    char path[] = "/tmp/mdhunt-test-retry-XXXXXX";
    int fd = mkstemp(path);
    int saved = dup(STDERR_FILENO);
    struct md_error err;
    ssize_t n;

    assert_true(fd >= 0);
    assert_true(saved >= 0);
    fflush(stderr);
    dup2(fd, STDERR_FILENO);
    *rc = run(f, &err);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    n = pread(fd, text, sizeof(text) - 1, 0);
    close(fd);
    unlink(path);
    assert_true(n >= 0);
    text[n] = '\0';
    return text;
}

static void retry_logged_on_one_line(void **state)
{
    static const struct step steps[] = {
        { 503, GRAPH_503, -1, "req-4711", MD_OK }, REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    const char *log;
    const char *line;
    int rc;

    (void)state;
    log = run_logged(f, &rc);
    assert_int_equal(rc, 0);
    line = strstr(log, "retry 1 of 4");
    assert_non_null(line);
    assert_non_null(strstr(line, "in 0.5 s"));
    assert_non_null(strstr(line, "HTTP 503"));
    assert_non_null(strstr(line, "request id req-4711"));
    assert_null(strstr(line + 1, "retry "));
    finish(f);
}

static void quota_named_in_retry_line(void **state)
{
    static const struct step steps[] = {
        REPLY_AFTER(429, DEFENDER_MINUTE, 1), REPLY(200, GRAPH_OK)
    };
    struct fixture *f = START(MD_BACKEND_GRAPH, steps);
    const char *log;
    int rc;

    (void)state;
    log = run_logged(f, &rc);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(log, "retry 1 of 4"));
    assert_non_null(strstr(log, "45 per 00:01:00"));
    finish(f);
}

/* ---- Tokens ---- */

static void token_renewed_before_request(void **state)
{
    static const struct step steps[] = {
        REPLY(200, GRAPH_OK), REPLY(200, GRAPH_OK), REPLY(200, GRAPH_OK)
    };
    struct fixture *f;
    struct md_error err;

    (void)state;
#ifndef MDHUNT_TEST_CLOCK
    skip();
#endif
    setenv("MDHUNT_TEST_NOW", "1740787200", 1);
    f = START(MD_BACKEND_GRAPH, steps);
    assert_int_equal(run(f, &err), 0);
    setenv("MDHUNT_TEST_NOW", "1740789000", 1);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.token_calls, 1);
    /* Less than 10% of the token's 3599 s are left: renewed first. */
    setenv("MDHUNT_TEST_NOW", "1740790500", 1);
    assert_int_equal(run(f, &err), 0);
    assert_int_equal(f->script.token_calls, 2);
    unsetenv("MDHUNT_TEST_NOW");
    finish(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(server_error_retried),
        cmocka_unit_test(backoff_doubles_per_retry),
        cmocka_unit_test(backoff_capped_at_a_minute),
        cmocka_unit_test(network_failure_retried),
        cmocka_unit_test(non_json_reply_retried),
        cmocka_unit_test(retry_after_seconds_honoured),
        cmocka_unit_test(server_error_retry_after_honoured),
        cmocka_unit_test(huge_retry_after_capped),
        cmocka_unit_test(minute_quota_waits_within_window),
        cmocka_unit_test(hour_quota_fails_without_waiting),
        cmocka_unit_test(throttle_holds_later_calls),
        cmocka_unit_test(unauthorized_gets_new_token),
        cmocka_unit_test(second_unauthorized_fails),
        cmocka_unit_test(token_endpoint_outage_retried),
        cmocka_unit_test(token_rejection_not_retried),
        cmocka_unit_test(final_failures_not_retried),
        cmocka_unit_test(zero_retries_means_none),
        cmocka_unit_test(gives_up_after_max_retries),
        cmocka_unit_test(wait_past_max_retry_time_not_started),
        cmocka_unit_test(stop_request_ends_wait),
        cmocka_unit_test(cpu_quota_pauses_tenant),
        cmocka_unit_test(cpu_quota_waited_when_it_fits),
        cmocka_unit_test(budget_paces_calls),
        cmocka_unit_test(budget_without_slot_fails),
        cmocka_unit_test(budget_file_used_with_store),
        cmocka_unit_test(retry_logged_on_one_line),
        cmocka_unit_test(quota_named_in_retry_line),
        cmocka_unit_test(token_renewed_before_request),
    };

    md_log_set_level(MD_LOG_INFO);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
