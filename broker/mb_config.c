/* Configuration as a table (Redis standardConfig style): one row per setting
 * with its type, default, bounds and help text. The command line
 * (--name VALUE / --name=VALUE), the config file (name = value) and --help
 * all come from this table, so they cannot drift apart. */
#include "mb_config.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mb_log.h"

enum ctype { C_STR, C_INT, C_BOOL };

struct cdef {
    const char *name;
    enum ctype type;
    size_t off;
    const char *def;
    long long min, max;
    const char *help;
};

#define S(n, f, d, h) {n, C_STR, offsetof(mb_config, f), d, 0, 0, h}
#define I(n, f, d, lo, hi, h) {n, C_INT, offsetof(mb_config, f), d, lo, hi, h}
/* A switch: --NAME, --NAME=true|false (also on/off, yes/no, 1/0), --no-NAME; `NAME = false` in a file. */
#define B(n, f, d, h) {n, C_BOOL, offsetof(mb_config, f), d, 0, 1, h}

static const struct cdef defs[] = {
    S("host", host, "127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)"),
    I("port", port, "7420", 1, 65535, "WebSocket + HTTP port (ws://HOST:PORT/)"),
    S("store", store, "sqlite:./data/mapbroker.db", "store URI: sqlite:PATH (default) or memory:"),
    S("durability", durability, "full", "sqlite durability: full (fsync every commit) or normal (WAL, may lose the last commits on power loss)"),
    S("log-level", log_level, "info", "debug | info | warn | error"),
    S("system-id", system_id, "local", "this broker's MAP system id (federated addresses {system, agent})"),
    S("name", name, "mapbroker", "system name reported in map/connect"),
    I("max-message", max_message, "1048576", 1024, 256LL << 20, "largest accepted WebSocket message in bytes (larger: close 1009)"),
    I("max-message-preauth", max_message_preauth, "65536", 1024, 256LL << 20, "largest message before authentication"),
    I("max-depth", max_depth, "64", 2, 1000, "deepest JSON nesting accepted"),
    I("queue-max-bytes", queue_max_bytes, "16777216", 65536, 1LL << 34, "per-connection outbound queue limit, bytes"),
    I("queue-max-count", queue_max_count, "10000", 16, 10000000, "per-connection outbound queue limit, messages"),
    I("slow-consumer-ms", slow_consumer_ms, "10000", 100, 3600000, "disconnect a connection that has data queued but accepts none for this long (slow consumer)"),
    I("resume-window-ms", resume_window_ms, "300000", 0, 86400000, "how long a dropped session (agents, subscriptions) waits for resume"),
    I("event-history", event_history, "10000", 100, 10000000, "events kept in memory for map/replay (older ones come from the store)"),
    I("event-retention", event_retention, "1000000", 1000, 1LL << 40, "events kept in the store for map/replay; older ones are trimmed (replay before them is an error)"),
    I("event-history-bytes", event_history_bytes, "67108864", 1048576, 1LL << 36, "memory the in-memory event history may use (oldest events go first)"),
    I("max-connections", max_connections, "10000", 1, 1000000, "connections in total"),
    I("max-connections-per-ip", max_connections_per_ip, "1000", 1, 1000000, "connections from one address"),
    I("rate-limit", rate_limit, "20000", 0, 10000000, "requests per second per connection; more get 4001 with retryAfterMs (0 = unlimited)"),
    I("max-subscriptions", max_subscriptions, "100", 1, 100000, "subscriptions per connection"),
    I("max-participants", max_participants, "1000", 2, 1000000, "participants per conversation"),
    I("max-thread-depth", max_thread_depth, "8", 1, 1000, "thread nesting limit"),
    I("commit-window-us", commit_window_us, "-1", -1, 100000, "group-commit window: how long writes gather before one commit (replies and events wait for it); 0 = commit after each request; -1 = auto: 0 with memory:, 1000 with sqlite"),
    I("ping-interval", ping_interval, "30", 0, 3600, "seconds between WebSocket pings to idle peers (0 = off)"),
    S("static-dir", static_dir, "", "directory served at / for plain HTTP (dashboard); empty = built-in location"),
    S("tls-cert", tls_cert, "", "PEM certificate: enables wss:// on --tls-port"),
    S("tls-key", tls_key, "", "PEM private key for --tls-cert"),
    S("tls-ca", tls_ca, "", "PEM CA bundle: require client certificates signed by it (mTLS)"),
    I("tls-port", tls_port, "7443", 1, 65535, "wss:// port when --tls-cert is given"),
    S("tokens", tokens, "", "API-key file; when given, every peer must authenticate"),
    S("anonymous", anonymous, "loopback", "anonymous access without --tokens: loopback | any | none"),
    S("jwt-secret", jwt_secret, "", "file holding an HS256 secret (>= 32 bytes): accept bearer JWTs signed with it"),
    S("jwt-public-key", jwt_public_key, "", "PEM public key: accept bearer JWTs signed RS256 (RSA key) or ES256 (EC P-256 key)"),
    S("jwt-issuer", jwt_issuer, "", "required JWT iss (empty = not checked)"),
    S("jwt-audience", jwt_audience, "", "required JWT aud (empty = not checked)"),
    S("token-secret", token_secret, "", "HMAC secret file for broker-minted tokens (x-mapbroker/token/create); created 0600 if missing; empty = random per run"),
    I("max-string", max_string, "65536", 64, 256LL << 20, "longest string accepted in request params outside message payloads (bytes)"),
    I("handshake-timeout", handshake_timeout, "10", 1, 3600, "seconds a peer has to send its HTTP upgrade and to finish map/connect + authentication"),
    S("peers", peers, "", "peer brokers to dial and bridge with: SYSTEM=ws[s]://HOST:PORT/[,SYSTEM=URL...]"),
    S("peer-token", peer_token, "", "credential presented to peers when dialing (api-key or bearer token)"),
    S("public-url", public_url, "", "this broker's URL as peers should see it (sent when dialing; default ws://HOST:PORT/)"),
    S("config", config_file, "", "read settings from FILE (lines: name = value; # comments)"),
    /* -- interop (#20): published MAP clients -- */
    B("auto-create-scopes", auto_create_scopes, "true", "registering into (or joining) a scope that does not exist creates it with the default join policy (--no-auto-create-scopes: 2002 Scope not found)"),
};
#define NDEFS (sizeof defs / sizeof defs[0])

