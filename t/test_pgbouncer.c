/*
 * h2o-db behind PgBouncer in transaction pooling mode (docs/pgbouncer.md): the PgBouncer that
 * scripts/test starts in front of the shared cluster (H2O_DB_TEST_PGBOUNCER; 2 server
 * connections per database), the real h2o-db binary over HTTP/1.1 and HTTP/2.
 *
 * With pool.statement-cache: 0: autocommit statements (pipelined, answers never mixed up),
 * transactions, a failed one, the rollback at request end and a client that leaves while its
 * statement runs, both leaving PgBouncer's server connections free for the next; many clients
 * at once (wrk); statement-timeout still answers in time. With the cache on: the error PgBouncer's pooling causes, forced by
 * holding the server connections in turn, says what to do, and is logged once.
 *
 * Facts: PgBouncer's admin console (SHOW POOLS: server connections active, clients waiting),
 * pg_stat_activity by application_name, the rows in the table, the server's log.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "db_util.h"

#define WAIT_MS 10000

static th_server_t server;
static char *table; /* this test's own */

static void setup(void)
{
    th_require_pg();
    ck_assert_msg(getenv("H2O_DB_TEST_PGBOUNCER_PORT") != NULL, "no PgBouncer: run the suite through scripts/test");
    memset(&server, 0, sizeof(server));
}

static void teardown(void)
{
    if (server.pid > 0) {
        kill(server.pid, SIGKILL);
        server.pid = 0;
    }
    free(table);
    table = NULL;
}

/* The suite's database (h2o_test_pgbouncer, made by th_run_suite), as PgBouncer serves it. */
static const char *own_db(void)
{
    const char *slash = strrchr(th_pg_url(), '/');
    return slash + 1;
}

static char *pgb_url(const char *query)
{
    return th_fmt("postgresql://postgres@127.0.0.1:%s/%s%s", getenv("H2O_DB_TEST_PGBOUNCER_PORT"), own_db(),
                  query != NULL ? query : "");
}

/* A connection through PgBouncer (a client of the same pool as h2o-db's). */
static PGconn *pgb_connect(void)
{
    char *url = pgb_url(NULL);
    PGconn *c = th_pg_connect(url);
    free(url);
    return c;
}

static void pg_exec_on(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
                  PQresultErrorMessage(r));
    PQclear(r);
}

/* PgBouncer's admin console. */
static PGconn *admin_connect(void)
{
    char *url = th_fmt("host=127.0.0.1 port=%s dbname=pgbouncer user=postgres", getenv("H2O_DB_TEST_PGBOUNCER_PORT"));
    PGconn *c = th_pg_connect(url);
    free(url);
    return c;
}

/* A number of this database's pool in PgBouncer's SHOW POOLS (sv_active, cl_waiting, ...). */
static long pool_stat(const char *column)
{
    PGconn *c = admin_connect();
    PGresult *r = PQexec(c, "SHOW POOLS");
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "SHOW POOLS: %s", PQresultErrorMessage(r));
    int db = PQfnumber(r, "database"), col = PQfnumber(r, column);
    ck_assert_msg(db >= 0 && col >= 0, "SHOW POOLS has no column %s", column);
    long v = 0;
    for (int i = 0; i < PQntuples(r); ++i)
        if (strcmp(PQgetvalue(r, i, db), own_db()) == 0)
            v += strtol(PQgetvalue(r, i, col), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return v;
}

struct stat_is {
    const char *column;
    long value;
};

static int stat_is(void *arg)
{
    struct stat_is *w = arg;
    return pool_stat(w->column) == w->value;
}

/* Waits until SHOW POOLS shows that many server connections in use for this database. */
static void wait_servers_active(long n, const char *why)
{
    struct stat_is w = {"sv_active", n};
    ck_assert_msg(th_wait_until(stat_is, &w, WAIT_MS),
                  "%s: PgBouncer shows %ld server connections in use, not %ld (%ld clients waiting)", why, pool_stat("sv_active"),
                  n, pool_stat("cl_waiting"));
}

static const char *CONF_TEMPLATE = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                   "num-threads: %d\n"
                                   "db.bind:\n"
                                   "  url: \"%s\"\n"
                                   "  pool: {%s}\n"
                                   "hosts:\n"
                                   "  default:\n"
                                   "    paths:\n"
                                   "      /s:\n"
                                   "        c.handler: " DB_HANDLERS ":db_script\n"
                                   "      /e:\n"
                                   "        c.handler: " DB_HANDLERS ":db_echo\n";

/* Starts h2o-db with its bind through PgBouncer (application_name pgb_PORT) and those pool options;
 * makes this test's table. */
