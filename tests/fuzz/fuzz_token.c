/*
 * Fuzz the Entra ID token reply parsers.  The first byte chooses the HTTP
 * status given to md_auth_error_from_reply(); the rest is the reply body,
 * read by both md_auth_parse_token_reply() and md_auth_error_from_reply().
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "mdhunt/auth.h"

/* Maximum expires_in the parser accepts, in seconds (one year). */
#define FUZZ_EXPIRES_IN_MAX 31536000

/*
 * The access_token of body when it looks like a real token (a JWT, which
 * starts with "eyJ", of at least 12 characters), so that finding it in a
 * message is a leak and not a coincidence; NULL otherwise.  The caller
 * frees the result.
 */
static char *fuzz_token_value(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    json_t *access = json_object_get(root, "access_token");
    char *value = NULL;

    if (json_is_string(access) && json_string_length(access) >= 12
        && strncmp(json_string_value(access), "eyJ", 3) == 0)
        value = strdup(json_string_value(access));
    json_decref(root);
    return value;
}

static int fuzz_token(const uint8_t *data, size_t size)
{
    struct md_secret token = { NULL, 0 };
    struct md_error err;
    const char *body;
    char *leak;
    int64_t expires_in = 0;
    long status;
    int rc;

    fuzz_quiet_logging();
    md_error_clear(&err);
    if (size == 0)
        return 0;
    status = 400 + data[0] % 200;
    body = (const char *)data + 1;
    size--;

    rc = md_auth_parse_token_reply(body, size, &token, &expires_in, &err);
    if (rc == 0) {
        FUZZ_CHECK(token.value != NULL);
        FUZZ_CHECK(token.len > 0);
        FUZZ_CHECK(expires_in >= 1);
        FUZZ_CHECK(expires_in <= FUZZ_EXPIRES_IN_MAX);
    } else {
        FUZZ_CHECK(err.kind != MD_OK);
        FUZZ_CHECK(token.value == NULL);
        leak = fuzz_token_value(body, size);
        FUZZ_CHECK(leak == NULL || strstr(err.message, leak) == NULL);
        free(leak);
    }
    md_secret_clear(&token);

    md_error_clear(&err);
    rc = md_auth_error_from_reply(status, body, size, &err);
    FUZZ_CHECK(rc == -1);
    FUZZ_CHECK(err.kind == MD_E_AUTH || err.kind == MD_E_SERVICE);
    FUZZ_CHECK(err.http_status == status);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_token(data, size);
}
#endif
