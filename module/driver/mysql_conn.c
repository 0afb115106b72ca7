/*
 * MySQL / MariaDB: the connection on the loop. mysql.c's step machine decides which connector
 * call runs; this file gives it a connection to run on and the waiting in between:
 *   open      the connector's options, and where to connect: a host name is resolved with
 *             uv_getaddrinfo first (the connector would resolve it synchronously) and reaches
 *             the connector as a numeric address
 *   waiting   a call that would block returns MYSQL_WAIT_READ / _WRITE / _TIMEOUT: a uv_poll on
 *             mysql_get_socket and a uv_timer (mysql_get_timeout_value_ms) resume it; while
 *             idle, a readable socket means the server is closing the connection
 *   failing   once, logged, reported to the pool; a failed connection is never reused
 *   cancel    KILL QUERY, from a connection of its own on libuv's thread pool
 *   close     the call that waits is abandoned, COM_QUIT, memory freed once the handles are
 * and the blocking start-up helper (run_script).
 */
#include <netinet/in.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "driver/mysql.h"
#include "driver/resolve.h"

#define CONNECT_TIMEOUT_MS 10000
#define COROUTINE_STACK    (128 * 1024) /* the connector's default (16 KB) is tight for a TLS handshake */

/* KILL QUERY needs a connection of its own, opened the blocking way: on libuv's thread pool */
struct cancel_work {
    uv_work_t work;
    const h2o_db_bind_t *bind;
    char *address;
    unsigned long thread_id;
    h2o_db_mysql_conn_t *conn; /* NULL once the connection is gone */
};

/* mysql_library_init is not thread-safe, and mysql_init calls it when nobody did */
static pthread_once_t library_once = PTHREAD_ONCE_INIT;

static void library_init(void)
{
    mysql_library_init(0, NULL, NULL);
}

void h2o_db_mysql_library_init(void)
{
    pthread_once(&library_once, library_init);
}

/* The connector's options, from the URL. */
static void set_options(MYSQL *mysql, const h2o_db_url_t *url, int nonblocking)
{
    if (nonblocking) {
        size_t stack = COROUTINE_STACK;
        mysql_options(mysql, MYSQL_OPT_NONBLOCK, &stack);
    }
    unsigned timeout = url->mysql.connect_timeout != 0 ? url->mysql.connect_timeout : CONNECT_TIMEOUT_MS / 1000;
    mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(mysql, MYSQL_SET_CHARSET_NAME, url->mysql.charset != NULL ? url->mysql.charset : "utf8mb4");
    my_bool off = 0;
    mysql_options(mysql, MYSQL_OPT_LOCAL_INFILE, &off);
    mysql_optionsv(mysql, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "h2o-db");
    if (url->mysql.ssl_key != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_KEY, url->mysql.ssl_key);
    if (url->mysql.ssl_cert != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CERT, url->mysql.ssl_cert);
    if (url->mysql.ssl_ca != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CA, url->mysql.ssl_ca);
    if (url->mysql.ssl_capath != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CAPATH, url->mysql.ssl_capath);
    if (url->mysql.ssl_cipher != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CIPHER, url->mysql.ssl_cipher);
    if (url->mysql.ssl_crl != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CRL, url->mysql.ssl_crl);
    if (url->mysql.ssl_crlpath != NULL)
        mysql_options(mysql, MYSQL_OPT_SSL_CRLPATH, url->mysql.ssl_crlpath);
    my_bool enforce = url->mysql.ssl || url->mysql.ssl_verify_cert, verify = url->mysql.ssl_verify_cert != 0;
    if (enforce)
        mysql_options(mysql, MYSQL_OPT_SSL_ENFORCE, &enforce);
    mysql_options(mysql, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
}

/* ---- failure ---- */

void h2o_db_mysql_fail(h2o_db_mysql_conn_t *c, const char *sqlstate, const char *message)
{
    if (c->phase == H2O_DB_MYSQL_BROKEN)
        return;
    c->phase = H2O_DB_MYSQL_BROKEN;
    if (c->poll != NULL)
        uv_poll_stop(c->poll);
    c->poll_events = 0;
    uv_timer_stop(&c->io_timer);
    uv_timer_stop(&c->connect_timer);
    c->super.cbs->failed(&c->super, sqlstate, message);
}

void h2o_db_mysql_fail_from_mysql(h2o_db_mysql_conn_t *c, const char *fallback_sqlstate)
{
    char msg[256];
    unsigned err = mysql_errno(c->mysql);
    const char *state = mysql_sqlstate(c->mysql);
    snprintf(msg, sizeof(msg), "%s", err != 0 ? mysql_error(c->mysql) : "connection failure");
    msg[strcspn(msg, "\n")] = '\0';
    if (c->phase == H2O_DB_MYSQL_READY)
        h2o_db_mysql_fail(c, h2o_db_mysql_lost_sqlstate(err), msg);
    else
        h2o_db_mysql_fail(c, state != NULL && strncmp(state, "08", 2) == 0 ? state : fallback_sqlstate, msg);
}

static void on_fail_later(h2o_db_later_t *later)
{
    h2o_db_mysql_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_mysql_conn_t, fail_later, later);
    h2o_db_mysql_fail(c, c->fail_sqlstate, c->fail_message);
}

