/*
 * MySQL / MariaDB: MariaDB Connector/C's non-blocking API on the thread's libuv loop. This file is
 * the step machine: which connector call a connection runs, and what follows when it is done;
 * mysql_conn.c opens the connection and waits for its I/O in between.
 *
 * Connector/C runs each call in a coroutine of its own: a `_start` function returns a mask of
 * MYSQL_WAIT_READ / _WRITE / _TIMEOUT when it would block, and the matching `_cont` function
 * resumes it once the socket or the timer says so (drive()). One connection's life:
 *   resolve   where to connect (mysql_conn.c)
 *   connect   mysql_real_connect (CLIENT_FOUND_ROWS: UPDATE counts the rows it matched, as
 *             PostgreSQL does; CLIENT_MULTI_STATEMENTS for on-connect)
 *   setup     max_statement_time (statement-timeout) and on-connect, as one text query
 *   ready     MySQL has no pipelining: statements the pool sends while one runs wait in this
 *             driver's FIFO (copied: the pool may drop their ops) and run one at a time, answered
 *             strictly in order. A statement is a server-side prepared statement ($1..$n
 *             rewritten to ?), cached per connection and executed with every parameter bound
 *             as text (mysql_stmt.c); its rows are stored (so that fetching them is memory
 *             only) and turned into PostgreSQL-like text with types (mysql_rows.c).
 *             BEGIN/COMMIT/ROLLBACK go as text queries.
 *   streamed  (wire.stream) the rows are not stored: each is fetched (mysql_stmt_fetch, from the
 *             connector's read buffer or the socket), turned into text and handed over before
 *             the next is fetched; a pause stops fetching and watching the socket, so the
 *             server blocks once the socket's buffers are full. What cannot be prepared (text
 *             protocol) is answered stored, all rows at once.
 *
 * A connection whose socket breaks, or that reports a client-side (CR_*) error, is failed and
 * closed; it is never reused.
 */
#include <errmsg.h>
#include <mysqld_error.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include "driver/mysql.h"

/* what the connection is doing right now (one connector call at a time) */
enum {
    STEP_IDLE,
    STEP_CONNECT,     /* mysql_real_connect */
    STEP_SETUP_QUERY, /* on-connect: mysql_real_query */
    STEP_SETUP_STORE, /* ... mysql_store_result of one of its statements */
    STEP_SETUP_NEXT,  /* ... mysql_next_result */
    STEP_CLOSE_STMT,  /* mysql_stmt_close of a statement that left the cache */
    STEP_PREPARE,     /* mysql_stmt_prepare */
    STEP_EXECUTE,     /* mysql_stmt_execute */
    STEP_STMT_STORE,  /* mysql_stmt_store_result */
    STEP_STMT_NEXT,   /* mysql_stmt_next_result (a CALL's further results: dropped) */
    STEP_STMT_STORE_MORE /* mysql_stmt_store_result of such a further result */,
    STEP_TEXT_QUERY,   /* mysql_real_query (BEGIN, COMMIT, ROLLBACK, what cannot be prepared) */
    STEP_TEXT_STORE,   /* mysql_store_result */
    STEP_TEXT_NEXT,    /* mysql_next_result */
    STEP_STREAM_FETCH, /* mysql_stmt_fetch of a streamed statement's next row (unbuffered) */
    STEP_STREAM_PAUSED /* ... not called: the stream is paused until resume */
};

/* ---- the FIFO of statements sent ---- */

static h2o_db_mysql_job_t *push_job(h2o_db_mysql_conn_t *c)
{
    if (c->count == c->capacity) {
        size_t cap = c->capacity == 0 ? 4 : c->capacity * 2;
        h2o_db_mysql_job_t *jobs = calloc(cap, sizeof(*jobs));
        if (jobs == NULL)
            return NULL;
        for (size_t i = 0; i < c->capacity; ++i)
            jobs[i] = c->jobs[(c->head + i) % c->capacity];
        free(c->jobs);
        c->jobs = jobs;
        c->head = 0;
        c->capacity = cap;
    }
    h2o_db_mysql_job_t *job = c->jobs + (c->head + c->count++) % c->capacity;
    job->sql.len = 0;
    job->params.len = 0;
    job->values.len = 0;
    job->nparams = 0;
    job->text = 0;
    job->no_cache = 0;
    job->commit_as_rollback = 0;
    job->stream = 0;
    return job;
}

