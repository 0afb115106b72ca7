/*
 * YAML → yoml_t, with libyaml. The trees follow include/yoml.h's ownership
 * rules, so libh2o's configurator can walk and free them.
 */
#ifndef h2o_db_server_yaml_h
#define h2o_db_server_yaml_h

#include <stddef.h>
#include "yoml.h"

/* Parses a config file as h2o 2.2.5 reads h2o.conf:
 *  - anchors and aliases share nodes (refcounted);
 *  - a scalar tagged `!file` is replaced by the tree of that file, relative to the
 *    folder of the file naming it; anchors defined in an included file can be
 *    aliased after the include (one anchor table serves the file and its includes);
 *  - a key repeated in one mapping is kept once per occurrence, in order (libh2o's
 *    configurator applies each one);
 *  - `<<: MAPPING` and `<<: [MAPPING, ...]` (an alias, a `!file`, or written in
 *    place) merge that mapping's entries where the `<<` stands, except those whose
 *    key is written after the `<<` in the same mapping (keys written before it are
 *    kept beside the merged ones, as h2o's yoml does); of a list, an earlier
 *    mapping's key wins over a later one's.
 * Every node names the file and line where its text is, merged or included.
 * On failure returns NULL and writes "FILE:LINE:COL: MESSAGE" into err. */
yoml_t *h2o_db_yaml_load_file(const char *path, char *err, size_t errsz);

/* The same for text held in memory; `filename` is what the nodes (and errors) name. */
yoml_t *h2o_db_yaml_load_string(const char *filename, const char *text, size_t len, char *err, size_t errsz);

#endif
