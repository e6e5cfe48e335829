/* Tests for the hunting backends: request bodies, reply parsing and the
 * mapping of API errors, on fixture bodies. */
#include "testutil.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/backend.h"
#include "mdhunt/http.h"
#include "mdhunt/table.h"

#define REPLIES MD_TEST_DATA "/replies/"

static char *read_fixture(const char *name, size_t *len)
{
    char path[512];
    FILE *f;
    char *data;
    long size;

    snprintf(path, sizeof(path), "%s%s", REPLIES, name);
    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    size = ftell(f);
    assert_true(size >= 0);
    rewind(f);
    data = malloc((size_t)size + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)size, f), (size_t)size);
    data[size] = '\0';
    fclose(f);
    *len = (size_t)size;
    return data;
}

typedef int (*parse_fn)(const char *, size_t, struct md_table **,
                        struct md_error *);

static struct md_table *parse_ok(parse_fn parse, const char *file)
{
    struct md_table *t = NULL;
    struct md_error err;
    size_t len;
    char *body = read_fixture(file, &len);

    md_error_clear(&err);
    if (parse(body, len, &t, &err) != 0)
        fail_msg("%s: %s", file, err.message);
    free(body);
    return t;
}

/* Parse a fixture that must fail; returns the error. */
static struct md_error parse_fails(parse_fn parse, const char *file)
{
    struct md_table *t = (struct md_table *)1;
    struct md_error err;
    size_t len;
    char *body = read_fixture(file, &len);

    md_error_clear(&err);
    assert_int_equal(parse(body, len, &t, &err), -1);
    assert_null(t);
    free(body);
    return err;
}

static void assert_cell_text(const struct md_table *t, size_t row,
                             size_t col, const char *text, size_t len)
{
    const struct md_cell *cell = md_table_cell(t, row, col);

    assert_int_equal(cell->len, len);
    assert_memory_equal(cell->text, text, len);
}

static void graph_reply_columns(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_graph, "graph_ok.json");

    (void)state;
    assert_int_equal(t->ncolumns, 6);
    assert_string_equal(t->columns[0].name, "Timestamp");
    assert_int_equal(t->columns[0].type, MD_T_DATETIME);
    assert_int_equal(t->columns[1].type, MD_T_STRING);
    assert_int_equal(t->columns[2].type, MD_T_INT);
    assert_int_equal(t->columns[3].type, MD_T_BOOL);
    assert_int_equal(t->columns[4].type, MD_T_REAL);
    assert_int_equal(t->columns[5].type, MD_T_DYNAMIC);
    assert_string_equal(t->columns[5].service_type, "Dynamic");
    assert_int_equal(t->nrows, 3);
    assert_false(t->truncated);
    md_table_free(t);
}

static void graph_reply_typed_cells(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_graph, "graph_ok.json");
    const char *stamp = "2025-03-01T12:00:00.1234567Z";
    md_instant expected;

    (void)state;
    assert_int_equal(md_time_parse(stamp, strlen(stamp), &expected), 0);
    assert_int_equal(md_table_cell(t, 0, 0)->v.t, expected);
    assert_cell_text(t, 0, 0, stamp, strlen(stamp));
    assert_int_equal(md_table_cell(t, 0, 2)->v.i, 4711);
    assert_int_equal(md_table_cell(t, 0, 3)->v.b, 1);
    assert_int_equal(md_table_cell(t, 1, 3)->v.b, 0);
    assert_true(md_table_cell(t, 0, 4)->v.r == 0.5);
    assert_true(md_table_cell(t, 1, 4)->v.r == 1000.0);
    md_table_free(t);
}

static void graph_reply_nested_dynamic(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_graph, "graph_ok.json");
    const char *want =
        "{\"Tags\":[\"a\",\"b\"],\"Nested\":{\"Level\":2,\"Empty\":null}}";

    (void)state;
    assert_int_equal(md_table_cell(t, 0, 5)->kind, MD_J_OBJECT);
    assert_cell_text(t, 0, 5, want, strlen(want));
    md_table_free(t);
}

static void graph_reply_nul_in_value(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_graph, "graph_ok.json");

    (void)state;
    assert_cell_text(t, 1, 1, "host2\0evil", 10);
    md_table_free(t);
}

