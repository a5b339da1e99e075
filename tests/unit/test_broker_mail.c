/* test_broker_mail.c - the mail extension (MAP.md 10, 14.7): every method's happy
 * path and error codes, permissions, turn visibility, threads, intercepted
 * turns, task conversations. */
#include "test_util.h"

#include <stdio.h>

#include "broker_harness.h"
#include "mail.h"
#include "mp_err.h"

#include "broker_fixture.h"

/* conversation created by s with initial participants; id into out */
static void new_conv(mb_session *s, const char *initial, char *out)
{
    json_t *r = initial ? bh_ok(H, s, "mail/create", "{'subject':'t','initialParticipants':%s}", initial)
                        : bh_ok(H, s, "mail/create", "{'subject':'t'}");
    snprintf(out, 64, "%s", bh_str(r, "conversation.id"));
    json_decref(r);
}

static void turn(mb_session *s, const char *conv, const char *extra, char *id_out)
{
    json_t *r = bh_ok(H, s, "mail/turn", "{'conversationId':'%s','contentType':'text','content':{'text':'hi'}%s%s}", conv,
                      extra ? "," : "", extra ? extra : "");
    if (id_out)
        snprintf(id_out, 64, "%s", bh_str(r, "turn.id"));
    json_decref(r);
}

static void create_happy(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, "{'mail':{}}", NULL, sub);
    mb_session *a = bh_agent(H, "alice", NULL);
    bh_agent(H, "bob", NULL);
    json_t *r = bh_ok(H, a, "mail/create",
                      "{'type':'mixed','subject':'plan','metadata':{'k':1},"
                      "'initialParticipants':[{'id':'bob','role':'worker','permissions':{'canInvite':true}},{'id':'carol'}],"
                      "'initialTurn':{'contentType':'text','content':{'text':'start'}}}");
    const char *cid = bh_str(r, "conversation.id");
    assert_true(!strncmp(cid, "conv-", 5));
    assert_string_equal(bh_str(r, "conversation.type"), "mixed");
    assert_string_equal(bh_str(r, "conversation.status"), "active");
    assert_string_equal(bh_str(r, "conversation.createdBy"), "alice");
    assert_int_equal(bh_int(r, "conversation.participantCount"), 3);
    assert_int_equal(bh_int(r, "conversation.metadata.k"), 1);
    assert_string_equal(bh_str(r, "participant.id"), "alice");
    assert_string_equal(bh_str(r, "participant.role"), "initiator");
    assert_string_equal(bh_str(r, "participant.type"), "agent");
    assert_true(json_is_true(bh_get(r, "participant.permissions.canSend")));
    assert_false(json_is_true(bh_get(r, "participant.permissions.canInvite")));
    assert_string_equal(bh_str(r, "participant.permissions.historyAccess"), "full");
    assert_string_equal(bh_str(r, "initialTurn.content.text"), "start");
    assert_string_equal(bh_str(r, "initialTurn.source.type"), "explicit");
    assert_string_equal(bh_str(r, "initialTurn.status"), "complete");
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"),
                        "mail.participant.joined,mail.participant.joined,mail.participant.joined,mail.created,mail.turn.added");
    assert_string_equal(bh_str(evs, "1.data.participant.id"), "bob");
    assert_string_equal(bh_str(evs, "1.data.participant.role"), "worker");
    assert_true(json_is_true(bh_get(evs, "1.data.participant.permissions.canInvite")));
    assert_string_equal(bh_str(evs, "2.data.participant.type"), "user"); /* carol is not a registered agent */
    assert_string_equal(bh_str(evs, "2.data.participant.role"), "assistant");
    assert_string_equal(bh_str(evs, "3.data.conversationId"), cid);
    assert_string_equal(bh_str(evs, "3.data.createdBy"), "alice");
    assert_string_equal(bh_str(evs, "3.source"), "alice");
    assert_string_equal(bh_str(evs, "4.data.turn.id"), bh_str(r, "initialTurn.id"));
    json_decref(evs);
    json_decref(r);
    /* the SDK's bare create */
    r = bh_ok(H, a, "mail/create", "{}");
    assert_string_equal(bh_str(r, "conversation.type"), "multi-agent");
    assert_int_equal(bh_int(r, "conversation.participantCount"), 1);
    json_decref(r);
}

