"""Signals on the sphere: global temperature fields read from Met Office PP files, and user lat/lon arrays.

Coordinates are 3-D points on the unit sphere, ``c = (cos(lat) cos(lon), cos(lat) sin(lon), sin(lat))`` (the
ERA5 pre-processing of the paper); values are temperatures min-max normalised to ``[0, 1]`` with the range
kept on the dataset (:attr:`LatLonArray.value_min`, :attr:`LatLonArray.value_max`).

The PP reader is self-contained (no iris): a PP file is a sequence of big-endian Fortran unformatted records,
alternating a 64-word header (45 int32 + 19 float32) and a data record. Only unpacked fields (``LBPACK = 0``)
of 32-bit reals or integers are supported; WGDOS or other packed fields raise ``NotImplementedError``. All
the PP files of ``iris-sample-data`` are unpacked. Sample data need ``pip install 'ecop-wrap[sphere]'``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._src.validation import check_int
from .base import SignalDataset

__all__ = [
    "AIR_TEMPERATURE_1P5M",
    "GLOSEA4_TEST",
    "GLOSEA4_TRAIN",
    "PP_INT_NAMES",
    "PP_REAL_NAMES",
    "LatLonArray",
    "iris_sample_path",
    "latlon_to_sphere",
    "pp_fields",
    "pp_latlon",
    "temperature_grids",
]

#: names of the 45 integer header words (UM documentation paper F3).
PP_INT_NAMES: tuple[str, ...] = (
    "LBYR", "LBMON", "LBDAT", "LBHR", "LBMIN", "LBDAY", "LBYRD", "LBMOND", "LBDATD", "LBHRD", "LBMIND",
    "LBDAYD", "LBTIM", "LBFT", "LBLREC", "LBCODE", "LBHEM", "LBROW", "LBNPT", "LBEXT", "LBPACK", "LBREL",
    "LBFC", "LBCFC", "LBPROC", "LBVC", "LBRVC", "LBEXP", "LBEGIN", "LBNREC", "LBPROJ", "LBTYP", "LBLEV",
    "LBRSVD1", "LBRSVD2", "LBRSVD3", "LBRSVD4", "LBSRCE", "LBUSER1", "LBUSER2", "LBUSER3", "LBUSER4",
    "LBUSER5", "LBUSER6", "LBUSER7",
)  # fmt: skip
#: names of the 19 real header words.
PP_REAL_NAMES: tuple[str, ...] = (
    "BRSVD1", "BRSVD2", "BRSVD3", "BRSVD4", "BDATUM", "BACC", "BLEV", "BRLEV", "BHLEV", "BHRLEV", "BPLAT",
    "BPLON", "BGOR", "BZY", "BDY", "BZX", "BDX", "BMDI", "BMKS",
)  # fmt: skip

#: GloSea4 ensemble members (surface temperature, STASH 24, 6 monthly means each, 145 x 192 grid) for training.
GLOSEA4_TRAIN: tuple[str, ...] = tuple(f"GloSea4/ensemble_{i:03d}.pp" for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11))
#: GloSea4 ensemble members held out for testing.
GLOSEA4_TEST: tuple[str, ...] = ("GloSea4/ensemble_012.pp", "GloSea4/ensemble_013.pp")
#: 1.5 m air temperature (STASH 3236), one annual mean each on the same 145 x 192 grid: (train, train, test).
AIR_TEMPERATURE_1P5M: tuple[str, ...] = ("pre-industrial.pp", "A1B.2098.pp", "E1.2098.pp")

_SOURCES = ("all", "glosea4", "air_temperature")
_SPLITS = ("all", "train", "test")


def _records(raw: bytes, path: Path) -> tuple[list[bytes], str]:
    """Split Fortran unformatted sequential records (4-byte length markers, byte order from the first)."""
    if len(raw) < 4:
        raise ValueError(f"{path} is not a PP file (too short)")
    order = ">" if int.from_bytes(raw[:4], "big") == 256 else "<"
    if int.from_bytes(raw[:4], "big" if order == ">" else "little") != 256:
        raise ValueError(f"{path} is not a 32-bit PP file: the first record is not a 256-byte header")
    records, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "big" if order == ">" else "little")
        end = offset + 4 + size
        if end + 4 > len(raw) or raw[end : end + 4] != raw[offset : offset + 4]:
            raise ValueError(f"{path}: corrupt record at byte {offset}")
        records.append(raw[offset + 4 : end])
        offset = end + 4
    return records, order


def _header(record: bytes, order: str) -> dict[str, Any]:
    ints = np.frombuffer(record[:180], dtype=f"{order}i4")
    reals = np.frombuffer(record[180:256], dtype=f"{order}f4")
    header: dict[str, Any] = {name: int(v) for name, v in zip(PP_INT_NAMES, ints, strict=True)}
    header.update({name: float(v) for name, v in zip(PP_REAL_NAMES, reals, strict=True)})
    return header


def _field(header: dict[str, Any], record: bytes, order: str, path: Path) -> np.ndarray:
    if header["LBPACK"] % 10 != 0:
        raise NotImplementedError(
            f"{path}: field packed with LBPACK={header['LBPACK']} (e.g. WGDOS); only unpacked fields are supported"
        )
    rows, cols = header["LBROW"], header["LBNPT"]
    if rows <= 0 or cols <= 0:
        raise ValueError(f"{path}: field has no regular grid (LBROW={rows}, LBNPT={cols})")
    kind = {1: "f4", 2: "i4", 3: "i4"}.get(header["LBUSER1"], "f4")
    data = np.frombuffer(record, dtype=f"{order}{kind}", count=rows * cols).reshape(rows, cols)
    data = data.astype(np.float32 if kind == "f4" else np.int32)
    if kind == "f4":
        data[data == np.float32(header["BMDI"])] = np.nan
    return data


def pp_fields(path: str | Path) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Read every field of a Met Office PP file.

    Args:
        path: PP file (32-bit words, either byte order, unpacked fields).

    Returns:
        ``[(header, field), ...]``: ``header`` maps the 64 standard names (:data:`PP_INT_NAMES`,
        :data:`PP_REAL_NAMES`, e.g. ``LBROW``, ``LBUSER4`` = STASH code, ``BZY``/``BDY`` for latitudes) to
        values; ``field`` is ``[LBROW, LBNPT]`` float32 (missing data ``BMDI`` -> NaN) or int32. Rows follow
        the file's order (see :func:`pp_latlon`).

    Raises:
        ValueError: not a PP file.
        NotImplementedError: a packed field.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be an existing PP file, got {str(path)!r}")
    records, order = _records(path.read_bytes(), path)
    if len(records) % 2:
        raise ValueError(f"{path}: odd number of records; expected header/data pairs")
    fields = []
    for head, body in zip(records[0::2], records[1::2], strict=True):
        if len(head) != 256:
            raise ValueError(f"{path}: header record of {len(head)} bytes, expected 256")
        header = _header(head, order)
        fields.append((header, _field(header, body, order, path)))
    return fields


def pp_latlon(header: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes ``[LBROW]`` and longitudes ``[LBNPT]`` (degrees) of a regular PP grid.

    Row ``j`` (0-based) is at ``BZY + (j + 1) * BDY``, column ``i`` at ``BZX + (i + 1) * BDX``.

    Raises:
        ValueError: for an irregular grid (``BDY`` or ``BDX`` zero) or a rotated pole (``BPLAT != 90``).
    """
    if header["BDY"] == 0 or header["BDX"] == 0:
        raise ValueError("header describes an irregular grid (BDY or BDX is 0); coordinates are not supported")
    if abs(header["BPLAT"] - 90.0) > 1e-6:
        raise ValueError(f"header has a rotated pole (BPLAT={header['BPLAT']}); only regular lat/lon is supported")
    lats = header["BZY"] + header["BDY"] * np.arange(1, header["LBROW"] + 1, dtype=np.float64)
    lons = header["BZX"] + header["BDX"] * np.arange(1, header["LBNPT"] + 1, dtype=np.float64)
    return lats, lons


