/*
 * mdhunt hunt: run one rule or query now and print the result table.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "mdhunt/backend.h"
#include "mdhunt/cli.h"
#include "mdhunt/log.h"
#include "mdhunt/output.h"
#include "mdhunt/rule.h"
#include "mdhunt/table.h"

static const char hunt_usage[] =
"Usage: mdhunt hunt RULE.yaml | FILE.kql | -q KQL [OPTIONS]\n"
"\n"
"Send one rule's query (or KQL given with -q) to the configured backend\n"
"and print the result on stdout.\n"
"\n"
"Options:\n"
"  -q, --query KQL    the query text instead of a rule file\n"
"  -f, --format FMT   table (default), json, csv or ndjson\n"
"      --csv-raw      do not neutralise cells that a spreadsheet would\n"
"                     read as a formula (=, +, -, @, tab, CR)\n"
"  -h, --help         show this help\n";

int md_cmd_hunt(struct md_cli *cli, int argc, char **argv,
                struct md_error *err)
{
    static const struct option options[] = {
        { "query", required_argument, NULL, 'q' },
        { "format", required_argument, NULL, 'f' },
        { "csv-raw", no_argument, NULL, 'R' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct md_output_options out_opts;
    struct md_rule *rule = NULL;
    struct md_backend *backend = NULL;
    struct md_table *table = NULL;
    const char *query = NULL;
    const char *format = "table";
    int csv_raw = 0;
    int status = -1;
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "q:f:h", options, NULL)) != -1) {
        switch (c) {
        case 'q':
            query = optarg;
            break;
        case 'f':
            format = optarg;
            break;
        case 'R':
            csv_raw = 1;
            break;
        case 'h':
            fputs(hunt_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE,
                                "hunt: unknown option or missing value: "
                                "%s; see mdhunt hunt --help",
                                argv[optind - 1]);
        }
    }

    md_output_options_init(&out_opts);
    if (md_format_from_name(format, &out_opts.format, err) != 0)
        return md_error_prefix(err, "hunt");
    out_opts.csv_raw = csv_raw;

    if (query != NULL && optind < argc)
        return md_error_set(err, MD_E_USAGE,
                            "hunt: give a rule file or -q KQL, not both");
    if (query == NULL && optind + 1 != argc)
        return md_error_set(err, MD_E_USAGE,
                            "hunt: expected one rule file or -q KQL; see "
                            "mdhunt hunt --help");

    if (query != NULL) {
        if (md_rule_from_query(query, strlen(query), "-q", &rule, err) != 0)
            return -1;
    } else if (md_rule_load(argv[optind], &rule, err) != 0) {
        return -1;
    }

    if (md_cli_load_config(cli, 1, err) != 0 ||
        md_config_require_auth(&cli->cfg, err) != 0)
        goto out;
    if (md_backend_new(&cli->cfg, &backend, err) != 0)
        goto out;
    if (md_backend_run(backend, rule->query, rule->query_len, rule->period,
                       MD_BACKEND_PROGRESS, &table, err) != 0)
        goto out;

    if (table->truncated)
        md_warn("%zu rows: the result may be truncated at the service's "
                "limit of %d rows; narrow the query or its time range",
                table->nrows, MD_SERVICE_ROW_LIMIT);

    out_opts.backend = md_backend_kind_name(cli->cfg.api.backend);
    out_opts.query_sha256 = rule->query_sha256;
    if (md_output_write(stdout, table, &out_opts, err) != 0) {
        /* A reader that went away ("mdhunt hunt ... | head") is not an
         * error worth a message. */
        if (errno == EPIPE)
            status = 0;
        goto out;
    }
    status = 0;

out:
    md_table_free(table);
    md_backend_free(backend);
    md_rule_free(rule);
    return status;
}
