/*
 * c.handler objects for the database tests, built against include/h2o_db.h
 * alone. They use only the public API.
 *
 * db_script: runs the steps in the request body, one per line, and answers
 * with JSON: {"results":[{"status":"OK","affected":N,"rows":[...]}, ...]}.
 *   KEY k            use the session of key k (default sa_main)
 *   FOR table        use h2o_db_session_for(session of the current key, table)
 *   BEGIN | COMMIT | ROLLBACK
 *   SQL text         a statement; P value / PNULL lines after it add parameters
 *   SLEEP ms         wait (a transaction stays open meanwhile)
 *   ALL              from here on, issue every statement at once (pipelined) and
 *                    answer when all are answered
 *   BATCH            the same with one h2o_db_query_batch for all the SQL steps that follow
 *                    (nothing else may follow); refused as one step
 *   CONTINUE         go on after a failed step (default: stop there)
 *   RETURN           answer now, whatever is still open (request-end clean-up)
 *   SENDERROR        on a failed step, answer with h2o_db_send_error()
 *   READONLY         h2o_db_session_read_only(current session): nothing, or REFUSED (-1)
 * A step h2o_db_* refuses is reported as {"status":"REFUSED"}.
 *
 * db_keys: ?keys=a,b,c → "a=1 b=0 c=1" (whether h2o_db_session(req, k) != NULL).
 * db_nothing: answers 200 without touching any session.
 * db_background: sessions outside the request (see its comment below).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "h2o_db.h"

#define MAX_STEPS  4096
#define MAX_PARAMS 64

enum { STEP_KEY, STEP_FOR, STEP_BEGIN, STEP_COMMIT, STEP_ROLLBACK, STEP_SQL, STEP_SLEEP, STEP_ALL, STEP_BATCH, STEP_RETURN };
enum { STEP_READONLY = STEP_RETURN + 1 };

struct step {
    int kind;
    char *arg;
    size_t nparams;
    const char *params[MAX_PARAMS];
};

struct script {
    h2o_req_t *req;
    struct step *steps;
    size_t num_steps, next, issued, answered;
    h2o_db_session_t *session;
    char *key;
    int all, cont, send_error, done, failed;
    size_t batch_next; /* the index the next batch callback must have */
    char *out;
    size_t out_len, out_cap;
    uv_timer_t *timer;
    int alive; /* cleared when the request is disposed */
};

static void respond(h2o_req_t *req, int status, const char *type, const char *body, size_t len)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : "Error";
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(body, len);
    h2o_send(req, &buf, 1, 1);
}

static void append(struct script *sc, const char *s, size_t n)
{
    if (sc->out_len + n + 1 > sc->out_cap) {
        size_t cap = (sc->out_len + n + 1) * 2;
        char *p = h2o_mem_alloc_pool(&sc->req->pool, cap);
        if (sc->out_len != 0)
            memcpy(p, sc->out, sc->out_len);
        sc->out = p;
        sc->out_cap = cap;
    }
    memcpy(sc->out + sc->out_len, s, n);
    sc->out_len += n;
    sc->out[sc->out_len] = '\0';
}

static void appends(struct script *sc, const char *s)
{
    append(sc, s, strlen(s));
}

static const char *status_name(h2o_db_status_t st)
{
    switch (st) {
    case H2O_DB_OK:
        return "OK";
    case H2O_DB_SQL_ERROR:
        return "SQL_ERROR";
    case H2O_DB_BUSY:
        return "BUSY";
    case H2O_DB_UNAVAILABLE:
        return "UNAVAILABLE";
    case H2O_DB_TIMEOUT:
        return "TIMEOUT";
    case H2O_DB_CLIENT_GONE:
        return "CLIENT_GONE";
    }
    return "?";
}

static void finish(struct script *sc)
{
    if (sc->done)
        return;
    sc->done = 1;
    appends(sc, "]}\n");
    respond(sc->req, 200, "application/json", sc->out, sc->out_len);
}

static void run(struct script *sc);

