/* coordinator - fan work out to spawned workers, each with its own child conversation.
 *
 * The coordinator registers as an agent and opens a `user-session` conversation
 * (mail/create). It spawns two workers with map/agents/spawn, passing
 * metadata.conversationId = the session conversation; the broker's mail layer
 * then gives every spawned worker its own `agent-task` child conversation
 * (reported back in the spawned agent's metadata.conversationId). Each worker is
 * a separate MAP connection in this process that claims its spawned agent id by
 * registering it. The coordinator sends every worker a task with map/send
 * carrying meta.mail (so the task is recorded as a turn in the worker's
 * conversation); the worker answers with a result reply that copies meta.mail
 * (recorded as the worker's turn). The coordinator records a summary turn in the
 * session conversation, stops the workers (map/agents/stop, which the broker
 * records as task.completed), closes the session and prints the conversation
 * tree with every turn. With --once it also checks that tree (two children, a
 * result turn by each worker) and exits 0 only if everything is there; CTest
 * runs it that way against a real broker.
 *
 *   coordinator [--url ws://127.0.0.1:7420] [--token KEY] [--once] [--timeout 20]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mapclient.h"

#define NWORKERS 2
#define T 5000

typedef struct worker {
    char id[128];
    char conv[128];
    mc_client *c;
    int stopped;
    int result;
    int have_result;
} worker;

static worker workers[NWORKERS];

static void worker_on_message(mc_client *c, json_t *msg, void *arg)
{
    worker *w = arg;
    json_t *payload = json_object_get(msg, "payload");
    const char *from = json_string_value(json_object_get(msg, "from"));
    if (from && !strcmp(from, "system")) {
        const char *type = json_string_value(json_object_get(payload, "type"));
        if (type && !strcmp(type, "map/agents/stop"))
            w->stopped = 1;
        return;
    }
    json_int_t n = json_integer_value(json_object_get(payload, "n"));
    json_t *meta = json_object_get(msg, "meta");
    json_t *extra = json_object_get(meta, "mail") ? json_pack("{s:O}", "mail", json_object_get(meta, "mail")) : NULL;
    mp_err e;
    int rc = mc_reply(c, msg, json_pack("{s:s, s:I, s:I}", "worker", w->id, "n", n, "result", n * n), extra, T, NULL,
                      &e);
    if (rc)
        fprintf(stderr, "%s: reply failed: %s (%d)\n", w->id, e.message, rc);
}

static void coord_on_message(mc_client *c, json_t *msg, void *arg)
{
    (void)c;
    (void)arg;
    json_t *meta = json_object_get(msg, "meta");
    if (!json_is_true(json_object_get(meta, "isResult")))
        return;
    json_t *payload = json_object_get(msg, "payload");
    const char *wid = json_string_value(json_object_get(payload, "worker"));
    for (int i = 0; i < NWORKERS; i++)
        if (wid && !strcmp(wid, workers[i].id)) {
            workers[i].result = (int)json_integer_value(json_object_get(payload, "result"));
            workers[i].have_result = 1;
            printf("coordinator: result from %s: %d\n", wid, workers[i].result);
        }
}

static void service_all(mc_client *coord, int ms)
{
    mc_service(coord, ms);
    for (int i = 0; i < NWORKERS; i++)
        if (workers[i].c)
            mc_service(workers[i].c, 0);
}

static int fail(const char *what, int rc, const mp_err *e)
{
    fprintf(stderr, "coordinator: %s failed: %s (%d)\n", what, e->message, rc);
    return rc < 0 ? 3 : 1;
}

/* Print a conversation, its turns and its children; count checks for --once. */
struct tree_stats {
    int convs;
    int worker_results;
};

