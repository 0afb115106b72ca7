/*
 * The TechEmpower web framework benchmark's tests as c.handler entry points,
 * written against include/h2o_db.h alone (what any user of h2o-db would write):
 *
 *   te_json      /json          {"message":"Hello, World!"}
 *   te_plaintext /plaintext     Hello, World!
 *   te_db        /db            one random World row
 *   te_queries   /queries?queries=N   N random rows (N clamped to 1..500, not a number → 1), read
 *                               with one h2o_db_query_batch
 *   te_fortunes  /fortunes      all Fortune rows plus one added at request time, sorted, as HTML
 *   te_updates   /updates?queries=N   N random rows read as /queries does, then each given a new
 *                               randomNumber by one bulk UPDATE whose subquery locks the rows
 *                               in id order (concurrent updates take locks in the same order:
 *                               no deadlock)
 *
 * Schema (bench/schema-*.sql): world(id integer primary key, randomnumber integer),
 * fortune(id integer primary key, message text). The session is the path's sa_main.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "h2o_db.h"

#define MAX_QUERIES 500
#define WORLD_ROWS  10000

static const char WORLD_SQL[] = "SELECT id, randomnumber AS \"randomNumber\" FROM world WHERE id = $1";
static const char FORTUNE_SQL[] = "SELECT id, message FROM fortune";

static __thread uint64_t rng_state;

static unsigned random_id(void)
{
    if (rng_state == 0)
        rng_state = (uint64_t)(uintptr_t)&rng_state ^ 0x9E3779B97F4A7C15ULL;
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % WORLD_ROWS) + 1;
}

static void respond(h2o_req_t *req, int status, const char *type, size_t type_len, h2o_iovec_t *body, size_t n)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : "Error";
    req->res.content_length = 0;
    for (size_t i = 0; i < n; ++i)
        req->res.content_length += body[i].len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, type_len);
    h2o_start_response(req, &generator);
    h2o_send(req, body, n, 1);
}

#define RESPOND_JSON(req, body, n) respond(req, 200, H2O_STRLIT("application/json"), body, n)

/* The benchmark's rule: the JSON is serialised per request, from an object. */
struct message {
    const char *message;
};

static h2o_iovec_t message_json(h2o_mem_pool_t *pool, const struct message *m)
{
    size_t n = strlen(m->message), len = 0;
    char *out = h2o_mem_alloc_pool(pool, n * 6 + 16);
    memcpy(out, "{\"message\":\"", 12);
    len = 12;
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)m->message[i];
        if (c == '"' || c == '\\') {
            out[len++] = '\\';
            out[len++] = (char)c;
        } else if (c < 0x20) {
            len += sprintf(out + len, "\\u%04x", c);
        } else {
            out[len++] = (char)c;
        }
    }
    memcpy(out + len, "\"}", 2);
    return h2o_iovec_init(out, len + 2);
}

int te_json(h2o_handler_t *self, h2o_req_t *req)
{
    struct message m = {"Hello, World!"};
    h2o_iovec_t body = message_json(&req->pool, &m);
    RESPOND_JSON(req, &body, 1);
    return 0;
}

int te_plaintext(h2o_handler_t *self, h2o_req_t *req)
{
    h2o_iovec_t body = h2o_iovec_init(H2O_STRLIT("Hello, World!"));
    respond(req, 200, H2O_STRLIT("text/plain"), &body, 1);
    return 0;
}

/* ---- /db ---- */

struct one {
    h2o_req_t *req;
    char id[12];
};

static void on_db(h2o_db_result_t *r, void *data)
{
    struct one *o = data;
    if (h2o_db_result_status(r) != H2O_DB_OK || h2o_db_result_rows(r) != 1) {
        h2o_db_send_error(o->req, r);
        return;
    }
    /* [{"id":1,"randomNumber":2}] → the object alone */
    h2o_iovec_t json = h2o_db_result_json(&o->req->pool, r);
    h2o_iovec_t body = h2o_iovec_init(json.base + 1, json.len - 2);
    RESPOND_JSON(o->req, &body, 1);
}

int te_db(h2o_handler_t *self, h2o_req_t *req)
{
    h2o_db_session_t *s = h2o_db_session(req, NULL);
    if (s == NULL)
        return -1;
    struct one *o = h2o_mem_alloc_pool(&req->pool, sizeof(*o));
    o->req = req;
    snprintf(o->id, sizeof(o->id), "%u", random_id());
    const char *params[] = {o->id};
    if (h2o_db_query(s, WORLD_SQL, 1, params, on_db, o) != 0)
        return -1;
    return 0;
}

/* ---- /queries and /updates ---- */

struct many {
    h2o_req_t *req;
    h2o_db_session_t *session;
    size_t n;
    int failed, update;
    h2o_iovec_t *bodies; /* one per row, then "[" "," ... "]" interleaved at the end */
    unsigned *ids, *numbers;
    char (*idtext)[12];
    char (*numtext)[12];
};

