/*
 * Read replicas (replicas: on a PostgreSQL db.bind, docs/replicas.md) against the real h2o-db
 * binary, the suite's PostgreSQL (the primary) and the streaming standby of it that scripts/test
 * starts (H2O_DB_TEST_PG_STANDBY_PORT; this suite stops, starts and pauses it: no other suite uses
 * it). Where a statement ran is asked of the database that answered: pg_is_in_recovery() is true
 * on the standby only; a reload moves reads to the new config's replica pools. Every wait is on a
 * fact (an answer, the status page, pg_stat_activity), bounded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include "harness.h"

static th_server_t server;

static const char *const handlers =
    "hosts:\n"
    "  default:\n"
    "    paths:\n"
    "      /ro:\n"
    "        mruby.handler: |\n"
    "          proc {|env|\n"
    "            db = H2O::DB.session(env).read_only\n"
    "            r = db.query(\"SELECT pg_is_in_recovery() AS r\")[0][\"r\"]\n"
    "            [200, {}, [r ? \"standby\" : \"primary\"]] }\n"
    "      /rw:\n"
    "        mruby.handler: |\n"
    "          proc {|env|\n"
    "            r = H2O::DB.session(env).query(\"SELECT pg_is_in_recovery() AS r\")[0][\"r\"]\n"
    "            [200, {}, [r ? \"standby\" : \"primary\"]] }\n"
    "      /write:\n"
    "        mruby.handler: |\n"
    "          proc {|env|\n"
    "            db = H2O::DB.session(env).read_only\n"
    "            begin\n"
    "              db.execute(\"INSERT INTO rt_writes VALUES ($1)\", [env[\"QUERY_STRING\"]])\n"
    "              [200, {}, [\"written\"]]\n"
    "            rescue H2O::DB::Error => e\n"
    "              [500, {}, [e.sqlstate.to_s]]\n"
    "            end }\n"
    "      /txn:\n"
    "        mruby.handler: |\n"
    "          proc {|env|\n"
    "            db = H2O::DB.session(env).read_only\n"
    "            row = nil\n"
    "            db.transaction { row = db.query(\"SELECT current_setting('transaction_read_only') AS ro, \"\\\n"
    "                                            \"pg_is_in_recovery() AS r\")[0] }\n"
    "            [200, {}, [\"#{row['ro']} #{row['r'] ? 'standby' : 'primary'}\"]] }\n"
    "      /late:\n"
    "        mruby.handler: |\n"
    "          proc {|env|\n"
    "            db = H2O::DB.session(env)\n"
    "            db.query(\"SELECT 1\")\n"
    "            begin\n"
    "              db.read_only\n"
    "              [200, {}, [\"accepted\"]]\n"
    "            rescue H2O::DB::Error => e\n"
    "              [200, {}, [\"refused\"]]\n"
    "            end }\n"
    "      /status:\n"
    "        db.status: ON\n";

static char *standby_url(void)
{
    const char *pg = th_pg_url(), *port = getenv("H2O_DB_TEST_PG_STANDBY_PORT");
    ck_assert_msg(pg != NULL && port != NULL, "no standby: run the suite through scripts/test");
    /* postgresql://postgres@127.0.0.1:PORT/DB -> the same with the standby's port */
    const char *colon = strrchr(pg, ':'), *slash = strchr(colon, '/');
    return th_fmt("%.*s:%s%s", (int)(colon - pg), pg, port, slash);
}

