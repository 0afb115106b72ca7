/*
 * PostgreSQL behind the real h2o-db over HTTP/1.1 and HTTP/2 (docs/directives/db.bind.md, docs/c-api.md):
 * which keys are attached where, lazy sessions, transactions and request-end
 * rollback, SQLSTATEs, statement order, NULL parameters, typed JSON, the pool's
 * hard cap and its 503 + Retry-After, every URL form against the real server,
 * on-connect and schema.
 *
 * Requests go to the db_script / db_keys / db_nothing test handlers
 * (t/handlers/db_handlers.c). Every test uses its own tables and its own
 * application_name, since all share one database.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "db_util.h"

static th_server_t server;

static void kill_server(void)
{
    if (server.pid > 0) {
        kill(server.pid, SIGKILL);
        server.pid = 0;
    }
}

static void setup(void)
{
    th_require_pg();
    memset(&server, 0, sizeof(server));
}

static void teardown(void)
{
    kill_server();
}

/* A name nobody else uses in the shared database: PREFIX_PID_N. */
/* Counts the server connections PostgreSQL sees with this application_name. */
static long pg_conns(const char *appname)
{
    char *sql = th_fmt("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'", appname);
    long n = th_pg_count(sql);
    free(sql);
    return n;
}

static long pg_count_rows(const char *table, const char *where)
{
    char *sql = th_fmt("SELECT count(*) FROM %s%s%s", table, where != NULL ? " WHERE " : "", where != NULL ? where : "");
    long n = th_pg_count(sql);
    free(sql);
    return n;
}

static void pg_exec(const char *sql)
{
    free(th_pg(sql));
}

/* The test database's URL pieces: postgresql://USER@HOST:PORT/DB */
struct pg_parts {
    char user[64], host[64], db[64];
    int port;
};

static void pg_parts(const char *url, struct pg_parts *p)
{
    memset(p, 0, sizeof(*p));
    ck_assert_msg(sscanf(url, "postgresql://%63[^@]@%63[^:]:%d/%63s", p->user, p->host, &p->port, p->db) == 4, "cannot parse %s",
                  url);
}

/* ---- watching pg_stat_activity while requests run ---- */

struct watcher {
    pthread_t tid;
    const char *appname;
    int stop; /* __atomic: written by the test, read by the watcher */
    long max, samples;
    char error[256];
};

static void *watch_main(void *arg)
{
    struct watcher *w = arg;
    PGconn *c = PQconnectdb(th_pg_url());
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(w->error, sizeof(w->error), "watcher: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    const char *params[] = {w->appname};
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        PGresult *r =
            PQexecParams(c, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
            if (n > w->max)
                w->max = n;
            ++w->samples;
        }
        PQclear(r);
        usleep(5000);
    }
    PQfinish(c);
    return NULL;
}

static void watch_start(struct watcher *w, const char *appname)
{
    memset(w, 0, sizeof(*w));
    w->appname = appname;
    ck_assert(pthread_create(&w->tid, NULL, watch_main, w) == 0);
}

static void watch_stop(struct watcher *w)
{
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    pthread_join(w->tid, NULL);
    ck_assert_msg(w->error[0] == '\0', "%s", w->error);
    ck_assert_msg(w->samples > 0, "the watcher took no sample");
}

static int zero_conns(void *appname)
{
    return pg_conns(appname) == 0;
}

static int some_conns(void *appname)
{
    return pg_conns(appname) > 0;
}

/* ---- attachment ---- */

#define ATT_URL "\"@PG@?application_name=att_@PORT@\""
static const char *ATTACH_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                 "num-threads: 1\n"
                                 "db.bind:\n"
                                 "  - url: " ATT_URL "\n"
                                 "  - {url: " ATT_URL ", key: g_off, middleware: OFF}\n"
                                 "  - {url: " ATT_URL ", key: g_off2, middleware: OFF}\n"
                                 "hosts:\n"
                                 "  alpha:\n"
                                 "    db.use: g_off\n"
                                 "    db.bind: {url: " ATT_URL ", key: h_on}\n"
                                 "    paths:\n"
                                 "      /keys:\n"
                                 "        c.handler: " DB_HANDLERS ":db_keys\n"
                                 "      /more:\n"
                                 "        db.use: [g_off2]\n"
                                 "        db.bind: {url: " ATT_URL ", key: p_on}\n"
                                 "        c.handler: " DB_HANDLERS ":db_keys\n"
                                 "      /stack:\n"
                                 "        db.use: [g_off2, p_off]\n"
                                 "        db.bind: [{url: " ATT_URL ", key: p_off, middleware: OFF}]\n"
                                 "        c.handler: " DB_HANDLERS ":db_keys\n"
                                 "      /three:\n"
                                 "        db.bind: {url: " ATT_URL ", key: p3}\n"
                                 "        c.handler: " DB_HANDLERS ":db_nothing\n"
                                 "      /script:\n"
                                 "        c.handler: " DB_HANDLERS ":db_script\n"
                                 "      /status:\n"
                                 "        db.status: ON\n"
                                 "  beta:\n"
                                 "    paths:\n"
                                 "      /keys:\n"
                                 "        c.handler: " DB_HANDLERS ":db_keys\n"
                                 "      /offs:\n"
                                 "        db.use: [g_off, g_off2]\n"
                                 "        c.handler: " DB_HANDLERS ":db_keys\n";

