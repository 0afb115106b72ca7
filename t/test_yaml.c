/*
 * The YAML loader: the trees it builds must be what libh2o 2.2.5 expects
 * (layout, refcounts, 0-based lines) and its errors must name file:line:column.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "harness.h"
#include "server/yaml.h"

static yoml_t *load(const char *text, char *err)
{
    return h2o_db_yaml_load_string("test.conf", text, strlen(text), err, 512);
}

START_TEST(layout_matches_libh2o_2_2_5)
{
    /* docs/architecture.md: the compiled library reads these offsets */
    ck_assert_uint_eq(offsetof(yoml_t, type), 0);
    ck_assert_uint_eq(offsetof(yoml_t, filename), 8);
    ck_assert_uint_eq(offsetof(yoml_t, line), 16);
    ck_assert_uint_eq(offsetof(yoml_t, column), 24);
    ck_assert_uint_eq(offsetof(yoml_t, anchor), 32);
    ck_assert_uint_eq(offsetof(yoml_t, tag), 40);
    ck_assert_uint_eq(offsetof(yoml_t, _refcnt), 48);
    ck_assert_uint_eq(offsetof(yoml_t, data), 56);
    ck_assert_uint_eq(offsetof(yoml_t, data.sequence.elements), 64);
    ck_assert_uint_eq(offsetof(yoml_t, data.mapping.elements), 64);
    ck_assert_uint_eq(sizeof(yoml_mapping_element_t), 16);
    ck_assert_uint_eq(sizeof(yoml_t), 80);
    ck_assert_int_eq(YOML_TYPE_SCALAR, 0);
    ck_assert_int_eq(YOML_TYPE_SEQUENCE, 1);
    ck_assert_int_eq(YOML_TYPE_MAPPING, 2);
    ck_assert_int_eq(YOML__TYPE_UNRESOLVED_ALIAS, 3);
}
END_TEST

START_TEST(scalars_sequences_mappings)
{
    char err[512];
    yoml_t *root = load("a: 1\nb: [x, \"y z\", '']\nc:\n  d: {e: f}\n  g:\n    - h\n    - i\nempty:\n", err);
    ck_assert_msg(root != NULL, "%s", err);
    ck_assert_int_eq(root->type, YOML_TYPE_MAPPING);
    ck_assert_uint_eq(root->data.mapping.size, 4);
    ck_assert_uint_eq(root->_refcnt, 1);
    ck_assert_str_eq(root->filename, "test.conf");

    yoml_t *a = yoml_get(root, "a");
    ck_assert_int_eq(a->type, YOML_TYPE_SCALAR);
    ck_assert_str_eq(a->data.scalar, "1");
    ck_assert_uint_eq(a->line, 0);
    ck_assert_uint_eq(a->column, 3);

    yoml_t *b = yoml_get(root, "b");
    ck_assert_int_eq(b->type, YOML_TYPE_SEQUENCE);
    ck_assert_uint_eq(b->data.sequence.size, 3);
    ck_assert_str_eq(b->data.sequence.elements[1]->data.scalar, "y z");
    ck_assert_str_eq(b->data.sequence.elements[2]->data.scalar, "");

    yoml_t *c = yoml_get(root, "c");
    ck_assert_str_eq(yoml_get(yoml_get(c, "d"), "e")->data.scalar, "f");
    yoml_t *g = yoml_get(c, "g");
    ck_assert_uint_eq(g->data.sequence.size, 2);
    ck_assert_str_eq(g->data.sequence.elements[1]->data.scalar, "i");
    ck_assert_uint_eq(g->data.sequence.elements[1]->line, 6);

    /* `empty:` with nothing after it is an empty scalar, as libh2o's own loader gives */
    ck_assert_str_eq(yoml_get(root, "empty")->data.scalar, "");
    yoml_free(root, NULL);
}
END_TEST

START_TEST(anchors_and_aliases_share_nodes)
{
    char err[512];
    yoml_t *root = load("base: &b {x: 1, y: [2, 3]}\none: *b\ntwo: *b\nname: &n hello\nagain: *n\n", err);
    ck_assert_msg(root != NULL, "%s", err);
    yoml_t *base = yoml_get(root, "base");
    ck_assert_ptr_eq(yoml_get(root, "one"), base);
    ck_assert_ptr_eq(yoml_get(root, "two"), base);
    ck_assert_uint_eq(base->_refcnt, 3);
    ck_assert_str_eq(base->anchor, "b");
    ck_assert_str_eq(yoml_get(root, "again")->data.scalar, "hello");
    ck_assert_uint_eq(yoml_get(root, "again")->_refcnt, 2);
    yoml_free(root, NULL); /* frees each shared node once (ASan would tell otherwise) */
}
END_TEST

