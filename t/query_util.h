/*
 * What the db.query suites share (each includes it once; everything is static): a server that
 * serves the same db.query paths on PostgreSQL (/pg), SQLite (/lite) and MariaDB (/my, in a
 * database of the suite's own), and requests with headers over HTTP/1.1 or HTTP/2.
 */
#ifndef h2o_db_test_query_util_h
#define h2o_db_test_query_util_h

#include <curl/curl.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef H2O_DB_WITH_MYSQL
#include <mysql.h>
#endif
#include "db_util.h" /* db_on_body, db_on_header */

#define MY_DB "h2o_test_query"
#define EVIL  "x'); DROP TABLE qn; -- \"\\ `"

static th_server_t server;
static int server_up;

/* Strings made during a test, freed by teardown (so that LeakSanitizer sees no leak). */
static char **arena;
static size_t arena_size;

static char *keep(char *s)
{
    arena = realloc(arena, sizeof(*arena) * (arena_size + 1));
    arena[arena_size++] = s;
    return s;
}

static __attribute__((format(printf, 1, 2))) char *qf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    ck_assert(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    return keep(s);
}

static const char *schema_pg = "DROP TABLE IF EXISTS qn, qd;\n"
                               "CREATE TABLE qd (n int UNIQUE DEFERRABLE INITIALLY DEFERRED);\n"
                               "CREATE TABLE qn (id serial PRIMARY KEY, owner text NOT NULL DEFAULT '', title text NOT NULL,\n"
                               "  body text, n int UNIQUE);\n";
static const char *schema_lite = "DROP TABLE IF EXISTS qn;\n"
                                 "CREATE TABLE qn (id INTEGER PRIMARY KEY, owner TEXT NOT NULL DEFAULT '', title TEXT NOT NULL,\n"
                                 "  body TEXT, n INTEGER UNIQUE);\n";
static const char *schema_my = "DROP TABLE IF EXISTS qn;\n"
                               "CREATE TABLE qn (id INT AUTO_INCREMENT PRIMARY KEY, owner VARCHAR(200) NOT NULL DEFAULT '',\n"
                               "  title TEXT NOT NULL, body TEXT, n INT UNIQUE);\n";

/* The paths of one backend (prefix P, key K, a row source for /P/big). */
static const char *paths_tmpl =
    "      /P/notes:\n"
    "        db.query:\n"
    "          key: K\n"
    "          max-body: 256\n"
    "          GET:\n"
    "            sql: SELECT id, title, body FROM qn WHERE owner = $1 ORDER BY id\n"
    "            params: [{from: header:x-user, default: ''}]\n"
    "            paginate: {limit: 2, max-limit: 5}\n"
    "          POST:\n"
    "            sql: INSERT INTO qn (owner, title, body) VALUES ($1, $2, $3) RETURNING id, title, body\n"
    "            params: [{from: header:x-user, default: ''}, body:title, {from: body:body, optional: ON}]\n"
    "            result: row\n"
    "            status: 201\n"
    "      /P/note:\n"
    "        db.query:\n"
    "          key: K\n"
    "          GET: {sql: 'SELECT id, title, body FROM qn WHERE id = $1', params: [path:1], result: row}\n"
    "          PUT: {sql: 'UPDATE qn SET body = $1 WHERE id = $2', params: [body, path:1], result: affected}\n"
    "          DELETE: {sql: 'DELETE FROM qn WHERE id = $1', params: [path:1], result: affected}\n"
    "      /P/title:\n"
    "        db.query: {key: K, GET: {sql: 'SELECT title FROM qn WHERE id = $1', params: [query:id], result: value}}\n"
    "      /P/count:\n"
    "        db.query:\n"
    "          key: K\n"
    "          GET: {sql: 'SELECT count(*) FROM qn WHERE title = $1', params: [query:title], result: value}\n"
    "      /P/counted:\n"
    "        db.query: {key: K, GET: {sql: 'SELECT count(*) FROM qn WHERE title = $1', params: [path:1], result: value}}\n"
    "      /P/all:\n"
    "        db.query: {key: K, GET: {sql: 'SELECT id, title, body FROM qn ORDER BY id'}}\n"
    "      /P/dup:\n"
    "        db.query: {key: K, POST: {sql: \"INSERT INTO qn (title, n) VALUES ('d', $1)\", params: [query:n], result: none}}\n"
    "      /P/nulltitle:\n"
    "        db.query: {key: K, POST: {sql: 'INSERT INTO qn (title) VALUES ($1)', params: [{from: query:t, optional: ON}],"
    " result: none}}\n"
    "      /P/tx:\n"
    "        db.query:\n"
    "          key: K\n"
    "          POST:\n"
    "            sql:\n"
    "              - INSERT INTO qn (title, n) VALUES ($1, $2)\n"
    "              - INSERT INTO qn (title, n) VALUES ($1, $3)\n"
    "              - SELECT count(*) AS c FROM qn WHERE title = $1\n"
    "            params: [body:title, body:a, body:b]\n"
    "            result: value\n"
    "      /P/txrows:\n"
    "        db.query:\n"
    "          key: K\n"
    "          POST:\n"
    "            sql: ['INSERT INTO qn (title) VALUES ($1)', 'SELECT title FROM qn WHERE title = $1 ORDER BY id']\n"
    "            params: [query:t]\n"
    "      /P/big:\n"
    "        db.query: {key: K, GET: BIG}\n";

