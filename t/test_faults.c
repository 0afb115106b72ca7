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
 * The tests wait for facts, never for time: what the status page shows (connections pinned,
 * statements waiting, a pool down or up, counters), what pg_stat_activity shows (a statement
 * running, sessions waiting at a gate, nothing left in a transaction), what the server logs, and
 * how many answers the clients got. A request holds its connection for as long as the test wants
 * by waiting at a gate, an advisory lock that the test holds (db_gate_close, db_util.h), never by
 * sleeping for a guessed duration; a client leaves only once PostgreSQL shows its transaction
 * running. Every wait is bounded (WAIT_MS, scaled by H2O_DB_TEST_TIME_FACTOR like th_wait_until:
 * a hang guard far above what a loaded machine needs), and the few clock bounds left tell a
 * behaviour from its failure by a wide margin (a statement cancelled instead of sleeping a
 * minute, a shutdown well before its timeout) or cannot be hit by load (a timeout that fired no
 * earlier than configured).
 *
 * How fast all this is (latencies, recovery times, the server's memory under exhaustion) is
 * measured by bench/faults, not asserted here. Every test prints what it saw (counts,
 * counters) on stderr ("faults: ..."), so that a CI log shows it:
 * `meson test -C build faults --print-errorlogs -v`.
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

/* ---- facts a test waits for ---- */

/* The longest a test waits for something it expects within milliseconds: a hang guard, far
 * above what a loaded machine needs, never a measure of speed. */
#define WAIT_MS 10000

/* MS scaled like th_wait_until's limits (H2O_DB_TEST_TIME_FACTOR: slower builds, e.g. ASan). */
static double scaled(double ms)
{
    return ms * th_time_factor();
}

/* Whether every thread of bind B shows `down` as WANT ("true" or "false") on the status page. */
static int every_thread_down_is(const char *json, int bind, const char *want)
{
    for (int t = 0;; ++t) {
        char *path = th_fmt("binds.%d.threads.%d.down", bind, t), *down = jget(json, path);
        free(path);
        if (down == NULL)
            return t > 0;
        int same = strcmp(down, want) == 0;
        free(down);
        if (!same)
            return 0;
    }
}

struct pool_down {
    th_server_t *s;
    int bind;
    const char *want; /* "true": every thread knows the database is down; "false": every one is up */
};

static int pool_down_is(void *arg)
{
    struct pool_down *p = arg;
    char *json = get_status(p->s, "/status");
    int yes = every_thread_down_is(json, p->bind, p->want);
    free(json);
    return yes;
}

/* The gauges of a bind, summed over its threads, on the status page; -1 = any value. */
struct gauges {
    th_server_t *s;
    int bind;
    long total, connecting, busy, pinned, waiting;
};

static int gauge_is(const char *json, int bind, const char *field, long want)
{
    return want < 0 || status_sum(json, bind, field) == want;
}

static int gauges_are(void *arg)
{
    struct gauges *g = arg;
    char *json = get_status(g->s, "/status");
    int yes = gauge_is(json, g->bind, "connections.total", g->total) &&
              gauge_is(json, g->bind, "connections.connecting", g->connecting) &&
              gauge_is(json, g->bind, "connections.busy", g->busy) && gauge_is(json, g->bind, "connections.pinned", g->pinned) &&
              gauge_is(json, g->bind, "waiting", g->waiting);
    free(json);
    return yes;
}

/* Waits until the bind's gauges are as given, or fails the test with the status page. */
static void wait_gauges(th_server_t *s, struct gauges g, const char *what)
{
    g.s = s;
    if (!th_wait_until(gauges_are, &g, WAIT_MS)) {
        char *json = get_status(s, "/status");
        ck_abort_msg("%s: bind %d never showed connections %ld (connecting %ld, busy %ld, pinned %ld), waiting %ld (-1: any) in "
                     "%d s:\n%s",
                     what, g.bind, g.total, g.connecting, g.busy, g.pinned, g.waiting, WAIT_MS / 1000, json);
    }
}

/* N connections open (none still connecting). */
static void wait_connections(th_server_t *s, int bind, long n, const char *what)
{
    wait_gauges(s, (struct gauges){.bind = bind, .total = n, .connecting = 0, .busy = -1, .pinned = -1, .waiting = -1}, what);
}

/* Nothing of the bind is in use or under way: no connection connecting, busy or pinned, nobody waiting. */
static void wait_pool_idle(th_server_t *s, int bind, const char *what)
{
    wait_gauges(s, (struct gauges){.bind = bind, .total = -1, .connecting = 0, .busy = 0, .pinned = 0, .waiting = 0}, what);
}

/* PINNED connections pinned by transactions and WAITING statements waiting for one. */
static void wait_pinned(th_server_t *s, int bind, long pinned, long waiting, const char *what)
{
    wait_gauges(s, (struct gauges){.bind = bind, .total = -1, .connecting = -1, .busy = -1, .pinned = pinned, .waiting = waiting},
                what);
}

struct counter_goal {
    th_server_t *s;
    int bind;
    const char *field;
    long want;
};

static int counter_reaches(void *arg)
{
    struct counter_goal *g = arg;
    char *json = get_status(g->s, "/status");
    long v = status_sum(json, g->bind, g->field);
    free(json);
    return v >= g->want;
}

struct log_goal {
    th_server_t *s;
    const char *text;
};

static int log_has(void *arg)
{
    struct log_goal *g = arg;
    return th_log_count(g->s, g->text) > 0;
}

/* ---- pg_stat_activity ---- */

static long pg_conns(const char *appname)
{
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'", appname);
}

/* Samples the number of connections with an application_name until stopped; survives a
 * PostgreSQL that goes away (it reconnects). */
struct watcher {
    pthread_t tid;
    const char *appname;
    int stop; /* set by the test, read by the thread: __atomic */
    long max, samples;
};

static void quiet_notice(void *arg, const char *message)
{
}

static void *watch_main(void *arg)
{
    struct watcher *w = arg;
    PGconn *c = NULL;
    while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
        if (c == NULL || PQstatus(c) != CONNECTION_OK) {
            if (c != NULL)
                PQfinish(c);
            c = PQconnectdb(th_pg_url());
            if (PQstatus(c) != CONNECTION_OK) {
                usleep(20000); /* a poll loop: PostgreSQL is down, try again */
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
        usleep(10000); /* a poll loop: the next sample */
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
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
    pthread_join(w->tid, NULL);
    ck_assert_msg(w->samples > 0, "the pg_stat_activity watcher took no sample");
}

/* ---- a wrk-like load: CONCURRENCY requests always in flight, every answer recorded ----
 * (GET when body == NULL, else POST). The test counts answers while the load runs
 * (load_count), to move on once enough of them arrived. */

struct sample {
    double t0, t1; /* th_now_ms() when sent and when answered */
    char body[96]; /* the start of the body */
    char sqlstate[8];
    long status;
    int retry_after;
    int curl_error;
};

struct load {
    pthread_t tid;
    pthread_mutex_t lock; /* over samples and n: the test counts while the load appends */
    char *url;
    const char *body;
    int version, concurrency;
    int stop; /* set by the test, read by the thread: __atomic */
    struct sample *samples;
    size_t n, cap;
};

struct slot {
    CURL *easy;
    struct load *load;
    double t0;
    int retry_after;
    char sqlstate[8];
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
    size_t n = size * nmemb;
    if (n >= 12 && strncasecmp(ptr, "retry-after:", 12) == 0)
        sl->retry_after = 1;
    if (n >= 16 && strncasecmp(ptr, "x-sqlstate: ", 12) == 0)
        snprintf(sl->sqlstate, sizeof(sl->sqlstate), "%.5s", ptr + 12);
    return n;
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
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L); /* a hang guard: answers take milliseconds */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, ld->version == TH_HTTP2 ? CURL_HTTP_VERSION_2_0 : CURL_HTTP_VERSION_1_1);
    if (ld->version == TH_HTTP2)
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    if (getenv("H2O_DB_TEST_VERBOSE") != NULL)
        curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
    sl->easy = e;
    sl->retry_after = 0;
    sl->sqlstate[0] = '\0';
    sl->body_len = 0;
    sl->body[0] = '\0';
    sl->t0 = th_now_ms();
    return e;
}

/* Records the answer of a finished transfer. */
static void load_record(struct load *ld, CURLMsg *msg)
{
    struct slot *sl;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&sl);
    struct sample s = {.t0 = sl->t0, .t1 = th_now_ms(), .curl_error = msg->data.result, .retry_after = sl->retry_after};
    curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &s.status);
    memcpy(s.body, sl->body, sizeof(s.body));
    memcpy(s.sqlstate, sl->sqlstate, sizeof(s.sqlstate));
    pthread_mutex_lock(&ld->lock);
    if (ld->n == ld->cap) {
        ld->cap = ld->cap == 0 ? 1024 : ld->cap * 2;
        ld->samples = realloc(ld->samples, ld->cap * sizeof(*ld->samples));
    }
    ld->samples[ld->n++] = s;
    pthread_mutex_unlock(&ld->lock);
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
    while (running > 0 || !__atomic_load_n(&ld->stop, __ATOMIC_RELAXED)) {
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct slot *sl;
            CURL *e = msg->easy_handle;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&sl);
            load_record(ld, msg);
            curl_multi_remove_handle(m, e);
            curl_easy_cleanup(e);
            sl->easy = NULL;
            if (!__atomic_load_n(&ld->stop, __ATOMIC_RELAXED)) {
                curl_multi_add_handle(m, load_easy(ld, sl, headers));
                running = 1;
            }
        }
        if (running > 0)
            curl_multi_poll(m, NULL, 0, 10, NULL);
        else if (!__atomic_load_n(&ld->stop, __ATOMIC_RELAXED))
            usleep(1000); /* a poll loop: nothing in flight */
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
    pthread_mutex_init(&ld->lock, NULL);
    ld->url = th_url(s, path);
    ld->body = body;
    ld->version = version;
    ld->concurrency = concurrency;
    ck_assert(pthread_create(&ld->tid, NULL, load_main, ld) == 0);
}

