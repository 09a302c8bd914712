/*
 * aead.h - sealed records: AES-256-GCM from OpenSSL's libcrypto, one key and
 * one implicit sequence number per direction of a link, and HKDF-SHA256 to
 * derive those keys. Used by the DSM links (link.c) and, through cffi, by the
 * control channel (hypervisor/crypto.py); nothing here is hand-written crypto.
 *
 * A record on the wire (offsets pinned by _Static_assert below):
 *    0 len          u32  length of the plaintext frame, little-endian (authenticated, not secret)
 *    4 ciphertext   len bytes
 *  4+len tag        16 bytes (GCM tag over the len field and the ciphertext)
 *
 * The nonce is never sent: it is 4 zero bytes and the 64-bit count of records
 * sealed so far under this key, so a replayed, reordered or dropped record
 * opens under the wrong nonce and fails exactly like a forged one. A key is
 * used in one direction of one connection only (the handshake derives fresh
 * keys per connection), so a (key, nonce) pair never repeats.
 */
#ifndef IVY_AEAD_H
#define IVY_AEAD_H

#include <stddef.h>
#include <stdint.h>

#define IVY_AEAD_KEY_SIZE 32u
#define IVY_AEAD_TAG_SIZE 16u
#define IVY_AEAD_NONCE_SIZE 12u
#define IVY_SEAL_PREFIX 4u       /* the record's len field */
#define IVY_SEAL_OVERHEAD (IVY_SEAL_PREFIX + IVY_AEAD_TAG_SIZE)

struct ivy_seal_prefix {
    uint32_t len;
};
_Static_assert(sizeof(struct ivy_seal_prefix) == IVY_SEAL_PREFIX, "record prefix size");
_Static_assert(IVY_AEAD_NONCE_SIZE == 4 + sizeof(uint64_t), "nonce: 4 zero bytes and the sequence number");

/* One direction of one link: a cipher context keyed once, and its sequence number. */
struct ivy_aead;

/* key: IVY_AEAD_KEY_SIZE bytes; encrypt: 1 to seal, 0 to open. NULL if libcrypto refuses. */
struct ivy_aead *ivy_aead_new(const uint8_t *key, int encrypt);
void ivy_aead_free(struct ivy_aead *a);
/* Records sealed or opened so far (the next record's nonce). */
uint64_t ivy_aead_seq(const struct ivy_aead *a);

/*
 * Seal the frame in1[0..len1) || in2[0..len2) into out: prefix, ciphertext,
 * tag (len1 + len2 + IVY_SEAL_OVERHEAD bytes). The inputs may not overlap out
 * except in1 == out + IVY_SEAL_PREFIX (in place). 0, or -1 if libcrypto failed.
 */
int ivy_aead_seal2(struct ivy_aead *a, const uint8_t *in1, size_t len1, const uint8_t *in2, size_t len2,
                   uint8_t *out);
int ivy_aead_seal(struct ivy_aead *a, const uint8_t *in, size_t len, uint8_t *out);

/*
 * Open the record at rec (its prefix says len; the caller has checked len
 * and that all len + IVY_SEAL_OVERHEAD bytes are present). Decrypts in place:
 * on 0 the plaintext frame is at rec + IVY_SEAL_PREFIX. -1: the record was
 * forged, altered, replayed, reordered or follows a dropped one; its bytes
 * must not be used.
 */
int ivy_aead_open(struct ivy_aead *a, uint8_t *rec);

/* HKDF-SHA256 (RFC 5869): out_len bytes of key from ikm, salt and info. 0 or -1. */
int ivy_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                    const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len);

#endif
