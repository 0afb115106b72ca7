/*
 * Worker threads: each has its own libuv loop, its own h2o_context_t (so its
 * own database pools) and its own SO_REUSEPORT listener per `listen`.
 *
 * Start: the main thread opens and binds every socket (so a port in use is a
 * config error with file:line), then each worker builds its context (which runs
 * every handler's on_context_init, e.g. compiling mruby) and waits on a barrier;
 * listen() is called only when every worker is ready.
 *
 * Stop (SIGTERM/SIGINT): the main thread wakes every worker; a worker closes its
 * listeners, asks h2o to shut down (GOAWAY on HTTP/2, no keep-alive on HTTP/1),
 * closes keep-alive connections that sit idle, and waits for the rest to finish
 * within the shutdown timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "server/server.h"
#include "thread.h"

struct client {
    union {
        uv_handle_t handle; /* first: h2o hands this back to on_client_close */
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    h2o_db_worker_t *worker;
    h2o_socket_t *sock;
    h2o_linklist_t link;
};

struct listener {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    h2o_db_worker_t *worker;
    h2o_accept_ctx_t accept_ctx; /* its hosts and TLS context */
    h2o_db_listen_t *conf;
    int is_unix;
    int proxy_line_first; /* a TLS listener with proxy-protocol */
    int waiting;          /* a connection is accepted by the kernel and waits below max-connections */
};

struct st_h2o_db_worker_t {
    h2o_db_server_t *server;
    unsigned index;
    pthread_t tid;
    uv_loop_t loop;
    h2o_context_t ctx;
    struct listener *listeners;
    size_t num_listeners;
    uv_async_t wake;
    uv_async_t resume;                             /* a connection closed somewhere below max-connections: accept what waits */
    int resume_open;                               /* guarded by server->resume_lock */
    h2o_multithread_receiver_t memcached_receiver; /* ssl-session-resumption's memcached answers */
    unsigned order;                                /* this context was made after `order` others */
    uv_timer_t drain;
    h2o_linklist_t clients;
    size_t num_clients;
    uint64_t drain_deadline;
    int stopping;
    int forced; /* the shutdown timeout ran out with clients still connected */
};

static void on_client_close(uv_handle_t *handle)
{
    struct client *c = (struct client *)handle;
    h2o_db_worker_t *w = c->worker;
    h2o_linklist_unlink(&c->link);
    --w->num_clients;
    free(c);
    h2o_db_server_t *server = w->server;
    if (__atomic_fetch_sub(&server->num_connections, 1, __ATOMIC_RELAXED) == server->max_connections) {
        /* (rare: only when the limit was reached; a thread that stopped has closed its handle) */
        pthread_mutex_lock(&server->resume_lock);
        for (unsigned i = 0; i < server->num_threads; ++i)
            if (server->workers[i].resume_open)
                uv_async_send(&server->workers[i].resume);
        pthread_mutex_unlock(&server->resume_lock);
    }
}

/* Takes the connection the kernel accepted for `l`; libuv watches the listener again. */
static void accept_one(struct listener *l)
{
    h2o_db_worker_t *w = l->worker;
    struct client *c = calloc(1, sizeof(*c));
    l->waiting = 0;
    if (l->is_unix)
        uv_pipe_init(&w->loop, &c->h.pipe, 0);
    else
        uv_tcp_init(&w->loop, &c->h.tcp);
    if (uv_accept(&l->h.stream, &c->h.stream) != 0) {
        uv_close(&c->h.handle, (uv_close_cb)free);
        return;
    }
    if (!l->is_unix)
        uv_tcp_nodelay(&c->h.tcp, 1);
    c->worker = w;
    h2o_linklist_insert(&w->clients, &c->link);
    ++w->num_clients;
    __atomic_fetch_add(&w->server->num_connections, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&w->server->num_sessions, 1, __ATOMIC_RELAXED);
    c->sock = h2o_uv_socket_create(&c->h.stream, on_client_close);
    if (l->proxy_line_first)
        h2o_db_accept_proxy_line(&l->accept_ctx, c->sock);
    else
        h2o_accept(&l->accept_ctx, c->sock);
}

