/* auth.h - authentication and permission checks (auth.c).
 *
 * Modes:
 *  - no --tokens: anonymous development mode; by default only loopback peers
 *    are served (--anonymous loopback), announced in the log at start-up.
 *  - --tokens FILE and/or --jwt-secret / --jwt-public-key / --token-secret:
 *    every peer must present a valid credential (API key from the file, a JWT,
 *    or a broker-minted token) before anything but map/connect /
 *    map/authenticate is served. The tokens file format and the JWT claim
 *    mapping are documented at the top of auth.c.
 */
#ifndef MB_AUTH_H
#define MB_AUTH_H

#include "mb.h"

int mb_auth_init(mb_broker *b, char *errbuf, size_t errlen);
void mb_auth_free(mb_broker *b);
/* 1 when credentials are required (--tokens given). */
int mb_auth_required(const mb_broker *b);

/* map/connect: verify `auth` (may be NULL). Returns 0 = proceed (authenticated
 * or anonymous allowed), 1 = answer with the authRequired form (cx->err may
 * carry the reason when bad credentials were given), -1 = fail the request
 * with cx->err. */
int mb_auth_connect(mb_ctx *cx, json_t *auth, enum mb_ptype pt);
/* Check a credential. On failure returns -1, *code is an AuthErrorCode string
 * ("invalid_credentials", "expired", "method_not_supported", ...) and msg a
 * human explanation (never containing the credential). On success fills *out
 * (caller owns its json fields: hand it to mb_auth_apply or clear it). */
int mb_auth_verify(mb_broker *b, mb_session *s, const char *method, const char *credential, json_t *metadata,
                   mb_principal *out, const char **code, char *msg, size_t msglen);
/* Install a verified principal on cx->s (takes ownership of pr's fields). */
int mb_auth_apply(mb_ctx *cx, mb_principal *pr);
void mb_auth_principal_clear(mb_principal *pr);
json_t *mb_auth_principal_json(const mb_principal *pr);
json_t *mb_auth_required_json(mb_broker *b);
int mb_auth_same_principal(const mb_session *a, const mb_session *b);

/* Permission gates used by handlers. Each returns 0 if allowed, else fills cx->err. */
int mb_auth_check_method(mb_ctx *cx, const mb_method *meth);
int mb_auth_check_filter(mb_ctx *cx, json_t *filter);
/* May this session register / act for agent id? */
int mb_auth_may_agent(const mb_session *s, const char *agent_id);
/* May this session read/write conversation id? (token scoping; participation is checked by mail.c) */
int mb_auth_may_conversation(const mb_session *s, const char *conv_id);
/* Is the session an operator (or is the broker in open development mode)? */
int mb_auth_is_operator(const mb_session *s);
int mb_auth_event_visible(mb_broker *b, mb_session *s, const mb_event *ev);

/* Called from mb_broker_housekeeping (every 250 ms): map/auth/expiring notices,
 * closing peers that did not finish the handshake in --handshake-timeout. */
void mb_auth_housekeeping(mb_broker *b);

/* x-mapbroker/token/create and x-mapbroker/token/revoke (operator only). */
extern const mb_method mb_methods_auth[];

#endif
