/*
 * The db.* directives: YAML in, h2o_db_bind_t and h2o_db_path_t out.
 *
 *   db.bind   (global, host, path)  declares databases by key; normal command, so
 *                                   binds exist before db.use and paths are read
 *   db.use    (host, path)          attaches middleware: OFF keys; semi-deferred, so
 *                                   it may come before the db.bind it names
 *
 * Scopes: the configurator keeps one frame per level being read (global → host →
 * path). A bind is visible in its frame and below; when a path level is left, the
 * keys attached there (every visible middleware: ON bind plus the host's and the
 * path's db.use) are stored on an h2o_db_path_t handler added to that pathconf.
 */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/config.h"
#include "config/replicas.h"
#include "config/util.h"
#include "driver/driver.h"
#include "h2o_db.h"
#include "pool.h"
#include "query/query.h"
#include "listen/listen.h"
#include "status.h"

struct use_entry {
    h2o_db_bind_t *bind;
    yoml_t *node; /* valid while the level is read */
    char *where;  /* "FILE:LINE:COL", kept for messages about later levels */
};

struct frame {
    H2O_VECTOR(h2o_db_bind_t *) binds;
    H2O_VECTOR(struct use_entry) uses;
};

struct db_configurator {
    h2o_configurator_t super;
    h2o_db_config_t config;
    struct frame frames[H2O_CONFIGURATOR_NUM_LEVELS + 1];
    size_t depth;
};

static const h2o_db_pool_config_t default_pool = {
    .max = 8,
    .min = 0,
    .queue = 1024,
    .pipeline_depth = 64,
    .statement_cache = 256,
    .acquire_timeout = 5000,
    .idle_timeout = 60000,
    .max_lifetime = 1800000,
    .request_timeout = 60000,
};

static char *where(yoml_t *node)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s:%zu:%zu", node->filename != NULL ? node->filename : "-", node->line + 1, node->column + 1);
    return strdup(buf);
}

static struct db_configurator *self_of(h2o_configurator_command_t *cmd)
{
    return (struct db_configurator *)cmd->configurator;
}

/* A bind visible from the current frame (this level or above), or NULL. */
static h2o_db_bind_t *find_visible(struct db_configurator *self, const char *key, size_t upto)
{
    for (size_t d = upto + 1; d-- > 1;) {
        struct frame *f = self->frames + d;
        for (size_t i = 0; i < f->binds.size; ++i)
            if (strcmp(f->binds.entries[i]->key, key) == 0)
                return f->binds.entries[i];
    }
    return NULL;
}

static char *scope_name(h2o_configurator_context_t *ctx)
{
    char buf[512];
    if (ctx->pathconf != NULL && ctx->pathconf->path.base != NULL)
        snprintf(buf, sizeof(buf), "path %.*s%.*s", (int)ctx->hostconf->authority.hostport.len,
                 ctx->hostconf->authority.hostport.base, (int)ctx->pathconf->path.len, ctx->pathconf->path.base);
    else if (ctx->hostconf != NULL)
        snprintf(buf, sizeof(buf), "host %.*s", (int)ctx->hostconf->authority.hostport.len, ctx->hostconf->authority.hostport.base);
    else
        snprintf(buf, sizeof(buf), "global");
    return strdup(buf);
}

static char *read_file(const char *path, char *err, size_t errsz)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        snprintf(err, errsz, "cannot read `%s`: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, fp)) > 0) {
        len += n;
        if (cap - len - 1 == 0)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    fclose(fp);
    return buf;
}

