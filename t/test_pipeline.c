/*
 * The speed machinery, for correctness (speed itself is measured by bench/run):
 * pipelined statements from many requests each get their own result, a failing
 * statement in a pipeline fails only its request, the statement cache survives
 * DISCARD ALL, a reconnect and eviction, and SQLite's statement cache too; a batch
 * (h2o_db_query_batch) answers each of its statements once, in order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "harness.h"

static th_server_t server;

static void start(const char *conf)
{
    th_require_pg();
    ck_assert_msg(th_server_start(&server, conf) == 0, "server did not start: %s", th_server_log(&server));
}

static void stop(void)
{
    int status = th_server_stop(&server, 15000);
    ck_assert_msg(status == 0, "exit status %d; log: %s", status, th_server_log(&server));
}

/* The sum of a counter over every thread of the status page. */
static long status_counter(const char *name)
{
    char *url = th_url(&server, "/status"), key[64];
    th_response_t res;
    ck_assert(th_http(&res, TH_HTTP1, NULL, url, NULL) == 0);
    snprintf(key, sizeof(key), "\"%s\":", name);
    long sum = 0;
    for (const char *p = res.body; (p = strstr(p, key)) != NULL; p += strlen(key))
        sum += strtol(p + strlen(key), NULL, 10);
    th_response_free(&res);
    free(url);
    return sum;
}

static int noticed_broken(void *arg)
{
    return status_counter("closed_broken") >= 1;
}

static char *script(const char *body)
{
    char *url = th_url(&server, "/s");
    th_response_t res;
    ck_assert(th_http(&res, TH_HTTP1, "POST", url, body) == 0);
    ck_assert_int_eq(res.status, 200);
    char *out = strdup(res.body);
    th_response_free(&res);
    free(url);
    return out;
}

static const char *PG_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                             "num-threads: 1\n"
                             "db.bind:\n"
                             "  url: @PG@?application_name=h2o-db-pipeline-test\n"
                             "  pool: {max: 2, statement-cache: 4}\n"
                             "hosts:\n"
                             "  default:\n"
                             "    paths:\n"
                             "      /e:\n"
                             "        c.handler: @BUILD@/t/db_handlers.so:db_echo\n"
                             "      /s:\n"
                             "        c.handler: @BUILD@/t/db_handlers.so:db_script\n"
                             "      /status:\n"
                             "        db.status: ON\n";

