/*
 * The fault driver (tests only): a driver.h backend with no database behind it, whose every step
 * a test can make succeed, fail or stall, for the N-th occurrence or every one. It answers
 * everything later from its own uv_timer (never inside open/send/cancel/close), logs every
 * statement it was sent and what became of it, counts connections, and checks the pool's side of
 * the contract (close once, no send on a connection that is not ready, ...).
 *
 * Its statements answer like a tiny PostgreSQL: `SELECT tag` (no FROM) gives one row {v: tag}
 * (streamed: FD_STREAM_ROWS rows, one at a time, pausing when the pool says so);
 * PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED, the decision table and
 * pg_prepared_xacts are simulated so that two-phase commits and their resolver can be checked.
 */
#ifndef h2o_db_fault_driver_h
#define h2o_db_fault_driver_h

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "pool.h"

typedef enum {
    FD_OPEN,   /* open(): FAIL is known at once (reported on the next turn, or after delay_ms); STALL */
    FD_SETUP,  /* the socket is up, the set-up (on-connect) fails with sqlstate, or stalls */
    FD_SEND,   /* send(): FAIL = the connection breaks on this write (08006); STALL = never answered */
    FD_RESULT, /* the answer of a statement: FAIL = an error with sqlstate; STALL; LOSE = the
                * connection is lost when this answer is due (the ones before it are answered) */
    FD_CANCEL, /* cancel(): OK interrupts (57014) and reports; STALL reports only when released;
                * FAIL reports without interrupting anything */
    FD_CLOSE,  /* close(): STALL = slow, frees after delay_ms */
    FD_NUM_STEPS
} fd_step_t;

typedef enum { FD_OK, FD_FAIL, FD_STALL, FD_LOSE } fd_mode_t;

typedef struct {
    fd_step_t step;
    unsigned nth; /* the N-th occurrence (1-based) of the step among those that match; 0 = every */
    fd_mode_t mode;
    const char *sqlstate; /* FAIL: the SQLSTATE (default 08001 for connects, 42000 for statements) */
    unsigned delay_ms;    /* OPEN FAIL: 0 = known inside open(); CLOSE STALL: how long */
    const char *match;    /* SEND / RESULT: only statements whose SQL starts with this count */
} fd_rule_t;

enum { FD_FATE_INFLIGHT, FD_FATE_OK, FD_FATE_ERROR, FD_FATE_LOST, FD_FATE_DROPPED };

/* One statement the pool sent. */
typedef struct {
    const void *session;
    void *data; /* the op's callback data */
    int kind;   /* h2o_db_wire_kind_t */
    char sql[96];
    unsigned conn_id;
    int fate;
    char sqlstate[6];
    uint64_t sent_seq, answered_seq; /* on fd_seq's clock */
    int stalled;
} fd_log_t;

#define FD_LOG_MAX     1024
#define FD_STREAM_ROWS 5 /* a streamed `SELECT tag` gives its tag this many times, one row at a time */
#define FD_MAX_RULES   4

typedef struct {
    unsigned opens, closes, frees, cancels, connected, failed;
    unsigned violations;
    char violation[512]; /* the first one */
    size_t nlog;
    fd_log_t log[FD_LOG_MAX];
    unsigned fired[FD_MAX_RULES];
} fd_stats_t;

extern fd_stats_t fd_stats;
extern const h2o_db_driver_t fd_driver;          /* with cancel */
extern const h2o_db_driver_t fd_driver_nocancel; /* cancel == NULL */

/* A clock of events: log entries, the driver's reports and the test's callbacks are ordered on it;
 * fd_seq() ticks it, fd_clock() reads it (it stands still while nothing happens). */
uint64_t fd_seq(void);
uint64_t fd_clock(void);

/* Forgets rules, counters, the log and the simulated database (between cases). */
void fd_reset(void);
/* Rules; the index of the added rule is returned (for fd_stats.fired). */
int fd_add_rule(const fd_rule_t *rule);
void fd_clear_rules(void);
/* What stalls goes on (opens connect, statements answer, cancels report); later steps follow
 * the rules in force. */
void fd_release(void);

/* Whether some live connection still has something to report (a stall counts). */
int fd_busy(void);
/* Connections of `bind` that open() made and close() was not called for. */
size_t fd_live(const h2o_db_bind_t *bind);
/* ... of those, the ones the driver reported failed (the pool must close them soon). */
size_t fd_failed_unclosed(void);
/* Whether conn is one of the driver's, open and not reported failed. */
int fd_conn_ok(const h2o_db_conn_t *conn);
/* Connections whose memory is not freed yet. */
size_t fd_allocated(void);

/* The simulated two-phase state: prepared transactions left, and whether the transaction ids
 * starting with `txn` ended both committed and rolled back somewhere (non-atomic). */
size_t fd_prepared_left(char *first, size_t size);
int fd_txn_mixed(void);
/* Gids committed with COMMIT PREPARED, rolled back with ROLLBACK PREPARED. */
unsigned fd_gids_committed(void);
unsigned fd_gids_rolled_back(void);

/* The log entry of the statement with callback data `data` (the last one), and how many. */
const fd_log_t *fd_log_find(const void *data, size_t *count);
/* Prints the log; sessions[i] is shown as session i. */
void fd_dump_log(FILE *out, const void *const *sessions, size_t nsessions);

/* The pool against the driver. Quiet: nothing connecting, waiting, pinned, in flight or cleaning.
 * fd_check_pool: the pool's counters match its lists, bind->total_conns and the driver's open
 * connections, it keeps none the driver failed or closed, and it is quiet; returns how many
 * problems it found, described in out. */
int fd_pool_quiet(h2o_db_pool_t *pool);
size_t fd_check_pool(h2o_db_pool_t *pool, char *out, size_t size);

/* ---- inside the fault driver (fault_driver.c, fault_twophase.c) ---- */

enum { FD_TXN_IDLE, FD_TXN_OPEN, FD_TXN_ABORTED };
typedef struct {
    size_t n;
    const char *column;
    const char *values[64];
} fd_rows_t;
/* Runs sql if it is a two-phase statement (else does nothing) on bind_id's simulated server, whose
 * connection is in transaction state *txn; NULL on success, else the SQLSTATE of the error. */
const char *fd_twophase_run(size_t bind_id, int *txn, const char *sql, const char *param, fd_rows_t *rows);
/* Forgets the prepared transactions and decisions. */
void fd_twophase_reset(void);

#endif
