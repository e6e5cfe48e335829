/*
 * Reviewed exclusions: a YAML file of entries that keep known-good rows
 * out of what a rule reports as new, each until its expiry date.
 *
 * The file ([report] exclusions) is a YAML list of mappings.  Reserved
 * keys:
 *
 *   id       required, unique (ignoring case)
 *   rule     required: a rule id, or "*" for every rule
 *   reason   required: why the rows are known-good
 *   owner    required: who decided it
 *   created  optional date YYYY-MM-DD
 *   expires  required: a date YYYY-MM-DD, which means the end of that day
 *            in UTC, or an RFC 3339 timestamp; at most max_age ahead
 *
 * Every other key is a condition on the result column of that name, and
 * a row matches an entry when all its conditions hold:
 *
 *   COLUMN: value           equal, ignoring case (md_exclusion_fold())
 *   COLUMN: [v1, v2, ...]   equal to one of them, ignoring case
 *   COLUMN: {glob: PAT}     fnmatch() pattern ignoring case; a backslash
 *                           is an ordinary character, so Windows paths
 *                           need no escapes (write [*] for a literal *)
 *   COLUMN: {regex: ERE}    POSIX extended regular expression that must
 *                           match the whole value; it ignores the case of
 *                           ASCII letters only (REG_ICASE in the C locale)
 *   COLUMN: {exact: value}  equal byte for byte
 *
 * A cell is compared as its text: a string as it is, a number or a
 * datetime as the service wrote it.  A null cell matches no condition.
 * A dynamic array cell (make_set() output) matches when it is not empty
 * and every element matches, so one unsanctioned signer among sanctioned
 * ones keeps the row reported.
 *
 * Column names are known only from a reply, so they are checked when a
 * result is matched.  A condition on a column the result lacks makes a
 * "*" entry not applicable to that rule.  It makes an entry for that
 * rule alone invalid for the run, which an md_exclusion_problem reports.
 * Other entries keep working.
 */
#ifndef MDHUNT_EXCLUSIONS_H
#define MDHUNT_EXCLUSIONS_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/error.h"
#include "mdhunt/mdtime.h"
#include "mdhunt/rule.h"
#include "mdhunt/table.h"

/* The value of `rule` that applies an entry to every rule. */
#define MD_EXCLUSION_ANY_RULE "*"

/* An exclusions file larger than this is rejected. */
#define MD_EXCLUSIONS_FILE_MAX (4u * 1024 * 1024)

/* Text size of a date "YYYY-MM-DD" with its NUL. */
#define MD_EXCLUSION_DATE_SIZE 11

enum md_match_kind {
    MD_MATCH_EQUAL = 0,     /* a value or a list: equal ignoring case */
    MD_MATCH_GLOB,          /* {glob: PATTERN} */
    MD_MATCH_REGEX,         /* {regex: ERE} */
    MD_MATCH_EXACT          /* {exact: VALUE} */
};

/* "equal", "glob", "regex", "exact". */
const char *md_match_kind_name(enum md_match_kind kind);

struct md_exclusion_condition {
    char *column;           /* the key as written */
    enum md_match_kind kind;
    char **values;          /* as written: one or more for MD_MATCH_EQUAL,
                               one for the other kinds */
    size_t nvalues;
    int line;               /* line of the key */
    void *compiled;         /* private: folded values or a regex_t */
};

struct md_exclusion {
    char *id;
    char *rule_id;          /* a rule id, or MD_EXCLUSION_ANY_RULE */
    char *reason;
    char *owner;
    char created[MD_EXCLUSION_DATE_SIZE];   /* "" when absent */
    char *expires_text;     /* the expiry as written */
    md_instant expires;     /* the first instant at which it no longer
                               applies: for a date, 00:00:00Z of the
                               next day */
    int line;               /* line of the entry's first key */
    struct md_exclusion_condition *conditions;
    size_t nconditions;
};

struct md_exclusions {
    char *path;             /* the file name used in messages */
    char hash[65];          /* hex SHA-256 of the canonical content */
    struct md_exclusion *entries;   /* in file order */
    size_t nentries;
};

struct md_exclusions_options {
    const struct md_ruleset *rules;  /* NULL: rule ids are not checked */
    int64_t max_age;        /* seconds an expiry may lie after now; 0:
                               no limit */
    md_instant now;
};

