/*
 * Helpers shared by the database suites (test_db_config.c, test_db_pg.c,
 * test_db_sqlite.c, test_mruby.c, test_partition.c, test_security.c, ...), on top of harness.h: POST requests with a Host header,
 * parallel POSTs (libcurl multi), a small JSON validator and reader for the
 * answers of the db_script test handler, a run of the server with a time
 * limit (for configs that must make it exit), and facts to wait on instead of
 * elapsed time: counters of the status page (db.status), statements waiting at
 * a "gate" (an advisory lock the test holds in PostgreSQL) and, for suites that
 * include <sqlite3.h> first, SQLite's write lock.
 *
 * Everything here is static: each suite includes it once.
 */
#ifndef h2o_db_test_db_util_h
#define h2o_db_test_db_util_h

#include <curl/curl.h>
#include <ctype.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "harness.h"

#define DB_UNUSED __attribute__((unused))

/* The c.handler objects of the database tests. */
#define DB_HANDLERS "@BUILD@/t/db_handlers.so"

/* ---- HTTP ---- */

static size_t db_on_body(char *ptr, size_t size, size_t nmemb, void *data)
{
    th_response_t *res = data;
    size_t n = size * nmemb;
    res->body = realloc(res->body, res->body_len + n + 1);
    memcpy(res->body + res->body_len, ptr, n);
    res->body_len += n;
    res->body[res->body_len] = '\0';
    return n;
}

static size_t db_on_header(char *ptr, size_t size, size_t nmemb, void *data)
{
    th_response_t *res = data;
    size_t n = size * nmemb, old = res->headers != NULL ? strlen(res->headers) : 0;
    res->headers = realloc(res->headers, old + n + 1);
    memcpy(res->headers + old, ptr, n);
    res->headers[old + n] = '\0';
    for (size_t i = old; i < old + n && res->headers[i] != ':'; ++i)
        res->headers[i] = tolower((unsigned char)res->headers[i]);
    return n;
}

struct db_easy {
    CURL *curl;
    struct curl_slist *headers;
};

