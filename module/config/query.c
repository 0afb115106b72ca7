/*
 * db.query (path level): YAML in, h2o_db_query_args_t out, handed to h2o_db_query_register
 * (module/query/ is the runtime). Whether the key is attached on the path is known only once the
 * level is read (db.use and middleware binds are resolved then): that is checked at the level's
 * exit, which runs after the db configurator's (it is registered after it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/config.h"
#include "config/util.h"
#include "query/query.h"

struct pending {
    char *key, *where;
};

struct query_configurator {
    h2o_configurator_t super;
    H2O_VECTOR(struct pending) pending; /* db.query of the path level being read */
};

static const char *scalar(yoml_t *node)
{
    return node->type == YOML_TYPE_SCALAR ? node->data.scalar : NULL;
}

static int parse_source(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_query_param_t *p)
{
    const char *s = scalar(node);
    if (s == NULL) {
        h2o_configurator_errprintf(cmd, node, "a parameter is a source or {from: SOURCE, default: TEXT | optional: ON}");
        return -1;
    }
    static const struct {
        const char *prefix;
        h2o_db_query_source_t source;
    } kinds[] = {{"query:", H2O_DB_QUERY_SRC_QUERY},
                 {"path:", H2O_DB_QUERY_SRC_PATH},
                 {"header:", H2O_DB_QUERY_SRC_HEADER},
                 {"body:", H2O_DB_QUERY_SRC_FIELD}};
    p->label = strdup(s);
    if (strcmp(s, "body") == 0) {
        p->source = H2O_DB_QUERY_SRC_BODY;
        return 0;
    }
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); ++i) {
        size_t n = strlen(kinds[i].prefix);
        if (strncmp(s, kinds[i].prefix, n) != 0 || s[n] == '\0')
            continue;
        p->source = kinds[i].source;
        if (p->source == H2O_DB_QUERY_SRC_PATH) {
            char *end;
            long v = strtol(s + n, &end, 10);
            if (*end != '\0' || v < 1 || v > 64 || s[n] < '1' || s[n] > '9') {
                h2o_configurator_errprintf(cmd, node, "path:N takes a segment number from 1 to 64, not `%s`", s + n);
                return -1;
            }
            p->index = (size_t)v;
            return 0;
        }
        p->name = strdup(s + n);
        if (p->source == H2O_DB_QUERY_SRC_HEADER)
            for (char *c = p->name; *c != '\0'; ++c)
                *c = h2o_tolower(*c);
        return 0;
    }
    h2o_configurator_errprintf(cmd, node, "unknown parameter source `%s` (known: query:NAME, path:N, header:NAME, body:NAME, body)",
                               s);
    return -1;
}

static int parse_param(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_query_param_t *p)
{
    if (node->type != YOML_TYPE_MAPPING)
        return parse_source(cmd, node, p);
    yoml_t *from = NULL;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = scalar(k) != NULL ? k->data.scalar : "";
        if (strcmp(name, "from") == 0) {
            from = v;
        } else if (strcmp(name, "default") == 0 && scalar(v) != NULL) {
            p->def = strdup(v->data.scalar);
        } else if (strcmp(name, "optional") == 0) {
            if ((p->optional = h2o_db_config_flag(cmd, v)) < 0)
                return -1;
        } else {
            h2o_configurator_errprintf(cmd, k, "unknown parameter option `%s` (known: from, default (text), optional)", name);
            return -1;
        }
    }
    if (from == NULL) {
        h2o_configurator_errprintf(cmd, node, "a parameter mapping needs `from`, e.g. {from: query:page, default: 1}");
        return -1;
    }
    return parse_source(cmd, from, p);
}

/* `sql` and `params`: the statements, and that their highest $n is the count of params. */
static int parse_statements(h2o_configurator_command_t *cmd, yoml_t *sql, yoml_t *params, h2o_db_query_method_t *m)
{
    size_t n = sql->type == YOML_TYPE_SEQUENCE ? sql->data.sequence.size : 1, highest = 0;
    m->sql = calloc(n, sizeof(*m->sql));
    m->nparams = calloc(n, sizeof(*m->nparams));
    m->maps = calloc(n, sizeof(*m->maps));
    for (size_t i = 0; i < n; ++i) {
        yoml_t *s = sql->type == YOML_TYPE_SEQUENCE ? sql->data.sequence.elements[i] : sql;
        if (scalar(s) == NULL || s->data.scalar[strspn(s->data.scalar, " \t\r\n;")] == '\0') {
            h2o_configurator_errprintf(cmd, s, "sql is a statement or a list of statements (run in one transaction)");
            return -1;
        }
        size_t used = h2o_db_query_count_params(s->data.scalar);
        if (used > highest)
            highest = used;
        m->sql[m->num_sql++] = h2o_db_query_renumber(s->data.scalar, m->maps + i, m->nparams + i);
    }
    size_t count = params == NULL ? 0 : params->type == YOML_TYPE_SEQUENCE ? params->data.sequence.size : 1;
    if (count != 0) {
        m->params = calloc(count, sizeof(*m->params));
        m->num_params = count; /* (all freed with m, parsed or not) */
        for (size_t i = 0; i < count; ++i)
            if (parse_param(cmd, params->type == YOML_TYPE_SEQUENCE ? params->data.sequence.elements[i] : params, m->params + i) !=
                0)
                return -1;
    }
    if (highest != count) {
        h2o_configurator_errprintf(cmd, sql, "the sql uses $1..$%zu but `params` lists %zu value%s; give one source per $n",
                                   highest, count, count == 1 ? "" : "s");
        return -1;
    }
    return 0;
}

