/* Tests for the digest model, the send decision and the renderings. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/report.h"

#define TENANT "contoso.onmicrosoft.com"
#define DEVICE_ID "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"

/* 2025-03-01T12:00:00Z */
#define T0 (INT64_C(1740830400) * MD_TICKS_PER_SECOND)
#define HOUR (INT64_C(3600) * MD_TICKS_PER_SECOND)

static struct md_digest *digest_new(void)
{
    struct md_digest *d = NULL;
    struct md_error err;

    md_error_clear(&err);
    assert_int_equal(md_digest_new(TENANT, T0, &d, &err), 0);
    return d;
}

static size_t add_rule(struct md_digest *d, const char *id,
                       const char *severity)
{
    static const char *const tactics[] = { "CommandAndControl" };
    static const char *const techniques[] = { "T1219", "T1566.001" };
    struct md_digest_rule rule;
    struct md_error err;
    size_t index = 99;

    memset(&rule, 0, sizeof(rule));
    rule.rule_id = id;
    rule.name = id;
    rule.severity = severity;
    rule.tactics = tactics;
    rule.ntactics = 1;
    rule.techniques = techniques;
    rule.ntechniques = 2;
    rule.backend = "graph";
    rule.window_start = T0 - HOUR;
    rule.window_end = T0;
    rule.query_sha256 = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
                        "7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";
    rule.frequency = 3600;
    rule.gone_after = 5 * 86400;
    rule.runs = 1;
    rule.last_success = T0;
    md_error_clear(&err);
    assert_int_equal(md_digest_add_rule(d, &rule, &index, &err), 0);
    return index;
}

static void add_hit(struct md_digest *d, size_t rule, enum md_change change,
                    const char *id, const char *name)
{
    static const struct md_digest_column columns[] = {
        { "Signer", "Zoho Corporation" },
        { "FileName", "ZA_Access.exe" },
    };
    struct md_digest_hit hit;
    struct md_error err;

    memset(&hit, 0, sizeof(hit));
    hit.rule = rule;
    hit.change = change;
    hit.device_id = id;
    hit.device_name = name;
    hit.first_seen = T0 - 2 * HOUR;
    hit.last_seen = T0 - HOUR;
    hit.observed = T0;
    hit.columns = columns;
    hit.ncolumns = 2;
    md_error_clear(&err);
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
}

enum rendering { TEXT, HTML, CSV, SUBJECT };

static char *render(const struct md_digest *d, enum rendering what,
                    long max_rows)
{
    struct md_report_options opts = { "[mdhunt]", max_rows };
    struct md_buf out = MD_BUF_INIT;
    struct md_error err;
    int rc = -1;

    md_error_clear(&err);
    switch (what) {
    case TEXT:
        rc = md_report_text(d, &opts, &out, &err);
        break;
    case HTML:
        rc = md_report_html(d, &opts, &out, &err);
        break;
    case CSV:
        rc = md_report_csv(d, &out, &err);
        break;
    case SUBJECT:
        rc = md_report_subject(d, &opts, &out, &err);
        break;
    }
    assert_int_equal(rc, 0);
    return md_buf_detach(&out);
}

/* A digest of one rule that found one device with this name. */
static struct md_digest *digest_with_name(const char *name)
{
    struct md_digest *d = digest_new();

    add_hit(d, add_rule(d, "zoho-signature", "High"), MD_CHANGE_NEW,
            DEVICE_ID, name);
    return d;
}

static size_t count_occurrences(const char *haystack, const char *needle)
{
    size_t n = 0;

    for (const char *p = strstr(haystack, needle); p != NULL;
         p = strstr(p + 1, needle))
        n++;
    return n;
}

static size_t count_lines(const char *s)
{
    return count_occurrences(s, "\n");
}

/* ---- hostile values ------------------------------------------------- */

