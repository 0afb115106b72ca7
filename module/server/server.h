/*
 * The standalone h2o-db server: the directives libh2o leaves to its own server
 * (listen, num-threads, error-log, pid-file), the worker threads and their
 * listeners, and c.handler.
 */
#ifndef h2o_db_server_h
#define h2o_db_server_h

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <uv.h>
#include "h2o.h"
#include "h2o/configurator.h"

#define H2O_DB_SHUTDOWN_TIMEOUT_MS 10000

typedef struct st_h2o_db_listen_t {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *display;  /* "127.0.0.1:8080" for messages */
    char *filename; /* where it was declared */
    size_t line, column;
    int *fds; /* one SO_REUSEPORT socket per worker thread */
} h2o_db_listen_t;

typedef struct st_h2o_db_worker_t h2o_db_worker_t;

typedef struct st_h2o_db_server_t {
    h2o_globalconf_t globalconf;
    const char *config_path;
    H2O_VECTOR(h2o_db_listen_t) listens;
    unsigned num_threads;
    uint64_t shutdown_timeout_ms;
    char *error_log;
    char *pid_file;
    h2o_db_worker_t *workers;
    pthread_barrier_t ready;
    int start_failed; /* a worker could not start: set by workers before the barrier (__atomic) */
} h2o_db_server_t;

/* Registers listen, num-threads, error-log, pid-file (global level) into `server`. */
void h2o_db_server_register_configurator(h2o_db_server_t *server);

/* Registers c.handler: FILE.so:SYMBOL at path level. */
void h2o_db_c_handler_register_configurator(h2o_globalconf_t *conf);

/* Opens every listener socket (one per thread per listen), printing file:line on failure. */
int h2o_db_server_open_listeners(h2o_db_server_t *server);

/* Runs the worker threads until SIGTERM/SIGINT; returns the process exit status. */
int h2o_db_server_run(h2o_db_server_t *server);

#endif
