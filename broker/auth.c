/* Authentication and permissions: API keys, JWTs, broker-minted scoped
 * tokens, anonymous development mode, and the permission hooks every handler
 * goes through.
 *
 * ---- Tokens file (--tokens FILE) ------------------------------------------
 * One API key per line; blank lines and lines starting with '#' are ignored:
 *
 *   KEY PRINCIPAL [type=agent,client] [agents=a,b*] [conversations=c1,c2] [operator]
 *
 *   KEY            the key itself, or (recommended) sha256:<64 hex digits> = the
 *                  SHA-256 of the key, so the file never holds the secret:
 *                  printf %s "$KEY" | sha256sum
 *   PRINCIPAL      principal id reported in map/connect (principal.id)
 *   type=          participant types the key may connect as (default: any)
 *   agents=        agent-id patterns it may register / act for ("x*" = prefix;
 *                  default: any)
 *   conversations= conversation ids it may see / post to (default: any)
 *   operator       may use operator controls (map/inject, stop/suspend/resume
 *                  of foreign agents, token minting and revocation)
 *
 * Keys are hashed at load, compared in constant time against the SHA-256 of
 * the presented credential, and never logged (neither is any token or secret:
 * log lines carry the peer address and the reason only).
 *
 * ---- Bearer JWTs (--jwt-secret / --jwt-public-key) --------------------------
 * See jwt.h for the cryptographic checks. Claims -> principal:
 *   sub              principal id (required)
 *   exp              principal.expiresAt (ms; required)
 *   map:roles        ["operator"|"admin"] -> operator; participant type names
 *                    ("agent","client","gateway","system") -> allowed types
 *   map:scopes       strings "agent:<pattern>", "conversation:<id>", "operator"
 *   map:permissions  {agents:[patterns], conversations:[ids], operator:bool,
 *                     participantTypes:[types]}
 * A bearer credential that is not shaped like a JWT is looked up in the
 * API-key table.
 *
 * ---- Broker-minted tokens (x-mapbroker/token/create) ------------------------
 * HS256 JWTs with header kid "mapbroker", iss "mapbroker", aud = --system-id,
 * signed with the --token-secret key (or a random per-run key), carrying
 * sub, jti, iat, exp and map:permissions {conversations, agents}. They are
 * verified like any JWT, without a lookup; revocation is by principal
 * (x-mapbroker/token/revoke), held in memory.
 *
 * ---- Live sessions -----------------------------------------------------------
 * mb_auth_housekeeping (every 250 ms): map/auth/expiring is sent once when a
 * principal's expiresAt is within 5 minutes; after expiresAt every request but
 * map/connect, map/authenticate, map/auth/refresh and map/disconnect fails with
 * 1002 and no events are delivered until the credential is refreshed. Peers
 * that do not finish map/connect (+ authentication) within --handshake-timeout
 * seconds are closed with 1008. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libwebsockets.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "jwt.h"

#define MB_MINT_KID "mapbroker"
#define MB_MINT_ISS "mapbroker"
#define MB_EXPIRING_WINDOW_MS (5 * 60 * 1000)

typedef struct mb_key {
    unsigned char hash[32]; /* sha256 of the key */
    mb_principal p;
} mb_key;

struct mb_auth {
    mb_key *keys;
    size_t nkeys;
    mb_jwt_key jwt[3];      /* [0] = broker token key (kid "mapbroker"), then --jwt-secret, --jwt-public-key */
    size_t njwt;
    mb_map *expiring_sent;  /* session id -> expiresAt notified (malloc'd int64) */
    mb_map *revoked;        /* principal id -> revoked at ms (malloc'd int64) */
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
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        mb_warn("auth", "tokens file %s is readable by group/others (chmod 600 it, or store sha256: hashes)", path);
    char line[4096];
    int ln = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
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
            rc = -1;
            break;
        }
        if (strlen(tok[1]) > MP_ID_MAX) {
            snprintf(err, errlen, "%s:%d: principal id longer than %d characters", path, ln, MP_ID_MAX);
            rc = -1;
            break;
        }
        mb_key *nk = realloc(a->keys, (a->nkeys + 1) * sizeof *nk);
        if (!nk) {
            rc = -1;
            break;
        }
        a->keys = nk;
        mb_key *k = &a->keys[a->nkeys];
        memset(k, 0, sizeof *k);
        if (!strncmp(tok[0], "sha256:", 7)) {
            if (mb__hex(tok[0] + 7, k->hash)) {
                snprintf(err, errlen, "%s:%d: sha256: needs 64 hex digits", path, ln);
                rc = -1;
                break;
            }
        } else {
            mb__sha256(tok[0], strlen(tok[0]), k->hash);
        }
        OPENSSL_cleanse(tok[0], strlen(tok[0]));
        snprintf(k->p.id, sizeof k->p.id, "%s", tok[1]);
        snprintf(k->p.method, sizeof k->p.method, "api-key");
        a->nkeys++;
        for (int i = 2; i < nt && !rc; i++) {
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
                rc = -1;
            }
        }
    }
    OPENSSL_cleanse(line, sizeof line);
    fclose(f);
    return rc;
}