static void graph_reply_lone_surrogates(void **state)
{
    static const char body[] =
        "{\"schema\":[{\"name\":\"N\",\"type\":\"String\"}],"
        "\"results\":[{\"N\":\"a\\ud800b\"},{\"N\":\"\\udc00\"},"
        "{\"N\":\"\\ud83d\\ude00\"},{\"N\":\"x\\\\ud800\"}]}";
    struct md_table *t = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_parse_graph(body, sizeof(body) - 1, &t,
                                            &err), 0);
    assert_int_equal(t->nrows, 4);
    /* Unpaired halves become U+FFFD; a pair and an escaped backslash
     * followed by "ud800" stay as they are. */
    assert_cell_text(t, 0, 0, "a\xef\xbf\xbd" "b", 5);
    assert_cell_text(t, 1, 0, "\xef\xbf\xbd", 3);
    assert_cell_text(t, 2, 0, "\xf0\x9f\x98\x80", 4);
    assert_cell_text(t, 3, 0, "x\\ud800", 7);
    md_table_free(t);
}

static void graph_reply_nulls_and_gaps(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_graph, "graph_ok.json");

    (void)state;
    assert_int_equal(md_table_cell(t, 1, 2)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 1, 5)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 2, 0)->kind, MD_J_NULL);
    /* Row 3 has no ReportId, IsSigned, Score or AdditionalFields key. */
    for (size_t col = 2; col < 6; col++)
        assert_int_equal(md_table_cell(t, 2, col)->kind, MD_J_NULL);
    assert_cell_text(t, 2, 1, "h\xc3\xb4st3.contoso.com", 18);
    md_table_free(t);
}

static void graph_reply_upper_case_keys(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_graph,
                                  "graph_upper_keys.json");

    (void)state;
    assert_int_equal(t->ncolumns, 2);
    assert_string_equal(t->columns[1].name, "DeviceName");
    assert_int_equal(t->columns[0].type, MD_T_DATETIME);
    assert_int_equal(t->nrows, 1);
    assert_cell_text(t, 0, 1, "host1.contoso.com", 17);
    md_table_free(t);
}

static void defender_reply_parses(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_defender,
                                  "defender_ok.json");
    const char *users = "[{\"UserName\":\"alice\",\"DomainName\":\"CONTOSO\"}]";

    (void)state;
    assert_int_equal(t->ncolumns, 7);
    assert_int_equal(t->nrows, 2);
    assert_string_equal(t->columns[2].name, "DeviceName");
    assert_int_equal(t->columns[3].type, MD_T_INT);
    assert_int_equal(md_table_cell(t, 0, 3)->v.i, 19045);
    assert_int_equal(md_table_cell(t, 0, 4)->v.b, 0);
    assert_true(md_table_cell(t, 0, 5)->v.r == 2.25);
    assert_int_equal(md_table_cell(t, 0, 6)->kind, MD_J_ARRAY);
    assert_cell_text(t, 0, 6, users, strlen(users));
    assert_int_equal(md_table_cell(t, 1, 2)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 1, 6)->kind, MD_J_ARRAY);
    md_table_free(t);
}

static void defender_reply_seventh_digit(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_defender,
                                  "defender_ok.json");
    md_instant first = md_table_cell(t, 0, 0)->v.t;
    md_instant second = md_table_cell(t, 1, 0)->v.t;
    const char *base = "2020-08-30T06:40:00Z";
    md_instant whole;

    (void)state;
    assert_int_equal(md_time_parse(base, strlen(base), &whole), 0);
    assert_int_equal(second - whole, 1);
    assert_int_equal(first % MD_TICKS_PER_SECOND, 7664356);
    md_table_free(t);
}

static void defender_reply_lower_case_keys(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_defender,
                                  "defender_lower_keys.json");

    (void)state;
    assert_int_equal(t->ncolumns, 2);
    assert_int_equal(t->nrows, 1);
    assert_cell_text(t, 0, 1, "ws-001.contoso.com", 18);
    md_table_free(t);
}

static void unknown_row_key_ignored(void **state)
{
    struct md_table *t = parse_ok(md_backend_parse_graph,
                                  "graph_unknown_key.json");

    (void)state;
    assert_int_equal(t->ncolumns, 2);
    assert_int_equal(t->nrows, 2);
    assert_int_equal(md_table_cell(t, 0, 1)->v.i, 7);
    assert_int_equal(md_table_cell(t, 1, 0)->kind, MD_J_NULL);
    md_table_free(t);
}