static void pop_job(h2o_db_mysql_conn_t *c)
{
    h2o_db_mysql_job_t *job = c->jobs + c->head;
    buf_trim(&job->sql);
    buf_trim(&job->values);
    buf_trim(&job->params);
    c->head = (c->head + 1) % c->capacity;
    --c->count;
}

static h2o_db_mysql_job_t *current_job(h2o_db_mysql_conn_t *c)
{
    return c->jobs + c->head;
}

/* The pool sends a statement: it is copied into the FIFO and runs when the connection is free. */
static void my_send(h2o_db_pipe_t *conn, const h2o_db_wire_t *op)
{
    h2o_db_mysql_conn_t *c = (h2o_db_mysql_conn_t *)conn;
    if (c->phase != H2O_DB_MYSQL_READY)
        return; /* failing already: the pool answers everything in flight */
    const char *sql = h2o_db_wire_sql(op, "START TRANSACTION");
    int text = op->kind != H2O_DB_WIRE_QUERY;
    h2o_db_mysql_job_t *job = push_job(c);
    int ok = job != NULL;
    if (ok) {
        job->kind = op->kind;
        job->text = text;
        job->no_cache = op->no_cache;
        job->stream = op->kind == H2O_DB_WIRE_QUERY && op->stream;
        size_t len = text ? strlen(sql) : op->sql_len;
        ok = buf_add(&job->sql, sql, len) == 0 && buf_add(&job->sql, "", 1) == 0;
        job->sql.len = len;
        if (!text) {
            job->nparams = op->nparams;
            for (size_t i = 0; ok && i < op->nparams; ++i) {
                h2o_db_mysql_param_t pa = {job->values.len, 0, op->params[i] == NULL};
                if (!pa.null) {
                    pa.len = strlen(op->params[i]);
                    ok = buf_add(&job->values, op->params[i], pa.len + 1) == 0;
                }
                ok = ok && buf_add(&job->params, &pa, sizeof(pa)) == 0;
            }
        }
    }
    if (!ok) {
        /* reported on the next iteration: no callback may run inside h2o_db_query() */
        h2o_db_mysql_fail_later(c, "08006", "out of memory");
        return;
    }
    h2o_db_flush_later(c->super.thread, &c->flusher);
}

/* ---- answers (and PostgreSQL's transaction rules) ---- */

/* "ROLLBACK TO [SAVEPOINT] name": what ends the failed state of a transaction, as on PostgreSQL */
static int is_rollback_to(const char *sql)
{
    sql += strspn(sql, " \t\r\n");
    if (strncasecmp(sql, "ROLLBACK", 8) != 0 || strchr(" \t\r\n", sql[8]) == NULL || sql[8] == '\0')
        return 0;
    sql += 8;
    sql += strspn(sql, " \t\r\n");
    return strncasecmp(sql, "TO", 2) == 0 && sql[2] != '\0' && strchr(" \t\r\n", sql[2]) != NULL;
}

/* Keeps the transaction state (see in_txn) as a job is answered with r. */
static void track_txn(h2o_db_mysql_conn_t *c, h2o_db_mysql_job_t *job, h2o_db_result_t *r)
{
    switch (job->kind) {
    case H2O_DB_WIRE_BEGIN:
        c->in_txn = r->status == H2O_DB_OK;
        c->txn_failed = 0;
        break;
    case H2O_DB_WIRE_COMMIT:
    case H2O_DB_WIRE_ROLLBACK:
        if (job->commit_as_rollback && r->status == H2O_DB_OK)
            h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "25P02",
                                     "the transaction had failed, so it was rolled back instead of committed");
        c->in_txn = 0;
        c->txn_failed = 0;
        break;
    default:
        if (c->in_txn && r->status != H2O_DB_OK)
            c->txn_failed = 1;
        else if (c->in_txn && c->txn_failed && is_rollback_to(job->sql.base))
            c->txn_failed = 0;
        break;
    }
}

