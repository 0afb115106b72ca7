/*
 * Two-phase commit: transaction ids, start-up checks and recovery, and the
 * background clean-up of a commit whose request ended (see twophase.h).
 */
#include <libpq-fe.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "session.h"
#include "twophase.h"

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; *s; ++s) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Stable over restarts of one deployment: host, config file, bind key. */
static void instance_id(h2o_db_bind_t *bind, char *buf, size_t size)
{
    const char *env = getenv("H2O_DB_INSTANCE");
    if (env != NULL && *env != '\0') {
        size_t n = 0;
        for (const char *p = env; *p && n + 1 < size && n < 16; ++p)
            if ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'))
                buf[n++] = *p;
        buf[n] = '\0';
        if (n != 0)
            return;
    }
    char host[256] = "", path[PATH_MAX];
    gethostname(host, sizeof(host) - 1);
    if (realpath(bind->filename, path) == NULL)
        snprintf(path, sizeof(path), "%s", bind->filename);
    uint64_t h = fnv(fnv(fnv(0xcbf29ce484222325ULL, host), path), bind->key);
    snprintf(buf, size, "%08x", (unsigned)(h ^ (h >> 32)));
}

static void prefix_of(h2o_db_bind_t *bind, char *buf, size_t size)
{
    char inst[24];
    instance_id(bind, inst, sizeof(inst));
    snprintf(buf, size, "h2o_db_%s_", inst);
}

void h2o_db_twophase_new_txn(h2o_db_bind_t *bind, char *buf, size_t size)
{
    static uint64_t counter;
    char prefix[64];
    prefix_of(bind, prefix, sizeof(prefix));
    uint64_t n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    snprintf(buf, size, "%s%x_%llx", prefix, (unsigned)getpid(), (unsigned long long)n);
}

/* Our transaction ids hold only [a-z0-9_]: safe to put between quotes. */
static int safe_gid(const char *gid)
{
    return gid[0] != '\0' && strspn(gid, "abcdefghijklmnopqrstuvwxyz0123456789_") == strlen(gid) && strlen(gid) < 190;
}

/* ---- start-up ---- */

static void ignore_notice(void *arg, const char *message)
{
}

static PGconn *connect_blocking(h2o_db_bind_t *bind)
{
    const char *keys[] = {"dbname", "fallback_application_name", bind->password != NULL ? "password" : NULL, NULL};
    const char *values[] = {bind->url.conninfo, "h2o-db", bind->password, NULL};
    PGconn *pg = PQconnectdbParams(keys, values, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pg));
        msg[strcspn(msg, "\n")] = '\0';
        fprintf(stderr, "h2o-db: [%s] twophase: cannot connect to %s: %s\n", bind->key, bind->url.display, msg);
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, ignore_notice, NULL);
    return pg;
}

static int exec_ok(PGconn *pg, h2o_db_bind_t *bind, const char *sql, int nparams, const char *const *params, PGresult **out)
{
    PGresult *res = PQexecParams(pg, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        fprintf(stderr, "h2o-db: [%s] twophase: %s failed: %s\n", bind->key, sql, msg != NULL ? msg : "error");
        PQclear(res);
        return -1;
    }
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
    return 0;
}

/* The prefixes this process has recovered (with remember = 1: adds `prefix`); whether it was there. */
static int recovered(const char *prefix, int remember)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static H2O_VECTOR(char *) done;
    int found = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < done.size && !found; ++i)
        found = strcmp(done.entries[i], prefix) == 0;
    if (!found && remember) {
        h2o_vector_reserve(NULL, &done, done.size + 1);
        done.entries[done.size++] = strdup(prefix);
    }
    pthread_mutex_unlock(&lock);
    return found;
}

