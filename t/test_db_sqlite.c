/*
 * SQLite behind the real h2o-db over HTTP/1.1 and HTTP/2 (docs/directives/db.bind.md, docs/c-api.md):
 * real database files next to the config, transactions and request-end rollback,
 * SQLSTATEs like PostgreSQL's, $N placeholders bound by name, NULLs, typed JSON,
 * a slow statement (held in SQLite by the test's own write lock) that does not block its
 * thread, in-memory binds shared by every connection of every thread, relative paths,
 * on-connect and schema.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    memset(&server, 0, sizeof(server));
}

static void teardown(void)
{
    kill_server();
}

/* Starts the server in a fresh folder (returned, malloc'd), so that relative paths land there. */
static char *start_in_tmp(const char *conf)
{
    char *dir = th_tmpdir();
    int rc = th_server_start_in(&server, dir, conf);
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    return dir;
}

/* Opens a database file the server wrote, read-only, and returns the first column of the first row
 * of `sql` as text (malloc'd; "(null)" for NULL; "(error: ...)" when the statement fails). */
static char *sqlite_value(const char *path, const char *sql)
{
    sqlite3 *db;
    char *out;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        out = th_fmt("(error: cannot open %s: %s)", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return out;
    }
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        out = th_fmt("(error: %s)", sqlite3_errmsg(db));
    } else {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            out = sqlite3_column_type(st, 0) == SQLITE_NULL ? strdup("(null)") : strdup((const char *)sqlite3_column_text(st, 0));
        else if (rc == SQLITE_DONE)
            out = strdup("(no row)");
        else
            out = th_fmt("(error: %s)", sqlite3_errmsg(db));
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return out;
}

static void assert_sqlite_value(const char *path, const char *sql, const char *expect)
{
    char *v = sqlite_value(path, sql);
    ck_assert_msg(strcmp(v, expect) == 0, "%s on %s: expected %s, got %s", sql, path, expect, v);
    free(v);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- transactions ---- */

static const char *TX_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                             "num-threads: 1\n"
                             "db.bind:\n"
                             "  url: sqlite:///tx.sqlite3\n"
                             "  schema: schema.sql\n"
                             "hosts:\n"
                             "  default:\n"
                             "    paths:\n"
                             "      /s:\n"
                             "        c.handler: " DB_HANDLERS ":db_script\n";

static const char *TX_SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL DEFAULT 'x' CHECK (v <> 'bad'));\n";

static char *start_tx(void)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "schema.sql", TX_SCHEMA, 0));
    int rc = th_server_start_in(&server, dir, TX_CONF);
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    return dir;
}

START_TEST(transactions_commit_and_roll_back)
{
    char *dir = start_tx(), *file = th_fmt("%s/tx.sqlite3", dir);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        th_response_t res;
        char *script, *sql;
        /* begin, insert, answer without commit: rolled back at request end */
        script = th_fmt("BEGIN\nSQL INSERT INTO t (id) VALUES (%d)\nRETURN\n", v * 10);
        db_script(&server, &res, v, "/s", script);
        ck_assert_int_eq(db_num_results(res.body), 2);
        db_assert_result(res.body, 0, "OK", NULL);
        db_assert_result(res.body, 1, "OK", "[]");
        th_response_free(&res);
        free(script);
        /* the next request sees nothing (and is not stuck behind a write lock) */
        script = th_fmt("SQL SELECT count(*) AS n FROM t WHERE id = %d\n", v * 10);
        db_script(&server, &res, v, "/s", script);
        db_assert_result(res.body, 0, "OK", "[{\"n\":0}]");
        th_response_free(&res);
        free(script);
        assert_sqlite_value(file, sql = th_fmt("SELECT count(*) FROM t WHERE id = %d", v * 10), "0");
        free(sql);

        /* begin, insert, commit: there */
        script =
            th_fmt("BEGIN\nSQL INSERT INTO t (id, v) VALUES (%d, 'one')\nSQL INSERT INTO t (id, v) VALUES (%d, 'two')\nCOMMIT\n",
                   v * 10 + 1, v * 10 + 2);
        db_script(&server, &res, v, "/s", script);
        ck_assert_int_eq(db_num_results(res.body), 4);
        for (int i = 0; i < 4; ++i)
            db_assert_result(res.body, i, "OK", NULL);
        th_response_free(&res);
        free(script);
        assert_sqlite_value(file,
                            sql = th_fmt("SELECT group_concat(v, ',') FROM (SELECT v FROM t WHERE id > %d AND id < %d ORDER BY id)",
                                         v * 10, v * 10 + 3),
                            "one,two");
        free(sql);
    }
    db_stop(&server);
    free(file);
    free(dir);
}
END_TEST

