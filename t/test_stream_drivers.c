/*
 * Streamed results (h2o_db_query_rows, docs/c-api.md) from the SQLite and MySQL drivers, in-process
 * through the public API as an embedder uses it (docs/embedding.md): one config with a SQLite bind
 * (a file) and a MariaDB bind (scripts/test's server, a database of this suite's own), one loop,
 * sessions opened outside a request. Against each backend:
 *   - 100,000 rows arrive complete and in order, one per on_row, then on_done once (OK, affected =
 *     the rows);
 *   - a pause (on_row returns 1) really stops delivery until h2o_db_resume (no row while paused;
 *     on MariaDB the statement is still running meanwhile: the server waits for us);
 *   - a stop (-1) ends the statement: on_done once, the session and its connection work afterwards,
 *     MariaDB's processlist shows the statement gone;
 *   - an error after some rows (SQLite: integer overflow at row 5000; MariaDB: a function that
 *     SIGNALs at row 5000) reaches on_done after exactly the rows before it;
 *   - a stream inside a transaction sees the transaction's own writes;
 *   - MariaDB's connection killed while a stream is paused: on_done once (UNAVAILABLE) after the
 *     rows, and the session goes on on a new connection.
 * H2O_DB_STREAM_BENCH=1 adds a measurement (no assertion on speed or memory): rows/s streamed vs
 * buffered, and the process's RSS during a 1,000,000-row stream read by a slow consumer.
 */
#include <check.h>
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>
#include "h2o_db.h"
#include "h2o/configurator.h"
#include "harness.h"

#define MY_DB "h2o_test_stream_drivers"

enum { LITE, MARIA, NBACKENDS };
static const char *const keys[NBACKENDS] = {"lite", "maria"};

/* rows 1..$1 as (i, 'row i'), from each backend's own generator */
static const char *const series_sql[NBACKENDS] = {
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) SELECT i, 'row ' || i AS t FROM n",
    "SELECT seq AS i, CONCAT('row ', seq) AS t FROM seq_1_to_1000000000 WHERE seq <= $1"};
/* the same, failing at row 5000 (after 4999 rows) */
static const char *const failing_sql[NBACKENDS] = {
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) "
    "SELECT CASE WHEN i = 5000 THEN abs(-9223372036854775807 - 1) ELSE i END AS i FROM n",
    "SELECT stream_boom(seq) AS i FROM seq_1_to_10000"};
/* rows long enough that a paused stream fills the socket's buffers (MariaDB) */
static const char *const wide_sql[NBACKENDS] = {
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) SELECT i, printf('%.1000c', 'x') AS t FROM n",
    "SELECT seq AS i, REPEAT('x', 1000) AS t FROM seq_1_to_1000000000 WHERE seq <= $1"};

static h2o_globalconf_t conf;
static uv_loop_t loop;
static h2o_context_t ctx;
static int have_ctx;

/* ---- MariaDB directly (root on the socket) ---- */

static const char *mysql_url(void)
{
    static char url[1024];
    const char *u = getenv("H2O_DB_TEST_MYSQL"), *slash = u != NULL ? strrchr(u, '/') : NULL;
    if (slash == NULL || strlen(u) > sizeof(url) - sizeof(MY_DB) - 2)
        return NULL;
    const char *query = strchr(slash, '?');
    snprintf(url, sizeof(url), "%.*s/" MY_DB "%s", (int)(slash - u), u, query != NULL ? query : "");
    return url;
}

static MYSQL *direct(const char *db)
{
    const char *sock = getenv("H2O_DB_TEST_MYSQL_SOCKET");
    MYSQL *m = mysql_init(NULL);
    if (sock == NULL || mysql_real_connect(m, "localhost", "root", NULL, db, 0, sock, CLIENT_MULTI_STATEMENTS) == NULL) {
        fprintf(stderr, "stream_drivers: cannot connect to MariaDB as root: %s\n", mysql_error(m));
        mysql_close(m);
        return NULL;
    }
    return m;
}

