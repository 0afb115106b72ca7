/*
 * db.listen (path level): YAML in, h2o_db_listen_args_t out (the runtime is module/listen/).
 *   db.listen: {channels: [orders, stock], key: sa_main, heartbeat: 15, max-clients: 10000,
 *               max-backlog: 262144}
 * Deferred, so that a db.bind of the same path is read first.
 */
#include <string.h>
#include "config/config.h"
#include "config/util.h"
#include "listen/listen.h"

static int add_channel(h2o_configurator_command_t *cmd, yoml_t *node, const char **names, size_t *n)
{
    if (node->type != YOML_TYPE_SCALAR || !h2o_db_listen_channel_valid(node->data.scalar)) {
        h2o_db_config_error(cmd, node, "channels: a channel is a name of 1 to %d characters without control characters",
                            H2O_DB_LISTEN_MAX_CHANNEL_LEN);
        return -1;
    }
    for (size_t i = 0; i < *n; ++i) {
        if (strcmp(names[i], node->data.scalar) == 0) {
            h2o_db_config_error(cmd, node, "channels: `%s` is listed twice", node->data.scalar);
            return -1;
        }
    }
    names[(*n)++] = node->data.scalar;
    return 0;
}

static int read_channels(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_listen_args_t *args, const char ***names)
{
    size_t max = node->type == YOML_TYPE_SEQUENCE ? node->data.sequence.size : 1;
    *names = h2o_mem_alloc(sizeof(**names) * (max + 1));
    if (node->type == YOML_TYPE_SEQUENCE) {
        for (size_t i = 0; i < node->data.sequence.size; ++i)
            if (add_channel(cmd, node->data.sequence.elements[i], *names, &args->num_channels) != 0)
                return -1;
    } else if (add_channel(cmd, node, *names, &args->num_channels) != 0) {
        return -1;
    }
    if (args->num_channels == 0) {
        h2o_db_config_error(cmd, node, "channels: name at least one channel, e.g. `channels: [orders]`");
        return -1;
    }
    args->channels = *names;
    return 0;
}

static int read_option(h2o_configurator_command_t *cmd, const char *name, yoml_t *value, h2o_db_listen_args_t *args,
                       const char **key, const char ***names)
{
    double v;
    if (strcmp(name, "channels") == 0)
        return read_channels(cmd, value, args, names);
    if (strcmp(name, "key") == 0) {
        if (value->type != YOML_TYPE_SCALAR || value->data.scalar[0] == '\0') {
            h2o_db_config_error(cmd, value, "key must be the key of a db.bind, e.g. `key: sa_main`");
            return -1;
        }
        *key = value->data.scalar;
        return 0;
    }
    if (strcmp(name, "heartbeat") == 0) {
        if (h2o_db_config_number(cmd, value, "heartbeat (seconds; 0 = none)", 0, 3600, &v) != 0)
            return -1;
        args->heartbeat_ms = (uint64_t)(v * 1000);
        return 0;
    }
    if (strcmp(name, "max-clients") == 0) {
        if (h2o_db_config_number(cmd, value, "max-clients (per thread)", 1, 1000000, &v) != 0)
            return -1;
        args->max_clients = (size_t)v;
        return 0;
    }
    if (strcmp(name, "max-backlog") == 0) {
        if (h2o_db_config_number(cmd, value, "max-backlog (bytes)", 16384, 1 << 30, &v) != 0)
            return -1;
        args->max_backlog = (size_t)v;
        return 0;
    }
    h2o_db_config_error(cmd, value, "unknown option `%s` (channels, key, heartbeat, max-clients, max-backlog)", name);
    return -1;
}

static int on_db_listen(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    h2o_db_listen_args_t args = {.heartbeat_ms = H2O_DB_LISTEN_DEFAULT_HEARTBEAT_MS,
                                 .max_clients = H2O_DB_LISTEN_DEFAULT_MAX_CLIENTS,
                                 .max_backlog = H2O_DB_LISTEN_DEFAULT_MAX_BACKLOG};
    const char *key = H2O_DB_DEFAULT_KEY, **names = NULL;
    yoml_t *channels = NULL;
    int ret = -1;
    if (h2o_db_config_unique_keys(cmd, node) != 0)
        return -1;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        if (k->type != YOML_TYPE_SCALAR) {
            h2o_db_config_error(cmd, k, "an option's name must be a scalar");
            goto Exit;
        }
        if (strcmp(k->data.scalar, "channels") == 0)
            channels = v;
        if (read_option(cmd, k->data.scalar, v, &args, &key, &names) != 0)
            goto Exit;
    }
    if (channels == NULL) {
        h2o_db_config_error(cmd, node, "channels is required, e.g. `db.listen: {channels: [orders]}`");
        goto Exit;
    }
    if ((args.bind = h2o_db_config_visible(ctx->globalconf, key)) == NULL) {
        h2o_db_config_error(cmd, node, "no db.bind with key `%s` in this scope (bind it globally, on the host or on the path)",
                            key);
        goto Exit;
    }
    if (args.bind->url.backend != H2O_DB_BACKEND_POSTGRES) {
        h2o_db_config_error(cmd, node, "`%s` (%s:%zu) is not PostgreSQL: LISTEN/NOTIFY needs a postgresql:// bind", key,
                            args.bind->filename, args.bind->line + 1);
        goto Exit;
    }
    h2o_db_listen_register(ctx->pathconf, &args);
    ret = 0;
Exit:
    free(names);
    return ret;
}

void h2o_db_listen_register_directive(h2o_globalconf_t *conf)
{
    h2o_configurator_t *c = h2o_configurator_create(conf, sizeof(*c));
    h2o_configurator_define_command(
        c, "db.listen", H2O_CONFIGURATOR_FLAG_PATH | H2O_CONFIGURATOR_FLAG_DEFERRED | H2O_CONFIGURATOR_FLAG_EXPECT_MAPPING,
        on_db_listen);
}
