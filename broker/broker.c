/* Broker lifecycle, group commit and housekeeping. */
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "mb.h"
#include "net.h"
#include "observe.h"

int64_t mb_now(void) { return mp_now_ms(); }

void mb_new_id(mb_broker *b, const char *prefix, char *out, size_t outlen)
{
    char u[MP_ULID_LEN + 1];
    mp_ulid_next(&b->ulid, mb_now(), u);
    size_t pn = prefix ? strlen(prefix) : 0;
    if (pn + MP_ULID_LEN + 1 > outlen) { /* never with the buffers we pass; truncate like snprintf */
        snprintf(out, outlen, "%s%s", prefix ? prefix : "", u);
        return;
    }
    if (pn)
        memcpy(out, prefix, pn);
    memcpy(out + pn, u, MP_ULID_LEN + 1);
}

int mb_txn(mb_broker *b)
{
    if (b->store_failed)
        return -1;
    if (b->txn_open)
        return 0;
    int rc = mst_begin(b->store);
    if (rc) {
        mb_error("store", "cannot begin a transaction: %s (%s)", mst_strerror(rc), mst_last_error(b->store));
        return -1;
    }
    b->txn_open = 1;
    b->txn_gen++;
    mb_net_commit_soon(b);
    return 0;
}

static void mb__hist_bucket(mb_broker *b, uint64_t us)
{
    static const uint64_t lim[] = {100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000};
    size_t i = 0;
    while (i < sizeof lim / sizeof lim[0] && us > lim[i])
        i++;
    b->stats.commit_hist[i]++;
}

/* ---- deferred durability ----
 * With a store whose commit returns before the transaction is durable
 * (sqlite, --durability full: COMMIT writes the WAL, mst_sync fdatasyncs it),
 * a thread does the syncing: the loop commits group N, asks for it to be
 * synced and goes on with group N+1 while the disk flushes; group N's
 * replies and events go out once the sync returns (committed_gen). The loop
 * used to wait out every fsync, a third of its time under load. */
struct mb_syncer {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t want;           /* newest group committed and not yet asked for */
    _Atomic uint64_t done;   /* newest group known durable */
    _Atomic int failed;      /* an mst_rc from mst_sync, 0 = fine */
    int stop;
};

static void *mb__sync_main(void *arg)
{
    mb_broker *b = arg;
    struct mb_syncer *y = b->syncer;
    pthread_mutex_lock(&y->mu);
    for (;;) {
        while (y->want <= atomic_load(&y->done) && !y->stop)
            pthread_cond_wait(&y->cv, &y->mu);
        if (y->want <= atomic_load(&y->done))
            break; /* stop, with nothing left to sync */
        uint64_t g = y->want;
        pthread_mutex_unlock(&y->mu);
        int rc = mst_sync(b->store);
        if (rc)
            atomic_store(&y->failed, rc);
        atomic_store(&y->done, g);
        lws_cancel_service(b->ctx); /* wake the loop: mb_broker_synced */
        pthread_mutex_lock(&y->mu);
    }
    pthread_mutex_unlock(&y->mu);
    return NULL;
}

/* The sync thread, started on the first commit (the loop's context exists by
 * then). NULL when commits are durable on return or the thread cannot start
 * (then the loop syncs inline). */
static struct mb_syncer *mb__syncer(mb_broker *b)
{
    if (b->syncer || b->syncer_tried || !b->ctx || !mst_sync_deferred(b->store))
        return b->syncer;
    b->syncer_tried = 1;
    struct mb_syncer *y = calloc(1, sizeof *y);
    if (!y)
        return NULL;
    if (pthread_mutex_init(&y->mu, NULL) || pthread_cond_init(&y->cv, NULL)) {
        free(y);
        return NULL;
    }
    b->syncer = y;
    if (pthread_create(&y->th, NULL, mb__sync_main, b)) {
        b->syncer = NULL;
        pthread_cond_destroy(&y->cv);
        pthread_mutex_destroy(&y->mu);
        free(y);
        mb_warn("store", "no sync thread; fsyncs run on the event loop");
    }
    return b->syncer;
}

