/*
 * MySQL results as PostgreSQL would give them: every value as its text form (integers,
 * PostgreSQL's float output, dates and times, bytea's \x hex for binary strings, "t"/"f" for
 * BOOL and BIT(1)) with its type (h2o_db_type_t), read from a stored result of either protocol
 * into one h2o_db_mysql_rows_t per connection, which the result class below reads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "driver/mysql.h"
#include "driver/text.h"

#define MAX_RESULT_BYTES (1024u * 1024 * 1024)

struct cell {
    uint32_t off, len;
    uint8_t type; /* h2o_db_type_t */
};

/* The output binding of one column of the binary protocol. */
struct colmeta {
    unsigned long length;
    my_bool is_null, error;
};

/* ---- text forms ---- */

/* PostgreSQL's text form of a date or time */
static int format_time(char *buf, size_t size, enum enum_field_types type, const MYSQL_TIME *t)
{
    int n;
    switch (type) {
    case MYSQL_TYPE_DATE:
        return snprintf(buf, size, "%04u-%02u-%02u", t->year, t->month, t->day);
    case MYSQL_TYPE_TIME:
        n = snprintf(buf, size, "%s%02u:%02u:%02u", t->neg ? "-" : "", t->day * 24 + t->hour, t->minute, t->second);
        break;
    default:
        n = snprintf(buf, size, "%04u-%02u-%02u %02u:%02u:%02u", t->year, t->month, t->day, t->hour, t->minute, t->second);
        break;
    }
    if (t->second_part != 0 && n > 0 && (size_t)n + 8 < size) {
        n += snprintf(buf + n, size - n, ".%06lu", (unsigned long)t->second_part);
        while (buf[n - 1] == '0')
            buf[--n] = '\0';
    }
    return n;
}

static int is_bool_field(const MYSQL_FIELD *f)
{
    return (f->type == MYSQL_TYPE_TINY && f->length == 1) || (f->type == MYSQL_TYPE_BIT && f->length == 1);
}

static int is_json_field(const MYSQL_FIELD *f)
{
    if (f->type == MYSQL_TYPE_JSON)
        return 1;
    /* MariaDB's JSON is LONGTEXT; its extended metadata names the format */
    MARIADB_CONST_STRING attr;
    return mariadb_field_attr(&attr, f, MARIADB_FIELD_ATTR_FORMAT_NAME) == 0 && attr.length == 4 &&
           strncasecmp(attr.str, "json", 4) == 0;
}

static int is_string_type(enum enum_field_types t)
{
    switch (t) {
    case MYSQL_TYPE_VARCHAR:
    case MYSQL_TYPE_VAR_STRING:
    case MYSQL_TYPE_STRING:
    case MYSQL_TYPE_TINY_BLOB:
    case MYSQL_TYPE_MEDIUM_BLOB:
    case MYSQL_TYPE_LONG_BLOB:
    case MYSQL_TYPE_BLOB:
    case MYSQL_TYPE_GEOMETRY:
        return 1;
    default:
        return 0;
    }
}

static int add_text(h2o_db_mysql_rows_t *rs, h2o_db_type_t type, const char *data, size_t len)
{
    struct cell cell = {(uint32_t)rs->text.len, (uint32_t)len, (uint8_t)type};
    if (type != H2O_DB_TYPE_NULL && (rs->text.len + len + 1 > MAX_RESULT_BYTES)) {
        rs->too_large = 1;
        return -1;
    }
    if (type != H2O_DB_TYPE_NULL && (buf_add(&rs->text, data, len) != 0 || buf_add(&rs->text, "", 1) != 0))
        return -1;
    return buf_add(&rs->cells, &cell, sizeof(cell));
}

static int add_hex(h2o_db_mysql_rows_t *rs, const unsigned char *b, size_t n)
{
    struct cell cell = {(uint32_t)rs->text.len, (uint32_t)h2o_db_text_bytea_len(n), H2O_DB_TYPE_BYTES};
    if (rs->text.len + cell.len + 1 > MAX_RESULT_BYTES) {
        rs->too_large = 1;
        return -1;
    }
    if (buf_reserve(&rs->text, cell.len + 1) != 0)
        return -1;
    h2o_db_text_bytea(rs->text.base + rs->text.len, b, n);
    rs->text.len += cell.len + 1;
    return buf_add(&rs->cells, &cell, sizeof(cell));
}

