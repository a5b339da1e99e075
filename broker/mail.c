/* MAP mail (MAP.md 10): conversations, participants, threads and turns.
 *
 * Durability: every change is written to the store inside the loop pass's
 * transaction (mb_txn), and the reply and the mail.* events it causes are
 * released only once that transaction has committed (see broker.c). Turns get
 * a per-conversation seq (1, 2, 3, ...) in that same transaction.
 *
 * Access: reading a conversation needs participation (with canObserve), a
 * token scoped to it, or an operator principal (everyone in open development
 * mode); writing (turns, threads, invite, leave) needs participation. */
#include "mail.h"

#include <stdlib.h>
#include <inttypes.h>
#include <string.h>

#include "auth.h"
#include "compat.h"

/* ---- small helpers ---- */

static char *mb__dup(const char *s) { return s ? strdup(s) : NULL; }

static int mb__persist(mb_broker *b, enum mst_kind kind, const char *owner, const char *key, json_t *doc)
{
    if (mb_txn(b))
        return MST_EIO;
    size_t len;
    char *txt = mp_dump(doc, 0, &len);
    if (!txt)
        return MST_ENOMEM;
    struct mst_record r = {.kind = kind, .key = key, .owner = owner, .json = txt, .len = len};
    int rc = mst_put(b->store, &r);
    free(txt);
    if (rc)
        mb_error("mail", "store write failed for %s: %s (%s)", key, mst_strerror(rc), mst_last_error(b->store));
    return rc;
}

static int mb__store_fail(mb_ctx *cx)
{
    return MB_FAIL(cx, MP_INTERNAL, NULL, "The store refused the write; nothing was recorded");
}

static int mb__content_type_ok(const char *t)
{
    return !strcmp(t, "text") || !strcmp(t, "data") || !strcmp(t, "event") || !strcmp(t, "reference") ||
           (!strncmp(t, "x-", 2) && t[2]);
}

static const char *const mb__stop_reasons[] = {"convergence", "complete", "timeout", "error", "impasse", NULL};

/* ---- registry of conversations ---- */

static void mb__part_free(void *p)
{
    mb_part *x = p;
    free(x->id);
    json_decref(x->doc);
    free(x);
}

static void mb__thread_free(void *p)
{
    mb_thread *t = p;
    free(t->id);
    free(t->parent);
    json_decref(t->doc);
    free(t);
}

static void mb__conv_free(void *p)
{
    mb_conv *c = p;
    free(c->id);
    free(c->parent);
    free(c->task_agent);
    json_decref(c->doc);
    mb_map_free(c->parts, mb__part_free);
    mb_map_free(c->threads, mb__thread_free);
    mb_map_free(c->children, NULL);
    free(c);
}

mb_conv *mb_conv_get(mb_broker *b, const char *id)
{
    return id && b->mail ? mb_map_get(b->mail->convs, id) : NULL;
}

int mb_conv_active(const mb_conv *c)
{
    const char *st = json_string_value(json_object_get(c->doc, "status"));
    return st && (!strcmp(st, "active") || !strcmp(st, "paused"));
}

static mb_conv *mb__conv_new(mb_broker *b, const char *id, json_t *doc)
{
    mb_conv *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->id = strdup(id);
    c->doc = doc;
    c->parts = mb_map_new();
    c->threads = mb_map_new();
    c->children = mb_map_new();
    c->parent = mb__dup(json_string_value(json_object_get(doc, "parentConversationId")));
    c->task_agent = mb__dup(json_string_value(json_object_get(json_object_get(doc, "metadata"), "taskAgentId")));
    mb_map_put(b->mail->convs, c->id, c);
    mb_conv *p = mb_conv_get(b, c->parent);
    if (p)
        mb_map_put(p->children, c->id, c);
    return c;
}

static void mb__count_participants(mb_conv *c)
{
    json_int_t n = 0;
    MB_MAP_FOREACH(c->parts, e) if (!((mb_part *)mb_map_val(e))->left) n++;
    json_object_set_new(c->doc, "participantCount", json_integer(n));
}

static mb_part *mb__part_active(mb_conv *c, const char *id)
{
    mb_part *p = mb_map_get(c->parts, id);
    return p && !p->left ? p : NULL;
}

static int mb__perm(const mb_part *p, const char *key)
{
    return json_is_true(json_object_get(json_object_get(p->doc, "permissions"), key));
}

/* ---- start-up ---- */

static int mb__load_conv(void *arg, const struct mst_record *r)
{
    mb_broker *b = arg;
    json_t *doc = json_loadb(r->json, r->len, 0, NULL);
    if (!doc)
        return 0;
    if (!mb__conv_new(b, r->key, doc))
        json_decref(doc);
    return 0;
}

static int mb__load_part(void *arg, const struct mst_record *r)
{
    mb_broker *b = arg;
    mb_conv *c = mb_conv_get(b, r->owner);
    json_t *doc = c ? json_loadb(r->json, r->len, 0, NULL) : NULL;
    if (!doc)
        return 0;
    mb_part *p = calloc(1, sizeof *p);
    p->id = strdup(r->key);
    p->doc = doc;
    p->left = json_object_get(doc, "leftAt") != NULL;
    mb_map_put(c->parts, p->id, p);
    return 0;
}

static int mb__load_thread(void *arg, const struct mst_record *r)
{
    mb_broker *b = arg;
    mb_conv *c = mb_conv_get(b, r->owner);
    json_t *doc = c ? json_loadb(r->json, r->len, 0, NULL) : NULL;
    if (!doc)
        return 0;
    mb_thread *t = calloc(1, sizeof *t);
    t->id = strdup(r->key);
    t->doc = doc;
    t->parent = mb__dup(json_string_value(json_object_get(doc, "parentThreadId")));
    json_t *meta = json_object_get(doc, "_meta");
    t->depth = json_is_integer(json_object_get(meta, "depth")) ? (int)json_integer_value(json_object_get(meta, "depth")) : 1;
    mb_map_put(c->threads, t->id, t);
    return 0;
}

int mb_mail_init(mb_broker *b, char *errbuf, size_t errlen)
{
    b->mail = calloc(1, sizeof *b->mail);
    if (!b->mail || !(b->mail->convs = mb_map_new())) {
        snprintf(errbuf, errlen, "out of memory");
        return -1;
    }
    int rc = mst_scan(b->store, MST_CONV, NULL, mb__load_conv, b);
    if (!rc)
        rc = mst_scan(b->store, MST_PARTICIPANT, NULL, mb__load_part, b);
    if (!rc)
        rc = mst_scan(b->store, MST_THREAD, NULL, mb__load_thread, b);
    if (rc) {
        snprintf(errbuf, errlen, "cannot load conversations from the store: %s (%s)", mst_strerror(rc),
                 mst_last_error(b->store));
        return -1;
    }
    /* children whose parent was loaded after them */
    MB_MAP_FOREACH(b->mail->convs, e)
    {
        mb_conv *c = mb_map_val(e);
        mb_conv *p = mb_conv_get(b, c->parent);
        if (p)
            mb_map_put(p->children, c->id, c);
        mst_turn_last_seq(b->store, c->id, &c->last_seq);
    }
    if (mb_map_size(b->mail->convs))
        mb_info("mail", "%zu conversations reloaded", mb_map_size(b->mail->convs));
    return 0;
}

void mb_mail_free(mb_broker *b)
{
    if (!b->mail)
        return;
    mb_map_free(b->mail->convs, mb__conv_free);
    json_decref(b->mail->turn_source);
    free(b->mail);
    b->mail = NULL;
}

/* ---- access ---- */

static int mb__scoped_token(mb_session *s, mb_conv *c)
{
    return s->b->auth && s->authenticated && s->principal.conversations && mb_auth_may_conversation(s, c->id);
}

int mb_mail_may_read(mb_session *s, mb_conv *c)
{
    if (!mb_auth_may_conversation(s, c->id))
        return 0;
    mb_part *p = mb__part_active(c, mb_session_from(s));
    if (p)
        return mb__perm(p, "canObserve");
    return mb_auth_is_operator(s) || mb__scoped_token(s, c);
}

/* Find the conversation named by params.conversationId and check access. */
static int mb__conv_arg(mb_ctx *cx, mb_conv **out)
{
    const char *id;
    if (mp_get_str(cx->params, "conversationId", MP_REQUIRED, &id, &cx->err))
        return cx->err.code;
    mb_conv *c = mb_conv_get(cx->b, id);
    if (!c)
        return MB_FAIL(cx, MP_MAIL_CONV_NOT_FOUND, "conversationId", "Conversation not found: %s", id);
    if (!mb_auth_may_conversation(cx->s, c->id))
        return MB_FAIL(cx, MP_MAIL_PERMISSION, "conversationId", "This principal may not access conversation %s", id);
    *out = c;
    return 0;
}

static int mb__need_read(mb_ctx *cx, mb_conv *c)
{
    if (mb_mail_may_read(cx->s, c))
        return 0;
    mb_part *p = mb__part_active(c, mb_session_from(cx->s));
    if (p)
        return MB_FAIL(cx, MP_MAIL_HISTORY_DENIED, "conversationId", "Participant may not observe conversation %s", c->id);
    return MB_FAIL(cx, MP_MAIL_NOT_PARTICIPANT, "conversationId", "Not a participant of conversation %s", c->id);
}

static int mb__need_part(mb_ctx *cx, mb_conv *c, mb_part **out)
{
    *out = mb__part_active(c, mb_session_from(cx->s));
    if (!*out)
        return MB_FAIL(cx, MP_MAIL_NOT_PARTICIPANT, "conversationId", "Not a participant of conversation %s", c->id);
    return 0;
}

/* ---- participants ---- */

