/*
 * db.query's handler: the request's method picks what to run; its parameters are read
 * (params.c), the statements run on the path's session (a list in one transaction: begin, each
 * in turn, commit; any failure rolls back), and the last one's result is the answer: a stream of
 * rows (stream.c), one row, one value, a count of affected rows, or nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "query/query.h"
#include "result.h"

const char *const h2o_db_query_method_names[H2O_DB_QUERY_NUM_METHODS] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"};

typedef struct st_query_handler_t {
    h2o_handler_t super;
    h2o_db_query_args_t *args;
    char allow[64]; /* the Allow header of a 405 */
} query_handler_t;

/* An answer kept while a transaction commits or rolls back. */
struct answer {
    int status;
    const char *type;
    h2o_iovec_t body;
    h2o_db_result_t failure; /* status != H2O_DB_OK: this is the answer instead */
};

struct call {
    h2o_req_t *req;
    h2o_db_session_t *s;
    const h2o_db_query_method_t *m;
    const char **values;
    size_t next; /* the statement running */
    int in_tx, head, format;
    size_t limit, offset;
    h2o_db_query_stream_t *st;
    struct answer answer;
};

static void keep_failure(struct call *c, const h2o_db_result_t *r)
{
    const char *sqlstate = h2o_db_result_sqlstate(r), *error = h2o_db_result_error(r);
    h2o_db_result_init_error(&c->answer.failure, h2o_db_result_status(r),
                             sqlstate != NULL ? h2o_strdup(&c->req->pool, sqlstate, SIZE_MAX).base : NULL,
                             error != NULL ? h2o_strdup(&c->req->pool, error, SIZE_MAX).base : NULL);
}

/* The values of statement i's $1..$n. */
static const char **values_of(struct call *c, size_t i)
{
    const h2o_db_query_method_t *m = c->m;
    const char **v = h2o_mem_alloc_pool(&c->req->pool, sizeof(*v) * (m->nparams[i] + 2));
    for (size_t j = 0; j < m->nparams[i]; ++j)
        v[j] = c->values[m->maps[i][j]];
    return v;
}

static void send_answer(struct call *c)
{
    if (c->st != NULL) {
        h2o_db_query_stream_finish(c->st, c->answer.failure.status != H2O_DB_OK ? &c->answer.failure : NULL);
        return;
    }
    if (c->answer.failure.status != H2O_DB_OK) {
        h2o_db_query_send_failure(c->req, &c->answer.failure, c->values, c->m->num_params);
        return;
    }
    if (c->answer.status >= 400) {
        h2o_db_query_send_json_error(c->req, c->answer.status, c->answer.body.base, NULL);
        return;
    }
    h2o_db_query_respond(c->req, c->answer.status, c->answer.type, c->answer.body);
}

static void on_tx_end(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (h2o_db_result_status(r) != H2O_DB_OK && c->answer.failure.status == H2O_DB_OK && c->answer.status < 400)
        keep_failure(c, r); /* the commit failed */
    send_answer(c);
}

/* The answer is known: a transaction commits (rolls back when the answer is an error), then it goes. */
static void conclude(struct call *c)
{
    if (!c->in_tx) {
        send_answer(c);
        return;
    }
    int ok = c->answer.failure.status == H2O_DB_OK && c->answer.status < 400;
    if ((ok ? h2o_db_commit : h2o_db_rollback)(c->s, on_tx_end, c) != 0) {
        if (ok)
            h2o_db_result_init_error(&c->answer.failure, H2O_DB_SQL_ERROR, "XX000", "the transaction could not be ended");
        send_answer(c);
    }
}

static void fail(struct call *c, const h2o_db_result_t *r)
{
    keep_failure(c, r);
    conclude(c);
}

static void set_error(struct call *c, int status, const char *message)
{
    c->answer.status = status;
    c->answer.body = h2o_iovec_init(message, strlen(message));
}