static void db_easy_init(struct db_easy *e, th_response_t *res, int version, const char *url, const char *host, const char *body)
{
    memset(res, 0, sizeof(*res));
    res->body = strdup("");
    e->curl = curl_easy_init();
    e->headers = NULL;
    curl_easy_setopt(e->curl, CURLOPT_URL, url);
    curl_easy_setopt(e->curl, CURLOPT_WRITEFUNCTION, db_on_body);
    curl_easy_setopt(e->curl, CURLOPT_WRITEDATA, res);
    curl_easy_setopt(e->curl, CURLOPT_HEADERFUNCTION, db_on_header);
    curl_easy_setopt(e->curl, CURLOPT_HEADERDATA, res);
    curl_easy_setopt(e->curl, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(e->curl, CURLOPT_NOSIGNAL, 1L);
    if (getenv("H2O_DB_TEST_VERBOSE") != NULL)
        curl_easy_setopt(e->curl, CURLOPT_VERBOSE, 1L);
    curl_easy_setopt(e->curl, CURLOPT_HTTP_VERSION,
                     version == TH_HTTP2 ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE : CURL_HTTP_VERSION_1_1);
    if (host != NULL) {
        char h[512];
        snprintf(h, sizeof(h), "Host: %s", host);
        e->headers = curl_slist_append(e->headers, h);
    }
    if (body != NULL) {
        e->headers = curl_slist_append(e->headers, "Content-Type: text/plain");
        e->headers = curl_slist_append(e->headers, "Expect:");
        curl_easy_setopt(e->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (e->headers != NULL)
        curl_easy_setopt(e->curl, CURLOPT_HTTPHEADER, e->headers);
}

static void db_easy_finish(struct db_easy *e, th_response_t *res, CURLcode code)
{
    res->curl_error = code;
    curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &res->status);
    long v = 0;
    curl_easy_getinfo(e->curl, CURLINFO_HTTP_VERSION, &v);
    res->http_version = v == CURL_HTTP_VERSION_2_0 ? 2 : 11;
    curl_easy_getinfo(e->curl, CURLINFO_TOTAL_TIME, &res->seconds);
    if (res->headers == NULL)
        res->headers = strdup("");
    curl_easy_cleanup(e->curl);
    curl_slist_free_all(e->headers);
}

/* One request to the server: GET when body == NULL, else POST; host NULL = the default Host header. */
static DB_UNUSED void db_request(th_server_t *s, th_response_t *res, int version, const char *host, const char *path,
                                 const char *body)
{
    char *url = th_url(s, path);
    struct db_easy e;
    db_easy_init(&e, res, version, url, host, body);
    CURLcode code = curl_easy_perform(e.curl);
    db_easy_finish(&e, res, code);
    ck_assert_msg(code == CURLE_OK, "%s %s: curl error %d (%s); server log:\n%s", body != NULL ? "POST" : "GET", path, (int)code,
                  curl_easy_strerror(code), th_server_log(s));
    free(url);
}

/* POSTs a db_script body to PATH and expects 200. */
static DB_UNUSED void db_script(th_server_t *s, th_response_t *res, int version, const char *path, const char *body)
{
    db_request(s, res, version, NULL, path, body);
    ck_assert_msg(res->status == 200, "POST %s: status %ld, body: %s\nscript:\n%s", path, res->status, res->body, body);
}

/* n POSTs at once (libcurl multi): HTTP/1.1 opens one connection each, HTTP/2 multiplexes
 * them on one connection. res[i] answers bodies[i]; each res[i].seconds is its own duration. */
static DB_UNUSED void db_parallel(th_server_t *s, th_response_t *res, size_t n, int version, const char *path,
                                  const char *const *bodies)
{
    char *url = th_url(s, path);
    CURLM *m = curl_multi_init();
    struct db_easy *easies = calloc(n, sizeof(*easies));
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(m, CURLMOPT_PIPELINING, version == TH_HTTP1 ? CURLPIPE_NOTHING : CURLPIPE_MULTIPLEX);
    for (size_t i = 0; i < n; ++i) {
        db_easy_init(easies + i, res + i, version, url, NULL, bodies[i]);
        if (version != TH_HTTP1) {
            curl_easy_setopt(easies[i].curl, CURLOPT_PIPEWAIT, 1L);
            /* libcurl 7.88.1 (Debian 12) breaks a prior-knowledge connection that a second transfer
             * re-uses (curl PR #10643, fixed in 8.0): only the first transfer asks for prior
             * knowledge; the others ask for HTTP/2 and re-use its connection */
            if (i != 0)
                curl_easy_setopt(easies[i].curl, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_0);
        }
        curl_multi_add_handle(m, easies[i].curl);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 50, NULL);
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
    }
    free(easies);
    curl_multi_cleanup(m);
    free(url);
}

/* ---- JSON ---- */

/* A strict JSON validator (RFC 8259): returns the end of the value at p, or NULL. */
static const char *db_json_value(const char *p, int depth);

static const char *db_json_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        ++p;
    return p;
}

static const char *db_json_string(const char *p)
{
    if (*p++ != '"')
        return NULL;
    for (;;) {
        unsigned char c = *p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL; /* control characters must be escaped (and NUL ends the text) */
        if (c == '\\') {
            ++p;
            if (strchr("\"\\/bfnrt", *p) != NULL && *p != '\0') {
                ++p;
            } else if (*p == 'u') {
                for (int i = 1; i <= 4; ++i)
                    if (!isxdigit((unsigned char)p[i]))
                        return NULL;
                p += 5;
            } else {
                return NULL;
            }
        } else if (c < 0x80) {
            ++p;
        } else {
            /* valid UTF-8 */
            size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
            if (len == 0 || (len == 2 && c < 0xc2))
                return NULL;
            for (size_t i = 1; i < len; ++i)
                if (((unsigned char)p[i] & 0xc0) != 0x80)
                    return NULL;
            p += len;
        }
    }
}

static const char *db_json_number(const char *p)
{
    if (*p == '-')
        ++p;
    if (*p == '0')
        ++p;
    else if (*p >= '1' && *p <= '9')
        while (isdigit((unsigned char)*p))
            ++p;
    else
        return NULL;
    if (*p == '.') {
        ++p;
        if (!isdigit((unsigned char)*p))
            return NULL;
        while (isdigit((unsigned char)*p))
            ++p;
    }
    if (*p == 'e' || *p == 'E') {
        ++p;
        if (*p == '+' || *p == '-')
            ++p;
        if (!isdigit((unsigned char)*p))
            return NULL;
        while (isdigit((unsigned char)*p))
            ++p;
    }
    return p;
}

