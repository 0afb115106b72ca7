/*
 * Per-thread state (see thread.h).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "config/config.h"
#include "pool.h"
#include "thread.h"

__thread h2o_db_thread_t *h2o_db_thread;

__thread int h2o_db_thread_start_failed;

size_t h2o_db_threads_lock(h2o_db_config_t *config, h2o_db_thread_t *const **threads)
{
    pthread_mutex_lock(&config->threads_lock);
    *threads = config->threads.entries;
    return config->threads.size;
}

void h2o_db_threads_unlock(h2o_db_config_t *config)
{
    pthread_mutex_unlock(&config->threads_lock);
}

static void run_later(uv_idle_t *idle)
{
    h2o_db_thread_t *thread = idle->data;
    /* run what was queued before this pass; what the callbacks queue runs on the next one */
    h2o_linklist_t batch;
    h2o_linklist_init_anchor(&batch);
    h2o_linklist_insert_list(&batch, &thread->later);
    while (!h2o_linklist_is_empty(&batch)) {
        h2o_db_later_t *later = H2O_STRUCT_FROM_MEMBER(h2o_db_later_t, link, batch.next);
        h2o_linklist_unlink(&later->link);
        later->cb(later);
    }
    if (h2o_linklist_is_empty(&thread->later))
        uv_idle_stop(&thread->later_idle);
}

void h2o_db_later(h2o_db_thread_t *thread, h2o_db_later_t *later)
{
    if (h2o_linklist_is_linked(&later->link))
        return;
    if (h2o_linklist_is_empty(&thread->later))
        uv_idle_start(&thread->later_idle, run_later);
    h2o_linklist_insert(&thread->later, &later->link);
}

void h2o_db_later_cancel(h2o_db_later_t *later)
{
    if (h2o_linklist_is_linked(&later->link))
        h2o_linklist_unlink(&later->link);
}

static void run_flushers(h2o_db_thread_t *thread)
{
    while (!h2o_linklist_is_empty(&thread->flushers)) {
        h2o_db_flusher_t *f = H2O_STRUCT_FROM_MEMBER(h2o_db_flusher_t, link, thread->flushers.next);
        h2o_linklist_unlink(&f->link);
        f->cb(f);
    }
}

static void on_check(uv_check_t *check)
{
    run_flushers(check->data);
}

static void on_prepare(uv_prepare_t *prepare)
{
    run_flushers(prepare->data);
}

void h2o_db_on_dispose(h2o_db_thread_t *thread, h2o_db_disposer_t *disposer)
{
    h2o_linklist_insert(&thread->disposers, &disposer->link);
}

void h2o_db_on_dispose_cancel(h2o_db_disposer_t *disposer)
{
    if (h2o_linklist_is_linked(&disposer->link))
        h2o_linklist_unlink(&disposer->link);
}

void h2o_db_flush_later(h2o_db_thread_t *thread, h2o_db_flusher_t *flusher)
{
    if (!h2o_linklist_is_linked(&flusher->link))
        h2o_linklist_insert(&thread->flushers, &flusher->link);
}

/* request table: linear probing, backward-shift deletion */

static size_t slot_of(h2o_req_t *req, size_t capacity)
{
    uintptr_t h = (uintptr_t)req;
    h ^= h >> 17;
    h *= UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 20) & (capacity - 1);
}

static void grow_reqs(h2o_db_thread_t *t)
{
    size_t old_cap = t->reqs.capacity, cap = old_cap == 0 ? 64 : old_cap * 2;
    h2o_req_t **keys = t->reqs.keys;
    h2o_db_reqstate_t **values = t->reqs.values;
    t->reqs.keys = calloc(cap, sizeof(*keys));
    t->reqs.values = calloc(cap, sizeof(*values));
    t->reqs.capacity = cap;
    for (size_t i = 0; i < old_cap; ++i) {
        if (keys[i] == NULL)
            continue;
        size_t s = slot_of(keys[i], cap);
        while (t->reqs.keys[s] != NULL)
            s = (s + 1) & (cap - 1);
        t->reqs.keys[s] = keys[i];
        t->reqs.values[s] = values[i];
    }
    free(keys);
    free(values);
}

h2o_db_reqstate_t *h2o_db_thread_find_req(h2o_db_thread_t *t, h2o_req_t *req)
{
    if (t->reqs.size == 0)
        return NULL;
    for (size_t s = slot_of(req, t->reqs.capacity);; s = (s + 1) & (t->reqs.capacity - 1)) {
        if (t->reqs.keys[s] == req)
            return t->reqs.values[s];
        if (t->reqs.keys[s] == NULL)
            return NULL;
    }
}

void h2o_db_thread_add_req(h2o_db_thread_t *t, h2o_req_t *req, h2o_db_reqstate_t *state)
{
    if ((t->reqs.size + 1) * 2 > t->reqs.capacity)
        grow_reqs(t);
    size_t s = slot_of(req, t->reqs.capacity);
    while (t->reqs.keys[s] != NULL)
        s = (s + 1) & (t->reqs.capacity - 1);
    t->reqs.keys[s] = req;
    t->reqs.values[s] = state;
    ++t->reqs.size;
}

