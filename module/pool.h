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

typedef struct st_h2o_db_place_t h2o_db_place_t;
typedef struct st_h2o_db_stmt_t h2o_db_stmt_t;
typedef struct st_h2o_db_conn_t h2o_db_conn_t;

/* What a statement is, for placement. */
typedef enum {
    H2O_DB_OP_QUERY,
    H2O_DB_OP_BEGIN,
    H2O_DB_OP_COMMIT,   /* sql may replace "COMMIT" (e.g. COMMIT PREPARED '...'); unpins when answered */
    H2O_DB_OP_ROLLBACK, /* likewise */
    H2O_DB_OP_BARRIER   /* never sent: answered once everything queued before it is answered */
} h2o_db_op_kind_t;

/* One statement as the pool sees it; the layer above embeds it in its own record. The caller fills
 * kind, in_txn, no_cache, after_commit, sql and params before h2o_db_pool_enqueue; from then on
 * the pool writes the rest, until it hands the statement back through the place's `answer` or
 * `answer_later` (after which the pool never touches it again). */
struct st_h2o_db_stmt_t {
    h2o_linklist_t link; /* place->pending while queued */
    h2o_db_place_t *place;
    h2o_db_conn_t *conn; /* while in flight */
    size_t ring_index;   /* its place in conn->ring while in flight */
    h2o_db_op_kind_t kind;
    unsigned in_txn : 1;        /* issued between BEGIN and COMMIT/ROLLBACK */
    unsigned no_cache : 1;      /* one-off SQL (PREPARE TRANSACTION '...'): not for the statement cache */
    unsigned after_commit : 1;  /* queued while a commit across partitions runs (see `hold`) */
    unsigned failed_commit : 1; /* pool: a COMMIT of a failed transaction, sent as ROLLBACK, answered as 25P02 */
    unsigned stream : 1;        /* QUERY: rows one at a time through the place's `row` (on a connection of its own) */
    unsigned stopped : 1;       /* pool: the stream was stopped; the rest of its rows are dropped */
    unsigned read_only : 1;     /* BEGIN: of a read-only session (wire.read_only: BEGIN READ ONLY) */
    const char *sql;
    size_t sql_len;
    size_t nparams;
    const char **params;         /* NUL-terminated; NULL = SQL NULL */
    h2o_timeout_entry_t timeout; /* statement-timeout while in flight */
    h2o_db_wire_t wire;          /* what the driver is given when it is sent */
};

/* How the pool reports to the layer above it (the session), for one place. Called on the pool's
 * thread, never from inside an h2o_db_pool_* call that the layer above made, except answer_later. */
typedef struct st_h2o_db_place_cbs_t {
    /* stmt has its result (from the database, or UNAVAILABLE / TIMEOUT when its connection broke or
     * statement-timeout ran out). Returns 0 if the place may still be used, -1 if its owner is
     * gone (the pool then touches neither again). */
    int (*answer)(h2o_db_stmt_t *stmt, h2o_db_result_t *result);
    /* one row of a streamed stmt (valid during the call only). Returns 0 to go on, 1 to pause (until
     * h2o_db_pool_resume), -1 to stop it (the pool cancels it and drops the rest; its answer comes
     * as usual). */
    int (*row)(h2o_db_stmt_t *stmt, h2o_db_result_t *row);
    /* stmt, taken off the queue, is answered without the database (BUSY, UNAVAILABLE, an ended
     * transaction's COMMIT/ROLLBACK); may run inside any h2o_db_pool_* call: the layer above
     * delivers it later, in order */
    void (*answer_later)(h2o_db_stmt_t *stmt, h2o_db_status_t status, const char *sqlstate, const char *message);
    /* whether the first queued statement must wait (answers not delivered yet, a commit across
     * partitions under way); the layer above calls h2o_db_pool_pump when that changes */
    int (*hold)(h2o_db_place_t *place, const h2o_db_stmt_t *head);
    /* the connection of the place's transaction broke (nothing of it was in flight, or before the
     * in-flight statements are answered) */
    void (*txn_lost)(h2o_db_place_t *place, const char *sqlstate);
    /* leak-threshold: the transaction has held its connection for held_ms (said once) */
    void (*leaked)(h2o_db_place_t *place, uint64_t held_ms);
} h2o_db_place_cbs_t;

/* A session as the pool sees it: its queue, where its statements run, its transaction's connection.
 * Embedded in the session; written by the pool only (the layer above reads it). */
