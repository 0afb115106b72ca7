/*
 * replicas: and replica: of a db.bind (config/replicas.c): YAML in, the bind's children out.
 */
#ifndef h2o_db_config_replicas_h
#define h2o_db_config_replicas_h

#include "h2o/configurator.h"
#include "config/config.h"

/* Reads `replicas` (a URL or a list) and `replica` (either may be NULL) into bind's children, after
 * the rest of the bind was read; -1 after printing an error (file:line). Main thread, config time. */
int h2o_db_config_replicas(h2o_configurator_command_t *cmd, h2o_db_bind_t *bind, yoml_t *replicas, yoml_t *replica);

/* Appends bind's children to config->binds (after bind itself), giving them their ids. */
void h2o_db_config_add_replicas(h2o_db_config_t *config, h2o_db_bind_t *bind);

#endif
