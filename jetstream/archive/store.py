"""Where sealed segments are kept: a local directory, or an object store (S3, GCS, Azure, file://) via obstore.

Owns: the handful of operations the archive needs from its storage, with one meaning for both
kinds: list the sealed segment objects (`seg_<base36>.jss`, ascending by index, each with its
size, a version token that changes when the object is replaced, and its modification time), read
a byte range of one (optionally only if it is still the listed version), read one whole, head,
put (atomic publish: a reader sees no object or the whole object, never a part; S3/GCS/Azure
PUTs are atomic, the directory writes a temporary file and renames it), and presign a GET URL
where the store can (S3/GCS/Azure). Credentials come from the usual environment (AWS_*,
GOOGLE_*, AZURE_*), as obstore reads them; AWS_ENDPOINT_URL / AWS_ALLOW_HTTP point it at any
S3-compatible endpoint. Every failure is a `StoreError` (ObjectMissing, ObjectChanged).
It must never parse segment bytes (manifest.py and reader.py do), never cache (cache.py does),
and never delete an object.
"""
from __future__ import annotations

import contextlib
import datetime
import mmap
import os
import urllib.parse
from typing import NamedTuple

from jetstream.archive.format import parse_segment_name

OBJECT_STORE_SCHEMES = ("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "file://",
                        "memory://")
_SIGNING_SCHEMES = ("s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://")
_TIMEOUTS = {"timeout": "120s", "connect_timeout": "10s"}
_NO_ETAG = "no-etag:"
_RETRY = {"max_retries": 3, "retry_timeout": datetime.timedelta(seconds=30)}



def file_version(st: os.stat_result) -> str:
    """A file's version token, as listings and downloads compare it: its size and mtime (ns)."""
    return f"{st.st_size}:{st.st_mtime_ns}"

class StoreError(Exception):
    """A storage operation failed (network, permissions, a missing bucket...)."""


class ObjectMissing(StoreError):
    """The object is not there (any more)."""


class ObjectChanged(StoreError):
    """The object is no longer the version that was listed (replaced since)."""


class ObjectExists(StoreError):
    """A create-only put found the name already taken (nothing was written)."""


class StoredObject(NamedTuple):
    name: str  # the segment file name, relative to the store's root
    index: int  # its segment index (from the name)
    size: int
    version: str  # changes when the object is replaced: an ETag, or size:mtime_ns of a file
    mtime_ns: int


def is_object_store_url(location: str) -> bool:
    return location.startswith(OBJECT_STORE_SCHEMES)


def open_store(location: str) -> ArchiveStore:
    """An object store for a URL with one of OBJECT_STORE_SCHEMES, else a local directory."""
    if is_object_store_url(location):
        return ObjectStore(location)
    return LocalStore(location)


class ArchiveStore:
    """What both stores offer (see the module docstring)."""

    location = ""

    def list_segments(self) -> list[StoredObject]:
        raise NotImplementedError

    def read_range(self, name: str, offset: int, length: int, version: str | None = None) -> bytes:
        """Exactly `length` bytes from `offset` (fewer only at the object's end); ObjectChanged when
        `version` is given and the object is no longer it."""
        raise NotImplementedError

    def read_range_into(self, name: str, offset: int, length: int, fd: int, version: str | None = None) -> int:
        """Copy [offset, offset+length) into `fd` at the same offset without holding it in memory; the byte count."""
        data = self.read_range(name, offset, length, version)
        written = 0
        view = memoryview(data)
        while written < len(view):
            written += os.pwrite(fd, view[written:], offset + written)
        return written

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def head(self, name: str) -> StoredObject:
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> StoredObject:
        """Publish `data` as `name` atomically (readers see all of it or nothing)."""
        raise NotImplementedError

    def presign(self, name: str, expires_s: float) -> str | None:
        """A URL anyone may GET the object from until it expires; None where the store cannot sign."""
        return None

    def local_path(self, name: str) -> str | None:
        """The object's path on this machine's disk when it is a plain file there (served without a cache)."""
        return None

    def describe(self, name: str = "") -> str:
        return self.location.rstrip("/") + ("/" + name if name else "")


