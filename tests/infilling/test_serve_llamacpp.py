"""The server under real editor plugins' ways: llama.vim's and llama.vscode's request bodies, cancellation by
closing the connection, failure isolation, prompt fitting and caching, llama.cpp's stop controls."""

import json
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from _infill_helpers import EXAMPLES, taught_model_dir

from codellama.checkpoint import load_model, load_tokenizer
from codellama.generation import GenerationRequest, HFGenerator, SamplingParams
from codellama.generation.engine import Engine
from infilling.inference import FitLimits, fit_infill, split_fim_markers, with_extra_context
from infilling.server import ServerConfig, build_app, create_app, serve_in_thread

PREFIX, MIDDLE, SUFFIX = EXAMPLES[0]
TIMEOUT = httpx.Timeout(120.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def taught(tiny_model_dir, tmp_path_factory):
    model_dir = taught_model_dir(tiny_model_dir, tmp_path_factory.mktemp("infill"))
    app = build_app(model_dir, ServerConfig(model_name="tiny-infill", max_tokens=200, prefill_chunk=64))
    with serve_in_thread(app) as url:
        yield url, app.state.engine


@pytest.fixture(scope="module")
def random_server(tiny_model_dir):
    """The untaught model never says <EOT>: its generations run to n_predict."""
    app = build_app(tiny_model_dir, ServerConfig(model_name="tiny-random", max_tokens=400, prefill_chunk=64))
    with serve_in_thread(app) as url:
        yield url, app.state.engine


def post(url, path, body, **kw):
    return httpx.post(f"{url}{path}", json=body, timeout=kw.pop("timeout", TIMEOUT), **kw)


def llama_vim_body(prefix: str, middle: str, suffix: str, chunks=(), **extra) -> dict:
    """llama.vim's /infill request (autoload/llama.vim), field for field."""
    body = {
        "input_prefix": prefix,
        "input_suffix": suffix,
        "input_extra": [{"text": t, "time": [1, 2], "filename": f} for f, t in chunks],
        "prompt": middle,
        "n_predict": 128,
        "n_indent": len(middle) - len(middle.lstrip()),
        "top_k": 40,
        "top_p": 0.99,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "response_fields": [
            "content",
            "timings/prompt_n",
            "timings/predicted_n",
            "timings/predicted_ms",
            "truncated",
            "tokens_cached",
        ],
    }
    return body | extra


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


# -- cancellation and failure isolation ----------------------------------------------------------------


def test_a_closed_non_streaming_request_is_cancelled_within_a_step(random_server):
    url, engine = random_server
    seen = len(engine.recent)
    body = {"input_prefix": "class Tree:\n", "input_suffix": "", "n_predict": 400, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the editor moved on: it closes the connection
        post(url, "/infill", body, timeout=httpx.Timeout(60.0, read=0.3))
    wait_for(lambda: len(engine.recent) > seen)
    job = engine.recent[-1]
    assert job.completion.finish_reason == "cancelled"
    assert job.done_step - job.cancel_step <= 1  # its row left at the next decode step
    assert len(job.completion.token_ids) < 400
    # the batch is free again: the next request is answered at once
    r = post(url, "/infill", dict(body, n_predict=4))
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 4


def test_a_bad_request_batched_with_seven_good_ones_fails_alone(taught):
    url, engine = taught
    good = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 40, "temperature": 0}
    bodies = [dict(good, seed=i) for i in range(7)] + [dict(good, seed=2**64)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post(url, "/infill", b), bodies))
    assert [r.status_code for r in answers] == [200] * 7 + [400]
    assert all(r.json()["content"] == MIDDLE for r in answers[:7])
    assert "seed" in answers[7].json()["error"]["message"] and answers[7].json()["error"]["param"] == "seed"
    # Past the edge too: a row that fails inside the engine (here its prompt cannot be tokenized) fails
    # alone while its seven batch-mates decode.
    params = SamplingParams(max_new_tokens=40)
    requests = [GenerationRequest(PREFIX, suffix=SUFFIX, params=params)] * 7 + [GenerationRequest("x\ud800")]
    jobs = [engine.submit(r) for r in requests]
    wait_for(lambda: all(j.completion for j in jobs))
    assert [j.completion.finish_reason for j in jobs] == ["stop"] * 7 + ["error"]
    assert all(j.completion.text == MIDDLE for j in jobs[:7])


