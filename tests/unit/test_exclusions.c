/*
 * Tests of the exclusions file: parsing, validation with file and line,
 * each condition kind, case folding, expiry, the canonical hash, matching
 * a result table, and the exclusions in the mail digest.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/buf.h"
#include "mdhunt/exclusions.h"
#include "mdhunt/report.h"

#define TICKS MD_TICKS_PER_SECOND
#define DAY_SECONDS 86400

/* 2025-03-01T12:00:00Z */
#define NOW ((md_instant)1740830400 * TICKS)

static const char RULE_ID[] = "ba1e02dc-2731-4f65-bdd3-b293e0490e9a";

/* ---- Helpers ------------------------------------------------------------- */

static struct md_exclusions_options options(void)
{
    struct md_exclusions_options o;

    memset(&o, 0, sizeof(o));
    o.max_age = 365 * DAY_SECONDS;
    o.now = NOW;
    return o;
}

/* Load text that must be valid. */
static struct md_exclusions *load_ok(const char *text)
{
    struct md_exclusions_options o = options();
    struct md_exclusions *x = NULL;
    struct md_error err;

    md_error_clear(&err);
    if (md_exclusions_load_buffer("ex.yaml", text, strlen(text), &o, &x,
                                  &err) != 0)
        fail_msg("md_exclusions_load_buffer: %s", err.message);
    return x;
}

/* Load text that must be invalid; returns the first error message. */
static void load_bad(const char *text, const struct md_exclusions_options *o,
                     char *msg, size_t size)
{
    struct md_exclusions *x = NULL;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_exclusions_load_buffer("ex.yaml", text, strlen(text),
                                               o, &x, &err), -1);
    assert_null(x);
    assert_int_equal(err.kind, MD_E_CONFIG);
    snprintf(msg, size, "%s", err.message);
}

static void expect_error(const char *text, const char *prefix,
                         const char *words)
{
    struct md_exclusions_options o = options();
    char msg[MD_ERR_MESSAGE_MAX];

    load_bad(text, &o, msg, sizeof(msg));
    if (strncmp(msg, prefix, strlen(prefix)) != 0)
        fail_msg("expected a message starting with \"%s\", got \"%s\"",
                 prefix, msg);
    if (strstr(msg, words) == NULL)
        fail_msg("expected \"%s\" in \"%s\"", words, msg);
}

/* An entry for RULE_ID with one condition line. */
static char *entry_text(const char *condition)
{
    static char text[1024];

    snprintf(text, sizeof(text),
             "- id: e1\n"
             "  rule: %s\n"
             "  reason: approved\n"
             "  owner: soc@example.org\n"
             "  expires: 2025-12-31\n"
             "  %s\n", RULE_ID, condition);
    return text;
}

/* Whether the single condition of an entry matches value. */
static int matches(const char *condition, const char *value)
{
    struct md_exclusions *x = load_ok(entry_text(condition));
    int rc;

    assert_int_equal(x->nentries, 1);
    assert_int_equal(x->entries[0].nconditions, 1);
    rc = md_exclusion_condition_matches(&x->entries[0].conditions[0], value,
                                        strlen(value));
    md_exclusions_free(x);
    assert_true(rc >= 0);
    return rc;
}

/* ---- Parsing ------------------------------------------------------------- */

static void test_example_entry_loads(void **state)
{
    struct md_exclusions *x;
    const struct md_exclusion *e;

    (void)state;
    x = load_ok("# reviewed exclusions\n"
                "- id: vendor-support-laptop\n"
                "  rule: ba1e02dc-2731-4f65-bdd3-b293e0490e9a\n"
                "  DeviceId: [1111222233334444555566667777888899990000]\n"
                "  reason: Vendor support laptop, approved in CHG-1234\n"
                "  owner: soc-lead@example.org\n"
                "  created: 2025-02-01\n"
                "  expires: 2025-03-31\n");
    assert_int_equal(x->nentries, 1);
    e = &x->entries[0];
    assert_string_equal(e->id, "vendor-support-laptop");
    assert_string_equal(e->rule_id, RULE_ID);
    assert_string_equal(e->reason,
                        "Vendor support laptop, approved in CHG-1234");
    assert_string_equal(e->owner, "soc-lead@example.org");
    assert_string_equal(e->created, "2025-02-01");
    assert_string_equal(e->expires_text, "2025-03-31");
    assert_int_equal(e->line, 2);
    assert_int_equal(e->nconditions, 1);
    assert_string_equal(e->conditions[0].column, "DeviceId");
    assert_int_equal(e->conditions[0].kind, MD_MATCH_EQUAL);
    assert_string_equal(e->conditions[0].values[0],
                        "1111222233334444555566667777888899990000");
    assert_int_equal(e->conditions[0].line, 4);
    assert_int_equal(strlen(x->hash), 64);
    md_exclusions_free(x);
}

