/*
 * Unit tests for the rule loader: YAML field forms, durations, block
 * scalar chomping, the repair pre-pass and its line map, plain KQL files,
 * directory loading, and the 70-file corpus of published rules whose
 * expected queries were written by tests/data/corpus/make-expected.py.
 */
#include "testutil.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/log.h"
#include "mdhunt/rule.h"

#define CORPUS_RULES MD_TEST_DATA "/corpus/rules"
#define CORPUS_EXPECTED MD_TEST_DATA "/corpus/expected"
#define CORPUS_FILES 70

static char tmpdir[] = "/tmp/mdhunt-test-rule-XXXXXX";
static char path_buf[4][1024];
static int path_next;

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int make_tmpdir(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    return nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write len bytes to tmpdir/name and return the path (valid until four
 * more calls). */
static const char *write_bytes(const char *name, const char *data,
                               size_t len)
{
    char *path = path_buf[path_next++ % 4];
    FILE *f;

    snprintf(path, sizeof(path_buf[0]), "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static const char *write_text(const char *name, const char *text)
{
    return write_bytes(name, text, strlen(text));
}

static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *data;
    long size;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc((size_t)size + 1);
    assert_non_null(data);
    *len = fread(data, 1, (size_t)size, f);
    data[*len] = '\0';
    fclose(f);
    return data;
}

static FILE *capture_file;
static int saved_stderr = -1;

/* Send stderr to a temporary file until capture_end(). */
static void capture_start(void)
{
    fflush(stderr);
    capture_file = tmpfile();
    assert_non_null(capture_file);
    saved_stderr = dup(2);
    assert_true(saved_stderr >= 0);
    assert_true(dup2(fileno(capture_file), 2) >= 0);
}

/* Restore stderr and return what was written to it; free() it. */
static char *capture_end(void)
{
    char *text;
    long size;

    fflush(stderr);
    assert_true(dup2(saved_stderr, 2) >= 0);
    close(saved_stderr);
    size = ftell(capture_file);
    text = calloc(1, (size_t)size + 1);
    assert_non_null(text);
    rewind(capture_file);
    if (size > 0)
        assert_int_equal(fread(text, 1, (size_t)size, capture_file),
                         (size_t)size);
    fclose(capture_file);
    return text;
}

/* Load text written to tmpdir/name; NULL on failure with err filled. */
static struct md_rule *load_text(const char *name, const char *text,
                                 struct md_error *err)
{
    struct md_rule *rule = NULL;

    md_error_clear(err);
    if (md_rule_load(write_text(name, text), &rule, err) != 0)
        return NULL;
    return rule;
}

/* Load a rule that must load; fail the test with the error otherwise. */
static struct md_rule *load_ok(const char *name, const char *text)
{
    struct md_error err;
    struct md_rule *rule = load_text(name, text, &err);

    if (rule == NULL)
        print_error("unexpected error: %s\n", err.message);
    assert_non_null(rule);
    return rule;
}

/* Load text that must fail and return the error message. */
static const char *load_error(const char *name, const char *text,
                              struct md_error *err)
{
    struct md_rule *rule = load_text(name, text, err);

    assert_null(rule);
    assert_int_equal(err->kind, MD_E_RULE);
    return err->message;
}

static void assert_query(const struct md_rule *rule, const char *expected)
{
    assert_int_equal(rule->query_len, strlen(expected));
    assert_memory_equal(rule->query, expected, rule->query_len);
}

/* Does message start with "tmpdir/name:line:"? */
static int names_line(const char *message, const char *name, int line)
{
    char prefix[1200];

    snprintf(prefix, sizeof(prefix), "%s/%s:%d:", tmpdir, name, line);
    return strncmp(message, prefix, strlen(prefix)) == 0;
}

/* ------------------------------------------------------------------ */
/* Fields                                                              */
/* ------------------------------------------------------------------ */

static void tactics_scalar_is_one_item(void **state)
{
    struct md_rule *r = load_ok("t.yaml", "id: a\ntactics: Persistence\n"
                                "query: x\n");

    (void)state;
    assert_int_equal(r->ntactics, 1);
    assert_string_equal(r->tactics[0], "Persistence");
    md_rule_free(r);
}

static void tactics_list_keeps_order(void **state)
{
    struct md_rule *r = load_ok("t.yaml", "id: a\ntactics:\n"
                                "- Initial access\n- Malware, component\n"
                                "query: x\n");

    (void)state;
    assert_int_equal(r->ntactics, 2);
    assert_string_equal(r->tactics[0], "Initial access");
    assert_string_equal(r->tactics[1], "Malware, component");
    md_rule_free(r);
}

static void tactics_empty_null_absent(void **state)
{
    static const char *const texts[] = {
        "id: a\ntactics: []\nquery: x\n",
        "id: a\ntactics:\nquery: x\n",
        "id: a\ntactics: ~\nquery: x\n",
        "id: a\nquery: x\n",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct md_rule *r = load_ok("t.yaml", texts[i]);

        assert_int_equal(r->ntactics, 0);
        assert_null(r->tactics);
        md_rule_free(r);
    }
}

static void techniques_skip_null_items(void **state)
{
    struct md_rule *r = load_ok("t.yaml", "id: a\nrelevantTechniques:\n"
                                "  -\n  - T1219\n  - ~\nquery: x\n");

    (void)state;
    assert_int_equal(r->ntechniques, 1);
    assert_string_equal(r->techniques[0], "T1219");
    md_rule_free(r);
}

static void tactics_mapping_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("t.yaml", "id: a\ntactics:\n  x: y\n"
                                 "query: x\n", &err);

    (void)state;
    assert_true(names_line(msg, "t.yaml", 3));
    assert_non_null(strstr(msg, "tactics"));
}

static void text_fields_read(void **state)
{
    struct md_rule *r = load_ok("t.yaml", "id: 1234\nname: N\n"
                                "description: |\n  line one\n  line two\n"
                                "severity: High\nquery: x\n");

    (void)state;
    assert_string_equal(r->id, "1234");
    assert_int_equal(r->id_from_file, 0);
    assert_string_equal(r->name, "N");
    assert_string_equal(r->description, "line one\nline two\n");
    assert_string_equal(r->severity, "High");
    md_rule_free(r);
}

static void unknown_fields_ignored(void **state)
{
    struct md_rule *r = load_ok("t.yaml",
                                "id: a\nversion: 1\nkind: Scheduled\n"
                                "metadata:\n  source:\n    kind: Community\n"
                                "  categories:\n    domains: [ \"x\" ]\n"
                                "customDetails:\n  Count: TotalCount\n"
                                "incidentConfiguration:\n"
                                "  createIncident: false\n"
                                "tags: [a, b]\n"
                                "description-detailed: |\n  more\n"
                                "query: x\n");

    (void)state;
    assert_string_equal(r->id, "a");
    assert_query(r, "x");
    md_rule_free(r);
}

static void version_string_ignored(void **state)
{
    struct md_rule *r = load_ok("t.yaml", "id: a\nversion: l.0.0\n"
                                "query: x\n");

    (void)state;
    assert_query(r, "x");
    md_rule_free(r);
}

static void connectors_parsed(void **state)
{
    struct md_rule *r = load_ok("t.yaml",
                                "id: a\nrequiredDataConnectors:\n"
                                "  - connectorId: MicrosoftThreatProtection\n"
                                "    dataTypes:\n"
                                "      - CloudAppEvents\n"
                                "      - SecurityAlert (MDATP)\n"
                                "  - connectorId: AzureActiveDirectory\n"
                                "    dataTypes: SigninLogs\n"
                                "query: x\n");

    (void)state;
    assert_int_equal(r->nconnectors, 2);
    assert_string_equal(r->connectors[0].connector_id,
                        "MicrosoftThreatProtection");
    assert_int_equal(r->connectors[0].ndata_types, 2);
    assert_string_equal(r->connectors[0].data_types[1],
                        "SecurityAlert (MDATP)");
    assert_string_equal(r->connectors[1].connector_id,
                        "AzureActiveDirectory");
    assert_int_equal(r->connectors[1].ndata_types, 1);
    assert_string_equal(r->connectors[1].data_types[0], "SigninLogs");
    md_rule_free(r);
}

static void entity_mappings_parsed(void **state)
{
    struct md_rule *r = load_ok("t.yaml",
                                "id: a\nentityMappings:\n"
                                "- entityType: Host\n"
                                "  fieldMappings:\n"
                                "  - identifier: HostName\n"
                                "    columnName: DeviceName\n"
                                "- entityType: Account\n"
                                "  fieldMappings:\n"
                                "  - identifier: Name\n"
                                "    columnName: AccountName\n"
                                "  - identifier: NTDomain \n"
                                "    columnName: AccountDomain\n"
                                "query: x\n");

    (void)state;
    assert_int_equal(r->nmappings, 2);
    assert_string_equal(r->mappings[0].entity_type, "Host");
    assert_int_equal(r->mappings[0].nfields, 1);
    assert_string_equal(r->mappings[0].fields[0].identifier, "HostName");
    assert_string_equal(r->mappings[0].fields[0].column, "DeviceName");
    assert_string_equal(r->mappings[1].entity_type, "Account");
    assert_int_equal(r->mappings[1].nfields, 2);
    assert_string_equal(r->mappings[1].fields[1].identifier, "NTDomain");
    assert_string_equal(r->mappings[1].fields[1].column, "AccountDomain");
    md_rule_free(r);
}

static void connector_item_scalar_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("t.yaml", "id: a\nrequiredDataConnectors:\n"
                                 "  - DeviceEvents\nquery: x\n", &err);

    (void)state;
    assert_true(names_line(msg, "t.yaml", 3));
    assert_non_null(strstr(msg, "requiredDataConnectors"));
}

