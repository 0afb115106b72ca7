/*
 * Sessions: the public statement API, transactions as the handler sees them,
 * and the end of a request.
 *
 * One statement's life: h2o_db_query() copies it into an op in the request's
 * memory pool and queues the op's statement on the session's place
 * (h2o_db_pool_enqueue); the pool places it and the driver sends it; the
 * driver's result comes back through the pool to answer_cb() below, which runs
 * the callback. Statements answered without the database (BUSY, UNAVAILABLE, a
 * transaction already failed) go through the session's `done` list and are
 * answered on the next loop iteration, in issue order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/config.h"
#include "replica.h"
#include "result.h"
#include "session.h"
#include "sql_text.h"

/* ---- which keys are attached at a path ---- */

static int path_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    return -1; /* attaches nothing by itself: handlers ask with h2o_db_session() */
}

static void path_on_context_init(h2o_handler_t *self, h2o_context_t *ctx)
{
    h2o_db_thread_init(ctx);
}

static void path_dispose(h2o_handler_t *self)
{
    free(((h2o_db_path_t *)self)->binds);
}

void h2o_db_path_register(h2o_pathconf_t *pathconf, h2o_db_bind_t **binds, size_t num_binds)
{
    h2o_db_path_t *path = (void *)h2o_create_handler(pathconf, sizeof(*path));
    path->super.on_req = path_on_req;
    path->super.dispose = path_dispose;
    path->super.on_context_init = path_on_context_init;
    path->binds = binds;
    path->num_binds = num_binds;
}

h2o_db_path_t *h2o_db_path_of(h2o_pathconf_t *pathconf)
{
    if (pathconf == NULL)
        return NULL;
    for (size_t i = 0; i < pathconf->handlers.size; ++i)
        if (pathconf->handlers.entries[i]->on_req == path_on_req)
            return (h2o_db_path_t *)pathconf->handlers.entries[i];
    return NULL;
}

h2o_db_bind_t *h2o_db_path_find(h2o_db_path_t *path, const char *key)
{
    for (size_t i = 0; i < path->num_binds; ++i)
        if (strcmp(path->binds[i]->key, key) == 0)
            return path->binds[i];
    return NULL;
}

/* ---- sessions ---- */

static void deliver_done(h2o_db_later_t *later);
static void on_deadline(h2o_timeout_entry_t *entry);
static const h2o_db_place_cbs_t place_cbs;

static int session_idle(h2o_db_session_t *s)
{
    return h2o_db_place_idle(&s->place) && h2o_linklist_is_empty(&s->done);
}

int h2o_db_reqstate_busy(h2o_db_reqstate_t *rs)
{
    for (h2o_db_session_t *s = rs->sessions; s != NULL; s = s->next)
        if (!s->released && !session_idle(s))
            return 1;
    return 0;
}

/* The session stopped waiting for the database: disarm its bounds. */
static void became_idle(h2o_db_session_t *s)
{
    if (h2o_timeout_is_linked(&s->deadline))
        h2o_timeout_unlink(&s->deadline);
    if (s->owner != NULL && !h2o_db_reqstate_busy(s->owner))
        h2o_db_client_idle(s->owner);
}

/* The session starts waiting for the database: arm request-timeout, watch an HTTP/1 client. */
static void became_busy(h2o_db_session_t *s)
{
    if (s->owner == NULL)
        return;
    if (s->bind->pool.request_timeout != 0 && !h2o_timeout_is_linked(&s->deadline))
        h2o_timeout_link(s->pool->thread->loop, &s->pool->request_timeout, &s->deadline);
    h2o_db_client_busy(s->owner);
}

static void session_init(h2o_db_session_t *s, h2o_db_bind_t *bind, h2o_db_pool_t *pool, h2o_db_reqstate_t *owner,
                         h2o_mem_pool_t *mem)
{
    memset(s, 0, sizeof(*s));
    s->bind = bind;
    s->pool = pool;
    s->owner = owner;
    s->mem = mem;
    h2o_db_place_init(&s->place, pool, &place_cbs);
    h2o_linklist_init_anchor(&s->done);
    s->deliver_later.cb = deliver_done;
    s->deadline.cb = on_deadline;
}

/* The request ended (response sent, stream reset, connection closed). */
static void drop_ops(h2o_linklist_t *list, int done)
{
    while (!h2o_linklist_is_empty(list)) {
        h2o_db_op_t *op = done ? H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, done_link, list->next)
                               : H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, stmt.link, list->next);
        h2o_linklist_unlink(list->next);
        if (op->heap)
            free(op);
    }
}

