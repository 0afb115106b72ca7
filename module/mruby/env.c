/*
 * The Rack env of a request, with the values H2O 2.2.5's mruby handler gives (docs/mruby.md,
 * "The Rack env"): SCRIPT_NAME is the path the handler is configured at, PATH_INFO the rest of the
 * path as the client sent it (neither percent-decoded nor with dot segments resolved),
 * SERVER_NAME the host of the config's `hosts` entry, SERVER_ADDR/SERVER_PORT the listening
 * socket's address, SERVER_SOFTWARE the server's name (`server-name`), the `setenv` variables
 * of the path, then the request headers as HTTP_*.
 */
#include <netdb.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <mruby.h>
#include <mruby/hash.h>
#include <mruby/array.h>
#include <mruby/string.h>
#include <mruby/variable.h>
#include "mruby/internal.h"

static const char *const env_key_names[H2O_DB_MRUBY_NUM_KEYS] = {
    [H2O_DB_MRUBY_KEY_REQUEST_METHOD] = "REQUEST_METHOD",
    [H2O_DB_MRUBY_KEY_SCRIPT_NAME] = "SCRIPT_NAME",
    [H2O_DB_MRUBY_KEY_PATH_INFO] = "PATH_INFO",
    [H2O_DB_MRUBY_KEY_QUERY_STRING] = "QUERY_STRING",
    [H2O_DB_MRUBY_KEY_SERVER_NAME] = "SERVER_NAME",
    [H2O_DB_MRUBY_KEY_SERVER_ADDR] = "SERVER_ADDR",
    [H2O_DB_MRUBY_KEY_SERVER_PORT] = "SERVER_PORT",
    [H2O_DB_MRUBY_KEY_SERVER_PROTOCOL] = "SERVER_PROTOCOL",
    [H2O_DB_MRUBY_KEY_SERVER_SOFTWARE] = "SERVER_SOFTWARE",
    [H2O_DB_MRUBY_KEY_REMOTE_ADDR] = "REMOTE_ADDR",
    [H2O_DB_MRUBY_KEY_REMOTE_PORT] = "REMOTE_PORT",
    [H2O_DB_MRUBY_KEY_CONTENT_TYPE] = "CONTENT_TYPE",
    [H2O_DB_MRUBY_KEY_CONTENT_LENGTH] = "CONTENT_LENGTH",
    [H2O_DB_MRUBY_KEY_HTTP_HOST] = "HTTP_HOST",
    [H2O_DB_MRUBY_KEY_RACK_VERSION] = "rack.version",
    [H2O_DB_MRUBY_KEY_RACK_URL_SCHEME] = "rack.url_scheme",
    [H2O_DB_MRUBY_KEY_RACK_INPUT] = "rack.input",
    [H2O_DB_MRUBY_KEY_RACK_ERRORS] = "rack.errors",
    [H2O_DB_MRUBY_KEY_RACK_MULTITHREAD] = "rack.multithread",
    [H2O_DB_MRUBY_KEY_RACK_MULTIPROCESS] = "rack.multiprocess",
    [H2O_DB_MRUBY_KEY_RACK_RUN_ONCE] = "rack.run_once",
    [H2O_DB_MRUBY_KEY_RACK_HIJACK_P] = "rack.hijack?",
    [H2O_DB_MRUBY_KEY_REQUEST] = "h2o_db.request",
};

void h2o_db_mruby_init_env_keys(h2o_db_mruby_vm_t *vm)
{
    mrb_state *mrb = vm->mrb;
    for (size_t i = 0; i < H2O_DB_MRUBY_NUM_KEYS; ++i) {
        vm->keys[i] = mrb_str_new_cstr(mrb, env_key_names[i]);
        mrb_obj_freeze(mrb, vm->keys[i]); /* a frozen key is not copied by Hash#[]= */
        mrb_ary_push(mrb, vm->roots, vm->keys[i]);
    }
}

static void env_set(h2o_db_mruby_vm_t *vm, mrb_value env, int key, mrb_value v)
{
    mrb_hash_set(vm->mrb, env, vm->keys[key], v);
}

static mrb_value str(mrb_state *mrb, const char *p, size_t len)
{
    return mrb_str_new(mrb, p, len);
}

/* PATH_INFO: the request's path as sent (req->path), from where the configured prefix (`prefix`
 * bytes of the normalized path) ends up to the query. libh2o's norm_indexes maps each byte of the
 * normalized path to its place in the sent one (1-based; 0 for the '/' it adds in front of a path
 * without one); it is NULL when normalizing changed nothing. */
