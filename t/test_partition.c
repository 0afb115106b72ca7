/*
 * Several backends in one session (binds:, docs/partitions.md), two-phase commit and
 * sessions outside requests, against the real h2o-db binary, the PostgreSQL that
 * scripts/test starts (two databases: @PG@ and @PGDB2@, max_prepared_transactions
 * = 64) and SQLite files in each test's folder.
 *
 * Every backend is checked directly (libpq, libsqlite3), never only through the
 * server. Each test has its own tables (prefix per test) and its own server.
 *
 * Not tested here: `twophase: ON` against a PostgreSQL with max_prepared_transactions
 * = 0 (the server must refuse to start). The test PostgreSQL is shared by every suite
 * and runs with 64; changing it needs a restart of that server, which the other
 * suites would notice.
 */
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "db_util.h" /* after sqlite3.h: with its SQLite helpers */

static th_server_t server;
static char *dir; /* the current test's folder: its config, its SQLite file */

/* ---- helpers ---- */

/* the end of the server's log (Check limits the size of a failure message) */
static char *log_tail(void)
{
    char *log = th_server_log(&server);
    size_t len = strlen(log);
    if (len > 3000) {
        memmove(log + 4, log + len - 2996, 2997);
        memcpy(log, "...\n", 4);
    }
    return log;
}

static void start_in(const char *folder, const char *conf)
{
    int ret = th_server_start_in(&server, folder, conf);
    ck_assert_msg(ret == 0, "the server did not start; log:\n%s", log_tail());
}

static void start(const char *conf)
{
    start_in(dir, conf);
}

static void stop(void)
{
    int status = th_server_stop(&server, 15000);
    ck_assert_msg(status == 0, "exit status %d; log:\n%s", status, log_tail());
}

static void fresh_dir(void)
{
    dir = th_tmpdir();
}

static void free_dir(void)
{
    free(dir);
    dir = NULL;
}

/* POSTs a db_script and returns the body (malloc'd); expects 200 */
static char *script_at(const char *path, const char *script)
{
    th_response_t res;
    char *url = th_url(&server, path);
    int ret = th_http(&res, TH_HTTP1, "POST", url, script);
    ck_assert_msg(ret == 0, "POST %s: curl error %d; log:\n%s", path, res.curl_error, log_tail());
    ck_assert_msg(res.status == 200, "POST %s: status %ld, body %s\nscript:\n%s", path, res.status, res.body, script);
    char *body = strdup(res.body);
    th_response_free(&res);
    free(url);
    return body;
}

static char *script(const char *text)
{
    return script_at("/script", text);
}

static char *get(const char *path, long expect_status)
{
    th_response_t res;
    char *url = th_url(&server, path);
    int ret = th_http(&res, TH_HTTP1, NULL, url, NULL);
    ck_assert_msg(ret == 0, "GET %s: curl error %d; log:\n%s", path, res.curl_error, log_tail());
    ck_assert_msg(res.status == expect_status, "GET %s: status %ld (expected %ld), body %s\nlog:\n%s", path, res.status,
                  expect_status, res.body, log_tail());
    char *body = strdup(res.body);
    th_response_free(&res);
    free(url);
    return body;
}

/* Result i of a db_script answer (each result is an object starting with {"status":"), malloc'd. */
static char *result_at(const char *body, int i)
{
    static const char mark[] = "{\"status\":\"";
    const char *p = body;
    for (int k = 0; p != NULL; ++k) {
        p = strstr(p, mark);
        if (p == NULL)
            break;
        if (k == i) {
            const char *end = strstr(p + 1, mark);
            return end != NULL ? strndup(p, end - p) : strdup(p);
        }
        ++p;
    }
    ck_abort_msg("no result %d in %s", i, body);
    return NULL;
}

static int num_results(const char *body)
{
    int n = 0;
    for (const char *p = body; (p = strstr(p, "{\"status\":\"")) != NULL; ++p)
        ++n;
    return n;
}

/* result i has that status and (if non-NULL) contains `part` */
#define assert_result(body, i, status, part)                                                                                       \
    do {                                                                                                                           \
        char *r_ = result_at((body), (i));                                                                                         \
        ck_assert_msg(strncmp(r_, "{\"status\":\"" status "\"", strlen("{\"status\":\"" status "\"")) == 0,                        \
                      "result %d: expected %s, got %s (in %s)", (int)(i), status, r_, (body));                                     \
        const char *part_ = (part);                                                                                                \
        ck_assert_msg(part_ == NULL || strstr(r_, part_) != NULL, "result %d: expected %s in %s (in %s)", (int)(i), part_, r_,     \
                      (body));                                                                                                     \
        free(r_);                                                                                                                  \
    } while (0)

static void assert_all_ok(const char *body, int n)
{
    ck_assert_msg(num_results(body) == n, "expected %d results, got %s", n, body);
    for (int i = 0; i < n; ++i)
        assert_result(body, i, "OK", NULL);
}

/* a number from PostgreSQL (either database) */
static long pg_count_on(const char *url, const char *sql)
{
    char *v = th_pg_on(url, sql);
    long n = v != NULL ? strtol(v, NULL, 10) : -1;
    free(v);
    return n;
}

static long pg1(const char *sql)
{
    return pg_count_on(th_pg_url(), sql);
}

static long pg2(const char *sql)
{
    return pg_count_on(th_pg_url2(), sql);
}

static char *lite_path(void)
{
    return th_fmt("%s/lite.sqlite3", dir);
}

static void lite_exec(const char *sql)
{
    char *path = lite_path(), *err = NULL;
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "sqlite %s: %s", sql, err != NULL ? err : "?");
    sqlite3_close(db);
    free(path);
}

/* a number from the test's SQLite file */
static long lite_count(const char *sql)
{
    char *path = lite_path();
    sqlite3 *db;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "sqlite %s: %s", sql, sqlite3_errmsg(db));
    ck_assert_msg(sqlite3_step(st) == SQLITE_ROW, "sqlite %s: %s", sql, sqlite3_errmsg(db));
    long n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(path);
    return n;
}

/* a table `name (id, v text NOT NULL)` on the main database (db 1), the second (2) or SQLite (0) */
static void make_table(int where, const char *name, const char *extra)
{
    char *sql;
    if (where == 0) {
        sql = th_fmt("DROP TABLE IF EXISTS %s; CREATE TABLE %s (id INTEGER PRIMARY KEY, v TEXT NOT NULL%s)", name, name, extra);
        lite_exec(sql);
    } else {
        sql = th_fmt("DROP TABLE IF EXISTS %s; CREATE TABLE %s (id serial PRIMARY KEY, v text NOT NULL%s)", name, name, extra);
        free(th_pg_on(where == 1 ? th_pg_url() : th_pg_url2(), sql));
    }
    free(sql);
}

