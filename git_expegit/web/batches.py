"""`/batches/new`: the new batch form, its live preview and its submission; `/tasks`: the
queue, the runs under way and the agent.

A batch is submitted as `git expegit jobs run --detach` does it: every input is checked
before anything is created, then `queue.enqueue` creates and queues the executions in one
operation and `control.ensure_running` starts the agent, which runs them. The web never runs
anything itself.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import pygit2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route

from git_expegit import campaign
from git_expegit import catalog
from git_expegit import executions
from git_expegit import parameters
from git_expegit import queue
from git_expegit import record
from git_expegit import runner
from git_expegit.agent import control
from git_expegit.campaign import EXPERIMENT
from git_expegit.campaign import Campaign
from git_expegit.catalog import Execution
from git_expegit.errors import ExitCode
from git_expegit.errors import ExpegitError
from git_expegit.record import State
from git_expegit.web.templating import render

COMMITS = 200  # the experiment commits the form offers, newest first
SHOWN = 1000  # the parameter strings a preview lists (it counts them all)
REPEAT_MAX = 100_000  # as jobs run --repeat


# The experiment's history ---------------------------------------------------------------------

@dataclass(frozen=True)
class Commit:
    id: str
    subject: str
    date: str
    author: str
    refs: list[str]  # the experiment's branches (local and remote-tracking) that point here
    pinned: bool  # the commit the campaign pins (jobs run's default)


def experiment_commits(found: Campaign, limit: int = COMMITS) -> list[Commit]:
    """The commits of the experiment repository (`xprp/`, where executions take their code
    from, as executions.experiment_commit reads them): every commit reachable from its
    branches, its remote-tracking branches and the pinned commit, newest first."""
    repo = found.experiment()
    head = found.head()
    pinned = str(head.tree[EXPERIMENT].id) if head is not None and EXPERIMENT in head.tree \
        else None
    names: dict[str, list[str]] = {}
    tips: set[pygit2.Oid] = set()
    for name in repo.references:
        if not name.startswith(("refs/heads/", "refs/remotes/")) or name.endswith("/HEAD"):
            continue
        try:
            tip = repo.references[name].peel(pygit2.Commit).id
        except (pygit2.GitError, KeyError, ValueError):
            continue
        tips.add(tip)
        short = name.removeprefix("refs/heads/").removeprefix("refs/remotes/")
        names.setdefault(str(tip), []).append(short)
    if pinned is not None and pinned in repo:
        tips.add(repo[pinned].id)
    if not tips:
        return []
    walker = repo.walk(next(iter(tips)), pygit2.enums.SortMode.TIME)
    for tip in tips:
        walker.push(tip)
    out: list[Commit] = []
    for commit in walker:
        sha = str(commit.id)
        when = datetime.datetime.fromtimestamp(commit.commit_time)
        out.append(Commit(sha, (commit.message.splitlines() or [""])[0],
                          when.strftime("%Y-%m-%d %H:%M"), commit.author.name,
                          sorted(names.get(sha, [])), sha == pinned))
        if len(out) >= limit:
            break
    return out


# The preview ---------------------------------------------------------------------------------

def repetitions(value: object) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ExpegitError(f"repetitions {str(value)[:20]!r}: give a whole number",
                           ExitCode.INPUT) from None
    if not 1 <= number <= REPEAT_MAX:
        raise ExpegitError(f"repetitions {number}: give a number from 1 to {REPEAT_MAX}",
                           ExitCode.INPUT)
    return number


def strings(expression: str, repeat: int) -> list[str]:
    """The parameter strings of the batch: jobs run's expansion (jobs_cli._strings)."""
    if not expression.strip():
        return [""] * repeat
    return parameters.expand(expression, repeat, "parameter expression")


def preview(request: Request) -> Response:
    """GET /batches/preview?expression=...&repetitions=N: what submitting would create."""
    try:
        found = strings(request.query_params.get("expression", ""),
                        repetitions(request.query_params.get("repetitions", "1")))
    except ExpegitError as e:
        return JSONResponse({"ok": False, "error": str(e)}, status_code=422)
    return JSONResponse({"ok": True, "count": len(found), "strings": found[:SHOWN]})


# The form and its submission ---------------------------------------------------------------

def new_batch(request: Request) -> Response:
    found = campaign.find(request.app.state.root)
    try:
        commits, problem = experiment_commits(found), None
    except ExpegitError as e:
        commits, problem = [], str(e)
    return render(request, "batch_new.html", commits=commits, problem=problem,
                  profiles=runner.profile_names(found), repeat_max=REPEAT_MAX)


def _text(body: dict[str, object], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, (str, int)):
        raise ExpegitError(f"{key}: give text", ExitCode.INPUT)
    return str(value)


def submit(found: Campaign, commit: str, profile: str, repeat: int, expression: str,
           name: str | None) -> queue.Batch:
    """jobs run --detach: everything checked before anything is created; then queued for
    this clone, and the agent started."""
    chosen = strings(expression, repeat)
    runner.sbatch_options(runner.check_profile(found, profile), [])
    full = executions.experiment_commit(found, commit or None)
    runner.check_code(found, full)
    if name is not None and any(queue.batch_of(e) == name for e in catalog.executions(found)):
        raise ExpegitError(f"a batch is named {name!r} already: choose another name",
                           ExitCode.INPUT)
    batch = queue.enqueue(found, full, chosen, profile, name=name)
    control.ensure_running(found)
    return batch


async def create(request: Request) -> Response:
    """POST /batches, JSON {commit, profile, repetitions, expression, name}."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse({"ok": False, "error": "send the form as a JSON object"},
                            status_code=400)
    try:
        name = _text(body, "name").strip() or None
        batch = await run_in_threadpool(
            submit, campaign.find(request.app.state.root), _text(body, "commit").strip(),
            _text(body, "profile").strip(), repetitions(body.get("repetitions", 1)),
            _text(body, "expression"), name)
    except ExpegitError as e:
        return JSONResponse({"ok": False, "error": str(e)}, status_code=422)
    return JSONResponse({"ok": True, "batch": batch.name, "ids": batch.ids,
                         "count": len(batch.ids)}, status_code=201)


# Tasks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    execution: Execution
    profile: str | None
    batch: str | None
    job: str | None  # the Slurm job, once submitted
    host: str | None
    since: str | None  # when it entered its state (the event's timestamp)


def _since(e: Execution) -> str | None:
    event = record.state_event(e.log)
    return None if event is None else event.stamp[:19].replace("T", " ")


def tasks_of(found: Campaign) -> tuple[list[Task], list[Task]]:
    """This clone's running executions and its queue, in the order they run."""
    owned = queue.mine(found, states=(State.QUEUED, State.RUNNING))
    rows = [Task(e, queue.profile_of(e), queue.batch_of(e), e.field("job"), e.field("host"),
                 _since(e)) for e in owned]
    return ([t for t in rows if t.execution.state == State.RUNNING],
            [t for t in rows if t.execution.state == State.QUEUED])


def tasks(request: Request) -> Response:
    found = campaign.find(request.app.state.root)
    running, queued = tasks_of(found)
    return render(request, "tasks.html", running=running, queued=queued,
                  agent=control.running(found), runner=queue.runner_pid(found),
                  agent_off=_agent_off())


def _agent_off() -> bool:
    return os.environ.get("EXPEGIT_AGENT") == "off"


routes: list[BaseRoute] = [
    Route("/tasks", tasks),
    Route("/batches/new", new_batch),
    Route("/batches/preview", preview),
    Route("/batches", create, methods=["POST"]),
]
