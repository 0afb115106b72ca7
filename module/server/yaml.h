/*
 * YAML → yoml_t, with libyaml. The trees follow include/yoml.h's ownership
 * rules, so libh2o's configurator can walk and free them.
 */
#ifndef h2o_db_server_yaml_h
#define h2o_db_server_yaml_h

#include <stddef.h>
#include "yoml.h"

/* Parses a config file. Anchors and aliases share nodes (refcounted); a scalar
 * tagged `!file` is replaced by the tree of that file, relative to the folder of
 * the file naming it; a key repeated in one mapping is an error.
 * On failure returns NULL and writes "FILE:LINE:COL: MESSAGE" into err. */
yoml_t *h2o_db_yaml_load_file(const char *path, char *err, size_t errsz);

/* The same for text held in memory; `filename` is what the nodes (and errors) name. */
yoml_t *h2o_db_yaml_load_string(const char *filename, const char *text, size_t len, char *err, size_t errsz);

#endif
