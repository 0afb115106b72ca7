/*
 * Pools over time (pool.c places statements and takes the drivers' callbacks):
 *   the tick     once a second: connections idle for longer than idle-timeout (above min) or
 *                older than max-lifetime are retired, transactions held for longer than
 *                leak-threshold are reported (once), min is kept, and the gauges are republished
 *   the retry    after a connection failed, while connections are missing or statements wait:
 *                at once, or after the back-off while the database is down
 *   the gauges   idle and busy connections, which the status page reads from other threads:
 *                republished once per loop iteration after a change
 *   creation and destruction of a pool (one per bind per worker thread)
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include "pool.h"

/* Connections kept open: `min`, and at least one with connect-at-start: ON. */
static unsigned warm(h2o_db_pool_t *pool)
{
    const h2o_db_pool_config_t *cfg = &pool->bind->pool;
    return cfg->min == 0 && cfg->connect_at_start ? 1 : cfg->min;
}

#define HOUSEKEEPING_MS 1000

/* Opens connections up to min (while the database is down: one at a time, after the back-off). */
static void ensure_min(h2o_db_pool_t *pool)
{
    while (!pool->closing && pool->num_conns < warm(pool) && h2o_db_pool_can_open(pool)) {
        if (pool->down && (pool->num_connecting != 0 || h2o_db_now(pool->thread) - pool->last_failure_at < pool->backoff_ms))
            break;
        h2o_db_pool_open_conn(pool);
    }
}

/* ---- retry ---- */

static void on_retry(uv_timer_t *timer)
{
    h2o_db_pool_t *pool = timer->data;
    ensure_min(pool);
    if (!h2o_linklist_is_empty(&pool->waiting)) {
        if (pool->num_connecting == 0 && h2o_db_pool_can_open(pool))
            h2o_db_pool_open_conn(pool);
        h2o_db_pool_serve_waiting(pool);
    }
}

void h2o_db_pool_retry_later(h2o_db_pool_t *pool)
{
    if (!pool->closing && (pool->num_conns < warm(pool) || !h2o_linklist_is_empty(&pool->waiting)) &&
        !uv_is_active((uv_handle_t *)&pool->retry_timer))
        uv_timer_start(&pool->retry_timer, on_retry, pool->down ? pool->backoff_ms : 0, 0);
}

/* ---- gauges ---- */

void h2o_db_pool_changed(h2o_db_pool_t *pool)
{
    h2o_db_flush_later(pool->thread, &pool->publisher);
}

static void on_publish(h2o_db_flusher_t *flusher)
{
    h2o_db_pool_publish(H2O_STRUCT_FROM_MEMBER(h2o_db_pool_t, publisher, flusher));
}

void h2o_db_pool_publish(h2o_db_pool_t *pool)
{
    size_t idle = 0, busy = 0;
    uint64_t now = h2o_db_now(pool->thread), oldest = 0;
    for (h2o_linklist_t *n = pool->conns.next; n != &pool->conns; n = n->next) {
        h2o_db_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, n);
        if (conn->state != H2O_DB_CONN_READY)
            continue;
        uint64_t age = h2o_db_conn_oldest_age(conn, now);
        if (age > oldest)
            oldest = age;
        if (h2o_db_conn_is_idle(conn))
            ++idle;
        else
            ++busy;
    }
    __atomic_store_n(&pool->gauges.idle, idle, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->gauges.busy, busy, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->gauges.oldest_ms, oldest, __ATOMIC_RELAXED);
}

/* ---- the tick ---- */

/* leak-threshold: a transaction has held its connection for too long; said once (by the place's
 * owner, which knows the request) */
static void report_leak(h2o_db_pool_t *pool, h2o_db_place_t *place, uint64_t now)
{
    place->leak_reported = 1;
    H2O_DB_INC(pool->stats.leaks);
    place->cbs->leaked(place, now - place->pinned_at);
}