static void test_empty_file_has_no_entries(void **state)
{
    struct md_exclusions *x;

    (void)state;
    x = load_ok("# nothing excluded yet\n");
    assert_int_equal(x->nentries, 0);
    assert_int_equal(strlen(x->hash), 64);
    md_exclusions_free(x);
}

static void test_operator_kinds_parse(void **state)
{
    struct md_exclusions *x;
    const struct md_exclusion *e;

    (void)state;
    x = load_ok("- id: kinds\n"
                "  rule: \"*\"\n"
                "  reason: r\n"
                "  owner: o\n"
                "  expires: 2025-06-30\n"
                "  DeviceName: {glob: \"adm-ws-*.corp.example\"}\n"
                "  FolderPath: {regex: \"c:.program files.zoho.*\"}\n"
                "  Signer: {exact: Zoho Corporation}\n");
    e = &x->entries[0];
    assert_string_equal(e->rule_id, "*");
    assert_int_equal(e->nconditions, 3);
    assert_int_equal(e->conditions[0].kind, MD_MATCH_GLOB);
    assert_int_equal(e->conditions[1].kind, MD_MATCH_REGEX);
    assert_int_equal(e->conditions[2].kind, MD_MATCH_EXACT);
    assert_string_equal(e->conditions[2].values[0], "Zoho Corporation");
    md_exclusions_free(x);
}

/* ---- Conditions ---------------------------------------------------------- */

static void test_equal_ignores_case(void **state)
{
    (void)state;
    assert_int_equal(matches("DeviceName: WKS-1.Corp", "wks-1.corp"), 1);
    assert_int_equal(matches("DeviceName: wks-1.corp", "wks-1.corpx"), 0);
}

static void test_list_matches_any_value(void **state)
{
    const char *cond = "DeviceId: [aaa, BBB, ccc]";

    (void)state;
    assert_int_equal(matches(cond, "bbb"), 1);
    assert_int_equal(matches(cond, "ccc"), 1);
    assert_int_equal(matches(cond, "ddd"), 0);
}

static void test_glob_ignores_case(void **state)
{
    const char *cond = "DeviceName: {glob: \"ADM-WS-*.corp.example\"}";

    (void)state;
    assert_int_equal(matches(cond, "adm-ws-17.CORP.example"), 1);
    assert_int_equal(matches(cond, "adm-ws-17.corp.example.evil"), 0);
    assert_int_equal(matches(cond, "xadm-ws-17.corp.example"), 0);
}

static void test_glob_backslash_is_literal(void **state)
{
    const char *cond =
        "FolderPath: {glob: 'C:\\Program Files (x86)\\ZOHO\\*'}";

    (void)state;
    assert_int_equal(matches(cond, "c:\\program files (x86)\\zoho\\a.exe"),
                     1);
    assert_int_equal(matches(cond, "c:\\program files (x86)\\other\\a.exe"),
                     0);
}

static void test_regex_must_match_whole_value(void **state)
{
    const char *cond = "DeviceName: {regex: \"(adm|it)-[0-9]+\"}";

    (void)state;
    assert_int_equal(matches(cond, "adm-12"), 1);
    assert_int_equal(matches(cond, "IT-7"), 1);
    assert_int_equal(matches(cond, "adm-12.evil"), 0);
    assert_int_equal(matches(cond, "xadm-12"), 0);
}

static void test_exact_is_case_sensitive(void **state)
{
    const char *cond = "Signer: {exact: Zoho Corporation}";

    (void)state;
    assert_int_equal(matches(cond, "Zoho Corporation"), 1);
    assert_int_equal(matches(cond, "zoho corporation"), 0);
}

