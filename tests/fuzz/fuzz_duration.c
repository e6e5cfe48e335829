/*
 * Fuzz the duration parser ("5m", "14d", "1.02:00:00").  Every duration
 * it accepts must be non-negative and read back unchanged from the text
 * md_duration_format() writes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "mdhunt/mdtime.h"

static int fuzz_duration(const uint8_t *data, size_t size)
{
    char text[64];
    char iso[64];
    int64_t seconds;
    int64_t back;
    char *value;

    fuzz_quiet_logging();
    value = fuzz_strndup(data, size);
    if (value == NULL)
        return 0;

    if (md_duration_parse(value, &seconds) == 0) {
        FUZZ_CHECK(seconds >= 0);
        md_duration_format(seconds, text, sizeof(text));
        FUZZ_CHECK(md_duration_parse(text, &back) == 0);
        FUZZ_CHECK(back == seconds);
        md_duration_iso8601(seconds, iso, sizeof(iso));
        FUZZ_CHECK(iso[0] == 'P');
    }
    free(value);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_duration(data, size);
}
#endif
