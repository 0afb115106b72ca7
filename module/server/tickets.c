/*
 * TLS session-ticket keys from a file (ssl-session-resumption: {ticket-store: file, ticket-file:
 * PATH}), in h2o's format, so that servers sharing the file — or one server restarted — decrypt
 * each other's tickets:
 *
 *   - name: 32 hex digits            the key's name, sent in the ticket
 *     cipher: aes-128-cbc            an OpenSSL cipher name
 *     hash: sha1                     an OpenSSL digest name (HMAC)
 *     key: HEX                       the cipher key, then an HMAC key of the digest's block size
 *     not_before: 0                  seconds since the epoch
 *     not_after: 18446744073709551615
 *
 * New tickets use the newest key in force; any key in the file decrypts (and asks for a new
 * ticket when a newer key is in force). A file that does not exist holds no key: tickets are
 * then sealed with a throwaway key, so that none resumes. The file is read when the config is.
 */
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "h2o_db.h"
#include "server/server.h"

struct ticket_key {
    unsigned char name[16];
    const EVP_CIPHER *cipher;
    const EVP_MD *md;
    unsigned char key[EVP_MAX_KEY_LENGTH + 256]; /* the cipher key, then the HMAC key */
    uint64_t not_before, not_after;
};

struct st_h2o_db_tickets_t {
    size_t n;
    struct ticket_key *keys; /* newest not_before first */
};

static int ex_index = -1;

static int hex_decode(unsigned char *out, const char *hex, size_t n)
{
    for (size_t i = 0; i < n; ++i) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

static const char *scalar(yoml_t *entry, const char *name)
{
    for (size_t i = 0; i < entry->data.mapping.size; ++i) {
        yoml_t *k = entry->data.mapping.elements[i].key, *v = entry->data.mapping.elements[i].value;
        if (k->type == YOML_TYPE_SCALAR && strcmp(k->data.scalar, name) == 0)
            return v->type == YOML_TYPE_SCALAR ? v->data.scalar : NULL;
    }
    return NULL;
}

/* One entry of the file into k; NULL, or what is wrong with it. */
static const char *read_key(yoml_t *entry, struct ticket_key *k)
{
    const char *name, *cipher, *hash, *key, *nb, *na;
    if (entry->type != YOML_TYPE_MAPPING || (name = scalar(entry, "name")) == NULL || (cipher = scalar(entry, "cipher")) == NULL ||
        (hash = scalar(entry, "hash")) == NULL || (key = scalar(entry, "key")) == NULL ||
        (nb = scalar(entry, "not_before")) == NULL || (na = scalar(entry, "not_after")) == NULL)
        return "each key is a mapping with name, cipher, hash, key, not_before and not_after";
    if (strlen(name) != 32 || hex_decode(k->name, name, 16) != 0)
        return "`name` must be 32 hex digits";
    if ((k->cipher = EVP_get_cipherbyname(cipher)) == NULL || (k->md = EVP_get_digestbyname(hash)) == NULL)
        return "OpenSSL does not know its cipher or hash";
    size_t len = EVP_CIPHER_get_key_length(k->cipher) + EVP_MD_get_block_size(k->md);
    if (len > sizeof(k->key) || strlen(key) != 2 * len || hex_decode(k->key, key, len) != 0)
        return "`key` must be the hex digits of the cipher's key and an HMAC key of the hash's block size";
    char *end1, *end2;
    errno = 0;
    k->not_before = strtoull(nb, &end1, 10);
    k->not_after = strtoull(na, &end2, 10);
    if (errno != 0 || *end1 != '\0' || *end2 != '\0' || k->not_after < k->not_before)
        return "not_before and not_after must be seconds, not_before first";
    return NULL;
}

static int newest_first(const void *a, const void *b)
{
    const struct ticket_key *x = a, *y = b;
    return x->not_before > y->not_before ? -1 : x->not_before < y->not_before;
}

h2o_db_tickets_t *h2o_db_tickets_load(const char *path, char *err, size_t errsz)
{
    h2o_db_tickets_t *t = calloc(1, sizeof(*t));
    FILE *fp = fopen(path, "r");
    if (fp == NULL && errno == ENOENT)
        return t; /* no key yet */
    if (fp != NULL)
        fclose(fp);
    yoml_t *doc = h2o_db_yaml_load_file(path, err, errsz);
    if (doc == NULL) {
        free(t);
        return NULL;
    }
    const char *wrong = doc->type == YOML_TYPE_SEQUENCE ? NULL : "the file must hold a sequence of keys";
    if (wrong == NULL) {
        t->keys = calloc(doc->data.sequence.size + 1, sizeof(*t->keys));
        for (size_t i = 0; i < doc->data.sequence.size && wrong == NULL; ++i)
            if ((wrong = read_key(doc->data.sequence.elements[i], t->keys + t->n)) == NULL)
                ++t->n;
    }
    if (wrong != NULL) {
        snprintf(err, errsz, "%s: %s", path, wrong);
        yoml_free(doc, NULL);
        h2o_db_tickets_free(t);
        return NULL;
    }
    yoml_free(doc, NULL);
    qsort(t->keys, t->n, sizeof(*t->keys), newest_first);
    return t;
}

void h2o_db_tickets_free(h2o_db_tickets_t *t)
{
    if (t == NULL)
        return;
    OPENSSL_cleanse(t->keys, t->n * sizeof(*t->keys));
    free(t->keys);
    free(t);
}

static int use_key(const struct ticket_key *k, unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    size_t cipher_len = EVP_CIPHER_get_key_length(k->cipher);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)(k->key + cipher_len), EVP_MD_get_block_size(k->md)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)EVP_MD_get0_name(k->md), 0), OSSL_PARAM_construct_end()};
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return -1;
    return (enc ? EVP_EncryptInit_ex(cctx, k->cipher, NULL, k->key, iv) : EVP_DecryptInit_ex(cctx, k->cipher, NULL, k->key, iv)) ==
                   1
               ? 0
               : -1;
}

