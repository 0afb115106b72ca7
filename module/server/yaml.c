/*
 * YAML loader: libyaml's event stream turned into the yoml_t tree libh2o 2.2.5
 * expects (see include/yoml.h for the ownership rules).
 */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "server/yaml.h"

#define MAX_INCLUDE_DEPTH 16
#define MAX_NESTING       256

struct anchor {
    char *name;
    yoml_t *node;
};

struct loader {
    yaml_parser_t parser;
    const char *filename;
    char *err;
    size_t errsz;
    int failed;
    int include_depth;
    struct anchor *anchors;
    size_t num_anchors, cap_anchors;
};

static yoml_t *load_file(const char *path, int include_depth, char *err, size_t errsz);

static void failf(struct loader *l, size_t line, size_t column, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void failf(struct loader *l, size_t line, size_t column, const char *fmt, ...)
{
    if (l->failed)
        return;
    l->failed = 1;
    int n = snprintf(l->err, l->errsz, "%s:%zu:%zu: ", l->filename, line + 1, column + 1);
    if (n < 0 || (size_t)n >= l->errsz)
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(l->err + n, l->errsz - n, fmt, args);
    va_end(args);
}

static char *dup_or_null(const unsigned char *s)
{
    return s != NULL ? strdup((const char *)s) : NULL;
}

static yoml_t *new_node(struct loader *l, yoml_type_t type, size_t extra, const yaml_mark_t *mark, const unsigned char *anchor,
                        const unsigned char *tag)
{
    yoml_t *node = calloc(1, sizeof(*node) + extra);
    if (node == NULL) {
        failf(l, mark->line, mark->column, "out of memory");
        return NULL;
    }
    node->type = type;
    node->filename = strdup(l->filename);
    node->line = mark->line;
    node->column = mark->column;
    node->anchor = dup_or_null(anchor);
    node->tag = dup_or_null(tag);
    node->_refcnt = 1;
    return node;
}

static void remember_anchor(struct loader *l, yoml_t *node)
{
    if (node == NULL || node->anchor == NULL)
        return;
    if (l->num_anchors == l->cap_anchors) {
        size_t cap = l->cap_anchors == 0 ? 8 : l->cap_anchors * 2;
        struct anchor *a = realloc(l->anchors, cap * sizeof(*a));
        if (a == NULL)
            return;
        l->anchors = a;
        l->cap_anchors = cap;
    }
    /* a later anchor of the same name shadows the earlier one, as YAML says */
    l->anchors[l->num_anchors++] = (struct anchor){node->anchor, node};
}

static yoml_t *find_anchor(struct loader *l, const char *name)
{
    for (size_t i = l->num_anchors; i-- > 0;)
        if (strcmp(l->anchors[i].name, name) == 0)
            return l->anchors[i].node;
    return NULL;
}

static int next_event(struct loader *l, yaml_event_t *ev)
{
    if (yaml_parser_parse(&l->parser, ev))
        return 0;
    const char *ctx = l->parser.context != NULL ? l->parser.context : "";
    failf(l, l->parser.problem_mark.line, l->parser.problem_mark.column, "YAML syntax error: %s%s%s",
          l->parser.problem != NULL ? l->parser.problem : "malformed document", *ctx ? " " : "", ctx);
    return -1;
}

static yoml_t *parse_node(struct loader *l, yaml_event_t *ev, int depth);

/* Replaces a `!file path` scalar by the tree of that file. */
static yoml_t *include_file(struct loader *l, yoml_t *scalar)
{
    char path[4096];
    if (scalar->data.scalar[0] == '/') {
        snprintf(path, sizeof(path), "%s", scalar->data.scalar);
    } else {
        char *copy = strdup(l->filename);
        snprintf(path, sizeof(path), "%s/%s", dirname(copy), scalar->data.scalar);
        free(copy);
    }
    if (l->include_depth + 1 > MAX_INCLUDE_DEPTH) {
        failf(l, scalar->line, scalar->column, "!file includes nest deeper than %d (a loop?)", MAX_INCLUDE_DEPTH);
        return NULL;
    }
    /* a file that cannot be read is the including line's error */
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || access(path, R_OK) != 0) {
        failf(l, scalar->line, scalar->column, "!file %s: %s", path,
              stat(path, &st) != 0   ? strerror(errno)
              : !S_ISREG(st.st_mode) ? "not a regular file"
                                     : strerror(errno));
        return NULL;
    }
    yoml_t *tree = load_file(path, l->include_depth + 1, l->err, l->errsz);
    if (tree == NULL)
        l->failed = 1; /* the message is already in l->err */
    return tree;
}

