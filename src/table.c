/*
 * The result table: columns, a row-major cell array and an arena that owns
 * every string.
 *
 * A 100,000-row reply of 10 columns contains a million strings.  They are
 * bump-allocated from large chunks and the cell array grows by doubling,
 * so filling such a table costs a few hundred mallocs in all.
 */
#include "mdhunt/table.h"

#include "mdhunt/buf.h"
#include "mdhunt/log.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if LLONG_MAX != INT64_MAX
#error "json_int_t (long long) is expected to be 64 bits wide"
#endif

/* Chunk sizes double from the first to the last and then stay there. */
#define ARENA_FIRST_CHUNK (64u * 1024u)
#define ARENA_LAST_CHUNK (4u * 1024u * 1024u)

#define TICKS_PER_MINUTE (60 * MD_TICKS_PER_SECOND)
#define TICKS_PER_HOUR (60 * TICKS_PER_MINUTE)
#define TICKS_PER_DAY (24 * TICKS_PER_HOUR)

/* Longest excerpt of a rejected value quoted in an error message. */
#define EXCERPT_MAX 40

/* Maximum number of columns of a table.  Advanced hunting tables have
 * fewer than 100, and the duplicate check below takes time quadratic in
 * the count. */
#define COLUMNS_MAX 10000

struct md_arena_chunk {
    struct md_arena_chunk *next;
    size_t size;
    size_t used;
    char data[];
};

struct md_arena {
    struct md_arena_chunk *head;   /* the chunk being filled */
    size_t next_size;
};

/* The cell of a row without columns, whose address md_table_add_row()
 * returns; it is never read or written. */
static struct md_cell no_cells;

static void *arena_alloc(struct md_arena *a, size_t size)
{
    struct md_arena_chunk *c = a->head;
    size_t chunk_size;

    if (c != NULL && c->size - c->used >= size) {
        void *p = c->data + c->used;

        c->used += size;
        return p;
    }

    /* A large request gets a chunk of its own, linked behind the head so
     * that the head keeps its free space for the small strings to come. */
    chunk_size = a->next_size;
    if (size > chunk_size / 4)
        chunk_size = size;
    if (chunk_size > SIZE_MAX - sizeof(*c))
        return NULL;
    c = malloc(sizeof(*c) + chunk_size);
    if (c == NULL)
        return NULL;
    c->size = chunk_size;
    c->used = size;
    if (chunk_size == size && a->head != NULL) {
        c->next = a->head->next;
        a->head->next = c;
    } else {
        c->next = a->head;
        a->head = c;
        if (a->next_size < ARENA_LAST_CHUNK)
            a->next_size *= 2;
    }
    return c->data;
}

static void arena_free(struct md_arena *a)
{
    struct md_arena_chunk *c;

    if (a == NULL)
        return;
    c = a->head;
    while (c != NULL) {
        struct md_arena_chunk *next = c->next;

        free(c);
        c = next;
    }
    free(a);
}

struct md_table *md_table_new(void)
{
    struct md_table *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    t->arena = calloc(1, sizeof(*t->arena));
    if (t->arena == NULL) {
        free(t);
        return NULL;
    }
    t->arena->next_size = ARENA_FIRST_CHUNK;
    return t;
}

void md_table_free(struct md_table *t)
{
    if (t == NULL)
        return;
    free(t->columns);
    free(t->cells);
    arena_free(t->arena);
    free(t);
}

char *md_table_strdup(struct md_table *t, const char *s, size_t len)
{
    char *p;

    if (len == SIZE_MAX)
        return NULL;
    p = arena_alloc(t->arena, len + 1);
    if (p == NULL)
        return NULL;
    if (len > 0)
        memcpy(p, s, len);
    p[len] = '\0';
    return p;
}


/* Column types */

struct type_name {
    const char *name;
    enum md_type type;
};

/* .NET names (Defender, Graph) and Kusto names (Log Analytics); the
 * lookup ignores case, so "String" also covers Kusto's "string". */
