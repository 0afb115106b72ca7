/*
 * Statement cache: a chained hash table over an LRU list (see stmt_cache.h).
 */
#include <stdlib.h>
#include <string.h>
#include "driver/stmt_cache.h"

static uint64_t hash_sql(const char *s, size_t len)
{
    /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; ++i) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void h2o_db_stmt_cache_init(h2o_db_stmt_cache_t *cache, size_t capacity, void (*on_evict)(void *, h2o_db_cached_t *), void *ctx)
{
    memset(cache, 0, sizeof(*cache));
    cache->capacity = capacity;
    cache->on_evict = on_evict;
    cache->ctx = ctx;
    if (capacity == 0)
        return;
    size_t n = 16;
    while (n < capacity * 2)
        n *= 2;
    cache->buckets = calloc(n, sizeof(*cache->buckets));
    cache->num_buckets = n;
}

static void lru_unlink(h2o_db_stmt_cache_t *cache, h2o_db_cached_t *s)
{
    if (s->lru_prev != NULL)
        s->lru_prev->lru_next = s->lru_next;
    else
        cache->newest = s->lru_next;
    if (s->lru_next != NULL)
        s->lru_next->lru_prev = s->lru_prev;
    else
        cache->oldest = s->lru_prev;
    s->lru_prev = s->lru_next = NULL;
}

static void lru_push_newest(h2o_db_stmt_cache_t *cache, h2o_db_cached_t *s)
{
    s->lru_prev = NULL;
    s->lru_next = cache->newest;
    if (cache->newest != NULL)
        cache->newest->lru_prev = s;
    cache->newest = s;
    if (cache->oldest == NULL)
        cache->oldest = s;
}

h2o_db_cached_t *h2o_db_stmt_cache_get(h2o_db_stmt_cache_t *cache, const char *sql, size_t len)
{
    if (cache->num_buckets == 0)
        return NULL;
    uint64_t h = hash_sql(sql, len);
    for (h2o_db_cached_t *s = cache->buckets[h & (cache->num_buckets - 1)]; s != NULL; s = s->bucket_next) {
        if (s->hash == h && s->sql_len == len && memcmp(s->sql, sql, len) == 0) {
            if (cache->newest != s) {
                lru_unlink(cache, s);
                lru_push_newest(cache, s);
            }
            return s;
        }
    }
    return NULL;
}

void h2o_db_stmt_cache_remove(h2o_db_stmt_cache_t *cache, h2o_db_cached_t *stmt)
{
    h2o_db_cached_t **slot = &cache->buckets[stmt->hash & (cache->num_buckets - 1)];
    while (*slot != stmt)
        slot = &(*slot)->bucket_next;
    *slot = stmt->bucket_next;
    lru_unlink(cache, stmt);
    --cache->size;
    if (cache->on_evict != NULL)
        cache->on_evict(cache->ctx, stmt);
    free(stmt);
}

h2o_db_cached_t *h2o_db_stmt_cache_put(h2o_db_stmt_cache_t *cache, const char *sql, size_t len)
{
    if (cache->capacity == 0)
        return NULL;
    if (cache->size >= cache->capacity)
        h2o_db_stmt_cache_remove(cache, cache->oldest);
    h2o_db_cached_t *s = malloc(offsetof(h2o_db_cached_t, sql) + len + 1);
    if (s == NULL)
        return NULL;
    s->hash = hash_sql(sql, len);
    s->id = ++cache->next_id;
    s->value = NULL;
    s->sql_len = len;
    memcpy(s->sql, sql, len);
    s->sql[len] = '\0';
    h2o_db_cached_t **bucket = &cache->buckets[s->hash & (cache->num_buckets - 1)];
    s->bucket_next = *bucket;
    *bucket = s;
    lru_push_newest(cache, s);
    ++cache->size;
    return s;
}

void h2o_db_stmt_cache_clear(h2o_db_stmt_cache_t *cache)
{
    while (cache->oldest != NULL)
        h2o_db_stmt_cache_remove(cache, cache->oldest);
}

void h2o_db_stmt_cache_dispose(h2o_db_stmt_cache_t *cache)
{
    h2o_db_stmt_cache_clear(cache);
    free(cache->buckets);
    cache->buckets = NULL;
    cache->num_buckets = 0;
}
