/*
 * db.query's parameter sources: query:NAME, path:N, header:NAME, body:NAME and body, read from the
 * request into text values (NULL for SQL NULL) that are bound as $1..$n, never spliced into SQL.
 *
 * body:NAME reads a field of an application/x-www-form-urlencoded body, or of a JSON object body
 * (any other content type): strings are decoded, numbers, true and false are passed as written,
 * null is SQL NULL, objects and arrays as their JSON text. The JSON reader validates the whole
 * body (nesting bounded) before any field is used.
 */
#include <string.h>
#include "query/query.h"

#define MAX_DEPTH 64

static int hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

char *h2o_db_query_unescape(h2o_mem_pool_t *pool, const char *src, size_t n, int plus_is_space)
{
    char *dst = h2o_mem_alloc_pool(pool, n + 1), *p = dst;
    for (size_t i = 0; i < n; ++i) {
        int hi, lo;
        if (src[i] == '%' && i + 2 < n && (hi = hex(src[i + 1])) >= 0 && (lo = hex(src[i + 2])) >= 0) {
            *p++ = (char)(hi << 4 | lo);
            i += 2;
        } else if (src[i] == '+' && plus_is_space) {
            *p++ = ' ';
        } else {
            *p++ = src[i];
        }
    }
    *p = '\0';
    if (memchr(dst, '\0', p - dst) != NULL)
        return NULL;
    return dst;
}

/* The value of NAME among "a=1&b=2" pairs, decoded; NULL when absent; *bad on a NUL byte. */
static const char *find_pair(h2o_mem_pool_t *pool, const char *s, size_t n, const char *name, size_t name_len, int *bad)
{
    const char *end = s + n;
    while (s < end) {
        const char *amp = memchr(s, '&', end - s), *pair_end = amp != NULL ? amp : end;
        const char *eq = memchr(s, '=', pair_end - s), *key_end = eq != NULL ? eq : pair_end;
        char *key = h2o_db_query_unescape(pool, s, key_end - s, 1);
        if (key != NULL && strlen(key) == name_len && memcmp(key, name, name_len) == 0) {
            const char *v = eq != NULL ? h2o_db_query_unescape(pool, eq + 1, pair_end - eq - 1, 1) : "";
            if (v == NULL)
                *bad = 1;
            return v;
        }
        s = pair_end + 1;
    }
    return NULL;
}

const char *h2o_db_query_arg(h2o_req_t *req, const char *name, size_t name_len)
{
    if (req->query_at == SIZE_MAX)
        return NULL;
    int bad = 0;
    const char *q = req->path.base + req->query_at + 1;
    return find_pair(&req->pool, q, req->path.len - req->query_at - 1, name, name_len, &bad);
}

/* Segment n (1-based) of the path after the configured one, or NULL. */
static const char *path_segment(h2o_req_t *req, size_t n)
{
    h2o_iovec_t path = req->path_normalized;
    size_t at = req->pathconf != NULL ? req->pathconf->path.len : 0;
    if (at > path.len)
        return NULL;
    const char *p = path.base + at, *end = path.base + path.len;
    for (size_t i = 1;; ++i) {
        while (p < end && *p == '/')
            ++p;
        if (p == end)
            return NULL;
        const char *seg_end = memchr(p, '/', end - p);
        if (seg_end == NULL)
            seg_end = end;
        if (i == n)
            return memchr(p, '\0', seg_end - p) != NULL ? NULL : h2o_strdup(&req->pool, p, seg_end - p).base;
        p = seg_end;
    }
}

static const char *header_value(h2o_req_t *req, const char *name)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
    if (i < 0)
        return NULL;
    h2o_iovec_t v = req->headers.entries[i].value;
    return h2o_strdup(&req->pool, v.base, v.len).base;
}

/* ---- JSON ---- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        ++p;
    return p;
}

/* Decodes the string at p (at its opening quote); returns the end (after the closing quote) or
 * NULL. With out != NULL, writes the UTF-8 text there (it needs at most the source's length). */
