/*
 * Upstream connections over unix sockets. libh2o 2.2.5's libuv flavour connects with
 * uv_tcp_connect only, so `proxy.reverse.url: http://[unix:/path]/` and fastcgi over a unix
 * socket failed at once. The h2o-db executable exports its own h2o_socket_connect (see
 * h2o-db.dynamic), which libh2o's callers reach before libh2o's: a unix address is connected
 * with a uv_pipe_t, wrapped as libh2o wraps any stream; every other address goes to libh2o's.
 * Loop thread of the caller.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include "h2o.h"

struct unix_connect {
    uv_pipe_t pipe; /* first: the close callback gets it back */
    uv_connect_t req;
    h2o_socket_t *sock;
    h2o_socket_cb cb;
};

static void connected_cb(uv_connect_t *req, int status)
{
    if (status == UV_ECANCELED)
        return; /* the socket was closed while connecting */
    struct unix_connect *c = H2O_STRUCT_FROM_MEMBER(struct unix_connect, req, req);
    c->cb(c->sock, status == 0 ? NULL : h2o_socket_error_conn_fail);
}

static void closed_cb(uv_handle_t *handle)
{
    free(handle); /* the struct unix_connect */
}

h2o_socket_t *h2o_socket_connect(h2o_loop_t *loop, struct sockaddr *addr, socklen_t addrlen, h2o_socket_cb cb)
{
    static h2o_socket_t *(*libh2o_connect)(h2o_loop_t *, struct sockaddr *, socklen_t, h2o_socket_cb);
    if (addr->sa_family != AF_UNIX) {
        if (libh2o_connect == NULL)
            *(void **)&libh2o_connect = dlsym(RTLD_NEXT, "h2o_socket_connect");
        return libh2o_connect(loop, addr, addrlen, cb);
    }
    struct unix_connect *c = calloc(1, sizeof(*c));
    if (c == NULL || uv_pipe_init(loop, &c->pipe, 0) != 0) {
        free(c);
        return NULL;
    }
    c->cb = cb;
    c->sock = h2o_uv_socket_create((uv_stream_t *)&c->pipe, closed_cb);
    uv_pipe_connect(&c->req, &c->pipe, ((struct sockaddr_un *)addr)->sun_path, connected_cb);
    return c->sock;
}
