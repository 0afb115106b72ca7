/*
 * The demo in a real browser: conf.d/h2o-db.conf (a copy with free ports and absolute paths)
 * serves demo/www/index.html over HTTPS, and headless Chromium (Debian's chromium) renders it:
 * the page fetches the notes API over HTTP/2 and lists the notes that exist, not the deleted one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "harness.h"

static char *source_root(void)
{
    const char *d = getenv("H2O_DB_SOURCE_DIR"); /* (meson test sets it) */
    ck_assert_msg(d != NULL, "H2O_DB_SOURCE_DIR is not set: run the suite through meson test");
    return strdup(d);
}

static char *read_all(FILE *fp)
{
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while ((n = fread(buf + len, 1, cap - len - 1, fp)) > 0)
        if ((len += n) + 1 == cap)
            buf = realloc(buf, cap *= 2);
    buf[len] = '\0';
    return buf;
}

/* replaces every `from` in *text by `to`; asserts there was one */
static void replace(char **text, const char *from, const char *to)
{
    ck_assert_msg(strstr(*text, from) != NULL, "`%s` is no longer in conf.d/h2o-db.conf", from);
    char *at;
    size_t done = 0;
    while ((at = strstr(*text + done, from)) != NULL) {
        char *out = th_fmt("%.*s%s%s", (int)(at - *text), *text, to, at + strlen(from));
        done = (at - *text) + strlen(to);
        free(*text);
        *text = out;
    }
}

/* TREE/{conf.d/, demo -> the sources' demo, build/demo -> the built demo, build/demo-tls/}: the
 * demo config's paths relative to its folder resolve as in the repository; returns conf.d's path */
static char *demo_tree(const char *tree, const char *root)
{
    char *confd = th_fmt("%s/conf.d", tree), *build = th_fmt("%s/build", tree), *tls = th_fmt("%s/build/demo-tls", tree);
    char *demo = th_fmt("%s/demo", root), *demo_link = th_fmt("%s/demo", tree), *built = th_fmt("%s/demo", th_build_dir()),
         *built_link = th_fmt("%s/build/demo", tree);
    ck_assert(mkdir(confd, 0755) == 0 && mkdir(build, 0755) == 0 && mkdir(tls, 0755) == 0);
    ck_assert(symlink(demo, demo_link) == 0 && symlink(built, built_link) == 0);
    char *cmd = th_fmt("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
                       "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
                       tls, tls);
    ck_assert_msg(system(cmd) == 0, "%s", cmd);
    free(cmd);
    free(build);
    free(tls);
    free(demo);
    free(demo_link);
    free(built);
    free(built_link);
    return confd;
}

static void call(const char *method, const char *url, const char *body, long status)
{
    th_response_t res;
    ck_assert_int_eq(th_http(&res, TH_HTTP1, method, url, body), 0);
    ck_assert_msg(res.status == status, "%s %s: %ld %s", method, url, res.status, res.body);
    th_response_free(&res);
}

START_TEST(the_demo_page_renders_the_notes_in_chromium_over_https_and_http2)
{
    char *root = source_root(), *tree = th_tmpdir(), *confd = demo_tree(tree, root);
    char *path = th_fmt("%s/conf.d/h2o-db.conf", root);
    FILE *fp = fopen(path, "r");
    ck_assert_msg(fp != NULL, "cannot read %s", path);
    char *conf = read_all(fp);
    fclose(fp);
    int http_port = th_free_port();
    char *port = th_fmt("port: %d", http_port), *www = th_fmt("file.dir: %s/demo/www", root),
         *certs = th_fmt("%s/build/demo-tls/", tree);
    replace(&conf, "port: 8080", port);
    replace(&conf, "port: 8443", "port: @PORT@");
    replace(&conf, "file.dir: demo/www", www);
    replace(&conf, "build/demo-tls/", certs);
    th_server_t s;
    ck_assert_msg(th_server_start_in(&s, confd, conf) == 0, "%s", th_server_log(&s));

    char *notes = th_fmt("http://127.0.0.1:%d/notes", http_port), *second = th_fmt("%s/2", notes);
    call("POST", notes, "Buy milk", 201);
    call("POST", notes, "Water the plants", 201);
    call("POST", notes, "Call <Alice> & Bob", 201);
    call("DELETE", second, NULL, 204);

    /* the page, as Chromium renders it once its scripts ran */
    char *profile = th_fmt("%s/chromium-profile", tree);
    char *cmd = th_fmt("timeout %d chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=%s "
                       "--ignore-certificate-errors --virtual-time-budget=10000 --dump-dom https://127.0.0.1:%d/ 2>/dev/null",
                       (int)(60 * th_time_factor()), profile, s.port);
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    char *dom = read_all(p);
    int status = pclose(p);
    ck_assert_msg(status == 0, "chromium exited with %d (is Debian's chromium installed?): %s", status, dom);
    ck_assert_msg(strstr(dom, "data-loaded=\"yes\">2 notes</p>") != NULL, "the page did not list the notes:\n%s", dom);
    ck_assert_msg(strstr(dom, "<li class=\"note\" data-id=\"1\">Buy milk<button") != NULL, "%s", dom);
    ck_assert_msg(strstr(dom, "<li class=\"note\" data-id=\"3\">Call &lt;Alice&gt; &amp; Bob<button") != NULL,
                  "the third note is missing or not escaped:\n%s", dom);
    ck_assert_msg(strstr(dom, "Water the plants") == NULL, "the deleted note is shown:\n%s", dom);
    ck_assert_msg(strstr(dom, "(this page came over h2)") != NULL, "the page did not come over HTTP/2:\n%s", dom);
    ck_assert_int_eq(th_server_stop(&s, 15000), 0);

    free(dom);
    free(cmd);
    free(profile);
    free(notes);
    free(second);
    free(port);
    free(www);
    free(certs);
    free(conf);
    free(path);
    free(confd);
    free(tree);
    free(root);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("browser");
    TCase *tc = tcase_create("browser");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, the_demo_page_renders_the_notes_in_chromium_over_https_and_http2);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
