/*
 * Fuzz the Retry-After header parser.  The first four bytes give "now" in
 * seconds since 1970; the rest is the header value.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "mdhunt/http.h"

/* Largest delay the parser returns, in seconds: it must fit a 32-bit
 * long.  NOTE: the same value as RETRY_AFTER_MAX in src/http.c, which
 * http.h does not export. */
#define FUZZ_RETRY_AFTER_MAX 2147483647L

static int fuzz_retry_after(const uint8_t *data, size_t size)
{
    struct fuzz_reader r = { data, size };
    md_instant now;
    char *value;
    long seconds;

    fuzz_quiet_logging();
    now = (md_instant)fuzz_take_u32(&r) * MD_TICKS_PER_SECOND;
    value = fuzz_strndup(r.data, r.size);
    if (value == NULL)
        return 0;

    seconds = md_http_parse_retry_after(value, now);
    FUZZ_CHECK(seconds >= -1);
    FUZZ_CHECK(seconds <= FUZZ_RETRY_AFTER_MAX);
    free(value);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_retry_after(data, size);
}
#endif
