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
 *   mysql://, mariadb://, mysql+aiomysql://, ...: refused until a driver is built.
 */
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Where the authority (user:password@host...) of a URL ends. */
static const char *authority_end(const char *authority)
{
    return authority + strcspn(authority, "/?#");
}

char *h2o_db_url_mask_password(const char *url)
{
    size_t len = strlen(url);
    char *out = malloc(len * 2 + 16), *dst = out;
    const char *p = url, *sep = strstr(url, "://");

    if (sep != NULL) {
        const char *auth = sep + 3, *end = authority_end(auth), *at = NULL;
        for (const char *q = auth; q < end; ++q)
            if (*q == '@')
                at = q;
        const char *colon = at != NULL ? memchr(auth, ':', at - auth) : NULL;
        if (colon != NULL) {
            memcpy(dst, url, colon + 1 - url);
            dst += colon + 1 - url;
            memcpy(dst, "***", 3);
            dst += 3;
            p = at;
        }
    }
    /* password=... in the query string */
    const char *query = strchr(p, '?');
    if (query == NULL) {
        strcpy(dst, p);
        return out;
    }
    memcpy(dst, p, query - p);
    dst += query - p;
    p = query;
    while (*p != '\0') {
        *dst++ = *p++; /* '?' or '&' */
        size_t n = strcspn(p, "&#");
        if (n >= 9 && strncmp(p, "password=", 9) == 0) {
            memcpy(dst, "password=***", 12);
            dst += 12;
        } else {
            memcpy(dst, p, n);
            dst += n;
        }
        p += n;
        if (*p == '#') {
            strcpy(dst, p);
            return out;
        }
    }
    *dst = '\0';
    return out;
}

/* The password as written in the URL (user:PASSWORD@ or password=PASSWORD), or NULL; malloc'd. */
static char *find_password(const char *url)
{
    const char *sep = strstr(url, "://");
    if (sep != NULL) {
        const char *auth = sep + 3, *end = authority_end(auth), *at = NULL;
        for (const char *q = auth; q < end; ++q)
            if (*q == '@')
                at = q;
        const char *colon = at != NULL ? memchr(auth, ':', at - auth) : NULL;
        if (colon != NULL && at > colon + 1)
            return strndup(colon + 1, at - colon - 1);
    }
    const char *pw = strstr(url, "password=");
    if (pw != NULL && (pw[-1] == '?' || pw[-1] == '&'))
        return strndup(pw + 9, strcspn(pw + 9, "&#"));
    return NULL;
}

