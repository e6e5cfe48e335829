/*
 * Hunting rules: Sentinel-style YAML files and plain KQL files.
 *
 * A YAML rule file goes through these steps:
 *   1. the bytes are checked as UTF-8 and a leading BOM is skipped;
 *   2. every line break (CRLF, CR, LF) becomes LF;
 *   3. a pre-pass repairs two known defects of published rule collections
 *      (see repair_data_types() and repair_query_indent()).  A repair only
 *      changes the indentation of whole lines, and each line keeps its
 *      original line number, so every message names the original line;
 *   4. libyaml's document API parses the result strictly and the root
 *      mapping is read into a struct md_rule.  Unknown keys are ignored.
 */
#include "mdhunt/rule.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <yaml.h>

#include "mdhunt/buf.h"
#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"

/* Rule files are a few kB; a larger file is almost surely not a rule. */
#define RULE_FILE_MAX (4u * 1024 * 1024)

/* Microsoft Sentinel rejects a rule whose query is longer than this many
 * characters.  The hunting APIs do not apply this limit, so mdhunt only
 * warns. */
#define SENTINEL_QUERY_MAX 10000

/* Deepest nesting of YAML collections accepted.  The Sentinel rules in
 * tests/data/corpus nest at most 5 levels. */
#define YAML_DEPTH_MAX 64

#define ADHOC_RULE_ID "adhoc"

/* ------------------------------------------------------------------ */
/* Text helpers                                                        */
/* ------------------------------------------------------------------ */

static int oom(struct md_error *err)
{
    return md_error_set(err, MD_E_INTERNAL, "out of memory");
}

/* Return a pointer to the file name part of path. */
static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');

    return slash != NULL ? slash + 1 : path;
}

enum rule_format {
    FORMAT_YAML,
    FORMAT_KQL,
    FORMAT_OTHER        /* an extension that is neither YAML nor KQL */
};

/* Classify a file name by its extension: .yaml/.yml (any case) and no
 * extension are YAML, .kql (any case) is KQL. */
static enum rule_format format_of(const char *name)
{
    const char *dot = strrchr(name, '.');

    if (dot == NULL || dot == name)
        return FORMAT_YAML;
    if (md_strcasecmp(dot + 1, "yaml") == 0
        || md_strcasecmp(dot + 1, "yml") == 0)
        return FORMAT_YAML;
    if (md_strcasecmp(dot + 1, "kql") == 0)
        return FORMAT_KQL;
    return FORMAT_OTHER;
}

/* Return the file name of path without its extension, or NULL when out
 * of memory. */
static char *file_stem(const char *path)
{
    const char *name = base_name(path);
    const char *dot = strrchr(name, '.');
    size_t len = strlen(name);

    if (dot != NULL && dot != name)
        len = (size_t)(dot - name);
    return md_strndup(name, len);
}

static int is_blank_text(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (!isspace((unsigned char)s[i]))
            return 0;
    }
    return 1;
}

/* Count Unicode code points in valid UTF-8. */
static size_t utf8_length(const char *s, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    }
    return n;
}

/* Return the length of the UTF-8 sequence at s[0..len), or 0 when it is
 * invalid (bad lead byte, truncated, overlong, surrogate, beyond
 * U+10FFFF) or a NUL byte. */
static size_t utf8_sequence(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    size_t n;

    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    }
    return n;
}

/*
 * Check that data is UTF-8 without NUL bytes.  On failure return the
 * 1-based line of the first bad byte; return 0 when the text is valid.
 * Lines end at LF, CRLF or a lone CR, as in normalize_breaks().
 */
static int find_invalid_utf8(const char *data, size_t len, int *is_nul)
{
    const unsigned char *s = (const unsigned char *)data;
    int line = 1;
    size_t i = 0;

    while (i < len) {
        size_t n;

        if (s[i] == '\n' || (s[i] == '\r'
                             && (i + 1 == len || s[i + 1] != '\n')))
            line++;
        n = utf8_sequence(s + i, len - i);
        if (n == 0) {
            *is_nul = s[i] == 0;
            return line;
        }
        i += n;
    }
    return 0;
}

static int check_utf8(const char *label, const char *data, size_t len,
                      struct md_error *err)
{
    int is_nul = 0;
    int line = find_invalid_utf8(data, len, &is_nul);

    if (line == 0)
        return 0;
    if (is_nul)
        return md_error_set(err, MD_E_RULE,
                            "%s:%d: contains a NUL byte; a rule file must "
                            "be UTF-8 text", label, line);
    return md_error_set(err, MD_E_RULE,
                        "%s:%d: invalid UTF-8; save the file as UTF-8",
                        label, line);
}

/* Copy data into a new string with every CRLF and lone CR turned into
 * LF.  Returns NULL when out of memory. */
static char *normalize_breaks(const char *data, size_t len, size_t *out_len)
{
    char *text = malloc(len + 1);
    size_t n = 0;

    if (text == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\r') {
            text[n++] = '\n';
            if (i + 1 < len && data[i + 1] == '\n')
                i++;
        } else {
            text[n++] = data[i];
        }
    }
    text[n] = '\0';
    *out_len = n;
    return text;
}

/* Read a whole regular file of at most RULE_FILE_MAX bytes.  The caller
 * frees *data. */
static int read_file(const char *path, char **data, size_t *len,
                     struct md_error *err)
{
    struct md_buf buf = MD_BUF_INIT;
    char chunk[8192];
    struct stat st;
    FILE *f;
    int rc = -1;

    f = fopen(path, "rb");
    if (f == NULL)
        return md_error_set(err, MD_E_RULE, "%s: cannot open: %s", path,
                            strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        md_error_set(err, MD_E_RULE, "%s: not a regular file; give a rule "
                     "file or a directory of rule files", path);
        goto out;
    }

    for (;;) {
        size_t n = fread(chunk, 1, sizeof(chunk), f);

        if (n == 0)
            break;
        if (buf.len + n > RULE_FILE_MAX) {
            md_error_set(err, MD_E_RULE, "%s: larger than %u bytes; this "
                         "is not a rule file", path, RULE_FILE_MAX);
            goto out;
        }
        if (md_buf_append(&buf, chunk, n) != 0) {
            oom(err);
            goto out;
        }
    }
    if (ferror(f)) {
        md_error_set(err, MD_E_RULE, "%s: read failed: %s", path,
                     strerror(errno));
        goto out;
    }

