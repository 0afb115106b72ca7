/*
 * Security (docs/directives/db.bind.md, docs/failures.md): passwords never printed (logs, errors, status page,
 * `-t` output, HTTP answers), parameters always bound (hostile strings stored verbatim,
 * several statements refused), invalid UTF-8 refused by PostgreSQL with SQLSTATE 22021,
 * SQLite paths taken literally (no URI interpretation, no percent-decoding) so that a URL
 * cannot place a database outside the configured location.
 *
 * Runs against the PostgreSQL of scripts/test; the role with a password is created here
 * (the cluster trusts every local connection, so any password works: what matters is that
 * it is never shown).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>
#include "db_util.h"

static th_server_t server;

#define MAX_TRACKED 8
static pid_t *tracked; /* MAP_SHARED: written by the forked test, read by the parent's fixture */

static void track(pid_t pid)
{
    for (int i = 0; i < MAX_TRACKED; ++i)
        if (tracked[i] == 0) {
            tracked[i] = pid;
            return;
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

static void start_server_in(th_server_t *s, const char *dir, const char *conf)
{
    int ret = th_server_start_in(s, dir, conf);
    if (s->pid > 0)
        track(s->pid);
    ck_assert_msg(ret == 0, "the server did not start; log:\n%s", th_server_log(s));
}

static void stop_server(th_server_t *s)
{
    int st = th_server_stop(s, 15000);
    ck_assert_msg(st == 0, "exit status %d; log:\n%s", st, th_server_log(s));
}

static void setup(void)
{
    th_require_pg();
    memset(&server, 0, sizeof(server));
}

static void teardown(void)
{
    kill_tracked();
}

static void pg_exec(const char *sql)
{
    free(th_pg(sql));
}

static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return strdup("");
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, fp)) > 0) {
        len += n;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    fclose(fp);
    return buf;
}

/* Everything a client or an operator could see, collected for one grep. */
struct seen {
    char *text;
    size_t len;
};

static void seen_add(struct seen *s, const char *what, const char *text)
{
    size_t n = strlen(what) + strlen(text) + 8;
    s->text = realloc(s->text, s->len + n + 1);
    s->len += snprintf(s->text + s->len, n + 1, "\n== %s\n%s", what, text);
}

static void seen_add_response(struct seen *s, const char *what, const th_response_t *res)
{
    seen_add(s, what, res->headers != NULL ? res->headers : "");
    seen_add(s, what, res->body != NULL ? res->body : "");
}

/* ---- the role with a password ---- */

#define ROLE        "sec_role"
#define ROLE_SECRET "SecPw-Zq7Kx-0"

static void ensure_role(void)
{
    if (th_pg_countf("SELECT count(*) FROM pg_roles WHERE rolname = '" ROLE "'") == 0)
        pg_exec("CREATE ROLE " ROLE " LOGIN PASSWORD '" ROLE_SECRET "'");
    pg_exec("GRANT ALL ON SCHEMA public TO " ROLE);
}

/* The test server's host, port and database (from postgresql://USER@HOST:PORT/DB). */
struct pg_parts {
    char host[128], db[128];
    int port;
};

static void pg_parts(struct pg_parts *p)
{
    ck_assert_msg(sscanf(th_pg_url(), "postgresql://%*[^@]@%127[^:]:%d/%127s", p->host, &p->port, p->db) == 3, "cannot parse %s",
                  th_pg_url());
}

static int have_mysql_backend(void)
{
    char *out = NULL;
    th_run_h2o_db("--version", "", &out);
    int yes = strstr(out, "mysql") != NULL;
    free(out);
    return yes;
}

/* ==== passwords ==== */

/* distinct secrets, so that a hit says which place leaked */
#define S_URL      "Pw1-UrlUserinfo-kQ"
#define S_PARAM    "Pw2-UrlParam-kQ"
#define S_FILE     "Pw3-PasswordFile-kQ"
#define S_DOWN     "Pw4-DownServer-kQ"
#define S_MYSQL    "Pw5-MySql-kQ"
#define S_CAS      "Pw6-ConnectAtStart-kQ"
#define S_SQLPARAM "Pw7-StatementParameter-kQ"

static const char *const SECRETS[] = {S_URL, S_PARAM, S_FILE, S_DOWN, S_MYSQL, S_CAS, ROLE_SECRET};

static void assert_no_secret(const char *text, const char *where)
{
    for (size_t i = 0; i < sizeof(SECRETS) / sizeof(SECRETS[0]); ++i) {
        const char *hit = strstr(text, SECRETS[i]);
        if (hit != NULL) {
            const char *from = hit - (hit - text > 200 ? 200 : hit - text);
            ck_abort_msg("%s shows the password %s: ...%.300s...", where, SECRETS[i], from);
        }
    }
}

