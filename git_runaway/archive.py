"""Deterministic packing of a folder, and safe extraction of what comes back.

The same content always gives the same bytes (sorted entries, fixed mtime, uid, gid and
modes), so the archive's SHA-256 names the code on the host and unchanged code is never
uploaded twice. Extracted files keep the fixed mtime, which is how the host tells the files a
run created or changed from the ones it was sent (see `remote._find_changed`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import pathspec

from git_runaway.errors import ExitCode
from git_runaway.errors import RunawayError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

SEND_IGNORE = ".sendignore"
FETCH_IGNORE = ".fetchignore"
STAGING_PREFIX = ".runaway-fetch-"  # see `_stage_and_move`; never sent
DEFAULT_SEND_IGNORE = (".git/", f"/{STAGING_PREFIX}*")  # see `pack`
MTIME = 946684800  # 2000-01-01T00:00:00Z: no file a run writes can carry it by accident


@dataclasses.dataclass(frozen=True)
class Pack:
    """A folder's deterministic tar, described without being kept: memory stays bounded
    whatever the folder's size. `chunks` writes the same bytes again, for an upload."""

    folder: Path
    digest: str  # sha256 of the tar
    size: int  # bytes of the tar
    files: tuple[str, ...]

    def chunks(self, write: Callable[[bytes], object]) -> None:
        """Write the tar again, in chunks. If the folder changed since `pack`, the bytes
        differ and the host refuses them (their sha256 is not `digest`)."""
        _write_tar(self.folder, self.files, write)

    @property
    def data(self) -> bytes:
        """The whole tar in memory (small folders and tests only)."""
        parts: list[bytes] = []
        self.chunks(parts.append)
        return b"".join(parts)


