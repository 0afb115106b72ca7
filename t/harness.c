/*
 * Test harness: see harness.h.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "harness.h"

double th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

double th_time_factor(void)
{
    const char *f = getenv("H2O_DB_TEST_TIME_FACTOR");
    double v = f != NULL ? strtod(f, NULL) : 1;
    return v >= 1 ? v : 1;
}

int th_wait_until(int (*cond)(void *), void *arg, int timeout_ms)
{
    double deadline = th_now_ms() + timeout_ms * th_time_factor();
    for (;;) {
        if (cond(arg))
            return 1;
        if (th_now_ms() > deadline)
            return 0;
        usleep(20000);
    }
}

char *th_tmpdir(void)
{
    const char *base = getenv("H2O_DB_TEST_TMP");
    char templ[4096];
    snprintf(templ, sizeof(templ), "%s/h2o-db-test-XXXXXX", base != NULL ? base : "/tmp");
    char *dir = mkdtemp(templ);
    ck_assert_msg(dir != NULL, "mkdtemp: %s", strerror(errno));
    chmod(dir, 0755);
    return strdup(dir);
}

const char *th_build_dir(void)
{
    const char *d = getenv("H2O_DB_BUILD_DIR");
#ifdef TH_BUILD_DIR
    if (d == NULL)
        d = TH_BUILD_DIR;
#endif
    return d != NULL ? d : ".";
}

const char *th_pg_url(void)
{
    const char *u = getenv("H2O_DB_TEST_PG");
    return u != NULL && *u ? u : NULL;
}

const char *th_pg_url2(void)
{
    const char *u = getenv("H2O_DB_TEST_PG2");
    return u != NULL && *u ? u : NULL;
}

struct strbuf {
    char *s;
    size_t len, cap;
};

static void sb_add(struct strbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

char *th_expand(const char *text, const char *dir, int port)
{
    struct strbuf b = {0};
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct {
        const char *name, *value;
    } vars[] = {{"@PORT@", portstr},
                {"@DIR@", dir},
                {"@BUILD@", th_build_dir()},
                {"@PG@", th_pg_url() != NULL ? th_pg_url() : "postgresql://no-test-database"},
                {"@PGDB2@", th_pg_url2() != NULL ? th_pg_url2() : "postgresql://no-test-database"}};
    sb_add(&b, "", 0);
    for (const char *p = text; *p;) {
        size_t i;
        for (i = 0; i < sizeof(vars) / sizeof(vars[0]); ++i) {
            size_t n = strlen(vars[i].name);
            if (strncmp(p, vars[i].name, n) == 0) {
                sb_add(&b, vars[i].value, strlen(vars[i].value));
                p += n;
                break;
            }
        }
        if (i == sizeof(vars) / sizeof(vars[0]))
            sb_add(&b, p++, 1);
    }
    return b.s;
}

char *th_write_file(const char *dir, const char *name, const char *text, int port)
{
    char *path;
    ck_assert(asprintf(&path, "%s/%s", dir, name) > 0);
    char *expanded = th_expand(text, dir, port);
    FILE *fp = fopen(path, "w");
    ck_assert_msg(fp != NULL, "%s: %s", path, strerror(errno));
    fputs(expanded, fp);
    fclose(fp);
    free(expanded);
    return path;
}

static int port_is_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    close(fd);
    return ok;
}

/* Suites run side by side, and a port one of them picked as free (for its server, or as a port
 * nobody listens on) must not be picked by another meanwhile: every port handed out is reserved
 * for the whole run by a file in $H2O_DB_SERVERS_DIR/ports (created with O_EXCL, so across
 * processes). Ports come from below the kernel's ephemeral range, where it picks ports for
 * outgoing connections and for the database servers of scripts/test. */
int th_free_port(void)
{
    enum { LOW = 12000, COUNT = 20000 };
    const char *dir = getenv("H2O_DB_SERVERS_DIR");
    char path[1200];
    if (dir != NULL) {
        snprintf(path, sizeof(path), "%s/ports", dir);
        mkdir(path, 0777);
    }
    unsigned start = (unsigned)getpid() * 7919u + (unsigned)th_now_ms();
    for (unsigned i = 0; i < COUNT; ++i) {
        int port = LOW + (int)((start + i) % COUNT);
        if (!port_is_free(port))
            continue;
        if (dir != NULL) {
            snprintf(path, sizeof(path), "%s/ports/%d", dir, port);
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0)
                continue; /* another suite has it */
            close(fd);
        }
        return port;
    }
    ck_abort_msg("no free port in %d..%d", LOW, LOW + COUNT - 1);
    return -1;
}

