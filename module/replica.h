/*
 * Read replicas at run time (docs/replicas.md): where a read-only session's statements go, and
 * each replica's health as one worker thread sees it. The binds come from config/replicas.c.
 */
#ifndef h2o_db_replica_h
#define h2o_db_replica_h

#include "session.h"

/* Called by the session layer for every statement `op` of a read-only session s, before it is
 * queued. When nothing of s is queued, in flight, pinned or waiting to be answered (and op is not
 * inside a transaction, unless it is its BEGIN), s moves to the pool chosen now: a healthy
 * replica with the fewest outstanding statements on this thread, else the primary's read-only
 * pool (replica.fallback ON). A BEGIN is marked to begin a READ ONLY transaction. Returns 0, or
 * -1 when no pool may take op (fallback OFF and no replica healthy): the caller answers it
 * UNAVAILABLE. Owner thread only. */
int h2o_db_replica_place(h2o_db_session_t *s, h2o_db_op_t *op);

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