/* A value that arrived as bytes (the text protocol, or a string-bound column of the binary one). */
static int add_bytes_value(h2o_db_mysql_rows_t *rs, const MYSQL_FIELD *f, const char *data, size_t len)
{
    char num[64];
    int n;
    if (data == NULL)
        return add_text(rs, H2O_DB_TYPE_NULL, NULL, 0);
    switch (f->type) {
    case MYSQL_TYPE_TINY:
    case MYSQL_TYPE_SHORT:
    case MYSQL_TYPE_LONG:
    case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONGLONG:
    case MYSQL_TYPE_YEAR:
        if (is_bool_field(f) && len == 1 && (data[0] == '0' || data[0] == '1'))
            return add_text(rs, H2O_DB_TYPE_BOOL, data[0] == '1' ? "t" : "f", 1);
        return add_text(rs, H2O_DB_TYPE_INT, data, len);
    case MYSQL_TYPE_FLOAT:
    case MYSQL_TYPE_DOUBLE: {
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(len < sizeof(tmp) ? len : sizeof(tmp) - 1), data);
        n = f->type == MYSQL_TYPE_FLOAT ? h2o_db_text_float(num, sizeof(num), strtof(tmp, NULL))
                                        : h2o_db_text_double(num, sizeof(num), strtod(tmp, NULL));
        return add_text(rs, H2O_DB_TYPE_FLOAT, num, (size_t)n);
    }
    case MYSQL_TYPE_DECIMAL:
    case MYSQL_TYPE_NEWDECIMAL:
        return add_text(rs, H2O_DB_TYPE_NUMERIC, data, len);
    case MYSQL_TYPE_NULL:
        return add_text(rs, H2O_DB_TYPE_NULL, NULL, 0);
    case MYSQL_TYPE_BIT: {
        uint64_t v = 0;
        for (size_t i = 0; i < len && i < 8; ++i)
            v = (v << 8) | (unsigned char)data[i];
        if (is_bool_field(f))
            return add_text(rs, H2O_DB_TYPE_BOOL, v ? "t" : "f", 1);
        n = snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
        return add_text(rs, H2O_DB_TYPE_INT, num, (size_t)n);
    }
    case MYSQL_TYPE_JSON:
        return add_text(rs, H2O_DB_TYPE_JSON, data, len);
    default:
        if (is_string_type(f->type)) {
            if (f->charsetnr == 63) /* binary */
                return add_hex(rs, (const unsigned char *)data, len);
            if (is_json_field(f))
                return add_text(rs, H2O_DB_TYPE_JSON, data, len);
        }
        /* ENUM, SET, dates and times in the text protocol, ... */
        return add_text(rs, H2O_DB_TYPE_TEXT, data, len);
    }
}

static int add_names(h2o_db_mysql_rows_t *rs, const MYSQL_FIELD *fields, size_t n)
{
    rs->columns = n;
    for (size_t i = 0; i < n; ++i) {
        uint32_t off = (uint32_t)rs->names.len;
        const char *name = fields[i].name != NULL ? fields[i].name : "?column?";
        if (buf_add(&rs->name_offs, &off, sizeof(off)) != 0 || buf_add(&rs->names, name, strlen(name) + 1) != 0)
            return -1;
    }
    return 0;
}

void h2o_db_mysql_rows_reset(h2o_db_mysql_rows_t *rs)
{
    rs->rows = rs->columns = 0;
    rs->too_large = 0;
    buf_trim(&rs->names);
    buf_trim(&rs->name_offs);
    buf_trim(&rs->cells);
    buf_trim(&rs->text);
}

void h2o_db_mysql_rows_free(h2o_db_mysql_rows_t *rs)
{
    buf_free(&rs->names);
    buf_free(&rs->name_offs);
    buf_free(&rs->cells);
    buf_free(&rs->text);
    free(rs->binds);
    buf_free(&rs->data);
    buf_free(&rs->meta);
}

/* ---- the result class ---- */

static const char *my_column_name(const h2o_db_result_t *r, size_t col)
{
    const h2o_db_mysql_rows_t *rs = r->impl;
    return rs->names.base + ((const uint32_t *)rs->name_offs.base)[col];
}

static const char *my_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    const h2o_db_mysql_rows_t *rs = r->impl;
    const struct cell *cell = (const struct cell *)rs->cells.base + row * rs->columns + col;
    if (cell->type == H2O_DB_TYPE_NULL)
        return NULL;
    *len = cell->len;
    return rs->text.base + cell->off;
}

static h2o_db_type_t my_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    const h2o_db_mysql_rows_t *rs = r->impl;
    return (h2o_db_type_t)((const struct cell *)rs->cells.base + row * rs->columns + col)->type;
}

static const h2o_db_result_class_t my_result_class = {my_column_name, my_value, my_type};

/* ---- the binary protocol ---- */

/* Room for a string value of a streamed result (whose longest value is not known): a longer one
 * is fetched whole on its own (add_binary_value). */
