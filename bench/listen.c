/*
 * bench/listen's client: how long a NOTIFY takes to reach Server-Sent Events clients of
 * db.listen (a program that prints figures, not a test).
 *
 *   bench_listen PORT PATH PG_URL CLIENTS NOTIFIES INTERVAL_US [SERVER_PID]
 *
 * Opens CLIENTS HTTP/1.1 streams to 127.0.0.1:PORT/PATH, waits until every one says
 * `: listening`, then a second thread sends NOTIFIES pg_notify('bench', '<CLOCK_MONOTONIC ns>')
 * from a libpq connection, one every INTERVAL_US microseconds; the main thread reads every
 * stream (epoll) and records, for each client and NOTIFY, the time from just before pg_notify
 * was called to the moment the client's `data:` line was read. Prints p50/p90/p99/p99.9/max,
 * what fraction arrived, and the rate; with SERVER_PID, the server's VmRSS once every client
 * listens and after the last delivery (what the deliveries themselves cost in memory).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct client {
    int fd;
    char buf[8192];
    size_t len;
    int listening;
    size_t got;
};

static const char *pg_url;
static long notifies, interval_us;
static volatile int sender_done;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void *sender(void *arg)
{
    PGconn *pg = PQconnectdb(pg_url);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "bench_listen: %s", PQerrorMessage(pg));
        exit(1);
    }
    uint64_t next = now_ns();
    for (long i = 0; i < notifies; ++i) {
        struct timespec at = {(time_t)(next / 1000000000u), (long)(next % 1000000000u)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
            ;
        char payload[32];
        snprintf(payload, sizeof(payload), "%llu", (unsigned long long)now_ns());
        const char *params[] = {payload};
        PGresult *r = PQexecParams(pg, "SELECT pg_notify('bench', $1)", 1, NULL, params, NULL, NULL, 0);
        PQclear(r);
        next += (uint64_t)interval_us * 1000;
    }
    PQfinish(pg);
    sender_done = 1;
    return NULL;
}

static int connect_one(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (void *)&sin, sizeof(sin)) != 0) {
        perror("connect");
        exit(1);
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, n) != n)
        exit(1);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static long rss_kb(const char *pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%s/status", pid);
    FILE *f = pid != NULL ? fopen(path, "r") : NULL;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb;
}

/* utime + stime of a process, in seconds */
static double cpu_s(const char *pid)
{
    char path[64];
    unsigned long ut = 0, st = 0;
    snprintf(path, sizeof(path), "/proc/%s/stat", pid);
    FILE *f = pid != NULL ? fopen(path, "r") : NULL;
    if (f == NULL || fscanf(f, "%*d %*s %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        ut = st = 0;
    if (f != NULL)
        fclose(f);
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Takes the complete lines of c->buf: `: listening` and `data: <ns>` (chunk-size lines of the
 * chunked encoding and headers are skipped: they match neither). */
static void scan(struct client *c, uint64_t *samples, size_t *nsamples)
{
    char *start = c->buf, *end = c->buf + c->len, *nl;
    while ((nl = memchr(start, '\n', end - start)) != NULL) {
        if (nl - start >= 11 && memcmp(start, ": listening", 11) == 0)
            c->listening = 1;
        else if (nl - start > 6 && memcmp(start, "data: ", 6) == 0) {
            uint64_t sent = strtoull(start + 6, NULL, 10), t = now_ns();
            samples[(*nsamples)++] = t > sent ? t - sent : 0;
            ++c->got;
        }
        start = nl + 1;
    }
    memmove(c->buf, start, end - start);
    c->len = end - start;
}

int main(int argc, char **argv)
{
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: bench_listen PORT PATH PG_URL CLIENTS NOTIFIES INTERVAL_US [SERVER_PID]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    const char *server_pid = argc == 8 ? argv[7] : NULL;
    long rss_listening = -1;
    double cpu_listening = 0;
    pg_url = argv[3];
    long nclients = atol(argv[4]);
    notifies = atol(argv[5]);
    interval_us = atol(argv[6]);
    struct client *cs = calloc(nclients, sizeof(*cs));
    uint64_t *samples = malloc(sizeof(*samples) * nclients * notifies);
    size_t nsamples = 0;
    int ep = epoll_create1(0);
    for (long i = 0; i < nclients; ++i) {
        cs[i].fd = connect_one(port, argv[2]);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = cs + i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    long listening = 0, lost = 0;
    pthread_t tid;
    int started = 0;
    uint64_t t_start = 0, t_last_data = 0, deadline = now_ns() + 30000000000ull;
    struct epoll_event evs[256];
    while (now_ns() < deadline) {
        if (!started && listening == nclients) {
            started = 1;
            rss_listening = server_pid != NULL ? rss_kb(server_pid) : -1;
            cpu_listening = server_pid != NULL ? cpu_s(server_pid) : 0;
            t_start = now_ns();
            pthread_create(&tid, NULL, sender, NULL);
        }
        if (started && sender_done && nsamples == (size_t)(nclients * notifies))
            break;
        if (started && sender_done && now_ns() - t_last_data > 3000000000ull)
            break; /* nothing more is coming */
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; ++i) {
            struct client *c = evs[i].data.ptr;
            for (;;) {
                ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
                if (r > 0) {
                    c->len += r;
                    int was = c->listening;
                    size_t before = nsamples;
                    scan(c, samples, &nsamples);
                    listening += c->listening && !was;
                    if (nsamples != before)
                        t_last_data = now_ns();
                    continue;
                }
                if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    ++lost;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                }
                break;
            }
        }
    }
    if (!started) {
        fprintf(stderr, "bench_listen: only %ld of %ld clients were listening after 30 s\n", listening, nclients);
        return 1;
    }
    pthread_join(tid, NULL);
    double secs = (t_last_data - t_start) / 1e9;
    qsort(samples, nsamples, sizeof(*samples), cmp);
#define PCT(p) (nsamples != 0 ? samples[(size_t)((nsamples - 1) * (p))] / 1e6 : 0)
    printf("clients %ld, NOTIFYs %ld (one every %ld us), deliveries %zu of %ld (%.2f%%), lost connections %ld\n", nclients,
           notifies, interval_us, nsamples, nclients * notifies, 100.0 * nsamples / (nclients * notifies), lost);
    printf("NOTIFY -> client latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", PCT(0.5), PCT(0.9), PCT(0.99),
           PCT(0.999), PCT(1.0));
    printf("deliveries per second: %.0f (over %.2f s)\n", nsamples / secs, secs);
    if (server_pid != NULL)
        printf("server CPU: %.2f s for the deliveries, %.2f us each\n", cpu_s(server_pid) - cpu_listening,
               (cpu_s(server_pid) - cpu_listening) * 1e6 / (nsamples != 0 ? nsamples : 1));
    if (server_pid != NULL)
        printf("server VmRSS: %ld kB with every client listening, %ld kB after the deliveries\n", rss_listening,
               rss_kb(server_pid));
    return 0;
}