static char *password_conf(int with_mysql)
{
    struct pg_parts p;
    pg_parts(&p);
    return th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                  "num-threads: 2\n"
                  "db.bind:\n"
                  "  - url: \"postgresql://" ROLE ":" S_URL "@%s:%d/%s?application_name=sec_pw\"\n"
                  "  - url: \"postgresql://%s:%d/%s?user=" ROLE "&password=" S_PARAM "&application_name=sec_pw\"\n"
                  "    key: param\n"
                  "  - url: \"postgresql://" ROLE "@%s:%d/%s?application_name=sec_pw\"\n"
                  "    key: file\n"
                  "    password-file: pw.txt\n"
                  "  - url: \"postgresql://" ROLE ":" S_DOWN "@127.0.0.1:1/%s\"\n"
                  "    key: down\n"
                  "    pool: {acquire-timeout: 1}\n"
                  "%s"
                  "hosts:\n"
                  "  default:\n"
                  "    paths:\n"
                  "      /s:\n"
                  "        c.handler: " DB_HANDLERS ":db_script\n"
                  "      /status:\n"
                  "        db.status: ON\n",
                  p.host, p.port, p.db, p.host, p.port, p.db, p.host, p.port, p.db, p.db,
                  with_mysql ? "  - url: \"mysql://u:" S_MYSQL "@127.0.0.1:1/db\"\n"
                               "    key: my\n"
                               "    pool: {acquire-timeout: 1}\n"
                             : "");
}