/* The usual config: sa_main on @PG@ partitioned by BINDS, sa_lite (SQLite) and sa_pg2
 * (@PGDB2@), both middleware: OFF; MAIN_EXTRA lines go into sa_main's mapping, EXTRA_BINDS
 * are more entries of the global db.bind list. */
static char *partition_conf(const char *binds, const char *main_extra, const char *extra_binds)
{
    return th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                  "num-threads: 2\n"
                  "db.bind:\n"
                  "  - url: @PG@\n"
                  "    binds: {%s}\n"
                  "    pool: {max: 4, acquire-timeout: 5}\n"
                  "%s"
                  "  - url: sqlite:///@DIR@/lite.sqlite3\n"
                  "    key: sa_lite\n"
                  "    middleware: OFF\n"
                  "  - url: @PGDB2@\n"
                  "    key: sa_pg2\n"
                  "    middleware: OFF\n"
                  "%s"
                  "hosts:\n"
                  "  default:\n"
                  "    paths:\n"
                  "      /script:\n"
                  "        c.handler: @BUILD@/t/db_handlers.so:db_script\n"
                  "      /keys:\n"
                  "        c.handler: @BUILD@/t/db_handlers.so:db_keys\n"
                  "      /uselite:\n"
                  "        db.use: sa_lite\n"
                  "        c.handler: @BUILD@/t/db_handlers.so:db_script\n",
                  binds, main_extra, extra_binds);
}

static void setup(void)
{
    th_require_pg();
    ck_assert_msg(th_pg_url2() != NULL, "no second PostgreSQL database: run the suite through scripts/test");
    fresh_dir();
}

static void teardown(void)
{
    free_dir();
}

/* ---- routing ---- */

START_TEST(routing_follows_binds)
{
    /* rt_audit exists on PostgreSQL too and rt_remote on the main database too: the rows
     * must land only where binds: says */
    make_table(1, "rt_orders", "");
    make_table(1, "rt_audit", "");
    make_table(0, "rt_audit", "");
    make_table(1, "rt_remote", "");
    make_table(2, "rt_remote", "");
    char *conf = partition_conf("rt_audit: sa_lite, rt_remote: sa_pg2", "", "");
    start(conf);

    char *body = script("FOR rt_orders\n"
                        "SQL INSERT INTO rt_orders (v) VALUES ($1) RETURNING current_database() AS db\n"
                        "P main\n"
                        "FOR rt_audit\n"
                        "SQL INSERT INTO rt_audit (v) VALUES ($1)\n"
                        "P lite\n"
                        "FOR rt_remote\n"
                        "SQL INSERT INTO rt_remote (v) VALUES ($1) RETURNING current_database() AS db\n"
                        "P remote\n"
                        "FOR rt_audit\n"
                        "SQL SELECT sqlite_version() IS NOT NULL AS on_sqlite\n"
                        "KEY sa_main\n"
                        "SQL SELECT current_database() AS db\n");
    assert_all_ok(body, 5);
    char *db1 = th_pg("SELECT current_database()"), *db2 = th_pg_on(th_pg_url2(), "SELECT current_database()");
    char *want1 = th_fmt("\"db\":\"%s\"", db1), *want2 = th_fmt("\"db\":\"%s\"", db2);
    assert_result(body, 0, "OK", want1); /* unlisted: the main bind */
    assert_result(body, 2, "OK", want2); /* rt_remote: sa_pg2 */
    assert_result(body, 3, "OK", "\"on_sqlite\":1");
    assert_result(body, 4, "OK", want1);
    free(body);

    /* checked on each backend directly */
    ck_assert_int_eq(pg1("SELECT count(*) FROM rt_orders WHERE v = 'main'"), 1);
    ck_assert_int_eq(pg1("SELECT count(*) FROM rt_audit"), 0);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM rt_audit WHERE v = 'lite'"), 1);
    ck_assert_int_eq(pg1("SELECT count(*) FROM rt_remote"), 0);
    ck_assert_int_eq(pg2("SELECT count(*) FROM rt_remote WHERE v = 'remote'"), 1);

    /* partition keys need no db.use and are not request keys of their own */
    body = get("/keys?keys=sa_main,sa_lite,sa_pg2", 200);
    ck_assert_str_eq(body, "sa_main=1 sa_lite=0 sa_pg2=0\n");
    free(body);

    /* where sa_lite is also attached (db.use), h2o_db_session(req, "sa_lite") is another
     * session than the partition's: it does not see the partition's open transaction */
    body = script_at("/uselite", "BEGIN\n"
                                 "FOR rt_audit\n"
                                 "SQL INSERT INTO rt_audit (v) VALUES ('uncommitted')\n"
                                 "KEY sa_lite\n"
                                 "SQL SELECT count(*) AS n FROM rt_audit\n"
                                 "KEY sa_main\n"
                                 "ROLLBACK\n");
    assert_all_ok(body, 4);
    assert_result(body, 2, "OK", "\"n\":1");
    free(body);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM rt_audit"), 1);
    stop();
    free(conf);
    free(db1);
    free(db2);
    free(want1);
    free(want2);
}
END_TEST

/* ---- one transaction across PostgreSQL and SQLite ---- */

static char *txn_conf(const char *prefix)
{
    char *binds = th_fmt("%s_audit: sa_lite, %s_remote: sa_pg2", prefix, prefix);
    char *conf = partition_conf(binds, "", "");
    free(binds);
    return conf;
}

START_TEST(commit_writes_both)
{
    make_table(1, "tc_orders", "");
    make_table(0, "tc_audit", "");
    char *conf = txn_conf("tc");
    start(conf);
    char *body = script("BEGIN\n"
                        "SQL INSERT INTO tc_orders (v) VALUES ('o1')\n"
                        "FOR tc_audit\n"
                        "SQL INSERT INTO tc_audit (v) VALUES ('a1')\n"
                        "KEY sa_main\n"
                        "COMMIT\n");
    assert_all_ok(body, 4);
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM tc_orders WHERE v = 'o1'"), 1);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM tc_audit WHERE v = 'a1'"), 1);
    stop();
    free(conf);
}
END_TEST

