/*
 * PostgreSQL: libpq's non-blocking API on the thread's libuv loop.
 *
 * One connection's life, top to bottom:
 *   resolve   host names go through uv_getaddrinfo (libpq would resolve them
 *             synchronously) and reach libpq as hostaddr=      (postgres_connect.c)
 *   connect   PQconnectStartParams + PQconnectPoll driven by a uv_poll on PQsocket
 *             (re-created whenever libpq switches sockets, e.g. between hosts)
 *   setup     statement_timeout and on-connect, with the simple protocol
 *   ready     pipeline mode: each statement is PQsendQueryParams + PQpipelineSync,
 *             so that one failing statement never affects the next; results are
 *             read in order and handed to the pool one statement at a time (here)
 *
 * A connection whose socket breaks, or whose results stop making sense, is
 * failed and closed; it is never reused.
 */
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/postgres.h"

/* PQcancel blocks (it opens a connection of its own): it runs on libuv's thread pool */
struct cancel_work {
    uv_work_t work;
    PGcancel *cancel;
    h2o_db_pg_conn_t *conn; /* NULL once the connection is gone */
};

static void on_poll(uv_poll_t *poll, int status, int events);
static void process_results(h2o_db_pg_conn_t *c);
static void on_flush(h2o_db_flusher_t *flusher);
static void on_evict(void *ctx, h2o_db_cached_t *stmt);
static void on_resume_later(h2o_db_later_t *later);

/* ---- results ---- */

static const char *pg_column_name(const h2o_db_result_t *r, size_t col)
{
    return PQfname((PGresult *)r->impl, (int)col);
}

static const char *pg_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    PGresult *res = (PGresult *)r->impl;
    if (PQgetisnull(res, (int)row, (int)col))
        return NULL;
    *len = (size_t)PQgetlength(res, (int)row, (int)col);
    return PQgetvalue(res, (int)row, (int)col);
}

static h2o_db_type_t pg_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    PGresult *res = (PGresult *)r->impl;
    if (PQgetisnull(res, (int)row, (int)col))
        return H2O_DB_TYPE_NULL;
    switch (PQftype(res, (int)col)) {
    case 16: /* bool */
        return H2O_DB_TYPE_BOOL;
    case 20: /* int8 */
    case 21: /* int2 */
    case 23: /* int4 */
    case 26: /* oid */
    case 28: /* xid */
        return H2O_DB_TYPE_INT;
    case 700: /* float4 */
    case 701: /* float8 */
        return H2O_DB_TYPE_FLOAT;
    case 1700: /* numeric */
        return H2O_DB_TYPE_NUMERIC;
    case 114:  /* json */
    case 3802: /* jsonb */
        return H2O_DB_TYPE_JSON;
    case 17: /* bytea */
        return H2O_DB_TYPE_BYTES;
    default:
        return H2O_DB_TYPE_TEXT;
    }
}

static const h2o_db_result_class_t pg_result_class = {pg_column_name, pg_value, pg_type};

/* Fills r from a PGresult (r borrows it). */
static void result_from_pg(h2o_db_result_t *r, PGresult *res)
{
    switch (PQresultStatus(res)) {
    case PGRES_TUPLES_OK:
    case PGRES_SINGLE_TUPLE:
        h2o_db_result_init_ok(r, 0);
        r->rows = (size_t)PQntuples(res);
        r->columns = (size_t)PQnfields(res);
        r->cls = &pg_result_class;
        r->impl = res;
        r->affected = strtoull(PQcmdTuples(res), NULL, 10);
        break;
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        h2o_db_result_init_ok(r, strtoull(PQcmdTuples(res), NULL, 10));
        break;
    case PGRES_PIPELINE_ABORTED:
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "25P02", "the statement was not run: an earlier one in its pipeline failed");
        break;
    default: {
        const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        if (sqlstate == NULL)
            sqlstate = "08006"; /* produced by libpq itself: the connection failed */
        if (message == NULL)
            message = "the database connection failed";
        h2o_db_result_init_error(r, h2o_db_status_for_sqlstate(sqlstate), sqlstate, message);
        break;
    }
    }
}

/* ---- failure ---- */

void h2o_db_pg_copy_error(char *dst, size_t size, const char *msg)
{
    snprintf(dst, size, "%s", msg != NULL && *msg ? msg : "connection failure");
    dst[strcspn(dst, "\n")] = '\0';
}

