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
 *   CONTINUE         go on after a failed step (default: stop there)
 *   RETURN           answer now, whatever is still open (request-end clean-up)
 *   SENDERROR        on a failed step, answer with h2o_db_send_error()
 * A step h2o_db_* refuses is reported as {"status":"REFUSED"}.
 *
 * db_keys: ?keys=a,b,c → "a=1 b=0 c=1" (whether h2o_db_session(req, k) != NULL).
 * db_nothing: answers 200 without touching any session.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "h2o_db.h"

#define MAX_STEPS 4096
#define MAX_PARAMS 64

enum { STEP_KEY, STEP_FOR, STEP_BEGIN, STEP_COMMIT, STEP_ROLLBACK, STEP_SQL, STEP_SLEEP, STEP_ALL, STEP_RETURN };

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
            h2o_add_header_by_str(&sc->req->pool, &sc->req->res.headers, H2O_STRLIT("x-sqlstate"), 0, NULL,
                                  h2o_db_result_sqlstate(r), strlen(h2o_db_result_sqlstate(r)));
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
        case STEP_RETURN:
            finish(sc);
            return;
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
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
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
        } else if (strcmp(line, "RETURN") == 0) {
            *st = (struct step){STEP_RETURN};
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
    for (char *k = keys != NULL ? strtok(keys, ",") : NULL; k != NULL; k = strtok(NULL, ","))
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
