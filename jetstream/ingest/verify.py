"""Commit signatures: an account's signing key from its DID document, and the check of a signed commit.

Owns: base58btc and multikey parsing (`did:key`-style `z…` strings with the secp256k1-pub and
p256-pub multicodec prefixes, and the older `EcdsaSecp256k1VerificationKey2019` /
`EcdsaSecp256r1VerificationKey2019` forms), picking the `#atproto` key out of a DID document,
the unsigned commit's bytes (the signed commit block minus its `sig` entry), the low-S rule,
and the verdict on one signed commit (see https://atproto.com/specs/cryptography and
https://atproto.com/specs/repository#commit-objects).
It must never do I/O and never do elliptic-curve arithmetic itself: K-256 signatures are checked
by libsecp256k1 (coincurve), P-256 ones by OpenSSL (cryptography). Pure: bytes in, values out;
bad input raises KeyFormatError / CommitFormatError or gives a drop reason, never anything else.
"""
from __future__ import annotations

import hashlib

import coincurve
import libipld
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

CURVE_K256 = "k256"
CURVE_P256 = "p256"

# Multicodec varint prefixes of compressed public keys (https://github.com/multiformats/multicodec).
MULTICODEC_PREFIXES = {b"\xe7\x01": CURVE_K256, b"\x80\x24": CURVE_P256}
# The two legacy verification-method types atproto documents may still carry: the multibase
# value is the bare key (no multicodec prefix), compressed or not.
LEGACY_KEY_TYPES = {"EcdsaSecp256k1VerificationKey2019": CURVE_K256, "EcdsaSecp256r1VerificationKey2019": CURVE_P256}

# Group orders; atproto requires s <= n/2 ("low-S") so a signature has exactly one valid form.
CURVE_ORDERS = {
    CURVE_K256: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    CURVE_P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}

SIGNATURE_BYTES = 64  # raw r || s, 32 bytes each
MAX_MULTIBASE_CHARS = 256  # a compressed key is ~50 chars, an uncompressed legacy one ~90
_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_VALUES = {char: index for index, char in enumerate(_BASE58_ALPHABET)}
_SIG_KEY = b"\x63sig"  # the DAG-CBOR text string "sig"
_MAX_CBOR_DEPTH = 16  # a commit is a flat map; deeper nesting is not a commit


class KeyFormatError(ValueError):
    """A key or DID document we cannot take a signing key from; `reason` is a short token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CommitFormatError(ValueError):
    """A signed commit block that is not a DAG-CBOR map with a 64-byte `sig`."""


def base58btc_decode(text: str) -> bytes:
    """Bitcoin's base58 alphabet -> bytes (leading '1's are leading zero bytes)."""
    if len(text) > MAX_MULTIBASE_CHARS:
        raise KeyFormatError("key_too_long")
    number = 0
    for char in text:
        value = _BASE58_VALUES.get(char)
        if value is None:
            raise KeyFormatError("bad_base58")
        number = number * 58 + value
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * zeros + body


class PublicKey:
    """A signing key ready to verify: the curve, its SEC1 point, and the library's key object."""

    __slots__ = ("curve", "point", "_key")

    def __init__(self, curve: str, point: bytes) -> None:
        if len(point) not in (33, 65):
            raise KeyFormatError("bad_point_length")
        self.curve = curve
        self.point = point
        try:
            if curve == CURVE_K256:
                self._key = coincurve.PublicKey(point)
            else:
                self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise KeyFormatError("point_not_on_curve") from None

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when `signature` (raw r||s, low-S) signs SHA-256(message) with this key."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        order = CURVE_ORDERS[self.curve]
        if not (0 < r < order and 0 < s <= order // 2):
            return False  # out of range, or high-S: atproto accepts only the low-S form
        der = encode_dss_signature(r, s)
        if self.curve == CURVE_K256:
            try:
                return self._key.verify(der, message, hasher=_sha256)
            except ValueError:
                return False
        try:
            self._key.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def multikey(self) -> str:
        """This key as a `z…` multikey string (compressed point)."""
        return encode_multikey(self.curve, self.point)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.curve, self.point) == (other.curve, other.point)

    def __hash__(self) -> int:
        return hash((self.curve, self.point))

    def __repr__(self) -> str:
        return f"PublicKey({self.curve}, {self.point.hex()})"


def _sha256(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def base58btc_encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, digit = divmod(number, 58)
        chars.append(_BASE58_ALPHABET[digit])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(chars))


def encode_multikey(curve: str, point: bytes) -> str:
    """`z` + base58btc(multicodec prefix + SEC1 point): the Multikey form atproto publishes."""
    prefix = {name: code for code, name in MULTICODEC_PREFIXES.items()}[curve]
    return "z" + base58btc_encode(prefix + point)


def parse_multikey(text: str) -> PublicKey:
    """A `z…` multikey (multibase base58btc of multicodec prefix + compressed point) -> PublicKey."""
    if type(text) is not str or not text.startswith("z"):
        raise KeyFormatError("not_base58btc_multibase")
    raw = base58btc_decode(text[1:])
    curve = MULTICODEC_PREFIXES.get(raw[:2])
    if curve is None:
        raise KeyFormatError("unknown_multicodec")
    return PublicKey(curve, raw[2:])