static void create_errors(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    char cid[64];
    new_conv(a, NULL, cid);
    static const struct {
        const char *params;
        int code;
        const char *field;
    } cases[] = {
        {"{'type':'chat'}", MP_INVALID_PARAMS, "type"},
        {"{'subject':5}", MP_INVALID_PARAMS, "subject"},
        {"{'parentConversationId':'conv-nope'}", MP_MAIL_PARENT_NOT_FOUND, "parentConversationId"},
        {"{'parentConversationId':'CID','parentTurnId':'turn-nope'}", MP_MAIL_TURN_NOT_FOUND, "parentTurnId"},
        {"{'initialParticipants':{}}", MP_INVALID_PARAMS, "initialParticipants"},
        {"{'initialParticipants':[5]}", MP_INVALID_PARAMS, "initialParticipants[0]"},
        {"{'initialParticipants':[{'id':'ok'},{'role':'worker'}]}", MP_INVALID_PARAMS, "initialParticipants[1].id"},
        {"{'initialParticipants':[{'id':'x','role':'boss'}]}", MP_INVALID_PARAMS, "initialParticipants[0].role"},
        {"{'initialParticipants':[{'id':'x','permissions':{'historyAccess':'some'}}]}", MP_INVALID_PARAMS,
         "initialParticipants[0].permissions.historyAccess"},
        {"{'initialTurn':{'content':1}}", MP_INVALID_PARAMS, "initialTurn.contentType"},
        {"{'initialTurn':{'contentType':'text'}}", MP_INVALID_PARAMS, "initialTurn.content"},
        {"{'initialTurn':{'contentType':'html','content':1}}", MP_MAIL_BAD_CONTENT, "initialTurn.contentType"},
        {"{'initialTurn':{'contentType':'x-','content':1}}", MP_MAIL_BAD_CONTENT, "initialTurn.contentType"},
        {"{'initialTurn':{'contentType':'text','content':1,'visibility':{'type':'some'}}}", MP_INVALID_PARAMS,
         "initialTurn.visibility"},
        {"{'metadata':[]}", MP_INVALID_PARAMS, "metadata"},
    };
    size_t before = mb_map_size(bh_broker(H)->mail->convs);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char params[512];
        snprintf(params, sizeof params, "%s", cases[i].params);
        char *p = strstr(params, "CID");
        if (p) {
            char tail[512];
            snprintf(tail, sizeof tail, "%s", p + 3);
            snprintf(p, sizeof params - (size_t)(p - params), "%s%s", cid, tail);
        }
        bh_err_field(H, a, cases[i].code, cases[i].field, "mail/create", "%s", params);
    }
    assert_int_equal(mb_map_size(bh_broker(H)->mail->convs), before);
    /* mail errors carry data.category "mail" (MAP.md 14.7) */
    json_t *e = bh_err(H, a, MP_MAIL_PARENT_NOT_FOUND, "mail/create", "{'parentConversationId':'conv-nope'}");
    assert_string_equal(bh_str(e, "data.category"), "mail");
    json_decref(e);
    /* a child conversation with a valid parent turn */
    char t1[64];
    turn(a, cid, NULL, t1);
    json_t *r = bh_ok(H, a, "mail/create", "{'parentConversationId':'%s','parentTurnId':'%s'}", cid, t1);
    assert_string_equal(bh_str(r, "conversation.parentConversationId"), cid);
    assert_string_equal(bh_str(r, "conversation.parentTurnId"), t1);
    json_decref(r);
}

/* every method taking conversationId: unknown -> 10000, missing -> -32602 */
static void conversation_id_errors(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    static const char *const methods[] = {"mail/get", "mail/close", "mail/join", "mail/leave", "mail/turns/list",
                                          "mail/thread/list", "mail/summary", "mail/replay", NULL};
    for (int i = 0; methods[i]; i++) {
        bh_err_field(H, a, MP_MAIL_CONV_NOT_FOUND, "conversationId", methods[i], "{'conversationId':'conv-nope'}");
        bh_err_field(H, a, MP_INVALID_PARAMS, "conversationId", methods[i], "{}");
    }
    bh_err_field(H, a, MP_MAIL_CONV_NOT_FOUND, "conversationId", "mail/turn",
                 "{'conversationId':'conv-nope','contentType':'text','content':1}");
    bh_err_field(H, a, MP_MAIL_CONV_NOT_FOUND, "conversationId", "mail/invite",
                 "{'conversationId':'conv-nope','participant':{'id':'x'}}");
    bh_err_field(H, a, MP_MAIL_CONV_NOT_FOUND, "conversationId", "mail/thread/create",
                 "{'conversationId':'conv-nope','rootTurnId':'turn-x'}");
}

static void get_and_list(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    char c1[64], c2[64], c3[64];
    new_conv(a, "[{'id':'bob'}]", c1);
    new_conv(a, NULL, c2);
    new_conv(b, NULL, c3);
    char t[64];
    turn(a, c1, NULL, t);
    json_t *r = bh_ok(H, a, "mail/turn", "{'conversationId':'%s','contentType':'data','content':[1]}", c1);
    json_decref(r);
    json_decref(bh_ok(H, a, "mail/thread/create", "{'conversationId':'%s','rootTurnId':'%s'}", c1, t));
    r = bh_ok(H, a, "mail/get",
              "{'conversationId':'%s','include':{'participants':true,'threads':true,'recentTurns':1,'stats':true}}", c1);
    assert_string_equal(bh_join(bh_get(r, "participants"), "id"), "alice,bob");
    assert_int_equal(json_array_size(bh_get(r, "threads")), 1);
    assert_null(bh_get(r, "threads.0._meta"));
    assert_int_equal(json_array_size(bh_get(r, "recentTurns")), 1);
    assert_string_equal(bh_str(r, "recentTurns.0.contentType"), "data"); /* newest first */
    assert_int_equal(bh_int(r, "stats.totalTurns"), 2);
    assert_int_equal(bh_int(r, "stats.turnsByContentType.text"), 1);
    assert_int_equal(bh_int(r, "stats.activeParticipants"), 2);
    assert_int_equal(bh_int(r, "stats.threadCount"), 1);
    json_decref(r);
    /* list: filters and paging */
    static const struct {
        const char *params;
        const char *want; /* c1,c2,c3 by index */
    } cases[] = {
        {"{}", "123"},
        {"{'filter':{'participantId':'bob'}}", "13"},
        {"{'filter':{'participantId':'alice','type':['multi-agent']}}", "12"},
        {"{'filter':{'type':['agent-task']}}", ""},
        {"{'filter':{'status':['active']}}", "123"},
        {"{'filter':{'status':'completed'}}", ""},
        {"{'filter':{'parentConversationId':'conv-x'}}", ""},
    };
    const char *ids[] = {c1, c2, c3};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        r = bh_ok(H, a, "mail/list", "%s", cases[i].params);
        char want[256] = "";
        for (const char *p = cases[i].want; *p; p++) {
            strcat(want, p == cases[i].want ? "" : ",");
            strcat(want, ids[*p - '1']);
        }
        const char *got = bh_join(bh_get(r, "conversations"), "id");
        if (strcmp(got, want))
            fail_msg("mail/list %s: got [%s], want [%s]", cases[i].params, got, want);
        assert_false(json_is_true(bh_get(r, "hasMore")));
        json_decref(r);
    }
    r = bh_ok(H, a, "mail/list", "{'limit':2}");
    assert_true(json_is_true(bh_get(r, "hasMore")));
    assert_string_equal(bh_str(r, "nextCursor"), c2);
    json_decref(r);
    r = bh_ok(H, a, "mail/list", "{'limit':2,'cursor':'%s'}", c2);
    assert_string_equal(bh_join(bh_get(r, "conversations"), "id"), c3);
    assert_false(json_is_true(bh_get(r, "hasMore")));
    json_decref(r);
    bh_err_field(H, a, MP_INVALID_PARAMS, "limit", "mail/list", "{'limit':0}");
}