static void test_value_with_nul_compared(void **state)
{
    struct md_exclusions *x = load_ok(entry_text("DeviceName: pc1"));
    const struct md_exclusion_condition *c = &x->entries[0].conditions[0];

    (void)state;
    assert_int_equal(md_exclusion_condition_matches(c, "pc1\0x", 5), 0);
    assert_int_equal(md_exclusion_condition_matches(c, "PC1", 3), 1);
    md_exclusions_free(x);
}

/* ---- Case folding -------------------------------------------------------- */

static void expect_fold(const char *in, const char *out)
{
    char *folded = md_exclusion_fold(in, strlen(in));

    assert_non_null(folded);
    assert_string_equal(folded, out);
    free(folded);
}

static void test_fold_latin_greek_cyrillic(void **state)
{
    (void)state;
    expect_fold("ÄÖÜ-Ÿ-Ł", "äöü-ÿ-ł");
    expect_fold("ΣΟΦΊΑ ς", "σοφία σ");
    expect_fold("МОСКВА Ёж", "москва ёж");
    expect_fold("ẞ İ ſ µ", "ß i s μ");
    expect_fold("ＡＢＣ", "ａｂｃ");
}

static void test_fold_keeps_other_text(void **state)
{
    (void)state;
    expect_fold("日本語 123 ß", "日本語 123 ß");
    /* An invalid byte passes through unchanged. */
    expect_fold("A\xff" "B", "a\xff" "b");
}

static void test_equal_folds_unicode(void **state)
{
    (void)state;
    assert_int_equal(matches("DeviceName: MÜNCHEN-PC", "münchen-pc"), 1);
    assert_int_equal(matches("DeviceName: ПК-БУХГАЛТЕРИЯ",
                             "пк-бухгалтерия"), 1);
    assert_int_equal(matches("DeviceName: muenchen-pc", "münchen-pc"), 0);
}

static void test_glob_folds_unicode(void **state)
{
    (void)state;
    assert_int_equal(matches("DeviceName: {glob: \"ÖSTERREICH-*\"}",
                             "österreich-pc7"), 1);
}

/* ---- Expiry -------------------------------------------------------------- */

static void test_date_expires_at_end_of_day(void **state)
{
    struct md_exclusions *x = load_ok(entry_text("DeviceId: d1"));
    const struct md_exclusion *e = &x->entries[0];
    /* 2026-01-01T00:00:00Z */
    md_instant next_day = (md_instant)1767225600 * TICKS;

    (void)state;
    assert_int_equal(e->expires, next_day);
    assert_false(md_exclusion_expired(e, next_day - 1));
    assert_true(md_exclusion_expired(e, next_day));
    md_exclusions_free(x);
}

static void test_timestamp_expiry_is_exact(void **state)
{
    struct md_exclusions *x;
    md_instant at;

    (void)state;
    x = load_ok("- id: t\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-03-02T06:30:00Z\n  DeviceId: d1\n");
    assert_int_equal(md_time_parse("2025-03-02T06:30:00Z", 20, &at), 0);
    assert_int_equal(x->entries[0].expires, at);
    md_exclusions_free(x);
}

static void test_expiry_formatted_as_written(void **state)
{
    char text[MD_TIME_TEXT_MAX];
    md_instant end_of_day = (md_instant)1767225600 * TICKS;

    (void)state;
    assert_string_equal(md_exclusion_format_expiry(end_of_day, text,
                                                   sizeof(text)),
                        "2025-12-31");
    assert_string_equal(md_exclusion_format_expiry(end_of_day + TICKS, text,
                                                   sizeof(text)),
                        "2026-01-01T00:00:01.0000000Z");
}

static void test_expiry_limit_counts_days(void **state)
{
    struct md_exclusions_options o = options();
    struct md_exclusions *x = NULL;
    struct md_error err;
    char msg[MD_ERR_MESSAGE_MAX];
    /* NOW + 365 days is 2026-03-01T12:00:00Z. */
    const char *last_day = "- id: a\n  rule: \"*\"\n  reason: r\n"
                           "  owner: o\n  expires: 2026-03-01\n"
                           "  DeviceId: d\n";
    const char *day_after = "- id: a\n  rule: \"*\"\n  reason: r\n"
                            "  owner: o\n  expires: 2026-03-02\n"
                            "  DeviceId: d\n";

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_exclusions_load_buffer("ex.yaml", last_day,
                                               strlen(last_day), &o, &x,
                                               &err), 0);
    md_exclusions_free(x);
    load_bad(day_after, &o, msg, sizeof(msg));
    assert_non_null(strstr(msg, "ex.yaml:5: expires 2026-03-02"));
    assert_non_null(strstr(msg, "max_exclusion_age"));
}