/* The broker's own token key: --token-secret FILE (created with 0600 and 32
 * random bytes when missing), else random for this run. */
static int mb__load_mint_key(mb_auth *a, const char *path, char *err, size_t errlen)
{
    unsigned char rnd[32];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        snprintf(err, errlen, "cannot get random bytes for the token secret");
        return -1;
    }
    int rc;
    if (!*path) {
        rc = mb_jwt_key_secret(&a->jwt[0], rnd, sizeof rnd);
        mb_info("auth", "no --token-secret: broker-minted tokens are valid for this run only");
    } else {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char *hex = OPENSSL_buf2hexstr(rnd, sizeof rnd); /* 95 chars "AB:CD:..." */
            size_t hl = hex ? strlen(hex) : 0;
            int ok = hex && write(fd, hex, hl) == (ssize_t)hl && write(fd, "\n", 1) == 1;
            OPENSSL_clear_free(hex, hl);
            close(fd);
            if (!ok) {
                snprintf(err, errlen, "cannot write token secret %s: %s", path, strerror(errno));
                unlink(path);
                OPENSSL_cleanse(rnd, sizeof rnd);
                return -1;
            }
            mb_info("auth", "created token secret %s (0600)", path);
        } else if (errno != EEXIST) {
            snprintf(err, errlen, "cannot create token secret %s: %s", path, strerror(errno));
            OPENSSL_cleanse(rnd, sizeof rnd);
            return -1;
        }
        rc = mb_jwt_key_secret_file(&a->jwt[0], path, err, errlen);
    }
    OPENSSL_cleanse(rnd, sizeof rnd);
    if (rc)
        return -1;
    snprintf(a->jwt[0].kid, sizeof a->jwt[0].kid, "%s", MB_MINT_KID);
    a->jwt[0].kid_required = 1;
    a->jwt[0].issuer = strdup(MB_MINT_ISS);
    return 0;
}

int mb_auth_init(mb_broker *b, char *err, size_t errlen)
{
    mb_config *c = b->cfg;
    if (!*c->tokens && !*c->jwt_secret && !*c->jwt_public_key && !*c->token_secret) {
        b->auth = NULL;
        mb_warn("auth", "no --tokens / --jwt-*: anonymous development mode (%s peers only)",
                !strcmp(c->anonymous, "any")    ? "ALL"
                : !strcmp(c->anonymous, "none") ? "no"
                                                : "loopback");
        return 0;
    }
    mb_auth *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    b->auth = a;
    a->expiring_sent = mb_map_new();
    a->revoked = mb_map_new();
    if (!a->expiring_sent || !a->revoked)
        return snprintf(err, errlen, "out of memory"), -1;
    if (*c->tokens && mb__load_tokens(a, c->tokens, err, errlen))
        return -1;
    if (mb__load_mint_key(a, c->token_secret, err, errlen))
        return -1;
    a->jwt[0].audience = strdup(c->system_id);
    a->njwt = 1;
    const char *files[2] = {c->jwt_secret, c->jwt_public_key};
    for (int i = 0; i < 2; i++) {
        if (!*files[i])
            continue;
        mb_jwt_key *k = &a->jwt[a->njwt];
        if ((i == 0 ? mb_jwt_key_secret_file(k, files[i], err, errlen)
                    : mb_jwt_key_public_file(k, files[i], err, errlen)))
            return -1;
        a->njwt++;
        if (*c->jwt_issuer)
            k->issuer = strdup(c->jwt_issuer);
        if (*c->jwt_audience)
            k->audience = strdup(c->jwt_audience);
        mb_info("auth", "accepting %s JWTs (key %s)%s%s%s%s", mb_jwt_alg_name(k->alg), files[i],
                k->issuer ? ", iss " : "", k->issuer ? k->issuer : "", k->audience ? ", aud " : "",
                k->audience ? k->audience : "");
    }
    mb_info("auth", "authentication required: %zu API keys%s%s", a->nkeys, *c->tokens ? " from " : "", c->tokens);
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
    for (size_t i = 0; i < 3; i++)
        mb_jwt_key_free(&b->auth->jwt[i]);
    mb_map_free(b->auth->expiring_sent, free);
    mb_map_free(b->auth->revoked, free);
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

/* ---- JWT claims -> principal ---- */

static int mb__valid_str_list(json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) > 1024)
        return 0;
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) if (!json_is_string(x) || json_string_length(x) > MP_ID_MAX) return 0;
    return 1;
}

