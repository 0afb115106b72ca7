/*
 * Pools: placement of statements on connections, the wait queue, and healing.
 *
 * Placement of a session's next statement (docs/architecture.md):
 *   - inside a transaction: on the connection the transaction pinned;
 *   - BEGIN: pins a connection with nothing in flight (after the session's own
 *     earlier statements are answered);
 *   - autocommit, while the session has statements in flight: on the same
 *     connection, so that one session's statements run and answer in order;
 *   - otherwise (choose_conn), when the driver pipelines: on the first open
 *     connection that is below `pipeline-depth` and whose oldest statement is
 *     young (no head-of-line blocking behind a slow statement), idle or not;
 *     when it does not (MySQL): on an idle connection, else at `max` on the
 *     shared one with the fewest in flight under the same conditions;
 *   - else the session waits in the pool's FIFO (at most `queue` waiting, each at
 *     most `acquire-timeout`) and a connection is opened if the pool is below
 *     `max`; whichever can take the statement first, an open connection or the
 *     new one, carries it.
 *
 * Healing: a connection that breaks fails its statements in flight (UNAVAILABLE)
 * and is replaced when needed. When a connect fails and no connection is up, the
 * database is "down": waiting statements fail at once, new ones fail fast until
 * the back-off (50 ms doubling to 250 ms) allows the next attempt.
 *
 * pool_housekeeping.c keeps the pool over time: the retry after a failure, idle and
 * old connections, min, leak reports, the gauges; and creates and destroys pools.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pool.h"

/* a shared connection takes more statements only while its oldest one is this young; lower, a
 * backend merely descheduled on a busy machine looks slow, and the extra connections opened for
 * it make the contention worse (docs/architecture.md) */
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 250

/* The cleanup ROLLBACK of a transaction whose request ended: its ring entry points here. */
static h2o_db_stmt_t cleanup_op = {.kind = H2O_DB_OP_ROLLBACK, .wire = {.kind = H2O_DB_WIRE_ROLLBACK}};

static void conn_close(h2o_db_conn_t *conn);
static void on_statement_timeout(h2o_timeout_entry_t *entry);
static void abandon_pinned(h2o_db_place_t *s);

/* Whether op needs a connection with nothing else on it: a BEGIN, a streamed autocommit statement. */
static int needs_own_conn(const h2o_db_stmt_t *op)
{
    return op->kind == H2O_DB_OP_BEGIN || (op->stream && !op->in_txn);
}

/* Whether op ends its session's transaction. */
static int ends_txn(const h2o_db_stmt_t *op)
{
    return op->kind == H2O_DB_OP_COMMIT || op->kind == H2O_DB_OP_ROLLBACK;
}

/* The session's transaction lets go of its connection; returns that connection. */
static h2o_db_conn_t *unpin(h2o_db_place_t *s)
{
    h2o_db_conn_t *conn = s->pinned;
    s->pinned = NULL;
    s->stream_pin = 0;
    conn->pinned = NULL;
    H2O_DB_DEC(conn->pool->num_pinned);
    return conn;
}

/* The pool's view of the transaction follows a statement that leaves it answered. */
static void settle(h2o_db_place_t *s, const h2o_db_stmt_t *op, h2o_db_status_t status)
{
    if (op->kind == H2O_DB_OP_BEGIN)
        s->begin_in_flight = 0;
    if (status != H2O_DB_OK && (op->in_txn || op->kind == H2O_DB_OP_BEGIN))
        s->txn_failed = 1;
    if (ends_txn(op))
        s->txn_failed = 0, s->txn_lost = 0;
}

/* Hands op back answered; returns what the place's `answer` returns (-1: the place is gone). */
static int answer(h2o_db_stmt_t *op, h2o_db_result_t *result)
{
    h2o_db_place_t *s = op->place;
    h2o_db_result_t rewritten;
    settle(s, op, result->status);
    if (op->failed_commit && result->status == H2O_DB_OK) {
        h2o_db_result_init_error(&rewritten, H2O_DB_SQL_ERROR, "25P02",
                                 "the transaction had failed, so it was rolled back instead of committed");
        result = &rewritten;
    }
    return s->cbs->answer(op, result);
}

/* Takes the queued op off its place and hands it back to be answered without the database. */
static void answer_later(h2o_db_stmt_t *op, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    h2o_db_place_t *s = op->place;
    h2o_linklist_unlink(&op->link);
    --s->num_pending;
    settle(s, op, status);
    s->cbs->answer_later(op, status, sqlstate, message);
}

/* ---- connections ---- */

static const h2o_db_pipe_cbs_t pipe_cbs;

