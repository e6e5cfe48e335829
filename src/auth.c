#include "mdhunt/auth.h"

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"

/* Largest expires_in accepted, in seconds (a year); Entra ID tokens live
 * about an hour. */
#define EXPIRES_IN_MAX 31536000

/* Maximum length of an access token, in bytes.  Entra ID's tokens have a
 * few kB.  HTTP servers commonly reject header lines longer than 64 kB,
 * and libcurl fails a request over 1 MB as if memory had run out. */
#define ACCESS_TOKEN_MAX 65536

/* Renew when less than max(RENEW_MIN_SECONDS, lifetime / 10) remains. */
#define RENEW_MIN_SECONDS 60

/* Bytes of a reply body quoted when it is not the expected JSON. */
#define QUOTE_MAX 200

/* A client assertion is valid this long.  Microsoft recommends 5 to 10
 * minutes after nbf; MSAL uses 10. */
#define ASSERTION_LIFETIME 600

/* Entra ID accepts certificates with RSA keys of 2048 bits or more. */
#define MIN_RSA_BITS 2048

#define ASSERTION_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

struct md_auth {
    struct md_http *http;
    char *token_url;
    char *client_id;
    char *scope;
    struct md_secret secret;        /* client secret; unset with a key */
    EVP_PKEY *key;                  /* certificate's private key, or NULL */
    enum md_assertion_alg alg;
    char thumbprint[64];            /* base64url: x5t or x5t#S256 */
    char sha1_hex[41];              /* for messages, as the portal shows */
    struct md_secret token;
    md_instant obtained_at;
    md_instant expires_at;
};

/*
 * Hosts per cloud.  GCC (usgov) signs in at the public login host; GCC
 * High and DoD at login.microsoftonline.us.  The portal hosts are those
 * of the Defender for Endpoint documentation for US Government
 * customers.
 */
struct cloud_entry {
    enum md_cloud cloud;
    const char *authority;
    const char *portal;
};

static const struct cloud_entry clouds[] = {
    { MD_CLOUD_PUBLIC, "https://login.microsoftonline.com",
      "https://security.microsoft.com" },
    { MD_CLOUD_USGOV, "https://login.microsoftonline.com",
      "https://security.microsoft.com" },
    { MD_CLOUD_USGOV_HIGH, "https://login.microsoftonline.us",
      "https://security.microsoft.us" },
    { MD_CLOUD_DOD, "https://login.microsoftonline.us",
      "https://security.apps.mil" },
    { MD_CLOUD_CHINA, "https://login.partner.microsoftonline.cn", NULL },
};

/*
 * API hosts and token scopes.  Each scope is its host's root followed by
 * /.default.  NOTE: Microsoft's documentation lists the US Government
 * API hosts but not their token audiences; the scopes here follow the
 * hosts, as third-party clients do.  China has no hunting API, so it has
 * no entry (config.c rejects graph and defender there).
 */
struct api_entry {
    enum md_backend_kind kind;
    enum md_cloud cloud;
    const char *scope;
    const char *url;
};

static const struct api_entry apis[] = {
    { MD_BACKEND_GRAPH, MD_CLOUD_PUBLIC,
      "https://graph.microsoft.com/.default",
      "https://graph.microsoft.com" },
    { MD_BACKEND_DEFENDER, MD_CLOUD_PUBLIC,
      "https://api.security.microsoft.com/.default",
      "https://api.security.microsoft.com" },
    { MD_BACKEND_SENTINEL, MD_CLOUD_PUBLIC,
      "https://api.loganalytics.io/.default",
      "https://api.loganalytics.azure.com" },
    { MD_BACKEND_GRAPH, MD_CLOUD_USGOV,
      "https://graph.microsoft.com/.default",
      "https://graph.microsoft.com" },
    { MD_BACKEND_DEFENDER, MD_CLOUD_USGOV,
      "https://api-gcc.security.microsoft.us/.default",
      "https://api-gcc.security.microsoft.us" },
    { MD_BACKEND_GRAPH, MD_CLOUD_USGOV_HIGH,
      "https://graph.microsoft.us/.default",
      "https://graph.microsoft.us" },
    { MD_BACKEND_DEFENDER, MD_CLOUD_USGOV_HIGH,
      "https://api-gov.security.microsoft.us/.default",
      "https://api-gov.security.microsoft.us" },
    { MD_BACKEND_GRAPH, MD_CLOUD_DOD,
      "https://dod-graph.microsoft.us/.default",
      "https://dod-graph.microsoft.us" },
    { MD_BACKEND_DEFENDER, MD_CLOUD_DOD,
      "https://api-gov.security.microsoft.us/.default",
      "https://api-gov.security.microsoft.us" },
};

static const struct cloud_entry *find_cloud(enum md_cloud cloud)
{
    for (size_t i = 0; i < sizeof(clouds) / sizeof(clouds[0]); i++) {
        if (clouds[i].cloud == cloud)
            return &clouds[i];
    }
    return NULL;
}

const char *md_auth_cloud_authority(enum md_cloud cloud)
{
    const struct cloud_entry *e = find_cloud(cloud);

    return e != NULL ? e->authority : NULL;
}

const char *md_auth_portal_url(enum md_cloud cloud)
{
    const struct cloud_entry *e = find_cloud(cloud);

    return e != NULL ? e->portal : NULL;
}

static const struct api_entry *find_api(enum md_backend_kind kind,
                                        enum md_cloud cloud)
{
    for (size_t i = 0; i < sizeof(apis) / sizeof(apis[0]); i++) {
        if (apis[i].kind == kind && apis[i].cloud == cloud)
            return &apis[i];
    }
    return NULL;
}

