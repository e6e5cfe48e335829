/* Tests for the result table: type names, columns, rows and the
 * conversion of JSON values into typed cells. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/table.h"

/* A table with one column of the given service type. */
static struct md_table *one_column(const char *service_type)
{
    struct md_table *t = md_table_new();
    struct md_error err;

    assert_non_null(t);
    md_error_clear(&err);
    assert_int_equal(md_table_add_column(t, "Value", service_type, &err), 0);
    return t;
}

static json_t *parse_json(const char *text)
{
    json_t *value = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

    assert_non_null(value);
    return value;
}

/* Set the cell of a new row from JSON text; returns what
 * md_table_set_cell_json() returned. */
static int set_json(struct md_table *t, const char *text,
                    struct md_cell **cell, struct md_error *err)
{
    json_t *value = parse_json(text);
    int rc;

    *cell = md_table_add_row(t);
    assert_non_null(*cell);
    md_error_clear(err);
    rc = md_table_set_cell_json(t, *cell, 0, value, err);
    json_decref(value);
    return rc;
}

/* Convert text in a one-column table of service_type and return the
 * cell, which stays valid until the table is freed. */
static struct md_cell *convert_ok(struct md_table *t, const char *text)
{
    struct md_error err;
    struct md_cell *cell;

    if (set_json(t, text, &cell, &err) != 0)
        fail_msg("\"%s\" rejected: %s", text, err.message);
    return cell;
}

static void assert_rejected(const char *service_type, const char *text,
                            const char *fragment)
{
    struct md_table *t = one_column(service_type);
    struct md_error err;
    struct md_cell *cell;

    if (set_json(t, text, &cell, &err) == 0)
        fail_msg("%s value %s accepted", service_type, text);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "row 1"));
    assert_non_null(strstr(err.message, "\"Value\""));
    if (strstr(err.message, fragment) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err.message, fragment);
    md_table_free(t);
}

static void assert_text(const struct md_cell *cell, const char *expected)
{
    assert_int_equal(cell->len, strlen(expected));
    assert_memory_equal(cell->text, expected, cell->len);
}

/* Type names */

