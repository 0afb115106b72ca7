/*
 * PostgreSQL: a connection from its start to the pipeline mode (postgres.c takes over there):
 *   resolve   host names go through uv_getaddrinfo (libpq would resolve them synchronously)
 *             and reach libpq as hostaddr=
 *   connect   PQconnectStartParams + PQconnectPoll driven by the uv_poll on PQsocket
 *             (re-created whenever libpq switches sockets, e.g. between hosts)
 *   setup     statement_timeout and on-connect, with the simple protocol
 * and the blocking start-up helpers, which connect the simple way (main thread, before any loop).
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/postgres.h"
#include "driver/resolve.h"

#define CONNECT_TIMEOUT_MS 10000

/* ---- resolve ---- */

static void resolve_next(h2o_db_pg_conn_t *c);
static void start_connect(h2o_db_pg_conn_t *c);
static void start_setup(h2o_db_pg_conn_t *c);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    h2o_db_pg_conn_t *c = req->data;
    if (--c->handles_open == 0) {
        /* closed while resolving */
        uv_freeaddrinfo(res);
        h2o_db_pg_free_conn(c);
        return;
    }
    if (c->phase == H2O_DB_PG_BROKEN) {
        uv_freeaddrinfo(res);
        return;
    }
    char addr[INET6_ADDRSTRLEN], msg[300];
    if (h2o_db_resolved_address(status, res, c->hosts[c->resolving], addr, sizeof(addr), msg, sizeof(msg)) != 0) {
        h2o_db_pg_fail(c, "08001", msg);
        return;
    }
    free(c->hostaddrs[c->resolving]);
    c->hostaddrs[c->resolving] = strdup(addr);
    ++c->resolving;
    resolve_next(c);
}

/* A host= entry libpq cannot take as it is: a name (not a unix socket folder, nor an address). */
static int needs_resolving(const char *h)
{
    return !(h[0] == '\0' || h[0] == '/' || h[0] == '@' || h2o_db_is_numeric_host(h));
}

static void resolve_next(h2o_db_pg_conn_t *c)
{
    for (; c->resolving < c->num_hosts; ++c->resolving) {
        if (!needs_resolving(c->hosts[c->resolving]))
            continue;
        c->gai.data = c;
        ++c->handles_open;
        if (h2o_db_resolve(c->super.thread->loop, &c->gai, on_resolved, c->hosts[c->resolving]) != 0) {
            --c->handles_open;
            h2o_db_pg_fail(c, "08001", "cannot start resolving the database host");
        }
        return;
    }
    start_connect(c);
}

/* Splits host= of the URL; returns 1 when some host name needs resolving. */
static int plan_resolve(h2o_db_pg_conn_t *c)
{
    PQconninfoOption *opts = PQconninfoParse(c->super.bind->url.conninfo, NULL);
    const char *host = NULL, *hostaddr = NULL;
    int need = 0;
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; ++o) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    if (host != NULL && *host != '\0' && (hostaddr == NULL || *hostaddr == '\0')) {
        for (const char *p = host;;) {
            size_t len = strcspn(p, ",");
            c->hosts = realloc(c->hosts, sizeof(char *) * (c->num_hosts + 1));
            c->hostaddrs = realloc(c->hostaddrs, sizeof(char *) * (c->num_hosts + 1));
            c->hosts[c->num_hosts] = strndup(p, len);
            c->hostaddrs[c->num_hosts] = strdup(h2o_db_is_numeric_host(c->hosts[c->num_hosts]) ? c->hosts[c->num_hosts] : "");
            if (needs_resolving(c->hosts[c->num_hosts]))
                need = 1;
            ++c->num_hosts;
            if (p[len] == '\0')
                break;
            p += len + 1;
        }
    }
    PQconninfoFree(opts);
    if (!need) {
        /* nothing to resolve: let libpq take host= as it is */
        for (size_t i = 0; i < c->num_hosts; ++i) {
            free(c->hosts[i]);
            free(c->hostaddrs[i]);
        }
        free(c->hosts);
        free(c->hostaddrs);
        c->hosts = c->hostaddrs = NULL;
        c->num_hosts = 0;
    }
    return need;
}

/* ---- connect ---- */

static void on_connect_timeout(uv_timer_t *timer)
{
    h2o_db_pg_conn_t *c = timer->data;
    h2o_db_pg_fail(c, "08001", "timed out while connecting to the database");
}

static char *join(char **items, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; ++i)
        len += strlen(items[i]) + 1;
    char *out = malloc(len), *p = out;
    for (size_t i = 0; i < n; ++i)
        p += sprintf(p, "%s%s", i != 0 ? "," : "", items[i]);
    *p = '\0';
    return out;
}