static void session_release(h2o_db_session_t *s)
{
    h2o_db_thread_t *thread = s->pool->thread;
    if (s->released)
        return;
    if (s->commit != NULL)
        h2o_db_partition_release(s);
    s->released = 1;
    if (thread->delivering == s)
        thread->delivering_gone = 1;
    if (h2o_timeout_is_linked(&s->deadline))
        h2o_timeout_unlink(&s->deadline);
    h2o_db_later_cancel(&s->deliver_later);
    drop_ops(&s->done, 1);
    h2o_linklist_t in_flight, queued;
    h2o_linklist_init_anchor(&in_flight);
    h2o_linklist_init_anchor(&queued);
    if (s->pool != NULL)
        h2o_db_pool_detach(&s->place, &in_flight, &queued);
    drop_ops(&in_flight, 0);
    drop_ops(&queued, 0);
}

static void on_request_dispose(void *data)
{
    h2o_db_reqstate_t *rs = data;
    h2o_db_client_idle(rs);
    for (h2o_db_session_t *s = rs->sessions; s != NULL; s = s->next)
        session_release(s);
    h2o_db_thread_remove_req(rs->thread, rs->req);
}

static h2o_db_reqstate_t *request_state(h2o_req_t *req, h2o_db_thread_t *thread)
{
    h2o_db_reqstate_t *rs = h2o_db_thread_find_req(thread, req);
    if (rs == NULL) {
        rs = h2o_mem_alloc_shared(&req->pool, sizeof(*rs), on_request_dispose);
        memset(rs, 0, sizeof(*rs));
        rs->req = req;
        rs->thread = thread;
        rs->client.fd = -1;
        h2o_db_thread_add_req(thread, req, rs);
    }
    return rs;
}

/* A new session of a request (a key's, or a partition's: parent != NULL). */
static h2o_db_session_t *new_request_session(h2o_db_reqstate_t *rs, h2o_db_bind_t *bind, h2o_db_session_t *parent)
{
    h2o_db_pool_t *pool = h2o_db_thread_pool(rs->thread, bind->id);
    if (pool == NULL)
        return NULL;
    h2o_db_session_t *s = h2o_mem_alloc_pool(&rs->req->pool, sizeof(*s));
    session_init(s, bind, pool, rs, &rs->req->pool);
    s->parent = parent;
    /* children go after their parent: the request releases parents first (a commit in
     * progress learns it before its partitions go) */
    h2o_db_session_t **slot = &rs->sessions;
    if (parent != NULL)
        slot = &parent->next;
    s->next = *slot;
    *slot = s;
    return s;
}

static h2o_db_session_t *request_session(h2o_req_t *req, h2o_db_thread_t *thread, h2o_db_bind_t *bind)
{
    h2o_db_reqstate_t *rs = request_state(req, thread);
    for (h2o_db_session_t *s = rs->sessions; s != NULL; s = s->next)
        if (s->bind == bind && s->parent == NULL)
            return s;
    return new_request_session(rs, bind, NULL);
}

h2o_db_session_t *h2o_db_session(h2o_req_t *req, const char *key)
{
    if (req == NULL)
        return NULL;
    h2o_db_path_t *path = h2o_db_path_of(req->pathconf);
    if (path == NULL)
        return NULL;
    h2o_db_bind_t *bind = h2o_db_path_find(path, key != NULL ? key : H2O_DB_DEFAULT_KEY);
    if (bind == NULL)
        return NULL;
    h2o_db_thread_t *thread = h2o_db_thread != NULL ? h2o_db_thread : h2o_db_thread_init(req->conn->ctx);
    return request_session(req, thread, bind);
}

