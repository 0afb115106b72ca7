/*
 * bench/faults (run it through bench/faults, the script, which builds this and starts a
 * PostgreSQL of its own): how fast h2o-db handles the faults that t/test_faults.c checks, on the
 * real server and a real PostgreSQL. A program that reports, not a test: it prints figures
 * ("bench-faults: ...") and judges none of them; a scenario fails only when it cannot run (the
 * server does not start, a request gets no answer at all).
 *
 *   restart    16 clients in a loop (HTTP/1.1 and HTTP/2) while PostgreSQL stops for 1.2 s and
 *              starts again: the answers during the outage (503), the slowest request of all, the
 *              first 200 after `pg_ctl start -w` returned and the last failure after it
 *   terminate  pg_terminate_backend under four running statements: how soon their 503s come
 *   exhaust    24 requests at once, each holding a transaction 500 ms, against max 2, queue 4,
 *              acquire-timeout 0.3 s, 4 + 24 rounds: how soon the 503s come, and the server's
 *              VmRSS over the last 24 rounds (576 requests)
 *   down       the database down when the server starts: how soon the 503s come; once it is
 *              started, the first 200 and the last failure
 *   timeouts   statement-timeout and request-timeout 0.5 s: when the 504s come, and how long the
 *              next request on the only connection (max 1) takes
 *   gone       1000 clients that leave mid-transaction (HTTP/1.1 and HTTP/2, batches of 100): how
 *              soon PostgreSQL and the status page show every connection idle again
 *   shutdown   SIGTERM with 8 transactions of 0.8 s in flight: how soon the server exits
 *
 * `bench/faults [SCENARIO...]` runs the ones named (default: all).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include "db_util.h"

static th_server_t server;

/* ---- servers started by a scenario: killed by the parent even after the child died ---- */

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

/* A server the test stopped (and reaped) itself: its pid may belong to anybody later. */
static void untrack(pid_t pid)
{
    for (int i = 0; i < MAX_TRACKED; ++i)
        if (tracked[i] == pid)
            tracked[i] = 0;
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
    pid_t pid = s->pid;
    int st = th_server_stop(s, 15000);
    untrack(pid);
    ck_assert_msg(st == 0, "exit status %d; log:\n%s", st, th_server_log(s));
}

/* ---- figures ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A growable array of durations in milliseconds. */
struct ms {
    double *v;
    size_t n, cap;
};

static void ms_add(struct ms *m, double v)
{
    if (m->n == m->cap) {
        m->cap = m->cap == 0 ? 1024 : m->cap * 2;
        m->v = realloc(m->v, m->cap * sizeof(double));
    }
    m->v[m->n++] = v;
}

/* "n N, median X ms, p99 Y ms, max Z ms" into buf. */
static const char *ms_text(struct ms *m, char *buf, size_t size)
{
    if (m->n == 0) {
        snprintf(buf, size, "n 0");
        return buf;
    }
    qsort(m->v, m->n, sizeof(double), cmp_double);
    snprintf(buf, size, "n %zu, median %.1f ms, p99 %.1f ms, max %.1f ms", m->n, m->v[m->n / 2], m->v[m->n * 99 / 100],
             m->v[m->n - 1]);
    return buf;
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
        fprintf(stderr, "bench-faults: PostgreSQL was left stopped; starting it again\n");
        pg_ctl("start");
    }
}

/* ---- the status page ---- */

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

/* ---- a wrk-like load: CONCURRENCY requests always in flight, every answer recorded ---- */

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

/* ---- n POSTs at once (HTTP/2 through an h2c Upgrade: see t/test_faults.c) ---- */

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

/* ---- waiting for facts (so that each measurement starts from a known state) ---- */

struct activity_query {
    const char *appname, *extra;
    long want;
};

static int activity_reaches(void *arg)
{
    struct activity_query *q = arg;
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND %s", q->appname, q->extra) >=
           q->want;
}

static int pool_settled(void *arg)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state <> 'idle'",
                        (const char *)arg) == 0;
}