static const char *db_json_value(const char *p, int depth)
{
    if (depth > 64)
        return NULL;
    p = db_json_ws(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        int object = *p == '{';
        p = db_json_ws(p + 1);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (object) {
                if ((p = db_json_string(db_json_ws(p))) == NULL)
                    return NULL;
                p = db_json_ws(p);
                if (*p++ != ':')
                    return NULL;
            }
            if ((p = db_json_value(p, depth + 1)) == NULL)
                return NULL;
            p = db_json_ws(p);
            if (*p == ',') {
                ++p;
                continue;
            }
            if (*p == close)
                return p + 1;
            return NULL;
        }
    }
    if (*p == '"')
        return db_json_string(p);
    if (strncmp(p, "true", 4) == 0)
        return p + 4;
    if (strncmp(p, "false", 5) == 0)
        return p + 5;
    if (strncmp(p, "null", 4) == 0)
        return p + 4;
    return db_json_number(p);
}

/* Whether text is exactly one valid JSON document (blanks around it allowed). */
static DB_UNUSED int db_json_valid(const char *text)
{
    const char *end = db_json_value(text, 0);
    return end != NULL && *db_json_ws(end) == '\0';
}

/* The i-th element of the "results" array of a db_script answer, as JSON text (malloc'd), or NULL. */
static DB_UNUSED char *db_result(const char *body, size_t index)
{
    const char *p = strstr(body, "\"results\":[");
    if (p == NULL)
        return NULL;
    p += strlen("\"results\":[");
    for (size_t i = 0;; ++i) {
        p = db_json_ws(p);
        if (*p == ']' || *p == '\0')
            return NULL;
        const char *end = db_json_value(p, 0);
        if (end == NULL)
            return NULL;
        if (i == index)
            return strndup(p, end - p);
        p = db_json_ws(end);
        if (*p != ',')
            return NULL;
        ++p;
    }
}

/* The number of elements of the "results" array. */
static DB_UNUSED size_t db_num_results(const char *body)
{
    size_t n = 0;
    char *r;
    while ((r = db_result(body, n)) != NULL) {
        free(r);
        ++n;
    }
    return n;
}

/* The raw JSON text of member `name` of the object `obj` (top level only), malloc'd, or NULL. */
static DB_UNUSED char *db_member(const char *obj, const char *name)
{
    const char *p = db_json_ws(obj);
    if (*p++ != '{')
        return NULL;
    for (;;) {
        p = db_json_ws(p);
        if (*p == '}')
            return NULL;
        const char *kend = db_json_string(p);
        if (kend == NULL)
            return NULL;
        int match = (size_t)(kend - p - 2) == strlen(name) && strncmp(p + 1, name, strlen(name)) == 0;
        p = db_json_ws(kend);
        if (*p++ != ':')
            return NULL;
        p = db_json_ws(p);
        const char *vend = db_json_value(p, 0);
        if (vend == NULL)
            return NULL;
        if (match)
            return strndup(p, vend - p);
        p = db_json_ws(vend);
        if (*p == ',')
            ++p;
    }
}

/* Asserts that result `index` of a db_script answer has the status (e.g. "OK") and, if
 * `rows` != NULL, exactly those rows (JSON text); returns nothing. */
#define db_assert_result(body, index, status, rows)                                                                                \
    do {                                                                                                                           \
        const char *body_ = (body);                                                                                                \
        size_t index_ = (index);                                                                                                   \
        ck_assert_msg(db_json_valid(body_), "not valid JSON: %s", body_);                                                          \
        char *r_ = db_result(body_, index_);                                                                                       \
        ck_assert_msg(r_ != NULL, "no result %zu in %s", index_, body_);                                                           \
        char *st_ = db_member(r_, "status");                                                                                       \
        ck_assert_msg(st_ != NULL && strcmp(st_, "\"" status "\"") == 0, "result %zu: expected status %s, got %s in %s", index_,   \
                      status, r_, body_);                                                                                          \
        free(st_);                                                                                                                 \
        const char *rows_ = (rows);                                                                                                \
        if (rows_ != NULL) {                                                                                                       \
            char *got_ = db_member(r_, "rows");                                                                                    \
            ck_assert_msg(got_ != NULL && strcmp(got_, rows_) == 0, "result %zu: expected rows %s, got %s (in %s)", index_, rows_, \
                          got_ != NULL ? got_ : "(none)", body_);                                                                  \
            free(got_);                                                                                                            \
        }                                                                                                                          \
        free(r_);                                                                                                                  \
    } while (0)

