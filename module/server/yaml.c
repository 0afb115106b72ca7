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

/* The anchors defined so far, in the order they were defined. One table serves a file and every
 * file it includes, so an anchor of an included file can be aliased after the include (as h2o,
 * which resolves aliases over the whole document, the included trees in it). Each entry holds a
 * reference to its node. */
struct anchor {
    char *name;
    yoml_t *node;
};

struct anchors {
    struct anchor *entries;
    size_t size, cap;
};

struct loader {
    yaml_parser_t parser;
    const char *filename;
    char *err;
    size_t errsz;
    int failed;
    int include_depth;
    struct anchors *anchors;
};

static yoml_t *load_file(const char *path, int include_depth, struct anchors *anchors, char *err, size_t errsz);

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

/* Records `&name` for a node once it is complete (a collection's anchor is not visible inside it,
 * and the node no longer moves); 0, or -1 when out of memory. */
static int remember_anchor(struct loader *l, const unsigned char *name, yoml_t *node, const yaml_mark_t *mark)
{
    if (name == NULL)
        return 0;
    struct anchors *a = l->anchors;
    if (a->size == a->cap) {
        size_t cap = a->cap == 0 ? 8 : a->cap * 2;
        struct anchor *grown = realloc(a->entries, cap * sizeof(*grown));
        if (grown == NULL)
            goto NoMemory;
        a->entries = grown;
        a->cap = cap;
    }
    char *copy = strdup((const char *)name);
    if (copy == NULL)
        goto NoMemory;
    /* a later anchor of the same name shadows the earlier one, as YAML says */
    a->entries[a->size++] = (struct anchor){copy, node};
    ++node->_refcnt;
    return 0;
NoMemory:
    failf(l, mark->line, mark->column, "out of memory");
    return -1;
}

static yoml_t *find_anchor(struct loader *l, const char *name)
{
    for (size_t i = l->anchors->size; i-- > 0;)
        if (strcmp(l->anchors->entries[i].name, name) == 0)
            return l->anchors->entries[i].node;
    return NULL;
}

static void free_anchors(struct anchors *a)
{
    for (size_t i = 0; i < a->size; ++i) {
        free(a->entries[i].name);
        yoml_free(a->entries[i].node, NULL);
    }
    free(a->entries);
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
    yoml_t *tree = load_file(path, l->include_depth + 1, l->anchors, l->err, l->errsz);
    if (tree == NULL)
        l->failed = 1; /* the message is already in l->err */
    return tree;
}

