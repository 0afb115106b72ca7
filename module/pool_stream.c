/*
 * Streamed statements, as the pool sees them. A streamed statement runs on a
 * connection pinned to its session (its own, or its transaction's), alone at the
 * head of that connection's ring, so that its rows can be handed up one at a time
 * (the driver's cbs->row) and the driver can stop reading while the layer above
 * is paused, without holding anybody else's statement back.
 *
 *   row     the place says go on (0), pause (1: the driver reads no further until
 *           h2o_db_pool_resume) or stop (-1: the statement is cancelled and the
 *           rest of its rows dropped); its end is answered as any statement's
 *   drain   a paused stream whose statement nobody waits for any more (its
 *           request ended, statement-timeout) is resumed, so that its end comes
 *           and the connection can be cleaned
 */
#include <assert.h>
#include "pool.h"

void h2o_db_pool_cancel(h2o_db_conn_t *conn)
{
    h2o_db_pool_t *pool = conn->pool;
    if (pool->bind->driver->cancel == NULL || conn->cancelling || conn->state != H2O_DB_CONN_READY)
        return;
    conn->cancelling = 1;
    DRIVER_CALL(pool, pool->bind->driver->cancel(conn->pipe));
}

void h2o_db_pool_drain(h2o_db_conn_t *conn)
{
    h2o_db_pool_t *pool = conn->pool;
    if (!conn->paused || conn->state != H2O_DB_CONN_READY)
        return;
    conn->paused = 0;
    if (pool->bind->driver->resume != NULL)
        DRIVER_CALL(pool, pool->bind->driver->resume(conn->pipe));
}

int h2o_db_pool_row_cb(h2o_db_pipe_t *pipe, h2o_db_result_t *row)
{
    h2o_db_conn_t *conn = pipe->data;
    ASSERT_NOT_IN_DRIVER(conn->pool);
    if (conn->state == H2O_DB_CONN_CLOSED)
        return -1;
    if (conn->ring.count == 0) {
        h2o_db_conn_failed(conn, "08P01", "the database sent rows of a statement that was not sent");
        return -1;
    }
    h2o_db_stmt_t *op = conn->ring.ops[conn->ring.head];
    if (op == NULL || op->place == NULL || op->stopped)
        return 0; /* nobody waits for them any more: dropped */
    if (!op->stream) {
        h2o_db_conn_failed(conn, "08P01", "the database sent rows one at a time for a statement that was not streamed");
        return -1;
    }
    int ret = op->place->cbs->row(op, row);
    if (conn->state == H2O_DB_CONN_CLOSED)
        return -1;
    if (conn->ring.ops[conn->ring.head] != op)
        return 0; /* its request ended inside the callback: dropped from now on (the detach cancels) */
    if (ret > 0) {
        conn->paused = 1;
        return 1;
    }
    if (ret < 0) {
        op->stopped = 1;
        h2o_db_pool_cancel(conn);
    }
    return 0;
}

int h2o_db_pool_resume(h2o_db_place_t *s)
{
    h2o_db_conn_t *conn = s->conn != NULL ? s->conn : s->pinned;
    if (conn == NULL || !conn->paused || conn->ring.count == 0)
        return -1;
    h2o_db_stmt_t *op = conn->ring.ops[conn->ring.head];
    if (op == NULL || op->place != s)
        return -1;
    h2o_db_pool_drain(conn);
    return 0;
}