/* Runs h2o-db ARGS -c DIR/h2o-db.conf (the expanded template) in DIR; returns the exit status. */
static int run_in(const char *dir, const char *args, const char *conf_template, char **out)
{
    char *conf = th_write_file(dir, "h2o-db.conf", conf_template, th_free_port());
    char *cmd = th_fmt("cd '%s' && '%s/h2o-db' %s -c '%s' > out.txt 2>&1", dir, th_build_dir(), args, conf);
    int st = system(cmd);
    char *path = th_fmt("%s/out.txt", dir);
    *out = read_text(path);
    free(path);
    free(cmd);
    free(conf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

struct retry {
    struct seen *seen;
    long failures;
};

/* A statement on the down bind, answers recorded; true once its pool tried to connect again. */
static int down_tried_again(void *arg)
{
    struct retry *r = arg;
    th_response_t res;
    db_request(&server, &res, TH_HTTP1, NULL, "/s", "KEY down\nSQL SELECT 1");
    seen_add_response(r->seen, "a retry", &res);
    th_response_free(&res);
    return db_status_count(&server, "/status", "down", "connect_failures") > r->failures;
}

START_TEST(passwords_never_appear_in_logs_errors_status_or_check_output)
{
    ensure_role();
    int mysql = have_mysql_backend();
    char *conf = password_conf(mysql), *dir = th_tmpdir(), *out = NULL;
    free(th_write_file(dir, "pw.txt", S_FILE "\n", 0));
    struct seen seen = {0};

    /* -t and -t --connect (the down bind fails the connect check, with its error printed) */
    int st = run_in(dir, "-t", conf, &out);
    ck_assert_msg(st == 0, "-t: exit %d\n%s", st, out);
    ck_assert_msg(strstr(out, ROLE ":***@") != NULL && strstr(out, "password=***") != NULL, "-t shows no masked URL:\n%s", out);
    seen_add(&seen, "-t", out);
    free(out);
    st = run_in(dir, "-t --connect", conf, &out);
    ck_assert_msg(st == 1, "-t --connect with a bind whose database is down: exit %d\n%s", st, out);
    ck_assert_msg(strstr(out, "connected") != NULL && strstr(out, "`down`") != NULL, "-t --connect:\n%s", out);
    seen_add(&seen, "-t --connect", out);
    free(out);

    /* the server: every bind used, the down ones answer 503, a failing statement 500 */
    start_server_in(&server, dir, conf);
    th_response_t res;
    const char *keys[] = {"sa_main", "param", "file"};
    for (size_t i = 0; i < 3; ++i) {
        char *script = th_fmt("KEY %s\nSQL SELECT current_user AS u", keys[i]);
        db_script(&server, &res, TH_HTTP1, "/s", script);
        db_assert_result(res.body, 0, "OK", "[{\"u\":\"" ROLE "\"}]");
        seen_add_response(&seen, script, &res);
        th_response_free(&res);
        free(script);
    }
    const char *down_scripts[] = {"SENDERROR\nKEY down\nSQL SELECT 1", "SENDERROR\nKEY my\nSQL SELECT 1"};
    for (int i = 0; i < (mysql ? 2 : 1); ++i) {
        for (int v = TH_HTTP1; v <= TH_HTTP2; ++v) {
            db_request(&server, &res, v, NULL, "/s", down_scripts[i]);
            ck_assert_msg(res.status == 503, "%s: %ld %s", down_scripts[i], res.status, res.body);
            seen_add_response(&seen, down_scripts[i], &res);
            th_response_free(&res);
            /* the handler's own JSON report of the error (db_script without SENDERROR) */
            db_script(&server, &res, v, "/s", down_scripts[i] + strlen("SENDERROR\n"));
            seen_add_response(&seen, "error message", &res);
            th_response_free(&res);
        }
    }
    db_request(&server, &res, TH_HTTP1, NULL, "/s", "SENDERROR\nSQL SELECT $1::int\nP " S_SQLPARAM);
    ck_assert_msg(res.status == 500, "a failing statement: %ld %s", res.status, res.body);
    ck_assert_msg(strstr(res.body, "22P02") != NULL, "the 500 does not give the SQLSTATE: %s", res.body);
    ck_assert_msg(strstr(res.body, S_SQLPARAM) == NULL && strstr(res.body, "SELECT") == NULL,
                  "h2o_db_send_error's body carries the statement or its parameter: %s", res.body);
    seen_add_response(&seen, "500", &res);
    th_response_free(&res);
    db_request(&server, &res, TH_HTTP1, NULL, "/status", NULL);
    ck_assert_int_eq(res.status, 200);
    ck_assert_msg(strstr(res.body, ROLE ":***@") != NULL, "the status page shows no masked URL:\n%s", res.body);
    seen_add_response(&seen, "status", &res);
    th_response_free(&res);
    db_request(&server, &res, TH_HTTP2, NULL, "/status?format=prometheus", NULL);
    ck_assert_int_eq(res.status, 200);
    seen_add_response(&seen, "prometheus", &res);
    th_response_free(&res);
    /* the down bind keeps failing: the pool tries again (once its back-off allows, when a
     * statement comes), and what that says is searched too */
    struct retry retry = {&seen, db_status_count(&server, "/status", "down", "connect_failures")};
    ck_assert_msg(th_wait_until(down_tried_again, &retry, 10000), "the down bind was never tried again");
    stop_server(&server);
    char *log = th_server_log(&server);
    ck_assert_msg(strstr(log, "127.0.0.1:1") != NULL, "the log never mentions the down bind (nothing to check?):\n%s", log);
    seen_add(&seen, "server log", log);
    free(log);

    /* connect-at-start: ON on the down database: the refusal names the bind, not the password */
    struct pg_parts p;
    pg_parts(&p);
    char *cas = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                       "db.bind:\n"
                       "  url: \"postgresql://" ROLE ":" S_CAS "@127.0.0.1:1/%s\"\n"
                       "  key: needs_db\n"
                       "  pool: {connect-at-start: ON}\n"
                       "hosts: {default: {paths: {/: {db.status: ON}}}}\n",
                       p.db);
    char *cas_dir = th_tmpdir();
    st = db_run_until_exit(cas_dir, cas, 15000, &out);
    ck_assert_msg(st == 1 && strstr(out, "needs_db") != NULL, "connect-at-start: exit %d:\n%s", st, out);
    seen_add(&seen, "connect-at-start", out);
    free(out);

    /* the check itself can fail: the secrets were really in the configs */
    ck_assert_msg(strstr(conf, S_URL) != NULL && strstr(cas, S_CAS) != NULL, "no secret to look for");
    fprintf(stderr, "security: %zu bytes of output, answers, status pages and logs searched for %zu passwords\n", seen.len,
            sizeof(SECRETS) / sizeof(SECRETS[0]));
    assert_no_secret(seen.text, "what h2o-db printed or answered");
    free(seen.text);
    free(cas);
    free(cas_dir);
    free(conf);
    free(dir);
}
END_TEST

/* URL forms whose password libpq finds but a naive masking might not. Each is checked with
 * `h2o-db -t` (the form shown in messages, the status page and logs). */
START_TEST(every_form_of_password_is_masked)
{
    static const struct {
        const char *url, *secret, *why;
    } cases[] = {
        {"postgresql://u:MaskA-plain@127.0.0.1:1/db", "MaskA-plain", "user:password@"},
        {"postgres://u:MaskB-at@sign@127.0.0.1:1/db", "MaskB-at", "an @ inside the password (the last @ ends it)"},
        {"postgresql+asyncpg://u:MaskC-driver@127.0.0.1:1/db", "MaskC-driver", "+driver"},
        {"postgresql://127.0.0.1:1/db?sslmode=disable&password=MaskD-param&user=u", "MaskD-param", "password= parameter"},
        {"postgresql://u:MaskE-both@127.0.0.1:1/db?password=MaskF-both", "MaskF-both", "both forms"},
        {"postgresql://u:MaskG-multi@h1:1,h2:2/db", "MaskG-multi", "several hosts"},
        {"postgresql://u:MaskH%2Dpercent@127.0.0.1:1/db", "MaskH%2Dpercent", "a percent-encoded password"},
        /* libpq takes everything up to the @ (before any /) as user:password, ? and # included */
        {"postgresql://u:MaskI?query@127.0.0.1:1/db", "MaskI", "a ? in the password (libpq: the password is `MaskI?query`)"},
        {"postgresql://u:MaskJ#hash@127.0.0.1:1/db", "MaskJ", "a # in the password (libpq: the password is `MaskJ#hash`)"},
        /* libpq percent-decodes parameter names too */
        {"postgresql://127.0.0.1:1/db?pass%77ord=MaskK-encoded-name", "MaskK-encoded-name",
         "pass%77ord= (libpq decodes the name to `password`)"},
        {"postgresql://u@127.0.0.1:1/db?sslpassword=MaskL-sslkey", "MaskL-sslkey", "sslpassword= (the client key's passphrase)"},
        {"mysql://u:MaskM-mysql@127.0.0.1:1/db", "MaskM-mysql", "MySQL user:password@"},
    };
    int mysql = have_mysql_backend(), failures = 0;
    char report[8192];
    size_t len = 0;
    report[0] = '\0';
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
        if (strncmp(cases[i].url, "mysql", 5) == 0 && !mysql)
            continue;
        char *conf = th_fmt("listen: 1\ndb.bind:\n  url: \"%s\"\nhosts: {default: {paths: {/: {db.status: ON}}}}\n", cases[i].url),
             *out;
        int st = th_run_h2o_db("-t", conf, &out);
        ck_assert_msg(st == 0, "%s: -t exit %d:\n%s", cases[i].url, st, out);
        ck_assert_msg(strstr(out, "h2o-db: bind `sa_main`") != NULL, "%s: no bind line:\n%s", cases[i].url, out);
        if (strstr(out, cases[i].secret) != NULL) {
            ++failures;
            len += snprintf(report + len, sizeof(report) - len, "  %s (%s) is shown as: %.*s\n", cases[i].url, cases[i].why,
                            (int)strcspn(strstr(out, "bind `"), "\n"), strstr(out, "bind `"));
        }
        free(out);
        free(conf);
    }
    ck_assert_msg(failures == 0, "%d URL form(s) show their password:\n%s", failures, report);
}
END_TEST