/* At max-connections the connection is left with libuv, which stops watching the listener until
 * it is taken (so at most one per listener and thread waits beyond the limit, as in h2o). */
static void on_accept(uv_stream_t *stream, int status)
{
    struct listener *l = (struct listener *)stream;
    if (status != 0)
        return;
    if (__atomic_load_n(&l->worker->server->num_connections, __ATOMIC_RELAXED) >= l->worker->server->max_connections) {
        l->waiting = 1;
        return;
    }
    accept_one(l);
}

static void on_resume(uv_async_t *async)
{
    h2o_db_worker_t *w = async->data;
    for (size_t i = 0; i < w->num_listeners && !w->stopping; ++i)
        if (w->listeners[i].waiting && __atomic_load_n(&w->server->num_connections, __ATOMIC_RELAXED) < w->server->max_connections)
            accept_one(w->listeners + i);
}

/* HTTP/1 keep-alive connections waiting for their next request are closed at
 * shutdown: shutting down the read side makes h2o see EOF and close them itself. */
static int close_if_idle(h2o_req_t *req, void *data)
{
    h2o_db_worker_t *w = data;
    if (req->processed_at.at.tv_sec != 0)
        return 0; /* a request is being served: it ends with Connection: close */
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    for (h2o_linklist_t *n = w->clients.next; n != &w->clients; n = n->next) {
        struct client *c = H2O_STRUCT_FROM_MEMBER(struct client, link, n);
        uv_os_fd_t fd;
        if (c->sock == sock && uv_fileno(&c->h.handle, &fd) == 0) {
            shutdown(fd, SHUT_RD);
            break;
        }
    }
    return 0;
}

static void close_handle_cb(uv_handle_t *handle, void *arg)
{
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

static void on_close_guard(uv_timer_t *timer)
{
    fprintf(stderr, "h2o-db: some database connections did not close in time; leaving them\n");
    uv_walk(timer->loop, close_handle_cb, NULL);
}

/* Once the context is disposed of, what libh2o leaves on the loop must not keep it running: the
 * TCP and unix sockets are upstream connections kept alive by proxy.reverse.url or fastcgi (the
 * clients are gone), closed at once; its own timers (the upstream socket pool's, data NULL) are
 * unreferenced. The databases (uv_poll, async handles, their timers) close on their own. */
static void release_libh2o_cb(uv_handle_t *handle, void *arg)
{
    if (uv_is_closing(handle))
        return;
    if ((handle->type == UV_TCP || handle->type == UV_NAMED_PIPE) && handle->data != NULL)
        h2o_socket_close(handle->data);
    else if (handle->type == UV_TIMER && handle->data == NULL)
        uv_unref(handle);
}

static void on_drain_tick(uv_timer_t *timer)
{
    h2o_db_worker_t *w = timer->data;
    if (w->ctx.globalconf->http1.callbacks.foreach_request != NULL)
        w->ctx.globalconf->http1.callbacks.foreach_request(&w->ctx, close_if_idle, w);
    if (w->num_clients != 0 && uv_now(&w->loop) < w->drain_deadline)
        return;
    if (w->num_clients != 0) {
        fprintf(stderr, "h2o-db: thread %u: %zu connection(s) still open after the shutdown timeout; closing them\n", w->index,
                w->num_clients);
        w->forced = 1;
    }
    uv_timer_stop(&w->drain);
    uv_stop(&w->loop);
}

static void on_wake(uv_async_t *async)
{
    h2o_db_worker_t *w = async->data;
    w->stopping = 1;
    for (size_t i = 0; i < w->num_listeners; ++i)
        uv_close(&w->listeners[i].h.handle, NULL);
    h2o_context_request_shutdown(&w->ctx);
    w->drain_deadline = uv_now(&w->loop) + w->server->shutdown_timeout_ms;
    uv_timer_start(&w->drain, on_drain_tick, 0, 50);
}

static void dispose_in_turn(h2o_db_worker_t *w);

/* Whether socket j of `conf` is this thread's. The sockets of a listen are spread over the
 * threads: with fewer threads than sockets (after a reload) a thread takes several, with more,
 * some share one. */
static int mine(const h2o_db_worker_t *w, const h2o_db_listen_t *conf, size_t j)
{
    return j % w->server->num_threads == w->index || (w->index >= conf->num_fds && j == w->index % conf->num_fds);
}

/* Listens on its own descriptor of the socket `fd` (the server keeps the socket: a reload's
 * threads take it over while these still accept). */
static void add_listener(h2o_db_worker_t *w, h2o_db_listen_t *conf, int fd)
{
    h2o_db_server_t *server = w->server;
    struct listener *l = w->listeners + w->num_listeners++;
    l->worker = w;
    l->conf = conf;
    l->is_unix = conf->addr.ss_family == AF_UNIX;
    l->accept_ctx.ctx = &w->ctx;
    l->accept_ctx.hosts = conf->hosts != NULL ? conf->hosts : server->globalconf.hosts;
    l->accept_ctx.ssl_ctx = conf->ssl != NULL ? h2o_db_ssl_default_ctx(conf->ssl) : NULL;
    if (server->memcached.context != NULL)
        l->accept_ctx.libmemcached_receiver = &w->memcached_receiver;
    /* (with TLS, proxy_line.c reads the PROXY line: libh2o's libuv flavour cannot) */
    l->accept_ctx.expect_proxy_line = conf->proxy_protocol && conf->ssl == NULL;
    l->proxy_line_first = conf->proxy_protocol && conf->ssl != NULL;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0), err = own == -1 ? uv_translate_sys_error(errno) : 0;
    if (err == 0)
        err = l->is_unix ? uv_pipe_init(&w->loop, &l->h.pipe, 0) : uv_tcp_init(&w->loop, &l->h.tcp);
    if (err == 0)
        err = l->is_unix ? uv_pipe_open(&l->h.pipe, own) : uv_tcp_open(&l->h.tcp, own);
    if (err == 0)
        err = uv_listen(&l->h.stream, 1024, on_accept);
    if (err != 0) {
        fprintf(stderr, "h2o-db: cannot listen on %s: %s\n", conf->display, uv_strerror(err));
        __atomic_store_n(&server->start_failed, 1, __ATOMIC_RELAXED);
    }
}

