/* observer - print the turns of one MAP mail conversation as they arrive.
 *
 * Subscribes with the mail filter {mail:{conversationId}} first, then prints the
 * history (mail/turns/list, all pages), then every new turn as its
 * mail.turn.added event arrives; a turn is printed only if its id sorts after
 * the last printed one, so history and live events never print twice, and
 * libmapclient's reconnect catch-up fills any gap after a broker restart.
 * Without --conversation it creates a scratch conversation to watch. With --once
 * it posts one turn into the conversation from a second connection (mail/join +
 * mail/turn) and exits 0 as soon as the observer has printed that turn (exit 1
 * if it did not arrive within --timeout seconds); CTest runs it that way.
 *
 *   observer [--url ws://127.0.0.1:7420] [--token KEY] [--conversation ID] [--once] [--timeout 20]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mapclient.h"

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static char last_turn[256];
static char want_turn[256];
static int seen_wanted;

static void print_turn(json_t *t)
{
    const char *id = json_string_value(json_object_get(t, "id"));
    if (!id || (last_turn[0] && strcmp(id, last_turn) <= 0))
        return;
    snprintf(last_turn, sizeof last_turn, "%s", id);
    json_t *content = json_object_get(t, "content");
    const char *text = json_string_value(json_object_get(content, "text"));
    char *dump = text ? NULL : json_dumps(content, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("[%s] %s (%s): %s\n", id, json_string_value(json_object_get(t, "participant")),
           json_string_value(json_object_get(t, "contentType")), text ? text : dump ? dump : "");
    free(dump);
    fflush(stdout);
    if (want_turn[0] && !strcmp(id, want_turn))
        seen_wanted = 1;
}

static void on_event(mc_client *c, mc_sub *sub, const mc_event *ev, void *arg)
{
    (void)c;
    (void)sub;
    (void)arg;
    const char *type = json_string_value(json_object_get(ev->event, "type"));
    if (type && !strcmp(type, "mail.turn.added"))
        print_turn(json_object_get(json_object_get(ev->event, "data"), "turn"));
    else if (type && !strcmp(type, "mail.closed"))
        printf("-- conversation closed\n");
}

static int print_history(mc_client *c, const char *conv)
{
    char cursor[256] = "";
    for (;;) {
        json_t *p = json_pack("{s:s, s:i}", "conversationId", conv, "limit", 100);
        if (cursor[0])
            json_object_set_new(p, "filter", json_pack("{s:s}", "afterTurnId", cursor));
        json_t *res;
        mp_err e;
        int rc = mc_mail_turns_list(c, p, 10000, &res, &e);
        if (rc) {
            fprintf(stderr, "observer: mail/turns/list: %s (%d)\n", e.message, rc);
            return rc;
        }
        json_t *turns = json_object_get(res, "turns"), *t;
        size_t i;
        json_array_foreach(turns, i, t) print_turn(t);
        int more = json_is_true(json_object_get(res, "hasMore")) && json_array_size(turns);
        if (more)
            snprintf(cursor, sizeof cursor, "%s",
                     json_string_value(json_object_get(json_array_get(turns, json_array_size(turns) - 1), "id")));
        json_decref(res);
        if (!more)
            return 0;
    }
}

/* --once: a second participant joins and posts one turn. */
static int post_probe(const mc_options *base, const char *conv)
{
    mc_options o = *base;
    o.name = "observer-probe";
    o.on_event = NULL;
    mp_err e;
    mc_client *p = mc_client_new(&o, &e);
    if (!p || mc_connect(p, 5000, &e)) {
        fprintf(stderr, "observer: probe connect: %s\n", e.message);
        mc_client_free(p);
        return 3;
    }
    int rc = mc_mail_join(p, json_pack("{s:s}", "conversationId", conv), 5000, NULL, &e);
    json_t *res = NULL;
    if (!rc)
        rc = mc_mail_turn(p, json_pack("{s:s, s:s, s:{s:s}}", "conversationId", conv, "contentType", "text", "content",
                                       "text", "hello from the probe"),
                          5000, &res, &e);
    if (rc)
        fprintf(stderr, "observer: probe turn: %s (%d)\n", e.message, rc);
    else
        snprintf(want_turn, sizeof want_turn, "%s",
                 json_string_value(json_object_get(json_object_get(res, "turn"), "id")));
    json_decref(res);
    mc_close(p, 2000);
    mc_client_free(p);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    mc_options o;
    memset(&o, 0, sizeof o);
    o.name = "observer";
    const char *conv = NULL;
    int once = 0, timeout_s = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--url") && i + 1 < argc)
            o.url = argv[++i];
        else if (!strcmp(argv[i], "--token") && i + 1 < argc)
            o.auth_token = argv[++i];
        else if (!strcmp(argv[i], "--conversation") && i + 1 < argc)
            conv = argv[++i];
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--once"))
            once = 1;
        else {
            fprintf(stderr, "usage: observer [--url URL] [--token KEY] [--conversation ID] [--once] [--timeout S]\n");
            return 2;
        }
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    mp_err e;
    mc_client *c = mc_client_new(&o, &e);
    if (!c) {
        fprintf(stderr, "observer: %s\n", e.message);
        return 2;
    }
    if (mc_connect(c, 5000, &e)) {
        fprintf(stderr, "observer: %s\n", e.message);
        mc_client_free(c);
        return 3;
    }
    int rc = 0;
    char convbuf[256];
    if (!conv) {
        json_t *res;
        rc = mc_mail_create(c, json_pack("{s:s, s:s}", "type", "multi-agent", "subject", "observer demo"), 5000, &res,
                            &e);
        if (rc) {
            fprintf(stderr, "observer: mail/create: %s (%d)\n", e.message, rc);
            goto out;
        }
        snprintf(convbuf, sizeof convbuf, "%s",
                 json_string_value(json_object_get(json_object_get(res, "conversation"), "id")));
        json_decref(res);
        conv = convbuf;
    }
    printf("observer: watching %s\n", conv);
    if ((rc = mc_subscribe(c, json_pack("{s:{s:s}}", "mail", "conversationId", conv), on_event, NULL, 5000, NULL,
                           &e))) {
        fprintf(stderr, "observer: map/subscribe: %s (%d)\n", e.message, rc);
        goto out;
    }
    if ((rc = print_history(c, conv)))
        goto out;
    if (once && (rc = post_probe(&o, conv)))
        goto out;
    time_t deadline = time(NULL) + timeout_s;
    while (!stop_flag && !(once && seen_wanted)) {
        if (mc_service(c, 200) == MC_ERR_CLOSED) {
            rc = 3;
            break;
        }
        if (once && time(NULL) > deadline) {
            fprintf(stderr, "observer: the probe turn did not arrive within %d s\n", timeout_s);
            rc = 1;
            break;
        }
    }
out:
    mc_close(c, 2000);
    mc_client_free(c);
    return rc > 0 && rc < 4 ? rc : rc ? 1 : 0;
}
