/*
 * libFuzzer target: bind URLs (module/config/url.c).
 *
 * The input is a URL. Every occurrence of the three letters PWD in it is replaced by a
 * distinct secret (QzPw0xSecret, QzPw1xSecret, ...), so that the fuzzer can put passwords
 * anywhere without knowing them. Then:
 *   - h2o_db_url_mask_password() and h2o_db_url_parse() must not crash (ASan, UBSan);
 *   - a secret that sits where the URL carries a password must appear neither in the URL
 *     shown for the bind (out.display: what logs, errors, the status page and `-t` print)
 *     nor in the parse error.
 * "Where the URL carries a password" is decided the way the backend decides it:
 *   PostgreSQL: libpq's grammar — user:PASSWORD@ up to the first @ before any / (so ? and #
 *               may be part of it), and the password= / sslpassword= parameters, names
 *               percent-decoded; when libpq parses the URL, also whatever PQconninfoParse
 *               reports as password or sslpassword;
 *   MySQL:      the password h2o-db decodes, user:PASSWORD@ in the authority, password=;
 *   others:     user:PASSWORD@ in the authority (RFC 3986), password=.
 * Run through scripts/fuzz; corpus in t/fuzz/corpus/url/.
 */
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/url.h"

#define MAX_SECRETS 16
#define SECRET_FMT  "QzPw%dxSecret"

struct span {
    size_t from, to; /* [from, to) in the expanded URL */
};

struct secrets {
    char text[MAX_SECRETS][32];
    struct span at[MAX_SECRETS];
    int n;
};

/* Expands PWD into distinct secrets; NULL when the input holds a NUL (a YAML scalar cannot). */
static char *expand(const uint8_t *data, size_t size, struct secrets *s)
{
    if (memchr(data, '\0', size) != NULL)
        return NULL;
    /* the fuzzer learns strings it sees compared: a secret typed in by hand is not one of ours */
    if (memmem(data, size, "QzPw", 4) != NULL)
        return NULL;
    char *out = malloc(size * 12 + 1);
    size_t n = 0;
    s->n = 0;
    for (size_t i = 0; i < size;) {
        if (i + 3 <= size && memcmp(data + i, "PWD", 3) == 0 && s->n < MAX_SECRETS) {
            int len = snprintf(s->text[s->n], sizeof(s->text[0]), SECRET_FMT, s->n);
            memcpy(out + n, s->text[s->n], len);
            s->at[s->n].from = n;
            s->at[s->n].to = n + len;
            ++s->n;
            n += len;
            i += 3;
        } else {
            out[n++] = (char)data[i++];
        }
    }
    out[n] = '\0';
    return out;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Whether url[from, to) percent-decodes to `name`. */
static int decodes_to(const char *url, size_t from, size_t to, const char *name)
{
    size_t k = 0, n = strlen(name);
    for (size_t i = from; i < to; ++i) {
        char c = url[i];
        if (c == '%' && i + 2 < to && hexval(url[i + 1]) >= 0 && hexval(url[i + 2]) >= 0) {
            c = (char)(hexval(url[i + 1]) * 16 + hexval(url[i + 2]));
            i += 2;
        }
        if (k >= n || name[k++] != c)
            return 0;
    }
    return k == n;
}

/* Marks the secrets that lie inside url[from, to) as protected. */
static void protect_span(const struct secrets *s, int *prot, size_t from, size_t to)
{
    for (int i = 0; i < s->n; ++i)
        if (s->at[i].from < to && s->at[i].to > from)
            prot[i] = 1;
}

/* Marks the secrets in a password position of `url`, the way its backend reads it. */
static void protect(const char *url, const struct secrets *s, int *prot)
{
    const char *sep = strstr(url, "://");
    if (sep == NULL)
        return;
    /* a PostgreSQL URL for h2o-db: postgres[ql][+driver]:// with a well-formed scheme */
    int scheme_ok = sep != url;
    for (const char *c = url; scheme_ok && c < sep; ++c)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '+' || *c == '-' || *c == '.'))
            scheme_ok = 0;
    size_t scheme_len = strcspn(url, "+:");
    int pg = scheme_ok &&
             ((scheme_len == 10 && strncmp(url, "postgresql", 10) == 0) || (scheme_len == 8 && strncmp(url, "postgres", 8) == 0));
    size_t start = sep + 3 - url, end = strlen(url), at = SIZE_MAX, p;
    if (pg) {
        /* libpq: the credentials run to the first @ met before any / */
        for (p = start; p < end && url[p] != '@' && url[p] != '/'; ++p)
            ;
        if (p < end && url[p] == '@')
            at = p;
    } else {
        /* RFC 3986: the authority ends at / ? #; its last @ ends the userinfo */
        size_t auth_end = start + strcspn(url + start, "/?#");
        for (p = start; p < auth_end; ++p)
            if (url[p] == '@')
                at = p;
    }
    if (at != SIZE_MAX) {
        const char *colon = memchr(url + start, ':', at - start);
        if (colon != NULL)
            protect_span(s, prot, colon + 1 - url, at);
    }
    /* password= parameters; PostgreSQL: also sslpassword=, with names percent-decoded as libpq does
     * (a malformed scheme is no URL at all: only its user:PASSWORD@ counts) */
    const char *q = strchr(url + (at != SIZE_MAX ? at : start), '?');
    if (q == NULL || !scheme_ok)
        return;
    if (!pg) { /* RFC 3986: the query ends at the fragment (libpq has no fragments) */
        const char *hash = strchr(url + start, '#');
        if (hash != NULL && hash < q)
            return;
        end = q - url + strcspn(q, "#");
    }
    for (size_t i = q + 1 - url; i < end;) {
        size_t n = strcspn(url + i, "&"), eq = strcspn(url + i, "=&");
        if (eq < n && (pg ? decodes_to(url, i, i + eq, "password") || decodes_to(url, i, i + eq, "sslpassword")
                          : eq == 8 && strncmp(url + i, "password", 8) == 0))
            protect_span(s, prot, i + eq + 1, i + n);
        i += n + 1;
    }
}