    *len = buf.len;
    *data = md_buf_detach(&buf);
    if (*data == NULL) {
        oom(err);
        goto out;
    }
    rc = 0;
out:
    md_buf_free(&buf);
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------------ */
/* The rule value                                                      */
/* ------------------------------------------------------------------ */

static void free_strings(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
}

void md_rule_free(struct md_rule *rule)
{
    if (rule == NULL)
        return;
    free(rule->file);
    free(rule->id);
    free(rule->name);
    free(rule->description);
    free(rule->severity);
    free_strings(rule->tactics, rule->ntactics);
    free_strings(rule->techniques, rule->ntechniques);
    for (size_t i = 0; i < rule->nconnectors; i++) {
        free(rule->connectors[i].connector_id);
        free_strings(rule->connectors[i].data_types,
                     rule->connectors[i].ndata_types);
    }
    free(rule->connectors);
    for (size_t i = 0; i < rule->nmappings; i++) {
        struct md_entity_mapping *m = &rule->mappings[i];

        free(m->entity_type);
        for (size_t j = 0; j < m->nfields; j++) {
            free(m->fields[j].identifier);
            free(m->fields[j].column);
        }
        free(m->fields);
    }
    free(rule->mappings);
    free(rule->query);
    free(rule);
}

/* Return items resized to n + 1 elements of size bytes, the new last one
 * zeroed, or NULL when out of memory (items is then unchanged). */
static void *grow(void *items, size_t n, size_t size)
{
    char *bigger;

    if (n >= SIZE_MAX / size - 1)
        return NULL;
    bigger = realloc(items, (n + 1) * size);
    if (bigger == NULL)
        return NULL;
    memset(bigger + n * size, 0, size);
    return bigger;
}

static int push_string(char ***items, size_t *n, const char *s, size_t len)
{
    char **bigger = grow(*items, *n, sizeof(char *));

    if (bigger == NULL)
        return -1;
    *items = bigger;
    bigger[*n] = md_strndup(s, len);
    if (bigger[*n] == NULL)
        return -1;
    (*n)++;
    return 0;
}

static void hash_query(struct md_rule *rule)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    rule->query_sha256[0] = '\0';
    if (EVP_Digest(rule->query, rule->query_len, md, &mdlen, EVP_sha256(),
                   NULL) != 1 || mdlen != 32)
        return;
    for (unsigned int i = 0; i < mdlen; i++) {
        rule->query_sha256[2 * i] = hex[md[i] >> 4];
        rule->query_sha256[2 * i + 1] = hex[md[i] & 0x0f];
    }
    rule->query_sha256[64] = '\0';
}

/*
 * Check the query and compute its hash.  label and line locate the query
 * in messages.  The query must contain something besides white space and
 * no NUL byte.  A query longer than Sentinel's limit is only a warning.
 */
static int finish_query(struct md_rule *rule, const char *label, int line,
                        struct md_error *err)
{
    size_t chars;

    if (memchr(rule->query, '\0', rule->query_len) != NULL)
        return md_error_set(err, MD_E_RULE, "%s:%d: the query contains a "
                            "NUL character; remove it", label, line);
    if (is_blank_text(rule->query, rule->query_len))
        return md_error_set(err, MD_E_RULE, "%s:%d: the query is empty; "
                            "write the KQL to run", label, line);

    chars = utf8_length(rule->query, rule->query_len);
    if (chars > SENTINEL_QUERY_MAX)
        md_warn("%s:%d: the query has %zu characters; Microsoft Sentinel "
                "accepts at most %d in a rule, the hunting APIs accept it",
                label, line, chars, SENTINEL_QUERY_MAX);

    hash_query(rule);
    if (rule->query_sha256[0] == '\0')
        return md_error_set(err, MD_E_INTERNAL, "%s: SHA-256 of the query "
                            "failed (OpenSSL)", label);
    return 0;
}

/* Return the 1-based line of the first non-blank line at or after byte
 * offset start of text, or the line of start when all are blank. */
static int first_content_line(const char *text, size_t len, size_t start,
                              int start_line)
{
    int line = start_line;
    size_t i = start;

    while (i < len) {
        size_t end = i;

        while (end < len && text[end] != '\n')
            end++;
        if (!is_blank_text(text + i, end - i))
            return line;
        i = end + 1;
        line++;
    }
    return start_line;
}

/* ------------------------------------------------------------------ */
/* Plain KQL files and ad hoc queries                                  */
/* ------------------------------------------------------------------ */

static struct md_rule *new_rule(const char *file)
{
    struct md_rule *rule = calloc(1, sizeof(*rule));

    if (rule == NULL)
        return NULL;
    rule->file = md_strdup(file);
    if (rule->file == NULL) {
        free(rule);
        return NULL;
    }
    return rule;
}

/* The whole file is the query (after the BOM, with CRLF turned into LF);
 * the id is the file name's stem. */
static int load_kql(const char *path, const char *data, size_t len,
                    struct md_rule **out, struct md_error *err)
{
    struct md_rule *rule = new_rule(path);

    if (rule == NULL)
        return oom(err);
    rule->id = file_stem(path);
    rule->id_from_file = 1;
    rule->query = normalize_breaks(data, len, &rule->query_len);
    if (rule->id == NULL || rule->query == NULL) {
        md_rule_free(rule);
        return oom(err);
    }
    if (rule->id[0] == '\0') {
        md_rule_free(rule);
        return md_error_set(err, MD_E_RULE, "%s: the file name gives an "
                            "empty rule id; rename the file", path);
    }

    rule->query_line = first_content_line(rule->query, rule->query_len,
                                          0, 1);
    if (finish_query(rule, path, rule->query_line, err) != 0) {
        md_rule_free(rule);
        return -1;
    }
    *out = rule;
    return 0;
}

int md_rule_from_query(const char *query, size_t len, const char *label,
                       struct md_rule **out, struct md_error *err)
{
    struct md_rule *rule;

    *out = NULL;
    if (check_utf8(label, query, len, err) != 0)
        return -1;

    rule = new_rule(label);
    if (rule == NULL)
        return oom(err);
    rule->id = md_strdup(ADHOC_RULE_ID);
    rule->query = md_strndup(query, len);
    if (rule->id == NULL || rule->query == NULL) {
        md_rule_free(rule);
        return oom(err);
    }
    rule->query_len = len;
    rule->query_line = 1;
    if (finish_query(rule, label, 1, err) != 0) {
        md_rule_free(rule);
        return -1;
    }
    *out = rule;
    return 0;
}

/* ------------------------------------------------------------------ */
/* The repair pre-pass                                                 */
/* ------------------------------------------------------------------ */

struct line {
    const char *s;      /* start in the normalized text */
    size_t len;         /* bytes, without the line break */
    int orig_line;      /* 1-based line in the original file */
    int indent;         /* leading spaces in the original */
    int new_indent;     /* leading spaces after the repairs */
    int blank;          /* only spaces and tabs */
    int comment;        /* the first other character is '#' */
    int in_block;       /* part of a block scalar's content */
};

/* A YAML file's lines before and after the repairs. */
struct source {
    const char *path;
    char *text;         /* normalized original: LF line breaks, no BOM */
    size_t text_len;
    struct line *lines;
    size_t nlines;
    char *repaired;     /* text given to libyaml */
    size_t repaired_len;
};

static void source_free(struct source *src)
{
    free(src->text);
    free(src->lines);
    free(src->repaired);
}

static int split_lines(struct source *src)
{
    size_t cap = 1;
    size_t i = 0;

    for (size_t k = 0; k < src->text_len; k++) {
        if (src->text[k] == '\n')
            cap++;
    }
    src->lines = calloc(cap, sizeof(*src->lines));
    if (src->lines == NULL)
        return -1;

    while (i < src->text_len) {
        struct line *l = &src->lines[src->nlines];
        size_t end = i;
        size_t k;

        while (end < src->text_len && src->text[end] != '\n')
            end++;
        l->s = src->text + i;
        l->len = end - i;
        l->orig_line = (int)src->nlines + 1;
        while ((size_t)l->indent < l->len && l->s[l->indent] == ' ')
            l->indent++;
        l->new_indent = l->indent;
        for (k = 0; k < l->len && (l->s[k] == ' ' || l->s[k] == '\t'); k++)
            ;
        l->blank = k == l->len;
        l->comment = !l->blank && l->s[k] == '#';
        src->nlines++;
        i = end + 1;
    }
    return 0;
}

