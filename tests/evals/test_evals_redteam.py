"""Red team: hostile HumanEval completions. None may pass; the host must be unharmed.

Each completion keeps the correct solution where that matters, so a verdict other than "passed" comes from the
sandbox stopping the attack (or from the missing proof of completion), not from a wrong answer.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest

from evals import sandbox
from evals.execution import build_program, check_samples
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


# ---- forged passes: wrong solutions plus a trick that made them pass (issue 19, item 4) ----

_HUNT = """
import os, sys
def _hunt(frame):  # the old worker's proof token: a 32-hex-digit str in some frame of the harness
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, str) and len(value) == 32 and set(value) <= set("0123456789abcdef"):
                os.write(3, b"\\nproof " + value.encode() + b"\\n")
                os._exit(0)
        frame = frame.f_back
"""

_JUMP = """
def _jumper(last):
    def local(frame, event, arg):
        if event == "line" and frame.f_lineno < last:
            frame.f_lineno = last  # straight to check()'s last assert, which a constant answer satisfies
        return local
    return local
def _last_line(code):
    return max(line for _, _, line in code.co_lines() if line)
"""

_LIAR = """
    class Liar({base}):
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        __hash__ = {base}.__hash__
"""

FORGERIES = {  # name -> (task, completion, the same wrong answer without the trick)
    "settrace_jumps_over_asserts": (
        "HumanEval/0",
        "    return False\n" + _JUMP + "import sys, threading\n"
        "def _trace(frame, event, arg):\n"
        "    return _jumper(_last_line(frame.f_code)) if frame.f_code.co_name == 'check' else None\n"
        "threading.settrace(_trace)\nsys.settrace(_trace)\n",
        "    return False\n",
    ),
    "setprofile_arms_a_frame_trace": (
        "HumanEval/0",
        "    return False\n" + _JUMP + "import sys\n"
        "def _profile(frame, event, arg):\n"
        "    if event == 'call' and frame.f_code.co_name == 'check':\n"
        "        frame.f_trace = _jumper(_last_line(frame.f_code))\n"
        "        sys.settrace(lambda *a: None)\n"
        "sys.setprofile(_profile)\n",
        "    return False\n",
    ),
    "frames_steal_the_token": (
        "HumanEval/0",
        "    return False\n" + _HUNT + "_hunt(sys._getframe())\n",
        "    return False\n",
    ),
    "traceback_steals_the_token": (
        "HumanEval/0",
        "    return False\n" + _HUNT + "try:\n    raise RuntimeError\nexcept RuntimeError as e:\n"
        "    _hunt(e.__traceback__.tb_frame)\n",
        "    return False\n",
    ),
    "inspect_steals_the_token": (
        "HumanEval/0",
        "    return False\n" + _HUNT + "import inspect\nfor info in inspect.stack():\n    _hunt(info.frame)\n",
        "    return False\n",
    ),
    "eq_always_true": ("HumanEval/0", _LIAR.format(base="object") + "    return Liar()\n", "    return None\n"),
    "int_subclass_lies": ("HumanEval/0", _LIAR.format(base="int") + "    return Liar(7)\n", "    return 7\n"),
    "str_subclass_lies": (
        "HumanEval/15",
        _LIAR.format(base="str") + "    return Liar('nope')\n",
        "    return 'nope'\n",
    ),
    "list_subclass_lies": ("HumanEval/1", _LIAR.format(base="list") + "    return Liar()\n", "    return []\n"),
    "float_lies_to_the_tolerance_test": (
        "HumanEval/2",
        _LIAR.format(base="float") + "        def __sub__(self, other):\n            return 0.0\n"
        "    return Liar(9.0)\n",
        "    return 9.0\n",
    ),
    "numpy_object_array_of_liars": (
        "HumanEval/0",
        _LIAR.format(base="object") + "    import numpy\n    return numpy.array([Liar()], dtype=object)\n",
        "    return None\n",
    ),
    "module_global_shadows_abs": ("HumanEval/2", "    return 0.5\nabs = lambda value: 0.0\n", "    return 0.5\n"),
    "builtins_abs_patched": (
        "HumanEval/2",
        "    return 0.5\nimport builtins\nbuiltins.abs = lambda value: 0.0\n",
        "    return 0.5\n",
    ),
    "abs_injected_while_check_runs": (
        "HumanEval/2",
        "    import sys\n    frame = sys._getframe(1)\n"
        "    while frame is not None and frame.f_code.co_name != 'check':\n        frame = frame.f_back\n"
        "    frame.f_globals['abs'] = lambda value: 0.0\n    return 0.5\n",
        "    return 0.5\n",
    ),
    "sys_modules_math_replaced": (
        "HumanEval/32",
        "    return 0.0\nimport math, sys, types\nfake = types.ModuleType('math')\nfake.__dict__.update(math.__dict__)\n"
        "fake.fabs = lambda value: 0.0\nsys.modules['math'] = fake\n",
        "    return 0.0\n",
    ),
    "math_fabs_patched": (
        "HumanEval/32",
        "    return 0.0\nimport math\nmath.fabs = lambda value: 0.0\n",
        "    return 0.0\n",
    ),
}

# Attacks on the new proof itself (there is no token any more): connect home like the harness does, or from a
# fresh interpreter that would carry no audit hook in the same pid.
_ADDRESS = """
import os, sys, socket
def _address():
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, dict):
                value = value.get("proof")
            if isinstance(value, str) and value.startswith("\\0codellama-sandbox-"):
                return value
        frame = frame.f_back
