/* test_broker_router.c - map/send (MAP.md 8): every address form and its
 * `delivered` list, participant fallback, sender exclusion, one frame per
 * connection, routing errors, message_* events. */
#include "test_util.h"

#include <stdio.h>

#include "broker_harness.h"
#include "mp_err.h"

#include "broker_fixture.h"
/* the cast: P <- S (sender) <- C1 <- G ; S <- C2 ; P <- Sib ; client cl ; observer obs */
static mb_session *sP, *sS, *sC1, *sC2, *sSib, *sCl, *sObs;

static int setup(void **state)
{
    bh_fixture_setup(state);
    sObs = bh_connect(H, "client", "obs");
    sP = bh_agent(H, "P", "lead");
    sS = bh_connect(H, "agent", "pS");
    json_decref(bh_ok(H, sS, "map/agents/register", "{'agentId':'S','parent':'P','role':'worker'}"));
    sC1 = bh_connect(H, "agent", "pC1");
    json_decref(bh_ok(H, sC1, "map/agents/register", "{'agentId':'C1','parent':'S'}"));
    sC2 = bh_connect(H, "agent", "pC2");
    json_decref(bh_ok(H, sC2, "map/agents/register", "{'agentId':'C2','parent':'S','role':'worker'}"));
    json_decref(bh_ok(H, sC2, "map/agents/register", "{'agentId':'G','parent':'C1'}"));
    sSib = bh_connect(H, "agent", "pSib");
    json_decref(bh_ok(H, sSib, "map/agents/register", "{'agentId':'Sib','parent':'P','role':'worker'}"));
    sCl = bh_connect(H, "client", "cl");
    json_decref(bh_ok(H, sP, "map/scopes/create", "{'scopeId':'team'}"));
    json_decref(bh_ok(H, sS, "map/scopes/join", "{'scopeId':'team','agentId':'S'}"));
    json_decref(bh_ok(H, sSib, "map/scopes/join", "{'scopeId':'team','agentId':'Sib'}"));
    json_decref(bh_ok(H, sC1, "map/scopes/join", "{'scopeId':'team','agentId':'C1'}"));
    mb_session *all[] = {sObs, sP, sS, sC1, sC2, sSib, sCl};
    for (size_t i = 0; i < 7; i++)
        bh_clear(H, all[i]);
    return 0;
}

#undef TB /* this file's setup also builds a lineage of agents */
#define TB(fn) cmocka_unit_test_setup_teardown(fn, setup, bh_fixture_teardown)

