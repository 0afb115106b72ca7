/*
 * The SQLite driver's internals, shared by its files:
 *   sqlite.c       the connection: its worker thread and queue of jobs, the loop's side (answers,
 *                  streamed rows handed over, cancel, close) and start-up
 *   sqlite_rows.c  what the worker does with one statement: prepared (or from the cache), bound,
 *                  stepped, its rows copied as text with their types (a whole result, or a
 *                  stream's blocks), and SQLite's errors in PostgreSQL's terms
 *
 * A streamed statement (wire.stream) is stepped by the worker a block at a time: at most
 * SQ_STREAM_BLOCKS blocks wait for the loop, each closed once it holds SQ_BLOCK_BYTES (its values'
 * text and their cells) or SQ_BLOCK_ROWS rows, whichever comes first; so at most 64 KB (and one
 * row more per block) is read ahead. The worker waits on the connection's condition variable
 * until the loop has handed a block over and gives it back. A paused stream gives nothing back,
 * so the worker stops stepping once the blocks are full.
 */
#ifndef h2o_db_driver_sqlite_h
#define h2o_db_driver_sqlite_h

#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include "driver/buf.h"
#include "driver/driver.h"
#include "driver/stmt_cache.h"

#define SQ_MAX_RESULT_BYTES (64u * 1024 * 1024)
#define SQ_STREAM_BLOCKS    2
#define SQ_BLOCK_ROWS       1024
#define SQ_BLOCK_BYTES      (32u * 1024)

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
    int stream;    /* rows in blocks (struct stream), the end in the job */
    size_t no;     /* its number: the value of c->submitted it was sent at */
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

/* Rows of a streamed statement, as the worker hands them to the loop. */
struct block {
    size_t rows;
    struct buf cells, text;
};

/* The connection's one stream at a time. Blocks go round: the worker fills
 * blocks[produced % N] once produced - consumed < N, the loop reads blocks[consumed % N]. */
struct stream {
    struct block blocks[SQ_STREAM_BLOCKS];
    size_t produced, consumed; /* under lock; the worker writes produced, the loop consumed */
    size_t halt;               /* under lock: 1 + the number of the stream job to stop stepping (cancel,
                                  stop), SIZE_MAX for any (close), 0 for none */
    /* the loop's own */
    size_t row;         /* the next row of blocks[consumed % N] */
    uint64_t delivered; /* rows handed over */
    int paused;         /* cbs->row returned 1: nothing until resume */
    h2o_db_later_t resume_later;
};

struct sq_conn {
    h2o_db_pipe_t super;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* the worker waits on it: for a job, or for a stream's block */
    struct job *jobs;
    size_t capacity;
    size_t submitted, taken, finished, delivered; /* counters; slot = counter % capacity */
    uv_async_t async;
    h2o_db_later_t cancelled_later; /* cancel() reports on the next iteration, never from inside */
    int closed;                     /* the pool closed it: nothing more is reported */
    int thread_started;
    int stopped; /* the pool stopped reading from it (its result callback returned -1) */
    int db_open; /* c->db may be interrupted (under lock) */
    struct stream stream;
    /* the worker's own */
    h2o_db_stmt_cache_t cache; /* sqlite3_stmt by SQL text, used by the worker only */
    int txn_aborted;           /* a statement of the open transaction failed (PostgreSQL's rule, see run_exec) */
    sqlite3 *db;
    h2o_db_bind_t *bind;
    char *filename;
    int flags;
};

/* sqlite_rows.c: the worker's side */

/* SQLite's (extended) error code as PostgreSQL's SQLSTATE. */
const char *h2o_db_sqlite_sqlstate(int code, const char *message);
/* The job failed: its answer is an error (message formatted). */
void h2o_db_sqlite_job_errorf(struct job *job, const char *sqlstate, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Runs a plain statement of job (prepared, bound, stepped): its answer in the job; a streamed one
 * hands its rows over in c->stream's blocks on the way. */
void h2o_db_sqlite_run_statement(struct sq_conn *c, struct job *job);
/* The statement cache's on_evict. */
void h2o_db_sqlite_finalize_evicted(void *ctx, h2o_db_cached_t *stmt);

/* sqlite_rows.c: the loop's side */

/* Points r at the rows of job's answer. */
void h2o_db_sqlite_result_rows(h2o_db_result_t *r, const struct job *job);
/* Points r at row `row` of block b of streamed job (r->rows == 1); ref is the room r->impl uses
 * (it must live as long as r). */
struct sq_rowref {
    const struct job *job;
    const struct block *block;
    size_t row;
};
void h2o_db_sqlite_result_row(h2o_db_result_t *r, struct sq_rowref *ref);

#endif