static const struct type_name type_names[] = {
    {"String", MD_T_STRING},     {"DateTime", MD_T_DATETIME},
    {"Int64", MD_T_INT},         {"Int32", MD_T_INT},
    {"Int16", MD_T_INT},         {"Byte", MD_T_INT},
    {"SByte", MD_T_INT},         {"UInt64", MD_T_INT},
    {"UInt32", MD_T_INT},        {"UInt16", MD_T_INT},
    {"Boolean", MD_T_BOOL},      {"Double", MD_T_REAL},
    {"Single", MD_T_REAL},       {"Decimal", MD_T_REAL},
    {"Guid", MD_T_GUID},         {"TimeSpan", MD_T_TIMESPAN},
    {"Object", MD_T_DYNAMIC},    {"Dynamic", MD_T_DYNAMIC},
    {"long", MD_T_INT},          {"int", MD_T_INT},
    {"real", MD_T_REAL},         {"bool", MD_T_BOOL},
    {"date", MD_T_DATETIME},     {"time", MD_T_TIMESPAN},
    {"uniqueid", MD_T_GUID},
};

static const char *const canonical_names[] = {
    [MD_T_STRING] = "string",     [MD_T_INT] = "int",
    [MD_T_REAL] = "real",         [MD_T_BOOL] = "bool",
    [MD_T_DATETIME] = "datetime", [MD_T_TIMESPAN] = "timespan",
    [MD_T_GUID] = "guid",         [MD_T_DYNAMIC] = "dynamic",
    [MD_T_UNKNOWN] = "unknown",
};

static int ascii_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Compare len bytes of s with the NUL-terminated word, ignoring ASCII
 * case; s must be exactly as long as word. */
static int equals_ignoring_case(const char *s, size_t len, const char *word)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (word[i] == '\0' ||
            ascii_lower((unsigned char)s[i]) != ascii_lower(word[i]))
            return 0;
    }
    return word[len] == '\0';
}

enum md_type md_type_from_service_name(const char *name)
{
    size_t i;

    if (name == NULL)
        return MD_T_UNKNOWN;

    /* Some Kusto clients report the full .NET name, "System.String". */
    if (strlen(name) > 7 && equals_ignoring_case(name, 7, "system."))
        name += 7;

    for (i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++) {
        if (md_strcasecmp(name, type_names[i].name) == 0)
            return type_names[i].type;
    }
    return MD_T_UNKNOWN;
}

const char *md_type_name(enum md_type type)
{
    if ((unsigned)type > MD_T_UNKNOWN)
        return "unknown";
    return canonical_names[type];
}

/* Columns and rows */

/* Copy a service-supplied name into buf for an error message, with every
 * byte outside printable ASCII replaced by '?' so that a hostile name
 * cannot reach the terminal as a control sequence. */
