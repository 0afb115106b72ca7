/*
 * db.bind / db.use configuration through `h2o-db -t` (docs/directives/db.bind.md, db.use.md):
 * every config error exits 1 with FILE:LINE:COLUMN and says what is wrong (and,
 * for duplicates, where the other place is); every URL form users write parses;
 * no password written in a URL ever appears in the output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "db_util.h"

#define HEAD "listen: 8080\n"
#define TAIL_PATHS                                                                                                                 \
    "hosts:\n"                                                                                                                     \
    "  default:\n"                                                                                                                 \
    "    paths:\n"                                                                                                                 \
    "      /:\n"                                                                                                                   \
    "        file.dir: .\n"

/* Whether out holds "h2o-db.conf:LINE:COLUMN:" (any column) for this line. */
static int has_location(const char *out, int line)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "h2o-db.conf:%d:", line);
    for (const char *p = out; (p = strstr(p, needle)) != NULL; ++p) {
        const char *q = p + strlen(needle);
        if (*q < '0' || *q > '9')
            continue;
        while (*q >= '0' && *q <= '9')
            ++q;
        if (*q == ':' || *q == ' ' || *q == ')' || *q == ',' || *q == '\n' || *q == '\0')
            return 1;
    }
    return 0;
}

struct bad_case {
    const char *name;
    const char *conf;
    int line;            /* where the error is */
    const char *expect1; /* substrings the message must hold (NULL = none) */
    const char *expect2;
    int other_line; /* the other place the message must name (0 = none) */
};

static void check_bad(const struct bad_case *c)
{
    char *out;
    int status = th_run_h2o_db("-t", c->conf, &out);
    ck_assert_msg(status == 1, "%s: exit status %d (expected 1); output:\n%s", c->name, status, out);
    ck_assert_msg(has_location(out, c->line), "%s: expected h2o-db.conf:%d:COLUMN in:\n%s", c->name, c->line, out);
    if (c->expect1 != NULL)
        ck_assert_msg(strstr(out, c->expect1) != NULL, "%s: expected `%s` in:\n%s", c->name, c->expect1, out);
    if (c->expect2 != NULL)
        ck_assert_msg(strstr(out, c->expect2) != NULL, "%s: expected `%s` in:\n%s", c->name, c->expect2, out);
    if (c->other_line != 0) {
        /* the other place: a second location, on its own line number */
        char needle[64];
        snprintf(needle, sizeof(needle), "h2o-db.conf:%d", c->other_line);
        const char *first = strstr(out, "h2o-db.conf:");
        ck_assert_msg(first != NULL && strstr(first + 1, needle) != NULL,
                      "%s: the message does not name the other place (%s) in:\n%s", c->name, needle, out);
    }
    ck_assert_msg(strstr(out, "is OK") == NULL, "%s: reported OK:\n%s", c->name, out);
    free(out);
}

static void check_good(const char *name, const char *conf)
{
    char *out;
    int status = th_run_h2o_db("-t", conf, &out);
    ck_assert_msg(status == 0, "%s: exit status %d (expected 0); output:\n%s", name, status, out);
    free(out);
}

#define RUN_BAD(cases)                                                                                                             \
    for (size_t i_ = 0; i_ < sizeof(cases) / sizeof(cases[0]); ++i_)                                                               \
    check_bad(cases + i_)

/* ---- duplicate app key ---- */

