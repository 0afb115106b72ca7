/*
 * db.query (docs/directives/db.query.md) behind the real h2o-db, over HTTP/1.1 and HTTP/2, on
 * PostgreSQL, SQLite and MariaDB alike: every parameter source, every result kind and status,
 * the three formats (CSV quoting, NDJSON lines), pagination and its Link headers, 405/406/413,
 * SQLSTATE → HTTP mapping, transactions that roll back, injection through every source stored as
 * data, and a large result that arrives whole and in order. (Config errors: t/configs/bad/query_*.)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "query_util.h"

static const int versions[] = {TH_HTTP1, TH_HTTP2};

/* The number after "id": in a JSON object. */
static long id_of(const char *json)
{
    const char *p = strstr(json, "\"id\":");
    ck_assert_msg(p != NULL, "no id in %s", json);
    return strtol(p + 5, NULL, 10);
}

static void assert_header(th_response_t *res, const char *name, const char *want)
{
    char *v = th_header(res, name);
    ck_assert_msg(v != NULL && strcmp(v, want) == 0, "%s: `%s`, wanted `%s`", name, v != NULL ? v : "(none)", want);
    free(v);
}

START_TEST(sources_results_and_statuses)
{
    start();
    for (size_t b = 0; b < num_backends(); ++b) {
        for (size_t vi = 0; vi < 2; ++vi) {
            const char *P = prefixes[b];
            int v = versions[vi];
            char *user = qf("x-user: u%zu", vi);
            th_response_t r;
            /* body:NAME from JSON (a nested value as its JSON text), header:NAME, default */
            const char *body = expect(&r, v, 201, "POST", qf("/%s/notes", P), qf("%s\ncontent-type: application/json", user),
                                      "{\"title\": \"t\\u00e9\", \"n\": 1, \"body\": {\"k\": [1, \"\\\"\"]}}");
            long id1 = id_of(body);
            ck_assert_msg(strstr(body, "\"title\":\"t\xc3\xa9\",\"body\":\"{\\\"k\\\": [1, \\\"\\\\\\\"\\\"]}\"") != NULL, "%s",
                          body);
            assert_header(&r, "content-type", "application/json");
            th_response_free(&r);
            /* body:NAME from a form; optional absent is NULL */
            body = expect(&r, v, 201, "POST", qf("/%s/notes", P), qf("%s\ncontent-type: application/x-www-form-urlencoded", user),
                          "title=a+b%26c&x=1");
            long id2 = id_of(body);
            ck_assert_msg(strstr(body, "\"title\":\"a b&c\",\"body\":null}") != NULL, "%s", body);
            th_response_free(&r);
            /* a required field that is absent, a body that is not JSON */
            body = expect(&r, v, 400, "POST", qf("/%s/notes", P), "content-type: application/json", "{\"body\": \"x\"}");
            ck_assert_str_eq(body, "{\"error\":\"missing parameter body:title\"}\n");
            th_response_free(&r);
            expect(&r, v, 400, "POST", qf("/%s/notes", P), "content-type: application/json", "{\"title\": ");
            th_response_free(&r);
            /* path:N, result: row; 404 */
            body = expect(&r, v, 200, NULL, qf("/%s/note/%ld", P, id2), NULL, NULL);
            ck_assert_str_eq(body, qf("{\"id\":%ld,\"title\":\"a b&c\",\"body\":null}", id2));
            th_response_free(&r);
            expect(&r, v, 404, NULL, qf("/%s/note/999999", P), NULL, NULL);
            th_response_free(&r);
            /* body (whole), result: affected */
            ck_assert_str_eq(expect(&r, v, 200, "PUT", qf("/%s/note/%ld", P, id2), NULL, "line 1\nline 2"), "{\"affected\":1}\n");
            th_response_free(&r);
            /* query:NAME, result: value (text/plain) */
            body = expect(&r, v, 200, NULL, qf("/%s/title?id=%ld", P, id2), NULL, NULL);
            ck_assert_str_eq(body, "a b&c");
            assert_header(&r, "content-type", "text/plain; charset=utf-8");
            th_response_free(&r);
            expect(&r, v, 404, NULL, qf("/%s/title?id=999999", P), NULL, NULL);
            th_response_free(&r);
            ck_assert_str_eq(expect(&r, v, 400, NULL, qf("/%s/title", P), NULL, NULL),
                             "{\"error\":\"missing parameter query:id\"}\n");
            th_response_free(&r);
            /* result: rows, filtered by the header */
            body = expect(&r, v, 200, NULL, qf("/%s/notes", P), user, NULL);
            ck_assert_str_eq(body, qf("[{\"id\":%ld,\"title\":\"t\xc3\xa9\",\"body\":\"{\\\"k\\\": [1, \\\"\\\\\\\"\\\"]}\"},"
                                      "{\"id\":%ld,\"title\":\"a b&c\",\"body\":\"line 1\\nline 2\"}]",
                                      id1, id2));
            th_response_free(&r);
            /* HEAD answers GET's headers without a body (a stream stopped at its first row, a page) */
            expect(&r, v, 200, "HEAD", qf("/%s/all", P), NULL, NULL);
            ck_assert_int_eq(r.body_len, 0);
            th_response_free(&r);
            expect(&r, v, 200, "HEAD", qf("/%s/notes", P), user, NULL);
            ck_assert_int_eq(r.body_len, 0);
            assert_header(&r, "content-type", "application/json");
            th_response_free(&r);
            /* DELETE: affected 1, then 404; result: none is 204 */
            expect(&r, v, 200, "DELETE", qf("/%s/note/%ld", P, id1), NULL, NULL);
            th_response_free(&r);
            expect(&r, v, 404, "DELETE", qf("/%s/note/%ld", P, id1), NULL, NULL);
            th_response_free(&r);
            expect(&r, v, 204, "POST", qf("/%s/nulltitle?t=x", P), NULL, NULL);
            th_response_free(&r);
            /* 405 with Allow; 413 over max-body (256) */
            expect(&r, v, 405, "PATCH", qf("/%s/notes", P), NULL, "{}");
            assert_header(&r, "allow", "GET, HEAD, POST");
            th_response_free(&r);
            char big[400];
            memset(big, 'a', sizeof(big) - 1);
            big[sizeof(big) - 1] = '\0';
            memcpy(big, "title=", 6);
            expect(&r, v, 413, "POST", qf("/%s/notes", P), "content-type: application/x-www-form-urlencoded", big);
            th_response_free(&r);
        }
    }
}
END_TEST