/* The running job is answered: hand its result to the pool (which may send more, or fail the
 * connection, from inside the callbacks). Returns 0 when the connection goes on. */
static int answer(h2o_db_mysql_conn_t *c, h2o_db_result_t *r)
{
    h2o_db_mysql_prepared_t *p = c->current;
    track_txn(c, current_job(c), r);
    if (p != NULL) {
        unsigned err = r->status != H2O_DB_OK ? mysql_stmt_errno(p->stmt) : 0;
        if (c->entry != NULL && (err == ER_UNKNOWN_STMT_HANDLER || err == ER_NEED_REPREPARE || err == CR_NEW_STMT_METADATA))
            h2o_db_stmt_cache_remove(&c->cache, c->entry); /* prepared anew next time (c->entry is now NULL) */
        if (c->entry == NULL)
            h2o_db_mysql_prepared_drop(c, p); /* a one-off, or it left the cache while it ran */
    }
    c->current = NULL;
    c->entry = NULL;
    c->job_running = 0;
    c->step = STEP_IDLE;
    pop_job(c);
    if (c->super.cbs->result(&c->super, r) != 0)
        c->stopped = 1;
    h2o_db_mysql_rows_reset(&c->rows);
    return c->phase == H2O_DB_MYSQL_READY && !c->stopped ? 0 : -1;
}

/* Answers the job about to start with an error of its own, without the server: returns as
 * start_execute (1 when the connection goes on, -1 when it broke). */
static int refuse(h2o_db_mysql_conn_t *c, const char *sqlstate, const char *message)
{
    h2o_db_result_t r;
    h2o_db_result_init_error(&r, H2O_DB_SQL_ERROR, sqlstate, message);
    return answer(c, &r) == 0 ? 1 : -1;
}

/* A statement failed: either the connection is gone (fail it) or answer the error. */
static int answer_stmt_error(h2o_db_mysql_conn_t *c, MYSQL_STMT *stmt)
{
    unsigned err = mysql_stmt_errno(stmt);
    const char *state = mysql_stmt_sqlstate(stmt);
    if (h2o_db_mysql_is_connection_error(err, state)) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", mysql_stmt_error(stmt));
        h2o_db_mysql_fail(c, h2o_db_mysql_lost_sqlstate(err), msg);
        return -1;
    }
    h2o_db_result_t r;
    h2o_db_mysql_result_error(&r, err, state, mysql_stmt_error(stmt));
    return answer(c, &r);
}

static int answer_mysql_error(h2o_db_mysql_conn_t *c)
{
    unsigned err = mysql_errno(c->mysql);
    const char *state = mysql_sqlstate(c->mysql);
    if (h2o_db_mysql_is_connection_error(err, state)) {
        h2o_db_mysql_fail_from_mysql(c, "08006");
        return -1;
    }
    h2o_db_result_t r;
    h2o_db_mysql_result_error(&r, err, state, mysql_error(c->mysql));
    return answer(c, &r);
}

/* ---- running statements ---- */

/* Binds and executes the running statement; returns 0 when the step starts, 1 when the job was
 * answered without the server (the caller goes on), -1 when the connection broke. */
static int start_execute(h2o_db_mysql_conn_t *c)
{
    h2o_db_result_t r;
    if (h2o_db_mysql_bind_params(c, current_job(c), &r) != 0)
        return answer(c, &r) == 0 ? 1 : -1;
    c->step = STEP_EXECUTE;
    return 0;
}

