/*
 * db.status: the pools of every thread, per bind (and db.listen's LISTEN connections).
 *
 *   GET /path                     JSON (docs/status.md describes every field)
 *   GET /path?format=prometheus   Prometheus text exposition format
 *
 * Pools belong to their threads; this handler reads other threads' counters
 * with relaxed atomic loads (their one writer stores them atomically: pool.h),
 * holding the thread registry's lock so that no pool is destroyed meanwhile. Connection counts are exact;
 * idle/busy are what each thread published at its last housekeeping tick (at
 * most a second old), or exact for the thread serving the request.
 * URLs are shown with their passwords masked.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/config.h"
#include "listen/listen.h"
#include "pool.h"
#include "replica.h"
#include "status.h"
#include "thread.h"

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

struct out {
    char *buf;
    size_t len, cap;
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void outf(struct out *o, const char *fmt, ...)
{
    for (;;) {
        va_list args;
        va_start(args, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, args);
        va_end(args);
        if (n >= 0 && (size_t)n < o->cap - o->len) {
            o->len += n;
            return;
        }
        o->cap = o->cap * 2 + (n > 0 ? (size_t)n : 0) + 1024;
        o->buf = realloc(o->buf, o->cap);
    }
}

/* JSON-escaped copy of s (keys, scopes and URLs are plain ASCII in practice; be safe anyway) */
static void out_json_string(struct out *o, const char *s)
{
    outf(o, "\"");
    for (; *s; ++s) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            outf(o, "\\%c", c);
        else if (c < 0x20)
            outf(o, "\\u%04x", c);
        else
            outf(o, "%c", c);
    }
    outf(o, "\"");
}

struct snapshot {
    size_t total, connecting, idle, busy, pinned, waiting;
    uint64_t oldest_ms;
    int down;
    h2o_db_pool_stats_t stats;
};

static void take(h2o_db_pool_t *pool, struct snapshot *s)
{
    if (h2o_db_thread != NULL && pool->thread == h2o_db_thread)
        h2o_db_pool_publish(pool);
    s->total = LOAD(pool->num_conns);
    s->connecting = LOAD(pool->num_connecting);
    s->pinned = LOAD(pool->num_pinned);
    s->waiting = LOAD(pool->num_waiting);
    s->idle = LOAD(pool->gauges.idle);
    s->busy = LOAD(pool->gauges.busy);
    s->oldest_ms = LOAD(pool->gauges.oldest_ms);
    if (s->idle + s->busy + s->connecting > s->total) {
        /* the published gauges are older than the counts */
        s->busy = s->total > s->connecting + s->idle ? s->total - s->connecting - s->idle : 0;
        if (s->idle + s->busy + s->connecting > s->total)
            s->idle = s->total - s->connecting - s->busy;
    }
    s->down = LOAD(pool->down);
    h2o_db_pool_stats_t *st = &pool->stats;
#define COPY(f) s->stats.f = LOAD(st->f)
    COPY(acquires);
    COPY(waits);
    COPY(acquire_timeouts);
    COPY(queue_full);
    COPY(errors);
    COPY(connects);
    COPY(connect_failures);
    COPY(reconnects);
    COPY(closed_broken);
    COPY(closed_idle);
    COPY(closed_lifetime);
    COPY(statements);
    COPY(pipelined);
    COPY(driver.cache_hits);
    COPY(driver.cache_misses);
    COPY(timeouts);
    COPY(leaks);
#undef COPY
}

/* name, offset: the counters, in the order both formats print them */
static const struct {
    const char *name, *help;
    size_t offset;
} counters[] = {
#define C(f, h)                                                                                                                    \
    {                                                                                                                              \
#f, h, offsetof(h2o_db_pool_stats_t, f)                                                                                    \
    }
    C(acquires, "statements placed on a connection"),
    C(waits, "statements that waited for a connection"),
    C(acquire_timeouts, "statements that gave up waiting (acquire-timeout)"),
    C(queue_full, "statements refused because the queue was full"),
    C(errors, "statements answered with an error"),
    C(connects, "connection attempts"),
    C(connect_failures, "connection attempts that failed"),
    C(reconnects, "recoveries after the database was down"),
    C(closed_broken, "connections closed because they broke"),
    C(closed_idle, "connections closed after idle-timeout"),
    C(closed_lifetime, "connections closed after max-lifetime"),
    C(statements, "statements sent"),
    C(pipelined, "statements sent while others were in flight on the connection"),
    {"cache_hits", "statements found in the prepared-statement cache", offsetof(h2o_db_pool_stats_t, driver.cache_hits)},
    {"cache_misses", "statements prepared anew", offsetof(h2o_db_pool_stats_t, driver.cache_misses)},
    C(timeouts, "statements answered by statement-timeout"),
    C(leaks, "sessions that held a connection past leak-threshold"),
#undef C
};

