/*
 * `listen`, as h2o.conf 2.2.5 writes it, at global or host level:
 *
 *   listen: 8080                     all IPv4 addresses (h2o-db also takes HOST:PORT)
 *   listen: {host: H, port: P, ssl: {...}, proxy-protocol: ON}
 *   listen: {type: unix, port: /run/app.sock, owner: www-data, permission: 600}   (`path:` too)
 *   a sequence of those
 *
 * A listen at global level serves every host; at host level only the hosts that declare it (and
 * its `ssl:` gives that host its certificate by SNI). One address declared twice is one listener.
 * Then, once the config is applied, the sockets: one SO_REUSEPORT socket per worker thread for
 * TCP, one unix socket that every thread accepts on.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "server/server.h"

struct listen_configurator {
    h2o_configurator_t super;
    h2o_db_server_t *server;
};

static int same_address(const h2o_db_listen_t *l, const struct sockaddr *sa, socklen_t len)
{
    return l->addrlen == len && memcmp(&l->addr, sa, len) == 0;
}

/* The listener of this address, made when new (a global one has hosts == NULL: every host). */
static h2o_db_listen_t *listener_for(h2o_db_server_t *server, yoml_t *node, h2o_configurator_context_t *ctx,
                                     const struct sockaddr *sa, socklen_t len, const char *display, int *is_new)
{
    for (size_t i = 0; i < server->listens.size; ++i) {
        if (same_address(server->listens.entries + i, sa, len)) {
            *is_new = 0;
            return server->listens.entries + i;
        }
    }
    h2o_vector_reserve(NULL, &server->listens, server->listens.size + 1);
    h2o_db_listen_t *l = server->listens.entries + server->listens.size++;
    memset(l, 0, sizeof(*l));
    memcpy(&l->addr, sa, len);
    l->addrlen = len;
    l->display = strdup(display);
    l->filename = strdup(node->filename != NULL ? node->filename : "-");
    l->line = node->line;
    l->column = node->column;
    l->permission = -1;
    if (ctx->hostconf != NULL)
        l->hosts = calloc(1, sizeof(*l->hosts));
    *is_new = 1;
    return l;
}

struct listen_args {
    const char *host, *port, *type, *owner;
    yoml_t *port_node;
    yoml_t *ssl;
    int proxy_protocol, permission;
};

/* Adds this declaration (args) to the listener of one address. */
static int declare(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node, const struct listen_args *a,
                   const struct sockaddr *sa, socklen_t len, const char *display)
{
    h2o_db_server_t *server = ((struct listen_configurator *)cmd->configurator)->server;
    int is_new;
    h2o_db_listen_t *l = listener_for(server, node, ctx, sa, len, display, &is_new);
    if (is_new) {
        l->proxy_protocol = a->proxy_protocol;
        l->owner = a->owner != NULL ? strdup(a->owner) : NULL;
        l->permission = a->permission;
    } else if ((l->ssl != NULL) != (a->ssl != NULL)) {
        h2o_configurator_errprintf(cmd, node, "%s is declared for %s already (at %s:%zu); it cannot serve both", display,
                                   l->ssl != NULL ? "HTTPS" : "HTTP", l->filename, l->line + 1);
        return -1;
    } else if (l->proxy_protocol != a->proxy_protocol) {
        h2o_configurator_errprintf(cmd, node, "%s is declared with proxy-protocol %s already (at %s:%zu)", display,
                                   l->proxy_protocol ? "ON" : "OFF", l->filename, l->line + 1);
        return -1;
    }
    if (a->ssl != NULL && h2o_db_ssl_add(cmd, a->ssl, ctx->hostconf, &l->ssl) != 0)
        return -1;
    if (l->hosts != NULL && ctx->hostconf != NULL) {
        size_t n = 0;
        while (l->hosts[n] != NULL)
            ++n;
        l->hosts = realloc(l->hosts, (n + 2) * sizeof(*l->hosts));
        l->hosts[n] = ctx->hostconf;
        l->hosts[n + 1] = NULL;
    }
    return 0;
}