static h2o_db_conn_t *conn_new(h2o_db_pool_t *pool)
{
    h2o_db_pool_config_t *cfg = &pool->bind->pool;
    uint64_t now = h2o_db_now(pool->thread);
    h2o_db_conn_t *conn = calloc(1, sizeof(*conn));
    conn->pool = pool;
    conn->state = H2O_DB_CONN_CONNECTING;
    h2o_linklist_init_anchor(&conn->waiters);
    conn->ring.capacity = cfg->pipeline_depth + 1; /* + the cleanup ROLLBACK */
    conn->ring.ops = calloc(conn->ring.capacity, sizeof(*conn->ring.ops));
    conn->ring.sent_at = calloc(conn->ring.capacity, sizeof(*conn->ring.sent_at));
    conn->created_at = now;
    conn->idle_since = now;
    if (cfg->max_lifetime != 0) {
        /* ±10% jitter, so that connections opened together do not all retire together */
        uint64_t jitter = cfg->max_lifetime / 5;
        conn->retire_at = now + cfg->max_lifetime - jitter / 2 + (jitter != 0 ? (uint64_t)rand() % jitter : 0);
    }
    return conn;
}

static void conn_free(h2o_db_conn_t *conn)
{
    free(conn->ring.ops);
    free(conn->ring.sent_at);
    free(conn);
}

h2o_db_conn_t *h2o_db_pool_open_conn(h2o_db_pool_t *pool)
{
    h2o_db_bind_t *bind = pool->bind;
    if (bind->pool.max_total != 0) {
        unsigned n = __atomic_add_fetch(&bind->total_conns, 1, __ATOMIC_RELAXED);
        if (n > bind->pool.max_total) {
            __atomic_sub_fetch(&bind->total_conns, 1, __ATOMIC_RELAXED);
            return NULL;
        }
    } else {
        __atomic_add_fetch(&bind->total_conns, 1, __ATOMIC_RELAXED);
    }
    H2O_DB_INC(pool->num_conns);
    H2O_DB_INC(pool->num_connecting);
    H2O_DB_INC(pool->stats.connects);
    h2o_db_conn_t *conn = conn_new(pool);
    h2o_db_pipe_t proto = {bind, pool->thread, &pipe_cbs, &pool->stats.driver, conn};
    DRIVER_CALL(pool, conn->pipe = bind->driver->open(&proto));
    h2o_linklist_insert(&pool->conns, &conn->link);
    return conn;
}

/* Sends op on conn and records it in the ring. */
static void conn_send(h2o_db_conn_t *conn, h2o_db_stmt_t *op)
{
    h2o_db_pool_t *pool = conn->pool;
    size_t idx = (conn->ring.head + conn->ring.count) % conn->ring.capacity;
    uint64_t now = h2o_db_now(pool->thread);
    if (conn->ring.count != 0)
        H2O_DB_INC(pool->stats.pipelined);
    conn->ring.ops[idx] = op;
    conn->ring.sent_at[idx] = now;
    if (conn->ring.count++ == 0)
        h2o_db_pool_changed(pool);
    ++conn->statements;
    H2O_DB_INC(pool->stats.statements);
    if (op != &cleanup_op) {
        h2o_db_place_t *s = op->place;
        h2o_linklist_unlink(&op->link);
        --s->num_pending;
        op->conn = conn;
        op->ring_index = idx;
        ++s->outstanding;
        s->conn = conn;
        H2O_DB_INC(pool->stats.acquires);
        if (pool->bind->pool.statement_timeout != 0)
            h2o_timeout_link(pool->thread->loop, &pool->statement_timeout, &op->timeout);
        /* the wire statement: a failed transaction's COMMIT goes as ROLLBACK (answered as the error
         * it is, 25P02); the cleanup ROLLBACK's is fixed */
        static const h2o_db_wire_kind_t kinds[] = {[H2O_DB_OP_QUERY] = H2O_DB_WIRE_QUERY,
                                                   [H2O_DB_OP_BEGIN] = H2O_DB_WIRE_BEGIN,
                                                   [H2O_DB_OP_COMMIT] = H2O_DB_WIRE_COMMIT,
                                                   [H2O_DB_OP_ROLLBACK] = H2O_DB_WIRE_ROLLBACK};
        op->wire = (h2o_db_wire_t){kinds[op->kind], op->sql, op->sql_len, op->nparams, op->params, op->no_cache, op->stream};
        if (op->kind == H2O_DB_OP_COMMIT && op->failed_commit)
            op->wire.kind = H2O_DB_WIRE_ROLLBACK, op->wire.sql = NULL;
        op->wire.read_only = op->read_only;
    }
    DRIVER_CALL(pool, pool->bind->driver->send(conn->pipe, &op->wire));
}

