/* Tests for the output writers: text table, JSON, NDJSON and CSV. */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/output.h"

/*
 * Build a table by hand.  columns alternates names and service types and
 * ends with NULL; rows_json is a JSON array of rows, each an array of
 * values in column order.
 */
static struct md_table *make_table(const char *const *columns,
                                   const char *rows_json)
{
    struct md_table *t = md_table_new();
    struct md_error err;
    json_t *rows;
    json_t *row;
    size_t i, col;

    assert_non_null(t);
    md_error_clear(&err);
    for (i = 0; columns[i] != NULL; i += 2) {
        if (md_table_add_column(t, columns[i], columns[i + 1], &err) != 0)
            fail_msg("%s", err.message);
    }

    rows = json_loads(rows_json, JSON_ALLOW_NUL, NULL);
    assert_non_null(rows);
    json_array_foreach(rows, i, row) {
        struct md_cell *cells = md_table_add_row(t);

        assert_non_null(cells);
        for (col = 0; col < t->ncolumns; col++) {
            if (md_table_set_cell_json(t, &cells[col], col,
                                       json_array_get(row, col), &err) != 0)
                fail_msg("%s", err.message);
        }
    }
    json_decref(rows);
    return t;
}

/* Write t with opts into memory; the caller frees the result. */
static char *render(const struct md_table *t,
                    const struct md_output_options *opts, size_t *len)
{
    char *data = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&data, &size);
    struct md_error err;

    assert_non_null(out);
    md_error_clear(&err);
    if (md_output_write(out, t, opts, &err) != 0)
        fail_msg("%s", err.message);
    assert_int_equal(fclose(out), 0);
    *len = size;
    return data;
}

static char *render_as(const struct md_table *t, enum md_format format,
                       size_t max_width, size_t *len)
{
    struct md_output_options opts;

    md_output_options_init(&opts);
    opts.format = format;
    opts.max_cell_width = max_width;
    return render(t, &opts, len);
}

/* Render columns and rows in a format and compare with expected bytes. */
static void assert_output(const char *const *columns, const char *rows,
                          enum md_format format, size_t max_width,
                          const char *expected, size_t expected_len)
{
    struct md_table *t = make_table(columns, rows);
    size_t len;
    char *text = render_as(t, format, max_width, &len);

    if (len != expected_len || memcmp(text, expected, len) != 0)
        fail_msg("output:\n%s\nexpected:\n%s", text, expected);
    free(text);
    md_table_free(t);
}

#define ASSERT_OUTPUT(columns, rows, format, width, expected)               \
    assert_output(columns, rows, format, width, expected,                   \
                  sizeof(expected) - 1)

static const char *const one_string[] = {"Value", "String", NULL};

/* Display width */

static void width_ascii_and_escapes(void **state)
{
    (void)state;
    assert_int_equal(md_display_width("abc", 3), 3);
    assert_int_equal(md_display_width("a\nb", 3), 4);
    assert_int_equal(md_display_width("\x1b", 1), 2);
    assert_int_equal(md_display_width("\x01", 1), 4);
    assert_int_equal(md_display_width("\0", 1), 2);
    assert_int_equal(md_display_width("\xff", 1), 4);
    assert_int_equal(md_display_width("\xe2\x80\xae", 3), 8);
}

static void width_wide_characters(void **state)
{
    (void)state;
    /* 日本 */
    assert_int_equal(md_display_width("\xe6\x97\xa5\xe6\x9c\xac", 6), 4);
    /* fullwidth A */
    assert_int_equal(md_display_width("\xef\xbc\xa1", 3), 2);
    /* U+1F600 grinning face */
    assert_int_equal(md_display_width("\xf0\x9f\x98\x80", 4), 2);
    /* Hangul syllable U+AC00 */
    assert_int_equal(md_display_width("\xea\xb0\x80", 3), 2);
}

static void width_zero_characters(void **state)
{
    (void)state;
    /* e + U+0301 combining acute */
    assert_int_equal(md_display_width("e\xcc\x81", 3), 1);
    /* U+200D zero width joiner between two emoji */
    assert_int_equal(md_display_width("\xf0\x9f\x91\xa8\xe2\x80\x8d"
                                      "\xf0\x9f\x91\xa9", 11), 4);
    /* U+FE0F variation selector after a heart */
    assert_int_equal(md_display_width("\xe2\x9d\xa4\xef\xb8\x8f", 6), 1);
}

