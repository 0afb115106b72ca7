/*
 * A libh2o server of one's own that embeds h2o-db (docs/embedding.md): one thread, one libuv
 * loop, one listener on 127.0.0.1:PORT, its config read with the library's YAML loader and
 * applied by libh2o's configurator. It adds one directive of its own:
 *
 *     embed.query: SQL     (path level) answers the rows of SQL, run on the path's sa_main
 *                          session, as JSON; database failures as h2o_db_send_error() answers
 *
 *   ./build/demo/embed demo/embed.conf [PORT]     PORT: else $H2O_DB_EMBED_PORT, else 8081
 *   curl http://127.0.0.1:8081/greetings
 *
 * Built against the installed headers and the library alone (pkg-config h2o-db; in this tree,
 * meson's h2o_db_dep). SIGTERM or SIGINT: stops accepting, lets the open connections finish
 * (at most DRAIN_TIMEOUT_MS), disposes of the context (which closes the database pools), exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "h2o.h"
#include "h2o/configurator.h"
#include "h2o_db.h"

#define DRAIN_TIMEOUT_MS 5000
#define CLOSE_TIMEOUT_MS 5000

/* ---- the embedder's own handler: embed.query ---- */

struct query_handler {
    h2o_handler_t super;
    char *sql;
};

static void on_rows(h2o_db_result_t *r, void *data)
{
    static h2o_generator_t generator = {NULL, NULL};
    h2o_req_t *req = data;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        h2o_db_send_error(req, r); /* 503 + Retry-After, 504, 500: never the SQL */
        return;
    }
    h2o_iovec_t json = h2o_db_result_json(&req->pool, r); /* copied into the request's pool */
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = json.len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_start_response(req, &generator);
    h2o_send(req, &json, 1, 1);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct query_handler *h = (struct query_handler *)self;
    h2o_db_session_t *db = h2o_db_session(req, NULL); /* sa_main, if attached at this path */
    if (db == NULL)
        return -1;
    /* the callback runs later, exactly once: the request is answered from there */
    return h2o_db_query(db, h->sql, 0, NULL, on_rows, req) == 0 ? 0 : -1;
}

