/*
 * Fault tests (issue 7): the real h2o-db against the real PostgreSQL that scripts/test
 * started, while that PostgreSQL is stopped, restarted, or kills backends; pools that
 * run out; clients that leave mid-transaction; timeouts; leak reports; the status page;
 * graceful shutdown. docs/failures.md describes what each test checks from the
 * client's side.
 *
 * Tests run one at a time (is_parallel: false in t/meson.build), so a test may stop and
 * restart PostgreSQL (H2O_DB_TEST_PG_CTL, H2O_DB_TEST_PGDATA, H2O_DB_TEST_PG_LOG); an
 * unchecked fixture (run by the parent process, even when the test's child failed or
 * timed out) starts it again and kills the servers the test started.
 *
 * Every test prints its measured figures on stderr ("faults: ..."), so that a CI log
 * shows them: `meson test -C build faults --print-errorlogs -v`.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include "db_util.h"

static th_server_t server;

/* ---- servers started by a test: killed by the parent's fixture even after the child died ---- */

#define MAX_TRACKED 16
static pid_t *tracked; /* MAP_SHARED: the forked test child writes, the parent reads */

static void track(pid_t pid)
{
    for (int i = 0; i < MAX_TRACKED; ++i) {
        if (tracked[i] == 0) {
            tracked[i] = pid;
            return;
        }
    }
}

static void kill_tracked(void)
{
    if (tracked == NULL)
        return;
    for (int i = 0; i < MAX_TRACKED; ++i) {
        if (tracked[i] > 0) {
            kill(tracked[i], SIGKILL);
            waitpid(tracked[i], NULL, WNOHANG);
        }
        tracked[i] = 0;
    }
}

static void start_server(th_server_t *s, const char *conf)
{
    int ret = th_server_start(s, conf);
    if (s->pid > 0)
        track(s->pid);
    ck_assert_msg(ret == 0, "the server did not start; log:\n%s", th_server_log(s));
}

static void stop_server(th_server_t *s)
{
    int st = th_server_stop(s, 15000);
    ck_assert_msg(st == 0, "exit status %d; log:\n%s", st, th_server_log(s));
}

/* ---- small things ---- */

static void pg_exec(const char *sql)
{
    free(th_pg(sql));
}

static int count_substr(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        ++n;
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- PostgreSQL control ---- */

/* Runs argv with every descriptor above 2 closed (a postmaster must not inherit the test's
 * sockets: a client socket kept open by it would never look closed to h2o-db) and output to
 * /dev/null; returns the exit status. */
static int run_quiet(char *const argv[])
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == -1)
        return -1;
    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        for (int i = 3; i < 1024; ++i)
            close(i);
        execvp(argv[0], argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
        ;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static int have_pg_ctl(void)
{
    return getenv("H2O_DB_TEST_PG_CTL") != NULL && getenv("H2O_DB_TEST_PGDATA") != NULL && getenv("H2O_DB_TEST_PG_LOG") != NULL;
}

/* pg_ctl ACTION (start, stop, restart, status) on the tests' PostgreSQL, as postgres when root. */
static int pg_ctl(const char *action)
{
    char *argv[32];
    int n = 0;
    if (geteuid() == 0) {
        argv[n++] = "runuser";
        argv[n++] = "-u";
        argv[n++] = "postgres";
        argv[n++] = "--";
    }
    argv[n++] = getenv("H2O_DB_TEST_PG_CTL");
    argv[n++] = (char *)action;
    argv[n++] = "-D";
    argv[n++] = getenv("H2O_DB_TEST_PGDATA");
    if (strcmp(action, "status") != 0) {
        argv[n++] = "-w";
        argv[n++] = "-t";
        argv[n++] = "60";
    }
    if (strcmp(action, "start") == 0 || strcmp(action, "restart") == 0) {
        argv[n++] = "-l";
        argv[n++] = getenv("H2O_DB_TEST_PG_LOG");
    }
    if (strcmp(action, "stop") == 0 || strcmp(action, "restart") == 0) {
        argv[n++] = "-m";
        argv[n++] = "fast";
    }
    argv[n] = NULL;
    return run_quiet(argv);
}

static void pg_stop(void)
{
    ck_assert_msg(pg_ctl("stop") == 0, "pg_ctl stop failed");
}

static void pg_start(void)
{
    ck_assert_msg(pg_ctl("start") == 0, "pg_ctl start failed (see %s)", getenv("H2O_DB_TEST_PG_LOG"));
}

/* PostgreSQL is left running whatever happened to the test. */
static void pg_ensure_running(void)
{
    if (have_pg_ctl() && pg_ctl("status") != 0) {
        fprintf(stderr, "faults: PostgreSQL was left stopped; starting it again\n");
        pg_ctl("start");
    }
}

/* ---- fixtures ---- */

static void setup(void)
{
    th_require_pg();
    ck_assert_msg(have_pg_ctl(), "H2O_DB_TEST_PG_CTL/PGDATA/PG_LOG are not set: run the suite through scripts/test");
    memset(&server, 0, sizeof(server));
}

static void teardown(void)
{
    kill_tracked();
}

/* runs in the parent process, after the test's child ended however it ended */
static void parent_teardown(void)
{
    kill_tracked();
    pg_ensure_running();
}

/* ---- JSON of the status page ---- */

/* The raw JSON text at PATH ("binds.0.threads.1.connections.busy"; numbers index arrays), malloc'd, or NULL. */
static char *jget(const char *json, const char *path)
{
    const char *p = db_json_ws(json);
    while (*path != '\0') {
        size_t n = strcspn(path, ".");
        char seg[128];
        snprintf(seg, sizeof(seg), "%.*s", (int)n, path);
        path += n;
        if (*path == '.')
            ++path;
        p = db_json_ws(p);
        if (*p == '{') {
            p = db_json_ws(p + 1);
            for (;;) {
                if (*p != '"')
                    return NULL;
                const char *kend = db_json_string(p);
                if (kend == NULL)
                    return NULL;
                int match = (size_t)(kend - p - 2) == strlen(seg) && strncmp(p + 1, seg, strlen(seg)) == 0;
                p = db_json_ws(kend);
                if (*p++ != ':')
                    return NULL;
                p = db_json_ws(p);
                if (match)
                    break;
                if ((p = db_json_value(p, 0)) == NULL)
                    return NULL;
                p = db_json_ws(p);
                if (*p++ != ',')
                    return NULL;
                p = db_json_ws(p);
            }
        } else if (*p == '[') {
            long idx = strtol(seg, NULL, 10);
            p = db_json_ws(p + 1);
            for (long i = 0; i < idx; ++i) {
                if (*p == ']' || (p = db_json_value(p, 0)) == NULL)
                    return NULL;
                p = db_json_ws(p);
                if (*p++ != ',')
                    return NULL;
                p = db_json_ws(p);
            }
            if (*p == ']')
                return NULL;
        } else {
            return NULL;
        }
    }
    const char *end = db_json_value(p, 0);
    return end != NULL ? strndup(p, end - p) : NULL;
}

/* A number at PATH, or -1 when absent. */
static long jnum(const char *json, const char *path)
{
    char *v = jget(json, path);
    long n = v != NULL && (v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) ? strtol(v, NULL, 10) : -1;
    free(v);
    return n;
}

/* The status page's JSON (GET PATH), checked to be valid JSON; malloc'd. */
static char *get_status(th_server_t *s, const char *path)
{
    th_response_t res;
    db_request(s, &res, TH_HTTP1, NULL, path, NULL);
    ck_assert_msg(res.status == 200, "GET %s: %ld", path, res.status);
    ck_assert_msg(db_json_valid(res.body), "GET %s: not valid JSON:\n%s", path, res.body);
    char *body = strdup(res.body);
    th_response_free(&res);
    return body;
}

/* Sum over the threads of bind B of a per-thread field ("statements", "connections.busy"). */
static long status_sum(const char *json, int bind, const char *field)
{
    long sum = 0;
    for (int t = 0;; ++t) {
        char *path = th_fmt("binds.%d.threads.%d.%s", bind, t, field);
        long v = jnum(json, path);
        free(path);
        if (v < 0)
            return t == 0 ? -1 : sum;
        sum += v;
    }
}

/* ---- pg_stat_activity ---- */

static long pg_conns(const char *appname)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'", appname);
}

static int has_conns(void *appname)
{
    return pg_conns(appname) > 0;
}

/* Samples the number of connections with an application_name until stopped; survives a
 * PostgreSQL that goes away (it reconnects). */
struct watcher {
    pthread_t tid;
    const char *appname;
    volatile int stop;
    long max, samples;
};

static void quiet_notice(void *arg, const char *message)
{
}

static void *watch_main(void *arg)
{
    struct watcher *w = arg;
    PGconn *c = NULL;
    while (!w->stop) {
        if (c == NULL || PQstatus(c) != CONNECTION_OK) {
            if (c != NULL)
                PQfinish(c);
            c = PQconnectdb(th_pg_url());
            if (PQstatus(c) != CONNECTION_OK) {
                usleep(20000);
                continue;
            }
            PQsetNoticeProcessor(c, quiet_notice, NULL);
        }
        const char *params[] = {w->appname};
        PGresult *r =
            PQexecParams(c, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
            if (n > w->max)
                w->max = n;
            ++w->samples;
        }
        PQclear(r);
        usleep(10000);
    }
    if (c != NULL)
        PQfinish(c);
    return NULL;
}

static void watch_start(struct watcher *w, const char *appname)
{
    memset(w, 0, sizeof(*w));
    w->appname = appname;
    ck_assert(pthread_create(&w->tid, NULL, watch_main, w) == 0);
}