/* pg_ctl ACTION (start, stop, status) on the standby, as postgres when root */
static int standby_ctl(const char *action)
{
    const char *extra = strcmp(action, "start") == 0 ? " -w -t 60 -l " : strcmp(action, "stop") == 0 ? " -w -t 60 -m fast" : "";
    char *cmd = th_fmt("%s%s %s -D %s%s%s >/dev/null 2>&1", geteuid() == 0 ? "runuser -u postgres -- " : "",
                       getenv("H2O_DB_TEST_PG_CTL"), action, getenv("H2O_DB_TEST_PG_STANDBY_PGDATA"), extra,
                       strcmp(action, "start") == 0 ? getenv("H2O_DB_TEST_PG_STANDBY_LOG") : "");
    int status = system(cmd);
    free(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void start(const char *bind_options)
{
    char *sb = standby_url();
    char *conf =
        th_fmt("listen: @PORT@\nnum-threads: 2\ndb.bind:\n  url: @PG@\n  replicas: [%s]\n%s%s", sb, bind_options, handlers);
    int ret = th_server_start(&server, conf);
    ck_assert_msg(ret == 0, "the server did not start; log:\n%s", th_server_log(&server));
    free(conf);
    free(sb);
}

/* a server with `binds` (db.bind's items) and the handlers above plus `paths` (under paths:) */
static void start_with(const char *binds, const char *paths)
{
    char *conf = th_fmt("listen: @PORT@\nnum-threads: 2\ndb.bind:\n%s%s%s", binds, handlers, paths);
    int ret = th_server_start(&server, conf);
    ck_assert_msg(ret == 0, "the server did not start; log:\n%s", th_server_log(&server));
    free(conf);
}

static void stop(void)
{
    int status = th_server_stop(&server, 15000);
    ck_assert_msg(status == 0, "exit status %d; log:\n%s", status, th_server_log(&server));
}

/* GET path; the status in *status, the body returned (malloc'd) */
static char *get(const char *path, long *status)
{
    th_response_t res;
    char *url = th_url(&server, path);
    int ret = th_http(&res, TH_HTTP1, NULL, url, NULL);
    ck_assert_msg(ret == 0, "GET %s: curl error %d", path, res.curl_error);
    char *body = strdup(res.body != NULL ? res.body : "");
    *status = res.status;
    th_response_free(&res);
    free(url);
    return body;
}

/* polled: GET path answers `status` with `body` */
struct expect {
    const char *path, *body;
    long status;
};

static int answers(void *arg)
{
    struct expect *e = arg;
    long status;
    char *body = get(e->path, &status);
    int ok = status == e->status && (e->body == NULL || strcmp(body, e->body) == 0);
    free(body);
    return ok;
}

static void wait_answer(const char *path, long status, const char *body, int timeout_ms)
{
    struct expect e = {path, body, status};
    ck_assert_msg(th_wait_until(answers, &e, timeout_ms), "GET %s never answered %ld %s in %d ms", path, status,
                  body != NULL ? body : "", timeout_ms);
}

static void expect(const char *path, long status, const char *body)
{
    long got;
    char *text = get(path, &got);
    ck_assert_msg(got == status && strcmp(text, body) == 0, "GET %s: %ld %s (expected %ld %s)", path, got, text, status, body);
    free(text);
}

/* polled (the suite's database itself may not be replayed there yet: no connection is no) */
static int standby_has_table(void *arg)
{
    char *sb = standby_url();
    PGconn *c = PQconnectdb(sb);
    PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, "SELECT to_regclass('rt_writes') IS NOT NULL") : NULL;
    int ok = r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    PQfinish(c);
    free(sb);
    return ok;
}

static void restore_standby(void);

static void setup(void)
{
    th_require_pg();
    restore_standby();
    th_pg("DROP TABLE IF EXISTS rt_writes");
    th_pg("CREATE TABLE rt_writes (v text)");
    ck_assert_msg(th_wait_until(standby_has_table, NULL, 10000), "the standby never replayed CREATE TABLE");
}

/* the standby runs and replays, whatever an earlier test did to it (a failed test skips teardown) */
static void restore_standby(void)
{
    if (standby_ctl("status") != 0)
        standby_ctl("start");
    /* (replay is the cluster's: resumed through a database that surely exists there) */
    char *sb = th_fmt("postgresql://postgres@127.0.0.1:%s/postgres", getenv("H2O_DB_TEST_PG_STANDBY_PORT"));
    PGconn *c = PQconnectdb(sb);
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "SELECT pg_wal_replay_resume()"));
    PQfinish(c);
    free(sb);
}

/* polled: after a read (so that the thread serving it measures the replica), the status page says
 * that the replica is healthy ("true": on some thread) or not ("false": on any thread) */
static int replica_healthy_is(void *arg)
{
    long status;
    free(get("/ro", &status));
    char *body = get("/status", &status), *want = th_fmt("\"replicas\":[{\"url\":");
    const char *replicas = strstr(body, want), *healthy = replicas != NULL ? strstr(replicas, "\"healthy\":") : NULL;
    int ok = status == 200 && healthy != NULL && strncmp(healthy + 10, (const char *)arg, strlen(arg)) == 0;
    free(want);
    free(body);
    return ok;
}

static void wait_replica_healthy(const char *value)
{
    ck_assert_msg(th_wait_until(replica_healthy_is, (void *)value, 10000), "the status page never said the replica's healthy is %s",
                  value);
}

