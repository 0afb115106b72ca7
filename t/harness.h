/*
 * Test harness shared by the Check suites: starts the real h2o-db binary on a
 * free loopback port with a config written by the test, talks HTTP/1.1 and
 * HTTP/2 to it with libcurl, and reaches the PostgreSQL that scripts/test
 * started (H2O_DB_TEST_PG) with libpq. Suites run in parallel on one PostgreSQL cluster:
 * th_run_suite gives each its own databases (h2o_test_NAME, h2o_test2_NAME for test_NAME).
 *
 * Config templates may use these placeholders:
 *   @PORT@   the port the server listens on
 *   @DIR@    the test's own temporary folder (the config file lives there)
 *   @BUILD@  the build folder (test handler objects live in @BUILD@/t/)
 *   @PG@     the PostgreSQL URL of the test database (postgresql://...)
 *   @PGDB2@  the URL of a second database on the same server
 */
#ifndef h2o_db_test_harness_h
#define h2o_db_test_harness_h

#include <check.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <sys/types.h>

/* Every check of the suites goes through these two (Check's macros call them by these names):
 * th_assert_failed cuts a failure's message to 3 kB, keeping its start and end (Check ends the
 * whole run on a message over 4 kB, hiding which check failed); th_mark_point skips a passing
 * check whose place is one of the last four recorded (a check inside a loop over a million rows
 * is recorded once instead of a million times, each of which Check writes and reads back). */
void th_assert_failed(const char *file, int line, const char *expr, const char *msg, ...)
    __attribute__((noreturn, format(printf, 4, 5)));
void th_mark_point(const char *file, int line);
#define _ck_assert_failed th_assert_failed
#define _mark_point       th_mark_point

typedef struct {
    pid_t pid;
    int port;
    char dir[1024];
    char conf_path[1100];
    char log_path[1100];
} th_server_t;

typedef struct {
    long status;
    long http_version; /* 11 or 2 */
    char *body;
    size_t body_len;
    char *headers; /* raw, lower-cased names */
    double seconds;
    int curl_error; /* 0 when a response arrived */
} th_response_t;

enum { TH_HTTP1 = 1, TH_HTTP2 = 2 /* h2c prior knowledge */, TH_HTTP2_UPGRADE = 3 };

/* A fresh temporary folder for this test (kept under $H2O_DB_TEST_TMP or /tmp). */
char *th_tmpdir(void);
/* The build folder (where h2o-db and the test objects are). */
const char *th_build_dir(void);
/* Writes `text` with placeholders expanded to DIR/NAME; returns the path (malloc'd). */
char *th_write_file(const char *dir, const char *name, const char *text, int port);
/* Expands placeholders; malloc'd. */
char *th_expand(const char *text, const char *dir, int port);
/* A loopback port nobody listens on right now, which no other suite of this run gets either (it is
 * reserved for the run): for a server to start, or as a port that stays closed. */
int th_free_port(void);

/* Whether something accepts TCP connections on 127.0.0.1:port now. */
int th_port_accepts(int port);

/* Starts h2o-db with the config template; waits until it accepts connections (or exits).
 * Returns 0 when serving; otherwise -1 with the log readable through th_server_log. */
int th_server_start(th_server_t *s, const char *conf_template);
/* Same, in a given folder (so other files written there can be named relatively). */
int th_server_start_in(th_server_t *s, const char *dir, const char *conf_template);
/* SIGTERM and wait (up to `timeout_ms`); returns the exit status, or -1 if it had to be killed. */
int th_server_stop(th_server_t *s, int timeout_ms);
/* Everything the server wrote to stderr so far; malloc'd. */
char *th_server_log(th_server_t *s);
/* How many times `text` appears in the server's log so far. */
int th_log_count(th_server_t *s, const char *text);
/* The URL http://127.0.0.1:PORT/PATH */
char *th_url(th_server_t *s, const char *path);

/* Runs `h2o-db ARGS -c FILE` where FILE holds the expanded template; returns the exit status and,
 * if output != NULL, what it printed (stdout and stderr). */
int th_run_h2o_db(const char *args, const char *conf_template, char **output);

/* One request. method NULL = GET; body NULL = none. Returns 0 when a response arrived. */
int th_http(th_response_t *res, int version, const char *method, const char *url, const char *body);
/* n requests at once (libcurl multi); res[i] answers urls[i]. */
void th_http_parallel(th_response_t *res, size_t n, int version, const char *const *urls);
/* The value of a response header (lower-case name), malloc'd, or NULL. */
char *th_header(const th_response_t *res, const char *name);
void th_response_free(th_response_t *res);

/* PostgreSQL URLs from scripts/test (H2O_DB_TEST_PG, H2O_DB_TEST_PG2); NULL when absent. */
const char *th_pg_url(void);
const char *th_pg_url2(void);
PGconn *th_pg_connect(const char *url);
/* Runs SQL on the test database (or fails the test); returns the first value of the first row, malloc'd, or NULL. */
char *th_pg(const char *sql);
char *th_pg_on(const char *url, const char *sql);
/* Runs a query returning one number on the test database. */
long th_pg_count(const char *sql);

/* printf into a new string (freed by the caller; the test fails on error). */
char *th_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* th_pg_count on a formatted query. */
long th_pg_countf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "PREFIX_PID_N": a name nobody else uses in the shared database; malloc'd. */
char *th_uniq(const char *prefix);

/* Milliseconds since some fixed point. */
double th_now_ms(void);
/* How much slower this build runs than an optimised one (H2O_DB_TEST_TIME_FACTOR, ≥ 1; 3 under ASan):
 * hang guards multiply their bounds by it. */
double th_time_factor(void);
/* Polls `cond` every 20 ms until it returns non-zero or `timeout_ms` × th_time_factor() passes;
 * returns 1 when it did, 0 on time-out. */
int th_wait_until(int (*cond)(void *), void *arg, int timeout_ms);

/* A TCP forwarder on a free loopback port to the server on 127.0.0.1:target (forwarder.c): it makes
 * a database look down, refusing or dropping connections, while the real (shared) one stays up. */
typedef struct th_forwarder th_forwarder_t;
enum { TH_FWD_RELAY, TH_FWD_DROP /* accept, then close at once: a server that dies in the handshake */ };
/* A forwarder that does not listen yet (connects to its port are refused). */
th_forwarder_t *th_forwarder_new(int target);
int th_forwarder_port(th_forwarder_t *f);
/* Starts listening, in `mode`. */
void th_forwarder_up(th_forwarder_t *f, int mode);
void th_forwarder_set_mode(th_forwarder_t *f, int mode);
/* Stops listening (connects are refused again) and cuts every relayed connection. */
void th_forwarder_down(th_forwarder_t *f);
void th_forwarder_free(th_forwarder_t *f);

/* Runs a suite the usual way (own databases, then th_run_checks); returns the process exit status. */
int th_run_suite(Suite *s);
/* Runs a suite's checks with no databases of its own; returns the process exit status (0 when
 * every check passed). */
int th_run_checks(Suite *s);

/* Fails the test when scripts/test did not start a PostgreSQL: a database test never passes without one. */
#define th_require_pg() ck_assert_msg(th_pg_url() != NULL, "no PostgreSQL: run the suite through scripts/test")

#endif
