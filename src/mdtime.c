#include "mdhunt/mdtime.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Days from 1970-01-01 to year-month-day in the proleptic Gregorian
 * calendar (valid for every year mdhunt can meet). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    int64_t era;
    int64_t yoe;
    int64_t doy;
    int64_t doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    int64_t era;
    int64_t doe;
    int64_t yoe;
    int64_t doy;
    int64_t mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m)
{
    static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31,
                                30, 31 };

    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Read exactly n decimal digits at s[*pos]. */
static int read_digits(const char *s, size_t len, size_t *pos, int n,
                       int *out)
{
    int value = 0;

    if (*pos + (size_t)n > len)
        return -1;
    for (int i = 0; i < n; i++) {
        char c = s[*pos + (size_t)i];

        if (c < '0' || c > '9')
            return -1;
        value = value * 10 + (c - '0');
    }
    *pos += (size_t)n;
    *out = value;
    return 0;
}

static int expect(const char *s, size_t len, size_t *pos, char c)
{
    if (*pos >= len || s[*pos] != c)
        return -1;
    (*pos)++;
    return 0;
}

int md_time_parse(const char *s, size_t len, md_instant *out)
{
    size_t pos = 0;
    int year, month, day, hour, minute, second;
    int64_t fraction = 0;
    int64_t offset = 0;
    int64_t seconds;

    if (s == NULL)
        return -1;
    if (read_digits(s, len, &pos, 4, &year) != 0 ||
        expect(s, len, &pos, '-') != 0 ||
        read_digits(s, len, &pos, 2, &month) != 0 ||
        expect(s, len, &pos, '-') != 0 ||
        read_digits(s, len, &pos, 2, &day) != 0)
        return -1;
    if (pos >= len || (s[pos] != 'T' && s[pos] != 't'))
        return -1;
    pos++;
    if (read_digits(s, len, &pos, 2, &hour) != 0 ||
        expect(s, len, &pos, ':') != 0 ||
        read_digits(s, len, &pos, 2, &minute) != 0 ||
        expect(s, len, &pos, ':') != 0 ||
        read_digits(s, len, &pos, 2, &second) != 0)
        return -1;

    if (pos < len && s[pos] == '.') {
        int digits = 0;

        pos++;
        while (pos < len && s[pos] >= '0' && s[pos] <= '9') {
            if (digits < 7)
                fraction = fraction * 10 + (s[pos] - '0');
            digits++;
            pos++;
        }
        if (digits == 0 || digits > 9)
            return -1;
        for (int i = digits; i < 7; i++)
            fraction *= 10;
    }

    if (pos < len && (s[pos] == 'Z' || s[pos] == 'z')) {
        pos++;
    } else if (pos < len && (s[pos] == '+' || s[pos] == '-')) {
        int sign = s[pos] == '-' ? -1 : 1;
        int oh, om;

        pos++;
        if (read_digits(s, len, &pos, 2, &oh) != 0 ||
            expect(s, len, &pos, ':') != 0 ||
            read_digits(s, len, &pos, 2, &om) != 0 || oh > 23 || om > 59)
            return -1;
        offset = sign * (oh * 3600 + om * 60);
    } else {
        return -1;
    }
    if (pos != len)
        return -1;

    if (month < 1 || month > 12 || day < 1 ||
        day > days_in_month(year, month) || hour > 23 || minute > 59 ||
        second > 60)
        return -1;
    if (second == 60)
        second = 59;    /* a leap second: keep it inside the minute */

    seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 +
              minute * 60 + second - offset;
    *out = seconds * MD_TICKS_PER_SECOND + fraction;
    return 0;
}

static void split_instant(md_instant t, int64_t *secs, int64_t *ticks)
{
    *secs = t / MD_TICKS_PER_SECOND;
    *ticks = t % MD_TICKS_PER_SECOND;
    if (*ticks < 0) {
        *ticks += MD_TICKS_PER_SECOND;
        (*secs)--;
    }
}

static void split_civil(int64_t secs, int64_t *y, int *mo, int *d, int *h,
                        int *mi, int *s)
{
    int64_t days = secs / 86400;
    int64_t rem = secs % 86400;

    if (rem < 0) {
        rem += 86400;
        days--;
    }
    civil_from_days(days, y, mo, d);
    *h = (int)(rem / 3600);
    *mi = (int)(rem % 3600 / 60);
    *s = (int)(rem % 60);
}

char *md_time_format(md_instant t, char *buf, size_t size)
{
    int64_t secs, ticks, y;
    int mo, d, h, mi, s;

    split_instant(t, &secs, &ticks);
    split_civil(secs, &y, &mo, &d, &h, &mi, &s);
    snprintf(buf, size, "%04" PRId64 "-%02d-%02dT%02d:%02d:%02d.%07" PRId64
             "Z", y, mo, d, h, mi, s, ticks);
    return buf;
}

char *md_time_format_seconds(md_instant t, char *buf, size_t size)
{
    int64_t secs, ticks, y;
    int mo, d, h, mi, s;

    split_instant(t, &secs, &ticks);
    split_civil(secs, &y, &mo, &d, &h, &mi, &s);
    snprintf(buf, size, "%04" PRId64 "-%02d-%02dT%02d:%02d:%02dZ", y, mo, d,
             h, mi, s);
    return buf;
}

