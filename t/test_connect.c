/*
 * Connecting that fails, against the real h2o-db and the real PostgreSQL and MariaDB that
 * scripts/test started: a unix socket that is missing (and then appears), a port nobody
 * listens on (and then somebody does), a server that drops the connection while it is being
 * made (and then serves), a host name that does not resolve, and credentials the server refuses.
 * For each, on both backends, over HTTP/1.1 and HTTP/2: every request is answered 503 with
 * Retry-After while the database cannot be reached, the server stays up and keeps no more
 * connections than `max` allows, and once the database is reachable the same server answers 200.
 *
 * "The database appears" is made without touching the shared servers: a symbolic link to their
 * socket is created where the bind looks for one, or a forwarder in this process starts
 * listening on the bind's port (th_forwarder_t: relaying to the real server, or closing every
 * connection it accepts, as a server that dies during the handshake does).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "db_util.h"

enum { PG, MY };
static const char *const NAMES[] = {"PostgreSQL", "MariaDB"};

/* ---- the servers scripts/test started ---- */

static int port_of(const char *url)
{
    const char *p = strstr(url, "127.0.0.1:");
    ck_assert_msg(p != NULL, "no 127.0.0.1:PORT in %s", url);
    return atoi(p + strlen("127.0.0.1:"));
}

static const char *my_url(void)
{
    const char *u = getenv("H2O_DB_TEST_MYSQL");
    ck_assert_msg(u != NULL, "no MariaDB: run the suite through scripts/test");
    return u;
}

static int real_port(int backend)
{
    return backend == PG ? port_of(th_pg_url()) : port_of(my_url());
}

/* The server's own unix socket. */
static char *real_socket(int backend)
{
    if (backend == PG) {
        const char *dir = getenv("H2O_DB_TEST_PG_SOCKET_DIR");
        ck_assert_msg(dir != NULL, "H2O_DB_TEST_PG_SOCKET_DIR is not set: run the suite through scripts/test");
        return th_fmt("%s/.s.PGSQL.%d", dir, real_port(PG));
    }
    const char *sock = getenv("H2O_DB_TEST_MYSQL_SOCKET");
    ck_assert_msg(sock != NULL, "H2O_DB_TEST_MYSQL_SOCKET is not set: run the suite through scripts/test");
    return strdup(sock);
}

/* A URL to the real server over TCP on `port` (its own port, or a forwarder's). */
static char *tcp_url(int backend, int port, const char *user)
{
    if (backend == PG)
        return th_fmt("postgresql://%s@127.0.0.1:%d/postgres", user != NULL ? user : "postgres", port);
    if (user != NULL)
        return th_fmt("mysql://%s@127.0.0.1:%d/h2o_test", user, port);
    const char *u = my_url(), *at = strrchr(u, '@');
    return th_fmt("%.*s@127.0.0.1:%d/h2o_test", (int)(at - u), u, port);
}

/* ---- the server under test ---- */

static th_server_t server;

/* The end of the server's log (Check cannot carry long messages). */
static const char *log_tail(void)
{
    static char tail[1500];
    char *log = th_server_log(&server);
    size_t len = strlen(log);
    snprintf(tail, sizeof(tail), "%s", log + (len > sizeof(tail) - 1 ? len - (sizeof(tail) - 1) : 0));
    free(log);
    return tail;
}

static void start(const char *url)
{
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "num-threads: 2\n"
                        "db.bind:\n"
                        "  url: \"%s\"\n"
                        "  pool: {max: 2, acquire-timeout: 3}\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /s:\n"
                        "        c.handler: " DB_HANDLERS ":db_script\n"
                        "      /status:\n"
                        "        db.status: ON\n",
                        url);
    int ret = th_server_start(&server, conf);
    ck_assert_msg(ret == 0, "the server did not start; log:\n%s", log_tail());
    free(conf);
}

static void stop(void)
{
    int st = th_server_stop(&server, 15000);
    ck_assert_msg(st == 0, "exit status %d; log:\n%s", st, log_tail());
}

#define BURST 24

/* A burst of requests over HTTP/1.1 and HTTP/2 while the database cannot be reached: every one is
 * answered 503 with Retry-After, and the server is still there afterwards. */
static void expect_unavailable(const char *what, const char *sqlstate_class)
{
    static const char *body = "SENDERROR\nSQL SELECT 1";
    const char *bodies[BURST];
    for (size_t i = 0; i < BURST; ++i)
        bodies[i] = body;
    for (int v = TH_HTTP1; v <= TH_HTTP2_UPGRADE; v += TH_HTTP2_UPGRADE - TH_HTTP1) {
        th_response_t res[BURST];
        db_parallel(&server, res, BURST, v, "/s", bodies);
        for (size_t i = 0; i < BURST; ++i) {
            ck_assert_msg(res[i].curl_error == 0, "%s, HTTP/%d: request %zu got no answer (curl %d); log:\n%s", what,
                          v == TH_HTTP1 ? 1 : 2, i, res[i].curl_error, log_tail());
            ck_assert_msg(res[i].status == 503, "%s, HTTP/%d: request %zu: status %ld, body %s", what, v == TH_HTTP1 ? 1 : 2, i,
                          res[i].status, res[i].body);
            char *ra = th_header(&res[i], "retry-after");
            ck_assert_msg(ra != NULL, "%s: a 503 without Retry-After", what);
            free(ra);
            th_response_free(&res[i]);
        }
    }
    ck_assert_msg(kill(server.pid, 0) == 0, "%s: the server died; log:\n%s", what, log_tail());
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, "cannot connect") != NULL, "%s: the log does not say why:\n%s", what, log_tail());
    char *mark = th_fmt("(SQLSTATE %s", sqlstate_class);
    ck_assert_msg(strstr(log, mark) != NULL, "%s: no answer with SQLSTATE %s... in the log:\n%s", what, sqlstate_class, log_tail());
    free(mark);
    free(log);
    /* never more connections than max per thread, whatever failed */
    long total = db_status_count(&server, "/status", NULL, "total");
    ck_assert_msg(total <= 4, "%s: %ld connections open (max 2 per thread, 2 threads)", what, total);
}

