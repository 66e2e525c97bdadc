"""atheris harness: client input parsing. The first byte picks the parser (even: the
/subscribe query string, odd: a client text message). The query gives options or
BadRequest; a message gives an update, a close with a reason of at most 123 bytes, or
None. Run via `make fuzz`."""
import sys

import atheris

with atheris.instrument_imports(include=["jetstream"]):
    from jetstream.server.params import (
        MAX_CLOSE_REASON_BYTES,
        BadRequest,
        CloseConnection,
        interpret_client_message,
        parse_subscribe_query,
    )


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        try:
            parse_subscribe_query(data[1:], "", 1_700_000_000_000_000)
        except BadRequest as err:
            assert err.text
        return
    outcome = interpret_client_message(data[1:])
    if isinstance(outcome, CloseConnection):
        assert 0 < len(outcome.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
