"""The one write path: every change to a campaign is a Transaction, published whole or not
at all, whatever moment the process dies.

A transaction builds its commits, trees and notes in memory (`ObjectStore`). Publishing
then goes, in this order:

1. the objects are written as one pack (invisible: nothing points to them);
2. local changes in the way are looked for, before anything visible changes;
3. `.git/index.lock` is taken, as git itself does, so that no plain git command can write
   the index (or commit) until the publish is complete, and a journal is written;
4. a private copy of the index gets the changed entries (only those: the cost is what
   changes, not the campaign's size);
5. the branch and the notes move together with one compare-and-swap: the commit point;
6. the work tree gets the changed files, the private index replaces `.git/index`, and the
   lock and the journal go.

A process killed before 5 leaves nothing visible; the next command that takes the
campaign's lock discards its leftovers. A process killed after 5 leaves the journal, and
the next command rolls the publish forward: the index and work tree are brought to the
published tree. Until then `.git/index.lock` keeps plain git from committing a half state.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import secrets
import time
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TypeVar

import pygit2

from git_expegit import git
from git_expegit import notes
from git_expegit import record
from git_expegit.campaign import EXECUTIONS
from git_expegit.campaign import NOTES_REF
from git_expegit.campaign import Campaign
from git_expegit.errors import Busy
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.objects import GITLINK
from git_expegit.objects import TREE
from git_expegit.objects import Entry
from git_expegit.objects import ObjectStore
from git_expegit.record import Event
from git_expegit.record import ExecutionId

JOURNAL = "publish.json"
# What our `.git/index.lock` holds until it is released: how a later command knows that a
# lock left behind is ours, from a process that died, and not a live git command's.
LOCK_MARK = b"git expegit: publish in progress\n"
_LOCK_TRIES = 40  # 2 s
Moves = Mapping[str, tuple[str | None, str | None]]


@dataclass
class Transaction:
    """A change being built: the new branch tip and tree, and the notes to write."""

    campaign: Campaign
    store: ObjectStore
    ident: str
    clone: str
    head: pygit2.Commit
    tip: pygit2.Oid
    root: pygit2.Oid
    notes_base: pygit2.Commit | None
    notes_tip: pygit2.Oid | None
    texts: dict[str, str] = field(default_factory=dict)  # creation commit -> whole note
    # Folders whose new entries are in the private index already (finish's `git add`).
    staged: set[str] = field(default_factory=set)
    # The paths set_folder and set_entry changed: only they are compared at publish. None
    # once the root was replaced whole (sync's merge), then the trees are compared.
    touched: set[str] | None = field(default_factory=set)
    _index: Path | None = None

    # Building ---------------------------------------------------------------------------------

    def set_folder(self, execution: ExecutionId, tree: pygit2.Oid | None) -> None:
        """Put `tree` at the execution's folder, or remove the folder when None."""
        store, bucket_name = self.store, execution[:2]
        root = store.entries(self.root)
        excs_old = root[EXECUTIONS].oid if EXECUTIONS in root else None
        excs = store.entries(excs_old)
        bucket_old = excs[bucket_name].oid if bucket_name in excs else None
        bucket = store.entries(bucket_old)
        if tree is None:
            bucket.pop(execution, None)
        else:
            bucket[execution] = Entry(TREE, tree)
        if self.touched is not None:
            self.touched.add(f"{EXECUTIONS}/{bucket_name}/{execution}")
        if bucket:
            excs[bucket_name] = Entry(TREE, store.tree(bucket, base=bucket_old))
        else:
            excs.pop(bucket_name, None)
        root[EXECUTIONS] = Entry(TREE, store.tree(excs, base=excs_old))
        self.root = store.tree(root, base=self.root)

    def set_entry(self, name: str, entry: Entry) -> None:
        """Put `entry` at `name` in the root tree (the experiment's gitlink)."""
        entries = self.store.entries(self.root)
        entries[name] = entry
        if self.touched is not None:
            self.touched.add(name)
        self.root = self.store.tree(entries)

    def commit(self, message: str) -> pygit2.Oid:
        self.tip = self.store.commit(self.root, [self.tip], message, self.ident)
        return self.tip

    def note(self, creation: str) -> str:
        """An execution's note as this transaction will leave it."""
        if creation not in self.texts:
            tree = None if self.notes_tip is None else self.campaign.repo[self.notes_tip].peel(
                pygit2.Tree)
            self.texts[creation] = notes.read(self.campaign.repo, tree, creation)
        return self.texts[creation]

    def log(self, creation: str, kind: str, **fields: object) -> Event:
        """Append an event to an execution's note, after every event it has seen."""
        seen = record.events(self.note(creation).splitlines())
        event = record.new_event(kind, seen, self.clone, **fields)
        self.texts[creation] += event.line()
        return event

    def private_index(self) -> Path:
        """This transaction's copy of the index: git commands that change the index run on
        it (GIT_INDEX_FILE), so `.git/index` changes only when the publish is complete."""
        if self._index is None:
            self._index = _fresh_private_index(self.campaign)
        return self._index

    # Publishing -------------------------------------------------------------------------------

    def publish(self, message: str, worktree: bool = True, force: bool = False) -> None:
        """Write the objects, move the branch and the notes at once, and bring the index
        (and, with `worktree`, the work tree) along; `force` overwrites local changes."""
        campaign, store = self.campaign, self.store
        notes_tip = self.notes_tip
        if self.texts:
            tree = notes.edit(store, None if notes_tip is None else
                              campaign.repo[notes_tip].peel(pygit2.Commit).tree_id, self.texts)
            notes_tip = notes.commit(store, tree, [] if notes_tip is None else [notes_tip],
                                     self.ident, f"Notes added by 'git expegit {message}'")
        store.write()
        moves = {campaign.branch(): (str(self.head.id), str(self.tip)),
                 NOTES_REF: (None if self.notes_base is None else str(self.notes_base.id),
                             None if notes_tip is None else str(notes_tip))}
        publish(campaign, {ref: move for ref, move in moves.items() if move[0] != move[1]},
                message, (str(self.head.tree_id), str(self.root)), worktree, self.staged,
                self._index, force, self.touched)
        self._index = None


