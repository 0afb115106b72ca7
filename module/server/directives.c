/*
 * The directives of the standalone server that libh2o does not provide:
 * listen, num-threads, error-log, pid-file, shutdown-timeout. They fill
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

static int parse_port(h2o_configurator_command_t *cmd, yoml_t *node, const char *s, uint16_t *port)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 65535) {
        h2o_configurator_errprintf(cmd, node, "port must be a number between 1 and 65535, not `%s`", s);
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

static int add_listen(h2o_configurator_command_t *cmd, yoml_t *node, const char *host, uint16_t port)
{
    h2o_db_server_t *server = server_of(cmd);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (host == NULL)
        hints.ai_family = AF_INET; /* `listen: PORT` binds 0.0.0.0, as h2o does */
    int err = getaddrinfo(host, portstr, &hints, &res);
    if (err != 0) {
        h2o_configurator_errprintf(cmd, node, "cannot resolve host `%s`: %s", host, gai_strerror(err));
        return -1;
    }
    h2o_vector_reserve(NULL, &server->listens, server->listens.size + 1);
    h2o_db_listen_t *l = server->listens.entries + server->listens.size++;
    memset(l, 0, sizeof(*l));
    memcpy(&l->addr, res->ai_addr, res->ai_addrlen);
    l->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    char buf[300];
    snprintf(buf, sizeof(buf), "%s%s%s:%u", host != NULL && strchr(host, ':') != NULL ? "[" : "", host != NULL ? host : "0.0.0.0",
             host != NULL && strchr(host, ':') != NULL ? "]" : "", port);
    l->display = strdup(buf);
    l->filename = strdup(node->filename != NULL ? node->filename : "-");
    l->line = node->line;
    l->column = node->column;
    return 0;
}

static int on_listen_one(h2o_configurator_command_t *cmd, yoml_t *node)
{
    uint16_t port;
    switch (node->type) {
    case YOML_TYPE_SCALAR: {
        /* PORT or HOST:PORT */
        const char *s = node->data.scalar, *colon = strrchr(s, ':');
        if (colon == NULL)
            return parse_port(cmd, node, s, &port) == 0 ? add_listen(cmd, node, NULL, port) : -1;
        char *host = strndup(s, colon - s);
        if (host[0] == '[' && host[strlen(host) - 1] == ']') {
            memmove(host, host + 1, strlen(host));
            host[strlen(host) - 1] = '\0';
        }
        int ret = parse_port(cmd, node, colon + 1, &port) == 0 ? add_listen(cmd, node, host, port) : -1;
        free(host);
        return ret;
    }
    case YOML_TYPE_MAPPING: {
        yoml_t *host = NULL, *port_node = NULL;
        for (size_t i = 0; i < node->data.mapping.size; ++i) {
            yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
            if (k->type != YOML_TYPE_SCALAR)
                goto Unknown;
            if (strcmp(k->data.scalar, "host") == 0) {
                host = v;
            } else if (strcmp(k->data.scalar, "port") == 0) {
                port_node = v;
            } else if (strcmp(k->data.scalar, "ssl") == 0) {
                h2o_configurator_errprintf(cmd, k, "TLS is not built into h2o-db; terminate TLS in front of it");
                return -1;
            } else {
            Unknown:
                h2o_configurator_errprintf(cmd, k, "unknown attribute (listen takes `host` and `port`)");
                return -1;
            }
        }
        if (port_node == NULL) {
            h2o_configurator_errprintf(cmd, node, "mandatory attribute `port` is missing");
            return -1;
        }
        if (port_node->type != YOML_TYPE_SCALAR || (host != NULL && host->type != YOML_TYPE_SCALAR)) {
            h2o_configurator_errprintf(cmd, port_node->type != YOML_TYPE_SCALAR ? port_node : host, "must be a scalar");
            return -1;
        }
        if (parse_port(cmd, port_node, port_node->data.scalar, &port) != 0)
            return -1;
        return add_listen(cmd, node, host != NULL ? host->data.scalar : NULL, port);
    }
    default:
        h2o_configurator_errprintf(cmd, node, "expected a port, HOST:PORT, or a mapping with `host` and `port`");
        return -1;
    }
}

static int on_listen(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    if (node->type != YOML_TYPE_SEQUENCE)
        return on_listen_one(cmd, node);
    for (size_t i = 0; i < node->data.sequence.size; ++i)
        if (on_listen_one(cmd, node->data.sequence.elements[i]) != 0)
            return -1;
    return 0;
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

static int on_error_log(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    return on_path_directive(cmd, node, &server_of(cmd)->error_log);
}

static int on_pid_file(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    return on_path_directive(cmd, node, &server_of(cmd)->pid_file);
}

void h2o_db_server_register_configurator(h2o_db_server_t *server)
{
    struct server_configurator *c = (void *)h2o_configurator_create(&server->globalconf, sizeof(*c));
    c->server = server;
    h2o_configurator_define_command(&c->super, "listen", H2O_CONFIGURATOR_FLAG_GLOBAL, on_listen);
    h2o_configurator_define_command(&c->super, "num-threads", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_num_threads);
    h2o_configurator_define_command(&c->super, "shutdown-timeout",
                                    H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR, on_shutdown_timeout);
    h2o_configurator_define_command(&c->super, "error-log", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_error_log);
    h2o_configurator_define_command(&c->super, "pid-file", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_pid_file);
}