void h2o_db_mysql_fail_later(h2o_db_mysql_conn_t *c, const char *sqlstate, const char *message)
{
    snprintf(c->fail_sqlstate, sizeof(c->fail_sqlstate), "%s", sqlstate);
    snprintf(c->fail_message, sizeof(c->fail_message), "%s", message);
    h2o_db_later(c->super.thread, &c->fail_later);
}

static void free_conn(h2o_db_mysql_conn_t *c);

/* ---- open: where to connect ---- */

/* libmariadb 3.3 closes the descriptor of a unix socket it could not connect to twice (strace:
 * close(N) = 0, close(N) = -1 EBADF); in between, another thread may have been given N — an HTTP
 * client of the server, whose connection the second close then resets. So a unix socket is
 * tried here first (non-blocking: it never waits), and a socket that cannot be reached is
 * answered as the connector words it, without the connector. Any thread. */
static int unix_socket_reachable(const char *path, char *err, size_t errsz)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int ok = fd != -1 && (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 || errno == EAGAIN || errno == EINPROGRESS);
    int saved = errno;
    if (fd != -1)
        close(fd);
    if (!ok)
        snprintf(err, errsz, "Can't connect to local server through socket '%s' (%d)", path, saved);
    return ok;
}

static void on_connect_timeout(uv_timer_t *timer)
{
    h2o_db_mysql_conn_t *c = timer->data;
    h2o_db_mysql_fail(c, "08001", "timed out while connecting to the database");
}

static void on_start_later(h2o_db_later_t *later)
{
    h2o_db_mysql_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_mysql_conn_t, start_later, later);
    if (c->phase == H2O_DB_MYSQL_RESOLVE)
        h2o_db_mysql_start_handshake(c);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    h2o_db_mysql_conn_t *c = req->data;
    if (--c->handles_open == 0) {
        /* closed while resolving */
        uv_freeaddrinfo(res);
        free_conn(c);
        return;
    }
    if (c->phase == H2O_DB_MYSQL_BROKEN) {
        uv_freeaddrinfo(res);
        return;
    }
    char addr[INET6_ADDRSTRLEN], msg[300];
    if (h2o_db_resolved_address(status, res, c->super.bind->url.mysql.host, addr, sizeof(addr), msg, sizeof(msg)) != 0) {
        h2o_db_mysql_fail(c, "08001", msg);
        return;
    }
    free(c->address);
    c->address = strdup(addr);
    h2o_db_mysql_start_handshake(c);
}

