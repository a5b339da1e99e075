/* Mail v1.1 beside v1.0 (issue #20; agent-inbox's surface): mail/presence,
 * the mail/turn.received push, and (in compat.c) {id} for conversationId.
 * mail/turn's importance is part of the turn (mail.c). v1.0 stays as it is:
 * both versions are advertised in the connect capabilities (conn.c).
 *
 * The push is opt-in per connection (map/connect capabilities.mail:
 * turnReceived, or canJoin as macro-agent declares it) so SDK clients that do
 * not expect it are not flooded; it goes only to participants' own
 * connections, never to the author's, and only with turns they may see. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "compat.h"
#include "mail.h"

/* ms since the epoch as ISO 8601 UTC with milliseconds (what agent-inbox stores). */
static void mb__iso(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

/* The live connection of a participant (an agent's owner, or a client's session), else NULL. */
static mb_session *mb__part_session(mb_broker *b, const char *id)
{
    mb_agent *a = mb_agent_get(b, id);
    mb_session *s = a ? a->session : mb_map_get(b->participants, id);
    return s && s->wsi && !s->detached && s->state == MB_READY ? s : NULL;
}

static int h_presence(mb_ctx *cx)
{
    const char *id;
    if (mp_get_str(cx->params, "conversationId", MP_REQUIRED, &id, &cx->err))
        return cx->err.code;
    mb_conv *c = mb_conv_get(cx->b, id);
    if (!c)
        return MB_FAIL(cx, MP_MAIL_CONV_NOT_FOUND, "conversationId", "Conversation not found: %s", id);
    if (!mb_mail_may_read(cx->s, c))
        return MB_FAIL(cx, MP_MAIL_NOT_PARTICIPANT, "conversationId", "Not a participant of conversation %s", c->id);
    json_t *arr = json_array();
    MB_MAP_FOREACH(c->parts, e)
    {
        mb_part *p = mb_map_val(e);
        if (p->left)
            continue;
        char when[32];
        mb__iso(json_integer_value(json_object_get(p->doc, "joinedAt")), when);
        json_t *role = json_object_get(p->doc, "role");
        json_array_append_new(arr, json_pack("{s:s, s:O, s:s, s:s}", "agent_id", p->id, "role",
                                             role ? role : json_null(), "joined_at", when, "presence",
                                             mb__part_session(cx->b, p->id) ? "online" : "offline"));
    }
    cx->result = json_pack("{s:s, s:o}", "conversationId", c->id, "participants", arr);
    return 0;
}

/* {jsonrpc, method:"mail/turn.received", params} for a Turn object (borrowed). */
static json_t *mb__turn_received(const json_t *turn)
{
    char when[32];
    mb__iso(json_integer_value(json_object_get(turn, "timestamp")), when);
    json_t *p = json_pack("{s:O, s:O, s:O, s:O, s:O, s:s}", "conversation_id", json_object_get(turn, "conversationId"),
                          "turn_id", json_object_get(turn, "id"), "participant_id", json_object_get(turn, "participant"),
                          "content_type", json_object_get(turn, "contentType"), "content",
                          json_object_get(turn, "content"), "created_at", when);
    if (!p)
        return NULL;
    mp_copy_key(p, turn, "importance");
    json_t *th = json_object_get(turn, "threadId");
    if (th)
        json_object_set(p, "thread_id", th);
    return json_pack("{s:s, s:s, s:o}", "jsonrpc", "2.0", "method", "mail/turn.received", "params", p);
}

void mb_mail_push_turn(mb_broker *b, struct mb_conv *c, const char *author, const char *txt, size_t len)
{
    mb_session *own = mb__part_session(b, author);
    json_t *turn = NULL, *note = NULL, *data = NULL;
    mb_map *sent = NULL; /* session id -> session: one push per connection */
    MB_MAP_FOREACH(c->parts, e)
    {
        mb_part *p = mb_map_val(e);
        mb_session *s = p->left || !strcmp(p->id, author) ? NULL : mb__part_session(b, p->id);
        if (!s || !s->mail_push || s == own || (sent && mb_map_get(sent, s->session_id)))
            continue;
        if (!note) { /* the first recipient pays for the tree; nobody opted in costs nothing */
            turn = mp_json_parse(txt, len, 4096);
            data = turn ? json_pack("{s:O}", "turn", turn) : NULL;
            note = data ? mb__turn_received(turn) : NULL;
            sent = mb_map_new();
            if (!note || !sent)
                break;
        }
        if (!mb_mail_may_read(s, c) || !mb_mail_event_visible(b, s, c->id, data))
            continue; /* canObserve off, a token not scoped to c, or a turn it may not see */
        mb_map_put(sent, s->session_id, s);
        if (mb_session_send_json(s, note, MB_Q_EVENT) == 0)
            b->stats.mail_pushes++;
    }
    mb_map_free(sent, NULL);
    json_decref(note);
    json_decref(data);
    json_decref(turn);
}

const mb_method mb_methods_mail_v11[] = {
    {"mail/presence", h_presence, 0},
    {NULL, NULL, 0},
};