def test_bad_input_gets_a_json_4xx_naming_the_field(taught):
    url, _ = taught
    infill = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8}
    cases = [
        ("/infill", dict(infill, input_prefix="x\ud800"), "input_prefix"),
        ("/infill", dict(infill, prompt="\udc00"), "prompt"),
        ("/infill", dict(infill, stop=["ok", "\ud800"]), "stop.1"),
        ("/infill", dict(infill, input_extra=[{"filename": "a\ud800.py", "text": "x"}]), "input_extra.0.filename"),
        ("/v1/completions", {"prompt": "x", "stop": ["\ud800"]}, "stop.0"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "seed": 2**64}, "seed"),
        ("/infill", dict(infill, n_predict=-2), "n_predict"),
        ("/completion", {"prompt": "x", "n_predict": -5}, "n_predict"),
        ("/infill", dict(infill, temperature=-0.5), "temperature"),
        ("/infill", dict(infill, min_p=1.5), "min_p"),
        ("/infill", dict(infill, t_max_predict_ms=-1), "t_max_predict_ms"),
        ("/infill", dict(infill, n_indent=-4), "n_indent"),
        ("/infill", dict(infill, n_cmpl=0), "n_cmpl"),
        ("/infill", dict(infill, n_cmpl=50), "n_cmpl"),
        ("/completion", {"prompt": [1, 10**7]}, "prompt"),
        ("/completion", {"prompt": []}, "prompt"),
    ]
    for path, body, field in cases:
        r = httpx.post(f"{url}{path}", content=json.dumps(body), timeout=TIMEOUT)  # "\ud800" escapes, as editors send
        assert r.status_code == 400 and r.headers["content-type"] == "application/json", (field, r.text)
        assert field in r.json()["error"]["message"], (field, r.json())
    nan = httpx.post(
        f"{url}/infill", content=b'{"input_prefix": "x", "temperature": NaN}', timeout=TIMEOUT
    )  # Python's json reads NaN; it is no temperature
    assert nan.status_code == 400 and "temperature" in nan.json()["error"]["message"]
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).json()["status"] == "ok"


