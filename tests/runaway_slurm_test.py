"""`git runaway` on the real single-node Slurm, over the loopback sshd: blocking runs of an
`sbatch:` profile, --detach and --attach, Ctrl-C, --clean and --check, the seed's srun
profile, and the bad inputs of each."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from git_runaway.errors import FAILED
from git_runaway.errors import ExitCode
from tests.conftest import Target
from tests.conftest import needs_slurm
from tests.conftest import runaway
from tests.conftest import script
from tests.conftest import ssh_user_home
from tests.conftest import until
from tests.conftest import write_profile

JOB = re.compile(r"[0-9]+_0")


@pytest.fixture
def cluster(ssh_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    needs_slurm()
    monkeypatch.setenv("RUNAWAY_SLURM_POLL", "1")
    return ssh_host


def partition() -> str:
    return os.environ.get("EXPEGIT_TEST_SLURM_PARTITION", "debug")


def slurm_profile(home: Path, host: str, name: str = "sb", **keys: object) -> Target:
    """A profile for the cluster, in ~/.config/runaway, with a fresh host_directory."""
    folder = uuid.uuid4().hex[:12]
    write_profile(home / ".config" / "runaway", name, ssh_config=host,
                  host_directory=f"~/runaway-tests/{folder}",
                  execution=["$SCRIPT_NAME $SCRIPT_ARGS"], **keys)
    return Target(name, ssh_user_home() / "runaway-tests" / folder)


@pytest.fixture
def sbatch(cluster: str, home: Path) -> Target:
    return slurm_profile(home, cluster, sbatch={"partition": partition(), "time": 1})


def on_host(home: Path, host: str, command: str) -> str:
    """A command as the test user on the cluster's login node (as the jobs' owner)."""
    done = subprocess.run(["ssh", "-F", str(home / ".ssh" / "config"), host, command],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def squeue(home: Path, host: str, job: str) -> str:
    """The job's state as squeue knows it ("" once forgotten or never known)."""
    return on_host(home, host, f"squeue -h -t all -o %T -j {job} 2>/dev/null || :").strip()


wait_until = functools.partial(until, timeout=60, every=0.2)


