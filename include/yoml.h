/*
 * yoml.h - the YAML node tree that libh2o 2.2.5's configurator walks.
 *
 * Debian's libh2o-dev ships h2o/configurator.h, which includes "yoml.h", but not
 * yoml.h itself. This header reproduces the ABI that the compiled library expects
 * (field order, sizes and the meaning of _refcnt), so trees built by
 * module/server/yaml.c can be handed to h2o_configurator_apply().
 *
 * Ownership rules the library relies on:
 *  - every node and every string in it comes from malloc(); the library frees
 *    nodes with free() through yoml_free();
 *  - _refcnt starts at 1; a node reachable twice (a YAML alias) holds one count
 *    per reference;
 *  - line and column are 0-based (the library prints line + 1).
 *
 * t/test_yaml.c asserts the layout (offsets 0/8/16/24/32/40/48/56, size 80 on x86_64).
 */
#ifndef yoml_h
#define yoml_h

#ifdef __cplusplus
extern "C" {
#endif

#include <stdlib.h>
#include <string.h>

typedef enum enum_yoml_type_t {
    YOML_TYPE_SCALAR = 0,
    YOML_TYPE_SEQUENCE = 1,
    YOML_TYPE_MAPPING = 2,
    YOML__TYPE_UNRESOLVED_ALIAS = 3
} yoml_type_t;

typedef struct st_yoml_t yoml_t;

typedef struct st_yoml_sequence_t {
    size_t size;
    yoml_t *elements[1]; /* allocated to `size` entries */
} yoml_sequence_t;

typedef struct st_yoml_mapping_element_t {
    yoml_t *key;
    yoml_t *value;
} yoml_mapping_element_t;

typedef struct st_yoml_mapping_t {
    size_t size;
    yoml_mapping_element_t elements[1]; /* allocated to `size` entries */
} yoml_mapping_t;

struct st_yoml_t {
    yoml_type_t type;
    char *filename;
    size_t line;
    size_t column;
    char *anchor;
    char *tag;
    size_t _refcnt;
    union {
        char *scalar;
        yoml_sequence_t sequence;
        yoml_mapping_t mapping;
        char *alias;
    } data;
};

/* Drops one reference; frees the node and its children when none is left.
 * mem_set, when given, wipes scalars before they are freed (for secrets). */
static inline void yoml_free(yoml_t *node, void *(*mem_set)(void *, int, size_t))
{
    if (node == NULL || --node->_refcnt != 0)
        return;
    free(node->filename);
    free(node->anchor);
    free(node->tag);
    switch (node->type) {
    case YOML_TYPE_SCALAR:
        if (mem_set != NULL)
            mem_set(node->data.scalar, 0, strlen(node->data.scalar));
        free(node->data.scalar);
        break;
    case YOML_TYPE_SEQUENCE:
        for (size_t i = 0; i < node->data.sequence.size; ++i)
            yoml_free(node->data.sequence.elements[i], mem_set);
        break;
    case YOML_TYPE_MAPPING:
        for (size_t i = 0; i < node->data.mapping.size; ++i) {
            yoml_free(node->data.mapping.elements[i].key, mem_set);
            yoml_free(node->data.mapping.elements[i].value, mem_set);
        }
        break;
    case YOML__TYPE_UNRESOLVED_ALIAS:
        free(node->data.alias);
        break;
    }
    free(node);
}

/* The value stored under the scalar key `name` of a mapping, or NULL. */
static inline yoml_t *yoml_get(yoml_t *node, const char *name)
{
    if (node == NULL || node->type != YOML_TYPE_MAPPING)
        return NULL;
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *key = node->data.mapping.elements[i].key;
        if (key->type == YOML_TYPE_SCALAR && strcmp(key->data.scalar, name) == 0)
            return node->data.mapping.elements[i].value;
    }
    return NULL;
}

#ifdef __cplusplus
}
#endif

#endif
