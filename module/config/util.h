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

/* 0 when no scalar key is written twice in the mapping `node`; else -1 after printing
 * "duplicate key `K` in one mapping (first at line N)" at the second one. The YAML loader
 * keeps repeated keys (libh2o applies each occurrence of a command); an option mapping
 * such as db.bind's, whose keys are read once, refuses them with this. */
int h2o_db_config_unique_keys(h2o_configurator_command_t *cmd, yoml_t *node);

/* Prints "FILE:LINE:COL: in command CMD, MESSAGE" (the server's h2o_configurator_errprintf). */
#define h2o_db_config_error h2o_configurator_errprintf

#endif