/* Starts the job at the head of the FIFO; returns as start_execute. */
static int start_job(h2o_db_mysql_conn_t *c)
{
    h2o_db_mysql_job_t *job = current_job(c);
    c->job_running = 1;
    c->current = NULL;
    c->entry = NULL;
    c->drop_rows = 0;
    if (c->txn_failed) {
        if (job->kind == H2O_DB_WIRE_QUERY && !is_rollback_to(job->sql.base))
            return refuse(c, "25P02", "current transaction is aborted, commands ignored until end of transaction block");
        if (job->kind == H2O_DB_WIRE_COMMIT) {
            job->sql.len = 0;
            if (buf_add(&job->sql, "ROLLBACK", 9) != 0)
                return refuse(c, "53200", "out of memory");
            job->sql.len = 8;
            job->commit_as_rollback = 1;
        }
    }
    if (job->text) {
        c->step = STEP_TEXT_QUERY;
        return 0;
    }
    if (!job->no_cache && c->cache.capacity != 0) {
        h2o_db_cached_t *entry = h2o_db_stmt_cache_get(&c->cache, job->sql.base, job->sql.len);
        if (entry != NULL && entry->value != NULL) {
            H2O_DB_INC(c->super.stats->cache_hits);
            c->entry = entry;
            c->current = entry->value;
            return start_execute(c);
        }
        H2O_DB_INC(c->super.stats->cache_misses);
    }
    /* prepare it */
    const char *sqlstate;
    char msg[128];
    if ((c->current = h2o_db_mysql_prepared_new(c, job->sql.base, job->sql.len, &sqlstate, msg, sizeof(msg))) == NULL)
        return refuse(c, sqlstate, msg);
    c->step = STEP_PREPARE;
    return 0;
}

/* Chooses the next step; returns 0 when one is to start, -1 when idle (or broken). */
static int next_step(h2o_db_mysql_conn_t *c)
{
    for (;;) {
        if (c->phase != H2O_DB_MYSQL_READY || c->stopped)
            return -1;
        if (c->num_closing != 0) {
            c->step = STEP_CLOSE_STMT;
            return 0;
        }
        if (c->count == 0) {
            c->step = STEP_IDLE;
            return -1;
        }
        int ret = start_job(c);
        if (ret <= 0)
            return ret;
    }
}

/* The running job is complete: answer with c->result and go on. */
static int finish_job(h2o_db_mysql_conn_t *c)
{
    h2o_db_result_t r = c->result;
    if (answer(c, &r) != 0)
        return -1;
    return next_step(c);
}

/* After a result of the text protocol: what comes next. */
static int text_more(h2o_db_mysql_conn_t *c)
{
    if (mysql_more_results(c->mysql)) {
        c->step = STEP_TEXT_NEXT;
        return 0;
    }
    return finish_job(c);
}

static int stmt_more(h2o_db_mysql_conn_t *c)
{
    if (mysql_stmt_more_results(c->current->stmt)) {
        c->step = STEP_STMT_NEXT;
        return 0;
    }
    return finish_job(c);
}

static int after_stmt_error(h2o_db_mysql_conn_t *c)
{
    if (answer_stmt_error(c, c->current->stmt) != 0)
        return -1;
    return next_step(c);
}

static int after_mysql_error(h2o_db_mysql_conn_t *c)
{
    if (answer_mysql_error(c) != 0)
        return -1;
    return next_step(c);
}

/* ---- streamed rows ---- */

/* The streamed statement executed and has rows: fetch them one at a time. */
static int start_stream(h2o_db_mysql_conn_t *c)
{
    if (h2o_db_mysql_stream_begin(&c->rows, c->current->stmt) != 0) {
        h2o_db_mysql_fail(c, "53200", "out of memory"); /* (its rows cannot be skipped without reading them) */
        return -1;
    }
    c->streamed = 0;
    c->step = STEP_STREAM_FETCH;
    return 0;
}

/* A row of the stream was fetched (or its end, or an error): hand it over. Returns as step_done. */
static int stream_fetched(h2o_db_mysql_conn_t *c)
{
    MYSQL_STMT *stmt = c->current->stmt;
    if (c->ret_int == 1) /* (after rows, maybe); an error the server sent mid-result is the connection's */
        return mysql_stmt_errno(stmt) != 0 ? after_stmt_error(c) : after_mysql_error(c);
    if (c->ret_int == MYSQL_NO_DATA) {
        mysql_stmt_free_result(stmt); /* read to its end: no I/O */
        h2o_db_result_init_ok(&c->result, c->streamed);
        return stmt_more(c);
    }
    h2o_db_result_t r; /* a row (MYSQL_DATA_TRUNCATED too: such a value is fetched whole) */
    if (h2o_db_mysql_stream_row(&c->rows, stmt, &r) != 0) {
        h2o_db_mysql_fail(c, r.sqlstate, r.error);
        return -1;
    }
    ++c->streamed;
    int ret = c->super.cbs->row(&c->super, &r);
    if (ret < 0)
        c->stopped = 1;
    if (c->phase != H2O_DB_MYSQL_READY || c->stopped)
        return -1;
    if (ret > 0) {
        c->step = STEP_STREAM_PAUSED;
        h2o_db_mysql_unwatch(c);
        return -1;
    }
    return 0; /* the next row */
}