#define ALL_KEYS "?keys=sa_main,g_off,g_off2,h_on,p_on,p_off,p3,nosuch"

START_TEST(keys_are_attached_by_scope_middleware_and_db_use)
{
    struct {
        const char *host, *path, *expect;
    } cases[] = {
        {"alpha", "/keys" ALL_KEYS, "sa_main=1 g_off=1 g_off2=0 h_on=1 p_on=0 p_off=0 p3=0 nosuch=0\n"},
        {"alpha", "/keys/below" ALL_KEYS, "sa_main=1 g_off=1 g_off2=0 h_on=1 p_on=0 p_off=0 p3=0 nosuch=0\n"},
        {"alpha", "/more" ALL_KEYS, "sa_main=1 g_off=1 g_off2=1 h_on=1 p_on=1 p_off=0 p3=0 nosuch=0\n"},
        /* two middleware: OFF keys stacked by one db.use (a global and the path's own, named before its bind) */
        {"alpha", "/stack" ALL_KEYS, "sa_main=1 g_off=1 g_off2=1 h_on=1 p_on=0 p_off=1 p3=0 nosuch=0\n"},
        {"beta", "/keys" ALL_KEYS, "sa_main=1 g_off=0 g_off2=0 h_on=0 p_on=0 p_off=0 p3=0 nosuch=0\n"},
        {"beta", "/offs" ALL_KEYS, "sa_main=1 g_off=1 g_off2=1 h_on=0 p_on=0 p_off=0 p3=0 nosuch=0\n"},
    };
    db_start(&server, ATTACH_CONF);
    char *appname = th_fmt("att_%d", server.port);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
            th_response_t res;
            db_request(&server, &res, v, cases[i].host, cases[i].path, NULL);
            ck_assert_msg(res.status == 200, "%s %s: status %ld", cases[i].host, cases[i].path, res.status);
            ck_assert_msg(strcmp(res.body, cases[i].expect) == 0, "HTTP/%s %s %s: expected %s got %s", v == TH_HTTP1 ? "1.1" : "2",
                          cases[i].host, cases[i].path, cases[i].expect, res.body);
            th_response_free(&res);
        }
        /* a path with 4 keys attached (3 middleware: ON) whose handler never asks */
        for (int i = 0; i < 5; ++i) {
            th_response_t res;
            db_request(&server, &res, v, "alpha", "/three", NULL);
            ck_assert_int_eq(res.status, 200);
            ck_assert_str_eq(res.body, "nothing\n");
            th_response_free(&res);
        }
    }
    /* sessions were created (db_keys asks for each key), but nothing queried: no connection was
     * ever tried (a connect is counted when it starts, inside the request that asks for it) */
    char *page = db_status_page(&server, "alpha", "/status");
    ck_assert_msg(db_status_sum(page, NULL, "connects") == 0 && db_status_sum(page, NULL, "connections_all_threads") == 0,
                  "connections opened by requests that never queried:\n%s", page);
    free(page);
    ck_assert_msg(pg_conns(appname) == 0, "%ld connections opened by requests that never queried", pg_conns(appname));

    /* the control: one query opens one */
    th_response_t res;
    db_request(&server, &res, TH_HTTP1, "alpha", "/script", "SQL SELECT 1 AS one");
    ck_assert_int_eq(res.status, 200);
    db_assert_result(res.body, 0, "OK", "[{\"one\":1}]");
    th_response_free(&res);
    ck_assert_msg(th_wait_until(some_conns, appname, 10000), "a query opened no connection with application_name %s?", appname);
    db_stop(&server);
    ck_assert_msg(th_wait_until(zero_conns, appname, 10000), "connections left open after the server stopped");
    free(appname);
}
END_TEST

/* ---- transactions ---- */

static const char *TX_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                             "num-threads: 1\n"
                             "db.bind:\n"
                             "  url: \"@PG@?application_name=tx_@PORT@\"\n"
                             "  pool: {max: 1}\n"
                             "hosts:\n"
                             "  default:\n"
                             "    paths:\n"
                             "      /s:\n"
                             "        c.handler: " DB_HANDLERS ":db_script\n";

START_TEST(uncommitted_transaction_is_rolled_back_at_request_end)
{
    db_start(&server, TX_CONF);
    char *t = th_uniq("tx_rb");
    char *sql = th_fmt("CREATE TABLE %s (id int PRIMARY KEY)", t);
    pg_exec(sql);
    free(sql);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        int id = v * 10;
        th_response_t res;
        char *script = th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (%d)\nRETURN\n", t, id);
        db_script(&server, &res, v, "/s", script);
        db_assert_result(res.body, 0, "OK", NULL);
        db_assert_result(res.body, 1, "OK", "[]");
        ck_assert_int_eq(db_num_results(res.body), 2);
        th_response_free(&res);
        free(script);
        char *where = th_fmt("id = %d", id);
        ck_assert_msg(pg_count_rows(t, where) == 0, "HTTP/%d: an uncommitted insert is visible", v);

        /* the only connection (max: 1) came back clean: an autocommit statement on it commits, in a fresh transaction */
        script = th_fmt("SQL INSERT INTO %s VALUES (%d)\nSQL SELECT count(*)::int AS n FROM %s", t, id + 1, t);
        db_script(&server, &res, v, "/s", script);
        db_assert_result(res.body, 0, "OK", "[]");
        db_assert_result(res.body, 1, "OK", "[{\"n\":1}]");
        th_response_free(&res);
        free(script);
        ck_assert_msg(pg_count_rows(t, where) == 0, "HTTP/%d: the rolled back insert appeared later", v);
        free(where);
        where = th_fmt("id = %d", id + 1);
        ck_assert_msg(pg_count_rows(t, where) == 1, "HTTP/%d: the autocommit insert after it did not commit", v);
        free(where);
        sql = th_fmt("DELETE FROM %s", t);
        pg_exec(sql);
        free(sql);
    }
    db_stop(&server);
    free(t);
}
END_TEST

