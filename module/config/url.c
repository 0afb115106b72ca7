/*
 * Bind URLs: SCHEME[+DRIVER]://REST.
 *
 *   postgresql://, postgres://, postgresql+asyncpg://, postgresql+psycopg://, ...
 *       the +DRIVER part is dropped and the rest goes to libpq unchanged (query
 *       parameters, multi-host lists, ?host=/socket/dir), checked with PQconninfoParse;
 *       asyncpg's ssl= is mapped to sslmode=, other asyncpg-only parameters are refused
 *       with the libpq spelling.
 *   sqlite:///relative/path, sqlite:////absolute/path, sqlite+aiosqlite:///...
 *       relative to the folder of the config file; sqlite://, sqlite:/// and
 *       sqlite:///:memory: are one in-memory database per bind (memdb VFS).
 *   mysql://, mariadb://, mysql+aiomysql://, mysql+pymysql://, ... (driver/mysql.c)
 *       mysql://USER:PASSWORD@HOST:PORT/DATABASE?unix_socket=/path&charset=utf8mb4&ssl_ca=...
 *       with USER, PASSWORD and DATABASE percent-decoded; unknown parameters are refused.
 */
#include <libpq-fe.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include "config/url.h"

static int fail(char *err, size_t errsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errsz, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(err, errsz, fmt, args);
    va_end(args);
    return -1;
}

/* Whether s[0..n) is the literal lit. */
static int span_is(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && strncmp(s, lit, n) == 0;
}

/* Where the authority (user:password@host...) of a URL ends. */
/* Where the password of a URL is, by the loosest of the grammars that read it: libpq takes the
 * user information up to the first '@' before any '/', SQLAlchemy up to the first '@' even past a
 * '/'. Taking the first '@' anywhere after "://" covers both: a password is never shown, at
 * worst a little more is hidden. *at is that '@' (NULL: none), *colon the ':' before the password
 * (NULL: none). */
static void split_userinfo(const char *authority, const char **colon, const char **at)
{
    *at = strchr(authority, '@');
    *colon = *at != NULL ? memchr(authority, ':', *at - authority) : NULL;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decodes n bytes of s into a malloc'd string. */
static char *decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *dst = out;
    for (size_t i = 0; i < n; ++i) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            *dst++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            *dst++ = s[i];
        }
    }
    *dst = '\0';
    return out;
}

/* Whether a query parameter's name (as libpq reads it: percent-decoded) names a secret. */
static int is_secret_param(const char *name, size_t n)
{
    char *decoded = decode(name, n);
    int secret = strcmp(decoded, "password") == 0 || strcmp(decoded, "sslpassword") == 0;
    free(decoded);
    return secret;
}

/* Calls cb for each secret of the URL: the user information's password and the values of
 * password= and sslpassword= (query parameters are separated by '&' only: libpq has no fragment). */
static void each_secret(const char *url, void (*cb)(const char *s, size_t n, void *arg), void *arg)
{
    const char *sep = strstr(url, "://"), *p = url;
    if (sep != NULL) {
        const char *colon, *at;
        split_userinfo(sep + 3, &colon, &at);
        if (colon != NULL)
            cb(colon + 1, at - colon - 1, arg);
        if (at != NULL)
            p = at;
    }
    const char *query = strchr(p, '?');
    for (p = query; p != NULL && *p != '\0';) {
        ++p; /* '?' or '&' */
        size_t n = strcspn(p, "&"), name_len = strcspn(p, "=&");
        if (name_len < n && is_secret_param(p, name_len))
            cb(p + name_len + 1, n - name_len - 1, arg);
        p += n;
    }
}

struct masker {
    const char *url;
    char *out;
    size_t len;
    const char *copied; /* url is copied up to here */
};

static void mask_one(const char *s, size_t n, void *arg)
{
    struct masker *m = arg;
    memcpy(m->out + m->len, m->copied, s - m->copied);
    m->len += s - m->copied;
    memcpy(m->out + m->len, "***", 3);
    m->len += 3;
    m->copied = s + n;
}

char *h2o_db_url_mask_password(const char *url)
{
    size_t len = strlen(url);
    struct masker m = {url, malloc(len * 4 + 16), 0, url};
    each_secret(url, mask_one, &m);
    strcpy(m.out + m.len, m.copied);
    return m.out;
}