def start(campaign: Campaign) -> Transaction:
    """A transaction on the campaign as it is now; the caller holds the campaign's lock."""
    head = campaign.head()
    if head is None:
        raise ExpegitError("the campaign has no commit yet: run git expegit init",
                           ExitCode.CAMPAIGN)
    notes_base = campaign.notes()
    return Transaction(campaign, ObjectStore(campaign.repo), git.ident(campaign.root),
                       campaign.clone_id(), head, head.id, head.tree_id, notes_base,
                       None if notes_base is None else notes_base.id)


@contextmanager
def begin(campaign: Campaign) -> Iterator[Transaction]:
    """Hold the campaign's lock, finish any publish a dead process left, and start."""
    with campaign.locked():
        recover(campaign)
        tx = start(campaign)
        try:
            yield tx
        finally:
            if tx._index is not None:  # never published: the private index goes
                tx._index.unlink(missing_ok=True)


T = TypeVar("T")
# A user's own `git commit` can win the race for the branch, or hold the index a moment:
# the change is built again on what they made, for up to about a minute.
_BUSY_RETRIES = 40


def retried(write: Callable[[], T]) -> T:
    """Run `write` (a whole transaction) again while another writer gets in its way."""
    for attempt in range(_BUSY_RETRIES):
        try:
            return write()
        except Busy:
            if attempt == _BUSY_RETRIES - 1:
                raise
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
    raise AssertionError("unreachable")


# The publish protocol -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Changes:
    """How the index and work tree go from one tree to another: index-info lines, the
    paths to write and the paths to delete."""

    index_info: list[str]
    write: list[str]
    delete: list[str]
    existing: list[str]  # changed paths that the old tree had: they must be clean
    gitlinks: list[tuple[str, str]]  # submodules moved: (path, commit)


def publish(campaign: Campaign, moves: Moves, message: str, trees: tuple[str, str],
            worktree: bool, staged: Collection[str] = (), index: Path | None = None,
            force: bool = False, paths: Collection[str] | None = None) -> None:
    """Move the refs and bring the index (and work tree) from trees[0] to trees[1], as
    the module's docstring says. Raises before the commit point with nothing changed."""
    changes = _changes(campaign.repo, *trees, staged, paths)
    try:
        if not force:
            _refuse_local_changes(campaign, changes, worktree)
        _take_index_lock(campaign)
    except BaseException:
        if index is not None:
            index.unlink(missing_ok=True)
        raise
    try:
        _write_journal(campaign, moves, message, trees, worktree)
        index = index or _fresh_private_index(campaign)
        _update_index(campaign, index, changes.index_info)
        git.update_refs(campaign.root, moves, f"expegit: {message}")
    except BaseException:
        # A Ctrl-C may land while git update-ref has already moved the refs (or one of
        # them): then the change is committed, and it is completed from its journal, as a
        # dead process's would be, before the interruption goes on.
        if _moved(campaign, moves) is False:
            _discard(campaign)  # before the commit point: as if nothing happened
        else:
            recover(campaign)
        raise
    _complete(campaign, index, changes, worktree)


