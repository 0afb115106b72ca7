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

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t min, cp;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0)
        len = 2, min = 0x80, cp = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        len = 3, min = 0x800, cp = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        len = 4, min = 0x10000, cp = s[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; ++i) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static void put_string(mrb_state *mrb, mrb_value out, const char *src, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)src;
    char esc[8];
    size_t i = 0, run = 0; /* s[run..i) is copied as is */
    mrb_str_cat_lit(mrb, out, "\"");
    while (i < n) {
        unsigned char c = s[i];
        const char *rep = NULL;
        size_t rep_len = 0, skip = 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, rep = esc, rep_len = 2;
        } else if (c < 0x20) {
            switch (c) {
            case '\n':
                rep = "\\n", rep_len = 2;
                break;
            case '\r':
                rep = "\\r", rep_len = 2;
                break;
            case '\t':
                rep = "\\t", rep_len = 2;
                break;
            case '\b':
                rep = "\\b", rep_len = 2;
                break;
            case '\f':
                rep = "\\f", rep_len = 2;
                break;
            default:
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
                rep = esc, rep_len = 6;
                break;
            }
        } else if (c >= 0x80) {
            size_t len = utf8_len(s + i, n - i);
            if (len == 0) {
                rep = "\xef\xbf\xbd", rep_len = 3; /* U+FFFD */
            } else if (len == 3 && c == 0xe2 && s[i + 1] == 0x80 && (s[i + 2] == 0xa8 || s[i + 2] == 0xa9)) {
                rep = s[i + 2] == 0xa8 ? "\\u2028" : "\\u2029", rep_len = 6, skip = 3;
            } else {
                i += len;
                continue;
            }
        } else {
            ++i;
            continue;
        }
        if (i > run)
            mrb_str_cat(mrb, out, src + run, i - run);
        mrb_str_cat(mrb, out, rep, rep_len);
        i += skip;
        run = i;
    }
    if (i > run)
        mrb_str_cat(mrb, out, src + run, i - run);
    mrb_str_cat_lit(mrb, out, "\"");
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
