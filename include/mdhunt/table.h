/*
 * The result table: the one in-memory shape that every backend fills and
 * every writer reads.
 *
 * Every string the table holds lives in an arena owned by the table and
 * is freed by md_table_free().  Cell strings carry their length, because
 * a hostile "\u0000" inside a device name must neither truncate the value
 * nor fail the reply.
 */
#ifndef MDHUNT_TABLE_H
#define MDHUNT_TABLE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"

/* Canonical column types, the same whichever backend filled the table. */
enum md_type {
    MD_T_STRING = 0,
    MD_T_INT,
    MD_T_REAL,
    MD_T_BOOL,
    MD_T_DATETIME,
    MD_T_TIMESPAN,
    MD_T_GUID,
    MD_T_DYNAMIC,
    MD_T_UNKNOWN
};

/* How the service encoded a cell in JSON, so that json and ndjson output
 * can write the value as the service typed it. */
enum md_json_kind {
    MD_J_NULL = 0,
    MD_J_STRING,
    MD_J_INTEGER,
    MD_J_REAL,
    MD_J_BOOL,
    MD_J_OBJECT,   /* text holds compact JSON */
    MD_J_ARRAY     /* text holds compact JSON */
};

struct md_column {
    char *name;          /* as the service sent it */
    enum md_type type;
    char *service_type;  /* the service's own type name, e.g. "DateTime" */
};

/*
 * A cell.  kind is the JSON type the service used for the value.  text/len
 * contain the value as the service wrote it: the bytes of a JSON string,
 * the text of a number ("42", "1.5"), "true"/"false" for a bool and
 * compact JSON for an object or array.  A real is written back with the
 * fewest of 15, 16 or 17 significant digits that read back exactly.  A
 * null cell has kind MD_J_NULL, text "" and len 0.
 *
 * The typed member that matches the column's type is set too:
 *   MD_T_INT      -> i
 *   MD_T_REAL     -> r
 *   MD_T_BOOL     -> b
 *   MD_T_DATETIME -> t
 *   MD_T_TIMESPAN -> i (100-ns ticks)
 */
struct md_cell {
    enum md_json_kind kind;
    const char *text;
    size_t len;
    union {
        int64_t i;
        double r;
        int b;
        md_instant t;
    } v;
};

struct md_table {
    struct md_column *columns;
    size_t ncolumns;
    struct md_cell *cells;     /* row-major: cells[row * ncolumns + col] */
    size_t nrows;
    size_t rows_cap;
    int truncated;             /* possibly truncated by the service */
    struct md_arena *arena;    /* private */
};

/* The row limit of Defender and Graph advanced hunting; a result of that
 * many rows is flagged as possibly truncated. */
#define MD_SERVICE_ROW_LIMIT 100000

/* Create an empty table; returns NULL when out of memory.  Free it with
 * md_table_free(). */
struct md_table *md_table_new(void);
void md_table_free(struct md_table *t);

/* Map a service type name ("DateTime", "Int64", "datetime", "long" ...)
 * to a canonical type, case-insensitively.  Unknown names give
 * MD_T_UNKNOWN, never an error. */
enum md_type md_type_from_service_name(const char *name);

/* Canonical type name: "string", "int", "real", "bool", "datetime",
 * "timespan", "guid", "dynamic", "unknown". */
const char *md_type_name(enum md_type type);

/* Add a column; columns must all be added before the first row.  The
 * type comes from md_type_from_service_name(service_type); a NULL
 * service_type is stored as "" and gives MD_T_UNKNOWN.  Duplicate names
 * and a column past the 10,000th are rejected (service errors, the first
 * naming the column). */
int md_table_add_column(struct md_table *t, const char *name,
                        const char *service_type, struct md_error *err);

/* Index of a column by exact name, or by ASCII case-insensitive name when
 * no exact match exists; -1 when absent. */
int md_table_column_index(const struct md_table *t, const char *name);

/* Append a row of null cells and return a pointer to its first cell
 * (valid until the next md_table_add_row), or NULL when out of memory.
 * With no columns the pointer addresses no cell and must not be read. */
struct md_cell *md_table_add_row(struct md_table *t);

static inline struct md_cell *md_table_cell(const struct md_table *t,
                                            size_t row, size_t col)
{
    return &t->cells[row * t->ncolumns + col];
}

/*
 * Set a cell from a JSON value the service sent for column col, converting
 * it to the column's type.  Accepted encodings per type:
 *   string/guid/unknown: any scalar (numbers and bools keep their text);
 *                        objects and arrays become compact JSON
 *   int:      JSON integer, a JSON real with an integral value, or a
 *             string of decimal digits with an optional sign
 *   real:     JSON number, or a numeric string ("NaN", "Infinity" too)
 *   bool:     true/false, "true"/"false" (any case), 0/1
 *   datetime: a string md_time_parse() accepts
 *   timespan: a .NET TimeSpan string "[-][d.]hh:mm:ss[.fffffff]"
 *   dynamic:  any JSON value; a string whose text is a JSON object or
 *             array becomes that value (Log Analytics sends them so)
 * null is null for every type.  A value that does not fit its column is a
 * service error (MD_E_SERVICE) naming the column, the row (1-based) and
 * the value's JSON type.  cell must come from md_table_add_row() of t.
 */
int md_table_set_cell_json(struct md_table *t, struct md_cell *cell,
                           size_t col, json_t *value, struct md_error *err);

/* Copy len bytes into the table's arena, NUL-terminated.  Returns NULL when
 * out of memory. */
char *md_table_strdup(struct md_table *t, const char *s, size_t len);

/*
 * Parse a service reply with JSON_ALLOW_NUL.  An escape of an unpaired
 * UTF-16 surrogate ("\uD800" alone), which Windows file names can carry
 * into the telemetry and which jansson rejects, is read as U+FFFD instead
 * of failing the whole reply.  Returns a new reference, or NULL with jerr
 * filled.
 */
json_t *md_json_load_reply(const char *body, size_t len, json_error_t *jerr);

#endif