/* ==== parameters ==== */

static const char *HOSTILE_CONF = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                  "num-threads: 1\n"
                                  "db.bind:\n"
                                  "  - url: \"@PG@?application_name=sec_params\"\n"
                                  "  - url: sqlite:///hostile.sqlite3\n"
                                  "    key: lite\n"
                                  "hosts:\n"
                                  "  default:\n"
                                  "    paths:\n"
                                  "      /s:\n"
                                  "        c.handler: " DB_HANDLERS ":db_script\n";

/* {"v":"..."} JSON escaping of a string, for comparing with the answer */
static char *json_escape(const char *s)
{
    size_t cap = strlen(s) * 6 + 3, n = 0;
    char *out = malloc(cap);
    out[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; ++p) {
        if (*p == '"' || *p == '\\')
            n += sprintf(out + n, "\\%c", *p);
        else if (*p == '\t')
            n += sprintf(out + n, "\\t");
        else if (*p == '\n')
            n += sprintf(out + n, "\\n");
        else if (*p < 0x20)
            n += sprintf(out + n, "\\u%04x", *p);
        else
            out[n++] = *p;
    }
    out[n++] = '"';
    out[n] = '\0';
    return out;
}

START_TEST(hostile_parameters_are_stored_verbatim_and_nothing_else_runs)
{
    char *t = th_uniq("sec_x"), *canary = th_uniq("sec_canary");
    char *sql = th_fmt("CREATE TABLE %s (id serial PRIMARY KEY, v text)", t);
    pg_exec(sql);
    free(sql);
    sql = th_fmt("CREATE TABLE %s (n int); INSERT INTO %s VALUES (1)", canary, canary);
    pg_exec(sql);
    free(sql);
    char *longone = malloc(20001);
    for (int i = 0; i < 20000; ++i)
        longone[i] = "';-- \\\"$"[i % 8];
    longone[20000] = '\0';
    const char *hostile[] = {
        "'; DROP TABLE @T@; --",
        "Robert'); DROP TABLE @C@;--",
        "' OR '1'='1",
        "1; DELETE FROM @C@",
        "$1",
        "$$; DROP TABLE @C@; $$",
        "\\'; DROP TABLE @C@; --",
        "E'\\x27'",
        "%s%n%x%p",
        "\"quoted\" and 'single'",
        "*/ DROP TABLE @C@; /*",
        "Zoë 🐘 ∑ 中文",
        "\t tab and trailing spaces   ",
        longone,
    };
    size_t n = sizeof(hostile) / sizeof(hostile[0]);
    char **values = calloc(n, sizeof(char *));
    for (size_t i = 0; i < n; ++i) {
        /* put the real table names in, so that a spliced string would really destroy them */
        char *v = strdup(hostile[i]), *at;
        while ((at = strstr(v, "@T@")) != NULL || (at = strstr(v, "@C@")) != NULL) {
            char *nv = th_fmt("%.*s%s%s", (int)(at - v), v, at[1] == 'T' ? t : canary, at + 3);
            free(v);
            v = nv;
        }
        values[i] = v;
    }
    start_server(&server, HOSTILE_CONF);
    for (int backend = 0; backend < 2; ++backend) {
        const char *key = backend == 0 ? "sa_main" : "lite";
        th_response_t res;
        if (backend == 1) {
            char *script = th_fmt("KEY lite\nSQL CREATE TABLE %s (id INTEGER PRIMARY KEY, v TEXT)\nSQL CREATE TABLE %s (n int)\n"
                                  "SQL INSERT INTO %s VALUES (1)",
                                  t, canary, canary);
            db_script(&server, &res, TH_HTTP1, "/s", script);
            for (int i = 0; i < 3; ++i)
                db_assert_result(res.body, i, "OK", NULL);
            th_response_free(&res);
            free(script);
        }
        for (size_t i = 0; i < n; ++i) {
            char *script = th_fmt(
                "KEY %s\nSQL INSERT INTO %s (v) VALUES ($1) RETURNING v\nP %s\nSQL SELECT count(*) AS n FROM %s WHERE v = $1\n"
                "P %s",
                key, t, values[i], t, values[i]);
            db_script(&server, &res, i % 2 ? TH_HTTP2 : TH_HTTP1, "/s", script);
            char *esc = json_escape(values[i]), *rows = th_fmt("[{\"v\":%s}]", esc);
            db_assert_result(res.body, 0, "OK", rows);
            db_assert_result(res.body, 1, "OK", "[{\"n\":1}]");
            th_response_free(&res);
            free(rows);
            free(esc);
            free(script);
        }
        /* several statements in one call are refused before anything runs */
        const char *several[] = {"SELECT 1; DROP TABLE @T@", "SELECT 1;DELETE FROM @C@", "SELECT ';'; DROP TABLE @C@",
                                 "SELECT 1; /* x */ DROP TABLE @C@", "SELECT $$;$$; DROP TABLE @C@"};
        for (size_t i = 0; i < sizeof(several) / sizeof(several[0]); ++i) {
            char *s = strdup(several[i]), *at;
            while ((at = strstr(s, "@T@")) != NULL || (at = strstr(s, "@C@")) != NULL) {
                char *ns = th_fmt("%.*s%s%s", (int)(at - s), s, at[1] == 'T' ? t : canary, at + 3);
                free(s);
                s = ns;
            }
            char *script = th_fmt("KEY %s\nSQL %s", key, s);
            db_script(&server, &res, TH_HTTP1, "/s", script);
            char *st = db_status_of(res.body, 0);
            ck_assert_msg(strcmp(st, "REFUSED") == 0, "%s: several statements were not refused: %s", s, res.body);
            free(st);
            th_response_free(&res);
            free(script);
            free(s);
        }
        /* a semicolon inside a string or a trailing one is one statement */
        char *script = th_fmt("KEY %s\nSQL SELECT ';' AS a;\nSQL SELECT 'x; DROP TABLE %s' AS b", key, t);
        db_script(&server, &res, TH_HTTP1, "/s", script);
        db_assert_result(res.body, 0, "OK", "[{\"a\":\";\"}]");
        th_response_free(&res);
        free(script);
        /* everything is where it was */
        script = th_fmt("KEY %s\nSQL SELECT count(*) AS n FROM %s\nSQL SELECT count(*) AS n FROM %s", key, t, canary);
        db_script(&server, &res, TH_HTTP1, "/s", script);
        char *want = th_fmt("[{\"n\":%zu}]", n);
        db_assert_result(res.body, 0, "OK", want);
        db_assert_result(res.body, 1, "OK", "[{\"n\":1}]");
        th_response_free(&res);
        free(want);
        free(script);
    }
    /* verbatim, byte for byte, read back outside h2o-db */
    PGconn *c = th_pg_connect(th_pg_url());
    sql = th_fmt("SELECT v FROM %s ORDER BY id", t);
    PGresult *r = PQexec(c, sql);
    ck_assert_int_eq(PQntuples(r), (int)n);
    for (size_t i = 0; i < n; ++i)
        ck_assert_msg(strcmp(PQgetvalue(r, (int)i, 0), values[i]) == 0, "PostgreSQL row %zu: stored %.80s, sent %.80s", i,
                      PQgetvalue(r, (int)i, 0), values[i]);
    PQclear(r);
    PQfinish(c);
    free(sql);
    char *path = th_fmt("%s/hostile.sqlite3", server.dir);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sql = th_fmt("SELECT v FROM %s ORDER BY id", t);
    sqlite3_stmt *stmt;
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
    for (size_t i = 0; i < n; ++i) {
        ck_assert_int_eq(sqlite3_step(stmt), SQLITE_ROW);
        ck_assert_msg(strcmp((const char *)sqlite3_column_text(stmt, 0), values[i]) == 0, "SQLite row %zu differs", i);
    }
    ck_assert_int_eq(sqlite3_step(stmt), SQLITE_DONE);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    free(sql);
    free(path);
    ck_assert_int_eq(th_pg_countf("SELECT count(*) FROM %s", canary), 1);
    stop_server(&server);
    for (size_t i = 0; i < n; ++i)
        free(values[i]);
    free(values);
    free(longone);
    free(t);
    free(canary);
}
END_TEST