#define STREAM_STRING_ROOM 1024

/* How a column is fetched: integers as LONGLONG, FLOAT and DOUBLE as themselves, dates and times
 * as MYSQL_TIME, everything else as a string; *size is the room its value needs (the longest of a
 * stored result; for a streamed one, up to STREAM_STRING_ROOM). */
static enum enum_field_types fetch_type(const MYSQL_FIELD *f, size_t *size, int streamed)
{
    switch (f->type) {
    case MYSQL_TYPE_TINY:
    case MYSQL_TYPE_SHORT:
    case MYSQL_TYPE_LONG:
    case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONGLONG:
    case MYSQL_TYPE_YEAR:
        *size = 8;
        return MYSQL_TYPE_LONGLONG;
    case MYSQL_TYPE_FLOAT:
    case MYSQL_TYPE_DOUBLE:
        *size = 8;
        return f->type;
    case MYSQL_TYPE_DATE:
    case MYSQL_TYPE_TIME:
    case MYSQL_TYPE_DATETIME:
    case MYSQL_TYPE_TIMESTAMP:
        *size = sizeof(MYSQL_TIME);
        return f->type;
    default:
        *size = (streamed ? (f->length < STREAM_STRING_ROOM ? f->length : STREAM_STRING_ROOM) : f->max_length) + 1;
        return MYSQL_TYPE_STRING;
    }
}

static int bind_results(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt, size_t ncols, const MYSQL_FIELD *fields, int streamed)
{
    if (ncols > rs->binds_cap) {
        MYSQL_BIND *b = realloc(rs->binds, sizeof(*b) * ncols);
        if (b == NULL)
            return -1;
        rs->binds = b;
        rs->binds_cap = ncols;
    }
    /* room: per column its metadata and its buffer (8-byte aligned) */
    size_t need = 0, size;
    for (size_t i = 0; i < ncols; ++i) {
        fetch_type(fields + i, &size, streamed);
        need += (size + 7) / 8 * 8;
    }
    rs->meta.len = 0;
    rs->data.len = 0;
    if (buf_reserve(&rs->meta, sizeof(struct colmeta) * ncols) != 0 || buf_reserve(&rs->data, need + 8) != 0)
        return -1;
    struct colmeta *meta = (struct colmeta *)rs->meta.base;
    char *data = rs->data.base;
    memset(rs->binds, 0, sizeof(MYSQL_BIND) * ncols);
    for (size_t i = 0; i < ncols; ++i) {
        MYSQL_BIND *b = rs->binds + i;
        b->buffer_type = fetch_type(fields + i, &size, streamed);
        b->is_unsigned = b->buffer_type == MYSQL_TYPE_LONGLONG && (fields[i].flags & UNSIGNED_FLAG) != 0;
        b->buffer = data;
        b->buffer_length = (unsigned long)size;
        b->length = &meta[i].length;
        b->is_null = &meta[i].is_null;
        b->error = &meta[i].error;
        data += (size + 7) / 8 * 8;
    }
    return mysql_stmt_bind_result(stmt, rs->binds) ? -1 : 0;
}

/* One value of the binary protocol, as text. */
static int add_binary_value(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt, const MYSQL_FIELD *f, size_t col)
{
    MYSQL_BIND *b = rs->binds + col;
    struct colmeta *meta = (struct colmeta *)rs->meta.base + col;
    char num[64];
    int n;
    if (meta->is_null)
        return add_text(rs, H2O_DB_TYPE_NULL, NULL, 0);
    switch (b->buffer_type) {
    case MYSQL_TYPE_LONGLONG: {
        long long v;
        memcpy(&v, b->buffer, sizeof(v));
        if (is_bool_field(f) && (v == 0 || v == 1))
            return add_text(rs, H2O_DB_TYPE_BOOL, v ? "t" : "f", 1);
        n = b->is_unsigned ? snprintf(num, sizeof(num), "%llu", (unsigned long long)v) : snprintf(num, sizeof(num), "%lld", v);
        return add_text(rs, H2O_DB_TYPE_INT, num, (size_t)n);
    }
    case MYSQL_TYPE_FLOAT: {
        float v;
        memcpy(&v, b->buffer, sizeof(v));
        n = h2o_db_text_float(num, sizeof(num), v);
        return add_text(rs, H2O_DB_TYPE_FLOAT, num, (size_t)n);
    }
    case MYSQL_TYPE_DOUBLE: {
        double v;
        memcpy(&v, b->buffer, sizeof(v));
        n = h2o_db_text_double(num, sizeof(num), v);
        return add_text(rs, H2O_DB_TYPE_FLOAT, num, (size_t)n);
    }
    case MYSQL_TYPE_DATE:
    case MYSQL_TYPE_TIME:
    case MYSQL_TYPE_DATETIME:
    case MYSQL_TYPE_TIMESTAMP: {
        MYSQL_TIME t;
        memcpy(&t, b->buffer, sizeof(t));
        n = format_time(num, sizeof(num), b->buffer_type, &t);
        return add_text(rs, H2O_DB_TYPE_TEXT, num, (size_t)n);
    }
    default:
        break;
    }
    if (meta->length > b->buffer_length) {
        /* longer than the column's max_length said: fetch it whole */
        struct buf big = {0};
        if (buf_reserve(&big, meta->length + 1) != 0)
            return -1;
        MYSQL_BIND one;
        unsigned long len = 0;
        memset(&one, 0, sizeof(one));
        one.buffer_type = MYSQL_TYPE_STRING;
        one.buffer = big.base;
        one.buffer_length = meta->length + 1;
        one.length = &len;
        int ret = mysql_stmt_fetch_column(stmt, &one, (unsigned)col, 0) != 0 ? -1 : add_bytes_value(rs, f, big.base, len);
        buf_free(&big);
        return ret;
    }
    return add_bytes_value(rs, f, b->buffer, meta->length);
}