/* ------------------------------------------------------------------ */
/* Durations                                                           */
/* ------------------------------------------------------------------ */

static void durations_valid(void **state)
{
    static const struct {
        const char *text;
        int64_t seconds;
    } cases[] = {
        { "5m", 300 },
        { "1h", 3600 },
        { "1d", 86400 },
        { "14d", 14 * 86400 },
        { "01:30:00", 5400 },
        { "1.02:03:04", 93784 },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[200];
        struct md_rule *r;

        snprintf(text, sizeof(text), "id: a\nqueryFrequency: %s\n"
                 "queryPeriod: \"%s\"\nquery: x\n", cases[i].text,
                 cases[i].text);
        r = load_ok("d.yaml", text);
        assert_int_equal(r->frequency, cases[i].seconds);
        assert_int_equal(r->period, cases[i].seconds);
        md_rule_free(r);
    }
}

static void duration_absent_is_zero(void **state)
{
    struct md_rule *r = load_ok("d.yaml", "id: a\nqueryPeriod:\nquery: x\n");

    (void)state;
    assert_int_equal(r->frequency, 0);
    assert_int_equal(r->period, 0);
    md_rule_free(r);
}

static void durations_invalid_name_line(void **state)
{
    static const char *const bad[] = { "1H", "5", "-1d", "PT1H", "1 d" };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[200];
        char value[40];
        struct md_error err;
        const char *msg;

        snprintf(text, sizeof(text), "id: a\nname: n\nqueryPeriod: %s\n"
                 "query: x\n", bad[i]);
        msg = load_error("d.yaml", text, &err);
        snprintf(value, sizeof(value), "'%s'", bad[i]);
        assert_true(names_line(msg, "d.yaml", 3));
        assert_non_null(strstr(msg, value));
        assert_non_null(strstr(msg, "queryPeriod"));
    }
}