void h2o_db_pg_fail(h2o_db_pg_conn_t *c, const char *sqlstate, const char *message)
{
    if (c->phase == H2O_DB_PG_BROKEN)
        return;
    c->phase = H2O_DB_PG_BROKEN;
    if (c->poll != NULL)
        uv_poll_stop(c->poll);
    uv_timer_stop(&c->connect_timer);
    if (c->in_call) {
        /* inside open() or send(): the pool hears of it on the next iteration */
        snprintf(c->fail_sqlstate, sizeof(c->fail_sqlstate), "%s", sqlstate);
        snprintf(c->fail_message, sizeof(c->fail_message), "%s", message);
        h2o_db_later(c->super.thread, &c->fail_later);
        return;
    }
    c->super.cbs->failed(&c->super, sqlstate, message);
}

void h2o_db_pg_fail_from_libpq(h2o_db_pg_conn_t *c, const char *sqlstate)
{
    char msg[256];
    h2o_db_pg_copy_error(msg, sizeof(msg), PQerrorMessage(c->pg));
    h2o_db_pg_fail(c, sqlstate, msg);
}

static void on_fail_later(h2o_db_later_t *later)
{
    h2o_db_pg_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_pg_conn_t, fail_later, later);
    c->super.cbs->failed(&c->super, c->fail_sqlstate, c->fail_message);
}

static void on_cancelled_later(h2o_db_later_t *later)
{
    h2o_db_pg_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_pg_conn_t, cancelled_later, later);
    c->super.cbs->cancelled(&c->super);
}

/* ---- polling ---- */

void h2o_db_pg_watch(h2o_db_pg_conn_t *c, int events)
{
    int fd = PQsocket(c->pg);
    if (fd < 0) {
        h2o_db_pg_fail_from_libpq(c, "08006");
        return;
    }
    if (c->poll != NULL && c->phase != H2O_DB_PG_READY) {
        /* while connecting libpq may move to another socket (the next host, a retry without SSL),
         * often under the same number: tell sockets apart by inode */
        struct stat st;
        if (c->poll_fd != fd || fstat(fd, &st) != 0 || st.st_ino != c->poll_ino) {
            uv_close((uv_handle_t *)c->poll, (uv_close_cb)free);
            c->poll = NULL;
        }
    }
    if (c->poll == NULL) {
        c->poll = malloc(sizeof(*c->poll));
        if (uv_poll_init(c->super.thread->loop, c->poll, fd) != 0) {
            free(c->poll);
            c->poll = NULL;
            h2o_db_pg_fail(c, "08006", "cannot watch the database socket");
            return;
        }
        c->poll->data = c;
        c->poll_fd = fd;
        c->poll_events = 0;
        struct stat st;
        c->poll_ino = fstat(fd, &st) == 0 ? st.st_ino : 0;
    }
    if (events != c->poll_events) {
        uv_poll_start(c->poll, events, on_poll);
        c->poll_events = events;
    }
}

/* ---- open ---- */

static h2o_db_pipe_t *pg_open(const h2o_db_pipe_t *proto)
{
    h2o_db_pg_conn_t *c = calloc(1, sizeof(*c));
    c->super = *proto;
    c->fail_later.cb = on_fail_later;
    c->cancelled_later.cb = on_cancelled_later;
    c->resume_later.cb = on_resume_later;
    c->flusher.cb = on_flush;
    c->seg_capacity = 16;
    c->segs = malloc(sizeof(*c->segs) * c->seg_capacity);
    h2o_db_stmt_cache_init(&c->cache, proto->bind->pool.statement_cache, on_evict, c);
    c->cache.next_id = h2o_db_pg_first_stmt_id(); /* names unique behind a pooler too (postgres_pooler.c) */
    c->in_call = 1;
    h2o_db_pg_connect(c); /* libpq may refuse at once (a missing socket, a bad hostaddr): reported later */
    c->in_call = 0;
    return &c->super;
}

/* ---- statements ---- */

static void flush(h2o_db_pg_conn_t *c)
{
    if (c->phase != H2O_DB_PG_READY)
        return;
    switch (PQflush(c->pg)) {
    case 0:
        h2o_db_pg_watch(c, c->paused ? 0 : UV_READABLE);
        break;
    case 1:
        h2o_db_pg_watch(c, (c->paused ? 0 : UV_READABLE) | UV_WRITABLE);
        break;
    default:
        h2o_db_pg_fail_from_libpq(c, "08006");
        break;
    }
}

