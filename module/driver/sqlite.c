/*
 * SQLite: every connection has a worker thread of its own (as aiosqlite does),
 * so that a slow statement or a busy wait never blocks the event loop.
 *
 * The loop hands statements to the worker through a ring of jobs; the worker
 * runs them in order, copies each result into the job (rows as text with their
 * types, so the loop never calls into SQLite), and wakes the loop with
 * uv_async_send. Job buffers are reused, so a warm connection allocates nothing.
 *
 * Placeholders are $1..$n as on PostgreSQL: SQLite takes "$1" as a parameter
 * name, so each is bound by name (the order in the SQL does not matter).
 * Errors carry a SQLSTATE chosen to match PostgreSQL's (constraint violations
 * class 23, SQLITE_BUSY 40001, ...), so handlers treat both backends alike.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <libgen.h>
#include <unistd.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/buf.h"
#include "driver/driver.h"
#include "driver/stmt_cache.h"
#include "driver/text.h"

#define MAX_RESULT_BYTES (64u * 1024 * 1024)

enum { JOB_OPEN, JOB_EXEC, JOB_CLOSE };
enum { TXN_BEGIN = 1, TXN_COMMIT, TXN_ROLLBACK };

struct cell {
    uint32_t offset, len;
    uint8_t type; /* h2o_db_type_t */
};

struct job {
    int kind;
    int cacheable; /* a plain statement (not BEGIN/COMMIT/...): may use the statement cache */
    int txn;       /* TXN_BEGIN, TXN_COMMIT, TXN_ROLLBACK, or 0 for a plain statement */
    int cache_hit; /* out: it did */
    int oom;       /* the statement could not be copied: answer "out of memory" */
    /* in: the statement */
    struct buf sql;
    size_t nparams;
    struct buf params;     /* NUL-terminated values back to back */
    struct buf param_null; /* one byte per parameter: 1 = NULL */
    /* out */
    int ok;
    char sqlstate[6];
    char message[256];
    uint64_t affected;
    size_t rows, columns;
    struct buf names; /* column names, NUL-terminated, back to back */
    struct buf cells; /* struct cell[rows * columns] */
    struct buf text;  /* the values' text forms */
};

struct sq_conn {
    h2o_db_pipe_t super;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *jobs;
    size_t capacity;
    size_t submitted, taken, finished, delivered; /* counters; slot = counter % capacity */
    uv_async_t async;
    h2o_db_later_t cancelled_later; /* cancel() reports on the next iteration, never from inside */
    int closed;                     /* the pool closed it: nothing more is reported */
    int thread_started;
    int stopped; /* the pool stopped reading from it (its result callback returned -1) */
    int db_open; /* c->db may be interrupted (under lock) */
    /* the worker's own */
    h2o_db_stmt_cache_t cache; /* sqlite3_stmt by SQL text, used by the worker only */
    int txn_aborted;           /* a statement of the open transaction failed (PostgreSQL's rule, see run_exec) */
    sqlite3 *db;
    h2o_db_bind_t *bind;
    char *filename;
    int flags;
};

struct memdb_keeper {
    sqlite3 *db;
};

/* ---- errors ---- */

static const char *sqlstate_of(int code, const char *message)
{
    switch (code) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        return "23505";
    case SQLITE_CONSTRAINT_NOTNULL:
        return "23502";
    case SQLITE_CONSTRAINT_FOREIGNKEY:
        return "23503";
    case SQLITE_CONSTRAINT_CHECK:
        return "23514";
    }
    switch (code & 0xff) {
    case SQLITE_CONSTRAINT:
        return "23000";
    case SQLITE_BUSY:
        return "40001";
    case SQLITE_LOCKED:
        return "55P03";
    case SQLITE_INTERRUPT:
        return "57014";
    case SQLITE_NOMEM:
        return "53200";
    case SQLITE_FULL:
        return "53100";
    case SQLITE_READONLY:
        return "25006";
    case SQLITE_CANTOPEN:
        return "08006";
    case SQLITE_IOERR:
        return "58030";
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return "XX001";
    case SQLITE_TOOBIG:
        return "54000";
    case SQLITE_MISMATCH:
        return "42804";
    case SQLITE_RANGE:
        return "42P02";
    case SQLITE_AUTH:
    case SQLITE_PERM:
        return "42501";
    case SQLITE_ERROR:
        if (message != NULL) {
            if (strstr(message, "syntax error") != NULL || strstr(message, "incomplete input") != NULL)
                return "42601";
            if (strncmp(message, "no such table", 13) == 0)
                return "42P01";
            if (strncmp(message, "no such column", 14) == 0)
                return "42703";
            if (strncmp(message, "no such function", 16) == 0)
                return "42883";
            if (strstr(message, "already exists") != NULL)
                return "42P07";
            if (strstr(message, "no transaction is active") != NULL)
                return "25P01";
            if (strstr(message, "within a transaction") != NULL)
                return "25001";
        }
        return "42000";
    default:
        return "XX000";
    }
}

