/*
 * h2o-db: the standalone server.
 *
 *   h2o-db -c FILE               serve
 *   h2o-db -t -c FILE [--connect] check the config (and, with --connect, each database) and exit
 *   h2o-db --version | -h
 *
 * Exit status: 0 after a clean run or check, 1 for a config error (printed as
 * FILE:LINE:COLUMN) or anything that stops the server from starting.
 */
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "h2o_db.h"
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#ifdef H2O_DB_WITH_MRUBY
#include "mruby/mruby.h"
#endif
#include "h2o/serverutil.h"
#include "server/server.h"
#include "server/yaml.h"

static void usage(FILE *fp)
{
    fprintf(fp, "Usage: h2o-db [-t [--connect]] -c FILE\n"
                "       h2o-db --version\n"
                "\n"
                "  -c, --conf FILE   the config file (h2o.conf-style YAML with db.* directives)\n"
                "  -t, --test        check the config and exit: 0 when good, 1 with FILE:LINE:COLUMN errors\n"
                "      --connect     with -t: also connect to every bound database once\n"
                "  -v, --version     print the version and exit\n"
                "  -h, --help        print this help and exit\n");
}

#ifndef H2O_DB_WITH_MRUBY
/* Built without mruby (meson -Dmruby=disabled, or no libmruby-dev): its directives are known,
 * and refused with what to do, rather than being "unknown". */
static int on_config_no_mruby(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    h2o_configurator_errprintf(cmd, node, "this h2o-db was built without mruby (install libmruby-dev and rebuild)");
    return -1;
}

static void h2o_db_mruby_register_configurator(h2o_globalconf_t *conf)
{
    h2o_configurator_t *c = h2o_configurator_create(conf, sizeof(*c));
    h2o_configurator_define_command(c, "mruby.handler", H2O_CONFIGURATOR_FLAG_PATH, on_config_no_mruby);
    h2o_configurator_define_command(c, "mruby.handler-file", H2O_CONFIGURATOR_FLAG_PATH, on_config_no_mruby);
}
#endif

#ifdef H2O_DB_WITH_MRUBY
#define HAS_MRUBY "YES"
#else
#define HAS_MRUBY "NO"
#endif
#ifdef H2O_DB_WITH_MYSQL
#define HAS_MYSQL "YES"
#else
#define HAS_MYSQL "NO"
#endif

static void print_version(void)
{
    printf("h2o-db %s (libh2o %s, %s)\n", H2O_DB_VERSION, H2O_VERSION, h2o_db_backends());
    printf("OpenSSL: %s\n", OPENSSL_VERSION_TEXT);
    printf("mruby: %s\n", HAS_MRUBY);
    printf("mysql: %s\n", HAS_MYSQL);
}

static void register_configurators(h2o_db_server_t *server)
{
    h2o_globalconf_t *conf = &server->globalconf;
    h2o_db_server_register_configurator(server);
    /* in h2o's order: filters run in the order they are registered (throttle-response before the
     * header filters, so that a header.add'ed X-Traffic throttles) */
    h2o_access_log_register_configurator(conf);
    h2o_compress_register_configurator(conf);
    h2o_expires_register_configurator(conf);
    h2o_errordoc_register_configurator(conf);
    h2o_fastcgi_register_configurator(conf);
    h2o_file_register_configurator(conf);
    h2o_throttle_resp_register_configurator(conf);
    h2o_headers_register_configurator(conf);
    h2o_proxy_register_configurator(conf);
    h2o_reproxy_register_configurator(conf);
    h2o_redirect_register_configurator(conf);
    h2o_status_register_configurator(conf);
    h2o_http2_debug_state_register_configurator(conf);
    h2o_db_c_handler_register_configurator(conf);
    h2o_db_mruby_register_configurator(conf);
    h2o_db_register_configurator(conf);
}

/* The status page's "main" section, as h2o's: version, times, connections, listeners, threads. */
static h2o_iovec_t on_main_status(void *unused, h2o_globalconf_t *conf, h2o_req_t *req)
{
    h2o_db_server_t *server = H2O_STRUCT_FROM_MEMBER(h2o_db_server_t, globalconf, conf);
    char now_str[H2O_TIMESTR_LOG_LEN + 1], launch_str[H2O_TIMESTR_LOG_LEN + 1];
    time_t now = time(NULL);
    h2o_time2str_log(now_str, now);
    h2o_time2str_log(launch_str, server->launch_time);
    size_t cap = 1024;
    h2o_iovec_t ret = {h2o_mem_alloc_pool(&req->pool, cap), 0};
    ret.len = snprintf(ret.base, cap,
                       ",\n \"server-version\": \"h2o-db %s (libh2o %s)\",\n \"openssl-version\": \"%s\",\n"
                       " \"current-time\": \"%s\",\n \"restart-time\": \"%s\",\n \"uptime\": %lld,\n \"generation\": null,\n"
                       " \"connections\": %u,\n \"max-connections\": %u,\n \"listeners\": %zu,\n \"worker-threads\": %u,\n"
                       " \"num-sessions\": %lu",
                       H2O_DB_VERSION, H2O_VERSION, OpenSSL_version(OPENSSL_VERSION), now_str, launch_str,
                       (long long)(now - server->launch_time), __atomic_load_n(&server->num_connections, __ATOMIC_RELAXED),
                       server->max_connections, server->listens.size, server->num_threads,
                       __atomic_load_n(&server->num_sessions, __ATOMIC_RELAXED));
    if (ret.len >= cap)
        ret.len = cap - 1;
    return ret;
}

