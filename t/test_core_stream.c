/*
 * Streamed statements (h2o_db_query_rows) in the real pool and session against the fault driver,
 * in-process: every way of consuming a stream (to its end, pausing, stopping with each kind of
 * cancel, ending the session inside a row, in a transaction, behind other statements, waiting for
 * a connection) under every fault the driver can inject (connects failing at once and later,
 * set-up failing, a send that breaks or stalls, an error or a lost connection after the rows, a
 * stall). After each: on_done ran exactly once (none after the session was closed), after the
 * rows and never from inside an h2o_db_* call; no row came while paused; then the pool is quiet,
 * its counters match the driver's connections, and it serves the next statement.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "config/config.h"
#include "fault_driver.h"
#include "harness.h"
#include "session.h"

enum { M_PLAIN, M_PAUSE, M_STOP, M_CLOSE_IN_ROW, M_CLOSE_PAUSED, M_TXN, M_BEHIND, M_WAITS, M_NUM };
static const char *mode_names[] = {"plain", "pause", "stop", "close-in-row", "close-paused", "txn", "behind", "waits"};

static const struct fault {
    const char *name;
    fd_rule_t rule;
    int nocancel, fails; /* fails: the stream cannot succeed */
    int stalls;          /* the stream never ends by itself: the test closes its session */
} faults[] = {
    {"none", {FD_NUM_STEPS}},
    {"open-fail-sync-every", {FD_OPEN, 0, FD_FAIL, "08001", 0, NULL}, .fails = 1},
    {"open-fail-later-1st", {FD_OPEN, 1, FD_FAIL, "08006", 5, NULL}},
    {"setup-fail-1st", {FD_SETUP, 1, FD_FAIL, "28000", 0, NULL}},
    {"send-fail-stream", {FD_SEND, 1, FD_FAIL, NULL, 0, "SELECT s"}, .fails = 1},
    {"send-stall-stream", {FD_SEND, 1, FD_STALL, NULL, 0, "SELECT s"}, .stalls = 1},
    {"result-23505-stream", {FD_RESULT, 1, FD_FAIL, "23505", 0, "SELECT s"}, .fails = 1},
    {"lost-after-rows", {FD_RESULT, 1, FD_LOSE, NULL, 0, "SELECT s"}, .fails = 1},
    {"result-stall-stream", {FD_RESULT, 1, FD_STALL, NULL, 0, "SELECT s"}, .stalls = 1},
    {"cancel-stall", {FD_CANCEL, 0, FD_STALL, NULL, 0, NULL}},
    {"cancel-fail", {FD_CANCEL, 0, FD_FAIL, NULL, 0, NULL}},
    {"cancel-unsupported", {FD_NUM_STEPS}, .nocancel = 1},
    {"close-slow", {FD_CLOSE, 0, FD_STALL, NULL, 30, NULL}},
};
#define NFAULTS (sizeof(faults) / sizeof(faults[0]))

struct call {
    int runs, in_api;
    h2o_db_status_t status;
};

static struct {
    uv_loop_t loop;
    uv_timer_t tick, resume;
    h2o_globalconf_t globalconf;
    h2o_context_t ctx;
    h2o_db_bind_t bind;
    int in_api, mode;
    h2o_db_session_t *s;
    int closed;
    /* the stream */
    int rows, bad_rows, rows_while_paused, rows_after_done, paused, done, done_in_api;
    h2o_db_status_t status;
    char sqlstate[6];
    struct call before, begin, commit, other;
} T;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void on_tick(uv_timer_t *timer)
{
}

static int run_until(int (*cond)(void))
{
    double deadline = now_ms() + 10000 * th_time_factor();
    while (!cond()) {
        if (now_ms() > deadline)
            return 0;
        uv_run(&T.loop, UV_RUN_ONCE);
    }
    return 1;
}

static void close_session(void)
{
    if (T.closed)
        return;
    T.closed = 1;
    ++T.in_api;
    h2o_db_session_close(T.s);
    --T.in_api;
}

static void on_resume(uv_timer_t *timer)
{
    if (T.closed || !T.paused)
        return;
    T.paused = 0;
    ++T.in_api;
    int ret = h2o_db_resume(T.s);
    --T.in_api;
    if (ret != 0 && T.done == 0)
        T.bad_rows += 1000; /* a paused stream that cannot be resumed */
}

static int on_row(const h2o_db_result_t *row, void *data)
{
    if (T.paused)
        ++T.rows_while_paused;
    if (T.done)
        ++T.rows_after_done;
    size_t len = 0;
    const char *v = h2o_db_result_rows(row) == 1 ? h2o_db_result_value(row, 0, 0, &len) : NULL;
    if (v == NULL || strcmp(v, "s") != 0 || T.in_api)
        ++T.bad_rows;
    ++T.rows;
    switch (T.mode) {
    case M_PAUSE:
        T.paused = 1;
        uv_timer_start(&T.resume, on_resume, 1, 0);
        return 1;
    case M_STOP:
        return T.rows == 2 ? -1 : 0;
    case M_CLOSE_IN_ROW:
        if (T.rows == 2)
            close_session();
        return 0;
    case M_CLOSE_PAUSED:
        if (T.rows == 2) {
            T.paused = 1;
            return 1; /* and never resumed: the session closes while paused */
        }
        return 0;
    default:
        return 0;
    }
}

