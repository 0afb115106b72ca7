/*
 * TLS listeners and the rest of h2o.conf's `listen`, over real sockets: HTTPS with HTTP/1.1 and
 * HTTP/2 chosen by ALPN, SNI among two hosts with two certificates, session resumption across
 * the worker threads, every TLS config error (file:line), a host-level listen, a unix socket,
 * the PROXY protocol, max-connections and the status page's connection count.
 * Certificates are made for each run with the openssl command.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "harness.h"

/* a self-signed certificate for `name` in DIR/NAME.crt and DIR/NAME.key */
static void make_cert(const char *dir, const char *name)
{
    char *cmd = th_fmt("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=%s -addext subjectAltName=DNS:%s "
                       "-keyout %s/%s.key -out %s/%s.crt >/dev/null 2>&1",
                       name, name, dir, name, dir, name);
    ck_assert_msg(system(cmd) == 0, "openssl could not make a certificate: %s", cmd);
    free(cmd);
}

struct fetched {
    char body[4096];
    size_t len;
    long status, version;
    CURLcode code;
};

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    struct fetched *f = arg;
    size_t len = size * n, room = sizeof(f->body) - 1 - f->len;
    memcpy(f->body + f->len, p, len < room ? len : room);
    f->len += len < room ? len : room;
    f->body[f->len] = '\0';
    return len;
}

/* GET https://NAME:PORT/PATH, NAME resolving to 127.0.0.1, trusting only `ca`; version 1 or 2. */
static struct fetched https_get(const char *name, int port, const char *path, const char *ca, int version)
{
    struct fetched f = {.len = 0};
    CURL *c = curl_easy_init();
    char *url = th_fmt("https://%s:%d%s", name, port, path), *resolve = th_fmt("%s:%d:127.0.0.1", name, port);
    struct curl_slist *r = curl_slist_append(NULL, resolve);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_RESOLVE, r);
    curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, version == 2 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    f.code = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f.status);
    curl_easy_getinfo(c, CURLINFO_HTTP_VERSION, &f.version);
    curl_easy_cleanup(c);
    curl_slist_free_all(r);
    free(url);
    free(resolve);
    return f;
}

static char *tls_conf(const char *dir, const char *extra)
{
    return th_fmt("listen: {host: 127.0.0.1, port: @PORT@, ssl: {certificate-file: %s/a.test.crt, key-file: %s/a.test.key}}\n"
                  "num-threads: 2\n"
                  "%s"
                  "hosts:\n"
                  "  \"a.test:@PORT@\":\n"
                  "    paths:\n"
                  "      /: {file.dir: %s/wa}\n"
                  "      /ctx: {c.handler: \"@BUILD@/t/test_handlers.so:context_id\"}\n",
                  dir, dir, extra, dir);
}

static char *tls_dir(void)
{
    char *dir = th_tmpdir(), *wa = th_fmt("%s/wa", dir), *wb = th_fmt("%s/wb", dir);
    make_cert(dir, "a.test");
    make_cert(dir, "b.test");
    mkdir(wa, 0755);
    mkdir(wb, 0755);
    free(th_write_file(wa, "index.html", "host a\n", 0));
    free(th_write_file(wb, "index.html", "host b\n", 0));
    free(wa);
    free(wb);
    return dir;
}

START_TEST(https_speaks_http1_and_http2_by_alpn)
{
    char *dir = tls_dir(), *conf = tls_conf(dir, ""), *ca = th_fmt("%s/a.test.crt", dir);
    th_server_t s;
    ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
    for (int v = 1; v <= 2; ++v) {
        struct fetched f = https_get("a.test", s.port, "/", ca, v);
        ck_assert_msg(f.code == CURLE_OK, "HTTP/%d over TLS: %s", v, curl_easy_strerror(f.code));
        ck_assert_int_eq(f.status, 200);
        ck_assert_int_eq(f.version, v == 2 ? CURL_HTTP_VERSION_2_0 : CURL_HTTP_VERSION_1_1);
        ck_assert_str_eq(f.body, "host a\n");
    }
    /* a certificate the client does not trust is refused: the server really presents a.test's */
    char *other = th_fmt("%s/b.test.crt", dir);
    ck_assert_int_eq(https_get("a.test", s.port, "/", other, 2).code, CURLE_PEER_FAILED_VERIFICATION);
    ck_assert_int_eq(th_server_stop(&s, 15000), 0);
    free(other);
    free(ca);
    free(conf);
    free(dir);
}
END_TEST

