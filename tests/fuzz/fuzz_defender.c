/*
 * Fuzz the Defender advanced hunting reply parser with the reply body, then
 * write every table it accepts in all four output formats.
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_common.h"
#include "fuzz_table.h"
#include "mdhunt/backend.h"

static int fuzz_defender(const uint8_t *data, size_t size)
{
    struct md_table *t = NULL;
    struct md_error err;

    fuzz_quiet_logging();
    md_error_clear(&err);
    if (md_backend_parse_defender((const char *)data, size, &t, &err) == 0) {
        FUZZ_CHECK(t != NULL);
        fuzz_check_outputs(t, size > 0 ? data[size - 1] : 0);
        md_table_free(t);
    } else {
        FUZZ_CHECK(t == NULL);
        FUZZ_CHECK(err.kind != MD_OK);
    }
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_defender(data, size);
}
#endif
