/*
 * measure: run a command and record its wall time, CPU time and peak RSS.
 *
 * Usage: measure RESULT_FILE COMMAND [ARG...]
 *
 * Runs COMMAND with the standard streams it inherits, waits for it with
 * wait4() and writes one JSON object to RESULT_FILE:
 *
 *   {"wall_s": 1.234567, "user_s": 0.9, "sys_s": 0.1,
 *    "max_rss_kib": 123456, "exit": 0, "signal": 0}
 *
 * Wall time comes from CLOCK_MONOTONIC around fork() and wait4().  CPU
 * times and max_rss_kib come from the rusage that wait4() returns.  On
 * Linux it covers the command and every descendant it waited for.  The
 * CPU times are their sum, but max_rss_kib is the largest peak of any one
 * of those processes, not the sum of processes that ran at once.
 * Exits 0 when the measurement was written, whatever the command's
 * status, and 2 when it could not run or record the command.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double seconds(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double elapsed(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) +
           (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
    struct timespec start;
    struct timespec end;
    struct rusage usage;
    int status;
    pid_t pid;
    FILE *out;

    if (argc < 3) {
        fprintf(stderr, "usage: measure RESULT_FILE COMMAND [ARG...]\n");
        return 2;
    }
    out = fopen(argv[1], "w");
    if (out == NULL) {
        fprintf(stderr, "measure: cannot open %s: %s\n", argv[1],
                strerror(errno));
        return 2;
    }

    clock_gettime(CLOCK_MONOTONIC, &start);
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "measure: fork failed: %s\n", strerror(errno));
        fclose(out);
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], &argv[2]);
        fprintf(stderr, "measure: cannot run %s: %s\n", argv[2],
                strerror(errno));
        _exit(127);
    }
    while (wait4(pid, &status, 0, &usage) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "measure: wait4 failed: %s\n", strerror(errno));
            fclose(out);
            return 2;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);

    fprintf(out,
            "{\"wall_s\": %.6f, \"user_s\": %.6f, \"sys_s\": %.6f, "
            "\"max_rss_kib\": %ld, \"exit\": %d, \"signal\": %d}\n",
            elapsed(&start, &end), seconds(usage.ru_utime),
            seconds(usage.ru_stime), usage.ru_maxrss,
            WIFEXITED(status) ? WEXITSTATUS(status) : -1,
            WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (fclose(out) != 0) {
        fprintf(stderr, "measure: cannot write %s: %s\n", argv[1],
                strerror(errno));
        return 2;
    }
    return 0;
}
