/*
 * The fault driver (tests only; see fault_driver.h): connections without a database, whose
 * connects, set-ups, sends, answers, cancels and closes follow the rules a test set. Everything
 * is reported from the connection's uv_timer, never from inside open/send/cancel/close.
 *
 * A connection answers its statements in order, 1 ms after they were sent (a stalled one holds
 * back the ones behind it). Its "server" keeps PostgreSQL's transaction state (a failed statement
 * aborts the transaction: later ones answer 25P02 until COMMIT/ROLLBACK); its prepared
 * transactions and two-phase decisions are fault_twophase.c's.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fault_driver.h"
#include "result.h"
#include "session.h"

fd_stats_t fd_stats;

enum { PH_CONNECTING, PH_SETUP, PH_READY, PH_FAILED };
static const char *phase_names[] = {"connecting", "set-up", "ready", "failed"};

struct entry {
    size_t log; /* index in fd_stats.log, or FD_LOG_MAX */
    int outcome;
    char sqlstate[6];
    char sql[192];
    char param[128];
    int kind, in_txn;
    int stream;         /* rows one at a time (FD_STREAM_ROWS of them) before its end */
    unsigned rows_sent; /* ... so far */
    uint64_t due;
};

struct fd_conn {
    h2o_db_pipe_t super;
    h2o_linklist_t link; /* all_conns */
    uv_timer_t timer;
    uv_loop_t *loop;
    const h2o_db_bind_t *bind;
    unsigned id;
    int phase, stalled, fail, broken, closed, txn;
    char fail_sqlstate[6];
    uint64_t due;
    int cancel_pending, cancel_stalled, cancel_fail;
    int paused; /* a stream's rows wait for resume */
    uint64_t cancel_due, free_due;
    struct entry *q;
    size_t count, cap;
};

static h2o_linklist_t all_conns = {&all_conns, &all_conns};
static fd_rule_t rules[FD_MAX_RULES];
static unsigned rule_counts[FD_MAX_RULES];
static size_t num_rules;
static uint64_t seq;
static unsigned next_id;

uint64_t fd_seq(void)
{
    return ++seq;
}

uint64_t fd_clock(void)
{
    return seq;
}

__attribute__((format(printf, 1, 2))) static void violation(const char *fmt, ...)
{
    if (fd_stats.violations++ != 0)
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(fd_stats.violation, sizeof(fd_stats.violation), fmt, args);
    va_end(args);
}

/* ---- rules ---- */

int fd_add_rule(const fd_rule_t *rule)
{
    if (num_rules == FD_MAX_RULES)
        return -1;
    rules[num_rules] = *rule;
    rule_counts[num_rules] = 0;
    return (int)num_rules++;
}

void fd_clear_rules(void)
{
    num_rules = 0;
}

/* The rule that applies to this occurrence of `step`, or NULL (every matching rule counts it). */
static const fd_rule_t *rule_for(fd_step_t step, const char *sql)
{
    const fd_rule_t *found = NULL;
    for (size_t i = 0; i < num_rules; ++i) {
        const fd_rule_t *r = rules + i;
        if (r->step != step || (r->match != NULL && (sql == NULL || strncmp(sql, r->match, strlen(r->match)) != 0)))
            continue;
        unsigned n = ++rule_counts[i];
        if (found == NULL && (r->nth == 0 || r->nth == n)) {
            ++fd_stats.fired[i];
            found = r;
        }
    }
    return found;
}

/* ---- the simulated server ---- */

static const char *rows_column_name(const h2o_db_result_t *r, size_t col)
{
    return ((const fd_rows_t *)r->impl)->column;
}

static const char *rows_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    const char *v = ((const fd_rows_t *)r->impl)->values[row];
    *len = strlen(v);
    return v;
}

static h2o_db_type_t rows_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    return H2O_DB_TYPE_TEXT;
}

static const h2o_db_result_class_t rows_class = {rows_column_name, rows_value, rows_type};

