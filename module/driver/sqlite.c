/*
 * SQLite: every connection has a worker thread of its own (as aiosqlite does),
 * so that a slow statement or a busy wait never blocks the event loop.
 *
 * The loop hands statements to the worker through a ring of jobs; the worker
 * runs them in order, copies each result into the job (rows as text with their
 * types, so the loop never calls into SQLite; sqlite_rows.c), and wakes the loop
 * with uv_async_send. Job buffers are reused, so a warm connection allocates nothing.
 * A streamed statement's rows come over in blocks while it runs (sqlite.h); the
 * loop hands them to the pool one at a time, and gives each block back when done.
 *
 * Placeholders are $1..$n as on PostgreSQL: SQLite takes "$1" as a parameter
 * name, so each is bound by name (the order in the SQL does not matter).
 * Errors carry a SQLSTATE chosen to match PostgreSQL's (constraint violations
 * class 23, SQLITE_BUSY 40001, ...), so handlers treat both backends alike.
 */
#include <libgen.h>
#include <unistd.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/sqlite.h"

#define job_error(job, sqlstate, message) h2o_db_sqlite_job_errorf(job, sqlstate, "%s", message)

struct memdb_keeper {
    sqlite3 *db;
};

/* ---- the worker ---- */

/* SQLite keeps a transaction open after one of its statements failed; PostgreSQL aborts it. Do as
 * PostgreSQL does, so that handlers see the same on every backend: the next statements answer
 * 25P02, and COMMIT rolls back and answers 25P02. */
static void run_exec(struct sq_conn *c, struct job *job)
{
    if (job->txn == TXN_BEGIN || job->txn == TXN_ROLLBACK)
        c->txn_aborted = 0;
    if (c->txn_aborted) {
        if (job->txn != TXN_COMMIT) {
            job_error(job, "25P02", "current transaction is aborted, commands ignored until end of transaction block");
            return;
        }
        c->txn_aborted = 0;
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
        job_error(job, "25P02", "the transaction had failed, so it was rolled back instead of committed");
        return;
    }
    h2o_db_sqlite_run_statement(c, job);
    if (job->ok || sqlite3_get_autocommit(c->db))
        return;
    if (job->txn == TXN_COMMIT)
        sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL); /* a failed COMMIT ends the transaction */
    else if (job->txn != TXN_ROLLBACK)
        c->txn_aborted = 1;
}

static void close_db(struct sq_conn *c)
{
    h2o_db_stmt_cache_dispose(&c->cache);
    pthread_mutex_lock(&c->lock);
    c->db_open = 0;
    pthread_mutex_unlock(&c->lock);
    if (c->db != NULL)
        sqlite3_close_v2(c->db);
    c->db = NULL;
}

static void run_open(struct sq_conn *c, struct job *job)
{
    job->ok = 1;
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(c->filename, &db, c->flags, NULL);
    pthread_mutex_lock(&c->lock);
    c->db = db;
    c->db_open = db != NULL;
    pthread_mutex_unlock(&c->lock);
    if (rc != SQLITE_OK) {
        h2o_db_sqlite_job_errorf(job, "08006", "%s", c->db != NULL ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        close_db(c);
        return;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, (int)(c->bind->pool.acquire_timeout > 60000 ? 60000 : c->bind->pool.acquire_timeout));
    if (c->bind->on_connect != NULL) {
        char *err = NULL;
        if (sqlite3_exec(c->db, c->bind->on_connect, NULL, NULL, &err) != SQLITE_OK) {
            h2o_db_sqlite_job_errorf(job, h2o_db_sqlite_sqlstate(sqlite3_extended_errcode(c->db), err), "on-connect failed: %s",
                                     err != NULL ? err : "error");
            sqlite3_free(err);
            close_db(c);
        }
    }
}

static void *worker_main(void *arg)
{
    struct sq_conn *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        while (c->taken == c->submitted)
            pthread_cond_wait(&c->cond, &c->lock);
        struct job *job = c->jobs + c->taken % c->capacity;
        ++c->taken;
        pthread_mutex_unlock(&c->lock);

        int kind = job->kind;
        switch (kind) {
        case JOB_OPEN:
            run_open(c, job);
            break;
        case JOB_EXEC:
            if (job->oom)
                job_error(job, "53200", "out of memory");
            else if (c->db != NULL)
                run_exec(c, job);
            else
                job_error(job, "08003", "the SQLite connection is not open");
            break;
        case JOB_CLOSE:
            close_db(c);
            job->ok = 1;
            break;
        }

        pthread_mutex_lock(&c->lock);
        ++c->finished;
        pthread_mutex_unlock(&c->lock);
        uv_async_send(&c->async);
        if (kind == JOB_CLOSE)
            return NULL;
    }
}

