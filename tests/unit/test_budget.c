/* Tests for the call budget and the CPU-quota pause, with an injected
 * clock: every instant below is passed in, nothing waits. */
#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/budget.h"

#define TENANT "3f1c2a9e-7b4d-4c8e-9a61-5d2e8f0b7c34"
#define CLIENT_A "8d0e5b17-2f6a-4e39-b1c4-7a9d3e6f2051"
#define CLIENT_B "c47a91d2-5e08-4b6f-8d23-0f1e9b7a6c58"

#define SECOND MD_TICKS_PER_SECOND
/* 2025-03-01T00:00:00Z */
#define T0 (INT64_C(1740787200) * SECOND)
#define NO_LIMIT (T0 + INT64_C(86400) * SECOND)

struct files {
    char dir[64];
    char path[96];
};

static int setup_files(void **state)
{
    struct files *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/mdhunt-test-budget-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/mdhunt.db.budget", f->dir);
    *state = f;
    return 0;
}

static int teardown_files(void **state)
{
    struct files *f = *state;

    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct md_budget *open_budget(const char *path, const char *tenant,
                                     const char *client, long per_minute,
                                     long per_hour)
{
    struct md_budget_limits limits = { per_minute, per_hour };
    struct md_budget *b = NULL;
    struct md_error err;

    md_error_clear(&err);
    if (md_budget_open(path, tenant, client, &limits, &b, &err) != 0)
        fail_msg("md_budget_open: %s", err.message);
    return b;
}

/* Reserve a call at now; returns the slot. */
static struct md_budget_slot reserve(struct md_budget *b, md_instant now,
                                     md_instant latest)
{
    struct md_budget_slot slot;
    struct md_error err;

    md_error_clear(&err);
    if (md_budget_reserve(b, now, latest, &slot, &err) != 0)
        fail_msg("md_budget_reserve: %s", err.message);
    return slot;
}

static void calls_within_limit_go_at_once(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 3, 100);

    (void)state;
    for (int i = 0; i < 3; i++) {
        struct md_budget_slot slot = reserve(b, T0, NO_LIMIT);

        assert_true(slot.reserved);
        assert_true(slot.at == T0);
    }
    md_budget_free(b);
}

static void minute_limit_paces_next_call(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 3, 100);
    struct md_budget_slot slot;

    (void)state;
    reserve(b, T0, NO_LIMIT);
    reserve(b, T0 + 10 * SECOND, NO_LIMIT);
    reserve(b, T0 + 20 * SECOND, NO_LIMIT);
    slot = reserve(b, T0 + 30 * SECOND, NO_LIMIT);
    assert_true(slot.reserved);
    /* 61 s after the oldest of the three, whose second counts whole. */
    assert_true(slot.at == T0 + 61 * SECOND);
    slot = reserve(b, T0 + 30 * SECOND, NO_LIMIT);
    assert_true(slot.at == T0 + 71 * SECOND);
    md_budget_free(b);
}

static void hour_limit_paces_next_call(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 10, 12);
    struct md_budget_slot slot;

    (void)state;
    for (int i = 0; i < 12; i++)
        reserve(b, T0 + i * 120 * SECOND, NO_LIMIT);
    slot = reserve(b, T0 + 1500 * SECOND, NO_LIMIT);
    assert_true(slot.reserved);
    assert_true(slot.at == T0 + 3601 * SECOND);
    md_budget_free(b);
}

static void old_calls_forgotten(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 2, 2);
    struct md_budget_slot slot;

    (void)state;
    reserve(b, T0, NO_LIMIT);
    reserve(b, T0, NO_LIMIT);
    slot = reserve(b, T0 + 3602 * SECOND, NO_LIMIT);
    assert_true(slot.at == T0 + 3602 * SECOND);
    md_budget_free(b);
}

static void slot_past_latest_not_reserved(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 1, 100);
    struct md_budget_slot slot;

    (void)state;
    reserve(b, T0, NO_LIMIT);
    slot = reserve(b, T0, T0 + 30 * SECOND);
    assert_false(slot.reserved);
    assert_true(slot.at == T0 + 61 * SECOND);
    /* The refused call took no slot. */
    slot = reserve(b, T0, NO_LIMIT);
    assert_true(slot.reserved);
    assert_true(slot.at == T0 + 61 * SECOND);
    md_budget_free(b);
}

