/*
 * The driver interface: one per backend (driver/postgres.c, driver/sqlite.c, driver/mysql.c).
 *
 * A connection is an ordered pipe. The pool (pool.c) decides which statement
 * goes to which connection; the driver moves statements to the database and
 * results back, in the order they were sent, without ever blocking the loop.
 *
 *   open     allocates a connection (h2o_db_pipe_t first, a copy of the pool's) and starts
 *            connecting; it reports with cbs->connected / cbs->failed, later
 *   send     writes one statement; its result comes back, in order, through cbs->result
 *            (each call consumes the oldest statement sent)
 *   close    drops the connection; statements still in flight are failed by the pool before
 *            close is called, and no callback comes afterwards; the driver frees its memory
 *            when its handles are closed
 *   cancel   (optional) interrupts the statement running on a pinned connection whose request
 *            ended (or whose stream was stopped), so that its ROLLBACK comes sooner; reports with
 *            cbs->cancelled, later (also when there was nothing to cancel)
 *   resume   continues a streamed statement (wire.stream) paused by cbs->row returning 1
 *
 * A streamed statement (wire.stream = 1) is sent only on a connection with nothing else in
 * flight (the pool pins one to it); the driver hands its rows over one at a time through
 * cbs->row as they arrive, keeping at most a bounded amount read ahead, then the end through
 * cbs->result (rows 0; an error after some rows is possible). When cbs->row returns 1 the driver
 * delivers nothing more on that connection (and reads no further, so that the database feels the
 * back-pressure) until resume; a cancel or close may come meanwhile.
 *
 * Never re-entrant: open, send, cancel and close never call back before they return. Whatever
 * they find out at once (libpq refusing a connect on the spot, a send that fails) is reported
 * from the loop on a later iteration (h2o_db_later). The pool asserts this in every callback.
 *
 * The driver knows nothing of the pool but what h2o_db_pipe_t carries: it includes no header of
 * the layers above (pool.h, session.h).
 *
 * Start-up helpers run on the main thread before any loop (blocking is fine there).
 */
#ifndef h2o_db_driver_h
#define h2o_db_driver_h

#include <stddef.h>
#include <stdint.h>
#include "config/config.h"
#include "result.h"
#include "thread.h"

typedef struct st_h2o_db_pipe_t h2o_db_pipe_t;

/* How a driver reports to the pool, for one connection; on the connection's thread, never from
 * inside open, send, cancel or close. After failed, or after result returned -1, the driver
 * delivers nothing more on that connection and waits for close. */
typedef struct st_h2o_db_pipe_cbs_t {
    /* connected and set up: statements may be sent */
    void (*connected)(h2o_db_pipe_t *pipe);
    /* the connection could not be made, or broke; message says why (no password in it), sqlstate
     * is 08001/08006 or the server's; the pool logs it */
    void (*failed)(h2o_db_pipe_t *pipe, const char *sqlstate, const char *message);
    /* the oldest statement sent has its result (valid during the call only). Returns 0 to go on,
     * -1 when the pool stopped using the connection (it is closing it). */
    int (*result)(h2o_db_pipe_t *pipe, h2o_db_result_t *result);
    /* one row of the oldest statement sent, a streamed one (wire.stream): result->rows == 1, valid
     * during the call only. Returns 0 to go on, 1 to pause (nothing more until resume), -1 when
     * the pool stopped using the connection. */
    int (*row)(h2o_db_pipe_t *pipe, h2o_db_result_t *row);
    /* the cancel asked for is over (whether it stopped anything or not) */
    void (*cancelled)(h2o_db_pipe_t *pipe);
    /* optional (NULL: ignored): a NOTIFY on a channel this connection LISTENs to (PostgreSQL),
     * in the order the server sent them; the strings are valid during the call only */
    void (*notify)(h2o_db_pipe_t *pipe, const char *channel, const char *payload);
} h2o_db_pipe_cbs_t;

/* Counters that drivers keep, per pool (one thread writes them, with H2O_DB_INC; the status page
 * reads them). */
typedef struct st_h2o_db_driver_stats_t {
    uint64_t cache_hits, cache_misses; /* statements found in the statement cache, prepared anew */
} h2o_db_driver_stats_t;

