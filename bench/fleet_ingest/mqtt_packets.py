"""The MQTT v5 wire format, only what the load generator needs: CONNECT, packet framing, CONNACK's Receive
Maximum."""

from __future__ import annotations

import struct


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    # clean start, no Will (the benchmark measures telemetry), no properties (session expires at disconnect)
    var = mqtt_str(b"MQTT") + bytes([5, 0x02]) + struct.pack(">H", keepalive) + b"\x00"
    body = var + mqtt_str(client_id.encode())
    return b"\x10" + varint(len(body)) + body


def read_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete packets at the front of ``buf`` (consumed): (first byte, body)."""
    out, pos, n = [], 0, len(buf)
    while pos + 2 <= n:
        mult, length, i = 1, 0, pos + 1
        while True:
            if i >= n:
                del buf[:pos]
                return out
            b = buf[i]
            length += (b & 0x7F) * mult
            mult <<= 7
            i += 1
            if not b & 0x80:
                break
        if i + length > n:
            break
        out.append((buf[pos], bytes(buf[i:i + length])))
        pos = i + length
    del buf[:pos]
    return out


def connack_receive_maximum(body: bytes) -> tuple[int, int]:
    """(reason code, Receive Maximum) of a v5 CONNACK body."""
    reason = body[1]
    props, i = body[2:], 0
    plen, mult = 0, 1
    while True:
        b = props[i]
        plen += (b & 0x7F) * mult
        mult <<= 7
        i += 1
        if not b & 0x80:
            break
    end, rmax = i + plen, 65535
    sizes = {0x11: 4, 0x12: None, 0x13: 2, 0x15: None, 0x16: None, 0x17: 1, 0x19: 1, 0x1A: None, 0x1C: None,
             0x1F: None, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x26: None, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
    while i < end:
        pid = props[i]
        i += 1
        if pid == 0x21:
            rmax = struct.unpack(">H", props[i:i + 2])[0]
        size = sizes.get(pid)
        if size is None:   # a string / binary (2-byte length); user property: two strings
            count = 2 if pid == 0x26 else 1
            for _ in range(count):
                i += 2 + struct.unpack(">H", props[i:i + 2])[0]
        else:
            i += size
    return reason, rmax