START_TEST(read_only_sessions_read_on_the_standby_and_never_write)
{
    start("  replica: {max-lag: 5, fallback: ON}\n");
    /* the first read of each thread may go to the primary while the lag is first measured */
    wait_answer("/ro", 200, "standby", 10000);
    for (int i = 0; i < 10; ++i)
        expect("/rw", 200, "primary");
    /* a read-only transaction: READ ONLY, on the standby */
    wait_answer("/txn", 200, "on standby", 10000);
    /* a write in a read-only session: 25006, never re-sent to the primary */
    for (int i = 0; i < 10; ++i)
        expect("/write?x", 500, "25006");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM rt_writes"), 0);
    /* read_only after the first statement is refused */
    expect("/late", 200, "refused");
    stop();
}
END_TEST

START_TEST(reads_fall_back_to_the_primary_and_return_to_the_standby)
{
    start("  replica: {max-lag: 5, fallback: ON}\n");
    wait_answer("/ro", 200, "standby", 10000);
    ck_assert_int_eq(standby_ctl("stop"), 0);
    /* (a read that was placed on the replica before it was known down fails: never re-sent) */
    wait_replica_healthy("false");
    expect("/ro", 200, "primary");
    /* on the primary too, a read-only session cannot write */
    for (int i = 0; i < 5; ++i)
        expect("/write?y", 500, "25006");
    expect("/txn", 200, "on primary");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM rt_writes"), 0);
    ck_assert_int_eq(standby_ctl("start"), 0);
    double t0 = th_now_ms();
    wait_answer("/ro", 200, "standby", 10000);
    fprintf(stderr, "replicas: reads returned to the restarted standby %.0f ms after it accepted connections\n", th_now_ms() - t0);
    stop();
}
END_TEST

START_TEST(without_fallback_reads_answer_503_while_the_standby_is_down)
{
    start("  replica: {max-lag: 5, fallback: OFF}\n");
    wait_answer("/ro", 200, "standby", 10000);
    ck_assert_int_eq(standby_ctl("stop"), 0);
    wait_replica_healthy("false");
    for (int i = 0; i < 5; ++i) {
        long status;
        free(get("/ro", &status));
        ck_assert_msg(status == 503, "a read answered %ld with no replica up and fallback OFF", status);
    }
    expect("/rw", 200, "primary");
    ck_assert_int_eq(standby_ctl("start"), 0);
    wait_answer("/ro", 200, "standby", 10000);
    stop();
}
END_TEST

START_TEST(a_replica_whose_replay_lags_is_skipped_until_it_catches_up)
{
    start("  replica: {max-lag: 1, fallback: ON}\n");
    wait_answer("/ro", 200, "standby", 10000);
    char *sb = standby_url();
    free(th_pg_on(sb, "SELECT pg_wal_replay_pause()"));
    th_pg("INSERT INTO rt_writes VALUES ('behind')");
    /* the lag measured exceeds max-lag: the replica is unhealthy, reads go to the primary */
    wait_replica_healthy("false");
    for (int i = 0; i < 10; ++i)
        expect("/ro", 200, "primary");
    free(th_pg_on(sb, "SELECT pg_wal_replay_resume()"));
    wait_answer("/ro", 200, "standby", 10000);
    wait_replica_healthy("true");
    free(sb);
    stop();
}
END_TEST

START_TEST(the_status_page_lists_each_replica_with_health_and_lag)
{
    start("  replica: {max-lag: 5, fallback: ON}\n");
    wait_answer("/ro", 200, "standby", 10000);
    long status;
    char *sb = standby_url(), *body = get("/status", &status);
    ck_assert_int_eq(status, 200);
    char *entry = th_fmt("\"replicas\":[{\"url\":\"%s\",\"healthy\":true,\"lag\":", sb);
    ck_assert_msg(strstr(body, entry) != NULL, "no %s in %s", entry, body);
    ck_assert_msg(strstr(body, "\"replica\":{\"max_lag\":5,\"fallback\":true}") != NULL, "%s", body);
    ck_assert_msg(strstr(body, "\"read_only_primary\":{\"url\":") != NULL, "%s", body);
    ck_assert_msg(strstr(body, "\"lag_measured_ms\":") != NULL, "%s", body);
    /* one bind: the replicas are listed under it, not as binds of their own */
    int binds = 0;
    for (const char *p = body; (p = strstr(p, "{\"key\":")) != NULL; ++p)
        ++binds;
    ck_assert_msg(binds == 1, "%d binds listed: %s", binds, body);
    free(body);
    body = get("/status?format=prometheus", &status);
    char *series = th_fmt("h2o_db_replica_healthy{key=\"sa_main\",scope=\"global\",thread=\"0\",role=\"replica\",url=\"%s\"}", sb);
    ck_assert_msg(strstr(body, series) != NULL, "no %s in %s", series, body);
    ck_assert_msg(strstr(body, "h2o_db_replica_lag_milliseconds{") != NULL, "%s", body);
    ck_assert_msg(strstr(body, "h2o_db_connections{key=\"sa_main\",scope=\"global\",thread=\"0\",state=\"idle\"}") != NULL, "%s",
                  body);
    free(series);
    free(body);
    free(entry);
    free(sb);
    stop();
}
END_TEST

