#!/usr/bin/env python3
"""Runaway's client memory against the size moved, and ssh compression's bytes on the wire.

Needs the loopback sshd of `.ci/services.sh` (EXPEGIT_TEST_SSH_CONFIG, alias `testhost`).
Each measure is one execution through `Runaway.run` in a child process of its own, whose
peak RSS (`ru_maxrss`) is read at its end, so that no measure inherits another's peak:

- memory, fetch: the script writes SIZE bytes of random data (incompressible: nothing
  smaller goes on the wire) into its folder; they come back as the results.
- memory, upload: a code folder of SIZE bytes of random data in files of 8 MB.
- bytes: a compressible code folder (a copy of git_runaway/ and bench/), uploaded and run
  once on a fresh host_directory, through a TCP proxy in the child that counts the bytes
  each way, with ssh compression (zlib@openssh.com) and without (`none`).

Exits 1 with `BENCHMARK FAILED: ...` when a result is wrong. See bench/README.md.

    python bench/memory_bytes.py [--fetch-mb 16,256,1024] [--upload-mb 16,190]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HOST = os.environ.get("EXPEGIT_TEST_SSH_HOST", "testhost")
MB = 1 << 20
FILE_MB = 8


class BenchmarkFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise BenchmarkFailed(message)


# --- the child: one execution, then its peak RSS and counters as JSON on stdout ---------------

class Counter:
    """A TCP proxy to the sshd that counts the bytes each way."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0  # client -> sshd
        self.received = 0  # sshd -> client

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                          ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       up: bool) -> None:
            while data := await source.read(65536):
                if up:
                    self.sent += len(data)
                else:
                    self.received += len(data)
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False),
                             return_exceptions=True)


def proxied_home(base: Path, config: str, proxy_port: int) -> None:
    """A HOME whose ssh config sends `testhost` through the proxy, whose port known_hosts
    then names (the same key)."""
    lines = Path(config).read_text().splitlines()
    known = Path(config).parent / "known_hosts"
    home = base / f"home-proxy-{proxy_port}"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    text = known.read_text().replace("]:2222 ", f"]:{proxy_port} ")
    (home / ".ssh" / "known_hosts").write_text(text)
    out, inside = [], False
    for line in lines:
        if line.startswith("Host "):
            inside = line.split()[1] == HOST
        elif inside and line.strip().startswith("Port "):
            line = f"  Port {proxy_port}"
        elif inside and line.strip().startswith("UserKnownHostsFile "):
            line = f"  UserKnownHostsFile {home / '.ssh' / 'known_hosts'}"
        out.append(line)
    (home / ".ssh" / "config").write_text("\n".join(out) + "\n")
    os.environ["HOME"] = str(home)


def sshd_port(config: str) -> int:
    inside = False
    for line in Path(config).read_text().splitlines():
        if line.startswith("Host "):
            inside = line.split()[1] == HOST
        elif inside and line.strip().startswith("Port "):
            return int(line.split()[1])
    return 22


async def child_run(folder: Path, host_directory: str, compression: bool, proxy: bool,
                    config: str) -> dict[str, object]:
    import git_runaway.hosts.ssh as ssh_host
    from git_runaway.execution import Job
    from git_runaway.execution import Leave
    from git_runaway.execution import Runaway
    from git_runaway.profiles import Profile

    if not compression:
        ssh_host.COMPRESSION = ("none",)  # type: ignore[assignment]  # read by SshHost.connect at each connection
    counter = Counter(sshd_port(config))
    server = None
    if proxy:
        server = await counter.serve()
        proxied_home(folder.parent, config, server.sockets[0].getsockname()[1])
    profile = Profile(name="bench", ssh_config=HOST, host_directory=host_directory,
                      before_execution=(), execution=("$SCRIPT_NAME $SCRIPT_ARGS",),
                      after_execution=(), source="bench/memory_bytes.py")
    errors = bytearray()
    start = time.perf_counter()
    async with Runaway() as runaway:
        outcome = await runaway.run(profile, Job(folder, "run.sh", "", Leave.NOTHING),
                                    lambda chunk: None, errors.extend)
        # What ssh negotiated, to know the "without" really went uncompressed.
        connection = runaway._hosts[HOST]._connection  # type: ignore[attr-defined]
        negotiated = [connection.get_extra_info(f"{way}_compression") for way in ("send", "recv")]
    seconds = time.perf_counter() - start
    if server is not None:
        server.close()
    return {"exit_code": outcome.exit_code, "uploaded": outcome.uploaded,
            "fetched": list(outcome.fetched), "seconds": seconds,
            "stderr": errors.decode(errors="replace"), "sent": counter.sent,
            "received": counter.received, "compression": negotiated,
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def child(args: argparse.Namespace) -> int:
    result = asyncio.run(child_run(Path(args.folder), args.host_directory, args.compression,
                                   args.proxy, os.environ["EXPEGIT_TEST_SSH_CONFIG"]))
    print(json.dumps(result))
    return 0


# --- the parent --------------------------------------------------------------------------

def run_child(folder: Path, host_directory: str, compression: bool = True,
              proxy: bool = False) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", "--folder", str(folder),
               "--host-directory", host_directory]
    command += ["--compression"] if compression else []
    command += ["--proxy"] if proxy else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    check(done.returncode == 0, f"child {command} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    check(result["exit_code"] == 0, f"child {command}: exit {result['exit_code']}: "
          f"{result['stderr']}")
    return result


