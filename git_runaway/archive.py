"""Deterministic packing of a folder, and safe extraction of what comes back.

The same content always gives the same bytes (sorted entries, fixed mtime, uid, gid and
modes), so the archive's SHA-256 names the code on the host and unchanged code is never
uploaded twice. Extracted files keep the fixed mtime, which is how the host tells the files a
run created or changed from the ones it was sent (see `remote.changed_files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from pathlib import PurePosixPath

import pathspec

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError

SEND_IGNORE = ".sendignore"
FETCH_IGNORE = ".fetchignore"
MTIME = 946684800  # 2000-01-01T00:00:00Z: no file a run writes can carry it by accident


@dataclasses.dataclass(frozen=True)
class Pack:
    data: bytes
    digest: str  # sha256 of data
    files: tuple[str, ...]


def ignore_spec(folder: Path, name: str) -> pathspec.GitIgnoreSpec:
    """The gitignore rules of `folder/name`; empty when the file does not exist."""
    try:
        lines = (folder / name).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    except (OSError, UnicodeDecodeError) as e:
        raise RunawayError(f"cannot read {folder / name}: {e}", ExitCode.SEND) from None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def pack(folder: Path) -> Pack:
    spec = ignore_spec(folder, SEND_IGNORE)
    buffer = io.BytesIO()
    names = []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for relative in _walk(folder, spec):
            info = _normalised(tar.gettarinfo(folder / relative, relative))
            names.append(relative)
            if info.isreg():
                with open(folder / relative, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    data = buffer.getvalue()
    return Pack(data, hashlib.sha256(data).hexdigest(), tuple(names))


def _walk(folder: Path, spec: pathspec.GitIgnoreSpec, prefix: str = "") -> Iterator[str]:
    try:
        entries = sorted(os.scandir(folder / prefix) if prefix else os.scandir(folder),
                         key=lambda e: e.name)
    except OSError as e:
        raise RunawayError(f"cannot pack {folder}: {e}", ExitCode.SEND) from None
    for entry in entries:
        relative = f"{prefix}{entry.name}"
        is_dir = entry.is_dir(follow_symlinks=False)
        always = not prefix and entry.name in (SEND_IGNORE, FETCH_IGNORE)
        if not always and spec.match_file(relative + ("/" if is_dir else "")):
            continue
        if is_dir:
            yield relative
            yield from _walk(folder, spec, relative + "/")
        elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
            yield relative  # sockets and fifos cannot travel


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    executable = info.isdir() or info.mode & stat.S_IXUSR
    info.mode = 0o755 if executable else 0o644
    return info


def safe_extract(data: bytes, target: Path) -> list[str]:
    """Extract `data` into `target`, refusing the whole archive if any entry could write
    outside it; returns the names of the regular files extracted."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            for member in members:
                _check(member)
            # The "data" filter checks again against the disk as each entry is written,
            # which catches a path that climbs out through a symlink already in `target`.
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise RunawayError(f"refused the fetched archive: {e}; nothing outside "
                           f"{target} was written", ExitCode.FETCH) from None
    return [m.name for m in members if m.isreg()]


def _check(member: tarfile.TarInfo) -> None:
    def refuse(why: str) -> tarfile.TarError:
        return tarfile.TarError(f"entry {member.name!r} {why}")

    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise refuse("is a device, fifo or other special file")
    if _escapes(PurePosixPath(member.name)):
        raise refuse("has an absolute path or '..'")
    if member.issym():
        target = PurePosixPath(member.name).parent / member.linkname
        if PurePosixPath(member.linkname).is_absolute() or _escapes(target, lexical=True):
            raise refuse(f"is a symlink pointing outside ({member.linkname!r})")
    if member.islnk() and _escapes(PurePosixPath(member.linkname)):
        raise refuse(f"is a hard link pointing outside ({member.linkname!r})")


def _escapes(path: PurePosixPath, lexical: bool = False) -> bool:
    if path.is_absolute():
        return True
    if not lexical:
        return ".." in path.parts
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False