void h2o_db_bind_free(h2o_db_bind_t *bind)
{
    if (bind == NULL)
        return;
    if (bind->driver != NULL && bind->driver->dispose_bind != NULL)
        bind->driver->dispose_bind(bind); /* (what prepare_bind kept: SQLite's in-memory keeper) */
    free(bind->key);
    h2o_db_url_dispose(&bind->url);
    if (bind->password != NULL) {
        memset(bind->password, 0, strlen(bind->password));
        free(bind->password);
    }
    free(bind->on_connect);
    free(bind->schema_path);
    free(bind->schema_sql);
    for (size_t i = 0; i < bind->partitions.size; ++i) {
        free(bind->partitions.entries[i].table);
        free(bind->partitions.entries[i].key);
        free(bind->partitions.entries[i].where);
    }
    free(bind->partitions.entries);
    for (size_t i = 0; i < bind->replicas.size; ++i)
        h2o_db_bind_free(bind->replicas.entries[i]);
    free(bind->replicas.entries);
    h2o_db_bind_free(bind->read_only_primary);
    free(bind->scope);
    free(bind->filename);
    free(bind);
}

static const char *expect_scalar(h2o_configurator_command_t *cmd, yoml_t *node, const char *what)
{
    if (node->type != YOML_TYPE_SCALAR) {
        h2o_configurator_errprintf(cmd, node, "%s must be a string", what);
        return NULL;
    }
    return node->data.scalar;
}

static int parse_seconds(h2o_configurator_command_t *cmd, yoml_t *node, const char *what, double max, uint64_t *out)
{
    double v;
    if (h2o_db_config_number(cmd, node, what, 0, max, &v) != 0)
        return -1;
    *out = (uint64_t)(v * 1000 + 0.5);
    return 0;
}

static int parse_count(h2o_configurator_command_t *cmd, yoml_t *node, const char *what, double min, double max, unsigned *out)
{
    double v;
    if (h2o_db_config_number(cmd, node, what, min, max, &v) != 0)
        return -1;
    if (v != (double)(unsigned)v) {
        h2o_configurator_errprintf(cmd, node, "%s must be a whole number, not %s", what, node->data.scalar);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_pool(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_pool_config_t *pool)
{
    if (node->type != YOML_TYPE_MAPPING) {
        h2o_configurator_errprintf(cmd, node, "pool must be a mapping, e.g. {max: 8, acquire-timeout: 5}");
        return -1;
    }
    if (h2o_db_config_unique_keys(cmd, node) != 0)
        return -1;
    yoml_t *min_node = NULL;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = k->type == YOML_TYPE_SCALAR ? k->data.scalar : "";
        int ret;
        if (strcmp(name, "max") == 0) {
            ret = parse_count(cmd, v, "pool.max", 1, 10000, &pool->max);
        } else if (strcmp(name, "max-total") == 0) {
            ret = parse_count(cmd, v, "pool.max-total", 1, 1000000, &pool->max_total);
        } else if (strcmp(name, "min") == 0) {
            ret = parse_count(cmd, v, "pool.min", 0, 10000, &pool->min);
            min_node = v;
        } else if (strcmp(name, "queue") == 0) {
            ret = parse_count(cmd, v, "pool.queue", 0, 1000000, &pool->queue);
        } else if (strcmp(name, "pipeline-depth") == 0) {
            ret = parse_count(cmd, v, "pool.pipeline-depth", 1, 1024, &pool->pipeline_depth);
        } else if (strcmp(name, "statement-cache") == 0) {
            ret = parse_count(cmd, v, "pool.statement-cache", 0, 100000, &pool->statement_cache);
        } else if (strcmp(name, "acquire-timeout") == 0) {
            ret = parse_seconds(cmd, v, "pool.acquire-timeout", 3600, &pool->acquire_timeout);
        } else if (strcmp(name, "idle-timeout") == 0) {
            ret = parse_seconds(cmd, v, "pool.idle-timeout", 86400 * 7, &pool->idle_timeout);
        } else if (strcmp(name, "max-lifetime") == 0) {
            ret = parse_seconds(cmd, v, "pool.max-lifetime", 86400 * 365, &pool->max_lifetime);
        } else if (strcmp(name, "statement-timeout") == 0) {
            ret = parse_seconds(cmd, v, "pool.statement-timeout", 86400, &pool->statement_timeout);
        } else if (strcmp(name, "request-timeout") == 0) {
            ret = parse_seconds(cmd, v, "pool.request-timeout", 86400, &pool->request_timeout);
        } else if (strcmp(name, "leak-threshold") == 0) {
            ret = parse_seconds(cmd, v, "pool.leak-threshold", 86400, &pool->leak_threshold);
        } else if (strcmp(name, "connect-at-start") == 0) {
            ret = (pool->connect_at_start = h2o_db_config_flag(cmd, v)) < 0 ? -1 : 0;
        } else {
            h2o_configurator_errprintf(
                cmd, k,
                "unknown pool option `%s` (known: max, max-total, min, acquire-timeout, queue, idle-timeout, "
                "max-lifetime, statement-timeout, request-timeout, leak-threshold, pipeline-depth, statement-cache, "
                "connect-at-start)",
                name);
            return -1;
        }
        if (ret != 0)
            return -1;
    }
    if (pool->min > pool->max) {
        h2o_configurator_errprintf(cmd, min_node, "pool.min (%u) cannot exceed pool.max (%u)", pool->min, pool->max);
        return -1;
    }
    return 0;
}

static int parse_partitions(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_bind_t *bind)
{
    if (node->type != YOML_TYPE_MAPPING || node->data.mapping.size == 0) {
        h2o_configurator_errprintf(cmd, node, "binds must be a mapping of TABLE: KEY, e.g. {audit_log: sa_audit}");
        return -1;
    }
    if (h2o_db_config_unique_keys(cmd, node) != 0)
        return -1;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        if (k->type != YOML_TYPE_SCALAR || v->type != YOML_TYPE_SCALAR || k->data.scalar[0] == '\0' || v->data.scalar[0] == '\0') {
            h2o_configurator_errprintf(cmd, k, "binds must map a table name to a key, e.g. audit_log: sa_audit");
            return -1;
        }
        h2o_vector_reserve(NULL, &bind->partitions, bind->partitions.size + 1);
        bind->partitions.entries[bind->partitions.size++] =
            (h2o_db_partition_t){strdup(k->data.scalar), strdup(v->data.scalar), NULL, where(v)};
    }
    return 0;
}

