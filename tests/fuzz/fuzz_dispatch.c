/* fuzz_dispatch.c - libFuzzer harness for the broker's message entry point.
 *
 * A real broker (memory store, open development mode, so every handler incl.
 * operator controls is reachable) and a synthetic session without a socket:
 * mb_session_new(b, NULL, ...) gives a session whose outbound frames are
 * dropped by mb_session_send (wsi == NULL is the "detached" case the broker
 * already handles), so no lws context is needed and no core code changes.
 *
 * Each input is one WebSocket message fed to mb_session_on_message() on a
 * fresh session that has already completed map/connect (so ready-state
 * handlers are reached); odd-length inputs go to a session that has not
 * connected, covering the pre-connect gate. Afterwards the session is
 * destroyed (agents unregistered per policy) and the loop pass is finished
 * with mb_broker_commit(), which also frees the graveyard. The broker is
 * rebuilt every 4096 inputs to bound accumulated state (scopes, events,
 * conversations).
 *
 * Oracles: ASan/UBSan (leaks included: every input's session, agents and
 * frames are freed before the next one), a connected session reaches
 * MB_READY, and no session is left in an invalid state.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "mb.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_dispatch: check failed at line %d: %s\n", __LINE__, #cond);                          \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static mb_config g_cfg;
static mb_broker g_b;
static int g_up;
static unsigned g_runs;

static void fuzz__up(void)
{
    char err[512] = "";
    CHECK(mb_broker_init(&g_b, &g_cfg, err, sizeof err) == 0);
    CHECK(mb_auth_init(&g_b, err, sizeof err) == 0);
    g_up = 1;
}

static void fuzz__down(void)
{
    if (!g_up)
        return;
    mb_auth_free(&g_b);
    mb_broker_free(&g_b);
    g_up = 0;
}

static void fuzz__atexit(void)
{
    fuzz__down();
    mb_config_free(&g_cfg);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *args[] = {"fuzz_dispatch", "--store", "memory:", "--log-level", "error", "--rate-limit", "0",
                    "--max-message", "1048576", NULL};
    CHECK(mb_config_load(&g_cfg, (int)(sizeof args / sizeof args[0]) - 1, args) == 0);
    mb_log_level = mb_log_parse_level("error");
    fuzz__up();
    atexit(fuzz__atexit);
    return 0;
}

static const char k_connect[] = "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"map/connect\",\"params\":"
                                "{\"protocolVersion\":1,\"participantType\":\"agent\",\"participantId\":\"fuzz-agent\","
                                "\"name\":\"fuzz\"}}";
static const char k_register[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"map/agents/register\",\"params\":"
                                 "{\"agentId\":\"fuzz-agent\",\"role\":\"worker\"}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (size_t)g_cfg.max_message)
        return 0; /* the transport closes these with 1009 before parsing */
    if (++g_runs % 4096 == 0) {
        fuzz__down();
        fuzz__up();
    }
    mb_session *s = mb_session_new(&g_b, NULL, "127.0.0.1", 0);
    CHECK(s);
    if (size % 2 == 0) {
        mb_session_on_message(s, k_connect, sizeof k_connect - 1);
        CHECK(s->state == MB_READY);
        mb_session_on_message(s, k_register, sizeof k_register - 1);
    }
    /* the handler may move the connection to another session (resume):
     * follow it through the participants map */
    mb_session_on_message(s, (const char *)data, size);
    CHECK(s->state <= MB_CLOSED);
    /* end every session this input created or resumed, like a socket close */
    mb_map_ent *e = mb_map_first(g_b.sessions);
    while (e) {
        mb_map_ent *n = mb_map_next(e);
        mb_session *x = mb_map_val(e);
        if (x->state != MB_CLOSED)
            mb_session_destroy(x, "fuzz");
        e = n;
    }
    if (s->state != MB_CLOSED)
        mb_session_destroy(s, "fuzz");
    mb_broker_commit(&g_b);
    return 0;
}