static void address_forms(void **state)
{
    (void)state;
    static const struct {
        const char *to;
        const char *delivered; /* sorted */
        const char *frames;    /* map/message frames per connection: obs,P,S,C1,C2,Sib,cl */
    } cases[] = {
        {"'C1'", "C1", "0001000"},
        {"'cl'", "cl", "0000001"},
        {"{'agent':'C1'}", "C1", "0001000"},
        {"{'agent':'cl'}", "cl", "0000001"}, /* participant fallback (reply to a client) */
        {"{'agent':'S'}", "S", "0010000"},   /* named explicitly: the sender's own agent gets it */
        {"{'agents':['C1','C2','ghost','C1']}", "C1,C2", "0001100"},
        {"{'agents':['S','cl']}", "S,cl", "0010001"},
        {"{'agents':['C2','G']}", "C2,G", "0000100"}, /* one frame for a connection owning both */
        /* past 8 distinct recipients the set switches from a scan to a map: duplicates on both sides */
        {"{'agents':['C1','C2','C1','G','P','Sib','S','cl','obs','pC1','C1','pSib','G','obs']}",
         "C1,C2,G,P,S,Sib,cl,obs,pC1,pSib", "1111111"},
        {"{'scope':'team'}", "C1,Sib", "0001010"},    /* the sender's own agent is excluded */
        {"{'role':'worker'}", "C2,Sib", "0000110"},
        {"{'role':'worker','within':'team'}", "Sib", "0000010"},
        {"{'role':'nobody'}", "", "0000000"},
        {"{'parent':true}", "P", "0100000"},
        {"{'children':true}", "C1,C2", "0001100"},
        {"{'descendants':true}", "C1,C2,G", "0001100"},
        {"{'descendants':true,'depth':1}", "C1,C2", "0001100"},
        {"{'siblings':true}", "Sib", "0000010"},
        {"{'ancestors':true}", "P", "0100000"},
        {"{'broadcast':true}", "C1,C2,G,P,Sib", "0101110"},
        {"{'system':true}", "", "0000000"},
        {"{'participant':'cl'}", "cl", "0000001"},
        {"{'participant':'pC2'}", "pC2", "0000100"},
        {"{'participants':'clients'}", "cl,obs", "1000001"},
        {"{'participants':'agents'}", "P,pC1,pC2,pSib", "0101110"},
        {"{'participants':'all'}", "P,cl,obs,pC1,pC2,pSib", "1101111"},
        {"{'system':'local','agent':'C1'}", "C1", "0001000"},
    };
    mb_session *conns[] = {sObs, sP, sS, sC1, sC2, sSib, sCl};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = bh_ok(H, sS, "map/send", "{'to':%s,'payload':{'n':%zu}}", cases[i].to, i);
        const char *mid = bh_str(r, "messageId");
        assert_non_null(mid);
        json_t *del = bh_get(r, "delivered");
        if (!json_is_array(del))
            fail_msg("%s: no delivered array", cases[i].to);
        json_t *sorted = json_deep_copy(del);
        char got[256];
        {
            const char *ids[32];
            size_t n = 0, k;
            json_t *x;
            json_array_foreach(sorted, k, x) ids[n++] = json_string_value(x);
            for (size_t a = 1; a < n; a++)
                for (size_t b = a; b > 0 && strcmp(ids[b - 1], ids[b]) > 0; b--) {
                    const char *t = ids[b];
                    ids[b] = ids[b - 1];
                    ids[b - 1] = t;
                }
            size_t off = 0;
            got[0] = '\0';
            for (k = 0; k < n; k++)
                off += (size_t)snprintf(got + off, sizeof got - off, "%s%s", k ? "," : "", ids[k]);
        }
        json_decref(sorted);
        if (strcmp(got, cases[i].delivered))
            fail_msg("to %s: delivered [%s], want [%s]", cases[i].to, got, cases[i].delivered);
        json_t *to = bh_json("%s", cases[i].to);
        for (size_t c = 0; c < 7; c++) {
            json_t *m = bh_messages(H, conns[c]);
            size_t want = (size_t)(cases[i].frames[c] - '0');
            if (json_array_size(m) != want)
                fail_msg("to %s: connection %zu got %zu frames, want %zu", cases[i].to, c, json_array_size(m), want);
            size_t k;
            json_t *x;
            json_array_foreach(m, k, x)
            {
                assert_string_equal(bh_str(x, "id"), mid);
                assert_string_equal(bh_str(x, "from"), "S");
                assert_true(json_equal(json_object_get(x, "to"), to)); /* as the sender wrote it */
                assert_int_equal(bh_int(x, "payload.n"), (long long)i);
                assert_true(json_is_integer(json_object_get(x, "timestamp")));
            }
            json_decref(m);
            bh_clear(H, conns[c]);
        }
        json_decref(to);
        json_decref(r);
    }
}

static void from_client_identity(void **state)
{
    (void)state;
    json_decref(bh_ok(H, sCl, "map/send", "{'to':{'agent':'C1'},'payload':1}"));
    json_t *m = bh_messages(H, sC1);
    assert_string_equal(bh_str(m, "0.from"), "cl"); /* no agent: the participant id */
    json_decref(m);
    /* a client has no S: hierarchical forms resolve to nothing */
    json_t *r = bh_ok(H, sCl, "map/send", "{'to':{'parent':true}}");
    assert_int_equal(json_array_size(bh_get(r, "delivered")), 0);
    json_decref(r);
    r = bh_ok(H, sCl, "map/send", "{'to':{'broadcast':true}}");
    assert_string_equal(bh_join(bh_get(r, "delivered"), NULL), "P,S,C1,C2,G,Sib");
    json_decref(r);
}