const char *md_auth_default_scope(enum md_backend_kind kind,
                                  enum md_cloud cloud)
{
    const struct api_entry *e = find_api(kind, cloud);

    return e != NULL ? e->scope : NULL;
}

const char *md_auth_default_api_url(enum md_backend_kind kind,
                                    enum md_cloud cloud)
{
    const struct api_entry *e = find_api(kind, cloud);

    return e != NULL ? e->url : NULL;
}

const char *md_auth_authority(const struct md_config *cfg)
{
    if (cfg->auth.authority_url != NULL)
        return cfg->auth.authority_url;
    return md_auth_cloud_authority(cfg->auth.cloud);
}

const char *md_auth_scope(const struct md_config *cfg)
{
    if (cfg->auth.scope != NULL)
        return cfg->auth.scope;
    return md_auth_default_scope(cfg->api.backend, cfg->auth.cloud);
}

const char *md_auth_api_url(const struct md_config *cfg)
{
    if (cfg->api.url != NULL)
        return cfg->api.url;
    return md_auth_default_api_url(cfg->api.backend, cfg->auth.cloud);
}

/* A tenant is a GUID or a domain name; it goes into the URL path, so only
 * letters, digits, dots and hyphens are allowed. */
static int check_tenant(const char *tenant, struct md_error *err)
{
    static const char *const shared[] = {
        "common", "organizations", "consumers"
    };

    if (tenant == NULL || *tenant == '\0')
        return md_error_set(err, MD_E_CONFIG,
                            "[auth] tenant_id is missing; set it to the "
                            "directory (tenant) ID of the app "
                            "registration");
    for (const char *p = tenant; *p != '\0'; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
            return md_error_set(err, MD_E_CONFIG,
                                "[auth] tenant_id \"%.100s\" is invalid: "
                                "give the directory (tenant) ID GUID or a "
                                "verified domain name", tenant);
    }
    for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
        if (md_strcasecmp(tenant, shared[i]) == 0)
            return md_error_set(err, MD_E_CONFIG,
                                "[auth] tenant_id \"%s\" cannot be used "
                                "with the client credentials grant; give "
                                "the directory (tenant) ID of your tenant",
                                tenant);
    }
    return 0;
}

static char *make_token_url(const char *authority, const char *tenant)
{
    size_t len = strlen(authority);
    struct md_buf url = MD_BUF_INIT;

    while (len > 0 && authority[len - 1] == '/')
        len--;
    if (md_buf_printf(&url, "%.*s/%s/oauth2/v2.0/token", (int)len,
                      authority, tenant) != 0) {
        md_buf_free(&url);
        return NULL;
    }
    return md_buf_detach(&url);
}

/* ---- Certificates ------------------------------------------------------ */

static void base64url(const unsigned char *in, size_t len, char *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0;
    size_t i;

    for (i = 0; i + 2 < len; i += 3) {
        unsigned long v = ((unsigned long)in[i] << 16)
                          | ((unsigned long)in[i + 1] << 8) | in[i + 2];

        out[n++] = alphabet[(v >> 18) & 63];
        out[n++] = alphabet[(v >> 12) & 63];
        out[n++] = alphabet[(v >> 6) & 63];
        out[n++] = alphabet[v & 63];
    }
    if (len - i == 1) {
        out[n++] = alphabet[in[i] >> 2];
        out[n++] = alphabet[(in[i] & 3) << 4];
    } else if (len - i == 2) {
        unsigned long v = ((unsigned long)in[i] << 8) | in[i + 1];

        out[n++] = alphabet[(v >> 10) & 63];
        out[n++] = alphabet[(v >> 4) & 63];
        out[n++] = alphabet[(v << 2) & 63];
    }
    out[n] = '\0';
}

/* Length of base64url text (no padding) for len bytes, without the NUL. */
static size_t base64url_len(size_t len)
{
    return len / 3 * 4 + (len % 3 == 0 ? 0 : len % 3 + 1);
}

/* The first OpenSSL error as text, for messages; the queue is cleared. */
static const char *openssl_reason(char *buf, size_t size)
{
    unsigned long code = ERR_peek_last_error();

    if (code == 0)
        snprintf(buf, size, "no details");
    else
        ERR_error_string_n(code, buf, size);
    ERR_clear_error();
    return buf;
}

static int read_certificate(const char *path, X509 **out,
                            struct md_error *err)
{
    char reason[256];
    BIO *bio = BIO_new_file(path, "r");

    *out = NULL;
    if (bio == NULL)
        return md_error_set(err, MD_E_CONFIG, "%s: cannot read [auth] "
                            "certificate_file: %s", path,
                            openssl_reason(reason, sizeof(reason)));
    *out = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (*out == NULL)
        return md_error_set(err, MD_E_CONFIG, "%s: [auth] certificate_file "
                            "contains no PEM certificate (%s); give the "
                            "certificate uploaded to the app registration, "
                            "as PEM", path,
                            openssl_reason(reason, sizeof(reason)));
    ERR_clear_error();
    return 0;
}

/* Warn when the certificate has expired or will within a week, because
 * Entra ID then rejects every token request. */
static void check_validity(X509 *cert, const char *path)
{
    time_t now = (time_t)(md_now() / MD_TICKS_PER_SECOND);
    time_t soon = now + 7 * 86400;

    if (X509_cmp_time(X509_get0_notAfter(cert), &now) < 0)
        md_warn("%s: the certificate has expired; create a new one, upload "
                "it to the app registration and set [auth] "
                "certificate_file", path);
    else if (X509_cmp_time(X509_get0_notAfter(cert), &soon) < 0)
        md_warn("%s: the certificate expires within a week; upload a new "
                "one to the app registration in time", path);
    ERR_clear_error();
}

