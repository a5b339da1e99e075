/* libwebsockets glue. One context, one loop thread, plain and (optionally)
 * TLS vhosts side by side. All broker state is touched only from these
 * callbacks and the loop timers below. */
#include <arpa/inet.h>
#include <libwebsockets.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <string.h>

#include "compat.h"
#include "net.h"

static mb_broker *g_b; /* for the signal handler and timers only */
static lws_sorted_usec_list_t sul_commit, sul_house;
static mb_map *per_ip; /* ip -> count (as pointer-sized integer) */
static int commit_pending;

static void mb__on_commit_timer(lws_sorted_usec_list_t *sul)
{
    commit_pending = 0;
    mb_broker_commit(g_b);
}

void mb_net_commit_soon(mb_broker *b)
{
    if (commit_pending || !b->ctx)
        return;
    commit_pending = 1;
    lws_sul_schedule(b->ctx, 0, &sul_commit, mb__on_commit_timer, (lws_usec_t)b->cfg->commit_window_us);
}

static void mb__on_house_timer(lws_sorted_usec_list_t *sul)
{
    mb_broker_housekeeping(g_b);
    lws_sul_schedule(g_b->ctx, 0, &sul_house, mb__on_house_timer, 250 * LWS_US_PER_MS);
}

static void mb__ip_count(const char *ip, int delta)
{
    if (!per_ip)
        per_ip = mb_map_new();
    intptr_t n = (intptr_t)mb_map_get(per_ip, ip) + delta;
    if (n <= 0)
        mb_map_del(per_ip, ip);
    else
        mb_map_put(per_ip, ip, (void *)n);
}

static int mb__is_tls(struct lws *wsi)
{
    return lws_is_ssl(wsi);
}

static int mb__rx(mb_session *s, struct lws *wsi, const char *in, size_t len)
{
    mb_broker *b = s->b;
    size_t cap = (size_t)(s->authenticated || !b->auth ? b->cfg->max_message : b->cfg->max_message_preauth);
    int final = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);
    if (s->rx_too_big || s->rx_len + len > cap) {
        if (s->rx_too_big < 0)
            return 0; /* close already scheduled: keep discarding */
        /* Refuse before buffering (lws puts no limit on message size), but read
         * the rest of this message without keeping it, and close at its end:
         * closing while the peer is still sending lets its RST overtake our
         * close frame. A peer that stops sending mid-message is closed by
         * housekeeping after a short quiet period; one that keeps going past
         * 64x the cap is cut off. */
        if (!s->rx_too_big) {
            mb_warn(s->session_id, "message over %zu bytes from %s; closing with 1009", cap, s->peer);
            b->stats.oversize_closed++;
            free(s->rx);
            s->rx = NULL;
            s->rx_len = s->rx_cap = 0;
        }
        s->rx_too_big += 1;
        s->rx_discarded += len;
        s->rx_last = mb_now(); /* housekeeping closes it once the peer goes quiet */
        if (final || s->rx_discarded > 64 * cap) {
            static const char reason[] = "message too large";
            lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)reason, sizeof reason - 1);
            return -1;
        }
        return 0;
    }
    if (final && s->rx_len == 0) {
        mb_session_on_message(s, in, len); /* common case: whole message in one callback, no copy */
        return 0;
    }
    if (s->rx_len + len > s->rx_cap) {
        size_t nc = s->rx_cap ? s->rx_cap : 4096;
        while (nc < s->rx_len + len)
            nc *= 2;
        if (nc > cap)
            nc = cap;
        char *p = realloc(s->rx, nc);
        if (!p)
            return -1;
        s->rx = p;
        s->rx_cap = nc;
    }
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += len;
    if (final) {
        size_t n = s->rx_len;
        s->rx_len = 0;
        mb_session_on_message(s, s->rx, n);
        if (s->rx_cap > 1 << 20) { /* do not keep a huge buffer around */
            free(s->rx);
            s->rx = NULL;
            s->rx_cap = 0;
        }
    }
    return 0;
}

