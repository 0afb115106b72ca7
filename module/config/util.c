/*
 * Helpers shared by the configurators.
 */
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "config/util.h"

char *h2o_db_config_path(yoml_t *node, const char *path)
{
    if (path[0] == '/' || node == NULL || node->filename == NULL)
        return strdup(path);
    char *copy = strdup(node->filename);
    const char *dir = dirname(copy);
    size_t len = strlen(dir) + 1 + strlen(path) + 1;
    char *out = malloc(len);
    snprintf(out, len, "%s/%s", dir, path);
    free(copy);
    return out;
}

int h2o_db_config_flag(h2o_configurator_command_t *cmd, yoml_t *node)
{
    if (node->type == YOML_TYPE_SCALAR) {
        if (strcasecmp(node->data.scalar, "ON") == 0)
            return 1;
        if (strcasecmp(node->data.scalar, "OFF") == 0)
            return 0;
    }
    h2o_configurator_errprintf(cmd, node, "expected ON or OFF");
    return -1;
}

int h2o_db_config_number(h2o_configurator_command_t *cmd, yoml_t *node, const char *what, double min, double max, double *out)
{
    if (node->type != YOML_TYPE_SCALAR) {
        h2o_configurator_errprintf(cmd, node, "%s must be a number", what);
        return -1;
    }
    char *end;
    errno = 0;
    double v = strtod(node->data.scalar, &end);
    if (end == node->data.scalar || *end != '\0' || errno != 0 || isnan(v)) {
        h2o_configurator_errprintf(cmd, node, "%s must be a number, not `%s`", what, node->data.scalar);
        return -1;
    }
    if (v < min || v > max) {
        h2o_configurator_errprintf(cmd, node, "%s must be between %g and %g, not %s", what, min, max, node->data.scalar);
        return -1;
    }
    *out = v;
    return 0;
}

int h2o_db_config_unique_keys(h2o_configurator_command_t *cmd, yoml_t *node)
{
    if (node->type != YOML_TYPE_MAPPING)
        return 0;
    for (size_t i = 1; i < node->data.mapping.size; ++i) {
        yoml_t *key = node->data.mapping.elements[i].key;
        if (key->type != YOML_TYPE_SCALAR)
            continue;
        for (size_t j = 0; j < i; ++j) {
            yoml_t *first = node->data.mapping.elements[j].key;
            if (first->type != YOML_TYPE_SCALAR || strcmp(first->data.scalar, key->data.scalar) != 0)
                continue;
            /* a key merged with `<<` may come from another file */
            if (first->filename != NULL && key->filename != NULL && strcmp(first->filename, key->filename) != 0)
                h2o_configurator_errprintf(cmd, key, "duplicate key `%s` in one mapping (first at %s:%zu)", key->data.scalar,
                                           first->filename, first->line + 1);
            else
                h2o_configurator_errprintf(cmd, key, "duplicate key `%s` in one mapping (first at line %zu)", key->data.scalar,
                                           first->line + 1);
            return -1;
        }
    }
    return 0;
}