static void load_stop(struct load *ld)
{
    __atomic_store_n(&ld->stop, 1, __ATOMIC_RELAXED);
    pthread_join(ld->tid, NULL);
    pthread_mutex_destroy(&ld->lock);
    free(ld->url);
}

/* How many answers arrived so far to requests sent after `since` (th_now_ms()), with that
 * status (0: any). */
static size_t load_count(struct load *ld, double since, long status)
{
    size_t n = 0;
    pthread_mutex_lock(&ld->lock);
    for (size_t i = 0; i < ld->n; ++i)
        n += ld->samples[i].t0 > since && (status == 0 || ld->samples[i].status == status);
    pthread_mutex_unlock(&ld->lock);
    return n;
}

struct loads_goal {
    struct load *loads;
    int n;
    double since;
    long status;
    size_t want;
};

static int loads_reach(void *arg)
{
    struct loads_goal *g = arg;
    for (int i = 0; i < g->n; ++i)
        if (load_count(g->loads + i, g->since, g->status) < g->want)
            return 0;
    return 1;
}

/* Waits until each of the two loads has WANT answers (with that status; 0: any) to requests sent after SINCE. */
static void wait_loads(struct load *loads, double since, long status, size_t want, const char *what)
{
    struct loads_goal g = {loads, 2, since, status, want};
    ck_assert_msg(th_wait_until(loads_reach, &g, WAIT_MS),
                  "%s: fewer than %zu answers (status %ld, 0: any) on each protocol in %d s: HTTP/1 %zu, HTTP/2 %zu", what, want,
                  status, WAIT_MS / 1000, load_count(loads, since, status), load_count(loads + 1, since, status));
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
    char *sql = th_fmt("SELECT string_agg(state || ' (' || coalesce(wait_event_type, '-') || '): ' || query, ' | ') FROM "
                       "pg_stat_activity WHERE application_name = '%s'",
                       appname);
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

/* Waits until PostgreSQL shows at least WANT sessions of the server matching WHERE. */
static void wait_activity(const char *appname, const char *where, long want, const char *what)
{
    struct activity_query q = {appname, where, want};
    ck_assert_msg(th_wait_until(activity_reaches, &q, WAIT_MS), "%s: PostgreSQL never showed %ld sessions with %s in %d s: %s",
                  what, want, where, WAIT_MS / 1000, activity_dump(appname));
}

/* PostgreSQL sees no session of the server doing anything (every one idle, none in a transaction). */
static int pool_settled(void *arg)
{
    const char *appname = arg;
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state <> 'idle'", appname) == 0;
}

static int is_unavailable(const char *sqlstate)
{
    return sqlstate != NULL && (strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "57P0", 4) == 0);
}

/* ==== PostgreSQL restarted under load ==== */

/* acquire-timeout 20 s: a request that waited it out instead of failing fast while the database
 * was down would be answered BUSY 53300 and counted as an acquire timeout, both asserted never
 * to happen */
static const char *RESTART_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 2\n"
                                  "db.bind:\n"
                                  "  url: \"@PG@?application_name=flt_restart_@PORT@\"\n"
                                  "  pool: {max: 2, acquire-timeout: 20}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /e:\n"
                                  "        c.handler: " DB_HANDLERS ":db_echo\n"
                                  "      /status:\n"
                                  "        db.status: ON\n";

#define RESTART_THREADS 2
#define RESTART_MAX     2
#define RESTART_ANSWERS 20 /* answers per protocol in each phase */

/* th_now_ms() at the edges of the phases */
struct restart_marks {
    double stop0, stop1;   /* pg_ctl stop -w called, returned (PostgreSQL has exited) */
    double start0, start1; /* pg_ctl start -w called, returned (PostgreSQL accepts connections) */
    double up;             /* the test saw every thread's pool up again and a 200 on each protocol */
};

struct restart_tally {
    size_t total, warm, outage, after;
};

/* Every answer of a load, by phase: before the stop, 200; to a request sent after PostgreSQL
 * exited and answered before it started again, 503 UNAVAILABLE; sent after the recovery, 200. */
static void restart_check(const struct load *ld, const struct restart_marks *m, struct restart_tally *t)
{
    for (size_t i = 0; i < ld->n; ++i) {
        const struct sample *s = ld->samples + i;
        int v = ld->version;
        ++t->total;
        ck_assert_msg(s->curl_error == 0, "HTTP/%d: a request failed without an answer (curl error %d: %s)", v, s->curl_error,
                      curl_easy_strerror(s->curl_error));
        ck_assert_msg(s->status == 200 || s->status == 503, "HTTP/%d: status %ld %s", v, s->status, s->body);
        if (s->status == 200) {
            ck_assert_msg(strcmp(s->body, "[{\"id\":7}]") == 0, "HTTP/%d: 200 with %s", v, s->body);
        } else {
            ck_assert_msg(s->retry_after, "HTTP/%d: a 503 without Retry-After", v);
            /* not BUSY (53300): nobody waited for a connection, the database was known to be down */
            ck_assert_msg(is_unavailable(s->sqlstate), "HTTP/%d: a 503 with SQLSTATE %s (expected UNAVAILABLE: 08xxx, 57P0x)", v,
                          s->sqlstate);
        }
        if (s->t1 < m->stop0) {
            ++t->warm;
            ck_assert_msg(s->status == 200, "HTTP/%d: status %ld before PostgreSQL stopped", v, s->status);
        } else if (s->t0 > m->stop1 && s->t1 < m->start0) {
            ++t->outage;
            ck_assert_msg(s->status == 503, "HTTP/%d: status %ld for a request sent while PostgreSQL was stopped", v, s->status);
        } else if (s->t0 > m->up) {
            ++t->after;
            ck_assert_msg(s->status == 200, "HTTP/%d: status %ld (SQLSTATE %s) for a request sent after every pool was up again", v,
                          s->status, s->sqlstate);
        }
    }
}

struct restart_recovery {
    th_server_t *s;
    struct load *loads;
    double since;
};

/* Every thread's pool is up (down: false), and each protocol got a 200 for a request sent after the start. */
static int restart_recovered(void *arg)
{
    struct restart_recovery *r = arg;
    struct loads_goal g = {r->loads, 2, r->since, 200, 1};
    struct pool_down up = {r->s, 0, "false"};
    return loads_reach(&g) && pool_down_is(&up);
}