static int on_config_query(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    struct query_handler *h = (struct query_handler *)h2o_create_handler(ctx->pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->sql = h2o_strdup(NULL, node->data.scalar, SIZE_MAX).base; /* the tree is freed after apply */
    return 0;
}

static void register_configurators(h2o_globalconf_t *conf)
{
    h2o_configurator_t *c = h2o_configurator_create(conf, sizeof(*c));
    h2o_configurator_define_command(c, "embed.query", H2O_CONFIGURATOR_FLAG_PATH | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_config_query);
    h2o_db_register_configurator(conf); /* the db.* directives */
}

/* ---- the server: one thread, one loop, one listener ---- */

/* Static: libh2o 2.2.5's h2o_config_dispose() does not free all it allocated, so the config lives
 * until exit, as in h2o-db. */
static h2o_globalconf_t config;
static uv_loop_t loop;
static h2o_context_t ctx;
static h2o_accept_ctx_t accept_ctx;
static uv_tcp_t listener;
static uv_signal_t sigterm, sigint;
static uv_timer_t drain_timer;
static size_t num_clients;
static int stopping, forced;

static void on_client_close(uv_handle_t *handle)
{
    free(handle);
    if (--num_clients == 0 && stopping)
        uv_stop(&loop);
}

static void on_accept(uv_stream_t *server, int status)
{
    if (status != 0)
        return;
    uv_tcp_t *conn = malloc(sizeof(*conn));
    if (conn == NULL)
        return;
    uv_tcp_init(&loop, conn);
    if (uv_accept(server, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, (uv_close_cb)free);
        return;
    }
    ++num_clients;
    h2o_accept(&accept_ctx, h2o_uv_socket_create((uv_stream_t *)conn, on_client_close));
}

static void on_drain_timeout(uv_timer_t *timer)
{
    fprintf(stderr, "embed: %zu connection(s) still open after %d ms; exiting without disposing of them\n", num_clients,
            DRAIN_TIMEOUT_MS);
    forced = 1;
    uv_stop(&loop);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    if (stopping)
        return;
    stopping = 1;
    fprintf(stderr, "embed: received %s, shutting down\n", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    uv_close((uv_handle_t *)&listener, NULL);
    h2o_context_request_shutdown(&ctx); /* GOAWAY on HTTP/2, no more keep-alive on HTTP/1 */
    if (num_clients == 0)
        uv_stop(&loop);
    else
        uv_timer_start(&drain_timer, on_drain_timeout, DRAIN_TIMEOUT_MS, 0);
}

static void close_handle(uv_handle_t *handle, void *arg)
{
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

static void on_close_timeout(uv_timer_t *timer)
{
    fprintf(stderr, "embed: some database connections did not close in time; leaving them\n");
    uv_walk(&loop, close_handle, NULL);
}

/* After the last connection: the context goes (its dispose hooks close the module's pools on this
 * thread), then the loop runs until their connections are closed (SQLite's threads answer through
 * async handles), within a bound. */
static void dispose(void)
{
    /* libh2o 2.2.5 leaves its HTTP/2 GOAWAY resend timer linked, which h2o_context_dispose()
     * asserts against */
    if (h2o_timeout_is_linked(&ctx.http2._graceful_shutdown_timeout))
        h2o_timeout_unlink(&ctx.http2._graceful_shutdown_timeout);
    h2o_context_dispose(&ctx);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&drain_timer, NULL);
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    uv_timer_start(&guard, on_close_timeout, CLOSE_TIMEOUT_MS, 0);
    uv_unref((uv_handle_t *)&guard);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_walk(&loop, close_handle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

static int listen_on(int port)
{
    struct sockaddr_in addr;
    int err;
    uv_tcp_init(&loop, &listener);
    if ((err = uv_ip4_addr("127.0.0.1", port, &addr)) != 0 || (err = uv_tcp_bind(&listener, (struct sockaddr *)&addr, 0)) != 0 ||
        (err = uv_listen((uv_stream_t *)&listener, 128, on_accept)) != 0) {
        fprintf(stderr, "embed: cannot listen on 127.0.0.1:%d: %s\n", port, uv_strerror(err));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *port_arg = argc > 2 ? argv[2] : getenv("H2O_DB_EMBED_PORT");
    int port = port_arg != NULL ? atoi(port_arg) : 8081;
    if (argc < 2 || argc > 3 || port <= 0 || port > 65535) {
        fprintf(stderr, "usage: embed CONFIG [PORT]   (PORT: else $H2O_DB_EMBED_PORT, else 8081)\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    /* main thread: the config, then the module's start-up work (blocking is fine here) */
    h2o_config_init(&config);
    register_configurators(&config);
    char err[1024];
    yoml_t *root = h2o_db_yaml_load_file(argv[1], err, sizeof(err));
    if (root == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int applied = h2o_configurator_apply(&config, root, 0);
    yoml_free(root, NULL);
    if (applied != 0 || h2o_db_prepare(&config) != 0)
        return 1;

    /* the serving thread (this one): its loop and its context; h2o_context_init() runs the
     * handlers' on_context_init, which makes the module's state for this thread */
    uv_loop_init(&loop);
    h2o_context_init(&ctx, &loop, &config);
    accept_ctx.ctx = &ctx;
    accept_ctx.hosts = config.hosts;
    uv_timer_init(&loop, &drain_timer);
    uv_signal_init(&loop, &sigterm);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_init(&loop, &sigint);
    uv_signal_start(&sigint, on_signal, SIGINT);
    if (listen_on(port) != 0)
        return 1;
    fprintf(stderr, "embed: h2o-db %s on libh2o %s, serving %s on http://127.0.0.1:%d/\n", h2o_db_version(), H2O_VERSION, argv[1],
            port);

    uv_run(&loop, UV_RUN_DEFAULT);

    if (forced)
        return 0;
    dispose();
    fprintf(stderr, "embed: stopped\n");
    return 0;
}