static void html_escapes_script_name(void **state)
{
    struct md_digest *d = digest_with_name("<script>alert(1)</script>");
    char *html = render(d, HTML, 10);

    (void)state;
    assert_non_null(strstr(html, "&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_null(strstr(html, "<script"));
    free(html);
    md_digest_free(d);
}

static void html_escapes_quotes(void **state)
{
    struct md_digest *d = digest_with_name("a\"b'c&d");
    char *html = render(d, HTML, 10);

    (void)state;
    assert_non_null(strstr(html, "a&quot;b&#39;c&amp;d"));
    assert_null(strstr(html, "a\"b'c"));
    free(html);
    md_digest_free(d);
}

static void html_has_no_active_content(void **state)
{
    struct md_digest *d = digest_with_name("<img src=x onerror=alert(1)>");
    char *html = render(d, HTML, 10);

    (void)state;
    assert_non_null(strstr(html, "&lt;img src=x onerror=alert(1)&gt;"));
    assert_null(strstr(html, "<img"));
    assert_null(strstr(html, "<script"));
    assert_null(strstr(html, "<link"));
    assert_null(strstr(html, "<style"));
    assert_null(strstr(html, "<iframe"));
    free(html);
    md_digest_free(d);
}

static void csv_neutralises_formula(void **state)
{
    struct md_digest *d = digest_with_name("=cmd|' /C calc'!A0");
    char *csv = render(d, CSV, 10);

    (void)state;
    assert_non_null(strstr(csv, ",'=cmd|' /C calc'!A0,"));
    assert_null(strstr(csv, ",=cmd"));
    free(csv);
    md_digest_free(d);
}

static void csv_prefixes_formula_starts(void **state)
{
    static const struct {
        const char *name;
        const char *field;
    } cases[] = {
        { "+1", ",'+1," },
        { "-1", ",'-1," },
        { "@SUM(A1)", ",'@SUM(A1)," },
        { "\tx", ",'\tx," },
        { "\rx", ",\"'\rx\"," },
        { "a=b", ",a=b," },
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct md_digest *d = digest_with_name(cases[i].name);
        char *csv = render(d, CSV, 10);

        if (strstr(csv, cases[i].field) == NULL)
            fail_msg("CSV lacks field %s", cases[i].field);
        free(csv);
        md_digest_free(d);
    }
}

static void csv_quotes_commas_and_quotes(void **state)
{
    struct md_digest *d = digest_with_name("a,\"b\"\nc");
    char *csv = render(d, CSV, 10);

    (void)state;
    assert_non_null(strstr(csv, ",\"a,\"\"b\"\"\nc\","));
    free(csv);
    md_digest_free(d);
}

static void text_marks_bidi_controls(void **state)
{
    /* "invoice" U+202E "fdp.exe" shows as "invoiceexe.pdf" if left raw. */
    struct md_digest *d = digest_with_name("invoice\xe2\x80\xae" "fdp.exe");
    char *text = render(d, TEXT, 10);
    char *html = render(d, HTML, 10);

    (void)state;
    assert_non_null(strstr(text, "invoice<U+202E>fdp.exe"));
    assert_null(strstr(text, "\xe2\x80\xae"));
    assert_non_null(strstr(html, "invoice&lt;U+202E&gt;fdp.exe"));
    assert_null(strstr(html, "\xe2\x80\xae"));
    free(text);
    free(html);
    md_digest_free(d);
}

static void text_marks_bidi_isolates(void **state)
{
    struct md_buf out = MD_BUF_INIT;

    (void)state;
    assert_int_equal(md_text_sanitize(&out, "a\xe2\x81\xa6" "b\xe2\x81\xa9"
                                            "c\xe2\x80\x8f", 0), 0);
    assert_string_equal(out.data, "a<U+2066>b<U+2069>c<U+200F>");
    md_buf_free(&out);
}

static void text_replaces_control_characters(void **state)
{
    struct md_digest *d = digest_with_name("evil\x1b[31mhost\r\nFake: x\x7f");
    char *text = render(d, TEXT, 10);

    (void)state;
    assert_non_null(strstr(text, "evil?[31mhost??Fake: x?"));
    assert_null(strchr(text, '\x1b'));
    assert_null(strchr(text, '\r'));
    assert_null(strchr(text, '\x7f'));
    free(text);
    md_digest_free(d);
}

static void text_replaces_invalid_utf8(void **state)
{
    struct md_buf out = MD_BUF_INIT;

    (void)state;
    /* A cut-off sequence, an overlong "/" and a C1 control. */
    assert_int_equal(md_text_sanitize(&out, "a\xe2\x80" "b\xc0\xaf"
                                            "c\xc2\x85", 0), 0);
    assert_string_equal(out.data, "a\xef\xbf\xbd\xef\xbf\xbd" "b"
                                  "\xef\xbf\xbd\xef\xbf\xbd" "c?");
    md_buf_free(&out);
}

static void long_name_cut_in_body(void **state)
{
    char *name = malloc(5001);
    struct md_digest *d;
    char *text;
    char *html;
    char *csv;

    (void)state;
    assert_non_null(name);
    memset(name, 'A', 5000);
    name[5000] = '\0';
    d = digest_with_name(name);
    text = render(d, TEXT, 10);
    html = render(d, HTML, 10);
    csv = render(d, CSV, 10);

    assert_non_null(strstr(text, "... [4800 more characters]"));
    assert_null(strstr(text, name + 4799));
    assert_non_null(strstr(html, "... [4800 more characters]"));
    assert_non_null(strstr(csv, name));
    free(name);
    free(text);
    free(html);
    free(csv);
    md_digest_free(d);
}

/* ---- links and the pivot ---------------------------------------------- */

static void portal_link_well_formed(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *text = render(d, TEXT, 10);
    char *html = render(d, HTML, 10);

    (void)state;
    assert_non_null(strstr(text, "https://security.microsoft.com/machines/"
                                 "v2/" DEVICE_ID "/overview?tid=" TENANT));
    assert_non_null(strstr(html, "href=\"https://security.microsoft.com/"
                                 "machines/v2/" DEVICE_ID "/overview?tid="
                                 TENANT "\""));
    free(text);
    free(html);
    md_digest_free(d);
}

static void portal_link_encodes_parts(void **state)
{
    struct md_digest *d = digest_new();
    char *html;

    (void)state;
    add_hit(d, add_rule(d, "r", "Low"), MD_CHANGE_NEW, "a b/\"><x", "host");
    html = render(d, HTML, 10);
    assert_non_null(strstr(html, "/machines/v2/a%20b%2F%22%3E%3Cx/overview"));
    assert_null(strstr(html, "\"><x"));
    free(html);
    md_digest_free(d);
}

static void mitre_links_well_formed(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *text = render(d, TEXT, 10);
    char *html = render(d, HTML, 10);

    (void)state;
    assert_non_null(strstr(text, "https://attack.mitre.org/techniques/"
                                 "T1219/"));
    assert_non_null(strstr(text, "https://attack.mitre.org/techniques/"
                                 "T1566/001/"));
    assert_non_null(strstr(html, "href=\"https://attack.mitre.org/"
                                 "techniques/T1566/001/\">T1566.001</a>"));
    free(text);
    free(html);
    md_digest_free(d);
}

static void mitre_link_skips_invalid_ids(void **state)
{
    static const char *const techniques[] = { "T12<b>19" };
    struct md_digest_rule rule;
    struct md_digest *d = digest_new();
    struct md_error err;
    size_t index;
    char *html;

    (void)state;
    memset(&rule, 0, sizeof(rule));
    rule.rule_id = "r";
    rule.techniques = techniques;
    rule.ntechniques = 1;
    assert_int_equal(md_digest_add_rule(d, &rule, &index, &err), 0);
    add_hit(d, index, MD_CHANGE_NEW, DEVICE_ID, "host");
    html = render(d, HTML, 10);
    assert_non_null(strstr(html, "T12&lt;b&gt;19"));
    assert_null(strstr(html, "attack.mitre.org"));
    free(html);
    md_digest_free(d);
}

static void pivot_quotes_device_id(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *text = render(d, TEXT, 10);

    (void)state;
    assert_non_null(strstr(text, "union DeviceProcessEvents, "
                                 "DeviceNetworkEvents\n"));
    assert_non_null(strstr(text, "| where DeviceId == \"" DEVICE_ID "\"\n"));
    /* FirstSeen is 10:00, so the window is 09:00 to 11:00. */
    assert_non_null(strstr(text, "| where Timestamp between (datetime("
                                 "2025-03-01T09:00:00Z) .. datetime("
                                 "2025-03-01T11:00:00Z))\n"));
    free(text);
    md_digest_free(d);
}

static void pivot_skipped_for_odd_id(void **state)
{
    struct md_digest *d = digest_new();
    char *text;

    (void)state;
    add_hit(d, add_rule(d, "r", "Low"), MD_CHANGE_NEW,
            "x\" or DeviceId != \"", "host");
    text = render(d, TEXT, 10);
    assert_null(strstr(text, "union DeviceProcessEvents"));
    assert_non_null(strstr(text, "No KQL pivot"));
    free(text);
    md_digest_free(d);
}

/* ---- grouping and the body cut ---------------------------------------- */

static void groups_device_across_rules(void **state)
{
    struct md_digest *d = digest_new();
    char *text;
    char *csv;

    (void)state;
    add_hit(d, add_rule(d, "zoho-signature", "High"), MD_CHANGE_NEW,
            DEVICE_ID, "host1");
    add_hit(d, add_rule(d, "zoho-process", "Medium"), MD_CHANGE_NEW,
            DEVICE_ID, "host1");
    /* DeviceIds compare without case. */
    add_hit(d, add_rule(d, "zoho-network", "Low"), MD_CHANGE_NEW,
            "0A1B2C3D4E5F60718293A4B5C6D7E8F901234567", "host1");
    text = render(d, TEXT, 10);
    csv = render(d, CSV, 10);

    assert_int_equal(md_digest_count_devices(d, MD_CHANGE_NEW), 1);
    assert_non_null(strstr(text, "1. host1\n"));
    assert_null(strstr(text, "2. "));
    assert_int_equal(count_occurrences(text, "   - zoho-"), 3);
    assert_int_equal(count_occurrences(text, "| where DeviceId"), 1);
    /* Header plus one row per rule. */
    assert_int_equal(count_lines(csv), 4);
    free(text);
    free(csv);
    md_digest_free(d);
}

static void orders_devices_by_severity(void **state)
{
    struct md_digest *d = digest_new();
    size_t low = add_rule(d, "low-rule", "Low");
    size_t high = add_rule(d, "high-rule", "High");
    char *text;

    (void)state;
    add_hit(d, low, MD_CHANGE_NEW, "aaaa", "low-host");
    add_hit(d, high, MD_CHANGE_NEW, "bbbb", "high-host");
    text = render(d, TEXT, 10);
    assert_non_null(strstr(text, "1. high-host\n"));
    assert_non_null(strstr(text, "2. low-host\n"));
    free(text);
    md_digest_free(d);
}

static void body_cut_at_max_rows(void **state)
{
    struct md_digest *d = digest_new();
    size_t rule = add_rule(d, "r", "High");
    char *text;
    char *html;
    char *csv;

    (void)state;
    for (int i = 0; i < 5; i++) {
        char id[16];
        char name[16];

        snprintf(id, sizeof(id), "id%d", i);
        snprintf(name, sizeof(name), "host%d", i);
        add_hit(d, rule, MD_CHANGE_NEW, id, name);
    }
    text = render(d, TEXT, 2);
    html = render(d, HTML, 2);
    csv = render(d, CSV, 2);

    assert_non_null(strstr(text, "2. "));
    assert_null(strstr(text, "3. "));
    assert_non_null(strstr(text, "and 3 more devices in the attached CSV"));
    assert_non_null(strstr(html, "and 3 more devices in the attached CSV"));
    assert_int_equal(count_lines(csv), 6);
    free(text);
    free(html);
    free(csv);
    md_digest_free(d);
}

static void body_cut_at_zero_rows(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *text = render(d, TEXT, 0);

    (void)state;
    assert_null(strstr(text, "1. host1"));
    assert_non_null(strstr(text, "and 1 more device in the attached CSV"));
    free(text);
    md_digest_free(d);
}

static void renamed_shows_previous_name(void **state)
{
    struct md_digest *d = digest_new();
    struct md_digest_hit hit;
    struct md_error err;
    char *text;

    (void)state;
    memset(&hit, 0, sizeof(hit));
    hit.rule = add_rule(d, "r", "High");
    hit.change = MD_CHANGE_RENAMED;
    hit.device_id = DEVICE_ID;
    hit.device_name = "new-name";
    hit.previous_name = "old-name";
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    text = render(d, TEXT, 10);
    assert_non_null(strstr(text, "renamed from old-name"));
    free(text);
    md_digest_free(d);
}

static void tracked_shows_new_value(void **state)
{
    struct md_digest *d = digest_new();
    struct md_digest_hit hit;
    struct md_error err;
    char *text;
    char *csv;

    (void)state;
    memset(&hit, 0, sizeof(hit));
    hit.rule = add_rule(d, "r", "High");
    hit.change = MD_CHANGE_TRACKED;
    hit.device_id = DEVICE_ID;
    hit.device_name = "host1";
    hit.tracked_column = "Signer";
    hit.tracked_value = "Evil <Corp>";
    assert_int_equal(md_digest_add_hit(d, &hit, &err), 0);
    text = render(d, TEXT, 10);
    csv = render(d, CSV, 10);

    assert_non_null(strstr(text, "1. host1\n"));
    assert_non_null(strstr(text, "tracked: new Signer value Evil <Corp>"));
    assert_non_null(strstr(csv, "\r\ntracked,,host1,"));
    assert_non_null(strstr(csv, ",Signer,Evil <Corp>,"));
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_CHANGES);
    free(text);
    free(csv);
    md_digest_free(d);
}

static void baseline_in_short_form(void **state)
{
    struct md_digest *d = digest_new();
    size_t rule = add_rule(d, "r", "High");
    char *text;
    char *csv;

    (void)state;
    add_hit(d, rule, MD_CHANGE_BASELINE, "id1", "base1");
    add_hit(d, rule, MD_CHANGE_BASELINE, "id2", "base2");
    add_hit(d, rule, MD_CHANGE_BASELINE, "id3", "base3");
    text = render(d, TEXT, 10);
    csv = render(d, CSV, 10);

    assert_non_null(strstr(text, "Baseline: 3 devices, review once"));
    assert_null(strstr(text, "base1"));
    assert_int_equal(count_occurrences(csv, "\r\nbaseline,review,"), 3);
    free(text);
    free(csv);
    md_digest_free(d);
}

static void gone_in_short_form(void **state)
{
    struct md_digest *d = digest_new();
    size_t rule = add_rule(d, "r", "High");
    char *text;
    char *csv;

    (void)state;
    add_hit(d, rule, MD_CHANGE_GONE, "id1", "old-host");
    text = render(d, TEXT, 10);
    csv = render(d, CSV, 10);

    assert_non_null(strstr(text, "Gone: 1 device not seen in the last "
                                 "5 days: old-host\n"));
    assert_null(strstr(csv, "old-host"));
    free(text);
    free(csv);
    md_digest_free(d);
}

static void rule_line_names_window_and_hash(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *text = render(d, TEXT, 10);

    (void)state;
    assert_non_null(strstr(text, "Window: 2025-03-01T11:00:00Z to "
                                 "2025-03-01T12:00:00Z, backend graph, "
                                 "tenant " TENANT ", query 1a2b3c4d5e6f\n"));
    assert_non_null(strstr(text, "Result: complete; 0 devices excluded"));
    free(text);
    md_digest_free(d);
}

static void csv_has_result_columns(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *csv = render(d, CSV, 10);

    (void)state;
    assert_true(strncmp(csv, "change,review,device_name,device_id,", 36)
                == 0);
    assert_non_null(strstr(csv, ",Signer,FileName\r\n"));
    assert_non_null(strstr(csv, ",Zoho Corporation,ZA_Access.exe\r\n"));
    free(csv);
    md_digest_free(d);
}

static void csv_name_from_digest_time(void **state)
{
    struct md_digest *d = digest_new();
    char name[64];

    (void)state;
    md_report_csv_name(d, name, sizeof(name));
    assert_string_equal(name, "mdhunt-20250301-120000.csv");
    md_digest_free(d);
}

/* ---- subject and health ----------------------------------------------- */

static void subject_counts_new_devices(void **state)
{
    struct md_digest *d = digest_new();
    size_t rule = add_rule(d, "r", "High");
    char *subject;

    (void)state;
    add_hit(d, rule, MD_CHANGE_NEW, "id1", "host1");
    add_hit(d, rule, MD_CHANGE_NEW, "id2", "host2");
    subject = render(d, SUBJECT, 10);
    assert_string_equal(subject, "[mdhunt] 2 new devices (tenant " TENANT
                                 ")");
    free(subject);
    md_digest_free(d);
}

static void subject_singular_device(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *subject = render(d, SUBJECT, 10);

    (void)state;
    assert_string_equal(subject, "[mdhunt] 1 new device (tenant " TENANT ")");
    free(subject);
    md_digest_free(d);
}

static struct md_digest *digest_with_failures(long failures)
{
    struct md_digest *d = digest_new();
    struct md_digest_rule rule;
    struct md_error err;

    memset(&rule, 0, sizeof(rule));
    rule.rule_id = "failing-rule";
    rule.frequency = 3600;
    rule.runs = failures;
    rule.failed_runs = failures;
    rule.throttled_runs = 1;
    rule.consecutive_failures = failures;
    rule.last_success = T0 - HOUR;
    rule.last_error_kind = "auth";
    rule.last_error = "AADSTS7000222: the client secret has expired";
    md_error_clear(&err);
    assert_int_equal(md_digest_add_rule(d, &rule, NULL, &err), 0);
    return d;
}

static void health_lists_failing_rule(void **state)
{
    struct md_digest *d = digest_with_failures(3);
    char *text = render(d, TEXT, 10);
    char *html = render(d, HTML, 10);

    (void)state;
    assert_non_null(strstr(text, "## Health\n"));
    assert_non_null(strstr(text, "Rules run: 1 (3 runs). Failed runs: 3. "
                                 "Truncated runs: 0. Throttled runs: 1."));
    assert_non_null(strstr(text, "- failing-rule: 3 failures in a row; "
                                 "last success 2025-03-01T11:00:00Z"));
    assert_non_null(strstr(text, "Last error (auth): AADSTS7000222: the "
                                 "client secret has expired"));
    assert_non_null(strstr(html, "<h3>Health</h3>"));
    assert_non_null(strstr(html, "AADSTS7000222"));
    free(text);
    free(html);
    md_digest_free(d);
}

static void health_reports_all_good(void **state)
{
    struct md_digest *d = digest_with_name("host1");
    char *text = render(d, TEXT, 10);

    (void)state;
    assert_non_null(strstr(text, "Every rule's last run succeeded."));
    assert_null(strstr(text, "Rules with problems"));
    free(text);
    md_digest_free(d);
}

static void subject_names_failing_rules(void **state)
{
    struct md_digest *d = digest_with_failures(3);
    char *subject = render(d, SUBJECT, 10);

    (void)state;
    assert_string_equal(subject, "[mdhunt] 0 new devices, 1 failing rule "
                                 "(tenant " TENANT ")");
    free(subject);
    md_digest_free(d);
}

/* ---- the send decision ------------------------------------------------ */

static void send_new_with_new_device(void **state)
{
    struct md_digest *d = digest_with_name("host1");

    (void)state;
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_CHANGES);
    md_digest_free(d);
}