static void mb__list_add(json_t **list, const char *s)
{
    if (!*list)
        *list = json_array();
    json_array_append_new(*list, json_string(s));
}

static int mb__is_ptype(const char *s)
{
    return !strcmp(s, "agent") || !strcmp(s, "client") || !strcmp(s, "gateway") || !strcmp(s, "system");
}

static int mb__claims_principal(json_t *claims, mb_principal *out, const char **why)
{
    snprintf(out->id, sizeof out->id, "%s", json_string_value(json_object_get(claims, "sub")));
    snprintf(out->method, sizeof out->method, "bearer");
    out->expires_at = (int64_t)json_number_value(json_object_get(claims, "exp")) * 1000;
    json_t *roles = json_object_get(claims, "map:roles");
    json_t *scopes = json_object_get(claims, "map:scopes");
    json_t *perms = json_object_get(claims, "map:permissions");
    size_t i;
    json_t *x;
    if (roles) {
        if (!mb__valid_str_list(roles))
            return *why = "map:roles must be an array of strings", -1;
        json_array_foreach(roles, i, x)
        {
            const char *r = json_string_value(x);
            if (!strcmp(r, "operator") || !strcmp(r, "admin"))
                out->operator_ = 1;
            else if (mb__is_ptype(r))
                mb__list_add(&out->types, r);
        }
    }
    if (scopes) {
        if (json_is_string(scopes)) /* OAuth style: space-separated */
            return *why = "map:scopes must be an array of strings", -1;
        if (!mb__valid_str_list(scopes))
            return *why = "map:scopes must be an array of strings", -1;
        json_array_foreach(scopes, i, x)
        {
            const char *sc = json_string_value(x);
            if (!strncmp(sc, "agent:", 6))
                mb__list_add(&out->agents, sc + 6);
            else if (!strncmp(sc, "conversation:", 13))
                mb__list_add(&out->conversations, sc + 13);
            else if (!strcmp(sc, "operator"))
                out->operator_ = 1;
        }
    }
    if (perms) {
        if (!json_is_object(perms))
            return *why = "map:permissions must be an object", -1;
        static const char *keys[] = {"agents", "conversations", "participantTypes"};
        json_t **dst[] = {&out->agents, &out->conversations, &out->types};
        for (int k = 0; k < 3; k++) {
            json_t *v = json_object_get(perms, keys[k]);
            if (!v)
                continue;
            if (!mb__valid_str_list(v))
                return *why = "map:permissions lists must be arrays of strings", -1;
            json_array_foreach(v, i, x)
            {
                if (k == 2 && !mb__is_ptype(json_string_value(x)))
                    return *why = "map:permissions.participantTypes has an unknown type", -1;
                mb__list_add(dst[k], json_string_value(x));
            }
        }
        json_t *op = json_object_get(perms, "operator");
        if (op && !json_is_boolean(op))
            return *why = "map:permissions.operator must be a boolean", -1;
        if (json_is_true(op))
            out->operator_ = 1;
    }
    return 0;
}

static int64_t mb__revoked_at(const mb_auth *a, const char *principal)
{
    int64_t *t = mb_map_get(a->revoked, principal);
    return t ? *t : 0;
}

