/* Tests for the Log Analytics query API of the sentinel backend: URL,
 * request body, Prefer header, reply parsing and error mapping, on
 * fixture bodies. */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/backend_la.h"
#include "mdhunt/http.h"
#include "mdhunt/table.h"

#define REPLIES MD_TEST_DATA "/replies/"
#define WORKSPACE "7c2e4b1a-9d3f-4e6a-8b5c-1f0e2d3c4b5a"

/* Column indexes of la_ok.json's PrimaryResult table. */
enum {
    COL_TIME, COL_NAME, COL_REPORT, COL_BUILD, COL_SIGNED, COL_SCORE,
    COL_ELAPSED, COL_GUID, COL_FIELDS, COL_TAGS, COL_NOTE, COL_COUNT
};

static char *read_fixture(const char *name, size_t *len)
{
    char path[512];
    FILE *f;
    char *data;
    long size;

    snprintf(path, sizeof(path), "%s%s", REPLIES, name);
    f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
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

/* Parse a fixture that must parse; *partial (when wanted) receives the
 * partial-error description. */
static struct md_table *parse_ok(const char *file, char **partial)
{
    struct md_table *t = NULL;
    struct md_error err;
    size_t len;
    char *body = read_fixture(file, &len);

    md_error_clear(&err);
    if (md_la_parse_reply(body, len, &t, partial, &err) != 0)
        fail_msg("%s: %s", file, err.message);
    free(body);
    return t;
}

static struct md_error parse_fails(const char *body, size_t len)
{
    struct md_table *t = (struct md_table *)1;
    char *partial = (char *)1;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_la_parse_reply(body, len, &t, &partial, &err), -1);
    assert_null(t);
    assert_null(partial);
    return err;
}

static void assert_cell_text(const struct md_table *t, size_t row,
                             size_t col, const char *text)
{
    const struct md_cell *cell = md_table_cell(t, row, col);

    assert_int_equal(cell->len, strlen(text));
    assert_memory_equal(cell->text, text, cell->len);
}

static void reply_column_types(void **state)
{
    static const enum md_type want[COL_COUNT] = {
        MD_T_DATETIME, MD_T_STRING, MD_T_INT, MD_T_INT, MD_T_BOOL,
        MD_T_REAL, MD_T_TIMESPAN, MD_T_GUID, MD_T_DYNAMIC, MD_T_DYNAMIC,
        MD_T_DYNAMIC
    };
    struct md_table *t = parse_ok("la_ok.json", NULL);

    (void)state;
    assert_int_equal(t->ncolumns, COL_COUNT);
    for (size_t c = 0; c < COL_COUNT; c++) {
        print_message("column %zu %s\n", c, t->columns[c].name);
        assert_int_equal(t->columns[c].type, want[c]);
    }
    assert_string_equal(t->columns[COL_TIME].name, "TimeGenerated");
    assert_string_equal(t->columns[COL_TIME].service_type, "datetime");
    assert_string_equal(t->columns[COL_REPORT].service_type, "long");
    assert_int_equal(t->nrows, 3);
    assert_false(t->truncated);
    md_table_free(t);
}

static void reply_uses_primary_result(void **state)
{
    struct md_table *t = parse_ok("la_ok.json", NULL);

    (void)state;
    assert_int_equal(md_table_column_index(t, "Ignored"), -1);
    assert_cell_text(t, 0, COL_NAME, "host1.contoso.com");
    md_table_free(t);
}

