/*
 * TLS for listeners, as h2o.conf 2.2.5 writes it: the `ssl:` mapping of a `listen` becomes an
 * SSL_CTX that offers h2 and http/1.1 by ALPN (and NPN). Hosts that declare the same address
 * with their own certificate are chosen by SNI; the first certificate answers clients that name
 * no known host. One SSL_CTX serves every worker thread (OpenSSL's contexts are thread-safe), so
 * its session cache and ticket keys resume a session whichever thread the client lands on.
 *
 * Everything here runs on the main thread while the config is applied, except the SNI callback,
 * which OpenSSL calls on a worker thread during a handshake and which only reads.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "server/server.h"

struct ssl_entry {
    SSL_CTX *ctx;
    char *certificate_file;
    H2O_VECTOR(char *) hostnames; /* "example.com" or "*.example.com"; none at global level */
};

struct st_h2o_db_ssl_t {
    H2O_VECTOR(struct ssl_entry) entries; /* entries[0] is the default; never reallocated after the config */
};

static const struct {
    const char *name;
    int version;
} versions[] = {{"SSLv3", SSL3_VERSION},
                {"TLSv1", TLS1_VERSION},
                {"TLSv1.1", TLS1_1_VERSION},
                {"TLSv1.2", TLS1_2_VERSION},
                {"TLSv1.3", TLS1_3_VERSION}};

/* OpenSSL's reason for the last failure (its queue is emptied), for a one-line message. */
static const char *openssl_reason(char *buf, size_t len)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    if (last == 0)
        return "no reason given";
    const char *r = ERR_reason_error_string(last);
    snprintf(buf, len, "%s", r != NULL ? r : "unknown error");
    return buf;
}