struct st_h2o_db_place_t {
    h2o_db_pool_t *pool;
    const h2o_db_place_cbs_t *cbs;
    h2o_linklist_t pending; /* queued, not sent, in order */
    size_t num_pending;
    size_t outstanding;           /* sent, not answered */
    h2o_db_conn_t *conn;          /* where the outstanding statements are */
    h2o_db_conn_t *pinned;        /* the connection of its transaction */
    uint64_t pinned_at;           /* when it was pinned */
    unsigned begin_in_flight : 1; /* its BEGIN is sent, not answered: the transaction's statements wait */
    unsigned txn_failed : 1;      /* a statement of the transaction failed: its COMMIT goes as ROLLBACK */
    unsigned txn_lost : 1;        /* the transaction's connection broke */
    unsigned leak_reported : 1;
    unsigned stream_pin : 1;  /* `pinned` holds a streamed autocommit statement, not a transaction (unpin clears it) */
    unsigned waits_any : 1;   /* it waits in pool->waiting (for any connection) */
    unsigned waits_begin : 1; /* ... with a BEGIN (for a connection of its own) */
    /* waiting for a connection: in pool->waiting or in a conn's waiters */
    h2o_linklist_t wait_link;
    h2o_timeout_entry_t wait_timeout;
};

enum { H2O_DB_CONN_CONNECTING, H2O_DB_CONN_READY, H2O_DB_CONN_CLOSED };

/* A pool's counts, counters and `down` are read by the status page on other threads: the owner
 * thread, their only writer, stores them with H2O_DB_SET/INC/DEC (thread.h). */

/* The pool's record of a connection; the driver's own is `pipe` (driver.h). */
struct st_h2o_db_conn_t {
    h2o_db_pool_t *pool;
    h2o_db_pipe_t *pipe;
    h2o_linklist_t link; /* pool->conns */
    int state;
    /* the place whose transaction holds this connection, or NULL */
    h2o_db_place_t *pinned;
    /* after its request ended inside a transaction: rolling back, then back to the pool */
    int cleaning;
    int cancelling; /* the driver's cancel is under way: not back to the pool before it is done */
    int paused;     /* the stream at the head of the ring is paused (the driver reads no further) */
    /* statements sent, oldest first; an entry is NULL once nobody waits for its result
     * (its request ended, or it timed out locally): the result is then dropped */
    struct {
        h2o_db_stmt_t **ops;
        uint64_t *sent_at;
        size_t head, count, capacity;
    } ring;
    h2o_linklist_t waiters; /* places waiting for room on this connection */
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
    h2o_db_driver_stats_t driver;   /* the drivers' own (cache_hits, cache_misses) */
    uint64_t timeouts;              /* statement-timeout answered locally */
    uint64_t leaks;                 /* sessions reported by leak-threshold */
} h2o_db_pool_stats_t;

/* Gauges the owner thread publishes (at every housekeeping tick) for the status page,
 * which other threads read. */
typedef struct st_h2o_db_pool_gauges_t {
    size_t idle, busy;
    uint64_t oldest_ms; /* the age of the oldest statement in flight, 0 when none */
} h2o_db_pool_gauges_t;

