/*
 * db.each(sql, params) { |row| ... }: the rows of one statement yielded as they arrive
 * (docs/mruby.md, "db.each"), over h2o_db_query_rows and h2o_db_resume.
 *
 * Rows come on the loop thread while the request's Fiber is suspended. on_row turns each into
 * a Hash (typed as db.query's) and appends it to the batch (the VM's `eaches` array holds it);
 * when the batch holds H2O_DB_MRUBY_EACH_BATCH rows it pauses the statement (returns 1). The
 * batch goes to the Fiber when the Fiber waits for one (EACH_MORE), either at once or after
 * this turn of the loop (a zero timeout: never from inside on_row, where a statement issued by
 * the block could not run); the Fiber yields its rows to the block and asks for the next. A
 * paused statement is resumed when its batch is handed over, so the next batch fills while the
 * block runs: at most two batches are held. on_done keeps the final answer (nil, or an
 * H2O::DB::Error) until the Fiber has taken the last rows. A block that breaks or raises sends
 * EACH_STOP: the next row is answered -1 (the statement is cancelled) and the Fiber waits for
 * on_done before the break or the exception goes on.
 */
#include <mruby.h>
#include <mruby/array.h>
#include <mruby/error.h>
#include "mruby/internal.h"

enum { BATCH, NAMES, FINAL, NUM_STATE };

static mrb_int slot_index(uint64_t id)
{
    return (mrb_int)(id & (H2O_DB_MRUBY_MAX_SLOTS - 1));
}

static mrb_value state_of(h2o_db_mruby_req_t *mreq)
{
    return mrb_ary_ref(mreq->vm->mrb, mreq->vm->eaches, slot_index(mreq->id));
}

/* The db.each is over: forget it. */
static void forget(h2o_db_mruby_req_t *mreq)
{
    h2o_db_mruby_each_t *e = &mreq->each;
    if (h2o_timeout_is_linked(&e->later))
        h2o_timeout_unlink(&e->later);
    *e = (h2o_db_mruby_each_t){.later = e->later};
    mrb_ary_set(mreq->vm->mrb, mreq->vm->eaches, slot_index(mreq->id), mrb_nil_value());
}

/* What the Fiber, waiting for a batch, gets now: the batch (the statement continues), or the
 * final answer (the db.each is over), or nothing yet (returns 0). */
static int take(h2o_db_mruby_req_t *mreq, mrb_value *answer)
{
    h2o_db_mruby_each_t *e = &mreq->each;
    mrb_state *mrb = mreq->vm->mrb;
    mrb_value st = state_of(mreq), batch = mrb_ary_ref(mrb, st, BATCH);
    if (RARRAY_LEN(batch) != 0) {
        *answer = batch;
        mrb_ary_set(mrb, st, BATCH, mrb_ary_new_capa(mrb, H2O_DB_MRUBY_EACH_BATCH));
        if (e->paused) { /* the next batch fills while the block takes this one */
            e->paused = 0;
            h2o_db_resume(e->session);
        }
        return 1;
    }
    if (e->done) {
        *answer = mrb_ary_ref(mrb, st, FINAL);
        forget(mreq);
        return 1;
    }
    return 0;
}

/* The Fiber waits: resume it with what there is, if anything. */
static void hand_over(h2o_db_mruby_req_t *mreq)
{
    mrb_state *mrb = mreq->vm->mrb;
    int ai = mrb_gc_arena_save(mrb);
    mrb_value answer;
    if (take(mreq, &answer)) {
        mreq->each.waiting = 0;
        mrb_gc_protect(mrb, answer);
        h2o_db_mruby_resume(mreq->vm, mreq->id, answer);
    }
    mrb_gc_arena_restore(mrb, ai);
}

static void on_later(h2o_timeout_entry_t *entry)
{
    h2o_db_mruby_req_t *mreq = H2O_STRUCT_FROM_MEMBER(h2o_db_mruby_req_t, each.later, entry);
    if (mreq->each.waiting && !mreq->each.stopping)
        hand_over(mreq);
}

static int on_row(const h2o_db_result_t *row, void *data)
{
    h2o_db_mruby_vm_t *vm = h2o_db_mruby_thread_vm;
    h2o_db_mruby_req_t *mreq = h2o_db_mruby_find_req(vm, (uint64_t)(uintptr_t)data);
    if (mreq == NULL || mreq->each.session == NULL || mreq->each.stopping)
        return -1;
    h2o_db_mruby_each_t *e = &mreq->each;
    mrb_state *mrb = vm->mrb;
    int ai = mrb_gc_arena_save(mrb);
    mrb_value st = state_of(mreq), names = mrb_ary_ref(mrb, st, NAMES);
    if (mrb_nil_p(names)) {
        names = h2o_db_mruby_column_names(mrb, row);
        mrb_ary_set(mrb, st, NAMES, names);
    }
    mrb_value batch = mrb_ary_ref(mrb, st, BATCH);
    mrb_ary_push(mrb, batch, h2o_db_mruby_row_hash(mrb, row, 0, names));
    mrb_gc_arena_restore(mrb, ai);
    if (e->waiting && !h2o_timeout_is_linked(&e->later)) {
        h2o_context_t *ctx = mreq->req->conn->ctx;
        h2o_timeout_link(ctx->loop, &ctx->zero_timeout, &e->later);
    }
    if (RARRAY_LEN(batch) < H2O_DB_MRUBY_EACH_BATCH)
        return 0;
    e->paused = 1;
    return 1;
}

