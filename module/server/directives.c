/*
 * The directives of the standalone server that libh2o does not provide (listen
 * is in listen.c): num-threads, error-log, pid-file, shutdown-timeout, and the
 * rest of h2o.conf 2.2.5's top level — user, max-connections, tcp-fastopen,
 * ssl-session-resumption, temp-buffer-path, num-name-resolution-threads, and,
 * accepted without effect, crash-handler and num-ocsp-updaters. They fill
 * h2o_db_server_t; nothing listens until the whole config has been applied.
 *
 * This file also replaces libh2o's h2o_configurator_errprintf (every libh2o
 * configurator calls it through the PLT) so that every config error, ours and
 * libh2o's, names file:line:column.
 */
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/util.h"
#include "server/server.h"

struct server_configurator {
    h2o_configurator_t super;
    h2o_db_server_t *server;
};

void h2o_configurator_errprintf(h2o_configurator_command_t *cmd, yoml_t *node, const char *reason, ...)
{
    va_list args;
    if (node != NULL)
        fprintf(stderr, "%s:%zu:%zu: ", node->filename != NULL ? node->filename : "-", node->line + 1, node->column + 1);
    else
        fprintf(stderr, "h2o-db: ");
    if (cmd != NULL)
        fprintf(stderr, "in command %s, ", cmd->name);
    va_start(args, reason);
    vfprintf(stderr, reason, args);
    va_end(args);
    fputc('\n', stderr);
}

static h2o_db_server_t *server_of(h2o_configurator_command_t *cmd)
{
    return ((struct server_configurator *)cmd->configurator)->server;
}

static int on_num_threads(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    double v;
    if (h2o_db_config_number(cmd, node, "num-threads", 1, 1024, &v) != 0)
        return -1;
    if (v != (unsigned)v) {
        h2o_configurator_errprintf(cmd, node, "num-threads must be a whole number");
        return -1;
    }
    server_of(cmd)->num_threads = (unsigned)v;
    return 0;
}

static int on_shutdown_timeout(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    double v;
    if (h2o_db_config_number(cmd, node, "shutdown-timeout", 0, 3600, &v) != 0)
        return -1;
    server_of(cmd)->shutdown_timeout_ms = (uint64_t)(v * 1000);
    return 0;
}

static int on_path_directive(h2o_configurator_command_t *cmd, yoml_t *node, char **slot)
{
    if (node->data.scalar[0] == '\0') {
        h2o_configurator_errprintf(cmd, node, "the path cannot be empty");
        return -1;
    }
    free(*slot);
    *slot = h2o_db_config_path(node, node->data.scalar);
    return 0;
}

/* error-log: FILE, or `| COMMAND` (as h2o: the log is piped to the command's standard input) */
static int on_error_log(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    if (node->data.scalar[0] != '|')
        return on_path_directive(cmd, node, &server_of(cmd)->error_log);
    free(server_of(cmd)->error_log);
    server_of(cmd)->error_log = strdup(node->data.scalar);
    return 0;
}

static int on_pid_file(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    return on_path_directive(cmd, node, &server_of(cmd)->pid_file);
}

static int whole_number(h2o_configurator_command_t *cmd, yoml_t *node, const char *name, double min, double max, double *v)
{
    if (h2o_db_config_number(cmd, node, name, min, max, v) != 0)
        return -1;
    if (*v != (long)*v) {
        h2o_configurator_errprintf(cmd, node, "%s must be a whole number", name);
        return -1;
    }
    return 0;
}

static int on_user(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    free(server_of(cmd)->user);
    server_of(cmd)->user = strdup(node->data.scalar);
    return 0;
}

static int on_max_connections(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    double v;
    if (whole_number(cmd, node, "max-connections", 1, 1e9, &v) != 0)
        return -1;
    server_of(cmd)->max_connections = (unsigned)v;
    return 0;
}

static int on_tcp_fastopen(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    double v;
    if (whole_number(cmd, node, "tcp-fastopen", 0, 1e9, &v) != 0)
        return -1;
    server_of(cmd)->tfo_queues = (int)v;
    return 0;
}

