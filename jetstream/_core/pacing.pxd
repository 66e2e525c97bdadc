"""C-level surface of pacing.pyx: batch framing for the reader's writes."""

cpdef bytes encode_frames(list payloads, bint binary)