START_TEST(duplicate_app_key)
{
    static const struct bad_case cases[] = {
        {"two default keys at global level",
         HEAD "db.bind:\n"
              "  - url: sqlite://\n"
              "  - url: sqlite:///other.sqlite3\n" TAIL_PATHS,
         4, "duplicate app key", "sa_main", 3},
        {"the same explicit key twice at path level",
         HEAD "hosts:\n"
              "  default:\n"
              "    paths:\n"
              "      /p:\n"
              "        db.bind:\n"
              "          - {url: sqlite://, key: k1}\n"
              "          - {url: \"sqlite:///k1.sqlite3\", key: k1, middleware: OFF}\n"
              "        file.dir: .\n",
         8, "duplicate app key", "k1", 7},
        {"a host re-binds a global key",
         HEAD "db.bind: {url: sqlite://, key: shared}\n"
              "hosts:\n"
              "  default:\n"
              "    db.bind: {url: sqlite:///h.sqlite3, key: shared}\n"
              "    paths:\n"
              "      /:\n"
              "        file.dir: .\n",
         5, "duplicate app key", "shared", 2},
        {"a path re-binds a host key (default key)",
         HEAD "hosts:\n"
              "  default:\n"
              "    db.bind: {url: sqlite://}\n"
              "    paths:\n"
              "      /a:\n"
              "        db.bind:\n"
              "          - url: sqlite:///p.sqlite3\n"
              "        file.dir: .\n",
         8, "duplicate app key", "sa_main", 4},
        {"a path re-binds a global key, middleware OFF does not matter",
         HEAD "db.bind: {url: sqlite://, key: g, middleware: OFF}\n"
              "hosts:\n"
              "  default:\n"
              "    paths:\n"
              "      /a:\n"
              "        file.dir: .\n"
              "      /b:\n"
              "        db.bind: {url: sqlite://, key: g, middleware: OFF}\n"
              "        file.dir: .\n",
         9, "duplicate app key", "`g`", 2},
        {"a host re-binds the global default key",
         HEAD "db.bind:\n"
              "  url: sqlite://\n"
              "hosts:\n"
              "  example.com:\n"
              "    paths:\n"
              "      /:\n"
              "        file.dir: .\n"
              "  other.com:\n"
              "    db.bind: [{url: sqlite://}]\n"
              "    paths:\n"
              "      /:\n"
              "        file.dir: .\n",
         10, "duplicate app key", "sa_main", 3},
    };
    RUN_BAD(cases);
}
END_TEST

START_TEST(same_key_in_separate_scopes_is_fine)
{
    /* siblings do not see each other: two hosts and two paths may bind the same key */
    check_good("same key in two paths and two hosts", HEAD "hosts:\n"
                                                           "  a.example:\n"
                                                           "    db.bind: {url: sqlite://, key: k}\n"
                                                           "    paths:\n"
                                                           "      /:\n"
                                                           "        file.dir: .\n"
                                                           "  b.example:\n"
                                                           "    db.bind: {url: sqlite://, key: k}\n"
                                                           "    paths:\n"
                                                           "      /x:\n"
                                                           "        db.bind: {url: sqlite://, key: p}\n"
                                                           "        file.dir: .\n"
                                                           "      /y:\n"
                                                           "        db.bind: {url: sqlite://, key: p}\n"
                                                           "        file.dir: .\n");
    /* several binds under distinct keys at every level */
    check_good("distinct keys at every level", HEAD "db.bind:\n"
                                                    "  - url: sqlite://\n"
                                                    "  - {url: sqlite://, key: sa_second}\n"
                                                    "  - {url: sqlite://, key: sa_third, middleware: OFF}\n"
                                                    "hosts:\n"
                                                    "  default:\n"
                                                    "    db.bind: {url: sqlite://, key: h}\n"
                                                    "    paths:\n"
                                                    "      /:\n"
                                                    "        db.bind: {url: sqlite://, key: p}\n"
                                                    "        db.use: sa_third\n"
                                                    "        file.dir: .\n");
}
END_TEST

/* ---- db.use ---- */