static void start(int threads, const char *pool)
{
    char *url = pgb_url("?application_name=pgb_@PORT@"), *conf = th_fmt(CONF_TEMPLATE, threads, url, pool);
    db_start(&server, conf);
    free(conf);
    free(url);
    table = th_uniq("pgb");
    char *sql = th_fmt("CREATE TABLE %s (id int PRIMARY KEY, v text)", table);
    free(th_pg(sql));
    free(sql);
}

static long rows_where(const char *where)
{
    return th_pg_countf("SELECT count(*) FROM %s WHERE %s", table, where);
}

static char *script(const char *fmt)
{
    /* every %s in fmt is the table */
    return th_fmt(fmt, table, table, table, table);
}

START_TEST(autocommit_and_transactions_through_pgbouncer)
{
    start(2, "statement-cache: 0");
    th_response_t res;
    char *body = script("SQL INSERT INTO %s VALUES (1, 'one')\nSQL SELECT v FROM %s WHERE id = $1\nP 1");
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        db_script(&server, &res, version, "/s", version == TH_HTTP1 ? body : "SQL SELECT 2 AS two");
        db_assert_result(res.body, version == TH_HTTP1 ? 1 : 0, "OK", version == TH_HTTP1 ? "[{\"v\":\"one\"}]" : "[{\"two\":2}]");
        th_response_free(&res);
    }
    free(body);

    /* a transaction, committed: its statements see each other, the row stays */
    body = script("BEGIN\nSQL INSERT INTO %s VALUES (2, 'two')\nSQL SELECT count(*) AS n FROM %s\nCOMMIT");
    db_script(&server, &res, TH_HTTP1, "/s", body);
    db_assert_result(res.body, 2, "OK", "[{\"n\":2}]");
    db_assert_result(res.body, 3, "OK", NULL);
    th_response_free(&res);
    free(body);
    ck_assert_int_eq(rows_where("id = 2"), 1);

    /* rolled back */
    body = script("BEGIN\nSQL INSERT INTO %s VALUES (3, 'three')\nROLLBACK");
    db_script(&server, &res, TH_HTTP2, "/s", body);
    db_assert_result(res.body, 2, "OK", NULL);
    th_response_free(&res);
    free(body);
    ck_assert_int_eq(rows_where("id = 3"), 0);

    /* an error inside a transaction: the rest of it fails, nothing of it stays */
    body = script("CONTINUE\nBEGIN\nSQL INSERT INTO %s VALUES (4, 'four')\nSQL SELECT 1 / 0\nSQL SELECT 1\nCOMMIT");
    db_script(&server, &res, TH_HTTP1, "/s", body);
    db_assert_error(res.body, 2, "SQL_ERROR", "22012");
    db_assert_error(res.body, 3, "SQL_ERROR", "25P02");
    char *commit = db_status_of(res.body, 4);
    ck_assert_msg(strcmp(commit, "OK") != 0, "the failed transaction's COMMIT answered OK: %s", res.body);
    free(commit);
    th_response_free(&res);
    free(body);
    ck_assert_int_eq(rows_where("id = 4"), 0);

    /* every transaction has ended: PgBouncer has no server connection held for one */
    wait_servers_active(0, "after the transactions");

    /* 200 statements at once over one HTTP/2 connection, pipelined on h2o-db's connections and
     * spread by PgBouncer over its two: each answer is its own statement's */
    enum { N = 200 };
    char *urls[N];
    th_response_t many[N];
    for (int i = 0; i < N; ++i) {
        char *path = th_fmt("/e?id=%d", i + 1000);
        urls[i] = th_url(&server, path);
        free(path);
    }
    th_http_parallel(many, N, TH_HTTP2, (const char *const *)urls);
    for (int i = 0; i < N; ++i) {
        char *want = th_fmt("[{\"id\":%d}]", i + 1000);
        ck_assert_msg(many[i].curl_error == 0 && many[i].status == 200 && strcmp(many[i].body, want) == 0,
                      "request %d: curl %d, status %ld, body %s (expected %s)", i, many[i].curl_error, many[i].status,
                      many[i].body != NULL ? many[i].body : "", want);
        free(want);
        th_response_free(many + i);
        free(urls[i]);
    }
    db_stop(&server);
}
END_TEST

