/*
 * The MySQL / MariaDB driver's internals, shared by its files:
 *   mysql.c               the step machine: which connector call runs, and what follows
 *                         (connect, setup, the FIFO of statements, their cache, the answers)
 *   mysql_conn.c          the connection on the loop: open (options, where to connect),
 *                         waiting for I/O, failing, cancel (KILL QUERY), close; start-up
 *   mysql_stmt.c          prepared statements: made, cached, bound, closed between jobs
 *   mysql_errors.c        MySQL's errors in PostgreSQL's terms
 *   mysql_placeholders.c  PostgreSQL's $1..$n rewritten to MySQL's ?
 *   mysql_rows.c          rows of both protocols as PostgreSQL-like text with types (a stored
 *                         result, or a streamed one row by row)
 */
#ifndef h2o_db_driver_mysql_h
#define h2o_db_driver_mysql_h

#include <mysql.h>
#include "driver/buf.h"
#include "driver/stmt_cache.h"
#include "driver/driver.h"

/* where a connection is in its life (c->phase) */
enum { H2O_DB_MYSQL_RESOLVE, H2O_DB_MYSQL_CONNECT, H2O_DB_MYSQL_SETUP, H2O_DB_MYSQL_READY, H2O_DB_MYSQL_BROKEN };

/* The rows of the result being answered, as text, and the buffers that fetch them from the binary
 * protocol (reused from statement to statement). */
typedef struct st_h2o_db_mysql_rows_t {
    size_t rows, columns;
    struct buf names;     /* NUL-terminated, back to back */
    struct buf name_offs; /* uint32_t per column */
    struct buf cells;     /* struct cell[rows * columns] (mysql_rows.c) */
    struct buf text;      /* the values, NUL-terminated */
    int too_large;
    MYSQL_BIND *binds; /* per column, where mysql_stmt_fetch writes */
    size_t binds_cap;
    struct buf data; /* the buffers binds point to */
    struct buf meta; /* per column: unsigned long length; my_bool is_null, error */
} h2o_db_mysql_rows_t;

/* One parameter of a job: its bytes in job->values (NUL-terminated), or SQL NULL. */
typedef struct st_h2o_db_mysql_param_t {
    size_t off, len;
    int null;
} h2o_db_mysql_param_t;

/* A statement the pool sent, copied (the pool may forget its op before it runs). */
typedef struct st_h2o_db_mysql_job_t {
    h2o_db_wire_kind_t kind;
    int text;               /* a text query (BEGIN, COMMIT, ROLLBACK) rather than a prepared statement */
    int no_cache;           /* one-off SQL: not for the statement cache */
    int commit_as_rollback; /* a COMMIT of a transaction that failed here: sent as ROLLBACK, answered 25P02 */
    int stream;             /* wire.stream: its rows are fetched one at a time and handed over as they come */
    struct buf sql;
    size_t nparams;
    struct buf params; /* h2o_db_mysql_param_t[nparams] */
    struct buf values; /* the parameters' bytes */
} h2o_db_mysql_job_t;

/* A prepared statement (the value of a stmt_cache entry, or a one-off). */
typedef struct st_h2o_db_mysql_prepared_t {
    MYSQL_STMT *stmt;
    unsigned nmarks;  /* ? in the statement */
    unsigned *map;    /* ? number i binds parameter map[i] (0-based) */
    unsigned nneeded; /* the highest $n referenced */
    MYSQL_BIND *binds;
    unsigned long *lengths;
} h2o_db_mysql_prepared_t;