static void invalid_replies_rejected(void **state)
{
    static const struct {
        const char *file;
        const char *words;
    } cases[] = {
        { "graph_missing_schema.json", "\"schema\" is missing" },
        { "graph_schema_not_array.json", "\"schema\" is not an array" },
        { "graph_missing_results.json", "\"results\" is missing" },
        { "graph_row_not_object.json", "row 2 is not a JSON object" },
        { "graph_entry_without_name.json", "schema entry 2 has no column" },
        { "graph_type_mismatch.json", "Timestamp" },
        { "graph_duplicate_columns.json", "DeviceName" },
        { "graph_truncated.json", "not JSON or cut off" },
        { "not_json.html", "not JSON or cut off" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error err;

        print_message("case %s\n", cases[i].file);
        err = parse_fails(md_backend_parse_graph, cases[i].file);
        assert_int_equal(err.kind, MD_E_SERVICE);
        assert_non_null(strstr(err.message, "invalid reply from Graph"));
        assert_non_null(strstr(err.message, cases[i].words));
    }
}

static void defender_errors_name_defender(void **state)
{
    struct md_error err = parse_fails(md_backend_parse_defender,
                                      "graph_missing_results.json");

    (void)state;
    assert_non_null(strstr(err.message, "invalid reply from Defender"));
    assert_non_null(strstr(err.message, "\"Results\" is missing"));
}

static void schema_entry_nul_rejected(void **state)
{
    static const char body[] =
        "{\"schema\":[{\"name\":\"Dev\\u0000ice\",\"type\":\"String\"}],"
        "\"results\":[]}";
    struct md_table *t = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_parse_graph(body, sizeof(body) - 1, &t,
                                            &err), -1);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "NUL"));
}

/* A Defender reply with nrows rows of one string column. */
static char *make_rows(size_t nrows, size_t *len)
{
    static const char head[] =
        "{\"Schema\":[{\"Name\":\"DeviceName\",\"Type\":\"String\"}],"
        "\"Results\":[";
    static const char row[] = "{\"DeviceName\":\"host\"}";
    size_t size = sizeof(head) + nrows * sizeof(row) + 4;
    char *body = malloc(size);
    char *p = body;

    assert_non_null(body);
    memcpy(p, head, sizeof(head) - 1);
    p += sizeof(head) - 1;
    for (size_t i = 0; i < nrows; i++) {
        if (i > 0)
            *p++ = ',';
        memcpy(p, row, sizeof(row) - 1);
        p += sizeof(row) - 1;
    }
    memcpy(p, "]}", 2);
    p += 2;
    *len = (size_t)(p - body);
    return body;
}

static void row_limit_sets_truncated(void **state)
{
    struct md_table *t = NULL;
    struct md_error err;
    size_t len;
    char *body = make_rows(MD_SERVICE_ROW_LIMIT, &len);

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_parse_defender(body, len, &t, &err), 0);
    assert_int_equal(t->nrows, MD_SERVICE_ROW_LIMIT);
    assert_true(t->truncated);
    md_table_free(t);
    free(body);
}

static void below_row_limit_not_truncated(void **state)
{
    struct md_table *t = NULL;
    struct md_error err;
    size_t len;
    char *body = make_rows(MD_SERVICE_ROW_LIMIT - 1, &len);

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_parse_defender(body, len, &t, &err), 0);
    assert_false(t->truncated);
    md_table_free(t);
    free(body);
}

/* Build a body and read back the Query string it carries. */
static void check_round_trip(enum md_backend_kind kind, const char *query,
                             size_t len)
{
    struct md_error err;
    json_error_t jerr;
    char *body = NULL;
    size_t body_len = 0;
    json_t *root;
    json_t *sent;

    md_error_clear(&err);
    assert_int_equal(md_backend_build_body(kind, query, len, 0, &body,
                                           &body_len, &err), 0);
    assert_int_equal(body_len, strlen(body));
    /* One line: CR and LF travel escaped. */
    assert_null(memchr(body, '\n', body_len));
    assert_null(memchr(body, '\r', body_len));
    root = json_loadb(body, body_len, JSON_ALLOW_NUL, &jerr);
    assert_non_null(root);
    sent = json_object_get(root, "Query");
    assert_true(json_is_string(sent));
    assert_int_equal(json_string_length(sent), len);
    assert_memory_equal(json_string_value(sent), query, len);
    json_decref(root);
    free(body);
}

