"""New git objects built in memory and written to the repository as one pack.

Writing loose objects costs a file (and often a directory) per object: about 1.6 ms each on
these disks, so 1,000 executions would spend seconds there and leave thousands of files.
Here every object of an operation is serialised in Python, kept in memory, and written as a
single pack with its index when the operation is ready to move its refs. Nothing is visible
before `write()`, and refs are moved after it, so a failure halfway leaves no trace.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pygit2

from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError

TREE = 0o040000
BLOB = 0o100644
EXECUTABLE = 0o100755
LINK = 0o120000
GITLINK = 0o160000

_TYPES = {"commit": 1, "tree": 2, "blob": 3}
_REF_DELTA = 7
# Like git's default pack.depth: a reader applies at most this many deltas to get an object.
_MAX_DEPTH = 50
_DELTA_MIN = 2048  # bytes


class Entry(NamedTuple):
    # A tuple, so that comparing and hashing entries runs in C (see ObjectStore.tree).
    mode: int
    oid: pygit2.Oid


Tree = Mapping[str, Entry]


def _sort_key(name: str, entry: Entry) -> bytes:
    # git orders a tree's entries by name, a subtree's name read as if it ended with "/".
    return name.encode() + (b"/" if entry.mode == TREE else b"")


def _row(name: str, entry: Entry) -> bytes:
    return f"{entry.mode:o} {name}".encode() + b"\0" + entry.oid.raw


class ObjectStore:
    """Objects waiting to be written, readable before they are."""

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo
        self._pending: dict[pygit2.Oid, tuple[str, bytes]] = {}
        self._trees: dict[pygit2.Oid, dict[str, Entry]] = {}
        # A waiting tree's entries as written: sort keys and rows, in git's order.
        self._rows: dict[pygit2.Oid, tuple[list[bytes], list[bytes]]] = {}
        self._bases: dict[pygit2.Oid, tuple[pygit2.Oid, int]] = {}

    @staticmethod
    def _hash(kind: str, data: bytes) -> pygit2.Oid:
        header = f"{kind} {len(data)}\0".encode()
        return pygit2.Oid(raw=hashlib.sha1(header + data).digest())

    def _add(self, kind: str, data: bytes) -> pygit2.Oid:
        oid = self._hash(kind, data)
        self._pending.setdefault(oid, (kind, data))
        return oid

    def blob(self, data: bytes) -> pygit2.Oid:
        return self._add("blob", data)

    def tree(self, entries: Tree, base: pygit2.Oid | None = None) -> pygit2.Oid:
        """A tree; `base`, the tree it was edited from, lets the pack store a small delta.

        A campaign's `excs/` tree changes by one entry per execution: without deltas its
        thousands of entries would be stored whole at every commit.
        """
        if base is not None and base in self._rows:
            # An edit of a tree built here: only the entries that changed are serialised,
            # the others are copied as bytes (a 10,000-entry tree costs no more than a small
            # one).
            old = self._trees[base]
            keys, rows = list(self._rows[base][0]), list(self._rows[base][1])
            for name in old.keys() - entries.keys():
                i = bisect.bisect_left(keys, _sort_key(name, old[name]))
                del keys[i], rows[i]
            for name, entry in entries.items() - old.items():
                if name in old:
                    i = bisect.bisect_left(keys, _sort_key(name, old[name]))
                    del keys[i], rows[i]
                key = _sort_key(name, entry)
                i = bisect.bisect_left(keys, key)
                keys.insert(i, key)
                rows.insert(i, _row(name, entry))
        else:
            ordered = sorted((_sort_key(name, e), _row(name, e)) for name, e in entries.items())
            keys, rows = [key for key, _ in ordered], [row for _, row in ordered]
        data = b"".join(rows)
        # Only a tree new to this store gets a base: one built earlier (an edit undone) may
        # be the base of `base` already, and a delta cycle would make the pack unreadable.
        oid = self._hash("tree", data)
        known = oid in self._pending
        self._pending.setdefault(oid, ("tree", data))
        self._trees[oid] = dict(entries)
        self._rows[oid] = (keys, rows)
        # Small trees (an execution's bucket, the root) are cheaper to store whole than to
        # diff; the large ones, like excs/, are where deltas pay.
        # Nor a tree equal to its base (an edit that changed nothing): it would be stored as
        # a delta on itself, which no reader can resolve.
        if (not known and base is not None and base != oid and base in self._pending
                and len(data) > _DELTA_MIN):
            depth = self._bases[base][1] + 1 if base in self._bases else 1
            if depth <= _MAX_DEPTH:
                self._bases[oid] = (base, depth)
        return oid

    def commit(self, tree: pygit2.Oid, parents: Iterable[pygit2.Oid], message: str,
               ident: str) -> pygit2.Oid:
        lines = [f"tree {tree}", *(f"parent {p}" for p in parents),
                 f"author {ident}", f"committer {ident}"]
        return self._add("commit", ("\n".join(lines) + "\n\n" + message).encode())

    def entries(self, oid: pygit2.Oid | None) -> dict[str, Entry]:
        """A tree's entries, whether it is waiting here or already in the repository."""
        if oid is None:
            return {}
        if oid in self._trees:
            return dict(self._trees[oid])
        tree = self.repo[oid]
        assert isinstance(tree, pygit2.Tree)
        return {e.name: Entry(e.filemode, e.id) for e in tree if e.name is not None}

    def write(self) -> None:
        """Write every pending object as one pack.

        Objects the repository already has are written again: asking libgit2 about a
        missing object rescans the pack folder, which costs more than the duplicate.
        """
        entries = [self._pack_entry(oid) for oid in sorted(self._pending)]
        self._pending.clear()
        self._bases.clear()
        if entries:
            # libgit2 rescans the pack folder when an object is missing, so no reload.
            _write_pack(_common_dir(Path(self.repo.path)) / "objects" / "pack", entries)

    def _pack_entry(self, oid: pygit2.Oid) -> tuple[bytes, bytes]:
        """The object's id and its entry in the pack: whole, or as a delta on its base."""
        kind, data = self._pending[oid]
        if oid in self._bases:
            base = self._bases[oid][0]
            delta = _delta(self._pending[base][1], data)
            return oid.raw, (_entry_header(_REF_DELTA, len(delta)) + base.raw
                             + zlib.compress(delta, 1))
        return oid.raw, _entry_header(_TYPES[kind], len(data)) + zlib.compress(data, 1)