static void record(struct script *sc, h2o_db_result_t *r)
{
    char buf[512];
    appends(sc, sc->answered != 0 ? "," : "");
    if (h2o_db_result_status(r) == H2O_DB_OK) {
        snprintf(buf, sizeof(buf), "{\"status\":\"OK\",\"affected\":%llu,\"rows\":", (unsigned long long)h2o_db_result_affected(r));
        appends(sc, buf);
        h2o_iovec_t json = h2o_db_result_json(&sc->req->pool, r);
        append(sc, json.base, json.len);
        appends(sc, "}");
    } else {
        /* the message may hold quotes: keep only letters, digits, blanks and simple punctuation */
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", h2o_db_result_error(r) != NULL ? h2o_db_result_error(r) : "");
        for (char *p = msg; *p; ++p)
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
                *p = '\'';
        snprintf(buf, sizeof(buf), "{\"status\":\"%s\",\"sqlstate\":\"%s\",\"error\":\"%s\"}", status_name(h2o_db_result_status(r)),
                 h2o_db_result_sqlstate(r) != NULL ? h2o_db_result_sqlstate(r) : "", msg);
        appends(sc, buf);
    }
    ++sc->answered;
}

static void on_result(h2o_db_result_t *r, void *data)
{
    struct script *sc = data;
    if (sc->done)
        return; /* answered already (RETURN): the request may still be alive; ignore */
    if (h2o_db_result_status(r) != H2O_DB_OK && !sc->cont && !sc->failed) {
        sc->failed = 1;
        if (sc->send_error) {
            sc->done = 1;
            /* the SQLSTATE is valid during the callback only: the header (and the access log) keep a copy */
            h2o_iovec_t state = h2o_strdup(&sc->req->pool, h2o_db_result_sqlstate(r), SIZE_MAX);
            h2o_add_header_by_str(&sc->req->pool, &sc->req->res.headers, H2O_STRLIT("x-sqlstate"), 0, NULL, state.base, state.len);
            h2o_db_send_error(sc->req, r);
            return;
        }
    }
    record(sc, r);
    if (sc->all) {
        if (sc->answered == sc->issued && sc->next >= sc->num_steps)
            finish(sc);
        return;
    }
    if (sc->failed)
        finish(sc);
    else
        run(sc);
}

static void on_batch_result(h2o_db_result_t *r, size_t index, void *data)
{
    struct script *sc = data;
    if (index != sc->batch_next++ && !sc->done) {
        sc->done = 1;
        respond(sc->req, 500, "text/plain", "batch answered out of order\n", 28);
        return;
    }
    on_result(r, data);
}

/* BATCH: every remaining step, as one batch. */
static int run_batch(struct script *sc)
{
    size_t n = sc->num_steps - sc->next;
    h2o_db_statement_t *stmts = calloc(n != 0 ? n : 1, sizeof(*stmts));
    for (size_t i = 0; i < n; ++i) {
        struct step *st = sc->steps + sc->next + i;
        if (st->kind != STEP_SQL) {
            free(stmts);
            return -1;
        }
        stmts[i] = (h2o_db_statement_t){st->arg, st->nparams, st->params};
    }
    int ret = h2o_db_query_batch(sc->session, stmts, n, on_batch_result, sc);
    free(stmts); /* copied by the call */
    if (ret == 0) {
        sc->next = sc->num_steps;
        sc->issued += n - 1; /* the caller counts one */
    }
    return ret;
}

static void on_sleep_done(uv_timer_t *timer)
{
    struct script *sc = timer->data;
    uv_close((uv_handle_t *)timer, (uv_close_cb)free);
    sc->timer = NULL;
    if (sc->alive)
        run(sc);
}

static void refuse(struct script *sc)
{
    appends(sc, sc->answered != 0 ? "," : "");
    appends(sc, "{\"status\":\"REFUSED\"}");
    ++sc->answered;
}