static const char *printable(const char *s, size_t len, char *buf,
                             size_t size)
{
    size_t i;
    size_t n = 0;

    for (i = 0; i < len && n + 4 < size; i++) {
        unsigned char c = (unsigned char)s[i];

        buf[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (i < len) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

int md_table_add_column(struct md_table *t, const char *name,
                        const char *service_type, struct md_error *err)
{
    char shown[EXCERPT_MAX + 4];
    struct md_column *columns;
    struct md_column *column;
    size_t i;

    if (name == NULL)
        return md_error_set(err, MD_E_INTERNAL,
                            "md_table_add_column: column name is NULL");
    printable(name, strlen(name), shown, sizeof(shown));
    if (t->nrows > 0)
        return md_error_set(err, MD_E_INTERNAL,
                            "column \"%s\" added after the first row; "
                            "add every column before the rows", shown);
    if (t->ncolumns >= COLUMNS_MAX)
        return md_error_set(err, MD_E_SERVICE,
                            "the result has more than %d columns; select "
                            "fewer in the query, for example with project",
                            COLUMNS_MAX);

    for (i = 0; i < t->ncolumns; i++) {
        if (strcmp(t->columns[i].name, name) == 0)
            return md_error_set(err, MD_E_SERVICE,
                                "the result schema lists column \"%s\" "
                                "twice (columns %zu and %zu); rename one "
                                "in the query, for example with "
                                "project-rename", shown, i + 1,
                                t->ncolumns + 1);
    }

    if (t->ncolumns >= SIZE_MAX / sizeof(*columns) - 1)
        goto oom;
    columns = realloc(t->columns, (t->ncolumns + 1) * sizeof(*columns));
    if (columns == NULL)
        goto oom;
    t->columns = columns;
    column = &columns[t->ncolumns];

    if (service_type == NULL)
        service_type = "";
    column->name = md_table_strdup(t, name, strlen(name));
    column->service_type = md_table_strdup(t, service_type,
                                           strlen(service_type));
    if (column->name == NULL || column->service_type == NULL)
        goto oom;
    column->type = md_type_from_service_name(service_type);
    t->ncolumns++;
    return 0;

oom:
    return md_error_set(err, MD_E_INTERNAL,
                        "out of memory adding column \"%s\"", shown);
}

int md_table_column_index(const struct md_table *t, const char *name)
{
    size_t i;

    for (i = 0; i < t->ncolumns && i <= INT_MAX; i++) {
        if (strcmp(t->columns[i].name, name) == 0)
            return (int)i;
    }
    for (i = 0; i < t->ncolumns && i <= INT_MAX; i++) {
        if (md_strcasecmp(t->columns[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

static void set_null(struct md_cell *cell)
{
    cell->kind = MD_J_NULL;
    cell->text = "";
    cell->len = 0;
    cell->v.i = 0;
}

static int grow_rows(struct md_table *t)
{
    size_t cap = t->rows_cap != 0 ? t->rows_cap * 2 : 256;
    struct md_cell *cells;

    if (cap < t->rows_cap ||
        cap > SIZE_MAX / sizeof(*cells) / t->ncolumns)
        return -1;
    cells = realloc(t->cells, cap * t->ncolumns * sizeof(*cells));
    if (cells == NULL)
        return -1;
    t->cells = cells;
    t->rows_cap = cap;
    return 0;
}

struct md_cell *md_table_add_row(struct md_table *t)
{
    struct md_cell *row;
    size_t i;

    if (t->nrows == SIZE_MAX)
        return NULL;
    if (t->ncolumns == 0) {
        t->nrows++;
        return &no_cells;
    }
    if (t->nrows == t->rows_cap && grow_rows(t) != 0)
        return NULL;

    row = &t->cells[t->nrows * t->ncolumns];
    for (i = 0; i < t->ncolumns; i++)
        set_null(&row[i]);
    t->nrows++;
    return row;
}

/* Compact JSON for dynamic values */

/* Output of the serializer: with p NULL it only counts bytes, so that a
 * value is measured first and then written once into the arena. */
struct sink {
    char *p;
    size_t len;
};

static void sink_put(struct sink *s, const char *data, size_t len)
{
    if (s->p != NULL)
        memcpy(s->p + s->len, data, len);
    s->len += len;
}

/*
 * Format a finite double in the shortest of 15, 16 or 17 significant
 * digits that reads back to the same value, and keep it recognisable as
 * a real ("3.0", not "3").  buf needs 32 bytes.
 *
 * NOTE: snprintf and strtod follow LC_NUMERIC; mdhunt never calls
 * setlocale(), so the decimal point is '.'.
 */
static size_t format_real(double r, char *buf, size_t size)
{
    int precision;
    int n = 0;

    for (precision = 15; precision <= 17; precision++) {
        n = snprintf(buf, size, "%.*g", precision, r);
        if (strtod(buf, NULL) == r)
            break;
    }
    if (n > 0 && (size_t)n + 3 <= size && strpbrk(buf, ".eEin") == NULL) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    return n > 0 ? (size_t)n : 0;
}

/* Write a JSON string, which jansson has already checked to be UTF-8.
 * The separators U+2028 and U+2029 are escaped so that the text is also
 * valid JavaScript. */
static void sink_string(struct sink *s, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    size_t i;

    sink_put(s, "\"", 1);
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)str[i];
        char esc[7];
        size_t n = 0;

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            n = 2;
        } else if (c == '\r') {
            memcpy(esc, "\\r", 2);
            n = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            n = 2;
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            n = 6;
        } else if (c == 0xe2 && i + 2 < len &&
                   (unsigned char)str[i + 1] == 0x80 &&
                   ((unsigned char)str[i + 2] == 0xa8 ||
                    (unsigned char)str[i + 2] == 0xa9)) {
            memcpy(esc, (unsigned char)str[i + 2] == 0xa8 ? "\\u2028"
                                                          : "\\u2029", 6);
            n = 6;
        }
        if (n == 0)
            continue;
        sink_put(s, str + start, i - start);
        sink_put(s, esc, n);
        start = c == 0xe2 ? i + 3 : i + 1;
        if (c == 0xe2)
            i += 2;
    }
    sink_put(s, str + start, len - start);
    sink_put(s, "\"", 1);
}

/* Serialize value compactly in the key order of the reply, which jansson
 * keeps since version 2.8 (its changelog: "Always preserve insertion
 * order of object items").  jansson's parser bounds the nesting depth. */
static void sink_value(struct sink *s, json_t *value)
{
    char num[32];
    size_t n;
    size_t i;
    void *iter;

    switch (json_typeof(value)) {
    case JSON_OBJECT:
        sink_put(s, "{", 1);
        iter = json_object_iter(value);
        for (i = 0; iter != NULL; i++) {
            if (i > 0)
                sink_put(s, ",", 1);
            sink_string(s, json_object_iter_key(iter),
                        json_object_iter_key_len(iter));
            sink_put(s, ":", 1);
            sink_value(s, json_object_iter_value(iter));
            iter = json_object_iter_next(value, iter);
        }
        sink_put(s, "}", 1);
        break;
    case JSON_ARRAY:
        sink_put(s, "[", 1);
        for (i = 0; i < json_array_size(value); i++) {
            if (i > 0)
                sink_put(s, ",", 1);
            sink_value(s, json_array_get(value, i));
        }
        sink_put(s, "]", 1);
        break;
    case JSON_STRING:
        sink_string(s, json_string_value(value), json_string_length(value));
        break;
    case JSON_INTEGER:
        n = (size_t)snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                             json_integer_value(value));
        sink_put(s, num, n);
        break;
    case JSON_REAL:
        n = format_real(json_real_value(value), num, sizeof(num));
        sink_put(s, num, n);
        break;
    case JSON_TRUE:
        sink_put(s, "true", 4);
        break;
    case JSON_FALSE:
        sink_put(s, "false", 5);
        break;
    case JSON_NULL:
        sink_put(s, "null", 4);
        break;
    }
}

/* Cells */

static const char *json_kind_name(const json_t *value)
{
    switch (json_typeof(value)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "real";
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    case JSON_NULL:
        break;
    }
    return "null";
}

static size_t cell_row(const struct md_table *t, const struct md_cell *cell)
{
    uintptr_t base = (uintptr_t)t->cells;
    uintptr_t p = (uintptr_t)cell;

    if (t->ncolumns == 0 || p < base)
        return 0;
    return (p - base) / sizeof(*cell) / t->ncolumns + 1;
}

/*
 * Report a value that does not fit its column, for example
 *   row 3, column "Count" (Int64): expected an integer, got JSON string
 *   "12a"; convert the column in the query, for example with tostring()
 * A problem such as "out of 64-bit range", when given, follows the value.
 */
static int cell_error(const struct md_table *t, const struct md_cell *cell,
                      size_t col, json_t *value, const char *expected,
                      const char *problem, struct md_error *err)
{
    const struct md_column *column = &t->columns[col];
    char name[EXCERPT_MAX + 4];
    char excerpt[EXCERPT_MAX + 8];
    char text[EXCERPT_MAX + 4];
    char num[32];

    printable(column->name, strlen(column->name), name, sizeof(name));
    excerpt[0] = '\0';
    if (json_is_string(value)) {
        printable(json_string_value(value), json_string_length(value),
                  text, sizeof(text));
        snprintf(excerpt, sizeof(excerpt), " \"%s\"", text);
    } else if (json_is_integer(value)) {
        snprintf(excerpt, sizeof(excerpt), " %" JSON_INTEGER_FORMAT,
                 json_integer_value(value));
    } else if (json_is_real(value)) {
        format_real(json_real_value(value), num, sizeof(num));
        snprintf(excerpt, sizeof(excerpt), " %s", num);
    }

    return md_error_set(err, MD_E_SERVICE,
                        "row %zu, column \"%s\" (%s): expected %s, got "
                        "JSON %s%s%s%s; convert the column in the query, "
                        "for example with tostring()",
                        cell_row(t, cell), name, column->service_type,
                        expected, json_kind_name(value), excerpt,
                        problem != NULL ? ", " : "",
                        problem != NULL ? problem : "");
}

static int out_of_memory(const struct md_table *t,
                         const struct md_cell *cell, struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL,
                        "out of memory storing row %zu of the result",
                        cell_row(t, cell));
}

/* Store value's text and JSON kind in cell: the string's bytes, the
 * number's text, true/false or compact JSON. */
static int set_text(struct md_table *t, struct md_cell *cell, json_t *value,
                    struct md_error *err)
{
    char num[32];
    const char *s = NULL;
    size_t len = 0;
    struct sink sink = {NULL, 0};
    char *p;

    switch (json_typeof(value)) {
    case JSON_STRING:
        cell->kind = MD_J_STRING;
        s = json_string_value(value);
        len = json_string_length(value);
        break;
    case JSON_INTEGER:
        cell->kind = MD_J_INTEGER;
        len = (size_t)snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                               json_integer_value(value));
        s = num;
        break;
    case JSON_REAL:
        cell->kind = MD_J_REAL;
        len = format_real(json_real_value(value), num, sizeof(num));
        s = num;
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        /* Static text: a million booleans cost no arena space. */
        cell->kind = MD_J_BOOL;
        cell->text = json_is_true(value) ? "true" : "false";
        cell->len = strlen(cell->text);
        return 0;
    case JSON_OBJECT:
    case JSON_ARRAY:
        cell->kind = json_is_object(value) ? MD_J_OBJECT : MD_J_ARRAY;
        sink_value(&sink, value);
        p = sink.len < SIZE_MAX ? arena_alloc(t->arena, sink.len + 1)
                                : NULL;
        if (p == NULL)
            return out_of_memory(t, cell, err);
        sink.p = p;
        sink.len = 0;
        sink_value(&sink, value);
        p[sink.len] = '\0';
        cell->text = p;
        cell->len = sink.len;
        return 0;
    case JSON_NULL:
        set_null(cell);
        return 0;
    }

    if (len == 0) {
        cell->text = "";
        cell->len = 0;
        return 0;
    }
    p = md_table_strdup(t, s, len);
    if (p == NULL)
        return out_of_memory(t, cell, err);
    cell->text = p;
    cell->len = len;
    return 0;
}

/* Text to numbers and durations */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Parse "[+-]digits" filling all of s (NUL-terminated at s[len]).
 * Returns 0, -1 when malformed, -2 when out of range. */
static int parse_int64(const char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    char *end;
    long long v;

    if (len > 0 && (s[0] == '-' || s[0] == '+'))
        i = 1;
    if (i == len)
        return -1;
    for (; i < len; i++) {
        if (!is_digit(s[i]))
            return -1;
    }

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno == ERANGE)
        return -2;
    if (errno != 0 || end != s + len)
        return -1;
    *out = v;
    return 0;
}

/* Parse a decimal number "[+-](d+[.d*]|.d+)[(e|E)[+-]d+]" or one of the
 * .NET names "NaN", "Infinity", "-Infinity" (any case) filling all of s
 * (NUL-terminated at s[len]).  strtod alone would also take hexadecimal,
 * "inf" and leading spaces.  Returns 0, -1 when malformed, -2 when the
 * magnitude overflows a double; underflow gives the nearest double. */
static int parse_real(const char *s, size_t len, double *out)
{
    size_t i = 0;
    size_t digits = 0;
    char *end;
    double v;

    if (equals_ignoring_case(s, len, "nan")) {
        *out = NAN;
        return 0;
    }
    if (equals_ignoring_case(s, len, "infinity") ||
        equals_ignoring_case(s, len, "+infinity")) {
        *out = INFINITY;
        return 0;
    }
    if (equals_ignoring_case(s, len, "-infinity")) {
        *out = -INFINITY;
        return 0;
    }

    if (i < len && (s[i] == '-' || s[i] == '+'))
        i++;
    for (; i < len && is_digit(s[i]); i++)
        digits++;
    if (i < len && s[i] == '.') {
        for (i++; i < len && is_digit(s[i]); i++)
            digits++;
    }
    if (digits == 0)
        return -1;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '-' || s[i] == '+'))
            i++;
        if (i == len || !is_digit(s[i]))
            return -1;
        while (i < len && is_digit(s[i]))
            i++;
    }
    if (i != len)
        return -1;

    errno = 0;
    v = strtod(s, &end);
    if (end != s + len)
        return -1;
    if (errno == ERANGE && isinf(v))
        return -2;
    *out = v;
    return 0;
}