static void watch_stop(struct watcher *w)
{
    w->stop = 1;
    pthread_join(w->tid, NULL);
    ck_assert_msg(w->samples > 0, "the pg_stat_activity watcher took no sample");
}

/* ---- a wrk-like load: CONCURRENCY requests always in flight, every answer recorded ----
 * (GET when body == NULL, else POST) */

struct sample {
    double t0, t1; /* th_now_ms() when sent and when answered */
    char body[96]; /* the start of the body */
    long status;
    int retry_after;
    int curl_error;
};

struct load {
    pthread_t tid;
    char *url;
    const char *body;
    int version, concurrency;
    volatile int stop;
    struct sample *samples;
    size_t n, cap;
};

struct slot {
    CURL *easy;
    struct load *load;
    double t0;
    int retry_after;
    char body[96];
    size_t body_len;
};

static size_t ld_discard(char *ptr, size_t size, size_t nmemb, void *data)
{
    return size * nmemb;
}

static size_t ld_body(char *ptr, size_t size, size_t nmemb, void *data)
{
    struct slot *sl = data;
    size_t n = size * nmemb, room = sizeof(sl->body) - 1 - sl->body_len;
    memcpy(sl->body + sl->body_len, ptr, n < room ? n : room);
    sl->body_len += n < room ? n : room;
    sl->body[sl->body_len] = '\0';
    return n;
}

static size_t ld_header(char *ptr, size_t size, size_t nmemb, void *data)
{
    struct slot *sl = data;
    if (size * nmemb >= 12 && strncasecmp(ptr, "retry-after:", 12) == 0)
        sl->retry_after = 1;
    return size * nmemb;
}

static CURL *load_easy(struct load *ld, struct slot *sl, struct curl_slist *headers)
{
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, ld->url);
    if (ld->body != NULL) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, ld->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(ld->body));
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, ld_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, sl);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, ld_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, sl);
    curl_easy_setopt(e, CURLOPT_PRIVATE, sl);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, ld->version == TH_HTTP2 ? CURL_HTTP_VERSION_2_0 : CURL_HTTP_VERSION_1_1);
    if (ld->version == TH_HTTP2)
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    if (getenv("H2O_DB_TEST_VERBOSE") != NULL)
        curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
    sl->easy = e;
    sl->retry_after = 0;
    sl->body_len = 0;
    sl->body[0] = '\0';
    sl->t0 = th_now_ms();
    return e;
}

static void *load_main(void *arg)
{
    struct load *ld = arg;
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_PIPELINING, ld->version == TH_HTTP1 ? CURLPIPE_NOTHING : CURLPIPE_MULTIPLEX);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: text/plain");
    headers = curl_slist_append(headers, "Expect:");
    struct slot *slots = calloc(ld->concurrency, sizeof(*slots));
    for (int i = 0; i < ld->concurrency; ++i) {
        slots[i].load = ld;
        curl_multi_add_handle(m, load_easy(ld, slots + i, headers));
    }
    int running = 1;
    while (running > 0 || !ld->stop) {
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct slot *sl;
            CURL *e = msg->easy_handle;
            CURLcode result = msg->data.result;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&sl);
            if (ld->n == ld->cap) {
                ld->cap = ld->cap == 0 ? 1024 : ld->cap * 2;
                ld->samples = realloc(ld->samples, ld->cap * sizeof(*ld->samples));
            }
            struct sample *s = ld->samples + ld->n++;
            s->t0 = sl->t0;
            s->t1 = th_now_ms();
            s->curl_error = result;
            s->status = 0;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &s->status);
            s->retry_after = sl->retry_after;
            memcpy(s->body, sl->body, sizeof(s->body));
            curl_multi_remove_handle(m, e);
            curl_easy_cleanup(e);
            sl->easy = NULL;
            if (!ld->stop) {
                curl_multi_add_handle(m, load_easy(ld, sl, headers));
                running = 1;
            }
        }
        if (running > 0)
            curl_multi_poll(m, NULL, 0, 10, NULL);
        else if (!ld->stop)
            usleep(1000);
    }
    for (int i = 0; i < ld->concurrency; ++i)
        if (slots[i].easy != NULL) {
            curl_multi_remove_handle(m, slots[i].easy);
            curl_easy_cleanup(slots[i].easy);
        }
    free(slots);
    curl_slist_free_all(headers);
    curl_multi_cleanup(m);
    return NULL;
}

static void load_start(struct load *ld, th_server_t *s, const char *path, const char *body, int version, int concurrency)
{
    memset(ld, 0, sizeof(*ld));
    ld->url = th_url(s, path);
    ld->body = body;
    ld->version = version;
    ld->concurrency = concurrency;
    ck_assert(pthread_create(&ld->tid, NULL, load_main, ld) == 0);
}

static void load_stop(struct load *ld)
{
    ld->stop = 1;
    pthread_join(ld->tid, NULL);
    free(ld->url);
}

/* ---- n POSTs at once ----
 *
 * Like db_parallel (db_util.h), but HTTP/2 connections start with an h2c Upgrade instead of
 * prior knowledge: Debian 12's libcurl 7.88.1 fails every stream but the first on a reused
 * prior-knowledge connection ("Error in the HTTP2 framing layer", curl issue #10634, fixed in
 * curl 8.0), and multiplexing is reuse. A single request (db_request) is not affected. */
static void par_posts(th_server_t *s, th_response_t *res, size_t n, int version, const char *path, const char *const *bodies)
{
    char *url = th_url(s, path);
    CURLM *m = curl_multi_init();
    struct db_easy *easies = calloc(n, sizeof(*easies));
    curl_multi_setopt(m, CURLMOPT_PIPELINING, version == TH_HTTP1 ? CURLPIPE_NOTHING : CURLPIPE_MULTIPLEX);
    for (size_t i = 0; i < n; ++i) {
        db_easy_init(easies + i, res + i, version, url, NULL, bodies[i]);
        if (version != TH_HTTP1) {
            curl_easy_setopt(easies[i].curl, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_0);
            curl_easy_setopt(easies[i].curl, CURLOPT_PIPEWAIT, 1L);
        }
        curl_multi_add_handle(m, easies[i].curl);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 20, NULL);
    }
    CURLMsg *msg;
    int left;
    for (size_t i = 0; i < n; ++i)
        res[i].curl_error = -1;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        for (size_t i = 0; i < n; ++i)
            if (easies[i].curl == msg->easy_handle)
                res[i].curl_error = msg->data.result;
    }
    for (size_t i = 0; i < n; ++i) {
        curl_multi_remove_handle(m, easies[i].curl);
        db_easy_finish(easies + i, res + i, (CURLcode)res[i].curl_error);
        if (version != TH_HTTP1 && res[i].curl_error == 0)
            ck_assert_msg(res[i].http_version == 2, "request %zu was not answered over HTTP/2", i);
    }
    free(easies);
    curl_multi_cleanup(m);
    free(url);
}

/* ---- POSTs from a thread (so that the test can act while they are in flight) ---- */

struct bg_posts {
    pthread_t tid;
    th_server_t *server;
    const char *path;
    int version;
    size_t n;
    const char *const *bodies;
    th_response_t *res;
    double t_done;
};

static void *bg_posts_main(void *arg)
{
    struct bg_posts *b = arg;
    par_posts(b->server, b->res, b->n, b->version, b->path, b->bodies);
    b->t_done = th_now_ms();
    return NULL;
}

static void bg_posts_start(struct bg_posts *b, th_server_t *s, int version, const char *path, size_t n, const char *const *bodies)
{
    memset(b, 0, sizeof(*b));
    b->server = s;
    b->path = path;
    b->version = version;
    b->n = n;
    b->bodies = bodies;
    b->res = calloc(n, sizeof(*b->res));
    ck_assert(pthread_create(&b->tid, NULL, bg_posts_main, b) == 0);
}

static void bg_posts_join(struct bg_posts *b)
{
    pthread_join(b->tid, NULL);
}

static void bg_posts_free(struct bg_posts *b)
{
    for (size_t i = 0; i < b->n; ++i)
        th_response_free(b->res + i);
    free(b->res);
}

struct activity_query {
    const char *appname, *extra;
    long want;
};

/* What PostgreSQL sees of a server's connections, for failure messages; malloc'd. */
static char *activity_dump(const char *appname)
{
    char *sql =
        th_fmt("SELECT string_agg(state || ': ' || query, ' | ') FROM pg_stat_activity WHERE application_name = '%s'", appname);
    char *v = th_pg(sql);
    free(sql);
    return v != NULL ? v : strdup("(no connection)");
}

static int activity_reaches(void *arg)
{
    struct activity_query *q = arg;
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND %s", q->appname, q->extra) >=
           q->want;
}

static int activity_is(void *arg)
{
    struct activity_query *q = arg;
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND %s", q->appname, q->extra) ==
           q->want;
}

/* ==== PostgreSQL restarted under load ==== */

static const char *RESTART_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 2\n"
                                  "db.bind:\n"
                                  "  url: \"@PG@?application_name=flt_restart_@PORT@\"\n"
                                  "  pool: {max: 2, acquire-timeout: 2}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /e:\n"
                                  "        c.handler: " DB_HANDLERS ":db_echo\n"
                                  "      /status:\n"
                                  "        db.status: ON\n";

#define RESTART_THREADS    2
#define RESTART_MAX        2
#define RESTART_ACQUIRE_MS 2000