/* Replaces every occurrence of secret (n bytes) in msg by "***" (libpq may quote what it could not parse). */
static void scrub_span(char *msg, const char *secret, size_t n)
{
    if (n == 0)
        return;
    for (char *hit = msg; (hit = memmem(hit, strlen(hit), secret, n)) != NULL;) {
        if (n >= 3) {
            memcpy(hit, "***", 3);
            memmove(hit + 3, hit + n, strlen(hit + n) + 1);
            hit += 3;
        } else {
            memset(hit, '*', n);
            hit += n;
        }
    }
}

static void scrub_one(const char *s, size_t n, void *arg)
{
    char *msg = arg, *decoded = decode(s, n);
    scrub_span(msg, s, n);
    scrub_span(msg, decoded, strlen(decoded));
    free(decoded);
}

/* Removes every secret of url, as written and percent-decoded, from msg. */
static void scrub(char *msg, const char *url)
{
    each_secret(url, scrub_one, msg);
}

/* asyncpg (and psycopg) spellings that libpq does not understand */
static const struct {
    const char *name, *instead;
} foreign_params[] = {
    {"prepared_statement_cache_size", "the bind's `pool: {statement-cache: N}`"},
    {"statement_cache_size", "the bind's `pool: {statement-cache: N}`"},
    {"command_timeout", "the bind's `pool: {statement-timeout: SECONDS}`"},
    {"timeout", "connect_timeout=SECONDS"},
    {"server_settings", "options=-c%20NAME%3DVALUE"},
    {"max_cached_statement_lifetime", "the bind's `pool: {statement-cache: N}`"},
    {"max_cacheable_statement_size", "the bind's `pool: {statement-cache: N}`"},
    {"direct_tls", "sslnegotiation (PostgreSQL 17) or a TLS-terminating proxy"},
};

/* Copies the PostgreSQL URL into a libpq URI: asyncpg's ssl= becomes sslmode=. */
static char *postgres_conninfo(const char *rest, char *err, size_t errsz)
{
    size_t len = strlen(rest);
    char *out = malloc(strlen("postgresql://") + len * 2 + 32), *dst = out;
    dst += sprintf(dst, "postgresql://");
    const char *query = strchr(rest, '?');
    size_t head = query != NULL ? (size_t)(query - rest) : len;
    memcpy(dst, rest, head);
    dst += head;
    *dst = '\0';
    if (query == NULL)
        return out;
    for (const char *p = query; *p != '\0' && *p != '#';) {
        *dst++ = *p++;
        size_t n = strcspn(p, "&#"), name_len = strcspn(p, "=&#");
        for (size_t i = 0; i < sizeof(foreign_params) / sizeof(foreign_params[0]); ++i) {
            if (span_is(p, name_len, foreign_params[i].name)) {
                fail(err, errsz, "the URL parameter `%s` is asyncpg's; libpq does not know it: use %s", foreign_params[i].name,
                     foreign_params[i].instead);
                free(out);
                return NULL;
            }
        }
        if (span_is(p, name_len, "ssl") && p[3] == '=') {
            const char *v = p + 4;
            size_t vlen = n - 4;
            const char *mode = NULL;
            if (span_is(v, vlen, "true") || span_is(v, vlen, "require"))
                mode = "require";
            else if (span_is(v, vlen, "false") || span_is(v, vlen, "disable"))
                mode = "disable";
            else if (span_is(v, vlen, "prefer"))
                mode = "prefer";
            else if (span_is(v, vlen, "allow"))
                mode = "allow";
            else if (span_is(v, vlen, "verify-ca"))
                mode = "verify-ca";
            else if (span_is(v, vlen, "verify-full"))
                mode = "verify-full";
            if (mode == NULL) {
                fail(err, errsz, "ssl=%.*s: expected true, false, disable, allow, prefer, require, verify-ca or verify-full",
                     (int)vlen, v);
                free(out);
                return NULL;
            }
            dst += sprintf(dst, "sslmode=%s", mode);
        } else {
            memcpy(dst, p, n);
            dst += n;
        }
        p += n;
    }
    *dst = '\0';
    return out;
}