def _segment_objects(rows) -> list[StoredObject]:
    found = []
    for name, size, version, mtime_ns in rows:
        index = parse_segment_name(name)
        if index is not None:
            found.append(StoredObject(name, index, size, version, mtime_ns))
    found.sort(key=lambda obj: obj.index)
    return found


class LocalStore(ArchiveStore):
    """A directory of segment files (the default: <data-dir>/archive)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.location = directory

    def list_segments(self) -> list[StoredObject]:
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {self.directory}: {exc.strerror or exc}") from exc
        rows = []
        for entry in entries:
            if parse_segment_name(entry.name) is None:
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # gone between listing and stat
            rows.append((entry.name, st.st_size, file_version(st), st.st_mtime_ns))
        return _segment_objects(rows)

    def _path(self, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise StoreError(f"not a segment name: {name!r}")
        return os.path.join(self.directory, name)

    def read_range(self, name: str, offset: int, length: int, version: str | None = None) -> bytes:
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise ObjectMissing(f"{name} is not in {self.directory}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open {name}: {exc.strerror or exc}") from exc
        try:
            if version is not None:
                st = os.fstat(fd)
                if file_version(st) != version:
                    raise ObjectChanged(f"{name} changed since it was listed")
            parts = []
            while length > 0:
                chunk = os.pread(fd, min(length, 8 << 20), offset)
                if not chunk:
                    break
                parts.append(chunk)
                offset += len(chunk)
                length -= len(chunk)
            return b"".join(parts)
        except OSError as exc:
            raise StoreError(f"cannot read {name}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def read(self, name: str) -> bytes:
        return self.read_range(name, 0, self.head(name).size)

    def head(self, name: str) -> StoredObject:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError as exc:
            raise ObjectMissing(f"{name} is not in {self.directory}") from exc
        except OSError as exc:
            raise StoreError(f"cannot stat {name}: {exc.strerror or exc}") from exc
        return StoredObject(name, parse_segment_name(name) or 0, st.st_size, file_version(st),
                            st.st_mtime_ns)

    def put(self, name: str, data: bytes) -> StoredObject:
        """Write a temporary file, fsync, rename over the name, fsync the directory."""
        path = self._path(name)
        tmp = path + ".tmp"
        try:
            os.makedirs(self.directory, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"cannot write {name}: {exc.strerror or exc}") from exc
        return self.head(name)

    def local_path(self, name: str) -> str | None:
        return self._path(name)


class ObjectStore(ArchiveStore):
    """An obstore store from a URL: s3://bucket/prefix, gs://, az://, file:///path, memory:///."""

    def __init__(self, url: str) -> None:
        try:
            import obstore
            from obstore.store import from_url
        except ImportError as exc:  # a core dependency; this only happens in a broken install
            raise StoreError("--archive-url needs the obstore package (pip install obstore)") from exc
        self._obs = obstore
        self.location = url
        self._signs = url.startswith(_SIGNING_SCHEMES)
        try:
            if url.startswith(("file://", "memory://")):
                if url.startswith("file://"):  # object_store's LocalFileSystem needs its root to exist
                    os.makedirs(urllib.parse.unquote(urllib.parse.urlsplit(url).path), exist_ok=True)
                self._store = from_url(url)
            else:
                # client_options replace what obstore reads from the environment (AWS_ALLOW_HTTP...): keep those
                self._store = from_url(url, client_options=_client_options(), retry_config=_RETRY)
        except Exception as exc:  # noqa: BLE001 - obstore raises its own types for a bad URL or config
            raise StoreError(f"cannot open {url}: {exc}") from exc

    def _wrap(self, name: str, exc: Exception) -> StoreError:
        errors = self._obs.exceptions
        if isinstance(exc, (FileNotFoundError, errors.NotFoundError)):
            return ObjectMissing(f"{self.describe(name)} is not there")
        if isinstance(exc, errors.PreconditionError):
            return ObjectChanged(f"{self.describe(name)} changed since it was listed")
        first_line = str(exc).split("\n", 1)[0]
        return StoreError(f"{self.describe(name)}: {type(exc).__name__}: {first_line[:300]}")

    def list_segments(self) -> list[StoredObject]:
        rows = []
        try:
            for batch in self._obs.list(self._store, chunk_size=1000):
                for meta in batch:
                    path = meta["path"]
                    if "/" in path:
                        continue  # below the prefix: not one of ours (the cache never lives here)
                    rows.append((path, meta["size"], _version(meta), _ns(meta["last_modified"])))
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("", exc) from exc
        return _segment_objects(rows)

    def _get(self, name: str, offset: int, length: int, version: str | None):
        options = {"range": (offset, offset + length)}
        if version is not None and not version.startswith(_NO_ETAG):
            options["if_match"] = version
        return self._obs.get(self._store, name, options=options)

    def read_range(self, name: str, offset: int, length: int, version: str | None = None) -> bytes:
        if length <= 0:
            return b""
        try:
            return bytes(self._get(name, offset, length, version).bytes())
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(name, exc) from exc

    def read_range_into(self, name: str, offset: int, length: int, fd: int, version: str | None = None) -> int:
        if length <= 0:
            return 0
        written = 0
        try:
            result = self._get(name, offset, length, version)
            for chunk in result.stream(min_chunk_size=1 << 20):
                view = memoryview(chunk)
                done = 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], offset + written + done)
                written += done
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(name, exc) from exc
        return written

    def read(self, name: str) -> bytes:
        try:
            return bytes(self._obs.get(self._store, name).bytes())
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(name, exc) from exc

    def head(self, name: str) -> StoredObject:
        try:
            meta = self._obs.head(self._store, name)
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(name, exc) from exc
        return StoredObject(name, parse_segment_name(name) or 0, meta["size"], _version(meta),
                            _ns(meta["last_modified"]))

    def put(self, name: str, data: bytes) -> StoredObject:
        """One PUT (or a multipart upload, completed in one call): the object appears whole or not at all."""
        try:
            self._obs.put(self._store, name, data)
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(name, exc) from exc
        return self.head(name)

    def put_file_new(self, name: str, path: str) -> None:
        """Upload the local file at `path` as `name` only if no object has that name (ObjectExists).

        mode="create" is a conditional PUT (S3 If-None-Match: *, GCS ifGenerationMatch=0, Azure
        If-None-Match: *): the store refuses a second writer atomically, so a retried or
        concurrent upload can never replace a published segment. obstore does a conditional put
        in one request (no multipart). Given a path it reads the whole file into anonymous memory
        (measured: +514 MiB peak RSS for a 256 MiB segment); given a read-only mapping it sends the
        page cache's pages as they are (+0 MiB anonymous, the mapping's pages reclaimable).
        """
        try:
            with open(path, "rb") as handle, _mapped(handle) as body:
                self._obs.put(self._store, name, body, mode="create")
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, (FileExistsError, self._obs.exceptions.AlreadyExistsError)):
                raise ObjectExists(f"{self.describe(name)} already exists") from exc
            raise self._wrap(name, exc) from exc

    def presign(self, name: str, expires_s: float) -> str | None:
        if not self._signs:
            return None
        try:
            return self._obs.sign(self._store, "GET", name, datetime.timedelta(seconds=expires_s))
        except Exception as exc:  # noqa: BLE001
            raise self._wrap(name, exc) from exc


@contextlib.contextmanager
def _mapped(handle):
    """The file's bytes as a read-only memoryview over a mapping (b"" for an empty file)."""
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        yield b""
        return
    with mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as mapping:
        view = memoryview(mapping)
        try:
            yield view
        finally:
            view.release()  # before the mapping closes: a live export would refuse the close


def _client_options() -> dict:
    options = dict(_TIMEOUTS)
    for variable in ("AWS_ALLOW_HTTP", "GOOGLE_ALLOW_HTTP", "AZURE_ALLOW_HTTP", "ALLOW_HTTP"):
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            options["allow_http"] = True
    return options


def _version(meta) -> str:
    """The object's ETag (sent back as If-Match), or, from a store that gives none, size and time."""
    return meta.get("e_tag") or f"{_NO_ETAG}{meta['size']}:{_ns(meta['last_modified'])}"


def _ns(moment) -> int:
    if isinstance(moment, datetime.datetime):
        return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    return 0