/* Stop the sync thread after it has synced everything asked of it (before
 * the loop's context goes: the thread wakes the loop through it). */
void mb_broker_sync_stop(mb_broker *b)
{
    struct mb_syncer *y = b->syncer;
    if (!y)
        return;
    pthread_mutex_lock(&y->mu);
    y->stop = 1;
    pthread_cond_signal(&y->cv);
    pthread_mutex_unlock(&y->mu);
    pthread_join(y->th, NULL);
    pthread_cond_destroy(&y->cv);
    pthread_mutex_destroy(&y->mu);
    free(y);
    b->syncer = NULL;
}

/* A commit or a sync failed: nothing acknowledged may be lost, so nothing
 * held is acknowledged: those sessions' connections close and the broker
 * refuses further writes. */
static void mb__store_failed(mb_broker *b, const char *what, int rc)
{
    mb_error("store", "%s FAILED: %s (%s); closing affected connections, refusing further writes", what,
             mst_strerror(rc), mst_last_error(b->store));
    b->store_failed = 1;
    for (mb_session *s = b->wake_list; s; s = s->wake_next)
        if (s->wsi)
            lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
}

/* Let sessions write what committed_gen releases; a session whose queue
 * still holds later groups stays on the list. */
static void mb__wake(mb_broker *b)
{
    mb_session **pp = &b->wake_list;
    while (*pp) {
        mb_session *s = *pp;
        int live = s->wsi && s->state != MB_CLOSED && !b->store_failed;
        if (live && (!s->q_head || s->q_head->gen <= b->committed_gen))
            lws_callback_on_writable(s->wsi);
        if (live && s->q_tail && s->q_tail->gen > b->committed_gen) {
            pp = &s->wake_next;
            continue;
        }
        *pp = s->wake_next;
        s->in_wake_list = 0;
        s->wake_next = NULL;
    }
}

void mb_broker_synced(mb_broker *b)
{
    struct mb_syncer *y = b->syncer;
    if (!y)
        return;
    int failed = atomic_load(&y->failed);
    if (failed && !b->store_failed) {
        mb__store_failed(b, "FSYNC OF THE WAL", failed);
        /* as after a failed commit: the held sessions are being closed
         * (mb__wake skips them from now on); later frames (reads, errors)
         * must not wait for a sync that will never be asked for */
        b->committed_gen = b->txn_gen;
        mb__wake(b);
        return;
    }
    uint64_t done = atomic_load(&y->done);
    if (done > b->committed_gen && !b->store_failed) {
        b->committed_gen = done;
        mb__wake(b);
    }
}

void mb_broker_commit(mb_broker *b)
{
    mb_broker_commit_now(b);
    /* sessions retired during this pass can go now that no queue refers to them */
    while (b->graveyard) {
        mb_session *d = b->graveyard;
        b->graveyard = d->next_dead;
        if (d->in_wake_list) /* still waiting for a sync: unlink it */
            for (mb_session **pp = &b->wake_list; *pp; pp = &(*pp)->wake_next)
                if (*pp == d) {
                    *pp = d->wake_next;
                    break;
                }
        mb_session_free(d);
    }
}

void mb_broker_commit_now(mb_broker *b)
{
    if (b->txn_open) {
        int64_t t0 = mp_mono_us();
        int rc = mst_commit(b->store);
        uint64_t us = (uint64_t)(mp_mono_us() - t0);
        b->stats.commits++;
        b->stats.commit_us_total += us;
        if (us > b->stats.commit_us_max)
            b->stats.commit_us_max = us;
        mb__hist_bucket(b, us);
        b->txn_open = 0;
        if (rc) {
            mst_rollback(b->store);
            mb__store_failed(b, "COMMIT", rc);
            b->committed_gen = b->txn_gen;
        } else if (mst_sync_deferred(b->store)) {
            struct mb_syncer *y = mb__syncer(b);
            if (y) {
                pthread_mutex_lock(&y->mu);
                y->want = b->txn_gen;
                pthread_cond_signal(&y->cv);
                pthread_mutex_unlock(&y->mu);
            } else if ((rc = mst_sync(b->store))) {
                mb__store_failed(b, "FSYNC OF THE WAL", rc);
                b->committed_gen = b->txn_gen;
            } else {
                b->committed_gen = b->txn_gen;
            }
        } else {
            b->committed_gen = b->txn_gen;
        }
    }
    mb__wake(b);
}

