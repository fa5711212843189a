"""lab.prober's hand-built SCTP packets: the checksum and the INIT / INIT ACK layout.

The CRC32c vectors are RFC 3720 appendix B.4's (iSCSI uses the same CRC as
SCTP, RFC 9260 appendix A), given there as the bytes on the wire; the chunk
layout is RFC 9260 section 3.3.2 (INIT) and 3.3.3 (INIT ACK).
"""

from __future__ import annotations

import socket
import struct

from lab.prober import SCTP_INIT, SCTP_INIT_ACK, crc32c, parse_sctp, sctp_packet


def test_crc32c_matches_rfc_3720_vectors():
    wire = lambda data: struct.pack("<I", crc32c(data))  # noqa: E731
    assert wire(bytes(32)) == bytes.fromhex("aa36918a")
    assert wire(b"\xff" * 32) == bytes.fromhex("43aba862")
    assert wire(bytes(range(32))) == bytes.fromhex("4e79dd46")
    assert wire(bytes(range(31, -1, -1))) == bytes.fromhex("5cdb3f11")
    assert crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check value


def ipv4(src: str, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 132, 0,
                       socket.inet_aton(src), socket.inet_aton("10.0.0.2")) + payload


def test_init_and_init_ack_layout_and_checksum():
    init = sctp_packet(40000, 80, 0, SCTP_INIT, 0xDEADBEEF)
    assert len(init) == 12 + 20
    sport, dport, vtag, _csum = struct.unpack("!HHII", init[:12])
    assert (sport, dport, vtag) == (40000, 80, 0)
    ctype, flags, length, tag, rwnd, out_s, in_s, tsn = struct.unpack("!BBHIIHHI", init[12:32])
    assert (ctype, flags, length, tag, out_s, in_s) == (SCTP_INIT, 0, 20, 0xDEADBEEF, 1, 1)
    assert rwnd > 0 and tsn == tag
    # the checksum covers the packet with its own field zeroed
    assert init[8:12] == struct.pack("<I", crc32c(init[:8] + bytes(4) + init[12:]))

    ack = sctp_packet(80, 40000, 0xDEADBEEF, SCTP_INIT_ACK, 7)
    # an INIT ACK has the mandatory State Cookie parameter (type 7) inside its length
    assert struct.unpack("!BBH", ack[12:16]) == (SCTP_INIT_ACK, 0, len(ack) - 12)
    assert struct.unpack("!HH", ack[32:36]) == (7, len(ack) - 32)
    assert parse_sctp(ipv4("10.0.0.1", ack)) == ("10.0.0.1", 80, 40000, 0xDEADBEEF,
                                                 SCTP_INIT_ACK, 7)


def test_parse_refuses_short_packets():
    assert parse_sctp(b"") is None
    assert parse_sctp(ipv4("10.0.0.1", b"\x00" * 10)) is None