static void on_resume_later(h2o_db_later_t *later)
{
    h2o_db_mysql_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_mysql_conn_t, resume_later, later);
    if (c->phase != H2O_DB_MYSQL_READY || c->stopped || c->step != STEP_STREAM_PAUSED)
        return;
    c->step = STEP_STREAM_FETCH;
    h2o_db_mysql_drive(c, 0);
}

/* Continues a paused stream, on the next iteration (never from inside resume). */
static void my_resume(h2o_db_pipe_t *conn)
{
    h2o_db_mysql_conn_t *c = (h2o_db_mysql_conn_t *)conn;
    if (c->phase == H2O_DB_MYSQL_READY && c->step == STEP_STREAM_PAUSED)
        h2o_db_later(conn->thread, &c->resume_later);
}

/* ---- connecting ---- */

static int enter_ready(h2o_db_mysql_conn_t *c)
{
    free(c->setup_sql);
    c->setup_sql = NULL;
    c->phase = H2O_DB_MYSQL_READY;
    c->step = STEP_IDLE;
    uv_timer_stop(&c->connect_timer);
    c->super.cbs->connected(&c->super);
    return next_step(c);
}

static int setup_failed(h2o_db_mysql_conn_t *c)
{
    char msg[300];
    const char *state = mysql_sqlstate(c->mysql);
    snprintf(msg, sizeof(msg), "on-connect failed: %s", mysql_error(c->mysql));
    msg[strcspn(msg, "\n")] = '\0';
    /* a broken setup statement is a configuration problem: report it as the database refusing */
    h2o_db_mysql_fail(c, state != NULL && strlen(state) == 5 && strcmp(state, "00000") != 0 ? state : "08006", msg);
    return -1;
}

static int setup_more(h2o_db_mysql_conn_t *c)
{
    if (mysql_field_count(c->mysql) > 0) {
        c->step = STEP_SETUP_STORE;
        return 0;
    }
    if (mysql_more_results(c->mysql)) {
        c->step = STEP_SETUP_NEXT;
        return 0;
    }
    return enter_ready(c);
}

static int connected(h2o_db_mysql_conn_t *c)
{
    h2o_db_bind_t *bind = c->super.bind;
    c->handshake_done = 1;
    c->is_mariadb = mariadb_connection(c->mysql);
    c->thread_id = mysql_thread_id(c->mysql);
    char timeout_sql[96] = "";
    if (bind->pool.statement_timeout != 0) {
        if (c->is_mariadb)
            snprintf(timeout_sql, sizeof(timeout_sql), "SET SESSION max_statement_time = %.3f;",
                     bind->pool.statement_timeout / 1000.0);
        else
            snprintf(timeout_sql, sizeof(timeout_sql), "SET SESSION max_execution_time = %llu;",
                     (unsigned long long)bind->pool.statement_timeout);
    }
    if (timeout_sql[0] == '\0' && bind->on_connect == NULL)
        return enter_ready(c);
    size_t len = strlen(timeout_sql) + (bind->on_connect != NULL ? strlen(bind->on_connect) : 0) + 1;
    c->setup_sql = malloc(len);
    snprintf(c->setup_sql, len, "%s%s", timeout_sql, bind->on_connect != NULL ? bind->on_connect : "");
    c->phase = H2O_DB_MYSQL_SETUP;
    c->step = STEP_SETUP_QUERY;
    return 0;
}

/* ---- the connector's calls ---- */

