/*
 * One transaction across partitions (binds: {TABLE: KEY}, docs/partitions.md).
 *
 * h2o_db_begin on the main session opens its transaction; the first statement
 * on a partition session (h2o_db_session_for) begins one there too (session.c).
 * Commit and rollback of the main session then run here, as a small state
 * machine over the participants — the main session first, then the partitions
 * in the order `binds:` lists them:
 *
 *   settle    wait until every statement issued so far is answered (a barrier
 *             per participant); if any statement of the transaction failed, or
 *             a rollback was asked for, roll back every participant.
 *   commit    (twophase: OFF) COMMIT the participants one after another, in that
 *             order. If one fails, the rest are rolled back and the answer says
 *             which committed: the commit is atomic only with twophase: ON.
 *   2PC       (twophase: ON, PostgreSQL only) PREPARE TRANSACTION on every
 *             participant; if one fails, ROLLBACK PREPARED the others; else record
 *             the decision (twophase.c) and COMMIT PREPARED everywhere.
 *
 * If the request ends half-way, the sessions roll back what is open; prepared
 * transactions are resolved in the background (twophase.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "result.h"
#include "session.h"
#include "pool.h"
#include "twophase.h"

enum { SETTLE, ROLLBACK_ALL, COMMIT_EACH, ROLLBACK_REST, PREPARE, DECIDE, COMMIT_PREPARED, ROLLBACK_PREPARED };

struct participant {
    struct st_h2o_db_commit_t *commit;
    h2o_db_session_t *s;
    char gid[128];
    int ok; /* the last step succeeded here */
    h2o_db_status_t status;
    char sqlstate[6];
};

typedef struct st_h2o_db_commit_t {
    h2o_db_session_t *root;
    h2o_db_cb cb;
    void *data;
    int rollback, twophase, phase;
    int resolve; /* a prepared transaction may be left behind: let twophase.c look later */
    size_t n, awaiting, next, failed;
    struct participant *p;
    char txn[96];
    char message[768];
} h2o_db_commit_t;

static void finish(h2o_db_commit_t *c, h2o_db_status_t status, const char *sqlstate)
{
    h2o_db_session_t *root = c->root;
    if (c->resolve && c->txn[0] != '\0')
        h2o_db_twophase_resolve_later(root->pool->thread, root->bind, c->txn);
    root->commit = NULL;
    for (h2o_db_session_t *p = root->touched, *next; p != NULL; p = next) {
        next = p->touched_next;
        p->touched_next = NULL;
    }
    root->touched = NULL;
    /* the result must not point into c, which is freed before the callback runs (the callback
     * may end the request, and with it anything that would free c later) */
    char message[sizeof(c->message)], state[6];
    snprintf(message, sizeof(message), "%s", c->message);
    snprintf(state, sizeof(state), "%s", sqlstate != NULL ? sqlstate : "XX000");
    h2o_db_result_t r;
    if (status == H2O_DB_OK)
        h2o_db_result_init_ok(&r, 0);
    else
        h2o_db_result_init_error(&r, status, state, message);
    h2o_db_cb cb = c->cb;
    void *data = c->data;
    free(c->p);
    free(c);
    /* what was issued after the commit began goes now */
    if (root->place.num_pending != 0)
        h2o_db_pool_pump(&root->place);
    for (size_t i = 0; root->children != NULL && i < root->bind->partitions.size; ++i)
        if (root->children[i] != NULL && root->children[i]->place.num_pending != 0)
            h2o_db_pool_pump(&root->children[i]->place);
    cb(&r, data);
}

static void record(struct participant *p, h2o_db_result_t *r)
{
    p->ok = h2o_db_result_status(r) == H2O_DB_OK;
    if (!p->ok) {
        p->status = h2o_db_result_status(r);
        snprintf(p->sqlstate, sizeof(p->sqlstate), "%s", h2o_db_result_sqlstate(r));
        /* answered without the database's word (connection lost, client gone, timeout): the
         * statement may still have run there */
        if (p->commit->phase >= PREPARE && p->status != H2O_DB_SQL_ERROR)
            p->commit->resolve = 1;
    }
}

/* "sa_main, audit" for participants [from, to) with ok == want (want < 0: all) */
static void list_keys(h2o_db_commit_t *c, char *buf, size_t size, size_t from, size_t to)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = from; i < to && len < size; ++i)
        len += snprintf(buf + len, size - len, "%s%s", len != 0 ? ", " : "", c->p[i].s->bind->key);
    if (len == 0)
        snprintf(buf, size, "none");
}

static void issue(h2o_db_commit_t *c, struct participant *p, h2o_db_op_kind_t kind, const char *sql, int no_cache, h2o_db_cb cb)
{
    int flags = (kind != H2O_DB_OP_BARRIER ? H2O_DB_ENQ_IN_TXN : 0) | (no_cache ? H2O_DB_ENQ_NO_CACHE : 0);
    h2o_db_session_enqueue(p->s, kind, sql, 0, NULL, flags, cb, p);
}