/* The parameter named exactly `queries` (not `xqueries`), clamped to 1..500; 1 if absent. */
static size_t parse_queries(h2o_req_t *req)
{
    if (req->query_at == SIZE_MAX)
        return 1;
    const char *p = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    while (p < end) {
        const char *amp = memchr(p, '&', end - p), *next = amp != NULL ? amp + 1 : end;
        if (next - p >= 8 && memcmp(p, "queries=", 8) == 0) {
            char num[12];
            size_t len = (amp != NULL ? amp : end) - (p + 8);
            snprintf(num, sizeof(num), "%.*s", (int)(len < sizeof(num) ? len : sizeof(num) - 1), p + 8);
            long n = strtol(num, NULL, 10);
            return n < 1 ? 1 : n > MAX_QUERIES ? MAX_QUERIES : (size_t)n;
        }
        p = next;
    }
    return 1;
}

static void many_respond(struct many *m)
{
    h2o_iovec_t *parts = h2o_mem_alloc_pool(&m->req->pool, sizeof(*parts) * (m->n * 2 + 1));
    size_t k = 0;
    for (size_t i = 0; i < m->n; ++i) {
        parts[k++] = h2o_iovec_init(i == 0 ? "[" : ",", 1);
        parts[k++] = m->bodies[i];
    }
    parts[k++] = h2o_iovec_init("]", 1);
    RESPOND_JSON(m->req, parts, k);
}

static void on_update(h2o_db_result_t *r, void *data)
{
    struct many *m = data;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        h2o_db_send_error(m->req, r);
        return;
    }
    many_respond(m);
}

static int by_id(const void *a, const void *b)
{
    unsigned x = **(const unsigned *const *)a, y = **(const unsigned *const *)b;
    return x < y ? -1 : x > y;
}

/* UPDATE world SET randomnumber = CASE world.id WHEN $1 THEN $2::int ... END FROM (SELECT id FROM
 * world WHERE id IN ($1, ...) ORDER BY id FOR UPDATE) AS locked WHERE world.id = locked.id: the
 * subquery takes the row locks in id order (a plain WHERE id IN (...) locks them in the order its
 * scan meets them, which after many updates is not the ids', and two requests then deadlocked:
 * 40P01, seen under wrk) */
static void start_updates(struct many *m)
{
    h2o_mem_pool_t *pool = &m->req->pool;
    unsigned **order = h2o_mem_alloc_pool(pool, sizeof(*order) * m->n);
    for (size_t i = 0; i < m->n; ++i)
        order[i] = &m->ids[i];
    qsort(order, m->n, sizeof(*order), by_id);
    for (size_t i = 0; i < m->n; ++i) {
        size_t k = order[i] - m->ids, prev = i != 0 ? (size_t)(order[i - 1] - m->ids) : 0;
        /* a row drawn twice gets one number: the one the UPDATE gives it */
        m->numbers[k] = i != 0 && m->ids[prev] == m->ids[k] ? m->numbers[prev] : random_id();
        snprintf(m->numtext[k], sizeof(m->numtext[k]), "%u", m->numbers[k]);
        char *json = h2o_mem_alloc_pool(pool, 48);
        m->bodies[k] = h2o_iovec_init(json, snprintf(json, 48, "{\"id\":%u,\"randomNumber\":%u}", m->ids[k], m->numbers[k]));
    }
    const char **params = h2o_mem_alloc_pool(pool, sizeof(*params) * m->n * 2);
    size_t cap = 192 + m->n * 40, len = 0;
    char *sql = h2o_mem_alloc_pool(pool, cap);
    len += snprintf(sql + len, cap - len, "UPDATE world SET randomnumber = CASE world.id");
    for (size_t i = 0; i < m->n; ++i) {
        size_t k = order[i] - m->ids; /* its index in the response */
        params[2 * i] = m->idtext[k];
        params[2 * i + 1] = m->numtext[k];
        len += snprintf(sql + len, cap - len, " WHEN $%zu THEN $%zu::int", 2 * i + 1, 2 * i + 2);
    }
    len += snprintf(sql + len, cap - len, " END FROM (SELECT id FROM world WHERE id IN (");
    for (size_t i = 0; i < m->n; ++i)
        len += snprintf(sql + len, cap - len, "%s$%zu", i == 0 ? "" : ",", 2 * i + 1);
    snprintf(sql + len, cap - len, ") ORDER BY id FOR UPDATE) AS locked WHERE world.id = locked.id");
    if (h2o_db_query(m->session, sql, m->n * 2, params, on_update, m) != 0)
        h2o_send_error_500(m->req, "Internal Server Error", "cannot update\n", 0);
}

static void on_row(h2o_db_result_t *r, size_t i, void *data)
{
    struct many *m = data;
    if (m->failed)
        return;
    if (h2o_db_result_status(r) != H2O_DB_OK || h2o_db_result_rows(r) != 1) {
        m->failed = 1;
        h2o_db_send_error(m->req, r);
        return;
    }
    h2o_iovec_t json = h2o_db_result_json(&m->req->pool, r);
    m->bodies[i] = h2o_iovec_init(json.base + 1, json.len - 2);
    if (i + 1 < m->n)
        return;
    if (m->update)
        start_updates(m);
    else
        many_respond(m);
}