static int status_idle(void *arg)
{
    char *json = get_status(arg, "/status");
    int idle = status_sum(json, 0, "connections.busy") == 0 && status_sum(json, 0, "connections.pinned") == 0 &&
               status_sum(json, 0, "waiting") == 0;
    free(json);
    return idle;
}

/* ==== restart: PostgreSQL stopped for 1.2 s under load ==== */

static const char *RESTART_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 2\n"
                                  "db.bind:\n"
                                  "  url: \"@PG@?application_name=bf_restart_@PORT@\"\n"
                                  "  pool: {max: 2, acquire-timeout: 2}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /e:\n"
                                  "        c.handler: " DB_HANDLERS ":db_echo\n";

struct restart_figures {
    double stop0, stop1, start0, start1;
    struct ms outage;
    double slowest, first_ok, last_fail;
    size_t total;
};

static void restart_analyse(const struct load *ld, struct restart_figures *f)
{
    for (size_t i = 0; i < ld->n; ++i) {
        const struct sample *s = ld->samples + i;
        double d = s->t1 - s->t0;
        ++f->total;
        if (d > f->slowest)
            f->slowest = d;
        if (s->t0 > f->stop1 && s->t1 < f->start0)
            ms_add(&f->outage, d);
        if (s->t1 > f->start1 && s->status == 200 && (f->first_ok < 0 || s->t1 < f->first_ok))
            f->first_ok = s->t1;
        if (s->t1 > f->start1 && s->status != 200 && s->t1 > f->last_fail)
            f->last_fail = s->t1;
    }
}

START_TEST(scenario_restart)
{
    start_server(&server, RESTART_CONF);
    struct load loads[2];
    load_start(loads + 0, &server, "/e?id=7", NULL, TH_HTTP1, 8);
    load_start(loads + 1, &server, "/e?id=7", NULL, TH_HTTP2, 8);
    struct restart_figures f = {.first_ok = -1};
    usleep(800000); /* a bench: fixed phases, measured */
    f.stop0 = th_now_ms();
    pg_stop();
    f.stop1 = th_now_ms();
    usleep(1200000);
    f.start0 = th_now_ms();
    pg_start();
    f.start1 = th_now_ms();
    f.last_fail = f.start1;
    usleep(2000000);
    load_stop(loads + 0);
    load_stop(loads + 1);
    for (int l = 0; l < 2; ++l)
        restart_analyse(loads + l, &f);
    char buf[128];
    printf("bench-faults: restart: %zu requests from 16 clients; pg_ctl stop took %.0f ms, start %.0f ms; answers to requests "
           "sent while PostgreSQL was stopped: %s; slowest request %.0f ms (acquire-timeout 2000 ms); first 200 %.0f ms after "
           "`pg_ctl start -w` returned, last failure %.0f ms after it (0: none)\n",
           f.total, f.stop1 - f.stop0, f.start1 - f.start0, ms_text(&f.outage, buf, sizeof(buf)), f.slowest, f.first_ok - f.start1,
           f.last_fail - f.start1);
    free(f.outage.v);
    free(loads[0].samples);
    free(loads[1].samples);
    stop_server(&server);
}
END_TEST

/* ==== terminate: backends killed under running statements ==== */

static const char *TERM_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=bf_term_@PORT@\"\n"
                               "  pool: {max: 4}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n";