static void on_rolled_back(h2o_db_result_t *r, void *data);
static void on_committed(h2o_db_result_t *r, void *data);
static void on_prepared(h2o_db_result_t *r, void *data);
static void on_decided(h2o_db_result_t *r, void *data);
static void on_commit_prepared(h2o_db_result_t *r, void *data);

static void rollback_all(h2o_db_commit_t *c, size_t from, int phase)
{
    c->phase = phase;
    c->awaiting = c->n - from;
    for (size_t i = from; i < c->n; ++i) {
        struct participant *p = c->p + i;
        char sql[192];
        const char *stmt = NULL;
        if (phase == ROLLBACK_PREPARED && p->ok) {
            snprintf(sql, sizeof(sql), "ROLLBACK PREPARED '%s'", p->gid);
            stmt = sql;
        }
        issue(c, p, H2O_DB_OP_ROLLBACK, stmt, stmt != NULL, on_rolled_back);
    }
}

static void commit_next(h2o_db_commit_t *c)
{
    issue(c, c->p + c->next, H2O_DB_OP_COMMIT, NULL, 0, on_committed);
}

static void on_settled(h2o_db_result_t *r, void *data)
{
    struct participant *p = data;
    h2o_db_commit_t *c = p->commit;
    if (--c->awaiting != 0)
        return;
    for (size_t i = 0; i < c->n && !c->rollback; ++i) {
        if (c->p[i].s->txn_failed) {
            c->failed = i;
            c->p[i].status = c->p[i].s->txn_status;
            snprintf(c->p[i].sqlstate, sizeof(c->p[i].sqlstate), "%s", c->p[i].s->txn_sqlstate);
            snprintf(c->message, sizeof(c->message),
                     "the transaction failed on `%s` (SQLSTATE %s); it was rolled back on every partition", c->p[i].s->bind->key,
                     c->p[i].sqlstate);
            rollback_all(c, 0, ROLLBACK_ALL);
            return;
        }
    }
    if (c->rollback) {
        rollback_all(c, 0, ROLLBACK_ALL);
    } else if (c->twophase) {
        c->phase = PREPARE;
        c->awaiting = c->n;
        h2o_db_twophase_new_txn(c->root->bind, c->txn, sizeof(c->txn));
        for (size_t i = 0; i < c->n; ++i) {
            char sql[192];
            snprintf(c->p[i].gid, sizeof(c->p[i].gid), "%s_%zu", c->txn, i);
            snprintf(sql, sizeof(sql), "PREPARE TRANSACTION '%s'", c->p[i].gid);
            issue(c, c->p + i, H2O_DB_OP_QUERY, sql, 1, on_prepared);
        }
    } else {
        c->phase = COMMIT_EACH;
        c->next = 0;
        commit_next(c);
    }
}

static void ignore_result(h2o_db_result_t *r, void *data)
{
}

static void on_rolled_back(h2o_db_result_t *r, void *data)
{
    struct participant *p = data;
    h2o_db_commit_t *c = p->commit;
    if (--c->awaiting != 0)
        return;
    switch (c->phase) {
    case ROLLBACK_ALL:
        if (c->rollback && c->message[0] == '\0')
            finish(c, H2O_DB_OK, NULL);
        else
            finish(c, c->p[c->failed].status == H2O_DB_OK ? H2O_DB_SQL_ERROR : c->p[c->failed].status, c->p[c->failed].sqlstate);
        break;
    case ROLLBACK_REST:
    case ROLLBACK_PREPARED:
        finish(c, c->p[c->failed].status == H2O_DB_OK ? H2O_DB_SQL_ERROR : c->p[c->failed].status, c->p[c->failed].sqlstate);
        break;
    }
}

static void on_committed(h2o_db_result_t *r, void *data)
{
    struct participant *p = data;
    h2o_db_commit_t *c = p->commit;
    record(p, r);
    if (p->ok) {
        if (++c->next < c->n)
            commit_next(c);
        else
            finish(c, H2O_DB_OK, NULL);
        return;
    }
    c->failed = c->next;
    char committed[256], rolled_back[256];
    list_keys(c, committed, sizeof(committed), 0, c->next);
    list_keys(c, rolled_back, sizeof(rolled_back), c->next + 1, c->n);
    snprintf(c->message, sizeof(c->message), "COMMIT failed on `%s` (SQLSTATE %s): committed: %s; rolled back: %s", p->s->bind->key,
             p->sqlstate, committed, rolled_back);
    if (c->next + 1 == c->n) {
        finish(c, p->status, p->sqlstate);
        return;
    }
    rollback_all(c, c->next + 1, ROLLBACK_REST);
}