/* ---- waiting ---- */

static void stop_waiting(h2o_db_place_t *s)
{
    if (!h2o_linklist_is_linked(&s->wait_link))
        return;
    h2o_linklist_unlink(&s->wait_link);
    H2O_DB_DEC(s->pool->num_waiting);
    s->pool->num_waiting_any -= s->waits_any;
    s->pool->num_waiting_begin -= s->waits_begin;
    s->waits_any = s->waits_begin = 0;
    if (h2o_timeout_is_linked(&s->wait_timeout))
        h2o_timeout_unlink(&s->wait_timeout);
}

static h2o_db_stmt_t *head_op(h2o_db_place_t *s)
{
    return h2o_linklist_is_empty(&s->pending) ? NULL : H2O_STRUCT_FROM_MEMBER(h2o_db_stmt_t, link, s->pending.next);
}

static void fail_head(h2o_db_place_t *s, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    h2o_db_stmt_t *op = head_op(s);
    if (op == NULL)
        return;
    int unsent_end = ends_txn(op) && s->pinned != NULL;
    H2O_DB_INC(s->pool->stats.errors);
    answer_later(op, status, sqlstate, message);
    if (unsent_end)
        abandon_pinned(s); /* its COMMIT/ROLLBACK was not sent: roll back there, unpin */
}

/* Makes s wait (in `list`: the pool's FIFO or a connection's waiters) unless limits say no. */
static int start_waiting(h2o_db_place_t *s, h2o_linklist_t *list)
{
    h2o_db_pool_t *pool = s->pool;
    if (h2o_linklist_is_linked(&s->wait_link))
        return 0;
    if (pool->bind->pool.acquire_timeout == 0) {
        H2O_DB_INC(pool->stats.acquire_timeouts);
        fail_head(s, H2O_DB_BUSY, "53300", "no database connection is free (acquire-timeout is 0)");
        return -1;
    }
    if (pool->num_waiting >= pool->bind->pool.queue) {
        H2O_DB_INC(pool->stats.queue_full);
        fail_head(s, H2O_DB_BUSY, "53300", "too many statements are waiting for a database connection (pool queue is full)");
        return -1;
    }
    h2o_linklist_insert(list, &s->wait_link);
    H2O_DB_INC(pool->num_waiting);
    if (list == &pool->waiting) {
        s->waits_any = 1;
        s->waits_begin = needs_own_conn(head_op(s));
        pool->num_waiting_any += 1;
        pool->num_waiting_begin += s->waits_begin;
    }
    H2O_DB_INC(pool->stats.waits);
    h2o_timeout_link(pool->thread->loop, &pool->acquire_timeout, &s->wait_timeout);
    return 0;
}

static void on_wait_timeout(h2o_timeout_entry_t *entry)
{
    h2o_db_place_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_place_t, wait_timeout, entry);
    h2o_db_pool_t *pool = s->pool;
    stop_waiting(s);
    H2O_DB_INC(pool->stats.acquire_timeouts);
    fail_head(s, H2O_DB_BUSY, "53300", "timed out waiting for a database connection (acquire-timeout)");
}

void h2o_db_pool_fail_waiting(h2o_db_pool_t *pool, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    while (!h2o_linklist_is_empty(&pool->waiting)) {
        h2o_db_place_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_place_t, wait_link, pool->waiting.next);
        stop_waiting(s);
        fail_head(s, status, sqlstate, message);
    }
}

/* ---- placement ---- */
static void fail_down(h2o_db_place_t *s)
{
    h2o_db_pool_t *pool = s->pool;
    fail_head(s, H2O_DB_UNAVAILABLE, pool->last_sqlstate[0] != '\0' ? pool->last_sqlstate : "08001",
              pool->last_error[0] != '\0' ? pool->last_error : "the database is unavailable");
}

/* Places one autocommit statement; returns 1 when sent, 0 when the session now waits (or the
 * statement was answered without the database). */
static int place_autocommit(h2o_db_place_t *s, h2o_db_stmt_t *op)
{
    h2o_db_pool_t *pool = s->pool;
    h2o_db_conn_t *conn;

    if (s->outstanding != 0) {
        conn = s->conn;
        if (h2o_db_conn_has_room(conn)) {
            conn_send(conn, op);
            return 1;
        }
        start_waiting(s, &conn->waiters);
        return 0;
    }
    if ((conn = h2o_db_pool_choose_conn(pool)) != NULL) {
        conn_send(conn, op);
        return 1;
    }
    if (pool->down && pool->num_connecting == 0 && h2o_db_pool_find_shared(pool, 0) == NULL &&
        h2o_db_now(pool->thread) - pool->last_failure_at < pool->backoff_ms) {
        fail_down(s);
        return 0;
    }
    if (start_waiting(s, &pool->waiting) != 0)
        return 0;
    if (h2o_db_pool_maybe_connect(pool) != 0) {
        stop_waiting(s);
        fail_down(s);
    }
    return 0;
}