START_TEST(undefined_alias_is_an_error)
{
    char err[512];
    ck_assert_ptr_null(load("a: 1\nb: *nothing\n", err));
    ck_assert_msg(strstr(err, "test.conf:2:4:") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "nothing") != NULL, "%s", err);
}
END_TEST

START_TEST(syntax_error_names_line_and_column)
{
    char err[512];
    ck_assert_ptr_null(load("a: 1\nb:\n  - x\n  y: [1, 2\n", err));
    ck_assert_msg(strncmp(err, "test.conf:", 10) == 0, "%s", err);
    ck_assert_msg(strstr(err, "YAML syntax error") != NULL, "%s", err);
    int line = 0;
    ck_assert(sscanf(err, "test.conf:%d:", &line) == 1);
    ck_assert_msg(line >= 3 && line <= 5, "%s", err);
}
END_TEST

/* The keys of a mapping, in order, joined with spaces. */
static const char *keys_of(yoml_t *node)
{
    static char buf[512];
    buf[0] = '\0';
    ck_assert_int_eq(node->type, YOML_TYPE_MAPPING);
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *key = node->data.mapping.elements[i].key;
        ck_assert_int_eq(key->type, YOML_TYPE_SCALAR);
        snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%s", i != 0 ? " " : "", key->data.scalar);
    }
    return buf;
}

static const char *value_at(yoml_t *node, size_t i)
{
    ck_assert_uint_lt(i, node->data.mapping.size);
    ck_assert_int_eq(node->data.mapping.elements[i].value->type, YOML_TYPE_SCALAR);
    return node->data.mapping.elements[i].value->data.scalar;
}

START_TEST(repeated_keys_are_kept_in_order)
{
    /* h2o applies each occurrence: `listen` twice is two listeners, `header.add` twice two headers */
    char err[512];
    yoml_t *root = load("listen: 1\nhosts:\n  default:\n    paths:\n      /:\n        header.add: \"a: 1\"\n"
                        "        header.add: \"a: 2\"\n        header.add: \"a: 1\"\nlisten: 2\n",
                        err);
    ck_assert_msg(root != NULL, "%s", err);
    ck_assert_str_eq(keys_of(root), "listen hosts listen");
    ck_assert_str_eq(value_at(root, 0), "1");
    ck_assert_str_eq(value_at(root, 2), "2");
    ck_assert_uint_eq(root->data.mapping.elements[2].key->line, 8);
    yoml_t *path = yoml_get(yoml_get(yoml_get(yoml_get(root, "hosts"), "default"), "paths"), "/");
    ck_assert_str_eq(keys_of(path), "header.add header.add header.add");
    ck_assert_str_eq(value_at(path, 0), "a: 1");
    ck_assert_str_eq(value_at(path, 1), "a: 2");
    ck_assert_str_eq(value_at(path, 2), "a: 1");
    ck_assert_uint_eq(path->data.mapping.elements[1].value->line, 6);
    yoml_free(root, NULL);
}
END_TEST

START_TEST(merge_key_with_an_alias)
{
    char err[512];
    yoml_t *root = load("base: &b\n  x: 1\n  y: [2]\nm:\n  <<: *b\n  z: 3\n", err);
    ck_assert_msg(root != NULL, "%s", err);
    yoml_t *base = yoml_get(root, "base"), *m = yoml_get(root, "m");
    ck_assert_str_eq(keys_of(m), "x y z");
    /* the merged entries are the anchor's own nodes: they name the line where their text is */
    ck_assert_ptr_eq(m->data.mapping.elements[0].key, base->data.mapping.elements[0].key);
    ck_assert_ptr_eq(yoml_get(m, "y"), yoml_get(base, "y"));
    ck_assert_uint_eq(yoml_get(m, "x")->line, 1);
    ck_assert_uint_eq(yoml_get(m, "x")->column, 5);
    ck_assert_uint_eq(yoml_get(m, "y")->_refcnt, 2);
    ck_assert_uint_eq(base->_refcnt, 1); /* the `<<` entry is gone, with its reference */
    ck_assert_uint_eq(yoml_get(m, "z")->line, 5);
    yoml_free(root, NULL);

    /* a mapping written in place merges too, and merges nest */
    root = load("a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: {<<: *b, w: 0}, v: 4}\n", err);
    ck_assert_msg(root != NULL, "%s", err);
    ck_assert_str_eq(keys_of(yoml_get(root, "b")), "x y");
    ck_assert_str_eq(keys_of(yoml_get(root, "c")), "x y w v");
    yoml_free(root, NULL);
}
END_TEST

