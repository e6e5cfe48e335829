/*
 * Replays the fuzzing inputs through the same entry functions as the
 * libFuzzer harnesses, so that `make check` and `make asan` keep every
 * crash found by fuzzing fixed without needing clang.
 *
 * For each target, every file of tests/fuzz/regressions/<target>/ (the
 * minimised crashes) and of tests/fuzz/corpus/<target>/ (the seeds) is
 * run once.  A harness aborts when a property it checks fails, and the
 * sanitizers of `make asan` stop at a memory error.  FUZZ_CHECK prints
 * the name of the file being replayed; after a sanitizer report, run the
 * test under a debugger to find it.
 */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_NO_ENTRY
#include "../fuzz/fuzz_api_error.c"
#include "../fuzz/fuzz_config.c"
#include "../fuzz/fuzz_defender.c"
#include "../fuzz/fuzz_duration.c"
#include "../fuzz/fuzz_exclusions.c"
#include "../fuzz/fuzz_graph.c"
#include "../fuzz/fuzz_la.c"
#include "../fuzz/fuzz_output.c"
#include "../fuzz/fuzz_report.c"
#include "../fuzz/fuzz_retry_after.c"
#include "../fuzz/fuzz_rule.c"
#include "../fuzz/fuzz_time.c"
#include "../fuzz/fuzz_token.c"

#define FUZZ_ROOT "tests/fuzz"

typedef int (*fuzz_fn)(const uint8_t *data, size_t size);

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read a whole file into a new buffer; fails the test when it cannot. */
static uint8_t *read_input(const char *path, size_t *size)
{
    struct md_buf buf = MD_BUF_INIT;
    char chunk[8192];
    FILE *f = fopen(path, "rb");
    size_t n;

    assert_non_null(f);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        assert_int_equal(md_buf_append(&buf, chunk, n), 0);
    assert_false(ferror(f));
    fclose(f);
    *size = buf.len;
    return (uint8_t *)md_buf_detach(&buf);
}

/* Run fn on every regular file of dir in name order and return how many
 * ran; a missing directory runs none. */
static size_t replay_dir(const char *dir, fuzz_fn fn)
{
    char **names = NULL;
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;

    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        names = realloc(names, (n + 1) * sizeof(*names));
        assert_non_null(names);
        names[n] = md_strdup(e->d_name);
        assert_non_null(names[n]);
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof(*names), compare_names);

    for (size_t i = 0; i < n; i++) {
        char path[1024];
        uint8_t *data;
        size_t size;

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        data = read_input(path, &size);
        fuzz_input_name = path;
        assert_int_equal(fn(data, size), 0);
        free(data);
        free(names[i]);
    }
    fuzz_input_name = "(none)";
    free(names);
    return n;
}

/* Replay a target's regressions and seeds; a target without seeds is a
 * mistake in the checkout. */
static void replay_target(const char *target, fuzz_fn fn)
{
    char dir[256];

    snprintf(dir, sizeof(dir), "%s/regressions/%s", FUZZ_ROOT, target);
    replay_dir(dir, fn);
    snprintf(dir, sizeof(dir), "%s/corpus/%s", FUZZ_ROOT, target);
    assert_true(replay_dir(dir, fn) > 0);
}

static void graph_inputs_pass(void **state)
{
    (void)state;
    replay_target("graph", fuzz_graph);
}

static void defender_inputs_pass(void **state)
{
    (void)state;
    replay_target("defender", fuzz_defender);
}

static void la_inputs_pass(void **state)
{
    (void)state;
    replay_target("la", fuzz_la);
}

static void exclusions_inputs_pass(void **state)
{
    (void)state;
    replay_target("exclusions", fuzz_exclusions);
}

static void api_error_inputs_pass(void **state)
{
    (void)state;
    replay_target("api_error", fuzz_api_error);
}

static void token_inputs_pass(void **state)
{
    (void)state;
    replay_target("token", fuzz_token);
}

static void rule_inputs_pass(void **state)
{
    (void)state;
    replay_target("rule", fuzz_rule);
}

static void config_inputs_pass(void **state)
{
    (void)state;
    replay_target("config", fuzz_config);
}

static void retry_after_inputs_pass(void **state)
{
    (void)state;
    replay_target("retry_after", fuzz_retry_after);
}

static void time_inputs_pass(void **state)
{
    (void)state;
    replay_target("time", fuzz_time);
}

static void duration_inputs_pass(void **state)
{
    (void)state;
    replay_target("duration", fuzz_duration);
}

static void output_inputs_pass(void **state)
{
    (void)state;
    replay_target("output", fuzz_output);
}

static void report_inputs_pass(void **state)
{
    (void)state;
    replay_target("report", fuzz_report);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(graph_inputs_pass),
        cmocka_unit_test(defender_inputs_pass),
        cmocka_unit_test(la_inputs_pass),
        cmocka_unit_test(api_error_inputs_pass),
        cmocka_unit_test(token_inputs_pass),
        cmocka_unit_test(rule_inputs_pass),
        cmocka_unit_test(exclusions_inputs_pass),
        cmocka_unit_test(config_inputs_pass),
        cmocka_unit_test(retry_after_inputs_pass),
        cmocka_unit_test(time_inputs_pass),
        cmocka_unit_test(duration_inputs_pass),
        cmocka_unit_test(output_inputs_pass),
        cmocka_unit_test(report_inputs_pass),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
