/*
 * Pools: one per bind per worker thread. A pool owns its connections, places
 * statements on them (docs/architecture.md), keeps the FIFO of sessions waiting for a
 * connection, and heals: broken connections are replaced, connects back off
 * while the database is down, idle and old connections are retired.
 */
#ifndef h2o_db_pool_h
#define h2o_db_pool_h

#include <stdint.h>
#include "config/config.h"
#include "driver/driver.h"
#include "result.h"
#include "thread.h"

typedef struct st_h2o_db_session_t h2o_db_session_t;
typedef struct st_h2o_db_op_t h2o_db_op_t;

enum { H2O_DB_CONN_CONNECTING, H2O_DB_CONN_READY, H2O_DB_CONN_CLOSED };

/* A pool's counts, counters and `down` are read by the status page on other threads: the owner
 * thread, their only writer, stores them with these (relaxed atomic stores: plain moves on x86),
 * the status page loads them atomically, so that the reads are race-free. */
#define H2O_DB_SET(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define H2O_DB_INC(x)    H2O_DB_SET(x, (x) + 1)
#define H2O_DB_DEC(x)    H2O_DB_SET(x, (x)-1)

/* The generic part of a connection; drivers put it first in theirs. */
struct st_h2o_db_conn_t {
    h2o_db_pool_t *pool;
    h2o_linklist_t link; /* pool->conns */
    int state;
    /* the session whose transaction holds this connection, or NULL */
    h2o_db_session_t *pinned;
    /* after its request ended inside a transaction: rolling back, then back to the pool */
    int cleaning;
    int cancelling; /* the driver's cancel is under way: not back to the pool before it is done */
    /* statements sent, oldest first; an entry is NULL once nobody waits for its result
     * (its request ended, or it timed out locally): the result is then dropped */
    struct {
        h2o_db_op_t **ops;
        uint64_t *sent_at;
        size_t head, count, capacity;
    } ring;
    h2o_linklist_t waiters; /* sessions waiting for room on this connection */
    uint64_t created_at, idle_since, retire_at;
    uint64_t statements; /* sent on this connection */
};

/* Counters behind the status page; written by the owning thread only. */
typedef struct st_h2o_db_pool_stats_t {
    uint64_t acquires;         /* statements placed on a connection */
    uint64_t waits;            /* statements that had to wait for one */
    uint64_t acquire_timeouts; /* ... and gave up (BUSY) */
    uint64_t queue_full;       /* refused at once: the queue was full */
    uint64_t errors;           /* statements that failed (any status but OK) */
    uint64_t connects, connect_failures, reconnects, closed_broken, closed_idle, closed_lifetime;
    uint64_t statements, pipelined; /* sent; sent while others were in flight on the connection */
    uint64_t cache_hits, cache_misses;
    uint64_t timeouts; /* statement-timeout answered locally */
    uint64_t leaks;    /* sessions reported by leak-threshold */
} h2o_db_pool_stats_t;

/* Gauges the owner thread publishes (at every housekeeping tick) for the status page,
 * which other threads read. */
typedef struct st_h2o_db_pool_gauges_t {
    size_t idle, busy;
} h2o_db_pool_gauges_t;

struct st_h2o_db_pool_t {
    h2o_db_bind_t *bind;
    h2o_db_thread_t *thread;
    h2o_linklist_t conns;
    size_t num_conns, num_connecting, num_pinned;
    h2o_linklist_t waiting; /* sessions waiting for any connection, FIFO */
    size_t num_waiting;
    h2o_timeout_t acquire_timeout;
    h2o_timeout_t statement_timeout;
    h2o_timeout_t request_timeout;
    uv_timer_t retry_timer;
    uv_timer_t housekeeping;
    /* the database looks down: the last connect failed and no connection is up */
    int down;
    uint64_t last_failure_at;
    unsigned backoff_ms;
    char last_error[256];
    char last_sqlstate[6];
    h2o_db_pool_stats_t stats;
    h2o_db_pool_gauges_t gauges;
    h2o_db_flusher_t publisher; /* republishes the gauges once per loop iteration after a change */
    int closing;
    /* inside a call of the driver's open, send, cancel or close: the driver must not call back
     * (driver.h); its callbacks assert this */
    unsigned in_driver;
};

