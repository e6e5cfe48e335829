/*
 * Fuzz the result table and the four output writers with hostile cell
 * values.
 *
 * Input: one byte of output options (see fuzz_check_outputs()), one byte
 * giving the number of columns (1 to 8), one byte per column choosing its
 * service type, then a JSON array.  When the array's first element is an
 * array of strings, those are the column names.  Every other element
 * that is an array is a row, whose values md_table_set_cell_json() sets.
 * A value the column rejects leaves the cell null.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "fuzz_common.h"
#include "fuzz_table.h"
#include "mdhunt/table.h"

#define FUZZ_OUTPUT_MAX_COLUMNS 8

/* Service type names, one per canonical type and a few spellings. */
static const char *const fuzz_output_types[] = {
    "String", "Int64", "Double", "Boolean", "DateTime", "TimeSpan",
    "Guid", "Dynamic", "Object", "long", "real", "uniqueid", "nonsense",
    ""
};

#define FUZZ_OUTPUT_NTYPES \
    (sizeof(fuzz_output_types) / sizeof(fuzz_output_types[0]))

/* Add the columns: names from names (a JSON array) where it contains a
 * string, otherwise "c<index>".  Returns -1 when a column is rejected. */
static int fuzz_output_columns(struct md_table *t, size_t ncolumns,
                               const unsigned *types, json_t *names)
{
    struct md_error err;

    for (size_t col = 0; col < ncolumns; col++) {
        json_t *name = json_array_get(names, col);
        char fallback[24];

        snprintf(fallback, sizeof(fallback), "c%zu", col);
        if (md_table_add_column(t, json_is_string(name)
                                       ? json_string_value(name)
                                       : fallback,
                                fuzz_output_types[types[col]],
                                &err) != 0)
            return -1;
    }
    return 0;
}

/* Append one row from a JSON array; values beyond the columns are
 * ignored and a rejected value becomes null. */
static int fuzz_output_row(struct md_table *t, json_t *values)
{
    struct md_error err;
    struct md_cell *cells = md_table_add_row(t);

    if (cells == NULL)
        return -1;
    for (size_t col = 0; col < t->ncolumns; col++) {
        json_t *value = json_array_get(values, col);

        if (value != NULL
            && md_table_set_cell_json(t, &cells[col], col, value,
                                      &err) != 0) {
            FUZZ_CHECK(err.kind == MD_E_SERVICE);
            cells[col].kind = MD_J_NULL;
            cells[col].text = "";
            cells[col].len = 0;
        }
    }
    return 0;
}

static int fuzz_output(const uint8_t *data, size_t size)
{
    struct fuzz_reader r = { data, size };
    unsigned types[FUZZ_OUTPUT_MAX_COLUMNS];
    struct md_table *t = NULL;
    json_error_t jerr;
    json_t *doc = NULL;
    json_t *first;
    json_t *row;
    unsigned choice;
    size_t ncolumns;
    size_t start = 0;
    size_t i;

    fuzz_quiet_logging();
    choice = fuzz_take_byte(&r);
    ncolumns = 1 + fuzz_take_byte(&r) % FUZZ_OUTPUT_MAX_COLUMNS;
    for (i = 0; i < ncolumns; i++)
        types[i] = fuzz_take_byte(&r) % FUZZ_OUTPUT_NTYPES;
    doc = json_loadb((const char *)r.data, r.size,
                     JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!json_is_array(doc))
        goto out;

    t = md_table_new();
    if (t == NULL)
        goto out;
    first = json_array_get(doc, 0);
    if (json_is_array(first) && json_is_string(json_array_get(first, 0)))
        start = 1;
    if (fuzz_output_columns(t, ncolumns, types,
                            start == 1 ? first : NULL) != 0)
        goto out;
    for (i = start; i < json_array_size(doc); i++) {
        row = json_array_get(doc, i);
        if (json_is_array(row) && fuzz_output_row(t, row) != 0)
            goto out;
    }
    fuzz_check_outputs(t, choice);
out:
    md_table_free(t);
    json_decref(doc);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_output(data, size);
}
#endif