static const char *json_string(const char *p, const char *end, char *out, size_t *out_len)
{
    size_t n = 0;
    for (++p; p < end; ++p) {
        unsigned char c = *p;
        if (c == '"') {
            if (out_len != NULL)
                *out_len = n;
            return p + 1;
        }
        if (c < 0x20)
            return NULL;
        if (c != '\\') {
            if (out != NULL)
                out[n] = c;
            ++n;
            continue;
        }
        if (++p == end)
            return NULL;
        const char *simple = strchr("\"\\/bfnrt", *p);
        if (simple != NULL && *p != '\0') {
            if (out != NULL)
                out[n] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            ++n;
            continue;
        }
        if (*p != 'u' || end - p < 5)
            return NULL;
        unsigned cp = 0;
        for (int k = 1; k <= 4; ++k) {
            int h = hex(p[k]);
            if (h < 0)
                return NULL;
            cp = cp << 4 | h;
        }
        p += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) { /* a surrogate pair */
            unsigned lo = 0;
            if (end - p < 7 || p[1] != '\\' || p[2] != 'u')
                return NULL;
            for (int k = 3; k <= 6; ++k) {
                int h = hex(p[k]);
                if (h < 0)
                    return NULL;
                lo = lo << 4 | h;
            }
            if (lo < 0xdc00 || lo > 0xdfff)
                return NULL;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        } else if ((cp >= 0xdc00 && cp <= 0xdfff) || cp == 0) {
            return NULL; /* a lone low surrogate; NUL cannot be a parameter */
        }
        char u[4];
        size_t len = cp < 0x80      ? (u[0] = cp, 1)
                     : cp < 0x800   ? (u[0] = 0xc0 | cp >> 6, u[1] = 0x80 | (cp & 0x3f), 2)
                     : cp < 0x10000 ? (u[0] = 0xe0 | cp >> 12, u[1] = 0x80 | (cp >> 6 & 0x3f), u[2] = 0x80 | (cp & 0x3f), 3)
                                    : (u[0] = 0xf0 | cp >> 18, u[1] = 0x80 | (cp >> 12 & 0x3f), u[2] = 0x80 | (cp >> 6 & 0x3f),
                                       u[3] = 0x80 | (cp & 0x3f), 4);
        if (out != NULL)
            memcpy(out + n, u, len);
        n += len;
    }
    return NULL;
}

static const char *json_value(const char *p, const char *end, int depth);

static const char *json_container(const char *p, const char *end, int depth)
{
    char close = *p == '{' ? '}' : ']';
    int object = *p == '{';
    if (depth > MAX_DEPTH)
        return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (object) {
            if (p == end || *p != '"' || (p = json_string(p, end, NULL, NULL)) == NULL)
                return NULL;
            p = skip_ws(p, end);
            if (p == end || *p != ':')
                return NULL;
            p = skip_ws(p + 1, end);
        }
        if ((p = json_value(p, end, depth + 1)) == NULL)
            return NULL;
        p = skip_ws(p, end);
        if (p < end && *p == close)
            return p + 1;
        if (p == end || *p != ',')
            return NULL;
        p = skip_ws(p + 1, end);
    }
}

static const char *json_number(const char *p, const char *end)
{
    const char *start;
    if (p < end && *p == '-')
        ++p;
    if (p == end)
        return NULL;
    if (*p == '0') {
        ++p;
    } else {
        for (start = p; p < end && *p >= '0' && *p <= '9'; ++p)
            ;
        if (p == start)
            return NULL;
    }
    if (p < end && *p == '.') {
        for (start = ++p; p < end && *p >= '0' && *p <= '9'; ++p)
            ;
        if (p == start)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        if (++p < end && (*p == '+' || *p == '-'))
            ++p;
        for (start = p; p < end && *p >= '0' && *p <= '9'; ++p)
            ;
        if (p == start)
            return NULL;
    }
    return p;
}

/* Validates the value at p; returns its end or NULL. */
static const char *json_value(const char *p, const char *end, int depth)
{
    if (p == end)
        return NULL;
    switch (*p) {
    case '{':
    case '[':
        return json_container(p, end, depth);
    case '"':
        return json_string(p, end, NULL, NULL);
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return json_number(p, end);
    }
}

/* The field NAME of the JSON object body [p, end) (validated already): 1 found (*value: its text,
 * NULL for null), 0 absent. */