START_TEST(db_use_errors)
{
    static const struct bad_case cases[] = {
        {"db.use of a middleware: ON key (global)",
         HEAD "db.bind: {url: sqlite://, key: on1}\n"
              "hosts:\n"
              "  default:\n"
              "    paths:\n"
              "      /:\n"
              "        db.use: on1\n"
              "        file.dir: .\n",
         7, "duplicate request key", "on1", 0},
        {"db.use of the default key (ON by default), before its db.bind at host level",
         HEAD "hosts:\n"
              "  default:\n"
              "    db.use: sa_main\n"
              "    db.bind: {url: sqlite://}\n"
              "    paths:\n"
              "      /:\n"
              "        file.dir: .\n",
         4, "duplicate request key", "sa_main", 0},
        {"db.use of an explicit middleware: ON key bound at the same path",
         HEAD "hosts:\n"
              "  default:\n"
              "    paths:\n"
              "      /:\n"
              "        db.use: [a, b]\n"
              "        db.bind:\n"
              "          - {url: sqlite://, key: a, middleware: OFF}\n"
              "          - {url: sqlite://, key: b, middleware: ON}\n"
              "        file.dir: .\n",
         6, "duplicate request key", "`b`", 0},
        {"the same key twice in one list",
         HEAD "db.bind: {url: sqlite://, key: off1, middleware: OFF}\n"
              "hosts:\n"
              "  default:\n"
              "    paths:\n"
              "      /:\n"
              "        db.use: [off1, off1]\n"
              "        file.dir: .\n",
         7, "duplicate request key", "off1", 0},
        {"the same key at host and path level",
         HEAD "db.bind: {url: sqlite://, key: off1, middleware: OFF}\n"
              "hosts:\n"
              "  default:\n"
              "    db.use: off1\n"
              "    paths:\n"
              "      /:\n"
              "        db.use: [off1]\n"
              "        file.dir: .\n",
         8, "duplicate request key", "off1", 5},
        {"an unknown key",
         HEAD "db.bind: {url: sqlite://}\n"
              "hosts:\n"
              "  default:\n"
              "    paths:\n"
              "      /:\n"
              "        db.use: [nosuchkey]\n"
              "        file.dir: .\n",
         7, "unknown key", "nosuchkey", 0},
        {"a key bound at a sibling path is not visible",
         HEAD "hosts:\n"
              "  default:\n"
              "    paths:\n"
              "      /a:\n"
              "        db.bind: {url: sqlite://, key: k, middleware: OFF}\n"
              "        db.use: k\n"
              "        file.dir: .\n"
              "      /b:\n"
              "        db.use: k\n"
              "        file.dir: .\n",
         10, "unknown key", "`k`", 0},
        {"a host-level db.use does not see a path's bind",
         HEAD "hosts:\n"
              "  default:\n"
              "    db.use: k\n"
              "    paths:\n"
              "      /a:\n"
              "        db.bind: {url: sqlite://, key: k, middleware: OFF}\n"
              "        file.dir: .\n",
         4, "unknown key", "`k`", 0},
        {"a key bound in another host is not visible",
         HEAD "hosts:\n"
              "  a.example:\n"
              "    db.bind: {url: sqlite://, key: k, middleware: OFF}\n"
              "    paths:\n"
              "      /:\n"
              "        file.dir: .\n"
              "  b.example:\n"
              "    paths:\n"
              "      /:\n"
              "        db.use: k\n"
              "        file.dir: .\n",
         11, "unknown key", "`k`", 0},
    };
    RUN_BAD(cases);
}
END_TEST

START_TEST(db_use_good_configs)
{
    check_good("db.use before db.bind in one path mapping", HEAD "hosts:\n"
                                                                 "  default:\n"
                                                                 "    paths:\n"
                                                                 "      /:\n"
                                                                 "        db.use: [k1, k2]\n"
                                                                 "        db.bind:\n"
                                                                 "          - {url: sqlite://, key: k1, middleware: OFF}\n"
                                                                 "          - {url: sqlite://, key: k2, middleware: OFF}\n"
                                                                 "        file.dir: .\n");
    check_good("db.use before db.bind at host level, and a path using a global key",
               HEAD "db.bind: {url: sqlite://, key: g, middleware: OFF}\n"
                    "hosts:\n"
                    "  default:\n"
                    "    db.use: h\n"
                    "    db.bind: {url: sqlite://, key: h, middleware: OFF}\n"
                    "    paths:\n"
                    "      /a:\n"
                    "        db.use: g\n"
                    "        file.dir: .\n"
                    "      /b:\n"
                    "        db.use: [g]\n"
                    "        file.dir: .\n");
}
END_TEST

/* ---- db.bind attributes and pool options ---- */

