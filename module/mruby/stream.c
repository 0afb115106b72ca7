/*
 * Rack bodies sent as they are produced (docs/mruby.md, "Streamed bodies").
 *
 * A body that is not an Array is iterated by H2O::DB.__stream (prelude/rack.rb) inside the
 * request's Fiber. It first yields [STREAM, status, headers, body]: the response starts here
 * (no content-length unless the app gave one, so HTTP/1.1 is chunked and HTTP/2 sends DATA
 * frames). Each chunk goes through H2O::DB.__write, which copies it into `fill`. What is filled
 * (and the headers, the first time) is sent whenever the Fiber gives the loop back: when it waits
 * for a statement (h2o_db_mruby_stream_flush), when it ends (with the final state: a short body
 * is one write), or when `fill` reaches H2O_DB_MRUBY_STREAM_CAP (__write says to yield STREAM).
 * While an h2o_send is in flight and `fill` is full, the Fiber waits (back-pressure); the
 * generator's proceed sends `fill` and resumes it. So a stream holds at most what is in flight
 * plus the cap plus one chunk, twice.
 *
 * The body is kept in the VM's `bodies` array until its `close` has been called: by the
 * Fiber after the last chunk (H2O::DB.__body_done then forgets it), or here when the request
 * ends first (its client left): the Fiber is never resumed again, and close runs from C,
 * outside any Fiber, where a statement cannot run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mruby.h>
#include <mruby/array.h>
#include <mruby/error.h>
#include <mruby/string.h>
#include "mruby/internal.h"

static h2o_db_mruby_req_t *req_of_stream(h2o_db_mruby_stream_t *s)
{
    return H2O_STRUCT_FROM_MEMBER(h2o_db_mruby_req_t, stream, s);
}

static mrb_int slot_index(uint64_t id)
{
    return (mrb_int)(id & (H2O_DB_MRUBY_MAX_SLOTS - 1));
}

static int buf_append(h2o_db_mruby_buf_t *b, const char *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap * 2;
        if (cap < b->len + n)
            cap = b->len + n;
        if (cap < 4096)
            cap = 4096;
        char *base = realloc(b->base, cap);
        if (base == NULL)
            return -1;
        b->base = base;
        b->cap = cap;
    }
    memcpy(b->base + b->len, p, n);
    b->len += n;
    return 0;
}

/* Hands `fill` to h2o (it becomes `flight`). After a state other than IN_PROGRESS the request
 * may be gone. */
static void send_fill(h2o_db_mruby_stream_t *s, h2o_send_state_t state)
{
    h2o_req_t *req = req_of_stream(s)->req;
    h2o_db_mruby_buf_t sent = s->fill;
    s->fill = s->flight;
    s->fill.len = 0;
    s->flight = sent;
    h2o_iovec_t buf = h2o_iovec_init(sent.base, sent.len);
    s->in_flight = h2o_send_state_is_in_progress(state);
    s->head_pending = 0; /* the headers go with the data */
    h2o_send(req, &buf, buf.len != 0, state);
}

/* The headers alone. libh2o 2.2.5's filters (the chunked encoder, compress) pass an empty
 * in-progress send on as nothing (h2o_ostream_send_next only schedules proceed), so the headers
 * would wait for the first chunk: the empty send goes to the last ostream, the protocol's, which
 * writes the headers and calls proceed once they are out. The filters keep no state about it:
 * they set their headers up in h2o_start_response already. */
static void send_head(h2o_db_mruby_stream_t *s)
{
    h2o_req_t *req = req_of_stream(s)->req;
    h2o_ostream_t *last = req->_ostr_top;
    while (last->next != NULL)
        last = last->next;
    s->in_flight = 1;
    s->head_pending = 0;
    last->do_send(last, req, NULL, 0, H2O_SEND_STATE_IN_PROGRESS);
}

void h2o_db_mruby_stream_flush(h2o_db_mruby_req_t *mreq)
{
    h2o_db_mruby_stream_t *s = &mreq->stream;
    if (!s->started || s->ended || s->in_flight)
        return;
    if (s->fill.len != 0)
        send_fill(s, H2O_SEND_STATE_IN_PROGRESS);
    else if (s->head_pending)
        send_head(s);
}

