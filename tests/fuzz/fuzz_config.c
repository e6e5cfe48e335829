/*
 * Fuzz the INI configuration loader with the file's content, written to a
 * scratch file that md_config_load() reads.
 *
 * Besides memory safety the harness checks that an inline client secret
 * never reaches the error message: when the marker FUZZ_SECRET appears
 * once in the input, as the value of a "client_secret =" line, the
 * message must not contain it.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "mdhunt/config.h"

#define FUZZ_SECRET "sEcReT"

/* Whether the marker occurs exactly once, on a "client_secret =" line. */
static int fuzz_config_has_secret(const uint8_t *data, size_t size)
{
    static const char key[] = "client_secret";
    const size_t mark_len = sizeof(FUZZ_SECRET) - 1;
    const uint8_t *mark = memmem(data, size, FUZZ_SECRET, mark_len);
    const uint8_t *line;
    const uint8_t *end = data + size;

    if (mark == NULL || memmem(mark + 1, (size_t)(end - mark - 1),
                               FUZZ_SECRET, mark_len) != NULL)
        return 0;
    line = mark;
    while (line > data && line[-1] != '\n')
        line--;
    while (line < mark && (*line == ' ' || *line == '\t'))
        line++;
    if ((size_t)(mark - line) < sizeof(key) - 1
        || memcmp(line, key, sizeof(key) - 1) != 0)
        return 0;
    line += sizeof(key) - 1;
    while (line < mark && (*line == ' ' || *line == '\t'))
        line++;
    return line < mark && *line == '=';
}

static int fuzz_config(const uint8_t *data, size_t size)
{
    struct md_config cfg;
    struct md_error err;
    const char *path;

    fuzz_quiet_logging();
    md_error_clear(&err);
    path = fuzz_write_file("fuzz.ini", data, size);
    if (path == NULL)
        return 0;

    if (md_config_load(path, &cfg, &err) == 0) {
        for (size_t i = 0; i < cfg.nrule_configs; i++) {
            const struct md_rule_config *rc = &cfg.rule_configs[i];

            FUZZ_CHECK(rc->rule_id != NULL);
            FUZZ_CHECK(md_config_rule(&cfg, rc->rule_id) != NULL);
        }
        md_config_rule(&cfg, "00000000-0000-0000-0000-000000000000");
        md_config_free(&cfg);
    } else {
        FUZZ_CHECK(err.kind != MD_OK);
        if (fuzz_config_has_secret(data, size))
            FUZZ_CHECK(strstr(err.message, FUZZ_SECRET) == NULL);
    }
    md_config_free(&cfg);
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_config(data, size);
}
#endif