void mb_broker_housekeeping(mb_broker *b)
{
    int64_t now = mb_now();
    /* expired detached sessions, slow consumers */
    mb_map_ent *e = mb_map_first(b->sessions);
    while (e) {
        mb_map_ent *next = mb_map_next(e);
        mb_session *s = mb_map_val(e);
        if (s->wsi && s->rx_too_big > 0 && now - s->rx_last >= 200) {
            s->rx_too_big = -1; /* once */
            mb_session_close_after_flush(s, 1009, "message too large");
        }
        if (s->detached && now - s->detached_at >= b->cfg->resume_window_ms) {
            mb_info(s->session_id, "resume window over; session ended");
            mb_session_destroy(s, "resume_window_expired");
        } else if (s->wsi && s->q_head && s->q_head->gen <= b->committed_gen &&
                   now - s->progress_at >= b->cfg->slow_consumer_ms) {
            /* data waiting and nothing written for the whole deadline: stalled */
            mb_warn(s->session_id, "slow consumer: no progress for %lld ms (%zu frames, %zu bytes queued, %llu dropped); disconnecting",
                    (long long)(now - s->progress_at), s->q_count, s->q_bytes, (unsigned long long)s->dropped);
            b->stats.slow_consumers_closed++;
            lws_close_reason(s->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)"slow consumer", 13);
            lws_set_timeout(s->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
            s->full_since = 0;
        }
        e = next;
    }
    mb_auth_housekeeping(b); /* auth.c: expiry notices, handshake timeout */
    /* agents reloaded after a restart and never reclaimed */
    e = mb_map_first(b->agents);
    while (e) {
        mb_map_ent *next = mb_map_next(e);
        mb_agent *a = mb_map_val(e);
        if (a->expires_at && now >= a->expires_at && !a->session) {
            mb_info("registry", "agent %s was not reclaimed after restart; unregistering", a->id);
            mb_agent_remove(b, a, "not_reclaimed", NULL);
        }
        e = next;
    }
    static int64_t last_trim;
    if (now - last_trim >= 1000) {
        last_trim = now;
        uint64_t first = 0;
        if (mst_event_first_seq(b->store, &first) == MST_OK && first &&
            b->event_seq > first + (uint64_t)b->cfg->event_retention && mb_txn(b) == 0) {
            uint64_t upto = b->event_seq - (uint64_t)b->cfg->event_retention;
            int rc = mst_event_trim(b->store, upto);
            if (rc)
                mb_warn("store", "event trim failed: %s", mst_strerror(rc));
            else
                mb_info("store", "event log trimmed up to seq %llu (--event-retention %lld)", (unsigned long long)upto,
                        b->cfg->event_retention);
        }
    }
    static int64_t last_ka;
    if (now - last_ka >= 15000) {
        last_ka = now;
        mb_observe_keepalive(b);
    }
    if (!b->txn_open)
        mb_broker_commit(b);
}

/* Reload the registry's last known state after a restart. Agents come back
 * ownerless until their process reconnects and reclaims them (or the resume
 * window passes). */
static int mb__load_agent(void *arg, const struct mst_record *r)
{
    mb_broker *b = arg;
    json_error_t je;
    json_t *doc = json_loadb(r->json, r->len, 0, &je);
    if (!doc)
        return 0;
    mb_agent *a = mb_agent_restore(b, doc);
    if (a)
        a->expires_at = mb_now() + b->cfg->resume_window_ms;
    return 0;
}

static int mb__load_scope(void *arg, const struct mst_record *r)
{
    mb_broker *b = arg;
    json_t *doc = json_loadb(r->json, r->len, 0, NULL);
    if (!doc)
        return 0;
    mb_scope_restore(b, doc);
    return 0;
}

