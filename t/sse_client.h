/*
 * A small Server-Sent Events client for the tests: a raw HTTP/1.1 socket (the chunked body
 * decoded here) or a curl process over HTTP/2 (its stdout), read without blocking, the body
 * kept whole so that a test can look for events in it, in order.
 */
#ifndef h2o_db_test_sse_client_h
#define h2o_db_test_sse_client_h

#include <stddef.h>
#include <sys/types.h>

typedef struct {
    int fd;
    pid_t pid; /* the curl process, or 0 */
    int raw;   /* HTTP/1.1 on our own socket: headers and chunks to decode */
    int header_done, closed;
    long status;
    char *in; /* raw bytes not decoded yet */
    size_t in_len, in_cap;
    char *body; /* the decoded body, NUL-terminated */
    size_t body_len, body_cap;
    size_t chunk_left; /* data bytes left in the current chunk; then its CRLF */
    int in_chunk;
} sse_t;

/* Opens GET PATH over HTTP/1.1 on 127.0.0.1:port; rcvbuf > 0 sets SO_RCVBUF first. */
void sse_open_http1(sse_t *c, int port, const char *path, int rcvbuf);
/* The same over HTTP/2 (h2c prior knowledge) through `curl -sN`. */
void sse_open_http2(sse_t *c, int port, const char *path);
/* ... through `nghttp` with 64 KiB flow-control windows. */
void sse_open_http2_small_window(sse_t *c, int port, const char *path);
/* Reads what the given clients have to say, for at most timeout_ms. */
void sse_pump(sse_t *cs, size_t n, int timeout_ms);
/* Pumps until cond(cs, n, arg) holds or timeout_ms × th_time_factor() passes; 1 when it held. */
int sse_wait(sse_t *cs, size_t n, int (*cond)(sse_t *cs, size_t n, void *arg), void *arg, int timeout_ms);
/* Whether needle is in the body at or after *from (advanced past it when found). */
int sse_find(const sse_t *c, size_t *from, const char *needle);
void sse_close(sse_t *c);

#endif
