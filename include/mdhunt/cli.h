/*
 * The command layer: argument parsing, configuration loading and the
 * commands.  Only this layer writes results to stdout and turns an error
 * into an exit code.
 */
#ifndef MDHUNT_CLI_H
#define MDHUNT_CLI_H

#include "mdhunt/config.h"
#include "mdhunt/error.h"

/* State shared by the commands of one invocation. */
struct md_cli {
    const char *config_path;    /* -c, $MDHUNT_CONFIG or the default */
    int config_explicit;        /* the path came from -c or the env */
    struct md_config cfg;
    int cfg_loaded;
};

/*
 * A command's entry point.  It returns an exit code (0, or
 * MD_EXIT_PARTIAL when some rules of several failed), or -1 after filling
 * err, which the caller prints and maps with md_exit_code().
 */
typedef int (*md_command_fn)(struct md_cli *cli, int argc, char **argv,
                             struct md_error *err);

/* Run mdhunt with the process's arguments; returns the exit status. */
int md_cli_main(int argc, char **argv);

/* Load the configuration once (the file must exist when required, or when
 * it was named with -c or $MDHUNT_CONFIG). */
int md_cli_load_config(struct md_cli *cli, int required,
                       struct md_error *err);

/* Print an error the way every command does. */
void md_cli_print_error(const struct md_error *err);

int md_cmd_hunt(struct md_cli *cli, int argc, char **argv,
                struct md_error *err);
int md_cmd_rules(struct md_cli *cli, int argc, char **argv,
                 struct md_error *err);
int md_cmd_run(struct md_cli *cli, int argc, char **argv,
               struct md_error *err);
int md_cmd_diff(struct md_cli *cli, int argc, char **argv,
                struct md_error *err);
int md_cmd_status(struct md_cli *cli, int argc, char **argv,
                  struct md_error *err);
int md_cmd_devices(struct md_cli *cli, int argc, char **argv,
                   struct md_error *err);
int md_cmd_outbox(struct md_cli *cli, int argc, char **argv,
                  struct md_error *err);
int md_cmd_mail_test(struct md_cli *cli, int argc, char **argv,
                     struct md_error *err);
int md_cmd_auth(struct md_cli *cli, int argc, char **argv,
                struct md_error *err);
int md_cmd_exclusions(struct md_cli *cli, int argc, char **argv,
                      struct md_error *err);

#endif
