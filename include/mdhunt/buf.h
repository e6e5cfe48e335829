/*
 * Growable byte buffers and secret buffers.
 *
 * A struct md_buf is always NUL-terminated after md_buf_* calls that
 * succeed, so data can be used as a C string when it holds no NUL byte.
 * A buffer may carry a maximum size; appends beyond it fail.
 */
#ifndef MDHUNT_BUF_H
#define MDHUNT_BUF_H

#include <stddef.h>

struct md_buf {
    char *data;     /* NULL until the first append */
    size_t len;
    size_t cap;
    size_t max;     /* 0 means no maximum */
};

#define MD_BUF_INIT { NULL, 0, 0, 0 }

/* Initialise with a maximum size in bytes (0: none). */
void md_buf_init(struct md_buf *b, size_t max);

/* Append bytes.  Returns 0, or -1 when memory ran out or max would be
 * exceeded (b is unchanged then). */
int md_buf_append(struct md_buf *b, const void *data, size_t len);
int md_buf_puts(struct md_buf *b, const char *s);
int md_buf_putc(struct md_buf *b, char c);
int md_buf_printf(struct md_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Make room for extra more bytes and the NUL, so that the caller may
 * write that many at data + len, then raise len and write the NUL.
 * Returns 0, or -1 when memory ran out or max would be exceeded. */
int md_buf_reserve(struct md_buf *b, size_t extra);

/* Forget the content but keep the memory. */
void md_buf_reset(struct md_buf *b);

/* Hand the data to the caller, who frees it with free(); b is emptied.
 * Returns an empty allocated string for an empty buffer, NULL when out of
 * memory. */
char *md_buf_detach(struct md_buf *b);

void md_buf_free(struct md_buf *b);

/*
 * A secret (client secret, access token, password).  The memory is wiped
 * before it is freed.  Never format it into a log line or an error message.
 */
struct md_secret {
    char *value;    /* NUL-terminated, or NULL when unset */
    size_t len;
};

/* Copy len bytes of value into s, wiping what s held before. */
int md_secret_set(struct md_secret *s, const char *value, size_t len);

/* Wipe and free; s becomes unset. */
void md_secret_clear(struct md_secret *s);

/* Wipe len bytes of any memory (not optimised away). */
void md_wipe(void *p, size_t len);

/* Strings: strdup that treats NULL as NULL; returns NULL when out of
 * memory.  The caller frees with free(). */
char *md_strdup(const char *s);
char *md_strndup(const char *s, size_t len);

/* Case-insensitive ASCII comparison, as strcasecmp but locale-independent. */
int md_strcasecmp(const char *a, const char *b);

#endif