/* The phases, each ended by a fact: enough answers, PostgreSQL stopped or started, the pools up. */
static void restart_phases(struct load *loads, struct restart_marks *m)
{
    wait_loads(loads, 0, 200, RESTART_ANSWERS, "before the stop");
    m->stop0 = th_now_ms();
    pg_stop();
    m->stop1 = th_now_ms();
    wait_loads(loads, m->stop1, 0, RESTART_ANSWERS, "while PostgreSQL was stopped");
    m->start0 = th_now_ms();
    pg_start();
    m->start1 = th_now_ms();
    struct restart_recovery r = {&server, loads, m->start1};
    ck_assert_msg(th_wait_until(restart_recovered, &r, WAIT_MS), "no recovery %d s after PostgreSQL started: %zu and %zu 200s",
                  WAIT_MS / 1000, load_count(loads, m->start1, 200), load_count(loads + 1, m->start1, 200));
    m->up = th_now_ms();
    wait_loads(loads, m->up, 0, RESTART_ANSWERS, "after the recovery");
}

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
    struct restart_marks m;
    restart_phases(loads, &m);
    load_stop(loads + 0);
    load_stop(loads + 1);
    watch_stop(&w);

    struct restart_tally t = {0};
    restart_check(loads + 0, &m, &t);
    restart_check(loads + 1, &m, &t);
    char *status_json = get_status(&server, "/status");
    long reconnects = status_sum(status_json, 0, "reconnects"), closed_broken = status_sum(status_json, 0, "closed_broken"),
         connect_failures = status_sum(status_json, 0, "connect_failures"),
         acquire_timeouts = status_sum(status_json, 0, "acquire_timeouts");
    fprintf(stderr,
            "faults: restart under load: %zu requests (%zu answered before the stop, %zu sent and answered while PostgreSQL was "
            "stopped, all 503, %zu sent after every pool was up again, all 200); at most %ld server connections seen (limit %d); "
            "status: reconnects %ld, closed_broken %ld, connect_failures %ld, acquire_timeouts %ld\n",
            t.total, t.warm, t.outage, t.after, w.max, RESTART_THREADS * RESTART_MAX, reconnects, closed_broken, connect_failures,
            acquire_timeouts);
    ck_assert_msg(t.warm >= 2 * RESTART_ANSWERS && t.outage >= 2 * RESTART_ANSWERS && t.after >= 2 * RESTART_ANSWERS,
                  "answers by phase: %zu, %zu, %zu", t.warm, t.outage, t.after);
    ck_assert_msg(acquire_timeouts == 0, "%ld requests waited out acquire-timeout:\n%s", acquire_timeouts, status_json);
    ck_assert_msg(w.max <= RESTART_THREADS * RESTART_MAX, "%ld connections from the server (threads × max = %d)", w.max,
                  RESTART_THREADS * RESTART_MAX);
    ck_assert_msg(pg_conns(appname) <= RESTART_THREADS * RESTART_MAX, "%ld connections afterwards", pg_conns(appname));
    ck_assert_msg(reconnects >= 1, "the status page counts no reconnect:\n%s", status_json);
    ck_assert_msg(every_thread_down_is(status_json, 0, "false"), "a thread is down after the recovery:\n%s", status_json);
    free(status_json);
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
                               /* no pipelining: each pg_sleep on a connection of its own, so that a
                                * terminated backend fails exactly one request */
                               "  pool: {max: 4, pipeline-depth: 1}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

/* Four requests each running pg_sleep(20) on a connection of its own; their backends terminated. */
static void terminate_running(const char *appname, int v)
{
    /* two autocommit statements and two transactions, each on a connection of its own (max 4) */
    const char *bodies[] = {"SENDERROR\nSQL SELECT pg_sleep(20)", "SENDERROR\nSQL SELECT pg_sleep(20)",
                            "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(20)\nCOMMIT",
                            "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(20)\nCOMMIT"};
    /* one after the other, so that each is seen running before the next starts */
    struct bg_posts bs[4];
    for (int i = 0; i < 4; ++i) {
        bg_posts_start(bs + i, &server, v, "/s", 1, bodies + i);
        wait_activity(appname, "state = 'active' AND query LIKE 'SELECT pg_sleep%'", i + 1, "pg_sleep never ran");
    }
    double t_kill = th_now_ms();
    long killed = th_pg_countf("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s' AND "
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
        bg_posts_free(bs + i);
    }
    fprintf(stderr, "faults: HTTP/%d: 4 requests on terminated backends answered 503 UNAVAILABLE\n", v);
    /* a hang guard (the answers come within milliseconds): the statements would sleep 20 s */
    ck_assert_msg(took < scaled(15000), "HTTP/%d: the answers took %.0f ms after the backends were terminated", v, took);
}

static void expect_all_ok(th_response_t *res, size_t n, int v, const char *what)
{
    for (size_t i = 0; i < n; ++i) {
        ck_assert_msg(res[i].status == 200, "HTTP/%d: %s: %ld %s", v, what, res[i].status, res[i].body);
        th_response_free(res + i);
    }
}

START_TEST(terminated_backends_fail_their_requests_and_the_next_ones_succeed)
{
    start_server(&server, TERM_CONF);
    char *appname = th_fmt("flt_term_%d", server.port);
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        terminate_running(appname, v);

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
        expect_all_ok(res, 4, v, "after the termination");

        /* idle connections terminated: the server notices (its pool drops them: no connection
         * left on the status page) before anybody gets them, and the next requests succeed. First
         * nothing under way, not even a connect started for a statement that another connection
         * then served: it would open after the termination and stay. */
        wait_pool_idle(&server, 0, "before terminating the idle connections");
        long idle =
            th_pg_countf("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s'", appname);
        ck_assert_msg(idle >= 1, "no idle connection to terminate");
        struct gauges none = {&server, 0, 0, -1, -1, -1, -1};
        ck_assert_msg(th_wait_until(gauges_are, &none, WAIT_MS),
                      "HTTP/%d: %ld idle connections terminated, but the server still shows connections %d s later; PostgreSQL "
                      "has: %s",
                      v, idle, WAIT_MS / 1000, activity_dump(appname));
        par_posts(&server, res, 4, v, "/s", next);
        expect_all_ok(res, 4, v, "after the idle connections were terminated");
    }
    stop_server(&server);
    free(appname);
}
END_TEST

/* ==== the pool at 10× its capacity ==== */

/* Two binds of max 2 and queue 4, their connections open from the start (min: 2): the default one
 * with acquire-timeout 0.3 s, whose waiters time out; `full` with 30 s, whose waiters outlast the
 * test's refused requests by far (the queue is full meanwhile). bench/faults measures how fast
 * the refusals come and the server's memory over many rounds. */
static const char *EXHAUST_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 1\n"
                                  "db.bind:\n"
                                  "  - url: \"@PG@?application_name=flt_exhaust_@PORT@\"\n"
                                  "    pool: {max: 2, min: 2, queue: 4, acquire-timeout: 0.3}\n"
                                  "  - url: \"@PG@?application_name=flt_exhaust_full_@PORT@\"\n"
                                  "    key: full\n"
                                  "    pool: {max: 2, min: 2, queue: 4, acquire-timeout: 30}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /s:\n"
                                  "        c.handler: " DB_HANDLERS ":db_script\n"
                                  "      /status:\n"
                                  "        db.status: ON\n";

#define EXHAUST_MAX     2
#define EXHAUST_QUEUE   4
#define EXHAUST_REFUSED 18 /* 2 + 4 + 18 = 24 requests at once: 12× the pool */

/* Every response: 503 BUSY (53300) with Retry-After. */
static void expect_busy(th_response_t *res, size_t n, int version, const char *what)
{
    for (size_t i = 0; i < n; ++i) {
        ck_assert_msg(res[i].curl_error == 0, "HTTP/%d: %s: curl error %d", version, what, res[i].curl_error);
        ck_assert_msg(res[i].status == 503, "HTTP/%d: %s: status %ld %s", version, what, res[i].status, res[i].body);
        char *ra = th_header(res + i, "retry-after"), *ss = th_header(res + i, "x-sqlstate");
        ck_assert_msg(ra != NULL, "HTTP/%d: %s: 503 without Retry-After", version, what);
        ck_assert_msg(ss != NULL && strcmp(ss, "53300") == 0, "HTTP/%d: %s: 503 with SQLSTATE %s", version, what,
                      ss != NULL ? ss : "-");
        free(ra);
        free(ss);
        th_response_free(res + i);
    }
}

