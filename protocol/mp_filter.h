/* mp_filter.h - MAP subscription filters (MAP.md 9.4, 10.8), compiled once, matched per event.
 *
 * Semantics: every present field must match (AND); within an array any entry
 * may match (OR); absent or empty arrays match everything. `match:"any"` turns
 * the top-level AND into OR; `$and` / `$or` nest sub-filters. Event type names
 * are compared after mapping '_' to '.', and "prefix.*" is a prefix wildcard.
 */
#ifndef MP_FILTER_H
#define MP_FILTER_H

#include <jansson.h>

#include "mp_err.h"

typedef struct mp_filter mp_filter;

/* What the matcher may ask the registry. Any callback may be NULL. */
typedef struct mp_filter_env {
    const char *(*agent_role)(void *arg, const char *agent_id);      /* NULL if unknown */
    json_t *(*agent_environment)(void *arg, const char *agent_id);   /* borrowed or NULL */
    void *arg;
} mp_filter_env;

typedef struct mp_event_view {
    const char *type;
    const char *source; /* may be NULL */
    json_t *data;       /* borrowed, may be NULL */
} mp_event_view;

/* Compile `filter` (borrowed; NULL or {} = everything). *out owns a reference to it.
 * Returns 0 or MP_INVALID_PARAMS naming the offending key ("filter.eventTypes", ...). */
int mp_filter_compile(json_t *filter, mp_filter **out, mp_err *e);
void mp_filter_free(mp_filter *f);

/* 1 if the event matches. */
int mp_filter_match(const mp_filter *f, const mp_event_view *ev, const mp_filter_env *env);

/* The filter's mail.conversationId, if it pins one (lets the broker index subscriptions). */
const char *mp_filter_conversation(const mp_filter *f);

/* Compare event type names leniently ('_' == '.', trailing ".*" wildcard). */
int mp_event_type_match(const char *pattern, const char *type);

#endif