START_TEST(sql_error_in_a_transaction_fails_it)
{
    char *dir = start_tx(), *file = th_fmt("%s/tx.sqlite3", dir);
    th_response_t res;
    /* one step after the other */
    db_script(&server, &res, TH_HTTP1, "/s",
              "CONTINUE\nBEGIN\nSQL INSERT INTO t (id) VALUES (1)\nSQL SELECT * FROM no_such_table\nCOMMIT\nROLLBACK\nSQL SELECT 1 "
              "AS one\n");
    ck_assert_int_eq(db_num_results(res.body), 6);
    db_assert_result(res.body, 0, "OK", NULL);
    db_assert_result(res.body, 1, "OK", NULL);
    db_assert_error(res.body, 2, "SQL_ERROR", "42P01");
    char *st = db_status_of(res.body, 3);
    ck_assert_msg(strcmp(st, "OK") != 0 && st[0] != '\0', "COMMIT of a failed transaction answered %s: %s", st, res.body);
    free(st);
    db_assert_result(res.body, 4, "OK", NULL);
    db_assert_result(res.body, 5, "OK", "[{\"one\":1}]");
    th_response_free(&res);
    assert_sqlite_value(file, "SELECT count(*) FROM t", "0");

    /* the COMMIT refused, nothing else: request end rolls back */
    db_script(&server, &res, TH_HTTP2, "/s",
              "CONTINUE\nBEGIN\nSQL INSERT INTO t (id) VALUES (2)\nSQL INSERT INTO t (id, v) VALUES (3, 'bad')\nCOMMIT\n");
    db_assert_error(res.body, 2, "SQL_ERROR", "23514");
    st = db_status_of(res.body, 3);
    ck_assert_msg(strcmp(st, "OK") != 0 && st[0] != '\0', "COMMIT of a failed transaction answered %s: %s", st, res.body);
    free(st);
    th_response_free(&res);
    assert_sqlite_value(file, "SELECT count(*) FROM t", "0");

    /* all at once: COMMIT goes out before the failure is known, and still must not commit */
    db_script(&server, &res, TH_HTTP1, "/s",
              "CONTINUE\nALL\nBEGIN\nSQL INSERT INTO t (id) VALUES (4)\nSQL SELECT * FROM no_such_table\nCOMMIT\n");
    ck_assert_int_eq(db_num_results(res.body), 4);
    db_assert_error(res.body, 2, "SQL_ERROR", "42P01");
    st = db_status_of(res.body, 3);
    ck_assert_msg(strcmp(st, "OK") != 0 && st[0] != '\0', "pipelined COMMIT of a failed transaction answered %s: %s", st, res.body);
    free(st);
    th_response_free(&res);
    assert_sqlite_value(file, "SELECT count(*) FROM t", "0");

    /* and the database takes writes afterwards */
    db_script(&server, &res, TH_HTTP1, "/s", "SQL INSERT INTO t (id) VALUES (5)\nSQL SELECT count(*) AS n FROM t\n");
    db_assert_result(res.body, 1, "OK", "[{\"n\":1}]");
    th_response_free(&res);
    assert_sqlite_value(file, "SELECT count(*) FROM t", "1");
    db_stop(&server);
    free(file);
    free(dir);
}
END_TEST

