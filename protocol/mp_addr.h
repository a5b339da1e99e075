/* mp_addr.h - MAP address forms (MAP.md 8.3), parsed but not resolved.
 * Resolution needs the registry and lives in broker/router.c. */
#ifndef MP_ADDR_H
#define MP_ADDR_H

#include <jansson.h>

#include "mp_err.h"

enum mp_addr_kind {
    MP_ADDR_BARE = 1,     /* "agent-7": agent, else participant, else scope */
    MP_ADDR_AGENT,        /* {agent} */
    MP_ADDR_AGENTS,       /* {agents:[...]} */
    MP_ADDR_SCOPE,        /* {scope} */
    MP_ADDR_ROLE,         /* {role, within?} */
    MP_ADDR_PARENT,       /* {parent:true} */
    MP_ADDR_CHILDREN,     /* {children:true, depth?} */
    MP_ADDR_SIBLINGS,     /* {siblings:true} */
    MP_ADDR_ANCESTORS,    /* {ancestors:true, depth?} */
    MP_ADDR_DESCENDANTS,  /* {descendants:true, depth?} */
    MP_ADDR_BROADCAST,    /* {broadcast:true} */
    MP_ADDR_SYSTEM,       /* {system:true} */
    MP_ADDR_PARTICIPANT,  /* {participant} */
    MP_ADDR_PARTICIPANTS, /* {participants:"all"|"agents"|"clients"} */
    MP_ADDR_FEDERATED,    /* {system:"beta", agent:"x"} */
};

typedef struct mp_addr {
    enum mp_addr_kind kind;
    const char *id;     /* agent / scope / role / participant id, or the bare string (borrowed) */
    json_t *list;       /* MP_ADDR_AGENTS: array of strings (borrowed) */
    const char *within; /* MP_ADDR_ROLE: optional scope id */
    const char *system; /* MP_ADDR_FEDERATED: target system id */
    const char *which;  /* MP_ADDR_PARTICIPANTS: "all" | "agents" | "clients" */
    int depth;          /* hierarchical forms: levels, 0 = unlimited */
} mp_addr;

/* Parse `to` (borrowed; the result borrows from it). Returns 0 or MP_INVALID_PARAMS
 * with e->field naming the part of `to` at fault. Key order per MAP.md 8.3. */
int mp_addr_parse(json_t *to, mp_addr *out, mp_err *e);

const char *mp_addr_kind_name(enum mp_addr_kind k);

#endif
