"""``ecop_wrap.memory.configure_cpu_allocator``: what it sets, idempotence, the environment, non-glibc platforms.

Most tests replace the C library with a recorder, so the test process's own allocator is never changed; one
test calls the real ``mallopt`` in a subprocess and checks its effect on where glibc puts a block.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ecop_wrap import memory
from ecop_wrap.memory import configure_cpu_allocator, release_cpu_memory

DEFAULTS = {"M_MMAP_THRESHOLD": memory.DEFAULT_MMAP_THRESHOLD, "M_TRIM_THRESHOLD": memory.DEFAULT_TRIM_THRESHOLD}
PARAM_NUMBERS = {-3: "M_MMAP_THRESHOLD", -1: "M_TRIM_THRESHOLD", -8: "M_ARENA_MAX"}  # glibc's malloc.h
ENV_NAMES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")


class RecordingLibc:
    """Stands in for glibc: records every ``mallopt(param, value)`` and answers ``accept``."""

    def __init__(self, accept: int = 1) -> None:
        self.calls: list[tuple[str, int]] = []
        self.accept = accept

    def mallopt(self, param, value) -> int:  # ctypes.c_int arguments
        self.calls.append((PARAM_NUMBERS[param.value], value.value))
        return self.accept


@pytest.fixture
def libc(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    fake = RecordingLibc()
    monkeypatch.setattr(memory, "_load_glibc", lambda: fake)
    return fake


def test_sets_the_documented_defaults(libc):
    assert configure_cpu_allocator() == DEFAULTS == {"M_MMAP_THRESHOLD": 131072, "M_TRIM_THRESHOLD": 131072}
    assert libc.calls == list(DEFAULTS.items())


def test_idempotent(libc):
    first = configure_cpu_allocator()
    second = configure_cpu_allocator()
    assert first == second == DEFAULTS
    assert libc.calls == 2 * list(DEFAULTS.items())  # the same values again: nothing new


def test_explicit_values_and_none(libc):
    got = configure_cpu_allocator(mmap_threshold=1 << 20, trim_threshold=None, arena_max=2)
    assert got == {"M_MMAP_THRESHOLD": 1 << 20, "M_ARENA_MAX": 2}
    assert libc.calls == [("M_MMAP_THRESHOLD", 1 << 20), ("M_ARENA_MAX", 2)]
    assert configure_cpu_allocator(mmap_threshold=None, trim_threshold=None) == {}


@pytest.mark.parametrize(
    "env",
    [{"MALLOC_MMAP_THRESHOLD_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.mmap_threshold=65536"}],
)
def test_leaves_what_the_environment_chose(libc, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert configure_cpu_allocator() == {"M_TRIM_THRESHOLD": memory.DEFAULT_TRIM_THRESHOLD}
    assert [param for param, _ in libc.calls] == ["M_TRIM_THRESHOLD"]


def test_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_load_glibc", lambda: None)
    assert configure_cpu_allocator() == {}
    assert configure_cpu_allocator(arena_max=1) == {}


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_other_platforms_have_no_glibc(monkeypatch, platform):
    monkeypatch.setattr(sys, "platform", platform)
    assert memory._load_glibc() is None
    assert configure_cpu_allocator() == {}


def test_rejected_setting_is_an_error(monkeypatch):
    monkeypatch.setattr(memory, "_load_glibc", lambda: RecordingLibc(accept=0))
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="M_MMAP_THRESHOLD"):
        configure_cpu_allocator()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mmap_threshold": -1}, ValueError, "mmap_threshold"),
        ({"mmap_threshold": 1 << 30}, ValueError, "mmap_threshold"),
        ({"trim_threshold": -5}, ValueError, "trim_threshold"),
        ({"arena_max": 0}, ValueError, "arena_max"),
        ({"mmap_threshold": 1.5}, TypeError, "mmap_threshold"),
        ({"arena_max": True}, TypeError, "arena_max"),
    ],
)
def test_bad_arguments(libc, kwargs, error, match):
    with pytest.raises(error, match=match):
        configure_cpu_allocator(**kwargs)
    assert libc.calls == []  # nothing applied before the check


_REAL_GLIBC = textwrap.dedent(
    """
    import ctypes, json
    from ecop_wrap.memory import configure_cpu_allocator

    libc = ctypes.CDLL(None)
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def block_is_mapped(mib):
        # Freeing a mapped 30 MiB block raises glibc's dynamic mmap threshold to 30 MiB, unless it is fixed.
        libc.free(libc.malloc(30 << 20))
        before = libc.mallinfo2().hblks
        block = libc.malloc(mib << 20)
        mapped = libc.mallinfo2().hblks == before + 1
        libc.free(block)
        return mapped

    out = {"before": block_is_mapped(4)}
    out["first"] = configure_cpu_allocator()
    out["second"] = configure_cpu_allocator()
    # larger than the heap's free space left by the first block, so that glibc must ask the system for it
    out["after"] = block_is_mapped(16)
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(memory._load_glibc() is None, reason="needs glibc")
def test_real_glibc_fixes_the_threshold():
    import json

    libc = memory._load_glibc()
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    proc = subprocess.run([sys.executable, "-c", _REAL_GLIBC], capture_output=True, text=True, env=env, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"] == out["second"] == DEFAULTS
    assert out["before"] is False  # dynamic threshold (30 MiB): the 4 MiB block went to the heap
    assert out["after"] is True  # fixed at 128 KiB: 16 MiB gets its own mapping, returned to the system when freed


def test_release_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_load_glibc", lambda: None)
    assert release_cpu_memory() is False


def test_release_calls_malloc_trim(monkeypatch):
    calls = []

    class Trimmer:
        def malloc_trim(self, pad) -> int:
            calls.append(pad.value)
            return 1

    monkeypatch.setattr(memory, "_load_glibc", Trimmer)
    assert release_cpu_memory() is True
    assert calls == [0]


@pytest.mark.skipif(memory._load_glibc() is None, reason="needs glibc")
def test_release_on_real_glibc_returns_a_bool():
    assert isinstance(release_cpu_memory(), bool)


def test_memory_benchmark_reports_live_bytes_independent_of_the_allocator(tmp_path):
    """benchmarks/memory.py at a tiny size (two subprocesses): live bytes depend on shapes only, not the allocator."""
    import json

    out = tmp_path / "memory.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    cmd = [sys.executable, str(script), "--sides", "8", "--width", "16", "--layers", "1", "--batch", "2",
           "--threads", "1", "--modes", "ECoP default", "--allocators", "default,configured",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "peak RSS" in proc.stdout and "live" in proc.stdout
    results = json.loads(out.read_text())["results"]
    rows = {allocator: results["ECoP default"][allocator]["8"] for allocator in ("default", "configured")}
    assert rows["default"]["saved_bytes"] == rows["configured"]["saved_bytes"] > 0
    for row in rows.values():
        assert row["peak_rss_bytes"] >= row["rss_before_bytes"] > 0
        assert row["step_peak_bytes"] == row["peak_rss_bytes"] - row["rss_before_bytes"]
    assert rows["default"]["allocator_settings"] == {}
    assert rows["configured"]["allocator_settings"] == (DEFAULTS if memory._load_glibc() is not None else {})
