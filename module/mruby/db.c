/*
 * H2O::DB for mruby handlers: sessions by key, statements, typed rows, errors.
 *
 * A Session wraps (request id, h2o_db_session_t *). The pointer is used only while the
 * request behind the id lives (h2o_db_mruby_find_req), and only by that request's own
 * Fiber. A statement is two steps: Session#__prepare (in Ruby's context, so that a bad
 * parameter raises where the query was written) checks and converts the parameters and
 * returns an op; the op is Fiber.yield'ed to the C code that resumed the Fiber, which
 * calls h2o_db_mruby_start_op() below; the callback resumes the Fiber with the answer.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mruby.h>
#include <mruby/array.h>
#include <mruby/class.h>
#include <mruby/data.h>
#include <mruby/error.h>
#include <mruby/hash.h>
#include <mruby/string.h>
#include <mruby/variable.h>
#include "mruby/internal.h"
#include "result.h"

_Static_assert(sizeof(uintptr_t) >= sizeof(uint64_t), "request ids travel as callback data");

#define MAX_INLINE_PARAMS 16

typedef struct st_session_data_t {
    uint64_t id; /* the request's */
    h2o_db_session_t *session;
} session_data_t;

static const mrb_data_type session_type = {"H2O::DB::Session", mrb_free};

static h2o_db_mruby_vm_t *vm_of(mrb_state *mrb)
{
    return mrb->ud;
}

/* ---- errors ---- */

static mrb_sym status_symbol(mrb_state *mrb, h2o_db_status_t status)
{
    switch (status) {
    case H2O_DB_BUSY:
        return mrb_intern_lit(mrb, "busy");
    case H2O_DB_UNAVAILABLE:
        return mrb_intern_lit(mrb, "unavailable");
    case H2O_DB_TIMEOUT:
        return mrb_intern_lit(mrb, "timeout");
    case H2O_DB_CLIENT_GONE:
        return mrb_intern_lit(mrb, "client_gone");
    default:
        return mrb_intern_lit(mrb, "sql_error");
    }
}

static h2o_db_status_t status_of_symbol(mrb_state *mrb, mrb_value v)
{
    if (mrb_symbol_p(v)) {
        mrb_sym s = mrb_symbol(v);
        if (s == mrb_intern_lit(mrb, "busy"))
            return H2O_DB_BUSY;
        if (s == mrb_intern_lit(mrb, "unavailable"))
            return H2O_DB_UNAVAILABLE;
        if (s == mrb_intern_lit(mrb, "timeout"))
            return H2O_DB_TIMEOUT;
        if (s == mrb_intern_lit(mrb, "client_gone"))
            return H2O_DB_CLIENT_GONE;
    }
    return H2O_DB_SQL_ERROR;
}

mrb_value h2o_db_mruby_new_error(h2o_db_mruby_vm_t *vm, const char *message, const char *sqlstate, h2o_db_status_t status)
{
    mrb_state *mrb = vm->mrb;
    mrb_value args[3] = {mrb_str_new_cstr(mrb, message != NULL ? message : "database error"),
                         mrb_str_new_cstr(mrb, sqlstate != NULL ? sqlstate : "XX000"),
                         mrb_symbol_value(status_symbol(mrb, status))};
    mrb_value e = mrb_obj_new(mrb, vm->error_class, 3, args);
    if (mrb->exc != NULL) { /* initialize was redefined and raised: resume with what it raised */
        e = mrb_obj_value(mrb->exc);
        mrb->exc = NULL;
    }
    return e;
}

static mrb_value new_exception(mrb_state *mrb, struct RClass *cls, const char *message)
{
    return mrb_exc_new(mrb, cls, message, strlen(message));
}

