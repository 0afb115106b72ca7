/*
 * db.listen (docs/directives/db.listen.md): NOTIFYs from the suite's PostgreSQL reach SSE
 * clients of the real h2o-db over HTTP/1.1 and HTTP/2 — every client every NOTIFY, in order, over
 * one LISTEN connection per thread (pg_stat_activity); multi-line payloads; ?channel= narrowing;
 * max-clients; clients that stop reading (HTTP/1.1 and HTTP/2) are dropped at max-backlog while
 * the others go on; a killed LISTEN backend is replaced and clients hear `reconnected`; a database
 * that is down at the first client, then up, then cut (forwarder); heartbeats; a stop and a reload
 * that do not wait for the streams; the C API; the example config; config errors with file:line.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "db_util.h"
#include "harness.h"
#include "sse_client.h"

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

/* A server whose /events listens to `channels` with `options`, its bind named by application_name. */
static void start(const char *app, int threads, const char *channels, const char *options)
{
    char *conf = th_fmt("listen: @PORT@\n"
                        "num-threads: %d\n"
                        "shutdown-timeout: 30\n"
                        "db.bind:\n"
                        "  url: \"@PG@?application_name=%s_@PORT@\"\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /events:\n"
                        "        db.listen: {channels: [%s]%s%s}\n"
                        "      /status:\n"
                        "        db.status: ON\n",
                        threads, app, channels, options[0] != '\0' ? ", " : "", options);
    ck_assert_msg(th_server_start(&server, conf) == 0, "server did not start: %s", th_server_log(&server));
    free(conf);
}

/* backends of this server that LISTEN (their last statement was a LISTEN) */
static long listen_backends(const char *app)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s_%d' AND query LIKE 'LISTEN %%'", app,
                        server.port);
}

struct backends {
    const char *app;
    long want;
};

static int have_backends(void *arg)
{
    struct backends *b = arg;
    return listen_backends(b->app) == b->want;
}

static int all_have(sse_t *cs, size_t n, void *needle)
{
    for (size_t i = 0; i < n; ++i) {
        size_t from = 0;
        if (!sse_find(cs + i, &from, needle))
            return 0;
    }
    return 1;
}

static void wait_listening(sse_t *cs, size_t n)
{
    ck_assert_msg(sse_wait(cs, n, all_have, ": listening\n\n", 10000), "not every client was told `: listening`");
    for (size_t i = 0; i < n; ++i)
        ck_assert_int_eq(cs[i].status, 200);
}

/* The status of one HTTP/1.1 request (a POST carries "x"). */
static long status_of(const char *method, const char *path)
{
    th_response_t res;
    char *url = th_url(&server, path);
    ck_assert_int_eq(
        th_http(&res, TH_HTTP1, strcmp(method, "GET") == 0 ? NULL : method, url, strcmp(method, "GET") == 0 ? NULL : "x"), 0);
    long status = res.status;
    th_response_free(&res);
    free(url);
    return status;
}

static void notify(PGconn *pg, const char *channel, const char *payload)
{
    const char *params[] = {channel, payload};
    PGresult *r = PQexecParams(pg, "SELECT pg_notify($1, $2)", 2, NULL, params, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "pg_notify: %s", PQerrorMessage(pg));
    PQclear(r);
}

/* The sum over the threads of `field` in the status page's "listen" objects; a boolean counts 1
 * when true. */
static long listen_status(const char *field)
{
    char *page = db_status_page(&server, NULL, "/status"), *name = th_fmt("\"%s\":", field);
    long sum = 0;
    for (const char *l = strstr(page, "\"listen\":{"); l != NULL; l = strstr(l + 1, "\"listen\":{")) {
        const char *end = strchr(l, '}'), *p = strstr(l, name);
        if (p != NULL && p < end)
            sum += strncmp(p + strlen(name), "true", 4) == 0 ? 1 : strtol(p + strlen(name), NULL, 10);
    }
    free(name);
    free(page);
    return sum;
}

static int no_clients(void *arg)
{
    return listen_status("clients") == 0;
}

#define FANOUT_CLIENTS  100
#define FANOUT_NOTIFIES 1000