def only_lock(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == [".lock"]


def records(home: Path) -> list[dict[str, object]]:
    folder = home / ".cache" / "runaway" / "detached"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def one_line(stderr: str, pattern: str) -> None:
    assert len(stderr.splitlines()) == 1, stderr
    assert re.fullmatch(f"runaway: {pattern}\n", stderr), stderr


def detach(target: Target, work: Path, *args: str) -> str:
    done = runaway("--detach", target.profile, *args, cwd=work)
    assert done.returncode == 0, done.stderr
    assert JOB.fullmatch(done.stdout.strip()), done.stdout
    assert done.stderr == ""
    return done.stdout.strip()


# Blocking runs --------------------------------------------------------------------------------

def test_a_blocking_sbatch_run_is_like_any_run(sbatch: Target, work: Path):
    script(work, "run.sh", "echo out \"$@\"; echo err >&2; echo result > result.txt; exit 3\n")
    done = runaway(sbatch.profile, "run.sh", "--", "a b", "c", cwd=work)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "out a b c\n"  # from Slurm's output file
    assert done.stderr == "err\n"
    assert (work / "result.txt").read_text() == "result\n"
    assert only_lock(sbatch.host_directory)


def test_ctrl_c_cancels_the_job_and_still_collects_what_it_left(sbatch: Target, home: Path,
                                                                 work: Path, cluster: str):
    script(work, "run.sh", "echo started > started.txt; echo started; sleep 120;"
           " echo finished > finished.txt\n")
    process = subprocess.Popen(["git-runaway", "-v", sbatch.profile, "run.sh"], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    # Running: the job's task wrote where it runs, and its script its first file.
    wait_until(lambda: list(sbatch.host_directory.glob("*/started.txt")), "started")
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    [job] = re.findall(r"cancelling Slurm job ([0-9]+_0)", stderr)
    assert squeue(home, cluster, job) in ("CANCELLED", ""), "scancel did not reach the job"
    assert stdout == "started\n"  # its output so far, from Slurm's file
    assert (work / "started.txt").read_text() == "started\n"
    assert not (work / "finished.txt").exists()
    assert stderr.endswith("runaway: interrupted\n")
    assert only_lock(sbatch.host_directory)


def submitted_job(folder: Path) -> str:
    """The job id in the only `.slurm` file of a host_directory, once sbatch gave one."""
    files = list(folder.glob("*.slurm")) if folder.is_dir() else []
    text = files[0].read_text().split()[0] if len(files) == 1 else ""
    return text if JOB.fullmatch(text) else ""


@pytest.mark.parametrize("detached", [False, True])
def test_a_job_that_ended_without_an_exit_code_is_one_line_and_255(
        cluster: str, home: Path, work: Path, detached: bool):
    held = slurm_profile(home, cluster, sbatch={"partition": partition(), "time": 1,
                                                "extra": ["--hold"]})
    script(work, "run.sh", "echo never\n")
    if detached:
        job = detach(held, work, "run.sh")
        on_host(home, cluster, f"scancel {job}")  # cancelled while queued: it never ran
        done = runaway("--attach", job, cwd=work)
    else:
        process = subprocess.Popen(["git", "runaway", held.profile, "run.sh"], cwd=work,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: submitted_job(held.host_directory), "submitted")
        job = submitted_job(held.host_directory)
        on_host(home, cluster, f"scancel {job}")
        stdout, stderr = process.communicate(timeout=60)
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert done.returncode == FAILED
    assert done.stdout == ""
    one_line(done.stderr, f"Slurm job {job} ended without an exit code: its state is CANCELLED")
    assert records(home) == []
    assert only_lock(held.host_directory)


# Detach and attach ----------------------------------------------------------------------------

def test_detach_returns_the_job_id_and_attach_collects_into_the_folder_it_started_from(
        sbatch: Target, home: Path, work: Path, tmp_path: Path):
    script(work, "run.sh", "echo out \"$@\"; echo err >&2; echo result > result.txt; exit 5\n")
    start = time.monotonic()
    job = detach(sbatch, work, "run.sh", "--", "x")
    assert time.monotonic() - start < 30
    [record] = records(home)
    assert record["job"] == job and record["profile"] == sbatch.profile
    assert record["folder"] == str(work) and record["script"] == "run.sh"
    assert record["leave"] == "nothing" and record["arguments"] == "x"
    assert Path(str(record["root"])) == sbatch.host_directory
    listed = runaway("--detached", cwd=tmp_path)
    assert listed.stdout.startswith(f"{job} {sbatch.profile} ") and str(work) in listed.stdout
    assert not (work / "result.txt").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = runaway("--attach", job, cwd=elsewhere)
    assert done.returncode == 5, done.stderr
    assert (done.stdout, done.stderr) == ("out x\n", "err\n")
    assert (work / "result.txt").read_text() == "result\n"
    assert list(elsewhere.iterdir()) == []
    assert records(home) == []  # collected: forgotten
    assert only_lock(sbatch.host_directory)
    again = runaway("--attach", job, cwd=work)
    assert again.returncode == FAILED
    one_line(again.stderr, f"no detached run has the job id '{job}' .*")


def test_attach_without_ids_collects_the_runs_started_here(sbatch: Target, home: Path,
                                                           work: Path, tmp_path: Path):
    script(work, "run.sh", "echo code $1 > result-$1.txt; echo ran $1; exit $1\n")
    other = tmp_path / "other"
    script(other, "run.sh", "exit 0\n")
    jobs = [detach(sbatch, work, "run.sh", "--", code) for code in ("0", "4", "6")]
    theirs = detach(sbatch, other, "run.sh")
    done = runaway("--attach", cwd=work)
    assert done.returncode == 4, done.stderr  # of several, the first that is not 0
    assert done.stdout == "ran 0\nran 4\nran 6\n"
    assert [(work / f"result-{c}.txt").read_text() for c in "046"] == [
        "code 0\n", "code 4\n", "code 6\n"]
    assert [r["job"] for r in records(home)] == [theirs]
    assert jobs[0] != jobs[1]
    assert runaway("--attach", cwd=other).returncode == 0
    assert only_lock(sbatch.host_directory)


def test_ctrl_c_on_attach_leaves_the_job_to_attach_again(sbatch: Target, home: Path,
                                                         work: Path, cluster: str):
    script(work, "run.sh", "sleep 4; echo slept > slept.txt; echo slept\n")
    job = detach(sbatch, work, "run.sh")
    process = subprocess.Popen(["git-runaway", "-v", "--attach", job], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    wait_until(lambda: squeue(home, cluster, job) == "RUNNING", "running")
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == ExitCode.INTERRUPTED
    assert f"the jobs go on: collect them with git runaway --attach {job}\n" in stderr
    assert [r["job"] for r in records(home)] == [job]
    done = runaway("--attach", job, cwd=work)
    assert (done.returncode, done.stdout) == (0, "slept\n"), done.stderr
    assert (work / "slept.txt").exists()


# Bad input ------------------------------------------------------------------------------------

def test_detach_on_a_profile_without_sbatch_is_refused(cluster: str, home: Path, work: Path):
    direct = slurm_profile(home, cluster, name="direct")
    script(work, "run.sh", "echo ran > ran.txt\n")
    done = runaway("--detach", "direct", "run.sh", cwd=work)
    assert done.returncode == FAILED
    one_line(done.stderr, "--detach needs a profile with an sbatch: key; 'direct' .*")
    assert done.stdout == ""
    assert not direct.host_directory.exists()  # nothing sent, nothing submitted
    assert records(home) == []


def test_attach_an_unknown_job_is_one_line(cluster: str, work: Path):
    done = runaway("--attach", "999999_0", cwd=work)
    assert done.returncode == FAILED
    one_line(done.stderr, r"no detached run has the job id '999999_0' \(none is waiting to be "
                          r"collected\)")
    nothing = runaway("--attach", cwd=work)
    assert nothing.returncode == FAILED
    one_line(nothing.stderr, f"no detached run was started from {work} .*")


@pytest.mark.parametrize("detached", [False, True])
def test_a_partition_sbatch_refuses_leaves_nothing(cluster: str, home: Path, work: Path,
                                                    detached: bool):
    bad = slurm_profile(home, cluster, sbatch={"partition": "nosuchpartition"})
    script(work, "run.sh", "echo ran\n")
    done = runaway(*(["--detach"] if detached else []), bad.profile, "run.sh", cwd=work)
    assert done.returncode == FAILED
    one_line(done.stderr, "sbatch refused the jobs on testhost: sbatch: error: .*[Pp]artition.*")
    assert done.stdout == ""
    assert only_lock(bad.host_directory)  # neither the code, nor the task files
    assert records(home) == []


# The seed's srun profile, --clean and --check -------------------------------------------------

def test_the_seeds_srun_profile_runs_end_to_end(cluster: str, home: Path, work: Path):
    srun = slurm_profile(home, cluster, name="srun")
    (home / ".config" / "runaway" / "srun.yml").write_text(
        f"ssh_config: {cluster}\nhost_directory: {srun.host_directory}\n"
        f"execution: srun -p {partition()} -t 1 $SCRIPT_NAME $SCRIPT_ARGS\n")
    script(work, "run.sh", "echo on $SLURM_JOB_PARTITION \"$@\"; echo r > result.txt;"
           " exit 2\n")
    done = runaway("srun", "run.sh", "--", "one", cwd=work)
    assert done.returncode == 2, done.stderr
    assert done.stdout == f"on {partition()} one\n"  # it ran as a Slurm job step
    assert (work / "result.txt").read_text() == "r\n"
    assert only_lock(srun.host_directory)


def test_clean_keeps_the_files_of_live_jobs_and_removes_those_of_ended_ones(
        sbatch: Target, home: Path, work: Path, cluster: str):
    script(work, "run.sh", "sleep 3; echo slept > slept.txt\n")
    job = detach(sbatch, work, "run.sh")
    [run_id] = [r["run_id"] for r in records(home)]
    folder = sbatch.host_directory / str(run_id)
    wait_until(lambda: (folder / "run.sh").exists() and squeue(home, cluster, job) == "RUNNING",
               "running")
    kept = runaway("--clean", sbatch.profile, cwd=work)
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == ""
    assert folder.is_dir() and (sbatch.host_directory / f"{run_id}.slurm").exists()
    assert len(list(sbatch.host_directory.glob("*.tar"))) == 1  # pinned by the job

    wait_until(lambda: squeue(home, cluster, job) not in ("PENDING", "RUNNING", "COMPLETING"),
               "ended")
    wait_until(lambda: job not in on_host(home, cluster, "squeue -h -r -o %i"), "forgotten")
    cleaned = runaway("--clean", sbatch.profile, cwd=work)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"/{run_id} (slurm job {job})\n" in cleaned.stdout
    assert re.search(r"/[0-9a-f]{64}\.tar \(archive\)\n", cleaned.stdout)
    assert only_lock(sbatch.host_directory)


def test_check_on_an_sbatch_profile_finds_the_slurm_commands(sbatch: Target, home: Path,
                                                             work: Path, tmp_path: Path):
    good = runaway("--check", sbatch.profile, cwd=work)
    assert good.returncode == 0, good.stdout
    assert good.stdout.splitlines()[-1] == "ok    sbatch, squeue, scancel on the PATH"
    # On a host whose PATH lacks squeue and scancel (this machine, through a profile
    # without ssh_config, run with a PATH of every command but those).
    write_profile(home / ".config" / "runaway", "here", host_directory=str(tmp_path / "h"),
                  execution=["$SCRIPT_NAME"], sbatch={"partition": partition()})
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    for entry in Path("/usr/bin").iterdir():
        if entry.name not in ("squeue", "scancel"):
            (bin_folder / entry.name).symlink_to(entry)
    command = shutil.which("git-runaway")
    assert command is not None
    bad = subprocess.run([command, "--check", "here"], cwd=work, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PATH": str(bin_folder)})
    assert bad.returncode == FAILED, bad.stdout + bad.stderr
    assert bad.stdout.splitlines()[-1] == ("FAIL  sbatch, squeue, scancel on the PATH: not on "
                                           "the PATH: squeue scancel")


@pytest.mark.parametrize("when", ["before", "during"])
def test_ctrl_c_on_detach_submits_nothing_before_and_records_the_job_during_the_submission(
        cluster: str, home: Path, work: Path, tmp_path: Path, when: str):
    # Submitted from this machine (a profile without ssh_config) through an sbatch that
    # says when it starts, then takes 2 s: the Ctrl-C lands during it; or before it, while
    # the host_directory (shell text) says it is being made, then takes 2 s.
    fake = tmp_path / "bin"
    real = shutil.which("sbatch")
    assert real is not None
    script(fake, "sbatch", f"touch {tmp_path}/asked; sleep 2; exec {real} \"$@\"\n")
    write_profile(home / ".config" / "runaway", "here",
                  host_directory=f"$(touch {tmp_path}/rooting; sleep 2; echo {tmp_path}/h)",
                  execution=["$SCRIPT_NAME"], sbatch={"partition": partition(), "time": 1})
    script(work, "run.sh", "echo ran > ran.txt\n")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    process = subprocess.Popen(["git-runaway", "--detach", "here", "run.sh"], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=env)
    wait_until(lambda: (tmp_path / ("asked" if when == "during" else "rooting")).exists(),
               "there")
    os.kill(process.pid, signal.SIGINT)  # runaway alone: its sbatch must not die of it
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    if when == "before":
        assert (stdout, stderr) == ("", "runaway: interrupted\n")
        assert not (tmp_path / "asked").exists() and records(home) == []
        return
    [record] = records(home)
    assert stdout == f"{record['job']}\n"
    assert stderr.endswith(f"git runaway --attach {record['job']}\n")
    done = runaway("--attach", str(record["job"]), cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    assert (work / "ran.txt").read_text() == "ran\n"


def test_attach_refuses_to_bring_results_to_a_folder_that_is_gone(sbatch: Target, home: Path,
                                                                  tmp_path: Path):
    started = tmp_path / "started"
    script(started, "run.sh", "echo r > result.txt\n")
    job = detach(sbatch, started, "run.sh")
    shutil.rmtree(started)
    done = runaway("--attach", job, cwd=tmp_path)
    assert done.returncode == FAILED
    one_line(done.stderr, f"job {job}: the folder it was started from, {started}, is gone: .*")
    assert [r["job"] for r in records(home)] == [job]
    started.mkdir()
    assert runaway("--attach", job, cwd=tmp_path).returncode == 0
    assert (started / "result.txt").read_text() == "r\n"


def test_a_run_whose_submission_was_killed_before_sbatch_answered_ends(
        sbatch: Target, home: Path, cluster: str, work: Path) -> None:
    """A submit program killed mid-way leaves `<run>.slurm` as "- DIGEST": a watcher must
    end it (nothing will ever run it), not poll forever."""
    import asyncio

    from git_runaway import profiles
    from git_runaway.execution import Job
    from git_runaway.execution import Runaway

    run_id = str(uuid.uuid4())
    on_host(home, cluster, f"mkdir -p {sbatch.host_directory} && cd {sbatch.host_directory}"
                           f" && echo '- {'0' * 64}' > {run_id}.slurm && : > {run_id}.job")
    script(work, "run.sh", "echo never\n")
    profile = profiles.load(sbatch.profile, work)

    async def attach() -> object:
        async with Runaway() as session:
            return await asyncio.wait_for(session.attach(
                profile, Job(work, "run.sh", run_id=run_id), lambda b: None,
                lambda b: None), 60)

    outcome = asyncio.run(attach())
    assert outcome.where["state"] == "LOST" and outcome.exit_code is None  # type: ignore[attr-defined]
    assert [p.name for p in sbatch.host_directory.iterdir() if p.name != ".lock"] == []


def test_an_empty_sbatch_key_is_refused(home: Path, work: Path) -> None:
    path = write_profile(home / ".config" / "runaway", "empty", host_directory="d",
                         execution=["x"], sbatch=None)
    script(work, "run.sh", "echo never\n")
    done = runaway("empty", "run.sh", cwd=work)
    assert done.returncode == FAILED
    assert done.stderr.startswith(f"runaway: profile {path}: key 'sbatch' must be a mapping")
    assert done.stdout == ""


def test_before_and_after_execution_run_inside_the_job(cluster: str, home: Path,
                                                        work: Path) -> None:
    target = slurm_profile(home, cluster, "around", sbatch={"partition": partition(),
                                                            "time": 1},
                           before_execution=["export GREETING=hello"],
                           after_execution=["echo \"after $SLURM_JOB_ID\" > after.txt"])
    script(work, "run.sh", 'echo "$GREETING from $SLURM_ARRAY_JOB_ID" > greeting.txt\nexit 4\n')
    done = runaway(target.profile, "run.sh", cwd=work)
    assert done.returncode == 4, done.stderr
    greeting = (work / "greeting.txt").read_text().split()
    assert greeting[:2] == ["hello", "from"] and greeting[2].isdigit()
    assert (work / "after.txt").read_text().split()[0] == "after"  # after a failing script too
