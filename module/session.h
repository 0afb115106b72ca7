/*
 * Sessions and statements. A session belongs to one request (or, for work
 * outside requests, to its opener) and one bind; it holds no connection until
 * its first statement. Statements are "ops": each embeds the pool's statement
 * (pool.h), which the pool queues on the session's place, places on a connection
 * and hands back answered; the session then runs the op's callback.
 */
#ifndef h2o_db_session_h
#define h2o_db_session_h

#include "h2o_db.h"
#include "pool.h"
#include "thread.h"

typedef struct st_h2o_db_op_t h2o_db_op_t;

/* A statement of a session: what the pool places (stmt), and how it is answered. */
struct st_h2o_db_op_t {
    h2o_db_stmt_t stmt;       /* the pool's part (kind, SQL, parameters; pool.h) */
    h2o_linklist_t done_link; /* session->done: answered without the database, delivered later */
    h2o_db_session_t *session;
    unsigned answered : 1; /* for `done` ops: the answer below is final */
    unsigned heap : 1;     /* malloc'd (a session outside a request): freed once answered or dropped */
    h2o_db_cb cb;
    h2o_db_batch_cb batch_cb; /* instead of cb, for a statement of a batch */
    h2o_db_row_cb row_cb;     /* a streamed statement's rows (cb: its end) */
    size_t index;             /* ... its index in the batch */
    void *data;
    /* an answer made without the database (BUSY, UNAVAILABLE, ...) */
    h2o_db_status_t status;
    const char *sqlstate;
    const char *message;
};

struct st_h2o_db_session_t {
    h2o_db_bind_t *bind;
    h2o_db_pool_t *pool;
    h2o_db_place_t place;     /* the pool's record of it: queue, connection, transaction's connection */
    h2o_db_reqstate_t *owner; /* NULL for a session outside a request */
    h2o_mem_pool_t *mem;      /* where its ops live */
    h2o_db_session_t *next;   /* the owner's other sessions */
    h2o_linklist_t done;      /* answered without the database; delivered later, in order */
    h2o_db_later_t deliver_later;
    unsigned txn_open : 1;   /* between h2o_db_begin and h2o_db_commit/rollback, at issue time */
    unsigned txn_failed : 1; /* a statement of the current transaction failed (or its connection broke) */
    unsigned released : 1;
    /* partitions (binds: {TABLE: KEY}): the sessions h2o_db_session_for made, by partition index */
    h2o_db_session_t **children;
    h2o_db_session_t *parent;       /* for a partition session: the session it belongs to */
    h2o_db_session_t *touched;      /* partitions in the current transaction, in `binds:` order */
    h2o_db_session_t *touched_next; /* in its root's `touched` list */
    size_t partition_index;         /* its index in the parent's `binds:` */
    unsigned implicit_txn : 1;      /* its transaction was begun by its root's */
    h2o_db_status_t txn_status;     /* how the current transaction failed (with txn_failed) */
    char txn_sqlstate[6];
    unsigned heap : 1;                 /* a session outside a request (h2o_db_session_open) */
    struct st_h2o_db_commit_t *commit; /* a commit across partitions in progress */
    /* once set (the client left, or request-timeout ran out), every statement is answered so */
    unsigned aborted : 1;
    h2o_db_status_t abort_status;
    const char *abort_sqlstate, *abort_message;
    h2o_timeout_entry_t deadline; /* request-timeout, armed while the session waits for the database */
    unsigned issued : 1;          /* it has queued a statement */
    unsigned read_only : 1;       /* h2o_db_session_read_only on a bind with replicas (replica.c places it) */
};

/* A request's sessions: allocated in the request's pool, found through the thread's table. */
struct st_h2o_db_reqstate_t {
    h2o_req_t *req;
    h2o_db_thread_t *thread;
    h2o_db_session_t *sessions;
    /* HTTP/1: libh2o 2.2.5 does not read the socket while a handler works, so a client that
     * leaves goes unnoticed; client.c watches a dup() of the socket while statements wait */
    struct {
        h2o_timeout_entry_t soon; /* start watching if statements still wait 100 ms from now */
        uv_poll_t *poll;
        int fd;
        unsigned gone : 1;
    } client;
};

/* Whether a request still waits for the database (some session has statements pending). */
int h2o_db_reqstate_busy(h2o_db_reqstate_t *rs);

/* Answers everything the session has pending or in flight with `status`, now and from now on
 * (the transaction, if any, is rolled back). */
void h2o_db_session_abort(h2o_db_session_t *s, h2o_db_status_t status, const char *sqlstate, const char *message);

/* client.c */
void h2o_db_client_busy(h2o_db_reqstate_t *rs);
void h2o_db_client_idle(h2o_db_reqstate_t *rs);

/* Queues a statement without the public API's checks (for partition.c's commits and twophase.c's
 * resolvers); flags: */
enum { H2O_DB_ENQ_IN_TXN = 1, H2O_DB_ENQ_NO_CACHE = 2 };
void h2o_db_session_enqueue(h2o_db_session_t *s, h2o_db_op_kind_t kind, const char *sql, size_t nparams, const char *const *params,
                            int flags, h2o_db_cb cb, void *data);

/* The outermost session of a partition session (itself for a main session). */
static inline h2o_db_session_t *h2o_db_session_root(h2o_db_session_t *s)
{
    while (s->parent != NULL)
        s = s->parent;
    return s;
}

/* A session outside a request for any bind (partition.c's clean-up after a request ended). */
h2o_db_session_t *h2o_db_session_open_bind(h2o_db_thread_t *thread, h2o_db_bind_t *bind);

/* partition.c: commit / roll back a transaction that spans partitions; the root's release */
int h2o_db_partition_commit(h2o_db_session_t *root, int rollback, h2o_db_cb cb, void *data);
void h2o_db_partition_release(h2o_db_session_t *root);

#endif
