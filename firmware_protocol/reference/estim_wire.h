/* The wire format of PROTOCOL.md section 3: CRC-32, COBS, little-endian fields.
 * No state, no heap, no floating point. */
#ifndef ESTIM_WIRE_H
#define ESTIM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define ESTIM_HEADER_LEN 8u
#define ESTIM_CRC_LEN 4u
#define ESTIM_MAX_PAYLOAD 240u
#define ESTIM_MAX_FRAME 252u   /* header + payload + CRC */
#define ESTIM_MAX_COBS 253u    /* COBS of a maximal frame, without the 0x00 */
#define ESTIM_MAX_WIRE 254u    /* ... with the 0x00 delimiter */

/* CRC-32 of zlib / IEEE 802.3 (3.3). */
uint32_t estim_crc32(const uint8_t *data, size_t len);

/* COBS-encode len bytes of src into dst (room for len + len / 254 + 1 bytes),
 * without the trailing 0x00. Returns the encoded length. */
size_t estim_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst);

/* Decode len COBS bytes in place (the output is never longer than the input).
 * Returns the decoded length, or -1 if a block runs past the end (3.4 check 2). */
int estim_cobs_decode(uint8_t *buf, size_t len);

uint16_t estim_get_u16(const uint8_t *p);
uint32_t estim_get_u32(const uint8_t *p);
void estim_put_u16(uint8_t *p, uint16_t v);
void estim_put_u32(uint8_t *p, uint32_t v);

#endif
