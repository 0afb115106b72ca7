/*
 * db.listen: PostgreSQL LISTEN/NOTIFY pushed to HTTP clients as Server-Sent Events.
 *   listener.c  one LISTEN connection per worker thread per bind (through the PostgreSQL driver,
 *               outside the pool), its channels and their subscribers (h2o_db_listen)
 *   sse.c       the path's handler: the clients of each thread, their backlogs, heartbeats
 * The configurator (config/listen.c) only turns YAML into h2o_db_listen_args_t.
 */
#ifndef h2o_db_listen_internal_h
#define h2o_db_listen_internal_h

#include "h2o_db.h"
#include "config/config.h"
#include "thread.h"

#define H2O_DB_LISTEN_DEFAULT_HEARTBEAT_MS 15000
#define H2O_DB_LISTEN_DEFAULT_MAX_CLIENTS  10000
#define H2O_DB_LISTEN_DEFAULT_MAX_BACKLOG  (256 * 1024)
#define H2O_DB_LISTEN_MAX_CHANNEL_LEN      63 /* PostgreSQL's NAMEDATALEN - 1 */

/* What db.listen says for one path (config time; register copies it). */
typedef struct st_h2o_db_listen_args_t {
    h2o_db_bind_t *bind; /* a PostgreSQL bind visible at the path */
    size_t num_channels;
    const char *const *channels;
    uint64_t heartbeat_ms; /* 0: no heartbeat */
    size_t max_clients;    /* per thread */
    size_t max_backlog;    /* bytes a client may have unsent before it is disconnected */
} h2o_db_listen_args_t;

/* Adds the SSE handler to a path. Config time (main thread). */
void h2o_db_listen_register(h2o_pathconf_t *pathconf, const h2o_db_listen_args_t *args);

/* Whether `name` can be a channel: 1..63 bytes, no control characters (an SSE `event:` line
 * carries it). */
int h2o_db_listen_channel_valid(const char *name);

/* h2o_db_listen() for a bind already found (sse.c); owner thread. */
h2o_db_listen_t *h2o_db_listen_bind(h2o_db_thread_t *thread, h2o_db_bind_t *bind, const char *channel, h2o_db_listen_cb cb,
                                    void *data);

/* What one thread's LISTEN connection for one bind has done (db.status). Its thread writes these
 * with H2O_DB_SET/H2O_DB_INC (listener.c the connection's, sse.c its clients'); other threads
 * read them with relaxed atomic loads. */
typedef struct st_h2o_db_listen_stats_t {
    unsigned connected;     /* the connection is open and set up */
    size_t channels;        /* channels LISTENed to on it now */
    size_t subscribers;     /* h2o_db_listen handles: each db.listen path's, one per channel, and C handlers' */
    uint64_t notifications; /* NOTIFYs received on a channel listened to */
    uint64_t deliveries;    /* NOTIFYs handed to subscribers */
    uint64_t losses;        /* times the connection was lost or could not be opened */
    size_t clients;         /* sse.c: event-stream clients of the thread's db.listen paths on this bind */
    uint64_t dropped;       /* sse.c: clients disconnected at max-backlog */
    uint64_t refused;       /* sse.c: clients answered 503 at max-clients */
} h2o_db_listen_stats_t;

/* The published numbers of the LISTEN connection `sub` is on, for sse.c to count its clients in
 * (owner thread). */
h2o_db_listen_stats_t *h2o_db_listen_stats_of(h2o_db_listen_t *sub);

/* Copies what `thread` (not necessarily the caller's) has of its LISTEN connection for `bind`
 * into *out; returns 0 when it never had one (*out untouched). Any thread, holding
 * h2o_db_threads_lock, under which no thread disposes its listeners. */
int h2o_db_listen_stats(h2o_db_thread_t *thread, const h2o_db_bind_t *bind, h2o_db_listen_stats_t *out);

/* The db.listen directive (config/listen.c), registered by h2o_db_register_configurator. */
void h2o_db_listen_register_directive(h2o_globalconf_t *conf);

#endif
