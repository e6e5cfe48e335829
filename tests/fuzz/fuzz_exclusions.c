/*
 * Fuzz the exclusions file loader (YAML) and the condition matchers.
 * Every condition of a file that loads is tried on a few hostile values,
 * and the input is also folded with md_exclusion_fold().
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "mdhunt/exclusions.h"
#include "mdhunt/table.h"

/* 2025-01-01T00:00:00Z, the "now" against which expiries are checked. */
#define FUZZ_EXCLUSIONS_NOW (INT64_C(1735689600) * MD_TICKS_PER_SECOND)

#define FUZZ_EXCLUSIONS_MAX_COLUMNS 8

#define FUZZ_VALUE(s) { s, sizeof(s) - 1 }

/* Values a result cell could hold: empty, NUL inside, non-ASCII letters,
 * a Windows path, a long run and invalid UTF-8 with a bidi override. */
static const struct {
    const char *text;
    size_t len;
} fuzz_exclusions_values[] = {
    FUZZ_VALUE(""),
    FUZZ_VALUE("a\0b"),
    FUZZ_VALUE("\xc3\x89" "COLE \xce\xa3\xcf\x83"),
    FUZZ_VALUE("C:\\Windows\\System32\\*.exe"),
    FUZZ_VALUE("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"),
    FUZZ_VALUE("\xff\xfe\xe2\x80\xae"),
};

#define FUZZ_EXCLUSIONS_NVALUES \
    (sizeof(fuzz_exclusions_values) / sizeof(fuzz_exclusions_values[0]))

/*
 * Build a result whose columns are the condition columns of x (up to
 * FUZZ_EXCLUSIONS_MAX_COLUMNS, alternately string and dynamic) with one
 * row per hostile value and a row of JSON arrays.  Returns NULL when
 * the table could not be built.
 */
static struct md_table *fuzz_exclusions_table(const struct md_exclusions *x)
{
    struct md_table *t = md_table_new();
    struct md_error err;
    json_t *values[FUZZ_EXCLUSIONS_NVALUES + 1];
    size_t nvalues = 0;
    int ok = t != NULL;

    for (size_t i = 0; ok && i < x->nentries; i++) {
        const struct md_exclusion *e = &x->entries[i];

        for (size_t c = 0; c < e->nconditions; c++) {
            const char *name = e->conditions[c].column;

            if (t->ncolumns == FUZZ_EXCLUSIONS_MAX_COLUMNS
                || md_table_column_index(t, name) >= 0)
                continue;
            ok = md_table_add_column(t, name, t->ncolumns % 2 ? "Dynamic"
                                                              : "String",
                                     &err) == 0;
        }
    }

    for (size_t v = 0; v < FUZZ_EXCLUSIONS_NVALUES; v++)
        values[nvalues++] = json_stringn(fuzz_exclusions_values[v].text,
                                         fuzz_exclusions_values[v].len);
    values[nvalues++] = json_pack("[ss]", "C:\\Windows\\a.exe", "b");
    for (size_t v = 0; ok && v < nvalues; v++) {
        struct md_cell *cells = md_table_add_row(t);

        ok = cells != NULL && values[v] != NULL;
        for (size_t col = 0; ok && col < t->ncolumns; col++)
            md_table_set_cell_json(t, &cells[col], col, values[v], &err);
    }
    for (size_t v = 0; v < nvalues; v++)
        json_decref(values[v]);
    if (!ok) {
        md_table_free(t);
        return NULL;
    }
    return t;
}

/* Match every row of a result built from x's own columns. */
static void fuzz_exclusions_rows(const struct md_exclusions *x)
{
    struct md_exclusion_matcher *m = NULL;
    struct md_table *t = fuzz_exclusions_table(x);
    struct md_error err;
    size_t nproblems;

    if (t == NULL)
        return;
    if (md_exclusion_matcher_new(x, "rule-1", t, FUZZ_EXCLUSIONS_NOW, &m,
                                 &err) == 0) {
        md_exclusion_matcher_problems(m, &nproblems);
        for (size_t row = 0; row < t->nrows; row++) {
            const struct md_exclusion *entry;

            md_exclusion_match_row(m, row, &entry, &err);
        }
        md_exclusion_matcher_free(m);
    }
    md_table_free(t);
}

static void fuzz_exclusions_match(const struct md_exclusions *x)
{
    for (size_t i = 0; i < x->nentries; i++) {
        const struct md_exclusion *e = &x->entries[i];

        FUZZ_CHECK(md_exclusions_find(x, e->id) != NULL);
        md_exclusion_expired(e, FUZZ_EXCLUSIONS_NOW);
        md_exclusion_for_rule(e, "rule-1");
        for (size_t c = 0; c < e->nconditions; c++) {
            for (size_t v = 0; v < FUZZ_EXCLUSIONS_NVALUES; v++) {
                int m = md_exclusion_condition_matches(
                    &e->conditions[c], fuzz_exclusions_values[v].text,
                    fuzz_exclusions_values[v].len);

                FUZZ_CHECK(m >= -1 && m <= 1);
            }
        }
    }
}

static int fuzz_exclusions(const uint8_t *data, size_t size)
{
    struct md_exclusions_options opts;
    struct md_exclusions *x = NULL;
    struct md_error err;
    char *folded;

    fuzz_quiet_logging();
    md_error_clear(&err);
    memset(&opts, 0, sizeof(opts));
    opts.now = FUZZ_EXCLUSIONS_NOW;
    opts.max_age = (int64_t)(size % 2) * 400 * 86400;

    if (md_exclusions_load_buffer("fuzz-exclusions.yaml",
                                  (const char *)data, size, &opts, &x,
                                  &err) == 0) {
        FUZZ_CHECK(x != NULL);
        FUZZ_CHECK(strlen(x->hash) == 64);
        fuzz_exclusions_match(x);
        fuzz_exclusions_rows(x);
        md_exclusions_free(x);
    } else {
        FUZZ_CHECK(x == NULL);
        FUZZ_CHECK(err.kind != MD_OK);
    }

    folded = md_exclusion_fold((const char *)data, size);
    free(folded);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_exclusions(data, size);
}
#endif
