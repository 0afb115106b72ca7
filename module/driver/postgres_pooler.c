/*
 * PostgreSQL: telling a pooler in the way of the statement cache (docs/pgbouncer.md).
 *
 * A connection of PgBouncer in transaction or statement pooling mode reaches a different
 * server connection from one transaction to the next. A statement that the cache prepared on
 * one of them is then missing on the next ("prepared statement "h2o_db_N" does not exist",
 * 26000), or the name is taken there by another client's statement ("... already exists",
 * 42P05). Both are otherwise hard to understand, so the error that the handler sees says what
 * to do (its SQLSTATE unchanged), and the first one of a bind is logged once.
 *
 * Each connection also numbers its statements from a random start of its own: two connections
 * never use the same name, so that behind such a pooler a statement never runs another
 * connection's statement of the same name, with other SQL; the name is missing instead (26000).
 */
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/postgres.h"

#define POOLER_HINT                                                                                                                \
    "(a pooler such as PgBouncer in transaction or statement mode?) set pool.statement-cache: 0 for it, see docs/pgbouncer.md"

int h2o_db_pg_pooler_prepare_bind(h2o_db_bind_t *bind)
{
    if (bind->driver_data == NULL && (bind->driver_data = calloc(1, sizeof(h2o_db_pg_bind_t))) == NULL)
        return -1;
    return 0;
}

void h2o_db_pg_pooler_dispose_bind(h2o_db_bind_t *bind)
{
    free(bind->driver_data);
    bind->driver_data = NULL;
}

uint64_t h2o_db_pg_first_stmt_id(void)
{
    static uint64_t counter;
    uint64_t x;
    if (getrandom(&x, sizeof(x), GRND_NONBLOCK) != sizeof(x)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 16);
    }
    x += __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) * 0x9E3779B97F4A7C15ULL;
    /* below 2^62: the ids that follow never wrap */
    return x >> 2;
}

int h2o_db_pg_is_pooler_error(const char *sqlstate, int cached, int prepared)
{
    if (sqlstate == NULL || !cached)
        return 0;
    return strcmp(sqlstate, "26000") == 0 || (prepared && strcmp(sqlstate, "42P05") == 0);
}

const char *h2o_db_pg_pooler_message(h2o_db_pg_conn_t *c, const char *message, char *buf, size_t size)
{
    h2o_db_bind_t *bind = c->super.bind;
    h2o_db_pg_bind_t *pb = bind->driver_data;
    snprintf(buf, size, "%s %s", message != NULL ? message : "prepared statement error", POOLER_HINT);
    /* one line per bind (and config), whichever thread sees it first */
    if (pb == NULL || !__atomic_exchange_n(&pb->pooler_logged, 1, __ATOMIC_RELAXED))
        fprintf(stderr,
                "h2o-db: [%s] %s: the statement cache's prepared statements do not stay on the server connection "
                "(a pooler such as PgBouncer in transaction or statement mode at %s?); set pool.statement-cache: 0 "
                "on this bind, see docs/pgbouncer.md\n",
                bind->key, message != NULL ? message : "prepared statement error", bind->url.display);
    return buf;
}
