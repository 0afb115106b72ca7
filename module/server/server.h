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
#include <time.h>
#include <uv.h>
#include "h2o.h"
#include "h2o/configurator.h"
#include "h2o/memcached.h"

#define H2O_DB_SHUTDOWN_TIMEOUT_MS 10000
#define H2O_DB_MAX_CONNECTIONS     1024 /* as h2o */
#define H2O_DB_TCP_FASTOPEN_QUEUE  4096

typedef struct st_h2o_db_ssl_t h2o_db_ssl_t; /* ssl.c: the TLS contexts of one listener */

typedef struct st_h2o_db_listen_t {
    struct sockaddr_storage addr; /* AF_INET, AF_INET6 or AF_UNIX */
    socklen_t addrlen;
    char *display;  /* "127.0.0.1:8080" or the socket's path, for messages */
    char *filename; /* where it was first declared */
    size_t line, column;
    h2o_hostconf_t **hosts; /* NULL: every host (declared at global level); else the NULL-terminated hosts that declared it */
    h2o_db_ssl_t *ssl;      /* NULL: plain HTTP */
    int proxy_protocol;     /* expect a PROXY protocol line before the request */
    char *owner;            /* unix sockets: chown to this user, and chmod to permission (-1: leave) */
    int permission;
    int *fds; /* the sockets: one per worker thread at first start (SO_REUSEPORT), one unix socket; a
               * reload's config takes its own descriptors of the same sockets (workers dup them) */
    size_t num_fds;
} h2o_db_listen_t;

/* ssl-session-resumption modes (bits) */
#define H2O_DB_SSL_RESUME_CACHE  1
#define H2O_DB_SSL_RESUME_TICKET 2

typedef struct st_h2o_db_worker_t h2o_db_worker_t;

typedef struct st_h2o_db_server_t {
    h2o_globalconf_t globalconf;
    const char *config_path;
    H2O_VECTOR(h2o_db_listen_t) listens;
    unsigned num_threads;
    uint64_t shutdown_timeout_ms;
    char *error_log;
    char *pid_file;
    char *user;                /* drop privileges to this user once the sockets are bound */
    unsigned max_connections;  /* accepted and not yet closed, over every thread */
    int tfo_queues;            /* TCP_FASTOPEN queue length; 0: off */
    int ssl_resumption;        /* H2O_DB_SSL_RESUME_* */
    long ssl_session_lifetime; /* seconds; 0: OpenSSL's default */
    struct {
        int cache; /* cache-store: memcached */
        char *host, *prefix;
        uint16_t port;
        int text_protocol;
        h2o_memcached_context_t *context; /* made when the listeners open */
    } memcached;
    struct st_h2o_db_tickets_t *tickets; /* ticket-store: file (NULL: OpenSSL's own keys) */
    time_t launch_time;
    unsigned num_connections;    /* __atomic: connections open now */
    unsigned long num_sessions;  /* __atomic: connections accepted since start */
    pthread_mutex_t resume_lock; /* worker.c: the workers' resume handles, open or not; contexts made */
    pthread_cond_t disposed;     /* a worker disposed of its context */
    unsigned num_inited;         /* contexts made and not yet disposed of */
    h2o_db_worker_t *workers;
    pthread_barrier_t ready;
    int start_failed; /* a worker could not start: set by workers before the barrier (__atomic) */
} h2o_db_server_t;

/* Registers the standalone server's directives (global level; listen also at host level) into `server`. */
void h2o_db_server_register_configurator(h2o_db_server_t *server);
/* listen.c: registers `listen` (global and host level). */
void h2o_db_listen_register_configurator(h2o_db_server_t *server);

/* ssl.c. Adds the `ssl:` mapping `node` of a listen (of host `hostconf`, NULL at global level) to
 * *ssl, made on first use; a second certificate on one address is chosen by SNI. Returns 0, or -1
 * after printing file:line. Main thread, while the config is applied. */
