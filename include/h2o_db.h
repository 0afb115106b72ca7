/*
 * h2o-db: pooled database sessions for H2O request handlers.
 *
 * Databases are bound by key in the config (db.bind); every worker thread keeps
 * its own pool per bind; a request carries one session per attached key, which
 * any handler fetches with h2o_db_session(). Statements run without blocking the
 * event loop and answer through a callback. See docs/c-api.md.
 */
#ifndef h2o_db_h
#define h2o_db_h

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>
#include "h2o.h"
#include "yoml.h"

/* The version of this header. meson.build refuses to configure when these differ from its
 * project version, and the embed suite compares them with h2o_db_version(). */
#define H2O_DB_VERSION_MAJOR 0
#define H2O_DB_VERSION_MINOR 1
#define H2O_DB_VERSION_PATCH 0

#define H2O_DB_DEFAULT_KEY "sa_main"

typedef struct st_h2o_db_session_t h2o_db_session_t;
typedef struct st_h2o_db_result_t h2o_db_result_t;
typedef void (*h2o_db_cb)(h2o_db_result_t *result, void *data);

/* The version of the library in use, "MAJOR.MINOR.PATCH" (it may differ from the H2O_DB_VERSION_*
 * the caller was compiled with). A static string: valid forever, never freed. Any thread. */
const char *h2o_db_version(void);

/* ---- For embedders of libh2o (docs/embedding.md); h2o-db calls these itself ---- */

/* Adds the db.* directives to a globalconf, after h2o_config_init(). Main thread, before
 * h2o_configurator_apply(); one globalconf per process (the binds are process-wide). */
void h2o_db_register_configurator(h2o_globalconf_t *conf);

/* Reads an h2o.conf-style YAML file into the tree h2o_configurator_apply() takes (Debian's libh2o
 * has no YAML parser): anchors and aliases, `!file` includes relative to the including file, every
 * node naming its file and line. Returns the tree (free it with yoml_free(root, NULL) once applied),
 * or NULL after writing "FILE:LINE:COLUMN: MESSAGE" into err. Any thread; blocking (reads files). */
yoml_t *h2o_db_yaml_load_file(const char *path, char *err, size_t errsz);
/* The same for text in memory; `filename` is what the nodes and errors name, and the folder that
 * relative paths (`!file`, db.bind's schema, sqlite:///relative) start from. */
yoml_t *h2o_db_yaml_load_string(const char *filename, const char *text, size_t len, char *err, size_t errsz);

/* After h2o_configurator_apply() and before the first h2o_context_init(): runs each bind's
 * `schema`, two-phase recovery, opens `connect-at-start` connections. Main thread; blocks (it
 * connects). Prints what failed (FILE:LINE:COLUMN: ...) to stderr; 0 on success, -1: do not serve. */
int h2o_db_prepare(h2o_globalconf_t *conf);

/* What `h2o-db -t` adds to the configurator's checks, instead of h2o_db_prepare(): lists the binds
 * on stdout, and with connect != 0 connects to every bound database once. Main thread; blocks.
 * Prints what failed to stderr; 0 on success. */
int h2o_db_check(h2o_globalconf_t *conf, int connect);

/* "postgresql via libpq 15.x, sqlite via 3.x, ...": the backends this build supports. A static
 * buffer, rewritten by each call: call it from one thread at a time. */
const char *h2o_db_backends(void);

/* NULL key means sa_main. NULL when that key is not attached on this request's path. */
h2o_db_session_t *h2o_db_session(h2o_req_t *req, const char *key);
h2o_db_session_t *h2o_db_session_for(h2o_db_session_t *s, const char *table);

/* A session outside a request (start-up tasks, timers): KEY among the binds at global level,
 * on the calling worker thread's pools (ctx: the thread's context, needed only the first time
 * h2o-db is used on that thread). It follows the same limits as request sessions. Close it
 * with h2o_db_session_close(): an open transaction is rolled back and no callback of it runs
 * afterwards. NULL when no global bind has that key. */
