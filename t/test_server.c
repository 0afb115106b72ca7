/*
 * The h2o-db server over real sockets: file.dir, c.handler, handler chains,
 * 404s, HTTP/1.1 keep-alive, HTTP/2 (prior knowledge and upgrade), -t, and a
 * graceful SIGTERM.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "harness.h"

static const char *CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                          "num-threads: 2\n"
                          "hosts:\n"
                          "  default:\n"
                          "    paths:\n"
                          "      /static:\n"
                          "        file.dir: @DIR@/www\n"
                          "      /hello:\n"
                          "        c.handler: @BUILD@/t/test_handlers.so:hello\n"
                          "      /echo:\n"
                          "        c.handler: @BUILD@/t/test_handlers.so:echo\n"
                          "      /slow:\n"
                          "        c.handler: @BUILD@/t/test_handlers.so:slow\n"
                          "      /contexts:\n"
                          "        c.handler: @BUILD@/t/test_handlers.so:contexts\n"
                          "      /chain:\n"
                          "        c.handler: @BUILD@/t/test_handlers.so:decline\n"
                          "        file.dir: @DIR@/www\n";

static th_server_t server;

static void start(void)
{
    char *dir = th_tmpdir(), *www;
    ck_assert(asprintf(&www, "%s/www", dir) > 0);
    mkdir(www, 0755);
    free(th_write_file(www, "index.html", "<h1>static page</h1>\n", 0));
    free(www);
    int ret = th_server_start_in(&server, dir, CONF);
    ck_assert_msg(ret == 0, "server did not start: %s", th_server_log(&server));
    free(dir);
}

static void stop(void)
{
    int status = th_server_stop(&server, 15000);
    ck_assert_msg(status == 0, "exit status %d; log: %s", status, th_server_log(&server));
}

static void get(th_response_t *res, int version, const char *path)
{
    char *url = th_url(&server, path);
    ck_assert_msg(th_http(res, version, NULL, url, NULL) == 0, "GET %s failed (curl %d)", path, res->curl_error);
    free(url);
}

START_TEST(file_dir_over_http1_and_http2)
{
    start();
    int versions[] = {TH_HTTP1, TH_HTTP2, TH_HTTP2_UPGRADE};
    long expect_version[] = {11, 2, 2};
    for (int i = 0; i < 3; ++i) {
        th_response_t res;
        get(&res, versions[i], "/static/index.html");
        ck_assert_int_eq(res.status, 200);
        ck_assert_int_eq(res.http_version, expect_version[i]);
        ck_assert_str_eq(res.body, "<h1>static page</h1>\n");
        char *ct = th_header(&res, "content-type");
        ck_assert_ptr_nonnull(ct);
        ck_assert_str_eq(ct, "text/html");
        free(ct);
        th_response_free(&res);
    }
    stop();
}
END_TEST

START_TEST(c_handler_answers)
{
    start();
    th_response_t res;
    get(&res, TH_HTTP1, "/hello");
    ck_assert_int_eq(res.status, 200);
    ck_assert_str_eq(res.body, "hello from c.handler\n");
    char *len = th_header(&res, "content-length");
    ck_assert_ptr_nonnull(len);
    ck_assert_str_eq(len, "21");
    free(len);
    th_response_free(&res);

    get(&res, TH_HTTP2, "/echo/x?y=1");
    ck_assert_int_eq(res.status, 200);
    ck_assert_str_eq(res.body, "GET /echo/x?y=1 HTTP/2.0\n");
    th_response_free(&res);

    /* the optional SYMBOL_on_context_init hook ran once per worker thread */
    get(&res, TH_HTTP1, "/contexts");
    ck_assert_str_eq(res.body, "2\n");
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(handler_chain_falls_through_to_file_dir)
{
    start();
    th_response_t res;
    get(&res, TH_HTTP1, "/chain/index.html");
    ck_assert_int_eq(res.status, 200);
    ck_assert_str_eq(res.body, "<h1>static page</h1>\n");
    char *h = th_header(&res, "x-declined-by");
    ck_assert_ptr_nonnull(h);
    ck_assert_str_eq(h, "c.handler");
    free(h);
    th_response_free(&res);
    stop();
}
END_TEST

START_TEST(unknown_paths_are_404)
{
    start();
    const char *paths[] = {"/nothing-here", "/static/missing.html"};
    for (int i = 0; i < 2; ++i) {
        for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
            th_response_t res;
            get(&res, v, paths[i]);
            ck_assert_int_eq(res.status, 404);
            th_response_free(&res);
        }
    }
    stop();
}
END_TEST

