"""Tar archives a compromised host could send back as a run's results.

Each case writes (or tries to) into `outside`, a sentinel folder next to the local folder
that holds one file, `secret`, reading "untouched". Every archive starts with a harmless
`benign.txt`, so a test can also tell whether anything was extracted before the refusal.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from _pytest.mark import ParameterSet

SECRET = "untouched"
BENIGN = "benign.txt"

Entry = tuple[tarfile.TarInfo, bytes | None]  # a header, and the data of a regular file


def file(name: str, data: bytes = b"pwned") -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def directory(name: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def symlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def hardlink(name: str, target: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def special(name: str, kind: bytes, major: int = 0, minor: int = 0) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = major, minor
    info.mode = 0o666
    return info, None


def tar_bytes(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    why: str  # a regular expression the refusal's message matches
    entries: Callable[[Path, Path], list[Entry]]  # (local folder, outside) -> hostile entries
    local_link: str | None = None  # the local folder already has `out` -> outside/local_link

    def archive(self, local: Path, outside: Path) -> bytes:
        return tar_bytes([file(BENIGN, b"benign"), *self.entries(local, outside)])


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _path_max_bypass(local: Path, outside: Path) -> list[Entry]:
    """CVE-2025-4517: symlinks through folders whose names bring the real path close to
    PATH_MAX, so that os.path.realpath (which tarfile's "data" filter trusts) gives up
    resolving and calls `escape` harmless while the kernel follows it out of `local`."""
    steps = "abcdefghijklmnop"
    room = os.pathconf("/", "PC_PATH_MAX") - len(os.path.realpath(local)) - 1 - 100
    component = "d" * min(room // len(steps) - 1, 255)
    entries: list[Entry] = []
    path = ""
    for step in steps:
        entries += [directory(os.path.join(path, component)),
                    symlink(os.path.join(path, step), component)]
        path = os.path.join(path, component)
    link = os.path.join(*steps, "l" * 254)
    entries.append(symlink(link, "../" * len(steps)))  # back to `local`, lexically inside
    entries.append(symlink("escape", f"{link}/../{outside.name}"))
    entries.append(file("escape/pwned"))
    return entries


ESCAPES = re.escape("has an absolute path or '..'")
SYMLINK = "is a symlink pointing outside"
HARDLINK = "is a hard link to something else than a file of the archive"
SPECIAL = "is (a fifo|a character device), which runaway never extracts"
OUTSIDE = "goes through the symlink"

CASES = [
    Case("absolute-path", ESCAPES, lambda local, outside: [file(str(outside / "pwned"))]),
    Case("dotdot-path", ESCAPES, lambda local, outside: [
        file(_rel(outside / "pwned", local))]),
    Case("symlink-absolute", SYMLINK, lambda local, outside: [
        symlink("evil", str(outside)), file("evil/pwned")]),
    Case("symlink-relative", SYMLINK, lambda local, outside: [
        directory("sub"), symlink("sub/evil", _rel(outside, local / "sub")),
        file("sub/evil/pwned")]),
    Case("hardlink-absolute", HARDLINK, lambda local, outside: [
        hardlink("evil", str(outside / "secret")), file("evil")]),
    Case("hardlink-relative", HARDLINK, lambda local, outside: [
        hardlink("evil", _rel(outside / "secret", local)), file("evil")]),
    Case("char-device", SPECIAL, lambda local, outside: [
        special("null", tarfile.CHRTYPE, 1, 3)]),
    Case("fifo", SPECIAL, lambda local, outside: [special("pipe", tarfile.FIFOTYPE)]),
    # Through `out`, a symlink the local folder already has: only the disk can tell.
    Case("through-local-symlink", OUTSIDE, lambda local, outside: [file("out/pwned")],
         local_link=""),
    # Onto `out`, a local symlink to a file outside: writing `out` would follow it.
    Case("onto-local-symlink", "would replace a local symlink pointing outside",
         lambda local, outside: [file("out")], local_link="secret"),
    # `a` -> `.` then `a/b` -> `..`: each link stays inside on paper, together they leave.
    Case("symlink-chain", OUTSIDE, lambda local, outside: [
        symlink("a", "."), symlink("a/b", ".."), file(f"b/{outside.name}/pwned")]),
    Case("path-max-symlinks", OUTSIDE, _path_max_bypass),
]

def params(nothing_extracted: bool = False) -> list[ParameterSet]:
    """The cases as pytest parameters. Every one is refused before anything is written
    (which `nothing_extracted` tests check too), whatever the Python release: runaway does
    not rely on tarfile's "data" filter, which CVE-2025-4517 defeats before 3.11.13."""
    return [pytest.param(case, id=case.id) for case in CASES]


def prepare(case: Case, local: Path, parent: Path) -> Path:
    """Create `outside`, the sentinel folder in `parent`, and the local symlink of `case`."""
    outside = parent / "sentinel"
    outside.mkdir()
    (outside / "secret").write_text(SECRET)
    if case.local_link is not None:
        (local / "out").symlink_to(outside / case.local_link)
    return outside


def assert_untouched(outside: Path) -> None:
    written = sorted(set(os.listdir(outside)) - {"secret"})
    assert not written, f"written outside the local folder: {outside}/{written}"
    secret = (outside / "secret").read_text()
    assert secret == SECRET, f"overwritten outside the local folder: {outside}/secret={secret!r}"