static void hold_delays_calls(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 40, 1400);
    struct md_budget_slot slot;
    struct md_error err;

    (void)state;
    assert_int_equal(md_budget_hold(b, T0, T0 + 2500 * (SECOND / 1000),
                                    &err), 0);
    slot = reserve(b, T0 + SECOND, NO_LIMIT);
    assert_true(slot.reserved);
    assert_true(slot.at == T0 + 2500 * (SECOND / 1000));
    md_budget_free(b);
}

static void pause_stops_every_app_of_tenant(void **state)
{
    struct files *f = *state;
    struct md_budget *a = open_budget(f->path, TENANT, CLIENT_A, 40, 1400);
    struct md_budget *b = open_budget(f->path, TENANT, CLIENT_B, 40, 1400);
    struct md_budget *other = open_budget(f->path, "fabrikam.com",
                                          CLIENT_A, 40, 1400);
    md_instant until = T0 + 900 * SECOND;
    struct md_budget_slot slot;
    struct md_error err;

    assert_int_equal(md_budget_pause_tenant(a, T0, until, &err), 0);
    slot = reserve(b, T0 + 10 * SECOND, NO_LIMIT);
    assert_false(slot.reserved);
    assert_true(slot.paused_until == until);
    slot = reserve(other, T0 + 10 * SECOND, NO_LIMIT);
    assert_true(slot.reserved);
    assert_true(slot.paused_until == 0);

    slot = reserve(b, until + SECOND, NO_LIMIT);
    assert_true(slot.reserved);
    md_budget_free(a);
    md_budget_free(b);
    md_budget_free(other);
}

static void earlier_pause_keeps_later_end(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 40, 1400);
    md_instant until = 0;
    struct md_error err;

    (void)state;
    assert_int_equal(md_budget_pause_tenant(b, T0, T0 + 900 * SECOND, &err),
                     0);
    assert_int_equal(md_budget_pause_tenant(b, T0, T0 + 60 * SECOND, &err),
                     0);
    assert_int_equal(md_budget_paused_until(b, T0 + SECOND, &until, &err),
                     0);
    assert_true(until == T0 + 900 * SECOND);
    assert_int_equal(md_budget_paused_until(b, T0 + 901 * SECOND, &until,
                                            &err), 0);
    assert_true(until == 0);
    md_budget_free(b);
}

static void file_shared_between_processes(void **state)
{
    struct files *f = *state;
    struct md_budget *first = open_budget(f->path, TENANT, CLIENT_A, 3, 100);
    struct md_budget *second = open_budget(f->path, TENANT, CLIENT_A, 3,
                                           100);
    struct md_budget_slot slot;

    reserve(first, T0, NO_LIMIT);
    reserve(second, T0, NO_LIMIT);
    reserve(first, T0, NO_LIMIT);
    slot = reserve(second, T0, NO_LIMIT);
    assert_true(slot.at == T0 + 61 * SECOND);
    md_budget_free(first);

    /* A budget opened later still counts the calls. */
    first = open_budget(f->path, TENANT, CLIENT_A, 3, 100);
    slot = reserve(first, T0, NO_LIMIT);
    assert_true(slot.at == T0 + 61 * SECOND);
    md_budget_free(first);
    md_budget_free(second);
}

static void key_ignores_case(void **state)
{
    struct files *f = *state;
    struct md_budget *lower = open_budget(f->path, "contoso.com", "abc-def",
                                          1, 100);
    struct md_budget *upper = open_budget(f->path, "CONTOSO.com", "ABC-DEF",
                                          1, 100);
    struct md_budget_slot slot;

    reserve(lower, T0, NO_LIMIT);
    slot = reserve(upper, T0, NO_LIMIT);
    assert_true(slot.at == T0 + 61 * SECOND);
    md_budget_free(lower);
    md_budget_free(upper);
}