/* ---- Errors -------------------------------------------------------------- */

static void test_missing_reason_names_entry_line(void **state)
{
    (void)state;
    expect_error("- id: ok\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                 "  expires: 2025-05-01\n  DeviceId: d\n"
                 "- id: second\n  rule: \"*\"\n  owner: o\n"
                 "  expires: 2025-05-01\n  DeviceId: d\n",
                 "ex.yaml:7: ", "has no 'reason'");
}

static void test_missing_owner_and_expiry_rejected(void **state)
{
    (void)state;
    expect_error("- id: a\n  rule: \"*\"\n  reason: r\n  expires: 2025-05-01\n"
                 "  DeviceId: d\n", "ex.yaml:1: ", "has no 'owner'");
    expect_error("- id: a\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                 "  DeviceId: d\n", "ex.yaml:1: ", "has no 'expires'");
}

static void test_bad_yaml_names_line(void **state)
{
    (void)state;
    expect_error("- id: a\n  rule: \"*\n  reason: r\n", "ex.yaml:",
                 "invalid YAML");
    expect_error("- id: a\n  rule: x\n reason: r\n", "ex.yaml:3: ",
                 "invalid YAML");
}

static void test_unknown_rule_names_rule_line(void **state)
{
    struct md_exclusions_options o = options();
    struct md_ruleset set = { NULL, 0 };
    char msg[MD_ERR_MESSAGE_MAX];

    (void)state;
    o.rules = &set;
    load_bad(entry_text("DeviceId: d"), &o, msg, sizeof(msg));
    assert_non_null(strstr(msg, "ex.yaml:2: "));
    assert_non_null(strstr(msg, "no loaded rule"));
}

static void test_invalid_regex_names_line(void **state)
{
    (void)state;
    expect_error(entry_text("DeviceName: {regex: \"(unclosed\"}"),
                 "ex.yaml:6: ", "invalid regular expression");
}

static void test_unknown_match_kind_rejected(void **state)
{
    (void)state;
    expect_error(entry_text("DeviceName: {like: \"x\"}"), "ex.yaml:6: ",
                 "unknown match kind");
}

static void test_duplicate_id_rejected(void **state)
{
    char text[2048];
    size_t len;

    (void)state;
    /* entry_text() reuses one buffer, so copy each entry in turn. */
    snprintf(text, sizeof(text), "%s", entry_text("DeviceId: a"));
    len = strlen(text);
    snprintf(text + len, sizeof(text) - len, "%s",
             entry_text("DeviceId: b"));
    expect_error(text, "ex.yaml:7: ", "duplicate id e1");
}

static void test_entry_without_condition_rejected(void **state)
{
    (void)state;
    expect_error("- id: all\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                 "  expires: 2025-05-01\n", "ex.yaml:1: ", "no condition");
}

static void test_bad_date_rejected(void **state)
{
    (void)state;
    expect_error("- id: d\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                 "  expires: 2025-02-30\n  DeviceId: d\n", "ex.yaml:5: ",
                 "not a date");
}

static void test_root_mapping_rejected(void **state)
{
    (void)state;
    expect_error("id: a\nrule: x\n", "ex.yaml:1: ", "YAML list");
}

static void test_empty_condition_list_rejected(void **state)
{
    (void)state;
    expect_error(entry_text("DeviceId: []"), "ex.yaml:6: ", "empty list");
}

static void test_missing_file_is_config_error(void **state)
{
    struct md_exclusions_options o = options();
    struct md_exclusions *x = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_exclusions_load("/nonexistent/ex.yaml", &o, &x,
                                        &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "/nonexistent/ex.yaml"));
}

/* Every entry of the example, uncommented, must load: the lines from the
 * first "#- " on that start with "#- " or "#  " are entry lines. */
static void test_example_file_loads_uncommented(void **state)
{
    FILE *in = fopen("config/exclusions.yaml.example", "r");
    struct md_buf text = MD_BUF_INIT;
    struct md_exclusions *x;
    char line[512];
    int in_entries = 0;

    (void)state;
    assert_non_null(in);
    while (fgets(line, sizeof(line), in) != NULL) {
        if (strncmp(line, "#- ", 3) == 0)
            in_entries = 1;
        if (in_entries && (strncmp(line, "#- ", 3) == 0 ||
                           (strncmp(line, "#  ", 3) == 0 && line[3] != ' ')))
            assert_int_equal(md_buf_puts(&text, line + 1), 0);
        else
            assert_int_equal(md_buf_puts(&text, line), 0);
    }
    fclose(in);
    x = load_ok(text.data);
    assert_int_equal(x->nentries, 6);
    assert_string_equal(x->entries[2].conditions[1].values[0],
                        "C:\\Program Files (x86)\\ManageEngine\\*");
    md_exclusions_free(x);
    md_buf_free(&text);
}

/* ---- Hash ---------------------------------------------------------------- */

static void test_hash_ignores_layout(void **state)
{
    struct md_exclusions *a;
    struct md_exclusions *b;
    struct md_exclusions *c;

    (void)state;
    a = load_ok("- id: e\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-05-01\n  DeviceId: [d1, d2]\n");
    b = load_ok("# comment\n-   {owner: o, id: e, reason: \"r\",\n"
                "    DeviceId: [\"d1\", 'd2'], rule: '*',\n"
                "    expires: 2025-05-01}\n");
    c = load_ok("- id: e\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-05-01\n  DeviceId: [d1, d3]\n");
    assert_string_equal(a->hash, b->hash);
    assert_string_not_equal(a->hash, c->hash);
    md_exclusions_free(a);
    md_exclusions_free(b);
    md_exclusions_free(c);
}

/* ---- Matching a table ---------------------------------------------------- */

static struct md_table *signer_table(void)
{
    struct md_table *t = md_table_new();
    struct md_error err;
    const char *rows[][3] = {
        { "\"d1\"", "\"PC1\"", "[\"Zoho Corp\"]" },
        { "\"d2\"", "\"PC2\"", "[\"Zoho Corp\", \"Evil Inc\"]" },
        { "\"d3\"", "\"PC3\"", "null" },
        { "\"d4\"", "\"PC4\"", "[]" },
    };

    assert_non_null(t);
    md_error_clear(&err);
    assert_int_equal(md_table_add_column(t, "DeviceId", "String", &err), 0);
    assert_int_equal(md_table_add_column(t, "DeviceName", "String", &err),
                     0);
    assert_int_equal(md_table_add_column(t, "Signers", "Dynamic", &err), 0);
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        struct md_cell *cells = md_table_add_row(t);

        assert_non_null(cells);
        for (size_t c = 0; c < 3; c++) {
            json_t *v = json_loads(rows[r][c], JSON_DECODE_ANY, NULL);

            assert_non_null(v);
            assert_int_equal(md_table_set_cell_json(t, &cells[c], c, v,
                                                    &err), 0);
            json_decref(v);
        }
    }
    return t;
}

