/*
 * The MySQL / MariaDB backend against a real MariaDB (scripts/test starts one: see
 * h2o_db_start_mariadb in scripts/test-servers.sh) and the real h2o-db binary:
 * placeholders, typed JSON, SQLSTATEs, transactions, the pool's cap seen from the
 * server, healing after the server went away (through a forwarder that cuts connections and
 * refuses new ones: the real MariaDB is shared with other suites), the three-backend example,
 * and passwords that never show.
 *
 * Direct checks go through libmariadb as root on the server's unix socket. The suite works in
 * a database of its own (h2o_test_mysql), which it makes afresh.
 */
#include <errno.h>
#include <mysql.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "harness.h"

#define HANDLERS      "@BUILD@/t/db_handlers.so"
#define PASSWORD_PART "s3cr" /* of the test user's password (Zq7:s3cr@t/pw) */

/* This suite's own database on the shared MariaDB (made afresh by main): other suites (test_connect)
 * connect to H2O_DB_TEST_MYSQL's h2o_test as the same user, and the processlist tells them apart by
 * database only. */
#define MY_DB "h2o_test_mysql"

/* H2O_DB_TEST_MYSQL with the database MY_DB; NULL when absent. */
static const char *mysql_url(void)
{
    static char url[1024];
    const char *u = getenv("H2O_DB_TEST_MYSQL");
    if (u == NULL || *u == '\0' || strlen(u) > sizeof(url) - sizeof(MY_DB) - 2)
        return NULL;
    const char *slash = strrchr(u, '/');
    if (slash == NULL)
        return NULL;
    if (url[0] == '\0') {
        const char *query = strchr(slash, '?');
        snprintf(url, sizeof(url), "%.*s/" MY_DB "%s", (int)(slash - u), u, query != NULL ? query : "");
    }
    return url;
}

#define require_mysql() ck_assert_msg(mysql_url() != NULL, "no MariaDB: run the suite through scripts/test")

/* ---- direct access (root on the socket) ---- */

static MYSQL *direct(void)
{
    const char *sock = getenv("H2O_DB_TEST_MYSQL_SOCKET");
    ck_assert_msg(sock != NULL, "H2O_DB_TEST_MYSQL_SOCKET is not set");
    MYSQL *m = mysql_init(NULL);
    ck_assert_msg(mysql_real_connect(m, "localhost", "root", NULL, MY_DB, 0, sock, CLIENT_MULTI_STATEMENTS) != NULL,
                  "cannot connect to MariaDB: %s", mysql_error(m));
    return m;
}

/* Runs sql (several statements allowed); returns the first value of the last result set, malloc'd, or NULL. */
static char *my(const char *sql)
{
    MYSQL *m = direct();
    char *value = NULL;
    ck_assert_msg(mysql_query(m, sql) == 0, "%s: %s", sql, mysql_error(m));
    int status;
    do {
        MYSQL_RES *res = mysql_store_result(m);
        if (res != NULL) {
            MYSQL_ROW row = mysql_fetch_row(res);
            if (row != NULL && row[0] != NULL) {
                free(value);
                value = strdup(row[0]);
            }
            mysql_free_result(res);
        }
        status = mysql_next_result(m);
        ck_assert_msg(status <= 0, "%s: %s", sql, mysql_error(m));
    } while (status == 0);
    mysql_close(m);
    return value;
}

static long my_count(const char *sql)
{
    char *v = my(sql);
    long n = v != NULL ? strtol(v, NULL, 10) : -1;
    free(v);
    return n;
}

/* Open transactions of the server's connections (user h2o) that changed something, seen by
 * InnoDB. INFORMATION_SCHEMA.INNODB_TRX is a snapshot that InnoDB refreshes only when it was last
 * read more than 100 ms ago: polled faster (th_wait_until polls every 20 ms), it would show the
 * same open transaction for ever. So this reads it at most every 250 ms (waiting in between), and
 * also asks for the uncommitted row itself under READ UNCOMMITTED, which is never cached. */
static int no_open_h2o_transaction(void *arg)
{
    static double last_read;
    double since = th_now_ms() - last_read;
    if (since < 250)
        usleep((useconds_t)((250 - since) * 1000));
    last_read = th_now_ms();
    const char *row = arg;
    if (row != NULL) {
        char sql[256];
        snprintf(sql, sizeof(sql), "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; %s", row);
        if (my_count(sql) != 0)
            return 0;
    }
    return my_count("SELECT COUNT(*) FROM information_schema.innodb_trx t JOIN information_schema.processlist p "
                    "ON p.id = t.trx_mysql_thread_id WHERE p.user = 'h2o' AND p.db = '" MY_DB "'") == 0;
}

/* ---- a MariaDB that goes away and comes back ---- */

/* The MariaDB of scripts/test is shared with other suites (test_connect): stopping it would fail
 * them. A forwarder (th_forwarder_t, harness.h) on a loopback port of its own stands in for the
 * server: down cuts every connection through it and refuses new ones (what clients see of a
 * restart), up accepts again. */

/* ---- the server ---- */