static char *replace(const char *text, const char *from, const char *to)
{
    size_t n = 0, fl = strlen(from), tl = strlen(to);
    for (const char *p = text; (p = strstr(p, from)) != NULL; p += fl)
        ++n;
    char *out = malloc(strlen(text) + n * tl + 1), *o = out;
    for (const char *p = text;;) {
        const char *q = strstr(p, from);
        if (q == NULL) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, q - p);
        o += q - p;
        memcpy(o, to, tl);
        o += tl;
        p = q + fl;
    }
    return out;
}

static char *paths(const char *prefix, const char *key, const char *big)
{
    char *a = replace(paths_tmpl, "/P/", qf("/%s/", prefix)), *b = replace(a, "key: K", qf("key: %s", key)),
         *c = replace(b, "GET: BIG", qf("GET: %s", big));
    free(a);
    free(b);
    return keep(c);
}

/* H2O_DB_TEST_MYSQL with the database MY_DB; NULL when absent. */
static const char *mysql_url(void)
{
#ifdef H2O_DB_WITH_MYSQL
    static char url[1024];
    const char *u = getenv("H2O_DB_TEST_MYSQL"), *slash;
    if (u == NULL || *u == '\0' || strlen(u) > 900 || (slash = strrchr(u, '/')) == NULL)
        return NULL;
    const char *query = strchr(slash, '?');
    snprintf(url, sizeof(url), "%.*s/" MY_DB "%s", (int)(slash - u), u, query != NULL ? query : "");
    return url;
#else
    return NULL;
#endif
}

/* Makes MY_DB afresh (root on the socket scripts/test gave). */
static void mysql_database(void)
{
#ifdef H2O_DB_WITH_MYSQL
    static int done;
    const char *sock = getenv("H2O_DB_TEST_MYSQL_SOCKET");
    if (done || mysql_url() == NULL || sock == NULL)
        return;
    MYSQL *m = mysql_init(NULL);
    int ok = mysql_real_connect(m, "localhost", "root", NULL, NULL, 0, sock, 0) != NULL &&
             mysql_query(m, "DROP DATABASE IF EXISTS " MY_DB) == 0 &&
             mysql_query(m, "CREATE DATABASE " MY_DB " CHARACTER SET utf8mb4") == 0;
    ck_assert_msg(ok, "cannot make the database " MY_DB ": %s", mysql_error(m));
    mysql_close(m);
    done = 1;
#endif
}

static void start(void)
{
    th_require_pg();
    mysql_database();
    char *dir = keep(th_tmpdir());
    free(th_write_file(dir, "pg.sql", schema_pg, 0));
    free(th_write_file(dir, "lite.sql", schema_lite, 0));
    free(th_write_file(dir, "my.sql", schema_my, 0));
    const char *my = mysql_url();
    const char *conf = qf(
        "listen: {host: 127.0.0.1, port: @PORT@}\n"
        "num-threads: 2\n"
        "db.bind:\n"
        "  - {url: '@PG@', schema: pg.sql}\n"
        "  - {url: 'sqlite:///q.sqlite3', key: sa_lite, schema: lite.sql, on-connect: PRAGMA journal_mode=WAL}\n"
        "%s"
        "  - {url: 'postgresql://nobody@127.0.0.1:%d/none', key: sa_down, pool: {acquire-timeout: 2}}\n"
        "  - {url: '@PG@', key: sa_slow, pool: {statement-timeout: 0.2}}\n"
        "hosts:\n"
        "  default:\n"
        "    paths:\n"
        "%s%s%s"
        "      /down:\n"
        "        db.query: {key: sa_down, GET: {sql: SELECT 1, result: value}}\n"
        "      /slow:\n"
        "        db.query: {key: sa_slow, GET: {sql: SELECT pg_sleep(5), result: none}}\n"
        "      /forbidden:\n"
        "        db.query: {GET: {sql: \"DO $$BEGIN RAISE EXCEPTION 'no $1' USING ERRCODE = '42501'; END$$\", result: none}}\n"
        "      /cut:\n"
        "        db.query:\n"
        "          GET:\n"
        "            sql: SELECT g, CASE WHEN g < $1 THEN 'ok' ELSE (1 / (g - g))::text END AS t FROM generate_series(1, 100000) "
        "AS g\n"
        "            params: [query:at]\n"
        "      /txcut:\n"
        "        db.query:\n"
        "          POST:\n"
        "            sql:\n"
        "              - INSERT INTO qd (n) VALUES (1), (1)\n"
        "              - SELECT g FROM generate_series(1, 50000) AS g\n"
        "            result: rows\n"
        "      /badint:\n"
        "        db.query: {GET: {sql: 'SELECT $1::int AS v', params: [query:v], result: value}}\n",
        my != NULL ? qf("  - {url: '%s', key: sa_my, schema: my.sql}\n", my) : "", th_free_port(),
        paths("pg", "sa_main",
              "{sql: 'SELECT g AS n, ''r,\"'' || g AS t FROM generate_series(1, $1::int) AS g ORDER BY g', params: [query:n]}"),
        paths("lite", "sa_lite", "{sql: 'SELECT 1 AS n'}"), my != NULL ? paths("my", "sa_my", "{sql: 'SELECT 1 AS n'}") : "");
    int rc = th_server_start_in(&server, dir, conf);
    ck_assert_msg(rc == 0, "the server did not start; log:\n%s", th_server_log(&server));
    server_up = 1;
}