static yoml_t *parse_scalar(struct loader *l, yaml_event_t *ev)
{
    yoml_t *node = new_node(l, YOML_TYPE_SCALAR, 0, &ev->start_mark, ev->data.scalar.anchor, ev->data.scalar.tag);
    if (node == NULL)
        return NULL;
    node->data.scalar = malloc(ev->data.scalar.length + 1);
    memcpy(node->data.scalar, ev->data.scalar.value, ev->data.scalar.length);
    node->data.scalar[ev->data.scalar.length] = '\0';
    if (node->tag != NULL && strcmp(node->tag, "!file") == 0) {
        yoml_t *included = include_file(l, node);
        yoml_free(node, NULL);
        return included;
    }
    return node;
}

/* The next element of a sequence, or key of a mapping: 1 with *child parsed, 0 at the collection's
 * end (end_type), -1 on an error. */
static int next_child(struct loader *l, yaml_event_type_t end_type, int depth, yoml_t **child)
{
    yaml_event_t ev;
    if (next_event(l, &ev) != 0)
        return -1;
    if (ev.type == end_type) {
        yaml_event_delete(&ev);
        return 0;
    }
    *child = parse_node(l, &ev, depth + 1);
    yaml_event_delete(&ev);
    return *child != NULL ? 1 : -1;
}

static yoml_t *parse_sequence(struct loader *l, yaml_event_t *start, int depth)
{
    size_t cap = 4;
    yoml_t *node = new_node(l, YOML_TYPE_SEQUENCE, cap * sizeof(yoml_t *), &start->start_mark, start->data.sequence_start.anchor,
                            start->data.sequence_start.tag);
    if (node == NULL)
        return NULL;
    remember_anchor(l, node);
    yoml_t *child;
    int more;
    while ((more = next_child(l, YAML_SEQUENCE_END_EVENT, depth, &child)) > 0) {
        if (node->data.sequence.size == cap) {
            cap *= 2;
            yoml_t *grown = realloc(node, sizeof(*node) + cap * sizeof(yoml_t *));
            if (grown == NULL) {
                yoml_free(child, NULL);
                goto Error;
            }
            node = grown;
        }
        node->data.sequence.elements[node->data.sequence.size++] = child;
    }
    if (more == 0)
        return node;
Error:
    yoml_free(node, NULL);
    return NULL;
}

static yoml_t *parse_mapping(struct loader *l, yaml_event_t *start, int depth)
{
    size_t cap = 4;
    yoml_t *node = new_node(l, YOML_TYPE_MAPPING, cap * sizeof(yoml_mapping_element_t), &start->start_mark,
                            start->data.mapping_start.anchor, start->data.mapping_start.tag);
    if (node == NULL)
        return NULL;
    remember_anchor(l, node);
    yoml_t *key;
    int more;
    while ((more = next_child(l, YAML_MAPPING_END_EVENT, depth, &key)) > 0) {
        if (key->type == YOML_TYPE_SCALAR) {
            for (size_t i = 0; i < node->data.mapping.size; ++i) {
                yoml_t *other = node->data.mapping.elements[i].key;
                if (other->type == YOML_TYPE_SCALAR && strcmp(other->data.scalar, key->data.scalar) == 0) {
                    failf(l, key->line, key->column, "duplicate key `%s` in one mapping (first at line %zu)", key->data.scalar,
                          other->line + 1);
                    yoml_free(key, NULL);
                    goto Error;
                }
            }
        }
        yoml_t *value = NULL;
        yaml_event_t ev;
        if (next_event(l, &ev) == 0) {
            value = parse_node(l, &ev, depth + 1);
            yaml_event_delete(&ev);
        }
        if (value == NULL) {
            yoml_free(key, NULL);
            goto Error;
        }
        if (node->data.mapping.size == cap) {
            cap *= 2;
            yoml_t *grown = realloc(node, sizeof(*node) + cap * sizeof(yoml_mapping_element_t));
            if (grown == NULL) {
                yoml_free(key, NULL);
                yoml_free(value, NULL);
                goto Error;
            }
            node = grown;
        }
        node->data.mapping.elements[node->data.mapping.size].key = key;
        node->data.mapping.elements[node->data.mapping.size].value = value;
        ++node->data.mapping.size;
    }
    if (more == 0)
        return node;
Error:
    yoml_free(node, NULL);
    return NULL;
}

