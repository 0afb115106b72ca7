/*
 * Read replicas at run time (replica.h, docs/replicas.md).
 *
 * Each worker thread keeps, per replica, what it last measured: a probe statement on a session
 * outside a request (the replica's own pool) asks the standby how far its replay is behind, at
 * most once a second per replica, and only when a read-only session is placed (an idle server
 * sends none). The lag rule, in SQL below:
 *   - a server that is not in recovery (not a standby) has no lag;
 *   - a standby that has replayed all the WAL it received has lag 0: an idle primary sends no
 *     WAL, so an old "last replayed transaction" time does not mean that the standby is behind;
 *   - otherwise the lag is now() - the commit time of the last transaction replayed (0 when none
 *     was replayed since the standby started).
 * A replica is healthy while its pool is not down, its last probe answered, that probe did not
 * take more than PROBE_OVERDUE_MS, and the lag is within replica.max-lag.
 *
 * The status page reads the numbers of other threads: their owner stores them with H2O_DB_SET
 * and the page loads them atomically (as a pool's), under the thread registry's lock.
 */
#include <stdlib.h>
#include <string.h>
#include "config/config.h"
#include "pool.h"
#include "replica.h"
#include "session.h"

#define LOAD(x)           __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define PROBE_INTERVAL_MS 1000
#define PROBE_OVERDUE_MS  2000

static const char lag_sql[] = "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0"
                              " WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
                              " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END";

struct replica_state {
    struct replicas_thread *owner;
    h2o_db_bind_t *bind;     /* the replica; NULL for an entry of another kind of bind */
    h2o_db_session_t *probe; /* opened at the first probe, closed with the thread */
    /* published for the status page (H2O_DB_SET) */
    int probing, ok, measured; /* a probe in flight; the last answered OK; one ever did */
    uint64_t probe_started_at, measured_at, lag_ms, probes, probe_failures;
};

struct replicas_thread {
    h2o_db_disposer_t disposer;
    h2o_db_thread_t *thread;
    unsigned rotor; /* where the next choice starts looking, so that ties take turns */
    size_t num_states;
    struct replica_state states[]; /* by bind id */
};

static void on_thread_dispose(h2o_db_disposer_t *disposer)
{
    struct replicas_thread *rt = H2O_STRUCT_FROM_MEMBER(struct replicas_thread, disposer, disposer);
    __atomic_store_n(&rt->thread->replicas, NULL, __ATOMIC_RELEASE);
    for (size_t i = 0; i < rt->num_states; ++i)
        if (rt->states[i].probe != NULL)
            h2o_db_session_close(rt->states[i].probe); /* no callback of it runs afterwards */
    free(rt);
}

static struct replicas_thread *thread_state(h2o_db_thread_t *thread)
{
    struct replicas_thread *rt = thread->replicas;
    if (rt != NULL)
        return rt;
    rt = calloc(1, sizeof(*rt) + sizeof(rt->states[0]) * thread->num_pools);
    rt->thread = thread;
    rt->num_states = thread->num_pools;
    for (size_t i = 0; i < thread->num_pools; ++i) {
        rt->states[i].owner = rt;
        if (thread->pools[i] != NULL && thread->pools[i]->bind->primary != NULL &&
            thread->pools[i]->bind != thread->pools[i]->bind->primary->read_only_primary)
            rt->states[i].bind = thread->pools[i]->bind;
    }
    rt->disposer.cb = on_thread_dispose;
    h2o_db_on_dispose(thread, &rt->disposer);
    __atomic_store_n(&thread->replicas, rt, __ATOMIC_RELEASE);
    return rt;
}

static void probe_cb(h2o_db_result_t *r, void *data)
{
    struct replica_state *st = data;
    const char *v;
    H2O_DB_SET(st->probing, 0);
    H2O_DB_SET(st->measured_at, h2o_db_now(st->owner->thread));
    H2O_DB_INC(st->probes);
    if (h2o_db_result_status(r) == H2O_DB_OK && h2o_db_result_rows(r) == 1 && (v = h2o_db_result_value(r, 0, 0, NULL)) != NULL) {
        double lag = strtod(v, NULL);
        H2O_DB_SET(st->lag_ms, lag > 0 ? (uint64_t)(lag * 1000 + 0.5) : 0); /* (clocks may disagree a little) */
        H2O_DB_SET(st->ok, 1);
        H2O_DB_SET(st->measured, 1);
    } else {
        H2O_DB_SET(st->ok, 0);
        H2O_DB_INC(st->probe_failures);
    }
}

/* Starts a measurement unless one is in flight or the last began less than a second ago. */
static void maybe_probe(struct replica_state *st, uint64_t now)
{
    if (st->probing || (st->probe_started_at != 0 && now - st->probe_started_at < PROBE_INTERVAL_MS))
        return;
    if (st->probe == NULL && (st->probe = h2o_db_session_open_bind(st->owner->thread, st->bind)) == NULL)
        return;
    if (h2o_db_query(st->probe, lag_sql, 0, NULL, probe_cb, st) == 0) {
        H2O_DB_SET(st->probe_started_at, now);
        H2O_DB_SET(st->probing, 1);
    }
}

