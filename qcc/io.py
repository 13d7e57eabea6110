"""File output that is atomic and deterministic.

Every command writes through here: outputs appear complete or not at all (temp file + os.replace,
temp files removed on failure), and the same content gives byte-identical files (npz archives with
fixed timestamps and sorted keys, unlike np.savez which stamps the current time).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from qcc.errors import QccError

__all__ = ["atomic_writes", "atomic_dir", "check_output_dir", "write_bytes", "write_npz", "save_npz", "load_arrays"]

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writes(*paths: os.PathLike | str) -> Iterator[list[Path]]:
    """Yield temp paths to write; on success all are renamed into place, on failure all are removed."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for t in targets:
            if not t.parent.is_dir():
                raise QccError(f"cannot write {t}: folder {t.parent} does not exist")
            fd, name = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent)
            os.close(fd)
            os.chmod(name, 0o666 & ~_umask())  # mkstemp makes files owner-only; outputs are ordinary files
            temps.append(Path(name))
        yield temps
        for tmp, t in zip(temps, targets):
            os.replace(tmp, t)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def check_output_dir(directory: os.PathLike | str) -> Path:
    """The output folder, if it can be created (missing or empty, parent present); else a user error."""
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QccError(f"output folder {out} exists and is not empty")
    if not out.parent.is_dir():
        raise QccError(f"cannot create {out}: folder {out.parent} does not exist")
    return out


@contextlib.contextmanager
def atomic_dir(directory: os.PathLike | str) -> Iterator[Path]:
    """Yield a staging folder that becomes `directory` on success; nothing is left on failure.

    `directory` must not exist or be empty; its parent must exist.
    """
    out = check_output_dir(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes(path: os.PathLike | str, data: bytes) -> None:
    with atomic_writes(path) as (tmp,):
        tmp.write_bytes(data)


def write_npz(path: os.PathLike | str, arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed .npz (what np.savez writes) with sorted members and fixed timestamps.

    Streamed to disk and not deflated: weights barely compress, and deflating a ResNet-18 takes
    seconds where storing takes a fraction of one.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_EPOCH)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)


def save_npz(path: os.PathLike | str, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_writes(path) as (tmp,):
        write_npz(tmp, arrays)


def load_arrays(path: os.PathLike | str, *, what: str = "inputs") -> dict[str, np.ndarray]:
    """Arrays from an .npz (by key) or an .npy (under the key 'x'); errors are user errors."""
    p = Path(path)
    if not p.is_file():
        raise QccError(f"{what} file {p} does not exist")
    loader: Callable[[], dict[str, np.ndarray]]
    if p.suffix == ".npy":
        def loader():
            return {"x": np.load(p, allow_pickle=False)}
    elif p.suffix == ".npz":
        def loader():
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    else:
        raise QccError(f"{what} file {p} must be .npz or .npy")
    try:
        return loader()
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise QccError(f"cannot read {what} file {p}: {e}") from None
