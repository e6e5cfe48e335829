/* Tests for certificate credentials: loading the certificate and its key,
 * and the client assertion's header, claims and signature, checked with
 * OpenSSL against the fixture certificate. */
#include "testutil.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mdhunt/auth.h"
#include "mdhunt/config.h"
#include "mdhunt/http.h"

#define CERTS MD_TEST_DATA "/certs/"
#define TENANT "3f1c2a9e-7b4d-4c8e-9a61-5d2e8f0b7c34"
#define CLIENT "8d0e5b17-2f6a-4e39-b1c4-7a9d3e6f2051"
#define TOKEN_URL "https://login.microsoftonline.com/" TENANT \
                  "/oauth2/v2.0/token"
/* 2025-03-01T00:00:00Z */
#define NOW_S INT64_C(1740787200)
#define NOW (NOW_S * MD_TICKS_PER_SECOND)

/* A configuration for the fixture files; key and passphrase may be NULL. */
static void make_config(struct md_config *cfg, const char *cert,
                        const char *key, const char *passphrase,
                        enum md_assertion_alg alg)
{
    assert_int_equal(md_config_init(cfg), 0);
    cfg->path = md_strdup("t.ini");
    cfg->auth.tenant_id = md_strdup(TENANT);
    cfg->auth.client_id = md_strdup(CLIENT);
    cfg->auth.certificate_file = md_strdup(cert);
    cfg->auth.private_key_file = md_strdup(key);
    cfg->auth.passphrase_file = md_strdup(passphrase);
    cfg->auth.assertion_alg = alg;
}

/* Load the files and create the token source; returns 0 or -1. */
static int new_auth(struct md_config *cfg, struct md_auth **auth,
                    struct md_error *err)
{
    md_error_clear(err);
    *auth = NULL;
    if (md_config_require_auth(cfg, err) != 0)
        return -1;
    return md_auth_new(cfg, NULL, auth, err);
}

static struct md_auth *auth_for(enum md_assertion_alg alg,
                                struct md_config *cfg)
{
    struct md_auth *auth;
    struct md_error err;

    make_config(cfg, CERTS "app-cert.pem", CERTS "app-key.pem", NULL, alg);
    if (new_auth(cfg, &auth, &err) != 0)
        fail_msg("%s", err.message);
    return auth;
}

/* The three parts of a compact JWS. */
struct jws {
    char *text;
    json_t *header;
    json_t *claims;
    unsigned char signature[1024];
    size_t signature_len;
    size_t signed_len;      /* bytes of "header.claims" */
};

static size_t b64url_decode(const char *in, size_t len, unsigned char *out)
{
    char buf[4096];
    size_t n = 0;
    int decoded;

    assert_true(len + 4 < sizeof(buf));
    for (size_t i = 0; i < len; i++) {
        assert_true(in[i] != '=');
        buf[n] = in[i];
        if (in[i] == '-')
            buf[n] = '+';
        else if (in[i] == '_')
            buf[n] = '/';
        n++;
    }
    while (n % 4 != 0)
        buf[n++] = '=';
    decoded = EVP_DecodeBlock(out, (const unsigned char *)buf, (int)n);
    assert_true(decoded >= 0);
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    if (len % 4 == 2)
        decoded -= 2;
    else if (len % 4 == 3)
        decoded -= 1;
    return (size_t)decoded;
}

static json_t *decode_part(const char *in, size_t len)
{
    unsigned char bytes[4096];
    size_t n = b64url_decode(in, len, bytes);
    json_error_t jerr;
    json_t *value = json_loadb((const char *)bytes, n, 0, &jerr);

    assert_non_null(value);
    return value;
}

static void split(const struct md_secret *assertion, struct jws *out)
{
    char *first;
    char *second;

    memset(out, 0, sizeof(*out));
    out->text = assertion->value;
    first = strchr(out->text, '.');
    assert_non_null(first);
    second = strchr(first + 1, '.');
    assert_non_null(second);
    assert_null(strchr(second + 1, '.'));
    out->header = decode_part(out->text, (size_t)(first - out->text));
    out->claims = decode_part(first + 1, (size_t)(second - first - 1));
    out->signed_len = (size_t)(second - out->text);
    out->signature_len = b64url_decode(second + 1, strlen(second + 1),
                                       out->signature);
}