/* How many statements of this suite's database run `like` (a LIKE pattern) right now. */
static long my_running(const char *like)
{
    MYSQL *m = direct(MY_DB);
    ck_assert(m != NULL);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM information_schema.processlist WHERE db = '" MY_DB "' AND command <> 'Sleep' "
             "AND info LIKE '%s' AND id <> connection_id()",
             like);
    ck_assert_msg(mysql_query(m, sql) == 0, "%s", mysql_error(m));
    MYSQL_RES *res = mysql_store_result(m);
    MYSQL_ROW row = mysql_fetch_row(res);
    long n = atol(row[0]);
    mysql_free_result(res);
    mysql_close(m);
    return n;
}

/* Kills (KILL CONNECTION) the connections of this suite's database that run `like`; returns how many. */
static int my_kill(const char *like)
{
    MYSQL *m = direct(MY_DB);
    ck_assert(m != NULL);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT id FROM information_schema.processlist WHERE db = '" MY_DB "' AND info LIKE '%s' AND id <> connection_id()",
             like);
    ck_assert_msg(mysql_query(m, sql) == 0, "%s", mysql_error(m));
    MYSQL_RES *res = mysql_store_result(m);
    MYSQL_ROW row;
    int n = 0;
    while ((row = mysql_fetch_row(res)) != NULL) {
        snprintf(sql, sizeof(sql), "KILL CONNECTION %s", row[0]);
        n += mysql_query(m, sql) == 0;
    }
    mysql_free_result(res);
    mysql_close(m);
    return n;
}

/* ---- the loop ---- */

static void on_guard(uv_timer_t *t)
{
    *(int *)t->data = 1;
}

/* Runs the loop until *flag (bounded: a hang fails the test). */
static void run_until(const int *flag, double seconds, const char *what)
{
    int late = 0;
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    guard.data = &late;
    uv_timer_start(&guard, on_guard, (uint64_t)(seconds * 1000 * th_time_factor()), 0);
    while (!*flag && !late)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    ck_assert_msg(*flag, "timed out waiting for %s", what);
}

static h2o_db_session_t *session(int b)
{
    if (!have_ctx) {
        /* (in the test's own process: check forks after main made the config) */
        uv_loop_init(&loop);
        h2o_context_init(&ctx, &loop, &conf);
        have_ctx = 1;
    }
    h2o_db_session_t *s = h2o_db_session_open(&ctx, keys[b]);
    ck_assert(s != NULL);
    return s;
}

/* ---- one statement, waited for ---- */

struct answer {
    int done;
    h2o_db_status_t status;
    char sqlstate[6];
    uint64_t affected;
    size_t rows;
    char first[64];
    int read_all;         /* bench: read every row in the callback */
    size_t rss_kb, wrong; /* ... the RSS then, rows not as expected */
};

static size_t rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtoul(line + 6, NULL, 10);
    if (f != NULL)
        fclose(f);
    return kb;
}

static void on_answer(h2o_db_result_t *r, void *data)
{
    struct answer *a = data;
    a->done = 1;
    a->status = h2o_db_result_status(r);
    snprintf(a->sqlstate, sizeof(a->sqlstate), "%s", a->status == H2O_DB_OK ? "" : h2o_db_result_sqlstate(r));
    a->affected = h2o_db_result_affected(r);
    a->rows = h2o_db_result_rows(r);
    size_t len = 0;
    const char *v = a->rows != 0 ? h2o_db_result_value(r, 0, 0, &len) : NULL;
    snprintf(a->first, sizeof(a->first), "%.*s", v != NULL ? (int)len : 6, v != NULL ? v : "(none)");
    if (a->read_all) {
        /* the bench: every row read, as a streaming consumer reads them, while the result is alive */
        a->rss_kb = rss_kb();
        for (size_t i = 0; i < a->rows; ++i)
            if ((v = h2o_db_result_value(r, i, 0, &len)) == NULL || strtoull(v, NULL, 10) != i + 1)
                ++a->wrong;
    }
}

static void ok(h2o_db_session_t *s, const char *sql, const char *param, struct answer *a)
{
    memset(a, 0, sizeof(*a));
    const char *params[] = {param};
    ck_assert(h2o_db_query(s, sql, param != NULL, params, on_answer, a) == 0);
    run_until(&a->done, 60, sql);
    ck_assert_msg(a->status == H2O_DB_OK, "%s: status %d %s", sql, a->status, a->sqlstate);
}

/* ---- a stream, read by a consumer that checks every row ---- */