START_TEST(every_client_gets_every_notify_in_order_over_one_listen_connection_per_thread)
{
    start("fan", 2, "orders, stock", "heartbeat: 0");
    sse_t cs[FANOUT_CLIENTS + 4];
    for (size_t i = 0; i < FANOUT_CLIENTS; ++i)
        sse_open_http1(cs + i, server.port, "/events", 0);
    for (size_t i = FANOUT_CLIENTS; i < FANOUT_CLIENTS + 4; ++i)
        sse_open_http2(cs + i, server.port, "/events");
    size_t n = FANOUT_CLIENTS + 4;
    wait_listening(cs, n);
    /* 104 clients on 2 threads: one LISTEN connection each */
    struct backends b = {"fan", 2};
    ck_assert_msg(th_wait_until(have_backends, &b, 5000), "want 2 LISTEN backends, have %ld", listen_backends("fan"));
    PGconn *pg = th_pg_connect(th_pg_url());
    char payload[32];
    for (int i = 0; i < FANOUT_NOTIFIES; ++i) {
        snprintf(payload, sizeof(payload), "n%d", i);
        notify(pg, i % 10 == 9 ? "stock" : "orders", payload);
    }
    char last[64];
    snprintf(last, sizeof(last), "data: n%d\n\n", FANOUT_NOTIFIES - 1);
    ck_assert_msg(sse_wait(cs, n, all_have, last, 30000), "not every client got the last NOTIFY");
    for (size_t c = 0; c < n; ++c) {
        size_t from = 0;
        for (int i = 0; i < FANOUT_NOTIFIES; ++i) {
            char ev[64];
            snprintf(ev, sizeof(ev), "event: %s\ndata: n%d\n\n", i % 10 == 9 ? "stock" : "orders", i);
            ck_assert_msg(sse_find(cs + c, &from, ev), "client %zu: NOTIFY %d missing or out of order", c, i);
        }
    }
    ck_assert_int_eq(listen_backends("fan"), 2);
    /* db.status: both threads' LISTEN connections, each with both channels and the path's
     * subscription to each, every NOTIFY received by each and handed to its subscription once
     * (the path then writes it to each of its clients), every client counted */
    ck_assert_int_eq(listen_status("connected"), 2);
    ck_assert_int_eq(listen_status("channels"), 4);
    ck_assert_int_eq(listen_status("subscribers"), 4);
    ck_assert_int_eq(listen_status("notifications"), 2 * FANOUT_NOTIFIES);
    ck_assert_int_eq(listen_status("deliveries"), 2 * FANOUT_NOTIFIES);
    ck_assert_int_eq(listen_status("losses"), 0);
    ck_assert_int_eq(listen_status("clients"), (long)n);
    ck_assert_int_eq(listen_status("dropped") + listen_status("refused"), 0);
    char *prom = db_status_page(&server, NULL, "/status?format=prometheus");
    ck_assert_msg(strstr(prom, "# TYPE h2o_db_listen_deliveries_total counter\n") != NULL &&
                      strstr(prom, "h2o_db_listen_connected{key=\"sa_main\",scope=\"global\",thread=\"0\"} 1\n") != NULL &&
                      strstr(prom, "h2o_db_listen_connected{key=\"sa_main\",scope=\"global\",thread=\"1\"} 1\n") != NULL,
                  "%s", prom);
    free(prom);
    PQfinish(pg);
    for (size_t i = 0; i < n; ++i)
        sse_close(cs + i);
    /* the clients gone, they are counted out; the path's subscriptions stay with the thread */
    ck_assert_msg(th_wait_until(no_clients, NULL, 10000), "%ld clients counted after they left", listen_status("clients"));
    ck_assert_int_eq(listen_status("subscribers"), 4);
}
END_TEST

