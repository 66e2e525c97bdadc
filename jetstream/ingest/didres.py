"""DID resolution for signature checks: DID -> the account's current signing key, cached.

Owns: fetching DID documents (`did:plc` from `<plc-url>/<did>`, `did:web` from
`https://<host>/.well-known/did.json`, see https://atproto.com/specs/did), the bounded LRU cache
of keys with its TTL and negative caching, de-duplication of concurrent look-ups of one DID,
the concurrency cap, the per-fetch timeout and the response size cap, and the resolution metrics.
It must never block the event loop (all HTTP is aiohttp on the running loop), never raise to its
caller for a bad or missing document (a failure is a cached negative entry with a reason), and
never verify signatures itself (jetstream/ingest/verify.py does).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections import OrderedDict
from typing import Callable
from urllib.parse import unquote

import aiohttp

from jetstream import metrics
from jetstream.ingest.verify import KeyFormatError, PublicKey, signing_key_of

log = logging.getLogger(__name__)

# Bound once: labels() per look-up costs a lock and a dict walk, on every commit.
_CACHE_HIT, _CACHE_NEGATIVE_HIT, _CACHE_MISS = (metrics.DIDRES_CACHE.labels(result)
                                                for result in ("hit", "negative_hit", "miss"))
_PLC_DID = re.compile(r"did:plc:[a-z2-7]{24}")
# Failures that say the directory, not the DID, is the problem; this many in a row is an outage.
OUTAGE_REASONS = ("timeout", "connect_failed")
PLC_OUTAGE_AFTER_FAILURES = 3
# atproto's did:web is a bare hostname (a port, percent-encoded, only for local testing).
_WEB_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?")


class Resolution:
    """One cache entry: a key, or the reason there is none; both expire."""

    __slots__ = ("key", "failure", "fetched_at", "expires_at", "refreshed")

    def __init__(self, key: PublicKey | None, failure: str, fetched_at: float, expires_at: float,
                 refreshed: bool = False) -> None:
        self.key = key
        self.failure = failure  # "" when key is set
        self.fetched_at = fetched_at
        self.expires_at = expires_at
        self.refreshed = refreshed  # fetched again after a bad signature under the previous key


def document_url(did: str, plc_url: str, did_web_scheme: str = "https") -> str:
    """Where `did`'s document lives; KeyFormatError for a DID method or form we do not resolve."""
    if did.startswith("did:plc:"):
        if not _PLC_DID.fullmatch(did):
            raise KeyFormatError("bad_plc_did")
        return f"{plc_url.rstrip('/')}/{did}"
    if did.startswith("did:web:"):
        host = unquote(did[len("did:web:"):])
        if not _WEB_HOST.fullmatch(host) or host.startswith((".", "-")):
            raise KeyFormatError("unsupported_did_web")  # paths (did:web:host:path) are not atproto's
        if did_web_scheme == "https" and not _is_public_hostname(host):
            raise KeyFormatError("did_web_not_public")
        return f"{did_web_scheme}://{host}/.well-known/did.json"
    raise KeyFormatError("unsupported_did_method")


def _is_public_hostname(host: str) -> bool:
    """A DNS name with a dot and no port: not localhost, not an IP literal.

    atproto allows ports in did:web only for local testing; refusing them and IP literals keeps
    a crafted did:web from making the daemon fetch from its own network by address.
    """
    if ":" in host or "." not in host or host.lower() in ("localhost", "localhost."):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


