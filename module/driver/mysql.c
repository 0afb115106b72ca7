/*
 * MySQL / MariaDB: MariaDB Connector/C's non-blocking API on the thread's libuv loop.
 *
 * Connector/C runs each call in a coroutine of its own: a `_start` function returns a
 * mask of MYSQL_WAIT_READ / _WRITE / _TIMEOUT when it would block, and the matching
 * `_cont` function resumes it once the socket (a uv_poll on mysql_get_socket) or the
 * timer (mysql_get_timeout_value_ms) says so. One connection's life, top to bottom:
 *   resolve   a host name goes through uv_getaddrinfo (the connector would resolve it
 *             synchronously) and reaches the connector as a numeric address
 *   connect   mysql_real_connect_start/_cont (CLIENT_FOUND_ROWS: UPDATE counts the
 *             rows it matched, as PostgreSQL does; CLIENT_MULTI_STATEMENTS for on-connect)
 *   setup     max_statement_time (statement-timeout) and on-connect, as one text query
 *   ready     MySQL has no pipelining: statements the pool sends while one runs wait in
 *             this driver's FIFO (copied: the pool may drop their ops) and run one at a
 *             time, answered strictly in order. A statement is a server-side prepared
 *             statement ($1..$n rewritten to ?, see translate()), cached per connection
 *             (stmt_cache.h), executed with every parameter bound as text, its rows
 *             stored (mysql_stmt_store_result_start/_cont, so that fetching them is
 *             memory only) and turned into PostgreSQL-like text with types.
 *             BEGIN/COMMIT/ROLLBACK go as text queries.
 *
 * A connection whose socket breaks, or that reports a client-side (CR_*) error, is
 * failed and closed; it is never reused. While idle, a readable socket means the
 * server is closing it (shutdown, KILL, wait_timeout): it is failed at once.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <errmsg.h>
#include <math.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include "driver/driver.h"
#include "driver/stmt_cache.h"
#include "pool.h"
#include "session.h"

#define CONNECT_TIMEOUT_MS 10000
#define COROUTINE_STACK    (128 * 1024) /* the connector's default (16 KB) is tight for a TLS handshake */
#define MAX_RESULT_BYTES   (1024u * 1024 * 1024)
#define MAX_MARKS          65535

enum { PHASE_RESOLVE, PHASE_CONNECT, PHASE_SETUP, PHASE_READY, PHASE_BROKEN };

/* what the connection is doing right now (one connector call at a time) */
enum {
    STEP_IDLE,
    STEP_CONNECT,     /* mysql_real_connect */
    STEP_SETUP_QUERY, /* on-connect: mysql_real_query */
    STEP_SETUP_STORE, /* ... mysql_store_result of one of its statements */
    STEP_SETUP_NEXT,  /* ... mysql_next_result */
    STEP_CLOSE_STMT,  /* mysql_stmt_close of a statement that left the cache */
    STEP_PREPARE,     /* mysql_stmt_prepare */
    STEP_EXECUTE,     /* mysql_stmt_execute */
    STEP_STMT_STORE,  /* mysql_stmt_store_result */
    STEP_STMT_NEXT,   /* mysql_stmt_next_result (a CALL's further results: dropped) */
    STEP_STMT_STORE_MORE /* mysql_stmt_store_result of such a further result */,
    STEP_TEXT_QUERY, /* mysql_real_query (BEGIN, COMMIT, ROLLBACK, what cannot be prepared) */
    STEP_TEXT_STORE, /* mysql_store_result */
    STEP_TEXT_NEXT   /* mysql_next_result */
};

struct buf {
    char *base;
    size_t len, cap;
};

struct param {
    size_t off, len;
    int null;
};

/* a statement the pool sent, copied (the pool may forget its op before it runs) */
struct job {
    h2o_db_op_kind_t kind;
    int text;               /* a text query (BEGIN, COMMIT, ROLLBACK) rather than a prepared statement */
    int no_cache;           /* one-off SQL: not for the statement cache */
    int commit_as_rollback; /* a COMMIT of a transaction that failed here: sent as ROLLBACK, answered 25P02 */
    struct buf sql;
    size_t nparams;
    struct buf params; /* struct param[nparams] */
    struct buf values; /* the parameters' bytes */
};

/* a prepared statement (the value of a stmt_cache entry, or a one-off) */
struct prepared {
    MYSQL_STMT *stmt;
    unsigned nmarks;  /* ? in the statement */
    unsigned *map;    /* ? number i binds parameter map[i] (0-based) */
    unsigned nneeded; /* the highest $n referenced */
    MYSQL_BIND *binds;
    unsigned long *lengths;
};

/* KILL QUERY needs a connection of its own, opened the blocking way: on libuv's thread pool */
struct cancel_work {
    uv_work_t work;
    const h2o_db_bind_t *bind;
    char *address;
    unsigned long thread_id;
    struct my_conn *conn; /* NULL once the connection is gone */
};

struct cell {
    uint32_t off, len;
    uint8_t type; /* h2o_db_type_t */
};

/* the rows of the result being answered, as text (reused from statement to statement) */
struct rows {
    size_t rows, columns;
    struct buf names;     /* NUL-terminated, back to back */
    struct buf name_offs; /* uint32_t per column */
    struct buf cells;     /* struct cell[rows * columns] */
    struct buf text;      /* the values, NUL-terminated */
    int too_large;
};

struct my_conn {
    h2o_db_conn_t super;
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
    struct job *jobs;
    size_t head, count, capacity;
    int job_running;
    /* the statement of the running job */
    h2o_db_stmt_t *entry;     /* its cache entry, or NULL (one-off) */
    struct prepared *current; /* what it executes */
    struct buf psql;          /* its SQL with ? (while preparing) */
    int drop_rows;            /* a further result of a text query: dropped */
    h2o_db_result_t result;   /* its answer, kept while further results are drained */
    /* the transaction, as PostgreSQL keeps it: after an error inside it, statements are refused
     * (25P02) and COMMIT rolls back, also when they were sent before the error was known */
    int in_txn, txn_failed;
    char message[256]; /* the text of an error made here */
    /* statements to close (evicted, or one-offs done) before the next job */
    MYSQL_STMT **closing;
    size_t num_closing, closing_cap;
    h2o_db_stmt_cache_t cache;
    /* the answer being built */
    struct rows rows;
    MYSQL_BIND *out_binds;
    size_t out_binds_cap;
    struct buf out_data;
    struct buf out_meta; /* per column: unsigned long length; my_bool is_null, error */
    uint64_t affected;
    h2o_db_flusher_t flusher;
    h2o_db_later_t start_later; /* connecting starts on the next iteration, never inside open() */
    h2o_db_later_t fail_later;
    int handshake_done;         /* mysql_real_connect succeeded: mysql_close says goodbye */
    unsigned long thread_id;    /* the server's id of this connection (KILL QUERY) */
    struct cancel_work *cancel; /* under way on the thread pool */
    char fail_sqlstate[6];
    char fail_message[256];
    int handles_open;
};

static void drive(struct my_conn *c, int ready);
static void on_evict(void *ctx, h2o_db_stmt_t *stmt);

/* mysql_library_init is not thread-safe, and mysql_init calls it when nobody did */
static pthread_once_t library_once = PTHREAD_ONCE_INIT;

static void library_init(void)
{
    mysql_library_init(0, NULL, NULL);
}

/* ---- small buffers ---- */

static int buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap == 0 ? 256 : b->cap;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->base, cap);
    if (p == NULL)
        return -1;
    b->base = p;
    b->cap = cap;
    return 0;
}

static int buf_add(struct buf *b, const void *data, size_t len)
{
    if (buf_reserve(b, len) != 0)
        return -1;
    if (len != 0)
        memcpy(b->base + b->len, data, len);
    b->len += len;
    return 0;
}

/* results can be large: do not keep a large buffer once it is delivered */
static void buf_trim(struct buf *b)
{
    b->len = 0;
    if (b->cap > 1024 * 1024) {
        free(b->base);
        b->base = NULL;
        b->cap = 0;
    }
}

static void buf_free(struct buf *b)
{
    free(b->base);
    memset(b, 0, sizeof(*b));
}

/* ---- $n → ? ---- */

static int is_ident_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '$' || ch >= 0x80;
}

/* Rewrites PostgreSQL's $1..$n into MySQL's ?, outside quotes ('...', "...", `...`) and comments
 * (-- , #, / * * /; MySQL's executable comments / *! ... * / are SQL and rewritten). $n may come
 * in any order and more than once: map[i] is the parameter the i-th ? binds. Returns 0, or -1
 * with sqlstate and message set. */