/* ------------------------------------------------------------------ */
/* The query value                                                     */
/* ------------------------------------------------------------------ */

static void chomp_clip_keeps_one_break(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: |\n  A\n  B\n\n\n"
                                "name: n\n");

    (void)state;
    assert_query(r, "A\nB\n");
    md_rule_free(r);
}

static void chomp_strip_drops_breaks(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: |-\n  A\n  B\n\n"
                                "name: n\n");

    (void)state;
    assert_query(r, "A\nB");
    md_rule_free(r);
}

static void chomp_keep_keeps_all(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: |+\n  A\n\n\n"
                                "name: n\n");

    (void)state;
    assert_query(r, "A\n\n\n");
    md_rule_free(r);
}

static void clip_without_final_break(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: |\n  A\n  B");

    (void)state;
    assert_query(r, "A\nB");
    md_rule_free(r);
}

static void block_keeps_inner_indent(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery:  |\n   A\n"
                                "     | x\n\n   B\n");

    (void)state;
    assert_query(r, "A\n  | x\n\nB\n");
    md_rule_free(r);
}

static void plain_scalar_folds(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: DeviceEvents\n"
                                "  | take 10\n");

    (void)state;
    assert_query(r, "DeviceEvents | take 10");
    md_rule_free(r);
}

static void quoted_scalars_unescaped(void **state)
{
    struct md_rule *single = load_ok("c.yaml", "id: a\n"
                                     "query: 'T | where A == ''x'''\n");
    struct md_rule *dbl = load_ok("d.yaml", "id: a\n"
                                  "query: \"T\\n| where A == \\\"\\\\\\\"\"\n");

    (void)state;
    assert_query(single, "T | where A == 'x'");
    assert_query(dbl, "T\n| where A == \"\\\"");
    md_rule_free(single);
    md_rule_free(dbl);
}

static void crlf_becomes_lf(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\r\nquery: |\r\n  A\r\n"
                                "  B\r\nname: n\r\n");

    (void)state;
    assert_query(r, "A\nB\n");
    assert_string_equal(r->name, "n");
    md_rule_free(r);
}

static void tabs_and_trailing_spaces_kept(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: |\n"
                                "  A \t\n  \t// c\n  B  \n");

    (void)state;
    assert_query(r, "A \t\n\t// c\nB  \n");
    md_rule_free(r);
}

static void non_ascii_kept(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: |\n"
                                "  where Signer has 'DWSNET O\xc3\x9c'\n");

    (void)state;
    assert_query(r, "where Signer has 'DWSNET O\xc3\x9c'\n");
    md_rule_free(r);
}

static void bom_skipped(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "\xef\xbb\xbfid: a\nquery: x\n");

    (void)state;
    assert_string_equal(r->id, "a");
    md_rule_free(r);
}

static void leading_document_marker(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "---\nid: a\nquery: x\n");

    (void)state;
    assert_query(r, "x");
    md_rule_free(r);
}

static void query_line_is_first_content(void **state)
{
    struct md_rule *block = load_ok("c.yaml", "id: a\nquery: |\n\n  A\n");
    struct md_rule *plain = load_ok("d.yaml", "id: a\nname: n\nquery: A\n");

    (void)state;
    assert_int_equal(block->query_line, 4);
    assert_int_equal(plain->query_line, 3);
    md_rule_free(block);
    md_rule_free(plain);
}

static void query_sha256_of_bytes(void **state)
{
    struct md_rule *r = load_ok("c.yaml", "id: a\nquery: |\n  DeviceEvents\n");

    (void)state;
    /* sha256sum of the 13 bytes "DeviceEvents\n". */
    assert_string_equal(r->query_sha256, "71efa99ddf8e5daa10368ad9b5156ab0"
                        "0a70c394bdffdc234c9d0b55c80b6951");
    md_rule_free(r);
}