/* Read exactly count digits at *pos. */
static int read_fixed_digits(const char *s, size_t len, size_t *pos,
                             int count, int64_t *out)
{
    int64_t v = 0;
    int i;

    if (len - *pos < (size_t)count)
        return -1;
    for (i = 0; i < count; i++) {
        char c = s[*pos + (size_t)i];

        if (!is_digit(c))
            return -1;
        v = v * 10 + (c - '0');
    }
    *pos += (size_t)count;
    *out = v;
    return 0;
}

/*
 * Parse a .NET TimeSpan in its constant form "[-][d.]hh:mm:ss[.fffffff]"
 * into 100-ns ticks: hours 00-23, minutes and seconds 00-59, one to seven
 * fractional digits.  Returns 0, -1 when malformed, -2 when the value does
 * not fit in 64-bit ticks (beyond about 10.6 million days).
 */
static int parse_timespan(const char *s, size_t len, int64_t *out)
{
    size_t pos = 0;
    size_t start;
    int negative = 0;
    uint64_t days = 0;
    int64_t hours, minutes, seconds;
    int64_t fraction = 0;
    uint64_t ticks;
    uint64_t limit;

    if (pos < len && s[pos] == '-') {
        negative = 1;
        pos++;
    }

    /* A run of digits is the day count when a '.' follows it. */
    start = pos;
    while (pos < len && is_digit(s[pos]))
        pos++;
    if (pos < len && s[pos] == '.' && pos > start) {
        if (pos - start > 8)
            return -2;
        for (; start < pos; start++)
            days = days * 10 + (uint64_t)(s[start] - '0');
        pos++;
    } else {
        pos = start;
    }

    if (read_fixed_digits(s, len, &pos, 2, &hours) != 0 || pos >= len ||
        s[pos++] != ':' ||
        read_fixed_digits(s, len, &pos, 2, &minutes) != 0 || pos >= len ||
        s[pos++] != ':' ||
        read_fixed_digits(s, len, &pos, 2, &seconds) != 0)
        return -1;
    if (hours > 23 || minutes > 59 || seconds > 59)
        return -1;

    if (pos < len && s[pos] == '.') {
        int digits = 0;

        for (pos++; pos < len && is_digit(s[pos]) && digits < 7; pos++) {
            fraction = fraction * 10 + (s[pos] - '0');
            digits++;
        }
        if (digits == 0)
            return -1;
        for (; digits < 7; digits++)
            fraction *= 10;
    }
    if (pos != len)
        return -1;

    ticks = (uint64_t)(hours * TICKS_PER_HOUR + minutes * TICKS_PER_MINUTE +
                       seconds * MD_TICKS_PER_SECOND + fraction);
    limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    if (days > (limit - ticks) / (uint64_t)TICKS_PER_DAY)
        return -2;
    ticks += days * (uint64_t)TICKS_PER_DAY;
    if (negative)
        *out = ticks == (uint64_t)INT64_MAX + 1 ? INT64_MIN
                                                : -(int64_t)ticks;
    else
        *out = (int64_t)ticks;
    return 0;
}

