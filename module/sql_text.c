/*
 * What the session checks in a statement's text before queueing it: that it is
 * one statement, and not blank. A small lexer of quotes, dollar quotes and
 * comments; no SQL is parsed.
 */
#include <string.h>
#include "sql_text.h"

/* Whether sql holds more than one statement: a `;` outside quotes, dollar quotes and
 * comments that is followed by anything but blanks and comments. */
int h2o_db_sql_several_statements(const char *sql)
{
    const char *p = sql;
    int seen_semicolon = 0;
    while (*p != '\0') {
        char c = *p;
        if (c == '\'' || c == '"') {
            char q = c;
            int backslashes = c == '\'' && p > sql && (p[-1] == 'E' || p[-1] == 'e');
            for (++p; *p != '\0'; ++p) {
                if (backslashes && *p == '\\' && p[1] != '\0') {
                    ++p;
                } else if (*p == q) {
                    if (p[1] == q)
                        ++p; /* doubled quote */
                    else
                        break;
                }
            }
            if (*p == '\0')
                return 0; /* unterminated: the database will say so */
            if (seen_semicolon)
                return 1;
            ++p;
        } else if (c == '-' && p[1] == '-') {
            p += strcspn(p, "\n");
        } else if (c == '/' && p[1] == '*') {
            int depth = 1;
            for (p += 2; *p != '\0' && depth > 0; ++p) {
                if (*p == '/' && p[1] == '*')
                    ++depth, ++p;
                else if (*p == '*' && p[1] == '/')
                    --depth, ++p;
            }
        } else if (c == '$' && (p == sql || !(p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z') || (p[-1] >= 'A' && p[-1] <= 'Z') ||
                                              (p[-1] >= '0' && p[-1] <= '9')))) {
            /* $tag$ ... $tag$ (but not $1) */
            size_t taglen = 1;
            while (p[taglen] == '_' || (p[taglen] >= 'a' && p[taglen] <= 'z') || (p[taglen] >= 'A' && p[taglen] <= 'Z') ||
                   (taglen > 1 && p[taglen] >= '0' && p[taglen] <= '9'))
                ++taglen;
            if (p[taglen] != '$') {
                ++p;
                continue;
            }
            ++taglen;
            if (seen_semicolon)
                return 1;
            const char *end = p + taglen;
            for (;;) {
                end = strchr(end, '$');
                if (end == NULL)
                    return 0;
                if (strncmp(end, p, taglen) == 0)
                    break;
                ++end;
            }
            p = end + taglen;
        } else if (c == ';') {
            seen_semicolon = 1;
            ++p;
        } else {
            if (seen_semicolon && !(c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'))
                return 1;
            ++p;
        }
    }
    return 0;
}

int h2o_db_sql_is_blank(const char *sql)
{
    return sql[strspn(sql, " \t\r\n\f\v;")] == '\0';
}

