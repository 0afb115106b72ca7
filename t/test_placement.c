/*
 * Placement: which connection the pool gives an autocommit statement, and when it opens another
 * (module/pool.c, choose_conn and maybe_connect), checked in-process against the fault driver,
 * whose connections answer each statement 1 ms after it was sent, in order:
 *   - a driver that pipelines fills the connections already open and opens another only when
 *     none can take the statement now (all at pipeline-depth, or their oldest statement has run
 *     longer than the "young" bound), and one connect serves a crowd at a cold start;
 *   - a driver that does not (MySQL's kind) uses idle connections, then new ones, and shares a
 *     busy one only at `max` (then rather than wait for a connect under way).
 * Every case also checks that nothing is left waiting and no counter leaked.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "config/config.h"
#include "fault_driver.h"
#include "harness.h"
#include "session.h"

#define YOUNG_MS 50 /* pool.c's bound */

static struct {
    uv_loop_t loop;
    uv_timer_t tick;
    h2o_globalconf_t globalconf;
    h2o_context_t ctx;
    h2o_db_bind_t bind;
    h2o_db_bind_t *bind_ptr;
    int answered, failed;
} T;

struct call {
    int runs;
    h2o_db_status_t status;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void on_tick(uv_timer_t *timer)
{
}

static void setup(const h2o_db_driver_t *driver, unsigned max, unsigned depth)
{
    memset(&T, 0, sizeof(T));
    fd_reset();
    h2o_db_bind_t *b = &T.bind;
    b->key = "key";
    b->scope = "global";
    b->filename = "test_placement.yaml";
    b->url.display = "fault://test";
    b->driver = driver;
    b->pool = (h2o_db_pool_config_t){.max = max, .queue = 64, .pipeline_depth = depth, .idle_timeout = 60000};
    b->pool.acquire_timeout = 5000 * (uint64_t)th_time_factor();
    T.bind_ptr = b;
    uv_loop_init(&T.loop);
    uv_timer_init(&T.loop, &T.tick);
    uv_timer_start(&T.tick, on_tick, 2, 2); /* bounds each UV_RUN_ONCE */
    h2o_config_init(&T.globalconf);
    h2o_config_register_host(&T.globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_db_register_configurator(&T.globalconf);
    h2o_db_config_t *config = h2o_db_config_of(&T.globalconf);
    h2o_vector_reserve(NULL, &config->binds, 1);
    config->binds.entries[config->binds.size++] = b;
    h2o_context_init(&T.ctx, &T.loop, &T.globalconf);
}

static h2o_db_pool_t *pool(void)
{
    return h2o_db_thread_pool(h2o_db_thread, 0);
}

static void teardown(void)
{
    h2o_db_pool_t *p = pool();
    char why[512];
    ck_assert_msg(fd_check_pool(p, why, sizeof(why)) == 0, "%s", why);
    ck_assert_msg(p->num_waiting_any == 0 && p->num_waiting_begin == 0, "waiting counters left: %zu, %zu", p->num_waiting_any,
                  p->num_waiting_begin);
    uv_close((uv_handle_t *)&T.tick, NULL);
    h2o_context_dispose(&T.ctx);
    double deadline = now_ms() + 2000 * th_time_factor();
    while ((fd_allocated() != 0 || uv_loop_alive(&T.loop)) && now_ms() < deadline)
        uv_run(&T.loop, UV_RUN_NOWAIT);
    ck_assert_int_eq(fd_allocated(), 0);
    ck_assert_int_eq(uv_loop_close(&T.loop), 0);
    h2o_db_config_of(&T.globalconf)->binds.size = 0; /* (the test's own bind) */
    h2o_config_dispose(&T.globalconf);
    ck_assert_msg(fd_stats.violations == 0, "the driver's contract was broken: %s", fd_stats.violation);
}

/* Runs the loop until cond(arg) holds, at most 10 s (× the build's slowness). */
static int run_until(int (*cond)(void *), void *arg)
{
    double deadline = now_ms() + 10000 * th_time_factor();
    while (!cond(arg)) {
        if (now_ms() > deadline)
            return 0;
        uv_run(&T.loop, UV_RUN_ONCE);
    }
    return 1;
}

static void on_result(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    ++c->runs;
    c->status = h2o_db_result_status(r);
}

static h2o_db_session_t *open_session(void)
{
    h2o_db_session_t *s = h2o_db_session_open(&T.ctx, "key");
    ck_assert_ptr_nonnull(s);
    return s;
}

static void query(h2o_db_session_t *s, const char *sql, struct call *c)
{
    ck_assert_int_eq(h2o_db_query(s, sql, 0, NULL, on_result, c), 0);
}

struct calls {
    struct call *c;
    size_t n;
};

static int all_answered(void *arg)
{
    struct calls *cs = arg;
    for (size_t i = 0; i < cs->n; ++i)
        if (cs->c[i].runs == 0)
            return 0;
    return 1;
}

static void wait_answered(struct call *c, size_t n)
{
    struct calls cs = {c, n};
    ck_assert_msg(run_until(all_answered, &cs), "%zu statements were never answered", n);
    for (size_t i = 0; i < n; ++i) {
        ck_assert_int_eq(c[i].runs, 1);
        ck_assert_msg(c[i].status == H2O_DB_OK, "statement %zu answered %d", i, c[i].status);
    }
}

/* The connection (fault driver's id) that carried the statement whose callback data is c. */
static unsigned conn_of(struct call *c)
{
    size_t count;
    const fd_log_t *l = fd_log_find(c, &count);
    ck_assert_msg(l != NULL && count == 1, "the statement was sent %zu times", l != NULL ? count : 0);
    return l->conn_id;
}

static void close_all(h2o_db_session_t **s, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        h2o_db_session_close(s[i]);
}

/* One connection open and warm, then five sessions at once: all pipelined on it, none opened. */
START_TEST(pipelining_fills_the_open_connection)
{
    setup(&fd_driver, 4, 8);
    h2o_db_session_t *s[6];
    struct call c[6] = {{0}};
    for (int i = 0; i < 6; ++i)
        s[i] = open_session();
    query(s[0], "SELECT warm", c);
    wait_answered(c, 1);
    for (int i = 1; i < 6; ++i)
        query(s[i], "SELECT now", c + i);
    wait_answered(c + 1, 5);
    ck_assert_int_eq(fd_stats.opens, 1);
    for (int i = 1; i < 6; ++i)
        ck_assert_int_eq(conn_of(c + i), conn_of(c));
    close_all(s, 6);
    teardown();
}
END_TEST

/* A cold start: six sessions at once and no connection yet; one connect serves them all. */
START_TEST(pipelining_cold_start_opens_one_connection)
{
    setup(&fd_driver, 4, 8);
    h2o_db_session_t *s[6];
    struct call c[6] = {{0}};
    for (int i = 0; i < 6; ++i) {
        s[i] = open_session();
        query(s[i], "SELECT cold", c + i);
    }
    wait_answered(c, 6);
    ck_assert_int_eq(fd_stats.opens, 1);
    close_all(s, 6);
    teardown();
}
END_TEST

/* At pipeline-depth the next statement does not wait for room: another connection opens. */
START_TEST(pipelining_full_connection_opens_another)
{
    setup(&fd_driver, 4, 2);
    h2o_db_session_t *s[4];
    struct call c[4] = {{0}};
    for (int i = 0; i < 4; ++i)
        s[i] = open_session();
    query(s[0], "SELECT warm", c);
    wait_answered(c, 1);
    fd_add_rule(&(fd_rule_t){FD_RESULT, 0, FD_STALL, NULL, 0, "SELECT held"});
    query(s[1], "SELECT held", c + 1);
    query(s[2], "SELECT held", c + 2); /* the connection is at depth 2 now */
    query(s[3], "SELECT next", c + 3);
    wait_answered(c + 3, 1);
    ck_assert_int_eq(fd_stats.opens, 2);
    ck_assert_int_ne(conn_of(c + 3), conn_of(c + 1));
    fd_clear_rules();
    fd_release();
    wait_answered(c + 1, 2);
    close_all(s, 4);
    teardown();
}
END_TEST

static int oldest_is_old(void *arg)
{
    h2o_db_pool_t *p = pool();
    uint64_t now = h2o_db_now(h2o_db_thread);
    for (h2o_linklist_t *l = p->conns.next; l != &p->conns; l = l->next)
        if (h2o_db_conn_oldest_age(H2O_STRUCT_FROM_MEMBER(h2o_db_conn_t, link, l), now) <= YOUNG_MS)
            return 0;
    return 1;
}

/* A statement that has run past the young bound: the next one goes to a new connection instead
 * of waiting behind it; one that came while it was young was pipelined behind it. */
START_TEST(pipelining_never_behind_an_old_statement)
{
    setup(&fd_driver, 4, 8);
    h2o_db_session_t *s[4];
    struct call c[4] = {{0}};
    for (int i = 0; i < 4; ++i)
        s[i] = open_session();
    query(s[0], "SELECT warm", c);
    wait_answered(c, 1);
    fd_add_rule(&(fd_rule_t){FD_RESULT, 1, FD_STALL, NULL, 0, "SELECT slow"});
    query(s[1], "SELECT slow", c + 1);
    query(s[2], "SELECT young", c + 2); /* the slow one is young: pipelined behind it */
    ck_assert_msg(run_until(oldest_is_old, NULL), "the slow statement never grew old");
    query(s[3], "SELECT after", c + 3);
    wait_answered(c + 3, 1);
    ck_assert_int_eq(fd_stats.opens, 2);
    ck_assert_int_eq(conn_of(c + 2), conn_of(c + 1));
    ck_assert_int_ne(conn_of(c + 3), conn_of(c + 1));
    ck_assert_int_eq(c[2].runs, 0); /* still behind the slow one */
    fd_release();
    wait_answered(c + 1, 2);
    close_all(s, 4);
    teardown();
}
END_TEST

/* A driver without pipelining: idle connections first, then new ones up to max, and only then
 * the busy ones. */
START_TEST(no_pipelining_spreads_over_connections)
{
    setup(&fd_driver_nocancel, 3, 8);
    h2o_db_session_t *s[6];
    struct call c[6] = {{0}};
    for (int i = 0; i < 6; ++i)
        s[i] = open_session();
    query(s[0], "SELECT warm", c);
    wait_answered(c, 1);
    for (int i = 1; i < 6; ++i)
        query(s[i], "SELECT each", c + i);
    wait_answered(c + 1, 5);
    ck_assert_int_eq(fd_stats.opens, 3);
    /* the first took the idle connection; the second waited for a new one rather than share it
     * (below max); at max the rest shared the open ones rather than wait for a connect */
    ck_assert_int_eq(conn_of(c + 1), conn_of(c));
    ck_assert_int_ne(conn_of(c + 2), conn_of(c));
    close_all(s, 6);
    teardown();
}
END_TEST

/* Transactions need connections of their own even when the driver pipelines: three BEGINs at a
 * cold start open three connections at once, not one after the other. */
START_TEST(pipelining_begins_get_connections_of_their_own)
{
    setup(&fd_driver, 4, 8);
    h2o_db_session_t *s[3];
    struct call b[3] = {{0}}, q[3] = {{0}}, e[3] = {{0}};
    for (int i = 0; i < 3; ++i) {
        s[i] = open_session();
        ck_assert_int_eq(h2o_db_begin(s[i], on_result, b + i), 0);
        query(s[i], "SELECT in_txn", q + i);
        ck_assert_int_eq(h2o_db_commit(s[i], on_result, e + i), 0);
    }
    ck_assert_int_eq(fd_stats.opens, 3);
    wait_answered(e, 3);
    wait_answered(q, 3);
    close_all(s, 3);
    teardown();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("placement");
    TCase *tc = tcase_create("placement");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, pipelining_fills_the_open_connection);
    tcase_add_test(tc, pipelining_cold_start_opens_one_connection);
    tcase_add_test(tc, pipelining_full_connection_opens_another);
    tcase_add_test(tc, pipelining_never_behind_an_old_statement);
    tcase_add_test(tc, no_pipelining_spreads_over_connections);
    tcase_add_test(tc, pipelining_begins_get_connections_of_their_own);
    suite_add_tcase(s, tc);
    return th_run_checks(s);
}