START_TEST(bind_attribute_and_pool_errors)
{
#define BIND1(line) HEAD "db.bind:\n" line TAIL_PATHS
    static const struct bad_case cases[] = {
        {"unknown bind attribute", BIND1("  url: sqlite://\n  colour: blue\n"), 4, "colour", NULL, 0},
        {"url missing", BIND1("  key: k\n"), 3, "url", NULL, 0},
        {"db.bind not a mapping", HEAD "db.bind: sqlite://\n" TAIL_PATHS, 2, NULL, NULL, 0},
        {"middleware neither ON nor OFF", BIND1("  url: sqlite://\n  middleware: maybe\n"), 4, NULL, NULL, 0},
        {"unknown pool option", BIND1("  url: sqlite://\n  pool: {max: 2, maxx: 3}\n"), 4, "maxx", NULL, 0},
        {"pool not a mapping", BIND1("  url: sqlite://\n  pool: 8\n"), 4, "pool", NULL, 0},
        {"pool max 0", BIND1("  url: sqlite://\n  pool: {max: 0}\n"), 4, "max", NULL, 0},
        {"pool max negative", BIND1("  url: sqlite://\n  pool:\n    max: -3\n"), 5, "max", NULL, 0},
        {"pool max not a number", BIND1("  url: sqlite://\n  pool:\n    max: lots\n"), 5, "max", NULL, 0},
        {"pool max not whole", BIND1("  url: sqlite://\n  pool:\n    max: 2.5\n"), 5, "max", NULL, 0},
        {"pool max a list", BIND1("  url: sqlite://\n  pool:\n    max: [1]\n"), 5, "max", NULL, 0},
        {"pool min above max", BIND1("  url: sqlite://\n  pool: {max: 2, min: 3}\n"), 4, "min", NULL, 0},
        {"pool min negative", BIND1("  url: sqlite://\n  pool:\n    min: -1\n"), 5, "min", NULL, 0},
        {"negative acquire-timeout", BIND1("  url: sqlite://\n  pool:\n    acquire-timeout: -1\n"), 5, "acquire-timeout", NULL, 0},
        {"acquire-timeout not a number", BIND1("  url: sqlite://\n  pool:\n    acquire-timeout: soon\n"), 5, "acquire-timeout",
         NULL, 0},
        {"negative idle-timeout", BIND1("  url: sqlite://\n  pool:\n    idle-timeout: -5\n"), 5, "idle-timeout", NULL, 0},
        {"negative max-lifetime", BIND1("  url: sqlite://\n  pool:\n    max-lifetime: -5\n"), 5, "max-lifetime", NULL, 0},
        {"negative statement-timeout", BIND1("  url: sqlite://\n  pool:\n    statement-timeout: -0.5\n"), 5, "statement-timeout",
         NULL, 0},
        {"negative queue", BIND1("  url: sqlite://\n  pool:\n    queue: -1\n"), 5, "queue", NULL, 0},
        {"pipeline-depth 0", BIND1("  url: sqlite://\n  pool:\n    pipeline-depth: 0\n"), 5, "pipeline-depth", NULL, 0},
        {"connect-at-start neither ON nor OFF", BIND1("  url: sqlite://\n  pool:\n    connect-at-start: sometimes\n"), 5, NULL,
         NULL, 0},
    };
#undef BIND1
    RUN_BAD(cases);
}
END_TEST

START_TEST(pool_options_in_range_pass)
{
    check_good("every pool option",
               HEAD "db.bind:\n"
                    "  url: sqlite://\n"
                    "  pool: {max: 2, max-total: 4, min: 2, acquire-timeout: 0, queue: 0, idle-timeout: 0.5,\n"
                    "         max-lifetime: 10, statement-timeout: 1.5, leak-threshold: 2, pipeline-depth: 1,\n"
                    "         statement-cache: 0, connect-at-start: OFF}\n" TAIL_PATHS);
    check_good("flags in lower case, middleware off", HEAD "db.bind: {url: sqlite://, key: k, middleware: off}\n"
                                                           "hosts:\n"
                                                           "  default:\n"
                                                           "    paths:\n"
                                                           "      /:\n"
                                                           "        db.use: k\n"
                                                           "        file.dir: .\n");
}
END_TEST

/* ---- URLs ---- */

/* Whether `h2o-db --version` lists this backend ("mysql", ...). */
static int backend_built(const char *name)
{
    char *cmd, buf[1024] = "";
    ck_assert(asprintf(&cmd, "'%s/h2o-db' --version", th_build_dir()) > 0);
    FILE *fp = popen(cmd, "r");
    ck_assert(fp != NULL);
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    buf[n] = '\0';
    pclose(fp);
    free(cmd);
    ck_assert_msg(strstr(buf, "postgresql") != NULL, "unexpected --version output: %s", buf);
    return strstr(buf, name) != NULL;
}

static char *one_bind(const char *url)
{
    char *conf;
    ck_assert(asprintf(&conf, HEAD "db.bind:\n  url: \"%s\"\n" TAIL_PATHS, url) > 0);
    return conf;
}