static void fenced_query_stripped(void **state)
{
    unsigned long before = md_log_warning_count();
    struct md_rule *r;
    char *log;

    capture_start();
    r = load_ok("f.yaml", "---\nid: a\nquery: \"```kusto\\nlet x = 1;\\n"
                "// \\nT\\n```\"\n---\n\n");
    log = capture_end();

    (void)state;
    assert_query(r, "let x = 1;\n// \nT\n");
    assert_int_equal(md_log_warning_count() - before, 1);
    assert_non_null(strstr(log, "f.yaml:3: "));
    assert_non_null(strstr(log, "code fence"));
    free(log);
    md_rule_free(r);
}

static void long_query_only_warns(void **state)
{
    static const char head[] = "id: a\nquery: ";
    unsigned long before = md_log_warning_count();
    size_t n = 10001;
    char *text = malloc(sizeof(head) + n + 1);
    struct md_rule *r;
    char *log;

    (void)state;
    assert_non_null(text);
    memcpy(text, head, sizeof(head) - 1);
    memset(text + sizeof(head) - 1, 'x', n);
    strcpy(text + sizeof(head) - 1 + n, "\n");
    capture_start();
    r = load_ok("long.yaml", text);
    log = capture_end();

    assert_int_equal(r->query_len, n);
    assert_int_equal(md_log_warning_count() - before, 1);
    assert_non_null(strstr(log, "10001 characters"));
    free(log);
    free(text);
    md_rule_free(r);
}

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

static void missing_query_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("e.yaml", "id: a\nname: n\n", &err);

    (void)state;
    assert_true(names_line(msg, "e.yaml", 1));
    assert_non_null(strstr(msg, "no query"));
}

static void empty_query_is_error(void **state)
{
    static const char *const texts[] = {
        "id: a\nquery: \"\"\n",
        "id: a\nquery: |\n\n  \nname: n\n",
        "id: a\nquery: \"  \\n \"\n",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct md_error err;
        const char *msg = load_error("e.yaml", texts[i], &err);

        assert_non_null(strstr(msg, "the query is empty"));
    }
}

static void null_query_is_missing(void **state)
{
    struct md_error err;
    const char *msg = load_error("e.yaml", "id: a\nquery:\n", &err);

    (void)state;
    assert_non_null(strstr(msg, "no query"));
}

static void query_list_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("e.yaml", "id: a\nquery:\n  - x\n", &err);

    (void)state;
    assert_true(names_line(msg, "e.yaml", 3));
}

static void empty_id_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("e.yaml", "id: \"\"\nquery: x\n", &err);

    (void)state;
    assert_non_null(strstr(msg, "id is empty"));
}

static void missing_id_uses_stem(void **state)
{
    unsigned long before = md_log_warning_count();
    struct md_rule *r;
    char *log;

    capture_start();
    r = load_ok("detect-uac.yml", "name: n\nquery: x\n");
    log = capture_end();

    (void)state;
    assert_string_equal(r->id, "detect-uac");
    assert_int_equal(r->id_from_file, 1);
    assert_int_equal(md_log_warning_count() - before, 1);
    assert_non_null(strstr(log, "detect-uac.yml:1: "));
    free(log);
    md_rule_free(r);
}

static void scalar_root_suggests_kql(void **state)
{
    struct md_error err;
    const char *msg = load_error("NoExtension", "DeviceEvents\n"
                                 "| where ActionType == 1\n| take 10\n",
                                 &err);

    (void)state;
    assert_true(names_line(msg, "NoExtension", 1));
    assert_non_null(strstr(msg, ".kql"));
}

static void list_root_suggests_kql(void **state)
{
    struct md_error err;
    const char *msg = load_error("l.yaml", "- a\n- b\n", &err);

    (void)state;
    assert_non_null(strstr(msg, "not a mapping"));
    assert_non_null(strstr(msg, ".kql"));
}

static void empty_file_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("empty.yaml", "", &err);

    (void)state;
    assert_true(names_line(msg, "empty.yaml", 1));
}

static void invalid_utf8_names_line(void **state)
{
    struct md_error err;
    const char *msg = load_error("u.yaml", "id: a\r\nname: n\r\n"
                                 "description: caf\xc3\x28\r\nquery: x\r\n",
                                 &err);

    (void)state;
    assert_true(names_line(msg, "u.yaml", 3));
    assert_non_null(strstr(msg, "UTF-8"));
}

static void overlong_utf8_rejected(void **state)
{
    struct md_error err;
    const char *msg = load_error("u.yaml", "id: a\nquery: \xc0\xaf\n", &err);

    (void)state;
    assert_true(names_line(msg, "u.yaml", 2));
}

static void nul_byte_rejected(void **state)
{
    struct md_error err;
    struct md_rule *rule = NULL;
    const char *path = write_bytes("n.yaml", "id: a\nquery: x\0y\n", 17);

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_rule_load(path, &rule, &err), -1);
    assert_null(rule);
    assert_true(names_line(err.message, "n.yaml", 2));
    assert_non_null(strstr(err.message, "NUL"));
}

static void tab_indent_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("tab.yaml", "id: a\nmetadata:\n"
                                 "\tsource: x\nquery: x\n", &err);

    (void)state;
    assert_true(names_line(msg, "tab.yaml", 3));
    assert_non_null(strstr(msg, "tab"));
}