static void *worker_main(void *arg)
{
    h2o_db_worker_t *w = arg;
    h2o_db_server_t *server = w->server;

    uv_loop_init(&w->loop);
    h2o_linklist_init_anchor(&w->clients);
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    uv_async_init(&w->loop, &w->resume, on_resume);
    w->resume.data = w;
    pthread_mutex_lock(&server->resume_lock);
    w->resume_open = 1;
    pthread_mutex_unlock(&server->resume_lock);
    uv_timer_init(&w->loop, &w->drain);
    w->drain.data = w;
    /* one context at a time, and disposed of in the reverse order (dispose_in_turn) */
    pthread_mutex_lock(&server->resume_lock);
    h2o_context_init(&w->ctx, &w->loop, &server->globalconf);
    w->order = server->num_inited++;
    pthread_mutex_unlock(&server->resume_lock);
    if (server->memcached.context != NULL)
        h2o_multithread_register_receiver(w->ctx.queue, &w->memcached_receiver, h2o_memcached_receiver);

    /* a handler that cannot start on this thread (mruby) said so while the context was made */
    if (h2o_db_thread_start_failed)
        __atomic_store_n(&server->start_failed, 1, __ATOMIC_RELAXED);

    /* nothing is accepted before uv_run, so listening here still starts every thread together
     * (counted first: libuv keeps the handles' addresses) */
    for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1)
            w->listeners = calloc(w->num_listeners, sizeof(*w->listeners)), w->num_listeners = 0;
        for (size_t i = 0; i < server->listens.size; ++i)
            for (size_t j = 0; j < server->listens.entries[i].num_fds; ++j)
                if (mine(w, server->listens.entries + i, j)) {
                    if (pass == 1)
                        add_listener(w, server->listens.entries + i, server->listens.entries[i].fds[j]);
                    else
                        ++w->num_listeners;
                }
    }

    pthread_barrier_wait(&server->ready);
    if (__atomic_load_n(&server->start_failed, __ATOMIC_RELAXED))
        return NULL; /* the main thread reports it and exits 1 */

    uv_run(&w->loop, UV_RUN_DEFAULT);
    pthread_mutex_lock(&server->resume_lock);
    w->resume_open = 0;
    pthread_mutex_unlock(&server->resume_lock);

    dispose_in_turn(w);
    return NULL;
}

