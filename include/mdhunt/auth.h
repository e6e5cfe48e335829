/*
 * Microsoft Entra ID access tokens for the hunting APIs.
 *
 * mdhunt uses the OAuth 2.0 client credentials grant against the v2.0
 * token endpoint:
 *   POST {authority}/{tenant}/oauth2/v2.0/token
 *   client_id=...&scope=...&client_secret=...&grant_type=client_credentials
 * With a certificate ([auth] certificate_file) client_secret is replaced
 * by client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
 * jwt-bearer and client_assertion, a JWT signed with the certificate's
 * private key (RFC 7523), made afresh for every token request.
 * The token is cached and renewed shortly before it expires.
 *
 * Neither the token, the client secret, the private key nor an assertion
 * ever reaches a log line or an error message.
 */
#ifndef MDHUNT_AUTH_H
#define MDHUNT_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/buf.h"
#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/http.h"
#include "mdhunt/mdtime.h"

/* Authority (login host) of a cloud, e.g. https://login.microsoftonline.com;
 * NULL for an unknown cloud. */
const char *md_auth_cloud_authority(enum md_cloud cloud);

/* Defender portal of a cloud for links, e.g. https://security.microsoft.com;
 * NULL when the cloud has none. */
const char *md_auth_portal_url(enum md_cloud cloud);

/* Token scope a backend needs in a cloud, e.g.
 * https://graph.microsoft.com/.default; NULL when unknown. */
const char *md_auth_default_scope(enum md_backend_kind kind,
                                  enum md_cloud cloud);

/* Base URL of a backend's API in a cloud, without a trailing slash, e.g.
 * https://graph.microsoft.com; NULL when unknown. */
const char *md_auth_default_api_url(enum md_backend_kind kind,
                                    enum md_cloud cloud);

/*
 * The values in effect for a configuration: [auth] authority_url, else the
 * cloud's authority; [auth] scope, else the (backend, cloud) scope;
 * [api] url, else the backend's default.  [api] url never changes the
 * scope, so a proxy or a test server in front of the API still receives a
 * token for the real audience.  The strings are borrowed from cfg or from
 * static tables; NULL when the table has no entry.
 */
const char *md_auth_authority(const struct md_config *cfg);
const char *md_auth_scope(const struct md_config *cfg);
const char *md_auth_api_url(const struct md_config *cfg);

/* A token source (opaque). */
struct md_auth;

/*
 * Create a token source from cfg->auth, whose credential must already be
 * loaded (md_config_require_auth).  The secret and the settings are
 * copied; http is borrowed and must outlive the token source.
 * A tenant_id that is not a GUID or domain name is MD_E_CONFIG.  With a
 * certificate, the certificate file is read here, and the private key is
 * parsed with the passphrase.  These are MD_E_CONFIG errors naming the
 * file: an unreadable certificate, and a key that cannot be decrypted,
 * is not RSA of at least 2048 bits or does not belong to the
 * certificate.
 * Free with md_auth_free().
 */
int md_auth_new(const struct md_config *cfg, struct md_http *http,
                struct md_auth **out, struct md_error *err);

/* Wipe the secret, the private key and the token and free. */
void md_auth_free(struct md_auth *auth);

/*
 * Describe the credential for the operator, e.g. "client secret" or
 * "certificate with SHA-1 thumbprint 84E0...5534 (PS256)".  Never the
 * secret itself.
 */
void md_auth_describe_credential(const struct md_auth *auth, char *buf,
                                 size_t size);

/* The token endpoint URL, which is also a client assertion's audience.
 * Borrowed from auth. */
const char *md_auth_token_url(const struct md_auth *auth);

/*
 * Make a client assertion for a token request at now, a compact JWS.
 * Its header has alg (PS256 or RS256, from [auth] assertion_alg), typ
 * JWT, and x5t#S256 with PS256 or x5t with RS256.  Its claims are aud
 * (the token URL), iss and sub (the client ID), jti (a random UUID), nbf
 * and iat (now) and exp (now + 10 minutes).  *assertion receives the
 * text, which the caller clears.  Errors: MD_E_CONFIG when auth uses a
 * client secret, MD_E_INTERNAL when signing fails.
 */
int md_auth_make_assertion(struct md_auth *auth, md_instant now,
                           struct md_secret *assertion,
                           struct md_error *err);

/* Claims of an access token, read from its payload without verifying
 * its signature: fit to show the operator, never to trust. */
struct md_token_claims {
    char *tenant;           /* tid */
    char *application;      /* appid (v1 tokens), else azp (v2) */
    char *audience;         /* aud */
    char **roles;           /* roles, NULL-terminated; empty when absent */
    md_instant expires;     /* exp; 0 when absent */
    md_instant issued;      /* iat; 0 when absent */
};

/*
 * Decode the payload of a JWT access token into claims (free with
 * md_auth_claims_free).  Missing string claims are empty strings.  A
 * token that is not three base64url parts with a JSON object in the
 * middle is MD_E_SERVICE.
 */
int md_auth_decode_claims(const struct md_secret *token,
                          struct md_token_claims *claims,
                          struct md_error *err);

/* Whether claims contains role, compared exactly as Entra ID does. */
int md_auth_claims_has_role(const struct md_token_claims *claims,
                            const char *role);

void md_auth_claims_free(struct md_token_claims *claims);

/*
 * Store in *token a valid access token, requesting a new one when none is
 * cached or when less than max(60 s, 10% of its lifetime) remains.  Call
 * it before every API request.  *token is borrowed from auth and stays
 * valid until the next md_auth_* call.  Errors: MD_E_AUTH (Entra ID
 * rejected the request, with the AADSTS code and what to check),
 * MD_E_SERVICE (Entra ID unavailable or its reply unreadable), and the
 * transport errors of md_http_perform().
 */
int md_auth_token(struct md_auth *auth, const struct md_secret **token,
                  struct md_error *err);

/* Drop the cached token, so that the next md_auth_token() requests a new
 * one (after the API rejected it with 401). */
void md_auth_invalidate(struct md_auth *auth);

/*
 * Parse a successful token reply and cache its token, obtained now.
 * md_auth_token() uses it; tests use it to give auth a token without a
 * request.
 */
int md_auth_accept_reply(struct md_auth *auth, const char *body, size_t len,
                         struct md_error *err);

/*
 * Parse a token reply: access_token (1 to 65536 bytes), token_type
 * "Bearer" (any case), expires_in as a JSON number or a numeric string, in
 * seconds (1 to 31536000).  On success the token is copied into token and
 * *expires_in is set.  A reply that does not fit is MD_E_SERVICE.
 */
int md_auth_parse_token_reply(const char *body, size_t len,
                              struct md_secret *token, int64_t *expires_in,
                              struct md_error *err);

/*
 * Turn an unsuccessful token reply into err: MD_E_AUTH quoting the AADSTS
 * code and the first line of error_description, with what to check for
 * known codes; MD_E_SERVICE for a 5xx status or temporarily_unavailable.
 * Fills http_status, service_code (the OAuth "error") and request_id (the
 * trace_id).  Always returns -1.
 */
int md_auth_error_from_reply(long status, const char *body, size_t len,
                             struct md_error *err);

/*
 * Build the URL-encoded client credentials form.  *form is allocated
 * memory that contains the secret: the caller wipes it (md_wipe over *len
 * bytes) and frees it with free().
 */
int md_auth_build_form(const char *client_id, const char *scope,
                       const struct md_secret *secret, char **form,
                       size_t *len, struct md_error *err);

#endif
