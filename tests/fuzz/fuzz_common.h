/*
 * Helpers shared by the libFuzzer harnesses in tests/fuzz/ and by the
 * regression runner tests/unit/test_fuzz_regressions.c, which includes
 * the harness sources so that both run the same entry functions.
 *
 * Each harness file defines "static int fuzz_<target>(const uint8_t *data,
 * size_t size)" and, unless FUZZ_NO_ENTRY is defined, the libFuzzer entry
 * point LLVMFuzzerTestOneInput calling it.
 */
#ifndef MDHUNT_FUZZ_COMMON_H
#define MDHUNT_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/log.h"

/* Marks helpers that some harnesses leave unused. */
#define FUZZ_UNUSED __attribute__((unused))

/* Name of the input being replayed, printed when an invariant fails; the
 * regression runner sets it, libFuzzer names the input itself. */
static const char *fuzz_input_name FUZZ_UNUSED = "(fuzzer input)";

/*
 * Abort when a property the code promises does not hold, so that
 * libFuzzer records the input as a crash.  Used for checks beyond memory
 * safety: JSON output that does not parse back, a secret in a message.
 */
#define FUZZ_CHECK(cond)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            fprintf(stderr, "%s:%d: property failed: %s (input %s)\n",   \
                    __FILE__, __LINE__, #cond, fuzz_input_name);          \
            abort();                                                      \
        }                                                                 \
    } while (0)

/* Drop warnings and informational lines, which a fuzzer would otherwise
 * print for most inputs.  Error lines still show. */
static inline void fuzz_quiet_logging(void)
{
    md_log_set_level(MD_LOG_ERROR);
}

/* Copy size bytes into a new NUL-terminated string, or NULL when out of
 * memory.  The caller frees it. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);

    if (s == NULL)
        return NULL;
    if (size > 0)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/*
 * A reader that takes structured values from the front of the input:
 * bytes and integers for choices, NUL-separated strings for text.  A
 * reader at its end returns zeros and empty strings.
 */
struct fuzz_reader {
    const uint8_t *data;
    size_t size;
};

static inline unsigned fuzz_take_byte(struct fuzz_reader *r)
{
    unsigned b;

    if (r->size == 0)
        return 0;
    b = r->data[0];
    r->data++;
    r->size--;
    return b;
}

static inline uint32_t fuzz_take_u32(struct fuzz_reader *r)
{
    uint32_t v = 0;

    for (int i = 0; i < 4; i++)
        v = (v << 8) | fuzz_take_byte(r);
    return v;
}

/*
 * Take the bytes up to the next NUL (or the end) as a new string, which
 * the caller frees.  Returns NULL when out of memory.
 */
static inline char *fuzz_take_string(struct fuzz_reader *r)
{
    const uint8_t *nul = memchr(r->data, 0, r->size);
    size_t len = nul != NULL ? (size_t)(nul - r->data) : r->size;
    char *s = fuzz_strndup(r->data, len);

    r->data += len;
    r->size -= len;
    if (nul != NULL) {
        r->data++;
        r->size--;
    }
    return s;
}

/* The directory for the files a harness writes; created at the first
 * call and removed at exit. */
static char fuzz_dir[] FUZZ_UNUSED = "/tmp/mdhunt-fuzz-XXXXXX";
static char fuzz_file[sizeof(fuzz_dir) + 32] FUZZ_UNUSED;
static int fuzz_dir_ready FUZZ_UNUSED;

static inline void fuzz_remove_dir(void)
{
    if (fuzz_file[0] != '\0')
        unlink(fuzz_file);
    rmdir(fuzz_dir);
}

/*
 * Write size bytes to the one scratch file "name" inside the temporary
 * directory, replacing what an earlier call wrote, and return its path.
 * Every call must pass the same name.  Returns NULL when writing failed.
 */
static inline const char *fuzz_write_file(const char *name,
                                          const uint8_t *data, size_t size)
{
    FILE *f;
    int ok;

    if (!fuzz_dir_ready) {
        if (mkdtemp(fuzz_dir) == NULL)
            return NULL;
        fuzz_dir_ready = 1;
        snprintf(fuzz_file, sizeof(fuzz_file), "%s/%s", fuzz_dir, name);
        atexit(fuzz_remove_dir);
    }
    f = fopen(fuzz_file, "wb");
    if (f == NULL)
        return NULL;
    ok = fwrite(data, 1, size, f) == size;
    if (fclose(f) != 0)
        ok = 0;
    return ok ? fuzz_file : NULL;
}

#endif