static uint64_t counter_value(const struct snapshot *s, size_t i)
{
    return *(const uint64_t *)((const char *)&s->stats + counters[i].offset);
}

/* one (bind, thread) pool, snapshotted once per page so that every metric agrees */
struct row {
    h2o_db_bind_t *bind;
    unsigned thread;
    struct snapshot s;
    h2o_db_replica_health_t health; /* for a replica's pool */
    int has_listen;                 /* the thread has a LISTEN connection for the bind (db.listen) */
    h2o_db_listen_stats_t listen;
};

/* a replica's pool (not the primary's read-only one) */
static int is_replica(const h2o_db_bind_t *bind)
{
    return bind->primary != NULL && bind != bind->primary->read_only_primary;
}

static size_t collect(h2o_db_config_t *config, h2o_db_thread_t *const *threads, size_t num_threads, struct row **rows)
{
    size_t n = 0;
    *rows = malloc(sizeof(**rows) * (config->binds.size * num_threads + 1));
    for (size_t b = 0; b < config->binds.size; ++b) {
        h2o_db_bind_t *bind = config->binds.entries[b];
        for (size_t t = 0; t < num_threads; ++t) {
            h2o_db_pool_t *pool = h2o_db_thread_pool(threads[t], bind->id);
            if (pool == NULL)
                continue;
            (*rows)[n].bind = bind;
            (*rows)[n].thread = threads[t]->index;
            take(pool, &(*rows)[n].s);
            if (is_replica(bind))
                h2o_db_replica_health(threads[t], bind, pool, &(*rows)[n].health);
            (*rows)[n].has_listen = h2o_db_listen_stats(threads[t], bind, &(*rows)[n].listen);
            ++n;
        }
    }
    return n;
}

/* "threads":[...] of one bind's pools */
static void render_threads(struct out *o, h2o_db_bind_t *bind, const struct row *rows, size_t n)
{
    outf(o, ",\"connections_all_threads\":%u,\"threads\":[", LOAD(bind->total_conns));
    int first = 1;
    for (size_t i = 0; i < n; ++i) {
        const struct row *r = rows + i;
        if (r->bind != bind)
            continue;
        outf(o,
             "%s{\"thread\":%u,\"connections\":{\"total\":%zu,\"idle\":%zu,\"busy\":%zu,\"connecting\":%zu,\"pinned\":%zu},"
             "\"waiting\":%zu,\"down\":%s,\"oldest_ms\":%llu",
             first ? "" : ",", r->thread, r->s.total, r->s.idle, r->s.busy, r->s.connecting, r->s.pinned, r->s.waiting,
             r->s.down ? "true" : "false", (unsigned long long)r->s.oldest_ms);
        for (size_t c = 0; c < sizeof(counters) / sizeof(counters[0]); ++c)
            outf(o, ",\"%s\":%llu", counters[c].name, (unsigned long long)counter_value(&r->s, c));
        if (is_replica(bind)) {
            const h2o_db_replica_health_t *h = &r->health;
            outf(o, ",\"healthy\":%s,\"lag\":", h->healthy ? "true" : "false");
            if (h->measured)
                outf(o, "%.3f,\"lag_measured_ms\":%llu", h->lag_ms / 1000.0, (unsigned long long)h->measured_ms);
            else
                outf(o, "null,\"lag_measured_ms\":null");
            outf(o, ",\"probes\":%llu,\"probe_failures\":%llu", (unsigned long long)h->probes,
                 (unsigned long long)h->probe_failures);
        }
        if (r->has_listen) {
            const h2o_db_listen_stats_t *l = &r->listen;
            outf(o,
                 ",\"listen\":{\"connected\":%s,\"channels\":%zu,\"subscribers\":%zu,\"notifications\":%llu,"
                 "\"deliveries\":%llu,\"losses\":%llu,\"clients\":%zu,\"dropped\":%llu,\"refused\":%llu}",
                 l->connected ? "true" : "false", l->channels, l->subscribers, (unsigned long long)l->notifications,
                 (unsigned long long)l->deliveries, (unsigned long long)l->losses, l->clients, (unsigned long long)l->dropped,
                 (unsigned long long)l->refused);
        }
        outf(o, "}");
        first = 0;
    }
    outf(o, "]");
}