START_TEST(the_check_lists_replicas_without_their_passwords)
{
    char *out = NULL;
    int status = th_run_h2o_db("-t",
                               "listen: @PORT@\ndb.bind:\n  url: @PG@\n"
                               "  replicas: [postgresql://app:s3cretpw@127.0.0.1:1/app]\n"
                               "hosts: {default: {paths: {/: {db.status: ON}}}}\n",
                               &out);
    ck_assert_msg(status == 0, "-t: %d %s", status, out);
    ck_assert_msg(strstr(out, "replica postgresql://app:***@127.0.0.1:1/app") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "s3cretpw") == NULL, "the password was printed: %s", out);
    free(out);
}
END_TEST

START_TEST(db_query_get_reads_on_the_standby_unless_read_primary)
{
    char *sb = standby_url(), *binds = th_fmt("  - url: @PG@\n    replicas: [%s]\n", sb);
    start_with(binds, "      /q:\n"
                      "        db.query: {GET: {sql: \"SELECT pg_is_in_recovery()\", result: value}}\n"
                      "      /qp:\n"
                      "        db.query: {read: primary, GET: {sql: \"SELECT pg_is_in_recovery()\", result: value}}\n");
    wait_answer("/q", 200, "t", 10000);
    for (int i = 0; i < 10; ++i)
        expect("/qp", 200, "f");
    free(binds);
    free(sb);
    stop();
}
END_TEST

/* polled: the C API (db_script's READONLY step is h2o_db_session_read_only) reads on the standby,
 * and a second call after the statement is refused */
static int script_reads_on_standby(void *arg)
{
    th_response_t res;
    char *url = th_url(&server, "/script");
    int ok = th_http(&res, TH_HTTP1, "POST", url, "READONLY\nSQL SELECT pg_is_in_recovery() AS r\nREADONLY\n") == 0 &&
             res.status == 200 && strstr(res.body, "\"r\":true") != NULL && strstr(res.body, "REFUSED") != NULL;
    th_response_free(&res);
    free(url);
    return ok;
}

START_TEST(the_c_api_marks_a_session_read_only_before_its_first_statement)
{
    char *sb = standby_url(), *binds = th_fmt("  - url: @PG@\n    replicas: [%s]\n", sb);
    start_with(binds, "      /script:\n        c.handler: @BUILD@/t/db_handlers.so:db_script\n");
    ck_assert_msg(th_wait_until(script_reads_on_standby, NULL, 10000), "h2o_db_session_read_only never led to the standby");
    free(binds);
    free(sb);
    stop();
}
END_TEST

START_TEST(read_only_on_a_bind_without_replicas_changes_nothing)
{
    start_with("  - url: @PG@\n", "");
    expect("/write?z", 200, "written");
    expect("/txn", 200, "off primary");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM rt_writes WHERE v = 'z'"), 1);
    stop();
}
END_TEST

/* twophase: a standby cannot PREPARE TRANSACTION, so a read-only session's transaction runs on the
 * primary (read-only); its partition, a session of its own, writes and commits */
START_TEST(a_read_only_transaction_on_a_twophase_bind_runs_on_the_primary)
{
    ck_assert_msg(th_pg_url2() != NULL, "no second database");
    free(th_pg_on(th_pg_url2(), "DROP TABLE IF EXISTS rt_audit"));
    free(th_pg_on(th_pg_url2(), "CREATE TABLE rt_audit (v int)"));
    char *instance = th_fmt("rt%d", (int)getpid());
    setenv("H2O_DB_INSTANCE", instance, 1);
    char *sb = standby_url(), *binds = th_fmt("  - url: @PG@\n    replicas: [%s]\n    binds: {rt_audit: sa_audit}\n"
                                              "    twophase: ON\n  - url: @PGDB2@\n    key: sa_audit\n    middleware: OFF\n",
                                              sb);
    start_with(binds, "      /tp:\n"
                      "        mruby.handler: |\n"
                      "          proc {|env|\n"
                      "            db = H2O::DB.session(env).read_only\n"
                      "            row = nil\n"
                      "            db.transaction {\n"
                      "              row = db.query(\"SELECT current_setting('transaction_read_only') AS ro, \"\\\n"
                      "                             \"pg_is_in_recovery() AS r\")[0]\n"
                      "              db.for(\"rt_audit\").execute(\"INSERT INTO rt_audit VALUES (1)\") }\n"
                      "            [200, {}, [\"#{row['ro']} #{row['r'] ? 'standby' : 'primary'}\"]] }\n");
    wait_answer("/ro", 200, "standby", 10000);
    for (int i = 0; i < 3; ++i)
        expect("/tp", 200, "on primary");
    char *n = th_pg_on(th_pg_url2(), "SELECT count(*) FROM rt_audit");
    ck_assert_str_eq(n, "3");
    free(n);
    stop();
    unsetenv("H2O_DB_INSTANCE");
    free(binds);
    free(sb);
    free(instance);
}
END_TEST