static void job_errorf(struct job *job, const char *sqlstate, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void job_errorf(struct job *job, const char *sqlstate, const char *fmt, ...)
{
    va_list args;
    job->ok = 0;
    snprintf(job->sqlstate, sizeof(job->sqlstate), "%s", sqlstate);
    va_start(args, fmt);
    vsnprintf(job->message, sizeof(job->message), fmt, args);
    va_end(args);
}

#define job_error(job, sqlstate, message) job_errorf(job, sqlstate, "%s", message)

static void job_sqlite_error(struct job *job, sqlite3 *db, int code)
{
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(code);
    if (db != NULL)
        code = sqlite3_extended_errcode(db);
    job_error(job, sqlstate_of(code, msg), msg);
}

/* ---- the worker ---- */

/* "42" but not "042", "+42", "4.2" or "42 ": stored as an INTEGER. */
static int canonical_int(const char *s, sqlite3_int64 *out)
{
    const char *p = s;
    if (*p == '-')
        ++p;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '\0') || strlen(p) > 19)
        return 0;
    for (const char *q = p; *q; ++q)
        if (*q < '0' || *q > '9')
            return 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0' || (v == LLONG_MAX && strcmp(s, "9223372036854775807") != 0) ||
        (v == LLONG_MIN && strcmp(s, "-9223372036854775808") != 0))
        return 0;
    *out = v;
    return 1;
}

static int bind_params(struct job *job, sqlite3_stmt *stmt)
{
    int count = sqlite3_bind_parameter_count(stmt);
    const char *next_value = job->params.base;
    const char **values = alloca(sizeof(char *) * (job->nparams + 1));
    for (size_t i = 0; i < job->nparams; ++i) {
        if (job->param_null.base[i]) {
            values[i] = NULL;
        } else {
            values[i] = next_value;
            next_value += strlen(next_value) + 1;
        }
    }
    for (int idx = 1; idx <= count; ++idx) {
        const char *name = sqlite3_bind_parameter_name(stmt, idx);
        char *end;
        unsigned long n = name != NULL && name[0] == '$' ? strtoul(name + 1, &end, 10) : 0;
        if (name == NULL || name[0] != '$' || *end != '\0' || n == 0) {
            job_error(job, "42601", "use $1, $2, ... for parameters (as on PostgreSQL)");
            return -1;
        }
        if (n > job->nparams) {
            job_errorf(job, "42P02", "there is no parameter $%lu", n);
            return -1;
        }
        const char *v = values[n - 1];
        sqlite3_int64 iv;
        int rc = v == NULL               ? sqlite3_bind_null(stmt, idx)
                 : canonical_int(v, &iv) ? sqlite3_bind_int64(stmt, idx, iv)
                                         : sqlite3_bind_text(stmt, idx, v, -1, SQLITE_STATIC);
        if (rc != SQLITE_OK) {
            job_sqlite_error(job, NULL, rc);
            return -1;
        }
    }
    return 0;
}

static int is_bool_decl(const char *decl)
{
    return decl != NULL && (strcasecmp(decl, "BOOLEAN") == 0 || strcasecmp(decl, "BOOL") == 0);
}