static void close_join_leave_invite(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    char sub[64];
    bh_subscribe(H, obs, "{'mail':{}}", NULL, sub);
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    mb_session *c = bh_agent(H, "carol", NULL);
    char cid[64];
    new_conv(a, NULL, cid);
    json_decref(bh_events(H, obs));
    /* join */
    json_t *r = bh_ok(H, b, "mail/join", "{'conversationId':'%s','role':'worker'}", cid);
    assert_string_equal(bh_str(r, "participant.role"), "worker");
    assert_int_equal(bh_int(r, "conversation.participantCount"), 2);
    json_decref(r);
    bh_err_field(H, b, MP_MAIL_ALREADY_JOINED, "conversationId", "mail/join", "{'conversationId':'%s'}", cid);
    bh_err_field(H, c, MP_INVALID_PARAMS, "role", "mail/join", "{'conversationId':'%s','role':'king'}", cid);
    /* invite: bob is an assistant-ish worker without canInvite */
    bh_err_field(H, b, MP_MAIL_PERMISSION, "participant", "mail/invite", "{'conversationId':'%s','participant':{'id':'carol'}}", cid);
    bh_err_field(H, c, MP_MAIL_NOT_PARTICIPANT, "conversationId", "mail/invite",
                 "{'conversationId':'%s','participant':{'id':'dave'}}", cid);
    bh_err_field(H, a, MP_INVALID_PARAMS, "participant", "mail/invite", "{'conversationId':'%s'}", cid);
    bh_err_field(H, a, MP_INVALID_PARAMS, "participant.id", "mail/invite", "{'conversationId':'%s','participant':{}}", cid);
    r = bh_ok(H, a, "mail/invite", "{'conversationId':'%s','participant':{'id':'carol','role':'observer'}}", cid);
    assert_true(json_is_true(bh_get(r, "invited")));
    assert_string_equal(bh_str(r, "participant.role"), "observer");
    json_decref(r);
    bh_err_field(H, a, MP_MAIL_ALREADY_JOINED, "participant.id", "mail/invite",
                 "{'conversationId':'%s','participant':{'id':'carol'}}", cid);
    /* leave */
    r = bh_ok(H, c, "mail/leave", "{'conversationId':'%s','reason':'bored'}", cid);
    assert_true(json_is_true(bh_get(r, "success")));
    assert_true(json_is_integer(bh_get(r, "leftAt")));
    json_decref(r);
    bh_err_field(H, c, MP_MAIL_NOT_PARTICIPANT, "conversationId", "mail/leave", "{'conversationId':'%s'}", cid);
    /* a participant who left may re-join */
    json_decref(bh_ok(H, c, "mail/join", "{'conversationId':'%s'}", cid));
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"),
                        "mail.participant.joined,mail.participant.joined,mail.participant.left,mail.participant.joined");
    assert_string_equal(bh_str(evs, "2.data.participantId"), "carol");
    assert_string_equal(bh_str(evs, "2.data.reason"), "bored");
    assert_string_equal(bh_str(evs, "1.source"), "alice"); /* invite: the inviter acts */
    json_decref(evs);
    /* close */
    mb_session *x = bh_agent(H, "xavier", NULL);
    bh_err_field(H, x, MP_MAIL_NOT_PARTICIPANT, "conversationId", "mail/close", "{'conversationId':'%s'}", cid);
    r = bh_ok(H, b, "mail/close", "{'conversationId':'%s','reason':'done'}", cid);
    assert_string_equal(bh_str(r, "conversation.status"), "completed");
    assert_true(json_is_integer(bh_get(r, "conversation.closedAt")));
    json_decref(r);
    evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "mail.closed");
    assert_string_equal(bh_str(evs, "0.data.closedBy"), "bob");
    assert_string_equal(bh_str(evs, "0.data.reason"), "done");
    json_decref(evs);
    bh_err_field(H, a, MP_MAIL_CONV_CLOSED, "conversationId", "mail/close", "{'conversationId':'%s'}", cid);
    bh_err_field(H, x, MP_MAIL_CONV_CLOSED, "conversationId", "mail/join", "{'conversationId':'%s'}", cid);
    bh_err_field(H, a, MP_MAIL_CONV_CLOSED, "conversationId", "mail/invite",
                 "{'conversationId':'%s','participant':{'id':'xavier'}}", cid);
    bh_err_field(H, a, MP_MAIL_CONV_CLOSED, "conversationId", "mail/turn",
                 "{'conversationId':'%s','contentType':'text','content':1}", cid);
    r = bh_ok(H, a, "mail/list", "{'filter':{'status':['completed']}}");
    assert_string_equal(bh_join(bh_get(r, "conversations"), "id"), cid);
    json_decref(r);
}