static int declare_unix(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node, const struct listen_args *a)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (a->port[0] == '\0' || strlen(a->port) >= sizeof(sun.sun_path)) {
        h2o_configurator_errprintf(cmd, node, "a unix socket's path must be 1 to %zu bytes long", sizeof(sun.sun_path) - 1);
        return -1;
    }
    strcpy(sun.sun_path, a->port);
    return declare(cmd, ctx, node, a, (struct sockaddr *)&sun, sizeof(sun), a->port);
}

static int declare_tcp(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node, const struct listen_args *a)
{
    char *end;
    long port = strtol(a->port, &end, 10);
    if (a->port[0] == '\0' || *end != '\0' || port < 1 || port > 65535) {
        h2o_configurator_errprintf(cmd, a->port_node, "port must be a number between 1 and 65535, not `%s`", a->port);
        return -1;
    }
    /* `listen: PORT` binds 0.0.0.0 (IPv4 only; with no AI_ADDRCONFIG, which refuses it where the
     * only interface is loopback); a host name listens on each of its addresses, as h2o does */
    struct addrinfo hints = {.ai_family = a->host == NULL ? AF_INET : AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV | (a->host != NULL ? AI_ADDRCONFIG : 0)},
                    *res;
    int err = getaddrinfo(a->host, a->port, &hints, &res);
    if (err != 0) {
        if (a->host != NULL)
            h2o_configurator_errprintf(cmd, node, "cannot resolve host `%s`: %s", a->host, gai_strerror(err));
        else
            h2o_configurator_errprintf(cmd, node, "cannot listen on port %s: %s", a->port, gai_strerror(err));
        return -1;
    }
    int ret = 0;
    for (struct addrinfo *ai = res; ai != NULL && ret == 0; ai = ai->ai_next) {
        char host[NI_MAXHOST], display[NI_MAXHOST + 16];
        getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), NULL, 0, NI_NUMERICHOST);
        snprintf(display, sizeof(display), ai->ai_family == AF_INET6 ? "[%s]:%ld" : "%s:%ld", host, port);
        ret = declare(cmd, ctx, node, a, ai->ai_addr, ai->ai_addrlen, display);
    }
    freeaddrinfo(res);
    return ret;
}

static int on_off(h2o_configurator_command_t *cmd, yoml_t *v, const char *name, int *out)
{
    if (v->type == YOML_TYPE_SCALAR && (strcasecmp(v->data.scalar, "ON") == 0 || strcasecmp(v->data.scalar, "OFF") == 0)) {
        *out = strcasecmp(v->data.scalar, "ON") == 0;
        return 0;
    }
    h2o_configurator_errprintf(cmd, v, "`%s` must be ON or OFF", name);
    return -1;
}

/* The attributes of `listen: {...}` into args. */
static int read_mapping(h2o_configurator_command_t *cmd, yoml_t *node, struct listen_args *a)
{
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        const char *name = k->type == YOML_TYPE_SCALAR ? k->data.scalar : "";
        if (strcmp(name, "ssl") == 0) {
            a->ssl = v;
            continue;
        }
        if (strcmp(name, "proxy-protocol") == 0) {
            if (on_off(cmd, v, name, &a->proxy_protocol) != 0)
                return -1;
            continue;
        }
        const char **slot = strcmp(name, "host") == 0                                ? &a->host
                            : strcmp(name, "port") == 0 || strcmp(name, "path") == 0 ? &a->port
                            : strcmp(name, "type") == 0                              ? &a->type
                            : strcmp(name, "owner") == 0                             ? &a->owner
                                                                                     : NULL;
        if (slot == NULL && strcmp(name, "permission") != 0) {
            h2o_configurator_errprintf(cmd, k,
                                       "unknown attribute (listen takes host, port, type, ssl, proxy-protocol; "
                                       "a unix socket also owner and permission)");
            return -1;
        }
        if (v->type != YOML_TYPE_SCALAR) {
            h2o_configurator_errprintf(cmd, v, "`%s` must be a scalar", name);
            return -1;
        }
        if (strcmp(name, "permission") == 0) {
            char *end;
            long mode = strtol(v->data.scalar, &end, 8);
            if (v->data.scalar[0] == '\0' || *end != '\0' || mode < 0 || mode > 07777) {
                h2o_configurator_errprintf(cmd, v, "`permission` must be an octal mode such as 600, not `%s`", v->data.scalar);
                return -1;
            }
            a->permission = (int)mode;
            continue;
        }
        *slot = v->data.scalar;
        if (slot == &a->port)
            a->port_node = v;
    }
    if (a->port == NULL) {
        h2o_configurator_errprintf(cmd, node, "mandatory attribute `port` is missing");
        return -1;
    }
    return 0;
}

