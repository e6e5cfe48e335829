/*
 * The mail outbox: composing digests of the queued reports and
 * delivering them.
 *
 * Each successful run that has something to report queues an outbox item
 * in the transaction that records the run.  The composer batches every
 * item not yet taken into one digest, which also covers every run
 * finished since the previous digest, so that its health section counts
 * the failed runs too.  It fills the report model (report.h) from the
 * stored events and decides with md_digest_should_send().  Then it
 * renders the message once and stores the bytes with the digest
 * (store.h).  A digest that send_when decides against is recorded as
 * skipped, so that its items are done.
 *
 * The sender delivers the stored bytes of every pending digest that is
 * due.  A temporary failure (no connection, TLS, login, a 4xx reply)
 * leaves the digest pending until the next attempt of
 * md_mail_next_attempt(); a permanent one (a 5xx reply, settings that
 * cannot work) or too many attempts make it dead.  A digest is marked
 * sent only after the server accepted it, so a process killed during a
 * delivery sends the same bytes, with the same Message-ID, again later.
 */
#ifndef MDHUNT_OUTBOX_H
#define MDHUNT_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/mail.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/rule.h"
#include "mdhunt/store.h"

/* Seconds the daemon waits before it tries again when the outbox could
 * not be brought up to date (a store or composing error). */
#define MD_OUTBOX_RECHECK_SECONDS 60

/*
 * Replaceable delivery, so that tests can run without an SMTP server.  A
 * NULL send uses md_mail_send(); a replacement returns as it does.
 */
struct md_outbox_hooks {
    int (*send)(const struct md_mail_settings *s, const char *bytes,
                size_t len, struct md_mail_result *res,
                struct md_error *err, void *ctx);
    void *ctx;
};

/*
 * Compose a digest at now, as the header comment describes.  rules (may
 * be NULL) gives the name, severity, tactics, techniques and frequency
 * of the rules still configured.  A rule missing from it is shown with
 * its stored name and [schedule] default_frequency.  Sets *digest_id to
 * the new digest, or 0 when no item is queued and no run finished since
 * the previous digest.  *state (may be NULL) receives the digest's state:
 * pending (to be sent) or skipped.  Without a [mail] section, or with
 * send_when = never, nothing is composed.  On error nothing is stored and
 * the items stay queued.
 */
int md_outbox_compose(struct md_store *st, const struct md_config *cfg,
                      const struct md_ruleset *rules, md_instant now,
                      int64_t *digest_id, enum md_digest_state *state,
                      struct md_error *err);

/* Counts of one round of deliveries. */
struct md_delivery_result {
    size_t attempted;
    size_t sent;
    size_t retrying;        /* failed, and pending for a later attempt */
    size_t dead;            /* failed, and moved to the dead letters */
    int interrupted;        /* a stop request ended the round */
    struct md_error last_error;     /* of the last failed attempt */
};

/*
 * Deliver digest id at now with the settings of cfg's [mail] section,
 * whose password md_config_require_mail() must have loaded, and record
 * the attempt as the header comment describes.  A dead digest may be
 * delivered again (a retry by hand): a failure leaves it dead.  Each
 * attempt is logged with the digest id, its Message-ID and the error.
 * Returns 0 when the attempt was recorded, whatever its outcome, which
 * res counts; -1 when the digest cannot be delivered (unknown id, sent
 * or skipped already: MD_E_USAGE) or the store failed.
 */
int md_outbox_deliver(struct md_store *st, const struct md_config *cfg,
                      const struct md_outbox_hooks *hooks, int64_t id,
                      md_instant now, struct md_delivery_result *res,
                      struct md_error *err);

/*
 * Deliver every pending digest due at now, oldest first, after loading
 * the SMTP password into cfg.  A password that cannot be loaded is
 * logged and delivers nothing, so that the digests stay pending.  A stop
 * request ends the round.  Returns -1 only when the store failed.
 */
int md_outbox_deliver_due(struct md_store *st, struct md_config *cfg,
                          const struct md_outbox_hooks *hooks, md_instant now,
                          struct md_delivery_result *res,
                          struct md_error *err);

/*
 * The runner's step: compose a digest (when compose is nonzero) and
 * deliver the digests that are due.  Does nothing without a [mail]
 * section or with send_when = never.  Every error is logged; -1 is
 * returned (with err set) after a store error, and the digests and items
 * it concerns stay queued.
 */
int md_outbox_run(struct md_store *st, struct md_config *cfg,
                  const struct md_ruleset *rules,
                  const struct md_outbox_hooks *hooks, md_instant now,
                  int compose, struct md_error *err);

/*
 * Set *due to 1 when the daemon should compose at now, else 0.  It should
 * when something is queued (an item, or a run no digest covers) and
 * [mail] digest_every has passed since the newest digest, or there is no
 * digest yet.
 */
int md_outbox_compose_due(struct md_store *st, const struct md_config *cfg,
                          md_instant now, int *due, struct md_error *err);

/*
 * Set *wakeup to when the daemon next has outbox work: the next compose
 * time when something is queued, or the earliest next attempt of a
 * pending digest; MD_STORE_TIME_NONE when there is none.  A time at or
 * before now (work that failed at now) becomes now plus
 * MD_OUTBOX_RECHECK_SECONDS, so that the daemon never spins.
 */
int md_outbox_next_wakeup(struct md_store *st, const struct md_config *cfg,
                          md_instant now, md_instant *wakeup,
                          struct md_error *err);

#endif