static void turn_errors(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    mb_session *m = bh_agent(H, "mute", NULL);
    char cid[64], other[64], t1[64], t2[64];
    new_conv(a, "[{'id':'mute','permissions':{'canSend':false,'canCreateThreads':false}}]", cid);
    new_conv(a, NULL, other);
    turn(a, other, NULL, t2);
    const struct {
        mb_session **who;
        const char *params; /* %s = conversation id */
        int code;
        const char *field;
    } cases[] = {
        {&b, "{'conversationId':'%s','contentType':'text','content':1}", MP_MAIL_NOT_PARTICIPANT, "conversationId"},
        {&m, "{'conversationId':'%s','contentType':'text','content':1}", MP_MAIL_PERMISSION, "conversationId"},
        {&a, "{'conversationId':'%s','contentType':'html','content':1}", MP_MAIL_BAD_CONTENT, "contentType"},
        {&a, "{'conversationId':'%s','contentType':'x-','content':1}", MP_MAIL_BAD_CONTENT, "contentType"},
        {&a, "{'conversationId':'%s','contentType':'text'}", MP_INVALID_PARAMS, "content"},
        {&a, "{'conversationId':'%s','content':1}", MP_INVALID_PARAMS, "contentType"},
        {&a, "{'conversationId':'%s','contentType':'text','content':1,'threadId':'thread-nope'}", MP_MAIL_THREAD_NOT_FOUND, "threadId"},
        {&a, "{'conversationId':'%s','contentType':'text','content':1,'inReplyTo':'turn-nope'}", MP_MAIL_TURN_NOT_FOUND, "inReplyTo"},
        {&a, "{'conversationId':'%s','contentType':'text','content':1,'visibility':{'type':'participants'}}", MP_INVALID_PARAMS, "visibility"},
        {&a, "{'conversationId':'%s','contentType':'text','content':1,'visibility':'all'}", MP_INVALID_PARAMS, "visibility"},
        {&a, "{'conversationId':'%s','contentType':'text','content':1,'metadata':{'stop_reason':'bored'}}", MP_INVALID_PARAMS, "metadata.stop_reason"},
        {&a, "{'conversationId':'%s','contentType':'text','content':1,'metadata':{'handoff_target':'ghost'}}", MP_AGENT_NOT_FOUND, "metadata.handoff_target"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char params[512];
        const char *p = strstr(cases[i].params, "%s");
        snprintf(params, sizeof params, "%.*s%s%s", (int)(p - cases[i].params), cases[i].params, cid, p + 2);
        bh_err_field(H, *cases[i].who, cases[i].code, cases[i].field, "mail/turn", "%s", params);
    }
    /* inReplyTo must be in the same conversation */
    bh_err_field(H, a, MP_MAIL_TURN_NOT_FOUND, "inReplyTo", "mail/turn",
                 "{'conversationId':'%s','contentType':'text','content':1,'inReplyTo':'%s'}", cid, t2);
    static const char *const good_types[] = {"text", "data", "event", "reference", "x-custom", NULL};
    for (int i = 0; good_types[i]; i++)
        json_decref(bh_ok(H, a, "mail/turn", "{'conversationId':'%s','contentType':'%s','content':null}", cid, good_types[i]));
    turn(a, cid, NULL, t1);
    json_t *r = bh_ok(H, a, "mail/turn", "{'conversationId':'%s','contentType':'text','content':1,'inReplyTo':'%s'}", cid, t1);
    assert_string_equal(bh_str(r, "turn.inReplyTo"), t1);
    json_decref(r);
    /* thread creation needs canCreateThreads */
    bh_err_field(H, m, MP_MAIL_PERMISSION, "conversationId", "mail/thread/create",
                 "{'conversationId':'%s','rootTurnId':'%s'}", cid, t1);
}

/* the keys of object j, comma-separated, in their order */
static const char *keys_in_order(json_t *j)
{
    static char buf[512];
    buf[0] = '\0';
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v)
    {
        (void)v;
        snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", buf[0] ? "," : "", k);
    }
    return buf;
}

/* The Turn is written as text without a tree (mail.c mb__turn_text): same
 * keys, order and values as the Turn object, escapes and UTF-8 included, in
 * the reply, in mail/turns/list (the stored text) and in the event. */