/* Is this line outside any structure the pre-pass looks at? */
static int is_skippable(const struct line *l)
{
    return l->blank || l->comment || l->in_block;
}

/* Does the line hold "key:" (then a space or the end) at column col? */
static int key_at(const struct line *l, int col, const char *key)
{
    size_t klen = strlen(key);
    size_t c = (size_t)col;

    if (c + klen + 1 > l->len || memcmp(l->s + c, key, klen) != 0
        || l->s[c + klen] != ':')
        return 0;
    return c + klen + 1 == l->len || l->s[c + klen + 1] == ' '
           || l->s[c + klen + 1] == '\t';
}

/* Does the text at column col start a plain mapping key ("word: ...")? */
static int starts_mapping_key(const struct line *l, size_t col)
{
    if (col >= l->len || strchr("-[]{}#&*!|>'\"%@`?:,", l->s[col]) != NULL)
        return 0;
    for (size_t i = col; i < l->len; i++) {
        if (l->s[i] == ':'
            && (i + 1 == l->len || l->s[i + 1] == ' '
                || l->s[i + 1] == '\t'))
            return 1;
        if (l->s[i] == '#' && l->s[i - 1] == ' ')
            return 0;
    }
    return 0;
}

/* If the line is a block sequence item ("- ..."), return 1 and set
 * *content to the column after the dash and its spaces. */
static int is_item(const struct line *l, size_t *content)
{
    size_t c = (size_t)l->indent;

    if (c >= l->len || l->s[c] != '-'
        || (c + 1 < l->len && l->s[c + 1] != ' '))
        return 0;
    c++;
    while (c < l->len && l->s[c] == ' ')
        c++;
    *content = c;
    return 1;
}

/* Column of line l's text column col after the repairs. */
static int repaired_column(const struct line *l, size_t col)
{
    return (int)col + l->new_indent - l->indent;
}

/*
 * If the line opens a block scalar ("key: |", "- >-", "key: |2 # note"),
 * return the original column of the node that owns it (the key, or the
 * dash of "- |") and set *explicit_indent to the indentation indicator
 * (0 when none).  Otherwise return -1.
 */
static int block_header(const struct line *l, int *explicit_indent)
{
    size_t owner = (size_t)l->indent;
    size_t dash = owner;

    for (size_t j = (size_t)l->indent + 1; j < l->len; j++) {
        size_t k = j + 1;
        size_t before = j;
        int digit = 0;

        if ((l->s[j] != '|' && l->s[j] != '>') || l->s[j - 1] != ' ')
            continue;
        while (before > 0 && l->s[before - 1] == ' ')
            before--;
        if (before == 0 || (l->s[before - 1] != ':'
                            && l->s[before - 1] != '-'))
            continue;
        while (k < l->len && k < j + 3
               && (isdigit((unsigned char)l->s[k]) || l->s[k] == '+'
                   || l->s[k] == '-')) {
            if (isdigit((unsigned char)l->s[k]))
                digit = l->s[k] - '0';
            k++;
        }
        while (k < l->len && (l->s[k] == ' ' || l->s[k] == '\t'))
            k++;
        if (k < l->len && (l->s[k] != '#' || l->s[k - 1] != ' '))
            continue;

        /* Skip "- " prefixes to find the key that owns the scalar. */
        while (owner + 1 < l->len && l->s[owner] == '-'
               && l->s[owner + 1] == ' ') {
            dash = owner;
            owner++;
            while (owner < l->len && l->s[owner] == ' ')
                owner++;
        }
        *explicit_indent = digit;
        return owner == j ? (int)dash : (int)owner;
    }
    return -1;
}

/* Mark the content lines of the block scalar opened on line h; return
 * the index of the first line after the block. */
static size_t mark_block(struct source *src, size_t h, int owner,
                         int explicit_indent)
{
    size_t i = h + 1;
    int indent = owner + explicit_indent;

    if (explicit_indent == 0) {
        while (i < src->nlines && src->lines[i].blank)
            i++;
        if (i == src->nlines)
            return i;
        indent = src->lines[i].new_indent;
        i = h + 1;
    }
    if (indent <= owner)
        return h + 1;

    while (i < src->nlines && (src->lines[i].blank
                               || src->lines[i].new_indent >= indent)) {
        src->lines[i].in_block = 1;
        i++;
    }
    return i;
}

/* Find the line above i at an indentation of at most col, skipping
 * blank lines, comments and block scalar content.  Returns nlines when
 * there is none. */
static size_t line_above(const struct source *src, size_t i, int col)
{
    while (i > 0) {
        const struct line *p = &src->lines[--i];

        if (!is_skippable(p) && p->new_indent <= col)
            return i;
    }
    return src->nlines;
}

/* Is the sequence whose items sit at column col (one of them on line
 * item) indented deeper than the key whose value it is? */
static int sequence_is_indented(const struct source *src, size_t item,
                                int col)
{
    size_t i = item;
    size_t content;

    for (;;) {
        i = line_above(src, i, col);
        if (i == src->nlines)
            return 0;
        if (src->lines[i].new_indent < col)
            return 1;
        if (!is_item(&src->lines[i], &content))
            return 0;
    }
}

/*
 * Known defect 1, in every file of the public RMM collection:
 *
 *     requiredDataConnectors:
 *         - connectorId: MicrosoftThreatProtection
 *         dataTypes:
 *             - DeviceNetworkEvents
 *
 * "dataTypes:" sits at the column of the dash above it.  When the sequence
 * is indented under its key, strict YAML rejects that line; the intent is
 * a key of the item's mapping.  The repair moves the line to the column
 * of "connectorId" and, when its list items would then be less indented
 * than the key, moves them by the same amount.  Items written at the dash
 * column itself ("- DeviceNetworkEvents") are taken as its items while
 * they are plain scalars.  When the sequence sits at its key's column,
 * "dataTypes:" there is valid YAML (a key of the outer mapping), so
 * nothing is changed.
 */
static void repair_data_types(struct source *src, size_t i)
{
    struct line *l = &src->lines[i];
    int col = l->new_indent;
    size_t item;
    size_t content;
    size_t last = i;
    int key_col;
    int min_indent = INT_MAX;
    int only_items = 1;
    int moved = 0;

    if (!key_at(l, l->indent, "dataTypes"))
        return;
    item = line_above(src, i, col);
    if (item == src->nlines || src->lines[item].new_indent != col
        || !is_item(&src->lines[item], &content)
        || !starts_mapping_key(&src->lines[item], content))
        return;
    key_col = repaired_column(&src->lines[item], content);
    for (size_t k = item + 1; k < i; k++) {
        if (!is_skippable(&src->lines[k])
            && src->lines[k].new_indent < key_col)
            return;
    }
    if (!sequence_is_indented(src, item, col))
        return;

    for (size_t k = i + 1; k < src->nlines; k++) {
        struct line *v = &src->lines[k];

        if (v->blank || v->comment)
            continue;
        if (v->new_indent > col) {
            only_items = 0;
        } else if (!(only_items && v->new_indent == col
                     && is_item(v, &content)
                     && !starts_mapping_key(v, content))) {
            break;
        }
        if (v->new_indent < min_indent)
            min_indent = v->new_indent;
        last = k;
    }

    if (min_indent < key_col) {
        for (size_t k = i + 1; k <= last; k++) {
            if (!src->lines[k].blank && !src->lines[k].comment) {
                src->lines[k].new_indent += key_col - col;
                moved++;
            }
        }
    }
    l->new_indent = key_col;

    md_warn("%s:%d: repaired a known defect: 'dataTypes:' was at the "
            "column of the '- ' item above it; %s indented %d more spaces "
            "to belong to that item", src->path, l->orig_line,
            moved > 0 ? "it and the lines of its value were" : "it was",
            key_col - col);
}

