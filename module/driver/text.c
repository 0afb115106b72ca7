/*
 * PostgreSQL's text forms (see text.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "driver/text.h"

int h2o_db_text_double(char *buf, size_t size, double v)
{
    if (isnan(v))
        return snprintf(buf, size, "NaN");
    if (isinf(v))
        return snprintf(buf, size, v > 0 ? "Infinity" : "-Infinity");
    for (int prec = 15; prec <= 17; ++prec) {
        int n = snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return n;
    }
    return snprintf(buf, size, "%.17g", v);
}

int h2o_db_text_float(char *buf, size_t size, float v)
{
    if (isnan(v))
        return snprintf(buf, size, "NaN");
    if (isinf(v))
        return snprintf(buf, size, v > 0 ? "Infinity" : "-Infinity");
    for (int prec = 6; prec <= 9; ++prec) {
        int n = snprintf(buf, size, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            return n;
    }
    return snprintf(buf, size, "%.9g", (double)v);
}

void h2o_db_text_bytea(char *dst, const unsigned char *src, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    *dst++ = '\\';
    *dst++ = 'x';
    for (size_t i = 0; i < n; ++i) {
        *dst++ = hex[src[i] >> 4];
        *dst++ = hex[src[i] & 15];
    }
    *dst = '\0';
}