/* Runs a statement on the simulated server; NULL on success, else the SQLSTATE. */
static const char *run(struct fd_conn *c, struct entry *e, fd_rows_t *rows)
{
    if (e->kind == H2O_DB_WIRE_BEGIN) {
        c->txn = FD_TXN_OPEN;
        return NULL;
    }
    if (strcmp(e->sql, "ROLLBACK") == 0) {
        c->txn = FD_TXN_IDLE;
        return NULL;
    }
    if (strcmp(e->sql, "COMMIT") == 0) {
        int aborted = c->txn == FD_TXN_ABORTED;
        c->txn = FD_TXN_IDLE;
        return aborted ? "25P02" : NULL;
    }
    if (c->txn == FD_TXN_ABORTED)
        return "25P02";
    if (!e->in_txn && e->kind == H2O_DB_WIRE_QUERY && c->txn != FD_TXN_IDLE && strncmp(e->sql, "PREPARE", 7) != 0)
        violation("an autocommit statement (%s) ran inside a transaction left open on connection %u", e->sql, c->id);
    const char *err = fd_twophase_run(c->bind->id, &c->txn, e->sql, e->param, rows);
    if (err == NULL && rows->column == NULL && strncmp(e->sql, "SELECT ", 7) == 0 && strstr(e->sql, " FROM ") == NULL) {
        rows->column = "v";
        rows->values[rows->n++] = e->sql + 7;
    }
    return err;
}

/* ---- reporting (from the timer only) ---- */

static void schedule(struct fd_conn *c);

static void log_fate(struct entry *e, int fate, const char *sqlstate)
{
    if (e->log == FD_LOG_MAX)
        return;
    fd_log_t *l = fd_stats.log + e->log;
    l->fate = fate;
    snprintf(l->sqlstate, sizeof(l->sqlstate), "%s", sqlstate != NULL ? sqlstate : "");
    l->answered_seq = fd_seq();
}

static void pop(struct fd_conn *c, struct entry *out)
{
    *out = c->q[0];
    memmove(c->q, c->q + 1, sizeof(*c->q) * --c->count);
}

static void drop_all(struct fd_conn *c, int fate, const char *sqlstate)
{
    for (size_t i = 0; i < c->count; ++i)
        log_fate(c->q + i, fate, sqlstate);
    c->count = 0;
}

static void fail(struct fd_conn *c, const char *sqlstate, const char *message)
{
    fd_seq();
    c->phase = PH_FAILED;
    c->cancel_pending = 0;
    ++fd_stats.failed;
    drop_all(c, FD_FATE_LOST, sqlstate);
    c->super.cbs->failed(&c->super, sqlstate, message);
}

/* Answers the oldest statement; returns 0 to go on with the next one. */
/* The rows of the stream at the head of the queue, one at a time; returns 1 when the stream paused
 * or the pool stopped using the connection (nothing more now), 0 when its end is due. */
static int stream_rows(struct fd_conn *c)
{
    struct entry *e = c->q;
    while (e->rows_sent < FD_STREAM_ROWS) {
        fd_rows_t one = {.n = 1, .column = "v", .values = {e->sql + (strncmp(e->sql, "SELECT ", 7) == 0 ? 7 : 0)}};
        h2o_db_result_t r;
        h2o_db_result_init_ok(&r, 0);
        r.rows = r.columns = 1;
        r.cls = &rows_class;
        r.impl = &one;
        ++e->rows_sent;
        int ret = c->super.cbs->row(&c->super, &r);
        if (ret < 0 && c->phase == PH_READY) {
            c->phase = PH_FAILED;
            drop_all(c, FD_FATE_DROPPED, NULL);
        }
        if (ret != 0 || c->closed || c->phase != PH_READY) {
            c->paused = ret > 0;
            return 1;
        }
    }
    return 0;
}

