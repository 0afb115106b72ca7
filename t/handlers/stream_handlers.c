/*
 * A c.handler for the streaming tests, built against include/h2o_db.h alone:
 * h2o_db_query_rows with the client's back-pressure, as a handler of one's own
 * would write it.
 *
 * stream_on_req: POST a script, one step per line:
 *   SQL text      the statement (required)
 *   P value       a parameter ($1, $2, ... in order); PNULL for NULL
 *   KEY k         the session of key k (default sa_main)
 *   TXN           inside begin … commit
 *   STOP n        on_row returns -1 at row n
 *   HOLD n        after every n rows, pause (on_row returns 1) and resume 2 ms later
 * The answer streams (chunked) one line per row, the values joined by ',' (NULL as \N), then
 *   END <status> <sqlstate or -> rows=<rows seen> held=<rows delivered while paused> done=<on_done calls>
 * and, with TXN, a line "COMMIT <status>". While a send is in flight and more than 64 KB wait,
 * the stream pauses until the client has taken what was sent (h2o's proceed). A client that
 * leaves stops it (on_row returns -1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "h2o_db.h"

#define HIGH_WATER (64 * 1024)
#define MAX_PARAMS 16

struct stream {
    h2o_generator_t super;
    h2o_req_t *req;
    h2o_db_session_t *db;
    char *sql, *key;
    const char *params[MAX_PARAMS];
    size_t nparams, stop_at, hold_every;
    int txn;
    size_t rows, held_rows, done_calls;
    int paused_by_client, paused_by_hold, sending, finished, gone;
    char *fill, *flight; /* rows being collected, rows being sent */
    size_t fill_len, fill_cap;
    uv_timer_t *hold_timer;
    char end_line[256];
};

static void fill_append(struct stream *st, const char *s, size_t n)
{
    if (st->fill_len + n > st->fill_cap) {
        st->fill_cap = (st->fill_len + n) * 2;
        st->fill = realloc(st->fill, st->fill_cap);
    }
    memcpy(st->fill + st->fill_len, s, n);
    st->fill_len += n;
}

