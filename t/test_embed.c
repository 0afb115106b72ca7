/*
 * The module as a library (docs/embedding.md): demo/embed, a libh2o server of its own linked
 * against libh2o-db.so, serves a SQLite query over real HTTP (1.1 and 2) and stops cleanly on
 * SIGTERM; its config errors name the file and line; libh2o-db.so exports h2o_db_* names only,
 * every function include/h2o_db.h declares among them; h2o-db exports its
 * h2o_configurator_errprintf; the header's version is the library's. This suite links
 * libh2o-db.so itself, as an embedder does.
 */
#include <ctype.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "harness.h"
#include "h2o_db.h"

static pid_t child;

static void kill_child(void)
{
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        child = 0;
    }
}

static const char *source_dir(void)
{
    const char *d = getenv("H2O_DB_SOURCE_DIR");
    ck_assert_msg(d != NULL, "H2O_DB_SOURCE_DIR is not set: run the suite through meson test");
    return d;
}

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return strdup("");
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, fp)) > 0) {
        len += n;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    fclose(fp);
    return buf;
}

/* Starts BUILD/demo/embed CONFIG PORT with its output in LOG; returns its pid. */
static pid_t start_embed(const char *config, int port, const char *log)
{
    char *bin = th_fmt("%s/demo/embed", th_build_dir()), *port_s = th_fmt("%d", port);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid != -1);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        execl(bin, bin, config, port_s, (char *)NULL);
        _exit(127);
    }
    free(bin);
    free(port_s);
    return pid;
}

struct waiting {
    pid_t pid;
    int port, exited, status;
};

/* the fact waited on: the port accepts a connection (or the process is gone) */
static int port_answers(void *arg)
{
    struct waiting *w = arg;
    if (waitpid(w->pid, &w->status, WNOHANG) == w->pid) {
        w->exited = 1;
        return 1;
    }
    return th_port_accepts(w->port);
}

static int exited(void *arg)
{
    struct waiting *w = arg;
    if (waitpid(w->pid, &w->status, WNOHANG) == w->pid)
        w->exited = 1;
    return w->exited;
}

START_TEST(embed_serves_a_sqlite_query_over_http1_and_http2_and_stops_on_sigterm)
{
    char *dir = th_tmpdir(), *log = th_fmt("%s/embed.log", dir), *conf = th_fmt("%s/demo/embed.conf", source_dir());
    struct waiting w = {.port = th_free_port()};
    w.pid = child = start_embed(conf, w.port, log);
    ck_assert_msg(th_wait_until(port_answers, &w, 20000), "demo/embed does not answer on port %d:\n%s", w.port, read_file(log));
    ck_assert_msg(!w.exited, "demo/embed exited (status %d):\n%s", w.status, read_file(log));

    static const char greetings[] =
        "[{\"id\":1,\"lang\":\"en\",\"text\":\"hello\"},{\"id\":2,\"lang\":\"fr\",\"text\":\"bonjour\"},"
        "{\"id\":3,\"lang\":\"de\",\"text\":\"hallo\"}]";
    char *url = th_fmt("http://127.0.0.1:%d/greetings", w.port);
    const int versions[] = {TH_HTTP1, TH_HTTP2};
    for (size_t i = 0; i < 2; ++i) {
        th_response_t res;
        ck_assert_msg(th_http(&res, versions[i], NULL, url, NULL) == 0, "no answer (curl error %d)", res.curl_error);
        ck_assert_int_eq(res.status, 200);
        ck_assert_int_eq(res.http_version, versions[i] == TH_HTTP2 ? 2 : 11);
        ck_assert_str_eq(res.body, greetings);
        char *type = th_header(&res, "content-type");
        ck_assert_msg(type != NULL && strcmp(type, "application/json") == 0, "content-type %s", type);
        free(type);
        th_response_free(&res);
    }
    free(url);

    /* the SQLite the library was linked with answers too */
    url = th_fmt("http://127.0.0.1:%d/sqlite", w.port);
    th_response_t res;
    ck_assert(th_http(&res, TH_HTTP1, NULL, url, NULL) == 0);
    ck_assert_int_eq(res.status, 200);
    ck_assert_msg(strncmp(res.body, "[{\"version\":\"3.", 15) == 0, "body %s", res.body);
    th_response_free(&res);
    free(url);

    /* SIGTERM: the context is disposed (the pools close) and the process exits 0 */
    kill(w.pid, SIGTERM);
    ck_assert_msg(th_wait_until(exited, &w, 10000), "demo/embed did not stop after SIGTERM:\n%s", read_file(log));
    child = 0;
    char *out = read_file(log);
    ck_assert_msg(WIFEXITED(w.status) && WEXITSTATUS(w.status) == 0, "exit status 0x%x:\n%s", w.status, out);
    ck_assert_msg(strstr(out, "embed: stopped") != NULL, "no clean stop:\n%s", out);
    free(out);
    free(conf);
    free(log);
    free(dir);
}
END_TEST

