/*
 * MySQL's placeholders: statements are written with PostgreSQL's $1..$n (as on every backend),
 * and MySQL's prepared statements take ?, bound in the order they appear.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "driver/mysql.h"

#define MAX_MARKS 65535

static int is_ident_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '$' || ch >= 0x80;
}

/* Rewrites PostgreSQL's $1..$n into MySQL's ?, outside quotes ('...', "...", `...`) and comments
 * (-- , #, / * * /; MySQL's executable comments / *! ... * / are SQL and rewritten). $n may come
 * in any order and more than once: map[i] is the parameter the i-th ? binds. Returns 0, or -1
 * with sqlstate and message set. */
int h2o_db_mysql_rewrite_placeholders(const char *sql, size_t len, struct buf *out, unsigned **map, unsigned *nmarks,
                                      unsigned *nneeded, const char **sqlstate, char *msg, size_t msgsz)
{
    size_t cap = 0;
    *map = NULL;
    *nmarks = 0;
    *nneeded = 0;
    out->len = 0;
    if (buf_reserve(out, len + 1) != 0)
        goto NoMem;
    for (size_t i = 0; i < len;) {
        unsigned char ch = (unsigned char)sql[i];
        size_t start = i;
        if (ch == '\'' || ch == '"' || ch == '`') {
            /* a literal or a quoted name: up to the closing quote (a doubled quote closes and reopens) */
            for (++i; i < len && (unsigned char)sql[i] != ch; ++i)
                if (sql[i] == '\\' && ch != '`' && i + 1 < len)
                    ++i;
            if (i < len)
                ++i;
        } else if (ch == '#' || (ch == '-' && i + 2 < len + 1 && i + 1 < len && sql[i + 1] == '-' &&
                                 (i + 2 == len || (unsigned char)sql[i + 2] <= ' '))) {
            while (i < len && sql[i] != '\n')
                ++i;
        } else if (ch == '/' && i + 1 < len && sql[i + 1] == '*' && !(i + 2 < len && sql[i + 2] == '!')) {
            const char *end = NULL;
            for (size_t j = i + 2; j + 1 < len; ++j) {
                if (sql[j] == '*' && sql[j + 1] == '/') {
                    end = sql + j + 2;
                    break;
                }
            }
            i = end != NULL ? (size_t)(end - sql) : len;
        } else if (ch == '?') {
            *sqlstate = "42601";
            snprintf(msg, msgsz, "use $1, $2, ... for parameters (as on PostgreSQL), not ?");
            goto Error;
        } else if (ch == '$' && i + 1 < len && sql[i + 1] >= '0' && sql[i + 1] <= '9' &&
                   (i == 0 || !is_ident_char((unsigned char)sql[i - 1]))) {
            unsigned long n = 0;
            for (++i; i < len && sql[i] >= '0' && sql[i] <= '9'; ++i)
                if ((n = n * 10 + (unsigned long)(sql[i] - '0')) > MAX_MARKS)
                    n = MAX_MARKS + 1;
            if (n == 0 || n > MAX_MARKS) {
                *sqlstate = "42P02";
                snprintf(msg, msgsz, "there is no parameter $%lu", n);
                goto Error;
            }
            if (*nmarks == MAX_MARKS) {
                *sqlstate = "54000";
                snprintf(msg, msgsz, "too many parameters in one statement (at most %u)", MAX_MARKS);
                goto Error;
            }
            if (*nmarks == cap) {
                cap = cap == 0 ? 8 : cap * 2;
                unsigned *p = realloc(*map, sizeof(unsigned) * cap);
                if (p == NULL)
                    goto NoMem;
                *map = p;
            }
            (*map)[(*nmarks)++] = (unsigned)(n - 1);
            if (n > *nneeded)
                *nneeded = (unsigned)n;
            out->base[out->len++] = '?';
            continue;
        } else {
            ++i;
        }
        memcpy(out->base + out->len, sql + start, i - start);
        out->len += i - start;
    }
    out->base[out->len] = '\0';
    return 0;
NoMem:
    *sqlstate = "53200";
    snprintf(msg, msgsz, "out of memory");
Error:
    free(*map);
    *map = NULL;
    return -1;
}