static void width_rejects_bad_utf8(void **state)
{
    (void)state;
    /* overlong "/" and a UTF-16 surrogate are shown byte by byte */
    assert_int_equal(md_display_width("\xc0\xaf", 2), 8);
    assert_int_equal(md_display_width("\xed\xa0\x80", 3), 12);
    /* truncated sequence */
    assert_int_equal(md_display_width("\xe6\x97", 2), 8);
    /* above U+10FFFF */
    assert_int_equal(md_display_width("\xf4\x90\x80\x80", 4), 16);
}

/* Text table */

static void table_aligns_columns(void **state)
{
    static const char *const columns[] = {
        "Name", "String", "Count", "Int64", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[[\"alpha\", 1], [\"b\", 12345]]",
                  MD_FORMAT_TABLE, 0,
                  "Name   Count\n"
                  "-----  -----\n"
                  "alpha      1\n"
                  "b      12345\n"
                  "2 rows\n");
}

static void table_cjk_width(void **state)
{
    static const char *const columns[] = {
        "N", "String", "X", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[\"\xe6\x97\xa5\xe6\x9c\xac\", \"x\"], [\"abc\", \"y\"]]",
                  MD_FORMAT_TABLE, 0,
                  "N     X\n"
                  "----  -\n"
                  "\xe6\x97\xa5\xe6\x9c\xac  x\n"
                  "abc   y\n"
                  "2 rows\n");
}

static void table_combining_marks(void **state)
{
    static const char *const columns[] = {
        "Word", "String", "X", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[[\"cafe\xcc\x81\", \"x\"]]",
                  MD_FORMAT_TABLE, 0,
                  "Word  X\n"
                  "----  -\n"
                  "cafe\xcc\x81  x\n"
                  "1 row\n");
}

static void table_emoji_width(void **state)
{
    static const char *const columns[] = {
        "E", "String", "X", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[\"\xf0\x9f\x98\x80\", \"x\"], [\"ab\", \"y\"]]",
                  MD_FORMAT_TABLE, 0,
                  "E   X\n"
                  "--  -\n"
                  "\xf0\x9f\x98\x80  x\n"
                  "ab  y\n"
                  "2 rows\n");
}

static void table_escapes_terminal_sequences(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string,
                  "[[\"\\u001b[31mred\"], "
                  "[\"\\u001b]8;;http://x/\\u0007link\\u001b]8;;\\u0007\"]]",
                  MD_FORMAT_TABLE, 60,
                  "Value\n"
                  "---------------------------------\n"
                  "\\e[31mred\n"
                  "\\e]8;;http://x/\\x07link\\e]8;;\\x07\n"
                  "2 rows\n");
}

static void table_escapes_bidi_controls(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string,
                  "[[\"invoice\\u202Efdp.exe\"], [\"a\\u2066b\\u2069\"], "
                  "[\"x\\u2028y\\u200Ez\\u061C\"]]",
                  MD_FORMAT_TABLE, 0,
                  "Value\n"
                  "--------------------------\n"
                  "invoice\\u{202E}fdp.exe\n"
                  "a\\u{2066}b\\u{2069}\n"
                  "x\\u{2028}y\\u{200E}z\\u{61C}\n"
                  "3 rows\n");
}

static void table_escapes_controls(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string,
                  "[[\"a\\u0000b\\n\\t\\r\\u007f\\u0001\\u0085\"]]",
                  MD_FORMAT_TABLE, 0,
                  "Value\n"
                  "------------------------\n"
                  "a\\0b\\n\\t\\r\\x7F\\x01\\u{85}\n"
                  "1 row\n");
}

static void table_escapes_invalid_utf8(void **state)
{
    static const char cell[] = "ok\xff\xe6\x97";
    struct md_table *t = make_table(one_string, "[]");
    struct md_cell *row = md_table_add_row(t);
    size_t len;
    char *text;

    (void)state;
    /* jansson only makes valid UTF-8, so a backend that copies raw bytes
     * is the one source of such text. */
    row->kind = MD_J_STRING;
    row->text = md_table_strdup(t, cell, sizeof(cell) - 1);
    row->len = sizeof(cell) - 1;
    text = render_as(t, MD_FORMAT_TABLE, 0, &len);
    assert_non_null(strstr(text, "\nok\\xFF\\xE6\\x97\n"));
    free(text);
    md_table_free(t);
}

static void table_cuts_long_cells(void **state)
{
    static const char *const columns[] = {
        "Value", "String", "X", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[[\"abcdefghijklmnop\", \"x\"]]",
                  MD_FORMAT_TABLE, 10,
                  "Value       X\n"
                  "----------  -\n"
                  "abcdefghi\xe2\x80\xa6  x\n"
                  "1 row\n");
}

static void table_cut_keeps_characters(void **state)
{
    static const char *const columns[] = {
        "Value", "String", "X", "String", NULL,
    };

    (void)state;
    /* A budget of 5 fits two wide characters, and a third would end at 6. */
    ASSERT_OUTPUT(columns,
                  "[[\"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe8\xaa\x9e\", "
                  "\"x\"]]",
                  MD_FORMAT_TABLE, 6,
                  "Value   X\n"
                  "------  -\n"
                  "\xe6\x97\xa5\xe6\x9c\xac\xe2\x80\xa6   x\n"
                  "1 row\n");
}

static void table_cut_keeps_escapes(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string, "[[\"abc\\u001bxyz\"]]",
                  MD_FORMAT_TABLE, 5,
                  "Value\n"
                  "-----\n"
                  "abc\xe2\x80\xa6\n"
                  "1 row\n");
}

static void table_cut_keeps_combining_mark(void **state)
{
    (void)state;
    /* The mark after the last character shown stays with it. */
    ASSERT_OUTPUT(one_string, "[[\"abcde\xcc\x81xyz\"]]",
                  MD_FORMAT_TABLE, 6,
                  "Value\n"
                  "------\n"
                  "abcde\xcc\x81\xe2\x80\xa6\n"
                  "1 row\n");
}

static void table_cuts_header(void **state)
{
    static const char *const columns[] = {
        "AVeryLongColumnName", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[[\"x\"]]", MD_FORMAT_TABLE, 5,
                  "AVer\xe2\x80\xa6\n"
                  "-----\n"
                  "x\n"
                  "1 row\n");
}

static void table_null_is_blank(void **state)
{
    static const char *const columns[] = {
        "A", "String", "B", "Int64", "C", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[[null, null, \"z\"], [\"aa\", 7, null]]",
                  MD_FORMAT_TABLE, 0,
                  "A   B  C\n"
                  "--  -  -\n"
                  "       z\n"
                  "aa  7\n"
                  "2 rows\n");
}

static void table_shows_service_text(void **state)
{
    static const char *const columns[] = {
        "When", "DateTime", "Took", "TimeSpan", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[\"2025-03-01T12:00:00.1234567Z\", \"1.02:03:04\"]]",
                  MD_FORMAT_TABLE, 0,
                  "When                          Took\n"
                  "----------------------------  ----------\n"
                  "2025-03-01T12:00:00.1234567Z  1.02:03:04\n"
                  "1 row\n");
}

static void table_empty_result(void **state)
{
    static const char *const columns[] = {
        "DeviceName", "String", "Count", "Int64", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[]", MD_FORMAT_TABLE, 0,
                  "DeviceName  Count\n"
                  "----------  -----\n"
                  "0 rows\n");
}

static void table_zero_columns(void **state)
{
    static const char *const columns[] = {NULL};

    (void)state;
    ASSERT_OUTPUT(columns, "[]", MD_FORMAT_TABLE, 0, "0 rows\n");
}

static void table_truncated_count(void **state)
{
    struct md_table *t = make_table(one_string, "[[\"a\"]]");
    size_t len;
    char *text;

    (void)state;
    t->truncated = 1;
    text = render_as(t, MD_FORMAT_TABLE, 0, &len);
    assert_non_null(strstr(text, "\n1 row, possibly truncated at the "
                                 "service's limit of 100000 rows\n"));
    free(text);
    md_table_free(t);
}

/* NDJSON and JSON */

static void ndjson_one_object_per_row(void **state)
{
    static const char *const columns[] = {
        "Name", "String", "Count", "Int64", "Seen", "DateTime", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[\"a\", 1, \"2025-03-01T12:00:00Z\"], "
                  "[null, \"2\", null]]",
                  MD_FORMAT_NDJSON, 0,
                  "{\"Name\":\"a\",\"Count\":1,"
                  "\"Seen\":\"2025-03-01T12:00:00Z\"}\n"
                  "{\"Name\":null,\"Count\":\"2\",\"Seen\":null}\n");
}

static void ndjson_keeps_service_types(void **state)
{
    static const char *const columns[] = {
        "S", "String", "R", "Double", "B", "Boolean", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[12, 1.5, true], [false, \"NaN\", \"False\"], "
                  "[\"x\", 1e308, 0]]",
                  MD_FORMAT_NDJSON, 0,
                  "{\"S\":12,\"R\":1.5,\"B\":true}\n"
                  "{\"S\":false,\"R\":\"NaN\",\"B\":\"False\"}\n"
                  "{\"S\":\"x\",\"R\":1e+308,\"B\":0}\n");
}

static void ndjson_escapes_nul(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string, "[[\"host\\u0000evil\"]]",
                  MD_FORMAT_NDJSON, 0,
                  "{\"Value\":\"host\\u0000evil\"}\n");
}

static void ndjson_nested_dynamic(void **state)
{
    static const char *const columns[] = {
        "Extra", "Dynamic", "Raw", "dynamic", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[{\"b\": [1, {\"c\": null}], \"a\": \"\\u2028\"}, "
                  "\"{\\\"k\\\": [true]}\"]]",
                  MD_FORMAT_NDJSON, 0,
                  "{\"Extra\":{\"b\":[1,{\"c\":null}],\"a\":\"\\u2028\"},"
                  "\"Raw\":{\"k\":[true]}}\n");
}

static void ndjson_huge_integers(void **state)
{
    static const char *const columns[] = {
        "I", "Int64", "S", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[9223372036854775807, -9223372036854775808], "
                  "[\"-9223372036854775808\", 1.7976931348623157e308]]",
                  MD_FORMAT_NDJSON, 0,
                  "{\"I\":9223372036854775807,\"S\":-9223372036854775808}\n"
                  "{\"I\":\"-9223372036854775808\","
                  "\"S\":1.7976931348623157e+308}\n");
}

static void ndjson_empty_and_zero_columns(void **state)
{
    static const char *const none[] = {NULL};
    struct md_table *t = make_table(none, "[]");
    size_t len;
    char *text;

    (void)state;
    md_table_add_row(t);
    md_table_add_row(t);
    text = render_as(t, MD_FORMAT_NDJSON, 0, &len);
    assert_int_equal(len, 6);
    assert_memory_equal(text, "{}\n{}\n", 6);
    free(text);
    md_table_free(t);

    ASSERT_OUTPUT(one_string, "[]", MD_FORMAT_NDJSON, 0, "");
}

static void json_document_layout(void **state)
{
    static const char *const columns[] = {
        "DeviceName", "String", "Count", "long", NULL,
    };
    struct md_table *t = make_table(columns, "[[\"pc1\", 3], [\"pc2\", null]]");
    struct md_output_options opts;
    static const char expected[] =
        "{\n"
        "  \"format\": \"mdhunt.result/1\",\n"
        "  \"backend\": \"graph\",\n"
        "  \"query_sha256\": \"ab12\",\n"
        "  \"truncated\": false,\n"
        "  \"row_count\": 2,\n"
        "  \"schema\": [\n"
        "    {\"name\": \"DeviceName\", \"type\": \"string\", "
        "\"service_type\": \"String\"},\n"
        "    {\"name\": \"Count\", \"type\": \"int\", "
        "\"service_type\": \"long\"}\n"
        "  ],\n"
        "  \"rows\": [\n"
        "    {\"DeviceName\":\"pc1\",\"Count\":3},\n"
        "    {\"DeviceName\":\"pc2\",\"Count\":null}\n"
        "  ]\n"
        "}\n";
    size_t len;
    char *text;

    (void)state;
    md_output_options_init(&opts);
    opts.format = MD_FORMAT_JSON;
    opts.backend = "graph";
    opts.query_sha256 = "ab12";
    text = render(t, &opts, &len);
    if (len != sizeof(expected) - 1 || memcmp(text, expected, len) != 0)
        fail_msg("output:\n%s", text);
    free(text);
    md_table_free(t);
}

/* Parse json output with jansson, so that a syntax slip fails the test. */
static json_t *render_json(const struct md_table *t, int truncated)
{
    struct md_output_options opts;
    json_error_t error;
    json_t *doc;
    size_t len;
    char *text;

    md_output_options_init(&opts);
    opts.format = MD_FORMAT_JSON;
    ((struct md_table *)t)->truncated = truncated;
    text = render(t, &opts, &len);
    doc = json_loadb(text, len, JSON_ALLOW_NUL, &error);
    if (doc == NULL)
        fail_msg("invalid JSON (%s):\n%s", error.text, text);
    free(text);
    return doc;
}

static void json_truncated_flag(void **state)
{
    struct md_table *t = make_table(one_string, "[[\"a\"]]");
    json_t *doc;

    (void)state;
    doc = render_json(t, 1);
    assert_true(json_is_true(json_object_get(doc, "truncated")));
    json_decref(doc);
    doc = render_json(t, 0);
    assert_true(json_is_false(json_object_get(doc, "truncated")));
    json_decref(doc);
    md_table_free(t);
}

static void json_empty_result(void **state)
{
    static const char *const columns[] = {
        "A", "String", "B", "Int64", NULL,
    };
    struct md_table *t = make_table(columns, "[]");
    json_t *doc;

    (void)state;
    doc = render_json(t, 0);
    assert_int_equal(json_integer_value(json_object_get(doc, "row_count")),
                     0);
    assert_int_equal(json_array_size(json_object_get(doc, "schema")), 2);
    assert_int_equal(json_array_size(json_object_get(doc, "rows")), 0);
    assert_true(json_is_null(json_object_get(doc, "backend")));
    assert_true(json_is_null(json_object_get(doc, "query_sha256")));
    json_decref(doc);
    md_table_free(t);
}

static void json_zero_columns(void **state)
{
    static const char *const none[] = {NULL};
    struct md_table *t = make_table(none, "[]");
    json_t *doc;

    (void)state;
    md_table_add_row(t);
    doc = render_json(t, 0);
    assert_int_equal(json_array_size(json_object_get(doc, "schema")), 0);
    assert_int_equal(json_array_size(json_object_get(doc, "rows")), 1);
    assert_int_equal(json_integer_value(json_object_get(doc, "row_count")),
                     1);
    json_decref(doc);
    md_table_free(t);
}

static void json_values_round_trip(void **state)
{
    static const char *const columns[] = {
        "S", "String", "R", "Double", "D", "Dynamic", "N", "Int64", NULL,
    };
    struct md_table *t = make_table(columns,
        "[[\"a\\u0000\\\"\\\\\\u001b\", \"-Infinity\", [1, [2]], null]]");
    json_t *doc;
    json_t *row;

    (void)state;
    doc = render_json(t, 0);
    row = json_array_get(json_object_get(doc, "rows"), 0);
    assert_int_equal(json_string_length(json_object_get(row, "S")), 5);
    assert_memory_equal(json_string_value(json_object_get(row, "S")),
                        "a\0\"\\\x1b", 5);
    assert_string_equal(json_string_value(json_object_get(row, "R")),
                        "-Infinity");
    assert_int_equal(json_array_size(json_object_get(row, "D")), 2);
    assert_true(json_is_null(json_object_get(row, "N")));
    json_decref(doc);
    md_table_free(t);
}

static void json_schema_escapes_names(void **state)
{
    static const char *const columns[] = {
        "Odd \"name\"\n", "Weird\\Type", NULL,
    };
    struct md_table *t = make_table(columns, "[[\"v\"]]");
    json_t *doc;
    json_t *column;

    (void)state;
    doc = render_json(t, 0);
    column = json_array_get(json_object_get(doc, "schema"), 0);
    assert_string_equal(json_string_value(json_object_get(column, "name")),
                        "Odd \"name\"\n");
    assert_string_equal(json_string_value(json_object_get(column,
                                                          "service_type")),
                        "Weird\\Type");
    assert_string_equal(json_string_value(json_object_get(column, "type")),
                        "unknown");
    json_decref(doc);
    md_table_free(t);
}

/* The JSON string writer */

static char *json_string_of(const char *s, size_t n, size_t *len)
{
    char *data = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&data, &size);

    assert_non_null(out);
    assert_int_equal(md_json_write_string(out, s, n), 0);
    assert_int_equal(fclose(out), 0);
    *len = size;
    return data;
}

static void assert_json_string(const char *s, size_t n, const char *expected)
{
    size_t len;
    char *text = json_string_of(s, n, &len);

    if (len != strlen(expected) || memcmp(text, expected, len) != 0)
        fail_msg("got %s, expected %s", text, expected);
    free(text);
}

static void json_string_escapes(void **state)
{
    (void)state;
    assert_json_string("", 0, "\"\"");
    assert_json_string("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    assert_json_string("\n\r\t\b\f", 5, "\"\\n\\r\\t\\b\\f\"");
    assert_json_string("\0\x01\x1b\x1f", 4,
                       "\"\\u0000\\u0001\\u001b\\u001f\"");
    assert_json_string("\x7f/", 2, "\"\x7f/\"");
}

static void json_string_line_separators(void **state)
{
    (void)state;
    assert_json_string("a\xe2\x80\xa8" "b\xe2\x80\xa9", 8,
                       "\"a\\u2028b\\u2029\"");
}

static void json_string_keeps_utf8(void **state)
{
    (void)state;
    assert_json_string("\xe6\x97\xa5\xf0\x9f\x98\x80", 7,
                       "\"\xe6\x97\xa5\xf0\x9f\x98\x80\"");
}

static void json_string_replaces_bad_utf8(void **state)
{
    (void)state;
    assert_json_string("a\xff" "b", 3, "\"a\\ufffdb\"");
    assert_json_string("\xe6\x97", 2, "\"\\ufffd\\ufffd\"");
    assert_json_string("\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"");
    assert_json_string("\xc0\xaf", 2, "\"\\ufffd\\ufffd\"");
}

/* CSV */

static void csv_quotes_when_needed(void **state)
{
    static const char *const columns[] = {
        "A", "String", "B", "String", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[\"plain\", \"a,b\"], [\"say \\\"hi\\\"\", \"l1\\nl2\"], "
                  "[\"cr\\rx\", \"semi;colon\"]]",
                  MD_FORMAT_CSV, 0,
                  "A,B\r\n"
                  "plain,\"a,b\"\r\n"
                  "\"say \"\"hi\"\"\",\"l1\nl2\"\r\n"
                  "\"cr\rx\",semi;colon\r\n");
}

static void csv_null_and_empty(void **state)
{
    static const char *const columns[] = {
        "A", "String", "B", "String", "C", "Int64", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[[null, \"\", null]]", MD_FORMAT_CSV, 0,
                  "A,B,C\r\n"
                  ",\"\",\r\n");
}

static void csv_neutralises_each_prefix(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string,
                  "[[\"=1+1\"], [\"+cmd\"], [\"-2\"], [\"@SUM(A1)\"], "
                  "[\"\\tx\"], [\"\\rx\"], [\"a=1\"]]",
                  MD_FORMAT_CSV, 0,
                  "Value\r\n"
                  "'=1+1\r\n"
                  "'+cmd\r\n"
                  "'-2\r\n"
                  "'@SUM(A1)\r\n"
                  "'\tx\r\n"
                  "\"'\rx\"\r\n"
                  "a=1\r\n");
}

static void csv_neutralises_quoted_field(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string, "[[\"=HYPERLINK(\\\"http://x\\\",\\\"y\\\")\"]]",
                  MD_FORMAT_CSV, 0,
                  "Value\r\n"
                  "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"\r\n");
}

static void csv_neutralises_text_types(void **state)
{
    static const char *const columns[] = {
        "G", "Guid", "D", "Dynamic", "U", "Mystery", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns, "[[\"=g\", \"-d\", \"@u\"]]", MD_FORMAT_CSV, 0,
                  "G,D,U\r\n"
                  "'=g,'-d,'@u\r\n");
}

static void csv_keeps_numbers(void **state)
{
    static const char *const columns[] = {
        "I", "Int64", "R", "Double", "S", "String", "T", "TimeSpan", NULL,
    };

    (void)state;
    ASSERT_OUTPUT(columns,
                  "[[-5, -1.5, -7, \"-01:00:00\"], "
                  "[\"-6\", \"-Infinity\", 2, \"00:00:01\"]]",
                  MD_FORMAT_CSV, 0,
                  "I,R,S,T\r\n"
                  "-5,-1.5,-7,-01:00:00\r\n"
                  "-6,-Infinity,2,00:00:01\r\n");
}

static void csv_raw_keeps_formulas(void **state)
{
    static const char *const columns[] = {"=Head", "String", NULL};
    struct md_table *t = make_table(columns, "[[\"=1+1\"], [\"@x\"]]");
    struct md_output_options opts;
    static const char expected[] = "=Head\r\n=1+1\r\n@x\r\n";
    size_t len;
    char *text;

    (void)state;
    md_output_options_init(&opts);
    opts.format = MD_FORMAT_CSV;
    opts.csv_raw = 1;
    text = render(t, &opts, &len);
    assert_int_equal(len, sizeof(expected) - 1);
    assert_memory_equal(text, expected, len);
    free(text);
    md_table_free(t);
}

static void csv_neutralises_header(void **state)
{
    static const char *const columns[] = {"=Head", "String", NULL};

    (void)state;
    ASSERT_OUTPUT(columns, "[]", MD_FORMAT_CSV, 0, "'=Head\r\n");
}

static void csv_keeps_nul_bytes(void **state)
{
    (void)state;
    ASSERT_OUTPUT(one_string, "[[\"a\\u0000b\"]]", MD_FORMAT_CSV, 0,
                  "Value\r\na\0b\r\n");
}

static void csv_zero_columns(void **state)
{
    static const char *const none[] = {NULL};

    (void)state;
    ASSERT_OUTPUT(none, "[]", MD_FORMAT_CSV, 0, "");
}

static void csv_field_writer_flags(void **state)
{
    char *data = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&data, &size);

    (void)state;
    assert_non_null(out);
    assert_int_equal(md_csv_write_field(out, "=x", 2, 0), 0);
    assert_int_equal(md_csv_write_field(out, "=x", 2, 1), 0);
    assert_int_equal(md_csv_write_field(out, "\0=", 2, 1), 0);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(size, 7);
    assert_memory_equal(data, "=x'=x\0=", 7);
    free(data);
}

/* Formats, options and write errors */

static void format_names(void **state)
{
    struct md_error err;
    enum md_format format = MD_FORMAT_TABLE;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_format_from_name("json", &format, &err), 0);
    assert_int_equal(format, MD_FORMAT_JSON);
    assert_int_equal(md_format_from_name("CSV", &format, &err), 0);
    assert_int_equal(format, MD_FORMAT_CSV);
    assert_int_equal(md_format_from_name("ndjson", &format, &err), 0);
    assert_int_equal(format, MD_FORMAT_NDJSON);
    assert_int_equal(md_format_from_name("table", &format, &err), 0);
    assert_int_equal(format, MD_FORMAT_TABLE);
    assert_string_equal(md_format_name(MD_FORMAT_NDJSON), "ndjson");
}

static void format_unknown_rejected(void **state)
{
    struct md_error err;
    enum md_format format = MD_FORMAT_CSV;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_format_from_name("yaml", &format, &err), -1);
    assert_int_equal(err.kind, MD_E_USAGE);
    assert_non_null(strstr(err.message, "\"yaml\""));
    assert_non_null(strstr(err.message, "ndjson"));
    assert_int_equal(format, MD_FORMAT_CSV);
}

static void options_defaults(void **state)
{
    struct md_output_options opts;

    (void)state;
    memset(&opts, 0xff, sizeof(opts));
    md_output_options_init(&opts);
    assert_int_equal(opts.format, MD_FORMAT_TABLE);
    assert_int_equal(opts.csv_raw, 0);
    assert_null(opts.backend);
    assert_null(opts.query_sha256);
    assert_int_equal(opts.max_cell_width, MD_OUTPUT_CELL_WIDTH);
}

static void write_to_closed_pipe(void **state)
{
    static const enum md_format formats[] = {
        MD_FORMAT_TABLE, MD_FORMAT_JSON, MD_FORMAT_CSV, MD_FORMAT_NDJSON,
    };
    struct md_table *t = make_table(one_string, "[[\"a\"], [\"b\"]]");
    struct md_output_options opts;
    void (*previous)(int) = signal(SIGPIPE, SIG_IGN);
    size_t i;

    (void)state;
    md_output_options_init(&opts);
    for (i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        struct md_error err;
        int fds[2];
        FILE *out;

        assert_int_equal(pipe(fds), 0);
        assert_int_equal(close(fds[0]), 0);
        out = fdopen(fds[1], "w");
        assert_non_null(out);
        md_error_clear(&err);
        opts.format = formats[i];
        errno = 0;
        assert_int_equal(md_output_write(out, t, &opts, &err), -1);
        assert_int_equal(errno, EPIPE);
        assert_int_equal(err.kind, MD_E_INTERNAL);
        fclose(out);
    }
    signal(SIGPIPE, previous);
    md_table_free(t);
}

static void write_to_full_device(void **state)
{
    struct md_table *t = make_table(one_string, "[[\"a\"]]");
    struct md_output_options opts;
    struct md_error err;
    FILE *out = fopen("/dev/full", "w");

    (void)state;
    if (out == NULL)
        skip();
    md_output_options_init(&opts);
    md_error_clear(&err);
    errno = 0;
    assert_int_equal(md_output_write(out, t, &opts, &err), -1);
    assert_int_equal(errno, ENOSPC);
    assert_non_null(strstr(err.message, "writing the result failed"));
    fclose(out);
    md_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(width_ascii_and_escapes),
        cmocka_unit_test(width_wide_characters),
        cmocka_unit_test(width_zero_characters),
        cmocka_unit_test(width_rejects_bad_utf8),
        cmocka_unit_test(table_aligns_columns),
        cmocka_unit_test(table_cjk_width),
        cmocka_unit_test(table_combining_marks),
        cmocka_unit_test(table_emoji_width),
        cmocka_unit_test(table_escapes_terminal_sequences),
        cmocka_unit_test(table_escapes_bidi_controls),
        cmocka_unit_test(table_escapes_controls),
        cmocka_unit_test(table_escapes_invalid_utf8),
        cmocka_unit_test(table_cuts_long_cells),
        cmocka_unit_test(table_cut_keeps_characters),
        cmocka_unit_test(table_cut_keeps_escapes),
        cmocka_unit_test(table_cut_keeps_combining_mark),
        cmocka_unit_test(table_cuts_header),
        cmocka_unit_test(table_null_is_blank),
        cmocka_unit_test(table_shows_service_text),
        cmocka_unit_test(table_empty_result),
        cmocka_unit_test(table_zero_columns),
        cmocka_unit_test(table_truncated_count),
        cmocka_unit_test(ndjson_one_object_per_row),
        cmocka_unit_test(ndjson_keeps_service_types),
        cmocka_unit_test(ndjson_escapes_nul),
        cmocka_unit_test(ndjson_nested_dynamic),
        cmocka_unit_test(ndjson_huge_integers),
        cmocka_unit_test(ndjson_empty_and_zero_columns),
        cmocka_unit_test(json_document_layout),
        cmocka_unit_test(json_truncated_flag),
        cmocka_unit_test(json_empty_result),
        cmocka_unit_test(json_zero_columns),
        cmocka_unit_test(json_values_round_trip),
        cmocka_unit_test(json_schema_escapes_names),
        cmocka_unit_test(json_string_escapes),
        cmocka_unit_test(json_string_line_separators),
        cmocka_unit_test(json_string_keeps_utf8),
        cmocka_unit_test(json_string_replaces_bad_utf8),
        cmocka_unit_test(csv_quotes_when_needed),
        cmocka_unit_test(csv_null_and_empty),
        cmocka_unit_test(csv_neutralises_each_prefix),
        cmocka_unit_test(csv_neutralises_quoted_field),
        cmocka_unit_test(csv_neutralises_text_types),
        cmocka_unit_test(csv_keeps_numbers),
        cmocka_unit_test(csv_raw_keeps_formulas),
        cmocka_unit_test(csv_neutralises_header),
        cmocka_unit_test(csv_keeps_nul_bytes),
        cmocka_unit_test(csv_zero_columns),
        cmocka_unit_test(csv_field_writer_flags),
        cmocka_unit_test(format_names),
        cmocka_unit_test(format_unknown_rejected),
        cmocka_unit_test(options_defaults),
        cmocka_unit_test(write_to_closed_pipe),
        cmocka_unit_test(write_to_full_device),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