START_TEST(postgres_restarted_under_load)
{
    start_server(&server, RESTART_CONF);
    char *appname = th_fmt("flt_restart_%d", server.port);
    /* db_echo: GET ?id=7 → SELECT $1::int AS id → [{"id":7}], or h2o_db_send_error */
    struct watcher w;
    watch_start(&w, appname);
    struct load loads[2];
    load_start(loads + 0, &server, "/e?id=7", NULL, TH_HTTP1, 8);
    load_start(loads + 1, &server, "/e?id=7", NULL, TH_HTTP2, 8);

    usleep(800000);
    double t_stop0 = th_now_ms();
    pg_stop();
    double t_stop1 = th_now_ms();
    usleep(1200000);
    double t_start0 = th_now_ms();
    pg_start();
    double t_start1 = th_now_ms();
    usleep(2000000);
    load_stop(loads + 0);
    load_stop(loads + 1);
    double t_end = th_now_ms();
    usleep(300000);
    watch_stop(&w);

    size_t total = 0, warm = 0, outage = 0, outage_503 = 0, after = 0, after_ok = 0, other = 0;
    double slowest = 0, first_ok = -1, outage_max = 0;
    double *outage_ms = NULL;
    size_t outage_cap = 0;
    for (int l = 0; l < 2; ++l) {
        for (size_t i = 0; i < loads[l].n; ++i) {
            struct sample *s = loads[l].samples + i;
            ++total;
            ck_assert_msg(s->curl_error == 0,
                          "HTTP/%d: a request failed without an answer (curl error %d: %s) after %.0f ms, sent %.0f ms after the "
                          "stop began (stopped at %.0f, start began at %.0f, returned at %.0f)",
                          loads[l].version, s->curl_error, curl_easy_strerror(s->curl_error), s->t1 - s->t0, s->t0 - t_stop0,
                          t_stop1 - t_stop0, t_start0 - t_stop0, t_start1 - t_stop0);
            ck_assert_msg(s->status == 200 || s->status == 503, "HTTP/%d: status %ld", loads[l].version, s->status);
            if (s->status == 503)
                ck_assert_msg(s->retry_after, "HTTP/%d: a 503 without Retry-After", loads[l].version);
            if (s->status == 200)
                ck_assert_msg(strcmp(s->body, "[{\"id\":7}]") == 0, "HTTP/%d: 200 with %s", loads[l].version, s->body);
            double d = s->t1 - s->t0;
            if (d > slowest)
                slowest = d;
            if (s->t1 < t_stop0) {
                ++warm;
                ck_assert_msg(s->status == 200, "HTTP/%d: status %ld before PostgreSQL stopped", loads[l].version, s->status);
            } else if (s->t0 > t_stop1 + 100 && s->t1 < t_start0) {
                ++outage;
                outage_503 += s->status == 503;
                if (s->status != 503)
                    fprintf(stderr,
                            "faults: during the outage, HTTP/%d sent %.0f ms after the stop returned, answered %.0f ms later: "
                            "%ld %s\n",
                            loads[l].version, s->t0 - t_stop1, s->t1 - s->t0, s->status, s->body);
                if (outage > outage_cap) {
                    outage_cap = outage_cap == 0 ? 1024 : outage_cap * 2;
                    outage_ms = realloc(outage_ms, outage_cap * sizeof(double));
                }
                outage_ms[outage - 1] = d;
                if (d > outage_max)
                    outage_max = d;
            } else if (s->t0 > t_start1 + 1000) {
                ++after;
                after_ok += s->status == 200;
            } else {
                ++other;
            }
            if (s->status == 200 && s->t1 > t_start1 && (first_ok < 0 || s->t1 < first_ok))
                first_ok = s->t1;
        }
    }
    qsort(outage_ms, outage, sizeof(double), cmp_double);
    double outage_median = outage != 0 ? outage_ms[outage / 2] : -1, outage_p99 = outage != 0 ? outage_ms[outage * 99 / 100] : -1;
    double recovery = first_ok >= 0 ? first_ok - t_start1 : -1;
    char *status_json = get_status(&server, "/status");
    long reconnects = status_sum(status_json, 0, "reconnects"), closed_broken = status_sum(status_json, 0, "closed_broken"),
         connect_failures = status_sum(status_json, 0, "connect_failures");
    fprintf(stderr,
            "faults: restart under load: %zu requests in %.1f s (%zu before the stop, %zu during the outage, %zu from 1 s after "
            "the start); slowest request %.0f ms (acquire-timeout %d ms); outage answers: %zu of %zu were 503, median %.1f ms, "
            "p99 %.1f ms, max %.0f ms; pg_ctl stop took %.0f ms, start %.0f ms; first 200 %.0f ms after `pg_ctl start -w` "
            "returned; at most %ld server connections seen (limit %d); status: reconnects %ld, closed_broken %ld, "
            "connect_failures %ld\n",
            total, (t_end - t_stop0 + 800) / 1000, warm, outage, after, slowest, RESTART_ACQUIRE_MS, outage_503, outage,
            outage_median, outage_p99, outage_max, t_stop1 - t_stop0, t_start1 - t_start0, recovery, w.max,
            RESTART_THREADS * RESTART_MAX, reconnects, closed_broken, connect_failures);

    ck_assert_msg(warm >= 20, "only %zu requests before the stop", warm);
    ck_assert_msg(slowest < RESTART_ACQUIRE_MS + 500, "a request took %.0f ms: longer than acquire-timeout (%d ms)", slowest,
                  RESTART_ACQUIRE_MS);
    ck_assert_msg(outage >= 20, "only %zu requests answered while PostgreSQL was down", outage);
    ck_assert_msg(outage_503 == outage, "%zu of %zu requests during the outage were not 503", outage - outage_503, outage);
    ck_assert_msg(outage_median < 100, "requests during the outage do not fail fast: median %.1f ms", outage_median);
    ck_assert_msg(outage_max < RESTART_ACQUIRE_MS / 2, "a request during the outage waited %.0f ms", outage_max);
    ck_assert_msg(first_ok >= 0, "no request succeeded after PostgreSQL came back");
    ck_assert_msg(recovery < 1000, "the first success came %.0f ms after PostgreSQL accepted connections", recovery);
    ck_assert_msg(after >= 20 && after_ok == after, "from 1 s after the start, %zu of %zu requests failed", after - after_ok,
                  after);
    ck_assert_msg(w.max <= RESTART_THREADS * RESTART_MAX, "%ld connections from the server (threads × max = %d)", w.max,
                  RESTART_THREADS * RESTART_MAX);
    ck_assert_msg(pg_conns(appname) <= RESTART_THREADS * RESTART_MAX, "%ld connections afterwards", pg_conns(appname));
    ck_assert_msg(reconnects >= 1, "the status page counts no reconnect:\n%s", status_json);
    for (int t = 0; t < RESTART_THREADS; ++t) {
        char *path = th_fmt("binds.0.threads.%d.down", t), *down = jget(status_json, path);
        ck_assert_msg(down != NULL && strcmp(down, "false") == 0, "thread %d still down after the recovery:\n%s", t, status_json);
        free(path);
        free(down);
    }
    free(status_json);
    free(outage_ms);
    free(loads[0].samples);
    free(loads[1].samples);
    stop_server(&server);
    free(appname);
}
END_TEST

/* ==== pg_terminate_backend mid-query ==== */

static const char *TERM_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=flt_term_@PORT@\"\n"
                               "  pool: {max: 4}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n";

START_TEST(terminated_backends_fail_their_requests_and_the_next_ones_succeed)
{
    start_server(&server, TERM_CONF);
    char *appname = th_fmt("flt_term_%d", server.port);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        /* two autocommit statements and two transactions, each on a connection of its own (max 4) */
        const char *bodies[] = {"SENDERROR\nSQL SELECT pg_sleep(20)", "SENDERROR\nSQL SELECT pg_sleep(20)",
                                "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(20)\nCOMMIT",
                                "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(20)\nCOMMIT"};
        /* one after the other: requests arriving together may pipeline on one connection (its oldest
         * statement is young), and a killed backend would then fail two requests at once */
        struct bg_posts bs[4];
        for (int i = 0; i < 4; ++i) {
            bg_posts_start(bs + i, &server, v, "/s", 1, bodies + i);
            struct activity_query q = {appname, "state = 'active' AND query LIKE 'SELECT pg_sleep%'", i + 1};
            ck_assert_msg(th_wait_until(activity_reaches, &q, 10000), "HTTP/%d: pg_sleep %d never ran: %s", v, i + 1,
                          activity_dump(appname));
        }
        double t_kill = th_now_ms();
        long killed =
            th_pg_countf("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s' AND "
                         "state = 'active'",
                         appname);
        ck_assert_int_eq(killed, 4);
        double took = 0;
        for (int i = 0; i < 4; ++i) {
            bg_posts_join(bs + i);
            if (bs[i].t_done - t_kill > took)
                took = bs[i].t_done - t_kill;
            th_response_t *r = bs[i].res;
            ck_assert_msg(r->curl_error == 0, "HTTP/%d request %d: curl error %d", v, i, r->curl_error);
            ck_assert_msg(r->status == 503, "HTTP/%d request %d (%s): status %ld, body %s", v, i, bodies[i], r->status, r->body);
            char *ra = th_header(r, "retry-after"), *ss = th_header(r, "x-sqlstate");
            ck_assert_msg(ra != NULL, "HTTP/%d: 503 without Retry-After", v);
            ck_assert_msg(ss != NULL && (strcmp(ss, "57P01") == 0 || strncmp(ss, "08", 2) == 0),
                          "HTTP/%d: SQLSTATE %s (expected 57P01 or 08xxx: UNAVAILABLE)", v, ss != NULL ? ss : "(none)");
            free(ra);
            free(ss);
        }
        fprintf(stderr, "faults: HTTP/%d: 4 requests on terminated backends answered 503 within %.0f ms of pg_terminate_backend\n",
                v, took);
        ck_assert_msg(took < 3000, "HTTP/%d: the answers took %.0f ms after the backends were terminated", v, took);
        for (int i = 0; i < 4; ++i)
            bg_posts_free(bs + i);

        /* the next ones succeed, one after the other and four at once */
        for (int i = 0; i < 3; ++i) {
            th_response_t res;
            db_script(&server, &res, v, "/s", "SENDERROR\nSQL SELECT 7 AS seven");
            db_assert_result(res.body, 0, "OK", "[{\"seven\":7}]");
            th_response_free(&res);
        }
        const char *next[] = {"SENDERROR\nBEGIN\nSQL SELECT 1 AS one\nCOMMIT", "SENDERROR\nSQL SELECT 1 AS one",
                              "SENDERROR\nBEGIN\nSQL SELECT 1 AS one\nCOMMIT", "SENDERROR\nSQL SELECT 1 AS one"};
        th_response_t res[4];
        par_posts(&server, res, 4, v, "/s", next);
        for (int i = 0; i < 4; ++i) {
            ck_assert_msg(res[i].status == 200, "HTTP/%d: after the termination: %ld %s", v, res[i].status, res[i].body);
            th_response_free(res + i);
        }

        /* idle connections terminated: noticed before they are handed out again */
        long idle =
            th_pg_countf("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s'", appname);
        ck_assert_msg(idle >= 1, "no idle connection to terminate");
        usleep(300000);
        par_posts(&server, res, 4, v, "/s", next);
        for (int i = 0; i < 4; ++i) {
            ck_assert_msg(res[i].status == 200, "HTTP/%d: after %ld idle connections were terminated: %ld %s", v, idle,
                          res[i].status, res[i].body);
            th_response_free(res + i);
        }
    }
    stop_server(&server);
    free(appname);
}
END_TEST

