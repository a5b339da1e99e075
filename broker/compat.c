/* Liberal absorptions of what published MAP clients send (issue #20; README
 * "Compatibility notes"). Each rewrite is logged once per connection at info
 * level, never silently; the request then goes through the normal handler
 * with its normal validation. */
#include "compat.h"

#include <libwebsockets.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

/* Log an absorption the first time a connection needs it. */
static void mb__note(mb_session *s, unsigned bit, const char *what)
{
    if (s->compat_noted & bit)
        return;
    s->compat_noted |= bit;
    mb_info(s->session_id, "compat: %s (logged once per connection)", what);
}

/* {agentId: X} (agent-inbox, also with system for federation) means {agent: X}. */
static void mb__send_address(mb_ctx *cx)
{
    json_t *to = json_object_get(cx->params, "to");
    json_t *aid = json_object_get(to, "agentId");
    if (!json_is_string(aid) || json_object_get(to, "agent"))
        return;
    json_object_set(to, "agent", aid);
    json_object_del(to, "agentId");
    mb__note(cx->s, MB_COMPAT_AGENTID, "map/send to {agentId} taken as {agent}");
}

/* A MIME-style contentType (macro-agent: "text/plain") maps to text (text/...)
 * or data (anything else with a slash); MAP's own names and x-* pass. */
static void mb__content_type(mb_ctx *cx)
{
    const char *ct = json_string_value(json_object_get(cx->params, "contentType"));
    if (!ct || !strchr(ct, '/') || !strncmp(ct, "x-", 2) || strlen(ct) > 128)
        return;
    const char *to = strncmp(ct, "text/", 5) ? "data" : "text";
    if (!(cx->s->compat_noted & MB_COMPAT_MIME)) {
        cx->s->compat_noted |= MB_COMPAT_MIME;
        mb_info(cx->s->session_id, "compat: contentType \"%s\" taken as \"%s\" (logged once per connection)", ct, to);
    }
    json_object_set_new(cx->params, "contentType", json_string(to));
}

/* mail v1.1 names the conversation {id} where v1.0 says conversationId. */
static void mb__conversation_id(mb_ctx *cx)
{
    json_t *id = json_object_get(cx->params, "id");
    if (json_is_string(id) && !json_object_get(cx->params, "conversationId"))
        json_object_set(cx->params, "conversationId", id);
}

void mb_compat_params(mb_ctx *cx)
{
    static const char *const by_id[] = {"mail/get", "mail/close", "mail/reopen", "mail/replay", "mail/presence", NULL};
    const char *m = cx->method;
    if (!m || !json_is_object(cx->params))
        return;
    if (!strcmp(m, "map/send"))
        mb__send_address(cx);
    else if (!strcmp(m, "mail/turn"))
        mb__content_type(cx);
    for (int i = 0; by_id[i]; i++)
        if (!strcmp(m, by_id[i]))
            mb__conversation_id(cx);
}

/* Failed notifications logged per connection; later ones are only counted (a peer cannot flood the log). */
#define MB_NOTIFY_ERR_LOGGED 20

void mb_compat_notification_failed(mb_ctx *cx, int rc)
{
    mb_session *s = cx->s;
    cx->b->stats.notification_errors++;
    if (s->notify_errors < MB_NOTIFY_ERR_LOGGED)
        mb_warn(s->session_id, "notification %s failed (nobody receives the error): %d %s", cx->method,
                cx->err.code ? cx->err.code : rc, cx->err.message[0] ? cx->err.message : "failed");
    if (++s->notify_errors == MB_NOTIFY_ERR_LOGGED)
        mb_warn(s->session_id, "%d failed notifications on this connection: further ones are only counted "
                "(mapbroker_notification_errors_total)", MB_NOTIFY_ERR_LOGGED);
}

void mb_compat_url_credential(mb_session *s, struct lws *wsi)
{
    char buf[1024];
    const char *v = mb_http_query_arg(wsi, "token", buf, sizeof buf);
    if (!v)
        v = mb_http_query_arg(wsi, "access_token", buf, sizeof buf);
    if (v && *v) {
        mb_compat_session_free(s);
        s->url_credential = strdup(v);
    }
    OPENSSL_cleanse(buf, sizeof buf);
}

json_t *mb_compat_connect_auth(mb_session *s)
{
    if (!s->url_credential)
        return NULL;
    json_t *a = json_pack("{s:s, s:s}", "method", "bearer", "credential", s->url_credential);
    mb_compat_session_free(s);
    mb__note(s, MB_COMPAT_URL_TOKEN, "credential taken from the WebSocket URL (?token= / ?access_token=)");
    return a;
}

void mb_compat_session_free(mb_session *s)
{
    if (!s->url_credential)
        return;
    OPENSSL_cleanse(s->url_credential, strlen(s->url_credential));
    free(s->url_credential);
    s->url_credential = NULL;
}

void mb_compat_connect_caps(mb_session *s, json_t *params)
{
    /* Opt-in: capabilities.mail.turnReceived true, or (macro-agent's signal
     * as shipped) a mail capability that can join conversations. false opts out. */
    json_t *mail = json_object_get(json_object_get(params, "capabilities"), "mail");
    json_t *tr = json_object_get(mail, "turnReceived");
    if (json_is_boolean(tr))
        s->mail_push = json_is_true(tr);
    else
        s->mail_push = json_is_true(json_object_get(mail, "canJoin"));
}