static void print_tree(mc_client *c, const char *conv_id, int depth, struct tree_stats *st)
{
    mp_err e;
    json_t *res = NULL;
    if (mc_mail_get(c, json_pack("{s:s}", "conversationId", conv_id), T, &res, &e)) {
        printf("%*s%s (mail/get failed: %s)\n", depth * 2, "", conv_id, e.message);
        return;
    }
    json_t *cv = json_object_get(res, "conversation");
    printf("%*s%s [%s, %s] %s\n", depth * 2, "", conv_id, json_string_value(json_object_get(cv, "type")),
           json_string_value(json_object_get(cv, "status")), json_string_value(json_object_get(cv, "subject")) ?: "");
    json_decref(res);
    st->convs++;
    if (!mc_mail_turns_list(c, json_pack("{s:s, s:i}", "conversationId", conv_id, "limit", 1000), T, &res, &e)) {
        json_t *t;
        size_t i;
        json_array_foreach(json_object_get(res, "turns"), i, t)
        {
            json_t *content = json_object_get(t, "content");
            char *txt = json_dumps(content, JSON_COMPACT | JSON_ENCODE_ANY);
            const char *who = json_string_value(json_object_get(t, "participant"));
            printf("%*s- %s (%s): %s\n", depth * 2 + 2, "", who ? who : "?",
                   json_string_value(json_object_get(t, "contentType")), txt ? txt : "");
            free(txt);
            for (int w = 0; w < NWORKERS; w++)
                if (who && !strcmp(who, workers[w].id) && json_object_get(content, "result"))
                    st->worker_results++;
        }
        json_decref(res);
    }
    if (!mc_mail_list(c, json_pack("{s:{s:s}, s:i}", "filter", "parentConversationId", conv_id, "limit", 100), T, &res,
                      &e)) {
        json_t *ch;
        size_t i;
        json_array_foreach(json_object_get(res, "conversations"), i, ch)
            print_tree(c, json_string_value(json_object_get(ch, "id")), depth + 1, st);
        json_decref(res);
    }
}