/* Starts (ready == 0) or resumes the current step's connector call; returns its wait mask. */
static int call(h2o_db_mysql_conn_t *c, int ready)
{
    h2o_db_url_t *url = &c->super.bind->url;
    h2o_db_mysql_job_t *job = c->count != 0 ? current_job(c) : NULL;
    MYSQL_STMT *stmt = c->current != NULL ? c->current->stmt : NULL;
    switch (c->step) {
    case STEP_CONNECT: {
        if (ready != 0)
            return mysql_real_connect_cont(&c->ret_mysql, c->mysql, ready);
        const char *password = c->super.bind->password != NULL ? c->super.bind->password : url->mysql.password;
        const char *host = url->mysql.unix_socket != NULL ? "localhost" : c->address != NULL ? c->address : url->mysql.host;
        return mysql_real_connect_start(&c->ret_mysql, c->mysql, host, url->mysql.user, password, url->mysql.database,
                                        url->mysql.port, url->mysql.unix_socket, CLIENT_MULTI_STATEMENTS | CLIENT_FOUND_ROWS);
    }
    case STEP_SETUP_QUERY:
        return ready != 0 ? mysql_real_query_cont(&c->ret_int, c->mysql, ready)
                          : mysql_real_query_start(&c->ret_int, c->mysql, c->setup_sql, (unsigned long)strlen(c->setup_sql));
    case STEP_TEXT_QUERY:
        return ready != 0 ? mysql_real_query_cont(&c->ret_int, c->mysql, ready)
                          : mysql_real_query_start(&c->ret_int, c->mysql, job->sql.base, (unsigned long)job->sql.len);
    case STEP_SETUP_STORE:
    case STEP_TEXT_STORE:
        return ready != 0 ? mysql_store_result_cont(&c->ret_res, c->mysql, ready) : mysql_store_result_start(&c->ret_res, c->mysql);
    case STEP_SETUP_NEXT:
    case STEP_TEXT_NEXT:
        return ready != 0 ? mysql_next_result_cont(&c->ret_int, c->mysql, ready) : mysql_next_result_start(&c->ret_int, c->mysql);
    case STEP_CLOSE_STMT:
        return ready != 0 ? mysql_stmt_close_cont(&c->ret_bool, c->closing[c->num_closing - 1], ready)
                          : mysql_stmt_close_start(&c->ret_bool, c->closing[c->num_closing - 1]);
    case STEP_PREPARE:
        return ready != 0 ? mysql_stmt_prepare_cont(&c->ret_int, stmt, ready)
                          : mysql_stmt_prepare_start(&c->ret_int, stmt, c->psql.base, (unsigned long)c->psql.len);
    case STEP_EXECUTE:
        return ready != 0 ? mysql_stmt_execute_cont(&c->ret_int, stmt, ready) : mysql_stmt_execute_start(&c->ret_int, stmt);
    case STEP_STMT_STORE:
    case STEP_STMT_STORE_MORE:
        return ready != 0 ? mysql_stmt_store_result_cont(&c->ret_int, stmt, ready)
                          : mysql_stmt_store_result_start(&c->ret_int, stmt);
    case STEP_STMT_NEXT:
        return ready != 0 ? mysql_stmt_next_result_cont(&c->ret_int, stmt, ready) : mysql_stmt_next_result_start(&c->ret_int, stmt);
    case STEP_STREAM_FETCH:
        return ready != 0 ? mysql_stmt_fetch_cont(&c->ret_int, stmt, ready) : mysql_stmt_fetch_start(&c->ret_int, stmt);
    default:
        return 0;
    }
}

/* The current step's call is complete: decide what comes next. Returns 0 when another step is
 * to start, -1 when there is nothing to do (idle, or the connection broke). */