/* BEGIN, or a streamed autocommit statement: pin a connection with nothing in flight. */
static int place_own(h2o_db_place_t *s, h2o_db_stmt_t *op)
{
    h2o_db_pool_t *pool = s->pool;
    h2o_db_conn_t *conn = h2o_db_pool_find_idle(pool);
    if (conn == NULL) {
        if (pool->down && pool->num_connecting == 0 && h2o_db_now(pool->thread) - pool->last_failure_at < pool->backoff_ms) {
            fail_down(s);
            return 0;
        }
        if (start_waiting(s, &pool->waiting) == 0 && h2o_db_pool_maybe_connect(pool) != 0) {
            stop_waiting(s);
            fail_down(s);
        }
        return 0;
    }
    conn->pinned = s;
    s->pinned = conn;
    s->pinned_at = h2o_db_now(pool->thread);
    s->txn_lost = 0;
    H2O_DB_INC(pool->num_pinned);
    if (op->kind == H2O_DB_OP_BEGIN)
        s->begin_in_flight = 1;
    else
        s->stream_pin = 1;
    conn_send(conn, op);
    return 1;
}

void h2o_db_pool_pump(h2o_db_place_t *s)
{
    h2o_db_stmt_t *op;

    while ((op = head_op(s)) != NULL) {
        if (s->cbs->hold(s, op))
            return; /* the layer above holds it: its earlier answers go first, or a commit runs */
        if (op->kind == H2O_DB_OP_BARRIER) {
            if (s->outstanding != 0)
                return;
            answer_later(op, H2O_DB_OK, NULL, NULL);
            continue;
        }
        if (s->pool->closing) {
            fail_head(s, H2O_DB_UNAVAILABLE, "57P01", "the server is shutting down");
            continue;
        }
        if (op->in_txn && op->kind != H2O_DB_OP_BEGIN) {
            if (s->begin_in_flight)
                return; /* not before the BEGIN is known to have begun: after a failed one they
                         * would run outside any transaction (answered 25P02 below instead) */
            if (s->pinned == NULL) {
                /* the BEGIN failed, or the transaction's connection broke */
                if (s->outstanding != 0)
                    return;
                if (op->kind == H2O_DB_OP_ROLLBACK) {
                    answer_later(op, H2O_DB_OK, NULL, NULL);
                } else if (s->txn_lost) {
                    fail_head(s, H2O_DB_UNAVAILABLE, "08006", "the transaction's database connection was lost");
                } else {
                    fail_head(s, H2O_DB_SQL_ERROR, "25P02",
                              "current transaction is aborted, commands ignored until end of transaction block");
                }
                continue;
            }
            if (op->stream && s->outstanding != 0)
                return; /* a stream starts on a connection with nothing else in flight */
            if (!h2o_db_conn_has_room(s->pinned)) {
                if (s->pinned->state == H2O_DB_CONN_READY)
                    start_waiting(s, &s->pinned->waiters);
                return;
            }
            if (op->kind == H2O_DB_OP_COMMIT && s->txn_failed)
                op->failed_commit = 1; /* sent as ROLLBACK by the driver, answered as an error */
            stop_waiting(s);
            conn_send(s->pinned, op);
            continue;
        }
        if (needs_own_conn(op)) {
            if (s->outstanding != 0 || s->pinned != NULL)
                return; /* earlier statements first; then a connection of its own */
            if (!place_own(s, op))
                return;
            stop_waiting(s);
            continue;
        }
        /* autocommit */
        if (s->pinned != NULL) {
            /* the COMMIT/ROLLBACK is still in flight there: keep the order */
            if (!h2o_db_conn_has_room(s->pinned))
                return;
            conn_send(s->pinned, op);
            continue;
        }
        if (!place_autocommit(s, op))
            return;
        stop_waiting(s);
    }
}

void h2o_db_pool_serve_waiting(h2o_db_pool_t *pool)
{
    size_t budget = pool->num_waiting + 1;
    h2o_linklist_t *n = pool->waiting.next;
    while (n != &pool->waiting && budget-- > 0) {
        h2o_linklist_t *next = n->next;
        h2o_db_place_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_place_t, wait_link, n);
        h2o_db_pool_pump(s);
        if (h2o_db_pool_find_shared(pool, 1) == NULL)
            break; /* no connection can take anything now */
        n = next;
    }
    if (!h2o_linklist_is_empty(&pool->waiting))
        h2o_db_pool_maybe_connect(pool);
}