static void body_round_trips_query_bytes(void **state)
{
    static const char query[] =
        "DeviceInfo\r\n| where DeviceName has \"x\\\\y\"\t// caf\xc3\xa9 "
        "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x94\x8d\n| take 10 // \x01 end";

    (void)state;
    check_round_trip(MD_BACKEND_GRAPH, query, sizeof(query) - 1);
    check_round_trip(MD_BACKEND_DEFENDER, query, sizeof(query) - 1);
}

static void body_keeps_utf8_unescaped(void **state)
{
    static const char query[] = "T | where N == \"caf\xc3\xa9\"";
    struct md_error err;
    char *body = NULL;
    size_t len = 0;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_build_body(MD_BACKEND_DEFENDER, query,
                                           sizeof(query) - 1, 0, &body,
                                           &len, &err), 0);
    assert_string_equal(body,
                        "{\"Query\":\"T | where N == \\\"caf\xc3\xa9\\\"\"}");
    free(body);
}

static void graph_body_has_timespan(void **state)
{
    struct md_error err;
    char *body = NULL;
    size_t len = 0;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_build_body(MD_BACKEND_GRAPH, "T", 1,
                                           5 * 86400, &body, &len, &err),
                     0);
    assert_string_equal(body, "{\"Query\":\"T\",\"Timespan\":\"P5D\"}");
    free(body);
}

static void graph_body_without_period(void **state)
{
    struct md_error err;
    char *body = NULL;
    size_t len = 0;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_build_body(MD_BACKEND_GRAPH, "T", 1, 0,
                                           &body, &len, &err), 0);
    assert_string_equal(body, "{\"Query\":\"T\"}");
    free(body);
}

static void defender_body_ignores_period(void **state)
{
    struct md_error err;
    char *body = NULL;
    size_t len = 0;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_backend_build_body(MD_BACKEND_DEFENDER, "T", 1,
                                           3600, &body, &len, &err), 0);
    assert_string_equal(body, "{\"Query\":\"T\"}");
    free(body);
}

static void invalid_utf8_query_rejected(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
        size_t bad;     /* 1-based byte reported */
    } cases[] = {
        { "ab\xff", 3, 3 },
        { "a\xc0\x80", 3, 2 },              /* overlong NUL */
        { "\xe0\x80\xaf", 3, 1 },           /* overlong slash */
        { "x\xed\xa0\x80", 4, 2 },          /* UTF-16 surrogate */
        { "\xf4\x90\x80\x80", 4, 1 },       /* above U+10FFFF */
        { "ok\xe2\x82", 4, 3 },             /* cut-off sequence */
        { "\x80", 1, 1 },                   /* lone continuation */
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error err;
        char want[32];
        char *body = (char *)1;
        size_t len = 0;

        md_error_clear(&err);
        print_message("case %zu\n", i);
        assert_int_equal(md_backend_build_body(MD_BACKEND_GRAPH,
                                               cases[i].bytes, cases[i].len,
                                               0, &body, &len, &err), -1);
        assert_int_equal(err.kind, MD_E_RULE);
        assert_null(body);
        snprintf(want, sizeof(want), "byte %zu of", cases[i].bad);
        assert_non_null(strstr(err.message, want));
    }
}

struct error_case {
    enum md_backend_kind backend;
    long status;
    const char *file;
    long retry_after;
    enum md_err_kind kind;
    const char *service_code;
    const char *request_id;
    const char *words;
};