/* polled: the server's log says `arg` */
static int log_says(void *arg)
{
    return th_log_count(&server, arg) > 0;
}

/* backends of the standby opened with application_name `app` */
static long standby_backends(const char *app)
{
    char *sb = standby_url(), *sql = th_fmt("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'", app),
         *n = th_pg_on(sb, sql);
    long count = n != NULL ? strtol(n, NULL, 10) : -1;
    free(n);
    free(sql);
    free(sb);
    return count;
}

struct generation {
    const char *old_app, *new_app;
};

/* polled: the old threads' replica connections are gone and the new threads' are open */
static int standby_moved(void *arg)
{
    const struct generation *g = arg;
    return standby_backends(g->old_app) == 0 && standby_backends(g->new_app) >= 1;
}

static char *replica_binds(const char *app, int max_lag)
{
    char *sb = standby_url(),
         *binds = th_fmt("  url: @PG@\n  replicas: [\"%s?application_name=%s\"]\n  replica: {max-lag: %d, fallback: ON}\n", sb, app,
                         max_lag);
    free(sb);
    return binds;
}

/* SIGHUP with a changed replica: the new threads read on the standby with the new options, the
 * old threads' replica pools close with them, and the server stops cleanly (exit 0: under ASan,
 * nothing of the released config read after its free, nothing leaked) */
START_TEST(a_reload_moves_reads_to_the_new_configs_replica_pools)
{
    char *binds = replica_binds("rt_gen1", 5);
    start_with(binds, "");
    free(binds);
    wait_answer("/ro", 200, "standby", 10000);
    ck_assert_int_ge(standby_backends("rt_gen1"), 1);
    binds = replica_binds("rt_gen2", 7);
    char *text = th_fmt("listen: @PORT@\nnum-threads: 2\ndb.bind:\n%s%s", binds, handlers);
    free(th_write_file(server.dir, "h2o-db.conf", text, server.port));
    ck_assert_int_eq(kill(server.pid, SIGHUP), 0);
    ck_assert_msg(th_wait_until(log_says, "h2o-db: reloaded", 30000), "no reload in the log:\n%s", th_server_log(&server));
    wait_answer("/ro", 200, "standby", 10000);
    long status;
    char *page = get("/status", &status);
    ck_assert_msg(strstr(page, "\"replica\":{\"max_lag\":7,\"fallback\":true}") != NULL, "%s", page);
    free(page);
    struct generation g = {"rt_gen1", "rt_gen2"};
    ck_assert_msg(th_wait_until(standby_moved, &g, 30000), "standby backends: %ld of the old config, %ld of the new",
                  standby_backends("rt_gen1"), standby_backends("rt_gen2"));
    expect("/rw", 200, "primary");
    stop();
    free(binds);
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("replicas");
    TCase *tc = tcase_create("replicas");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, restore_standby);
    tcase_add_test(tc, read_only_sessions_read_on_the_standby_and_never_write);
    tcase_add_test(tc, reads_fall_back_to_the_primary_and_return_to_the_standby);
    tcase_add_test(tc, without_fallback_reads_answer_503_while_the_standby_is_down);
    tcase_add_test(tc, a_replica_whose_replay_lags_is_skipped_until_it_catches_up);
    tcase_add_test(tc, the_status_page_lists_each_replica_with_health_and_lag);
    tcase_add_test(tc, the_check_lists_replicas_without_their_passwords);
    tcase_add_test(tc, db_query_get_reads_on_the_standby_unless_read_primary);
    tcase_add_test(tc, read_only_on_a_bind_without_replicas_changes_nothing);
    tcase_add_test(tc, the_c_api_marks_a_session_read_only_before_its_first_statement);
    tcase_add_test(tc, a_read_only_transaction_on_a_twophase_bind_runs_on_the_primary);
    tcase_add_test(tc, a_reload_moves_reads_to_the_new_configs_replica_pools);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