int main(int argc, char **argv)
{
    const char *url = NULL, *token = NULL;
    int once = 0, timeout_s = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--url") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--token") && i + 1 < argc)
            token = argv[++i];
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--once"))
            once = 1;
        else {
            fprintf(stderr, "usage: coordinator [--url URL] [--token KEY] [--once] [--timeout S]\n");
            return 2;
        }
    }
    char coord_id[96];
    snprintf(coord_id, sizeof coord_id, "coordinator-%ld", (long)getpid());
    mc_options o;
    memset(&o, 0, sizeof o);
    o.url = url;
    o.auth_token = token;
    o.participant_type = MC_PT_AGENT;
    o.agent_id = coord_id;
    o.name = "coordinator";
    o.agent_role = "coordinator";
    o.on_message = coord_on_message;
    mp_err e;
    mc_client *c = mc_client_new(&o, &e);
    if (!c) {
        fprintf(stderr, "coordinator: %s\n", e.message);
        return 2;
    }
    int rc = mc_connect(c, T, &e);
    if (rc) {
        fprintf(stderr, "coordinator: %s\n", e.message);
        mc_client_free(c);
        return 3;
    }
    int exit_code = 0;
    json_t *res = NULL;
    char root[128];

    /* 1. the user-session conversation */
    if ((rc = mc_mail_create(c, json_pack("{s:s, s:s}", "type", "user-session", "subject", "coordinator demo"), T, &res,
                             &e))) {
        exit_code = fail("mail/create", rc, &e);
        goto out;
    }
    snprintf(root, sizeof root, "%s", json_string_value(json_object_get(json_object_get(res, "conversation"), "id")));
    json_decref(res);
    printf("coordinator: session conversation %s\n", root);
    mc_mail_turn(c, json_pack("{s:s, s:s, s:{s:s}}", "conversationId", root, "contentType", "text", "content", "text",
                              "Plan: square 1 and 2 with two workers"),
                 T, NULL, NULL);

    /* 2. spawn the workers; each gets a child conversation */
    for (int i = 0; i < NWORKERS; i++) {
        worker *w = &workers[i];
        snprintf(w->id, sizeof w->id, "%s-worker-%d", coord_id, i + 1);
        char name[32];
        snprintf(name, sizeof name, "worker-%d", i + 1);
        rc = mc_agents_spawn(c,
                             json_pack("{s:s, s:s, s:s, s:s, s:{s:s}}", "agentId", w->id, "name", name, "role", "worker",
                                       "parent", coord_id, "metadata", "conversationId", root),
                             T, &res, &e);
        if (rc) {
            exit_code = fail("map/agents/spawn", rc, &e);
            goto out;
        }
        const char *cid = json_string_value(
            json_object_get(json_object_get(json_object_get(res, "agent"), "metadata"), "conversationId"));
        if (cid && strcmp(cid, root))
            snprintf(w->conv, sizeof w->conv, "%s", cid);
        json_decref(res);
        if (!w->conv[0]) { /* older brokers: look the task conversation up */
            if (!mc_mail_list(c, json_pack("{s:{s:s}}", "filter", "parentConversationId", root), T, &res, &e)) {
                json_t *cv;
                size_t k;
                json_array_foreach(json_object_get(res, "conversations"), k, cv)
                {
                    const char *ta = json_string_value(json_object_get(json_object_get(cv, "metadata"), "taskAgentId"));
                    if (ta && !strcmp(ta, w->id))
                        snprintf(w->conv, sizeof w->conv, "%s", json_string_value(json_object_get(cv, "id")));
                }
                json_decref(res);
            }
        }
        printf("coordinator: spawned %s with conversation %s\n", w->id, w->conv[0] ? w->conv : "(none)");

        /* the worker's own connection claims the spawned agent id */
        mc_options wo;
        memset(&wo, 0, sizeof wo);
        wo.url = url;
        wo.auth_token = token;
        wo.participant_type = MC_PT_AGENT;
        wo.agent_id = w->id;
        wo.name = name;
        wo.agent_role = "worker";
        wo.agent_parent = coord_id;
        wo.on_message = worker_on_message;
        wo.message_arg = w;
        w->c = mc_client_new(&wo, &e);
        if (!w->c || (rc = mc_connect(w->c, T, &e))) {
            exit_code = fail("worker connect", w->c ? rc : MC_ERR_USAGE, &e);
            goto out;
        }
    }

    /* 3. hand out the tasks (recorded as turns in each worker's conversation) */
    for (int i = 0; i < NWORKERS; i++) {
        worker *w = &workers[i];
        char corr[64];
        snprintf(corr, sizeof corr, "task-%d", i + 1);
        json_t *meta = json_pack("{s:s, s:b}", "correlationId", corr, "expectsResponse", 1);
        if (w->conv[0])
            json_object_set_new(meta, "mail", json_pack("{s:s}", "conversationId", w->conv));
        if ((rc = mc_send_to_agent(c, w->id, json_pack("{s:s, s:i}", "task", "square", "n", i + 1), meta, T, NULL,
                                   &e))) {
            exit_code = fail("map/send", rc, &e);
            goto out;
        }
    }

    /* 4. collect the results */
    time_t deadline = time(NULL) + timeout_s;
    for (;;) {
        int done = 1;
        for (int i = 0; i < NWORKERS; i++)
            done &= workers[i].have_result;
        if (done)
            break;
        if (time(NULL) > deadline) {
            fprintf(stderr, "coordinator: results missing after %d s\n", timeout_s);
            exit_code = 1;
            goto out;
        }
        service_all(c, 50);
    }
    char summary[512];
    snprintf(summary, sizeof summary, "Results: %s=%d, %s=%d", workers[0].id, workers[0].result, workers[1].id,
             workers[1].result);
    mc_mail_turn(c, json_pack("{s:s, s:s, s:{s:s}}", "conversationId", root, "contentType", "text", "content", "text",
                              summary),
                 T, NULL, NULL);

    /* 5. stop the workers; they see the stop as a system message */
    for (int i = 0; i < NWORKERS; i++)
        if ((rc = mc_agents_stop(c, workers[i].id, "complete", 0, T, NULL, &e)))
            fprintf(stderr, "coordinator: map/agents/stop %s: %s (%d)\n", workers[i].id, e.message, rc);
    deadline = time(NULL) + 5;
    while (time(NULL) <= deadline && !(workers[0].stopped && workers[1].stopped))
        service_all(c, 50);
    for (int i = 0; i < NWORKERS; i++)
        printf("coordinator: %s %s\n", workers[i].id, workers[i].stopped ? "stopped" : "did not see the stop");
    if ((rc = mc_mail_close(c, json_pack("{s:s, s:s}", "conversationId", root, "reason", "done"), T, NULL, &e)))
        fprintf(stderr, "coordinator: mail/close: %s (%d)\n", e.message, rc);

    /* 6. the tree */
    printf("\nconversation tree:\n");
    struct tree_stats st = {0, 0};
    print_tree(c, root, 1, &st);
    if (once) {
        if (st.convs != 1 + NWORKERS) {
            fprintf(stderr, "coordinator: expected %d conversations in the tree, found %d\n", 1 + NWORKERS, st.convs);
            exit_code = 1;
        }
        if (st.worker_results != NWORKERS) {
            fprintf(stderr, "coordinator: expected %d worker result turns, found %d\n", NWORKERS, st.worker_results);
            exit_code = 1;
        }
        if (!workers[0].stopped || !workers[1].stopped) {
            fprintf(stderr, "coordinator: a worker never received its stop\n");
            exit_code = 1;
        }
    }
out:
    for (int i = 0; i < NWORKERS; i++)
        if (workers[i].c) {
            mc_close(workers[i].c, 1000);
            mc_client_free(workers[i].c);
        }
    mc_close(c, 2000);
    mc_client_free(c);
    return exit_code;
}
