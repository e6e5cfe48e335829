/*
 * mdhunt rules validate | show: check rule files and print a parsed rule.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "mdhunt/cli.h"
#include "mdhunt/log.h"
#include "mdhunt/rule.h"

static const char rules_usage[] =
"Usage: mdhunt rules validate PATH...\n"
"       mdhunt rules show RULE\n"
"\n"
"validate  load every rule file given, and every rule file of each\n"
"          directory given, and report every problem on stderr\n"
"          (exit status 2 when there is one)\n"
"show      print a rule's parsed fields and its exact query; RULE is a\n"
"          file, or the id of a rule under the configured [rules] path\n";

static int cmd_validate(int argc, char **argv, struct md_error *err)
{
    struct md_ruleset set = { NULL, 0 };
    int status;

    if (argc < 1)
        return md_error_set(err, MD_E_USAGE,
                            "rules validate: name at least one file or "
                            "directory");
    /* With keep_going every problem is logged as it is found, so the
     * returned error needs no second message. */
    status = md_ruleset_load((const char *const *)argv, (size_t)argc, 1,
                             &set, err);
    for (size_t i = 0; i < set.nrules; i++)
        printf("ok  %s  %s\n", set.rules[i]->id, set.rules[i]->file);
    if (status != 0 && err->kind != MD_E_RULE && err->kind != MD_E_USAGE) {
        md_ruleset_free(&set);
        return -1;
    }
    if (status != 0)
        md_error_log("%zu rules valid; fix the problems listed above",
                     set.nrules);
    else
        md_info("%zu rules valid", set.nrules);
    md_ruleset_free(&set);
    return status != 0 ? MD_EXIT_USAGE : 0;
}

static int is_file(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmd_show(struct md_cli *cli, const char *name,
                    struct md_error *err)
{
    struct md_ruleset set = { NULL, 0 };
    struct md_rule *rule = NULL;
    size_t npaths = 0;

    if (is_file(name)) {
        if (md_rule_load(name, &rule, err) != 0)
            return -1;
        md_rule_print(stdout, rule);
        md_rule_free(rule);
        return 0;
    }

    if (md_cli_load_config(cli, 0, err) != 0)
        return -1;
    while (cli->cfg.rules.paths != NULL && cli->cfg.rules.paths[npaths])
        npaths++;
    if (md_ruleset_load((const char *const *)cli->cfg.rules.paths, npaths,
                        0, &set, err) != 0) {
        md_ruleset_free(&set);
        return -1;
    }
    rule = md_ruleset_find(&set, name);
    if (rule == NULL) {
        md_ruleset_free(&set);
        return md_error_set(err, MD_E_USAGE,
                            "rules show: \"%s\" is neither a file nor the id "
                            "of a rule under the [rules] path", name);
    }
    md_rule_print(stdout, rule);
    md_ruleset_free(&set);
    return 0;
}

int md_cmd_rules(struct md_cli *cli, int argc, char **argv,
                 struct md_error *err)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        fputs(rules_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? md_error_set(err, MD_E_USAGE,
                                       "rules: name a subcommand") : 0;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(rules_usage, stdout);
            return 0;
        }
    }
    if (strcmp(argv[1], "validate") == 0)
        return cmd_validate(argc - 2, argv + 2, err);
    if (strcmp(argv[1], "show") == 0) {
        if (argc != 3)
            return md_error_set(err, MD_E_USAGE,
                                "rules show: name exactly one rule");
        return cmd_show(cli, argv[2], err);
    }
    return md_error_set(err, MD_E_USAGE,
                        "rules: unknown subcommand \"%s\"; use validate "
                        "or show", argv[1]);
}