START_TEST(multi_line_payloads_and_channel_narrowing)
{
    start("nar", 1, "orders, stock", "");
    sse_t cs[3];
    sse_open_http1(cs + 0, server.port, "/events", 0);
    sse_open_http1(cs + 1, server.port, "/events?channel=stock", 0);
    sse_open_http2(cs + 2, server.port, "/events?channel=orders");
    wait_listening(cs, 3);
    ck_assert_int_eq(status_of("GET", "/events?channel=nope"), 400);
    ck_assert_int_eq(status_of("POST", "/events"), 405);
    PGconn *pg = th_pg_connect(th_pg_url());
    notify(pg, "orders", "line one\nline two\r\nline three");
    notify(pg, "stock", "");
    notify(pg, "orders", "end");
    ck_assert(sse_wait(cs, 1, all_have, "data: end\n\n", 10000));
    ck_assert(sse_wait(cs + 1, 1, all_have, "event: stock\ndata: \n\n", 10000));
    ck_assert(sse_wait(cs + 2, 1, all_have, "data: end\n\n", 10000));
    size_t from = 0;
    ck_assert(sse_find(cs + 0, &from, "event: orders\ndata: line one\ndata: line two\ndata: line three\n\n"));
    ck_assert(sse_find(cs + 0, &from, "event: stock\ndata: \n\n"));
    ck_assert(sse_find(cs + 0, &from, "event: orders\ndata: end\n\n"));
    /* narrowed: nothing of the other channel */
    ck_assert_ptr_null(strstr(cs[1].body, "event: orders"));
    ck_assert_ptr_null(strstr(cs[2].body, "event: stock"));
    from = 0;
    ck_assert(sse_find(cs + 2, &from, "data: line one\ndata: line two\ndata: line three\n\n"));
    PQfinish(pg);
    for (size_t i = 0; i < 3; ++i)
        sse_close(cs + i);
}
END_TEST

START_TEST(beyond_max_clients_is_503)
{
    start("max", 1, "orders", "max-clients: 2");
    sse_t cs[2];
    sse_open_http1(cs + 0, server.port, "/events", 0);
    sse_open_http2(cs + 1, server.port, "/events");
    wait_listening(cs, 2);
    ck_assert_int_eq(status_of("GET", "/events"), 503);
    ck_assert_int_eq(listen_status("refused"), 1); /* (db.status) */
    ck_assert_int_eq(listen_status("clients"), 2);
    /* a client that leaves frees its place (its hang-up is noticed) */
    sse_close(cs + 0);
    sse_t again;
    double deadline = th_now_ms() + 10000 * th_time_factor();
    for (;;) {
        sse_open_http1(&again, server.port, "/events", 0);
        while (!again.header_done && !again.closed && th_now_ms() < deadline)
            sse_pump(&again, 1, 20);
        if (again.status == 200 || th_now_ms() > deadline)
            break;
        sse_close(&again);
        usleep(50000); /* (retry pacing, not a wait for a fact) */
    }
    ck_assert_msg(again.status == 200, "status %ld closed %d: %s", again.status, again.closed, again.body);
    sse_close(&again);
    sse_close(cs + 1);
}
END_TEST

/* whether the log tells of `*(int *)arg` clients dropped at max-backlog */
static int dropped_in_log(void *arg)
{
    return th_log_count(&server, "max-backlog") >= *(int *)arg;
}

