/*
 * db.query: a path answered by SQL statements declared in the config (docs/directives/db.query.md).
 *
 * The configurator (module/config/query.c) turns YAML into h2o_db_query_args_t and calls
 * h2o_db_query_register(); the runtime is here: handler.c (request → parameters → statements →
 * answer), params.c (the parameter sources), format.c (JSON, NDJSON and CSV writers, content
 * negotiation, error bodies) and stream.c (a `rows` answer written as rows arrive).
 */
#ifndef h2o_db_query_h
#define h2o_db_query_h

#include <stddef.h>
#include "h2o.h"
#include "h2o_db.h"

#define H2O_DB_QUERY_DEFAULT_MAX_BODY (1024 * 1024) /* bytes; `max-body` */

typedef enum {
    H2O_DB_QUERY_SRC_QUERY,  /* query:NAME */
    H2O_DB_QUERY_SRC_PATH,   /* path:N */
    H2O_DB_QUERY_SRC_HEADER, /* header:NAME */
    H2O_DB_QUERY_SRC_FIELD,  /* body:NAME */
    H2O_DB_QUERY_SRC_BODY    /* body */
} h2o_db_query_source_t;

typedef struct st_h2o_db_query_param_t {
    h2o_db_query_source_t source;
    char *name;   /* NAME of query/header/body (a header's in lower case); NULL otherwise */
    size_t index; /* N of path:N (1-based) */
    char *def;    /* `default:` text, or NULL */
    int optional; /* `optional: ON`: absent is SQL NULL */
    char *label;  /* "query:id" as configured: what a 400 names */
} h2o_db_query_param_t;

typedef enum {
    H2O_DB_QUERY_ROWS, /* a JSON array of objects (or NDJSON, CSV) */
    H2O_DB_QUERY_ROW,  /* one object; 0 rows 404, more than one 500 */
    H2O_DB_QUERY_VALUE,
    H2O_DB_QUERY_AFFECTED,
    H2O_DB_QUERY_NONE
} h2o_db_query_result_t;

/* What one method runs. */
typedef struct st_h2o_db_query_method_t {
    char **sql;      /* one statement, or several run in one transaction ($n renumbered: see maps) */
    size_t *nparams; /* how many parameters statement i takes */
    size_t **maps;   /* maps[i][j]: the index in params of statement i's $(j+1) */
    size_t num_sql;
    h2o_db_query_param_t *params;
    size_t num_params;
    h2o_db_query_result_t result;
    int status;              /* the success status; 0: the result's default */
    size_t limit, max_limit; /* `paginate`; limit 0: not paginated */
    char *paged_sql;         /* the last statement wrapped in SELECT * … LIMIT $k OFFSET $k+1 */
    int read;                /* `read:` of the method: -1 as the path says, 0 replica, 1 primary */
} h2o_db_query_method_t;

enum {
    H2O_DB_QUERY_GET,
    H2O_DB_QUERY_HEAD,
    H2O_DB_QUERY_POST,
    H2O_DB_QUERY_PUT,
    H2O_DB_QUERY_PATCH,
    H2O_DB_QUERY_DELETE,
    H2O_DB_QUERY_NUM_METHODS
};

/* The method names, indexed as above. */
extern const char *const h2o_db_query_method_names[H2O_DB_QUERY_NUM_METHODS];

typedef struct st_h2o_db_query_args_t {
    char *key;                                                /* the bind's key (sa_main by default) */
    h2o_db_query_method_t *methods[H2O_DB_QUERY_NUM_METHODS]; /* NULL: not allowed (HEAD falls back to GET) */
    size_t max_body;                                          /* bytes; a larger body is answered 413 */
    int read_primary;                                         /* `read: primary`: GET/HEAD sessions stay read-write */
} h2o_db_query_args_t;

/* Adds the db.query handler to a path (config time, main thread). It takes `args` over (freed with
 * the handler, by h2o_db_query_args_free). The key must be attached on the path (checked by the
 * configurator); a request whose session cannot be had is answered 500. */
void h2o_db_query_register(h2o_pathconf_t *pathconf, h2o_db_query_args_t *args);

/* Frees args and everything in it (NULL is fine). */
void h2o_db_query_args_free(h2o_db_query_args_t *args);
void h2o_db_query_method_free(h2o_db_query_method_t *m);

/* Defines db.query on a globalconf (module/config/query.c); called by h2o_db_register_configurator
 * after the db configurator, so that a path's keys are attached when db.query checks them. */
void h2o_db_query_configurator(h2o_globalconf_t *conf);

/* The highest $n of a statement outside quotes, identifiers, dollar-quoted strings and comments
 * (0 when it has none). Any thread. */
size_t h2o_db_query_count_params(const char *sql);

/* sql with its $n renumbered $1..$k in ascending order of n, over the ones it uses (PostgreSQL
 * cannot type a parameter a statement never mentions); *map[j] is the 0-based parameter that
 * becomes $(j+1), *num is k. Everything malloc'd. */
char *h2o_db_query_renumber(const char *sql, size_t **map, size_t *num);

/* ---- internal: params.c ---- */