/* Recounts idle and busy connections into pool->gauges (owner thread). */
void h2o_db_pool_publish(h2o_db_pool_t *pool);

h2o_db_pool_t *h2o_db_pool_create(h2o_db_thread_t *thread, h2o_db_bind_t *bind);
/* Closes every connection (statements in flight fail UNAVAILABLE); frees when handles are closed. */
void h2o_db_pool_destroy(h2o_db_pool_t *pool);

/* Sends what it can of the session's pending statements, or makes the session wait. */
void h2o_db_pool_pump(h2o_db_session_t *s);
/* The session ended: forget it wherever it waits, drop its results, roll back its transaction. */
void h2o_db_pool_release(h2o_db_session_t *s);
/* The same, but the statements taken off their connections are appended to `out` (issue order)
 * instead of being forgotten, so that they can still be answered. */
void h2o_db_pool_detach(h2o_db_session_t *s, h2o_linklist_t *out);

/* Timeout callbacks the session code installs on its ops and sessions. */
void h2o_db_pool_on_statement_timeout(h2o_timeout_entry_t *entry);
void h2o_db_session_wait_timeout_init(h2o_db_session_t *s);

/* Called by drivers. */
void h2o_db_conn_connected(h2o_db_conn_t *conn);
/* Logs why a connection failed, before h2o_db_conn_failed: "cannot connect" while connecting (not
 * again while the pool is down), "connection ... lost" otherwise; nothing while the pool closes. */
void h2o_db_conn_log_failure(h2o_db_conn_t *conn, int connecting, const char *message);
void h2o_db_conn_failed(h2o_db_conn_t *conn, const char *sqlstate, const char *message);
void h2o_db_conn_result(h2o_db_conn_t *conn, h2o_db_result_t *result);
void h2o_db_conn_cancelled(h2o_db_conn_t *conn);
/* Fills the generic part of a new connection. */
void h2o_db_conn_init(h2o_db_conn_t *conn, h2o_db_pool_t *pool);
/* Frees the generic part (the driver frees its memory afterwards). */
void h2o_db_conn_dispose(h2o_db_conn_t *conn);

/* Milliseconds a connection's oldest statement has been in flight (0 when none). */
uint64_t h2o_db_conn_oldest_age(h2o_db_conn_t *conn, uint64_t now);

/* Between pool.c (placement, driver callbacks) and pool_housekeeping.c (the pool over time). */

/* pool.c: whether the pool may open one more connection (max, max-total) */
int h2o_db_pool_can_open(h2o_db_pool_t *pool);
/* pool.c: opens one (NULL when max-total was reached meanwhile) */
h2o_db_conn_t *h2o_db_pool_open_conn(h2o_db_pool_t *pool);
/* pool.c: ready, with nothing in flight, not pinned, nothing to clean */
int h2o_db_conn_is_idle(h2o_db_conn_t *conn);
/* pool.c: closes a connection that nobody uses (idle, or its statements were all abandoned),
 * counting it in *counter */
void h2o_db_conn_retire(h2o_db_conn_t *conn, uint64_t *counter);
/* pool.c: serves the sessions waiting for any connection, oldest first */
void h2o_db_pool_serve_waiting(h2o_db_pool_t *pool);
/* pool.c: fails every statement waiting for a connection of this pool */
void h2o_db_pool_fail_waiting(h2o_db_pool_t *pool, h2o_db_status_t status, const char *sqlstate, const char *message);
/* pool_housekeeping.c: after a failure, retries (ensure min, serve who waits) when needed: at once,
 * or after the back-off while the database is down */
void h2o_db_pool_retry_later(h2o_db_pool_t *pool);
/* pool_housekeeping.c: connections changed: the gauges are republished on this loop iteration */
void h2o_db_pool_changed(h2o_db_pool_t *pool);

#endif
