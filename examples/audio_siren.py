"""Meta-learn a SIREN for speech with ECoP and compare it with Learnit on held-out clips.

A clip is a context set over time: coordinates are sample times scaled to ``[-s, s]`` with ``s = 50 x seconds``
(the paper scales one second of LibriSpeech to ``[-50, 50]``), values the waveform in ``[-1, 1]``.

Speech comes from ``--audio DIR`` (any wav/flac/ogg files, read with soundfile, mixed to mono, resampled) or,
by default, is synthesised into a temporary folder with the ``espeak-ng`` program: sentences spoken by several
English voices, with held-out sentences for testing. Without espeak-ng and without ``--audio`` the script
explains where to get speech offline (see also docs/data.md, "Offline speech").

    python examples/audio_siren.py                                     # 5-10 minutes on 2 CPU cores
    python examples/audio_siren.py --audio /usr/share/klettres/en      # apt-get install klettres-data
    python examples/audio_siren.py --audio speech/ --sample-rate 16000 --seconds 1 --device cuda

Writes to ``--out`` (default ``outputs/audio/``): ``reconstructions.png`` (held-out waveforms, both methods,
with a zoomed window), ``selection.png`` (Figure 1 for a waveform: selected samples and error at k = 0,
K/2, K-1), ``psnr_per_step.png``, ``meta_training.png``, ``ecop.pt``, ``learnit.pt`` and ``summary.json``.
PSNR uses the library's data range 1 on waveforms in ``[-1, 1]``. Needs ``pip install 'ecop-wrap[audio,examples]'``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Example, add_common_flags, example_parser, reconstructions, run, selection, setup, siren_factory

from ecop_wrap import make_grid
from ecop_wrap.data import SignalDataset, load_audio, synthesize_speech
from ecop_wrap.plotting import plot_waveforms

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A warm breeze drifted through the open window.",
    "Seven small boats sailed across the quiet harbour.",
    "She counted the coins twice before paying.",
    "Bright lanterns lit the narrow street at dusk.",
    "Thunder rolled over the distant hills.",
    "He planted tomatoes along the garden fence.",
    "The library closes early on Sundays.",
    "Fresh bread smells wonderful in the morning.",
    "Our train leaves from platform nine.",
    "The cat slept on a pile of folded laundry.",
    "Please send the report before Friday.",
    "Rain tapped softly against the roof.",
    "The river bends sharply near the old mill.",
    "They painted the kitchen a pale yellow.",
    "A flock of geese flew south in a long line.",
    "The clock in the hall struck midnight.",
    "Hot soup is perfect on a cold evening.",
    "The children built a fort out of blankets.",
    "Every map shows the mountains in brown.",
    "Turn left at the second traffic light.",
    "The violinist tuned her strings carefully.",
    "Snow covered the fields by morning.",
    "A single candle flickered on the table.",
    "We watched the sunset from the pier.",
    "The baker wiped flour from his hands.",
    "Owls hunt quietly through the night.",
    "The museum opened a new wing last spring.",
    "Jazz music drifted up from the cellar.",
    "Green apples taste sharper than red ones.",
    "The pilot announced a short delay.",
    "Waves crashed against the rocky shore.",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029")
NO_SPEECH = """error: no --audio folder was given and the espeak-ng program is not installed, so there is no speech
to train on. Any of these works offline (details in docs/data.md, "Offline speech"):
  * apt-get install espeak-ng      then rerun: synthetic speech is generated automatically;
  * apt-get install klettres-data  then: python examples/audio_siren.py --audio /usr/share/klettres/en
  * apt-get install asterisk-core-sounds-en-g722, convert the prompts to wav with ffmpeg as shown in
    docs/data.md, then: python examples/audio_siren.py --audio speech/
  * your own recordings (e.g. LibriSpeech flac files): --audio DIR [--test-audio DIR]"""


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag has a help text (``--help``)."""
    parser = example_parser(
        __doc__,
        "The defaults (0.25 s at 8 kHz = 2000 samples, SIREN 3x128, batch 4, 200 outer steps) finish in "
        "minutes on a 2-core CPU; the paper uses 1 s at 16 kHz, a 5-layer SIREN, and gamma 0.5 with K 8 "
        "for LibriSpeech (try --gamma 0.5 --inner-steps 8).",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--audio",
        type=Path,
        default=None,
        help="folder of wav/flac/ogg files (searched recursively); default: espeak-ng speech",
    )
    data.add_argument(
        "--test-audio",
        type=Path,
        default=None,
        help="folder of held-out files (default with --audio: every 5th file is held out)",
    )
    data.add_argument("--sample-rate", type=int, default=8000, help="resample everything to this rate (Hz)")
    data.add_argument("--seconds", type=float, default=0.25, help="clip length; longer files are cropped")
    data.add_argument(
        "--coord-scale",
        type=float,
        default=None,
        help="coordinates span [-s, s] (default 50 x seconds, the paper's time scaling)",
    )
    data.add_argument("--crops-per-file", type=int, default=4, help="random clips cut from every training file")
    return add_common_flags(parser, outer_steps=200, test_signals=8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


def _clips(folder: Path, args: argparse.Namespace, crops: int, seed: int) -> SignalDataset:
    """``crops`` random windows of ``--seconds`` from every sound file under ``folder`` (zero-padded if shorter).

    Each file is read, mixed to mono and resampled once with :func:`ecop_wrap.data.load_audio`; coordinates
    are the sample times scaled to ``[-s, s]`` as in :class:`ecop_wrap.data.AudioFolder`.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise SystemExit(f"error: no sound files ({', '.join(AUDIO_SUFFIXES)}) under {folder}")
    length = max(1, round(args.seconds * args.sample_rate))
    rng = np.random.default_rng(seed)
    clips, names = [], []
    for file in files:
        waveform, _ = load_audio(file, args.sample_rate)
        waveform = np.pad(waveform, (0, max(0, length - len(waveform))))
        for start in rng.integers(0, len(waveform) - length + 1, size=crops):
            clips.append(torch.from_numpy(np.ascontiguousarray(waveform[start : start + length]))[:, None])
            names.append(f"{file.relative_to(folder).as_posix()}@{start / args.sample_rate:.2f}s")
    scale = args.coord_scale if args.coord_scale is not None else 50.0 * args.seconds
    coords = make_grid((length,), low=-scale, high=scale)
    return SignalDataset(
        torch.stack(clips),
        (length,),
        coords=coords,
        names=names,
        metadata={"sample_rate": args.sample_rate, "coord_scale": scale},
    )


def _synthesize(folder: Path) -> dict:
    """Training sentences in every voice under ``folder/train``, the last 6 sentences under ``folder/test``."""
    train_text, test_text = SENTENCES[:-6], SENTENCES[-6:]
    for voice in VOICES:
        synthesize_speech(train_text, folder / "train", voice=voice, prefix=voice)
        synthesize_speech(test_text, folder / "test", voice=voice, prefix=voice)
    return {"source": "espeak-ng synthetic speech", "voices": list(VOICES), "test_sentences": list(test_text)}


def _split_folder(args: argparse.Namespace, seed: int) -> tuple[SignalDataset, SignalDataset]:
    """Hold out every 5th file of ``--audio`` (sorted by path)."""
    files = sorted(p for p in args.audio.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if len(files) < 2:
        raise SystemExit(f"error: --audio {args.audio} needs at least 2 sound files to hold some out (or --test-audio)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for index, source in enumerate(files):
            target = root / ("test" if index % 5 == 0 else "train") / source.relative_to(args.audio)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
        return _clips(root / "train", args, args.crops_per_file, seed), _clips(root / "test", args, 1, seed + 999)


def load_data(args: argparse.Namespace) -> tuple[SignalDataset, SignalDataset, dict]:
    """Training and held-out clips, values ``[N, L, 1]`` in ``[-1, 1]`` on ``L = seconds x sample_rate`` samples."""
    if args.audio is not None:
        if args.test_audio is not None:
            train = _clips(args.audio, args, args.crops_per_file, args.seed)
            test = _clips(args.test_audio, args, 1, args.seed + 999)
        else:
            train, test = _split_folder(args, args.seed)
        notes = {"source": str(args.audio)}
    else:
        if shutil.which("espeak-ng") is None:
            raise SystemExit(NO_SPEECH)
        with tempfile.TemporaryDirectory(prefix="ecop-speech-") as tmp:
            notes = _synthesize(Path(tmp))
            train = _clips(Path(tmp) / "train", args, args.crops_per_file, args.seed)
            test = _clips(Path(tmp) / "test", args, 1, args.seed + 999)
    train = train.subset(range(min(args.train_signals, len(train))))
    test = test.subset(
        torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[: args.test_signals].tolist()
    )
    return train, test, notes


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = setup(args)
    if args.sample_rate < 1 or args.seconds <= 0 or args.crops_per_file < 1:
        raise SystemExit("error: --sample-rate, --seconds and --crops-per-file must be positive")
    train, test, notes = load_data(args)
    scale = float(train.coords.abs().max())
    notes.update(
        sample_rate=args.sample_rate,
        seconds=args.seconds,
        coord_scale=scale,
        psnr_data_range=1.0,
        test_clips=test.names,
    )
    example = Example(
        "audio",
        train,
        test,
        siren_factory(config, 1, 1, output_offset=0.0),
        reconstructions(
            f"held-out speech after {config.test_steps} test-time steps",
            plot=plot_waveforms,
            sample_rate=args.sample_rate,
        ),
        selection(
            train,
            f"ECoP's pruned context (gamma = {config.gamma}) on a held-out clip, from the meta-learned init",
            sample_rate=args.sample_rate,
        ),
        coord_range=(-scale, scale),
        notes=notes,
    )
    return run(example, config)


if __name__ == "__main__":
    main()
