"""Placing an experiment commit's code in an execution folder, as a checkout with git-lfs and
`git submodule update --init --recursive` would: its files, the real content of its Git LFS
files, and its submodules at their recorded commits. git ignores all of it there (the
folder's .gitignore), and finish drops it.

The common case (no LFS, no submodule) is one walk of the commit's trees with pygit2, in
process. LFS content is copied from the repository's own LFS store (`<git dir>/lfs`); what
is missing there is fetched first with `git lfs fetch` from its remote. A submodule is read
from its git dir under its parent's (`.git/modules/xprp/modules/<name>`, where `git submodule
update --init --recursive` in xprp/ puts it and finds it again), cloned there when missing;
a missing commit is fetched.

`prepare` does all that may fail for a missing object (the fetches) before anything is
written, so `exec new` checks first and changes after. The top-level `run` is written last:
a folder with its `run` holds the whole code; one without it (an interrupted placement, an
execution made by a sweep) is placed again by `ensure`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pygit2

from git_expegit import git
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import Campaign
from git_expegit.campaign import ExecutionId
from git_expegit.campaign import folder
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.objects import BLOB
from git_expegit.objects import EXECUTABLE
from git_expegit.objects import GITLINK
from git_expegit.objects import LINK
from git_expegit.objects import TREE

RUN = "run"
# The execution's own files win over the experiment's, at the top of the folder.
_OWN = (".gitignore", "data")
# The pointer format of the Git LFS specification; a pointer is smaller than 1024 bytes.
_POINTER = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\n(?:ext-[^\n]*\n)*"
                      rb"oid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n(?:[a-z0-9.-]+ [^\n]*\n)*")
_ATTRIBUTES = pygit2.enums.AttrCheck.INDEX_ONLY | pygit2.enums.AttrCheck.INCLUDE_COMMIT


@dataclass(frozen=True)
class _Source:
    """A repository whose commit is placed: the experiment, or one of its submodules."""

    repo: pygit2.Repository
    git_dir: Path
    label: str  # how messages name it: xprp, xprp/vendor/lib
    top: bool  # the experiment itself, whose `run`, `data` and `.gitignore` are special
    lfs_store: Path  # where git-lfs keeps its objects (`lfs.storage` can move it)

    @classmethod
    def of(cls, git_dir: Path, label: str, top: bool = False) -> _Source:
        repo = pygit2.Repository(str(git_dir))
        storage = _setting(repo, "lfs.storage") or "lfs"
        return cls(repo, git_dir, label, top, git_dir / storage / "objects")


@dataclass
class _Inventory:
    """What a plain walk of the trees cannot write: LFS files and submodules."""

    lfs: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (oid, size)
    submodules: dict[str, tuple[_Source, pygit2.Oid, _Inventory]] = field(default_factory=dict)


def prepare(campaign: Campaign, commit: str) -> None:
    """Make sure every object the code at `commit` needs is here, fetching what is not;
    nothing is written outside git's and LFS's stores."""
    _ready(campaign, commit)


def write_code(campaign: Campaign, commit: str, target: Path) -> None:
    """Place the experiment's code at `commit` in an execution folder, `run` last."""
    source, oid, inventory = _ready(campaign, commit)
    try:
        _write(source, oid, inventory, target)
    except OSError as e:
        raise ExpegitError(f"placing the code in {target} failed ({e.strerror or e}): fix "
                           "that, then run git expegit exec run there", ExitCode.FAILED) from None


def _ready(campaign: Campaign, commit: str) -> tuple[_Source, pygit2.Oid, _Inventory]:
    source, oid = _experiment(campaign), pygit2.Oid(hex=commit)
    try:
        return source, oid, _prepare(source, oid)
    except OSError as e:  # a full disk or a read-only .git while cloning a submodule
        raise ExpegitError(f"fetching the code of {commit[:12]} failed ({e.strerror or e})",
                           ExitCode.FAILED) from None


def ensure(campaign: Campaign, execution: ExecutionId, commit: str) -> Path:
    """The execution's folder, with the code placed in it unless it is there already (an
    execution made by a sweep has none). Call it under the campaign's lock."""
    path = campaign.root / folder(execution)
    if not path.is_dir():
        raise ExpegitError(f"the folder of execution {execution[:8]} is missing: restore it "
                           f"(git checkout -- {folder(execution)})", ExitCode.DIRTY)
    if not os.path.lexists(path / RUN):
        write_code(campaign, commit, path)
    return path


def _experiment(campaign: Campaign) -> _Source:
    return _Source.of(Path(campaign.experiment().path), EXPERIMENT, top=True)


# Finding and fetching what is needed ----------------------------------------------------------


def _prepare(source: _Source, commit: pygit2.Oid) -> _Inventory:
    tree = source.repo[commit].peel(pygit2.Tree)
    inventory = _Inventory()
    gitlinks: dict[str, pygit2.Oid] = {}
    _scan(source, commit, tree, "", _mentions_lfs(source.git_dir / "info" / "attributes"),
          inventory, gitlinks)
    _fetch_lfs(source, commit, inventory)
    for path, sub_commit in gitlinks.items():
        sub = _submodule(source, tree, path, sub_commit)
        inventory.submodules[path] = (sub, sub_commit, _prepare(sub, sub_commit))
    return inventory