def home(base: Path, config: str) -> None:
    h = base / "home"
    (h / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(config, h / ".ssh" / "config")
    os.environ["HOME"] = str(h)
    for name in [n for n in os.environ if n.startswith("RUNAWAY")]:
        del os.environ[name]


def script_folder(folder: Path, script: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.sh").write_text(f"#!/bin/sh\n{script}\n")
    (folder / "run.sh").chmod(0o755)
    return folder


def random_files(folder: Path, megabytes: int) -> None:
    left = megabytes
    for i in range((megabytes + FILE_MB - 1) // FILE_MB):
        size = min(FILE_MB, left)
        (folder / f"data-{i:04d}.bin").write_bytes(os.urandom(size * MB))
        left -= size


def measure_fetch(base: Path, megabytes: int, remote: str, compression: bool
                  ) -> dict[str, object]:
    folder = script_folder(base / f"fetch-{megabytes}",
                           f"head -c {megabytes * MB} /dev/urandom > out.bin")
    result = run_child(folder, f"{remote}/fetch-{megabytes}", compression)
    size = (folder / "out.bin").stat().st_size
    check(size == megabytes * MB, f"fetch {megabytes} MB: out.bin has {size} bytes")
    shutil.rmtree(folder)
    return result


def measure_upload(base: Path, megabytes: int, remote: str, compression: bool
                   ) -> dict[str, object]:
    folder = script_folder(base / f"upload-{megabytes}", "cat data-*.bin | wc -c > out.txt")
    random_files(folder, megabytes)
    result = run_child(folder, f"{remote}/upload-{megabytes}", compression)
    text = (folder / "out.txt").read_text().strip()
    check(text == str(megabytes * MB), f"upload {megabytes} MB: the host read {text} bytes")
    check(int(str(result["uploaded"])) > megabytes * MB, f"upload: {result['uploaded']} sent")
    shutil.rmtree(folder)
    return result


def measure_bytes(base: Path, remote: str, compression: bool) -> tuple[dict[str, object], int]:
    name = "zlib" if compression else "none"
    folder = base / f"bytes-{name}"
    sources = Path(__file__).resolve().parent.parent
    for part in ("git_runaway", "bench"):  # about 200 KB of Python, a man page, markdown
        shutil.copytree(sources / part, folder / part, ignore=shutil.ignore_patterns(
            "__pycache__"))
    (folder / "run.sh").write_text("#!/bin/sh\ncat */*.py | wc -c > out.txt\n")
    (folder / "run.sh").chmod(0o755)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    result = run_child(folder, f"{remote}/bytes-{name}-{uuid.uuid4().hex[:6]}",
                       compression=compression, proxy=True)
    check((folder / "out.txt").is_file(), f"bytes ({name}): out.txt did not come back")
    return result, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch-mb", default="16,256,1024")
    parser.add_argument("--upload-mb", default="16,190")
    parser.add_argument("--memory-compression", choices=("zlib", "none"), default="zlib",
                        help="ssh compression for the memory measures (default zlib)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--host-directory", help=argparse.SUPPRESS)
    parser.add_argument("--compression", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    config = os.environ.get("EXPEGIT_TEST_SSH_CONFIG")
    if not config:
        print("EXPEGIT_TEST_SSH_CONFIG is not set: run `SVC=/tmp/svc bash .ci/services.sh` "
              "and `source /tmp/svc/env.sh`", file=sys.stderr)
        return 2
    memory_zlib = args.memory_compression == "zlib"
    remote = f"bench-memory/{uuid.uuid4().hex[:10]}"
    load = os.getloadavg()[0]
    rows: list[tuple[str, int, dict[str, object]]] = []
    with tempfile.TemporaryDirectory(prefix="runaway-memory-") as tmp:
        base = Path(tmp)
        home(base, config)
        try:
            floor = run_child(script_folder(base / "floor", "echo 0 > out.txt"),
                              f"{remote}/floor", memory_zlib)
            rows.append(("a tiny run (the floor)", 0, floor))
            for mb in (int(m) for m in args.fetch_mb.split(",") if m):
                rows.append(("fetch results", mb, measure_fetch(base, mb, remote, memory_zlib)))
            for mb in (int(m) for m in args.upload_mb.split(",") if m):
                rows.append(("upload code", mb, measure_upload(base, mb, remote, memory_zlib)))
            plain, size = measure_bytes(base, remote, compression=False)
            zlib, _ = measure_bytes(base, remote, compression=True)
            check(zlib["compression"] == ["zlib@openssh.com"] * 2, f"with: {zlib['compression']}")
            check(plain["compression"] == ["none"] * 2, f"without: {plain['compression']}")
        except BenchmarkFailed as e:
            print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
            return 1
        finally:
            subprocess.run(["ssh", "-F", config, HOST, f"rm -rf {remote}"],
                           capture_output=True, timeout=300)
    print(f"\n## Client memory ({time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, "
          f"load average at start {load:.2f}, ssh compression {args.memory_compression})\n")
    print("| execution | MB moved | wall s | MB/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for what, mb, r in rows:
        seconds = float(str(r["seconds"]))
        rate = f"{mb / seconds:.0f}" if mb else ""
        print(f"| {what} | {mb} | {seconds:.2f} | {rate} | {int(str(r['maxrss_kb'])) / 1024:.1f} |")
    print(f"\n## Bytes on the wire, one run of a compressible code folder ({size / 1024:.0f} KB "
          f"of text, tar {int(str(plain['uploaded'])) / 1024:.0f} KB), fresh host_directory\n")
    print("| ssh compression | client -> host KB | host -> client KB | total KB |")
    print("|---|---:|---:|---:|")
    for name, r in (("none (before)", plain), ("zlib@openssh.com (after)", zlib)):
        sent, received = int(str(r["sent"])), int(str(r["received"]))
        print(f"| {name} | {sent / 1024:.1f} | {received / 1024:.1f} | "
              f"{(sent + received) / 1024:.1f} |")

    return 0


if __name__ == "__main__":
    sys.exit(main())