/*
 * Known defect 2, in Azure-Sentinel's NegoExLogins hunting query:
 *
 *     query: |
 *        DeviceLogonEvents
 *       | where Protocol == "NegoExtender"
 *
 * With no indentation indicator, YAML takes the block's indentation from
 * its first line (3 spaces here), so the less indented second line ends
 * the block and strict YAML fails on it.  The author meant one block
 * indented 2 spaces.  The repair moves the first line to the indentation
 * of the second, so the extra spaces of the first line are not part of
 * the query.  They are indentation typed by mistake, and keeping them
 * would start the query with a space that no other line has.
 *
 * The repair is made only when it provably keeps every other byte: the
 * first non-blank line below the block that is less indented than the
 * second line must be at or left of the key's column (or there is none),
 * so the repaired block holds every line the author indented under the
 * key; and blank lines before the first line must not be wider than the
 * new indentation.  Otherwise the file is left for the strict parse to
 * reject.
 */
static void repair_query_indent(struct source *src, size_t h, int owner)
{
    size_t first = h + 1;
    size_t second;
    int wide;
    int narrow;

    while (first < src->nlines && src->lines[first].blank)
        first++;
    if (first == src->nlines)
        return;
    second = first + 1;
    while (second < src->nlines && src->lines[second].blank)
        second++;
    if (second == src->nlines)
        return;
    wide = src->lines[first].new_indent;
    narrow = src->lines[second].new_indent;
    if (!(owner < narrow && narrow < wide))
        return;

    for (size_t k = h + 1; k < first; k++) {
        const struct line *b = &src->lines[k];

        if ((int)b->len > narrow || memchr(b->s, '\t', b->len) != NULL)
            return;
    }
    for (size_t k = second + 1; k < src->nlines; k++) {
        const struct line *v = &src->lines[k];

        if (v->blank || v->new_indent >= narrow)
            continue;
        if (v->new_indent > owner)
            return;
        break;
    }

    src->lines[first].new_indent = narrow;
    md_warn("%s:%d: repaired a known defect: the first line of the query "
            "block is indented %d spaces and the lines after it %d; the "
            "first line was read with %d, so its extra indentation is not "
            "part of the query", src->path, src->lines[first].orig_line,
            wide, narrow, narrow);
}

static void repair_known_defects(struct source *src)
{
    size_t i = 0;

    while (i < src->nlines) {
        struct line *l = &src->lines[i];
        int explicit_indent = 0;
        int is_query;
        int owner;

        if (l->blank || l->comment) {
            i++;
            continue;
        }
        repair_data_types(src, i);

        owner = block_header(l, &explicit_indent);
        if (owner < 0) {
            i++;
            continue;
        }
        is_query = explicit_indent == 0 && key_at(l, owner, "query");
        owner = repaired_column(l, (size_t)owner);
        if (is_query)
            repair_query_indent(src, i, owner);
        i = mark_block(src, i, owner, explicit_indent);
    }
}

/* Write the repaired text: each line with its new indentation. */
static int build_repaired(struct source *src)
{
    struct md_buf buf = MD_BUF_INIT;
    int ends_with_break = src->text_len > 0
                          && src->text[src->text_len - 1] == '\n';

    for (size_t i = 0; i < src->nlines; i++) {
        const struct line *l = &src->lines[i];

        for (int k = 0; k < l->new_indent; k++) {
            if (md_buf_putc(&buf, ' ') != 0)
                goto fail;
        }
        if (md_buf_append(&buf, l->s + l->indent,
                          l->len - (size_t)l->indent) != 0)
            goto fail;
        if ((i + 1 < src->nlines || ends_with_break)
            && md_buf_putc(&buf, '\n') != 0)
            goto fail;
    }
    src->repaired_len = buf.len;
    src->repaired = md_buf_detach(&buf);
    return src->repaired != NULL ? 0 : -1;
fail:
    md_buf_free(&buf);
    return -1;
}

/* Map a 0-based line of the repaired text to the original 1-based line. */
static int original_line(const struct source *src, size_t line)
{
    if (src->nlines == 0)
        return 1;
    if (line >= src->nlines)
        return src->lines[src->nlines - 1].orig_line;
    return src->lines[line].orig_line;
}

/* Map a 0-based column of the repaired text to the original 1-based
 * column. */
static int original_column(const struct source *src, size_t line,
                           size_t column)
{
    const struct line *l;
    int col = (int)column;

    if (line >= src->nlines)
        return col + 1;
    l = &src->lines[line];
    if (col >= l->new_indent)
        col += l->indent - l->new_indent;
    else if (col > l->indent)
        col = l->indent;
    return col + 1;
}

static int has_leading_tab(const struct source *src, size_t line)
{
    const struct line *l;

    if (line >= src->nlines)
        return 0;
    l = &src->lines[line];
    for (size_t k = 0; k < l->len; k++) {
        if (l->s[k] == '\t')
            return 1;
        if (l->s[k] != ' ')
            return 0;
    }
    return 0;
}

static int has_query_key(const struct source *src)
{
    for (size_t i = 0; i < src->nlines; i++) {
        if (key_at(&src->lines[i], src->lines[i].indent, "query"))
            return 1;
    }
    return 0;
}

static int yaml_syntax_error(const struct source *src,
                             const yaml_parser_t *parser,
                             struct md_error *err)
{
    size_t line = parser->problem_mark.line;
    int orig = original_line(src, line);
    const char *hint = "check the indentation of this line and the lines "
                       "above it";

    if (parser->error == YAML_MEMORY_ERROR)
        return oom(err);
    if (has_leading_tab(src, line))
        return md_error_set(err, MD_E_RULE, "%s:%d: a tab is used as "
                            "indentation; YAML allows only spaces there "
                            "(tabs are kept inside a block scalar's text): "
                            "replace the tab with spaces", src->path, orig);
    if (!has_query_key(src))
        hint = "if the file holds plain KQL, rename it to end in .kql";
    if (parser->context != NULL)
        return md_error_set(err, MD_E_RULE, "%s:%d: invalid YAML at column "
                            "%d: %s (%s at line %d); %s", src->path, orig,
                            original_column(src, line,
                                            parser->problem_mark.column),
                            parser->problem != NULL ? parser->problem : "?",
                            parser->context,
                            original_line(src, parser->context_mark.line),
                            hint);
    return md_error_set(err, MD_E_RULE, "%s:%d: invalid YAML at column %d: "
                        "%s; %s", src->path, orig,
                        original_column(src, line,
                                        parser->problem_mark.column),
                        parser->problem != NULL ? parser->problem : "?",
                        hint);
}