static int answer(struct fd_conn *c)
{
    struct entry e;
    fd_rows_t rows = {0};
    pop(c, &e);
    if (e.outcome == FD_LOSE) {
        run(c, &e, &rows); /* it ran; its answer is lost with the connection */
        log_fate(&e, FD_FATE_LOST, "08006");
        fail(c, "08006", "server closed the connection unexpectedly (fault driver)");
        return -1;
    }
    const char *err = e.outcome == FD_FAIL ? e.sqlstate : run(c, &e, &rows);
    if (e.stream)
        rows.n = 0, rows.column = NULL; /* its rows went one at a time */
    if (e.outcome == FD_FAIL && c->txn == FD_TXN_OPEN && e.kind != H2O_DB_WIRE_BEGIN)
        c->txn = FD_TXN_ABORTED;
    if (e.outcome == FD_FAIL &&
        (e.kind == H2O_DB_WIRE_COMMIT || e.kind == H2O_DB_WIRE_ROLLBACK || strncmp(e.sql, "PREPARE", 7) == 0))
        c->txn = FD_TXN_IDLE; /* a failed COMMIT, ROLLBACK or PREPARE ends the transaction all the same */
    h2o_db_result_t r;
    if (err != NULL) {
        h2o_db_result_init_error(&r, h2o_db_status_for_sqlstate(err), err, "error injected by the fault driver");
        if (c->txn == FD_TXN_OPEN && e.outcome != FD_FAIL)
            c->txn = FD_TXN_ABORTED;
    } else {
        h2o_db_result_init_ok(&r, rows.n != 0 ? rows.n : 1);
        if (rows.column != NULL) {
            r.rows = rows.n;
            r.columns = 1;
            r.cls = &rows_class;
            r.impl = &rows;
        }
    }
    log_fate(&e, err != NULL ? FD_FATE_ERROR : FD_FATE_OK, err);
    if (c->super.cbs->result(&c->super, &r) != 0 && c->phase == PH_READY) {
        /* the pool stopped using the connection (it failed it itself: a cleanup ROLLBACK that
         * failed, a result nobody asked for) */
        c->phase = PH_FAILED;
        drop_all(c, FD_FATE_DROPPED, NULL);
        return -1;
    }
    return 0;
}

/* A cancel that works: the statement that hangs answers 57014 (canceling statement due to user
 * request); one that is about to answer anyway, or a ROLLBACK, is not hit. */
static void interrupt(struct fd_conn *c)
{
    if (c->count != 0 && c->q[0].stream && c->q[0].outcome == FD_OK) {
        /* a stream: the rows not sent yet never come */
        c->q[0].outcome = FD_FAIL;
        snprintf(c->q[0].sqlstate, sizeof(c->q[0].sqlstate), "57014");
        c->q[0].rows_sent = FD_STREAM_ROWS;
        return;
    }
    for (size_t i = 0; i < c->count; ++i) {
        if (c->q[i].outcome == FD_STALL) {
            c->q[i].outcome = FD_FAIL;
            snprintf(c->q[i].sqlstate, sizeof(c->q[i].sqlstate), "57014");
            c->q[i].due = 0;
            return;
        }
    }
}

static void free_conn(uv_handle_t *handle)
{
    struct fd_conn *c = handle->data;
    h2o_linklist_unlink(&c->link);
    free(c->q);
    free(c);
    ++fd_stats.frees;
    fd_seq();
}

static void connect_step(struct fd_conn *c)
{
    if (c->fail) {
        fail(c, c->fail_sqlstate, c->phase == PH_SETUP ? "set-up failed (fault driver)" : "cannot connect (fault driver)");
        return;
    }
    if (c->phase == PH_CONNECTING) {
        const fd_rule_t *r = rule_for(FD_SETUP, NULL);
        c->phase = PH_SETUP;
        if (r != NULL && r->mode == FD_STALL) {
            c->stalled = 1;
            return;
        }
        if (r != NULL && r->mode == FD_FAIL) {
            c->fail = 1;
            snprintf(c->fail_sqlstate, sizeof(c->fail_sqlstate), "%s", r->sqlstate != NULL ? r->sqlstate : "42000");
            c->due = uv_now(c->loop) + 1;
            return;
        }
    }
    c->phase = PH_READY;
    ++fd_stats.connected;
    fd_seq();
    c->super.cbs->connected(&c->super);
}

