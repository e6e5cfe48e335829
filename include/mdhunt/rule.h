/*
 * Hunting rules: Sentinel-style YAML files and plain KQL files.
 *
 * YAML files pass through a repair pre-pass for the known defects of real
 * rule collections, keeping a line map so that every message names the
 * original file and line, and then a strict libyaml parse.
 */
#ifndef MDHUNT_RULE_H
#define MDHUNT_RULE_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/error.h"

struct md_field_mapping {
    char *identifier;       /* e.g. "HostName" */
    char *column;           /* e.g. "DeviceName" */
};

struct md_entity_mapping {
    char *entity_type;      /* e.g. "Host" */
    struct md_field_mapping *fields;
    size_t nfields;
};

struct md_connector {
    char *connector_id;
    char **data_types;
    size_t ndata_types;
};

struct md_rule {
    char *file;             /* path as given */
    char *id;
    int id_from_file;       /* no id in the file: the file name's stem */
    char *name;             /* NULL when absent */
    char *description;
    char *severity;
    char **tactics;
    size_t ntactics;
    char **techniques;      /* relevantTechniques */
    size_t ntechniques;
    int64_t frequency;      /* queryFrequency in seconds, 0 when absent */
    int64_t period;         /* queryPeriod in seconds, 0 when absent */
    struct md_connector *connectors;
    size_t nconnectors;
    struct md_entity_mapping *mappings;
    size_t nmappings;
    char *query;            /* exactly what the service receives */
    size_t query_len;
    int query_line;         /* line of the query's first line in file */
    char query_sha256[65];  /* hex SHA-256 of the query bytes */
};

/*
 * Load one rule file: .yaml/.yml (any case) and files without an
 * extension as YAML, .kql as plain KQL.  Warnings (missing id, repaired
 * defects) are logged with file and line.  Errors are MD_E_RULE with the
 * file and line in the message.  Free the result with md_rule_free().
 */
int md_rule_load(const char *path, struct md_rule **out,
                 struct md_error *err);

/* Make a rule from KQL typed on the command line (label names it in
 * messages, e.g. "-q").  Free with md_rule_free(). */
int md_rule_from_query(const char *query, size_t len, const char *label,
                       struct md_rule **out, struct md_error *err);

void md_rule_free(struct md_rule *rule);

struct md_ruleset {
    struct md_rule **rules;
    size_t nrules;
};

/*
 * Load files and directories (a directory's rule files, sorted by name;
 * hidden files are skipped).  Two rules with one id are an error naming
 * both files.  With keep_going, every file is tried and each problem is
 * logged; the first error is returned at the end.
 */
int md_ruleset_load(const char *const *paths, size_t npaths, int keep_going,
                    struct md_ruleset *set, struct md_error *err);

/* The rule with this id, or NULL. */
struct md_rule *md_ruleset_find(const struct md_ruleset *set,
                                const char *id);

void md_ruleset_free(struct md_ruleset *set);

#endif
