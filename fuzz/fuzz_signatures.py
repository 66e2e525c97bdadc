"""atheris harness: --verify-signatures' parsers. The first byte picks the input: 0 a multikey
string, 1 a DID document (JSON), 2 a signed commit block. A multikey or document gives a key or
KeyFormatError; a block gives a verdict (never "verified" under the fixed key) or a drop reason,
never an exception. Run via `make fuzz`."""
import json
import sys

import atheris

with atheris.instrument_imports(include=["jetstream"]):
    from jetstream.ingest.verify import KeyFormatError, check_commit, parse_multikey, signing_key_of

# A real corpus key (did:plc:2a7ygipkrbh544aqhcav53oy's); no fuzzed block can carry its signature.
FIXED_KEY = parse_multikey("zQ3shrc8v5X6ZiANcZxA6JerfT2T4SskeCGxpmtDfMuHF9KRj")
DID = "did:plc:2a7ygipkrbh544aqhcav53oy"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, rest = data[0] % 3, data[1:]
    if kind == 0:
        try:
            parse_multikey(rest.decode("utf-8", "replace"))
        except KeyFormatError:
            pass
    elif kind == 1:
        try:
            document = json.loads(rest)
        except ValueError:
            return
        try:
            signing_key_of(document, DID)
        except KeyFormatError:
            pass
    else:
        verdict = check_commit(rest, DID, "2222222222222", FIXED_KEY)  # no real commit has this rev
        assert verdict is not None and verdict[0] in ("bad_signature", "did_mismatch", "rev_mismatch")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
