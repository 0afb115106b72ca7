/*
 * A growable byte buffer, for the drivers that copy statements and rows (SQLite, MySQL).
 * A warm connection reuses its buffers, so it allocates nothing; buf_trim lets a large one go
 * once its result is delivered.
 */
#ifndef h2o_db_driver_buf_h
#define h2o_db_driver_buf_h

#include <stdlib.h>
#include <string.h>

struct buf {
    char *base;
    size_t len, cap;
};

/* Makes room for `extra` more bytes; returns 0, or -1 when out of memory. */
static inline int buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap == 0 ? 256 : b->cap;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->base, cap);
    if (p == NULL)
        return -1;
    b->base = p;
    b->cap = cap;
    return 0;
}

static inline int buf_add(struct buf *b, const void *data, size_t len)
{
    if (buf_reserve(b, len) != 0)
        return -1;
    if (len != 0)
        memcpy(b->base + b->len, data, len);
    b->len += len;
    return 0;
}

/* Empties b; results can be large: a large buffer is not kept once it is delivered. */
static inline void buf_trim(struct buf *b)
{
    b->len = 0;
    if (b->cap > 1024 * 1024) {
        free(b->base);
        b->base = NULL;
        b->cap = 0;
    }
}

static inline void buf_free(struct buf *b)
{
    free(b->base);
    memset(b, 0, sizeof(*b));
}

#endif