def _complete(campaign: Campaign, index: Path, changes: _Changes, worktree: bool) -> None:
    """After the refs moved: the work tree, then the index, then the lock and journal."""
    try:
        if worktree:
            _delete(campaign.root, changes.delete)
            _checkout(campaign, index, changes.write)
            _follow(campaign, changes.gitlinks)
        os.replace(index, campaign.git_dir / "index")
    except OSError as e:
        raise ExpegitError(f"the change is committed, but updating the work tree failed "
                           f"({e.strerror}): fix that, then run any git expegit command to "
                           "finish it", ExitCode.GIT) from None
    except ExpegitError as e:
        raise ExpegitError(f"the change is committed, but {e}; then run any git expegit "
                           "command to finish it", e.code, e.detail) from None
    _release(campaign)


def recover(campaign: Campaign) -> bool:
    """Finish or discard the publish of a process that died; the caller holds the
    campaign's lock, so no live expegit is publishing. True when there was one."""
    journal = _journal(campaign)
    try:
        data = json.loads(journal.read_text())
        moves = {str(ref): (old, new) for ref, (old, new) in data["moves"].items()}
        old, new = (str(tree) for tree in data["trees"])
        worktree = bool(data["worktree"])
    except FileNotFoundError:
        _discard(campaign)  # leftovers of a process that died before its journal
        return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        _discard(campaign)  # a journal cut short: written before any ref moved
        return True
    _unlock_refs(campaign, moves)
    moved = _moved(campaign, moves)
    if moved is None:  # the ref transaction was cut between two refs: finish it
        git.update_refs(campaign.root, {ref: move for ref, move in moves.items()
                                        if _at(campaign, ref) == move[0]},
                        "expegit: complete an interrupted publish")
    elif not moved:
        _discard(campaign)
        return True
    changes = _changes(campaign.repo, old, new, ())
    index = _fresh_private_index(campaign)
    _update_index(campaign, index, changes.index_info)
    _complete(campaign, index, changes, worktree)
    return True


def _unlock_refs(campaign: Campaign, moves: Moves) -> None:
    """The dead process was moving these refs: a `git update-ref` killed with it leaves
    their .lock files, which would refuse every later move. No live expegit holds them (the
    caller has the campaign's lock), and no plain `git commit` (our index.lock is there)."""
    for ref in moves:
        (campaign.git_dir / f"{ref}.lock").unlink(missing_ok=True)


def recover_if_interrupted(campaign: Campaign) -> None:
    """For the commands that only read: complete a dead process's publish if there is
    one and nobody is writing now (a live writer will complete its own)."""
    with campaign.locked(wait=False) as held:
        if held:
            recover(campaign)


def _moved(campaign: Campaign, moves: Moves) -> bool | None:
    """Whether the refs are at their new values (True: the publish got committed), at
    their old ones (False), or some at each (None: git moves refs one at a time, and a
    process killed in between leaves both)."""
    at = {ref: _at(campaign, ref) for ref in moves}
    if any(at[ref] not in (old, new) for ref, (old, new) in moves.items()):
        return False  # someone else moved a ref since: nothing of ours to complete
    done = {at[ref] == new for ref, (_, new) in moves.items()}
    return None if len(done) > 1 else done != {False}


def _at(campaign: Campaign, ref: str) -> str | None:
    found = campaign.repo.references.get(ref)
    return None if found is None else str(found.target)


