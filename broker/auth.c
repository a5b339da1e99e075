/* Authentication: API keys from a tokens file, anonymous development mode.
 *
 * Tokens file, one key per line ('#' comments):
 *   KEY PRINCIPAL [type=agent,client] [agents=a,b*] [conversations=c1,c2] [operator]
 * KEY may be written as sha256:<64 hex> so the file need not hold the secret.
 * Keys are compared in constant time and never logged. */
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"

typedef struct mb_key {
    unsigned char hash[32]; /* sha256 of the key */
    mb_principal p;
} mb_key;

struct mb_auth {
    mb_key *keys;
    size_t nkeys;
};

static void mb__sha256(const char *s, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    EVP_Digest(s, n, out, &len, EVP_sha256(), NULL);
}

static json_t *mb__csv(const char *v)
{
    json_t *a = json_array();
    const char *p = v;
    while (*p) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n)
            json_array_append_new(a, json_stringn(p, n));
        p += n + (c ? 1 : 0);
    }
    return a;
}

static int mb__hex(const char *h, unsigned char out[32])
{
    if (strlen(h) != 64)
        return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (!isxdigit((unsigned char)h[2 * i]) || !isxdigit((unsigned char)h[2 * i + 1]) ||
            sscanf(h + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

static int mb__load_tokens(mb_auth *a, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open tokens file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *save, *tok[16];
        int nt = 0;
        line[strcspn(line, "\r\n")] = '\0';
        for (char *t = strtok_r(line, " \t", &save); t && nt < 16; t = strtok_r(NULL, " \t", &save))
            tok[nt++] = t;
        if (!nt || tok[0][0] == '#')
            continue;
        if (nt < 2) {
            snprintf(err, errlen, "%s:%d: expected `KEY PRINCIPAL [options]`", path, ln);
            fclose(f);
            return -1;
        }
        mb_key *nk = realloc(a->keys, (a->nkeys + 1) * sizeof *nk);
        if (!nk) {
            fclose(f);
            return -1;
        }
        a->keys = nk;
        mb_key *k = &a->keys[a->nkeys];
        memset(k, 0, sizeof *k);
        if (!strncmp(tok[0], "sha256:", 7)) {
            if (mb__hex(tok[0] + 7, k->hash)) {
                snprintf(err, errlen, "%s:%d: sha256: needs 64 hex digits", path, ln);
                fclose(f);
                return -1;
            }
        } else {
            mb__sha256(tok[0], strlen(tok[0]), k->hash);
        }
        snprintf(k->p.id, sizeof k->p.id, "%s", tok[1]);
        snprintf(k->p.method, sizeof k->p.method, "api-key");
        a->nkeys++;
        for (int i = 2; i < nt; i++) {
            char *eq = strchr(tok[i], '=');
            if (!strcmp(tok[i], "operator"))
                k->p.operator_ = 1;
            else if (eq && !strncmp(tok[i], "type=", 5))
                k->p.types = mb__csv(eq + 1);
            else if (eq && !strncmp(tok[i], "agents=", 7))
                k->p.agents = mb__csv(eq + 1);
            else if (eq && !strncmp(tok[i], "conversations=", 14))
                k->p.conversations = mb__csv(eq + 1);
            else {
                snprintf(err, errlen, "%s:%d: unknown option \"%s\" (type=, agents=, conversations=, operator)", path,
                         ln, tok[i]);
                fclose(f);
                return -1;
            }
        }
    }
    fclose(f);
    return 0;
}

int mb_auth_init(mb_broker *b, char *err, size_t errlen)
{
    if (!*b->cfg->tokens) {
        b->auth = NULL;
        mb_warn("auth", "no --tokens: anonymous development mode (%s peers only)",
                !strcmp(b->cfg->anonymous, "any")    ? "ALL"
                : !strcmp(b->cfg->anonymous, "none") ? "no"
                                                     : "loopback");
        return 0;
    }
    mb_auth *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    b->auth = a;
    if (mb__load_tokens(a, b->cfg->tokens, err, errlen))
        return -1;
    mb_info("auth", "authentication required: %zu API keys loaded from %s", a->nkeys, b->cfg->tokens);
    return 0;
}

void mb_auth_principal_clear(mb_principal *pr)
{
    json_decref(pr->agents);
    json_decref(pr->conversations);
    json_decref(pr->types);
    memset(pr, 0, sizeof *pr);
}

void mb_auth_free(mb_broker *b)
{
    if (!b->auth)
        return;
    for (size_t i = 0; i < b->auth->nkeys; i++)
        mb_auth_principal_clear(&b->auth->keys[i].p);
    free(b->auth->keys);
    free(b->auth);
    b->auth = NULL;
}

int mb_auth_required(const mb_broker *b) { return b->auth != NULL; }

static int mb__loopback(const char *peer)
{
    return !strncmp(peer, "127.", 4) || !strcmp(peer, "::1") || !strncmp(peer, "::ffff:127.", 11) ||
           !strcmp(peer, "localhost");
}

static void mb__copy_principal(mb_principal *dst, const mb_principal *src)
{
    *dst = *src;
    dst->agents = json_incref(src->agents);
    dst->conversations = json_incref(src->conversations);
    dst->types = json_incref(src->types);
}

int mb_auth_verify(mb_broker *b, mb_session *s, const char *method, const char *cred, json_t *metadata,
                   mb_principal *out, const char **code, char *msg, size_t msglen)
{
    memset(out, 0, sizeof *out);
    if (!strcmp(method, "none")) {
        if (b->auth) {
            *code = "auth_required";
            snprintf(msg, msglen, "this broker requires credentials");
            return -1;
        }
        snprintf(out->id, sizeof out->id, "anonymous");
        snprintf(out->method, sizeof out->method, "none");
        return 0;
    }
    if (strcmp(method, "api-key") && strcmp(method, "bearer")) {
        *code = "method_not_supported";
        snprintf(msg, msglen, "auth method \"%.40s\" is not supported (api-key, bearer)", method);
        return -1;
    }
    if (!b->auth) {
        *code = "method_not_supported";
        snprintf(msg, msglen, "no credentials are configured on this broker (start it with --tokens)");
        return -1;
    }
    if (!cred || !*cred) {
        *code = "invalid_credentials";
        snprintf(msg, msglen, "missing credential");
        return -1;
    }
    unsigned char h[32];
    mb__sha256(cred, strlen(cred), h);
    for (size_t i = 0; i < b->auth->nkeys; i++)
        if (CRYPTO_memcmp(h, b->auth->keys[i].hash, 32) == 0) {
            mb__copy_principal(out, &b->auth->keys[i].p);
            snprintf(out->method, sizeof out->method, "%s", method);
            return 0;
        }
    *code = "invalid_credentials";
    snprintf(msg, msglen, "invalid credentials");
    return -1;
}

static int mb__type_allowed(const mb_principal *p, enum mb_ptype pt)
{
    static const char *names[] = {"client", "agent", "gateway", "system"};
    if (!p->types)
        return 1;
    size_t i;
    json_t *x;
    json_array_foreach(p->types, i, x) if (!strcmp(json_string_value(x), names[pt])) return 1;
    return 0;
}

int mb_auth_apply(mb_ctx *cx, mb_principal *pr)
{
    mb_session *s = cx->s;
    if (!mb__type_allowed(pr, s->ptype)) {
        mb_auth_principal_clear(pr);
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "participantType",
                       "Principal may not connect as this participant type");
    }
    mb_auth_principal_clear(&s->principal);
    s->principal = *pr;
    memset(pr, 0, sizeof *pr);
    s->authenticated = 1;
    return 0;
}

int mb_auth_connect(mb_ctx *cx, json_t *auth, enum mb_ptype pt)
{
    mb_broker *b = cx->b;
    mb_session *s = cx->s;
    if (!auth) {
        if (b->auth)
            return s->authenticated ? 0 : 1;
        if (!strcmp(b->cfg->anonymous, "any") || (!strcmp(b->cfg->anonymous, "loopback") && mb__loopback(s->peer)))
            return 0;
        mp_err_set(&cx->err, MP_AUTH_FAILED, "auth",
                   "Anonymous access is not allowed from %s (configure --tokens, or --anonymous any)", s->peer);
        return -1;
    }
    const char *method = json_string_value(json_object_get(auth, "method"));
    if (!method)
        return mp_err_set(&cx->err, MP_INVALID_PARAMS, "auth.method", "Parameter auth.method must be a string"), -1;
    const char *cred = json_string_value(json_object_get(auth, "credential"));
    if (!cred)
        cred = json_string_value(json_object_get(auth, "token"));
    if (!b->auth && (!strcmp(method, "none") || !cred)) /* open broker: credentials are not needed */
        return mb_auth_connect(cx, NULL, pt);
    if (!b->auth) {
        /* open development broker given a credential it cannot check: accept
         * anonymously rather than pretend to authenticate */
        return mb_auth_connect(cx, NULL, pt);
    }
    if (strcmp(method, "api-key") && strcmp(method, "bearer") && strcmp(method, "none") && strncmp(method, "x-", 2))
        return mp_err_set(&cx->err, MP_AUTH_METHOD_NOT_SUPPORTED, "auth.method",
                          "Unsupported auth method: %.40s", method),
               -1;
    const char *code;
    char msg[256];
    mb_principal pr;
    if (mb_auth_verify(b, s, method, cred, json_object_get(auth, "metadata"), &pr, &code, msg, sizeof msg)) {
        mb_warn(s->session_id, "authentication failed from %s: %s", s->peer, msg);
        mp_err_set(&cx->err, !strcmp(code, "expired") ? MP_TOKEN_EXPIRED : MP_AUTH_FAILED, "auth", "%s", msg);
        return 1;
    }
    s->ptype = pt;
    if (mb_auth_apply(cx, &pr))
        return -1;
    return 0;
}

json_t *mb_auth_principal_json(const mb_principal *pr)
{
    json_t *o = json_pack("{s:s}", "id", pr->id);
    if (pr->expires_at)
        json_object_set_new(o, "expiresAt", json_integer(pr->expires_at));
    return o;
}

json_t *mb_auth_required_json(mb_broker *b)
{
    return json_pack("{s:[s,s], s:b}", "methods", "api-key", "bearer", "required", 1);
}

int mb_auth_same_principal(const mb_session *a, const mb_session *b)
{
    if (!a->authenticated && !b->authenticated)
        return 1;
    return a->authenticated && b->authenticated && !strcmp(a->principal.id, b->principal.id);
}

int mb_auth_is_operator(const mb_session *s)
{
    return !s->b->auth || (s->authenticated && s->principal.operator_);
}

static int mb__match_list(const json_t *list, const char *id)
{
    if (!list)
        return 1;
    size_t i;
    json_t *x;
    json_array_foreach(list, i, x)
    {
        const char *p = json_string_value(x);
        size_t n = strlen(p);
        if ((n && p[n - 1] == '*' && !strncmp(p, id, n - 1)) || !strcmp(p, id))
            return 1;
    }
    return 0;
}

int mb_auth_may_agent(const mb_session *s, const char *agent_id)
{
    return !s->b->auth || s->principal.operator_ || mb__match_list(s->principal.agents, agent_id);
}

int mb_auth_may_conversation(const mb_session *s, const char *conv_id)
{
    return !s->b->auth || s->principal.operator_ || mb__match_list(s->principal.conversations, conv_id);
}

int mb_auth_check_method(mb_ctx *cx, const mb_method *meth)
{
    if ((meth->flags & MB_M_OPERATOR) && !mb_auth_is_operator(cx->s))
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "method", "%s needs an operator principal", meth->name);
    return 0;
}

int mb_auth_check_filter(mb_ctx *cx, json_t *filter)
{
    return 0; /* visibility is enforced per event (mb_auth_event_visible) */
}

int mb_auth_event_visible(mb_broker *b, mb_session *s, const mb_event *ev)
{
    if (!b->auth || !ev->conv_id)
        return 1;
    return mb_auth_may_conversation(s, ev->conv_id);
}