/* The last statement's result, as the method's `result` says. */
static void on_last(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    const h2o_db_query_method_t *m = c->m;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        fail(c, r);
        return;
    }
    h2o_mem_pool_t *pool = &c->req->pool;
    size_t rows = h2o_db_result_rows(r);
    struct answer *a = &c->answer;
    switch (m->result) {
    case H2O_DB_QUERY_ROW:
        if (rows != 1) {
            set_error(c, rows == 0 ? 404 : 500, rows == 0 ? "not found" : "the statement returned more than one row");
            break;
        }
        a->status = 200;
        a->type = "application/json";
        a->body = h2o_db_result_json(pool, r); /* [{...}] → {...} */
        a->body.base += 1;
        a->body.len -= 2;
        break;
    case H2O_DB_QUERY_VALUE: {
        size_t len;
        const char *v = h2o_db_result_value(r, 0, 0, &len);
        if (rows == 0 || h2o_db_result_columns(r) == 0) {
            set_error(c, 404, "not found");
            break;
        }
        a->status = 200;
        a->type = "text/plain; charset=utf-8";
        a->body = v != NULL ? h2o_strdup(pool, v, len) : h2o_iovec_init("", 0);
        break;
    }
    case H2O_DB_QUERY_AFFECTED: {
        uint64_t n = h2o_db_result_affected(r);
        if (n == 0) {
            set_error(c, 404, "not found");
            break;
        }
        char *json = h2o_mem_alloc_pool(pool, 48);
        a->status = 200;
        a->type = "application/json";
        a->body = h2o_iovec_init(json, snprintf(json, 48, "{\"affected\":%llu}\n", (unsigned long long)n));
        break;
    }
    default:
        a->status = 204;
        a->body = h2o_iovec_init("", 0);
        break;
    }
    if (a->status < 400 && m->status != 0)
        a->status = m->status;
    conclude(c);
}

static void on_stream_done(h2o_db_query_stream_t *st, h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (h2o_db_result_status(r) != H2O_DB_OK)
        keep_failure(c, r);
    conclude(c);
}

static void run_last(struct call *c)
{
    const h2o_db_query_method_t *m = c->m;
    const char *sql = m->sql[m->num_sql - 1];
    size_t n = m->nparams[m->num_sql - 1];
    const char **v = values_of(c, m->num_sql - 1);
    if (m->result != H2O_DB_QUERY_ROWS) {
        if (h2o_db_query(c->s, sql, n, v, on_last, c) != 0)
            goto Refused;
        return;
    }
    const char *const *values = v;
    if (m->limit != 0) { /* LIMIT $n+1 OFFSET $n+2: limit + 1 rows tell whether a next page exists */
        char *num = h2o_mem_alloc_pool(&c->req->pool, 48);
        v[n] = num;
        v[n + 1] = num + 24;
        snprintf(num, 24, "%zu", c->limit + 1);
        snprintf(num + 24, 24, "%zu", c->offset);
        values = v;
        sql = m->paged_sql;
        n += 2;
    }
    h2o_db_query_stream_opts_t opts = {c->format, m->status != 0 ? m->status : 200, c->head, c->limit, c->offset};
    if ((c->st = h2o_db_query_stream_start(c->req, c->s, &opts, sql, n, values, on_stream_done, c)) == NULL)
        goto Refused;
    return;
Refused:
    h2o_db_result_init_error(&c->answer.failure, H2O_DB_SQL_ERROR, "XX000", "the statement was refused");
    conclude(c);
}

static void run_step(struct call *c);

static void on_step(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        fail(c, r);
        return;
    }
    ++c->next;
    run_step(c);
}

static void run_step(struct call *c)
{
    const h2o_db_query_method_t *m = c->m;
    if (c->next == m->num_sql - 1) {
        run_last(c);
        return;
    }
    if (h2o_db_query(c->s, m->sql[c->next], m->nparams[c->next], values_of(c, c->next), on_step, c) != 0) {
        h2o_db_result_init_error(&c->answer.failure, H2O_DB_SQL_ERROR, "XX000", "the statement was refused");
        conclude(c);
    }
}

static void on_begun(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        c->in_tx = 0; /* nothing to roll back */
        fail(c, r);
        return;
    }
    run_step(c);
}

/* ?limit= and ?offset= of a paginated method; -1 after answering 400. */
static int read_page(h2o_req_t *req, const h2o_db_query_method_t *m, size_t *limit, size_t *offset)
{
    static const char *const names[] = {"limit", "offset"};
    size_t *out[] = {limit, offset};
    *limit = m->limit;
    *offset = 0;
    for (size_t i = 0; i < 2; ++i) {
        const char *v = h2o_db_query_arg(req, names[i], strlen(names[i]));
        if (v == NULL)
            continue;
        char *end;
        unsigned long long n = strtoull(v, &end, 10);
        int bad = v[0] < '0' || v[0] > '9' || *end != '\0' || strlen(v) > 12 || (i == 0 && (n < 1 || n > m->max_limit));
        if (bad) {
            char msg[128];
            if (i == 0)
                snprintf(msg, sizeof(msg), "limit must be a whole number from 1 to %zu", m->max_limit);
            else
                snprintf(msg, sizeof(msg), "offset must be a whole number, 0 or more");
            h2o_db_query_send_json_error(req, 400, h2o_strdup(&req->pool, msg, SIZE_MAX).base, NULL);
            return -1;
        }
        *out[i] = (size_t)n;
    }
    return 0;
}

static int method_index(h2o_req_t *req)
{
    for (int i = 0; i < H2O_DB_QUERY_NUM_METHODS; ++i)
        if (h2o_memis(req->method.base, req->method.len, h2o_db_query_method_names[i], strlen(h2o_db_query_method_names[i])))
            return i;
    return -1;
}