static void send_new_quiet_digest(void **state)
{
    struct md_digest *d = digest_new();

    (void)state;
    add_rule(d, "r", "High");
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_NONE);
    md_digest_free(d);
}

static void send_new_with_gone_only(void **state)
{
    struct md_digest *d = digest_new();

    (void)state;
    add_hit(d, add_rule(d, "r", "High"), MD_CHANGE_GONE, "id", "host");
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_NONE);
    md_digest_free(d);
}

static void send_new_with_baseline(void **state)
{
    struct md_digest *d = digest_new();

    (void)state;
    add_hit(d, add_rule(d, "r", "High"), MD_CHANGE_BASELINE, "id", "host");
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_BASELINE);
    md_digest_free(d);
}

static void send_always_quiet_digest(void **state)
{
    struct md_digest *d = digest_new();

    (void)state;
    assert_int_equal(md_digest_should_send(d, MD_SEND_ALWAYS, T0),
                     MD_SEND_REASON_ALWAYS);
    md_digest_free(d);
}

static void send_never_with_new_device(void **state)
{
    struct md_digest *d = digest_with_name("host1");

    (void)state;
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEVER, T0),
                     MD_SEND_REASON_NONE);
    md_digest_free(d);
}

static void send_never_with_failing_rule(void **state)
{
    struct md_digest *d = digest_with_failures(5);

    (void)state;
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEVER, T0),
                     MD_SEND_REASON_NONE);
    md_digest_free(d);
}