static int translate(const char *sql, size_t len, struct buf *out, unsigned **map, unsigned *nmarks, unsigned *nneeded,
                     const char **sqlstate, char *msg, size_t msgsz)
{
    size_t cap = 0;
    *map = NULL;
    *nmarks = 0;
    *nneeded = 0;
    out->len = 0;
    if (buf_reserve(out, len + 1) != 0)
        goto NoMem;
    for (size_t i = 0; i < len;) {
        unsigned char ch = (unsigned char)sql[i];
        size_t start = i;
        if (ch == '\'' || ch == '"' || ch == '`') {
            /* a literal or a quoted name: up to the closing quote (a doubled quote closes and reopens) */
            for (++i; i < len && (unsigned char)sql[i] != ch; ++i)
                if (sql[i] == '\\' && ch != '`' && i + 1 < len)
                    ++i;
            if (i < len)
                ++i;
        } else if (ch == '#' || (ch == '-' && i + 2 < len + 1 && i + 1 < len && sql[i + 1] == '-' &&
                                 (i + 2 == len || (unsigned char)sql[i + 2] <= ' '))) {
            while (i < len && sql[i] != '\n')
                ++i;
        } else if (ch == '/' && i + 1 < len && sql[i + 1] == '*' && !(i + 2 < len && sql[i + 2] == '!')) {
            const char *end = NULL;
            for (size_t j = i + 2; j + 1 < len; ++j) {
                if (sql[j] == '*' && sql[j + 1] == '/') {
                    end = sql + j + 2;
                    break;
                }
            }
            i = end != NULL ? (size_t)(end - sql) : len;
        } else if (ch == '?') {
            *sqlstate = "42601";
            snprintf(msg, msgsz, "use $1, $2, ... for parameters (as on PostgreSQL), not ?");
            goto Error;
        } else if (ch == '$' && i + 1 < len && sql[i + 1] >= '0' && sql[i + 1] <= '9' &&
                   (i == 0 || !is_ident_char((unsigned char)sql[i - 1]))) {
            unsigned long n = 0;
            for (++i; i < len && sql[i] >= '0' && sql[i] <= '9'; ++i)
                if ((n = n * 10 + (unsigned long)(sql[i] - '0')) > MAX_MARKS)
                    n = MAX_MARKS + 1;
            if (n == 0 || n > MAX_MARKS) {
                *sqlstate = "42P02";
                snprintf(msg, msgsz, "there is no parameter $%lu", n);
                goto Error;
            }
            if (*nmarks == MAX_MARKS) {
                *sqlstate = "54000";
                snprintf(msg, msgsz, "too many parameters in one statement (at most %u)", MAX_MARKS);
                goto Error;
            }
            if (*nmarks == cap) {
                cap = cap == 0 ? 8 : cap * 2;
                unsigned *p = realloc(*map, sizeof(unsigned) * cap);
                if (p == NULL)
                    goto NoMem;
                *map = p;
            }
            (*map)[(*nmarks)++] = (unsigned)(n - 1);
            if (n > *nneeded)
                *nneeded = (unsigned)n;
            out->base[out->len++] = '?';
            continue;
        } else {
            ++i;
        }
        memcpy(out->base + out->len, sql + start, i - start);
        out->len += i - start;
    }
    out->base[out->len] = '\0';
    return 0;
NoMem:
    *sqlstate = "53200";
    snprintf(msg, msgsz, "out of memory");
Error:
    free(*map);
    *map = NULL;
    return -1;
}

/* ---- text forms ---- */

/* The shortest text that reads back as the same double (PostgreSQL's float8 output). */
static int format_double(char *buf, size_t size, double v)
{
    if (isnan(v))
        return snprintf(buf, size, "NaN");
    if (isinf(v))
        return snprintf(buf, size, v > 0 ? "Infinity" : "-Infinity");
    for (int prec = 15; prec <= 17; ++prec) {
        int n = snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return n;
    }
    return snprintf(buf, size, "%.17g", v);
}

/* ... and for a float (float4) */
static int format_float(char *buf, size_t size, float v)
{
    if (isnan(v))
        return snprintf(buf, size, "NaN");
    if (isinf(v))
        return snprintf(buf, size, v > 0 ? "Infinity" : "-Infinity");
    for (int prec = 6; prec <= 9; ++prec) {
        int n = snprintf(buf, size, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            return n;
    }
    return snprintf(buf, size, "%.9g", (double)v);
}

/* PostgreSQL's text form of a date or time */
static int format_time(char *buf, size_t size, enum enum_field_types type, const MYSQL_TIME *t)
{
    int n;
    switch (type) {
    case MYSQL_TYPE_DATE:
        return snprintf(buf, size, "%04u-%02u-%02u", t->year, t->month, t->day);
    case MYSQL_TYPE_TIME:
        n = snprintf(buf, size, "%s%02u:%02u:%02u", t->neg ? "-" : "", t->day * 24 + t->hour, t->minute, t->second);
        break;
    default:
        n = snprintf(buf, size, "%04u-%02u-%02u %02u:%02u:%02u", t->year, t->month, t->day, t->hour, t->minute, t->second);
        break;
    }
    if (t->second_part != 0 && n > 0 && (size_t)n + 8 < size) {
        n += snprintf(buf + n, size - n, ".%06lu", (unsigned long)t->second_part);
        while (buf[n - 1] == '0')
            buf[--n] = '\0';
    }
    return n;
}

static int is_bool_field(const MYSQL_FIELD *f)
{
    return (f->type == MYSQL_TYPE_TINY && f->length == 1) || (f->type == MYSQL_TYPE_BIT && f->length == 1);
}

static int is_json_field(const MYSQL_FIELD *f)
{
    if (f->type == MYSQL_TYPE_JSON)
        return 1;
    /* MariaDB's JSON is LONGTEXT; its extended metadata names the format */
    MARIADB_CONST_STRING attr;
    return mariadb_field_attr(&attr, f, MARIADB_FIELD_ATTR_FORMAT_NAME) == 0 && attr.length == 4 &&
           strncasecmp(attr.str, "json", 4) == 0;
}

static int is_string_type(enum enum_field_types t)
{
    switch (t) {
    case MYSQL_TYPE_VARCHAR:
    case MYSQL_TYPE_VAR_STRING:
    case MYSQL_TYPE_STRING:
    case MYSQL_TYPE_TINY_BLOB:
    case MYSQL_TYPE_MEDIUM_BLOB:
    case MYSQL_TYPE_LONG_BLOB:
    case MYSQL_TYPE_BLOB:
    case MYSQL_TYPE_GEOMETRY:
        return 1;
    default:
        return 0;
    }
}

static int add_text(struct rows *rs, h2o_db_type_t type, const char *data, size_t len)
{
    struct cell cell = {(uint32_t)rs->text.len, (uint32_t)len, (uint8_t)type};
    if (type != H2O_DB_TYPE_NULL && (rs->text.len + len + 1 > MAX_RESULT_BYTES)) {
        rs->too_large = 1;
        return -1;
    }
    if (type != H2O_DB_TYPE_NULL && (buf_add(&rs->text, data, len) != 0 || buf_add(&rs->text, "", 1) != 0))
        return -1;
    return buf_add(&rs->cells, &cell, sizeof(cell));
}

static int add_hex(struct rows *rs, const unsigned char *b, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    struct cell cell = {(uint32_t)rs->text.len, (uint32_t)(2 + n * 2), H2O_DB_TYPE_BYTES};
    if (rs->text.len + cell.len + 1 > MAX_RESULT_BYTES) {
        rs->too_large = 1;
        return -1;
    }
    if (buf_reserve(&rs->text, cell.len + 1) != 0)
        return -1;
    char *dst = rs->text.base + rs->text.len;
    *dst++ = '\\';
    *dst++ = 'x';
    for (size_t i = 0; i < n; ++i) {
        *dst++ = hex[b[i] >> 4];
        *dst++ = hex[b[i] & 15];
    }
    *dst = '\0';
    rs->text.len += cell.len + 1;
    return buf_add(&rs->cells, &cell, sizeof(cell));
}

/* A value that arrived as bytes (the text protocol, or a string-bound column of the binary one). */
static int add_bytes_value(struct rows *rs, const MYSQL_FIELD *f, const char *data, size_t len)
{
    char num[64];
    int n;
    if (data == NULL)
        return add_text(rs, H2O_DB_TYPE_NULL, NULL, 0);
    switch (f->type) {
    case MYSQL_TYPE_TINY:
    case MYSQL_TYPE_SHORT:
    case MYSQL_TYPE_LONG:
    case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONGLONG:
    case MYSQL_TYPE_YEAR:
        if (is_bool_field(f) && len == 1 && (data[0] == '0' || data[0] == '1'))
            return add_text(rs, H2O_DB_TYPE_BOOL, data[0] == '1' ? "t" : "f", 1);
        return add_text(rs, H2O_DB_TYPE_INT, data, len);
    case MYSQL_TYPE_FLOAT:
    case MYSQL_TYPE_DOUBLE: {
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(len < sizeof(tmp) ? len : sizeof(tmp) - 1), data);
        n = f->type == MYSQL_TYPE_FLOAT ? format_float(num, sizeof(num), strtof(tmp, NULL))
                                        : format_double(num, sizeof(num), strtod(tmp, NULL));
        return add_text(rs, H2O_DB_TYPE_FLOAT, num, (size_t)n);
    }
    case MYSQL_TYPE_DECIMAL:
    case MYSQL_TYPE_NEWDECIMAL:
        return add_text(rs, H2O_DB_TYPE_NUMERIC, data, len);
    case MYSQL_TYPE_NULL:
        return add_text(rs, H2O_DB_TYPE_NULL, NULL, 0);
    case MYSQL_TYPE_BIT: {
        uint64_t v = 0;
        for (size_t i = 0; i < len && i < 8; ++i)
            v = (v << 8) | (unsigned char)data[i];
        if (is_bool_field(f))
            return add_text(rs, H2O_DB_TYPE_BOOL, v ? "t" : "f", 1);
        n = snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
        return add_text(rs, H2O_DB_TYPE_INT, num, (size_t)n);
    }
    case MYSQL_TYPE_JSON:
        return add_text(rs, H2O_DB_TYPE_JSON, data, len);
    default:
        if (is_string_type(f->type)) {
            if (f->charsetnr == 63) /* binary */
                return add_hex(rs, (const unsigned char *)data, len);
            if (is_json_field(f))
                return add_text(rs, H2O_DB_TYPE_JSON, data, len);
        }
        /* ENUM, SET, dates and times in the text protocol, ... */
        return add_text(rs, H2O_DB_TYPE_TEXT, data, len);
    }
}

static int add_names(struct rows *rs, const MYSQL_FIELD *fields, size_t n)
{
    rs->columns = n;
    for (size_t i = 0; i < n; ++i) {
        uint32_t off = (uint32_t)rs->names.len;
        const char *name = fields[i].name != NULL ? fields[i].name : "?column?";
        if (buf_add(&rs->name_offs, &off, sizeof(off)) != 0 || buf_add(&rs->names, name, strlen(name) + 1) != 0)
            return -1;
    }
    return 0;
}