static void type_dotnet_names(void **state)
{
    (void)state;
    assert_int_equal(md_type_from_service_name("String"), MD_T_STRING);
    assert_int_equal(md_type_from_service_name("DateTime"), MD_T_DATETIME);
    assert_int_equal(md_type_from_service_name("Int64"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("Int32"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("Int16"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("Byte"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("SByte"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("UInt16"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("UInt32"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("UInt64"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("Boolean"), MD_T_BOOL);
    assert_int_equal(md_type_from_service_name("Double"), MD_T_REAL);
    assert_int_equal(md_type_from_service_name("Single"), MD_T_REAL);
    assert_int_equal(md_type_from_service_name("Decimal"), MD_T_REAL);
    assert_int_equal(md_type_from_service_name("Guid"), MD_T_GUID);
    assert_int_equal(md_type_from_service_name("TimeSpan"), MD_T_TIMESPAN);
    assert_int_equal(md_type_from_service_name("Object"), MD_T_DYNAMIC);
    assert_int_equal(md_type_from_service_name("Dynamic"), MD_T_DYNAMIC);
    assert_int_equal(md_type_from_service_name("System.Int64"), MD_T_INT);
}

static void type_kusto_names(void **state)
{
    (void)state;
    assert_int_equal(md_type_from_service_name("string"), MD_T_STRING);
    assert_int_equal(md_type_from_service_name("long"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("int"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("real"), MD_T_REAL);
    assert_int_equal(md_type_from_service_name("double"), MD_T_REAL);
    assert_int_equal(md_type_from_service_name("decimal"), MD_T_REAL);
    assert_int_equal(md_type_from_service_name("bool"), MD_T_BOOL);
    assert_int_equal(md_type_from_service_name("boolean"), MD_T_BOOL);
    assert_int_equal(md_type_from_service_name("datetime"), MD_T_DATETIME);
    assert_int_equal(md_type_from_service_name("date"), MD_T_DATETIME);
    assert_int_equal(md_type_from_service_name("timespan"), MD_T_TIMESPAN);
    assert_int_equal(md_type_from_service_name("time"), MD_T_TIMESPAN);
    assert_int_equal(md_type_from_service_name("guid"), MD_T_GUID);
    assert_int_equal(md_type_from_service_name("uniqueid"), MD_T_GUID);
    assert_int_equal(md_type_from_service_name("dynamic"), MD_T_DYNAMIC);
}

static void type_ignores_case(void **state)
{
    (void)state;
    assert_int_equal(md_type_from_service_name("DATETIME"), MD_T_DATETIME);
    assert_int_equal(md_type_from_service_name("iNT64"), MD_T_INT);
    assert_int_equal(md_type_from_service_name("Long"), MD_T_INT);
}

static void type_unknown_names(void **state)
{
    (void)state;
    assert_int_equal(md_type_from_service_name("Int128"), MD_T_UNKNOWN);
    assert_int_equal(md_type_from_service_name(""), MD_T_UNKNOWN);
    assert_int_equal(md_type_from_service_name("System."), MD_T_UNKNOWN);
    assert_int_equal(md_type_from_service_name(NULL), MD_T_UNKNOWN);
}

static void type_canonical_names(void **state)
{
    (void)state;
    assert_string_equal(md_type_name(MD_T_STRING), "string");
    assert_string_equal(md_type_name(MD_T_INT), "int");
    assert_string_equal(md_type_name(MD_T_REAL), "real");
    assert_string_equal(md_type_name(MD_T_BOOL), "bool");
    assert_string_equal(md_type_name(MD_T_DATETIME), "datetime");
    assert_string_equal(md_type_name(MD_T_TIMESPAN), "timespan");
    assert_string_equal(md_type_name(MD_T_GUID), "guid");
    assert_string_equal(md_type_name(MD_T_DYNAMIC), "dynamic");
    assert_string_equal(md_type_name(MD_T_UNKNOWN), "unknown");
}

/* Columns and rows */

static void column_keeps_service_type(void **state)
{
    struct md_table *t = md_table_new();
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_table_add_column(t, "Timestamp", "DateTime", &err),
                     0);
    assert_int_equal(md_table_add_column(t, "Extra", NULL, &err), 0);
    assert_int_equal(t->ncolumns, 2);
    assert_string_equal(t->columns[0].name, "Timestamp");
    assert_string_equal(t->columns[0].service_type, "DateTime");
    assert_int_equal(t->columns[0].type, MD_T_DATETIME);
    assert_string_equal(t->columns[1].service_type, "");
    assert_int_equal(t->columns[1].type, MD_T_UNKNOWN);
    md_table_free(t);
}

static void column_duplicate_rejected(void **state)
{
    struct md_table *t = md_table_new();
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_table_add_column(t, "DeviceName", "String", &err),
                     0);
    assert_int_equal(md_table_add_column(t, "Count", "Int64", &err), 0);
    assert_int_equal(md_table_add_column(t, "DeviceName", "String", &err),
                     -1);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "\"DeviceName\""));
    assert_non_null(strstr(err.message, "columns 1 and 3"));
    assert_int_equal(t->ncolumns, 2);
    md_table_free(t);
}

static void column_after_row_rejected(void **state)
{
    struct md_table *t = one_column("String");
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_non_null(md_table_add_row(t));
    assert_int_equal(md_table_add_column(t, "Late", "String", &err), -1);
    assert_int_equal(err.kind, MD_E_INTERNAL);
    assert_int_equal(t->ncolumns, 1);
    md_table_free(t);
}

static void column_index_lookup(void **state)
{
    struct md_table *t = md_table_new();
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_table_add_column(t, "devicename", "String", &err),
                     0);
    assert_int_equal(md_table_add_column(t, "DeviceName", "String", &err),
                     0);
    assert_int_equal(md_table_column_index(t, "DeviceName"), 1);
    assert_int_equal(md_table_column_index(t, "devicename"), 0);
    assert_int_equal(md_table_column_index(t, "DEVICENAME"), 0);
    assert_int_equal(md_table_column_index(t, "DeviceId"), -1);
    md_table_free(t);
}

static void row_starts_null(void **state)
{
    struct md_table *t = one_column("String");
    struct md_cell *cell;

    (void)state;
    cell = md_table_add_row(t);
    assert_non_null(cell);
    assert_int_equal(cell->kind, MD_J_NULL);
    assert_string_equal(cell->text, "");
    assert_int_equal(cell->len, 0);
    assert_int_equal(t->nrows, 1);
    md_table_free(t);
}

static void row_without_columns(void **state)
{
    struct md_table *t = md_table_new();

    (void)state;
    assert_non_null(md_table_add_row(t));
    assert_non_null(md_table_add_row(t));
    assert_int_equal(t->nrows, 2);
    md_table_free(t);
}

static void rows_grow_to_service_limit(void **state)
{
    struct md_table *t = md_table_new();
    struct md_error err;
    char name[16];
    char text[32];
    size_t row, col;

    (void)state;
    md_error_clear(&err);
    for (col = 0; col < 10; col++) {
        snprintf(name, sizeof(name), "C%zu", col);
        assert_int_equal(md_table_add_column(t, name, "String", &err), 0);
    }
    for (row = 0; row < MD_SERVICE_ROW_LIMIT; row++) {
        struct md_cell *cells = md_table_add_row(t);

        assert_non_null(cells);
        for (col = 0; col < 10; col++) {
            json_t *value;

            snprintf(text, sizeof(text), "r%zu-c%zu", row, col);
            value = json_string(text);
            assert_non_null(value);
            if (md_table_set_cell_json(t, &cells[col], col, value, &err))
                fail_msg("%s", err.message);
            json_decref(value);
        }
    }
    assert_int_equal(t->nrows, MD_SERVICE_ROW_LIMIT);
    assert_true(t->rows_cap >= t->nrows);
    assert_string_equal(md_table_cell(t, 0, 0)->text, "r0-c0");
    assert_string_equal(md_table_cell(t, 54321, 7)->text, "r54321-c7");
    assert_string_equal(md_table_cell(t, 99999, 9)->text, "r99999-c9");
    md_table_free(t);
}

static void strdup_keeps_nul(void **state)
{
    struct md_table *t = md_table_new();
    char *copy;

    (void)state;
    copy = md_table_strdup(t, "a\0b", 3);
    assert_non_null(copy);
    assert_memory_equal(copy, "a\0b", 3);
    assert_int_equal(copy[3], '\0');
    md_table_free(t);
}

static void strdup_large_string(void **state)
{
    struct md_table *t = md_table_new();
    size_t len = 1024 * 1024;
    char *big = malloc(len);
    char *small;
    char *copy;

    (void)state;
    assert_non_null(big);
    memset(big, 'x', len);
    small = md_table_strdup(t, "before", 6);
    copy = md_table_strdup(t, big, len);
    assert_non_null(copy);
    assert_memory_equal(copy, big, len);
    assert_string_equal(small, "before");
    assert_string_equal(md_table_strdup(t, "after", 5), "after");
    free(big);
    md_table_free(t);
}

/* Strings, guids and unknown types */

static void string_keeps_nul_bytes(void **state)
{
    struct md_table *t = one_column("String");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "\"host\\u0000evil\"");
    assert_int_equal(cell->kind, MD_J_STRING);
    assert_int_equal(cell->len, 9);
    assert_memory_equal(cell->text, "host\0evil", 9);
    md_table_free(t);
}

static void string_empty_value(void **state)
{
    struct md_table *t = one_column("String");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "\"\"");
    assert_int_equal(cell->kind, MD_J_STRING);
    assert_string_equal(cell->text, "");
    md_table_free(t);
}

static void string_keeps_scalar_text(void **state)
{
    struct md_table *t = one_column("String");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "42");
    assert_int_equal(cell->kind, MD_J_INTEGER);
    assert_text(cell, "42");
    cell = convert_ok(t, "1.5");
    assert_int_equal(cell->kind, MD_J_REAL);
    assert_text(cell, "1.5");
    cell = convert_ok(t, "false");
    assert_int_equal(cell->kind, MD_J_BOOL);
    assert_text(cell, "false");
    md_table_free(t);
}

static void string_object_compact(void **state)
{
    struct md_table *t = one_column("Guid");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "{ \"b\" : 1,\n \"a\" : [ true, null ] }");
    assert_int_equal(cell->kind, MD_J_OBJECT);
    assert_text(cell, "{\"b\":1,\"a\":[true,null]}");
    md_table_free(t);
}

static void unknown_type_accepts_any(void **state)
{
    struct md_table *t = one_column("Int128");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "\"123456789012345678901234567890\"");
    assert_int_equal(cell->kind, MD_J_STRING);
    assert_text(cell, "123456789012345678901234567890");
    md_table_free(t);
}

