/*
 * aead.c - AES-256-GCM records and HKDF-SHA256 over OpenSSL's EVP API.
 *
 * The key schedule is computed once per direction (ivy_aead_new); a record
 * only sets the nonce and runs the cipher, so a 4 KiB page costs one pass
 * of AES-GCM (about a microsecond with AES-NI) and no allocation.
 */
#include "aead.h"

#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h" /* ivy_put32 / ivy_get32 */

struct ivy_aead {
    EVP_CIPHER_CTX *ctx;
    uint64_t seq;
    int encrypt;
};

struct ivy_aead *ivy_aead_new(const uint8_t *key, int encrypt)
{
    struct ivy_aead *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->encrypt = encrypt;
    a->ctx = EVP_CIPHER_CTX_new();
    int ok = a->ctx != NULL;
    /* Key now, nonce per record: EVP keeps the key schedule between records. */
    if (ok)
        ok = EVP_CipherInit_ex(a->ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt) == 1 &&
             EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_SET_IVLEN, IVY_AEAD_NONCE_SIZE, NULL) == 1 &&
             EVP_CipherInit_ex(a->ctx, NULL, NULL, key, NULL, encrypt) == 1;
    if (!ok) {
        ivy_aead_free(a);
        return NULL;
    }
    return a;
}

void ivy_aead_free(struct ivy_aead *a)
{
    if (!a)
        return;
    EVP_CIPHER_CTX_free(a->ctx);
    free(a);
}

uint64_t ivy_aead_seq(const struct ivy_aead *a) { return a->seq; }

/* The next record's nonce, and its start: the len field is the associated data. */
static int begin(struct ivy_aead *a, const uint8_t prefix[IVY_SEAL_PREFIX])
{
    if (a->seq == UINT64_MAX)
        return -1; /* never reused: the link must end (2^64 records will not happen) */
    uint8_t nonce[IVY_AEAD_NONCE_SIZE] = {0};
    ivy_put64(nonce + 4, a->seq++);
    int outl;
    if (EVP_CipherInit_ex(a->ctx, NULL, NULL, NULL, nonce, a->encrypt) != 1 ||
        EVP_CipherUpdate(a->ctx, NULL, &outl, prefix, IVY_SEAL_PREFIX) != 1)
        return -1;
    return 0;
}

int ivy_aead_seal2(struct ivy_aead *a, const uint8_t *in1, size_t len1, const uint8_t *in2, size_t len2,
                   uint8_t *out)
{
    size_t len = len1 + len2;
    if (!a->encrypt || len > INT32_MAX)
        return -1;
    ivy_put32(out, (uint32_t)len);
    if (begin(a, out))
        return -1;
    uint8_t *ct = out + IVY_SEAL_PREFIX;
    int outl;
    if (len1 && EVP_CipherUpdate(a->ctx, ct, &outl, in1, (int)len1) != 1)
        return -1;
    if (len2 && EVP_CipherUpdate(a->ctx, ct + len1, &outl, in2, (int)len2) != 1)
        return -1;
    if (EVP_CipherFinal_ex(a->ctx, ct + len, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_GET_TAG, IVY_AEAD_TAG_SIZE, ct + len) != 1)
        return -1;
    return 0;
}

int ivy_aead_seal(struct ivy_aead *a, const uint8_t *in, size_t len, uint8_t *out)
{
    return ivy_aead_seal2(a, in, len, NULL, 0, out);
}

int ivy_aead_open(struct ivy_aead *a, uint8_t *rec)
{
    uint32_t len = ivy_get32(rec);
    if (a->encrypt || len > INT32_MAX)
        return -1;
    if (begin(a, rec))
        return -1;
    uint8_t *ct = rec + IVY_SEAL_PREFIX;
    int outl;
    /* GCM decrypts before it can verify; the caller uses the bytes only on success. */
    if (len && EVP_CipherUpdate(a->ctx, ct, &outl, ct, (int)len) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_SET_TAG, IVY_AEAD_TAG_SIZE, ct + len) != 1)
        return -1;
    if (EVP_CipherFinal_ex(a->ctx, ct + len, &outl) != 1) {
        memset(ct, 0, len); /* unverified plaintext is never left behind */
        return -1;
    }
    return 0;
}

int ivy_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                    const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len)
{
    EVP_PKEY_CTX *p = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    size_t got = out_len;
    int ok = p && EVP_PKEY_derive_init(p) == 1 && EVP_PKEY_CTX_set_hkdf_md(p, EVP_sha256()) == 1 &&
             EVP_PKEY_CTX_set1_hkdf_salt(p, salt, (int)salt_len) == 1 &&
             EVP_PKEY_CTX_set1_hkdf_key(p, ikm, (int)ikm_len) == 1 &&
             EVP_PKEY_CTX_add1_hkdf_info(p, info, (int)info_len) == 1 && EVP_PKEY_derive(p, out, &got) == 1 &&
             got == out_len;
    EVP_PKEY_CTX_free(p);
    return ok ? 0 : -1;
}