h2o_db_session_t *h2o_db_session_for(h2o_db_session_t *s, const char *table)
{
    if (s == NULL || table == NULL || s->released)
        return NULL;
    h2o_db_bind_t *bind = s->bind;
    for (size_t i = 0; i < bind->partitions.size; ++i) {
        h2o_db_partition_t *p = bind->partitions.entries + i;
        if (strcmp(p->table, table) != 0)
            continue;
        if (s->children == NULL) {
            size_t size = sizeof(*s->children) * bind->partitions.size;
            s->children = s->heap ? calloc(1, size) : h2o_mem_alloc_pool(s->mem, size);
            memset(s->children, 0, size);
        }
        if (s->children[i] == NULL) {
            h2o_db_session_t *child;
            if (s->heap) {
                child = calloc(1, sizeof(*child));
                session_init(child, p->bind, h2o_db_thread_pool(s->pool->thread, p->bind->id), NULL, NULL);
                child->heap = 1;
                child->parent = s;
            } else {
                child = new_request_session(s->owner, p->bind, s);
            }
            if (child == NULL)
                return NULL;
            child->partition_index = i;
            s->children[i] = child;
        }
        return s->children[i];
    }
    return s;
}

/* ---- sessions outside a request ---- */

h2o_db_session_t *h2o_db_session_open_bind(h2o_db_thread_t *thread, h2o_db_bind_t *bind)
{
    h2o_db_session_t *s = calloc(1, sizeof(*s));
    session_init(s, bind, h2o_db_thread_pool(thread, bind->id), NULL, NULL);
    s->heap = 1;
    return s;
}

h2o_db_session_t *h2o_db_session_open(h2o_context_t *ctx, const char *key)
{
    if (key == NULL)
        key = H2O_DB_DEFAULT_KEY;
    h2o_db_bind_t *bind = NULL;
    h2o_db_config_t *config = ctx != NULL             ? h2o_db_config_of(ctx->globalconf)
                              : h2o_db_thread != NULL ? h2o_db_thread->config
                                                      : NULL;
    for (size_t i = 0; config != NULL && i < config->binds.size; ++i) {
        h2o_db_bind_t *b = config->binds.entries[i];
        if (b->primary == NULL && strcmp(b->scope, "global") == 0 && strcmp(b->key, key) == 0)
            bind = b;
    }
    if (bind == NULL)
        return NULL;
    h2o_db_thread_t *thread = h2o_db_thread != NULL ? h2o_db_thread : ctx != NULL ? h2o_db_thread_init(ctx) : NULL;
    if (thread == NULL)
        return NULL;
    return h2o_db_session_open_bind(thread, bind);
}

static void free_heap_session(h2o_db_session_t *s)
{
    if (s->children != NULL) {
        for (size_t i = 0; i < s->bind->partitions.size; ++i)
            if (s->children[i] != NULL)
                free_heap_session(s->children[i]);
        free(s->children);
    }
    session_release(s);
    free(s);
}

void h2o_db_session_close(h2o_db_session_t *s)
{
    if (s == NULL || !s->heap || s->parent != NULL)
        return;
    if (s->commit != NULL)
        h2o_db_partition_release(s);
    free_heap_session(s);
}

/* ---- statements ---- */

static h2o_db_op_t *new_op(h2o_db_session_t *s, h2o_db_op_kind_t kind, const char *sql, size_t nparams, const char *const *params,
                           h2o_db_cb cb, void *data)
{
    size_t sql_len = sql != NULL ? strlen(sql) : 0, size = sizeof(h2o_db_op_t) + nparams * sizeof(char *) + sql_len + 1;
    for (size_t i = 0; i < nparams; ++i)
        if (params[i] != NULL)
            size += strlen(params[i]) + 1;
    h2o_db_op_t *op = s->heap ? malloc(size) : h2o_mem_alloc_pool(s->mem, size);
    char *dst = (char *)(op + 1) + nparams * sizeof(char *);
    memset(op, 0, sizeof(*op));
    op->heap = s->heap;
    op->session = s;
    op->stmt.kind = kind;
    op->cb = cb;
    op->data = data;
    op->stmt.nparams = nparams;
    op->stmt.params = (const char **)(op + 1);
    for (size_t i = 0; i < nparams; ++i) {
        if (params[i] == NULL) {
            op->stmt.params[i] = NULL;
        } else {
            size_t n = strlen(params[i]) + 1;
            memcpy(dst, params[i], n);
            op->stmt.params[i] = dst;
            dst += n;
        }
    }
    if (sql != NULL)
        memcpy(dst, sql, sql_len + 1);
    op->stmt.sql = sql != NULL ? dst : NULL;
    op->stmt.sql_len = sql_len;
    op->stmt.in_txn = s->txn_open;
    op->stmt.after_commit = h2o_db_session_root(s)->commit != NULL;
    return op;
}

static void to_done(h2o_db_op_t *op, h2o_db_status_t status, const char *sqlstate, const char *message);