static void null_for_every_type(void **state)
{
    static const char *const types[] = {
        "String", "Int64", "Double", "Boolean", "DateTime", "TimeSpan",
        "Guid", "Dynamic", "Mystery",
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        struct md_table *t = one_column(types[i]);
        struct md_cell *cell = convert_ok(t, "null");

        assert_int_equal(cell->kind, MD_J_NULL);
        assert_int_equal(cell->len, 0);
        md_table_free(t);
    }
}

static void null_json_pointer(void **state)
{
    struct md_table *t = one_column("Int64");
    struct md_error err;
    struct md_cell *cell = md_table_add_row(t);

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_table_set_cell_json(t, cell, 0, NULL, &err), 0);
    assert_int_equal(cell->kind, MD_J_NULL);
    md_table_free(t);
}

static void column_index_out_of_range(void **state)
{
    struct md_table *t = one_column("String");
    struct md_error err;
    struct md_cell *cell = md_table_add_row(t);
    json_t *value = json_string("x");

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_table_set_cell_json(t, cell, 1, value, &err), -1);
    assert_int_equal(err.kind, MD_E_INTERNAL);
    json_decref(value);
    md_table_free(t);
}

/* Integers */

static void int_accepts_encodings(void **state)
{
    struct md_table *t = one_column("Int64");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "-42");
    assert_int_equal(cell->kind, MD_J_INTEGER);
    assert_true(cell->v.i == -42);
    assert_text(cell, "-42");

    cell = convert_ok(t, "\"9223372036854775807\"");
    assert_int_equal(cell->kind, MD_J_STRING);
    assert_true(cell->v.i == INT64_MAX);

    cell = convert_ok(t, "\"-9223372036854775808\"");
    assert_true(cell->v.i == INT64_MIN);

    cell = convert_ok(t, "\"+7\"");
    assert_true(cell->v.i == 7);

    cell = convert_ok(t, "3.0");
    assert_int_equal(cell->kind, MD_J_REAL);
    assert_true(cell->v.i == 3);
    assert_text(cell, "3.0");
    md_table_free(t);
}