/* ------------------------------------------------------------------ */
/* Reading the YAML document                                           */
/* ------------------------------------------------------------------ */

struct loader {
    const struct source *src;
    yaml_document_t *doc;
    struct md_rule *rule;
    struct md_error *err;
    yaml_node_t *query;     /* the query's value node, once seen */
};

static int node_line(const struct loader *ld, const yaml_node_t *node)
{
    return original_line(ld->src, node->start_mark.line);
}

static yaml_node_t *node_at(const struct loader *ld, int index)
{
    return yaml_document_get_node(ld->doc, index);
}

static const char *scalar_text(const yaml_node_t *node)
{
    return (const char *)node->data.scalar.value;
}

/* Is the node YAML's null: a missing value, "~" or "null" as a plain
 * scalar? */
static int is_null(const yaml_node_t *node)
{
    const char *s;

    if (node->type != YAML_SCALAR_NODE
        || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    s = scalar_text(node);
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0
           || strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

/*
 * Check a mapping for a key written twice; name both lines.  Keys that are
 * not scalars are compared by nothing and never match.
 */
static int check_duplicate_keys(const struct loader *ld,
                                const yaml_node_t *map, const char *where)
{
    const yaml_node_pair_t *start = map->data.mapping.pairs.start;
    const yaml_node_pair_t *top = map->data.mapping.pairs.top;

    for (const yaml_node_pair_t *p = start; p < top; p++) {
        const yaml_node_t *key = node_at(ld, p->key);

        if (key == NULL || key->type != YAML_SCALAR_NODE)
            continue;
        for (const yaml_node_pair_t *q = start; q < p; q++) {
            const yaml_node_t *other = node_at(ld, q->key);

            if (other != NULL && other->type == YAML_SCALAR_NODE
                && strcmp(scalar_text(other), scalar_text(key)) == 0)
                return md_error_set(ld->err, MD_E_RULE, "%s:%d: duplicate "
                                    "key '%s' in %s (first at line %d); "
                                    "remove one of them", ld->src->path,
                                    node_line(ld, key), scalar_text(key),
                                    where, node_line(ld, other));
        }
    }
    return 0;
}

/* Copy a text value into *slot; a null value leaves *slot NULL. */
static int load_text(struct loader *ld, const char *key,
                     const yaml_node_t *value, char **slot)
{
    if (value->type != YAML_SCALAR_NODE)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: '%s' must be a "
                            "text value, not a list or mapping",
                            ld->src->path, node_line(ld, value), key);
    if (is_null(value))
        return 0;
    free(*slot);
    *slot = md_strndup(scalar_text(value), value->data.scalar.length);
    return *slot != NULL ? 0 : oom(ld->err);
}

/*
 * Read a list of text values.  A single text value is a list of one; a
 * null value, null items ("-" alone) and an empty list give no items.
 */
static int load_list(struct loader *ld, const char *key,
                     const yaml_node_t *value, char ***items, size_t *n)
{
    if (value->type == YAML_SCALAR_NODE) {
        if (is_null(value))
            return 0;
        if (push_string(items, n, scalar_text(value),
                        value->data.scalar.length) != 0)
            return oom(ld->err);
        return 0;
    }
    if (value->type != YAML_SEQUENCE_NODE)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: '%s' must be a "
                            "list of text values, not a mapping",
                            ld->src->path, node_line(ld, value), key);

    for (yaml_node_item_t *it = value->data.sequence.items.start;
         it < value->data.sequence.items.top; it++) {
        const yaml_node_t *item = node_at(ld, *it);

        if (item == NULL || is_null(item))
            continue;
        if (item->type != YAML_SCALAR_NODE)
            return md_error_set(ld->err, MD_E_RULE, "%s:%d: each item of "
                                "'%s' must be a text value",
                                ld->src->path, node_line(ld, item), key);
        if (push_string(items, n, scalar_text(item),
                        item->data.scalar.length) != 0)
            return oom(ld->err);
    }
    return 0;
}

static int load_duration(struct loader *ld, const char *key,
                         const yaml_node_t *value, int64_t *seconds)
{
    if (value->type != YAML_SCALAR_NODE)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: '%s' must be a "
                            "duration such as 5m, 1h or 14d",
                            ld->src->path, node_line(ld, value), key);
    if (is_null(value)) {
        *seconds = 0;
        return 0;
    }
    if (md_duration_parse(scalar_text(value), seconds) != 0)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: %s '%s' is not a "
                            "valid duration; write a number and a lower-case "
                            "unit s, m, h or d (5m, 1h, 14d) or a .NET time "
                            "span [d.]hh:mm:ss", ld->src->path,
                            node_line(ld, value), key, scalar_text(value));
    return 0;
}

/* Find the value of key in a mapping node, or NULL. */
static yaml_node_t *mapping_value(const struct loader *ld,
                                  const yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(ld, p->key);

        if (k != NULL && k->type == YAML_SCALAR_NODE
            && strcmp(scalar_text(k), key) == 0)
            return node_at(ld, p->value);
    }
    return NULL;
}

/*
 * Check that value is a list of mappings (or null) and call load_item for
 * each mapping; null items are skipped.
 */
static int load_mapping_list(struct loader *ld, const char *key,
                             const yaml_node_t *value,
                             int (*load_item)(struct loader *,
                                              const yaml_node_t *))
{
    if (is_null(value))
        return 0;
    if (value->type != YAML_SEQUENCE_NODE)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: '%s' must be a list "
                            "of mappings", ld->src->path,
                            node_line(ld, value), key);

    for (yaml_node_item_t *it = value->data.sequence.items.start;
         it < value->data.sequence.items.top; it++) {
        const yaml_node_t *item = node_at(ld, *it);

        if (item == NULL || is_null(item))
            continue;
        if (item->type != YAML_MAPPING_NODE)
            return md_error_set(ld->err, MD_E_RULE, "%s:%d: each item of "
                                "'%s' must be a mapping", ld->src->path,
                                node_line(ld, item), key);
        if (check_duplicate_keys(ld, item, key) != 0
            || load_item(ld, item) != 0)
            return -1;
    }
    return 0;
}

static int load_connector(struct loader *ld, const yaml_node_t *map)
{
    struct md_rule *r = ld->rule;
    struct md_connector *bigger;
    struct md_connector *c;
    const yaml_node_t *v;

    bigger = grow(r->connectors, r->nconnectors, sizeof(*bigger));
    if (bigger == NULL)
        return oom(ld->err);
    r->connectors = bigger;
    c = &bigger[r->nconnectors++];

    v = mapping_value(ld, map, "connectorId");
    if (v != NULL && load_text(ld, "connectorId", v, &c->connector_id) != 0)
        return -1;
    v = mapping_value(ld, map, "dataTypes");
    if (v != NULL && load_list(ld, "dataTypes", v, &c->data_types,
                               &c->ndata_types) != 0)
        return -1;
    return 0;
}

static int load_field_mapping(struct loader *ld, const yaml_node_t *map)
{
    struct md_rule *r = ld->rule;
    struct md_entity_mapping *m = &r->mappings[r->nmappings - 1];
    struct md_field_mapping *bigger;
    struct md_field_mapping *f;
    const yaml_node_t *v;

    bigger = grow(m->fields, m->nfields, sizeof(*bigger));
    if (bigger == NULL)
        return oom(ld->err);
    m->fields = bigger;
    f = &bigger[m->nfields++];

    v = mapping_value(ld, map, "identifier");
    if (v != NULL && load_text(ld, "identifier", v, &f->identifier) != 0)
        return -1;
    v = mapping_value(ld, map, "columnName");
    if (v != NULL && load_text(ld, "columnName", v, &f->column) != 0)
        return -1;
    return 0;
}