START_TEST(rollback_writes_neither)
{
    make_table(1, "tb_orders", "");
    make_table(0, "tb_audit", "");
    char *conf = txn_conf("tb");
    start(conf);
    char *body = script("BEGIN\n"
                        "SQL INSERT INTO tb_orders (v) VALUES ('o1')\n"
                        "FOR tb_audit\n"
                        "SQL INSERT INTO tb_audit (v) VALUES ('a1')\n"
                        "KEY sa_main\n"
                        "ROLLBACK\n");
    assert_all_ok(body, 4);
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM tb_orders"), 0);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM tb_audit"), 0);
    stop();
    free(conf);
}
END_TEST

static int no_idle_in_transaction(void *arg)
{
    return pg1("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'h2o-db' AND "
               "state LIKE 'idle in transaction%'") == 0;
}

START_TEST(request_end_without_commit_writes_neither)
{
    make_table(1, "tr_orders", "");
    make_table(0, "tr_audit", "");
    char *conf = txn_conf("tr");
    start(conf);
    char *body = script("BEGIN\n"
                        "SQL INSERT INTO tr_orders (v) VALUES ('o1')\n"
                        "FOR tr_audit\n"
                        "SQL INSERT INTO tr_audit (v) VALUES ('a1')\n"
                        "RETURN\n");
    assert_all_ok(body, 3);
    free(body);
    /* both connections go back clean: PostgreSQL's is not left in its transaction, and
     * SQLite's write lock (BEGIN IMMEDIATE) is released (the test can take it itself), so the
     * next writer gets it */
    ck_assert_msg(th_wait_until(no_idle_in_transaction, NULL, 10000), "a connection stayed idle in transaction");
    char *path = lite_path();
    ck_assert_msg(db_sqlite_wait_unlocked(path), "the SQLite write lock was held after the request ended");
    free(path);
    body = script("FOR tr_audit\n"
                  "SQL INSERT INTO tr_audit (v) VALUES ('after')\n");
    assert_all_ok(body, 1);
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM tr_orders"), 0);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM tr_audit WHERE v = 'a1'"), 0);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM tr_audit WHERE v = 'after'"), 1);
    stop();
    free(conf);
}
END_TEST

START_TEST(error_in_second_partition_rolls_back_both)
{
    make_table(1, "te_orders", "");
    make_table(0, "te_audit", ", UNIQUE (v)");
    lite_exec("INSERT INTO te_audit (v) VALUES ('dup')");
    char *conf = txn_conf("te");
    start(conf);

    /* one step at a time: the failure is known before COMMIT, which is refused; ROLLBACK works */
    char *body = script("CONTINUE\n"
                        "BEGIN\n"
                        "SQL INSERT INTO te_orders (v) VALUES ('o1')\n"
                        "FOR te_audit\n"
                        "SQL INSERT INTO te_audit (v) VALUES ('dup')\n"
                        "KEY sa_main\n"
                        "COMMIT\n"
                        "ROLLBACK\n");
    ck_assert_int_eq(num_results(body), 5);
    assert_result(body, 0, "OK", NULL);
    assert_result(body, 1, "OK", NULL);
    assert_result(body, 2, "SQL_ERROR", "\"sqlstate\":\"23505\"");
    assert_result(body, 3, "REFUSED", NULL);
    assert_result(body, 4, "OK", NULL);
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM te_orders"), 0);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM te_audit"), 1);

    /* pipelined: COMMIT is accepted before the failure is known, and answers it */
    body = script("ALL\n"
                  "BEGIN\n"
                  "SQL INSERT INTO te_orders (v) VALUES ('o2')\n"
                  "FOR te_audit\n"
                  "SQL INSERT INTO te_audit (v) VALUES ('dup')\n"
                  "KEY sa_main\n"
                  "COMMIT\n");
    ck_assert_int_eq(num_results(body), 4);
    ck_assert_msg(strstr(body, "the transaction failed on `sa_lite` (SQLSTATE 23505); it was rolled back on every partition") !=
                      NULL,
                  "commit answer: %s", body);
    assert_result(body, 3, "SQL_ERROR", "\"sqlstate\":\"23505\""); /* the commit answers last */
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM te_orders"), 0);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM te_audit"), 1);

    /* and the session is usable again */
    body = script("BEGIN\n"
                  "SQL INSERT INTO te_orders (v) VALUES ('o3')\n"
                  "FOR te_audit\n"
                  "SQL INSERT INTO te_audit (v) VALUES ('a3')\n"
                  "KEY sa_main\n"
                  "COMMIT\n");
    assert_all_ok(body, 4);
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM te_orders WHERE v = 'o3'"), 1);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM te_audit WHERE v = 'a3'"), 1);
    stop();
    free(conf);
}
END_TEST

/* Without twophase the participants commit one after another: the main session, then the
 * partitions in binds: order (not the order they were touched in). A COMMIT that fails
 * half-way says which committed. sa_main lists sa_pg2 first, sa_main2 lists sa_lite first. */
START_TEST(commit_order_and_partial_failure)
{
    make_table(1, "to_main", "");
    make_table(0, "to_audit", "");
    /* a deferred unique constraint: the insert succeeds, COMMIT fails */
    make_table(2, "to_remote", ", CONSTRAINT to_remote_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED");
    free(th_pg_on(th_pg_url2(), "INSERT INTO to_remote (v) VALUES ('dup')"));
    char *conf = partition_conf("to_remote: sa_pg2, to_audit: sa_lite", "",
                                "  - url: @PG@\n"
                                "    key: sa_main2\n"
                                "    binds: {to_audit: sa_lite, to_remote: sa_pg2}\n");
    start(conf);

    static const char txn[] = "BEGIN\n"
                              "SQL INSERT INTO to_main (v) VALUES ($1)\n"
                              "P %s\n"
                              "FOR to_audit\n"
                              "SQL INSERT INTO to_audit (v) VALUES ($1)\n"
                              "P %s\n"
                              "FOR to_remote\n"
                              "SQL INSERT INTO to_remote (v) VALUES ('dup')\n"
                              "KEY %s\n"
                              "COMMIT\n";
    char *s = th_fmt(txn, "first", "first", "sa_main");
    char *body = script(s);
    ck_assert_int_eq(num_results(body), 5);
    assert_result(body, 4, "SQL_ERROR", "COMMIT failed on `sa_pg2` (SQLSTATE 23505): committed: sa_main; rolled back: sa_lite");
    free(body);
    free(s);
    ck_assert_int_eq(pg1("SELECT count(*) FROM to_main WHERE v = 'first'"), 1);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM to_audit WHERE v = 'first'"), 0);
    ck_assert_int_eq(pg2("SELECT count(*) FROM to_remote"), 1);

    s = th_fmt(txn, "second", "second", "sa_main2");
    body = script_at("/script?key=sa_main2", s);
    ck_assert_int_eq(num_results(body), 5);
    assert_result(body, 4, "SQL_ERROR",
                  "COMMIT failed on `sa_pg2` (SQLSTATE 23505): committed: sa_main2, sa_lite; rolled back: none");
    free(body);
    free(s);
    ck_assert_int_eq(pg1("SELECT count(*) FROM to_main WHERE v = 'second'"), 1);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM to_audit WHERE v = 'second'"), 1);
    ck_assert_int_eq(pg2("SELECT count(*) FROM to_remote"), 1);
    stop();
    free(conf);
}
END_TEST