static int step_done(h2o_db_mysql_conn_t *c)
{
    h2o_db_mysql_prepared_t *p = c->current;
    switch (c->step) {
    case STEP_CONNECT:
        if (c->ret_mysql == NULL) {
            h2o_db_mysql_fail_from_mysql(c, "08001");
            return -1;
        }
        return connected(c);
    case STEP_SETUP_QUERY:
        if (c->ret_int != 0)
            return setup_failed(c);
        return setup_more(c);
    case STEP_SETUP_STORE:
        if (c->ret_res == NULL && mysql_errno(c->mysql) != 0)
            return setup_failed(c);
        mysql_free_result(c->ret_res); /* stored: no I/O */
        c->ret_res = NULL;
        if (mysql_more_results(c->mysql)) {
            c->step = STEP_SETUP_NEXT;
            return 0;
        }
        return enter_ready(c);
    case STEP_SETUP_NEXT:
        if (c->ret_int > 0)
            return setup_failed(c);
        if (c->ret_int == 0)
            return setup_more(c);
        return enter_ready(c);
    case STEP_CLOSE_STMT:
        --c->num_closing;
        if (c->ret_bool && h2o_db_mysql_is_connection_error(mysql_errno(c->mysql), mysql_sqlstate(c->mysql))) {
            h2o_db_mysql_fail_from_mysql(c, "08006");
            return -1;
        }
        return next_step(c);
    case STEP_PREPARE:
        if (c->ret_int != 0) {
            if (mysql_stmt_errno(p->stmt) == ER_UNSUPPORTED_PS && p->nmarks == 0) {
                /* not for the prepared-statement protocol (and without parameters): as text */
                h2o_db_mysql_prepared_drop(c, p);
                c->current = NULL;
                c->step = STEP_TEXT_QUERY;
                return 0;
            }
            return after_stmt_error(c);
        }
        h2o_db_mysql_prepared_keep(c, current_job(c));
        buf_trim(&c->psql);
        switch (start_execute(c)) {
        case 0:
            return 0;
        case 1:
            return next_step(c);
        default:
            return -1;
        }
    case STEP_EXECUTE:
        if (c->ret_int != 0)
            return after_stmt_error(c);
        if (mysql_stmt_field_count(p->stmt) > 0) {
            if (current_job(c)->stream)
                return start_stream(c);
            c->step = STEP_STMT_STORE;
            return 0;
        }
        h2o_db_result_init_ok(&c->result, mysql_stmt_affected_rows(p->stmt));
        return stmt_more(c);
    case STEP_STMT_STORE:
        if (c->ret_int != 0)
            return after_stmt_error(c);
        h2o_db_mysql_read_stmt_rows(&c->rows, p->stmt, &c->result);
        mysql_stmt_free_result(p->stmt); /* stored: no I/O */
        return stmt_more(c);
    case STEP_STMT_NEXT:
        if (c->ret_int > 0)
            return after_stmt_error(c);
        if (c->ret_int < 0)
            return finish_job(c);
        if (mysql_stmt_field_count(p->stmt) > 0) {
            c->step = STEP_STMT_STORE_MORE;
            return 0;
        }
        return stmt_more(c);
    case STEP_STMT_STORE_MORE:
        /* a CALL's further results: the first one answers */
        if (c->ret_int != 0)
            return after_stmt_error(c);
        mysql_stmt_free_result(p->stmt);
        return stmt_more(c);
    case STEP_TEXT_QUERY:
        if (c->ret_int != 0)
            return after_mysql_error(c);
        if (mysql_field_count(c->mysql) > 0) {
            c->step = STEP_TEXT_STORE;
            return 0;
        }
        h2o_db_result_init_ok(&c->result, mysql_affected_rows(c->mysql));
        return text_more(c);
    case STEP_TEXT_STORE:
        if (c->ret_res == NULL)
            return after_mysql_error(c);
        if (!c->drop_rows)
            h2o_db_mysql_read_text_rows(&c->rows, c->ret_res, &c->result);
        mysql_free_result(c->ret_res); /* stored: no I/O */
        c->ret_res = NULL;
        return text_more(c);
    case STEP_STREAM_FETCH:
        return stream_fetched(c);
    case STEP_TEXT_NEXT:
        if (c->ret_int > 0)
            return after_mysql_error(c);
        if (c->ret_int < 0)
            return finish_job(c);
        if (mysql_field_count(c->mysql) > 0) {
            /* only the first result answers: the others are stored and dropped */
            c->drop_rows = 1;
            c->step = STEP_TEXT_STORE;
            return 0;
        }
        return text_more(c);
    default:
        return -1;
    }
}