/* ---- the loop's side ---- */

static void submit(struct sq_conn *c, struct job *job)
{
    pthread_mutex_lock(&c->lock);
    ++c->submitted;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    (void)job;
}

static struct job *next_job(struct sq_conn *c, int kind)
{
    struct job *job = c->jobs + c->submitted % c->capacity;
    job->kind = kind;
    return job;
}

static void free_conn(uv_handle_t *handle)
{
    struct sq_conn *c = handle->data;
    if (c->thread_started)
        pthread_join(c->thread, NULL);
    for (size_t i = 0; i < c->capacity; ++i) {
        struct job *job = c->jobs + i;
        buf_free(&job->sql);
        buf_free(&job->params);
        buf_free(&job->param_null);
        buf_free(&job->names);
        buf_free(&job->cells);
        buf_free(&job->text);
    }
    for (size_t i = 0; i < SQ_STREAM_BLOCKS; ++i) {
        buf_free(&c->stream.blocks[i].cells);
        buf_free(&c->stream.blocks[i].text);
    }
    free(c->jobs);
    free(c->filename);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
}

/* The streamed job that runs (the oldest sent), or NULL. */
static struct job *streaming(struct sq_conn *c)
{
    struct job *job = c->jobs + c->delivered % c->capacity;
    return c->delivered < c->submitted && job->kind == JOB_EXEC && job->stream ? job : NULL;
}

/* Tells the worker to stop stepping the stream of job number `no` (SIZE_MAX: any), and interrupts
 * what it steps. */
static void halt_stream(struct sq_conn *c, size_t no)
{
    pthread_mutex_lock(&c->lock);
    c->stream.halt = no == SIZE_MAX ? SIZE_MAX : no + 1;
    if (c->db_open)
        sqlite3_interrupt(c->db);
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* Hands the rows of streamed job (the oldest sent) over, one at a time, as far as the worker
 * has them and the pool takes them; returns 1 when the job's end may follow (every row handed
 * over and `done`: the worker has finished it), 0 to wait for more rows or for resume. */
static int deliver_rows(struct sq_conn *c, struct job *job, int done)
{
    struct stream *s = &c->stream;
    for (;;) {
        if (c->closed || c->stopped)
            return done; /* nothing more is delivered; the worker was told to stop */
        if (s->paused)
            return 0;
        pthread_mutex_lock(&c->lock);
        size_t produced = s->produced;
        pthread_mutex_unlock(&c->lock);
        if (s->consumed == produced)
            return done;
        struct sq_rowref ref = {job, s->blocks + s->consumed % SQ_STREAM_BLOCKS, s->row};
        while (ref.row < ref.block->rows && !s->paused) {
            h2o_db_result_t r;
            h2o_db_sqlite_result_row(&r, &ref);
            s->row = ref.row + 1;
            ++s->delivered;
            int ret = c->super.cbs->row(&c->super, &r);
            ++ref.row;
            if (ret < 0) {
                c->stopped = 1;
                halt_stream(c, job->no);
                return done;
            }
            s->paused = ret > 0;
        }
        if (s->row < ref.block->rows)
            return 0; /* paused inside the block */
        /* the block is handed over: back to the worker */
        s->row = 0;
        pthread_mutex_lock(&c->lock);
        ++s->consumed;
        pthread_cond_signal(&c->cond);
        pthread_mutex_unlock(&c->lock);
    }
}

