/*
 * mruby.handler / mruby.handler-file: Rack apps in Ruby, run in a Fiber per request.
 *
 * Config time (configurator.c): the source (inline, or the file relative to the config
 * file's folder) is compiled and run in a throwaway mrb_state with the prelude loaded
 * (h2o_db_mruby_check_source); a syntax error or an exception is a config error
 * (FILE:LINE), and the result must respond to `call`. The source is kept.
 *
 * Worker threads: the first mruby handler's on_context_init opens the thread's VM
 * (mrb_state + prelude); every handler compiles and runs its source there again and
 * keeps the app in the VM's `apps` array.
 *
 * A request: on_req builds the Rack env, creates a Fiber running H2O::DB::RUNNER (app.call
 * and the body, in Ruby) and resumes it. When the Fiber yields, it yielded a statement
 * (H2O::DB::Session#__prepare): db.c sends it and the Fiber waits, reachable from the VM's
 * `fibers` array, until the statement's callback resumes it with the answer. When the
 * Fiber ends, its response (or exception) is sent. A request that ends first (HTTP/2
 * reset, client gone) frees its slot: its Fiber is never resumed again and the GC takes it.
 */
#include <netdb.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <mruby.h>
#include <mruby/array.h>
#include <mruby/compile.h>
#include <mruby/error.h>
#include <mruby/hash.h>
#include <mruby/string.h>
#include <mruby/variable.h>
#include "mruby/internal.h"
#include "thread.h"
#include "mruby/prelude.h"

struct st_h2o_db_mruby_handler_t {
    h2o_handler_t super;
    char *source;
    size_t source_len;
    char *filename;  /* where the source is: the config file, or the .rb file */
    unsigned lineno; /* of the source's first line in `filename` */
    size_t index;    /* its place in every VM's `apps` */
};

__thread h2o_db_mruby_vm_t *h2o_db_mruby_thread_vm;

static size_t num_handlers;