static int json_field(h2o_mem_pool_t *pool, const char *p, const char *end, const char *name, const char **value)
{
    size_t name_len = strlen(name);
    p = skip_ws(skip_ws(p, end) + 1, end);
    while (p < end && *p == '"') {
        size_t klen;
        char *key = h2o_mem_alloc_pool(pool, end - p);
        p = json_string(p, end, key, &klen);
        p = skip_ws(skip_ws(p, end) + 1, end); /* the ':' */
        const char *v_end = json_value(p, end, 0);
        if (klen == name_len && memcmp(key, name, klen) == 0) {
            if (*p == '"') {
                size_t n;
                char *s = h2o_mem_alloc_pool(pool, v_end - p);
                json_string(p, end, s, &n);
                s[n] = '\0';
                *value = s;
            } else if (*p == 'n') {
                *value = NULL;
            } else {
                *value = h2o_strdup(pool, p, v_end - p).base;
            }
            return 1; /* (the first of repeated keys) */
        }
        p = skip_ws(v_end, end);
        if (p < end && *p == ',')
            p = skip_ws(p + 1, end);
    }
    return 0;
}

/* ---- collecting ---- */

struct body {
    int kind; /* 0 none, 1 form, 2 JSON object */
    const char *base;
    size_t len;
};

static int is_form(h2o_req_t *req)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (i < 0)
        return 0;
    h2o_iovec_t v = req->headers.entries[i].value;
    static const char form[] = "application/x-www-form-urlencoded";
    return v.len >= sizeof(form) - 1 && h2o_lcstris(v.base, sizeof(form) - 1, form, sizeof(form) - 1) &&
           (v.len == sizeof(form) - 1 || v.base[sizeof(form) - 1] == ';' || v.base[sizeof(form) - 1] == ' ');
}

/* Reads the body's kind once; -1 when it is neither a form nor a JSON object. */
static int read_body(h2o_req_t *req, struct body *b)
{
    if (b->kind != 0)
        return 0;
    b->base = req->entity.base != NULL ? req->entity.base : "";
    b->len = req->entity.base != NULL ? req->entity.len : 0;
    if (is_form(req)) {
        b->kind = 1;
        return 0;
    }
    const char *p = skip_ws(b->base, b->base + b->len), *end = b->base + b->len;
    if (p == end) { /* no body: every field is absent */
        b->kind = 1;
        b->len = 0;
        return 0;
    }
    if (*p != '{' || (p = json_value(p, end, 0)) == NULL || skip_ws(p, end) != end)
        return -1;
    b->kind = 2;
    return 0;
}

/* One parameter: 1 present (*v, NULL for SQL NULL), 0 absent, -1 bad body. */
static int one(h2o_req_t *req, const h2o_db_query_param_t *p, struct body *b, const char **v)
{
    int bad = 0;
    switch (p->source) {
    case H2O_DB_QUERY_SRC_QUERY:
        if (req->query_at != SIZE_MAX)
            *v = find_pair(&req->pool, req->path.base + req->query_at + 1, req->path.len - req->query_at - 1, p->name,
                           strlen(p->name), &bad);
        else
            *v = NULL;
        return bad ? -1 : *v != NULL;
    case H2O_DB_QUERY_SRC_PATH:
        return (*v = path_segment(req, p->index)) != NULL;
    case H2O_DB_QUERY_SRC_HEADER:
        return (*v = header_value(req, p->name)) != NULL;
    case H2O_DB_QUERY_SRC_BODY:
        if (req->entity.base == NULL || memchr(req->entity.base, '\0', req->entity.len) != NULL)
            return req->entity.base == NULL ? 0 : -1;
        *v = h2o_strdup(&req->pool, req->entity.base, req->entity.len).base;
        return 1;
    case H2O_DB_QUERY_SRC_FIELD:
        if (read_body(req, b) != 0)
            return -1;
        if (b->kind == 1) {
            *v = find_pair(&req->pool, b->base, b->len, p->name, strlen(p->name), &bad);
            return bad ? -1 : *v != NULL;
        }
        return json_field(&req->pool, b->base, b->base + b->len, p->name, v);
    }
    return 0;
}

int h2o_db_query_collect(h2o_req_t *req, const h2o_db_query_method_t *m, const char ***values, const h2o_db_query_param_t **missing)
{
    const char **out = h2o_mem_alloc_pool(&req->pool, sizeof(*out) * (m->num_params + 2));
    struct body body = {0};
    for (size_t i = 0; i < m->num_params; ++i) {
        const h2o_db_query_param_t *p = m->params + i;
        const char *v = NULL;
        int ret = one(req, p, &body, &v);
        if (ret < 0) {
            *missing = p;
            return -2;
        }
        if (ret == 0) {
            if (p->def != NULL) {
                v = p->def;
            } else if (!p->optional) {
                *missing = p;
                return -1;
            }
        }
        out[i] = v;
    }
    *values = out;
    return 0;
}