START_TEST(pipelined_statements_each_get_their_own_result)
{
    start(PG_CONF);
    enum { N = 200 };
    char *urls[N];
    th_response_t res[N];
    for (int i = 0; i < N; ++i) {
        char path[64];
        /* a short sleep keeps statements in flight, so that others are pipelined behind them */
        snprintf(path, sizeof(path), "/e?id=%d&sleep=0.002", 1000 + i);
        urls[i] = th_url(&server, path);
    }
    th_http_parallel(res, N, TH_HTTP2, (const char *const *)urls);
    for (int i = 0; i < N; ++i) {
        char expect[64];
        snprintf(expect, sizeof(expect), "[{\"id\":%d}]", 1000 + i);
        ck_assert_msg(res[i].status == 200, "request %d: status %ld (curl %d): %s", i, res[i].status, res[i].curl_error,
                      res[i].body);
        ck_assert_str_eq(res[i].body, expect);
        th_response_free(&res[i]);
        free(urls[i]);
    }
    /* two connections served 200 concurrent statements: most were pipelined */
    ck_assert_int_gt(status_counter("pipelined"), 50);
    ck_assert_int_le(th_pg_count("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                                 "application_name = 'h2o-db-pipeline-test'"),
                     2);
    stop();
}
END_TEST

START_TEST(a_failing_statement_fails_only_its_own_request)
{
    start(PG_CONF);
    enum { N = 60 };
    char *urls[N];
    th_response_t res[N];
    for (int i = 0; i < N; ++i) {
        char path[64];
        if (i % 10 == 5)
            snprintf(path, sizeof(path), "/e?id=not-a-number&sleep=0.001");
        else
            snprintf(path, sizeof(path), "/e?id=%d&sleep=0.001", i);
        urls[i] = th_url(&server, path);
    }
    th_http_parallel(res, N, TH_HTTP2, (const char *const *)urls);
    for (int i = 0; i < N; ++i) {
        if (i % 10 == 5) {
            ck_assert_int_eq(res[i].status, 500);
            char *st = th_header(&res[i], "x-sqlstate");
            ck_assert_ptr_nonnull(st);
            ck_assert_str_eq(st, "22P02"); /* invalid_text_representation */
            free(st);
        } else {
            char expect[64];
            snprintf(expect, sizeof(expect), "[{\"id\":%d}]", i);
            ck_assert_msg(res[i].status == 200, "request %d: %ld %s", i, res[i].status, res[i].body);
            ck_assert_str_eq(res[i].body, expect);
        }
        th_response_free(&res[i]);
        free(urls[i]);
    }
    stop();
}
END_TEST

START_TEST(statement_cache_survives_discard_all_and_reconnect)
{
    start("listen: {host: 127.0.0.1, port: @PORT@}\n"
          "num-threads: 1\n"
          "db.bind:\n"
          "  url: @PG@?application_name=h2o-db-cache-test\n"
          "  pool: {max: 1}\n"
          "hosts:\n"
          "  default:\n"
          "    paths:\n"
          "      /s:\n"
          "        c.handler: @BUILD@/t/db_handlers.so:db_script\n"
          "      /status:\n"
          "        db.status: ON\n");
    const char *q = "SQL SELECT $1::int + 1 AS n\nP 41\n";
    char *out = script(q);
    ck_assert_msg(strstr(out, "\"n\":42") != NULL, "%s", out);
    free(out);
    out = script(q);
    ck_assert_msg(strstr(out, "\"n\":42") != NULL, "%s", out);
    free(out);
    ck_assert_int_ge(status_counter("cache_hits"), 1);

    /* DISCARD ALL drops every prepared statement of the connection: the cache must follow */
    out = script("SQL DISCARD ALL\n");
    ck_assert_msg(strstr(out, "\"status\":\"OK\"") != NULL, "%s", out);
    free(out);
    out = script(q);
    ck_assert_msg(strstr(out, "\"n\":42") != NULL, "after DISCARD ALL: %s", out);
    free(out);

    /* PostgreSQL kills the connection; once the server noticed (it watches idle connections), the
     * next statement runs on a new one, prepared anew */
    free(th_pg("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND "
               "application_name = 'h2o-db-cache-test'"));
    ck_assert_msg(th_wait_until(noticed_broken, NULL, 10000), "the server never noticed its connection was killed");
    out = script(q);
    ck_assert_msg(strstr(out, "\"n\":42") != NULL, "after the reconnect: %s", out);
    free(out);
    stop();
}
END_TEST

START_TEST(eviction_with_more_distinct_sql_than_the_cache_holds)
{
    start(PG_CONF); /* statement-cache: 4 */
    for (int round = 0; round < 3; ++round) {
        for (int k = 0; k < 10; ++k) {
            char body[256], expect[64];
            snprintf(body, sizeof(body), "SQL SELECT $1::int * %d AS v\nP %d\n", k + 1, round + 2);
            snprintf(expect, sizeof(expect), "\"v\":%d", (k + 1) * (round + 2));
            char *out = script(body);
            ck_assert_msg(strstr(out, expect) != NULL, "round %d k %d: %s", round, k, out);
            free(out);
        }
    }
    ck_assert_int_ge(status_counter("cache_misses"), 10);
    stop();
}
END_TEST

START_TEST(sqlite_statement_cache)
{
    th_server_t *s = &server;
    ck_assert_msg(th_server_start(s, "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                     "num-threads: 1\n"
                                     "db.bind:\n"
                                     "  url: sqlite:///cache.sqlite3\n"
                                     "  pool: {max: 1, statement-cache: 2}\n"
                                     "hosts:\n"
                                     "  default:\n"
                                     "    paths:\n"
                                     "      /s:\n"
                                     "        c.handler: @BUILD@/t/db_handlers.so:db_script\n"
                                     "      /status:\n"
                                     "        db.status: ON\n") == 0,
                  "%s", th_server_log(s));
    char *out = script("SQL CREATE TABLE t (a INTEGER)\nSQL INSERT INTO t VALUES ($1)\nP 1\nSQL INSERT INTO t VALUES ($1)\nP 2\n");
    free(out);
    for (int i = 0; i < 3; ++i) {
        out = script("SQL SELECT sum(a) AS s FROM t\n");
        ck_assert_msg(strstr(out, "\"s\":3") != NULL, "%s", out);
        free(out);
    }
    ck_assert_int_ge(status_counter("cache_hits"), 2);
    /* the schema changes under a cached statement: SQLite prepares it again */
    out = script("SQL DROP TABLE t\nSQL CREATE TABLE t (a INTEGER, b TEXT)\nSQL INSERT INTO t VALUES ($1, $2)\nP 5\nP x\n");
    free(out);
    out = script("SQL SELECT sum(a) AS s FROM t\n");
    ck_assert_msg(strstr(out, "\"s\":5") != NULL, "%s", out);
    free(out);
    /* more distinct statements than the cache holds, in a loop */
    for (int round = 0; round < 2; ++round) {
        for (int k = 1; k <= 5; ++k) {
            char body[128], expect[32];
            snprintf(body, sizeof(body), "SQL SELECT a * %d AS v FROM t\n", k);
            snprintf(expect, sizeof(expect), "\"v\":%d", 5 * k);
            out = script(body);
            ck_assert_msg(strstr(out, expect) != NULL, "%s", out);
            free(out);
        }
    }
    stop();
}
END_TEST

START_TEST(pipelining_off_still_answers_everything)
{
    start("listen: {host: 127.0.0.1, port: @PORT@}\n"
          "num-threads: 1\n"
          "db.bind:\n"
          "  url: @PG@\n"
          "  pool: {max: 2, pipeline-depth: 1}\n"
          "hosts:\n"
          "  default:\n"
          "    paths:\n"
          "      /e:\n"
          "        c.handler: @BUILD@/t/db_handlers.so:db_echo\n"
          "      /status:\n"
          "        db.status: ON\n");
    enum { N = 40 };
    char *urls[N];
    th_response_t res[N];
    for (int i = 0; i < N; ++i) {
        char path[64];
        snprintf(path, sizeof(path), "/e?id=%d", i);
        urls[i] = th_url(&server, path);
    }
    th_http_parallel(res, N, TH_HTTP2, (const char *const *)urls);
    for (int i = 0; i < N; ++i) {
        char expect[32];
        snprintf(expect, sizeof(expect), "[{\"id\":%d}]", i);
        ck_assert_str_eq(res[i].body, expect);
        th_response_free(&res[i]);
        free(urls[i]);
    }
    ck_assert_int_eq(status_counter("pipelined"), 0);
    stop();
}
END_TEST

/* h2o_db_query_batch: one call, every statement answered once, in order, pipelined on one
 * connection; all or nothing when a statement is invalid or the batch is too large. */
START_TEST(a_batch_answers_each_statement_in_order)
{
    start(PG_CONF);
    long pipelined = status_counter("pipelined"), statements = status_counter("statements");
    char *out = script("BATCH\nSQL SELECT 1 AS a\nSQL SELECT 1/0 AS x\nSQL SELECT $1::int AS p\nP 3\n");
    const char *a = strstr(out, "\"rows\":[{\"a\":1}]"), *x = strstr(out, "\"sqlstate\":\"22012\""),
               *p = strstr(out, "\"rows\":[{\"p\":3}]");
    ck_assert_msg(a != NULL && x != NULL && p != NULL && a < x && x < p, "%s", out);
    free(out);
    ck_assert_int_eq(status_counter("statements"), statements + 3);
    ck_assert_int_ge(status_counter("pipelined"), pipelined + 2);

    /* an invalid statement anywhere: nothing is sent */
    out = script("BATCH\nSQL SELECT 1 AS a\nSQL SELECT 1; SELECT 2\n");
    ck_assert_msg(strstr(out, "REFUSED") != NULL && strstr(out, "\"a\"") == NULL, "%s", out);
    free(out);
    /* more than the session may queue (max(queue, pipeline-depth) = 1024): nothing is sent */
    size_t cap = 1100 * 20, len = 0;
    char *big = malloc(cap);
    len += snprintf(big, cap, "BATCH\n");
    for (int i = 0; i < 1025; ++i)
        len += snprintf(big + len, cap - len, "SQL SELECT %d AS n\n", i);
    out = script(big);
    ck_assert_msg(strstr(out, "REFUSED") != NULL && strstr(out, "\"n\"") == NULL, "%.200s", out);
    free(out);
    ck_assert_int_eq(status_counter("statements"), statements + 3);
    /* 1024 is fine */
    big[len - strlen("SQL SELECT 1024 AS n\n")] = '\0';
    out = script(big);
    ck_assert_msg(strstr(out, "\"n\":1023") != NULL, "%.200s", out);
    free(out);
    free(big);
    stop();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pipeline");
    TCase *tc = tcase_create("pipeline");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, pipelined_statements_each_get_their_own_result);
    tcase_add_test(tc, a_failing_statement_fails_only_its_own_request);
    tcase_add_test(tc, statement_cache_survives_discard_all_and_reconnect);
    tcase_add_test(tc, eviction_with_more_distinct_sql_than_the_cache_holds);
    tcase_add_test(tc, sqlite_statement_cache);
    tcase_add_test(tc, pipelining_off_still_answers_everything);
    tcase_add_test(tc, a_batch_answers_each_statement_in_order);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