START_TEST(a_client_that_stops_reading_is_dropped_and_the_others_keep_everything)
{
    start("slow", 1, "orders", "max-backlog: 65536, heartbeat: 0");
    sse_t cs[4];
    sse_open_http1(cs + 0, server.port, "/events", 0);
    sse_open_http2(cs + 1, server.port, "/events");
    sse_open_http1(cs + 2, server.port, "/events", 2048); /* never read after the greeting */
    sse_open_http2_small_window(cs + 3, server.port, "/events");
    wait_listening(cs, 4);
    kill(cs[3].pid, SIGSTOP); /* an HTTP/2 client that stops reading too */
    int two = 2;
    PGconn *pg = th_pg_connect(th_pg_url());
    char payload[4001];
    int sent = 0;
    /* the slow one's kernel buffers fill first, then its backlog passes 16 KiB */
    while (!dropped_in_log(&two) && sent < 5000) {
        for (int i = 0; i < 50; ++i, ++sent) {
            memset(payload, 'a' + sent % 26, 4000);
            snprintf(payload, sizeof(payload), "%06d", sent);
            payload[6] = ' ';
            payload[4000] = '\0';
            notify(pg, "orders", payload);
            sse_pump(cs, 2, 0); /* the readers keep reading */
        }
    }
    ck_assert_msg(dropped_in_log(&two), "the clients that did not read were not both dropped (%d NOTIFYs of 4 kB): %s", sent,
                  th_server_log(&server));
    char last[32];
    snprintf(last, sizeof(last), "data: %06d ", sent - 1);
    ck_assert_msg(sse_wait(cs, 2, all_have, last, 30000),
                  "the readers did not get all %d NOTIFYs (%zu and %zu bytes; closed %d %d): %s", sent, cs[0].body_len,
                  cs[1].body_len, cs[0].closed, cs[1].closed, th_server_log(&server));
    for (size_t c = 0; c < 2; ++c) {
        size_t from = 0;
        for (int i = 0; i < sent; ++i) {
            char ev[32];
            snprintf(ev, sizeof(ev), "data: %06d ", i);
            ck_assert_msg(sse_find(cs + c, &from, ev), "client %zu lost NOTIFY %d", c, i);
        }
    }
    /* the slow one's connection was closed: reading it now ends */
    double deadline = th_now_ms() + 10000 * th_time_factor();
    while (!cs[2].closed && th_now_ms() < deadline)
        sse_pump(cs + 2, 1, 20);
    ck_assert_msg(cs[2].closed, "the dropped client's connection stayed open");
    ck_assert_int_eq(listen_status("dropped"), 2); /* (db.status) */
    PQfinish(pg);
    for (size_t i = 0; i < 4; ++i)
        sse_close(cs + i);
}
END_TEST

START_TEST(a_killed_listen_backend_is_replaced_and_clients_hear_reconnected)
{
    start("kill", 2, "orders", "heartbeat: 0");
    sse_t cs[6];
    for (size_t i = 0; i < 4; ++i)
        sse_open_http1(cs + i, server.port, "/events", 0);
    sse_open_http2(cs + 4, server.port, "/events");
    sse_open_http2(cs + 5, server.port, "/events");
    wait_listening(cs, 6);
    long before = listen_backends("kill");
    ck_assert(before >= 1 && before <= 2);
    char *sql = th_fmt("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'kill_%d' AND "
                       "query LIKE 'LISTEN %%'",
                       server.port);
    free(th_pg(sql));
    free(sql);
    double t0 = th_now_ms();
    ck_assert_msg(sse_wait(cs, 6, all_have, "event: reconnected\ndata: \n\n", 10000),
                  "no `reconnected` after the LISTEN backend died");
    fprintf(stderr, "listen: reconnected %.0f ms after pg_terminate_backend\n", th_now_ms() - t0);
    PGconn *pg = th_pg_connect(th_pg_url());
    notify(pg, "orders", "after");
    for (size_t i = 0; i < 6; ++i) {
        size_t from = 0;
        sse_find(cs + i, &from, "event: reconnected\n");
        ck_assert(sse_wait(cs + i, 1, all_have, "data: after\n\n", 10000));
        ck_assert(sse_find(cs + i, &from, "data: after\n\n"));
    }
    struct backends b = {"kill", before};
    ck_assert(th_wait_until(have_backends, &b, 5000));
    ck_assert_int_ge(listen_status("losses"), before); /* (db.status) each killed backend at least */
    ck_assert_int_eq(listen_status("connected"), before);
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, "lost the LISTEN connection") != NULL, "%s", log);
    free(log);
    PQfinish(pg);
    for (size_t i = 0; i < 6; ++i)
        sse_close(cs + i);
}
END_TEST

