/*
 * The demo: a small notes API as a c.handler, on the SQLite bind of
 * conf.d/h2o-db.conf, using the public API (include/h2o_db.h) alone.
 *
 *   GET    /notes          [{"id":1,"title":"...","body":"...","created_at":"..."}, ...]
 *   GET    /notes/ID       one note, or 404
 *   POST   /notes          the request body is the note; its first line is the title → 201 {"id":N}
 *   DELETE /notes/ID       204, or 404
 *
 * Writes run inside a transaction that also keeps a counter table up to date,
 * so a failure anywhere leaves neither change behind. Database failures answer
 * through h2o_db_send_error (503 + Retry-After when busy or down, 504, 500).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "h2o_db.h"

#define MAX_TITLE 200
#define MAX_BODY  (64 * 1024)

struct call {
    h2o_req_t *req;
    h2o_db_session_t *db;
    char id[24];
    const char *title, *body;
    h2o_iovec_t answer;
};

static void respond(h2o_req_t *req, int status, const char *reason, const char *type, h2o_iovec_t body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = reason;
    req->res.content_length = body.len;
    if (type != NULL)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    h2o_start_response(req, &generator);
    h2o_send(req, &body, 1, 1);
}

static void respond_json(h2o_req_t *req, int status, const char *reason, h2o_iovec_t json)
{
    respond(req, status, reason, "application/json", json);
}

static void not_found(h2o_req_t *req)
{
    respond_json(req, 404, "Not Found", h2o_iovec_init(H2O_STRLIT("{\"error\":\"no such note\"}\n")));
}

/* Answers a failed statement; returns 1 if r failed. */
static int failed(struct call *c, h2o_db_result_t *r)
{
    if (h2o_db_result_status(r) == H2O_DB_OK)
        return 0;
    h2o_db_send_error(c->req, r);
    return 1;
}

/* ---- reading ---- */

static void on_list(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (!failed(c, r))
        respond_json(c->req, 200, "OK", h2o_db_result_json(&c->req->pool, r));
}

static void on_get(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (failed(c, r))
        return;
    if (h2o_db_result_rows(r) == 0) {
        not_found(c->req);
        return;
    }
    h2o_iovec_t json = h2o_db_result_json(&c->req->pool, r); /* [{...}] → {...} */
    respond_json(c->req, 200, "OK", h2o_iovec_init(json.base + 1, json.len - 2));
}

/* ---- writing: BEGIN, change, count, COMMIT ---- */

static void on_commit(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (failed(c, r))
        return;
    if (c->answer.base != NULL)
        respond_json(c->req, 201, "Created", c->answer);
    else
        respond(c->req, 204, "No Content", NULL, h2o_iovec_init("", 0));
}

static void on_rollback_not_found(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (!failed(c, r))
        not_found(c->req);
}

static void on_counted(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (failed(c, r)) /* the request ends: the transaction is rolled back */
        return;
    h2o_db_commit(c->db, on_commit, c);
}

static void on_inserted(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (failed(c, r))
        return;
    const char *id = h2o_db_result_value(r, 0, 0, NULL);
    char *json = h2o_mem_alloc_pool(&c->req->pool, 48);
    c->answer = h2o_iovec_init(json, snprintf(json, 48, "{\"id\":%s}\n", id != NULL ? id : "null"));
    h2o_db_query(c->db, "UPDATE stats SET notes_created = notes_created + 1 WHERE id = 1", 0, NULL, on_counted, c);
}

static void on_deleted(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (failed(c, r))
        return;
    if (h2o_db_result_affected(r) == 0) {
        h2o_db_rollback(c->db, on_rollback_not_found, c);
        return;
    }
    h2o_db_query(c->db, "UPDATE stats SET notes_deleted = notes_deleted + 1 WHERE id = 1", 0, NULL, on_counted, c);
}

static void on_begun(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (failed(c, r))
        return;
    if (c->title != NULL) {
        const char *params[] = {c->title, c->body};
        h2o_db_query(c->db, "INSERT INTO notes (title, body) VALUES ($1, $2) RETURNING id", 2, params, on_inserted, c);
    } else {
        const char *params[] = {c->id};
        h2o_db_query(c->db, "DELETE FROM notes WHERE id = $1", 1, params, on_deleted, c);
    }
}

/* ---- routing ---- */

/* "/notes" → 0 with *id = NULL; "/notes/123" → 0 with the id; anything else → -1 */
static int parse_path(h2o_req_t *req, struct call *c, int *has_id)
{
    size_t prefix = req->pathconf->path.len;
    if (prefix != 0 && req->pathconf->path.base[prefix - 1] == '/')
        --prefix;
    const char *rest = req->path_normalized.base + prefix;
    size_t rest_len = req->path_normalized.len > prefix ? req->path_normalized.len - prefix : 0;
    if (rest_len == 0 || (rest_len == 1 && rest[0] == '/')) {
        *has_id = 0;
        return 0;
    }
    if (rest[0] != '/' || rest_len > 20)
        return -1;
    for (size_t i = 1; i < rest_len; ++i)
        if (rest[i] < '0' || rest[i] > '9')
            return -1;
    memcpy(c->id, rest + 1, rest_len - 1);
    c->id[rest_len - 1] = '\0';
    *has_id = 1;
    return 0;
}

int notes_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct call *c = h2o_mem_alloc_pool(&req->pool, sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->req = req;
    int has_id;
    if (parse_path(req, c, &has_id) != 0)
        return -1;
    if ((c->db = h2o_db_session(req, NULL)) == NULL) {
        h2o_send_error_500(req, "Internal Server Error", "sa_main is not attached at this path\n", 0);
        return 0;
    }

    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        if (has_id) {
            const char *params[] = {c->id};
            h2o_db_query(c->db, "SELECT id, title, body, created_at FROM notes WHERE id = $1", 1, params, on_get, c);
        } else {
            h2o_db_query(c->db, "SELECT id, title, body, created_at FROM notes ORDER BY id", 0, NULL, on_list, c);
        }
        return 0;
    }
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")) && !has_id) {
        if (req->entity.base == NULL || req->entity.len == 0 || req->entity.len > MAX_BODY ||
            memchr(req->entity.base, '\0', req->entity.len) != NULL) {
            h2o_send_error_400(req, "Bad Request", "POST the note as the request body (text, at most 64 KiB)\n", 0);
            return 0;
        }
        c->body = h2o_strdup(&req->pool, req->entity.base, req->entity.len).base;
        size_t title_len = strcspn(c->body, "\r\n");
        c->title = h2o_strdup(&req->pool, c->body, title_len < MAX_TITLE ? title_len : MAX_TITLE).base;
        h2o_db_begin(c->db, on_begun, c);
        return 0;
    }
    if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("DELETE")) && has_id) {
        h2o_db_begin(c->db, on_begun, c);
        return 0;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET, POST, DELETE"));
    h2o_send_error_generic(req, 405, "Method Not Allowed", "method not allowed\n", 0);
    return 0;
}