/* ,"replica":{...},"replicas":[...],"read_only_primary":{...} of a bind with replicas */
static void render_replicas(struct out *o, h2o_db_bind_t *bind, const struct row *rows, size_t n)
{
    outf(o, ",\"replica\":{\"max_lag\":%g,\"fallback\":%s},\"replicas\":[", bind->max_lag / 1000.0,
         bind->fallback ? "true" : "false");
    for (size_t i = 0; i < bind->replicas.size; ++i) {
        h2o_db_bind_t *r = bind->replicas.entries[i];
        /* healthy on some thread; the newest lag any thread measured */
        int healthy = 0;
        const h2o_db_replica_health_t *newest = NULL;
        for (size_t j = 0; j < n; ++j) {
            if (rows[j].bind != r)
                continue;
            healthy |= rows[j].health.healthy;
            if (rows[j].health.measured && (newest == NULL || rows[j].health.measured_ms < newest->measured_ms))
                newest = &rows[j].health;
        }
        outf(o, "%s{\"url\":", i != 0 ? "," : "");
        out_json_string(o, r->url.display);
        outf(o, ",\"healthy\":%s,\"lag\":", healthy ? "true" : "false");
        if (newest != NULL)
            outf(o, "%.3f", newest->lag_ms / 1000.0);
        else
            outf(o, "null");
        render_threads(o, r, rows, n);
        outf(o, "}");
    }
    outf(o, "],\"read_only_primary\":{\"url\":");
    out_json_string(o, bind->read_only_primary->url.display);
    render_threads(o, bind->read_only_primary, rows, n);
    outf(o, "}");
}

static void render_json(struct out *o, h2o_db_config_t *config, const struct row *rows, size_t n, size_t num_threads)
{
    outf(o, "{\"threads\":%zu,\"binds\":[", num_threads);
    int first = 1;
    for (size_t b = 0; b < config->binds.size; ++b) {
        h2o_db_bind_t *bind = config->binds.entries[b];
        h2o_db_pool_config_t *cfg = &bind->pool;
        if (bind->primary != NULL)
            continue; /* listed under its primary */
        outf(o, "%s{\"key\":", first ? "" : ",");
        first = 0;
        out_json_string(o, bind->key);
        outf(o, ",\"scope\":");
        out_json_string(o, bind->scope);
        outf(o, ",\"url\":");
        out_json_string(o, bind->url.display);
        outf(o, ",\"backend\":\"%s\",\"middleware\":%s", bind->driver->name, bind->middleware ? "true" : "false");
        outf(o,
             ",\"pool\":{\"max\":%u,\"min\":%u,\"max_total\":%u,\"queue\":%u,\"pipeline_depth\":%u,\"statement_cache\":%u,"
             "\"acquire_timeout\":%g,\"idle_timeout\":%g,\"max_lifetime\":%g,\"statement_timeout\":%g,\"request_timeout\":%g,"
             "\"leak_threshold\":%g}",
             cfg->max, cfg->min, cfg->max_total, cfg->queue, cfg->pipeline_depth, cfg->statement_cache,
             cfg->acquire_timeout / 1000.0, cfg->idle_timeout / 1000.0, cfg->max_lifetime / 1000.0, cfg->statement_timeout / 1000.0,
             cfg->request_timeout / 1000.0, cfg->leak_threshold / 1000.0);
        render_threads(o, bind, rows, n);
        if (bind->replicas.size != 0)
            render_replicas(o, bind, rows, n);
        outf(o, "}");
    }
    outf(o, "]}\n");
}

static void prom_label(struct out *o, const char *s)
{
    for (const char *p = s; *p; ++p)
        outf(o, *p == '"' || *p == '\\' ? "\\%c" : *p == '\n' ? "\\n" : "%c", *p);
}