static int set_thumbprints(struct md_auth *auth, X509 *cert,
                           struct md_error *err)
{
    unsigned char sha1[EVP_MAX_MD_SIZE];
    unsigned char sha256[EVP_MAX_MD_SIZE];
    unsigned int sha1_len = 0;
    unsigned int sha256_len = 0;

    if (X509_digest(cert, EVP_sha1(), sha1, &sha1_len) != 1 ||
        X509_digest(cert, EVP_sha256(), sha256, &sha256_len) != 1 ||
        sha1_len != 20 || sha256_len != 32) {
        ERR_clear_error();
        return md_error_set(err, MD_E_INTERNAL, "cannot compute the "
                            "certificate's thumbprint");
    }
    for (unsigned int i = 0; i < sha1_len; i++)
        snprintf(auth->sha1_hex + 2 * i, 3, "%02X", sha1[i]);
    if (auth->alg == MD_ASSERTION_RS256)
        base64url(sha1, sha1_len, auth->thumbprint);
    else
        base64url(sha256, sha256_len, auth->thumbprint);
    return 0;
}

/* Hand the passphrase to OpenSSL; -1 without one, which fails an
 * encrypted key. */
static int passphrase_cb(char *buf, int size, int rwflag, void *userdata)
{
    const struct md_secret *pass = userdata;

    (void)rwflag;
    if (pass == NULL || pass->value == NULL || size <= 0 ||
        pass->len > (size_t)size)
        return -1;
    memcpy(buf, pass->value, pass->len);
    return (int)pass->len;
}

static int is_encrypted_pem(const struct md_secret *pem)
{
    return strstr(pem->value, "ENCRYPTED") != NULL;
}

static int read_private_key(const struct md_config *cfg, EVP_PKEY **out,
                            struct md_error *err)
{
    const struct md_secret *pem = &cfg->auth.private_key;
    const struct md_secret *pass = &cfg->auth.passphrase;
    const char *path = cfg->auth.private_key_file != NULL
                       ? cfg->auth.private_key_file
                       : cfg->auth.certificate_file;
    char reason[256];
    BIO *bio;

    *out = NULL;
    if (pem->value == NULL)
        return md_error_set(err, MD_E_CONFIG, "no private key is loaded "
                            "for [auth] certificate_file");
    bio = BIO_new_mem_buf(pem->value, (int)pem->len);
    if (bio == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    *out = PEM_read_bio_PrivateKey(bio, NULL, passphrase_cb,
                                   pass->value != NULL ? (void *)pass
                                                       : NULL);
    BIO_free(bio);
    if (*out != NULL) {
        ERR_clear_error();
        return 0;
    }

    openssl_reason(reason, sizeof(reason));
    if (is_encrypted_pem(pem) && pass->value == NULL)
        return md_error_set(err, MD_E_CONFIG, "%s: the private key is "
                            "encrypted; set [auth] passphrase_file to a "
                            "file holding its passphrase", path);
    if (is_encrypted_pem(pem))
        return md_error_set(err, MD_E_CONFIG, "%s: cannot decrypt the "
                            "private key (%s); check the passphrase in "
                            "[auth] passphrase_file", path, reason);
    return md_error_set(err, MD_E_CONFIG, "%s: contains no readable PEM "
                        "private key (%s); set [auth] private_key_file to "
                        "the certificate's key", path, reason);
}

static int check_key(EVP_PKEY *key, X509 *cert, const char *key_path,
                     const char *cert_path, struct md_error *err)
{
    int bits = EVP_PKEY_get_bits(key);

    if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA)
        return md_error_set(err, MD_E_CONFIG, "%s: the private key is not "
                            "an RSA key; Entra ID client assertions (PS256, "
                            "RS256) need an RSA certificate", key_path);
    if (bits < MIN_RSA_BITS)
        return md_error_set(err, MD_E_CONFIG, "%s: the RSA key has %d bits; "
                            "Entra ID needs at least %d", key_path, bits,
                            MIN_RSA_BITS);
    if (X509_check_private_key(cert, key) != 1) {
        ERR_clear_error();
        return md_error_set(err, MD_E_CONFIG, "%s: the private key does not "
                            "belong to the certificate in %s; give the "
                            "matching pair", key_path, cert_path);
    }
    return 0;
}

/* Read the certificate and parse the private key for client assertions. */
static int load_certificate(struct md_auth *auth, const struct md_config *cfg,
                            struct md_error *err)
{
    const char *cert_path = cfg->auth.certificate_file;
    const char *key_path = cfg->auth.private_key_file != NULL
                           ? cfg->auth.private_key_file : cert_path;
    X509 *cert = NULL;
    int rc = -1;

    auth->alg = cfg->auth.assertion_alg;
    if (read_certificate(cert_path, &cert, err) != 0)
        return -1;
    check_validity(cert, cert_path);
    if (set_thumbprints(auth, cert, err) != 0 ||
        read_private_key(cfg, &auth->key, err) != 0 ||
        check_key(auth->key, cert, key_path, cert_path, err) != 0)
        goto out;
    md_debug("auth: using the certificate with SHA-1 thumbprint %s (%s)",
             auth->sha1_hex, auth->alg == MD_ASSERTION_RS256 ? "RS256"
                                                            : "PS256");
    rc = 0;

out:
    X509_free(cert);
    return rc;
}