static void int_rejects_malformed(void **state)
{
    (void)state;
    assert_rejected("Int64", "\"12a\"", "JSON string \"12a\"");
    assert_rejected("Int64", "\"\"", "JSON string");
    assert_rejected("Int64", "\" 12\"", "JSON string");
    assert_rejected("Int64", "\"12 \"", "JSON string");
    assert_rejected("Int64", "\"-\"", "JSON string");
    assert_rejected("Int64", "\"0x10\"", "JSON string");
    assert_rejected("Int64", "\"1\\u00002\"", "JSON string");
    assert_rejected("Int64", "1.5", "JSON real 1.5");
    assert_rejected("Int64", "true", "JSON true");
    assert_rejected("Int64", "[1]", "JSON array");
    assert_rejected("Int64", "{\"a\":1}", "JSON object");
}

static void int_rejects_out_of_range(void **state)
{
    (void)state;
    assert_rejected("Int64", "\"9223372036854775808\"", "out of 64-bit");
    assert_rejected("Int64", "\"-9223372036854775809\"", "out of 64-bit");
    assert_rejected("Int64", "1e19", "not a 64-bit integer");
    assert_rejected("Int64", "-1e300", "not a 64-bit integer");
}

/* Reals */

static void real_accepts_encodings(void **state)
{
    struct md_table *t = one_column("Double");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "0.1");
    assert_int_equal(cell->kind, MD_J_REAL);
    assert_true(cell->v.r == 0.1);
    assert_text(cell, "0.1");

    cell = convert_ok(t, "7");
    assert_int_equal(cell->kind, MD_J_INTEGER);
    assert_true(cell->v.r == 7.0);

    cell = convert_ok(t, "\"-2.5e3\"");
    assert_int_equal(cell->kind, MD_J_STRING);
    assert_true(cell->v.r == -2500.0);

    cell = convert_ok(t, "\".5\"");
    assert_true(cell->v.r == 0.5);

    cell = convert_ok(t, "\"1e-400\"");
    assert_true(cell->v.r >= 0.0);
    md_table_free(t);
}

