/* test_broker_events.c - subscriptions end to end (MAP.md 9): sequenceNumber per
 * subscription, excludeOwnEvents, replayFrom, map/replay paging, unsubscribe, ack. */
#include "test_util.h"

#include <stdio.h>

#include "broker_harness.h"
#include "mp_err.h"

#include "broker_fixture.h"

/* Check the map/event params of one subscription: gapless sequence from `first`, ids match. */
static void check_seq(json_t *evs, const char *sub, long long first)
{
    size_t i;
    json_t *p;
    long long want = first;
    json_array_foreach(evs, i, p)
    {
        if (strcmp(bh_str(p, "subscriptionId"), sub))
            continue;
        if (bh_int(p, "sequenceNumber") != want)
            fail_msg("sub %s: sequenceNumber %lld, want %lld", sub, bh_int(p, "sequenceNumber"), want);
        assert_string_equal(bh_str(p, "eventId"), bh_str(p, "event.id"));
        assert_int_equal(bh_int(p, "timestamp"), bh_int(p, "event.timestamp"));
        if (bh_get(p, "event.causedBy"))
            assert_true(json_equal(bh_get(p, "causedBy"), bh_get(p, "event.causedBy")));
        want++;
    }
}

static size_t count_sub(json_t *evs, const char *sub)
{
    size_t i, n = 0;
    json_t *p;
    json_array_foreach(evs, i, p) if (!strcmp(bh_str(p, "subscriptionId"), sub)) n++;
    return n;
}

static void sequence_gapless(void **state)
{
    (void)state;
    mb_session *c = bh_connect(H, "client", "c");
    char all[64], regs[64];
    bh_subscribe(H, c, NULL, NULL, all);
    bh_subscribe(H, c, "{'eventTypes':['agent_registered']}", NULL, regs);
    assert_string_not_equal(all, regs);
    mb_session *a = bh_agent(H, "a1", NULL);
    for (int i = 0; i < 5; i++) {
        json_decref(bh_ok(H, a, "map/agents/register", "{'agentId':'x%d'}", i));
        json_decref(bh_ok(H, a, "map/agents/update", "{'agentId':'x%d','state':'busy'}", i));
    }
    json_t *evs = bh_events(H, c);
    check_seq(evs, all, 1);
    check_seq(evs, regs, 1);
    assert_int_equal(count_sub(evs, regs), 6);                  /* a1 + x0..x4 */
    assert_int_equal(count_sub(evs, all), 1 + 1 + 5 * 2);       /* connected + a1 + 10 */
    json_decref(evs);
    /* the numbering continues across batches */
    json_decref(bh_ok(H, a, "map/agents/register", "{'agentId':'y'}"));
    evs = bh_events(H, c);
    check_seq(evs, regs, 7);
    check_seq(evs, all, 13);
    json_decref(evs);
}

static void exclude_own_events(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "me", NULL);
    char sub[64], sub2[64];
    bh_subscribe(H, a, "{'eventTypes':['agent_state_changed','agent_registered']}", "{'excludeOwnEvents':true}", sub);
    bh_subscribe(H, a, "{'eventTypes':['agent_state_changed','agent_registered']}", "{'excludeOwnEvents':false}", sub2);
    json_decref(bh_ok(H, a, "map/agents/update", "{'agentId':'me','state':'busy'}"));
    json_decref(bh_ok(H, a, "map/agents/spawn", "{'agentId':'mine'}")); /* source = an agent this connection owns */
    mb_session *b = bh_agent(H, "other", NULL);
    json_decref(bh_ok(H, b, "map/agents/update", "{'agentId':'other','state':'busy'}"));
    json_t *evs = bh_events(H, a);
    assert_int_equal(count_sub(evs, sub), 2);  /* other: registered + state */
    assert_int_equal(count_sub(evs, sub2), 4); /* me: state, mine registered; other: registered, state */
    size_t i;
    json_t *p;
    json_array_foreach(evs, i, p) if (!strcmp(bh_str(p, "subscriptionId"), sub))
        assert_string_equal(bh_str(p, "event.source"), "other");
    check_seq(evs, sub, 1);
    json_decref(evs);
    bh_err_field(H, a, MP_INVALID_PARAMS, "excludeOwnEvents", "map/subscribe", "{'options':{'excludeOwnEvents':1}}");
}