static void rows_reset(struct rows *rs)
{
    rs->rows = rs->columns = 0;
    rs->too_large = 0;
    buf_trim(&rs->names);
    buf_trim(&rs->name_offs);
    buf_trim(&rs->cells);
    buf_trim(&rs->text);
}

static void rows_free(struct rows *rs)
{
    buf_free(&rs->names);
    buf_free(&rs->name_offs);
    buf_free(&rs->cells);
    buf_free(&rs->text);
}

/* ---- results ---- */

static const char *my_column_name(const h2o_db_result_t *r, size_t col)
{
    const struct rows *rs = r->impl;
    return rs->names.base + ((const uint32_t *)rs->name_offs.base)[col];
}

static const char *my_value(const h2o_db_result_t *r, size_t row, size_t col, size_t *len)
{
    const struct rows *rs = r->impl;
    const struct cell *cell = (const struct cell *)rs->cells.base + row * rs->columns + col;
    if (cell->type == H2O_DB_TYPE_NULL)
        return NULL;
    *len = cell->len;
    return rs->text.base + cell->off;
}

static h2o_db_type_t my_type(const h2o_db_result_t *r, size_t row, size_t col)
{
    const struct rows *rs = r->impl;
    return (h2o_db_type_t)((const struct cell *)rs->cells.base + row * rs->columns + col)->type;
}

static const h2o_db_result_class_t my_result_class = {my_column_name, my_value, my_type};

/* ---- errors ---- */

/* Client-side errors that concern one statement, not the connection. */
static int is_statement_client_error(unsigned err)
{
    switch (err) {
    case CR_NO_PREPARE_STMT:
    case CR_PARAMS_NOT_BOUND:
    case 2032: /* CR_DATA_TRUNCATED */
    case 2033: /* CR_NO_PARAMETERS_EXISTS */
    case CR_INVALID_PARAMETER_NO:
    case CR_INVALID_BUFFER_USE:
    case CR_UNSUPPORTED_PARAM_TYPE:
    case CR_NO_DATA:
    case CR_NO_STMT_METADATA:
    case 2053: /* CR_NO_RESULT_SET */
    case CR_NOT_IMPLEMENTED:
    case CR_STMT_CLOSED:
    case CR_NEW_STMT_METADATA:
    case CR_FUNCTION_NOT_SUPPORTED:
    case CR_BULK_WITHOUT_PARAMETERS:
    case CR_INVALID_STMT:
    case CR_INVALID_PARAMETER:
    case CR_ERR_STMT_PARAM_CALLBACK:
        return 1;
    default:
        return 0;
    }
}

/* Whether an error means the connection cannot be used any more. */
static int is_connection_error(unsigned err, const char *sqlstate)
{
    if ((err >= CR_MIN_ERROR && err <= CR_MAX_ERROR) || (err >= 5000 && err < 6000)) /* the connector's own */
        return !is_statement_client_error(err);
    switch (err) {
    case ER_SERVER_SHUTDOWN:
    case ER_CONNECTION_KILLED:
    case ER_NET_READ_ERROR:
    case ER_NET_READ_INTERRUPTED:
    case ER_NET_ERROR_ON_WRITE:
    case ER_NET_WRITE_INTERRUPTED:
    case ER_NET_PACKETS_OUT_OF_ORDER:
    case ER_NET_UNCOMPRESS_ERROR:
    case ER_ABORTING_CONNECTION:
    case ER_NEW_ABORTING_CONNECTION:
        return 1;
    }
    return sqlstate != NULL && strncmp(sqlstate, "08", 2) == 0;
}

/* The SQLSTATE a lost connection reports: the server shutting down is PostgreSQL's admin_shutdown. */
static const char *lost_sqlstate(unsigned err)
{
    return err == ER_SERVER_SHUTDOWN ? "57P01" : "08006";
}

/* A statement error: the server's SQLSTATE and message; statement timeouts answer TIMEOUT. */
static void result_error(h2o_db_result_t *r, unsigned err, const char *sqlstate, const char *message)
{
    if (err == ER_STATEMENT_TIMEOUT || err == 3024 /* MySQL's ER_QUERY_TIMEOUT */ || err == ER_QUERY_INTERRUPTED) {
        h2o_db_result_init_error(r, H2O_DB_TIMEOUT, "57014", message);
        return;
    }
    if (sqlstate == NULL || strlen(sqlstate) != 5 || strcmp(sqlstate, "00000") == 0)
        sqlstate = "HY000";
    h2o_db_status_t status = h2o_db_status_for_sqlstate(sqlstate);
    h2o_db_result_init_error(r, status == H2O_DB_OK ? H2O_DB_SQL_ERROR : status, sqlstate, message);
}

/* ---- failure ---- */

static void fail(struct my_conn *c, const char *sqlstate, const char *message)
{
    if (c->phase == PHASE_BROKEN)
        return;
    int connecting = c->phase != PHASE_READY;
    c->phase = PHASE_BROKEN;
    if (c->poll != NULL)
        uv_poll_stop(c->poll);
    c->poll_events = 0;
    uv_timer_stop(&c->io_timer);
    uv_timer_stop(&c->connect_timer);
    h2o_db_pool_t *pool = c->super.pool;
    if (connecting && !pool->down && !pool->closing)
        fprintf(stderr, "h2o-db: [%s] cannot connect to %s: %s\n", pool->bind->key, pool->bind->url.display, message);
    else if (!connecting && !pool->closing)
        fprintf(stderr, "h2o-db: [%s] connection to %s lost: %s\n", pool->bind->key, pool->bind->url.display, message);
    h2o_db_conn_failed(&c->super, sqlstate, message);
}

static void fail_from_mysql(struct my_conn *c, const char *fallback_sqlstate)
{
    char msg[256];
    unsigned err = mysql_errno(c->mysql);
    const char *state = mysql_sqlstate(c->mysql);
    snprintf(msg, sizeof(msg), "%s", err != 0 ? mysql_error(c->mysql) : "connection failure");
    msg[strcspn(msg, "\n")] = '\0';
    if (c->phase == PHASE_READY)
        fail(c, lost_sqlstate(err), msg);
    else
        fail(c, state != NULL && strncmp(state, "08", 2) == 0 ? state : fallback_sqlstate, msg);
}

static void on_fail_later(h2o_db_later_t *later)
{
    struct my_conn *c = H2O_STRUCT_FROM_MEMBER(struct my_conn, fail_later, later);
    fail(c, c->fail_sqlstate, c->fail_message);
}

/* ---- polling ---- */

static void on_poll(uv_poll_t *poll, int status, int events);

static int watch(struct my_conn *c, int events)
{
    int fd = (int)mysql_get_socket(c->mysql);
    if (fd < 0) {
        fail(c, c->phase == PHASE_READY ? "08006" : "08001", "the database connection has no socket");
        return -1;
    }
    if (c->poll != NULL && c->poll_fd != fd) {
        uv_close((uv_handle_t *)c->poll, (uv_close_cb)free);
        c->poll = NULL;
    }
    if (c->poll == NULL) {
        c->poll = malloc(sizeof(*c->poll));
        if (uv_poll_init(c->super.pool->thread->loop, c->poll, fd) != 0) {
            free(c->poll);
            c->poll = NULL;
            fail(c, "08006", "cannot watch the database socket");
            return -1;
        }
        c->poll->data = c;
        c->poll_fd = fd;
        c->poll_events = 0;
    }
    if (events != c->poll_events) {
        if (events == 0)
            uv_poll_stop(c->poll);
        else
            uv_poll_start(c->poll, events, on_poll);
        c->poll_events = events;
    }
    return 0;
}

static void on_io_timeout(uv_timer_t *timer)
{
    struct my_conn *c = timer->data;
    if (c->phase != PHASE_BROKEN && c->in_call)
        drive(c, MYSQL_WAIT_TIMEOUT);
}

/* The connector call waits: watch what it asks for. */
static void wait_for(struct my_conn *c, int status)
{
    c->in_call = 1;
    int events = ((status & MYSQL_WAIT_READ) != 0 ? UV_READABLE : 0) | ((status & MYSQL_WAIT_WRITE) != 0 ? UV_WRITABLE : 0);
    if (watch(c, events) != 0)
        return;
    if ((status & MYSQL_WAIT_TIMEOUT) != 0)
        uv_timer_start(&c->io_timer, on_io_timeout, mysql_get_timeout_value_ms(c->mysql), 0);
    else
        uv_timer_stop(&c->io_timer);
}

/* Nothing runs: a readable socket now means the server is closing the connection. */
static void watch_idle(struct my_conn *c)
{
    uv_timer_stop(&c->io_timer);
    watch(c, UV_READABLE);
}

