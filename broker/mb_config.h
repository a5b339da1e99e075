/* mb_config.h - every setting in one table: command line, config file and --help
 * are all generated from it (mb_config.c). */
#ifndef MB_CONFIG_H
#define MB_CONFIG_H

#include <stdint.h>

typedef struct mb_config {
    char *host;
    long long port;
    char *store;
    char *durability;
    char *log_level;
    char *system_id;
    char *name;
    long long max_message;
    long long max_message_preauth;
    long long max_depth;
    long long queue_max_bytes;
    long long queue_max_count;
    long long slow_consumer_ms;
    long long resume_window_ms;
    long long event_history;
    long long event_history_bytes;
    long long event_retention;
    long long max_connections;
    long long max_connections_per_ip;
    long long rate_limit;
    long long max_subscriptions;
    long long max_participants;
    long long max_thread_depth;
    long long commit_window_us;
    long long ping_interval;
    char *static_dir;
    char *tls_cert;
    char *tls_key;
    char *tls_ca;
    long long tls_port;
    char *tokens;
    char *anonymous;
    char *jwt_secret;
    char *jwt_public_key;
    char *jwt_issuer;
    char *jwt_audience;
    char *token_secret;
    long long max_string;
    long long handshake_timeout;
    char *peers;
    char *peer_token;
    char *public_url;
    char *config_file;
    /* -- interop (#20) -- */
    long long auto_create_scopes; /* 1: unknown scopes in register / join are created */
} mb_config;

/* Fill defaults, then apply argv (and --config FILE, read before the other flags so
 * the command line wins). Returns 0 to run, 1 if --help/--version was handled (exit 0),
 * -1 on error (message printed). */
int mb_config_load(mb_config *c, int argc, char **argv);
void mb_config_free(mb_config *c);

#endif
