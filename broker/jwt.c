/* Compact JWS verification (HS256 / RS256 / ES256) with OpenSSL 3.
 *
 * Strategy: keys are typed when loaded (see jwt.h) and the verifier only ever
 * pairs a token with keys of the token's own algorithm. Parsing is strict:
 * base64url without padding or foreign characters, header and payload must be
 * JSON objects without duplicate keys, one signature segment, total length
 * capped. Errors name the failed check, never the token or the key. */
#include "jwt.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mb_log.h"

const char *mb_jwt_alg_name(enum mb_jwt_alg a)
{
    switch (a) {
    case MB_JWT_HS256: return "HS256";
    case MB_JWT_RS256: return "RS256";
    case MB_JWT_ES256: return "ES256";
    }
    return "?";
}

/* ---- base64url ---------------------------------------------------------- */

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *mb_b64url_encode(const unsigned char *in, size_t len)
{
    char *out = malloc(len / 3 * 4 + 5);
    if (!out)
        return NULL;
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64u[v >> 18 & 63];
        out[o++] = b64u[v >> 12 & 63];
        out[o++] = b64u[v >> 6 & 63];
        out[o++] = b64u[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = b64u[v >> 18 & 63];
        out[o++] = b64u[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = b64u[v >> 18 & 63];
        out[o++] = b64u[v >> 12 & 63];
        out[o++] = b64u[v >> 6 & 63];
    }
    out[o] = '\0';
    return out;
}

static int b64u_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

unsigned char *mb_b64url_decode(const char *in, size_t len, size_t *outlen)
{
    if (len % 4 == 1)
        return NULL;
    unsigned char *out = malloc(len / 4 * 3 + 3);
    if (!out)
        return NULL;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64u_val(in[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    /* the unused low bits of the last character must be zero (canonical form) */
    if (bits && (acc & ((1u << bits) - 1))) {
        free(out);
        return NULL;
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* ---- keys --------------------------------------------------------------- */

void mb_jwt_key_free(mb_jwt_key *k)
{
    if (!k)
        return;
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    EVP_PKEY_free(k->pkey);
    free(k->issuer);
    free(k->audience);
    memset(k, 0, sizeof *k);
}

int mb_jwt_key_secret(mb_jwt_key *k, const unsigned char *secret, size_t len)
{
    memset(k, 0, sizeof *k);
    k->secret = malloc(len ? len : 1);
    if (!k->secret)
        return -1;
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    k->alg = MB_JWT_HS256;
    return 0;
}

int mb_jwt_key_secret_file(mb_jwt_key *k, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read JWT secret %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        mb_warn("auth", "JWT secret %s is readable by group/others (chmod 600 it)", path);
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    int rc = 0;
    if (more) {
        snprintf(err, errlen, "JWT secret %s is larger than 4 KiB", path);
        rc = -1;
    } else if (n < 32) {
        snprintf(err, errlen, "JWT secret %s is too short (%zu bytes; HS256 needs at least 32)", path, n);
        rc = -1;
    } else if (mb_jwt_key_secret(k, buf, n)) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}

int mb_jwt_key_public_file(mb_jwt_key *k, const char *path, char *err, size_t errlen)
{
    memset(k, 0, sizeof *k);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read JWT public key %s: %s", path, strerror(errno));
        return -1;
    }
    EVP_PKEY *pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    if (!pk) { /* maybe a certificate */
        rewind(f);
        X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
        if (x) {
            pk = X509_get_pubkey(x);
            X509_free(x);
        }
    }
    fclose(f);
    if (!pk) {
        snprintf(err, errlen, "%s: not a PEM public key (-----BEGIN PUBLIC KEY-----) or certificate", path);
        return -1;
    }
    int id = EVP_PKEY_get_base_id(pk);
    int bits = EVP_PKEY_get_bits(pk);
    if (id == EVP_PKEY_RSA) {
        if (bits < 2048) {
            snprintf(err, errlen, "%s: RSA key of %d bits is too small (RS256 needs >= 2048)", path, bits);
            EVP_PKEY_free(pk);
            return -1;
        }
        k->alg = MB_JWT_RS256;
    } else if (id == EVP_PKEY_EC) {
        char grp[64] = "";
        size_t gl = 0;
        if (!EVP_PKEY_get_utf8_string_param(pk, "group", grp, sizeof grp, &gl) ||
            (strcmp(grp, "prime256v1") && strcmp(grp, "P-256"))) {
            snprintf(err, errlen, "%s: EC key on curve \"%s\"; ES256 needs P-256 (prime256v1)", path, grp);
            EVP_PKEY_free(pk);
            return -1;
        }
        k->alg = MB_JWT_ES256;
    } else {
        snprintf(err, errlen, "%s: unsupported key type (RSA for RS256 or EC P-256 for ES256)", path);
        EVP_PKEY_free(pk);
        return -1;
    }
    k->pkey = pk;
    return 0;
}

/* ---- verification ------------------------------------------------------- */

static int hmac256(const unsigned char *key, size_t klen, const char *data, size_t len, unsigned char out[32])
{
    unsigned int ol = 32;
    return HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)data, len, out, &ol) && ol == 32 ? 0 : -1;
}

static int verify_sig(const mb_jwt_key *k, const char *signing, size_t slen, const unsigned char *sig, size_t siglen)
{
    if (k->alg == MB_JWT_HS256) {
        unsigned char mac[32];
        if (siglen != 32 || hmac256(k->secret, k->secret_len, signing, slen, mac))
            return -1;
        int ok = CRYPTO_memcmp(mac, sig, 32) == 0;
        OPENSSL_cleanse(mac, sizeof mac);
        return ok ? 0 : -1;
    }
    unsigned char *der = NULL;
    const unsigned char *vsig = sig;
    size_t vlen = siglen;
    if (k->alg == MB_JWT_ES256) {
        /* JWS: fixed 64-byte r||s; OpenSSL wants a DER ECDSA-Sig-Value */
        if (siglen != 64)
            return -1;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
        if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
            BN_free(r);
            BN_free(s);
            ECDSA_SIG_free(es);
            return -1;
        }
        int dl = i2d_ECDSA_SIG(es, &der);
        ECDSA_SIG_free(es);
        if (dl <= 0)
            return -1;
        vsig = der;
        vlen = (size_t)dl;
    } else if (siglen != (size_t)EVP_PKEY_get_size(k->pkey)) {
        return -1;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
             EVP_DigestVerify(md, vsig, vlen, (const unsigned char *)signing, slen) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return ok ? 0 : -1;
}

static json_t *decode_obj(const char *seg, size_t len)
{
    size_t n;
    unsigned char *raw = mb_b64url_decode(seg, len, &n);
    if (!raw)
        return NULL;
    json_error_t je;
    json_t *o = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, &je);
    free(raw);
    if (o && !json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int mb_jwt_looks_like(const char *tok)
{
    if (!tok)
        return 0;
    size_t len = strlen(tok);
    const char *d1 = strchr(tok, '.');
    if (len > MB_JWT_MAX_LEN || !d1 || !strchr(d1 + 1, '.'))
        return 0;
    json_t *h = decode_obj(tok, (size_t)(d1 - tok));
    int ok = h && json_object_get(h, "alg") != NULL;
    json_decref(h);
    return ok;
}

static int fail(const char **code, const char *c, char *msg, size_t msglen, const char *m)
{
    *code = c;
    snprintf(msg, msglen, "%s", m);
    return -1;
}

static int num_claim(json_t *claims, const char *name, int64_t *out, int *present)
{
    json_t *v = json_object_get(claims, name);
    *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_number(v))
        return -1;
    double d = json_number_value(v);
    if (d != d || d < 0 || d > 1e13) /* NaN, negative, or absurdly far */
        return -1;
    *out = (int64_t)d;
    return 0;
}

static int aud_ok(json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return !strcmp(json_string_value(aud), want);
    size_t i;
    json_t *x;
    json_array_foreach(aud, i, x) if (json_is_string(x) && !strcmp(json_string_value(x), want)) return 1;
    return 0;
}

int mb_jwt_verify(const mb_jwt_key *keys, size_t n, const char *tok, int64_t now_ms, json_t **claims_out,
                  const mb_jwt_key **used, const char **code, char *msg, size_t msglen)
{
    *claims_out = NULL;
    if (used)
        *used = NULL;
    size_t len = tok ? strlen(tok) : 0;
    if (!len || len > MB_JWT_MAX_LEN)
        return fail(code, "invalid_credentials", msg, msglen, "malformed token");
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.'))
        return fail(code, "invalid_credentials", msg, msglen, "malformed token (not a compact JWS)");
    json_t *hdr = decode_obj(tok, (size_t)(d1 - tok));
    if (!hdr)
        return fail(code, "invalid_credentials", msg, msglen, "malformed token header");
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    json_t *kidv = json_object_get(hdr, "kid");
    char kidbuf[64];
    const char *kid = NULL;
    int bad_kid = kidv && (!json_is_string(kidv) || json_string_length(kidv) >= sizeof kidbuf);
    if (json_is_string(kidv) && !bad_kid) {
        snprintf(kidbuf, sizeof kidbuf, "%s", json_string_value(kidv));
        kid = kidbuf;
    }
    enum mb_jwt_alg a = 0;
    if (alg && !strcmp(alg, "HS256"))
        a = MB_JWT_HS256;
    else if (alg && !strcmp(alg, "RS256"))
        a = MB_JWT_RS256;
    else if (alg && !strcmp(alg, "ES256"))
        a = MB_JWT_ES256;
    int crit = json_object_get(hdr, "crit") != NULL;
    json_decref(hdr);
    if (!a) /* includes "none" */
        return fail(code, "invalid_credentials", msg, msglen, "token algorithm not accepted (HS256, RS256, ES256)");
    if (crit)
        return fail(code, "invalid_credentials", msg, msglen, "token header has unsupported critical extensions");
    if (bad_kid)
        return fail(code, "invalid_credentials", msg, msglen, "token header kid must be a short string");

    size_t siglen;
    unsigned char *sig = mb_b64url_decode(d2 + 1, len - (size_t)(d2 + 1 - tok), &siglen);
    if (!sig)
        return fail(code, "invalid_credentials", msg, msglen, "malformed token signature");
    const mb_jwt_key *k = NULL;
    int tried = 0;
    for (size_t i = 0; i < n && !k; i++) {
        const mb_jwt_key *c = &keys[i];
        if (c->alg != a) /* a key is bound to one algorithm: no confusion possible */
            continue;
        if (c->kid_required ? (!kid || strcmp(kid, c->kid)) : (kid && c->kid[0] && strcmp(kid, c->kid)))
            continue;
        tried++;
        if (verify_sig(c, tok, (size_t)(d2 - tok), sig, siglen) == 0)
            k = c;
    }
    free(sig);
    if (!k)
        return fail(code, "invalid_credentials", msg, msglen,
                    tried ? "token signature does not verify" : "no key configured for the token's algorithm");

    json_t *claims = decode_obj(d1 + 1, (size_t)(d2 - d1 - 1));
    if (!claims)
        return fail(code, "invalid_credentials", msg, msglen, "malformed token claims");
    int64_t exp = 0, nbf = 0, iat = 0, now = now_ms / 1000;
    int has_exp, has_nbf, has_iat;
    const char *why = NULL, *c = "invalid_credentials";
    const char *sub = json_string_value(json_object_get(claims, "sub"));
    if (num_claim(claims, "exp", &exp, &has_exp) || num_claim(claims, "nbf", &nbf, &has_nbf) ||
        num_claim(claims, "iat", &iat, &has_iat))
        why = "token time claims must be numbers (seconds)";
    else if (!has_exp)
        why = "token has no exp claim";
    else if (exp <= now)
        why = "token expired", c = "expired";
    else if (has_nbf && nbf > now + MB_JWT_LEEWAY_S)
        why = "token not valid yet (nbf)";
    else if (has_iat && iat > now + MB_JWT_LEEWAY_S)
        why = "token issued in the future (iat)";
    else if (!sub || !*sub || strlen(sub) > 256)
        why = "token sub must be a non-empty string of at most 256 characters";
    else if (k->issuer && (!json_is_string(json_object_get(claims, "iss")) ||
                           strcmp(json_string_value(json_object_get(claims, "iss")), k->issuer)))
        why = "token issuer not accepted";
    else if (k->audience && !aud_ok(json_object_get(claims, "aud"), k->audience))
        why = "token audience not accepted";
    if (why) {
        json_decref(claims);
        return fail(code, c, msg, msglen, why);
    }
    for (const char *p = sub; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            json_decref(claims);
            return fail(code, "invalid_credentials", msg, msglen, "token sub contains control characters");
        }
    *claims_out = claims;
    if (used)
        *used = k;
    return 0;
}

char *mb_jwt_sign_hs256(const mb_jwt_key *k, const char *kid, const json_t *claims)
{
    if (!k || k->alg != MB_JWT_HS256)
        return NULL;
    json_t *hdr = json_pack("{s:s, s:s}", "alg", "HS256", "typ", "JWT");
    if (kid)
        json_object_set_new(hdr, "kid", json_string(kid));
    char *h = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    char *c = json_dumps(claims, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);
    char *hh = h ? mb_b64url_encode((unsigned char *)h, strlen(h)) : NULL;
    char *cc = c ? mb_b64url_encode((unsigned char *)c, strlen(c)) : NULL;
    free(h);
    free(c);
    char *out = NULL;
    if (hh && cc) {
        size_t sl = strlen(hh) + 1 + strlen(cc);
        char *signing = malloc(sl + 1);
        unsigned char mac[32];
        if (signing) {
            snprintf(signing, sl + 1, "%s.%s", hh, cc);
            if (!hmac256(k->secret, k->secret_len, signing, sl, mac)) {
                char *ss = mb_b64url_encode(mac, 32);
                if (ss) {
                    out = malloc(sl + 2 + strlen(ss));
                    if (out)
                        sprintf(out, "%s.%s", signing, ss);
                    free(ss);
                }
            }
            free(signing);
        }
    }
    free(hh);
    free(cc);
    return out;
}