/* Typed cells */

static int set_int(struct md_table *t, struct md_cell *cell, size_t col,
                   json_t *value, struct md_error *err)
{
    const char *expected = "an integer";
    int64_t v;
    double r;
    int rc;

    switch (json_typeof(value)) {
    case JSON_INTEGER:
        v = json_integer_value(value);
        break;
    case JSON_REAL:
        /* -2^63 and 2^63 are exact doubles, so the range check is exact
         * and the conversion below cannot overflow. */
        r = json_real_value(value);
        if (!(r >= -9223372036854775808.0 && r < 9223372036854775808.0) ||
            (double)(int64_t)r != r)
            return cell_error(t, cell, col, value, expected,
                              "not a 64-bit integer", err);
        v = (int64_t)r;
        break;
    case JSON_STRING:
        rc = parse_int64(json_string_value(value), json_string_length(value),
                         &v);
        if (rc != 0)
            return cell_error(t, cell, col, value, expected,
                              rc == -2 ? "out of 64-bit range" : NULL, err);
        break;
    default:
        return cell_error(t, cell, col, value, expected, NULL, err);
    }

    if (set_text(t, cell, value, err) != 0)
        return -1;
    cell->v.i = v;
    return 0;
}

static int set_real(struct md_table *t, struct md_cell *cell, size_t col,
                    json_t *value, struct md_error *err)
{
    const char *expected = "a number";
    double r;
    int rc;

    switch (json_typeof(value)) {
    case JSON_INTEGER:
        r = (double)json_integer_value(value);
        break;
    case JSON_REAL:
        r = json_real_value(value);
        break;
    case JSON_STRING:
        rc = parse_real(json_string_value(value), json_string_length(value),
                        &r);
        if (rc != 0)
            return cell_error(t, cell, col, value, expected,
                              rc == -2 ? "out of double range" : NULL, err);
        break;
    default:
        return cell_error(t, cell, col, value, expected, NULL, err);
    }

    if (set_text(t, cell, value, err) != 0)
        return -1;
    cell->v.r = r;
    return 0;
}