/* ==== the pool at 10× its capacity ==== */

static const char *EXHAUST_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 1\n"
                                  "db.bind:\n"
                                  "  url: \"@PG@?application_name=flt_exhaust_@PORT@\"\n"
                                  "  pool: {max: 2, queue: 4, acquire-timeout: 0.3}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /s:\n"
                                  "        c.handler: " DB_HANDLERS ":db_script\n"
                                  "      /status:\n"
                                  "        db.status: ON\n";

static long vm_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "r");
    ck_assert_msg(fp != NULL, "%s: %s", path, strerror(errno));
    long kb = -1;
    while (fgets(line, sizeof(line), fp) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    fclose(fp);
    return kb;
}

#define EXHAUST_N      24
#define EXHAUST_ROUNDS 24

/* One burst of EXHAUST_N transaction-holding requests; returns how many got 503. */
static int exhaust_round(int version, double *slowest_503, int *ok_out)
{
    const char *bodies[EXHAUST_N];
    for (int i = 0; i < EXHAUST_N; ++i)
        bodies[i] = "SENDERROR\nBEGIN\nSQL SELECT 1 AS one\nSLEEP 500\nCOMMIT";
    th_response_t res[EXHAUST_N];
    par_posts(&server, res, EXHAUST_N, version, "/s", bodies);
    int ok = 0, busy = 0;
    for (int i = 0; i < EXHAUST_N; ++i) {
        ck_assert_msg(res[i].curl_error == 0, "HTTP/%d: curl error %d", version, res[i].curl_error);
        if (res[i].status == 200) {
            ++ok;
            db_assert_result(res[i].body, 2, "OK", NULL);
        } else {
            ck_assert_msg(res[i].status == 503, "HTTP/%d: status %ld %s", version, res[i].status, res[i].body);
            char *ra = th_header(res + i, "retry-after"), *ss = th_header(res + i, "x-sqlstate");
            ck_assert_msg(ra != NULL, "HTTP/%d: 503 without Retry-After", version);
            ck_assert_msg(ss != NULL && strcmp(ss, "53300") == 0, "HTTP/%d: 503 with SQLSTATE %s", version, ss != NULL ? ss : "-");
            free(ra);
            free(ss);
            ++busy;
            if (res[i].seconds * 1000 > *slowest_503)
                *slowest_503 = res[i].seconds * 1000;
        }
        th_response_free(res + i);
    }
    *ok_out += ok;
    ck_assert_msg(ok >= 2, "HTTP/%d: only %d of %d requests were served with max 2", version, ok, EXHAUST_N);
    return busy;
}

START_TEST(pool_exhausted_tenfold_answers_503_quickly_and_does_not_grow)
{
    /* under ./scripts/test --asan the server's freed memory would sit in ASan's quarantine (256 MB
     * by default) and look like growth: measure this server without it */
    char *saved = getenv("ASAN_OPTIONS") != NULL ? strdup(getenv("ASAN_OPTIONS")) : NULL;
    if (saved != NULL) {
        char *opts = th_fmt("%s:quarantine_size_mb=0:thread_local_quarantine_size_kb=0", saved);
        setenv("ASAN_OPTIONS", opts, 1);
        free(opts);
    }
    start_server(&server, EXHAUST_CONF);
    if (saved != NULL) {
        setenv("ASAN_OPTIONS", saved, 1);
        free(saved);
    }
    char *appname = th_fmt("flt_exhaust_%d", server.port);
    double slowest_503 = 0;
    int busy = 0, ok = 0, rounds = 0;
    for (int i = 0; i < 4; ++i, ++rounds)
        busy += exhaust_round(i % 2 ? TH_HTTP2 : TH_HTTP1, &slowest_503, &ok);
    long rss0 = vm_rss_kb(server.pid);
    double t0 = th_now_ms();
    for (int i = 0; i < EXHAUST_ROUNDS; ++i, ++rounds)
        busy += exhaust_round(i % 2 ? TH_HTTP2 : TH_HTTP1, &slowest_503, &ok);
    double took = th_now_ms() - t0;
    usleep(200000);
    long rss1 = vm_rss_kb(server.pid);
    char *status_json = get_status(&server, "/status");
    long queue_full = status_sum(status_json, 0, "queue_full"), acquire_timeouts = status_sum(status_json, 0, "acquire_timeouts"),
         waiting = status_sum(status_json, 0, "waiting"), pinned = status_sum(status_json, 0, "connections.pinned");
    fprintf(stderr,
            "faults: exhaustion: %d rounds of %d transactions holding a connection 500 ms (max 2, queue 4, acquire-timeout "
            "300 ms): %d served, %d answered 503 (queue_full %ld, acquire_timeouts %ld), slowest 503 %.0f ms; %d rounds in "
            "%.1f s; VmRSS %ld kB -> %ld kB (%+ld kB); server connections %ld\n",
            rounds, EXHAUST_N, ok, busy, queue_full, acquire_timeouts, slowest_503, EXHAUST_ROUNDS, took / 1000, rss0, rss1,
            rss1 - rss0, pg_conns(appname));
    ck_assert_msg(busy >= rounds * (EXHAUST_N - 2 - 4 - 4), "only %d of %d requests were refused", busy, rounds * EXHAUST_N);
    ck_assert_msg(slowest_503 < 300 + 300, "a 503 came after %.0f ms (acquire-timeout 300 ms)", slowest_503);
    ck_assert_msg(queue_full >= 1 && acquire_timeouts >= 1, "queue_full %ld, acquire_timeouts %ld", queue_full, acquire_timeouts);
    ck_assert_msg(queue_full + acquire_timeouts == busy, "the status page counts %ld refusals, the clients saw %d",
                  queue_full + acquire_timeouts, busy);
    ck_assert_int_eq(waiting, 0);
    ck_assert_int_eq(pinned, 0);
    ck_assert_msg(pg_conns(appname) <= 2, "%ld connections with max 2", pg_conns(appname));
    ck_assert_msg(rss1 - rss0 < 4096, "VmRSS grew by %ld kB over %d rounds", rss1 - rss0, EXHAUST_ROUNDS);
    free(status_json);
    stop_server(&server);
    free(appname);
}
END_TEST

/* ==== 1000 clients that leave in the middle of a transaction ==== */

static const char *GONE_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=flt_gone_@PORT@\"\n"
                               "  pool: {max: 8}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    access-log: {path: @DIR@/access.log, format: \"%H %U %s\"}\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

/* one worker thread: db_script parses its body with strtok(), which is not thread-safe; with
 * a hundred requests arriving at once on two threads, scripts get mixed up */
#define GONE_BATCH       100
#define GONE_PER_VERSION 500

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_msg(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "connect: %s", strerror(errno));
    return fd;
}

static long active_sleeps(const char *appname)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state = 'active' AND query LIKE "
                        "'SELECT pg_sleep%%'",
                        appname);
}