static void reply_typed_cells(void **state)
{
    struct md_table *t = parse_ok("la_ok.json", NULL);
    const char *stamp = "2025-03-01T12:00:00.1234567Z";
    md_instant expected;

    (void)state;
    assert_int_equal(md_time_parse(stamp, strlen(stamp), &expected), 0);
    assert_int_equal(md_table_cell(t, 0, COL_TIME)->v.t, expected);
    assert_cell_text(t, 0, COL_TIME, stamp);
    assert_int_equal(md_table_cell(t, 0, COL_REPORT)->v.i, 4711);
    assert_int_equal(md_table_cell(t, 0, COL_BUILD)->v.i, 19045);
    assert_int_equal(md_table_cell(t, 1, COL_BUILD)->v.i, -1);
    assert_int_equal(md_table_cell(t, 0, COL_SIGNED)->v.b, 1);
    assert_int_equal(md_table_cell(t, 1, COL_SIGNED)->v.b, 0);
    assert_true(md_table_cell(t, 0, COL_SCORE)->v.r == 0.5);
    assert_true(md_table_cell(t, 1, COL_SCORE)->v.r == 1000.0);
    assert_true(isnan(md_table_cell(t, 2, COL_SCORE)->v.r));
    assert_int_equal(md_table_cell(t, 0, COL_ELAPSED)->v.i,
                     INT64_C(37235000000));
    assert_int_equal(md_table_cell(t, 1, COL_ELAPSED)->v.i,
                     -INT64_C(864000000000));
    assert_cell_text(t, 0, COL_GUID, "6f1d2c3b-4a59-4e68-8d7c-0b1a2f3e4d5c");
    md_table_free(t);
}

static void reply_long_from_text_exact(void **state)
{
    struct md_table *t = parse_ok("la_ok.json", NULL);

    (void)state;
    assert_int_equal(md_table_cell(t, 2, COL_REPORT)->v.i,
                     INT64_C(9007199254740993));
    md_table_free(t);
}

static void reply_dynamic_json_text(void **state)
{
    struct md_table *t = parse_ok("la_ok.json", NULL);
    const char *fields =
        "{\"Tags\":[\"a\",\"b\"],\"Nested\":{\"Level\":2,\"Empty\":null}}";

    (void)state;
    assert_int_equal(md_table_cell(t, 0, COL_FIELDS)->kind, MD_J_OBJECT);
    assert_cell_text(t, 0, COL_FIELDS, fields);
    assert_int_equal(md_table_cell(t, 0, COL_TAGS)->kind, MD_J_ARRAY);
    assert_cell_text(t, 0, COL_TAGS, "[1000,2000]");
    assert_int_equal(md_table_cell(t, 1, COL_TAGS)->kind, MD_J_ARRAY);
    assert_cell_text(t, 1, COL_TAGS, "[\"spaced\"]");
    assert_int_equal(md_table_cell(t, 2, COL_TAGS)->kind, MD_J_ARRAY);
    assert_cell_text(t, 2, COL_TAGS, "[]");
    md_table_free(t);
}

static void reply_dynamic_other_text_stays(void **state)
{
    struct md_table *t = parse_ok("la_ok.json", NULL);

    (void)state;
    assert_int_equal(md_table_cell(t, 0, COL_NOTE)->kind, MD_J_STRING);
    assert_cell_text(t, 0, COL_NOTE, "plain text");
    assert_int_equal(md_table_cell(t, 1, COL_NOTE)->kind, MD_J_STRING);
    assert_cell_text(t, 1, COL_NOTE, "{not json");
    assert_int_equal(md_table_cell(t, 2, COL_NOTE)->kind, MD_J_STRING);
    assert_cell_text(t, 2, COL_NOTE, "42");
    assert_int_equal(md_table_cell(t, 2, COL_FIELDS)->kind, MD_J_STRING);
    assert_cell_text(t, 2, COL_FIELDS, "");
    md_table_free(t);
}

static void reply_nulls(void **state)
{
    struct md_table *t = parse_ok("la_ok.json", NULL);

    (void)state;
    assert_int_equal(md_table_cell(t, 1, COL_REPORT)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 1, COL_GUID)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 1, COL_FIELDS)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 2, COL_TIME)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 2, COL_SIGNED)->kind, MD_J_NULL);
    assert_int_equal(md_table_cell(t, 2, COL_ELAPSED)->kind, MD_J_NULL);
    md_table_free(t);
}