START_TEST(embed_config_errors_name_the_file_and_line)
{
    /* the module prints through libh2o's h2o_configurator_errprintf, which embed does not replace */
    char *dir = th_tmpdir(), *log = th_fmt("%s/embed.log", dir);
    char *conf = th_write_file(dir, "embed.conf",
                               "hosts:\n"
                               "  default:\n"
                               "    paths:\n"
                               "      /x:\n"
                               "        db.bind: {url: nosuch://db}\n"
                               "        embed.query: SELECT 1\n",
                               0);
    struct waiting w = {.port = th_free_port()};
    w.pid = child = start_embed(conf, w.port, log);
    ck_assert_msg(th_wait_until(exited, &w, 20000), "demo/embed did not exit on a bad config:\n%s", read_file(log));
    child = 0;
    char *out = read_file(log), *where = th_fmt("%s:5", conf);
    ck_assert_msg(WIFEXITED(w.status) && WEXITSTATUS(w.status) == 1, "exit status 0x%x (expected 1):\n%s", w.status, out);
    ck_assert_msg(strstr(out, where) != NULL && strstr(out, "db.bind") != NULL, "the message does not name %s:\n%s", where, out);
    free(where);
    free(out);
    free(conf);
    free(log);
    free(dir);
}
END_TEST

/* The names `nm -D --defined-only FILE` prints, one per line, in *out; returns how many. */
static size_t dynamic_symbols(const char *file, char ***out)
{
    char *cmd = th_fmt("nm -D --defined-only '%s'", file), line[1024];
    FILE *fp = popen(cmd, "r");
    ck_assert_msg(fp != NULL, "cannot run %s", cmd);
    size_t n = 0;
    char **names = NULL;
    while (fgets(line, sizeof(line), fp) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *name = strrchr(line, ' ');
        names = realloc(names, sizeof(*names) * (n + 1));
        names[n++] = strdup(name != NULL ? name + 1 : line);
    }
    int status = pclose(fp);
    ck_assert_msg(status == 0, "%s failed (status %d)", cmd, status);
    free(cmd);
    *out = names;
    return n;
}

static int has_symbol(char **names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; ++i)
        if (strcmp(names[i], name) == 0)
            return 1;
    return 0;
}

START_TEST(the_shared_library_exports_h2o_db_names_only)
{
    char *lib = th_fmt("%s/libh2o-db.so", th_build_dir()), **names;
    size_t n = dynamic_symbols(lib, &names);
    ck_assert_msg(n >= 20, "%s exports %zu symbols", lib, n);
    for (size_t i = 0; i < n; ++i)
        ck_assert_msg(strncmp(names[i], "h2o_db_", 7) == 0, "%s exports `%s`", lib, names[i]);

    /* every function the public header declares is among them */
    char *header_path = th_fmt("%s/include/h2o_db.h", source_dir()), *header = read_file(header_path);
    size_t declared = 0;
    for (char *p = header; (p = strstr(p, "h2o_db_")) != NULL;) {
        char *end = p;
        while (isalnum((unsigned char)*end) || *end == '_')
            ++end;
        /* a name followed by '(' is a declaration or a call in a comment: a function either way
         * (a function pointer type, `(*h2o_db_cb)(`, is followed by ')') */
        if (*end == '(' && (p == header || !(isalnum((unsigned char)p[-1]) || p[-1] == '_'))) {
            char *name = strndup(p, end - p);
            ck_assert_msg(has_symbol(names, n, name), "include/h2o_db.h declares %s, which %s does not export", name, lib);
            free(name);
            ++declared;
        }
        p = end;
    }
    ck_assert_msg(declared >= 20, "found %zu declarations in %s", declared, header_path);
    for (size_t i = 0; i < n; ++i)
        free(names[i]);
    free(names);
    free(header);
    free(header_path);
    free(lib);
}
END_TEST

START_TEST(h2o_db_exports_its_errprintf_to_the_library)
{
    /* its h2o_configurator_errprintf (FILE:LINE:COLUMN) serves libh2o-db.so's callers too */
    char *bin = th_fmt("%s/h2o-db", th_build_dir()), **names;
    size_t n = dynamic_symbols(bin, &names);
    ck_assert_msg(has_symbol(names, n, "h2o_configurator_errprintf"), "%s does not export h2o_configurator_errprintf", bin);
    for (size_t i = 0; i < n; ++i)
        free(names[i]);
    free(names);
    free(bin);
}
END_TEST

START_TEST(the_header_version_is_the_library_version)
{
    char *header = th_fmt("%d.%d.%d", H2O_DB_VERSION_MAJOR, H2O_DB_VERSION_MINOR, H2O_DB_VERSION_PATCH);
    ck_assert_str_eq(h2o_db_version(), header);
    ck_assert_str_eq(h2o_db_version(), H2O_DB_VERSION); /* meson's project version */
    ck_assert_ptr_eq(h2o_db_version(), h2o_db_version());
    free(header);
}
END_TEST

static void add(Suite *s, const char *name, const TTest *test, int timeout)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    tcase_add_test(tc, test);
    suite_add_tcase(s, tc);
}
#define ADD(s, test, timeout) add(s, #test, test, timeout)

int main(void)
{
    atexit(kill_child);
    Suite *s = suite_create("embed");
    ADD(s, embed_serves_a_sqlite_query_over_http1_and_http2_and_stops_on_sigterm, 60);
    ADD(s, embed_config_errors_name_the_file_and_line, 60);
    ADD(s, the_shared_library_exports_h2o_db_names_only, 30);
    ADD(s, h2o_db_exports_its_errprintf_to_the_library, 30);
    ADD(s, the_header_version_is_the_library_version, 10);
    return th_run_suite(s);
}