static int is_healthy(struct replica_state *st, h2o_db_pool_t *pool, uint64_t now)
{
    if (LOAD(pool->down) || !LOAD(st->ok))
        return 0;
    uint64_t started = LOAD(st->probe_started_at);
    if (LOAD(st->probing) && now > started && now - started > PROBE_OVERDUE_MS)
        return 0; /* the replica does not answer in time */
    return LOAD(st->lag_ms) <= st->bind->primary->max_lag;
}

/* Statements in flight or waiting for a connection in the pool. */
static size_t outstanding(h2o_db_pool_t *pool)
{
    size_t n = pool->num_waiting;
    for (h2o_linklist_t *l = pool->conns.next; l != &pool->conns; l = l->next)
        n += H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, l)->ring.count;
    return n;
}

/* The pool for a read-only session of bind now, or NULL (fallback OFF, nothing healthy). */
static h2o_db_pool_t *choose(h2o_db_thread_t *thread, h2o_db_bind_t *bind)
{
    struct replicas_thread *rt = thread_state(thread);
    uint64_t now = h2o_db_now(thread);
    h2o_db_pool_t *best = NULL, *unmeasured = NULL;
    size_t best_load = 0, n = bind->replicas.size, start = rt->rotor++ % n;
    for (size_t k = 0; k < n; ++k) {
        h2o_db_bind_t *r = bind->replicas.entries[(start + k) % n];
        h2o_db_pool_t *pool = h2o_db_thread_pool(thread, r->id);
        if (pool == NULL || r->id >= rt->num_states)
            continue;
        struct replica_state *st = rt->states + r->id;
        maybe_probe(st, now);
        if (is_healthy(st, pool, now)) {
            size_t load = outstanding(pool);
            if (best == NULL || load < best_load)
                best = pool, best_load = load;
        } else if (!st->measured && !pool->down && unmeasured == NULL) {
            unmeasured = pool;
        }
    }
    if (best != NULL)
        return best;
    if (bind->fallback)
        return h2o_db_thread_pool(thread, bind->read_only_primary->id);
    /* fallback OFF: a replica not measured yet on this thread (its first probe is under way) is
     * tried rather than refusing every read until the probe answers */
    return unmeasured;
}

int h2o_db_replica_place(h2o_db_session_t *s, h2o_db_op_t *op, h2o_db_replica_refusal_t *refusal)
{
    h2o_db_bind_t *bind = s->bind;
    int begin = op->stmt.kind == H2O_DB_OP_BEGIN;
    if ((begin || !s->txn_open) && h2o_db_place_idle(&s->place) && s->place.pinned == NULL && h2o_linklist_is_empty(&s->done)) {
        h2o_db_thread_t *thread = s->pool->thread;
        /* a twophase bind's transactions run on the primary's own pool, as BEGIN READ ONLY: its
         * partitions' commit prepares every participant (a standby cannot PREPARE TRANSACTION)
         * and records the decision on the main session (a read-only connection cannot) */
        h2o_db_pool_t *pool = begin && bind->twophase ? h2o_db_thread_pool(thread, bind->id) : choose(thread, bind);
        if (pool == NULL) {
            *refusal =
                (h2o_db_replica_refusal_t){H2O_DB_UNAVAILABLE, "08001", "no read replica is healthy (replica.fallback: OFF)"};
            return -1;
        }
        if (pool != s->pool) {
            s->pool = pool;
            h2o_db_place_init(&s->place, pool, s->place.cbs);
        }
    } else if (s->pool->bind->primary == NULL && op->stmt.kind == H2O_DB_OP_QUERY && !op->stmt.in_txn &&
               (op->stmt.after_commit || h2o_db_session_root(s)->commit == NULL)) {
        /* an autocommit statement issued before that transaction ended (the commit's own record of
         * its decision excepted): it would run on a writable connection */
        *refusal = (h2o_db_replica_refusal_t){H2O_DB_SQL_ERROR, "25000",
                                              "a read-only session's statement must wait until its transaction has ended"};
        return -1;
    }
    if (begin)
        op->stmt.read_only = 1;
    return 0;
}

int h2o_db_session_read_only(h2o_db_session_t *s)
{
    if (s == NULL || s->released || s->issued)
        return -1;
    /* a bind without replicas changes nothing; a partition session (h2o_db_session_for) runs on
     * its partition's primary, as the partition's transactions need */
    if (s->bind->replicas.size != 0 && s->parent == NULL)
        s->read_only = 1;
    return 0;
}

void h2o_db_replica_health(h2o_db_thread_t *thread, h2o_db_bind_t *replica, h2o_db_pool_t *pool, h2o_db_replica_health_t *out)
{
    memset(out, 0, sizeof(*out));
    struct replicas_thread *rt = __atomic_load_n(&thread->replicas, __ATOMIC_ACQUIRE);
    if (rt == NULL || replica->id >= rt->num_states || rt->states[replica->id].bind != replica)
        return;
    struct replica_state *st = rt->states + replica->id;
    uint64_t now = h2o_db_thread != NULL ? h2o_db_now(h2o_db_thread) : uv_hrtime() / 1000000, at = LOAD(st->measured_at);
    out->measured = LOAD(st->measured);
    out->healthy = is_healthy(st, pool, now);
    out->lag_ms = LOAD(st->lag_ms);
    out->measured_ms = now > at ? now - at : 0;
    out->probes = LOAD(st->probes);
    out->probe_failures = LOAD(st->probe_failures);
}