/* three scope events to replay */
static void make_history(mb_session *s, char ids[3][64])
{
    mb_session *obs = bh_connect(H, "client", "hist-obs");
    char sub[64];
    bh_subscribe(H, obs, "{'eventTypes':['scope_created']}", NULL, sub);
    for (int i = 0; i < 3; i++)
        json_decref(bh_ok(H, s, "map/scopes/create", "{'scopeId':'h%d'}", i));
    json_t *evs = bh_event_objs(H, obs, NULL);
    assert_int_equal(json_array_size(evs), 3);
    for (int i = 0; i < 3; i++)
        snprintf(ids[i], 64, "%s", bh_str(json_array_get(evs, (size_t)i), "id"));
    json_decref(evs);
}

static void replay_from_on_subscribe(void **state)
{
    (void)state;
    mb_session *s = bh_connect(H, "client", "c");
    char ids[3][64];
    make_history(s, ids);
    char sub[64];
    bh_subscribe(H, s, "{'eventTypes':['scope_created']}", NULL, sub); /* no replay */
    assert_int_equal(bh_count(H, s, "map/event"), 0);
    json_t *r = bh_ok(H, s, "map/subscribe", "{'filter':{'eventTypes':['scope_created']},'replayFrom':'%s'}", ids[0]);
    const char *rid = bh_str(r, "subscriptionId");
    json_t *evs = bh_events(H, s);
    assert_int_equal(count_sub(evs, rid), 2); /* exclusive of the given event */
    check_seq(evs, rid, 1);
    assert_string_equal(bh_str(evs, "0.eventId"), ids[1]);
    assert_string_equal(bh_str(evs, "1.eventId"), ids[2]);
    json_decref(evs);
    json_decref(r);
    /* a timestamp: everything at or after it */
    r = bh_ok(H, s, "map/subscribe", "{'filter':{'eventTypes':['scope_created']},'replayFrom':0}");
    evs = bh_events(H, s);
    assert_int_equal(json_array_size(evs), 3);
    json_decref(evs);
    json_decref(r);
    /* live events continue the same numbering after the replay */
    r = bh_ok(H, s, "map/subscribe", "{'filter':{'eventTypes':['scope_created']},'replayFrom':'%s'}", ids[1]);
    char live[64];
    snprintf(live, sizeof live, "%s", bh_str(r, "subscriptionId"));
    json_decref(r);
    json_decref(bh_ok(H, s, "map/scopes/create", "{'scopeId':'later'}"));
    evs = bh_events(H, s);
    check_seq(evs, live, 1);
    assert_int_equal(count_sub(evs, live), 2);
    json_decref(evs);
    bh_err_field(H, s, MP_INVALID_PARAMS, "replayFrom", "map/subscribe", "{'replayFrom':'not-a-ulid'}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "replayFrom", "map/subscribe", "{'replayFrom':true}");
}

static void replay_paging(void **state)
{
    (void)state;
    mb_session *s = bh_connect(H, "client", "c");
    for (int i = 0; i < 7; i++)
        json_decref(bh_ok(H, s, "map/scopes/create", "{'scopeId':'p%d'}", i));
    char after[64] = "";
    char seen[512] = "";
    int pages = 0;
    for (;;) {
        json_t *r = after[0] ? bh_ok(H, s, "map/replay", "{'limit':3,'afterEventId':'%s','filter':{'eventTypes':['scope_created']}}", after)
                             : bh_ok(H, s, "map/replay", "{'limit':3,'filter':{'eventTypes':['scope_created']}}");
        pages++;
        json_t *evs = bh_get(r, "events");
        size_t n = json_array_size(evs), i;
        json_t *x;
        json_array_foreach(evs, i, x)
        {
            assert_string_equal(bh_str(x, "eventId"), bh_str(x, "event.id"));
            assert_true(json_is_array(bh_get(x, "causedBy")));
            strcat(seen, bh_str(x, "event.data.scopeId"));
            strcat(seen, ",");
        }
        int more = json_is_true(bh_get(r, "hasMore"));
        if (n)
            snprintf(after, sizeof after, "%s", bh_str(json_array_get(evs, n - 1), "eventId"));
        json_decref(r);
        if (!more || !n)
            break;
        assert_int_equal(n, 3);
        assert_true(pages < 10);
    }
    assert_string_equal(seen, "p0,p1,p2,p3,p4,p5,p6,");
    assert_int_equal(pages, 3);
    /* an exact fit: hasMore false on the last full page */
    json_t *r = bh_ok(H, s, "map/replay", "{'limit':7,'filter':{'eventTypes':['scope_created']}}");
    assert_int_equal(json_array_size(bh_get(r, "events")), 7);
    assert_false(json_is_true(bh_get(r, "hasMore")));
    json_decref(r);
    /* afterEventId is exclusive; the last one gives an empty page */
    r = bh_ok(H, s, "map/replay", "{'afterEventId':'%s','filter':{'eventTypes':['scope_created']}}", after);
    assert_int_equal(json_array_size(bh_get(r, "events")), 0);
    assert_false(json_is_true(bh_get(r, "hasMore")));
    json_decref(r);
    /* an id that was never an event resumes at the right position (ULID ordering) */
    r = bh_ok(H, s, "map/replay", "{'afterEventId':'00000000000000000000000000','filter':{'eventTypes':['scope_created']},'limit':1}");
    assert_string_equal(bh_str(r, "events.0.event.data.scopeId"), "p0");
    assert_true(json_is_true(bh_get(r, "hasMore")));
    json_decref(r);
    bh_err_field(H, s, MP_INVALID_PARAMS, "afterEventId", "map/replay", "{'afterEventId':'zz'}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "limit", "map/replay", "{'limit':0}");
    bh_err_field(H, s, MP_INVALID_PARAMS, "limit", "map/replay", "{'limit':1001}");
}

static void replay_includes_messages(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "a", NULL);
    mb_session *b = bh_agent(H, "b", NULL);
    (void)b;
    json_decref(bh_ok(H, a, "map/send", "{'to':{'agent':'b'},'payload':'x'}"));
    json_t *r = bh_ok(H, a, "map/replay", "{'filter':{'eventTypes':['message_sent','message_delivered']}}");
    assert_string_equal(bh_join(bh_get(r, "events"), "event.type"), "message_sent,message_delivered");
    assert_string_equal(bh_str(r, "events.1.causedBy.0"), bh_str(r, "events.0.eventId"));
    json_decref(r);
}

/* ids and times vary between two sends: pin them so the rest compares */
static void normalize(json_t *j)
{
    if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) normalize(v);
    } else if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v)
        {
            if (!strcmp(k, "messageId") || !strcmp(k, "id"))
                json_object_set_new(j, k, json_string("X"));
            else if (!strcmp(k, "timestamp"))
                json_object_set_new(j, k, json_integer(0));
            else
                normalize(v);
        }
    }
}