class _Sink(io.RawIOBase):
    """A write-only file object that hands each write to a function."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        chunk = bytes(data)
        self._write(chunk)
        return len(chunk)


def ignore_spec(folder: Path, name: str, default: tuple[str, ...] = ()
                ) -> pathspec.GitIgnoreSpec:
    """The gitignore rules of `folder/name` after `default`; only `default` when the file
    does not exist."""
    try:
        lines = (folder / name).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    except (OSError, UnicodeDecodeError) as e:
        raise RunawayError(f"cannot read {folder / name}: {e}", ExitCode.SEND) from None
    return pathspec.GitIgnoreSpec.from_lines([*default, *lines])


def pack(folder: Path) -> Pack:
    """Hash the folder's tar as it is written, keeping none of it. `.git` is left out unless
    .sendignore says `!.git/`: it changes with every git command, which would defeat code
    reuse, and it would carry the whole history to the host."""
    names = tuple(_walk(folder, ignore_spec(folder, SEND_IGNORE, DEFAULT_SEND_IGNORE)))
    digest = hashlib.sha256()
    size = 0

    def write(chunk: bytes) -> None:
        nonlocal size
        digest.update(chunk)
        size += len(chunk)

    _write_tar(folder, names, write)
    return Pack(folder, digest.hexdigest(), size, names)


def _write_tar(folder: Path, names: tuple[str, ...], write: Callable[[bytes], object]) -> None:
    # Stream mode ("w|") writes whole records of 10 KiB as they fill: nothing accumulates.
    try:
        with tarfile.open(fileobj=_Sink(write), mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for relative in names:
                try:
                    info = _normalised(tar.gettarinfo(folder / relative, relative))
                    if info.isreg():
                        with open(folder / relative, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
                except OSError as e:  # unreadable, or gone since the walk
                    raise RunawayError(f"cannot send {folder / relative}: {e.strerror}; make it "
                                       f"readable or add it to {SEND_IGNORE}",
                                       ExitCode.SEND) from None
    except OSError as e:
        raise RunawayError(f"cannot pack {folder}: {e}", ExitCode.SEND) from None


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


def safe_extract(data: bytes | Path, target: Path) -> list[str]:
    """Extract `data` (the archive, or the file holding it) into `target`; returns the
    regular files written. Entries under a `.git` folder are skipped: git never writes
    them from a tree, and a host must not plant hooks or an index here.

    Everything goes to a hidden staging folder in `target` first, then is moved in by
    rename: a full disk or a kill never leaves a truncated result in place of a file.

    Every entry is checked before anything is written, and the whole archive is refused
    if one could reach outside `target`: absolute or `..` paths, links whose target
    resolves outside (through the archive's own symlinks and those already on disk),
    paths that go through a symlink, and special files. Writing never follows a symlink.
    tarfile's "data" filter is not relied on: it has been bypassed (CVE-2025-4517).
    """
    try:
        with _open(data) as tar:
            members = [m for m in tar.getmembers() if not _in_git(m.name)]
            links = {posixpath.normpath(m.name): m.linkname for m in members if m.issym()}
            files = {posixpath.normpath(m.name) for m in members if m.isreg()}
            for member in members:
                _check(member, links, files, target)
            _check_kinds(members, target)
            _stage_and_move(tar, members, target)
    except (tarfile.TarError, OSError) as e:
        raise RunawayError(f"refused the fetched archive: {e}; nothing outside "
                           f"{target} was written", ExitCode.FETCH) from None
    return [posixpath.normpath(m.name) for m in members if m.isreg()]


_SPECIAL = {tarfile.FIFOTYPE: "a fifo", tarfile.CHRTYPE: "a character device",
            tarfile.BLKTYPE: "a block device"}


def _open(data: bytes | Path) -> tarfile.TarFile:
    if isinstance(data, Path):
        return tarfile.open(data)
    return tarfile.open(fileobj=io.BytesIO(data))


def _in_git(name: str) -> bool:
    # Case-insensitively, as git refuses `.GIT` too (case-insensitive file systems).
    return ".git" in (part.lower() for part in PurePosixPath(name).parts)


def _stage_and_move(tar: tarfile.TarFile, members: list[tarfile.TarInfo], target: Path
                    ) -> None:
    """Write the entries into a staging folder next to their place, on the same file
    system, then rename each into place: the slow writes, which a full disk can stop,
    happen where a failure leaves nothing behind; the renames need no space. Concurrent
    fetches into one folder each have their own staging folder and replace each other's
    files atomically."""
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
    try:
        for member in members:
            _write(tar, member, staging)
        for member in members:
            _move(staging, target, posixpath.normpath(member.name), member.isdir())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move(staging: Path, target: Path, name: str, is_dir: bool) -> None:
    path = target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        path.mkdir(exist_ok=True)
        return
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"{path} is a folder here and a file in the results")
    os.replace(staging / name, path)  # replaces a file or a symlink, never writes through


def _check(member: tarfile.TarInfo, links: dict[str, str], files: set[str],
           target: Path) -> None:
    def refuse(why: str) -> tarfile.TarError:
        return tarfile.TarError(f"entry {member.name!r} {why}")

    name = PurePosixPath(member.name)
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        kind = _SPECIAL.get(member.type, "a special file")
        raise refuse(f"is {kind}, which runaway never extracts")
    if name.is_absolute() or ".." in name.parts:
        raise refuse("has an absolute path or '..'")
    for parent in list(name.parents)[:-1]:
        if str(parent) in links or (target / parent).is_symlink():
            raise refuse(f"goes through the symlink {str(parent)!r}")
    if not member.isdir() and (target / name).is_symlink() and not _resolves_inside(
            name, {}, target):
        raise refuse("would replace a local symlink pointing outside")
    if member.issym() and not _resolves_inside(name.parent / member.linkname, links, target):
        raise refuse(f"is a symlink pointing outside ({member.linkname!r})")
    if member.islnk() and posixpath.normpath(member.linkname) not in files:
        raise refuse(f"is a hard link to something else than a file of the archive "
                     f"({member.linkname!r})")


def _check_kinds(members: list[tarfile.TarInfo], target: Path) -> None:
    """Refuse an archive that extraction would have to stop halfway through: an entry that
    replaces a directory (on disk or earlier in the archive) with a file or a link, a file
    with a directory, or that goes through a file. Checked on the whole archive first, as
    the writes that would fail come after others have succeeded."""
    kinds: dict[str, bool] = {}  # path -> is a directory, once the archive's entries so far are in

    def is_dir(name: str) -> bool | None:  # None: nothing there
        if name in kinds:
            return kinds[name]
        path = target / name
        if path.is_dir() and not path.is_symlink():
            return True
        return False if os.path.lexists(path) else None

    for member in members:
        name = posixpath.normpath(member.name)
        parts = PurePosixPath(name).parts
        for parent in ("/".join(parts[:i]) for i in range(1, len(parts))):
            if is_dir(parent) is False:
                raise tarfile.TarError(f"entry {member.name!r} goes through {parent!r}, which "
                                       "is not a directory")
            kinds[parent] = True
        there = is_dir(name)
        if member.isdir() and there is False:
            raise tarfile.TarError(f"entry {member.name!r} would replace the file {name!r} "
                                   "with a directory")
        if not member.isdir() and there:
            raise tarfile.TarError(f"entry {member.name!r} would replace the directory "
                                   f"{name!r}")
        kinds[name] = member.isdir()


def _resolves_inside(path: PurePosixPath, links: dict[str, str], target: Path) -> bool:
    """Resolve `path` (relative to target) as the kernel would once extracted."""
    resolved: list[str] = []
    pending = list(path.parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "/":
            return False
        if part == "..":
            if not resolved:
                return False
            resolved.pop()
        elif part != ".":
            resolved.append(part)
            key = "/".join(resolved)
            on_disk = target / key
            link = links.get(key) or (os.readlink(on_disk) if on_disk.is_symlink() else None)
            if link is not None:
                hops += 1
                if hops > 40:  # a loop, as the kernel's ELOOP
                    return False
                resolved.pop()
                pending = list(PurePosixPath(link).parts) + pending
    return True


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    path = target / posixpath.normpath(member.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if member.isdir():
        path.mkdir(exist_ok=True)
        return
    if path.is_symlink() or path.is_file():
        path.unlink()  # replaced, never written through
    if member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        os.link(target / posixpath.normpath(member.linkname), path, follow_symlinks=False)
    else:
        source = tar.extractfile(member)
        assert source is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with source, os.fdopen(os.open(path, flags, member.mode & 0o755 | 0o600), "wb") as f:
            shutil.copyfileobj(source, f)
        os.utime(path, (member.mtime, member.mtime))
