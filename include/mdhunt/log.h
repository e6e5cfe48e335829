/*
 * Logging to stderr, one line per event: "mdhunt: LEVEL: message".
 *
 * Nothing below the command layer writes to stdout; everything else goes
 * through these functions.  Never pass a secret or a token as an argument.
 */
#ifndef MDHUNT_LOG_H
#define MDHUNT_LOG_H

enum md_log_level {
    MD_LOG_ERROR = 0,
    MD_LOG_WARN,
    MD_LOG_INFO,
    MD_LOG_DEBUG
};

/* Messages above this level are dropped before formatting.  Default: INFO. */
void md_log_set_level(enum md_log_level level);
enum md_log_level md_log_get_level(void);

/* Prefix each line with an ISO 8601 UTC timestamp (for the daemon when
 * stderr is not the journal).  Default: off. */
void md_log_set_timestamps(int on);

void md_log(enum md_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define md_error_log(...) md_log(MD_LOG_ERROR, __VA_ARGS__)
#define md_warn(...) md_log(MD_LOG_WARN, __VA_ARGS__)
#define md_info(...) md_log(MD_LOG_INFO, __VA_ARGS__)
#define md_debug(...) md_log(MD_LOG_DEBUG, __VA_ARGS__)

/* Number of warnings logged since start; tests and `rules validate` use it. */
unsigned long md_log_warning_count(void);

#endif
