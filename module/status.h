/*
 * db.status: ON — the pools' statistics at a path, as JSON or Prometheus text.
 */
#ifndef h2o_db_status_h
#define h2o_db_status_h

#include "h2o.h"

/* Adds the status handler to a path (config time). */
void h2o_db_status_register(h2o_pathconf_t *pathconf);

#endif