static void unknown_defect_names_line(void **state)
{
    struct md_error err;
    const char *msg = load_error("bad.yaml", "id: a\nname: n\n"
                                 "description: d\n   severity: High\n"
                                 "query: x\n", &err);

    (void)state;
    assert_true(names_line(msg, "bad.yaml", 4));
    assert_non_null(strstr(msg, "invalid YAML"));
}

static void duplicate_root_key_names_both(void **state)
{
    struct md_error err;
    const char *msg = load_error("dup.yaml", "id: a\nquery: |\n  x\n"
                                 "name: n\nquery: y\n", &err);

    (void)state;
    assert_true(names_line(msg, "dup.yaml", 5));
    assert_non_null(strstr(msg, "'query'"));
    assert_non_null(strstr(msg, "line 2"));
}

static void second_document_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("two.yaml", "id: a\nquery: x\n---\n"
                                 "id: b\nquery: y\n", &err);

    (void)state;
    assert_true(names_line(msg, "two.yaml", 4));
    assert_non_null(strstr(msg, "second YAML document"));
}

static void missing_file_is_error(void **state)
{
    struct md_error err;
    struct md_rule *rule = NULL;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_rule_load(MD_TEST_DATA "/rules/no-such.yaml", &rule,
                                  &err), -1);
    assert_int_equal(err.kind, MD_E_RULE);
    assert_non_null(strstr(err.message, "no-such.yaml"));
}

/* ------------------------------------------------------------------ */
/* The repair pre-pass                                                 */
/* ------------------------------------------------------------------ */

/* The layout of every file of the public RMM collection. */
#define RMM_HEAD \
    "id: ba1e02dc-2731-4f65-bdd3-b293e0490e9a\r\n" \
    "name: RMM\r\n" \
    "description: |\r\n" \
    "    Text.\r\n" \
    "requiredDataConnectors:\r\n" \
    "    - connectorId: MicrosoftThreatProtection\r\n" \
    "    dataTypes:\r\n" \
    "        - DeviceFileCertificateInfo\r\n" \
    "tactics: CommandAndControl\r\n"

static void repair_data_types_line(void **state)
{
    unsigned long before = md_log_warning_count();
    struct md_rule *r;
    char *log;

    capture_start();
    r = load_ok("rmm.yaml", RMM_HEAD "query: |\r\n  A\r\n");
    log = capture_end();

    (void)state;
    assert_int_equal(r->nconnectors, 1);
    assert_string_equal(r->connectors[0].connector_id,
                        "MicrosoftThreatProtection");
    assert_int_equal(r->connectors[0].ndata_types, 1);
    assert_string_equal(r->connectors[0].data_types[0],
                        "DeviceFileCertificateInfo");
    assert_string_equal(r->tactics[0], "CommandAndControl");
    assert_query(r, "A\n");
    assert_int_equal(md_log_warning_count() - before, 1);
    assert_non_null(strstr(log, "rmm.yaml:7: repaired"));
    free(log);
    md_rule_free(r);
}

static void repair_data_types_items(void **state)
{
    struct md_rule *at_dash = load_ok("r1.yaml", "id: a\n"
                                      "requiredDataConnectors:\n"
                                      "    - connectorId: C\n"
                                      "    dataTypes:\n"
                                      "    - T1\n"
                                      "    - T2\n"
                                      "    - connectorId: D\n"
                                      "    dataTypes:\n"
                                      "     - T3\n"
                                      "query: x\n");

    (void)state;
    assert_int_equal(at_dash->nconnectors, 2);
    assert_int_equal(at_dash->connectors[0].ndata_types, 2);
    assert_string_equal(at_dash->connectors[0].data_types[1], "T2");
    assert_string_equal(at_dash->connectors[1].connector_id, "D");
    assert_int_equal(at_dash->connectors[1].ndata_types, 1);
    assert_string_equal(at_dash->connectors[1].data_types[0], "T3");
    md_rule_free(at_dash);
}

static void valid_sibling_not_repaired(void **state)
{
    unsigned long before = md_log_warning_count();
    struct md_rule *r;

    /* The sequence sits at its key's column, so "dataTypes:" is a valid
     * key of the root mapping and must stay one. */
    r = load_ok("v.yaml", "id: a\nrequiredDataConnectors:\n"
                "- connectorId: C\ndataTypes:\n- T\nquery: x\n");

    (void)state;
    assert_int_equal(md_log_warning_count() - before, 0);
    assert_int_equal(r->nconnectors, 1);
    assert_int_equal(r->connectors[0].ndata_types, 0);
    md_rule_free(r);
}

static void repair_query_first_line(void **state)
{
    unsigned long before = md_log_warning_count();
    struct md_rule *r;
    char *log;

    capture_start();
    r = load_ok("NegoEx", "id: a\nquery: |\n   DeviceLogonEvents \n"
                "  | where P == \"N\" \n\n  | project T \n");
    log = capture_end();

    (void)state;
    assert_query(r, "DeviceLogonEvents \n| where P == \"N\" \n\n"
                 "| project T \n");
    assert_int_equal(r->query_line, 3);
    assert_int_equal(md_log_warning_count() - before, 1);
    assert_non_null(strstr(log, "NegoEx:3: repaired"));
    free(log);
    md_rule_free(r);
}