START_TEST(constraint_violations_carry_class_23_sqlstates)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "schema.sql",
                       "CREATE TABLE parent (id INTEGER PRIMARY KEY);\n"
                       "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent (id),\n"
                       "                    v TEXT NOT NULL CHECK (v <> 'bad'));\n"
                       "INSERT INTO parent VALUES (1);\n",
                       0));
    int rc = th_server_start_in(&server, dir,
                                "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                "num-threads: 1\n"
                                "db.bind:\n"
                                "  url: sqlite:///c.sqlite3\n"
                                "  schema: schema.sql\n"
                                "  on-connect: PRAGMA foreign_keys = ON\n"
                                "hosts:\n"
                                "  default:\n"
                                "    paths:\n"
                                "      /s:\n"
                                "        c.handler: " DB_HANDLERS ":db_script\n");
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s",
              "CONTINUE\n"
              "SQL INSERT INTO child VALUES (1, 1, 'ok')\n"
              "SQL INSERT INTO child VALUES (1, 1, 'again')\n"   /* primary key */
              "SQL INSERT INTO child VALUES (2, 1, NULL)\n"      /* NOT NULL */
              "SQL INSERT INTO child VALUES (3, 1, 'bad')\n"     /* CHECK */
              "SQL INSERT INTO child VALUES (4, 99, 'orphan')\n" /* FOREIGN KEY (on-connect turned them on) */
              "BEGIN\n"
              "SQL INSERT INTO child VALUES ($1, 1, 'dup')\nP 1\n" /* inside a transaction too */
              "ROLLBACK\n"
              "SQL SELECT count(*) AS n FROM child\n");
    db_assert_result(res.body, 0, "OK", NULL);
    db_assert_error(res.body, 1, "SQL_ERROR", "23505");
    db_assert_error(res.body, 2, "SQL_ERROR", "23502");
    db_assert_error(res.body, 3, "SQL_ERROR", "23514");
    db_assert_error(res.body, 4, "SQL_ERROR", "23503");
    db_assert_result(res.body, 5, "OK", NULL);
    db_assert_error(res.body, 6, "SQL_ERROR", "23505");
    db_assert_result(res.body, 7, "OK", NULL);
    db_assert_result(res.body, 8, "OK", "[{\"n\":1}]");
    th_response_free(&res);

    /* h2o_db_send_error: 500 without SQL in the body */
    db_request(&server, &res, TH_HTTP2, NULL, "/s", "SENDERROR\nSQL INSERT INTO child VALUES (1, 1, 'again')\n");
    ck_assert_int_eq(res.status, 500);
    char *ss = th_header(&res, "x-sqlstate");
    ck_assert_ptr_nonnull(ss);
    ck_assert_str_eq(ss, "23505");
    free(ss);
    ck_assert_msg(strstr(res.body, "INSERT") == NULL && strstr(res.body, "child") == NULL && strstr(res.body, "c.sqlite3") == NULL,
                  "the error body gives details away: %s", res.body);
    th_response_free(&res);
    db_stop(&server);
    free(dir);
}
END_TEST

START_TEST(a_write_lock_held_elsewhere_fails_with_a_class_40_or_55_sqlstate)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "schema.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY);\n", 0));
    int rc = th_server_start_in(&server, dir,
                                "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                "num-threads: 1\n"
                                "db.bind:\n"
                                "  url: sqlite:///lock.sqlite3\n"
                                "  schema: schema.sql\n"
                                "  pool: {max: 2, acquire-timeout: 0.3}\n"
                                "hosts:\n"
                                "  default:\n"
                                "    paths:\n"
                                "      /s:\n"
                                "        c.handler: " DB_HANDLERS ":db_script\n");
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    /* the test holds the write lock (BEGIN IMMEDIATE, a row written) until the server has answered */
    char *file = th_fmt("%s/lock.sqlite3", dir);
    sqlite3 *holder = db_sqlite_lock(file);
    ck_assert_msg(holder != NULL, "the test could not take the write lock of %s", file);
    ck_assert_int_eq(sqlite3_exec(holder, "INSERT INTO t VALUES (1)", NULL, NULL, NULL), SQLITE_OK);
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", "CONTINUE\nBEGIN\nSQL INSERT INTO t VALUES (2)\nROLLBACK\n");
    char *r = db_result(res.body, 0), *ss = r != NULL ? db_member(r, "sqlstate") : NULL;
    ck_assert_msg(ss != NULL && (strncmp(ss, "\"40", 3) == 0 || strncmp(ss, "\"55", 3) == 0),
                  "the second writer did not fail with a class 40 or 55 SQLSTATE: %s", res.body);
    /* it failed while the lock was held (not after waiting for it), after its 0.3 s busy timeout */
    ck_assert_msg(res.seconds >= 0.25, "the writer failed after %.2f s, before the 0.3 s busy timeout", res.seconds);
    free(ss);
    free(r);
    th_response_free(&res);
    db_sqlite_unlock(holder, 1);
    /* the lock is free again: the server's writer gets it */
    db_script(&server, &res, TH_HTTP1, "/s", "BEGIN\nSQL INSERT INTO t VALUES (3)\nCOMMIT\n");
    for (int i = 0; i < 3; ++i)
        db_assert_result(res.body, i, "OK", NULL);
    th_response_free(&res);
    db_stop(&server);
    assert_sqlite_value(file, "SELECT group_concat(id) FROM t", "1,3");
    free(file);
    free(dir);
}
END_TEST