static int check_settings(const struct md_config *cfg, const char *authority,
                          const char *scope, struct md_error *err)
{
    const struct md_secret *secret = &cfg->auth.client_secret;

    if (check_tenant(cfg->auth.tenant_id, err) != 0)
        return -1;
    if (cfg->auth.client_id == NULL || cfg->auth.client_id[0] == '\0')
        return md_error_set(err, MD_E_CONFIG,
                            "[auth] client_id is missing; set it to the "
                            "application (client) ID of the app "
                            "registration");
    if (cfg->auth.certificate_file == NULL &&
        (secret->value == NULL || secret->len == 0))
        return md_error_set(err, MD_E_CONFIG,
                            "no client secret is loaded; set [auth] "
                            "client_secret_file or MDHUNT_CLIENT_SECRET, "
                            "or use [auth] certificate_file");
    if (authority == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "no authority is known for this cloud; set "
                            "[auth] authority_url");
    if (scope == NULL)
        return md_error_set(err, MD_E_CONFIG,
                            "no token scope is known for the %s backend "
                            "in the %s cloud; set [auth] scope",
                            md_backend_kind_name(cfg->api.backend),
                            md_cloud_name(cfg->auth.cloud));
    return 0;
}

int md_auth_new(const struct md_config *cfg, struct md_http *http,
                struct md_auth **out, struct md_error *err)
{
    const char *authority = md_auth_authority(cfg);
    const char *scope = md_auth_scope(cfg);
    const struct md_secret *secret = &cfg->auth.client_secret;
    struct md_auth *auth;

    *out = NULL;
    if (check_settings(cfg, authority, scope, err) != 0)
        return -1;

    auth = calloc(1, sizeof(*auth));
    if (auth == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    auth->http = http;
    auth->token_url = make_token_url(authority, cfg->auth.tenant_id);
    auth->client_id = md_strdup(cfg->auth.client_id);
    auth->scope = md_strdup(scope);
    if (auth->token_url == NULL || auth->client_id == NULL
        || auth->scope == NULL
        || (cfg->auth.certificate_file == NULL &&
            md_secret_set(&auth->secret, secret->value, secret->len) != 0)) {
        md_auth_free(auth);
        return md_error_set(err, MD_E_INTERNAL, "out of memory");
    }
    if (cfg->auth.certificate_file != NULL &&
        load_certificate(auth, cfg, err) != 0) {
        md_auth_free(auth);
        return -1;
    }
    *out = auth;
    return 0;
}

void md_auth_free(struct md_auth *auth)
{
    if (auth == NULL)
        return;
    md_secret_clear(&auth->secret);
    md_secret_clear(&auth->token);
    /* OpenSSL clears the key's private numbers when it frees them. */
    EVP_PKEY_free(auth->key);
    free(auth->token_url);
    free(auth->client_id);
    free(auth->scope);
    free(auth);
}

void md_auth_describe_credential(const struct md_auth *auth, char *buf,
                                 size_t size)
{
    if (auth->key == NULL)
        snprintf(buf, size, "client secret");
    else
        snprintf(buf, size, "certificate with SHA-1 thumbprint %s (%s)",
                 auth->sha1_hex,
                 auth->alg == MD_ASSERTION_RS256 ? "RS256" : "PS256");
}

const char *md_auth_token_url(const struct md_auth *auth)
{
    return auth->token_url;
}

void md_auth_invalidate(struct md_auth *auth)
{
    md_secret_clear(&auth->token);
    auth->obtained_at = 0;
    auth->expires_at = 0;
}

static int is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
        || c == '~';
}

/* Percent-encode src into dst (when dst is not NULL); returns the encoded
 * length. */
static size_t form_encode(char *dst, const char *src, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];

        if (is_unreserved(c)) {
            if (dst != NULL)
                dst[n] = (char)c;
            n++;
            continue;
        }
        if (dst != NULL) {
            dst[n] = '%';
            dst[n + 1] = hex[c >> 4];
            dst[n + 2] = hex[c & 0x0f];
        }
        n += 3;
    }
    return n;
}

/*
 * Build a form of n fields.  The buffer is sized first, because growing
 * it with realloc() could leave copies of a secret in freed memory.
 */
static int build_form(const char *const *names, const char *const *values,
                      const size_t *lens, size_t n, char **form,
                      size_t *len, struct md_error *err)
{
    size_t total = 0;
    size_t at = 0;
    char *p;

    for (size_t i = 0; i < n; i++)
        total += (i > 0) + strlen(names[i]) + 1
                 + form_encode(NULL, values[i], lens[i]);
    p = malloc(total + 1);
    if (p == NULL)
        return md_error_set(err, MD_E_INTERNAL, "out of memory");

    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            p[at++] = '&';
        memcpy(p + at, names[i], strlen(names[i]));
        at += strlen(names[i]);
        p[at++] = '=';
        at += form_encode(p + at, values[i], lens[i]);
    }
    p[at] = '\0';
    *form = p;
    *len = at;
    return 0;
}

int md_auth_build_form(const char *client_id, const char *scope,
                       const struct md_secret *secret, char **form,
                       size_t *len, struct md_error *err)
{
    static const char grant[] = "client_credentials";
    const char *const names[] = {
        "client_id", "scope", "client_secret", "grant_type"
    };
    const char *const values[] = { client_id, scope, secret->value, grant };
    const size_t lens[] = {
        strlen(client_id), strlen(scope), secret->len, sizeof(grant) - 1
    };

    return build_form(names, values, lens, 4, form, len, err);
}