static int mb__callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    mb_broker *b = g_b;
    mb_pss *pss = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char ip[64] = "";
        lws_get_peer_simple(wsi, ip, sizeof ip);
        if (b->stats.connections_open >= (uint64_t)b->cfg->max_connections) {
            mb_warn("net", "refusing %s: %lld connections open (--max-connections)", ip, b->cfg->max_connections);
            return 1;
        }
        if (per_ip && (intptr_t)mb_map_get(per_ip, ip) >= b->cfg->max_connections_per_ip) {
            mb_warn("net", "refusing %s: too many connections from it (--max-connections-per-ip)", ip);
            return 1;
        }
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED: {
        char ip[64] = "";
        lws_get_peer_simple(wsi, ip, sizeof ip);
        snprintf(pss->ip, sizeof pss->ip, "%s", ip);
        mb__ip_count(ip, 1);
        pss->counted = 1;
        char uri[256] = "";
        lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
        pss->s = mb_session_new(b, wsi, ip, mb__is_tls(wsi));
        if (!pss->s)
            return -1;
        if (mb_http_ws_path(uri))
            return mb_http_ws_observe(b, wsi, pss);
        mb_compat_url_credential(pss->s, wsi); /* ?token= / ?access_token= for map/connect (never logged) */
        mb_debug(pss->s->session_id, "websocket open from %s%s", ip, pss->s->tls ? " (tls)" : "");
        return 0;
    }
    case LWS_CALLBACK_RECEIVE:
        if (pss->h)
            return mb_http_on_body(b, wsi, pss, in, len);
        if (!pss->s)
            return -1;
        return mb__rx(pss->s, wsi, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (pss->h)
            return mb_http_on_writeable(b, wsi, pss);
        if (!pss->s)
            return 0;
        return mb_session_on_writeable(pss->s);
    case LWS_CALLBACK_CLOSED:
        if (pss->counted) {
            mb__ip_count(pss->ip, -1);
            pss->counted = 0;
        }
        if (pss->h)
            mb_http_on_close(b, wsi, pss);
        if (pss->s) {
            mb_session *s = pss->s;
            pss->s = NULL;
            mb_session_on_close(s);
        }
        return 0;
    case LWS_CALLBACK_HTTP: {
        char ip[64] = "";
        lws_get_peer_simple(wsi, ip, sizeof ip);
        snprintf(pss->ip, sizeof pss->ip, "%s", ip);
        return mb_http_on_request(b, wsi, pss, (const char *)in);
    }
    case LWS_CALLBACK_HTTP_BODY:
        return mb_http_on_body(b, wsi, pss, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return mb_http_on_body_done(b, wsi, pss);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (pss->s) /* an SSE stream: a session like any other */
            return mb_session_on_writeable(pss->s);
        return mb_http_on_writeable(b, wsi, pss);
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (pss && pss->h)
            mb_http_on_close(b, wsi, pss);
        if (pss && pss->s) {
            mb_session *s = pss->s;
            pss->s = NULL;
            mb_session_on_close(s);
        }
        return 0;
    /* outbound federation links (federation.c) */
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        pss->s = mb_federation_on_established(b, wsi);
        return pss->s ? 0 : -1;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        return pss->s ? mb__rx(pss->s, wsi, in, len) : -1;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return pss->s ? mb_session_on_writeable(pss->s) : 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        mb_federation_dial_failed(wsi, in ? (const char *)in : NULL);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (pss && pss->s) {
            mb_session *s = pss->s;
            pss->s = NULL;
            mb_federation_link_down(s);
            mb_session_on_close(s);
        }
        return 0;
    case LWS_CALLBACK_OPENSSL_PERFORM_CLIENT_CERT_VERIFICATION: {
        /* mTLS: fail the handshake on any verification error (Mosquitto's fix) */
        X509_STORE_CTX *xs = user;
        int err = X509_STORE_CTX_get_error(xs);
        if (len == 0 || err != X509_V_OK) {
            mb_warn("tls", "client certificate rejected: %s", X509_verify_cert_error_string(err));
            X509_STORE_CTX_set_error(xs, err != X509_V_OK ? err : X509_V_ERR_APPLICATION_VERIFICATION);
            return 1;
        }
        return 0;
    }
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static struct lws_protocols protocols[] = {
    /* first entry serves connections that ask for no subprotocol (the SDK) */
    {"map", mb__callback, sizeof(mb_pss), 65536, 0, NULL, 65536},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static lws_retry_bo_t retry;

static void mb__sig(int sig)
{
    (void)sig;
    if (g_b) {
        g_b->stopping = 1;
        if (g_b->ctx)
            lws_cancel_service(g_b->ctx);
    }
}

int mb_net_start(mb_broker *b, char *errbuf, size_t errlen)
{
    g_b = b;
    mb_log_hook_lws();
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_VALIDATE_UTF8 |
                   LWS_SERVER_OPTION_HTTP_HEADERS_SECURITY_BEST_PRACTICES_ENFORCE;
    if (*b->cfg->tls_cert)
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.pt_serv_buf_size = 65536;
    info.timeout_secs = (unsigned int)b->cfg->handshake_timeout; /* see the vhost below */
    info.timeout_secs_ah_idle = (unsigned int)b->cfg->handshake_timeout;
    info.count_threads = 1;
    info.fd_limit_per_thread = (unsigned int)(b->cfg->max_connections + 64);
    b->ctx = lws_create_context(&info);
    if (!b->ctx) {
        snprintf(errbuf, errlen, "cannot create the libwebsockets context");
        return -1;
    }
    if (b->cfg->ping_interval > 0) {
        retry.secs_since_valid_ping = (uint16_t)b->cfg->ping_interval;
        retry.secs_since_valid_hangup = (uint16_t)(b->cfg->ping_interval * 2 + 10);
    }
    struct lws_context_creation_info v;
    memset(&v, 0, sizeof v);
    v.port = (int)b->cfg->port;
    v.iface = b->cfg->host;
    v.protocols = protocols;
    v.vhost_name = "map";
    v.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_HTTP_HEADERS_SECURITY_BEST_PRACTICES_ENFORCE;
    v.retry_and_idle_policy = b->cfg->ping_interval > 0 ? &retry : NULL;
    /* Half-open and slowloris peers: lws closes a connection whose HTTP
     * upgrade (or TLS handshake) is not complete within timeout_secs, and
     * one that holds a header table idle for timeout_secs_ah_idle. After the
     * upgrade, mb_auth_housekeeping closes peers that do not finish
     * map/connect (+ auth) in the same time, and the ping policy above hangs
     * up on peers that stop answering pings. */
    v.timeout_secs = (unsigned int)b->cfg->handshake_timeout;
    v.timeout_secs_ah_idle = (unsigned int)b->cfg->handshake_timeout;
    if (!lws_create_vhost(b->ctx, &v)) {
        snprintf(errbuf, errlen, "cannot listen on %s:%lld (in use, or not an address of this host?)", b->cfg->host,
                 b->cfg->port);
        return -1;
    }
    if (*b->cfg->tls_cert) {
        FILE *f;
        const char *files[] = {b->cfg->tls_cert, b->cfg->tls_key, *b->cfg->tls_ca ? b->cfg->tls_ca : NULL};
        const char *what[] = {"--tls-cert", "--tls-key", "--tls-ca"};
        for (int i = 0; i < 3; i++) {
            if (!files[i])
                continue;
            if (!(f = fopen(files[i], "r"))) {
                snprintf(errbuf, errlen, "%s %s: cannot read: %s", what[i], files[i], strerror(errno));
                return -1;
            }
            fclose(f);
        }
        struct lws_context_creation_info t = v;
        t.port = (int)b->cfg->tls_port;
        t.vhost_name = "map-tls";
        /* lws (4.1) leaves a vhost in plain text unless its own options carry
         * DO_SSL_GLOBAL_INIT: without this the "wss" port spoke plain ws
         * (REQUIRE_VALID_OPENSSL_CLIENT_CERT happens to include the bit, so
         * only the non-mTLS case was affected). */
        t.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        t.ssl_cert_filepath = b->cfg->tls_cert;
        t.ssl_private_key_filepath = b->cfg->tls_key;
        t.ssl_cipher_list = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                            "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
        t.ssl_options_set = SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
        if (*b->cfg->tls_ca) {
            t.ssl_ca_filepath = b->cfg->tls_ca;
            t.options |= LWS_SERVER_OPTION_REQUIRE_VALID_OPENSSL_CLIENT_CERT;
        }
        if (!lws_create_vhost(b->ctx, &t)) {
            snprintf(errbuf, errlen, "cannot start TLS on %s:%lld: check --tls-cert / --tls-key (PEM, matching pair)",
                     b->cfg->host, b->cfg->tls_port);
            return -1;
        }
        mb_info("net", "listening on wss://%s:%lld/%s", b->cfg->host, b->cfg->tls_port,
                *b->cfg->tls_ca ? " (client certificates required)" : "");
    }
    signal(SIGINT, mb__sig);
    signal(SIGTERM, mb__sig);
    signal(SIGPIPE, SIG_IGN);
    lws_sul_schedule(b->ctx, 0, &sul_house, mb__on_house_timer, 250 * LWS_US_PER_MS);
    mb_info("net", "listening on ws://%s:%lld/ (HTTP API and dashboard on the same port)", b->cfg->host, b->cfg->port);
    return 0;
}

void mb_net_run(mb_broker *b)
{
    while (!b->stopping) {
        if (lws_service(b->ctx, 0) < 0)
            break;
        mb_broker_synced(b); /* the sync thread wakes us with lws_cancel_service */
    }
}

void mb_net_stop(mb_broker *b)
{
    if (b->txn_open)
        mb_broker_commit(b);
    mb_broker_sync_stop(b);
    if (b->ctx) {
        mb_federation_stop();
        lws_sul_cancel(&sul_commit);
        lws_sul_cancel(&sul_house);
        lws_context_destroy(b->ctx);
        b->ctx = NULL;
    }
    mb_map_free(per_ip, NULL);
    per_ip = NULL;
}
