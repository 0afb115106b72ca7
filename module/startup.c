/*
 * Start-up, on the main thread before any worker loop runs (blocking is fine
 * here): each bind's backend state, `schema` (aiohttp-sqlalchemy's init_db),
 * connect-at-start, and what `h2o-db -t --connect` checks.
 */
#include <stdio.h>
#include <string.h>
#include "config/config.h"
#include "driver/driver.h"
#include "h2o_db.h"
#include "twophase.h"

const h2o_db_driver_t *h2o_db_driver_for(h2o_db_backend_t backend)
{
    switch (backend) {
    case H2O_DB_BACKEND_POSTGRES:
        return &h2o_db_driver_postgres;
    case H2O_DB_BACKEND_SQLITE:
        return &h2o_db_driver_sqlite;
#ifdef H2O_DB_WITH_MYSQL
    case H2O_DB_BACKEND_MYSQL:
        return &h2o_db_driver_mysql;
#endif
    default:
        return NULL;
    }
}

const char *h2o_db_backends(void)
{
    static char buf[192];
#ifdef H2O_DB_WITH_MYSQL
    snprintf(buf, sizeof(buf), "postgresql via %s, sqlite via %s, mysql via %s", h2o_db_driver_postgres.version(),
             h2o_db_driver_sqlite.version(), h2o_db_driver_mysql.version());
#else
    snprintf(buf, sizeof(buf), "postgresql via %s, sqlite via %s, no mysql (built without libmariadb-dev)",
             h2o_db_driver_postgres.version(), h2o_db_driver_sqlite.version());
#endif
    return buf;
}

int h2o_db_prepare(h2o_globalconf_t *conf)
{
    char err[1024];
    h2o_db_config_t *config = h2o_db_config_of(conf);
    for (size_t i = 0; config != NULL && i < config->binds.size; ++i) {
        h2o_db_bind_t *bind = config->binds.entries[i];
        if (bind->driver->prepare_bind(bind, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s:%zu:%zu: db.bind `%s`: %s\n", bind->filename, bind->line + 1, bind->column + 1, bind->key, err);
            return -1;
        }
        if (bind->schema_sql != NULL && bind->driver->run_script(bind, bind->schema_sql, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s:%zu:%zu: db.bind `%s`: schema %s failed: %s\n", bind->filename, bind->line + 1, bind->column + 1,
                    bind->key, bind->schema_path, err);
            return -1;
        }
        if (bind->twophase && h2o_db_twophase_prepare(bind) != 0)
            return -1;
        if (bind->pool.connect_at_start && bind->driver->run_script(bind, NULL, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s:%zu:%zu: db.bind `%s` (connect-at-start: ON): %s\n", bind->filename, bind->line + 1,
                    bind->column + 1, bind->key, err);
            return -1;
        }
    }
    return 0;
}

int h2o_db_check(h2o_globalconf_t *conf, int connect)
{
    int ret = 0;
    char err[1024];
    h2o_db_config_t *config = h2o_db_config_of(conf);
    for (size_t i = 0; config != NULL && i < config->binds.size; ++i) {
        h2o_db_bind_t *bind = config->binds.entries[i];
        const char *role = bind->primary != NULL ? "replica " : "";
        if (bind->primary != NULL && bind == bind->primary->read_only_primary)
            continue; /* the primary's own URL again */
        if (!connect) {
            printf("h2o-db: bind `%s` (%s): %s%s\n", bind->key, bind->scope, role, bind->url.display);
            continue;
        }
        if (bind->driver->run_script(bind, NULL, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s:%zu:%zu: db.bind `%s`: %s\n", bind->filename, bind->line + 1, bind->column + 1, bind->key, err);
            ret = -1;
        } else {
            printf("h2o-db: bind `%s` (%s): %s%s: connected\n", bind->key, bind->scope, role, bind->url.display);
        }
    }
    return ret;
}