static void on_idle_readable(struct my_conn *c)
{
    unsigned char buf[512];
    ssize_t n = recv(c->poll_fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n > 0 && mysql_get_ssl_cipher(c->mysql) != NULL) {
        /* TLS may have something to say (e.g. TLS 1.3 session tickets): the next statement will tell */
        watch(c, 0);
        return;
    }
    char msg[256] = "the server closed the connection";
    const char *sqlstate = "08006";
    /* an error packet: 3 bytes length, 1 sequence, 0xff, 2 bytes code, '#', 5 bytes SQLSTATE, message */
    if (n > 13 && buf[4] == 0xff && buf[7] == '#') {
        unsigned err = buf[5] | (buf[6] << 8);
        size_t len = (size_t)(buf[0] | (buf[1] << 8) | (buf[2] << 16));
        size_t avail = (size_t)n - 13, mlen = len > 9 ? len - 9 : 0;
        if (mlen > avail)
            mlen = avail;
        snprintf(msg, sizeof(msg), "%.*s", (int)mlen, (const char *)buf + 13);
        msg[strcspn(msg, "\n")] = '\0';
        sqlstate = lost_sqlstate(err);
    }
    fail(c, sqlstate, msg);
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    struct my_conn *c = poll->data;
    if (c == NULL || c->phase == PHASE_BROKEN)
        return;
    if (!c->in_call) {
        if (c->phase == PHASE_READY)
            on_idle_readable(c);
        return;
    }
    int ready = 0;
    if (status < 0) {
        /* let the connector find out what is wrong */
        ready = MYSQL_WAIT_READ | MYSQL_WAIT_WRITE;
    } else {
        if ((events & UV_READABLE) != 0)
            ready |= MYSQL_WAIT_READ;
        if ((events & UV_WRITABLE) != 0)
            ready |= MYSQL_WAIT_WRITE;
    }
    if (ready != 0)
        drive(c, ready);
}

/* ---- statements ---- */

static void prepared_free(struct prepared *p)
{
    if (p == NULL)
        return;
    free(p->map);
    free(p->binds);
    free(p->lengths);
    free(p);
}

/* Queues a statement's MYSQL_STMT for closing before the next job (it cannot be closed while
 * another connector call runs). */
static void close_later(struct my_conn *c, MYSQL_STMT *stmt)
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

static void on_evict(void *ctx, h2o_db_stmt_t *entry)
{
    struct my_conn *c = ctx;
    struct prepared *p = entry->value;
    entry->value = NULL;
    if (entry == c->entry) {
        /* the running job's: it is closed when the job ends */
        c->entry = NULL;
        return;
    }
    if (p != NULL) {
        close_later(c, p->stmt);
        prepared_free(p);
    }
}

static struct job *current_job(struct my_conn *c)
{
    return c->jobs + c->head;
}

/* Binds the job's parameters to the running statement. */
static int bind_params(struct my_conn *c, struct job *job, h2o_db_result_t *r)
{
    struct prepared *p = c->current;
    if (p->nneeded > job->nparams) {
        snprintf(c->message, sizeof(c->message), "there is no parameter $%u", p->nneeded);
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "42P02", c->message);
        return -1;
    }
    if (p->nmarks == 0)
        return 0;
    const struct param *params = (const struct param *)job->params.base;
    memset(p->binds, 0, sizeof(*p->binds) * p->nmarks);
    for (unsigned i = 0; i < p->nmarks; ++i) {
        const struct param *pa = params + p->map[i];
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
        result_error(r, mysql_stmt_errno(p->stmt), mysql_stmt_sqlstate(p->stmt), mysql_stmt_error(p->stmt));
        return -1;
    }
    return 0;
}

/* The output binding of one column of the binary protocol. */
struct colmeta {
    unsigned long length;
    my_bool is_null, error;
};

static int bind_results(struct my_conn *c, MYSQL_STMT *stmt, size_t ncols, const MYSQL_FIELD *fields)
{
    if (ncols > c->out_binds_cap) {
        MYSQL_BIND *b = realloc(c->out_binds, sizeof(*b) * ncols);
        if (b == NULL)
            return -1;
        c->out_binds = b;
        c->out_binds_cap = ncols;
    }
    /* room: per column its metadata and its buffer (8-byte aligned) */
    size_t need = 0;
    for (size_t i = 0; i < ncols; ++i) {
        const MYSQL_FIELD *f = fields + i;
        size_t size;
        switch (f->type) {
        case MYSQL_TYPE_TINY:
        case MYSQL_TYPE_SHORT:
        case MYSQL_TYPE_LONG:
        case MYSQL_TYPE_INT24:
        case MYSQL_TYPE_LONGLONG:
        case MYSQL_TYPE_YEAR:
        case MYSQL_TYPE_FLOAT:
        case MYSQL_TYPE_DOUBLE:
            size = 8;
            break;
        case MYSQL_TYPE_DATE:
        case MYSQL_TYPE_TIME:
        case MYSQL_TYPE_DATETIME:
        case MYSQL_TYPE_TIMESTAMP:
            size = sizeof(MYSQL_TIME);
            break;
        default:
            size = f->max_length + 1;
            break;
        }
        need += (size + 7) / 8 * 8;
    }
    c->out_meta.len = 0;
    c->out_data.len = 0;
    if (buf_reserve(&c->out_meta, sizeof(struct colmeta) * ncols) != 0 || buf_reserve(&c->out_data, need + 8) != 0)
        return -1;
    struct colmeta *meta = (struct colmeta *)c->out_meta.base;
    char *data = c->out_data.base;
    memset(c->out_binds, 0, sizeof(MYSQL_BIND) * ncols);
    for (size_t i = 0; i < ncols; ++i) {
        const MYSQL_FIELD *f = fields + i;
        MYSQL_BIND *b = c->out_binds + i;
        size_t size;
        switch (f->type) {
        case MYSQL_TYPE_TINY:
        case MYSQL_TYPE_SHORT:
        case MYSQL_TYPE_LONG:
        case MYSQL_TYPE_INT24:
        case MYSQL_TYPE_LONGLONG:
        case MYSQL_TYPE_YEAR:
            b->buffer_type = MYSQL_TYPE_LONGLONG;
            b->is_unsigned = (f->flags & UNSIGNED_FLAG) != 0;
            size = 8;
            break;
        case MYSQL_TYPE_FLOAT:
            b->buffer_type = MYSQL_TYPE_FLOAT;
            size = 8;
            break;
        case MYSQL_TYPE_DOUBLE:
            b->buffer_type = MYSQL_TYPE_DOUBLE;
            size = 8;
            break;
        case MYSQL_TYPE_DATE:
        case MYSQL_TYPE_TIME:
        case MYSQL_TYPE_DATETIME:
        case MYSQL_TYPE_TIMESTAMP:
            b->buffer_type = f->type;
            size = sizeof(MYSQL_TIME);
            break;
        default:
            b->buffer_type = MYSQL_TYPE_STRING;
            size = f->max_length + 1;
            break;
        }
        b->buffer = data;
        b->buffer_length = (unsigned long)size;
        b->length = &meta[i].length;
        b->is_null = &meta[i].is_null;
        b->error = &meta[i].error;
        data += (size + 7) / 8 * 8;
    }
    return mysql_stmt_bind_result(stmt, c->out_binds) ? -1 : 0;
}

/* One value of the binary protocol, as text. */
static int add_binary_value(struct my_conn *c, MYSQL_STMT *stmt, const MYSQL_FIELD *f, size_t col)
{
    MYSQL_BIND *b = c->out_binds + col;
    struct colmeta *meta = (struct colmeta *)c->out_meta.base + col;
    struct rows *rs = &c->rows;
    char num[64];
    int n;
    if (meta->is_null)
        return add_text(rs, H2O_DB_TYPE_NULL, NULL, 0);
    switch (b->buffer_type) {
    case MYSQL_TYPE_LONGLONG: {
        long long v;
        memcpy(&v, b->buffer, sizeof(v));
        if (is_bool_field(f) && (v == 0 || v == 1))
            return add_text(rs, H2O_DB_TYPE_BOOL, v ? "t" : "f", 1);
        n = b->is_unsigned ? snprintf(num, sizeof(num), "%llu", (unsigned long long)v) : snprintf(num, sizeof(num), "%lld", v);
        return add_text(rs, H2O_DB_TYPE_INT, num, (size_t)n);
    }
    case MYSQL_TYPE_FLOAT: {
        float v;
        memcpy(&v, b->buffer, sizeof(v));
        n = format_float(num, sizeof(num), v);
        return add_text(rs, H2O_DB_TYPE_FLOAT, num, (size_t)n);
    }
    case MYSQL_TYPE_DOUBLE: {
        double v;
        memcpy(&v, b->buffer, sizeof(v));
        n = format_double(num, sizeof(num), v);
        return add_text(rs, H2O_DB_TYPE_FLOAT, num, (size_t)n);
    }
    case MYSQL_TYPE_DATE:
    case MYSQL_TYPE_TIME:
    case MYSQL_TYPE_DATETIME:
    case MYSQL_TYPE_TIMESTAMP: {
        MYSQL_TIME t;
        memcpy(&t, b->buffer, sizeof(t));
        n = format_time(num, sizeof(num), b->buffer_type, &t);
        return add_text(rs, H2O_DB_TYPE_TEXT, num, (size_t)n);
    }
    default:
        break;
    }
    if (meta->length > b->buffer_length) {
        /* longer than the column's max_length said: fetch it whole */
        struct buf big = {0};
        if (buf_reserve(&big, meta->length + 1) != 0)
            return -1;
        MYSQL_BIND one;
        unsigned long len = 0;
        memset(&one, 0, sizeof(one));
        one.buffer_type = MYSQL_TYPE_STRING;
        one.buffer = big.base;
        one.buffer_length = meta->length + 1;
        one.length = &len;
        int ret = mysql_stmt_fetch_column(stmt, &one, (unsigned)col, 0) != 0 ? -1 : add_bytes_value(rs, f, big.base, len);
        buf_free(&big);
        return ret;
    }
    return add_bytes_value(rs, f, b->buffer, meta->length);
}

