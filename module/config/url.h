/*
 * Bind URLs as SQLAlchemy users write them (docs/directives/db.bind.md), parsed at config time.
 */
#ifndef h2o_db_config_url_h
#define h2o_db_config_url_h

#include <stddef.h>

typedef enum { H2O_DB_BACKEND_POSTGRES, H2O_DB_BACKEND_SQLITE, H2O_DB_BACKEND_MYSQL } h2o_db_backend_t;

typedef struct st_h2o_db_url_t {
    h2o_db_backend_t backend;
    /* the URL as written, with any password replaced by "***": the only form that is ever printed */
    char *display;
    /* PostgreSQL: the libpq connection URI (the "+driver" suffix removed, asyncpg spellings mapped) */
    char *conninfo;
    /* SQLite: the file (absolute, or relative to the config file's folder, resolved), or NULL
     * for an in-memory database; `memory_name` then names the memdb database every connection
     * of every thread shares */
    char *sqlite_path;
    char *memory_name;
    int sqlite_readonly;
    /* MySQL / MariaDB (driver/mysql_conn.c): the URL's parts, percent-decoded; NULL when absent */
    struct {
        char *user, *password, *host, *database;
        unsigned port;            /* 0: 3306 */
        char *unix_socket;        /* ?unix_socket= (absolute, or resolved against the config's folder) */
        char *charset;            /* ?charset=, default utf8mb4 */
        unsigned connect_timeout; /* ?connect_timeout= seconds, 0: the driver's default */
        /* TLS: ?ssl_ca= ?ssl_capath= ?ssl_cert= ?ssl_key= ?ssl_cipher= ?ssl_crl= ?ssl_crlpath= (paths
         * resolved like unix_socket), ?ssl=true|false, ?ssl_verify_cert=true|false, ?ssl_mode= */
        char *ssl_ca, *ssl_capath, *ssl_cert, *ssl_key, *ssl_cipher, *ssl_crl, *ssl_crlpath;
        int ssl;             /* 1: TLS required */
        int ssl_verify_cert; /* 1: verify the server's certificate (and host name) */
    } mysql;
} h2o_db_url_t;

/* Parses `url`; relative SQLite paths are resolved against `config_dir`.
 * On error returns -1 with a message (that never contains the password) in err. */
int h2o_db_url_parse(const char *url, const char *config_dir, const char *key, h2o_db_url_t *out, char *err, size_t errsz);

/* The URL with the password (user:PASSWORD@ and password=...) replaced by "***"; malloc'd. */
char *h2o_db_url_mask_password(const char *url);

void h2o_db_url_dispose(h2o_db_url_t *url);

#endif