START_TEST(formats_json_ndjson_csv)
{
    start();
    for (size_t b = 0; b < num_backends(); ++b) {
        const char *P = prefixes[b];
        th_response_t r;
        const char *rows[] = {"{\"title\": \"a,b\"}", "{\"title\": \"q\\\"x\", \"body\": \"\"}",
                              "{\"title\": \"l1\\r\\nl2\", \"body\": \"plain\"}"};
        long ids[3];
        for (size_t i = 0; i < 3; ++i) {
            ids[i] = id_of(expect(&r, TH_HTTP1, 201, "POST", qf("/%s/notes", P), "content-type: application/json", rows[i]));
            th_response_free(&r);
        }
        char *csv =
            qf("id,title,body\r\n%ld,\"a,b\",\r\n%ld,\"q\"\"x\",\"\"\r\n%ld,\"l1\r\nl2\",plain\r\n", ids[0], ids[1], ids[2]);
        char *ndjson = qf("{\"id\":%ld,\"title\":\"a,b\",\"body\":null}\n{\"id\":%ld,\"title\":\"q\\\"x\",\"body\":\"\"}\n"
                          "{\"id\":%ld,\"title\":\"l1\\r\\nl2\",\"body\":\"plain\"}\n",
                          ids[0], ids[1], ids[2]);
        char *json = qf("[{\"id\":%ld,\"title\":\"a,b\",\"body\":null},{\"id\":%ld,\"title\":\"q\\\"x\",\"body\":\"\"},"
                        "{\"id\":%ld,\"title\":\"l1\\r\\nl2\",\"body\":\"plain\"}]",
                        ids[0], ids[1], ids[2]);
        for (size_t vi = 0; vi < 2; ++vi) {
            int v = versions[vi];
            expect_body(v, qf("/%s/all?format=csv", P), NULL, csv);
            expect_body(v, qf("/%s/all", P), "accept: text/csv", csv);
            expect_body(v, qf("/%s/all?format=ndjson", P), NULL, ndjson);
            expect_body(v, qf("/%s/all", P), "accept: text/csv;q=0.5, application/x-ndjson", ndjson);
            expect_body(v, qf("/%s/all", P), NULL, json);
            expect_body(v, qf("/%s/all", P), "accept: text/html, */*;q=0.1", json);
            expect(&r, v, 200, NULL, qf("/%s/all", P), "accept: application/x-ndjson", NULL);
            assert_header(&r, "content-type", "application/x-ndjson");
            th_response_free(&r);
            expect(&r, v, 200, NULL, qf("/%s/all?format=csv", P), NULL, NULL);
            assert_header(&r, "content-type", "text/csv; charset=utf-8; header=present");
            th_response_free(&r);
            expect(&r, v, 406, NULL, qf("/%s/all", P), "accept: text/html", NULL);
            th_response_free(&r);
            expect(&r, v, 406, NULL, qf("/%s/all?format=xml", P), NULL, NULL);
            th_response_free(&r);
        }
    }
}
END_TEST

