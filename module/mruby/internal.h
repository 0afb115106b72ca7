/*
 * The mruby handler's internals, shared by handler.c (the per-thread VM, driving the
 * request's Fiber), env.c (the Rack env), response.c (the app's response), configurator.c
 * (the directives), db.c (H2O::DB) and json.c (the JSON encoder).
 *
 * One mrb_state per worker thread (h2o_db_mruby_vm_t), shared by every mruby
 * handler of that thread. A request served by an mruby handler gets a
 * h2o_db_mruby_req_t in its memory pool and a slot in the VM's slot table; Ruby
 * refers to the request only by the slot's id (generation << 24 | slot), so a
 * Ruby object that outlives its request can never reach freed memory, and
 * keep-alive's reuse of h2o_req_t addresses does not matter.
 */
#ifndef h2o_db_mruby_internal_h
#define h2o_db_mruby_internal_h

#include <mruby.h>
#include <stdint.h>
#include "h2o.h"
#include "h2o_db.h"

#define H2O_DB_MRUBY_SLOT_BITS 24
#define H2O_DB_MRUBY_MAX_SLOTS (1u << H2O_DB_MRUBY_SLOT_BITS)

/* What a Session asks the C side to do (the `kind` of Session#__prepare). */
enum {
    H2O_DB_MRUBY_OP_QUERY,   /* rows as an Array of Hashes */
    H2O_DB_MRUBY_OP_EXECUTE, /* the affected row count */
    H2O_DB_MRUBY_OP_BEGIN,
    H2O_DB_MRUBY_OP_COMMIT,
    H2O_DB_MRUBY_OP_ROLLBACK,
    H2O_DB_MRUBY_OP_EACH,          /* db.each: rows in batches, as they arrive (each.c) */
    H2O_DB_MRUBY_OP_EACH_MORE,     /* the next batch (nil when the rows are over) */
    H2O_DB_MRUBY_OP_EACH_STOP,     /* the block left early: stop the statement, wait for its end */
    H2O_DB_MRUBY_OP_FAILED_COMMIT, /* COMMIT of a failed transaction: rolled back, answered as 25P02 */
    H2O_DB_MRUBY_NUM_OPS
};

/* The frozen String keys of a Rack env, made once per VM. */
enum {
    H2O_DB_MRUBY_KEY_REQUEST_METHOD,
    H2O_DB_MRUBY_KEY_SCRIPT_NAME,
    H2O_DB_MRUBY_KEY_PATH_INFO,
    H2O_DB_MRUBY_KEY_QUERY_STRING,
    H2O_DB_MRUBY_KEY_SERVER_NAME,
    H2O_DB_MRUBY_KEY_SERVER_ADDR,
    H2O_DB_MRUBY_KEY_SERVER_PORT,
    H2O_DB_MRUBY_KEY_SERVER_PROTOCOL,
    H2O_DB_MRUBY_KEY_SERVER_SOFTWARE,
    H2O_DB_MRUBY_KEY_REMOTE_ADDR,
    H2O_DB_MRUBY_KEY_REMOTE_PORT,
    H2O_DB_MRUBY_KEY_CONTENT_TYPE,
    H2O_DB_MRUBY_KEY_CONTENT_LENGTH,
    H2O_DB_MRUBY_KEY_HTTP_HOST,
    H2O_DB_MRUBY_KEY_RACK_VERSION,
    H2O_DB_MRUBY_KEY_RACK_URL_SCHEME,
    H2O_DB_MRUBY_KEY_RACK_INPUT,
    H2O_DB_MRUBY_KEY_RACK_ERRORS,
    H2O_DB_MRUBY_KEY_RACK_MULTITHREAD,
    H2O_DB_MRUBY_KEY_RACK_MULTIPROCESS,
    H2O_DB_MRUBY_KEY_RACK_RUN_ONCE,
    H2O_DB_MRUBY_KEY_RACK_HIJACK_P,
    H2O_DB_MRUBY_KEY_REQUEST, /* "h2o_db.request": the request's id, for H2O::DB.session */
    H2O_DB_MRUBY_NUM_KEYS
};

typedef struct st_h2o_db_mruby_req_t h2o_db_mruby_req_t;

typedef struct st_h2o_db_mruby_slot_t {
    h2o_db_mruby_req_t *req; /* NULL when free */
    uint64_t gen;
    uint32_t next_free;
} h2o_db_mruby_slot_t;