/* A transaction that touched SQLite holds its write lock (BEGIN IMMEDIATE) until it ends, across
 * PostgreSQL round trips (here one that waits at a gate the test holds closed): another writer
 * waits up to its bind's acquire-timeout (SQLite's busy timeout), then fails with SQLITE_BUSY,
 * answered as SQLSTATE 40001, while the transaction still holds the lock. */
struct holder {
    const char *script;
    char *body;
};

static void *hold_lock(void *arg)
{
    struct holder *h = arg;
    h->body = script(h->script);
    return NULL;
}

START_TEST(sqlite_write_lock_is_held_across_the_transaction)
{
    make_table(1, "tl_orders", "");
    make_table(0, "tl_audit", "");
    char *conf = partition_conf("tl_audit: sa_lite", "",
                                "  - url: sqlite:///@DIR@/lite.sqlite3\n"
                                "    key: sa_lite_impatient\n"
                                "    middleware: OFF\n"
                                "    pool: {acquire-timeout: 0.3}\n"
                                "  - url: @PG@\n"
                                "    key: sa_other\n"
                                "    binds: {tl_audit: sa_lite_impatient}\n");
    start(conf);
    long key = db_gate_key();
    char *holder = th_fmt("BEGIN\n"
                          "FOR tl_audit\n"
                          "SQL INSERT INTO tl_audit (v) VALUES ('held')\n"
                          "KEY sa_main\n"
                          "SQL SELECT 1 AS passed FROM pg_advisory_xact_lock_shared(%ld)\n"
                          "COMMIT\n",
                          key);
    struct holder h = {holder};
    PGconn *gate = db_gate_close(key);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, hold_lock, &h), 0);
    /* the steps run one after the other: once the PostgreSQL one waits, SQLite's insert is done
     * and its write lock held */
    int held = db_gate_wait_for(key, 1);
    char *body = NULL;
    double waited = 0;
    if (held) {
        /* sa_other routes tl_audit to the same file through a bind with a 0.3 s busy timeout */
        double t0 = th_now_ms();
        body = script_at("/script?key=sa_other", "FOR tl_audit\n"
                                                 "SQL INSERT INTO tl_audit (v) VALUES ('waited')\n");
        waited = th_now_ms() - t0;
    }
    db_gate_open(gate);
    pthread_join(t, NULL);
    ck_assert_msg(held, "the holder's transaction never reached its PostgreSQL step: %s", h.body);
    /* it failed while the lock was still held (the gate was closed until now), after waiting */
    assert_result(body, 0, "SQL_ERROR", "\"sqlstate\":\"40001\"");
    ck_assert_msg(waited >= 250, "the second writer failed after %.0f ms, before its 0.3 s busy timeout", waited);
    free(body);
    assert_all_ok(h.body, 4);
    free(h.body);
    free(holder);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM tl_audit WHERE v = 'held'"), 1);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM tl_audit WHERE v = 'waited'"), 0);
    stop();
    free(conf);
}
END_TEST

/* ---- twophase: ON across the two PostgreSQL databases ---- */

/* rolls back what a failed test may have left prepared */
static void rollback_prepared_like(const char *url, const char *pattern)
{
    PGconn *c = th_pg_connect(url);
    char *sql = th_fmt("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE '%s'", pattern);
    PGresult *r = PQexec(c, sql);
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); ++i) {
        char *rb = th_fmt("ROLLBACK PREPARED '%s'", PQgetvalue(r, i, 0));
        PQclear(PQexec(c, rb));
        free(rb);
    }
    PQclear(r);
    PQfinish(c);
    free(sql);
}

/* what these tests (or a failed run of them) may have left prepared: it would hold locks on
 * the tables the next run drops */
static void rollback_leftovers(void)
{
    if (th_pg_url() == NULL || th_pg_url2() == NULL)
        return;
    const char *patterns[] = {"prfor%", "h2o_db_prfor%", "h2o_db_prt%"};
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); ++i) {
        rollback_prepared_like(th_pg_url(), patterns[i]);
        rollback_prepared_like(th_pg_url2(), patterns[i]);
    }
    free(th_pg("DO $$ BEGIN IF to_regclass('h2o_db_twophase') IS NOT NULL THEN "
               "DELETE FROM h2o_db_twophase WHERE txn LIKE 'h2o_db_prfor%' OR txn LIKE 'h2o_db_prt%'; END IF; END $$"));
}

static char instance[32];

static void twophase_setup(void)
{
    setup();
    rollback_leftovers();
    snprintf(instance, sizeof(instance), "prt%d", (int)getpid());
    setenv("H2O_DB_INSTANCE", instance, 1); /* the server (a child) inherits it */
}

static void twophase_teardown(void)
{
    unsetenv("H2O_DB_INSTANCE");
    rollback_leftovers();
    teardown();
}

/* transactions this suite's server prepared (its gids start with h2o_db_INSTANCE_), on either database */
static long prepared_count(void)
{
    char *sql = th_fmt("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'h2o\\_db\\_%s\\_%%'", instance);
    long n = pg1(sql);
    free(sql);
    return n;
}

static long decisions_of_instance(void)
{
    if (pg1("SELECT count(*) FROM pg_tables WHERE tablename = 'h2o_db_twophase'") == 0)
        return 0;
    char *sql = th_fmt("SELECT count(*) FROM h2o_db_twophase WHERE txn LIKE 'h2o_db_%s_%%'", instance);
    long n = pg1(sql);
    free(sql);
    return n;
}

static int no_decisions(void *arg)
{
    return decisions_of_instance() == 0;
}

static char *twophase_conf(const char *prefix)
{
    char *binds = th_fmt("%s_remote: sa_pg2", prefix);
    char *conf = partition_conf(binds, "    twophase: ON\n", "");
    free(binds);
    return conf;
}