static void run(struct script *sc)
{
    while (sc->next < sc->num_steps && !sc->done) {
        struct step *st = sc->steps + sc->next++;
        int ret = 0, issued = 1;
        switch (st->kind) {
        case STEP_KEY:
            sc->session = h2o_db_session(sc->req, st->arg);
            issued = 0;
            break;
        case STEP_FOR:
            sc->session = h2o_db_session_for(h2o_db_session(sc->req, sc->key), st->arg);
            issued = 0;
            break;
        case STEP_ALL:
            sc->all = 1;
            issued = 0;
            break;
        case STEP_BATCH:
            sc->all = 1;
            ret = run_batch(sc);
            break;
        case STEP_RETURN:
            finish(sc);
            return;
        case STEP_READONLY:
            ret = h2o_db_session_read_only(sc->session);
            issued = ret != 0; /* reported only when refused */
            break;
        case STEP_SLEEP:
            sc->timer = malloc(sizeof(*sc->timer));
            uv_timer_init(sc->req->conn->ctx->loop, sc->timer);
            sc->timer->data = sc;
            uv_timer_start(sc->timer, on_sleep_done, strtoul(st->arg, NULL, 10), 0);
            return;
        case STEP_BEGIN:
            ret = h2o_db_begin(sc->session, on_result, sc);
            break;
        case STEP_COMMIT:
            ret = h2o_db_commit(sc->session, on_result, sc);
            break;
        case STEP_ROLLBACK:
            ret = h2o_db_rollback(sc->session, on_result, sc);
            break;
        case STEP_SQL:
            ret = h2o_db_query(sc->session, st->arg, st->nparams, st->params, on_result, sc);
            break;
        }
        if (!issued)
            continue;
        if (ret != 0) {
            refuse(sc);
            if (!sc->cont) {
                sc->failed = 1;
                if (!sc->all || sc->answered == sc->issued + 1)
                    finish(sc);
                return;
            }
            ++sc->issued;
            continue;
        }
        ++sc->issued;
        if (!sc->all)
            return; /* on_result continues */
    }
    if (sc->next >= sc->num_steps && sc->answered == sc->issued)
        finish(sc);
}

static void on_dispose(void *p)
{
    struct script *sc = p;
    sc->alive = 0;
    if (sc->timer != NULL) {
        uv_timer_stop(sc->timer);
        uv_close((uv_handle_t *)sc->timer, (uv_close_cb)free);
        sc->timer = NULL;
    }
}

static char *query_param(h2o_req_t *req, const char *name)
{
    if (req->query_at == SIZE_MAX)
        return NULL;
    const char *q = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    size_t n = strlen(name);
    while (q < end) {
        const char *amp = memchr(q, '&', end - q);
        if (amp == NULL)
            amp = end;
        if ((size_t)(amp - q) > n && memcmp(q, name, n) == 0 && q[n] == '=')
            return h2o_strdup(&req->pool, q + n + 1, amp - q - n - 1).base;
        q = amp + 1;
    }
    return NULL;
}

int db_script(h2o_handler_t *self, h2o_req_t *req)
{
    struct script *sc = h2o_mem_alloc_shared(&req->pool, sizeof(*sc), on_dispose);
    memset(sc, 0, sizeof(*sc));
    sc->req = req;
    sc->alive = 1;
    sc->steps = h2o_mem_alloc_pool(&req->pool, sizeof(struct step) * MAX_STEPS);
    char *text = h2o_strdup(&req->pool, req->entity.base != NULL ? req->entity.base : "", req->entity.len).base;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        size_t len = strlen(line);
        if (len != 0 && line[len - 1] == '\r')
            line[--len] = '\0';
        struct step *st = sc->steps + sc->num_steps;
        if (strncmp(line, "KEY ", 4) == 0) {
            *st = (struct step){STEP_KEY, line + 4};
            sc->key = line + 4;
        } else if (strncmp(line, "FOR ", 4) == 0) {
            *st = (struct step){STEP_FOR, line + 4};
        } else if (strcmp(line, "BEGIN") == 0) {
            *st = (struct step){STEP_BEGIN};
        } else if (strcmp(line, "COMMIT") == 0) {
            *st = (struct step){STEP_COMMIT};
        } else if (strcmp(line, "ROLLBACK") == 0) {
            *st = (struct step){STEP_ROLLBACK};
        } else if (strncmp(line, "SQL ", 4) == 0) {
            *st = (struct step){STEP_SQL, line + 4};
        } else if (strncmp(line, "SLEEP ", 6) == 0) {
            *st = (struct step){STEP_SLEEP, line + 6};
        } else if (strcmp(line, "ALL") == 0) {
            *st = (struct step){STEP_ALL};
        } else if (strcmp(line, "BATCH") == 0) {
            *st = (struct step){STEP_BATCH};
        } else if (strcmp(line, "RETURN") == 0) {
            *st = (struct step){STEP_RETURN};
        } else if (strcmp(line, "READONLY") == 0) {
            *st = (struct step){STEP_READONLY};
        } else if (strcmp(line, "CONTINUE") == 0) {
            sc->cont = 1;
            continue;
        } else if (strcmp(line, "SENDERROR") == 0) {
            sc->send_error = 1;
            continue;
        } else if ((strncmp(line, "P ", 2) == 0 || strcmp(line, "P") == 0 || strcmp(line, "PNULL") == 0) && sc->num_steps != 0 &&
                   sc->steps[sc->num_steps - 1].kind == STEP_SQL) {
            struct step *prev = sc->steps + sc->num_steps - 1;
            if (prev->nparams < MAX_PARAMS)
                prev->params[prev->nparams++] = strcmp(line, "PNULL") == 0 ? NULL : line[1] == '\0' ? "" : line + 2;
            continue;
        } else {
            continue;
        }
        if (sc->num_steps < MAX_STEPS)
            ++sc->num_steps;
    }
    char *key = query_param(req, "key");
    sc->session = h2o_db_session(req, key);
    sc->key = key;
    if (sc->session == NULL) {
        respond(req, 404, "text/plain", "key not attached here\n", 22);
        return 0;
    }
    appends(sc, "{\"results\":[");
    run(sc);
    return 0;
}