static int name_matches(const char *pattern, const char *name)
{
    if (pattern[0] == '*') { /* "*.example.com" matches "a.example.com" */
        size_t plen = strlen(pattern + 1), nlen = strlen(name);
        return nlen > plen && strcasecmp(name + nlen - plen, pattern + 1) == 0;
    }
    return strcasecmp(pattern, name) == 0;
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    h2o_db_ssl_t *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < s->entries.size; ++i) {
        struct ssl_entry *e = s->entries.entries + i;
        for (size_t j = 0; j < e->hostnames.size; ++j) {
            if (name_matches(e->hostnames.entries[j], name)) {
                if (e->ctx != SSL_get_SSL_CTX(ssl))
                    SSL_set_SSL_CTX(ssl, e->ctx);
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_OK; /* the default certificate */
}

static void add_hostname(struct ssl_entry *e, h2o_hostconf_t *hostconf)
{
    if (hostconf == NULL)
        return;
    h2o_iovec_t host = hostconf->authority.host;
    h2o_vector_reserve(NULL, &e->hostnames, e->hostnames.size + 1);
    e->hostnames.entries[e->hostnames.size++] = strndup(host.base, host.len);
}

/* The scalar properties of an `ssl:` mapping. */
struct ssl_props {
    yoml_t *certificate_file, *key_file, *min_version, *max_version, *cipher_suite, *dh_file;
    int server_preference;
};

static int read_props(h2o_configurator_command_t *cmd, yoml_t *node, struct ssl_props *p)
{
    static const char *const accepted[] = {/* h2o's OCSP stapling and key-isolation options: accepted, without effect */
                                           "ocsp-update-cmd", "ocsp-update-interval", "ocsp-max-failures", "neverbleed"};
    memset(p, 0, sizeof(*p));
    for (size_t i = 0; i < node->data.mapping.size; ++i) {
        yoml_t *k = node->data.mapping.elements[i].key, *v = node->data.mapping.elements[i].value;
        if (k->type != YOML_TYPE_SCALAR) {
            h2o_configurator_errprintf(cmd, k, "a property name must be a scalar");
            return -1;
        }
        const char *name = k->data.scalar;
        yoml_t **slot = strcmp(name, "certificate-file") == 0                                      ? &p->certificate_file
                        : strcmp(name, "key-file") == 0                                            ? &p->key_file
                        : strcmp(name, "minimum-version") == 0 || strcmp(name, "min-version") == 0 ? &p->min_version
                        : strcmp(name, "maximum-version") == 0 || strcmp(name, "max-version") == 0 ? &p->max_version
                        : strcmp(name, "cipher-suite") == 0                                        ? &p->cipher_suite
                        : strcmp(name, "dh-file") == 0                                             ? &p->dh_file
                                                                                                   : NULL;
        if (v->type != YOML_TYPE_SCALAR) {
            h2o_configurator_errprintf(cmd, v, "the value of `%s` must be a scalar", name);
            return -1;
        }
        if (slot != NULL) {
            *slot = v;
        } else if (strcmp(name, "cipher-preference") == 0) {
            if (strcasecmp(v->data.scalar, "server") != 0 && strcasecmp(v->data.scalar, "client") != 0) {
                h2o_configurator_errprintf(cmd, v, "cipher-preference must be `client` or `server`, not `%s`", v->data.scalar);
                return -1;
            }
            p->server_preference = strcasecmp(v->data.scalar, "server") == 0;
        } else {
            size_t j = 0;
            while (j < sizeof(accepted) / sizeof(accepted[0]) && strcmp(name, accepted[j]) != 0)
                ++j;
            if (j == sizeof(accepted) / sizeof(accepted[0])) {
                h2o_configurator_errprintf(cmd, k,
                                           "unknown property `%s` (ssl takes certificate-file, key-file, minimum-version, "
                                           "maximum-version, cipher-suite, cipher-preference, dh-file)",
                                           name);
                return -1;
            }
        }
    }
    if (p->certificate_file == NULL || p->key_file == NULL) {
        h2o_configurator_errprintf(cmd, node, "mandatory property `%s` is missing",
                                   p->certificate_file == NULL ? "certificate-file" : "key-file");
        return -1;
    }
    return 0;
}

static int parse_version(h2o_configurator_command_t *cmd, yoml_t *node, int *version)
{
    if (node == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); ++i) {
        if (strcasecmp(node->data.scalar, versions[i].name) == 0) {
            *version = versions[i].version;
            return 0;
        }
    }
    h2o_configurator_errprintf(cmd, node, "unknown protocol version `%s` (expected TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3)",
                               node->data.scalar);
    return -1;
}

/* A file OpenSSL is about to read: say plainly when it cannot be opened. */
static int readable(h2o_configurator_command_t *cmd, yoml_t *node, const char *what)
{
    if (access(node->data.scalar, R_OK) == 0)
        return 0;
    h2o_configurator_errprintf(cmd, node, "cannot read the %s `%s`: %s", what, node->data.scalar, strerror(errno));
    return -1;
}

static int load_dh(h2o_configurator_command_t *cmd, SSL_CTX *ctx, yoml_t *node)
{
    char reason[256];
    if (readable(cmd, node, "dh-file") != 0)
        return -1;
    BIO *bio = BIO_new_file(node->data.scalar, "r");
    EVP_PKEY *dh = bio != NULL ? PEM_read_bio_Parameters(bio, NULL) : NULL;
    BIO_free(bio);
    if (dh == NULL || SSL_CTX_set0_tmp_dh_pkey(ctx, dh) != 1) {
        EVP_PKEY_free(dh);
        h2o_configurator_errprintf(cmd, node, "cannot load DH parameters from `%s`: %s", node->data.scalar,
                                   openssl_reason(reason, sizeof(reason)));
        return -1;
    }
    return 0;
}

/* A context for the properties, or NULL after printing file:line. */
static SSL_CTX *make_ctx(h2o_configurator_command_t *cmd, const struct ssl_props *p)
{
    char reason[256];
    int min_version = 0, max_version = 0;
    if (parse_version(cmd, p->min_version, &min_version) != 0 || parse_version(cmd, p->max_version, &max_version) != 0)
        return NULL;
    if (readable(cmd, p->certificate_file, "certificate-file") != 0 || readable(cmd, p->key_file, "key-file") != 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_options(ctx, SSL_OP_ALL | SSL_OP_NO_COMPRESSION | (p->server_preference ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
    /* (only when asked: otherwise the system's OpenSSL configuration says, as for h2o) */
    if (p->min_version != NULL)
        SSL_CTX_set_min_proto_version(ctx, min_version);
    if (p->max_version != NULL)
        SSL_CTX_set_max_proto_version(ctx, max_version);
    if (SSL_CTX_use_certificate_chain_file(ctx, p->certificate_file->data.scalar) != 1) {
        h2o_configurator_errprintf(cmd, p->certificate_file, "cannot load the certificate `%s`: %s",
                                   p->certificate_file->data.scalar, openssl_reason(reason, sizeof(reason)));
        goto Error;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, p->key_file->data.scalar, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
            goto Mismatch;
        h2o_configurator_errprintf(cmd, p->key_file, "cannot load the private key `%s`: %s", p->key_file->data.scalar,
                                   openssl_reason(reason, sizeof(reason)));
        goto Error;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
    Mismatch:
        ERR_clear_error();
        h2o_configurator_errprintf(cmd, p->key_file, "the private key `%s` does not match the certificate `%s`",
                                   p->key_file->data.scalar, p->certificate_file->data.scalar);
        goto Error;
    }
    if (p->cipher_suite != NULL && SSL_CTX_set_cipher_list(ctx, p->cipher_suite->data.scalar) != 1) {
        h2o_configurator_errprintf(cmd, p->cipher_suite, "OpenSSL knows no cipher in `%s`: %s", p->cipher_suite->data.scalar,
                                   openssl_reason(reason, sizeof(reason)));
        goto Error;
    }
    if (p->dh_file != NULL && load_dh(cmd, ctx, p->dh_file) != 0)
        goto Error;
    static const unsigned char sid_ctx[] = "h2o-db";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    h2o_ssl_register_alpn_protocols(ctx, h2o_alpn_protocols);
    h2o_ssl_register_npn_protocols(ctx, h2o_npn_protocols);
    return ctx;
Error:
    SSL_CTX_free(ctx);
    return NULL;
}

int h2o_db_ssl_add(h2o_configurator_command_t *cmd, yoml_t *node, h2o_hostconf_t *hostconf, h2o_db_ssl_t **ssl)
{
    if (node->type != YOML_TYPE_MAPPING) {
        h2o_configurator_errprintf(cmd, node, "`ssl` must be a mapping (certificate-file, key-file, ...)");
        return -1;
    }
    struct ssl_props p;
    if (read_props(cmd, node, &p) != 0)
        return -1;
    h2o_db_ssl_t *s = *ssl;
    /* a host that shares a certificate already loaded for this address is one more name for it */
    for (size_t i = 0; s != NULL && hostconf != NULL && i < s->entries.size; ++i) {
        if (strcmp(s->entries.entries[i].certificate_file, p.certificate_file->data.scalar) == 0) {
            add_hostname(s->entries.entries + i, hostconf);
            return 0;
        }
    }
    SSL_CTX *ctx = make_ctx(cmd, &p);
    if (ctx == NULL)
        return -1;
    if (s == NULL)
        *ssl = s = calloc(1, sizeof(*s));
    h2o_vector_reserve(NULL, &s->entries, s->entries.size + 1);
    struct ssl_entry *e = s->entries.entries + s->entries.size++;
    memset(e, 0, sizeof(*e));
    e->ctx = ctx;
    e->certificate_file = strdup(p.certificate_file->data.scalar);
    add_hostname(e, hostconf);
    if (s->entries.size == 2) { /* the default context picks among them (the vector no longer moves after the config) */
        SSL_CTX_set_tlsext_servername_callback(s->entries.entries[0].ctx, servername_cb);
        SSL_CTX_set_tlsext_servername_arg(s->entries.entries[0].ctx, s);
    }
    return 0;
}

void h2o_db_ssl_set_resumption(h2o_db_ssl_t *ssl, int mode, long lifetime, int async)
{
    for (size_t i = 0; i < ssl->entries.size; ++i) {
        SSL_CTX *ctx = ssl->entries.entries[i].ctx;
        SSL_CTX_set_session_cache_mode(ctx, (mode & H2O_DB_SSL_RESUME_CACHE)
                                                ? SSL_SESS_CACHE_SERVER | (async ? SSL_SESS_CACHE_NO_AUTO_CLEAR : 0)
                                                : SSL_SESS_CACHE_OFF);
        if (async && (mode & H2O_DB_SSL_RESUME_CACHE))
            h2o_socket_ssl_async_resumption_setup_ctx(ctx);
        if (mode & H2O_DB_SSL_RESUME_TICKET)
            SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
        else
            SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        if (mode == 0)
            SSL_CTX_set_num_tickets(ctx, 0);
        if (lifetime > 0)
            SSL_CTX_set_timeout(ctx, lifetime);
    }
}

size_t h2o_db_ssl_num_ctx(h2o_db_ssl_t *ssl)
{
    return ssl->entries.size;
}

SSL_CTX *h2o_db_ssl_ctx_at(h2o_db_ssl_t *ssl, size_t i)
{
    return ssl->entries.entries[i].ctx;
}

SSL_CTX *h2o_db_ssl_default_ctx(h2o_db_ssl_t *ssl)
{
    return ssl->entries.entries[0].ctx;
}

void h2o_db_ssl_free(h2o_db_ssl_t *ssl)
{
    if (ssl == NULL)
        return;
    for (size_t i = 0; i < ssl->entries.size; ++i) {
        struct ssl_entry *e = ssl->entries.entries + i;
        SSL_CTX_free(e->ctx);
        free(e->certificate_file);
        for (size_t j = 0; j < e->hostnames.size; ++j)
            free(e->hostnames.entries[j]);
        free(e->hostnames.entries);
    }
    free(ssl->entries.entries);
    free(ssl);
}