START_TEST(twophase_commit_is_visible_in_both)
{
    make_table(1, "tp_main", "");
    make_table(2, "tp_remote", ", CONSTRAINT tp_remote_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED");
    char *conf = twophase_conf("tp");
    start(conf);
    for (int i = 0; i < 3; ++i) {
        char *s = th_fmt("BEGIN\n"
                         "SQL INSERT INTO tp_main (v) VALUES ('c%d')\n"
                         "FOR tp_remote\n"
                         "SQL INSERT INTO tp_remote (v) VALUES ('c%d')\n"
                         "KEY sa_main\n"
                         "COMMIT\n",
                         i, i);
        char *body = script(s);
        assert_all_ok(body, 4);
        free(body);
        free(s);
    }
    ck_assert_int_eq(pg1("SELECT count(*) FROM tp_main"), 3);
    ck_assert_int_eq(pg2("SELECT count(*) FROM tp_remote"), 3);
    ck_assert_int_eq(prepared_count(), 0);
    /* the decision rows are deleted once every participant committed */
    ck_assert_msg(th_wait_until(no_decisions, NULL, 10000), "decision rows left in h2o_db_twophase: %ld", decisions_of_instance());
    stop();
    free(conf);
}
END_TEST

START_TEST(twophase_prepare_failure_commits_nowhere)
{
    make_table(1, "tf_main", "");
    /* CHECK constraints cannot be deferred; a deferred unique one fails at PREPARE TRANSACTION */
    make_table(2, "tf_remote", ", CONSTRAINT tf_remote_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED");
    free(th_pg_on(th_pg_url2(), "INSERT INTO tf_remote (v) VALUES ('dup')"));
    char *conf = twophase_conf("tf");
    start(conf);
    char *body = script("BEGIN\n"
                        "SQL INSERT INTO tf_main (v) VALUES ('f')\n"
                        "FOR tf_remote\n"
                        "SQL INSERT INTO tf_remote (v) VALUES ('dup')\n"
                        "KEY sa_main\n"
                        "COMMIT\n");
    ck_assert_int_eq(num_results(body), 4);
    assert_result(body, 1, "OK", NULL);
    assert_result(body, 2, "OK", NULL); /* deferred: accepted until PREPARE */
    assert_result(body, 3, "SQL_ERROR", "\"sqlstate\":\"23505\"");
    assert_result(body, 3, "SQL_ERROR",
                  "two-phase commit: PREPARE TRANSACTION failed on `sa_pg2` (SQLSTATE 23505); rolled back on every partition");
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM tf_main"), 0);
    ck_assert_int_eq(pg2("SELECT count(*) FROM tf_remote"), 1);
    ck_assert_int_eq(prepared_count(), 0); /* the main's prepared transaction was rolled back */
    ck_assert_int_eq(decisions_of_instance(), 0);

    /* a failure on the first participant (the main session) at PREPARE, too */
    free(th_pg("ALTER TABLE tf_main ADD CONSTRAINT tf_main_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED"));
    free(th_pg("INSERT INTO tf_main (v) VALUES ('dup1')"));
    body = script("BEGIN\n"
                  "SQL INSERT INTO tf_main (v) VALUES ('dup1')\n"
                  "FOR tf_remote\n"
                  "SQL INSERT INTO tf_remote (v) VALUES ('ok1')\n"
                  "KEY sa_main\n"
                  "COMMIT\n");
    assert_result(body, 3, "SQL_ERROR", "PREPARE TRANSACTION failed on `sa_main` (SQLSTATE 23505)");
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM tf_main"), 1);
    ck_assert_int_eq(pg2("SELECT count(*) FROM tf_remote WHERE v = 'ok1'"), 0);
    ck_assert_int_eq(prepared_count(), 0);

    /* the connections came back usable: a good two-phase commit goes through */
    body = script("BEGIN\n"
                  "SQL INSERT INTO tf_main (v) VALUES ('good')\n"
                  "FOR tf_remote\n"
                  "SQL INSERT INTO tf_remote (v) VALUES ('good')\n"
                  "KEY sa_main\n"
                  "COMMIT\n");
    assert_all_ok(body, 4);
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM tf_main WHERE v = 'good'"), 1);
    ck_assert_int_eq(pg2("SELECT count(*) FROM tf_remote WHERE v = 'good'"), 1);
    ck_assert_int_eq(prepared_count(), 0);
    stop();
    free(conf);
}
END_TEST

/* BEGIN; SQL; PREPARE TRANSACTION 'gid' on a connection of its own */
static void leave_prepared(const char *url, const char *sql, const char *gid)
{
    PGconn *c = th_pg_connect(url);
    char *prep = th_fmt("PREPARE TRANSACTION '%s'", gid);
    const char *steps[] = {"BEGIN", sql, prep};
    for (size_t i = 0; i < 3; ++i) {
        PGresult *r = PQexec(c, steps[i]);
        ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s: %s", steps[i], PQresultErrorMessage(r));
        PQclear(r);
    }
    PQfinish(c);
    free(prep);
}

static long prepared_named(const char *url, const char *gid)
{
    char *sql = th_fmt("SELECT count(*) FROM pg_prepared_xacts WHERE gid = '%s'", gid);
    long n = pg_count_on(url, sql);
    free(sql);
    return n;
}

