/*
 * Per-thread state: the loop, one pool per bind, the table that finds a
 * request's sessions, and "later" (callbacks that must not run inside an
 * h2o_db_* call run on the next loop iteration instead).
 *
 * Everything here belongs to one worker thread and is used without locks.
 */
#ifndef h2o_db_thread_h
#define h2o_db_thread_h

#include <uv.h>
#include "h2o.h"

typedef struct st_h2o_db_pool_t h2o_db_pool_t;
typedef struct st_h2o_db_reqstate_t h2o_db_reqstate_t;

/* Values that their owner thread writes and other threads read (the status page): the writer stores
 * them with these (relaxed atomic stores: plain moves on x86), readers load them atomically, so
 * that the reads are race-free. */
#define H2O_DB_SET(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define H2O_DB_INC(x)    H2O_DB_SET(x, (x) + 1)
#define H2O_DB_DEC(x)    H2O_DB_SET(x, (x)-1)

/* Something to run on the next loop iteration; embed it, set cb, call h2o_db_later. */
typedef struct st_h2o_db_later_t {
    h2o_linklist_t link;
    void (*cb)(struct st_h2o_db_later_t *later);
} h2o_db_later_t;

/* Something to run once per loop iteration, after I/O (drivers flush their writes there). */
typedef struct st_h2o_db_flusher_t {
    h2o_linklist_t link;
    void (*cb)(struct st_h2o_db_flusher_t *flusher);
} h2o_db_flusher_t;

/* Something to run when the thread's state is disposed, before its pools are destroyed:
 * background work that uses the pools (two-phase resolvers) stops there. */
typedef struct st_h2o_db_disposer_t {
    h2o_linklist_t link;
    void (*cb)(struct st_h2o_db_disposer_t *disposer);
} h2o_db_disposer_t;

typedef struct st_h2o_db_thread_t {
    uv_loop_t *loop;
    h2o_context_t *ctx;
    struct st_h2o_db_config_t *config; /* the loaded config this thread serves */
    size_t num_pools;
    h2o_db_pool_t **pools; /* by bind->id */
    unsigned index;        /* 0, 1, ... in order of creation (for the status page) */
    /* request → its sessions (open addressing, keyed by the h2o_req_t address; an entry
     * lives from the first h2o_db_session() of a request until the request is disposed) */
    struct {
        h2o_req_t **keys;
        h2o_db_reqstate_t **values;
        size_t size, capacity;
    } reqs;
    h2o_linklist_t later;
    uv_idle_t later_idle;
    h2o_linklist_t flushers;
    h2o_linklist_t disposers;
    struct st_h2o_db_listeners_t *listeners; /* module/listen: the LISTEN connections, made on first use */
    uv_check_t flush_check;
    uv_prepare_t flush_prepare;
    /* set while a user callback runs, so that a dispose inside it (h2o_send → dispose)
     * tells the caller not to touch the session afterwards */
    void *delivering;
    int delivering_gone;
    int closing;
    void *replicas; /* replica.c: what this thread measured of each read replica (made at first use) */
} h2o_db_thread_t;

/* Set (after printing why) by a handler's on_context_init that cannot start on the calling
 * thread (mruby: its state or app failed); the server checks it once the thread's context is
 * made and refuses to start instead of serving without that handler. */
extern __thread int h2o_db_thread_start_failed;

/* The calling thread's state, or NULL when h2o-db was never used on it. */
extern __thread h2o_db_thread_t *h2o_db_thread;

/* Creates the calling thread's state for this context (once; later calls return it). */
h2o_db_thread_t *h2o_db_thread_init(h2o_context_t *ctx);

/* Runs later->cb on the next loop iteration (not before the current call returns). */
void h2o_db_later(h2o_db_thread_t *thread, h2o_db_later_t *later);
void h2o_db_later_cancel(h2o_db_later_t *later);

/* Runs disposer->cb when the thread is disposed (owner thread; cancel before freeing it). */
void h2o_db_on_dispose(h2o_db_thread_t *thread, h2o_db_disposer_t *disposer);
void h2o_db_on_dispose_cancel(h2o_db_disposer_t *disposer);

/* Registers a flusher for the next loop iteration (a no-op when already registered). */
void h2o_db_flush_later(h2o_db_thread_t *thread, h2o_db_flusher_t *flusher);

/* The pool of `bind_id` on this thread. */
static inline h2o_db_pool_t *h2o_db_thread_pool(h2o_db_thread_t *thread, size_t bind_id)
{
    return bind_id < thread->num_pools ? thread->pools[bind_id] : NULL;
}

/* Request table. */
h2o_db_reqstate_t *h2o_db_thread_find_req(h2o_db_thread_t *thread, h2o_req_t *req);
void h2o_db_thread_add_req(h2o_db_thread_t *thread, h2o_req_t *req, h2o_db_reqstate_t *state);
void h2o_db_thread_remove_req(h2o_db_thread_t *thread, h2o_req_t *req);

/* Milliseconds on the loop's clock. */
static inline uint64_t h2o_db_now(h2o_db_thread_t *thread)
{
    return uv_now(thread->loop);
}

/* Every live thread state of a loaded config (for the status page): returns how many and sets *threads, holding
 * the registry's lock until h2o_db_threads_unlock(). Meanwhile no thread disposes its pools (a
 * thread leaves the registry under that lock before it destroys them), so they can be read; read
 * their numbers with relaxed atomic loads (pool.h). Any thread; do not block while holding it. */
size_t h2o_db_threads_lock(struct st_h2o_db_config_t *config, h2o_db_thread_t *const **threads);
void h2o_db_threads_unlock(struct st_h2o_db_config_t *config);

#endif