static int parse_postgres(const char *url, const char *rest, h2o_db_url_t *out, char *err, size_t errsz)
{
    out->backend = H2O_DB_BACKEND_POSTGRES;
    if ((out->conninfo = postgres_conninfo(rest, err, errsz)) == NULL)
        return -1;
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(out->conninfo, &errmsg);
    if (opts == NULL) {
        if (errmsg != NULL) {
            errmsg[strcspn(errmsg, "\n")] = '\0';
            scrub(errmsg, url);
        }
        fail(err, errsz, "invalid PostgreSQL URL: %s", errmsg != NULL ? errmsg : "out of memory");
        PQfreemem(errmsg);
        return -1;
    }
    /* libpq checks ports only when it connects: say it now */
    for (PQconninfoOption *o = opts; o->keyword != NULL; ++o) {
        if (strcmp(o->keyword, "port") != 0 || o->val == NULL)
            continue;
        for (const char *p = o->val; *p != '\0';) {
            size_t n = strcspn(p, ",");
            char *end;
            long port = strtol(p, &end, 10);
            if (n != 0 && (end != p + n || port < 1 || port > 65535)) {
                fail(err, errsz, "invalid PostgreSQL URL: the port must be a number between 1 and 65535, not `%.*s`", (int)n, p);
                PQconninfoFree(opts);
                return -1;
            }
            p += n;
            if (*p == ',')
                ++p;
        }
    }
    PQconninfoFree(opts);
    return 0;
}

static int parse_sqlite(const char *rest, const char *config_dir, const char *key, h2o_db_url_t *out, char *err, size_t errsz)
{
    out->backend = H2O_DB_BACKEND_SQLITE;
    if (rest[0] != '\0' && rest[0] != '/')
        return fail(err, errsz,
                    "a SQLite URL has no host: write sqlite:///relative/path, sqlite:////absolute/path or sqlite:// (in memory)");
    const char *path = rest[0] == '/' ? rest + 1 : rest;
    size_t path_len = strcspn(path, "?");
    if (path[path_len] == '?') {
        for (const char *p = path + path_len + 1; *p != '\0';) {
            size_t n = strcspn(p, "&");
            if (span_is(p, n, "mode=ro"))
                out->sqlite_readonly = 1;
            else if (!span_is(p, n, "mode=rw") && !span_is(p, n, "mode=rwc"))
                return fail(err, errsz, "unknown SQLite URL parameter `%.*s` (known: mode=ro, mode=rw, mode=rwc)", (int)n, p);
            p += n;
            if (*p == '&')
                ++p;
        }
    }
    if (path_len == 0 || span_is(path, path_len, ":memory:")) {
        size_t n = strlen(key) + 16;
        out->memory_name = malloc(n);
        snprintf(out->memory_name, n, "/h2o-db-%s", key);
        return 0;
    }
    if (memchr(path, '\0', path_len) != NULL)
        return fail(err, errsz, "invalid SQLite path");
    if (path[0] == '/') {
        out->sqlite_path = strndup(path, path_len);
        return 0;
    }
    /* relative to the config file's folder, made absolute: SQLite (built with SQLITE_USE_URI on
     * Debian) would take a path that starts with "file:" as a URI and decode %2e%2e */
    char cwd[4096] = ".";
    const char *dir = config_dir != NULL ? config_dir : ".";
    if (dir[0] != '/' && getcwd(cwd, sizeof(cwd)) == NULL)
        return fail(err, errsz, "cannot find the current folder to resolve the SQLite path");
    size_t n = strlen(cwd) + 1 + strlen(dir) + 1 + path_len + 1;
    out->sqlite_path = malloc(n);
    if (dir[0] == '/')
        snprintf(out->sqlite_path, n, "%s/%.*s", dir, (int)path_len, path);
    else
        snprintf(out->sqlite_path, n, "%s/%s/%.*s", cwd, dir, (int)path_len, path);
    return 0;
}

/* ---- MySQL / MariaDB ---- */

/* Where the authority (user:password@host:port) of a MySQL URL ends. */
static const char *authority_end(const char *authority)
{
    return authority + strcspn(authority, "/?#");
}

/* SQLAlchemy's reading of USER[:PASSWORD]@: the user holds no ':' '/' '?', the password no '@'. */
static void mysql_userinfo(const char *rest, const char **colon, const char **at)
{
    split_userinfo(rest, colon, at);
    const char *user_end = *colon != NULL ? *colon : *at;
    if (*at != NULL && memchr(rest, '/', user_end - rest) == NULL && memchr(rest, '?', user_end - rest) == NULL)
        return;
    *colon = *at = NULL;
}

