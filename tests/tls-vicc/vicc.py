#!/usr/bin/env python3
"""A vicc of the secure link written against docs/TLS.md with Python's ssl (OpenSSL),
not rustls: it proves that another TLS stack can pair with a tls=yes reader.

    vicc.py HOST PORT KEY.pem PINNED_FINGERPRINT [PAIRPORT-TOKEN]

With PAIRPORT-TOKEN (a URI's pair= value, vpcd-config tls pair) it first pairs as
docs/TLS.md's "The exchange on the wire" says, then connects. KEY.pem holds the card's private key and certificate (vpcd-config tls init writes
one). The reader's certificate is accepted only if the SHA-256 of its
SubjectPublicKeyInfo is PINNED_FINGERPRINT. The card answers GET ATR with
3B 80 80 01 01 and echoes every APDU with 90 00, until the reader closes.
"""
import hashlib
import socket
import ssl
import struct
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

ATR = bytes([0x3B, 0x80, 0x80, 0x01, 0x01])


def spki_sha256(der_cert):
    cert = x509.load_der_x509_certificate(der_cert)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def read_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def connect(ctx, host, port, pinned):
    """A TLS connection whose server key is the pinned one, or None."""
    s = ctx.wrap_socket(socket.create_connection((host, port)))
    got = spki_sha256(s.getpeercert(binary_form=True))
    if got != pinned.lower():
        print(f"vicc.py: reader key {got} is not the pinned {pinned}", flush=True)
        s.close()
        return None
    return s


def pair(ctx, host, pinned, offer):
    """One-step pairing: the token to the pairing port, one line back."""
    pair_port, token = offer.split("-", 1)
    s = connect(ctx, host, int(pair_port), pinned)
    if s is None:
        return False
    s.sendall(f"vpcd-pair 1 {token}\n".encode("ascii"))
    answer = b""
    while not answer.endswith(b"\n") and len(answer) < 256:
        chunk = s.recv(256 - len(answer))
        if not chunk:
            break
        answer += chunk
    line = answer.decode("utf-8", "replace").rstrip("\n")
    if line == "OK":
        print("vicc.py: paired", flush=True)
        return True
    why = line[len("REFUSED "):] if line.startswith("REFUSED ") else repr(line)
    print(f"vicc.py: pairing refused: {why}", flush=True)
    return False


def main():
    host, port, key, pinned = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # No CA: the key is pinned below, by hand, before a single frame is sent.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(key)
    if len(sys.argv) > 5 and not pair(ctx, host, pinned, sys.argv[5]):
        return 1
    s = connect(ctx, host, port, pinned)
    if s is None:
        return 1
    print(f"vicc.py: TLS {s.version()}, reader key pinned", flush=True)
    while True:
        header = read_exact(s, 2)
        if header is None:
            print("vicc.py: reader closed", flush=True)
            return 0
        (length,) = struct.unpack(">H", header)
        payload = read_exact(s, length)
        if payload is None:
            return 1
        if length == 1:
            if payload[0] == 4:
                s.sendall(struct.pack(">H", len(ATR)) + ATR)
            continue
        reply = payload + b"\x90\x00"
        s.sendall(struct.pack(">H", len(reply)) + reply)


if __name__ == "__main__":
    sys.exit(main())
