"""The sandbox's general API: verdicts, limits, output truncation, the proof of completion, the fallback."""

from __future__ import annotations

import pytest

from evals import sandbox
from evals.sandbox import IsolationUnavailable, SandboxConfig, SandboxPool

needs_bwrap = pytest.mark.skipif(
    sandbox.bwrap_available() is not None, reason=f"bubblewrap unusable here: {sandbox.bwrap_available()}"
)

PROGRAMS = {
    "passes": ("import math\nassert math.gcd(12, 18) == 6\nprint('done')", "passed", None),
    "assertion": ("assert 1 + 1 == 3, 'arithmetic'", "failed", "AssertionError"),
    "exception": ("{}['missing']", "error", "KeyError"),
    "syntax": ("def f(:\n", "error", "SyntaxError"),
    "sys_exit_0": ("import sys\nsys.exit(0)\nassert False", "error", "SystemExit"),
    "os_exit_0": ("import os\nos._exit(0)", "error", "EarlyExit(0)"),
    "keyboard_interrupt": ("raise KeyboardInterrupt", "error", "KeyboardInterrupt"),
    "forged_proof": (
        "import os\nos.write(3, b'\\nproof 00112233445566778899aabbccddeeff\\n')\nos._exit(0)",
        "error",
        "EarlyExit(0)",
    ),
    "self_sigkill": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed", None),
    "sleep": ("import time\ntime.sleep(60)", "timeout", None),
    "memory": ("x = bytearray(4 << 30)", "killed", "MemoryError"),
    "file_size": ("open('big', 'wb').write(b'x' * (8 << 20))", "killed", "OSError"),
}


def _check_verdicts(pool: SandboxPool) -> None:
    names = list(PROGRAMS)
    results = pool.run([PROGRAMS[n][0] for n in names])
    for name, result in zip(names, results):
        _, status, exception = PROGRAMS[name]
        assert (result.status, result.exception) == (status, exception), (name, result)
    by_name = dict(zip(names, results))
    assert by_name["passes"].output == "done\n"
    assert by_name["memory"].limit == "memory" and by_name["file_size"].limit == "file_size"
    assert by_name["self_sigkill"].limit == "signal:SIGKILL"
    assert 0.9 <= by_name["sleep"].duration < 3


CONFIG = dict(timeout=1.0, memory_mb=512, file_size_mb=1, workers=4)


@needs_bwrap
def test_verdicts_under_bubblewrap():
    with SandboxPool(SandboxConfig(**CONFIG)) as pool:
        assert pool.isolation == "bwrap"
        _check_verdicts(pool)
        env = pool.run_one("import os, socket\nprint(sorted(os.environ), os.getuid() != 0, socket.gethostname())")
        assert env.passed and env.output.split("]")[0] == "['LANG', 'PATH', 'PWD', 'TMPDIR'"
        assert env.output.split()[-2:] == ["True", "sandbox"]


def test_forced_fallback_still_judges_and_warns():
    with SandboxPool(SandboxConfig(isolation="none", **CONFIG)) as pool:
        assert pool.isolation == "rlimits-only"
        _check_verdicts(pool)
        result = pool.run_one("pass")
        assert result.passed and "NOT ISOLATED" in result.warning and result.isolation == "rlimits-only"


def test_output_flood_is_truncated_not_buffered():
    config = SandboxConfig(timeout=5, max_output_bytes=1000, workers=1)
    with SandboxPool(config) as pool:
        result = pool.run_one("import sys\nfor _ in range(64): sys.stdout.write('y' * (1 << 20))\nprint('end')")
    assert result.passed and result.output == "y" * 1000
    assert result.output_bytes == 64 * (1 << 20) + 4


def test_files_do_not_leak_between_programs():
    with SandboxPool(SandboxConfig(workers=1, timeout=2)) as pool:
        first = pool.run_one(
            "import os\nopen('/tmp/left', 'w').write('x')\nopen('here', 'w').write('x')\nprint(os.getcwd())"
        )
        second = pool.run_one(
            "import os\nassert not os.path.exists('/tmp/left'), 'leak'\nassert os.listdir('.') == [], 'leak'"
        )
    assert first.passed and second.passed, (first, second)


def test_missing_bubblewrap_falls_back_loudly_or_refuses(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.bwrap_available.cache_clear()
    try:
        with pytest.raises(IsolationUnavailable, match="bwrap not found"):
            SandboxPool(SandboxConfig(require_isolation=True, workers=1))
        with SandboxPool(SandboxConfig(workers=1)) as pool:
            result = pool.run_one("assert True")
        assert result.passed and result.isolation == "rlimits-only" and "bwrap not found" in result.warning
    finally:
        monkeypatch.undo()
        sandbox.bwrap_available.cache_clear()


def test_run_programs_keeps_order_and_restarts_dead_workers():
    programs = ["import os\nos.kill(os.getppid(), 9)", "assert 2 > 1", "import os\nos.killpg(0, 9)", "x = 1"]
    results = sandbox.run_programs(programs * 3, SandboxConfig(workers=2, timeout=2))
    assert [r.passed for r in results] == [False, True, False, True] * 3
