# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""MST path lookup in C: the fast twin of `jetstream/_py/mst.py` (read its docstring).

Owns: the same walk, rules and MstError reasons, with each node parsed straight from its
bytes in one C pass that rebuilds and validates every key in a stack buffer and compares
it with the path, allocating nothing but the one CID it answers. Only the canonical
DAG-CBOR node shape is parsed here ({"e": [{"k","p","t","v"}…], "l"} with minimal
heads and 36-byte CIDv1 links, which is what every PDS writes); any other shape goes to
the reference decoder, so the two can never disagree (tests/ingest/test_ingest_mst.py).
Why parse in C: on the 148 corpus commits (~8 path nodes each) a whole lookup takes 3.8 us
per commit here, while libipld.decode_dag_cbor of the same nodes alone takes 8.8 us and the
reference lookup 50 us.
It must never read past a block.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t
from libc.string cimport memcmp, memcpy

from jetstream._py import mst as _ref
from jetstream._py.mst import MstNode as _MstNode
from jetstream.errors import MstError

cdef enum:
    KEY_BUFFER = 256  # == MST_KEY_MAX: a longer rebuilt key is invalid before it is copied
cdef Py_ssize_t MST_KEY_MAX = _ref.MST_KEY_MAX
assert MST_KEY_MAX == KEY_BUFFER
cdef int MAX_DEPTH = _ref.MAX_DEPTH
cdef object _MISSING_NODE = _ref.MISSING_NODE
cdef object _BAD_NODE = _ref.BAD_NODE
cdef object _NOT_FOUND = _ref.NOT_FOUND
_decode_node = _ref.decode_node
_step = _ref.step

# scan() results
cdef enum:
    SCAN_OTHER_SHAPE = -1  # not the canonical shape: the reference decoder decides
    SCAN_BAD_NODE = -2  # an invalid prefix or key: bad_node whatever decoder reads it
    SCAN_LEAF = 0  # the path's entry; *link is its value CID
    SCAN_DESCEND = 1  # *link is the subtree to descend into
    SCAN_NO_SUBTREE = 2  # the path would sit under a null link: not found

cdef enum:
    NULL_LINK = -2
    NOT_A_LINK = -1
    CID_SIZE = 36


cdef inline bint key_char(uint8_t c) noexcept nogil:
    # [A-Za-z0-9_:.~-]
    return ((65 <= c <= 90) or (97 <= c <= 122) or (48 <= c <= 57) or c == 95 or c == 58 or c == 46
            or c == 126 or c == 45)