/* ---- statements and parameters ---- */

START_TEST(placeholders_bind_by_number_and_nulls)
{
    char *dir = start_tx();
    th_response_t res;
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        db_script(&server, &res, v, "/s",
                  "SQL SELECT $2 AS b, $1 AS a, $2 || $1 || $2 AS bab\nP first\nP second\n"
                  "SQL SELECT '<' || $10 || '>' AS ten, '<' || $1 || '>' AS one, '<' || $2 || '>' AS two\nP 1\nP 2\nP 3\nP 4\nP "
                  "5\nP 6\nP 7\nP 8\nP 9\nP 10\n"
                  "SQL SELECT $1 IS NULL AS is_null, $2 AS n, $3 = '' AS empty, length($3) AS len\nPNULL\nPNULL\nP\n"
                  "SQL SELECT $1 AS q\nP it's \"quoted\" \\ and \xc3\xa9\n");
        ck_assert_int_eq(db_num_results(res.body), 4);
        db_assert_result(res.body, 0, "OK", "[{\"b\":\"second\",\"a\":\"first\",\"bab\":\"secondfirstsecond\"}]");
        db_assert_result(res.body, 1, "OK", "[{\"ten\":\"<10>\",\"one\":\"<1>\",\"two\":\"<2>\"}]");
        db_assert_result(res.body, 2, "OK", "[{\"is_null\":1,\"n\":null,\"empty\":1,\"len\":0}]");
        db_assert_result(res.body, 3, "OK", "[{\"q\":\"it's \\\"quoted\\\" \\\\ and \xc3\xa9\"}]");
        th_response_free(&res);
    }
    /* parameters in any order in an INSERT, NULL among them, column affinity applied */
    db_script(&server, &res, TH_HTTP1, "/s",
              "SQL CREATE TABLE p (i INTEGER, r REAL, t TEXT, n TEXT)\n"
              "SQL INSERT INTO p (n, t, r, i) VALUES ($4, $3, $2, $1)\nP 7\nP 2.5\nP 007\nPNULL\n"
              "SQL SELECT i, r, t, n, typeof(n) AS tn FROM p\n");
    /* a parameter is text: '007' stays '007' in a TEXT column (INTEGER and REAL columns convert it) */
    db_assert_result(res.body, 2, "OK", "[{\"i\":7,\"r\":2.5,\"t\":\"007\",\"n\":null,\"tn\":\"null\"}]");
    th_response_free(&res);
    /* a parameter that is not there, and `?` instead of $N: errors, not crashes */
    db_script(&server, &res, TH_HTTP1, "/s", "CONTINUE\nSQL SELECT $2 AS x\nP only-one\nSQL SELECT 1 AS one\n");
    char *st = db_status_of(res.body, 0);
    ck_assert_msg(strcmp(st, "OK") != 0, "$2 with one parameter answered %s", res.body);
    free(st);
    db_assert_result(res.body, 1, "OK", "[{\"one\":1}]");
    th_response_free(&res);
    db_stop(&server);
    free(dir);
}
END_TEST