START_TEST(sni_gives_each_host_its_certificate)
{
    char *dir = tls_dir(), *base = tls_conf(dir, "");
    char *conf =
        th_fmt("%s  \"b.test:@PORT@\":\n"
               "    listen: {host: 127.0.0.1, port: @PORT@, ssl: {certificate-file: %s/b.test.crt, key-file: %s/b.test.key}}\n"
               "    paths: {/: {file.dir: %s/wb}}\n",
               base, dir, dir, dir);
    char *ca_a = th_fmt("%s/a.test.crt", dir), *ca_b = th_fmt("%s/b.test.crt", dir);
    th_server_t s;
    ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
    for (int v = 1; v <= 2; ++v) {
        struct fetched a = https_get("a.test", s.port, "/", ca_a, v), b = https_get("b.test", s.port, "/", ca_b, v);
        ck_assert_msg(a.code == CURLE_OK && b.code == CURLE_OK, "a: %s, b: %s", curl_easy_strerror(a.code),
                      curl_easy_strerror(b.code));
        ck_assert_str_eq(a.body, "host a\n");
        ck_assert_str_eq(b.body, "host b\n");
        /* and not the other way round */
        ck_assert_int_eq(https_get("b.test", s.port, "/", ca_a, v).code, CURLE_PEER_FAILED_VERIFICATION);
    }
    ck_assert_int_eq(th_server_stop(&s, 15000), 0);
    free(ca_a);
    free(ca_b);
    free(conf);
    free(base);
    free(dir);
}
END_TEST

/* One HTTPS request on a new connection with OpenSSL; returns the body (after the headers), malloc'd;
 * *reused says whether `session` was resumed; *out gets the session for the next one. */
static const char *proxy_preface; /* sent before the handshake when set (a PROXY line) */

static char *tls_request(SSL_CTX *ctx, int port, const char *path, SSL_SESSION *session, int *reused, SSL_SESSION **out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    if (proxy_preface != NULL)
        ck_assert(write(fd, proxy_preface, strlen(proxy_preface)) == (ssize_t)strlen(proxy_preface));
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "a.test");
    if (session != NULL)
        SSL_set_session(ssl, session);
    ck_assert_msg(SSL_connect(ssl) == 1, "handshake failed: %s", ERR_reason_error_string(ERR_get_error()));
    char *req = th_fmt("GET %s HTTP/1.1\r\nHost: a.test:%d\r\nConnection: close\r\n\r\n", path, port);
    ck_assert_int_eq(SSL_write(ssl, req, (int)strlen(req)), (int)strlen(req));
    char buf[8192];
    size_t len = 0;
    int n;
    while (len < sizeof(buf) - 1 && (n = SSL_read(ssl, buf + len, (int)(sizeof(buf) - 1 - len))) > 0)
        len += n;
    buf[len] = '\0';
    *reused = SSL_session_reused(ssl);
    if (out != NULL)
        *out = SSL_get1_session(ssl); /* (TLS 1.3's tickets arrived with the response) */
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    free(req);
    char *body = strstr(buf, "\r\n\r\n");
    ck_assert_msg(strncmp(buf, "HTTP/1.1 200", 12) == 0 && body != NULL, "response: %s", buf);
    return strdup(body + 4);
}

static void resume_on_both_threads(int tls_version)
{
    char *dir = tls_dir(), *conf = tls_conf(dir, ""), *ca = th_fmt("%s/a.test.crt", dir);
    th_server_t s;
    ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, tls_version);
    SSL_CTX_set_max_proto_version(ctx, tls_version);
    SSL_CTX_load_verify_locations(ctx, ca, NULL);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int reused;
    SSL_SESSION *session;
    char *first = tls_request(ctx, s.port, "/ctx", NULL, &reused, &session);
    ck_assert(!reused);
    /* new connections land on either thread (SO_REUSEPORT): resume until both threads did */
    char *other = NULL;
    for (int i = 0; i < 64 && other == NULL; ++i) {
        char *ctx_id = tls_request(ctx, s.port, "/ctx", session, &reused, NULL);
        ck_assert_msg(reused, "connection %d was not resumed (served by %s)", i, ctx_id);
        if (strcmp(ctx_id, first) != 0)
            other = ctx_id;
        else
            free(ctx_id);
    }
    ck_assert_msg(other != NULL, "64 connections all went to one thread");
    SSL_SESSION_free(session);
    SSL_CTX_free(ctx);
    ck_assert_int_eq(th_server_stop(&s, 15000), 0);
    free(other);
    free(first);
    free(ca);
    free(conf);
    free(dir);
}