static void turn_text_shape(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    char cid[64], t1[64], th[64];
    new_conv(a, NULL, cid);
    turn(a, cid, NULL, t1);
    json_t *r = bh_ok(H, a, "mail/thread/create", "{'conversationId':'%s','rootTurnId':'%s'}", cid, t1);
    snprintf(th, sizeof th, "%s", bh_str(r, "thread.id"));
    json_decref(r);
    char sub[64];
    bh_subscribe(H, a, "{'eventTypes':['mail.turn.added']}", NULL, sub);
    /* every optional field, strings that need escaping, non-ASCII */
    r = bh_ok(H, a, "mail/turn",
              "{'conversationId':'%s','contentType':'x-test','content':{'text':'q\\\"\\\\\\n\\u0001 caf\\u00e9 \\ud83d\\ude00','n':[1,2.5,null,true]},"
              "'threadId':'%s','inReplyTo':'%s','visibility':{'type':'all'},'metadata':{'k':'v\\t'}}",
              cid, th, t1);
    json_t *full = json_incref(bh_get(r, "turn"));
    json_decref(r);
    assert_string_equal(keys_in_order(full), "id,conversationId,participant,timestamp,contentType,content,threadId,"
                                             "inReplyTo,source,visibility,status,metadata");
    json_t *want = json_pack("{s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:{s:s}, s:s, s:{s:s}}", "conversationId", cid,
                             "participant", "alice", "contentType", "x-test", "threadId", th, "inReplyTo", t1,
                             "source", "type", "explicit", "method", "mail/turn", "visibility", "type", "all", "status",
                             "complete", "metadata", "k", "v\t");
    json_t *content = json_pack("{s:s, s:[i, f, n, b]}", "text", "q\"\\\n\x01 caf\xc3\xa9 \xf0\x9f\x98\x80", "n", 1,
                                2.5, 1);
    json_object_set_new(want, "content", content);
    json_object_set(want, "id", json_object_get(full, "id"));
    json_object_set(want, "timestamp", json_object_get(full, "timestamp"));
    assert_true(json_is_integer(json_object_get(full, "timestamp")));
    assert_true(json_equal(full, want));
    /* the stored text reads back the same */
    r = bh_ok(H, a, "mail/turns/list", "{'conversationId':'%s'}", cid);
    json_t *stored = json_array_get(bh_get(r, "turns"), 1);
    assert_true(json_equal(stored, full));
    assert_string_equal(keys_in_order(stored), keys_in_order(full));
    json_decref(r);
    /* the event's data, parsed back from the event text for the subscription */
    json_t *ev = NULL;
    json_t *n;
    while ((n = bh_pop(H, a, "map/event")))
        if (!ev || json_object_get(json_object_get(json_object_get(json_object_get(n, "params"), "event"), "data"), "seq")) {
            json_decref(ev);
            ev = n;
        } else {
            json_decref(n);
        }
    assert_non_null(ev);
    json_t *data = bh_get(ev, "params.event.data");
    assert_string_equal(keys_in_order(data), "conversationId,turn,seq");
    assert_string_equal(bh_str(ev, "params.event.data.conversationId"), cid);
    assert_int_equal(bh_int(ev, "params.event.data.seq"), 2);
    assert_true(json_equal(bh_get(ev, "params.event.data.turn"), full));
    json_decref(ev);
    /* the optional fields stay out when not given; metadata defaults to {} */
    r = bh_ok(H, a, "mail/turn", "{'conversationId':'%s','contentType':'text','content':null}", cid);
    assert_string_equal(keys_in_order(bh_get(r, "turn")),
                        "id,conversationId,participant,timestamp,contentType,content,source,status,metadata");
    assert_true(json_is_null(bh_get(r, "turn.content")));
    assert_int_equal(json_object_size(bh_get(r, "turn.metadata")), 0);
    json_decref(r);
    json_decref(want);
    json_decref(full);
}

static void threads(void **state)
{
    (void)state;
    bh_free(H);
    static const char *const extra[] = {"--max-thread-depth", "2", NULL};
    H = bh_new(extra);
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    char cid[64], other[64], t1[64], tother[64];
    new_conv(a, "[{'id':'bob'}]", cid);
    new_conv(a, NULL, other);
    turn(a, cid, NULL, t1);
    turn(a, other, NULL, tother);
    json_t *r = bh_ok(H, a, "mail/thread/create", "{'conversationId':'%s','rootTurnId':'%s','subject':'s'}", cid, t1);
    char th1[64];
    snprintf(th1, sizeof th1, "%s", bh_str(r, "thread.id"));
    assert_true(!strncmp(th1, "thread-", 7));
    assert_int_equal(bh_int(r, "thread.turnCount"), 0);
    assert_null(bh_get(r, "thread._meta"));
    json_decref(r);
    r = bh_ok(H, a, "mail/thread/create", "{'conversationId':'%s','rootTurnId':'%s','parentThreadId':'%s'}", cid, t1, th1);
    char th2[64];
    snprintf(th2, sizeof th2, "%s", bh_str(r, "thread.id"));
    json_decref(r);
    /* NESTING_LIMIT past --max-thread-depth (uses 10009, see mp_err.h) */
    bh_err_field(H, a, MP_MAIL_HISTORY_DENIED, "parentThreadId", "mail/thread/create",
                 "{'conversationId':'%s','rootTurnId':'%s','parentThreadId':'%s'}", cid, t1, th2);
    bh_err_field(H, a, MP_MAIL_TURN_NOT_FOUND, "rootTurnId", "mail/thread/create",
                 "{'conversationId':'%s','rootTurnId':'turn-nope'}", cid);
    bh_err_field(H, a, MP_MAIL_CONV_NOT_FOUND, "rootTurnId", "mail/thread/create",
                 "{'conversationId':'%s','rootTurnId':'%s'}", cid, tother);
    bh_err_field(H, a, MP_MAIL_THREAD_NOT_FOUND, "parentThreadId", "mail/thread/create",
                 "{'conversationId':'%s','rootTurnId':'%s','parentThreadId':'thread-nope'}", cid, t1);
    bh_err_field(H, a, MP_INVALID_PARAMS, "rootTurnId", "mail/thread/create", "{'conversationId':'%s'}", cid);
    /* a participant other than the creator may create threads too */
    r = bh_ok(H, b, "mail/thread/create", "{'conversationId':'%s','rootTurnId':'%s'}", cid, t1);
    assert_string_equal(bh_str(r, "thread.createdBy"), "bob");
    json_decref(r);
    r = bh_ok(H, a, "mail/thread/list", "{'conversationId':'%s','parentThreadId':'%s'}", cid, th1);
    assert_string_equal(bh_join(bh_get(r, "threads"), "id"), th2);
    json_decref(r);
}