static int run_many(h2o_req_t *req, int update)
{
    h2o_db_session_t *s = h2o_db_session(req, NULL);
    if (s == NULL)
        return -1;
    struct many *m = h2o_mem_alloc_pool(&req->pool, sizeof(*m));
    memset(m, 0, sizeof(*m));
    m->req = req;
    m->session = s;
    m->update = update;
    m->n = parse_queries(req);
    m->bodies = h2o_mem_alloc_pool(&req->pool, sizeof(*m->bodies) * m->n);
    m->ids = h2o_mem_alloc_pool(&req->pool, sizeof(*m->ids) * m->n);
    m->numbers = h2o_mem_alloc_pool(&req->pool, sizeof(*m->numbers) * m->n);
    m->idtext = h2o_mem_alloc_pool(&req->pool, sizeof(*m->idtext) * m->n);
    m->numtext = h2o_mem_alloc_pool(&req->pool, sizeof(*m->numtext) * m->n);
    h2o_db_statement_t *stmts = h2o_mem_alloc_pool(&req->pool, sizeof(*stmts) * m->n);
    const char **params = h2o_mem_alloc_pool(&req->pool, sizeof(*params) * m->n);
    for (size_t i = 0; i < m->n; ++i) {
        m->ids[i] = random_id();
        snprintf(m->idtext[i], sizeof(m->idtext[i]), "%u", m->ids[i]);
        params[i] = m->idtext[i];
        stmts[i] = (h2o_db_statement_t){WORLD_SQL, 1, params + i};
    }
    return h2o_db_query_batch(s, stmts, m->n, on_row, m) != 0 ? -1 : 0;
}

int te_queries(h2o_handler_t *self, h2o_req_t *req)
{
    return run_many(req, 0);
}

int te_updates(h2o_handler_t *self, h2o_req_t *req)
{
    return run_many(req, 1);
}

/* ---- /fortunes ---- */

struct fortune {
    long id;
    const char *message;
    size_t len;
};

static int by_message(const void *a, const void *b)
{
    const struct fortune *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->message, y->message, n);
    return c != 0 ? c : x->len < y->len ? -1 : x->len > y->len;
}

static size_t html_escape(char *dst, const char *s, size_t n)
{
    size_t out = 0;
    for (size_t i = 0; i < n; ++i) {
        const char *rep = NULL;
        switch (s[i]) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&#39;";
            break;
        }
        if (rep != NULL) {
            size_t k = strlen(rep);
            memcpy(dst + out, rep, k);
            out += k;
        } else {
            dst[out++] = s[i];
        }
    }
    return out;
}

static void on_fortunes(h2o_db_result_t *r, void *data)
{
    h2o_req_t *req = data;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        h2o_db_send_error(req, r);
        return;
    }
    size_t rows = h2o_db_result_rows(r), n = rows + 1, cap = 256;
    struct fortune *f = h2o_mem_alloc_pool(&req->pool, sizeof(*f) * n);
    for (size_t i = 0; i < rows; ++i) {
        size_t len;
        const char *id = h2o_db_result_value(r, i, 0, NULL), *msg = h2o_db_result_value(r, i, 1, &len);
        f[i].id = strtol(id, NULL, 10);
        /* results live only during the callback: copy */
        f[i].message = h2o_strdup(&req->pool, msg != NULL ? msg : "", msg != NULL ? len : 0).base;
        f[i].len = msg != NULL ? len : 0;
        cap += 6 * f[i].len + 64;
    }
    f[rows] = (struct fortune){0, "Additional fortune added at request time.", 41};
    cap += 6 * 41 + 64;
    qsort(f, n, sizeof(*f), by_message);

    static const char head[] =
        "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>",
                      tail[] = "</table></body></html>";
    char *html = h2o_mem_alloc_pool(&req->pool, cap + sizeof(head) + sizeof(tail));
    size_t len = 0;
    memcpy(html, head, sizeof(head) - 1);
    len += sizeof(head) - 1;
    for (size_t i = 0; i < n; ++i) {
        len += sprintf(html + len, "<tr><td>%ld</td><td>", f[i].id);
        len += html_escape(html + len, f[i].message, f[i].len);
        memcpy(html + len, "</td></tr>", 10);
        len += 10;
    }
    memcpy(html + len, tail, sizeof(tail) - 1);
    len += sizeof(tail) - 1;
    h2o_iovec_t body = h2o_iovec_init(html, len);
    respond(req, 200, H2O_STRLIT("text/html; charset=utf-8"), &body, 1);
}

int te_fortunes(h2o_handler_t *self, h2o_req_t *req)
{
    h2o_db_session_t *s = h2o_db_session(req, NULL);
    if (s == NULL || h2o_db_query(s, FORTUNE_SQL, 0, NULL, on_fortunes, req) != 0)
        return -1;
    return 0;
}