static void on_done(h2o_db_result_t *r, void *data)
{
    ++T.done;
    T.done_in_api |= T.in_api != 0;
    T.status = h2o_db_result_status(r);
    snprintf(T.sqlstate, sizeof(T.sqlstate), "%s", T.status != H2O_DB_OK ? h2o_db_result_sqlstate(r) : "");
}

static void on_result(h2o_db_result_t *r, void *data)
{
    struct call *c = data;
    ++c->runs;
    c->in_api |= T.in_api != 0;
    c->status = h2o_db_result_status(r);
}

static void setup(const struct fault *f, int mode)
{
    memset(&T, 0, sizeof(T));
    T.mode = mode;
    fd_reset();
    h2o_db_bind_t *b = &T.bind;
    b->key = "key";
    b->scope = "global";
    b->filename = "test_core_stream.yaml";
    b->url.display = "fault://test";
    b->driver = f->nocancel ? &fd_driver_nocancel : &fd_driver;
    b->pool = (h2o_db_pool_config_t){.max = T.mode == M_WAITS ? 1 : 2, .queue = 64, .pipeline_depth = 8, .idle_timeout = 60000};
    b->pool.acquire_timeout = 5000 * (uint64_t)th_time_factor();
    uv_loop_init(&T.loop);
    uv_timer_init(&T.loop, &T.tick);
    uv_timer_init(&T.loop, &T.resume);
    uv_timer_start(&T.tick, on_tick, 2, 2); /* bounds each UV_RUN_ONCE */
    h2o_config_init(&T.globalconf);
    h2o_config_register_host(&T.globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_db_register_configurator(&T.globalconf);
    h2o_db_config_t *config = h2o_db_config_of(&T.globalconf);
    h2o_vector_reserve(NULL, &config->binds, 1);
    config->binds.entries[config->binds.size++] = b;
    h2o_context_init(&T.ctx, &T.loop, &T.globalconf);
    if (f->rule.step != FD_NUM_STEPS)
        fd_add_rule(&f->rule);
}

static h2o_db_pool_t *pool(void)
{
    return h2o_db_thread_pool(h2o_db_thread, 0);
}

static void teardown(void)
{
    uv_close((uv_handle_t *)&T.tick, NULL);
    uv_close((uv_handle_t *)&T.resume, NULL);
    h2o_context_dispose(&T.ctx);
    double deadline = now_ms() + 2000 * th_time_factor();
    while ((fd_allocated() != 0 || uv_loop_alive(&T.loop)) && now_ms() < deadline)
        uv_run(&T.loop, UV_RUN_NOWAIT);
    ck_assert_int_eq(fd_allocated(), 0);
    ck_assert_int_eq(uv_loop_close(&T.loop), 0);
    h2o_db_config_of(&T.globalconf)->binds.size = 0; /* (the test's own bind) */
    h2o_config_dispose(&T.globalconf);
}

static int stream_over(void)
{
    return T.done != 0 || T.closed;
}

static int stalls;

/* The stream is over, or will not go on by itself: paused for good, or its statement stalls. */
static int stream_over_or_stuck(void)
{
    if (stream_over() || (T.mode == M_CLOSE_PAUSED && T.paused))
        return 1;
    for (size_t i = 0; stalls && i < fd_stats.nlog; ++i)
        if (strcmp(fd_stats.log[i].sql, "SELECT s") == 0 && fd_stats.log[i].fate == FD_FATE_INFLIGHT)
            return 1;
    return 0;
}

static int pool_quiet(void)
{
    return fd_pool_quiet(pool());
}

static int txn_over(void)
{
    return T.commit.runs != 0 || T.closed;
}

static int other_answered(void)
{
    return T.other.runs != 0;
}

/* Issues the mode's statements around the stream. */
static void issue(void)
{
    ++T.in_api;
    T.s = h2o_db_session_open(&T.ctx, "key");
    if (T.mode == M_TXN)
        ck_assert_int_eq(h2o_db_begin(T.s, on_result, &T.begin), 0);
    if (T.mode == M_BEHIND)
        ck_assert_int_eq(h2o_db_query(T.s, "SELECT before", 0, NULL, on_result, &T.before), 0);
    if (T.mode == M_WAITS) {
        /* another session holds the only connection with a transaction: the stream waits for it */
        h2o_db_session_t *o = h2o_db_session_open(&T.ctx, "key");
        ck_assert_int_eq(h2o_db_begin(o, on_result, &T.before), 0);
        ck_assert_int_eq(h2o_db_rollback(o, on_result, &T.commit), 0);
        ck_assert_int_eq(h2o_db_query_rows(T.s, "SELECT s", 0, NULL, on_row, on_done, NULL), 0);
        --T.in_api;
        run_until(stream_over);
        h2o_db_session_close(o);
        return;
    }
    ck_assert_int_eq(h2o_db_query_rows(T.s, "SELECT s", 0, NULL, on_row, on_done, NULL), 0);
    if (T.mode == M_TXN)
        ck_assert_int_eq(h2o_db_commit(T.s, on_result, &T.commit), 0);
    --T.in_api;
}

static void check_outcome(const struct fault *f, char *why, size_t size)
{
    size_t n = 0;
#define PROBLEM(...) (n += snprintf(why + n, n < size ? size - n : 0, __VA_ARGS__))
    if (T.closed && T.mode != M_CLOSE_IN_ROW && T.mode != M_CLOSE_PAUSED && !f->stalls && T.done == 0)
        PROBLEM("the stream never ended; ");
    if (!T.closed && T.done != 1)
        PROBLEM("on_done ran %d times; ", T.done);
    if (T.closed && T.done > 1)
        PROBLEM("on_done ran %d times; ", T.done);
    if (T.done_in_api || T.before.in_api || T.commit.in_api)
        PROBLEM("a callback ran inside an h2o_db_* call; ");
    if (T.bad_rows)
        PROBLEM("%d bad rows (not one row \"s\", or inside a call); ", T.bad_rows);
    if (T.rows_while_paused || T.rows_after_done)
        PROBLEM("%d rows while paused, %d after on_done; ", T.rows_while_paused, T.rows_after_done);
    if (T.rows > FD_STREAM_ROWS)
        PROBLEM("%d rows of %d; ", T.rows, FD_STREAM_ROWS);
    int full = T.mode == M_PLAIN || T.mode == M_PAUSE || T.mode == M_TXN || T.mode == M_BEHIND || T.mode == M_WAITS;
    if (f->rule.step == FD_NUM_STEPS && !f->nocancel && !T.closed) {
        if (T.status != H2O_DB_OK)
            PROBLEM("failed with %s without a fault; ", T.sqlstate);
        if (full && T.rows != FD_STREAM_ROWS)
            PROBLEM("%d rows of %d without a fault; ", T.rows, FD_STREAM_ROWS);
        if (T.mode == M_STOP && T.rows != 2)
            PROBLEM("%d rows after a stop at the 2nd; ", T.rows);
    }
    if (f->fails && full && T.done && T.status == H2O_DB_OK)
        PROBLEM("answered OK despite the fault; ");
#undef PROBLEM
}

START_TEST(test_stream_under_fault)
{
    const struct fault *f = faults + _i / M_NUM;
    int mode = _i % M_NUM;
    setup(f, mode);
    stalls = f->stalls;
    issue();
    ck_assert_msg(run_until(stream_over_or_stuck), "%s × %s: hangs", f->name, mode_names[mode]);
    if (!stream_over())
        close_session(); /* paused for good, or stalled: the request ends */
    char why[1024] = "";
    check_outcome(f, why, sizeof(why));
    if (T.mode == M_TXN)
        run_until(txn_over);
    close_session();
    /* the pool heals: the faults go, what stalls goes on, and the next statement is served */
    fd_clear_rules();
    fd_release();
    ck_assert_msg(run_until(pool_quiet), "%s × %s: the pool never became quiet", f->name, mode_names[mode]);
    /* (after failed connects the pool fails fast until its back-off has passed: ask again) */
    double deadline = now_ms() + 10000 * th_time_factor();
    do {
        T.other.runs = 0;
        h2o_db_session_t *o = h2o_db_session_open(&T.ctx, "key");
        ck_assert_int_eq(h2o_db_query(o, "SELECT after", 0, NULL, on_result, &T.other), 0);
        ck_assert_msg(run_until(other_answered), "%s × %s: the next statement was never answered", f->name, mode_names[mode]);
        h2o_db_session_close(o);
        uv_run(&T.loop, UV_RUN_ONCE);
    } while (T.other.status == H2O_DB_UNAVAILABLE && now_ms() < deadline);
    ck_assert_msg(T.other.status == H2O_DB_OK, "%s × %s: the next statement answered %d", f->name, mode_names[mode],
                  T.other.status);
    ck_assert(run_until(pool_quiet));
    char pool_why[512];
    if (fd_check_pool(pool(), pool_why, sizeof(pool_why)) != 0)
        snprintf(why + strlen(why), sizeof(why) - strlen(why), "pool: %s", pool_why);
    if (fd_stats.violations != 0)
        snprintf(why + strlen(why), sizeof(why) - strlen(why), "driver contract: %s", fd_stats.violation);
    ck_assert_msg(why[0] == '\0', "%s × %s: %s", f->name, mode_names[mode], why);
    teardown();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("core_stream");
    TCase *tc = tcase_create("faults");
    tcase_set_timeout(tc, 120 * th_time_factor());
    tcase_add_loop_test(tc, test_stream_under_fault, 0, NFAULTS * M_NUM);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
