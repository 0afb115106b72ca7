/*
 * mruby.handler / mruby.handler-file: Rack apps in Ruby, run in a Fiber per request.
 *
 * Config time (configurator.c): the source (inline, or the file relative to the config
 * file's folder or the working directory) is compiled and run in a throwaway mrb_state
 * with the prelude loaded (h2o_db_mruby_check_source); a syntax error or an exception is a
 * config error (FILE:LINE), and the result must respond to `call`. The source is kept.
 *
 * Worker threads: the first mruby handler's on_context_init opens the thread's VM
 * (mrb_state + prelude); every handler compiles and runs its source there again and
 * keeps the app in the VM's `apps` array.
 *
 * A request: on_req builds the Rack env (env.c), creates a Fiber running H2O::DB::RUNNER
 * (app.call and the body, in Ruby) and resumes it. When the Fiber yields, it yielded a
 * statement (H2O::DB::Session#__prepare): db.c sends it and the Fiber waits, reachable from
 * the VM's `fibers` array, until the statement's callback resumes it with the answer. When
 * the Fiber ends, its response (response.c) or its exception is sent, or a 399 passes the
 * request on. A request that ends first (HTTP/2 reset, client gone) frees its slot: its Fiber
 * is never resumed again and the GC takes it; its rack.input is closed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* ---- the VM ---- */

/* H2O::DB.__describe: "message (Class)" (style 0), then the frames (1); or h2o's "FILE:LINE:
 * message (Class)", then the other frames (2). Always NUL-terminated. */
static void describe_exception(h2o_db_mruby_vm_t *vm, mrb_value exc, int style, char *buf, size_t size)
{
    mrb_state *mrb = vm->mrb;
    int ai = mrb_gc_arena_save(mrb);
    mrb_value args[2] = {exc, mrb_fixnum_value(style)};
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
    vm->inputs = mrb_ary_new(mrb);
    mrb_ary_push(mrb, vm->roots, vm->inputs);
    vm->bodies = mrb_ary_new(mrb);
    mrb_ary_push(mrb, vm->roots, vm->bodies);
    vm->eaches = mrb_ary_new(mrb);
    mrb_ary_push(mrb, vm->roots, vm->eaches);
    vm->apps = mrb_ary_new(mrb);
    mrb_ary_push(mrb, vm->roots, vm->apps);
    h2o_db_mruby_init_env_keys(vm);
    vm->server_software = vm->empty_string = mrb_obj_freeze(mrb, mrb_str_new_lit(mrb, ""));
    mrb_ary_push(mrb, vm->roots, vm->empty_string);
    mrb_value version[2] = {mrb_fixnum_value(1), mrb_fixnum_value(3)};
    vm->rack_version = mrb_obj_freeze(mrb, mrb_ary_new_from_values(mrb, 2, version));
    mrb_ary_push(mrb, vm->roots, vm->rack_version);
    vm->sym_new = mrb_intern_lit(mrb, "new");
    vm->sym_call = mrb_intern_lit(mrb, "call");
    vm->sym_status = mrb_intern_lit(mrb, "@status");
    vm->sym_sqlstate = mrb_intern_lit(mrb, "@sqlstate");
    vm->sym_input_s = mrb_intern_lit(mrb, "@s");
    vm->sym_input_pos = mrb_intern_lit(mrb, "@pos");
    vm->fiber_class = mrb_class_get(mrb, "Fiber");

    h2o_db_mruby_define_db(vm);
    h2o_db_mruby_define_json(vm);
    h2o_db_mruby_define_stream(vm);
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
    vm->stream_mark = mrb_const_get(mrb, mrb_obj_value(vm->db_module), mrb_intern_lit(mrb, "STREAM"));
    mrb_ary_push(mrb, vm->roots, vm->stream_mark);
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
    /* rack.input is closed: reading it later (from another request) raises IOError, as in h2o */
    mrb_value input = mrb_ary_ref(vm->mrb, vm->inputs, index);
    if (mrb_type(input) == MRB_TT_OBJECT)
        mrb_iv_set(vm->mrb, input, vm->sym_input_s, mrb_nil_value());
    mrb_ary_set(vm->mrb, vm->inputs, index, mrb_nil_value());
    h2o_db_mruby_each_release(mreq, index);
    --vm->live_fibers;
    h2o_db_mruby_stream_release(vm, index); /* a streamed body whose client left is closed */
}

static void on_request_dispose(void *p)
{
    release(p);
    h2o_db_mruby_stream_dispose(p);
}

/* ---- responses ---- */