static int load_entity_mapping(struct loader *ld, const yaml_node_t *map)
{
    struct md_rule *r = ld->rule;
    struct md_entity_mapping *bigger;
    struct md_entity_mapping *m;
    const yaml_node_t *v;

    bigger = grow(r->mappings, r->nmappings, sizeof(*bigger));
    if (bigger == NULL)
        return oom(ld->err);
    r->mappings = bigger;
    m = &bigger[r->nmappings++];

    v = mapping_value(ld, map, "entityType");
    if (v != NULL && load_text(ld, "entityType", v, &m->entity_type) != 0)
        return -1;
    v = mapping_value(ld, map, "fieldMappings");
    if (v != NULL && load_mapping_list(ld, "fieldMappings", v,
                                       load_field_mapping) != 0)
        return -1;
    return 0;
}

static int field_id(struct loader *ld, const char *key, yaml_node_t *v)
{
    return load_text(ld, key, v, &ld->rule->id);
}

static int field_name(struct loader *ld, const char *key, yaml_node_t *v)
{
    return load_text(ld, key, v, &ld->rule->name);
}

static int field_description(struct loader *ld, const char *key,
                             yaml_node_t *v)
{
    return load_text(ld, key, v, &ld->rule->description);
}

static int field_severity(struct loader *ld, const char *key,
                          yaml_node_t *v)
{
    return load_text(ld, key, v, &ld->rule->severity);
}

static int field_tactics(struct loader *ld, const char *key, yaml_node_t *v)
{
    return load_list(ld, key, v, &ld->rule->tactics, &ld->rule->ntactics);
}

static int field_techniques(struct loader *ld, const char *key,
                            yaml_node_t *v)
{
    return load_list(ld, key, v, &ld->rule->techniques,
                     &ld->rule->ntechniques);
}

static int field_frequency(struct loader *ld, const char *key,
                           yaml_node_t *v)
{
    return load_duration(ld, key, v, &ld->rule->frequency);
}

static int field_period(struct loader *ld, const char *key, yaml_node_t *v)
{
    return load_duration(ld, key, v, &ld->rule->period);
}

static int field_connectors(struct loader *ld, const char *key,
                            yaml_node_t *v)
{
    return load_mapping_list(ld, key, v, load_connector);
}

static int field_mappings(struct loader *ld, const char *key,
                          yaml_node_t *v)
{
    return load_mapping_list(ld, key, v, load_entity_mapping);
}

static int field_query(struct loader *ld, const char *key, yaml_node_t *v)
{
    if (v->type != YAML_SCALAR_NODE)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: '%s' must be text "
                            "(usually a '|' block), not a list or mapping",
                            ld->src->path, node_line(ld, v), key);
    if (!is_null(v))
        ld->query = v;
    return 0;
}

/* The root keys mdhunt reads; every other key is accepted and ignored. */
static const struct rule_field {
    const char *key;
    int (*load)(struct loader *ld, const char *key, yaml_node_t *value);
} rule_fields[] = {
    { "id", field_id },
    { "name", field_name },
    { "description", field_description },
    { "severity", field_severity },
    { "tactics", field_tactics },
    { "relevantTechniques", field_techniques },
    { "queryFrequency", field_frequency },
    { "queryPeriod", field_period },
    { "requiredDataConnectors", field_connectors },
    { "entityMappings", field_mappings },
    { "query", field_query },
};

/*
 * Strip a Markdown code fence that wraps a double-quoted query, as in
 * mirrors of rule collections that were converted from Markdown:
 * "```kusto\n...\n```".  The text between the fence lines is kept as it
 * is, including its final line break.
 */
static void strip_code_fence(struct loader *ld, int line)
{
    struct md_rule *r = ld->rule;
    char *q = r->query;
    size_t open;
    size_t end = r->query_len;

    if (r->query_len < 7 || strncmp(q, "```", 3) != 0)
        return;
    for (open = 3; open < end && q[open] != '\n'; open++) {
        if (!isalnum((unsigned char)q[open]) && q[open] != '-'
            && q[open] != '_')
            return;
    }
    while (end > open && isspace((unsigned char)q[end - 1]))
        end--;
    if (end < open + 4 || strncmp(q + end - 3, "```", 3) != 0
        || q[end - 4] != '\n')
        return;

    r->query_len = end - 3 - (open + 1);
    memmove(q, q + open + 1, r->query_len);
    q[r->query_len] = '\0';
    md_warn("%s:%d: the query is wrapped in a Markdown code fence (```); "
            "the fence lines were removed", ld->src->path, line);
}

/* Copy the query node into the rule and find its first line. */
static int take_query(struct loader *ld)
{
    const yaml_node_t *q = ld->query;
    struct md_rule *r = ld->rule;
    size_t header = q->start_mark.line;

    r->query_len = q->data.scalar.length;
    r->query = md_strndup(scalar_text(q), r->query_len);
    if (r->query == NULL)
        return oom(ld->err);

    r->query_line = original_line(ld->src, header);
    if (q->data.scalar.style == YAML_LITERAL_SCALAR_STYLE
        || q->data.scalar.style == YAML_FOLDED_SCALAR_STYLE) {
        for (size_t i = header + 1; i < ld->src->nlines; i++) {
            if (!ld->src->lines[i].blank) {
                r->query_line = ld->src->lines[i].orig_line;
                break;
            }
        }
    }
    if (q->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE)
        strip_code_fence(ld, r->query_line);
    return finish_query(r, ld->src->path, r->query_line, ld->err);
}

static int load_root(struct loader *ld, yaml_node_t *root)
{
    struct md_rule *r = ld->rule;
    int root_line = node_line(ld, root);

    if (root->type != YAML_MAPPING_NODE)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: the YAML document "
                            "is a %s, not a mapping of rule fields (id, "
                            "name, query, ...); if the file holds plain KQL, "
                            "rename it to end in .kql", ld->src->path,
                            root_line, root->type == YAML_SCALAR_NODE
                            ? "text value" : "list");
    if (check_duplicate_keys(ld, root, "the rule") != 0)
        return -1;

    for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
         p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *key = node_at(ld, p->key);
        yaml_node_t *value = node_at(ld, p->value);

        if (key == NULL || value == NULL || key->type != YAML_SCALAR_NODE)
            continue;
        for (size_t i = 0; i < sizeof(rule_fields) / sizeof(rule_fields[0]);
             i++) {
            if (strcmp(scalar_text(key), rule_fields[i].key) != 0)
                continue;
            if (rule_fields[i].load(ld, rule_fields[i].key, value) != 0)
                return -1;
            break;
        }
    }

    if (r->id == NULL) {
        r->id = file_stem(ld->src->path);
        if (r->id == NULL)
            return oom(ld->err);
        r->id_from_file = 1;
        md_warn("%s:%d: no id; using the file name's stem '%s' as the id",
                ld->src->path, root_line, r->id);
    }
    if (is_blank_text(r->id, strlen(r->id)))
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: the id is empty; "
                            "set a unique id (a GUID) or remove the key to "
                            "use the file name", ld->src->path, root_line);
    if (ld->query == NULL)
        return md_error_set(ld->err, MD_E_RULE, "%s:%d: no query; add a "
                            "'query: |' block with the KQL to run",
                            ld->src->path, root_line);
    return take_query(ld);
}