static int build_assertion_form(const char *client_id, const char *scope,
                                const struct md_secret *assertion,
                                char **form, size_t *len,
                                struct md_error *err)
{
    static const char grant[] = "client_credentials";
    const char *const names[] = {
        "client_id", "scope", "client_assertion_type", "client_assertion",
        "grant_type"
    };
    const char *const values[] = {
        client_id, scope, ASSERTION_TYPE, assertion->value, grant
    };
    const size_t lens[] = {
        strlen(client_id), strlen(scope), sizeof(ASSERTION_TYPE) - 1,
        assertion->len, sizeof(grant) - 1
    };

    return build_form(names, values, lens, 5, form, len, err);
}

/* ---- Client assertions ------------------------------------------------- */

/* A random (version 4) UUID in lower case, from OpenSSL's CSPRNG. */
static int random_uuid(char out[37])
{
    unsigned char b[16];

    if (RAND_bytes(b, sizeof(b)) != 1)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4],
             b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

/* Append the base64url form of a JSON object's compact text to out. */
static int append_json_part(struct md_buf *out, json_t *object)
{
    char *text = json_dumps(object, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *encoded;
    int rc;

    if (text == NULL)
        return -1;
    encoded = malloc(base64url_len(strlen(text)) + 1);
    if (encoded == NULL) {
        free(text);
        return -1;
    }
    base64url((const unsigned char *)text, strlen(text), encoded);
    rc = md_buf_puts(out, encoded);
    free(encoded);
    free(text);
    return rc;
}

static json_t *assertion_header(const struct md_auth *auth)
{
    if (auth->alg == MD_ASSERTION_RS256)
        return json_pack("{s:s, s:s, s:s}", "alg", "RS256", "typ", "JWT",
                         "x5t", auth->thumbprint);
    return json_pack("{s:s, s:s, s:s}", "alg", "PS256", "typ", "JWT",
                     "x5t#S256", auth->thumbprint);
}

static json_t *assertion_claims(const struct md_auth *auth, md_instant now)
{
    json_int_t seconds = (json_int_t)(now / MD_TICKS_PER_SECOND);
    char jti[37];

    if (random_uuid(jti) != 0)
        return NULL;
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}",
                     "aud", auth->token_url, "iss", auth->client_id,
                     "sub", auth->client_id, "jti", jti, "nbf", seconds,
                     "iat", seconds,
                     "exp", seconds + (json_int_t)ASSERTION_LIFETIME);
}

/* Sign data with the key: RSASSA-PSS (salt as long as the SHA-256 hash,
 * as RFC 7518 section 3.5 requires) or RSASSA-PKCS1-v1_5. */
static int sign(struct md_auth *auth, const char *data, size_t len,
                unsigned char **sig, size_t *sig_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok;

    *sig = NULL;
    ok = ctx != NULL &&
         EVP_DigestSignInit(ctx, &pctx, EVP_sha256(), NULL, auth->key) == 1;
    if (ok && auth->alg == MD_ASSERTION_PS256)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1
             && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx,
                                                 RSA_PSS_SALTLEN_DIGEST) == 1
             && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) == 1;
    else if (ok)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    ok = ok && EVP_DigestSign(ctx, NULL, sig_len,
                              (const unsigned char *)data, len) == 1;
    if (ok) {
        *sig = malloc(*sig_len);
        ok = *sig != NULL &&
             EVP_DigestSign(ctx, *sig, sig_len, (const unsigned char *)data,
                            len) == 1;
    }
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    if (!ok) {
        free(*sig);
        *sig = NULL;
        return -1;
    }
    return 0;
}

int md_auth_make_assertion(struct md_auth *auth, md_instant now,
                           struct md_secret *assertion,
                           struct md_error *err)
{
    struct md_buf jws = MD_BUF_INIT;
    json_t *header = NULL;
    json_t *claims = NULL;
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    char *sig_text = NULL;
    int rc = -1;

