/*
 * The tests' SSE client (sse_client.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "harness.h"
#include "sse_client.h"

static void put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = realloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

void sse_open_http1(sse_t *c, int port, const char *path, int rcvbuf)
{
    memset(c, 0, sizeof(*c));
    c->raw = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* (not inherited by a curl client) */
    ck_assert_int_ge(c->fd, 0);
    if (rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(connect(c->fd, (void *)&sin, sizeof(sin)) == 0, "connect: %s", strerror(errno));
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n", path);
    ck_assert_int_eq(write(c->fd, req, n), n);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    put(&c->body, &c->body_len, &c->body_cap, "", 0);
}

static void spawn(sse_t *c, int port, const char *path, int small_window);

void sse_open_http2(sse_t *c, int port, const char *path)
{
    spawn(c, port, path, 0);
}

void sse_open_http2_small_window(sse_t *c, int port, const char *path)
{
    spawn(c, port, path, 1);
}

static void spawn(sse_t *c, int port, const char *path, int small_window)
{
    memset(c, 0, sizeof(*c));
    int fds[2];
    ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    c->pid = fork();
    ck_assert_int_ge(c->pid, 0);
    if (c->pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        if (small_window) /* 64 KiB windows: a stopped reader holds the server back soon */
            execlp("stdbuf", "stdbuf", "-o0", "nghttp", "-w", "16", "-W", "16", url, (char *)NULL); /* (unbuffered) */
        else
            execlp("curl", "curl", "-sN", "--http2-prior-knowledge", "-o", "-", "-w", "", url, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    c->fd = fds[0];
    c->header_done = 1;
    c->status = 200;
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    put(&c->body, &c->body_len, &c->body_cap, "", 0);
}

/* Moves what is decodable from c->in to c->body. */
static void decode(sse_t *c)
{
    size_t pos = 0;
    if (!c->header_done) {
        char *end = c->in_len != 0 ? memmem(c->in, c->in_len, "\r\n\r\n", 4) : NULL;
        if (end == NULL)
            return;
        sscanf(c->in, "HTTP/1.%*d %ld", &c->status);
        c->header_done = 1;
        pos = end - c->in + 4;
        int chunked = memmem(c->in, pos, "chunked", 7) != NULL;
        if (!chunked) {
            /* an error page: its body as it is */
            put(&c->body, &c->body_len, &c->body_cap, c->in + pos, c->in_len - pos);
            c->in_len = 0;
            c->raw = 0;
            return;
        }
    }
    for (;;) {
        if (c->in_chunk) {
            size_t n = c->in_len - pos < c->chunk_left ? c->in_len - pos : c->chunk_left;
            put(&c->body, &c->body_len, &c->body_cap, c->in + pos, n);
            pos += n;
            c->chunk_left -= n;
            if (c->chunk_left != 0 || c->in_len - pos < 2)
                break;
            pos += 2; /* CRLF */
            c->in_chunk = 0;
        }
        char *eol = c->in_len - pos != 0 ? memmem(c->in + pos, c->in_len - pos, "\r\n", 2) : NULL;
        if (eol == NULL)
            break;
        c->chunk_left = strtoul(c->in + pos, NULL, 16);
        pos = eol - c->in + 2;
        if (c->chunk_left == 0) {
            c->closed = 1;
            break;
        }
        c->in_chunk = 1;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

static void read_some(sse_t *c)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n > 0) {
            if (c->raw)
                put(&c->in, &c->in_len, &c->in_cap, buf, n);
            else
                put(&c->body, &c->body_len, &c->body_cap, buf, n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        c->closed = 1; /* EOF or reset */
        break;
    }
    if (c->raw)
        decode(c);
}

void sse_pump(sse_t *cs, size_t n, int timeout_ms)
{
    struct pollfd *p = calloc(n, sizeof(*p));
    for (size_t i = 0; i < n; ++i)
        p[i].fd = cs[i].closed ? -1 : cs[i].fd, p[i].events = POLLIN;
    if (poll(p, n, timeout_ms) > 0)
        for (size_t i = 0; i < n; ++i)
            if (p[i].revents != 0)
                read_some(cs + i);
    free(p);
}

int sse_wait(sse_t *cs, size_t n, int (*cond)(sse_t *cs, size_t n, void *arg), void *arg, int timeout_ms)
{
    double deadline = th_now_ms() + timeout_ms * th_time_factor();
    while (!cond(cs, n, arg)) {
        if (th_now_ms() > deadline)
            return 0;
        sse_pump(cs, n, 20);
    }
    return 1;
}

int sse_find(const sse_t *c, size_t *from, const char *needle)
{
    if (*from > c->body_len)
        return 0;
    const char *p = strstr(c->body + *from, needle);
    if (p == NULL)
        return 0;
    *from = p - c->body + strlen(needle);
    return 1;
}

void sse_close(sse_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    if (c->pid > 0) {
        kill(c->pid, SIGCONT);
        kill(c->pid, SIGTERM);
        waitpid(c->pid, NULL, 0);
    }
    free(c->in);
    free(c->body);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}
