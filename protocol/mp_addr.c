#include "mp_addr.h"

#include <stdio.h>
#include <string.h>

#include "mp_json.h"

/* Key present with a non-null value: absent and null are alike (MAP.md 1.1), so
 * {"agent":null,"scope":"s"} is a scope address. */
static json_t *mp__has(json_t *to, const char *key)
{
    json_t *v = json_object_get(to, key);
    return json_is_null(v) ? NULL : v;
}

static int mp__str_field(json_t *to, const char *key, const char **out, mp_err *e)
{
    json_t *v = json_object_get(to, key);
    if (!json_is_string(v) || json_string_length(v) == 0) {
        char f[64];
        snprintf(f, sizeof f, "to.%s", key);
        return mp_err_set(e, MP_INVALID_PARAMS, f, "Address field to.%s must be a non-empty string", key);
    }
    *out = json_string_value(v);
    return 0;
}

static int mp__true_field(json_t *to, const char *key, mp_err *e)
{
    json_t *v = json_object_get(to, key);
    if (!json_is_true(v)) {
        char f[64];
        snprintf(f, sizeof f, "to.%s", key);
        return mp_err_set(e, MP_INVALID_PARAMS, f, "Address field to.%s must be true", key);
    }
    return 0;
}

static int mp__depth(json_t *to, mp_addr *out, mp_err *e)
{
    json_t *d = json_object_get(to, "depth");
    out->depth = 0;
    if (!d || json_is_null(d))
        return 0;
    if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > 1000)
        return mp_err_set(e, MP_INVALID_PARAMS, "to.depth", "Address field to.depth must be an integer from 1 to 1000");
    out->depth = (int)json_integer_value(d);
    return 0;
}

int mp_addr_parse(json_t *to, mp_addr *out, mp_err *e)
{
    memset(out, 0, sizeof *out);
    if (!to || json_is_null(to))
        return mp_err_set(e, MP_INVALID_PARAMS, "to", "Missing required parameter: to");
    if (json_is_string(to)) {
        if (json_string_length(to) == 0)
            return mp_err_set(e, MP_INVALID_PARAMS, "to", "Address must not be an empty string");
        out->kind = MP_ADDR_BARE;
        out->id = json_string_value(to);
        return 0;
    }
    if (!json_is_object(to))
        return mp_err_set(e, MP_INVALID_PARAMS, "to", "Address must be a string or an object");

    json_t *sys = mp__has(to, "system");
    if (json_is_string(sys) && mp__has(to, "agent")) {
        out->kind = MP_ADDR_FEDERATED;
        out->system = json_string_value(sys);
        if (!*out->system)
            return mp_err_set(e, MP_INVALID_PARAMS, "to.system", "Address field to.system must be a non-empty string");
        return mp__str_field(to, "agent", &out->id, e);
    }
    if (mp__has(to, "agent")) {
        out->kind = MP_ADDR_AGENT;
        return mp__str_field(to, "agent", &out->id, e);
    }
    if (mp__has(to, "agents")) {
        json_t *l = json_object_get(to, "agents");
        if (!json_is_array(l) || json_array_size(l) == 0)
            return mp_err_set(e, MP_INVALID_PARAMS, "to.agents", "Address field to.agents must be a non-empty array of strings");
        size_t i;
        json_t *x;
        json_array_foreach(l, i, x) if (!json_is_string(x)) return mp_err_set(
            e, MP_INVALID_PARAMS, "to.agents", "Address field to.agents must be a non-empty array of strings");
        out->kind = MP_ADDR_AGENTS;
        out->list = l;
        return 0;
    }
    if (mp__has(to, "scope")) {
        out->kind = MP_ADDR_SCOPE;
        return mp__str_field(to, "scope", &out->id, e);
    }
    if (mp__has(to, "role")) {
        out->kind = MP_ADDR_ROLE;
        int rc = mp__str_field(to, "role", &out->id, e);
        if (rc)
            return rc;
        json_t *w = json_object_get(to, "within");
        if (w && !json_is_null(w))
            return mp__str_field(to, "within", &out->within, e);
        return 0;
    }
    if (mp__has(to, "broadcast")) {
        out->kind = MP_ADDR_BROADCAST;
        return mp__true_field(to, "broadcast", e);
    }
    if (sys) {
        out->kind = MP_ADDR_SYSTEM;
        return mp__true_field(to, "system", e);
    }
    if (mp__has(to, "participant")) {
        out->kind = MP_ADDR_PARTICIPANT;
        return mp__str_field(to, "participant", &out->id, e);
    }
    if (mp__has(to, "participants")) {
        const char *w = json_string_value(json_object_get(to, "participants"));
        if (!w || (strcmp(w, "all") && strcmp(w, "agents") && strcmp(w, "clients")))
            return mp_err_set(e, MP_INVALID_PARAMS, "to.participants",
                              "Address field to.participants must be \"all\", \"agents\" or \"clients\"");
        out->kind = MP_ADDR_PARTICIPANTS;
        out->which = w;
        return 0;
    }
    static const struct {
        const char *key;
        enum mp_addr_kind kind;
    } hier[] = {{"parent", MP_ADDR_PARENT},
                {"children", MP_ADDR_CHILDREN},
                {"siblings", MP_ADDR_SIBLINGS},
                {"ancestors", MP_ADDR_ANCESTORS},
                {"descendants", MP_ADDR_DESCENDANTS}};
    for (size_t i = 0; i < sizeof hier / sizeof hier[0]; i++) {
        if (mp__has(to, hier[i].key)) {
            out->kind = hier[i].kind;
            int rc = mp__true_field(to, hier[i].key, e);
            return rc ? rc : mp__depth(to, out, e);
        }
    }
    return mp_err_set(e, MP_INVALID_PARAMS, "to",
                      "Unknown address form: expected one of agent, agents, scope, role, parent, children, siblings, "
                      "ancestors, descendants, broadcast, system, participant, participants");
}

const char *mp_addr_kind_name(enum mp_addr_kind k)
{
    switch (k) {
    case MP_ADDR_BARE: return "bare";
    case MP_ADDR_AGENT: return "agent";
    case MP_ADDR_AGENTS: return "agents";
    case MP_ADDR_SCOPE: return "scope";
    case MP_ADDR_ROLE: return "role";
    case MP_ADDR_PARENT: return "parent";
    case MP_ADDR_CHILDREN: return "children";
    case MP_ADDR_SIBLINGS: return "siblings";
    case MP_ADDR_ANCESTORS: return "ancestors";
    case MP_ADDR_DESCENDANTS: return "descendants";
    case MP_ADDR_BROADCAST: return "broadcast";
    case MP_ADDR_SYSTEM: return "system";
    case MP_ADDR_PARTICIPANT: return "participant";
    case MP_ADDR_PARTICIPANTS: return "participants";
    case MP_ADDR_FEDERATED: return "federated";
    }
    return "?";
}