/* HTTP/1: raw sockets that send the request and close ~150 ms later (half with a RST) */
static long gone_http1_batch(int port, const char *body, const char *appname)
{
    int fds[GONE_BATCH];
    char *req = th_fmt("POST /s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                       strlen(body), body);
    double t0 = th_now_ms();
    for (int i = 0; i < GONE_BATCH; ++i) {
        fds[i] = connect_to(port);
        size_t len = strlen(req);
        ck_assert_msg(write(fds[i], req, len) == (ssize_t)len, "write: %s", strerror(errno));
    }
    double wait = 150 - (th_now_ms() - t0);
    if (wait > 0)
        usleep((useconds_t)(wait * 1000));
    long sleeping = active_sleeps(appname);
    for (int i = 0; i < GONE_BATCH; ++i) {
        if (i % 2) {
            struct linger lg = {1, 0};
            setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        close(fds[i]);
    }
    free(req);
    return sleeping;
}

/* HTTP/2: libcurl multiplexes the batch on one connection (h2c Upgrade, see par_posts) and resets each stream after 150 ms */
static long gone_http2_batch(th_server_t *s, const char *body, const char *appname)
{
    char *url = th_url(s, "/s");
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: text/plain");
    CURL *easies[GONE_BATCH];
    for (int i = 0; i < GONE_BATCH; ++i) {
        CURL *e = easies[i] = curl_easy_init();
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, ld_discard);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 150L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_0); /* see par_posts */
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_multi_add_handle(m, e);
    }
    double t0 = th_now_ms();
    long sleeping = -1;
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (sleeping < 0 && th_now_ms() - t0 > 120)
            sleeping = active_sleeps(appname);
        if (running)
            curl_multi_poll(m, NULL, 0, 10, NULL);
    }
    int timed_out = 0;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->data.result == CURLE_OPERATION_TIMEDOUT)
            ++timed_out;
    for (int i = 0; i < GONE_BATCH; ++i) {
        curl_multi_remove_handle(m, easies[i]);
        curl_easy_cleanup(easies[i]);
    }
    curl_multi_cleanup(m);
    curl_slist_free_all(headers);
    free(url);
    ck_assert_msg(timed_out == GONE_BATCH, "HTTP/2: only %d of %d requests were abandoned by the client", timed_out, GONE_BATCH);
    return sleeping < 0 ? 0 : sleeping;
}

static int status_idle(void *arg)
{
    char *json = get_status(arg, "/status");
    int idle = status_sum(json, 0, "connections.busy") == 0 && status_sum(json, 0, "connections.pinned") == 0 &&
               status_sum(json, 0, "waiting") == 0;
    free(json);
    return idle;
}

static int pool_settled(void *arg)
{
    const char *appname = arg;
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state <> 'idle'", appname) == 0;
}

START_TEST(clients_that_leave_mid_transaction_commit_nothing)
{
    start_server(&server, GONE_CONF);
    char *appname = th_fmt("flt_gone_%d", server.port), *t = th_uniq("flt_gone");
    char *sql = th_fmt("CREATE TABLE %s (id serial PRIMARY KEY, v text)", t);
    pg_exec(sql);
    free(sql);
    char *body = th_fmt("BEGIN\nSQL INSERT INTO %s (v) VALUES ('gone')\nSQL SELECT pg_sleep(3)\nCOMMIT\n", t);
    char *before = get_status(&server, "/status");
    long errors0 = status_sum(before, 0, "errors");
    free(before);

    double t0 = th_now_ms();
    long sleeping1 = 0, sleeping2 = 0;
    for (int i = 0; i < GONE_PER_VERSION / GONE_BATCH; ++i)
        sleeping1 += gone_http1_batch(server.port, body, appname);
    double t1 = th_now_ms();
    for (int i = 0; i < GONE_PER_VERSION / GONE_BATCH; ++i)
        sleeping2 += gone_http2_batch(&server, body, appname);
    double t2 = th_now_ms();
    int settled = th_wait_until(pool_settled, appname, 10000);
    double t_settled = th_now_ms();
    /* and h2o-db's side: every connection back to idle (a cancel or clean-up ROLLBACK may still be
     * finishing when PostgreSQL already shows the session idle) */
    int pool_idle = th_wait_until(status_idle, &server, 5000);
    double t_idle = th_now_ms();

    char *after = get_status(&server, "/status");
    long errors = status_sum(after, 0, "errors") - errors0, busy = status_sum(after, 0, "connections.busy"),
         pinned = status_sum(after, 0, "connections.pinned"), waiting = status_sum(after, 0, "waiting");
    long rows = th_pg_countf("SELECT count(*) FROM %s", t);
    long idle_in_tx = th_pg_countf(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state LIKE 'idle in transaction%%'", appname);
    long conns = pg_conns(appname);
    fprintf(stderr,
            "faults: client gone: %d HTTP/1 clients in %.1f s (%ld transactions seen sleeping when they left), %d HTTP/2 clients "
            "in %.1f s (%ld seen sleeping); PostgreSQL saw every session idle %.0f ms after the last batch, the status page every "
            "connection idle %.0f ms after it; %ld statements answered with an error; rows committed %ld, idle in transaction "
            "%ld, server connections %ld, busy %ld, pinned %ld, waiting %ld\n",
            GONE_PER_VERSION, (t1 - t0) / 1000, sleeping1, GONE_PER_VERSION, (t2 - t1) / 1000, sleeping2, t_settled - t2,
            t_idle - t2, errors, rows, idle_in_tx, conns, busy, pinned, waiting);
    ck_assert_msg(sleeping1 > 0, "HTTP/1: no transaction was ever seen running: the test proves nothing");
    ck_assert_msg(sleeping2 > 0, "HTTP/2: no transaction was ever seen running: the test proves nothing");
    ck_assert_msg(settled, "the server's connections were still busy 10 s after the clients left");
    ck_assert_msg(pool_idle, "the status page still shows busy connections 5 s after PostgreSQL saw them idle");
    ck_assert_msg(rows == 0, "%ld rows of clients that left were committed", rows);
    ck_assert_msg(idle_in_tx == 0, "%ld sessions left idle in transaction", idle_in_tx);
    ck_assert_msg(busy == 0 && pinned == 0 && waiting == 0, "pool not idle: busy %ld pinned %ld waiting %ld\n%s", busy, pinned,
                  waiting, after);
    ck_assert_msg(conns <= 8, "%ld connections with 1 thread × max 8", conns);
    free(after);
    /* the requests really came over both protocols (h2o logs a request when it ends, answered or not) */
    char *logpath = th_fmt("%s/access.log", server.dir), *alog = NULL;
    FILE *fp = fopen(logpath, "r");
    ck_assert_msg(fp != NULL, "no access log");
    size_t cap = 1 << 20, len = 0, n;
    alog = malloc(cap);
    while ((n = fread(alog + len, 1, cap - len - 1, fp)) > 0)
        len += n;
    alog[len] = '\0';
    fclose(fp);
    int h1 = count_substr(alog, "HTTP/1.1 /s "), h2 = count_substr(alog, "HTTP/2 /s "),
        h1_answered = count_substr(alog, "HTTP/1.1 /s 200\n"), h2_unanswered = count_substr(alog, "HTTP/2 /s 0\n");
    fprintf(stderr,
            "faults: client gone: the access log has %d HTTP/1.1 requests to /s (%d answered by the handler after CLIENT_GONE, the "
            "write failing) and %d HTTP/2 ones (%d ended by the reset without an answer)\n",
            h1, h1_answered, h2, h2_unanswered);
    ck_assert_msg(h1 == GONE_PER_VERSION && h2 == GONE_PER_VERSION,
                  "access log: %d HTTP/1.1 and %d HTTP/2 requests (expected %d each)", h1, h2, GONE_PER_VERSION);
    free(alog);
    free(logpath);

    /* and the pool works: a transaction that stays commits */
    th_response_t res;
    char *control = th_fmt("BEGIN\nSQL INSERT INTO %s (v) VALUES ('control')\nCOMMIT\n", t);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        db_script(&server, &res, v, "/s", control);
        db_assert_result(res.body, 2, "OK", NULL);
        th_response_free(&res);
    }
    ck_assert_int_eq(th_pg_countf("SELECT count(*) FROM %s", t), 2);
    free(control);
    free(body);
    stop_server(&server);
    free(t);
    free(appname);
}
END_TEST

/* ==== the database is down when the server starts ==== */

static const char *DOWN_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 2\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=flt_down_@PORT@\"\n"
                               "  pool: {acquire-timeout: 3}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n";

static const char *DOWN_CAS_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                   "db.bind:\n"
                                   "  - url: \"@PG@?application_name=flt_cas\"\n"
                                   "    key: flt_needs_db\n"
                                   "    pool: {connect-at-start: ON}\n"
                                   "hosts: {default: {paths: {/: {db.status: ON}}}}\n";

static const char *DOWN_SCHEMA_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                      "db.bind:\n"
                                      "  - url: \"@PG@?application_name=flt_schema\"\n"
                                      "    key: flt_with_schema\n"
                                      "    schema: schema.sql\n"
                                      "hosts: {default: {paths: {/: {db.status: ON}}}}\n";

struct first_ok {
    th_server_t *server;
    int version;
    long last_status;
};

static int request_succeeds(void *arg)
{
    struct first_ok *f = arg;
    th_response_t res;
    db_request(f->server, &res, f->version, NULL, "/s", "SENDERROR\nSQL SELECT 1 AS one");
    f->last_status = res.status;
    th_response_free(&res);
    return f->last_status == 200;
}

