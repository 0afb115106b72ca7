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
    uv_tcp_t tcp; /* first: h2o hands this back to on_client_close */
    h2o_db_worker_t *worker;
    h2o_socket_t *sock;
    h2o_linklist_t link;
};

struct st_h2o_db_worker_t {
    h2o_db_server_t *server;
    unsigned index;
    pthread_t tid;
    uv_loop_t loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t *listeners;
    uv_async_t wake;
    uv_timer_t drain;
    h2o_linklist_t clients;
    size_t num_clients;
    uint64_t drain_deadline;
    int forced; /* the shutdown timeout ran out with clients still connected */
};

static void on_client_close(uv_handle_t *handle)
{
    struct client *c = (struct client *)handle;
    h2o_linklist_unlink(&c->link);
    --c->worker->num_clients;
    free(c);
}

static void on_accept(uv_stream_t *listener, int status)
{
    h2o_db_worker_t *w = listener->data;
    if (status != 0)
        return;
    struct client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    uv_tcp_init(&w->loop, &c->tcp);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->worker = w;
    h2o_linklist_insert(&w->clients, &c->link);
    ++w->num_clients;
    c->sock = h2o_uv_socket_create((uv_stream_t *)&c->tcp, on_client_close);
    h2o_accept(&w->accept_ctx, c->sock);
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
        if (c->sock == sock && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
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
    for (size_t i = 0; i < w->server->listens.size; ++i)
        uv_close((uv_handle_t *)&w->listeners[i], NULL);
    h2o_context_request_shutdown(&w->ctx);
    w->drain_deadline = uv_now(&w->loop) + w->server->shutdown_timeout_ms;
    uv_timer_start(&w->drain, on_drain_tick, 0, 50);
}

static void *worker_main(void *arg)
{
    h2o_db_worker_t *w = arg;
    h2o_db_server_t *server = w->server;

    uv_loop_init(&w->loop);
    h2o_linklist_init_anchor(&w->clients);
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    uv_timer_init(&w->loop, &w->drain);
    w->drain.data = w;
    h2o_context_init(&w->ctx, &w->loop, &server->globalconf);
    w->accept_ctx.ctx = &w->ctx;
    w->accept_ctx.hosts = server->globalconf.hosts;

    /* a handler that cannot start on this thread (mruby) said so while the context was made */
    if (h2o_db_thread_start_failed)
        __atomic_store_n(&server->start_failed, 1, __ATOMIC_RELAXED);

    /* nothing is accepted before uv_run, so listening here still starts every thread together */
    w->listeners = calloc(server->listens.size, sizeof(*w->listeners));
    for (size_t i = 0; i < server->listens.size; ++i) {
        uv_tcp_init(&w->loop, &w->listeners[i]);
        uv_tcp_open(&w->listeners[i], server->listens.entries[i].fds[w->index]);
        w->listeners[i].data = w;
        int err = uv_listen((uv_stream_t *)&w->listeners[i], 1024, on_accept);
        if (err != 0) {
            fprintf(stderr, "h2o-db: cannot listen on %s: %s\n", server->listens.entries[i].display, uv_strerror(err));
            __atomic_store_n(&server->start_failed, 1, __ATOMIC_RELAXED);
        }
    }

    pthread_barrier_wait(&server->ready);
    if (__atomic_load_n(&server->start_failed, __ATOMIC_RELAXED))
        return NULL; /* the main thread reports it and exits 1 */

    uv_run(&w->loop, UV_RUN_DEFAULT);

    if (!w->forced) {
        /* every connection is gone: dispose of the context (closes the database pools). The one
         * entry libh2o 2.2.5 leaves linked is the context's own GOAWAY resend timer, which
         * h2o_context_request_shutdown links and which re-links itself while HTTP/2 connections
         * remain; h2o_context_dispose asserts that the context's timeouts are empty. */
        if (h2o_timeout_is_linked(&w->ctx.http2._graceful_shutdown_timeout))
            h2o_timeout_unlink(&w->ctx.http2._graceful_shutdown_timeout);
        h2o_context_dispose(&w->ctx);
        uv_close((uv_handle_t *)&w->wake, NULL);
        uv_close((uv_handle_t *)&w->drain, NULL);
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
    }
    return NULL;
}

static int open_listener(h2o_db_listen_t *l)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    if (fd == -1)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        (l->addr.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
        bind(fd, (struct sockaddr *)&l->addr, l->addrlen) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* SO_REUSEPORT would let us share the port with another server already listening there:
 * bind a plain socket first, so that a port in use is an error. */
static int probe_port(h2o_db_listen_t *l)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1, ret = 0;
    if (fd == -1)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (l->addr.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&l->addr, l->addrlen) != 0)
        ret = -1;
    int saved = errno;
    close(fd);
    errno = saved;
    return ret;
}

int h2o_db_server_open_listeners(h2o_db_server_t *server)
{
    for (size_t i = 0; i < server->listens.size; ++i) {
        h2o_db_listen_t *l = server->listens.entries + i;
        if (probe_port(l) != 0) {
            fprintf(stderr, "%s:%zu:%zu: in command listen, cannot bind %s: %s\n", l->filename, l->line + 1, l->column + 1,
                    l->display, strerror(errno));
            return -1;
        }
        l->fds = calloc(server->num_threads, sizeof(int));
        for (unsigned t = 0; t < server->num_threads; ++t) {
            if ((l->fds[t] = open_listener(l)) == -1) {
                fprintf(stderr, "%s:%zu:%zu: in command listen, cannot bind %s: %s\n", l->filename, l->line + 1, l->column + 1,
                        l->display, strerror(errno));
                return -1;
            }
        }
    }
    return 0;
}

int h2o_db_server_run(h2o_db_server_t *server)
{
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    /* workers inherit the mask: only the main thread takes these signals, with sigwait */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    pthread_barrier_init(&server->ready, NULL, server->num_threads + 1);
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
        fprintf(stderr, "h2o-db: a worker thread could not start (see above); exiting\n");
        return 1;
    }

    int sig;
    sigwait(&sigs, &sig);
    fprintf(stderr, "h2o-db: received %s, shutting down gracefully\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    for (unsigned i = 0; i < server->num_threads; ++i)
        uv_async_send(&server->workers[i].wake);
    for (unsigned i = 0; i < server->num_threads; ++i)
        pthread_join(server->workers[i].tid, NULL);
    return 0;
}
