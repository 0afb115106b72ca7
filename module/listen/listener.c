/*
 * The LISTEN connection of one worker thread for one bind, and its subscribers.
 *
 * It is a connection of the PostgreSQL driver (resolving, connecting, setup and reading all
 * happen there, on the thread's loop, never blocking), opened outside the pool and its `max`
 * when the first subscription arrives, with callbacks of its own: `connected` sends one
 * `LISTEN "channel"` per channel that has subscribers (quoted as an identifier), each
 * answer makes that channel READY (or RECONNECTED after a loss), `notify` hands NOTIFYs to the
 * channel's subscribers, `failed` tells them LOST and reconnects with the pool's back-off: at
 * once after a working connection broke, then 50 ms doubling to 250 ms while attempts fail. A
 * channel whose last subscriber leaves is UNLISTENed. Everything is closed when the thread's
 * state is disposed (server stop, reload).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/driver.h"
#include "listen/listen.h"

#define BACKOFF_MIN_MS 50 /* as the pool's */
#define BACKOFF_MAX_MS 250

typedef struct st_h2o_db_listener_t listener_t;

struct channel {
    char *name;
    h2o_linklist_t subs;
    h2o_linklist_t *cursor; /* the next subscriber to deliver to (unlisten moves it) */
    int listening;          /* LISTEN answered on the current connection */
    unsigned last_sent;     /* the number of the last LISTEN/UNLISTEN sent for it */
};

/* a LISTEN or UNLISTEN sent, waiting for its answer */
struct sent {
    struct channel *ch;
    unsigned seq;
    int listen;
};

struct st_h2o_db_listen_t {
    listener_t *listener;
    struct channel *channel;
    h2o_linklist_t link;
    h2o_db_listen_cb cb;
    void *data;
    int ready;                  /* it had READY: the next time in effect is RECONNECTED */
    int lost;                   /* it had LOST since */
    h2o_db_later_t ready_later; /* READY for a channel that was listening already */
};

struct st_h2o_db_listener_t {
    h2o_db_thread_t *thread;
    h2o_db_bind_t *bind;
    h2o_db_pipe_t *pipe; /* NULL while none is open */
    h2o_db_pipe_t *dead; /* failed, closed on the next iteration */
    int quiet;           /* the outage was logged */
    H2O_VECTOR(struct channel *) channels;
    /* the LISTENs and UNLISTENs sent, in order */
    struct sent *sent;
    size_t sent_head, sent_count, sent_capacity;
    unsigned backoff_ms;
    uv_timer_t retry;
    h2o_db_later_t close_later;
    h2o_db_driver_stats_t stats;
    h2o_db_listen_stats_t published; /* its numbers (db.status reads them from other threads);
                                      * published.connected is also what this thread goes by */
};

struct st_h2o_db_listeners_t {
    h2o_db_disposer_t disposer;
    h2o_db_thread_t *thread;
    size_t size;
    listener_t **by_bind; /* by bind->id, as many as the thread's pools (never moved: db.status reads it) */
};

static void start_connect(listener_t *l);

static size_t num_subscribers(listener_t *l)
{
    size_t n = 0;
    for (size_t i = 0; i < l->channels.size; ++i)
        n += !h2o_linklist_is_empty(&l->channels.entries[i]->subs);
    return n;
}

/* Tells every subscriber of ch about `ev` (a subscriber may unlisten itself meanwhile). */
static void deliver(struct channel *ch, h2o_db_listen_event_t ev, const char *payload)
{
    for (ch->cursor = ch->subs.next; ch->cursor != &ch->subs;) {
        h2o_db_listen_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_listen_t, link, ch->cursor);
        ch->cursor = ch->cursor->next;
        h2o_db_listen_event_t e = ev;
        if (ev == H2O_DB_LISTEN_READY) {
            if (s->ready && !s->lost)
                continue;
            e = s->ready ? H2O_DB_LISTEN_RECONNECTED : H2O_DB_LISTEN_READY;
            s->ready = 1, s->lost = 0;
        } else if (ev == H2O_DB_LISTEN_LOST) {
            if (!s->ready || s->lost)
                continue;
            s->lost = 1;
        } else if (!s->ready) {
            continue; /* (its READY is still to come) */
        }
        if (e == H2O_DB_LISTEN_NOTIFY)
            H2O_DB_INC(s->listener->published.deliveries);
        s->cb(s, e, ch->name, payload, s->data);
    }
    ch->cursor = NULL;
}