START_TEST(merge_key_with_a_list_of_aliases)
{
    char err[512];
    yoml_t *root = load("a: &a {x: a1, y: a2}\nb: &b {y: b2, w: b3}\nm:\n  <<: [*a, *b]\n  v: m\n", err);
    ck_assert_msg(root != NULL, "%s", err);
    yoml_t *m = yoml_get(root, "m");
    /* an earlier mapping's key wins over a later one's; the order is h2o 2.2.5's yoml's (each
     * mapping of the list is inserted where the `<<` stands, before the ones already merged) */
    ck_assert_str_eq(keys_of(m), "w x y v");
    ck_assert_str_eq(yoml_get(m, "y")->data.scalar, "a2");
    ck_assert_uint_eq(yoml_get(m, "y")->line, 0);
    ck_assert_str_eq(yoml_get(m, "w")->data.scalar, "b3");
    ck_assert_uint_eq(yoml_get(m, "w")->line, 1);
    yoml_free(root, NULL);

    /* an empty list merges nothing */
    root = load("m: {<<: [], v: 1}\n", err);
    ck_assert_msg(root != NULL, "%s", err);
    ck_assert_str_eq(keys_of(yoml_get(root, "m")), "v");
    yoml_free(root, NULL);
}
END_TEST

START_TEST(explicit_keys_after_the_merge_key_win)
{
    char err[512];
    yoml_t *root = load("d: &d {listen: 1, paths: {}}\nafter:\n  <<: *d\n  listen: 3\nbefore:\n  listen: 2\n  <<: *d\n", err);
    ck_assert_msg(root != NULL, "%s", err);
    yoml_t *after = yoml_get(root, "after");
    ck_assert_str_eq(keys_of(after), "paths listen");
    ck_assert_str_eq(yoml_get(after, "listen")->data.scalar, "3");
    ck_assert_uint_eq(yoml_get(after, "listen")->line, 3);
    /* a key written before `<<` does not suppress the merged one: h2o 2.2.5 keeps both (its
     * t/80yaml-merge.t: a host with `listen` and then `<<: *default` listens on both ports) */
    yoml_t *before = yoml_get(root, "before");
    ck_assert_str_eq(keys_of(before), "listen listen paths");
    ck_assert_str_eq(value_at(before, 0), "2");
    ck_assert_str_eq(value_at(before, 1), "1");
    ck_assert_uint_eq(before->data.mapping.elements[1].value->line, 0);
    yoml_free(root, NULL);
}
END_TEST

START_TEST(merge_key_errors)
{
    char err[512];
    ck_assert_ptr_null(load("a: 1\nm:\n  <<: scalar\n", err));
    ck_assert_msg(strstr(err, "test.conf:3:3:") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "merge key `<<` must be a mapping or a sequence of mappings") != NULL, "%s", err);
    ck_assert_ptr_null(load("a: &a {x: 1}\nm: {<<: [*a, [1]]}\n", err));
    ck_assert_msg(strstr(err, "test.conf:2:5:") != NULL, "%s", err);
    ck_assert_ptr_null(load("m: {<<: *nothing}\n", err));
    ck_assert_msg(strstr(err, "test.conf:1:9:") != NULL && strstr(err, "nothing") != NULL, "%s", err);
}
END_TEST