START_TEST(scenario_terminate)
{
    start_server(&server, TERM_CONF);
    char *appname = th_fmt("bf_term_%d", server.port);
    const char *bodies[] = {"SENDERROR\nSQL SELECT pg_sleep(20)", "SENDERROR\nSQL SELECT pg_sleep(20)",
                            "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(20)\nCOMMIT",
                            "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(20)\nCOMMIT"};
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        struct bg_posts bs[4];
        for (int i = 0; i < 4; ++i) {
            bg_posts_start(bs + i, &server, v, "/s", 1, bodies + i);
            struct activity_query q = {appname, "state = 'active' AND query LIKE 'SELECT pg_sleep%'", i + 1};
            ck_assert_msg(th_wait_until(activity_reaches, &q, 10000), "pg_sleep %d never ran", i + 1);
        }
        double t_kill = th_now_ms(), slowest = 0;
        th_pg_countf("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s' AND state = "
                     "'active'",
                     appname);
        int n503 = 0;
        for (int i = 0; i < 4; ++i) {
            bg_posts_join(bs + i);
            if (bs[i].t_done - t_kill > slowest)
                slowest = bs[i].t_done - t_kill;
            n503 += bs[i].res->status == 503;
            bg_posts_free(bs + i);
        }
        printf("bench-faults: terminate: HTTP/%d: %d of 4 requests on terminated backends answered 503, the last %.0f ms after "
               "pg_terminate_backend\n",
               v, n503, slowest);
    }
    stop_server(&server);
    free(appname);
}
END_TEST

/* ==== exhaust: the pool at 12× its capacity, round after round ==== */

static const char *EXHAUST_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 1\n"
                                  "db.bind:\n"
                                  "  url: \"@PG@?application_name=bf_exhaust_@PORT@\"\n"
                                  "  pool: {max: 2, queue: 4, acquire-timeout: 0.3}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /s:\n"
                                  "        c.handler: " DB_HANDLERS ":db_script\n"
                                  "      /status:\n"
                                  "        db.status: ON\n";

#define EXHAUST_N      24
#define EXHAUST_ROUNDS 24

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

/* One burst of EXHAUST_N transaction-holding requests; the 503s' durations go to busy. */
static int exhaust_round(int version, struct ms *busy)
{
    const char *bodies[EXHAUST_N];
    for (int i = 0; i < EXHAUST_N; ++i)
        bodies[i] = "SENDERROR\nBEGIN\nSQL SELECT 1 AS one\nSLEEP 500\nCOMMIT";
    th_response_t res[EXHAUST_N];
    par_posts(&server, res, EXHAUST_N, version, "/s", bodies);
    int ok = 0;
    for (int i = 0; i < EXHAUST_N; ++i) {
        ck_assert_msg(res[i].curl_error == 0, "HTTP/%d: curl error %d", version, res[i].curl_error);
        ok += res[i].status == 200;
        if (res[i].status == 503)
            ms_add(busy, res[i].seconds * 1000);
        th_response_free(res + i);
    }
    return ok;
}

START_TEST(scenario_exhaust)
{
    start_server(&server, EXHAUST_CONF);
    struct ms warm = {0}, busy = {0};
    int ok = 0;
    for (int i = 0; i < 4; ++i)
        ok += exhaust_round(i % 2 ? TH_HTTP2 : TH_HTTP1, &warm);
    long rss0 = vm_rss_kb(server.pid);
    double t0 = th_now_ms();
    for (int i = 0; i < EXHAUST_ROUNDS; ++i)
        ok += exhaust_round(i % 2 ? TH_HTTP2 : TH_HTTP1, &busy);
    double took = th_now_ms() - t0;
    ck_assert_msg(th_wait_until(status_idle, &server, 10000), "the pool did not go idle");
    long rss1 = vm_rss_kb(server.pid);
    char buf[128];
    printf("bench-faults: exhaust: %d rounds of %d requests holding a transaction 500 ms (max 2, queue 4, acquire-timeout "
           "300 ms): %d served; the 503s of the last %d rounds: %s; those %d rounds took %.1f s; VmRSS %ld kB -> %ld kB "
           "(%+ld kB)\n",
           4 + EXHAUST_ROUNDS, EXHAUST_N, ok, EXHAUST_ROUNDS, ms_text(&busy, buf, sizeof(buf)), EXHAUST_ROUNDS, took / 1000, rss0,
           rss1, rss1 - rss0);
    free(warm.v);
    free(busy.v);
    stop_server(&server);
}
END_TEST

/* ==== down: the database down when the server starts ==== */

static const char *DOWN_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 2\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=bf_down_@PORT@\"\n"
                               "  pool: {acquire-timeout: 3}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n";

