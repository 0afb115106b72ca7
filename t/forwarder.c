/*
 * A TCP forwarder on a loopback port, for the tests (see harness.h): it stands in for a database
 * server that goes away, refuses connections, or drops them during the handshake, while the real
 * server behind it, shared by the suites, stays up. One thread accepts; one thread per connection
 * relays both ways.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "harness.h"

enum { MAX_FDS = 256 };

struct th_forwarder {
    int port, target, listen_fd, up;
    int mode; /* read by the acceptor thread: __atomic */
    pthread_t acceptor;
    pthread_mutex_t lock;
    int fds[MAX_FDS]; /* relayed sockets (cut by th_forwarder_down); -1: a free place */
};

struct relay {
    th_forwarder_t *f;
    int a, b;
};

static void track(th_forwarder_t *f, int fd, int add)
{
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < MAX_FDS; ++i)
        if (f->fds[i] == (add ? -1 : fd)) {
            f->fds[i] = add ? fd : -1;
            break;
        }
    pthread_mutex_unlock(&f->lock);
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    char buf[16384];
    struct pollfd fds[2] = {{r->a, POLLIN, 0}, {r->b, POLLIN, 0}};
    for (;;) {
        if (poll(fds, 2, -1) <= 0)
            break;
        int from = fds[0].revents != 0 ? 0 : 1;
        ssize_t n = read(fds[from].fd, buf, sizeof(buf));
        if (n <= 0 || write(fds[1 - from].fd, buf, (size_t)n) != n)
            break;
    }
    track(r->f, r->a, 0);
    track(r->f, r->b, 0);
    close(r->a);
    close(r->b);
    free(r);
    return NULL;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *acceptor_main(void *arg)
{
    th_forwarder_t *f = arg;
    int client;
    while ((client = accept(f->listen_fd, NULL, NULL)) >= 0) {
        int server = __atomic_load_n(&f->mode, __ATOMIC_RELAXED) == TH_FWD_RELAY ? connect_to(f->target) : -1;
        if (server < 0) {
            close(client); /* TH_FWD_DROP: the server "dies" during the handshake */
            continue;
        }
        struct relay *r = malloc(sizeof(*r));
        *r = (struct relay){f, client, server};
        track(f, r->a, 1);
        track(f, r->b, 1);
        pthread_t t;
        pthread_create(&t, NULL, relay_main, r);
        pthread_detach(t);
    }
    return NULL;
}

th_forwarder_t *th_forwarder_new(int target)
{
    th_forwarder_t *f = calloc(1, sizeof(*f));
    f->port = th_free_port();
    f->target = target;
    f->listen_fd = -1;
    pthread_mutex_init(&f->lock, NULL);
    for (int i = 0; i < MAX_FDS; ++i)
        f->fds[i] = -1;
    return f;
}

int th_forwarder_port(th_forwarder_t *f)
{
    return f->port;
}

void th_forwarder_up(th_forwarder_t *f, int mode)
{
    ck_assert_msg(!f->up, "the forwarder is up already");
    __atomic_store_n(&f->mode, mode, __ATOMIC_RELAXED);
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(f->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sin = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)f->port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_msg(bind(f->listen_fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 && listen(f->listen_fd, 128) == 0,
                  "forwarder on port %d: %s", f->port, strerror(errno));
    ck_assert(pthread_create(&f->acceptor, NULL, acceptor_main, f) == 0);
    f->up = 1;
}

void th_forwarder_set_mode(th_forwarder_t *f, int mode)
{
    __atomic_store_n(&f->mode, mode, __ATOMIC_RELAXED);
}

void th_forwarder_down(th_forwarder_t *f)
{
    if (!f->up)
        return;
    shutdown(f->listen_fd, SHUT_RDWR); /* wakes accept() */
    pthread_join(f->acceptor, NULL);
    close(f->listen_fd);
    f->listen_fd = -1;
    f->up = 0;
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < MAX_FDS; ++i)
        if (f->fds[i] >= 0)
            shutdown(f->fds[i], SHUT_RDWR); /* its relay sees the end and closes both */
    pthread_mutex_unlock(&f->lock);
}

void th_forwarder_free(th_forwarder_t *f)
{
    th_forwarder_down(f);
    /* the relays were cut: wait (bounded) until each has untracked its sockets, its last use of f */
    for (int tries = 0, busy = 1; busy && tries < 500; ++tries) {
        pthread_mutex_lock(&f->lock);
        busy = 0;
        for (int i = 0; i < MAX_FDS; ++i)
            busy |= f->fds[i] >= 0;
        pthread_mutex_unlock(&f->lock);
        if (busy)
            usleep(10000);
    }
    pthread_mutex_destroy(&f->lock);
    free(f);
}