int mb_auth_verify(mb_broker *b, mb_session *s, const char *method, const char *cred, json_t *metadata,
                   mb_principal *out, const char **code, char *msg, size_t msglen)
{
    (void)s;
    (void)metadata;
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
        snprintf(msg, msglen, "no credentials are configured on this broker (start it with --tokens or --jwt-*)");
        return -1;
    }
    if (!cred || !*cred) {
        *code = "invalid_credentials";
        snprintf(msg, msglen, "missing credential");
        return -1;
    }
    mb_auth *a = b->auth;
    int64_t issued_ms = 0; /* 0 = unknown (API keys) */
    if (mb_jwt_looks_like(cred)) {
        json_t *claims;
        const mb_jwt_key *used;
        if (mb_jwt_verify(a->jwt, a->njwt, cred, mb_now(), &claims, &used, code, msg, msglen))
            return -1;
        const char *why = NULL;
        if (mb__claims_principal(claims, out, &why)) {
            mb_auth_principal_clear(out);
            json_decref(claims);
            *code = "invalid_credentials";
            snprintf(msg, msglen, "%s", why);
            return -1;
        }
        if (used == &a->jwt[0])
            out->operator_ = 0; /* broker-minted tokens never carry operator rights */
        json_t *iat = json_object_get(claims, "iat");
        issued_ms = json_is_number(iat) ? (int64_t)(json_number_value(iat) * 1000) : 0;
        json_decref(claims);
    } else {
        unsigned char h[32];
        mb__sha256(cred, strlen(cred), h);
        size_t hit = a->nkeys;
        for (size_t i = 0; i < a->nkeys; i++) /* no early exit: constant work per key */
            if (CRYPTO_memcmp(h, a->keys[i].hash, 32) == 0)
                hit = i;
        OPENSSL_cleanse(h, sizeof h);
        if (hit == a->nkeys) {
            *code = "invalid_credentials";
            snprintf(msg, msglen, "invalid credentials");
            return -1;
        }
        mb__copy_principal(out, &a->keys[hit].p);
        snprintf(out->method, sizeof out->method, "%s", method);
    }
    int64_t rev = mb__revoked_at(a, out->id);
    if (rev && (!issued_ms || issued_ms <= rev)) {
        mb_auth_principal_clear(out);
        *code = "invalid_credentials";
        snprintf(msg, msglen, "credential revoked");
        return -1;
    }
    return 0;
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
    if (s->authenticated && s->b->auth && strcmp(pr->id, s->principal.id) && mb_map_size(s->owned)) {
        /* switching identity would hand the old principal's agents to the new one */
        mb_auth_principal_clear(pr);
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "credential",
                       "This connection owns agents of another principal; reconnect to change identity");
    }
    mb_auth_principal_clear(&s->principal);
    s->principal = *pr;
    memset(pr, 0, sizeof *pr);
    s->authenticated = 1;
    if (s->b->auth)
        mb_map_del(s->b->auth->expiring_sent, s->session_id);
    return 0;
}

/* Does another live or resumable session of a different principal hold this
 * participant id? (A peer must not take over another principal's routing
 * identity, mail participation or agent ownership by naming its id.) */
static int mb__pid_taken(mb_broker *b, mb_session *s, const mb_principal *pr, const char *pid)
{
    if (!b->auth || !pid)
        return 0;
    mb_session *o = mb_map_get(b->participants, pid);
    if (!o || o == s || o->state == MB_CLOSED)
        return 0;
    if (!o->authenticated)
        return 0; /* a half-finished handshake holds nothing worth protecting */
    return !pr || strcmp(o->principal.id, pr->id);
}

int mb_auth_connect(mb_ctx *cx, json_t *auth, enum mb_ptype pt)
{
    mb_broker *b = cx->b;
    mb_session *s = cx->s;
    const char *pid = json_string_value(json_object_get(cx->params, "participantId"));
    if (!auth) {
        if (b->auth) {
            if (mb__pid_taken(b, s, s->authenticated ? &s->principal : NULL, pid))
                return mp_err_set(&cx->err, MP_PERMISSION_DENIED, "participantId",
                                  "participantId is in use by another principal"),
                       -1;
            return s->authenticated ? 0 : 1;
        }
        if (!strcmp(b->cfg->anonymous, "any") || (!strcmp(b->cfg->anonymous, "loopback") && mb__loopback(s->peer)))
            return 0;
        mp_err_set(&cx->err, MP_AUTH_FAILED, "auth",
                   "Anonymous access is not allowed from %s (configure --tokens, or --anonymous any)", s->peer);
        return -1;
    }
    const char *method = json_string_value(json_object_get(auth, "method"));
    if (!method)
        return mp_err_set(&cx->err, MP_INVALID_PARAMS, "auth.method", "Parameter auth.method must be a string"), -1;
    json_t *cv = json_object_get(auth, "credential");
    if (!cv)
        cv = json_object_get(auth, "token");
    if (cv && !json_is_string(cv) && !json_is_null(cv))
        return mp_err_set(&cx->err, MP_INVALID_PARAMS, "auth.credential", "auth.credential must be a string"), -1;
    const char *cred = json_string_value(cv);
    if (!b->auth) /* open development broker: credentials are not needed (nor checked) */
        return mb_auth_connect(cx, NULL, pt);
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
        if (mb__pid_taken(b, s, NULL, pid)) /* would park the session on someone else's id */
            return -1;
        return 1;
    }
    if (mb__pid_taken(b, s, &pr, pid)) {
        mb_auth_principal_clear(&pr);
        return mp_err_set(&cx->err, MP_PERMISSION_DENIED, "participantId",
                          "participantId is in use by another principal"),
               -1;
    }
    enum mb_ptype old = s->ptype;
    s->ptype = pt;
    if (mb_auth_apply(cx, &pr)) {
        s->ptype = old;
        return -1;
    }
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
    (void)b;
    return json_pack("{s:[s,s], s:b}", "methods", "api-key", "bearer", "required", 1);
}