/* Every response: 200, the transaction committed (result INDEX is the COMMIT's OK). */
static void expect_committed(th_response_t *res, size_t n, size_t index, int version, const char *what)
{
    for (size_t i = 0; i < n; ++i) {
        ck_assert_msg(res[i].curl_error == 0, "HTTP/%d: %s: curl error %d", version, what, res[i].curl_error);
        ck_assert_msg(res[i].status == 200, "HTTP/%d: %s: status %ld %s", version, what, res[i].status, res[i].body);
        db_assert_result(res[i].body, index, "OK", NULL);
    }
}

/* `full`: 2 requests hold both connections (waiting for the test's lock), 4 wait in the queue
 * (acquire-timeout 30 s); 18 more are refused at once, queue full; then everybody is served. */
static void exhaust_queue_full(int v, const char *body, long key)
{
    const char *bodies[EXHAUST_MAX + EXHAUST_QUEUE + EXHAUST_REFUSED];
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); ++i)
        bodies[i] = body;
    PGconn *lock = db_gate_close(key);
    struct bg_posts held;
    bg_posts_start(&held, &server, v, "/s?key=full", EXHAUST_MAX + EXHAUST_QUEUE, bodies);
    wait_pinned(&server, 1, EXHAUST_MAX, EXHAUST_QUEUE, "connections pinned and the queue full");
    th_response_t res[EXHAUST_REFUSED];
    par_posts(&server, res, EXHAUST_REFUSED, v, "/s?key=full", bodies);
    expect_busy(res, EXHAUST_REFUSED, v, "the queue full");
    db_gate_open(lock);
    bg_posts_join(&held);
    expect_committed(held.res, held.n, 2, v, "held, then served");
    bg_posts_free(&held);
}

/* The default bind: 2 requests hold both connections; 4 more wait, time out (0.3 s) and are
 * refused, while the connections are still held; then the 2 commit. */
static void exhaust_acquire_timeout(int v, const char *body, long key)
{
    const char *bodies[EXHAUST_QUEUE] = {body, body, body, body};
    PGconn *lock = db_gate_close(key);
    struct bg_posts held;
    bg_posts_start(&held, &server, v, "/s", EXHAUST_MAX, bodies);
    wait_pinned(&server, 0, EXHAUST_MAX, 0, "connections pinned");
    th_response_t res[EXHAUST_QUEUE];
    par_posts(&server, res, EXHAUST_QUEUE, v, "/s", bodies);
    expect_busy(res, EXHAUST_QUEUE, v, "waited acquire-timeout");
    db_gate_open(lock);
    bg_posts_join(&held);
    expect_committed(held.res, held.n, 2, v, "held");
    bg_posts_free(&held);
}

START_TEST(pool_exhausted_tenfold_answers_503_and_serves_again)
{
    start_server(&server, EXHAUST_CONF);
    char *app = th_fmt("flt_exhaust_%d", server.port), *app_full = th_fmt("flt_exhaust_full_%d", server.port);
    long key = db_gate_key();
    char *body = th_fmt("SENDERROR\nBEGIN\nSQL SELECT pg_advisory_xact_lock_shared(%ld)\nCOMMIT", key);
    wait_connections(&server, 0, EXHAUST_MAX, "min: 2");
    wait_connections(&server, 1, EXHAUST_MAX, "min: 2");
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        exhaust_queue_full(v, body, key);
        exhaust_acquire_timeout(v, body, key);
    }
    wait_pool_idle(&server, 0, "after the rounds");
    wait_pool_idle(&server, 1, "after the rounds");
    char *json = get_status(&server, "/status");
    long full_qf = status_sum(json, 1, "queue_full"), full_at = status_sum(json, 1, "acquire_timeouts"),
         qf = status_sum(json, 0, "queue_full"), at = status_sum(json, 0, "acquire_timeouts"), waits = status_sum(json, 0, "waits");
    fprintf(stderr,
            "faults: exhaustion (max 2, queue 4): bind full (acquire-timeout 30 s): %d refused with the queue full per protocol, "
            "counted queue_full %ld, acquire_timeouts %ld; default bind (acquire-timeout 0.3 s): %d waited and were refused "
            "per protocol, counted acquire_timeouts %ld, queue_full %ld, waits %ld; server connections %ld + %ld\n",
            EXHAUST_REFUSED, full_qf, full_at, EXHAUST_QUEUE, at, qf, waits, pg_conns(app), pg_conns(app_full));
    ck_assert_msg(full_qf == 2 * EXHAUST_REFUSED && full_at == 0, "bind full: queue_full %ld, acquire_timeouts %ld\n%s", full_qf,
                  full_at, json);
    ck_assert_msg(at == 2 * EXHAUST_QUEUE && qf == 0, "default bind: acquire_timeouts %ld, queue_full %ld\n%s", at, qf, json);
    ck_assert_msg(waits >= 2 * EXHAUST_QUEUE, "default bind: waits %ld", waits);
    ck_assert_msg(pg_conns(app) <= EXHAUST_MAX && pg_conns(app_full) <= EXHAUST_MAX, "%ld and %ld connections with max 2",
                  pg_conns(app), pg_conns(app_full));
    free(json);
    free(body);
    stop_server(&server);
    free(app);
    free(app_full);
}
END_TEST

/* ==== 1000 clients that leave in the middle of a transaction ==== */

/* acquire-timeout 60 s: the requests queued behind the 8 connections are still waiting when
 * their clients leave, however long the test waited for the 8 to be seen running */
static const char *GONE_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=flt_gone_@PORT@\"\n"
                               "  pool: {max: 8, acquire-timeout: 60}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    access-log: {path: @DIR@/access.log, format: \"%H %U %s\"}\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

#define GONE_MAX         8 /* pool.max: the transactions of a batch that run at once */
#define GONE_BATCH       100
#define GONE_PER_VERSION 500

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_msg(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0, "connect: %s", strerror(errno));
    return fd;
}

/* A batch's transaction: it sleeps a minute in PostgreSQL, so that it commits only if nobody
 * cancels it; the batch number in its SELECT tells this batch's statements from the last one's. */
static char *gone_body(const char *table, int batch)
{
    return th_fmt("BEGIN\nSQL INSERT INTO %s (v) VALUES ('gone')\nSQL SELECT pg_sleep(60) AS batch_%d\nCOMMIT\n", table, batch);
}

struct gone_batch {
    const char *appname;
    char *running; /* pg_stat_activity condition: this batch's pg_sleep running */
};

static int gone_all_running(void *arg)
{
    struct gone_batch *g = arg;
    return th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND %s", g->appname, g->running) >=
           GONE_MAX;
}

static void gone_init(struct gone_batch *g, const char *appname, int batch)
{
    g->appname = appname;
    g->running = th_fmt("state = 'active' AND query = 'SELECT pg_sleep(60) AS batch_%d'", batch);
}

/* HTTP/1: raw sockets that send the request and close (half with a RST) once PostgreSQL shows
 * GONE_MAX of the batch's transactions in pg_sleep (every connection of the pool) */
static void gone_http1_batch(int port, const char *body, struct gone_batch *g)
{
    int fds[GONE_BATCH];
    char *req = th_fmt("POST /s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                       strlen(body), body);
    for (int i = 0; i < GONE_BATCH; ++i) {
        fds[i] = connect_to(port);
        size_t len = strlen(req);
        ck_assert_msg(write(fds[i], req, len) == (ssize_t)len, "write: %s", strerror(errno));
    }
    ck_assert_msg(th_wait_until(gone_all_running, g, WAIT_MS), "HTTP/1: %d transactions of the batch never ran at once: %s",
                  GONE_MAX, activity_dump(g->appname));
    for (int i = 0; i < GONE_BATCH; ++i) {
        if (i % 2) {
            struct linger lg = {1, 0};
            setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        close(fds[i]);
    }
    free(req);
}

/* Drives the transfers until PostgreSQL shows the batch's transactions running (checked every
 * 20 ms); returns whether it did, and how many transfers ended meanwhile in *ended. */
static int gone_http2_drive(CURLM *m, struct gone_batch *g, int *ended)
{
    double deadline = th_now_ms() + scaled(WAIT_MS), next_check = 0;
    int running = 1, seen = 0;
    while (running && !seen && th_now_ms() < deadline) {
        curl_multi_perform(m, &running);
        if (th_now_ms() >= next_check) {
            seen = gone_all_running(g);
            next_check = th_now_ms() + 20;
        }
        if (running && !seen)
            curl_multi_poll(m, NULL, 0, 10, NULL);
    }
    CURLMsg *msg;
    int left;
    *ended = 0;
    while ((msg = curl_multi_info_read(m, &left)) != NULL)
        *ended += msg->msg == CURLMSG_DONE;
    return seen;
}

/* HTTP/2: libcurl multiplexes the batch on one connection (h2c Upgrade, see par_posts); once
 * PostgreSQL shows the batch's transactions running, every transfer is abandoned (removing a
 * transfer in flight resets its stream) and the connection closed */
static void gone_http2_batch(th_server_t *s, const char *body, struct gone_batch *g)
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
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_0); /* see par_posts */
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_multi_add_handle(m, e);
    }
    int ended, seen = gone_http2_drive(m, g, &ended);
    for (int i = 0; i < GONE_BATCH; ++i) {
        curl_multi_remove_handle(m, easies[i]);
        curl_easy_cleanup(easies[i]);
    }
    curl_multi_cleanup(m);
    curl_slist_free_all(headers);
    free(url);
    ck_assert_msg(seen, "HTTP/2: %d transactions of the batch never ran at once: %s", GONE_MAX, activity_dump(g->appname));
    ck_assert_msg(ended == 0, "HTTP/2: %d of %d requests ended before the client left", ended, GONE_BATCH);
}