static yoml_t *parse_node(struct loader *l, yaml_event_t *ev, int depth)
{
    if (depth > MAX_NESTING) {
        failf(l, ev->start_mark.line, ev->start_mark.column, "nesting deeper than %d levels", MAX_NESTING);
        return NULL;
    }
    yoml_t *node = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        node = parse_scalar(l, ev);
        remember_anchor(l, node);
        return node;
    case YAML_SEQUENCE_START_EVENT:
        return parse_sequence(l, ev, depth);
    case YAML_MAPPING_START_EVENT:
        return parse_mapping(l, ev, depth);
    case YAML_ALIAS_EVENT:
        if ((node = find_anchor(l, (const char *)ev->data.alias.anchor)) == NULL) {
            failf(l, ev->start_mark.line, ev->start_mark.column, "alias *%s names no anchor defined before it",
                  (const char *)ev->data.alias.anchor);
            return NULL;
        }
        ++node->_refcnt;
        return node;
    default:
        failf(l, ev->start_mark.line, ev->start_mark.column, "unexpected YAML event");
        return NULL;
    }
}

static yoml_t *parse_stream(struct loader *l)
{
    yoml_t *root = NULL;
    yaml_event_t ev;
    int state = 0; /* 0: before document, 1: in document (root read), 2: after document */

    for (;;) {
        if (next_event(l, &ev) != 0)
            goto Error;
        switch (ev.type) {
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_START_EVENT:
            break;
        case YAML_DOCUMENT_END_EVENT:
            state = 2;
            break;
        case YAML_STREAM_END_EVENT:
            yaml_event_delete(&ev);
            if (root == NULL)
                failf(l, 0, 0, "the file holds no YAML document");
            return root;
        default:
            if (state == 2 || root != NULL) {
                failf(l, ev.start_mark.line, ev.start_mark.column, "only one YAML document is allowed in a config file");
                yaml_event_delete(&ev);
                goto Error;
            }
            root = parse_node(l, &ev, 0);
            if (root == NULL) {
                yaml_event_delete(&ev);
                goto Error;
            }
            state = 1;
            break;
        }
        yaml_event_delete(&ev);
    }
Error:
    yoml_free(root, NULL);
    return NULL;
}

static yoml_t *run_loader(struct loader *l)
{
    yoml_t *root = parse_stream(l);
    if (l->failed) {
        yoml_free(root, NULL);
        root = NULL;
    }
    free(l->anchors);
    yaml_parser_delete(&l->parser);
    return root;
}

static yoml_t *load_file(const char *path, int include_depth, char *err, size_t errsz)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        snprintf(err, errsz, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct loader l = {.filename = path, .err = err, .errsz = errsz, .include_depth = include_depth};
    yaml_parser_initialize(&l.parser);
    yaml_parser_set_input_file(&l.parser, fp);
    yoml_t *root = run_loader(&l);
    fclose(fp);
    return root;
}

yoml_t *h2o_db_yaml_load_file(const char *path, char *err, size_t errsz)
{
    return load_file(path, 0, err, errsz);
}

yoml_t *h2o_db_yaml_load_string(const char *filename, const char *text, size_t len, char *err, size_t errsz)
{
    struct loader l = {.filename = filename, .err = err, .errsz = errsz};
    yaml_parser_initialize(&l.parser);
    yaml_parser_set_input_string(&l.parser, (const unsigned char *)text, len);
    return run_loader(&l);
}