static void send_last(h2o_db_mruby_stream_t *s)
{
    /* a body shorter than the app's content-length cannot end well: the connection is closed */
    int broken = s->failed || (s->left != SIZE_MAX && s->left != 0 && !s->discard);
    send_fill(s, broken ? H2O_SEND_STATE_ERROR : H2O_SEND_STATE_FINAL);
}

static void on_proceed(h2o_generator_t *g, h2o_req_t *req)
{
    h2o_db_mruby_stream_t *s = H2O_STRUCT_FROM_MEMBER(h2o_db_mruby_stream_t, generator, g);
    h2o_db_mruby_req_t *mreq = req_of_stream(s);
    (void)req;
    s->in_flight = 0;
    s->flight.len = 0;
    if (s->flight.cap > 4 * H2O_DB_MRUBY_STREAM_CAP) { /* a huge chunk went out: give its memory back */
        free(s->flight.base);
        s->flight = (h2o_db_mruby_buf_t){NULL, 0, 0};
    }
    if (s->ended) {
        send_last(s);
        return;
    }
    if (s->fill.len != 0)
        send_fill(s, H2O_SEND_STATE_IN_PROGRESS);
    if (s->waiting) {
        mrb_state *mrb = mreq->vm->mrb;
        int ai = mrb_gc_arena_save(mrb);
        s->waiting = 0;
        h2o_db_mruby_resume(mreq->vm, mreq->id, mrb_nil_value());
        mrb_gc_arena_restore(mrb, ai);
    }
}

/* [STREAM, status, headers, body]: the response starts. */
static void start(h2o_db_mruby_req_t *mreq, mrb_value op)
{
    h2o_db_mruby_vm_t *vm = mreq->vm;
    h2o_req_t *req = mreq->req;
    h2o_db_mruby_stream_t *s = &mreq->stream;
    mrb_int status = mrb_integer(RARRAY_PTR(op)[1]);
    mrb_ary_set(vm->mrb, vm->bodies, slot_index(mreq->id), RARRAY_PTR(op)[3]);
    /* a link header may push at once, running other handlers (maybe mruby ones that collect) */
    mrb_gc_protect(vm->mrb, op);
    h2o_db_mruby_add_headers(req, RARRAY_PTR(op)[2]);
    req->res.status = (int)status;
    s->discard = (status >= 100 && status <= 199) || status == 204 || status == 304 ||
                 h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    s->left = req->res.content_length;
    s->generator.proceed = on_proceed;
    s->generator.stop = NULL; /* the request's end frees the slot (h2o_db_mruby_stream_release) */
    s->started = 1;
    s->head_pending = 1; /* sent with the first chunks, or alone when the Fiber first waits */
    h2o_start_response(req, &s->generator);
}

int h2o_db_mruby_stream_op(h2o_db_mruby_req_t *mreq, mrb_value op, mrb_value *resume_with)
{
    h2o_db_mruby_vm_t *vm = mreq->vm;
    mrb_state *mrb = vm->mrb;
    h2o_db_mruby_stream_t *s = &mreq->stream;
    *resume_with = mrb_nil_value();
    if (mrb_array_p(op) && RARRAY_LEN(op) == 4 && mrb_obj_eq(mrb, RARRAY_PTR(op)[0], vm->stream_mark) &&
        mrb_integer_p(RARRAY_PTR(op)[1])) {
        if (s->started) {
            *resume_with = mrb_exc_new_lit(mrb, E_RUNTIME_ERROR, "the response has started already");
            return -1;
        }
        start(mreq, op);
        return -1;
    }
    if (!mrb_obj_eq(mrb, op, vm->stream_mark))
        return 1;
    if (!s->started) {
        *resume_with = mrb_exc_new_lit(mrb, E_RUNTIME_ERROR, "no streamed response has started");
        return -1;
    }
    h2o_db_mruby_stream_flush(mreq);
    if (s->in_flight && s->fill.len >= H2O_DB_MRUBY_STREAM_CAP) {
        s->waiting = 1;
        return 0;
    }
    return -1;
}

void h2o_db_mruby_stream_end(h2o_db_mruby_req_t *mreq, int failed)
{
    h2o_db_mruby_stream_t *s = &mreq->stream;
    s->ended = 1;
    s->failed = failed;
    s->waiting = 0;
    if (!s->in_flight)
        send_last(s);
}