void h2o_db_thread_remove_req(h2o_db_thread_t *t, h2o_req_t *req)
{
    if (t->reqs.size == 0)
        return;
    size_t mask = t->reqs.capacity - 1, s = slot_of(req, t->reqs.capacity);
    while (t->reqs.keys[s] != req) {
        if (t->reqs.keys[s] == NULL)
            return;
        s = (s + 1) & mask;
    }
    /* shift following entries back so that no probe sequence is broken */
    for (size_t next = (s + 1) & mask; t->reqs.keys[next] != NULL; next = (next + 1) & mask) {
        size_t home = slot_of(t->reqs.keys[next], t->reqs.capacity);
        if (((next - home) & mask) >= ((next - s) & mask)) {
            t->reqs.keys[s] = t->reqs.keys[next];
            t->reqs.values[s] = t->reqs.values[next];
            s = next;
        }
    }
    t->reqs.keys[s] = NULL;
    t->reqs.values[s] = NULL;
    --t->reqs.size;
}

static size_t storage_key = SIZE_MAX;

static void on_handle_closed(uv_handle_t *handle)
{
    h2o_db_thread_t *thread = handle->data;
    if (--thread->closing == 0) {
        free(thread->reqs.keys);
        free(thread->reqs.values);
        free(thread->pools);
        free(thread);
    }
}

/* h2o_context_dispose: every connection of this thread is gone by now */
static void dispose_thread(void *data)
{
    h2o_db_thread_t *thread = data;
    h2o_db_config_t *config = thread->config;
    pthread_mutex_lock(&config->threads_lock);
    for (size_t i = 0; i < config->threads.size; ++i) {
        if (config->threads.entries[i] == thread) {
            config->threads.entries[i] = config->threads.entries[--config->threads.size];
            break;
        }
    }
    pthread_mutex_unlock(&config->threads_lock);
    while (!h2o_linklist_is_empty(&thread->disposers)) {
        h2o_db_disposer_t *d = H2O_STRUCT_FROM_MEMBER(h2o_db_disposer_t, link, thread->disposers.next);
        h2o_linklist_unlink(&d->link);
        d->cb(d);
    }
    for (size_t i = 0; i < thread->num_pools; ++i)
        if (thread->pools[i] != NULL)
            h2o_db_pool_destroy(thread->pools[i]);
    /* run what the pools queued (driver closes) before the handles go */
    while (!h2o_linklist_is_empty(&thread->later))
        run_later(&thread->later_idle);
    run_flushers(thread);
    thread->closing = 3;
    uv_close((uv_handle_t *)&thread->later_idle, on_handle_closed);
    uv_close((uv_handle_t *)&thread->flush_check, on_handle_closed);
    uv_close((uv_handle_t *)&thread->flush_prepare, on_handle_closed);
    if (h2o_db_thread == thread)
        h2o_db_thread = NULL;
}

h2o_db_thread_t *h2o_db_thread_init(h2o_context_t *ctx)
{
    if (h2o_db_thread != NULL)
        return h2o_db_thread;
    h2o_db_thread_t *t = calloc(1, sizeof(*t));
    t->loop = ctx->loop;
    t->ctx = ctx;
    h2o_linklist_init_anchor(&t->later);
    h2o_linklist_init_anchor(&t->flushers);
    h2o_linklist_init_anchor(&t->disposers);
    uv_idle_init(t->loop, &t->later_idle);
    t->later_idle.data = t;
    uv_check_init(t->loop, &t->flush_check);
    t->flush_check.data = t;
    uv_check_start(&t->flush_check, on_check);
    uv_prepare_init(t->loop, &t->flush_prepare);
    t->flush_prepare.data = t;
    uv_prepare_start(&t->flush_prepare, on_prepare);
    /* neither keeps the loop alive on its own */
    uv_unref((uv_handle_t *)&t->flush_check);
    uv_unref((uv_handle_t *)&t->flush_prepare);
    h2o_db_thread = t;

    h2o_db_config_t *config = t->config = h2o_db_config_of(ctx->globalconf);
    pthread_mutex_lock(&config->threads_lock);
    t->index = (unsigned)config->threads.size;
    h2o_vector_reserve(NULL, &config->threads, config->threads.size + 1);
    config->threads.entries[config->threads.size++] = t;
    pthread_mutex_unlock(&config->threads_lock);

    t->num_pools = config->binds.size;
    t->pools = calloc(t->num_pools + 1, sizeof(*t->pools));
    for (size_t i = 0; i < t->num_pools; ++i)
        t->pools[i] = h2o_db_pool_create(t, config->binds.entries[i]);

    *h2o_context_get_storage(ctx, &storage_key, dispose_thread) = t;
    return t;
}