START_TEST(committed_transaction_is_visible)
{
    db_start(&server, TX_CONF);
    char *t = th_uniq("tx_commit");
    char *sql = th_fmt("CREATE TABLE %s (id int PRIMARY KEY, v text)", t);
    pg_exec(sql);
    free(sql);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        th_response_t res;
        char *script =
            th_fmt("BEGIN\nSQL INSERT INTO %s VALUES ($1, $2)\nP %d\nP one\nSQL INSERT INTO %s VALUES ($1, $2)\nP %d\nP two\n"
                   "SQL SELECT count(*)::int AS n FROM %s\nCOMMIT\n",
                   t, v * 10, t, v * 10 + 1, t);
        db_script(&server, &res, v, "/s", script);
        ck_assert_int_eq(db_num_results(res.body), 5);
        for (int i = 0; i < 5; ++i)
            db_assert_result(res.body, i, "OK", NULL);
        /* the transaction sees its own rows */
        db_assert_result(res.body, 1, "OK", "[]");
        db_assert_result(res.body, 2, "OK", "[]");
        db_assert_result(res.body, 3, "OK", v == TH_HTTP1 ? "[{\"n\":2}]" : "[{\"n\":4}]");
        th_response_free(&res);
        free(script);
        ck_assert_int_eq(pg_count_rows(t, NULL), v * 2);
    }
    char *v = th_pg(sql = th_fmt("SELECT string_agg(v, ',' ORDER BY id) FROM %s", t));
    ck_assert_str_eq(v, "one,two,one,two");
    free(v);
    free(sql);
    db_stop(&server);
    free(t);
}
END_TEST

START_TEST(sql_error_in_a_transaction_fails_it_and_the_connection_is_reusable)
{
    db_start(&server, TX_CONF);
    char *t = th_uniq("tx_err");
    char *sql = th_fmt("CREATE TABLE %s (id int PRIMARY KEY)", t);
    pg_exec(sql);
    free(sql);
    th_response_t res;

    /* one step after the other: COMMIT comes after the failure is known */
    char *script =
        th_fmt("CONTINUE\nBEGIN\nSQL INSERT INTO %s VALUES (1)\nSQL SELECT 1/0 AS x\nSQL SELECT 1 AS one\nCOMMIT\nROLLBACK\n"
               "SQL SELECT 1 AS one\n",
               t);
    db_script(&server, &res, TH_HTTP1, "/s", script);
    ck_assert_int_eq(db_num_results(res.body), 7);
    db_assert_result(res.body, 0, "OK", NULL);
    db_assert_result(res.body, 1, "OK", NULL);
    db_assert_error(res.body, 2, "SQL_ERROR", "22012");
    db_assert_error(res.body, 3, "SQL_ERROR", "25P02");
    char *st = db_status_of(res.body, 4);
    ck_assert_msg(strcmp(st, "OK") != 0 && st[0] != '\0', "COMMIT of a failed transaction answered %s: %s", st, res.body);
    free(st);
    db_assert_result(res.body, 5, "OK", NULL);
    db_assert_result(res.body, 6, "OK", "[{\"one\":1}]");
    th_response_free(&res);
    free(script);
    ck_assert_int_eq(pg_count_rows(t, NULL), 0);

    /* all at once (pipelined): COMMIT is accepted before the failure is known, and must answer an error */
    script = th_fmt("CONTINUE\nALL\nBEGIN\nSQL INSERT INTO %s VALUES (2)\nSQL SELECT 1/0 AS x\nSQL SELECT 2 AS two\nCOMMIT\n", t);
    db_script(&server, &res, TH_HTTP2, "/s", script);
    ck_assert_int_eq(db_num_results(res.body), 5);
    db_assert_result(res.body, 0, "OK", NULL);
    db_assert_result(res.body, 1, "OK", NULL);
    db_assert_error(res.body, 2, "SQL_ERROR", "22012");
    db_assert_error(res.body, 3, "SQL_ERROR", "25P02");
    st = db_status_of(res.body, 4);
    ck_assert_msg(strcmp(st, "OK") != 0 && st[0] != '\0', "pipelined COMMIT of a failed transaction answered %s: %s", st, res.body);
    free(st);
    th_response_free(&res);
    free(script);
    ck_assert_int_eq(pg_count_rows(t, NULL), 0);

    /* the only connection is usable by the next request, outside any transaction */
    script = th_fmt("SQL INSERT INTO %s VALUES (3)\nSQL SELECT count(*)::int AS n FROM %s\n", t, t);
    db_script(&server, &res, TH_HTTP1, "/s", script);
    db_assert_result(res.body, 0, "OK", NULL);
    db_assert_result(res.body, 1, "OK", "[{\"n\":1}]");
    th_response_free(&res);
    free(script);
    ck_assert_int_eq(pg_count_rows(t, NULL), 1);
    db_stop(&server);
    free(t);
}
END_TEST