START_TEST(pagination_links_and_bad_bounds)
{
    start();
    for (size_t b = 0; b < num_backends(); ++b) {
        const char *P = prefixes[b];
        th_response_t r;
        long ids[5];
        for (size_t i = 0; i < 5; ++i) {
            ids[i] = id_of(expect(&r, TH_HTTP1, 201, "POST", qf("/%s/notes", P), "x-user: pager", qf("title=p%zu", i)));
            th_response_free(&r);
        }
        for (size_t vi = 0; vi < 2; ++vi) {
            int v = versions[vi];
            /* first page: next only; the other query parameters are kept */
            expect(&r, v, 200, NULL, qf("/%s/notes?x=1&y=%%20z", P), "x-user: pager", NULL);
            ck_assert_str_eq(r.body, qf("[{\"id\":%ld,\"title\":\"p0\",\"body\":null},{\"id\":%ld,\"title\":\"p1\",\"body\":null}]",
                                        ids[0], ids[1]));
            assert_header(&r, "link", qf("</%s/notes?x=1&y=%%20z&offset=2&limit=2>; rel=\"next\"", P));
            th_response_free(&r);
            /* a middle page: next and prev */
            expect(&r, v, 200, NULL, qf("/%s/notes?offset=2&x=1", P), "x-user: pager", NULL);
            ck_assert_str_eq(r.body, qf("[{\"id\":%ld,\"title\":\"p2\",\"body\":null},{\"id\":%ld,\"title\":\"p3\",\"body\":null}]",
                                        ids[2], ids[3]));
            ck_assert_msg(strstr(r.headers, qf("link: </%s/notes?x=1&offset=4&limit=2>; rel=\"next\"", P)) != NULL, "%s",
                          r.headers);
            ck_assert_msg(strstr(r.headers, qf("link: </%s/notes?x=1&offset=0&limit=2>; rel=\"prev\"", P)) != NULL, "%s",
                          r.headers);
            th_response_free(&r);
            /* the last page: prev only */
            expect(&r, v, 200, NULL, qf("/%s/notes?offset=4", P), "x-user: pager", NULL);
            ck_assert_str_eq(r.body, qf("[{\"id\":%ld,\"title\":\"p4\",\"body\":null}]", ids[4]));
            assert_header(&r, "link", qf("</%s/notes?offset=2&limit=2>; rel=\"prev\"", P));
            th_response_free(&r);
            /* limit up to max-limit (5): the whole list on one page, no Link */
            expect(&r, v, 200, NULL, qf("/%s/notes?limit=5&format=ndjson", P), "x-user: pager", NULL);
            ck_assert_msg(keep(th_header(&r, "link")) == NULL, "%s", r.headers);
            size_t lines = 0;
            for (const char *p = r.body; (p = strchr(p, '\n')) != NULL; ++p)
                ++lines;
            ck_assert_int_eq(lines, 5);
            th_response_free(&r);
            /* past the end: an empty page */
            expect_body(v, qf("/%s/notes?offset=50", P), "x-user: pager", "[]");
            const char *bad[] = {"limit=0", "limit=6", "limit=abc", "limit=-1", "offset=-1", "offset=x", "limit=1.5", "limit="};
            for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
                expect(&r, v, 400, NULL, qf("/%s/notes?%s", P, bad[i]), "x-user: pager", NULL);
                ck_assert_msg(strstr(r.body, "\"error\":") != NULL, "%s", r.body);
                th_response_free(&r);
            }
        }
    }
}
END_TEST