static void routing_errors(void **state)
{
    (void)state;
    json_decref(bh_ok(H, sP, "map/scopes/create", "{'scopeId':'C1'}")); /* a scope named like an agent */
    json_decref(bh_ok(H, sP, "map/scopes/create", "{'scopeId':'closed','sendPolicy':'members'}"));
    static const struct {
        const char *params;
        int code;
        const char *field; /* NULL = not checked */
    } cases[] = {
        {"{'to':'ghost'}", MP_AGENT_NOT_FOUND, "to"},
        {"{'to':{'agent':'ghost'}}", MP_AGENT_NOT_FOUND, "to.agent"},
        {"{'to':{'agents':['x','y']}}", MP_AGENT_NOT_FOUND, "to.agents"},
        {"{'to':{'scope':'nope'}}", MP_SCOPE_NOT_FOUND, "to.scope"},
        {"{'to':{'role':'worker','within':'nope'}}", MP_SCOPE_NOT_FOUND, "to.within"},
        {"{'to':{'participant':'nope'}}", MP_ADDRESS_NOT_FOUND, "to.participant"},
        {"{'to':'C1'}", MP_ADDRESS_AMBIGUOUS, "to"},
        {"{'to':{'scope':'closed'}}", MP_PERMISSION_DENIED, "to.scope"},
        {"{'to':{'system':'local','agent':'ghost'}}", MP_AGENT_NOT_FOUND, "to.agent"},
        {"{}", MP_INVALID_PARAMS, NULL},
        {"{'to':5}", MP_INVALID_PARAMS, NULL},
        {"{'to':{}}", MP_INVALID_PARAMS, NULL},
        {"{'to':{'agents':[]}}", MP_INVALID_PARAMS, NULL},
        {"{'to':{'bogus':1}}", MP_INVALID_PARAMS, NULL},
        {"{'to':{'agent':'C2'},'meta':5}", MP_INVALID_PARAMS, "meta"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].field)
            bh_err_field(H, sS, cases[i].code, cases[i].field, "map/send", "%s", cases[i].params);
        else
            json_decref(bh_err(H, sS, cases[i].code, "map/send", "%s", cases[i].params));
    }
    /* nothing was delivered by any refused send */
    mb_session *conns[] = {sObs, sP, sS, sC1, sC2, sSib, sCl};
    for (size_t c = 0; c < 7; c++)
        assert_int_equal(bh_count(H, conns[c], "map/message"), 0);
    /* a member may send to the members-only scope */
    json_decref(bh_ok(H, sS, "map/scopes/join", "{'scopeId':'closed','agentId':'S'}"));
    json_t *r = bh_ok(H, sS, "map/send", "{'to':{'scope':'closed'}}");
    assert_int_equal(json_array_size(bh_get(r, "delivered")), 0);
    json_decref(r);
}

static void message_events(void **state)
{
    (void)state;
    char sub[64];
    bh_subscribe(H, sObs, "{'eventTypes':['message_sent','message_delivered','message_failed']}", NULL, sub);
    json_t *r = bh_ok(H, sS, "map/send",
                      "{'to':{'agents':['C1','C2','G']},'payload':{'q':1},'meta':{'correlationId':'corr-1','priority':'high'}}");
    const char *mid = bh_str(r, "messageId");
    json_t *evs = bh_event_objs(H, sObs, NULL);
    assert_string_equal(bh_join(evs, "type"), "message_sent,message_delivered,message_delivered,message_delivered");
    json_t *sent = json_array_get(evs, 0);
    assert_string_equal(bh_str(sent, "source"), "S");
    assert_string_equal(bh_str(sent, "data.messageId"), mid);
    assert_string_equal(bh_str(sent, "data.from"), "S");
    assert_string_equal(bh_str(sent, "data.correlationId"), "corr-1");
    assert_string_equal(bh_str(sent, "data.priority"), "high");
    assert_int_equal(bh_int(sent, "data.payload.q"), 1);
    assert_string_equal(bh_str(sent, "data.message.id"), mid);
    assert_string_equal(bh_str(sent, "data.to.agents.0"), "C1");
    for (size_t i = 1; i < 4; i++) {
        json_t *d = json_array_get(evs, i);
        assert_string_equal(bh_str(d, "source"), "S");
        assert_string_equal(bh_str(d, "causedBy.0"), bh_str(sent, "id"));
        assert_string_equal(bh_str(d, "data.messageId"), mid);
        assert_int_equal(json_array_size(bh_get(d, "data.deliveredTo")), 1);
        assert_null(bh_get(d, "data.correlationId")); /* only replies (isResult) carry it (MAP.md 8.5) */
        assert_string_equal(bh_str(d, "data.message.meta.correlationId"), "corr-1");
    }
    assert_string_equal(bh_str(evs, "1.data.deliveredTo.0"), "C1");
    assert_string_equal(bh_str(evs, "2.data.deliveredTo.0"), "C2");
    assert_string_equal(bh_str(evs, "3.data.deliveredTo.0"), "G");
    json_decref(evs);
    json_decref(r);
    /* a reply carries correlationId on message_delivered */
    json_decref(bh_ok(H, sC1, "map/send", "{'to':{'agent':'S'},'meta':{'correlationId':'corr-1','isResult':true}}"));
    evs = bh_event_objs(H, sObs, "message_delivered");
    assert_int_equal(json_array_size(evs), 1);
    assert_string_equal(bh_str(evs, "0.data.correlationId"), "corr-1");
    assert_string_equal(bh_str(evs, "0.source"), "C1");
    json_decref(evs);
}