typedef struct st_h2o_db_mruby_vm_t {
    mrb_state *mrb;
    size_t refcnt; /* handlers of this thread using it */
    struct RClass *db_module, *error_class, *key_error_class, *session_class, *input_class, *fiber_class;
    mrb_value runner;      /* H2O::DB::RUNNER: runs app.call(env) and the body inside the Fiber */
    mrb_value stream_mark; /* H2O::DB::STREAM: what a streamed body's Fiber yields (stream.c) */
    mrb_value roots;       /* an Array registered with the GC: everything below */
    mrb_value fibers;      /* Array: slot -> the request's Fiber while it lives */
    mrb_value inputs;      /* Array: slot -> the request's rack.input, closed when the slot is freed */
    mrb_value bodies;      /* Array: slot -> a streamed body not closed yet (closed when the request ends first) */
    mrb_value eaches;      /* Array: slot -> [batch, column names, final answer] of the request's db.each */
    mrb_value apps;        /* Array: handler index -> its Rack app */
    mrb_value keys[H2O_DB_MRUBY_NUM_KEYS];
    mrb_value rack_errors, rack_version, empty_string;
    mrb_value server_software; /* the globalconf's server_name ("h2o/2.2.5", or `server-name`) */
    h2o_db_mruby_slot_t *slots;
    uint32_t num_slots, free_head;
    size_t live_fibers;
    mrb_sym sym_new, sym_call, sym_status, sym_sqlstate, sym_input_s, sym_input_pos;
} h2o_db_mruby_vm_t;

typedef struct st_h2o_db_mruby_handler_t h2o_db_mruby_handler_t;

/* Bytes owned by a streamed response (malloc'ed). */
typedef struct st_h2o_db_mruby_buf_t {
    char *base;
    size_t len, cap;
} h2o_db_mruby_buf_t;

/* A body sent as it is produced (stream.c). The Fiber appends chunks to `fill`; `flight` is what
 * h2o_send has and keeps until the generator's proceed. The Fiber is suspended while something
 * is in flight and `fill` holds H2O_DB_MRUBY_STREAM_CAP bytes or more. */
typedef struct st_h2o_db_mruby_stream_t {
    h2o_generator_t generator;
    h2o_db_mruby_buf_t fill, flight;
    size_t left;               /* bytes the app's content-length still allows; SIZE_MAX without one */
    unsigned started : 1;      /* the response has started (h2o_start_response) */
    unsigned head_pending : 1; /* nothing was sent yet: the headers go with the first send */
    unsigned in_flight : 1;    /* an h2o_send waits for proceed */
    unsigned waiting : 1;      /* the Fiber waits for proceed */
    unsigned ended : 1;        /* the Fiber ended: the last h2o_send follows the one in flight */
    unsigned failed : 1;       /* ... and ends the response as broken (H2O_SEND_STATE_ERROR) */
    unsigned discard : 1;      /* HEAD, 1xx, 204, 304: the chunks are dropped */
} h2o_db_mruby_stream_t;

#define H2O_DB_MRUBY_STREAM_CAP 65536

/* The request's db.each (each.c): rows arrive on the loop while the Fiber waits; they are
 * collected into a batch (the VM's `eaches`), which goes to the Fiber when it waits for one. */
typedef struct st_h2o_db_mruby_each_t {
    h2o_db_session_t *session; /* the session streaming; NULL when no db.each runs */
    h2o_timeout_entry_t later; /* hands rows over after this turn of the loop (not inside on_row) */
    unsigned waiting : 1;      /* the Fiber waits for a batch (or, stopping, for the end) */
    unsigned paused : 1;       /* on_row returned 1: h2o_db_resume continues */
    unsigned done : 1;         /* on_done came: the final answer is kept */
    unsigned stopping : 1;     /* the block left early: on_row returns -1 */
} h2o_db_mruby_each_t;

#define H2O_DB_MRUBY_EACH_BATCH 256

struct st_h2o_db_mruby_req_t {
    h2o_req_t *req;
    h2o_db_mruby_handler_t *handler;
    h2o_db_mruby_vm_t *vm;
    uint64_t id;
    int op;                 /* the kind of the statement being waited for */
    unsigned released : 1;  /* the slot is freed (the Fiber ended, or the request did) */
    unsigned in_on_req : 1; /* still inside on_req: a 399 can return -1 */
    unsigned waiting : 1;   /* a statement is pending; its callback resumes the Fiber */
    h2o_db_mruby_stream_t stream;
    h2o_db_mruby_each_t each;
};

/* The calling thread's VM (NULL before the first mruby handler's on_context_init). */
extern __thread h2o_db_mruby_vm_t *h2o_db_mruby_thread_vm;

/* The live request behind an id, or NULL when it has ended. */
h2o_db_mruby_req_t *h2o_db_mruby_find_req(h2o_db_mruby_vm_t *vm, uint64_t id);

/* db.c: defines H2O::DB's C methods (before the prelude runs) and finds what the prelude
 * defined (after). */
void h2o_db_mruby_define_db(h2o_db_mruby_vm_t *vm);
void h2o_db_mruby_init_db(h2o_db_mruby_vm_t *vm);

/* db.c: starts what a yielded op asks for. Returns 0 when a callback will resume the Fiber;
 * otherwise -1 with *resume_with set to the value (an exception) to resume it with now. */
int h2o_db_mruby_start_op(h2o_db_mruby_req_t *mreq, mrb_value op, mrb_value *resume_with);