static int read_password_file(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_bind_t *bind)
{
    char err[1024], *path = h2o_db_config_path(node, node->data.scalar), *text;
    if ((text = read_file(path, err, sizeof(err))) == NULL) {
        h2o_configurator_errprintf(cmd, node, "password-file: %s", err);
        free(path);
        return -1;
    }
    free(path);
    text[strcspn(text, "\r\n")] = '\0';
    if (bind->url.backend == H2O_DB_BACKEND_SQLITE) {
        h2o_configurator_errprintf(cmd, node, "password-file is for PostgreSQL and MySQL binds (SQLite has no passwords)");
        memset(text, 0, strlen(text));
        free(text);
        return -1;
    }
    bind->password = text;
    return 0;
}

static h2o_db_bind_t *parse_bind(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    if (node->type != YOML_TYPE_MAPPING) {
        h2o_configurator_errprintf(cmd, node, "each bind must be a mapping with at least `url`, e.g. {url: sqlite:///app.sqlite3}");
        return NULL;
    }
    if (h2o_db_config_unique_keys(cmd, node) != 0)
        return NULL;
    yoml_t *url = NULL, *key = NULL, *middleware = NULL, *pool = NULL, *on_connect = NULL, *schema = NULL, *binds = NULL,
           *twophase = NULL, *password_file = NULL, *replicas = NULL, *replica = NULL;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = k->type == YOML_TYPE_SCALAR ? k->data.scalar : "";
        yoml_t **slot = strcmp(name, "url") == 0             ? &url
                        : strcmp(name, "key") == 0           ? &key
                        : strcmp(name, "middleware") == 0    ? &middleware
                        : strcmp(name, "pool") == 0          ? &pool
                        : strcmp(name, "on-connect") == 0    ? &on_connect
                        : strcmp(name, "schema") == 0        ? &schema
                        : strcmp(name, "binds") == 0         ? &binds
                        : strcmp(name, "twophase") == 0      ? &twophase
                        : strcmp(name, "password-file") == 0 ? &password_file
                        : strcmp(name, "replicas") == 0      ? &replicas
                        : strcmp(name, "replica") == 0       ? &replica
                                                             : NULL;
        if (slot == NULL) {
            h2o_configurator_errprintf(cmd, k,
                                       "unknown attribute `%s` (known: url, key, middleware, pool, on-connect, schema, binds, "
                                       "twophase, password-file, replicas, replica)",
                                       name);
            return NULL;
        }
        *slot = v;
    }
    if (url == NULL) {
        h2o_configurator_errprintf(cmd, node, "mandatory attribute `url` is missing (e.g. url: postgresql://app@127.0.0.1/app)");
        return NULL;
    }

    h2o_db_bind_t *bind = calloc(1, sizeof(*bind));
    bind->pool = default_pool;
    bind->middleware = 1;
    bind->filename = strdup(node->filename != NULL ? node->filename : "-");
    bind->line = node->line;
    bind->column = node->column;
    bind->scope = scope_name(ctx);

    const char *s;
    if (key != NULL) {
        if ((s = expect_scalar(cmd, key, "key")) == NULL)
            goto Error;
        if (s[0] == '\0' || strlen(s) > 63 ||
            strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != strlen(s)) {
            h2o_configurator_errprintf(cmd, key, "key must be 1 to 63 letters, digits, _ - or ., not `%s`", s);
            goto Error;
        }
    }
    bind->key = strdup(key != NULL ? key->data.scalar : H2O_DB_DEFAULT_KEY);

    if ((s = expect_scalar(cmd, url, "url")) == NULL)
        goto Error;
    {
        char err[1024], *config_file = strdup(url->filename != NULL ? url->filename : "./-");
        int ret = h2o_db_url_parse(s, dirname(config_file), bind->key, &bind->url, err, sizeof(err));
        free(config_file);
        if (ret != 0) {
            h2o_configurator_errprintf(cmd, url, "%s", err);
            goto Error;
        }
    }
    if ((bind->driver = h2o_db_driver_for(bind->url.backend)) == NULL) {
        h2o_configurator_errprintf(
            cmd, url, "no driver for %s is built into this h2o-db (MySQL/MariaDB needs libmariadb-dev when it is built)",
            bind->url.display);
        goto Error;
    }
    if (middleware != NULL && (bind->middleware = h2o_db_config_flag(cmd, middleware)) < 0)
        goto Error;
    if (pool != NULL && parse_pool(cmd, pool, &bind->pool) != 0)
        goto Error;
    if (on_connect != NULL) {
        if ((s = expect_scalar(cmd, on_connect, "on-connect")) == NULL)
            goto Error;
        bind->on_connect = strdup(s);
    }
    if (schema != NULL) {
        if ((s = expect_scalar(cmd, schema, "schema")) == NULL)
            goto Error;
        char err[1024];
        bind->schema_path = h2o_db_config_path(schema, s);
        if ((bind->schema_sql = read_file(bind->schema_path, err, sizeof(err))) == NULL) {
            h2o_configurator_errprintf(cmd, schema, "schema: %s", err);
            goto Error;
        }
    }
    if (password_file != NULL) {
        if (expect_scalar(cmd, password_file, "password-file") == NULL || read_password_file(cmd, password_file, bind) != 0)
            goto Error;
    }
    if (binds != NULL && parse_partitions(cmd, binds, bind) != 0)
        goto Error;
    if (twophase != NULL && (bind->twophase = h2o_db_config_flag(cmd, twophase)) < 0)
        goto Error;
    if (bind->twophase && binds == NULL) {
        h2o_configurator_errprintf(cmd, twophase, "twophase: ON needs `binds:` (the partitions a transaction spans)");
        goto Error;
    }
    if (bind->twophase && bind->url.backend != H2O_DB_BACKEND_POSTGRES) {
        h2o_configurator_errprintf(cmd, twophase,
                                   "twophase: ON needs PostgreSQL, but this bind is %s, which cannot prepare transactions",
                                   bind->url.display);
        goto Error;
    }
    if (h2o_db_config_replicas(cmd, bind, replicas, replica) != 0)
        goto Error;
    return bind;