cdef bint mst_key_ascii(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """v1's MST key rule on bytes: collection/rkey of [A-Za-z0-9_:.~-], <= 256 (the reference's is_mst_key)."""
    cdef Py_ssize_t i, slash = -1
    if n > MST_KEY_MAX:
        return False
    for i in range(n):
        if s[i] == 47:
            if slash >= 0:
                return False
            slash = i
        elif not key_char(s[i]):
            return False
    return 0 < slash < n - 1


cdef inline Py_ssize_t suffix_slash(const uint8_t* key, Py_ssize_t start, Py_ssize_t n,
                                    Py_ssize_t slash) noexcept nogil:
    """mst_key_ascii(key, n) given key[:start] is valid key text holding its '/' at `slash` (-1: none).

    The slash position of the key if it is valid, else -1.
    """
    cdef Py_ssize_t i
    for i in range(start, n):
        if key[i] == 47:
            if slash >= 0:
                return -1
            slash = i
        elif not key_char(key[i]):
            return -1
    return slash if 0 < slash < n - 1 else -1


cdef inline Py_ssize_t read_head(const uint8_t* s, Py_ssize_t* pos, Py_ssize_t end, int major) noexcept nogil:
    """The argument of a minimally encoded CBOR head of `major` type at *pos, else -1."""
    cdef Py_ssize_t at = pos[0], value
    cdef int info
    if at >= end or (s[at] >> 5) != major:
        return -1
    info = s[at] & 31
    if info < 24:
        pos[0] = at + 1
        return info
    if info == 24 and end - at >= 2 and s[at + 1] >= 24:
        pos[0] = at + 2
        return s[at + 1]
    if info == 25 and end - at >= 3:
        value = (<Py_ssize_t>s[at + 1] << 8) | s[at + 2]
        if value >= 256:
            pos[0] = at + 3
            return value
    return -1


cdef inline Py_ssize_t read_link(const uint8_t* s, Py_ssize_t* pos, Py_ssize_t end) noexcept nogil:
    """Offset of a tag-42 36-byte CIDv1 sha2-256 at *pos, NULL_LINK for CBOR null, else NOT_A_LINK."""
    cdef Py_ssize_t at = pos[0]
    if at < end and s[at] == 0xf6:
        pos[0] = at + 1
        return NULL_LINK
    if (end - at < 5 + CID_SIZE or s[at] != 0xd8 or s[at + 1] != 0x2a or s[at + 2] != 0x58
            or s[at + 3] != 0x25 or s[at + 4] != 0 or s[at + 5] != 1 or s[at + 6] >= 0x80
            or s[at + 7] != 0x12 or s[at + 8] != 0x20):
        return NOT_A_LINK
    pos[0] = at + 5 + CID_SIZE
    return at + 5


cdef inline bint read_name(const uint8_t* s, Py_ssize_t* pos, Py_ssize_t end, uint8_t name) noexcept nogil:
    """A one-letter map key (text of length 1) equal to `name` at *pos."""
    cdef Py_ssize_t at = pos[0]
    if end - at < 2 or s[at] != 0x61 or s[at + 1] != name:
        return False
    pos[0] = at + 2
    return True


cdef inline int compare(const uint8_t* a, Py_ssize_t a_len, const uint8_t* b, Py_ssize_t b_len) noexcept nogil:
    """Go's string comparison: bytewise, then shorter first."""
    cdef int order = memcmp(a, b, a_len if a_len < b_len else b_len)
    if order != 0:
        return order
    return (a_len > b_len) - (a_len < b_len)


cdef int scan(const uint8_t* s, Py_ssize_t end, const uint8_t* key, Py_ssize_t key_len,
              Py_ssize_t* link) noexcept nogil:
    """One pass over a node: validate every entry (as indigo did on load) and find where `key` sits."""
    cdef uint8_t buf[KEY_BUFFER]
    cdef Py_ssize_t pos = 1, count, i, suffix_len, suffix_at, prefix, key_at_len, tree, value, left
    cdef Py_ssize_t previous_len = 0, previous_tree = NULL_LINK, found = NOT_A_LINK, slash = KEY_BUFFER
    cdef int result = -1, order  # -1: the key sorts after every entry so far
    if end < 1 or s[0] != 0xa2 or not read_name(s, &pos, end, 101):  # {"e": …
        return SCAN_OTHER_SHAPE
    count = read_head(s, &pos, end, 4)
    if count < 0:
        return SCAN_OTHER_SHAPE
    for i in range(count):
        if pos >= end or s[pos] != 0xa4:
            return SCAN_OTHER_SHAPE
        pos += 1
        if not read_name(s, &pos, end, 107):  # k
            return SCAN_OTHER_SHAPE
        suffix_len = read_head(s, &pos, end, 2)
        if suffix_len < 0 or suffix_len > end - pos:
            return SCAN_OTHER_SHAPE
        suffix_at = pos
        pos += suffix_len
        if not read_name(s, &pos, end, 112):  # p
            return SCAN_OTHER_SHAPE
        prefix = read_head(s, &pos, end, 0)
        if prefix < 0 or not read_name(s, &pos, end, 116):  # t
            return SCAN_OTHER_SHAPE
        tree = read_link(s, &pos, end)
        if tree == NOT_A_LINK or not read_name(s, &pos, end, 118):  # v
            return SCAN_OTHER_SHAPE
        value = read_link(s, &pos, end)
        if value < 0:
            return SCAN_OTHER_SHAPE
        # The rest of the node may still be another shape; the reference then meets this
        # same entry first and says bad_node too.
        if prefix > previous_len or prefix + suffix_len > KEY_BUFFER:
            return SCAN_BAD_NODE
        memcpy(buf + prefix, s + suffix_at, suffix_len)
        key_at_len = prefix + suffix_len
        # The kept prefix is part of the previous (valid) key: check only the new bytes.
        slash = suffix_slash(buf, prefix, key_at_len, slash if prefix > slash else -1)
        if slash < 0:
            return SCAN_BAD_NODE
        if result == -1:
            order = compare(buf, key_at_len, key, key_len)
            if order == 0:
                result, found = SCAN_LEAF, value
            elif order > 0:
                result, found = SCAN_DESCEND, (NOT_A_LINK if i == 0 else previous_tree)
        previous_len = key_at_len
        previous_tree = tree
    if not read_name(s, &pos, end, 108):  # l
        return SCAN_OTHER_SHAPE
    left = read_link(s, &pos, end)
    if left == NOT_A_LINK or pos != end:
        return SCAN_OTHER_SHAPE
    if result == -1:
        result, found = SCAN_DESCEND, (left if count == 0 else previous_tree)
    elif result == SCAN_DESCEND and found == NOT_A_LINK:  # before the first entry
        found = left
    if result == SCAN_DESCEND and found == NULL_LINK:
        return SCAN_NO_SUBTREE
    link[0] = found
    return result


cdef class MstReader:
    """Path -> leaf CID lookups in one commit's MST, with each node validated once."""

    def __cinit__(self, blocks, bytes root):
        self.blocks = blocks
        self.root = root
        self.nodes = {}

    def get(self, str path):
        """The leaf CID stored under `path` (an MST key); MstError(reason) if there is none."""
        return self.leaf(path.encode("utf-8", "surrogatepass"))

    cdef bytes leaf(self, bytes key):
        cdef bytes link = self.root
        cdef int result, _level
        for _level in range(MAX_DEPTH):
            node = self.nodes.get(link)
            if node is None:
                node = self._fetch(link)
                result = self._scan(node, key)
                if result == SCAN_BAD_NODE:
                    raise MstError(_BAD_NODE)
                if result == SCAN_OTHER_SHAPE:
                    node = _decode_node(node)
                self.nodes[link] = node
            elif type(node) is _MstNode:
                result = SCAN_OTHER_SHAPE
            else:
                result = self._scan(node, key)
            if result == SCAN_OTHER_SHAPE:  # decoded by the reference
                hit, link = _step(node, key)
                if hit:
                    return link
                if link is None:
                    raise MstError(_NOT_FOUND)
            elif result == SCAN_LEAF:
                return self._found
            elif result == SCAN_NO_SUBTREE:
                raise MstError(_NOT_FOUND)
            else:
                link = self._found
        raise MstError(_BAD_NODE)

    cdef int _scan(self, block, bytes key) except -3:
        """scan() over `block` (any buffer); on SCAN_LEAF or SCAN_DESCEND self._found is the CID found."""
        cdef Py_buffer view
        cdef Py_ssize_t at = 0
        cdef int result
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        try:
            result = scan(<const uint8_t*>view.buf, view.len, <const uint8_t*>PyBytes_AS_STRING(key),
                          PyBytes_GET_SIZE(key), &at)
            if result == SCAN_LEAF or result == SCAN_DESCEND:
                self._found = PyBytes_FromStringAndSize(<const char*>view.buf + at, CID_SIZE)
        finally:
            PyBuffer_Release(&view)
        return result

    cdef object _fetch(self, bytes cid):
        """The block at `cid`; MstError(missing_node) if the CAR lacks it."""
        block = self.blocks.get(cid)
        if block is None:
            raise MstError(_MISSING_NODE)
        return block