START_TEST(twophase_recovery_at_start_up)
{
    make_table(1, "tv_main", "");
    make_table(2, "tv_remote", "");
    free(th_pg("CREATE TABLE IF NOT EXISTS h2o_db_twophase (txn text PRIMARY KEY, decided_at timestamptz NOT NULL DEFAULT now())"));
    char *decided = th_fmt("h2o_db_%s_decided", instance), *undecided = th_fmt("h2o_db_%s_undecided", instance);
    char *gid, *sql;

    /* a crash after the decision: both participants prepared, the decision recorded */
    leave_prepared(th_pg_url(), "INSERT INTO tv_main (v) VALUES ('decided')", gid = th_fmt("%s_0", decided));
    free(gid);
    leave_prepared(th_pg_url2(), "INSERT INTO tv_remote (v) VALUES ('decided')", gid = th_fmt("%s_1", decided));
    free(gid);
    free(th_pg(sql = th_fmt("INSERT INTO h2o_db_twophase (txn) VALUES ('%s')", decided)));
    free(sql);
    /* a crash before it: prepared, no decision */
    leave_prepared(th_pg_url(), "INSERT INTO tv_main (v) VALUES ('undecided')", gid = th_fmt("%s_0", undecided));
    free(gid);
    leave_prepared(th_pg_url2(), "INSERT INTO tv_remote (v) VALUES ('undecided')", gid = th_fmt("%s_1", undecided));
    free(gid);
    /* another instance's, decided or not, and someone else's: not ours to touch */
    leave_prepared(th_pg_url(), "INSERT INTO tv_main (v) VALUES ('foreign')", "h2o_db_prfor1_x_0");
    leave_prepared(th_pg_url2(), "INSERT INTO tv_remote (v) VALUES ('foreign')", "prfor_other_app");
    free(th_pg("INSERT INTO h2o_db_twophase (txn) VALUES ('h2o_db_prfor1_x')"));

    char *conf = twophase_conf("tv");
    start(conf);
    char *log = th_server_log(&server);
    stop();

    ck_assert_int_eq(pg1("SELECT count(*) FROM tv_main WHERE v = 'decided'"), 1);
    ck_assert_int_eq(pg2("SELECT count(*) FROM tv_remote WHERE v = 'decided'"), 1);
    ck_assert_int_eq(pg1("SELECT count(*) FROM tv_main WHERE v = 'undecided'"), 0);
    ck_assert_int_eq(pg2("SELECT count(*) FROM tv_remote WHERE v = 'undecided'"), 0);
    char *like = th_fmt("h2o_db_%s_%%", instance);
    sql = th_fmt("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE '%s'", like);
    ck_assert_int_eq(pg1(sql), 0);
    free(sql);
    sql = th_fmt("SELECT count(*) FROM h2o_db_twophase WHERE txn LIKE '%s'", like);
    ck_assert_int_eq(pg1(sql), 0); /* this instance's decisions are forgotten once applied */
    free(sql);
    free(like);
    ck_assert_int_eq(prepared_named(th_pg_url(), "h2o_db_prfor1_x_0"), 1);
    ck_assert_int_eq(prepared_named(th_pg_url2(), "prfor_other_app"), 1);
    ck_assert_int_eq(pg1("SELECT count(*) FROM h2o_db_twophase WHERE txn = 'h2o_db_prfor1_x'"), 1);
    ck_assert_msg(strstr(log, "committed prepared transaction") != NULL && strstr(log, decided) != NULL, "log:\n%s", log);
    ck_assert_msg(strstr(log, "rolled back prepared transaction") != NULL && strstr(log, undecided) != NULL, "log:\n%s", log);
    ck_assert_msg(strstr(log, "prfor") == NULL, "the log mentions a foreign transaction:\n%s", log);

    /* clean up the foreign ones */
    free(th_pg("ROLLBACK PREPARED 'h2o_db_prfor1_x_0'"));
    free(th_pg_on(th_pg_url2(), "ROLLBACK PREPARED 'prfor_other_app'"));
    free(th_pg("DELETE FROM h2o_db_twophase WHERE txn = 'h2o_db_prfor1_x'"));
    ck_assert_int_eq(prepared_count(), 0);
    free(log);
    free(conf);
    free(decided);
    free(undecided);
}
END_TEST

/* ---- sessions outside a request ---- */

static int bg_clean(void *arg)
{
    return pg1("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pr_bg' AND "
               "state LIKE 'idle in transaction%'") == 0;
}

START_TEST(sessions_outside_requests)
{
    make_table(1, "bg_close", "");
    make_table(1, "bg_main", "");
    make_table(0, "bg_audit", "");
    start("listen: {host: 127.0.0.1, port: @PORT@}\n"
          "num-threads: 2\n"
          "db.bind:\n"
          "  - url: @PG@\n"
          "    pool: {max: 2, acquire-timeout: 10}\n"
          "    on-connect: SET application_name = 'pr_bg'\n"
          "    binds: {bg_audit: sa_lite}\n"
          "  - url: sqlite:///@DIR@/lite.sqlite3\n"
          "    key: sa_lite\n"
          "    middleware: OFF\n"
          "hosts:\n"
          "  default:\n"
          "    db.bind: {url: '@PG@', key: sa_hostonly}\n"
          "    paths:\n"
          "      /bg:\n"
          "        c.handler: @BUILD@/t/db_handlers.so:db_background\n");

    /* six sessions at once, each holding a transaction for 300 ms, on a pool of max 2: each
     * counted the connections PostgreSQL saw inside its transaction, never more than two; all
     * six served */
    char *body = get("/bg?mode=max&n=6&ms=300", 200);
    ck_assert_str_eq(body, "{\"opened\":6,\"ok\":6,\"failed\":0,\"max_connections\":2}\n");
    free(body);
    ck_assert_int_le(pg1("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pr_bg'"),
                     2);

    /* only keys bound at global level */
    free(get("/bg?key=sa_hostonly", 404));
    free(get("/bg?key=nosuch", 404));

    /* closed with its transaction open (from inside a callback of it): rolled back */
    body = get("/bg?mode=close&table=bg_close", 200);
    ck_assert_str_eq(body, "{\"closed\":1}\n");
    free(body);
    ck_assert_msg(th_wait_until(bg_clean, NULL, 10000), "a closed session left its connection idle in transaction");
    ck_assert_int_eq(pg1("SELECT count(*) FROM bg_close"), 0);

    /* a transaction across partitions outside a request */
    body = get("/bg?mode=partition&table=bg_main&ptable=bg_audit&v=p1", 200);
    ck_assert_str_eq(body, "{\"commit\":\"OK\"}\n");
    free(body);
    ck_assert_int_eq(pg1("SELECT count(*) FROM bg_main WHERE v = 'p1'"), 1);
    ck_assert_int_eq(lite_count("SELECT count(*) FROM bg_audit WHERE v = 'p1'"), 1);

    /* the pool is still whole */
    body = get("/bg?mode=max&n=3&ms=10", 200);
    ck_assert_msg(strstr(body, "\"ok\":3,\"failed\":0") != NULL, "%s", body);
    free(body);
    stop();
}
END_TEST

/* ---- config errors ---- */

/* runs h2o-db -t on the template; expects exit 1 and `where` (":LINE:COL: ") and `what` in the output */
static void assert_config_error(const char *conf, const char *where, const char *what)
{
    char *out;
    int status = th_run_h2o_db("-t", conf, &out);
    ck_assert_msg(status == 1, "exit status %d (expected 1); output:\n%s\nconfig:\n%s", status, out, conf);
    char *loc = th_fmt("h2o-db.conf%s", where);
    ck_assert_msg(strstr(out, loc) != NULL, "expected %s in:\n%s", loc, out);
    ck_assert_msg(strstr(out, what) != NULL, "expected `%s` in:\n%s", what, out);
    free(loc);
    free(out);
}