START_TEST(url_errors)
{
    struct {
        const char *url, *expect1, *expect2;
    } cases[] = {
        {"not-a-url", NULL, NULL},
        {"", NULL, NULL},
        {"://host/db", NULL, NULL},
        {"postgresql://u@[::1/db", NULL, NULL},
        {"postgresql://u@127.0.0.1/db?nosuchparam=1", "nosuchparam", NULL},
        {"postgresql+asyncpg://u@127.0.0.1/db?ssl=maybe", "ssl", NULL},
        {"sqlite://somehost/file.sqlite3", NULL, NULL},
        {"oracle://u@h/db", "unknown", "oracle"},
        {"redis://h:6379/0", "unknown", "redis"},
        /* asyncpg-only parameters: refused, naming what to write instead */
        {"postgresql+asyncpg://u@127.0.0.1/db?prepared_statement_cache_size=0", "prepared_statement_cache_size", "statement-cache"},
        {"postgresql+asyncpg://u@127.0.0.1/db?statement_cache_size=0", "statement_cache_size", NULL},
        {"postgresql+asyncpg://u@127.0.0.1/db?command_timeout=5", "command_timeout", "statement"},
        {"postgresql+asyncpg://u@127.0.0.1/db?timeout=5", "timeout", "connect_timeout"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
        char *conf = one_bind(cases[i].url), name[256];
        snprintf(name, sizeof(name), "url `%s`", cases[i].url);
        struct bad_case c = {name, conf, 3, cases[i].expect1, cases[i].expect2, 0};
        check_bad(&c);
        free(conf);
    }
}
END_TEST

START_TEST(mysql_urls_are_refused_until_a_driver_is_built)
{
    const char *urls[] = {"mysql://u@127.0.0.1/db", "mariadb://u@127.0.0.1/db", "mysql+aiomysql://user:password@host/database",
                          "mysql+asyncmy://u@127.0.0.1:3306/db"};
    int built = backend_built("mysql");
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); ++i) {
        char *conf = one_bind(urls[i]);
        if (built) {
            /* the driver exists: the URL forms parse */
            check_good(urls[i], conf);
        } else {
            char name[256];
            snprintf(name, sizeof(name), "url `%s`", urls[i]);
            struct bad_case c = {name, conf, 3, "MySQL support is not built", NULL, 0};
            check_bad(&c);
        }
        free(conf);
    }
}
END_TEST

START_TEST(url_with_a_non_numeric_port_is_refused)
{
    /* `h:port` is no URL port: libpq would only say so at the first connect, on a worker thread */
    char *conf = one_bind("postgresql://u@127.0.0.1:notaport/db");
    struct bad_case c = {"non-numeric port", conf, 3, NULL, NULL, 0};
    check_bad(&c);
    free(conf);
}
END_TEST

START_TEST(every_url_form_parses)
{
    const char *urls[] = {
        "postgresql://u@127.0.0.1/db",
        "postgres://u@127.0.0.1:5432/db",
        "postgresql+asyncpg://u:pw@127.0.0.1/db",
        "postgresql+psycopg://u@127.0.0.1/db",
        "postgresql+psycopg2://u@127.0.0.1/db",
        "postgresql://",
        "postgresql://127.0.0.1",
        "postgresql://u@127.0.0.1/db?sslmode=disable&connect_timeout=3&application_name=app",
        "postgresql://u@h1:5432,h2:5433/db",
        "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
        "postgresql://u@[::1]:5432/db",
        "postgresql+asyncpg://u@127.0.0.1/db?ssl=true",
        "postgresql+asyncpg://u@127.0.0.1/db?ssl=require",
        "postgresql+asyncpg://u@127.0.0.1/db?ssl=false",
        "sqlite:///relative.sqlite3",
        "sqlite:///sub/dir/relative.sqlite3",
        "sqlite:////tmp/absolute.sqlite3",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite+aiosqlite:///",
        "sqlite+aiosqlite:///relative.sqlite3",
        "sqlite+aiosqlite:////tmp/absolute.sqlite3",
        "sqlite+pysqlite:///:memory:",
    };
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); ++i) {
        char *conf = one_bind(urls[i]);
        check_good(urls[i], conf);
        free(conf);
    }
    /* the seed's three binds at once */
    check_good("the seed's example", HEAD "db.bind:\n"
                                          "  - url: postgresql+asyncpg://user:password@127.0.0.1/database\n"
                                          "  - url: sqlite+aiosqlite:///second.sqlite3\n"
                                          "    key: sa_second\n"
                                          "  - url: sqlite+aiosqlite:///\n"
                                          "    key: sa_third\n"
                                          "    middleware: OFF\n"
                                          "hosts:\n"
                                          "  default:\n"
                                          "    paths:\n"
                                          "      /:\n"
                                          "        db.use: sa_third\n"
                                          "        file.dir: .\n");
}
END_TEST

/* ---- passwords ---- */

#define SECRET "Pw_s3cr3tXYZ"