START_TEST(invalid_utf8_is_refused_with_22021_and_nothing_runs)
{
    char *t = th_uniq("sec_utf8");
    char *sql = th_fmt("CREATE TABLE %s (v text)", t);
    pg_exec(sql);
    free(sql);
    start_server(&server, HOSTILE_CONF);
    const char *bad[] = {"a\xff\xfe"
                         "b",
                         "\xc0\xaf", "\xed\xa0\x80", "\xe2\x82", "ok then \x80"};
    th_response_t res;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        /* autocommit */
        char *script =
            th_fmt("CONTINUE\nSQL INSERT INTO %s VALUES ($1)\nP %s\nSQL SELECT count(*)::int AS n FROM %s", t, bad[i], t);
        db_script(&server, &res, i % 2 ? TH_HTTP2 : TH_HTTP1, "/s", script);
        db_assert_error(res.body, 0, "SQL_ERROR", "22021");
        db_assert_result(res.body, 1, "OK", "[{\"n\":0}]");
        th_response_free(&res);
        free(script);
        /* in a transaction: the transaction fails, COMMIT is refused, the good row goes too */
        script =
            th_fmt("CONTINUE\nBEGIN\nSQL INSERT INTO %s VALUES ('good')\nSQL INSERT INTO %s VALUES ($1)\nP %s\nCOMMIT\nROLLBACK", t,
                   t, bad[i]);
        db_script(&server, &res, TH_HTTP1, "/s", script);
        db_assert_result(res.body, 1, "OK", NULL);
        db_assert_error(res.body, 2, "SQL_ERROR", "22021");
        char *st = db_status_of(res.body, 3);
        ck_assert_msg(strcmp(st, "OK") != 0, "COMMIT of a failed transaction answered OK: %s", res.body);
        free(st);
        th_response_free(&res);
        free(script);
        /* the statement text itself */
        script = th_fmt("SQL SELECT '%s' AS v", bad[i]);
        db_script(&server, &res, TH_HTTP1, "/s", script);
        db_assert_error(res.body, 0, "SQL_ERROR", "22021");
        ck_assert_msg(db_json_valid(res.body), "the answer is not valid JSON: %s", res.body);
        th_response_free(&res);
        free(script);
    }
    ck_assert_int_eq(th_pg_countf("SELECT count(*) FROM %s", t), 0);

    /* SQLite does not check: the bytes are stored as they came, and the JSON answer stays valid
     * (invalid sequences become U+FFFD) */
    db_script(&server, &res, TH_HTTP1, "/s",
              "KEY lite\nSQL CREATE TABLE u8 (v TEXT)\nSQL INSERT INTO u8 VALUES ($1)\nP a\xff\xfe"
              "b\n"
              "SQL SELECT v FROM u8");
    db_assert_result(res.body, 1, "OK", NULL);
    db_assert_result(res.body, 2, "OK",
                     "[{\"v\":\"a\xef\xbf\xbd\xef\xbf\xbd"
                     "b\"}]");
    th_response_free(&res);
    stop_server(&server);
    char *path = th_fmt("%s/hostile.sqlite3", server.dir);
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *stmt;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT v FROM u8", -1, &stmt, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(stmt), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_bytes(stmt, 0), 4);
    ck_assert(memcmp(sqlite3_column_blob(stmt, 0),
                     "a\xff\xfe"
                     "b",
                     4) == 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    free(path);
    free(t);
}
END_TEST

