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

/* What an error may repeat of a URL parameter's name or value s[0..n): itself when it is a plain
 * word (letters, digits, _ . -, up to 64), as such names and values are; otherwise "…". A URL that
 * one reader splits differently from another may hold a password there (an unencoded / ? or @ in
 * it), and an error message must not be where a password shows. */
static const char *quoted(const char *s, size_t n, char *buf, size_t bufsz)
{
    static const char plain[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-";
    if (n > 64 || n >= bufsz || memchr(s, '\0', n) != NULL)
        return "…";
    for (size_t i = 0; i < n; ++i)
        if (strchr(plain, s[i]) == NULL)
            return "…";
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

/* Whether s[0..n) is the literal lit. */
static int span_is(const char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && strncmp(s, lit, n) == 0;
}

/* Where the authority (user:password@host...) of a URL ends. */
/* Where the password of a URL is, by the loosest of the grammars that read it: libpq takes the
 * user information up to the first '@' before any '/' (so '?' and '#' may be part of it),
 * SQLAlchemy up to the first '@' even past a '/', RFC 3986 up to the last '@' of the authority.
 * Taking the later of the first '@' anywhere and the authority's last '@' covers them all: a
 * password is never shown, at worst a little more is hidden. *at is that '@' (NULL: none),
 * *colon the ':' before the password (NULL: none). */
static void split_userinfo(const char *authority, const char **colon, const char **at)
{
    const char *first = strchr(authority, '@'), *end = authority + strcspn(authority, "/?#"), *last = NULL;
    for (const char *q = authority; q < end; ++q)
        if (*q == '@')
            last = q;
    *at = last != NULL && (first == NULL || last > first) ? last : first;
    *colon = *at != NULL ? memchr(authority, ':', *at - authority) : NULL;
}

/* Where libpq's query starts, the host list beginning at `hosts`: its '?' after the hosts, whose
 * IPv6 addresses in brackets may hold '?' ("[::?]"), or after the path; NULL when there is none. */
static const char *pg_query_start(const char *hosts)
{
    const char *p = hosts;
    while (*p != '\0' && *p != '/' && *p != '?') {
        if (*p == '[') {
            const char *close = strchr(p, ']');
            if (close == NULL)
                break;
            p = close;
        }
        ++p;
    }
    return *p == '?' ? p : strchr(p, '?');
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

/* The secrets of a URL, as spans of it: the user information's password and the values of
 * password= and sslpassword=. Every reading is taken (libpq's, SQLAlchemy's, RFC 3986's: the user
 * information up to the first or the last '@'; the query from the first '?' or from the one after
 * the user information; parameters separated by '&' only, as libpq has no fragment), so that
 * whatever a backend reads as a password is among them. Spans may overlap. */
struct spans {
    struct {
        const char *s;
        size_t n;
    } items[64];
    size_t n;
};

static void add_span(struct spans *sp, const char *s, size_t n)
{
    if (n != 0 && sp->n < sizeof(sp->items) / sizeof(sp->items[0])) {
        sp->items[sp->n].s = s;
        sp->items[sp->n].n = n;
        ++sp->n;
    }
}

static void add_query_secrets(struct spans *sp, const char *query)
{
    for (const char *p = query; p != NULL && *p != '\0';) {
        ++p; /* '?' or '&' */
        size_t n = strcspn(p, "&"), name_len = strcspn(p, "=&");
        if (name_len < n && is_secret_param(p, name_len))
            add_span(sp, p + name_len + 1, n - name_len - 1);
        p += n;
    }
}

static void find_secrets(const char *url, struct spans *sp)
{
    const char *sep = strstr(url, "://"), *after = url;
    sp->n = 0;
    if (sep != NULL) {
        const char *colon, *at, *first;
        split_userinfo(sep + 3, &colon, &at);
        if (colon != NULL) {
            if ((first = strchr(colon, '@')) != NULL && first < at)
                add_span(sp, colon + 1, first - colon - 1);
            add_span(sp, colon + 1, at - colon - 1);
        }
        after = sep + 3;
        if (at != NULL) {
            add_query_secrets(sp, strchr(at, '?'));
            add_query_secrets(sp, pg_query_start(at + 1)); /* (libpq's reading: brackets skipped) */
        }
        add_query_secrets(sp, pg_query_start(after));
    }
    add_query_secrets(sp, strchr(after, '?'));
}

/* Whether token (n bytes) and some secret of url (as written or decoded) share it: one contains the other. */
static int overlaps_secret(const char *token, size_t n, const char *url)
{
    struct spans sp;
    find_secrets(url, &sp);
    char *t = strndup(token, n);
    int hit = 0;
    for (size_t i = 0; i < sp.n && !hit; ++i) {
        char *raw = strndup(sp.items[i].s, sp.items[i].n), *decoded = decode(sp.items[i].s, sp.items[i].n);
        hit = strstr(t, raw) != NULL || strstr(raw, t) != NULL || strstr(t, decoded) != NULL || strstr(decoded, t) != NULL;
        free(raw);
        free(decoded);
    }
    free(t);
    return hit;
}

static int by_start(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    return x < y ? -1 : x > y;
}

char *h2o_db_url_mask_password(const char *url)
{
    struct spans sp;
    find_secrets(url, &sp);
    qsort(sp.items, sp.n, sizeof(sp.items[0]), by_start);
    char *out = malloc(strlen(url) + 3 * sp.n + 1), *dst = out;
    const char *copied = url;
    for (size_t i = 0; i < sp.n; ++i) {
        const char *end = sp.items[i].s + sp.items[i].n;
        if (end <= copied)
            continue; /* inside what is masked already */
        if (sp.items[i].s >= copied) {
            memcpy(dst, copied, sp.items[i].s - copied);
            dst += sp.items[i].s - copied;
            memcpy(dst, "***", 3);
            dst += 3;
        }
        copied = end; /* an overlapping span extends the mask */
    }
    strcpy(dst, copied);
    return out;
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

struct secret_list {
    char *items[128];
    size_t n;
};

static int longer_first(const void *a, const void *b)
{
    size_t x = strlen(*(char *const *)a), y = strlen(*(char *const *)b);
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Removes every secret of url, as written and percent-decoded, from msg: the longest first, so
 * that hiding a short one never leaves a longer one unrecognizable. */
static void scrub(char *msg, const char *url)
{
    struct secret_list l = {{NULL}, 0};
    struct spans sp;
    find_secrets(url, &sp);
    for (size_t i = 0; i < sp.n && l.n + 2 <= sizeof(l.items) / sizeof(l.items[0]); ++i) {
        l.items[l.n++] = strndup(sp.items[i].s, sp.items[i].n);
        l.items[l.n++] = decode(sp.items[i].s, sp.items[i].n);
    }
    qsort(l.items, l.n, sizeof(l.items[0]), longer_first);
    for (size_t i = 0; i < l.n; ++i) {
        scrub_span(msg, l.items[i], strlen(l.items[i]));
        free(l.items[i]);
    }
}

static int overlaps_secret(const char *token, size_t n, const char *url);

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
static char *postgres_conninfo(const char *url, const char *rest, char *err, size_t errsz)
{
    size_t len = strlen(rest);
    char *out = malloc(strlen("postgresql://") + len * 2 + 32), *dst = out;
    dst += sprintf(dst, "postgresql://");
    /* as libpq reads it: the query starts after the user information (up to the first '@' before
     * any '/', so a '?' inside a password is not a query), parameters separated by '&' only */
    const char *slash = strchr(rest, '/'), *at = strchr(rest, '@');
    const char *query = pg_query_start(at != NULL && (slash == NULL || at < slash) ? at + 1 : rest);
    size_t head = query != NULL ? (size_t)(query - rest) : len;
    memcpy(dst, rest, head);
    dst += head;
    *dst = '\0';
    if (query == NULL)
        return out;
    for (const char *p = query; *p != '\0';) {
        *dst++ = *p++;
        size_t n = strcspn(p, "&"), name_len = strcspn(p, "=&");
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
                /* (the value is quoted only when it is no part of a password) */
                if (vlen <= 64 && !overlaps_secret(v, vlen, url))
                    fail(err, errsz, "ssl=%.*s: expected true, false, disable, allow, prefer, require, verify-ca or verify-full",
                         (int)vlen, v);
                else
                    fail(err, errsz, "ssl= takes true, false, disable, allow, prefer, require, verify-ca or verify-full");
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

/* libpq's messages quote what they could not read — a keyword, a token, or the whole URL — which
 * may hold a password (and the quoted text may hold quotes itself). Keep what helps and cannot
 * leak: the text before "in URI" (where libpq appends the URL), and quoted tokens that look like
 * parameter names and are no part of a secret; anything else quoted becomes "…"; malloc'd. */
static int keep_token(const char *token, size_t n, const char *url)
{
    if (n > 64 || overlaps_secret(token, n, url))
        return 0;
    for (size_t k = 0; k < n; ++k)
        if (token[k] < 0x20 || token[k] >= 0x7f)
            return 0;
    return 1;
}

static char *drop_quoted(const char *msg, const char *url)
{
    size_t len = strlen(msg);
    char *out = malloc(len * 3 + 8), *dst = out;
    /* the messages where libpq names the position before it quotes the URL; "in URI" elsewhere
     * may be part of the quoted token itself */
    static const char *const positional[] = {"unexpected character \"", "end of string reached when looking for matching",
                                             "IPv6 host address may not be empty", "extra key/value separator",
                                             "missing key/value separator"};
    const char *in_uri = NULL;
    for (size_t i = 0; i < sizeof(positional) / sizeof(positional[0]) && in_uri == NULL; ++i)
        if (strncasecmp(msg, positional[i], strlen(positional[i])) == 0)
            in_uri = strstr(msg + strlen(positional[i]), " in URI");
    if (in_uri != NULL)
        ++in_uri; /* at "in URI" */
    if (in_uri == NULL) {
        /* "PREFIX: \"TOKEN\"": the token runs from the first quote to the last (it may hold quotes) */
        const char *first = strchr(msg, '"'), *last = strrchr(msg, '"');
        if (first == NULL)
            return strdup(msg);
        memcpy(dst, msg, first - msg);
        dst += first - msg;
        if (last > first && keep_token(first + 1, last - first - 1, url)) {
            memcpy(dst, first, last - first + 1);
            dst += last - first + 1;
        } else {
            memcpy(dst, "\"\xe2\x80\xa6\"", 5);
            dst += 5;
        }
        *dst = '\0';
        return out;
    }
    /* "... \"C\" at position N in URI ...: \"URL\"": keep it up to "in URI", with its one-character tokens */
    len = in_uri + 6 - msg;
    for (const char *p = msg, *end = msg + len; p < end;) {
        if (*p != '"') {
            *dst++ = *p++;
            continue;
        }
        const char *close = memchr(p + 1, '"', end - p - 1);
        if (close == NULL)
            break;
        if (keep_token(p + 1, close - p - 1, url)) {
            memcpy(dst, p, close - p + 1);
            dst += close - p + 1;
        } else {
            memcpy(dst, "\"\xe2\x80\xa6\"", 5);
            dst += 5;
        }
        p = close + 1;
    }
    *dst = '\0';
    return out;
}

static int parse_postgres(const char *url, const char *rest, h2o_db_url_t *out, char *err, size_t errsz)
{
    out->backend = H2O_DB_BACKEND_POSTGRES;
    if ((out->conninfo = postgres_conninfo(url, rest, err, errsz)) == NULL)
        return -1;
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(out->conninfo, &errmsg);
    if (opts == NULL) {
        char *msg = NULL;
        if (errmsg != NULL) {
            errmsg[strcspn(errmsg, "\n")] = '\0';
            msg = drop_quoted(errmsg, url);
        }
        fail(err, errsz, "invalid PostgreSQL URL: %s", msg != NULL ? msg : "out of memory");
        free(msg);
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
            char name[65];
            if (span_is(p, n, "mode=ro"))
                out->sqlite_readonly = 1;
            else if (!span_is(p, n, "mode=rw") && !span_is(p, n, "mode=rwc"))
                return fail(err, errsz, "unknown SQLite URL parameter `%s` (known: mode=ro, mode=rw, mode=rwc)",
                            quoted(p, strcspn(p, "=&"), name, sizeof(name)));
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

/* One ?NAME=VALUE; an error repeats name or value only when may_quote (parse_mysql says when). */
static int parse_mysql_param(const char *name, const char *value, int may_quote, const char *config_dir, h2o_db_url_t *out,
                             int *verify_set, char *err, size_t errsz)
{
    char name_buf[65], value_buf[65];
    const char *shown_name = may_quote ? quoted(name, strlen(name), name_buf, sizeof(name_buf)) : "…",
               *shown_value = may_quote ? quoted(value, strlen(value), value_buf, sizeof(value_buf)) : "…";
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
            return fail(err, errsz, "charset=%s: expected a MySQL character set name such as utf8mb4", shown_value);
        free(out->mysql.charset);
        out->mysql.charset = strdup(value);
    } else if (strcmp(name, "ssl_cipher") == 0) {
        free(out->mysql.ssl_cipher);
        out->mysql.ssl_cipher = strdup(value);
    } else if (strcmp(name, "connect_timeout") == 0) {
        char *end;
        unsigned long v = strtoul(value, &end, 10);
        if (value[0] < '0' || value[0] > '9' || *end != '\0' || v < 1 || v > 3600)
            return fail(err, errsz, "connect_timeout=%s: expected seconds between 1 and 3600", shown_value);
        out->mysql.connect_timeout = (unsigned)v;
    } else if (strcmp(name, "ssl") == 0) {
        int v = parse_bool(value);
        if (v < 0)
            return fail(err, errsz, "ssl=%s: expected true or false", shown_value);
        out->mysql.ssl = v;
    } else if (strcmp(name, "ssl_verify_cert") == 0) {
        int v = parse_bool(value);
        if (v < 0)
            return fail(err, errsz, "ssl_verify_cert=%s: expected true or false", shown_value);
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
            return fail(err, errsz, "ssl_mode=%s: expected DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY",
                        shown_value);
        }
        *verify_set = 1;
    } else if (strcmp(name, "password") == 0 || strcmp(name, "passwd") == 0) {
        return fail(err, errsz, "put the password in the URL's user part (mysql://USER:PASSWORD@HOST/DB), percent-encoded");
    } else {
        return fail(err, errsz, "unknown MySQL URL parameter `%s` (known: " MYSQL_PARAMS ")", shown_name);
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
    /* parameters: an error repeats a name or value only when the credentials hold none of / ? #,
     * so that the URL splits into credentials, host, path and parameters the same way whether it
     * is read as SQLAlchemy does (the password runs to the @) or as RFC 3986 does (the authority
     * ends at the first / ? #): otherwise what is a parameter here is a password there */
    int verify_set = 0, may_quote = at == NULL || strcspn(rest, "/?#") >= (size_t)(at - rest);
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
                ret = parse_mysql_param(name, value, may_quote, config_dir, out, &verify_set, err, errsz);
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
    /* whatever an error quotes of the URL, never its secrets */
    scrub(err, url);
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