void h2o_db_mruby_send_db_error(h2o_db_mruby_vm_t *vm, h2o_req_t *req, mrb_value exc)
{
    mrb_state *mrb = vm->mrb;
    int ai = mrb_gc_arena_save(mrb);
    h2o_db_status_t status = status_of_symbol(mrb, mrb_iv_get(mrb, exc, vm->sym_status));
    mrb_value sqlstate = mrb_iv_get(mrb, exc, vm->sym_sqlstate), message = mrb_funcall(mrb, exc, "message", 0);
    if (mrb->exc != NULL)
        mrb->exc = NULL;
    const char *state = "XX000", *text = "database error";
    if (mrb_string_p(sqlstate) && RSTRING_LEN(sqlstate) == 5)
        state = h2o_strdup(&req->pool, RSTRING_PTR(sqlstate), 5).base;
    if (mrb_string_p(message))
        text = h2o_strdup(&req->pool, RSTRING_PTR(message), RSTRING_LEN(message)).base;
    mrb_gc_arena_restore(mrb, ai);
    h2o_db_result_t r;
    h2o_db_result_init_error(&r, status, state, text);
    h2o_db_send_error(req, &r);
}

/* ---- results ---- */

static int parse_int64(const char *v, size_t len, int64_t *out)
{
    char buf[32];
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, v, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long long n = strtoll(buf, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    *out = n;
    return 1;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static mrb_value value_of(mrb_state *mrb, const h2o_db_result_t *r, size_t row, size_t col)
{
    size_t len;
    const char *v = h2o_db_result_value(r, row, col, &len);
    if (v == NULL)
        return mrb_nil_value();
    switch (h2o_db_result_type(r, row, col)) {
    case H2O_DB_TYPE_NULL:
        return mrb_nil_value();
    case H2O_DB_TYPE_BOOL:
        return mrb_bool_value(len != 0 && (v[0] == 't' || v[0] == '1'));
    case H2O_DB_TYPE_INT: {
        int64_t n;
        if (parse_int64(v, len, &n))
            return mrb_int_value(mrb, (mrb_int)n);
        break; /* beyond 64 bits: the text */
    }
    case H2O_DB_TYPE_FLOAT: {
        char buf[64];
        if (len < sizeof(buf)) {
            memcpy(buf, v, len);
            buf[len] = '\0';
            char *end;
            double d = strtod(buf, &end); /* also NaN, Infinity, -Infinity */
            if (*end == '\0')
                return mrb_float_value(mrb, d);
        }
        break;
    }
    case H2O_DB_TYPE_BYTES:
        if (len >= 2 && v[0] == '\\' && v[1] == 'x' && len % 2 == 0) {
            mrb_value s = mrb_str_new(mrb, NULL, (len - 2) / 2);
            char *dst = RSTRING_PTR(s);
            for (size_t i = 2; i < len; i += 2) {
                int hi = hexval(v[i]), lo = hexval(v[i + 1]);
                if (hi < 0 || lo < 0)
                    return mrb_str_new(mrb, v, len);
                *dst++ = (char)(hi << 4 | lo);
            }
            return s;
        }
        break;
    default: /* TEXT, NUMERIC (exact: kept as text), JSON (its text) */
        break;
    }
    return mrb_str_new(mrb, v, len);
}

mrb_value h2o_db_mruby_column_names(mrb_state *mrb, const h2o_db_result_t *r)
{
    size_t cols = h2o_db_result_columns(r);
    mrb_value names = mrb_ary_new_capa(mrb, (mrb_int)cols);
    for (size_t c = 0; c < cols; ++c) {
        const char *name = h2o_db_result_column_name(r, c);
        mrb_ary_push(mrb, names, mrb_obj_freeze(mrb, mrb_str_new_cstr(mrb, name != NULL ? name : "")));
    }
    return names;
}

mrb_value h2o_db_mruby_row_hash(mrb_state *mrb, const h2o_db_result_t *r, size_t row, mrb_value names)
{
    mrb_int cols = RARRAY_LEN(names);
    mrb_value h = mrb_hash_new_capa(mrb, cols);
    for (mrb_int c = 0; c < cols; ++c)
        mrb_hash_set(mrb, h, RARRAY_PTR(names)[c], value_of(mrb, r, row, (size_t)c));
    return h;
}

static mrb_value rows_of(mrb_state *mrb, const h2o_db_result_t *r)
{
    size_t rows = h2o_db_result_rows(r);
    mrb_value out = mrb_ary_new_capa(mrb, (mrb_int)rows);
    if (rows == 0)
        return out;
    mrb_value names = h2o_db_mruby_column_names(mrb, r);
    int ai = mrb_gc_arena_save(mrb);
    for (size_t row = 0; row < rows; ++row) {
        mrb_ary_push(mrb, out, h2o_db_mruby_row_hash(mrb, r, row, names));
        mrb_gc_arena_restore(mrb, ai);
    }
    return out;
}

/* A statement answered: resume the Fiber that waits for it. */
static void on_result(h2o_db_result_t *r, void *data)
{
    h2o_db_mruby_vm_t *vm = h2o_db_mruby_thread_vm;
    uint64_t id = (uint64_t)(uintptr_t)data;
    h2o_db_mruby_req_t *mreq = h2o_db_mruby_find_req(vm, id);
    if (mreq == NULL || !mreq->waiting)
        return; /* the request or its Fiber is gone */
    mreq->waiting = 0;
    mrb_state *mrb = vm->mrb;
    int ai = mrb_gc_arena_save(mrb);
    mrb_value v;
    if (h2o_db_result_status(r) != H2O_DB_OK) {
        v = h2o_db_mruby_new_error(vm, h2o_db_result_error(r), h2o_db_result_sqlstate(r), h2o_db_result_status(r));
    } else {
        switch (mreq->op) {
        case H2O_DB_MRUBY_OP_QUERY:
            v = rows_of(mrb, r);
            break;
        case H2O_DB_MRUBY_OP_EXECUTE:
            v = mrb_int_value(mrb, (mrb_int)h2o_db_result_affected(r));
            break;
        case H2O_DB_MRUBY_OP_FAILED_COMMIT:
            v = h2o_db_mruby_new_error(vm, "the transaction had failed, so it was rolled back instead of committed", "25P02",
                                       H2O_DB_SQL_ERROR);
            break;
        default:
            v = mrb_nil_value();
            break;
        }
    }
    h2o_db_mruby_resume(vm, id, v);
    mrb_gc_arena_restore(mrb, ai);
}

/* ---- statements ---- */

int h2o_db_mruby_start_op(h2o_db_mruby_req_t *mreq, mrb_value op, mrb_value *resume_with)
{
    h2o_db_mruby_vm_t *vm = mreq->vm;
    mrb_state *mrb = vm->mrb;
    session_data_t *sd;
    if (!mrb_array_p(op) || RARRAY_LEN(op) != 4 || !mrb_integer_p(RARRAY_PTR(op)[1]) ||
        (sd = mrb_data_check_get_ptr(mrb, RARRAY_PTR(op)[0], &session_type)) == NULL) {
        *resume_with = new_exception(mrb, E_FIBER_ERROR,
                                     "a handler's Fiber yields only H2O::DB statements (use a Fiber of your own for the rest)");
        return -1;
    }
    if (sd->id != mreq->id) {
        *resume_with = new_exception(mrb, E_ARGUMENT_ERROR, "this H2O::DB::Session belongs to another request");
        return -1;
    }
    h2o_db_session_t *s = sd->session;
    void *data = (void *)(uintptr_t)mreq->id;
    mrb_int kind = mrb_integer(RARRAY_PTR(op)[1]);
    if (kind == H2O_DB_MRUBY_OP_EACH_MORE || kind == H2O_DB_MRUBY_OP_EACH_STOP)
        return h2o_db_mruby_each_op(mreq, kind, s, NULL, 0, NULL, resume_with);
    if (h2o_db_mruby_each_busy(mreq, s)) {
        *resume_with = new_exception(mrb, E_RUNTIME_ERROR,
                                     "this session is streaming the rows of a db.each: a statement on it would wait for the "
                                     "stream's end (use a session of another key, or collect the rows with query first)");
        return -1;
    }
    mreq->op = (int)kind;
    switch (kind) {
    case H2O_DB_MRUBY_OP_QUERY:
    case H2O_DB_MRUBY_OP_EXECUTE:
    case H2O_DB_MRUBY_OP_EACH: {
        mrb_value sql = RARRAY_PTR(op)[2], params = RARRAY_PTR(op)[3];
        mrb_int n = mrb_array_p(params) ? RARRAY_LEN(params) : 0;
        const char *inline_params[MAX_INLINE_PARAMS], **p = inline_params;
        if (n > MAX_INLINE_PARAMS)
            p = h2o_mem_alloc_pool(&mreq->req->pool, sizeof(*p) * n);
        for (mrb_int i = 0; i < n; ++i) {
            mrb_value v = RARRAY_PTR(params)[i];
            p[i] = mrb_string_p(v) ? RSTRING_PTR(v) : NULL; /* __prepare made them NUL-terminated */
        }
        if (kind == H2O_DB_MRUBY_OP_EACH && mrb_string_p(sql))
            return h2o_db_mruby_each_op(mreq, kind, s, RSTRING_PTR(sql), (size_t)n, p, resume_with);
        if (!mrb_string_p(sql) || h2o_db_query(s, RSTRING_PTR(sql), (size_t)n, p, on_result, data) != 0) {
            *resume_with = new_exception(mrb, E_ARGUMENT_ERROR,
                                         "the statement was refused: it is empty or holds several statements (one per call)");
            return -1;
        }
        return 0;
    }
    case H2O_DB_MRUBY_OP_BEGIN:
        if (h2o_db_begin(s, on_result, data) != 0) {
            *resume_with = h2o_db_mruby_new_error(vm, "a transaction is already open on this session", "25001", H2O_DB_SQL_ERROR);
            return -1;
        }
        return 0;
    case H2O_DB_MRUBY_OP_COMMIT:
        if (h2o_db_commit(s, on_result, data) == 0)
            return 0;
        /* refused: either no transaction, or a failed one, which is rolled back */
        if (h2o_db_rollback(s, on_result, data) == 0) {
            mreq->op = H2O_DB_MRUBY_OP_FAILED_COMMIT;
            return 0;
        }
        *resume_with = h2o_db_mruby_new_error(vm, "no transaction is open on this session", "25P01", H2O_DB_SQL_ERROR);
        return -1;
    case H2O_DB_MRUBY_OP_ROLLBACK:
        if (h2o_db_rollback(s, on_result, data) != 0) {
            *resume_with = h2o_db_mruby_new_error(vm, "no transaction is open on this session", "25P01", H2O_DB_SQL_ERROR);
            return -1;
        }
        return 0;
    default:
        *resume_with = new_exception(mrb, E_ARGUMENT_ERROR, "unknown H2O::DB operation");
        return -1;
    }
}

/* ---- Ruby methods ---- */

static mrb_value session_new(h2o_db_mruby_vm_t *vm, uint64_t id, h2o_db_session_t *s)
{
    mrb_state *mrb = vm->mrb;
    struct RData *d = mrb_data_object_alloc(mrb, vm->session_class, NULL, &session_type);
    session_data_t *sd = mrb_malloc(mrb, sizeof(*sd));
    sd->id = id;
    sd->session = s;
    d->data = sd;
    return mrb_obj_value(d);
}

static h2o_db_mruby_req_t *req_of_env(mrb_state *mrb, h2o_db_mruby_vm_t *vm, mrb_value env)
{
    if (!mrb_hash_p(env))
        mrb_raisef(mrb, E_TYPE_ERROR, "H2O::DB.session takes the request's Rack env, not %s", mrb_obj_classname(mrb, env));
    mrb_value id = mrb_hash_get(mrb, env, vm->keys[H2O_DB_MRUBY_KEY_REQUEST]);
    if (!mrb_integer_p(id))
        mrb_raise(mrb, E_ARGUMENT_ERROR, "H2O::DB.session takes the Rack env of a request served by an mruby handler");
    h2o_db_mruby_req_t *mreq = h2o_db_mruby_find_req(vm, (uint64_t)mrb_integer(id));
    if (mreq == NULL)
        mrb_raise(mrb, vm->error_class, "the request of this env has ended");
    return mreq;
}

static const char *key_of(mrb_state *mrb, mrb_value key)
{
    if (mrb_nil_p(key))
        return H2O_DB_DEFAULT_KEY;
    if (mrb_symbol_p(key))
        return mrb_sym_name(mrb, mrb_symbol(key));
    if (!mrb_string_p(key))
        mrb_raisef(mrb, E_TYPE_ERROR, "a database key is a String, not %s", mrb_obj_classname(mrb, key));
    return mrb_string_value_cstr(mrb, &key);
}

/* H2O::DB.session(env, key = "sa_main") */
static mrb_value db_session(mrb_state *mrb, mrb_value self)
{
    h2o_db_mruby_vm_t *vm = vm_of(mrb);
    mrb_value env, keyv = mrb_nil_value();
    mrb_get_args(mrb, "o|o", &env, &keyv);
    h2o_db_mruby_req_t *mreq = req_of_env(mrb, vm, env);
    const char *key = key_of(mrb, keyv);
    h2o_db_session_t *s = h2o_db_session(mreq->req, key);
    if (s == NULL)
        mrb_raisef(mrb, vm->key_error_class,
                   "no database session for key `%s` at this path (bind it with db.bind in scope; a key bound with "
                   "middleware: OFF also needs db.use here)",
                   key);
    return session_new(vm, mreq->id, s);
}

static session_data_t *live_session(mrb_state *mrb, mrb_value self)
{
    h2o_db_mruby_vm_t *vm = vm_of(mrb);
    session_data_t *sd = mrb_data_get_ptr(mrb, self, &session_type);
    if (sd == NULL)
        mrb_raise(mrb, E_TYPE_ERROR, "uninitialized H2O::DB::Session");
    if (h2o_db_mruby_find_req(vm, sd->id) == NULL)
        mrb_raise(mrb, vm->error_class, "the request of this session has ended");
    return sd;
}

/* Session#for(table): the session that holds TABLE (db.bind's binds:), or self. */
static mrb_value session_for(mrb_state *mrb, mrb_value self)
{
    h2o_db_mruby_vm_t *vm = vm_of(mrb);
    mrb_value table;
    mrb_get_args(mrb, "o", &table);
    session_data_t *sd = live_session(mrb, self);
    const char *name = mrb_symbol_p(table) ? mrb_sym_name(mrb, mrb_symbol(table)) : mrb_string_value_cstr(mrb, &table);
    h2o_db_session_t *s = h2o_db_session_for(sd->session, name);
    if (s == NULL)
        mrb_raisef(mrb, vm->error_class, "no session for table `%s`", name);
    return s == sd->session ? self : session_new(vm, sd->id, s);
}

/* Session#read_only: h2o_db_session_read_only (docs/replicas.md); self, for chaining. */
static mrb_value session_read_only(mrb_state *mrb, mrb_value self)
{
    session_data_t *sd = live_session(mrb, self);
    if (h2o_db_session_read_only(sd->session) != 0)
        mrb_raise(mrb, vm_of(mrb)->error_class, "read_only must come before the session's first statement");
    return self;
}

/* A String that ends with a NUL (Fiber-yielded, then read by C). */
static mrb_value c_string(mrb_state *mrb, mrb_value s, const char *what, mrb_int index)
{
    if (memchr(RSTRING_PTR(s), '\0', RSTRING_LEN(s)) != NULL) {
        if (index < 0)
            mrb_raisef(mrb, E_ARGUMENT_ERROR, "the %s holds a NUL byte", what);
        mrb_raisef(mrb, E_ARGUMENT_ERROR, "query parameter $%d holds a NUL byte", (int)index + 1);
    }
    if (RSTRING_PTR(s)[RSTRING_LEN(s)] != '\0')
        s = mrb_str_new(mrb, RSTRING_PTR(s), RSTRING_LEN(s));
    return s;
}

/* Session#__prepare(kind, sql = nil, params = nil) -> [session, kind, sql, [String|nil, ...]] */
static mrb_value session_prepare(mrb_state *mrb, mrb_value self)
{
    mrb_int kind;
    mrb_value sql = mrb_nil_value(), params = mrb_nil_value();
    mrb_get_args(mrb, "i|oo", &kind, &sql, &params);
    live_session(mrb, self);
    if (kind < 0 || kind >= H2O_DB_MRUBY_OP_FAILED_COMMIT)
        mrb_raise(mrb, E_ARGUMENT_ERROR, "unknown H2O::DB operation");
    mrb_value converted = mrb_nil_value();
    if (kind == H2O_DB_MRUBY_OP_QUERY || kind == H2O_DB_MRUBY_OP_EXECUTE || kind == H2O_DB_MRUBY_OP_EACH) {
        if (!mrb_string_p(sql))
            mrb_raisef(mrb, E_TYPE_ERROR, "the SQL is a String, not %s", mrb_obj_classname(mrb, sql));
        sql = c_string(mrb, sql, "SQL", -1);
        if (!mrb_nil_p(params) && !mrb_array_p(params))
            mrb_raisef(mrb, E_TYPE_ERROR, "query parameters come in an Array, not %s", mrb_obj_classname(mrb, params));
        mrb_int n = mrb_nil_p(params) ? 0 : RARRAY_LEN(params);
        converted = mrb_ary_new_capa(mrb, n);
        for (mrb_int i = 0; i < n; ++i) {
            mrb_value v = RARRAY_PTR(params)[i], out;
            char buf[64];
            if (mrb_nil_p(v)) {
                out = mrb_nil_value();
            } else if (mrb_true_p(v) || mrb_false_p(v)) {
                /* "1"/"0": PostgreSQL reads them as booleans (and integers); SQLite binds 1/0 */
                out = mrb_str_new_cstr(mrb, mrb_true_p(v) ? "1" : "0");
            } else if (mrb_integer_p(v)) {
                out = mrb_str_new(mrb, buf, snprintf(buf, sizeof(buf), "%" PRId64, (int64_t)mrb_integer(v)));
            } else if (mrb_float_p(v)) {
                out = mrb_str_new(mrb, buf, h2o_db_mruby_format_float(mrb, mrb_float(v), buf, sizeof(buf)));
            } else if (mrb_string_p(v)) {
                out = c_string(mrb, v, "parameter", i);
            } else {
                mrb_raisef(mrb, E_TYPE_ERROR, "query parameter $%d is a %s: only Integer, Float, String, true, false and nil are",
                           (int)i + 1, mrb_obj_classname(mrb, v));
            }
            mrb_ary_push(mrb, converted, out);
        }
    }
    mrb_value op[4] = {self, mrb_fixnum_value(kind), sql, converted};
    return mrb_ary_new_from_values(mrb, 4, op);
}

/* H2O::DB.live_fibers: requests of this thread whose Fiber has not ended (the caller's included). */
static mrb_value db_live_fibers(mrb_state *mrb, mrb_value self)
{
    return mrb_int_value(mrb, (mrb_int)vm_of(mrb)->live_fibers);
}

/* H2O::DB.__stderr(string): rack.errors */
static mrb_value db_stderr(mrb_state *mrb, mrb_value self)
{
    const char *p;
    mrb_int len;
    mrb_get_args(mrb, "s", &p, &len);
    fwrite(p, 1, (size_t)len, stderr);
    return mrb_nil_value();
}

void h2o_db_mruby_define_db(h2o_db_mruby_vm_t *vm)
{
    mrb_state *mrb = vm->mrb;
    struct RClass *h2o = mrb_define_module(mrb, "H2O");
    vm->db_module = mrb_define_module_under(mrb, h2o, "DB");
    mrb_define_module_function(mrb, vm->db_module, "session", db_session, MRB_ARGS_ARG(1, 1));
    mrb_define_module_function(mrb, vm->db_module, "live_fibers", db_live_fibers, MRB_ARGS_NONE());
    mrb_define_module_function(mrb, vm->db_module, "__stderr", db_stderr, MRB_ARGS_REQ(1));
    vm->session_class = mrb_define_class_under(mrb, vm->db_module, "Session", mrb->object_class);
    MRB_SET_INSTANCE_TT(vm->session_class, MRB_TT_DATA);
    mrb_undef_class_method(mrb, vm->session_class, "new");
    mrb_define_method(mrb, vm->session_class, "for", session_for, MRB_ARGS_REQ(1));
    mrb_define_method(mrb, vm->session_class, "read_only", session_read_only, MRB_ARGS_NONE());
    mrb_define_method(mrb, vm->session_class, "__prepare", session_prepare, MRB_ARGS_ARG(1, 2));
}

void h2o_db_mruby_init_db(h2o_db_mruby_vm_t *vm)
{
    mrb_state *mrb = vm->mrb;
    vm->error_class = mrb_class_get_under(mrb, vm->db_module, "Error");
    vm->key_error_class = mrb_class_get_under(mrb, vm->db_module, "KeyError");
    vm->input_class = mrb_class_get_under(mrb, vm->db_module, "Input");
}