class DidResolver:
    """Async DID -> signing key resolution with an LRU cache; one instance per event loop.

    `cached(did)` is the synchronous fast path (a fresh entry or None); `resolve(did)` starts
    or joins a fetch and returns a future of the new entry. Failed resolutions are cached for
    `negative_ttl_s` so an unreachable directory is not asked again for every commit.
    `did_web_scheme` is "https" in production; tests serve did:web documents over plain http.
    """

    def __init__(self, *, plc_url: str, cache_size: int, cache_ttl_s: float, negative_ttl_s: float,
                 timeout_s: float, max_concurrency: int, max_doc_bytes: int,
                 did_web_scheme: str = "https", clock: Callable[[], float] = time.monotonic,
                 problems=None) -> None:
        self.plc_url = plc_url
        self.cache_size = max(1, cache_size)
        self.cache_ttl_s = cache_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.timeout_s = timeout_s
        self.max_doc_bytes = max_doc_bytes
        self.did_web_scheme = did_web_scheme
        self.clock = clock
        self._cache: OrderedDict[str, Resolution] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self._limit = asyncio.Semaphore(max(1, max_concurrency))
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # Plain counters for tests and the bench (the prometheus ones are process-wide).
        self.hits = self.misses = self.fetches = self.failures = 0
        self.plc = PlcOutage(plc_url, problems)

    # -- the cache --------------------------------------------------------------------------------
    def peek(self, did: str) -> Resolution | None:
        """The fresh cache entry for `did`, or None; not counted, LRU order unchanged."""
        entry = self._cache.get(did)
        return entry if entry is not None and entry.expires_at > self.clock() else None

    def cached(self, did: str, count: bool = True) -> Resolution | None:
        """The fresh cache entry for `did` (a key or a negative one), or None; counts hit/miss."""
        entry = self._cache.get(did)
        if entry is not None and entry.expires_at > self.clock():
            self._cache.move_to_end(did)
            if not count:
                return entry
            self.hits += 1
            (_CACHE_HIT if entry.key is not None else _CACHE_NEGATIVE_HIT).inc()
            return entry
        if not count:
            return None
        self.misses += 1
        _CACHE_MISS.inc()
        return None

    def remember(self, did: str, key: PublicKey) -> None:
        """Cache a key known in advance (benchmarks; an operator-supplied key list would use it too)."""
        now = self.clock()
        self._store(did, Resolution(key, "", now, now + self.cache_ttl_s))

    def invalidate(self, did: str) -> None:
        """Forget `did` (an #identity event: its keys may have rotated)."""
        self._cache.pop(did, None)

    def _store(self, did: str, entry: Resolution) -> None:
        self._cache[did] = entry
        self._cache.move_to_end(did)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- fetching ---------------------------------------------------------------------------------
    def resolve(self, did: str, refresh: bool = False) -> asyncio.Future:
        """A future of `did`'s fresh Resolution; concurrent calls for one DID share one fetch.

        refresh: this fetch replaces a key a signature just failed under (Resolution.refreshed).
        """
        future = self._inflight.get(did)
        if future is None:
            future = asyncio.ensure_future(self._resolve(did, refresh))
            self._inflight[did] = future
        return future

    def resolving(self, did: str) -> bool:
        return did in self._inflight

    async def _resolve(self, did: str, refresh: bool) -> Resolution:
        try:
            async with self._limit:
                key, failure = await self._fetch_key(did)
            now = self.clock()
            if key is not None:
                entry = Resolution(key, "", now, now + self.cache_ttl_s, refresh)
            else:
                self.failures += 1
                metrics.DIDRES_FAILURES.labels(failure).inc()
                entry = Resolution(None, failure, now, now + self.negative_ttl_s)
            self._store(did, entry)
            return entry
        finally:
            self._inflight.pop(did, None)

    async def _fetch_key(self, did: str) -> tuple[PublicKey | None, str]:
        """(key, "") or (None, failure reason). Never raises but for cancellation."""
        try:
            url = document_url(did, self.plc_url, self.did_web_scheme)
        except KeyFormatError as exc:
            return None, exc.reason
        method = "plc" if did.startswith("did:plc:") else "web"
        self.fetches += 1
        metrics.DIDRES_FETCHES.labels(method).inc()
        started = time.perf_counter()
        try:
            document = await asyncio.wait_for(self._get_json(url), self.timeout_s)
        except asyncio.TimeoutError:
            failure = "timeout"
        except _FetchFailed as exc:
            failure = exc.reason
        except (aiohttp.ClientError, OSError) as exc:
            failure = "connect_failed"
            log.debug("event=did_fetch_failed did=%s error=%r", did, exc)
        else:
            failure = ""
        metrics.DIDRES_FETCH_SECONDS.observe(time.perf_counter() - started)
        if method == "plc":
            self.plc.record(failure)
        if failure:
            # While the directory is down every look-up fails alike: its one outage line says so.
            quiet = method == "plc" and failure_is_outage(failure) and self.plc.down
            log.log(logging.DEBUG if quiet else logging.WARNING, "event=did_unresolved did=%s reason=%s", did, failure)
            return None, failure
        try:
            return signing_key_of(document, did), ""
        except KeyFormatError as exc:
            log.warning("event=did_unresolved did=%s reason=%s", did, exc.reason)
            return None, exc.reason

    async def _get_json(self, url: str) -> object:
        if self._session is None:
            if self._closed:
                raise _FetchFailed("resolver_closed")
            self._session = aiohttp.ClientSession(
                headers={"Accept": "application/did+ld+json, application/json"})
        # No redirects: a DID document is served where the DID says, not somewhere it points to.
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status in (404, 410):
                raise _FetchFailed("not_found")
            if response.status != 200:
                raise _FetchFailed(f"http_{response.status}")
            body = await response.content.read(self.max_doc_bytes + 1)
        if len(body) > self.max_doc_bytes:
            raise _FetchFailed("doc_too_large")
        try:
            return json.loads(body)
        except ValueError:
            raise _FetchFailed("bad_json") from None

    async def close(self) -> None:
        """Cancel fetches in flight and close the HTTP session."""
        self._closed = True
        inflight = list(self._inflight.values())
        for future in inflight:
            future.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


