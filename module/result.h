/*
 * h2o_db_result_t: what a callback receives. Drivers fill one on their side
 * (a PGresult, a block of SQLite rows) and point `cls` at their accessors; the
 * public h2o_db_result_* functions dispatch through it.
 */
#ifndef h2o_db_result_h
#define h2o_db_result_h

#include "h2o_db.h"

/* The type of one value, for typed JSON and mruby. */
typedef enum {
    H2O_DB_TYPE_NULL,
    H2O_DB_TYPE_BOOL,    /* text form "t" / "f" */
    H2O_DB_TYPE_INT,     /* decimal integer */
    H2O_DB_TYPE_FLOAT,   /* may be "NaN", "Infinity", "-Infinity" */
    H2O_DB_TYPE_NUMERIC, /* exact decimal; may be "NaN" */
    H2O_DB_TYPE_TEXT,
    H2O_DB_TYPE_JSON, /* json / jsonb: emitted as is */
    H2O_DB_TYPE_BYTES /* text form \x0123... (PostgreSQL's bytea hex output) */
} h2o_db_type_t;

typedef struct st_h2o_db_result_class_t {
    const char *(*column_name)(const h2o_db_result_t *r, size_t col);
    const char *(*value)(const h2o_db_result_t *r, size_t row, size_t col, size_t *len);
    h2o_db_type_t (*type)(const h2o_db_result_t *r, size_t row, size_t col);
} h2o_db_result_class_t;

struct st_h2o_db_result_t {
    h2o_db_status_t status;
    const char *error;    /* the primary message: never parameters or connection details */
    const char *sqlstate; /* five characters */
    size_t rows, columns;
    uint64_t affected;
    const h2o_db_result_class_t *cls; /* NULL when there are no rows */
    const void *impl;                 /* the driver's data behind cls */
};

/* An error result (no rows). */
void h2o_db_result_init_error(h2o_db_result_t *r, h2o_db_status_t status, const char *sqlstate, const char *message);
/* A success without rows. */
void h2o_db_result_init_ok(h2o_db_result_t *r, uint64_t affected);

/* One row of another result, seen as a result of one row (a buffered result's rows handed over one
 * at a time): dst reads row `row` of src through view; both must live no longer than src. */
typedef struct st_h2o_db_row_view_t {
    const h2o_db_result_t *src;
    size_t row;
} h2o_db_row_view_t;
void h2o_db_result_row_view(h2o_db_result_t *dst, h2o_db_row_view_t *view, const h2o_db_result_t *src, size_t row);

/* The type of a value (H2O_DB_TYPE_NULL for SQL NULL). */
h2o_db_type_t h2o_db_result_type(const h2o_db_result_t *r, size_t row, size_t col);

/* Writes src[0..n) as a JSON string, quotes included, into dst (when dst != NULL); returns its
 * length. ", \ and control characters are escaped (\n, \r, \t, \b, \f, else \u00XX); invalid UTF-8
 * becomes U+FFFD, so that the document stays valid; with escape_separators, U+2028 and U+2029
 * become \u2028 and \u2029 (JSON that may be read as JavaScript). */
size_t h2o_db_json_string(char *dst, const char *src, size_t n, int escape_separators);

/* Writes the typed JSON of value (row, col) of r (a row of rows with cls set) into dst (when dst !=
 * NULL), as h2o_db_result_json writes it: null, true/false, numbers as written (NaN and the infinities
 * as strings), json/jsonb as is, everything else a string; returns its length. */
size_t h2o_db_json_value(char *dst, const h2o_db_result_t *r, size_t row, size_t col);

/* SQLSTATE → status: class 08 and 57P01..57P03 are UNAVAILABLE, 57014 TIMEOUT, 53300 BUSY. */
h2o_db_status_t h2o_db_status_for_sqlstate(const char *sqlstate);

#endif