int mb_auth_same_principal(const mb_session *a, const mb_session *b)
{
    if (!a->authenticated && !b->authenticated)
        return 1;
    return a->authenticated && b->authenticated && !strcmp(a->principal.id, b->principal.id);
}

/* ---- permissions ---- */

static int mb__expired(const mb_session *s)
{
    return s->b->auth && s->authenticated && s->principal.expires_at && mb_now() >= s->principal.expires_at;
}

int mb_auth_is_operator(const mb_session *s)
{
    return !s->b->auth || (s->authenticated && s->principal.operator_ && !mb__expired(s));
}

/* No list = unrestricted; else an exact id or a '*'-suffixed prefix. */
static int mb__match_list(const json_t *list, const char *id)
{
    return !list || mp_glob_list_match(list, id);
}

int mb_auth_may_agent(const mb_session *s, const char *agent_id)
{
    if (!s->b->auth)
        return 1;
    if (!s->authenticated || mb__expired(s))
        return 0;
    return s->principal.operator_ || mb__match_list(s->principal.agents, agent_id);
}

int mb_auth_may_conversation(const mb_session *s, const char *conv_id)
{
    if (!s->b->auth)
        return 1;
    if (!s->authenticated || mb__expired(s))
        return 0;
    return s->principal.operator_ || mb__match_list(s->principal.conversations, conv_id);
}

/* A conversation-scoped principal (conversations= / map:permissions / minted token). */
static int mb__conv_scoped(const mb_session *s)
{
    return s->b->auth && s->authenticated && s->principal.conversations && !s->principal.operator_;
}

/* Params subtrees that carry application data, exempt from --max-string. */
static int mb__payload_key(const char *k)
{
    static const char *const keys[] = {"payload", "content", "message", "meta", "_meta", "metadata", "data", NULL};
    for (int i = 0; keys[i]; i++)
        if (!strcmp(k, keys[i]))
            return 1;
    return 0;
}