void h2o_db_mysql_connect(h2o_db_mysql_conn_t *c)
{
    h2o_db_url_t *url = &c->super.bind->url;
    uv_timer_init(c->super.thread->loop, &c->io_timer);
    uv_timer_init(c->super.thread->loop, &c->connect_timer);
    c->io_timer.data = c;
    c->connect_timer.data = c;
    c->handles_open = 2;
    c->poll_fd = -1;
    c->start_later.cb = on_start_later;
    c->fail_later.cb = on_fail_later;
    c->phase = H2O_DB_MYSQL_RESOLVE;
    uv_timer_start(&c->connect_timer, on_connect_timeout, CONNECT_TIMEOUT_MS, 0);
    h2o_db_mysql_library_init();
    if ((c->mysql = mysql_init(NULL)) == NULL) {
        h2o_db_mysql_fail_later(c, "08001", "out of memory");
        return;
    }
    set_options(c->mysql, url, 1);

    /* where to connect: host names are resolved here, not by the connector (it would block) */
    const char *host = url->mysql.host;
    char err[512];
    if (url->mysql.unix_socket != NULL) {
        if (!unix_socket_reachable(url->mysql.unix_socket, err, sizeof(err))) {
            h2o_db_mysql_fail_later(c, "08001", err);
            return;
        }
    } else if (host == NULL || strcmp(host, "localhost") == 0) {
        c->address = strdup("127.0.0.1"); /* TCP, as aiomysql and pymysql do */
    } else if (h2o_db_is_numeric_host(host)) {
        c->address = strdup(host);
    } else if (!url->mysql.ssl_verify_cert) {
        c->gai.data = c;
        ++c->handles_open;
        if (h2o_db_resolve(c->super.thread->loop, &c->gai, on_resolved, host) != 0) {
            --c->handles_open;
            h2o_db_mysql_fail_later(c, "08001", "cannot start resolving the database host");
        }
        return;
    }
    /* (a host name whose certificate is verified goes to the connector as it is: TLS checks it) */
    h2o_db_later(c->super.thread, &c->start_later);
}

/* ---- waiting ---- */

static void on_poll(uv_poll_t *poll, int status, int events);

static int watch(h2o_db_mysql_conn_t *c, int events)
{
    int fd = (int)mysql_get_socket(c->mysql);
    if (fd < 0) {
        h2o_db_mysql_fail(c, c->phase == H2O_DB_MYSQL_READY ? "08006" : "08001", "the database connection has no socket");
        return -1;
    }
    if (c->poll != NULL && c->poll_fd != fd) {
        uv_close((uv_handle_t *)c->poll, (uv_close_cb)free);
        c->poll = NULL;
    }
    if (c->poll == NULL) {
        c->poll = malloc(sizeof(*c->poll));
        if (uv_poll_init(c->super.thread->loop, c->poll, fd) != 0) {
            free(c->poll);
            c->poll = NULL;
            h2o_db_mysql_fail(c, "08006", "cannot watch the database socket");
            return -1;
        }
        c->poll->data = c;
        c->poll_fd = fd;
        c->poll_events = 0;
    }
    if (events != c->poll_events) {
        if (events == 0)
            uv_poll_stop(c->poll);
        else
            uv_poll_start(c->poll, events, on_poll);
        c->poll_events = events;
    }
    return 0;
}

static void on_io_timeout(uv_timer_t *timer)
{
    h2o_db_mysql_conn_t *c = timer->data;
    if (c->phase != H2O_DB_MYSQL_BROKEN && c->in_call)
        h2o_db_mysql_drive(c, MYSQL_WAIT_TIMEOUT);
}

/* The connector call waits: watch what it asks for. */
void h2o_db_mysql_wait_for(h2o_db_mysql_conn_t *c, int status)
{
    c->in_call = 1;
    int events = ((status & MYSQL_WAIT_READ) != 0 ? UV_READABLE : 0) | ((status & MYSQL_WAIT_WRITE) != 0 ? UV_WRITABLE : 0);
    if (watch(c, events) != 0)
        return;
    if ((status & MYSQL_WAIT_TIMEOUT) != 0)
        uv_timer_start(&c->io_timer, on_io_timeout, mysql_get_timeout_value_ms(c->mysql), 0);
    else
        uv_timer_stop(&c->io_timer);
}

/* Nothing runs: a readable socket now means the server is closing the connection. */
void h2o_db_mysql_watch_idle(h2o_db_mysql_conn_t *c)
{
    uv_timer_stop(&c->io_timer);
    watch(c, UV_READABLE);
}

void h2o_db_mysql_unwatch(h2o_db_mysql_conn_t *c)
{
    uv_timer_stop(&c->io_timer);
    if (c->poll != NULL && c->poll_events != 0) {
        uv_poll_stop(c->poll);
        c->poll_events = 0;
    }
}

