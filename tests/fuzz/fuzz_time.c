/*
 * Fuzz the RFC 3339 timestamp parser.  Every timestamp it accepts within
 * the years 0001 to 9999 must read back unchanged from its formatted
 * text, at full and at whole-second precision.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "mdhunt/mdtime.h"

/* 0001-01-01T00:00:00Z and 10000-01-01T00:00:00Z in ticks. */
#define FUZZ_TIME_MIN (INT64_C(-62135596800) * MD_TICKS_PER_SECOND)
#define FUZZ_TIME_END (INT64_C(253402300800) * MD_TICKS_PER_SECOND)

static int fuzz_time(const uint8_t *data, size_t size)
{
    char text[MD_TIME_TEXT_MAX];
    md_instant t;
    md_instant back;
    md_instant fraction;

    fuzz_quiet_logging();
    if (md_time_parse((const char *)data, size, &t) != 0)
        return 0;
    if (t < FUZZ_TIME_MIN || t >= FUZZ_TIME_END)
        return 0;

    md_time_format(t, text, sizeof(text));
    FUZZ_CHECK(md_time_parse(text, strlen(text), &back) == 0);
    FUZZ_CHECK(back == t);

    fraction = t % MD_TICKS_PER_SECOND;
    if (fraction < 0)
        fraction += MD_TICKS_PER_SECOND;
    md_time_format_seconds(t, text, sizeof(text));
    FUZZ_CHECK(md_time_parse(text, strlen(text), &back) == 0);
    FUZZ_CHECK(back == t - fraction);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_time(data, size);
}
#endif
