#include "mp_filter.h"

#include <stdlib.h>
#include <string.h>

#include "mp_json.h"

struct mp_filter {
    json_t *src;            /* owned reference to the filter object (or NULL) */
    json_t *event_types, *from_agents, *agents, *from_roles, *roles, *scopes, *priorities, *correlation_ids;
    json_t *metadata_match, *environment_match, *mail, *trajectory;
    int match_any;
    mp_filter **and_list, **or_list;
    size_t n_and, n_or;
};

int mp_event_type_match(const char *pat, const char *type)
{
    for (;; pat++, type++) {
        char a = *pat == '_' ? '.' : *pat, b = *type == '_' ? '.' : *type;
        if (a == '*' && pat[1] == '\0')
            return 1;
        if (a == '\0' || b == '\0')
            return a == b;
        if (a != b)
            return 0;
    }
}

static int mp__compile_list(json_t *filter, const char *prefix, const char *key, mp_filter ***out, size_t *n,
                            mp_err *e);

/* Compile one (sub-)filter. `prefix` names it in error fields: "filter" at the top,
 * "filter.$or[1]" for a nested one, so e->field is always "filter...." . */
static int mp__compile(json_t *filter, const char *prefix, mp_filter **out, mp_err *e)
{
    *out = NULL;
    if (filter && json_is_null(filter))
        filter = NULL;
    if (filter && !json_is_object(filter))
        return mp_err_set(e, MP_INVALID_PARAMS, prefix, "Parameter %s must be an object", prefix);
    mp_filter *f = calloc(1, sizeof *f);
    if (!f)
        return mp_err_set(e, MP_INTERNAL, NULL, "out of memory");
    f->src = json_incref(filter);
    int rc = 0;
    struct {
        const char *key;
        json_t **dst;
    } arrs[] = {{"eventTypes", &f->event_types}, {"fromAgents", &f->from_agents}, {"agents", &f->agents},
                {"fromRoles", &f->from_roles},   {"roles", &f->roles},            {"scopes", &f->scopes},
                {"priorities", &f->priorities},  {"correlationIds", &f->correlation_ids}};
    char path[128];
    for (size_t i = 0; filter && i < sizeof arrs / sizeof arrs[0] && !rc; i++) {
        snprintf(path, sizeof path, "%s.%s", prefix, arrs[i].key);
        rc = mp_get_str_arr_p(filter, arrs[i].key, path, arrs[i].dst, e);
        if (*arrs[i].dst && json_array_size(*arrs[i].dst) == 0)
            *arrs[i].dst = NULL; /* empty array = no constraint */
    }
    struct {
        const char *key;
        json_t **dst;
    } objs[] = {{"metadataMatch", &f->metadata_match},
                {"environmentMatch", &f->environment_match},
                {"mail", &f->mail},
                {"trajectory", &f->trajectory}};
    for (size_t i = 0; filter && i < sizeof objs / sizeof objs[0] && !rc; i++) {
        json_t *v = json_object_get(filter, objs[i].key);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_object(v)) {
            snprintf(path, sizeof path, "%s.%s", prefix, objs[i].key);
            rc = mp_err_set(e, MP_INVALID_PARAMS, path, "Parameter %s must be an object", path);
            break;
        }
        *objs[i].dst = v;
    }
    if (!rc && f->mail) {
        static const char *mk[] = {"conversationId", "threadId", "participantId", "contentType", "handoffTarget"};
        for (size_t i = 0; i < sizeof mk / sizeof mk[0] && !rc; i++) {
            json_t *v = json_object_get(f->mail, mk[i]);
            if (v && !json_is_null(v) && !json_is_string(v)) {
                snprintf(path, sizeof path, "%s.mail.%s", prefix, mk[i]);
                rc = mp_err_set(e, MP_INVALID_PARAMS, path, "Parameter %s must be a string", path);
            }
        }
    }
    if (!rc && filter) {
        json_t *m = json_object_get(filter, "match");
        if (m && !json_is_null(m)) {
            const char *ms = json_string_value(m);
            if (!ms || (strcmp(ms, "all") && strcmp(ms, "any"))) {
                snprintf(path, sizeof path, "%s.match", prefix);
                rc = mp_err_set(e, MP_INVALID_PARAMS, path, "Parameter %s must be \"all\" or \"any\"", path);
            } else {
                f->match_any = !strcmp(ms, "any");
            }
        }
    }
    if (!rc && filter)
        rc = mp__compile_list(filter, prefix, "$and", &f->and_list, &f->n_and, e);
    if (!rc && filter)
        rc = mp__compile_list(filter, prefix, "$or", &f->or_list, &f->n_or, e);
    if (rc) {
        mp_filter_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

int mp_filter_compile(json_t *filter, mp_filter **out, mp_err *e)
{
    return mp__compile(filter, "filter", out, e);
}

static int mp__compile_list(json_t *filter, const char *prefix, const char *key, mp_filter ***out, size_t *n,
                            mp_err *e)
{
    char path[128];
    json_t *l = json_object_get(filter, key);
    if (!l || json_is_null(l))
        return 0;
    snprintf(path, sizeof path, "%s.%s", prefix, key);
    if (!json_is_array(l) || json_array_size(l) > 32)
        return mp_err_set(e, MP_INVALID_PARAMS, path, "Parameter %s must be an array of at most 32 filters", path);
    *out = calloc(json_array_size(l) + 1, sizeof **out);
    if (!*out)
        return mp_err_set(e, MP_INTERNAL, NULL, "out of memory");
    size_t i;
    json_t *x;
    json_array_foreach(l, i, x)
    {
        char sub[160]; /* path (<128) + "[" index "]" */
        snprintf(sub, sizeof sub, "%s[%zu]", path, i);
        int rc = mp__compile(x, sub, &(*out)[i], e);
        if (rc)
            return rc;
        (*n)++;
    }
    return 0;
}

void mp_filter_free(mp_filter *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_and; i++)
        mp_filter_free(f->and_list[i]);
    for (size_t i = 0; i < f->n_or; i++)
        mp_filter_free(f->or_list[i]);
    free(f->and_list);
    free(f->or_list);
    json_decref(f->src);
    free(f);
}