START_TEST(statements_of_one_session_run_and_answer_in_order)
{
    char *dir = start_tx();
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        size_t cap = 8192, len = 0;
        char *script = malloc(cap);
        len += snprintf(script + len, cap - len,
                        "ALL\nSQL WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) "
                        "AS slow FROM c\n"
                        "SQL DELETE FROM t\n");
        for (int i = 1; i <= 10; ++i)
            len += snprintf(script + len, cap - len,
                            "SQL INSERT INTO t (id) VALUES (%d)\nSQL SELECT count(*) AS n, max(id) AS m FROM t\n", i);
        th_response_t res;
        db_script(&server, &res, v, "/s", script);
        ck_assert_int_eq(db_num_results(res.body), 22);
        db_assert_result(res.body, 0, "OK", "[{\"slow\":300000}]");
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
    free(dir);
}
END_TEST

/* ---- JSON ---- */

START_TEST(json_is_typed_and_escaped)
{
    char *dir = start_tx();
    const char *script = "SQL CREATE TABLE j (i INTEGER, f REAL, t BOOLEAN, fa BOOLEAN, n TEXT, s TEXT)\n"
                         "SQL INSERT INTO j VALUES (42, 1.5, 1, 0, NULL, 'say \"hi\"' || char(10) || char(9) || '\\' || char(1) || "
                         "'\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80')\n";
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", script);
    db_assert_result(res.body, 1, "OK", "[]");
    th_response_free(&res);
    const char *expect =
        "[{\"i\":42,\"f\":1.5,\"t\":true,\"fa\":false,\"n\":null,"
        "\"s\":\"say \\\"hi\\\"\\n\\t\\\\\\u0001\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\",\"big\":9007199254740993,\"neg\":-7,"
        "\"e\":\"\"}]";
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        db_script(&server, &res, v, "/s",
                  "SQL SELECT i, f, t, fa, n, s, 9007199254740993 AS big, -7 AS neg, '' AS e FROM j\nSQL SELECT 1 AS a WHERE 0\n");
        ck_assert_msg(db_json_valid(res.body), "not valid JSON: %s", res.body);
        db_assert_result(res.body, 0, "OK", expect);
        db_assert_result(res.body, 1, "OK", "[]");
        th_response_free(&res);
    }
    db_stop(&server);
    free(dir);
}
END_TEST

/* ---- a slow statement does not block the thread ---- */

struct slow_call {
    th_server_t *server;
    const char *body;
    th_response_t res;
    int done;
};

static void *slow_main(void *arg)
{
    struct slow_call *c = arg;
    char *url = th_url(c->server, "/s");
    struct db_easy e;
    db_easy_init(&e, &c->res, TH_HTTP1, url, NULL, c->body);
    CURLcode code = curl_easy_perform(e.curl);
    db_easy_finish(&e, &c->res, code);
    __atomic_store_n(&c->done, 1, __ATOMIC_RELEASE);
    free(url);
    return NULL;
}

struct sent {
    th_server_t *server;
    long n;
};

/* the status page counts N statements sent to SQLite */
static int statements_sent(void *arg)
{
    struct sent *s = arg;
    return db_status_count(s->server, "/status", NULL, "statements") >= s->n;
}

/* the status page shows a statement in flight for more than 50 ms */
static int statement_is_old(void *arg)
{
    return db_status_count(arg, "/status", NULL, "oldest_ms") > 50;
}

