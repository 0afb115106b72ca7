/*
 * The PostgreSQL driver's internals, shared by its files:
 *   postgres.c          the connection in use: send, results, the statement cache, flush,
 *                       cancel, close (see there for a connection's life)
 *   postgres_connect.c  resolve, connect, setup; the blocking start-up helpers
 *   postgres_pooler.c   the statement cache's errors behind a pooler (PgBouncer), explained
 */
#ifndef h2o_db_driver_postgres_h
#define h2o_db_driver_postgres_h

#include <sys/types.h>
#include <libpq-fe.h>
#include "driver/stmt_cache.h"
#include "driver/driver.h"

/* where a connection is in its life (c->phase) */
enum { H2O_DB_PG_RESOLVE, H2O_DB_PG_CONNECT, H2O_DB_PG_SETUP, H2O_DB_PG_READY, H2O_DB_PG_BROKEN };

/* What one Sync sent covers: a statement (its result goes to the pool) or our own DEALLOCATE (its
 * result is dropped). */
typedef struct st_h2o_db_pg_segment_t {
    int internal;          /* our DEALLOCATE */
    int commit;            /* a plain COMMIT: PostgreSQL answers "ROLLBACK" if the transaction had failed */
    h2o_db_cached_t *stmt; /* the cached statement it executes (NULL once evicted) */
    int prepared;          /* it also sends the PREPARE of stmt */
    int prepare_failed;
    int stream;       /* its rows go up one at a time (single-row mode) */
    unsigned results; /* results seen so far */
} h2o_db_pg_segment_t;

/* What the driver keeps per bind (bind->driver_data), from prepare_bind to dispose_bind. */
typedef struct st_h2o_db_pg_bind_t {
    int pooler_logged; /* (atomic) the pooler's error was logged for this bind */
} h2o_db_pg_bind_t;

typedef struct st_h2o_db_pg_conn_t {
    h2o_db_pipe_t super;
    PGconn *pg;
    int phase;
    uv_poll_t *poll; /* on PQsocket(); heap-allocated, closed asynchronously */
    int poll_fd;
    ino_t poll_ino;
    int poll_events;
    uv_timer_t connect_timer;
    /* resolving host names */
    uv_getaddrinfo_t gai;
    char **hosts;     /* the host= list, split */
    char **hostaddrs; /* what they resolved to ("" for unix sockets) */
    size_t num_hosts, resolving;
    /* one segment per Sync sent, in the order sent */
    h2o_db_pg_segment_t *segs;
    size_t seg_head, seg_count, seg_capacity;
    PGresult *kept; /* the result the head segment will answer with */
    h2o_db_stmt_cache_t cache;
    int quiet_evict; /* evicting a statement the server does not have: no DEALLOCATE */
    h2o_db_flusher_t flusher;
    /* the driver never calls the pool back from inside open/send/cancel/close (driver.h): a failure
     * noticed there is reported on the next iteration, and so is a cancel that ends at once */
    int in_call;
    h2o_db_later_t fail_later;
    char fail_sqlstate[6];
    char fail_message[256];
    h2o_db_later_t cancelled_later;
    int stopped; /* the pool stopped reading from it (its result callback returned -1) */
    int paused;  /* a stream is paused: nothing is read until resume */
    h2o_db_later_t resume_later;
    int handles_open;
    struct cancel_work *cancel; /* under way on the thread pool */
} h2o_db_pg_conn_t;

/* postgres.c */

/* Fails the connection (once) and tells the pool why. */
void h2o_db_pg_fail(h2o_db_pg_conn_t *c, const char *sqlstate, const char *message);
/* The same with libpq's error message. */
void h2o_db_pg_fail_from_libpq(h2o_db_pg_conn_t *c, const char *sqlstate);
/* The first line of libpq's error message (it never holds a password). */
void h2o_db_pg_copy_error(char *dst, size_t size, const char *msg);
/* Watches PQsocket for events (UV_READABLE, UV_WRITABLE), following libpq to a new socket while
 * it connects. */
void h2o_db_pg_watch(h2o_db_pg_conn_t *c, int events);
/* Frees the connection once its handles are closed. */
void h2o_db_pg_free_conn(h2o_db_pg_conn_t *c);

/* postgres_connect.c */

/* Starts connecting a new connection (c->super copied from the pool's prototype): resolves host names first. */
void h2o_db_pg_connect(h2o_db_pg_conn_t *c);
/* The socket is ready while connecting (H2O_DB_PG_CONNECT): PQconnectPoll. */
void h2o_db_pg_poll_connect(h2o_db_pg_conn_t *c);
/* ... and while the setup statements run (H2O_DB_PG_SETUP). */
void h2o_db_pg_continue_setup(h2o_db_pg_conn_t *c, int events);
/* Start-up (blocking): connects once, runs `sql`, disconnects. */
int h2o_db_pg_run_script(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz);

/* postgres_pooler.c */

/* prepare_bind, dispose_bind: the bind's h2o_db_pg_bind_t (main thread); 0, or -1 out of memory. */
int h2o_db_pg_pooler_prepare_bind(h2o_db_bind_t *bind);
void h2o_db_pg_pooler_dispose_bind(h2o_db_bind_t *bind);
/* Where a connection starts numbering its prepared statements (cache.next_id): random, so that no
 * two connections (of any thread or process) name two statements alike. Any thread. */
uint64_t h2o_db_pg_first_stmt_id(void);
/* Whether a statement's error is the cache's behind a pooler: `cached` when it ran a statement of
 * the cache, `prepared` when it also prepared it (26000 on any, 42P05 on a prepared one). */
int h2o_db_pg_is_pooler_error(const char *sqlstate, int cached, int prepared);
/* The message the handler sees for such an error: the server's `message` and what to do, in buf
 * (returned); the first of the bind is also logged to stderr, naming the bind. Any thread. */
const char *h2o_db_pg_pooler_message(h2o_db_pg_conn_t *c, const char *message, char *buf, size_t size);

#endif