static long one_request(int version, double *ms)
{
    th_response_t res;
    db_request(&server, &res, version, NULL, "/s", "SENDERROR\nSQL SELECT 1 AS one");
    long status = res.status;
    if (ms != NULL)
        *ms = res.seconds * 1000;
    th_response_free(&res);
    return status;
}

START_TEST(scenario_down)
{
    pg_stop();
    start_server(&server, DOWN_CONF);
    struct ms fail = {0};
    for (int i = 0; i < 10; ++i) {
        double ms;
        long st = one_request(i < 5 ? TH_HTTP1 : TH_HTTP2, &ms);
        ck_assert_msg(st == 503, "status %ld with the database down", st);
        ms_add(&fail, ms);
    }
    double t0 = th_now_ms();
    pg_start();
    double t1 = th_now_ms(), first_ok = -1, last_fail = t1;
    int streak = 0;
    while (streak < 10 && th_now_ms() - t1 < 10000) {
        int ok = one_request(TH_HTTP1, NULL) == 200;
        ok &= one_request(TH_HTTP2, NULL) == 200;
        if (ok && first_ok < 0)
            first_ok = th_now_ms();
        if (!ok)
            last_fail = th_now_ms();
        streak = ok ? streak + 1 : 0;
        usleep(30000); /* a bench: one round every 30 ms */
    }
    char buf[128];
    printf("bench-faults: down: 503s with the database down (acquire-timeout 3 s): %s; pg_ctl start took %.0f ms; first 200 "
           "%.0f ms after it returned, last failure %.0f ms after it (0: none)\n",
           ms_text(&fail, buf, sizeof(buf)), t1 - t0, first_ok - t1, last_fail - t1);
    free(fail.v);
    stop_server(&server);
}
END_TEST

/* ==== timeouts: statement-timeout and request-timeout 0.5 s ==== */

static const char *TIMEOUT_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 1\n"
                                  "db.bind:\n"
                                  "  - url: \"@PG@?application_name=bf_st_@PORT@\"\n"
                                  "    pool: {max: 1, statement-timeout: 0.5}\n"
                                  "  - url: \"@PG@?application_name=bf_rt_@PORT@\"\n"
                                  "    key: rt\n"
                                  "    pool: {max: 1, request-timeout: 0.5}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /s:\n"
                                  "        c.handler: " DB_HANDLERS ":db_script\n";

/* A request that times out, then the next one on the same (only) connection, right after. */
static void timeout_pair(int v, const char *path, const char *script, const char *next, const char *what)
{
    th_response_t res;
    db_request(&server, &res, v, NULL, path, script);
    double ms = res.seconds * 1000;
    long status = res.status;
    th_response_free(&res);
    db_request(&server, &res, v, NULL, path, next);
    char *first = db_status_of(res.body, 0);
    printf("bench-faults: timeouts: %s, HTTP/%d: %ld after %.0f ms; the next request: %s after %.0f ms\n", what, v, status, ms,
           first, res.seconds * 1000);
    free(first);
    th_response_free(&res);
}

START_TEST(scenario_timeouts)
{
    start_server(&server, TIMEOUT_CONF);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        timeout_pair(v, "/s", "SENDERROR\nSQL SELECT pg_sleep(5)", "SQL SELECT 1 AS one", "statement-timeout 0.5 s, autocommit");
        timeout_pair(v, "/s", "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(5)\nCOMMIT", "BEGIN\nSQL SELECT 2 AS two\nCOMMIT",
                     "statement-timeout 0.5 s, in a transaction");
        timeout_pair(v, "/s?key=rt", "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(5)\nCOMMIT", "BEGIN\nSQL SELECT 3 AS three\nCOMMIT",
                     "request-timeout 0.5 s, in a transaction (cancelled)");
        /* not cancelled: the next request waits for the statement's end, and times out itself */
        timeout_pair(v, "/s?key=rt", "SENDERROR\nSQL SELECT pg_sleep(1.2)", "SQL SELECT 4 AS four",
                     "request-timeout 0.5 s, autocommit (runs to its end)");
        usleep(1000000); /* a bench: let pg_sleep(1.2) end before the next round */
    }
    stop_server(&server);
}
END_TEST