/* Servers a test started and has not stopped yet: killed when the process exits, so that a test
 * that fails half-way (an assertion, a sanitizer report) leaves no server running. */
enum { MAX_SERVERS = 64 };
static pid_t servers[MAX_SERVERS];

static void kill_servers(void)
{
    for (int i = 0; i < MAX_SERVERS; ++i) {
        if (servers[i] > 0 && waitpid(servers[i], NULL, WNOHANG) == 0) {
            kill(servers[i], SIGKILL);
            waitpid(servers[i], NULL, 0);
        }
        servers[i] = 0;
    }
}

static void remember_server(pid_t pid)
{
    static int registered;
    if (!registered) {
        atexit(kill_servers);
        registered = 1;
    }
    for (int i = 0; i < MAX_SERVERS; ++i) {
        if (servers[i] <= 0 || waitpid(servers[i], NULL, WNOHANG) != 0) {
            servers[i] = pid;
            return;
        }
    }
}

int th_port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    close(fd);
    return ok;
}

static char *server_bin(void)
{
    char *bin;
    ck_assert(asprintf(&bin, "%s/h2o-db", th_build_dir()) > 0);
    return bin;
}

int th_server_start_in(th_server_t *s, const char *dir, const char *conf_template)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    s->port = th_free_port();
    char *conf = th_write_file(dir, "h2o-db.conf", conf_template, s->port);
    snprintf(s->conf_path, sizeof(s->conf_path), "%s", conf);
    free(conf);
    snprintf(s->log_path, sizeof(s->log_path), "%s/server.log", dir);
    char *bin = server_bin();

    fflush(NULL);
    s->pid = fork();
    ck_assert(s->pid != -1);
    if (s->pid != 0)
        remember_server(s->pid);
    if (s->pid == 0) {
        int fd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        if (getenv("H2O_DB_TEST_VALGRIND") != NULL) /* memcheck sees what ASan cannot: libuv's own reads */
            execlp("valgrind", "valgrind", "-q", "--error-exitcode=99", "--leak-check=no", "--trace-children=no", bin, "-c",
                   s->conf_path, (char *)NULL);
        else
            execl(bin, bin, "-c", s->conf_path, (char *)NULL);
        _exit(127);
    }
    free(bin);

    double deadline = th_now_ms() + 20000;
    while (th_now_ms() < deadline) {
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            return -1;
        }
        if (th_port_accepts(s->port))
            return 0;
        usleep(10000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return -1;
}

int th_server_start(th_server_t *s, const char *conf_template)
{
    char *dir = th_tmpdir();
    int ret = th_server_start_in(s, dir, conf_template);
    free(dir);
    return ret;
}

int th_server_stop(th_server_t *s, int timeout_ms)
{
    if (s->pid <= 0)
        return -1;
    kill(s->pid, SIGTERM);
    double deadline = th_now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid)
            break;
        if (th_now_ms() > deadline) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &status, 0);
            s->pid = 0;
            return -1;
        }
        usleep(10000);
    }
    s->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *read_all(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return strdup("");
    struct strbuf b = {0};
    char buf[4096];
    size_t n;
    sb_add(&b, "", 0);
    while ((n = fread(buf, 1, sizeof(buf), fp)) > 0)
        sb_add(&b, buf, n);
    fclose(fp);
    return b.s;
}

char *th_server_log(th_server_t *s)
{
    return read_all(s->log_path);
}

int th_log_count(th_server_t *s, const char *text)
{
    char *log = th_server_log(s);
    int n = 0;
    for (const char *p = log; (p = strstr(p, text)) != NULL; p += strlen(text))
        ++n;
    free(log);
    return n;
}

char *th_url(th_server_t *s, const char *path)
{
    char *url;
    ck_assert(asprintf(&url, "http://127.0.0.1:%d%s", s->port, path) > 0);
    return url;
}