static json_t *mb__default_perms(json_t *given)
{
    json_t *p = json_pack("{s:b, s:b, s:b, s:b, s:b, s:s, s:b}", "canSend", 1, "canObserve", 1, "canInvite", 0,
                          "canRemove", 0, "canCreateThreads", 1, "historyAccess", "full", "canSeeInternal", 0);
    if (json_is_object(given)) {
        const char *k;
        json_t *v;
        json_object_foreach(given, k, v) if (json_object_get(p, k) && json_typeof(v) == json_typeof(json_object_get(p, k)))
            json_object_set(p, k, v);
        /* true/false have different jansson types; accept either for booleans */
        json_object_foreach(given, k, v) if (json_is_boolean(v) && json_is_boolean(json_object_get(p, k)))
            json_object_set(p, k, v);
    }
    return p;
}

static int mb__check_participant_spec(mb_ctx *cx, json_t *spec, const char *path)
{
    char f[96];
    if (!json_is_object(spec))
        return MB_FAIL(cx, MP_INVALID_PARAMS, path, "%s must be an object {id, role?, permissions?}", path);
    json_t *id = json_object_get(spec, "id");
    if (!json_is_string(id) || !mp_id_valid(json_string_value(id))) {
        snprintf(f, sizeof f, "%s.id", path);
        return MB_FAIL(cx, MP_INVALID_PARAMS, f, "%s must be a valid participant id", f);
    }
    json_t *role = json_object_get(spec, "role");
    static const char *roles[] = {"initiator", "assistant", "worker", "observer", "moderator", NULL};
    if (role && !json_is_null(role)) {
        int ok = 0;
        for (int i = 0; json_is_string(role) && roles[i]; i++)
            ok |= !strcmp(json_string_value(role), roles[i]);
        if (!ok) {
            snprintf(f, sizeof f, "%s.role", path);
            return MB_FAIL(cx, MP_INVALID_PARAMS, f, "%s must be initiator, assistant, worker, observer or moderator", f);
        }
    }
    json_t *perm = json_object_get(spec, "permissions");
    if (perm && !json_is_null(perm) && !json_is_object(perm)) {
        snprintf(f, sizeof f, "%s.permissions", path);
        return MB_FAIL(cx, MP_INVALID_PARAMS, f, "%s must be an object", f);
    }
    const char *ha = json_string_value(json_object_get(perm, "historyAccess"));
    if (ha && strcmp(ha, "none") && strcmp(ha, "from-join") && strcmp(ha, "full")) {
        snprintf(f, sizeof f, "%s.permissions.historyAccess", path);
        return MB_FAIL(cx, MP_INVALID_PARAMS, f, "%s must be none, from-join or full", f);
    }
    return 0;
}

/* Add (or re-add after leaving) a participant; emits mail.participant.joined. */
static mb_part *mb__add_participant(mb_broker *b, mb_conv *c, const char *id, const char *role, json_t *perms,
                                    const char *source)
{
    mb_part *p = mb_map_get(c->parts, id);
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p)
            return NULL;
        p->id = strdup(id);
        mb_map_put(c->parts, p->id, p);
    } else {
        json_decref(p->doc);
    }
    p->left = 0;
    mb_agent *a = mb_agent_get(b, id);
    p->doc = json_pack("{s:s, s:s, s:s, s:I, s:o}", "id", id, "type", a ? "agent" : "user", "role",
                       role ? role : "assistant", "joinedAt", (json_int_t)mb_now(), "permissions",
                       mb__default_perms(perms));
    if (a) {
        json_t *ai = json_pack("{s:s}", "agentId", a->id);
        mp_copy_key(ai, a->doc, "name");
        if (a->role)
            json_object_set_new(ai, "role", json_string(a->role));
        json_object_set_new(p->doc, "agentInfo", ai);
    }
    mb__count_participants(c);
    json_object_set_new(c->doc, "updatedAt", json_integer(mb_now()));
    mb__persist(b, MST_PARTICIPANT, c->id, p->id, p->doc);
    mb_emit(b, "mail.participant.joined", source,
            json_pack("{s:s, s:O}", "conversationId", c->id, "participant", p->doc), NULL, NULL);
    return p;
}

/* ---- turns ---- */

struct mb__turn_spec {
    const char *participant;
    const char *content_type;
    json_t *content;          /* borrowed */
    const char *thread_id;
    const char *in_reply_to;
    json_t *visibility;       /* borrowed, may be NULL */
    json_t *metadata;         /* borrowed, may be NULL */
    json_t *source;           /* stolen */
    const char *importance;   /* mail v1.1: low | normal | high | urgent, or NULL */
};

struct mb__find_turn {
    const char *conv;
    int found;
    uint64_t seq;
    json_t *doc;
};

static int mb__find_turn_cb(void *arg, const struct mst_turn *t)
{
    struct mb__find_turn *f = arg;
    f->found = 1;
    f->seq = t->seq;
    if (strcmp(t->conv_id, f->conv))
        f->found = 2; /* exists, other conversation */
    else
        f->doc = json_loadb(t->json, t->len, 0, NULL);
    return 1;
}

/* Look a turn up by id. Returns 0 if absent, 1 if in conv (seq/doc filled), 2 if elsewhere. */
static int mb__turn_lookup(mb_broker *b, const char *conv, const char *turn_id, uint64_t *seq, json_t **doc)
{
    struct mb__find_turn f = {.conv = conv};
    mst_turn_get(b->store, turn_id, mb__find_turn_cb, &f);
    if (seq)
        *seq = f.seq;
    if (doc)
        *doc = f.doc;
    else
        json_decref(f.doc);
    return f.found;
}

static int mb__validate_visibility(mb_ctx *cx, json_t *vis, const char *path)
{
    if (!vis || json_is_null(vis))
        return 0;
    const char *t = json_string_value(json_object_get(vis, "type"));
    if (!json_is_object(vis) || !t)
        return MB_FAIL(cx, MP_INVALID_PARAMS, path, "%s must be {type: all|participants|role|private}", path);
    if (!strcmp(t, "all") || !strcmp(t, "private"))
        return 0;
    if (!strcmp(t, "participants") && json_is_array(json_object_get(vis, "ids")))
        return 0;
    if (!strcmp(t, "role") && json_is_array(json_object_get(vis, "roles")))
        return 0;
    return MB_FAIL(cx, MP_INVALID_PARAMS, path,
                   "%s must be {type:\"all\"}, {type:\"participants\", ids:[...]}, {type:\"role\", roles:[...]} or "
                   "{type:\"private\"}",
                   path);
}

static int mb__validate_turn_metadata(mb_ctx *cx, json_t *md)
{
    if (!md)
        return 0;
    json_t *h = json_object_get(md, "handoff_target");
    if (h && !json_is_null(h)) {
        if (!json_is_string(h) || !mp_id_valid(json_string_value(h)))
            return MB_FAIL(cx, MP_INVALID_PARAMS, "metadata.handoff_target", "metadata.handoff_target must be an agent id");
        if (!mb_agent_get(cx->b, json_string_value(h)) && !mb_map_get(cx->b->participants, json_string_value(h)))
            return MB_FAIL(cx, MP_AGENT_NOT_FOUND, "metadata.handoff_target", "Handoff target not found: %s",
                           json_string_value(h));
    }
    json_t *s = json_object_get(md, "stop_reason");
    if (s && !json_is_null(s)) {
        int ok = 0;
        for (int i = 0; json_is_string(s) && mb__stop_reasons[i]; i++)
            ok |= !strcmp(json_string_value(s), mb__stop_reasons[i]);
        if (!ok)
            return MB_FAIL(cx, MP_INVALID_PARAMS, "metadata.stop_reason",
                           "metadata.stop_reason must be convergence, complete, timeout, error or impasse");
    }
    return 0;
}

/* The mail.turn.added data {"conversationId","turn","seq"} around the turn's
 * text (what mp_dump of the json_pack below would write). */
static char *mb__turn_added_text(const char *conv_id, const char *turn, size_t turn_len, uint64_t seq, size_t *len)
{
    mp_buf t = {0};
    mp_buf_lit(&t, "{\"conversationId\":");
    mp_buf_quote(&t, conv_id, strlen(conv_id));
    mp_buf_lit(&t, ",\"turn\":");
    mp_buf_put(&t, turn, turn_len);
    mp_buf_lit(&t, ",\"seq\":");
    mp_buf_int(&t, (int64_t)seq);
    mp_buf_lit(&t, "}");
    if (t.failed) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}

/* {type:"explicit", method:"mail/turn"}, the source of every turn posted with
 * mail/turn: one object per broker, never modified, referenced by each such
 * turn (json_pack parsed its format for every turn). A new reference, or NULL. */
static json_t *mb__mail_turn_source(mb_broker *b)
{
    if (!b->mail->turn_source)
        b->mail->turn_source = json_pack("{s:s, s:s}", "type", "explicit", "method", "mail/turn");
    return json_incref(b->mail->turn_source);
}

/* The Turn's JSON text: {id, conversationId, participant, timestamp,
 * contentType, content, threadId?, inReplyTo?, source, visibility?, status,
 * metadata}, written straight from the spec (no tree). NULL when a string is
 * not valid UTF-8 or on OOM. */
static char *mb__turn_text(const char *id, const mb_conv *c, const struct mb__turn_spec *sp, int64_t now, size_t *len)
{
    mp_buf t = {0};
    mp_buf_lit(&t, "{\"id\":");
    mp_buf_quote(&t, id, strlen(id));
    mp_buf_lit(&t, ",\"conversationId\":");
    mp_buf_quote(&t, c->id, strlen(c->id));
    mp_buf_lit(&t, ",\"participant\":");
    mp_buf_quote(&t, sp->participant, strlen(sp->participant));
    mp_buf_lit(&t, ",\"timestamp\":");
    mp_buf_int(&t, now);
    mp_buf_lit(&t, ",\"contentType\":");
    mp_buf_quote(&t, sp->content_type, strlen(sp->content_type));
    mp_buf_lit(&t, ",\"content\":");
    if (sp->content)
        mp_buf_json(&t, sp->content);
    else
        mp_buf_lit(&t, "null");
    if (sp->thread_id) {
        mp_buf_lit(&t, ",\"threadId\":");
        mp_buf_quote(&t, sp->thread_id, strlen(sp->thread_id));
    }
    if (sp->in_reply_to) {
        mp_buf_lit(&t, ",\"inReplyTo\":");
        mp_buf_quote(&t, sp->in_reply_to, strlen(sp->in_reply_to));
    }
    if (sp->importance) {
        mp_buf_lit(&t, ",\"importance\":");
        mp_buf_quote(&t, sp->importance, strlen(sp->importance));
    }
    mp_buf_lit(&t, ",\"source\":");
    mp_buf_json(&t, sp->source); /* fails on NULL (OOM building it) */
    if (sp->visibility && !json_is_null(sp->visibility)) {
        mp_buf_lit(&t, ",\"visibility\":");
        mp_buf_json(&t, sp->visibility);
    }
    mp_buf_lit(&t, ",\"status\":\"complete\",\"metadata\":");
    if (json_is_object(sp->metadata))
        mp_buf_json(&t, sp->metadata);
    else
        mp_buf_lit(&t, "{}");
    mp_buf_lit(&t, "}");
    if (t.failed) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}