static void send_health_after_three_failures(void **state)
{
    struct md_digest *d = digest_with_failures(3);

    (void)state;
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_FAILING);
    md_digest_free(d);
}

static void send_quiet_after_two_failures(void **state)
{
    struct md_digest *d = digest_with_failures(2);

    (void)state;
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_NONE);
    md_digest_free(d);
}

static void send_health_stale_success(void **state)
{
    struct md_digest *d = digest_with_failures(1);

    (void)state;
    /* Last success 11:00, frequency 1 h: stale once past 13:00. */
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0 + HOUR),
                     MD_SEND_REASON_NONE);
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW,
                                           T0 + HOUR + 1),
                     MD_SEND_REASON_STALE);
    md_digest_free(d);
}

static void send_health_never_succeeded(void **state)
{
    struct md_digest *d = digest_new();
    struct md_digest_rule rule;
    struct md_error err;

    (void)state;
    memset(&rule, 0, sizeof(rule));
    rule.rule_id = "never-ran";
    rule.frequency = 3600;
    rule.first_run = T0 - 3 * HOUR;
    assert_int_equal(md_digest_add_rule(d, &rule, NULL, &err), 0);
    assert_int_equal(md_digest_should_send(d, MD_SEND_NEW, T0),
                     MD_SEND_REASON_STALE);
    md_digest_free(d);
}