START_TEST(a_slow_statement_does_not_delay_other_requests_on_its_thread)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "schema.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY);\n", 0));
    int rc = th_server_start_in(&server, dir,
                                "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                "num-threads: 1\n"
                                "db.bind:\n"
                                "  url: sqlite:///slow.sqlite3\n"
                                "  schema: schema.sql\n"
                                "  pool: {max: 2, acquire-timeout: 30}\n"
                                "hosts:\n"
                                "  default:\n"
                                "    paths:\n"
                                "      /s:\n"
                                "        c.handler: " DB_HANDLERS ":db_script\n"
                                "      /nothing:\n"
                                "        c.handler: " DB_HANDLERS ":db_nothing\n"
                                "      /status:\n"
                                "        db.status: ON\n");
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    /* a statement that stays in SQLite for as long as the test holds the write lock: it waits
     * in its connection's busy handler (acquire-timeout: 30 s) */
    char *file = th_fmt("%s/slow.sqlite3", dir);
    sqlite3 *holder = db_sqlite_lock(file);
    ck_assert_msg(holder != NULL, "the test could not take the write lock of %s", file);
    struct slow_call slow = {&server, "SQL INSERT INTO t VALUES (1)\n"};
    pthread_t tid;
    ck_assert(pthread_create(&tid, NULL, slow_main, &slow) == 0);
    struct sent sent = {&server, 1};
    int running = th_wait_until(statements_sent, &sent, 10000);
    /* ... and known to be slow: the pool no longer pipelines behind it (past 50 ms) */
    running = running && th_wait_until(statement_is_old, &server, 10000);
    /* meanwhile: requests on the same (only) thread, and another statement on the same bind,
     * which takes the other connection and does not wait behind the slow one */
    for (int i = 0; running && i < 5; ++i) {
        th_response_t res;
        db_request(&server, &res, i % 2 == 0 ? TH_HTTP1 : TH_HTTP2, NULL, "/nothing", NULL);
        ck_assert_int_eq(res.status, 200);
        ck_assert_str_eq(res.body, "nothing\n");
        th_response_free(&res);
    }
    th_response_t res;
    if (running) {
        db_script(&server, &res, TH_HTTP1, "/s", "SQL SELECT 1 AS one");
        db_assert_result(res.body, 0, "OK", "[{\"one\":1}]");
        th_response_free(&res);
    }
    int slow_done_early = __atomic_load_n(&slow.done, __ATOMIC_ACQUIRE);
    db_sqlite_unlock(holder, 0);
    pthread_join(tid, NULL);
    ck_assert_msg(running, "the slow statement never reached SQLite");
    ck_assert_msg(!slow_done_early, "the slow statement ended while the test held the lock: %s", slow.res.body);
    ck_assert_msg(slow.res.curl_error == 0 && slow.res.status == 200, "the slow request: curl %d status %ld", slow.res.curl_error,
                  slow.res.status);
    db_assert_result(slow.res.body, 0, "OK", "[]");
    th_response_free(&slow.res);
    db_stop(&server);
    assert_sqlite_value(file, "SELECT group_concat(id) FROM t", "1");
    free(file);
    free(dir);
}
END_TEST

/* ---- in-memory binds ---- */

START_TEST(an_in_memory_bind_is_one_database_for_all_connections_and_threads)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "mem.sql",
                       "CREATE TABLE seeded (id INTEGER PRIMARY KEY, v TEXT);\nINSERT INTO seeded (v) VALUES ('once');\n", 0));
    int rc = th_server_start_in(&server, dir,
                                "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                "num-threads: 2\n"
                                "db.bind:\n"
                                "  - {url: \"sqlite://\", key: m1, schema: mem.sql}\n"
                                "  - {url: \"sqlite:///:memory:\", key: m2}\n"
                                "  - {url: \"sqlite+aiosqlite:///\", key: m3}\n"
                                "hosts:\n"
                                "  default:\n"
                                "    paths:\n"
                                "      /s:\n"
                                "        c.handler: " DB_HANDLERS ":db_script_ctx\n");
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    const char *keys[] = {"m1", "m2", "m3"};
    for (size_t k = 0; k < 3; ++k) {
        char *path = th_fmt("/s?key=%s", keys[k]),
             *create = th_fmt("SQL CREATE TABLE shared_%s (v TEXT)\nSQL INSERT INTO shared_%s VALUES ('%s')\n", keys[k], keys[k],
                              keys[k]);
        th_response_t res;
        db_script(&server, &res, TH_HTTP1, path, create);
        db_assert_result(res.body, 0, "OK", NULL);
        db_assert_result(res.body, 1, "OK", NULL);
        th_response_free(&res);
        free(create);
        /* many readers on separate connections (so on both threads, and several SQLite connections) */
        enum { N = 16 };
        char *read = th_fmt("SQL SELECT v FROM shared_%s\n", keys[k]), *expect = th_fmt("[{\"v\":\"%s\"}]", keys[k]);
        const char *bodies[N];
        for (int i = 0; i < N; ++i)
            bodies[i] = read;
        char first_ctx[64] = "";
        int other_ctx = 0;
        for (int round = 0; round < 5 && !other_ctx; ++round) {
            th_response_t rs[N];
            db_parallel(&server, rs, N, TH_HTTP1, path, bodies);
            for (int i = 0; i < N; ++i) {
                ck_assert_msg(rs[i].status == 200, "%s: status %ld %s", keys[k], rs[i].status, rs[i].body);
                db_assert_result(rs[i].body, 0, "OK", expect);
                char *ctx = th_header(rs + i, "x-h2o-ctx");
                ck_assert_ptr_nonnull(ctx);
                if (first_ctx[0] == '\0')
                    snprintf(first_ctx, sizeof(first_ctx), "%s", ctx);
                else if (strcmp(first_ctx, ctx) != 0)
                    other_ctx = 1;
                free(ctx);
                th_response_free(rs + i);
            }
        }
        ck_assert_msg(other_ctx, "%s: every request was served by one thread; the test needs both", keys[k]);
        free(read);
        free(expect);
        free(path);
    }
    /* each bind is its own database: m2 does not see m1's table */
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s?key=m2", "CONTINUE\nSQL SELECT v FROM shared_m1\nSQL SELECT v FROM shared_m2\n");
    db_assert_error(res.body, 0, "SQL_ERROR", "42P01");
    db_assert_result(res.body, 1, "OK", "[{\"v\":\"m2\"}]");
    th_response_free(&res);
    /* the schema ran once for the whole process, not once per thread or connection */
    for (int i = 0; i < 4; ++i) {
        db_script(&server, &res, i % 2 == 0 ? TH_HTTP1 : TH_HTTP2, "/s?key=m1",
                  "SQL SELECT count(*) AS n, max(v) AS v FROM seeded\n");
        db_assert_result(res.body, 0, "OK", "[{\"n\":1,\"v\":\"once\"}]");
        th_response_free(&res);
    }
    db_stop(&server);
    /* and nothing was written to disk */
    ck_assert_msg(!file_exists(":memory:") && !file_exists("/h2o-db-m1") && !file_exists("/h2o-db-m2") &&
                      !file_exists("/h2o-db-m3"),
                  "an in-memory bind created a file");
    free(dir);
}
END_TEST