/* The request's values for params (params[i] NULL: SQL NULL), in req's pool. Returns 0; or -1 with
 * *missing pointing at the first required parameter that is absent, or -2 when the body claims to be
 * JSON but is not a JSON object. */
int h2o_db_query_collect(h2o_req_t *req, const h2o_db_query_method_t *m, const char ***values,
                         const h2o_db_query_param_t **missing);

/* The URL-decoded value of query parameter NAME in req, or NULL ("+" is a space). In req's pool. */
const char *h2o_db_query_arg(h2o_req_t *req, const char *name, size_t name_len);

/* Decodes %XX (and "+" as a space when plus_is_space) of src[0..n) into req's pool. */
char *h2o_db_query_unescape(h2o_mem_pool_t *pool, const char *src, size_t n, int plus_is_space);

/* ---- internal: format.c ---- */

typedef enum { H2O_DB_QUERY_JSON, H2O_DB_QUERY_NDJSON, H2O_DB_QUERY_CSV } h2o_db_query_format_t;

/* The format asked for by ?format= or Accept; -1: none of ours (406). */
int h2o_db_query_negotiate(h2o_req_t *req);
/* The Content-Type of a format. */
const char *h2o_db_query_content_type(h2o_db_query_format_t format);

/* A growable byte buffer (malloc'd). */
typedef struct st_h2o_db_query_buf_t {
    char *base;
    size_t len, cap;
} h2o_db_query_buf_t;
void h2o_db_query_buf_append(h2o_db_query_buf_t *b, const char *s, size_t n);
void h2o_db_query_buf_free(h2o_db_query_buf_t *b);

/* Appends row `row` of r in format (index: its number in the answer, 0-based, for separators and
 * CSV's header row). */
void h2o_db_query_format_row(h2o_db_query_buf_t *b, h2o_db_query_format_t format, const h2o_db_result_t *r, size_t row,
                             size_t index);
/* Appends what ends an answer of `count` rows (JSON's "]", "[]" for none). */
void h2o_db_query_format_end(h2o_db_query_buf_t *b, h2o_db_query_format_t format, size_t count);

/* Sends a JSON error answer {"error": message, "sqlstate": code} (sqlstate NULL: left out). */
void h2o_db_query_send_json_error(h2o_req_t *req, int status, const char *message, const char *sqlstate);
/* Answers a failed result: SQLSTATE 23505 409, other 23xxx and 22xxx 400, 42501 403, P0002 404,
 * other SQL errors 500 (JSON bodies; messages with no parameter values: params[0..n) are masked);
 * BUSY, UNAVAILABLE, TIMEOUT and CLIENT_GONE as h2o_db_send_error. */
void h2o_db_query_send_failure(h2o_req_t *req, const h2o_db_result_t *r, const char *const *params, size_t n);
/* The reason phrase of a status. */
const char *h2o_db_query_reason(int status);
/* Sends a complete answer (no body for HEAD, 204 and 304). */
void h2o_db_query_respond(h2o_req_t *req, int status, const char *type, h2o_iovec_t body);

/* Adds the Link header of a page: rel="next" when has_next, rel="prev" when offset > 0, each keeping
 * the request's other query parameters. */
void h2o_db_query_add_links(h2o_req_t *req, size_t limit, size_t offset, int has_next);

/* ---- internal: stream.c ---- */

/* A `rows` answer written as rows arrive (chunked, memory bounded by a high-water mark); in req's
 * pool, it ends with the request. */
typedef struct st_h2o_db_query_stream_t h2o_db_query_stream_t;

/* The statement ended (result: its final status, rows 0). The caller may commit, then must call
 * h2o_db_query_stream_finish; it is not called when the request went away. */
typedef void (*h2o_db_query_stream_done_cb)(h2o_db_query_stream_t *st, h2o_db_result_t *result, void *data);

typedef struct st_h2o_db_query_stream_opts_t {
    h2o_db_query_format_t format;
    int status;           /* the success status */
    int head;             /* HEAD: the headers only (the statement stops at the first row) */
    size_t limit, offset; /* paginated when limit != 0: the statement fetches limit + 1 rows */
} h2o_db_query_stream_opts_t;

/* Runs sql as a stream of rows on s and answers with them. NULL when the statement was refused (no
 * callback then). Where the session cannot stream (h2o_db_query_rows refused it), the statement
 * runs with h2o_db_query and the answer is written from the whole result, the same bytes. */
h2o_db_query_stream_t *h2o_db_query_stream_start(h2o_req_t *req, h2o_db_session_t *s, const h2o_db_query_stream_opts_t *opts,
                                                 const char *sql, size_t nparams, const char *const *params,
                                                 h2o_db_query_stream_done_cb done, void *data);
/* Ends the answer. failed == NULL: success. Otherwise (the statement or the commit failed): before any
 * byte of the body was sent, the error answer (h2o_db_query_send_failure); after, the body is cut
 * short (H2O_SEND_STATE_ERROR: HTTP/1.1 sends a broken chunk and closes, HTTP/2 resets the stream). */
void h2o_db_query_stream_finish(h2o_db_query_stream_t *st, const h2o_db_result_t *failed);

#endif