static const char *const env_key_names[H2O_DB_MRUBY_NUM_KEYS] = {
    [H2O_DB_MRUBY_KEY_REQUEST_METHOD] = "REQUEST_METHOD",
    [H2O_DB_MRUBY_KEY_SCRIPT_NAME] = "SCRIPT_NAME",
    [H2O_DB_MRUBY_KEY_PATH_INFO] = "PATH_INFO",
    [H2O_DB_MRUBY_KEY_QUERY_STRING] = "QUERY_STRING",
    [H2O_DB_MRUBY_KEY_SERVER_NAME] = "SERVER_NAME",
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

/* ---- the VM ---- */

/* "message (Class)" and, with backtrace, the frames; always NUL-terminated. */
static void describe_exception(h2o_db_mruby_vm_t *vm, mrb_value exc, int backtrace, char *buf, size_t size)
{
    mrb_state *mrb = vm->mrb;
    int ai = mrb_gc_arena_save(mrb);
    mrb_value args[2] = {exc, mrb_bool_value(backtrace)};
    mrb_value s = mrb_funcall_argv(mrb, mrb_obj_value(vm->db_module), mrb_intern_lit(mrb, "__describe"), 2, args);
    if (mrb->exc != NULL || !mrb_string_p(s)) {
        mrb->exc = NULL;
        snprintf(buf, size, "%s", mrb_obj_classname(mrb, exc));
    } else {
        snprintf(buf, size, "%.*s", (int)RSTRING_LEN(s), RSTRING_PTR(s));
    }
    mrb_gc_arena_restore(mrb, ai);
}

static void vm_close(h2o_db_mruby_vm_t *vm)
{
    if (vm->mrb != NULL)
        mrb_close(vm->mrb);
    free(vm->slots);
    free(vm);
}

/* A new mrb_state with H2O::DB and the prelude; NULL with a message in err. */
static h2o_db_mruby_vm_t *vm_open(char *err, size_t errsz)
{
    h2o_db_mruby_vm_t *vm = calloc(1, sizeof(*vm));
    if (vm == NULL || (vm->mrb = mrb_open()) == NULL) {
        snprintf(err, errsz, "cannot open an mruby state (out of memory)");
        free(vm);
        return NULL;
    }
    mrb_state *mrb = vm->mrb;
    mrb->ud = vm;
    vm->free_head = UINT32_MAX;
    int ai = mrb_gc_arena_save(mrb);

    vm->roots = mrb_ary_new(mrb);
    mrb_gc_register(mrb, vm->roots);
    vm->fibers = mrb_ary_new(mrb);
    mrb_ary_push(mrb, vm->roots, vm->fibers);
    vm->apps = mrb_ary_new(mrb);
    mrb_ary_push(mrb, vm->roots, vm->apps);
    for (size_t i = 0; i < H2O_DB_MRUBY_NUM_KEYS; ++i) {
        vm->keys[i] = mrb_str_new_cstr(mrb, env_key_names[i]);
        mrb_obj_freeze(mrb, vm->keys[i]); /* a frozen key is not copied by Hash#[]= */
        mrb_ary_push(mrb, vm->roots, vm->keys[i]);
    }
    vm->empty_string = mrb_obj_freeze(mrb, mrb_str_new_lit(mrb, ""));
    mrb_ary_push(mrb, vm->roots, vm->empty_string);
    mrb_value version[2] = {mrb_fixnum_value(1), mrb_fixnum_value(3)};
    vm->rack_version = mrb_obj_freeze(mrb, mrb_ary_new_from_values(mrb, 2, version));
    mrb_ary_push(mrb, vm->roots, vm->rack_version);
    vm->sym_new = mrb_intern_lit(mrb, "new");
    vm->sym_call = mrb_intern_lit(mrb, "call");
    vm->sym_status = mrb_intern_lit(mrb, "@status");
    vm->sym_sqlstate = mrb_intern_lit(mrb, "@sqlstate");
    vm->fiber_class = mrb_class_get(mrb, "Fiber");

    h2o_db_mruby_define_db(vm);
    h2o_db_mruby_define_json(vm);
    for (size_t i = 0; i < h2o_db_mruby_prelude_count; ++i) {
        const h2o_db_mruby_prelude_file_t *f = h2o_db_mruby_prelude + i;
        mrbc_context *cxt = mrbc_context_new(mrb);
        mrbc_filename(mrb, cxt, f->name);
        mrb_load_nstring_cxt(mrb, f->source, f->len, cxt);
        mrbc_context_free(mrb, cxt);
        if (mrb->exc != NULL) {
            mrb_value exc = mrb_obj_value(mrb->exc);
            mrb->exc = NULL;
            mrb_value s = mrb_inspect(mrb, exc);
            snprintf(err, errsz, "the mruby prelude failed: %.*s", (int)RSTRING_LEN(s), RSTRING_PTR(s));
            vm_close(vm);
            return NULL;
        }
    }
    h2o_db_mruby_init_db(vm);
    /* mruby's Random starts from a fixed seed: give every state its own */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 20 ^ (uint64_t)(uintptr_t)vm;
    mrb_funcall(mrb, mrb_obj_value(mrb->kernel_module), "srand", 1, mrb_int_value(mrb, (mrb_int)(seed & INT32_MAX)));
    mrb->exc = NULL;
    vm->runner = mrb_const_get(mrb, mrb_obj_value(vm->db_module), mrb_intern_lit(mrb, "RUNNER"));
    mrb_ary_push(mrb, vm->roots, vm->runner);
    vm->rack_errors = mrb_const_get(mrb, mrb_obj_value(vm->db_module), mrb_intern_lit(mrb, "ERRORS"));
    mrb_ary_push(mrb, vm->roots, vm->rack_errors);
    mrb_gc_arena_restore(mrb, ai);
    return vm;
}

/* Compiles and runs a handler's source; its value must respond to `call`. */
static int compile_app(h2o_db_mruby_vm_t *vm, const h2o_db_mruby_handler_t *h, mrb_value *app, char *err, size_t errsz)
{
    mrb_state *mrb = vm->mrb;
    mrbc_context *cxt = mrbc_context_new(mrb);
    int ret = -1;
    mrbc_filename(mrb, cxt, h->filename);
    cxt->lineno = h->lineno > UINT16_MAX ? UINT16_MAX : (uint16_t)h->lineno;
    cxt->capture_errors = TRUE;
    struct mrb_parser_state *p = mrb_parse_nstring(mrb, h->source, h->source_len, cxt);
    if (p == NULL) {
        snprintf(err, errsz, "cannot parse the Ruby code (out of memory)");
        goto Exit;
    }
    if (p->nerr != 0 || p->tree == NULL) {
        if (p->nerr != 0)
            snprintf(err, errsz, "Ruby syntax error at %s:%d:%d: %s", h->filename, (int)p->error_buffer[0].lineno,
                     p->error_buffer[0].column, p->error_buffer[0].message != NULL ? p->error_buffer[0].message : "syntax error");
        else
            snprintf(err, errsz, "Ruby syntax error in %s:%u", h->filename, h->lineno);
        mrb_parser_free(p);
        goto Exit;
    }
    mrb_value v = mrb_load_exec(mrb, p, cxt); /* frees p */
    if (mrb->exc != NULL) {
        mrb_value exc = mrb_obj_value(mrb->exc);
        char desc[1024];
        mrb->exc = NULL;
        describe_exception(vm, exc, 1, desc, sizeof(desc));
        snprintf(err, errsz, "the Ruby code of %s:%u raised %s", h->filename, h->lineno, desc);
        goto Exit;
    }
    if (!mrb_respond_to(mrb, v, vm->sym_call)) {
        snprintf(err, errsz, "the Ruby code of %s:%u must end with a Rack app (a proc, or an object with call(env)), not %s",
                 h->filename, h->lineno, mrb_obj_classname(mrb, v));
        goto Exit;
    }
    *app = v;
    ret = 0;
Exit:
    mrbc_context_free(mrb, cxt);
    return ret;
}

/* ---- request slots ---- */

static uint64_t slot_alloc(h2o_db_mruby_vm_t *vm, h2o_db_mruby_req_t *mreq)
{
    if (vm->free_head == UINT32_MAX) {
        uint32_t n = vm->num_slots == 0 ? 64 : vm->num_slots * 2;
        if (n > H2O_DB_MRUBY_MAX_SLOTS)
            n = H2O_DB_MRUBY_MAX_SLOTS;
        if (n == vm->num_slots)
            return 0;
        h2o_db_mruby_slot_t *slots = realloc(vm->slots, n * sizeof(*slots));
        if (slots == NULL)
            return 0;
        for (uint32_t i = vm->num_slots; i < n; ++i) {
            slots[i].req = NULL;
            slots[i].gen = 0;
            slots[i].next_free = i + 1 < n ? i + 1 : UINT32_MAX;
        }
        vm->free_head = vm->num_slots;
        vm->slots = slots;
        vm->num_slots = n;
    }
    uint32_t index = vm->free_head;
    h2o_db_mruby_slot_t *slot = vm->slots + index;
    vm->free_head = slot->next_free;
    slot->req = mreq;
    if (++slot->gen >= ((uint64_t)1 << (62 - H2O_DB_MRUBY_SLOT_BITS)))
        slot->gen = 1; /* ids stay below 2^62: an mruby Integer without allocation */
    return slot->gen << H2O_DB_MRUBY_SLOT_BITS | index;
}

h2o_db_mruby_req_t *h2o_db_mruby_find_req(h2o_db_mruby_vm_t *vm, uint64_t id)
{
    uint32_t index = (uint32_t)(id & (H2O_DB_MRUBY_MAX_SLOTS - 1));
    if (vm == NULL || index >= vm->num_slots)
        return NULL;
    h2o_db_mruby_slot_t *slot = vm->slots + index;
    return slot->req != NULL && slot->gen == id >> H2O_DB_MRUBY_SLOT_BITS ? slot->req : NULL;
}

/* The request's Fiber ended, or the request did: forget both. */
static void release(h2o_db_mruby_req_t *mreq)
{
    h2o_db_mruby_vm_t *vm = mreq->vm;
    if (mreq->released)
        return;
    mreq->released = 1;
    mreq->waiting = 0;
    uint32_t index = (uint32_t)(mreq->id & (H2O_DB_MRUBY_MAX_SLOTS - 1));
    h2o_db_mruby_slot_t *slot = vm->slots + index;
    slot->req = NULL;
    slot->next_free = vm->free_head;
    vm->free_head = index;
    mrb_ary_set(vm->mrb, vm->fibers, index, mrb_nil_value());
    --vm->live_fibers;
}

static void on_request_dispose(void *p)
{
    release(p);
}

/* ---- responses ---- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status < 300 ? "OK" : status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Server Error";
    }
}

static void send_plain(h2o_req_t *req, int status, const char *body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    req->res.content_length = strlen(body);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain; charset=utf-8"));
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(body, req->res.content_length);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

static int is_header(const char *name, size_t len, const char *lit, size_t litlen)
{
    return len == litlen && memcmp(name, lit, len) == 0;
}

/* [status, [name, value, ...], [chunk, ...]] as made by H2O::DB.__response. */
static void send_response(h2o_req_t *req, mrb_int status, mrb_value headers, mrb_value chunks)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = (int)status;
    req->res.reason = reason_phrase((int)status);
    if (mrb_array_p(headers)) {
        for (mrb_int i = 0; i + 1 < RARRAY_LEN(headers); i += 2) {
            mrb_value n = RARRAY_PTR(headers)[i], v = RARRAY_PTR(headers)[i + 1];
            if (!mrb_string_p(n) || !mrb_string_p(v))
                continue;
            size_t nlen = RSTRING_LEN(n);
            const char *name = RSTRING_PTR(n);
            /* h2o frames the body itself */
            if (is_header(name, nlen, H2O_STRLIT("content-length")) || is_header(name, nlen, H2O_STRLIT("transfer-encoding")) ||
                is_header(name, nlen, H2O_STRLIT("connection")))
                continue;
            h2o_iovec_t nc = h2o_strdup(&req->pool, name, nlen), vc = h2o_strdup(&req->pool, RSTRING_PTR(v), RSTRING_LEN(v));
            h2o_add_header_by_str(&req->pool, &req->res.headers, nc.base, nc.len, 1, NULL, vc.base, vc.len);
        }
    }
    size_t total = 0;
    if (mrb_array_p(chunks))
        for (mrb_int i = 0; i < RARRAY_LEN(chunks); ++i)
            if (mrb_string_p(RARRAY_PTR(chunks)[i]))
                total += RSTRING_LEN(RARRAY_PTR(chunks)[i]);
    char *body = h2o_mem_alloc_pool(&req->pool, total + 1), *dst = body;
    if (mrb_array_p(chunks)) {
        for (mrb_int i = 0; i < RARRAY_LEN(chunks); ++i) {
            mrb_value c = RARRAY_PTR(chunks)[i];
            if (mrb_string_p(c)) {
                memcpy(dst, RSTRING_PTR(c), RSTRING_LEN(c));
                dst += RSTRING_LEN(c);
            }
        }
    }
    req->res.content_length = total; /* h2o would otherwise go chunked */
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(body, total);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

/* An exception ended the app: H2O::DB::Error answers as h2o_db_send_error does; anything
 * else is logged (never sent) and answered with 500. */
static void send_exception(h2o_db_mruby_vm_t *vm, h2o_db_mruby_req_t *mreq, mrb_value exc)
{
    h2o_req_t *req = mreq->req;
    if (mrb_obj_is_kind_of(vm->mrb, exc, vm->error_class)) {
        h2o_db_mruby_send_db_error(vm, req, exc);
        return;
    }
    char desc[4096];
    describe_exception(vm, exc, 1, desc, sizeof(desc));
    fprintf(stderr, "[h2o-db] mruby handler (%s:%u) failed on %.*s %.*s: %s\n", mreq->handler->filename, mreq->handler->lineno,
            (int)req->method.len, req->method.base, (int)req->path.len, req->path.base, desc);
    send_plain(req, 500, "Internal Server Error\n");
}

/* The Fiber ended with `v`. Returns -1 when on_req is to pass the request on (a 399 before
 * any suspension), else 0. */
static int finish(h2o_db_mruby_vm_t *vm, h2o_db_mruby_req_t *mreq, mrb_value v)
{
    mrb_state *mrb = vm->mrb;
    int in_on_req = mreq->in_on_req;
    release(mreq);
    if (mrb_obj_is_kind_of(mrb, v, mrb->eException_class)) {
        send_exception(vm, mreq, v);
        return 0;
    }
    if (!mrb_array_p(v) || RARRAY_LEN(v) != 3 || !mrb_integer_p(RARRAY_PTR(v)[0])) {
        fprintf(stderr, "[h2o-db] mruby handler (%s:%u): the runner returned no response\n", mreq->handler->filename,
                mreq->handler->lineno);
        send_plain(mreq->req, 500, "Internal Server Error\n");
        return 0;
    }
    mrb_int status = mrb_integer(RARRAY_PTR(v)[0]);
    if (status == 399) {
        /* fall through to the next handler: at once while still in on_req, else deferred */
        if (in_on_req)
            return -1;
        h2o_delegate_request_deferred(mreq->req, &mreq->handler->super);
        return 0;
    }
    send_response(mreq->req, status, RARRAY_PTR(v)[1], RARRAY_PTR(v)[2]);
    return 0;
}

/* ---- the request's Fiber ---- */

struct resume_args {
    mrb_value fiber;
    mrb_int argc;
    const mrb_value *argv;
};

static mrb_value resume_body(mrb_state *mrb, void *p)
{
    struct resume_args *a = p;
    return mrb_fiber_resume(mrb, a->fiber, a->argc, a->argv);
}

/* Resumes the Fiber until it waits for a statement or ends. */
static int drive(h2o_db_mruby_vm_t *vm, uint64_t id, mrb_value fiber, mrb_int argc, const mrb_value *argv)
{
    mrb_state *mrb = vm->mrb;
    mrb_value resume_with;
    for (;;) {
        struct resume_args args = {fiber, argc, argv};
        mrb_bool error;
        mrb_value v = mrb_protect_error(mrb, resume_body, &args, &error);
        int dead = error || mrb->exc != NULL || !mrb_test(mrb_fiber_alive_p(mrb, fiber));
        if (mrb->exc != NULL) {
            v = mrb_obj_value(mrb->exc); /* an exception escaped the runner */
            mrb->exc = NULL;
        }
        h2o_db_mruby_req_t *mreq = h2o_db_mruby_find_req(vm, id);
        if (mreq == NULL)
            return 0; /* the request ended meanwhile: drop the Fiber */
        if (dead)
            return finish(vm, mreq, v);
        if (h2o_db_mruby_start_op(mreq, v, &resume_with) == 0) {
            mreq->waiting = 1;
            return 0;
        }
        argc = 1;
        argv = &resume_with;
    }
}

void h2o_db_mruby_resume(h2o_db_mruby_vm_t *vm, uint64_t id, mrb_value value)
{
    h2o_db_mruby_req_t *mreq = h2o_db_mruby_find_req(vm, id);
    if (mreq == NULL)
        return;
    mrb_value fiber = mrb_ary_ref(vm->mrb, vm->fibers, (mrb_int)(id & (H2O_DB_MRUBY_MAX_SLOTS - 1)));
    if (!mrb_fiber_p(fiber))
        return;
    drive(vm, id, fiber, 1, &value);
}

/* ---- the Rack env ---- */

static void env_set(h2o_db_mruby_vm_t *vm, mrb_value env, int key, mrb_value v)
{
    mrb_hash_set(vm->mrb, env, vm->keys[key], v);
}

static mrb_value str(mrb_state *mrb, const char *p, size_t len)
{
    return mrb_str_new(mrb, p, len);
}

static mrb_value build_env(h2o_db_mruby_vm_t *vm, h2o_req_t *req, uint64_t id)
{
    mrb_state *mrb = vm->mrb;
    mrb_value env = mrb_hash_new_capa(mrb, 32);
    char buf[NI_MAXHOST + 16];

    env_set(vm, env, H2O_DB_MRUBY_KEY_REQUEST_METHOD, str(mrb, req->method.base, req->method.len));
    /* SCRIPT_NAME: the path's prefix without its trailing slash; PATH_INFO: the rest */
    size_t prefix = req->pathconf != NULL ? req->pathconf->path.len : 0;
    if (prefix != 0 && req->pathconf->path.base[prefix - 1] == '/')
        --prefix;
    if (prefix > req->path_normalized.len)
        prefix = req->path_normalized.len;
    env_set(vm, env, H2O_DB_MRUBY_KEY_SCRIPT_NAME, str(mrb, req->path_normalized.base, prefix));
    env_set(vm, env, H2O_DB_MRUBY_KEY_PATH_INFO, str(mrb, req->path_normalized.base + prefix, req->path_normalized.len - prefix));
    if (req->query_at != SIZE_MAX)
        env_set(vm, env, H2O_DB_MRUBY_KEY_QUERY_STRING,
                str(mrb, req->path.base + req->query_at + 1, req->path.len - req->query_at - 1));
    else
        env_set(vm, env, H2O_DB_MRUBY_KEY_QUERY_STRING, mrb_str_new_lit(mrb, ""));

    /* SERVER_NAME and SERVER_PORT from the authority (Host / :authority), else the socket */
    h2o_iovec_t host = req->authority;
    const char *port = NULL;
    size_t port_len = 0;
    if (host.len != 0 && host.base[0] == '[') {
        const char *end = memchr(host.base, ']', host.len);
        if (end != NULL && end + 1 < host.base + host.len && end[1] == ':') {
            port = end + 2;
            port_len = host.base + host.len - port;
            host.len = end + 1 - host.base;
        }
    } else {
        const char *colon = memchr(host.base, ':', host.len);
        if (colon != NULL) {
            port = colon + 1;
            port_len = host.base + host.len - port;
            host.len = colon - host.base;
        }
    }
    env_set(vm, env, H2O_DB_MRUBY_KEY_SERVER_NAME, str(mrb, host.base, host.len));
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (port == NULL && (sslen = req->conn->callbacks->get_sockname(req->conn, (struct sockaddr *)&ss)) != 0) {
        int32_t p = h2o_socket_getport((struct sockaddr *)&ss);
        if (p >= 0) {
            port_len = snprintf(buf, sizeof(buf), "%" PRId32, p);
            port = buf;
        }
    }
    env_set(vm, env, H2O_DB_MRUBY_KEY_SERVER_PORT, port != NULL ? str(mrb, port, port_len) : mrb_str_new_lit(mrb, "0"));
    env_set(vm, env, H2O_DB_MRUBY_KEY_SERVER_PROTOCOL, str(mrb, buf, h2o_stringify_protocol_version(buf, req->version)));
    env_set(vm, env, H2O_DB_MRUBY_KEY_SERVER_SOFTWARE, mrb_str_new_lit(mrb, "h2o-db/" H2O_DB_VERSION));
    if ((sslen = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss)) != 0) {
        size_t n = h2o_socket_getnumerichost((struct sockaddr *)&ss, sslen, buf);
        if (n != SIZE_MAX)
            env_set(vm, env, H2O_DB_MRUBY_KEY_REMOTE_ADDR, str(mrb, buf, n));
        int32_t p = h2o_socket_getport((struct sockaddr *)&ss);
        if (p >= 0)
            env_set(vm, env, H2O_DB_MRUBY_KEY_REMOTE_PORT, str(mrb, buf, snprintf(buf, sizeof(buf), "%" PRId32, p)));
    }
    if (req->authority.len != 0)
        env_set(vm, env, H2O_DB_MRUBY_KEY_HTTP_HOST, str(mrb, req->authority.base, req->authority.len));

    /* HTTP_* (repeated headers joined with ", ", cookies with "; "), CONTENT_TYPE */
    for (size_t i = 0; i < req->headers.size; ++i) {
        const h2o_header_t *h = req->headers.entries + i;
        const h2o_iovec_t *name = h->name;
        if (h2o_memis(name->base, name->len, H2O_STRLIT("content-length")) || h2o_memis(name->base, name->len, H2O_STRLIT("host")))
            continue;
        mrb_value key;
        if (h2o_memis(name->base, name->len, H2O_STRLIT("content-type"))) {
            key = vm->keys[H2O_DB_MRUBY_KEY_CONTENT_TYPE];
        } else {
            key = mrb_str_new(mrb, NULL, 5 + name->len);
            char *k = RSTRING_PTR(key);
            memcpy(k, "HTTP_", 5);
            for (size_t j = 0; j < name->len; ++j) {
                char c = name->base[j];
                k[5 + j] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c;
            }
        }
        mrb_value old = mrb_hash_fetch(mrb, env, key, mrb_undef_value());
        if (mrb_undef_p(old)) {
            mrb_hash_set(mrb, env, key, str(mrb, h->value.base, h->value.len));
        } else if (mrb_string_p(old)) {
            if (h2o_memis(name->base, name->len, H2O_STRLIT("cookie")))
                mrb_str_cat_lit(mrb, old, "; ");
            else
                mrb_str_cat_lit(mrb, old, ", ");
            mrb_str_cat(mrb, old, h->value.base, h->value.len);
        }
    }

    mrb_value body = vm->empty_string;
    if (req->entity.base != NULL) {
        env_set(vm, env, H2O_DB_MRUBY_KEY_CONTENT_LENGTH, str(mrb, buf, snprintf(buf, sizeof(buf), "%zu", req->entity.len)));
        body = str(mrb, req->entity.base, req->entity.len);
    }
    mrb_value input = mrb_obj_value(mrb_obj_alloc(mrb, MRB_TT_OBJECT, vm->input_class));
    mrb_iv_set(mrb, input, mrb_intern_lit(mrb, "@s"), body);
    mrb_iv_set(mrb, input, mrb_intern_lit(mrb, "@pos"), mrb_fixnum_value(0));
    env_set(vm, env, H2O_DB_MRUBY_KEY_RACK_INPUT, input);
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

/* ---- the handler ---- */

static int on_req(h2o_handler_t *_self, h2o_req_t *req)
{
    h2o_db_mruby_handler_t *self = (void *)_self;
    h2o_db_mruby_vm_t *vm = h2o_context_get_handler_context(req->conn->ctx, _self);
    mrb_state *mrb = vm->mrb;
    int ai = mrb_gc_arena_save(mrb), ret = 0;

    h2o_db_mruby_req_t *mreq = h2o_mem_alloc_shared(&req->pool, sizeof(*mreq), on_request_dispose);
    memset(mreq, 0, sizeof(*mreq));
    mreq->req = req;
    mreq->handler = self;
    mreq->vm = vm;
    mreq->released = 1;
    if ((mreq->id = slot_alloc(vm, mreq)) == 0) {
        send_plain(req, 503, "Service Unavailable\n");
        goto Exit;
    }
    mreq->released = 0;
    ++vm->live_fibers;

    mrb_value env = build_env(vm, req, mreq->id);
    mrb_value fiber = mrb_funcall_with_block(mrb, mrb_obj_value(vm->fiber_class), vm->sym_new, 0, NULL, vm->runner);
    if (mrb->exc != NULL || !mrb_fiber_p(fiber)) {
        mrb_value exc = mrb->exc != NULL ? mrb_obj_value(mrb->exc) : fiber;
        mrb->exc = NULL;
        ret = finish(vm, mreq, exc);
        goto Exit;
    }
    mrb_ary_set(mrb, vm->fibers, (mrb_int)(mreq->id & (H2O_DB_MRUBY_MAX_SLOTS - 1)), fiber);
    mreq->in_on_req = 1;
    uint64_t id = mreq->id;
    mrb_value args[2] = {mrb_ary_ref(mrb, vm->apps, (mrb_int)self->index), env};
    ret = drive(vm, id, fiber, 2, args);
    if ((mreq = h2o_db_mruby_find_req(vm, id)) != NULL)
        mreq->in_on_req = 0; /* it waits for a statement */
Exit:
    mrb_gc_arena_restore(mrb, ai);
    return ret;
}

static void on_context_init(h2o_handler_t *_self, h2o_context_t *ctx)
{
    h2o_db_mruby_handler_t *self = (void *)_self;
    h2o_db_mruby_vm_t *vm = h2o_db_mruby_thread_vm;
    char err[2048];
    if (vm == NULL) {
        if ((vm = vm_open(err, sizeof(err))) == NULL) {
            fprintf(stderr, "h2o-db: %s\n", err);
            h2o_db_thread_start_failed = 1; /* the server refuses to start */
            return;
        }
        h2o_db_mruby_thread_vm = vm;
    }
    ++vm->refcnt;
    int ai = mrb_gc_arena_save(vm->mrb);
    mrb_value app;
    if (compile_app(vm, self, &app, err, sizeof(err)) != 0) {
        /* it compiled and ran at config time: something of the environment changed */
        fprintf(stderr, "%s:%u: mruby handler failed to start on a worker thread: %s\n", self->filename, self->lineno, err);
        h2o_db_thread_start_failed = 1; /* the server refuses to start */
        mrb_gc_arena_restore(vm->mrb, ai);
        return;
    }
    mrb_ary_set(vm->mrb, vm->apps, (mrb_int)self->index, app);
    mrb_gc_arena_restore(vm->mrb, ai);
    h2o_context_set_handler_context(ctx, _self, vm);
}

static void on_context_dispose(h2o_handler_t *_self, h2o_context_t *ctx)
{
    h2o_db_mruby_handler_t *self = (void *)_self;
    h2o_db_mruby_vm_t *vm = h2o_context_get_handler_context(ctx, _self);
    if (vm == NULL)
        return;
    h2o_context_set_handler_context(ctx, _self, NULL);
    mrb_ary_set(vm->mrb, vm->apps, (mrb_int)self->index, mrb_nil_value());
    if (--vm->refcnt == 0) {
        if (h2o_db_mruby_thread_vm == vm)
            h2o_db_mruby_thread_vm = NULL;
        vm_close(vm);
    }
}

static void on_handler_dispose(h2o_handler_t *_self)
{
    h2o_db_mruby_handler_t *self = (void *)_self;
    free(self->source);
    free(self->filename);
}

/* ---- registration (configurator.c turns the YAML into these calls) ---- */

int h2o_db_mruby_check_source(const char *source, size_t len, const char *filename, unsigned lineno, char *err, size_t errsz)
{
    h2o_db_mruby_handler_t check = {.source = (char *)source, .source_len = len, .filename = (char *)filename, .lineno = lineno};
    h2o_db_mruby_vm_t *vm = vm_open(err, errsz);
    int ok = 0;
    if (vm != NULL) {
        mrb_value app;
        ok = compile_app(vm, &check, &app, err, errsz) == 0;
        vm_close(vm);
    }
    return ok ? 0 : -1;
}

void h2o_db_mruby_register(h2o_pathconf_t *pathconf, char *source, size_t len, char *filename, unsigned lineno)
{
    h2o_db_mruby_handler_t *h = (void *)h2o_create_handler(pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->super.on_context_init = on_context_init;
    h->super.on_context_dispose = on_context_dispose;
    h->super.dispose = on_handler_dispose;
    h->source = source;
    h->source_len = len;
    h->filename = filename;
    h->lineno = lineno;
    h->index = num_handlers++;
}
