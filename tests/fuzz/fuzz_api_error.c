/*
 * Fuzz the mapping of an unsuccessful Graph or Defender reply to an
 * error.  The first bytes choose the backend, the HTTP status, the
 * Retry-After delay and a request-id header value; the rest is the body.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "mdhunt/backend.h"

/* Copy a header value as md_http_perform() captures it: control
 * characters replaced, truncated to fit. */
static void fuzz_api_error_header(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);

    if (n >= size)
        n = size - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];

        dst[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    dst[n] = '\0';
}

/* A message, code or id copied from a reply must not carry control
 * characters into logs, the store or a mail. */
static int fuzz_api_error_clean(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    }
    return 1;
}

static int fuzz_api_error(const uint8_t *data, size_t size)
{
    struct fuzz_reader r = { data, size };
    struct md_http_response resp;
    struct md_error err;
    enum md_backend_kind kind;
    unsigned header_use;
    unsigned status;
    unsigned wait;
    char *header;
    int rc;

    fuzz_quiet_logging();
    md_error_clear(&err);
    md_http_response_init(&resp);

    kind = (fuzz_take_byte(&r) & 1) ? MD_BACKEND_DEFENDER
                                     : MD_BACKEND_GRAPH;
    status = fuzz_take_byte(&r) << 8;
    status |= fuzz_take_byte(&r);
    resp.status = (long)(status % 600);
    wait = fuzz_take_byte(&r);
    resp.retry_after = wait == 255 ? -1 : (long)wait * 60;
    header_use = fuzz_take_byte(&r);
    header = fuzz_take_string(&r);
    if (header == NULL)
        goto out;
    if (header_use & 1)
        fuzz_api_error_header(resp.request_id, sizeof(resp.request_id),
                              header);
    if (header_use & 2)
        fuzz_api_error_header(resp.ms_request_id,
                              sizeof(resp.ms_request_id), header);
    free(header);
    if (r.size > 0 && md_buf_append(&resp.body, r.data, r.size) != 0)
        goto out;

    rc = md_backend_map_error(kind, &resp, &err);
    FUZZ_CHECK(rc == -1);
    FUZZ_CHECK(err.kind != MD_OK);
    FUZZ_CHECK(err.http_status == resp.status);
    FUZZ_CHECK(err.retry_after == resp.retry_after);
    FUZZ_CHECK(fuzz_api_error_clean(err.message));
    FUZZ_CHECK(fuzz_api_error_clean(err.service_code));
    FUZZ_CHECK(fuzz_api_error_clean(err.request_id));
out:
    md_http_response_free(&resp);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_api_error(data, size);
}
#endif