/*
 * Read and validate an exclusions file.  Errors are MD_E_CONFIG and name
 * the file and the line of the offending key, or of the entry's first
 * line when a required key is missing: invalid YAML, an entry that is
 * not a mapping, a missing or empty id, rule, reason, owner or expires,
 * a duplicate id, a rule id that opts->rules lacks, an invalid date, an
 * expiry more than opts->max_age after opts->now (a date counts as its
 * day), an entry without conditions, an invalid condition value or
 * regular expression.  The first error is returned in err and later
 * ones are logged, up to 20, so that one check shows them all.
 *
 * The hash is the SHA-256 of the entries as compact JSON with sorted
 * keys, so comments, layout and quoting do not change it but any value
 * or the order of the entries does.  An empty file (or one with only
 * comments) has no entries.  On success the caller frees *out with
 * md_exclusions_free(); on failure *out is NULL.
 */
int md_exclusions_load(const char *path,
                       const struct md_exclusions_options *opts,
                       struct md_exclusions **out, struct md_error *err);

/* Load len bytes of data as md_exclusions_load() loads a file; name is
 * the file name used in messages. */
int md_exclusions_load_buffer(const char *name, const char *data,
                              size_t len,
                              const struct md_exclusions_options *opts,
                              struct md_exclusions **out,
                              struct md_error *err);

/* Free everything; NULL is ignored. */
void md_exclusions_free(struct md_exclusions *x);

/* The entry whose id equals id ignoring ASCII case, or NULL. */
const struct md_exclusion *md_exclusions_find(const struct md_exclusions *x,
                                              const char *id);

/*
 * Format the instant an entry stops applying as the file writes it:
 * "YYYY-MM-DD" when it is the end of a whole UTC day (that day), else a
 * timestamp as md_time_format() writes it.  buf needs MD_TIME_TEXT_MAX
 * bytes.  Returns buf.
 */
char *md_exclusion_format_expiry(md_instant expires, char *buf,
                                 size_t size);

/* Nonzero when the entry no longer applies at the instant at. */
int md_exclusion_expired(const struct md_exclusion *e, md_instant at);

/* Nonzero when the entry names rule_id (ignoring ASCII case) or "*". */
int md_exclusion_for_rule(const struct md_exclusion *e, const char *rule_id);

/*
 * Whether a condition holds for one value of len bytes (which need not
 * be NUL-terminated and may contain NUL bytes).  Returns 1 or 0, or -1
 * when out of memory.
 */
int md_exclusion_condition_matches(const struct md_exclusion_condition *c,
                                   const char *value, size_t len);

/*
 * Fold UTF-8 text for comparing without case: simple case folding (one
 * code point to one) of Latin (ASCII, Latin-1, Latin Extended-A and
 * Additional, part of Extended-B), Greek without its extended block,
 * Cyrillic, Armenian, Georgian and fullwidth Latin letters.  Other
 * characters and invalid bytes are kept as they are, and no Unicode
 * normalisation is done, so "e" followed by U+0301 differs from U+00E9.
 * Returns a new NUL-terminated string (caller frees), or NULL when out
 * of memory.
 */
char *md_exclusion_fold(const char *s, size_t len);

/* ---- Matching a result ------------------------------------------------- */

/* An entry that could not be applied to a result. */
struct md_exclusion_problem {
    const struct md_exclusion *entry;
    char *message;          /* names the file, the line and the column */
};

struct md_exclusion_matcher;

/*
 * Prepare to match the rows of table, the result of rule_id, at the
 * instant at: the entries for the rule that have not expired, with
 * their columns resolved by md_table_column_index().  A table without
 * rows checks no column.  Entries for the rule alone that name a column
 * the table lacks become problems.  x may be NULL (nothing matches).
 * The matcher refers to x and table, which must outlive it.  Free with
 * md_exclusion_matcher_free().
 */
int md_exclusion_matcher_new(const struct md_exclusions *x,
                             const char *rule_id,
                             const struct md_table *table, md_instant at,
                             struct md_exclusion_matcher **out,
                             struct md_error *err);

void md_exclusion_matcher_free(struct md_exclusion_matcher *m);

/* The problems found by md_exclusion_matcher_new(), owned by m. */
const struct md_exclusion_problem *md_exclusion_matcher_problems(
    const struct md_exclusion_matcher *m, size_t *n);

/*
 * Set *entry to the first entry (in file order) that matches the row,
 * or NULL.  Returns 0, or -1 with err set when out of memory.
 */
int md_exclusion_match_row(struct md_exclusion_matcher *m, size_t row,
                           const struct md_exclusion **entry,
                           struct md_error *err);

#endif
