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
#include <stdio.h>

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
    int query_line;         /* file line of the query's first non-blank
                               line */
    char query_sha256[65];  /* hex SHA-256 of the query bytes */
};

/*
 * Load one rule file.  A .kql file (any case) is plain KQL: its whole text
 * is the query and its file name stem is the id.  Every other file is
 * read as YAML.  Warnings (missing id, repaired defects, a query longer than Sentinel's
 * 10000 characters) are logged with file and line.  Errors are MD_E_RULE
 * with the file and line in the message.  On success the caller frees
 * *out with md_rule_free(); on failure *out is NULL.
 */
int md_rule_load(const char *path, struct md_rule **out,
                 struct md_error *err);

/*
 * Load a rule from len bytes of data as md_rule_load() loads a file of
 * that content.  name is the file name used in messages and decides the
 * format (.kql or YAML) and, for KQL, the id.  data need not be
 * NUL-terminated.  Frees and returns like md_rule_load().
 */
int md_rule_load_buffer(const char *name, const char *data, size_t len,
                        struct md_rule **out, struct md_error *err);

/* Make a rule from KQL typed on the command line: id "adhoc", name NULL,
 * file set to label, which names it in messages (e.g. "-q").  The query
 * bytes are kept as given.  Free with md_rule_free(). */
int md_rule_from_query(const char *query, size_t len, const char *label,
                       struct md_rule **out, struct md_error *err);

void md_rule_free(struct md_rule *rule);

/* Write a rule's parsed fields and then its query to f, for
 * `mdhunt rules show`.  Returns 0, or -1 when writing failed. */
int md_rule_print(FILE *f, const struct md_rule *rule);

struct md_ruleset {
    struct md_rule **rules;
    size_t nrules;
};

/*
 * Load files and directories.  A directory contributes its regular files
 * named *.yaml, *.yml, *.kql (any case) or without an extension, sorted
 * by name (bytewise), not recursing into subdirectories.  Hidden files,
 * names ending in "~", Makefile and names starting with README, LICENSE,
 * LICENCE, COPYING, NOTICE, CHANGELOG, AUTHORS or CONTRIBUTING (any case)
 * are skipped.  A file named directly is always loaded.  Two rules whose
 * ids are equal ignoring case are an error naming both files.
 *
 * Without keep_going, the first error stops loading and set is left
 * empty.  With keep_going, every file is tried (running out of memory
 * still stops), each problem is logged, set keeps every rule that loaded
 * and the first error is returned at the end.  Free set with
 * md_ruleset_free() in every case.
 */
int md_ruleset_load(const char *const *paths, size_t npaths, int keep_going,
                    struct md_ruleset *set, struct md_error *err);

/* The rule whose id equals id ignoring case, or NULL. */
struct md_rule *md_ruleset_find(const struct md_ruleset *set,
                                const char *id);

void md_ruleset_free(struct md_ruleset *set);

#endif