static void real_accepts_named_values(void **state)
{
    struct md_table *t = one_column("real");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "\"NaN\"");
    assert_true(isnan(cell->v.r));
    assert_text(cell, "NaN");
    cell = convert_ok(t, "\"Infinity\"");
    assert_true(isinf(cell->v.r) && cell->v.r > 0);
    cell = convert_ok(t, "\"-Infinity\"");
    assert_true(isinf(cell->v.r) && cell->v.r < 0);
    cell = convert_ok(t, "\"nan\"");
    assert_true(isnan(cell->v.r));
    md_table_free(t);
}

static void real_text_round_trips(void **state)
{
    struct md_table *t = one_column("Double");
    struct md_cell *cell;

    (void)state;
    assert_text(convert_ok(t, "3.0"), "3.0");
    assert_text(convert_ok(t, "1e300"), "1e+300");
    assert_text(convert_ok(t, "-0.0"), "-0.0");
    cell = convert_ok(t, "0.30000000000000004");
    assert_true(strtod(cell->text, NULL) == cell->v.r);
    assert_text(cell, "0.30000000000000004");
    md_table_free(t);
}

static void real_rejects_malformed(void **state)
{
    (void)state;
    assert_rejected("Double", "\"abc\"", "JSON string \"abc\"");
    assert_rejected("Double", "\"0x10\"", "JSON string");
    assert_rejected("Double", "\"inf\"", "JSON string");
    assert_rejected("Double", "\" 1.5\"", "JSON string");
    assert_rejected("Double", "\"1.5.2\"", "JSON string");
    assert_rejected("Double", "\"1e\"", "JSON string");
    assert_rejected("Double", "\".\"", "JSON string");
    assert_rejected("Double", "\"\"", "JSON string");
    assert_rejected("Double", "false", "JSON false");
    assert_rejected("Double", "{}", "JSON object");
}

static void real_rejects_overflow(void **state)
{
    (void)state;
    assert_rejected("Double", "\"1e400\"", "out of double range");
    assert_rejected("Double", "\"-1e400\"", "out of double range");
}

/* Booleans */

static void bool_accepts_encodings(void **state)
{
    struct md_table *t = one_column("Boolean");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "true");
    assert_int_equal(cell->kind, MD_J_BOOL);
    assert_int_equal(cell->v.b, 1);
    assert_text(cell, "true");

    cell = convert_ok(t, "false");
    assert_int_equal(cell->v.b, 0);
    assert_text(cell, "false");

    cell = convert_ok(t, "\"TRUE\"");
    assert_int_equal(cell->kind, MD_J_STRING);
    assert_int_equal(cell->v.b, 1);
    assert_text(cell, "TRUE");

    cell = convert_ok(t, "\"False\"");
    assert_int_equal(cell->v.b, 0);

    cell = convert_ok(t, "1");
    assert_int_equal(cell->kind, MD_J_INTEGER);
    assert_int_equal(cell->v.b, 1);

    cell = convert_ok(t, "0");
    assert_int_equal(cell->v.b, 0);
    md_table_free(t);
}

static void bool_rejects_others(void **state)
{
    (void)state;
    assert_rejected("Boolean", "2", "JSON integer 2");
    assert_rejected("bool", "\"yes\"", "JSON string \"yes\"");
    assert_rejected("bool", "\"1\"", "JSON string");
    assert_rejected("bool", "\"true \"", "JSON string");
    assert_rejected("bool", "0.0", "JSON real");
    assert_rejected("bool", "[]", "JSON array");
}

