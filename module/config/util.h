/*
 * Helpers shared by the configurators: relative paths and scalar parsing with
 * errors that name file:line:column.
 */
#ifndef h2o_db_config_util_h
#define h2o_db_config_util_h

#include "h2o.h"
#include "h2o/configurator.h"

/* Resolves `path` against the folder of the config file that declared `node`
 * (an absolute path is returned as is); malloc'd. */
char *h2o_db_config_path(yoml_t *node, const char *path);

/* "ON"/"OFF" → 1/0; -1 after printing an error. */
int h2o_db_config_flag(h2o_configurator_command_t *cmd, yoml_t *node);

/* Decimal number in [min, max] (seconds may have a fraction); -1 after printing an error. */
int h2o_db_config_number(h2o_configurator_command_t *cmd, yoml_t *node, const char *what, double min, double max, double *out);

/* Prints "FILE:LINE:COL: in command CMD, MESSAGE" (the server's h2o_configurator_errprintf). */
#define h2o_db_config_error h2o_configurator_errprintf

#endif
