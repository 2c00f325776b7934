"""Keyword spotting: spoken words synthesised with espeak-ng, log-mel features inside the module, a small CNN.

Data: every word of :attr:`KeywordSpotting.words` spoken by espeak-ng voice variants at several speeds,
generated when the data is loaded and cached (:mod:`.espeak`).
The splits are by VOICE: validation and test voices are never heard in training.

Audio is mono FP32 at :attr:`KeywordSpotting.sample_rate` (16 kHz by default). ``encode`` trims leading and
trailing silence (frames 40 dB below the loudest) and fits the speech into a fixed window of
``window_seconds`` (cropped or zero-padded at the end); the module computes log-mel features (a DFT as a
1-D convolution and a mel filterbank, both buffers, normalised per clip so the input gain does not matter)
and a small CNN classifies them.

Inputs (exactly one per request): ``audio`` FP32 ``[N, samples]`` at the sample rate, or ``wav`` BYTES
``[N]``, each a base64-encoded PCM WAV file (8/16/24/32-bit, any channels, 8-48 kHz; resampled).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import shutil
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pillars.components.errors import ConfigError, DataError
from pillars.components.task import (
    ClassificationTask,
    Dataset,
    DataParams,
    Examples,
    InputError,
    Preprocessing,
    TensorSpec,
)
from pillars.tasks.speech.audio import (FRAME_SECONDS, WAV_MAX_FRAME_BYTES, WAV_RATES, decode_wav, encode_wav,
                                        mel_filterbank, resample, speech_span)
from pillars.tasks.speech.espeak import INSTALL_HINT, espeak_version, installed_variants, spread, synthesize

__all__ = ["KeywordNet", "KeywordSpotting", "LogMel", "decode_wav", "encode_wav"]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MIN_SECONDS = 0.1
"""Shortest audio accepted."""


@dataclasses.dataclass
class KeywordSpotting(ClassificationTask):
    """Which word was spoken, from a short clip; test voices are never heard in training.

    Attributes:
        words: the keywords (the classes), spoken one per clip.
        voices: how many espeak-ng voice variants to use, spread evenly over the installed ones sorted
            by name (0: all of them, 101 with Debian's espeak-ng 1.51); 32 keeps training within minutes.
        speeds: speaking rates, words per minute (``espeak-ng -s``).
        language: the espeak-ng voice the variants are applied to (``-v LANGUAGE+VARIANT``).
        sample_rate: of the ``audio`` input, Hz.
        window_seconds: the fixed length the speech is fitted into.
        max_seconds: the longest audio a request may send.
        n_mels: mel bands of the features.
        channels: width of the CNN's first convolution.
    """

    words: tuple[str, ...] = DIGITS
    voices: int = 32
    speeds: tuple[int, ...] = (120, 160, 200)
    language: str = "en-us"
    sample_rate: int = 16000
    window_seconds: float = 1.0
    max_seconds: float = 2.0
    n_mels: int = 40
    channels: int = 32

    description: ClassVar[str] = ("keyword spotting: spoken words synthesised with espeak-ng, log-mel + CNN, "
                                  "tested on unseen voices")
    thresholds: ClassVar[Mapping[str, float]] = {"accuracy": 0.90}

    def __post_init__(self) -> None:
        self.words = tuple(str(w) for w in self.words)
        self.speeds = tuple(int(s) for s in self.speeds)
        if len(self.words) < 2 or len(set(self.words)) != len(self.words):
            raise ConfigError(f"words: at least two distinct words are needed, got {list(self.words)}")
        bad = [w for w in self.words if not w.replace("'", "").isalpha()]
        if bad:
            raise ConfigError(f"words: each is one word of letters, got {bad}")
        if not self.speeds or any(not 80 <= s <= 450 for s in self.speeds):
            raise ConfigError(f"speeds: words per minute in 80..450, got {list(self.speeds)}")
        if self.voices < 0:
            raise ConfigError(f"voices must be 0 (all) or a positive count, got {self.voices}")
        if not 8000 <= self.sample_rate <= 48000:
            raise ConfigError(f"sample_rate must be in 8000..48000 Hz, got {self.sample_rate}")
        if not 0.2 <= self.window_seconds <= self.max_seconds <= 30:
            raise ConfigError(f"need 0.2 <= window_seconds <= max_seconds <= 30, got {self.window_seconds} "
                              f"and {self.max_seconds}")
        if not 8 <= self.n_mels <= 128 or self.channels < 1:
            raise ConfigError(f"n_mels must be in 8..128 and channels positive, got {self.n_mels}, {self.channels}")

    # ---- sizes ----------------------------------------------------------------------------------------------
    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate)

    @property
    def max_samples(self) -> int:
        return round(self.max_seconds * self.sample_rate)

    # ---- data -----------------------------------------------------------------------------------------------
    def load_data(self, params: DataParams) -> Dataset:
        """Synthesise every (voice, word, speed) clip and split by voice (seeded by ``params.seed``).

        Raises:
            DataError: espeak-ng is not installed or fails, or too few voices for three splits.
        """
        espeak = shutil.which("espeak-ng")
        if espeak is None:
            raise DataError(f"the keyword_spotting task synthesises its data with espeak-ng, which is not "
                            f"installed: {INSTALL_HINT}")
        installed = installed_variants(espeak)
        voices = spread(installed, self.voices)
        n_test = max(1, round(len(voices) * params.test_fraction))
        n_val = max(1, round(len(voices) * params.val_fraction))
        if len(voices) - n_test - n_val < 1:
            raise DataError(f"keyword_spotting needs at least 3 voices for train/val/test, got {len(voices)} "
                            f"(voices={self.voices}, {len(installed)} installed)")
        order = [voices[i] for i in np.random.default_rng(params.seed).permutation(len(voices))]
        split_voices = {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
                        "train": sorted(order[n_test + n_val:])}
        clips = [(voice, word, speed) for voice in voices for word in self.words for speed in self.speeds]
        commands = [[espeak, "--stdout", "-v", f"{self.language}+{voice}", "-s", str(speed), word]
                    for voice, word, speed in clips]
        waves = synthesize(commands)
        audio = np.zeros((len(clips), self.window_samples), dtype=np.float32)
        for i, (samples, rate) in enumerate(waves):
            audio[i] = self._fit_window(resample(samples, rate, self.sample_rate))[0]
        voice_of = np.array([c[0] for c in clips])
        columns: Examples = {"audio": audio,
                             "label": np.array([self.words.index(c[1]) for c in clips], dtype=np.int64),
                             "voice": voice_of, "speed": np.array([c[2] for c in clips], dtype=np.int64)}
        splits = {name: {k: v[np.isin(voice_of, names)] for k, v in columns.items()}
                  for name, names in split_voices.items()}
        info = {"source": f"espeak-ng ({espeak_version(espeak)}), {len(voices)} voice variants of "
                          f"{self.language}, speeds {list(self.speeds)}",
                "classes": list(self.words), "sample_rate": self.sample_rate, "voices": split_voices}
        return Dataset(splits["train"], splits["val"], splits["test"], info)

    # ---- model ----------------------------------------------------------------------------------------------
    def build_model(self, prep: Preprocessing) -> nn.Module:
        return KeywordNet(self.sample_rate, self.n_mels, self.channels, len(prep["classes"]))

    def inputs(self, prep: Preprocessing) -> tuple[TensorSpec, ...]:
        wav_bytes = math.ceil((self.max_seconds * WAV_RATES[1] * WAV_MAX_FRAME_BYTES + 1024) * 4 / 3)
        return (TensorSpec("audio", "FP32", (-1,), optional=True, max_length=self.max_samples,
                           description=f"mono waveform at {self.sample_rate} Hz, samples in [-1, 1] "
                                       f"({MIN_SECONDS}..{self.max_seconds} s); give audio or wav"),
                TensorSpec("wav", "BYTES", (), optional=True, max_bytes=wav_bytes,
                           description=f"base64 of a PCM WAV file ({WAV_RATES[0]}..{WAV_RATES[1]} Hz, "
                                       f"resampled to {self.sample_rate} Hz); give audio or wav"))

    def encode(self, inputs: Examples, prep: Preprocessing) -> dict[str, torch.Tensor]:
        """The speech of each clip trimmed of silence and fitted into the window: ``audio`` ``[N, window]``.

        Raises:
            InputError: neither or both of audio/wav, a bad WAV, non-finite, too short, too long or silent audio.
        """
        name, waves = self._waveforms(inputs)
        window = np.zeros((len(waves), self.window_samples), dtype=np.float32)
        for i, samples in enumerate(waves):
            fitted, span = self._fit_window(samples)
            if span[1] <= span[0]:
                raise InputError(f"input {name!r}: row {i} is silent (no signal)")
            window[i] = fitted
        return {"audio": torch.from_numpy(window)}

    # ---- monitoring -----------------------------------------------------------------------------------------
    def drift_features(self, inputs: Examples, prep: Preprocessing) -> dict[str, np.ndarray]:
        """``duration_s``: seconds of speech (silence trimmed); ``rms_db``: its energy, dB full scale."""
        _, waves = self._waveforms(inputs)
        duration = np.zeros(len(waves))
        rms_db = np.zeros(len(waves))
        for i, samples in enumerate(waves):
            start, end = speech_span(samples, self.sample_rate)
            speech = samples[start:end].astype(np.float64)
            duration[i] = (end - start) / self.sample_rate
            rms = float(np.sqrt(np.mean(speech ** 2))) if speech.size else 0.0
            rms_db[i] = 20 * math.log10(max(rms, 1e-5))
        return {"duration_s": duration, "rms_db": rms_db}

    # ---- helpers --------------------------------------------------------------------------------------------
    def _waveforms(self, inputs: Examples) -> tuple[str, list[np.ndarray]]:
        """The name of the input given and its clips as float32 waveforms at the sample rate."""
        given = [n for n in ("audio", "wav") if inputs.get(n) is not None]
        if len(given) != 1:
            raise InputError(f"give exactly one of the inputs 'audio' or 'wav'; got {given or 'neither'}")
        if given == ["wav"]:
            return "wav", [self._decode(item, i) for i, item in enumerate(np.asarray(inputs["wav"]).reshape(-1))]
        audio = np.asarray(inputs["audio"])
        if audio.ndim != 2 or audio.dtype.kind not in "fiu" or audio.shape[0] == 0:
            raise InputError(f"input 'audio': expected a float waveform batch [N, samples], got "
                             f"{audio.dtype.name} {list(audio.shape)}")
        audio = audio.astype(np.float32, copy=False)
        self._check_length("audio", audio.shape[1], self.sample_rate)
        if not np.isfinite(audio).all():
            bad = np.flatnonzero(~np.isfinite(audio).all(axis=1))
            raise InputError(f"input 'audio': NaN or Inf in row(s) {bad[:5].tolist()}")
        return "audio", list(audio)

    def _decode(self, item: Any, index: int) -> np.ndarray:
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError, TypeError) as e:
            raise InputError(f"input 'wav': element {index} is not base64: {e}") from e
        try:
            samples, rate = decode_wav(data)
        except ValueError as e:
            raise InputError(f"input 'wav': element {index}: {e}") from e
        self._check_length("wav", len(samples), rate, index)
        return resample(samples, rate, self.sample_rate)

    def _check_length(self, name: str, samples: int, rate: int, index: int | None = None) -> None:
        where = f"input {name!r}" + (f": element {index}" if index is not None else "")
        seconds = samples / rate
        if seconds < MIN_SECONDS:
            raise InputError(f"{where}: {seconds:.3f} s of audio is too short; at least {MIN_SECONDS} s is needed")
        if seconds > self.max_seconds + 1e-9:
            raise InputError(f"{where}: {seconds:.3f} s of audio is too long; at most {self.max_seconds} s")

    def _fit_window(self, samples: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The speech span of ``samples`` cropped or zero-padded to the window, and the span."""
        start, end = speech_span(samples, self.sample_rate)
        speech = samples[start:end][:self.window_samples]
        window = np.zeros(self.window_samples, dtype=np.float32)
        window[:len(speech)] = speech
        return window, (start, end)


class LogMel(nn.Module):
    """Log-mel spectrogram of a waveform batch: a windowed DFT as a strided 1-D convolution, a triangular
    mel filterbank, log, then normalised by the clip's loudest bin (so the input gain does not matter)."""

    def __init__(self, sample_rate: int, n_mels: int, frame_seconds: float = 0.025,
                 hop_seconds: float = FRAME_SECONDS) -> None:
        super().__init__()
        n_fft = round(frame_seconds * sample_rate)
        self.hop = round(hop_seconds * sample_rate)
        n = np.arange(n_fft)
        k = np.arange(n_fft // 2 + 1)[:, None]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
        angle = 2 * np.pi * k * n / n_fft
        dft = np.concatenate([np.cos(angle), -np.sin(angle)]) * window
        self.register_buffer("dft", torch.tensor(dft[:, None, :], dtype=torch.float32))
        self.register_buffer("mel", torch.tensor(mel_filterbank(sample_rate, n_fft, n_mels), dtype=torch.float32))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spectrum = nn.functional.conv1d(audio.unsqueeze(1), self.dft, stride=self.hop)  # [N, 2F, T]
        real, imag = spectrum.chunk(2, dim=1)
        power = torch.matmul(self.mel, real * real + imag * imag)  # [N, M, T]
        peak = power.amax(dim=(1, 2), keepdim=True).clamp_min(1e-20)
        return torch.log(power / peak + 1e-6)


class KeywordNet(nn.Module):
    """Log-mel features, three conv blocks, global average pooling, a linear layer."""

    def __init__(self, sample_rate: int, n_mels: int, channels: int, classes: int) -> None:
        super().__init__()
        self.features = LogMel(sample_rate, n_mels)
        c = channels

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        self.cnn = nn.Sequential(nn.BatchNorm2d(1), *block(1, c), *block(c, 2 * c), *block(2 * c, 2 * c),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * c, classes))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.cnn(self.features(audio).unsqueeze(1))