static char *data_text(json_t *ev) /* tu_free it */
{
    json_t *d = json_deep_copy(json_object_get(ev, "data"));
    normalize(d);
    char *t = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    return t;
}

/* message_* events keep the encoded message and build their data when read:
 * from the history (no subscription when sent: built at replay) and at once
 * (a subscription exists) they carry the same data, in the key order the
 * broker always wrote. */
static void message_event_data_lazy_and_eager(void **state)
{
    (void)state;
    mb_session *a = bh_agent(H, "a", NULL);
    mb_session *b = bh_agent(H, "b", NULL);
    const char *send = "{'to':{'agent':'b'},'payload':{'k':[1,2.5,'\u00e9\\n'],'n':null},"
                       "'meta':{'correlationId':'c1','priority':'high','isResult':true}}";
    static const char *const want[2] = {
        "{\"messageId\":\"X\",\"from\":\"a\",\"to\":{\"agent\":\"b\"},\"timestamp\":0,\"message\":{\"id\":\"X\","
        "\"from\":\"a\",\"to\":{\"agent\":\"b\"},\"timestamp\":0,\"payload\":{\"k\":[1,2.5,\"\u00e9\\n\"],\"n\":null},"
        "\"meta\":{\"correlationId\":\"c1\",\"priority\":\"high\",\"isResult\":true}},\"correlationId\":\"c1\","
        "\"priority\":\"high\",\"payload\":{\"k\":[1,2.5,\"\u00e9\\n\"],\"n\":null}}",
        "{\"messageId\":\"X\",\"from\":\"a\",\"deliveredTo\":[\"b\"],\"timestamp\":0,\"message\":{\"id\":\"X\","
        "\"from\":\"a\",\"to\":{\"agent\":\"b\"},\"timestamp\":0,\"payload\":{\"k\":[1,2.5,\"\u00e9\\n\"],\"n\":null},"
        "\"meta\":{\"correlationId\":\"c1\",\"priority\":\"high\",\"isResult\":true}},\"correlationId\":\"c1\","
        "\"payload\":{\"k\":[1,2.5,\"\u00e9\\n\"],\"n\":null}}",
    };
    /* lazy: nobody subscribed, read back through map/replay */
    json_t *r1 = bh_ok(H, a, "map/send", send);
    json_t *r = bh_ok(H, a, "map/replay", "{'filter':{'eventTypes':['message_sent','message_delivered']}}");
    assert_int_equal(json_array_size(bh_get(r, "events")), 2);
    for (int i = 0; i < 2; i++) {
        json_t *ev = json_object_get(json_array_get(bh_get(r, "events"), (size_t)i), "event");
        assert_string_equal(bh_str(ev, "data.messageId"), bh_str(r1, "messageId"));
        assert_true(json_equal(bh_get(ev, "data.timestamp"), bh_get(ev, "data.message.timestamp")) || i == 1);
        char *t = data_text(ev);
        assert_string_equal(t, want[i]);
        tu_free(t);
    }
    json_decref(r);
    json_decref(r1);
    /* eager: a subscription exists when the message is sent */
    mb_session *o = bh_connect(H, "client", "o");
    char sub[64];
    bh_subscribe(H, o, "{'eventTypes':['message_sent','message_delivered']}", NULL, sub);
    json_decref(bh_ok(H, a, "map/send", send));
    json_t *evs = bh_event_objs(H, o, NULL);
    assert_int_equal(json_array_size(evs), 2);
    for (int i = 0; i < 2; i++) {
        char *t = data_text(json_array_get(evs, (size_t)i));
        assert_string_equal(t, want[i]);
        tu_free(t);
    }
    json_decref(evs);
    (void)b;
}

