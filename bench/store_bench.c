/* store_bench.c - turn append throughput (group commit) and replay speed per store.
 *
 * For each backend (memory, sqlite synchronous=NORMAL, sqlite synchronous=FULL)
 * it appends N turns (default 200k, ~1 KiB of JSON each, round-robin over two
 * conversations) in transactions of B turns (default 1000), the way the broker
 * batches one loop pass into one commit, then replays one conversation (100k
 * turns) with an ascending mst_turn_scan. One line per backend, with the ratio
 * to memory. It measures; it asserts nothing about timings.
 *
 * With --events, every turn is followed, in the same transaction, by its
 * mail.turn.added event embedding the turn's text, as the broker writes them:
 * then the sqlite lines are the SQLite writer's own ceiling for mail/turn
 * (no broker, no network; with deferred durability the fsync of each
 * transaction is done inline here, after its commit, and counted).
 *
 * Runtime is bounded: a backend that has spent more than --budget seconds
 * (default 8) appending stops at the next commit and reports what it did.
 *
 * usage: store_bench [--turns N] [--batch B] [--size BYTES] [--budget SEC] [--dir DIR] [--events]
 * The sqlite files go to a fresh directory under DIR (default: $TMPDIR or /tmp),
 * removed afterwards. Put DIR on the disk you care about: on tmpfs, FULL costs
 * nothing and the numbers say nothing about durability.
 */
#include "mp_ulid.h"
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct result {
    const char *label;
    long long turns;
    double append_s;
    long long replayed;
    double replay_s;
    double close_s;
    int ok;
};

struct replay {
    long long n;
    size_t bytes;
};

static int replay_cb(void *arg, const struct mst_turn *t)
{
    struct replay *r = arg;
    r->n++;
    r->bytes += t->len; /* touch the row so nothing is optimised away */
    return 0;
}

static void rm_store_files(const char *path)
{
    static const char *const suf[] = {"", "-wal", "-shm", ".lock"};
    char p[600];
    for (size_t i = 0; i < sizeof suf / sizeof *suf; i++) {
        snprintf(p, sizeof p, "%s%s", path, suf[i]);
        unlink(p);
    }
}

static int g_events; /* --events */

static int run(struct result *res, const char *uri, enum mst_durability dur, long long nturns, int batch,
               size_t size, double budget)
{
    char err[512] = "";
    struct mst_store *st = NULL;
    int rc = mst_open_uri(uri, dur, &st, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s: open %s: %s (%s)\n", res->label, uri, mst_strerror(rc), err);
        return rc;
    }

    /* one JSON body, patched per turn: building ~1 KiB strings must not be
     * what we measure */
    char *json = malloc(size + 128), *ev = malloc(size + 512);
    if (!json || !ev) {
        free(json);
        free(ev);
        mst_close(st);
        return MST_ENOMEM;
    }
    char *filler = malloc(size);
    if (!filler) {
        free(json);
        free(ev);
        mst_close(st);
        return MST_ENOMEM;
    }
    for (size_t k = 0; k < size; k++)
        filler[k] = (char)('a' + k % 26);
    mp_ulid_gen g;
    mp_ulid_init(&g, 7);
    char ulid[MP_ULID_LEN + 1], id[64];
    static const char *const convs[2] = {"conv-bench-0", "conv-bench-1"};
    uint64_t seq[2] = {0, 0}, evseq = 0;

    int64_t t0 = mp_mono_us();
    long long i = 0;
    while (i < nturns) {
        if ((rc = mst_begin(st)))
            goto fail;
        for (int b = 0; b < batch && i < nturns; b++, i++) {
            int c = (int)(i & 1);
            mp_ulid_next(&g, mp_now_ms(), ulid);
            snprintf(id, sizeof id, "turn-%s", ulid);
            int n = snprintf(json, size + 128,
                             "{\"id\":\"%s\",\"conversationId\":\"%s\",\"seq\":%llu,\"participant\":\"agent-%d\","
                             "\"contentType\":\"text\",\"content\":{\"text\":\"",
                             id, convs[c], (unsigned long long)(seq[c] + 1), c);
            size_t len = (size_t)n;
            if (len < size - 4) {
                memcpy(json + len, filler, size - 4 - len);
                len = size - 4;
            }
            memcpy(json + len, "\"}}", 4);
            len += 3;
            struct mst_turn t = {.id = id,
                                 .conv_id = convs[c],
                                 .seq = ++seq[c],
                                 .thread_id = (i % 10) == 0 ? "thread-1" : NULL,
                                 .participant = c ? "agent-1" : "agent-0",
                                 .content_type = "text",
                                 .ts = mp_now_ms(),
                                 .json = json,
                                 .len = len};
            if ((rc = mst_turn_append(st, &t)))
                goto fail;
            if (g_events) {
                char eid[MP_ULID_LEN + 1];
                mp_ulid_next(&g, mp_now_ms(), eid);
                int h = snprintf(ev, size + 512,
                                 "{\"id\":\"%s\",\"type\":\"mail.turn.added\",\"timestamp\":%lld,\"source\":\"%s\","
                                 "\"data\":{\"conversationId\":\"%s\",\"turn\":",
                                 eid, (long long)t.ts, t.participant, convs[c]);
                size_t el = (size_t)h;
                memcpy(ev + el, json, len);
                el += len;
                el += (size_t)snprintf(ev + el, size + 512 - el, ",\"seq\":%llu}}", (unsigned long long)seq[c]);
                struct mst_event e = {.seq = ++evseq, .id = eid, .type = "mail.turn.added", .conv_id = convs[c],
                                      .ts = t.ts, .json = ev, .len = el};
                if ((rc = mst_event_append(st, &e)))
                    goto fail;
            }
        }
        if ((rc = mst_commit(st)))
            goto fail;
        if (mst_sync_deferred(st) && (rc = mst_sync(st)))
            goto fail;
        if ((double)(mp_mono_us() - t0) / 1e6 > budget)
            break;
    }
    res->turns = i;
    res->append_s = (double)(mp_mono_us() - t0) / 1e6;

    struct replay r = {0};
    struct mst_turn_query q = {.conv_id = convs[0]};
    t0 = mp_mono_us();
    if ((rc = mst_turn_scan(st, &q, replay_cb, &r)))
        goto fail;
    res->replay_s = (double)(mp_mono_us() - t0) / 1e6;
    res->replayed = r.n;

    t0 = mp_mono_us();
    mst_close(st);
    res->close_s = (double)(mp_mono_us() - t0) / 1e6;
    free(filler);
    free(json);
    free(ev);
    res->ok = 1;
    return MST_OK;

fail:
    fprintf(stderr, "%s: %s (%s)\n", res->label, mst_strerror(rc), mst_last_error(st));
    mst_close(st);
    free(filler);
    free(ev);
    free(json);
    return rc;
}

