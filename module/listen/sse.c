/*
 * db.listen's handler: every GET on the path becomes a Server-Sent Events stream.
 *
 * Per worker thread the path keeps its clients (struct client, in the request's memory) and
 * one subscription per channel (listener.c), made when the first client arrives on that thread
 * and kept while the thread lives. A NOTIFY is formatted once (`event:` line, one `data:` line
 * per payload line) and appended to the backlog of every client whose filter matches.
 *
 * A client has at most one write in flight (libh2o's generator protocol: h2o_send, then wait
 * for proceed); what arrives meanwhile is its backlog, sent in one piece at the next proceed.
 * When in flight + backlog exceed max-backlog the client is disconnected: its socket is shut
 * down both ways, so that the pending write fails and libh2o disposes of the request (over
 * HTTP/2 that ends the client's whole connection). Nothing is buffered beyond the bound.
 *
 * HTTP/1: libh2o 2.2.5 does not read a connection while its response is being produced, so a
 * client that leaves would be noticed only at the next write; a dup() of its socket is watched
 * for hang-up (as client.c does for queries) and the response ends then.
 *
 * Server stop and reload: once the context is asked to shut down, every client's response is
 * ended (after what is in flight), so that SSE clients do not hold the drain for shutdown-timeout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "listen/listen.h"

#define KEEP_BUFFER 16384 /* a client's buffer larger than this is freed once written */

struct sse_handler {
    h2o_handler_t super;
    h2o_db_listen_args_t args; /* owned copy */
};

/* the path on one thread */
struct path_ctx {
    struct sse_handler *handler;
    h2o_context_t *ctx;
    h2o_db_thread_t *thread;
    h2o_linklist_t clients; /* every client until its request ends (dropped and ending ones too) */
    size_t num_clients;
    h2o_db_listen_t **subs; /* by channel index; NULL until the first client */
    size_t num_ready;       /* channels whose LISTEN is in effect */
    int stopping;
    uv_timer_t heartbeat;
    uv_prepare_t shutdown_check;
    int handles_open;
};

struct buf {
    char *base;
    size_t len, cap;
};

struct client {
    h2o_generator_t super;
    struct path_ctx *pc; /* NULL once gone */
    h2o_req_t *req;
    h2o_linklist_t link;
    ssize_t channel;     /* -1: every channel of the path */
    struct buf pending;  /* not yet handed to h2o */
    struct buf inflight; /* handed to h2o, until proceed */
    int sending, ending, greeted, dropped;
    uv_poll_t *hangup; /* HTTP/1: a dup() of the socket */
};

static void append(struct buf *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap == 0 ? 1024 : b->cap;
        while (cap < b->len + n)
            cap *= 2;
        b->base = realloc(b->base, cap);
        b->cap = cap;
    }
    memcpy(b->base + b->len, s, n);
    b->len += n;
}

static void on_hangup_closed(uv_handle_t *handle)
{
    close((int)(intptr_t)handle->data);
    free(handle);
}

/* The client leaves the path's lists; its request ends or is ending. */
static void detach(struct client *c)
{
    if (c->pc == NULL)
        return;
    if (h2o_linklist_is_linked(&c->link))
        h2o_linklist_unlink(&c->link);
    --c->pc->num_clients;
    H2O_DB_DEC(h2o_db_listen_stats_of(c->pc->subs[0])->clients);
    c->pc = NULL;
    free(c->pending.base);
    free(c->inflight.base);
    c->pending = (struct buf){NULL};
    c->inflight = (struct buf){NULL};
    if (c->hangup != NULL) {
        uv_os_fd_t fd = -1;
        uv_fileno((uv_handle_t *)c->hangup, &fd);
        c->hangup->data = (void *)(intptr_t)fd;
        uv_close((uv_handle_t *)c->hangup, on_hangup_closed);
        c->hangup = NULL;
    }
}

static int socket_fd(h2o_req_t *req)
{
    if (req->conn == NULL || req->conn->callbacks->get_socket == NULL)
        return -1;
    h2o_socket_t *sock = req->conn->callbacks->get_socket(req->conn);
    return sock != NULL ? h2o_socket_get_fd(sock) : -1;
}