static void send_listen(listener_t *l, struct channel *ch, int listen)
{
    /* the name quoted as an identifier, as PQescapeIdentifier does (the PGconn it needs is the
     * driver's): in double quotes, a double quote doubled; names hold no control characters */
    char sql[16 + 2 * H2O_DB_LISTEN_MAX_CHANNEL_LEN + 3], *p = sql;
    p += sprintf(p, "%s \"", listen ? "LISTEN" : "UNLISTEN");
    for (const char *q = ch->name; *q != '\0'; ++q) {
        if (*q == '"')
            *p++ = '"';
        *p++ = *q;
    }
    *p++ = '"', *p = '\0';
    if (l->sent_count == l->sent_capacity) {
        size_t cap = l->sent_capacity == 0 ? 8 : l->sent_capacity * 2;
        struct sent *ring = malloc(sizeof(*ring) * cap);
        for (size_t i = 0; i < l->sent_count; ++i)
            ring[i] = l->sent[(l->sent_head + i) % l->sent_capacity];
        free(l->sent);
        l->sent = ring, l->sent_head = 0, l->sent_capacity = cap;
    }
    struct sent e = {ch, ++ch->last_sent, listen};
    l->sent[(l->sent_head + l->sent_count++) % l->sent_capacity] = e;
    h2o_db_wire_t w = {.kind = H2O_DB_WIRE_QUERY, .sql = sql, .sql_len = strlen(sql), .no_cache = 1};
    l->bind->driver->send(l->pipe, &w);
}

/* ---- the driver's callbacks ---- */

static void on_connected(h2o_db_pipe_t *pipe)
{
    listener_t *l = pipe->data;
    H2O_DB_SET(l->published.connected, 1);
    for (size_t i = 0; i < l->channels.size; ++i)
        if (!h2o_linklist_is_empty(&l->channels.entries[i]->subs))
            send_listen(l, l->channels.entries[i], 1);
}

static void close_dead(h2o_db_later_t *later)
{
    listener_t *l = H2O_STRUCT_FROM_MEMBER(listener_t, close_later, later);
    if (l->dead != NULL)
        l->bind->driver->close(l->dead);
    l->dead = NULL;
}

static void on_retry(uv_timer_t *timer)
{
    listener_t *l = timer->data;
    h2o_db_later_cancel(&l->close_later);
    close_dead(&l->close_later);
    if (l->pipe == NULL && num_subscribers(l) != 0)
        start_connect(l);
}

static void on_failed(h2o_db_pipe_t *pipe, const char *sqlstate, const char *message)
{
    listener_t *l = pipe->data;
    int was_working = l->published.connected;
    if (!l->quiet)
        fprintf(stderr, "h2o-db: db.listen: %s %s (%s): %s; NOTIFYs are lost until it is back\n",
                was_working ? "lost the LISTEN connection to" : "cannot open the LISTEN connection to", l->bind->url.display,
                l->bind->key, message);
    l->quiet = 1;
    l->pipe = NULL, l->dead = pipe, l->sent_count = 0;
    H2O_DB_SET(l->published.connected, 0);
    H2O_DB_SET(l->published.channels, 0);
    H2O_DB_INC(l->published.losses);
    h2o_db_later(l->thread, &l->close_later);
    /* a broken connection is replaced at once; failed attempts back off */
    l->backoff_ms = was_working ? 0 : l->backoff_ms == 0 ? BACKOFF_MIN_MS : l->backoff_ms * 2;
    if (l->backoff_ms > BACKOFF_MAX_MS)
        l->backoff_ms = BACKOFF_MAX_MS;
    uv_timer_start(&l->retry, on_retry, l->backoff_ms, 0);
    for (size_t i = 0; i < l->channels.size; ++i) {
        struct channel *ch = l->channels.entries[i];
        ch->listening = 0;
        deliver(ch, H2O_DB_LISTEN_LOST, NULL);
    }
}

static int on_result(h2o_db_pipe_t *pipe, h2o_db_result_t *r)
{
    listener_t *l = pipe->data;
    if (l->sent_count == 0)
        return 0;
    struct sent e = l->sent[l->sent_head];
    struct channel *ch = e.ch;
    l->sent_head = (l->sent_head + 1) % l->sent_capacity;
    --l->sent_count;
    if (r->status != H2O_DB_OK) {
        fprintf(stderr, "h2o-db: db.listen: LISTEN on %s (%s) failed: %s\n", l->bind->url.display, l->bind->key,
                r->error != NULL ? r->error : "error");
        return 0;
    }
    /* only the last one sent for a channel says what is in effect */
    if (!e.listen || e.seq != ch->last_sent || ch->listening)
        return 0;
    ch->listening = 1;
    H2O_DB_INC(l->published.channels);
    if (l->quiet)
        fprintf(stderr, "h2o-db: db.listen: LISTEN connection to %s (%s) is back\n", l->bind->url.display, l->bind->key);
    l->quiet = 0, l->backoff_ms = 0;
    deliver(ch, H2O_DB_LISTEN_READY, NULL);
    return 0;
}

