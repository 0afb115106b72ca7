/*
 * SIGHUP reloads the config: a path the new config adds answers, a broken config leaves the old
 * one serving (the log names file:line), and ten reloads under steady load (HTTP/1.1 keep-alive
 * and HTTP/2 over TLS, each request a PostgreSQL transaction) fail no request, commit every
 * transaction that was answered exactly once, and leave no more server connections than one
 * config's pools may hold.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "harness.h"

#define NUM_CLIENTS 4 /* 3 over HTTP/1.1, 1 over HTTP/2 (TLS) */

static th_server_t server;
static char *dir;
static int tls_port;

/* generation `gen`; `extra` adds lines under paths (6 spaces deep) */
static char *conf_text(int gen, const char *extra)
{
    return th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                  "listen: {host: 127.0.0.1, port: %d, ssl: {certificate-file: %s/c.crt, key-file: %s/c.key}}\n"
                  "num-threads: 2\n"
                  "db.bind: {url: \"@PG@\", pool: {max: 4}}\n"
                  "hosts:\n"
                  "  default:\n"
                  "    paths:\n"
                  "      /gen: {mruby.handler: 'proc {|env| [200, {}, [\"gen %d\"]] }'}\n"
                  "      /txn:\n"
                  "        mruby.handler: |\n"
                  "          proc do |env|\n"
                  "            db = H2O::DB.session(env)\n"
                  "            db.transaction do\n"
                  "              db.execute(\"INSERT INTO reload_t (gen) VALUES ($1)\", [%d])\n"
                  "              db.query(\"SELECT pg_sleep(0.002)\")\n"
                  "            end\n"
                  "            [200, {}, [\"ok\"]]\n"
                  "          end\n"
                  "%s",
                  tls_port, dir, dir, gen, gen, extra);
}

static void write_conf(const char *text)
{
    free(th_write_file(dir, "h2o-db.conf", text, server.port));
}

struct log_count {
    const char *what;
    int n;
};

static int log_reaches(void *arg)
{
    struct log_count *c = arg;
    return th_log_count(&server, c->what) >= c->n;
}

/* SIGHUP, then waits until the log says `what` for the n-th time */
static void hup_and_wait(const char *what, int n)
{
    ck_assert_int_eq(kill(server.pid, SIGHUP), 0);
    struct log_count c = {what, n};
    ck_assert_msg(th_wait_until(log_reaches, &c, 30000), "no %d× `%s` in the log:\n%s", n, what, th_server_log(&server));
}

static char *get_body(const char *path, long *status)
{
    th_response_t res;
    char *url = th_url(&server, path);
    ck_assert_int_eq(th_http(&res, TH_HTTP1, NULL, url, NULL), 0);
    *status = res.status;
    char *body = strdup(res.body);
    th_response_free(&res);
    free(url);
    return body;
}

static void start(void)
{
    th_require_pg();
    dir = th_tmpdir();
    char *cmd = th_fmt("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost "
                       "-keyout %s/c.key -out %s/c.crt >/dev/null 2>&1",
                       dir, dir);
    ck_assert_msg(system(cmd) == 0, "%s", cmd);
    free(cmd);
    th_pg("DROP TABLE IF EXISTS reload_t");
    th_pg("CREATE TABLE reload_t (id serial PRIMARY KEY, gen int NOT NULL)");
    tls_port = th_free_port();
    char *conf = conf_text(0, "");
    ck_assert_msg(th_server_start_in(&server, dir, conf) == 0, "%s", th_server_log(&server));
    free(conf);
}

START_TEST(a_reload_adds_what_the_new_config_has_and_a_broken_one_changes_nothing)
{
    start();
    long status;
    free(get_body("/new", &status));
    ck_assert_int_eq(status, 404);
    char *conf = conf_text(1, "      /new: {mruby.handler: 'proc {|env| [200, {}, [\"new path\"]] }'}\n");
    write_conf(conf);
    free(conf);
    hup_and_wait("h2o-db: reloaded", 1);
    char *body = get_body("/new", &status);
    ck_assert_int_eq(status, 200);
    ck_assert_str_eq(body, "new path");
    free(body);
    /* a broken config: the error is logged with file:line, and generation 1 keeps serving */
    write_conf("listen: {host: 127.0.0.1, port: @PORT@}\nhosts:\n  default:\n    paths:\n      /: {file.dir: [oops]}\n");
    hup_and_wait("reload failed", 1);
    ck_assert_msg(th_log_count(&server, "h2o-db.conf:5:") == 1, "%s", th_server_log(&server));
    body = get_body("/gen", &status);
    ck_assert_int_eq(status, 200);
    ck_assert_str_eq(body, "gen 1");
    free(body);
    ck_assert_int_eq(th_server_stop(&server, 15000), 0);
    free(dir);
}
END_TEST