START_TEST(tls12_sessions_resume_on_every_thread)
{
    resume_on_both_threads(TLS1_2_VERSION);
}
END_TEST

START_TEST(tls13_sessions_resume_on_every_thread)
{
    resume_on_both_threads(TLS1_3_VERSION);
}
END_TEST

/* a TLS listener behind a load balancer: the PROXY line comes before the ClientHello, and the
 * access log shows the client's address from it */
START_TEST(proxy_protocol_on_a_tls_listener)
{
    char *dir = tls_dir(), *log = th_fmt("%s/access.log", dir), *ca = th_fmt("%s/a.test.crt", dir);
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@, proxy-protocol: ON, ssl: {certificate-file: %s/a.test.crt, "
                        "key-file: %s/a.test.key}}\naccess-log: {path: %s, format: \"%%h %%U\"}\n"
                        "hosts: {\"a.test:@PORT@\": {paths: {/: {file.dir: %s/wa}}}}\n",
                        dir, dir, log, dir);
    th_server_t s;
    ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(ctx, ca, NULL);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int reused;
    proxy_preface = "PROXY TCP4 192.0.2.9 127.0.0.1 40000 443\r\n";
    char *body = tls_request(ctx, s.port, "/", NULL, &reused, NULL);
    proxy_preface = NULL;
    ck_assert_str_eq(body, "host a\n");
    SSL_CTX_free(ctx);
    ck_assert_int_eq(th_server_stop(&s, 15000), 0);
    FILE *fp = fopen(log, "r");
    char line[256] = "";
    ck_assert(fp != NULL && fgets(line, sizeof(line), fp) != NULL);
    fclose(fp);
    ck_assert_str_eq(line, "192.0.2.9 /\n");
    free(body);
    free(conf);
    free(ca);
    free(log);
    free(dir);
}
END_TEST

/* Two servers one after the other on `conf` (in dir, with a.test's certificate), one TLS 1.2
 * connection to each: the second offers the first's session (a ticket, or a session id when
 * tickets = 0); whether it resumed must be expect_reused. */
static void restart_and_resume(const char *dir, const char *conf, int tickets, int expect_reused, int (*stored)(void *),
                               void *stored_arg)
{
    char *ca = th_fmt("%s/a.test.crt", dir);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if (!tickets)
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_load_verify_locations(ctx, ca, NULL);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_SESSION *session = NULL;
    for (int round = 0; round < 2; ++round) {
        th_server_t s;
        ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
        int reused;
        char *body = tls_request(ctx, s.port, "/", session, &reused, round == 0 ? &session : NULL);
        ck_assert_str_eq(body, "host a\n");
        ck_assert_msg(reused == (round == 1 && expect_reused), "round %d: reused %d\n%s", round, reused, th_server_log(&s));
        /* a store written asynchronously (memcached) has the session before the server stops */
        if (round == 0 && stored != NULL)
            ck_assert_msg(th_wait_until(stored, stored_arg, 10000), "the session never reached the store");
        ck_assert_int_eq(th_server_stop(&s, 15000), 0);
        free(body);
    }
    SSL_SESSION_free(session);
    SSL_CTX_free(ctx);
    free(ca);
}

static int port_answers(void *arg)
{
    return th_port_accepts(*(int *)arg);
}

/* Whether the memcached on port *arg holds an item (its `stats`: curr_items). */
static int memc_has_items(void *arg)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(*(int *)arg), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char buf[4096];
    size_t len = 0;
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || write(fd, "stats\r\n", 7) != 7) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    ssize_t n;
    while (len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0) {
        len += n;
        buf[len] = '\0';
        if (strstr(buf, "END\r\n") != NULL)
            break;
    }
    close(fd);
    buf[len] = '\0';
    const char *p = strstr(buf, "STAT curr_items ");
    return p != NULL && atoi(p + 16) > 0;
}

/* cache-store: memcached (the suite's own memcached on a free port): a session made by one server
 * resumes on the next one started after it (the cache outlives the process) */