START_TEST(errors_map_by_sqlstate_and_never_show_parameters)
{
    start();
    for (size_t b = 0; b < num_backends(); ++b) {
        const char *P = prefixes[b];
        th_response_t r;
        expect(&r, TH_HTTP1, 204, "POST", qf("/%s/dup?n=4242", P), NULL, NULL);
        th_response_free(&r);
        for (size_t vi = 0; vi < 2; ++vi) {
            expect(&r, versions[vi], 409, "POST", qf("/%s/dup?n=4242", P), NULL, NULL);
            ck_assert_msg(strstr(r.body, "\"sqlstate\":\"23") != NULL && strstr(r.body, "4242") == NULL, "%s", r.body);
            assert_header(&r, "content-type", "application/json");
            th_response_free(&r);
            /* NOT NULL: another class 23 error → 400 */
            expect(&r, versions[vi], 400, "POST", qf("/%s/nulltitle", P), NULL, NULL);
            ck_assert_msg(strstr(r.body, "\"sqlstate\":\"23") != NULL, "%s", r.body);
            th_response_free(&r);
        }
    }
    th_response_t r;
    for (size_t vi = 0; vi < 2; ++vi) {
        int v = versions[vi];
        /* 22P02 → 400; the message names no parameter */
        expect(&r, v, 400, NULL, "/badint?v=zebra%27", NULL, NULL);
        ck_assert_msg(strstr(r.body, "\"sqlstate\":\"22P02\"") != NULL && strstr(r.body, "zebra") == NULL, "%s", r.body);
        ck_assert_msg(strstr(r.body, "SELECT") == NULL, "%s", r.body);
        th_response_free(&r);
        expect(&r, v, 403, NULL, "/forbidden", NULL, NULL);
        ck_assert_msg(strstr(r.body, "\"sqlstate\":\"42501\"") != NULL, "%s", r.body);
        th_response_free(&r);
        /* a database that is down: 503 with Retry-After, as h2o_db_send_error */
        expect(&r, v, 503, NULL, "/down", NULL, NULL);
        ck_assert_msg(keep(th_header(&r, "retry-after")) != NULL, "%s", r.headers);
        th_response_free(&r);
        /* statement-timeout: 504 */
        expect(&r, v, 504, NULL, "/slow", NULL, NULL);
        th_response_free(&r);
    }
}
END_TEST

START_TEST(a_list_of_statements_is_one_transaction)
{
    start();
    for (size_t b = 0; b < num_backends(); ++b) {
        const char *P = prefixes[b];
        for (size_t vi = 0; vi < 2; ++vi) {
            th_response_t r;
            char *title = qf("tx%zu", vi), *q = qf("/%s/count?title=%s", P, title);
            /* the result is the last statement's */
            ck_assert_str_eq(expect(&r, versions[vi], 200, "POST", qf("/%s/tx", P), "content-type: application/json",
                                    qf("{\"title\": \"%s\", \"a\": %zu, \"b\": %zu}", title, 100 + vi * 10, 101 + vi * 10)),
                             "2");
            th_response_free(&r);
            /* the second fails (n is unique): the first is rolled back too */
            expect(&r, versions[vi], 409, "POST", qf("/%s/tx", P), "content-type: application/json",
                   qf("{\"title\": \"%s-b\", \"a\": %zu, \"b\": %zu}", title, 200 + vi, 200 + vi));
            th_response_free(&r);
            expect_body(versions[vi], qf("/%s/count?title=%s-b", P, title), NULL, "0");
            expect_body(versions[vi], q, NULL, "2");
        }
    }
}
END_TEST