START_TEST(unique_violation_is_23505)
{
    db_start(&server, TX_CONF);
    char *t = th_uniq("uniq");
    char *sql = th_fmt("CREATE TABLE %s (id int PRIMARY KEY)", t);
    pg_exec(sql);
    free(sql);
    th_response_t res;
    char *script = th_fmt(
        "CONTINUE\nSQL INSERT INTO %s VALUES (1)\nSQL INSERT INTO %s VALUES (1)\nBEGIN\nSQL INSERT INTO %s VALUES ($1)\nP 1\n"
        "ROLLBACK\n",
        t, t, t);
    db_script(&server, &res, TH_HTTP1, "/s", script);
    db_assert_result(res.body, 0, "OK", NULL);
    db_assert_error(res.body, 1, "SQL_ERROR", "23505");
    db_assert_result(res.body, 2, "OK", NULL);
    db_assert_error(res.body, 3, "SQL_ERROR", "23505");
    db_assert_result(res.body, 4, "OK", NULL);
    th_response_free(&res);
    free(script);

    /* h2o_db_send_error: 500, and the body carries neither SQL nor connection details */
    char *dbname = th_pg("SELECT current_database()");
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        script = th_fmt("SENDERROR\nSQL INSERT INTO %s VALUES (1)\n", t);
        db_request(&server, &res, v, NULL, "/s", script);
        ck_assert_int_eq(res.status, 500);
        char *ss = th_header(&res, "x-sqlstate");
        ck_assert_ptr_nonnull(ss);
        ck_assert_str_eq(ss, "23505");
        free(ss);
        ck_assert_msg(strstr(res.body, "INSERT") == NULL && strstr(res.body, t) == NULL && strstr(res.body, "127.0.0.1") == NULL &&
                          strstr(res.body, dbname) == NULL && strstr(res.body, "duplicate key") == NULL,
                      "the error body gives details away: %s", res.body);
        th_response_free(&res);
        free(script);
    }
    free(dbname);
    ck_assert_int_eq(pg_count_rows(t, NULL), 1);
    db_stop(&server);
    free(t);
}
END_TEST

static const char *ORDER_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                "num-threads: 1\n"
                                "db.bind:\n"
                                "  url: \"@PG@?application_name=order_@PORT@\"\n"
                                "  pool: {max: 4}\n"
                                "hosts:\n"
                                "  default:\n"
                                "    paths:\n"
                                "      /s:\n"
                                "        c.handler: " DB_HANDLERS ":db_script\n";

START_TEST(statements_of_one_session_run_and_answer_in_order)
{
    db_start(&server, ORDER_CONF);
    char *t = th_uniq("ord");
    char *sql = th_fmt("CREATE TABLE %s (id int)", t);
    pg_exec(sql);
    free(sql);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        /* a slow statement first: nothing after it may overtake it, even with idle connections around */
        size_t cap = 8192, len = 0;
        char *script = malloc(cap);
        len += snprintf(script + len, cap - len, "ALL\nSQL SELECT pg_sleep(0.2)::text AS slept\nSQL DELETE FROM %s\n", t);
        for (int i = 1; i <= 10; ++i)
            len += snprintf(script + len, cap - len,
                            "SQL INSERT INTO %s VALUES (%d)\nSQL SELECT count(*)::int AS n, max(id) AS m FROM %s\n", t, i, t);
        th_response_t res;
        db_script(&server, &res, v, "/s", script);
        ck_assert_int_eq(db_num_results(res.body), 22);
        db_assert_result(res.body, 0, "OK", "[{\"slept\":\"\"}]");
        db_assert_result(res.body, 1, "OK", "[]");
        for (int i = 1; i <= 10; ++i) {
            char expect[64];
            snprintf(expect, sizeof(expect), "[{\"n\":%d,\"m\":%d}]", i, i);
            db_assert_result(res.body, 2 * i, "OK", "[]");
            db_assert_result(res.body, 2 * i + 1, "OK", expect);
        }
        th_response_free(&res);
        free(script);
    }
    db_stop(&server);
    free(t);
}
END_TEST

START_TEST(null_and_empty_parameters)
{
    db_start(&server, TX_CONF);
    char *t = th_uniq("nulls");
    char *sql = th_fmt("CREATE TABLE %s (id int, v text)", t);
    pg_exec(sql);
    free(sql);
    th_response_t res;
    char *script = th_fmt("SQL SELECT $1::text IS NULL AS a, $2::int AS b, $3::text AS c, $4::text = '' AS empty, $5::text AS q\n"
                          "PNULL\nP 7\nPNULL\nP\nP it's \"quoted\" \\ and é\n"
                          "SQL INSERT INTO %s VALUES ($1, $2)\nP 1\nPNULL\n"
                          "SQL INSERT INTO %s VALUES ($2::int, $1)\nP x\nP 2\n"
                          "SQL SELECT id, v, v IS NULL AS isnull FROM %s ORDER BY id\n",
                          t, t, t);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        db_script(&server, &res, v, "/s", script);
        db_assert_result(res.body, 0, "OK",
                         "[{\"a\":true,\"b\":7,\"c\":null,\"empty\":true,\"q\":\"it's \\\"quoted\\\" \\\\ and \xc3\xa9\"}]");
        db_assert_result(res.body, 1, "OK", "[]");
        db_assert_result(res.body, 2, "OK", "[]");
        db_assert_result(res.body, 3, "OK",
                         v == TH_HTTP1 ? "[{\"id\":1,\"v\":null,\"isnull\":true},{\"id\":2,\"v\":\"x\",\"isnull\":false}]"
                                       : "[{\"id\":1,\"v\":null,\"isnull\":true},{\"id\":1,\"v\":null,\"isnull\":true},"
                                         "{\"id\":2,\"v\":\"x\",\"isnull\":false},{\"id\":2,\"v\":\"x\",\"isnull\":false}]");
        th_response_free(&res);
    }
    free(script);
    sql = th_fmt("SELECT count(*) FROM %s WHERE v IS NULL", t);
    ck_assert_int_eq(th_pg_count(sql), 2);
    free(sql);
    db_stop(&server);
    free(t);
}
END_TEST

