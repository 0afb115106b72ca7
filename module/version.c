/*
 * h2o_db_version(): the library's version, meson's project version (H2O_DB_VERSION, defined by
 * meson.build for every target). meson.build checks that include/h2o_db.h's H2O_DB_VERSION_*
 * say the same, and t/test_embed.c compares them with this string.
 */
#include "h2o_db.h"

#ifndef H2O_DB_VERSION
#error "H2O_DB_VERSION is defined by meson.build (the project version)"
#endif

const char *h2o_db_version(void)
{
    return H2O_DB_VERSION;
}
