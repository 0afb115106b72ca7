/*
 * db.query's answers: the formats of a `rows` answer (JSON array, NDJSON, CSV per RFC 4180), which
 * one a request asks for, pagination's Link header, and error answers whose bodies carry the
 * database's message and SQLSTATE but never the SQL nor a parameter's value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "query/query.h"
#include "result.h"

/* Room for n more bytes; returns where they go (the caller adds n to len). */
static char *reserve(h2o_db_query_buf_t *b, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap < 4096 ? 4096 : b->cap;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->base, cap);
        if (p == NULL)
            h2o_fatal("no memory");
        b->base = p;
        b->cap = cap;
    }
    return b->base + b->len;
}

void h2o_db_query_buf_append(h2o_db_query_buf_t *b, const char *s, size_t n)
{
    if (n == 0)
        return;
    memcpy(reserve(b, n), s, n);
    b->len += n;
}

void h2o_db_query_buf_free(h2o_db_query_buf_t *b)
{
    free(b->base);
    memset(b, 0, sizeof(*b));
}

static void put_json_string(h2o_db_query_buf_t *b, const char *s, size_t n)
{
    size_t len = h2o_db_json_string(NULL, s, n, 0);
    h2o_db_json_string(reserve(b, len), s, n, 0);
    b->len += len;
}

static void json_object(h2o_db_query_buf_t *b, const h2o_db_result_t *r, size_t row)
{
    h2o_db_query_buf_append(b, "{", 1);
    for (size_t col = 0; col < r->columns; ++col) {
        if (col != 0)
            h2o_db_query_buf_append(b, ",", 1);
        const char *name = h2o_db_result_column_name(r, col);
        put_json_string(b, name, strlen(name));
        h2o_db_query_buf_append(b, ":", 1);
        size_t len = h2o_db_json_value(NULL, r, row, col);
        h2o_db_json_value(reserve(b, len), r, row, col);
        b->len += len;
    }
    h2o_db_query_buf_append(b, "}", 1);
}

/* One CSV field: quoted when it holds a comma, a quote, CR or LF, or is empty (so that an empty
 * string differs from NULL, which is an empty unquoted field). */
static void csv_field(h2o_db_query_buf_t *b, const char *v, size_t n)
{
    if (v == NULL)
        return;
    if (n != 0 && strcspn(v, ",\"\r\n") >= n) {
        h2o_db_query_buf_append(b, v, n);
        return;
    }
    h2o_db_query_buf_append(b, "\"", 1);
    for (const char *p = v, *end = v + n; p < end;) {
        const char *q = memchr(p, '"', end - p);
        size_t len = (q != NULL ? q : end) - p;
        h2o_db_query_buf_append(b, p, len);
        if (q == NULL)
            break;
        h2o_db_query_buf_append(b, "\"\"", 2);
        p = q + 1;
    }
    h2o_db_query_buf_append(b, "\"", 1);
}

static void csv_row(h2o_db_query_buf_t *b, const h2o_db_result_t *r, size_t row, size_t index)
{
    if (index == 0) {
        for (size_t col = 0; col < r->columns; ++col) {
            const char *name = h2o_db_result_column_name(r, col);
            if (col != 0)
                h2o_db_query_buf_append(b, ",", 1);
            csv_field(b, name, strlen(name));
        }
        h2o_db_query_buf_append(b, "\r\n", 2);
    }
    for (size_t col = 0; col < r->columns; ++col) {
        size_t n;
        const char *v = h2o_db_result_value(r, row, col, &n);
        if (col != 0)
            h2o_db_query_buf_append(b, ",", 1);
        csv_field(b, v, n);
    }
    h2o_db_query_buf_append(b, "\r\n", 2);
}

void h2o_db_query_format_row(h2o_db_query_buf_t *b, h2o_db_query_format_t format, const h2o_db_result_t *r, size_t row,
                             size_t index)
{
    switch (format) {
    case H2O_DB_QUERY_JSON:
        h2o_db_query_buf_append(b, index == 0 ? "[" : ",", 1);
        json_object(b, r, row);
        break;
    case H2O_DB_QUERY_NDJSON:
        json_object(b, r, row);
        h2o_db_query_buf_append(b, "\n", 1);
        break;
    case H2O_DB_QUERY_CSV:
        csv_row(b, r, row, index);
        break;
    }
}

void h2o_db_query_format_end(h2o_db_query_buf_t *b, h2o_db_query_format_t format, size_t count)
{
    if (format == H2O_DB_QUERY_JSON)
        h2o_db_query_buf_append(b, count == 0 ? "[]" : "]", count == 0 ? 2 : 1);
}

