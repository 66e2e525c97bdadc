"""zstd for compressed subscriptions: which dictionary, and decoding one frame.

Owns: resolving the `dictionary=` argument (bytes, a path, or None meaning "ask the
server's GET /zstd-dictionary, else go without"), and ZstdFrameDecoder, which turns one
binary websocket message (one standalone zstd frame, docs/protocol.md §7) into JSON bytes
and says clearly which dictionary id a frame needs when it cannot decode it.
It must never guess a dictionary: a frame naming a dictionary we do not hold is an
error that tells the user to pass `dictionary=path`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
import urllib.request

import zstandard

log = logging.getLogger(__name__)

# Frames carry their content size (v1 and this server write it); this bound only applies
# to a frame that does not, and matches the server's 16 MiB inbound frame limit.
MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024
DICTIONARY_FETCH_TIMEOUT_S = 10.0
USER_AGENT = "jetstream-py-client/0.1"


class DictionaryMismatch(Exception):
    """A frame names a zstd dictionary id that the decoder does not hold."""

    def __init__(self, needed_id: int, held_id: int) -> None:
        held = f"dictionary id {held_id}" if held_id else "no dictionary"
        super().__init__(f"zstd frame needs dictionary id {needed_id} but the client holds {held}; "
                         "pass dictionary=<path of the server's dictionary> (tail: --zstd-dictionary)")
        self.needed_id = needed_id
        self.held_id = held_id


def frame_dictionary_id(frame: bytes) -> int:
    """The dictionary id in a zstd frame header (0: none); ZstdError if it is no frame."""
    return zstandard.get_frame_parameters(frame).dict_id


class ZstdFrameDecoder:
    """Decodes standalone zstd frames with one (optional) formatted dictionary."""

    def __init__(self, dictionary: bytes | None = None) -> None:
        if dictionary:
            loaded = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_FULLDICT)
            self.dictionary_id = loaded.dict_id()
            self._decompressor = zstandard.ZstdDecompressor(dict_data=loaded)
        else:
            self.dictionary_id = 0
            self._decompressor = zstandard.ZstdDecompressor()

    def decode(self, frame: bytes) -> bytes:
        needed = frame_dictionary_id(frame)
        if needed and needed != self.dictionary_id:
            raise DictionaryMismatch(needed, self.dictionary_id)
        return self._decompressor.decompress(frame, max_output_size=MAX_DECOMPRESSED_BYTES)


def read_dictionary_argument(dictionary: bytes | str | os.PathLike | None) -> bytes | None:
    """bytes as given, a path's contents, or None (the caller then asks the server)."""
    if dictionary is None or isinstance(dictionary, (bytes, bytearray, memoryview)):
        return None if dictionary is None else bytes(dictionary)
    with open(dictionary, "rb") as handle:
        return handle.read()


def _http_get(url: str, timeout_s: float) -> bytes | None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


async def fetch_dictionary(url: str, timeout_s: float = DICTIONARY_FETCH_TIMEOUT_S) -> bytes | None:
    """The server's dictionary from GET /zstd-dictionary; None if it has none or cannot say.

    Runs the blocking urllib call in a thread: it happens once per client, and urllib
    already handles TLS, redirects and chunked bodies.
    """
    try:
        body = await asyncio.to_thread(_http_get, url, timeout_s)
    except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError for odd URLs
        log.warning("event=zstd_dictionary_fetch_failed url=%s error=%r", url, exc)
        return None
    if body is None:
        log.info("event=zstd_dictionary_unavailable url=%s status=404", url)
    return body or None