static void unsubscribe(void **state)
{
    (void)state;
    mb_session *c = bh_connect(H, "client", "c");
    mb_session *d = bh_connect(H, "client", "d");
    char sub[64];
    bh_subscribe(H, c, NULL, NULL, sub);
    bh_err_field(H, d, MP_PERMISSION_DENIED, "subscriptionId", "map/unsubscribe", "{'subscriptionId':'%s'}", sub);
    json_decref(bh_ok(H, d, "map/scopes/create", "{'scopeId':'s1'}"));
    assert_int_equal(bh_count(H, c, "map/event"), 1); /* scope_created */
    bh_clear(H, c);
    json_t *r = bh_ok(H, c, "map/unsubscribe", "{'subscriptionId':'%s'}", sub);
    assert_true(json_is_true(bh_get(r, "unsubscribed")));
    assert_string_equal(bh_str(r, "subscription.id"), sub);
    assert_true(json_is_integer(bh_get(r, "subscription.closedAt")));
    json_decref(r);
    assert_int_equal(c->nsubs, 0);
    json_decref(bh_ok(H, d, "map/scopes/create", "{'scopeId':'s2'}"));
    assert_int_equal(bh_count(H, c, "map/event"), 0);
    /* idempotent */
    r = bh_ok(H, c, "map/unsubscribe", "{'subscriptionId':'%s'}", sub);
    assert_true(json_is_true(bh_get(r, "unsubscribed")));
    json_decref(r);
    json_decref(bh_ok(H, c, "map/unsubscribe", "{'subscriptionId':'never'}"));
    bh_err_field(H, c, MP_INVALID_PARAMS, "subscriptionId", "map/unsubscribe", "{}");
}

