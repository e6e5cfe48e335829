#include "mdhunt/interrupt.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t pending_signal;

void md_interrupt_request(int signo)
{
    pending_signal = signo;
}

int md_interrupt_pending(void)
{
    return pending_signal;
}

void md_interrupt_reset(void)
{
    pending_signal = 0;
}

void md_interrupt_install(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = md_interrupt_request;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}