def _common_dir(git_dir: Path) -> Path:
    """Where the objects are: a linked worktree's git dir names it in its `commondir`."""
    commondir = git_dir / "commondir"
    if commondir.is_file():
        return (git_dir / commondir.read_text().strip()).resolve()
    return git_dir


def _write_pack(folder: Path, entries: list[tuple[bytes, bytes]]) -> None:
    """Write a pack and its index; `entries` are (sha, packed entry), sorted by sha."""
    body = bytearray(b"PACK" + struct.pack(">II", 2, len(entries)))
    offsets, crcs = [], []
    for _, entry in entries:
        offsets.append(len(body))
        crcs.append(zlib.crc32(entry))
        body += entry
    if len(body) >= 2**31:
        raise ValueError("pack too large for a one-level index")
    checksum = hashlib.sha1(body).digest()
    body += checksum
    index = _index([sha for sha, _ in entries], crcs, offsets, checksum)
    name = f"pack-{checksum.hex()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _sweep_partial(folder)
        # The .idx makes a pack visible, so it is renamed into place last.
        _atomic_write(folder / f"{name}.pack", bytes(body))
        try:
            _atomic_write(folder / f"{name}.idx", index)
        except OSError:
            if not (folder / f"{name}.idx").exists():  # the same pack, written before
                (folder / f"{name}.pack").unlink(missing_ok=True)  # no pack without index
            raise
    except OSError as e:
        raise ExpegitError(f"writing the new objects into {folder} failed: {e.strerror or e} "
                           f"({_advice(e)}); nothing was changed", ExitCode.GIT) from None


def _advice(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space, or raise the file size limit, and retry"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check that you can write to the repository's .git/objects"
    return "check the disk and retry"


PARTIAL_AGE = 3600  # seconds: older `.tmp-*` files are left by a process that was killed


def _sweep_partial(folder: Path) -> None:
    """Delete the partial packs that killed processes left (ours and git's own `.tmp-*`),
    never one that a running process may still be writing."""
    limit = time.time() - PARTIAL_AGE
    for path in folder.glob(".tmp-*"):
        try:
            if path.lstat().st_mtime < limit:
                path.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: harmless either way


def _delta(base: bytes, target: bytes) -> bytes:
    """A git delta that copies the common prefix and suffix and inserts the middle.

    Our edits change or add a few entries of a sorted tree, so this simple form is
    nearly as small as a real diff.
    """
    limit = min(len(base), len(target))
    prefix = _common(lambda n: base[:n] == target[:n], limit)
    suffix = _common(lambda n: base[len(base) - n:] == target[len(target) - n:], limit - prefix)
    out = bytearray(_varint(len(base)) + _varint(len(target)))
    if prefix:
        out += _copy(0, prefix)
    middle = target[prefix:len(target) - suffix]
    for start in range(0, len(middle), 127):
        chunk = middle[start:start + 127]
        out += bytes([len(chunk)]) + chunk
    if suffix:
        out += _copy(len(base) - suffix, suffix)
    return bytes(out)


def _common(same: Callable[[int], bool], limit: int) -> int:
    """The largest n <= limit with same(n), by bisection: slices compare at C speed."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if same(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _copy(offset: int, size: int) -> bytes:
    if size >= 1 << 24:
        raise ValueError("tree too large for one delta copy")
    flags, args = 0x80, bytearray()
    for i in range(4):
        if offset >> (8 * i) & 0xFF:
            flags |= 1 << i
            args.append(offset >> (8 * i) & 0xFF)
    for i in range(3):
        if size >> (8 * i) & 0xFF:
            flags |= 1 << (4 + i)
            args.append(size >> (8 * i) & 0xFF)
    return bytes([flags]) + bytes(args)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _entry_header(kind: int, size: int) -> bytes:
    byte = (kind << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(byte | 0x80)
        byte, size = size & 0x7F, size >> 7
    out.append(byte)
    return bytes(out)


def _index(shas: list[bytes], crcs: list[int], offsets: list[int], checksum: bytes) -> bytes:
    """A version 2 pack index; `shas` are sorted."""
    fanout = [0] * 256
    for sha in shas:
        fanout[sha[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    data = (b"\377tOc" + struct.pack(">I", 2) + struct.pack(">256I", *fanout) + b"".join(shas)
            + struct.pack(f">{len(crcs)}I", *crcs) + struct.pack(f">{len(offsets)}I", *offsets)
            + checksum)
    return data + hashlib.sha1(data).digest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException:  # a full disk, or Ctrl-C: no partial file stays behind
        Path(tmp).unlink(missing_ok=True)
        raise