START_TEST(database_down_at_start_up)
{
    pg_stop();

    /* connect-at-start: ON, or a schema: the server refuses to start, naming the bind */
    char *dir = th_tmpdir(), *out = NULL;
    int st = db_run_until_exit(dir, DOWN_CAS_CONF, 20000, &out);
    fprintf(stderr, "faults: down at start-up, connect-at-start: ON: exit %d: %s", st, out);
    ck_assert_msg(st == 1, "connect-at-start: ON with the database down: exit status %d (expected 1):\n%s", st, out);
    ck_assert_msg(strstr(out, "flt_needs_db") != NULL, "the message does not name the bind:\n%s", out);
    ck_assert_msg(strstr(out, "h2o-db.conf:3:") != NULL, "the message does not say where the bind is (file:line):\n%s", out);
    free(out);
    free(dir);
    dir = th_tmpdir();
    free(th_write_file(dir, "schema.sql", "CREATE TABLE IF NOT EXISTS flt_schema_t (id int);\n", 0));
    st = db_run_until_exit(dir, DOWN_SCHEMA_CONF, 20000, &out);
    fprintf(stderr, "faults: down at start-up, with a schema: exit %d: %s", st, out);
    ck_assert_msg(st == 1, "a schema with the database down: exit status %d (expected 1):\n%s", st, out);
    ck_assert_msg(strstr(out, "flt_with_schema") != NULL, "the message does not name the bind:\n%s", out);
    free(out);
    free(dir);

    /* the defaults: the server starts and answers 503 at once */
    start_server(&server, DOWN_CONF);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        for (int i = 0; i < 5; ++i) {
            th_response_t res;
            db_request(&server, &res, v, NULL, "/s", "SENDERROR\nSQL SELECT 1 AS one");
            char *ra = th_header(&res, "retry-after");
            ck_assert_msg(res.status == 503 && ra != NULL, "HTTP/%d with the database down: %ld (Retry-After %s)", v, res.status,
                          ra != NULL ? ra : "none");
            ck_assert_msg(res.seconds < 1.0, "HTTP/%d: the 503 took %.0f ms (acquire-timeout is 3 s)", v, res.seconds * 1000);
            free(ra);
            th_response_free(&res);
            usleep(50000);
        }
    }
    /* PostgreSQL comes up: service returns within about a second, on every thread (each thread's
     * pool retries on its own, at most every 250 ms while statements arrive) */
    double t0 = th_now_ms();
    pg_start();
    double t1 = th_now_ms(), first_ok = -1, last_fail = t1;
    int streak = 0;
    struct first_ok f = {&server, TH_HTTP1, 0};
    while (streak < 10 && th_now_ms() - t1 < 5000) {
        int ok = 1;
        for (f.version = TH_HTTP1; f.version <= TH_HTTP2; ++f.version)
            ok &= request_succeeds(&f);
        if (ok && first_ok < 0)
            first_ok = th_now_ms();
        if (!ok)
            last_fail = th_now_ms();
        streak = ok ? streak + 1 : 0;
        usleep(30000);
    }
    fprintf(stderr,
            "faults: down at start-up: pg_ctl start took %.0f ms; first 200 %.0f ms after it returned; last 503 %.0f ms after "
            "it (0: none)\n",
            t1 - t0, first_ok - t1, last_fail - t1);
    ck_assert_msg(streak >= 10, "requests still fail 5 s after PostgreSQL started (last status %ld)", f.last_status);
    ck_assert_msg(first_ok - t1 < 1000, "the first success came %.0f ms after PostgreSQL accepted connections", first_ok - t1);
    ck_assert_msg(last_fail - t1 < 1000, "a request failed %.0f ms after PostgreSQL accepted connections", last_fail - t1);
    stop_server(&server);
}
END_TEST

/* ==== statement-timeout and request-timeout ==== */

static const char *TIMEOUT_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 1\n"
                                  "db.bind:\n"
                                  "  - url: \"@PG@?application_name=flt_st_@PORT@\"\n"
                                  "    pool: {max: 1, statement-timeout: 0.5}\n"
                                  "  - url: \"@PG@?application_name=flt_rt_@PORT@\"\n"
                                  "    key: rt\n"
                                  "    pool: {max: 1, request-timeout: 0.5}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /s:\n"
                                  "        c.handler: " DB_HANDLERS ":db_script\n"
                                  "      /status:\n"
                                  "        db.status: ON\n";

static void expect_504(int version, const char *path, const char *script, double min_ms, double max_ms, const char *what)
{
    th_response_t res;
    db_request(&server, &res, version, NULL, path, script);
    char *ss = th_header(&res, "x-sqlstate");
    fprintf(stderr, "faults: %s, HTTP/%d: %ld (SQLSTATE %s) after %.0f ms\n", what, version, res.status, ss != NULL ? ss : "-",
            res.seconds * 1000);
    ck_assert_msg(res.status == 504, "%s, HTTP/%d: status %ld body %s", what, version, res.status, res.body);
    ck_assert_msg(ss != NULL && strcmp(ss, "57014") == 0, "%s: SQLSTATE %s", what, ss != NULL ? ss : "(none)");
    ck_assert_msg(res.seconds * 1000 >= min_ms && res.seconds * 1000 < max_ms, "%s, HTTP/%d: answered after %.0f ms", what, version,
                  res.seconds * 1000);
    free(ss);
    th_response_free(&res);
}

static double expect_ok(int version, const char *path, const char *script, const char *what)
{
    th_response_t res;
    db_request(&server, &res, version, NULL, path, script);
    ck_assert_msg(res.status == 200, "%s, HTTP/%d: status %ld body %s", what, version, res.status, res.body);
    ck_assert_msg(strstr(res.body, "\"status\":\"OK\"") != NULL && strstr(res.body, "ERROR") == NULL, "%s: %s", what, res.body);
    double ms = res.seconds * 1000;
    th_response_free(&res);
    return ms;
}

START_TEST(statement_timeout_and_request_timeout_answer_504_and_the_connection_is_reused)
{
    start_server(&server, TIMEOUT_CONF);
    char *st_app = th_fmt("flt_st_%d", server.port);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        /* statement-timeout: 0.5 s, on a shared connection and in a transaction */
        expect_504(v, "/s", "SENDERROR\nSQL SELECT pg_sleep(5)", 450, 1500, "statement-timeout 0.5 s, autocommit");
        double ms = expect_ok(v, "/s", "SQL SELECT 1 AS one", "the connection after a statement-timeout");
        ck_assert_msg(ms < 500, "the only connection (max 1) was busy for %.0f ms after the timeout", ms);
        expect_504(v, "/s", "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(5)\nCOMMIT", 450, 1500,
                   "statement-timeout 0.5 s, in a transaction");
        ms = expect_ok(v, "/s", "BEGIN\nSQL SELECT 2 AS two\nCOMMIT", "a transaction after a statement-timeout");
        ck_assert_msg(ms < 500, "the connection was busy for %.0f ms after the timeout", ms);

        /* request-timeout: 0.5 s; in a transaction the running statement is cancelled (PQcancel) */
        expect_504(v, "/s?key=rt", "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(5)\nCOMMIT", 450, 1500,
                   "request-timeout 0.5 s, in a transaction");
        ms = expect_ok(v, "/s?key=rt", "BEGIN\nSQL SELECT 3 AS three\nCOMMIT", "after a request-timeout in a transaction");
        ck_assert_msg(ms < 1000, "the connection was busy for %.0f ms after the cancelled transaction", ms);
        /* on a shared connection nothing is cancelled (it could be another request's statement): the
         * statement runs to its end, and meanwhile the next request waits for the only connection (and
         * would itself hit request-timeout); then the connection serves again */
        expect_504(v, "/s?key=rt", "SENDERROR\nSQL SELECT pg_sleep(1.2)", 450, 1500, "request-timeout 0.5 s, autocommit");
        usleep(1000000);
        ms = expect_ok(v, "/s?key=rt", "SQL SELECT 4 AS four", "after a request-timeout on a shared connection");
        ck_assert_msg(ms < 500, "the next request waited %.0f ms", ms);
    }
    /* one connection each the whole time */
    ck_assert_int_eq(pg_conns(st_app), 1);
    char *status_json = get_status(&server, "/status");
    long timeouts_st = status_sum(status_json, 0, "timeouts"), timeouts_rt = status_sum(status_json, 1, "timeouts");
    fprintf(stderr, "faults: timeouts counted on the status page: statement-timeout bind %ld, request-timeout bind %ld\n",
            timeouts_st, timeouts_rt);
    /* every statement answered TIMEOUT is counted, whichever timer fired first: h2o-db's, or
     * PostgreSQL's statement_timeout (same deadline) */
    ck_assert_msg(timeouts_st == 4, "statement-timeout bind: timeouts %ld (expected 4: four statements were answered TIMEOUT)",
                  timeouts_st);
    ck_assert_msg(timeouts_rt == 4, "request-timeout bind: timeouts %ld (expected 4)", timeouts_rt);
    free(status_json);
    stop_server(&server);
    free(st_app);
}
END_TEST

/* ==== leak-threshold ==== */

static const char *LEAK_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=flt_leak_@PORT@\"\n"
                               "  key: leaky_key\n"
                               "  pool: {leak-threshold: 0.5}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /slow-holder:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /quick-one:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

START_TEST(leak_threshold_logs_one_line_naming_the_path)
{
    start_server(&server, LEAK_CONF);
    th_response_t res;
    /* below the threshold: nothing */
    for (int i = 0; i < 3; ++i) {
        db_script(&server, &res, TH_HTTP1, "/quick-one?key=leaky_key", "BEGIN\nSQL SELECT 1 AS one\nSLEEP 100\nCOMMIT");
        th_response_free(&res);
    }
    /* held 2.6 s: reported once (housekeeping looks every second) */
    db_script(&server, &res, TH_HTTP1, "/slow-holder?key=leaky_key", "BEGIN\nSQL SELECT 1 AS one\nSLEEP 2600\nCOMMIT");
    db_assert_result(res.body, 2, "OK", NULL);
    th_response_free(&res);
    char *log = th_server_log(&server);
    int lines = count_substr(log, "leak-threshold");
    char *line = strstr(log, "leak-threshold");
    ck_assert_msg(lines == 1, "%d leak-threshold lines (expected exactly one):\n%s", lines, log);
    while (line > log && line[-1] != '\n')
        --line;
    char *one = strndup(line, strcspn(line, "\n"));
    fprintf(stderr, "faults: leak-threshold 0.5 s, a transaction held 2.6 s: %d line: %s\n", lines, one);
    ck_assert_msg(strstr(one, "/slow-holder") != NULL, "the line does not name the path: %s", one);
    ck_assert_msg(strstr(one, "leaky_key") != NULL, "the line does not name the bind: %s", one);
    ck_assert_msg(strstr(one, "/quick-one") == NULL, "a short transaction was reported: %s", one);
    free(one);
    free(log);
    char *status_json = get_status(&server, "/status");
    ck_assert_int_eq(status_sum(status_json, 0, "leaks"), 1);
    free(status_json);
    stop_server(&server);
}
END_TEST