/* The stored rows of the running statement, as text. */
static int read_stmt_rows(struct my_conn *c, h2o_db_result_t *r)
{
    MYSQL_STMT *stmt = c->current->stmt;
    size_t ncols = mysql_stmt_field_count(stmt);
    const MYSQL_FIELD *fields = stmt->fields;
    rows_reset(&c->rows);
    if (add_names(&c->rows, fields, ncols) != 0 || bind_results(c, stmt, ncols, fields) != 0)
        goto NoMem;
    for (;;) {
        int ret = mysql_stmt_fetch(stmt); /* from the stored result: no I/O */
        if (ret == MYSQL_NO_DATA)
            break;
        if (ret == 1) {
            result_error(r, mysql_stmt_errno(stmt), mysql_stmt_sqlstate(stmt), mysql_stmt_error(stmt));
            return -1;
        }
        for (size_t i = 0; i < ncols; ++i)
            if (add_binary_value(c, stmt, fields + i, i) != 0)
                goto NoMem;
        ++c->rows.rows;
    }
    h2o_db_result_init_ok(r, c->rows.rows);
    r->rows = c->rows.rows;
    r->columns = ncols;
    r->cls = &my_result_class;
    r->impl = &c->rows;
    return 0;
NoMem:
    if (c->rows.too_large)
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "54000", "the result is larger than 1 GB");
    else
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "53200", "out of memory");
    return -1;
}

/* The rows of a text-protocol result, as text. */
static int read_text_rows(struct my_conn *c, MYSQL_RES *res, h2o_db_result_t *r)
{
    size_t ncols = mysql_num_fields(res);
    const MYSQL_FIELD *fields = mysql_fetch_fields(res);
    MYSQL_ROW row;
    rows_reset(&c->rows);
    if (add_names(&c->rows, fields, ncols) != 0)
        goto NoMem;
    while ((row = mysql_fetch_row(res)) != NULL) { /* a stored result: no I/O */
        unsigned long *lengths = mysql_fetch_lengths(res);
        for (size_t i = 0; i < ncols; ++i)
            if (add_bytes_value(&c->rows, fields + i, row[i], row[i] != NULL ? lengths[i] : 0) != 0)
                goto NoMem;
        ++c->rows.rows;
    }
    h2o_db_result_init_ok(r, c->rows.rows);
    r->rows = c->rows.rows;
    r->columns = ncols;
    r->cls = &my_result_class;
    r->impl = &c->rows;
    return 0;
NoMem:
    if (c->rows.too_large)
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "54000", "the result is larger than 1 GB");
    else
        h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "53200", "out of memory");
    return -1;
}

/* ---- the job FIFO ---- */

static struct job *push_job(struct my_conn *c)
{
    if (c->count == c->capacity) {
        size_t cap = c->capacity == 0 ? 4 : c->capacity * 2;
        struct job *jobs = calloc(cap, sizeof(*jobs));
        if (jobs == NULL)
            return NULL;
        for (size_t i = 0; i < c->capacity; ++i)
            jobs[i] = c->jobs[(c->head + i) % c->capacity];
        free(c->jobs);
        c->jobs = jobs;
        c->head = 0;
        c->capacity = cap;
    }
    struct job *job = c->jobs + (c->head + c->count++) % c->capacity;
    job->sql.len = 0;
    job->params.len = 0;
    job->values.len = 0;
    job->nparams = 0;
    job->text = 0;
    job->no_cache = 0;
    job->commit_as_rollback = 0;
    return job;
}

static void pop_job(struct my_conn *c)
{
    struct job *job = c->jobs + c->head;
    buf_trim(&job->sql);
    buf_trim(&job->values);
    buf_trim(&job->params);
    c->head = (c->head + 1) % c->capacity;
    --c->count;
}

/* The running job is answered: hand its result to the pool (which may send more, or fail the
 * connection, from inside the callbacks). Returns 0 when the connection goes on. */
/* "ROLLBACK TO [SAVEPOINT] name": what ends the failed state of a transaction, as on PostgreSQL */
static int is_rollback_to(const char *sql)
{
    sql += strspn(sql, " \t\r\n");
    if (strncasecmp(sql, "ROLLBACK", 8) != 0 || strchr(" \t\r\n", sql[8]) == NULL || sql[8] == '\0')
        return 0;
    sql += 8;
    sql += strspn(sql, " \t\r\n");
    return strncasecmp(sql, "TO", 2) == 0 && sql[2] != '\0' && strchr(" \t\r\n", sql[2]) != NULL;
}

/* Keeps the transaction state (see in_txn) as a job is answered with r. */
static void track_txn(struct my_conn *c, struct job *job, h2o_db_result_t *r)
{
    switch (job->kind) {
    case H2O_DB_OP_BEGIN:
        c->in_txn = r->status == H2O_DB_OK;
        c->txn_failed = 0;
        break;
    case H2O_DB_OP_COMMIT:
    case H2O_DB_OP_ROLLBACK:
        if (job->commit_as_rollback && r->status == H2O_DB_OK)
            h2o_db_result_init_error(r, H2O_DB_SQL_ERROR, "25P02",
                                     "the transaction had failed, so it was rolled back instead of committed");
        c->in_txn = 0;
        c->txn_failed = 0;
        break;
    default:
        if (c->in_txn && r->status != H2O_DB_OK)
            c->txn_failed = 1;
        else if (c->in_txn && c->txn_failed && is_rollback_to(job->sql.base))
            c->txn_failed = 0;
        break;
    }
}

static int answer(struct my_conn *c, h2o_db_result_t *r)
{
    struct prepared *p = c->current;
    track_txn(c, current_job(c), r);
    if (p != NULL) {
        unsigned err = r->status != H2O_DB_OK ? mysql_stmt_errno(p->stmt) : 0;
        if (c->entry != NULL && (err == ER_UNKNOWN_STMT_HANDLER || err == ER_NEED_REPREPARE || err == CR_NEW_STMT_METADATA))
            h2o_db_stmt_cache_remove(&c->cache, c->entry); /* prepared anew next time (c->entry is now NULL) */
        if (c->entry == NULL) {
            /* a one-off, or it left the cache while it ran */
            close_later(c, p->stmt);
            prepared_free(p);
        }
    }
    c->current = NULL;
    c->entry = NULL;
    c->job_running = 0;
    c->step = STEP_IDLE;
    pop_job(c);
    h2o_db_conn_result(&c->super, r);
    rows_reset(&c->rows);
    return c->phase == PHASE_READY && c->super.state == H2O_DB_CONN_READY ? 0 : -1;
}

static int answer_error(struct my_conn *c, h2o_db_status_t status, const char *sqlstate, const char *message)
{
    h2o_db_result_t r;
    h2o_db_result_init_error(&r, status, sqlstate, message);
    return answer(c, &r);
}

/* A statement failed: either the connection is gone (fail it) or answer the error. */
static int answer_stmt_error(struct my_conn *c, MYSQL_STMT *stmt)
{
    unsigned err = mysql_stmt_errno(stmt);
    const char *state = mysql_stmt_sqlstate(stmt);
    if (is_connection_error(err, state)) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", mysql_stmt_error(stmt));
        fail(c, lost_sqlstate(err), msg);
        return -1;
    }
    h2o_db_result_t r;
    result_error(&r, err, state, mysql_stmt_error(stmt));
    return answer(c, &r);
}

static int answer_mysql_error(struct my_conn *c)
{
    unsigned err = mysql_errno(c->mysql);
    const char *state = mysql_sqlstate(c->mysql);
    if (is_connection_error(err, state)) {
        fail_from_mysql(c, "08006");
        return -1;
    }
    h2o_db_result_t r;
    result_error(&r, err, state, mysql_error(c->mysql));
    return answer(c, &r);
}

/* ---- running statements ---- */

/* Binds and executes the running statement; returns 0 when the step starts, 1 when the job was
 * answered without the server (the caller goes on), -1 when the connection broke. */
static int start_execute(struct my_conn *c)
{
    h2o_db_result_t r;
    if (bind_params(c, current_job(c), &r) != 0)
        return answer(c, &r) == 0 ? 1 : -1;
    c->step = STEP_EXECUTE;
    return 0;
}

/* Starts the job at the head of the FIFO; returns as start_execute. */
static int start_job(struct my_conn *c)
{
    struct job *job = current_job(c);
    h2o_db_pool_t *pool = c->super.pool;
    c->job_running = 1;
    c->current = NULL;
    c->entry = NULL;
    c->drop_rows = 0;
    if (c->txn_failed) {
        if (job->kind == H2O_DB_OP_QUERY && !is_rollback_to(job->sql.base))
            return answer_error(c, H2O_DB_SQL_ERROR, "25P02",
                                "current transaction is aborted, commands ignored until end of transaction block") == 0
                       ? 1
                       : -1;
        if (job->kind == H2O_DB_OP_COMMIT) {
            job->sql.len = 0;
            if (buf_add(&job->sql, "ROLLBACK", 9) != 0)
                return answer_error(c, H2O_DB_SQL_ERROR, "53200", "out of memory") == 0 ? 1 : -1;
            job->sql.len = 8;
            job->commit_as_rollback = 1;
        }
    }
    if (job->text) {
        c->step = STEP_TEXT_QUERY;
        return 0;
    }
    if (!job->no_cache && c->cache.capacity != 0) {
        h2o_db_stmt_t *entry = h2o_db_stmt_cache_get(&c->cache, job->sql.base, job->sql.len);
        if (entry != NULL && entry->value != NULL) {
            ++pool->stats.cache_hits;
            c->entry = entry;
            c->current = entry->value;
            return start_execute(c);
        }
        ++pool->stats.cache_misses;
    }
    /* prepare it */
    const char *sqlstate;
    char msg[128];
    struct prepared *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return answer_error(c, H2O_DB_SQL_ERROR, "53200", "out of memory") == 0 ? 1 : -1;
    if (translate(job->sql.base, job->sql.len, &c->psql, &p->map, &p->nmarks, &p->nneeded, &sqlstate, msg, sizeof(msg)) != 0) {
        free(p);
        return answer_error(c, H2O_DB_SQL_ERROR, sqlstate, msg) == 0 ? 1 : -1;
    }
    p->binds = calloc(p->nmarks + 1, sizeof(*p->binds));
    p->lengths = calloc(p->nmarks + 1, sizeof(*p->lengths));
    if (p->binds == NULL || p->lengths == NULL || (p->stmt = mysql_stmt_init(c->mysql)) == NULL) {
        prepared_free(p);
        return answer_error(c, H2O_DB_SQL_ERROR, "53200", "out of memory") == 0 ? 1 : -1;
    }
    my_bool on = 1;
    mysql_stmt_attr_set(p->stmt, STMT_ATTR_UPDATE_MAX_LENGTH, &on);
    c->current = p;
    c->step = STEP_PREPARE;
    return 0;
}