static mrb_value close_body(mrb_state *mrb, void *body)
{
    return mrb_funcall_argv(mrb, *(mrb_value *)body, mrb_intern_lit(mrb, "close"), 0, NULL);
}

void h2o_db_mruby_stream_release(h2o_db_mruby_vm_t *vm, mrb_int index)
{
    mrb_state *mrb = vm->mrb;
    mrb_value body = mrb_ary_ref(mrb, vm->bodies, index);
    if (mrb_nil_p(body))
        return;
    int ai = mrb_gc_arena_save(mrb);
    mrb_ary_set(mrb, vm->bodies, index, mrb_nil_value());
    mrb_gc_protect(mrb, body);
    if (mrb_respond_to(mrb, body, mrb_intern_lit(mrb, "close"))) {
        mrb_bool error;
        mrb_value v = mrb_protect_error(mrb, close_body, &body, &error);
        if (mrb->exc != NULL) {
            v = mrb_obj_value(mrb->exc);
            error = 1;
        }
        mrb->exc = NULL;
        if (error) {
            mrb_value e = mrb_inspect(mrb, v);
            mrb->exc = NULL;
            if (mrb_string_p(e))
                fprintf(stderr, "[h2o_mruby] close of a streamed body whose client left raised: %.*s\n", (int)RSTRING_LEN(e),
                        RSTRING_PTR(e));
        }
    }
    mrb_gc_arena_restore(mrb, ai);
}

void h2o_db_mruby_stream_dispose(h2o_db_mruby_req_t *mreq)
{
    free(mreq->stream.fill.base);
    free(mreq->stream.flight.base);
    mreq->stream.fill = mreq->stream.flight = (h2o_db_mruby_buf_t){NULL, 0, 0};
}

/* ---- Ruby methods ---- */

static h2o_db_mruby_req_t *streaming_req(mrb_state *mrb, mrb_int id)
{
    h2o_db_mruby_req_t *mreq = h2o_db_mruby_find_req(mrb->ud, (uint64_t)id);
    if (mreq == NULL || !mreq->stream.started)
        mrb_raise(mrb, E_RUNTIME_ERROR, "no streamed response of this request");
    return mreq;
}

/* H2O::DB.__write(id, chunk): true when the Fiber is to yield STREAM (the buffer is full: send it,
 * or wait for the write in flight). Below that, the buffer goes when the Fiber waits or ends. */
static mrb_value db_write(mrb_state *mrb, mrb_value self)
{
    mrb_int id;
    mrb_value chunk;
    mrb_get_args(mrb, "iS", &id, &chunk);
    h2o_db_mruby_stream_t *s = &streaming_req(mrb, id)->stream;
    size_t n = (size_t)RSTRING_LEN(chunk);
    if (s->discard || s->ended)
        return mrb_false_value();
    if (s->left != SIZE_MAX) { /* the app's content-length cuts the body */
        if (n > s->left)
            n = s->left;
        s->left -= n;
    }
    if (n != 0 && buf_append(&s->fill, RSTRING_PTR(chunk), n) != 0)
        mrb_raise(mrb, E_RUNTIME_ERROR, "out of memory buffering a chunk of the response");
    return mrb_bool_value(s->fill.len >= H2O_DB_MRUBY_STREAM_CAP);
}

/* H2O::DB.__body_done(id): the Fiber closes the body itself (its last chunk came, or it raised). */
static mrb_value db_body_done(mrb_state *mrb, mrb_value self)
{
    h2o_db_mruby_vm_t *vm = mrb->ud;
    mrb_int id;
    mrb_get_args(mrb, "i", &id);
    if (h2o_db_mruby_find_req(vm, (uint64_t)id) != NULL)
        mrb_ary_set(mrb, vm->bodies, slot_index((uint64_t)id), mrb_nil_value());
    return mrb_nil_value();
}

void h2o_db_mruby_define_stream(h2o_db_mruby_vm_t *vm)
{
    mrb_define_module_function(vm->mrb, vm->db_module, "__write", db_write, MRB_ARGS_REQ(2));
    mrb_define_module_function(vm->mrb, vm->db_module, "__body_done", db_body_done, MRB_ARGS_REQ(1));
}
