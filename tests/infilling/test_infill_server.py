"""The editor API end to end: a real uvicorn server on an ephemeral port, real clients."""

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from _infill_helpers import EXAMPLES, taught_model_dir

from infilling.server import ServerConfig, build_app, serve_in_thread

PREFIX, MIDDLE, SUFFIX = EXAMPLES[0]
PREFIX2, MIDDLE2, SUFFIX2 = EXAMPLES[1]
TIMEOUT = httpx.Timeout(60.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    model_dir = taught_model_dir(tiny_model_dir, tmp_path_factory.mktemp("infill"))
    config = ServerConfig(model_name="tiny-infill", max_tokens=400, max_prompt_tokens=300, max_queue=64, max_batch=8)
    app = build_app(model_dir, config)
    with serve_in_thread(app) as url:
        yield url, app.state.engine


@pytest.fixture(scope="module")
def random_server(tiny_model_dir):
    """The untaught random model: it never says <EOT>, so its generations run to max_tokens."""
    app = build_app(tiny_model_dir, ServerConfig(model_name="tiny-random", max_tokens=400))
    with serve_in_thread(app) as url:
        yield url, app.state.engine


def health(url):
    r = httpx.get(f"{url}/health", timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    return r.json()


def test_openai_client_infills_and_streams(server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["tiny-infill"]
    out = client.completions.create(model="tiny-infill", prompt=PREFIX, suffix=SUFFIX, max_tokens=40, temperature=0)
    assert out.object == "text_completion" and out.model == "tiny-infill"
    assert out.choices[0].text == MIDDLE and out.choices[0].finish_reason == "stop"
    assert (
        out.usage.completion_tokens > 0
        and out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    )
    chunks = list(
        client.completions.create(
            model="tiny-infill", prompt=PREFIX2, suffix=SUFFIX2, max_tokens=40, temperature=0, stream=True
        )
    )
    texts = [c.choices[0].text for c in chunks]
    assert "".join(texts) == MIDDLE2 and sum(bool(t) for t in texts) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="accepts at most 300"):
        client.completions.create(model="tiny-infill", prompt="x = 1\n" * 200, suffix="", max_tokens=5)


def test_llama_cpp_infill_request(server):
    url, _ = server
    body = {
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "n_predict": 40,
        "temperature": 0,
        "top_k": 40,
        "cache_prompt": True,
        "samplers": ["top_k"],
    }  # llama.vim's extra fields are accepted
    r = httpx.post(f"{url}/infill", json=body, timeout=TIMEOUT)
    assert r.status_code == 200
    res = r.json()
    assert res["content"] == MIDDLE and res["stop"] is True and res["stop_type"] == "eos" and res["stopped_eos"]
    assert res["tokens_predicted"] > 0 and res["tokens_evaluated"] > 0 and res["timings"]["predicted_n"] > 0
    # llama.vim splits the current line off as `prompt`; it is part of what comes before the cursor.
    split = dict(
        body, input_prefix=PREFIX[:-4], prompt=PREFIX[-4:], response_fields=["content", "timings/predicted_n", "nope"]
    )
    r = httpx.post(f"{url}/infill", json=split, timeout=TIMEOUT)
    assert r.json() == {"content": MIDDLE, "timings/predicted_n": res["timings"]["predicted_n"]}
    # A stop string ends the middle early and is reported as llama.cpp does.
    r = httpx.post(f"{url}/infill", json=dict(body, stop=[" * r"]), timeout=TIMEOUT).json()
    assert r["content"] == "return 3.14" and r["stop_type"] == "word" and r["stopping_word"] == " * r"
    # `curl -d` sends JSON as form-encoded; llama.cpp reads it anyway, so do we.
    r = httpx.post(
        f"{url}/infill",
        content=json.dumps(body),
        timeout=TIMEOUT,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.json()["content"] == MIDDLE
    r = httpx.post(f"{url}/infill", json=dict(body, n_predict=3), timeout=TIMEOUT).json()
    assert r["stop_type"] == "limit" and r["tokens_predicted"] == 3


def test_streaming_is_incremental(random_server):
    url, _ = random_server
    body = {"input_prefix": "class Node:\n", "input_suffix": "", "n_predict": 300, "temperature": 0, "stream": True}
    arrivals, events = [], []
    start = time.perf_counter()
    with httpx.stream("POST", f"{url}/infill", json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - start)
                events.append(json.loads(line[6:]))
    assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] == 300
    deltas = [e["content"] for e in events[:-1]]
    assert len(deltas) > 50 and all(e["stop"] is False for e in events[:-1])
    # The first piece arrived long before the last: text flows while it is generated.
    assert arrivals[0] < 0.3 * arrivals[-2]


def test_bad_requests_get_clear_4xx_and_the_server_stays_up(server):
    url, _ = server
    post = lambda path, **kw: httpx.post(f"{url}{path}", timeout=TIMEOUT, **kw)  # noqa: E731
    cases = [
        (
            post("/v1/completions", content=b'{"prompt": "x",', headers={"content-type": "application/json"}),
            400,
            "not valid JSON",
        ),
        (post("/infill", content=b"\xff\xfe", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (post("/infill", content=b"[1, 2]"), 400, "must be a JSON object"),
        (post("/v1/completions", json={"max_tokens": 4}), 400, "missing field 'prompt'"),
        (post("/v1/completions", json={"prompt": "x", "max_tokens": "many"}), 400, "max_tokens"),
        (post("/v1/completions", json={"prompt": "x", "max_tokens": 10_000}), 400, "limit of 400"),
        (post("/v1/completions", json={"prompt": "x", "n": 3}), 400, "only n=1"),
        (post("/v1/completions", json={"prompt": "x", "top_p": 0}), 400, "top_p"),
        (post("/v1/completions", json={"prompt": "x" * 5000}), 400, "accepts at most 300"),
        (post("/infill", json={"input_prefix": "x", "input_extra": [{"filename": "a.py"}]}), 400, "input_extra.0.text"),
        (post("/infill", json={}), 400, "give input_prefix"),
        (
            post("/infill", content=b"x" * (5 << 20), headers={"content-type": "application/json"}),
            413,
            "over the limit",
        ),
        (httpx.get(f"{url}/v2/nothing", timeout=TIMEOUT), 404, "Not Found"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["error"]["message"]
    assert health(url)["status"] == "ok"


def test_fifty_concurrent_clients(server):
    url, engine = server
    batches_before = engine.batches

    def client(i: int):
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            kind = i % 5
            if kind == 0:
                r = http.post(
                    "/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 40, "temperature": 0}
                )
                return r.status_code, r.status_code == 200 and r.json()["choices"][0]["text"] == MIDDLE
            if kind == 1:
                r = http.post(
                    "/infill",
                    json={"input_prefix": PREFIX2, "input_suffix": SUFFIX2, "n_predict": 40, "temperature": 0},
                )
                return r.status_code, r.status_code == 200 and r.json()["content"] == MIDDLE2
            if kind == 2:
                text = ""
                with http.stream(
                    "POST",
                    "/v1/completions",
                    json={"prompt": PREFIX, "suffix": SUFFIX, "stream": True, "max_tokens": 40, "temperature": 0},
                ) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            text += json.loads(line[6:])["choices"][0]["text"]
                return r.status_code, r.status_code == 200 and text == MIDDLE
            if kind == 3:
                r = http.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
                return r.status_code, r.status_code == 400 and "JSON" in r.json()["error"]["message"]
            r = http.post("/v1/completions", json={"prompt": "y = 2\n" * 300, "max_tokens": 8})
            return r.status_code, r.status_code == 400 and "at most 300" in r.json()["error"]["message"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(client, range(50)))
    # Every client got its right answer or a clear 4xx (429 = queue full is allowed under load).
    assert all(ok or status == 429 for status, ok in results), results
    served = sum(1 for status, ok in results if ok and status == 200)
    assert served >= 25
    assert engine.batches - batches_before < served  # waiting requests were batched together
    assert health(url)["status"] == "ok"


def test_disconnected_client_cancels_its_generation(random_server):
    url, engine = random_server
    cancelled_before = engine.finished["cancelled"]
    body = {"prompt": "class Tree:\n", "suffix": "", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass
    # The client hung up after the first piece; the server's row must stop well before 400 tokens.
    deadline = time.monotonic() + 20
    while engine.finished["cancelled"] == cancelled_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.finished["cancelled"] == cancelled_before + 1
    assert health(url)["status"] == "ok"


@pytest.mark.parametrize("continuous", [True, False])
def test_a_request_joins_a_running_batch_and_is_answered_first(random_server, tiny_model_dir, continuous):
    """Continuous batching: a short request that arrives mid-generation does not wait for the long one
    (with --static-batching it does: it gets a batch of its own after the long one)."""
    if continuous:
        url, engine = random_server
        context = contextlib.nullcontext(url)
    else:
        app = build_app(tiny_model_dir, ServerConfig(model_name="tiny-static", max_tokens=400, continuous=False))
        engine, context = app.state.engine, serve_in_thread(app)
    with context as url:
        _long_then_short(url, engine, joins=continuous)


def _long_then_short(url, engine, *, joins):
    long_body = {"prompt": "class Tree:\n", "suffix": "", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=long_body, timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        batches = engine.batches  # the long request's batch is decoding now
        short = httpx.post(
            f"{url}/v1/completions", json={"prompt": "def f(x):\n", "max_tokens": 5, "temperature": 0}, timeout=TIMEOUT
        )
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 5
        # continuous: it joined the running batch; static: it waited for the long one, then ran alone
        assert engine.batches == (batches if joins else batches + 1)
        streamed = sum(1 for line in lines if line.startswith("data: ") and line != "data: [DONE]")
    assert streamed > (5 if joins else 0)  # continuous: the long request was still going
    assert health(url)["status"] == "ok"


def test_openai_generator_reports_each_completion_when_it_ends(server):
    from codellama.generation import GenerationRequest, OpenAIGenerator, SamplingParams, Sink

    class Keep(Sink):
        def __init__(self):
            self.pieces, self.completion = [], None

        def text(self, delta):
            self.pieces.append(delta)

        def done(self, completion):
            self.completion = completion

    url, _ = server
    requests = [
        GenerationRequest(PREFIX, suffix=SUFFIX, params=SamplingParams(max_new_tokens=40)),
        GenerationRequest(PREFIX2, suffix=SUFFIX2, params=SamplingParams(max_new_tokens=40)),
    ]
    sinks = [Keep(), Keep()]
    outs = OpenAIGenerator(f"{url}/v1").generate(requests, sinks)
    assert [o.text for o in outs] == [MIDDLE, MIDDLE2] and [s.completion for s in sinks] == outs
    assert ["".join(s.pieces) for s in sinks] == [MIDDLE, MIDDLE2]
    # stop strings past the API's 4 are applied here, to the streamed text
    stop = ("<1>", "<2>", "<3>", "<4>", "environ")
    request = GenerationRequest(PREFIX2, suffix=SUFFIX2, params=SamplingParams(max_new_tokens=40, stop=stop))
    [out] = OpenAIGenerator(f"{url}/v1").generate([request], [Keep()])
    assert (out.text, out.finish_reason) == (MIDDLE2[: MIDDLE2.index("environ")], "stop")


def test_full_queue_answers_429(tiny_model_dir):
    from codellama.generation import GenerationRequest, HFGenerator
    from codellama.generation.engine import Engine, QueueFull

    engine = Engine(HFGenerator.from_pretrained(tiny_model_dir), max_queue=2)  # never started: jobs stay queued
    for _ in range(2):
        engine.submit(GenerationRequest("x"))
    with pytest.raises(QueueFull, match="busy"):
        engine.submit(GenerationRequest("x"))


def test_python_client_and_cli_against_the_server(server, tmp_path, capsys):
    from codellama.cli import main
    from infilling.client import InfillClient

    url, _ = server
    with InfillClient(url) as client:
        assert client.health()["model"] == "tiny-infill"
        assert client.infill(PREFIX, SUFFIX, max_tokens=40)["content"] == MIDDLE
        assert client.infill(PREFIX, SUFFIX, max_tokens=40, stop=[" * r"], n_cmpl=2)[1]["content"] == "return 3.14"
        pieces = list(client.stream(PREFIX2, SUFFIX2, max_tokens=40))
        assert "".join(pieces) == MIDDLE2 and len(pieces) > 1
        with pytest.raises(ValueError, match="server answered 400: .*limit of 400"):
            client.infill(PREFIX, SUFFIX, max_tokens=1000)
    f = tmp_path / "area.py"
    f.write_text(PREFIX + SUFFIX)
    assert main(["infill", "--server", url, "--file", str(f), "--line", "2", "--col", "5", "--max-tokens", "40"]) == 0
    assert capsys.readouterr().out == MIDDLE + "\n"
    assert main(["infill", "--server", url, "--file", str(f), "--line", "2", "--col", "5", "--show-file"]) == 0
    assert capsys.readouterr().out == PREFIX + MIDDLE + SUFFIX
    assert main(["infill", "--server", "http://127.0.0.1:9", "--file", str(f), "--line", "1", "--col", "1"]) == 2
    assert "cannot reach the infilling server" in capsys.readouterr().err