h2o_db_session_t *h2o_db_session_open(h2o_context_t *ctx, const char *key);
void h2o_db_session_close(h2o_db_session_t *s);

/* One statement per call; placeholders are $1..$n on every backend; params[i] == NULL is SQL NULL.
 * sql, params and the strings are copied before the call returns. Returns 0 when accepted; then the
 * callback runs exactly once, later, never from inside an h2o_db_* call. Non-zero means invalid
 * arguments (NULL session, several statements, ...): no callback runs. */
int h2o_db_query(h2o_db_session_t *s, const char *sql, size_t nparams, const char *const *params, h2o_db_cb cb, void *data);

/* A batch: n statements issued in one call and sent together, pipelined on one connection, each
 * its own transaction (autocommit) unless the session is inside begin … commit. cb runs once per
 * statement, in order, with its index 0 … n-1 (the result is valid during the call only); the
 * call with index n-1 is the last. All or nothing: 0 when every statement was queued; non-zero,
 * and no callback, for an invalid statement (as h2o_db_query), n == 0, or more statements than the
 * session may queue at once (the bind's max(pool.queue, pool.pipeline-depth)). */
typedef struct st_h2o_db_statement_t {
    const char *sql;
    size_t nparams;
    const char *const *params;
} h2o_db_statement_t;
typedef void (*h2o_db_batch_cb)(h2o_db_result_t *result, size_t index, void *data);
int h2o_db_query_batch(h2o_db_session_t *s, const h2o_db_statement_t *stmts, size_t n, h2o_db_batch_cb cb, void *data);

/* Streaming (docs/streaming.md): one statement whose rows are handed over one at a time as they
 * arrive, so that memory stays bounded whatever the result's size. on_row sees one row
 * (h2o_db_result_rows(row) == 1, valid during the call only) and returns 0 to go on, 1 to pause
 * (nothing more is delivered until h2o_db_resume(s)), -1 to stop (the rest is discarded and the
 * statement cancelled where the backend allows it). on_done runs exactly once, after the last
 * row, with the final status (rows 0; after a stop: H2O_DB_OK unless the connection failed); an
 * error may follow rows already delivered. A streamed statement runs on a connection of its own
 * (never a shared one), pinned to the session until on_done; inside begin … commit it runs on the
 * transaction's connection. Return values as h2o_db_query (on_row and on_done must not be NULL).
 * The event loop's thread only, like every h2o_db_* call. */
typedef int (*h2o_db_row_cb)(const h2o_db_result_t *row, void *data);
int h2o_db_query_rows(h2o_db_session_t *s, const char *sql, size_t nparams, const char *const *params, h2o_db_row_cb on_row,
                      h2o_db_cb on_done, void *data);
/* Continues a stream paused by on_row returning 1; the next row comes later, never from inside
 * this call. Returns 0, or -1 when nothing of s is paused. */
int h2o_db_resume(h2o_db_session_t *s);

/* Read replicas (docs/replicas.md): marks s read-only before its first statement. On a bind with
 * `replicas:` its statements then go to a healthy replica (or, with replica.fallback ON when none
 * is healthy, to the primary), h2o_db_begin begins a READ ONLY transaction, and a write fails with
 * SQLSTATE 25006 (never re-sent elsewhere). On a bind without replicas it changes nothing.
 * Returns 0, or -1 when s already ran a statement (or is NULL). */
int h2o_db_session_read_only(h2o_db_session_t *s);

int h2o_db_begin(h2o_db_session_t *s, h2o_db_cb cb, void *data);  /* error if already begun */
int h2o_db_commit(h2o_db_session_t *s, h2o_db_cb cb, void *data); /* error if not begun, and if the
                                                                    transaction had failed */
int h2o_db_rollback(h2o_db_session_t *s, h2o_db_cb cb, void *data);