/* Percent-decodes s[0..len) into a new string; NULL when an escape is malformed or decodes to NUL. */
static char *percent_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1), *dst = out;
    for (size_t i = 0; i < len; ++i) {
        if (s[i] != '%') {
            *dst++ = s[i];
            continue;
        }
        int hi, lo;
        if (i + 2 >= len || (hi = hexval(s[i + 1])) < 0 || (lo = hexval(s[i + 2])) < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        *dst++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *dst = '\0';
    return out;
}

/* A path from a URL parameter: absolute, or relative to the config file's folder. */
static char *resolve_path(const char *path, const char *config_dir)
{
    if (path[0] == '/' || config_dir == NULL)
        return strdup(path);
    size_t n = strlen(config_dir) + strlen(path) + 2;
    char *out = malloc(n);
    snprintf(out, n, "%s/%s", config_dir, path);
    return out;
}

/* "true"/"false" and friends; -1 when neither */
static int parse_bool(const char *v)
{
    static const char *const yes[] = {"true", "1", "yes", "on", "ON", "True", "TRUE"};
    static const char *const no[] = {"false", "0", "no", "off", "OFF", "False", "FALSE"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); ++i) {
        if (strcmp(v, yes[i]) == 0)
            return 1;
        if (strcmp(v, no[i]) == 0)
            return 0;
    }
    return -1;
}

#define MYSQL_PARAMS                                                                                                               \
    "unix_socket, charset, connect_timeout, ssl, ssl_mode, ssl_ca, ssl_capath, ssl_cert, ssl_key, ssl_cipher, ssl_crl, "           \
    "ssl_crlpath, ssl_verify_cert"

static int parse_mysql_param(const char *name, const char *value, const char *config_dir, h2o_db_url_t *out, int *verify_set,
                             char *err, size_t errsz)
{
    static const struct {
        const char *name;
        size_t offset;
    } paths[] = {
        {"ssl_ca", offsetof(h2o_db_url_t, mysql.ssl_ca)},           {"ssl_capath", offsetof(h2o_db_url_t, mysql.ssl_capath)},
        {"ssl_cert", offsetof(h2o_db_url_t, mysql.ssl_cert)},       {"ssl_key", offsetof(h2o_db_url_t, mysql.ssl_key)},
        {"ssl_crl", offsetof(h2o_db_url_t, mysql.ssl_crl)},         {"ssl_crlpath", offsetof(h2o_db_url_t, mysql.ssl_crlpath)},
        {"unix_socket", offsetof(h2o_db_url_t, mysql.unix_socket)},
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); ++i) {
        if (strcmp(name, paths[i].name) == 0) {
            char **slot = (char **)((char *)out + paths[i].offset);
            if (value[0] == '\0')
                return fail(err, errsz, "the MySQL URL parameter `%s` needs a path", name);
            free(*slot);
            *slot = resolve_path(value, config_dir);
            return 0;
        }
    }
    if (strcmp(name, "charset") == 0) {
        if (value[0] == '\0' || strlen(value) > 32 || strspn(value, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(value))
            return fail(err, errsz, "charset=%s: expected a MySQL character set name such as utf8mb4", value);
        free(out->mysql.charset);
        out->mysql.charset = strdup(value);
    } else if (strcmp(name, "ssl_cipher") == 0) {
        free(out->mysql.ssl_cipher);
        out->mysql.ssl_cipher = strdup(value);
    } else if (strcmp(name, "connect_timeout") == 0) {
        char *end;
        unsigned long v = strtoul(value, &end, 10);
        if (value[0] < '0' || value[0] > '9' || *end != '\0' || v < 1 || v > 3600)
            return fail(err, errsz, "connect_timeout=%s: expected seconds between 1 and 3600", value);
        out->mysql.connect_timeout = (unsigned)v;
    } else if (strcmp(name, "ssl") == 0) {
        int v = parse_bool(value);
        if (v < 0)
            return fail(err, errsz, "ssl=%s: expected true or false", value);
        out->mysql.ssl = v;
    } else if (strcmp(name, "ssl_verify_cert") == 0) {
        int v = parse_bool(value);
        if (v < 0)
            return fail(err, errsz, "ssl_verify_cert=%s: expected true or false", value);
        out->mysql.ssl_verify_cert = v;
        *verify_set = 1;
    } else if (strcmp(name, "ssl_mode") == 0) {
        /* MySQL's spellings (mysqlclient, the mysql command) */
        if (strcasecmp(value, "DISABLED") == 0 || strcasecmp(value, "PREFERRED") == 0) {
            out->mysql.ssl = 0;
            out->mysql.ssl_verify_cert = 0;
        } else if (strcasecmp(value, "REQUIRED") == 0) {
            out->mysql.ssl = 1;
            out->mysql.ssl_verify_cert = 0;
        } else if (strcasecmp(value, "VERIFY_CA") == 0 || strcasecmp(value, "VERIFY_IDENTITY") == 0) {
            out->mysql.ssl = 1;
            out->mysql.ssl_verify_cert = 1;
        } else {
            return fail(err, errsz, "ssl_mode=%s: expected DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY", value);
        }
        *verify_set = 1;
    } else if (strcmp(name, "password") == 0 || strcmp(name, "passwd") == 0) {
        return fail(err, errsz, "put the password in the URL's user part (mysql://USER:PASSWORD@HOST/DB), percent-encoded");
    } else {
        return fail(err, errsz, "unknown MySQL URL parameter `%s` (known: " MYSQL_PARAMS ")", name);
    }
    return 0;
}