/* Replaces every `from` in text by `to`; malloc'd. */
static char *replace(const char *text, const char *from, const char *to)
{
    size_t n = 0, flen = strlen(from), tlen = strlen(to);
    for (const char *p = text; (p = strstr(p, from)) != NULL; p += flen)
        ++n;
    char *out = malloc(strlen(text) + n * (tlen + 1) + 1), *dst = out;
    for (const char *p = text;;) {
        const char *hit = strstr(p, from);
        if (hit == NULL) {
            strcpy(dst, p);
            break;
        }
        memcpy(dst, p, hit - p);
        dst += hit - p;
        memcpy(dst, to, tlen);
        dst += tlen;
        p = hit + flen;
    }
    return out;
}

/* @MYSQL@ (the test database's URL) and @MYSQL_SOCKET@, then the harness's placeholders. */
static char *conf_of(const char *templ)
{
    char *a = replace(templ, "@MYSQL@", mysql_url()), *b = replace(a, "@MYSQL_SOCKET@", getenv("H2O_DB_TEST_MYSQL_SOCKET"));
    free(a);
    return b;
}

static th_server_t server;

static void start(const char *templ)
{
    char *conf = conf_of(templ);
    int ret = th_server_start(&server, conf);
    free(conf);
    ck_assert_msg(ret == 0, "server did not start: %s", th_server_log(&server));
}

static void stop(void)
{
    int status = th_server_stop(&server, 15000);
    char *log = th_server_log(&server);
    ck_assert_msg(status == 0, "exit status %d; log: %s", status, log);
    ck_assert_msg(strstr(log, PASSWORD_PART) == NULL, "the log shows the password: %s", log);
    free(log);
}

/* POSTs a db_script body to PATH; returns the response (free it). */
static th_response_t script_at(const char *path, const char *body)
{
    th_response_t res;
    char *url = th_url(&server, path);
    ck_assert_msg(th_http(&res, TH_HTTP1, "POST", url, body) == 0, "POST %s failed (curl %d)", path, res.curl_error);
    free(url);
    return res;
}

static th_response_t script(const char *body)
{
    return script_at("/script", body);
}

/* The same for other threads, which may not use ck_assert (Check's failures jump to the main
 * thread's stack): the caller checks res.curl_error and res.status. */
static th_response_t script_in_thread(const char *body)
{
    th_response_t res;
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/script", server.port);
    th_http(&res, TH_HTTP1, "POST", url, body);
    return res;
}

/* Asserts the response is 200 and holds `expect`. */
#define assert_has(res, expect)                                                                                                    \
    do {                                                                                                                           \
        ck_assert_msg((res).status == 200, "status %ld: %s", (res).status, (res).body);                                            \
        ck_assert_msg(strstr((res).body, (expect)) != NULL, "expected %s in %s", (expect), (res).body);                            \
    } while (0)

static const char *CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                          "num-threads: 2\n"
                          "db.bind:\n"
                          "  url: @MYSQL@\n"
                          "  pool: {max: 4}\n"
                          "hosts:\n"
                          "  default:\n"
                          "    paths:\n"
                          "      /script:\n"
                          "        c.handler: " HANDLERS ":db_script\n"
                          "      /status:\n"
                          "        db.status: ON\n";

/* ---- tests ---- */