static const struct md_exclusion *match(struct md_exclusion_matcher *m,
                                        size_t row)
{
    const struct md_exclusion *e = NULL;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_exclusion_match_row(m, row, &e, &err), 0);
    return e;
}

static void test_array_cell_needs_every_element(void **state)
{
    struct md_exclusions *x;
    struct md_table *t = signer_table();
    struct md_exclusion_matcher *m = NULL;
    struct md_error err;

    (void)state;
    x = load_ok("- id: zoho\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-05-01\n  Signers: zoho corp\n");
    md_error_clear(&err);
    assert_int_equal(md_exclusion_matcher_new(x, "R", t, NOW, &m, &err), 0);
    assert_ptr_equal(match(m, 0), &x->entries[0]);
    assert_null(match(m, 1));
    assert_null(match(m, 2));
    assert_null(match(m, 3));
    md_exclusion_matcher_free(m);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_first_matching_entry_wins(void **state)
{
    struct md_exclusions *x;
    struct md_table *t = signer_table();
    struct md_exclusion_matcher *m = NULL;
    struct md_error err;

    (void)state;
    x = load_ok("- id: first\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-05-01\n  DeviceName: {glob: \"pc*\"}\n"
                "- id: second\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-05-01\n  DeviceId: d1\n");
    md_error_clear(&err);
    assert_int_equal(md_exclusion_matcher_new(x, "R", t, NOW, &m, &err), 0);
    assert_string_equal(match(m, 0)->id, "first");
    md_exclusion_matcher_free(m);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_all_conditions_must_hold(void **state)
{
    struct md_exclusions *x;
    struct md_table *t = signer_table();
    struct md_exclusion_matcher *m = NULL;
    struct md_error err;

    (void)state;
    x = load_ok("- id: both\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-05-01\n  DeviceId: d2\n"
                "  DeviceName: pc1\n");
    md_error_clear(&err);
    assert_int_equal(md_exclusion_matcher_new(x, "R", t, NOW, &m, &err), 0);
    assert_null(match(m, 0));
    assert_null(match(m, 1));
    md_exclusion_matcher_free(m);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_missing_column_skips_any_rule_entry(void **state)
{
    struct md_exclusions *x;
    struct md_table *t = signer_table();
    struct md_exclusion_matcher *m = NULL;
    struct md_error err;
    size_t n;

    (void)state;
    x = load_ok("- id: other\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-05-01\n  RemoteIP: 10.0.0.1\n");
    md_error_clear(&err);
    assert_int_equal(md_exclusion_matcher_new(x, "R", t, NOW, &m, &err), 0);
    assert_null(md_exclusion_matcher_problems(m, &n));
    assert_int_equal(n, 0);
    assert_null(match(m, 0));
    md_exclusion_matcher_free(m);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_missing_column_invalidates_rule_entry(void **state)
{
    struct md_exclusions *x;
    struct md_table *t = signer_table();
    struct md_exclusion_matcher *m = NULL;
    const struct md_exclusion_problem *p;
    struct md_error err;
    char text[2048];
    size_t n;

    (void)state;
    snprintf(text, sizeof(text), "%s%s", entry_text("RemoteIP: 10.0.0.1"),
             "- id: e2\n  rule: \"*\"\n  reason: r\n  owner: o\n"
             "  expires: 2025-05-01\n  DeviceId: d1\n");
    x = load_ok(text);
    md_error_clear(&err);
    assert_int_equal(md_exclusion_matcher_new(x, RULE_ID, t, NOW, &m, &err),
                     0);
    p = md_exclusion_matcher_problems(m, &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(p[0].entry, &x->entries[0]);
    assert_non_null(strstr(p[0].message, "ex.yaml:6: "));
    assert_non_null(strstr(p[0].message, "RemoteIP"));
    assert_string_equal(match(m, 0)->id, "e2");
    md_exclusion_matcher_free(m);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_expired_entry_not_matched(void **state)
{
    struct md_exclusions *x;
    struct md_table *t = signer_table();
    struct md_exclusion_matcher *m = NULL;
    struct md_error err;

    (void)state;
    x = load_ok("- id: old\n  rule: \"*\"\n  reason: r\n  owner: o\n"
                "  expires: 2025-03-01\n  DeviceId: d1\n");
    md_error_clear(&err);
    assert_int_equal(md_exclusion_matcher_new(x, "R", t,
                                              NOW + 12 * 3600 * TICKS - 1,
                                              &m, &err), 0);
    assert_non_null(match(m, 0));
    md_exclusion_matcher_free(m);
    assert_int_equal(md_exclusion_matcher_new(x, "R", t,
                                              NOW + 12 * 3600 * TICKS, &m,
                                              &err), 0);
    assert_null(match(m, 0));
    md_exclusion_matcher_free(m);
    md_table_free(t);
    md_exclusions_free(x);
}

static void test_entry_for_other_rule_ignored(void **state)
{
    struct md_exclusions *x = load_ok(entry_text("DeviceId: d1"));
    struct md_table *t = signer_table();
    struct md_exclusion_matcher *m = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_exclusion_matcher_new(x, "other", t, NOW, &m, &err),
                     0);
    assert_null(match(m, 0));
    md_exclusion_matcher_free(m);
    md_table_free(t);
    md_exclusions_free(x);
}

/* ---- The mail digest ----------------------------------------------------- */

/* 2025-04-01T00:00:00Z: the end of an entry that expires 2025-03-31. */
#define END_OF_MARCH ((md_instant)1743465600 * TICKS)

static struct md_digest *exclusion_digest(void)
{
    static const struct md_digest_exclusion entries[] = {
        { "vendor-laptop", "Approved <CHG-1>", "soc@example.org",
          END_OF_MARCH, 2 },
    };
    static const char *const issues[] = {
        "ex.yaml:9: exclusion by-signer names column Signers, which the "
        "result of rule R1 lacks"
    };
    struct md_digest_rule rule;
    struct md_digest_hit hit;
    struct md_digest *d = NULL;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_digest_new("contoso.onmicrosoft.com", NOW, &d, &err),
                     0);
    memset(&rule, 0, sizeof(rule));
    rule.rule_id = "R1";
    rule.name = "Zoho signed binaries";
    rule.excluded = 2;
    rule.exclusions = entries;
    rule.nexclusions = 1;
    rule.exclusion_issues = issues;
    rule.nexclusion_issues = 1;
    assert_int_equal(md_digest_add_rule(d, &rule, NULL, &err), 0);

    memset(&hit, 0, sizeof(hit));
    hit.change = MD_CHANGE_NEW;
    hit.device_id = "d1";
    hit.device_name = "new-pc.corp";
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    hit.change = MD_CHANGE_EXCLUDED;
    hit.device_id = "d2";
    hit.device_name = "vendor-pc.corp";
    hit.exclusion_id = "vendor-laptop";
    hit.exclusion_reason = "Approved <CHG-1>";
    hit.exclusion_owner = "soc@example.org";
    hit.exclusion_expires = END_OF_MARCH;
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    hit.change = MD_CHANGE_UNCOVERED;
    hit.device_id = "d3";
    hit.device_name = "old-vendor-pc.corp";
    hit.exclusion_id = "old-entry";
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    return d;
}

static char *render(struct md_digest *d,
                    int (*fn)(const struct md_digest *,
                              const struct md_report_options *,
                              struct md_buf *, struct md_error *))
{
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(fn(d, NULL, &out, &err), 0);
    return md_buf_detach(&out);
}

static void test_digest_text_lists_exclusions(void **state)
{
    struct md_digest *d = exclusion_digest();
    char *text = render(d, md_report_text);

    (void)state;
    assert_non_null(strstr(text, "Excluded by vendor-laptop: 2 devices "
                           "(reason: Approved <CHG-1>; owner: "
                           "soc@example.org; expires 2025-03-31)"));
    assert_non_null(strstr(text, "## Exclusions"));
    assert_non_null(strstr(text, "Excluded for the first time: 1 device\n"
                           "- vendor-pc.corp (d2)"));
    assert_non_null(strstr(text, "No longer excluded (uncovered), review "
                           "as new: 1 device\n- old-vendor-pc.corp (d3)"));
    assert_non_null(strstr(text, "Exclusion old-entry: Approved <CHG-1>; "
                           "owner soc@example.org; expires 2025-03-31"));
    assert_non_null(strstr(text, "Exclusion entries not applied:\n- R1: "
                           "ex.yaml:9: exclusion by-signer"));
    assert_non_null(strstr(text, "no longer excluded: 1"));
    /* Excluded and uncovered devices stay out of the Devices section. */
    assert_non_null(strstr(text, "1. new-pc.corp"));
    assert_null(strstr(text, "2. "));
    free(text);
    md_digest_free(d);
}

static void test_digest_html_lists_exclusions(void **state)
{
    struct md_digest *d = exclusion_digest();
    char *html = render(d, md_report_html);

    (void)state;
    assert_non_null(strstr(html, "<h3>Exclusions</h3>"));
    assert_non_null(strstr(html, "Excluded by <b>vendor-laptop</b>: 2 "
                           "devices (reason: Approved &lt;CHG-1&gt;"));
    assert_non_null(strstr(html, "<li><b>vendor-pc.corp</b> (d2)"));
    assert_non_null(strstr(html, "<li><b>old-vendor-pc.corp</b> (d3)"));
    assert_non_null(strstr(html, "Exclusion entries not applied:"));
    assert_non_null(strstr(html, "ex.yaml:9: exclusion by-signer"));
    assert_null(strstr(html, "<CHG-1>"));
    free(html);
    md_digest_free(d);
}

static void test_digest_csv_lists_exclusions(void **state)
{
    struct md_digest *d = exclusion_digest();
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;
    const char *excluded;
    const char *uncovered;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_report_csv(d, &out, &err), 0);
    assert_non_null(strstr(out.data, ",portal_url,exclusion_id,"
                           "exclusion_reason,exclusion_owner,"
                           "exclusion_expires"));
    excluded = strstr(out.data, "\r\nexcluded,,vendor-pc.corp,d2,");
    uncovered = strstr(out.data, "\r\nuncovered,,old-vendor-pc.corp,d3,");
    assert_non_null(excluded);
    assert_non_null(uncovered);
    assert_non_null(strstr(excluded, ",vendor-laptop,Approved <CHG-1>,"
                           "soc@example.org,2025-03-31\r\n"));
    assert_true(uncovered < excluded);
    md_buf_free(&out);
    md_digest_free(d);
}

static void test_digest_sends_for_uncovered_only(void **state)
{
    struct md_digest *d = NULL;
    struct md_digest_rule rule;
    struct md_digest_hit hit;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_digest_new("t", NOW, &d, &err), 0);
    memset(&rule, 0, sizeof(rule));
    rule.rule_id = "R1";
    rule.last_success = NOW;
    assert_int_equal(md_digest_add_rule(d, &rule, NULL, &err), 0);
    memset(&hit, 0, sizeof(hit));
    hit.change = MD_CHANGE_EXCLUDED;
    hit.device_id = "d1";
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, NOW),
                     MD_SEND_REASON_NONE);
    hit.change = MD_CHANGE_UNCOVERED;
    hit.device_id = "d2";
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, NOW),
                     MD_SEND_REASON_CHANGES);
    md_digest_free(d);
}

