"""C-level surface of record_json.pyx: the v2 record emitter, for modules that cimport it.

Only the narrow entry point is declared; the parser's structs and helpers stay private.
"""

cpdef bytes record_to_json_v2(object block)
