/*
 * Streamed statements (h2o_db_query_rows, h2o_db_resume) on a real PostgreSQL, through the real
 * server and a handler of one's own (t/handlers/stream_handlers.c) that writes rows as they come
 * with the client's back-pressure. What is checked is what a user sees: every row, in order, once;
 * on_done once, after the rows; no row while the handler is paused; a stop, a client that stops
 * reading or leaves, and request-timeout end the statement in PostgreSQL (pg_stat_activity), and
 * the connection serves the next request.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "db_util.h"

#define STREAM_HANDLER "@BUILD@/t/stream_handlers.so:stream_on_req"

static th_server_t server;
static char *appname;

static const char *conf_template(const char *pool)
{
    return th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                  "num-threads: 1\n"
                  "db.bind:\n"
                  "  url: @PG@?application_name=%s\n"
                  "  pool: {%s}\n"
                  "hosts:\n"
                  "  default:\n"
                  "    paths:\n"
                  "      /s:\n"
                  "        c.handler: " STREAM_HANDLER "\n"
                  "      /status:\n"
                  "        db.status: ON\n",
                  appname, pool);
}

static void start(const char *pool)
{
    char *conf = (char *)conf_template(pool);
    ck_assert_msg(th_server_start(&server, conf) == 0, "server did not start:\n%s", th_server_log(&server));
    free(conf);
}

static void setup(void)
{
    th_require_pg();
    memset(&server, 0, sizeof(server));
    appname = th_uniq("stream");
}

static void teardown(void)
{
    if (server.pid > 0)
        th_server_stop(&server, 10000);
    free(appname);
}

/* Statements of this test's server that PostgreSQL runs now. */
static long running(void)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state = 'active'", appname);
}

static int none_running(void *arg)
{
    return running() == 0;
}

/* The stream's backend waits for the server to read what it sent: back-pressure reached it. */
static int backend_blocked(void *arg)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND wait_event = 'ClientWrite'",
                        appname) == 1;
}

static int timed_out(void *arg)
{
    return db_status_count(&server, "/status", "sa_main", "timeouts") >= 1;
}

static int nothing_pinned(void *arg)
{
    return db_status_count(&server, "/status", "sa_main", "pinned") == 0;
}

/* Checks a streamed body of `n` rows "1".."n" then the END line; returns the END line. */
static const char *check_rows(const char *body, long n)
{
    const char *p = body;
    for (long i = 1; i <= n; ++i) {
        char *end;
        long v = strtol(p, &end, 10);
        ck_assert_msg(end != p && *end == '\n' && v == i, "row %ld: expected %ld, got \"%.40s\"", i, i, p);
        p = end + 1;
    }
    return p;
}

static char *gen_script(long n, const char *extra)
{
    return th_fmt("SQL SELECT g FROM generate_series(1, $1::int) AS g\nP %ld\n%s", n, extra);
}

START_TEST(test_complete_in_order)
{
    start("max: 2");
    int versions[] = {TH_HTTP1, TH_HTTP2};
    for (size_t i = 0; i < 2; ++i) {
        char *script = gen_script(200000, "");
        th_response_t res;
        db_script(&server, &res, versions[i], "/s", script);
        ck_assert_str_eq(check_rows(res.body, 200000), "END OK - rows=200000 held=0 done=1\n");
        char *te = th_header(&res, "content-length");
        ck_assert_msg(te == NULL, "a streamed answer has no content-length (%s)", te);
        th_response_free(&res);
        free(script);
    }
    ck_assert(th_wait_until(nothing_pinned, NULL, 5000));
}
END_TEST

START_TEST(test_pause_holds_rows)
{
    start("max: 2");
    char *script = gen_script(5000, "HOLD 50\n");
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", script);
    ck_assert_str_eq(check_rows(res.body, 5000), "END OK - rows=5000 held=0 done=1\n");
    th_response_free(&res);
    free(script);
}
END_TEST

START_TEST(test_stop_cancels)
{
    start("max: 1");
    char *script = gen_script(50000000, "STOP 10\n");
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", script);
    ck_assert_str_eq(check_rows(res.body, 10), "END OK - rows=10 held=0 done=1\n");
    th_response_free(&res);
    ck_assert_msg(th_wait_until(none_running, NULL, 5000), "the stopped statement still runs");
    /* the one connection (max 1) serves the next stream */
    free(script);
    script = gen_script(3, "");
    db_script(&server, &res, TH_HTTP2, "/s", script);
    ck_assert_str_eq(check_rows(res.body, 3), "END OK - rows=3 held=0 done=1\n");
    th_response_free(&res);
    free(script);
    ck_assert(th_wait_until(nothing_pinned, NULL, 5000));
}
END_TEST

START_TEST(test_in_transaction)
{
    start("max: 2");
    char *script = gen_script(100, "TXN\n");
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", script);
    ck_assert_str_eq(check_rows(res.body, 100), "END OK - rows=100 held=0 done=1\nCOMMIT OK\n");
    th_response_free(&res);
    free(script);
    /* a stop cancels the statement: its transaction cannot commit */
    script = gen_script(50000000, "TXN\nSTOP 5\n");
    db_script(&server, &res, TH_HTTP1, "/s", script);
    ck_assert_str_eq(check_rows(res.body, 5), "END OK - rows=5 held=0 done=1\nCOMMIT REFUSED\n");
    th_response_free(&res);
    free(script);
    ck_assert(th_wait_until(none_running, NULL, 5000));
    ck_assert(th_wait_until(nothing_pinned, NULL, 5000));
}
END_TEST

