/* Tests for timestamps, durations and the test clock. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "mdhunt/mdtime.h"

static md_instant parse_ok(const char *text)
{
    md_instant t = 0;

    assert_int_equal(md_time_parse(text, strlen(text), &t), 0);
    return t;
}

static void assert_formats_as(const char *text, const char *expected)
{
    char buf[MD_TIME_TEXT_MAX];

    assert_string_equal(md_time_format(parse_ok(text), buf, sizeof(buf)),
                        expected);
}

static void time_parse_seven_digits(void **state)
{
    (void)state;
    assert_formats_as("2025-03-01T12:00:00.1234567Z",
                      "2025-03-01T12:00:00.1234567Z");
}

static void time_parse_fraction_widths(void **state)
{
    (void)state;
    assert_formats_as("2025-03-01T12:00:00Z", "2025-03-01T12:00:00.0000000Z");
    assert_formats_as("2025-03-01T12:00:00.1Z",
                      "2025-03-01T12:00:00.1000000Z");
    assert_formats_as("2025-03-01T12:00:00.123Z",
                      "2025-03-01T12:00:00.1230000Z");
    /* Digits past the 7th are below the 100-ns precision: truncated. */
    assert_formats_as("2025-03-01T12:00:00.123456789Z",
                      "2025-03-01T12:00:00.1234567Z");
}

static void time_parse_offsets(void **state)
{
    (void)state;
    assert_formats_as("2025-03-01T12:00:00+02:00",
                      "2025-03-01T10:00:00.0000000Z");
    assert_formats_as("2025-03-01T23:30:00-01:00",
                      "2025-03-02T00:30:00.0000000Z");
    assert_true(parse_ok("2025-03-01T12:00:00+00:00") ==
                parse_ok("2025-03-01T12:00:00Z"));
}

static void time_parse_epoch_value(void **state)
{
    (void)state;
    assert_true(parse_ok("1970-01-01T00:00:00Z") == 0);
    assert_true(parse_ok("1970-01-01T00:00:01.5Z") == 15000000);
    assert_true(parse_ok("1969-12-31T23:59:59Z") == -10000000);
}

static void time_parse_rejects_invalid(void **state)
{
    static const char *const bad[] = {
        "", "2025-03-01", "2025-03-01 12:00:00Z", "2025-03-01T12:00:00",
        "2025-13-01T00:00:00Z", "2025-02-29T00:00:00Z",
        "2025-03-01T24:00:00Z", "2025-03-01T12:00:00.Z",
        "2025-03-01T12:00:00.1234567890Z", "2025-03-01T12:00:00Zjunk",
        "2025-03-01T12:00:00+0200", "25-03-01T12:00:00Z",
    };
    md_instant t;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (md_time_parse(bad[i], strlen(bad[i]), &t) == 0)
            fail_msg("accepted invalid timestamp \"%s\"", bad[i]);
    }
}

static void time_parse_leap_day(void **state)
{
    (void)state;
    assert_formats_as("2024-02-29T00:00:00Z", "2024-02-29T00:00:00.0000000Z");
    assert_formats_as("2000-02-29T00:00:00Z", "2000-02-29T00:00:00.0000000Z");
}

static void time_parse_uses_length(void **state)
{
    const char text[] = "2025-03-01T12:00:00Zgarbage";
    md_instant t;

    (void)state;
    assert_int_equal(md_time_parse(text, 20, &t), 0);
    assert_int_equal(md_time_parse(text, strlen(text), &t), -1);
}

static void duration_parse_units(void **state)
{
    int64_t s;

    (void)state;
    assert_int_equal(md_duration_parse("5m", &s), 0);
    assert_int_equal(s, 300);
    assert_int_equal(md_duration_parse("1h", &s), 0);
    assert_int_equal(s, 3600);
    assert_int_equal(md_duration_parse("14d", &s), 0);
    assert_int_equal(s, 14 * 86400);
    assert_int_equal(md_duration_parse("45s", &s), 0);
    assert_int_equal(s, 45);
}

static void duration_parse_dotnet(void **state)
{
    int64_t s;

    (void)state;
    assert_int_equal(md_duration_parse("1.02:03:04", &s), 0);
    assert_int_equal(s, 86400 + 2 * 3600 + 3 * 60 + 4);
    assert_int_equal(md_duration_parse("05:00:00", &s), 0);
    assert_int_equal(s, 5 * 3600);
}

static void duration_parse_rejects_invalid(void **state)
{
    static const char *const bad[] = {
        "", "1H", "5", "-1d", "1 d", "d", "1w", "1.5h", "25:00:00",
        "00:60:00", "1:2", "1:2:3:4", "99999999999999d", "PT1H",
    };
    int64_t s;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (md_duration_parse(bad[i], &s) == 0)
            fail_msg("accepted invalid duration \"%s\"", bad[i]);
    }
}

static void duration_format_round_trip(void **state)
{
    static const int64_t values[] = { 45, 300, 5400, 3600, 86400, 432000 };
    char buf[32];
    int64_t back;

    (void)state;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        md_duration_format(values[i], buf, sizeof(buf));
        assert_int_equal(md_duration_parse(buf, &back), 0);
        assert_int_equal(back, values[i]);
    }
}

static void duration_iso8601_forms(void **state)
{
    char buf[32];

    (void)state;
    assert_string_equal(md_duration_iso8601(5 * 86400, buf, sizeof(buf)),
                        "P5D");
    assert_string_equal(md_duration_iso8601(3600, buf, sizeof(buf)), "PT1H");
    assert_string_equal(md_duration_iso8601(86400 + 9000, buf, sizeof(buf)),
                        "P1DT2H30M");
    assert_string_equal(md_duration_iso8601(45, buf, sizeof(buf)), "PT45S");
}

static void clock_follows_test_env(void **state)
{
    (void)state;
    setenv("MDHUNT_TEST_NOW", "2026-01-02T03:04:05Z", 1);
    assert_true(md_now() == parse_ok("2026-01-02T03:04:05Z"));
    setenv("MDHUNT_TEST_NOW", "86400", 1);
    assert_true(md_now() == 86400 * MD_TICKS_PER_SECOND);
    unsetenv("MDHUNT_TEST_NOW");
    assert_true(md_now() > parse_ok("2020-01-01T00:00:00Z"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(time_parse_seven_digits),
        cmocka_unit_test(time_parse_fraction_widths),
        cmocka_unit_test(time_parse_offsets),
        cmocka_unit_test(time_parse_epoch_value),
        cmocka_unit_test(time_parse_rejects_invalid),
        cmocka_unit_test(time_parse_leap_day),
        cmocka_unit_test(time_parse_uses_length),
        cmocka_unit_test(duration_parse_units),
        cmocka_unit_test(duration_parse_dotnet),
        cmocka_unit_test(duration_parse_rejects_invalid),
        cmocka_unit_test(duration_format_round_trip),
        cmocka_unit_test(duration_iso8601_forms),
        cmocka_unit_test(clock_follows_test_env),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