static void reply_nul_in_value(void **state)
{
    struct md_table *t = parse_ok("la_ok.json", NULL);
    const struct md_cell *cell;

    (void)state;
    cell = md_table_cell(t, 1, COL_NAME);
    assert_int_equal(cell->len, 10);
    assert_memory_equal(cell->text, "host2\0evil", 10);
    assert_cell_text(t, 2, COL_NAME, "h\xc3\xb4st3.contoso.com");
    md_table_free(t);
}

static void complete_reply_has_no_partial(void **state)
{
    char *partial = (char *)1;
    struct md_table *t = parse_ok("la_ok.json", &partial);

    (void)state;
    assert_null(partial);
    md_table_free(t);
}

static void partial_error_sets_truncated(void **state)
{
    char *partial = NULL;
    struct md_table *t = parse_ok("la_partial.json", &partial);

    (void)state;
    assert_true(t->truncated);
    assert_int_equal(t->nrows, 2);
    assert_cell_text(t, 1, 1, "host2.contoso.com");
    assert_non_null(partial);
    md_table_free(t);
    free(partial);
}

static void partial_error_described(void **state)
{
    char *partial = NULL;
    struct md_table *t = parse_ok("la_partial.json", &partial);

    (void)state;
    assert_non_null(partial);
    print_message("%s\n", partial);
    assert_non_null(strstr(partial, "PartialError: \"There were some "
                                    "errors"));
    assert_non_null(strstr(partial, "detail EngineError: "));
    assert_non_null(strstr(partial, "inner -2133196753: \"Query result "
                                    "set has exceeded"));
    assert_non_null(strstr(partial, "inner E_QUERY_RESULT_SET_TOO_LARGE"));
    assert_null(strchr(partial, '\n'));
    md_table_free(t);
    free(partial);
}

static void partial_without_table_is_empty(void **state)
{
    char *partial = NULL;
    struct md_table *t = parse_ok("la_partial_no_table.json", &partial);

    (void)state;
    assert_int_equal(t->ncolumns, 0);
    assert_int_equal(t->nrows, 0);
    assert_true(t->truncated);
    assert_non_null(partial);
    md_table_free(t);
    free(partial);
}

static void partial_pointer_optional(void **state)
{
    struct md_table *t = parse_ok("la_partial.json", NULL);

    (void)state;
    assert_true(t->truncated);
    md_table_free(t);
}

static void invalid_replies_rejected(void **state)
{
    static const struct {
        const char *file;
        const char *words;
    } cases[] = {
        { "la_missing_tables.json", "\"tables\" is missing" },
        { "la_tables_not_array.json", "\"tables\" is not an array" },
        { "la_no_primary.json", "no table named PrimaryResult" },
        { "la_row_not_array.json", "row 2 is not a JSON array" },
        { "la_row_short.json", "row 2 has 1 values for 2 columns" },
        { "la_columns_missing.json", "\"columns\" of table PrimaryResult "
                                     "is missing" },
        { "la_rows_missing.json", "\"rows\" of table PrimaryResult is "
                                  "missing" },
        { "la_column_without_name.json", "column 2 has no name" },
        { "la_type_mismatch.json", "TimeGenerated" },
        { "la_error_only.json", "returned an error and no result" },
        { "la_error_not_object.json", "\"error\" is not a JSON object" },
        { "not_json.html", "not JSON or cut off" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error err;
        size_t len;
        char *body = read_fixture(cases[i].file, &len);

        print_message("case %s\n", cases[i].file);
        err = parse_fails(body, len);
        free(body);
        assert_int_equal(err.kind, MD_E_SERVICE);
        assert_non_null(strstr(err.message, "Log Analytics"));
        if (strstr(err.message, cases[i].words) == NULL)
            fail_msg("message \"%s\" lacks \"%s\"", err.message,
                     cases[i].words);
    }
}

static void empty_body_rejected(void **state)
{
    struct md_error err = parse_fails("", 0);

    (void)state;
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "empty body"));
    assert_non_null(strstr(err.message, "Content-Type"));
}