static void on_flush(h2o_db_flusher_t *flusher)
{
    flush(H2O_STRUCT_FROM_MEMBER(h2o_db_pg_conn_t, flusher, flusher));
}

static h2o_db_pg_segment_t *push_segment(h2o_db_pg_conn_t *c)
{
    if (c->seg_count == c->seg_capacity) {
        size_t cap = c->seg_capacity * 2;
        h2o_db_pg_segment_t *segs = malloc(sizeof(*segs) * cap);
        for (size_t i = 0; i < c->seg_count; ++i)
            segs[i] = c->segs[(c->seg_head + i) % c->seg_capacity];
        free(c->segs);
        c->segs = segs;
        c->seg_head = 0;
        c->seg_capacity = cap;
    }
    h2o_db_pg_segment_t *seg = c->segs + (c->seg_head + c->seg_count++) % c->seg_capacity;
    memset(seg, 0, sizeof(*seg));
    return seg;
}

static void send_failed(h2o_db_pg_conn_t *c)
{
    /* inside send(): reported on the next iteration (h2o_db_pg_fail sees in_call) */
    h2o_db_pg_fail_from_libpq(c, "08006");
}

/* "h2o_db_<id>" (by hand: this runs for every statement) */
static void stmt_name(char *buf, size_t size, const h2o_db_cached_t *stmt)
{
    char digits[24];
    size_t n = 0;
    uint64_t id = stmt->id;
    do {
        digits[n++] = '0' + id % 10;
        id /= 10;
    } while (id != 0 && n < sizeof(digits));
    memcpy(buf, "h2o_db_", 7);
    size_t len = 7;
    while (n > 0 && len + 1 < size)
        buf[len++] = digits[--n];
    buf[len] = '\0';
}

/* A statement leaves the cache: forget it in the segments in flight, and drop it on the server. */
static void on_evict(void *ctx, h2o_db_cached_t *stmt)
{
    h2o_db_pg_conn_t *c = ctx;
    for (size_t i = 0; i < c->seg_count; ++i) {
        h2o_db_pg_segment_t *seg = c->segs + (c->seg_head + i) % c->seg_capacity;
        if (seg->stmt == stmt)
            seg->stmt = NULL;
    }
    if (c->quiet_evict || c->phase != H2O_DB_PG_READY)
        return;
    char sql[64];
    snprintf(sql, sizeof(sql), "DEALLOCATE h2o_db_%llu", (unsigned long long)stmt->id);
    push_segment(c)->internal = 1;
    if (!PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0) || !PQpipelineSync(c->pg))
        send_failed(c);
}

static void send_statement(h2o_db_pg_conn_t *c, const h2o_db_wire_t *op, const char *sql);

static void pg_send(h2o_db_pipe_t *conn, const h2o_db_wire_t *op)
{
    h2o_db_pg_conn_t *c = (h2o_db_pg_conn_t *)conn;
    const char *sql = h2o_db_wire_sql(op, op->read_only ? "BEGIN READ ONLY" : "BEGIN");
    if (c->phase != H2O_DB_PG_READY)
        return; /* failing already: the pool answers everything in flight */
    c->in_call = 1;
    send_statement(c, op, sql);
    c->in_call = 0;
}

static void send_statement(h2o_db_pg_conn_t *c, const h2o_db_wire_t *op, const char *sql)
{
    int ok;
    if (op->kind == H2O_DB_WIRE_QUERY && !op->no_cache && c->cache.capacity != 0) {
        char name[32];
        h2o_db_cached_t *stmt = h2o_db_stmt_cache_get(&c->cache, op->sql, op->sql_len);
        int prepare = 0;
        if (stmt != NULL) {
            H2O_DB_INC(c->super.stats->cache_hits);
        } else {
            H2O_DB_INC(c->super.stats->cache_misses);
            /* (an eviction here queues its DEALLOCATE before this statement's segment) */
            if ((stmt = h2o_db_stmt_cache_put(&c->cache, op->sql, op->sql_len)) == NULL)
                goto Unnamed;
            prepare = 1;
        }
        h2o_db_pg_segment_t *seg = push_segment(c);
        seg->stmt = stmt;
        seg->prepared = prepare;
        stmt_name(name, sizeof(name), stmt);
        ok = (!prepare || PQsendPrepare(c->pg, name, op->sql, (int)op->nparams, NULL)) &&
             PQsendQueryPrepared(c->pg, name, (int)op->nparams, op->params, NULL, NULL, 0) && PQpipelineSync(c->pg);
    } else {
    Unnamed : {
        h2o_db_pg_segment_t *seg = push_segment(c);
        seg->commit = op->kind == H2O_DB_WIRE_COMMIT && op->sql == NULL;
        ok = PQsendQueryParams(c->pg, sql, (int)op->nparams, NULL, op->params, NULL, NULL, 0);
        /* single-row mode takes only the statement at the head of the pipeline: the pool sends a
         * stream alone on its connection; should libpq refuse, the rows come in one result */
        if (ok && op->stream)
            seg->stream = PQsetSingleRowMode(c->pg);
        ok = ok && PQpipelineSync(c->pg);
    }
    }
    if (!ok) {
        send_failed(c);
        return;
    }
    h2o_db_flush_later(c->super.thread, &c->flusher);
}