/* mysql[+driver]://[USER[:PASSWORD]@][HOST|[IPV6]][:PORT][/DATABASE][?NAME=VALUE&...] */
static int parse_mysql(const char *rest, const char *config_dir, h2o_db_url_t *out, char *err, size_t errsz)
{
    out->backend = H2O_DB_BACKEND_MYSQL;
    const char *hostpart = rest, *colon, *at;
    mysql_userinfo(rest, &colon, &at);
    const char *auth_end = authority_end(at != NULL ? at + 1 : rest);
    if (at != NULL) {
        const char *user_end = colon != NULL ? colon : at;
        if (user_end > rest && (out->mysql.user = percent_decode(rest, user_end - rest)) == NULL)
            return fail(err, errsz, "the user name in the MySQL URL has a malformed %%-escape");
        if (colon != NULL && (out->mysql.password = percent_decode(colon + 1, at - colon - 1)) == NULL)
            return fail(err, errsz,
                        "the password in the MySQL URL has a malformed %%-escape (percent-encode : / @ %% as %%3A %%2F %%40 %%25)");
        hostpart = at + 1;
    }
    /* host and port */
    const char *host_end, *port_start = NULL;
    if (*hostpart == '[') {
        host_end = memchr(hostpart, ']', auth_end - hostpart);
        if (host_end == NULL)
            return fail(err, errsz, "the MySQL URL has an IPv6 address without its closing ]");
        out->mysql.host = strndup(hostpart + 1, host_end - hostpart - 1);
        ++host_end;
        if (host_end < auth_end) {
            if (*host_end != ':')
                return fail(err, errsz, "unexpected characters after the IPv6 address in the MySQL URL");
            port_start = host_end + 1;
        }
    } else {
        const char *port_colon = memchr(hostpart, ':', auth_end - hostpart);
        host_end = port_colon != NULL ? port_colon : auth_end;
        if (host_end > hostpart && (out->mysql.host = percent_decode(hostpart, host_end - hostpart)) == NULL)
            return fail(err, errsz, "the host in the MySQL URL has a malformed %%-escape");
        if (port_colon != NULL)
            port_start = port_colon + 1;
    }
    if (port_start != NULL) {
        unsigned long port = 0;
        const char *p = port_start;
        for (; p < auth_end && *p >= '0' && *p <= '9' && port <= 65535; ++p)
            port = port * 10 + (*p - '0');
        if (p == port_start || p != auth_end || port < 1 || port > 65535)
            return fail(err, errsz, "the port in the MySQL URL must be a number between 1 and 65535");
        out->mysql.port = (unsigned)port;
    }
    /* database */
    const char *p = auth_end;
    if (*p == '/') {
        ++p;
        size_t n = strcspn(p, "?#");
        if (n != 0 && (out->mysql.database = percent_decode(p, n)) == NULL)
            return fail(err, errsz, "the database name in the MySQL URL has a malformed %%-escape");
        if (out->mysql.database != NULL && strchr(out->mysql.database, '/') != NULL)
            return fail(err, errsz, "the database name in the MySQL URL may not contain /");
        p += n;
    }
    /* parameters */
    int verify_set = 0;
    if (*p == '?') {
        ++p;
        while (*p != '\0' && *p != '#') {
            size_t n = strcspn(p, "&#"), name_len = strcspn(p, "=&#");
            if (n == 0) {
                ++p;
                continue;
            }
            char *name = percent_decode(p, name_len);
            char *value = name_len < n ? percent_decode(p + name_len + 1, n - name_len - 1) : strdup("");
            int ret;
            if (name == NULL || value == NULL)
                ret = fail(err, errsz, "a MySQL URL parameter has a malformed %%-escape");
            else
                ret = parse_mysql_param(name, value, config_dir, out, &verify_set, err, errsz);
            free(name);
            if (value != NULL) {
                memset(value, 0, strlen(value));
                free(value);
            }
            if (ret != 0)
                return -1;
            p += n;
            if (*p == '&')
                ++p;
        }
    }
    if (*p == '#')
        return fail(err, errsz, "a MySQL URL has no #fragment");
    if (!verify_set && (out->mysql.ssl_ca != NULL || out->mysql.ssl_capath != NULL))
        out->mysql.ssl_verify_cert = 1; /* as pymysql: a CA given means "verify against it" */
    if (out->mysql.charset == NULL)
        out->mysql.charset = strdup("utf8mb4");
    return 0;
}