/* `user:`: the sockets are bound; give up root before anything else is opened. */
static int drop_privileges(const char *user)
{
    if (user == NULL)
        return 0;
    if (getuid() != 0 && geteuid() != 0) {
        fprintf(stderr, "h2o-db: not running as root: `user: %s` is ignored\n", user);
        return 0;
    }
    if (h2o_setuidgid(user) != 0) {
        fprintf(stderr, "h2o-db: cannot switch to user `%s` (see above)\n", user);
        return -1;
    }
    return 0;
}

static int write_pid_file(const char *path)
{
    FILE *fp = fopen(path, "w");
    if (fp == NULL) {
        perror(path);
        return -1;
    }
    fprintf(fp, "%d\n", (int)getpid());
    fclose(fp);
    return 0;
}

/* Opened before privileges are dropped; stderr goes there once the server has started. */
static int open_error_log(const char *path)
{
    /* a file, or `| COMMAND` that libh2o spawns (as for access-log) */
    int fd = h2o_access_log_open_log(path);
    if (fd == -1)
        fprintf(stderr, "h2o-db: cannot open the error log `%s`\n", path);
    return fd;
}

h2o_db_server_t *h2o_db_server_load(const char *config_path, int test_mode)
{
    char err[1024];
    yoml_t *root = h2o_db_yaml_load_file(config_path, err, sizeof(err));
    if (root == NULL) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    h2o_db_server_t *server = calloc(1, sizeof(*server));
    server->config_path = config_path;
    server->shutdown_timeout_ms = H2O_DB_SHUTDOWN_TIMEOUT_MS;
    server->max_connections = H2O_DB_MAX_CONNECTIONS;
    server->tfo_queues = H2O_DB_TCP_FASTOPEN_QUEUE;
    server->ssl_resumption = H2O_DB_SSL_RESUME_CACHE | H2O_DB_SSL_RESUME_TICKET;
    server->launch_time = time(NULL);
    h2o_config_init(&server->globalconf);
    register_configurators(server);
    h2o_config_register_simple_status_handler(&server->globalconf, (h2o_iovec_t){H2O_STRLIT("main")}, on_main_status);

    int ok = h2o_configurator_apply(&server->globalconf, root, test_mode) == 0;
    if (ok && server->listens.size == 0 && !test_mode) {
        fprintf(stderr, "%s:1:1: mandatory configuration directive `listen` is missing\n", config_path);
        ok = 0;
    }
    yoml_free(root, NULL);
    if (!ok) {
        h2o_db_server_retire(server);
        return NULL;
    }
    if (server->num_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        server->num_threads = n > 0 ? (unsigned)n : 1;
    }
    return server;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"conf", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
                                             {"connect", no_argument, NULL, 'C'},    {"version", no_argument, NULL, 'v'},
                                             {"help", no_argument, NULL, 'h'},       {NULL}};
    const char *config_path = NULL;
    int test_mode = 0, connect = 0, ch;

    while ((ch = getopt_long(argc, argv, "c:tvh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            test_mode = 1;
            break;
        case 'C':
            connect = 1;
            break;
        case 'v':
            print_version();
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (config_path == NULL || optind != argc) {
        usage(stderr);
        return 1;
    }
    if (connect && !test_mode) {
        fprintf(stderr, "h2o-db: --connect goes with -t\n");
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    setvbuf(stderr, NULL, _IOLBF, 0);

    /* (static: what the process keeps until it exits stays reachable, for LeakSanitizer) */
    static h2o_db_server_t *server;
    server = h2o_db_server_load(config_path, test_mode);
    if (server == NULL)
        return 1;

    if (test_mode) {
        if (h2o_db_check(&server->globalconf, connect) != 0)
            return 1;
        printf("h2o-db: the configuration in %s is OK\n", config_path);
        return 0;
    }

    if (h2o_db_server_open_listeners(server) != 0)
        return 1;
    if (server->pid_file != NULL && write_pid_file(server->pid_file) != 0)
        return 1;
    int error_log = -1;
    if (server->error_log != NULL && (error_log = open_error_log(server->error_log)) == -1)
        return 1;
    if (drop_privileges(server->user) != 0)
        return 1;
    if (h2o_db_prepare(&server->globalconf) != 0)
        return 1;
    if (error_log != -1) {
        dup2(error_log, STDERR_FILENO);
        close(error_log);
    }

    char *pid_file = server->pid_file != NULL ? strdup(server->pid_file) : NULL; /* (a reload replaces `server`) */
    int status = h2o_db_server_serve(server);

    if (pid_file != NULL)
        unlink(pid_file);
    fprintf(stderr, "h2o-db: stopped\n");
    return status;
}