int h2o_db_ssl_add(h2o_configurator_command_t *cmd, yoml_t *node, h2o_hostconf_t *hostconf, h2o_db_ssl_t **ssl);
/* Applies ssl-session-resumption (H2O_DB_SSL_RESUME_* bits, lifetime in seconds or 0) to every
 * context; with async != 0 the session cache is libh2o's asynchronous one (memcached). */
void h2o_db_ssl_set_resumption(h2o_db_ssl_t *ssl, int mode, long lifetime, int async);
/* The contexts of a listener (one per certificate). */
size_t h2o_db_ssl_num_ctx(h2o_db_ssl_t *ssl);
SSL_CTX *h2o_db_ssl_ctx_at(h2o_db_ssl_t *ssl, size_t i);
/* tickets.c: session-ticket keys from a file in h2o's format (NULL after writing why in err; a
 * missing file is an empty set), their use by every context of a listener, and their end. */
typedef struct st_h2o_db_tickets_t h2o_db_tickets_t;
h2o_db_tickets_t *h2o_db_tickets_load(const char *path, char *err, size_t errsz);
void h2o_db_ssl_use_tickets(h2o_db_ssl_t *ssl, h2o_db_tickets_t *tickets);
void h2o_db_tickets_free(h2o_db_tickets_t *tickets);
/* The context a handshake starts with (shared by every worker thread). */
SSL_CTX *h2o_db_ssl_default_ctx(h2o_db_ssl_t *ssl);
void h2o_db_ssl_free(h2o_db_ssl_t *ssl);

/* Registers c.handler: FILE.so:SYMBOL at path level. */
void h2o_db_c_handler_register_configurator(h2o_globalconf_t *conf);

/* listen.c: opens every listener socket (one per thread per listen) and sets up TLS session
 * resumption; returns 0, or -1 after printing file:line. Main thread, before the workers start. */
int h2o_db_server_open_listeners(h2o_db_server_t *server);

/* proxy_line.c: reads a PROXY protocol v1 line from a new connection of a TLS listener, then
 * hands it to h2o_accept(ctx) (whose expect_proxy_line is 0). Loop thread. */
void h2o_db_accept_proxy_line(h2o_accept_ctx_t *ctx, h2o_socket_t *sock);

/* listen.c: frees what `listens` holds and closes this config's descriptors of the sockets. */
void h2o_db_server_dispose_listens(h2o_db_server_t *server);

/* load.c: reads and applies the config at `path` into a new server (num_threads set); NULL after
 * printing file:line errors. In test_mode (-t), listeners are not required. Main thread. */
h2o_db_server_t *h2o_db_server_load(const char *path, int test_mode);
/* load.c: registers on server->globalconf every configurator h2o-db serves (the server's own,
 * libh2o's in h2o's order, c.handler, mruby, db.*) and the status page's "main" section. */
void h2o_db_server_register_configurators(h2o_db_server_t *server);

/* worker.c: starts the worker threads (they listen once all are ready); returns 0, or -1 when
 * one could not start (printed). Main thread. */
int h2o_db_server_start(h2o_db_server_t *server);
/* worker.c: stops accepting, lets the requests in flight finish (shutdown-timeout) and joins the
 * threads; returns non-zero when some connection had to be cut (its config cannot be freed). */
int h2o_db_server_stop(h2o_db_server_t *server);

/* listen.c: takes descriptors of `old`'s sockets for the addresses `server` shares with it (so a
 * reload refuses no connection); the rest are opened by h2o_db_server_open_listeners. */
void h2o_db_server_share_listeners(h2o_db_server_t *server, const h2o_db_server_t *old);
/* reload.c: retires a server whose threads are gone (or never started): frees its binds, sockets
 * and TLS contexts; the rest of its globalconf is kept (see reload.c). */
void h2o_db_server_retire(h2o_db_server_t *server);
/* reload.c: starts `server` (listeners open, databases prepared) and serves until SIGTERM/SIGINT,
 * reloading the config on SIGHUP; returns the process exit status. Main thread. */
int h2o_db_server_serve(h2o_db_server_t *server);

#endif