static void enqueue(h2o_db_session_t *s, h2o_db_op_t *op)
{
    s->issued = 1;
    /* a read-only session picks its pool (a replica's, or the primary's read-only one): replica.c */
    h2o_db_replica_refusal_t no = {0};
    int refused = s->read_only && !s->aborted && h2o_db_replica_place(s, op, &no) != 0;
    if (session_idle(s))
        became_busy(s);
    if (s->aborted || refused) {
        if (refused)
            to_done(op, no.status, no.sqlstate, no.message);
        else
            to_done(op, s->abort_status, s->abort_sqlstate, s->abort_message);
        return;
    }
    /* while a commit across partitions runs, its own steps go before what the handler issued
     * after it began */
    h2o_db_pool_enqueue(&s->place, &op->stmt, !op->stmt.after_commit && h2o_db_session_root(s)->commit != NULL);
}

static int usable(h2o_db_session_t *s)
{
    return s != NULL && !s->released;
}

void h2o_db_session_enqueue(h2o_db_session_t *s, h2o_db_op_kind_t kind, const char *sql, size_t nparams, const char *const *params,
                            int flags, h2o_db_cb cb, void *data)
{
    h2o_db_op_t *op = new_op(s, kind, sql, nparams, params, cb, data);
    op->stmt.in_txn = (flags & H2O_DB_ENQ_IN_TXN) != 0;
    op->stmt.no_cache = (flags & H2O_DB_ENQ_NO_CACHE) != 0;
    op->stmt.after_commit = 0;
    enqueue(s, op);
}

static void ignore_result(h2o_db_result_t *result, void *data)
{
}

/* A partition's first statement inside its root's transaction begins one there too. */
static void join_root_transaction(h2o_db_session_t *s)
{
    h2o_db_session_t *root = h2o_db_session_root(s);
    if (root == s || !root->txn_open || s->txn_open || root->commit != NULL)
        return;
    s->txn_open = 1;
    s->implicit_txn = 1;
    /* keep `touched` in `binds:` order: the documented commit order */
    h2o_db_session_t **slot = &root->touched;
    while (*slot != NULL && (*slot)->partition_index <= s->partition_index)
        slot = &(*slot)->touched_next;
    s->touched_next = *slot;
    *slot = s;
    enqueue(s, new_op(s, H2O_DB_OP_BEGIN, NULL, 0, NULL, ignore_result, NULL));
}

static int valid_statement(const char *sql, size_t nparams, const char *const *params)
{
    if (sql == NULL || (nparams != 0 && params == NULL) || nparams > 65535)
        return 0;
    /* most SQL has no `;` at all: skip the lexer then */
    return !h2o_db_sql_is_blank(sql) && (strchr(sql, ';') == NULL || !h2o_db_sql_several_statements(sql));
}

int h2o_db_query(h2o_db_session_t *s, const char *sql, size_t nparams, const char *const *params, h2o_db_cb cb, void *data)
{
    if (!usable(s) || cb == NULL || !valid_statement(sql, nparams, params))
        return -1;
    if (s->parent != NULL)
        join_root_transaction(s);
    enqueue(s, new_op(s, H2O_DB_OP_QUERY, sql, nparams, params, cb, data));
    return 0;
}

static void no_cb(h2o_db_result_t *result, void *data)
{
}

int h2o_db_query_batch(h2o_db_session_t *s, const h2o_db_statement_t *stmts, size_t n, h2o_db_batch_cb cb, void *data)
{
    if (!usable(s) || cb == NULL || stmts == NULL || n == 0)
        return -1;
    h2o_db_pool_config_t *cfg = &s->bind->pool;
    if (s->place.num_pending + n > (cfg->queue > cfg->pipeline_depth ? cfg->queue : cfg->pipeline_depth))
        return -1; /* the pool would answer the last ones BUSY: none is queued instead */
    for (size_t i = 0; i < n; ++i)
        if (!valid_statement(stmts[i].sql, stmts[i].nparams, stmts[i].params))
            return -1;
    if (s->parent != NULL)
        join_root_transaction(s);
    for (size_t i = 0; i < n; ++i) {
        h2o_db_op_t *op = new_op(s, H2O_DB_OP_QUERY, stmts[i].sql, stmts[i].nparams, stmts[i].params, no_cb, data);
        op->batch_cb = cb;
        op->index = i;
        enqueue(s, op);
    }
    return 0;
}