Error:
    h2o_db_bind_free(bind);
    return NULL;
}

static int add_bind(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    struct db_configurator *self = self_of(cmd);
    h2o_db_bind_t *bind = parse_bind(cmd, ctx, node), *other;
    if (bind == NULL)
        return -1;
    if ((other = find_visible(self, bind->key, self->depth)) != NULL) {
        h2o_configurator_errprintf(cmd, node,
                                   "duplicate app key `%s`: already bound at %s:%zu:%zu (%s); give this bind another `key`",
                                   bind->key, other->filename, other->line + 1, other->column + 1, other->scope);
        h2o_db_bind_free(bind);
        return -1;
    }
    struct frame *f = self->frames + self->depth;
    h2o_vector_reserve(NULL, &f->binds, f->binds.size + 1);
    f->binds.entries[f->binds.size++] = bind;
    h2o_db_config_t *config = &self->config;
    bind->id = config->binds.size;
    h2o_vector_reserve(NULL, &config->binds, config->binds.size + 1);
    config->binds.entries[config->binds.size++] = bind;
    h2o_db_config_add_replicas(config, bind);
    return 0;
}

static int on_db_bind(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    switch (node->type) {
    case YOML_TYPE_MAPPING:
        return add_bind(cmd, ctx, node);
    case YOML_TYPE_SEQUENCE:
        if (node->data.sequence.size == 0) {
            h2o_configurator_errprintf(cmd, node, "the list of binds is empty");
            return -1;
        }
        for (size_t i = 0; i < node->data.sequence.size; ++i)
            if (add_bind(cmd, ctx, node->data.sequence.elements[i]) != 0)
                return -1;
        return 0;
    default:
        h2o_configurator_errprintf(cmd, node, "db.bind takes a mapping (one bind) or a sequence of mappings");
        return -1;
    }
}

