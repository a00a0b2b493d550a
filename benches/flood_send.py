#!/usr/bin/env python3
"""Sends COUNT INVITEs to 127.0.0.1:PORT, each from its own source address 127.x.y.z (raw
socket with our own IPv4 header; needs root). Loopback only: the destination is fixed to
127.0.0.1 and every source is in 127.0.0.0/8. Stops after COUNT datagrams or SECONDS."""
import socket
import struct
import sys
import time

port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
dst = socket.inet_aton("127.0.0.1")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
start = time.monotonic()
sent = 0
for i in range(count):
    if time.monotonic() - start > seconds:
        break
    n = i + 1
    a, b, c = 10 + (n >> 16) % 240, (n >> 8) & 255, n & 255 or 1
    src = f"127.{a}.{b}.{c}"
    body = (
        f"INVITE sip:15551230000@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src}:5060;branch=z9hG4bKflood{n};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:flood@{src}>;tag=f{n}\r\nTo: <sip:15551230000@127.0.0.1>\r\n"
        f"Call-ID: flood-{n}@{src}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@{src}:5060>\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    udp = struct.pack("!HHHH", 5060, port, 8 + len(body), 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), dst)
    try:
        s.sendto(ip + udp, ("127.0.0.1", 0))
        sent += 1
    except BlockingIOError:
        pass
elapsed = time.monotonic() - start
print(f"sent {sent} INVITEs from {sent} sources in {elapsed:.1f} s")