/* The answer of a job whose rows were all handed over. */
static void deliver_result(struct sq_conn *c, struct job *job, uint64_t streamed)
{
    h2o_db_result_t r;
    if (job->ok) {
        h2o_db_result_init_ok(&r, job->stream && job->columns != 0 ? streamed : job->affected);
        if (!job->stream)
            h2o_db_sqlite_result_rows(&r, job);
    } else {
        h2o_db_result_init_error(&r, h2o_db_status_for_sqlstate(job->sqlstate), job->sqlstate, job->message);
    }
    if (c->super.cbs->result(&c->super, &r) != 0)
        c->stopped = 1;
}

/* The stream's rows are all handed over; returns how many. */
static uint64_t end_stream(struct sq_conn *c)
{
    struct stream *s = &c->stream;
    uint64_t n = s->delivered;
    s->delivered = 0;
    s->paused = 0;
    h2o_db_later_cancel(&s->resume_later);
    if (c->delivered != c->submitted)
        return n; /* (never: a stream runs alone) the worker may be filling them again */
    for (size_t i = 0; i < SQ_STREAM_BLOCKS; ++i) {
        buf_trim(&s->blocks[i].cells);
        buf_trim(&s->blocks[i].text);
    }
    return n;
}

static void on_async(uv_async_t *async)
{
    struct sq_conn *c = async->data;
    pthread_mutex_lock(&c->lock);
    size_t finished = c->finished;
    pthread_mutex_unlock(&c->lock);

    while (c->delivered < c->submitted) {
        struct job *job = c->jobs + c->delivered % c->capacity;
        int done = c->delivered < finished;
        if (job->kind == JOB_EXEC && job->stream && !deliver_rows(c, job, done))
            return;
        if (!done)
            return;
        ++c->delivered;
        switch (job->kind) {
        case JOB_OPEN:
            if (c->closed)
                break;
            if (job->ok)
                c->super.cbs->connected(&c->super);
            else
                c->super.cbs->failed(&c->super, job->sqlstate, job->message);
            break;
        case JOB_EXEC:
            if (job->cacheable) {
                if (job->cache_hit)
                    H2O_DB_INC(c->super.stats->cache_hits);
                else
                    H2O_DB_INC(c->super.stats->cache_misses);
            }
            uint64_t streamed = job->stream ? end_stream(c) : 0;
            if (!c->closed && !c->stopped)
                deliver_result(c, job, streamed);
            buf_trim(&job->names);
            buf_trim(&job->cells);
            buf_trim(&job->text);
            break;
        case JOB_CLOSE:
            uv_close((uv_handle_t *)&c->async, free_conn);
            return;
        }
    }
}

/* Rows of a paused stream come again, on the next iteration. */
static void sq_resume(h2o_db_pipe_t *conn)
{
    struct sq_conn *c = (struct sq_conn *)conn;
    if (!c->stream.paused || c->closed)
        return;
    c->stream.paused = 0;
    h2o_db_later(conn->thread, &c->stream.resume_later);
}

static void on_resume_later(h2o_db_later_t *later)
{
    struct sq_conn *c = H2O_STRUCT_FROM_MEMBER(struct sq_conn, stream.resume_later, later);
    on_async(&c->async);
}

static void on_cancelled_later(h2o_db_later_t *later);