static yoml_t *parse_scalar(struct loader *l, yaml_event_t *ev)
{
    yoml_t *node = new_node(l, YOML_TYPE_SCALAR, 0, &ev->start_mark, ev->data.scalar.anchor, ev->data.scalar.tag);
    if (node == NULL)
        return NULL;
    if ((node->data.scalar = malloc(ev->data.scalar.length + 1)) == NULL) {
        failf(l, ev->start_mark.line, ev->start_mark.column, "out of memory");
        free(node->filename);
        free(node->anchor);
        free(node->tag);
        free(node);
        return NULL;
    }
    memcpy(node->data.scalar, ev->data.scalar.value, ev->data.scalar.length);
    node->data.scalar[ev->data.scalar.length] = '\0';
    if (node->tag != NULL && strcmp(node->tag, "!file") == 0) {
        /* `&name !file x.yaml` names the included tree */
        yoml_t *included = include_file(l, node);
        yoml_free(node, NULL);
        node = included;
    }
    if (node != NULL && remember_anchor(l, ev->data.scalar.anchor, node, &ev->start_mark) != 0) {
        yoml_free(node, NULL);
        return NULL;
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
    yoml_t *child;
    int more;
    while ((more = next_child(l, YAML_SEQUENCE_END_EVENT, depth, &child)) > 0) {
        if (node->data.sequence.size == cap) {
            cap *= 2;
            yoml_t *grown = realloc(node, sizeof(*node) + cap * sizeof(yoml_t *));
            if (grown == NULL) {
                failf(l, child->line, child->column, "out of memory");
                yoml_free(child, NULL);
                goto Error;
            }
            node = grown;
        }
        node->data.sequence.elements[node->data.sequence.size++] = child;
    }
    if (more == 0 && remember_anchor(l, start->data.sequence_start.anchor, node, &start->start_mark) == 0)
        return node;
Error:
    yoml_free(node, NULL);
    return NULL;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Inserts the entries of the mapping `src` into *dest at `at`, as h2o 2.2.5's yoml does: an entry
 * is left out when its key is written in *dest after the `<<` (those win); keys written before
 * the `<<` do not suppress it (both are kept, and the configurator applies both). The entries
 * are shared with `src` (refcounted), so they keep the file and line where their text is.
 * 0, 1 when `src` is not a mapping, -1 when out of memory. */
static int merge_one(yoml_t **dest, size_t at, yoml_t *src)
{
    if (src->type != YOML_TYPE_MAPPING)
        return 1;
    yoml_t *d = *dest;
    size_t size = d->data.mapping.size, num_later = 0, num_kept = 0;
    const char **later = malloc((size - at + 1) * sizeof(*later));
    yoml_mapping_element_t *kept = malloc((src->data.mapping.size + 1) * sizeof(*kept));
    if (later == NULL || kept == NULL)
        goto NoMemory;
    for (size_t i = at; i < size; ++i)
        if (d->data.mapping.elements[i].key->type == YOML_TYPE_SCALAR)
            later[num_later++] = d->data.mapping.elements[i].key->data.scalar;
    qsort(later, num_later, sizeof(*later), by_name);
    for (size_t i = 0; i < src->data.mapping.size; ++i) {
        yoml_mapping_element_t e = src->data.mapping.elements[i];
        if (e.key->type == YOML_TYPE_SCALAR && bsearch(&e.key->data.scalar, later, num_later, sizeof(*later), by_name) != NULL)
            continue;
        kept[num_kept++] = e;
    }
    if (num_kept != 0) {
        if ((d = realloc(d, sizeof(*d) + (size + num_kept) * sizeof(yoml_mapping_element_t))) == NULL)
            goto NoMemory;
        *dest = d;
        memmove(d->data.mapping.elements + at + num_kept, d->data.mapping.elements + at, (size - at) * sizeof(*kept));
        for (size_t i = 0; i < num_kept; ++i) {
            ++kept[i].key->_refcnt;
            ++kept[i].value->_refcnt;
            d->data.mapping.elements[at + i] = kept[i];
        }
        d->data.mapping.size += num_kept;
    }
    free(later);
    free(kept);
    return 0;
NoMemory:
    free(later);
    free(kept);
    return -1;
}

/* Replaces each `<<: MAPPING` and `<<: [MAPPING, ...]` entry of a complete mapping by the entries
 * it merges, last to first; of a list, the entries of an earlier mapping win over a later one's. */
static int resolve_merges(struct loader *l, yoml_t **node)
{
    for (size_t i = (*node)->data.mapping.size; i-- > 0;) {
        yoml_mapping_element_t merge = (*node)->data.mapping.elements[i];
        if (merge.key->type != YOML_TYPE_SCALAR || strcmp(merge.key->data.scalar, "<<") != 0)
            continue;
        yoml_t *d = *node;
        memmove(d->data.mapping.elements + i, d->data.mapping.elements + i + 1, (d->data.mapping.size - i - 1) * sizeof(merge));
        --d->data.mapping.size;
        int ret = 0;
        if (merge.value->type == YOML_TYPE_SEQUENCE) {
            for (size_t j = 0; ret == 0 && j < merge.value->data.sequence.size; ++j)
                ret = merge_one(node, i, merge.value->data.sequence.elements[j]);
        } else {
            ret = merge_one(node, i, merge.value);
        }
        if (ret != 0)
            failf(l, merge.key->line, merge.key->column,
                  ret > 0 ? "the value of the merge key `<<` must be a mapping or a sequence of mappings" : "out of memory");
        yoml_free(merge.key, NULL);
        yoml_free(merge.value, NULL);
        if (ret != 0)
            return -1;
    }
    return 0;
}

static yoml_t *parse_mapping(struct loader *l, yaml_event_t *start, int depth)
{
    size_t cap = 4;
    yoml_t *node = new_node(l, YOML_TYPE_MAPPING, cap * sizeof(yoml_mapping_element_t), &start->start_mark,
                            start->data.mapping_start.anchor, start->data.mapping_start.tag);
    if (node == NULL)
        return NULL;
    /* a key written twice is kept twice, in order: libh2o's configurator applies each occurrence */
    yoml_t *key;
    int more;
    while ((more = next_child(l, YAML_MAPPING_END_EVENT, depth, &key)) > 0) {
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
                failf(l, key->line, key->column, "out of memory");
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
    if (more == 0 && resolve_merges(l, &node) == 0 &&
        remember_anchor(l, start->data.mapping_start.anchor, node, &start->start_mark) == 0)
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
        return parse_scalar(l, ev);
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
    yaml_parser_delete(&l->parser);
    return root;
}

static yoml_t *load_file(const char *path, int include_depth, struct anchors *anchors, char *err, size_t errsz)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        snprintf(err, errsz, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct loader l = {.filename = path, .err = err, .errsz = errsz, .include_depth = include_depth, .anchors = anchors};
    yaml_parser_initialize(&l.parser);
    yaml_parser_set_input_file(&l.parser, fp);
    yoml_t *root = run_loader(&l);
    fclose(fp);
    return root;
}

yoml_t *h2o_db_yaml_load_file(const char *path, char *err, size_t errsz)
{
    struct anchors anchors = {NULL};
    yoml_t *root = load_file(path, 0, &anchors, err, errsz);
    free_anchors(&anchors);
    return root;
}

yoml_t *h2o_db_yaml_load_string(const char *filename, const char *text, size_t len, char *err, size_t errsz)
{
    struct anchors anchors = {NULL};
    struct loader l = {.filename = filename, .err = err, .errsz = errsz, .anchors = &anchors};
    yaml_parser_initialize(&l.parser);
    yaml_parser_set_input_string(&l.parser, (const unsigned char *)text, len);
    yoml_t *root = run_loader(&l);
    free_anchors(&anchors);
    return root;
}