static const struct cdef *find(const char *name)
{
    for (size_t i = 0; i < NDEFS; i++)
        if (!strcmp(defs[i].name, name))
            return &defs[i];
    return NULL;
}

static int mb__set_bool(const struct cdef *d, long long *p, const char *val, const char *where)
{
    static const char *const yes[] = {"true", "on", "yes", "1", NULL}, *const no[] = {"false", "off", "no", "0", NULL};
    for (int i = 0; yes[i]; i++)
        if (!strcmp(val, yes[i]))
            return *p = 1, 0;
    for (int i = 0; no[i]; i++)
        if (!strcmp(val, no[i]))
            return *p = 0, 0;
    fprintf(stderr, "mapbroker: %s: --%s expects true or false, got \"%s\"\n", where, d->name, val);
    return -1;
}

static int set(mb_config *c, const struct cdef *d, const char *val, const char *where)
{
    void *p = (char *)c + d->off;
    if (d->type == C_STR) {
        char *dup = strdup(val);
        if (!dup)
            return -1;
        free(*(char **)p);
        *(char **)p = dup;
        return 0;
    }
    if (d->type == C_BOOL)
        return mb__set_bool(d, (long long *)p, val, where);
    char *end;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (errno || end == val || *end) {
        fprintf(stderr, "mapbroker: %s: --%s expects an integer, got \"%s\"\n", where, d->name, val);
        return -1;
    }
    if (v < d->min || v > d->max) {
        fprintf(stderr, "mapbroker: %s: --%s must be between %lld and %lld, got %lld\n", where, d->name, d->min,
                d->max, v);
        return -1;
    }
    *(long long *)p = v;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: mapbroker [OPTIONS]\n\n"
               "A message broker for the Multi-Agent Protocol (MAP): JSON-RPC 2.0 over WebSocket,\n"
               "agents and scopes, routing, events, and MAP mail (conversations, turns, threads)\n"
               "recorded in a durable store.\n\nOptions (also settable as `name = value` in --config FILE):\n");
    for (size_t i = 0; i < NDEFS; i++) {
        char flag[64];
        if (defs[i].type == C_BOOL)
            snprintf(flag, sizeof flag, "--[no-]%s", defs[i].name);
        else
            snprintf(flag, sizeof flag, "--%s %s", defs[i].name, defs[i].type == C_INT ? "N" : "VALUE");
        fprintf(f, "  %-28s %s", flag, defs[i].help);
        if (defs[i].def[0])
            fprintf(f, " [default: %s]", defs[i].def);
        fputc('\n', f);
    }
    fprintf(f, "  %-28s %s\n  %-28s %s\n", "-h, --help", "show this help and exit", "-V, --version",
            "print the version and exit");
    fprintf(f, "\nExamples:\n  mapbroker                                  # ws://127.0.0.1:7420, SQLite in ./data\n"
               "  mapbroker --store memory: --port 9000      # nothing persisted\n"
               "  mapbroker --host 0.0.0.0 --tokens keys.txt # expose, with API keys\n");
}