/* The client-gone batches, HTTP/1 then HTTP/2. */
static void gone_batches(const char *table, const char *appname)
{
    for (int i = 0; i < 2 * GONE_PER_VERSION / GONE_BATCH; ++i) {
        char *body = gone_body(table, i);
        struct gone_batch g;
        gone_init(&g, appname, i);
        if (i < GONE_PER_VERSION / GONE_BATCH)
            gone_http1_batch(server.port, body, &g);
        else
            gone_http2_batch(&server, body, &g);
        free(g.running);
        free(body);
    }
}

static char *read_access_log(th_server_t *s)
{
    char *logpath = th_fmt("%s/access.log", s->dir);
    FILE *fp = fopen(logpath, "r");
    ck_assert_msg(fp != NULL, "no access log");
    size_t cap = 1 << 20, len = 0, n;
    char *alog = malloc(cap);
    while ((n = fread(alog + len, 1, cap - len - 1, fp)) > 0)
        len += n;
    alog[len] = '\0';
    fclose(fp);
    free(logpath);
    return alog;
}

/* the requests really came over both protocols (h2o logs a request when it ends, answered or not) */
static void gone_check_access_log(th_server_t *s)
{
    char *alog = read_access_log(s);
    int h1 = count_substr(alog, "HTTP/1.1 /s "), h2 = count_substr(alog, "HTTP/2 /s "),
        h1_answered = count_substr(alog, "HTTP/1.1 /s 200\n"), h2_unanswered = count_substr(alog, "HTTP/2 /s 0\n");
    fprintf(stderr,
            "faults: client gone: the access log has %d HTTP/1.1 requests to /s (%d answered by the handler after CLIENT_GONE, the "
            "write failing) and %d HTTP/2 ones (%d ended by the reset without an answer)\n",
            h1, h1_answered, h2, h2_unanswered);
    ck_assert_msg(h1 == GONE_PER_VERSION && h2 == GONE_PER_VERSION,
                  "access log: %d HTTP/1.1 and %d HTTP/2 requests (expected %d each)", h1, h2, GONE_PER_VERSION);
    free(alog);
}

START_TEST(clients_that_leave_mid_transaction_commit_nothing)
{
    start_server(&server, GONE_CONF);
    char *appname = th_fmt("flt_gone_%d", server.port), *t = th_uniq("flt_gone");
    char *sql = th_fmt("CREATE TABLE %s (id serial PRIMARY KEY, v text)", t);
    pg_exec(sql);
    free(sql);
    char *before = get_status(&server, "/status");
    long errors0 = status_sum(before, 0, "errors");
    free(before);

    gone_batches(t, appname);
    /* PostgreSQL: every session idle (cancelled, rolled back); the sleeps would hold them a minute */
    int settled = th_wait_until(pool_settled, appname, 3 * WAIT_MS);
    ck_assert_msg(settled, "the server's connections were still busy %d s after the clients left: %s", 3 * WAIT_MS / 1000,
                  activity_dump(appname));
    /* and h2o-db's side: every connection back to idle (a cancel or clean-up ROLLBACK may still be
     * finishing when PostgreSQL already shows the session idle) */
    wait_pool_idle(&server, 0, "after the clients left");

    char *after = get_status(&server, "/status");
    long errors = status_sum(after, 0, "errors") - errors0;
    long rows = th_pg_countf("SELECT count(*) FROM %s", t);
    long idle_in_tx = th_pg_countf(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state LIKE 'idle in transaction%%'", appname);
    long conns = pg_conns(appname);
    fprintf(stderr,
            "faults: client gone: %d HTTP/1 and %d HTTP/2 clients left, in batches of %d, each once PostgreSQL showed %d of its "
            "batch's transactions in pg_sleep; %ld statements answered with an error; rows committed %ld, idle in transaction "
            "%ld, server connections %ld\n",
            GONE_PER_VERSION, GONE_PER_VERSION, GONE_BATCH, GONE_MAX, errors, rows, idle_in_tx, conns);
    ck_assert_msg(rows == 0, "%ld rows of clients that left were committed", rows);
    ck_assert_msg(idle_in_tx == 0, "%ld sessions left idle in transaction", idle_in_tx);
    ck_assert_msg(conns <= GONE_MAX, "%ld connections with 1 thread × max 8", conns);
    free(after);
    gone_check_access_log(&server);

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
    stop_server(&server);
    free(t);
    free(appname);
}
END_TEST

/* ==== the database is down when the server starts ==== */

/* acquire-timeout 30 s: an answer that waited it out would be BUSY (53300) and counted as an
 * acquire timeout; the pool that knows the database is down answers UNAVAILABLE instead */
static const char *DOWN_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 2\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=flt_down_@PORT@\"\n"
                               "  pool: {acquire-timeout: 30}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /s:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

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

/* connect-at-start: ON, or a schema: the server refuses to start, naming the bind */
static void down_refuses_to_start(void)
{
    char *dir = th_tmpdir(), *out = NULL;
    int st = db_run_until_exit(dir, DOWN_CAS_CONF, (int)scaled(2 * WAIT_MS), &out);
    fprintf(stderr, "faults: down at start-up, connect-at-start: ON: exit %d: %s", st, out);
    ck_assert_msg(st == 1, "connect-at-start: ON with the database down: exit status %d (expected 1):\n%s", st, out);
    ck_assert_msg(strstr(out, "flt_needs_db") != NULL, "the message does not name the bind:\n%s", out);
    ck_assert_msg(strstr(out, "h2o-db.conf:3:") != NULL, "the message does not say where the bind is (file:line):\n%s", out);
    free(out);
    free(dir);
    dir = th_tmpdir();
    free(th_write_file(dir, "schema.sql", "CREATE TABLE IF NOT EXISTS flt_schema_t (id int);\n", 0));
    st = db_run_until_exit(dir, DOWN_SCHEMA_CONF, (int)scaled(2 * WAIT_MS), &out);
    fprintf(stderr, "faults: down at start-up, with a schema: exit %d: %s", st, out);
    ck_assert_msg(st == 1, "a schema with the database down: exit status %d (expected 1):\n%s", st, out);
    ck_assert_msg(strstr(out, "flt_with_schema") != NULL, "the message does not name the bind:\n%s", out);
    free(out);
    free(dir);
}

/* The defaults: the server starts and answers 503 UNAVAILABLE, failing fast: no request waited
 * for a connection (no acquire timeout counted), the connect attempts failed. */
static void down_answers_503(void)
{
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        for (int i = 0; i < 5; ++i) {
            th_response_t res;
            db_request(&server, &res, v, NULL, "/s", "SENDERROR\nSQL SELECT 1 AS one");
            char *ra = th_header(&res, "retry-after"), *ss = th_header(&res, "x-sqlstate");
            ck_assert_msg(res.status == 503 && ra != NULL, "HTTP/%d with the database down: %ld (Retry-After %s)", v, res.status,
                          ra != NULL ? ra : "none");
            ck_assert_msg(is_unavailable(ss), "HTTP/%d with the database down: SQLSTATE %s (expected UNAVAILABLE: 08xxx, 57P0x)", v,
                          ss != NULL ? ss : "(none)");
            free(ra);
            free(ss);
            th_response_free(&res);
        }
    }
    char *json = get_status(&server, "/status");
    long at = status_sum(json, 0, "acquire_timeouts"), cf = status_sum(json, 0, "connect_failures");
    fprintf(stderr, "faults: down at start-up: 10 requests answered 503 UNAVAILABLE; connect_failures %ld, acquire_timeouts %ld\n",
            cf, at);
    ck_assert_msg(at == 0 && cf >= 1, "acquire_timeouts %ld, connect_failures %ld:\n%s", at, cf, json);
    free(json);
}