/* Whether a burst of requests, over several connections (so both worker threads), all answer 200. */
static int all_answer_200(void *arg)
{
    enum { N = 8 };
    th_response_t res[N];
    const char *bodies[N];
    for (size_t i = 0; i < N; ++i)
        bodies[i] = "SENDERROR\nSQL SELECT 1";
    db_parallel(&server, res, N, TH_HTTP1, "/s", bodies);
    int ok = 1;
    for (size_t i = 0; i < N; ++i) {
        ok &= res[i].status == 200;
        th_response_free(&res[i]);
    }
    return ok;
}

/* Once the database is reachable, the same server serves on every thread: each thread's pool
 * retries after its own back-off (at most 250 ms). The bound is a hang guard (~10x that). */
static void expect_recovery(const char *what)
{
    double t0 = th_now_ms();
    ck_assert_msg(th_wait_until(all_answer_200, NULL, 10000),
                  "%s: still failing 10 s after the database became reachable; log:\n%s", what, log_tail());
    fprintf(stderr, "connect: %s: every thread answers 200 %.0f ms after the database became reachable\n", what, th_now_ms() - t0);
}

/* ---- the cases (each for PostgreSQL and MariaDB: _i is the backend) ---- */

START_TEST(missing_unix_socket_then_it_appears)
{
    char *dir = th_tmpdir(), *real = real_socket(_i), *link, *url;
    if (_i == PG) {
        link = th_fmt("%s/.s.PGSQL.%d", dir, real_port(PG));
        url = th_fmt("postgresql:///postgres?host=%s&port=%d&user=postgres", dir, real_port(PG));
    } else {
        link = th_fmt("%s/mysqld.sock", dir);
        const char *u = my_url(), *at = strrchr(u, '@');
        url = th_fmt("%.*s@localhost/h2o_test?unix_socket=%s", (int)(at - u), u, link);
    }
    start(url);
    char *what = th_fmt("%s, missing unix socket", NAMES[_i]);
    expect_unavailable(what, "08");
    ck_assert_msg(symlink(real, link) == 0, "symlink %s: %s", link, strerror(errno));
    expect_recovery(what);
    stop();
    unlink(link);
    free(what), free(url), free(link), free(real), free(dir);
}
END_TEST

START_TEST(refused_port_then_it_listens)
{
    th_forwarder_t *f = th_forwarder_new(real_port(_i));
    char *url = tcp_url(_i, th_forwarder_port(f), NULL), *what = th_fmt("%s, refused port", NAMES[_i]);
    start(url);
    expect_unavailable(what, "08");
    th_forwarder_up(f, TH_FWD_RELAY);
    expect_recovery(what);
    stop();
    th_forwarder_free(f);
    free(what), free(url);
}
END_TEST

START_TEST(server_drops_connections_while_connecting_then_serves)
{
    th_forwarder_t *f = th_forwarder_new(real_port(_i));
    char *url = tcp_url(_i, th_forwarder_port(f), NULL), *what = th_fmt("%s, connection dropped during the handshake", NAMES[_i]);
    th_forwarder_up(f, TH_FWD_DROP);
    start(url);
    expect_unavailable(what, "08");
    th_forwarder_set_mode(f, TH_FWD_RELAY);
    expect_recovery(what);
    stop();
    th_forwarder_free(f);
    free(what), free(url);
}
END_TEST

START_TEST(unresolvable_host)
{
    char *url = _i == PG ? strdup("postgresql://postgres@no-such-host.invalid/postgres")
                         : strdup("mysql://h2o:pw@no-such-host.invalid/h2o_test"),
         *what = th_fmt("%s, unresolvable host", NAMES[_i]);
    start(url);
    expect_unavailable(what, "08");
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, "no-such-host.invalid") != NULL, "%s: the log does not name the host:\n%s", what, log_tail());
    free(log);
    stop();
    free(what), free(url);
}
END_TEST

START_TEST(refused_credentials)
{
    /* PostgreSQL trusts every role of the test cluster: a role that does not exist is refused;
     * MariaDB: the test user with a wrong password */
    char *url = tcp_url(_i, real_port(_i), _i == PG ? "no_such_role" : "h2o:wrong-password"),
         *what = th_fmt("%s, refused credentials", NAMES[_i]);
    start(url);
    /* a connect the server refuses is UNAVAILABLE with 08001 on both backends (libpq gives no
     * SQLSTATE for it), and the server's reason is kept */
    expect_unavailable(what, "08");
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, _i == PG ? "\"no_such_role\" does not exist" : "Access denied") != NULL,
                  "%s: the server's reason is not in the log:\n%s", what, log_tail());
    ck_assert_msg(strstr(log, "wrong-password") == NULL, "%s: the password is in the log", what);
    free(log);
    stop();
    free(what), free(url);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    Suite *s = suite_create("connect");
    TCase *tc = tcase_create("connect");
    tcase_set_timeout(tc, 120 * th_time_factor());
    tcase_add_loop_test(tc, missing_unix_socket_then_it_appears, PG, MY + 1);
    tcase_add_loop_test(tc, refused_port_then_it_listens, PG, MY + 1);
    tcase_add_loop_test(tc, server_drops_connections_while_connecting_then_serves, PG, MY + 1);
    tcase_add_loop_test(tc, unresolvable_host, PG, MY + 1);
    tcase_add_loop_test(tc, refused_credentials, PG, MY + 1);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