def test_a_chunked_body_over_the_limit_gets_413(taught):
    url, _ = taught

    def chunks():  # no Content-Length: the limit must count what arrives
        yield b'{"input_prefix": "'
        for _ in range(5 << 10):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(f"{url}/infill", content=chunks(), timeout=TIMEOUT)
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]
    assert post(url, "/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 40}).status_code == 200


def test_tokenizing_a_large_body_does_not_stall_the_server(taught, monkeypatch):
    url, engine = taught
    threads = set()
    for name in ("encode", "encode_infilling", "infilling_prompt"):
        real = getattr(engine.tokenizer, name)
        monkeypatch.setattr(
            engine.tokenizer, name, lambda *a, _f=real, **k: threads.add(threading.current_thread().name) or _f(*a, **k)
        )
    big = {"prompt": "def f(x):\n    return x * 2\n" * 60_000}  # 1.7 MB
    result = {}
    start = time.perf_counter()
    sender = threading.Thread(target=lambda: result.setdefault("r", post(url, "/v1/completions", big)))
    sender.start()
    pings = []
    while sender.is_alive():
        t = time.perf_counter()
        httpx.get(f"{url}/health", timeout=TIMEOUT)
        pings.append(time.perf_counter() - t)
    sender.join()
    total = time.perf_counter() - start
    assert result["r"].status_code == 400 and "at most" in result["r"].json()["error"]["message"]
    for body in (dict(big, suffix="x"), llama_vim_body(big["prompt"][:100_000], "x = ", "\n", n_predict=4)):
        post(url, "/v1/completions" if "suffix" in body else "/infill", body)
    assert threads and "uvicorn" not in threads  # the event loop's thread never tokenized
    assert len(pings) >= 2 and max(pings) < total / 2  # and /health kept answering meanwhile


# -- llama.cpp's infill semantics -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib_code(stdlib_texts):
    return [line for text in stdlib_texts for line in text.splitlines(keepends=True) if line.strip()]


def test_a_10k_token_llama_vim_request_is_trimmed_and_answered(random_server, stdlib_code, tiny_tokenizer):
    url, _ = random_server
    prefix, suffix = "".join(stdlib_code[:256]), "".join(stdlib_code[256:320])
    chunks = [(f"lib{i}.py", "".join(stdlib_code[400 + 64 * i : 464 + 64 * i])) for i in range(16)]
    middle = "    result = "
    n_tokens = len(tiny_tokenizer.encode(prefix + suffix + middle + "".join(t for _, t in chunks)))
    assert n_tokens > 10_000
    r = post(url, "/infill", llama_vim_body(prefix, middle, suffix, chunks, n_predict=16, t_max_predict_ms=0))
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["truncated"] is True and res["timings/predicted_n"] == 16
    assert 100 < res["timings/prompt_n"] + res["tokens_cached"] <= 384  # the context less the room kept to generate
    # What was kept is what llama.cpp keeps: the end of the prefix and the start of the suffix, whole lines.
    fitted = fit_infill(tiny_tokenizer, prefix, suffix, FitLimits(room=384, window=2048), middle=middle, extra=chunks)
    before = fitted.prefix[: -len(middle)]
    assert len(fitted.prompt_ids) <= 384 and fitted.truncated and fitted.chunks_kept == 0
    assert fitted.prefix.endswith(middle) and prefix.endswith(before) and prefix[-len(before) - 1] == "\n"
    assert suffix.startswith(fitted.suffix) and fitted.suffix.endswith("\n") and 0 < len(fitted.suffix) < len(suffix)
    big = FitLimits(room=8000, window=512)  # room to spare: the newest chunks fill it, oldest dropped first
    roomy = fit_infill(tiny_tokenizer, prefix, suffix, big, middle=middle, extra=chunks)
    assert 0 < roomy.chunks_kept < 16 and f"--- lib15.py ---\n{chunks[15][1]}" in roomy.prefix
    assert f"--- lib{16 - roomy.chunks_kept}.py ---" in roomy.prefix
    assert f"--- lib{15 - roomy.chunks_kept}.py ---" not in roomy.prefix
    assert len(roomy.prompt_ids) <= 8000


def test_a_warm_up_and_its_keystrokes_keep_the_same_chunks(tiny_tokenizer, stdlib_code):
    """The chunks' share of the room does not depend on the file, so the prompt cache can serve them."""
    chunks = [(f"c{i}.py", "".join(stdlib_code[3000 + 6 * i : 3006 + 6 * i])) for i in range(8)]
    limits = FitLimits(room=384, window=2048)
    warm = fit_infill(tiny_tokenizer, "", "", limits, extra=chunks)
    file = "".join(stdlib_code[:300])
    keystrokes = [fit_infill(tiny_tokenizer, file, file, limits, middle=m, extra=chunks) for m in ("    x", "    x =")]
    assert 0 < warm.chunks_kept == keystrokes[0].chunks_kept == keystrokes[1].chunks_kept < 8
    head = len(tiny_tokenizer.encode(with_extra_context("", chunks[-warm.chunks_kept :])))
    for k in keystrokes:
        assert k.prompt_ids[: head - 1] == warm.prompt_ids[: head - 1] and len(k.prompt_ids) <= 384
    # and consecutive keystrokes share everything up to the cursor
    assert keystrokes[0].prefix == keystrokes[1].prefix[: len(keystrokes[0].prefix)]


def test_typed_text_goes_after_mid_so_keystrokes_share_prefix_and_suffix(tiny_tokenizer, stdlib_code):
    """llama.cpp's layout: <PRE> prefix <SUF> suffix <MID> typed-text. A keystroke changes only the tail, so the
    prompt cache serves the whole file around the cursor (with the typed text before <SUF> it would not)."""
    limits = FitLimits(room=4000, window=2048)  # room for all of it: nothing is cut
    prefix, suffix = "".join(stdlib_code[:20]), "".join(stdlib_code[20:30])
    a, b = (fit_infill(tiny_tokenizer, prefix, suffix, limits, middle=m) for m in ("    x", "    x = fo"))
    head = tiny_tokenizer.infilling_prompt(prefix, suffix)
    assert a.prompt_ids[: len(head)] == b.prompt_ids[: len(head)] == head  # everything up to <MID>, shared
    assert b.prompt_ids[len(head) :] == tiny_tokenizer.encode_infilling("    x = fo")
    assert head[-1] == tiny_tokenizer.middle_id and tiny_tokenizer.suffix_id in head
    # When the file is cut to fit, typing shortens the suffix's share, not the prefix's: the prefix keeps the
    # same lines from keystroke to keystroke, so the cached prompt runs at least up to <SUF>.
    tight = FitLimits(room=384, window=2048)
    long_prefix, long_suffix = "".join(stdlib_code[:300]), "".join(stdlib_code[300:600])
    keys = [
        fit_infill(tiny_tokenizer, long_prefix, long_suffix, tight, middle="    x" + " = foo(1)"[:k]) for k in range(9)
    ]
    assert all(k.truncated and len(k.prompt_ids) <= 384 for k in keys)
    assert len({k.prefix[: -len(k.prefix.splitlines()[-1])] for k in keys}) == 1  # the same kept prefix lines
    for a, b in zip(keys, keys[1:]):
        shared = next((i for i, (x, y) in enumerate(zip(a.prompt_ids, b.prompt_ids)) if x != y), len(a.prompt_ids))
        assert shared > a.prompt_ids.index(tiny_tokenizer.suffix_id)
    spm = fit_infill(tiny_tokenizer, prefix, suffix, limits, middle="    x", suffix_first=True)
    assert spm.prompt_ids == tiny_tokenizer.infilling_prompt(prefix + "    x", suffix, suffix_first=True)


def test_warm_up_request_answers_200_and_warms_the_cache(taught, stdlib_code):
    url, engine = taught
    chunks = [("util.py", "".join(stdlib_code[2000:2006])), ("db.py", "".join(stdlib_code[2006:2012]))]
    warm = {
        "input_prefix": "",
        "input_suffix": "",
        "input_extra": [{"text": t, "filename": f} for f, t in chunks],
        "prompt": "",
        "n_predict": 0,
        "temperature": 0.0,
        "stream": False,
        "samplers": [],
        "cache_prompt": True,
        "t_max_prompt_ms": 1,
        "t_max_predict_ms": 1,
        "response_fields": [""],
    }
    r = post(url, "/infill", warm)
    assert r.status_code == 200 and r.json() == {}
    body = llama_vim_body(PREFIX, "", SUFFIX, chunks, n_predict=40, temperature=0, response_fields=None)
    res = post(url, "/infill", body).json()
    assert res["content"] == MIDDLE
    head = with_extra_context("", chunks)
    assert 50 < len(engine.tokenizer.encode(head)) < 300  # they fit in the tiny model's context
    assert res["tokens_cached"] >= len(engine.tokenizer.encode(head)) - 1  # the chunks' KV came from the warm-up
    assert res["timings"]["prompt_n"] == res["tokens_evaluated"] - res["tokens_cached"]


def test_n_cmpl_returns_that_many_results(taught):
    url, _ = taught
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 40, "temperature": 0, "n_cmpl": 3}
    r = post(url, "/infill", body)
    assert r.status_code == 200
    results = r.json()
    assert isinstance(results, list) and [x["index"] for x in results] == [0, 1, 2]
    assert all(x["content"] == MIDDLE for x in results)
    # the copies waited for the first one's prompt instead of computing it again
    assert [x["tokens_cached"] > 0 for x in results].count(True) >= 2
    streamed = {}
    with httpx.stream("POST", f"{url}/infill", json=dict(body, stream=True), timeout=TIMEOUT) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                streamed.setdefault(event["index"], []).append(event)
    assert sorted(streamed) == [0, 1, 2]
    assert all("".join(e["content"] for e in events) == MIDDLE and events[-1]["stop"] for events in streamed.values())