static void start_connect(h2o_db_pg_conn_t *c)
{
    h2o_db_bind_t *bind = c->super.bind;
    const char *keys[10], *values[10];
    size_t n = 0;
    char *hostaddr = NULL;
    /* notice a peer that vanished without closing (the URL may override these) */
    keys[n] = "keepalives", values[n++] = "1";
    keys[n] = "keepalives_idle", values[n++] = "30";
    keys[n] = "keepalives_interval", values[n++] = "10";
    keys[n] = "keepalives_count", values[n++] = "3";
    keys[n] = "dbname", values[n++] = bind->url.conninfo;
    keys[n] = "fallback_application_name", values[n++] = "h2o-db";
    if (c->hostaddrs != NULL) {
        hostaddr = join(c->hostaddrs, c->num_hosts);
        keys[n] = "hostaddr", values[n++] = hostaddr;
    }
    if (bind->password != NULL)
        keys[n] = "password", values[n++] = bind->password;
    keys[n] = NULL, values[n] = NULL;
    c->pg = PQconnectStartParams(keys, values, 1);
    free(hostaddr);
    c->phase = H2O_DB_PG_CONNECT;
    if (c->pg == NULL) {
        h2o_db_pg_fail(c, "08001", "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        h2o_db_pg_fail_from_libpq(c, "08001");
        return;
    }
    /* "as if PQconnectPoll had last returned PGRES_POLLING_WRITING" */
    h2o_db_pg_watch(c, UV_WRITABLE);
}

void h2o_db_pg_poll_connect(h2o_db_pg_conn_t *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        h2o_db_pg_watch(c, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        h2o_db_pg_watch(c, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        start_setup(c);
        break;
    default:
        h2o_db_pg_fail_from_libpq(c, "08001");
        break;
    }
}

/* ---- setup ---- */

static void enter_ready(h2o_db_pg_conn_t *c)
{
    if (!PQenterPipelineMode(c->pg)) {
        h2o_db_pg_fail_from_libpq(c, "08006");
        return;
    }
    c->phase = H2O_DB_PG_READY;
    uv_timer_stop(&c->connect_timer);
    h2o_db_pg_watch(c, UV_READABLE);
    c->super.cbs->connected(&c->super);
}

/* NOTICE and WARNING messages (e.g. "there is no transaction in progress") are not errors:
 * they would only flood the error log */
static void ignore_notice(void *arg, const char *message)
{
}

static void start_setup(h2o_db_pg_conn_t *c)
{
    h2o_db_bind_t *bind = c->super.bind;
    PQsetnonblocking(c->pg, 1);
    PQsetNoticeProcessor(c->pg, ignore_notice, NULL);
    char timeout_sql[64] = "";
    if (bind->pool.statement_timeout != 0)
        snprintf(timeout_sql, sizeof(timeout_sql), "SET statement_timeout = %llu;",
                 (unsigned long long)bind->pool.statement_timeout);
    if (timeout_sql[0] == '\0' && bind->on_connect == NULL) {
        enter_ready(c);
        return;
    }
    size_t len = strlen(timeout_sql) + (bind->on_connect != NULL ? strlen(bind->on_connect) : 0) + 1;
    char *sql = malloc(len);
    snprintf(sql, len, "%s%s", timeout_sql, bind->on_connect != NULL ? bind->on_connect : "");
    int ok = PQsendQuery(c->pg, sql);
    free(sql);
    if (!ok) {
        h2o_db_pg_fail_from_libpq(c, "08006");
        return;
    }
    c->phase = H2O_DB_PG_SETUP;
    h2o_db_pg_watch(c, PQflush(c->pg) == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

void h2o_db_pg_continue_setup(h2o_db_pg_conn_t *c, int events)
{
    if ((events & UV_WRITABLE) != 0 && PQflush(c->pg) == 0)
        h2o_db_pg_watch(c, UV_READABLE);
    if ((events & UV_READABLE) == 0)
        return;
    if (!PQconsumeInput(c->pg)) {
        h2o_db_pg_fail_from_libpq(c, "08006");
        return;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            enter_ready(c);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
            char msg[300];
            const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY),
                       *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            snprintf(msg, sizeof(msg), "on-connect failed: %s", primary != NULL ? primary : "error");
            PQclear(res);
            /* a broken setup statement is a configuration problem: report it as the database refusing */
            h2o_db_pg_fail(c, state != NULL ? state : "08006", msg);
            return;
        }
        PQclear(res);
    }
}

/* ---- open ---- */

void h2o_db_pg_connect(h2o_db_pg_conn_t *c)
{
    uv_timer_init(c->super.thread->loop, &c->connect_timer);
    c->connect_timer.data = c;
    c->handles_open = 1;
    uv_timer_start(&c->connect_timer, on_connect_timeout, CONNECT_TIMEOUT_MS, 0);
    c->phase = H2O_DB_PG_RESOLVE;
    if (plan_resolve(c))
        resolve_next(c);
    else
        start_connect(c);
}

/* ---- start-up (main thread, blocking) ---- */

static PGconn *connect_blocking(h2o_db_bind_t *bind, char *err, size_t errsz)
{
    const char *keys[] = {"dbname", "fallback_application_name", bind->password != NULL ? "password" : NULL, NULL};
    const char *values[] = {bind->url.conninfo, "h2o-db", bind->password, NULL};
    PGconn *pg = PQconnectdbParams(keys, values, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        char msg[256];
        h2o_db_pg_copy_error(msg, sizeof(msg), PQerrorMessage(pg));
        snprintf(err, errsz, "cannot connect to %s: %s", bind->url.display, msg);
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

int h2o_db_pg_run_script(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz)
{
    PGconn *pg = connect_blocking(bind, err, errsz);
    if (pg == NULL)
        return -1;
    int ret = 0;
    if (sql != NULL) {
        PGresult *res = PQexec(pg, sql);
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
            const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY),
                       *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            snprintf(err, errsz, "%s (SQLSTATE %s)", primary != NULL ? primary : "error", state != NULL ? state : "XX000");
            ret = -1;
        }
        PQclear(res);
    }
    PQfinish(pg);
    return ret;
}