START_TEST(rows_stream_from_inside_a_transaction)
{
    start();
    for (size_t b = 0; b < num_backends(); ++b) {
        for (size_t vi = 0; vi < 2; ++vi) {
            th_response_t r;
            /* the SELECT runs on the transaction's connection: it sees the INSERT before it */
            const char *body = expect(&r, versions[vi], 200, "POST", qf("/%s/txrows?t=s%zu", prefixes[b], vi), NULL, "");
            ck_assert_str_eq(body, qf("[{\"title\":\"s%zu\"}]", vi));
            th_response_free(&r);
            expect_body(versions[vi], qf("/%s/count?title=s%zu", prefixes[b], vi), NULL, "1");
        }
    }
    /* a commit that fails after the rows went out (a deferred unique check) cuts the body short,
     * and nothing of the transaction stays */
    for (size_t vi = 0; vi < 2; ++vi) {
        th_response_t r;
        request(&r, versions[vi], "POST", "/txcut", NULL, "");
        ck_assert_int_eq(r.status, 200);
        ck_assert_msg(r.curl_error != 0, "HTTP/%s: the body looked complete after a failed commit",
                      versions[vi] == TH_HTTP2 ? "2" : "1.1");
        ck_assert_msg(strncmp(r.body, "[{\"g\":1},{\"g\":2}", 16) == 0, "%.40s", r.body);
        th_response_free(&r);
    }
    ck_assert_str_eq(keep(th_pg("SELECT count(*) FROM qd")), "0");
}
END_TEST

START_TEST(injection_through_every_source_is_data)
{
    start();
    char *enc = urlencode(EVIL);
    char *json_evil = strdup("\"x'); DROP TABLE qn; -- \\\"\\\\ `\"");
    for (size_t b = 0; b < num_backends(); ++b) {
        const char *P = prefixes[b];
        th_response_t r;
        /* header (owner), JSON body field (title), form field, whole body, query and path */
        long id = id_of(expect(&r, TH_HTTP1, 201, "POST", qf("/%s/notes", P), "x-user: " EVIL "\ncontent-type: application/json",
                               qf("{\"title\": %s}", json_evil)));
        th_response_free(&r);
        expect(&r, TH_HTTP2, 201, "POST", qf("/%s/notes", P), "content-type: application/x-www-form-urlencoded",
               qf("title=%s", enc));
        th_response_free(&r);
        expect(&r, TH_HTTP1, 200, "PUT", qf("/%s/note/%ld", P, id), NULL, EVIL);
        th_response_free(&r);
        for (size_t vi = 0; vi < 2; ++vi) {
            expect_body(versions[vi], qf("/%s/count?title=%s", P, enc), NULL, "2");
            expect_body(versions[vi], qf("/%s/counted/%s", P, enc), NULL, "2");
            /* stored verbatim: owner (header), title (JSON), body (raw) */
            expect(&r, versions[vi], 200, NULL, qf("/%s/notes", P), "x-user: " EVIL, NULL);
            ck_assert_str_eq(r.body, qf("[{\"id\":%ld,\"title\":%s,\"body\":%s}]", id, json_evil, json_evil));
            th_response_free(&r);
        }
        /* the table is still there */
        expect(&r, TH_HTTP1, 200, NULL, qf("/%s/all", P), NULL, NULL);
        th_response_free(&r);
    }
    ck_assert_str_eq(keep(th_pg("SELECT count(*) FROM qn")), "2");
    free(enc);
    free(json_evil);
}
END_TEST

/* Counts the lines of body and checks that line i (0-based) holds "n":i+1 (NDJSON) or starts with i+1 (CSV, after the header). */
static void assert_in_order(const char *body, size_t n, int csv)
{
    const char *p = body;
    if (csv) {
        ck_assert_msg(strncmp(p, "n,t\r\n", 5) == 0, "%.40s", p);
        p += 5;
    }
    for (size_t i = 1; i <= n; ++i) {
        char want[64];
        int len = csv ? snprintf(want, sizeof(want), "%zu,\"r,\"\"%zu\"\r\n", i, i)
                      : snprintf(want, sizeof(want), "{\"n\":%zu,\"t\":\"r,\\\"%zu\"}\n", i, i);
        ck_assert_msg(strncmp(p, want, len) == 0, "row %zu: %.60s, wanted %s", i, p, want);
        p += len;
    }
    ck_assert_msg(*p == '\0', "after %zu rows: %.60s", n, p);
}