/* ---- the model -------------------------------------------------------- */

static void fingerprint_ignores_order(void **state)
{
    struct md_digest *a = digest_new();
    struct md_digest *b = digest_new();
    char ha[65];
    char hb[65];
    struct md_error err;

    (void)state;
    assert_int_equal(md_digest_add_run(a, 3, &err), 0);
    assert_int_equal(md_digest_add_run(a, 1, &err), 0);
    assert_int_equal(md_digest_add_run(a, 2, &err), 0);
    assert_int_equal(md_digest_add_run(b, 1, &err), 0);
    assert_int_equal(md_digest_add_run(b, 2, &err), 0);
    assert_int_equal(md_digest_add_run(b, 3, &err), 0);
    assert_int_equal(md_digest_add_run(b, 3, &err), 0);
    md_digest_fingerprint(a, ha);
    md_digest_fingerprint(b, hb);
    assert_string_equal(ha, hb);
    assert_int_equal(strlen(ha), 64);
    md_digest_free(a);
    md_digest_free(b);
}

static void fingerprint_differs_by_runs(void **state)
{
    struct md_digest *a = digest_new();
    struct md_digest *b = digest_new();
    char ha[65];
    char hb[65];
    struct md_error err;

    (void)state;
    assert_int_equal(md_digest_add_run(a, 1, &err), 0);
    assert_int_equal(md_digest_add_run(b, 2, &err), 0);
    md_digest_fingerprint(a, ha);
    md_digest_fingerprint(b, hb);
    assert_string_not_equal(ha, hb);
    md_digest_free(a);
    md_digest_free(b);
}