/* Chooses the next step; returns 0 when one is to start, -1 when idle (or broken). */
static int next_step(struct my_conn *c)
{
    for (;;) {
        if (c->phase != PHASE_READY || c->super.state != H2O_DB_CONN_READY)
            return -1;
        if (c->num_closing != 0) {
            c->step = STEP_CLOSE_STMT;
            return 0;
        }
        if (c->count == 0) {
            c->step = STEP_IDLE;
            return -1;
        }
        int ret = start_job(c);
        if (ret <= 0)
            return ret;
    }
}

/* The running job is complete: answer with c->result and go on. */
static int finish_job(struct my_conn *c)
{
    h2o_db_result_t r = c->result;
    if (answer(c, &r) != 0)
        return -1;
    return next_step(c);
}

/* After a result of the text protocol: what comes next. */
static int text_more(struct my_conn *c)
{
    if (mysql_more_results(c->mysql)) {
        c->step = STEP_TEXT_NEXT;
        return 0;
    }
    return finish_job(c);
}

static int stmt_more(struct my_conn *c)
{
    if (mysql_stmt_more_results(c->current->stmt)) {
        c->step = STEP_STMT_NEXT;
        return 0;
    }
    return finish_job(c);
}

static int after_stmt_error(struct my_conn *c)
{
    if (answer_stmt_error(c, c->current->stmt) != 0)
        return -1;
    return next_step(c);
}

static int after_mysql_error(struct my_conn *c)
{
    if (answer_mysql_error(c) != 0)
        return -1;
    return next_step(c);
}

/* ---- connecting ---- */

static void on_connect_timeout(uv_timer_t *timer)
{
    struct my_conn *c = timer->data;
    fail(c, "08001", "timed out while connecting to the database");
}

static int enter_ready(struct my_conn *c)
{
    free(c->setup_sql);
    c->setup_sql = NULL;
    c->phase = PHASE_READY;
    c->step = STEP_IDLE;
    uv_timer_stop(&c->connect_timer);
    h2o_db_conn_connected(&c->super);
    return next_step(c);
}

static int setup_failed(struct my_conn *c)
{
    char msg[300];
    const char *state = mysql_sqlstate(c->mysql);
    snprintf(msg, sizeof(msg), "on-connect failed: %s", mysql_error(c->mysql));
    msg[strcspn(msg, "\n")] = '\0';
    /* a broken setup statement is a configuration problem: report it as the database refusing */
    fail(c, state != NULL && strlen(state) == 5 && strcmp(state, "00000") != 0 ? state : "08006", msg);
    return -1;
}

static int setup_more(struct my_conn *c)
{
    if (mysql_field_count(c->mysql) > 0) {
        c->step = STEP_SETUP_STORE;
        return 0;
    }
    if (mysql_more_results(c->mysql)) {
        c->step = STEP_SETUP_NEXT;
        return 0;
    }
    return enter_ready(c);
}

static int connected(struct my_conn *c)
{
    h2o_db_bind_t *bind = c->super.pool->bind;
    c->handshake_done = 1;
    c->is_mariadb = mariadb_connection(c->mysql);
    c->thread_id = mysql_thread_id(c->mysql);
    char timeout_sql[96] = "";
    if (bind->pool.statement_timeout != 0) {
        if (c->is_mariadb)
            snprintf(timeout_sql, sizeof(timeout_sql), "SET SESSION max_statement_time = %.3f;",
                     bind->pool.statement_timeout / 1000.0);
        else
            snprintf(timeout_sql, sizeof(timeout_sql), "SET SESSION max_execution_time = %llu;",
                     (unsigned long long)bind->pool.statement_timeout);
    }
    if (timeout_sql[0] == '\0' && bind->on_connect == NULL)
        return enter_ready(c);
    size_t len = strlen(timeout_sql) + (bind->on_connect != NULL ? strlen(bind->on_connect) : 0) + 1;
    c->setup_sql = malloc(len);
    snprintf(c->setup_sql, len, "%s%s", timeout_sql, bind->on_connect != NULL ? bind->on_connect : "");
    c->phase = PHASE_SETUP;
    c->step = STEP_SETUP_QUERY;
    return 0;
}

/* ---- the connector's calls ---- */

/* Starts (ready == 0) or resumes the current step's connector call; returns its wait mask. */
static int call(struct my_conn *c, int ready)
{
    h2o_db_url_t *url = &c->super.pool->bind->url;
    struct job *job = c->count != 0 ? current_job(c) : NULL;
    MYSQL_STMT *stmt = c->current != NULL ? c->current->stmt : NULL;
    switch (c->step) {
    case STEP_CONNECT: {
        if (ready != 0)
            return mysql_real_connect_cont(&c->ret_mysql, c->mysql, ready);
        const char *password = c->super.pool->bind->password != NULL ? c->super.pool->bind->password : url->mysql.password;
        const char *host = url->mysql.unix_socket != NULL ? "localhost" : c->address != NULL ? c->address : url->mysql.host;
        return mysql_real_connect_start(&c->ret_mysql, c->mysql, host, url->mysql.user, password, url->mysql.database,
                                        url->mysql.port, url->mysql.unix_socket, CLIENT_MULTI_STATEMENTS | CLIENT_FOUND_ROWS);
    }
    case STEP_SETUP_QUERY:
        return ready != 0 ? mysql_real_query_cont(&c->ret_int, c->mysql, ready)
                          : mysql_real_query_start(&c->ret_int, c->mysql, c->setup_sql, (unsigned long)strlen(c->setup_sql));
    case STEP_TEXT_QUERY:
        return ready != 0 ? mysql_real_query_cont(&c->ret_int, c->mysql, ready)
                          : mysql_real_query_start(&c->ret_int, c->mysql, job->sql.base, (unsigned long)job->sql.len);
    case STEP_SETUP_STORE:
    case STEP_TEXT_STORE:
        return ready != 0 ? mysql_store_result_cont(&c->ret_res, c->mysql, ready) : mysql_store_result_start(&c->ret_res, c->mysql);
    case STEP_SETUP_NEXT:
    case STEP_TEXT_NEXT:
        return ready != 0 ? mysql_next_result_cont(&c->ret_int, c->mysql, ready) : mysql_next_result_start(&c->ret_int, c->mysql);
    case STEP_CLOSE_STMT:
        return ready != 0 ? mysql_stmt_close_cont(&c->ret_bool, c->closing[c->num_closing - 1], ready)
                          : mysql_stmt_close_start(&c->ret_bool, c->closing[c->num_closing - 1]);
    case STEP_PREPARE:
        return ready != 0 ? mysql_stmt_prepare_cont(&c->ret_int, stmt, ready)
                          : mysql_stmt_prepare_start(&c->ret_int, stmt, c->psql.base, (unsigned long)c->psql.len);
    case STEP_EXECUTE:
        return ready != 0 ? mysql_stmt_execute_cont(&c->ret_int, stmt, ready) : mysql_stmt_execute_start(&c->ret_int, stmt);
    case STEP_STMT_STORE:
    case STEP_STMT_STORE_MORE:
        return ready != 0 ? mysql_stmt_store_result_cont(&c->ret_int, stmt, ready)
                          : mysql_stmt_store_result_start(&c->ret_int, stmt);
    case STEP_STMT_NEXT:
        return ready != 0 ? mysql_stmt_next_result_cont(&c->ret_int, stmt, ready) : mysql_stmt_next_result_start(&c->ret_int, stmt);
    default:
        return 0;
    }
}

/* The current step's call is complete: decide what comes next. Returns 0 when another step is
 * to start, -1 when there is nothing to do (idle, or the connection broke). */
