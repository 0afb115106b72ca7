/*
 * SQLite: what a connection's worker thread does with one statement (sqlite.h). It is prepared or
 * taken from the statement cache, its $1..$n parameters bound by name, then stepped; each row is
 * copied as text with its types (PostgreSQL's text forms), so that the loop never calls into
 * SQLite: a whole result into the job, or a streamed one into blocks that the worker hands to the
 * loop one at a time, waiting while the loop has every block (a slow or paused consumer). Errors
 * carry the SQLSTATE PostgreSQL would give. The result classes the loop reads them through are
 * at the end.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "driver/sqlite.h"
#include "driver/text.h"

/* ---- errors ---- */

const char *h2o_db_sqlite_sqlstate(int code, const char *message)
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
            if (strcmp(message, "integer overflow") == 0)
                return "22003"; /* PostgreSQL's numeric_value_out_of_range */
        }
        return "42000";
    default:
        return "XX000";
    }
}

void h2o_db_sqlite_job_errorf(struct job *job, const char *sqlstate, const char *fmt, ...)
{
    va_list args;
    job->ok = 0;
    snprintf(job->sqlstate, sizeof(job->sqlstate), "%s", sqlstate);
    va_start(args, fmt);
    vsnprintf(job->message, sizeof(job->message), fmt, args);
    va_end(args);
}

#define job_errorf                        h2o_db_sqlite_job_errorf
#define job_error(job, sqlstate, message) job_errorf(job, sqlstate, "%s", message)