/* ==== the status page ==== */

static const char *STATUS_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                 "num-threads: 2\n"
                                 "db.bind:\n"
                                 "  - url: \"@PGPW@\"\n"
                                 "    pool: {max: 3, min: 1}\n"
                                 "  - url: sqlite:///status.sqlite3\n"
                                 "    key: lite\n"
                                 "    middleware: OFF\n"
                                 "hosts:\n"
                                 "  default:\n"
                                 "    paths:\n"
                                 "      /s:\n"
                                 "        db.use: lite\n"
                                 "        c.handler: " DB_HANDLERS ":db_script\n"
                                 "      /status:\n"
                                 "        db.status: ON\n";

#define STATUS_ROLE   "flt_status_role"
#define STATUS_SECRET "Flt-S3cret-Pw0rd"

/* A URL for STATUS_ROLE with its password, on the tests' server: postgresql://ROLE:SECRET@HOST:PORT/DB?... */
static char *pw_url(const char *appname)
{
    char host[128], db[128];
    int port;
    ck_assert_msg(sscanf(th_pg_url(), "postgresql://%*[^@]@%127[^:]:%d/%127s", host, &port, db) == 3, "cannot parse %s",
                  th_pg_url());
    return th_fmt("postgresql://" STATUS_ROLE ":" STATUS_SECRET "@%s:%d/%s?application_name=%s", host, port, db, appname);
}

static void ensure_role(void)
{
    if (th_pg_countf("SELECT count(*) FROM pg_roles WHERE rolname = '" STATUS_ROLE "'") == 0)
        pg_exec("CREATE ROLE " STATUS_ROLE " LOGIN PASSWORD '" STATUS_SECRET "'");
    pg_exec("GRANT ALL ON SCHEMA public TO " STATUS_ROLE);
}

/* Replaces @PGPW@ in a template by URL. */
static char *with_url(const char *templ, const char *url)
{
    const char *at = strstr(templ, "@PGPW@");
    ck_assert(at != NULL);
    return th_fmt("%.*s%s%s", (int)(at - templ), templ, url, at + 6);
}

static const char *const COUNTERS[] = {
    "acquires",      "waits",       "acquire_timeouts", "queue_full", "errors",    "connects",   "connect_failures", "reconnects",
    "closed_broken", "closed_idle", "closed_lifetime",  "statements", "pipelined", "cache_hits", "cache_misses",     "timeouts",
    "leaks"};

START_TEST(status_page_json_and_prometheus)
{
    ensure_role();
    char *appname = th_uniq("flt_status"), *url = pw_url(appname), *conf = with_url(STATUS_CONF, url);
    start_server(&server, conf);
    char *s0 = get_status(&server, "/status");

    /* the document's shape */
    ck_assert_int_eq(jnum(s0, "threads"), 2);
    char *key0 = jget(s0, "binds.0.key"), *key1 = jget(s0, "binds.1.key"), *url0 = jget(s0, "binds.0.url"),
         *backend0 = jget(s0, "binds.0.backend"), *backend1 = jget(s0, "binds.1.backend"), *scope = jget(s0, "binds.0.scope"),
         *mw1 = jget(s0, "binds.1.middleware");
    ck_assert_msg(key0 != NULL && strcmp(key0, "\"sa_main\"") == 0, "binds.0.key %s\n%s", key0, s0);
    ck_assert_msg(key1 != NULL && strcmp(key1, "\"lite\"") == 0, "binds.1.key %s", key1);
    ck_assert_msg(backend0 != NULL && strstr(backend0, "postgres") != NULL, "binds.0.backend %s", backend0);
    ck_assert_msg(backend1 != NULL && strstr(backend1, "sqlite") != NULL, "binds.1.backend %s", backend1);
    ck_assert_msg(scope != NULL && strcmp(scope, "\"global\"") == 0, "binds.0.scope %s", scope);
    ck_assert_msg(mw1 != NULL && strcmp(mw1, "false") == 0, "binds.1.middleware %s", mw1);
    ck_assert_msg(url0 != NULL && strstr(url0, STATUS_ROLE ":***@") != NULL, "the URL is not shown masked: %s", url0);
    ck_assert_int_eq(jnum(s0, "binds.0.pool.max"), 3);
    ck_assert_int_eq(jnum(s0, "binds.0.pool.min"), 1);
    ck_assert_int_eq(jnum(s0, "binds.0.pool.acquire_timeout"), 5);
    for (int t = 0; t < 2; ++t) {
        char *p = th_fmt("binds.0.threads.%d.thread", t);
        ck_assert_int_eq(jnum(s0, p), t);
        free(p);
        const char *fields[] = {"connections.total",      "connections.idle",   "connections.busy",
                                "connections.connecting", "connections.pinned", "waiting"};
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i) {
            p = th_fmt("binds.0.threads.%d.%s", t, fields[i]);
            ck_assert_msg(jnum(s0, p) >= 0, "%s missing:\n%s", p, s0);
            free(p);
        }
        for (size_t i = 0; i < sizeof(COUNTERS) / sizeof(COUNTERS[0]); ++i) {
            p = th_fmt("binds.0.threads.%d.%s", t, COUNTERS[i]);
            ck_assert_msg(jnum(s0, p) >= 0, "%s missing:\n%s", p, s0);
            free(p);
        }
    }
    /* min: 1 per thread: two connections open without any request */
    ck_assert_msg(th_wait_until(has_conns, appname, 3000), "min: 1 opened nothing");

    /* the counters move */
    long st0 = status_sum(s0, 0, "statements"), acq0 = status_sum(s0, 0, "acquires"), err0 = status_sum(s0, 0, "errors"),
         rec0 = status_sum(s0, 0, "reconnects"), lite0 = status_sum(s0, 1, "statements");
    th_response_t res;
    for (int i = 0; i < 10; ++i) {
        db_script(&server, &res, i % 2 ? TH_HTTP2 : TH_HTTP1, "/s", "SQL SELECT $1::int AS n\nP 5");
        th_response_free(&res);
    }
    db_script(&server, &res, TH_HTTP1, "/s", "SQL SELECT * FROM flt_no_such_table");
    th_response_free(&res);
    db_script(&server, &res, TH_HTTP1, "/s", "KEY lite\nSQL SELECT 1 AS one");
    db_assert_result(res.body, 0, "OK", "[{\"one\":1}]");
    th_response_free(&res);
    char *s1 = get_status(&server, "/status");
    long st1 = status_sum(s1, 0, "statements"), acq1 = status_sum(s1, 0, "acquires"), err1 = status_sum(s1, 0, "errors"),
         lite1 = status_sum(s1, 1, "statements"), hits = status_sum(s1, 0, "cache_hits"),
         misses = status_sum(s1, 0, "cache_misses");
    ck_assert_msg(st1 - st0 >= 11, "statements moved by %ld", st1 - st0);
    ck_assert_msg(acq1 - acq0 >= 11, "acquires moved by %ld", acq1 - acq0);
    ck_assert_msg(err1 - err0 == 1, "errors moved by %ld (one statement failed)", err1 - err0);
    ck_assert_msg(lite1 - lite0 >= 1, "the SQLite bind's statements moved by %ld", lite1 - lite0);
    ck_assert_msg(hits >= 1 && misses >= 1, "statement cache: %ld hits, %ld misses after the same statement 10 times", hits,
                  misses);

    /* a restart: reconnects */
    ck_assert_int_eq(pg_ctl("restart"), 0);
    struct first_ok f = {&server, TH_HTTP1, 0};
    ck_assert_msg(th_wait_until(request_succeeds, &f, 5000), "no success after the restart");
    char *s2 = get_status(&server, "/status");
    long rec2 = status_sum(s2, 0, "reconnects"), broken2 = status_sum(s2, 0, "closed_broken");
    fprintf(stderr,
            "faults: status page: statements +%ld, acquires +%ld, errors +%ld, cache hits %ld misses %ld; after a restart: "
            "reconnects %ld -> %ld, closed_broken %ld\n",
            st1 - st0, acq1 - acq0, err1 - err0, hits, misses, rec0, rec2, broken2);
    ck_assert_msg(broken2 >= 1, "closed_broken did not move after a restart:\n%s", s2);
    ck_assert_msg(rec2 > rec0, "reconnects did not move after a restart (%ld -> %ld):\n%s", rec0, rec2, s2);

    /* Prometheus */
    db_request(&server, &res, TH_HTTP1, NULL, "/status?format=prometheus", NULL);
    ck_assert_int_eq(res.status, 200);
    char *ctype = th_header(&res, "content-type");
    ck_assert_msg(ctype != NULL && strncmp(ctype, "text/plain", 10) == 0, "content-type %s", ctype);
    free(ctype);
    const char *gauges[] = {"h2o_db_connections", "h2o_db_waiting", "h2o_db_up"};
    for (size_t i = 0; i < 3; ++i) {
        char *type = th_fmt("# TYPE %s gauge\n", gauges[i]),
             *sample = th_fmt("\n%s{key=\"sa_main\",scope=\"global\",thread=\"1\"", gauges[i]);
        ck_assert_msg(strstr(res.body, type) != NULL, "no `%s`:\n%s", type, res.body);
        ck_assert_msg(strstr(res.body, sample) != NULL, "no sample `%s`:\n%s", sample + 1, res.body);
        free(type);
        free(sample);
    }
    for (size_t i = 0; i < sizeof(COUNTERS) / sizeof(COUNTERS[0]); ++i) {
        char *type = th_fmt("# TYPE h2o_db_%s_total counter\n", COUNTERS[i]),
             *help = th_fmt("# HELP h2o_db_%s_total ", COUNTERS[i]),
             *sample = th_fmt("\nh2o_db_%s_total{key=\"lite\",scope=\"global\",thread=\"0\"} ", COUNTERS[i]);
        ck_assert_msg(strstr(res.body, type) != NULL, "no `%s`:\n%s", type, res.body);
        ck_assert_msg(strstr(res.body, help) != NULL, "no `%s`", help);
        ck_assert_msg(strstr(res.body, sample) != NULL, "no sample `%s`", sample + 1);
        free(type);
        free(help);
        free(sample);
    }
    for (const char *st = "idle\0busy\0connecting\0pinned\0"; *st; st += strlen(st) + 1) {
        char *sample = th_fmt("h2o_db_connections{key=\"sa_main\",scope=\"global\",thread=\"0\",state=\"%s\"} ", st);
        ck_assert_msg(strstr(res.body, sample) != NULL, "no `%s`", sample);
        free(sample);
    }
    ck_assert_msg(strstr(res.body, "h2o_db_up{key=\"sa_main\",scope=\"global\",thread=\"0\"} 1\n") != NULL, "not up:\n%s",
                  res.body);
    /* every line is a comment or NAME{LABELS} VALUE */
    for (char *line = res.body; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != '\0')) {
        size_t len = strcspn(line, "\n");
        if (len == 0 || line[0] == '#')
            continue;
        char name[128], value[64];
        ck_assert_msg(sscanf(line, "%127[a-z0-9_]{%*[^}]} %63s", name, value) == 2, "not a sample line: %.*s", (int)len, line);
        ck_assert_msg(strncmp(name, "h2o_db_", 7) == 0, "metric %s", name);
    }
    ck_assert_msg(strstr(res.body, STATUS_SECRET) == NULL, "the password is on the Prometheus page");
    th_response_free(&res);

    /* the password: never on the page, never in the log */
    ck_assert_msg(strstr(s0, STATUS_SECRET) == NULL && strstr(s2, STATUS_SECRET) == NULL, "the password is on the status page");
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, STATUS_SECRET) == NULL, "the password is in the log:\n%s", log);
    free(log);
    free(s0);
    free(s1);
    free(s2);
    free(key0);
    free(key1);
    free(url0);
    free(backend0);
    free(backend1);
    free(scope);
    free(mw1);
    stop_server(&server);
    free(conf);
    free(url);
    free(appname);
}
END_TEST