int th_run_h2o_db(const char *args, const char *conf_template, char **output)
{
    char *dir = th_tmpdir(), *conf = th_write_file(dir, "h2o-db.conf", conf_template, th_free_port()), *bin = server_bin(), *cmd;
    ck_assert(asprintf(&cmd, "cd '%s' && '%s' %s -c '%s' > out.txt 2>&1", dir, bin, args, conf) > 0);
    int status = system(cmd);
    if (output != NULL) {
        char *out;
        ck_assert(asprintf(&out, "%s/out.txt", dir) > 0);
        *output = read_all(out);
        free(out);
    }
    free(dir);
    free(conf);
    free(bin);
    free(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *data)
{
    th_response_t *res = data;
    size_t n = size * nmemb;
    res->body = realloc(res->body, res->body_len + n + 1);
    memcpy(res->body + res->body_len, ptr, n);
    res->body_len += n;
    res->body[res->body_len] = '\0';
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *data)
{
    th_response_t *res = data;
    size_t n = size * nmemb, old = res->headers != NULL ? strlen(res->headers) : 0;
    res->headers = realloc(res->headers, old + n + 1);
    memcpy(res->headers + old, ptr, n);
    res->headers[old + n] = '\0';
    /* lower-case the name */
    for (size_t i = old; i < old + n && res->headers[i] != ':'; ++i)
        res->headers[i] = tolower((unsigned char)res->headers[i]);
    return n;
}

static CURL *make_easy(th_response_t *res, int version, const char *method, const char *url, const char *body)
{
    memset(res, 0, sizeof(*res));
    res->body = strdup("");
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, res);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, res);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION,
                     version == TH_HTTP2           ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                     : version == TH_HTTP2_UPGRADE ? CURL_HTTP_VERSION_2_0
                                                   : CURL_HTTP_VERSION_1_1);
    if (method != NULL)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    return c;
}

static void finish_easy(CURL *c, th_response_t *res, CURLcode code)
{
    res->curl_error = code;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res->status);
    long v = 0;
    curl_easy_getinfo(c, CURLINFO_HTTP_VERSION, &v);
    res->http_version = v == CURL_HTTP_VERSION_2_0 ? 2 : 11;
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &res->seconds);
    if (res->headers == NULL)
        res->headers = strdup("");
    curl_easy_cleanup(c);
}

int th_http(th_response_t *res, int version, const char *method, const char *url, const char *body)
{
    CURL *c = make_easy(res, version, method, url, body);
    CURLcode code = curl_easy_perform(c);
    finish_easy(c, res, code);
    return code == CURLE_OK ? 0 : -1;
}

void th_http_parallel(th_response_t *res, size_t n, int version, const char *const *urls)
{
    /* Debian 12's libcurl 7.88.1 cannot reuse a prior-knowledge h2c connection (curl issue
     * #10634, fixed in 7.89): reach HTTP/2 through Upgrade: h2c, then multiplex */
    if (version == TH_HTTP2)
        version = TH_HTTP2_UPGRADE;
    CURLM *m = curl_multi_init();
    CURL **easies = calloc(n, sizeof(*easies));
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    /* one connection per request for HTTP/1; HTTP/2 requests share a connection */
    curl_multi_setopt(m, CURLMOPT_PIPELINING, version == TH_HTTP1 ? CURLPIPE_NOTHING : CURLPIPE_MULTIPLEX);
    for (size_t i = 0; i < n; ++i) {
        easies[i] = make_easy(res + i, version, NULL, urls[i], NULL);
        if (version != TH_HTTP1)
            curl_easy_setopt(easies[i], CURLOPT_PIPEWAIT, 1L);
        curl_multi_add_handle(m, easies[i]);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        for (size_t i = 0; i < n; ++i)
            if (easies[i] == msg->easy_handle)
                res[i].curl_error = msg->data.result;
    }
    for (size_t i = 0; i < n; ++i) {
        curl_multi_remove_handle(m, easies[i]);
        CURLcode code = res[i].curl_error;
        finish_easy(easies[i], res + i, code);
    }
    free(easies);
    curl_multi_cleanup(m);
}

char *th_header(const th_response_t *res, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = res->headers; p != NULL && *p; p = strchr(p, '\n'), p = p != NULL ? p + 1 : NULL) {
        if (strncmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                ++v;
            size_t len = strcspn(v, "\r\n");
            return strndup(v, len);
        }
    }
    return NULL;
}

void th_response_free(th_response_t *res)
{
    free(res->body);
    free(res->headers);
    memset(res, 0, sizeof(*res));
}

PGconn *th_pg_connect(const char *url)
{
    ck_assert_msg(url != NULL, "no PostgreSQL: run the suite through scripts/test");
    PGconn *c = PQconnectdb(url);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "cannot connect to %s: %s", url, PQerrorMessage(c));
    return c;
}

