/*
 * The client-side call budget of a tenant and application, and the
 * CPU-quota pause of a tenant.
 *
 * Defender and Graph advanced hunting allow a tenant at least 45 calls
 * per minute (the older Defender for Endpoint API also documents 1,500
 * per hour) and reply with HTTP 429 beyond that.  mdhunt stays under [api]
 * max_calls_per_minute and max_calls_per_hour by reserving a time slot
 * for every call before sending it.  A call that would exceed a limit
 * gets a later slot and its caller waits until then, so a cycle of many
 * rules is paced instead of drawing 429 replies.
 *
 * A 429 reporting that the tenant's CPU quota is used up pauses every
 * call of the tenant, whatever its application, until the quota's
 * 15-minute window has passed.
 *
 * The state is shared by every mdhunt process that uses the same store:
 * it lives in STORE_PATH.budget, a small JSON file that each operation
 * reads and rewrites under an exclusive flock().  A damaged file is
 * warned about and started afresh, because the budget only paces calls.
 * Without a file the state lives in memory and ends with the process.
 * Calls are counted per whole second.
 */
#ifndef MDHUNT_BUDGET_H
#define MDHUNT_BUDGET_H

#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"

/* Suffix of the budget file beside the store. */
#define MD_BUDGET_SUFFIX ".budget"

/* The CPU quota's window: a tenant is paused this long after a CPU-quota
 * 429 that names no Retry-After. */
#define MD_BUDGET_CPU_PAUSE_SECONDS 900

struct md_budget_limits {
    long per_minute;        /* calls in any 60 s, at least 1 */
    long per_hour;          /* calls in any 3600 s, at least per_minute */
};

/* The opaque budget of one tenant and application. */
struct md_budget;

/*
 * Open the budget of tenant and client_id (compared ignoring ASCII case)
 * in the file at path, created with mode 0600 when missing, or in memory
 * when path is NULL.  The strings are copied.  A file that cannot be
 * opened is MD_E_STORE naming it.  Free with md_budget_free().
 */
int md_budget_open(const char *path, const char *tenant,
                   const char *client_id,
                   const struct md_budget_limits *limits,
                   struct md_budget **out, struct md_error *err);

/* Close the file and free; NULL is ignored. */
void md_budget_free(struct md_budget *b);

/* The file's path, or NULL for a budget in memory.  Borrowed from b. */
const char *md_budget_path(const struct md_budget *b);

/* The outcome of md_budget_reserve(). */
struct md_budget_slot {
    int reserved;           /* the call is recorded at slot time `at` */
    md_instant at;          /* earliest time the call may be sent */
    md_instant paused_until;    /* end of the tenant's pause, or 0 */
};

/*
 * Reserve the earliest slot at or after now at which one more call keeps
 * both limits and respects any hold of the application (md_budget_hold).
 * The call is recorded at that slot, and the caller waits until slot->at
 * before sending it.  Nothing is reserved (slot->reserved is 0) when the
 * tenant is paused at now, with slot->paused_until its end, or when the
 * slot would come after latest, with slot->at the slot.  Returns 0, or -1
 * with MD_E_STORE when the file could not be read or written.
 */
int md_budget_reserve(struct md_budget *b, md_instant now,
                      md_instant latest, struct md_budget_slot *slot,
                      struct md_error *err);

/* Let no call of the application start before until, as after a 429 for
 * the call rate.  An earlier end than the one recorded is ignored. */
int md_budget_hold(struct md_budget *b, md_instant now, md_instant until,
                   struct md_error *err);

/* Pause every call of the tenant until the instant until, as after a
 * CPU-quota 429.  An earlier end than the one recorded is ignored. */
int md_budget_pause_tenant(struct md_budget *b, md_instant now,
                           md_instant until, struct md_error *err);

/* Set *until to the end of the tenant's pause, or to 0 when the tenant is
 * not paused at now. */
int md_budget_paused_until(struct md_budget *b, md_instant now,
                           md_instant *until, struct md_error *err);

#endif