static int step_done(struct my_conn *c)
{
    struct prepared *p = c->current;
    switch (c->step) {
    case STEP_CONNECT:
        if (c->ret_mysql == NULL) {
            fail_from_mysql(c, "08001");
            return -1;
        }
        return connected(c);
    case STEP_SETUP_QUERY:
        if (c->ret_int != 0)
            return setup_failed(c);
        return setup_more(c);
    case STEP_SETUP_STORE:
        if (c->ret_res == NULL && mysql_errno(c->mysql) != 0)
            return setup_failed(c);
        mysql_free_result(c->ret_res); /* stored: no I/O */
        c->ret_res = NULL;
        if (mysql_more_results(c->mysql)) {
            c->step = STEP_SETUP_NEXT;
            return 0;
        }
        return enter_ready(c);
    case STEP_SETUP_NEXT:
        if (c->ret_int > 0)
            return setup_failed(c);
        if (c->ret_int == 0)
            return setup_more(c);
        return enter_ready(c);
    case STEP_CLOSE_STMT:
        --c->num_closing;
        if (c->ret_bool && is_connection_error(mysql_errno(c->mysql), mysql_sqlstate(c->mysql))) {
            fail_from_mysql(c, "08006");
            return -1;
        }
        return next_step(c);
    case STEP_PREPARE:
        if (c->ret_int != 0) {
            if (mysql_stmt_errno(p->stmt) == ER_UNSUPPORTED_PS && p->nmarks == 0) {
                /* not for the prepared-statement protocol (and without parameters): as text */
                close_later(c, p->stmt);
                prepared_free(p);
                c->current = NULL;
                c->step = STEP_TEXT_QUERY;
                return 0;
            }
            return after_stmt_error(c);
        }
        if (!current_job(c)->no_cache && c->cache.capacity != 0) {
            struct job *job = current_job(c);
            h2o_db_stmt_t *entry = h2o_db_stmt_cache_get(&c->cache, job->sql.base, job->sql.len);
            if (entry == NULL)
                entry = h2o_db_stmt_cache_put(&c->cache, job->sql.base, job->sql.len);
            if (entry != NULL) {
                if (entry->value != NULL) {
                    struct prepared *old = entry->value;
                    close_later(c, old->stmt);
                    prepared_free(old);
                }
                entry->value = p;
                c->entry = entry;
            }
        }
        buf_trim(&c->psql);
        switch (start_execute(c)) {
        case 0:
            return 0;
        case 1:
            return next_step(c);
        default:
            return -1;
        }
    case STEP_EXECUTE:
        if (c->ret_int != 0)
            return after_stmt_error(c);
        if (mysql_stmt_field_count(p->stmt) > 0) {
            c->step = STEP_STMT_STORE;
            return 0;
        }
        h2o_db_result_init_ok(&c->result, mysql_stmt_affected_rows(p->stmt));
        return stmt_more(c);
    case STEP_STMT_STORE:
        if (c->ret_int != 0)
            return after_stmt_error(c);
        read_stmt_rows(c, &c->result);
        mysql_stmt_free_result(p->stmt); /* stored: no I/O */
        return stmt_more(c);
    case STEP_STMT_NEXT:
        if (c->ret_int > 0)
            return after_stmt_error(c);
        if (c->ret_int < 0)
            return finish_job(c);
        if (mysql_stmt_field_count(p->stmt) > 0) {
            c->step = STEP_STMT_STORE_MORE;
            return 0;
        }
        return stmt_more(c);
    case STEP_STMT_STORE_MORE:
        /* a CALL's further results: the first one answers */
        if (c->ret_int != 0)
            return after_stmt_error(c);
        mysql_stmt_free_result(p->stmt);
        return stmt_more(c);
    case STEP_TEXT_QUERY:
        if (c->ret_int != 0)
            return after_mysql_error(c);
        if (mysql_field_count(c->mysql) > 0) {
            c->step = STEP_TEXT_STORE;
            return 0;
        }
        h2o_db_result_init_ok(&c->result, mysql_affected_rows(c->mysql));
        return text_more(c);
    case STEP_TEXT_STORE:
        if (c->ret_res == NULL)
            return after_mysql_error(c);
        if (!c->drop_rows)
            read_text_rows(c, c->ret_res, &c->result);
        mysql_free_result(c->ret_res); /* stored: no I/O */
        c->ret_res = NULL;
        return text_more(c);
    case STEP_TEXT_NEXT:
        if (c->ret_int > 0)
            return after_mysql_error(c);
        if (c->ret_int < 0)
            return finish_job(c);
        if (mysql_field_count(c->mysql) > 0) {
            /* only the first result answers: the others are stored and dropped */
            c->drop_rows = 1;
            c->step = STEP_TEXT_STORE;
            return 0;
        }
        return text_more(c);
    default:
        return -1;
    }
}

/* Runs connector calls until one waits for I/O, or there is nothing to do. ready: 0 to start the
 * current step, otherwise what happened (MYSQL_WAIT_*) to resume the call that waits. */
static void drive(struct my_conn *c, int ready)
{
    while (c->phase != PHASE_BROKEN) {
        int status = call(c, c->in_call ? ready : 0);
        ready = 0;
        if (status != 0) {
            wait_for(c, status);
            return;
        }
        c->in_call = 0;
        if (step_done(c) != 0) {
            if (c->phase == PHASE_READY && c->step == STEP_IDLE && c->super.state == H2O_DB_CONN_READY)
                watch_idle(c);
            return;
        }
    }
}

static void on_flush(h2o_db_flusher_t *flusher)
{
    struct my_conn *c = H2O_STRUCT_FROM_MEMBER(struct my_conn, flusher, flusher);
    if (c->phase != PHASE_READY || c->in_call || c->step != STEP_IDLE)
        return;
    if (next_step(c) == 0)
        drive(c, 0);
}

/* ---- open ---- */

static void start_connect(struct my_conn *c)
{
    c->phase = PHASE_CONNECT;
    c->step = STEP_CONNECT;
    drive(c, 0);
}

static void on_start_later(h2o_db_later_t *later)
{
    struct my_conn *c = H2O_STRUCT_FROM_MEMBER(struct my_conn, start_later, later);
    if (c->phase == PHASE_RESOLVE)
        start_connect(c);
}

static void free_conn(struct my_conn *c);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct my_conn *c = req->data;
    if (--c->handles_open == 0) {
        /* closed while resolving */
        uv_freeaddrinfo(res);
        free_conn(c);
        return;
    }
    if (c->phase == PHASE_BROKEN) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status != 0 || res == NULL) {
        char msg[300];
        snprintf(msg, sizeof(msg), "could not resolve host \"%s\": %s", c->super.pool->bind->url.mysql.host, uv_strerror(status));
        uv_freeaddrinfo(res);
        fail(c, "08001", msg);
        return;
    }
    char buf[INET6_ADDRSTRLEN] = "";
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, buf, sizeof(buf));
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, buf, sizeof(buf));
    uv_freeaddrinfo(res);
    free(c->address);
    c->address = strdup(buf);
    start_connect(c);
}