static int on_row(h2o_db_pipe_t *pipe, h2o_db_result_t *row)
{
    return 0; /* (nothing is streamed) */
}

static void on_cancelled(h2o_db_pipe_t *pipe)
{
}

static void on_notify(h2o_db_pipe_t *pipe, const char *channel, const char *payload)
{
    listener_t *l = pipe->data;
    for (size_t i = 0; i < l->channels.size; ++i) {
        struct channel *ch = l->channels.entries[i];
        if (strcmp(ch->name, channel) == 0) {
            if (ch->listening) {
                H2O_DB_INC(l->published.notifications);
                deliver(ch, H2O_DB_LISTEN_NOTIFY, payload);
            }
            return;
        }
    }
}

static const h2o_db_pipe_cbs_t pipe_cbs = {
    .connected = on_connected,
    .failed = on_failed,
    .result = on_result,
    .row = on_row,
    .cancelled = on_cancelled,
    .notify = on_notify,
};

static void start_connect(listener_t *l)
{
    h2o_db_pipe_t proto = {l->bind, l->thread, &pipe_cbs, &l->stats, l};
    l->pipe = l->bind->driver->open(&proto);
}

/* ---- per thread ---- */

static void on_retry_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void destroy_listener(listener_t *l)
{
    uv_timer_stop(&l->retry);
    h2o_db_later_cancel(&l->close_later);
    close_dead(&l->close_later);
    if (l->pipe != NULL)
        l->bind->driver->close(l->pipe);
    for (size_t i = 0; i < l->channels.size; ++i) {
        struct channel *ch = l->channels.entries[i];
        while (!h2o_linklist_is_empty(&ch->subs)) {
            h2o_db_listen_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_listen_t, link, ch->subs.next);
            h2o_linklist_unlink(&s->link);
            h2o_db_later_cancel(&s->ready_later);
            free(s);
        }
        free(ch->name);
        free(ch);
    }
    free(l->channels.entries);
    free(l->sent);
    uv_close((uv_handle_t *)&l->retry, on_retry_closed);
}

/* the thread stops (before its pools go): every LISTEN connection closes */
static void dispose_listeners(h2o_db_disposer_t *disposer)
{
    struct st_h2o_db_listeners_t *ls = (void *)disposer;
    for (size_t i = 0; i < ls->size; ++i)
        if (ls->by_bind[i] != NULL)
            destroy_listener(ls->by_bind[i]);
    H2O_DB_SET(ls->thread->listeners, NULL);
    free(ls->by_bind);
    free(ls);
}

static listener_t *listener_of(h2o_db_thread_t *thread, h2o_db_bind_t *bind)
{
    struct st_h2o_db_listeners_t *ls = thread->listeners;
    if (ls == NULL) {
        ls = calloc(1, sizeof(*ls));
        ls->thread = thread;
        ls->size = thread->num_pools; /* one per bind of the thread's config: bind->id < num_pools */
        ls->by_bind = calloc(ls->size, sizeof(*ls->by_bind));
        ls->disposer.cb = dispose_listeners;
        h2o_db_on_dispose(thread, &ls->disposer);
        H2O_DB_SET(thread->listeners, ls);
    }
    listener_t *l = ls->by_bind[bind->id];
    if (l == NULL) {
        l = calloc(1, sizeof(*l));
        l->thread = thread;
        l->bind = bind;
        l->close_later.cb = close_dead;
        uv_timer_init(thread->loop, &l->retry);
        l->retry.data = l;
        uv_unref((uv_handle_t *)&l->retry);
        __atomic_store_n(&ls->by_bind[bind->id], l, __ATOMIC_RELEASE); /* (db.status may read it now) */
    }
    return l;
}

int h2o_db_listen_channel_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > H2O_DB_LISTEN_MAX_CHANNEL_LEN)
        return 0;
    for (const char *p = name; *p != '\0'; ++p)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

static void on_ready_later(h2o_db_later_t *later)
{
    h2o_db_listen_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_listen_t, ready_later, later);
    if (s->channel->listening && !s->ready) {
        s->ready = 1;
        s->cb(s, H2O_DB_LISTEN_READY, s->channel->name, NULL, s->data);
    }
}

