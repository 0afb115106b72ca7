/*
 * Reading a config into a server: every configurator h2o-db registers (its own, libh2o's in
 * h2o's order, c.handler, mruby, db.*) on a new globalconf, then the YAML applied to it. Used
 * at start, by `-t`, by SIGHUP (reload.c) and by the config fuzzer. Main thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include "h2o_db.h"
#ifdef H2O_DB_WITH_MRUBY
#include "mruby/mruby.h"
#endif
#include "server/server.h"
#include "server/yaml.h"

#ifndef H2O_DB_WITH_MRUBY
/* Built without mruby (meson -Dmruby=disabled, or no libmruby-dev): its directives are known,
 * and refused with what to do, rather than being "unknown". */
static int on_config_no_mruby(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    h2o_configurator_errprintf(cmd, node, "this h2o-db was built without mruby (install libmruby-dev and rebuild)");
    return -1;
}

static void h2o_db_mruby_register_configurator(h2o_globalconf_t *conf)
{
    h2o_configurator_t *c = h2o_configurator_create(conf, sizeof(*c));
    h2o_configurator_define_command(c, "mruby.handler", H2O_CONFIGURATOR_FLAG_PATH, on_config_no_mruby);
    h2o_configurator_define_command(c, "mruby.handler-file", H2O_CONFIGURATOR_FLAG_PATH, on_config_no_mruby);
}
#endif

void h2o_db_server_register_configurators(h2o_db_server_t *server)
{
    h2o_globalconf_t *conf = &server->globalconf;
    h2o_db_server_register_configurator(server);
    /* in h2o's order: filters run in the order they are registered (throttle-response before the
     * header filters, so that a header.add'ed X-Traffic throttles) */
    h2o_access_log_register_configurator(conf);
    h2o_compress_register_configurator(conf);
    h2o_expires_register_configurator(conf);
    h2o_errordoc_register_configurator(conf);
    h2o_fastcgi_register_configurator(conf);
    h2o_file_register_configurator(conf);
    h2o_throttle_resp_register_configurator(conf);
    h2o_headers_register_configurator(conf);
    h2o_proxy_register_configurator(conf);
    h2o_reproxy_register_configurator(conf);
    h2o_redirect_register_configurator(conf);
    h2o_status_register_configurator(conf);
    h2o_http2_debug_state_register_configurator(conf);
    h2o_db_c_handler_register_configurator(conf);
    h2o_db_mruby_register_configurator(conf);
    h2o_db_register_configurator(conf);
}

/* The status page's "main" section, as h2o's: version, times, connections, listeners, threads. */
static h2o_iovec_t on_main_status(void *unused, h2o_globalconf_t *conf, h2o_req_t *req)
{
    h2o_db_server_t *server = H2O_STRUCT_FROM_MEMBER(h2o_db_server_t, globalconf, conf);
    char now_str[H2O_TIMESTR_LOG_LEN + 1], launch_str[H2O_TIMESTR_LOG_LEN + 1];
    time_t now = time(NULL);
    h2o_time2str_log(now_str, now);
    h2o_time2str_log(launch_str, server->launch_time);
    size_t cap = 1024;
    h2o_iovec_t ret = {h2o_mem_alloc_pool(&req->pool, cap), 0};
    ret.len = snprintf(ret.base, cap,
                       ",\n \"server-version\": \"h2o-db %s (libh2o %s)\",\n \"openssl-version\": \"%s\",\n"
                       " \"current-time\": \"%s\",\n \"restart-time\": \"%s\",\n \"uptime\": %lld,\n \"generation\": null,\n"
                       " \"connections\": %u,\n \"max-connections\": %u,\n \"listeners\": %zu,\n \"worker-threads\": %u,\n"
                       " \"num-sessions\": %lu",
                       H2O_DB_VERSION, H2O_VERSION, OpenSSL_version(OPENSSL_VERSION), now_str, launch_str,
                       (long long)(now - server->launch_time), __atomic_load_n(&server->num_connections, __ATOMIC_RELAXED),
                       server->max_connections, server->listens.size, server->num_threads,
                       __atomic_load_n(&server->num_sessions, __ATOMIC_RELAXED));
    if (ret.len >= cap)
        ret.len = cap - 1;
    return ret;
}

h2o_db_server_t *h2o_db_server_load(const char *config_path, int test_mode)
{
    char err[1024];
    yoml_t *root = h2o_db_yaml_load_file(config_path, err, sizeof(err));
    if (root == NULL) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    h2o_db_server_t *server = calloc(1, sizeof(*server));
    server->config_path = config_path;
    server->shutdown_timeout_ms = H2O_DB_SHUTDOWN_TIMEOUT_MS;
    server->max_connections = H2O_DB_MAX_CONNECTIONS;
    server->tfo_queues = H2O_DB_TCP_FASTOPEN_QUEUE;
    server->ssl_resumption = H2O_DB_SSL_RESUME_CACHE | H2O_DB_SSL_RESUME_TICKET;
    server->launch_time = time(NULL);
    h2o_config_init(&server->globalconf);
    h2o_db_server_register_configurators(server);
    h2o_config_register_simple_status_handler(&server->globalconf, (h2o_iovec_t){H2O_STRLIT("main")}, on_main_status);

    int ok = h2o_configurator_apply(&server->globalconf, root, test_mode) == 0;
    if (ok && server->listens.size == 0 && !test_mode) {
        fprintf(stderr, "%s:1:1: mandatory configuration directive `listen` is missing\n", config_path);
        ok = 0;
    }
    yoml_free(root, NULL);
    if (!ok) {
        h2o_db_server_retire(server);
        return NULL;
    }
    if (server->num_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        server->num_threads = n > 0 ? (unsigned)n : 1;
    }
    return server;
}