START_TEST(sessions_resume_across_restarts_through_memcached)
{
    char *dir = tls_dir();
    int memc_port = th_free_port();
    char *cmd = th_fmt("memcached -u nobody -l 127.0.0.1 -p %d >/dev/null 2>&1 & echo $!", memc_port);
    FILE *p = popen(cmd, "r");
    long memc_pid = 0;
    ck_assert(p != NULL && fscanf(p, "%ld", &memc_pid) == 1);
    pclose(p);
    ck_assert_msg(th_wait_until(port_answers, &memc_port, 10000), "memcached (Debian's package) did not start: %s", cmd);
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@, ssl: {certificate-file: %s/a.test.crt, key-file: %s/a.test.key}}\n"
                        "ssl-session-resumption: {mode: cache, cache-store: memcached, memcached: {host: 127.0.0.1, port: %d}}\n"
                        "hosts: {\"a.test:@PORT@\": {paths: {/: {file.dir: %s/wa}}}}\n",
                        dir, dir, memc_port, dir);
    restart_and_resume(dir, conf, 0, 1, memc_has_items, &memc_port);
    kill((pid_t)memc_pid, SIGTERM);
    free(cmd);
    free(conf);
    free(dir);
}
END_TEST

/* ticket-store: file (h2o's format): a ticket sealed by one server opens on the next one started
 * with the same file; with a file that does not exist no ticket ever opens */
static void resume_across_restarts_with_ticket_file(const char *file_text, int expect_reused)
{
    char *dir = tls_dir(), *keys = th_fmt("%s/tickets.yaml", dir);
    if (file_text != NULL)
        free(th_write_file(dir, "tickets.yaml", file_text, 0));
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@, ssl: {certificate-file: %s/a.test.crt, key-file: %s/a.test.key}}\n"
                        "ssl-session-resumption: {mode: ticket, ticket-store: file, ticket-file: %s}\n"
                        "hosts: {\"a.test:@PORT@\": {paths: {/: {file.dir: %s/wa}}}}\n",
                        dir, dir, keys, dir);
    restart_and_resume(dir, conf, 1, expect_reused, NULL, NULL);
    free(conf);
    free(keys);
    free(dir);
}

START_TEST(ticket_keys_from_a_file_resume_across_restarts)
{
    /* aes-128-cbc's 16-byte key and sha1's 64-byte HMAC key, random for this run */
    unsigned char raw[16 + 80];
    ck_assert(RAND_bytes(raw, sizeof(raw)) == 1);
    char hex[2 * sizeof(raw) + 1];
    for (size_t i = 0; i < sizeof(raw); ++i)
        snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    char *text = th_fmt("- name: %.32s\n  cipher: aes-128-cbc\n  hash: sha1\n  key: %s\n  not_before: 0\n"
                        "  not_after: 18446744073709551615\n",
                        hex, hex + 32);
    resume_across_restarts_with_ticket_file(text, 1);
    resume_across_restarts_with_ticket_file(NULL, 0);
    free(text);
}
END_TEST

/* `h2o-db -t` on the config with this ssl mapping: exit 1, a message naming line `line` and saying `says` */
static void refused(const char *dir, const char *ssl, int line, const char *says)
{
    char *conf = th_fmt("num-threads: 1\n"
                        "listen:\n"
                        "  port: @PORT@\n"
                        "  ssl: %s\n"
                        "hosts: {default: {paths: {/: {file.dir: %s}}}}\n",
                        ssl, dir),
         *out = NULL;
    ck_assert_int_eq(th_run_h2o_db("-t", conf, &out), 1);
    char *where = th_fmt("h2o-db.conf:%d:", line);
    ck_assert_msg(strstr(out, where) != NULL && strstr(out, says) != NULL, "for ssl: %s\nwanted line %d and `%s`, got: %s", ssl,
                  line, says, out);
    free(where);
    free(out);
    free(conf);
}

