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

/* The db.listen directive (config/listen.c), registered by h2o_db_register_configurator. */
void h2o_db_listen_register_directive(h2o_globalconf_t *conf);

#endif