/* prints through the sanitizers' report channel (stderr may be closed: -close_fd_mask=2) */
void __sanitizer_report_error_summary(const char *error_summary);

static void leak(const char *what, const char *url, const char *secret, const char *shown)
{
    char msg[8192];
    snprintf(msg, sizeof(msg), "fuzz_url: the password `%s` of `%s` is shown in the %s: `%s`", secret, url, what, shown);
    __sanitizer_report_error_summary(msg);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    struct secrets s;
    char *url = expand(data, size, &s);
    if (url == NULL)
        return 0;
    int prot[MAX_SECRETS] = {0};
    protect(url, &s, prot);

    char *masked = h2o_db_url_mask_password(url);
    h2o_db_url_t out;
    char err[1024] = "";
    int ret = h2o_db_url_parse(url, "/nonexistent/config-dir", "sa_main", &out, err, sizeof(err));
    if (ret == 0) {
        if (out.backend == H2O_DB_BACKEND_POSTGRES) {
            /* what libpq itself will use as passwords */
            PQconninfoOption *opts = PQconninfoParse(out.conninfo, NULL);
            for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; ++o) {
                if (o->val == NULL || (strcmp(o->keyword, "password") != 0 && strcmp(o->keyword, "sslpassword") != 0))
                    continue;
                for (int i = 0; i < s.n; ++i)
                    if (strstr(o->val, s.text[i]) != NULL)
                        prot[i] = 1;
            }
            PQconninfoFree(opts);
        } else if (out.backend == H2O_DB_BACKEND_MYSQL && out.mysql.password != NULL) {
            for (int i = 0; i < s.n; ++i)
                if (strstr(out.mysql.password, s.text[i]) != NULL)
                    prot[i] = 1;
        }
    }
    /* what is printed: the bind's URL (messages, the status page, `-t`) or the parse error */
    for (int i = 0; i < s.n; ++i) {
        if (!prot[i])
            continue;
        if (ret == 0 && strstr(out.display, s.text[i]) != NULL)
            leak("URL shown for the bind", url, s.text[i], out.display);
        if (ret != 0 && strstr(err, s.text[i]) != NULL)
            leak("error message", url, s.text[i], err);
    }
    if (ret == 0)
        h2o_db_url_dispose(&out);
    free(masked);
    free(url);
    return 0;
}
