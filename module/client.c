/*
 * Noticing HTTP/1 clients that leave while their statements wait.
 *
 * libh2o 2.2.5 stops reading an HTTP/1 socket while the handler works, so a
 * client that disconnects is noticed only when the response is written — a
 * request could hold a connection (and a transaction) for as long as the
 * database takes. While a request has statements waiting for more than 100 ms,
 * we watch a dup() of its socket for a hang-up (EPOLLRDHUP, never plain
 * readability: a pipelined next request is not a hang-up). libuv allows one
 * watcher per fd, hence the copy; it is closed as soon as nothing waits, so that
 * it never keeps a socket h2o closed alive.
 *
 * When the client is gone, every statement of the request is answered with
 * H2O_DB_CLIENT_GONE (its transaction rolled back); the handler answers, the
 * write fails, and h2o disposes of the request. HTTP/2 needs none of this: h2o
 * disposes of a reset stream's request at once.
 */
#include <stdlib.h>
#include <unistd.h>
#include "session.h"

#define WATCH_AFTER_MS 100 /* the context's hundred_ms_timeout */

/* The client socket's file descriptor (libh2o's public accessor), or -1. */
static int socket_fd(h2o_req_t *req)
{
    if (req->conn == NULL || req->conn->callbacks->get_socket == NULL)
        return -1;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    return sock != NULL ? h2o_socket_get_fd(sock) : -1;
}

static void on_poll_closed(uv_handle_t *handle)
{
    close((int)(intptr_t)handle->data);
    free(handle);
}

static void stop_watching(h2o_db_reqstate_t *rs)
{
    if (h2o_timeout_is_linked(&rs->client.soon))
        h2o_timeout_unlink(&rs->client.soon);
    if (rs->client.poll != NULL) {
        rs->client.poll->data = (void *)(intptr_t)rs->client.fd;
        uv_close((uv_handle_t *)rs->client.poll, on_poll_closed);
        rs->client.poll = NULL;
        rs->client.fd = -1;
    }
}

static void on_hangup(uv_poll_t *poll, int status, int events)
{
    h2o_db_reqstate_t *rs = poll->data;
    stop_watching(rs);
    rs->client.gone = 1;
    /* (a callback may end the request: take the list first; sessions live in the request's pool,
     * which the dispose callback keeps until it returns, but do not touch rs after the last one) */
    h2o_db_session_t *s = rs->sessions;
    while (s != NULL) {
        h2o_db_session_t *next = s->next;
        h2o_db_session_abort(s, H2O_DB_CLIENT_GONE, "57014", "the client closed the connection");
        s = next;
    }
}

static void on_soon(h2o_timeout_entry_t *entry)
{
    h2o_db_reqstate_t *rs = H2O_STRUCT_FROM_MEMBER(h2o_db_reqstate_t, client.soon, entry);
    if (rs->client.gone || rs->client.poll != NULL || !h2o_db_reqstate_busy(rs))
        return;
    int fd = socket_fd(rs->req);
    if (fd < 0 || (fd = dup(fd)) < 0)
        return;
    uv_poll_t *poll = malloc(sizeof(*poll));
    if (poll == NULL || uv_poll_init(rs->thread->loop, poll, fd) != 0) {
        free(poll);
        close(fd);
        return;
    }
    poll->data = rs;
    uv_poll_start(poll, UV_DISCONNECT, on_hangup);
    rs->client.poll = poll;
    rs->client.fd = fd;
}

void h2o_db_client_busy(h2o_db_reqstate_t *rs)
{
    h2o_req_t *req = rs->req;
    if (rs->client.gone || rs->client.poll != NULL || h2o_timeout_is_linked(&rs->client.soon) || req->version >= 0x200 ||
        req->conn == NULL || req->conn->ctx == NULL)
        return;
    rs->client.soon.cb = on_soon;
    h2o_timeout_link(rs->thread->loop, &req->conn->ctx->hundred_ms_timeout, &rs->client.soon);
}

void h2o_db_client_idle(h2o_db_reqstate_t *rs)
{
    stop_watching(rs);
}