int h2o_db_url_parse(const char *url, const char *config_dir, const char *key, h2o_db_url_t *out, char *err, size_t errsz)
{
    memset(out, 0, sizeof(*out));
    out->display = h2o_db_url_mask_password(url);

    const char *sep = strstr(url, "://");
    if (sep == NULL || sep == url) {
        fail(err, errsz,
             "`%s` is not a database URL: expected SCHEME://..., e.g. postgresql://user@host/db or sqlite:///file.sqlite3",
             out->display);
        goto Error;
    }
    size_t scheme_len = strcspn(url, "+:");
    const char *rest = sep + 3;
    for (const char *p = url; p < sep; ++p) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '+' || *p == '-' || *p == '.')) {
            fail(err, errsz, "`%s` is not a database URL: the scheme may hold only lower-case letters, digits, + - .",
                 out->display);
            goto Error;
        }
    }
#define SCHEME_IS(s) span_is(url, scheme_len, s)
    if (SCHEME_IS("postgresql") || SCHEME_IS("postgres")) {
        if (parse_postgres(url, rest, out, err, errsz) != 0)
            goto Error;
    } else if (SCHEME_IS("sqlite")) {
        if (parse_sqlite(rest, config_dir, key, out, err, errsz) != 0)
            goto Error;
    } else if (SCHEME_IS("mysql") || SCHEME_IS("mariadb")) {
        if (parse_mysql(rest, config_dir, out, err, errsz) != 0)
            goto Error;
    } else {
        fail(err, errsz,
             "unknown database URL scheme `%.*s` (supported: postgresql://, postgres://, sqlite://, mysql://, mariadb://, "
             "each with an optional +driver suffix)",
             (int)(sep - url), url);
        goto Error;
    }
#undef SCHEME_IS
    return 0;
Error:
    h2o_db_url_dispose(out);
    return -1;
}

void h2o_db_url_dispose(h2o_db_url_t *url)
{
    free(url->display);
    free(url->conninfo);
    free(url->sqlite_path);
    free(url->memory_name);
    if (url->mysql.password != NULL) {
        memset(url->mysql.password, 0, strlen(url->mysql.password));
        free(url->mysql.password);
    }
    free(url->mysql.user);
    free(url->mysql.host);
    free(url->mysql.database);
    free(url->mysql.unix_socket);
    free(url->mysql.charset);
    free(url->mysql.ssl_ca);
    free(url->mysql.ssl_capath);
    free(url->mysql.ssl_cert);
    free(url->mysql.ssl_key);
    free(url->mysql.ssl_cipher);
    free(url->mysql.ssl_crl);
    free(url->mysql.ssl_crlpath);
    memset(url, 0, sizeof(*url));
}
