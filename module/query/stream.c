/*
 * A `rows` answer written as the rows arrive (h2o_db_query_rows): each row's text is appended to
 * `pending`; at the end of the loop iteration (the context's zero timeout, so that rows arriving
 * together go out in one write) `pending` becomes `sending` and goes to h2o_send. Once `pending`
 * is above HIGH_WATER, on_row pauses the statement until it has been handed to h2o_send, which
 * waits for the previous send's proceed (the client took those bytes): a slow client pauses the
 * statement. Memory is so bounded by two buffers of about HIGH_WATER (plus one row), whatever the
 * result's size.
 *
 * The status and headers go out with the first row; an error before it is the normal error
 * answer. An error after it cannot change the status: the body is cut short with
 * H2O_SEND_STATE_ERROR, which libh2o 2.2.5 turns into a broken chunk and a closed connection on
 * HTTP/1.1 (the client sees an incomplete chunked body, never a valid one) and into RST_STREAM on
 * HTTP/2.
 *
 * A paginated answer is held until the page is complete (at most max-limit rows: the statement
 * stops at limit + 1), because its Link header, which says whether a next page exists, goes before
 * the body. A HEAD answer stops the statement at its first row.
 */
#include <string.h>
#include "query/query.h"

#define HIGH_WATER (64 * 1024)

struct st_h2o_db_query_stream_t {
    h2o_generator_t super;
    h2o_req_t *req;
    h2o_db_session_t *s;
    h2o_db_query_stream_opts_t opts;
    h2o_db_query_stream_done_cb done;
    void *data;
    const char *const *params; /* for masking them in an error message */
    size_t nparams;
    h2o_db_query_buf_t pending, sending;
    size_t count; /* rows formatted */
    h2o_timeout_entry_t flush_timer;
    const h2o_db_result_t *failed;
    unsigned started : 1;   /* the status and headers went out */
    unsigned in_flight : 1; /* an h2o_send is waiting for proceed */
    unsigned paused : 1;    /* on_row returned 1 */
    unsigned ended : 1;     /* finish was called */
    unsigned broken : 1;    /* failed after the first row */
    unsigned gone : 1;      /* the request went away */
    unsigned has_next : 1;  /* a paginated statement had limit + 1 rows */
};

static void flush(h2o_db_query_stream_t *st);

static void on_flush_timer(h2o_timeout_entry_t *entry)
{
    flush(H2O_STRUCT_FROM_MEMBER(h2o_db_query_stream_t, flush_timer, entry));
}

static void on_proceed(h2o_generator_t *generator, h2o_req_t *req)
{
    h2o_db_query_stream_t *st = (void *)generator;
    st->in_flight = 0;
    st->sending.len = 0;
    flush(st);
}

static void on_stop(h2o_generator_t *generator, h2o_req_t *req)
{
    h2o_db_query_stream_t *st = (void *)generator;
    st->gone = 1;
    if (h2o_timeout_is_linked(&st->flush_timer))
        h2o_timeout_unlink(&st->flush_timer);
}

static void on_dispose(void *p)
{
    h2o_db_query_stream_t *st = p;
    st->gone = 1;
    if (h2o_timeout_is_linked(&st->flush_timer))
        h2o_timeout_unlink(&st->flush_timer);
    h2o_db_query_buf_free(&st->pending);
    h2o_db_query_buf_free(&st->sending);
}

static void start_response(h2o_db_query_stream_t *st, size_t content_length)
{
    h2o_req_t *req = st->req;
    req->res.status = st->opts.status;
    req->res.reason = h2o_db_query_reason(st->opts.status);
    req->res.content_length = content_length;
    const char *type = h2o_db_query_content_type(st->opts.format);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    if (st->opts.limit != 0)
        h2o_db_query_add_links(req, st->opts.limit, st->opts.offset, st->has_next);
    st->started = 1;
    h2o_start_response(req, &st->super);
}