static h2o_db_pipe_t *sq_open(const h2o_db_pipe_t *proto)
{
    h2o_db_bind_t *bind = proto->bind;
    struct sq_conn *c = calloc(1, sizeof(*c));
    c->super = *proto;
    c->bind = bind;
    c->cancelled_later.cb = on_cancelled_later;
    c->stream.resume_later.cb = on_resume_later;
    h2o_db_stmt_cache_init(&c->cache, bind->pool.statement_cache, h2o_db_sqlite_finalize_evicted, c);
    c->capacity = bind->pool.pipeline_depth + 3; /* + open, cleanup ROLLBACK, close */
    c->jobs = calloc(c->capacity, sizeof(*c->jobs));
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    if (bind->url.memory_name != NULL) {
        size_t n = strlen(bind->url.memory_name) + 32;
        c->filename = malloc(n);
        snprintf(c->filename, n, "file:%s?vfs=memdb", bind->url.memory_name);
        c->flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI;
    } else {
        c->filename = strdup(bind->url.sqlite_path);
        c->flags = bind->url.sqlite_readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    }
    c->flags |= SQLITE_OPEN_NOMUTEX; /* one thread uses it */
    uv_async_init(proto->thread->loop, &c->async, on_async);
    c->async.data = c;
    next_job(c, JOB_OPEN);
    submit(c, NULL);
    if (pthread_create(&c->thread, NULL, worker_main, c) == 0) {
        c->thread_started = 1;
    } else {
        /* no thread: the open fails (answered through the async handle, on the loop) */
        job_error(c->jobs, "53000", "cannot start a thread for the SQLite connection");
        c->taken = c->finished = 1;
        uv_async_send(&c->async);
    }
    return &c->super;
}

static void sq_send(h2o_db_pipe_t *conn, const h2o_db_wire_t *op)
{
    struct sq_conn *c = (struct sq_conn *)conn;
    struct job *job = next_job(c, JOB_EXEC);
    /* BEGIN IMMEDIATE takes the write lock at once: a deferred BEGIN that writes later can deadlock
     * on the upgrade */
    const char *sql = h2o_db_wire_sql(op, "BEGIN IMMEDIATE");
    job->sql.len = 0;
    job->params.len = 0;
    job->param_null.len = 0;
    job->nparams = op->nparams;
    job->cacheable = op->kind == H2O_DB_WIRE_QUERY && !op->no_cache;
    job->stream = op->kind == H2O_DB_WIRE_QUERY && op->stream;
    job->no = c->submitted;
    job->txn = op->kind == H2O_DB_WIRE_BEGIN      ? TXN_BEGIN
               : op->kind == H2O_DB_WIRE_COMMIT   ? TXN_COMMIT
               : op->kind == H2O_DB_WIRE_ROLLBACK ? TXN_ROLLBACK
                                                  : 0;
    int failed = buf_add(&job->sql, sql, strlen(sql) + 1) != 0;
    job->sql.len -= 1; /* the NUL stays, the length does not count it */
    for (size_t i = 0; i < op->nparams && !failed; ++i) {
        char is_null = op->params[i] == NULL;
        failed |= buf_add(&job->param_null, &is_null, 1) != 0;
        if (!is_null)
            failed |= buf_add(&job->params, op->params[i], strlen(op->params[i]) + 1) != 0;
    }
    job->oom = failed;
    submit(c, job);
}

static void sq_close(h2o_db_pipe_t *conn)
{
    struct sq_conn *c = (struct sq_conn *)conn;
    h2o_db_later_cancel(&c->cancelled_later);
    h2o_db_later_cancel(&c->stream.resume_later);
    if (!c->thread_started) {
        uv_close((uv_handle_t *)&c->async, free_conn);
        return;
    }
    if (c->closed)
        return;
    c->closed = 1;
    if (streaming(c) != NULL)
        halt_stream(c, SIZE_MAX); /* its worker may wait for the loop to take rows */
    next_job(c, JOB_CLOSE);
    submit(c, NULL);
}

/* The request of a pinned connection ended, or its stream was stopped: interrupt what its worker
 * runs (sqlite3_interrupt may be called from any thread while the connection is open; the worker
 * closes it only on JOB_CLOSE, which comes after this). Statements interrupted answer SQLSTATE
 * 57014; a stream's worker also stops waiting for the loop to take its rows. */