START_TEST(merge_key_with_file_includes)
{
    /* h2o's t/50config-tag.t, "with-merge": a `<<: !file` whose file merges another */
    char *dir = th_tmpdir();
    free(th_write_file(dir, "inc2.yaml", "header.add: \"foo: FOO\"\n", 0));
    free(th_write_file(dir, "inc1.yaml", "<<: !file inc2.yaml\nheader.append: \"bar: BAR\"\n", 0));
    char *main = th_write_file(dir, "main.conf",
                               "hosts:\n  default:\n    paths:\n      /:\n        <<: !file inc1.yaml\n        file.dir: www\n", 0);
    char err[512];
    yoml_t *root = h2o_db_yaml_load_file(main, err, sizeof(err));
    ck_assert_msg(root != NULL, "%s", err);
    yoml_t *path = yoml_get(yoml_get(yoml_get(yoml_get(root, "hosts"), "default"), "paths"), "/");
    ck_assert_str_eq(keys_of(path), "header.add header.append file.dir");
    /* each node names the file and line where its text is */
    yoml_t *add = yoml_get(path, "header.add"), *append = yoml_get(path, "header.append"), *fdir = yoml_get(path, "file.dir");
    ck_assert_str_eq(add->data.scalar, "foo: FOO");
    ck_assert_msg(strstr(add->filename, "/inc2.yaml") != NULL, "%s", add->filename);
    ck_assert_uint_eq(add->line, 0);
    ck_assert_uint_eq(add->column, 12);
    ck_assert_msg(strstr(append->filename, "/inc1.yaml") != NULL, "%s", append->filename);
    ck_assert_uint_eq(append->line, 1);
    ck_assert_msg(strstr(path->data.mapping.elements[1].key->filename, "/inc1.yaml") != NULL, "%s",
                  path->data.mapping.elements[1].key->filename);
    ck_assert_str_eq(fdir->filename, main);
    ck_assert_uint_eq(fdir->line, 5);
    yoml_free(root, NULL);

    /* an error in a merged file names that file */
    free(th_write_file(dir, "bad.yaml", "ok: 1\n<<: [1, 2]\n", 0));
    char *bad = th_write_file(dir, "bad.conf", "a:\n  <<: !file bad.yaml\n", 0);
    ck_assert_ptr_null(h2o_db_yaml_load_file(bad, err, sizeof(err)));
    ck_assert_msg(strstr(err, "/bad.yaml:2:1:") != NULL && strstr(err, "merge key") != NULL, "%s", err);
    free(bad);
    free(main);
    free(dir);
}
END_TEST

START_TEST(anchors_of_an_included_file_are_visible_after_it)
{
    /* h2o's t/50config-tag.t, "with-alias" and "multi-hop" */
    char *dir = th_tmpdir();
    free(th_write_file(dir, "inc.yaml", "header.add: &marked \"foo: FOO\"\nfile.dir: www\n", 0));
    free(th_write_file(dir, "hop.yaml", "!file inc.yaml\n", 0));
    char *main = th_write_file(dir, "main.conf",
                               "hosts:\n  default:\n    paths:\n      /: !file hop.yaml\n      /another:\n"
                               "        header.add: *marked\n        file.dir: www\n      /named: &inc !file inc.yaml\n"
                               "      /again: *inc\n",
                               0);
    char err[512];
    yoml_t *root = h2o_db_yaml_load_file(main, err, sizeof(err));
    ck_assert_msg(root != NULL, "%s", err);
    yoml_t *paths = yoml_get(yoml_get(yoml_get(root, "hosts"), "default"), "paths");
    yoml_t *included = yoml_get(paths, "/"), *another = yoml_get(paths, "/another");
    ck_assert_str_eq(keys_of(included), "header.add file.dir");
    ck_assert_ptr_eq(yoml_get(another, "header.add"), yoml_get(included, "header.add"));
    yoml_t *marked = yoml_get(another, "header.add");
    ck_assert_str_eq(marked->data.scalar, "foo: FOO");
    ck_assert_msg(strstr(marked->filename, "/inc.yaml") != NULL, "%s", marked->filename);
    ck_assert_uint_eq(marked->line, 0);
    ck_assert_str_eq(yoml_get(another, "file.dir")->filename, main);
    /* `&name !file PATH` names the included tree */
    ck_assert_ptr_eq(yoml_get(paths, "/again"), yoml_get(paths, "/named"));
    ck_assert_str_eq(keys_of(yoml_get(paths, "/again")), "header.add file.dir");
    ck_assert_uint_eq(yoml_get(paths, "/named")->_refcnt, 2);
    yoml_free(root, NULL);

    /* an anchor is visible after the include only, not before it */
    char *early = th_write_file(dir, "early.conf", "a: *marked\nb: !file inc.yaml\n", 0);
    ck_assert_ptr_null(h2o_db_yaml_load_file(early, err, sizeof(err)));
    ck_assert_msg(strstr(err, "early.conf:1:4:") != NULL && strstr(err, "marked") != NULL, "%s", err);
    free(early);
    free(main);
    free(dir);
}
END_TEST