int h2o_db_twophase_prepare(h2o_db_bind_t *bind)
{
    size_t n = 1 + bind->partitions.size;
    h2o_db_bind_t **binds = calloc(n, sizeof(*binds));
    PGconn **conns = calloc(n, sizeof(*conns));
    int ret = -1;
    char prefix[64];
    prefix_of(bind, prefix, sizeof(prefix));
    binds[0] = bind;
    for (size_t i = 0; i < bind->partitions.size; ++i)
        binds[i + 1] = bind->partitions.entries[i].bind;

    for (size_t i = 0; i < n; ++i) {
        if ((conns[i] = connect_blocking(binds[i])) == NULL)
            goto Exit;
        PGresult *res;
        if (exec_ok(conns[i], binds[i], "SELECT current_setting('max_prepared_transactions')::int", 0, NULL, &res) != 0)
            goto Exit;
        int max = atoi(PQgetvalue(res, 0, 0));
        PQclear(res);
        if (max <= 0) {
            fprintf(stderr,
                    "%s:%zu:%zu: db.bind `%s`: twophase: ON needs max_prepared_transactions > 0 on %s (it is %d; set it in "
                    "postgresql.conf and restart PostgreSQL)\n",
                    bind->filename, bind->line + 1, bind->column + 1, bind->key, binds[i]->url.display, max);
            goto Exit;
        }
    }
    if (exec_ok(conns[0], bind,
                "CREATE TABLE IF NOT EXISTS " H2O_DB_TWOPHASE_TABLE
                " (txn text PRIMARY KEY, decided_at timestamptz NOT NULL DEFAULT now())",
                0, NULL, NULL) != 0)
        goto Exit;

    /* this instance's leftovers: commit what was decided, roll back the rest; once per process
     * (after a reload, what carries the prefix belongs to the previous config's live requests) */
    if (recovered(prefix, 0)) {
        ret = 0;
        goto Exit;
    }
    const char *prefix_param[] = {prefix};
    for (size_t i = 0; i < n; ++i) {
        PGresult *gids;
        if (exec_ok(conns[i], binds[i],
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND left(gid, length($1)) = $1", 1,
                    prefix_param, &gids) != 0)
            goto Exit;
        for (int row = 0; row < PQntuples(gids); ++row) {
            const char *gid = PQgetvalue(gids, row, 0);
            if (!safe_gid(gid))
                continue;
            char txn[192], sql[256];
            snprintf(txn, sizeof(txn), "%s", gid);
            char *us = strrchr(txn, '_');
            if (us != NULL)
                *us = '\0';
            const char *txn_param[] = {txn};
            PGresult *decided;
            if (exec_ok(conns[0], bind, "SELECT 1 FROM " H2O_DB_TWOPHASE_TABLE " WHERE txn = $1", 1, txn_param, &decided) != 0) {
                PQclear(gids);
                goto Exit;
            }
            int commit = PQntuples(decided) > 0;
            PQclear(decided);
            snprintf(sql, sizeof(sql), "%s PREPARED '%s'", commit ? "COMMIT" : "ROLLBACK", gid);
            if (exec_ok(conns[i], binds[i], sql, 0, NULL, NULL) == 0)
                fprintf(stderr, "h2o-db: [%s] twophase recovery: %s prepared transaction %s on %s\n", bind->key,
                        commit ? "committed" : "rolled back", gid, binds[i]->url.display);
        }
        PQclear(gids);
    }
    if (exec_ok(conns[0], bind, "DELETE FROM " H2O_DB_TWOPHASE_TABLE " WHERE left(txn, length($1)) = $1", 1, prefix_param, NULL) !=
        0)
        goto Exit;
    recovered(prefix, 1);
    ret = 0;
Exit:
    for (size_t i = 0; i < n; ++i)
        if (conns[i] != NULL)
            PQfinish(conns[i]);
    free(conns);
    free(binds);
    return ret;
}

/* ---- in the background, after a request ended half-way ---- */

static const uint64_t attempt_delays_ms[] = {500, 3000, 20000};

struct resolver {
    h2o_db_disposer_t disposer; /* the thread's end stops it */
    h2o_linklist_t steps;       /* callbacks' data still out */
    h2o_db_thread_t *thread;
    h2o_db_bind_t *bind;
    char txn[96];
    size_t attempt;
    uv_timer_t timer;
    int decided;
    size_t awaiting;
    size_t n;
    h2o_db_session_t **sessions;
};

struct step {
    h2o_linklist_t link; /* r->steps */
    struct resolver *r;
    size_t index;
};

static struct step *new_step(struct resolver *r, size_t index)
{
    struct step *st = calloc(1, sizeof(*st));
    st->r = r;
    st->index = index;
    h2o_linklist_insert(&r->steps, &st->link);
    return st;
}

static void free_step(struct step *st)
{
    h2o_linklist_unlink(&st->link);
    free(st);
}

static void attempt_done(struct resolver *r);

static void on_resolved_one(h2o_db_result_t *result, void *data)
{
    struct step *st = data;
    struct resolver *r = st->r;
    free_step(st);
    if (--r->awaiting == 0)
        attempt_done(r);
}

