/*
 * Microsoft Entra ID access tokens for the hunting APIs.
 *
 * mdhunt uses the OAuth 2.0 client credentials grant with a client secret
 * against the v2.0 token endpoint:
 *   POST {authority}/{tenant}/oauth2/v2.0/token
 *   client_id=...&scope=...&client_secret=...&grant_type=client_credentials
 * The token is cached and renewed shortly before it expires.
 *
 * Neither the token nor the client secret ever reaches a log line or an
 * error message.
 */
#ifndef MDHUNT_AUTH_H
#define MDHUNT_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "mdhunt/buf.h"
#include "mdhunt/config.h"
#include "mdhunt/error.h"
#include "mdhunt/http.h"

/* Authority (login host) of a cloud, e.g. https://login.microsoftonline.com;
 * NULL for an unknown cloud. */
const char *md_auth_cloud_authority(enum md_cloud cloud);

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
 * Create a token source from cfg->auth, whose client secret must already
 * be loaded (md_config_require_auth).  The secret and the settings are
 * copied; http is borrowed and must outlive the token source.
 * A tenant_id that is not a GUID or domain name is MD_E_CONFIG.
 * Free with md_auth_free().
 */
int md_auth_new(const struct md_config *cfg, struct md_http *http,
                struct md_auth **out, struct md_error *err);

/* Wipe the secret and the token and free. */
void md_auth_free(struct md_auth *auth);

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
 * Parse a token reply: access_token (non-empty), token_type "Bearer" (any
 * case), expires_in as a JSON number or a numeric string, in seconds
 * (1 to 31536000).  On success the token is copied into token and
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