static void on_done(h2o_db_result_t *r, void *data)
{
    h2o_db_mruby_vm_t *vm = h2o_db_mruby_thread_vm;
    h2o_db_mruby_req_t *mreq = h2o_db_mruby_find_req(vm, (uint64_t)(uintptr_t)data);
    if (mreq == NULL || mreq->each.session == NULL)
        return;
    h2o_db_mruby_each_t *e = &mreq->each;
    mrb_state *mrb = vm->mrb;
    int ai = mrb_gc_arena_save(mrb);
    e->done = 1;
    e->paused = 0;
    if (e->stopping) {
        /* the block's break or exception is what goes on; whatever the end says */
        int waiting = e->waiting;
        forget(mreq);
        if (waiting)
            h2o_db_mruby_resume(vm, mreq->id, mrb_nil_value());
    } else {
        if (h2o_db_result_status(r) != H2O_DB_OK)
            mrb_ary_set(mrb, state_of(mreq), FINAL,
                        h2o_db_mruby_new_error(vm, h2o_db_result_error(r), h2o_db_result_sqlstate(r), h2o_db_result_status(r)));
        if (e->waiting)
            hand_over(mreq);
    }
    mrb_gc_arena_restore(mrb, ai);
}

int h2o_db_mruby_each_op(h2o_db_mruby_req_t *mreq, mrb_int kind, h2o_db_session_t *s, const char *sql, size_t nparams,
                         const char *const *params, mrb_value *resume_with)
{
    h2o_db_mruby_vm_t *vm = mreq->vm;
    mrb_state *mrb = vm->mrb;
    h2o_db_mruby_each_t *e = &mreq->each;
    *resume_with = mrb_nil_value();
    switch (kind) {
    case H2O_DB_MRUBY_OP_EACH: {
        if (e->session != NULL) {
            *resume_with = mrb_exc_new_lit(mrb, E_RUNTIME_ERROR, "one db.each at a time per request: this one runs inside another");
            return -1;
        }
        if (h2o_db_query_rows(s, sql, nparams, params, on_row, on_done, (void *)(uintptr_t)mreq->id) != 0) {
            *resume_with = mrb_exc_new_lit(mrb, E_ARGUMENT_ERROR,
                                           "the statement was refused: it is empty or holds several statements (one per call)");
            return -1;
        }
        mrb_value st[NUM_STATE] = {mrb_ary_new_capa(mrb, H2O_DB_MRUBY_EACH_BATCH), mrb_nil_value(), mrb_nil_value()};
        mrb_ary_set(mrb, vm->eaches, slot_index(mreq->id), mrb_ary_new_from_values(mrb, NUM_STATE, st));
        e->session = s;
        e->later.cb = on_later;
        e->waiting = 1;
        return 0;
    }
    case H2O_DB_MRUBY_OP_EACH_MORE:
        if (e->session == NULL) {
            *resume_with = mrb_exc_new_lit(mrb, E_RUNTIME_ERROR, "no db.each runs");
            return -1;
        }
        if (take(mreq, resume_with))
            return -1;
        e->waiting = 1;
        return 0;
    default: /* H2O_DB_MRUBY_OP_EACH_STOP */
        if (e->session == NULL)
            return -1; /* it was over already */
        if (e->done) {
            forget(mreq);
            return -1;
        }
        e->stopping = 1;
        mrb_ary_set(mrb, state_of(mreq), BATCH, mrb_ary_new(mrb));
        if (e->paused) { /* the next row is answered -1, or the end comes */
            e->paused = 0;
            h2o_db_resume(e->session);
        }
        e->waiting = 1;
        return 0;
    }
}

int h2o_db_mruby_each_busy(h2o_db_mruby_req_t *mreq, h2o_db_session_t *s)
{
    return mreq->each.session != NULL && mreq->each.session == s;
}

void h2o_db_mruby_each_release(h2o_db_mruby_req_t *mreq, mrb_int index)
{
    h2o_db_mruby_each_t *e = &mreq->each;
    if (h2o_timeout_is_linked(&e->later))
        h2o_timeout_unlink(&e->later);
    e->session = NULL;
    mrb_ary_set(mreq->vm->mrb, mreq->vm->eaches, index, mrb_nil_value());
}
