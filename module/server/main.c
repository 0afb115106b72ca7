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
#include <openssl/opensslv.h>
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
                "  -m, --mode MODE   as h2o: worker or master (the same here: one process; SIGHUP reloads),\n"
                "                    daemon (detach first), test (as -t)\n"
                "  -v, --version     print the version and exit\n"
                "  -h, --help        print this help and exit\n");
}

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

/* --mode=daemon: detached (two forks, a new session, stdin and stdout on /dev/null; stderr is kept
 * until error-log takes it); the pid file names the daemon. */
static int daemonize(void)
{
    pid_t pid = fork();
    if (pid == -1) {
        perror("h2o-db: fork");
        return -1;
    }
    if (pid != 0)
        _exit(0);
    setsid();
    if ((pid = fork()) == -1) {
        perror("h2o-db: fork");
        return -1;
    }
    if (pid != 0)
        _exit(0);
    int fd = open("/dev/null", O_RDWR);
    if (fd != -1) {
        dup2(fd, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        close(fd);
    }
    return 0;
}

/* Written whole, then renamed into place: whoever reads the pid file finds a pid in it or no file. */
static int write_pid_file(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    int ok = fp != NULL && fprintf(fp, "%d\n", (int)getpid()) > 0;
    if (fp != NULL && fclose(fp) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        perror(path);
        unlink(tmp);
        return -1;
    }
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

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"conf", required_argument, NULL, 'c'},
                                             {"test", no_argument, NULL, 't'},
                                             {"connect", no_argument, NULL, 'C'},
                                             {"version", no_argument, NULL, 'v'},
                                             {"help", no_argument, NULL, 'h'},
                                             {"mode", required_argument, NULL, 'm'},
                                             {NULL}};
    const char *config_path = NULL;
    int test_mode = 0, daemon_mode = 0, connect = 0, ch;

    while ((ch = getopt_long(argc, argv, "c:tvhm:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            test_mode = 1;
            break;
        case 'm': /* h2o's modes: one process here serves as worker and master (SIGHUP reloads) */
            if (strcmp(optarg, "test") == 0) {
                test_mode = 1;
            } else if (strcmp(optarg, "daemon") == 0) {
                daemon_mode = 1;
            } else if (strcmp(optarg, "worker") != 0 && strcmp(optarg, "master") != 0) {
                fprintf(stderr, "h2o-db: unknown mode `%s` (worker, master, daemon or test)\n", optarg);
                return 1;
            }
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

    if (daemon_mode && daemonize() != 0)
        return 1;
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