/* ==== SQLite paths ==== */

/* Names of the regular files under DIR (recursively), one a line; malloc'd. */
static void list_files_into(const char *dir, const char *prefix, char **out, size_t *len)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *path = th_fmt("%s/%s", dir, e->d_name), *rel = th_fmt("%s%s", prefix, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            char *sub = th_fmt("%s/", rel);
            list_files_into(path, sub, out, len);
            free(sub);
        } else {
            *out = realloc(*out, *len + strlen(rel) + 2);
            *len += sprintf(*out + *len, "%s\n", rel);
        }
        free(path);
        free(rel);
    }
    closedir(d);
}

static char *list_files(const char *dir)
{
    char *out = strdup("");
    size_t len = 0;
    list_files_into(dir, "", &out, &len);
    return out;
}

static int has_line(const char *list, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = list; *p; p += strcspn(p, "\n") + 1)
        if (strncmp(p, line, n) == 0 && p[n] == '\n')
            return 1;
    return 0;
}

/* Starts h2o-db in CWD with `-c CONF` (a path relative to CWD); returns its pid. */
static pid_t spawn_in(const char *cwd, const char *conf, const char *log)
{
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid != -1);
    if (pid == 0) {
        if (chdir(cwd) != 0)
            _exit(126);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        char bin[4096];
        snprintf(bin, sizeof(bin), "%s/h2o-db", th_build_dir());
        execl(bin, bin, "-c", conf, (char *)NULL);
        _exit(127);
    }
    track(pid);
    return pid;
}

