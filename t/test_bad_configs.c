/*
 * The malformed-config corpus (every .conf file in t/configs/bad/): every file must be refused by
 * `h2o-db -t -c FILE` and by `h2o-db -c FILE` with exit status 1 and a message that starts
 * with FILE:LINE:COLUMN, without a crash or a sanitizer report (under ./scripts/test --asan
 * the server runs with ASan, UBSan and LeakSanitizer, whose reports change the exit status).
 *
 * Each file says what is wrong and what is expected of the message in its first lines:
 *     # bad config: WHAT IS WRONG
 *     # expect: LINE          the line the message must name (1-based)
 *     # says: TEXT            a piece of the message (may be empty)
 * Add a file to add a case; the suite insists on at least 40.
 */
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "harness.h"

#define MIN_FILES 40

/* t/configs/bad, found from this file's name as the compiler saw it (relative to the build folder) */
static char *corpus_dir(void)
{
    char *file = strdup(__FILE__), *dir = dirname(file), *out;
    if (dir[0] == '/')
        ck_assert(asprintf(&out, "%s/configs/bad", dir) > 0);
    else
        ck_assert(asprintf(&out, "%s/%s/configs/bad", th_build_dir(), dir) > 0);
    free(file);
    return out;
}

static char *read_text(const char *path)
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

/* The value of "# NAME: value" in the file's header, malloc'd, or NULL. */
static char *header(const char *text, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), "# %s:", name);
    for (const char *p = text; *p == '#'; p += strcspn(p, "\n") + (p[strcspn(p, "\n")] != '\0')) {
        if (strncmp(p, key, strlen(key)) == 0) {
            const char *v = p + strlen(key);
            while (*v == ' ')
                ++v;
            return strndup(v, strcspn(v, "\n"));
        }
    }
    return NULL;
}

/* Runs h2o-db ARGS... -c PATH in the file's folder, at most 20 s (× th_time_factor()); output and status returned. */
static int run(const char *cwd, const char *mode, const char *path, char **output)
{
    char *bin, *log;
    ck_assert(asprintf(&bin, "%s/h2o-db", th_build_dir()) > 0);
    char tmpl[] = "/tmp/h2o-db-bad-XXXXXX";
    int fd = mkstemp(tmpl);
    ck_assert(fd >= 0);
    log = strdup(tmpl);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid != -1);
    if (pid == 0) {
        if (chdir(cwd) != 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        if (mode != NULL)
            execl(bin, bin, mode, "-c", path, (char *)NULL);
        else
            execl(bin, bin, "-c", path, (char *)NULL);
        _exit(127);
    }
    close(fd);
    double deadline = th_now_ms() + 20000 * th_time_factor(); /* a hang guard: refusals take milliseconds */
    int status = 0, ret = -1;
    for (;;) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            ret = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        if (th_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            ret = -1; /* it served: the config was accepted */
            break;
        }
        usleep(5000);
    }
    *output = read_text(log);
    unlink(log);
    free(log);
    free(bin);
    return ret;
}

static const char *const SANITIZER_SIGNS[] = {"AddressSanitizer", "LeakSanitizer",      "UndefinedBehaviorSanitizer",
                                              "runtime error:",   "Segmentation fault", "Assertion",
                                              "core dumped",      "double free",        "corrupted"};

struct report {
    char *text;
    size_t len;
    int failures;
};

