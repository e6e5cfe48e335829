/*
 * mdhunt run: the scheduled runner, as one cycle (--once, for systemd
 * timers and cron) or as a daemon.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/cli.h"
#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"
#include "mdhunt/runner.h"

static const char run_usage[] =
"Usage: mdhunt run [--once [--all | --rule ID]]\n"
"\n"
"Run the rules under the configured [rules] paths on their schedule,\n"
"record each run in the store and diff it against the earlier runs.\n"
"Each rule runs every queryFrequency (else [schedule] default_frequency)\n"
"plus a fixed random delay of up to [schedule] jitter.  A rule that has\n"
"never run is due at once.\n"
"\n"
"Without --once mdhunt stays in the foreground as a daemon: SIGHUP\n"
"reloads the configuration and the rules between runs, and SIGTERM or\n"
"SIGINT stops it (exit status 0), recording a run in progress as\n"
"interrupted.\n"
"\n"
"With a [mail] section, the reports of the runs are mailed as digests:\n"
"--once composes one after its runs, the daemon one every [mail]\n"
"digest_every, and both then deliver the digests that are due.  A\n"
"failed delivery is logged, the digest stays queued for a later attempt\n"
"(see mdhunt outbox), and the exit status stays that of the runs.\n"
"\n"
"Options:\n"
"      --once       run the rules that are due, then exit\n"
"      --all        with --once: run every rule, due or not\n"
"      --rule ID    with --once: run only this rule, due or not\n"
"  -h, --help       show this help\n"
"\n"
"A rule file with a problem is logged and skipped; the other rules run.\n"
"\n"
"Exit status of --once: 0 when every run succeeded or none was due,\n"
"6 when some failed or a rule file was skipped, the error's own status\n"
"when the one rule of --rule failed, 130 when SIGINT or SIGTERM stopped\n"
"it, 75 when another runner holds the store's lock, 2 for configuration\n"
"errors and when no rule could be loaded.\n";

/* Exit status of one cycle, once its runs were logged. */
static int once_status(const struct md_cycle_result *res, int one_rule)
{
    if (res->interrupted) {
        md_info("cycle stopped by %s after %zu runs",
                md_runner_signal_name(md_interrupt_pending()), res->ran);
        return MD_EXIT_INTERRUPTED;
    }
    if (res->ran == 0)
        md_info("no rule is due");
    else
        md_info("cycle done: %zu runs, %zu ok, %zu failed", res->ran,
                res->ok, res->failed);
    if (res->failed == 0)
        return MD_EXIT_OK;
    if (one_rule && res->ran == 1)
        return md_exit_code(res->last_error.kind);
    return MD_EXIT_PARTIAL;
}

int md_cmd_run(struct md_cli *cli, int argc, char **argv,
               struct md_error *err)
{
    static const struct option options[] = {
        { "once", no_argument, NULL, 'o' },
        { "all", no_argument, NULL, 'a' },
        { "rule", required_argument, NULL, 'r' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct md_runner_options opts;
    struct md_runner *runner = NULL;
    struct md_cycle_result res;
    int status;
    int c;

    memset(&opts, 0, sizeof(opts));
    opts.daemon = 1;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'o':
            opts.daemon = 0;
            break;
        case 'a':
            opts.all = 1;
            break;
        case 'r':
            opts.rule_id = optarg;
            break;
        case 'h':
            fputs(run_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE,
                                "run: unknown option or missing value: "
                                "%s; see mdhunt run --help",
                                argv[optind - 1]);
        }
    }
    if (optind < argc)
        return md_error_set(err, MD_E_USAGE, "run: unexpected argument "
                            "\"%s\"; see mdhunt run --help", argv[optind]);
    if (opts.daemon && (opts.all || opts.rule_id != NULL))
        return md_error_set(err, MD_E_USAGE, "run: --all and --rule need "
                            "--once; the daemon runs every rule on its "
                            "schedule");
    if (opts.all && opts.rule_id != NULL)
        return md_error_set(err, MD_E_USAGE, "run: give --all or --rule, "
                            "not both");

    if (opts.daemon) {
        /* Early, so that a SIGHUP during start-up cannot end the
         * process (its default action). */
        md_runner_install_reload_signal();
        /* The daemon's lines get a time unless the journal adds its
         * own. */
        if (getenv("JOURNAL_STREAM") == NULL)
            md_log_set_timestamps(1);
    }

    if (md_cli_load_config(cli, 1, err) != 0)
        return -1;
    /* The runner owns the configuration from here on. */
    cli->cfg_loaded = 0;
    if (md_runner_new(&cli->cfg, &opts, &runner, err) != 0)
        return -1;

    if (opts.daemon) {
        status = md_runner_loop(runner, err) == 0 ? MD_EXIT_OK : -1;
    } else if (md_runner_cycle(runner, &res, err) != 0) {
        status = -1;
    } else {
        status = once_status(&res, opts.rule_id != NULL);
        if (status == MD_EXIT_OK && md_runner_rule_problems(runner))
            status = MD_EXIT_PARTIAL;
        /* Mail errors are logged there and leave the digests queued; the
         * exit status describes the runs. */
        if (!res.interrupted) {
            struct md_error mail_err;

            md_error_clear(&mail_err);
            md_runner_mail(runner, 1, &mail_err);
            if (md_interrupt_pending()) {
                md_info("mail stopped by %s; the digests stay queued",
                        md_runner_signal_name(md_interrupt_pending()));
                status = MD_EXIT_INTERRUPTED;
            }
        }
    }

    md_runner_free(runner);
    return status;
}