static void threads_counts(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    char cid[64], t1[64];
    new_conv(a, "[{'id':'bob'}]", cid);
    turn(a, cid, NULL, t1);
    json_t *r = bh_ok(H, a, "mail/thread/create", "{'conversationId':'%s','rootTurnId':'%s'}", cid, t1);
    char th[64], extra[128];
    snprintf(th, sizeof th, "%s", bh_str(r, "thread.id"));
    json_decref(r);
    snprintf(extra, sizeof extra, "'threadId':'%s'", th);
    turn(a, cid, extra, NULL);
    turn(b, cid, extra, NULL);
    turn(a, cid, extra, NULL);
    turn(a, cid, NULL, NULL);
    r = bh_ok(H, b, "mail/thread/list", "{'conversationId':'%s'}", cid);
    assert_int_equal(bh_int(r, "threads.0.turnCount"), 3);
    assert_int_equal(bh_int(r, "threads.0.participantCount"), 2);
    json_decref(r);
    r = bh_ok(H, b, "mail/turns/list", "{'conversationId':'%s','filter':{'threadId':'%s'}}", cid, th);
    assert_int_equal(json_array_size(bh_get(r, "turns")), 3);
    json_decref(r);
    r = bh_ok(H, b, "mail/replay", "{'conversationId':'%s','threadId':'%s','limit':2}", cid, th);
    assert_int_equal(json_array_size(bh_get(r, "turns")), 2);
    assert_true(json_is_true(bh_get(r, "hasMore")));
    json_decref(r);
}

static void turns_list_paging_and_history(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *n = bh_agent(H, "nohist", NULL);
    mb_session *blind = bh_agent(H, "blind", NULL);
    char cid[64], ids[6][64];
    new_conv(a, "[{'id':'nohist','permissions':{'historyAccess':'none'}},{'id':'blind','permissions':{'canObserve':false}}]", cid);
    for (int i = 0; i < 6; i++)
        turn(a, cid, NULL, ids[i]);
    json_t *r = bh_ok(H, a, "mail/turns/list", "{'conversationId':'%s','limit':4}", cid);
    assert_int_equal(json_array_size(bh_get(r, "turns")), 4);
    assert_true(json_is_true(bh_get(r, "hasMore")));
    assert_string_equal(bh_str(r, "nextCursor"), ids[3]);
    json_decref(r);
    r = bh_ok(H, a, "mail/turns/list", "{'conversationId':'%s','filter':{'afterTurnId':'%s'}}", cid, ids[3]);
    {
        char want[256];
        snprintf(want, sizeof want, "%s,%s", ids[4], ids[5]);
        assert_string_equal(bh_join(bh_get(r, "turns"), "id"), want);
    }
    assert_false(json_is_true(bh_get(r, "hasMore")));
    json_decref(r);
    r = bh_ok(H, a, "mail/turns/list", "{'conversationId':'%s','order':'desc','limit':2}", cid);
    {
        char want[256];
        snprintf(want, sizeof want, "%s,%s", ids[5], ids[4]);
        assert_string_equal(bh_join(bh_get(r, "turns"), "id"), want);
    }
    json_decref(r);
    r = bh_ok(H, a, "mail/turns/list", "{'conversationId':'%s','filter':{'beforeTurnId':'%s'},'order':'desc'}", cid, ids[2]);
    {
        char want[256];
        snprintf(want, sizeof want, "%s,%s", ids[1], ids[0]);
        assert_string_equal(bh_join(bh_get(r, "turns"), "id"), want);
    }
    json_decref(r);
    bh_err_field(H, a, MP_INVALID_PARAMS, "order", "mail/turns/list", "{'conversationId':'%s','order':'up'}", cid);
    bh_err_field(H, a, MP_INVALID_PARAMS, "filter.contentTypes", "mail/turns/list",
                 "{'conversationId':'%s','filter':{'contentTypes':'text'}}", cid);
    bh_err_field(H, n, MP_MAIL_HISTORY_DENIED, "conversationId", "mail/turns/list", "{'conversationId':'%s'}", cid);
    bh_err_field(H, n, MP_MAIL_HISTORY_DENIED, "conversationId", "mail/replay", "{'conversationId':'%s'}", cid);
    bh_err_field(H, blind, MP_MAIL_HISTORY_DENIED, "conversationId", "mail/get", "{'conversationId':'%s'}", cid);
    /* mail/replay: oldest first, after fromTurnId */
    r = bh_ok(H, a, "mail/replay", "{'conversationId':'%s','fromTurnId':'%s','limit':1}", cid, ids[3]);
    assert_string_equal(bh_str(r, "turns.0.id"), ids[4]);
    assert_true(json_is_true(bh_get(r, "hasMore")));
    assert_int_equal(bh_int(r, "missedCount"), 2);
    json_decref(r);
    /* join with catch-up */
    mb_session *late = bh_agent(H, "late", NULL);
    r = bh_ok(H, late, "mail/join", "{'conversationId':'%s','catchUp':{'from':'%s','limit':1}}", cid, ids[3]);
    assert_int_equal(json_array_size(bh_get(r, "history")), 1);
    assert_string_equal(bh_str(r, "history.0.id"), ids[4]);
    assert_string_equal(bh_str(r, "historyCursor"), ids[4]);
    json_decref(r);
}