int h2o_db_begin(h2o_db_session_t *s, h2o_db_cb cb, void *data)
{
    if (!usable(s) || cb == NULL || s->txn_open || s->commit != NULL)
        return -1;
    h2o_db_session_t *root = h2o_db_session_root(s);
    if (root != s && (root->txn_open || root->commit != NULL))
        return -1; /* it is part of its main session's transaction already */
    s->txn_open = 1;
    enqueue(s, new_op(s, H2O_DB_OP_BEGIN, NULL, 0, NULL, cb, data));
    return 0;
}

static int any_failed(h2o_db_session_t *root)
{
    if (root->txn_failed)
        return 1;
    for (h2o_db_session_t *p = root->touched; p != NULL; p = p->touched_next)
        if (p->txn_failed)
            return 1;
    return 0;
}

/* Ends the session's transaction (kind: COMMIT or ROLLBACK); one that touched other partitions
 * ends through partition.c. */
static int end_txn(h2o_db_session_t *s, h2o_db_op_kind_t kind, h2o_db_cb cb, void *data)
{
    if (s->touched != NULL)
        return h2o_db_partition_commit(s, kind == H2O_DB_OP_ROLLBACK, cb, data);
    h2o_db_op_t *op = new_op(s, kind, NULL, 0, NULL, cb, data);
    s->txn_open = 0;
    enqueue(s, op);
    return 0;
}

int h2o_db_commit(h2o_db_session_t *s, h2o_db_cb cb, void *data)
{
    if (!usable(s) || cb == NULL || !s->txn_open || s->implicit_txn || any_failed(s))
        return -1;
    return end_txn(s, H2O_DB_OP_COMMIT, cb, data);
}

int h2o_db_rollback(h2o_db_session_t *s, h2o_db_cb cb, void *data)
{
    if (!usable(s) || cb == NULL || !s->txn_open || s->implicit_txn)
        return -1;
    return end_txn(s, H2O_DB_OP_ROLLBACK, cb, data);
}

/* ---- answers ---- */

/* While a handler's callback runs: whether it ended its request (the session was released). */
typedef struct st_delivery_t {
    void *saved;
    int saved_gone;
} delivery_t;

static void delivery_begin(h2o_db_thread_t *thread, h2o_db_session_t *s, delivery_t *d)
{
    d->saved = thread->delivering;
    d->saved_gone = thread->delivering_gone;
    thread->delivering = s;
    thread->delivering_gone = 0;
}

/* Returns non-zero when the request ended inside the callback. */
static int delivery_end(h2o_db_thread_t *thread, delivery_t *d)
{
    int gone = thread->delivering_gone;
    thread->delivering = d->saved;
    thread->delivering_gone = d->saved_gone;
    return gone;
}

static void stream_stopped(h2o_db_session_t *s, const h2o_db_stmt_t *stmt)
{
    /* the database's transaction fails with the cancel: its COMMIT is refused */
    if (stmt->in_txn && !s->txn_failed) {
        s->txn_failed = 1;
        s->txn_status = H2O_DB_TIMEOUT;
        snprintf(s->txn_sqlstate, sizeof(s->txn_sqlstate), "57014");
    }
}

/* One row of a streamed statement (the pool's `row`): 0 go on, 1 pause, -1 stop. */
static int row_cb(h2o_db_stmt_t *stmt, h2o_db_result_t *row)
{
    h2o_db_op_t *op = H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, stmt, stmt);
    h2o_db_session_t *s = op->session;
    h2o_db_thread_t *thread = s->pool->thread;
    if (s->released)
        return -1;
    if (h2o_timeout_is_linked(&s->deadline)) {
        /* rows arrive: request-timeout bounds a wait at a stretch, not the whole stream */
        h2o_timeout_unlink(&s->deadline);
        h2o_timeout_link(thread->loop, &s->pool->request_timeout, &s->deadline);
    }
    delivery_t d;
    delivery_begin(thread, s, &d);
    int ret = op->row_cb(row, op->data);
    if (delivery_end(thread, &d))
        return -1;
    if (ret < 0)
        stream_stopped(s, stmt);
    return ret > 0 ? 1 : ret < 0 ? -1 : 0;
}

/* A driver that answered a streamed statement with all its rows at once: they are handed over one
 * by one (a pause cannot hold rows already read: it is ignored). Returns -1 if the request ended. */