static int set_bool(struct md_table *t, struct md_cell *cell, size_t col,
                    json_t *value, struct md_error *err)
{
    const char *expected = "true, false, 0 or 1";
    const char *s;
    size_t len;
    int b;

    switch (json_typeof(value)) {
    case JSON_TRUE:
    case JSON_FALSE:
        b = json_is_true(value);
        break;
    case JSON_INTEGER:
        if (json_integer_value(value) != 0 && json_integer_value(value) != 1)
            return cell_error(t, cell, col, value, expected, NULL, err);
        b = json_integer_value(value) == 1;
        break;
    case JSON_STRING:
        s = json_string_value(value);
        len = json_string_length(value);
        if (equals_ignoring_case(s, len, "true"))
            b = 1;
        else if (equals_ignoring_case(s, len, "false"))
            b = 0;
        else
            return cell_error(t, cell, col, value, expected, NULL, err);
        break;
    default:
        return cell_error(t, cell, col, value, expected, NULL, err);
    }

    if (set_text(t, cell, value, err) != 0)
        return -1;
    cell->v.b = b;
    return 0;
}

static int set_datetime(struct md_table *t, struct md_cell *cell,
                        size_t col, json_t *value, struct md_error *err)
{
    const char *expected = "an ISO 8601 timestamp such as "
                           "2025-03-01T12:00:00.1234567Z";
    md_instant instant;

    if (!json_is_string(value) ||
        md_time_parse(json_string_value(value), json_string_length(value),
                      &instant) != 0)
        return cell_error(t, cell, col, value, expected, NULL, err);

    if (set_text(t, cell, value, err) != 0)
        return -1;
    cell->v.t = instant;
    return 0;
}