def latlon_to_sphere(
    lat_deg: np.ndarray | torch.Tensor | float, lon_deg: np.ndarray | torch.Tensor | float
) -> torch.Tensor:
    """Points on the unit sphere, ``(cos(lat) cos(lon), cos(lat) sin(lon), sin(lat))``.

    Args:
        lat_deg, lon_deg: broadcastable latitudes and longitudes in degrees.

    Returns:
        float64 ``[*broadcast shape, 3]``.
    """
    lat = torch.deg2rad(torch.as_tensor(lat_deg, dtype=torch.float64))
    lon = torch.deg2rad(torch.as_tensor(lon_deg, dtype=torch.float64))
    lat, lon = torch.broadcast_tensors(lat, lon)
    return torch.stack((torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)), dim=-1)


class LatLonArray(SignalDataset):
    """Fields on a regular latitude/longitude grid as signals on the unit sphere.

    Args:
        array: ``[N, n_lat, n_lon]`` (or one ``[n_lat, n_lon]``) values, e.g. temperatures in K.
        lats: ``[n_lat]`` latitudes in degrees.
        lons: ``[n_lon]`` longitudes in degrees.
        value_range: ``(min, max)`` mapped to ``[0, 1]``; default the array's own min and max. Pass the
            training set's range to normalise a test set identically.
        names: one label per field.
        metadata: extra information (units, sources, ...).
        dtype: of coords and values.

    Attributes:
        lats: the latitude axis ``[n_lat]`` in degrees (float64 numpy).
        lons: the longitude axis ``[n_lon]`` in degrees (float64 numpy).
        value_min: the lower end of the normalisation range (maps to 0).
        value_max: the upper end of the normalisation range (maps to 1).

    Shapes: ``shape = (n_lat, n_lon)``, coords ``[n_lat*n_lon, 3]`` (row-major: latitude outer), values
    ``[N, n_lat*n_lon, 1]`` in ``[0, 1]`` when ``value_range`` is the data's range.
    """

    def __init__(
        self,
        array: np.ndarray | torch.Tensor,
        lats: Sequence[float] | np.ndarray,
        lons: Sequence[float] | np.ndarray,
        *,
        value_range: tuple[float, float] | None = None,
        names: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        data = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array, dtype=np.float64)
        data = data[None] if data.ndim == 2 else data
        self.lats = np.asarray(lats, dtype=np.float64).reshape(-1)
        self.lons = np.asarray(lons, dtype=np.float64).reshape(-1)
        if data.ndim != 3 or data.shape[1:] != (len(self.lats), len(self.lons)):
            raise ValueError(
                f"array must be [N, n_lat={len(self.lats)}, n_lon={len(self.lons)}], got shape {np.shape(array)}"
            )
        if not np.isfinite(data).all():
            raise ValueError("array contains NaN or inf (missing data); fill or drop those fields first")
        if np.abs(self.lats).max() > 90.0:
            raise ValueError("lats must be latitudes in degrees within [-90, 90]")
        low, high = (float(data.min()), float(data.max())) if value_range is None else map(float, value_range)
        if not high > low:
            raise ValueError(f"value_range must have max > min, got ({low}, {high})")
        self.value_min, self.value_max = low, high
        values = torch.from_numpy((data - low) / (high - low)).reshape(len(data), -1, 1)
        lat_grid, lon_grid = np.meshgrid(self.lats, self.lons, indexing="ij")
        coords = latlon_to_sphere(lat_grid.reshape(-1), lon_grid.reshape(-1))
        meta = dict(metadata or {}, value_min=low, value_max=high)
        super().__init__(values, data.shape[1:], coords=coords, names=names, metadata=meta, dtype=dtype)

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        """Map normalised values back to the original units: ``v * (max - min) + min``."""
        return values * (self.value_max - self.value_min) + self.value_min


