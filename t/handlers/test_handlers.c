/*
 * c.handler objects for the server tests. Built against include/h2o_db.h alone,
 * with no -l flags: every h2o_* symbol comes from the h2o-db executable.
 */
#include <stdio.h>
#include "h2o_db.h"

static int respond(h2o_req_t *req, int status, const char *body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : "Error";
    req->res.content_length = strlen(body);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain"));
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_strdup(&req->pool, body, SIZE_MAX);
    h2o_send(req, &buf, 1, 1);
    return 0;
}

int hello(h2o_handler_t *self, h2o_req_t *req)
{
    return respond(req, 200, "hello from c.handler\n");
}

/* Declines after leaving a header: the next handler in the chain answers with it. */
int decline(h2o_handler_t *self, h2o_req_t *req)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-declined-by"), 0, NULL, H2O_STRLIT("c.handler"));
    return -1;
}

/* Echoes the method, path and HTTP version. */
int echo(h2o_handler_t *self, h2o_req_t *req)
{
    char *buf = h2o_mem_alloc_pool(&req->pool, 512);
    snprintf(buf, 512, "%.*s %.*s HTTP/%d.%d\n", (int)req->method.len, req->method.base, (int)req->path.len, req->path.base,
             req->version >> 8, req->version & 0xff);
    return respond(req, 200, buf);
}

/* Answers after about a second (a request still in flight when SIGTERM arrives); says on stderr
 * (the server's log) that the request reached it, so that a test can wait for that. */
struct slow {
    h2o_timeout_entry_t timeout;
    h2o_req_t *req;
};

static void slow_done(h2o_timeout_entry_t *entry)
{
    struct slow *s = H2O_STRUCT_FROM_MEMBER(struct slow, timeout, entry);
    respond(s->req, 200, "slow response done\n");
}

static void slow_dispose(void *p)
{
    struct slow *s = p;
    if (h2o_timeout_is_linked(&s->timeout))
        h2o_timeout_unlink(&s->timeout);
}

int slow(h2o_handler_t *self, h2o_req_t *req)
{
    fprintf(stderr, "test_handlers: slow: the request is in the handler\n");
    struct slow *s = h2o_mem_alloc_shared(&req->pool, sizeof(*s), slow_dispose);
    *s = (struct slow){{0}, req};
    s->timeout.cb = slow_done;
    h2o_timeout_link(req->conn->ctx->loop, &req->conn->ctx->one_sec_timeout, &s->timeout);
    return 0;
}

/* The optional per-thread hook: counts the contexts it was called for. */
static int contexts_seen;
void hello_on_context_init(h2o_handler_t *self, h2o_context_t *ctx)
{
    __atomic_add_fetch(&contexts_seen, 1, __ATOMIC_RELAXED);
}

int contexts(h2o_handler_t *self, h2o_req_t *req)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%d\n", __atomic_load_n(&contexts_seen, __ATOMIC_RELAXED));
    return respond(req, 200, buf);
}

/* Which worker thread served the request: its context's address. */
int context_id(h2o_handler_t *self, h2o_req_t *req)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%p\n", (void *)req->conn->ctx);
    return respond(req, 200, buf);
}
