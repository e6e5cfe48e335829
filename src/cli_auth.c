/*
 * mdhunt auth check: get a token and show what it grants.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "mdhunt/auth.h"
#include "mdhunt/backend.h"
#include "mdhunt/cli.h"
#include "mdhunt/http.h"
#include "mdhunt/log.h"
#include "mdhunt/mdtime.h"

static const char auth_usage[] =
"Usage: mdhunt auth check\n"
"\n"
"Get an access token with the configured credential (client secret or\n"
"certificate) and print the tenant, application, roles and expiry read\n"
"from its claims, never the token itself.  The claims are decoded, not\n"
"verified.  Then say which application permission the configured\n"
"backend needs and whether the token has it: the exit status is 3 when\n"
"it does not.\n";

static void print_roles(const struct md_token_claims *claims)
{
    fputs("roles:        ", stdout);
    if (claims->roles == NULL || claims->roles[0] == NULL) {
        fputs("(none)\n", stdout);
        return;
    }
    for (char **r = claims->roles; *r != NULL; r++)
        printf("%s%s", r == claims->roles ? "" : ", ", *r);
    putchar('\n');
}

static void print_expiry(md_instant expires)
{
    char text[MD_TIME_TEXT_MAX];
    int64_t left;

    if (expires == 0) {
        puts("expires:      (no exp claim)");
        return;
    }
    left = (expires - md_now()) / MD_TICKS_PER_SECOND;
    printf("expires:      %s (in %lld min)\n",
           md_time_format_seconds(expires, text, sizeof(text)),
           (long long)(left > 0 ? left / 60 : 0));
}

static void print_claims(const struct md_config *cfg, struct md_auth *auth,
                         const struct md_token_claims *claims)
{
    char credential[160];

    md_auth_describe_credential(auth, credential, sizeof(credential));
    printf("cloud:        %s\n", md_cloud_name(cfg->auth.cloud));
    printf("token url:    %s\n", md_auth_token_url(auth));
    printf("credential:   %s\n", credential);
    printf("tenant:       %s\n", claims->tenant);
    printf("application:  %s\n", claims->application);
    printf("audience:     %s\n", claims->audience);
    print_roles(claims);
    print_expiry(claims->expires);
}

/* Print what the backend needs and fail with MD_E_PERMISSION when the
 * token lacks it. */
static int check_permission(const struct md_config *cfg,
                            const struct md_token_claims *claims,
                            struct md_error *err)
{
    enum md_backend_kind kind = cfg->api.backend;
    const char *role = md_backend_permission(kind);
    const char *api = md_backend_permission_api(kind);

    printf("backend:      %s\n", md_backend_kind_name(kind));
    if (role == NULL) {
        puts("needs:        no application role (access to a Log "
             "Analytics workspace comes from Azure role assignments)");
        return 0;
    }
    printf("needs:        %s (application permission of %s)\n", role, api);
    if (md_auth_claims_has_role(claims, role)) {
        puts("permission:   granted");
        return 0;
    }
    puts("permission:   missing");
    return md_error_set(err, MD_E_PERMISSION, "the token of application %s "
                        "has no %s role, so the %s backend will be denied; "
                        "add the application permission %s of %s to the "
                        "app registration and grant admin consent",
                        claims->application, role, md_backend_kind_name(kind),
                        role, api);
}

static int auth_check(struct md_cli *cli, struct md_error *err)
{
    struct md_http_options opts;
    struct md_http *http = NULL;
    struct md_auth *auth = NULL;
    const struct md_secret *token;
    struct md_token_claims claims;
    int status = -1;

    memset(&claims, 0, sizeof(claims));
    if (md_cli_load_config(cli, 1, err) != 0 ||
        md_config_require_auth(&cli->cfg, err) != 0)
        return -1;

    memset(&opts, 0, sizeof(opts));
    opts.ca_file = cli->cfg.api.ca_file;
    opts.proxy = cli->cfg.api.proxy;
    opts.connect_timeout = cli->cfg.api.connect_timeout;
    opts.timeout = cli->cfg.api.timeout;
    if (md_http_new(&opts, &http, err) != 0 ||
        md_auth_new(&cli->cfg, http, &auth, err) != 0 ||
        md_auth_token(auth, &token, err) != 0 ||
        md_auth_decode_claims(token, &claims, err) != 0)
        goto out;

    print_claims(&cli->cfg, auth, &claims);
    if (check_permission(&cli->cfg, &claims, err) != 0)
        goto out;
    status = 0;

out:
    md_auth_claims_free(&claims);
    md_auth_free(auth);
    md_http_free(http);
    return status;
}

int md_cmd_auth(struct md_cli *cli, int argc, char **argv,
                struct md_error *err)
{
    static const struct option options[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(auth_usage, stdout);
            return 0;
        default:
            return md_error_set(err, MD_E_USAGE, "auth: unknown option %s; "
                                "see mdhunt auth --help", argv[optind - 1]);
        }
    }
    if (optind >= argc || strcmp(argv[optind], "check") != 0)
        return md_error_set(err, MD_E_USAGE, "auth: expected the "
                            "subcommand check; see mdhunt auth --help");
    if (optind + 2 == argc && (strcmp(argv[optind + 1], "--help") == 0 ||
                               strcmp(argv[optind + 1], "-h") == 0)) {
        fputs(auth_usage, stdout);
        return 0;
    }
    if (optind + 1 != argc)
        return md_error_set(err, MD_E_USAGE, "auth check: unexpected "
                            "argument %s; it takes none", argv[optind + 1]);
    return auth_check(cli, err);
}