const char *h2o_db_query_content_type(h2o_db_query_format_t format)
{
    switch (format) {
    case H2O_DB_QUERY_NDJSON:
        return "application/x-ndjson";
    case H2O_DB_QUERY_CSV:
        return "text/csv; charset=utf-8; header=present";
    default:
        return "application/json";
    }
}

/* The format of one media range (lower-cased "type/subtype"), or -1. */
static int format_of_range(const char *s, size_t n)
{
    static const struct {
        const char *name;
        int format;
    } ranges[] = {{"application/json", H2O_DB_QUERY_JSON},
                  {"*/*", H2O_DB_QUERY_JSON},
                  {"application/*", H2O_DB_QUERY_JSON},
                  {"application/x-ndjson", H2O_DB_QUERY_NDJSON},
                  {"application/ndjson", H2O_DB_QUERY_NDJSON},
                  {"application/jsonl", H2O_DB_QUERY_NDJSON},
                  {"text/csv", H2O_DB_QUERY_CSV},
                  {"text/*", H2O_DB_QUERY_CSV}};
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); ++i)
        if (h2o_lcstris(s, n, ranges[i].name, strlen(ranges[i].name)))
            return ranges[i].format;
    return -1;
}

/* The preferred format of an Accept header (highest q; on a tie, the first listed), or -1. */
static int accept_format(const char *s, size_t n)
{
    int best = -1;
    double best_q = 0;
    for (const char *p = s, *end = s + n; p < end;) {
        const char *comma = memchr(p, ',', end - p), *item_end = comma != NULL ? comma : end;
        const char *semi = memchr(p, ';', item_end - p), *range_end = semi != NULL ? semi : item_end;
        while (p < range_end && (*p == ' ' || *p == '\t'))
            ++p;
        while (range_end > p && (range_end[-1] == ' ' || range_end[-1] == '\t'))
            --range_end;
        double q = 1;
        for (const char *a = semi; a != NULL && a < item_end; a = memchr(a + 1, ';', item_end - a - 1)) {
            const char *v = a + 1;
            while (v < item_end && *v == ' ')
                ++v;
            if (item_end - v >= 2 && (v[0] == 'q' || v[0] == 'Q') && v[1] == '=') {
                char num[16];
                size_t len = strcspn(v + 2, ";,");
                snprintf(num, sizeof(num), "%.*s", (int)(len < 15 ? len : 15), v + 2);
                q = strtod(num, NULL);
            }
        }
        int f = format_of_range(p, range_end - p);
        if (f >= 0 && q > best_q) {
            best = f;
            best_q = q;
        }
        p = item_end + 1;
    }
    return best;
}

int h2o_db_query_negotiate(h2o_req_t *req)
{
    const char *f = h2o_db_query_arg(req, H2O_STRLIT("format"));
    if (f != NULL)
        return strcmp(f, "json") == 0     ? H2O_DB_QUERY_JSON
               : strcmp(f, "ndjson") == 0 ? H2O_DB_QUERY_NDJSON
               : strcmp(f, "csv") == 0    ? H2O_DB_QUERY_CSV
                                          : -1;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_ACCEPT, -1);
    if (i < 0)
        return H2O_DB_QUERY_JSON;
    int best = -1;
    for (; i >= 0 && best < 0; i = h2o_find_header(&req->headers, H2O_TOKEN_ACCEPT, i))
        best = accept_format(req->headers.entries[i].value.base, req->headers.entries[i].value.len);
    return best;
}

/* ---- pagination ---- */

static h2o_iovec_t page_url(h2o_req_t *req, size_t limit, size_t offset)
{
    size_t path_len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    h2o_db_query_buf_t b = {NULL};
    h2o_db_query_buf_append(&b, req->path.base, path_len);
    h2o_db_query_buf_append(&b, "?", 1);
    if (req->query_at != SIZE_MAX) {
        const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
        while (p < end) {
            const char *amp = memchr(p, '&', end - p), *pair_end = amp != NULL ? amp : end;
            size_t key_len = strcspn(p, "=&");
            if (key_len > (size_t)(pair_end - p))
                key_len = pair_end - p;
            int ours = (key_len == 5 && memcmp(p, "limit", 5) == 0) || (key_len == 6 && memcmp(p, "offset", 6) == 0);
            if (!ours && pair_end != p) {
                h2o_db_query_buf_append(&b, p, pair_end - p);
                h2o_db_query_buf_append(&b, "&", 1);
            }
            p = pair_end + 1;
        }
    }
    char tail[64];
    h2o_db_query_buf_append(&b, tail, snprintf(tail, sizeof(tail), "offset=%zu&limit=%zu", offset, limit));
    h2o_iovec_t out = h2o_strdup(&req->pool, b.base, b.len);
    h2o_db_query_buf_free(&b);
    return out;
}