static void subscribe_ack(void **state)
{
    (void)state;
    mb_session *c = bh_connect(H, "client", "c");
    char sub[64];
    bh_subscribe(H, c, NULL, NULL, sub);
    json_decref(bh_ok(H, c, "map/scopes/create", "{'scopeId':'s1'}"));
    json_decref(bh_ok(H, c, "map/scopes/create", "{'scopeId':'s2'}"));
    bh_clear(H, c);
    bh_notify(H, c, "map/subscribe.ack", "{'subscriptionId':'%s','upToSequence':2}", sub);
    assert_int_equal(bh_inbox_len(H, c), 0);
    assert_int_equal(c->subs->acked, 2);
    bh_notify(H, c, "map/subscribe.ack", "{'subscriptionId':'%s','upToSequence':9}", sub); /* beyond what was sent */
    assert_int_equal(c->subs->acked, 2);
    bh_notify(H, c, "map/subscribe.ack", "{'subscriptionId':'%s','upToSequence':1}", sub); /* backwards */
    assert_int_equal(c->subs->acked, 2);
}

static void filters_end_to_end(void **state)
{
    (void)state;
    mb_session *c = bh_connect(H, "client", "c");
    char from[64], scope[64], dotted[64];
    bh_subscribe(H, c, "{'fromAgents':['w1']}", NULL, from);
    bh_subscribe(H, c, "{'scopes':['sA']}", NULL, scope);
    bh_subscribe(H, c, "{'eventTypes':['scope.member.joined','agent.*']}", NULL, dotted);
    mb_session *w1 = bh_agent(H, "w1", NULL);
    mb_session *w2 = bh_agent(H, "w2", NULL);
    json_decref(bh_ok(H, w1, "map/scopes/create", "{'scopeId':'sA'}"));
    json_decref(bh_ok(H, w2, "map/scopes/join", "{'scopeId':'sA','agentId':'w2'}"));
    json_t *evs = bh_events(H, c);
    size_t i;
    json_t *p;
    json_array_foreach(evs, i, p)
    {
        const char *sid = bh_str(p, "subscriptionId"), *src = bh_str(p, "event.source"), *t = bh_str(p, "event.type");
        if (!strcmp(sid, from))
            assert_string_equal(src, "w1");
        if (!strcmp(sid, scope))
            assert_string_equal(bh_str(p, "event.data.scopeId"), "sA");
        if (!strcmp(sid, dotted))
            assert_true(!strcmp(t, "scope_member_joined") || !strncmp(t, "agent_", 6));
    }
    assert_int_equal(count_sub(evs, from), 3);   /* source w1: participant_connected, agent_registered, scope_created */
    assert_int_equal(count_sub(evs, scope), 2);  /* scope_created + member_joined */
    assert_int_equal(count_sub(evs, dotted), 3); /* 2 agent_registered + 1 scope_member_joined */
    json_decref(evs);
}

static void subscription_quota(void **state)
{
    (void)state;
    bh_free(H);
    static const char *const extra[] = {"--max-subscriptions", "2", NULL};
    H = bh_new(extra);
    mb_session *c = bh_connect(H, "client", "c");
    char s1[64], s2[64];
    bh_subscribe(H, c, NULL, NULL, s1);
    bh_subscribe(H, c, NULL, NULL, s2);
    json_decref(bh_err(H, c, MP_QUOTA_EXCEEDED, "map/subscribe", "{}"));
    json_decref(bh_ok(H, c, "map/unsubscribe", "{'subscriptionId':'%s'}", s1));
    bh_subscribe(H, c, NULL, NULL, s1);
}

static void session_end_drops_subscriptions(void **state)
{
    (void)state;
    mb_session *c = bh_connect(H, "client", "c");
    char sub[64];
    bh_subscribe(H, c, NULL, NULL, sub);
    assert_int_equal(mb_map_size(bh_broker(H)->sub_index), 1);
    bh_end(H, c, "bye");
    assert_int_equal(mb_map_size(bh_broker(H)->sub_index), 0);
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        TB(sequence_gapless),   TB(exclude_own_events), TB(replay_from_on_subscribe), TB(replay_paging),
        TB(replay_includes_messages), TB(message_event_data_lazy_and_eager), TB(unsubscribe), TB(subscribe_ack),  TB(filters_end_to_end),
        TB(subscription_quota), TB(session_end_drops_subscriptions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