/* The rows are read: r points at them. */
static int rows_done(h2o_db_mysql_rows_t *rs, size_t ncols, h2o_db_result_t *r)
{
    h2o_db_result_init_ok(r, rs->rows);
    r->rows = rs->rows;
    r->columns = ncols;
    r->cls = &my_result_class;
    r->impl = rs;
    return 0;
}

static int rows_failed(h2o_db_mysql_rows_t *rs, h2o_db_result_t *r)
{
    if (rs->too_large)
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "54000", "the result is larger than 1 GB");
    else
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "53200", "out of memory");
    return -1;
}

int h2o_db_mysql_read_stmt_rows(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt, h2o_db_result_t *r)
{
    size_t ncols = mysql_stmt_field_count(stmt);
    const MYSQL_FIELD *fields = stmt->fields;
    h2o_db_mysql_rows_reset(rs);
    if (add_names(rs, fields, ncols) != 0 || bind_results(rs, stmt, ncols, fields, 0) != 0)
        return rows_failed(rs, r);
    for (;;) {
        int ret = mysql_stmt_fetch(stmt); /* from the stored result: no I/O */
        if (ret == MYSQL_NO_DATA)
            break;
        if (ret == 1) {
            h2o_db_mysql_result_error(r, mysql_stmt_errno(stmt), mysql_stmt_sqlstate(stmt), mysql_stmt_error(stmt));
            return -1;
        }
        for (size_t i = 0; i < ncols; ++i)
            if (add_binary_value(rs, stmt, fields + i, i) != 0)
                return rows_failed(rs, r);
        ++rs->rows;
    }
    return rows_done(rs, ncols, r);
}

/* ---- a streamed result of the binary protocol ---- */

int h2o_db_mysql_stream_begin(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt)
{
    size_t ncols = mysql_stmt_field_count(stmt);
    h2o_db_mysql_rows_reset(rs);
    return add_names(rs, stmt->fields, ncols) != 0 || bind_results(rs, stmt, ncols, stmt->fields, 1) != 0 ? -1 : 0;
}

int h2o_db_mysql_stream_row(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt, h2o_db_result_t *r)
{
    rs->rows = 0;
    rs->cells.len = rs->text.len = 0;
    for (size_t i = 0; i < rs->columns; ++i)
        if (add_binary_value(rs, stmt, stmt->fields + i, i) != 0)
            return rows_failed(rs, r);
    rs->rows = 1;
    rows_done(rs, rs->columns, r);
    r->affected = 0;
    return 0;
}

/* ---- the text protocol ---- */

int h2o_db_mysql_read_text_rows(h2o_db_mysql_rows_t *rs, MYSQL_RES *res, h2o_db_result_t *r)
{
    size_t ncols = mysql_num_fields(res);
    const MYSQL_FIELD *fields = mysql_fetch_fields(res);
    MYSQL_ROW row;
    h2o_db_mysql_rows_reset(rs);
    if (add_names(rs, fields, ncols) != 0)
        return rows_failed(rs, r);
    while ((row = mysql_fetch_row(res)) != NULL) { /* a stored result: no I/O */
        unsigned long *lengths = mysql_fetch_lengths(res);
        for (size_t i = 0; i < ncols; ++i)
            if (add_bytes_value(rs, fields + i, row[i], row[i] != NULL ? lengths[i] : 0) != 0)
                return rows_failed(rs, r);
        ++rs->rows;
    }
    return rows_done(rs, ncols, r);
}