def test_seven_stop_strings_work(taught):
    url, _ = taught
    stop = ["<a>", "<b>", "<c>", "<d>", "<e>", "<f>", " * r"]
    r = post(
        url, "/v1/completions", {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 40, "temperature": 0, "stop": stop}
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "return 3.14" and r.json()["choices"][0]["finish_reason"] == "stop"
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 40, "temperature": 0, "stop": stop}
    res = post(url, "/infill", body).json()
    assert (res["content"], res["stop_type"], res["stopping_word"]) == ("return 3.14", "word", " * r")


def test_native_completion_route(taught):
    url, _ = taught
    res = post(url, "/completion", {"prompt": "def add(a, b):\n", "n_predict": 6, "temperature": 0}).json()
    assert 0 < res["tokens_predicted"] <= 6 and res["stop_type"] in ("limit", "eos")
    assert (
        res["prompt"] == "def add(a, b):\n"
        and res["tokens_evaluated"] == res["timings"]["prompt_n"] + res["tokens_cached"]
    )
    again = post(url, "/completion", {"prompt": "def add(a, b):\n", "n_predict": 6, "temperature": 0}).json()
    assert again["content"] == res["content"] and again["tokens_cached"] > 0  # cache_prompt is on by default
    several = post(url, "/completion", {"prompt": ["x = 1\n", "y = 2\n"], "n_predict": 3, "return_tokens": True})
    assert [x["prompt"] for x in several.json()] == ["x = 1\n", "y = 2\n"]
    assert all(len(x["tokens"]) == x["tokens_predicted"] for x in several.json())
    ids = post(url, "/completion", {"prompt": [1, 400, 401], "n_predict": 2}).json()
    assert ids["tokens_evaluated"] == 3 and ids["tokens_predicted"] <= 2
    # a template-based client's infilling prompt, read as one when it asks for it
    templated = f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>"
    assert split_fim_markers(templated) == (PREFIX, SUFFIX)
    body = {"prompt": templated, "n_predict": 40, "temperature": 0, "fim_markers": True}
    assert post(url, "/completion", body).json()["content"] == MIDDLE
    r = post(url, "/v1/completions", {"prompt": templated, "max_tokens": 40, "temperature": 0, "fim_markers": True})
    assert r.json()["choices"][0]["text"] == MIDDLE