/* Ends the response because the client cannot take more (or left). */
static void drop(struct client *c)
{
    if (c->dropped)
        return;
    c->dropped = 1;
    if (!c->sending) {
        detach(c);
        h2o_send(c->req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    /* a write is stuck: make it fail, libh2o then disposes of the request (and calls stop) */
    int fd = socket_fd(c->req);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
}

/* Hands the backlog to h2o when nothing is in flight; ends the response when asked to. */
static void flush(struct client *c)
{
    if (c->sending || c->dropped)
        return;
    if (c->pending.len == 0) {
        if (c->ending) {
            h2o_req_t *req = c->req;
            detach(c);
            h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
        }
        return;
    }
    struct buf t = c->inflight;
    c->inflight = c->pending;
    c->pending = t;
    c->pending.len = 0;
    c->sending = 1;
    h2o_iovec_t v = h2o_iovec_init(c->inflight.base, c->inflight.len);
    h2o_send(c->req, &v, 1, H2O_SEND_STATE_IN_PROGRESS);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct client *c = (void *)gen;
    c->sending = 0;
    c->inflight.len = 0;
    if (c->inflight.cap > KEEP_BUFFER) {
        /* (a burst grew it: give the memory back rather than keep max-backlog per client) */
        free(c->inflight.base);
        c->inflight = (struct buf){NULL};
    }
    if (c->pc == NULL)
        return;
    if (c->dropped) {
        /* (the shut-down socket still took the write) */
        detach(c);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    flush(c);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    detach((void *)gen);
}

/* Queues text for one client, dropping it past the bound. */
static void push(struct client *c, const char *s, size_t n)
{
    if (c->dropped || c->ending)
        return;
    size_t max = c->pc->handler->args.max_backlog;
    if (c->pending.len + c->inflight.len + n > max) {
        fprintf(stderr, "h2o-db: db.listen: a client of %.*s had more than max-backlog (%zu bytes) unsent; disconnected\n",
                (int)c->req->path_normalized.len, c->req->path_normalized.base, max);
        H2O_DB_INC(h2o_db_listen_stats_of(c->pc->subs[0])->dropped);
        drop(c);
        return;
    }
    append(&c->pending, s, n);
    flush(c);
}

static void broadcast(struct path_ctx *pc, ssize_t channel, const char *s, size_t n)
{
    for (h2o_linklist_t *node = pc->clients.next; node != &pc->clients;) {
        struct client *c = H2O_STRUCT_FROM_MEMBER(struct client, link, node);
        node = node->next; /* (push may drop c) */
        if (channel < 0 || c->channel < 0 || c->channel == channel)
            push(c, s, n);
    }
}

/* "event: CHANNEL\ndata: LINE\n…\n": CR LF, LF and CR all end a payload line, as they end an SSE
 * line */
static void format_event(struct buf *out, const char *channel, const char *payload)
{
    append(out, "event: ", 7);
    append(out, channel, strlen(channel));
    append(out, "\n", 1);
    for (const char *p = payload;;) {
        size_t len = strcspn(p, "\r\n");
        append(out, "data: ", 6);
        append(out, p, len);
        append(out, "\n", 1);
        p += len;
        if (*p == '\0')
            break;
        p += p[0] == '\r' && p[1] == '\n' ? 2 : 1;
    }
    append(out, "\n", 1);
}

/* Every channel is listened to: clients that were told so before hear `reconnected`. */
static void greet_all(struct path_ctx *pc)
{
    static const char listening[] = ": listening\n\n", reconnected[] = "event: reconnected\ndata: \n\n";
    for (h2o_linklist_t *node = pc->clients.next; node != &pc->clients;) {
        struct client *c = H2O_STRUCT_FROM_MEMBER(struct client, link, node);
        node = node->next;
        if (c->greeted)
            push(c, reconnected, sizeof(reconnected) - 1);
        else
            push(c, listening, sizeof(listening) - 1);
        c->greeted = 1;
    }
}

static void on_listen(h2o_db_listen_t *sub, h2o_db_listen_event_t ev, const char *channel, const char *payload, void *data)
{
    struct path_ctx *pc = data;
    size_t i = 0;
    while (pc->subs[i] != sub)
        ++i;
    switch (ev) {
    case H2O_DB_LISTEN_NOTIFY: {
        struct buf b = {NULL};
        format_event(&b, channel, payload);
        broadcast(pc, (ssize_t)i, b.base, b.len);
        free(b.base);
    } break;
    case H2O_DB_LISTEN_LOST:
        --pc->num_ready;
        break;
    case H2O_DB_LISTEN_READY:
    case H2O_DB_LISTEN_RECONNECTED:
        if (++pc->num_ready == pc->handler->args.num_channels)
            greet_all(pc);
        break;
    }
}

static void on_heartbeat(uv_timer_t *timer)
{
    static const char beat[] = ": heartbeat\n\n";
    broadcast(timer->data, -1, beat, sizeof(beat) - 1);
}

/* the server is stopping or reloading: end every stream */
static void on_shutdown_check(uv_prepare_t *prepare)
{
    struct path_ctx *pc = prepare->data;
    if (!pc->ctx->shutdown_requested)
        return;
    pc->stopping = 1;
    uv_prepare_stop(prepare);
    uv_timer_stop(&pc->heartbeat);
    for (h2o_linklist_t *node = pc->clients.next; node != &pc->clients;) {
        struct client *c = H2O_STRUCT_FROM_MEMBER(struct client, link, node);
        node = node->next; /* (flush may detach c) */
        c->ending = 1;
        flush(c);
    }
}

static void on_client_hangup(uv_poll_t *poll, int status, int events)
{
    struct client *c = poll->data;
    uv_poll_stop(poll);
    drop(c);
}

/* HTTP/1: watch a copy of the socket for the client's hang-up */
static void watch_hangup(struct client *c, uv_loop_t *loop)
{
    int fd = c->req->version < 0x200 ? socket_fd(c->req) : -1;
    if (fd < 0 || (fd = dup(fd)) < 0)
        return;
    uv_poll_t *poll = malloc(sizeof(*poll));
    if (poll == NULL || uv_poll_init(loop, poll, fd) != 0) {
        free(poll);
        close(fd);
        return;
    }
    poll->data = c;
    uv_poll_start(poll, UV_DISCONNECT, on_client_hangup);
    c->hangup = poll;
}

/* The value of ?channel=, URL-decoded into buf; 0 when absent, 1 when found, -1 when too long. */
static int channel_param(h2o_req_t *req, char *buf, size_t size)
{
    if (req->query_at == SIZE_MAX)
        return 0;
    const char *q = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    while (q < end) {
        const char *amp = memchr(q, '&', end - q), *stop = amp != NULL ? amp : end;
        if (stop - q >= 8 && memcmp(q, "channel=", 8) == 0) {
            size_t n = 0;
            for (const char *p = q + 8; p < stop; ++p) {
                int ch = *p;
                if (ch == '+') {
                    ch = ' ';
                } else if (ch == '%' && stop - p >= 3 && h2o_hex_decode((unsigned char *)&buf[n], p + 1, 2) == 0) {
                    ch = (unsigned char)buf[n];
                    p += 2;
                }
                if (n + 1 >= size)
                    return -1;
                buf[n++] = (char)ch;
            }
            buf[n] = '\0';
            return 1;
        }
        q = stop + 1;
    }
    return 0;
}

static void subscribe(struct path_ctx *pc)
{
    const h2o_db_listen_args_t *a = &pc->handler->args;
    pc->subs = calloc(a->num_channels, sizeof(*pc->subs));
    for (size_t i = 0; i < a->num_channels; ++i)
        pc->subs[i] = h2o_db_listen_bind(pc->thread, a->bind, a->channels[i], on_listen, pc);
    if (a->heartbeat_ms != 0)
        uv_timer_start(&pc->heartbeat, on_heartbeat, a->heartbeat_ms, a->heartbeat_ms);
}

static int on_req(h2o_handler_t *_self, h2o_req_t *req)
{
    struct sse_handler *self = (void *)_self;
    struct path_ctx *pc = h2o_context_get_handler_context(req->conn->ctx, &self->super);
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"))) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET"));
        h2o_send_error_generic(req, 405, "Method Not Allowed", "an event stream answers GET only\n", 0);
        return 0;
    }
    char name[H2O_DB_LISTEN_MAX_CHANNEL_LEN + 2];
    ssize_t channel = -1;
    int found = channel_param(req, name, sizeof(name));
    if (found != 0) {
        for (size_t i = 0; found == 1 && i < self->args.num_channels && channel < 0; ++i)
            if (strcmp(self->args.channels[i], name) == 0)
                channel = (ssize_t)i;
        if (channel < 0) {
            h2o_send_error_400(req, "Bad Request", "?channel= names none of this path's channels\n", 0);
            return 0;
        }
    }
    if (pc->stopping || pc->num_clients >= self->args.max_clients) {
        if (pc->subs != NULL)
            H2O_DB_INC(h2o_db_listen_stats_of(pc->subs[0])->refused);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("5"));
        h2o_send_error_503(req, "Service Unavailable", "too many event-stream clients\n", 0);
        return 0;
    }
    if (pc->subs == NULL)
        subscribe(pc);
    struct client *c = h2o_mem_alloc_pool(&req->pool, sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->super.proceed = on_proceed;
    c->super.stop = on_stop;
    c->pc = pc;
    c->req = req;
    c->channel = channel;
    h2o_linklist_insert(&pc->clients, &c->link);
    ++pc->num_clients;
    H2O_DB_INC(h2o_db_listen_stats_of(pc->subs[0])->clients);
    if (pc->num_clients == 1)
        uv_prepare_start(&pc->shutdown_check, on_shutdown_check);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-cache"));
    h2o_start_response(req, &c->super);
    watch_hangup(c, pc->ctx->loop);
    if (pc->num_ready == self->args.num_channels) {
        c->greeted = 1;
        push(c, H2O_STRLIT(": listening\n\n"));
    } else {
        /* the headers now (an empty send would not carry them through libh2o's filters), and
         * `: listening` once the LISTEN is in effect */
        push(c, H2O_STRLIT(": connecting\n\n"));
    }
    return 0;
}