static int on_listen_one(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    struct listen_args a = {.type = "tcp", .permission = -1};
    char *host = NULL;
    int ret;
    if (node->type == YOML_TYPE_SCALAR) {
        const char *s = node->data.scalar, *colon = strrchr(s, ':');
        a.port = s;
        a.port_node = node;
        if (colon != NULL) { /* HOST:PORT, [V6]:PORT */
            host = strndup(s, colon - s);
            if (host[0] == '[' && host[strlen(host) - 1] == ']') {
                memmove(host, host + 1, strlen(host));
                host[strlen(host) - 1] = '\0';
            }
            a.host = host;
            a.port = colon + 1;
        }
    } else if (node->type != YOML_TYPE_MAPPING) {
        h2o_configurator_errprintf(cmd, node, "expected a port, HOST:PORT, or a mapping with `port`");
        return -1;
    } else if (read_mapping(cmd, node, &a) != 0) {
        return -1;
    }
    if (strcmp(a.type, "unix") == 0) {
        ret = declare_unix(cmd, ctx, node, &a);
    } else if (strcmp(a.type, "tcp") == 0) {
        if (a.owner != NULL || a.permission != -1) {
            h2o_configurator_errprintf(cmd, node, "`owner` and `permission` are for unix sockets (type: unix)");
            ret = -1;
        } else {
            ret = declare_tcp(cmd, ctx, node, &a);
        }
    } else {
        h2o_configurator_errprintf(cmd, node, "unknown listen type `%s` (expected tcp or unix)", a.type);
        ret = -1;
    }
    free(host);
    return ret;
}

static int on_listen(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    if (node->type != YOML_TYPE_SEQUENCE)
        return on_listen_one(cmd, ctx, node);
    for (size_t i = 0; i < node->data.sequence.size; ++i)
        if (on_listen_one(cmd, ctx, node->data.sequence.elements[i]) != 0)
            return -1;
    return 0;
}

void h2o_db_listen_register_configurator(h2o_db_server_t *server)
{
    struct listen_configurator *c = (void *)h2o_configurator_create(&server->globalconf, sizeof(*c));
    c->server = server;
    h2o_configurator_define_command(&c->super, "listen", H2O_CONFIGURATOR_FLAG_GLOBAL | H2O_CONFIGURATOR_FLAG_HOST, on_listen);
}

/* Sockets */

static void print_error(const h2o_db_listen_t *l, const char *what)
{
    fprintf(stderr, "%s:%zu:%zu: in command listen, cannot %s %s: %s\n", l->filename, l->line + 1, l->column + 1, what, l->display,
            strerror(errno));
}

static int open_tcp(const h2o_db_listen_t *l, int reuseport, int tfo_queues)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    if (fd == -1)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0) ||
        (l->addr.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
        bind(fd, (struct sockaddr *)&l->addr, l->addrlen) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (tfo_queues > 0) /* (the kernel takes it only when net.ipv4.tcp_fastopen allows servers) */
        setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN, &tfo_queues, sizeof(tfo_queues));
    return fd;
}