static void free_jws(struct jws *j)
{
    json_decref(j->header);
    json_decref(j->claims);
}

static struct jws make(struct md_auth *auth, struct md_secret *assertion)
{
    struct md_error err;
    struct jws j;

    if (md_auth_make_assertion(auth, NOW, assertion, &err) != 0)
        fail_msg("%s", err.message);
    split(assertion, &j);
    return j;
}

static X509 *fixture_cert(void)
{
    FILE *f = fopen(CERTS "app-cert.pem", "r");
    X509 *cert;

    assert_non_null(f);
    cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(cert);
    return cert;
}

/* base64url of the certificate's SHA-1 or SHA-256 digest. */
static void thumbprint(const EVP_MD *md, char *out, size_t size)
{
    X509 *cert = fixture_cert();
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    unsigned char text[128];
    int n;

    assert_int_equal(X509_digest(cert, md, digest, &len), 1);
    n = EVP_EncodeBlock(text, digest, (int)len);
    while (n > 0 && text[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++) {
        if (text[i] == '+')
            text[i] = '-';
        else if (text[i] == '/')
            text[i] = '_';
    }
    assert_true((size_t)n < size);
    memcpy(out, text, (size_t)n);
    out[n] = '\0';
    X509_free(cert);
}

/* Verify the signature with the certificate's public key. */
static int verify(const struct jws *j, enum md_assertion_alg alg)
{
    X509 *cert = fixture_cert();
    EVP_PKEY *key = X509_get_pubkey(cert);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok;

    ok = EVP_DigestVerifyInit(ctx, &pctx, EVP_sha256(), NULL, key) == 1;
    if (ok && alg == MD_ASSERTION_PS256)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1
             && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) == 1;
    ok = ok && EVP_DigestVerify(ctx, j->signature, j->signature_len,
                                (const unsigned char *)j->text,
                                j->signed_len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    X509_free(cert);
    return ok;
}

static const char *str(json_t *object, const char *key)
{
    json_t *value = json_object_get(object, key);

    return json_is_string(value) ? json_string_value(value) : "";
}

static json_int_t num(json_t *object, const char *key)
{
    json_t *value = json_object_get(object, key);

    assert_true(json_is_integer(value));
    return json_integer_value(value);
}

/* ---- Header and claims ---- */

static void ps256_header_names_sha256(void **state)
{
    struct md_config cfg;
    struct md_auth *auth = auth_for(MD_ASSERTION_PS256, &cfg);
    struct md_secret assertion = { NULL, 0 };
    struct jws j = make(auth, &assertion);
    char want[64];

    (void)state;
    thumbprint(EVP_sha256(), want, sizeof(want));
    assert_string_equal(str(j.header, "alg"), "PS256");
    assert_string_equal(str(j.header, "typ"), "JWT");
    assert_string_equal(str(j.header, "x5t#S256"), want);
    assert_null(json_object_get(j.header, "x5t"));
    free_jws(&j);
    md_secret_clear(&assertion);
    md_auth_free(auth);
    md_config_free(&cfg);
}

static void rs256_header_names_sha1(void **state)
{
    struct md_config cfg;
    struct md_auth *auth = auth_for(MD_ASSERTION_RS256, &cfg);
    struct md_secret assertion = { NULL, 0 };
    struct jws j = make(auth, &assertion);
    char want[64];

    (void)state;
    thumbprint(EVP_sha1(), want, sizeof(want));
    assert_string_equal(str(j.header, "alg"), "RS256");
    assert_string_equal(str(j.header, "x5t"), want);
    assert_null(json_object_get(j.header, "x5t#S256"));
    free_jws(&j);
    md_secret_clear(&assertion);
    md_auth_free(auth);
    md_config_free(&cfg);
}

static void claims_name_endpoint_and_client(void **state)
{
    struct md_config cfg;
    struct md_auth *auth = auth_for(MD_ASSERTION_PS256, &cfg);
    struct md_secret assertion = { NULL, 0 };
    struct jws j = make(auth, &assertion);

    (void)state;
    assert_string_equal(str(j.claims, "aud"), TOKEN_URL);
    assert_string_equal(md_auth_token_url(auth), TOKEN_URL);
    assert_string_equal(str(j.claims, "iss"), CLIENT);
    assert_string_equal(str(j.claims, "sub"), CLIENT);
    assert_true(num(j.claims, "nbf") == NOW_S);
    assert_true(num(j.claims, "iat") == NOW_S);
    assert_true(num(j.claims, "exp") == NOW_S + 600);
    assert_int_equal(json_object_size(j.claims), 7);
    free_jws(&j);
    md_secret_clear(&assertion);
    md_auth_free(auth);
    md_config_free(&cfg);
}

static int is_uuid4(const char *s)
{
    if (strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;

        if (dash ? s[i] != '-' : strchr("0123456789abcdef", s[i]) == NULL)
            return 0;
    }
    return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

static void jti_is_fresh_uuid(void **state)
{
    struct md_config cfg;
    struct md_auth *auth = auth_for(MD_ASSERTION_PS256, &cfg);
    struct md_secret first = { NULL, 0 };
    struct md_secret second = { NULL, 0 };
    struct jws a = make(auth, &first);
    struct jws b = make(auth, &second);

    (void)state;
    assert_true(is_uuid4(str(a.claims, "jti")));
    assert_true(is_uuid4(str(b.claims, "jti")));
    assert_string_not_equal(str(a.claims, "jti"), str(b.claims, "jti"));
    free_jws(&a);
    free_jws(&b);
    md_secret_clear(&first);
    md_secret_clear(&second);
    md_auth_free(auth);
    md_config_free(&cfg);
}

/* ---- Signatures ---- */

static void ps256_signature_verifies(void **state)
{
    struct md_config cfg;
    struct md_auth *auth = auth_for(MD_ASSERTION_PS256, &cfg);
    struct md_secret assertion = { NULL, 0 };
    struct jws j = make(auth, &assertion);

    (void)state;
    assert_int_equal(j.signature_len, 256);
    assert_true(verify(&j, MD_ASSERTION_PS256));
    assert_false(verify(&j, MD_ASSERTION_RS256));
    /* One changed byte of the signed text breaks it. */
    j.text[j.signed_len - 1] ^= 1;
    assert_false(verify(&j, MD_ASSERTION_PS256));
    free_jws(&j);
    md_secret_clear(&assertion);
    md_auth_free(auth);
    md_config_free(&cfg);
}

static void rs256_signature_verifies(void **state)
{
    struct md_config cfg;
    struct md_auth *auth = auth_for(MD_ASSERTION_RS256, &cfg);
    struct md_secret assertion = { NULL, 0 };
    struct jws j = make(auth, &assertion);

    (void)state;
    assert_true(verify(&j, MD_ASSERTION_RS256));
    assert_false(verify(&j, MD_ASSERTION_PS256));
    free_jws(&j);
    md_secret_clear(&assertion);
    md_auth_free(auth);
    md_config_free(&cfg);
}

/* ---- Keys and certificates ---- */

static void encrypted_key_with_passphrase_loads(void **state)
{
    struct md_config cfg;
    struct md_auth *auth;
    struct md_error err;
    char text[160];

    (void)state;
    make_config(&cfg, CERTS "app-cert.pem", CERTS "app-key-encrypted.pem",
                CERTS "passphrase.txt", MD_ASSERTION_PS256);
    if (new_auth(&cfg, &auth, &err) != 0)
        fail_msg("%s", err.message);
    md_auth_describe_credential(auth, text, sizeof(text));
    assert_non_null(strstr(text, "certificate with SHA-1 thumbprint"));
    md_auth_free(auth);
    md_config_free(&cfg);
}

static void combined_pem_file_loads(void **state)
{
    struct md_config cfg;
    struct md_auth *auth;
    struct md_error err;

    (void)state;
    make_config(&cfg, CERTS "app-combined.pem", NULL, NULL,
                MD_ASSERTION_RS256);
    if (new_auth(&cfg, &auth, &err) != 0)
        fail_msg("%s", err.message);
    md_auth_free(auth);
    md_config_free(&cfg);
}

/* Create a token source that must fail with a message containing text. */
static void assert_rejected(const char *cert, const char *key,
                            const char *passphrase, const char *text)
{
    struct md_config cfg;
    struct md_auth *auth;
    struct md_error err;

    make_config(&cfg, cert, key, passphrase, MD_ASSERTION_PS256);
    assert_int_equal(new_auth(&cfg, &auth, &err), -1);
    assert_null(auth);
    assert_int_equal(err.kind, MD_E_CONFIG);
    if (strstr(err.message, text) == NULL)
        fail_msg("\"%s\" lacks \"%s\"", err.message, text);
    /* No key material in a message. */
    assert_null(strstr(err.message, "MII"));
    md_config_free(&cfg);
}

static void encrypted_key_needs_passphrase(void **state)
{
    (void)state;
    assert_rejected(CERTS "app-cert.pem", CERTS "app-key-encrypted.pem",
                    NULL, "set [auth] passphrase_file");
}

static void wrong_passphrase_rejected(void **state)
{
    (void)state;
    assert_rejected(CERTS "app-cert.pem", CERTS "app-key-encrypted.pem",
                    CERTS "wrong-passphrase.txt", "check the passphrase");
}

static void foreign_key_rejected(void **state)
{
    (void)state;
    assert_rejected(CERTS "app-cert.pem", CERTS "other-key.pem", NULL,
                    "does not belong to the certificate");
}

static void ec_key_rejected(void **state)
{
    (void)state;
    assert_rejected(CERTS "ec-cert.pem", CERTS "ec-key.pem", NULL,
                    "not an RSA key");
}

static void small_key_rejected(void **state)
{
    (void)state;
    assert_rejected(CERTS "small-cert.pem", CERTS "small-key.pem", NULL,
                    "at least 2048");
}

static void key_file_without_key_rejected(void **state)
{
    (void)state;
    assert_rejected(CERTS "app-cert.pem", NULL, NULL,
                    "no readable PEM private key");
}

static void missing_certificate_named(void **state)
{
    (void)state;
    assert_rejected(CERTS "absent-cert.pem", CERTS "app-key.pem", NULL,
                    CERTS "absent-cert.pem");
}

static void certificate_and_secret_rejected(void **state)
{
    struct md_config cfg;
    struct md_error err;

    (void)state;
    make_config(&cfg, CERTS "app-cert.pem", CERTS "app-key.pem", NULL,
                MD_ASSERTION_PS256);
    cfg.auth.client_secret_file = md_strdup(CERTS "passphrase.txt");
    md_error_clear(&err);
    assert_int_equal(md_config_require_auth(&cfg, &err), -1);
    assert_int_equal(err.kind, MD_E_CONFIG);
    assert_non_null(strstr(err.message, "keep one"));
    md_config_free(&cfg);
}

/* ---- The token request ---- */

struct captured {
    char form[8192];
};

static int capture(const struct md_http_request *req,
                   struct md_http_response *resp, struct md_error *err,
                   void *ctx)
{
    struct captured *c = ctx;

    (void)err;
    assert_true(req->body_len < sizeof(c->form));
    memcpy(c->form, req->body, req->body_len);
    c->form[req->body_len] = '\0';
    resp->status = 200;
    assert_int_equal(md_buf_puts(&resp->body, "{\"token_type\":\"Bearer\","
                                 "\"expires_in\":3599,\"access_token\":"
                                 "\"a.b.c\"}"), 0);
    return 0;
}

static void token_request_sends_assertion(void **state)
{
    struct md_http_options opts;
    struct md_http *http = NULL;
    struct md_config cfg;
    struct md_auth *auth;
    struct captured c;
    const struct md_secret *token;
    struct md_error err;

    (void)state;
    memset(&opts, 0, sizeof(opts));
    assert_int_equal(md_http_new(&opts, &http, &err), 0);
    md_http_set_transport(http, capture, &c);
    make_config(&cfg, CERTS "app-cert.pem", CERTS "app-key.pem", NULL,
                MD_ASSERTION_PS256);
    assert_int_equal(md_config_require_auth(&cfg, &err), 0);
    assert_int_equal(md_auth_new(&cfg, http, &auth, &err), 0);
    assert_int_equal(md_auth_token(auth, &token, &err), 0);

    assert_non_null(strstr(c.form, "client_id=" CLIENT "&"));
    assert_non_null(strstr(c.form, "&client_assertion_type=urn%3Aietf%3A"
                           "params%3Aoauth%3Aclient-assertion-type%3A"
                           "jwt-bearer&"));
    assert_non_null(strstr(c.form, "&client_assertion=ey"));
    assert_non_null(strstr(c.form, "&grant_type=client_credentials"));
    assert_null(strstr(c.form, "client_secret"));
    md_auth_free(auth);
    md_http_free(http);
    md_config_free(&cfg);
}

/* ---- Token claims ---- */

static void claims_decoded_from_token(void **state)
{
    /* {"tid":"t-1","appid":"a-1","aud":"https://graph.microsoft.com",
     *  "roles":["R1","R2"],"exp":1740790800} */
    static const char token[] =
        "eyJ0eXAiOiJKV1QifQ."
        "eyJ0aWQiOiJ0LTEiLCJhcHBpZCI6ImEtMSIsImF1ZCI6Imh0dHBzOi8vZ3JhcGgu"
        "bWljcm9zb2Z0LmNvbSIsInJvbGVzIjpbIlIxIiwiUjIiXSwiZXhwIjoxNzQwNzkw"
        "ODAwfQ.c2ln";
    struct md_secret secret = { (char *)token, sizeof(token) - 1 };
    struct md_token_claims claims;
    struct md_error err;

    (void)state;
    assert_int_equal(md_auth_decode_claims(&secret, &claims, &err), 0);
    assert_string_equal(claims.tenant, "t-1");
    assert_string_equal(claims.application, "a-1");
    assert_string_equal(claims.audience, "https://graph.microsoft.com");
    assert_string_equal(claims.roles[0], "R1");
    assert_string_equal(claims.roles[1], "R2");
    assert_null(claims.roles[2]);
    assert_true(claims.expires == INT64_C(1740790800) * MD_TICKS_PER_SECOND);
    assert_true(md_auth_claims_has_role(&claims, "R2"));
    assert_false(md_auth_claims_has_role(&claims, "r2"));
    md_auth_claims_free(&claims);
}

static void opaque_token_not_decoded(void **state)
{
    static const char token[] = "not-a-jwt";
    struct md_secret secret = { (char *)token, sizeof(token) - 1 };
    struct md_token_claims claims;
    struct md_error err;

    (void)state;
    md_error_clear(&err);
    assert_int_equal(md_auth_decode_claims(&secret, &claims, &err), -1);
    assert_int_equal(err.kind, MD_E_SERVICE);
    assert_null(claims.roles);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ps256_header_names_sha256),
        cmocka_unit_test(rs256_header_names_sha1),
        cmocka_unit_test(claims_name_endpoint_and_client),
        cmocka_unit_test(jti_is_fresh_uuid),
        cmocka_unit_test(ps256_signature_verifies),
        cmocka_unit_test(rs256_signature_verifies),
        cmocka_unit_test(encrypted_key_with_passphrase_loads),
        cmocka_unit_test(combined_pem_file_loads),
        cmocka_unit_test(encrypted_key_needs_passphrase),
        cmocka_unit_test(wrong_passphrase_rejected),
        cmocka_unit_test(foreign_key_rejected),
        cmocka_unit_test(ec_key_rejected),
        cmocka_unit_test(small_key_rejected),
        cmocka_unit_test(key_file_without_key_rejected),
        cmocka_unit_test(missing_certificate_named),
        cmocka_unit_test(certificate_and_secret_rejected),
        cmocka_unit_test(token_request_sends_assertion),
        cmocka_unit_test(claims_decoded_from_token),
        cmocka_unit_test(opaque_token_not_decoded),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