/* A connection made progress: give its room to who waits for it. */
static void conn_progress(h2o_db_conn_t *conn)
{
    h2o_db_pool_t *pool = conn->pool;
    if (conn->state != H2O_DB_CONN_READY)
        return;
    if (conn->ring.count == 0)
        h2o_db_pool_changed(pool);
    while (!h2o_linklist_is_empty(&conn->waiters) && h2o_db_conn_has_room(conn)) {
        h2o_db_place_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_place_t, wait_link, conn->waiters.next);
        stop_waiting(s);
        h2o_db_pool_pump(s);
        if (h2o_linklist_is_linked(&s->wait_link) && s->wait_link.next == &conn->waiters)
            break; /* it waits here again (no room after all) */
    }
    if (conn->pinned != NULL) {
        h2o_db_pool_pump(conn->pinned);
        return;
    }
    if (conn->ring.count == 0 && !conn->cleaning)
        conn->idle_since = h2o_db_now(pool->thread);
    h2o_db_pool_serve_waiting(pool);
}

/* ---- driver callbacks (driver.h) ---- */

static void connected_cb(h2o_db_pipe_t *pipe)
{
    h2o_db_conn_t *conn = pipe->data;
    h2o_db_pool_t *pool = conn->pool;
    ASSERT_NOT_IN_DRIVER(pool);
    if (conn->state != H2O_DB_CONN_CONNECTING)
        return; /* the pool gave up on it meanwhile (it is shutting down): its close is on the way */
    conn->state = H2O_DB_CONN_READY;
    H2O_DB_DEC(pool->num_connecting);
    h2o_db_pool_changed(pool);
    if (pool->down)
        H2O_DB_INC(pool->stats.reconnects);
    H2O_DB_SET(pool->down, 0);
    pool->backoff_ms = 0;
    conn->idle_since = h2o_db_now(pool->thread);
    h2o_db_pool_serve_waiting(pool);
}

static int any_ready(h2o_db_pool_t *pool)
{
    for (h2o_linklist_t *n = pool->conns.next; n != &pool->conns; n = n->next)
        if (H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, n)->state == H2O_DB_CONN_READY)
            return 1;
    return 0;
}

/* The connection of s's transaction broke: the transaction is lost. */
static void lose_transaction(h2o_db_place_t *s, const char *sqlstate)
{
    unpin(s);
    s->txn_lost = 1;
    s->txn_failed = 1;
    s->cbs->txn_lost(s, sqlstate);
}

/* The connection pinned to s broke: its transaction is lost (a stream's pin just ends). */
static void lose_pin(h2o_db_place_t *s, const char *sqlstate)
{
    if (s->stream_pin) {
        unpin(s);
        return;
    }
    lose_transaction(s, sqlstate);
}

/* Logs why a connection failed: "cannot connect" while connecting (not again while the pool is
 * down), "connection ... lost" otherwise; nothing while the pool closes. */
static void failed_cb(h2o_db_pipe_t *pipe, const char *sqlstate, const char *message)
{
    h2o_db_conn_t *conn = pipe->data;
    h2o_db_pool_t *pool = conn->pool;
    ASSERT_NOT_IN_DRIVER(pool);
    if (conn->state == H2O_DB_CONN_CLOSED)
        return;
    if (message == NULL)
        message = "connection failure";
    if (conn->state == H2O_DB_CONN_CONNECTING && !pool->down && !pool->closing)
        fprintf(stderr, "h2o-db: [%s] cannot connect to %s: %s\n", pool->bind->key, pool->bind->url.display, message);
    else if (conn->state != H2O_DB_CONN_CONNECTING && !pool->closing)
        fprintf(stderr, "h2o-db: [%s] connection to %s lost: %s\n", pool->bind->key, pool->bind->url.display, message);
    h2o_db_conn_failed(conn, sqlstate, message);
}