static mrb_value path_info(mrb_state *mrb, h2o_req_t *req, size_t prefix)
{
    if (req->path_normalized.len <= prefix)
        return mrb_str_new_lit(mrb, "");
    size_t end = req->query_at != SIZE_MAX ? req->query_at : req->path.len, start = prefix;
    if (req->norm_indexes != NULL)
        start = req->norm_indexes[prefix] != 0 ? req->norm_indexes[prefix] - 1 : 0;
    if (end > req->path.len)
        end = req->path.len;
    if (start > end)
        start = end;
    return str(mrb, req->path.base + start, end - start);
}

/* SCRIPT_NAME (the configured path without its trailing slash), PATH_INFO, QUERY_STRING. */
static void set_paths(h2o_db_mruby_vm_t *vm, mrb_value env, h2o_req_t *req)
{
    mrb_state *mrb = vm->mrb;
    h2o_iovec_t conf = req->pathconf != NULL ? req->pathconf->path : h2o_iovec_init(NULL, 0);
    if (conf.len != 0 && conf.base[conf.len - 1] == '/')
        --conf.len;
    env_set(vm, env, H2O_DB_MRUBY_KEY_SCRIPT_NAME, str(mrb, conf.base, conf.len));
    env_set(vm, env, H2O_DB_MRUBY_KEY_PATH_INFO, path_info(mrb, req, conf.len));
    if (req->query_at != SIZE_MAX && req->query_at < req->path.len)
        env_set(vm, env, H2O_DB_MRUBY_KEY_QUERY_STRING,
                str(mrb, req->path.base + req->query_at + 1, req->path.len - req->query_at - 1));
    else
        env_set(vm, env, H2O_DB_MRUBY_KEY_QUERY_STRING, mrb_str_new_lit(mrb, ""));
}

/* ADDR and PORT keys from one end of the connection (getsockname or getpeername); neither when
 * the connection has no such address. */
static void set_address(h2o_db_mruby_vm_t *vm, mrb_value env, h2o_conn_t *conn, socklen_t (*get)(h2o_conn_t *, struct sockaddr *),
                        int addr_key, int port_key)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    char buf[NI_MAXHOST];
    if ((sslen = get(conn, (struct sockaddr *)&ss)) == 0)
        return;
    size_t n = h2o_socket_getnumerichost((struct sockaddr *)&ss, sslen, buf);
    if (n != SIZE_MAX)
        env_set(vm, env, addr_key, str(vm->mrb, buf, n));
    int32_t port = h2o_socket_getport((struct sockaddr *)&ss);
    if (port >= 0)
        env_set(vm, env, port_key, str(vm->mrb, buf, snprintf(buf, sizeof(buf), "%" PRIu16, (uint16_t)port)));
}

/* The server side: SERVER_NAME, SERVER_ADDR, SERVER_PORT, SERVER_PROTOCOL, SERVER_SOFTWARE, REMOTE_*. */
static void set_server(h2o_db_mruby_vm_t *vm, mrb_value env, h2o_req_t *req)
{
    mrb_state *mrb = vm->mrb;
    char buf[sizeof("HTTP/1.1")];
    h2o_iovec_t host = req->hostconf != NULL ? req->hostconf->authority.host : h2o_iovec_init(NULL, 0);
    env_set(vm, env, H2O_DB_MRUBY_KEY_SERVER_NAME, str(mrb, host.base, host.len));
    set_address(vm, env, req->conn, req->conn->callbacks->get_sockname, H2O_DB_MRUBY_KEY_SERVER_ADDR, H2O_DB_MRUBY_KEY_SERVER_PORT);
    env_set(vm, env, H2O_DB_MRUBY_KEY_SERVER_PROTOCOL, str(mrb, buf, h2o_stringify_protocol_version(buf, req->version)));
    env_set(vm, env, H2O_DB_MRUBY_KEY_SERVER_SOFTWARE, vm->server_software);
    set_address(vm, env, req->conn, req->conn->callbacks->get_peername, H2O_DB_MRUBY_KEY_REMOTE_ADDR, H2O_DB_MRUBY_KEY_REMOTE_PORT);
    env_set(vm, env, H2O_DB_MRUBY_KEY_HTTP_HOST, str(mrb, req->authority.base, req->authority.len));
}

/* The `setenv` variables (libh2o applied every level's setenv/unsetenv to req->env), and what a
 * previous handler's 399 set with x-fallthru-set-*. */
static void set_variables(h2o_db_mruby_vm_t *vm, mrb_value env, h2o_req_t *req)
{
    for (size_t i = 0; i + 1 < req->env.size; i += 2) {
        const h2o_iovec_t *name = req->env.entries + i, *value = name + 1;
        mrb_hash_set(vm->mrb, env, str(vm->mrb, name->base, name->len), str(vm->mrb, value->base, value->len));
    }
}