static void add_hit_copies_strings(void **state)
{
    struct md_digest *d = digest_new();
    char name[] = "host1";
    char *text;

    (void)state;
    add_hit(d, add_rule(d, "r", "High"), MD_CHANGE_NEW, DEVICE_ID, name);
    memcpy(name, "XXXXX", 5);
    text = render(d, TEXT, 10);
    assert_non_null(strstr(text, "1. host1\n"));
    free(text);
    md_digest_free(d);
}

static void add_hit_rejects_unknown_rule(void **state)
{
    struct md_digest *d = digest_new();
    struct md_digest_hit hit;
    struct md_error err;

    (void)state;
    memset(&hit, 0, sizeof(hit));
    hit.rule = 0;
    md_error_clear(&err);
    assert_int_equal(md_digest_add_hit(d, &hit, &err), -1);
    assert_int_equal(err.kind, MD_E_INTERNAL);
    md_digest_free(d);
}

static void many_hits_grow_arrays(void **state)
{
    struct md_digest *d = digest_new();
    size_t rule = add_rule(d, "r", "High");
    char *csv;

    (void)state;
    for (int i = 0; i < 300; i++) {
        char id[16];

        snprintf(id, sizeof(id), "id%03d", i);
        add_hit(d, rule, MD_CHANGE_NEW, id, id);
    }
    assert_int_equal(d->nhits, 300);
    assert_int_equal(md_digest_count_devices(d, MD_CHANGE_NEW), 300);
    csv = render(d, CSV, 10);
    assert_int_equal(count_lines(csv), 301);
    free(csv);
    md_digest_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(html_escapes_script_name),
        cmocka_unit_test(html_escapes_quotes),
        cmocka_unit_test(html_has_no_active_content),
        cmocka_unit_test(csv_neutralises_formula),
        cmocka_unit_test(csv_prefixes_formula_starts),
        cmocka_unit_test(csv_quotes_commas_and_quotes),
        cmocka_unit_test(text_marks_bidi_controls),
        cmocka_unit_test(text_marks_bidi_isolates),
        cmocka_unit_test(text_replaces_control_characters),
        cmocka_unit_test(text_replaces_invalid_utf8),
        cmocka_unit_test(long_name_cut_in_body),
        cmocka_unit_test(portal_link_well_formed),
        cmocka_unit_test(portal_link_encodes_parts),
        cmocka_unit_test(mitre_links_well_formed),
        cmocka_unit_test(mitre_link_skips_invalid_ids),
        cmocka_unit_test(pivot_quotes_device_id),
        cmocka_unit_test(pivot_skipped_for_odd_id),
        cmocka_unit_test(groups_device_across_rules),
        cmocka_unit_test(orders_devices_by_severity),
        cmocka_unit_test(body_cut_at_max_rows),
        cmocka_unit_test(body_cut_at_zero_rows),
        cmocka_unit_test(renamed_shows_previous_name),
        cmocka_unit_test(tracked_shows_new_value),
        cmocka_unit_test(baseline_in_short_form),
        cmocka_unit_test(gone_in_short_form),
        cmocka_unit_test(rule_line_names_window_and_hash),
        cmocka_unit_test(csv_has_result_columns),
        cmocka_unit_test(csv_name_from_digest_time),
        cmocka_unit_test(subject_counts_new_devices),
        cmocka_unit_test(subject_singular_device),
        cmocka_unit_test(health_lists_failing_rule),
        cmocka_unit_test(health_reports_all_good),
        cmocka_unit_test(subject_names_failing_rules),
        cmocka_unit_test(send_new_with_new_device),
        cmocka_unit_test(send_new_quiet_digest),
        cmocka_unit_test(send_new_with_gone_only),
        cmocka_unit_test(send_new_with_baseline),
        cmocka_unit_test(send_always_quiet_digest),
        cmocka_unit_test(send_never_with_new_device),
        cmocka_unit_test(send_never_with_failing_rule),
        cmocka_unit_test(send_health_after_three_failures),
        cmocka_unit_test(send_quiet_after_two_failures),
        cmocka_unit_test(send_health_stale_success),
        cmocka_unit_test(send_health_never_succeeded),
        cmocka_unit_test(fingerprint_ignores_order),
        cmocka_unit_test(fingerprint_differs_by_runs),
        cmocka_unit_test(add_hit_copies_strings),
        cmocka_unit_test(add_hit_rejects_unknown_rule),
        cmocka_unit_test(many_hits_grow_arrays),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