static void add_link(h2o_req_t *req, h2o_iovec_t url, const char *rel)
{
    size_t len = url.len + 32;
    char *v = h2o_mem_alloc_pool(&req->pool, len);
    len = snprintf(v, len, "<%.*s>; rel=\"%s\"", (int)url.len, url.base, rel);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LINK, NULL, v, len);
}

void h2o_db_query_add_links(h2o_req_t *req, size_t limit, size_t offset, int has_next)
{
    if (has_next)
        add_link(req, page_url(req, limit, offset + limit), "next");
    if (offset > 0)
        add_link(req, page_url(req, limit, offset > limit ? offset - limit : 0), "prev");
}

/* ---- answers ---- */

const char *h2o_db_query_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 500:
        return "Internal Server Error";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

void h2o_db_query_respond(h2o_req_t *req, int status, const char *type, h2o_iovec_t body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = h2o_db_query_reason(status);
    if (status != 204 && status != 304)
        req->res.content_length = body.len;
    if (type != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    h2o_start_response(req, &generator);
    if (h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD")) || status == 204 || status == 304)
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
    else
        h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
}

void h2o_db_query_send_json_error(h2o_req_t *req, int status, const char *message, const char *sqlstate)
{
    h2o_db_query_buf_t b = {NULL};
    h2o_db_query_buf_append(&b, H2O_STRLIT("{\"error\":"));
    put_json_string(&b, message, strlen(message));
    if (sqlstate != NULL) {
        h2o_db_query_buf_append(&b, H2O_STRLIT(",\"sqlstate\":"));
        put_json_string(&b, sqlstate, strlen(sqlstate));
    }
    h2o_db_query_buf_append(&b, H2O_STRLIT("}\n"));
    h2o_iovec_t body = h2o_strdup(&req->pool, b.base, b.len);
    h2o_db_query_buf_free(&b);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_db_query_respond(req, status, "application/json", body);
}

/* The database's message with every parameter's value masked: PostgreSQL and MySQL quote a value
 * they could not read ("invalid input syntax for type integer: \"abc\""). */
static char *masked(h2o_mem_pool_t *pool, const char *message, const char *const *params, size_t n)
{
    h2o_db_query_buf_t b = {NULL};
    h2o_db_query_buf_append(&b, message, strlen(message) + 1);
    for (size_t i = 0; i < n; ++i) {
        size_t len = params[i] != NULL ? strlen(params[i]) : 0;
        if (len == 0)
            continue;
        for (size_t off = 0;;) {
            char *at = strstr(b.base + off, params[i]);
            if (at == NULL)
                break;
            off = at - b.base;
            /* a short value only where it is quoted, so that "1" does not mask every digit */
            int quoted = off > 0 && (at[-1] == '"' || at[-1] == '\'') && at[len] == at[-1];
            if (len < 4 && !quoted) {
                off += len;
                continue;
            }
            reserve(&b, 3);
            at = b.base + off;
            memmove(at + 3, at + len, b.len - off - len);
            memcpy(at, "...", 3);
            b.len = b.len - len + 3;
            off += 3;
        }
    }
    char *out = h2o_strdup(pool, b.base, b.len).base;
    h2o_db_query_buf_free(&b);
    return out;
}

void h2o_db_query_send_failure(h2o_req_t *req, const h2o_db_result_t *r, const char *const *params, size_t n)
{
    h2o_db_status_t status = h2o_db_result_status(r);
    if (status != H2O_DB_SQL_ERROR && status != H2O_DB_OK) {
        h2o_db_send_error(req, r);
        return;
    }
    const char *sqlstate = h2o_db_result_sqlstate(r), *error = h2o_db_result_error(r);
    if (sqlstate == NULL)
        sqlstate = "XX000";
    int code = 500;
    /* (MariaDB says 23000 for every integrity error; ER_DUP_ENTRY's message tells a duplicate key) */
    if (strcmp(sqlstate, "23505") == 0 ||
        (strcmp(sqlstate, "23000") == 0 && error != NULL && strncmp(error, "Duplicate entry", 15) == 0))
        code = 409;
    else if (strncmp(sqlstate, "23", 2) == 0 || strncmp(sqlstate, "22", 2) == 0)
        code = 400;
    else if (strcmp(sqlstate, "42501") == 0)
        code = 403;
    else if (strcmp(sqlstate, "P0002") == 0)
        code = 404;
    if (code == 500)
        h2o_req_log_error(req, "h2o-db", "db.query: %s (SQLSTATE %s)", error != NULL ? error : "database error", sqlstate);
    h2o_db_query_send_json_error(req, code, masked(&req->pool, error != NULL ? error : "database error", params, n), sqlstate);
}
