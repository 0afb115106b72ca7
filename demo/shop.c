/*
 * The partitioning example (conf.d/partitions.conf, docs/partitions.md): users
 * and orders live on PostgreSQL (sa_main), the audit_log table on SQLite
 * (sa_audit, named by `binds: {audit_log: sa_audit}`), and one handler writes
 * to both in one transaction, with the public API (include/h2o_db.h) alone.
 *
 *   POST /orders?user=alice&item=book   (or the same as a form body)
 *        BEGIN on sa_main; upsert the user, insert the order (PostgreSQL); insert
 *        an audit row through h2o_db_session_for(db, "audit_log") (SQLite, which
 *        joins the transaction); COMMIT → 201 {"order":N,"user":"alice","item":"book"}
 *   GET  /orders         the orders with their users (PostgreSQL)
 *   GET  /orders/audit   the audit log (SQLite)
 *
 * COMMIT commits sa_main first, then sa_audit. A failure before COMMIT rolls back
 * both (the request ends with its transaction open: everything is rolled back);
 * see docs/partitions.md for what a failure during COMMIT answers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "h2o_db.h"

#define MAX_FIELD 100

struct order {
    h2o_req_t *req;
    h2o_db_session_t *db;    /* sa_main: users, orders */
    h2o_db_session_t *audit; /* the session audit_log's statements run on (sa_audit) */
    const char *user, *item;
    char order_id[24];
};

static void respond_json(h2o_req_t *req, int status, const char *reason, h2o_iovec_t body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = reason;
    req->res.content_length = body.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_start_response(req, &generator);
    h2o_send(req, &body, 1, 1);
}

/* Answers a failed statement (503/504/500, no SQL in the body); returns 1 if r failed.
 * The request then ends with its transaction open: h2o-db rolls it back on both databases. */
static int failed(h2o_req_t *req, h2o_db_result_t *r)
{
    if (h2o_db_result_status(r) == H2O_DB_OK)
        return 0;
    h2o_db_send_error(req, r);
    return 1;
}

/* ---- form fields: ?user=...&item=... or the same in an application/x-www-form-urlencoded body ---- */

static int hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* the decoded value of `name` in "a=1&b=2" (NULL when absent, empty, too long or not text) */
static const char *form_value(h2o_mem_pool_t *pool, const char *s, size_t len, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = s, *end = s + len; p < end;) {
        const char *amp = memchr(p, '&', end - p);
        if (amp == NULL)
            amp = end;
        if ((size_t)(amp - p) > n && memcmp(p, name, n) == 0 && p[n] == '=') {
            const char *v = p + n + 1;
            char *out = h2o_mem_alloc_pool(pool, amp - v + 1), *o = out;
            for (; v < amp; ++v) {
                if (*v == '+') {
                    *o++ = ' ';
                } else if (*v == '%' && amp - v >= 3 && hex(v[1]) >= 0 && hex(v[2]) >= 0) {
                    *o++ = (char)(hex(v[1]) * 16 + hex(v[2]));
                    v += 2;
                } else {
                    *o++ = *v;
                }
            }
            *o = '\0';
            size_t l = o - out;
            if (l == 0 || l > MAX_FIELD || strlen(out) != l)
                return NULL;
            return out;
        }
        p = amp + 1;
    }
    return NULL;
}

static const char *field(h2o_req_t *req, const char *name)
{
    const char *v = NULL;
    if (req->query_at != SIZE_MAX)
        v = form_value(&req->pool, req->path.base + req->query_at + 1, req->path.len - req->query_at - 1, name);
    if (v == NULL && req->entity.base != NULL)
        v = form_value(&req->pool, req->entity.base, req->entity.len, name);
    return v;
}

/* ---- POST /orders: one transaction over PostgreSQL and SQLite ---- */