"""
_DICTS = """
import sys
def _dicts_with(key):  # every dict reachable from the frames' variables (through tuples/lists) that has `key`
    found, seen, frame = [], set(), sys._getframe()
    def visit(value, depth):
        if depth > 6 or id(value) in seen:
            return
        seen.add(id(value))
        if type(value) is dict:
            if key in value:
                found.append(value)
        elif type(value) in (tuple, list):
            for item in value:
                visit(item, depth + 1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            visit(value, 0)
        frame = frame.f_back
    return found
"""
PROOF_ATTACKS = {
    "tests_import_hook_replaced": (  # the builtins prepared for the tests: make their `import math` a fake
        "HumanEval/32",
        "    return 0.0\n" + _DICTS + "import builtins, math, types\n"
        "fake = types.ModuleType('math')\nfake.__dict__.update(math.__dict__)\nfake.fabs = lambda value: 0.0\n"
        "real = builtins.__import__\n"
        "def _import(name, *args, **kwargs):\n    return fake if name == 'math' else real(name, *args, **kwargs)\n"
        "for d in _dicts_with('__import__'):\n    d['__import__'] = _import\n",
    ),
    "gc_rewires_the_audit_hook": (  # make our own frame the one the hook lets connect
        "HumanEval/0",
        "    return False\n" + _ADDRESS + "import gc\nfor o in gc.get_objects():\n"
        "    if type(o).__name__ == 'function' and o.__name__ == 'hook':\n"
        "        for cell in o.__closure__ or ():\n"
        "            if type(cell.cell_contents).__name__ == 'frame':\n"
        "                cell.cell_contents = sys._getframe()\n"
        "s = socket.socket(socket.AF_UNIX)\ns.connect(_address())\ns.sendall(b'passed')\nos._exit(0)\n",
    ),
    "connect_home_like_the_harness": (
        "HumanEval/0",
        "    return False\n" + _ADDRESS + "s = socket.socket(socket.AF_UNIX)\ns.connect(_address())\n"
        "s.sendall(b'passed')\nos._exit(0)\n",
    ),
    "exec_a_hookless_interpreter_in_the_same_pid": (
        "HumanEval/0",
        "    return False\n" + _ADDRESS + "os.execv(sys.executable, [sys.executable, '-c', "
        "'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(chr(0) + sys.argv[1]); "
        's.sendall(b"passed")\', _address()[1:]])\n',
    ),
}

# The old worker's protocol, unguarded: the token in the harness's frame, the proof written after exec().
_UNGUARDED = """
import os, secrets, sys
def _child(job):
    token, code = job["token"], job["code"]
    del job
    try:
        exec(compile(code, "<program>", "exec", dont_inherit=True), {"__name__": "__main__"})
    except BaseException:
        os._exit(1)
    os.write(3, ("\\nproof " + token + "\\n").encode())
    os._exit(0)
def _run_job(job):
    os.write(int(sys.argv[2]), job["token"].encode())
    _child(job)
os.dup2(int(sys.argv[1]), 3)
_run_job({"code": sys.stdin.read(), "token": secrets.token_hex(16)})
"""


def _passes_unguarded(program: str) -> bool:
    """Would `program` pass a harness that keeps the proof token in its own frame (the old worker)?"""
    proof_r, proof_w = os.pipe()
    token_r, token_w = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _UNGUARDED, str(proof_w), str(token_w)],
            input=program.encode(),
            capture_output=True,
            timeout=60,
            pass_fds=(proof_w, token_w),
        )
        os.close(proof_w)
        os.close(token_w)
        proof, token = os.read(proof_r, 4096), os.read(token_r, 4096)
    finally:
        for fd in (proof_r, token_r):
            os.close(fd)
    return proc.returncode == 0 and b"\nproof " + token + b"\n" in proof


def test_each_forgery_really_forges_a_pass_without_the_guards():
    """The tricks work: under the old protocol (token in a frame, check() in the program) all of them pass."""
    problems = load_problems()
    forged = {name: _passes_unguarded(build_program(problems[t], c)) for name, (t, c, _) in FORGERIES.items()}
    plain = {name: _passes_unguarded(build_program(problems[t], p)) for name, (t, _, p) in FORGERIES.items()}
    assert forged == dict.fromkeys(FORGERIES, True)
    assert plain == dict.fromkeys(FORGERIES, False)  # each hides a wrong answer


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_forged_passes_fail_in_the_sandbox(isolation):
    if isolation == "bwrap" and sandbox.bwrap_available() is not None:
        pytest.skip(f"bubblewrap unusable here: {sandbox.bwrap_available()}")
    problems = load_problems()
    attacks = {**{name: (t, c) for name, (t, c, _) in FORGERIES.items()}, **PROOF_ATTACKS}
    samples = [{"task_id": t, "completion": c, "attack": name} for name, (t, c) in attacks.items()]
    with SandboxPool(SandboxConfig(timeout=5.0, workers=4, isolation=isolation)) as pool:
        records = check_samples(problems, samples, pool, progress=None)
        canonical = check_samples(
            problems,
            [{"task_id": t, "completion": problems[t].canonical_solution} for t in {s["task_id"] for s in samples}],
            pool,
            progress=None,
        )
    verdicts = {r["attack"]: (r["kind"], r["result"]) for r in records}
    assert [r["attack"] for r in records if r["passed"]] == [], verdicts
    assert all(r["passed"] for r in canonical)  # the same tasks' right answers still pass
    kinds = {name: kind for name, (kind, _) in verdicts.items()}
    refused = "error:PermissionError"
    assert kinds["settrace_jumps_over_asserts"] == kinds["setprofile_arms_a_frame_trace"] == refused
    assert kinds["gc_rewires_the_audit_hook"] == refused
    assert kinds["connect_home_like_the_harness"] == kinds["exec_a_hookless_interpreter_in_the_same_pid"] == refused
    # No token to find: the hunt comes back empty, the wrong answer is judged as such.
    assert kinds["frames_steal_the_token"] == kinds["traceback_steals_the_token"] == "failed"
    # (The fallback's sandbox uid may be unable to read an interpreter installed under /root: then the
    # attacks that import a module not loaded yet end with ModuleNotFoundError.)
    unreadable = ("error:ModuleNotFoundError",) if isolation == "none" else ()
    assert kinds["inspect_steals_the_token"] in ("failed", *unreadable)
    for name in FORGERIES:
        if "lie" in name or "liar" in name or "abs" in name or "fabs" in name or "eq_" in name:
            assert kinds[name] in ("failed", *(unreadable if "numpy" in name else ())), (name, verdicts[name])
    assert "sandbox:" in verdicts["eq_always_true"][1]
    assert "sandbox:" in verdicts["numpy_object_array_of_liars"][1] or unreadable
    for name in ("abs_injected_while_check_runs", "math_fabs_patched", "sys_modules_math_replaced"):
        assert "changed" in verdicts[name][1], verdicts[name]
    assert "changed" in verdicts["tests_import_hook_replaced"][1]