/* Record a turn (assumes everything was validated): store it, count it, emit
 * mail.turn.added (and .handoff / .stop when its metadata says so). Returns 0,
 * or -1 when it was refused (a string not valid UTF-8, OOM) or not stored.
 * With tree_out, the Turn object (new reference); with txt_out, its text
 * (malloc, the caller frees). sp->source is consumed. The hot path (mail/turn)
 * asks for the text only: no tree is built for the turn or its event, whose
 * data the first reader that needs it (a subscription filter, an observer)
 * parses back from the event text. */
static int mb__record_turn(mb_broker *b, mb_conv *c, struct mb__turn_spec *sp, const char *event_source,
                           json_t **tree_out, char **txt_out, size_t *len_out)
{
    char id[48];
    mb_new_id(b, "turn-", id, sizeof id);
    int64_t now = mb_now();
    size_t len = 0;
    char *txt = mb__turn_text(id, c, sp, now, &len);
    json_decref(sp->source);
    sp->source = NULL;
    if (!txt || mb_txn(b)) {
        free(txt);
        return -1;
    }
    struct mst_turn st = {.id = id, .conv_id = c->id, .seq = c->last_seq + 1, .thread_id = sp->thread_id,
                          .participant = sp->participant, .content_type = sp->content_type, .ts = now, .json = txt,
                          .len = len};
    int rc = mst_turn_append(b->store, &st);
    if (rc) {
        mb_error("mail", "turn not recorded in %s: %s (%s)", c->id, mst_strerror(rc), mst_last_error(b->store));
        free(txt);
        return -1;
    }
    c->last_seq++;
    b->stats.turns_recorded++;
    json_object_set_new(c->doc, "updatedAt", json_integer(now));
    if (sp->thread_id) {
        mb_thread *th = mb_map_get(c->threads, sp->thread_id);
        if (th) {
            json_object_set_new(th->doc, "turnCount", json_integer(json_integer_value(json_object_get(th->doc, "turnCount")) + 1));
            json_t *authors = json_object_get(json_object_get(th->doc, "_meta"), "authors");
            if (json_is_object(authors) && !json_object_get(authors, sp->participant)) {
                json_object_set_new(authors, sp->participant, json_true());
                json_object_set_new(th->doc, "participantCount", json_integer((json_int_t)json_object_size(authors)));
            }
            json_object_set_new(th->doc, "updatedAt", json_integer(now));
            mb__persist(b, MST_THREAD, c->id, th->id, th->doc);
        }
    }
    size_t dn;
    char *dt = mb__turn_added_text(c->id, txt, len, c->last_seq, &dn);
    if (dt)
        mb_emit_text(b, "mail.turn.added", event_source, c->id, dt, dn);
    else
        mb_emit(b, "mail.turn.added", event_source,
                json_pack("{s:s, s:o, s:I}", "conversationId", c->id, "turn", mp_json_parse(txt, len, 4096), "seq",
                          (json_int_t)c->last_seq),
                NULL, NULL);
    free(dt);
    mb_mail_push_turn(b, c, sp->participant, txt, len); /* mail v1.1 mail/turn.received (mail_v11.c) */
    const char *handoff = json_string_value(json_object_get(sp->metadata, "handoff_target"));
    const char *stop = json_string_value(json_object_get(sp->metadata, "stop_reason"));
    json_t *t = tree_out || handoff || stop ? mp_json_parse(txt, len, 4096) : NULL;
    if (handoff)
        mb_emit(b, "mail.turn.handoff", event_source,
                json_pack("{s:s, s:s, s:s, s:s, s:O}", "conversationId", c->id, "turnId", id, "from", sp->participant,
                          "to", handoff, "turn", t),
                NULL, NULL);
    if (stop)
        mb_emit(b, "mail.turn.stop", event_source,
                json_pack("{s:s, s:s, s:s, s:O}", "conversationId", c->id, "turnId", id, "reason", stop, "turn", t),
                NULL, NULL);
    if (tree_out)
        *tree_out = t;
    else
        json_decref(t);
    if (txt_out) {
        *txt_out = txt;
        *len_out = len;
    } else {
        free(txt);
    }
    return 0;
}

/* Validate thread / inReplyTo for a turn in c. */
static int mb__check_turn_refs(mb_ctx *cx, mb_conv *c, const char *thread_id, const char *in_reply_to)
{
    if (thread_id && !mb_map_get(c->threads, thread_id))
        return MB_FAIL(cx, MP_MAIL_THREAD_NOT_FOUND, "threadId", "Thread not found in %s: %s", c->id, thread_id);
    if (in_reply_to && mb__turn_lookup(cx->b, c->id, in_reply_to, NULL, NULL) != 1)
        return MB_FAIL(cx, MP_MAIL_TURN_NOT_FOUND, "inReplyTo", "Turn not found in %s: %s", c->id, in_reply_to);
    return 0;
}

/* Visibility of a stored turn to a reader (MAP.md 10.3). */
static int mb__turn_visible(mb_conv *c, const char *reader, json_t *turn)
{
    json_t *vis = json_object_get(turn, "visibility");
    const char *t = json_string_value(json_object_get(vis, "type"));
    if (!t || !strcmp(t, "all"))
        return 1;
    const char *author = json_string_value(json_object_get(turn, "participant"));
    if (author && reader && !strcmp(author, reader))
        return 1;
    mb_part *p = reader ? mb_map_get(c->parts, reader) : NULL;
    if (!p)
        return reader == NULL; /* operators / scoped tokens (reader NULL) see everything */
    if (mb__perm(p, "canSeeInternal"))
        return 1;
    if (!strcmp(t, "participants")) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(vis, "ids"), i, x) if (json_is_string(x) &&
                                                                  !strcmp(json_string_value(x), reader)) return 1;
        return 0;
    }
    if (!strcmp(t, "role")) {
        const char *role = json_string_value(json_object_get(p->doc, "role"));
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(vis, "roles"), i, x) if (role && json_is_string(x) &&
                                                                    !strcmp(json_string_value(x), role)) return 1;
        return 0;
    }
    return 0; /* private */
}

/* ---- turn listing (shared by turns/list, replay, join catch-up, get) ---- */

struct mb__tl {
    mb_conv *c;
    const char *reader;          /* participant id, or NULL for full access */
    int64_t not_before;          /* from-join history: ts >= this */
    json_t *content_types;       /* array or NULL */
    const char *participant;     /* filter */
    int64_t after_ts, before_ts; /* exclusive bounds, 0 = none */
    size_t limit;
    json_t *out;
    int more;
    size_t counted;              /* with count_all: matches beyond the page */
    int count_all;
    int with_seq;               /* add "seq" to each turn (REST API) */
    int error;
};

static int mb__tl_cb(void *arg, const struct mst_turn *t)
{
    struct mb__tl *l = arg;
    if (l->not_before && t->ts < l->not_before)
        return 0;
    if (l->after_ts && t->ts <= l->after_ts)
        return 0;
    if (l->before_ts && t->ts >= l->before_ts)
        return 0;
    if (l->participant && strcmp(t->participant, l->participant))
        return 0;
    if (l->content_types) {
        int ok = 0;
        size_t i;
        json_t *x;
        json_array_foreach(l->content_types, i, x) if (json_is_string(x) && !strcmp(json_string_value(x), t->content_type)) ok = 1;
        if (!ok)
            return 0;
    }
    json_t *doc = json_loadb(t->json, t->len, 0, NULL);
    if (!doc) {
        l->error = 1;
        return 1;
    }
    if (!mb__turn_visible(l->c, l->reader, doc)) {
        json_decref(doc);
        return 0;
    }
    if (json_array_size(l->out) >= l->limit) {
        json_decref(doc);
        l->more = 1;
        l->counted++;
        return !l->count_all;
    }
    if (l->with_seq)
        json_object_set_new(doc, "seq", json_integer((json_int_t)t->seq));
    json_array_append_new(l->out, doc);
    l->counted++;
    return 0;
}

/* Who reads: NULL = full access (operator / scoped token), else the participant id. */
static const char *mb__reader(mb_session *s, mb_conv *c, int64_t *not_before)
{
    mb_part *p = mb__part_active(c, mb_session_from(s));
    *not_before = 0;
    if (!p)
        return NULL;
    const char *ha = json_string_value(json_object_get(json_object_get(p->doc, "permissions"), "historyAccess"));
    if (ha && !strcmp(ha, "from-join"))
        *not_before = json_integer_value(json_object_get(p->doc, "joinedAt"));
    if (ha && !strcmp(ha, "none"))
        *not_before = INT64_MAX;
    return p->id;
}

/* May session s see this mail.turn.* event? Participants see turns by the
 * turn's visibility (MAP.md 10.3); operators and tokens scoped to the
 * conversation see everything, like the turn listings. */
int mb_mail_event_visible(mb_broker *b, mb_session *s, const char *conv_id, json_t *data)
{
    json_t *turn = json_object_get(data, "turn");
    const char *vt = json_string_value(json_object_get(json_object_get(turn, "visibility"), "type"));
    if (!turn || !vt || !strcmp(vt, "all"))
        return 1;
    mb_conv *c = mb_conv_get(b, conv_id);
    if (!c)
        return 1;
    int64_t nb;
    const char *reader = mb__reader(s, c, &nb);
    if (!reader && !mb_mail_may_read(s, c))
        return 0;
    return mb__turn_visible(c, reader, turn);
}