static int is_name(const h2o_iovec_t *name, const char *lit, size_t len)
{
    return h2o_memis(name->base, name->len, lit, len);
}

/* "HTTP_" + the name upper-cased, '-' as '_'; CONTENT_TYPE for content-type. */
static mrb_value header_key(h2o_db_mruby_vm_t *vm, const h2o_iovec_t *name)
{
    if (is_name(name, H2O_STRLIT("content-type")))
        return vm->keys[H2O_DB_MRUBY_KEY_CONTENT_TYPE];
    mrb_value key = mrb_str_new(vm->mrb, NULL, 5 + name->len);
    char *k = RSTRING_PTR(key);
    memcpy(k, "HTTP_", 5);
    for (size_t j = 0; j < name->len; ++j) {
        char c = name->base[j];
        k[5 + j] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c;
    }
    return key;
}

/* HTTP_* and CONTENT_TYPE: a repeated header is one key, its values joined in order with ", "
 * (cookies with "; "). libh2o keeps at most 100 headers, so the scan for repeats stays small. */
static void set_headers(h2o_db_mruby_vm_t *vm, mrb_value env, h2o_req_t *req)
{
    mrb_state *mrb = vm->mrb;
    const h2o_header_t *headers = req->headers.entries;
    for (size_t i = 0; i < req->headers.size; ++i) {
        const h2o_iovec_t *name = headers[i].name;
        if (is_name(name, H2O_STRLIT("content-length")) || is_name(name, H2O_STRLIT("host")) ||
            is_name(name, H2O_STRLIT("transfer-encoding")))
            continue;
        size_t j;
        for (j = 0; j < i && !h2o_memis(headers[j].name->base, headers[j].name->len, name->base, name->len); ++j)
            ;
        if (j < i)
            continue; /* joined to the first of its name */
        mrb_value v = str(mrb, headers[i].value.base, headers[i].value.len);
        for (j = i + 1; j < req->headers.size; ++j) {
            if (!h2o_memis(headers[j].name->base, headers[j].name->len, name->base, name->len))
                continue;
            if (is_name(name, H2O_STRLIT("cookie")))
                mrb_str_cat_lit(mrb, v, "; ");
            else
                mrb_str_cat_lit(mrb, v, ", ");
            mrb_str_cat(mrb, v, headers[j].value.base, headers[j].value.len);
        }
        mrb_hash_set(mrb, env, header_key(vm, name), v);
    }
}

/* rack.input: the whole body (h2o read it before the handler runs). The VM keeps it by the
 * request's slot, so that the request's end can close it (H2O::DB::Input raises IOError then). */
static void set_input(h2o_db_mruby_vm_t *vm, mrb_value env, h2o_req_t *req, uint64_t id)
{
    mrb_state *mrb = vm->mrb;
    char buf[32];
    mrb_value body = vm->empty_string;
    if (req->entity.base != NULL) {
        env_set(vm, env, H2O_DB_MRUBY_KEY_CONTENT_LENGTH, str(mrb, buf, snprintf(buf, sizeof(buf), "%zu", req->entity.len)));
        body = str(mrb, req->entity.base, req->entity.len);
    }
    mrb_value input = mrb_obj_value(mrb_obj_alloc(mrb, MRB_TT_OBJECT, vm->input_class));
    mrb_iv_set(mrb, input, vm->sym_input_s, body);
    mrb_iv_set(mrb, input, vm->sym_input_pos, mrb_fixnum_value(0));
    mrb_ary_set(mrb, vm->inputs, (mrb_int)(id & (H2O_DB_MRUBY_MAX_SLOTS - 1)), input);
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_INPUT, input);
}

mrb_value h2o_db_mruby_build_env(h2o_db_mruby_vm_t *vm, h2o_req_t *req, uint64_t id)
{
    mrb_state *mrb = vm->mrb;
    mrb_value env = mrb_hash_new_capa(mrb, 32);

    env_set(vm, env, H2O_DB_MRUBY_KEY_REQUEST_METHOD, str(mrb, req->method.base, req->method.len));
    set_paths(vm, env, req);
    set_server(vm, env, req);
    set_variables(vm, env, req);
    set_headers(vm, env, req);
    set_input(vm, env, req, id);
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_URL_SCHEME, str(mrb, req->scheme->name.base, req->scheme->name.len));
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_VERSION, vm->rack_version);
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_ERRORS, vm->rack_errors);
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_MULTITHREAD, mrb_false_value());
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_MULTIPROCESS, mrb_true_value());
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_RUN_ONCE, mrb_false_value());
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_HIJACK_P, mrb_false_value());
    env_set(vm, env, H2O_DB_MRUBY_KEY_REQUEST, mrb_int_value(mrb, (mrb_int)id));
    return env;
}