    if (auth->key == NULL)
        return md_error_set(err, MD_E_CONFIG, "no certificate is "
                            "configured for a client assertion; set [auth] "
                            "certificate_file");
    header = assertion_header(auth);
    claims = assertion_claims(auth, now);
    if (header == NULL || claims == NULL ||
        append_json_part(&jws, header) != 0 || md_buf_putc(&jws, '.') != 0 ||
        append_json_part(&jws, claims) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    if (sign(auth, jws.data, jws.len, &sig, &sig_len) != 0) {
        md_error_set(err, MD_E_INTERNAL, "cannot sign the client assertion "
                     "with the private key of [auth] certificate_file");
        goto out;
    }
    sig_text = malloc(base64url_len(sig_len) + 1);
    if (sig_text == NULL) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    base64url(sig, sig_len, sig_text);
    if (md_buf_putc(&jws, '.') != 0 || md_buf_puts(&jws, sig_text) != 0 ||
        md_secret_set(assertion, jws.data, jws.len) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    rc = 0;

out:
    /* Growing jws may have left copies in freed memory, but an assertion
     * is useless after its 10 minutes and to any other audience. */
    if (jws.data != NULL)
        md_wipe(jws.data, jws.cap);
    md_buf_free(&jws);
    free(sig);
    free(sig_text);
    json_decref(header);
    json_decref(claims);
    return rc;
}

/* Read expires_in: a JSON integer, or a string of decimal digits as v1
 * replies and some v2 replies send it. */
static int read_expires_in(json_t *value, int64_t *out)
{
    const char *s;
    int64_t v = 0;

    if (json_is_integer(value)) {
        v = json_integer_value(value);
    } else if (json_is_real(value)) {
        double d = json_real_value(value);

        if (!(d >= 1 && d <= EXPIRES_IN_MAX) || d != (double)(int64_t)d)
            return -1;
        v = (int64_t)d;
    } else if (json_is_string(value)) {
        s = json_string_value(value);
        if (*s == '\0' || strlen(s) != json_string_length(value))
            return -1;
        for (; *s != '\0'; s++) {
            if (*s < '0' || *s > '9' || v > EXPIRES_IN_MAX)
                return -1;
            v = v * 10 + (*s - '0');
        }
    } else {
        return -1;
    }
    if (v < 1 || v > EXPIRES_IN_MAX)
        return -1;
    *out = v;
    return 0;
}

/* A bearer token goes into an HTTP header: visible ASCII only. */
static int is_header_safe(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* Overwrite a parsed string that contained a secret before jansson frees
 * it. */
static void wipe_json_string(json_t *value)
{
    if (json_is_string(value))
        md_wipe((char *)json_string_value(value),
                json_string_length(value));
}

int md_auth_parse_token_reply(const char *body, size_t len,
                              struct md_secret *token, int64_t *expires_in,
                              struct md_error *err)
{
    json_error_t jerr;
    json_t *root;
    json_t *access;
    json_t *type;
    int rc = -1;

    /* NOTE: jansson's parser buffers are freed without being wiped; only
     * the parsed token string is overwritten below. */
    root = json_loadb(body, len, 0, &jerr);
    if (root == NULL)
        return md_error_set(err, MD_E_SERVICE,
                            "invalid token reply from Entra ID: not JSON "
                            "(error at byte %d)", jerr.position);
    access = json_object_get(root, "access_token");
    type = json_object_get(root, "token_type");

    if (!json_is_object(root)) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: not a JSON "
                     "object");
    } else if (!json_is_string(access) || json_string_length(access) == 0) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: access_token is "
                     "missing or empty");
    } else if (json_string_length(access) > ACCESS_TOKEN_MAX) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: access_token has "
                     "%zu bytes, more than the %d accepted",
                     json_string_length(access), ACCESS_TOKEN_MAX);
    } else if (!is_header_safe(json_string_value(access),
                               json_string_length(access))) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: access_token "
                     "holds characters a bearer token cannot contain");
    } else if (!json_is_string(type)
               || md_strcasecmp(json_string_value(type), "Bearer") != 0) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: token_type is "
                     "not Bearer");
    } else if (read_expires_in(json_object_get(root, "expires_in"),
                               expires_in) != 0) {
        md_error_set(err, MD_E_SERVICE,
                     "invalid token reply from Entra ID: expires_in is "
                     "missing or not a number of seconds from 1 to %d",
                     EXPIRES_IN_MAX);
    } else if (md_secret_set(token, json_string_value(access),
                             json_string_length(access)) != 0) {
        md_error_set(err, MD_E_INTERNAL, "out of memory");
    } else {
        rc = 0;
    }

    wipe_json_string(access);
    json_decref(root);
    return rc;
}

int md_auth_accept_reply(struct md_auth *auth, const char *body, size_t len,
                         struct md_error *err)
{
    struct md_secret token = { NULL, 0 };
    int64_t expires_in;

    if (md_auth_parse_token_reply(body, len, &token, &expires_in, err) != 0)
        return -1;
    md_secret_clear(&auth->token);
    auth->token = token;
    auth->obtained_at = md_now();
    auth->expires_at = auth->obtained_at
                       + (md_instant)expires_in * MD_TICKS_PER_SECOND;
    md_debug("auth: received a token valid for %lld s",
             (long long)expires_in);
    return 0;
}

struct aadsts_hint {
    long long code;
    const char *hint;
};

static const struct aadsts_hint hints[] = {
    { 7000215, "the client secret is wrong: give the secret's Value "
               "(shown once when it was created), not its Secret ID" },
    { 7000222, "the client secret has expired: create a new one under "
               "App registrations > Certificates & secrets and store it "
               "in the client secret file" },
    { 700016, "no application with this client_id exists in the tenant: "
              "check [auth] client_id and [auth] tenant_id" },
    { 90002, "the tenant was not found: check [auth] tenant_id (the "
             "directory ID or a verified domain name)" },
    { 900023, "the tenant identifier is malformed: set [auth] tenant_id "
              "to the directory (tenant) ID GUID or a verified domain "
              "name" },
    { 70011, "the scope is invalid: remove [auth] scope to use the "
             "backend's default, or give an API's App ID URI followed by "
             "/.default" },
    { 500011, "the API's service principal does not exist in this "
              "tenant: check [auth] tenant_id and [auth] scope, and that "
              "the tenant has the product (Defender XDR, Graph) enabled" },
    { 9001023, "the client credentials grant does not work with /common "
               "or /organizations: set [auth] tenant_id to your tenant's "
               "directory ID" },
    { 700027, "the client assertion's signature was not accepted: upload "
              "the certificate of [auth] certificate_file to the app "
              "registration (Certificates & secrets), check that it has "
              "not expired there and that the private key belongs to it" },
    { 700024, "the client assertion is outside its valid time range: "
              "check this host's clock (NTP)" },
    { 700021, "the client assertion names another application: check "
              "[auth] client_id" },
    { 700023, "the client assertion's audience is not this token "
              "endpoint: check [auth] cloud, authority_url and tenant_id" },
};