/* ==== graceful shutdown with transactions in flight ==== */

static const char *SHUTDOWN_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                   "num-threads: 2\n"
                                   "shutdown-timeout: 5\n"
                                   "db.bind:\n"
                                   "  url: \"@PG@?application_name=flt_shutdown_@PORT@\"\n"
                                   "hosts:\n"
                                   "  default:\n"
                                   "    paths:\n"
                                   "      /s:\n"
                                   "        c.handler: " DB_HANDLERS ":db_script\n";

START_TEST(sigterm_lets_transactions_finish_and_exits_0)
{
    start_server(&server, SHUTDOWN_CONF);
    char *appname = th_fmt("flt_shutdown_%d", server.port), *t = th_uniq("flt_shutdown");
    char *sql = th_fmt("CREATE TABLE %s (req int, step int)", t);
    pg_exec(sql);
    free(sql);
    enum { N = 4 };
    char *bodies1[N], *bodies2[N];
    for (int i = 0; i < N; ++i) {
        /* a transaction waiting in the handler (SLEEP), or in the database (pg_sleep) */
        bodies1[i] =
            i % 2 ? th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (%d, 1)\nSLEEP 800\nSQL INSERT INTO %s VALUES (%d, 2)\nCOMMIT\n", t, i,
                           t, i)
                  : th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (%d, 1)\nSQL SELECT pg_sleep(0.8)\nSQL INSERT INTO %s VALUES "
                           "(%d, 2)\nCOMMIT\n",
                           t, i, t, i);
        bodies2[i] =
            i % 2 ? th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (%d, 1)\nSLEEP 800\nSQL INSERT INTO %s VALUES (%d, 2)\nCOMMIT\n", t,
                           100 + i, t, 100 + i)
                  : th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (%d, 1)\nSQL SELECT pg_sleep(0.8)\nSQL INSERT INTO %s VALUES "
                           "(%d, 2)\nCOMMIT\n",
                           t, 100 + i, t, 100 + i);
    }
    /* one client thread each, started 30 ms apart: db_script parses with strtok(), which is not
     * thread-safe, so two worker threads must not parse at the same moment */
    struct bg_posts b[2 * N];
    for (int i = 0; i < 2 * N; ++i) {
        bg_posts_start(b + i, &server, i < N ? TH_HTTP1 : TH_HTTP2, "/s", 1,
                       (const char *const *)(i < N ? bodies1 + i : bodies2 + i - N));
        usleep(30000);
    }
    /* every transaction has begun and inserted its first row */
    struct activity_query q = {appname, "(state LIKE 'idle in transaction%' OR query LIKE 'SELECT pg_sleep%')", 2 * N};
    ck_assert_msg(th_wait_until(activity_reaches, &q, 10000), "the transactions did not start");
    double t0 = th_now_ms();
    int st = th_server_stop(&server, 15000);
    double took = th_now_ms() - t0;
    for (int i = 0; i < 2 * N; ++i)
        bg_posts_join(b + i);
    int finished = 0, cut = 0;
    for (int i = 0; i < 2 * N; ++i) {
        int req = i < N ? i : 100 + i - N;
        th_response_t *r = b[i].res;
        long rows = th_pg_countf("SELECT count(*) FROM %s WHERE req = %d", t, req);
        size_t steps = i % 2 ? 4 : 5; /* BEGIN, INSERT, (pg_sleep), INSERT, COMMIT */
        if (r->curl_error == 0 && r->status == 200 && db_num_results(r->body) == steps && strstr(r->body, "ERROR") == NULL) {
            ++finished;
            ck_assert_msg(rows == 2, "request %d answered its COMMIT but %ld rows are there", req, rows);
        } else {
            ++cut;
            ck_assert_msg(rows == 0, "request %d did not finish (curl %d, status %ld, %s) but %ld of its rows committed", req,
                          r->curl_error, r->status, r->body, rows);
        }
    }
    struct activity_query gone = {appname, "true", 0};
    int closed = th_wait_until(activity_is, &gone, 3000);
    char *log = th_server_log(&server);
    fprintf(stderr,
            "faults: SIGTERM with %d transactions in flight: exit status %d after %.0f ms; %d finished and committed, %d cut "
            "(rolled back); server connections left %ld\n",
            2 * N, st, took, finished, cut, pg_conns(appname));
    ck_assert_msg(st == 0, "exit status %d after SIGTERM; log:\n%s", st, log);
    ck_assert_msg(took < 5000 + 2000, "the server took %.0f ms to stop (shutdown-timeout 5 s)", took);
    ck_assert_msg(strstr(log, "SIGTERM") != NULL, "the log does not mention SIGTERM:\n%s", log);
    ck_assert_msg(finished == 2 * N,
                  "%d of %d transactions in flight did not finish (graceful shutdown finishes in-flight requests)", cut, 2 * N);
    ck_assert_msg(closed, "%ld server connections left after exit", pg_conns(appname));
    ck_assert_int_eq(th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state LIKE 'idle in "
                                  "transaction%%'",
                                  appname),
                     0);
    free(log);
    for (int i = 0; i < 2 * N; ++i)
        bg_posts_free(b + i);
    for (int i = 0; i < N; ++i) {
        free(bodies1[i]);
        free(bodies2[i]);
    }
    free(t);
    free(appname);
}
END_TEST

static void add(Suite *s, const char *name, const TTest *test, int timeout)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_unchecked_fixture(tc, NULL, parent_teardown);
    tcase_add_test(tc, test);
    suite_add_tcase(s, tc);
}
#define ADD(s, test, timeout) add(s, #test, test, timeout)

int main(void)
{
    tracked = mmap(NULL, sizeof(pid_t) * MAX_TRACKED, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (tracked == MAP_FAILED)
        return 2;
    memset(tracked, 0, sizeof(pid_t) * MAX_TRACKED);
    atexit(kill_tracked);
    atexit(pg_ensure_running);
    /* this suite stops and restarts PostgreSQL: it gets a cluster of its own (scripts/test-servers.sh),
     * so that the suites running beside it never see it go down */
    if (getenv("H2O_DB_TEST_PG_RESTARTABLE") != NULL)
        setenv("H2O_DB_TEST_PG", getenv("H2O_DB_TEST_PG_RESTARTABLE"), 1);
    curl_global_init(CURL_GLOBAL_ALL);
    Suite *s = suite_create("faults");
    ADD(s, postgres_restarted_under_load, 60);
    ADD(s, terminated_backends_fail_their_requests_and_the_next_ones_succeed, 60);
    ADD(s, pool_exhausted_tenfold_answers_503_quickly_and_does_not_grow, 90);
    ADD(s, clients_that_leave_mid_transaction_commit_nothing, 90);
    ADD(s, database_down_at_start_up, 60);
    ADD(s, statement_timeout_and_request_timeout_answer_504_and_the_connection_is_reused, 60);
    ADD(s, leak_threshold_logs_one_line_naming_the_path, 30);
    ADD(s, status_page_json_and_prometheus, 60);
    ADD(s, sigterm_lets_transactions_finish_and_exits_0, 60);
    return th_run_suite(s);
}
