/*
 * A bounded LRU cache from SQL text to a prepared statement, one per
 * connection (like asyncpg's statement cache). The drivers keep what they need
 * in `value` (PostgreSQL: nothing, the name derives from `id`; SQLite: the
 * sqlite3_stmt). Not thread-safe: each connection's owner uses its own.
 */
#ifndef h2o_db_stmt_cache_h
#define h2o_db_stmt_cache_h

#include <stddef.h>
#include <stdint.h>

typedef struct st_h2o_db_cached_t {
    struct st_h2o_db_cached_t *bucket_next;
    struct st_h2o_db_cached_t *lru_prev, *lru_next; /* lru_next toward older */
    uint64_t hash;
    uint64_t id; /* unique on its connection: PostgreSQL names the statement after it */
    void *value;
    size_t sql_len;
    char sql[1]; /* NUL-terminated, allocated to size */
} h2o_db_cached_t;

typedef struct st_h2o_db_stmt_cache_t {
    h2o_db_cached_t **buckets;
    size_t num_buckets, size, capacity;
    h2o_db_cached_t *newest, *oldest;
    uint64_t next_id;
    /* called for an entry leaving the cache (eviction, removal, clear), before it is freed */
    void (*on_evict)(void *ctx, h2o_db_cached_t *stmt);
    void *ctx;
} h2o_db_stmt_cache_t;

/* capacity 0 makes a cache that keeps nothing (every get misses, put returns NULL). */
void h2o_db_stmt_cache_init(h2o_db_stmt_cache_t *cache, size_t capacity, void (*on_evict)(void *, h2o_db_cached_t *), void *ctx);
/* The entry for sql (now the most recently used), or NULL. */
h2o_db_cached_t *h2o_db_stmt_cache_get(h2o_db_stmt_cache_t *cache, const char *sql, size_t len);
/* Adds sql (evicting the least recently used entry when full); NULL when the cache keeps nothing. */
h2o_db_cached_t *h2o_db_stmt_cache_put(h2o_db_stmt_cache_t *cache, const char *sql, size_t len);
/* Removes one entry (on_evict runs). */
void h2o_db_stmt_cache_remove(h2o_db_stmt_cache_t *cache, h2o_db_cached_t *stmt);
/* Removes every entry (on_evict runs for each). */
void h2o_db_stmt_cache_clear(h2o_db_stmt_cache_t *cache);
void h2o_db_stmt_cache_dispose(h2o_db_stmt_cache_t *cache);

#endif