static int set_timespan(struct md_table *t, struct md_cell *cell,
                        size_t col, json_t *value, struct md_error *err)
{
    const char *expected = "a time span such as 1.02:03:04.5";
    int64_t ticks;
    int rc;

    if (!json_is_string(value))
        return cell_error(t, cell, col, value, expected, NULL, err);
    rc = parse_timespan(json_string_value(value), json_string_length(value),
                        &ticks);
    if (rc != 0)
        return cell_error(t, cell, col, value, expected,
                          rc == -2 ? "out of range" : NULL, err);

    if (set_text(t, cell, value, err) != 0)
        return -1;
    cell->v.i = ticks;
    return 0;
}

/* Log Analytics sends dynamic values as strings that contain JSON, so such
 * a string becomes the object or array it contains.  Any other string
 * stays a string. */
static int set_dynamic(struct md_table *t, struct md_cell *cell,
                       json_t *value, struct md_error *err)
{
    const char *s;
    size_t len;
    size_t i = 0;
    json_t *parsed;
    int rc;

    if (!json_is_string(value))
        return set_text(t, cell, value, err);

    s = json_string_value(value);
    len = json_string_length(value);
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' ||
                       s[i] == '\n'))
        i++;
    if (i == len || (s[i] != '{' && s[i] != '['))
        return set_text(t, cell, value, err);

    parsed = json_loadb(s, len, JSON_ALLOW_NUL, NULL);
    if (parsed == NULL)
        return set_text(t, cell, value, err);
    rc = set_text(t, cell, parsed, err);
    json_decref(parsed);
    return rc;
}