/* ==== gone: clients that leave mid-transaction ==== */

static const char *GONE_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=bf_gone_@PORT@\"\n"
                               "  pool: {max: 8, acquire-timeout: 60}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

#define GONE_BATCH 100

static int gone_running(const char *appname, int batch)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state = 'active' AND query = "
                        "'SELECT pg_sleep(60) AS batch_%d'",
                        appname, batch) >= 8;
}

/* HTTP/1: raw sockets, closed once 8 transactions of the batch run */
static void gone_http1(const char *body, const char *appname, int batch)
{
    int fds[GONE_BATCH];
    char *req = th_fmt("POST /s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                       strlen(body), body);
    for (int i = 0; i < GONE_BATCH; ++i) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        ck_assert_msg(connect(fds[i], (struct sockaddr *)&sin, sizeof(sin)) == 0, "connect: %s", strerror(errno));
        ck_assert(write(fds[i], req, strlen(req)) == (ssize_t)strlen(req));
    }
    for (double end = th_now_ms() + 10000; !gone_running(appname, batch) && th_now_ms() < end;)
        usleep(20000); /* a poll loop */
    for (int i = 0; i < GONE_BATCH; ++i)
        close(fds[i]);
    free(req);
}

/* HTTP/2: one connection, the transfers abandoned once 8 transactions of the batch run */
static void gone_http2(const char *body, const char *appname, int batch)
{
    char *url = th_url(&server, "/s");
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    CURL *easies[GONE_BATCH];
    for (int i = 0; i < GONE_BATCH; ++i) {
        CURL *e = easies[i] = curl_easy_init();
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, ld_discard);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_0);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_multi_add_handle(m, e);
    }
    int running = 1;
    for (double end = th_now_ms() + 10000, next = 0; running && th_now_ms() < end;) {
        curl_multi_perform(m, &running);
        if (th_now_ms() >= next) {
            if (gone_running(appname, batch))
                break;
            next = th_now_ms() + 20;
        }
        curl_multi_poll(m, NULL, 0, 10, NULL);
    }
    for (int i = 0; i < GONE_BATCH; ++i) {
        curl_multi_remove_handle(m, easies[i]);
        curl_easy_cleanup(easies[i]);
    }
    curl_multi_cleanup(m);
    free(url);
}

START_TEST(scenario_gone)
{
    start_server(&server, GONE_CONF);
    char *appname = th_fmt("bf_gone_%d", server.port), *t = th_uniq("bf_gone");
    char *sql = th_fmt("CREATE TABLE %s (id serial PRIMARY KEY, v text)", t);
    free(th_pg(sql));
    free(sql);
    double t0 = th_now_ms(), t1 = 0;
    for (int i = 0; i < 10; ++i) {
        char *body = th_fmt("BEGIN\nSQL INSERT INTO %s (v) VALUES ('gone')\nSQL SELECT pg_sleep(60) AS batch_%d\nCOMMIT\n", t, i);
        if (i < 5)
            gone_http1(body, appname, i);
        else
            gone_http2(body, appname, i);
        if (i == 4)
            t1 = th_now_ms();
        free(body);
    }
    double t2 = th_now_ms();
    th_wait_until(pool_settled, appname, 30000);
    double t_settled = th_now_ms();
    th_wait_until(status_idle, &server, 30000);
    double t_idle = th_now_ms();
    printf("bench-faults: gone: 5 batches of %d HTTP/1 clients in %.1f s, 5 of %d HTTP/2 clients in %.1f s (each batch left once "
           "8 of its transactions ran); after the last batch left, PostgreSQL saw every session idle after %.0f ms, the status "
           "page every connection idle after %.0f ms; rows committed %ld\n",
           GONE_BATCH, (t1 - t0) / 1000, GONE_BATCH, (t2 - t1) / 1000, t_settled - t2, t_idle - t2,
           th_pg_countf("SELECT count(*) FROM %s", t));
    stop_server(&server);
    free(t);
    free(appname);
}
END_TEST