/* OpenSSL's ticket callback (any worker thread; the keys are read-only once loaded) */
static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    h2o_db_tickets_t *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index);
    uint64_t now = (uint64_t)time(NULL);
    if (enc) {
        const struct ticket_key *k = NULL;
        for (size_t i = 0; i < t->n && k == NULL; ++i)
            if (t->keys[i].not_before <= now && now <= t->keys[i].not_after)
                k = t->keys + i;
        struct ticket_key throwaway;
        if (k == NULL) { /* no key in force: a ticket nobody can open */
            throwaway.cipher = EVP_aes_256_cbc();
            throwaway.md = EVP_sha256();
            RAND_bytes(throwaway.name, sizeof(throwaway.name));
            RAND_bytes(throwaway.key, EVP_CIPHER_get_key_length(throwaway.cipher) + EVP_MD_get_block_size(throwaway.md));
            k = &throwaway;
        }
        memcpy(name, k->name, sizeof(k->name));
        int ret = RAND_bytes(iv, EVP_CIPHER_get_iv_length(k->cipher)) == 1 && use_key(k, iv, cctx, hctx, 1) == 0 ? 1 : -1;
        OPENSSL_cleanse(&throwaway, sizeof(throwaway));
        return ret;
    }
    for (size_t i = 0; i < t->n; ++i) {
        if (memcmp(t->keys[i].name, name, sizeof(t->keys[i].name)) != 0)
            continue;
        if (use_key(t->keys + i, iv, cctx, hctx, 0) != 0)
            return -1;
        /* a newer key in force: resume, and send a ticket under it */
        return i != 0 && t->keys[i - 1].not_before <= now ? 2 : 1;
    }
    return 0; /* unknown key: a full handshake */
}

void h2o_db_ssl_use_tickets(h2o_db_ssl_t *ssl, h2o_db_tickets_t *tickets)
{
    if (ex_index == -1)
        ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    for (size_t i = 0; i < h2o_db_ssl_num_ctx(ssl); ++i) {
        SSL_CTX *ctx = h2o_db_ssl_ctx_at(ssl, i);
        SSL_CTX_set_ex_data(ctx, ex_index, tickets);
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    }
}