typedef enum {
    H2O_DB_OK,
    H2O_DB_SQL_ERROR,   /* the database refused the statement; sqlstate is the server's */
    H2O_DB_BUSY,        /* queue full or acquire-timeout; sqlstate "53300" */
    H2O_DB_UNAVAILABLE, /* connection refused or lost; sqlstate 08xxx / 57P01..57P03 */
    H2O_DB_TIMEOUT,     /* statement-timeout or the request's bound on waiting; "57014" */
    H2O_DB_CLIENT_GONE  /* HTTP/1 client disconnected while this was pending */
} h2o_db_status_t;

/* Valid during the callback only. */
h2o_db_status_t h2o_db_result_status(const h2o_db_result_t *r);
const char *h2o_db_result_error(const h2o_db_result_t *r);    /* NULL on success */
const char *h2o_db_result_sqlstate(const h2o_db_result_t *r); /* "23505", ...; NULL on success */
size_t h2o_db_result_rows(const h2o_db_result_t *r);
size_t h2o_db_result_columns(const h2o_db_result_t *r);
const char *h2o_db_result_column_name(const h2o_db_result_t *r, size_t col);
/* The text form of the value (as PostgreSQL's text output); NULL = SQL NULL. */
const char *h2o_db_result_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len);
uint64_t h2o_db_result_affected(const h2o_db_result_t *r);
h2o_iovec_t h2o_db_result_json(h2o_mem_pool_t *pool, const h2o_db_result_t *r); /* [{"col":value,...}] typed */

/* Answers the request with the HTTP error that fits a failed result; the body never carries SQL,
 * parameters or connection details:
 *   BUSY -> 503 + Retry-After   UNAVAILABLE -> 503 + Retry-After   TIMEOUT -> 504
 *   CLIENT_GONE -> 499 (nobody reads it; it lets the request end)   SQL_ERROR -> 500 */
void h2o_db_send_error(h2o_req_t *req, const h2o_db_result_t *r);

/* ---- LISTEN/NOTIFY (docs/c-api.md, docs/directives/db.listen.md) ---- */

/* A subscription to one PostgreSQL channel on the calling worker thread. Every thread has one
 * LISTEN connection per bind (outside the pool's max), opened by the first subscription and
 * shared by all of them (db.listen paths included). Events, on the subscribing thread:
 *   READY        the LISTEN is in effect (once, before any NOTIFY of this subscription)
 *   NOTIFY       channel and payload of one NOTIFY, in the order PostgreSQL sent them
 *   LOST         the connection broke: NOTIFYs sent from now until RECONNECTED are lost
 *   RECONNECTED  a new connection LISTENs again (after the pool's back-off, at most 250 ms apart)
 * channel and payload are valid during the call only (payload NULL but for NOTIFY). */
typedef struct st_h2o_db_listen_t h2o_db_listen_t;
typedef enum { H2O_DB_LISTEN_READY, H2O_DB_LISTEN_NOTIFY, H2O_DB_LISTEN_LOST, H2O_DB_LISTEN_RECONNECTED } h2o_db_listen_event_t;
typedef void (*h2o_db_listen_cb)(h2o_db_listen_t *handle, h2o_db_listen_event_t event, const char *channel, const char *payload,
                                 void *data);

/* Subscribes cb to `channel` (1..63 bytes, no control characters; quoted as an identifier, so
 * "Orders" and "orders" differ) of the PostgreSQL bind KEY at global level (NULL: sa_main), on
 * the calling worker thread (ctx: its context). Returns the handle, or NULL when no global
 * PostgreSQL bind has that key or the channel name is invalid. cb never runs from inside this
 * call. The worker thread only; the handle lives until h2o_db_unlisten or the thread stops. */
h2o_db_listen_t *h2o_db_listen(h2o_context_t *ctx, const char *key, const char *channel, h2o_db_listen_cb cb, void *data);
/* Ends a subscription (UNLISTEN once a channel has no subscriber left): no callback of it runs
 * afterwards. Allowed inside its own callback. Owner thread. */
void h2o_db_unlisten(h2o_db_listen_t *handle);

#ifdef __cplusplus
}
#endif

#endif
