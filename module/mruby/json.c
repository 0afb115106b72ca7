/*
 * H2O::DB.to_json(obj): JSON for mruby handlers (Debian's mruby has no JSON gem).
 *
 *   nil, true, false     null, true, false
 *   Integer, Float       numbers; NaN and the infinities as the strings "NaN", "Infinity",
 *                        "-Infinity" (as h2o_db_result_json writes them)
 *   String, Symbol       strings: ", \ and control characters escaped, U+2028/U+2029 as
 *                        \u2028/\u2029, invalid UTF-8 replaced by U+FFFD
 *   Array, Hash          arrays, objects (keys: String, Symbol, else to_s)
 *   anything else        its to_json if it has one, else to_h's, else to_s as a string
 * Nesting deeper than 100 raises ArgumentError (a cycle, most likely).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mruby.h>
#include <mruby/array.h>
#include <mruby/hash.h>
#include <mruby/string.h>
#include "mruby/internal.h"
#include "result.h"

#define MAX_DEPTH 100

size_t h2o_db_mruby_format_float(mrb_state *mrb, mrb_float f, char *buf, size_t size)
{
    if (isnan(f))
        return snprintf(buf, size, "NaN");
    if (isinf(f))
        return snprintf(buf, size, f > 0 ? "Infinity" : "-Infinity");
    int n = 0;
    for (int prec = 15; prec <= 17; ++prec) {
        n = snprintf(buf, size, "%.*g", prec, (double)f);
        /* the shortest text that reads back as the same mruby Float (word boxing drops low bits) */
        if (mrb_float(mrb_float_value(mrb, strtod(buf, NULL))) == f)
            break;
    }
    if (strpbrk(buf, ".e") == NULL && (size_t)n + 2 < size) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    return (size_t)n;
}

/* A JSON string (h2o_db_json_string, with U+2028/U+2029 escaped) at the end of out. */
static void put_string(mrb_state *mrb, mrb_value out, const char *src, size_t n)
{
    size_t len = h2o_db_json_string(NULL, src, n, 1);
    mrb_int off = RSTRING_LEN(out);
    mrb_str_resize(mrb, out, off + (mrb_int)len);
    h2o_db_json_string(RSTRING_PTR(out) + off, src, n, 1);
}

static void put_value(mrb_state *mrb, mrb_value out, mrb_value v, int depth);

static void put_key(mrb_state *mrb, mrb_value out, mrb_value k)
{
    if (mrb_string_p(k)) {
        put_string(mrb, out, RSTRING_PTR(k), RSTRING_LEN(k));
    } else if (mrb_symbol_p(k)) {
        mrb_int len;
        const char *name = mrb_sym_name_len(mrb, mrb_symbol(k), &len);
        put_string(mrb, out, name, (size_t)len);
    } else {
        mrb_value s = mrb_obj_as_string(mrb, k);
        put_string(mrb, out, RSTRING_PTR(s), RSTRING_LEN(s));
    }
}

static void put_value(mrb_state *mrb, mrb_value out, mrb_value v, int depth)
{
    char buf[64];
    if (depth > MAX_DEPTH)
        mrb_raise(mrb, E_ARGUMENT_ERROR, "to_json: nesting deeper than 100 (a cycle?)");
    if (mrb_nil_p(v)) {
        mrb_str_cat_lit(mrb, out, "null");
    } else if (mrb_false_p(v)) {
        mrb_str_cat_lit(mrb, out, "false");
    } else if (mrb_true_p(v)) {
        mrb_str_cat_lit(mrb, out, "true");
    } else if (mrb_integer_p(v)) {
        mrb_str_cat(mrb, out, buf, snprintf(buf, sizeof(buf), "%lld", (long long)mrb_integer(v)));
    } else if (mrb_float_p(v)) {
        mrb_float f = mrb_float(v);
        size_t n = h2o_db_mruby_format_float(mrb, f, buf, sizeof(buf));
        if (isfinite(f))
            mrb_str_cat(mrb, out, buf, n);
        else
            put_string(mrb, out, buf, n);
    } else if (mrb_string_p(v)) {
        put_string(mrb, out, RSTRING_PTR(v), RSTRING_LEN(v));
    } else if (mrb_symbol_p(v)) {
        put_key(mrb, out, v);
    } else if (mrb_array_p(v)) {
        mrb_str_cat_lit(mrb, out, "[");
        for (mrb_int i = 0; i < RARRAY_LEN(v); ++i) { /* re-read: a to_json may change it */
            if (i != 0)
                mrb_str_cat_lit(mrb, out, ",");
            put_value(mrb, out, RARRAY_PTR(v)[i], depth + 1);
        }
        mrb_str_cat_lit(mrb, out, "]");
    } else if (mrb_hash_p(v)) {
        mrb_value keys = mrb_hash_keys(mrb, v);
        mrb_str_cat_lit(mrb, out, "{");
        for (mrb_int i = 0; i < RARRAY_LEN(keys); ++i) {
            mrb_value k = RARRAY_PTR(keys)[i];
            if (i != 0)
                mrb_str_cat_lit(mrb, out, ",");
            put_key(mrb, out, k);
            mrb_str_cat_lit(mrb, out, ":");
            put_value(mrb, out, mrb_hash_get(mrb, v, k), depth + 1);
        }
        mrb_str_cat_lit(mrb, out, "}");
    } else if (mrb_respond_to(mrb, v, mrb_intern_lit(mrb, "to_json"))) {
        mrb_value s = mrb_funcall(mrb, v, "to_json", 0);
        if (!mrb_string_p(s))
            mrb_raisef(mrb, E_TYPE_ERROR, "%s#to_json returned %s, not a String", mrb_obj_classname(mrb, v),
                       mrb_obj_classname(mrb, s));
        mrb_str_cat(mrb, out, RSTRING_PTR(s), RSTRING_LEN(s));
    } else if (mrb_respond_to(mrb, v, mrb_intern_lit(mrb, "to_h"))) {
        put_value(mrb, out, mrb_funcall(mrb, v, "to_h", 0), depth + 1);
    } else {
        mrb_value s = mrb_obj_as_string(mrb, v);
        put_string(mrb, out, RSTRING_PTR(s), RSTRING_LEN(s));
    }
}

/* H2O::DB.to_json(obj) */
static mrb_value db_to_json(mrb_state *mrb, mrb_value self)
{
    mrb_value v;
    mrb_get_args(mrb, "o", &v);
    mrb_value out = mrb_str_new_capa(mrb, 64);
    put_value(mrb, out, v, 0);
    return out;
}

void h2o_db_mruby_define_json(h2o_db_mruby_vm_t *vm)
{
    mrb_define_module_function(vm->mrb, vm->db_module, "to_json", db_to_json, MRB_ARGS_REQ(1));
}