static void on_idle_readable(h2o_db_mysql_conn_t *c)
{
    unsigned char buf[512];
    ssize_t n = recv(c->poll_fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n > 0 && mysql_get_ssl_cipher(c->mysql) != NULL) {
        /* TLS may have something to say (e.g. TLS 1.3 session tickets): the next statement will tell */
        watch(c, 0);
        return;
    }
    char msg[256] = "the server closed the connection";
    const char *sqlstate = "08006";
    /* an error packet: 3 bytes length, 1 sequence, 0xff, 2 bytes code, '#', 5 bytes SQLSTATE, message */
    if (n > 13 && buf[4] == 0xff && buf[7] == '#') {
        unsigned err = buf[5] | (buf[6] << 8);
        size_t len = (size_t)(buf[0] | (buf[1] << 8) | (buf[2] << 16));
        size_t avail = (size_t)n - 13, mlen = len > 9 ? len - 9 : 0;
        if (mlen > avail)
            mlen = avail;
        snprintf(msg, sizeof(msg), "%.*s", (int)mlen, (const char *)buf + 13);
        msg[strcspn(msg, "\n")] = '\0';
        sqlstate = h2o_db_mysql_lost_sqlstate(err);
    }
    h2o_db_mysql_fail(c, sqlstate, msg);
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    h2o_db_mysql_conn_t *c = poll->data;
    if (c == NULL || c->phase == H2O_DB_MYSQL_BROKEN)
        return;
    if (!c->in_call) {
        if (c->phase == H2O_DB_MYSQL_READY)
            on_idle_readable(c);
        return;
    }
    int ready = 0;
    if (status < 0) {
        /* let the connector find out what is wrong */
        ready = MYSQL_WAIT_READ | MYSQL_WAIT_WRITE;
    } else {
        if ((events & UV_READABLE) != 0)
            ready |= MYSQL_WAIT_READ;
        if ((events & UV_WRITABLE) != 0)
            ready |= MYSQL_WAIT_WRITE;
    }
    if (ready != 0)
        h2o_db_mysql_drive(c, ready);
}

/* ---- cancel (pinned connections only: the pool never cancels a shared one) ---- */

static void run_cancel(uv_work_t *work)
{
    struct cancel_work *cw = (struct cancel_work *)work;
    const h2o_db_url_t *url = &cw->bind->url;
    MYSQL *mysql = mysql_init(NULL);
    if (mysql == NULL)
        return;
    set_options(mysql, url, 0);
    const char *host = url->mysql.unix_socket != NULL ? "localhost" : cw->address != NULL ? cw->address : url->mysql.host;
    const char *password = cw->bind->password != NULL ? cw->bind->password : url->mysql.password;
    char err[512];
    if ((url->mysql.unix_socket == NULL || unix_socket_reachable(url->mysql.unix_socket, err, sizeof(err))) &&
        mysql_real_connect(mysql, host, url->mysql.user, password, NULL, url->mysql.port, url->mysql.unix_socket, 0) != NULL) {
        char sql[64];
        snprintf(sql, sizeof(sql), "KILL QUERY %lu", cw->thread_id);
        mysql_query(mysql, sql); /* (it may have ended meanwhile: nothing to do then) */
    }
    mysql_close(mysql);
}

static void after_cancel(uv_work_t *work, int status)
{
    struct cancel_work *cw = (struct cancel_work *)work;
    h2o_db_mysql_conn_t *c = cw->conn;
    free(cw->address);
    free(cw);
    if (c == NULL)
        return;
    c->cancel = NULL;
    c->super.cbs->cancelled(&c->super);
}

static void on_cancelled_later(h2o_db_later_t *later)
{
    h2o_db_mysql_conn_t *c = H2O_STRUCT_FROM_MEMBER(h2o_db_mysql_conn_t, cancelled_later, later);
    c->super.cbs->cancelled(&c->super);
}

/* Stops the statement that runs (KILL QUERY); what was queued behind it runs afterwards. */
void h2o_db_mysql_cancel(h2o_db_pipe_t *conn)
{
    h2o_db_mysql_conn_t *c = (h2o_db_mysql_conn_t *)conn;
    c->cancelled_later.cb = on_cancelled_later;
    if (c->phase != H2O_DB_MYSQL_READY || c->cancel != NULL || !c->job_running || c->thread_id == 0) {
        h2o_db_later(conn->thread, &c->cancelled_later); /* never from inside cancel() */
        return;
    }
    struct cancel_work *cw = calloc(1, sizeof(*cw));
    cw->bind = conn->bind;
    cw->address = c->address != NULL ? strdup(c->address) : NULL;
    cw->thread_id = c->thread_id;
    cw->conn = c;
    c->cancel = cw;
    if (uv_queue_work(conn->thread->loop, &cw->work, run_cancel, after_cancel) != 0) {
        free(cw->address);
        free(cw);
        c->cancel = NULL;
        h2o_db_later(conn->thread, &c->cancelled_later);
    }
}