START_TEST(heartbeats_come_and_a_stop_does_not_wait_for_the_streams)
{
    start("beat", 2, "orders", "heartbeat: 1");
    sse_t cs[2];
    sse_open_http1(cs + 0, server.port, "/events", 0);
    sse_open_http2(cs + 1, server.port, "/events");
    wait_listening(cs, 2);
    ck_assert_msg(sse_wait(cs, 2, all_have, ": heartbeat\n\n", 10000), "no heartbeat within 10 s of `heartbeat: 1`");
    /* shutdown-timeout is 30 s: the streams end at once instead */
    double t0 = th_now_ms();
    ck_assert_int_eq(th_server_stop(&server, 20000), 0);
    ck_assert_msg(th_now_ms() - t0 < 5000 * th_time_factor(), "stopping took %.0f ms", th_now_ms() - t0);
    sse_pump(cs, 2, 100);
    ck_assert(cs[0].closed);
    for (size_t i = 0; i < 2; ++i)
        sse_close(cs + i);
}
END_TEST

static int log_has(void *what)
{
    char *log = th_server_log(&server);
    int found = strstr(log, what) != NULL;
    free(log);
    return found;
}

START_TEST(a_database_down_at_the_first_client_is_listened_to_when_it_is_up_and_a_lost_one_is_found_again)
{
    char host[128], db[128];
    int pg_port;
    ck_assert(sscanf(th_pg_url(), "postgresql://%*[^@]@%127[^:]:%d/%127s", host, &pg_port, db) == 3);
    th_forwarder_t *f = th_forwarder_new(pg_port); /* refuses until up */
    char *conf = th_fmt("listen: @PORT@\n"
                        "num-threads: 1\n"
                        "db.bind:\n"
                        "  url: \"postgresql://postgres@127.0.0.1:%d/%s?application_name=down_@PORT@\"\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /events:\n"
                        "        db.listen: {channels: [orders], heartbeat: 0}\n",
                        th_forwarder_port(f), db);
    ck_assert_msg(th_server_start(&server, conf) == 0, "%s", th_server_log(&server));
    free(conf);
    sse_t c;
    sse_open_http1(&c, server.port, "/events", 0);
    double deadline = th_now_ms() + 10000 * th_time_factor();
    while (!c.header_done && th_now_ms() < deadline)
        sse_pump(&c, 1, 20);
    ck_assert_int_eq(c.status, 200); /* the stream starts while the database is unreachable */
    ck_assert(th_wait_until(log_has, "cannot open the LISTEN connection", 10000));
    ck_assert_ptr_null(strstr(c.body, ": listening"));
    th_forwarder_up(f, TH_FWD_RELAY);
    double t0 = th_now_ms();
    ck_assert_msg(sse_wait(&c, 1, all_have, ": listening\n\n", 10000), "not listening after the database came up");
    fprintf(stderr, "listen: listening %.0f ms after the database came up\n", th_now_ms() - t0);
    PGconn *pg = th_pg_connect(th_pg_url());
    notify(pg, "orders", "first");
    ck_assert(sse_wait(&c, 1, all_have, "data: first\n\n", 10000));
    /* cut: what is sent while nobody listens is lost, and said to be */
    th_forwarder_down(f);
    ck_assert(th_wait_until(log_has, "lost the LISTEN connection", 10000));
    notify(pg, "orders", "while-down");
    th_forwarder_up(f, TH_FWD_RELAY);
    ck_assert_msg(sse_wait(&c, 1, all_have, "event: reconnected\n", 10000), "no `reconnected`");
    notify(pg, "orders", "after");
    ck_assert(sse_wait(&c, 1, all_have, "data: after\n\n", 10000));
    ck_assert_ptr_null(strstr(c.body, "while-down"));
    PQfinish(pg);
    sse_close(&c);
    kill_server();
    th_forwarder_free(f);
}
END_TEST

struct gone {
    const char *pids;
};

static int backends_gone(void *arg)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE pid IN (%s)", ((struct gone *)arg)->pids) == 0;
}