int mb_mail_scan_turns(mb_broker *b, mb_conv *c, uint64_t after_seq, size_t limit, mst_turn_cb cb, void *arg)
{
    struct mst_turn_query q = {.conv_id = c->id, .after_seq = after_seq, .limit = limit};
    return mst_turn_scan(b->store, &q, cb, arg);
}

/* Reading turns additionally needs history access (none -> HISTORY_DENIED). */
static int mb__need_history(mb_ctx *cx, mb_conv *c)
{
    if (mb__need_read(cx, c))
        return cx->err.code;
    mb_part *p = mb__part_active(c, mb_session_from(cx->s));
    const char *ha = p ? json_string_value(json_object_get(json_object_get(p->doc, "permissions"), "historyAccess")) : NULL;
    if (ha && !strcmp(ha, "none"))
        return MB_FAIL(cx, MP_MAIL_HISTORY_DENIED, "conversationId", "Participant %s has no history access to %s",
                       p->id, c->id);
    return 0;
}

/* ---- methods ---- */

static const char *const mb__conv_types[] = {"user-session", "agent-task", "multi-agent", "mixed", NULL};

static int mb__one_of(const char *v, const char *const *set)
{
    for (int i = 0; set[i]; i++)
        if (!strcmp(v, set[i]))
            return 1;
    return 0;
}

/* Create a conversation record and its creator participant; emits joined + created. */
static mb_conv *mb__create_conv(mb_broker *b, const char *type, const char *subject, const char *parent,
                                const char *parent_turn, json_t *metadata, const char *creator, mb_part **creator_out)
{
    char id[48];
    mb_new_id(b, "conv-", id, sizeof id);
    int64_t now = mb_now();
    json_t *doc = json_pack("{s:s, s:s, s:s, s:i, s:I, s:I, s:s, s:o}", "id", id, "type", type, "status", "active",
                            "participantCount", 0, "createdAt", (json_int_t)now, "updatedAt", (json_int_t)now,
                            "createdBy", creator, "metadata", metadata ? json_incref(metadata) : json_object());
    if (subject)
        json_object_set_new(doc, "subject", json_string(subject));
    if (parent)
        json_object_set_new(doc, "parentConversationId", json_string(parent));
    if (parent_turn)
        json_object_set_new(doc, "parentTurnId", json_string(parent_turn));
    mb_conv *c = mb__conv_new(b, id, doc);
    if (!c) {
        json_decref(doc);
        return NULL;
    }
    b->stats.conversations_created++;
    mb_part *cp = mb__add_participant(b, c, creator, "initiator", NULL, creator);
    if (creator_out)
        *creator_out = cp;
    return c;
}

static void mb__announce_created(mb_broker *b, mb_conv *c, const char *source)
{
    mb__persist(b, MST_CONV, NULL, c->id, c->doc);
    json_t *d = json_pack("{s:s, s:O, s:O}", "conversationId", c->id, "type", json_object_get(c->doc, "type"),
                          "createdBy", json_object_get(c->doc, "createdBy"));
    mp_copy_key(d, c->doc, "subject");
    mp_copy_key(d, c->doc, "parentConversationId");
    mb_emit(b, "mail.created", source, d, NULL, NULL);
}

static int h_create(mb_ctx *cx)
{
    mb_broker *b = cx->b;
    const char *type = "multi-agent", *subject = NULL, *parent = NULL, *parent_turn = NULL;
    json_t *initial = NULL, *iturn = NULL, *md = NULL;
    if (mp_get_str(cx->params, "type", 0, &type, &cx->err) || mp_get_str(cx->params, "subject", 0, &subject, &cx->err) ||
        mp_get_str(cx->params, "parentConversationId", 0, &parent, &cx->err) ||
        mp_get_str(cx->params, "parentTurnId", 0, &parent_turn, &cx->err) ||
        mp_get_arr(cx->params, "initialParticipants", 0, &initial, &cx->err) ||
        mp_get_obj(cx->params, "initialTurn", 0, &iturn, &cx->err) || mp_get_obj(cx->params, "metadata", 0, &md, &cx->err))
        return cx->err.code;
    if (!type)
        type = "multi-agent";
    if (!mb__one_of(type, mb__conv_types))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "type", "type must be user-session, agent-task, multi-agent or mixed");
    if (subject && strlen(subject) > 4096)
        return MB_FAIL(cx, MP_INVALID_PARAMS, "subject", "subject is longer than 4096 bytes");
    mb_conv *pc = NULL;
    if (parent && !(pc = mb_conv_get(b, parent)))
        return MB_FAIL(cx, MP_MAIL_PARENT_NOT_FOUND, "parentConversationId", "Parent conversation not found: %s", parent);
    if (pc && !mb_mail_may_read(cx->s, pc))
        return MB_FAIL(cx, MP_MAIL_NOT_PARTICIPANT, "parentConversationId", "Not a participant of parent conversation %s", parent);
    if (parent_turn && (!pc || mb__turn_lookup(b, pc->id, parent_turn, NULL, NULL) != 1))
        return MB_FAIL(cx, MP_MAIL_TURN_NOT_FOUND, "parentTurnId", "Turn not found in the parent conversation: %s", parent_turn);
    size_t i;
    json_t *x;
    char path[64];
    if (initial && json_array_size(initial) + 1 > (size_t)b->cfg->max_participants)
        return MB_FAIL(cx, MP_QUOTA_EXCEEDED, "initialParticipants", "More than %lld participants", b->cfg->max_participants);
    json_array_foreach(initial, i, x)
    {
        snprintf(path, sizeof path, "initialParticipants[%zu]", i);
        if (mb__check_participant_spec(cx, x, path))
            return cx->err.code;
    }
    const char *ict = NULL;
    json_t *icontent = NULL;
    if (iturn) {
        ict = json_string_value(json_object_get(iturn, "contentType"));
        icontent = json_object_get(iturn, "content");
        if (!ict)
            return MB_FAIL(cx, MP_INVALID_PARAMS, "initialTurn.contentType", "Missing required parameter: initialTurn.contentType");
        if (!icontent)
            return MB_FAIL(cx, MP_INVALID_PARAMS, "initialTurn.content", "Missing required parameter: initialTurn.content");
        if (!mb__content_type_ok(ict))
            return MB_FAIL(cx, MP_MAIL_BAD_CONTENT, "initialTurn.contentType",
                           "Invalid content type \"%s\": must be text, data, event, reference or x-*", ict);
        if (mb__validate_visibility(cx, json_object_get(iturn, "visibility"), "initialTurn.visibility"))
            return cx->err.code;
    }
    if (mb_txn(b))
        return mb__store_fail(cx);
    const char *me = mb_session_from(cx->s);
    mb_part *cp;
    mb_conv *c = mb__create_conv(b, type, subject, parent, parent_turn, md, me, &cp);
    if (!c)
        return MB_FAIL(cx, MP_INTERNAL, NULL, "out of memory");
    json_array_foreach(initial, i, x)
    {
        const char *pid = json_string_value(json_object_get(x, "id"));
        if (mb__part_active(c, pid))
            continue;
        mb__add_participant(b, c, pid, json_string_value(json_object_get(x, "role")),
                            json_object_get(x, "permissions"), me);
    }
    mb__announce_created(b, c, me);
    cx->result = json_pack("{s:O, s:O}", "conversation", c->doc, "participant", cp->doc);
    if (iturn) {
        struct mb__turn_spec sp = {.participant = me, .content_type = ict, .content = icontent,
                                   .visibility = json_object_get(iturn, "visibility"),
                                   .metadata = json_object_get(iturn, "metadata"),
                                   .source = mb__mail_turn_source(b)};
        json_t *t = NULL;
        if (mb__record_turn(b, c, &sp, me, &t, NULL, NULL))
            return mb__store_fail(cx);
        json_object_set_new(cx->result, "initialTurn", t);
    }
    mb_info(cx->s->session_id, "conversation %s created by %s", c->id, me);
    return 0;
}

struct mb__stats {
    json_t *by_type;
    json_int_t total;
};

static int mb__stats_cb(void *arg, const struct mst_turn *t)
{
    struct mb__stats *s = arg;
    s->total++;
    json_t *n = json_object_get(s->by_type, t->content_type);
    json_object_set_new(s->by_type, t->content_type, json_integer(n ? json_integer_value(n) + 1 : 1));
    return 0;
}

static json_t *mb__thread_list(mb_conv *c, const char *parent)
{
    json_t *out = json_array();
    MB_MAP_FOREACH(c->threads, e)
    {
        mb_thread *t = mb_map_val(e);
        if (parent ? (t->parent && !strcmp(t->parent, parent)) : 1)
            json_array_append_new(out, json_deep_copy(t->doc));
    }
    /* internal bookkeeping stays internal */
    size_t i;
    json_t *x;
    json_array_foreach(out, i, x) json_object_del(x, "_meta");
    return out;
}