static void error_only_keeps_code(void **state)
{
    size_t len;
    char *body = read_fixture("la_error_only.json", &len);
    struct md_error err = parse_fails(body, len);

    (void)state;
    free(body);
    assert_string_equal(err.service_code, "InternalServerError");
}

/* A reply with nrows rows of one string column. */
static char *make_rows(size_t nrows, size_t *len)
{
    static const char head[] =
        "{\"tables\":[{\"name\":\"PrimaryResult\",\"columns\":"
        "[{\"name\":\"DeviceName\",\"type\":\"string\"}],\"rows\":[";
    static const char row[] = "[\"host\"]";
    size_t size = sizeof(head) + nrows * sizeof(row) + 8;
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
    memcpy(p, "]}]}", 4);
    p += 4;
    *len = (size_t)(p - body);
    return body;
}

static void check_row_count(size_t nrows, int truncated)
{
    struct md_table *t = NULL;
    struct md_error err;
    size_t len;
    char *body = make_rows(nrows, &len);

    md_error_clear(&err);
    if (md_la_parse_reply(body, len, &t, NULL, &err) != 0)
        fail_msg("%zu rows: %s", nrows, err.message);
    assert_int_equal(t->nrows, nrows);
    assert_int_equal(t->truncated, truncated);
    md_table_free(t);
    free(body);
}

static void row_limit_sets_truncated(void **state)
{
    (void)state;
    check_row_count(MD_LA_ROW_LIMIT, 1);
}

static void graph_row_limit_not_truncated(void **state)
{
    (void)state;
    check_row_count(MD_SERVICE_ROW_LIMIT, 0);
}

static char *build_body(const char *query, size_t len, int64_t period,
                        const char *default_timespan)
{
    struct md_error err;
    char *body = NULL;
    size_t body_len = 0;

    md_error_clear(&err);
    if (md_la_build_body(query, len, period, default_timespan, &body,
                         &body_len, &err) != 0)
        fail_msg("%s", err.message);
    assert_int_equal(body_len, strlen(body));
    return body;
}

static void body_timespan_from_period(void **state)
{
    char *body = build_body("T", 1, 5 * 86400, "P7D");

    (void)state;
    assert_string_equal(body, "{\"query\":\"T\",\"timespan\":\"P5D\"}");
    free(body);
}

static void body_timespan_from_config(void **state)
{
    char *body = build_body("T", 1, 0, "PT12H");

    (void)state;
    assert_string_equal(body, "{\"query\":\"T\",\"timespan\":\"PT12H\"}");
    free(body);
}

static void body_timespan_defaults_to_p30d(void **state)
{
    char *unset = build_body("T", 1, 0, NULL);
    char *empty = build_body("T", 1, 0, "");

    (void)state;
    assert_string_equal(unset, "{\"query\":\"T\",\"timespan\":\"P30D\"}");
    assert_string_equal(empty, "{\"query\":\"T\",\"timespan\":\"P30D\"}");
    free(unset);
    free(empty);
}

static void body_round_trips_query_bytes(void **state)
{
    static const char query[] =
        "DeviceInfo\r\n| where DeviceName has \"x\\\\y\"\t// caf\xc3\xa9 "
        "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x94\x8d\n| take 10 // \x01 end";
    char *body = build_body(query, sizeof(query) - 1, 0, NULL);
    json_error_t jerr;
    json_t *root;
    json_t *sent;

    (void)state;
    assert_null(strchr(body, '\n'));
    assert_null(strchr(body, '\r'));
    root = json_loads(body, JSON_ALLOW_NUL, &jerr);
    assert_non_null(root);
    assert_int_equal(json_object_size(root), 2);
    sent = json_object_get(root, "query");
    assert_true(json_is_string(sent));
    assert_int_equal(json_string_length(sent), sizeof(query) - 1);
    assert_memory_equal(json_string_value(sent), query, sizeof(query) - 1);
    json_decref(root);
    free(body);
}

