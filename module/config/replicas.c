/*
 * replicas: and replica: of a PostgreSQL db.bind (docs/replicas.md): YAML in, child binds out.
 *
 *   replicas: [postgresql://app@replica1/app, ...]   (or one URL)
 *   replica: {max-lag: 5, fallback: ON}
 *
 * Each replica becomes a bind of its own (a "child") with the primary's key, scope, pool options,
 * password and on-connect, so that every worker thread makes a pool for it as for any bind; one
 * more child, the primary's read-only pool, serves read-only sessions on the primary (fallback).
 * Every connection of a child is made read-only at connect
 * time (SET default_transaction_read_only = on, after the bind's own on-connect), so that a write
 * fails with SQLSTATE 25006 wherever a read-only session runs. The runtime is module/replica.c.
 */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/config.h"
#include "config/replicas.h"
#include "config/util.h"
#include "driver/driver.h"

#define DEFAULT_MAX_LAG_MS 5000
#define MAX_MAX_LAG_S      86400
#define READ_ONLY_SQL      "SET default_transaction_read_only = on"

/* A child of `primary` connecting through `url` (moved into the child), declared at `node`. */
static h2o_db_bind_t *new_child(h2o_db_bind_t *primary, h2o_db_url_t *url, yoml_t *node)
{
    h2o_db_bind_t *c = calloc(1, sizeof(*c));
    c->key = strdup(primary->key);
    c->url = *url;
    memset(url, 0, sizeof(*url));
    c->driver = primary->driver;
    c->pool = primary->pool;
    /* a replica that is down at start-up must not keep the server from serving */
    c->pool.connect_at_start = 0;
    c->middleware = 0;
    c->password = primary->password != NULL ? strdup(primary->password) : NULL;
    size_t len = (primary->on_connect != NULL ? strlen(primary->on_connect) : 0) + sizeof(READ_ONLY_SQL) + 4;
    c->on_connect = malloc(len);
    /* the bind's own first (a newline ends a trailing -- comment, `;` an unterminated statement) */
    if (primary->on_connect != NULL)
        snprintf(c->on_connect, len, "%s\n;" READ_ONLY_SQL, primary->on_connect);
    else
        snprintf(c->on_connect, len, READ_ONLY_SQL);
    c->scope = strdup(primary->scope);
    c->filename = strdup(node->filename != NULL ? node->filename : "-");
    c->line = node->line;
    c->column = node->column;
    c->primary = primary;
    return c;
}

static int add_replica(h2o_configurator_command_t *cmd, h2o_db_bind_t *bind, yoml_t *node)
{
    if (node->type != YOML_TYPE_SCALAR || node->data.scalar[0] == '\0') {
        h2o_configurator_errprintf(cmd, node, "each replica must be a URL, e.g. postgresql://app@replica1/app");
        return -1;
    }
    char err[1024], *config_file = strdup(node->filename != NULL ? node->filename : "./-");
    h2o_db_url_t url = {0};
    int ret = h2o_db_url_parse(node->data.scalar, dirname(config_file), bind->key, &url, err, sizeof(err));
    free(config_file);
    if (ret != 0) {
        h2o_configurator_errprintf(cmd, node, "replica: %s", err);
        return -1;
    }
    if (url.backend != H2O_DB_BACKEND_POSTGRES) {
        h2o_configurator_errprintf(cmd, node, "a replica of a PostgreSQL bind must be a PostgreSQL URL (postgresql://...), not %s",
                                   url.display);
        h2o_db_url_dispose(&url);
        return -1;
    }
    h2o_vector_reserve(NULL, &bind->replicas, bind->replicas.size + 1);
    bind->replicas.entries[bind->replicas.size++] = new_child(bind, &url, node);
    return 0;
}

static int parse_options(h2o_configurator_command_t *cmd, h2o_db_bind_t *bind, yoml_t *node)
{
    if (node->type != YOML_TYPE_MAPPING) {
        h2o_configurator_errprintf(cmd, node, "replica must be a mapping, e.g. {max-lag: 5, fallback: ON}");
        return -1;
    }
    if (h2o_db_config_unique_keys(cmd, node) != 0)
        return -1;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = k->type == YOML_TYPE_SCALAR ? k->data.scalar : "";
        if (strcmp(name, "max-lag") == 0) {
            double lag;
            if (h2o_db_config_number(cmd, v, "replica.max-lag (seconds)", 0, MAX_MAX_LAG_S, &lag) != 0)
                return -1;
            bind->max_lag = (uint64_t)(lag * 1000 + 0.5);
        } else if (strcmp(name, "fallback") == 0) {
            if ((bind->fallback = h2o_db_config_flag(cmd, v)) < 0)
                return -1;
        } else {
            h2o_configurator_errprintf(cmd, k, "unknown replica option `%s` (known: max-lag, fallback)", name);
            return -1;
        }
    }
    return 0;
}

int h2o_db_config_replicas(h2o_configurator_command_t *cmd, h2o_db_bind_t *bind, yoml_t *replicas, yoml_t *replica)
{
    if (replicas == NULL && replica == NULL)
        return 0;
    if (replicas == NULL) {
        h2o_configurator_errprintf(cmd, replica, "replica: options need `replicas:` (the URLs of the read replicas)");
        return -1;
    }
    if (bind->url.backend != H2O_DB_BACKEND_POSTGRES) {
        h2o_configurator_errprintf(cmd, replicas, "replicas are for PostgreSQL binds (streaming standbys), but this bind is %s",
                                   bind->url.display);
        return -1;
    }
    bind->max_lag = DEFAULT_MAX_LAG_MS;
    bind->fallback = 1;
    if (replica != NULL && parse_options(cmd, bind, replica) != 0)
        return -1;
    if (replicas->type == YOML_TYPE_SEQUENCE) {
        if (replicas->data.sequence.size == 0) {
            h2o_configurator_errprintf(cmd, replicas, "the list of replicas is empty (leave `replicas:` out instead)");
            return -1;
        }
        for (size_t i = 0; i < replicas->data.sequence.size; ++i)
            if (add_replica(cmd, bind, replicas->data.sequence.elements[i]) != 0)
                return -1;
    } else if (add_replica(cmd, bind, replicas) != 0) {
        return -1;
    }
    h2o_db_url_t url = {
        .backend = H2O_DB_BACKEND_POSTGRES, .display = strdup(bind->url.display), .conninfo = strdup(bind->url.conninfo)};
    bind->read_only_primary = new_child(bind, &url, replicas);
    return 0;
}

void h2o_db_config_add_replicas(h2o_db_config_t *config, h2o_db_bind_t *bind)
{
    size_t n = bind->replicas.size + (bind->read_only_primary != NULL);
    h2o_vector_reserve(NULL, &config->binds, config->binds.size + n);
    for (size_t i = 0; i < n; ++i) {
        h2o_db_bind_t *c = i < bind->replicas.size ? bind->replicas.entries[i] : bind->read_only_primary;
        c->id = config->binds.size;
        config->binds.entries[config->binds.size++] = c;
    }
}