static void on_timer(uv_timer_t *timer)
{
    struct fd_conn *c = timer->data;
    uint64_t now = uv_now(c->loop);
    if (c->closed) {
        if (now >= c->free_due)
            uv_close((uv_handle_t *)&c->timer, free_conn);
        else
            schedule(c);
        return;
    }
    if (c->phase == PH_FAILED)
        return;
    if (c->broken) {
        fail(c, "08006", "could not send data to server: broken pipe (fault driver)");
        return;
    }
    if (c->phase != PH_READY) {
        if (!c->stalled && now >= c->due)
            connect_step(c);
    } else {
        if (c->cancel_pending && !c->cancel_stalled && now >= c->cancel_due) {
            c->cancel_pending = 0;
            fd_seq();
            if (!c->cancel_fail)
                interrupt(c);
            c->super.cbs->cancelled(&c->super);
        }
        while (c->phase == PH_READY && !c->closed && !c->paused && c->count != 0 && c->q[0].outcome != FD_STALL &&
               c->q[0].due <= now)
            if ((c->q[0].stream && stream_rows(c) != 0) || answer(c) != 0)
                break;
    }
    if (!c->closed && c->phase != PH_FAILED)
        schedule(c);
}

/* Arms the timer for whatever is due next. */
static void schedule(struct fd_conn *c)
{
    uint64_t due = UINT64_MAX;
    if (c->closed) {
        due = c->free_due;
    } else if (c->broken) {
        due = 0;
    } else if (c->phase == PH_CONNECTING || c->phase == PH_SETUP) {
        if (!c->stalled)
            due = c->due;
    } else if (c->phase == PH_READY) {
        if (c->cancel_pending && !c->cancel_stalled)
            due = c->cancel_due;
        if (c->count != 0 && c->q[0].outcome != FD_STALL && !c->paused && c->q[0].due < due)
            due = c->q[0].due;
    }
    if (due == UINT64_MAX) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t now = uv_now(c->loop);
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

/* ---- the driver ---- */

static h2o_db_pipe_t *fd_open(const h2o_db_pipe_t *proto)
{
    struct fd_conn *c = calloc(1, sizeof(*c));
    c->super = *proto;
    c->loop = proto->thread->loop;
    c->bind = proto->bind;
    c->id = ++next_id;
    uv_timer_init(c->loop, &c->timer);
    c->timer.data = c;
    h2o_linklist_insert(&all_conns, &c->link);
    ++fd_stats.opens;
    fd_seq();
    const fd_rule_t *r = rule_for(FD_OPEN, NULL);
    uint64_t now = uv_now(c->loop);
    c->due = now + 1;
    if (r != NULL && r->mode == FD_STALL) {
        c->stalled = 1;
    } else if (r != NULL && r->mode == FD_FAIL) {
        /* delay 0: known here (a refused socket); reported all the same from the loop */
        c->fail = 1;
        snprintf(c->fail_sqlstate, sizeof(c->fail_sqlstate), "%s", r->sqlstate != NULL ? r->sqlstate : "08001");
        c->due = now + r->delay_ms;
    }
    schedule(c);
    return &c->super;
}

static int check_usable(struct fd_conn *c, const char *what)
{
    if (c->closed) {
        violation("%s after close on connection %u", what, c->id);
        return 0;
    }
    if (c->phase != PH_READY) {
        violation("%s on connection %u while it is %s", what, c->id, phase_names[c->phase]);
        return 0;
    }
    return 1;
}

/* Logs what the pool sent, with the session and callback data of the op behind the wire statement
 * (the cleanup ROLLBACK's op has no session). */
static void add_log(struct fd_conn *c, const h2o_db_op_t *op, struct entry *e)
{
    e->log = FD_LOG_MAX;
    if (fd_stats.nlog == FD_LOG_MAX)
        return;
    e->log = fd_stats.nlog++;
    fd_log_t *l = fd_stats.log + e->log;
    memset(l, 0, sizeof(*l));
    if (op != NULL && op->stmt.conn != c->super.data)
        violation("send on connection %u of a statement the pool placed elsewhere", c->id);
    l->session = op != NULL ? op->session : NULL;
    l->data = op != NULL ? op->data : NULL;
    l->kind = e->kind;
    snprintf(l->sql, sizeof(l->sql), "%.*s", (int)sizeof(l->sql) - 1, e->sql);
    l->conn_id = c->id;
    l->fate = FD_FATE_INFLIGHT;
    l->sent_seq = fd_seq();
    l->stalled = e->outcome == FD_STALL;
}

static void fd_send(h2o_db_pipe_t *pipe, const h2o_db_wire_t *w)
{
    /* a test driver may look behind the wire statement, at the statement and the op it was made
     * from (pool.c sends &stmt->wire; the cleanup ROLLBACK's statement has no place and no op): the
     * session and the callback data tell the test which call it is */
    const h2o_db_stmt_t *stmt = H2O_STRUCT_FROM_MEMBER(h2o_db_stmt_t, wire, w);
    const h2o_db_op_t *op = stmt->place != NULL ? H2O_STRUCT_FROM_MEMBER(h2o_db_op_t, stmt, stmt) : NULL;
    struct fd_conn *c = (struct fd_conn *)pipe;
    const h2o_db_conn_t *conn = pipe->data; /* the pool's record, to check it against ours */
    if (!check_usable(c, "send"))
        return;
    if (c->count + 1 != conn->ring.count)
        violation("send: the pool's ring (%zu) and the driver's queue (%zu) are out of step on connection %u", conn->ring.count,
                  c->count, c->id);
    if (c->count == c->cap) {
        c->cap = c->cap == 0 ? 8 : c->cap * 2;
        c->q = realloc(c->q, sizeof(*c->q) * c->cap);
    }
    if (w->stream && c->count != 0)
        violation("a streamed statement sent behind %zu others on connection %u", c->count, c->id);
    struct entry *e = c->q + c->count++;
    memset(e, 0, sizeof(*e));
    e->stream = w->stream;
    snprintf(e->sql, sizeof(e->sql), "%s", h2o_db_wire_sql(w, "BEGIN"));
    if (w->nparams != 0 && w->params[0] != NULL)
        snprintf(e->param, sizeof(e->param), "%s", w->params[0]);
    e->kind = w->kind;
    e->in_txn = stmt->in_txn;
    e->due = uv_now(c->loop) + 1;
    const fd_rule_t *r = rule_for(FD_SEND, e->sql);
    if (r != NULL && r->mode == FD_FAIL) {
        c->broken = 1;
    } else if (r != NULL && r->mode == FD_STALL) {
        e->outcome = FD_STALL;
    } else if ((r = rule_for(FD_RESULT, e->sql)) != NULL) {
        e->outcome = r->mode;
        snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", r->sqlstate != NULL ? r->sqlstate : "42000");
    }
    add_log(c, op, e);
    schedule(c);
}

static void fd_close(h2o_db_pipe_t *conn)
{
    struct fd_conn *c = (struct fd_conn *)conn;
    if (c->closed) {
        violation("close called twice on connection %u", c->id);
        return;
    }
    c->closed = 1;
    ++fd_stats.closes;
    fd_seq();
    drop_all(c, FD_FATE_DROPPED, NULL);
    c->cancel_pending = 0;
    const fd_rule_t *r = rule_for(FD_CLOSE, NULL);
    c->free_due = uv_now(c->loop) + (r != NULL && r->mode == FD_STALL ? (r->delay_ms != 0 ? r->delay_ms : 30) : 0);
    schedule(c);
}

static void fd_cancel(h2o_db_pipe_t *conn)
{
    struct fd_conn *c = (struct fd_conn *)conn;
    ++fd_stats.cancels;
    fd_seq();
    if (!check_usable(c, "cancel"))
        return;
    if (c->cancel_pending)
        violation("cancel while a cancel is under way on connection %u", c->id);
    if (c->count == 0)
        violation("cancel with nothing in flight on connection %u", c->id);
    const fd_rule_t *r = rule_for(FD_CANCEL, NULL);
    c->cancel_pending = 1;
    c->cancel_stalled = r != NULL && r->mode == FD_STALL;
    c->cancel_fail = r != NULL && r->mode == FD_FAIL;
    c->cancel_due = uv_now(c->loop) + 2;
    schedule(c);
}

static void fd_resume(h2o_db_pipe_t *conn)
{
    struct fd_conn *c = (struct fd_conn *)conn;
    if (!check_usable(c, "resume"))
        return;
    if (!c->paused)
        violation("resume of connection %u, which is not paused", c->id);
    c->paused = 0;
    schedule(c); /* the next row comes from the timer, never from inside resume */
}

static const char *fd_version(void)
{
    return "fault 1";
}

/* the first pipelines (the pool fills its connections), the second does not (idle first) */
const h2o_db_driver_t fd_driver = {.name = "fault",
                                   .pipelines = 1,
                                   .open = fd_open,
                                   .send = fd_send,
                                   .close = fd_close,
                                   .cancel = fd_cancel,
                                   .resume = fd_resume,
                                   .version = fd_version};
const h2o_db_driver_t fd_driver_nocancel = {
    .name = "fault", .open = fd_open, .send = fd_send, .close = fd_close, .resume = fd_resume, .version = fd_version};

/* ---- for the tests ---- */

#define EACH_CONN(c)                                                                                                               \
    for (h2o_linklist_t *n_ = all_conns.next; n_ != &all_conns; n_ = n_->next)                                                     \
        for (struct fd_conn *c = H2O_STRUCT_FROM_MEMBER(struct fd_conn, link, n_); c != NULL; c = NULL)

void fd_release(void)
{
    EACH_CONN(c)
    {
        c->stalled = 0;
        c->cancel_stalled = 0;
        for (size_t i = 0; i < c->count; ++i)
            if (c->q[i].outcome == FD_STALL)
                c->q[i].outcome = FD_OK;
        if (c->due < uv_now(c->loop))
            c->due = uv_now(c->loop);
        schedule(c);
    }
}

void fd_reset(void)
{
    num_rules = 0;
    memset(&fd_stats, 0, sizeof(fd_stats));
    fd_twophase_reset();
}

int fd_busy(void)
{
    EACH_CONN(c)
    {
        if (c->closed || (c->phase != PH_FAILED && (c->phase != PH_READY || c->count != 0 || c->cancel_pending || c->broken)))
            return 1;
    }
    return 0;
}

size_t fd_live(const h2o_db_bind_t *bind)
{
    size_t n = 0;
    EACH_CONN(c)
    {
        if (!c->closed && c->bind == bind)
            ++n;
    }
    return n;
}

size_t fd_failed_unclosed(void)
{
    size_t n = 0;
    EACH_CONN(c)
    {
        if (!c->closed && c->phase == PH_FAILED)
            ++n;
    }
    return n;
}

int fd_conn_ok(const h2o_db_conn_t *conn)
{
    EACH_CONN(c)
    {
        if (c->super.data == conn)
            return !c->closed && c->phase != PH_FAILED;
    }
    return 0;
}

size_t fd_allocated(void)
{
    size_t n = 0;
    EACH_CONN(c)
    {
        ++n;
    }
    return n;
}

const fd_log_t *fd_log_find(const void *data, size_t *count)
{
    const fd_log_t *found = NULL;
    *count = 0;
    for (size_t i = 0; i < fd_stats.nlog; ++i) {
        if (fd_stats.log[i].data == data) {
            found = fd_stats.log + i;
            ++*count;
        }
    }
    return found;
}

void fd_dump_log(FILE *out, const void *const *sessions, size_t nsessions)
{
    for (size_t i = 0; i < fd_stats.nlog; ++i) {
        const fd_log_t *l = fd_stats.log + i;
        int sess = -1;
        for (size_t j = 0; j < nsessions; ++j)
            sess = l->session == sessions[j] && l->session != NULL ? (int)j : sess;
        fprintf(out, "  sent %3llu conn %u session %d: %-40s fate %d %s answered %llu\n", (unsigned long long)l->sent_seq,
                l->conn_id, sess, l->sql, l->fate, l->sqlstate, (unsigned long long)l->answered_seq);
    }
}

/* ---- the pool against the driver ---- */

static size_t list_len(const h2o_linklist_t *anchor)
{
    size_t n = 0;
    for (const h2o_linklist_t *l = anchor->next; l != anchor; l = l->next)
        ++n;
    return n;
}

int fd_pool_quiet(h2o_db_pool_t *pool)
{
    if (pool->num_connecting != 0 || pool->num_waiting != 0 || pool->num_pinned != 0)
        return 0;
    for (h2o_linklist_t *l = pool->conns.next; l != &pool->conns; l = l->next)
        if (!h2o_db_conn_is_idle(H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, l)))
            return 0;
    return 1;
}