struct client {
    pthread_t tid;
    int http2, stop;
    long ok, failed;
    char first_failure[256];
};

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    return size * n;
}

/* requests /txn one after another on one kept-alive connection (libcurl makes a new one when the
 * server closes it, as a browser does) until told to stop */
static void *client_main(void *arg)
{
    struct client *c = arg;
    CURL *curl = curl_easy_init();
    char *url = c->http2 ? th_fmt("https://localhost:%d/txn", tls_port) : th_url(&server, "/txn");
    char *ca = th_fmt("%s/c.crt", dir), *resolve = th_fmt("localhost:%d:127.0.0.1", tls_port);
    struct curl_slist *r = curl_slist_append(NULL, resolve);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_RESOLVE, r);
    curl_easy_setopt(curl, CURLOPT_CAINFO, ca);
    curl_easy_setopt(curl, CURLOPT_HTTP_VERSION, c->http2 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        long status = 0;
        CURLcode code = curl_easy_perform(curl);
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (code == CURLE_OK && status == 200) {
            ++c->ok;
        } else {
            if (c->failed++ == 0)
                snprintf(c->first_failure, sizeof(c->first_failure), "curl %d (%s), status %ld", code, curl_easy_strerror(code),
                         status);
        }
    }
    curl_easy_cleanup(curl);
    curl_slist_free_all(r);
    free(resolve);
    free(ca);
    free(url);
    return NULL;
}

START_TEST(ten_reloads_under_load_fail_no_request)
{
    start();
    struct client clients[NUM_CLIENTS] = {{0}};
    for (int i = 0; i < NUM_CLIENTS; ++i) {
        clients[i].http2 = i == NUM_CLIENTS - 1;
        pthread_create(&clients[i].tid, NULL, client_main, clients + i);
    }
    for (int gen = 1; gen <= 10; ++gen) {
        char *conf = conf_text(gen, "");
        write_conf(conf);
        free(conf);
        hup_and_wait("h2o-db: reloaded", gen);
        long status;
        char *body = get_body("/gen", &status), *want = th_fmt("gen %d", gen);
        ck_assert_int_eq(status, 200);
        ck_assert_str_eq(body, want);
        free(body);
        free(want);
    }
    long ok = 0;
    for (int i = 0; i < NUM_CLIENTS; ++i) {
        __atomic_store_n(&clients[i].stop, 1, __ATOMIC_RELAXED);
        pthread_join(clients[i].tid, NULL);
        ck_assert_msg(clients[i].failed == 0, "client %d (%s): %ld of %ld failed, first: %s", i,
                      clients[i].http2 ? "HTTP/2" : "HTTP/1.1", clients[i].failed, clients[i].failed + clients[i].ok,
                      clients[i].first_failure);
        ck_assert_msg(clients[i].ok > 0, "client %d got no answer", i);
        ok += clients[i].ok;
    }
    fprintf(stderr, "reload: %ld transactions answered over 4 clients during 10 reloads\n", ok);
    /* every answered transaction committed once; and the old configs' pools are closed */
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM reload_t"), ok);
    ck_assert_int_ge(th_pg_count("SELECT count(DISTINCT gen) FROM reload_t"), 2);
    long conns =
        th_pg_count("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()");
    ck_assert_msg(conns <= 2 * 4, "%ld server connections after 10 reloads (2 threads × max 4)", conns);
    ck_assert_int_eq(th_server_stop(&server, 15000), 0);
    free(dir);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    Suite *s = suite_create("reload");
    TCase *tc = tcase_create("reload");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, a_reload_adds_what_the_new_config_has_and_a_broken_one_changes_nothing);
    tcase_add_test(tc, ten_reloads_under_load_fail_no_request);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
