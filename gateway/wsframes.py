"""Re-framing of a client's websocket stream so that no data frame is parsed whole.

The websockets library reads a frame's whole payload, then unmasks it in one call:
for a 16 MB frame that holds the event loop for over 100 ms (about 10 ms per MB
here) and keeps several copies alive at once. A browser or the websockets client
sends a whole recording as one frame, so the frame's size is the client's choice.

:class:`FrameSplitter` cuts each large data frame, as its bytes arrive, into
fragments of what arrived (continuation frames, RFC 6455 section 5.4). The cuts fall
at multiples of 4 bytes into the payload, so each fragment keeps the original
masking key and no byte is touched: only fragment headers are written. The library
then unmasks small fragments as they come and joins them once at the end.
"""

from __future__ import annotations

import struct

_CONTINUATION = 0x0
#: Opcodes 0x8 and above are control frames: at most 125 bytes, never fragmented.
_CONTROL = 0x8


def _header(fin: bool, opcode: int, length: int, key: bytes) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes((first, 0x80 | length)) + key
    if length < 1 << 16:
        return bytes((first, 0x80 | 126)) + struct.pack("!H", length) + key
    return bytes((first, 0x80 | 127)) + struct.pack("!Q", length) + key


class FrameSplitter:
    """Rewrites a client's frames so none larger than ``min_split`` reaches the parser whole.

    Frames it does not understand or must not split (control frames, unmasked or
    RSV-flagged frames, frames over ``max_size``, which the parser refuses from their
    header) pass through unchanged, for the parser to judge.
    """

    def __init__(self, max_size: int, min_split: int = 64 * 1024) -> None:
        self._max = max_size
        self._min_split = min_split
        self._buffer = bytearray()
        self._remaining = 0  # payload bytes of the current frame not yet passed on
        self._splitting = False
        self._opcode = 0
        self._fin = False
        self._key = b""

    def feed(self, data: bytes) -> bytes:
        """The bytes to hand the parser for ``data`` (possibly none yet)."""
        self._buffer += data
        out: list[bytes] = []
        while self._buffer:
            if self._remaining == 0 and not self._start_frame(out):
                break
            if self._remaining and not self._payload(out):
                break
        return b"".join(out)

    def _start_frame(self, out: list[bytes]) -> bool:
        """Parse a frame header from the buffer; False when it is not all here yet."""
        buf = self._buffer
        if len(buf) < 2:
            return False
        fin, rsv, opcode = bool(buf[0] & 0x80), buf[0] & 0x70, buf[0] & 0x0F
        masked, length = bool(buf[1] & 0x80), buf[1] & 0x7F
        size = 2 + {126: 2, 127: 8}.get(length, 0) + (4 if masked else 0)
        if len(buf) < size:
            return False
        if length == 126:
            (length,) = struct.unpack_from("!H", buf, 2)
        elif length == 127:
            (length,) = struct.unpack_from("!Q", buf, 2)
        splittable = masked and not rsv and opcode < _CONTROL and length > self._min_split
        self._splitting = splittable and length <= self._max
        if self._splitting:
            self._opcode, self._fin, self._key = opcode, fin, bytes(buf[size - 4 : size])
        else:
            out.append(bytes(buf[:size]))
        del buf[:size]
        self._remaining = length
        return True

    def _payload(self, out: list[bytes]) -> bool:
        """Pass on the payload bytes at hand; False when more must arrive first."""
        take = min(self._remaining, len(self._buffer))
        if self._splitting and take < self._remaining:
            take -= take % 4  # the key stays aligned only at multiples of 4
        if take == 0:
            return False
        last = take == self._remaining
        if self._splitting:
            out.append(_header(self._fin and last, self._opcode, take, self._key))
            self._opcode = _CONTINUATION
        out.append(bytes(self._buffer[:take]))
        del self._buffer[:take]
        self._remaining -= take
        return True