static void damaged_file_started_afresh(void **state)
{
    struct files *f = *state;
    struct md_budget *b;
    struct md_budget_slot slot;
    char text[256];
    ssize_t n;
    int fd;

    fd = open(f->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "{\"format\": \"mdh", 15), 15);
    close(fd);

    b = open_budget(f->path, TENANT, CLIENT_A, 40, 1400);
    slot = reserve(b, T0, NO_LIMIT);
    assert_true(slot.reserved);
    md_budget_free(b);

    fd = open(f->path, O_RDONLY);
    assert_true(fd >= 0);
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    assert_true(n > 0);
    text[n] = '\0';
    assert_non_null(strstr(text, "\"format\":\"mdhunt.budget/1\""));
    assert_non_null(strstr(text, "[1740787200,1]"));
}

static void clock_moved_back_drops_future_calls(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 1, 100);
    struct md_budget_slot slot;

    (void)state;
    reserve(b, T0 + INT64_C(5) * 86400 * SECOND, NO_LIMIT + 5 * 86400
                                                 * SECOND);
    slot = reserve(b, T0, NO_LIMIT);
    assert_true(slot.reserved);
    assert_true(slot.at == T0);
    md_budget_free(b);
}

/* After the clock went back a little, a call need not wait for calls
 * recorded "ahead" while the limits hold. */
static void call_before_recorded_ones_allowed(void **state)
{
    struct md_budget *b = open_budget(NULL, TENANT, CLIENT_A, 3, 100);
    struct md_budget_slot slot;

    (void)state;
    reserve(b, T0 + 3600 * SECOND, NO_LIMIT);
    reserve(b, T0 + 3600 * SECOND, NO_LIMIT);
    slot = reserve(b, T0, NO_LIMIT);
    assert_true(slot.at == T0);
    /* Three calls in (T0 - 61, ...]: the window is full until the
     * second of the third newest has passed. */
    slot = reserve(b, T0, NO_LIMIT);
    assert_true(slot.at == T0 + 61 * SECOND);
    md_budget_free(b);
}

static void open_fails_in_missing_directory(void **state)
{
    struct md_budget_limits limits = { 40, 1400 };
    struct md_budget *b = (struct md_budget *)1;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_budget_open("/nonexistent/mdhunt/mdhunt.db.budget",
                                    TENANT, CLIENT_A, &limits, &b, &err),
                     -1);
    assert_null(b);
    assert_int_equal(err.kind, MD_E_STORE);
    assert_non_null(strstr(err.message,
                            "/nonexistent/mdhunt/mdhunt.db.budget"));
}

static void path_null_in_memory(void **state)
{
    struct files *f = *state;
    struct md_budget *memory = open_budget(NULL, TENANT, CLIENT_A, 1, 100);
    struct md_budget *file = open_budget(f->path, TENANT, CLIENT_A, 1, 100);

    assert_null(md_budget_path(memory));
    assert_string_equal(md_budget_path(file), f->path);
    md_budget_free(memory);
    md_budget_free(file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(calls_within_limit_go_at_once),
        cmocka_unit_test(minute_limit_paces_next_call),
        cmocka_unit_test(hour_limit_paces_next_call),
        cmocka_unit_test(old_calls_forgotten),
        cmocka_unit_test(slot_past_latest_not_reserved),
        cmocka_unit_test(hold_delays_calls),
        cmocka_unit_test_setup_teardown(pause_stops_every_app_of_tenant,
                                        setup_files, teardown_files),
        cmocka_unit_test(earlier_pause_keeps_later_end),
        cmocka_unit_test_setup_teardown(file_shared_between_processes,
                                        setup_files, teardown_files),
        cmocka_unit_test_setup_teardown(key_ignores_case, setup_files,
                                        teardown_files),
        cmocka_unit_test_setup_teardown(damaged_file_started_afresh,
                                        setup_files, teardown_files),
        cmocka_unit_test(clock_moved_back_drops_future_calls),
        cmocka_unit_test(call_before_recorded_ones_allowed),
        cmocka_unit_test(open_fails_in_missing_directory),
        cmocka_unit_test_setup_teardown(path_null_in_memory, setup_files,
                                        teardown_files),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
