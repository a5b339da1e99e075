/* jwt.h - compact JWS (JWT) verification with OpenSSL (jwt.c).
 *
 * Supported algorithms: HS256 (shared secret), RS256 (RSA >= 2048 bit public
 * key) and ES256 (P-256 public key; the JWS signature is raw r||s and is
 * converted to DER for EVP_DigestVerify).
 *
 * Every configured key is bound to exactly ONE algorithm when it is loaded:
 * a secret file is an HS256 key, a PEM public key is RS256 or ES256 depending
 * on its type. A token is only ever checked with a key whose bound algorithm
 * equals the token header's "alg", so "alg":"none", unknown algorithms and
 * algorithm confusion (HS256 "signed" with the RSA public key bytes as the
 * HMAC secret) are refused by construction, never by a later check.
 *
 * Keys may also carry a "kid" and their own issuer/audience expectations: the
 * broker's own short-lived tokens (auth.c) are HS256 JWTs with kid
 * "mapbroker", verified with the --token-secret key only.
 *
 * Threading: loop thread only (no shared mutable state, but not audited for
 * concurrent use). */
#ifndef MB_JWT_H
#define MB_JWT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum mb_jwt_alg { MB_JWT_HS256 = 1, MB_JWT_RS256, MB_JWT_ES256 };

#define MB_JWT_MAX_LEN 8192  /* longest token accepted (bytes) */
#define MB_JWT_LEEWAY_S 30   /* clock-skew allowance for nbf / iat */

typedef struct mb_jwt_key {
    enum mb_jwt_alg alg;
    char kid[64];            /* "" = matches tokens without a kid (or any kid) */
    int kid_required;        /* 1: only tokens whose header kid equals kid */
    unsigned char *secret;   /* HS256 (owned) */
    size_t secret_len;
    void *pkey;              /* EVP_PKEY* for RS256/ES256 (owned) */
    char *issuer;            /* required "iss" or NULL (owned) */
    char *audience;          /* required member of "aud" or NULL (owned) */
} mb_jwt_key;

/* Load an HS256 secret (file contents, trailing CR/LF stripped; >= 32 bytes).
 * Returns 0, or -1 with err filled (the message never contains key bytes). */
int mb_jwt_key_secret_file(mb_jwt_key *k, const char *path, char *err, size_t errlen);
/* Use secret[0..len) (copied) as an HS256 key. */
int mb_jwt_key_secret(mb_jwt_key *k, const unsigned char *secret, size_t len);
/* Load a PEM public key (SubjectPublicKeyInfo, or a certificate): RSA -> RS256,
 * EC P-256 -> ES256; anything else is refused. */
int mb_jwt_key_public_file(mb_jwt_key *k, const char *path, char *err, size_t errlen);
void mb_jwt_key_free(mb_jwt_key *k);
const char *mb_jwt_alg_name(enum mb_jwt_alg a);

/* Quick syntactic test: three base64url segments whose first decodes to a
 * JSON object with an "alg" member. Used to route bearer credentials (JWT vs
 * opaque API key). */
int mb_jwt_looks_like(const char *tok);

/* Verify tok against keys[0..n). On success returns 0 and *claims_out (new
 * reference) holds the payload; *used (if given) is the key that verified it.
 * On failure returns -1, *code is an AuthErrorCode string ("invalid_credentials"
 * or "expired") and msg explains why (never containing the token). now_ms is
 * the current time. Checks: signature, exp (required, strict), nbf/iat (with
 * MB_JWT_LEEWAY_S), iss and aud when the key requires them, "crit" refused. */
int mb_jwt_verify(const mb_jwt_key *keys, size_t n, const char *tok, int64_t now_ms, json_t **claims_out,
                  const mb_jwt_key **used, const char **code, char *msg, size_t msglen);

/* Create an HS256 token for claims (borrowed) with header kid (may be NULL).
 * Returns a malloc'd string or NULL. */
char *mb_jwt_sign_hs256(const mb_jwt_key *k, const char *kid, const json_t *claims);

/* base64url without padding. Encode returns malloc'd text; decode returns
 * malloc'd bytes (NUL-terminated for convenience) with *outlen, or NULL if the
 * input is not strict base64url. */
char *mb_b64url_encode(const unsigned char *in, size_t len);
unsigned char *mb_b64url_decode(const char *in, size_t len, size_t *outlen);

#endif
