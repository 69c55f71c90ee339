#!/usr/bin/env python3
"""Makes tokens.txt: JWTs for tests/jwt.rs signed by OpenSSL (the `openssl` CLI), not by the
code under test. Run from this directory: `python3 make_tokens.py` (needs only openssl and the
standard library). Each line: ALG, a case name, the token.

Keys (test only): rsa_private.pem (2048-bit, the same key as dataplane/src/auth/testdata),
es256_private.pem (P-256, same), es384_private.pem (P-384, made with
`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384`); HMAC secrets below.
"""
import base64, json, subprocess

ISSUER = "https://issuer.test/tenant/v2.0"
AUDIENCE = "api://sluice"
APP = "22222222-3333-4444-5555-666666666666"
SECRETS = {
    "HS256": "hs256-secret-of-at-least-32-bytes-long!",
    "HS384": "hs384-secret-of-at-least-48-bytes-long-for-sha-384!!",
    "HS512": "hs512-secret-of-at-least-64-bytes-long-for-sha-512, so it is long.",
}
KIDS = {"HS": None, "RS": "rsa", "PS": "rsa", "ES256": "ec256", "ES384": "ec384"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(args, data: bytes) -> bytes:
    return subprocess.run(["openssl", *args], input=data, check=True, capture_output=True).stdout


def der_ecdsa_to_raw(der: bytes, size: int) -> bytes:
    """An ECDSA-Sig-Value (SEQUENCE of two INTEGERs) as JWS wants it: r || s, each `size` bytes."""
    def length(buf, i):
        n = buf[i]
        if n < 0x80:
            return n, i + 1
        k = n & 0x7F
        return int.from_bytes(buf[i + 1 : i + 1 + k], "big"), i + 1 + k

    assert der[0] == 0x30
    _, i = length(der, 1)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n, i = length(der, i + 1)
        out += int.from_bytes(der[i : i + n], "big").to_bytes(size, "big")
        i += n
    return out


def sign(alg: str, message: bytes) -> bytes:
    bits = alg[2:]
    if alg.startswith("HS"):
        return openssl(["dgst", f"-sha{bits}", "-mac", "HMAC", "-macopt", f"key:{SECRETS[alg]}", "-binary"], message)
    if alg.startswith("RS"):
        return openssl(["dgst", f"-sha{bits}", "-sign", "rsa_private.pem", "-binary"], message)
    if alg.startswith("PS"):
        return openssl(["dgst", f"-sha{bits}", "-sign", "rsa_private.pem", "-sigopt", "rsa_padding_mode:pss",
                        "-sigopt", f"rsa_pss_saltlen:{int(bits) // 8}", "-sigopt", f"rsa_mgf1_md:sha{bits}", "-binary"], message)
    der = openssl(["dgst", f"-sha{bits}", "-sign", f"es{bits}_private.pem", "-binary"], message)
    return der_ecdsa_to_raw(der, {"256": 32, "384": 48}[bits])


def token(alg: str, claims: dict) -> str:
    header = {"alg": alg, "typ": "JWT"}
    kid = KIDS.get(alg, KIDS.get(alg[:2]))
    if kid:
        header["kid"] = kid
    message = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return message + "." + b64(sign(alg, message.encode()))


def main():
    valid = {"iss": ISSUER, "aud": AUDIENCE, "appid": APP, "iat": 1764547200, "exp": 4102444800}
    expired = dict(valid, iat=1700000000, exp=1700003600)
    wrong_aud = dict(valid, aud="api://someone-else")
    with open("tokens.txt", "w") as out:
        for alg in ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]:
            for case, claims in [("valid", valid), ("expired", expired), ("wrong_aud", wrong_aud)]:
                out.write(f"{alg} {case} {token(alg, claims)}\n")


main()
