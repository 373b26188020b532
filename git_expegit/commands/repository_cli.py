"""init, clone, update-expe and sync, as the user sees them."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from git_expegit import campaign
from git_expegit import repository
from git_expegit import sync as syncing
from git_expegit.commands.output import logger
from git_expegit.commands.output import relative
from git_expegit.commands.output import warn


def init(experiment_url: str, campaign_url: str | None, path: str | None, push: bool,
         verbose: bool) -> int:
    log = logger(verbose)
    target = Path(path or ".").absolute()
    if push and campaign_url is None:
        repository.check_origin(target)  # before anything is made
    made = repository.init(experiment_url, target, campaign_url)
    log(f"campaign ready in {made.root} (experiment {experiment_url})")
    if push and campaign_url is None:
        syncing.sync(made)
        repository.point_remote_head(made.root)
        log("pushed")
    return 0


def clone(url: str, path: str | None, verbose: bool) -> int:
    target = Path(path or repository.default_path(url)).absolute()
    made = repository.clone(url, target)
    logger(verbose)(f"cloned {url} into {made.root}")
    print(relative(made.root, Path.cwd()))
    return 0


def update_expe(cwd: Path, push: bool, verbose: bool) -> int:
    found = campaign.find(cwd)
    with syncing.pushing(found, push):
        newest = repository.update_experiment(found)
        logger(verbose)("the experiment is already up to date" if newest is None
                        else f"experiment pinned at {newest[:12]}")
    return 0


def sync(cwd: Path, verbose: bool) -> int:
    report = syncing.sync(campaign.find(cwd))
    for folder in report.kept:
        warn(f"{folder} was removed in one clone and changed in another: it is kept, as "
             "changed; remove it again (git expegit exec remove) if that was meant")
    logger(verbose)(f"synced: {report.received} commits received, pushed after "
                    f"{report.tries} tries")
    return 0


def version() -> int:
    print(f"git expegit {importlib.metadata.version('git-expegit')}")
    return 0