static void failf(struct report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failf(struct report *r, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    char *s;
    if (vasprintf(&s, fmt, args) < 0)
        s = strdup("?");
    va_end(args);
    r->text = realloc(r->text, r->len + strlen(s) + 2);
    r->len += sprintf(r->text + r->len, "%s\n", s);
    free(s);
    ++r->failures;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_conf(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 5 && strcmp(e->d_name + n - 5, ".conf") == 0;
}

/* Checks one run's output against the file's header. */
static void check(struct report *r, const char *mode, const char *name, int status, const char *out, const char *expect,
                  const char *says)
{
    const char *how = mode != NULL ? "h2o-db -t" : "h2o-db";
    if (status != 1) {
        failf(r, "%s: %s: exit status %d (expected 1)%s\n%s", name, how, status, status == -1 ? ", it started serving" : "", out);
        return;
    }
    for (size_t i = 0; i < sizeof(SANITIZER_SIGNS) / sizeof(SANITIZER_SIGNS[0]); ++i)
        if (strstr(out, SANITIZER_SIGNS[i]) != NULL)
            failf(r, "%s: %s: `%s` in the output:\n%s", name, how, SANITIZER_SIGNS[i], out);
    /* FILE:LINE:COLUMN: at the start of a line */
    char *prefix;
    ck_assert(asprintf(&prefix, "%s:", name) > 0);
    const char *at = NULL;
    for (const char *p = out; *p; p += strcspn(p, "\n") + (p[strcspn(p, "\n")] != '\0')) {
        if (strncmp(p, prefix, strlen(prefix)) == 0) {
            at = p + strlen(prefix);
            break;
        }
    }
    if (at == NULL) {
        failf(r, "%s: %s: no line starts with `%s`:\n%s", name, how, prefix, out);
    } else {
        long line, column;
        int used = 0;
        if (sscanf(at, "%ld:%ld:%n", &line, &column, &used) != 2 || used == 0)
            failf(r, "%s: %s: not FILE:LINE:COLUMN: %.*s", name, how, (int)strcspn(at, "\n"), at);
        else if (line < 1 || column < 1)
            failf(r, "%s: %s: line %ld, column %ld (both are 1-based)", name, how, line, column);
        else if (expect == NULL || line != strtol(expect, NULL, 10))
            failf(r, "%s: %s: the message names line %ld, the error is on line %s:\n%s", name, how, line,
                  expect != NULL ? expect : "(no # expect:)", out);
    }
    if (says != NULL && *says != '\0' && strstr(out, says) == NULL)
        failf(r, "%s: %s: the message does not say `%s`:\n%s", name, how, says, out);
    free(prefix);
}

START_TEST(every_malformed_config_is_refused_with_file_line_column)
{
    char *dir = corpus_dir();
    struct dirent **list;
    int n = scandir(dir, &list, is_conf, by_name);
    ck_assert_msg(n >= 0, "cannot read %s", dir);
    ck_assert_msg(n >= MIN_FILES, "only %d files in %s (at least %d)", n, dir, MIN_FILES);
    struct report r = {NULL, 0, 0};
    double t0 = th_now_ms();
    for (int i = 0; i < n; ++i) {
        const char *name = list[i]->d_name;
        char *path;
        ck_assert(asprintf(&path, "%s/%s", dir, name) > 0);
        char *text = read_text(path), *expect = header(text, "expect"), *says = header(text, "says");
        if (expect == NULL)
            failf(&r, "%s: no `# expect: LINE` header", name);
        /* -t, then for real: both must refuse before listening */
        const char *modes[] = {"-t", NULL};
        for (int m = 0; m < 2; ++m) {
            char *out;
            int status = run(dir, modes[m], name, &out);
            check(&r, modes[m], name, status, out, expect, says);
            free(out);
        }
        free(expect);
        free(says);
        free(text);
        free(path);
        free(list[i]);
    }
    free(list);
    fprintf(stderr, "bad_configs: %d files, each run with -t and without, in %.1f s: %d problem(s)\n", n, (th_now_ms() - t0) / 1000,
            r.failures);
    ck_assert_msg(r.failures == 0, "%d problem(s):\n%s", r.failures, r.text);
    free(dir);
}
END_TEST

/* The corpus is not vacuous: a good config in the same folder passes -t (so exit 1 means "refused"). */
START_TEST(a_good_config_passes_the_same_check)
{
    char *dir = th_tmpdir(), *path, *out;
    ck_assert(asprintf(&path, "%s/good.conf", dir) > 0);
    FILE *fp = fopen(path, "w");
    fputs("listen: 8080\n"
          "num-threads: 2\n"
          "db.bind:\n"
          "  - url: postgresql://app@127.0.0.1:5432/app?application_name=x\n"
          "    pool: {max: 4, min: 0, acquire-timeout: 2, queue: 10, statement-timeout: 1, request-timeout: 5, leak-threshold: 3}\n"
          "  - {url: \"sqlite:///good.sqlite3\", key: lite, middleware: OFF}\n"
          "hosts:\n"
          "  default:\n"
          "    paths:\n"
          "      /status:\n"
          "        db.status: ON\n"
          "      /lite:\n"
          "        db.use: lite\n"
          "        mruby.handler: |\n"
          "          proc {|env| [200, {}, [\"ok\"]] }\n",
          fp);
    fclose(fp);
    int status = run(dir, "-t", "good.conf", &out);
    ck_assert_msg(status == 0, "a good config: exit %d\n%s", status, out);
    free(out);
    free(path);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bad_configs");
    TCase *tc = tcase_create("bad_configs");
    tcase_set_timeout(tc, 280);
    tcase_add_test(tc, every_malformed_config_is_refused_with_file_line_column);
    tcase_add_test(tc, a_good_config_passes_the_same_check);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