static void check_secret_hidden(const char *name, const char *args, const char *conf, int expect_status)
{
    char *out;
    int status = th_run_h2o_db(args, conf, &out);
    ck_assert_msg(status == expect_status, "%s: exit status %d (expected %d); output:\n%s", name, status, expect_status, out);
    ck_assert_msg(strstr(out, SECRET) == NULL, "%s: the password appears in the output:\n%s", name, out);
    free(out);
}

START_TEST(check_output_never_shows_a_password)
{
    char *conf;
    check_secret_hidden("good config, password in the authority", "-t",
                        HEAD "db.bind: {url: \"postgresql://app:" SECRET "@127.0.0.1/appdb\"}\n" TAIL_PATHS, 0);
    check_secret_hidden("good config, asyncpg URL, two binds", "-t",
                        HEAD "db.bind:\n"
                             "  - url: postgresql+asyncpg://app:" SECRET "@127.0.0.1:5432/appdb?ssl=false\n"
                             "  - {url: \"postgres://app:" SECRET "@h1:1,h2:2/appdb\", key: two}\n" TAIL_PATHS,
                        0);
    check_secret_hidden(
        "good config, password as a query parameter", "-t",
        HEAD "db.bind: {url: \"postgresql://app@127.0.0.1/appdb?password=" SECRET "&sslmode=disable\"}\n" TAIL_PATHS, 0);
    check_secret_hidden("malformed URL with a password", "-t",
                        HEAD "db.bind: {url: \"postgresql://app:" SECRET "@[::1/db\"}\n" TAIL_PATHS, 1);
    check_secret_hidden("unknown parameter with a password", "-t",
                        HEAD "db.bind: {url: \"postgresql://app:" SECRET "@127.0.0.1/db?bogus=1\"}\n" TAIL_PATHS, 1);
    check_secret_hidden("asyncpg parameter with a password", "-t",
                        HEAD "db.bind: {url: \"postgresql+asyncpg://app:" SECRET "@127.0.0.1/db?command_timeout=5\"}\n" TAIL_PATHS,
                        1);
    check_secret_hidden("mysql URL with a password", "-t",
                        HEAD "db.bind: {url: \"mysql://app:" SECRET "@127.0.0.1/db\"}\n" TAIL_PATHS,
                        backend_built("mysql") ? 0 : 1);
    check_secret_hidden("duplicate app key with passwords", "-t",
                        HEAD "db.bind:\n"
                             "  - url: postgresql://app:" SECRET "@127.0.0.1/a\n"
                             "  - url: postgresql://app:" SECRET "@127.0.0.1/b\n" TAIL_PATHS,
                        1);
    check_secret_hidden("bad pool option after a URL with a password", "-t",
                        HEAD "db.bind: {url: \"postgresql://app:" SECRET "@127.0.0.1/db\", pool: {max: 0}}\n" TAIL_PATHS, 1);
    /* --connect to a port nobody listens on: the connect error must not carry the password either */
    ck_assert(asprintf(&conf, HEAD "db.bind: {url: \"postgresql://app:" SECRET "@127.0.0.1:%d/db?connect_timeout=2\"}\n" TAIL_PATHS,
                       th_free_port()) > 0);
    check_secret_hidden("-t --connect to a closed port", "-t --connect", conf, 1);
    free(conf);

    /* password-file: the file's content never shows either */
    char *dir = th_tmpdir(), *pw = th_write_file(dir, "pw.txt", SECRET "\n", 0);
    ck_assert(asprintf(&conf, HEAD "db.bind: {url: \"postgresql://app@127.0.0.1/db\", password-file: \"%s\"}\n" TAIL_PATHS, pw) >
              0);
    check_secret_hidden("password-file", "-t", conf, 0);
    free(conf);
    free(pw);
    free(dir);
}
END_TEST

/* One test case per test, so that CK_RUN_CASE=NAME runs one of them. */
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
    Suite *s = suite_create("db_config");
    ADD(s, duplicate_app_key, 30);
    ADD(s, same_key_in_separate_scopes_is_fine, 30);
    ADD(s, db_use_errors, 30);
    ADD(s, db_use_good_configs, 30);
    ADD(s, bind_attribute_and_pool_errors, 30);
    ADD(s, pool_options_in_range_pass, 30);
    ADD(s, url_errors, 30);
    ADD(s, mysql_urls_are_refused_until_a_driver_is_built, 30);
    ADD(s, url_with_a_non_numeric_port_is_refused, 30);
    ADD(s, every_url_form_parses, 30);
    ADD(s, check_output_never_shows_a_password, 30);
    return th_run_suite(s);
}