/* ---- JSON ---- */

START_TEST(json_is_typed_and_escaped)
{
    db_start(&server, TX_CONF);
    /* int, bigint, float, numeric, bool, NULL, text with quotes, newline, tab, backslash, a control character and UTF-8 */
    const char *script =
        "SQL SELECT 42 AS i, -9007199254740993::int8 AS big, 1.5::float8 AS f, 0.1::numeric AS num, true AS t, "
        "false AS fa, NULL AS n, 'say \"hi\"' || chr(10) || chr(9) || '\\' || chr(1) || "
        "'\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80' AS s, ''::text AS e\n"
        "SQL SELECT 'NaN'::float8 AS nan, 'Infinity'::float8 AS inf, '-Infinity'::float8 AS ninf, 1e300::float8 AS huge\n"
        "SQL SELECT 1 AS a WHERE false\n";
    const char *expect = "[{\"i\":42,\"big\":-9007199254740993,\"f\":1.5,\"num\":0.1,\"t\":true,\"fa\":false,\"n\":null,"
                         "\"s\":\"say \\\"hi\\\"\\n\\t\\\\\\u0001\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\",\"e\":\"\"}]";
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        th_response_t res;
        db_script(&server, &res, v, "/s", script);
        ck_assert_msg(db_json_valid(res.body), "HTTP/%d: not valid JSON: %s", v, res.body);
        db_assert_result(res.body, 0, "OK", expect);
        /* NaN and the infinities are no JSON numbers: the document stays valid */
        char *r = db_result(res.body, 1), *rows = db_member(r, "rows");
        ck_assert_ptr_nonnull(rows);
        char *nan = strstr(rows, "\"nan\":");
        ck_assert_ptr_nonnull(nan);
        ck_assert_msg(strncmp(nan, "\"nan\":\"NaN\"", 11) == 0 || strncmp(nan, "\"nan\":null", 10) == 0, "%s", rows);
        ck_assert_msg(strstr(rows, "\"huge\":1e+300") != NULL || strstr(rows, "\"huge\":1e300") != NULL, "%s", rows);
        free(rows);
        free(r);
        db_assert_result(res.body, 2, "OK", "[]");
        th_response_free(&res);
    }
    db_stop(&server);
}
END_TEST

/* ---- the pool ---- */

static const char *POOL_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=pool_@PORT@\"\n"
                               "  pool: {max: 2, acquire-timeout: 120}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n";

/* n requests, each holding a transaction for 200 ms, at once; checks that all commit, that
 * PostgreSQL never sees more than 2 connections, and returns how long the burst took. The queue
 * holds them for n / 2 × 200 ms and more on a loaded machine: acquire-timeout is far above that
 * (with the default 5 s, an ASan build on a busy machine answered the last BEGINs BUSY). */
static double pool_burst(int version, int n, const char *appname, const char *table, int first_id)
{
    char **bodies = calloc(n, sizeof(*bodies));
    th_response_t *res = calloc(n, sizeof(*res));
    for (int i = 0; i < n; ++i)
        bodies[i] = th_fmt("BEGIN\nSQL INSERT INTO %s VALUES ($1)\nP %d\nSLEEP 200\nCOMMIT\n", table, first_id + i);
    struct watcher w;
    watch_start(&w, appname);
    double t0 = th_now_ms();
    db_parallel(&server, res, n, version, "/s", (const char *const *)bodies);
    double took = th_now_ms() - t0;
    watch_stop(&w);
    for (int i = 0; i < n; ++i) {
        ck_assert_msg(res[i].curl_error == 0 && res[i].status == 200, "HTTP/%d request %d: curl %d status %ld body %s", version, i,
                      res[i].curl_error, res[i].status, res[i].body);
        ck_assert_int_eq(db_num_results(res[i].body), 3);
        for (int k = 0; k < 3; ++k)
            db_assert_result(res[i].body, k, "OK", NULL);
        th_response_free(res + i);
        free(bodies[i]);
    }
    free(bodies);
    free(res);
    ck_assert_msg(w.max <= 2, "HTTP/%d: PostgreSQL saw %ld connections from a pool with max: 2", version, w.max);
    ck_assert_msg(w.max >= 1, "HTTP/%d: the watcher never saw a connection (%ld samples)", version, w.samples);
    return took;
}