const char *mp_filter_conversation(const mp_filter *f)
{
    return f && f->mail && !f->match_any && !f->n_or ? json_string_value(json_object_get(f->mail, "conversationId"))
                                                     : NULL;
}

#define mp__in mp_glob_list_match

static json_t *mp__path(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    return b ? json_object_get(v, b) : v;
}

static const char *mp__str(json_t *o, const char *a, const char *b)
{
    return json_string_value(mp__path(o, a, b));
}

static int mp__is_message_event(const char *type)
{
    return !strncmp(type, "message_", 8) || !strncmp(type, "message.", 8);
}

/* Dot-path lookup ("os.type") into an object. */
static json_t *mp__dot(json_t *o, const char *path)
{
    char key[128];
    while (o && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof key)
            return NULL;
        memcpy(key, path, n);
        key[n] = '\0';
        o = json_object_get(o, key);
        path = dot ? dot + 1 : path + n;
    }
    return o;
}

static int mp__mail_match(json_t *mail, const mp_event_view *ev)
{
    if (strncmp(ev->type, "mail.", 5) != 0)
        return 0;
    json_t *d = ev->data;
    const char *want;
    if ((want = json_string_value(json_object_get(mail, "conversationId")))) {
        const char *got = mp__str(d, "conversationId", NULL);
        if (!got || strcmp(got, want))
            return 0;
    }
    if ((want = json_string_value(json_object_get(mail, "threadId")))) {
        const char *got = mp__str(d, "turn", "threadId");
        if (!got)
            got = mp__str(d, "thread", "id");
        if (!got)
            got = mp__str(d, "threadId", NULL);
        if (!got || strcmp(got, want))
            return 0;
    }
    if ((want = json_string_value(json_object_get(mail, "participantId")))) {
        const char *got = mp__str(d, "participant", "id");
        if (!got)
            got = mp__str(d, "participantId", NULL);
        if (!got)
            got = mp__str(d, "createdBy", NULL);
        if (!got)
            got = mp__str(d, "closedBy", NULL);
        if (!got)
            got = mp__str(d, "turn", "participant");
        if (!got || strcmp(got, want))
            return 0;
    }
    if ((want = json_string_value(json_object_get(mail, "contentType")))) {
        const char *got = mp__str(d, "turn", "contentType");
        if (!got || strcmp(got, want))
            return 0;
    }
    if ((want = json_string_value(json_object_get(mail, "handoffTarget")))) {
        const char *got = json_string_value(json_object_get(mp__path(d, "turn", "metadata"), "handoff_target"));
        if (!got || strcmp(got, want))
            return 0;
    }
    return 1;
}