/* The head of every driver's connection: what the driver knows of the pool that opened it. The
 * pool fills a prototype and open copies it; from then on the fields are constant. */
struct st_h2o_db_pipe_t {
    h2o_db_bind_t *bind;
    h2o_db_thread_t *thread; /* its loop, h2o_db_later */
    const h2o_db_pipe_cbs_t *cbs;
    h2o_db_driver_stats_t *stats;
    void *data; /* the pool's (its record of the connection) */
};

/* What a driver sends: one statement, as the wire sees it (the pool makes it from a session's
 * statement; valid during send() only: a driver copies what it keeps). */
typedef enum { H2O_DB_WIRE_QUERY, H2O_DB_WIRE_BEGIN, H2O_DB_WIRE_COMMIT, H2O_DB_WIRE_ROLLBACK } h2o_db_wire_kind_t;

typedef struct st_h2o_db_wire_t {
    h2o_db_wire_kind_t kind;
    /* QUERY: the statement. BEGIN: NULL (the driver's own spelling). COMMIT, ROLLBACK: NULL for the
     * plain statement, or what to send instead (COMMIT PREPARED '...', PREPARE TRANSACTION '...') */
    const char *sql;
    size_t sql_len;
    size_t nparams;
    const char *const *params; /* NUL-terminated; NULL = SQL NULL */
    int no_cache;              /* one-off SQL: not for a statement cache */
    int stream;                /* QUERY: rows one at a time through cbs->row, then the end */
    int read_only;             /* BEGIN: a READ ONLY transaction (a read-only session's) */
} h2o_db_wire_t;

/* The text to send for w; `begin` is the backend's BEGIN. */
static inline const char *h2o_db_wire_sql(const h2o_db_wire_t *w, const char *begin)
{
    switch (w->kind) {
    case H2O_DB_WIRE_BEGIN:
        return begin;
    case H2O_DB_WIRE_COMMIT:
        return w->sql != NULL ? w->sql : "COMMIT";
    case H2O_DB_WIRE_ROLLBACK:
        return w->sql != NULL ? w->sql : "ROLLBACK";
    default:
        return w->sql;
    }
}

struct st_h2o_db_driver_t {
    const char *name;
    /* 1: a connection carries statements sent while others run without a round trip each
     * (PostgreSQL's pipeline mode; SQLite's worker runs its queue back to back), so the pool fills
     * open connections before it opens another; 0: one statement at a time per connection
     * (MySQL), so more connections are the parallelism */
    int pipelines;
    /* returns the new connection (never NULL: a failure is reported through cbs->failed) */
    h2o_db_pipe_t *(*open)(const h2o_db_pipe_t *proto);
    void (*send)(h2o_db_pipe_t *pipe, const h2o_db_wire_t *stmt);
    void (*close)(h2o_db_pipe_t *pipe);
    /* optional: stops what runs on a pinned connection whose request ended (never called for a
     * shared one); when done (also on failure), the driver calls cbs->cancelled */
    void (*cancel)(h2o_db_pipe_t *pipe);
    /* continues a stream paused by cbs->row returning 1: rows come again later, never from inside
     * resume (a driver whose send ignores wire.stream may leave it NULL) */
    void (*resume)(h2o_db_pipe_t *pipe);
    /* start-up: connects once, runs `sql` (several statements allowed), disconnects */
    int (*run_script)(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz);
    /* start-up: whatever the backend keeps per bind (SQLite: the in-memory database's keeper) */
    int (*prepare_bind)(h2o_db_bind_t *bind, char *err, size_t errsz);
    void (*dispose_bind)(h2o_db_bind_t *bind);
    /* "PostgreSQL 15.8", for --version and the status page */
    const char *(*version)(void);
};

extern const h2o_db_driver_t h2o_db_driver_postgres;
extern const h2o_db_driver_t h2o_db_driver_sqlite;
extern const h2o_db_driver_t h2o_db_driver_mysql;

const h2o_db_driver_t *h2o_db_driver_for(h2o_db_backend_t backend);

#endif