START_TEST(parameters_in_any_order_reused_and_never_inside_quotes)
{
    require_mysql();
    start(CONF);
    th_response_t res = script("SQL SELECT $2 AS a, $1 AS b, $2 AS c\nP x\nP y\n");
    assert_has(res, "\"rows\":[{\"a\":\"y\",\"b\":\"x\",\"c\":\"y\"}]");
    th_response_free(&res);

    /* $1 in literals, quoted names and comments is text; a$1 is a name; LIMIT takes a parameter */
    res = script("SQL DROP TABLE IF EXISTS params\n"
                 "SQL CREATE TABLE params (id INT PRIMARY KEY, `we$1rd` VARCHAR(20), name VARCHAR(20))\n"
                 "SQL INSERT INTO params (name, id, `we$1rd`) VALUES ($3, $1, '$2') -- $4\n"
                 "P 7\nP unused\nP seven\n"
                 "SQL SELECT id, `we$1rd` AS w, name, '$1' AS lit, \"$2\" AS dq /* $3 */ FROM params WHERE id = $1 # $9\nP 7\n"
                 "SQL SELECT name FROM params WHERE name = $1 OR name = $1 LIMIT $2\nP seven\nP 5\n");
    assert_has(res, "{\"id\":7,\"w\":\"$2\",\"name\":\"seven\",\"lit\":\"$1\",\"dq\":\"$2\"}");
    assert_has(res, "[{\"name\":\"seven\"}]");
    th_response_free(&res);

    /* NULL and empty parameters; a missing one; MySQL's ? is refused */
    res = script("CONTINUE\nSQL SELECT $1 IS NULL AS n, $2 AS e\nPNULL\nP\nSQL SELECT $3 AS x\nP 1\nSQL SELECT ? AS q\n");
    assert_has(res, "{\"n\":1,\"e\":\"\"}");
    assert_has(res, "{\"status\":\"SQL_ERROR\",\"sqlstate\":\"42P02\",\"error\":\"there is no parameter $3\"}");
    assert_has(res, "\"sqlstate\":\"42601\"");
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(results_are_typed_as_on_postgresql)
{
    require_mysql();
    start(CONF);
    th_response_t res =
        script("SQL DROP TABLE IF EXISTS typed\n"
               "SQL CREATE TABLE typed (id INT PRIMARY KEY, name VARCHAR(20), flag BOOLEAN, f FLOAT, d DOUBLE, n DECIMAL(10,2), "
               "bin VARBINARY(8), bl BLOB, j JSON, dt DATETIME(3), tm TIME, dd DATE, u BIGINT UNSIGNED, bits BIT(5), "
               "e ENUM('a','b'), nul INT, quote TEXT)\n"
               "SQL INSERT INTO typed VALUES (1, 'alice', TRUE, 1.1, 2.5, 3.25, x'00ff', x'0102', '{\"a\": [1, 2]}', "
               "'2024-01-02 03:04:05.5', '-25:00:01', '2024-02-03', 18446744073709551615, b'101', 'b', NULL, 'say \"hi\"\\\\')\n"
               "SQL SELECT * FROM typed\n"
               "SQL SELECT COUNT(*) AS c, SUM(n) AS s, AVG(d) AS a, 1e100 AS big FROM typed\n");
    assert_has(res, "[{\"id\":1,\"name\":\"alice\",\"flag\":true,\"f\":1.1,\"d\":2.5,\"n\":3.25,\"bin\":\"\\\\x00ff\","
                    "\"bl\":\"\\\\x0102\",\"j\":{\"a\": [1, 2]},\"dt\":\"2024-01-02 03:04:05.5\",\"tm\":\"-25:00:01\","
                    "\"dd\":\"2024-02-03\",\"u\":18446744073709551615,\"bits\":5,\"e\":\"b\",\"nul\":null,"
                    "\"quote\":\"say \\\"hi\\\"\\\\\"}]");
    assert_has(res, "[{\"c\":1,\"s\":3.25,\"a\":2.5,\"big\":1e+100}]");
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(affected_rows_count_matched_rows)
{
    require_mysql();
    start(CONF);
    th_response_t res = script("SQL DROP TABLE IF EXISTS affected\n"
                               "SQL CREATE TABLE affected (id INT PRIMARY KEY, v INT)\n"
                               "SQL INSERT INTO affected VALUES (1, 0), (2, 0), (3, 5)\n"
                               "SQL UPDATE affected SET v = 5 WHERE id <= $1\nP 3\n"
                               "SQL DELETE FROM affected WHERE id = $1\nP 99\n");
    /* as PostgreSQL: UPDATE reports the rows it matched (3), even the one already 5 */
    assert_has(res, "{\"status\":\"OK\",\"affected\":3,\"rows\":[]},{\"status\":\"OK\",\"affected\":3,\"rows\":[]},"
                    "{\"status\":\"OK\",\"affected\":0,\"rows\":[]}");
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(unique_violation_reaches_the_handler_as_23000)
{
    require_mysql();
    start(CONF);
    th_response_t res = script("SQL DROP TABLE IF EXISTS uniq\nSQL CREATE TABLE uniq (id INT PRIMARY KEY)\n"
                               "SQL INSERT INTO uniq VALUES ($1)\nP 1\nSQL INSERT INTO uniq VALUES ($1)\nP 1\n");
    assert_has(res, "{\"status\":\"SQL_ERROR\",\"sqlstate\":\"23000\",\"error\":\"Duplicate entry '1' for key 'PRIMARY'\"}");
    th_response_free(&res);
    /* h2o_db_send_error: 500, and the connection is fine afterwards */
    res = script("SENDERROR\nSQL INSERT INTO uniq VALUES ($1)\nP 1\n");
    ck_assert_int_eq(res.status, 500);
    char *state = th_header(&res, "x-sqlstate");
    ck_assert_ptr_nonnull(state);
    ck_assert_str_eq(state, "23000");
    free(state);
    th_response_free(&res);
    res = script("ALL\nSQL SELECT 1 AS one\nSQL SELECT nosuch\nSQL SELECT 3 AS three\n");
    /* statements of one session answer in order, an error between them */
    assert_has(res, "[{\"status\":\"OK\",\"affected\":1,\"rows\":[{\"one\":1}]},{\"status\":\"SQL_ERROR\",\"sqlstate\":\"42S22\"");
    assert_has(res, "{\"status\":\"OK\",\"affected\":1,\"rows\":[{\"three\":3}]}]");
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(transactions_commit_roll_back_and_end_with_the_request)
{
    require_mysql();
    start(CONF);
    th_response_t res = script("SQL DROP TABLE IF EXISTS txn\nSQL CREATE TABLE txn (id INT PRIMARY KEY) ENGINE=InnoDB\n");
    th_response_free(&res);

    res = script("BEGIN\nSQL INSERT INTO txn VALUES ($1)\nP 1\nSQL SELECT COUNT(*) AS n FROM txn\nCOMMIT\n");
    assert_has(res, "[{\"n\":1}]");
    th_response_free(&res);
    ck_assert_int_eq(my_count("SELECT COUNT(*) FROM txn WHERE id = 1"), 1);

    res = script("BEGIN\nSQL INSERT INTO txn VALUES ($1)\nP 2\nROLLBACK\n");
    ck_assert_int_eq(res.status, 200);
    th_response_free(&res);
    ck_assert_int_eq(my_count("SELECT COUNT(*) FROM txn WHERE id = 2"), 0);

    /* the request ends inside the transaction: rolled back, the connection goes back clean */
    res = script("BEGIN\nSQL INSERT INTO txn VALUES ($1)\nP 3\nRETURN\n");
    ck_assert_int_eq(res.status, 200);
    th_response_free(&res);
    if (!th_wait_until(no_open_h2o_transaction, "SELECT COUNT(*) FROM txn WHERE id = 3", 10000)) {
        char *trx = my("SELECT GROUP_CONCAT(CONCAT_WS(' ', p.id, p.command, p.time, p.state, p.info, t.trx_state, t.trx_started, "
                       "t.trx_query, t.trx_rows_modified) SEPARATOR ' | ') FROM information_schema.innodb_trx t JOIN "
                       "information_schema.processlist p ON p.id = t.trx_mysql_thread_id WHERE p.user = 'h2o'"),
             *log = th_server_log(&server);
        fprintf(stderr, "open transactions: %s\nserver log:\n%s\n", trx != NULL ? trx : "-", log);
        ck_abort_msg("the request's transaction stayed open after it ended");
    }
    ck_assert_int_eq(my_count("SELECT COUNT(*) FROM txn WHERE id = 3"), 0);

    /* a failed statement fails the transaction: COMMIT is refused once that is known, and rolls
     * back and says so when it was issued before (pipelined) */
    res = script("CONTINUE\nBEGIN\nSQL INSERT INTO txn VALUES ($1)\nP 4\nSQL INSERT INTO txn VALUES ($1)\nP 1\nCOMMIT\nROLLBACK\n");
    assert_has(res, "\"sqlstate\":\"23000\"");
    assert_has(res, "{\"status\":\"REFUSED\"},{\"status\":\"OK\"");
    th_response_free(&res);
    res = script("ALL\nCONTINUE\nBEGIN\nSQL INSERT INTO txn VALUES ($1)\nP 5\nSQL INSERT INTO txn VALUES ($1)\nP 1\nCOMMIT\n");
    assert_has(res, "\"sqlstate\":\"23000\"");
    assert_has(res, "\"sqlstate\":\"25P02\"");
    th_response_free(&res);
    ck_assert_int_eq(my_count("SELECT COUNT(*) FROM txn WHERE id IN (4, 5)"), 0);

    /* and every connection is usable afterwards (no transaction left open on any) */
    for (int i = 0; i < 8; ++i) {
        res = script("SQL SELECT @@in_transaction AS t\n");
        assert_has(res, "[{\"t\":0}]");
        th_response_free(&res);
    }
    stop();
}
END_TEST

START_TEST(a_request_that_ends_mid_statement_kills_its_query)
{
    require_mysql();
    start("listen: {host: 127.0.0.1, port: @PORT@}\n"
          "num-threads: 1\n"
          "db.bind:\n"
          "  url: @MYSQL@\n"
          "  pool: {max: 1, acquire-timeout: 15}\n"
          "hosts:\n"
          "  default:\n"
          "    paths:\n"
          "      /script:\n"
          "        c.handler: " HANDLERS ":db_script\n");
    /* the request answers (and ends) while its transaction's SLEEP(30) runs */
    th_response_t res = script("ALL\nBEGIN\nSQL SELECT SLEEP(30) AS s\nRETURN\n");
    ck_assert_int_eq(res.status, 200);
    th_response_free(&res);
    /* KILL QUERY stops it and the rollback follows: the only connection serves the next request,
     * which otherwise would wait for it (30 s) longer than its acquire-timeout (15 s) and fail */
    res = script("SQL SELECT @@in_transaction AS t\n");
    assert_has(res, "[{\"t\":0}]");
    th_response_free(&res);
    stop();
}
END_TEST

struct call {
    const char *body;
    th_response_t res;
    int *finished;
};

static void *post_script(void *arg)
{
    struct call *c = arg;
    c->res = script_in_thread(c->body);
    __atomic_add_fetch(c->finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

static long count_h2o_connections(void)
{
    return my_count("SELECT COUNT(*) FROM information_schema.processlist WHERE user = 'h2o' AND db = '" MY_DB "'");
}

static int no_h2o_connections(void *arg)
{
    return count_h2o_connections() == 0;
}

START_TEST(pool_max_is_a_hard_cap_seen_in_the_processlist)
{
    require_mysql();
    /* the servers of earlier tests said goodbye */
    ck_assert_msg(th_wait_until(no_h2o_connections, NULL, 10000), "%ld connections left over", count_h2o_connections());
    start("listen: {host: 127.0.0.1, port: @PORT@}\n"
          "num-threads: 2\n"
          "db.bind:\n"
          "  url: @MYSQL@\n"
          "  pool: {max: 3, acquire-timeout: 20}\n"
          "hosts:\n"
          "  default:\n"
          "    paths:\n"
          "      /script:\n"
          "        c.handler: " HANDLERS ":db_script\n");
    enum { N = 20 };
    struct call calls[N];
    pthread_t tids[N];
    int finished = 0;
    for (int i = 0; i < N; ++i) {
        calls[i].body = "BEGIN\nSQL SELECT CONNECTION_ID() AS id\nSLEEP 300\nSQL SELECT 1 AS one\nCOMMIT\n";
        calls[i].finished = &finished;
        pthread_create(tids + i, NULL, post_script, calls + i);
    }
    /* watched while the requests run, until every one was answered (a hang guard of 60 s) */
    long max_seen = 0;
    double deadline = th_now_ms() + 60000 * th_time_factor();
    while (__atomic_load_n(&finished, __ATOMIC_ACQUIRE) < N && th_now_ms() < deadline) {
        long n = count_h2o_connections();
        if (n > max_seen)
            max_seen = n;
        usleep(20000);
    }
    long n = count_h2o_connections();
    if (n > max_seen)
        max_seen = n;
    for (int i = 0; i < N; ++i) {
        pthread_join(tids[i], NULL);
        assert_has(calls[i].res, "[{\"one\":1}]");
        th_response_free(&calls[i].res);
    }
    /* 2 threads × max 3 */
    ck_assert_msg(max_seen >= 2 && max_seen <= 6, "%ld connections seen at once", max_seen);
    ck_assert_int_le(count_h2o_connections(), 6);
    stop();
    /* and closed at shutdown */
    ck_assert_msg(th_wait_until(no_h2o_connections, NULL, 10000), "%ld connections left after the server stopped",
                  count_h2o_connections());
}
END_TEST

/* A loader posts SELECT 1 in a loop; the main thread reads its counters (atomically) to know what
 * it went through. */
struct load {
    int stop;
    long ok, failed, other; /* other: neither an answer nor UNAVAILABLE (a hang, a 500, ...) */
    long ok_since_failure;  /* answers since its last failure */
};

#define LOAD_GET(l, field) __atomic_load_n(&(l)->field, __ATOMIC_ACQUIRE)

static void *load_loop(void *arg)
{
    struct load *l = arg;
    while (!LOAD_GET(l, stop)) {
        th_response_t res = script_in_thread("SQL SELECT 1 AS one\n");
        int ok = res.curl_error == 0 && res.status == 200 && strstr(res.body, "[{\"one\":1}]") != NULL;
        if (ok) {
            __atomic_add_fetch(&l->ok, 1, __ATOMIC_RELEASE);
            __atomic_add_fetch(&l->ok_since_failure, 1, __ATOMIC_RELEASE);
        } else {
            if (res.curl_error != 0 || strstr(res.body, "\"status\":\"UNAVAILABLE\"") == NULL)
                __atomic_add_fetch(&l->other, 1, __ATOMIC_RELEASE);
            __atomic_store_n(&l->ok_since_failure, 0, __ATOMIC_RELEASE);
            __atomic_add_fetch(&l->failed, 1, __ATOMIC_RELEASE);
            usleep(5000); /* pacing: the failures come fast */
        }
        th_response_free(&res);
    }
    return NULL;
}

enum { LOADERS = 4 };

/* every loader has been answered (phase 0), has failed (1), has been answered since its last failure (2) */
struct load_phase {
    struct load *loads;
    int phase;
};

static int loaders_reached(void *arg)
{
    struct load_phase *p = arg;
    for (int i = 0; i < LOADERS; ++i) {
        struct load *l = p->loads + i;
        if ((p->phase == 0 && LOAD_GET(l, ok) == 0) || (p->phase == 1 && LOAD_GET(l, failed) == 0) ||
            (p->phase == 2 && (LOAD_GET(l, failed) == 0 || LOAD_GET(l, ok_since_failure) == 0)))
            return 0;
    }
    return 1;
}

/* mysql_url() through the forwarder f: the same with its port */
static char *forwarded_url(th_forwarder_t *f)
{
    const char *u = mysql_url(), *at = strstr(u, "@127.0.0.1:");
    ck_assert_msg(at != NULL, "no @127.0.0.1:PORT in the MariaDB URL");
    const char *rest = at + strlen("@127.0.0.1:");
    rest += strspn(rest, "0123456789");
    return th_fmt("%.*s@127.0.0.1:%d%s", (int)(at - u), u, th_forwarder_port(f), rest);
}

START_TEST(a_server_restart_under_load_heals)
{
    require_mysql();
    const char *u = strstr(mysql_url(), "@127.0.0.1:");
    ck_assert_msg(u != NULL, "no @127.0.0.1:PORT in the MariaDB URL");
    th_forwarder_t *f = th_forwarder_new(atoi(u + strlen("@127.0.0.1:")));
    th_forwarder_up(f, TH_FWD_RELAY);
    char *through = forwarded_url(f), *conf = replace(CONF, "@MYSQL@", through);
    start(conf);
    free(conf);
    free(through);
    struct load loads[LOADERS] = {{0}};
    pthread_t tids[LOADERS];
    for (int i = 0; i < LOADERS; ++i)
        pthread_create(tids + i, NULL, load_loop, loads + i);
    /* facts, not time: every loader is served; the database goes away (connections cut, connects
     * refused); every loader noticed; it is back; every loader is served again (the contract says
     * within about a second: 20 s is a hang guard) */
    struct load_phase served = {loads, 0}, noticed = {loads, 1}, healed = {loads, 2};
    int ok_before = th_wait_until(loaders_reached, &served, 10000), ok_noticed = 0, ok_healed = 0;
    if (ok_before) {
        th_forwarder_down(f);
        ok_noticed = th_wait_until(loaders_reached, &noticed, 10000);
        th_forwarder_up(f, TH_FWD_RELAY);
        ok_healed = ok_noticed && th_wait_until(loaders_reached, &healed, 20000);
    }
    for (int i = 0; i < LOADERS; ++i) {
        __atomic_store_n(&loads[i].stop, 1, __ATOMIC_RELEASE);
        pthread_join(tids[i], NULL);
    }
    ck_assert_msg(ok_before, "the loaders were not served before the restart");
    ck_assert_msg(ok_noticed, "the database going away went unnoticed by a loader");
    for (int i = 0; i < LOADERS; ++i) {
        ck_assert_msg(ok_healed && loads[i].failed > 0 && loads[i].ok_since_failure > 0,
                      "loader %d: %ld failures, %ld answers since the last one: never recovered", i, loads[i].failed,
                      loads[i].ok_since_failure);
        ck_assert_msg(loads[i].other == 0, "loader %d: %ld failures were not UNAVAILABLE", i, loads[i].other);
    }
    /* the pool counted it, and the log says what happened without the password */
    th_response_t res;
    char *url = th_url(&server, "/status");
    ck_assert(th_http(&res, TH_HTTP1, NULL, url, NULL) == 0);
    free(url);
    ck_assert_msg(strstr(res.body, "\"backend\":\"mysql\"") != NULL, "%s", res.body);
    ck_assert_msg(strstr(res.body, "\"closed_broken\":0,\"closed_idle\"") == NULL || strstr(res.body, "\"reconnects\":1") != NULL,
                  "%s", res.body);
    ck_assert_msg(strstr(res.body, PASSWORD_PART) == NULL, "%s", res.body);
    th_response_free(&res);
    stop();
    th_forwarder_free(f);
}
END_TEST

START_TEST(on_connect_schema_socket_and_statement_cache_off)
{
    require_mysql();
    char *dir = th_tmpdir();
    free(th_write_file(dir, "schema.sql",
                       "DROP TABLE IF EXISTS schema_made;\n"
                       "CREATE TABLE schema_made (id INT PRIMARY KEY, note VARCHAR(20));\n"
                       "INSERT INTO schema_made VALUES (1, 'from schema');\n",
                       0));
    char *sock_url = replace(mysql_url(), "@127.0.0.1", "@localhost"), *q = strchr(sock_url, '?');
    if (q != NULL)
        *q = '\0';
    /* mysql://h2o:...@localhost:PORT/h2o_test_mysql?unix_socket=... (the port is ignored on a socket) */
    char *templ;
    ck_assert(asprintf(&templ,
                       "listen: {host: 127.0.0.1, port: @PORT@}\n"
                       "num-threads: 1\n"
                       "db.bind:\n"
                       "  - url: @MYSQL@\n"
                       "    schema: schema.sql\n"
                       "    on-connect: SET @greeting = 'hello'; SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')\n"
                       "    pool: {statement-cache: 0, statement-timeout: 1}\n"
                       "  - url: %s?unix_socket=@MYSQL_SOCKET@&charset=utf8mb4\n"
                       "    key: sa_socket\n"
                       "hosts:\n"
                       "  default:\n"
                       "    paths:\n"
                       "      /script:\n"
                       "        c.handler: " HANDLERS ":db_script\n"
                       "      /status:\n"
                       "        db.status: ON\n",
                       sock_url) > 0);
    char *conf = conf_of(templ);
    ck_assert_msg(th_server_start_in(&server, dir, conf) == 0, "server did not start: %s", th_server_log(&server));
    free(conf);
    free(templ);
    free(sock_url);
    free(dir);
    for (int i = 0; i < 3; ++i) {
        th_response_t res = script("SQL SELECT note, @greeting AS g, \"id\" AS quoted FROM schema_made WHERE id = $1\nP 1\n"
                                   "KEY sa_socket\nSQL SELECT @@socket IS NOT NULL AS s, USER() AS u\n");
        assert_has(res, "[{\"note\":\"from schema\",\"g\":\"hello\",\"quoted\":1}]");
        assert_has(res, "\"u\":\"h2o@localhost\"");
        th_response_free(&res);
    }
    /* statement-timeout: answered TIMEOUT (504 with SENDERROR), and the connection goes on (the
     * statement would take 20 times the 1 s timeout) */
    th_response_t res = script("CONTINUE\nSQL SELECT SLEEP(20) AS s\nSQL SELECT 2 AS two\n");
    assert_has(res, "\"status\":\"TIMEOUT\",\"sqlstate\":\"57014\"");
    assert_has(res, "[{\"two\":2}]");
    th_response_free(&res);
    char *url = th_url(&server, "/status");
    ck_assert(th_http(&res, TH_HTTP1, NULL, url, NULL) == 0);
    free(url);
    ck_assert_msg(strstr(res.body, "\"cache_hits\":0,") != NULL, "%s", res.body);
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(the_three_backend_example_answers_on_all_three_keys_in_one_request)
{
    require_mysql();
    th_require_pg();
    char *path, *text = NULL;
    ck_assert(asprintf(&path, "%s/../conf.d/three-backends.conf", th_build_dir()) > 0);
    FILE *fp = fopen(path, "r");
    ck_assert_msg(fp != NULL, "%s: %s", path, strerror(errno));
    size_t cap = 0;
    ck_assert(getdelim(&text, &cap, '\0', fp) > 0);
    fclose(fp);
    free(path);
    /* the example's URLs, port and handler path become the test's (its MySQL URL keeps +aiomysql) */
    const char *my = mysql_url();
    char *aiomysql;
    ck_assert(asprintf(&aiomysql, "mysql+aiomysql://%s", strstr(my, "://") + 3) > 0);
    const char *from[] = {"postgresql://app@127.0.0.1/app", "mysql+aiomysql://app:secret@127.0.0.1:3306/app", "port: 8080",
                          "../build/"};
    const char *to[] = {"@PG@", aiomysql, "port: @PORT@", "@BUILD@/"};
    for (size_t i = 0; i < 4; ++i) {
        ck_assert_msg(strstr(text, from[i]) != NULL, "conf.d/three-backends.conf no longer holds `%s`", from[i]);
        char *t = replace(text, from[i], to[i]);
        free(text);
        text = t;
    }
    free(aiomysql);
    start(text);
    free(text);
    th_response_t res = script("SQL SELECT 'postgresql' AS backend, $1::int AS n\nP 1\n"
                               "KEY sa_second\nSQL SELECT 'mysql' AS backend, VERSION() LIKE '%MariaDB%' AS maria\n"
                               "KEY sa_third\nSQL SELECT 'sqlite' AS backend, sqlite_version() IS NOT NULL AS v\n");
    assert_has(res, "[{\"backend\":\"postgresql\",\"n\":1}]");
    assert_has(res, "[{\"backend\":\"mysql\",\"maria\":1}]");
    assert_has(res, "[{\"backend\":\"sqlite\",\"v\":1}]");
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(passwords_never_show)
{
    require_mysql();
    char *conf = conf_of(CONF), *out;
    ck_assert_int_eq(th_run_h2o_db("-t", conf, &out), 0);
    ck_assert_msg(strstr(out, "h2o:***@") != NULL && strstr(out, PASSWORD_PART) == NULL, "%s", out);
    free(out);
    ck_assert_int_eq(th_run_h2o_db("-t --connect", conf, &out), 0);
    ck_assert_msg(strstr(out, "connected") != NULL && strstr(out, PASSWORD_PART) == NULL, "%s", out);
    free(out);
    free(conf);

    /* a wrong password: the error names the user, never the password */
    char *bad = replace(CONF, "@MYSQL@", "@MYSQL@X");
    char *wrong = replace(mysql_url(), "%2Fpw@", "%2FpwX@"), *bad2 = replace(bad, "@MYSQL@X", wrong);
    free(bad);
    free(wrong);
    conf = conf_of(bad2);
    free(bad2);
    ck_assert_int_eq(th_run_h2o_db("-t --connect", conf, &out), 1);
    ck_assert_msg(strstr(out, "Access denied") != NULL && strstr(out, PASSWORD_PART) == NULL, "%s", out);
    free(out);
    /* the running server says the same in its log (stop() checks it holds no password) */
    start(conf);
    free(conf);
    th_response_t res = script("SQL SELECT 1\n");
    assert_has(res, "\"status\":\"UNAVAILABLE\"");
    ck_assert_msg(strstr(res.body, PASSWORD_PART) == NULL, "%s", res.body);
    th_response_free(&res);
    stop();

    /* URL errors never echo it either */
    const char *bad_urls[] = {
        "mysql://h2o:Zq7s3cr@127.0.0.1/h2o_test?nosuch=1",
        "mysql://h2o:Zq7s3cr@127.0.0.1:99999/h2o_test",
        "mysql://h2o:Zq7s3cr%zz@127.0.0.1/h2o_test",
        "mysql://h2o@127.0.0.1/h2o_test?password=Zq7s3cr",
        "mysql://h2o:Zq7s3cr@127.0.0.1/h2o_test?ssl=maybe",
        "mysql://h2o:Zq7s3cr@127.0.0.1/h2o_test?a:Zq7s3cr@b=1",
        "mysql://h2o:Zq7s3cr@127.0.0.1/h2o_test?ssl=Zq7s3cr@x",
        "mysql://h2o:Zq7/s3cr@127.0.0.1/h2o_test?s3cr=1",
    };
    /* (a name or value that is not a plain word is not repeated, nor any when the password holds
     * a / ? or #: another reading of the URL may hold a password there) */
    const char *expect[] = {
        "unknown MySQL URL parameter `nosuch`",    "the port in the MySQL URL",         "malformed %-escape",
        "put the password in the URL's user part", "ssl=maybe: expected true or false", "unknown MySQL URL parameter `…`",
        "ssl=…: expected true or false",           "unknown MySQL URL parameter `…`"};
    for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); ++i) {
        char *c;
        ck_assert(
            asprintf(&c, "listen: 8080\ndb.bind:\n  url: \"%s\"\nhosts:\n  default:\n    paths:\n      /:\n        db.status: ON\n",
                     bad_urls[i]) > 0);
        ck_assert_int_eq(th_run_h2o_db("-t", c, &out), 1);
        ck_assert_msg(strstr(out, expect[i]) != NULL, "%s: expected `%s` in %s", bad_urls[i], expect[i], out);
        ck_assert_msg(strstr(out, "s3cr") == NULL, "%s", out);
        free(out);
        free(c);
    }
}
END_TEST

START_TEST(every_mysql_url_form_parses)
{
    const char *good[] = {
        "mysql://u:p@h/db",
        "mariadb://u@127.0.0.1:3307/db",
        "mysql+aiomysql://u:p@localhost/db?charset=utf8mb4",
        "mysql+pymysql://u:p@[::1]:3306/db",
        "mysql+mysqldb://u:p%40x@h/db?unix_socket=/run/mysqld/mysqld.sock",
        "mysql+asyncmy://u:p@h/db?ssl_ca=ca.pem&ssl_cert=c.pem&ssl_key=k.pem&ssl_verify_cert=false",
        "mysql://u:p@h/db?ssl=true&connect_timeout=3&ssl_mode=REQUIRED",
        "mysql://h",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); ++i) {
        char *c, *out;
        ck_assert(
            asprintf(&c, "listen: 8080\ndb.bind:\n  url: \"%s\"\nhosts:\n  default:\n    paths:\n      /:\n        db.status: ON\n",
                     good[i]) > 0);
        ck_assert_msg(th_run_h2o_db("-t", c, &out) == 0, "%s: %s", good[i], out);
        free(out);
        free(c);
    }
}
END_TEST

/* Makes MY_DB afresh (as root, on the socket); 0 when done or when there is no MariaDB to use. */
static int own_database(void)
{
    const char *sock = getenv("H2O_DB_TEST_MYSQL_SOCKET");
    if (mysql_url() == NULL || sock == NULL)
        return 0;
    MYSQL *m = mysql_init(NULL);
    int ok = mysql_real_connect(m, "localhost", "root", NULL, NULL, 0, sock, 0) != NULL &&
             mysql_query(m, "DROP DATABASE IF EXISTS " MY_DB) == 0 &&
             mysql_query(m, "CREATE DATABASE " MY_DB " CHARACTER SET utf8mb4") == 0;
    if (!ok)
        fprintf(stderr, "mysql: cannot make the database " MY_DB ": %s\n", mysql_error(m));
    mysql_close(m);
    return ok ? 0 : -1;
}

int main(void)
{
    if (own_database() != 0)
        return 1;
    Suite *s = suite_create("mysql");
    TCase *tc = tcase_create("mariadb");
    tcase_set_timeout(tc, 90);
    /* H2O_DB_TEST_ONLY=part-of-a-name runs only the tests whose name holds it */
    const char *only = getenv("H2O_DB_TEST_ONLY");
#undef tcase_add_test
#define tcase_add_test(tc, fn)                                                                                                     \
    do {                                                                                                                           \
        if (only == NULL || strstr(#fn, only) != NULL)                                                                             \
            _tcase_add_test((tc), fn, 0, 0, 0, 1);                                                                                 \
    } while (0)
    tcase_add_test(tc, parameters_in_any_order_reused_and_never_inside_quotes);
    tcase_add_test(tc, results_are_typed_as_on_postgresql);
    tcase_add_test(tc, affected_rows_count_matched_rows);
    tcase_add_test(tc, unique_violation_reaches_the_handler_as_23000);
    tcase_add_test(tc, transactions_commit_roll_back_and_end_with_the_request);
    tcase_add_test(tc, a_request_that_ends_mid_statement_kills_its_query);
    tcase_add_test(tc, pool_max_is_a_hard_cap_seen_in_the_processlist);
    tcase_add_test(tc, a_server_restart_under_load_heals);
    tcase_add_test(tc, on_connect_schema_socket_and_statement_cache_off);
    tcase_add_test(tc, the_three_backend_example_answers_on_all_three_keys_in_one_request);
    tcase_add_test(tc, passwords_never_show);
    tcase_add_test(tc, every_mysql_url_form_parses);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