/* Sends what is pending when no send is in flight; the final part once finish was called. */
static void flush(h2o_db_query_stream_t *st)
{
    if (st->in_flight || st->gone || !st->started)
        return;
    if (h2o_timeout_is_linked(&st->flush_timer))
        h2o_timeout_unlink(&st->flush_timer);
    h2o_db_query_buf_t tmp = st->sending;
    st->sending = st->pending;
    st->pending = tmp;
    st->pending.len = 0;
    h2o_iovec_t buf = h2o_iovec_init(st->sending.base, st->sending.len);
    if (st->ended) { /* (the request may end in there: st is not touched afterwards) */
        st->in_flight = 1;
        h2o_send(st->req, &buf, buf.len != 0, st->broken ? H2O_SEND_STATE_ERROR : H2O_SEND_STATE_FINAL);
        return;
    }
    if (buf.len == 0)
        return;
    st->in_flight = 1;
    h2o_send(st->req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
    if (st->paused && !st->gone) {
        st->paused = 0;
        h2o_db_resume(st->s);
    }
}

static void schedule_flush(h2o_db_query_stream_t *st)
{
    if (!st->in_flight && !st->gone && !h2o_timeout_is_linked(&st->flush_timer))
        h2o_timeout_link(st->req->conn->ctx->loop, &st->req->conn->ctx->zero_timeout, &st->flush_timer);
}

/* Row `row` of r: 0 go on, 1 pause, -1 stop (as h2o_db_row_cb). */
static int take_row(h2o_db_query_stream_t *st, const h2o_db_result_t *r, size_t row)
{
    if (st->gone || st->ended)
        return -1;
    if (st->opts.head)
        return -1; /* the headers are all it needs: finish sends them */
    if (st->opts.limit != 0) {
        if (st->count == st->opts.limit) { /* the (limit + 1)th row: a next page exists; it is held back */
            st->has_next = 1;
            return -1;
        }
        h2o_db_query_format_row(&st->pending, st->opts.format, r, row, st->count++);
        return 0;
    }
    h2o_db_query_format_row(&st->pending, st->opts.format, r, row, st->count++);
    if (!st->started)
        start_response(st, SIZE_MAX);
    schedule_flush(st);
    if (st->pending.len >= HIGH_WATER) { /* (resumed once it is sent: flush) */
        st->paused = 1;
        return 1;
    }
    return 0;
}

static int on_row(const h2o_db_result_t *row, void *data)
{
    return take_row(data, row, 0);
}

static void on_done(h2o_db_result_t *r, void *data)
{
    h2o_db_query_stream_t *st = data;
    if (st->gone)
        return;
    st->paused = 0;
    st->done(st, r, st->data);
}

/* Where the session cannot stream: the whole result, row by row, then done. */
static void on_whole_result(h2o_db_result_t *r, void *data)
{
    h2o_db_query_stream_t *st = data;
    if (st->gone)
        return;
    if (h2o_db_result_status(r) == H2O_DB_OK) {
        for (size_t row = 0, n = h2o_db_result_rows(r); row < n; ++row)
            if (take_row(st, r, row) < 0)
                break;
    }
    st->paused = 0;
    st->done(st, r, st->data);
}

h2o_db_query_stream_t *h2o_db_query_stream_start(h2o_req_t *req, h2o_db_session_t *s, const h2o_db_query_stream_opts_t *opts,
                                                 const char *sql, size_t nparams, const char *const *params,
                                                 h2o_db_query_stream_done_cb done, void *data)
{
    h2o_db_query_stream_t *st = h2o_mem_alloc_shared(&req->pool, sizeof(*st), on_dispose);
    memset(st, 0, sizeof(*st));
    st->super.proceed = on_proceed;
    st->super.stop = on_stop;
    st->req = req;
    st->s = s;
    st->opts = *opts;
    st->done = done;
    st->data = data;
    st->params = params;
    st->nparams = nparams;
    st->flush_timer.cb = on_flush_timer;
    if (h2o_db_query_rows(s, sql, nparams, params, on_row, on_done, st) == 0)
        return st;
    if (h2o_db_query(s, sql, nparams, params, on_whole_result, st) == 0)
        return st;
    return NULL;
}

void h2o_db_query_stream_finish(h2o_db_query_stream_t *st, const h2o_db_result_t *failed)
{
    if (st->gone || st->ended)
        return;
    st->ended = 1;
    if (failed != NULL) {
        if (!st->started) {
            h2o_db_query_send_failure(st->req, failed, st->params, st->nparams);
            return;
        }
        h2o_req_log_error(st->req, "h2o-db", "db.query: the answer was cut short after %zu rows: %s (SQLSTATE %s)", st->count,
                          h2o_db_result_error(failed) != NULL ? h2o_db_result_error(failed) : "database error",
                          h2o_db_result_sqlstate(failed) != NULL ? h2o_db_result_sqlstate(failed) : "XX000");
        st->broken = 1; /* (the rows formatted so far go out first) */
        flush(st);
        return;
    }
    h2o_db_query_format_end(&st->pending, st->opts.format, st->count);
    if (!st->started) { /* no row streamed: a page, a HEAD answer or an empty result, sent whole */
        if (st->opts.head) {
            start_response(st, SIZE_MAX);
            st->in_flight = 1;
            h2o_send(st->req, NULL, 0, H2O_SEND_STATE_FINAL);
            return;
        }
        start_response(st, st->pending.len);
    }
    flush(st);
}