__attribute__((format(printf, 4, 5))) static void note(char *out, size_t size, size_t *n, const char *fmt, ...)
{
    size_t len = strlen(out);
    if (len + 1 >= size)
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(out + len, size - len, fmt, args);
    va_end(args);
    ++*n;
}

size_t fd_check_pool(h2o_db_pool_t *pool, char *out, size_t size)
{
    size_t n = 0, conns = 0, connecting = 0, pinned = 0, waiting = list_len(&pool->waiting);
    out[0] = '\0';
    for (h2o_linklist_t *l = pool->conns.next; l != &pool->conns; l = l->next) {
        h2o_db_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, l);
        ++conns;
        connecting += conn->state == H2O_DB_CONN_CONNECTING;
        pinned += conn->pinned != NULL;
        waiting += list_len(&conn->waiters);
        if (!fd_conn_ok(conn))
            note(out, size, &n, "the pool keeps a connection the driver reported failed or was told to close; ");
        if (conn->ring.count != 0 || conn->cleaning || conn->cancelling)
            note(out, size, &n, "a connection still has %zu in flight (cleaning %d, cancelling %d); ", conn->ring.count,
                 conn->cleaning, conn->cancelling);
    }
    if (conns != pool->num_conns || connecting != pool->num_connecting || pinned != pool->num_pinned ||
        waiting != pool->num_waiting)
        note(out, size, &n, "counters (conns %zu, connecting %zu, pinned %zu, waiting %zu) but lists (%zu, %zu, %zu, %zu); ",
             pool->num_conns, pool->num_connecting, pool->num_pinned, pool->num_waiting, conns, connecting, pinned, waiting);
    if (pool->num_connecting != 0 || pool->num_pinned != 0 || pool->num_waiting != 0)
        note(out, size, &n, "not quiet: connecting %zu, pinned %zu, waiting %zu; ", pool->num_connecting, pool->num_pinned,
             pool->num_waiting);
    if (pool->bind->total_conns != pool->num_conns)
        note(out, size, &n, "total_conns %u, the pool has %zu; ", pool->bind->total_conns, pool->num_conns);
    if (fd_live(pool->bind) != pool->num_conns)
        note(out, size, &n, "the driver has %zu connections open, the pool %zu; ", fd_live(pool->bind), pool->num_conns);
    return n;
}