int db_keys(h2o_handler_t *self, h2o_req_t *req)
{
    char *keys = query_param(req, "keys"), *out = h2o_mem_alloc_pool(&req->pool, 4096);
    size_t len = 0;
    out[0] = '\0';
    char *save = NULL;
    for (char *k = keys != NULL ? strtok_r(keys, ",", &save) : NULL; k != NULL; k = strtok_r(NULL, ",", &save))
        len += snprintf(out + len, 4096 - len, "%s%s=%d", len != 0 ? " " : "", k, h2o_db_session(req, k) != NULL);
    len += snprintf(out + len, 4096 - len, "\n");
    respond(req, 200, "text/plain", out, len);
    return 0;
}

int db_nothing(h2o_handler_t *self, h2o_req_t *req)
{
    respond(req, 200, "text/plain", "nothing\n", 8);
    return 0;
}

/*
 * db_background: sessions outside the request (h2o_db_session_open/close) on the
 * request's worker thread; the request only starts them and reports. KEY (?key=,
 * default sa_main) must be bound at global level, else 404.
 *   ?mode=max&n=N&ms=MS   N sessions at once, each: BEGIN; count the connections
 *        that share this connection's application_name; SELECT pg_sleep(MS/1000);
 *        COMMIT. The sessions are closed from a uv timer afterwards.
 *        → {"opened":N,"ok":K,"failed":F,"max_connections":M}
 *   ?mode=close&table=T   BEGIN; INSERT INTO T (v) VALUES ('open'); closes the session
 *        inside that INSERT's callback, the transaction still open → {"closed":1}
 *   ?mode=partition&table=T&ptable=P&v=V   BEGIN; INSERT INTO T (v) VALUES (V) on the
 *        session, INSERT INTO P (v) VALUES (V) on h2o_db_session_for(session, P);
 *        COMMIT; closes the session inside the commit's callback
 *        → {"commit":"OK"} or {"commit":"SQL_ERROR","sqlstate":"..."}
 */
#define BG_MAX 64

struct bg;

struct bg_one {
    struct bg *bg;
    h2o_db_session_t *s;
    int step;
};

struct bg {
    h2o_req_t *req;  /* NULL once the request is gone */
    struct bg **ref; /* in the request's pool: points back here while both live */
    int mode;        /* 0 max, 1 close, 2 partition */
    size_t n, finished, ok, failed;
    long max_conns;
    char seconds[32], insert[160], pinsert[160], value[64];
    struct bg_one ones[BG_MAX];
    uv_timer_t timer;
};

static void bg_on_dispose(void *p)
{
    struct bg **ref = p;
    if (*ref != NULL)
        (*ref)->req = NULL;
}

static void bg_free(uv_handle_t *handle)
{
    free(handle->data);
}

/* answers the request (if it is still there) and forgets it */
static void bg_respond(struct bg *bg, int status, const char *json)
{
    if (bg->req != NULL) {
        h2o_req_t *req = bg->req;
        *bg->ref = NULL;
        bg->req = NULL;
        size_t len = strlen(json);
        char *body = h2o_mem_alloc_pool(&req->pool, len + 1);
        memcpy(body, json, len + 1);
        respond(req, status, "application/json", body, len);
    }
}

static void bg_on_close_timer(uv_timer_t *timer)
{
    struct bg *bg = timer->data;
    for (size_t i = 0; i < bg->n; ++i)
        h2o_db_session_close(bg->ones[i].s);
    char json[256];
    snprintf(json, sizeof(json), "{\"opened\":%zu,\"ok\":%zu,\"failed\":%zu,\"max_connections\":%ld}\n", bg->n, bg->ok, bg->failed,
             bg->max_conns);
    bg_respond(bg, 200, json);
    uv_close((uv_handle_t *)&bg->timer, bg_free);
}