static void teardown(void)
{
    if (server_up)
        th_server_stop(&server, 5000);
    server_up = 0;
    for (size_t i = 0; i < arena_size; ++i)
        free(arena[i]);
    free(arena);
    arena = NULL;
    arena_size = 0;
}

/* ---- HTTP with headers ---- */

/* METHOD PATH with extra header lines ("Name: value\n"...) and a body (NULL: none); the curl error
 * is in res->curl_error (0: a response arrived). */
static void request(th_response_t *res, int version, const char *method, const char *path, const char *headers, const char *body)
{
    memset(res, 0, sizeof(*res));
    res->body = strdup("");
    res->headers = strdup("");
    char *url = th_url(&server, path);
    CURL *c = curl_easy_init();
    struct curl_slist *list = curl_slist_append(NULL, "Expect:");
    for (const char *p = headers; p != NULL && *p != '\0';) {
        size_t n = strcspn(p, "\n");
        char *line = strndup(p, n);
        list = curl_slist_append(list, line);
        free(line);
        p += n + (p[n] == '\n');
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, db_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, res);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, db_on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, res);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)(60 * th_time_factor()));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, version == TH_HTTP2 ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE : CURL_HTTP_VERSION_1_1);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (method != NULL && strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (method != NULL)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    res->curl_error = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res->status);
    long v = 0;
    curl_easy_getinfo(c, CURLINFO_HTTP_VERSION, &v);
    res->http_version = v == CURL_HTTP_VERSION_2_0 ? 2 : 11;
    curl_easy_cleanup(c);
    curl_slist_free_all(list);
    free(url);
}

/* A request that must answer `status`; returns the body (the response is kept in *res). */
static const char *expect(th_response_t *res, int version, long status, const char *method, const char *path, const char *headers,
                          const char *body)
{
    request(res, version, method, path, headers, body);
    ck_assert_msg(res->curl_error == 0, "%s %s: curl error %d; log:\n%s", method != NULL ? method : "GET", path, res->curl_error,
                  th_server_log(&server));
    ck_assert_msg(res->status == status, "%s %s (HTTP/%s): status %ld, wanted %ld; body: %s", method != NULL ? method : "GET", path,
                  version == TH_HTTP2 ? "2" : "1.1", res->status, status, res->body);
    ck_assert_int_eq(res->http_version, version == TH_HTTP2 ? 2 : 11);
    return res->body;
}

/* GET that must answer 200 with exactly `want`. */
static void expect_body(int version, const char *path, const char *headers, const char *want)
{
    th_response_t res;
    expect(&res, version, 200, NULL, path, headers, NULL);
    ck_assert_msg(strcmp(res.body, want) == 0, "GET %s: body\n%s\nwanted\n%s", path, res.body, want);
    th_response_free(&res);
}

static char *urlencode(const char *s)
{
    CURL *c = curl_easy_init();
    char *e = curl_easy_escape(c, s, 0), *out = strdup(e);
    curl_free(e);
    curl_easy_cleanup(c);
    return out;
}

static const char *const prefixes[] = {"pg", "lite", "my"};

static size_t num_backends(void)
{
    return mysql_url() != NULL ? 3 : 2;
}

#endif