static int parse_paginate(h2o_configurator_command_t *cmd, yoml_t *node, h2o_db_query_method_t *m)
{
    double limit = 0, max = 0;
    if (node->type != YOML_TYPE_MAPPING)
        goto Bad;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = scalar(k) != NULL ? k->data.scalar : "";
        double *slot = strcmp(name, "limit") == 0 ? &limit : strcmp(name, "max-limit") == 0 ? &max : NULL;
        if (slot == NULL)
            goto Bad;
        if (h2o_db_config_number(cmd, v, name, 1, 1000000, slot) != 0)
            return -1;
    }
    if (limit == 0 || max == 0 || limit != (size_t)limit || max != (size_t)max || limit > max)
        goto Bad;
    m->limit = (size_t)limit;
    m->max_limit = (size_t)max;
    /* the last statement as a subquery, its limit and offset bound after its own parameters */
    const char *last = m->sql[m->num_sql - 1];
    size_t len = strlen(last), k = m->nparams[m->num_sql - 1] + 1;
    while (len > 0 && strchr(" \t\r\n;", last[len - 1]) != NULL)
        --len;
    m->paged_sql = malloc(len + 128);
    sprintf(m->paged_sql, "SELECT * FROM (%.*s) AS page LIMIT $%zu OFFSET $%zu", (int)len, last, k, k + 1);
    return 0;
Bad:
    h2o_configurator_errprintf(cmd, node, "paginate is {limit: L, max-limit: M}, whole numbers with 1 <= L <= M");
    return -1;
}

static h2o_db_query_method_t *parse_method(h2o_configurator_command_t *cmd, yoml_t *node)
{
    if (node->type != YOML_TYPE_MAPPING) {
        h2o_configurator_errprintf(cmd, node, "a method takes a mapping, e.g. {sql: SELECT ..., params: [query:id]}");
        return NULL;
    }
    if (h2o_db_config_unique_keys(cmd, node) != 0)
        return NULL;
    h2o_db_query_method_t *m = calloc(1, sizeof(*m));
    m->read = -1;
    yoml_t *sql = NULL, *params = NULL, *paginate = NULL, *result = NULL;
    static const char *const results[] = {"rows", "row", "value", "affected", "none"};
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = scalar(k) != NULL ? k->data.scalar : "";
        if (strcmp(name, "sql") == 0) {
            sql = v;
        } else if (strcmp(name, "params") == 0) {
            params = v;
        } else if (strcmp(name, "paginate") == 0) {
            paginate = v;
        } else if (strcmp(name, "status") == 0) {
            double st;
            if (h2o_db_config_number(cmd, v, "status", 200, 599, &st) != 0)
                goto Error;
            m->status = (int)st;
        } else if (strcmp(name, "read") == 0) {
            if (scalar(v) == NULL || (strcmp(v->data.scalar, "primary") != 0 && strcmp(v->data.scalar, "replica") != 0)) {
                h2o_configurator_errprintf(cmd, v, "read is primary or replica");
                goto Error;
            }
            m->read = strcmp(v->data.scalar, "primary") == 0;
        } else if (strcmp(name, "result") == 0) {
            size_t r = 0;
            while (r < 5 && (scalar(v) == NULL || strcmp(v->data.scalar, results[r]) != 0))
                ++r;
            if (r == 5) {
                h2o_configurator_errprintf(cmd, v, "result is one of rows, row, value, affected, none");
                goto Error;
            }
            m->result = (h2o_db_query_result_t)r;
            result = v;
        } else {
            h2o_configurator_errprintf(
                cmd, k, "unknown option `%s` of a method (known: sql, params, result, status, paginate, read)", name);
            goto Error;
        }
    }
    if (sql == NULL) {
        h2o_configurator_errprintf(cmd, node, "a method needs `sql`");
        goto Error;
    }
    if (parse_statements(cmd, sql, params, m) != 0)
        goto Error;
    if (paginate != NULL && m->result != H2O_DB_QUERY_ROWS) {
        h2o_configurator_errprintf(cmd, paginate, "paginate needs result: rows, but this method's result is %s",
                                   result->data.scalar);
        goto Error;
    }
    if (paginate != NULL && parse_paginate(cmd, paginate, m) != 0)
        goto Error;
    return m;
