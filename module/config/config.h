/*
 * What the db.* directives produce: plain structs, built at config time and
 * read-only afterwards (every worker thread reads them without locks).
 */
#ifndef h2o_db_config_h
#define h2o_db_config_h

#include <stddef.h>
#include <stdint.h>
#include "h2o.h"
#include "config/url.h"

typedef struct st_h2o_db_driver_t h2o_db_driver_t;

/* pool: {...} of a db.bind; times in milliseconds (the config says seconds) */
typedef struct st_h2o_db_pool_config_t {
    unsigned max;       /* connections per thread, >= 1 */
    unsigned max_total; /* over all threads; 0 = no cap */
    unsigned min;       /* kept open per thread */
    unsigned queue;     /* waiting statements per thread */
    unsigned pipeline_depth;
    unsigned statement_cache;
    uint64_t acquire_timeout;
    uint64_t idle_timeout;
    uint64_t max_lifetime;
    uint64_t statement_timeout; /* 0 = off */
    uint64_t request_timeout;   /* the longest a request waits for this database at a stretch; 0 = off */
    uint64_t leak_threshold;    /* 0 = off */
    int connect_at_start;
} h2o_db_pool_config_t;

typedef struct st_h2o_db_bind_t h2o_db_bind_t;

/* binds: {TABLE: KEY} — TABLE's statements run on KEY's database */
typedef struct st_h2o_db_partition_t {
    char *table;
    char *key;
    h2o_db_bind_t *bind; /* resolved when the bind's level is left */
    char *where;         /* "FILE:LINE:COL" of the KEY, for errors */
} h2o_db_partition_t;

struct st_h2o_db_bind_t {
    size_t id; /* index into every thread's pool array */
    char *key;
    h2o_db_url_t url;
    const h2o_db_driver_t *driver;
    h2o_db_pool_config_t pool;
    int middleware;
    char *password;    /* from password-file (PostgreSQL), or NULL */
    char *on_connect;  /* SQL run on every new connection, or NULL */
    char *schema_path; /* run once at start-up, or NULL */
    char *schema_sql;
    H2O_VECTOR(h2o_db_partition_t) partitions;
    int twophase;
    char *scope; /* "global", "host example.com", "path /api" (for errors and the status page) */
    char *filename;
    size_t line, column;
    /* connections open over all threads (for max-total) */
    unsigned total_conns;
    /* backend-wide state, e.g. SQLite's keeper connection of an in-memory database */
    void *driver_data;
    /* read replicas (replicas: and replica: of a PostgreSQL bind; config/replicas.c, docs/replicas.md).
     * A primary owns its children: one bind per replica URL and one for its own read-only pool, each
     * with the primary's key, scope and pool options, in config->binds (so every thread has a pool
     * for each) but attached to no path and found by no key. */
    H2O_VECTOR(h2o_db_bind_t *) replicas;
    h2o_db_bind_t *read_only_primary; /* the primary's URL, every connection read-only */
    h2o_db_bind_t *primary;           /* a child's primary; NULL for a bind of its own */
    uint64_t max_lag;                 /* replica.max-lag, milliseconds */
    int fallback;                     /* replica.fallback */
};

struct st_h2o_db_thread_t;

/* The module's state for one loaded config (one h2o_globalconf_t): a server that reloads has
 * two at a time. Owned by the db configurator of that globalconf; freed with it. */
typedef struct st_h2o_db_config_t {
    /* every bind of the config, in declaration order (bind->id is the index); written while the
     * config is applied, then read-only */
    H2O_VECTOR(h2o_db_bind_t *) binds;
    /* the worker threads serving this config (written by thread.c only, under threads_lock) */
    pthread_mutex_t threads_lock;
    H2O_VECTOR(struct st_h2o_db_thread_t *) threads;
} h2o_db_config_t;

/* The module's state of a globalconf that h2o_db_register_configurator was called for, or NULL. */
h2o_db_config_t *h2o_db_config_of(h2o_globalconf_t *conf);
/* While a config is applied (a command's callback): the bind KEY visible at the level being read
 * (its own and the enclosing levels'), or NULL. Main thread. */
h2o_db_bind_t *h2o_db_config_visible(h2o_globalconf_t *conf, const char *key);
/* Frees the binds of a config no thread serves any more (also done by h2o_config_dispose; twice is
 * harmless). Main thread. */
void h2o_db_config_release(h2o_db_config_t *config);

void h2o_db_bind_free(h2o_db_bind_t *bind);

/* The keys attached at one path: our handler on that pathconf carries them (h2o_db_session
 * finds it by walking req->pathconf->handlers). */
typedef struct st_h2o_db_path_t {
    h2o_handler_t super;
    size_t num_binds;
    h2o_db_bind_t **binds;
} h2o_db_path_t;

/* Adds the handler that records the keys attached at a path (config time). */
void h2o_db_path_register(h2o_pathconf_t *pathconf, h2o_db_bind_t **binds, size_t num_binds);

/* The attachment of a path, or NULL when no db key is attached there. */
h2o_db_path_t *h2o_db_path_of(h2o_pathconf_t *pathconf);

/* Finds a key among the binds attached at a path. */
h2o_db_bind_t *h2o_db_path_find(h2o_db_path_t *path, const char *key);

#endif
