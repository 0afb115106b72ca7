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

START_TEST(duplicate_key_is_an_error)
{
    char err[512];
    ck_assert_ptr_null(load("listen: 1\nhosts: {}\nlisten: 2\n", err));
    ck_assert_msg(strstr(err, "test.conf:3:1:") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "duplicate key `listen`") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "line 1") != NULL, "%s", err);
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
    tcase_add_test(tc, duplicate_key_is_an_error);
    tcase_add_test(tc, several_documents_are_an_error);
    tcase_add_test(tc, file_tag_includes_relative_to_the_including_file);
    tcase_add_test(tc, missing_file_is_an_error);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