static void body_keeps_utf8_unescaped(void **state)
{
    static const char query[] = "T | where N == \"caf\xc3\xa9\"";
    char *body = build_body(query, sizeof(query) - 1, 3600, NULL);

    (void)state;
    assert_string_equal(body, "{\"query\":\"T | where N == \\\"caf\xc3\xa9"
                              "\\\"\",\"timespan\":\"PT1H\"}");
    free(body);
}

static void body_rejects_invalid_utf8(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
        size_t bad;     /* 1-based byte reported */
    } cases[] = {
        { "ab\xff", 3, 3 },
        { "a\xc0\x80", 3, 2 },              /* overlong NUL */
        { "x\xed\xa0\x80", 4, 2 },          /* UTF-16 surrogate */
        { "\xf4\x90\x80\x80", 4, 1 },       /* above U+10FFFF */
        { "ok\xe2\x82", 4, 3 },             /* cut-off sequence */
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error err;
        char want[32];
        char *body = (char *)1;
        size_t len = 0;

        print_message("case %zu\n", i);
        md_error_clear(&err);
        assert_int_equal(md_la_build_body(cases[i].bytes, cases[i].len, 0,
                                          NULL, &body, &len, &err), -1);
        assert_int_equal(err.kind, MD_E_RULE);
        assert_null(body);
        snprintf(want, sizeof(want), "byte %zu of", cases[i].bad);
        assert_non_null(strstr(err.message, want));
    }
}

static void url_names_workspace(void **state)
{
    struct md_error err;
    char *url = NULL;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_la_build_url("https://api.loganalytics.azure.com/",
                                     WORKSPACE, &url, &err), 0);
    assert_string_equal(url, "https://api.loganalytics.azure.com/v1/"
                             "workspaces/" WORKSPACE "/query");
    free(url);
}

static void url_rejects_bad_workspace(void **state)
{
    static const struct {
        const char *workspace;
        const char *words;
    } cases[] = {
        { NULL, "[api] workspace_id is missing" },
        { "", "[api] workspace_id is missing" },
        { "7c2e4b1a-9d3f-4e6a-8b5c-1f0e2d3c4b5", "is not a GUID" },
        { WORKSPACE "0", "is not a GUID" },
        { "7c2e4b1a-9d3f-4e6a-8b5c-1f0e2d3c4b/a", "is not a GUID" },
        { "/subscriptions/1/resourceGroups/rg", "resource ID" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_error err;
        char *url = (char *)1;

        print_message("case %zu\n", i);
        md_error_clear(&err);
        assert_int_equal(md_la_build_url("https://h", cases[i].workspace,
                                         &url, &err), -1);
        assert_null(url);
        assert_int_equal(err.kind, MD_E_CONFIG);
        assert_non_null(strstr(err.message, cases[i].words));
    }
}

static void prefer_header_follows_timeout(void **state)
{
    static const struct {
        long timeout;
        const char *header;     /* "" when none is sent */
    } cases[] = {
        { 15, "" },
        { 190, "" },
        { 191, "Prefer: wait=181" },
        { 200, "Prefer: wait=190" },
        { 610, "Prefer: wait=600" },
        { 3600, "Prefer: wait=600" },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[64] = "stale";
        int sent = md_la_prefer_header(cases[i].timeout, buf, sizeof(buf));

        print_message("timeout %ld\n", cases[i].timeout);
        assert_int_equal(sent, cases[i].header[0] != '\0');
        assert_string_equal(buf, cases[i].header);
    }
}

struct error_case {
    long status;
    const char *file;
    long retry_after;
    enum md_err_kind kind;
    const char *service_code;
    const char *words;
};

static const struct error_case error_cases[] = {
    { 400, "la_400_syntax.json", -1, MD_E_QUERY_SYNTAX, "BadArgumentError",
      "Log Analytics rejected the query (HTTP 400, BadArgumentError/"
      "SyntaxError): \"Query could not be parsed at 'wher'" },
    { 400, "la_400_result_size.json", -1, MD_E_QUERY_TOO_LARGE,
      "BadArgumentError", "summarize" },
    { 401, "la_401.json", -1, MD_E_AUTH, "AuthenticationFailed",
      "[auth] scope" },
    { 403, "la_403_audience.json", -1, MD_E_AUTH,
      "InvalidAuthenticationTokenAudience",
      "https://api.loganalytics.io/.default" },
    { 403, "la_403_token.json", -1, MD_E_AUTH, "InvalidAuthenticationToken",
      "[auth] tenant_id" },
    { 403, "la_403_access.json", -1, MD_E_PERMISSION,
      "InsufficientAccessError",
      "denied access to workspace " WORKSPACE },
    { 403, "la_403_access.json", -1, MD_E_PERMISSION,
      "InsufficientAccessError", "Log Analytics Reader role" },
    { 404, "la_404.json", -1, MD_E_CONFIG, "PathNotFoundError",
      "found no workspace " WORKSPACE },
    { 404, "la_404.json", -1, MD_E_CONFIG, "PathNotFoundError",
      "[api] workspace_id" },
    { 429, "la_429.json", 7, MD_E_THROTTLED, "ThrottledError",
      "Retry-After: 7 s" },
    { 504, "la_504.json", -1, MD_E_QUERY_PREEMPTED, "GatewayTimeout",
      "ran out of time" },
    { 504, "not_json.html", -1, MD_E_QUERY_PREEMPTED, "", "HTTP 504" },
    { 500, "la_500.json", -1, MD_E_SERVICE, "InternalServerError",
      "try again later" },
    { 502, "not_json.html", -1, MD_E_SERVICE, "",
      "<title>502 Bad Gateway</title>" },
    { 409, "la_500.json", -1, MD_E_SERVICE, "InternalServerError",
      "unexpected reply from Log Analytics (HTTP 409" },
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
    strcpy(resp.ms_request_id, "ms-id");
    strcpy(resp.request_id, "plain-id");
    md_error_clear(err);
    assert_int_equal(md_la_map_error(&resp, WORKSPACE, err), -1);
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
        assert_string_equal(err.request_id, "ms-id");
        assert_int_equal(err.retry_after, c->retry_after);
        if (strstr(err.message, c->words) == NULL)
            fail_msg("message \"%s\" lacks \"%s\"", err.message, c->words);
        assert_null(strchr(err.message, '\n'));
    }
}