START_TEST(pool_max_is_a_hard_cap_and_everyone_gets_served)
{
    db_start(&server, POOL_CONF);
    char *appname = th_fmt("pool_%d", server.port), *t = th_uniq("pool");
    char *sql = th_fmt("CREATE TABLE %s (id int PRIMARY KEY)", t);
    pg_exec(sql);
    free(sql);
    /* 20 transactions of 200 ms over 2 connections cannot take less than about 2 s (they were
     * queued); the upper bounds only catch a hang (about 10 times what they take) */
    double took = pool_burst(TH_HTTP1, 20, appname, t, 0);
    ck_assert_int_eq(pg_count_rows(t, NULL), 20);
    ck_assert_msg(took >= 1800, "20 x 200 ms on 2 connections took only %.0f ms", took);
    ck_assert_msg(took < 20000 * th_time_factor(), "hang? took %.0f ms", took);
    /* the same with 10 streams of one HTTP/2 connection */
    took = pool_burst(TH_HTTP2, 10, appname, t, 100);
    ck_assert_int_eq(pg_count_rows(t, NULL), 30);
    ck_assert_msg(took >= 900, "10 x 200 ms on 2 connections took only %.0f ms", took);
    ck_assert_msg(took < 10000 * th_time_factor(), "hang? took %.0f ms", took);
    db_stop(&server);
    free(appname);
    free(t);
}
END_TEST

START_TEST(check_with_connect_reaches_each_bind)
{
    char *out;
    int status = th_run_h2o_db("-t --connect",
                               "listen: 8080\n"
                               "db.bind:\n"
                               "  - url: \"@PG@\"\n"
                               "  - {url: \"@PGDB2@\", key: second}\n"
                               "  - {url: \"sqlite://\", key: third}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /:\n"
                               "        file.dir: .\n",
                               &out);
    ck_assert_msg(status == 0, "exit status %d; output:\n%s", status, out);
    free(out);
    /* the test database's URL on a port nobody listens on */
    struct pg_parts p;
    pg_parts(th_pg_url(), &p);
    char *conf = th_fmt("listen: 8080\n"
                        "db.bind:\n"
                        "  - url: \"@PG@\"\n"
                        "  - {url: \"postgresql://%s@%s:%d/%s?connect_timeout=3\", key: down}\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /:\n"
                        "        file.dir: .\n",
                        p.user, p.host, th_free_port(), p.db);
    status = th_run_h2o_db("-t --connect", conf, &out);
    ck_assert_msg(status == 1, "a bind nobody answers for passed -t --connect (exit %d):\n%s", status, out);
    ck_assert_msg(strstr(out, "down") != NULL, "the failing bind is not named:\n%s", out);
    free(out);
    /* without --connect, the same config passes: URLs are only parsed */
    status = th_run_h2o_db("-t", conf, &out);
    ck_assert_msg(status == 0, "exit status %d; output:\n%s", status, out);
    free(out);
    free(conf);
}
END_TEST

static const char *BUSY_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=busy_@PORT@\"\n"
                               "  pool: {max: 1, queue: 2, acquire-timeout: 2}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

enum { BUSY_N = 10 };

struct burst {
    int version;
    const char *const *bodies;
    th_response_t res[BUSY_N];
};

static void *burst_main(void *arg)
{
    struct burst *b = arg;
    db_parallel(&server, b->res, BUSY_N, b->version, "/s", b->bodies);
    return NULL;
}

/* the pool's refusals: statements refused at once (queue full) and after waiting (acquire-timeout) */
static long refusals(long *queue_full, long *timeouts)
{
    char *page = db_status_page(&server, NULL, "/status");
    *queue_full = db_status_sum(page, NULL, "queue_full");
    *timeouts = db_status_sum(page, NULL, "acquire_timeouts");
    free(page);
    return *queue_full + *timeouts;
}

static int refused_at_least(void *n)
{
    long full, timeouts;
    return refusals(&full, &timeouts) >= *(long *)n;
}

/* Checks the answers of a burst: `ok` got the connection, the others 503 + Retry-After + 53300. */
static void count_answers(struct burst *b, int *ok, int *busy)
{
    *ok = *busy = 0;
    for (int i = 0; i < BUSY_N; ++i) {
        th_response_t *res = b->res + i;
        ck_assert_msg(res->curl_error == 0, "HTTP/%d request %d: curl error %d", b->version, i, res->curl_error);
        if (res->status == 200) {
            ++*ok;
            for (int k = 0; k < 3; ++k)
                db_assert_result(res->body, k, "OK", NULL);
        } else {
            ck_assert_msg(res->status == 503, "HTTP/%d request %d: status %ld body %s", b->version, i, res->status, res->body);
            ++*busy;
            char *ra = th_header(res, "retry-after"), *ss = th_header(res, "x-sqlstate");
            ck_assert_msg(ra != NULL && ra[0] >= '0' && ra[0] <= '9', "HTTP/%d: 503 without a Retry-After: %s", b->version,
                          res->headers);
            ck_assert_msg(ss != NULL && strcmp(ss, "53300") == 0, "HTTP/%d: 503 with SQLSTATE %s", b->version,
                          ss != NULL ? ss : "(none)");
            free(ra);
            free(ss);
        }
        th_response_free(res);
    }
}

