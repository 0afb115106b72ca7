/*
 * The driver interface: one per backend (driver/postgres.c, driver/sqlite.c, driver/mysql.c).
 *
 * A connection is an ordered pipe. The pool (pool.c) decides which statement
 * goes to which connection; the driver moves statements to the database and
 * results back, in the order they were sent, without ever blocking the loop.
 *
 *   open     allocates a connection (h2o_db_conn_t first) and starts connecting;
 *            it reports with h2o_db_conn_connected / h2o_db_conn_failed, later
 *   send     writes one statement; its result comes back, in order, through
 *            h2o_db_conn_result (each call consumes the oldest statement sent)
 *   close    drops the connection; statements still in flight are failed by the
 *            pool before close is called; the driver frees the memory when its
 *            handles are closed
 *   cancel   (optional) interrupts the statement running on a pinned connection
 *            whose request ended, so that its ROLLBACK comes sooner; reports with
 *            h2o_db_conn_cancelled, later (also when there was nothing to cancel)
 *
 * Never re-entrant: open, send, cancel and close never call h2o_db_conn_* before they
 * return. Whatever they find out at once (libpq refusing a connect on the spot, a send
 * that fails) is reported from the loop on a later iteration (h2o_db_later). The pool
 * asserts this around every call.
 *
 * Start-up helpers run on the main thread before any loop (blocking is fine there).
 */
#ifndef h2o_db_driver_h
#define h2o_db_driver_h

#include <stddef.h>
#include "config/config.h"

typedef struct st_h2o_db_pool_t h2o_db_pool_t;
typedef struct st_h2o_db_conn_t h2o_db_conn_t;

/* What a driver sends: one statement, as the wire sees it (the pool makes it from a session's
 * statement; valid during send() only: a driver copies what it keeps). */
typedef enum { H2O_DB_WIRE_QUERY, H2O_DB_WIRE_BEGIN, H2O_DB_WIRE_COMMIT, H2O_DB_WIRE_ROLLBACK } h2o_db_wire_kind_t;

typedef struct st_h2o_db_wire_t {
    h2o_db_wire_kind_t kind;
    /* QUERY: the statement. BEGIN: NULL (the driver's own spelling). COMMIT, ROLLBACK: NULL for the
     * plain statement, or what to send instead (COMMIT PREPARED '...', PREPARE TRANSACTION '...') */
    const char *sql;
    size_t sql_len;
    size_t nparams;
    const char *const *params; /* NUL-terminated; NULL = SQL NULL */
    int no_cache;              /* one-off SQL: not for a statement cache */
} h2o_db_wire_t;

/* The text to send for w; `begin` is the backend's BEGIN. */
static inline const char *h2o_db_wire_sql(const h2o_db_wire_t *w, const char *begin)
{
    switch (w->kind) {
    case H2O_DB_WIRE_BEGIN:
        return begin;
    case H2O_DB_WIRE_COMMIT:
        return w->sql != NULL ? w->sql : "COMMIT";
    case H2O_DB_WIRE_ROLLBACK:
        return w->sql != NULL ? w->sql : "ROLLBACK";
    default:
        return w->sql;
    }
}

struct st_h2o_db_driver_t {
    const char *name;
    h2o_db_conn_t *(*open)(h2o_db_pool_t *pool);
    void (*send)(h2o_db_conn_t *conn, const h2o_db_wire_t *stmt);
    void (*close)(h2o_db_conn_t *conn);
    /* optional: stops what runs on a pinned connection whose request ended (never called for a
     * shared one); when done (also on failure), the driver calls h2o_db_conn_cancelled */
    void (*cancel)(h2o_db_conn_t *conn);
    /* start-up: connects once, runs `sql` (several statements allowed), disconnects */
    int (*run_script)(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz);
    /* start-up: whatever the backend keeps per bind (SQLite: the in-memory database's keeper) */
    int (*prepare_bind)(h2o_db_bind_t *bind, char *err, size_t errsz);
    void (*dispose_bind)(h2o_db_bind_t *bind);
    /* "PostgreSQL 15.8", for --version and the status page */
    const char *(*version)(void);
};

extern const h2o_db_driver_t h2o_db_driver_postgres;
extern const h2o_db_driver_t h2o_db_driver_sqlite;
extern const h2o_db_driver_t h2o_db_driver_mysql;

const h2o_db_driver_t *h2o_db_driver_for(h2o_db_backend_t backend);

#endif