static int is_numeric_host(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* The connector's options, from the URL. */
static void set_options(MYSQL *mysql, const h2o_db_url_t *url, int nonblocking)
{
    if (nonblocking) {
        size_t stack = COROUTINE_STACK;
        mysql_options(mysql, MYSQL_OPT_NONBLOCK, &stack);
    }
    unsigned timeout = url->mysql.connect_timeout != 0 ? url->mysql.connect_timeout : CONNECT_TIMEOUT_MS / 1000;
    mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(mysql, MYSQL_SET_CHARSET_NAME, url->mysql.charset != NULL ? url->mysql.charset : "utf8mb4");
    my_bool off = 0;
    mysql_options(mysql, MYSQL_OPT_LOCAL_INFILE, &off);
    mysql_optionsv(mysql, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "h2o-db");
    if (url->mysql.ssl_key != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_KEY, url->mysql.ssl_key);
    if (url->mysql.ssl_cert != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CERT, url->mysql.ssl_cert);
    if (url->mysql.ssl_ca != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CA, url->mysql.ssl_ca);
    if (url->mysql.ssl_capath != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CAPATH, url->mysql.ssl_capath);
    if (url->mysql.ssl_cipher != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CIPHER, url->mysql.ssl_cipher);
    if (url->mysql.ssl_crl != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CRL, url->mysql.ssl_crl);
    if (url->mysql.ssl_crlpath != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CRLPATH, url->mysql.ssl_crlpath);
    my_bool enforce = url->mysql.ssl || url->mysql.ssl_verify_cert, verify = url->mysql.ssl_verify_cert != 0;
    if (enforce)
        mysql_options(mysql, MYSQL_OPT_SSL_ENFORCE, &enforce);
    mysql_options(mysql, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
}

static h2o_db_conn_t *my_open(h2o_db_pool_t *pool)
{
    h2o_db_url_t *url = &pool->bind->url;
    struct my_conn *c = calloc(1, sizeof(*c));
    h2o_db_conn_init(&c->super, pool);
    uv_timer_init(pool->thread->loop, &c->io_timer);
    uv_timer_init(pool->thread->loop, &c->connect_timer);
    c->io_timer.data = c;
    c->connect_timer.data = c;
    c->handles_open = 2;
    c->poll_fd = -1;
    c->start_later.cb = on_start_later;
    c->fail_later.cb = on_fail_later;
    c->flusher.cb = on_flush;
    h2o_db_stmt_cache_init(&c->cache, pool->bind->pool.statement_cache, on_evict, c);
    c->phase = PHASE_RESOLVE;
    uv_timer_start(&c->connect_timer, on_connect_timeout, CONNECT_TIMEOUT_MS, 0);
    pthread_once(&library_once, library_init);
    if ((c->mysql = mysql_init(NULL)) == NULL) {
        snprintf(c->fail_sqlstate, sizeof(c->fail_sqlstate), "08001");
        snprintf(c->fail_message, sizeof(c->fail_message), "out of memory");
        h2o_db_later(pool->thread, &c->fail_later);
        return &c->super;
    }
    set_options(c->mysql, url, 1);

    /* where to connect: host names are resolved here, not by the connector (it would block) */
    const char *host = url->mysql.host;
    if (url->mysql.unix_socket != NULL) {
        /* the socket */
    } else if (host == NULL || strcmp(host, "localhost") == 0) {
        c->address = strdup("127.0.0.1"); /* TCP, as aiomysql and pymysql do */
    } else if (is_numeric_host(host)) {
        c->address = strdup(host);
    } else if (!url->mysql.ssl_verify_cert) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        c->gai.data = c;
        ++c->handles_open;
        if (uv_getaddrinfo(pool->thread->loop, &c->gai, on_resolved, host, NULL, &hints) != 0) {
            --c->handles_open;
            snprintf(c->fail_sqlstate, sizeof(c->fail_sqlstate), "08001");
            snprintf(c->fail_message, sizeof(c->fail_message), "cannot start resolving the database host");
            h2o_db_later(pool->thread, &c->fail_later);
        }
        return &c->super;
    }
    /* (a host name whose certificate is verified goes to the connector as it is: TLS checks it) */
    h2o_db_later(pool->thread, &c->start_later);
    return &c->super;
}

/* ---- send ---- */

static void my_send(h2o_db_conn_t *conn, h2o_db_op_t *op)
{
    struct my_conn *c = (struct my_conn *)conn;
    if (c->phase != PHASE_READY)
        return; /* failing already: the pool answers everything in flight */
    const char *sql = h2o_db_op_sql(op, "START TRANSACTION");
    int text = op->kind != H2O_DB_OP_QUERY;
    struct job *job = push_job(c);
    int ok = job != NULL;
    if (ok) {
        job->kind = op->kind;
        job->text = text;
        job->no_cache = op->no_cache;
        size_t len = text ? strlen(sql) : op->sql_len;
        ok = buf_add(&job->sql, sql, len) == 0 && buf_add(&job->sql, "", 1) == 0;
        job->sql.len = len;
        if (!text) {
            job->nparams = op->nparams;
            for (size_t i = 0; ok && i < op->nparams; ++i) {
                struct param pa = {job->values.len, 0, op->params[i] == NULL};
                if (!pa.null) {
                    pa.len = strlen(op->params[i]);
                    ok = buf_add(&job->values, op->params[i], pa.len + 1) == 0;
                }
                ok = ok && buf_add(&job->params, &pa, sizeof(pa)) == 0;
            }
        }
    }
    if (!ok) {
        /* reported on the next iteration: no callback may run inside h2o_db_query() */
        snprintf(c->fail_sqlstate, sizeof(c->fail_sqlstate), "08006");
        snprintf(c->fail_message, sizeof(c->fail_message), "out of memory");
        h2o_db_later(c->super.pool->thread, &c->fail_later);
        return;
    }
    h2o_db_flush_later(c->super.pool->thread, &c->flusher);
}

/* ---- cancel (pinned connections only: the pool never cancels a shared one) ---- */

static void set_options(MYSQL *mysql, const h2o_db_url_t *url, int nonblocking);

static void run_cancel(uv_work_t *work)
{
    struct cancel_work *cw = (struct cancel_work *)work;
    const h2o_db_url_t *url = &cw->bind->url;
    MYSQL *mysql = mysql_init(NULL);
    if (mysql == NULL)
        return;
    set_options(mysql, url, 0);
    const char *host = url->mysql.unix_socket != NULL ? "localhost" : cw->address != NULL ? cw->address : url->mysql.host;
    const char *password = cw->bind->password != NULL ? cw->bind->password : url->mysql.password;
    if (mysql_real_connect(mysql, host, url->mysql.user, password, NULL, url->mysql.port, url->mysql.unix_socket, 0) != NULL) {
        char sql[64];
        snprintf(sql, sizeof(sql), "KILL QUERY %lu", cw->thread_id);
        mysql_query(mysql, sql); /* (it may have ended meanwhile: nothing to do then) */
    }
    mysql_close(mysql);
}

static void after_cancel(uv_work_t *work, int status)
{
    struct cancel_work *cw = (struct cancel_work *)work;
    struct my_conn *c = cw->conn;
    free(cw->address);
    free(cw);
    if (c == NULL)
        return;
    c->cancel = NULL;
    h2o_db_conn_cancelled(&c->super);
}

/* Stops the statement that runs (KILL QUERY); what was queued behind it runs afterwards. */
static void my_cancel(h2o_db_conn_t *conn)
{
    struct my_conn *c = (struct my_conn *)conn;
    if (c->phase != PHASE_READY || c->cancel != NULL || !c->job_running || c->thread_id == 0) {
        h2o_db_conn_cancelled(conn);
        return;
    }
    struct cancel_work *cw = calloc(1, sizeof(*cw));
    cw->bind = conn->pool->bind;
    cw->address = c->address != NULL ? strdup(c->address) : NULL;
    cw->thread_id = c->thread_id;
    cw->conn = c;
    c->cancel = cw;
    if (uv_queue_work(conn->pool->thread->loop, &cw->work, run_cancel, after_cancel) != 0) {
        free(cw->address);
        free(cw);
        c->cancel = NULL;
        h2o_db_conn_cancelled(conn);
    }
}

/* ---- close ---- */

/* Ends a connector call that waits, without waiting: the socket is shut, so it fails at once. */
static void abandon_call(struct my_conn *c)
{
    if (!c->in_call)
        return;
    int fd = (int)mysql_get_socket(c->mysql);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    int status = 1;
    for (int i = 0; i < 1000 && status != 0; ++i)
        status = call(c, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_TIMEOUT);
    c->in_call = 0;
    if (c->step == STEP_CLOSE_STMT && status == 0)
        --c->num_closing; /* it is closed (and freed) */
    if ((c->step == STEP_SETUP_STORE || c->step == STEP_TEXT_STORE) && c->ret_res != NULL) {
        mysql_free_result(c->ret_res);
        c->ret_res = NULL;
    }
}

static void free_conn(struct my_conn *c)
{
    if (c->mysql != NULL) {
        abandon_call(c);
        if (c->handshake_done) {
            /* COM_QUIT; if even that would wait, the socket is shut and it ends at once */
            int status = mysql_close_start(c->mysql);
            if (status != 0) {
                int fd = (int)mysql_get_socket(c->mysql);
                if (fd >= 0)
                    shutdown(fd, SHUT_RDWR);
                for (int i = 0; i < 1000 && status != 0; ++i)
                    status = mysql_close_cont(c->mysql, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_TIMEOUT);
            }
        } else {
            mysql_close(c->mysql);
        }
    }
    /* the statements were detached by mysql_close: closing them only frees them */
    h2o_db_stmt_cache_dispose(&c->cache); /* (leaves the running job's statement to us) */
    if (c->current != NULL) {
        close_later(c, c->current->stmt);
        prepared_free(c->current);
    }
    c->current = NULL;
    c->entry = NULL;
    for (size_t i = 0; i < c->num_closing; ++i)
        mysql_stmt_close(c->closing[i]);
    free(c->closing);
    for (size_t i = 0; i < c->capacity; ++i) {
        buf_free(&c->jobs[i].sql);
        buf_free(&c->jobs[i].params);
        buf_free(&c->jobs[i].values);
    }
    free(c->jobs);
    buf_free(&c->psql);
    rows_free(&c->rows);
    free(c->out_binds);
    buf_free(&c->out_data);
    buf_free(&c->out_meta);
    free(c->setup_sql);
    free(c->address);
    h2o_db_conn_dispose(&c->super);
    free(c);
}

static void on_closed(uv_handle_t *handle)
{
    struct my_conn *c = handle->data;
    if (--c->handles_open == 0)
        free_conn(c);
}

static void my_close(h2o_db_conn_t *conn)
{
    struct my_conn *c = (struct my_conn *)conn;
    c->phase = PHASE_BROKEN;
    if (c->cancel != NULL) {
        c->cancel->conn = NULL;
        c->cancel = NULL;
    }
    h2o_db_later_cancel(&c->start_later);
    h2o_db_later_cancel(&c->fail_later);
    if (h2o_linklist_is_linked(&c->flusher.link))
        h2o_linklist_unlink(&c->flusher.link);
    if (c->poll != NULL) {
        /* the socket stays open until the watcher is gone (mysql_close in free_conn) */
        c->poll->data = NULL;
        uv_close((uv_handle_t *)c->poll, (uv_close_cb)free);
        c->poll = NULL;
    }
    if (c->handles_open > 2)
        uv_cancel((uv_req_t *)&c->gai); /* on_resolved frees when it runs */
    uv_close((uv_handle_t *)&c->io_timer, on_closed);
    uv_close((uv_handle_t *)&c->connect_timer, on_closed);
}

/* ---- start-up (main thread, blocking) ---- */

static int my_run_script(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz)
{
    h2o_db_url_t *url = &bind->url;
    pthread_once(&library_once, library_init);
    MYSQL *mysql = mysql_init(NULL);
    if (mysql == NULL) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    set_options(mysql, url, 0);
    const char *host = url->mysql.unix_socket != NULL                                         ? "localhost"
                       : url->mysql.host == NULL || strcmp(url->mysql.host, "localhost") == 0 ? "127.0.0.1"
                                                                                              : url->mysql.host;
    const char *password = bind->password != NULL ? bind->password : url->mysql.password;
    if (mysql_real_connect(mysql, host, url->mysql.user, password, url->mysql.database, url->mysql.port, url->mysql.unix_socket,
                           CLIENT_MULTI_STATEMENTS | CLIENT_FOUND_ROWS) == NULL) {
        snprintf(err, errsz, "cannot connect to %s: %s", url->display, mysql_error(mysql));
        mysql_close(mysql);
        return -1;
    }
    int ret = 0;
    if (sql != NULL) {
        int status = mysql_real_query(mysql, sql, (unsigned long)strlen(sql));
        while (status == 0) {
            MYSQL_RES *res = mysql_store_result(mysql);
            if (res != NULL)
                mysql_free_result(res);
            else if (mysql_field_count(mysql) != 0)
                break;
            status = mysql_next_result(mysql); /* -1: no more, > 0: an error */
        }
        if (status > 0 || (status == 0 && mysql_errno(mysql) != 0)) {
            snprintf(err, errsz, "%s (SQLSTATE %s)", mysql_error(mysql), mysql_sqlstate(mysql));
            ret = -1;
        }
    }
    mysql_close(mysql);
    return ret;
}

static int my_prepare_bind(h2o_db_bind_t *bind, char *err, size_t errsz)
{
    pthread_once(&library_once, library_init);
    return 0;
}

static void my_dispose_bind(h2o_db_bind_t *bind)
{
}

static const char *my_version(void)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), "MariaDB Connector/C %s", MARIADB_PACKAGE_VERSION);
    return buf;
}

const h2o_db_driver_t h2o_db_driver_mysql = {
    .name = "mysql",
    .open = my_open,
    .send = my_send,
    .close = my_close,
    .cancel = my_cancel,
    .run_script = my_run_script,
    .prepare_bind = my_prepare_bind,
    .dispose_bind = my_dispose_bind,
    .version = my_version,
};