/* After PostgreSQL started: rounds of one request per protocol until every thread's pool is up
 * (down: false on the status page); from then on, DOWN_ROUNDS rounds that must all succeed. */
#define DOWN_ROUNDS 10

struct down_recovery {
    struct first_ok f;
    int up, ok_after_up, failed_after_up, rounds;
};

static int down_recovered(void *arg)
{
    struct down_recovery *r = arg;
    int ok = 1;
    for (r->f.version = TH_HTTP1; r->f.version <= TH_HTTP2; ++r->f.version)
        ok &= request_succeeds(&r->f);
    ++r->rounds;
    if (r->up) {
        r->ok_after_up += ok;
        r->failed_after_up += !ok;
        return r->ok_after_up + r->failed_after_up >= DOWN_ROUNDS;
    }
    struct pool_down up = {r->f.server, 0, "false"};
    r->up = ok && pool_down_is(&up);
    return 0;
}

START_TEST(database_down_at_start_up)
{
    pg_stop();
    down_refuses_to_start();
    start_server(&server, DOWN_CONF);
    down_answers_503();
    /* PostgreSQL comes up: service returns, on every thread (each thread's pool retries on its
     * own when statements arrive, after the back-off) */
    pg_start();
    struct down_recovery r = {{&server, TH_HTTP1, 0}};
    int done = th_wait_until(down_recovered, &r, 2 * WAIT_MS);
    fprintf(stderr,
            "faults: down at start-up: PostgreSQL started; %d rounds of a request per protocol, every thread up %s, then %d "
            "rounds succeeded and %d failed\n",
            r.rounds, r.up ? "yes" : "no", r.ok_after_up, r.failed_after_up);
    ck_assert_msg(done, "requests still fail (or a thread is down) %d s after PostgreSQL started (last status %ld)",
                  2 * WAIT_MS / 1000, r.f.last_status);
    ck_assert_msg(r.failed_after_up == 0, "%d rounds failed after every thread's pool was up", r.failed_after_up);
    stop_server(&server);
}
END_TEST

/* ==== statement-timeout and request-timeout ==== */

/* min: 1: each bind's only connection is open from the start and stays (`connects` counts every
 * attempt: 1 means it was never replaced) */
static const char *TIMEOUT_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 1\n"
                                  "db.bind:\n"
                                  "  - url: \"@PG@?application_name=flt_st_@PORT@\"\n"
                                  "    pool: {max: 1, min: 1, statement-timeout: 0.5}\n"
                                  "  - url: \"@PG@?application_name=flt_rt_@PORT@\"\n"
                                  "    key: rt\n"
                                  "    pool: {max: 1, min: 1, request-timeout: 0.5}\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /s:\n"
                                  "        c.handler: " DB_HANDLERS ":db_script\n"
                                  "      /status:\n"
                                  "        db.status: ON\n";

/* The configured timeout, 0.5 s, with the clocks' granularity: the client's clock starts before
 * the server's, so no load can make an answer look early; how late it comes is bench/faults'. */
#define TIMEOUT_MIN_MS 450

static void expect_504(int version, const char *path, const char *script, const char *what)
{
    th_response_t res;
    db_request(&server, &res, version, NULL, path, script);
    char *ss = th_header(&res, "x-sqlstate");
    fprintf(stderr, "faults: %s, HTTP/%d: %ld (SQLSTATE %s)\n", what, version, res.status, ss != NULL ? ss : "-");
    ck_assert_msg(res.status == 504, "%s, HTTP/%d: status %ld body %s", what, version, res.status, res.body);
    ck_assert_msg(ss != NULL && strcmp(ss, "57014") == 0, "%s: SQLSTATE %s", what, ss != NULL ? ss : "(none)");
    ck_assert_msg(res.seconds * 1000 >= TIMEOUT_MIN_MS, "%s, HTTP/%d: answered after %.0f ms, before the timeout (0.5 s)", what,
                  version, res.seconds * 1000);
    free(ss);
    th_response_free(&res);
}

static void expect_ok(int version, const char *path, const char *script, const char *what)
{
    th_response_t res;
    db_request(&server, &res, version, NULL, path, script);
    ck_assert_msg(res.status == 200, "%s, HTTP/%d: status %ld body %s", what, version, res.status, res.body);
    ck_assert_msg(strstr(res.body, "\"status\":\"OK\"") != NULL && strstr(res.body, "ERROR") == NULL, "%s: %s", what, res.body);
    th_response_free(&res);
}

/* The bind's connection is free again: PostgreSQL shows its session idle (the statement was
 * cancelled, or ran to its end), and the status page shows nothing busy, pinned or waiting. */
static void wait_free_again(int bind, const char *appname, const char *what)
{
    ck_assert_msg(th_wait_until(pool_settled, (void *)appname, WAIT_MS), "%s: the statement still runs %d s later: %s", what,
                  WAIT_MS / 1000, activity_dump(appname));
    wait_pool_idle(&server, bind, what);
}

/* statement-timeout: 0.5 s, on a shared connection and in a transaction; pg_sleep(60) stops only
 * when cancelled (PostgreSQL's statement_timeout, the same deadline) */
static void statement_timeouts(int v, const char *st_app)
{
    expect_504(v, "/s", "SENDERROR\nSQL SELECT pg_sleep(60)", "statement-timeout 0.5 s, autocommit");
    wait_free_again(0, st_app, "after a statement-timeout");
    expect_ok(v, "/s", "SQL SELECT 1 AS one", "the connection after a statement-timeout");
    expect_504(v, "/s", "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(60)\nCOMMIT", "statement-timeout 0.5 s, in a transaction");
    wait_free_again(0, st_app, "after a statement-timeout in a transaction");
    expect_ok(v, "/s", "BEGIN\nSQL SELECT 2 AS two\nCOMMIT", "a transaction after a statement-timeout");
}

/* request-timeout: 0.5 s; in a transaction the running statement is cancelled (PQcancel) */
static void request_timeouts(int v, const char *rt_app)
{
    expect_504(v, "/s?key=rt", "SENDERROR\nBEGIN\nSQL SELECT pg_sleep(60)\nCOMMIT", "request-timeout 0.5 s, in a transaction");
    wait_free_again(1, rt_app, "after a request-timeout in a transaction");
    expect_ok(v, "/s?key=rt", "BEGIN\nSQL SELECT 3 AS three\nCOMMIT", "after a request-timeout in a transaction");
    /* on a shared connection nothing is cancelled (it could be another request's statement): the
     * statement runs to its end (meanwhile a next request would wait for the only connection, and
     * hit request-timeout itself); then the connection serves again. 3 s, far beyond the 0.5 s: a
     * server starved of CPU for longer than the gap would see the result and its timer due at once,
     * and the result would win */
    expect_504(v, "/s?key=rt", "SENDERROR\nSQL SELECT pg_sleep(3)", "request-timeout 0.5 s, autocommit");
    wait_free_again(1, rt_app, "after a request-timeout on a shared connection");
    expect_ok(v, "/s?key=rt", "SQL SELECT 4 AS four", "after a request-timeout on a shared connection");
}