/* ---- paths ---- */

START_TEST(relative_paths_are_relative_to_the_config_file)
{
    char *dir = th_tmpdir(), *sub = th_fmt("%s/sub", dir), *abs = th_fmt("%s/absolute.sqlite3", dir);
    ck_assert(mkdir(sub, 0755) == 0);
    free(th_write_file(sub, "schema.sql", "CREATE TABLE from_schema (v TEXT);\nINSERT INTO from_schema VALUES ('schema ran');\n",
                       0));
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "num-threads: 1\n"
                        "db.bind:\n"
                        "  - {url: \"sqlite:///relative.sqlite3\", key: rel}\n"
                        "  - {url: \"sqlite:///sub/nested.sqlite3\", key: nested, schema: sub/schema.sql}\n"
                        "  - {url: \"sqlite:///%s\", key: absolute}\n"
                        "  - {url: \"sqlite+aiosqlite:///aio.sqlite3\", key: aio}\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /s:\n"
                        "        c.handler: " DB_HANDLERS ":db_script\n",
                        abs);
    /* the server runs from another working directory than the config's folder */
    char cwd[4096];
    ck_assert(getcwd(cwd, sizeof(cwd)) != NULL);
    ck_assert_msg(strcmp(cwd, dir) != 0, "the test runs in the config's folder");
    int rc = th_server_start_in(&server, dir, conf);
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    const char *keys[] = {"rel", "nested", "absolute", "aio"};
    for (size_t k = 0; k < 4; ++k) {
        char *path = th_fmt("/s?key=%s", keys[k]),
             *script = th_fmt("SQL CREATE TABLE w (v TEXT)\nSQL INSERT INTO w VALUES ('%s')\n", keys[k]);
        th_response_t res;
        db_script(&server, &res, TH_HTTP1, path, script);
        db_assert_result(res.body, 1, "OK", NULL);
        th_response_free(&res);
        free(path);
        free(script);
    }
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s?key=nested", "SQL SELECT v FROM from_schema\n");
    db_assert_result(res.body, 0, "OK", "[{\"v\":\"schema ran\"}]");
    th_response_free(&res);
    db_stop(&server);

    const char *files[] = {"relative.sqlite3", "sub/nested.sqlite3", "absolute.sqlite3", "aio.sqlite3"};
    for (size_t k = 0; k < 4; ++k) {
        char *file = th_fmt("%s/%s", dir, files[k]), *expect = th_fmt("%s", keys[k]);
        ck_assert_msg(file_exists(file), "%s was not created beside the config", file);
        assert_sqlite_value(file, "SELECT v FROM w", expect);
        free(file);
        free(expect);
        char *stray = th_fmt("%s/%s", cwd, files[k]);
        ck_assert_msg(!file_exists(stray), "%s was created in the working directory", stray);
        free(stray);
    }
    free(conf);
    free(abs);
    free(sub);
    free(dir);
}
END_TEST

