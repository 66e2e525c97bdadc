"""C-level surface of frames.pyx: batch framing for the reader's writes."""

cpdef bytes encode_frames(list payloads, bint binary)