#define HOSTS                                                                                                                      \
    "hosts:\n"                                                                                                                     \
    "  default:\n"                                                                                                                 \
    "    paths:\n"                                                                                                                 \
    "      /: {c.handler: '@BUILD@/t/db_handlers.so:db_nothing'}\n"

START_TEST(config_errors)
{
    /* line 4, column 17 is the KEY of `    binds: {t1: KEY}` */
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: sqlite:///a.sqlite3\n"
                        "    binds: {t1: nosuch}\n" HOSTS,
                        ":4:17: ", "binds: unknown key `nosuch` for table `t1`");
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: sqlite:///a.sqlite3\n"
                        "    binds: {t1: sa_main}\n" HOSTS,
                        ":4:17: ", "table `t1` names the bind itself (`sa_main`)");
    /* a cycle of two, and of three */
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: sqlite:///a.sqlite3\n"
                        "    binds: {t1: sa_b}\n"
                        "  - url: sqlite:///b.sqlite3\n"
                        "    key: sa_b\n"
                        "    binds: {t2: sa_main}\n" HOSTS,
                        ":4:17: ", "the partitions of `sa_main` lead back to it (a cycle through `sa_b`)");
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: sqlite:///a.sqlite3\n"
                        "    binds: {t1: sa_b}\n"
                        "  - url: sqlite:///b.sqlite3\n"
                        "    key: sa_b\n"
                        "    binds: {t2: sa_c}\n"
                        "  - url: sqlite:///c.sqlite3\n"
                        "    key: sa_c\n"
                        "    binds: {t3: sa_main}\n" HOSTS,
                        ":4:17: ", "a cycle through `sa_b`");
    /* twophase: ON with a SQLite partition */
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: @PG@\n"
                        "    twophase: ON\n"
                        "    binds: {t1: sa_lite}\n"
                        "  - url: sqlite:///a.sqlite3\n"
                        "    key: sa_lite\n"
                        "    middleware: OFF\n" HOSTS,
                        ":5:17: ", "twophase: ON needs PostgreSQL partitions, but `sa_lite` is sqlite:");
    /* twophase without binds */
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: @PG@\n"
                        "    twophase: ON\n" HOSTS,
                        ":4:15: ", "twophase: ON needs `binds:`");
    /* a table listed twice (the YAML loader's duplicate key) */
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: @PG@\n"
                        "    binds: {t1: sa_b, t1: sa_b}\n"
                        "  - url: sqlite:///b.sqlite3\n"
                        "    key: sa_b\n" HOSTS,
                        ":4:23: ", "duplicate key `t1`");
    /* binds: is a mapping */
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "db.bind:\n"
                        "  - url: @PG@\n"
                        "    binds: [t1, sa_b]\n" HOSTS,
                        ":4:12: ", "binds must be a mapping of TABLE: KEY");
    /* KEY resolves in the partitioned bind's scope: another host's bind is not visible */
    assert_config_error("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "hosts:\n"
                        "  a.example:\n"
                        "    db.bind:\n"
                        "      - url: sqlite:///a.sqlite3\n"
                        "        binds: {t1: sa_other}\n"
                        "    paths:\n"
                        "      /: {c.handler: '@BUILD@/t/db_handlers.so:db_nothing'}\n"
                        "  b.example:\n"
                        "    db.bind: {url: 'sqlite:///b.sqlite3', key: sa_other}\n"
                        "    paths:\n"
                        "      /: {c.handler: '@BUILD@/t/db_handlers.so:db_nothing'}\n",
                        ":6:21: ", "unknown key `sa_other` for table `t1`");

    /* accepted: a partition declared after the bind naming it, a global key named from a
     * path-level bind, a chain without a cycle */
    char *out;
    const char *good = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                       "db.bind:\n"
                       "  - url: @PG@\n"
                       "    twophase: ON\n"
                       "    binds: {t1: sa_pg2}\n"
                       "  - url: @PGDB2@\n"
                       "    key: sa_pg2\n"
                       "    middleware: OFF\n"
                       "  - url: sqlite:///a.sqlite3\n"
                       "    key: sa_a\n"
                       "    binds: {t2: sa_b}\n"
                       "  - url: sqlite:///b.sqlite3\n"
                       "    key: sa_b\n"
                       "    middleware: OFF\n"
                       "hosts:\n"
                       "  default:\n"
                       "    paths:\n"
                       "      /p:\n"
                       "        db.bind: {url: 'sqlite:///c.sqlite3', key: sa_c, binds: {t3: sa_b, t4: sa_pg2}}\n"
                       "        c.handler: '@BUILD@/t/db_handlers.so:db_nothing'\n";
    int status = th_run_h2o_db("-t", good, &out);
    ck_assert_msg(status == 0, "exit status %d; output:\n%s", status, out);
    free(out);
}
END_TEST

/* SQLite cannot prepare transactions: a SQLite main bind cannot be twophase either. */
START_TEST(config_error_twophase_on_a_sqlite_main_bind)
{
    char *out;
    const char *conf = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                       "db.bind:\n"
                       "  - url: sqlite:///a.sqlite3\n"
                       "    twophase: ON\n"
                       "    binds: {t1: sa_pg}\n"
                       "  - url: @PG@\n"
                       "    key: sa_pg\n"
                       "    middleware: OFF\n" HOSTS;
    int status = th_run_h2o_db("-t", conf, &out);
    ck_assert_msg(status == 1 && strstr(out, "h2o-db.conf:4:") != NULL && strstr(out, "twophase") != NULL,
                  "twophase: ON on a SQLite bind: exit status %d, output:\n%s", status, out);
    free(out);
}
END_TEST

/* ---- the example: conf.d/partitions.conf and demo/shop.c ---- */

/* the repository's root, from this file's name (relative names are relative to the build folder) */
static char *source_root(void)
{
    char *file = __FILE__[0] == '/' ? strdup(__FILE__) : th_fmt("%s/%s", th_build_dir(), __FILE__), real[PATH_MAX];
    ck_assert_msg(realpath(file, real) != NULL, "cannot find %s", file);
    free(file);
    return strdup(dirname(dirname(real)));
}

static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "r");
    ck_assert_msg(fp != NULL, "cannot read %s", path);
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

/* DIR/tree/{conf.d/partitions.conf (a copy), demo -> the sources' demo, build -> the build folder}:
 * the example's relative paths (../build/demo/shop.so, ../demo/...) resolve as in the repository */