START_TEST(every_tls_config_error_names_file_and_line)
{
    char *dir = tls_dir();
    char *a = th_fmt("certificate-file: %s/a.test.crt, key-file: %s/a.test.key", dir, dir);
    char *s;
    refused(dir, "{key-file: x}", 4, "mandatory property `certificate-file` is missing");
    refused(dir, (s = th_fmt("{certificate-file: %s/a.test.crt}", dir)), 4, "`key-file` is missing");
    free(s);
    refused(dir, (s = th_fmt("{certificate-file: %s/none.crt, key-file: %s/a.test.key}", dir, dir)), 4,
            "cannot read the certificate-file");
    free(s);
    refused(dir, (s = th_fmt("{certificate-file: %s/a.test.crt, key-file: %s/b.test.key}", dir, dir)), 4, "does not match");
    free(s);
    refused(dir, (s = th_fmt("{certificate-file: %s/wa/index.html, key-file: %s/a.test.key}", dir, dir)), 4,
            "cannot load the certificate");
    free(s);
    refused(dir, (s = th_fmt("{%s, minimum-version: TLSv9}", a)), 4, "unknown protocol version `TLSv9`");
    free(s);
    refused(dir, (s = th_fmt("{%s, cipher-suite: NO-SUCH-CIPHER}", a)), 4, "OpenSSL knows no cipher");
    free(s);
    refused(dir, (s = th_fmt("{%s, cipher-preference: random}", a)), 4, "`client` or `server`");
    free(s);
    refused(dir, (s = th_fmt("{%s, dh-file: %s/wa/index.html}", a, dir)), 4, "cannot load DH parameters");
    free(s);
    refused(dir, (s = th_fmt("{%s, colour: blue}", a)), 4, "unknown property `colour`");
    free(s);
    refused(dir, "ON", 4, "`ssl` must be a mapping");
    /* one address cannot serve both HTTP and HTTPS */
    char *conf =
             th_fmt("listen: {port: @PORT@, ssl: {%s}}\nlisten: @PORT@\nhosts: {default: {paths: {/: {file.dir: %s}}}}\n", a, dir),
         *out = NULL;
    ck_assert_int_eq(th_run_h2o_db("-t", conf, &out), 1);
    ck_assert_msg(strstr(out, "h2o-db.conf:2:") != NULL && strstr(out, "it cannot serve both") != NULL, "%s", out);
    free(out);
    free(conf);
    /* and a good one passes, with the options h2o.conf uses */
    conf = th_fmt("listen: {port: @PORT@, ssl: {%s, minimum-version: TLSv1.2, cipher-suite: \"ECDHE+AESGCM\", "
                  "cipher-preference: server}}\nhosts: {default: {paths: {/: {file.dir: %s}}}}\n",
                  a, dir);
    ck_assert_msg(th_run_h2o_db("-t", conf, &out) == 0, "%s", out);
    free(out);
    free(conf);
    free(a);
    free(dir);
}
END_TEST

/* A raw HTTP/1.1 exchange on `fd`: sends the request, returns what came back until the server closed. */
static char *exchange(int fd, const char *request)
{
    ck_assert(write(fd, request, strlen(request)) == (ssize_t)strlen(request));
    char buf[8192];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
        len += n;
    buf[len] = '\0';
    close(fd);
    return strdup(buf);
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    return fd;
}

START_TEST(host_level_listen_unix_socket_and_proxy_protocol)
{
    char *dir = tls_dir();
    int own = th_free_port(), proxied = th_free_port();
    /* (a key repeats, as in h2o.conf) */
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "listen: {type: unix, port: %s/h2o.sock, permission: 600}\n"
                        "listen: {host: 127.0.0.1, port: %d, proxy-protocol: ON}\n"
                        "access-log: {path: %s/access.log, format: \"%%h %%U\"}\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths: {/: {file.dir: %s/wa}}\n"
                        "  only-b:\n"
                        "    listen: {host: 127.0.0.1, port: %d}\n"
                        "    paths: {/: {file.dir: %s/wb}}\n",
                        dir, proxied, dir, dir, own, dir);
    th_server_t s;
    ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
    /* the host-level port serves its host whatever the Host header says; the global one the first host */
    char *r = exchange(tcp_connect(own), "GET / HTTP/1.1\r\nHost: default\r\nConnection: close\r\n\r\n");
    ck_assert_msg(strstr(r, "host b\n") != NULL, "%s", r);
    free(r);
    r = exchange(tcp_connect(s.port), "GET / HTTP/1.1\r\nHost: only-b\r\nConnection: close\r\n\r\n");
    ck_assert_msg(strstr(r, "host b\n") != NULL, "the global listener serves every host: %s", r);
    free(r);
    /* the unix socket, with its mode */
    char *sock = th_fmt("%s/h2o.sock", dir);
    struct stat st;
    ck_assert(stat(sock, &st) == 0 && S_ISSOCK(st.st_mode));
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    strcpy(sun.sun_path, sock);
    ck_assert(connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0);
    r = exchange(fd, "GET / HTTP/1.1\r\nHost: default\r\nConnection: close\r\n\r\n");
    ck_assert_msg(strstr(r, "HTTP/1.1 200") != NULL && strstr(r, "host a\n") != NULL, "%s", r);
    free(r);
    /* the PROXY line gives the client's address (the access log shows it) */
    r = exchange(tcp_connect(proxied), "PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n"
                                       "GET /proxied HTTP/1.1\r\nHost: default\r\nConnection: close\r\n\r\n");
    free(r);
    ck_assert_int_eq(th_server_stop(&s, 15000), 0);
    char *log = th_fmt("%s/access.log", dir);
    FILE *fp = fopen(log, "r");
    char line[256], found = 0;
    while (fp != NULL && fgets(line, sizeof(line), fp) != NULL)
        found |= strcmp(line, "192.0.2.7 /proxied\n") == 0;
    ck_assert_msg(found, "no `192.0.2.7 /proxied` in %s", log);
    fclose(fp);
    free(log);
    free(sock);
    free(conf);
    free(dir);
}
END_TEST

