"""Audio for the keyword-spotting task: PCM WAV files in and out, resampling, the silence trimmer's span of
speech, and the mel filterbank of the model's log-mel features. Pure numpy/scipy functions."""

from __future__ import annotations

import io
import math
import wave

import numpy as np
from scipy.signal import resample_poly

FRAME_SECONDS = 0.010
"""Frame of the silence trimmer (and the hop of the log-mel features)."""
SILENCE_DB = 40.0
"""Frames this far below the loudest frame of a clip count as silence."""
WAV_RATES = (8000, 48000)
"""Sample rates accepted in a WAV file (resampled to the model's rate)."""
WAV_MAX_FRAME_BYTES = 8
"""Largest WAV frame a request is sized for (stereo, 32-bit)."""


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 20.0) -> np.ndarray:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` equally spaced on the HTK mel scale up to Nyquist."""
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(np.array(f_min)), mel(np.array(sample_rate / 2)), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (center - lower)
    falling = (upper - bins) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling))


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A PCM WAV file as a mono float32 waveform in [-1, 1] and its sample rate (channels averaged).

    Raises:
        ValueError: not a PCM WAV file, an unsupported sample width or rate, or no samples.
    """
    try:
        with wave.open(io.BytesIO(data)) as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            frames = f.readframes(f.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise ValueError(f"not a PCM WAV file ({e or type(e).__name__})") from e
    if not WAV_RATES[0] <= rate <= WAV_RATES[1]:
        raise ValueError(f"sample rate {rate} Hz is outside {WAV_RATES[0]}..{WAV_RATES[1]} Hz")
    if width not in (1, 2, 3, 4) or channels < 1:
        raise ValueError(f"unsupported WAV layout: {channels} channel(s) of {width} byte(s)")
    frames = frames[:len(frames) - len(frames) % (width * channels)]
    if not frames:
        raise ValueError("the WAV file holds no samples")
    raw = np.frombuffer(frames, dtype=np.uint8)
    if width == 1:
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = (np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)).astype(np.float32)
    else:
        dtype = np.dtype("<i2") if width == 2 else np.dtype("<i4")
        samples = (np.frombuffer(frames, dtype=dtype) / float(1 << (8 * width - 1))).astype(np.float32)
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float32), rate


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """A mono waveform in [-1, 1] as a 16-bit PCM WAV file (for clients and tests)."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return out.getvalue()


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``samples`` at ``rate`` Hz resampled to ``target`` Hz (polyphase), as float32."""
    if rate == target:
        return np.asarray(samples, dtype=np.float32)
    g = math.gcd(rate, target)
    return resample_poly(np.asarray(samples, dtype=np.float64), target // g, rate // g).astype(np.float32)


def speech_span(samples: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """First and last sample (exclusive) of the frames within :data:`SILENCE_DB` of the loudest, with one
    frame of margin each side; ``(0, 0)`` for a silent clip."""
    hop = round(FRAME_SECONDS * sample_rate)
    frames = len(samples) // hop + (len(samples) % hop > 0)
    padded = np.zeros(frames * hop, dtype=np.float64)
    padded[:len(samples)] = samples
    energy = (padded.reshape(frames, hop) ** 2).mean(axis=1)
    peak = energy.max(initial=0.0)
    if peak <= 0.0:
        return 0, 0
    loud = np.flatnonzero(energy >= peak * 10 ** (-SILENCE_DB / 10))
    start = max(int(loud[0]) - 1, 0) * hop
    end = min((int(loud[-1]) + 2) * hop, len(samples))
    return start, end
