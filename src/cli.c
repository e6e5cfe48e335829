/*
 * Argument parsing, configuration loading and dispatch to the commands.
 */
#include "mdhunt/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mdhunt/http.h"
#include "mdhunt/interrupt.h"
#include "mdhunt/log.h"

static const char usage_text[] =
"Usage: mdhunt [OPTIONS] COMMAND [ARGS]\n"
"\n"
"Run Microsoft Sentinel-style hunting rules against Microsoft Defender\n"
"advanced hunting and report newly seen devices.\n"
"\n"
"Commands:\n"
"  hunt RULE | -q KQL      run one rule or query now and print the result\n"
"  rules validate PATH...  check rule files and directories\n"
"  rules show RULE         print a rule's parsed fields and exact query\n"
"  run [--once]            run the due rules on their schedule (daemon\n"
"                          without --once); see mdhunt run --help\n"
"  diff [--rule ID]        show a stored run's new and gone devices\n"
"  status                  show each rule's last run and next due time\n"
"  devices [--rule ID]     list the devices the rules have found\n"
"  outbox [--retry|--show] list the mail digests, deliver them now, or\n"
"                          print one as it is sent\n"
"  mail-test               send a test message with the [mail] settings\n"
"  exclusions check|list   validate the exclusions file, or list its\n"
"                          entries with the devices they excluded\n"
"  auth check              get a token and show its tenant, roles and\n"
"                          expiry, and whether the backend's permission\n"
"                          is among them\n"
"\n"
"Options:\n"
"  -c, --config FILE  configuration file (default $MDHUNT_CONFIG, else\n"
"                     " MD_DEFAULT_CONFIG_PATH ")\n"
"  -v, --verbose      log debug lines and an HTTP trace (secrets and\n"
"                     tokens redacted)\n"
"      --quiet        log errors only\n"
"  -h, --help         show this help, or a command's: mdhunt hunt --help\n"
"  -V, --version      show the version\n"
"\n"
"Exit status:\n"
"  0   success\n"
"  1   internal or store error\n"
"  2   usage, configuration or rule error\n"
"  3   authentication or permission error\n"
"  4   query rejected by the service (syntax, too large, preempted)\n"
"  5   network, TLS, throttling or service unavailable\n"
"  6   some rules failed in a multi-rule command\n"
"  75  the store is locked by another runner\n"
"  130 interrupted by SIGINT or SIGTERM\n"
"\n"
"Results go to stdout; logs and errors go to stderr.  See mdhunt(1).\n";

struct command {
    const char *name;
    md_command_fn fn;
};

static const struct command commands[] = {
    { "hunt", md_cmd_hunt },
    { "rules", md_cmd_rules },
    { "run", md_cmd_run },
    { "diff", md_cmd_diff },
    { "status", md_cmd_status },
    { "devices", md_cmd_devices },
    { "outbox", md_cmd_outbox },
    { "mail-test", md_cmd_mail_test },
    { "auth", md_cmd_auth },
    { "exclusions", md_cmd_exclusions },
};

int md_cli_load_config(struct md_cli *cli, int required,
                       struct md_error *err)
{
    if (cli->cfg_loaded)
        return 0;

    if (!required && !cli->config_explicit &&
        access(cli->config_path, F_OK) != 0) {
        if (md_config_init(&cli->cfg) != 0)
            return md_error_set(err, MD_E_INTERNAL, "out of memory");
        cli->cfg_loaded = 1;
        return 0;
    }
    if (md_config_load(cli->config_path, &cli->cfg, err) != 0) {
        if (!cli->config_explicit && errno == ENOENT)
            md_error_set(err, MD_E_CONFIG,
                         "%s: configuration file not found; name one with "
                         "-c FILE or $MDHUNT_CONFIG, or copy "
                         "mdhunt.ini.example there", cli->config_path);
        return -1;
    }
    cli->cfg_loaded = 1;
    return 0;
}

