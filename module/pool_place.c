/*
 * Where the pool can put a statement (pool.c decides when): which connections
 * can take one now, which one an autocommit statement goes to, and whether to
 * open another for who waits. The rule is explained at the top of pool.c.
 */
#include "pool.h"

#define YOUNG_MS 50 /* a connection whose oldest statement is older is not given more */

uint64_t h2o_db_conn_oldest_age(h2o_db_conn_t *conn, uint64_t now)
{
    if (conn->ring.count == 0)
        return 0;
    uint64_t at = conn->ring.sent_at[conn->ring.head];
    return now > at ? now - at : 0;
}

int h2o_db_conn_is_idle(h2o_db_conn_t *conn)
{
    return conn->state == H2O_DB_CONN_READY && conn->ring.count == 0 && conn->pinned == NULL && !conn->cleaning &&
           !conn->cancelling;
}

int h2o_db_pool_can_open(h2o_db_pool_t *pool)
{
    h2o_db_bind_t *bind = pool->bind;
    if (pool->closing || pool->num_conns >= bind->pool.max)
        return 0;
    if (bind->pool.max_total != 0 && __atomic_load_n(&bind->total_conns, __ATOMIC_RELAXED) >= bind->pool.max_total)
        return 0;
    return 1;
}

int h2o_db_conn_has_room(h2o_db_conn_t *conn)
{
    return conn->state == H2O_DB_CONN_READY && conn->ring.count < conn->pool->bind->pool.pipeline_depth;
}

h2o_db_conn_t *h2o_db_pool_find_idle(h2o_db_pool_t *pool)
{
    for (h2o_linklist_t *n = pool->conns.next; n != &pool->conns; n = n->next) {
        h2o_db_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, n);
        if (h2o_db_conn_is_idle(conn))
            return conn;
    }
    return NULL;
}

/* A shared connection that can take one more statement now: not pinned, below pipeline-depth, its
 * oldest statement young (nothing slow to wait behind). `first`: the first such connection in the
 * order they were opened, idle or not, so that the load stays on few connections; else the one
 * with the fewest statements in flight. */
h2o_db_conn_t *h2o_db_pool_find_shared(h2o_db_pool_t *pool, int first)
{
    uint64_t now = h2o_db_now(pool->thread);
    h2o_db_conn_t *best = NULL;
    for (h2o_linklist_t *n = pool->conns.next; n != &pool->conns; n = n->next) {
        h2o_db_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, n);
        if (conn->pinned != NULL || conn->cleaning || conn->cancelling || !h2o_db_conn_has_room(conn) ||
            h2o_db_conn_oldest_age(conn, now) > YOUNG_MS)
            continue;
        if (first)
            return conn;
        if (best == NULL || conn->ring.count < best->ring.count)
            best = conn;
    }
    return best;
}

/* Where a session with nothing in flight sends its next autocommit statement, or NULL (it waits,
 * and a connection may be opened). A driver that pipelines (PostgreSQL; SQLite, whose worker runs
 * its queue back to back) carries more statements on an open connection for less than a new
 * connection costs the database: open connections are filled before another is opened, and those
 * beyond need fall idle and retire after idle-timeout. A driver that runs one statement at a time
 * per connection (MySQL) gets its parallelism from connections: idle first, then a new one, and
 * only at `max` the shared one with the fewest in flight. */
h2o_db_conn_t *h2o_db_pool_choose_conn(h2o_db_pool_t *pool)
{
    if (pool->bind->driver->pipelines)
        return h2o_db_pool_find_shared(pool, 1);
    h2o_db_conn_t *conn = h2o_db_pool_find_idle(pool);
    if (conn == NULL && !h2o_db_pool_can_open(pool))
        conn = h2o_db_pool_find_shared(pool, 0);
    return conn;
}

/* Starts a connect for a waiting statement, honouring the back-off while the database is down.
 * Returns -1 when the statement should fail fast instead. */
int h2o_db_pool_maybe_connect(h2o_db_pool_t *pool)
{
    /* enough connects under way for everybody waiting for any connection: one per BEGIN, and one
     * per pipeline-depth autocommit statements when the driver pipelines (else one each) */
    size_t autocommit = pool->num_waiting_any - pool->num_waiting_begin, depth = pool->bind->pool.pipeline_depth;
    if (pool->num_connecting >=
        pool->num_waiting_begin + (pool->bind->driver->pipelines ? (autocommit + depth - 1) / depth : autocommit))
        return 0;
    if (!h2o_db_pool_can_open(pool))
        return 0;
    if (pool->down) {
        if (pool->num_connecting != 0)
            return 0; /* an attempt is under way: wait for its outcome */
        if (h2o_db_now(pool->thread) - pool->last_failure_at < pool->backoff_ms)
            return -1;
    }
    h2o_db_pool_open_conn(pool);
    return 0;
}
