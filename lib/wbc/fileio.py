"""File helpers shared by every stage: atomic writes, folders replaced as a unit, hashes, tables,
and the one cache rule of stage outputs (a recipe beside the output).

Files written here get the permissions of an ordinary new file or folder (``0o666`` / ``0o777``
less the umask), not the private ``0600`` / ``0700`` of ``tempfile``'s temporary names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from wbc.errors import WbcError


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a brief, harmless window)
    os.umask(mask)
    return mask


def public_mode(path: str | os.PathLike) -> None:
    """Give a temporary file (``0600`` from mkstemp) or folder (``0700`` from mkdtemp) the mode
    a plainly created one would have: ``0o666`` (files) or ``0o777`` (folders) less the umask."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    A crash or interrupt leaves either the old file or none, never a half-written one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            public_mode(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))


def write_csv_atomic(df: pd.DataFrame, target: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV (no index, ``\\n`` line endings) atomically; returns the path."""
    target = Path(target)
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return target


def temporary_sibling(target: str | os.PathLike, tag: str = "tmp") -> Path:
    """A new, empty folder beside ``target`` (``.<name>.<tag>-XXXX``), with ordinary permissions."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}-", dir=target.parent))
    public_mode(tmp)
    return tmp


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished folder ``new`` in place of ``target`` as a unit.

    ``new`` must be a sibling of ``target`` (same file system). An existing ``target`` is first
    renamed aside (``.<name>.old-XXXX``), then ``new`` renamed onto ``target``, then the old one
    removed: at every moment ``target`` is either the complete old folder, absent for the
    instant between two renames, or the complete new one, never a mixture. A crash between the
    renames leaves the old folder beside it under its ``.old-`` name.
    """
    new, target = Path(new), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise WbcError(f"{target}: exists and is not a folder; move it away first")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old)  # an empty folder is replaced by rename(2)
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old, target)  # put the old folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printable UTF-8 text: bytes that are not valid UTF-8 (file names from other
    systems, read by Python as surrogate escapes) are shown as ``\\xNN``."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def is_utf8_name(path: str | os.PathLike) -> bool:
    """True when ``path`` can be written as UTF-8 text (into a CSV) and read back unchanged."""
    try:
        os.fspath(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (``sha256``, ``md5``, ``sha1`` ...), read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recipe_path(out: str | os.PathLike) -> Path:
    """``<out>.recipe.json``: the settings and input digests ``out`` was built from."""
    return Path(f"{os.fspath(out)}.recipe.json")


def recipe_matches(out: str | os.PathLike, recipe: dict) -> bool:
    """True when ``out`` exists and was built from ``recipe`` (see ``write_recipe``). Stage outputs
    (manifests, processed images, splits) are reused only while this holds; runs are keyed by
    their settings instead (``wbc.runs.run_key``)."""
    return Path(out).exists() and read_json(recipe_path(out)) == json.loads(json.dumps(recipe))


def write_recipe(out: str | os.PathLike, recipe: dict) -> None:
    """Record, after ``out`` is complete, what it was built from."""
    write_text_atomic(recipe_path(out), json.dumps(recipe, sort_keys=True))


def read_table(
    path: str | os.PathLike,
    what: str = "CSV",
    *,
    hint: str = "",
    as_text: bool = True,
    relative_to_folder: bool = False,
) -> pd.DataFrame:
    """A CSV with at least ``path`` and ``label`` columns; ``as_text``: every cell as text, empty
    cells "" (else pandas' types). ``relative_to_folder``: relative paths are relative to the CSV's
    folder (a split folder can move). WbcError naming the file when missing, unreadable or lacking a column."""
    path = Path(path)
    if not path.is_file():
        raise WbcError(f"{path}: {what} not found" + (f" ({hint})" if hint else ""))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False) if as_text else pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise WbcError(f"{path}: not a readable {what} ({exc})") from None
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise WbcError(f"{path}: missing column(s) {', '.join(missing)}" + (f" ({hint})" if hint else ""))
    if relative_to_folder:
        df["path"] = [
            p if os.path.isabs(p) else os.path.normpath(os.path.join(path.parent, p)) for p in df["path"].astype(str)
        ]
    return df