/* An exception ended the app: H2O::DB::Error answers as h2o_db_send_error does; anything
 * else is logged as h2o's mruby logs it ("[h2o_mruby] in request:PATH:mruby raised: FILE:LINE:
 * message (Class)", then the backtrace) and answered with 500 (never with the exception). */
static void log_exception(h2o_db_mruby_vm_t *vm, h2o_req_t *req, mrb_value exc)
{
    char desc[4096];
    describe_exception(vm, exc, 2, desc, sizeof(desc));
    h2o_req_log_error(req, "h2o_mruby", "mruby raised: %s", desc);
}

static void send_exception(h2o_db_mruby_vm_t *vm, h2o_db_mruby_req_t *mreq, mrb_value exc)
{
    h2o_req_t *req = mreq->req;
    if (mrb_obj_is_kind_of(vm->mrb, exc, vm->error_class)) {
        h2o_db_mruby_send_db_error(vm, req, exc);
        return;
    }
    log_exception(vm, req, exc);
    h2o_send_error_500(req, "Internal Server Error", "Internal Server Error", 0);
}

/* [status, headers, chunks] from the runner. Returns -1 for a 399 to pass on at once. */
static int respond(h2o_db_mruby_req_t *mreq, mrb_value v, int in_on_req)
{
    if (!mrb_array_p(v) || RARRAY_LEN(v) != 3 || !mrb_integer_p(RARRAY_PTR(v)[0])) {
        h2o_req_log_error(mreq->req, "h2o_mruby", "mruby handler (%s:%u): the runner returned no response", mreq->handler->filename,
                          mreq->handler->lineno);
        h2o_send_error_500(mreq->req, "Internal Server Error", "Internal Server Error", 0);
        return 0;
    }
    mrb_int status = mrb_integer(RARRAY_PTR(v)[0]);
    h2o_db_mruby_add_headers(mreq->req, RARRAY_PTR(v)[1]);
    if (status == 399) {
        /* fall through to the next handler, which answers with these headers (a link pushes):
         * at once while still in on_req, else deferred */
        if (in_on_req)
            return -1;
        h2o_delegate_request_deferred(mreq->req, &mreq->handler->super);
        return 0;
    }
    h2o_db_mruby_send_response(mreq->req, status, RARRAY_PTR(v)[2]);
    return 0;
}

/* The Fiber ended with `v`. Returns -1 when on_req is to pass the request on (a 399 before
 * any suspension), else 0. */
static int finish(h2o_db_mruby_vm_t *vm, h2o_db_mruby_req_t *mreq, mrb_value v)
{
    mrb_state *mrb = vm->mrb;
    int in_on_req = mreq->in_on_req, ret = 0;
    /* only this frame holds v once the Fiber is dead, and a push (link) runs the pushed
     * request's handlers at once, maybe another mruby one that collects garbage */
    int ai = mrb_gc_arena_save(mrb);
    mrb_gc_protect(mrb, v);
    release(mreq);
    int raised = mrb_obj_is_kind_of(mrb, v, mrb->eException_class);
    if (mreq->stream.started) {
        /* headers are out: an exception can only break the response off (it is logged) */
        if (raised)
            log_exception(vm, mreq->req, v);
        h2o_db_mruby_stream_end(mreq, raised);
    } else if (raised) {
        send_exception(vm, mreq, v);
    } else {
        ret = respond(mreq, v, in_on_req);
    }
    mrb_gc_arena_restore(mrb, ai);
    return ret;
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
        int rc = h2o_db_mruby_stream_op(mreq, v, &resume_with);
        if (rc == 0)
            return 0; /* it waits for the generator's proceed */
        if (rc == 1 && h2o_db_mruby_start_op(mreq, v, &resume_with) == 0) {
            mreq->waiting = 1;
            h2o_db_mruby_stream_flush(mreq); /* a streamed body waits: what it made goes out */
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
        h2o_send_error_503(req, "Service Unavailable", "Service Unavailable", 0);
        goto Exit;
    }
    mreq->released = 0;
    ++vm->live_fibers;

    mrb_value env = h2o_db_mruby_build_env(vm, req, mreq->id);
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
    mrb_value args[3] = {mrb_ary_ref(mrb, vm->apps, (mrb_int)self->index), env, mrb_int_value(mrb, (mrb_int)id)};
    ret = drive(vm, id, fiber, 3, args);
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
        h2o_iovec_t name = ctx->globalconf->server_name;
        vm->server_software = mrb_obj_freeze(vm->mrb, mrb_str_new(vm->mrb, name.base, name.len));
        mrb_ary_push(vm->mrb, vm->roots, vm->server_software);
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