START_TEST(a_reload_ends_the_streams_and_new_threads_listen_anew)
{
    start("hup", 2, "orders", "heartbeat: 0");
    sse_t cs[3];
    sse_open_http1(cs + 0, server.port, "/events", 0);
    sse_open_http1(cs + 1, server.port, "/events", 0);
    sse_open_http2(cs + 2, server.port, "/events");
    wait_listening(cs, 3);
    char *sql = th_fmt("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE application_name = 'hup_%d' AND query "
                       "LIKE 'LISTEN %%'",
                       server.port);
    char *old_pids = th_pg(sql);
    free(sql);
    ck_assert_ptr_nonnull(old_pids);
    ck_assert_int_eq(kill(server.pid, SIGHUP), 0);
    ck_assert(th_wait_until(log_has, "h2o-db: reloaded", 30000));
    /* the old threads end their streams instead of waiting out shutdown-timeout (30 s) */
    double deadline = th_now_ms() + 10000 * th_time_factor();
    while ((!cs[0].closed || !cs[1].closed || !cs[2].closed) && th_now_ms() < deadline)
        sse_pump(cs, 3, 20);
    ck_assert_msg(cs[0].closed && cs[1].closed && cs[2].closed, "a stream outlived the reload");
    /* HTTP/1.1 streams end with the chunked encoding's last chunk, not a cut */
    ck_assert_ptr_nonnull(strstr(cs[0].body, ": listening"));
    sse_t again[2];
    sse_open_http1(again + 0, server.port, "/events", 0);
    sse_open_http2(again + 1, server.port, "/events");
    wait_listening(again, 2);
    PGconn *pg = th_pg_connect(th_pg_url());
    notify(pg, "orders", "new");
    ck_assert(sse_wait(again, 2, all_have, "data: new\n\n", 10000));
    /* the old threads' LISTEN connections closed with them */
    struct gone g = {old_pids};
    ck_assert_msg(th_wait_until(backends_gone, &g, 10000), "the old LISTEN backends %s are still there", old_pids);
    free(old_pids);
    PQfinish(pg);
    for (size_t i = 0; i < 3; ++i)
        sse_close(cs + i);
    sse_close(again + 0);
    sse_close(again + 1);
}
END_TEST

static char *get(const char *path, long *status)
{
    th_response_t res;
    char *url = th_url(&server, path);
    ck_assert_int_eq(th_http(&res, TH_HTTP1, NULL, url, NULL), 0);
    *status = res.status;
    char *body = strdup(res.body != NULL ? res.body : "");
    th_response_free(&res);
    free(url);
    return body;
}

static int capi_log_has(void *needle)
{
    long status;
    char *log = get("/capi/log", &status);
    int found = strstr(log, needle) != NULL;
    free(log);
    return found;
}