START_TEST(a_large_result_arrives_whole_and_in_order)
{
    start();
    const size_t n = 200000;
    for (size_t vi = 0; vi < 2; ++vi) {
        th_response_t r;
        expect(&r, versions[vi], 200, NULL, qf("/pg/big?n=%zu&format=ndjson", n), NULL, NULL);
        if (versions[vi] == TH_HTTP1)
            assert_header(&r, "transfer-encoding", "chunked");
        assert_in_order(r.body, n, 0);
        th_response_free(&r);
        expect(&r, versions[vi], 200, NULL, qf("/pg/big?n=%zu", n), "accept: text/csv", NULL);
        assert_in_order(r.body, n, 1);
        th_response_free(&r);
    }
}
END_TEST

/* A million rows, NDJSON and CSV: complete and in order. What streaming them costs the server in
 * memory is measured by bench/stream (its RSS before and at its peak), not asserted here. */
START_TEST(a_million_rows_stream_complete_and_in_order)
{
    start();
    const size_t n = 1000000;
    th_response_t r;
    expect(&r, TH_HTTP1, 200, NULL, qf("/pg/big?n=%zu&format=ndjson", n), NULL, NULL);
    assert_in_order(r.body, n, 0);
    th_response_free(&r);
    expect(&r, TH_HTTP2, 200, NULL, qf("/pg/big?n=%zu&format=csv", n), NULL, NULL);
    assert_in_order(r.body, n, 1);
    th_response_free(&r);
}
END_TEST

