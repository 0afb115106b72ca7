/*
 * Read replicas at run time (docs/replicas.md): where a read-only session's statements go, and
 * each replica's health as one worker thread sees it. The binds come from config/replicas.c.
 */
#ifndef h2o_db_replica_h
#define h2o_db_replica_h

#include "session.h"

/* How a statement that h2o_db_replica_place refused is answered (static strings). */
typedef struct st_h2o_db_replica_refusal_t {
    h2o_db_status_t status;
    const char *sqlstate, *message;
} h2o_db_replica_refusal_t;

/* Called by the session layer for every statement `op` of a read-only session s, before it is
 * queued. When nothing of s is queued, in flight, pinned or waiting to be answered (and op is not
 * inside a transaction, unless it is its BEGIN), s moves to the pool chosen now: a healthy
 * replica with the fewest outstanding statements on this thread, else the primary's read-only
 * pool (replica.fallback ON); a BEGIN on a twophase bind, the primary's own pool. A BEGIN is
 * marked to begin a READ ONLY transaction. Returns 0, or -1 with *refusal set when op must be
 * answered without the database: no pool may take it (fallback OFF, no replica healthy:
 * UNAVAILABLE), or it is an autocommit statement issued before the session's transaction on a twophase bind
 * has ended (25000: it would run on a writable connection). Owner thread. */
int h2o_db_replica_place(h2o_db_session_t *s, h2o_db_op_t *op, h2o_db_replica_refusal_t *refusal);

/* One replica's health on one thread, for the status page. */
typedef struct st_h2o_db_replica_health_t {
    int measured;         /* a lag measurement has answered on that thread (lag_ms is known) */
    int healthy;          /* it would be chosen now (not down, lag measured and within max-lag) */
    uint64_t lag_ms;      /* the last lag measured, milliseconds */
    uint64_t measured_ms; /* how long ago (milliseconds) that measurement answered */
    uint64_t probes, probe_failures;
} h2o_db_replica_health_t;

/* Reads what thread `thread` last published about replica bind `replica` (pool: that thread's
 * pool of it). Any thread, holding the thread registry's lock (thread.h), like the pools' numbers. */
void h2o_db_replica_health(h2o_db_thread_t *thread, h2o_db_bind_t *replica, h2o_db_pool_t *pool, h2o_db_replica_health_t *out);

#endif