START_TEST(rollback_at_request_end_frees_the_server_connection)
{
    /* more abandoned transactions than PgBouncer has server connections (2), one at a time */
    start(1, "statement-cache: 0");
    th_response_t res;
    for (int i = 0; i < 4; ++i) {
        char *body = th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (%d, 'abandoned')\nRETURN", table, 100 + i);
        db_script(&server, &res, i % 2 ? TH_HTTP2 : TH_HTTP1, "/s", body);
        th_response_free(&res);
        free(body);
        /* the request ended without COMMIT: h2o-db rolls back, and PgBouncer gets its server back */
        wait_servers_active(0, "after a transaction abandoned at request end");
        ck_assert_int_eq(rows_where("v = 'abandoned'"), 0);
    }
    ck_assert_int_eq(pool_stat("cl_waiting"), 0);
    /* the server connections are usable: a transaction and a statement, through both */
    char *body = script("BEGIN\nSQL INSERT INTO %s VALUES (200, 'after')\nCOMMIT\nSQL SELECT count(*) AS n FROM %s");
    db_script(&server, &res, TH_HTTP1, "/s", body);
    db_assert_result(res.body, 3, "OK", "[{\"n\":1}]");
    th_response_free(&res);
    free(body);
    db_stop(&server);
}
END_TEST

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_msg(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "connect: %s", strerror(errno));
    return fd;
}

struct activity {
    char *appname;
    const char *query;
    long n;
};

static int activity_is(void *arg)
{
    struct activity *a = arg;
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state = 'active' AND query = "
                        "'%s'",
                        a->appname, a->query) == a->n;
}