/* Sends what was collected (one send at a time); with `final` once everything is. */
static void flush(struct stream *st)
{
    if (st->sending || st->gone)
        return;
    if (st->fill_len == 0 && !st->finished)
        return;
    char *tmp = st->flight;
    st->flight = st->fill;
    st->fill = tmp;
    h2o_iovec_t buf = h2o_iovec_init(st->flight, st->fill_len);
    st->fill_len = 0;
    free(st->fill);
    st->fill = NULL;
    st->fill_cap = 0;
    st->sending = 1;
    h2o_send(st->req, &buf, 1, st->finished ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void resume_if_paused(struct stream *st)
{
    if (st->paused_by_client && !st->paused_by_hold && st->fill_len < HIGH_WATER) {
        st->paused_by_client = 0;
        h2o_db_resume(st->db);
    }
}

static void on_proceed(h2o_generator_t *self, h2o_req_t *req)
{
    struct stream *st = (struct stream *)self;
    st->sending = 0;
    flush(st);
    resume_if_paused(st);
}

static void on_stop(h2o_generator_t *self, h2o_req_t *req)
{
    struct stream *st = (struct stream *)self;
    st->gone = 1;
}

static void hold_closed(uv_handle_t *h)
{
    free(h);
}

static void on_hold_timer(uv_timer_t *timer)
{
    struct stream *st = timer->data;
    st->paused_by_hold = 0;
    if (!st->paused_by_client)
        h2o_db_resume(st->db);
}

static int on_row(const h2o_db_result_t *row, void *data)
{
    struct stream *st = data;
    if (st->paused_by_client || st->paused_by_hold)
        ++st->held_rows; /* the contract says this never happens */
    ++st->rows;
    if (st->gone)
        return -1;
    for (size_t col = 0; col < h2o_db_result_columns(row); ++col) {
        size_t len = 0;
        const char *v = h2o_db_result_value(row, 0, col, &len);
        if (col != 0)
            fill_append(st, ",", 1);
        if (v == NULL)
            fill_append(st, "\\N", 2);
        else
            fill_append(st, v, len);
    }
    fill_append(st, "\n", 1);
    if (st->stop_at != 0 && st->rows == st->stop_at)
        return -1;
    flush(st);
    if (st->hold_every != 0 && st->rows % st->hold_every == 0) {
        st->paused_by_hold = 1;
        uv_timer_start(st->hold_timer, on_hold_timer, 2, 0);
        return 1;
    }
    if (st->sending && st->fill_len >= HIGH_WATER) {
        st->paused_by_client = 1;
        return 1;
    }
    return 0;
}

static const char *status_name(h2o_db_status_t status)
{
    static const char *names[] = {"OK", "SQL_ERROR", "BUSY", "UNAVAILABLE", "TIMEOUT", "CLIENT_GONE"};
    return status <= H2O_DB_CLIENT_GONE ? names[status] : "?";
}

static void finish(struct stream *st)
{
    fill_append(st, st->end_line, strlen(st->end_line));
    st->finished = 1;
    flush(st);
}

static void on_commit(h2o_db_result_t *r, void *data)
{
    struct stream *st = data;
    size_t len = strlen(st->end_line);
    snprintf(st->end_line + len, sizeof(st->end_line) - len, "COMMIT %s\n", status_name(h2o_db_result_status(r)));
    finish(st);
}

static void on_done(h2o_db_result_t *r, void *data)
{
    struct stream *st = data;
    ++st->done_calls;
    const char *sqlstate = h2o_db_result_sqlstate(r);
    snprintf(st->end_line, sizeof(st->end_line), "END %s %s rows=%zu held=%zu done=%zu\n", status_name(h2o_db_result_status(r)),
             sqlstate != NULL ? sqlstate : "-", st->rows, st->held_rows, st->done_calls);
    if (st->txn) {
        if (h2o_db_commit(st->db, on_commit, st) == 0)
            return;
        size_t len = strlen(st->end_line);
        snprintf(st->end_line + len, sizeof(st->end_line) - len, "COMMIT REFUSED\n");
    }
    finish(st);
}

static void on_begin(h2o_db_result_t *r, void *data)
{
    /* a failed BEGIN fails the stream's statement too (25P02): on_done reports it */
}

static void on_dispose(void *data)
{
    struct stream *st = data;
    free(st->fill);
    free(st->flight);
    uv_timer_stop(st->hold_timer);
    uv_close((uv_handle_t *)st->hold_timer, hold_closed);
}

/* Reads the script; returns an error message or NULL. */
static const char *parse(struct stream *st, char *body)
{
    for (char *line = strtok(body, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strncmp(line, "SQL ", 4) == 0)
            st->sql = line + 4;
        else if (strncmp(line, "P ", 2) == 0 && st->nparams < MAX_PARAMS)
            st->params[st->nparams++] = line + 2;
        else if (strcmp(line, "PNULL") == 0 && st->nparams < MAX_PARAMS)
            st->params[st->nparams++] = NULL;
        else if (strncmp(line, "KEY ", 4) == 0)
            st->key = line + 4;
        else if (strcmp(line, "TXN") == 0)
            st->txn = 1;
        else if (strncmp(line, "STOP ", 5) == 0)
            st->stop_at = strtoul(line + 5, NULL, 10);
        else if (strncmp(line, "HOLD ", 5) == 0)
            st->hold_every = strtoul(line + 5, NULL, 10);
        else
            return "unknown step\n";
    }
    return st->sql == NULL ? "no SQL step\n" : NULL;
}

static int refuse(h2o_req_t *req, int status, const char *msg)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = "Error";
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(msg, strlen(msg));
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
    return 0;
}

int stream_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct stream *st = h2o_mem_alloc_shared(&req->pool, sizeof(*st), on_dispose);
    memset(st, 0, sizeof(*st));
    st->req = req;
    st->super.proceed = on_proceed;
    st->super.stop = on_stop;
    st->hold_timer = malloc(sizeof(*st->hold_timer));
    uv_timer_init(req->conn->ctx->loop, st->hold_timer);
    st->hold_timer->data = st;
    char *body = h2o_mem_alloc_pool(&req->pool, req->entity.len + 1);
    memcpy(body, req->entity.base, req->entity.len);
    body[req->entity.len] = '\0';
    const char *err = parse(st, body);
    if (err != NULL)
        return refuse(req, 400, err);
    if ((st->db = h2o_db_session(req, st->key)) == NULL)
        return refuse(req, 404, "key not attached\n");
    if (st->txn && h2o_db_begin(st->db, on_begin, st) != 0)
        return refuse(req, 500, "begin refused\n");
    if (h2o_db_query_rows(st->db, st->sql, st->nparams, st->params, on_row, on_done, st) != 0)
        return refuse(req, 500, "query_rows refused\n");
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain"));
    h2o_start_response(req, &st->super);
    return 0;
}
