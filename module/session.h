/*
 * Sessions and statements. A session belongs to one request (or, for work
 * outside requests, to its opener) and one bind; it holds no connection until
 * its first statement. Statements are "ops": queued on the session, placed on a
 * connection by the pool, answered through their callback.
 */
#ifndef h2o_db_session_h
#define h2o_db_session_h

#include "h2o_db.h"
#include "pool.h"
#include "thread.h"

typedef enum {
    H2O_DB_OP_QUERY,
    H2O_DB_OP_BEGIN,
    H2O_DB_OP_COMMIT,   /* sql may replace "COMMIT" (e.g. COMMIT PREPARED '...'); unpins when answered */
    H2O_DB_OP_ROLLBACK, /* likewise */
    H2O_DB_OP_BARRIER   /* never sent: answered once everything issued before it is answered */
} h2o_db_op_kind_t;

struct st_h2o_db_op_t {
    h2o_linklist_t link; /* session->pending, then (if answered without a connection) session->done */
    h2o_db_session_t *session;
    h2o_db_conn_t *conn; /* while in flight */
    size_t ring_index;   /* its place in conn->ring while in flight */
    h2o_db_op_kind_t kind;
    unsigned in_txn : 1;        /* issued between begin and commit/rollback */
    unsigned failed_commit : 1; /* a COMMIT of a failed transaction: sent as ROLLBACK, answered as an error */
    unsigned answered : 1;      /* for `done` ops: the result below is final */
    unsigned heap : 1;          /* malloc'd (a session outside a request): freed once answered or dropped */
    unsigned no_cache : 1;      /* one-off SQL (PREPARE TRANSACTION '...'): not for the statement cache */
    unsigned after_commit : 1;  /* issued while a commit across partitions runs: placed after it */
    const char *sql;
    size_t sql_len;
    size_t nparams;
    const char **params; /* NUL-terminated; NULL = SQL NULL */
    h2o_db_cb cb;
    void *data;
    h2o_timeout_entry_t timeout; /* statement-timeout while in flight */
    /* an answer made without the database (BUSY, UNAVAILABLE, ...) */
    h2o_db_status_t status;
    const char *sqlstate;
    const char *message;
    h2o_db_wire_t wire; /* what the driver is given when it is sent (pool.c fills it) */
};

struct st_h2o_db_session_t {
    h2o_db_bind_t *bind;
    h2o_db_pool_t *pool;
    h2o_db_reqstate_t *owner; /* NULL for a session outside a request */
    h2o_mem_pool_t *mem;      /* where its ops live */
    h2o_db_session_t *next;   /* the owner's other sessions */
    h2o_linklist_t pending;   /* not sent yet, in issue order */
    h2o_linklist_t done;      /* answered without the database; delivered later, in order */
    h2o_db_later_t deliver_later;
    size_t num_pending;
    size_t outstanding;           /* sent, not answered */
    h2o_db_conn_t *conn;          /* where the outstanding statements are */
    h2o_db_conn_t *pinned;        /* the connection of its transaction */
    unsigned txn_open : 1;        /* between h2o_db_begin and h2o_db_commit/rollback, at issue time */
    unsigned txn_failed : 1;      /* a statement of the current transaction failed */
    unsigned txn_lost : 1;        /* the transaction's connection broke */
    unsigned begin_in_flight : 1; /* its BEGIN is sent, not answered: the transaction's statements wait */
    unsigned released : 1;
    /* waiting for a connection: in pool->waiting or in a conn's waiters */
    h2o_linklist_t wait_link;
    h2o_timeout_entry_t wait_timeout;
    uint64_t pinned_at;
    /* partitions (binds: {TABLE: KEY}): the sessions h2o_db_session_for made, by partition index */
    h2o_db_session_t **children;
    h2o_db_session_t *parent;       /* for a partition session: the session it belongs to */
    h2o_db_session_t *touched;      /* partitions in the current transaction, in `binds:` order */
    h2o_db_session_t *touched_next; /* in its root's `touched` list */
    size_t partition_index;         /* its index in the parent's `binds:` */
    unsigned implicit_txn : 1;      /* its transaction was begun by its root's */
    unsigned leak_reported : 1;     /* leak-threshold said so already */
    h2o_db_status_t txn_status;     /* how the current transaction failed (with txn_failed) */
    char txn_sqlstate[6];
    unsigned heap : 1;                 /* a session outside a request (h2o_db_session_open) */
    struct st_h2o_db_commit_t *commit; /* a commit across partitions in progress */
    /* once set (the client left, or request-timeout ran out), every statement is answered so */
    unsigned aborted : 1;
    h2o_db_status_t abort_status;
    const char *abort_sqlstate, *abort_message;
    h2o_timeout_entry_t deadline; /* request-timeout, armed while the session waits for the database */
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

/* Called by the pool: the statement is answered; runs the callback (unless its request is gone)
 * and keeps the transaction state. Returns 0 if the session may be used afterwards, -1 if the
 * callback ended its request (the session is gone). */
int h2o_db_op_complete(h2o_db_op_t *op, h2o_db_result_t *result);

/* Answers an op without the database, later (in issue order with the session's other answers). */
void h2o_db_op_answer_later(h2o_db_op_t *op, h2o_db_status_t status, const char *sqlstate, const char *message);

/* Queues a statement without the public API's checks (for partition.c's commits). */
h2o_db_op_t *h2o_db_session_enqueue(h2o_db_session_t *s, h2o_db_op_kind_t kind, const char *sql, size_t nparams,
                                    const char *const *params, int in_txn, h2o_db_cb cb, void *data);

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
