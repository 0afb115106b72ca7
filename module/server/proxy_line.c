/*
 * `proxy-protocol: ON` on a TLS listener. libh2o 2.2.5 reads the PROXY line itself and then
 * starts the TLS handshake from inside its read callback; in its libuv flavour the handshake's
 * reads then never reach OpenSSL (the stream is already reading, into the plain buffer) and the
 * connection closes. So for TLS listeners h2o-db reads the line here, sets the peer's address,
 * stops reading, and only then hands the socket to h2o_accept with the TLS context (a ClientHello
 * that came with the line stays in the socket's buffer, where the handshake takes it from).
 * Plain listeners keep libh2o's own reading. Loop thread.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include "server/server.h"

#define MAX_LINE 107 /* PROXY protocol v1's longest line, CRLF included */

struct pending {
    h2o_accept_ctx_t *ctx; /* expect_proxy_line is 0 in it: the line is ours */
    h2o_socket_t *sock;
    h2o_timeout_entry_t timeout; /* the handshake timeout bounds the wait for the line */
};

/* The length of the PROXY line at the start of buf, its peer in sa and salen (0: UNKNOWN);
 * 0 when more bytes are needed, -1 when it is not a PROXY line. */
static ssize_t parse(const char *buf, size_t len, struct sockaddr_storage *sa, socklen_t *salen)
{
    if (len < 6)
        return memcmp(buf, "PROXY ", len) == 0 ? 0 : -1;
    if (memcmp(buf, "PROXY ", 6) != 0)
        return -1;
    const char *eol = memmem(buf, len < MAX_LINE ? len : MAX_LINE, "\r\n", 2);
    if (eol == NULL)
        return len < MAX_LINE ? 0 : -1;
    char line[MAX_LINE + 1], proto[8], src[64], dst[64];
    unsigned sport, dport;
    memcpy(line, buf, eol - buf);
    line[eol - buf] = '\0';
    *salen = 0;
    if (sscanf(line, "PROXY %7s", proto) == 1 && strcmp(proto, "UNKNOWN") == 0)
        return eol + 2 - buf;
    if (sscanf(line, "PROXY %7s %63s %63s %u %u", proto, src, dst, &sport, &dport) != 5 || sport > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    if (strcmp(proto, "TCP4") == 0) {
        struct sockaddr_in *in = (void *)sa;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)sport);
        if (inet_pton(AF_INET, src, &in->sin_addr) != 1)
            return -1;
        *salen = sizeof(*in);
    } else if (strcmp(proto, "TCP6") == 0) {
        struct sockaddr_in6 *in6 = (void *)sa;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)sport);
        if (inet_pton(AF_INET6, src, &in6->sin6_addr) != 1)
            return -1;
        *salen = sizeof(*in6);
    } else {
        return -1;
    }
    return eol + 2 - buf;
}

static void finish(h2o_socket_t *sock, struct pending *p)
{
    h2o_accept_ctx_t *ctx = p->ctx;
    h2o_timeout_unlink(&p->timeout);
    free(p);
    sock->data = NULL;
    h2o_socket_read_stop(sock);
    h2o_accept(ctx, sock);
}

static void line_cb(h2o_socket_t *sock, const char *err)
{
    struct pending *p = sock->data;
    if (err != NULL) {
        h2o_timeout_unlink(&p->timeout);
        free(p);
        h2o_socket_close(sock);
        return;
    }
    struct sockaddr_storage sa;
    socklen_t salen = 0;
    ssize_t n = parse(sock->input->bytes, sock->input->size, &sa, &salen);
    if (n == 0)
        return; /* more to come */
    if (n > 0) {
        h2o_buffer_consume(&sock->input, n);
        if (salen != 0)
            h2o_socket_setpeername(sock, (struct sockaddr *)&sa, salen);
    } /* (not a PROXY line: handed on as it is, as libh2o does) */
    finish(sock, p);
}

static void timeout_cb(h2o_timeout_entry_t *entry)
{
    struct pending *p = H2O_STRUCT_FROM_MEMBER(struct pending, timeout, entry);
    h2o_socket_t *sock = p->sock;
    free(p);
    sock->data = NULL;
    h2o_socket_close(sock);
}

void h2o_db_accept_proxy_line(h2o_accept_ctx_t *ctx, h2o_socket_t *sock)
{
    struct pending *p = calloc(1, sizeof(*p));
    p->ctx = ctx;
    p->sock = sock;
    p->timeout.cb = timeout_cb;
    h2o_timeout_link(ctx->ctx->loop, &ctx->ctx->handshake_timeout, &p->timeout);
    sock->data = p;
    h2o_socket_read_start(sock, line_cb);
}