START_TEST(busy_pool_answers_503_with_retry_after_instead_of_hanging)
{
    db_start(&server, BUSY_CONF);
    /* warm up: the one connection exists before the burst */
    th_response_t one;
    db_script(&server, &one, TH_HTTP1, "/s", "SQL SELECT 1 AS one");
    th_response_free(&one);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        /* the transaction that gets the one connection waits at a closed gate until every other
         * request of the burst was answered: 2 may queue (and give up after acquire-timeout),
         * the rest are refused at once */
        long key = db_gate_key(), full0, timeouts0;
        char *body = th_fmt("SENDERROR\nBEGIN\nSQL SELECT 1 AS one FROM pg_advisory_xact_lock_shared(%ld)\nCOMMIT\n", key);
        const char *bodies[BUSY_N];
        for (int i = 0; i < BUSY_N; ++i)
            bodies[i] = body;
        long target = refusals(&full0, &timeouts0) + BUSY_N - 1, full, timeouts;
        struct burst b = {v, bodies};
        PGconn *gate = db_gate_close(key);
        pthread_t tid;
        ck_assert(pthread_create(&tid, NULL, burst_main, &b) == 0);
        int all = th_wait_until(refused_at_least, &target, 10000);
        db_gate_open(gate);
        pthread_join(tid, NULL);
        refusals(&full, &timeouts);
        int ok, busy;
        count_answers(&b, &ok, &busy);
        free(body);
        ck_assert_msg(all, "HTTP/%d: %ld refusals while one transaction held the only connection (expected %d)", v,
                      full + timeouts - full0 - timeouts0, BUSY_N - 1);
        ck_assert_msg(ok == 1 && busy == BUSY_N - 1, "HTTP/%d: %d got the connection, %d answered 503 (max 1, queue 2)", v, ok,
                      busy);
        ck_assert_msg(full > full0, "HTTP/%d: no request beyond the queue was refused at once", v);
        ck_assert_msg(timeouts > timeouts0, "HTTP/%d: no queued request waited for acquire-timeout", v);
        /* and the pool serves again afterwards */
        db_script(&server, &one, v, "/s", "SQL SELECT 2 AS two");
        db_assert_result(one.body, 0, "OK", "[{\"two\":2}]");
        th_response_free(&one);
    }
    db_stop(&server);
}
END_TEST

/* ---- URL forms against the real server ---- */

START_TEST(every_postgres_url_form_reaches_the_database)
{
    struct pg_parts p, p2;
    pg_parts(th_pg_url(), &p);
    pg_parts(th_pg_url2(), &p2);
    /* the shared cluster's unix socket folder (H2O_DB_TEST_PGDATA is the restartable cluster's) */
    const char *sockdir = getenv("H2O_DB_TEST_PG_SOCKET_DIR");
    ck_assert_msg(sockdir != NULL, "H2O_DB_TEST_PG_SOCKET_DIR is not set: run the suite through scripts/test");
    int dead = th_free_port();
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "num-threads: 1\n"
                        "db.bind:\n"
                        "  - {url: \"postgres://%s@%s:%d/%s\", key: k_postgres}\n"
                        "  - {url: \"postgresql+asyncpg://%s@%s:%d/%s?ssl=false\", key: k_asyncpg}\n"
                        "  - {url: \"postgresql+psycopg://%s@%s:%d/%s?application_name=psy_@PORT@\", key: k_psycopg}\n"
                        "  - {url: \"postgresql:///%s?host=%s&port=%d&user=%s\", key: k_socket}\n"
                        "  - {url: \"postgresql://%s@%s:%d,%s:%d/%s?connect_timeout=5\", key: k_multi}\n"
                        "  - {url: \"postgresql://%s@localhost:%d/%s?target_session_attrs=read-write\", key: k_name}\n"
                        "  - {url: \"postgresql://%s:Pw_s3cr3tXYZ@%s:%d/%s\", key: k_password}\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /s:\n"
                        "        c.handler: " DB_HANDLERS ":db_script\n",
                        p.user, p.host, p.port, p.db,               /* postgres:// */
                        p.user, p.host, p.port, p.db,               /* +asyncpg */
                        p2.user, p2.host, p2.port, p2.db,           /* +psycopg, the second database */
                        p.db, sockdir, p.port, p.user,              /* unix socket */
                        p.user, p.host, dead, p.host, p.port, p.db, /* multi-host: the first is down */
                        p.user, p.port, p.db,                       /* a host name to resolve */
                        p.user, p.host, p.port, p.db);              /* a password (trust auth ignores it) */
    db_start(&server, conf);
    struct {
        const char *key, *expect;
    } cases[] = {
        {"k_postgres", "\"tcp\":true"}, {"k_asyncpg", "\"tcp\":true"}, {"k_psycopg", "\"tcp\":true"},
        {"k_socket", "\"tcp\":false"},  {"k_multi", "\"tcp\":true"},   {"k_name", "\"tcp\":true"},
        {"k_password", "\"tcp\":true"},
    };
    /* every form is tried; the failures are reported together */
    char failures[8192] = "";
    size_t flen = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
        th_response_t res;
        char *path = th_fmt("/s?key=%s", cases[i].key);
        db_script(&server, &res, TH_HTTP1, path, "SQL SELECT current_database() AS db, inet_server_port() IS NOT NULL AS tcp");
        char *st = db_status_of(res.body, 0);
        char *db = th_fmt("\"db\":\"%s\"", strcmp(cases[i].key, "k_psycopg") == 0 ? p2.db : p.db);
        if (strcmp(st, "OK") != 0 || strstr(res.body, cases[i].expect) == NULL || strstr(res.body, db) == NULL)
            flen += snprintf(failures + flen, sizeof(failures) - flen, "\n  %s: expected %s and %s, got %s", cases[i].key, db,
                             cases[i].expect, res.body);
        free(st);
        free(db);
        th_response_free(&res);
        free(path);
        if (flen >= sizeof(failures))
            flen = sizeof(failures) - 1;
    }
    ck_assert_msg(flen == 0, "URL forms that did not reach the database:%s\nserver log:\n%s", failures, th_server_log(&server));
    /* the URL's own application_name wins over the server's fallback */
    char *appname = th_fmt("psy_%d", server.port);
    ck_assert_msg(th_wait_until(some_conns, appname, 10000), "no connection with application_name=%s", appname);
    free(appname);
    db_stop(&server);
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, "Pw_s3cr3tXYZ") == NULL, "the server log shows a password:\n%s", log);
    free(log);
    free(conf);
}
END_TEST