static int backend_waits_on_client(void *arg)
{
    return th_pg_count("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                       "query LIKE '%generate_series%' AND wait_event = 'ClientWrite'") > 0;
}

START_TEST(a_client_that_does_not_read_pauses_the_statement)
{
    start();
    int fd = socket(AF_INET, SOCK_STREAM, 0), small = 16384;
    ck_assert(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    const char *req = "GET /pg/big?n=2000000&format=ndjson HTTP/1.1\r\nHost: q\r\n\r\n";
    ck_assert(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    /* nothing is read: the server's buffers fill, it pauses the statement, and PostgreSQL ends up
     * waiting to write to h2o-db */
    ck_assert_msg(th_wait_until(backend_waits_on_client, NULL, 20000), "PostgreSQL never waited on the paused stream");
    /* then read it all: complete, the last row last */
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (cap - len < 65536)
            buf = realloc(buf, cap *= 2);
        ssize_t n = read(fd, buf + len, cap - len - 1);
        ck_assert_msg(n > 0, "the stream ended after %zu bytes", len);
        len += n;
        if (len >= 7 && memcmp(buf + len - 7, "\r\n0\r\n\r\n", 7) == 0)
            break;
    }
    buf[len] = '\0';
    ck_assert_msg(strstr(buf, "{\"n\":2000000,\"t\":\"r,\\\"2000000\"}\n") != NULL, "no last row in %zu bytes", len);
    ck_assert_int_gt(len, 60000000);
    free(buf);
    close(fd);
}
END_TEST

START_TEST(a_failure_after_rows_cuts_the_body_short)
{
    start();
    for (size_t vi = 0; vi < 2; ++vi) {
        th_response_t r;
        /* before the first row: the normal error answer (22012 → 400) */
        expect(&r, versions[vi], 400, NULL, "/cut?at=0", NULL, NULL);
        ck_assert_msg(strstr(r.body, "\"sqlstate\":\"22012\"") != NULL, "%s", r.body);
        th_response_free(&r);
        /* after 49,999 rows: status 200 went out, so the body is cut short, never completed */
        request(&r, versions[vi], NULL, "/cut?at=50000&format=ndjson", NULL, NULL);
        ck_assert_int_eq(r.status, 200);
        ck_assert_msg(r.curl_error != 0, "HTTP/%s: the cut body looked complete", versions[vi] == TH_HTTP2 ? "2" : "1.1");
        ck_assert_msg(r.body_len > 0 && r.body_len < 49999 * 24, "%zu bytes", r.body_len);
        ck_assert_msg(strncmp(r.body, "{\"g\":1,\"t\":\"ok\"}\n", 17) == 0, "%.40s", r.body);
        th_response_free(&r);
        /* the server serves on */
        expect_body(versions[vi], "/pg/big?n=2&format=csv", NULL, "n,t\r\n1,\"r,\"\"1\"\r\n2,\"r,\"\"2\"\r\n");
    }
}
END_TEST

static int replica_answers(void *arg)
{
    th_response_t r;
    request(&r, TH_HTTP1, NULL, "/rep/replica", NULL, NULL);
    int yes = r.status == 200 && strcmp(r.body, "t") == 0;
    th_response_free(&r);
    return yes;
}

START_TEST(get_reads_from_a_replica_unless_read_primary)
{
    th_require_pg();
    const char *pg = th_pg_url(), *port = getenv("H2O_DB_TEST_PG_STANDBY_PORT");
    ck_assert_msg(port != NULL, "no standby: run the suite through scripts/test");
    const char *colon = strrchr(pg, ':'), *slash = strchr(colon, '/');
    const char *conf = qf("listen: {host: 127.0.0.1, port: @PORT@}\n"
                          "num-threads: 1\n"
                          "db.bind: {url: '@PG@', replicas: ['%.*s:%s%s'], replica: {max-lag: 3600}}\n"
                          "hosts:\n"
                          "  default:\n"
                          "    paths:\n"
                          "      /rep/replica:\n"
                          "        db.query:\n"
                          "          GET: {sql: SELECT pg_is_in_recovery(), result: value}\n"
                          "          POST: {sql: SELECT pg_is_in_recovery(), result: value}\n"
                          "      /rep/primary:\n"
                          "        db.query: {read: primary, GET: {sql: SELECT pg_is_in_recovery(), result: value}}\n"
                          "      /rep/method:\n"
                          "        db.query: {GET: {sql: SELECT pg_is_in_recovery(), result: value, read: primary}}\n",
                          (int)(colon - pg), pg, port, slash);
    ck_assert_msg(th_server_start(&server, conf) == 0, "the server did not start; log:\n%s", th_server_log(&server));
    server_up = 1;
    /* GET goes to the replica once the thread has measured its lag (until then, the primary; and
     * whenever test_replicas, which shares the standby, has it stopped) */
    ck_assert_msg(th_wait_until(replica_answers, NULL, 60000), "GET never reached the replica; log:\n%s", th_server_log(&server));
    for (size_t vi = 0; vi < 2; ++vi) {
        th_response_t r;
        expect_body(versions[vi], "/rep/primary", NULL, "f");
        expect_body(versions[vi], "/rep/method", NULL, "f");
        ck_assert_str_eq(expect(&r, versions[vi], 200, "POST", "/rep/replica", NULL, ""), "f");
        th_response_free(&r);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("query");
    struct {
        const char *name;
        const TTest *test;
    } tests[] = {
#define T(fn) {#fn, fn}
        T(sources_results_and_statuses),
        T(formats_json_ndjson_csv),
        T(pagination_links_and_bad_bounds),
        T(errors_map_by_sqlstate_and_never_show_parameters),
        T(a_list_of_statements_is_one_transaction),
        T(rows_stream_from_inside_a_transaction),
        T(injection_through_every_source_is_data),
        T(a_large_result_arrives_whole_and_in_order),
        T(a_million_rows_stream_complete_and_in_order),
        T(a_failure_after_rows_cuts_the_body_short),
        T(a_client_that_does_not_read_pauses_the_statement),
        T(get_reads_from_a_replica_unless_read_primary),
#undef T
    };
    const char *only = getenv("H2O_DB_TEST_ONLY");
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); ++i) {
        if (only != NULL && strstr(tests[i].name, only) == NULL)
            continue;
        TCase *tc = tcase_create(tests[i].name);
        tcase_set_timeout(tc, 120);
        tcase_add_checked_fixture(tc, NULL, teardown);
        tcase_add_test(tc, tests[i].test);
        suite_add_tcase(s, tc);
    }
    return th_run_suite(s);
}