static void on_housekeeping(uv_timer_t *timer)
{
    h2o_db_pool_t *pool = timer->data;
    h2o_db_pool_config_t *cfg = &pool->bind->pool;
    uint64_t now = h2o_db_now(pool->thread);
    for (h2o_linklist_t *n = pool->conns.next; n != &pool->conns;) {
        h2o_db_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, n);
        n = n->next;
        if (conn->pinned != NULL && cfg->leak_threshold != 0 && !conn->pinned->leak_reported &&
            now - conn->pinned->pinned_at >= cfg->leak_threshold)
            report_leak(pool, conn->pinned, now);
        if (!h2o_db_conn_is_idle(conn))
            continue;
        if (conn->retire_at != 0 && now >= conn->retire_at) {
            h2o_db_conn_retire(conn, &pool->stats.closed_lifetime);
        } else if (cfg->idle_timeout != 0 && now - conn->idle_since >= cfg->idle_timeout && pool->num_conns > warm(pool)) {
            h2o_db_conn_retire(conn, &pool->stats.closed_idle);
        }
    }
    ensure_min(pool);
    h2o_db_pool_publish(pool);
}

/* ---- life of a pool ---- */

h2o_db_pool_t *h2o_db_pool_create(h2o_db_thread_t *thread, h2o_db_bind_t *bind)
{
    h2o_db_pool_t *pool = calloc(1, sizeof(*pool));
    pool->bind = bind;
    pool->thread = thread;
    h2o_linklist_init_anchor(&pool->conns);
    h2o_linklist_init_anchor(&pool->waiting);
    pool->publisher.cb = on_publish;
    h2o_timeout_init(thread->loop, &pool->acquire_timeout, bind->pool.acquire_timeout);
    h2o_timeout_init(thread->loop, &pool->statement_timeout, bind->pool.statement_timeout);
    h2o_timeout_init(thread->loop, &pool->request_timeout, bind->pool.request_timeout);
    uv_timer_init(thread->loop, &pool->retry_timer);
    pool->retry_timer.data = pool;
    uv_timer_init(thread->loop, &pool->housekeeping);
    pool->housekeeping.data = pool;
    uv_timer_start(&pool->housekeeping, on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    uv_unref((uv_handle_t *)&pool->housekeeping);
    ensure_min(pool);
    return pool;
}

static void on_pool_handle_closed(uv_handle_t *handle)
{
    h2o_db_pool_t *pool = handle->data;
    if (--pool->closing == 1)
        free(pool);
}

void h2o_db_pool_destroy(h2o_db_pool_t *pool)
{
    pool->closing = 1;
    if (h2o_linklist_is_linked(&pool->publisher.link))
        h2o_linklist_unlink(&pool->publisher.link);
    h2o_db_pool_fail_waiting(pool, H2O_DB_UNAVAILABLE, "57P01", "the server is shutting down");
    while (!h2o_linklist_is_empty(&pool->conns)) {
        h2o_db_conn_t *conn = H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, pool->conns.next);
        if (conn->state == H2O_DB_CONN_CONNECTING)
            H2O_DB_DEC(pool->num_connecting);
        conn->state = H2O_DB_CONN_READY; /* so that h2o_db_conn_failed answers what is in flight */
        h2o_db_conn_failed(conn, "57P01", "the server is shutting down");
    }
    /* the pool is freed once all its handles are closed, in whatever order libuv finishes them:
     * its two timers, and the uv_timer_t that each of libh2o's timeouts embeds (h2o_timeout_dispose
     * would close that one without a callback; this does what it does, with one) */
    h2o_timeout_t *timeouts[] = {&pool->acquire_timeout, &pool->statement_timeout, &pool->request_timeout};
    pool->closing = 1 + 2 + sizeof(timeouts) / sizeof(timeouts[0]);
    uv_close((uv_handle_t *)&pool->retry_timer, on_pool_handle_closed);
    uv_close((uv_handle_t *)&pool->housekeeping, on_pool_handle_closed);
    for (size_t i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); ++i) {
        assert(h2o_linklist_is_empty(&timeouts[i]->_entries));
        timeouts[i]->_backend.timer.data = pool;
        uv_close((uv_handle_t *)&timeouts[i]->_backend.timer, on_pool_handle_closed);
    }
}