struct reader {
    h2o_db_session_t *s;
    size_t rows, wrong, not_one;
    size_t pause_at[4];  /* rows after which on_row pauses (0: none) */
    size_t npaused;      /* pauses done */
    int paused;          /* between on_row returning 1 and h2o_db_resume */
    size_t while_paused; /* rows that came meanwhile: must stay 0 */
    long server_running; /* MariaDB: statements of ours running while paused */
    int backend;
    size_t stop_at;    /* on_row returns -1 at this row (0: never) */
    int kill_paused;   /* MariaDB: the server's connection is killed during the first pause */
    int killed;        /* ... connections it killed */
    size_t slow_every; /* bench: every this many rows, pause for 1 ms */
    size_t max_rss_kb; /* bench: the largest RSS seen */
    int done, dones;
    h2o_db_status_t status;
    char sqlstate[6];
    uint64_t affected;
    uv_timer_t timer;
};

static void on_pause_over(uv_timer_t *t)
{
    struct reader *rd = t->data;
    if (rd->backend == MARIA && rd->slow_every == 0)
        rd->server_running = my_running("SELECT seq%");
    if (rd->kill_paused && rd->killed == 0)
        rd->killed = my_kill("SELECT seq%");
    rd->paused = 0;
    ck_assert(h2o_db_resume(rd->s) == 0);
    ck_assert(h2o_db_resume(rd->s) == -1); /* (nothing is paused any more) */
}

static int on_row(const h2o_db_result_t *row, void *data)
{
    struct reader *rd = data;
    if (rd->paused)
        ++rd->while_paused;
    if (h2o_db_result_rows(row) != 1)
        ++rd->not_one;
    size_t len = 0;
    const char *v = h2o_db_result_value(row, 0, 0, &len);
    ++rd->rows;
    if (v == NULL || strtoull(v, NULL, 10) != rd->rows) {
        if (rd->wrong++ == 0)
            fprintf(stderr, "row %zu: %.*s\n", rd->rows, v != NULL ? (int)len : 4, v != NULL ? v : "NULL");
    }
    if (h2o_db_result_columns(row) > 1 && rd->rows % 997 == 0) {
        /* the second column: 'row N' (or the wide rows' 1000 x) */
        char expect[32];
        snprintf(expect, sizeof(expect), "row %zu", rd->rows);
        v = h2o_db_result_value(row, 0, 1, &len);
        if (v == NULL || (strcmp(h2o_db_result_column_name(row, 1), "t") != 0) ||
            (len != 1000 && (len != strlen(expect) || memcmp(v, expect, len) != 0)))
            ++rd->wrong;
    }
    if (rd->stop_at != 0 && rd->rows == rd->stop_at)
        return -1;
    uint64_t delay = 0;
    if (rd->npaused < 4 && rd->pause_at[rd->npaused] != 0 && rd->rows == rd->pause_at[rd->npaused]) {
        ++rd->npaused;
        delay = 300; /* long enough for rows to come if a pause did not stop them */
    } else if (rd->slow_every != 0 && rd->rows % rd->slow_every == 0) {
        size_t kb = rss_kb();
        rd->max_rss_kb = kb > rd->max_rss_kb ? kb : rd->max_rss_kb;
        delay = 1;
    }
    if (delay == 0)
        return 0;
    rd->paused = 1;
    uv_timer_start(&rd->timer, on_pause_over, delay, 0);
    return 1;
}

static void on_done(h2o_db_result_t *r, void *data)
{
    struct reader *rd = data;
    ++rd->dones;
    rd->done = 1;
    rd->status = h2o_db_result_status(r);
    snprintf(rd->sqlstate, sizeof(rd->sqlstate), "%s", rd->status == H2O_DB_OK ? "" : h2o_db_result_sqlstate(r));
    rd->affected = h2o_db_result_affected(r);
    ck_assert_uint_eq(h2o_db_result_rows(r), 0);
}

static void reader_init(struct reader *rd, h2o_db_session_t *s, int backend)
{
    memset(rd, 0, sizeof(*rd));
    rd->s = s;
    rd->backend = backend;
    uv_timer_init(&loop, &rd->timer);
    rd->timer.data = rd;
}