/* NAME{key="…",scope="…",thread="N"EXTRA} VALUE — label values escape \ " and newline; the pools of a
 * bind's replicas add role="replica",url="…", its read-only pool role="read_only_primary" */
static void prom_series(struct out *o, const char *name, const struct row *r, const char *extra, unsigned long long value)
{
    outf(o, "%s{key=\"", name);
    prom_label(o, r->bind->key);
    outf(o, "\",scope=\"");
    prom_label(o, r->bind->scope);
    outf(o, "\",thread=\"%u\"", r->thread);
    if (is_replica(r->bind)) {
        outf(o, ",role=\"replica\",url=\"");
        prom_label(o, r->bind->url.display);
        outf(o, "\"");
    } else if (r->bind->primary != NULL) {
        outf(o, ",role=\"read_only_primary\"");
    }
    outf(o, "%s} %llu\n", extra, value);
}

static void render_prometheus_replicas(struct out *o, const struct row *rows, size_t n)
{
    static const char *const heads[] = {
        "# HELP h2o_db_replica_healthy 1 while the replica would be chosen (up, lag measured and within max-lag).\n"
        "# TYPE h2o_db_replica_healthy gauge\n",
        "# HELP h2o_db_replica_lag_milliseconds The replay lag last measured (absent before the first measurement).\n"
        "# TYPE h2o_db_replica_lag_milliseconds gauge\n",
        "# HELP h2o_db_replica_probes_total Lag measurements answered.\n# TYPE h2o_db_replica_probes_total counter\n",
        "# HELP h2o_db_replica_probe_failures_total Lag measurements that failed.\n"
        "# TYPE h2o_db_replica_probe_failures_total counter\n"};
    static const char *const names[] = {"h2o_db_replica_healthy", "h2o_db_replica_lag_milliseconds", "h2o_db_replica_probes_total",
                                        "h2o_db_replica_probe_failures_total"};
    int any = 0;
    for (size_t i = 0; i < n; ++i)
        any |= is_replica(rows[i].bind);
    for (size_t m = 0; any && m < 4; ++m) {
        outf(o, "%s", heads[m]);
        for (size_t i = 0; i < n; ++i) {
            const h2o_db_replica_health_t *h = &rows[i].health;
            if (!is_replica(rows[i].bind) || (m == 1 && !h->measured))
                continue;
            unsigned long long v = m == 0 ? h->healthy : m == 1 ? h->lag_ms : m == 2 ? h->probes : h->probe_failures;
            prom_series(o, names[m], rows + i, "", v);
        }
    }
}

/* the LISTEN connections of db.listen, on the threads that have one */
static void render_prometheus_listen(struct out *o, const struct row *rows, size_t n)
{
    static const struct {
        const char *name, *type, *help;
    } m[] = {
        {"h2o_db_listen_connected", "gauge", "1 while the thread's LISTEN connection is open and set up"},
        {"h2o_db_listen_channels", "gauge", "Channels listened to on it"},
        {"h2o_db_listen_subscribers", "gauge", "Subscriptions: each db.listen path's, one per channel, and C handlers'"},
        {"h2o_db_listen_notifications_total", "counter", "NOTIFYs received"},
        {"h2o_db_listen_deliveries_total", "counter", "NOTIFYs handed to subscribers"},
        {"h2o_db_listen_losses_total", "counter", "Times the LISTEN connection was lost or could not be opened"},
        {"h2o_db_listen_clients", "gauge", "Event-stream clients of the thread's db.listen paths on the bind"},
        {"h2o_db_listen_dropped_total", "counter", "Event-stream clients disconnected at max-backlog"},
        {"h2o_db_listen_refused_total", "counter", "Event-stream clients answered 503 at max-clients"},
    };
    int any = 0;
    for (size_t i = 0; i < n; ++i)
        any |= rows[i].has_listen;
    for (size_t k = 0; any && k < sizeof(m) / sizeof(m[0]); ++k) {
        outf(o, "# HELP %s %s.\n# TYPE %s %s\n", m[k].name, m[k].help, m[k].name, m[k].type);
        for (size_t i = 0; i < n; ++i) {
            const h2o_db_listen_stats_t *l = &rows[i].listen;
            const unsigned long long v[] = {l->connected, l->channels, l->subscribers, l->notifications, l->deliveries,
                                            l->losses,    l->clients,  l->dropped,     l->refused};
            if (rows[i].has_listen)
                prom_series(o, m[k].name, rows + i, "", v[k]);
        }
    }
}