static int add_cell(struct job *job, sqlite3_stmt *stmt, int col)
{
    struct cell cell = {(uint32_t)job->text.len, 0, H2O_DB_TYPE_NULL};
    char num[64];
    switch (sqlite3_column_type(stmt, col)) {
    case SQLITE_INTEGER: {
        sqlite3_int64 v = sqlite3_column_int64(stmt, col);
        if (is_bool_decl(sqlite3_column_decltype(stmt, col)) && (v == 0 || v == 1)) {
            cell.type = H2O_DB_TYPE_BOOL;
            cell.len = 1;
            if (buf_add(&job->text, v ? "t" : "f", 2) != 0)
                return -1;
        } else {
            cell.type = H2O_DB_TYPE_INT;
            cell.len = (uint32_t)snprintf(num, sizeof(num), "%lld", (long long)v);
            if (buf_add(&job->text, num, cell.len + 1) != 0)
                return -1;
        }
        break;
    }
    case SQLITE_FLOAT:
        cell.type = H2O_DB_TYPE_FLOAT;
        cell.len = (uint32_t)h2o_db_text_double(num, sizeof(num), sqlite3_column_double(stmt, col));
        if (buf_add(&job->text, num, cell.len + 1) != 0)
            return -1;
        break;
    case SQLITE_TEXT: {
        const unsigned char *t = sqlite3_column_text(stmt, col);
        cell.type = H2O_DB_TYPE_TEXT;
        cell.len = (uint32_t)sqlite3_column_bytes(stmt, col);
        if (buf_add(&job->text, t, cell.len) != 0 || buf_add(&job->text, "", 1) != 0)
            return -1;
        break;
    }
    case SQLITE_BLOB: {
        /* as PostgreSQL prints bytea */
        const unsigned char *b = sqlite3_column_blob(stmt, col);
        size_t n = (size_t)sqlite3_column_bytes(stmt, col);
        cell.type = H2O_DB_TYPE_BYTES;
        cell.len = (uint32_t)h2o_db_text_bytea_len(n);
        if (buf_reserve(&job->text, cell.len + 1) != 0)
            return -1;
        h2o_db_text_bytea(job->text.base + job->text.len, b, n);
        job->text.len += cell.len + 1;
        break;
    }
    default:
        break;
    }
    if (job->text.len > MAX_RESULT_BYTES) {
        job_error(job, "54000", "the result is larger than 64 MB");
        return -1;
    }
    return buf_add(&job->cells, &cell, sizeof(cell));
}

static void finalize_evicted(void *ctx, h2o_db_cached_t *stmt)
{
    sqlite3_finalize(stmt->value);
}

/* The statement for job's SQL: from the cache (reset, bindings cleared) or prepared anew. */
static sqlite3_stmt *get_stmt(struct sq_conn *c, struct job *job, int *cached)
{
    sqlite3_stmt *stmt = NULL;
    const char *tail = NULL;
    h2o_db_cached_t *entry = job->cacheable ? h2o_db_stmt_cache_get(&c->cache, job->sql.base, job->sql.len) : NULL;
    if (entry != NULL) {
        stmt = entry->value;
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
        job->cache_hit = 1;
        *cached = 1;
        return stmt;
    }
    int persistent = job->cacheable && c->cache.capacity != 0;
    int rc = sqlite3_prepare_v3(c->db, job->sql.base, (int)job->sql.len, persistent ? SQLITE_PREPARE_PERSISTENT : 0, &stmt, &tail);
    if (rc != SQLITE_OK) {
        job_sqlite_error(job, c->db, rc);
        return NULL;
    }
    if (stmt == NULL)
        return NULL; /* only blanks or comments */
    if (tail != NULL && tail[strspn(tail, " \t\r\n;")] != '\0') {
        job_error(job, "42601", "cannot run several statements in one call");
        sqlite3_finalize(stmt);
        return NULL;
    }
    if (persistent && (entry = h2o_db_stmt_cache_put(&c->cache, job->sql.base, job->sql.len)) != NULL) {
        entry->value = stmt;
        *cached = 1;
    }
    return stmt;
}

static void run_statement(struct sq_conn *c, struct job *job)
{
    int cached = 0, rc;
    job->ok = 1;
    job->cache_hit = 0;
    job->rows = job->columns = 0;
    job->affected = 0;
    job->names.len = job->cells.len = job->text.len = 0;

    sqlite3_stmt *stmt = get_stmt(c, job, &cached);
    if (stmt == NULL)
        return;
    if (bind_params(job, stmt) != 0)
        goto Exit;
    job->columns = (size_t)sqlite3_column_count(stmt);
    for (size_t i = 0; i < job->columns; ++i) {
        const char *name = sqlite3_column_name(stmt, (int)i);
        if (buf_add(&job->names, name != NULL ? name : "?column?", strlen(name != NULL ? name : "?column?") + 1) != 0)
            goto NoMem;
    }
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        for (size_t i = 0; i < job->columns; ++i)
            if (add_cell(job, stmt, (int)i) != 0)
                goto Exit;
        ++job->rows;
    }
    if (rc != SQLITE_DONE) {
        job_sqlite_error(job, c->db, rc);
        goto Exit;
    }
    job->affected = job->columns != 0 && sqlite3_stmt_readonly(stmt) ? job->rows : (uint64_t)sqlite3_changes64(c->db);
    goto Exit;