class _FetchFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def failure_is_outage(failure: str) -> bool:
    """A fetch failure that says the directory is unreachable or failing (not that the DID is bad)."""
    return failure in OUTAGE_REASONS or (failure.startswith("http_5") and len(failure) == 8)


class PlcOutage:
    """Whether the did:plc directory answers: one warning and one /healthz problem per outage.

    An outage starts after PLC_OUTAGE_AFTER_FAILURES look-ups in a row failed for the directory's
    sake (timeout, refused, 5xx) and ends at the first answer (a document, or a 404 for one DID).
    Meanwhile each failed look-up is only counted; the end line says how many there were.
    """

    def __init__(self, plc_url: str, problems=None) -> None:
        self.plc_url = plc_url
        self.problems = problems
        self.failures_in_row = 0
        self.down = False
        self.since = 0.0
        self.failed_lookups = 0  # during the current (or last) outage
        self.last_reason = ""

    def record(self, failure: str) -> None:
        """One did:plc fetch ended: "" (answered), or its failure reason."""
        if failure and failure_is_outage(failure):
            self.failures_in_row += 1
            self.last_reason = failure
            if self.down:
                self.failed_lookups += 1
                self._raise()
            elif self.failures_in_row >= PLC_OUTAGE_AFTER_FAILURES:
                self._begin()
            return
        self.failures_in_row = 0
        if self.down:
            self._end()

    def _begin(self) -> None:
        self.down = True
        self.since = time.time()
        self.failed_lookups = self.failures_in_row
        metrics.PLC_UNREACHABLE.set(1)
        log.warning('event=plc_unreachable plc_url=%s reason=%s failed_lookups=%d msg="the DID directory does not '
                    'answer; commits of authors whose keys are not cached get --unresolved-did after waiting; '
                    'one line when it answers again"', self.plc_url, self.last_reason, self.failed_lookups)
        self._raise()

    def _raise(self) -> None:
        if self.problems is None:
            return
        self.problems.raise_problem(
            "plc_unreachable",
            f"DID directory {self.plc_url} unreachable ({self.last_reason}); {self.failed_lookups} look-ups failed "
            f"since {time.strftime('%H:%M:%S', time.gmtime(self.since))} UTC",
            "check that this host reaches --plc-url (DNS, firewall, the directory's status); meanwhile new authors' "
            "commits wait up to --unresolved-did-wait, then get --unresolved-did")

    def _end(self) -> None:
        self.down = False
        metrics.PLC_UNREACHABLE.set(0)
        log.warning("event=plc_reachable plc_url=%s failed_lookups=%d outage_s=%.1f", self.plc_url,
                    self.failed_lookups, time.time() - self.since)
        if self.problems is not None:
            self.problems.clear("plc_unreachable")