struct st_h2o_db_pool_t {
    h2o_db_bind_t *bind;
    h2o_db_thread_t *thread;
    h2o_linklist_t conns;
    size_t num_conns, num_connecting, num_pinned;
    h2o_linklist_t waiting; /* places waiting for any connection, FIFO */
    size_t num_waiting;
    size_t num_waiting_any, num_waiting_begin; /* of those: in `waiting`, and with a BEGIN */
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

/* Makes place usable with pool: empty, reporting through cbs (static, kept by the caller). */
void h2o_db_place_init(h2o_db_place_t *place, h2o_db_pool_t *pool, const h2o_db_place_cbs_t *cbs);
/* Whether nothing of place is queued or in flight. */
static inline int h2o_db_place_idle(const h2o_db_place_t *place)
{
    return place->outstanding == 0 && place->num_pending == 0;
}
/* Queues stmt on place (after the others; `urgent`: before those marked after_commit) and sends
 * what can be sent. A place holding more than max(queue, pipeline-depth) statements answers this
 * one BUSY (through answer_later). The callbacks may run before it returns. */
void h2o_db_pool_enqueue(h2o_db_place_t *place, h2o_db_stmt_t *stmt, int urgent);
/* Continues the place's paused stream. Returns 0, or -1 when nothing of place is paused. */
int h2o_db_pool_resume(h2o_db_place_t *place);
/* Sends what it can of the place's queued statements, or makes it wait. */
void h2o_db_pool_pump(h2o_db_place_t *place);
/* The place's owner is done with it (request ended, or everything is answered at once): it stops
 * waiting, its transaction is rolled back on its connection, and its statements are handed back,
 * never answered: those in flight (their results will be dropped) appended to `in_flight`, the
 * queued ones to `queued`, each in order (through stmt->link). The place is empty afterwards. */
void h2o_db_pool_detach(h2o_db_place_t *place, h2o_linklist_t *in_flight, h2o_linklist_t *queued);
/* request-timeout ran out for one of the pool's sessions (the status page counts it) */
void h2o_db_pool_count_timeout(h2o_db_pool_t *pool);

/* Milliseconds a connection's oldest statement has been in flight (0 when none). */
uint64_t h2o_db_conn_oldest_age(h2o_db_conn_t *conn, uint64_t now);

/* Between pool.c (placement, driver callbacks), pool_stream.c (streamed statements) and
 * pool_housekeeping.c (the pool over time). */

/* Every call into the driver goes through these: the driver reports what happens later, never
 * before the call returns (driver.h), and its callbacks check it. */
#define DRIVER_CALL(pool, call)                                                                                                    \
    do {                                                                                                                           \
        ++(pool)->in_driver;                                                                                                       \
        call;                                                                                                                      \
        --(pool)->in_driver;                                                                                                       \
    } while (0)
#define ASSERT_NOT_IN_DRIVER(pool) assert((pool)->in_driver == 0 && "a driver called back from inside open/send/cancel/close")

/* pool.c: whether the pool may open one more connection (max, max-total) */
int h2o_db_pool_can_open(h2o_db_pool_t *pool);
/* pool.c: opens one (NULL when max-total was reached meanwhile) */
h2o_db_conn_t *h2o_db_pool_open_conn(h2o_db_pool_t *pool);
/* pool.c: conn is broken (the driver said so, or the pool decided): what is in flight is
 * answered UNAVAILABLE with sqlstate, the connection is closed */
void h2o_db_conn_failed(h2o_db_conn_t *conn, const char *sqlstate, const char *message);
/* pool.c: ready, with nothing in flight, not pinned, nothing to clean */
int h2o_db_conn_is_idle(h2o_db_conn_t *conn);
/* pool.c: closes a connection that nobody uses (idle, or its statements were all abandoned),
 * counting it in *counter */
void h2o_db_conn_retire(h2o_db_conn_t *conn, uint64_t *counter);
/* pool.c: serves the sessions waiting for any connection, oldest first */
void h2o_db_pool_serve_waiting(h2o_db_pool_t *pool);
/* pool.c: fails every statement waiting for a connection of this pool */
void h2o_db_pool_fail_waiting(h2o_db_pool_t *pool, h2o_db_status_t status, const char *sqlstate, const char *message);
/* pool_place.c: whether conn is ready and below pipeline-depth */
int h2o_db_conn_has_room(h2o_db_conn_t *conn);
/* pool_place.c: a connection with nothing on it (ready, not pinned, nothing to clean), or NULL */
h2o_db_conn_t *h2o_db_pool_find_idle(h2o_db_pool_t *pool);
/* pool_place.c: a shared connection that can take one more statement now (not pinned, below
 * pipeline-depth, its oldest statement young): with `first`, the first such in open order, else
 * the one with the fewest in flight; NULL when none can */
h2o_db_conn_t *h2o_db_pool_find_shared(h2o_db_pool_t *pool, int first);
/* pool_place.c: where a session with nothing in flight sends its next autocommit statement, or
 * NULL (it waits, and a connection may be opened) */
h2o_db_conn_t *h2o_db_pool_choose_conn(h2o_db_pool_t *pool);
/* pool_place.c: opens a connection for who waits when the counts say so, honouring the back-off
 * while the database is down; -1 when the waiting statement should fail fast instead */
int h2o_db_pool_maybe_connect(h2o_db_pool_t *pool);
/* pool_stream.c: the driver's cbs->row */
int h2o_db_pool_row_cb(h2o_db_pipe_t *pipe, h2o_db_result_t *row);
/* pool_stream.c: a paused stream on conn nobody will resume (its statement was abandoned) reads on,
 * so that its end comes */
void h2o_db_pool_drain(h2o_db_conn_t *conn);
/* pool_stream.c: cancels what runs on a pinned conn (once; no-op for a driver without cancel) */
void h2o_db_pool_cancel(h2o_db_conn_t *conn);
/* pool_housekeeping.c: after a failure, retries (ensure min, serve who waits) when needed: at once,
 * or after the back-off while the database is down */
void h2o_db_pool_retry_later(h2o_db_pool_t *pool);
/* pool_housekeeping.c: connections changed: the gauges are republished on this loop iteration */
void h2o_db_pool_changed(h2o_db_pool_t *pool);

#endif
