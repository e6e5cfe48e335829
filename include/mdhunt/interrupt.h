/*
 * The stop request raised by SIGINT and SIGTERM.
 *
 * Signal handlers only set a flag; long operations (transfers, sleeps, the
 * runner loop) check it and end cleanly with an MD_E_INTERRUPTED error.
 */
#ifndef MDHUNT_INTERRUPT_H
#define MDHUNT_INTERRUPT_H

/* Install SIGINT/SIGTERM handlers that request a stop, and ignore SIGPIPE
 * so that a closed stdout shows up as EPIPE on write. */
void md_interrupt_install(void);

/* Request a stop (async-signal-safe). */
void md_interrupt_request(int signo);

/* Signal number of the pending stop request, or 0 when none. */
int md_interrupt_pending(void);

/* Forget a pending request (tests, and the runner after a reload). */
void md_interrupt_reset(void);

#endif