static int read_response(int fd, char *buf, size_t cap, size_t *len, int count)
{
    /* reads until `count` complete "hello from c.handler" bodies arrived */
    *len = 0;
    double deadline = th_now_ms() + 5000;
    while (th_now_ms() < deadline) {
        ssize_t n = recv(fd, buf + *len, cap - *len - 1, 0);
        if (n <= 0)
            break;
        *len += n;
        buf[*len] = '\0';
        int seen = 0;
        for (const char *p = buf; (p = strstr(p, "hello from c.handler\n")) != NULL; p += 5)
            ++seen;
        if (seen >= count)
            return 0;
    }
    return -1;
}

START_TEST(http1_keep_alive_serves_several_requests_on_one_connection)
{
    start();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    const char *req = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    char buf[8192];
    size_t len;
    for (int i = 0; i < 3; ++i) {
        ck_assert(send(fd, req, strlen(req), 0) == (ssize_t)strlen(req));
        ck_assert_msg(read_response(fd, buf, sizeof(buf), &len, 1) == 0, "response %d missing: %s", i, buf);
        ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0, "%s", buf);
        ck_assert_msg(strstr(buf, "keep-alive") != NULL || strstr(buf, "Keep-Alive") != NULL, "%s", buf);
    }
    close(fd);
    stop();
}
END_TEST

START_TEST(check_mode_accepts_good_and_rejects_bad_configs)
{
    char *out;
    ck_assert_int_eq(th_run_h2o_db("-t", CONF, &out), 0);
    ck_assert_msg(strstr(out, "OK") != NULL, "%s", out);
    free(out);

    struct {
        const char *conf, *expect;
    } bad[] = {
        {"listen: 8080\nhosts:\n  default:\n    paths:\n      /:\n        no.such.directive: 1\n",
         "h2o-db.conf:6:9: unknown command: no.such.directive"},
        {"listen: 8080\nhosts:\n  default:\n    paths:\n      /:\n        file.dir: [a, b]\n",
         "h2o-db.conf:6:19: in command file.dir, argument cannot be a sequence"},
        {"listen: 70000\nhosts:\n  default:\n    paths:\n      /:\n        file.dir: .\n",
         "h2o-db.conf:1:9: in command listen, port must be a number between 1 and 65535"},
        {"listen: {host: 127.0.0.1, port: http}\nhosts:\n  default:\n    paths:\n      /:\n        file.dir: .\n",
         "h2o-db.conf:1:33: in command listen, port must be a number"},
        {"listen: 8080\nnum-threads: 8080\n", "h2o-db.conf:2:14: in command num-threads, num-threads must be between 1 and 1024"},
        {"listen: 8080\n", "h2o-db.conf:1:1: mandatory configuration directive `hosts` is missing"},
        {"listen: 8080\nhosts:\n  default:\n    paths:\n      /:\n        c.handler: nothing.so:x\n",
         "h2o-db.conf:6:20: in command c.handler, cannot load"},
        {"listen: 8080\nhosts:\n  default:\n    paths:\n      /:\n        c.handler: @BUILD@/t/test_handlers.so:no_such_symbol\n",
         "in command c.handler, symbol `no_such_symbol` not found"},
        {"listen: 8080\nhosts:\n  default:\n    paths:\n      /:\n        c.handler: nocolon\n",
         "h2o-db.conf:6:20: in command c.handler, expected FILE.so:SYMBOL"},
        {"listen: 8080\nhosts: [\n", "h2o-db.conf:3:1: YAML syntax error"},
        {"listen: 8080\nlisten: {port: 8081, colour: blue}\nhosts:\n  default:\n    paths:\n      /:\n        file.dir: .\n",
         "h2o-db.conf:2:22: in command listen, unknown attribute"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        int status = th_run_h2o_db("-t", bad[i].conf, &out);
        ck_assert_msg(status == 1, "config %zu: exit %d, output: %s", i, status, out);
        ck_assert_msg(strstr(out, bad[i].expect) != NULL, "config %zu: expected `%s` in: %s", i, bad[i].expect, out);
        free(out);
    }
}
END_TEST

/* a reverse proxy keeps its upstream connection alive: SIGTERM closes it with the rest, at once
 * (it used to wait for the 5 s guard meant for database connections, and said so) */
START_TEST(sigterm_closes_kept_alive_upstream_connections)
{
    start(); /* the upstream */
    th_server_t proxy;
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\nnum-threads: 1\n"
                        "hosts: {default: {paths: {/: {proxy.reverse.url: \"http://127.0.0.1:%d/\"}}}}\n",
                        server.port);
    char *dir = th_tmpdir();
    ck_assert_msg(th_server_start_in(&proxy, dir, conf) == 0, "%s", th_server_log(&proxy));
    th_response_t res;
    char *url = th_url(&proxy, "/hello");
    ck_assert_int_eq(th_http(&res, TH_HTTP1, NULL, url, NULL), 0);
    ck_assert_int_eq(res.status, 200);
    ck_assert_str_eq(res.body, "hello from c.handler\n");
    th_response_free(&res);
    ck_assert_int_eq(th_server_stop(&proxy, 15000), 0);
    char *log = th_server_log(&proxy);
    ck_assert_msg(strstr(log, "did not close in time") == NULL, "%s", log);
    free(log);
    stop();
    free(url);
    free(dir);
    free(conf);
}
END_TEST