START_TEST(test_error_after_rows)
{
    start("max: 2");
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", "SQL SELECT 10 / (5 - g) FROM generate_series(1, 9) AS g\n");
    ck_assert_str_eq(res.body, "2\n3\n5\n10\nEND SQL_ERROR 22012 rows=4 held=0 done=1\n");
    th_response_free(&res);
    /* and before any row: a bad column */
    db_script(&server, &res, TH_HTTP2, "/s", "SQL SELECT nope FROM generate_series(1, 9) AS g\n");
    ck_assert_str_eq(res.body, "END SQL_ERROR 42703 rows=0 held=0 done=1\n");
    th_response_free(&res);
}
END_TEST

/* A raw HTTP/1.1 client that sends a stream's script and then reads only when told to. */
static int raw_post(const char *script)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    char *req =
        th_fmt("POST /s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s", strlen(script), script);
    ck_assert(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    free(req);
    return fd;
}

/* Reads to the end; returns the number of bytes, and whether the last line was the END line. */
static size_t raw_drain(int fd, char *tail, size_t tailsz)
{
    char buf[65536];
    size_t total = 0;
    ssize_t n;
    tail[0] = '\0';
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        total += n;
        size_t keep = (size_t)n < tailsz - 1 ? (size_t)n : tailsz - 1;
        memcpy(tail, buf + n - keep, keep);
        tail[keep] = '\0';
    }
    return total;
}

START_TEST(test_slow_client_pauses_database)
{
    start("max: 2");
    char *script = gen_script(3000000, "");
    int fd = raw_post(script);
    /* nobody reads: the server pauses the stream, stops reading, and PostgreSQL blocks writing */
    ck_assert_msg(th_wait_until(backend_blocked, NULL, 20000), "PostgreSQL never felt the back-pressure");
    ck_assert_int_eq(db_status_count(&server, "/status", "sa_main", "pinned"), 1);
    char tail[256];
    size_t total = raw_drain(fd, tail, sizeof(tail));
    close(fd);
    ck_assert_msg(strstr(tail, "END OK - rows=3000000 held=0 done=1\n") != NULL, "the stream ended with: %s", tail);
    ck_assert_msg(total > 3000000 * 2, "only %zu bytes arrived", total);
    ck_assert(th_wait_until(nothing_pinned, NULL, 5000));
    free(script);
}
END_TEST

START_TEST(test_client_leaves)
{
    start("max: 1");
    char *script = gen_script(50000000, "");
    int fd = raw_post(script);
    ck_assert_msg(th_wait_until(backend_blocked, NULL, 20000), "PostgreSQL never felt the back-pressure");
    struct linger lg = {1, 0}; /* a reset, as a browser tab that closes */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    /* the statement is cancelled, not read to its end: that would take minutes */
    ck_assert_msg(th_wait_until(none_running, NULL, 5000), "the statement of a client that left still runs");
    ck_assert(th_wait_until(nothing_pinned, NULL, 5000));
    free(script);
    script = gen_script(2, "");
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/s", script);
    ck_assert_str_eq(res.body, "1\n2\nEND OK - rows=2 held=0 done=1\n");
    th_response_free(&res);
    free(script);
}
END_TEST

START_TEST(test_request_timeout_bounds_a_stall)
{
    start("max: 1, request-timeout: 1");
    char *script = gen_script(50000000, "");
    int fd = raw_post(script);
    /* a second after the last row: TIMEOUT, the statement cancelled, the connection freed */
    ck_assert_msg(th_wait_until(timed_out, NULL, 20000), "a stalled stream outlived request-timeout");
    ck_assert_msg(th_wait_until(none_running, NULL, 10000), "the statement of a timed-out stream still runs");
    ck_assert(th_wait_until(nothing_pinned, NULL, 5000));
    char tail[256];
    raw_drain(fd, tail, sizeof(tail));
    close(fd);
    ck_assert_msg(strstr(tail, "END TIMEOUT 57014") != NULL, "the stream ended with: %s", tail);
    free(script);
}
END_TEST

START_TEST(test_streams_wait_for_a_connection)
{
    start("max: 1");
    const char *bodies[4];
    char *script = gen_script(20000, "");
    for (size_t i = 0; i < 4; ++i)
        bodies[i] = script;
    th_response_t res[4];
    db_parallel(&server, res, 4, TH_HTTP2, "/s", bodies);
    for (size_t i = 0; i < 4; ++i) {
        ck_assert_int_eq(res[i].status, 200);
        ck_assert_str_eq(check_rows(res[i].body, 20000), "END OK - rows=20000 held=0 done=1\n");
        th_response_free(&res[i]);
    }
    ck_assert_int_le(db_status_count(&server, "/status", "sa_main", "total"), 1);
    free(script);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stream");
    TCase *tc = tcase_create("postgresql");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120 * th_time_factor());
    tcase_add_test(tc, test_complete_in_order);
    tcase_add_test(tc, test_pause_holds_rows);
    tcase_add_test(tc, test_stop_cancels);
    tcase_add_test(tc, test_in_transaction);
    tcase_add_test(tc, test_error_after_rows);
    tcase_add_test(tc, test_slow_client_pauses_database);
    tcase_add_test(tc, test_client_leaves);
    tcase_add_test(tc, test_request_timeout_bounds_a_stall);
    tcase_add_test(tc, test_streams_wait_for_a_connection);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
