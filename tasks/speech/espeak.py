"""Speech synthesised with espeak-ng, for the keyword-spotting task's data.

``espeak-ng --stdout -v en-us+VARIANT -s SPEED WORD`` gives the same bytes for the same command, so the clips
are cached under ``$XDG_CACHE_HOME/pillars/keyword_spotting`` (``~/.cache`` by default) in a file named by a
hash of the commands and the espeak-ng version: the result is the same with or without the cache.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pillars.components.errors import DataError
from pillars.tasks.speech.audio import decode_wav

logger = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install espeak-ng"
CACHE_VERSION = 1


def spread(names: Sequence[str], count: int) -> list[str]:
    """``count`` of ``names`` spread evenly over the sorted list (all of them for 0 or more than there are)."""
    if count == 0 or count >= len(names):
        return list(names)
    return [names[i] for i in np.unique(np.linspace(0, len(names) - 1, count).round().astype(int))]


def installed_variants(espeak: str) -> list[str]:
    """The voice variants espeak-ng lists (``espeak-ng --voices=variant``), sorted by file name."""
    listing = _run([espeak, "--voices=variant"]).decode()
    names = {line.split()[4].rsplit("/", 1)[-1] for line in listing.splitlines()[1:] if len(line.split()) >= 5}
    return sorted(names)


def synthesize(commands: Sequence[Sequence[str]]) -> list[tuple[np.ndarray, int]]:
    """Run every espeak-ng command (in parallel) and return each clip (16-bit mono, trailing silence removed)
    with its rate; cached on disk under a name derived from the commands and the espeak-ng version."""
    key = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "espeak": espeak_version(commands[0][0]),
                                     "commands": [list(c[1:]) for c in commands]}).encode()).hexdigest()[:24]
    path = _cache_dir() / f"{key}.npz"
    cached = _read_cache(path, len(commands))
    if cached is not None:
        return cached
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        clips = list(pool.map(_synthesize_one, commands))
    _write_cache(path, clips)
    return clips


def _synthesize_one(command: Sequence[str]) -> tuple[np.ndarray, int]:
    try:
        samples, rate = decode_wav(_run(command))
    except ValueError as e:
        raise DataError(f"espeak-ng wrote no usable WAV for {' '.join(command[1:])}: {e}") from e
    pcm = np.round(samples * 32768).astype(np.int16)
    nonzero = np.flatnonzero(pcm)
    if nonzero.size == 0:
        raise DataError(f"espeak-ng wrote silence for {' '.join(command[1:])}")
    return pcm[:nonzero[-1] + 1].astype(np.float32) / 32768, rate


def _run(command: Sequence[str]) -> bytes:
    try:
        return subprocess.run(list(command), capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError as e:
        raise DataError(f"espeak-ng is not installed: {INSTALL_HINT}") from e
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        stderr = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip()
        raise DataError(f"espeak-ng failed for {' '.join(command[1:])}: {stderr or e}") from e


def espeak_version(espeak: str) -> str:
    """What ``espeak-ng --version`` says, without its data path."""
    return _run([espeak, "--version"]).decode().split("Data at")[0].strip()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pillars" / "keyword_spotting"


def _read_cache(path: Path, count: int) -> list[tuple[np.ndarray, int]] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            pcm, lengths, rates = data["pcm"], data["lengths"], data["rates"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        logger.warning("ignoring the unreadable speech cache %s: %s", path, e)
        return None
    if len(lengths) != count or int(lengths.sum()) != len(pcm):
        logger.warning("ignoring the speech cache %s: it does not match the commands", path)
        return None
    ends = np.cumsum(lengths)
    return [(pcm[end - n:end].astype(np.float32) / 32768, int(rate)) for end, n, rate in zip(ends, lengths, rates)]


def _write_cache(path: Path, clips: list[tuple[np.ndarray, int]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, pcm=np.concatenate([np.round(s * 32768).astype(np.int16) for s, _ in clips]),
                     lengths=np.array([len(s) for s, _ in clips], dtype=np.int64),
                     rates=np.array([r for _, r in clips], dtype=np.int64))
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not cache the synthesised speech in %s: %s", path, e)
        tmp.unlink(missing_ok=True)