def _scan(source: _Source, commit: pygit2.Oid, tree: pygit2.Tree, prefix: str, lfs: bool,
          inventory: _Inventory, gitlinks: dict[str, pygit2.Oid]) -> None:
    """Find the LFS files and submodules; LFS attributes are only looked up below a
    .gitattributes that mentions LFS, so a plain experiment reads no blob here."""
    if ".gitattributes" in tree:
        lfs = lfs or _mentions_lfs(_blob(source.repo, tree[".gitattributes"].id))
    for entry in tree:
        name = entry.name or ""
        path = prefix + name
        if (source.top and not prefix and name in _OWN) or name == ".git":
            continue
        if entry.filemode == TREE:
            subtree = source.repo[entry.id]
            assert isinstance(subtree, pygit2.Tree)
            _scan(source, commit, subtree, path + "/", lfs, inventory, gitlinks)
        elif entry.filemode == GITLINK:
            gitlinks[path] = entry.id
        elif lfs and entry.filemode in (BLOB, EXECUTABLE) and source.repo.get_attr(
                path, "filter", flags=_ATTRIBUTES, commit=commit) == "lfs":
            match = _POINTER.fullmatch(_blob(source.repo, entry.id)[:1024])
            if match:  # else committed before it was tracked: placed as it is, as LFS does
                inventory.lfs[path] = (match[1].decode(), int(match[2]))


def _mentions_lfs(data: bytes | Path) -> bool:
    if isinstance(data, Path):
        data = data.read_bytes() if data.is_file() else b""
    return b"lfs" in data


def _lfs_object(source: _Source, oid: str, size: int) -> Path | None:
    """The object in the repository's LFS store, if it is there whole."""
    path = source.lfs_store / oid[:2] / oid[2:4] / oid
    try:
        return path if path.stat().st_size == size else None
    except OSError:
        return None


def _fetch_lfs(source: _Source, commit: pygit2.Oid, inventory: _Inventory) -> None:
    missing = [path for path, (oid, size) in inventory.lfs.items()
               if _lfs_object(source, oid, size) is None]
    if not missing:
        return
    git.require_lfs(source.git_dir)
    detail = ""
    try:
        git.run(["lfs", "fetch", "origin", str(commit)], source.git_dir, env=_in(source.git_dir))
    except ExpegitError as e:  # what it could not fetch is named below
        detail = e.detail
    for path in missing:
        if _lfs_object(source, *inventory.lfs[path]) is None:
            raise ExpegitError(f"the Git LFS content of {source.label}/{path} is neither here "
                               f"nor on the remote of {source.label}: push it there from where "
                               "it was committed (git lfs push --all origin)", ExitCode.REMOTE,
                               detail)


def _submodule(parent: _Source, tree: pygit2.Tree, path: str, commit: pygit2.Oid) -> _Source:
    """The submodule at `path` with `commit` in it: its git dir cloned, its commit fetched,
    when they are not here yet."""
    label = f"{parent.label}/{path}"
    name, url = _declared(parent, tree, path, label)
    git_dir = parent.git_dir / "modules" / name
    if not (git_dir / "HEAD").is_file():
        _clone(url, git_dir, label)
    repo = pygit2.Repository(str(git_dir))
    url = _setting(repo, "remote.origin.url") or url
    if commit not in repo:
        # By id first (servers allow any reachable commit with protocol v2), then every branch.
        detail = ""
        for refspec in ([str(commit)], []):
            try:
                git.run([*git.FILE_PROTOCOL, "fetch", "--quiet", "origin", *refspec], git_dir,
                        env=_in(git_dir))
            except ExpegitError as e:
                detail = e.detail
                continue
            if commit in pygit2.Repository(str(git_dir)):
                break
        else:
            raise ExpegitError(f"the submodule {label} at {str(commit)[:12]} is neither here nor "
                               f"on its remote {url}: push that commit there", ExitCode.REMOTE,
                               detail)
    return _Source.of(git_dir, label)