static void on_prepared(h2o_db_result_t *r, void *data)
{
    struct participant *p = data;
    h2o_db_commit_t *c = p->commit;
    record(p, r);
    if (!p->ok && c->message[0] == '\0') {
        c->failed = (size_t)(p - c->p);
        snprintf(c->message, sizeof(c->message),
                 "two-phase commit: PREPARE TRANSACTION failed on `%s` (SQLSTATE %s); rolled back on every partition",
                 p->s->bind->key, p->sqlstate);
    }
    if (--c->awaiting != 0)
        return;
    if (c->message[0] != '\0') {
        rollback_all(c, 0, ROLLBACK_PREPARED);
        return;
    }
    /* every participant is prepared: record the decision, then commit them */
    c->phase = DECIDE;
    const char *params[] = {c->txn};
    h2o_db_session_enqueue(c->root, H2O_DB_OP_QUERY, "INSERT INTO " H2O_DB_TWOPHASE_TABLE " (txn) VALUES ($1)", 1, params, 0,
                           on_decided, c->p);
}

static void on_decided(h2o_db_result_t *r, void *data)
{
    struct participant *p = data;
    h2o_db_commit_t *c = p->commit;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        record(p, r);
        c->failed = 0;
        snprintf(c->message, sizeof(c->message),
                 "two-phase commit: cannot record the decision in " H2O_DB_TWOPHASE_TABLE " (SQLSTATE %s); rolled back on every "
                 "partition",
                 p->sqlstate);
        for (size_t i = 0; i < c->n; ++i)
            c->p[i].ok = 1; /* all prepared */
        rollback_all(c, 0, ROLLBACK_PREPARED);
        return;
    }
    c->phase = COMMIT_PREPARED;
    c->awaiting = c->n;
    for (size_t i = 0; i < c->n; ++i) {
        char sql[192];
        snprintf(sql, sizeof(sql), "COMMIT PREPARED '%s'", c->p[i].gid);
        issue(c, c->p + i, H2O_DB_OP_COMMIT, sql, 1, on_commit_prepared);
    }
}

static void on_commit_prepared(h2o_db_result_t *r, void *data)
{
    struct participant *p = data;
    h2o_db_commit_t *c = p->commit;
    record(p, r);
    if (--c->awaiting != 0)
        return;
    size_t failed = c->n;
    for (size_t i = 0; i < c->n; ++i)
        if (!c->p[i].ok && failed == c->n)
            failed = i;
    if (failed == c->n) {
        /* done: forget the decision (sent before the callback, so that it survives the request) */
        const char *params[] = {c->txn};
        h2o_db_session_enqueue(c->root, H2O_DB_OP_QUERY, "DELETE FROM " H2O_DB_TWOPHASE_TABLE " WHERE txn = $1", 1, params, 0,
                               ignore_result, NULL);
        finish(c, H2O_DB_OK, NULL);
        return;
    }
    snprintf(c->message, sizeof(c->message),
             "two-phase commit: the commit is decided and recorded, but COMMIT PREPARED failed on `%s` (SQLSTATE %s); it is "
             "completed in the background or when h2o-db next starts",
             c->p[failed].s->bind->key, c->p[failed].sqlstate);
    c->resolve = 1;
    finish(c, H2O_DB_UNAVAILABLE, c->p[failed].sqlstate);
}

int h2o_db_partition_commit(h2o_db_session_t *root, int rollback, h2o_db_cb cb, void *data)
{
    h2o_db_commit_t *c = calloc(1, sizeof(*c));
    c->root = root;
    c->cb = cb;
    c->data = data;
    c->rollback = rollback;
    c->twophase = root->bind->twophase && !rollback;
    c->n = 1;
    for (h2o_db_session_t *p = root->touched; p != NULL; p = p->touched_next)
        ++c->n;
    c->p = calloc(c->n, sizeof(*c->p));
    c->p[0] = (struct participant){c, root};
    size_t i = 1;
    for (h2o_db_session_t *p = root->touched; p != NULL; p = p->touched_next)
        c->p[i++] = (struct participant){c, p};
    for (i = 0; i < c->n; ++i) {
        c->p[i].s->txn_open = 0;
        c->p[i].s->implicit_txn = 0;
    }
    root->commit = c;
    c->phase = SETTLE;
    c->awaiting = c->n;
    for (i = 0; i < c->n; ++i)
        issue(c, c->p + i, H2O_DB_OP_BARRIER, NULL, 0, on_settled);
    return 0;
}

void h2o_db_partition_release(h2o_db_session_t *root)
{
    h2o_db_commit_t *c = root->commit;
    root->commit = NULL;
    if (c == NULL)
        return;
    /* the sessions roll back whatever is open; prepared transactions outlive them */
    if (c->phase == PREPARE || c->phase == DECIDE || c->phase == COMMIT_PREPARED || c->phase == ROLLBACK_PREPARED)
        h2o_db_twophase_resolve_later(root->pool->thread, root->bind, c->txn);
    free(c->p);
    free(c);
}