static int use_one(h2o_configurator_command_t *cmd, yoml_t *node)
{
    struct db_configurator *self = self_of(cmd);
    if (node->type != YOML_TYPE_SCALAR || node->data.scalar[0] == '\0') {
        h2o_configurator_errprintf(cmd, node, "db.use takes a key or a list of keys");
        return -1;
    }
    const char *key = node->data.scalar;
    h2o_db_bind_t *bind = find_visible(self, key, self->depth);
    if (bind == NULL) {
        h2o_configurator_errprintf(cmd, node, "unknown key `%s`: no db.bind with this key is visible here", key);
        return -1;
    }
    if (bind->middleware) {
        h2o_configurator_errprintf(cmd, node,
                                   "duplicate request key `%s`: it is bound with middleware: ON at %s:%zu:%zu, so every request in "
                                   "that scope has it already; db.use is for middleware: OFF binds",
                                   key, bind->filename, bind->line + 1, bind->column + 1);
        return -1;
    }
    for (size_t d = 1; d <= self->depth; ++d) {
        struct frame *f = self->frames + d;
        for (size_t i = 0; i < f->uses.size; ++i) {
            if (f->uses.entries[i].bind == bind) {
                h2o_configurator_errprintf(cmd, node, "duplicate request key `%s`: already attached by db.use at %s", key,
                                           f->uses.entries[i].where);
                return -1;
            }
        }
    }
    struct frame *f = self->frames + self->depth;
    h2o_vector_reserve(NULL, &f->uses, f->uses.size + 1);
    f->uses.entries[f->uses.size++] = (struct use_entry){bind, node, where(node)};
    return 0;
}

static int on_db_use(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    if (node->type != YOML_TYPE_SEQUENCE)
        return use_one(cmd, node);
    if (node->data.sequence.size == 0) {
        h2o_configurator_errprintf(cmd, node, "db.use: the list of keys is empty");
        return -1;
    }
    for (size_t i = 0; i < node->data.sequence.size; ++i)
        if (use_one(cmd, node->data.sequence.elements[i]) != 0)
            return -1;
    return 0;
}

