/*
 * A c.handler for t/test_listen.c that uses the C API of LISTEN/NOTIFY (h2o_db_listen), built
 * against include/ alone. One worker thread is assumed (the test configures num-threads: 1).
 *   GET …/sub?channel=C   subscribes to C (once per channel) → "ok", or 500 when refused
 *   GET …/unsub?channel=C ends that subscription → "ok"
 *   GET …/log             what the callbacks saw, one line each: "READY C", "NOTIFY C PAYLOAD",
 *                         "LOST C", "RECONNECTED C"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "h2o_db.h"

#define MAX_SUBS 8

static struct {
    char channel[64];
    h2o_db_listen_t *handle;
} subs[MAX_SUBS];
static char *log_text;
static size_t log_len;

static void on_event(h2o_db_listen_t *h, h2o_db_listen_event_t ev, const char *channel, const char *payload, void *data)
{
    static const char *names[] = {"READY", "NOTIFY", "LOST", "RECONNECTED"};
    char line[512];
    int n =
        snprintf(line, sizeof(line), "%s %s%s%s\n", names[ev], channel, payload != NULL ? " " : "", payload != NULL ? payload : "");
    log_text = realloc(log_text, log_len + n + 1);
    memcpy(log_text + log_len, line, n + 1);
    log_len += n;
}

static void answer(h2o_req_t *req, int status, const char *body)
{
    static h2o_generator_t gen = {NULL, NULL};
    req->res.status = status;
    req->res.reason = status == 200 ? "OK" : "Error";
    h2o_iovec_t b = h2o_strdup(&req->pool, body, SIZE_MAX);
    req->res.content_length = b.len;
    h2o_start_response(req, &gen);
    h2o_send(req, &b, 1, H2O_SEND_STATE_FINAL);
}

static const char *param(h2o_req_t *req, const char *name, char *buf, size_t size)
{
    if (req->query_at == SIZE_MAX)
        return NULL;
    const char *q = req->path.base + req->query_at + 1;
    size_t len = req->path.len - req->query_at - 1, nlen = strlen(name);
    if (len <= nlen || memcmp(q, name, nlen) != 0 || q[nlen] != '=')
        return NULL;
    snprintf(buf, size, "%.*s", (int)(len - nlen - 1), q + nlen + 1);
    return buf;
}

int listen_capi(h2o_handler_t *self, h2o_req_t *req)
{
    char buf[64];
    const char *channel = param(req, "channel", buf, sizeof(buf));
    const char *path = req->path_normalized.base;
    size_t plen = req->path_normalized.len;
    if (plen >= 4 && memcmp(path + plen - 4, "/log", 4) == 0) {
        answer(req, 200, log_text != NULL ? log_text : "");
        return 0;
    }
    if (channel == NULL)
        return -1;
    int unsub = plen >= 6 && memcmp(path + plen - 6, "/unsub", 6) == 0;
    for (size_t i = 0; i < MAX_SUBS; ++i) {
        if (subs[i].handle != NULL && strcmp(subs[i].channel, channel) == 0) {
            if (unsub) {
                h2o_db_unlisten(subs[i].handle);
                subs[i].handle = NULL;
            }
            answer(req, 200, "ok");
            return 0;
        }
    }
    if (unsub)
        return -1;
    for (size_t i = 0; i < MAX_SUBS; ++i) {
        if (subs[i].handle == NULL) {
            subs[i].handle = h2o_db_listen(req->conn->ctx, NULL, channel, on_event, NULL);
            snprintf(subs[i].channel, sizeof(subs[i].channel), "%s", channel);
            answer(req, subs[i].handle != NULL ? 200 : 500, subs[i].handle != NULL ? "ok" : "refused");
            return 0;
        }
    }
    return -1;
}