static int open_unix(const h2o_db_listen_t *l)
{
    const char *path = ((const struct sockaddr_un *)&l->addr)->sun_path;
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            errno = EEXIST;
            return -1;
        }
        unlink(path); /* a socket left by an earlier run */
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    if (bind(fd, (struct sockaddr *)&l->addr, l->addrlen) != 0 || (l->permission != -1 && chmod(path, l->permission) != 0)) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (l->owner != NULL) {
        struct passwd *pw = getpwnam(l->owner);
        if (pw == NULL || chown(path, pw->pw_uid, pw->pw_gid) != 0) {
            if (pw == NULL)
                errno = ENOENT;
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* Binds the unix socket once. */
static int open_unix_listener(h2o_db_listen_t *l)
{
    if ((l->fds[0] = open_unix(l)) == -1) {
        print_error(l, l->owner != NULL && errno == ENOENT ? "give to the owner of" : "bind");
        return -1;
    }
    l->num_fds = 1; /* every thread accepts on it */
    return 0;
}

int h2o_db_server_open_listeners(h2o_db_server_t *server)
{
    for (size_t i = 0; i < server->listens.size; ++i) {
        h2o_db_listen_t *l = server->listens.entries + i;
        if (l->ssl != NULL && server->memcached.cache && server->memcached.context == NULL) {
            /* (libh2o keeps one asynchronous resumption store per process: the last config's) */
            server->memcached.context = h2o_memcached_create_context(
                server->memcached.host, server->memcached.port, server->memcached.text_protocol, 1,
                server->memcached.prefix != NULL ? server->memcached.prefix : "h2o:ssl-session-cache:");
            h2o_accept_setup_async_ssl_resumption(server->memcached.context,
                                                  server->ssl_session_lifetime > 0 ? (unsigned)server->ssl_session_lifetime : 3600);
        }
        if (l->ssl != NULL && server->tickets != NULL)
            h2o_db_ssl_use_tickets(l->ssl, server->tickets);
        if (l->ssl != NULL)
            h2o_db_ssl_set_resumption(l->ssl, server->ssl_resumption, server->ssl_session_lifetime,
                                      server->memcached.context != NULL);
        if (l->fds != NULL)
            continue; /* taken over from the config before a reload */
        l->fds = calloc(server->num_threads, sizeof(int));
        if (l->addr.ss_family == AF_UNIX) {
            if (open_unix_listener(l) != 0)
                return -1;
            continue;
        }
        /* SO_REUSEPORT would share the port with another server already listening there: bind a plain
         * socket first, so that a port in use is an error */
        int probe = open_tcp(l, 0, 0);
        if (probe == -1) {
            print_error(l, "bind");
            return -1;
        }
        close(probe);
        for (unsigned t = 0; t < server->num_threads; ++t) {
            if ((l->fds[t] = open_tcp(l, 1, server->tfo_queues)) == -1) {
                print_error(l, "bind");
                return -1;
            }
            l->num_fds = t + 1;
        }
    }
    return 0;
}

void h2o_db_server_share_listeners(h2o_db_server_t *server, const h2o_db_server_t *old)
{
    for (size_t i = 0; i < server->listens.size; ++i) {
        h2o_db_listen_t *l = server->listens.entries + i;
        for (size_t j = 0; j < old->listens.size; ++j) {
            const h2o_db_listen_t *o = old->listens.entries + j;
            if (!same_address(o, (const struct sockaddr *)&l->addr, l->addrlen) || o->num_fds == 0)
                continue;
            l->fds = calloc(o->num_fds, sizeof(int));
            for (size_t k = 0; k < o->num_fds; ++k) /* (a descriptor that cannot be had is left out) */
                if ((l->fds[l->num_fds] = fcntl(o->fds[k], F_DUPFD_CLOEXEC, 0)) != -1)
                    ++l->num_fds;
            if (l->num_fds == 0) { /* none: h2o_db_server_open_listeners binds it anew */
                free(l->fds);
                l->fds = NULL;
            }
            break;
        }
    }
}

void h2o_db_server_dispose_listens(h2o_db_server_t *server)
{
    for (size_t i = 0; i < server->listens.size; ++i) {
        h2o_db_listen_t *l = server->listens.entries + i;
        free(l->display);
        free(l->filename);
        free(l->hosts);
        free(l->owner);
        for (size_t j = 0; j < l->num_fds; ++j)
            close(l->fds[j]);
        free(l->fds);
        h2o_db_ssl_free(l->ssl);
    }
    free(server->listens.entries);
    memset(&server->listens, 0, sizeof(server->listens));
}
