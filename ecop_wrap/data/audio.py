"""Audio datasets: fixed-length mono clips from a folder of sound files, plus a numpy resampler.

Values are the float waveform in ``[-1, 1]`` (``D = 1``, not rescaled to ``[0, 1]``). Coordinates are 1-D
sample times scaled to ``[-coord_scale, coord_scale]`` (default 50, the scaling the paper uses for
LibriSpeech, Appendix A.1), so audio deliberately leaves the ``[-1, 1]`` coordinate convention. Reading needs
``pip install 'ecop-wrap[audio]'`` (soundfile).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._src.validation import check_int, check_positive
from ..signals import make_grid
from .base import SignalDataset, as_generator, import_optional

__all__ = ["AudioFolder", "load_audio", "resample", "synthesize_speech"]

_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
_CHUNK = 4096


def _kaiser(u: np.ndarray, beta: float) -> np.ndarray:
    """Kaiser window evaluated at ``u`` in ``[-1, 1]`` (zero outside)."""
    inside = np.clip(1.0 - u * u, 0.0, None)
    return np.where(np.abs(u) <= 1.0, np.i0(beta * np.sqrt(inside)) / np.i0(beta), 0.0)


def _filter_table(
    up: int, taps: np.ndarray, cutoff: float, width: int, beta: float, phases: np.ndarray | None = None
) -> np.ndarray:
    """Windowed-sinc weights ``[P, taps]`` for fractional offsets ``phase / up`` (all ``up`` phases by default)."""
    phases = np.arange(up) if phases is None else phases
    delta = phases[:, None] / up - taps  # input time minus tap position
    weights: np.ndarray = cutoff * np.sinc(cutoff * delta) * _kaiser(delta / width, beta)
    return weights


def resample(
    waveform: np.ndarray,
    orig_rate: int,
    target_rate: int,
    *,
    zero_crossings: int = 32,
    rolloff: float = 0.95,
    beta: float = 8.6,
) -> np.ndarray:
    """Band-limited resampling by Kaiser-windowed sinc interpolation (any rate ratio).

    Output sample ``n`` sits at input time ``n * orig_rate / target_rate``; it is the sum of the neighbouring
    input samples weighted by a low-pass sinc with cut-off ``rolloff * min(orig_rate, target_rate) / 2`` Hz,
    tapered by a Kaiser window ``zero_crossings`` sinc lobes wide. The signal is zero outside its ends.

    Args:
        waveform: ``[..., L]`` samples (resampled along the last axis).
        orig_rate, target_rate: sample rates in Hz.
        zero_crossings: half-width of the filter in zero crossings (more = sharper, slower).
        rolloff: cut-off as a fraction of the lower Nyquist frequency, in ``(0, 1]``.
        beta: Kaiser window shape.

    Returns:
        float64 ``[..., ceil(L * target_rate / orig_rate)]``.
    """
    orig_rate, target_rate = check_int("orig_rate", orig_rate, 1), check_int("target_rate", target_rate, 1)
    zero_crossings = check_int("zero_crossings", zero_crossings, 1)
    if not 0.0 < rolloff <= 1.0:
        raise ValueError(f"rolloff must be in (0, 1], got {rolloff}")
    signal = np.asarray(waveform, dtype=np.float64)
    if signal.ndim == 0:
        raise ValueError("waveform must have at least one axis [..., L]")
    if orig_rate == target_rate:
        return np.copy(signal)
    step = math.gcd(orig_rate, target_rate)
    up, down = target_rate // step, orig_rate // step  # output n sits at input time n * down / up
    length = signal.shape[-1]
    out_length = -(-length * up // down)
    cutoff = rolloff * min(1.0, up / down)  # fraction of the input Nyquist frequency
    width = math.ceil(zero_crossings / cutoff)
    taps = np.arange(-width + 1, width + 1)
    table = _filter_table(up, taps, cutoff, width, beta) if up <= max(out_length, 1) else None
    out = np.empty((*signal.shape[:-1], out_length))
    for first in range(0, out_length, _CHUNK):
        steps = np.arange(first, min(first + _CHUNK, out_length), dtype=np.int64) * down
        phase = steps % up
        index = (steps // up)[:, None] + taps
        weights = table[phase] if table is not None else _filter_table(up, taps, cutoff, width, beta, phase)
        weights = weights * ((index >= 0) & (index < length))
        out[..., first : first + len(steps)] = (signal[..., np.clip(index, 0, length - 1)] * weights).sum(-1)
    return out


def load_audio(file: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a sound file as a mono float32 waveform (channels averaged), optionally resampled.

    Args:
        file: any format libsndfile reads (wav, flac, ogg, ...).
        sample_rate: target rate in Hz (default: keep the file's rate).

    Returns:
        ``(waveform [L], rate)``.
    """
    soundfile = import_optional("soundfile", "audio")
    data, rate = soundfile.read(str(file), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if sample_rate is not None and sample_rate != rate:
        mono = resample(mono, rate, sample_rate).astype(np.float32)
        rate = sample_rate
    return mono, int(rate)


def _fit_length(waveform: np.ndarray, length: int, crop: str, rng: np.random.Generator) -> np.ndarray:
    """Cut ``waveform`` to ``length`` samples (start/centre/random window) or zero-pad its end."""
    extra = len(waveform) - length
    if extra <= 0:
        return np.pad(waveform, (0, -extra))
    offset = {"start": 0, "center": extra // 2}.get(crop)
    if offset is None:
        offset = int(rng.integers(0, extra + 1))
    return waveform[offset : offset + length]


def _audio_files(path: str | Path, suffixes: Sequence[str]) -> list[Path]:
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"path must be an existing directory, got {str(path)!r}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"path {str(path)!r} holds no audio files with suffixes {tuple(suffixes)}")
    return files


class AudioFolder(SignalDataset):
    """Every sound file under a folder (recursively) as a fixed-length mono signal.

    Files are mixed to mono, resampled to ``sample_rate`` with :func:`resample`, and cut to
    ``round(seconds * sample_rate)`` samples (window at the start, centre or a random place) or zero-padded.

    Args:
        path: folder to search.
        sample_rate: target rate in Hz (16 kHz as LibriSpeech).
        seconds: clip duration.
        coord_scale: coordinates span ``[-coord_scale, coord_scale]``.
        crop: ``"start"``, ``"center"`` or ``"random"`` window for longer files.
        seed: random seed for ``crop="random"``.
        suffixes: file suffixes to read (lower case, with the dot).
        dtype: of coords and values.

    Attributes:
        files: the sound files in sorted order.
        metadata: ``sample_rate``, ``coord_scale`` and each file's original duration in seconds.

    Shapes: ``shape = (L,)``, coords ``[L, 1]``, values ``[N, L, 1]`` in ``[-1, 1]``.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int = 16000,
        seconds: float = 1.0,
        *,
        coord_scale: float = 50.0,
        crop: str = "start",
        seed: int = 0,
        suffixes: Sequence[str] = _AUDIO_SUFFIXES,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        sample_rate = check_int("sample_rate", sample_rate, 1)
        length = max(1, round(check_positive("seconds", seconds) * sample_rate))
        coord_scale = check_positive("coord_scale", coord_scale)
        if crop not in ("start", "center", "random"):
            raise ValueError(f"crop must be 'start', 'center' or 'random', got {crop!r}")
        rng = as_generator(seed)
        self.files = _audio_files(path, tuple(s.lower() for s in suffixes))
        clips, durations = [], []
        for file in self.files:
            waveform, _ = load_audio(file, sample_rate)
            durations.append(len(waveform) / sample_rate)
            clips.append(torch.from_numpy(_fit_length(waveform, length, crop, rng).astype(np.float32))[:, None])
        metadata = {"sample_rate": sample_rate, "coord_scale": coord_scale, "durations": durations, "crop": crop}
        coords = make_grid((length,), low=-coord_scale, high=coord_scale, dtype=dtype)
        names = [f.relative_to(path).as_posix() for f in self.files]
        super().__init__(torch.stack(clips), (length,), coords=coords, names=names, metadata=metadata, dtype=dtype)


def synthesize_speech(
    texts: Sequence[str],
    folder: str | Path,
    *,
    voice: str = "en-us",
    words_per_minute: int = 160,
    prefix: str = "speech",
) -> list[Path]:
    """Write one wav file of synthetic speech per text with the ``espeak-ng`` program (22.05 kHz, mono).

    Args:
        texts: sentences to speak.
        folder: output folder (created if needed); files are ``{prefix}_{i:04d}.wav``.
        voice: espeak-ng voice, e.g. ``"en-us"``, ``"en-gb"``, ``"de"``.
        words_per_minute: speaking rate.
        prefix: file-name prefix.

    Returns:
        The written paths, in the order of ``texts``.

    Raises:
        RuntimeError: if ``espeak-ng`` is not on PATH (Debian/Ubuntu: ``apt-get install espeak-ng``) or fails.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise TypeError("texts must be a sequence of non-empty strings")
    program = shutil.which("espeak-ng")
    if program is None:
        raise RuntimeError("synthesize_speech needs the espeak-ng program on PATH (e.g. apt-get install espeak-ng)")
    words_per_minute = check_int("words_per_minute", words_per_minute, 80)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        path = out / f"{prefix}_{i:04d}.wav"
        command = [program, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not path.is_file():
            raise RuntimeError(f"espeak-ng failed on text {i} ({result.returncode}): {result.stderr.strip()}")
        paths.append(path)
    return paths