def iris_sample_path() -> Path:
    """Folder of the installed ``iris-sample-data`` package's files."""
    spec = importlib.util.find_spec("iris_sample_data")
    if spec is None or spec.origin is None:
        raise ImportError("temperature_grids needs the sample data; install it with: pip install 'ecop-wrap[sphere]'")
    folder = Path(spec.origin).parent / "sample_data"
    if not folder.is_dir():
        raise ImportError(f"iris-sample-data is installed but {folder} is missing; reinstall 'ecop-wrap[sphere]'")
    return folder


def _source_files(source: str, split: str) -> list[str]:
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    glosea = {"train": GLOSEA4_TRAIN, "test": GLOSEA4_TEST, "all": GLOSEA4_TRAIN + GLOSEA4_TEST}[split]
    air = {"train": AIR_TEMPERATURE_1P5M[:2], "test": AIR_TEMPERATURE_1P5M[2:], "all": AIR_TEMPERATURE_1P5M}[split]
    return list(glosea if source == "glosea4" else air if source == "air_temperature" else glosea + air)


def _read_temperatures(folder: Path, files: Sequence[str]) -> tuple[list[np.ndarray], list[str], dict[str, Any]]:
    fields, names, grid, header = [], [], None, {}
    for name in files:
        for k, (head, field) in enumerate(pp_fields(folder / name)):
            head_grid = tuple(head[key] for key in ("LBROW", "LBNPT", "BZY", "BDY", "BZX", "BDX"))
            if grid is not None and head_grid != grid:
                raise ValueError(f"{name} field {k} is on a different grid {head_grid} from the others {grid}")
            grid, header = head_grid, head
            fields.append(field)
            names.append(f"{name}#{k}")
    return fields, names, header