START_TEST(anchored_mappings_can_grow)
{
    /* an anchor names the finished node, not the one it was before the mapping grew */
    char err[512];
    yoml_t *root = load("base: &b {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}\nseq: &s [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
                        "one: *b\ntwo: *s\nm: {<<: *b, j: 10}\n",
                        err);
    ck_assert_msg(root != NULL, "%s", err);
    ck_assert_ptr_eq(yoml_get(root, "one"), yoml_get(root, "base"));
    ck_assert_ptr_eq(yoml_get(root, "two"), yoml_get(root, "seq"));
    ck_assert_uint_eq(yoml_get(root, "m")->data.mapping.size, 10);
    yoml_free(root, NULL);
}
END_TEST

START_TEST(several_documents_are_an_error)
{
    char err[512];
    ck_assert_ptr_null(load("a: 1\n---\nb: 2\n", err));
    ck_assert_msg(strstr(err, "one YAML document") != NULL, "%s", err);
    ck_assert_ptr_null(load("", err));
    ck_assert_msg(strstr(err, "no YAML document") != NULL, "%s", err);
}
END_TEST

START_TEST(file_tag_includes_relative_to_the_including_file)
{
    char *dir = th_tmpdir();
    free(th_write_file(dir, "paths.yaml", "/:\n  file.dir: www\n", 0));
    char *main = th_write_file(dir, "main.conf", "hosts:\n  default:\n    paths: !file paths.yaml\n", 0);
    char err[512];
    yoml_t *root = h2o_db_yaml_load_file(main, err, sizeof(err));
    ck_assert_msg(root != NULL, "%s", err);
    yoml_t *paths = yoml_get(yoml_get(yoml_get(root, "hosts"), "default"), "paths");
    ck_assert_int_eq(paths->type, YOML_TYPE_MAPPING);
    yoml_t *dirnode = yoml_get(yoml_get(paths, "/"), "file.dir");
    ck_assert_str_eq(dirnode->data.scalar, "www");
    /* errors inside the included file name that file */
    ck_assert_msg(strstr(dirnode->filename, "paths.yaml") != NULL, "%s", dirnode->filename);
    ck_assert_uint_eq(dirnode->line, 1);
    yoml_free(root, NULL);

    /* an include loop stops with an error instead of recursing forever */
    char *loop = th_write_file(dir, "loop.yaml", "a: !file loop.yaml\n", 0);
    ck_assert_ptr_null(h2o_db_yaml_load_file(loop, err, sizeof(err)));
    ck_assert_msg(strstr(err, "nest deeper") != NULL, "%s", err);
    free(main);
    free(loop);
    free(dir);
}
END_TEST

START_TEST(missing_file_is_an_error)
{
    char err[512];
    ck_assert_ptr_null(h2o_db_yaml_load_file("/nonexistent/h2o-db.conf", err, sizeof(err)));
    ck_assert_msg(strstr(err, "/nonexistent/h2o-db.conf: cannot open") != NULL, "%s", err);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("yaml");
    TCase *tc = tcase_create("loader");
    tcase_add_test(tc, layout_matches_libh2o_2_2_5);
    tcase_add_test(tc, scalars_sequences_mappings);
    tcase_add_test(tc, anchors_and_aliases_share_nodes);
    tcase_add_test(tc, undefined_alias_is_an_error);
    tcase_add_test(tc, syntax_error_names_line_and_column);
    tcase_add_test(tc, repeated_keys_are_kept_in_order);
    tcase_add_test(tc, merge_key_with_an_alias);
    tcase_add_test(tc, merge_key_with_a_list_of_aliases);
    tcase_add_test(tc, explicit_keys_after_the_merge_key_win);
    tcase_add_test(tc, merge_key_errors);
    tcase_add_test(tc, merge_key_with_file_includes);
    tcase_add_test(tc, anchors_of_an_included_file_are_visible_after_it);
    tcase_add_test(tc, anchored_mappings_can_grow);
    tcase_add_test(tc, several_documents_are_an_error);
    tcase_add_test(tc, file_tag_includes_relative_to_the_including_file);
    tcase_add_test(tc, missing_file_is_an_error);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