void h2o_db_conn_failed(h2o_db_conn_t *conn, const char *sqlstate, const char *message)
{
    h2o_db_pool_t *pool = conn->pool;
    int was_connecting = conn->state == H2O_DB_CONN_CONNECTING;
    if (conn->state == H2O_DB_CONN_CLOSED)
        return;
    if (sqlstate == NULL || strlen(sqlstate) != 5)
        sqlstate = was_connecting ? "08001" : "08006";
    snprintf(pool->last_error, sizeof(pool->last_error), "%s", message != NULL ? message : "connection failure");
    snprintf(pool->last_sqlstate, sizeof(pool->last_sqlstate), "%s", sqlstate);
    conn->state = H2O_DB_CONN_CLOSED;

    if (was_connecting) {
        H2O_DB_DEC(pool->num_connecting);
        H2O_DB_INC(pool->stats.connect_failures);
    } else {
        H2O_DB_INC(pool->stats.closed_broken);
    }

    /* statements in flight: answered as lost (their requests may end inside the callbacks) */
    h2o_db_result_t err;
    h2o_db_result_init_error(&err, H2O_DB_UNAVAILABLE, sqlstate, pool->last_error);
    while (conn->ring.count != 0) {
        h2o_db_stmt_t *op = conn->ring.ops[conn->ring.head];
        conn->ring.head = (conn->ring.head + 1) % conn->ring.capacity;
        --conn->ring.count;
        if (op == NULL || op == &cleanup_op)
            continue;
        h2o_db_place_t *s = op->place;
        op->conn = NULL;
        if (h2o_timeout_is_linked(&op->timeout))
            h2o_timeout_unlink(&op->timeout);
        --s->outstanding;
        if (s->outstanding == 0 && s->conn == conn)
            s->conn = NULL;
        if (s->pinned == conn)
            lose_pin(s, sqlstate);
        H2O_DB_INC(pool->stats.errors);
        int alive = answer(op, &err) == 0;
        /* what waited behind its statements (a BEGIN, a BARRIER) goes on */
        if (alive && s->outstanding == 0 && s->pinned == NULL && !h2o_linklist_is_empty(&s->pending))
            h2o_db_pool_pump(s);
    }
    if (conn->pinned != NULL) {
        h2o_db_place_t *s = conn->pinned;
        lose_pin(s, sqlstate);
        if (!h2o_linklist_is_empty(&s->pending))
            h2o_db_pool_pump(s);
    }
    /* sessions waiting for room on this connection now wait for any */
    while (!h2o_linklist_is_empty(&conn->waiters)) {
        h2o_db_place_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_place_t, wait_link, conn->waiters.next);
        stop_waiting(s);
        h2o_db_pool_pump(s);
    }
    conn_close(conn);

    if (was_connecting && !any_ready(pool)) {
        H2O_DB_SET(pool->down, 1);
        pool->last_failure_at = h2o_db_now(pool->thread);
        pool->backoff_ms = pool->backoff_ms == 0 ? BACKOFF_MIN_MS : pool->backoff_ms * 2;
        if (pool->backoff_ms > BACKOFF_MAX_MS)
            pool->backoff_ms = BACKOFF_MAX_MS;
        if (pool->num_connecting == 0)
            h2o_db_pool_fail_waiting(pool, H2O_DB_UNAVAILABLE, sqlstate, pool->last_error);
    }
    h2o_db_pool_retry_later(pool);
}

static void conn_result(h2o_db_conn_t *conn, h2o_db_result_t *result);

static int result_cb(h2o_db_pipe_t *pipe, h2o_db_result_t *result)
{
    h2o_db_conn_t *conn = pipe->data;
    ASSERT_NOT_IN_DRIVER(conn->pool);
    if (conn->state == H2O_DB_CONN_CLOSED)
        return -1;
    conn_result(conn, result);
    return conn->state == H2O_DB_CONN_CLOSED ? -1 : 0;
}