static void sq_cancel(h2o_db_pipe_t *conn)
{
    struct sq_conn *c = (struct sq_conn *)conn;
    struct job *job = streaming(c);
    if (job != NULL) {
        halt_stream(c, job->no);
    } else {
        pthread_mutex_lock(&c->lock);
        if (c->db_open)
            sqlite3_interrupt(c->db);
        pthread_mutex_unlock(&c->lock);
    }
    h2o_db_later(conn->thread, &c->cancelled_later);
}

static void on_cancelled_later(h2o_db_later_t *later)
{
    struct sq_conn *c = H2O_STRUCT_FROM_MEMBER(struct sq_conn, cancelled_later, later);
    c->super.cbs->cancelled(&c->super);
}

/* ---- start-up ---- */

static int open_blocking(h2o_db_bind_t *bind, sqlite3 **db, char *err, size_t errsz)
{
    char *filename;
    int flags;
    if (bind->url.memory_name != NULL) {
        size_t n = strlen(bind->url.memory_name) + 32;
        filename = malloc(n);
        snprintf(filename, n, "file:%s?vfs=memdb", bind->url.memory_name);
        flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI;
    } else {
        filename = strdup(bind->url.sqlite_path);
        flags = bind->url.sqlite_readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    }
    int rc = sqlite3_open_v2(filename, db, flags, NULL);
    free(filename);
    if (rc != SQLITE_OK) {
        snprintf(err, errsz, "cannot open %s: %s", bind->url.display, *db != NULL ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
        sqlite3_close_v2(*db);
        *db = NULL;
        return -1;
    }
    sqlite3_busy_timeout(*db, 5000);
    return 0;
}

static int sq_run_script(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz)
{
    sqlite3 *db;
    if (sql == NULL && bind->url.sqlite_path != NULL && access(bind->url.sqlite_path, F_OK) != 0) {
        /* a check only: the file does not exist yet; the server will create it, if it may */
        char *copy = strdup(bind->url.sqlite_path);
        int ok = access(dirname(copy), W_OK) == 0;
        free(copy);
        if (!ok) {
            snprintf(err, errsz, "cannot create %s: the folder is not writable or does not exist", bind->url.display);
            return -1;
        }
        return 0;
    }
    if (open_blocking(bind, &db, err, errsz) != 0)
        return -1;
    int ret = 0;
    char *msg = NULL;
    if (sql != NULL && sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errsz, "%s (SQLSTATE %s)", msg != NULL ? msg : "error",
                 h2o_db_sqlite_sqlstate(sqlite3_extended_errcode(db), msg));
        ret = -1;
    }
    sqlite3_free(msg);
    sqlite3_close_v2(db);
    return ret;
}

static int sq_prepare_bind(h2o_db_bind_t *bind, char *err, size_t errsz)
{
    if (bind->url.memory_name == NULL || bind->driver_data != NULL)
        return 0;
    /* an in-memory database lives while a connection to it is open: keep one for the process */
    struct memdb_keeper *k = calloc(1, sizeof(*k));
    if (open_blocking(bind, &k->db, err, errsz) != 0) {
        free(k);
        return -1;
    }
    bind->driver_data = k;
    return 0;
}

static void sq_dispose_bind(h2o_db_bind_t *bind)
{
    struct memdb_keeper *k = bind->driver_data;
    if (k == NULL)
        return;
    sqlite3_close_v2(k->db);
    free(k);
    bind->driver_data = NULL;
}

static const char *sq_version(void)
{
    static char buf[32];
    snprintf(buf, sizeof(buf), "SQLite %s", sqlite3_libversion());
    return buf;
}

const h2o_db_driver_t h2o_db_driver_sqlite = {
    .name = "sqlite",
    .pipelines = 1,
    .open = sq_open,
    .send = sq_send,
    .close = sq_close,
    .cancel = sq_cancel,
    .resume = sq_resume,
    .run_script = sq_run_script,
    .prepare_bind = sq_prepare_bind,
    .dispose_bind = sq_dispose_bind,
    .version = sq_version,
};