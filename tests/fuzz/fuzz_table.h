/*
 * Output checks shared by the harnesses that end with a result table:
 * write the table in every format and check what each format promises.
 */
#ifndef MDHUNT_FUZZ_TABLE_H
#define MDHUNT_FUZZ_TABLE_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "mdhunt/output.h"
#include "mdhunt/table.h"

/* Write t in format to a new memory buffer (*text, *len; the caller frees
 * *text).  Returns md_output_write's result, or -1 when no stream could
 * be opened. */
static inline int fuzz_render(const struct md_table *t,
                              const struct md_output_options *opts,
                              char **text, size_t *len)
{
    struct md_error err;
    FILE *f;
    int rc;

    *text = NULL;
    *len = 0;
    f = open_memstream(text, len);
    if (f == NULL)
        return -1;
    rc = md_output_write(f, t, opts, &err);
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

/* JSON output is one document with the row count and one object per
 * row. */
static inline void fuzz_check_json(const struct md_table *t,
                                   const char *text, size_t len)
{
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, JSON_ALLOW_NUL, &jerr);
    json_t *rows = json_object_get(doc, "rows");

    FUZZ_CHECK(doc != NULL);
    FUZZ_CHECK(json_integer_value(json_object_get(doc, "row_count"))
               == (json_int_t)t->nrows);
    FUZZ_CHECK(json_array_size(rows) == t->nrows);
    FUZZ_CHECK(json_array_size(json_object_get(doc, "schema"))
               == t->ncolumns);
    json_decref(doc);
}

/* NDJSON output is one JSON object per line and per row. */
static inline void fuzz_check_ndjson(const struct md_table *t,
                                     const char *text, size_t len)
{
    size_t lines = 0;
    size_t start = 0;

    for (size_t i = 0; i < len; i++) {
        json_error_t jerr;
        json_t *row;

        if (text[i] != '\n')
            continue;
        row = json_loadb(text + start, i - start, JSON_ALLOW_NUL, &jerr);
        FUZZ_CHECK(json_is_object(row));
        json_decref(row);
        lines++;
        start = i + 1;
    }
    FUZZ_CHECK(start == len);
    FUZZ_CHECK(lines == t->nrows);
}

/* CSV output has a header record and one record per row, whatever the
 * values contain: count the CRLF line ends outside quoted fields. */
static inline void fuzz_check_csv(const struct md_table *t,
                                  const char *text, size_t len)
{
    size_t records = 0;
    int quoted = 0;

    if (t->ncolumns == 0) {
        FUZZ_CHECK(len == 0);
        return;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '"')
            quoted = !quoted;
        else if (!quoted && text[i] == '\r') {
            FUZZ_CHECK(i + 1 < len && text[i + 1] == '\n');
            records++;
            i++;
        } else {
            FUZZ_CHECK(quoted || text[i] != '\n');
        }
    }
    FUZZ_CHECK(!quoted);
    FUZZ_CHECK(records == t->nrows + 1);
}

/*
 * The text table reaches terminals, so it must contain no control character
 * other than LF, no C1 control and no bidirectional formatting character
 * (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and no line or
 * paragraph separator (U+2028, U+2029).
 */
static inline void fuzz_check_table(const char *text, size_t len)
{
    const unsigned char *u = (const unsigned char *)text;

    for (size_t i = 0; i < len; i++) {
        FUZZ_CHECK(u[i] >= 0x20 || u[i] == '\n');
        FUZZ_CHECK(u[i] != 0x7f);
        if (i + 1 < len) {
            FUZZ_CHECK(!(u[i] == 0xc2 && u[i + 1] >= 0x80
                         && u[i + 1] < 0xa0));
            FUZZ_CHECK(!(u[i] == 0xd8 && u[i + 1] == 0x9c));
        }
        if (i + 2 < len && u[i] == 0xe2 && u[i + 1] == 0x80) {
            FUZZ_CHECK(u[i + 2] != 0x8e && u[i + 2] != 0x8f);
            FUZZ_CHECK(u[i + 2] < 0xa8 || u[i + 2] > 0xae);
        }
        if (i + 2 < len && u[i] == 0xe2 && u[i + 1] == 0x81)
            FUZZ_CHECK(u[i + 2] < 0xa6 || u[i + 2] > 0xa9);
    }
}

/*
 * Write t in all four formats and check each.  choice picks the options
 * that vary: bit 0 csv_raw, bits 1-3 the table's cell width.
 */
static inline void fuzz_check_outputs(const struct md_table *t,
                                      unsigned choice)
{
    struct md_output_options opts;
    char *text;
    size_t len;

    md_output_options_init(&opts);
    opts.csv_raw = choice & 1;
    opts.max_cell_width = 2 + ((choice >> 1) & 7) * 6;
    opts.backend = "graph";
    opts.query_sha256 = "00";

    opts.format = MD_FORMAT_JSON;
    if (fuzz_render(t, &opts, &text, &len) == 0)
        fuzz_check_json(t, text, len);
    free(text);

    opts.format = MD_FORMAT_NDJSON;
    if (fuzz_render(t, &opts, &text, &len) == 0)
        fuzz_check_ndjson(t, text, len);
    free(text);

    opts.format = MD_FORMAT_CSV;
    if (fuzz_render(t, &opts, &text, &len) == 0)
        fuzz_check_csv(t, text, len);
    free(text);

    opts.format = MD_FORMAT_TABLE;
    if (fuzz_render(t, &opts, &text, &len) == 0)
        fuzz_check_table(text, len);
    free(text);
}

#endif