/* ---- $n in a statement ---- */

/* The end of a dollar-quoted string starting at p ("$tag$"), or NULL when p does not start one. */
static const char *dollar_quoted(const char *p)
{
    const char *q = p + 1;
    if (*q >= '0' && *q <= '9')
        return NULL;
    while ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '_' ||
           (unsigned char)*q >= 0x80)
        ++q;
    if (*q != '$')
        return NULL;
    size_t tag_len = q - p + 1;
    for (const char *r = q + 1; (r = strchr(r, '$')) != NULL; ++r)
        if (strncmp(r, p, tag_len) == 0)
            return r + tag_len;
    return p + strlen(p); /* unterminated: the rest is the string */
}

/* Walks sql, calling on_param for each $n outside quotes, identifiers, dollar-quoted strings and
 * comments (at: where the '$' is, len: of "$n"). */
static void each_param(const char *sql, void (*on_param)(const char *at, size_t len, size_t n, void *data), void *data)
{
    for (const char *p = sql; *p != '\0';) {
        if (*p == '\'' || *p == '"' || *p == '`') { /* a string or a quoted identifier; '' and "" stay inside */
            char quote = *p;
            int backslash = quote == '\'' && p > sql && (p[-1] == 'E' || p[-1] == 'e');
            for (++p; *p != '\0'; ++p) {
                if (backslash && *p == '\\' && p[1] != '\0') {
                    ++p;
                } else if (*p == quote) {
                    if (p[1] != quote)
                        break;
                    ++p;
                }
            }
            if (*p != '\0')
                ++p;
        } else if (p[0] == '-' && p[1] == '-') {
            p += strcspn(p, "\n");
        } else if (p[0] == '/' && p[1] == '*') {
            const char *end = strstr(p + 2, "*/");
            p = end != NULL ? end + 2 : p + strlen(p);
        } else if (*p == '$' && p[1] >= '0' && p[1] <= '9' &&
                   (p == sql || !((p[-1] >= 'a' && p[-1] <= 'z') || (p[-1] >= 'A' && p[-1] <= 'Z') || p[-1] == '_'))) {
            const char *start = p;
            size_t n = 0;
            for (++p; *p >= '0' && *p <= '9'; ++p)
                n = n < 100000 ? n * 10 + (*p - '0') : n;
            on_param(start, p - start, n, data);
        } else if (*p == '$' && dollar_quoted(p) != NULL) {
            p = dollar_quoted(p);
        } else {
            ++p;
        }
    }
}

static void on_highest(const char *at, size_t len, size_t n, void *data)
{
    size_t *highest = data;
    if (n > *highest)
        *highest = n;
}

size_t h2o_db_query_count_params(const char *sql)
{
    size_t highest = 0;
    each_param(sql, on_highest, &highest);
    return highest;
}

struct renumber {
    unsigned char *used; /* used[n] for $n, n <= highest */
    size_t *dense;       /* $n → its number among the used ones */
    char *out;
    size_t out_len;
    const char *copied; /* sql up to here is in out */
};

static void on_used(const char *at, size_t len, size_t n, void *data)
{
    ((struct renumber *)data)->used[n] = 1;
}

static void on_rewrite(const char *at, size_t len, size_t n, void *data)
{
    struct renumber *r = data;
    memcpy(r->out + r->out_len, r->copied, at - r->copied);
    r->out_len += at - r->copied;
    r->out_len += sprintf(r->out + r->out_len, "$%zu", r->dense[n]);
    r->copied = at + len;
}

char *h2o_db_query_renumber(const char *sql, size_t **map, size_t *num)
{
    size_t highest = h2o_db_query_count_params(sql);
    struct renumber r = {calloc(highest + 1, 1), calloc(highest + 1, sizeof(size_t)), NULL, 0, sql};
    each_param(sql, on_used, &r);
    *map = calloc(highest + 1, sizeof(**map));
    *num = 0;
    for (size_t n = 1; n <= highest; ++n) {
        if (r.used[n]) {
            (*map)[*num] = n - 1;
            r.dense[n] = ++*num;
        }
    }
    r.out = malloc(strlen(sql) + 1); /* ($n never grows: dense[n] <= n) */
    each_param(sql, on_rewrite, &r);
    strcpy(r.out + r.out_len, r.copied);
    free(r.used);
    free(r.dense);
    return r.out;
}