void md_cli_print_error(const struct md_error *err)
{
    char extra[512] = "";
    size_t n = 0;

    if (err->http_status != 0)
        n += (size_t)snprintf(extra + n, sizeof(extra) - n, "HTTP %ld",
                              err->http_status);
    if (err->service_code[0] != '\0' && n < sizeof(extra))
        n += (size_t)snprintf(extra + n, sizeof(extra) - n, "%scode %s",
                              n > 0 ? ", " : "", err->service_code);
    if (err->request_id[0] != '\0' && n < sizeof(extra))
        n += (size_t)snprintf(extra + n, sizeof(extra) - n,
                              "%srequest id %s", n > 0 ? ", " : "",
                              err->request_id);
    if (err->retry_after >= 0 && n < sizeof(extra))
        snprintf(extra + n, sizeof(extra) - n, "%sretry after %ld s",
                 n > 0 ? ", " : "", err->retry_after);

    if (extra[0] != '\0')
        md_error_log("%s (%s)", err->message, extra);
    else
        md_error_log("%s", err->message);
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

/* Make sure stdout reached its reader.  A reader that went away (EPIPE,
 * as in "mdhunt hunt ... | head") is not an error worth a message. */
static int finish_stdout(int status)
{
    /* A write error seen earlier was already handled by the command that
     * wrote, so only a failure of this last flush needs a message. */
    errno = 0;
    if (fflush(stdout) != 0 && errno != EPIPE) {
        md_error_log("writing the result failed: %s", strerror(errno));
        return status != 0 ? status : MD_EXIT_INTERNAL;
    }
    return status;
}

int md_cli_main(int argc, char **argv)
{
    static const struct option options[] = {
        { "config", required_argument, NULL, 'c' },
        { "verbose", no_argument, NULL, 'v' },
        { "quiet", no_argument, NULL, 'Q' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    struct md_cli cli;
    struct md_error err;
    const struct command *cmd;
    int verbosity = 0;
    int quiet = 0;
    int status;
    int c;

    memset(&cli, 0, sizeof(cli));
    md_error_clear(&err);
    md_interrupt_install();

    cli.config_path = getenv("MDHUNT_CONFIG");
    cli.config_explicit = cli.config_path != NULL && *cli.config_path;
    if (!cli.config_explicit)
        cli.config_path = MD_DEFAULT_CONFIG_PATH;

    opterr = 0;
    while ((c = getopt_long(argc, argv, "+c:vhV", options, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli.config_path = optarg;
            cli.config_explicit = 1;
            break;
        case 'v':
            verbosity++;
            break;
        case 'Q':
            quiet = 1;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return finish_stdout(MD_EXIT_OK);
        case 'V':
            printf("mdhunt %s\n", MDHUNT_VERSION);
            return finish_stdout(MD_EXIT_OK);
        default:
            md_error_log("unknown option %s; see mdhunt --help",
                         argv[optind - 1]);
            return MD_EXIT_USAGE;
        }
    }

    if (quiet)
        md_log_set_level(MD_LOG_ERROR);
    else if (verbosity > 0)
        md_log_set_level(MD_LOG_DEBUG);

    if (optind >= argc) {
        fputs(usage_text, stderr);
        return MD_EXIT_USAGE;
    }
    cmd = find_command(argv[optind]);
    if (cmd == NULL) {
        md_error_log("unknown command \"%s\"; see mdhunt --help",
                     argv[optind]);
        return MD_EXIT_USAGE;
    }

    if (md_http_global_init(&err) != 0) {
        md_cli_print_error(&err);
        return md_exit_code(err.kind);
    }
    optind++;
    status = cmd->fn(&cli, argc - optind + 1, argv + optind - 1, &err);
    if (status < 0) {
        if (err.kind == MD_OK)
            md_error_set(&err, MD_E_INTERNAL, "%s failed without a message",
                         cmd->name);
        if (err.kind != MD_E_INTERRUPTED || md_interrupt_pending() == 0)
            md_cli_print_error(&err);
        else
            md_info("interrupted");
        status = md_exit_code(err.kind);
    }

    status = finish_stdout(status);
    if (cli.cfg_loaded)
        md_config_free(&cli.cfg);
    md_http_global_cleanup();
    return status;
}
