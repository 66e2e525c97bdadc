"""MST path lookup in a commit's CAR: reference twin of `jetstream._core.mst`.

Owns: v1's `rr.GetRecordBytes(path)` walk (docs/architecture.md §3.1) over the repo MST that a
relay #commit carries: from the signed commit's `data` root, decode each node
({"l": CID|null, "e": [{"p", "k", "v", "t"}]}), rebuild its prefix-compressed keys, and
descend into "l" or the previous entry's "t" where the path would sit, as indigo's
findGtOrEqualLeafIndex does (first entry whose key >= path). It answers the leaf CID,
or an MstError whose reason says why not: `missing_node` (a node on the way is not in
the CAR), `bad_node` (a node on the way is not a valid node, or holds an invalid key:
indigo validated every key of a node it loaded, which is how a bad key broke its neighbours in
v1, https://github.com/bluesky-social/jetstream-legacy/issues/54) or `not_found` (the tree has no
such key). It also owns the MST key rule.
Node bytes are not hashed here: block integrity stays the CAR reader's rule (record
blocks always, every block with verify_all_blocks, as v1 did), and a relay able to
corrupt a node could as well send a consistent one, since v1 never checked signatures.
Hashing the ~8 nodes of a real commit's path would double the lookup's cost (measured).
Decoded nodes are cached per MstReader, i.e. per commit, since a commit's ops share the
path from the root. The Cython twin must agree on every input (tests/ingest/test_ingest_mst.py).
It must never do I/O and never read blocks other than the nodes on the path.
"""
from __future__ import annotations

import re

import libipld

from jetstream.errors import MstError

# MST key (the repo path) rules v1's MST lookup enforced, '~' included (indigo 20524de).
_MST_KEY = re.compile(r"[A-Za-z0-9_:.~-]+/[A-Za-z0-9_:.~-]+", re.ASCII)
MST_KEY_MAX = 256
# Levels walked before a path is given up as bad_node. A level is a layer of 2 leading zero
# bits of sha256(key), so an honest repo never nears it; without it a node linking to itself
# (node bytes are not hashed here) would loop forever, and a long chain would cost per op.
MAX_DEPTH = 64
MISSING_NODE = "missing_node"
BAD_NODE = "bad_node"
NOT_FOUND = "not_found"


def is_mst_key(path: str) -> bool:
    """v1's MST key rule for create/update paths: collection/rkey of [A-Za-z0-9_:.~-], <= 256."""
    return len(path) <= MST_KEY_MAX and _MST_KEY.fullmatch(path) is not None


class MstNode(tuple):
    """(left, keys, values, trees): a node with its keys rebuilt; trees[i] is right of keys[i]."""

    __slots__ = ()

    def __new__(cls, left: bytes | None, keys: list[bytes], values: list[bytes], trees: list[bytes | None]):
        return tuple.__new__(cls, (left, keys, values, trees))


def decode_node(block) -> MstNode:
    """The node in `block` with full keys; MstError(bad_node) if it is not a valid MST node."""
    try:
        node = libipld.decode_dag_cbor(bytes(block))
    except (ValueError, RecursionError):
        raise MstError(BAD_NODE) from None
    if type(node) is not dict or "l" not in node or type(node.get("e")) is not list:
        raise MstError(BAD_NODE)
    left = node["l"]
    if left is not None and type(left) is not bytes:
        raise MstError(BAD_NODE)
    keys, values, trees = [], [], []
    previous = b""
    for entry in node["e"]:
        key, value, tree = _entry(entry, previous)
        keys.append(key)
        values.append(value)
        trees.append(tree)
        previous = key
    return MstNode(left, keys, values, trees)


def _entry(entry, previous: bytes) -> tuple[bytes, bytes, bytes | None]:
    if type(entry) is not dict or "t" not in entry:
        raise MstError(BAD_NODE)
    prefix, suffix, value, tree = entry.get("p"), entry.get("k"), entry.get("v"), entry["t"]
    if type(prefix) is not int or type(suffix) is not bytes or type(value) is not bytes:
        raise MstError(BAD_NODE)
    if tree is not None and type(tree) is not bytes:
        raise MstError(BAD_NODE)
    if not 0 <= prefix <= len(previous):  # Go's lastKey[:p] would have panicked
        raise MstError(BAD_NODE)
    key = previous[:prefix] + suffix
    if not key.isascii() or not is_mst_key(key.decode("ascii")):
        raise MstError(BAD_NODE)
    return key, value, tree


def step(node: MstNode, key: bytes) -> tuple[bool, bytes | None]:
    """(True, leaf CID) if `node` holds `key`, else (False, the subtree to descend into, or None).

    indigo's rule: the first entry whose key >= `key` (a linear scan: an unsorted node is
    walked as v1 walked it); the subtree is "l" before the first entry, else the "t" of
    the entry before it.
    """
    left, keys, values, trees = node
    index = 0
    for candidate in keys:
        if candidate >= key:
            break
        index += 1
    if index < len(keys) and keys[index] == key:
        return True, values[index]
    return False, left if index == 0 else trees[index - 1]


class MstReader:
    """Path -> leaf CID lookups in one commit's MST, with each node decoded once."""

    def __init__(self, blocks, root: bytes) -> None:
        self.blocks = blocks
        self.root = root
        self.nodes: dict[bytes, MstNode] = {}

    def get(self, path: str) -> bytes:
        """The leaf CID stored under `path` (an MST key); MstError(reason) if there is none."""
        key = path.encode("utf-8", "surrogatepass")
        link = self.root
        for _ in range(MAX_DEPTH):
            hit, link = step(self._node(link), key)
            if hit:
                return link
            if link is None:
                raise MstError(NOT_FOUND)
        raise MstError(BAD_NODE)

    def _node(self, cid: bytes) -> MstNode:
        node = self.nodes.get(cid)
        if node is not None:
            return node
        block = self.blocks.get(cid)
        if block is None:
            raise MstError(MISSING_NODE)
        node = self.nodes[cid] = decode_node(block)
        return node