/* ---- close ---- */

static void free_conn(h2o_db_mysql_conn_t *c)
{
    if (c->mysql != NULL) {
        h2o_db_mysql_abandon_call(c);
        if (c->handshake_done) {
            /* COM_QUIT; if even that would wait, the socket is shut and it ends at once */
            int status = mysql_close_start(c->mysql);
            if (status != 0) {
                int fd = (int)mysql_get_socket(c->mysql);
                if (fd >= 0)
                    shutdown(fd, SHUT_RDWR);
                for (int i = 0; i < 1000 && status != 0; ++i)
                    status = mysql_close_cont(c->mysql, MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_TIMEOUT);
            }
        } else {
            mysql_close(c->mysql);
        }
    }
    h2o_db_mysql_dispose_steps(c);
    free(c->address);
    free(c);
}

static void on_closed(uv_handle_t *handle)
{
    h2o_db_mysql_conn_t *c = handle->data;
    if (--c->handles_open == 0)
        free_conn(c);
}

void h2o_db_mysql_close(h2o_db_pipe_t *conn)
{
    h2o_db_mysql_conn_t *c = (h2o_db_mysql_conn_t *)conn;
    c->phase = H2O_DB_MYSQL_BROKEN;
    if (c->cancel != NULL) {
        c->cancel->conn = NULL;
        c->cancel = NULL;
    }
    h2o_db_later_cancel(&c->start_later);
    h2o_db_later_cancel(&c->fail_later);
    h2o_db_later_cancel(&c->cancelled_later);
    h2o_db_later_cancel(&c->resume_later);
    if (h2o_linklist_is_linked(&c->flusher.link))
        h2o_linklist_unlink(&c->flusher.link);
    if (c->poll != NULL) {
        /* the socket stays open until the watcher is gone (mysql_close in free_conn) */
        c->poll->data = NULL;
        uv_close((uv_handle_t *)c->poll, (uv_close_cb)free);
        c->poll = NULL;
    }
    if (c->handles_open > 2)
        uv_cancel((uv_req_t *)&c->gai); /* on_resolved frees when it runs */
    uv_close((uv_handle_t *)&c->io_timer, on_closed);
    uv_close((uv_handle_t *)&c->connect_timer, on_closed);
}

/* ---- start-up (main thread, blocking) ---- */

int h2o_db_mysql_run_script(h2o_db_bind_t *bind, const char *sql, char *err, size_t errsz)
{
    h2o_db_url_t *url = &bind->url;
    h2o_db_mysql_library_init();
    MYSQL *mysql = mysql_init(NULL);
    if (mysql == NULL) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    set_options(mysql, url, 0);
    const char *host = url->mysql.unix_socket != NULL                                         ? "localhost"
                       : url->mysql.host == NULL || strcmp(url->mysql.host, "localhost") == 0 ? "127.0.0.1"
                                                                                              : url->mysql.host;
    const char *password = bind->password != NULL ? bind->password : url->mysql.password;
    char why[512];
    if (url->mysql.unix_socket != NULL && !unix_socket_reachable(url->mysql.unix_socket, why, sizeof(why))) {
        snprintf(err, errsz, "cannot connect to %s: %s", url->display, why);
        mysql_close(mysql);
        return -1;
    }
    if (mysql_real_connect(mysql, host, url->mysql.user, password, url->mysql.database, url->mysql.port, url->mysql.unix_socket,
                           CLIENT_MULTI_STATEMENTS | CLIENT_FOUND_ROWS) == NULL) {
        snprintf(err, errsz, "cannot connect to %s: %s", url->display, mysql_error(mysql));
        mysql_close(mysql);
        return -1;
    }
    int ret = 0;
    if (sql != NULL) {
        int status = mysql_real_query(mysql, sql, (unsigned long)strlen(sql));
        while (status == 0) {
            MYSQL_RES *res = mysql_store_result(mysql);
            if (res != NULL)
                mysql_free_result(res);
            else if (mysql_field_count(mysql) != 0)
                break;
            status = mysql_next_result(mysql); /* -1: no more, > 0: an error */
        }
        if (status > 0 || (status == 0 && mysql_errno(mysql) != 0)) {
            snprintf(err, errsz, "%s (SQLSTATE %s)", mysql_error(mysql), mysql_sqlstate(mysql));
            ret = -1;
        }
    }
    mysql_close(mysql);
    return ret;
}
