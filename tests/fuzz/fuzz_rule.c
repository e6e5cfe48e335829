/*
 * Fuzz the rule loader: the UTF-8 check, the repair pre-pass and the
 * libyaml parse of a YAML rule file.  An input that starts with "#kql\n"
 * is loaded as a plain KQL file instead.  Every rule that loads is also
 * printed as `mdhunt rules show` prints it.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_common.h"
#include "mdhunt/rule.h"

static int fuzz_rule_is_hex(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (strchr("0123456789abcdef", s[i]) == NULL || s[i] == '\0')
            return 0;
    }
    return s[len] == '\0';
}

static void fuzz_rule_check(const struct md_rule *rule)
{
    FILE *f = fopen("/dev/null", "w");

    FUZZ_CHECK(rule->id != NULL);
    FUZZ_CHECK(rule->id[0] != '\0');
    FUZZ_CHECK(rule->query != NULL);
    FUZZ_CHECK(strlen(rule->query) == rule->query_len);
    FUZZ_CHECK(rule->query_line >= 1);
    FUZZ_CHECK(fuzz_rule_is_hex(rule->query_sha256, 64));
    FUZZ_CHECK(rule->frequency >= 0);
    FUZZ_CHECK(rule->period >= 0);
    if (f != NULL) {
        md_rule_print(f, rule);
        fclose(f);
    }
}

static int fuzz_rule(const uint8_t *data, size_t size)
{
    static const char kql_mark[] = "#kql\n";
    const char *name = "fuzz-rule.yaml";
    struct md_rule *rule = NULL;
    struct md_error err;

    fuzz_quiet_logging();
    md_error_clear(&err);
    if (size >= sizeof(kql_mark) - 1
        && memcmp(data, kql_mark, sizeof(kql_mark) - 1) == 0)
        name = "fuzz-rule.kql";

    if (md_rule_load_buffer(name, (const char *)data, size, &rule,
                            &err) == 0) {
        FUZZ_CHECK(rule != NULL);
        fuzz_rule_check(rule);
        md_rule_free(rule);
    } else {
        FUZZ_CHECK(rule == NULL);
        FUZZ_CHECK(err.kind != MD_OK);
    }
    return 0;
}

#ifndef FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_rule(data, size);
}
#endif
