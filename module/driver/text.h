/*
 * PostgreSQL's text forms of values, for the drivers whose database writes other ones (SQLite,
 * MySQL): a handler reads the same text for the same value whatever the backend.
 */
#ifndef h2o_db_driver_text_h
#define h2o_db_driver_text_h

#include <stddef.h>

/* float8's output: the shortest text that reads back as the same double; "NaN", "Infinity",
 * "-Infinity". Returns what snprintf returns. */
int h2o_db_text_double(char *buf, size_t size, double v);
/* ... and float4's */
int h2o_db_text_float(char *buf, size_t size, float v);

/* The length of bytea's hex output for n bytes: "\x" and two digits a byte. */
static inline size_t h2o_db_text_bytea_len(size_t n)
{
    return 2 + n * 2;
}

/* Writes bytea's hex output of src[0..n) and a NUL: h2o_db_text_bytea_len(n) + 1 bytes. */
void h2o_db_text_bytea(char *dst, const unsigned char *src, size_t n);

#endif