/* Runs connector calls until one waits for I/O, or there is nothing to do. ready: 0 to start the
 * current step, otherwise what happened (MYSQL_WAIT_*) to resume the call that waits. */
void h2o_db_mysql_drive(h2o_db_mysql_conn_t *c, int ready)
{
    while (c->phase != H2O_DB_MYSQL_BROKEN) {
        int status = call(c, c->in_call ? ready : 0);
        ready = 0;
        if (status != 0) {
            h2o_db_mysql_wait_for(c, status);
            return;
        }
        c->in_call = 0;
        if (step_done(c) != 0) {
            if (c->phase == H2O_DB_MYSQL_READY && c->step == STEP_IDLE && !c->stopped)
                h2o_db_mysql_watch_idle(c);
            return;
        }
    }
}

static void on_flush(h2o_db_flusher_t *flusher)
{
    h2o_db_mysql_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_mysql_conn_t, flusher, flusher);
    if (c->phase != H2O_DB_MYSQL_READY || c->in_call || c->step != STEP_IDLE)
        return;
    if (next_step(c) == 0)
        h2o_db_mysql_drive(c, 0);
}

void h2o_db_mysql_start_handshake(h2o_db_mysql_conn_t *c)
{
    c->phase = H2O_DB_MYSQL_CONNECT;
    c->step = STEP_CONNECT;
    h2o_db_mysql_drive(c, 0);
}

/* ---- open and close ---- */

static h2o_db_pipe_t *my_open(const h2o_db_pipe_t *proto)
{
    h2o_db_mysql_conn_t *c = calloc(1, sizeof(*c));
    c->super = *proto;
    c->flusher.cb = on_flush;
    c->resume_later.cb = on_resume_later;
    h2o_db_stmt_cache_init(&c->cache, proto->bind->pool.statement_cache, h2o_db_mysql_prepared_evicted, c);
    h2o_db_mysql_connect(c);
    return &c->super;
}

/* Ends a connector call that waits, without waiting: the socket is shut, so it fails at once. */
void h2o_db_mysql_abandon_call(h2o_db_mysql_conn_t *c)
{
    if (!c->in_call)
        return;
    int fd = (int)mysql_get_socket(c->mysql);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    int status = 1;
    for (int i = 0; i < 1000 && status != 0; ++i)
        status = call(c, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_TIMEOUT);
    c->in_call = 0;
    if (c->step == STEP_CLOSE_STMT && status == 0)
        --c->num_closing; /* it is closed (and freed) */
    if ((c->step == STEP_SETUP_STORE || c->step == STEP_TEXT_STORE) && c->ret_res != NULL) {
        mysql_free_result(c->ret_res);
        c->ret_res = NULL;
    }
}

void h2o_db_mysql_dispose_steps(h2o_db_mysql_conn_t *c)
{
    h2o_db_mysql_prepared_dispose(c);
    for (size_t i = 0; i < c->capacity; ++i) {
        buf_free(&c->jobs[i].sql);
        buf_free(&c->jobs[i].params);
        buf_free(&c->jobs[i].values);
    }
    free(c->jobs);
    buf_free(&c->psql);
    h2o_db_mysql_rows_free(&c->rows);
    free(c->setup_sql);
}

/* ---- start-up (main thread, blocking) ---- */

static int my_prepare_bind(h2o_db_bind_t *bind, char *err, size_t errsz)
{
    h2o_db_mysql_library_init();
    return 0;
}

static void my_dispose_bind(h2o_db_bind_t *bind)
{
}

static const char *my_version(void)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), "MariaDB Connector/C %s", MARIADB_PACKAGE_VERSION);
    return buf;
}

const h2o_db_driver_t h2o_db_driver_mysql = {
    .name = "mysql",
    .pipelines = 0,
    .open = my_open,
    .send = my_send,
    .close = h2o_db_mysql_close,
    .cancel = h2o_db_mysql_cancel,
    .resume = my_resume,
    .run_script = h2o_db_mysql_run_script,
    .prepare_bind = my_prepare_bind,
    .dispose_bind = my_dispose_bind,
    .version = my_version,
};