static void request_id_falls_back(void **state)
{
    struct md_http_response resp;
    struct md_error err;

    (void)state;
    md_http_response_init(&resp);
    resp.status = 503;
    strcpy(resp.request_id, "plain-id");
    md_error_clear(&err);
    assert_int_equal(md_la_map_error(&resp, NULL, &err), -1);
    assert_string_equal(err.request_id, "plain-id");
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "(HTTP 503) with no message"));
    md_http_response_free(&resp);
}

static void unset_workspace_named_unset(void **state)
{
    struct md_http_response resp;
    struct md_error err;
    size_t len;
    char *body = read_fixture("la_404.json", &len);

    (void)state;
    md_http_response_init(&resp);
    assert_int_equal(md_buf_append(&resp.body, body, len), 0);
    resp.status = 404;
    md_error_clear(&err);
    assert_int_equal(md_la_map_error(&resp, NULL, &err), -1);
    assert_non_null(strstr(err.message, "no workspace (unset)"));
    md_http_response_free(&resp);
    free(body);
}

static void read_reply_204_is_empty(void **state)
{
    struct md_http_response resp;
    struct md_table *t = NULL;
    char *partial = (char *)1;
    struct md_error err;

    (void)state;
    md_http_response_init(&resp);
    resp.status = 204;
    md_error_clear(&err);
    assert_int_equal(md_la_read_reply(&resp, WORKSPACE, &t, &partial,
                                      &err), 0);
    assert_non_null(t);
    assert_int_equal(t->ncolumns, 0);
    assert_int_equal(t->nrows, 0);
    assert_false(t->truncated);
    assert_null(partial);
    md_table_free(t);
    md_http_response_free(&resp);
}