/* ==== shutdown: SIGTERM with transactions in flight ==== */

static const char *SHUTDOWN_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                   "num-threads: 2\n"
                                   "shutdown-timeout: 5\n"
                                   "db.bind:\n"
                                   "  url: \"@PG@?application_name=bf_shutdown_@PORT@\"\n"
                                   "hosts:\n"
                                   "  default:\n"
                                   "    paths:\n"
                                   "      /s:\n"
                                   "        c.handler: " DB_HANDLERS ":db_script\n";

START_TEST(scenario_shutdown)
{
    start_server(&server, SHUTDOWN_CONF);
    char *appname = th_fmt("bf_shutdown_%d", server.port);
    const char *bodies[] = {"BEGIN\nSQL SELECT 1 AS one\nSLEEP 800\nCOMMIT\n", "BEGIN\nSQL SELECT pg_sleep(0.8)\nCOMMIT\n"};
    struct bg_posts b[8];
    for (int i = 0; i < 8; ++i)
        bg_posts_start(b + i, &server, i < 4 ? TH_HTTP1 : TH_HTTP2, "/s", 1, bodies + i % 2);
    struct activity_query q = {appname, "(state LIKE 'idle in transaction%' OR query LIKE 'SELECT pg_sleep%')", 8};
    int all = th_wait_until(activity_reaches, &q, 10000);
    double t0 = th_now_ms();
    pid_t pid = server.pid;
    int st = th_server_stop(&server, 30000);
    untrack(pid);
    double took = th_now_ms() - t0;
    int ok = 0;
    for (int i = 0; i < 8; ++i) {
        bg_posts_join(b + i);
        ok += b[i].res->status == 200;
        bg_posts_free(b + i);
    }
    printf("bench-faults: shutdown: SIGTERM with %s8 transactions of 0.8 s in flight: exit status %d after %.0f ms "
           "(shutdown-timeout 5 s); %d of 8 answered 200\n",
           all ? "" : "(not all seen) ", st, took, ok);
    free(appname);
}
END_TEST

/* ---- the program ---- */

/* runs in the parent process, after the scenario's child ended however it ended */
static void parent_teardown(void)
{
    kill_tracked();
    pg_ensure_running();
}

int main(int argc, char **argv)
{
    tracked = mmap(NULL, sizeof(pid_t) * MAX_TRACKED, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (tracked == MAP_FAILED)
        return 2;
    memset(tracked, 0, sizeof(pid_t) * MAX_TRACKED);
    if (getenv("H2O_DB_TEST_PG_RESTARTABLE") != NULL)
        setenv("H2O_DB_TEST_PG", getenv("H2O_DB_TEST_PG_RESTARTABLE"), 1);
    if (th_pg_url() == NULL || getenv("H2O_DB_TEST_PG_CTL") == NULL || getenv("H2O_DB_TEST_PGDATA") == NULL ||
        getenv("H2O_DB_TEST_PG_LOG") == NULL) {
        fprintf(stderr, "bench-faults: no PostgreSQL to stop and start: run it through bench/faults\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_ALL);
    const struct {
        const char *name;
        const TTest *test;
    } scenarios[] = {{"restart", scenario_restart},  {"terminate", scenario_terminate}, {"exhaust", scenario_exhaust},
                     {"down", scenario_down},        {"timeouts", scenario_timeouts},   {"gone", scenario_gone},
                     {"shutdown", scenario_shutdown}};
    Suite *s = suite_create("bench-faults");
    for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); ++i) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; ++a)
            wanted |= strcmp(argv[a], scenarios[i].name) == 0;
        if (!wanted)
            continue;
        TCase *tc = tcase_create(scenarios[i].name);
        tcase_set_timeout(tc, 120);
        tcase_add_unchecked_fixture(tc, NULL, parent_teardown);
        tcase_add_test(tc, scenarios[i].test);
        suite_add_tcase(s, tc);
    }
    return th_run_suite(s);
}
