/*
 * Results: the public accessors, typed JSON, and the HTTP answer for a failure.
 */
#include <stdio.h>
#include <string.h>
#include "result.h"

void h2o_db_result_init_error(h2o_db_result_t *r, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    memset(r, 0, sizeof(*r));
    r->status = status;
    r->sqlstate = sqlstate != NULL ? sqlstate : "XX000";
    r->error = message != NULL ? message : "database error";
}

void h2o_db_result_init_ok(h2o_db_result_t *r, uint64_t affected)
{
    memset(r, 0, sizeof(*r));
    r->status = H2O_DB_OK;
    r->affected = affected;
}

static const char *view_column_name(const h2o_db_result_t *r, size_t col)
{
    const h2o_db_row_view_t *v = r->impl;
    return v->src->cls->column_name(v->src, col);
}

static const char *view_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    const h2o_db_row_view_t *v = r->impl;
    return v->src->cls->value(v->src, v->row + row, col, len);
}

static h2o_db_type_t view_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    const h2o_db_row_view_t *v = r->impl;
    return v->src->cls->type(v->src, v->row + row, col);
}

static const h2o_db_result_class_t view_class = {view_column_name, view_value, view_type};

void h2o_db_result_row_view(h2o_db_result_t *dst, h2o_db_row_view_t *view, const h2o_db_result_t *src, size_t row)
{
    *dst = *src;
    view->src = src;
    view->row = row;
    dst->rows = 1;
    dst->cls = &view_class;
    dst->impl = view;
}

h2o_db_status_t h2o_db_status_for_sqlstate(const char *sqlstate)
{
    if (sqlstate == NULL)
        return H2O_DB_SQL_ERROR;
    if (strncmp(sqlstate, "08", 2) == 0 || strcmp(sqlstate, "57P01") == 0 || strcmp(sqlstate, "57P02") == 0 ||
        strcmp(sqlstate, "57P03") == 0)
        return H2O_DB_UNAVAILABLE;
    if (strcmp(sqlstate, "57014") == 0)
        return H2O_DB_TIMEOUT;
    if (strcmp(sqlstate, "53300") == 0)
        return H2O_DB_BUSY;
    return H2O_DB_SQL_ERROR;
}

h2o_db_status_t h2o_db_result_status(const h2o_db_result_t *r)
{
    return r->status;
}

const char *h2o_db_result_error(const h2o_db_result_t *r)
{
    return r->status == H2O_DB_OK ? NULL : r->error;
}

const char *h2o_db_result_sqlstate(const h2o_db_result_t *r)
{
    return r->status == H2O_DB_OK ? NULL : r->sqlstate;
}

size_t h2o_db_result_rows(const h2o_db_result_t *r)
{
    return r->rows;
}

size_t h2o_db_result_columns(const h2o_db_result_t *r)
{
    return r->columns;
}

const char *h2o_db_result_column_name(const h2o_db_result_t *r, size_t col)
{
    if (r->cls == NULL || col >= r->columns)
        return NULL;
    return r->cls->column_name(r, col);
}

const char *h2o_db_result_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    if (r->cls == NULL || row >= r->rows || col >= r->columns) {
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    size_t n;
    const char *v = r->cls->value(r, row, col, &n);
    if (len != NULL)
        *len = v != NULL ? n : 0;
    return v;
}

h2o_db_type_t h2o_db_result_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    if (r->cls == NULL || row >= r->rows || col >= r->columns)
        return H2O_DB_TYPE_NULL;
    return r->cls->type(r, row, col);
}

uint64_t h2o_db_result_affected(const h2o_db_result_t *r)
{
    return r->affected;
}

/* ---- JSON ---- */

/* Length of a valid UTF-8 sequence at s (at most n bytes), or 0 when it is not valid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t len;
    uint32_t min, cp;
    if ((s[0] & 0xe0) == 0xc0)
        len = 2, min = 0x80, cp = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        len = 3, min = 0x800, cp = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        len = 4, min = 0x10000, cp = s[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; ++i) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

size_t h2o_db_json_string(char *dst, const char *src, size_t n, int escape_separators)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)src;
    size_t out = 0;
#define PUT(c)                                                                                                                     \
    do {                                                                                                                           \
        if (dst != NULL)                                                                                                           \
            dst[out] = (c);                                                                                                        \
        ++out;                                                                                                                     \
    } while (0)
    PUT('"');
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            PUT('\\');
            PUT(c);
            ++i;
        } else if (c < 0x20) {
            PUT('\\');
            switch (c) {
            case '\n':
                PUT('n');
                break;
            case '\r':
                PUT('r');
                break;
            case '\t':
                PUT('t');
                break;
            case '\b':
                PUT('b');
                break;
            case '\f':
                PUT('f');
                break;
            default:
                PUT('u');
                PUT('0');
                PUT('0');
                PUT(hex[c >> 4]);
                PUT(hex[c & 15]);
                break;
            }
            ++i;
        } else if (c < 0x80) {
            PUT(c);
            ++i;
        } else {
            size_t len = utf8_len(s + i, n - i);
            if (len == 0) {
                PUT('\xef');
                PUT('\xbf');
                PUT('\xbd');
                ++i;
            } else if (escape_separators && len == 3 && c == 0xe2 && s[i + 1] == 0x80 && (s[i + 2] == 0xa8 || s[i + 2] == 0xa9)) {
                PUT('\\');
                PUT('u');
                PUT('2');
                PUT('0');
                PUT('2');
                PUT(s[i + 2] == 0xa8 ? '8' : '9');
                i += 3;
            } else {
                for (size_t k = 0; k < len; ++k)
                    PUT(s[i + k]);
                i += len;
            }
        }
    }
    PUT('"');
#undef PUT
    return out;
}

static int is_json_number(const char *v, size_t n)
{
    /* NaN and the infinities are not JSON numbers */
    return n != 0 && (v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) && !(n >= 4 && strncmp(v, "-Inf", 4) == 0);
}