char *th_pg_on(const char *url, const char *sql)
{
    PGconn *c = th_pg_connect(url);
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    char *v = NULL;
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

char *th_pg(const char *sql)
{
    return th_pg_on(th_pg_url(), sql);
}

long th_pg_count(const char *sql)
{
    char *v = th_pg(sql);
    long n = v != NULL ? strtol(v, NULL, 10) : -1;
    free(v);
    return n;
}

static void ignore_notice(void *arg, const char *message)
{
}

/* Points the environment variable `var` (a PostgreSQL URL) at a new database named after it and
 * the suite, e.g. .../h2o_test -> .../h2o_test_mruby, created afresh on the same server. */
static int own_database(const char *var, const char *suite)
{
    const char *url = getenv(var);
    if (url == NULL || *url == '\0' || strchr(url, '?') != NULL)
        return 0;
    const char *slash = strrchr(url, '/');
    char db[128], *own;
    snprintf(db, sizeof(db), "%s_%s", slash + 1, suite);
    if (asprintf(&own, "%.*s/%s", (int)(slash - url), url, db) < 0)
        return -1;
    PGconn *c = PQconnectdb(url);
    int ret = PQstatus(c) == CONNECTION_OK ? 0 : -1;
    PQsetNoticeProcessor(c, ignore_notice, NULL); /* "does not exist, skipping" */
    const char *stmts[] = {"DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", "CREATE DATABASE \"%s\""};
    for (size_t i = 0; ret == 0 && i < sizeof(stmts) / sizeof(stmts[0]); ++i) {
        char sql[256];
        snprintf(sql, sizeof(sql), stmts[i], db);
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            ret = -1;
        PQclear(r);
    }
    if (ret != 0)
        fprintf(stderr, "harness: cannot make the database %s for this suite: %s", own, PQerrorMessage(c));
    else
        setenv(var, own, 1);
    PQfinish(c);
    free(own);
    return ret;
}

int th_run_suite(Suite *s)
{
    /* suites run in parallel on one cluster: each gets databases of its own (test_NAME -> h2o_test_NAME) */
    const char *suite = program_invocation_short_name;
    if (strncmp(suite, "test_", 5) == 0)
        suite += 5;
    if (own_database("H2O_DB_TEST_PG", suite) != 0 || own_database("H2O_DB_TEST_PG2", suite) != 0)
        return 1;
    return th_run_checks(s);
}

int th_run_checks(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

/* Check packs a failure's message into a buffer of 4 kB and ends the whole run ("Message string
 * too long") when it does not fit; raising that bound makes Check move a buffer twice its size for
 * every passing check it reads back (test_query went from 80 s to over five minutes under ASan). So
 * a long message is cut here instead, keeping its start and its end (a log's last lines). */
#undef _ck_assert_failed
#undef _mark_point
void th_assert_failed(const char *file, int line, const char *expr, const char *msg, ...)
{
    if (msg == NULL)
        _ck_assert_failed(file, line, expr, NULL);
    enum { HEAD = 1000, TAIL = 2000 };
    char *text = NULL;
    va_list args;
    va_start(args, msg);
    int len = vasprintf(&text, msg, args);
    va_end(args);
    if (len < 0)
        _ck_assert_failed(file, line, expr, "%s (and a message that could not be formatted)", expr);
    if (len > HEAD + TAIL) {
        static char cut[HEAD + TAIL + 64]; /* (Check copies it before the test ends) */
        snprintf(cut, sizeof(cut), "%.*s\n[... %d bytes cut ...]\n%s", HEAD, text, len - HEAD - TAIL, text + len - TAIL);
        free(text);
        _ck_assert_failed(file, line, expr, "%s", cut);
    }
    /* (text is not freed: Check does not return from here) */
    _ck_assert_failed(file, line, expr, "%s", text);
}

static __thread struct {
    const char *file;
    int line;
} marks[4];
static __thread unsigned next_mark;

void th_mark_point(const char *file, int line)
{
    for (unsigned i = 0; i < 4; ++i)
        if (marks[i].line == line && marks[i].file == file)
            return;
    marks[next_mark].file = file;
    marks[next_mark].line = line;
    next_mark = (next_mark + 1) % 4;
    _mark_point(file, line);
}

char *th_fmt(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    char *s;
    ck_assert(vasprintf(&s, fmt, args) > 0);
    va_end(args);
    return s;
}

long th_pg_countf(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    char *sql;
    ck_assert(vasprintf(&sql, fmt, args) > 0);
    va_end(args);
    long n = th_pg_count(sql);
    free(sql);
    return n;
}

char *th_uniq(const char *prefix)
{
    static int counter;
    return th_fmt("%s_%d_%d", prefix, (int)getpid(), ++counter);
}