static int on_db_status(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    int on = h2o_db_config_flag(cmd, node);
    if (on < 0)
        return -1;
    if (on)
        h2o_db_status_register(ctx->pathconf);
    return 0;
}

static int on_level_enter(h2o_configurator_t *_self, h2o_configurator_context_t *ctx, yoml_t *node)
{
    struct db_configurator *self = (void *)_self;
    ++self->depth;
    memset(self->frames + self->depth, 0, sizeof(self->frames[0]));
    return 0;
}

/* Whether following partitions from `from` reaches `target` (depth-first, bounded). */
static int reaches(h2o_db_bind_t *from, h2o_db_bind_t *target, size_t hops, size_t max_hops)
{
    if (from == target)
        return 1;
    if (hops > max_hops)
        return 0;
    for (size_t i = 0; i < from->partitions.size; ++i)
        if (from->partitions.entries[i].bind != NULL && reaches(from->partitions.entries[i].bind, target, hops + 1, max_hops))
            return 1;
    return 0;
}

/* Resolves binds: {TABLE: KEY} of the binds declared in this frame, now that every bind of
 * the level is known: KEY must be visible here and must not lead back to the bind. */
static int resolve_partitions(struct db_configurator *self, struct frame *f)
{
    for (size_t i = 0; i < f->binds.size; ++i) {
        h2o_db_bind_t *bind = f->binds.entries[i];
        for (size_t j = 0; j < bind->partitions.size; ++j) {
            h2o_db_partition_t *p = bind->partitions.entries + j;
            h2o_db_bind_t *target = find_visible(self, p->key, self->depth);
            if (target == NULL) {
                fprintf(stderr,
                        "%s: in command db.bind, binds: unknown key `%s` for table `%s`: no db.bind with this key is "
                        "visible from %s\n",
                        p->where, p->key, p->table, bind->scope);
                return -1;
            }
            if (target == bind) {
                fprintf(stderr, "%s: in command db.bind, binds: table `%s` names the bind itself (`%s`); leave it out instead\n",
                        p->where, p->table, p->key);
                return -1;
            }
            if (bind->twophase && target->url.backend != H2O_DB_BACKEND_POSTGRES) {
                fprintf(stderr,
                        "%s: in command db.bind, twophase: ON needs PostgreSQL partitions, but `%s` is %s, which cannot "
                        "prepare transactions\n",
                        p->where, p->key, target->url.display);
                return -1;
            }
            p->bind = target;
        }
    }
    for (size_t i = 0; i < f->binds.size; ++i) {
        h2o_db_bind_t *bind = f->binds.entries[i];
        for (size_t j = 0; j < bind->partitions.size; ++j) {
            if (reaches(bind->partitions.entries[j].bind, bind, 0, self->config.binds.size)) {
                fprintf(stderr, "%s: in command db.bind, binds: the partitions of `%s` lead back to it (a cycle through `%s`)\n",
                        bind->partitions.entries[j].where, bind->key, bind->partitions.entries[j].key);
                return -1;
            }
        }
    }
    return 0;
}

static int attach_path(struct db_configurator *self, h2o_configurator_context_t *ctx)
{
    H2O_VECTOR(h2o_db_bind_t *) attached = {NULL};
    for (size_t d = 1; d <= self->depth; ++d) {
        struct frame *f = self->frames + d;
        for (size_t i = 0; i < f->binds.size; ++i) {
            if (f->binds.entries[i]->middleware) {
                h2o_vector_reserve(NULL, &attached, attached.size + 1);
                attached.entries[attached.size++] = f->binds.entries[i];
            }
        }
        for (size_t i = 0; i < f->uses.size; ++i) {
            h2o_vector_reserve(NULL, &attached, attached.size + 1);
            attached.entries[attached.size++] = f->uses.entries[i].bind;
        }
    }
    if (attached.size == 0)
        return 0;
    h2o_db_path_register(ctx->pathconf, attached.entries, attached.size);
    return 0;
}