/* libh2o's libuv flavour connects TCP only: h2o-db connects unix-socket upstreams itself */
START_TEST(reverse_proxy_to_a_unix_socket_upstream)
{
    char *up_dir = th_tmpdir(), *sock = th_fmt("%s/up.sock", up_dir);
    char *up_conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\nlisten: {type: unix, port: %s}\nnum-threads: 1\n"
                           "hosts: {default: {paths: {/hello: {c.handler: \"@BUILD@/t/test_handlers.so:hello\"}}}}\n",
                           sock);
    th_server_t up, proxy;
    ck_assert_msg(th_server_start_in(&up, up_dir, up_conf) == 0, "%s", th_server_log(&up));
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\nnum-threads: 2\n"
                        "hosts: {default: {paths: {/: {proxy.reverse.url: \"http://[unix:%s]/\"}}}}\n",
                        sock);
    char *dir = th_tmpdir();
    ck_assert_msg(th_server_start_in(&proxy, dir, conf) == 0, "%s", th_server_log(&proxy));
    char *url = th_url(&proxy, "/hello");
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        th_response_t res;
        ck_assert_int_eq(th_http(&res, version, NULL, url, NULL), 0);
        ck_assert_msg(res.status == 200, "%ld %s\n%s", res.status, res.body, th_server_log(&proxy));
        ck_assert_str_eq(res.body, "hello from c.handler\n");
        th_response_free(&res);
    }
    /* the upstream gone: 502, and the proxy still serves */
    ck_assert_int_eq(th_server_stop(&up, 15000), 0);
    th_response_t res;
    ck_assert_int_eq(th_http(&res, TH_HTTP1, NULL, url, NULL), 0);
    ck_assert_int_eq(res.status, 502);
    th_response_free(&res);
    ck_assert_int_eq(th_server_stop(&proxy, 15000), 0);
    free(url);
    free(dir);
    free(conf);
    free(up_conf);
    free(sock);
    free(up_dir);
}
END_TEST

/* `listen: PORT` where the only interface is loopback (a fresh network namespace, as H2O's own
 * test suite runs): getaddrinfo's AI_ADDRCONFIG would refuse 0.0.0.0 there */
START_TEST(listen_port_in_a_loopback_only_network)
{
    char *dir = th_tmpdir(),
         *conf = th_write_file(dir, "h2o-db.conf", "listen: 18791\nhosts: {default: {paths: {/: {file.dir: .}}}}\n", 0);
    char *cmd = th_fmt("unshare --net %s/h2o-db -t -c %s 2>&1", th_build_dir(), conf), out[4096] = "";
    FILE *p = popen(cmd, "r");
    out[fread(out, 1, sizeof(out) - 1, p)] = '\0';
    int status = pclose(p);
    ck_assert_msg(status == 0 && strstr(out, "is OK") != NULL, "%s: %s", cmd, out);
    free(cmd);
    free(conf);
    free(dir);
}
END_TEST

static int pid_in_file(void *path)
{
    FILE *fp = fopen(path, "r");
    long pid = 0;
    int ok = fp != NULL && fscanf(fp, "%ld", &pid) == 1 && pid > 0;
    if (fp != NULL)
        fclose(fp);
    return ok;
}

static int path_gone(void *path)
{
    return access(path, F_OK) != 0;
}

/* --mode=daemon (as h2o): the command returns, the daemon serves, writes its pid, reloads on
 * SIGHUP, and removes the pid file when SIGTERM stops it */