static void bg_on_step(h2o_db_result_t *r, void *data)
{
    struct bg_one *one = data;
    struct bg *bg = one->bg;
    int ret = 0;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        ++bg->failed;
        one->step = -1;
    } else {
        switch (one->step++) {
        case 0: /* begun */
            ret = h2o_db_query(one->s,
                               "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = "
                               "current_setting('application_name')",
                               0, NULL, bg_on_step, one);
            break;
        case 1: {
            const char *v = h2o_db_result_rows(r) == 1 ? h2o_db_result_value(r, 0, 0, NULL) : NULL;
            long n = v != NULL ? strtol(v, NULL, 10) : 0;
            if (n > bg->max_conns)
                bg->max_conns = n;
            const char *params[] = {bg->seconds};
            ret = h2o_db_query(one->s, "SELECT pg_sleep($1::float8)", 1, params, bg_on_step, one);
        } break;
        case 2:
            ret = h2o_db_commit(one->s, bg_on_step, one);
            break;
        default:
            ++bg->ok;
            one->step = -1;
            break;
        }
        if (ret != 0) {
            ++bg->failed;
            one->step = -1;
        }
    }
    if (one->step == -1 && ++bg->finished == bg->n) {
        /* close them on a later loop iteration, from a timer on the worker's loop */
        uv_timer_start(&bg->timer, bg_on_close_timer, 0, 0);
    }
}

static void bg_on_inserted_then_close(h2o_db_result_t *r, void *data)
{
    struct bg_one *one = data;
    struct bg *bg = one->bg;
    int ok = h2o_db_result_status(r) == H2O_DB_OK;
    h2o_db_session_close(one->s); /* the transaction is open: rolled back; nothing of it runs later */
    one->s = NULL;
    bg_respond(bg, ok ? 200 : 500, ok ? "{\"closed\":1}\n" : "{\"closed\":0}\n");
    uv_close((uv_handle_t *)&bg->timer, bg_free);
}

static void bg_ignore(h2o_db_result_t *r, void *data)
{
}

static void bg_on_committed_then_close(h2o_db_result_t *r, void *data)
{
    struct bg_one *one = data;
    struct bg *bg = one->bg;
    char json[256];
    if (h2o_db_result_status(r) == H2O_DB_OK)
        snprintf(json, sizeof(json), "{\"commit\":\"OK\"}\n");
    else
        snprintf(json, sizeof(json), "{\"commit\":\"%s\",\"sqlstate\":\"%s\"}\n", status_name(h2o_db_result_status(r)),
                 h2o_db_result_sqlstate(r) != NULL ? h2o_db_result_sqlstate(r) : "");
    h2o_db_session_close(one->s);
    one->s = NULL;
    bg_respond(bg, 200, json);
    uv_close((uv_handle_t *)&bg->timer, bg_free);
}

static int bg_name_ok(const char *s)
{
    return s != NULL && s[0] != '\0' && strlen(s) < 64 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == strlen(s);
}

