/*
 * Writers for the four output formats of `mdhunt hunt`: an aligned text
 * table for terminals, a JSON document, CSV and newline-delimited JSON.
 *
 * The text table is for people: control characters, bidirectional
 * overrides and invalid UTF-8 are shown as escapes so that a hostile
 * value cannot drive the terminal, and long cells are cut.  The other
 * formats are for programs and keep every value exactly, except for the
 * formula neutralisation of md_csv_write_field() and the replacement of
 * invalid UTF-8 by md_json_write_string().
 */
#ifndef MDHUNT_OUTPUT_H
#define MDHUNT_OUTPUT_H

#include <stddef.h>
#include <stdio.h>

#include "mdhunt/error.h"
#include "mdhunt/table.h"

enum md_format {
    MD_FORMAT_TABLE = 0,
    MD_FORMAT_JSON,
    MD_FORMAT_CSV,
    MD_FORMAT_NDJSON
};

/* Default width of a table column, in terminal columns. */
#define MD_OUTPUT_CELL_WIDTH 40

/* Identifier written as "format" in json output. */
#define MD_RESULT_FORMAT "mdhunt.result/1"

struct md_output_options {
    enum md_format format;
    int csv_raw;               /* csv: keep cells that look like formulas */
    const char *backend;       /* json: "graph", "defender"...; NULL: null */
    const char *query_sha256;  /* json: hex digest of the query; NULL: null */
    size_t max_cell_width;     /* table: terminal columns per cell, at
                                * least 2; 0 means MD_OUTPUT_CELL_WIDTH */
};

/* Set the defaults: table format, no csv_raw, no backend or digest,
 * MD_OUTPUT_CELL_WIDTH. */
void md_output_options_init(struct md_output_options *opts);

/* Look up a format by its name ("table", "json", "csv", "ndjson"; ASCII
 * case ignored).  Returns 0, or -1 with an MD_E_USAGE error listing the
 * names. */
int md_format_from_name(const char *name, enum md_format *format,
                        struct md_error *err);

const char *md_format_name(enum md_format format);

/*
 * Write t to out in opts->format and flush out.
 *
 * table:  header, a line of dashes, one line per row with the columns
 *         aligned by display width (int and real right-aligned), then
 *         "N rows", followed by ", possibly truncated at the service's
 *         limit of 100000 rows" when t->truncated is set.  Null is blank.
 * json:   one document {"format", "backend", "query_sha256", "truncated",
 *         "row_count", "schema": [{"name", "type", "service_type"}],
 *         "rows": [{column: value}]}, written row by row.
 * ndjson: one compact object per row, keys in column order.
 * csv:    RFC 4180 with CRLF line ends and a header row; see
 *         md_csv_write_field() for quoting and formula neutralisation.
 *
 * In json and ndjson a value keeps the JSON type the service sent
 * (cell kind): strings stay strings, numbers keep their text, objects and
 * arrays are written as compact JSON.
 *
 * Returns 0, or -1 with an MD_E_INTERNAL error when a write fails.  errno
 * is then left as the failed write set it, so a caller can end quietly
 * on EPIPE, which means that the reader closed the pipe.
 */
int md_output_write(FILE *out, const struct md_table *t,
                    const struct md_output_options *opts,
                    struct md_error *err);

/*
 * Write one CSV field (no separator, no line end).  The field is quoted
 * when it contains a comma, a double quote, CR or LF, and quotes inside
 * are doubled.  An empty string is written as "" so that it differs from
 * a null, which callers write as nothing.  Other bytes, NUL and invalid
 * UTF-8 included, are written unchanged.
 *
 * With neutralise set, a value starting with '=', '+', '-', '@', tab or
 * CR gets a leading single quote, so that spreadsheets show it as text
 * instead of evaluating it as a formula.
 *
 * Returns 0, or -1 when a write failed (errno as the write set it).
 */
int md_csv_write_field(FILE *out, const char *s, size_t len, int neutralise);

/*
 * Write len bytes of s as a quoted JSON string.  '"', '\', control
 * characters (NUL as \u0000) and U+2028/U+2029 are escaped, the latter
 * two so that the output is also valid JavaScript.  Each byte that is not
 * part of valid UTF-8 is replaced by \ufffd, because JSON text must be
 * Unicode.  Readers that need the exact bytes use csv.
 *
 * Returns 0, or -1 when a write failed (errno as the write set it).
 */
int md_json_write_string(FILE *out, const char *s, size_t len);

/*
 * Compute the display width of UTF-8 text as md_output_write() shows it
 * in a table.  An escape counts its length.  Combining marks, zero-width
 * joiners and variation selectors count 0.  East Asian wide and fullwidth
 * characters and most emoji count 2, and everything else counts 1.  The
 * result does not depend on the process locale.
 */
size_t md_display_width(const char *s, size_t len);

#endif