int mb_broker_init(mb_broker *b, mb_config *cfg, char *errbuf, size_t errlen)
{
    memset(b, 0, sizeof *b);
    b->cfg = cfg;
    b->started_at = mb_now();
    b->limits = MP_LIMITS_DEFAULT;
    b->limits.max_message = (size_t)cfg->max_message;
    b->limits.max_depth = (int)cfg->max_depth;
    mp_ulid_init(&b->ulid, 0);
    b->sessions = mb_map_new();
    b->participants = mb_map_new();
    b->resume_tokens = mb_map_new();
    b->agents = mb_map_new();
    b->scopes = mb_map_new();
    b->sub_index = mb_map_new();
    b->hist_cap = (size_t)cfg->event_history;
    b->hist = calloc(b->hist_cap, sizeof *b->hist);
    if (!b->sessions || !b->participants || !b->resume_tokens || !b->agents || !b->scopes || !b->sub_index ||
        !b->hist) {
        snprintf(errbuf, errlen, "out of memory");
        return -1;
    }
    int rc = mst_open_uri(cfg->store, !strcmp(cfg->durability, "normal") ? MST_DUR_NORMAL : MST_DUR_FULL, &b->store,
                          errbuf, errlen);
    if (rc)
        return -1;
    /* the window gathers writes so that one fsync covers many requests; a
     * store without one (memory:) only makes replies and events wait */
    if (b->cfg->commit_window_us < 0)
        b->cfg->commit_window_us = !strcmp(mst_name(b->store), "memory") ? 0 : 1000;
    uint64_t last = 0;
    char last_id[32] = "";
    if (mst_event_last(b->store, &last, last_id) == MST_OK)
        b->event_seq = last;
    mst_scan(b->store, MST_SCOPE, NULL, mb__load_scope, b);
    mst_scan(b->store, MST_AGENT, NULL, mb__load_agent, b);
    if (mb_mail_init(b, errbuf, errlen))
        return -1;
    mb_info("store", "%s store open (epoch %s, %llu events, %zu agents, %zu scopes reloaded)", mst_name(b->store),
            mst_epoch(b->store), (unsigned long long)last, mb_map_size(b->agents), mb_map_size(b->scopes));
    return 0;
}

static void mb__free_agent(void *p)
{
    mb_agent_free(p);
}

static void mb__free_scope(void *p)
{
    mb_scope_free(p);
}

void mb_broker_free(mb_broker *b)
{
    b->stopping = 1;
    if (b->sessions) {
        mb_map_ent *e = mb_map_first(b->sessions);
        while (e) {
            mb_map_ent *n = mb_map_next(e);
            mb_session *s = mb_map_val(e);
            s->wsi = NULL; /* context already destroyed or about to be */
            mb_observe_close(b, s);
            mb_subs_drop_session(b, s);
            mb_map_free(s->owned, NULL);
            s->owned = mb_map_new();
            mb_map_del(b->sessions, mb_map_key(e));
            s->state = MB_CLOSED;
            s->next_dead = b->graveyard;
            b->graveyard = s;
            e = n;
        }
    }
    if (b->store && b->txn_open) {
        mst_commit(b->store);
        b->txn_open = 0;
    }
    mb_broker_sync_stop(b); /* flushes what it was asked to */
    if (b->store)
        mst_sync(b->store);
    while (b->graveyard) {
        mb_session *d = b->graveyard;
        b->graveyard = d->next_dead;
        mb_session_free(d);
    }
    mb_mail_free(b);
    mb_events_free(b);
    mb_map_free(b->agents, mb__free_agent);
    mb_map_free(b->scopes, mb__free_scope);
    mb_map_free(b->sessions, NULL);
    mb_map_free(b->participants, NULL);
    mb_map_free(b->resume_tokens, NULL);
    mb_map_free(b->sub_index, NULL);
    free(b->hist);
    free(b->wbuf);
    mb_session_spares_free(b);
    mst_close(b->store);
    b->store = NULL;
}