static void test_digest_subject_counts_uncovered(void **state)
{
    struct md_digest *d = exclusion_digest();
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_report_subject(d, NULL, &out, &err), 0);
    assert_non_null(strstr(out.data, "1 new device, 1 no longer excluded"));
    md_buf_free(&out);
    md_digest_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_entry_loads),
        cmocka_unit_test(test_empty_file_has_no_entries),
        cmocka_unit_test(test_operator_kinds_parse),
        cmocka_unit_test(test_equal_ignores_case),
        cmocka_unit_test(test_list_matches_any_value),
        cmocka_unit_test(test_glob_ignores_case),
        cmocka_unit_test(test_glob_backslash_is_literal),
        cmocka_unit_test(test_regex_must_match_whole_value),
        cmocka_unit_test(test_exact_is_case_sensitive),
        cmocka_unit_test(test_value_with_nul_compared),
        cmocka_unit_test(test_fold_latin_greek_cyrillic),
        cmocka_unit_test(test_fold_keeps_other_text),
        cmocka_unit_test(test_equal_folds_unicode),
        cmocka_unit_test(test_glob_folds_unicode),
        cmocka_unit_test(test_date_expires_at_end_of_day),
        cmocka_unit_test(test_timestamp_expiry_is_exact),
        cmocka_unit_test(test_expiry_formatted_as_written),
        cmocka_unit_test(test_expiry_limit_counts_days),
        cmocka_unit_test(test_missing_reason_names_entry_line),
        cmocka_unit_test(test_missing_owner_and_expiry_rejected),
        cmocka_unit_test(test_bad_yaml_names_line),
        cmocka_unit_test(test_unknown_rule_names_rule_line),
        cmocka_unit_test(test_invalid_regex_names_line),
        cmocka_unit_test(test_unknown_match_kind_rejected),
        cmocka_unit_test(test_duplicate_id_rejected),
        cmocka_unit_test(test_entry_without_condition_rejected),
        cmocka_unit_test(test_bad_date_rejected),
        cmocka_unit_test(test_root_mapping_rejected),
        cmocka_unit_test(test_empty_condition_list_rejected),
        cmocka_unit_test(test_missing_file_is_config_error),
        cmocka_unit_test(test_example_file_loads_uncommented),
        cmocka_unit_test(test_hash_ignores_layout),
        cmocka_unit_test(test_array_cell_needs_every_element),
        cmocka_unit_test(test_first_matching_entry_wins),
        cmocka_unit_test(test_all_conditions_must_hold),
        cmocka_unit_test(test_missing_column_skips_any_rule_entry),
        cmocka_unit_test(test_missing_column_invalidates_rule_entry),
        cmocka_unit_test(test_expired_entry_not_matched),
        cmocka_unit_test(test_entry_for_other_rule_ignored),
        cmocka_unit_test(test_digest_text_lists_exclusions),
        cmocka_unit_test(test_digest_html_lists_exclusions),
        cmocka_unit_test(test_digest_csv_lists_exclusions),
        cmocka_unit_test(test_digest_sends_for_uncovered_only),
        cmocka_unit_test(test_digest_subject_counts_uncovered),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