def _changes(repo: pygit2.Repository, old: str, new: str, staged: Collection[str],
             paths: Collection[str] | None = None) -> _Changes:
    """How the index and work tree go from tree `old` to tree `new`; with `paths`, only
    those paths can differ (the folders a transaction set), so only they are compared."""
    old_root = None if old == git.EMPTY_TREE else old
    if paths is None:
        found = _diff(repo, old_root, new)
    else:
        found = itertools.chain.from_iterable(
            _diff_entry(repo, path, _lookup(repo, old_root, path), _lookup(repo, new, path))
            for path in sorted(paths))
    info, write, delete, existing, gitlinks = [], [], [], [], []
    for path, before, after in found:
        inside_staged = any(path.startswith(folder + "/") for folder in staged)
        if after is None:
            info.append(f"0 {git.ZERO}\t{path}")
            delete.append(path)
        else:
            info.append(f"{after[0]:o} {after[1]}\t{path}")
            if after[0] != GITLINK:
                write.append(path)
            else:
                gitlinks.append((path, after[1]))
        if inside_staged:
            info.pop()
        elif before is not None and before[0] != GITLINK:
            existing.append(path)
    return _Changes(info, write, delete, existing, gitlinks)


_File = tuple[int, str]  # mode, object id
_Difference = Iterator[tuple[str, _File | None, _File | None]]


def _diff(repo: pygit2.Repository, old: str | None, new: str | None,
          prefix: str = "") -> _Difference:
    """The files that differ between two trees, as (path, before, after). Equal subtrees
    are skipped by their ids, so the cost is what changed, not the campaign's size."""
    before, after = _entries(repo, old), _entries(repo, new)
    for name in sorted(before.keys() | after.keys()):
        yield from _diff_entry(repo, prefix + name, before.get(name), after.get(name))


def _diff_entry(repo: pygit2.Repository, path: str, b: _File | None,
                a: _File | None) -> _Difference:
    if b == a:
        return
    b_tree = b[1] if b is not None and b[0] == TREE else None
    a_tree = a[1] if a is not None and a[0] == TREE else None
    if b_tree is not None or a_tree is not None:
        yield from _diff(repo, b_tree, a_tree, path + "/")
    if (b is not None and b_tree is None) or (a is not None and a_tree is None):
        yield (path, None if b_tree is not None else b, None if a_tree is not None else a)


def _lookup(repo: pygit2.Repository, root: str | None, path: str) -> _File | None:
    if root is None:
        return None
    try:
        found = repo[root].peel(pygit2.Tree)[path]
    except KeyError:
        return None
    return (int(found.filemode), str(found.id))


def _entries(repo: pygit2.Repository, tree: str | None) -> dict[str, _File]:
    return {} if tree is None else dict(_listing(repo, tree))


@functools.lru_cache(maxsize=4096)
def _listing(repo: pygit2.Repository, tree: str) -> tuple[tuple[str, _File], ...]:
    # A batch gives thousands of folders the same tree: it is read once.
    found = repo[tree]
    assert isinstance(found, pygit2.Tree)
    return tuple((e.name or "", (e.filemode, str(e.id))) for e in found)


def _refuse_local_changes(campaign: Campaign, changes: _Changes, worktree: bool) -> None:
    """Refuse, before anything changes, when the publish would overwrite a local change:
    a changed tracked file, or an untracked file where a new one goes."""
    if changes.existing:
        # git status refreshes stale stat data (a touch, a cp -a) before comparing.
        out = git.run(["status", "--porcelain", "-z", "--untracked-files=no", "--no-renames",
                       "--", *changes.existing], campaign.root,
                      env={"GIT_LITERAL_PATHSPECS": "1"})
        changed = [entry[3:] for entry in out.split("\0") if entry]
        if changed:
            raise ExpegitError(f"{changed[0]} has a local change that this would overwrite: "
                               f"commit or restore it (git restore --staged --worktree "
                               f"{changed[0]}) and retry", ExitCode.DIRTY)
    if worktree:
        existing = set(changes.existing)
        for path in changes.write:
            if path not in existing and os.path.lexists(campaign.root / path):
                raise ExpegitError(f"{path} is in the way (an untracked file where this puts "
                                   "one): move it away and retry", ExitCode.DIRTY)


def _take_index_lock(campaign: Campaign) -> None:
    lock = campaign.git_dir / "index.lock"
    for _ in range(_LOCK_TRIES):  # a plain `git status` holds it for a moment
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            time.sleep(0.05)
        except OSError as e:
            raise ExpegitError(f"cannot write in {campaign.git_dir} ({e.strerror}): nothing "
                               "was changed", ExitCode.GIT) from None
    else:
        raise Busy(f"{lock} exists: another git command is running in this "
                   "repository; if none is, a git command died there: remove "
                   f"{lock} and retry", ExitCode.DIRTY)
    try:
        os.write(fd, LOCK_MARK)
    finally:
        os.close(fd)