START_TEST(statement_timeout_and_request_timeout_answer_504_and_the_connection_is_reused)
{
    start_server(&server, TIMEOUT_CONF);
    char *st_app = th_fmt("flt_st_%d", server.port), *rt_app = th_fmt("flt_rt_%d", server.port);
    wait_connections(&server, 0, 1, "min: 1");
    wait_connections(&server, 1, 1, "min: 1");
    for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
        statement_timeouts(v, st_app);
        request_timeouts(v, rt_app);
    }
    char *status_json = get_status(&server, "/status");
    long timeouts_st = status_sum(status_json, 0, "timeouts"), timeouts_rt = status_sum(status_json, 1, "timeouts"),
         connects_st = status_sum(status_json, 0, "connects"), connects_rt = status_sum(status_json, 1, "connects");
    fprintf(stderr,
            "faults: timeouts counted on the status page: statement-timeout bind %ld, request-timeout bind %ld; connection "
            "attempts %ld and %ld\n",
            timeouts_st, timeouts_rt, connects_st, connects_rt);
    /* one connection each (max 1), which served the next request after every timeout. It is
     * normally the same one throughout (1 attempt each); a pool that closed it in a race (a cancel
     * meeting the clean-up ROLLBACK) and opened another still did what this test checks: shown,
     * not asserted */
    ck_assert_int_eq(pg_conns(st_app), 1);
    ck_assert_int_eq(pg_conns(rt_app), 1);
    if (connects_st != 1 || connects_rt != 1) {
        char *log = th_server_log(&server);
        fprintf(stderr, "faults: note: a connection was replaced (%ld and %ld attempts); status:\n%s\nthe server's log:\n%s",
                connects_st, connects_rt, status_json, log);
        free(log);
    }
    /* every statement answered TIMEOUT is counted, whichever timer fired first: h2o-db's, or
     * PostgreSQL's statement_timeout (same deadline) */
    ck_assert_msg(timeouts_st == 4, "statement-timeout bind: timeouts %ld (expected 4: four statements were answered TIMEOUT)",
                  timeouts_st);
    ck_assert_msg(timeouts_rt == 4, "request-timeout bind: timeouts %ld (expected 4)", timeouts_rt);
    free(status_json);
    stop_server(&server);
    free(st_app);
    free(rt_app);
}
END_TEST

/* ==== leak-threshold ==== */

/* idle-timeout 0.5 s: a connection left idle is retired by the next housekeeping tick after
 * that, which the test sees as closed_idle moving: proof that a tick ran. leak-threshold 1 s:
 * the quick transactions (held for milliseconds) stay far below it even on a loaded machine */
static const char *LEAK_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                               "num-threads: 1\n"
                               "db.bind:\n"
                               "  url: \"@PG@?application_name=flt_leak_@PORT@\"\n"
                               "  key: leaky_key\n"
                               "  pool: {leak-threshold: 1, idle-timeout: 0.5}\n"
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /slow-holder:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /quick-one:\n"
                               "        c.handler: " DB_HANDLERS ":db_script\n"
                               "      /status:\n"
                               "        db.status: ON\n";

/* While the holder's transaction is still held after its report: a connection made idle now is
 * retired by a later tick (closed_idle moves), and that tick saw the held transaction again. */
static void leak_wait_another_tick(void)
{
    char *json = get_status(&server, "/status");
    struct counter_goal g = {&server, 0, "closed_idle", status_sum(json, 0, "closed_idle") + 1};
    free(json);
    th_response_t res;
    db_script(&server, &res, TH_HTTP1, "/quick-one?key=leaky_key", "SQL SELECT 1 AS one");
    th_response_free(&res);
    ck_assert_msg(th_wait_until(counter_reaches, &g, WAIT_MS), "no housekeeping tick retired the idle connection in %d s",
                  WAIT_MS / 1000);
}

/* The one leak-threshold line of the log, checked; malloc'd. */
static char *leak_line(void)
{
    char *log = th_server_log(&server);
    int lines = count_substr(log, "leak-threshold");
    char *line = strstr(log, "leak-threshold");
    ck_assert_msg(lines == 1, "%d leak-threshold lines (expected exactly one):\n%s", lines, log);
    while (line > log && line[-1] != '\n')
        --line;
    char *one = strndup(line, strcspn(line, "\n"));
    free(log);
    ck_assert_msg(strstr(one, "/slow-holder") != NULL, "the line does not name the path: %s", one);
    ck_assert_msg(strstr(one, "leaky_key") != NULL, "the line does not name the bind: %s", one);
    ck_assert_msg(strstr(one, "/quick-one") == NULL, "a short transaction was reported: %s", one);
    return one;
}

START_TEST(leak_threshold_logs_one_line_naming_the_path)
{
    start_server(&server, LEAK_CONF);
    th_response_t res;
    /* below the threshold (held for a few milliseconds): nothing */
    for (int i = 0; i < 3; ++i) {
        db_script(&server, &res, TH_HTTP1, "/quick-one?key=leaky_key", "BEGIN\nSQL SELECT 1 AS one\nCOMMIT");
        th_response_free(&res);
    }
    /* their connection retired (idle-timeout): from here on, only the holder's connection is open */
    wait_connections(&server, 0, 0, "the quick ones' connection retired");
    /* held until the test lets go: reported once, in the first tick past 1 s (ticks come every
     * second), and not again in the ticks after */
    long key = db_gate_key();
    PGconn *lock = db_gate_close(key);
    char *holder = th_fmt("BEGIN\nSQL SELECT 1 AS one\nSQL SELECT pg_advisory_xact_lock_shared(%ld)\nCOMMIT", key);
    struct bg_posts b;
    bg_posts_start(&b, &server, TH_HTTP1, "/slow-holder?key=leaky_key", 1, (const char *const *)&holder);
    struct log_goal reported = {&server, "leak-threshold"};
    ck_assert_msg(th_wait_until(log_has, &reported, WAIT_MS), "no leak-threshold line %d s into the transaction:\n%s",
                  WAIT_MS / 1000, th_server_log(&server));
    leak_wait_another_tick();
    db_gate_open(lock);
    bg_posts_join(&b);
    ck_assert_msg(b.res[0].status == 200, "the holder: %ld %s", b.res[0].status, b.res[0].body);
    db_assert_result(b.res[0].body, 3, "OK", NULL);
    bg_posts_free(&b);
    free(holder);
    char *one = leak_line();
    fprintf(stderr, "faults: leak-threshold 1 s, a transaction held past two housekeeping ticks: 1 line: %s\n", one);
    free(one);
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

/* The document's shape: binds, their settings, every gauge and counter on every thread. */
static void status_shape(const char *s0)
{
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
    free(key0);
    free(key1);
    free(url0);
    free(backend0);
    free(backend1);
    free(scope);
    free(mw1);
}

/* The counters move: statements, acquires, errors, the statement cache, the SQLite bind. */
static void status_counters_move(const char *s0)
{
    long st0 = status_sum(s0, 0, "statements"), acq0 = status_sum(s0, 0, "acquires"), err0 = status_sum(s0, 0, "errors"),
         lite0 = status_sum(s0, 1, "statements");
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
    fprintf(stderr, "faults: status page: statements +%ld, acquires +%ld, errors +%ld, cache hits %ld misses %ld\n", st1 - st0,
            acq1 - acq0, err1 - err0, hits, misses);
    ck_assert_msg(st1 - st0 >= 11, "statements moved by %ld", st1 - st0);
    ck_assert_msg(acq1 - acq0 >= 11, "acquires moved by %ld", acq1 - acq0);
    ck_assert_msg(err1 - err0 == 1, "errors moved by %ld (one statement failed)", err1 - err0);
    ck_assert_msg(lite1 - lite0 >= 1, "the SQLite bind's statements moved by %ld", lite1 - lite0);
    ck_assert_msg(hits >= 1 && misses >= 1, "statement cache: %ld hits, %ld misses after the same statement 10 times", hits,
                  misses);
    ck_assert_msg(strstr(s1, STATUS_SECRET) == NULL, "the password is on the status page");
    free(s1);
}

/* PostgreSQL stopped: both threads' pools (min: 1, so they keep trying) know the database is
 * down; started again: both reconnect by themselves, and the counters say so. */
static void status_restart(void)
{
    char *s0 = get_status(&server, "/status");
    long rec0 = status_sum(s0, 0, "reconnects"), broken0 = status_sum(s0, 0, "closed_broken");
    free(s0);
    pg_stop();
    struct pool_down down = {&server, 0, "true"}, up = {&server, 0, "false"};
    ck_assert_msg(th_wait_until(pool_down_is, &down, WAIT_MS), "a thread's pool does not know the database is down");
    pg_start();
    ck_assert_msg(th_wait_until(pool_down_is, &up, WAIT_MS), "a thread's pool did not reconnect");
    struct first_ok f = {&server, TH_HTTP1, 0};
    ck_assert_msg(th_wait_until(request_succeeds, &f, WAIT_MS), "no success after the restart (last status %ld)", f.last_status);
    char *s2 = get_status(&server, "/status");
    long rec2 = status_sum(s2, 0, "reconnects"), broken2 = status_sum(s2, 0, "closed_broken");
    fprintf(stderr, "faults: status page: after a restart: reconnects %ld -> %ld, closed_broken %ld -> %ld\n", rec0, rec2, broken0,
            broken2);
    ck_assert_msg(broken2 - broken0 >= 2, "closed_broken moved by %ld after a restart (min: 1 on 2 threads):\n%s",
                  broken2 - broken0, s2);
    ck_assert_msg(rec2 - rec0 >= 2, "reconnects moved by %ld after a restart (2 threads were down):\n%s", rec2 - rec0, s2);
    ck_assert_msg(strstr(s2, STATUS_SECRET) == NULL, "the password is on the status page");
    free(s2);
}

/* Prometheus: every gauge and counter with its TYPE and HELP, samples for both binds and threads. */
static void status_prometheus(void)
{
    th_response_t res;
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
}

START_TEST(status_page_json_and_prometheus)
{
    ensure_role();
    char *appname = th_uniq("flt_status"), *url = pw_url(appname), *conf = with_url(STATUS_CONF, url);
    start_server(&server, conf);
    char *s0 = get_status(&server, "/status");
    status_shape(s0);
    /* min: 1 per thread: two connections open without any request */
    wait_connections(&server, 0, 2, "min: 1 on 2 threads");
    status_counters_move(s0);
    status_restart();
    status_prometheus();
    /* the password: never on the page, never in the log */
    ck_assert_msg(strstr(s0, STATUS_SECRET) == NULL, "the password is on the status page");
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, STATUS_SECRET) == NULL, "the password is in the log:\n%s", log);
    free(log);
    free(s0);
    stop_server(&server);
    free(conf);
    free(url);
    free(appname);
}
END_TEST