static int load_file(mb_config *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mapbroker: cannot open config file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        char *s = line;
        s[strcspn(s, "\r\n")] = '\0';
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        char where[512];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (!eq) {
            fprintf(stderr, "mapbroker: %s: expected `name = value`\n", where);
            rc = -1;
            break;
        }
        char *k = s, *v = eq + 1, *ke = eq;
        while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t'))
            ke--;
        *ke = '\0';
        while (*v == ' ' || *v == '\t')
            v++;
        size_t vl = strlen(v);
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            v[--vl] = '\0';
        const struct cdef *d = find(k);
        if (!d || !strcmp(k, "config")) {
            fprintf(stderr, "mapbroker: %s: unknown setting \"%s\"\n", where, k);
            rc = -1;
        } else {
            rc = set(c, d, v, where);
        }
    }
    fclose(f);
    return rc;
}

/* `--NAME` or `--no-NAME` of a switch (C_BOOL): fills name and val. 0 if a is not one. */
static int mb__bool_flag(const char *a, char *name, size_t nlen, const char **val)
{
    const struct cdef *d = find(a + 2);
    if (d && d->type == C_BOOL) {
        snprintf(name, nlen, "%s", a + 2);
        *val = "true";
        return 1;
    }
    d = strncmp(a + 2, "no-", 3) ? NULL : find(a + 5);
    if (d && d->type == C_BOOL) {
        snprintf(name, nlen, "%s", a + 5);
        *val = "false";
        return 1;
    }
    return 0;
}

int mb_config_load(mb_config *c, int argc, char **argv)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NDEFS; i++)
        if (set(c, &defs[i], defs[i].def, "default"))
            return -1;
    /* pass 1: --help, --version, --config */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version")) {
            printf("mapbroker %s\n", MB_VERSION);
            return 1;
        }
        const char *cf = NULL;
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            cf = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9))
            cf = argv[i] + 9;
        if (cf && load_file(c, cf))
            return -1;
    }
    /* pass 2: everything else, overriding the file */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "mapbroker: unexpected argument \"%s\" (see --help)\n", a);
            return -1;
        }
        char name[64];
        const char *val;
        const char *eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a - 2), a + 2);
            val = eq + 1;
        } else if (mb__bool_flag(a, name, sizeof name, &val)) {
            /* --NAME / --no-NAME: a switch takes no value */
        } else {
            snprintf(name, sizeof name, "%s", a + 2);
            if (i + 1 >= argc) {
                fprintf(stderr, "mapbroker: %s needs a value (see --help)\n", a);
                return -1;
            }
            val = argv[++i];
        }
        const struct cdef *d = find(name);
        if (!d) {
            fprintf(stderr, "mapbroker: unknown option --%s (see --help)\n", name);
            return -1;
        }
        if (!strcmp(name, "config"))
            continue;
        if (set(c, d, val, "command line"))
            return -1;
    }
    if (mb_log_parse_level(c->log_level) < 0) {
        fprintf(stderr, "mapbroker: --log-level must be debug, info, warn or error\n");
        return -1;
    }
    if (strcmp(c->durability, "full") && strcmp(c->durability, "normal")) {
        fprintf(stderr, "mapbroker: --durability must be full or normal\n");
        return -1;
    }
    if (strcmp(c->anonymous, "loopback") && strcmp(c->anonymous, "any") && strcmp(c->anonymous, "none")) {
        fprintf(stderr, "mapbroker: --anonymous must be loopback, any or none\n");
        return -1;
    }
    if (!*c->system_id || strchr(c->system_id, ':')) {
        fprintf(stderr, "mapbroker: --system-id must be non-empty and contain no ':'\n");
        return -1;
    }
    if (!!*c->tls_cert != !!*c->tls_key) {
        fprintf(stderr, "mapbroker: --tls-cert and --tls-key go together\n");
        return -1;
    }
    return 0;
}

void mb_config_free(mb_config *c)
{
    for (size_t i = 0; i < NDEFS; i++)
        if (defs[i].type == C_STR) {
            char **p = (char **)((char *)c + defs[i].off);
            free(*p);
            *p = NULL;
        }
}
