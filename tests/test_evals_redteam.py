"""Red team: hostile HumanEval completions. None may pass; the host must be unharmed.

Each completion keeps the correct solution where that matters, so a verdict other than "passed" comes from the
sandbox stopping the attack (or from the missing proof of completion), not from a wrong answer.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import pytest

from evals import sandbox
from evals.execution import check_samples
from evals.problems import load_problems
from evals.sandbox import SandboxConfig, SandboxPool
from tests._evals_helpers import sandbox_processes

TASK = "HumanEval/0"


def _attacks(home: str, port: int, secret_var: str) -> dict[str, str]:
    body = load_problems()[TASK].canonical_solution
    top = lambda code: body + "\n" + code + "\n"  # noqa: E731  (runs at module level, before check())
    return {
        "fork_bomb": top("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        "memory_bomb": top("hog = []\nwhile True:\n    hog.append(bytearray(1 << 26))"),
        "infinite_loop": top("while True:\n    pass"),
        "sleep_forever": top("import time\ntime.sleep(10**6)"),
        "rm_rf_home": top(
            f"import os, shutil\nshutil.rmtree({home!r})\nshutil.rmtree(os.path.expanduser('~'))\n"
            f"assert not os.path.exists({home!r})"
        ),
        "write_outside_tmp": top(f"open({home!r} + '/pwned', 'w').write('x')\nopen('/usr/pwned', 'w').write('x')"),
        "network": top(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')"),
        "network_outside": top("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)"),
        "env_secret": top(f"import os\nprint(os.environ[{secret_var!r}])"),
        "proc_environ": top(
            "import glob\nfound = [open(p, 'rb').read() for p in glob.glob('/proc/*/environ')]\n"
            f"assert any(b{secret_var!r} in e for e in found), 'no secret'"
        ),
        "home_file": top(f"print(open({home!r} + '/secret.txt').read())"),
        "kill_parent": top("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)"),
        "kill_everything": top("import os, signal\nos.kill(-1, signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)"),
        "sys_exit_0": top("import sys\nsys.exit(0)"),
        "exit_builtin": top("exit()"),
        "os_exit_0": top("import os\nos._exit(0)"),
        "raise_system_exit": top("raise SystemExit(0)"),
        "keyboard_interrupt": top("raise KeyboardInterrupt"),
        "sigterm_self": top("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)"),
        "exit_inside_check": "    import sys\n    sys.exit(0)\n",
        "exit_from_thread": top(
            "import os, threading\nt = threading.Thread(target=os._exit, args=(0,))\nt.start(); t.join()"
        ),
        "atexit_fake_pass": top("import atexit, sys\natexit.register(print, 'passed')\nsys.exit(0)"),
        "patch_assert": "    return True\nimport builtins\nclass Quiet(Exception): pass\n"
        "builtins.AssertionError = Quiet\n",
        "forge_proof": top("import os\nos.write(3, b'\\nproof ' + b'0' * 32 + b'\\n')\nos._exit(0)"),
        "print_1gb": "    import sys\n    for _ in range(1024):\n        sys.stdout.write('x' * (1 << 20))\n"
        + body.lstrip("\n"),
    }


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "secret.txt").write_text("host secret")
    (home / ".ssh" / "id_rsa").write_text("private key")
    monkeypatch.setenv("HOME", str(home))
    return home


def _listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    threading.Thread(target=loop, daemon=True).start()
    return server, accepted, stop


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_hostile_completions_never_pass_and_host_is_unharmed(isolation, fake_home, monkeypatch):
    if isolation == "bwrap" and sandbox.bwrap_available() is not None:
        pytest.skip(f"bubblewrap unusable here: {sandbox.bwrap_available()}")
    if isolation == "none" and os.geteuid() != 0:
        pytest.skip("the fallback contains fork bombs only as root (dedicated uid); as a user it only warns")
    secret_var, secret = "CODELLAMA_REDTEAM_SECRET", secrets.token_hex(8)
    monkeypatch.setenv(secret_var, secret)
    server, accepted, stop = _listener()
    port = server.getsockname()[1]
    attacks = _attacks(str(fake_home), port, secret_var)
    if isolation == "none":  # no read-only filesystem without bubblewrap: the uid keeps root's files safe,
        attacks.pop("write_outside_tmp")  # but a world-writable dir like our tmp_path would not be
        attacks.pop("rm_rf_home")
    before = {p: p.read_bytes() for p in fake_home.rglob("*") if p.is_file()}
    problems = load_problems()
    config = SandboxConfig(timeout=2.0, memory_mb=1024, workers=8, max_output_bytes=4096, isolation=isolation)
    start = time.monotonic()
    with SandboxPool(config) as pool:
        uids = {w.uid for w in pool._workers}
        records = check_samples(
            problems, [{"task_id": TASK, "completion": c, "attack": n} for n, c in attacks.items()], pool, progress=None
        )
        verdicts = {r["attack"]: r["kind"] for r in records}
        assert not [n for n, r in zip(attacks, records) if r["passed"]], verdicts
        # The harness is still fine: the honest solution passes in the same pool, nothing of the attacks lives on.
        assert check_samples(
            problems, [{"task_id": TASK, "completion": problems[TASK].canonical_solution}] * 8, pool, progress=None
        )[0]["passed"]
        assert sandbox_processes(uids) == []
    elapsed = time.monotonic() - start
    stop.set()
    server.close()
    assert sandbox_processes(uids) == []
    assert {p: p.read_bytes() for p in fake_home.rglob("*") if p.is_file()} == before
    assert not os.path.exists("/usr/pwned")
    assert accepted == [], "a sandboxed program reached a host socket" if isolation == "bwrap" else None
    for r in records:
        assert secret not in r["result"]
    assert verdicts["fork_bomb"] in ("timeout", "error:BlockingIOError")
    assert verdicts["memory_bomb"] in ("killed:memory", "timeout")  # timeout: starved by the fork bomb
    assert verdicts["infinite_loop"] == verdicts["sleep_forever"] == "timeout"
    assert verdicts["sys_exit_0"] == verdicts["exit_builtin"] == verdicts["raise_system_exit"] == "error:SystemExit"
    assert verdicts["os_exit_0"] == verdicts["forge_proof"] == verdicts["exit_from_thread"] == "error:EarlyExit(0)"
    assert verdicts["patch_assert"] == "failed"
    assert verdicts["kill_parent"] == "error:PermissionError"
    assert verdicts["print_1gb"] == "timeout"
    assert elapsed < 30
