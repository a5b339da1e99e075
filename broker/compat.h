/* compat.h - what the published MAP clients need beyond the SDK (issue #20):
 * liberal absorptions of client deviations (compat.c), scopes created on
 * demand (scope_auto.c) and mail v1.1 beside v1.0 (mail_v11.c). Each
 * absorption is a README compatibility note and is logged once per
 * connection at info level. */
#ifndef MB_COMPAT_H
#define MB_COMPAT_H

#include "mb.h"

struct lws;
struct mb_conv;

/* Bits of mb_session.compat_noted: absorptions already logged on a connection. */
enum {
    MB_COMPAT_AGENTID = 1u << 0,   /* map/send to {agentId: X} taken as {agent: X} */
    MB_COMPAT_MIME = 1u << 1,      /* a MIME-style contentType taken as text / data */
    MB_COMPAT_URL_TOKEN = 1u << 2, /* credential from ?token= / ?access_token= */
};

/* Rewrite cx->params (borrowed, modified in place) of the deviations a
 * liberal broker absorbs, before the handler runs: {agentId} addresses,
 * MIME-style content types, v1.1's {id} for conversationId. */
void mb_compat_params(mb_ctx *cx);
/* A notification's handling failed (rc = its MAP code, cx->err the reason):
 * nobody receives the error, so it is logged at warn and counted. */
void mb_compat_notification_failed(mb_ctx *cx, int rc);
/* At the WebSocket upgrade of a MAP connection: keep ?token= / ?access_token=
 * (percent-decoded) for map/connect. Never logged. */
void mb_compat_url_credential(mb_session *s, struct lws *wsi);
/* For map/connect without auth: {method:"bearer", credential} from the URL
 * credential (new reference, and the session forgets it), else NULL. */
json_t *mb_compat_connect_auth(mb_session *s);
/* Free (and wipe) the session's URL credential. */
void mb_compat_session_free(mb_session *s);
/* map/connect params (borrowed): does the peer want mail/turn.received? */
void mb_compat_connect_caps(mb_session *s, json_t *params);

/* scope_auto.c: the scope `id`, created with the default join policy (through
 * map/scopes/create, with its permission check and scope_created event) when
 * it does not exist and --auto-create-scopes is on. NULL if it does not exist
 * and was not created. */
mb_scope *mb_scope_auto(mb_ctx *cx, const char *id);

/* mail_v11.c: push mail/turn.received for the turn just recorded in c (its
 * JSON text, borrowed) to the participants' connections that asked for it
 * (not the author's), each only if the turn is visible to it. */
void mb_mail_push_turn(mb_broker *b, struct mb_conv *c, const char *author, const char *txt, size_t len);

/* http.c: query argument `name` of the request on wsi, %-decoded into buf;
 * NULL (buf untouched) if absent or too long. */
const char *mb_http_query_arg(struct lws *wsi, const char *name, char *buf, int len);

#endif