def parse_legacy_key(method_type: str, text: str) -> PublicKey:
    """The 2019 verification-method forms: multibase of the bare (un-prefixed) SEC1 point."""
    curve = LEGACY_KEY_TYPES[method_type]
    if type(text) is not str or not text.startswith("z"):
        raise KeyFormatError("not_base58btc_multibase")
    return PublicKey(curve, base58btc_decode(text[1:]))


def signing_key_of(document: object, did: str) -> PublicKey:
    """The atproto signing key (`#atproto` verification method) of `did`'s DID document."""
    if not isinstance(document, dict):
        raise KeyFormatError("doc_not_an_object")
    if document.get("id") != did:
        raise KeyFormatError("doc_id_mismatch")
    methods = document.get("verificationMethod")
    if not isinstance(methods, list):
        raise KeyFormatError("no_verification_method")
    for method in methods:
        if not isinstance(method, dict) or method.get("id") not in (did + "#atproto", "#atproto"):
            continue
        method_type = method.get("type")
        value = method.get("publicKeyMultibase")
        if method_type == "Multikey":
            return parse_multikey(value)
        if method_type in LEGACY_KEY_TYPES:
            return parse_legacy_key(method_type, value)
        raise KeyFormatError("unsupported_key_type")
    raise KeyFormatError("no_atproto_key")


# ---------------------------------------------------------------------------
# The signed commit block
# ---------------------------------------------------------------------------

def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head) of the CBOR item at `pos`."""
    if pos >= len(data):
        raise CommitFormatError("truncated")
    initial = data[pos]
    major, info = initial >> 5, initial & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise CommitFormatError("indefinite_or_reserved_length")  # not DAG-CBOR
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise CommitFormatError("truncated")
    return major, int.from_bytes(data[pos:pos + size], "big"), pos + size


def _item_end(data: bytes, pos: int, depth: int = 0) -> int:
    """The position just after the CBOR item starting at `pos`."""
    if depth > _MAX_CBOR_DEPTH:
        raise CommitFormatError("too_deep")
    major, argument, pos = _head(data, pos)
    if major in (2, 3):
        end = pos + argument
        if end > len(data):
            raise CommitFormatError("truncated")
        return end
    if major in (4, 5):
        count = argument * (2 if major == 5 else 1)
        if count > len(data) - pos:  # every item takes at least one byte
            raise CommitFormatError("truncated")
        for _ in range(count):
            pos = _item_end(data, pos, depth + 1)
        return pos
    if major == 6:
        return _item_end(data, pos, depth + 1)
    return pos  # 0, 1 (integers) and 7 (simple values, floats): the head is the item


def _map_head(count: int) -> bytes:
    if count < 24:
        return bytes((0xA0 | count,))
    return b"\xb8" + bytes((count,)) if count < 256 else b"\xb9" + count.to_bytes(2, "big")


def split_signed_commit(block: bytes) -> tuple[bytes, bytes]:
    """(unsigned commit bytes, sig) of a signed commit block.

    The unsigned commit is the same map without its `sig` entry. DAG-CBOR orders map keys
    canonically, so removing one entry from a canonical block gives exactly the canonical
    encoding of the smaller map; no decode and re-encode round trip is needed. A block that
    was not canonical yields bytes its signer never signed, and so a failed verification.
    """
    block = bytes(block)
    major, count, pos = _head(block, 0)
    if major != 5:
        raise CommitFormatError("not_a_map")
    entries_start, sig_span, signature = pos, None, None
    for _ in range(count):
        key_start = pos
        key_end = _item_end(block, pos)
        value_end = _item_end(block, key_end)
        if block[key_start:key_end] == _SIG_KEY:
            value_major, length, value_pos = _head(block, key_end)
            if value_major != 2 or length != SIGNATURE_BYTES:
                raise CommitFormatError("sig_not_64_bytes")
            sig_span, signature = (key_start, value_end), block[value_pos:value_end]
        pos = value_end
    if pos != len(block):
        raise CommitFormatError("trailing_bytes")
    if sig_span is None:
        raise CommitFormatError("no_sig")
    unsigned = _map_head(count - 1) + block[entries_start:sig_span[0]] + block[sig_span[1]:]
    return unsigned, signature


def commit_fields(block: bytes) -> tuple[object, object]:
    """(did, rev) of a signed commit block, whatever their types."""
    try:
        commit = libipld.decode_dag_cbor(bytes(block))
    except (ValueError, RecursionError):
        raise CommitFormatError("undecodable") from None
    if not isinstance(commit, dict):
        raise CommitFormatError("not_a_map")
    return commit.get("did"), commit.get("rev")


def check_commit(block: bytes, repo: str, rev: str, key: PublicKey) -> tuple[str, str] | None:
    """None when the signed commit `block` is `repo`'s commit `rev`, signed with `key`.

    Otherwise (reason, detail): did_mismatch (the commit names another account than the
    frame's `repo`), rev_mismatch (another rev than the frame's), bad_signature (an unreadable
    block, a missing or malformed `sig`, a high-S or wrong signature).
    """
    try:
        commit_did, commit_rev = commit_fields(block)
        unsigned, signature = split_signed_commit(block)
    except CommitFormatError as exc:
        return "bad_signature", f"commit_block={exc}"
    if commit_did != repo:
        return "did_mismatch", f"commit_did={str(commit_did)[:100]!r}"
    if commit_rev != rev:
        return "rev_mismatch", f"commit_rev={str(commit_rev)[:20]!r} frame_rev={rev[:20]!r}"
    if not key.verify(unsigned, signature):
        return "bad_signature", f"key={key.curve}"
    return None