static void job_sqlite_error(struct job *job, sqlite3 *db, int code)
{
    const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(code);
    if (db != NULL)
        code = sqlite3_extended_errcode(db);
    job_error(job, h2o_db_sqlite_sqlstate(code, msg), msg);
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

/* One value of the current row, as text, onto cells and text (the job's, or a stream block's). */
static int add_cell(struct job *job, struct buf *cells, struct buf *text, sqlite3_stmt *stmt, int col)
{
    struct cell cell = {(uint32_t)text->len, 0, H2O_DB_TYPE_NULL};
    char num[64];
    switch (sqlite3_column_type(stmt, col)) {
    case SQLITE_INTEGER: {
        sqlite3_int64 v = sqlite3_column_int64(stmt, col);
        if (is_bool_decl(sqlite3_column_decltype(stmt, col)) && (v == 0 || v == 1)) {
            cell.type = H2O_DB_TYPE_BOOL;
            cell.len = 1;
            if (buf_add(text, v ? "t" : "f", 2) != 0)
                return -1;
        } else {
            cell.type = H2O_DB_TYPE_INT;
            cell.len = (uint32_t)snprintf(num, sizeof(num), "%lld", (long long)v);
            if (buf_add(text, num, cell.len + 1) != 0)
                return -1;
        }
        break;
    }
    case SQLITE_FLOAT:
        cell.type = H2O_DB_TYPE_FLOAT;
        cell.len = (uint32_t)h2o_db_text_double(num, sizeof(num), sqlite3_column_double(stmt, col));
        if (buf_add(text, num, cell.len + 1) != 0)
            return -1;
        break;
    case SQLITE_TEXT: {
        const unsigned char *t = sqlite3_column_text(stmt, col);
        cell.type = H2O_DB_TYPE_TEXT;
        cell.len = (uint32_t)sqlite3_column_bytes(stmt, col);
        if (buf_add(text, t, cell.len) != 0 || buf_add(text, "", 1) != 0)
            return -1;
        break;
    }
    case SQLITE_BLOB: {
        /* as PostgreSQL prints bytea */
        const unsigned char *b = sqlite3_column_blob(stmt, col);
        size_t n = (size_t)sqlite3_column_bytes(stmt, col);
        cell.type = H2O_DB_TYPE_BYTES;
        cell.len = (uint32_t)h2o_db_text_bytea_len(n);
        if (buf_reserve(text, cell.len + 1) != 0)
            return -1;
        h2o_db_text_bytea(text->base + text->len, b, n);
        text->len += cell.len + 1;
        break;
    }
    default:
        break;
    }
    if (text->len > SQ_MAX_RESULT_BYTES) {
        job_error(job, "54000", "the result is larger than 64 MB");
        return -1;
    }
    return buf_add(cells, &cell, sizeof(cell));
}

void h2o_db_sqlite_finalize_evicted(void *ctx, h2o_db_cached_t *stmt)
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

/* ---- streamed rows ---- */

/* Whether the loop asked the stream of job to stop (under lock). */
static int halted(struct sq_conn *c, const struct job *job)
{
    return c->stream.halt == SIZE_MAX || c->stream.halt == job->no + 1;
}

/* The worker's next block to fill (emptied), once the loop has given one back; NULL when the
 * stream is to stop. */
static struct block *take_block(struct sq_conn *c, const struct job *job)
{
    struct stream *s = &c->stream;
    pthread_mutex_lock(&c->lock);
    while (!halted(c, job) && s->produced - s->consumed >= SQ_STREAM_BLOCKS)
        pthread_cond_wait(&c->cond, &c->lock);
    struct block *b = halted(c, job) ? NULL : s->blocks + s->produced % SQ_STREAM_BLOCKS;
    pthread_mutex_unlock(&c->lock);
    if (b != NULL) {
        b->rows = 0;
        b->cells.len = b->text.len = 0;
    }
    return b;
}

/* Hands the block being filled over to the loop. */
static void publish_block(struct sq_conn *c)
{
    pthread_mutex_lock(&c->lock);
    ++c->stream.produced;
    pthread_mutex_unlock(&c->lock);
    uv_async_send(&c->async);
}

/* Steps a streamed statement into blocks; returns sqlite3_step's last code, or -1 with the job
 * failed (stopped, or out of memory). */
static int step_stream(struct sq_conn *c, struct job *job, sqlite3_stmt *stmt)
{
    struct block *b = NULL;
    int rc;
    for (;;) {
        if (b == NULL && (b = take_block(c, job)) == NULL) {
            job_error(job, "57014", "canceling statement due to user request");
            return -1;
        }
        if ((rc = sqlite3_step(stmt)) != SQLITE_ROW)
            break;
        for (size_t i = 0; i < job->columns; ++i) {
            if (add_cell(job, &b->cells, &b->text, stmt, (int)i) != 0) {
                if (job->ok)
                    job_error(job, "53200", "out of memory");
                rc = -1;
                goto Exit;
            }
        }
        ++job->rows;
        if (++b->rows == SQ_BLOCK_ROWS || b->text.len + b->cells.len >= SQ_BLOCK_BYTES) {
            publish_block(c);
            b = NULL;
        }
    }
Exit:
    if (b->rows != 0)
        publish_block(c); /* (the rows before an error, too) */
    return rc;
}

/* ---- one statement ---- */

void h2o_db_sqlite_run_statement(struct sq_conn *c, struct job *job)
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
    if (job->stream) {
        if ((rc = step_stream(c, job, stmt)) < 0)
            goto Exit;
    } else {
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
            for (size_t i = 0; i < job->columns; ++i)
                if (add_cell(job, &job->cells, &job->text, stmt, (int)i) != 0)
                    goto Exit;
            ++job->rows;
        }
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
    if (!job->ok && !job->stream) { /* (a stream's columns stay: the loop reads its blocks) */
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

/* ---- the results, as the loop reads them ---- */

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
void h2o_db_sqlite_result_rows(h2o_db_result_t *r, const struct job *job)
{
    r->rows = job->rows;
    r->columns = job->columns;
    r->cls = job->columns != 0 ? &sq_result_class : NULL;
    r->impl = job;
}

/* a streamed row: impl is a struct sq_rowref, its row is the block's ref->row */

static const char *row_column_name(const h2o_db_result_t *r, size_t col)
{
    const struct sq_rowref *ref = r->impl;
    const char *p = ref->job->names.base;
    for (size_t i = 0; i < col; ++i)
        p += strlen(p) + 1;
    return p;
}

static const struct cell *row_cell(const h2o_db_result_t *r, size_t col)
{
    const struct sq_rowref *ref = r->impl;
    return (const struct cell *)ref->block->cells.base + ref->row * ref->job->columns + col;
}

static const char *row_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    const struct sq_rowref *ref = r->impl;
    const struct cell *cell = row_cell(r, col);
    if (cell->type == H2O_DB_TYPE_NULL)
        return NULL;
    *len = cell->len;
    return ref->block->text.base + cell->offset;
}

static h2o_db_type_t row_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    return (h2o_db_type_t)row_cell(r, col)->type;
}

static const h2o_db_result_class_t sq_row_class = {row_column_name, row_value, row_type};

void h2o_db_sqlite_result_row(h2o_db_result_t *r, struct sq_rowref *ref)
{
    h2o_db_result_init_ok(r, 0);
    r->rows = 1;
    r->columns = ref->job->columns;
    r->cls = &sq_row_class;
    r->impl = ref;
}
