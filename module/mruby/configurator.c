/*
 * mruby.handler / mruby.handler-file: YAML in, a registered handler out (handler.c is the
 * runtime). The source is inline Ruby, or a .rb file relative to the config file's folder
 * (else, where h2o opens it, to the working directory); it is compiled and run once here, in
 * a throwaway VM, so that a syntax error or an exception is a config error at FILE:LINE.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/util.h"
#include "mruby/internal.h"
#include "mruby/mruby.h"

/* Whether the scalar at node is a block scalar (`|` or `>`): its text starts on the next line. */
static int is_block_scalar(yoml_t *node)
{
    int found = -1;
    FILE *fp = node->filename != NULL ? fopen(node->filename, "r") : NULL;
    if (fp != NULL) {
        size_t line = 0, column = 0;
        int c;
        while ((c = getc(fp)) != EOF) {
            if (line == node->line && column == node->column) {
                found = c == '|' || c == '>';
                break;
            }
            if (c == '\n') {
                if (line == node->line)
                    break;
                ++line;
                column = 0;
            } else {
                ++column;
            }
        }
        fclose(fp);
    }
    if (found == -1) /* guess: a block scalar keeps its final newline */
        found = strchr(node->data.scalar, '\n') != NULL;
    return found;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n + 4096 + 1 > cap) {
            cap = (n + 4096 + 1) * 2;
            char *p = realloc(buf, cap);
            if (p == NULL) {
                free(buf);
                fclose(fp);
                errno = ENOMEM;
                return NULL;
            }
            buf = p;
        }
        r = fread(buf + n, 1, cap - n - 1, fp);
        n += r;
    } while (r != 0);
    int failed = ferror(fp);
    fclose(fp);
    if (failed) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The file of mruby.handler-file: relative to the config file's folder, else (as h2o opens it)
 * to the working directory. NULL after printing an error. */
static char *read_source_file(h2o_configurator_command_t *cmd, yoml_t *node, char **filename, size_t *len)
{
    char *source, *beside = h2o_db_config_path(node, node->data.scalar);
    if ((source = read_file(beside, len)) != NULL) {
        *filename = beside;
        return source;
    }
    int err = errno;
    if (err == ENOENT && strcmp(beside, node->data.scalar) != 0) {
        if ((source = read_file(node->data.scalar, len)) != NULL) {
            free(beside);
            *filename = strdup(node->data.scalar);
            return source;
        }
        if (errno == ENOENT)
            h2o_configurator_errprintf(cmd, node, "cannot read `%s` (nor `%s` in the working directory): %s", beside,
                                       node->data.scalar, strerror(err));
        else
            h2o_configurator_errprintf(cmd, node, "cannot read `%s`: %s", node->data.scalar, strerror(errno));
    } else {
        h2o_configurator_errprintf(cmd, node, "cannot read `%s`: %s", beside, strerror(err));
    }
    free(beside);
    return NULL;
}

static int on_config_handler(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    int is_file = strcmp(cmd->name, "mruby.handler-file") == 0;
    char *source, *filename, err[2048];
    size_t len;
    unsigned lineno;

    if (is_file) {
        if ((source = read_source_file(cmd, node, &filename, &len)) == NULL)
            return -1;
        lineno = 1;
    } else {
        source = strdup(node->data.scalar);
        len = strlen(source);
        filename = strdup(node->filename != NULL ? node->filename : "(config)");
        lineno = (unsigned)node->line + 1 + (is_block_scalar(node) ? 1 : 0);
    }

    if (h2o_db_mruby_check_source(source, len, filename, lineno, err, sizeof(err)) != 0) {
        h2o_configurator_errprintf(cmd, node, "%s", err);
        free(source);
        free(filename);
        return -1;
    }
    h2o_db_mruby_register(ctx->pathconf, source, len, filename, lineno);
    return 0;
}

void h2o_db_mruby_register_configurator(h2o_globalconf_t *conf)
{
    h2o_configurator_t *c = h2o_configurator_create(conf, sizeof(*c));
    int flags = H2O_CONFIGURATOR_FLAG_PATH | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR | H2O_CONFIGURATOR_FLAG_DEFERRED;
    h2o_configurator_define_command(c, "mruby.handler", flags, on_config_handler);
    h2o_configurator_define_command(c, "mruby.handler-file", flags, on_config_handler);
}