int db_background(h2o_handler_t *self, h2o_req_t *req)
{
    char *mode = query_param(req, "mode"), *key = query_param(req, "key"), *n = query_param(req, "n"), *ms = query_param(req, "ms"),
         *table = query_param(req, "table"), *ptable = query_param(req, "ptable"), *v = query_param(req, "v");
    struct bg *bg = calloc(1, sizeof(*bg));
    bg->mode = mode == NULL || strcmp(mode, "max") == 0 ? 0 : strcmp(mode, "close") == 0 ? 1 : 2;
    bg->n = bg->mode == 0 ? (n != NULL ? strtoul(n, NULL, 10) : 4) : 1;
    if (bg->n == 0 || bg->n > BG_MAX || (bg->mode != 0 && !bg_name_ok(table)) || (bg->mode == 2 && !bg_name_ok(ptable))) {
        free(bg);
        respond(req, 400, "text/plain", "bad arguments\n", 14);
        return 0;
    }
    snprintf(bg->seconds, sizeof(bg->seconds), "%.3f", (ms != NULL ? strtoul(ms, NULL, 10) : 100) / 1000.0);
    snprintf(bg->value, sizeof(bg->value), "%s", v != NULL ? v : "x");
    for (size_t i = 0; i < bg->n; ++i) {
        bg->ones[i].bg = bg;
        if ((bg->ones[i].s = h2o_db_session_open(req->conn->ctx, key)) == NULL) {
            for (size_t j = 0; j < i; ++j)
                h2o_db_session_close(bg->ones[j].s);
            free(bg);
            respond(req, 404, "text/plain", "no global bind with that key\n", 29);
            return 0;
        }
    }
    bg->req = req;
    bg->ref = h2o_mem_alloc_shared(&req->pool, sizeof(*bg->ref), bg_on_dispose);
    *bg->ref = bg;
    uv_timer_init(req->conn->ctx->loop, &bg->timer);
    bg->timer.data = bg;

    struct bg_one *one = bg->ones;
    const char *params[] = {bg->value};
    switch (bg->mode) {
    case 0:
        for (size_t i = 0; i < bg->n; ++i)
            if (h2o_db_begin(bg->ones[i].s, bg_on_step, bg->ones + i) != 0)
                ++bg->failed, ++bg->finished, bg->ones[i].step = -1;
        if (bg->finished == bg->n)
            uv_timer_start(&bg->timer, bg_on_close_timer, 0, 0);
        break;
    case 1:
        snprintf(bg->insert, sizeof(bg->insert), "INSERT INTO %s (v) VALUES ('open')", table);
        h2o_db_begin(one->s, bg_ignore, NULL);
        h2o_db_query(one->s, bg->insert, 0, NULL, bg_on_inserted_then_close, one);
        break;
    case 2:
        snprintf(bg->insert, sizeof(bg->insert), "INSERT INTO %s (v) VALUES ($1)", table);
        snprintf(bg->pinsert, sizeof(bg->pinsert), "INSERT INTO %s (v) VALUES ($1)", ptable);
        h2o_db_begin(one->s, bg_ignore, NULL);
        h2o_db_query(one->s, bg->insert, 1, params, bg_ignore, NULL);
        h2o_db_query(h2o_db_session_for(one->s, ptable), bg->pinsert, 1, params, bg_ignore, NULL);
        h2o_db_commit(one->s, bg_on_committed_then_close, one);
        break;
    }
    return 0;
}

/* db_script_ctx: db_script, plus a response header `x-h2o-ctx` naming the worker thread's
 * context, so that a test can tell which thread served each request. */
int db_script_ctx(h2o_handler_t *self, h2o_req_t *req)
{
    char *ctx = h2o_mem_alloc_pool(&req->pool, 32);
    int len = snprintf(ctx, 32, "%p", (void *)req->conn->ctx);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-h2o-ctx"), 0, NULL, ctx, len);
    return db_script(self, req);
}

/* db_echo: GET ?id=N[&sleep=SECONDS][&key=K] → {"id":N} from the database (SELECT $1::int, or
 * with sleep, pg_sleep first); ?sqlite=1 uses SQLite's syntax. Answers failures with
 * h2o_db_send_error and an x-sqlstate header. For concurrency tests with plain GETs. */
struct echo {
    h2o_req_t *req;
};

static void on_echo(h2o_db_result_t *r, void *data)
{
    struct echo *e = data;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        const char *st = h2o_db_result_sqlstate(r);
        h2o_add_header_by_str(&e->req->pool, &e->req->res.headers, H2O_STRLIT("x-sqlstate"), 0, NULL, st, strlen(st));
        h2o_db_send_error(e->req, r);
        return;
    }
    h2o_iovec_t json = h2o_db_result_json(&e->req->pool, r);
    respond(e->req, 200, "application/json", json.base, json.len);
}

int db_echo(h2o_handler_t *self, h2o_req_t *req)
{
    char *id = query_param(req, "id"), *sleep = query_param(req, "sleep"), *sqlite = query_param(req, "sqlite");
    h2o_db_session_t *s = h2o_db_session(req, query_param(req, "key"));
    if (s == NULL || id == NULL)
        return -1;
    struct echo *e = h2o_mem_alloc_pool(&req->pool, sizeof(*e));
    e->req = req;
    const char *params[] = {id, sleep};
    const char *sql = sqlite != NULL  ? "SELECT CAST($1 AS INTEGER) AS id"
                      : sleep != NULL ? "SELECT $1::int AS id FROM pg_sleep($2::float8)"
                                      : "SELECT $1::int AS id";
    if (h2o_db_query(s, sql, sleep != NULL && sqlite == NULL ? 2 : 1, params, on_echo, e) != 0)
        return -1;
    return 0;
}
