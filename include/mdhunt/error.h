/*
 * The error value that travels up from every layer of mdhunt.
 *
 * A function that can fail returns 0 on success or -1 on failure, and fills
 * the struct md_error its caller passed.  Only the command layer (cli.c)
 * turns an error into an exit code and a message on stderr.
 */
#ifndef MDHUNT_ERROR_H
#define MDHUNT_ERROR_H

#include <stdarg.h>

enum md_err_kind {
    MD_OK = 0,
    MD_E_USAGE,
    MD_E_CONFIG,
    MD_E_RULE,
    MD_E_AUTH,
    MD_E_PERMISSION,
    MD_E_QUERY_SYNTAX,
    MD_E_QUERY_TOO_LARGE,
    MD_E_QUERY_PREEMPTED,
    MD_E_THROTTLED,
    MD_E_CPU_QUOTA,
    MD_E_NETWORK,
    MD_E_TLS,
    MD_E_SERVICE,
    MD_E_STORE,
    MD_E_LOCK,
    MD_E_INTERRUPTED,
    MD_E_INTERNAL,
    MD_E_KIND_COUNT
};

/* Exit codes of the mdhunt command; see md_exit_code(). */
enum md_exit {
    MD_EXIT_OK = 0,
    MD_EXIT_INTERNAL = 1,
    MD_EXIT_USAGE = 2,       /* usage, configuration or rule error */
    MD_EXIT_AUTH = 3,        /* authentication or permission */
    MD_EXIT_QUERY = 4,       /* query rejected by the service */
    MD_EXIT_UNAVAILABLE = 5, /* network, TLS, service, throttling */
    MD_EXIT_PARTIAL = 6,     /* some rules failed in a multi-rule command */
    MD_EXIT_TEMPFAIL = 75,   /* store locked by another runner (EX_TEMPFAIL) */
    MD_EXIT_INTERRUPTED = 130 /* a one-shot command stopped by SIGINT/SIGTERM */
};

#define MD_ERR_MESSAGE_MAX 1024

struct md_error {
    enum md_err_kind kind;
    long http_status;          /* 0 when no HTTP reply was involved */
    char service_code[64];     /* e.g. "invalid_client", "BadRequest" */
    char request_id[128];      /* Graph request-id, Defender error target */
    long retry_after;          /* seconds; -1 when the service gave none */
    char message[MD_ERR_MESSAGE_MAX];
};

/* Reset err to "no error" (kind MD_OK, retry_after -1, empty strings). */
void md_error_clear(struct md_error *err);

/*
 * Set kind and a printf-style message, keep the other fields, and return -1
 * so that callers can write "return md_error_set(err, ...);".  err may be
 * NULL, in which case only -1 is returned.
 */
int md_error_set(struct md_error *err, enum md_err_kind kind,
                 const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int md_error_vset(struct md_error *err, enum md_err_kind kind,
                  const char *fmt, va_list ap);

/*
 * Put context in front of an existing message: "CONTEXT: old message".
 * Returns -1 like md_error_set().
 */
int md_error_prefix(struct md_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * For the clang static analyzer (clang-tidy's clang-analyzer-* checks),
 * which does not see into error.c: the three setters always return -1.
 * Without this it follows paths on which "return md_error_set(...)"
 * returns 0 and reports bugs on them that cannot happen.  error.c defines
 * MDHUNT_ERROR_IMPL to keep its own definitions intact.
 */
#if defined(__clang_analyzer__) && !defined(MDHUNT_ERROR_IMPL)
static inline int md_error_analyzer_failure(int rc)
{
    (void)rc;
    return -1;
}
#define md_error_set(...) md_error_analyzer_failure(md_error_set(__VA_ARGS__))
#define md_error_vset(...) \
    md_error_analyzer_failure(md_error_vset(__VA_ARGS__))
#define md_error_prefix(...) \
    md_error_analyzer_failure(md_error_prefix(__VA_ARGS__))
#endif

/* Lower-case name of a kind as used in logs and the store ("query_syntax"). */
const char *md_err_kind_name(enum md_err_kind kind);

/* Parse a name written by md_err_kind_name(); returns MD_E_INTERNAL if
 * unknown. */
enum md_err_kind md_err_kind_from_name(const char *name);

/* Exit code for an error kind (see enum md_exit). */
int md_exit_code(enum md_err_kind kind);

#endif