static void offline_recipients(void **state)
{
    (void)state;
    char sub[64];
    bh_subscribe(H, sObs, "{'eventTypes':['message_sent','message_delivered','message_failed']}", NULL, sub);
    bh_drop(H, sC2); /* C2 and G stay registered, their connection is detached */
    json_t *r = bh_ok(H, sS, "map/send", "{'to':{'agents':['C1','C2']}}");
    assert_string_equal(bh_join(bh_get(r, "delivered"), NULL), "C1");
    json_decref(r);
    json_t *evs = bh_event_objs(H, sObs, NULL);
    assert_string_equal(bh_join(evs, "type"), "message_sent,message_delivered,message_failed");
    assert_string_equal(bh_str(evs, "2.data.recipient"), "C2");
    assert_string_equal(bh_str(evs, "2.data.reason"), "recipient offline");
    assert_int_equal(bh_int(evs, "2.data.code"), MP_DELIVERY_FAILED);
    assert_string_equal(bh_str(evs, "2.causedBy.0"), bh_str(evs, "0.id"));
    assert_string_equal(bh_str(evs, "2.data.messageId"), bh_str(evs, "0.data.messageId"));
    json_decref(evs);
    /* every recipient offline: 2003, retryable */
    json_t *e = bh_err(H, sS, MP_DELIVERY_FAILED, "map/send", "{'to':{'agents':['C2','G']}}");
    assert_true(json_is_true(bh_get(e, "data.retryable")));
    json_decref(e);
    evs = bh_event_objs(H, sObs, "message_failed");
    assert_int_equal(json_array_size(evs), 2);
    json_decref(evs);
}

static void meta_passthrough(void **state)
{
    (void)state;
    json_decref(bh_ok(H, sS, "map/send",
                      "{'to':{'agent':'C1'},'payload':[1,'two',null],'meta':{'protocol':'acp','priority':'urgent','x':{'y':1}}}"));
    json_t *m = bh_messages(H, sC1);
    assert_int_equal(json_array_size(m), 1);
    assert_string_equal(bh_str(m, "0.meta.protocol"), "acp");
    assert_int_equal(bh_int(m, "0.meta.x.y"), 1);
    assert_string_equal(bh_str(m, "0.payload.1"), "two");
    json_decref(m);
    /* no payload: the key is absent */
    json_decref(bh_ok(H, sS, "map/send", "{'to':{'agent':'C1'}}"));
    m = bh_messages(H, sC1);
    assert_null(bh_get(m, "0.payload"));
    assert_null(bh_get(m, "0.meta"));
    json_decref(m);
}

static void inject(void **state)
{
    (void)state;
    json_t *r = bh_ok(H, sCl, "map/inject", "{'agentId':'C1','content':{'text':'hi'},'delivery':'interrupt'}");
    assert_true(json_is_true(bh_get(r, "injected")));
    json_decref(r);
    json_t *m = bh_messages(H, sC1);
    assert_int_equal(json_array_size(m), 1);
    assert_string_equal(bh_str(m, "0.payload.text"), "hi");
    assert_string_equal(bh_str(m, "0.meta.priority"), "urgent");
    json_decref(m);
    bh_err_field(H, sCl, MP_AGENT_NOT_FOUND, "agentId", "map/inject", "{'agentId':'zz','content':1}");
    bh_err_field(H, sCl, MP_INVALID_PARAMS, "content", "map/inject", "{'agentId':'C1'}");
    bh_err_field(H, sCl, MP_INVALID_PARAMS, "delivery", "map/inject", "{'agentId':'C1','content':1,'delivery':'x'}");
}

int main(void)
{
    tu_init();
    const struct CMUnitTest tests[] = {
        TB(address_forms), TB(from_client_identity), TB(routing_errors), TB(message_events),
        TB(offline_recipients), TB(meta_passthrough), TB(inject),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