/* ---- on-connect and schema ---- */

START_TEST(on_connect_runs_on_every_connection_and_schema_once_at_start)
{
    char *dir = th_tmpdir(), *t = th_uniq("schema");
    char *schema =
        th_fmt("CREATE TABLE %s (id int PRIMARY KEY, v text);\nINSERT INTO %s VALUES (1, 'from schema'), (2, 'two');\n", t, t);
    free(th_write_file(dir, "schema.sql", schema, 0));
    free(schema);
    int rc = th_server_start_in(&server, dir,
                                "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                "num-threads: 2\n"
                                "db.bind:\n"
                                "  url: \"@PG@?application_name=onc_@PORT@\"\n"
                                "  pool: {max: 2}\n"
                                "  on-connect: \"SET myapp.tag = 'tagged'; SET myapp.other = 'x'\"\n"
                                "  schema: schema.sql\n"
                                "hosts:\n"
                                "  default:\n"
                                "    paths:\n"
                                "      /s:\n"
                                "        c.handler: " DB_HANDLERS ":db_script\n");
    ck_assert_msg(rc == 0, "the server did not start:\n%s", th_server_log(&server));
    /* schema ran once (two threads, one run: two rows, not four) */
    ck_assert_int_eq(pg_count_rows(t, NULL), 2);
    enum { N = 6 };
    const char *bodies[N];
    char *body = th_fmt("BEGIN\nSQL SELECT current_setting('myapp.tag') AS tag, v FROM %s WHERE id = 1\nSLEEP 150\nCOMMIT\n", t);
    for (int i = 0; i < N; ++i)
        bodies[i] = body;
    th_response_t res[N];
    db_parallel(&server, res, N, TH_HTTP1, "/s", bodies);
    for (int i = 0; i < N; ++i) {
        ck_assert_msg(res[i].status == 200, "status %ld: %s", res[i].status, res[i].body);
        db_assert_result(res[i].body, 1, "OK", "[{\"tag\":\"tagged\",\"v\":\"from schema\"}]");
        th_response_free(res + i);
    }
    free(body);
    db_stop(&server);
    free(t);
    free(dir);
}
END_TEST

START_TEST(a_broken_schema_stops_the_server)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "broken.sql", "CREATE TABLE broken_schema_test (id int,);\n", 0));
    char *out;
    int status = db_run_until_exit(dir,
                                   "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                   "db.bind:\n"
                                   "  url: \"@PG@\"\n"
                                   "  schema: broken.sql\n"
                                   "hosts:\n"
                                   "  default:\n"
                                   "    paths:\n"
                                   "      /:\n"
                                   "        file.dir: .\n",
                                   15000, &out);
    ck_assert_msg(status == 1, "exit status %d (expected 1); output:\n%s", status, out);
    ck_assert_msg(strstr(out, "broken.sql") != NULL, "the file is not named:\n%s", out);
    ck_assert_msg(strstr(out, "syntax error") != NULL, "the SQL error is not shown:\n%s", out);
    free(out);
    free(dir);
}
END_TEST

/* One test case per test, so that CK_RUN_CASE=NAME runs one of them. */
static void add(Suite *s, const char *name, const TTest *test, int timeout)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test);
    suite_add_tcase(s, tc);
}
#define ADD(s, test, timeout) add(s, #test, test, timeout)

int main(void)
{
    atexit(kill_server);
    Suite *s = suite_create("db_pg");
    ADD(s, keys_are_attached_by_scope_middleware_and_db_use, 60);
    ADD(s, uncommitted_transaction_is_rolled_back_at_request_end, 60);
    ADD(s, committed_transaction_is_visible, 60);
    ADD(s, sql_error_in_a_transaction_fails_it_and_the_connection_is_reusable, 60);
    ADD(s, unique_violation_is_23505, 60);
    ADD(s, statements_of_one_session_run_and_answer_in_order, 60);
    ADD(s, null_and_empty_parameters, 60);
    ADD(s, json_is_typed_and_escaped, 60);
    ADD(s, pool_max_is_a_hard_cap_and_everyone_gets_served, 60);
    ADD(s, busy_pool_answers_503_with_retry_after_instead_of_hanging, 60);
    ADD(s, check_with_connect_reaches_each_bind, 60);
    ADD(s, every_postgres_url_form_reaches_the_database, 60);
    ADD(s, on_connect_runs_on_every_connection_and_schema_once_at_start, 60);
    ADD(s, a_broken_schema_stops_the_server, 60);
    return th_run_suite(s);
}