static int on_req(h2o_handler_t *_self, h2o_req_t *req)
{
    query_handler_t *self = (void *)_self;
    h2o_db_query_args_t *args = self->args;
    int mi = method_index(req);
    const h2o_db_query_method_t *m = mi >= 0 ? args->methods[mi] : NULL;
    if (m == NULL && mi == H2O_DB_QUERY_HEAD)
        m = args->methods[H2O_DB_QUERY_GET];
    if (m == NULL) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, self->allow, strlen(self->allow));
        h2o_db_query_send_json_error(req, 405, "method not allowed", NULL);
        return 0;
    }
    if (req->entity.base != NULL && req->entity.len > args->max_body) {
        h2o_db_query_send_json_error(req, 413, "the request body is too large", NULL);
        return 0;
    }
    struct call *c = h2o_mem_alloc_pool(&req->pool, sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->req = req;
    c->m = m;
    c->head = mi == H2O_DB_QUERY_HEAD;
    if (m->result == H2O_DB_QUERY_ROWS && (c->format = h2o_db_query_negotiate(req)) < 0) {
        h2o_db_query_send_json_error(
            req, 406, "the formats are application/json, application/x-ndjson and text/csv (?format=json|ndjson|csv)", NULL);
        return 0;
    }
    if (m->limit != 0 && read_page(req, m, &c->limit, &c->offset) != 0)
        return 0;
    const h2o_db_query_param_t *missing = NULL;
    switch (h2o_db_query_collect(req, m, &c->values, &missing)) {
    case 0:
        break;
    case -1: {
        char *msg = h2o_mem_alloc_pool(&req->pool, strlen(missing->label) + 64);
        sprintf(msg, "missing parameter %s", missing->label);
        h2o_db_query_send_json_error(req, 400, msg, NULL);
        return 0;
    }
    default: {
        char *msg = h2o_mem_alloc_pool(&req->pool, strlen(missing->label) + 128);
        sprintf(msg, "cannot read parameter %s: the body must be a JSON object or a form, and no value may hold a NUL",
                missing->label);
        h2o_db_query_send_json_error(req, 400, msg, NULL);
        return 0;
    }
    }
    if ((c->s = h2o_db_session(req, args->key)) == NULL) {
        h2o_db_query_send_json_error(req, 500, "no database session on this path", NULL);
        return 0;
    }
    if ((mi == H2O_DB_QUERY_GET || mi == H2O_DB_QUERY_HEAD) && !(m->read >= 0 ? m->read : args->read_primary))
        h2o_db_session_read_only(c->s); /* (a bind without replicas ignores it) */
    if (m->num_sql == 1) {
        run_last(c);
    } else {
        c->in_tx = 1;
        if (h2o_db_begin(c->s, on_begun, c) != 0) {
            c->in_tx = 0;
            h2o_db_result_init_error(&c->answer.failure, H2O_DB_SQL_ERROR, "XX000", "the transaction could not begin");
            conclude(c);
        }
    }
    return 0;
}

void h2o_db_query_method_free(h2o_db_query_method_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->num_sql; ++i)
        free(m->sql[i]);
    free(m->sql);
    for (size_t i = 0; m->maps != NULL && i < m->num_sql; ++i)
        free(m->maps[i]);
    free(m->maps);
    free(m->nparams);
    for (size_t i = 0; i < m->num_params; ++i) {
        free(m->params[i].name);
        free(m->params[i].def);
        free(m->params[i].label);
    }
    free(m->params);
    free(m->paged_sql);
    free(m);
}

void h2o_db_query_args_free(h2o_db_query_args_t *args)
{
    if (args == NULL)
        return;
    for (size_t i = 0; i < H2O_DB_QUERY_NUM_METHODS; ++i)
        h2o_db_query_method_free(args->methods[i]);
    free(args->key);
    free(args);
}

static void on_dispose(h2o_handler_t *_self)
{
    h2o_db_query_args_free(((query_handler_t *)_self)->args);
}

void h2o_db_query_register(h2o_pathconf_t *pathconf, h2o_db_query_args_t *args)
{
    query_handler_t *self = (void *)h2o_create_handler(pathconf, sizeof(*self));
    self->super.on_req = on_req;
    self->super.dispose = on_dispose;
    self->args = args;
    size_t len = 0;
    for (size_t i = 0; i < H2O_DB_QUERY_NUM_METHODS; ++i) {
        int allowed = args->methods[i] != NULL || (i == H2O_DB_QUERY_HEAD && args->methods[H2O_DB_QUERY_GET] != NULL);
        if (allowed)
            len +=
                snprintf(self->allow + len, sizeof(self->allow) - len, "%s%s", len != 0 ? ", " : "", h2o_db_query_method_names[i]);
    }
}
