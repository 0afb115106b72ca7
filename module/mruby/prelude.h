/*
 * The Ruby side of the mruby handler (the .rb files in module/mruby/prelude/), compiled into the
 * binary by embed.py at build time and loaded, in this order, into every mrb_state.
 */
#ifndef h2o_db_mruby_prelude_h
#define h2o_db_mruby_prelude_h

#include <stddef.h>

typedef struct st_h2o_db_mruby_prelude_file_t {
    const char *name; /* "(h2o-db)/db.rb": what backtraces show */
    const char *source;
    size_t len;
} h2o_db_mruby_prelude_file_t;

extern const h2o_db_mruby_prelude_file_t h2o_db_mruby_prelude[];
extern const size_t h2o_db_mruby_prelude_count;

#endif