/* Every connection is gone: dispose of the context (closes the database pools). */
static void dispose(h2o_db_worker_t *w)
{
    /* The one entry libh2o 2.2.5 leaves linked is the context's own GOAWAY resend timer, which
     * h2o_context_request_shutdown links and which re-links itself while HTTP/2 connections
     * remain; h2o_context_dispose asserts that the context's timeouts are empty. */
    if (h2o_timeout_is_linked(&w->ctx.http2._graceful_shutdown_timeout))
        h2o_timeout_unlink(&w->ctx.http2._graceful_shutdown_timeout);
    if (w->server->memcached.context != NULL)
        h2o_multithread_unregister_receiver(w->ctx.queue, &w->memcached_receiver);
    h2o_context_dispose(&w->ctx);
    uv_walk(&w->loop, release_libh2o_cb, NULL);
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->drain, NULL);
    uv_close((uv_handle_t *)&w->resume, NULL);
    /* let the pools finish closing their connections (SQLite's worker threads answer
     * through async handles), within a bound */
    uv_timer_t guard;
    uv_timer_init(&w->loop, &guard);
    uv_timer_start(&guard, on_close_guard, 5000, 0);
    uv_unref((uv_handle_t *)&guard);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_walk(&w->loop, close_handle_cb, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    free(w->listeners);
}

/* libh2o 2.2.5's handlers keep per-context lists that its on_context_init appends to without a
 * lock, and that some on_context_dispose (the status handler's) can only shrink from the end:
 * contexts are made one at a time, and disposed of last made first. */
static void dispose_in_turn(h2o_db_worker_t *w)
{
    h2o_db_server_t *server = w->server;
    pthread_mutex_lock(&server->resume_lock);
    while (server->num_inited != w->order + 1)
        pthread_cond_wait(&server->disposed, &server->resume_lock);
    pthread_mutex_unlock(&server->resume_lock);
    if (!w->forced)
        dispose(w);
    pthread_mutex_lock(&server->resume_lock);
    --server->num_inited;
    pthread_cond_broadcast(&server->disposed);
    pthread_mutex_unlock(&server->resume_lock);
}

int h2o_db_server_start(h2o_db_server_t *server)
{
    pthread_barrier_init(&server->ready, NULL, server->num_threads + 1);
    pthread_mutex_init(&server->resume_lock, NULL);
    pthread_cond_init(&server->disposed, NULL);
    server->workers = calloc(server->num_threads, sizeof(*server->workers));
    for (unsigned i = 0; i < server->num_threads; ++i) {
        h2o_db_worker_t *w = server->workers + i;
        w->server = server;
        w->index = i;
        if (pthread_create(&w->tid, NULL, worker_main, w) != 0) {
            perror("h2o-db: pthread_create");
            exit(1);
        }
    }
    pthread_barrier_wait(&server->ready);
    if (__atomic_load_n(&server->start_failed, __ATOMIC_RELAXED)) {
        for (unsigned i = 0; i < server->num_threads; ++i)
            pthread_join(server->workers[i].tid, NULL);
        fprintf(stderr, "h2o-db: a worker thread could not start (see above)\n");
        return -1;
    }
    return 0;
}

int h2o_db_server_stop(h2o_db_server_t *server)
{
    for (unsigned i = 0; i < server->num_threads; ++i)
        uv_async_send(&server->workers[i].wake);
    /* this config's own descriptors of the sockets: once the workers have closed theirs, a socket
     * no newer config shares is closed, and its port refuses connections */
    for (size_t i = 0; i < server->listens.size; ++i) {
        h2o_db_listen_t *l = server->listens.entries + i;
        for (size_t j = 0; j < l->num_fds; ++j)
            close(l->fds[j]);
        l->num_fds = 0;
    }
    int forced = 0;
    for (unsigned i = 0; i < server->num_threads; ++i) {
        pthread_join(server->workers[i].tid, NULL);
        forced |= server->workers[i].forced;
    }
    return forced;
}