static const struct error_case error_cases[] = {
    { MD_BACKEND_GRAPH, 400, "graph_400_syntax.json", -1,
      MD_E_QUERY_SYNTAX, "BadRequest",
      "5e0c6f1a-0b8e-4f43-9d1c-1f2e3d4c5b6a",
      "the service rejected the query (HTTP 400, BadRequest): "
      "\"'project' operator" },
    { MD_BACKEND_DEFENDER, 400, "defender_400_result_size.json", -1,
      MD_E_QUERY_TOO_LARGE, "BadRequest", "|8b7d5947-428b0a9cb9bb1601.",
      "summarize" },
    { MD_BACKEND_DEFENDER, 400, "defender_400_preempted.json", -1,
      MD_E_QUERY_PREEMPTED, "BadRequest", "|8b7d5947-428b0a9cb9bb1602.",
      "preempted" },
    { MD_BACKEND_GRAPH, 400, "graph_400_timeout.json", -1,
      MD_E_QUERY_PREEMPTED, "BadRequest",
      "0b1c2d3e-0000-4000-8000-000000000003", "timeout period" },
    { MD_BACKEND_GRAPH, 400, "graph_400_resources.json", -1,
      MD_E_QUERY_PREEMPTED, "BadRequest",
      "0b1c2d3e-0000-4000-8000-000000000004", "excessive resource" },
    { MD_BACKEND_DEFENDER, 400, "defender_400_invalid_body.json", -1,
      MD_E_INTERNAL, "InvalidRequestBody", "|8b7d5947-428b0a9cb9bb1600.",
      "could not read mdhunt's request" },
    { MD_BACKEND_DEFENDER, 400, "defender_400_missing_parameter.json", -1,
      MD_E_INTERNAL, "MissingRequiredParameter",
      "|8b7d5947-428b0a9cb9bb1603.", "could not read mdhunt's request" },
    { MD_BACKEND_DEFENDER, 401, "defender_401.json", -1,
      MD_E_AUTH, "Unauthorized", "|8b7d5947-428b0a9cb9bb1604.",
      "rejected the access token" },
    { MD_BACKEND_DEFENDER, 403, "defender_403.json", -1,
      MD_E_PERMISSION, "Forbidden", "|8b7d5947-428b0a9cb9bb1605.",
      "AdvancedHunting.Read.All application permission" },
    { MD_BACKEND_GRAPH, 403, "graph_403.json", -1,
      MD_E_PERMISSION, "Forbidden", "0b1c2d3e-0000-4000-8000-000000000006",
      "ThreatHunting.Read.All application permission" },
    { MD_BACKEND_GRAPH, 404, "graph_404.json", -1,
      MD_E_CONFIG, "NotFound", "0b1c2d3e-0000-4000-8000-000000000007",
      "[api] url" },
    { MD_BACKEND_DEFENDER, 429, "defender_429_minute.json", 42,
      MD_E_THROTTLED, "429", "|8b7d5947-428b0a9cb9bb1608.",
      "45 per 00:01:00" },
    { MD_BACKEND_DEFENDER, 429, "defender_429_hour.json", 3600,
      MD_E_THROTTLED, "429", "|8b7d5947-428b0a9cb9bb1609.",
      "1500 per 01:00:00" },
    { MD_BACKEND_DEFENDER, 429, "defender_429_cpu.json", -1,
      MD_E_CPU_QUOTA, "TooManyRequests", "|8b7d5947-428b0a9cb9bb1610.",
      "CPU quota" },
    { MD_BACKEND_GRAPH, 429, "graph_429.json", 5,
      MD_E_THROTTLED, "TooManyRequests",
      "0b1c2d3e-0000-4000-8000-000000000011", "Retry-After: 5 s" },
    { MD_BACKEND_GRAPH, 500, "graph_500.json", -1,
      MD_E_SERVICE, "UnknownError", "0b1c2d3e-0000-4000-8000-000000000012",
      "HTTP 500, UnknownError" },
    { MD_BACKEND_DEFENDER, 500, "defender_500.json", -1,
      MD_E_SERVICE, "InternalServerError", "|8b7d5947-428b0a9cb9bb1613.",
      "try again later" },
    { MD_BACKEND_GRAPH, 504, "not_json.html", -1,
      MD_E_QUERY_PREEMPTED, "", "", "HTTP 504" },
    { MD_BACKEND_DEFENDER, 408, "not_json.html", -1,
      MD_E_QUERY_PREEMPTED, "", "", "HTTP 408" },
    { MD_BACKEND_GRAPH, 502, "not_json.html", -1,
      MD_E_SERVICE, "", "", "<title>502 Bad Gateway</title>" },
    { MD_BACKEND_DEFENDER, 409, "defender_500.json", -1,
      MD_E_SERVICE, "InternalServerError", "|8b7d5947-428b0a9cb9bb1613.",
      "HTTP 409" },
};

static void map_case(const struct error_case *c, struct md_error *err)
{
    struct md_http_response resp;
    size_t len;
    char *body = read_fixture(c->file, &len);

    md_http_response_init(&resp);
    assert_int_equal(md_buf_append(&resp.body, body, len), 0);
    resp.status = c->status;
    resp.retry_after = c->retry_after;
    md_error_clear(err);
    assert_int_equal(md_backend_map_error(c->backend, &resp, err), -1);
    md_http_response_free(&resp);
    free(body);
}