int main(int argc, char **argv)
{
    long long nturns = 200000;
    int batch = 1000;
    size_t size = 1024;
    double budget = 8.0;
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--events") == 0) {
            g_events = 1;
            continue;
        }
        if (!v)
            goto usage;
        if (strcmp(a, "--turns") == 0)
            nturns = atoll(v);
        else if (strcmp(a, "--batch") == 0)
            batch = atoi(v);
        else if (strcmp(a, "--size") == 0)
            size = (size_t)atol(v);
        else if (strcmp(a, "--budget") == 0)
            budget = atof(v);
        else if (strcmp(a, "--dir") == 0)
            base = v;
        else
            goto usage;
        i++;
    }
    if (nturns < 1 || batch < 1 || size < 256 || size > (1u << 20) || budget <= 0)
        goto usage;

    char dir[512], path[600], uri[700];
    snprintf(dir, sizeof dir, "%s/mst-bench-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/bench.db", dir);
    snprintf(uri, sizeof uri, "sqlite:%s", path);

    struct result res[3] = {{.label = "memory"}, {.label = "sqlite-normal"}, {.label = "sqlite-full"}};
    printf("store_bench: %lld turns%s, %d per transaction, %zu-byte JSON, replay of one conversation; dir %s\n",
           nturns, g_events ? " (each with its mail.turn.added event)" : "", batch, size, dir);
    fflush(stdout);
    int failed = 0;
    failed |= run(&res[0], "memory:", MST_DUR_FULL, nturns, batch, size, budget) != MST_OK;
    failed |= run(&res[1], uri, MST_DUR_NORMAL, nturns, batch, size, budget) != MST_OK;
    rm_store_files(path);
    failed |= run(&res[2], uri, MST_DUR_FULL, nturns, batch, size, budget) != MST_OK;
    rm_store_files(path);
    rmdir(dir);

    double mem_rate = res[0].ok ? (double)res[0].turns / res[0].append_s : 0;
    double mem_replay = res[0].ok ? (double)res[0].replayed / res[0].replay_s : 0;
    for (int i = 0; i < 3; i++) {
        const struct result *r = &res[i];
        if (!r->ok) {
            printf("%-14s FAILED\n", r->label);
            continue;
        }
        double rate = (double)r->turns / r->append_s, rrate = (double)r->replayed / r->replay_s;
        printf("%-14s append %8lld turns in %6.2f s = %9.0f turns/s | replay %6lld turns in %7.1f ms = %10.0f "
               "turns/s | close %6.1f ms",
               r->label, r->turns, r->append_s, rate, r->replayed, r->replay_s * 1e3, rrate, r->close_s * 1e3);
        if (i > 0 && mem_rate > 0)
            printf(" | vs memory: append x%.3f, replay x%.3f", rate / mem_rate, rrate / mem_replay);
        if (r->turns < nturns)
            printf(" (stopped by the %.0f s budget)", budget);
        printf("\n");
    }
    return failed ? 1 : 0;

usage:
    fprintf(stderr, "usage: %s [--turns N] [--batch B] [--size BYTES (256..1M)] [--budget SEC] [--dir DIR] [--events]\n",
            argv[0]);
    return 2;
}