/* Check that the file holds one document.  A lone "---" at the end of a
 * file starts an empty second document, which is allowed. */
static int check_single_document(const struct source *src,
                                 yaml_parser_t *parser,
                                 struct md_error *err)
{
    yaml_document_t doc;
    yaml_node_t *root;
    int rc = 0;

    if (!yaml_parser_load(parser, &doc))
        return yaml_syntax_error(src, parser, err);
    root = yaml_document_get_root_node(&doc);
    if (root != NULL && !(root->type == YAML_SCALAR_NODE
                          && root->data.scalar.length == 0
                          && root->data.scalar.style
                             == YAML_PLAIN_SCALAR_STYLE))
        rc = md_error_set(err, MD_E_RULE, "%s:%d: a second YAML document "
                          "starts here; put each rule in its own file",
                          src->path,
                          original_line(src, root->start_mark.line));
    yaml_document_delete(&doc);
    return rc;
}

/*
 * Reject YAML nested deeper than YAML_DEPTH_MAX, reading events only up
 * to that depth.  libyaml's scanner takes time quadratic in the depth of
 * nested flow collections (100,000 "[" take minutes), so the depth is
 * checked before the whole document is loaded.  A syntax error is left
 * for the loader to report.
 */
static int check_depth(const struct source *src, struct md_error *err)
{
    yaml_parser_t parser;
    yaml_event_t event;
    int depth = 0;
    int done = 0;
    int rc = 0;

    if (!yaml_parser_initialize(&parser))
        return oom(err);
    yaml_parser_set_input_string(&parser,
                                 (const unsigned char *)src->repaired,
                                 src->repaired_len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    while (!done && rc == 0 && yaml_parser_parse(&parser, &event)) {
        if (event.type == YAML_SEQUENCE_START_EVENT
            || event.type == YAML_MAPPING_START_EVENT)
            depth++;
        else if (event.type == YAML_SEQUENCE_END_EVENT
                 || event.type == YAML_MAPPING_END_EVENT)
            depth--;
        if (depth > YAML_DEPTH_MAX)
            rc = md_error_set(err, MD_E_RULE, "%s:%d: the YAML is nested "
                              "deeper than %d levels, which no rule needs",
                              src->path,
                              original_line(src, event.start_mark.line),
                              YAML_DEPTH_MAX);
        done = event.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&event);
    }
    yaml_parser_delete(&parser);
    return rc;
}

static int parse_yaml(const struct source *src, struct md_rule *rule,
                      struct md_error *err)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;
    struct loader ld;
    int rc = -1;

    if (check_depth(src, err) != 0)
        return -1;
    if (!yaml_parser_initialize(&parser))
        return oom(err);
    yaml_parser_set_input_string(&parser,
                                 (const unsigned char *)src->repaired,
                                 src->repaired_len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_syntax_error(src, &parser, err);
        yaml_parser_delete(&parser);
        return -1;
    }

    root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        md_error_set(err, MD_E_RULE, "%s:1: the file holds no YAML "
                     "document; a rule needs at least 'query:'", src->path);
        goto out;
    }
    ld = (struct loader){ src, &doc, rule, err, NULL };
    if (load_root(&ld, root) != 0)
        goto out;
    rc = check_single_document(src, &parser, err);
out:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

static int load_yaml(const char *path, const char *data, size_t len,
                     struct md_rule **out, struct md_error *err)
{
    struct source src = { .path = path };
    struct md_rule *rule = NULL;
    int rc = -1;

    src.text = normalize_breaks(data, len, &src.text_len);
    if (src.text == NULL || split_lines(&src) != 0) {
        oom(err);
        goto out;
    }
    repair_known_defects(&src);
    if (build_repaired(&src) != 0) {
        oom(err);
        goto out;
    }

    rule = new_rule(path);
    if (rule == NULL) {
        oom(err);
        goto out;
    }
    if (parse_yaml(&src, rule, err) != 0)
        goto out;
    *out = rule;
    rule = NULL;
    rc = 0;
out:
    md_rule_free(rule);
    source_free(&src);
    return rc;
}

int md_rule_load_buffer(const char *name, const char *data, size_t len,
                        struct md_rule **out, struct md_error *err)
{
    *out = NULL;
    if (len > RULE_FILE_MAX)
        return md_error_set(err, MD_E_RULE, "%s: larger than %u bytes; "
                            "this is not a rule file", name, RULE_FILE_MAX);
    if (check_utf8(name, data, len, err) != 0)
        return -1;

    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) {
        data += 3;
        len -= 3;
    }
    if (format_of(base_name(name)) == FORMAT_KQL)
        return load_kql(name, data, len, out, err);
    return load_yaml(name, data, len, out, err);
}