static void visibility(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    mb_session *w = bh_agent(H, "wendy", NULL);
    mb_session *o = bh_agent(H, "oscar", NULL);
    char cid[64];
    new_conv(a, "[{'id':'bob'},{'id':'wendy','role':'worker'},{'id':'oscar','permissions':{'canSeeInternal':true}}]", cid);
    turn(a, cid, "'visibility':{'type':'all'}", NULL);
    turn(a, cid, "'visibility':{'type':'private'}", NULL);
    turn(a, cid, "'visibility':{'type':'participants','ids':['bob']}", NULL);
    turn(a, cid, "'visibility':{'type':'role','roles':['worker']}", NULL);
    const struct {
        mb_session **who;
        const char *want; /* which of the 4 turns are visible */
    } cases[] = {{&a, "1111"}, {&b, "1010"}, {&w, "1001"}, {&o, "1111"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = bh_ok(H, *cases[i].who, "mail/turns/list", "{'conversationId':'%s'}", cid);
        char got[8] = "0000";
        size_t k;
        json_t *t;
        json_array_foreach(bh_get(r, "turns"), k, t)
        {
            const char *vt = bh_str(t, "visibility.type");
            int idx = !strcmp(vt, "all") ? 0 : !strcmp(vt, "private") ? 1 : !strcmp(vt, "participants") ? 2 : 3;
            got[idx] = '1';
        }
        if (strcmp(got, cases[i].want))
            fail_msg("reader %zu sees %s, want %s", i, got, cases[i].want);
        json_decref(r);
    }
}

/* MAP.md 10.3: visibility is enforced "when returning turns or emitting mail.turn.added to subscribers". */
static void visibility_of_turn_events(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    char cid[64], sub[64], filt[128];
    new_conv(a, "[{'id':'bob'}]", cid);
    snprintf(filt, sizeof filt, "{'eventTypes':['mail.turn.added'],'mail':{'conversationId':'%s'}}", cid);
    bh_subscribe(H, b, filt, NULL, sub);
    turn(a, cid, "'visibility':{'type':'all'}", NULL);
    turn(a, cid, "'visibility':{'type':'private'}", NULL);
    json_t *evs = bh_event_objs(H, b, "mail.turn.added");
    size_t n = json_array_size(evs);
    json_decref(evs);
    assert_int_equal(n, 1); /* bob does not receive alice's private turn */
}

static void intercepted_turns(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    mb_session *a = bh_agent(H, "alice", NULL);
    mb_session *b = bh_agent(H, "bob", NULL);
    char cid[64], t1[64];
    new_conv(a, NULL, cid);
    turn(a, cid, NULL, t1);
    json_t *r = bh_ok(H, a, "mail/thread/create", "{'conversationId':'%s','rootTurnId':'%s'}", cid, t1);
    char th[64];
    snprintf(th, sizeof th, "%s", bh_str(r, "thread.id"));
    json_decref(r);
    char sub[64];
    bh_subscribe(H, obs, "{'eventTypes':['mail.turn.added','mail.participant.joined']}", NULL, sub);
    /* bob is not a participant: a pass-through sender joins, then the turn is recorded */
    r = bh_ok(H, b, "map/send", "{'to':{'agent':'alice'},'payload':{'v':1},'meta':{'mail':{'conversationId':'%s','threadId':'%s','inReplyTo':'%s'}}}",
              cid, th, t1);
    const char *mid = bh_str(r, "messageId");
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "mail.participant.joined,mail.turn.added");
    assert_string_equal(bh_str(evs, "1.data.turn.participant"), "bob");
    assert_string_equal(bh_str(evs, "1.data.turn.contentType"), "data");
    assert_int_equal(bh_int(evs, "1.data.turn.content.v"), 1);
    assert_string_equal(bh_str(evs, "1.data.turn.source.type"), "intercepted");
    assert_string_equal(bh_str(evs, "1.data.turn.source.messageId"), mid);
    assert_string_equal(bh_str(evs, "1.data.turn.threadId"), th);
    assert_string_equal(bh_str(evs, "1.data.turn.inReplyTo"), t1);
    json_decref(evs);
    json_decref(r);
    /* the recipient sees meta.mail unchanged */
    json_t *m = bh_messages(H, a);
    assert_string_equal(bh_str(m, "0.meta.mail.conversationId"), cid);
    json_decref(m);
    /* never fails the send: unknown conversation / thread just records nothing */
    r = bh_ok(H, b, "map/send", "{'to':{'agent':'alice'},'meta':{'mail':{'conversationId':'conv-nope'}}}");
    assert_int_equal(json_array_size(bh_get(r, "delivered")), 1);
    json_decref(r);
    json_decref(bh_ok(H, b, "map/send", "{'to':{'agent':'alice'},'meta':{'mail':{'conversationId':'%s','threadId':'thread-x'}}}", cid));
    json_decref(bh_ok(H, a, "mail/close", "{'conversationId':'%s'}", cid));
    json_decref(bh_ok(H, b, "map/send", "{'to':{'agent':'alice'},'meta':{'mail':{'conversationId':'%s'}}}", cid));
    evs = bh_event_objs(H, obs, NULL);
    assert_int_equal(json_array_size(evs), 0);
    json_decref(evs);
    /* recorded even when delivery failed */
}