/* ==== graceful shutdown with transactions in flight ==== */

/* shutdown-timeout 30 s: a server that exits within the test's 20 s did not wait it out, it
 * exited once its requests were done */
static const char *SHUTDOWN_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                   "num-threads: 2\n"
                                   "shutdown-timeout: 30\n"
                                   "db.bind:\n"
                                   "  url: \"@PG@?application_name=flt_shutdown_@PORT@\"\n"
                                   "hosts:\n"
                                   "  default:\n"
                                   "    paths:\n"
                                   "      /s:\n"
                                   "        c.handler: " DB_HANDLERS ":db_script\n";

#define SHUTDOWN_N 8

/* Request REQ's transaction: its first row, then it waits for the test's lock; once the test lets
 * go (after SIGTERM), it waits 0.8 s more in the handler (SLEEP) or in the database (pg_sleep),
 * while the server shuts down, and commits its second row. */
static char *shutdown_body(const char *table, int req, long key)
{
    return th_fmt("BEGIN\nSQL INSERT INTO %s VALUES (%d, 1)\nSQL SELECT pg_advisory_xact_lock_shared(%ld)\n%s\nSQL INSERT INTO %s "
                  "VALUES (%d, 2)\nCOMMIT\n",
                  table, req, key, req % 2 ? "SLEEP 800" : "SQL SELECT pg_sleep(0.8)", table, req);
}

static int refuses_connections(void *arg)
{
    int port = *(int *)arg, fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int refused = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 && errno == ECONNREFUSED;
    close(fd);
    return refused;
}

/* SIGTERM while every transaction waits for the lock; the lock let go once the server has begun
 * to shut down: it said so, and no worker listens any more. */
static void shutdown_signal(PGconn *lock)
{
    kill(server.pid, SIGTERM);
    struct log_goal said = {&server, "received SIGTERM"};
    ck_assert_msg(th_wait_until(log_has, &said, WAIT_MS), "the server did not log the signal:\n%s", th_server_log(&server));
    ck_assert_msg(th_wait_until(refuses_connections, &server.port, WAIT_MS), "the server still accepts connections after SIGTERM");
    db_gate_open(lock);
}

/* Each request: answered and both rows committed, or cut and nothing committed; returns how many finished. */
static int shutdown_outcomes(struct bg_posts *b, const char *table)
{
    int finished = 0;
    for (int i = 0; i < SHUTDOWN_N; ++i) {
        th_response_t *r = b[i].res;
        long rows = th_pg_countf("SELECT count(*) FROM %s WHERE req = %d", table, i);
        size_t steps = i % 2 ? 5 : 6; /* BEGIN, INSERT, the lock, (pg_sleep), INSERT, COMMIT */
        if (r->curl_error == 0 && r->status == 200 && db_num_results(r->body) == steps && strstr(r->body, "ERROR") == NULL) {
            ++finished;
            ck_assert_msg(rows == 2, "request %d answered its COMMIT but %ld rows are there", i, rows);
        } else {
            ck_assert_msg(rows == 0, "request %d did not finish (curl %d, status %ld, %s) but %ld of its rows committed", i,
                          r->curl_error, r->status, r->body, rows);
        }
    }
    return finished;
}

START_TEST(sigterm_lets_transactions_finish_and_exits_0)
{
    start_server(&server, SHUTDOWN_CONF);
    char *appname = th_fmt("flt_shutdown_%d", server.port), *t = th_uniq("flt_shutdown");
    char *sql = th_fmt("CREATE TABLE %s (req int, step int)", t);
    pg_exec(sql);
    free(sql);
    long key = db_gate_key();
    PGconn *lock = db_gate_close(key);
    char *bodies[SHUTDOWN_N];
    struct bg_posts b[SHUTDOWN_N];
    for (int i = 0; i < SHUTDOWN_N; ++i) {
        bodies[i] = shutdown_body(t, i, key);
        bg_posts_start(b + i, &server, i < SHUTDOWN_N / 2 ? TH_HTTP1 : TH_HTTP2, "/s", 1, (const char *const *)(bodies + i));
    }
    /* every transaction has begun, inserted its first row, and waits for the lock */
    ck_assert_msg(db_gate_wait_for(key, SHUTDOWN_N), "the transactions did not start: %s", activity_dump(appname));
    double t0 = th_now_ms();
    shutdown_signal(lock);
    /* th_server_stop sends SIGTERM again (the server takes one) and waits for the exit: 20 s, well
     * below shutdown-timeout (30 s), and far above the second or so the transactions need */
    pid_t pid = server.pid;
    int st = th_server_stop(&server, 20000);
    untrack(pid);
    double took = th_now_ms() - t0;
    for (int i = 0; i < SHUTDOWN_N; ++i)
        bg_posts_join(b + i);
    int finished = shutdown_outcomes(b, t);
    struct activity_query gone = {appname, "true", 0};
    int closed = th_wait_until(activity_is, &gone, WAIT_MS);
    char *log = th_server_log(&server);
    fprintf(stderr,
            "faults: SIGTERM with %d transactions in flight: exit status %d; %d finished and committed, %d cut (rolled back); "
            "server connections left %ld\n",
            SHUTDOWN_N, st, finished, SHUTDOWN_N - finished, pg_conns(appname));
    ck_assert_msg(st == 0, "exit status %d after SIGTERM (-1: still running %.0f ms later, shutdown-timeout 30 s); log:\n%s", st,
                  took, log);
    ck_assert_msg(finished == SHUTDOWN_N,
                  "%d of %d transactions in flight did not finish (graceful shutdown finishes in-flight requests)",
                  SHUTDOWN_N - finished, SHUTDOWN_N);
    ck_assert_msg(closed, "%ld server connections left after exit", pg_conns(appname));
    ck_assert_int_eq(th_pg_countf("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND state LIKE 'idle in "
                                  "transaction%%'",
                                  appname),
                     0);
    free(log);
    for (int i = 0; i < SHUTDOWN_N; ++i) {
        bg_posts_free(b + i);
        free(bodies[i]);
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
    /* time limits: hang guards, several times what the waits inside can add up to */
    ADD(s, postgres_restarted_under_load, 90);
    ADD(s, terminated_backends_fail_their_requests_and_the_next_ones_succeed, 90);
    ADD(s, pool_exhausted_tenfold_answers_503_and_serves_again, 90);
    ADD(s, clients_that_leave_mid_transaction_commit_nothing, 120);
    ADD(s, database_down_at_start_up, 90);
    ADD(s, statement_timeout_and_request_timeout_answer_504_and_the_connection_is_reused, 90);
    ADD(s, leak_threshold_logs_one_line_naming_the_path, 60);
    ADD(s, status_page_json_and_prometheus, 60);
    ADD(s, sigterm_lets_transactions_finish_and_exits_0, 60);
    return th_run_suite(s);
}