/* Datetimes */

static void datetime_fraction_digits(void **state)
{
    static const char *const texts[] = {
        "\"2025-03-01T12:00:00Z\"",
        "\"2025-03-01T12:00:00.1Z\"",
        "\"2025-03-01T12:00:00.12Z\"",
        "\"2025-03-01T12:00:00.123Z\"",
        "\"2025-03-01T12:00:00.1234Z\"",
        "\"2025-03-01T12:00:00.12345Z\"",
        "\"2025-03-01T12:00:00.123456Z\"",
        "\"2025-03-01T12:00:00.1234567Z\"",
        "\"2025-03-01T12:00:00.12345678Z\"",
        "\"2025-03-01T12:00:00.123456789Z\"",
    };
    static const int64_t ticks[] = {
        0, 1000000, 1200000, 1230000, 1234000, 1234500, 1234560,
        1234567, 1234567, 1234567,
    };
    struct md_table *t = one_column("DateTime");
    md_instant base = 0;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct md_cell *cell = convert_ok(t, texts[i]);

        if (i == 0)
            base = cell->v.t;
        assert_true(cell->v.t - base == ticks[i]);
        assert_int_equal(cell->kind, MD_J_STRING);
        assert_int_equal(cell->len, strlen(texts[i]) - 2);
    }
    assert_true(base == INT64_C(17408304000000000));
    md_table_free(t);
}

static void datetime_offsets(void **state)
{
    struct md_table *t = one_column("datetime");
    struct md_cell *utc;
    struct md_cell *east;
    struct md_cell *west;

    (void)state;
    utc = convert_ok(t, "\"2025-03-01T10:00:00Z\"");
    east = convert_ok(t, "\"2025-03-01T12:00:00+02:00\"");
    west = convert_ok(t, "\"2025-03-01T09:30:00-00:30\"");
    assert_true(east->v.t == utc->v.t);
    assert_true(west->v.t == utc->v.t);
    assert_text(east, "2025-03-01T12:00:00+02:00");
    md_table_free(t);
}

static void datetime_rejects_malformed(void **state)
{
    (void)state;
    assert_rejected("DateTime", "\"2025-03-01T12:00:00.1234567890Z\"",
                    "ISO 8601");
    assert_rejected("DateTime", "\"2025-03-01T12:00:00\"", "ISO 8601");
    assert_rejected("DateTime", "\"2025-03-01 12:00:00Z\"", "ISO 8601");
    assert_rejected("DateTime", "\"2025-02-30T12:00:00Z\"", "ISO 8601");
    assert_rejected("DateTime", "1740830400", "JSON integer");
}

/* Time spans */

static int64_t timespan_ticks(const char *text)
{
    struct md_table *t = one_column("TimeSpan");
    char json[64];
    int64_t ticks;

    snprintf(json, sizeof(json), "\"%s\"", text);
    ticks = convert_ok(t, json)->v.i;
    md_table_free(t);
    return ticks;
}

static void timespan_parses_forms(void **state)
{
    (void)state;
    assert_true(timespan_ticks("00:00:00") == 0);
    assert_true(timespan_ticks("01:02:03") ==
                INT64_C(37230000000));
    assert_true(timespan_ticks("1.00:00:00") == INT64_C(864000000000));
    assert_true(timespan_ticks("1.02:03:04.5") == INT64_C(937845000000));
    assert_true(timespan_ticks("00:00:00.0000001") == 1);
    assert_true(timespan_ticks("-00:00:01") == -10000000);
    assert_true(timespan_ticks("-1.00:00:00.25") ==
                -INT64_C(864002500000));
    assert_true(timespan_ticks("10675199.02:48:05.4775807") == INT64_MAX);
    assert_true(timespan_ticks("-10675199.02:48:05.4775808") == INT64_MIN);
}