START_TEST(daemon_mode_detaches_and_keeps_its_pid_file)
{
    char *dir = th_tmpdir(), *pid_file = th_fmt("%s/h2o-db.pid", dir);
    int port = th_free_port();
    char *text = th_fmt("listen: {host: 127.0.0.1, port: %d}\npid-file: %s\nerror-log: %s/error.log\n"
                        "hosts: {default: {paths: {/hello: {c.handler: \"@BUILD@/t/test_handlers.so:hello\"}}}}\n",
                        port, pid_file, dir);
    char *conf = th_write_file(dir, "h2o-db.conf", text, port);
    char *cmd = th_fmt("%s/h2o-db --mode=daemon -c %s", th_build_dir(), conf);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_msg(th_wait_until(pid_in_file, pid_file, 10000), "no pid in %s", pid_file);
    char *url = th_fmt("http://127.0.0.1:%d/hello", port);
    th_response_t res;
    for (int round = 0; round < 2; ++round) {
        long pid = 0;
        FILE *fp = fopen(pid_file, "r");
        ck_assert(fp != NULL && fscanf(fp, "%ld", &pid) == 1);
        fclose(fp);
        ck_assert(pid != getpid());
        int answered = 0;
        for (int i = 0; i < 500 && !answered; ++i) { /* (bounded: until the port answers) */
            answered = th_http(&res, TH_HTTP1, NULL, url, NULL) == 0 && res.status == 200;
            th_response_free(&res);
            if (!answered)
                usleep(20000);
        }
        ck_assert_msg(answered, "the daemon does not answer (round %d)", round);
        ck_assert_int_eq(kill((pid_t)pid, round == 0 ? SIGHUP : SIGTERM), 0);
    }
    ck_assert_msg(th_wait_until(path_gone, pid_file, 15000), "the pid file is still there after SIGTERM");
    free(url);
    free(cmd);
    free(conf);
    free(text);
    free(pid_file);
    free(dir);
}
END_TEST

/* the config Debian's h2o package installs, unchanged (scripts/test finds it) */
START_TEST(debian_h2o_conf_passes_the_check)
{
    const char *path = getenv("H2O_DB_TEST_DEBIAN_H2O_CONF");
    ck_assert_msg(path != NULL, "H2O_DB_TEST_DEBIAN_H2O_CONF is not set: run the suite through scripts/test");
    FILE *fp = fopen(path, "r");
    ck_assert_msg(fp != NULL, "cannot read %s", path);
    char text[8192];
    size_t n = fread(text, 1, sizeof(text) - 1, fp);
    text[n] = '\0';
    fclose(fp);
    ck_assert_msg(strstr(text, "listen:") != NULL && strstr(text, "hosts:") != NULL, "%s is not Debian's h2o.conf", path);
    char *cmd = th_fmt("%s/h2o-db -t -c %s 2>&1", th_build_dir(), path), out[4096] = "";
    FILE *p = popen(cmd, "r");
    out[fread(out, 1, sizeof(out) - 1, p)] = '\0';
    int status = pclose(p);
    ck_assert_msg(status == 0, "h2o-db -t -c %s: %s", path, out);
    free(cmd);
}
END_TEST

START_TEST(a_bad_config_never_listens)
{
    /* the listen directive comes first, the error after it: nothing may have been bound */
    int port = th_free_port();
    char conf[512];
    snprintf(conf, sizeof(conf), "listen: {host: 127.0.0.1, port: %d}\nhosts:\n  default:\n    paths:\n      /:\n        bad: 1\n",
             port);
    char *out;
    ck_assert_int_eq(th_run_h2o_db("", conf, &out), 1);
    ck_assert_msg(strstr(out, "unknown command: bad") != NULL, "%s", out);
    free(out);
}
END_TEST

START_TEST(version_and_help)
{
    char *cmd, buf[512] = "";
    ck_assert(asprintf(&cmd, "'%s/h2o-db' --version", th_build_dir()) > 0);
    FILE *fp = popen(cmd, "r");
    ck_assert(fgets(buf, sizeof(buf), fp) != NULL);
    ck_assert_int_eq(pclose(fp), 0);
    ck_assert_msg(strncmp(buf, "h2o-db ", 7) == 0 && strstr(buf, "libh2o 2.2.5") != NULL, "%s", buf);
    free(cmd);
    ck_assert(asprintf(&cmd, "'%s/h2o-db' -h", th_build_dir()) > 0);
    fp = popen(cmd, "r");
    ck_assert(fgets(buf, sizeof(buf), fp) != NULL);
    ck_assert_int_eq(pclose(fp), 0);
    ck_assert_msg(strstr(buf, "Usage") != NULL, "%s", buf);
    free(cmd);
}
END_TEST

struct slow_call {
    char *url;
    th_response_t res;
};

static void *slow_request(void *arg)
{
    struct slow_call *c = arg;
    th_http(&c->res, TH_HTTP1, NULL, c->url, NULL);
    return NULL;
}

