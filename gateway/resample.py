"""Streaming 24 kHz -> 16 kHz resampling of 16-bit PCM (OpenAI's realtime audio to ours).

Polyphase, rational 2/3: the input is upsampled by 2 (zeros between samples, 48 kHz),
low-pass filtered below the new Nyquist frequency (a Kaiser-windowed sinc, about 60 dB
down from 8 kHz on), and every third sample kept. The filter's history and the phase
carry from one chunk to the next, so audio cut into chunks of any size (odd byte
counts included) comes out exactly as if it had been converted in one piece: no clicks
at the seams. The output lags the input by the filter's delay, 60 samples at 48 kHz
(1.25 ms), which nothing downstream notices; the last 1.25 ms of a stream stay in the
filter.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

UP = 2
DOWN = 3
#: Filter taps at the 48 kHz intermediate rate (odd: a whole-sample delay).
TAPS = 121
#: Kaiser beta for about 60 dB of stop-band attenuation.
BETA = 5.65
#: Cut-off (Hz at 48 kHz): the middle of a 6.4-8 kHz transition band.
CUTOFF = 7200.0
RATE_IN = 24000
RATE_UP = RATE_IN * UP


def _design() -> npt.NDArray[np.float64]:
    """The low-pass filter, with a gain of ``UP`` (the zeros took that much energy)."""
    n = np.arange(TAPS) - (TAPS - 1) / 2
    ideal = np.sinc(2 * CUTOFF / RATE_UP * n)
    taps = ideal * np.kaiser(TAPS, BETA)
    result: npt.NDArray[np.float64] = taps / taps.sum() * UP
    return result


_FILTER = _design()
#: Reversed, so that a window of the signal times it is the convolution's sample.
_KERNEL = _FILTER[::-1].copy()


class Resampler24to16:
    """Converts a stream of 24 kHz little-endian int16 PCM to 16 kHz, chunk by chunk."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far (a new stream, or the input buffer was cleared)."""
        #: The last ``TAPS - 1`` samples of the upsampled signal (the filter's memory).
        self._history = np.zeros(TAPS - 1, dtype=np.float64)
        #: Index, in the next chunk's upsampled samples, of the next sample to keep.
        self._phase = 0
        #: A byte left over from an odd-sized chunk (half a sample).
        self._odd = b""

    def convert(self, pcm: bytes) -> bytes:
        """16 kHz PCM for this chunk of 24 kHz PCM (about two thirds of its samples)."""
        data = self._odd + pcm
        usable = len(data) - len(data) % 2
        self._odd = data[usable:]
        if usable == 0:
            return b""
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float64)
        upsampled = np.zeros(len(samples) * UP, dtype=np.float64)
        upsampled[::UP] = samples
        signal = np.concatenate([self._history, upsampled])
        self._history = signal[len(signal) - (TAPS - 1) :].copy()
        # Output k of this chunk is the filter's value at upsampled index phase + 3k.
        wanted = np.arange(self._phase, len(upsampled), DOWN)
        self._phase = (self._phase - len(upsampled)) % DOWN
        if len(wanted) == 0:
            return b""
        windows = sliding_window_view(signal, TAPS)[wanted]
        out = windows @ _KERNEL
        return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()
