/*
 * floor_parse: the parsing floor of the benchmark.
 *
 * Usage: floor_parse REPLY_FILE
 *
 * Reads a hunting reply body into memory and parses it with jansson, with
 * the flags mdhunt's backend uses, then prints the number of result rows.
 * It does nothing else, so its time and peak RSS are the least any client
 * that builds jansson's tree of the whole reply can spend.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

/* Read the whole file into a new buffer; returns NULL on failure. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    long size;

    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto out;
    data = malloc((size_t)size + 1);
    if (data == NULL)
        goto out;
    if (fread(data, 1, (size_t)size, f) != (size_t)size) {
        free(data);
        data = NULL;
        goto out;
    }
    *len = (size_t)size;

out:
    fclose(f);
    return data;
}

int main(int argc, char **argv)
{
    json_error_t jerr;
    json_t *root;
    json_t *results;
    size_t len = 0;
    char *body;

    if (argc != 2) {
        fprintf(stderr, "usage: floor_parse REPLY_FILE\n");
        return 2;
    }
    body = read_file(argv[1], &len);
    if (body == NULL) {
        fprintf(stderr, "floor_parse: cannot read %s\n", argv[1]);
        return 1;
    }
    root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    free(body);
    if (root == NULL) {
        fprintf(stderr, "floor_parse: %s: line %d: %s\n", argv[1],
                jerr.line, jerr.text);
        return 1;
    }
    results = json_object_get(root, "results");
    if (results == NULL)
        results = json_object_get(root, "Results");
    printf("%zu\n", json_array_size(results));
    json_decref(root);
    return 0;
}
