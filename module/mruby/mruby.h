/*
 * mruby handlers: `mruby.handler` (inline Ruby) and `mruby.handler-file` (a .rb file
 * relative to the config file naming it, else to the working directory), at path level. Each returns a Rack app whose
 * H2O::DB queries suspend the request's Fiber instead of the thread. See docs/mruby.md.
 */
#ifndef h2o_db_mruby_h
#define h2o_db_mruby_h

#include "h2o.h"

/* Adds mruby.handler and mruby.handler-file to a globalconf. */
void h2o_db_mruby_register_configurator(h2o_globalconf_t *conf);

#endif