static void timespan_rejects_malformed(void **state)
{
    (void)state;
    assert_rejected("TimeSpan", "\"24:00:00\"", "time span");
    assert_rejected("TimeSpan", "\"00:60:00\"", "time span");
    assert_rejected("TimeSpan", "\"00:00:60\"", "time span");
    assert_rejected("TimeSpan", "\"1:02:03\"", "time span");
    assert_rejected("TimeSpan", "\"01:02\"", "time span");
    assert_rejected("TimeSpan", "\"01:02:03.\"", "time span");
    assert_rejected("TimeSpan", "\"01:02:03.12345678\"", "time span");
    assert_rejected("TimeSpan", "\".01:02:03\"", "time span");
    assert_rejected("TimeSpan", "\"1.02:03\"", "time span");
    assert_rejected("TimeSpan", "\"--01:02:03\"", "time span");
    assert_rejected("TimeSpan", "\"\"", "time span");
    assert_rejected("TimeSpan", "3600", "JSON integer");
}

static void timespan_rejects_overflow(void **state)
{
    (void)state;
    assert_rejected("TimeSpan", "\"10675199.02:48:05.4775808\"",
                    "out of range");
    assert_rejected("TimeSpan", "\"99999999.00:00:00\"", "out of range");
    assert_rejected("TimeSpan", "\"123456789.00:00:00\"", "out of range");
}

/* Dynamic values */

static void dynamic_keeps_key_order(void **state)
{
    struct md_table *t = one_column("Dynamic");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "{\"z\": 1, \"a\": {\"y\": [1, 2.5, \"x\"], "
                         "\"b\": null}}");
    assert_int_equal(cell->kind, MD_J_OBJECT);
    assert_text(cell, "{\"z\":1,\"a\":{\"y\":[1,2.5,\"x\"],\"b\":null}}");
    md_table_free(t);
}

static void dynamic_string_holding_json(void **state)
{
    struct md_table *t = one_column("dynamic");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "\" [\\\"a\\\", {\\\"k\\\": 0.1}]\"");
    assert_int_equal(cell->kind, MD_J_ARRAY);
    assert_text(cell, "[\"a\",{\"k\":0.1}]");

    cell = convert_ok(t, "\"{\\\"k\\\": \\\"v\\\"}\"");
    assert_int_equal(cell->kind, MD_J_OBJECT);
    assert_text(cell, "{\"k\":\"v\"}");
    md_table_free(t);
}

static void dynamic_plain_string_stays(void **state)
{
    struct md_table *t = one_column("dynamic");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "\"[not json\"");
    assert_int_equal(cell->kind, MD_J_STRING);
    assert_text(cell, "[not json");

    cell = convert_ok(t, "\"plain\"");
    assert_int_equal(cell->kind, MD_J_STRING);

    cell = convert_ok(t, "12");
    assert_int_equal(cell->kind, MD_J_INTEGER);
    assert_text(cell, "12");
    md_table_free(t);
}

static void dynamic_escapes_nested_text(void **state)
{
    struct md_table *t = one_column("Dynamic");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "{\"n\": \"a\\u0000b\", \"q\": \"\\\"\\\\\\n\", "
                         "\"ls\": \"x\\u2028y\\u2029\", \"e\": \"\\u001b\"}");
    assert_text(cell, "{\"n\":\"a\\u0000b\",\"q\":\"\\\"\\\\\\n\","
                      "\"ls\":\"x\\u2028y\\u2029\",\"e\":\"\\u001b\"}");
    md_table_free(t);
}

static void dynamic_keeps_utf8(void **state)
{
    struct md_table *t = one_column("Dynamic");
    struct md_cell *cell;

    (void)state;
    cell = convert_ok(t, "[\"\xe6\x97\xa5\xe6\x9c\xac\", \"\\u00e9\"]");
    assert_text(cell, "[\"\xe6\x97\xa5\xe6\x9c\xac\",\"\xc3\xa9\"]");
    md_table_free(t);
}

static void dynamic_deep_nesting(void **state)
{
    struct md_table *t = one_column("Dynamic");
    char json[2 * 500 + 1];
    struct md_cell *cell;

    (void)state;
    memset(json, '[', 500);
    memset(json + 500, ']', 500);
    json[1000] = '\0';
    cell = convert_ok(t, json);
    assert_int_equal(cell->kind, MD_J_ARRAY);
    assert_text(cell, json);
    md_table_free(t);
}