/* Parse a non-negative decimal number of 1 to 12 digits. */
static int parse_uint(const char *s, size_t len, int64_t *out)
{
    int64_t value = 0;

    if (len == 0 || len > 12)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        value = value * 10 + (s[i] - '0');
    }
    *out = value;
    return 0;
}

/* .NET TimeSpan "[d.]hh:mm:ss" as written in rule files. */
static int parse_dotnet_timespan(const char *s, int64_t *seconds)
{
    const char *colon1 = strchr(s, ':');
    const char *colon2;
    const char *dot;
    int64_t days = 0, hours, minutes, secs;

    if (colon1 == NULL)
        return -1;
    colon2 = strchr(colon1 + 1, ':');
    if (colon2 == NULL || strchr(colon2 + 1, ':') != NULL)
        return -1;
    dot = memchr(s, '.', (size_t)(colon1 - s));
    if (dot != NULL) {
        if (parse_uint(s, (size_t)(dot - s), &days) != 0)
            return -1;
        s = dot + 1;
    }
    if (parse_uint(s, (size_t)(colon1 - s), &hours) != 0 ||
        parse_uint(colon1 + 1, (size_t)(colon2 - colon1 - 1), &minutes) != 0 ||
        parse_uint(colon2 + 1, strlen(colon2 + 1), &secs) != 0)
        return -1;
    if (hours > 23 || minutes > 59 || secs > 59 || days > 36500)
        return -1;
    *seconds = days * 86400 + hours * 3600 + minutes * 60 + secs;
    return 0;
}

int md_duration_parse(const char *s, int64_t *seconds)
{
    size_t len;
    int64_t value;
    int64_t unit;

    if (s == NULL || *s == '\0')
        return -1;
    if (strchr(s, ':') != NULL)
        return parse_dotnet_timespan(s, seconds);

    len = strlen(s);
    switch (s[len - 1]) {
    case 's':
        unit = 1;
        break;
    case 'm':
        unit = 60;
        break;
    case 'h':
        unit = 3600;
        break;
    case 'd':
        unit = 86400;
        break;
    default:
        return -1;
    }
    if (parse_uint(s, len - 1, &value) != 0)
        return -1;
    /* 100 years is far beyond any schedule or look-back; larger values
     * are typing mistakes and could overflow instants. */
    if (value > INT64_C(3155760000) / unit)
        return -1;
    *seconds = value * unit;
    return 0;
}

char *md_duration_format(int64_t seconds, char *buf, size_t size)
{
    if (seconds != 0 && seconds % 86400 == 0)
        snprintf(buf, size, "%" PRId64 "d", seconds / 86400);
    else if (seconds != 0 && seconds % 3600 == 0)
        snprintf(buf, size, "%" PRId64 "h", seconds / 3600);
    else if (seconds != 0 && seconds % 60 == 0)
        snprintf(buf, size, "%" PRId64 "m", seconds / 60);
    else
        snprintf(buf, size, "%" PRId64 "s", seconds);
    return buf;
}

char *md_duration_iso8601(int64_t seconds, char *buf, size_t size)
{
    int64_t days = seconds / 86400;
    int64_t hours = seconds % 86400 / 3600;
    int64_t minutes = seconds % 3600 / 60;
    int64_t secs = seconds % 60;
    int n;

    if (seconds <= 0) {
        snprintf(buf, size, "PT0S");
        return buf;
    }
    n = snprintf(buf, size, "P");
    if (days > 0)
        n += snprintf(buf + n, size - (size_t)n, "%" PRId64 "D", days);
    if (hours > 0 || minutes > 0 || secs > 0)
        n += snprintf(buf + n, size - (size_t)n, "T");
    if (hours > 0)
        n += snprintf(buf + n, size - (size_t)n, "%" PRId64 "H", hours);
    if (minutes > 0)
        n += snprintf(buf + n, size - (size_t)n, "%" PRId64 "M", minutes);
    if (secs > 0)
        snprintf(buf + n, size - (size_t)n, "%" PRId64 "S", secs);
    return buf;
}

#ifdef MDHUNT_TEST_CLOCK
/* Test builds: MDHUNT_TEST_NOW holds a timestamp or epoch seconds, read at
 * every call so that a test can move the clock between commands. */
static int test_clock(md_instant *out)
{
    const char *value = getenv("MDHUNT_TEST_NOW");
    char *end;
    long long secs;

    if (value == NULL || *value == '\0')
        return -1;
    if (md_time_parse(value, strlen(value), out) == 0)
        return 0;
    errno = 0;
    secs = strtoll(value, &end, 10);
    if (errno != 0 || *end != '\0' || secs < 0)
        return -1;
    *out = (md_instant)secs * MD_TICKS_PER_SECOND;
    return 0;
}
#endif

md_instant md_now(void)
{
    struct timespec ts;

#ifdef MDHUNT_TEST_CLOCK
    md_instant fixed;

    if (test_clock(&fixed) == 0)
        return fixed;
#endif
    clock_gettime(CLOCK_REALTIME, &ts);
    return (md_instant)ts.tv_sec * MD_TICKS_PER_SECOND + ts.tv_nsec / 100;
}

int64_t md_monotonic_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
