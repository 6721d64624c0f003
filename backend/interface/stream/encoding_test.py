from __future__ import annotations

from backend.interface.stream.encoding import WRITE_BYTES, http_chunk, sse_chunks, sse_frame
from backend.testing.memory_log import MemoryLog


def test_sse_chunks_join_a_batch_into_one_write_up_to_write_bytes() -> None:
    log = MemoryLog()
    small = [log.append("t", n) for n in range(3)]
    assert sse_chunks(small) == b"".join(http_chunk(sse_frame(e)) for e in small)
    big = [log.append("t", "x" * 20_000) for _ in range(4)]
    assert sum(len(sse_frame(e)) for e in big) > WRITE_BYTES
    assert sse_chunks(big) is None  # left to the stream's task, which writes it in parts