/* db.c: H2O::DB::Error.new(message, sqlstate, status). */
mrb_value h2o_db_mruby_new_error(h2o_db_mruby_vm_t *vm, const char *message, const char *sqlstate, h2o_db_status_t status);
/* db.c: row `row` of r as a Hash of column name (from `names`, frozen Strings) -> typed value. */
mrb_value h2o_db_mruby_row_hash(mrb_state *mrb, const h2o_db_result_t *r, size_t row, mrb_value names);
/* db.c: the column names of r, frozen Strings. */
mrb_value h2o_db_mruby_column_names(mrb_state *mrb, const h2o_db_result_t *r);

/* each.c: db.each's ops (kind EACH with the statement, EACH_MORE, EACH_STOP), as start_op's. */
int h2o_db_mruby_each_op(h2o_db_mruby_req_t *mreq, mrb_int kind, h2o_db_session_t *s, const char *sql, size_t nparams,
                         const char *const *params, mrb_value *resume_with);
/* each.c: whether s is streaming rows for the request's db.each (a statement on it would wait). */
int h2o_db_mruby_each_busy(h2o_db_mruby_req_t *mreq, h2o_db_session_t *s);
/* each.c: the request's slot at `index` is freed: forgets its db.each (its rows, its timer). */
void h2o_db_mruby_each_release(h2o_db_mruby_req_t *mreq, mrb_int index);

/* db.c: answers the request as h2o_db_send_error would for an H2O::DB::Error. */
void h2o_db_mruby_send_db_error(h2o_db_mruby_vm_t *vm, h2o_req_t *req, mrb_value exc);

/* handler.c: resumes the request's Fiber with `value` (after a statement's answer). */
void h2o_db_mruby_resume(h2o_db_mruby_vm_t *vm, uint64_t id, mrb_value value);
/* handler.c: compiles and runs source (from filename, its first line at lineno) in a throwaway VM
 * with the prelude; 0 when it returns a Rack app, else -1 with err set (FILE:LINE: ...). */
int h2o_db_mruby_check_source(const char *source, size_t len, const char *filename, unsigned lineno, char *err, size_t errsz);
/* handler.c: an mruby handler at pathconf running source (which it keeps, with filename: malloc'ed). */
void h2o_db_mruby_register(h2o_pathconf_t *pathconf, char *source, size_t len, char *filename, unsigned lineno);

/* env.c: makes the VM's frozen env keys (vm->keys, kept in vm->roots). */
void h2o_db_mruby_init_env_keys(h2o_db_mruby_vm_t *vm);
/* env.c: the Rack env of req, whose slot is id's (rack.input is kept in vm->inputs there). */
mrb_value h2o_db_mruby_build_env(h2o_db_mruby_vm_t *vm, h2o_req_t *req, uint64_t id);

/* response.c: adds the app's headers ([name, value, ...], names lower case) to req's response;
 * link pushes, x-fallthru-set-* sets req's env, content-length sets the length. */
void h2o_db_mruby_add_headers(h2o_req_t *req, mrb_value headers);
/* response.c: sends the status and the body (an Array of Strings) with its length. */
void h2o_db_mruby_send_response(h2o_req_t *req, mrb_int status, mrb_value chunks);

/* stream.c: defines H2O::DB.__write and __body_done. */
void h2o_db_mruby_define_stream(h2o_db_mruby_vm_t *vm);
/* stream.c: a streamed body's op (H2O::DB::STREAM, or [STREAM, status, headers, body]): starts the
 * response, or sends what the Fiber filled. Returns 1 when op is no stream op; 0 when the Fiber
 * waits (proceed resumes it); -1 with *resume_with set to resume it now. */
int h2o_db_mruby_stream_op(h2o_db_mruby_req_t *mreq, mrb_value op, mrb_value *resume_with);
/* stream.c: the Fiber gives the loop back (it waits for a statement): what it filled goes out,
 * or the headers alone, unless a send is in flight. */
void h2o_db_mruby_stream_flush(h2o_db_mruby_req_t *mreq);
/* stream.c: the Fiber of a started stream ended (failed: with an exception, already logged); the
 * last h2o_send goes now or after the one in flight. mreq may be gone when this returns. */
void h2o_db_mruby_stream_end(h2o_db_mruby_req_t *mreq, int failed);
/* stream.c: the request's slot at `index` is freed: closes a streamed body that was not closed
 * (its client left), in Ruby, outside any Fiber. */
void h2o_db_mruby_stream_release(h2o_db_mruby_vm_t *vm, mrb_int index);
/* stream.c: the request is disposed: frees the buffers. */
void h2o_db_mruby_stream_dispose(h2o_db_mruby_req_t *mreq);

/* json.c: defines H2O::DB.to_json. */
void h2o_db_mruby_define_json(h2o_db_mruby_vm_t *vm);
/* json.c: the shortest text that reads back as the same mruby Float ("1.5", "1.0e+20", "NaN"). */
size_t h2o_db_mruby_format_float(mrb_state *mrb, mrb_float f, char *buf, size_t size);

#endif