static int h_get(mb_ctx *cx)
{
    mb_conv *c = NULL;
    json_t *inc = NULL;
    if (mb__conv_arg(cx, &c) || mp_get_obj(cx->params, "include", 0, &inc, &cx->err) || mb__need_read(cx, c))
        return cx->err.code;
    cx->result = json_pack("{s:O}", "conversation", c->doc);
    if (!inc)
        return 0;
    if (json_is_true(json_object_get(inc, "participants"))) {
        json_t *ps = json_array();
        MB_MAP_FOREACH(c->parts, e) json_array_append(ps, ((mb_part *)mb_map_val(e))->doc);
        json_object_set_new(cx->result, "participants", ps);
    }
    if (json_is_true(json_object_get(inc, "threads")))
        json_object_set_new(cx->result, "threads", mb__thread_list(c, NULL));
    json_t *rt = json_object_get(inc, "recentTurns");
    if (json_is_integer(rt) && json_integer_value(rt) > 0) {
        int64_t nb;
        struct mb__tl l = {.c = c, .reader = mb__reader(cx->s, c, &nb), .limit = (size_t)json_integer_value(rt),
                           .out = json_array()};
        l.not_before = nb;
        if (l.limit > 1000)
            l.limit = 1000;
        struct mst_turn_query q = {.conv_id = c->id, .desc = 1};
        mst_turn_scan(cx->b->store, &q, mb__tl_cb, &l);
        json_object_set_new(cx->result, "recentTurns", l.out);
    }
    if (json_is_true(json_object_get(inc, "stats"))) {
        struct mb__stats st = {.by_type = json_object()};
        mb_mail_scan_turns(cx->b, c, 0, 0, mb__stats_cb, &st);
        json_int_t active = 0;
        MB_MAP_FOREACH(c->parts, e) if (!((mb_part *)mb_map_val(e))->left) active++;
        json_object_set_new(cx->result, "stats",
                            json_pack("{s:I, s:o, s:I, s:I}", "totalTurns", st.total, "turnsByContentType", st.by_type,
                                      "activeParticipants", active, "threadCount",
                                      (json_int_t)mb_map_size(c->threads)));
    }
    if (json_is_true(json_object_get(inc, "children"))) {
        json_t *ch = json_array();
        MB_MAP_FOREACH(c->children, e) json_array_append(ch, ((mb_conv *)mb_map_val(e))->doc);
        json_object_set_new(cx->result, "children", ch);
    }
    return 0;
}

static int mb__in_list(json_t *arr, const char *v)
{
    size_t i;
    json_t *x;
    if (!json_is_array(arr) || !json_array_size(arr))
        return 1;
    json_array_foreach(arr, i, x) if (json_is_string(x) && v && !strcmp(json_string_value(x), v)) return 1;
    return 0;
}

static int h_list(mb_ctx *cx)
{
    json_t *f = NULL;
    const char *cursor = NULL;
    long long limit = 50;
    if (mp_get_obj(cx->params, "filter", 0, &f, &cx->err) || mp_get_str(cx->params, "cursor", 0, &cursor, &cx->err) ||
        mp_get_int_range(cx->params, "limit", 1, 1000, &limit, &cx->err))
        return cx->err.code;
    json_t *types = json_object_get(f, "type"), *statuses = json_object_get(f, "status");
    if (json_is_string(types))
        types = json_pack("[O]", types);
    else
        json_incref(types);
    if (json_is_string(statuses))
        statuses = json_pack("[O]", statuses);
    else
        json_incref(statuses);
    const char *pid = json_string_value(json_object_get(f, "participantId"));
    const char *parent = json_string_value(json_object_get(f, "parentConversationId"));
    json_int_t after = json_integer_value(json_object_get(f, "createdAfter"));
    json_int_t before = json_integer_value(json_object_get(f, "createdBefore"));
    json_t *out = json_array();
    int started = !cursor || !mb_conv_get(cx->b, cursor), more = 0;
    const char *last = NULL;
    MB_MAP_FOREACH(cx->b->mail->convs, e)
    {
        mb_conv *c = mb_map_val(e);
        if (!started) {
            started = !strcmp(c->id, cursor);
            continue;
        }
        json_int_t created = json_integer_value(json_object_get(c->doc, "createdAt"));
        if (!mb__in_list(types, json_string_value(json_object_get(c->doc, "type"))) ||
            !mb__in_list(statuses, json_string_value(json_object_get(c->doc, "status"))) ||
            (pid && !mb__part_active(c, pid)) || (parent && (!c->parent || strcmp(c->parent, parent))) ||
            (after && created <= after) || (before && created >= before) || !mb_mail_may_read(cx->s, c))
            continue;
        if ((long long)json_array_size(out) == limit) {
            more = 1;
            break;
        }
        json_array_append(out, c->doc);
        last = c->id;
    }
    json_decref(types);
    json_decref(statuses);
    cx->result = json_pack("{s:o, s:b}", "conversations", out, "hasMore", more);
    if (last)
        json_object_set_new(cx->result, "nextCursor", json_string(last));
    return 0;
}

static char *mb__summarize(mb_broker *b, mb_conv *c, json_t *key_points);

static void mb__close_conv(mb_broker *b, mb_conv *c, const char *by, const char *reason, const char *summary)
{
    int64_t now = mb_now();
    json_object_set_new(c->doc, "status", json_string("completed"));
    json_object_set_new(c->doc, "closedAt", json_integer(now));
    json_object_set_new(c->doc, "updatedAt", json_integer(now));
    if (summary) {
        json_t *md = json_object_get(c->doc, "metadata");
        if (json_is_object(md))
            json_object_set_new(md, "summary", json_string(summary));
        mb_emit(b, "mail.summary.generated", by,
                json_pack("{s:s, s:s}", "conversationId", c->id, "summary", summary), NULL, NULL);
    }
    mb__persist(b, MST_CONV, NULL, c->id, c->doc);
    json_t *d = json_pack("{s:s, s:s}", "conversationId", c->id, "closedBy", by);
    if (reason)
        json_object_set_new(d, "reason", json_string(reason));
    if (summary)
        json_object_set_new(d, "summary", json_string(summary));
    mb_emit(b, "mail.closed", by, d, NULL, NULL);
}

static int h_close(mb_ctx *cx)
{
    mb_conv *c = NULL;
    const char *reason = NULL, *summary = NULL;
    if (mb__conv_arg(cx, &c) || mp_get_str(cx->params, "reason", 0, &reason, &cx->err) ||
        mp_get_str(cx->params, "summary", 0, &summary, &cx->err))
        return cx->err.code;
    const char *me = mb_session_from(cx->s);
    if (!mb__part_active(c, me) && !(cx->s->authenticated && cx->s->principal.operator_))
        return MB_FAIL(cx, MP_MAIL_NOT_PARTICIPANT, "conversationId", "Not a participant of conversation %s", c->id);
    if (!mb_conv_active(c))
        return MB_FAIL(cx, MP_MAIL_CONV_CLOSED, "conversationId", "Conversation %s is already closed", c->id);
    if (mb_txn(cx->b))
        return mb__store_fail(cx);
    mb__close_conv(cx->b, c, me, reason, summary);
    mb_audit(cx, c->id, cx->params);
    cx->result = json_pack("{s:O}", "conversation", c->doc);
    return 0;
}

static int h_reopen(mb_ctx *cx)
{
    mb_conv *c = NULL;
    if (mb__conv_arg(cx, &c))
        return cx->err.code;
    const char *me = mb_session_from(cx->s);
    if (!mb__part_active(c, me) && !(cx->b->auth && mb_auth_is_operator(cx->s)))
        return MB_FAIL(cx, MP_MAIL_NOT_PARTICIPANT, "conversationId", "Not a participant of conversation %s", c->id);
    if (mb_conv_active(c))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "conversationId", "Conversation %s is not closed", c->id);
    if (mb_txn(cx->b))
        return mb__store_fail(cx);
    json_object_set_new(c->doc, "status", json_string("active"));
    json_object_del(c->doc, "closedAt");
    json_object_set_new(c->doc, "updatedAt", json_integer(mb_now()));
    mb__persist(cx->b, MST_CONV, NULL, c->id, c->doc);
    mb_emit(cx->b, "mail.reopened", me, json_pack("{s:s, s:s}", "conversationId", c->id, "reopenedBy", me), NULL, NULL);
    cx->result = json_pack("{s:O}", "conversation", c->doc);
    return 0;
}

/* Turns after a cursor that is a turn id or a timestamp. */
static int mb__cursor_seq(mb_broker *b, mb_conv *c, json_t *from, uint64_t *seq, int64_t *after_ts)
{
    *seq = 0;
    *after_ts = 0;
    if (json_is_string(from)) {
        if (mb__turn_lookup(b, c->id, json_string_value(from), seq, NULL) != 1)
            *seq = 0; /* unknown cursor: from the beginning */
    } else if (json_is_integer(from)) {
        *after_ts = json_integer_value(from);
    }
    return 0;
}

static int h_join(mb_ctx *cx)
{
    mb_conv *c = NULL;
    const char *role = NULL;
    json_t *catchup = NULL;
    if (mb__conv_arg(cx, &c) || mp_get_str(cx->params, "role", 0, &role, &cx->err) ||
        mp_get_obj(cx->params, "catchUp", 0, &catchup, &cx->err))
        return cx->err.code;
    json_t *spec = json_pack("{s:s}", "id", "x");
    if (role)
        json_object_set_new(spec, "role", json_string(role));
    int bad = mb__check_participant_spec(cx, spec, "participant");
    json_decref(spec);
    if (bad) {
        cx->err.field[0] = '\0';
        snprintf(cx->err.field, sizeof cx->err.field, "role");
        return cx->err.code;
    }
    const char *me = mb_session_from(cx->s);
    if (!mb_conv_active(c))
        return MB_FAIL(cx, MP_MAIL_CONV_CLOSED, "conversationId", "Conversation %s is closed", c->id);
    if (mb__part_active(c, me))
        return MB_FAIL(cx, MP_MAIL_ALREADY_JOINED, "conversationId", "Already a participant of %s", c->id);
    if (cx->b->auth && !mb_auth_is_operator(cx->s) && !mb__scoped_token(cx->s, c) && !mb_map_get(c->parts, me))
        return MB_FAIL(cx, MP_MAIL_INVITATION_REQUIRED, "conversationId", "Conversation %s needs an invitation", c->id);
    json_int_t active = json_integer_value(json_object_get(c->doc, "participantCount"));
    if (active >= cx->b->cfg->max_participants)
        return MB_FAIL(cx, MP_QUOTA_EXCEEDED, "conversationId", "Conversation %s has %lld participants (the limit)",
                       c->id, (long long)active);
    if (mb_txn(cx->b))
        return mb__store_fail(cx);
    mb_part *p = mb__add_participant(cx->b, c, me, role ? role : "assistant", NULL, me);
    mb__persist(cx->b, MST_CONV, NULL, c->id, c->doc);
    cx->result = json_pack("{s:O, s:O}", "conversation", c->doc, "participant", p->doc);
    if (catchup) {
        long long limit = 50;
        if (mp_get_int_range(catchup, "limit", 1, 1000, &limit, &cx->err))
            return cx->err.code;
        uint64_t seq;
        int64_t ts;
        mb__cursor_seq(cx->b, c, json_object_get(catchup, "from"), &seq, &ts);
        int64_t nb;
        struct mb__tl l = {.c = c, .reader = mb__reader(cx->s, c, &nb), .after_ts = ts, .limit = (size_t)limit,
                           .out = json_array()};
        l.not_before = nb;
        mb_mail_scan_turns(cx->b, c, seq, 0, mb__tl_cb, &l);
        json_object_set_new(cx->result, "history", l.out);
        if (l.more && json_array_size(l.out))
            json_object_set(cx->result, "historyCursor",
                            json_object_get(json_array_get(l.out, json_array_size(l.out) - 1), "id"));
        if (json_is_true(json_object_get(catchup, "includeSummary"))) {
            char *s = mb__summarize(cx->b, c, NULL);
            json_object_set_new(cx->result, "summary", json_string(s ? s : ""));
            free(s);
        }
    }
    return 0;
}