int md_rule_load(const char *path, struct md_rule **out,
                 struct md_error *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    if (read_file(path, &data, &len, err) != 0)
        return -1;
    rc = md_rule_load_buffer(path, data, len, out, err);
    free(data);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Printing                                                            */
/* ------------------------------------------------------------------ */

/* Write "label value", or "label -" when the value is absent. */
static void print_field(FILE *f, const char *label, const char *value)
{
    fprintf(f, "%-12s %s\n", label,
            value != NULL && value[0] != '\0' ? value : "-");
}

static void print_list(FILE *f, const char *label, char **items, size_t n)
{
    if (n == 0) {
        print_field(f, label, NULL);
        return;
    }
    fprintf(f, "%-12s ", label);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%s", i > 0 ? ", " : "", items[i]);
    fputc('\n', f);
}

static void print_duration(FILE *f, const char *label, int64_t seconds)
{
    char text[32];

    print_field(f, label, seconds == 0 ? NULL
                : md_duration_format(seconds, text, sizeof(text)));
}

int md_rule_print(FILE *f, const struct md_rule *rule)
{
    print_field(f, "file:", rule->file);
    fprintf(f, "%-12s %s%s\n", "id:", rule->id,
            rule->id_from_file ? " (from the file name)" : "");
    print_field(f, "name:", rule->name);
    print_field(f, "severity:", rule->severity);
    print_list(f, "tactics:", rule->tactics, rule->ntactics);
    print_list(f, "techniques:", rule->techniques, rule->ntechniques);
    print_duration(f, "frequency:", rule->frequency);
    print_duration(f, "period:", rule->period);
    for (size_t i = 0; i < rule->nconnectors; i++) {
        const struct md_connector *c = &rule->connectors[i];

        fprintf(f, "%-12s %s:", "connector:",
                c->connector_id != NULL ? c->connector_id : "-");
        for (size_t j = 0; j < c->ndata_types; j++)
            fprintf(f, " %s", c->data_types[j]);
        fputc('\n', f);
    }
    for (size_t i = 0; i < rule->nmappings; i++) {
        const struct md_entity_mapping *m = &rule->mappings[i];

        fprintf(f, "%-12s %s:", "entity:",
                m->entity_type != NULL ? m->entity_type : "-");
        for (size_t j = 0; j < m->nfields; j++) {
            const struct md_field_mapping *fm = &m->fields[j];

            fprintf(f, " %s=%s", fm->identifier != NULL ? fm->identifier
                    : "-", fm->column != NULL ? fm->column : "-");
        }
        fputc('\n', f);
    }
    fprintf(f, "%-12s %d\n", "query line:", rule->query_line);
    fprintf(f, "%-12s %zu bytes\n", "query size:", rule->query_len);
    print_field(f, "sha256:", rule->query_sha256);
    if (rule->description != NULL && rule->description[0] != '\0') {
        size_t len = strlen(rule->description);

        fprintf(f, "description:\n%s", rule->description);
        if (rule->description[len - 1] != '\n')
            fputc('\n', f);
    }
    fprintf(f, "query:\n");
    fwrite(rule->query, 1, rule->query_len, f);
    if (rule->query_len > 0 && rule->query[rule->query_len - 1] != '\n')
        fputc('\n', f);
    return ferror(f) ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Rule sets                                                           */
/* ------------------------------------------------------------------ */

static int has_prefix_ci(const char *s, const char *prefix)
{
    for (; *prefix != '\0'; s++, prefix++) {
        if (tolower((unsigned char)*s) != tolower((unsigned char)*prefix))
            return 0;
    }
    return 1;
}

/*
 * Decide whether a directory entry is a rule file.  It must be named
 * .yaml, .yml, .kql or have no extension, and must not be hidden or an
 * editor backup ("~" at the end).  Files that usually sit beside rules
 * (README*, LICENSE*, LICENCE*, COPYING*, NOTICE*, CHANGELOG*, AUTHORS*,
 * CONTRIBUTING*, Makefile) are not rules.
 */
static int is_rule_file_name(const char *name)
{
    static const char *const not_rules[] = {
        "README", "LICENSE", "LICENCE", "COPYING", "NOTICE", "CHANGELOG",
        "AUTHORS", "CONTRIBUTING",
    };
    size_t len = strlen(name);

    if (name[0] == '.' || len == 0 || name[len - 1] == '~')
        return 0;
    if (format_of(name) == FORMAT_OTHER || md_strcasecmp(name, "Makefile")
                                           == 0)
        return 0;
    for (size_t i = 0; i < sizeof(not_rules) / sizeof(not_rules[0]); i++) {
        if (has_prefix_ci(name, not_rules[i]))
            return 0;
    }
    return 1;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* List the rule files of a directory as "dir/name", sorted by name.  The
 * caller frees the list with free_strings(). */
static int list_rule_files(const char *dir, char ***paths, size_t *n,
                           struct md_error *err)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int rc = -1;

    *paths = NULL;
    *n = 0;
    if (d == NULL)
        return md_error_set(err, MD_E_RULE, "%s: cannot open directory: %s",
                            dir, strerror(errno));
    while ((e = readdir(d)) != NULL) {
        struct md_buf path = MD_BUF_INIT;
        struct stat st;

        if (!is_rule_file_name(e->d_name))
            continue;
        if (md_buf_printf(&path, "%s%s%s", dir,
                          dir[0] != '\0' && dir[strlen(dir) - 1] == '/'
                          ? "" : "/", e->d_name) != 0) {
            md_buf_free(&path);
            oom(err);
            goto out;
        }
        if (stat(path.data, &st) != 0 || !S_ISREG(st.st_mode)) {
            md_debug("%s: skipped, not a regular file", path.data);
            md_buf_free(&path);
            continue;
        }
        if (push_string(paths, n, path.data, path.len) != 0) {
            md_buf_free(&path);
            oom(err);
            goto out;
        }
        md_buf_free(&path);
    }
    /* qsort() must not get NULL, which an empty directory leaves. */
    if (*n > 1)
        qsort(*paths, *n, sizeof(char *), compare_names);
    rc = 0;
out:
    closedir(d);
    if (rc != 0) {
        free_strings(*paths, *n);
        *paths = NULL;
        *n = 0;
    }
    return rc;
}

/* Add a loaded rule to the set unless its id is taken; takes ownership
 * of rule in both cases. */
static int add_rule(struct md_ruleset *set, struct md_rule *rule,
                    struct md_error *err)
{
    const struct md_rule *other = md_ruleset_find(set, rule->id);
    struct md_rule **bigger;

    if (other != NULL) {
        md_error_set(err, MD_E_RULE, "%s: the id '%s' is also used by %s; "
                     "give each rule a unique id", rule->file, rule->id,
                     other->file);
        md_rule_free(rule);
        return -1;
    }
    bigger = grow(set->rules, set->nrules, sizeof(*bigger));
    if (bigger == NULL) {
        md_rule_free(rule);
        return oom(err);
    }
    set->rules = bigger;
    set->rules[set->nrules++] = rule;
    return 0;
}

static int load_into(struct md_ruleset *set, const char *path,
                     struct md_error *err)
{
    struct md_rule *rule;

    if (md_rule_load(path, &rule, err) != 0)
        return -1;
    return add_rule(set, rule, err);
}

/* Record a failure: the first error goes to err, the others are only
 * logged.  Returns 1 when loading should go on. */
static int note_failure(struct md_error *first, int *failed,
                        const struct md_error *now, int keep_going)
{
    if (keep_going)
        md_error_log("%s", now->message);
    if (!*failed && first != NULL)
        *first = *now;
    *failed = 1;
    return keep_going && now->kind != MD_E_INTERNAL;
}

int md_ruleset_load(const char *const *paths, size_t npaths, int keep_going,
                    struct md_ruleset *set, struct md_error *err)
{
    struct md_error now;
    int failed = 0;

    set->rules = NULL;
    set->nrules = 0;
    for (size_t i = 0; i < npaths; i++) {
        struct stat st;
        char **files = NULL;
        size_t nfiles = 0;
        int go_on = 1;

        md_error_clear(&now);
        if (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            if (list_rule_files(paths[i], &files, &nfiles, &now) != 0) {
                if (!note_failure(err, &failed, &now, keep_going))
                    break;
                continue;
            }
            if (nfiles == 0)
                md_warn("%s: no rule files (.yaml, .yml, .kql or no "
                        "extension) in this directory", paths[i]);
            for (size_t k = 0; k < nfiles && go_on; k++) {
                md_error_clear(&now);
                if (load_into(set, files[k], &now) != 0)
                    go_on = note_failure(err, &failed, &now, keep_going);
            }
            free_strings(files, nfiles);
        } else if (load_into(set, paths[i], &now) != 0) {
            go_on = note_failure(err, &failed, &now, keep_going);
        }
        if (!go_on)
            break;
    }

    if (failed && !keep_going)
        md_ruleset_free(set);
    return failed ? -1 : 0;
}

struct md_rule *md_ruleset_find(const struct md_ruleset *set,
                                const char *id)
{
    for (size_t i = 0; i < set->nrules; i++) {
        if (md_strcasecmp(set->rules[i]->id, id) == 0)
            return set->rules[i];
    }
    return NULL;
}

void md_ruleset_free(struct md_ruleset *set)
{
    if (set == NULL)
        return;
    for (size_t i = 0; i < set->nrules; i++)
        md_rule_free(set->rules[i]);
    free(set->rules);
    set->rules = NULL;
    set->nrules = 0;
}