def temperature_grids(
    source: str = "all",
    split: str = "all",
    *,
    stride: int = 1,
    value_range: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> LatLonArray:
    """Global temperature fields from ``iris-sample-data`` as signals on the sphere.

    ``"glosea4"``: 13 GloSea4 seasonal-forecast ensemble members, 6 monthly-mean surface temperature fields
    each (78 fields); ``"air_temperature"``: three annual means of 1.5 m air temperature from climate runs
    (pre-industrial, A1B and E1 scenarios for 2098). All share one 1.25 x 1.875 degree grid of 145 latitudes
    (south pole to north pole) x 192 longitudes. Splits are by file: ensemble members 012, 013 and
    ``E1.2098.pp`` are the test set.

    Args:
        source: ``"all"``, ``"glosea4"`` or ``"air_temperature"``.
        split: ``"all"``, ``"train"`` or ``"test"``.
        stride: keep every ``stride``-th latitude and longitude (``2`` gives 73 x 96).
        value_range: normalisation ``(min, max)`` in K; default the min and max over *all* the files of the
            source (both splits), so train and test share it.
        dtype: of coords and values.

    Returns:
        :class:`LatLonArray` with values ``[N, n_lat*n_lon, 1]`` in ``[0, 1]``, coords on the unit sphere,
        ``value_min``/``value_max`` in K; ``names[i]`` = ``"file#field"``.
    """
    stride = check_int("stride", stride, 1)
    folder = iris_sample_path()
    fields, names, header = _read_temperatures(folder, _source_files(source, split))
    if value_range is None:
        every, _, _ = _read_temperatures(folder, _source_files(source, "all"))
        value_range = (float(np.min(every)), float(np.max(every)))
    lats, lons = pp_latlon(header)
    array = np.stack(fields)[:, ::stride, ::stride]
    metadata = {"units": "K", "source": source, "split": split, "files": _source_files(source, split)}
    return LatLonArray(
        array, lats[::stride], lons[::stride], value_range=value_range, names=names, metadata=metadata, dtype=dtype
    )