/* s as a JSON string, quotes included */
static const char *json_string(h2o_mem_pool_t *pool, const char *s)
{
    char *out = h2o_mem_alloc_pool(pool, strlen(s) * 6 + 3), *p = out;
    *p++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c; ++c) {
        if (*c == '"' || *c == '\\')
            p += sprintf(p, "\\%c", *c);
        else if (*c < 0x20)
            p += sprintf(p, "\\u%04x", *c);
        else
            *p++ = *c;
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

static void on_committed(h2o_db_result_t *r, void *data)
{
    struct order *o = data;
    if (failed(o->req, r))
        return;
    const char *user = json_string(&o->req->pool, o->user), *item = json_string(&o->req->pool, o->item);
    size_t size = strlen(user) + strlen(item) + 64;
    char *json = h2o_mem_alloc_pool(&o->req->pool, size);
    int len = snprintf(json, size, "{\"order\":%s,\"user\":%s,\"item\":%s}\n", o->order_id, user, item);
    respond_json(o->req, 201, "Created", h2o_iovec_init(json, len));
}

static void on_audited(h2o_db_result_t *r, void *data)
{
    struct order *o = data;
    if (failed(o->req, r))
        return;
    /* COMMIT on the main session commits sa_main, then every partition it touched */
    h2o_db_commit(o->db, on_committed, o);
}

static void on_order_inserted(h2o_db_result_t *r, void *data)
{
    struct order *o = data;
    if (failed(o->req, r))
        return;
    snprintf(o->order_id, sizeof(o->order_id), "%s", h2o_db_result_value(r, 0, 0, NULL));
    /* the first statement on the audit_log partition begins a transaction there (SQLite:
     * BEGIN IMMEDIATE, the write lock, held until COMMIT — so it is the last table touched) */
    const char *params[] = {"order", o->user, o->item, o->order_id};
    h2o_db_query(o->audit, "INSERT INTO audit_log (action, username, detail) VALUES ($1, $2, $3 || ' (order ' || $4 || ')')", 4,
                 params, on_audited, o);
}

static void on_user(h2o_db_result_t *r, void *data)
{
    struct order *o = data;
    if (failed(o->req, r))
        return;
    const char *params[] = {h2o_db_result_value(r, 0, 0, NULL), o->item};
    h2o_db_query(o->db, "INSERT INTO orders (user_id, item) VALUES ($1, $2) RETURNING id", 2, params, on_order_inserted, o);
}

static void on_begun(h2o_db_result_t *r, void *data)
{
    struct order *o = data;
    if (failed(o->req, r))
        return;
    const char *params[] = {o->user};
    h2o_db_query(o->db, "INSERT INTO users (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                 1, params, on_user, o);
}

/* ---- GET ---- */

static void on_rows(h2o_db_result_t *r, void *data)
{
    h2o_req_t *req = data;
    if (!failed(req, r))
        respond_json(req, 200, "OK", h2o_db_result_json(&req->pool, r));
}

int shop_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    h2o_db_session_t *db = h2o_db_session(req, NULL);
    if (db == NULL) {
        h2o_send_error_500(req, "Internal Server Error", "sa_main is not attached at this path\n", 0);
        return 0;
    }
    /* the path below the handler's: "" or "/" (the orders) or "/audit" */
    size_t prefix = req->pathconf->path.len;
    if (prefix != 0 && req->pathconf->path.base[prefix - 1] == '/')
        --prefix;
    h2o_iovec_t rest = h2o_iovec_init(req->path_normalized.base + prefix,
                                      req->path_normalized.len > prefix ? req->path_normalized.len - prefix : 0);
    int audit_path = h2o_memis(rest.base, rest.len, H2O_STRLIT("/audit"));
    if (!audit_path && !(rest.len == 0 || h2o_memis(rest.base, rest.len, H2O_STRLIT("/"))))
        return -1;

    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        if (audit_path)
            h2o_db_query(h2o_db_session_for(db, "audit_log"), "SELECT id, at, action, username, detail FROM audit_log ORDER BY id",
                         0, NULL, on_rows, req);
        else
            h2o_db_query(db,
                         "SELECT o.id, u.name AS user, o.item, o.created_at FROM orders o JOIN users u ON u.id = o.user_id "
                         "ORDER BY o.id",
                         0, NULL, on_rows, req);
        return 0;
    }
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")) && !audit_path) {
        struct order *o = h2o_mem_alloc_pool(&req->pool, sizeof(*o));
        memset(o, 0, sizeof(*o));
        o->req = req;
        o->db = db;
        o->audit = h2o_db_session_for(db, "audit_log");
        o->user = field(req, "user");
        o->item = field(req, "item");
        if (o->user == NULL || o->item == NULL) {
            h2o_send_error_400(req, "Bad Request",
                               "give user and item (1 to 100 bytes each), e.g. POST /orders?user=alice&item=book\n", 0);
            return 0;
        }
        h2o_db_begin(db, on_begun, o);
        return 0;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET, POST"));
    h2o_send_error_generic(req, 405, "Method Not Allowed", "method not allowed\n", 0);
    return 0;
}
