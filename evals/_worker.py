"""The sandbox worker ("zygote"): a long-lived process that runs each program in a fresh forked child.

It runs inside bubblewrap (or alone in the fallback mode) as `python -I -B -c <this file> CONF`, so it uses the
standard library only. Forking a warm interpreter per program is what makes a persistent pool fast: no Python
start-up, no imports, yet every program still gets its own process, uid, limits and temp dir.

Protocol on fds 0 (in) / 1 (out): 4-byte big-endian length + JSON. The child never sees these fds.
The child proves that the program ran to its end by writing the per-job token to fd 3 *after* exec() returned;
the host (not this worker) checks the token. Early exits of any kind therefore never produce the proof.
"""

import builtins
import ctypes
import errno
import io
import json
import os
import resource
import select
import signal
import struct
import sys
import time

CONF = json.loads(sys.argv[1])
UID = CONF.get("uid")  # run programs as this uid (root host); None: keep ours
TMP = CONF["tmp"]  # private, per-worker scratch root; each job gets TMP/jobN
PIDNS = CONF["pidns"]  # we run in our own PID namespace: every other process in it is the program's
MAX_OUTPUT = CONF["max_output"]
LIMITS = CONF["limits"]  # name -> value (RLIMIT_*)
# What HumanEval-style programs import most; preloaded once so children don't pay for it (but each module
# makes every fork a little slower, so only the common ones).
PRELOAD = ("math", "re", "itertools", "collections", "functools", "typing", "string", "heapq", "hashlib")


def _no_dump() -> None:
    """PR_SET_DUMPABLE=0: a same-uid program cannot ptrace us or open /proc/<us>/fd (our host channel)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except OSError:
        pass


def _recv():
    head = _read_exact(0, 4)
    if head is None:
        return None
    body = _read_exact(0, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(obj) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(1, data) :]


def _child(job, out_w, status_w, workdir):
    """Runs in the forked child: drop privileges, apply limits, exec the program, prove completion."""
    write, exit_, AssertionError_, MemoryError_, OSError_ = os.write, os._exit, AssertionError, MemoryError, OSError
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(status_w, 3)
        os.closerange(4, 65536)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        if UID is not None:
            os.setgroups([])
            os.setgid(UID)
            os.setuid(UID)
        os.mkdir(workdir, 0o700)
        os.chdir(workdir)
        for name, value in LIMITS.items():
            resource.setrlimit(getattr(resource, name), (value, value))
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = sys.stderr = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8", errors="backslashreplace"
        )
        token, code = job["token"], job["code"]
        del job
    except BaseException as exc:  # our own set-up failed: not the program's fault, but never a pass
        write(3, json.dumps({"kind": "setup", "exc": type(exc).__name__, "msg": str(exc)[:300]}).encode())
        exit_(70)
    try:
        compiled = compile(code, "<program>", "exec", dont_inherit=True, optimize=0)  # asserts always on
        del code
        exec(compiled, {"__name__": "__main__", "__builtins__": builtins})
    except BaseException as exc:
        try:
            kind = (
                "failed"
                if isinstance(exc, AssertionError_)
                else "memory"
                if isinstance(exc, MemoryError_)
                else "file_size"
                if isinstance(exc, OSError_) and exc.errno == errno.EFBIG
                else "error"
            )
            msg = str(exc)[:300]
        except BaseException:
            kind, msg = "error", ""
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        write(3, json.dumps({"kind": kind, "exc": type(exc).__name__, "msg": msg}).encode())
        exit_(1)
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    write(3, ("\nproof " + token + "\n").encode())
    exit_(0)


def _cleanup(pid_group) -> bool:
    """Kill everything the program left behind and wipe its files; True if nothing of it survives."""
    if PIDNS or UID is None:  # in our own PID namespace (or same uid) we can do it ourselves
        _kill_and_wipe(pid_group)
        return not _leftovers()
    pid = os.fork()  # root host without a namespace: kill(-1) only as the sandbox uid, never as root
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(UID)
            os.setuid(UID)
            _kill_and_wipe(pid_group)
        finally:
            os._exit(0)
    while os.waitpid(-1, 0)[0] != pid:  # we are the subreaper: reap the program's orphans meanwhile
        pass
    _reap()
    return not _leftovers()


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _kill_and_wipe(pid_group) -> None:
    # kill(-1) reports success even when it could signal nobody, so /proc tells us when we are done.
    for _ in range(500):
        try:
            if PIDNS or UID is not None:
                _reap()
                if not _leftovers():
                    break
                os.kill(-1, signal.SIGSTOP)  # all we may signal but ourselves and the namespace's init
                os.kill(-1, signal.SIGKILL)
            else:
                os.killpg(pid_group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.001)
    for name in os.listdir(TMP):
        _rmtree(os.path.join(TMP, name))


def _rmtree(path) -> None:
    import shutil

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _leftovers() -> list:
    """Live processes of the program (zombies are reaped by us or the namespace's init and don't count)."""
    if not PIDNS and UID is None:
        return []
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if PIDNS or int(fields.get("Uid", "0").split()[0]) == UID:
            found.append(int(name))
    return found


def _run_job(job, n, wake_r):
    timeout = float(job.pop("timeout"))
    out_r, out_w = os.pipe()
    st_r, st_w = os.pipe()
    workdir = os.path.join(TMP, f"job{n}")
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(job, out_w, st_w, workdir)
    os.close(out_w)
    os.close(st_w)
    out, out_total, status = bytearray(), 0, bytearray()
    open_fds = {out_r, st_r}
    exit_status, timed_out = None, False
    deadline = start + timeout
    while True:
        if exit_status is None:
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                exit_status = st
                deadline = min(deadline, time.monotonic() + 0.2)  # grace for pipes held by leftovers
        if not open_fds and exit_status is not None:
            break
        now = time.monotonic()
        if now >= deadline:
            if exit_status is None:
                timed_out = True
                for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                    try:
                        target()
                    except OSError:
                        pass
                exit_status = os.waitpid(pid, 0)[1]
            break
        ready, _, _ = select.select(list(open_fds) + [wake_r], [], [], deadline - now)
        for fd in ready:
            if fd == wake_r:
                os.read(wake_r, 4096)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif fd == out_r:
                out_total += len(chunk)
                if len(out) < MAX_OUTPUT:  # keep the head, drain (and count) the rest
                    out += chunk[: MAX_OUTPUT - len(out)]
            elif len(status) < 65536:
                status += chunk
    duration = time.monotonic() - start
    os.close(out_r)
    os.close(st_r)
    clean = _cleanup(pid)
    return {
        "exit": os.waitstatus_to_exitcode(exit_status),
        "timed_out": timed_out,
        "duration": duration,
        "output": out.decode("utf-8", "replace"),
        "output_bytes": out_total,
        "status": status.decode("utf-8", "replace"),
        "clean": clean,
    }


def main() -> None:
    _no_dump()
    try:  # orphans of a program re-parent to us, so we can reap them (and they can't hide as zombies)
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    _send({"ready": True, "pid": os.getpid()})
    n = 0
    while True:
        job = _recv()
        if job is None:
            return
        n += 1
        job_id = job.pop("id")
        reply = _run_job(job, n, wake_r)
        reply["id"] = job_id
        _send(reply)
        if not reply["clean"]:
            return  # the host restarts us: a fresh namespace is the only sure clean-up


main()