static int mb__check_strings(mb_ctx *cx, json_t *v, char *path, size_t plen, size_t cap)
{
    size_t used = strlen(path);
    if (json_is_string(v)) {
        if (json_string_length(v) > cap)
            return MB_FAIL(cx, MP_INVALID_PARAMS, path, "Parameter %s is longer than %zu bytes (--max-string)", path,
                           cap);
        return 0;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
        {
            size_t kl = strlen(k);
            if (kl > cap)
                return MB_FAIL(cx, MP_INVALID_PARAMS, path[0] ? path : NULL,
                               "An object key in %s is longer than %zu bytes (--max-string)",
                               path[0] ? path : "params", cap);
            if (mb__payload_key(k))
                continue;
            /* path += ".key" (at most 64 bytes of the key), without snprintf:
             * this runs for every parameter of every request */
            size_t at = used, n = kl > 64 ? 64 : kl;
            if (at && at + 1 < plen)
                path[at++] = '.';
            if (at + n >= plen)
                n = at < plen ? plen - at - 1 : 0;
            memcpy(path + at, k, n);
            path[at + n] = '\0';
            int rc = mb__check_strings(cx, x, path, plen, cap);
            path[used] = '\0';
            if (rc)
                return rc;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            snprintf(path + used, plen - used, "[%zu]", i);
            int rc = mb__check_strings(cx, x, path, plen, cap);
            path[used] = '\0';
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Methods that act on an existing agent named by params.agentId. */
static int mb__acts_on_agent(const char *m)
{
    static const char *const ms[] = {"map/agents/unregister", "map/agents/update", "map/agents/stop",
                                     "map/agents/suspend", "map/agents/resume", "map/inject",
                                     "map/scopes/join", "map/scopes/leave", NULL};
    for (int i = 0; ms[i]; i++)
        if (!strcmp(m, ms[i]))
            return 1;
    return 0;
}

int mb_auth_check_method(mb_ctx *cx, const mb_method *meth)
{
    mb_session *s = cx->s;
    mb_broker *b = cx->b;
    const char *m = meth->name;
    /* 1. expired credential: only re-authentication (or leaving) is served */
    if (mb__expired(s) && strcmp(m, "map/connect") && strcmp(m, "map/authenticate") &&
        strcmp(m, "map/auth/refresh") && strcmp(m, "map/disconnect")) {
        MB_FAIL(cx, MP_TOKEN_EXPIRED, "auth", "Token expired: refresh it with map/auth/refresh");
        cx->err.retryable = 1;
        return MP_TOKEN_EXPIRED;
    }
    /* 2. string length cap on ids, names and other non-payload params */
    char path[256] = "";
    if (mb__check_strings(cx, cx->params, path, sizeof path, (size_t)b->cfg->max_string))
        return cx->err.code;
    /* 3. operator-only methods */
    if ((meth->flags & MB_M_OPERATOR) && !mb_auth_is_operator(s))
        return MB_FAIL(cx, MP_PERMISSION_DENIED, "method", "%s needs an operator principal", m);
    if (!b->auth || !s->authenticated || s->principal.operator_)
        return 0;
    /* 4. acting for an agent: its pattern must be granted, and an agent
     *    registered by another principal is off limits (the participant id an
     *    agent's owner connected with is not proof of identity) */
    if (mb__acts_on_agent(m)) {
        const char *aid = json_string_value(json_object_get(cx->params, "agentId"));
        mb_agent *a = aid ? mb_agent_get(b, aid) : NULL;
        if (a && a->principal && strcmp(a->principal, s->principal.id))
            return MB_FAIL(cx, MP_PERMISSION_DENIED, "agentId", "Agent %s belongs to another principal", aid);
        if (aid && !mb__match_list(s->principal.agents, aid))
            return MB_FAIL(cx, MP_PERMISSION_DENIED, "agentId", "This principal may not act for agent %s", aid);
    }
    /* 5. conversation-scoped principals: only their conversations */
    if (mb__conv_scoped(s)) {
        int mail = !strncmp(m, "mail/", 5) || !strncmp(m, "x-mapbroker/mail/", 17);
        if (mail) {
            json_t *cid = json_object_get(cx->params, "conversationId");
            if (!strcmp(m, "mail/create"))
                return MB_FAIL(cx, MP_INSUFFICIENT_SCOPE, "conversationId",
                               "A conversation-scoped credential may not create conversations");
            if (json_is_string(cid) && !mb__match_list(s->principal.conversations, json_string_value(cid)))
                return MB_FAIL(cx, MP_INSUFFICIENT_SCOPE, "conversationId",
                               "This credential is not scoped to conversation %s", json_string_value(cid));
        } else if (!strcmp(m, "map/send")) {
            json_t *mm = json_object_get(json_object_get(cx->params, "meta"), "mail");
            json_t *cid = json_object_get(mm, "conversationId");
            if (!json_is_string(cid) || !mb__match_list(s->principal.conversations, json_string_value(cid)))
                return MB_FAIL(cx, MP_INSUFFICIENT_SCOPE, "meta.mail.conversationId",
                               "A conversation-scoped credential may only send turns to its conversations");
        } else if (!strncmp(m, "map/federation/", 15) || !strcmp(m, "map/scopes/create") ||
                   !strcmp(m, "map/scopes/delete")) {
            return MB_FAIL(cx, MP_INSUFFICIENT_SCOPE, "method", "%s is outside this credential's scope", m);
        }
    }
    return 0;
}

int mb_auth_check_filter(mb_ctx *cx, json_t *filter)
{
    (void)cx;
    (void)filter;
    return 0; /* visibility is enforced per event (mb_auth_event_visible) */
}

int mb_auth_event_visible(mb_broker *b, mb_session *s, const mb_event *ev)
{
    if (!b->auth)
        return 1;
    if (!s->authenticated || mb__expired(s))
        return 0;
    if (s->principal.operator_)
        return 1;
    if (ev->conv_id)
        return mb_auth_may_conversation(s, ev->conv_id);
    if (!s->principal.conversations)
        return 1;
    /* conversation-scoped: besides its conversations, only events about itself */
    return ev->source && (!strcmp(ev->source, s->participant_id) || mb_map_get(s->owned, ev->source));
}

/* ---- housekeeping: expiry notices, handshake timeout ---- */

static void mb__kill(mb_session *s, int code, const char *why)
{
    lws_close_reason(s->wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
}

void mb_auth_housekeeping(mb_broker *b)
{
    int64_t now = mb_now();
    int64_t hs_ms = b->cfg->handshake_timeout * 1000;
    mb_auth *a = b->auth;
    MB_MAP_FOREACH(b->sessions, e)
    {
        mb_session *s = mb_map_val(e);
        if (!s->wsi || s->detached || s->observer || s->state == MB_CLOSED)
            continue;
        if ((s->state == MB_AWAIT_CONNECT || s->state == MB_AWAIT_AUTH) && now - s->created_at > hs_ms) {
            if (!s->close_after_flush) {
                /* polite close (1008) once the queue is written ... */
                mb_warn(s->session_id, "%s did not finish map/connect%s within %lld s; closing", s->peer,
                        s->state == MB_AWAIT_AUTH ? " + authentication" : "", b->cfg->handshake_timeout);
                mb_session_close_after_flush(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "handshake timeout");
            } else if (now - s->created_at > 2 * hs_ms + 1000) {
                mb__kill(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "handshake timeout"); /* ... or not politely */
            }
            continue;
        }
        if (!a || !s->authenticated || !s->principal.expires_at || s->state != MB_READY)
            continue;
        int64_t exp = s->principal.expires_at;
        int64_t *sent = mb_map_get(a->expiring_sent, s->session_id);
        if (exp - now <= MB_EXPIRING_WINDOW_MS && exp > now && (!sent || *sent != exp)) {
            json_t *n = json_pack("{s:s, s:s, s:{s:I, s:I}}", "jsonrpc", "2.0", "method", "map/auth/expiring", "params",
                                  "expiresAt", (json_int_t)exp, "expiresInMs", (json_int_t)(exp - now));
            mb_session_send_json(s, n, MB_Q_RESPONSE);
            json_decref(n);
            int64_t *v = malloc(sizeof *v);
            if (v) {
                *v = exp;
                free(sent);
                mb_map_put(a->expiring_sent, s->session_id, v);
            }
            mb_info(s->session_id, "credential of %s expires in %lld s; map/auth/expiring sent", s->principal.id,
                    (long long)((exp - now) / 1000));
        }
    }
    /* forget notices of sessions that are gone */
    if (a) {
        mb_map_ent *e = mb_map_first(a->expiring_sent);
        while (e) {
            mb_map_ent *n = mb_map_next(e);
            if (!mb_map_get(b->sessions, mb_map_key(e))) {
                free(mb_map_val(e));
                mb_map_del(a->expiring_sent, mb_map_key(e));
            }
            e = n;
        }
    }
}

/* ---- x-mapbroker/token/create, x-mapbroker/token/revoke ---- */

static int mb__valid_id(const char *id)
{
    size_t n = strlen(id);
    if (!n || n > MP_ID_MAX)
        return 0;
    for (const char *p = id; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

static int h_token_create(mb_ctx *cx)
{
    mb_broker *b = cx->b;
    if (!b->auth)
        return MB_FAIL(cx, MP_AUTH_METHOD_NOT_SUPPORTED, "method",
                       "Token minting needs authentication to be enabled (--tokens, --jwt-*, or --token-secret)");
    json_t *p = cx->params;
    json_t *convs = json_array(), *agents = NULL;
    const char *cid = NULL, *principal = NULL;
    long long ttl = 3600000;
    json_t *cids = NULL, *ag = NULL;
    if (mp_get_id(p, "conversationId", 0, &cid, &cx->err) ||
        mp_get_str_arr(p, "conversationIds", 0, &cids, &cx->err) ||
        mp_get_str_arr(p, "agents", 0, &ag, &cx->err) || mp_get_id(p, "principal", 0, &principal, &cx->err) ||
        mp_get_int(p, "ttlMs", 0, &ttl, &cx->err))
        goto fail;
    if (cid)
        json_array_append_new(convs, json_string(cid));
    size_t i;
    json_t *x;
    json_array_foreach(cids, i, x)
    {
        if (!mb__valid_id(json_string_value(x))) {
            MB_FAIL(cx, MP_INVALID_PARAMS, "conversationIds", "conversationIds[%zu] is not a valid id", i);
            goto fail;
        }
        json_array_append(convs, x);
    }
    if (!json_array_size(convs) || json_array_size(convs) > 100) {
        MB_FAIL(cx, MP_INVALID_PARAMS, "conversationId", "Give conversationId (or conversationIds, at most 100)");
        goto fail;
    }
    if (ttl < 1000 || ttl > 30LL * 86400 * 1000) {
        MB_FAIL(cx, MP_INVALID_PARAMS, "ttlMs", "ttlMs must be between 1000 and 2592000000 (30 days)");
        goto fail;
    }
    if (ag) {
        if (json_array_size(ag) > 100) {
            MB_FAIL(cx, MP_INVALID_PARAMS, "agents", "At most 100 agent patterns");
            goto fail;
        }
        json_array_foreach(ag, i, x) if (!mb__valid_id(json_string_value(x)))
        {
            MB_FAIL(cx, MP_INVALID_PARAMS, "agents", "agents[%zu] is not a valid pattern", i);
            goto fail;
        }
        agents = json_incref(ag);
    }
    char jti[40];
    mb_new_id(b, "tok-", jti, sizeof jti);
    int64_t now = mb_now();
    int64_t exp_s = (now + ttl + 999) / 1000;
    json_t *perms = json_pack("{s:O}", "conversations", convs);
    if (agents)
        json_object_set(perms, "agents", agents);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:o, s:s}", "iss", MB_MINT_ISS, "aud",
                               b->cfg->system_id, "sub", principal ? principal : jti, "jti", jti, "iat",
                               (json_int_t)(now / 1000), "exp", (json_int_t)exp_s, "map:permissions", perms,
                               "createdBy", cx->s->authenticated ? cx->s->principal.id : "anonymous");
    char *tok = mb_jwt_sign_hs256(&b->auth->jwt[0], MB_MINT_KID, claims);
    json_decref(claims);
    if (!tok) {
        MB_FAIL(cx, MP_INTERNAL, NULL, "Could not sign the token");
        goto fail;
    }
    json_t *audit = json_pack("{s:O, s:I}", "conversations", convs, "ttlMs", (json_int_t)ttl);
    mb_audit(cx, principal ? principal : jti, audit);
    json_decref(audit);
    mb_info(cx->s->session_id, "minted token %s for %s (%zu conversations, expires in %lld s)", jti,
            principal ? principal : jti, json_array_size(convs), ttl / 1000);
    cx->result = json_pack("{s:s, s:I, s:s, s:s, s:O}", "token", tok, "expiresAt", (json_int_t)(exp_s * 1000),
                           "principal", principal ? principal : jti, "jti", jti, "conversations", convs);
    if (agents)
        json_object_set(cx->result, "agents", agents);
    OPENSSL_cleanse(tok, strlen(tok));
    free(tok);
    json_decref(convs);
    json_decref(agents);
    return 0;
fail:
    json_decref(convs);
    json_decref(agents);
    return cx->err.code;
}

static int h_token_revoke(mb_ctx *cx)
{
    mb_broker *b = cx->b;
    const char *principal;
    if (!b->auth)
        return MB_FAIL(cx, MP_AUTH_METHOD_NOT_SUPPORTED, "method", "Authentication is not enabled on this broker");
    if (mp_get_id(cx->params, "principal", MP_REQUIRED, &principal, &cx->err))
        return cx->err.code;
    int64_t *t = malloc(sizeof *t);
    if (!t)
        return MB_FAIL(cx, MP_INTERNAL, NULL, "out of memory");
    *t = mb_now();
    free(mb_map_get(b->auth->revoked, principal));
    mb_map_put(b->auth->revoked, principal, t);
    int closed = 0;
    MB_MAP_FOREACH(b->sessions, e)
    {
        mb_session *o = mb_map_val(e);
        if (o == cx->s || o->state == MB_CLOSED || !o->authenticated || strcmp(o->principal.id, principal))
            continue;
        o->principal.expires_at = 1; /* nothing more is served */
        if (o->wsi) {
            json_t *n = json_pack("{s:s, s:s, s:{s:s, s:s, s:i}}", "jsonrpc", "2.0", "method", "map/auth/revoked",
                                  "params", "reason", "revoked", "message", "credential revoked by an operator",
                                  "gracePeriodMs", 0);
            mb_session_send_json(o, n, MB_Q_RESPONSE);
            json_decref(n);
            mb_session_close_after_flush(o, LWS_CLOSE_STATUS_POLICY_VIOLATION, "revoked");
        }
        closed++;
    }
    mb_audit(cx, principal, cx->params);
    mb_warn(cx->s->session_id, "credentials of %s revoked; %d sessions closed", principal, closed);
    cx->result = json_pack("{s:b, s:s, s:i}", "revoked", 1, "principal", principal, "sessionsClosed", closed);
    return 0;
}

const mb_method mb_methods_auth[] = {
    {"x-mapbroker/token/create", h_token_create, MB_M_OPERATOR | MB_M_WRITES},
    {"x-mapbroker/token/revoke", h_token_revoke, MB_M_OPERATOR | MB_M_WRITES},
    {NULL, NULL, 0},
};