@pytest.fixture()
def scripted_server(tiny_model_dir, monkeypatch):
    """A server whose model writes a script after a given /infill request's prompt, 20 ms a step on its clock."""
    from _generation_helpers import ScriptedModel

    def serve(prefix, middle, suffix, text):
        tok = load_tokenizer(tiny_model_dir)
        prompt = tok.infilling_prompt(prefix + middle, suffix)
        model = ScriptedModel(load_model(tiny_model_dir), tok.encode_infilling(text), len(prompt), tok.eos_id, 20)
        monkeypatch.setattr("codellama.generation.hf.time", types.SimpleNamespace(perf_counter=model.clock))
        engine = Engine(HFGenerator(model, tok, batch_size=4))
        return serve_in_thread(create_app(engine, ServerConfig(model_name="scripted", max_tokens=300)))

    return serve


def test_n_indent_and_t_max_predict_ms_stop_as_llama_cpp_does(scripted_server):
    prefix, middle, suffix = "class A:\n    def f(self):\n", "        if x:", "\n\nprint(A())\n"
    text = "\n            y = 1\n            z = 2\n        w = 3\n    def g(self):\n" + "".join(
        f"        v{i} = {i}\n" for i in range(25)
    )
    with scripted_server(prefix, middle, suffix, text) as url:
        body = llama_vim_body(prefix, middle, suffix, n_predict=300, temperature=0, t_max_predict_ms=0)
        free = post(url, "/infill", dict(body, n_indent=0)).json()
        assert free["content"] == text and free["tokens_cached"] == 0
        # the cursor's line is indented 8: the first line indented less ("    def g") ends the suggestion
        r = post(url, "/infill", body).json()
        assert r["content"] == text[: text.index("def g")]
        timed = post(url, "/infill", dict(body, n_indent=0, t_max_predict_ms=250, response_fields=None)).json()
        assert timed["stop_type"] == "limit" and timed["content"].endswith("\n")
        assert 250 / 20 <= timed["tokens_predicted"] < free["timings/predicted_n"] // 3
        assert timed["content"].count("\n") < text.count("\n") // 3