static const char *hint_for(long long code)
{
    for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++) {
        if (hints[i].code == code)
            return hints[i].hint;
    }
    return "check [auth] tenant_id, [auth] client_id and the client "
           "secret";
}

/* Copy text up to its first line break, replacing control characters. */
static void first_line(char *dst, size_t size, const char *src, size_t len)
{
    size_t n = 0;

    while (n < len && n + 1 < size && src[n] != '\r' && src[n] != '\n') {
        unsigned char c = (unsigned char)src[n];

        dst[n] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
        n++;
    }
    dst[n] = '\0';
}

static void copy_field(char *dst, size_t size, json_t *value)
{
    if (json_is_string(value))
        first_line(dst, size, json_string_value(value),
                   json_string_length(value));
}

/* The AADSTS number: error_codes[0], else the number after "AADSTS" at
 * the start of the description; 0 when neither is present. */
static long long aadsts_code(json_t *root, const char *description)
{
    json_t *codes = json_object_get(root, "error_codes");
    long long code = 0;

    if (json_is_array(codes) && json_is_integer(json_array_get(codes, 0)))
        return json_integer_value(json_array_get(codes, 0));
    if (strncmp(description, "AADSTS", 6) != 0)
        return 0;
    for (const char *p = description + 6; *p >= '0' && *p <= '9'; p++) {
        if (code > 1000000000)
            return 0;
        code = code * 10 + (*p - '0');
    }
    return code;
}

static int set_unreadable(long status, const char *body, size_t len,
                          struct md_error *err)
{
    char quote[QUOTE_MAX + 1];
    size_t n = len < QUOTE_MAX ? len : QUOTE_MAX;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)body[i];

        quote[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    quote[n] = '\0';
    return md_error_set(err, MD_E_SERVICE,
                        "the Entra ID token endpoint answered HTTP %ld "
                        "with an unexpected body: \"%s\"", status, quote);
}

int md_auth_error_from_reply(long status, const char *body, size_t len,
                             struct md_error *err)
{
    char description[300] = "";
    char code_text[32] = "";
    json_error_t jerr;
    json_t *root;
    json_t *error;
    long long code;

    if (err != NULL)
        err->http_status = status;
    root = json_loadb(body, len, 0, &jerr);
    error = json_object_get(root, "error");
    if (!json_is_string(error)) {
        json_decref(root);
        return set_unreadable(status, body, len, err);
    }

    if (err != NULL) {
        copy_field(err->service_code, sizeof(err->service_code), error);
        copy_field(err->request_id, sizeof(err->request_id),
                   json_object_get(root, "trace_id"));
    }
    copy_field(description, sizeof(description),
               json_object_get(root, "error_description"));
    code = aadsts_code(root, description);
    if (description[0] == '\0' && code != 0)
        snprintf(description, sizeof(description), "AADSTS%lld", code);
    else if (code != 0 && strncmp(description, "AADSTS", 6) != 0)
        snprintf(code_text, sizeof(code_text), "AADSTS%lld: ", code);

    if (status >= 500
        || strcmp(json_string_value(error), "temporarily_unavailable") == 0)
        md_error_set(err, MD_E_SERVICE,
                     "Entra ID cannot issue a token now (HTTP %ld, %s): "
                     "\"%s%s\"; try again later", status,
                     json_string_value(error), code_text, description);
    else
        md_error_set(err, MD_E_AUTH,
                     "Entra ID rejected the token request (HTTP %ld, %s): "
                     "\"%s%s\"; %s", status, json_string_value(error),
                     code_text, description, hint_for(code));
    json_decref(root);
    return -1;
}

/* The token request's form, with the client secret or a fresh client
 * assertion. */
static int make_form(struct md_auth *auth, char **form, size_t *len,
                     struct md_error *err)
{
    struct md_secret assertion = { NULL, 0 };
    int rc;

    if (auth->key == NULL)
        return md_auth_build_form(auth->client_id, auth->scope,
                                  &auth->secret, form, len, err);
    if (md_auth_make_assertion(auth, md_now(), &assertion, err) != 0)
        return -1;
    rc = build_assertion_form(auth->client_id, auth->scope, &assertion,
                              form, len, err);
    md_secret_clear(&assertion);
    return rc;
}

static int request_token(struct md_auth *auth, struct md_error *err)
{
    const char *headers[] = {
        "Content-Type: application/x-www-form-urlencoded",
        "Accept: application/json",
        NULL
    };
    struct md_http_request req;
    struct md_http_response resp;
    char *form = NULL;
    size_t form_len = 0;
    int rc = -1;

    if (make_form(auth, &form, &form_len, err) != 0)
        return -1;
    memset(&req, 0, sizeof(req));
    req.method = "POST";
    req.url = auth->token_url;
    req.headers = headers;
    req.body = form;
    req.body_len = form_len;
    req.secret_reply = 1;
    md_http_response_init(&resp);

    md_debug("auth: requesting a token for scope %s", auth->scope);
    if (md_http_perform(auth->http, &req, &resp, err) != 0) {
        md_error_prefix(err, "cannot get an access token from Entra ID");
        goto out;
    }
    if (resp.status == 200) {
        rc = md_auth_accept_reply(auth, resp.body.data, resp.body.len, err);
        goto out;
    }

    md_auth_error_from_reply(resp.status, resp.body.data, resp.body.len,
                             err);
    if (err != NULL && err->request_id[0] == '\0')
        snprintf(err->request_id, sizeof(err->request_id), "%s",
                 resp.ms_request_id);

out:
    md_wipe(form, form_len);
    free(form);
    md_http_response_free(&resp);
    return rc;
}

