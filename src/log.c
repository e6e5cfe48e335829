#include "mdhunt/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum md_log_level current_level = MD_LOG_INFO;
static int with_timestamps;
static unsigned long warnings;

static const char *const level_names[] = {
    "error", "warning", "info", "debug"
};

void md_log_set_level(enum md_log_level level)
{
    current_level = level;
}

enum md_log_level md_log_get_level(void)
{
    return current_level;
}

void md_log_set_timestamps(int on)
{
    with_timestamps = on;
}

unsigned long md_log_warning_count(void)
{
    return warnings;
}

/* Replace control characters so that a hostile value cannot forge log
 * lines or send escape sequences to a terminal. */
static void sanitize(char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c < 0x20 || c == 0x7f)
            *s = '?';
    }
}

void md_log(enum md_log_level level, const char *fmt, ...)
{
    char line[4096];
    char stamp[32] = "";
    va_list ap;

    if (level == MD_LOG_WARN)
        warnings++;
    if (level > current_level)
        return;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    sanitize(line);

    if (with_timestamps) {
        time_t now = time(NULL);
        struct tm tm;

        gmtime_r(&now, &tm);
        strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ ", &tm);
    }
    fprintf(stderr, "%smdhunt: %s: %s\n", stamp, level_names[level], line);
}