static int log_has(void *needle)
{
    char *log = th_server_log(&server);
    int found = strstr(log, needle) != NULL;
    free(log);
    return found;
}

/* what the server logs when its shutdown timeout (10 s) ran out with clients still connected */
#define FORCED_CLOSE "still open after the shutdown timeout"

START_TEST(sigterm_lets_the_request_in_flight_finish)
{
    start();
    struct slow_call call = {th_url(&server, "/slow")};
    pthread_t tid;
    pthread_create(&tid, NULL, slow_request, &call);
    ck_assert_msg(th_wait_until(log_has, "slow: the request is in the handler", 10000), "the request never reached the handler");
    int status = th_server_stop(&server, 15000);
    pthread_join(tid, NULL);
    ck_assert_int_eq(status, 0);
    ck_assert_msg(call.res.curl_error == 0, "curl error %d", call.res.curl_error);
    ck_assert_int_eq(call.res.status, 200);
    ck_assert_str_eq(call.res.body, "slow response done\n");
    /* and the server exited once it was answered, not at the shutdown timeout */
    ck_assert_msg(!log_has(FORCED_CLOSE), "the server waited for its shutdown timeout:\n%s", th_server_log(&server));
    th_response_free(&call.res);
    free(call.url);
}
END_TEST

static int file_has(void *arg)
{
    const char *const *what = arg; /* {path, text} */
    FILE *fp = fopen(what[0], "r");
    char buf[8192] = "";
    size_t n = fp != NULL ? fread(buf, 1, sizeof(buf) - 1, fp) : 0;
    buf[n] = '\0';
    if (fp != NULL)
        fclose(fp);
    return strstr(buf, what[1]) != NULL;
}

/* error-log: FILE, and `| COMMAND` as h2o spawns it (Debian's h2o.conf pipes it to rotatelogs) */
START_TEST(error_log_goes_to_a_file_or_a_command)
{
    for (int piped = 0; piped <= 1; ++piped) {
        char *dir = th_tmpdir(), *log = th_fmt("%s/error.log", dir);
        char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\nerror-log: \"%s%s\"\n"
                            "hosts: {default: {paths: {/: {file.dir: %s}}}}\n",
                            piped ? "| exec cat >> " : "", log, dir);
        th_server_t s;
        ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
        ck_assert_int_eq(th_server_stop(&s, 15000), 0);
        const char *what[] = {log, "h2o-db: received SIGTERM"};
        ck_assert_msg(th_wait_until(file_has, what, 10000), "%s has no SIGTERM line (piped: %d)", log, piped);
        free(conf);
        free(log);
        free(dir);
    }
}
END_TEST

START_TEST(sigterm_closes_idle_keep_alive_connections)
{
    start();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    const char *req = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    char buf[4096];
    size_t len;
    ck_assert(send(fd, req, strlen(req), 0) > 0);
    ck_assert(read_response(fd, buf, sizeof(buf), &len, 1) == 0);
    /* the connection now sits idle in keep-alive: shutdown must not wait for it (the server would
     * close it at its shutdown timeout, and say so) */
    ck_assert_int_eq(th_server_stop(&server, 15000), 0);
    ck_assert_msg(!log_has(FORCED_CLOSE), "the idle connection was closed only at the shutdown timeout:\n%s",
                  th_server_log(&server));
    close(fd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("http");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, file_dir_over_http1_and_http2);
    tcase_add_test(tc, c_handler_answers);
    tcase_add_test(tc, handler_chain_falls_through_to_file_dir);
    tcase_add_test(tc, unknown_paths_are_404);
    tcase_add_test(tc, http1_keep_alive_serves_several_requests_on_one_connection);
    tcase_add_test(tc, check_mode_accepts_good_and_rejects_bad_configs);
    tcase_add_test(tc, a_bad_config_never_listens);
    tcase_add_test(tc, debian_h2o_conf_passes_the_check);
    tcase_add_test(tc, listen_port_in_a_loopback_only_network);
    tcase_add_test(tc, daemon_mode_detaches_and_keeps_its_pid_file);
    tcase_add_test(tc, sigterm_closes_kept_alive_upstream_connections);
    tcase_add_test(tc, reverse_proxy_to_a_unix_socket_upstream);
    tcase_add_test(tc, version_and_help);
    tcase_add_test(tc, sigterm_lets_the_request_in_flight_finish);
    tcase_add_test(tc, sigterm_closes_idle_keep_alive_connections);
    tcase_add_test(tc, error_log_goes_to_a_file_or_a_command);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