static void on_context_init(h2o_handler_t *_self, h2o_context_t *ctx)
{
    struct sse_handler *self = (void *)_self;
    struct path_ctx *pc = calloc(1, sizeof(*pc));
    pc->handler = self;
    pc->ctx = ctx;
    pc->thread = h2o_db_thread_init(ctx);
    h2o_linklist_init_anchor(&pc->clients);
    uv_timer_init(ctx->loop, &pc->heartbeat);
    pc->heartbeat.data = pc;
    uv_unref((uv_handle_t *)&pc->heartbeat);
    uv_prepare_init(ctx->loop, &pc->shutdown_check);
    pc->shutdown_check.data = pc;
    uv_unref((uv_handle_t *)&pc->shutdown_check);
    h2o_context_set_handler_context(ctx, &self->super, pc);
}

static void on_path_ctx_closed(uv_handle_t *handle)
{
    struct path_ctx *pc = handle->data;
    if (--pc->handles_open == 0)
        free(pc);
}

static void on_context_dispose(h2o_handler_t *_self, h2o_context_t *ctx)
{
    struct path_ctx *pc = h2o_context_get_handler_context(ctx, _self);
    /* (clients are left only when the shutdown timeout cut connections: forget them) */
    while (!h2o_linklist_is_empty(&pc->clients))
        detach(H2O_STRUCT_FROM_MEMBER(struct client, link, pc->clients.next));
    if (pc->subs != NULL)
        for (size_t i = 0; i < pc->handler->args.num_channels; ++i)
            h2o_db_unlisten(pc->subs[i]);
    free(pc->subs);
    pc->handles_open = 2;
    uv_close((uv_handle_t *)&pc->heartbeat, on_path_ctx_closed);
    uv_close((uv_handle_t *)&pc->shutdown_check, on_path_ctx_closed);
}

static void on_dispose(h2o_handler_t *_self)
{
    struct sse_handler *self = (void *)_self;
    for (size_t i = 0; i < self->args.num_channels; ++i)
        free((char *)self->args.channels[i]);
    free((void *)self->args.channels);
}

void h2o_db_listen_register(h2o_pathconf_t *pathconf, const h2o_db_listen_args_t *args)
{
    struct sse_handler *self = (void *)h2o_create_handler(pathconf, sizeof(*self));
    self->super.on_req = on_req;
    self->super.on_context_init = on_context_init;
    self->super.on_context_dispose = on_context_dispose;
    self->super.dispose = on_dispose;
    self->args = *args;
    char **channels = malloc(sizeof(*channels) * args->num_channels);
    for (size_t i = 0; i < args->num_channels; ++i)
        channels[i] = strdup(args->channels[i]);
    self->args.channels = (const char *const *)channels;
}