static void render_prometheus(struct out *o, const struct row *rows, size_t n)
{
    outf(o, "# HELP h2o_db_connections Open connections by state (pinned ones are also busy).\n"
            "# TYPE h2o_db_connections gauge\n");
    for (size_t i = 0; i < n; ++i) {
        prom_series(o, "h2o_db_connections", rows + i, ",state=\"idle\"", rows[i].s.idle);
        prom_series(o, "h2o_db_connections", rows + i, ",state=\"busy\"", rows[i].s.busy);
        prom_series(o, "h2o_db_connections", rows + i, ",state=\"connecting\"", rows[i].s.connecting);
        prom_series(o, "h2o_db_connections", rows + i, ",state=\"pinned\"", rows[i].s.pinned);
    }
    outf(o, "# HELP h2o_db_waiting Statements waiting for a connection.\n# TYPE h2o_db_waiting gauge\n");
    for (size_t i = 0; i < n; ++i)
        prom_series(o, "h2o_db_waiting", rows + i, "", rows[i].s.waiting);
    outf(o, "# HELP h2o_db_oldest_statement_milliseconds How long the oldest statement in flight has run.\n"
            "# TYPE h2o_db_oldest_statement_milliseconds gauge\n");
    for (size_t i = 0; i < n; ++i)
        prom_series(o, "h2o_db_oldest_statement_milliseconds", rows + i, "", rows[i].s.oldest_ms);
    outf(o, "# HELP h2o_db_up 1 unless the database is known to be down.\n# TYPE h2o_db_up gauge\n");
    for (size_t i = 0; i < n; ++i)
        prom_series(o, "h2o_db_up", rows + i, "", !rows[i].s.down);
    for (size_t c = 0; c < sizeof(counters) / sizeof(counters[0]); ++c) {
        char name[64];
        snprintf(name, sizeof(name), "h2o_db_%s_total", counters[c].name);
        outf(o, "# HELP %s %s.\n# TYPE %s counter\n", name, counters[c].help, name);
        for (size_t i = 0; i < n; ++i)
            prom_series(o, name, rows + i, "", counter_value(&rows[i].s, c));
    }
    render_prometheus_replicas(o, rows, n);
    render_prometheus_listen(o, rows, n);
}

static int wants_prometheus(h2o_req_t *req)
{
    if (req->query_at == SIZE_MAX)
        return 0;
    const char *q = req->path.base + req->query_at + 1;
    size_t len = req->path.len - req->query_at - 1;
    return h2o_strstr(q, len, H2O_STRLIT("format=prometheus")) != SIZE_MAX;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    static h2o_generator_t generator = {NULL, NULL};
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) &&
        !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD")))
        return -1;
    h2o_db_config_t *config = h2o_db_config_of(req->conn->ctx->globalconf);
    h2o_db_thread_t *const *threads;
    size_t num_threads = h2o_db_threads_lock(config, &threads);
    struct row *rows;
    size_t n = collect(config, threads, num_threads, &rows);
    h2o_db_threads_unlock(config);
    struct out o = {malloc(4096), 0, 4096};
    int prom = wants_prometheus(req);
    if (prom)
        render_prometheus(&o, rows, n);
    else
        render_json(&o, config, rows, n, num_threads);
    free(rows);

    h2o_iovec_t body = h2o_strdup(&req->pool, o.buf, o.len);
    free(o.buf);
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = body.len;
    if (prom)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain; version=0.0.4"));
    else
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("application/json"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_start_response(req, &generator);
    h2o_send(req, &body, 1, 1);
    return 0;
}

static void on_context_init(h2o_handler_t *self, h2o_context_t *ctx)
{
    h2o_db_thread_init(ctx);
}

void h2o_db_status_register(h2o_pathconf_t *pathconf)
{
    h2o_handler_t *h = h2o_create_handler(pathconf, sizeof(*h));
    h->on_req = on_req;
    h->on_context_init = on_context_init;
}