NoMem:
    job_error(job, "53200", "out of memory");
Exit:
    if (!job->ok) {
        job->rows = 0;
        job->columns = 0;
    }
    if (cached) {
        /* keep it, but release its locks and bindings now */
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
    } else {
        sqlite3_finalize(stmt);
    }
}

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
    run_statement(c, job);
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
        job_errorf(job, "08006", "%s", c->db != NULL ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        close_db(c);
        return;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, (int)(c->bind->pool.acquire_timeout > 60000 ? 60000 : c->bind->pool.acquire_timeout));
    if (c->bind->on_connect != NULL) {
        char *err = NULL;
        if (sqlite3_exec(c->db, c->bind->on_connect, NULL, NULL, &err) != SQLITE_OK) {
            job_errorf(job, sqlstate_of(sqlite3_extended_errcode(c->db), err), "on-connect failed: %s",
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

static const char *sq_column_name(const h2o_db_result_t *r, size_t col)
{
    const struct job *job = r->impl;
    const char *p = job->names.base;
    for (size_t i = 0; i < col; ++i)
        p += strlen(p) + 1;
    return p;
}

static const struct cell *cell_at(const h2o_db_result_t *r, size_t row, size_t col)
{
    const struct job *job = r->impl;
    return (const struct cell *)job->cells.base + row * job->columns + col;
}

static const char *sq_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    const struct job *job = r->impl;
    const struct cell *cell = cell_at(r, row, col);
    if (cell->type == H2O_DB_TYPE_NULL)
        return NULL;
    *len = cell->len;
    return job->text.base + cell->offset;
}

static h2o_db_type_t sq_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    return (h2o_db_type_t)cell_at(r, row, col)->type;
}

static const h2o_db_result_class_t sq_result_class = {sq_column_name, sq_value, sq_type};

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
    free(c->jobs);
    free(c->filename);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
}

static void on_async(uv_async_t *async)
{
    struct sq_conn *c = async->data;
    pthread_mutex_lock(&c->lock);
    size_t finished = c->finished;
    pthread_mutex_unlock(&c->lock);

    while (c->delivered < finished) {
        struct job *job = c->jobs + c->delivered % c->capacity;
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
            if (!c->closed && !c->stopped) {
                h2o_db_result_t r;
                if (job->ok) {
                    h2o_db_result_init_ok(&r, job->affected);
                    r.rows = job->rows;
                    r.columns = job->columns;
                    r.cls = job->columns != 0 ? &sq_result_class : NULL;
                    r.impl = job;
                } else {
                    h2o_db_result_init_error(&r, h2o_db_status_for_sqlstate(job->sqlstate), job->sqlstate, job->message);
                }
                if (c->super.cbs->result(&c->super, &r) != 0)
                    c->stopped = 1;
            }
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

static void on_cancelled_later(h2o_db_later_t *later);

static h2o_db_pipe_t *sq_open(const h2o_db_pipe_t *proto)
{
    h2o_db_bind_t *bind = proto->bind;
    struct sq_conn *c = calloc(1, sizeof(*c));
    c->super = *proto;
    c->bind = bind;
    c->cancelled_later.cb = on_cancelled_later;
    h2o_db_stmt_cache_init(&c->cache, bind->pool.statement_cache, finalize_evicted, c);
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
    if (!c->thread_started) {
        uv_close((uv_handle_t *)&c->async, free_conn);
        return;
    }
    if (c->closed)
        return;
    c->closed = 1;
    next_job(c, JOB_CLOSE);
    submit(c, NULL);
}

/* The request of a pinned connection ended: interrupt what its worker runs (sqlite3_interrupt may
 * be called from any thread while the connection is open; the worker closes it only on JOB_CLOSE,
 * which comes after this). Statements interrupted answer SQLSTATE 57014. */
static void sq_cancel(h2o_db_pipe_t *conn)
{
    struct sq_conn *c = (struct sq_conn *)conn;
    pthread_mutex_lock(&c->lock);
    if (c->db_open)
        sqlite3_interrupt(c->db);
    pthread_mutex_unlock(&c->lock);
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
        snprintf(err, errsz, "%s (SQLSTATE %s)", msg != NULL ? msg : "error", sqlstate_of(sqlite3_extended_errcode(db), msg));
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
    .run_script = sq_run_script,
    .prepare_bind = sq_prepare_bind,
    .dispose_bind = sq_dispose_bind,
    .version = sq_version,
};