static int on_num_name_resolution_threads(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    double v;
    if (whole_number(cmd, node, "num-name-resolution-threads", 1, 1024, &v) != 0)
        return -1;
    h2o_hostinfo_max_threads = (size_t)v;
    return 0;
}

static int on_temp_buffer_path(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    char *tmpl;
    if (asprintf(&tmpl, "%s/h2o.b.XXXXXX", node->data.scalar) < 0)
        return -1;
    if (strlen(tmpl) >= sizeof(h2o_socket_buffer_mmap_settings.fn_template)) {
        h2o_configurator_errprintf(cmd, node, "the path is too long");
        free(tmpl);
        return -1;
    }
    strcpy(h2o_socket_buffer_mmap_settings.fn_template, tmpl);
    free(tmpl);
    return 0;
}

/* ssl-session-resumption's `memcached: {host: H, port: P, protocol: BINARY|ASCII}` */
static int read_memcached(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_server_t *server)
{
    if (node->type != YOML_TYPE_MAPPING) {
        h2o_configurator_errprintf(cmd, node, "`memcached` must be a mapping (host, port, protocol)");
        return -1;
    }
    server->memcached.port = 11211;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = k->type == YOML_TYPE_SCALAR ? k->data.scalar : "",
                   *value = v->type == YOML_TYPE_SCALAR ? v->data.scalar : "";
        double port;
        if (strcmp(name, "host") == 0 && value[0] != '\0') {
            free(server->memcached.host);
            server->memcached.host = strdup(value);
        } else if (strcmp(name, "port") == 0) {
            if (whole_number(cmd, v, "port", 1, 65535, &port) != 0)
                return -1;
            server->memcached.port = (uint16_t)port;
        } else if (strcmp(name, "protocol") == 0 && (strcasecmp(value, "BINARY") == 0 || strcasecmp(value, "ASCII") == 0)) {
            server->memcached.text_protocol = strcasecmp(value, "ASCII") == 0;
        } else {
            h2o_configurator_errprintf(cmd, k, "memcached takes host, port and protocol (BINARY or ASCII)");
            return -1;
        }
    }
    if (server->memcached.host == NULL) {
        h2o_configurator_errprintf(cmd, node, "mandatory attribute `host` is missing");
        return -1;
    }
    return 0;
}

/* ssl-session-resumption: {mode: all|cache|ticket|off, lifetime: SECONDS, cache-store:
 * internal|memcached, memcached: {...}, cache-memcached-prefix: P}: the cache is OpenSSL's own in
 * the process (shared by the worker threads) or memcached (shared with other servers and across
 * restarts, through libh2o's asynchronous resumption); tickets use OpenSSL's keys, or with
 * `ticket-store: file` and `ticket-file: PATH` the keys of that file (tickets.c). */