static void free_frame(struct frame *f)
{
    for (size_t i = 0; i < f->uses.size; ++i)
        free(f->uses.entries[i].where);
    free(f->uses.entries);
    free(f->binds.entries);
    memset(f, 0, sizeof(*f));
}

static int on_level_exit(h2o_configurator_t *_self, h2o_configurator_context_t *ctx, yoml_t *node)
{
    struct db_configurator *self = (void *)_self;
    struct frame *f = self->frames + self->depth;
    int ret = 0;
    if (node != NULL) {
        if (resolve_partitions(self, f) != 0)
            ret = -1;
        /* a path's own level (not the fallback path nor an extension level, whose path is empty) */
        else if (ctx->pathconf != NULL && ctx->pathconf->path.base != NULL)
            ret = attach_path(self, ctx);
    }
    free_frame(f);
    --self->depth;
    return ret;
}

/* The globalconf is disposed of (a reload's old config, once its threads are gone). libh2o
 * 2.2.5 calls a configurator's dispose twice: the second call finds nothing left. */
void h2o_db_config_release(h2o_db_config_t *config)
{
    /* a primary frees its replicas: forget them first (reading a child after its primary was
     * freed would read freed memory) */
    for (size_t i = 0; i < config->binds.size; ++i)
        if (config->binds.entries[i]->primary != NULL)
            config->binds.entries[i] = NULL;
    for (size_t i = 0; i < config->binds.size; ++i)
        if (config->binds.entries[i] != NULL)
            h2o_db_bind_free(config->binds.entries[i]);
    free(config->binds.entries);
    free(config->threads.entries);
    memset(&config->binds, 0, sizeof(config->binds));
    memset(&config->threads, 0, sizeof(config->threads));
}

static int on_dispose(h2o_configurator_t *_self)
{
    h2o_db_config_release(&((struct db_configurator *)_self)->config);
    return 0;
}

h2o_db_config_t *h2o_db_config_of(h2o_globalconf_t *conf)
{
    for (h2o_linklist_t *n = conf->configurators.next; n != &conf->configurators; n = n->next) {
        h2o_configurator_t *c = H2O_STRUCT_FROM_MEMBER(h2o_configurator_t, _link, n);
        if (c->dispose == on_dispose)
            return &((struct db_configurator *)c)->config;
    }
    return NULL;
}

h2o_db_bind_t *h2o_db_config_visible(h2o_globalconf_t *conf, const char *key)
{
    for (h2o_linklist_t *n = conf->configurators.next; n != &conf->configurators; n = n->next) {
        h2o_configurator_t *c = H2O_STRUCT_FROM_MEMBER(h2o_configurator_t, _link, n);
        if (c->dispose == on_dispose)
            return find_visible((struct db_configurator *)c, key, ((struct db_configurator *)c)->depth);
    }
    return NULL;
}

void h2o_db_register_configurator(h2o_globalconf_t *conf)
{
    struct db_configurator *c = (void *)h2o_configurator_create(conf, sizeof(*c));
    c->super.dispose = on_dispose;
    pthread_mutex_init(&c->config.threads_lock, NULL);
    c->super.enter = on_level_enter;
    c->super.exit = on_level_exit;
    h2o_configurator_define_command(
        &c->super, "db.bind", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_HOST | H2O_CONFIGURATOR_FLAG_PATH, on_db_bind);
    h2o_configurator_define_command(&c->super, "db.use",
                                    H2O_CONFIGURATOR_FLAG_HOST | H2O_CONFIGURATOR_FLAG_PATH | H2O_CONFIGURATOR_FLAG_SEMI_DEFERRED,
                                    on_db_use);
    h2o_configurator_define_command(&c->super, "db.status", H2O_CONFIGURATOR_FLAG_PATH | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR,
                                    on_db_status);
    h2o_db_query_configurator(conf); /* db.query (module/config/query.c): after this one, see there */
    h2o_db_listen_register_directive(conf);
}