/* Evaluate each present criterion; returns number present in *n and number matched. */
static int mp__match_fields(const mp_filter *f, const mp_event_view *ev, const mp_filter_env *env, int *present)
{
    int n = 0, ok = 0;
    json_t *d = ev->data;
#define MP_CRIT(cond, expr)                                                                                            \
    if (cond) {                                                                                                        \
        n++;                                                                                                           \
        if (expr)                                                                                                      \
            ok++;                                                                                                      \
        else if (!f->match_any)                                                                                        \
            goto done;                                                                                                 \
    }
    MP_CRIT(f->event_types, ({
                int m = 0;
                size_t i;
                json_t *x;
                json_array_foreach(f->event_types, i, x) if (mp_event_type_match(json_string_value(x), ev->type))
                {
                    m = 1;
                    break;
                }
                m;
            }))
    MP_CRIT(f->from_agents, mp__in(f->from_agents, ev->source))
    MP_CRIT(f->agents, mp__in(f->agents, ev->source))
    MP_CRIT(f->from_roles, (env && env->agent_role && ev->source &&
                            mp__in(f->from_roles, env->agent_role(env->arg, ev->source))))
    MP_CRIT(f->roles, ({
                const char *who = mp__str(d, "agentId", NULL);
                if (!who)
                    who = ev->source;
                env && env->agent_role && who && mp__in(f->roles, env->agent_role(env->arg, who));
            }))
    MP_CRIT(f->scopes, ({
                const char *sc = mp__str(d, "scopeId", NULL);
                if (!sc)
                    sc = mp__str(d, "to", "scope");
                if (!sc)
                    sc = json_string_value(json_object_get(mp__path(d, "message", "to"), "scope"));
                mp__in(f->scopes, sc);
            }))
    MP_CRIT(f->priorities, ({
                int m = 0;
                if (mp__is_message_event(ev->type)) {
                    const char *p = json_string_value(json_object_get(mp__path(d, "message", "meta"), "priority"));
                    if (!p)
                        p = mp__str(d, "priority", NULL); /* message_sent also carries data.priority (8.5) */
                    m = mp__in(f->priorities, p ? p : "normal");
                }
                m;
            }))
    MP_CRIT(f->correlation_ids, mp__in(f->correlation_ids, mp__str(d, "correlationId", NULL)) ||
                                    mp__in(f->correlation_ids, json_string_value(json_object_get(
                                                                   mp__path(d, "message", "meta"), "correlationId"))))
    MP_CRIT(f->metadata_match && json_object_size(f->metadata_match), ({
                int m = 1;
                const char *k;
                json_t *v;
                json_t *md = json_object_get(d, "metadata");
                json_object_foreach(f->metadata_match, k, v) if (!json_equal(json_object_get(md, k), v))
                {
                    m = 0;
                    break;
                }
                m;
            }))
    MP_CRIT(f->environment_match && json_object_size(f->environment_match), ({
                int m = 0;
                json_t *envj = (env && env->agent_environment && ev->source)
                                   ? env->agent_environment(env->arg, ev->source)
                                   : NULL;
                if (envj) {
                    m = 1;
                    const char *k;
                    json_t *v;
                    json_object_foreach(f->environment_match, k, v) if (!json_equal(mp__dot(envj, k), v))
                    {
                        m = 0;
                        break;
                    }
                }
                m;
            }))
    MP_CRIT(f->mail, mp__mail_match(f->mail, ev))
    MP_CRIT(f->trajectory, !strncmp(ev->type, "trajectory", 10))
#undef MP_CRIT
done:
    *present = n;
    return ok;
}

int mp_filter_match(const mp_filter *f, const mp_event_view *ev, const mp_filter_env *env)
{
    if (!f)
        return 1;
    mp_event_view v = *ev;
    if (!v.type)
        v.type = ""; /* the matchers compare prefixes of the type */
    ev = &v;
    int present = 0;
    int ok = mp__match_fields(f, ev, env, &present);
    int fields_ok = f->match_any ? (present == 0 || ok > 0) : ok == present;
    if (!fields_ok)
        return 0;
    for (size_t i = 0; i < f->n_and; i++)
        if (!mp_filter_match(f->and_list[i], ev, env))
            return 0;
    if (f->n_or) {
        for (size_t i = 0; i < f->n_or; i++)
            if (mp_filter_match(f->or_list[i], ev, env))
                return 1;
        return 0;
    }
    return 1;
}