/* Asserts that result `index` failed with that SQLSTATE (status SQL_ERROR unless given). */
#define db_assert_error(body, index, status, sqlstate)                                                                             \
    do {                                                                                                                           \
        const char *body_ = (body);                                                                                                \
        size_t index_ = (index);                                                                                                   \
        char *r_ = db_result(body_, index_);                                                                                       \
        ck_assert_msg(r_ != NULL, "no result %zu in %s", index_, body_);                                                           \
        char *st_ = db_member(r_, "status"), *ss_ = db_member(r_, "sqlstate");                                                     \
        ck_assert_msg(st_ != NULL && strcmp(st_, "\"" status "\"") == 0, "result %zu: expected status %s, got %s", index_, status, \
                      r_);                                                                                                         \
        ck_assert_msg(ss_ != NULL && strcmp(ss_, "\"" sqlstate "\"") == 0, "result %zu: expected SQLSTATE %s, got %s", index_,     \
                      sqlstate, r_);                                                                                               \
        free(st_);                                                                                                                 \
        free(ss_);                                                                                                                 \
        free(r_);                                                                                                                  \
    } while (0)

/* The status text ("OK", "SQL_ERROR", "REFUSED", ...) of result `index`, malloc'd, without quotes; "" when absent. */
static DB_UNUSED char *db_status_of(const char *body, size_t index)
{
    char *r = db_result(body, index), *st = r != NULL ? db_member(r, "status") : NULL;
    free(r);
    if (st == NULL)
        return strdup("");
    size_t len = strlen(st);
    if (len >= 2 && st[0] == '"') {
        memmove(st, st + 1, len - 2);
        st[len - 2] = '\0';
    }
    return st;
}

/* ---- facts to wait on: the status page ---- */

/* GET PATH (a db.status: ON path) with Host HOST (NULL = the default); the JSON body, malloc'd. */
static DB_UNUSED char *db_status_page(th_server_t *s, const char *host, const char *path)
{
    th_response_t res;
    db_request(s, &res, TH_HTTP1, host, path, NULL);
    ck_assert_msg(res.status == 200, "GET %s: status %ld: %s", path, res.status, res.body);
    char *page = strdup(res.body);
    th_response_free(&res);
    return page;
}

/* The sum of the number "FIELD": N over every thread of the bind KEY on a status page (over every
 * bind when KEY is NULL). Binds start with {"key":"...": a bind's numbers are the ones up to the next. */
static DB_UNUSED long db_status_sum(const char *page, const char *key, const char *field)
{
    char *name = th_fmt("\"%s\":", field), *mark = key != NULL ? th_fmt("{\"key\":\"%s\"", key) : strdup("{\"key\":\"");
    long sum = 0;
    for (const char *bind = strstr(page, mark); bind != NULL; bind = key != NULL ? NULL : strstr(bind + 1, mark)) {
        const char *next = strstr(bind + 1, "{\"key\":\"");
        for (const char *p = strstr(bind, name); p != NULL && (next == NULL || p < next); p = strstr(p + 1, name))
            sum += strtol(p + strlen(name), NULL, 10);
    }
    free(name);
    free(mark);
    return sum;
}

/* The same, read from the server's status page at PATH (default Host). */
static DB_UNUSED long db_status_count(th_server_t *s, const char *path, const char *key, const char *field)
{
    char *page = db_status_page(s, NULL, path);
    long n = db_status_sum(page, key, field);
    free(page);
    return n;
}

/* ---- facts to wait on: gates in PostgreSQL ---- */

/* A statement `SELECT pg_advisory_xact_lock_shared(KEY)` waits while the test holds the advisory
 * lock KEY (db_gate_close) and goes on when it lets go (db_gate_open): what runs behind it is
 * held for exactly as long as the test needs, and db_gate_waiting sees it waiting. */

/* A gate key nobody else uses (advisory locks belong to a database; the pid keeps suites apart). */
static DB_UNUSED long db_gate_key(void)
{
    static long n;
    return 1000000L + (long)(getpid() % 1000000) * 100 + ++n;
}

/* Closes the gate: a connection of the test's own (returned) holds the lock KEY on the test database. */
static DB_UNUSED PGconn *db_gate_close(long key)
{
    PGconn *c = th_pg_connect(th_pg_url());
    char *sql = th_fmt("SELECT pg_advisory_lock(%ld)", key);
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    free(sql);
    return c;
}

/* Opens the gate: the holder's session ends, and with it the lock. */
static DB_UNUSED void db_gate_open(PGconn *holder)
{
    PQfinish(holder);
}