/* ---- on-connect and schema ---- */

START_TEST(on_connect_runs_on_every_connection)
{
    char *dir = start_in_tmp("listen: {host: 127.0.0.1, port: @PORT@}\n"
                             "num-threads: 2\n"
                             "db.bind:\n"
                             "  url: sqlite:///onc.sqlite3\n"
                             "  pool: {max: 3}\n"
                             "  on-connect: \"PRAGMA foreign_keys = ON; PRAGMA cache_size = -1234\"\n"
                             "hosts:\n"
                             "  default:\n"
                             "    paths:\n"
                             "      /s:\n"
                             "        c.handler: " DB_HANDLERS ":db_script\n");
    /* concurrent slow-ish statements spread over several connections of both threads */
    enum { N = 8 };
    const char *bodies[N];
    for (int i = 0; i < N; ++i)
        bodies[i] =
            "SQL SELECT (SELECT foreign_keys FROM pragma_foreign_keys) AS fk, (SELECT cache_size FROM pragma_cache_size) AS cs, "
            "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000) SELECT count(*) FROM c) AS n\n";
    th_response_t res[N];
    db_parallel(&server, res, N, TH_HTTP1, "/s", bodies);
    for (int i = 0; i < N; ++i) {
        ck_assert_msg(res[i].status == 200, "status %ld %s", res[i].status, res[i].body);
        db_assert_result(res[i].body, 0, "OK", "[{\"fk\":1,\"cs\":-1234,\"n\":500000}]");
        th_response_free(res + i);
    }
    db_stop(&server);
    free(dir);
}
END_TEST

START_TEST(a_broken_schema_stops_the_server)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "broken.sql", "CREATE TABLE ok (id INTEGER);\nCREATE TABLE broken (id INTEGER,);\n", 0));
    char *out;
    int status = db_run_until_exit(dir,
                                   "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                   "db.bind:\n"
                                   "  url: sqlite:///broken.sqlite3\n"
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

    /* a schema file that is missing: also refused (at config time) */
    status = db_run_until_exit(dir,
                               "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "db.bind:\n"
                               "  url: sqlite:///missing.sqlite3\n"
                               "  schema: no-such-file.sql\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /:\n"
                               "        file.dir: .\n",
                               15000, &out);
    ck_assert_msg(status == 1, "exit status %d (expected 1); output:\n%s", status, out);
    ck_assert_msg(strstr(out, "no-such-file.sql") != NULL, "the file is not named:\n%s", out);
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
    Suite *s = suite_create("db_sqlite");
    ADD(s, transactions_commit_and_roll_back, 60);
    ADD(s, sql_error_in_a_transaction_fails_it, 60);
    ADD(s, constraint_violations_carry_class_23_sqlstates, 60);
    ADD(s, a_write_lock_held_elsewhere_fails_with_a_class_40_or_55_sqlstate, 60);
    ADD(s, placeholders_bind_by_number_and_nulls, 60);
    ADD(s, statements_of_one_session_run_and_answer_in_order, 60);
    ADD(s, json_is_typed_and_escaped, 60);
    ADD(s, a_slow_statement_does_not_delay_other_requests_on_its_thread, 60);
    ADD(s, an_in_memory_bind_is_one_database_for_all_connections_and_threads, 60);
    ADD(s, relative_paths_are_relative_to_the_config_file, 60);
    ADD(s, on_connect_runs_on_every_connection, 60);
    ADD(s, a_broken_schema_stops_the_server, 60);
    return th_run_suite(s);
}