static char *example_tree(char **conf_text)
{
    char *root = source_root(), *tree = th_fmt("%s/tree", dir), *confd = th_fmt("%s/conf.d", tree), *demo = th_fmt("%s/demo", root),
         *demo_link = th_fmt("%s/demo", tree), *build_link = th_fmt("%s/build", tree),
         *src = th_fmt("%s/conf.d/partitions.conf", root);
    ck_assert(mkdir(tree, 0755) == 0 && mkdir(confd, 0755) == 0);
    ck_assert(symlink(demo, demo_link) == 0);
    ck_assert(symlink(th_build_dir(), build_link) == 0);
    *conf_text = read_text(src);
    free(root);
    free(tree);
    free(demo);
    free(demo_link);
    free(build_link);
    free(src);
    return confd;
}

/* replaces the first `from` in *text by `to` (asserts it is there) */
static void replace(char **text, const char *from, const char *to)
{
    char *at = strstr(*text, from);
    ck_assert_msg(at != NULL, "`%s` not found in conf.d/partitions.conf", from);
    char *out = th_fmt("%.*s%s%s", (int)(at - *text), *text, to, at + strlen(from));
    free(*text);
    *text = out;
}

#define EXAMPLE_PG_URL "postgresql://shop@127.0.0.1/shop"

START_TEST(example_config_passes_check)
{
    char *text, *confd = example_tree(&text);
    char *path = th_fmt("%s/partitions.conf", confd);
    FILE *fp = fopen(path, "w");
    fputs(text, fp);
    fclose(fp);
    char *cmd = th_fmt("'%s/h2o-db' -t -c '%s' > '%s/check.txt' 2>&1", th_build_dir(), path, dir);
    int status = system(cmd);
    char *out_path = th_fmt("%s/check.txt", dir), *out = read_text(out_path);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "h2o-db -t -c conf.d/partitions.conf:\n%s", out);
    ck_assert_msg(strstr(text, EXAMPLE_PG_URL) != NULL, "the example's placeholder URL changed: update EXAMPLE_PG_URL");
    free(out);
    free(out_path);
    free(cmd);
    free(path);
    free(confd);
    free(text);
}
END_TEST

START_TEST(example_shop_writes_both_in_one_transaction)
{
    char *text, *confd = example_tree(&text);
    /* a database of its own: the example's tables have plain names (users, orders) */
    char *db = th_fmt("pr_shop_%d", (int)getpid()), *sql = th_fmt("DROP DATABASE IF EXISTS %s", db);
    free(th_pg(sql));
    free(sql);
    free(th_pg(sql = th_fmt("CREATE DATABASE %s", db)));
    free(sql);
    char *base = strdup(th_pg_url()), *slash = strrchr(base, '/');
    *slash = '\0';
    char *url = th_fmt("%s/%s", base, db);
    replace(&text, EXAMPLE_PG_URL, url);
    replace(&text, "port: 8080", "port: @PORT@");
    start_in(confd, text);

    th_response_t res;
    char *u = th_url(&server, "/orders?user=alice&item=book");
    ck_assert(th_http(&res, TH_HTTP1, "POST", u, "") == 0);
    ck_assert_msg(res.status == 201, "POST /orders: %ld %s\nlog:\n%s", res.status, res.body, log_tail());
    th_response_free(&res);
    free(u);
    u = th_url(&server, "/orders?user=bob&item=pen");
    ck_assert(th_http(&res, TH_HTTP1, "POST", u, "") == 0);
    ck_assert_int_eq(res.status, 201);
    th_response_free(&res);
    free(u);
    /* a bad request writes nothing anywhere */
    u = th_url(&server, "/orders?user=alice");
    ck_assert(th_http(&res, TH_HTTP1, "POST", u, "") == 0);
    ck_assert_int_eq(res.status, 400);
    th_response_free(&res);
    free(u);

    char *body = get("/orders", 200);
    ck_assert_msg(strstr(body, "\"user\":\"alice\"") != NULL && strstr(body, "\"item\":\"book\"") != NULL &&
                      strstr(body, "\"user\":\"bob\"") != NULL,
                  "GET /orders: %s", body);
    free(body);
    body = get("/orders/audit", 200);
    ck_assert_msg(strstr(body, "alice") != NULL && strstr(body, "book") != NULL, "GET /orders/audit: %s", body);
    free(body);
    stop();

    ck_assert_int_eq(pg_count_on(url, "SELECT count(*) FROM orders"), 2);
    ck_assert_int_eq(pg_count_on(url, "SELECT count(*) FROM users"), 2);
    char *lite = th_fmt("%s/shop-audit.sqlite3", confd);
    sqlite3 *sq;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open_v2(lite, &sq, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(sq, "SELECT count(*) FROM audit_log", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 2);
    sqlite3_finalize(st);
    sqlite3_close(sq);
    free(lite);

    free(th_pg(sql = th_fmt("DROP DATABASE %s", db)));
    free(sql);
    free(url);
    free(base);
    free(db);
    free(confd);
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("partition");
    TCase *tc = tcase_create("routing and transactions");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, routing_follows_binds);
    tcase_add_test(tc, commit_writes_both);
    tcase_add_test(tc, rollback_writes_neither);
    tcase_add_test(tc, request_end_without_commit_writes_neither);
    tcase_add_test(tc, error_in_second_partition_rolls_back_both);
    tcase_add_test(tc, commit_order_and_partial_failure);
    tcase_add_test(tc, sqlite_write_lock_is_held_across_the_transaction);
    suite_add_tcase(s, tc);

    tc = tcase_create("twophase");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, twophase_setup, twophase_teardown);
    tcase_add_test(tc, twophase_commit_is_visible_in_both);
    tcase_add_test(tc, twophase_prepare_failure_commits_nowhere);
    tcase_add_test(tc, twophase_recovery_at_start_up);
    suite_add_tcase(s, tc);

    tc = tcase_create("sessions outside requests");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, sessions_outside_requests);
    suite_add_tcase(s, tc);

    tc = tcase_create("config");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, config_errors);
    tcase_add_test(tc, config_error_twophase_on_a_sqlite_main_bind);
    tcase_add_test(tc, example_config_passes_check);
    tcase_add_test(tc, example_shop_writes_both_in_one_transaction);
    suite_add_tcase(s, tc);

    fprintf(stderr, "partition: not tested: twophase: ON with max_prepared_transactions = 0 (the shared test PostgreSQL runs with "
                    "64)\n");
    return th_run_suite(s);
}