static int is_error(ExecStatusType st)
{
    return !(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY || st == PGRES_SINGLE_TUPLE ||
             st == PGRES_PIPELINE_ABORTED);
}

/* The head segment's Sync arrived: answer (or drop) and keep the cache true. */
static void finish_segment(h2o_db_pg_conn_t *c)
{
    h2o_db_pg_segment_t seg = c->segs[c->seg_head];
    PGresult *kept = c->kept;
    c->kept = NULL;
    c->seg_head = (c->seg_head + 1) % c->seg_capacity;
    --c->seg_count;
    if (seg.internal) {
        PQclear(kept);
        return;
    }
    const char *sqlstate = kept != NULL && is_error(PQresultStatus(kept)) ? PQresultErrorField(kept, PG_DIAG_SQLSTATE) : NULL;
    int pooler = h2o_db_pg_is_pooler_error(sqlstate, seg.stmt != NULL, seg.prepared);
    if (seg.stmt != NULL && (seg.prepare_failed || (sqlstate != NULL && strcmp(sqlstate, "26000") == 0))) {
        /* the server does not have it */
        c->quiet_evict = 1;
        h2o_db_stmt_cache_remove(&c->cache, seg.stmt);
        c->quiet_evict = 0;
    } else if (seg.stmt != NULL && sqlstate != NULL && strcmp(sqlstate, "0A000") == 0) {
        /* "cached plan must not change result type": prepare it anew next time */
        h2o_db_stmt_cache_remove(&c->cache, seg.stmt);
    } else if (kept != NULL && sqlstate == NULL &&
               (strcmp(PQcmdStatus(kept), "DISCARD ALL") == 0 || strcmp(PQcmdStatus(kept), "DEALLOCATE ALL") == 0)) {
        /* every prepared statement of the session is gone */
        c->quiet_evict = 1;
        h2o_db_stmt_cache_clear(&c->cache);
        c->quiet_evict = 0;
    }
    h2o_db_result_t r;
    if (seg.commit && kept != NULL && sqlstate == NULL && strcmp(PQcmdStatus(kept), "ROLLBACK") == 0)
        /* the transaction had failed (its error was still on the way when COMMIT was sent) */
        h2o_db_result_init_error(&r, H2O_DB_SQL_ERROR, "25P02",
                                 "the transaction had failed, so it was rolled back instead of committed");
    else if (kept != NULL)
        result_from_pg(&r, kept);
    else
        h2o_db_result_init_ok(&r, 0);
    char hint[512];
    if (pooler)
        r.error = h2o_db_pg_pooler_message(c, r.error, hint, sizeof(hint)); /* (postgres_pooler.c) */
    if (c->super.cbs->result(&c->super, &r) != 0)
        c->stopped = 1;
    PQclear(kept);
}

/* One row of a stream (single-row mode): up at once; the pool may pause the stream. */
static void deliver_row(h2o_db_pg_conn_t *c, PGresult *res)
{
    h2o_db_result_t r;
    result_from_pg(&r, res);
    r.affected = 0;
    int ret = c->super.cbs->row(&c->super, &r);
    PQclear(res);
    if (ret < 0) {
        c->stopped = 1;
    } else if (ret > 0) {
        /* stop reading: the server feels it once the socket's buffers are full */
        c->paused = 1;
        h2o_db_pg_watch(c, c->poll_events & UV_WRITABLE);
    }
}