static void on_gids(h2o_db_result_t *result, void *data)
{
    struct step *st = data;
    struct resolver *r = st->r;
    if (h2o_db_result_status(result) == H2O_DB_OK) {
        for (size_t row = 0; row < h2o_db_result_rows(result); ++row) {
            const char *gid = h2o_db_result_value(result, row, 0, NULL);
            if (gid == NULL || !safe_gid(gid))
                continue;
            char sql[256];
            snprintf(sql, sizeof(sql), "%s PREPARED '%s'", r->decided ? "COMMIT" : "ROLLBACK", gid);
            struct step *next = new_step(r, st->index);
            ++r->awaiting;
            h2o_db_session_enqueue(r->sessions[st->index], H2O_DB_OP_QUERY, sql, 0, NULL, H2O_DB_ENQ_NO_CACHE, on_resolved_one,
                                   next);
            fprintf(stderr, "h2o-db: [%s] twophase: %s prepared transaction %s left by an ended request\n", r->bind->key,
                    r->decided ? "committing" : "rolling back", gid);
        }
    }
    free_step(st);
    if (--r->awaiting == 0)
        attempt_done(r);
}

static void query_gids(struct resolver *r)
{
    r->awaiting = r->n;
    for (size_t i = 0; i < r->n; ++i) {
        struct step *st = new_step(r, i);
        const char *params[] = {r->txn};
        h2o_db_session_enqueue(
            r->sessions[i], H2O_DB_OP_QUERY,
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND left(gid, length($1)) = $1", 1, params, 0,
            on_gids, st);
    }
}

static void on_decision(h2o_db_result_t *result, void *data)
{
    struct step *st = data;
    struct resolver *r = st->r;
    free_step(st);
    r->decided = h2o_db_result_status(result) == H2O_DB_OK && h2o_db_result_rows(result) > 0;
    query_gids(r);
}

static void on_timer(uv_timer_t *timer)
{
    struct resolver *r = timer->data;
    r->sessions = calloc(r->n, sizeof(*r->sessions));
    r->sessions[0] = h2o_db_session_open_bind(r->thread, r->bind);
    for (size_t i = 1; i < r->n; ++i)
        r->sessions[i] = h2o_db_session_open_bind(r->thread, r->bind->partitions.entries[i - 1].bind);
    struct step *st = new_step(r, 0);
    const char *params[] = {r->txn};
    h2o_db_session_enqueue(r->sessions[0], H2O_DB_OP_QUERY, "SELECT 1 FROM " H2O_DB_TWOPHASE_TABLE " WHERE txn = $1", 1, params, 0,
                           on_decision, st);
}

static void free_resolver(uv_handle_t *handle)
{
    free(handle->data);
}

/* The thread ends while the resolver waits or works: stop it (what it did not resolve stays for
 * the next start-up's recovery). */
static void on_thread_dispose(h2o_db_disposer_t *disposer)
{
    struct resolver *r = H2O_STRUCT_FROM_MEMBER(struct resolver, disposer, disposer);
    if (r->sessions != NULL) {
        for (size_t i = 0; i < r->n; ++i)
            h2o_db_session_close(r->sessions[i]); /* none of their callbacks runs afterwards */
        free(r->sessions);
        r->sessions = NULL;
    }
    while (!h2o_linklist_is_empty(&r->steps))
        free_step(H2O_STRUCT_FROM_MEMBER(struct step, link, r->steps.next));
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, free_resolver);
}

static void close_sessions_later(h2o_db_later_t *later);

struct closer {
    h2o_db_later_t later;
    h2o_db_session_t **sessions;
    size_t n;
};

static void close_sessions_later(h2o_db_later_t *later)
{
    struct closer *c = (struct closer *)later;
    for (size_t i = 0; i < c->n; ++i)
        h2o_db_session_close(c->sessions[i]);
    free(c->sessions);
    free(c);
}

static void attempt_done(struct resolver *r)
{
    /* the sessions are closed on the next iteration: we are inside one of their callbacks */
    struct closer *c = calloc(1, sizeof(*c));
    c->later.cb = close_sessions_later;
    c->sessions = r->sessions;
    c->n = r->n;
    h2o_db_later(r->thread, &c->later);
    r->sessions = NULL;
    if (++r->attempt < sizeof(attempt_delays_ms) / sizeof(attempt_delays_ms[0])) {
        uv_timer_start(&r->timer, on_timer, attempt_delays_ms[r->attempt], 0);
        return;
    }
    h2o_db_on_dispose_cancel(&r->disposer);
    uv_close((uv_handle_t *)&r->timer, free_resolver);
}

void h2o_db_twophase_resolve_later(h2o_db_thread_t *thread, h2o_db_bind_t *bind, const char *txn)
{
    if (txn[0] == '\0')
        return;
    struct resolver *r = calloc(1, sizeof(*r));
    r->thread = thread;
    r->bind = bind;
    r->n = 1 + bind->partitions.size;
    snprintf(r->txn, sizeof(r->txn), "%s", txn);
    h2o_linklist_init_anchor(&r->steps);
    r->disposer.cb = on_thread_dispose;
    h2o_db_on_dispose(thread, &r->disposer);
    uv_timer_init(thread->loop, &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, on_timer, attempt_delays_ms[0], 0);
}