static void conn_result(h2o_db_conn_t *conn, h2o_db_result_t *result)
{
    h2o_db_pool_t *pool = conn->pool;
    if (conn->ring.count == 0) {
        /* a result nobody asked for: the connection is out of step, never reused */
        h2o_db_conn_failed(conn, "08P01", "the database answered a statement that was not sent");
        return;
    }
    h2o_db_stmt_t *op = conn->ring.ops[conn->ring.head];
    conn->ring.ops[conn->ring.head] = NULL;
    conn->ring.head = (conn->ring.head + 1) % conn->ring.capacity;
    --conn->ring.count;
    conn->paused = 0;

    if (op == &cleanup_op) {
        /* the ROLLBACK after a request ended inside a transaction; one that did not succeed (the
         * cancel of the statement before it may have hit it instead: MySQL's KILL QUERY answers
         * 70100) leaves the transaction's state unknown: the connection is closed, never reused */
        conn->cleaning = conn->cancelling;
        if (result->status != H2O_DB_OK) {
            h2o_db_conn_failed(conn, result->sqlstate, result->error);
            return;
        }
    } else if (op != NULL) {
        h2o_db_place_t *s = op->place;
        op->conn = NULL;
        if (h2o_timeout_is_linked(&op->timeout))
            h2o_timeout_unlink(&op->timeout);
        --s->outstanding;
        if (s->outstanding == 0 && s->conn == conn && s->pinned != conn)
            s->conn = NULL;
        if ((ends_txn(op) || (op->kind == H2O_DB_OP_BEGIN && result->status != H2O_DB_OK) || (op->stream && s->stream_pin)) &&
            s->pinned == conn) {
            /* the transaction ended, or never began; the stream is over */
            unpin(s);
            if (s->outstanding == 0)
                s->conn = NULL;
        }
        h2o_db_result_t ok;
        if (op->stopped && result->status != H2O_DB_UNAVAILABLE) {
            /* its end after the stop (the cancel's 57014, or the statement ended first) */
            h2o_db_result_init_ok(&ok, 0);
            result = &ok;
        }
        if (result->status != H2O_DB_OK || op->failed_commit)
            H2O_DB_INC(pool->stats.errors);
        if (result->status == H2O_DB_TIMEOUT)
            H2O_DB_INC(pool->stats.timeouts); /* the server's statement_timeout answered first */
        int alive = answer(op, result) == 0;
        if (alive && !h2o_linklist_is_empty(&s->pending) && s->pinned == NULL && s->outstanding == 0)
            h2o_db_pool_pump(s);
    }
    if (conn->state == H2O_DB_CONN_READY && conn->cleaning && conn->ring.count == 0 && conn->pinned == NULL && !conn->cancelling)
        conn->cleaning = 0;
    conn_progress(conn);
}

/* ---- closing ---- */

static void close_later_cb(h2o_db_later_t *later);

struct close_later {
    h2o_db_later_t later;
    h2o_db_conn_t *conn;
};

static void close_later_cb(h2o_db_later_t *later)
{
    struct close_later *cl = (struct close_later *)later;
    h2o_db_conn_t *conn = cl->conn;
    free(cl);
    h2o_db_pool_t *pool = conn->pool;
    DRIVER_CALL(pool, pool->bind->driver->close(conn->pipe));
    conn_free(conn); /* nothing refers to it any more: the driver calls back no more after close */
}

/* Takes conn out of the pool now; the driver closes it on the next iteration (the driver's
 * callbacks may still be on the stack). Statements in flight must have been answered. */
static void conn_close(h2o_db_conn_t *conn)
{
    h2o_db_pool_t *pool = conn->pool;
    if (h2o_linklist_is_linked(&conn->link)) {
        h2o_linklist_unlink(&conn->link);
        H2O_DB_DEC(pool->num_conns);
        __atomic_sub_fetch(&pool->bind->total_conns, 1, __ATOMIC_RELAXED);
    }
    conn->state = H2O_DB_CONN_CLOSED;
    if (!pool->closing)
        h2o_db_pool_changed(pool);
    struct close_later *cl = calloc(1, sizeof(*cl));
    cl->later.cb = close_later_cb;
    cl->conn = conn;
    h2o_db_later(pool->thread, &cl->later);
}

void h2o_db_conn_retire(h2o_db_conn_t *conn, uint64_t *counter)
{
    H2O_DB_INC(*counter);
    conn_close(conn);
}

/* statement-timeout ran out: answer TIMEOUT now and drop the late result (a shared connection is
 * never cancelled: the cancel could hit another request's statement; the server's own
 * statement_timeout, set when the connection opened, stops the statement there) */
static void on_statement_timeout(h2o_timeout_entry_t *entry)
{
    h2o_db_stmt_t *op = H2O_STRUCT_FROM_MEMBER(h2o_db_stmt_t, timeout, entry);
    h2o_db_conn_t *conn = op->conn;
    h2o_db_place_t *s = op->place;
    h2o_db_pool_t *pool = s->pool;
    if (conn == NULL)
        return;
    conn->ring.ops[op->ring_index] = NULL;
    op->conn = NULL;
    --s->outstanding;
    if (s->outstanding == 0 && s->conn == conn && s->pinned != conn)
        s->conn = NULL;
    h2o_db_pool_drain(conn);
    if ((ends_txn(op) || (op->stream && s->stream_pin)) && s->pinned == conn) {
        abandon_pinned(s); /* the end of the transaction will not be heard of: roll back, unpin */
        if (s->outstanding == 0)
            s->conn = NULL;
    }
    H2O_DB_INC(pool->stats.timeouts);
    H2O_DB_INC(pool->stats.errors);
    h2o_db_result_t r;
    h2o_db_result_init_error(&r, H2O_DB_TIMEOUT, "57014", "canceling statement due to statement timeout (pool.statement-timeout)");
    if (answer(op, &r) == 0 && s->outstanding == 0 && !h2o_linklist_is_empty(&s->pending))
        h2o_db_pool_pump(s);
}