/* How many backends of the test database wait at the gate KEY right now (pg_locks: a bigint key
 * is classid = its high 32 bits, objid = its low 32 bits, objsubid = 1). */
static DB_UNUSED long db_gate_waiting(long key)
{
    return th_pg_countf("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database()) AND classid = 0 AND objid = %ld "
                        "AND objsubid = 1",
                        key);
}

struct db_gate_wait {
    long key, n;
};

static int db_gate_has(void *arg)
{
    struct db_gate_wait *w = arg;
    return db_gate_waiting(w->key) >= w->n;
}

/* Waits (at most 10 s, scaled by th_time_factor) until at least N statements wait at the gate KEY;
 * returns 1 when they do. */
static DB_UNUSED int db_gate_wait_for(long key, long n)
{
    struct db_gate_wait w = {key, n};
    return th_wait_until(db_gate_has, &w, 10000);
}

#ifdef SQLITE_VERSION_NUMBER
/* ---- facts to wait on: SQLite's write lock (for suites that include <sqlite3.h> first) ---- */

/* Takes the write lock of the SQLite file PATH on a connection of the test's own (BEGIN IMMEDIATE,
 * no busy wait) and returns that connection; NULL when another connection holds the lock. */
static DB_UNUSED sqlite3 *db_sqlite_lock(const char *path)
{
    sqlite3 *db;
    ck_assert_msg(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK, "cannot open %s: %s", path,
                  sqlite3_errmsg(db));
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

/* Lets the lock go: ROLLBACK or COMMIT the holder's transaction, and close it. */
static DB_UNUSED void db_sqlite_unlock(sqlite3 *db, int commit)
{
    ck_assert_msg(sqlite3_exec(db, commit ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL) == SQLITE_OK, "%s: %s",
                  commit ? "COMMIT" : "ROLLBACK", sqlite3_errmsg(db));
    sqlite3_close(db);
}

static int db_sqlite_lock_free(void *path)
{
    sqlite3 *db = db_sqlite_lock(path);
    if (db != NULL)
        db_sqlite_unlock(db, 0);
    return db != NULL;
}

/* Waits (at most 10 s, scaled) until nobody holds the write lock of the SQLite file PATH; 1 when so. */
static DB_UNUSED int db_sqlite_wait_unlocked(const char *path)
{
    return th_wait_until(db_sqlite_lock_free, (void *)path, 10000);
}
#endif

/* ---- processes ---- */

/* Runs `h2o-db -c FILE` (FILE = DIR/h2o-db.conf, the expanded template) and waits for it to exit,
 * at most timeout_ms × th_time_factor() (then kills it and returns -1). The output goes to *output (malloc'd). */
static DB_UNUSED int db_run_until_exit(const char *dir, const char *conf_template, int timeout_ms, char **output)
{
    char *conf = th_write_file(dir, "h2o-db.conf", conf_template, th_free_port()), *bin, *log;
    ck_assert(asprintf(&bin, "%s/h2o-db", th_build_dir()) > 0);
    ck_assert(asprintf(&log, "%s/exit.log", dir) > 0);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid != -1);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        execl(bin, bin, "-c", conf, (char *)NULL);
        _exit(127);
    }
    double deadline = th_now_ms() + timeout_ms * th_time_factor(); /* a hang guard */
    int status, ret = -1;
    for (;;) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            ret = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        if (th_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        usleep(10000);
    }
    if (output != NULL) {
        FILE *fp = fopen(log, "r");
        size_t cap = 65536, len = 0;
        *output = calloc(1, cap);
        if (fp != NULL) {
            len = fread(*output, 1, cap - 1, fp);
            fclose(fp);
        }
        (*output)[len] = '\0';
    }
    free(conf);
    free(bin);
    free(log);
    return ret;
}

/* Starts the server with the template or fails the test with its log. */
#define db_start(server, conf)                                                                                                     \
    do {                                                                                                                           \
        int ret_ = th_server_start((server), (conf));                                                                              \
        ck_assert_msg(ret_ == 0, "the server did not start; log:\n%s", th_server_log(server));                                     \
    } while (0)

#define db_stop(server)                                                                                                            \
    do {                                                                                                                           \
        int st_ = th_server_stop((server), 15000);                                                                                 \
        ck_assert_msg(st_ == 0, "exit status %d; log:\n%s", st_, th_server_log(server));                                           \
    } while (0)

#endif