typedef struct st_h2o_db_mysql_conn_t {
    h2o_db_pipe_t super;
    int stopped; /* the pool stopped reading from it (its result callback returned -1) */
    MYSQL *mysql;
    int phase, step;
    int in_call; /* a connector call waits for I/O: resume it with its _cont */
    uv_poll_t *poll;
    int poll_fd, poll_events;
    uv_timer_t io_timer;      /* MYSQL_WAIT_TIMEOUT */
    uv_timer_t connect_timer; /* the whole connect + setup */
    uv_getaddrinfo_t gai;
    char *address; /* the numeric address to connect to, or NULL (unix socket, or a name TLS verifies) */
    int is_mariadb;
    /* the results of connector calls */
    MYSQL *ret_mysql;
    int ret_int;
    my_bool ret_bool;
    MYSQL_RES *ret_res;
    char *setup_sql;
    /* the FIFO of statements sent, oldest first; jobs[head] runs */
    h2o_db_mysql_job_t *jobs;
    size_t head, count, capacity;
    int job_running;
    /* the statement of the running job */
    h2o_db_cached_t *entry;           /* its cache entry, or NULL (one-off) */
    h2o_db_mysql_prepared_t *current; /* what it executes */
    struct buf psql;                  /* its SQL with ? (while preparing) */
    int drop_rows;                    /* a further result of a text query: dropped */
    h2o_db_result_t result;           /* its answer, kept while further results are drained */
    uint64_t streamed;                /* a streamed job's rows handed over so far */
    h2o_db_later_t resume_later;      /* a paused stream fetches again on the next iteration */
    /* the transaction, as PostgreSQL keeps it: after an error inside it, statements are refused
     * (25P02) and COMMIT rolls back, also when they were sent before the error was known */
    int in_txn, txn_failed;
    char message[256]; /* the text of an error made here */
    /* statements to close (evicted, or one-offs done) before the next job */
    MYSQL_STMT **closing;
    size_t num_closing, closing_cap;
    h2o_db_stmt_cache_t cache;
    /* the answer being built */
    h2o_db_mysql_rows_t rows;
    h2o_db_flusher_t flusher;
    h2o_db_later_t start_later; /* connecting starts on the next iteration, never inside open() */
    h2o_db_later_t fail_later;
    h2o_db_later_t cancelled_later; /* a cancel that ends at once is reported on the next iteration */
    int handshake_done;             /* mysql_real_connect succeeded: mysql_close says goodbye */
    unsigned long thread_id;        /* the server's id of this connection (KILL QUERY) */
    struct cancel_work *cancel;     /* under way on the thread pool */
    char fail_sqlstate[6];
    char fail_message[256];
    int handles_open;
} h2o_db_mysql_conn_t;

/* mysql.c: the step machine */

/* Runs connector calls until one waits for I/O, or there is nothing to do. ready: 0 to start the
 * current step, otherwise what happened (MYSQL_WAIT_*) to resume the call that waits. */
void h2o_db_mysql_drive(h2o_db_mysql_conn_t *c, int ready);
/* Where to connect is known (c->address, or the URL's): starts mysql_real_connect. */
void h2o_db_mysql_start_handshake(h2o_db_mysql_conn_t *c);
/* Ends a connector call that waits, without waiting: the socket is shut, so it fails at once. */
void h2o_db_mysql_abandon_call(h2o_db_mysql_conn_t *c);
/* Frees what the step machine keeps (statements, jobs, rows), once the connector is closed. */
void h2o_db_mysql_dispose_steps(h2o_db_mysql_conn_t *c);

/* mysql_conn.c: the connection on the loop */

/* Starts connecting a new connection (c->super copied from the pool's prototype): where to connect first. */
void h2o_db_mysql_connect(h2o_db_mysql_conn_t *c);
/* The connector call waits (status: its MYSQL_WAIT_* mask): watch what it asks for. */
void h2o_db_mysql_wait_for(h2o_db_mysql_conn_t *c, int status);
/* Nothing runs: watch the socket, as a readable one now means the server is closing it. */
void h2o_db_mysql_watch_idle(h2o_db_mysql_conn_t *c);
/* A stream is paused: nothing is read (the server feels it), nor taken for the server closing. */
void h2o_db_mysql_unwatch(h2o_db_mysql_conn_t *c);
/* Fails the connection (once) and tells the pool why. */
void h2o_db_mysql_fail(h2o_db_mysql_conn_t *c, const char *sqlstate, const char *message);
/* The same with the connector's error (fallback_sqlstate while connecting, unless it says 08xxx). */
void h2o_db_mysql_fail_from_mysql(h2o_db_mysql_conn_t *c, const char *fallback_sqlstate);
/* The same on the next iteration of the loop (for failures noticed where no callback may run). */
void h2o_db_mysql_fail_later(h2o_db_mysql_conn_t *c, const char *sqlstate, const char *message);
/* The driver's cancel (KILL QUERY) and close. */
void h2o_db_mysql_cancel(h2o_db_pipe_t *conn);
void h2o_db_mysql_close(h2o_db_pipe_t *conn);
/* mysql_library_init, once per process (it is not thread-safe). */
void h2o_db_mysql_library_init(void);
/* Start-up (blocking): connects once, runs `sql`, disconnects. */
int h2o_db_mysql_run_script(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz);