static int rows_at_once(h2o_db_op_t *op, h2o_db_result_t *result)
{
    h2o_db_session_t *s = op->session;
    h2o_db_thread_t *thread = s->pool->thread;
    for (size_t i = 0; i < result->rows; ++i) {
        h2o_db_result_t one;
        h2o_db_row_view_t view;
        h2o_db_result_row_view(&one, &view, result, i);
        delivery_t d;
        delivery_begin(thread, s, &d);
        int ret = op->row_cb(&one, op->data);
        if (delivery_end(thread, &d))
            return -1;
        if (ret < 0) {
            stream_stopped(s, &op->stmt);
            break;
        }
    }
    return 0;
}

/* The pool handed the statement back with its result: runs the callback, keeps the transaction's
 * state. Returns 0 if the session may be used afterwards, -1 if the callback ended its request. */
static int answer_cb(h2o_db_stmt_t *stmt, h2o_db_result_t *result)
{
    h2o_db_op_t *op = H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, stmt, stmt);
    h2o_db_session_t *s = op->session;
    h2o_db_thread_t *thread = s->pool->thread;
    h2o_db_op_kind_t kind = stmt->kind;

    if (result->status != H2O_DB_OK && (stmt->in_txn || kind == H2O_DB_OP_BEGIN) && !s->txn_failed) {
        s->txn_failed = 1;
        s->txn_status = result->status;
        snprintf(s->txn_sqlstate, sizeof(s->txn_sqlstate), "%s", result->sqlstate != NULL ? result->sqlstate : "XX000");
    }
    if (kind == H2O_DB_OP_COMMIT || kind == H2O_DB_OP_ROLLBACK)
        s->txn_failed = 0;
    if (s->released) {
        if (op->heap)
            free(op);
        return -1;
    }
    if (session_idle(s))
        became_idle(s); /* before the callback: it may answer the request */

    h2o_db_result_t end;
    if (op->row_cb != NULL && result->status == H2O_DB_OK && result->rows != 0) {
        if (rows_at_once(op, result) != 0) {
            if (op->heap)
                free(op);
            return -1;
        }
        h2o_db_result_init_ok(&end, result->rows);
        result = &end;
    }
    delivery_t d;
    delivery_begin(thread, s, &d);
    if (op->batch_cb != NULL)
        op->batch_cb(result, op->index, op->data);
    else
        op->cb(result, op->data);
    int gone = delivery_end(thread, &d);
    if (op->heap)
        free(op);
    if (gone)
        return -1;
    if (s->place.outstanding == 0 && !h2o_linklist_is_empty(&s->done))
        h2o_db_later(thread, &s->deliver_later);
    return 0;
}

static void set_answer(h2o_db_op_t *op, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    op->status = status;
    op->sqlstate = sqlstate;
    op->message = message;
    op->answered = 1;
}

/* Answers op without the database, later (in issue order with the session's other answers). */
static void to_done(h2o_db_op_t *op, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    h2o_db_session_t *s = op->session;
    set_answer(op, status, sqlstate, message);
    h2o_linklist_insert(&s->done, &op->done_link);
    if (s->place.outstanding == 0)
        h2o_db_later(s->pool->thread, &s->deliver_later);
}

static void answer_later_cb(h2o_db_stmt_t *stmt, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    to_done(H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, stmt, stmt), status, sqlstate, message);
}

static void deliver_done(h2o_db_later_t *later)
{
    h2o_db_session_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_session_t, deliver_later, later);
    while (!h2o_linklist_is_empty(&s->done) && s->place.outstanding == 0) {
        h2o_db_op_t *op = H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, done_link, s->done.next);
        h2o_linklist_unlink(&op->done_link);
        h2o_db_result_t r;
        if (op->status == H2O_DB_OK)
            h2o_db_result_init_ok(&r, 0);
        else
            h2o_db_result_init_error(&r, op->status, op->sqlstate, op->message);
        if (answer_cb(&op->stmt, &r) != 0)
            return;
    }
    if (h2o_linklist_is_empty(&s->done) && s->place.num_pending != 0)
        h2o_db_pool_pump(&s->place);
}

/* Whether the pool must keep the session's next statement: answers made without the database go
 * first, in order; what was issued after a commit across partitions began runs once it ends. */
static int hold_cb(h2o_db_place_t *place, const h2o_db_stmt_t *head)
{
    h2o_db_session_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_session_t, place, place);
    return !h2o_linklist_is_empty(&s->done) || (head->after_commit && h2o_db_session_root(s)->commit != NULL);
}