int md_table_set_cell_json(struct md_table *t, struct md_cell *cell,
                           size_t col, json_t *value, struct md_error *err)
{
    if (col >= t->ncolumns)
        return md_error_set(err, MD_E_INTERNAL,
                            "column index %zu out of range: the table has "
                            "%zu columns", col, t->ncolumns);
    if (value == NULL || json_is_null(value)) {
        set_null(cell);
        return 0;
    }

    switch (t->columns[col].type) {
    case MD_T_INT:
        return set_int(t, cell, col, value, err);
    case MD_T_REAL:
        return set_real(t, cell, col, value, err);
    case MD_T_BOOL:
        return set_bool(t, cell, col, value, err);
    case MD_T_DATETIME:
        return set_datetime(t, cell, col, value, err);
    case MD_T_TIMESPAN:
        return set_timespan(t, cell, col, value, err);
    case MD_T_DYNAMIC:
        return set_dynamic(t, cell, value, err);
    case MD_T_STRING:
    case MD_T_GUID:
    case MD_T_UNKNOWN:
        break;
    }
    return set_text(t, cell, value, err);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The code unit of a "\uXXXX" escape at s (6 bytes available), or -1. */
static long escape_unit(const char *s, size_t avail)
{
    long v = 0;

    if (avail < 6 || s[0] != '\\' || s[1] != 'u')
        return -1;
    for (int i = 2; i < 6; i++) {
        int h = hex_value(s[i]);

        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/*
 * Replace every "\uD800".."\uDFFF" escape that is not part of a valid
 * surrogate pair with "\uFFFD" (the same length), inside JSON strings.
 * Returns the number of replacements.
 */
static size_t replace_lone_surrogates(char *s, size_t len)
{
    size_t count = 0;
    int in_string = 0;

    for (size_t i = 0; i < len; i++) {
        long unit;

        if (!in_string) {
            if (s[i] == '"')
                in_string = 1;
            continue;
        }
        if (s[i] == '"') {
            in_string = 0;
            continue;
        }
        if (s[i] != '\\' || i + 1 >= len)
            continue;
        unit = escape_unit(s + i, len - i);
        if (unit < 0xD800 || unit > 0xDFFF) {
            i += unit >= 0 ? 5 : 1;     /* skip the escape */
            continue;
        }
        if (unit <= 0xDBFF) {
            long low = escape_unit(s + i + 6, len - i - 6);

            if (low >= 0xDC00 && low <= 0xDFFF) {
                i += 11;                /* a valid pair */
                continue;
            }
        }
        memcpy(s + i, "\\ufffd", 6);
        count++;
        i += 5;
    }
    return count;
}

json_t *md_json_load_reply(const char *body, size_t len, json_error_t *jerr)
{
    json_t *root;
    char *copy;

    /* Fast path: most replies hold no surrogate escape at all.  An empty
     * body may come as NULL, which memmem() must not see. */
    if (body == NULL || len == 0 ||
        (memmem(body, len, "\\ud", 3) == NULL &&
         memmem(body, len, "\\uD", 3) == NULL))
        return json_loadb(body != NULL ? body : "", len, JSON_ALLOW_NUL,
                          jerr);

    copy = malloc(len > 0 ? len : 1);
    if (copy == NULL) {
        if (jerr != NULL)
            snprintf(jerr->text, sizeof(jerr->text), "out of memory");
        return NULL;
    }
    memcpy(copy, body, len);
    if (replace_lone_surrogates(copy, len) > 0)
        md_debug("reply: unpaired UTF-16 surrogates replaced by U+FFFD");
    root = json_loadb(copy, len, JSON_ALLOW_NUL, jerr);
    free(copy);
    return root;
}
