#!/usr/bin/env python3
"""A signalgate WebSocket client in JSON mode, with nothing but the standard library.

    python3 examples/ws_client.py --url ws://127.0.0.1:8082/v1/ws --key sg_... \
        --channels account quotes:BTC-USD [--resume-from SEQ] [--signal '{"symbol":"BTC-USD","action":"buy","qty":"0.01"}']
        [--count N | --until TYPE]

Behind nginx (TLS) the URL is wss://HOST/v1/ws; --cafile names the CA of a private certificate.

Prints every message the node sends, one JSON object per line. On a disconnect it reconnects with
resume_from set to the last account event it saw, so no account event is missed or repeated.
See docs/ws.md for the messages.
"""

import argparse
import base64
import json
import os
import socket
import ssl
import struct
import sys
import time
from urllib.parse import urlparse, quote


def connect(url, key, resume_from, cafile):
    u = urlparse(url)
    tls = u.scheme == "wss"
    sock = socket.create_connection((u.hostname, u.port or (443 if tls else 80)), timeout=30)
    if tls:
        sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=u.hostname)
    query = "format=json"
    if resume_from is not None:
        query += "&resume_from=%d" % resume_from
    nonce = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET %s?%s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nX-API-Key: %s\r\n\r\n"
        % (u.path or "/v1/ws", query, u.netloc, nonce, quote(key, safe=""))
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        raise ConnectionError("refused: %s %s" % (status.decode(), rest.decode(errors="replace")))
    return sock, bytearray(rest)


def send(sock, opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def send_json(sock, msg):
    send(sock, 0x1, json.dumps(msg).encode())


def frames(sock, buf):
    """Yields (opcode, payload) for each frame from the node."""
    while True:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                start = 2 + {126: 2, 127: 8}.get(n, 0)
                if len(buf) >= start:
                    if n == 126:
                        n = struct.unpack("!H", buf[2:4])[0]
                    elif n == 127:
                        n = struct.unpack("!Q", buf[2:10])[0]
                    if len(buf) >= start + n:
                        opcode, payload = buf[0] & 0x0F, bytes(buf[start : start + n])
                        del buf[: start + n]
                        yield opcode, payload
                        continue
            break
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf.extend(chunk)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:8082/v1/ws", help="ws://… to a node, wss://… through nginx")
    p.add_argument("--cafile", help="CA certificate(s) to trust for wss:// instead of the system's")
    p.add_argument("--key", required=True)
    p.add_argument("--channels", nargs="+", default=["account"])
    p.add_argument("--resume-from", type=int)
    p.add_argument("--signal", help="a signal body to send once connected")
    p.add_argument("--count", type=int, default=0, help="stop after this many messages (0 = never)")
    p.add_argument("--until", metavar="TYPE", help="stop after the first message of this type (e.g. resumed)")
    args = p.parse_args()
    last_account_seq = args.resume_from
    seen = 0
    while True:
        try:
            sock, buf = connect(args.url, args.key, last_account_seq, args.cafile)
        except ssl.SSLCertVerificationError as e:
            print("connect failed: %s" % e, file=sys.stderr)
            return 1  # retrying would not help
        except (OSError, ConnectionError) as e:
            print("connect failed: %s; retrying in 1 s" % e, file=sys.stderr)
            time.sleep(1)
            continue
        send_json(sock, {"type": "subscribe", "channels": args.channels})
        if args.signal:
            send_json(sock, {"type": "signal", "request_id": 1, "body": json.loads(args.signal)})
            args.signal = None
        for opcode, payload in frames(sock, buf):
            if opcode == 0x9:  # ping: answer with the same payload
                send(sock, 0xA, payload)
            elif opcode == 0x8:  # close
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                print("closed by the node: %d %s" % (code, payload[2:].decode(errors="replace")), file=sys.stderr)
                if code in (4001, 4003, 1003, 1007, 1009):
                    return 1  # reconnecting would not help
                break
            elif opcode == 0x1:
                for msg in json.loads(payload):
                    print(json.dumps(msg), flush=True)
                    if msg["type"] == "resume_failed":
                        print("resume failed: refetch state over REST", file=sys.stderr)
                        last_account_seq = None
                    elif msg["type"] in ("event", "position") and msg.get("event", {}).get("type") != "quote":
                        last_account_seq = msg["seq"]
                    seen += 1
                    if (args.count and seen >= args.count) or msg["type"] == args.until:
                        return 0
        sock.close()
        print("disconnected; resuming after seq %s" % last_account_seq, file=sys.stderr)
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