/* Reads every result that has arrived and hands each statement's over, in order. */
static void process_results(h2o_db_pg_conn_t *c)
{
    int nulls = 0;
    while (c->phase == H2O_DB_PG_READY && !c->stopped && !c->paused && c->seg_count != 0 && !PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            /* the end of one command's results; two in a row: nothing more has arrived */
            if (++nulls == 2)
                break;
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            finish_segment(c);
            continue;
        }
        h2o_db_pg_segment_t *seg = c->segs + c->seg_head;
        if (st == PGRES_SINGLE_TUPLE && seg->stream) {
            deliver_row(c, res);
            continue;
        }
        if (is_error(st) && seg->prepared && seg->results == 0)
            seg->prepare_failed = 1;
        ++seg->results;
        /* the first error wins; otherwise the last result (the EXECUTE after a PREPARE) */
        if (c->kept == NULL) {
            c->kept = res;
        } else if (is_error(PQresultStatus(c->kept)) || st == PGRES_PIPELINE_ABORTED) {
            PQclear(res);
        } else {
            PQclear(c->kept);
            c->kept = res;
        }
    }
    if (c->phase == H2O_DB_PG_READY && PQstatus(c->pg) == CONNECTION_BAD)
        h2o_db_pg_fail_from_libpq(c, "08006");
}

/* NOTIFYs that arrived (a LISTEN connection's), before the results read with them */
static void deliver_notifies(h2o_db_pg_conn_t *c)
{
    PGnotify *n;
    while (c->super.cbs->notify != NULL && c->phase == H2O_DB_PG_READY && !c->stopped && (n = PQnotifies(c->pg)) != NULL) {
        c->super.cbs->notify(&c->super, n->relname, n->extra);
        PQfreemem(n);
    }
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    h2o_db_pg_conn_t *c = poll->data;
    if (c == NULL || c->phase == H2O_DB_PG_BROKEN)
        return;
    if (c->phase == H2O_DB_PG_CONNECT) {
        /* an error on the socket (a refused connect shows as POLLERR) is libpq's to judge: it
         * moves on to the next host, or reports the failure */
        if (status < 0)
            c->poll_events = 0; /* libuv stopped the handle on POLLERR: watching again must restart it */
        h2o_db_pg_poll_connect(c);
        return;
    }
    if (status < 0) {
        h2o_db_pg_fail(c, "08006", uv_strerror(status));
        return;
    }
    switch (c->phase) {
    case H2O_DB_PG_SETUP:
        h2o_db_pg_continue_setup(c, events);
        return;
    case H2O_DB_PG_READY:
        if ((events & UV_WRITABLE) != 0)
            flush(c);
        if ((events & UV_READABLE) != 0 && !c->paused) {
            if (!PQconsumeInput(c->pg)) {
                h2o_db_pg_fail_from_libpq(c, "08006");
                return;
            }
            deliver_notifies(c);
            if (c->seg_count == 0) {
                /* an idle connection has something to say: the server is closing it */
                PGresult *res;
                while (!PQisBusy(c->pg) && (res = PQgetResult(c->pg)) != NULL)
                    PQclear(res);
                if (PQstatus(c->pg) == CONNECTION_BAD)
                    h2o_db_pg_fail_from_libpq(c, "57P01");
                return;
            }
            process_results(c);
        }
        return;
    default:
        return;
    }
}

/* ---- resume a paused stream ---- */

static void on_resume_later(h2o_db_later_t *later)
{
    h2o_db_pg_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_pg_conn_t, resume_later, later);
    if (c->phase != H2O_DB_PG_READY || c->paused)
        return;
    process_results(c); /* rows libpq has read already come first */
    if (c->phase == H2O_DB_PG_READY && !c->paused)
        h2o_db_pg_watch(c, c->poll_events | UV_READABLE);
}

static void pg_resume(h2o_db_pipe_t *conn)
{
    h2o_db_pg_conn_t *c = (h2o_db_pg_conn_t *)conn;
    if (!c->paused)
        return;
    c->paused = 0;
    h2o_db_later(conn->thread, &c->resume_later); /* never from inside resume() */
}

/* ---- cancel (pinned connections only: the pool never cancels a shared one) ---- */

static void run_cancel(uv_work_t *work)
{
    struct cancel_work *cw = (struct cancel_work *)work;
    char err[256];
    PQcancel(cw->cancel, err, sizeof(err));
}