static int token_is_fresh(const struct md_auth *auth, md_instant now)
{
    md_instant lifetime = auth->expires_at - auth->obtained_at;
    md_instant margin = lifetime / 10;

    if (auth->token.value == NULL)
        return 0;
    if (margin < RENEW_MIN_SECONDS * MD_TICKS_PER_SECOND)
        margin = RENEW_MIN_SECONDS * MD_TICKS_PER_SECOND;
    return now < auth->expires_at - margin;
}

int md_auth_token(struct md_auth *auth, const struct md_secret **token,
                  struct md_error *err)
{
    *token = NULL;
    if (!token_is_fresh(auth, md_now())) {
        md_auth_invalidate(auth);
        if (request_token(auth, err) != 0)
            return -1;
    }
    *token = &auth->token;
    return 0;
}

/* ---- Token claims -------------------------------------------------------- */

static int base64url_value(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-' || c == '+')
        return 62;
    if (c == '_' || c == '/')
        return 63;
    return -1;
}

/* Decode base64url (padding optional) into out, which has room for
 * len * 3 / 4 + 1 bytes.  Returns the length, or -1 when invalid. */
static long base64url_decode(const char *in, size_t len, unsigned char *out)
{
    unsigned long acc = 0;
    int bits = 0;
    long n = 0;

    while (len > 0 && in[len - 1] == '=')
        len--;
    for (size_t i = 0; i < len; i++) {
        int v = base64url_value((unsigned char)in[i]);

        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned long)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)((acc >> bits) & 0xff);
        }
    }
    return bits >= 6 ? -1 : n;
}

static char *claim_string(json_t *payload, const char *name)
{
    json_t *value = json_object_get(payload, name);

    if (json_is_array(value))
        value = json_array_get(value, 0);
    return md_strdup(json_is_string(value) ? json_string_value(value) : "");
}

static md_instant claim_time(json_t *payload, const char *name)
{
    json_t *value = json_object_get(payload, name);
    double seconds;

    if (json_is_integer(value))
        seconds = (double)json_integer_value(value);
    else if (json_is_real(value))
        seconds = json_real_value(value);
    else
        return 0;
    if (!(seconds > 0 && seconds < 1e11))
        return 0;
    return (md_instant)seconds * MD_TICKS_PER_SECOND;
}

static int claim_roles(json_t *payload, struct md_token_claims *claims)
{
    json_t *roles = json_object_get(payload, "roles");
    size_t n = json_is_array(roles) ? json_array_size(roles) : 0;
    size_t k = 0;

    claims->roles = calloc(n + 1, sizeof(*claims->roles));
    if (claims->roles == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        json_t *role = json_array_get(roles, i);

        if (!json_is_string(role))
            continue;
        claims->roles[k] = md_strdup(json_string_value(role));
        if (claims->roles[k] == NULL)
            return -1;
        k++;
    }
    return 0;
}

static int fill_claims(json_t *payload, struct md_token_claims *claims)
{
    claims->tenant = claim_string(payload, "tid");
    claims->application = claim_string(payload, "appid");
    if (claims->application != NULL && claims->application[0] == '\0') {
        free(claims->application);
        claims->application = claim_string(payload, "azp");
    }
    claims->audience = claim_string(payload, "aud");
    claims->expires = claim_time(payload, "exp");
    claims->issued = claim_time(payload, "iat");
    if (claims->tenant == NULL || claims->application == NULL ||
        claims->audience == NULL)
        return -1;
    return claim_roles(payload, claims);
}

int md_auth_decode_claims(const struct md_secret *token,
                          struct md_token_claims *claims,
                          struct md_error *err)
{
    const char *text = token->value;
    const char *first = text != NULL ? memchr(text, '.', token->len) : NULL;
    const char *second = NULL;
    unsigned char *decoded = NULL;
    json_error_t jerr;
    json_t *payload = NULL;
    long len = -1;
    int rc = -1;

    memset(claims, 0, sizeof(*claims));
    if (first != NULL)
        second = memchr(first + 1, '.',
                        token->len - (size_t)(first + 1 - text));
    if (second != NULL) {
        decoded = malloc((size_t)(second - first) * 3 / 4 + 2);
        if (decoded == NULL)
            return md_error_set(err, MD_E_INTERNAL, "out of memory");
        len = base64url_decode(first + 1, (size_t)(second - first - 1),
                               decoded);
    }
    if (len > 0)
        payload = json_loadb((const char *)decoded, (size_t)len, 0, &jerr);
    if (!json_is_object(payload)) {
        md_error_set(err, MD_E_SERVICE, "the access token is not a JWT "
                     "with readable claims, so its tenant, application and "
                     "roles cannot be shown");
        goto out;
    }
    if (fill_claims(payload, claims) != 0) {
        md_auth_claims_free(claims);
        md_error_set(err, MD_E_INTERNAL, "out of memory");
        goto out;
    }
    rc = 0;

out:
    json_decref(payload);
    free(decoded);
    return rc;
}

int md_auth_claims_has_role(const struct md_token_claims *claims,
                            const char *role)
{
    for (char **r = claims->roles; r != NULL && *r != NULL; r++) {
        if (strcmp(*r, role) == 0)
            return 1;
    }
    return 0;
}

void md_auth_claims_free(struct md_token_claims *claims)
{
    free(claims->tenant);
    free(claims->application);
    free(claims->audience);
    for (char **r = claims->roles; r != NULL && *r != NULL; r++)
        free(*r);
    free(claims->roles);
    memset(claims, 0, sizeof(*claims));
}