START_TEST(the_c_api_shares_the_listen_connection_and_unlisten_stops_the_callbacks)
{
    char *conf = th_fmt("listen: @PORT@\n"
                        "num-threads: 1\n"
                        "db.bind:\n"
                        "  url: \"@PG@?application_name=capi_@PORT@\"\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /events:\n"
                        "        db.listen: {channels: [orders], heartbeat: 0}\n"
                        "      /capi:\n"
                        "        c.handler: %s/t/listen_handlers.so:listen_capi\n",
                        th_build_dir());
    ck_assert_msg(th_server_start(&server, conf) == 0, "%s", th_server_log(&server));
    free(conf);
    long status;
    free(get("/capi/sub?channel=capi", &status));
    ck_assert_int_eq(status, 200);
    ck_assert(th_wait_until(capi_log_has, "READY capi\n", 10000));
    sse_t c;
    sse_open_http1(&c, server.port, "/events", 0);
    wait_listening(&c, 1);
    PGconn *pg = th_pg_connect(th_pg_url());
    notify(pg, "capi", "one");
    notify(pg, "orders", "for-the-path");
    notify(pg, "capi", "two\nlines");
    ck_assert(th_wait_until(capi_log_has, "NOTIFY capi two\nlines\n", 10000));
    ck_assert(capi_log_has("READY capi\nNOTIFY capi one\nNOTIFY capi two"));
    ck_assert(!capi_log_has("for-the-path"));
    ck_assert(sse_wait(&c, 1, all_have, "data: for-the-path\n\n", 10000));
    ck_assert_ptr_null(strstr(c.body, "data: one"));
    /* one connection carries both: the path's clients and the C subscription */
    ck_assert_int_eq(th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'capi_%d'", server.port), 1);
    free(get("/capi/unsub?channel=capi", &status));
    ck_assert_int_eq(status, 200);
    notify(pg, "capi", "after-unlisten");
    notify(pg, "orders", "marker");
    ck_assert(sse_wait(&c, 1, all_have, "data: marker\n\n", 10000));
    ck_assert(!capi_log_has("after-unlisten"));
    PQfinish(pg);
    sse_close(&c);
}
END_TEST

static void bad(const char *listen_line, const char *bind, const char *message)
{
    char *conf = th_fmt("listen: @PORT@\n"
                        "db.bind:\n"
                        "  %s\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /events:\n"
                        "        db.listen: %s\n",
                        bind, listen_line);
    char *out = NULL;
    int status = th_run_h2o_db("-t", conf, &out);
    ck_assert_msg(status == 1, "`%s` was accepted (%d): %s", listen_line, status, out);
    ck_assert_msg(strstr(out, message) != NULL, "`%s`: want `%s` in: %s", listen_line, message, out);
    ck_assert_msg(strstr(out, ".conf:8:") != NULL, "`%s`: no file:line in: %s", listen_line, out);
    free(out);
    free(conf);
}

START_TEST(config_errors_name_file_and_line)
{
    const char *pg = "url: postgresql://app@127.0.0.1:5432/app";
    bad("{channels: [orders]}", "url: sqlite://", "is not PostgreSQL");
    bad("{channels: [orders], key: nope}", pg, "no db.bind with key `nope`");
    bad("{channels: []}", pg, "name at least one channel");
    bad("{key: sa_main}", pg, "channels is required");
    bad("{channels: [\"\"]}", pg, "a channel is a name of 1 to 63");
    bad("{channels: [\"a\\nb\"]}", pg, "a channel is a name");
    bad("{channels: [orders, orders]}", pg, "listed twice");
    bad("{channels: [orders], colour: red}", pg, "unknown option `colour`");
    bad("{channels: [orders], heartbeat: -1}", pg, "heartbeat");
    bad("{channels: [orders], max-clients: 0}", pg, "max-clients");
    bad("{channels: [orders], max-backlog: 10}", pg, "max-backlog");
    bad("[orders]", pg, "cannot be a sequence");
}
END_TEST

START_TEST(the_example_config_passes_the_check)
{
    char *path = th_fmt("%s/conf.d/listen.conf", getenv("H2O_DB_SOURCE_DIR"));
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot read %s", path);
    char text[8192];
    size_t n = fread(text, 1, sizeof(text) - 3, f);
    fclose(f);
    text[n] = '\0';
    char *port = strstr(text, "port: 8080");
    ck_assert_msg(port != NULL, "conf.d/listen.conf no longer has `port: 8080`");
    /* `port: @PORT@`: the check binds the port, so a free one */
    memmove(port + 12, port + 10, strlen(port + 10) + 1);
    memcpy(port, "port: @PORT@", 12);
    char *out = NULL;
    int status = th_run_h2o_db("-t", text, &out);
    ck_assert_msg(status == 0, "h2o-db -t -c conf.d/listen.conf: %s", out);
    free(out);
    free(path);
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
    atexit(kill_server);
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("listen");
    ADD(s, every_client_gets_every_notify_in_order_over_one_listen_connection_per_thread, 120);
    ADD(s, multi_line_payloads_and_channel_narrowing, 60);
    ADD(s, beyond_max_clients_is_503, 60);
    ADD(s, a_client_that_stops_reading_is_dropped_and_the_others_keep_everything, 120);
    ADD(s, a_killed_listen_backend_is_replaced_and_clients_hear_reconnected, 60);
    ADD(s, heartbeats_come_and_a_stop_does_not_wait_for_the_streams, 60);
    ADD(s, a_database_down_at_the_first_client_is_listened_to_when_it_is_up_and_a_lost_one_is_found_again, 60);
    ADD(s, a_reload_ends_the_streams_and_new_threads_listen_anew, 60);
    ADD(s, the_c_api_shares_the_listen_connection_and_unlisten_stops_the_callbacks, 60);
    ADD(s, config_errors_name_file_and_line, 60);
    ADD(s, the_example_config_passes_the_check, 60);
    return th_run_suite(s);
}
