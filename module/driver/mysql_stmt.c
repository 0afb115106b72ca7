/*
 * MySQL / MariaDB: prepared statements. Each is made from a job's SQL ($1..$n rewritten to ?,
 * mysql_placeholders.c), kept in the connection's cache (stmt_cache.h) unless it is a one-off,
 * executed with its parameters bound as text, and closed between jobs: the connector cannot
 * close one while another call runs, so a statement that leaves the cache waits in c->closing
 * for the step machine's STEP_CLOSE_STMT.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/mysql.h"

static void prepared_free(h2o_db_mysql_prepared_t *p)
{
    if (p == NULL)
        return;
    free(p->map);
    free(p->binds);
    free(p->lengths);
    free(p);
}

/* Queues a statement's MYSQL_STMT for closing before the next job. */
static void close_later(h2o_db_mysql_conn_t *c, MYSQL_STMT *stmt)
{
    if (stmt == NULL)
        return;
    if (c->num_closing == c->closing_cap) {
        size_t cap = c->closing_cap == 0 ? 8 : c->closing_cap * 2;
        MYSQL_STMT **p = realloc(c->closing, sizeof(*p) * cap);
        if (p == NULL) {
            /* cannot remember it: leave it to mysql_close (the server keeps it until then) */
            return;
        }
        c->closing = p;
        c->closing_cap = cap;
    }
    c->closing[c->num_closing++] = stmt;
}

void h2o_db_mysql_prepared_drop(h2o_db_mysql_conn_t *c, h2o_db_mysql_prepared_t *p)
{
    if (p == NULL)
        return;
    close_later(c, p->stmt);
    prepared_free(p);
}

void h2o_db_mysql_prepared_evicted(void *ctx, h2o_db_cached_t *entry)
{
    h2o_db_mysql_conn_t *c = ctx;
    h2o_db_mysql_prepared_t *p = entry->value;
    entry->value = NULL;
    if (entry == c->entry) {
        /* the running job's: it is closed when the job ends */
        c->entry = NULL;
        return;
    }
    h2o_db_mysql_prepared_drop(c, p);
}

h2o_db_mysql_prepared_t *h2o_db_mysql_prepared_new(h2o_db_mysql_conn_t *c, const char *sql, size_t len, const char **sqlstate,
                                                   char *msg, size_t msgsz)
{
    h2o_db_mysql_prepared_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        goto NoMem;
    if (h2o_db_mysql_rewrite_placeholders(sql, len, &c->psql, &p->map, &p->nmarks, &p->nneeded, sqlstate, msg, msgsz) != 0) {
        free(p);
        return NULL;
    }
    p->binds = calloc(p->nmarks + 1, sizeof(*p->binds));
    p->lengths = calloc(p->nmarks + 1, sizeof(*p->lengths));
    if (p->binds == NULL || p->lengths == NULL || (p->stmt = mysql_stmt_init(c->mysql)) == NULL) {
        prepared_free(p);
        goto NoMem;
    }
    my_bool on = 1;
    mysql_stmt_attr_set(p->stmt, STMT_ATTR_UPDATE_MAX_LENGTH, &on);
    return p;
NoMem:
    *sqlstate = "53200";
    snprintf(msg, msgsz, "out of memory");
    return NULL;
}

void h2o_db_mysql_prepared_keep(h2o_db_mysql_conn_t *c, const h2o_db_mysql_job_t *job)
{
    if (job->no_cache || c->cache.capacity == 0)
        return;
    h2o_db_cached_t *entry = h2o_db_stmt_cache_get(&c->cache, job->sql.base, job->sql.len);
    if (entry == NULL)
        entry = h2o_db_stmt_cache_put(&c->cache, job->sql.base, job->sql.len);
    if (entry != NULL) {
        h2o_db_mysql_prepared_drop(c, entry->value);
        entry->value = c->current;
        c->entry = entry;
    }
}

int h2o_db_mysql_bind_params(h2o_db_mysql_conn_t *c, const h2o_db_mysql_job_t *job, h2o_db_result_t *r)
{
    h2o_db_mysql_prepared_t *p = c->current;
    if (p->nneeded > job->nparams) {
        snprintf(c->message, sizeof(c->message), "there is no parameter $%u", p->nneeded);
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "42P02", c->message);
        return -1;
    }
    if (p->nmarks == 0)
        return 0;
    const h2o_db_mysql_param_t *params = (const h2o_db_mysql_param_t *)job->params.base;
    memset(p->binds, 0, sizeof(*p->binds) * p->nmarks);
    for (unsigned i = 0; i < p->nmarks; ++i) {
        const h2o_db_mysql_param_t *pa = params + p->map[i];
        MYSQL_BIND *b = p->binds + i;
        if (pa->null) {
            b->buffer_type = MYSQL_TYPE_NULL;
            continue;
        }
        b->buffer_type = MYSQL_TYPE_STRING;
        b->buffer = job->values.base + pa->off;
        b->buffer_length = pa->len;
        p->lengths[i] = pa->len;
        b->length = p->lengths + i;
    }
    if (mysql_stmt_bind_param(p->stmt, p->binds)) {
        h2o_db_mysql_result_error(r, mysql_stmt_errno(p->stmt), mysql_stmt_sqlstate(p->stmt), mysql_stmt_error(p->stmt));
        return -1;
    }
    return 0;
}

void h2o_db_mysql_prepared_dispose(h2o_db_mysql_conn_t *c)
{
    /* the statements were detached by mysql_close: closing them only frees them */
    h2o_db_stmt_cache_dispose(&c->cache); /* (leaves the running job's statement to us) */
    h2o_db_mysql_prepared_drop(c, c->current);
    c->current = NULL;
    c->entry = NULL;
    for (size_t i = 0; i < c->num_closing; ++i)
        mysql_stmt_close(c->closing[i]);
    free(c->closing);
}
