/*
 * Tests of md_store_row_text(): the row JSON that the store and the diff
 * write straight from the cells must read back as the object that
 * md_store_row_object() builds with jansson.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mdhunt/buf.h"
#include "mdhunt/store.h"
#include "mdhunt/table.h"

/* One column per kind of value the services send. */
static const char *const columns[][2] = {
    { "Name", "String" },
    { "Count", "Int64" },
    { "Score", "Double" },
    { "Active", "Boolean" },
    { "Report", "Dynamic" },
    { "Extra", "Dynamic" },
    { "Note \"quoted\"", "String" },
};

#define NCOLUMNS (sizeof(columns) / sizeof(columns[0]))

/* Make a one-row table from a JSON array of the row's values. */
static struct md_table *one_row(const char *values_json)
{
    struct md_table *t = md_table_new();
    json_t *values = json_loads(values_json, JSON_ALLOW_NUL, NULL);
    struct md_error err;
    struct md_cell *cells;

    md_error_clear(&err);
    assert_non_null(t);
    assert_non_null(values);
    for (size_t i = 0; i < NCOLUMNS; i++)
        assert_int_equal(md_table_add_column(t, columns[i][0],
                                             columns[i][1], &err), 0);
    cells = md_table_add_row(t);
    assert_non_null(cells);
    for (size_t i = 0; i < NCOLUMNS; i++)
        assert_int_equal(md_table_set_cell_json(t, &cells[i], i,
                                                json_array_get(values, i),
                                                &err), 0);
    json_decref(values);
    return t;
}

/* Parse text with jansson; fails the test when it is not JSON. */
static json_t *parse(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *value = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);

    if (value == NULL)
        fail_msg("not JSON (%s): %.*s", jerr.text, (int)len, text);
    return value;
}

/* Check that the row text of t's row reads back as md_store_row_object(). */
static void assert_same_as_jansson(const struct md_table *t)
{
    struct md_buf b = MD_BUF_INIT;
    struct md_error err;
    json_t *expected;
    json_t *got;

    md_error_clear(&err);
    expected = md_store_row_object(t, 0, &err);
    assert_non_null(expected);
    assert_int_equal(md_store_row_text(t, 0, NULL, &b, &err), 0);
    got = parse(b.data, b.len);
    assert_true(json_equal(got, expected));
    json_decref(got);
    json_decref(expected);
    md_buf_free(&b);
}

static void test_row_text_plain_row(void **state)
{
    struct md_table *t = one_row("[\"PC1\", 42, 1.5, true, [1, 2],"
                                 " {\"a\": null}, \"n\"]");
    struct md_buf b = MD_BUF_INIT;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_store_row_text(t, 0, NULL, &b, &err), 0);
    assert_string_equal(b.data,
                        "{\"Name\":\"PC1\",\"Count\":42,\"Score\":1.5,"
                        "\"Active\":true,\"Report\":[1,2],"
                        "\"Extra\":{\"a\":null},"
                        "\"Note \\\"quoted\\\"\":\"n\"}");
    md_buf_free(&b);
    md_table_free(t);
}

static void test_row_text_escapes_strings(void **state)
{
    struct md_table *t = one_row("[\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001"
                                 "\\u001f\\u0000d\\u2028\\u00e9/\","
                                 " null, null, null, null, null,"
                                 " \"x\"]");

    (void)state;
    assert_same_as_jansson(t);
    md_table_free(t);
}

static void test_row_text_escape_forms(void **state)
{
    struct md_table *t = one_row("[\"\\u0001\\n\\u0000\", null, null,"
                                 " null, null, null, \"\"]");
    struct md_buf b = MD_BUF_INIT;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_store_row_text(t, 0, NULL, &b, &err), 0);
    assert_non_null(strstr(b.data, "\"Name\":\"\\u0001\\n\\u0000\""));
    md_buf_free(&b);
    md_table_free(t);
}

static void test_row_text_nulls_and_false(void **state)
{
    struct md_table *t = one_row("[null, null, null, false, [], {},"
                                 " null]");

    (void)state;
    assert_same_as_jansson(t);
    md_table_free(t);
}

static void test_row_text_number_edges(void **state)
{
    struct md_table *t = one_row("[\"\", -9223372036854775808, 1e300,"
                                 " false, [0.1, -0, 1e-7], {\"k\": 2.5},"
                                 " \"\"]");

    (void)state;
    assert_same_as_jansson(t);
    md_table_free(t);
}

static void test_row_text_string_numbers_stay_strings(void **state)
{
    /* A string that looks like a number in an Int64 column. */
    struct md_table *t = one_row("[\"7\", \"123\", \"2.5\", \"true\","
                                 " null, null, \"\"]");

    (void)state;
    assert_same_as_jansson(t);
    md_table_free(t);
}

static void test_row_text_override_cells(void **state)
{
    struct md_table *t = one_row("[\"PC1\", 1, 2.0, true, null, null,"
                                 " \"n\"]");
    const struct md_cell *cells[NCOLUMNS] = { NULL };
    struct md_cell count;
    struct md_buf b = MD_BUF_INIT;
    struct md_error err;
    json_t *row;

    (void)state;
    md_error_clear(&err);
    memset(&count, 0, sizeof(count));
    count.kind = MD_J_INTEGER;
    count.text = "1234";
    count.len = 4;
    cells[1] = &count;
    assert_int_equal(md_store_row_text(t, 0, cells, &b, &err), 0);
    row = parse(b.data, b.len);
    assert_int_equal(json_integer_value(json_object_get(row, "Count")),
                     1234);
    assert_string_equal(json_string_value(json_object_get(row, "Name")),
                        "PC1");
    json_decref(row);
    md_buf_free(&b);
    md_table_free(t);
}

static void test_row_text_invalid_number_fails(void **state)
{
    struct md_table *t = one_row("[\"PC1\", 1, null, null, null, null,"
                                 " \"n\"]");
    const struct md_cell *cells[NCOLUMNS] = { NULL };
    struct md_cell bad;
    struct md_buf b = MD_BUF_INIT;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    memset(&bad, 0, sizeof(bad));
    bad.kind = MD_J_REAL;
    bad.text = "1.";
    bad.len = 2;
    cells[2] = &bad;
    assert_int_equal(md_store_row_text(t, 0, cells, &b, &err), -1);
    assert_int_equal(err.kind, MD_E_INTERNAL);
    assert_non_null(strstr(err.message, "Score"));
    md_buf_free(&b);
    md_table_free(t);
}

static void test_row_text_appends(void **state)
{
    struct md_table *t = one_row("[\"PC1\", 1, null, null, null, null,"
                                 " \"n\"]");
    const char *prefix = "row: {\"Name\":\"PC1\"";
    struct md_buf b = MD_BUF_INIT;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_buf_puts(&b, "row: "), 0);
    assert_int_equal(md_store_row_text(t, 0, NULL, &b, &err), 0);
    assert_int_equal(strncmp(b.data, prefix, strlen(prefix)), 0);
    assert_int_equal(b.len, strlen(b.data));
    md_buf_free(&b);
    md_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_text_plain_row),
        cmocka_unit_test(test_row_text_escapes_strings),
        cmocka_unit_test(test_row_text_escape_forms),
        cmocka_unit_test(test_row_text_nulls_and_false),
        cmocka_unit_test(test_row_text_number_edges),
        cmocka_unit_test(test_row_text_string_numbers_stay_strings),
        cmocka_unit_test(test_row_text_override_cells),
        cmocka_unit_test(test_row_text_invalid_number_fails),
        cmocka_unit_test(test_row_text_appends),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
