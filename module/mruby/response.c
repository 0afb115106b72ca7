/*
 * The response of a Rack app, applied to the request as H2O 2.2.5's mruby handler applies it
 * (docs/mruby.md, "The response"): headers first (for a 399 too, so that the next handler's
 * response carries them), then the body with its length.
 *
 *  - the hop-by-hop headers libh2o drops from a proxied response (connection, transfer-encoding,
 *    ...) are dropped; `content-length` sets the response's length (the body is cut to it, or it
 *    to the body);
 *  - `link` goes through h2o_push_path_in_link_header: each `rel=preload` (without `nopush`) is
 *    pushed over HTTP/2, and the header is kept unless it was `x-http2-push-only`;
 *  - `x-fallthru-set-NAME: VALUE` is not sent: it sets the request's environment variable NAME
 *    (upper-cased, '-' as '_'), which the next handler sees (another mruby handler in its env);
 *  - 1xx, 204, 304 and responses to HEAD have no body; a HEAD response says the body's length.
 */
#include <string.h>
#include <mruby.h>
#include <mruby/array.h>
#include <mruby/string.h>
#include "mruby/internal.h"

#define FALLTHRU_SET_PREFIX "x-fallthru-set-"

/* x-fallthru-set-NAME: the request's environment variable NAME. */
static void set_fallthru_env(h2o_req_t *req, const char *name, size_t nlen, const char *value, size_t vlen)
{
    char *env_name = h2o_mem_alloc_pool(&req->pool, nlen);
    for (size_t i = 0; i < nlen; ++i)
        env_name[i] = name[i] == '-' ? '_' : h2o_toupper(name[i]);
    *h2o_req_getenv(req, env_name, nlen, 1) = h2o_strdup(&req->pool, value, vlen);
}

/* One header of the app's response; `name` is lower case. */
static void add_header(h2o_req_t *req, const char *name, size_t nlen, const char *value, size_t vlen)
{
    const h2o_token_t *token = h2o_lookup_token(name, nlen);
    if (token != NULL) {
        if (token->proxy_should_drop_for_res)
            return;
        if (token == H2O_TOKEN_CONTENT_LENGTH) {
            req->res.content_length = h2o_strtosize(value, vlen);
            return;
        }
        h2o_iovec_t v = h2o_strdup(&req->pool, value, vlen);
        if (token == H2O_TOKEN_LINK && (v = h2o_push_path_in_link_header(req, v.base, v.len)).len == 0)
            return; /* only links to push */
        h2o_add_header(&req->pool, &req->res.headers, token, NULL, v.base, v.len);
        return;
    }
    size_t plen = sizeof(FALLTHRU_SET_PREFIX) - 1;
    if (nlen > plen && memcmp(name, FALLTHRU_SET_PREFIX, plen) == 0) {
        set_fallthru_env(req, name + plen, nlen - plen, value, vlen);
        return;
    }
    h2o_iovec_t n = h2o_strdup(&req->pool, name, nlen), v = h2o_strdup(&req->pool, value, vlen);
    h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 0, NULL, v.base, v.len);
}

void h2o_db_mruby_add_headers(h2o_req_t *req, mrb_value headers)
{
    if (!mrb_array_p(headers))
        return;
    for (mrb_int i = 0; i + 1 < RARRAY_LEN(headers); i += 2) {
        mrb_value n = RARRAY_PTR(headers)[i], v = RARRAY_PTR(headers)[i + 1];
        if (mrb_string_p(n) && mrb_string_p(v))
            add_header(req, RSTRING_PTR(n), RSTRING_LEN(n), RSTRING_PTR(v), RSTRING_LEN(v));
    }
}

static size_t body_size(mrb_value chunks)
{
    size_t total = 0;
    if (mrb_array_p(chunks))
        for (mrb_int i = 0; i < RARRAY_LEN(chunks); ++i)
            if (mrb_string_p(RARRAY_PTR(chunks)[i]))
                total += RSTRING_LEN(RARRAY_PTR(chunks)[i]);
    return total;
}

/* The first `size` bytes of the chunks, in the request's memory. */
static char *flatten_body(h2o_req_t *req, mrb_value chunks, size_t size)
{
    char *body = h2o_mem_alloc_pool(&req->pool, size + 1), *dst = body;
    for (mrb_int i = 0; size != 0 && i < RARRAY_LEN(chunks); ++i) {
        mrb_value c = RARRAY_PTR(chunks)[i];
        if (!mrb_string_p(c))
            continue;
        size_t n = (size_t)RSTRING_LEN(c) < size ? (size_t)RSTRING_LEN(c) : size;
        memcpy(dst, RSTRING_PTR(c), n);
        dst += n;
        size -= n;
    }
    return body;
}

void h2o_db_mruby_send_response(h2o_req_t *req, mrb_int status, mrb_value chunks)
{
    static h2o_generator_t generator = {NULL, NULL};
    size_t total = body_size(chunks);
    int bodiless = (status >= 100 && status <= 199) || status == 204 || status == 304;
    int head = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    req->res.status = (int)status; /* the reason stays libh2o's "OK", as with h2o's mruby */
    if (bodiless || head) {
        if (head && !bodiless && req->res.content_length == SIZE_MAX)
            req->res.content_length = total;
        h2o_start_response(req, &generator);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
        return;
    }
    if (req->res.content_length < total)
        total = req->res.content_length;
    req->res.content_length = total; /* h2o would otherwise go chunked */
    h2o_iovec_t buf = h2o_iovec_init(flatten_body(req, chunks, total), total);
    h2o_start_response(req, &generator);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}