Error:
    h2o_db_query_method_free(m);
    return NULL;
}

static int on_db_query(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    struct query_configurator *self = (void *)cmd->configurator;
    if (h2o_db_config_unique_keys(cmd, node) != 0)
        return -1;
    h2o_db_query_args_t *args = calloc(1, sizeof(*args));
    args->max_body = H2O_DB_QUERY_DEFAULT_MAX_BODY;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = scalar(k) != NULL ? k->data.scalar : "";
        int mi = 0;
        while (mi < H2O_DB_QUERY_NUM_METHODS && strcmp(name, h2o_db_query_method_names[mi]) != 0)
            ++mi;
        double bytes;
        if (mi < H2O_DB_QUERY_NUM_METHODS) {
            if ((args->methods[mi] = parse_method(cmd, v)) == NULL)
                goto Error;
        } else if (strcmp(name, "key") == 0 && scalar(v) != NULL && v->data.scalar[0] != '\0') {
            args->key = strdup(v->data.scalar);
        } else if (strcmp(name, "max-body") == 0) {
            if (h2o_db_config_number(cmd, v, "max-body", 0, 1024.0 * 1024 * 1024, &bytes) != 0)
                goto Error;
            args->max_body = (size_t)bytes;
        } else if (strcmp(name, "read") == 0 && scalar(v) != NULL &&
                   (strcmp(v->data.scalar, "primary") == 0 || strcmp(v->data.scalar, "replica") == 0)) {
            args->read_primary = strcmp(v->data.scalar, "primary") == 0;
        } else if (strcmp(name, "key") == 0 || strcmp(name, "read") == 0) {
            h2o_configurator_errprintf(cmd, v, "%s", name[0] == 'k' ? "key must be a bind's key" : "read is primary or replica");
            goto Error;
        } else if (name[0] != '\0' && strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == strlen(name)) {
            h2o_configurator_errprintf(cmd, k, "unknown method `%s` (known: GET, HEAD, POST, PUT, PATCH, DELETE)", name);
            goto Error;
        } else {
            h2o_configurator_errprintf(cmd, k,
                                       "unknown option `%s` (known: key, max-body, read, and the methods GET, HEAD, POST, PUT, "
                                       "PATCH, DELETE)",
                                       name);
            goto Error;
        }
    }
    size_t num = 0;
    for (size_t i = 0; i < H2O_DB_QUERY_NUM_METHODS; ++i)
        num += args->methods[i] != NULL;
    if (num == 0) {
        h2o_configurator_errprintf(cmd, node, "db.query needs at least one method, e.g. GET: {sql: SELECT ...}");
        goto Error;
    }
    if (args->key == NULL)
        args->key = strdup(H2O_DB_DEFAULT_KEY);
    char where[1024];
    snprintf(where, sizeof(where), "%s:%zu:%zu", node->filename != NULL ? node->filename : "-", node->line + 1, node->column + 1);
    h2o_vector_reserve(NULL, &self->pending, self->pending.size + 1);
    self->pending.entries[self->pending.size++] = (struct pending){strdup(args->key), strdup(where)};
    h2o_db_query_register(ctx->pathconf, args);
    return 0;
Error:
    h2o_db_query_args_free(args);
    return -1;
}

/* The path level was read (and the db configurator attached its keys): each db.query's key must be there. */
static int on_level_exit(h2o_configurator_t *_self, h2o_configurator_context_t *ctx, yoml_t *node)
{
    struct query_configurator *self = (void *)_self;
    int ret = 0;
    h2o_db_path_t *path = ctx->pathconf != NULL ? h2o_db_path_of(ctx->pathconf) : NULL;
    for (size_t i = 0; i < self->pending.size; ++i) {
        struct pending *p = self->pending.entries + i;
        if (ret == 0 && (path == NULL || h2o_db_path_find(path, p->key) == NULL)) {
            fprintf(stderr,
                    "%s: in command db.query, key `%s` is not attached on this path: bind it with middleware: ON where the path "
                    "sees it, or attach it with db.use\n",
                    p->where, p->key);
            ret = -1;
        }
        free(p->key);
        free(p->where);
    }
    self->pending.size = 0;
    return ret;
}

static int on_dispose(h2o_configurator_t *_self)
{
    struct query_configurator *self = (void *)_self;
    free(self->pending.entries);
    memset(&self->pending, 0, sizeof(self->pending));
    return 0;
}

void h2o_db_query_configurator(h2o_globalconf_t *conf)
{
    struct query_configurator *c = (void *)h2o_configurator_create(conf, sizeof(*c));
    c->super.exit = on_level_exit;
    c->super.dispose = on_dispose;
    h2o_configurator_define_command(&c->super, "db.query", H2O_CONFIGURATOR_FLAG_PATH | H2O_CONFIGURATOR_FLAG_EXPECT_MAPPING,
                                    on_db_query);
}