/* Error messages */

static void error_names_row_and_column(void **state)
{
    struct md_table *t = md_table_new();
    struct md_error err;
    json_t *good = json_integer(1);
    json_t *bad = json_string("many");
    size_t row;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_table_add_column(t, "DeviceName", "String", &err),
                     0);
    assert_int_equal(md_table_add_column(t, "Count", "Int64", &err), 0);
    for (row = 0; row < 2; row++) {
        struct md_cell *cells = md_table_add_row(t);

        assert_int_equal(md_table_set_cell_json(t, &cells[1], 1, good, &err),
                         0);
    }
    assert_int_equal(md_table_set_cell_json(t, &md_table_add_row(t)[1], 1,
                                            bad, &err), -1);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_non_null(strstr(err.message, "row 3,"));
    assert_non_null(strstr(err.message, "column \"Count\" (Int64)"));
    assert_non_null(strstr(err.message, "got JSON string \"many\""));
    json_decref(good);
    json_decref(bad);
    md_table_free(t);
}

static void error_hides_control_bytes(void **state)
{
    struct md_table *t = md_table_new();
    struct md_error err;
    json_t *bad = json_string("\x1b[31mred");

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_table_add_column(t, "N\x1b]8;;x", "Int64", &err),
                     0);
    assert_int_equal(md_table_set_cell_json(t, md_table_add_row(t), 0, bad,
                                            &err), -1);
    assert_null(strchr(err.message, '\x1b'));
    assert_non_null(strstr(err.message, "\"?[31mred\""));
    json_decref(bad);
    md_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(type_dotnet_names),
        cmocka_unit_test(type_kusto_names),
        cmocka_unit_test(type_ignores_case),
        cmocka_unit_test(type_unknown_names),
        cmocka_unit_test(type_canonical_names),
        cmocka_unit_test(column_keeps_service_type),
        cmocka_unit_test(column_duplicate_rejected),
        cmocka_unit_test(column_after_row_rejected),
        cmocka_unit_test(column_index_lookup),
        cmocka_unit_test(row_starts_null),
        cmocka_unit_test(row_without_columns),
        cmocka_unit_test(rows_grow_to_service_limit),
        cmocka_unit_test(strdup_keeps_nul),
        cmocka_unit_test(strdup_large_string),
        cmocka_unit_test(string_keeps_nul_bytes),
        cmocka_unit_test(string_empty_value),
        cmocka_unit_test(string_keeps_scalar_text),
        cmocka_unit_test(string_object_compact),
        cmocka_unit_test(unknown_type_accepts_any),
        cmocka_unit_test(null_for_every_type),
        cmocka_unit_test(null_json_pointer),
        cmocka_unit_test(column_index_out_of_range),
        cmocka_unit_test(int_accepts_encodings),
        cmocka_unit_test(int_rejects_malformed),
        cmocka_unit_test(int_rejects_out_of_range),
        cmocka_unit_test(real_accepts_encodings),
        cmocka_unit_test(real_accepts_named_values),
        cmocka_unit_test(real_text_round_trips),
        cmocka_unit_test(real_rejects_malformed),
        cmocka_unit_test(real_rejects_overflow),
        cmocka_unit_test(bool_accepts_encodings),
        cmocka_unit_test(bool_rejects_others),
        cmocka_unit_test(datetime_fraction_digits),
        cmocka_unit_test(datetime_offsets),
        cmocka_unit_test(datetime_rejects_malformed),
        cmocka_unit_test(timespan_parses_forms),
        cmocka_unit_test(timespan_rejects_malformed),
        cmocka_unit_test(timespan_rejects_overflow),
        cmocka_unit_test(dynamic_keeps_key_order),
        cmocka_unit_test(dynamic_string_holding_json),
        cmocka_unit_test(dynamic_plain_string_stays),
        cmocka_unit_test(dynamic_escapes_nested_text),
        cmocka_unit_test(dynamic_keeps_utf8),
        cmocka_unit_test(dynamic_deep_nesting),
        cmocka_unit_test(error_names_row_and_column),
        cmocka_unit_test(error_hides_control_bytes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