static int port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    close(fd);
    return ok;
}

static int port_listening(void *port)
{
    return port_open(*(int *)port);
}

START_TEST(sqlite_urls_cannot_place_files_outside_the_config_folder)
{
    /* ROOT/conf/h2o-db.conf; nothing may appear in ROOT but conf/ */
    char *root = th_tmpdir(), *confdir = th_fmt("%s/conf", root);
    ck_assert(mkdir(confdir, 0755) == 0);
    char *conf = th_fmt("listen: {host: 127.0.0.1, port: @PORT@}\n"
                        "num-threads: 1\n"
                        "db.bind:\n"
                        "  - {url: \"sqlite:///file:..%%2Fesc1.db\", key: k1, middleware: OFF}\n"
                        "  - {url: \"sqlite:///%%2e%%2e/esc2.db\", key: k2, middleware: OFF}\n"
                        "  - {url: \"sqlite:///file:esc3.db?mode=rwc\", key: k3, middleware: OFF}\n"
                        "  - {url: \"sqlite:///esc4.db%%00.txt\", key: k4, middleware: OFF}\n"
                        "  - {url: \"sqlite:///file:%s/esc5.db\", key: k5, middleware: OFF}\n"
                        "  - {url: \"sqlite:///..%%2fesc6.db\", key: k6, middleware: OFF}\n"
                        "hosts:\n"
                        "  default:\n"
                        "    paths:\n"
                        "      /s:\n"
                        "        db.use: [k1, k2, k3, k4, k5, k6]\n"
                        "        c.handler: " DB_HANDLERS ":db_script\n",
                        root);
    start_server_in(&server, confdir, conf);
    const char *keys[] = {"k1", "k2", "k3", "k4", "k5", "k6"};
    int ok[6];
    for (int i = 0; i < 6; ++i) {
        th_response_t res;
        char *path = th_fmt("/s?key=%s", keys[i]);
        db_request(&server, &res, TH_HTTP1, NULL, path, "SQL CREATE TABLE t (a int)");
        ck_assert_msg(res.status == 200, "%s: %ld %s", path, res.status, res.body);
        ok[i] = strstr(res.body, "\"status\":\"OK\"") != NULL;
        fprintf(stderr, "security: %s: %s", keys[i], res.body);
        th_response_free(&res);
        free(path);
    }
    stop_server(&server);
    char *files = list_files(root);
    fprintf(stderr, "security: SQLite URL tricks: files under the test folder:\n%s", files);
    /* taken literally, relative to the config's folder */
    ck_assert_msg(ok[0] && has_line(files, "conf/file:..%2Fesc1.db"), "sqlite:///file:..%%2Fesc1.db: %s\n%s",
                  ok[0] ? "ok" : "failed", files);
    ck_assert_msg(!ok[1], "sqlite:///%%2e%%2e/esc2.db worked: is %%2e%%2e decoded?\n%s", files);
    ck_assert_msg(ok[2] && has_line(files, "conf/file:esc3.db"), "sqlite:///file:esc3.db?mode=rwc\n%s", files);
    ck_assert_msg(ok[3] && has_line(files, "conf/esc4.db%00.txt"), "sqlite:///esc4.db%%00.txt\n%s", files);
    ck_assert_msg(!ok[4], "sqlite:///file:ROOT/esc5.db worked: was it read as a URI?\n%s", files);
    ck_assert_msg(ok[5] && has_line(files, "conf/..%2fesc6.db"), "sqlite:///..%%2fesc6.db is not the file `..%%2fesc6.db`\n%s",
                  files);
    /* and nothing else anywhere under ROOT */
    for (const char *p = files; *p; p += strcspn(p, "\n") + 1)
        ck_assert_msg(strncmp(p, "conf/", 5) == 0, "a file outside the config folder: %.*s", (int)strcspn(p, "\n"), p);
    char *esc5 = th_fmt("%s/esc5.db", root);
    ck_assert_msg(access(esc5, F_OK) != 0, "%s was created", esc5);
    free(esc5);
    free(files);

    /* URI parameters are refused at config time, not passed to SQLite */
    const char *refused[] = {"sqlite:///file:../esc7.db?vfs=unix-none", "sqlite:///esc8.db?immutable=1",
                             "sqlite:///esc9.db?mode=memory", "sqlite:///esc10.db?cache=shared&mode=rwc"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); ++i) {
        char *c = th_fmt("listen: 1\ndb.bind: {url: \"%s\"}\nhosts: {default: {paths: {/: {db.status: ON}}}}\n", refused[i]), *out;
        int st = th_run_h2o_db("-t", c, &out);
        ck_assert_msg(st == 1 && strstr(out, "h2o-db.conf:2:") != NULL, "%s: exit %d\n%s", refused[i], st, out);
        free(out);
        free(c);
    }

    /* a config folder whose relative name starts with "file:" (h2o-db -c file:cfg/h2o-db.conf):
     * the database belongs in that folder, never in ./cfg (Debian's SQLite is built with
     * SQLITE_USE_URI=1, so a file name starting with "file:" is a URI unless told otherwise) */
    char *uri_root = th_tmpdir(), *uri_cfg = th_fmt("%s/file:cfg", uri_root), *decoy = th_fmt("%s/cfg", uri_root);
    ck_assert(mkdir(uri_cfg, 0755) == 0);
    ck_assert(mkdir(decoy, 0755) == 0);
    int port = th_free_port();
    char *uconf = th_fmt("listen: {host: 127.0.0.1, port: %d}\n"
                         "num-threads: 1\n"
                         "db.bind:\n"
                         "  - {url: \"sqlite:///x.db\"}\n"
                         "  - {url: \"sqlite:///%%2e%%2e/y.db\", key: up, middleware: OFF}\n"
                         "hosts:\n"
                         "  default:\n"
                         "    paths:\n"
                         "      /s:\n"
                         "        db.use: up\n"
                         "        c.handler: %s/t/db_handlers.so:db_script\n",
                         port, th_build_dir());
    char *cpath = th_fmt("%s/h2o-db.conf", uri_cfg), *logpath = th_fmt("%s/server.log", uri_root);
    FILE *fp = fopen(cpath, "w");
    fputs(uconf, fp);
    fclose(fp);
    pid_t pid = spawn_in(uri_root, "file:cfg/h2o-db.conf", logpath);
    ck_assert_msg(th_wait_until(port_listening, &port, 10000), "the server in %s never listened", uri_root);
    th_server_t fake = {.pid = pid, .port = port};
    th_response_t res;
    db_request(&fake, &res, TH_HTTP1, NULL, "/s", "SQL CREATE TABLE t (a int)");
    th_response_free(&res);
    db_request(&fake, &res, TH_HTTP1, NULL, "/s?key=up", "SQL CREATE TABLE t (a int)");
    th_response_free(&res);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    files = list_files(uri_root);
    fprintf(stderr, "security: -c file:cfg/h2o-db.conf, sqlite:///x.db and sqlite:///%%2e%%2e/y.db: files:\n%s", files);
    ck_assert_msg(!has_line(files, "cfg/x.db"),
                  "sqlite:///x.db in the config folder `file:cfg` went to ./cfg/x.db (the file name "
                  "was read as a URI)\n%s",
                  files);
    ck_assert_msg(!has_line(files, "y.db"),
                  "sqlite:///%%2e%%2e/y.db went up a folder (the file name was read as a URI and "
                  "percent-decoded)\n%s",
                  files);
    ck_assert_msg(has_line(files, "file:cfg/x.db"), "the database is not in the config folder\n%s", files);
    free(files);
    free(cpath);
    free(logpath);
    free(uconf);
    free(uri_root);
    free(uri_cfg);
    free(decoy);
    free(conf);
    free(confdir);
    free(root);
}
END_TEST

static void add(Suite *s, const char *name, const TTest *test, int timeout)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_unchecked_fixture(tc, NULL, kill_tracked);
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
    Suite *s = suite_create("security");
    ADD(s, passwords_never_appear_in_logs_errors_status_or_check_output, 60);
    ADD(s, every_form_of_password_is_masked, 60);
    ADD(s, hostile_parameters_are_stored_verbatim_and_nothing_else_runs, 60);
    ADD(s, invalid_utf8_is_refused_with_22021_and_nothing_runs, 60);
    ADD(s, sqlite_urls_cannot_place_files_outside_the_config_folder, 60);
    return th_run_suite(s);
}