def _declared(parent: _Source, tree: pygit2.Tree, path: str, label: str) -> tuple[str, str]:
    """The submodule's name and URL, from the .gitmodules of the commit: the URL as the
    parent's config overrides it (git submodule init), else relative to the parent's remote."""
    if ".gitmodules" not in tree:
        raise ExpegitError(f"the submodule {label} is not in .gitmodules: add it there in the "
                           "experiment", ExitCode.INPUT)
    listed = git.run(["config", "--blob", str(tree[".gitmodules"].id), "-z", "--list"],
                     parent.git_dir, env=_in(parent.git_dir), code=ExitCode.INPUT,
                     what=f"reading the .gitmodules of {parent.label}")
    settings = dict(item.split("\n", 1) for item in listed.split("\0") if "\n" in item)
    names = [key[len("submodule."):-len(".path")] for key, value in settings.items()
             if key.startswith("submodule.") and key.endswith(".path") and value == path]
    url = settings.get(f"submodule.{names[0]}.url", "") if names else ""
    if not names or not url:
        raise ExpegitError(f"the submodule {label} has no URL in .gitmodules: add it there in "
                           "the experiment", ExitCode.INPUT)
    name = names[0]
    if not name or name.startswith("/") or ".." in re.split(r"[/\\]", name):
        # The name becomes a folder in .git/modules: git refuses such names, and so do we.
        raise ExpegitError(f"the submodule {label} has an unsafe name {name!r} in .gitmodules",
                           ExitCode.INPUT)
    configured = _setting(parent.repo, f"submodule.{name}.url")
    return name, configured or _relative_url(url, _setting(parent.repo, "remote.origin.url"))


def _relative_url(url: str, base: str) -> str:
    """`../lib.git` next to the parent's remote, as git submodule resolves it."""
    if not url.startswith(("./", "../")) or not base:
        return url
    base = base.rstrip("/")
    while url.startswith(("./", "../")):
        if url.startswith("../"):  # up one level: `host:` and `/` end a level
            cut = max(base.rfind("/"), base.rfind(":"))
            base = "." if cut < 0 else base[:cut + 1] if base[cut] == ":" else base[:cut]
        url = url.split("/", 1)[1]
    return f"{base}{url}" if base.endswith(":") else f"{base}/{url}"


def _clone(url: str, git_dir: Path, label: str) -> None:
    """Clone the submodule's git dir as `git submodule update --init` would, with no work
    tree; built aside and renamed, so an interrupted clone leaves no half git dir."""
    if url.startswith("-"):
        raise ExpegitError(f"the submodule {label} has an unsafe URL {url!r}", ExitCode.INPUT)
    git_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".expegit-clone-", dir=git_dir.parent) as tmp:
        git.run([*git.FILE_PROTOCOL, "clone", "--quiet", "--no-checkout",
                 f"--separate-git-dir={tmp}/git", "--", url, f"{tmp}/work"], Path(tmp),
                code=ExitCode.REMOTE, what=f"cloning the submodule {label} from {url}")
        try:
            os.rename(f"{tmp}/git", git_dir)
        except OSError:
            if not (git_dir / "HEAD").is_file():  # else another placement cloned it first
                raise


def _setting(repo: pygit2.Repository, key: str) -> str:
    config = repo.config
    return (config[key] or "") if key in config else ""


def _in(git_dir: Path) -> dict[str, str]:
    """The environment of a git command run on `git_dir` alone (a submodule's git dir
    may have no work tree)."""
    return {"GIT_DIR": str(git_dir)}


# Writing --------------------------------------------------------------------------------------


def _write(source: _Source, commit: pygit2.Oid, inventory: _Inventory, target: Path) -> None:
    tree = source.repo[commit].peel(pygit2.Tree)
    run = _write_tree(source, tree, "", inventory, target, source.top)
    if run is not None:
        _write_entry(source, run, RUN, inventory, target / RUN)


def _write_tree(source: _Source, tree: pygit2.Tree, prefix: str, inventory: _Inventory,
                target: Path, top: bool) -> pygit2.Object | None:
    """Write the tree's entries; at the top, hold back `run` and return it."""
    run = None
    for entry in tree:
        name = entry.name or ""
        if (top and name in _OWN) or name == ".git":
            continue
        if top and name == RUN:
            run = entry
        else:
            _write_entry(source, entry, prefix + name, inventory, target / name)
    return run


def _write_entry(source: _Source, entry: pygit2.Object, path: str, inventory: _Inventory,
                 target: Path) -> None:
    if entry.filemode == TREE:
        target.mkdir(exist_ok=True)
        subtree = source.repo[entry.id]
        assert isinstance(subtree, pygit2.Tree)
        _write_tree(source, subtree, path + "/", inventory, target, top=False)
    elif entry.filemode == GITLINK:
        target.mkdir(exist_ok=True)
        sub, commit, sub_inventory = inventory.submodules[path]
        _write(sub, commit, sub_inventory, target)
    elif entry.filemode in (BLOB, EXECUTABLE):
        if path in inventory.lfs:
            stored = _lfs_object(source, *inventory.lfs[path])
            assert stored is not None  # prepared
            shutil.copyfile(stored, target)
        else:
            target.write_bytes(_blob(source.repo, entry.id))
        target.chmod(0o755 if entry.filemode == EXECUTABLE else 0o644)
    elif entry.filemode == LINK:
        target.unlink(missing_ok=True)  # one from an interrupted placement
        os.symlink(_blob(source.repo, entry.id), target)


def _blob(repo: pygit2.Repository, oid: pygit2.Oid) -> bytes:
    blob = repo[oid]
    assert isinstance(blob, pygit2.Blob)
    return blob.data