static void api_errors_mapped(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(error_cases) / sizeof(error_cases[0]);
         i++) {
        const struct error_case *c = &error_cases[i];
        struct md_error err;

        print_message("case %s (HTTP %ld)\n", c->file, c->status);
        map_case(c, &err);
        assert_int_equal(err.kind, c->kind);
        assert_int_equal(err.http_status, c->status);
        assert_string_equal(err.service_code, c->service_code);
        assert_string_equal(err.request_id, c->request_id);
        assert_int_equal(err.retry_after, c->retry_after);
        if (strstr(err.message, c->words) == NULL)
            fail_msg("message \"%s\" lacks \"%s\"", err.message, c->words);
    }
}

static void error_message_has_no_newline(void **state)
{
    struct md_error err;

    static const struct error_case html = {
        MD_BACKEND_GRAPH, 502, "not_json.html", -1, MD_E_SERVICE, "", "", ""
    };

    (void)state;
    map_case(&html, &err);
    assert_null(strchr(err.message, '\n'));
    assert_null(strchr(err.message, '\r'));
}

static void graph_header_request_id_wins(void **state)
{
    struct md_http_response resp;
    struct md_error err;
    size_t len;
    char *body = read_fixture("graph_400_syntax.json", &len);

    (void)state;
    md_http_response_init(&resp);
    assert_int_equal(md_buf_append(&resp.body, body, len), 0);
    resp.status = 400;
    strcpy(resp.request_id, "from-header");
    strcpy(resp.ms_request_id, "ms-id");
    md_error_clear(&err);
    md_backend_map_error(MD_BACKEND_GRAPH, &resp, &err);
    assert_string_equal(err.request_id, "from-header");
    md_http_response_free(&resp);
    free(body);
}

static void ms_request_id_is_fallback(void **state)
{
    struct md_http_response resp;
    struct md_error err;
    size_t len;
    char *body = read_fixture("not_json.html", &len);

    (void)state;
    md_http_response_init(&resp);
    assert_int_equal(md_buf_append(&resp.body, body, len), 0);
    resp.status = 503;
    strcpy(resp.ms_request_id, "ms-id");
    md_error_clear(&err);
    md_backend_map_error(MD_BACKEND_DEFENDER, &resp, &err);
    assert_string_equal(err.request_id, "ms-id");
    assert_int_equal(err.kind, MD_E_SERVICE);
    md_http_response_free(&resp);
    free(body);
}

static void sentinel_needs_workspace(void **state)
{
    struct md_config cfg;
    struct md_backend *b = (struct md_backend *)1;
    struct md_error err;

    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.api.backend = MD_BACKEND_SENTINEL;
    md_error_clear(&err);
    assert_int_equal(md_backend_new(&cfg, &b, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "[api] workspace_id is missing"));
    assert_null(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(graph_reply_columns),
        cmocka_unit_test(graph_reply_typed_cells),
        cmocka_unit_test(graph_reply_nested_dynamic),
        cmocka_unit_test(graph_reply_nul_in_value),
        cmocka_unit_test(graph_reply_lone_surrogates),
        cmocka_unit_test(graph_reply_nulls_and_gaps),
        cmocka_unit_test(graph_reply_upper_case_keys),
        cmocka_unit_test(defender_reply_parses),
        cmocka_unit_test(defender_reply_seventh_digit),
        cmocka_unit_test(defender_reply_lower_case_keys),
        cmocka_unit_test(unknown_row_key_ignored),
        cmocka_unit_test(invalid_replies_rejected),
        cmocka_unit_test(defender_errors_name_defender),
        cmocka_unit_test(schema_entry_nul_rejected),
        cmocka_unit_test(row_limit_sets_truncated),
        cmocka_unit_test(below_row_limit_not_truncated),
        cmocka_unit_test(body_round_trips_query_bytes),
        cmocka_unit_test(body_keeps_utf8_unescaped),
        cmocka_unit_test(graph_body_has_timespan),
        cmocka_unit_test(graph_body_without_period),
        cmocka_unit_test(defender_body_ignores_period),
        cmocka_unit_test(invalid_utf8_query_rejected),
        cmocka_unit_test(api_errors_mapped),
        cmocka_unit_test(error_message_has_no_newline),
        cmocka_unit_test(graph_header_request_id_wins),
        cmocka_unit_test(ms_request_id_is_fallback),
        cmocka_unit_test(sentinel_needs_workspace),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