/* Sends `request` on the kept-alive `fd` and reads until `marker` arrives; returns what came, malloc'd. */
static char *ask(int fd, const char *request, const char *marker)
{
    ck_assert(write(fd, request, strlen(request)) == (ssize_t)strlen(request));
    char buf[8192];
    size_t len = 0;
    ssize_t n;
    buf[0] = '\0';
    while (strstr(buf, marker) == NULL && len < sizeof(buf) - 1 && (n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
        buf[len += n] = '\0';
    ck_assert_msg(strstr(buf, marker) != NULL, "no `%s` in: %s", marker, buf);
    return strdup(buf);
}

START_TEST(max_connections_holds_the_next_connection_until_one_closes)
{
    char *dir = tls_dir();
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\nmax-connections: 3\nnum-threads: 2\n"
                        "hosts: {default: {paths: {/: {file.dir: %s/wa}, /s: {status: ON}}}}\n",
                        dir);
    th_server_t s;
    ck_assert_msg(th_server_start_in(&s, dir, conf) == 0, "%s", th_server_log(&s));
    const char *get = "GET / HTTP/1.1\r\nHost: default\r\n\r\n", *status = "GET /s/json HTTP/1.1\r\nHost: default\r\n\r\n";
    /* three kept-alive connections, served: the limit */
    int held[3];
    for (int i = 0; i < 3; ++i) {
        held[i] = tcp_connect(s.port);
        free(ask(held[i], get, "host a\n"));
    }
    char *json = ask(held[2], status, "num-sessions");
    ck_assert_msg(strstr(json, "\"connections\": 3,") != NULL && strstr(json, "\"max-connections\": 3,") != NULL, "%s", json);
    free(json);
    /* a fourth connects and asks: it is not taken while three are open */
    int next = tcp_connect(s.port);
    ck_assert(write(next, get, strlen(get)) == (ssize_t)strlen(get));
    json = ask(held[2], status, "num-sessions");
    ck_assert_msg(strstr(json, "\"connections\": 3,") != NULL, "%s", json);
    free(json);
    /* one closes: the fourth is served */
    close(held[0]);
    free(ask(next, "", "host a\n"));
    close(next);
    close(held[1]);
    close(held[2]);
    ck_assert_int_eq(th_server_stop(&s, 15000), 0);
    free(conf);
    free(dir);
}
END_TEST

int main(void)
{
    SSL_library_init();
    curl_global_init(CURL_GLOBAL_ALL);
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("tls");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, https_speaks_http1_and_http2_by_alpn);
    tcase_add_test(tc, sni_gives_each_host_its_certificate);
    tcase_add_test(tc, tls12_sessions_resume_on_every_thread);
    tcase_add_test(tc, tls13_sessions_resume_on_every_thread);
    tcase_add_test(tc, every_tls_config_error_names_file_and_line);
    tcase_add_test(tc, proxy_protocol_on_a_tls_listener);
    tcase_add_test(tc, sessions_resume_across_restarts_through_memcached);
    tcase_add_test(tc, ticket_keys_from_a_file_resume_across_restarts);
    tcase_add_test(tc, host_level_listen_unix_socket_and_proxy_protocol);
    tcase_add_test(tc, max_connections_holds_the_next_connection_until_one_closes);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
