/*
 * Instants, durations and the replaceable clock.
 *
 * Inside mdhunt an instant is an md_instant: 100-nanosecond ticks since
 * 1970-01-01T00:00:00Z (UTC), the precision the services send.  Text forms
 * exist only at the edges: reply parsing and output.
 */
#ifndef MDHUNT_MDTIME_H
#define MDHUNT_MDTIME_H

#include <stddef.h>
#include <stdint.h>

typedef int64_t md_instant;

#define MD_TICKS_PER_SECOND INT64_C(10000000)

/*
 * Parse an ISO 8601 / RFC 3339 timestamp as the services send it:
 * "YYYY-MM-DDTHH:MM:SS[.f{0,9}](Z|+hh:mm|-hh:mm)".  Digits beyond the 7th
 * fractional digit are truncated.  s need not be NUL-terminated.
 * Returns 0, or -1 when the text is not such a timestamp.
 */
int md_time_parse(const char *s, size_t len, md_instant *out);

/*
 * Format an instant as "YYYY-MM-DDTHH:MM:SS.fffffffZ" (7 digits, the
 * services' own form).  buf needs at least MD_TIME_TEXT_MAX bytes.
 */
#define MD_TIME_TEXT_MAX 40
char *md_time_format(md_instant t, char *buf, size_t size);

/* Format with whole seconds only: "YYYY-MM-DDTHH:MM:SSZ". */
char *md_time_format_seconds(md_instant t, char *buf, size_t size);

/*
 * Parse a rule or configuration duration into seconds:
 * "<integer><unit>" with unit s, m, h or d in lower case ("5m", "14d"),
 * or a .NET TimeSpan "[d.]hh:mm:ss".  "1H", bare numbers, negative and
 * overflowing values are rejected.  s is NUL-terminated.
 * Returns 0, or -1 when invalid.
 */
int md_duration_parse(const char *s, int64_t *seconds);

/* Format seconds the way md_duration_parse() reads them back: the largest
 * whole unit ("5d", "90m", "45s"). */
char *md_duration_format(int64_t seconds, char *buf, size_t size);

/* Format seconds as an ISO 8601 duration for Graph's Timespan ("P5D",
 * "PT1H", "P1DT2H30M"). */
char *md_duration_iso8601(int64_t seconds, char *buf, size_t size);

/*
 * The clock.  md_now() is the wall clock in UTC, unless a test build
 * (compiled with -DMDHUNT_TEST_CLOCK) was given an override through the
 * environment variable MDHUNT_TEST_NOW (a timestamp accepted by
 * md_time_parse or a number of seconds since the epoch), which lets tests
 * in several processes share one clock.
 */
md_instant md_now(void);

/* Monotonic milliseconds, for measuring elapsed time. */
int64_t md_monotonic_ms(void);

#endif