/* Drop this session's subscriptions pinned to a conversation it may no longer read. */
static void mb__drop_pinned_subs(mb_session *s, const char *conv)
{
    for (mb_sub **pp = &s->subs; *pp;) {
        mb_sub *sub = *pp;
        const char *pin = mp_filter_conversation(sub->filter);
        if (pin && !strcmp(pin, conv)) {
            *pp = sub->next;
            mb_map_del(s->b->sub_index, sub->id);
            mp_filter_free(sub->filter);
            json_decref(sub->filter_json);
            free(sub);
            s->nsubs--;
        } else {
            pp = &sub->next;
        }
    }
}

static int h_leave(mb_ctx *cx)
{
    mb_conv *c = NULL;
    const char *reason = NULL;
    mb_part *p;
    if (mb__conv_arg(cx, &c) || mp_get_str(cx->params, "reason", 0, &reason, &cx->err) || mb__need_part(cx, c, &p))
        return cx->err.code;
    if (mb_txn(cx->b))
        return mb__store_fail(cx);
    int64_t now = mb_now();
    p->left = 1;
    json_object_set_new(p->doc, "leftAt", json_integer(now));
    mb__count_participants(c);
    json_object_set_new(c->doc, "updatedAt", json_integer(now));
    mb__persist(cx->b, MST_PARTICIPANT, c->id, p->id, p->doc);
    mb__persist(cx->b, MST_CONV, NULL, c->id, c->doc);
    json_t *d = json_pack("{s:s, s:s}", "conversationId", c->id, "participantId", p->id);
    if (reason)
        json_object_set_new(d, "reason", json_string(reason));
    mb_emit(cx->b, "mail.participant.left", p->id, d, NULL, NULL);
    if (!mb_mail_may_read(cx->s, c))
        mb__drop_pinned_subs(cx->s, c->id);
    cx->result = json_pack("{s:b, s:I}", "success", 1, "leftAt", (json_int_t)now);
    return 0;
}

static int h_invite(mb_ctx *cx)
{
    mb_conv *c = NULL;
    json_t *spec;
    mb_part *me;
    if (mp_get_obj(cx->params, "participant", MP_REQUIRED, &spec, &cx->err) ||
        mb__check_participant_spec(cx, spec, "participant") || mb__conv_arg(cx, &c) || mb__need_part(cx, c, &me))
        return cx->err.code;
    const char *role = json_string_value(json_object_get(me->doc, "role"));
    if (!mb__perm(me, "canInvite") && !(role && (!strcmp(role, "initiator") || !strcmp(role, "moderator"))))
        return MB_FAIL(cx, MP_MAIL_PERMISSION, "participant", "Participant %s may not invite", me->id);
    if (!mb_conv_active(c))
        return MB_FAIL(cx, MP_MAIL_CONV_CLOSED, "conversationId", "Conversation %s is closed", c->id);
    const char *pid = json_string_value(json_object_get(spec, "id"));
    if (mb__part_active(c, pid))
        return MB_FAIL(cx, MP_MAIL_ALREADY_JOINED, "participant.id", "%s is already a participant", pid);
    if (json_integer_value(json_object_get(c->doc, "participantCount")) >= cx->b->cfg->max_participants)
        return MB_FAIL(cx, MP_QUOTA_EXCEEDED, "participant", "Conversation %s is full", c->id);
    if (mb_txn(cx->b))
        return mb__store_fail(cx);
    mb_part *p = mb__add_participant(cx->b, c, pid, json_string_value(json_object_get(spec, "role")),
                                     json_object_get(spec, "permissions"), me->id);
    mb__persist(cx->b, MST_CONV, NULL, c->id, c->doc);
    cx->result = json_pack("{s:b, s:O}", "invited", 1, "participant", p->doc);
    return 0;
}

static int h_turn(mb_ctx *cx)
{
    mb_conv *c = NULL;
    const char *ct, *thread = NULL, *reply = NULL;
    json_t *vis = NULL, *md = NULL;
    mb_part *p;
    if (mp_get_str(cx->params, "conversationId", MP_REQUIRED, &ct, &cx->err) ||
        mp_get_str(cx->params, "contentType", MP_REQUIRED, &ct, &cx->err) ||
        (!json_object_get(cx->params, "content") &&
         MB_FAIL(cx, MP_INVALID_PARAMS, "content", "Missing required parameter: content")) ||
        mb__conv_arg(cx, &c) ||
        mp_get_str(cx->params, "threadId", 0, &thread, &cx->err) ||
        mp_get_str(cx->params, "inReplyTo", 0, &reply, &cx->err) || mp_get_obj(cx->params, "metadata", 0, &md, &cx->err))
        return cx->err.code;
    json_t *content = json_object_get(cx->params, "content");
    if (!content)
        return MB_FAIL(cx, MP_INVALID_PARAMS, "content", "Missing required parameter: content");
    vis = json_object_get(cx->params, "visibility");
    static const char *const importances[] = {"low", "normal", "high", "urgent", NULL};
    const char *imp = NULL;
    if (mp_get_str(cx->params, "importance", 0, &imp, &cx->err))
        return cx->err.code;
    if (imp && !mb__one_of(imp, importances))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "importance", "Parameter importance must be low, normal, high or urgent");
    if (!mb_conv_active(c))
        return MB_FAIL(cx, MP_MAIL_CONV_CLOSED, "conversationId", "Conversation %s is closed", c->id);
    if (mb__need_part(cx, c, &p))
        return cx->err.code;
    if (!mb__perm(p, "canSend"))
        return MB_FAIL(cx, MP_MAIL_PERMISSION, "conversationId", "Participant %s may not post turns", p->id);
    if (!mb__content_type_ok(ct))
        return MB_FAIL(cx, MP_MAIL_BAD_CONTENT, "contentType",
                       "Invalid content type \"%s\": must be text, data, event, reference or x-*", ct);
    if (mb__validate_visibility(cx, vis, "visibility") || mb__validate_turn_metadata(cx, md) ||
        mb__check_turn_refs(cx, c, thread, reply))
        return cx->err.code;
    struct mb__turn_spec sp = {.participant = p->id, .content_type = ct, .content = content, .thread_id = thread,
                               .in_reply_to = reply, .visibility = vis, .metadata = md,
                               .source = mb__mail_turn_source(cx->b), .importance = imp};
    char *txt = NULL;
    size_t len = 0;
    if (mb__record_turn(cx->b, c, &sp, p->id, NULL, &txt, &len))
        return mb__store_fail(cx);
    /* the reply {"turn": ...} splices the text already encoded for the store */
    char *r = malloc(len + 10);
    if (r) {
        memcpy(r, "{\"turn\":", 8);
        memcpy(r + 8, txt, len);
        r[8 + len] = '}';
        cx->result_raw = r;
        cx->result_raw_len = len + 9;
    } else {
        cx->result = json_pack("{s:o}", "turn", mp_json_parse(txt, len, 4096));
    }
    free(txt);
    return 0;
}

static int h_turns_list(mb_ctx *cx)
{
    mb_conv *c = NULL;
    json_t *f = NULL;
    long long limit = 50;
    const char *order = "asc";
    if (mb__conv_arg(cx, &c) || mp_get_obj(cx->params, "filter", 0, &f, &cx->err) ||
        mp_get_int_range(cx->params, "limit", 1, 1000, &limit, &cx->err) ||
        mp_get_str(cx->params, "order", 0, &order, &cx->err) || mb__need_history(cx, c))
        return cx->err.code;
    if (!order)
        order = "asc";
    if (strcmp(order, "asc") && strcmp(order, "desc"))
        return MB_FAIL(cx, MP_INVALID_PARAMS, "order", "order must be asc or desc");
    json_t *cts = NULL;
    const char *thread = NULL, *pid = NULL, *after = NULL, *before = NULL;
    if (f && (mp_get_str_p(f, "threadId", "filter.threadId", 0, &thread, &cx->err) ||
              mp_get_str_p(f, "participantId", "filter.participantId", 0, &pid, &cx->err) ||
              mp_get_str_p(f, "afterTurnId", "filter.afterTurnId", 0, &after, &cx->err) ||
              mp_get_str_p(f, "beforeTurnId", "filter.beforeTurnId", 0, &before, &cx->err) ||
              mp_get_str_arr_p(f, "contentTypes", "filter.contentTypes", &cts, &cx->err)))
        return cx->err.code;
    int desc = !strcmp(order, "desc");
    struct mst_turn_query q = {.conv_id = c->id, .desc = desc, .thread_id = thread};
    if (after && mb__turn_lookup(cx->b, c->id, after, &q.after_seq, NULL) != 1)
        q.after_seq = 0;
    if (before && mb__turn_lookup(cx->b, c->id, before, &q.before_seq, NULL) != 1)
        q.before_seq = 0;
    int64_t nb;
    struct mb__tl l = {.c = c, .reader = mb__reader(cx->s, c, &nb), .content_types = json_array_size(cts) ? cts : NULL,
                       .participant = pid, .limit = (size_t)limit, .out = json_array()};
    l.not_before = nb;
    l.after_ts = json_integer_value(json_object_get(f, "afterTimestamp"));
    l.before_ts = json_integer_value(json_object_get(f, "beforeTimestamp"));
    mst_turn_scan(cx->b->store, &q, mb__tl_cb, &l);
    cx->result = json_pack("{s:o, s:b}", "turns", l.out, "hasMore", l.more);
    if (json_array_size(l.out))
        json_object_set(cx->result, "nextCursor", json_object_get(json_array_get(l.out, json_array_size(l.out) - 1), "id"));
    return 0;
}