static int on_ssl_session_resumption(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    static const char *const modes[] = {"off", "cache", "ticket", "all"};
    h2o_db_server_t *server = server_of(cmd);
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = k->type == YOML_TYPE_SCALAR ? k->data.scalar : "";
        const char *value = v->type == YOML_TYPE_SCALAR ? v->data.scalar : "";
        if (strcmp(name, "mode") == 0) {
            int m = 0;
            while (m < 4 && strcasecmp(value, modes[m]) != 0)
                ++m;
            if (m == 4) {
                h2o_configurator_errprintf(cmd, v, "mode must be all, cache, ticket or off");
                return -1;
            }
            server->ssl_resumption = m; /* the bits of H2O_DB_SSL_RESUME_CACHE and _TICKET */
        } else if (strcmp(name, "lifetime") == 0) {
            double secs;
            if (whole_number(cmd, v, "lifetime", 1, 86400 * 365, &secs) != 0)
                return -1;
            server->ssl_session_lifetime = (long)secs;
        } else if (strcmp(name, "cache-store") == 0 &&
                   (strcasecmp(value, "internal") == 0 || strcasecmp(value, "memcached") == 0)) {
            server->memcached.cache = strcasecmp(value, "memcached") == 0;
        } else if (strcmp(name, "memcached") == 0) {
            if (read_memcached(cmd, v, server) != 0)
                return -1;
        } else if (strcmp(name, "cache-memcached-prefix") == 0 && value[0] != '\0') {
            free(server->memcached.prefix);
            server->memcached.prefix = strdup(value);
        } else if (strcmp(name, "ticket-file") == 0 && value[0] != '\0') {
            char err[1024];
            h2o_db_tickets_free(server->tickets);
            if ((server->tickets = h2o_db_tickets_load(value, err, sizeof(err))) == NULL) {
                h2o_configurator_errprintf(cmd, v, "cannot read the ticket keys: %s", err);
                return -1;
            }
        } else if (strcmp(name, "cache-store") == 0 ||
                   (strcmp(name, "ticket-store") == 0 && strcasecmp(value, "internal") != 0 && strcasecmp(value, "file") != 0)) {
            h2o_configurator_errprintf(cmd, v, "%s",
                                       strcmp(name, "cache-store") == 0 ? "cache-store is internal or memcached"
                                                                        : "ticket-store is internal or file");
            return -1;
        } else if (strcmp(name, "ticket-store") != 0 && strcmp(name, "ticket-cipher") != 0 && strcmp(name, "ticket-hash") != 0 &&
                   strcmp(name, "cache-memcached-num-threads") != 0) {
            h2o_configurator_errprintf(cmd, k,
                                       "unknown attribute (ssl-session-resumption takes mode, lifetime, cache-store, memcached, "
                                       "ticket-store, ticket-file)");
            return -1;
        }
    }
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        if (k->type == YOML_TYPE_SCALAR && strcmp(k->data.scalar, "ticket-store") == 0 && v->type == YOML_TYPE_SCALAR &&
            strcasecmp(v->data.scalar, "file") == 0 && server->tickets == NULL) {
            h2o_configurator_errprintf(cmd, v, "ticket-store: file needs `ticket-file: PATH`");
            return -1;
        }
    }
    if (server->memcached.cache && server->memcached.host == NULL) {
        h2o_configurator_errprintf(cmd, node, "cache-store: memcached needs `memcached: {host: ..., port: ...}`");
        return -1;
    }
    return 0;
}

/* h2o.conf directives that mean nothing here, taken so that h2o's configs load as they are */
static int on_accepted(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    return 0;
}

void h2o_db_server_register_configurator(h2o_db_server_t *server)
{
    h2o_db_listen_register_configurator(server);
    struct server_configurator *c = (void *)h2o_configurator_create(&server->globalconf, sizeof(*c));
    c->server = server;
#define SCALAR (H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR)
    h2o_configurator_define_command(&c->super, "user", SCALAR, on_user);
    h2o_configurator_define_command(&c->super, "max-connections", SCALAR, on_max_connections);
    h2o_configurator_define_command(&c->super, "tcp-fastopen", SCALAR, on_tcp_fastopen);
    h2o_configurator_define_command(&c->super, "num-name-resolution-threads", SCALAR, on_num_name_resolution_threads);
    h2o_configurator_define_command(&c->super, "temp-buffer-path", SCALAR, on_temp_buffer_path);
    h2o_configurator_define_command(&c->super, "ssl-session-resumption",
                                    H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_MAPPING, on_ssl_session_resumption);
    h2o_configurator_define_command(&c->super, "crash-handler", SCALAR, on_accepted);
    h2o_configurator_define_command(&c->super, "crash-handler.wait-pipe-close", SCALAR, on_accepted);
    h2o_configurator_define_command(&c->super, "num-ocsp-updaters", SCALAR, on_accepted);
#undef SCALAR
    h2o_configurator_define_command(&c->super, "num-threads", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_num_threads);
    h2o_configurator_define_command(&c->super, "shutdown-timeout",
                                    H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR, on_shutdown_timeout);
    h2o_configurator_define_command(&c->super, "error-log", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_error_log);
    h2o_configurator_define_command(&c->super, "pid-file", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_pid_file);
}
