/* CRC-32, COBS and little-endian helpers: PROTOCOL.md sections 2, 3.1 and 3.3. */
#include "estim_wire.h"

uint32_t estim_crc32(const uint8_t *data, size_t len)
{
    /* bitwise, reflected 0x04C11DB7 = 0xEDB88320; small rather than fast:
     * a frame is at most 248 bytes */
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    int bit;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        for (bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return crc ^ 0xFFFFFFFFu;
}

size_t estim_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst)
{
    size_t out = 1;      /* next free byte of dst */
    size_t code_at = 0;  /* where the current block's code byte goes */
    uint8_t code = 1;    /* 1 + bytes in the current block */
    size_t i;
    for (i = 0; i < len; i++) {
        if (src[i] == 0) {
            dst[code_at] = code;
            code_at = out++;
            code = 1;
        } else {
            dst[out++] = src[i];
            code++;
            if (code == 0xFF) {
                dst[code_at] = code;
                code_at = out++;
                code = 1;
            }
        }
    }
    dst[code_at] = code;
    return out;
}

int estim_cobs_decode(uint8_t *buf, size_t len)
{
    size_t in = 0;
    size_t out = 0;
    while (in < len) {
        uint8_t code = buf[in];
        size_t n;
        if (code == 0 || in + code > len) {
            return -1; /* a 0x00 inside a frame cannot happen; a block past the end */
        }
        in++;
        for (n = 1; n < code; n++) {
            buf[out++] = buf[in++];
        }
        if (code != 0xFF && in < len) {
            buf[out++] = 0;
        }
    }
    return (int)out;
}

uint16_t estim_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

uint32_t estim_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

void estim_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void estim_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