static int h_thread_create(mb_ctx *cx)
{
    mb_conv *c = NULL;
    const char *root, *subject = NULL, *parent = NULL;
    mb_part *p;
    if (mp_get_str(cx->params, "conversationId", MP_REQUIRED, &root, &cx->err) ||
        mp_get_str(cx->params, "rootTurnId", MP_REQUIRED, &root, &cx->err) || mb__conv_arg(cx, &c) ||
        mp_get_str(cx->params, "subject", 0, &subject, &cx->err) ||
        mp_get_str(cx->params, "parentThreadId", 0, &parent, &cx->err) || mb__need_part(cx, c, &p))
        return cx->err.code;
    if (!mb__perm(p, "canCreateThreads"))
        return MB_FAIL(cx, MP_MAIL_PERMISSION, "conversationId", "Participant %s may not create threads", p->id);
    if (!mb_conv_active(c))
        return MB_FAIL(cx, MP_MAIL_CONV_CLOSED, "conversationId", "Conversation %s is closed", c->id);
    int where = mb__turn_lookup(cx->b, c->id, root, NULL, NULL);
    if (where == 0)
        return MB_FAIL(cx, MP_MAIL_TURN_NOT_FOUND, "rootTurnId", "Turn not found: %s", root);
    if (where == 2)
        return MB_FAIL(cx, MP_MAIL_CONV_NOT_FOUND, "rootTurnId", "Turn %s belongs to another conversation", root);
    mb_thread *pt = NULL;
    if (parent && !(pt = mb_map_get(c->threads, parent)))
        return MB_FAIL(cx, MP_MAIL_THREAD_NOT_FOUND, "parentThreadId", "Thread not found: %s", parent);
    int depth = pt ? pt->depth + 1 : 1;
    if (depth > cx->b->cfg->max_thread_depth)
        return MB_FAIL(cx, MP_MAIL_HISTORY_DENIED, "parentThreadId", "Thread nesting limit exceeded (%lld levels)",
                       cx->b->cfg->max_thread_depth);
    if (mb_txn(cx->b))
        return mb__store_fail(cx);
    char id[48];
    mb_new_id(cx->b, "thread-", id, sizeof id);
    int64_t now = mb_now();
    mb_thread *t = calloc(1, sizeof *t);
    t->id = strdup(id);
    t->depth = depth;
    t->parent = mb__dup(parent);
    t->doc = json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:I, s:s, s:{s:i, s:{}}}", "id", id, "conversationId", c->id,
                       "rootTurnId", root, "turnCount", 0, "participantCount", 0, "createdAt", (json_int_t)now,
                       "updatedAt", (json_int_t)now, "createdBy", p->id, "_meta", "depth", depth, "authors");
    if (subject)
        json_object_set_new(t->doc, "subject", json_string(subject));
    if (parent)
        json_object_set_new(t->doc, "parentThreadId", json_string(parent));
    mb_map_put(c->threads, t->id, t);
    mb__persist(cx->b, MST_THREAD, c->id, t->id, t->doc);
    json_t *pub = json_deep_copy(t->doc);
    json_object_del(pub, "_meta");
    mb_emit(cx->b, "mail.thread.created", p->id, json_pack("{s:s, s:O}", "conversationId", c->id, "thread", pub),
            NULL, NULL);
    cx->result = json_pack("{s:o}", "thread", pub);
    return 0;
}

static int h_thread_list(mb_ctx *cx)
{
    mb_conv *c = NULL;
    const char *parent = NULL, *cursor = NULL;
    long long limit = 50;
    if (mb__conv_arg(cx, &c) || mp_get_str(cx->params, "parentThreadId", 0, &parent, &cx->err) ||
        mp_get_str(cx->params, "cursor", 0, &cursor, &cx->err) ||
        mp_get_int_range(cx->params, "limit", 1, 1000, &limit, &cx->err) || mb__need_read(cx, c))
        return cx->err.code;
    json_t *all = mb__thread_list(c, parent);
    json_t *out = json_array();
    size_t i, start = 0;
    json_t *x;
    if (cursor)
        json_array_foreach(all, i, x) if (!strcmp(json_string_value(json_object_get(x, "id")), cursor)) start = i + 1;
    int more = 0;
    for (i = start; i < json_array_size(all); i++) {
        if ((long long)json_array_size(out) == limit) {
            more = 1;
            break;
        }
        json_array_append(out, json_array_get(all, i));
    }
    json_decref(all);
    cx->result = json_pack("{s:o, s:b}", "threads", out, "hasMore", more);
    if (json_array_size(out))
        json_object_set(cx->result, "nextCursor", json_object_get(json_array_get(out, json_array_size(out) - 1), "id"));
    return 0;
}

/* Extractive, deterministic summary: who said how much, what was decided,
 * and the last word. (The broker has no language model; agents that want a
 * prose summary post it with mail/close {summary}.) */
struct mb__sum {
    json_int_t total;
    json_t *authors, *texts, *stops;
    char last[512];
};

static int mb__sum_cb(void *arg, const struct mst_turn *t)
{
    struct mb__sum *s = arg;
    s->total++;
    json_t *n = json_object_get(s->authors, t->participant);
    json_object_set_new(s->authors, t->participant, json_integer(n ? json_integer_value(n) + 1 : 1));
    json_t *doc = json_loadb(t->json, t->len, 0, NULL);
    const char *text = json_string_value(json_object_get(json_object_get(doc, "content"), "text"));
    if (!text)
        text = json_string_value(json_object_get(doc, "content"));
    if (text) {
        snprintf(s->last, sizeof s->last, "%s: %.400s", t->participant, text);
        json_array_append_new(s->texts, json_string(s->last));
        if (json_array_size(s->texts) > 5)
            json_array_remove(s->texts, 0);
    }
    const char *stop = json_string_value(json_object_get(json_object_get(doc, "metadata"), "stop_reason"));
    if (stop)
        json_array_append_new(s->stops, json_pack("{s:s, s:s}", "turnId", t->id, "stopReason", stop));
    json_decref(doc);
    return 0;
}

static char *mb__summarize(mb_broker *b, mb_conv *c, json_t *key_points)
{
    const char *stored = json_string_value(json_object_get(json_object_get(c->doc, "metadata"), "summary"));
    if (stored && !key_points)
        return strdup(stored);
    struct mb__sum s = {.authors = json_object(), .texts = json_array(), .stops = json_array()};
    mb_mail_scan_turns(b, c, 0, 0, mb__sum_cb, &s);
    char buf[1024];
    const char *subject = json_string_value(json_object_get(c->doc, "subject"));
    int n = snprintf(buf, sizeof buf, "%s%s%s%lld turns by %zu participants", subject ? "\"" : "", subject ? subject : "",
                     subject ? "\": " : "", (long long)s.total, json_object_size(s.authors));
    if (json_array_size(s.stops))
        n += snprintf(buf + n, sizeof buf - (size_t)n, "; stopped: %s",
                      json_string_value(json_object_get(json_array_get(s.stops, json_array_size(s.stops) - 1), "stopReason")));
    if (s.last[0] && (size_t)n < sizeof buf)
        snprintf(buf + n, sizeof buf - (size_t)n, ". Last: %s", s.last);
    if (key_points) {
        json_object_set(key_points, "keyPoints", s.texts);
        json_object_set(key_points, "keyDecisions", s.stops);
        json_object_set(key_points, "participants", s.authors);
    }
    json_decref(s.authors);
    json_decref(s.texts);
    json_decref(s.stops);
    return strdup(stored ? stored : buf);
}

static int h_summary(mb_ctx *cx)
{
    mb_conv *c = NULL;
    json_t *inc = NULL;
    if (mb__conv_arg(cx, &c) || mp_get_obj(cx->params, "include", 0, &inc, &cx->err) || mb__need_read(cx, c))
        return cx->err.code;
    json_t *extra = json_object();
    char *s = mb__summarize(cx->b, c, extra);
    cx->result = json_pack("{s:s, s:b, s:I}", "summary", s ? s : "", "generated", 1, "cachedAt", (json_int_t)mb_now());
    if (json_is_true(json_object_get(inc, "keyPoints")))
        json_object_set(cx->result, "keyPoints", json_object_get(extra, "keyPoints"));
    if (json_is_true(json_object_get(inc, "keyDecisions")))
        json_object_set(cx->result, "keyDecisions", json_object_get(extra, "keyDecisions"));
    if (json_is_true(json_object_get(inc, "participants")))
        json_object_set(cx->result, "participants", json_object_get(extra, "participants"));
    json_decref(extra);
    mb_emit(cx->b, "mail.summary.generated", mb_session_from(cx->s),
            json_pack("{s:s, s:s}", "conversationId", c->id, "summary", s ? s : ""), NULL, NULL);
    free(s);
    return 0;
}