def _journal(campaign: Campaign) -> Path:
    return campaign.state_dir / JOURNAL


def _write_journal(campaign: Campaign, moves: Moves, message: str, trees: tuple[str, str],
                   worktree: bool) -> None:
    text = json.dumps({"message": message, "moves": moves, "trees": trees,
                       "worktree": worktree})
    tmp = _journal(campaign).with_suffix(f".{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _journal(campaign))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExpegitError(f"cannot write in {campaign.state_dir} ({e.strerror}): nothing "
                           "was changed", ExitCode.GIT) from None


def _fresh_private_index(campaign: Campaign) -> Path:
    """A private index starting as `.git/index`: a hard link is enough, since git never
    writes an index in place (it writes a new file and renames it)."""
    private = campaign.state_dir / "index"
    private.unlink(missing_ok=True)
    (campaign.state_dir / "index.lock").unlink(missing_ok=True)
    current = campaign.git_dir / "index"
    try:
        os.link(current, private)
    except FileNotFoundError:
        pass  # no index yet: git starts an empty one
    except OSError:
        private.write_bytes(current.read_bytes())
    return private


def _update_index(campaign: Campaign, index: Path, lines: list[str]) -> None:
    if lines:
        git.run(["update-index", "-z", "--index-info"], campaign.root,
                input="".join(line + "\0" for line in lines).encode(),
                env={"GIT_INDEX_FILE": str(index)}, what="updating the index")


def _delete(root: Path, paths: list[str]) -> None:
    """Delete the files of removed paths, and the folders they leave empty."""
    folders: set[Path] = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            (root / path).unlink()
        folders.update(Path(path).parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.parts:
            with contextlib.suppress(OSError):
                (root / folder).rmdir()  # only when empty


def _checkout(campaign: Campaign, index: Path, paths: list[str]) -> None:
    """Write the files of `paths` from the index, through git's filters (LFS)."""
    # git's attributes never filter a .gitattributes file, but checking one out while the
    # LFS filter is configured costs 0.4 ms (9 s for a sweep of 10,000): those go without.
    attributes = [path for path in paths if path.rsplit("/", 1)[-1] == ".gitattributes"]
    others = [path for path in paths if path.rsplit("/", 1)[-1] != ".gitattributes"]
    for chosen, config in ((others, ()), (attributes, _NO_FILTERS)):
        if chosen:
            git.run([*config, "checkout-index", "-f", "-q", "-z", "--stdin"], campaign.root,
                    input="".join(path + "\0" for path in chosen).encode(),
                    env={"GIT_INDEX_FILE": str(index)}, what="writing the work tree")


_NO_FILTERS = ("-c", "filter.lfs.process=", "-c", "filter.lfs.smudge=", "-c",
               "filter.lfs.clean=", "-c", "filter.lfs.required=false")


def _follow(campaign: Campaign, gitlinks: list[tuple[str, str]]) -> None:
    """Check submodules out at their new commits (the experiment, after update-expe or a
    sync that brought one), fetching the commit when it is not there yet."""
    for path, commit in gitlinks:
        folder = campaign.root / path
        if not (folder / ".git").exists():
            continue  # never initialised here: nothing to move
        checkout = ["checkout", "--quiet", "--detach", commit]
        try:
            git.run(checkout, folder)
        except ExpegitError:
            git.run([*git.FILE_PROTOCOL, "fetch", "--quiet", "origin"], folder,
                    code=ExitCode.REMOTE, what=f"fetching {path}/")
            git.run(checkout, folder, code=ExitCode.DIRTY,
                    what=f"checking out {commit[:12]} in {path}/ (commit or stash your "
                         "changes there first)")


def _discard(campaign: Campaign) -> None:
    """Remove a publish's leftovers: the private index, the journal, and our lock."""
    state = campaign.state_dir
    for name in ("index", "index.lock"):
        (state / name).unlink(missing_ok=True)
    _release(campaign)


def _release(campaign: Campaign) -> None:
    """The journal goes first: a lock left without a journal is still known by its mark."""
    _journal(campaign).unlink(missing_ok=True)
    lock = campaign.git_dir / "index.lock"
    try:
        with open(lock, "rb") as f:
            ours = f.read(len(LOCK_MARK) + 1) == LOCK_MARK
    except FileNotFoundError:
        return
    if ours:
        lock.unlink(missing_ok=True)
