"""keyword_spotting: espeak-ng speech split by voice, the floor on unseen voices, behaviour, bad inputs, served path."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pillars.components.errors import DataError
from pillars.components.model.predictor import load_predictor, save_model
from pillars.components.task import DataParams, InputError
from pillars.tasks.speech import KeywordSpotting, decode_wav, encode_wav
from tests.tasks.conftest import Trained, train_in_process

REFERENCE = "pillars.tasks.speech:KeywordSpotting"
SMALL = {"voices": 24, "speeds": [130, 180]}
"""The small configuration the tests (and the end-to-end test) train: 480 clips (16 train voices) at 16 kHz."""
SAMPLE_RATE = KeywordSpotting().sample_rate
EPOCHS = 25
"""15 epochs reached 0.975 with two torch threads but 0.875 with one (the suite's setting): the small set's
floor needs the longer schedule to hold whatever the thread count."""
FLOOR = 0.90
UNSEEN_SPEED = 150

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None and not os.environ.get("CI"),
                                 reason="espeak-ng is not installed (apt-get install espeak-ng)"),
              pytest.mark.slow]  # the module's corpus and training take a minute and more


@pytest.fixture(scope="module")
def trained() -> Trained:
    started = time.monotonic()
    result = train_in_process(KeywordSpotting(**SMALL), epochs=EPOCHS, batch_size=32, learning_rate=3e-3)
    print(f"keyword_spotting {SMALL}: trained in {time.monotonic() - started:.1f} s")
    return result


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _espeak(voice: str, word: str, speed: int) -> bytes:
    return subprocess.run(["espeak-ng", "--stdout", "-v", f"en-us+{voice}", "-s", str(speed), word],
                          capture_output=True, check=True).stdout


# ---- data ---------------------------------------------------------------------------------------------------

def test_splits_are_by_voice_and_hold_every_word(trained: Trained) -> None:
    voices = {name: set(split["voice"]) for name, split in trained.data.splits().items()}
    assert not voices["train"] & voices["test"] and not voices["train"] & voices["val"]
    assert not voices["val"] & voices["test"]
    assert voices["test"] == set(trained.data.info["voices"]["test"])
    words = len(trained.prep["classes"])
    for split in trained.data.splits().values():
        assert np.bincount(split["label"], minlength=words).min() == len(set(split["voice"])) * len(SMALL["speeds"])
        assert split["audio"].shape[1:] == (SAMPLE_RATE,) and split["audio"].dtype == np.float32


def test_synthesis_is_the_same_with_and_without_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = KeywordSpotting(words=["yes", "no"], voices=3, speeds=[160])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = task.load_data(DataParams(seed=1))
    assert list((tmp_path / "pillars" / "keyword_spotting").glob("*.npz"))
    cached = task.load_data(DataParams(seed=1))
    for name, split in fresh.splits().items():
        for column, values in split.items():
            np.testing.assert_array_equal(values, cached.splits()[name][column], err_msg=f"{name}.{column}")
    assert np.abs(fresh.train["audio"]).max() > 0.05


def test_missing_espeak_is_a_data_error_naming_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        KeywordSpotting().load_data(DataParams())


# ---- the floor ------------------------------------------------------------------------------------------------

def test_accuracy_on_unseen_voices_meets_the_floor(trained: Trained) -> None:
    metrics = trained.evaluate("test")
    majority = np.bincount(trained.data.train["label"]).max() / len(trained.data.train["label"])
    print(f"keyword_spotting test accuracy {metrics['accuracy']:.3f} (floor {FLOOR}; majority class "
          f"{majority:.3f}) on voices {trained.data.info['voices']['test']}")
    assert metrics["accuracy"] >= FLOOR


# ---- behaviour ------------------------------------------------------------------------------------------------

def test_a_gain_change_does_not_change_the_prediction(trained: Trained) -> None:
    audio = trained.data.test["audio"]
    base = trained.predict({"audio": audio})
    for gain in (0.5, 1.8):
        out = trained.predict({"audio": audio * gain})
        np.testing.assert_array_equal(out["class_index"], base["class_index"], err_msg=f"gain {gain}")
        np.testing.assert_allclose(out["probabilities"], base["probabilities"], atol=1e-3)


def test_leading_silence_does_not_change_the_prediction(trained: Trained) -> None:
    audio = trained.data.test["audio"]
    silence = np.zeros((len(audio), int(0.3 * SAMPLE_RATE)), dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 1e-4, silence.shape).astype(np.float32)
    base = trained.predict({"audio": audio})["class_index"]
    for lead in (silence, noise):
        moved = trained.predict({"audio": np.concatenate([lead, audio], axis=1)})["class_index"]
        np.testing.assert_array_equal(moved, base)


def test_each_word_by_an_unseen_voice_at_an_unseen_speed_is_recognised(trained: Trained) -> None:
    """Fresh espeak-ng WAV files (22.05 kHz, resampled) of every word by every test voice, sent as ``wav``."""
    words = trained.prep["classes"]
    voices = trained.data.info["voices"]["test"]
    wavs = [_b64(_espeak(voice, word, UNSEEN_SPEED)) for word in words for voice in voices]
    predicted = trained.predict({"wav": np.array(wavs)})["label"].reshape(len(words), len(voices))
    right = predicted == np.array(words)[:, None]
    for word, hits in zip(words, right):
        assert hits.mean() > 0.5, f"{word!r} recognised for {hits.sum()} of {len(voices)} unseen voices: {predicted}"
    assert right.mean() >= FLOOR


def test_drift_features_measure_speech_duration_and_energy(trained: Trained) -> None:
    audio = trained.data.test["audio"][:8]
    features = trained.task.drift_features({"audio": audio}, trained.prep)
    assert set(features) == {"duration_s", "rms_db"}
    assert ((features["duration_s"] > 0.15) & (features["duration_s"] <= 1.0)).all()
    louder = trained.task.drift_features({"audio": audio * 2}, trained.prep)
    np.testing.assert_allclose(louder["rms_db"] - features["rms_db"], 20 * np.log10(2), atol=1e-3)
    padded = trained.task.drift_features({"audio": np.pad(audio, ((0, 0), (800, 0)))}, trained.prep)
    np.testing.assert_allclose(padded["duration_s"], features["duration_s"], atol=0.021)


# ---- bad inputs ----------------------------------------------------------------------------------------------

def _bad_wavs(rate: int) -> dict[str, str]:
    return {"not base64": "RIFF!!not-base64", "not a WAV": _b64(b"hello, not a wav file"),
            "4 kHz": _b64(encode_wav(np.sin(np.arange(4000) / 3), 4000)),
            "too short": _b64(encode_wav(np.sin(np.arange(rate // 20) / 3), rate)),
            "no samples": _b64(encode_wav(np.zeros(0), rate))}


def test_bad_inputs_raise_input_errors_naming_the_input(trained: Trained) -> None:
    task, prep = trained.task, trained.prep
    rate = SAMPLE_RATE
    clip = trained.data.test["audio"][:2]
    nan = clip.copy()
    nan[1, 100] = np.nan
    bad_audio = {"NaN": nan, "too short": clip[:, :rate // 20], "too long": np.tile(clip, 3),
                 "silent": np.zeros_like(clip)}
    for why, audio in bad_audio.items():
        with pytest.raises(InputError, match="'audio'"):
            task.encode({"audio": audio}, prep)
            pytest.fail(why)
    for why, wav in _bad_wavs(rate).items():
        with pytest.raises(InputError, match="'wav'"):
            task.encode({"wav": np.array([wav])}, prep)
            pytest.fail(why)
    with pytest.raises(InputError, match="exactly one of"):
        task.encode({"audio": clip, "wav": np.array([_b64(encode_wav(clip[0], rate))] * 2)}, prep)
    with pytest.raises(InputError, match="exactly one of"):
        task.encode({}, prep)


def test_wav_decoding_reads_what_it_is_given() -> None:
    rate = 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)).astype(np.float32)
    samples, got_rate = decode_wav(encode_wav(tone, rate))
    assert got_rate == rate
    np.testing.assert_allclose(samples, tone, atol=1 / 32767)
    with pytest.raises(ValueError, match="not a PCM WAV"):
        decode_wav(b"RIFF\x00\x00")


# ---- the served path ------------------------------------------------------------------------------------------

def test_saved_model_predicts_as_in_process(trained: Trained, tmp_path: Path) -> None:
    save_model(trained.task, REFERENCE, trained.prep, trained.model, tmp_path / "model")
    predictor = load_predictor(tmp_path / "model")
    audio = trained.data.test["audio"][:16]
    served = predictor.predict({"audio": audio})
    local = trained.predict({"audio": audio})
    np.testing.assert_array_equal(served["class_index"], local["class_index"])
    np.testing.assert_array_equal(served["label"], local["label"])
    np.testing.assert_allclose(served["probabilities"], local["probabilities"], atol=1e-5)
    wav = predictor.predict({"wav": [_b64(encode_wav(a, SAMPLE_RATE)) for a in audio]})
    np.testing.assert_array_equal(wav["class_index"], local["class_index"])
    names, rows = predictor.drift_rows(predictor.check({"audio": audio}))
    assert names == ["duration_s", "rms_db"] and rows.shape == (16, 2)
    with pytest.raises(InputError, match="'audio'"):
        predictor.predict({"audio": np.full((1, 4000), np.inf, dtype=np.float32)})
    with pytest.raises(InputError, match="'audio'"):
        predictor.predict({"audio": np.zeros((1, SAMPLE_RATE * 3), dtype=np.float32)})
    with pytest.raises(InputError, match="exactly one of"):
        predictor.predict({})