size_t h2o_db_json_value(char *dst, const h2o_db_result_t *r, size_t row, size_t col)
{
    size_t n;
    const char *v = r->cls->value(r, row, col, &n);
    if (v == NULL) {
        if (dst != NULL)
            memcpy(dst, "null", 4);
        return 4;
    }
    switch (r->cls->type(r, row, col)) {
    case H2O_DB_TYPE_BOOL: {
        int t = n > 0 && (v[0] == 't' || v[0] == '1');
        if (dst != NULL)
            memcpy(dst, t ? "true" : "false", t ? 4 : 5);
        return t ? 4 : 5;
    }
    case H2O_DB_TYPE_INT:
    case H2O_DB_TYPE_FLOAT:
    case H2O_DB_TYPE_NUMERIC:
        if (!is_json_number(v, n))
            return h2o_db_json_string(dst, v, n, 0);
        /* fallthrough */
    case H2O_DB_TYPE_JSON:
        if (dst != NULL)
            memcpy(dst, v, n);
        return n;
    default:
        return h2o_db_json_string(dst, v, n, 0);
    }
}

static size_t json_rows(char *dst, const h2o_db_result_t *r)
{
    size_t out = 0;
#define PUTS(s, n)                                                                                                                 \
    do {                                                                                                                           \
        if (dst != NULL)                                                                                                           \
            memcpy(dst + out, s, n);                                                                                               \
        out += n;                                                                                                                  \
    } while (0)
    PUTS("[", 1);
    for (size_t row = 0; row < r->rows; ++row) {
        if (row != 0)
            PUTS(",", 1);
        PUTS("{", 1);
        for (size_t col = 0; col < r->columns; ++col) {
            if (col != 0)
                PUTS(",", 1);
            const char *name = r->cls->column_name(r, col);
            out += h2o_db_json_string(dst != NULL ? dst + out : NULL, name, strlen(name), 0);
            PUTS(":", 1);
            out += h2o_db_json_value(dst != NULL ? dst + out : NULL, r, row, col);
        }
        PUTS("}", 1);
    }
    PUTS("]", 1);
#undef PUTS
    return out;
}

h2o_iovec_t h2o_db_result_json(h2o_mem_pool_t *pool, const h2o_db_result_t *r)
{
    if (r->status != H2O_DB_OK || r->cls == NULL)
        return h2o_strdup(pool, "[]", 2);
    size_t len = json_rows(NULL, r);
    char *buf = h2o_mem_alloc_pool(pool, len + 1);
    json_rows(buf, r);
    buf[len] = '\0';
    return h2o_iovec_init(buf, len);
}

/* ---- HTTP answers for failures ---- */

/* The error log gets at most LOG_BURST lines a second per thread from failed requests: an outage
 * under load fails thousands of requests a second, and one line each would fill a disk. What is
 * left out is counted and said on the next line logged. */
#define LOG_BURST 20

static void log_failure(h2o_req_t *req, const h2o_db_result_t *r)
{
    static __thread uint64_t window;
    static __thread unsigned logged, skipped;
    uint64_t now = h2o_now(req->conn->ctx->loop);
    if (now - window >= 1000) {
        window = now;
        logged = 0;
    }
    if (logged >= LOG_BURST) {
        ++skipped;
        return;
    }
    ++logged;
    if (skipped != 0) {
        h2o_req_log_error(req, "h2o-db", "(%u more failed requests were not logged: at most %d lines a second)", skipped,
                          LOG_BURST);
        skipped = 0;
    }
    h2o_req_log_error(req, "h2o-db", "%s (SQLSTATE %s)", r->error != NULL ? r->error : "database error",
                      r->sqlstate != NULL ? r->sqlstate : "XX000");
}

void h2o_db_send_error(h2o_req_t *req, const h2o_db_result_t *r)
{
    static h2o_generator_t generator = {NULL, NULL};
    int status;
    const char *reason, *body;
    switch (r->status) {
    case H2O_DB_BUSY:
        status = 503, reason = "Service Unavailable", body = "the database is busy; retry later\n";
        break;
    case H2O_DB_UNAVAILABLE:
        status = 503, reason = "Service Unavailable", body = "the database is unavailable; retry later\n";
        break;
    case H2O_DB_TIMEOUT:
        status = 504, reason = "Gateway Timeout", body = "the database did not answer in time\n";
        break;
    case H2O_DB_CLIENT_GONE:
        status = 499, reason = "Client Closed Request", body = "";
        break;
    case H2O_DB_OK:
    case H2O_DB_SQL_ERROR:
    default:
        status = 500, reason = "Internal Server Error", body = NULL;
        break;
    }
    char *text;
    if (body == NULL) {
        text = h2o_mem_alloc_pool(&req->pool, 64);
        snprintf(text, 64, "database error (SQLSTATE %.5s)\n", r->sqlstate != NULL ? r->sqlstate : "XX000");
        body = text;
    }
    if (r->status != H2O_DB_CLIENT_GONE)
        log_failure(req, r);
    req->res.status = status;
    req->res.reason = reason;
    req->res.content_length = strlen(body);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain; charset=utf-8"));
    if (status == 503)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(body, req->res.content_length);
    h2o_send(req, &buf, 1, 1);
}