static void task_conversations(void **state)
{
    (void)state;
    mb_session *obs = bh_connect(H, "client", "obs");
    mb_session *lead = bh_agent(H, "lead", NULL);
    char cid[64];
    new_conv(lead, NULL, cid);
    char sub[64];
    bh_subscribe(H, obs, "{'mail':{}}", NULL, sub);
    json_t *r = bh_ok(H, lead, "map/agents/spawn", "{'agentId':'kid','parent':'lead','name':'Kid','metadata':{'conversationId':'%s'}}", cid);
    const char *task = bh_str(r, "agent.metadata.conversationId");
    assert_non_null(task);
    assert_string_not_equal(task, cid);
    char tid[64];
    snprintf(tid, sizeof tid, "%s", task);
    json_decref(r);
    r = bh_ok(H, lead, "mail/get", "{'conversationId':'%s','include':{'participants':true}}", tid);
    assert_string_equal(bh_str(r, "conversation.type"), "agent-task");
    assert_string_equal(bh_str(r, "conversation.parentConversationId"), cid);
    assert_string_equal(bh_str(r, "conversation.subject"), "Task: Kid");
    assert_string_equal(bh_str(r, "conversation.metadata.taskAgentId"), "kid");
    assert_non_null(bh_str(r, "conversation.parentTurnId"));
    assert_string_equal(bh_join(bh_get(r, "participants"), "id"), "lead,kid");
    assert_string_equal(bh_str(r, "participants.1.role"), "worker");
    json_decref(r);
    /* the parent conversation got a task.spawned marker turn */
    r = bh_ok(H, lead, "mail/turns/list", "{'conversationId':'%s'}", cid);
    assert_string_equal(bh_str(r, "turns.0.content.event"), "task.spawned");
    assert_string_equal(bh_str(r, "turns.0.content.agentId"), "kid");
    json_decref(r);
    json_decref(bh_events(H, obs));
    /* a send to the kid without meta.mail is recorded in its task conversation */
    json_decref(bh_ok(H, lead, "map/send", "{'to':{'agent':'kid'},'payload':{'text':'do it'}}"));
    r = bh_ok(H, lead, "mail/turns/list", "{'conversationId':'%s'}", tid);
    assert_int_equal(json_array_size(bh_get(r, "turns")), 1);
    assert_string_equal(bh_str(r, "turns.0.source.type"), "intercepted");
    json_decref(r);
    json_decref(bh_events(H, obs));
    /* stop closes the task conversation with a summary */
    json_decref(bh_ok(H, lead, "map/agents/stop", "{'agentId':'kid','reason':'complete'}"));
    r = bh_ok(H, lead, "mail/get", "{'conversationId':'%s'}", tid);
    assert_string_equal(bh_str(r, "conversation.status"), "completed");
    assert_non_null(bh_str(r, "conversation.metadata.summary"));
    json_decref(r);
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_string_equal(bh_join(evs, "type"), "mail.turn.added,mail.turn.stop,mail.summary.generated,mail.closed");
    assert_string_equal(bh_str(evs, "0.data.turn.content.event"), "task.completed");
    assert_string_equal(bh_str(evs, "0.data.turn.metadata.stop_reason"), "complete");
    assert_string_equal(bh_str(evs, "1.data.reason"), "complete");
    assert_string_equal(bh_str(evs, "3.data.conversationId"), tid);
    assert_string_equal(bh_str(evs, "3.data.closedBy"), "kid");
    assert_non_null(bh_str(evs, "3.data.summary"));
    json_decref(evs);
    /* the parent conversation stays open */
    r = bh_ok(H, lead, "mail/get", "{'conversationId':'%s'}", cid);
    assert_string_equal(bh_str(r, "conversation.status"), "active");
    json_decref(r);
}

static void summary(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "alice", NULL);
    char cid[64];
    new_conv(a, NULL, cid);
    turn(a, cid, NULL, NULL);
    json_t *r = bh_ok(H, a, "mail/summary", "{'conversationId':'%s','include':{'keyPoints':true,'participants':true}}", cid);
    assert_true(json_is_true(bh_get(r, "generated")));
    assert_non_null(strstr(bh_str(r, "summary"), "1 turns by 1 participants"));
    assert_int_equal(bh_int(r, "participants.alice"), 1);
    assert_true(json_is_array(bh_get(r, "keyPoints")));
    json_decref(r);
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        TB(create_happy),
        TB(create_errors),
        TB(conversation_id_errors),
        TB(get_and_list),
        TB(close_join_leave_invite),
        TB(turn_errors),
        TB(turn_text_shape), TB(threads),
        TB(threads_counts),
        TB(turns_list_paging_and_history),
        TB(visibility),
        TB(visibility_of_turn_events),
        TB(intercepted_turns),
        TB(task_conversations),
        TB(summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