h2o_db_listen_t *h2o_db_listen_bind(h2o_db_thread_t *thread, h2o_db_bind_t *bind, const char *channel, h2o_db_listen_cb cb,
                                    void *data)
{
    if (bind->url.backend != H2O_DB_BACKEND_POSTGRES || !h2o_db_listen_channel_valid(channel) || cb == NULL)
        return NULL;
    listener_t *l = listener_of(thread, bind);
    struct channel *ch = NULL;
    for (size_t i = 0; i < l->channels.size && ch == NULL; ++i)
        if (strcmp(l->channels.entries[i]->name, channel) == 0)
            ch = l->channels.entries[i];
    if (ch == NULL) {
        ch = calloc(1, sizeof(*ch));
        ch->name = strdup(channel);
        h2o_linklist_init_anchor(&ch->subs);
        h2o_vector_reserve(NULL, &l->channels, l->channels.size + 1);
        l->channels.entries[l->channels.size++] = ch;
    }
    h2o_db_listen_t *s = calloc(1, sizeof(*s));
    s->listener = l, s->channel = ch, s->cb = cb, s->data = data;
    s->ready_later.cb = on_ready_later;
    int first = h2o_linklist_is_empty(&ch->subs);
    h2o_linklist_insert(&ch->subs, &s->link);
    H2O_DB_INC(l->published.subscribers);
    if (ch->listening) {
        h2o_db_later(thread, &s->ready_later); /* never from inside this call */
    } else if (l->published.connected && first) {
        send_listen(l, ch, 1);
    } else if (l->pipe == NULL && l->dead == NULL && !uv_is_active((uv_handle_t *)&l->retry)) {
        start_connect(l);
    } else if (l->pipe == NULL && l->dead != NULL && !uv_is_active((uv_handle_t *)&l->retry)) {
        uv_timer_start(&l->retry, on_retry, 0, 0);
    }
    return s;
}

h2o_db_listen_t *h2o_db_listen(h2o_context_t *ctx, const char *key, const char *channel, h2o_db_listen_cb cb, void *data)
{
    if (ctx == NULL || channel == NULL)
        return NULL;
    h2o_db_config_t *config = h2o_db_config_of(ctx->globalconf);
    h2o_db_bind_t *bind = NULL;
    for (size_t i = 0; config != NULL && i < config->binds.size; ++i) {
        h2o_db_bind_t *b = config->binds.entries[i];
        if (strcmp(b->scope, "global") == 0 && strcmp(b->key, key != NULL ? key : H2O_DB_DEFAULT_KEY) == 0)
            bind = b;
    }
    if (bind == NULL)
        return NULL;
    return h2o_db_listen_bind(h2o_db_thread_init(ctx), bind, channel, cb, data);
}

void h2o_db_unlisten(h2o_db_listen_t *s)
{
    if (s == NULL)
        return;
    struct channel *ch = s->channel;
    listener_t *l = s->listener;
    if (ch->cursor == &s->link)
        ch->cursor = s->link.next;
    h2o_linklist_unlink(&s->link);
    h2o_db_later_cancel(&s->ready_later);
    free(s);
    H2O_DB_DEC(l->published.subscribers);
    if (!h2o_linklist_is_empty(&ch->subs) || !l->published.connected)
        return;
    send_listen(l, ch, 0);
    if (ch->listening)
        H2O_DB_DEC(l->published.channels);
    ch->listening = 0;
}

h2o_db_listen_stats_t *h2o_db_listen_stats_of(h2o_db_listen_t *sub)
{
    return &sub->listener->published;
}

int h2o_db_listen_stats(h2o_db_thread_t *thread, const h2o_db_bind_t *bind, h2o_db_listen_stats_t *out)
{
    struct st_h2o_db_listeners_t *ls = __atomic_load_n(&thread->listeners, __ATOMIC_ACQUIRE);
    listener_t *l = ls != NULL && bind->id < ls->size ? __atomic_load_n(&ls->by_bind[bind->id], __ATOMIC_ACQUIRE) : NULL;
    if (l == NULL)
        return 0;
#define COPY(f) out->f = __atomic_load_n(&l->published.f, __ATOMIC_RELAXED)
    COPY(connected);
    COPY(channels);
    COPY(subscribers);
    COPY(notifications);
    COPY(deliveries);
    COPY(losses);
    COPY(clients);
    COPY(dropped);
    COPY(refused);
#undef COPY
    return 1;
}
