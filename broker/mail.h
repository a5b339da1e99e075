/* mail.h - MAP mail: conversations, participants, threads, turns (mail.c).
 *
 * Conversations, participants and threads live in memory (reloaded from the
 * store at start-up) and are written through on every change; turns live in
 * the store only, each with its per-conversation seq, written in the same
 * group-commit transaction that releases the reply and the events. */
#ifndef MB_MAIL_H
#define MB_MAIL_H

#include "mb.h"

typedef struct mb_conv mb_conv;

typedef struct mb_part {
    char *id;
    json_t *doc;     /* ConversationParticipant */
    int left;
} mb_part;

typedef struct mb_thread {
    char *id;
    json_t *doc;     /* Thread */
    int depth;       /* 1 = top-level */
    char *parent;
} mb_thread;

struct mb_conv {
    char *id;
    json_t *doc;          /* Conversation */
    mb_map *parts;        /* participant id -> mb_part* */
    mb_map *threads;      /* thread id -> mb_thread* */
    mb_map *children;     /* child conversation id -> mb_conv* */
    uint64_t last_seq;    /* seq of the newest turn */
    char *parent;
    char *task_agent;     /* agent whose task conversation this is, or NULL */
};

struct mb_mail {
    mb_map *convs;        /* id -> mb_conv* (creation order) */
    json_t *turn_source;  /* {type:"explicit", method:"mail/turn"}, shared by those turns (never modified) */
};

mb_conv *mb_conv_get(mb_broker *b, const char *id);
/* Is the conversation open for new turns? */
int mb_conv_active(const mb_conv *c);
/* May the session read this conversation (participant, scoped token or operator)? */
int mb_mail_may_read(mb_session *s, mb_conv *c);
/* Scan turns of c in seq order starting after after_seq; cb gets the Turn JSON text. */
int mb_mail_scan_turns(mb_broker *b, mb_conv *c, uint64_t after_seq, size_t limit, mst_turn_cb cb, void *arg);

/* One page of turns for the REST API, each with its "seq"; visibility and
 * history rules of the reader apply. after_seq: exclusive cursor (upper bound when desc). */
json_t *mb_mail_turn_page(mb_broker *b, mb_session *s, mb_conv *c, uint64_t after_seq, size_t limit, int desc,
                          int *more);
json_t *mb_mail_tree_json(mb_broker *b, const char *conv_id);
/* May session s see a mail.turn.* event of conv_id (data = the event data)? */
int mb_mail_event_visible(mb_broker *b, mb_session *s, const char *conv_id, json_t *data);

#endif
