/*
 * Fuzz the Log Analytics reply reader of the sentinel backend.  The first
 * byte chooses the HTTP status: below 128 is 200, 128 is 204 and the rest
 * are 400 to 526, which md_la_map_error() turns into errors.  The rest is
 * the reply body.  Every table read is written in all four formats.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "fuzz_table.h"
#include "mdhunt/backend_la.h"

static int fuzz_la(const uint8_t *data, size_t size)
{
    struct md_http_response resp;
    struct md_table *t = NULL;
    struct md_error err;
    char *partial = NULL;
    unsigned choice;
    int rc;

    fuzz_quiet_logging();
    md_error_clear(&err);
    md_http_response_init(&resp);
    if (size == 0)
        return 0;
    choice = data[0];
    resp.status = choice < 128 ? 200 : choice == 128 ? 204
                                     : 400 + (long)(choice - 129);
    if (size > 1 && md_buf_append(&resp.body, data + 1, size - 1) != 0)
        goto out;

    rc = md_la_read_reply(&resp, choice & 1 ? NULL
                                            : "00000000-0000-0000-0000-"
                                              "000000000000",
                          &t, &partial, &err);
    if (rc == 0) {
        FUZZ_CHECK(t != NULL);
        FUZZ_CHECK(resp.status == 200 || resp.status == 204);
        FUZZ_CHECK(partial == NULL || t->truncated);
        fuzz_check_outputs(t, choice);
    } else {
        FUZZ_CHECK(t == NULL);
        FUZZ_CHECK(partial == NULL);
        FUZZ_CHECK(err.kind != MD_OK);
    }
    md_table_free(t);
    free(partial);
out:
    md_http_response_free(&resp);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_la(data, size);
}
#endif