static void after_cancel(uv_work_t *work, int status)
{
    struct cancel_work *cw = (struct cancel_work *)work;
    h2o_db_pg_conn_t *c = cw->conn;
    PQfreeCancel(cw->cancel);
    free(cw);
    if (c == NULL)
        return;
    c->cancel = NULL;
    c->super.cbs->cancelled(&c->super);
}

static void pg_cancel(h2o_db_pipe_t *conn)
{
    h2o_db_pg_conn_t *c = (h2o_db_pg_conn_t *)conn;
    PGcancel *cancel = c->phase == H2O_DB_PG_READY && c->cancel == NULL ? PQgetCancel(c->pg) : NULL;
    if (cancel == NULL) {
        h2o_db_later(conn->thread, &c->cancelled_later); /* never from inside cancel() */
        return;
    }
    struct cancel_work *cw = calloc(1, sizeof(*cw));
    cw->cancel = cancel;
    cw->conn = c;
    c->cancel = cw;
    if (uv_queue_work(conn->thread->loop, &cw->work, run_cancel, after_cancel) != 0) {
        PQfreeCancel(cancel);
        free(cw);
        c->cancel = NULL;
        h2o_db_later(conn->thread, &c->cancelled_later);
    }
}

/* ---- close ---- */

void h2o_db_pg_free_conn(h2o_db_pg_conn_t *c)
{
    c->quiet_evict = 1;
    h2o_db_stmt_cache_dispose(&c->cache);
    free(c->segs);
    if (c->pg != NULL)
        PQfinish(c->pg);
    for (size_t i = 0; i < c->num_hosts; ++i) {
        free(c->hosts[i]);
        free(c->hostaddrs[i]);
    }
    free(c->hosts);
    free(c->hostaddrs);
    free(c);
}

static void on_closed(uv_handle_t *handle)
{
    h2o_db_pg_conn_t *c = handle->data;
    if (--c->handles_open == 0)
        h2o_db_pg_free_conn(c);
}

static void on_poll_closed(uv_handle_t *handle)
{
    free(handle);
}

static void pg_close(h2o_db_pipe_t *conn)
{
    h2o_db_pg_conn_t *c = (h2o_db_pg_conn_t *)conn;
    c->phase = H2O_DB_PG_BROKEN;
    if (c->cancel != NULL) {
        c->cancel->conn = NULL;
        c->cancel = NULL;
    }
    h2o_db_later_cancel(&c->fail_later);
    h2o_db_later_cancel(&c->cancelled_later);
    h2o_db_later_cancel(&c->resume_later);
    if (h2o_linklist_is_linked(&c->flusher.link))
        h2o_linklist_unlink(&c->flusher.link);
    if (c->kept != NULL) {
        PQclear(c->kept);
        c->kept = NULL;
    }
    if (c->poll != NULL) {
        /* the socket stays open until the watcher is gone (PQfinish in free_conn) */
        c->poll->data = NULL;
        uv_close((uv_handle_t *)c->poll, on_poll_closed);
        c->poll = NULL;
    }
    if (c->handles_open > 1)
        uv_cancel((uv_req_t *)&c->gai); /* on_resolved frees when it runs */
    uv_close((uv_handle_t *)&c->connect_timer, on_closed);
}

/* ---- start-up (run_script: postgres_connect.c) ---- */

static int pg_prepare_bind(h2o_db_bind_t *bind, char *err, size_t errsz)
{
    if (h2o_db_pg_pooler_prepare_bind(bind) != 0) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    return 0;
}

static void pg_dispose_bind(h2o_db_bind_t *bind)
{
    h2o_db_pg_pooler_dispose_bind(bind);
}

static const char *pg_version(void)
{
    static char buf[32];
    int v = PQlibVersion();
    snprintf(buf, sizeof(buf), "libpq %d.%d", v / 10000, v % 100);
    return buf;
}

const h2o_db_driver_t h2o_db_driver_postgres = {
    .name = "postgresql",
    .pipelines = 1,
    .open = pg_open,
    .send = pg_send,
    .close = pg_close,
    .cancel = pg_cancel,
    .resume = pg_resume,
    .run_script = h2o_db_pg_run_script,
    .prepare_bind = pg_prepare_bind,
    .dispose_bind = pg_dispose_bind,
    .version = pg_version,
};