static void query_repair_needs_proof(void **state)
{
    struct md_error err;
    const char *msg;

    /* Line 5 is indented under the key but less than the block, so even
     * the repaired block would end before it: no repair, an error. */
    msg = load_error("q.yaml", "id: a\nquery: |\n    A\n   B\n  C\n"
                     "name: n\n", &err);

    (void)state;
    assert_true(names_line(msg, "q.yaml", 4));
    assert_non_null(strstr(msg, "invalid YAML"));
}

static void explicit_indent_not_repaired(void **state)
{
    struct md_rule *r = load_ok("q.yaml", "id: a\nquery: |2\n   A\n  B\n");

    (void)state;
    assert_query(r, " A\nB\n");
    md_rule_free(r);
}

static void error_after_repair_names_line(void **state)
{
    struct md_error err;
    const char *bad_period;
    const char *bad_syntax;

    bad_period = load_error("rmm1.yaml", RMM_HEAD "relevantTechniques: T1\r\n"
                            "queryPeriod: 1H\r\nquery: |\r\n  A\r\n", &err);
    (void)state;
    assert_true(names_line(bad_period, "rmm1.yaml", 11));

    bad_syntax = load_error("rmm2.yaml", RMM_HEAD "  relevantTechniques: "
                            "T1\r\nquery: |\r\n  A\r\n", &err);
    assert_true(names_line(bad_syntax, "rmm2.yaml", 10));
}

static void repaired_column_is_original(void **state)
{
    struct md_error err;
    const char *msg;

    /* The error is on the repaired line 7, so its column is given as in
     * the original file: 17, the ':' after "dataTypes: x". */
    msg = load_error("col.yaml", "id: a\nname: n\ndescription: d\n"
                     "requiredDataConnectors:\n"
                     "    - connectorId: C\n"
                     "      other: 1\n"
                     "    dataTypes: x: y\n"
                     "query: x\n", &err);

    (void)state;
    assert_true(names_line(msg, "col.yaml", 7));
    assert_non_null(strstr(msg, "column 17"));
}

/* ------------------------------------------------------------------ */
/* KQL files and ad hoc queries                                        */
/* ------------------------------------------------------------------ */

static void kql_file_is_whole_query(void **state)
{
    struct md_rule *r = load_ok("Hunt Devices.KQL", "\xef\xbb\xbf"
                                "DeviceInfo\r\n| take 10 \t\r\n\r\n");

    (void)state;
    assert_string_equal(r->id, "Hunt Devices");
    assert_int_equal(r->id_from_file, 1);
    assert_null(r->name);
    assert_query(r, "DeviceInfo\n| take 10 \t\n\n");
    assert_int_equal(r->query_line, 1);
    md_rule_free(r);
}

static void empty_kql_is_error(void **state)
{
    struct md_error err;
    const char *msg = load_error("e.kql", "\n \n", &err);

    (void)state;
    assert_non_null(strstr(msg, "the query is empty"));
}

static void adhoc_query_rule(void **state)
{
    struct md_rule *r = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_rule_from_query("DeviceInfo | take 1", 19, "-q", &r,
                                        &err), 0);
    assert_string_equal(r->id, "adhoc");
    assert_null(r->name);
    assert_string_equal(r->file, "-q");
    assert_query(r, "DeviceInfo | take 1");
    assert_int_equal(strlen(r->query_sha256), 64);
    md_rule_free(r);
}

static void adhoc_empty_is_error(void **state)
{
    struct md_rule *r = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_rule_from_query("  \n", 3, "-q", &r, &err), -1);
    assert_null(r);
    assert_int_equal(err.kind, MD_E_RULE);
    assert_non_null(strstr(err.message, "-q"));
}

static void rule_print_shows_fields(void **state)
{
    struct md_rule *r = load_ok("p.yaml", "id: a\nname: N\ntactics: [T]\n"
                                "queryPeriod: 5d\nquery: |\n  Q\n");
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);

    (void)state;
    assert_non_null(f);
    assert_int_equal(md_rule_print(f, r), 0);
    fclose(f);
    assert_non_null(strstr(out, "id:          a\n"));
    assert_non_null(strstr(out, "name:        N\n"));
    assert_non_null(strstr(out, "tactics:     T\n"));
    assert_non_null(strstr(out, "period:      5d\n"));
    assert_non_null(strstr(out, "severity:    -\n"));
    assert_non_null(strstr(out, "query:\nQ\n"));
    free(out);
    md_rule_free(r);
}

/* ------------------------------------------------------------------ */
/* Rule sets                                                           */
/* ------------------------------------------------------------------ */

static void directory_sorted_and_filtered(void **state)
{
    const char *paths[] = { MD_TEST_DATA "/rules/dir" };
    struct md_ruleset set;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_ruleset_load(paths, 1, 0, &set, &err), 0);
    assert_int_equal(set.nrules, 4);
    assert_string_equal(set.rules[0]->id, "a-query");
    assert_string_equal(set.rules[1]->id, "rule-b");
    assert_string_equal(set.rules[2]->id, "rule-c");
    assert_string_equal(set.rules[3]->id, "rule-d");
    assert_non_null(md_ruleset_find(&set, "RULE-C"));
    assert_null(md_ruleset_find(&set, "nested"));
    md_ruleset_free(&set);
}

