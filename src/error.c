/* Keep the analyzer-only wrappers of error.h off these definitions. */
#define MDHUNT_ERROR_IMPL
#include "mdhunt/error.h"

#include <stdio.h>
#include <string.h>

static const char *const kind_names[MD_E_KIND_COUNT] = {
    [MD_OK] = "ok",
    [MD_E_USAGE] = "usage",
    [MD_E_CONFIG] = "config",
    [MD_E_RULE] = "rule",
    [MD_E_AUTH] = "auth",
    [MD_E_PERMISSION] = "permission",
    [MD_E_QUERY_SYNTAX] = "query_syntax",
    [MD_E_QUERY_TOO_LARGE] = "query_too_large",
    [MD_E_QUERY_PREEMPTED] = "query_preempted",
    [MD_E_THROTTLED] = "throttled",
    [MD_E_CPU_QUOTA] = "cpu_quota",
    [MD_E_NETWORK] = "network",
    [MD_E_TLS] = "tls",
    [MD_E_SERVICE] = "service",
    [MD_E_STORE] = "store",
    [MD_E_LOCK] = "lock",
    [MD_E_INTERRUPTED] = "interrupted",
    [MD_E_INTERNAL] = "internal",
};

void md_error_clear(struct md_error *err)
{
    if (err == NULL)
        return;
    memset(err, 0, sizeof(*err));
    err->kind = MD_OK;
    err->retry_after = -1;
}

int md_error_vset(struct md_error *err, enum md_err_kind kind,
                  const char *fmt, va_list ap)
{
    if (err == NULL)
        return -1;
    err->kind = kind;
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    return -1;
}

int md_error_set(struct md_error *err, enum md_err_kind kind,
                 const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    md_error_vset(err, kind, fmt, ap);
    va_end(ap);
    return -1;
}

int md_error_prefix(struct md_error *err, const char *fmt, ...)
{
    char old[MD_ERR_MESSAGE_MAX];
    size_t used;
    va_list ap;
    int n;

    if (err == NULL)
        return -1;
    memcpy(old, err->message, sizeof(old));
    va_start(ap, fmt);
    n = vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    used = (size_t)n < sizeof(err->message) ? (size_t)n
                                             : sizeof(err->message) - 1;
    /* Append ": old" by hand: the result may be cut at the buffer's end. */
    for (size_t i = 0; ": "[i] != '\0' && used + 1 < sizeof(err->message);
         i++)
        err->message[used++] = ": "[i];
    for (size_t i = 0; old[i] != '\0' && used + 1 < sizeof(err->message);
         i++)
        err->message[used++] = old[i];
    err->message[used] = '\0';
    return -1;
}

const char *md_err_kind_name(enum md_err_kind kind)
{
    if ((int)kind < 0 || kind >= MD_E_KIND_COUNT)
        return "internal";
    return kind_names[kind];
}

enum md_err_kind md_err_kind_from_name(const char *name)
{
    for (int i = 0; i < MD_E_KIND_COUNT; i++) {
        if (name != NULL && strcmp(kind_names[i], name) == 0)
            return (enum md_err_kind)i;
    }
    return MD_E_INTERNAL;
}

int md_exit_code(enum md_err_kind kind)
{
    switch (kind) {
    case MD_OK:
        return MD_EXIT_OK;
    case MD_E_USAGE:
    case MD_E_CONFIG:
    case MD_E_RULE:
        return MD_EXIT_USAGE;
    case MD_E_AUTH:
    case MD_E_PERMISSION:
        return MD_EXIT_AUTH;
    case MD_E_QUERY_SYNTAX:
    case MD_E_QUERY_TOO_LARGE:
    case MD_E_QUERY_PREEMPTED:
        return MD_EXIT_QUERY;
    case MD_E_THROTTLED:
    case MD_E_CPU_QUOTA:
    case MD_E_NETWORK:
    case MD_E_TLS:
    case MD_E_SERVICE:
        return MD_EXIT_UNAVAILABLE;
    case MD_E_LOCK:
        return MD_EXIT_TEMPFAIL;
    case MD_E_INTERRUPTED:
        return MD_EXIT_INTERRUPTED;
    case MD_E_STORE:
    case MD_E_INTERNAL:
    default:
        return MD_EXIT_INTERNAL;
    }
}