static void read_reply_parses_200(void **state)
{
    struct md_http_response resp;
    struct md_table *t = NULL;
    char *partial = NULL;
    struct md_error err;
    size_t len;
    char *body = read_fixture("la_partial.json", &len);

    (void)state;
    md_http_response_init(&resp);
    assert_int_equal(md_buf_append(&resp.body, body, len), 0);
    resp.status = 200;
    md_error_clear(&err);
    assert_int_equal(md_la_read_reply(&resp, WORKSPACE, &t, &partial,
                                      &err), 0);
    assert_int_equal(t->nrows, 2);
    assert_true(t->truncated);
    assert_non_null(partial);
    free(partial);
    md_table_free(t);
    md_http_response_free(&resp);
    free(body);
}

static void read_reply_bad_200_has_ids(void **state)
{
    struct md_http_response resp;
    struct md_table *t = (struct md_table *)1;
    char *partial = (char *)1;
    struct md_error err;

    (void)state;
    md_http_response_init(&resp);
    assert_int_equal(md_buf_puts(&resp.body, "{\"tables\":7}"), 0);
    resp.status = 200;
    strcpy(resp.ms_request_id, "ms-id");
    md_error_clear(&err);
    assert_int_equal(md_la_read_reply(&resp, WORKSPACE, &t, &partial,
                                      &err), -1);
    assert_null(t);
    assert_null(partial);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_int_equal(err.http_status, 200);
    assert_string_equal(err.request_id, "ms-id");
    md_http_response_free(&resp);
}

static void read_reply_maps_errors(void **state)
{
    struct md_http_response resp;
    struct md_table *t = (struct md_table *)1;
    struct md_error err;
    size_t len;
    char *body = read_fixture("la_404.json", &len);

    (void)state;
    md_http_response_init(&resp);
    assert_int_equal(md_buf_append(&resp.body, body, len), 0);
    resp.status = 404;
    md_error_clear(&err);
    assert_int_equal(md_la_read_reply(&resp, WORKSPACE, &t, NULL, &err),
                     -1);
    assert_null(t);
    assert_int_equal(err.kind, MD_E_CONFIG);
    md_http_response_free(&resp);
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reply_column_types),
        cmocka_unit_test(reply_uses_primary_result),
        cmocka_unit_test(reply_typed_cells),
        cmocka_unit_test(reply_long_from_text_exact),
        cmocka_unit_test(reply_dynamic_json_text),
        cmocka_unit_test(reply_dynamic_other_text_stays),
        cmocka_unit_test(reply_nulls),
        cmocka_unit_test(reply_nul_in_value),
        cmocka_unit_test(complete_reply_has_no_partial),
        cmocka_unit_test(partial_error_sets_truncated),
        cmocka_unit_test(partial_error_described),
        cmocka_unit_test(partial_without_table_is_empty),
        cmocka_unit_test(partial_pointer_optional),
        cmocka_unit_test(invalid_replies_rejected),
        cmocka_unit_test(empty_body_rejected),
        cmocka_unit_test(error_only_keeps_code),
        cmocka_unit_test(row_limit_sets_truncated),
        cmocka_unit_test(graph_row_limit_not_truncated),
        cmocka_unit_test(body_timespan_from_period),
        cmocka_unit_test(body_timespan_from_config),
        cmocka_unit_test(body_timespan_defaults_to_p30d),
        cmocka_unit_test(body_round_trips_query_bytes),
        cmocka_unit_test(body_keeps_utf8_unescaped),
        cmocka_unit_test(body_rejects_invalid_utf8),
        cmocka_unit_test(url_names_workspace),
        cmocka_unit_test(url_rejects_bad_workspace),
        cmocka_unit_test(prefer_header_follows_timeout),
        cmocka_unit_test(api_errors_mapped),
        cmocka_unit_test(request_id_falls_back),
        cmocka_unit_test(unset_workspace_named_unset),
        cmocka_unit_test(read_reply_204_is_empty),
        cmocka_unit_test(read_reply_parses_200),
        cmocka_unit_test(read_reply_bad_200_has_ids),
        cmocka_unit_test(read_reply_maps_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