static void file_named_directly_loads(void **state)
{
    const char *paths[] = {
        MD_TEST_DATA "/rules/dir/sub/nested.yaml",
        MD_TEST_DATA "/rules/dir/b-rule.yaml",
    };
    struct md_ruleset set;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_ruleset_load(paths, 2, 0, &set, &err), 0);
    assert_int_equal(set.nrules, 2);
    assert_string_equal(set.rules[0]->id, "nested");
    md_ruleset_free(&set);
}

static void duplicate_ids_name_both(void **state)
{
    const char *paths[2];
    struct md_ruleset set;
    struct md_error err;

    (void)state;
    paths[0] = write_text("one.yaml", "id: ABC\nquery: x\n");
    paths[1] = write_text("abc.kql", "T");
    md_error_clear(&err);
    assert_int_equal(md_ruleset_load(paths, 2, 0, &set, &err), -1);
    assert_int_equal(set.nrules, 0);
    assert_int_equal(err.kind, MD_E_RULE);
    assert_non_null(strstr(err.message, "one.yaml"));
    assert_non_null(strstr(err.message, "abc.kql"));
    md_ruleset_free(&set);
}

static void corpus_duplicates_keep_going(void **state)
{
    const char *paths[] = { CORPUS_RULES };
    struct md_ruleset set;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    capture_start();
    assert_int_equal(md_ruleset_load(paths, 1, 1, &set, &err), -1);
    free(capture_end());

    /* Three Azure-Sentinel copies reuse the ids of their jischell
     * originals. */
    assert_int_equal(set.nrules, CORPUS_FILES - 3);
    assert_non_null(strstr(err.message,
                           "sentinel__rmm_DWService_filesig.yaml"));
    assert_non_null(strstr(err.message,
                           "jischell__rmm_DWService_filesig.yaml"));
    md_ruleset_free(&set);
}

static void corpus_stops_without_keep_going(void **state)
{
    const char *paths[] = { CORPUS_RULES };
    struct md_ruleset set;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    capture_start();
    assert_int_equal(md_ruleset_load(paths, 1, 0, &set, &err), -1);
    free(capture_end());
    assert_int_equal(set.nrules, 0);
    assert_null(set.rules);
}

/* ------------------------------------------------------------------ */
/* The corpus and the shipped rule                                     */
/* ------------------------------------------------------------------ */

static void corpus_has_70_files(void **state)
{
    DIR *d = opendir(CORPUS_RULES);
    struct dirent *e;
    int n = 0;

    (void)state;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    assert_int_equal(n, CORPUS_FILES);
}

static void check_corpus_file(const char *name)
{
    char path[1024];
    char expected_path[1024];
    struct md_rule *rule = NULL;
    struct md_error err;
    char *expected;
    size_t len = 0;

    snprintf(path, sizeof(path), "%s/%s", CORPUS_RULES, name);
    snprintf(expected_path, sizeof(expected_path), "%s/%s.kql",
             CORPUS_EXPECTED, name);
    md_error_clear(&err);
    if (md_rule_load(path, &rule, &err) != 0)
        print_error("%s: %s\n", name, err.message);
    assert_non_null(rule);

    expected = read_whole(expected_path, &len);
    if (expected == NULL)
        print_error("%s: no expected query file\n", name);
    assert_non_null(expected);
    if (rule->query_len != len || memcmp(rule->query, expected, len) != 0)
        print_error("%s: query differs from %s\n", name, expected_path);
    assert_int_equal(rule->query_len, len);
    assert_memory_equal(rule->query, expected, len);
    free(expected);
    md_rule_free(rule);
}

static void corpus_queries_match(void **state)
{
    DIR *d = opendir(CORPUS_RULES);
    struct dirent *e;
    int n = 0;

    (void)state;
    assert_non_null(d);
    capture_start();
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        check_corpus_file(e->d_name);
        n++;
    }
    free(capture_end());
    closedir(d);
    assert_int_equal(n, CORPUS_FILES);
}

static void corpus_known_lines(void **state)
{
    struct md_rule *nego = NULL;
    struct md_rule *zoho = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    capture_start();
    assert_int_equal(md_rule_load(CORPUS_RULES "/sentinel__NegoExLogins",
                                  &nego, &err), 0);
    assert_int_equal(md_rule_load(CORPUS_RULES
                                  "/jischell__rmm_ZohoAssist_filesig.yaml",
                                  &zoho, &err), 0);
    free(capture_end());
    assert_int_equal(nego->query_line, 10);
    assert_int_equal(zoho->query_line, 13);
    assert_string_equal(zoho->connectors[0].data_types[0],
                        "DeviceFileCertificateInfo");
    md_rule_free(nego);
    md_rule_free(zoho);
}