/* Streams sql (one parameter) into rd and waits for on_done (and a moment for a second one). */
static void stream(struct reader *rd, const char *sql, const char *param, double seconds)
{
    const char *params[] = {param};
    ck_assert(h2o_db_query_rows(rd->s, sql, param != NULL, params, on_row, on_done, rd) == 0);
    run_until(&rd->done, seconds, sql);
    uv_close((uv_handle_t *)&rd->timer, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    ck_assert_uint_eq(rd->dones, 1);
    ck_assert_uint_eq(rd->not_one, 0);
    ck_assert_uint_eq(rd->wrong, 0);
}

/* ---- the tests, each on both backends ---- */

START_TEST(rows_arrive_complete_and_in_order)
{
    for (int b = 0; b < NBACKENDS; ++b) {
        struct reader rd;
        reader_init(&rd, session(b), b);
        stream(&rd, series_sql[b], "100000", 120);
        ck_assert_msg(rd.status == H2O_DB_OK, "%s: %d %s", keys[b], rd.status, rd.sqlstate);
        ck_assert_uint_eq(rd.rows, 100000);
        ck_assert_uint_eq(rd.affected, 100000);
        h2o_db_session_close(rd.s);
    }
}
END_TEST

START_TEST(a_pause_stops_delivery_until_resume)
{
    for (int b = 0; b < NBACKENDS; ++b) {
        struct reader rd;
        reader_init(&rd, session(b), b);
        rd.pause_at[0] = 1;
        rd.pause_at[1] = 1000;
        rd.pause_at[2] = 1001;
        rd.pause_at[3] = 20000;
        stream(&rd, wide_sql[b], "50000", 120);
        ck_assert_msg(rd.status == H2O_DB_OK, "%s: %d %s", keys[b], rd.status, rd.sqlstate);
        ck_assert_uint_eq(rd.npaused, 4);
        ck_assert_uint_eq(rd.while_paused, 0);
        ck_assert_uint_eq(rd.rows, 50000);
        if (b == MARIA)
            ck_assert_msg(rd.server_running == 1, "the paused statement ran on the server: %ld", rd.server_running);
        h2o_db_session_close(rd.s);
    }
}
END_TEST

static int maria_stream_gone(void *arg)
{
    return my_running("SELECT seq%") == 0;
}

START_TEST(a_stop_ends_the_statement_and_the_session_goes_on)
{
    for (int b = 0; b < NBACKENDS; ++b) {
        h2o_db_session_t *s = session(b);
        struct reader rd;
        reader_init(&rd, s, b);
        rd.stop_at = 500;
        stream(&rd, wide_sql[b], "1000000", 60);
        ck_assert_msg(rd.status == H2O_DB_OK, "%s: a stop ends OK, got %d %s", keys[b], rd.status, rd.sqlstate);
        ck_assert_uint_eq(rd.rows, 500); /* (the rest is dropped) */
        if (b == MARIA)
            ck_assert_msg(th_wait_until(maria_stream_gone, NULL, 10000), "the stopped statement still runs on MariaDB");
        /* the same session: a statement, then a whole stream */
        struct answer a;
        ok(s, "SELECT 41 + 1", NULL, &a);
        ck_assert_str_eq(a.first, "42");
        reader_init(&rd, s, b);
        stream(&rd, series_sql[b], "3000", 60);
        ck_assert_uint_eq(rd.rows, 3000);
        ck_assert(rd.status == H2O_DB_OK);
        h2o_db_session_close(s);
    }
}
END_TEST

START_TEST(an_error_after_rows_reaches_on_done_after_them)
{
    static const char *const states[NBACKENDS] = {"22003", "45000"};
    for (int b = 0; b < NBACKENDS; ++b) {
        h2o_db_session_t *s = session(b);
        struct reader rd;
        reader_init(&rd, s, b);
        stream(&rd, failing_sql[b], NULL, 60);
        ck_assert_msg(rd.status == H2O_DB_SQL_ERROR, "%s: %d", keys[b], rd.status);
        ck_assert_str_eq(rd.sqlstate, states[b]);
        ck_assert_uint_eq(rd.rows, 4999);
        struct answer a;
        ok(s, "SELECT 7", NULL, &a);
        h2o_db_session_close(s);
    }
}
END_TEST

START_TEST(mariadb_killed_mid_stream_ends_it_and_the_session_reconnects)
{
    h2o_db_session_t *s = session(MARIA);
    struct reader rd;
    reader_init(&rd, s, MARIA);
    rd.pause_at[0] = 1000;
    rd.kill_paused = 1;
    stream(&rd, wide_sql[MARIA], "200000", 60);
    ck_assert_int_eq(rd.killed, 1);
    ck_assert_msg(rd.status == H2O_DB_UNAVAILABLE, "a lost connection ends the stream as UNAVAILABLE, got %d %s", rd.status,
                  rd.sqlstate);
    ck_assert_uint_ge(rd.rows, 1000);
    ck_assert_uint_lt(rd.rows, 200000);
    /* (rows the connector had read before the kill may still have come) */
    struct answer a;
    ok(s, "SELECT 5", NULL, &a);
    reader_init(&rd, s, MARIA);
    stream(&rd, series_sql[MARIA], "2000", 60);
    ck_assert_uint_eq(rd.rows, 2000);
    h2o_db_session_close(s);
}
END_TEST

static void begin_cb(h2o_db_result_t *r, void *data)
{
    on_answer(r, data);
}

START_TEST(a_stream_inside_a_transaction_sees_its_writes)
{
    static const char *const create[NBACKENDS] = {"CREATE TABLE IF NOT EXISTS streamed (id INTEGER PRIMARY KEY)",
                                                  "CREATE TABLE IF NOT EXISTS streamed (id INT PRIMARY KEY) ENGINE=InnoDB"};
    for (int b = 0; b < NBACKENDS; ++b) {
        h2o_db_session_t *s = session(b);
        struct answer a;
        ok(s, create[b], NULL, &a);
        ok(s, "DELETE FROM streamed", NULL, &a);
        memset(&a, 0, sizeof(a));
        ck_assert(h2o_db_begin(s, begin_cb, &a) == 0);
        run_until(&a.done, 30, "BEGIN");
        ck_assert(a.status == H2O_DB_OK);
        for (int i = 1; i <= 3; ++i) {
            char id[8];
            snprintf(id, sizeof(id), "%d", i);
            ok(s, "INSERT INTO streamed (id) VALUES ($1)", id, &a);
        }
        struct reader rd;
        reader_init(&rd, s, b);
        stream(&rd, "SELECT id FROM streamed ORDER BY id", NULL, 30);
        ck_assert_uint_eq(rd.rows, 3);
        ck_assert(rd.status == H2O_DB_OK);
        memset(&a, 0, sizeof(a));
        ck_assert(h2o_db_rollback(s, begin_cb, &a) == 0);
        run_until(&a.done, 30, "ROLLBACK");
        ck_assert(a.status == H2O_DB_OK);
        ok(s, "SELECT count(*) FROM streamed", NULL, &a);
        ck_assert_str_eq(a.first, "0");
        h2o_db_session_close(s);
    }
}
END_TEST

/* ---- measurement (H2O_DB_STREAM_BENCH=1) ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU seconds of the process so far (every thread: the loop and SQLite's workers) */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

START_TEST(measure_speed_and_memory)
{
    const char *n = getenv("H2O_DB_STREAM_BENCH_ROWS") != NULL ? getenv("H2O_DB_STREAM_BENCH_ROWS") : "1000000";
    size_t want = strtoull(n, NULL, 10);
    for (int b = 0; b < NBACKENDS; ++b) {
        h2o_db_session_t *s = session(b);
        /* first the slow consumer (before a buffered result has grown the heap) */
        struct reader rd;
        reader_init(&rd, s, b);
        rd.slow_every = 1000;
        size_t rss0 = rss_kb();
        stream(&rd, series_sql[b], n, 600);
        ck_assert_uint_eq(rd.rows, want);
        size_t rss_slow = rd.max_rss_kb;
        reader_init(&rd, s, b);
        double t0 = now_s(), c0 = cpu_s();
        stream(&rd, series_sql[b], n, 600);
        double streamed = now_s() - t0, streamed_cpu = cpu_s() - c0;
        ck_assert_uint_eq(rd.rows, want);
        struct answer a = {.read_all = 1};
        const char *params[] = {n};
        t0 = now_s();
        c0 = cpu_s();
        ck_assert(h2o_db_query(s, series_sql[b], 1, params, on_answer, &a) == 0);
        run_until(&a.done, 600, "the buffered result");
        double buffered = now_s() - t0, buffered_cpu = cpu_s() - c0;
        ck_assert_uint_eq(a.rows, want);
        ck_assert_uint_eq(a.wrong, 0);
        printf("%s, %zu rows: streamed %.0f rows/s (%.2f s CPU), buffered %.0f rows/s (%.2f s CPU); RSS %zu KB before, "
               "at most %zu KB while a consumer pausing 1 ms every 1000 rows read them, %zu KB with the buffered result\n",
               keys[b], want, want / streamed, streamed_cpu, want / buffered, buffered_cpu, rss0, rss_slow, a.rss_kb);
        fflush(stdout);
        h2o_db_session_close(s);
    }
}
END_TEST

/* ---- set-up: one config for the process, as an embedder makes it ---- */

static int prepare_maria(void)
{
    MYSQL *m = direct(NULL);
    if (m == NULL)
        return -1;
    const char *sql = "DROP DATABASE IF EXISTS " MY_DB ";"
                      "CREATE DATABASE " MY_DB " CHARACTER SET utf8mb4;"
                      "CREATE FUNCTION " MY_DB ".stream_boom(i BIGINT) RETURNS BIGINT DETERMINISTIC BEGIN "
                      "IF i = 5000 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom at 5000'; END IF; RETURN i; END";
    int status = mysql_query(m, sql);
    while (status == 0)
        status = mysql_next_result(m);
    int failed = status > 0;
    if (failed)
        fprintf(stderr, "stream_drivers: %s\n", mysql_error(m));
    mysql_close(m);
    return failed ? -1 : 0;
}

static int configure(void)
{
    if (mysql_url() == NULL) {
        fprintf(stderr, "stream_drivers: no MariaDB (H2O_DB_TEST_MYSQL): run the suite through scripts/test\n");
        return -1;
    }
    if (prepare_maria() != 0)
        return -1;
    /* (no ck_assert here: the tests have not started) */
    const char *base = getenv("H2O_DB_TEST_TMP");
    char dir[4096], err[512], *yaml;
    snprintf(dir, sizeof(dir), "%s/h2o-db-stream-XXXXXX", base != NULL ? base : "/tmp");
    if (mkdtemp(dir) == NULL || asprintf(&yaml,
                                         "db.bind:\n"
                                         "  - url: sqlite:///%s/stream.db\n"
                                         "    key: lite\n"
                                         "    middleware: OFF\n"
                                         "  - url: %s\n"
                                         "    key: maria\n"
                                         "    middleware: OFF\n"
                                         "hosts:\n"
                                         "  default:\n"
                                         "    paths:\n"
                                         "      /: {}\n",
                                         dir, mysql_url()) < 0)
        return -1;
    h2o_config_init(&conf);
    h2o_db_register_configurator(&conf);
    yoml_t *root = h2o_db_yaml_load_string("stream.conf", yaml, strlen(yaml), err, sizeof(err));
    if (root == NULL) {
        fprintf(stderr, "stream_drivers: %s\n", err);
        return -1;
    }
    int ret = h2o_configurator_apply(&conf, root, 0) != 0 || h2o_db_prepare(&conf) != 0 ? -1 : 0;
    yoml_free(root, NULL);
    free(yaml);
    return ret;
}

int main(void)
{
    if (configure() != 0)
        return 1;
    Suite *s = suite_create("stream_drivers");
    TCase *tc = tcase_create("sqlite+mariadb");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, rows_arrive_complete_and_in_order);
    tcase_add_test(tc, a_pause_stops_delivery_until_resume);
    tcase_add_test(tc, a_stop_ends_the_statement_and_the_session_goes_on);
    tcase_add_test(tc, an_error_after_rows_reaches_on_done_after_them);
    tcase_add_test(tc, a_stream_inside_a_transaction_sees_its_writes);
    tcase_add_test(tc, mariadb_killed_mid_stream_ends_it_and_the_session_reconnects);
    if (getenv("H2O_DB_STREAM_BENCH") != NULL)
        tcase_add_test(tc, measure_speed_and_memory);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