/* ---- the session ended ---- */

void h2o_db_pool_detach(h2o_db_place_t *s, h2o_linklist_t *in_flight, h2o_linklist_t *queued)
{
    h2o_db_pool_t *pool = s->pool;
    stop_waiting(s);
    /* statements in flight: their results will be dropped (a session's are on one connection,
     * so ring order is issue order) */
    for (h2o_linklist_t *n = pool->conns.next; n != &pool->conns && s->outstanding != 0; n = n->next) {
        h2o_db_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, n);
        for (size_t i = 0; i < conn->ring.count; ++i) {
            size_t idx = (conn->ring.head + i) % conn->ring.capacity;
            h2o_db_stmt_t *op = conn->ring.ops[idx];
            if (op != NULL && op != &cleanup_op && op->place == s) {
                conn->ring.ops[idx] = NULL;
                if (h2o_timeout_is_linked(&op->timeout))
                    h2o_timeout_unlink(&op->timeout);
                op->conn = NULL;
                --s->outstanding;
                h2o_linklist_insert(in_flight, &op->link);
                h2o_db_pool_drain(conn);
            }
        }
    }
    assert(s->outstanding == 0);
    s->conn = NULL;
    if (s->pinned != NULL)
        abandon_pinned(s);
    h2o_linklist_insert_list(queued, &s->pending);
    s->num_pending = 0;
    s->begin_in_flight = s->txn_failed = s->txn_lost = 0;
}

/* The session lets go of its transaction's connection without hearing how it ended (its request
 * ended, its COMMIT timed out or was never sent): what still runs there is cancelled, the
 * transaction rolled back, and then the connection is clean again. */
static void abandon_pinned(h2o_db_place_t *s)
{
    int stream = s->stream_pin;
    h2o_db_conn_t *conn = unpin(s);
    if (conn->state != H2O_DB_CONN_READY)
        return;
    /* only this session's statements can run there */
    if (conn->ring.count != 0)
        h2o_db_pool_cancel(conn);
    if (stream) {
        /* no transaction to roll back: clean once what was in flight is over */
        conn->cleaning = conn->ring.count != 0 || conn->cancelling;
        return;
    }
    conn->cleaning = 1;
    conn_send(conn, &cleanup_op);
}

static void cancelled_cb(h2o_db_pipe_t *pipe)
{
    h2o_db_conn_t *conn = pipe->data;
    ASSERT_NOT_IN_DRIVER(conn->pool);
    conn->cancelling = 0;
    if (conn->state != H2O_DB_CONN_READY)
        return;
    if (conn->ring.count == 0 && conn->pinned == NULL)
        conn->cleaning = 0;
    conn_progress(conn);
}

static const h2o_db_pipe_cbs_t pipe_cbs = {
    .connected = connected_cb, .failed = failed_cb, .result = result_cb, .row = h2o_db_pool_row_cb, .cancelled = cancelled_cb};

/* ---- places ---- */

void h2o_db_place_init(h2o_db_place_t *s, h2o_db_pool_t *pool, const h2o_db_place_cbs_t *cbs)
{
    memset(s, 0, sizeof(*s));
    s->pool = pool;
    s->cbs = cbs;
    h2o_linklist_init_anchor(&s->pending);
    s->wait_timeout.cb = on_wait_timeout;
}

void h2o_db_pool_enqueue(h2o_db_place_t *s, h2o_db_stmt_t *op, int urgent)
{
    h2o_db_pool_config_t *cfg = &s->pool->bind->pool;
    op->place = s;
    op->conn = NULL;
    op->failed_commit = 0;
    op->timeout = (h2o_timeout_entry_t){.cb = on_statement_timeout};
    h2o_linklist_t *pos = &s->pending;
    if (urgent) {
        for (h2o_linklist_t *n = s->pending.next; n != &s->pending; n = n->next)
            if (H2O_STRUCT_FROM_MEMBER(h2o_db_stmt_t, link, n)->after_commit) {
                pos = n;
                break;
            }
    }
    h2o_linklist_insert(pos, &op->link);
    ++s->num_pending;
    if (s->num_pending > (cfg->queue > cfg->pipeline_depth ? cfg->queue : cfg->pipeline_depth)) {
        H2O_DB_INC(s->pool->stats.queue_full);
        H2O_DB_INC(s->pool->stats.errors);
        answer_later(op, H2O_DB_BUSY, "53300", "too many statements queued on one session (pool queue)");
        return;
    }
    h2o_db_pool_pump(s);
}

void h2o_db_pool_count_timeout(h2o_db_pool_t *pool)
{
    H2O_DB_INC(pool->stats.timeouts);
}