static void shipped_rule_is_valid(void **state)
{
    static const char query[] =
        "let Time_start = now(-5d);\n"
        "let Time_end = now();\n"
        "//\n"
        "// *Will return all binaries signed by Zoho, not just Zoho Assist*\n"
        "//\n"
        "DeviceFileCertificateInfo\n"
        "| where Timestamp between (Time_start..Time_end)\n"
        "| where Signer has 'Zoho'\n"
        "| summarize FirstSeen=min(Timestamp), LastSeen=max(Timestamp),\n"
        "Report=make_set(ReportId), Count=count() by DeviceId, DeviceName\n";
    unsigned long before = md_log_warning_count();
    struct md_rule *r = NULL;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_rule_load("config/rules/"
                                  "rmm-zohoassist-file-signature.yaml", &r,
                                  &err), 0);
    assert_int_equal(md_log_warning_count() - before, 0);
    assert_string_equal(r->id, "ba1e02dc-2731-4f65-bdd3-b293e0490e9a");
    assert_string_equal(r->name, "Remote Management and Monitoring tool - "
                        "ZohoAssist - File Signature");
    assert_int_equal(r->frequency, 86400);
    assert_int_equal(r->period, 5 * 86400);
    assert_string_equal(r->tactics[0], "CommandAndControl");
    assert_string_equal(r->techniques[0], "T1219");
    assert_string_equal(r->connectors[0].data_types[0],
                        "DeviceFileCertificateInfo");
    assert_string_equal(r->mappings[0].entity_type, "Host");
    assert_string_equal(r->mappings[0].fields[0].identifier, "HostName");
    assert_string_equal(r->mappings[0].fields[0].column, "DeviceName");
    assert_query(r, query);
    md_rule_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tactics_scalar_is_one_item),
        cmocka_unit_test(tactics_list_keeps_order),
        cmocka_unit_test(tactics_empty_null_absent),
        cmocka_unit_test(techniques_skip_null_items),
        cmocka_unit_test(tactics_mapping_is_error),
        cmocka_unit_test(text_fields_read),
        cmocka_unit_test(unknown_fields_ignored),
        cmocka_unit_test(version_string_ignored),
        cmocka_unit_test(connectors_parsed),
        cmocka_unit_test(entity_mappings_parsed),
        cmocka_unit_test(connector_item_scalar_is_error),
        cmocka_unit_test(durations_valid),
        cmocka_unit_test(duration_absent_is_zero),
        cmocka_unit_test(durations_invalid_name_line),
        cmocka_unit_test(chomp_clip_keeps_one_break),
        cmocka_unit_test(chomp_strip_drops_breaks),
        cmocka_unit_test(chomp_keep_keeps_all),
        cmocka_unit_test(clip_without_final_break),
        cmocka_unit_test(block_keeps_inner_indent),
        cmocka_unit_test(plain_scalar_folds),
        cmocka_unit_test(quoted_scalars_unescaped),
        cmocka_unit_test(crlf_becomes_lf),
        cmocka_unit_test(tabs_and_trailing_spaces_kept),
        cmocka_unit_test(non_ascii_kept),
        cmocka_unit_test(bom_skipped),
        cmocka_unit_test(leading_document_marker),
        cmocka_unit_test(query_line_is_first_content),
        cmocka_unit_test(query_sha256_of_bytes),
        cmocka_unit_test(fenced_query_stripped),
        cmocka_unit_test(long_query_only_warns),
        cmocka_unit_test(missing_query_is_error),
        cmocka_unit_test(empty_query_is_error),
        cmocka_unit_test(null_query_is_missing),
        cmocka_unit_test(query_list_is_error),
        cmocka_unit_test(empty_id_is_error),
        cmocka_unit_test(missing_id_uses_stem),
        cmocka_unit_test(scalar_root_suggests_kql),
        cmocka_unit_test(list_root_suggests_kql),
        cmocka_unit_test(empty_file_is_error),
        cmocka_unit_test(invalid_utf8_names_line),
        cmocka_unit_test(overlong_utf8_rejected),
        cmocka_unit_test(nul_byte_rejected),
        cmocka_unit_test(tab_indent_is_error),
        cmocka_unit_test(unknown_defect_names_line),
        cmocka_unit_test(duplicate_root_key_names_both),
        cmocka_unit_test(second_document_is_error),
        cmocka_unit_test(missing_file_is_error),
        cmocka_unit_test(repair_data_types_line),
        cmocka_unit_test(repair_data_types_items),
        cmocka_unit_test(valid_sibling_not_repaired),
        cmocka_unit_test(repair_query_first_line),
        cmocka_unit_test(query_repair_needs_proof),
        cmocka_unit_test(explicit_indent_not_repaired),
        cmocka_unit_test(error_after_repair_names_line),
        cmocka_unit_test(repaired_column_is_original),
        cmocka_unit_test(kql_file_is_whole_query),
        cmocka_unit_test(empty_kql_is_error),
        cmocka_unit_test(adhoc_query_rule),
        cmocka_unit_test(adhoc_empty_is_error),
        cmocka_unit_test(rule_print_shows_fields),
        cmocka_unit_test(directory_sorted_and_filtered),
        cmocka_unit_test(file_named_directly_loads),
        cmocka_unit_test(duplicate_ids_name_both),
        cmocka_unit_test(corpus_duplicates_keep_going),
        cmocka_unit_test(corpus_stops_without_keep_going),
        cmocka_unit_test(corpus_has_70_files),
        cmocka_unit_test(corpus_queries_match),
        cmocka_unit_test(corpus_known_lines),
        cmocka_unit_test(shipped_rule_is_valid),
    };

    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