static void txn_lost_cb(h2o_db_place_t *place, const char *sqlstate)
{
    h2o_db_session_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_session_t, place, place);
    if (!s->txn_failed) {
        s->txn_failed = 1;
        s->txn_status = H2O_DB_UNAVAILABLE;
        snprintf(s->txn_sqlstate, sizeof(s->txn_sqlstate), "%s", sqlstate);
    }
}

static void leaked_cb(h2o_db_place_t *place, uint64_t held_ms)
{
    h2o_db_session_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_session_t, place, place);
    double held = held_ms / 1000.0, threshold = s->bind->pool.leak_threshold / 1000.0;
    if (s->owner != NULL) {
        h2o_req_t *req = s->owner->req;
        fprintf(stderr,
                "h2o-db: [%s] a request has held a connection in a transaction for %.1f s (leak-threshold %.1f s): %.*s %.*s\n",
                s->bind->key, held, threshold, (int)req->method.len, req->method.base, (int)req->path.len, req->path.base);
    } else {
        fprintf(stderr,
                "h2o-db: [%s] a session outside a request has held a connection in a transaction for %.1f s (leak-threshold "
                "%.1f s)\n",
                s->bind->key, held, threshold);
    }
}

static const h2o_db_place_cbs_t place_cbs = {.answer = answer_cb,
                                             .row = row_cb,
                                             .answer_later = answer_later_cb,
                                             .hold = hold_cb,
                                             .txn_lost = txn_lost_cb,
                                             .leaked = leaked_cb};

/* ---- answering everything at once: the client left, or request-timeout ran out ---- */

void h2o_db_session_abort(h2o_db_session_t *s, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    if (s->released || s->aborted)
        return;
    s->aborted = 1;
    s->abort_status = status;
    s->abort_sqlstate = sqlstate;
    s->abort_message = message;
    if (s->txn_open && !s->txn_failed) {
        s->txn_failed = 1;
        s->txn_status = status;
        snprintf(s->txn_sqlstate, sizeof(s->txn_sqlstate), "%s", sqlstate);
    }
    /* in issue order: what was in flight, what was answered already, what was queued */
    h2o_linklist_t in_flight, queued, done;
    h2o_linklist_init_anchor(&in_flight);
    h2o_linklist_init_anchor(&queued);
    h2o_linklist_init_anchor(&done);
    h2o_db_pool_detach(&s->place, &in_flight, &queued);
    h2o_linklist_t *lists[] = {&in_flight, &queued};
    for (size_t i = 0; i < 2; ++i) {
        if (i == 1)
            h2o_linklist_insert_list(&done, &s->done); /* between the two */
        while (!h2o_linklist_is_empty(lists[i])) {
            h2o_db_op_t *op = H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, stmt.link, lists[i]->next);
            h2o_linklist_unlink(&op->stmt.link);
            set_answer(op, status, sqlstate, message);
            h2o_linklist_insert(&done, &op->done_link);
        }
    }
    h2o_linklist_insert_list(&s->done, &done);
    if (!h2o_linklist_is_empty(&s->done))
        h2o_db_later(s->pool->thread, &s->deliver_later);
}

static void on_deadline(h2o_timeout_entry_t *entry)
{
    h2o_db_session_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_session_t, deadline, entry);
    h2o_db_pool_count_timeout(s->pool);
    h2o_db_session_abort(s, H2O_DB_TIMEOUT, "57014", "the request waited too long for the database (pool.request-timeout)");
}

/* ---- streaming ---- */

int h2o_db_query_rows(h2o_db_session_t *s, const char *sql, size_t nparams, const char *const *params, h2o_db_row_cb on_row,
                      h2o_db_cb on_done, void *data)
{
    if (!usable(s) || on_row == NULL || on_done == NULL || !valid_statement(sql, nparams, params))
        return -1;
    if (s->parent != NULL)
        join_root_transaction(s);
    h2o_db_op_t *op = new_op(s, H2O_DB_OP_QUERY, sql, nparams, params, on_done, data);
    op->row_cb = on_row;
    op->stmt.stream = 1;
    op->stmt.no_cache = 1; /* unnamed: a stream's first result must be its own (single-row mode) */
    enqueue(s, op);
    return 0;
}

int h2o_db_resume(h2o_db_session_t *s)
{
    if (!usable(s))
        return -1;
    return h2o_db_pool_resume(&s->place);
}