/* Replaces every occurrence of `secret` in msg by "***" (libpq may quote what it could not parse). */
static void scrub(char *msg, const char *secret)
{
    size_t n;
    if (secret == NULL || (n = strlen(secret)) < 1)
        return;
    char *hit;
    while ((hit = strstr(msg, secret)) != NULL) {
        if (n >= 3) {
            memcpy(hit, "***", 3);
            memmove(hit + 3, hit + n, strlen(hit + n) + 1);
        } else {
            memset(hit, '*', n);
        }
    }
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
            if (strlen(foreign_params[i].name) == name_len && strncmp(p, foreign_params[i].name, name_len) == 0) {
                fail(err, errsz, "the URL parameter `%s` is asyncpg's; libpq does not know it: use %s", foreign_params[i].name,
                     foreign_params[i].instead);
                free(out);
                return NULL;
            }
        }
        if (name_len == 3 && strncmp(p, "ssl", 3) == 0 && p[3] == '=') {
            const char *v = p + 4;
            size_t vlen = n - 4;
            const char *mode = NULL;
            if ((vlen == 4 && strncmp(v, "true", 4) == 0) || (vlen == 7 && strncmp(v, "require", 7) == 0))
                mode = "require";
            else if ((vlen == 5 && strncmp(v, "false", 5) == 0) || (vlen == 7 && strncmp(v, "disable", 7) == 0))
                mode = "disable";
            else if (vlen == 6 && strncmp(v, "prefer", 6) == 0)
                mode = "prefer";
            else if (vlen == 5 && strncmp(v, "allow", 5) == 0)
                mode = "allow";
            else if (vlen == 9 && strncmp(v, "verify-ca", 9) == 0)
                mode = "verify-ca";
            else if (vlen == 11 && strncmp(v, "verify-full", 11) == 0)
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
        char *password = find_password(url);
        if (errmsg != NULL) {
            errmsg[strcspn(errmsg, "\n")] = '\0';
            scrub(errmsg, password);
        }
        fail(err, errsz, "invalid PostgreSQL URL: %s", errmsg != NULL ? errmsg : "out of memory");
        free(password);
        PQfreemem(errmsg);
        return -1;
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
            if (n == 7 && strncmp(p, "mode=ro", 7) == 0)
                out->sqlite_readonly = 1;
            else if (!(n == 7 && strncmp(p, "mode=rw", 7) == 0) && !(n == 8 && strncmp(p, "mode=rwc", 8) == 0))
                return fail(err, errsz, "unknown SQLite URL parameter `%.*s` (known: mode=ro, mode=rw, mode=rwc)", (int)n, p);
            p += n;
            if (*p == '&')
                ++p;
        }
    }
    if (path_len == 0 || (path_len == 8 && strncmp(path, ":memory:", 8) == 0)) {
        size_t n = strlen(key) + 16;
        out->memory_name = malloc(n);
        snprintf(out->memory_name, n, "/h2o-db-%s", key);
        return 0;
    }
    if (memchr(path, '\0', path_len) != NULL)
        return fail(err, errsz, "invalid SQLite path");
    if (path[0] == '/' || config_dir == NULL) {
        out->sqlite_path = strndup(path, path_len);
    } else {
        size_t n = strlen(config_dir) + 1 + path_len + 1;
        out->sqlite_path = malloc(n);
        snprintf(out->sqlite_path, n, "%s/%.*s", config_dir, (int)path_len, path);
    }
    return 0;
}

int h2o_db_url_parse(const char *url, const char *config_dir, const char *key, h2o_db_url_t *out, char *err, size_t errsz)
{
    memset(out, 0, sizeof(*out));
    out->display = h2o_db_url_mask_password(url);

    const char *sep = strstr(url, "://");
    if (sep == NULL || sep == url) {
        fail(err, errsz, "`%s` is not a database URL: expected SCHEME://..., e.g. postgresql://user@host/db or sqlite:///file.sqlite3",
             out->display);
        goto Error;
    }
    size_t scheme_len = strcspn(url, "+:");
    const char *rest = sep + 3;
    for (const char *p = url; p < sep; ++p) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '+' || *p == '-' || *p == '.')) {
            fail(err, errsz, "`%s` is not a database URL: the scheme may hold only lower-case letters, digits, + - .", out->display);
            goto Error;
        }
    }
#define SCHEME_IS(s) (scheme_len == sizeof(s) - 1 && strncmp(url, s, scheme_len) == 0)
    if (SCHEME_IS("postgresql") || SCHEME_IS("postgres")) {
        if (parse_postgres(url, rest, out, err, errsz) != 0)
            goto Error;
    } else if (SCHEME_IS("sqlite")) {
        if (parse_sqlite(rest, config_dir, key, out, err, errsz) != 0)
            goto Error;
    } else if (SCHEME_IS("mysql") || SCHEME_IS("mariadb")) {
        out->backend = H2O_DB_BACKEND_MYSQL;
        fail(err, errsz, "MySQL support is not built into this h2o-db (%s); supported here: postgresql://, sqlite://",
             out->display);
        goto Error;
    } else {
        fail(err, errsz, "unknown database URL scheme `%.*s` (supported: postgresql://, postgres://, sqlite://, each with an optional "
                         "+driver suffix)",
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
    memset(url, 0, sizeof(*url));
}