/* mysql_stmt.c: prepared statements */

/* A statement for sql, to be prepared (STEP_PREPARE: its SQL with ? is in c->psql); NULL with
 * sqlstate and msg set. */
h2o_db_mysql_prepared_t *h2o_db_mysql_prepared_new(h2o_db_mysql_conn_t *c, const char *sql, size_t len, const char **sqlstate,
                                                   char *msg, size_t msgsz);
/* c->current was prepared for job: the cache keeps it (unless job is a one-off). */
void h2o_db_mysql_prepared_keep(h2o_db_mysql_conn_t *c, const h2o_db_mysql_job_t *job);
/* Frees p; its MYSQL_STMT is closed before the next job (never while another call runs). */
void h2o_db_mysql_prepared_drop(h2o_db_mysql_conn_t *c, h2o_db_mysql_prepared_t *p);
/* The cache's on_evict. */
void h2o_db_mysql_prepared_evicted(void *ctx, h2o_db_cached_t *entry);
/* Binds job's parameters to c->current; returns 0, or -1 with r an error. */
int h2o_db_mysql_bind_params(h2o_db_mysql_conn_t *c, const h2o_db_mysql_job_t *job, h2o_db_result_t *r);
/* Frees every prepared statement, once mysql_close detached them. */
void h2o_db_mysql_prepared_dispose(h2o_db_mysql_conn_t *c);

/* mysql_errors.c */

/* Whether an error means the connection cannot be used any more. */
int h2o_db_mysql_is_connection_error(unsigned err, const char *sqlstate);
/* The SQLSTATE a lost connection reports: the server shutting down is PostgreSQL's admin_shutdown. */
const char *h2o_db_mysql_lost_sqlstate(unsigned err);
/* A statement error: the server's SQLSTATE and message; statement timeouts answer TIMEOUT. */
void h2o_db_mysql_result_error(h2o_db_result_t *r, unsigned err, const char *sqlstate, const char *message);

/* mysql_placeholders.c */

/* Rewrites PostgreSQL's $1..$n into MySQL's ? (into out, NUL-terminated); map[i] is the parameter
 * the i-th ? binds (0-based, malloc'ed), nneeded the highest $n. Returns 0, or -1 with sqlstate and
 * msg set. */
int h2o_db_mysql_rewrite_placeholders(const char *sql, size_t len, struct buf *out, unsigned **map, unsigned *nmarks,
                                      unsigned *nneeded, const char **sqlstate, char *msg, size_t msgsz);

/* mysql_rows.c */

/* The stored rows of an executed statement (binary protocol) into rs, and r pointing at them.
 * Returns 0, or -1 with r an error. */
int h2o_db_mysql_read_stmt_rows(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt, h2o_db_result_t *r);
/* The same for a stored result of the text protocol. */
int h2o_db_mysql_read_text_rows(h2o_db_mysql_rows_t *rs, MYSQL_RES *res, h2o_db_result_t *r);
/* A streamed result of an executed statement (binary protocol, not stored): its columns into rs,
 * the fetch buffers bound. Returns 0, or -1 when out of memory. */
int h2o_db_mysql_stream_begin(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt);
/* The row just fetched into rs (alone), and r pointing at it (r->rows == 1). Returns 0, or -1 with
 * r an error. */
int h2o_db_mysql_stream_row(h2o_db_mysql_rows_t *rs, MYSQL_STMT *stmt, h2o_db_result_t *r);
/* Empties rs once its result is delivered. */
void h2o_db_mysql_rows_reset(h2o_db_mysql_rows_t *rs);
void h2o_db_mysql_rows_free(h2o_db_mysql_rows_t *rs);

#endif