static int h_replay(mb_ctx *cx)
{
    mb_conv *c = NULL;
    const char *from = NULL, *thread = NULL;
    long long from_ts = 0, limit = 50;
    json_t *cts = NULL;
    if (mb__conv_arg(cx, &c) || mp_get_str(cx->params, "fromTurnId", 0, &from, &cx->err) ||
        mp_get_int(cx->params, "fromTimestamp", 0, &from_ts, &cx->err) ||
        mp_get_str(cx->params, "threadId", 0, &thread, &cx->err) ||
        mp_get_int_range(cx->params, "limit", 1, 1000, &limit, &cx->err) ||
        mp_get_str_arr(cx->params, "contentTypes", 0, &cts, &cx->err) || mb__need_history(cx, c))
        return cx->err.code;
    struct mst_turn_query q = {.conv_id = c->id, .thread_id = thread};
    if (from && mb__turn_lookup(cx->b, c->id, from, &q.after_seq, NULL) != 1)
        q.after_seq = 0;
    int64_t nb;
    struct mb__tl l = {.c = c, .reader = mb__reader(cx->s, c, &nb), .content_types = json_array_size(cts) ? cts : NULL,
                       .after_ts = from ? 0 : from_ts, .limit = (size_t)limit, .out = json_array(), .count_all = 1};
    l.not_before = nb;
    mst_turn_scan(cx->b->store, &q, mb__tl_cb, &l);
    cx->result = json_pack("{s:o, s:b, s:I}", "turns", l.out, "hasMore", l.more, "missedCount", (json_int_t)l.counted);
    if (json_array_size(l.out))
        json_object_set(cx->result, "nextCursor", json_object_get(json_array_get(l.out, json_array_size(l.out) - 1), "id"));
    return 0;
}

static void mb__tree(mb_conv *c, json_t *out, int depth)
{
    json_t *node = json_pack("{s:O, s:[]}", "conversation", c->doc, "children");
    if (depth < 32)
        MB_MAP_FOREACH(c->children, e) mb__tree(mb_map_val(e), json_object_get(node, "children"), depth + 1);
    json_array_append_new(out, node);
}

json_t *mb_mail_tree_json(mb_broker *b, const char *conv_id)
{
    mb_conv *c = mb_conv_get(b, conv_id);
    if (!c)
        return NULL;
    json_t *arr = json_array();
    mb__tree(c, arr, 0);
    json_t *root = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return root;
}

static int h_tree(mb_ctx *cx)
{
    mb_conv *c = NULL;
    if (mb__conv_arg(cx, &c) || mb__need_read(cx, c))
        return cx->err.code;
    cx->result = json_pack("{s:o}", "tree", mb_mail_tree_json(cx->b, c->id));
    return 0;
}

json_t *mb_mail_turn_page(mb_broker *b, mb_session *s, mb_conv *c, uint64_t after_seq, size_t limit, int desc,
                          int *more)
{
    int64_t nb;
    struct mb__tl l = {.c = c, .reader = mb__reader(s, c, &nb), .limit = limit, .out = json_array(), .with_seq = 1};
    l.not_before = nb;
    struct mst_turn_query q = {.conv_id = c->id, .desc = desc};
    if (desc)
        q.before_seq = after_seq; /* for descending pages the cursor is an upper bound */
    else
        q.after_seq = after_seq;
    mst_turn_scan(b->store, &q, mb__tl_cb, &l);
    *more = l.more;
    return l.out;
}

/* ---- hooks from the core ---- */

void mb_mail_intercept(mb_broker *b, mb_session *s, const char *message_id, json_t *params)
{
    json_t *meta = json_object_get(params, "meta");
    json_t *mail = json_object_get(meta, "mail");
    const char *cid = json_string_value(json_object_get(mail, "conversationId"));
    mb_conv *c = mb_conv_get(b, cid);
    /* never fail the send: an unusable meta.mail just records nothing */
    if (!c || !mb_conv_active(c) || !mb_auth_may_conversation(s, c->id))
        return;
    const char *thread = json_string_value(json_object_get(mail, "threadId"));
    const char *reply = json_string_value(json_object_get(mail, "inReplyTo"));
    if (thread && !mb_map_get(c->threads, thread))
        return;
    if (reply && mb__turn_lookup(b, c->id, reply, NULL, NULL) != 1)
        reply = NULL;
    json_t *vis = json_object_get(mail, "visibility");
    const char *vt = json_string_value(json_object_get(vis, "type"));
    if (vis && (!json_is_object(vis) || !vt))
        vis = NULL;
    const char *me = mb_session_from(s);
    mb_part *p = mb__part_active(c, me);
    if (!p) /* pass-through agents join the conversation they write into */
        p = mb__add_participant(b, c, me, "assistant", NULL, me);
    if (!p || !mb__perm(p, "canSend"))
        return;
    struct mb__turn_spec sp = {.participant = me, .content_type = "data", .content = json_object_get(params, "payload"),
                               .thread_id = thread, .in_reply_to = reply, .visibility = vis,
                               .metadata = json_object_get(mail, "metadata"),
                               .source = json_pack("{s:s, s:s}", "type", "intercepted", "messageId", message_id)};
    (void)mb__record_turn(b, c, &sp, me, NULL, NULL, NULL);
}

/* The conversation an agent works in: its own task conversation, else the
 * one named in the spawn request. */
static const char *mb__spawn_context(mb_session *s, mb_agent *parent)
{
    if (parent && parent->conversation)
        return parent->conversation;
    return NULL;
}

void mb_mail_on_spawn(mb_broker *b, mb_session *s, mb_agent *child, mb_agent *parent)
{
    const char *ctx = json_string_value(json_object_get(json_object_get(child->doc, "metadata"), "conversationId"));
    if (!ctx)
        ctx = mb__spawn_context(s, parent);
    mb_conv *pc = mb_conv_get(b, ctx);
    if (!pc || mb_txn(b))
        return;
    const char *spawner = parent ? parent->id : mb_session_from(s);
    char subject[512];
    const char *name = json_string_value(json_object_get(child->doc, "name"));
    snprintf(subject, sizeof subject, "Task: %s", name ? name : child->id);
    json_t *md = json_pack("{s:s}", "taskAgentId", child->id);
    /* a turn in the parent conversation marks where the task started */
    mb_part *pp = mb__part_active(pc, spawner);
    json_t *mark = NULL;
    if (mb_conv_active(pc) && (pp || (pp = mb__add_participant(b, pc, spawner, "assistant", NULL, spawner)))) {
        struct mb__turn_spec sp = {.participant = spawner, .content_type = "event",
                                   .content = json_pack("{s:s, s:s}", "event", "task.spawned", "agentId", child->id),
                                   .source = json_pack("{s:s, s:s}", "type", "explicit", "method", "map/agents/spawn")};
        (void)mb__record_turn(b, pc, &sp, spawner, &mark, NULL, NULL);
        json_decref(sp.content);
    }
    mb_conv *c = mb__create_conv(b, "agent-task", subject, pc->id, mark ? json_string_value(json_object_get(mark, "id")) : NULL,
                                 md, spawner, NULL);
    json_decref(md);
    json_decref(mark);
    if (!c)
        return;
    mb__add_participant(b, c, child->id, "worker", NULL, spawner);
    mb__announce_created(b, c, spawner);
    free(child->conversation);
    child->conversation = strdup(c->id);
    mb_agent_doc(child);
    mb_agent_persist(b, child);
    mb_info("mail", "agent %s spawned from %s gets task conversation %s", child->id, pc->id, c->id);
}

void mb_mail_on_agent_stop(mb_broker *b, mb_agent *a, const char *reason)
{
    mb_conv *c = mb_conv_get(b, a->conversation);
    if (!c || !mb_conv_active(c) || mb_txn(b))
        return;
    const char *stop = "complete";
    if (reason && (!strcmp(reason, "owner_disconnected") || !strcmp(reason, "not_reclaimed")))
        stop = "error";
    else if (reason)
        for (int i = 0; mb__stop_reasons[i]; i++)
            if (!strcmp(reason, mb__stop_reasons[i]))
                stop = reason;
    if (!mb__part_active(c, a->id))
        mb__add_participant(b, c, a->id, "worker", NULL, a->id);
    json_t *content = json_pack("{s:s, s:s, s:s}", "event", "task.completed", "agentId", a->id, "reason",
                                reason ? reason : "stopped");
    struct mb__turn_spec sp = {.participant = a->id, .content_type = "event", .content = content,
                               .metadata = json_pack("{s:s}", "stop_reason", stop),
                               .source = json_pack("{s:s, s:s}", "type", "explicit", "method", "map/agents/stop")};
    (void)mb__record_turn(b, c, &sp, a->id, NULL, NULL, NULL);
    json_decref(content);
    json_decref(sp.metadata);
    char *summary = mb__summarize(b, c, NULL);
    mb__close_conv(b, c, a->id, reason ? reason : "stopped", summary);
    free(summary);
    mb_info("mail", "task conversation %s of agent %s closed (%s)", c->id, a->id, stop);
}

/* The task conversation to attach to a map/send without meta.mail: the
 * sender's, else that of a single directly addressed agent. */
const char *mb_mail_task_context(mb_broker *b, mb_session *s, json_t *to)
{
    mb_agent *me = mb_agent_get(b, s->primary_agent);
    mb_conv *c = NULL;
    if (me && (c = mb_conv_get(b, me->conversation)) && mb_conv_active(c))
        return c->id;
    const char *target = json_is_string(to) ? json_string_value(to) : json_string_value(json_object_get(to, "agent"));
    mb_agent *t = json_is_object(to) && json_object_size(to) != 1 ? NULL : mb_agent_get(b, target);
    if (t && (c = mb_conv_get(b, t->conversation)) && mb_conv_active(c))
        return c->id;
    return NULL;
}

const mb_method mb_methods_mail[] = {
    {"mail/create", h_create, MB_M_WRITES},
    {"mail/get", h_get, 0},
    {"mail/list", h_list, 0},
    {"mail/close", h_close, MB_M_WRITES},
    {"mail/reopen", h_reopen, MB_M_WRITES},
    {"mail/join", h_join, MB_M_WRITES},
    {"mail/leave", h_leave, MB_M_WRITES},
    {"mail/invite", h_invite, MB_M_WRITES},
    {"mail/turn", h_turn, MB_M_WRITES},
    {"mail/turns/list", h_turns_list, 0},
    {"mail/thread/create", h_thread_create, MB_M_WRITES},
    {"mail/thread/list", h_thread_list, 0},
    {"mail/summary", h_summary, 0},
    {"mail/replay", h_replay, 0},
    {"x-mapbroker/mail/tree", h_tree, 0},
    {NULL, NULL, 0},
};