START_TEST(client_gone_mid_statement_through_pgbouncer)
{
    start(1, "statement-cache: 0");
    struct activity a = {th_fmt("pgb_%d", server.port), "SELECT pg_sleep(60) AS pgb_gone", 1};
    char *body = th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (300, 'gone')\nSQL %s\nCOMMIT\n", table, a.query);
    char *req = th_fmt("POST /s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                       strlen(body), body);
    int fd = connect_to(server.port);
    ck_assert_msg(write(fd, req, strlen(req)) == (ssize_t)strlen(req), "write: %s", strerror(errno));
    ck_assert_msg(th_wait_until(activity_is, &a, WAIT_MS), "the transaction's pg_sleep never ran");
    close(fd);
    /* the client left: h2o-db cancels the statement (PgBouncer passes the cancel on to the server
     * connection it runs on) and rolls back; PgBouncer's server connection is free again */
    a.n = 0;
    ck_assert_msg(th_wait_until(activity_is, &a, WAIT_MS), "pg_sleep(60) still runs after the client left");
    wait_servers_active(0, "after the client left");
    ck_assert_int_eq(rows_where("id = 300"), 0);
    /* and the next request is served on it */
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", "SQL SELECT 'next' AS v");
    db_assert_result(res.body, 0, "OK", "[{\"v\":\"next\"}]");
    th_response_free(&res);
    free(a.appname);
    free(body);
    free(req);
    db_stop(&server);
}
END_TEST

/* statement-timeout: its SET reached one server connection of PgBouncer's choosing
 * (docs/pgbouncer.md), but h2o-db's own bound still answers TIMEOUT in time; the statement then
 * ends on the server and the server connection is free again */
START_TEST(statement_timeout_through_pgbouncer)
{
    start(1, "statement-cache: 0, statement-timeout: 1");
    th_response_t res;
    db_request(&server, &res, TH_HTTP1, NULL, "/s", "SQL SELECT pg_sleep(3)");
    ck_assert_msg(res.status == 200, "status %ld: %s", res.status, res.body);
    db_assert_error(res.body, 0, "TIMEOUT", "57014");
    th_response_free(&res);
    wait_servers_active(0, "after the timed-out statement");
    db_script(&server, &res, TH_HTTP1, "/s", "SQL SELECT 'after' AS v");
    db_assert_result(res.body, 0, "OK", "[{\"v\":\"after\"}]");
    th_response_free(&res);
    db_stop(&server);
    /* the SET stays on its server connection: PgBouncer closes them all, for the tests after this */
    PGconn *admin = admin_connect();
    char *sql = th_fmt("RECONNECT %s", own_db());
    pg_exec_on(admin, sql);
    free(sql);
    PQfinish(admin);
}
END_TEST

static int count_substr(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        ++n;
    return n;
}

/* One request of the statement SELECT $1::int AS cached_N; returns its answer (malloc'd). */
static char *cached_select(int n)
{
    th_response_t res;
    char *sql = th_fmt("SQL SELECT $1::int AS cached_%d\nP 7", n);
    db_request(&server, &res, TH_HTTP1, NULL, "/s", sql);
    free(sql);
    ck_assert_msg(res.status == 200, "status %ld: %s", res.status, res.body);
    char *body = strdup(res.body);
    th_response_free(&res);
    return body;
}

/* The statement cache on, behind transaction pooling. PgBouncer's two server connections, A and B:
 * the test holds A in a transaction, so h2o-db's statement is prepared on B; then it holds B and
 * lets A go, so the prepared statement's next run lands on A, which does not have it. */
static void force_missing_statement(int n)
{
    PGconn *hold_a = pgb_connect(), *hold_b = pgb_connect();
    pg_exec_on(hold_a, "BEGIN");
    pg_exec_on(hold_a, "SELECT 1");
    wait_servers_active(1, "holding A");
    char *body = cached_select(n); /* new SQL: prepared on B, and run there */
    db_assert_result(body, 0, "OK", NULL);
    free(body);
    wait_servers_active(1, "h2o-db's statement done");
    pg_exec_on(hold_b, "BEGIN");
    pg_exec_on(hold_b, "SELECT 1");
    wait_servers_active(2, "holding A and B");
    pg_exec_on(hold_a, "COMMIT");
    wait_servers_active(1, "holding B");
    body = cached_select(n);
    /* the statement's SQLSTATE is PostgreSQL's; its message says what to do */
    db_assert_error(body, 0, "SQL_ERROR", "26000");
    ck_assert_msg(strstr(body, "does not exist") != NULL && strstr(body, "set pool.statement-cache: 0") != NULL &&
                      strstr(body, "docs/pgbouncer.md") != NULL,
                  "the error does not say what to do: %s", body);
    free(body);
    pg_exec_on(hold_b, "COMMIT");
    PQfinish(hold_a);
    PQfinish(hold_b);
}

START_TEST(statement_cache_behind_pgbouncer_is_explained)
{
    start(1, "statement-cache: 256, max: 1, pipeline-depth: 1");
    wait_servers_active(0, "at the start");
    force_missing_statement(1);
    char *log = th_server_log(&server);
    ck_assert_msg(count_substr(log, "h2o-db: [sa_main] prepared statement \"h2o_db_") == 1 &&
                      strstr(log, "set pool.statement-cache: 0 on this bind, see docs/pgbouncer.md") != NULL,
                  "the log does not say it once:\n%s", log);
    free(log);
    /* after the error the statement is prepared anew, and runs */
    char *body = cached_select(1);
    db_assert_result(body, 0, "OK", "[{\"cached_1\":7}]");
    free(body);
    /* it happens again: the handler is told again, the log says nothing more */
    force_missing_statement(2);
    log = th_server_log(&server);
    ck_assert_msg(count_substr(log, "h2o-db: [sa_main] prepared statement") == 1, "logged more than once:\n%s", log);
    free(log);
    db_stop(&server);
}
END_TEST

/* wrk: 64 clients for 10 s against a /db-style handler (one statement a request) through PgBouncer;
 * nothing but 200 (wrk's own time-out is 30 s: a slow answer on a loaded machine is not a failure) */
START_TEST(many_clients_through_pgbouncer_all_200)
{
    start(2, "statement-cache: 0, acquire-timeout: 60");
    char *url = th_url(&server, "/e?id=42");
    char *cmd = th_fmt("timeout %d wrk -t2 -c64 -d10s --timeout 30s '%s' 2>&1", (int)(90 * th_time_factor()), url);
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "cannot run wrk");
    char out[8192];
    size_t len = fread(out, 1, sizeof(out) - 1, p);
    out[len] = '\0';
    int st = pclose(p);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: exit status %d:\n%s", cmd, st, out);
    long requests = 0, non2xx = 0, errs[4] = {0};
    const char *at = strstr(out, " requests in ");
    for (const char *q = at; q != NULL && q > out && q[-1] != '\n';)
        requests = strtol(--q, NULL, 10);
    if ((at = strstr(out, "Non-2xx or 3xx responses:")) != NULL)
        non2xx = strtol(at + strlen("Non-2xx or 3xx responses:"), NULL, 10);
    if ((at = strstr(out, "Socket errors:")) != NULL)
        sscanf(at, "Socket errors: connect %ld, read %ld, write %ld, timeout %ld", errs, errs + 1, errs + 2, errs + 3);
    fprintf(stderr, "pgbouncer: wrk -c64 -d10s through PgBouncer: %ld requests, %ld not 200, socket errors %ld/%ld/%ld/%ld\n",
            requests, non2xx, errs[0], errs[1], errs[2], errs[3]);
    ck_assert_msg(requests > 0 && non2xx == 0 && errs[0] + errs[1] + errs[2] + errs[3] == 0, "not every answer was 200:\n%s\n%s",
                  out, th_server_log(&server));
    free(cmd);
    free(url);
    db_stop(&server);
}
END_TEST

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
    Suite *s = suite_create("pgbouncer");
    ADD(s, autocommit_and_transactions_through_pgbouncer, 90);
    ADD(s, rollback_at_request_end_frees_the_server_connection, 90);
    ADD(s, client_gone_mid_statement_through_pgbouncer, 90);
    ADD(s, statement_cache_behind_pgbouncer_is_explained, 90);
    ADD(s, many_clients_through_pgbouncer_all_200, 120);
    ADD(s, statement_timeout_through_pgbouncer, 90);
    return th_run_suite(s);
}
