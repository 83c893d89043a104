import contextlib

import pytest
import torch

from codellama.checkpoint import load_model
from codellama.generation import GenerationRequest, HFGenerator, SamplingParams, Sink, truncate_at_stop
from codellama.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return HFGenerator(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), batch_size=3)


@contextlib.contextmanager
def forward_shapes(model):
    """(input_ids shape, attention_mask shape) of each forward pass inside the block, as they happen."""
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append((tuple(kw["input_ids"].shape), tuple(kw["attention_mask"].shape))),
        with_kwargs=True,
    )
    try:
        yield shapes
    finally:
        hook.remove()


PROMPTS = ["def add(a, b):\n", "import os\nimport sys\n\nclass Foo:\n    def __init__(self):\n", "x", "# é 中文\n"]


def test_batched_greedy_matches_transformers_generate(generator):
    requests = [GenerationRequest(p, params=SamplingParams(max_new_tokens=12)) for p in PROMPTS]
    batched = generator.generate(requests)
    for request, got in zip(requests, batched):
        ids = torch.tensor([generator.prompt_ids(request)])
        ref = generator.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        expected = [t for t in ref[0, ids.shape[1] :].tolist()]
        eos = expected.index(2) if 2 in expected else len(expected)
        assert got.token_ids == expected[:eos]
        assert got.prompt_tokens == ids.shape[1]


def test_finished_rows_leave_the_batch_and_the_others_are_unchanged(generator):
    """Rows with small budgets finish first; the batch shrinks and the long row decodes as it would alone."""
    budgets = [2, 5, 16]
    requests = [GenerationRequest(PROMPTS[1], params=SamplingParams(max_new_tokens=n)) for n in budgets]
    alone = [generator.generate([r])[0].token_ids for r in requests]
    with forward_shapes(generator.model) as calls:
        together = generator.generate(requests)
    widths = [ids[0] for ids, _ in calls]
    assert [c.token_ids for c in together] == alone
    assert widths[:2] == [3, 3] and widths[-1] == 1 and sorted(widths, reverse=True) == widths  # shrinks: 3, 2, 1


class Recorder(Sink):
    """A sink that keeps what it hears."""

    def __init__(self, cancel_after: int | None = None):
        self.pieces, self.completion, self.cancel_after = [], None, cancel_after

    def text(self, delta):
        self.pieces.append(delta)

    def done(self, completion):
        assert self.completion is None, "done twice"
        self.completion = completion

    def cancelled(self):
        return self.cancel_after is not None and len(self.pieces) >= self.cancel_after


def run(decoder, arrivals: dict[int, list[GenerationRequest]]) -> list[Recorder]:
    """Step `decoder` until idle, adding arrivals[k] before step k; the recorders in arrival order."""
    sinks, step = [], 0
    while decoder.busy or any(k >= step for k in arrivals):
        for request in arrivals.get(step, []):
            sinks.append(Recorder())
            decoder.add(request, sinks[-1])
        decoder.step()
        step += 1
    return sinks


@pytest.mark.parametrize("joiner", [PROMPTS[2], PROMPTS[1] * 3])  # shorter and longer than the running row
def test_admitted_rows_join_a_running_batch_and_decode_as_alone(generator, joiner):
    first = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=20))
    late = [
        GenerationRequest(joiner, params=SamplingParams(max_new_tokens=8)),
        GenerationRequest(PROMPTS[3], params=SamplingParams(max_new_tokens=6, temperature=0.9, seed=3)),
    ]
    alone = [generator.generate([r])[0] for r in (first, *late)]
    with forward_shapes(generator.model) as calls:  # both arrive while the first one decodes
        sinks = run(generator.decoder(), {0: [first], 3: late[:1], 5: late[1:]})
    done = [s.completion for s in sinks]
    widths = [ids[0] for ids, _ in calls]
    assert [d.token_ids for d in done] == [a.token_ids for a in alone]
    assert [d.text for d in done] == [a.text for a in alone] and done[2].finish_reason == alone[2].finish_reason
    assert max(widths) >= 2  # the late rows decoded in the same forward passes as the first one


def test_the_batch_narrows_to_the_rows_still_decoding(generator):
    """When a long-prompt row leaves, the others' cache loses the columns only it needed."""
    long_first = GenerationRequest(PROMPTS[1] * 3, params=SamplingParams(max_new_tokens=3))
    late = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=12))
    alone = generator.generate([late])[0]
    with forward_shapes(generator.model) as calls:
        _, joined = run(generator.decoder(), {0: [long_first], 1: [late]})
    widths = [mask[1] for _, mask in calls]
    assert joined.completion.token_ids == alone.token_ids
    # the last step's mask is exactly the late row's own prompt and tokens, not the long row's history
    assert widths[-1] == len(generator.prompt_ids(late)) + len(alone.token_ids) - 1 < max(widths)


def test_a_long_joining_prompt_is_prefilled_in_chunks_between_decode_steps(tiny_model_dir):
    gen = HFGenerator(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), batch_size=4, prefill_chunk=16)
    first = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=30))
    late = GenerationRequest(PROMPTS[1] * 3, params=SamplingParams(max_new_tokens=6))
    alone = [gen.generate([r])[0].token_ids for r in (first, late)]
    with forward_shapes(gen.model) as calls:
        out, joined = run(gen.decoder(), {0: [first], 2: [late]})
    calls = [ids for ids, _ in calls]
    assert out.completion.token_ids == alone[0] and joined.completion.token_ids == alone[1]
    chunks = [i for i, shape in enumerate(calls) if shape == (1, 16)]
    n_prompt = len(gen.prompt_ids(late))
    assert len(chunks) == n_prompt // 16  # the late prompt went in 16 tokens at a time (plus its remainder)
    # and the running row kept decoding (one token per call) between the chunks
    assert all(calls[i + 1] == (1, 1) for i in chunks)


def test_streaming_deltas_add_up_to_the_text(generator):
    sink = Recorder()
    request = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=16))
    [done] = generator.generate([request], [sink])
    assert "".join(sink.pieces) == done.text and len(sink.pieces) > 1 and sink.completion == done


def test_stop_strings_cut_the_text(generator):
    free = generator.generate([GenerationRequest(PROMPTS[1], params=SamplingParams(max_new_tokens=20))])[0]
    stop = free.text[5:8]
    assert stop
    cut = generator.generate([GenerationRequest(PROMPTS[1], params=SamplingParams(max_new_tokens=20, stop=(stop,)))])[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    assert truncate_at_stop("a\ndef b\nclass", ["\nclass", "\ndef"]) == ("a", True)


def test_sampling_is_seeded_and_cancellation_stops(generator):
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.95, seed=7)
    a = generator.generate([GenerationRequest(PROMPTS[0], params=params)])[0]
    b = generator.generate([GenerationRequest(PROMPTS[0], params=params)])[0]
    assert a.token_ids == b.token_ids
    other = GenerationRequest(PROMPTS[1], params=SamplingParams(max_new_tokens=10, temperature=1.0, seed=99))
    c = generator.generate([other, GenerationRequest(PROMPTS[0], params=params)])[1]
    assert c.token_ids == a.token_ids  # independent of batch-mates
    request = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=50))
    out = generator.generate([request] * 3, [Recorder(), Recorder(cancel_after=0), Recorder(cancel_after=3)])
    assert out[1].finish_reason == "cancelled" and out[1].token_ids == [] and out[0].finish_reason == "length"
    assert out[2].finish_reason == "cancelled" and out[2].text == out[0].text[: len(out[2].text)]
    assert 3 <= len(out[2].token_ids) <= 4  # it left at the step after it asked


@pytest.mark.slow
def test_context_overflow_is_a_clear_error_or_a_shorter_budget(generator):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generator.generate([GenerationRequest("x " * 600, params=SamplingParams(max_new_tokens=10))])
    # A prompt that fits generates until the context is full, then stops with "length".
    request = GenerationRequest("x " * 250, params=SamplingParams(max_new_tokens=400))
    room = generator.max_context - len(generator.prompt_ids(request))
    out = generator.generate([request, GenerationRequest("y", params=SamplingParams(max_new_tokens=3))])[0]
    assert 0 < room < 400 and out.finish_reason == "length" and len(out.token_ids) <= room
    # A benchmark asks for over-long prompts to be skipped: an empty completion, the others unharmed.
    skipping = HFGenerator(generator.model, generator.tokenizer, overflow="skip")
    long, short = skipping.generate(
        [GenerationRequest("x " * 600), GenerationRequest("y", params=SamplingParams(max_new_tokens=3))]
    )
    assert (long.text, long.finish_reason) == ("", "context") and short.finish_reason == "length"


@pytest.mark.slow
def test_infilling_returns_the_middle_and_stops_at_eot(tiny_model_dir):
    """Teach the tiny model one infilling example, then check generation reproduces it and stops at <EOT>."""
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    prefix, middle, suffix = "def area(r):\n    ", "return 3.14 * r * r", "\n\nprint(area(2))\n"
    for spm in (False, True):
        prompt = tok.infilling_prompt(prefix, suffix, suffix_first=spm)
        target = tok.encode_infilling(middle) + [tok.eot_id]
        ids = torch.tensor([prompt + target])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(60):
            opt.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            opt.step()
        gen = HFGenerator(model, tok)
        [out] = gen.generate(
            [GenerationRequest(prefix, suffix=suffix, suffix_first=spm, params=SamplingParams(max_new_tokens=40))]
        )
        assert out.text == middle and out.finish_reason == "stop"
        assert out.token_ids == target[:-1]


# -- stop rules, sampling filters, prompt cache, failure isolation ----------------------------------


def test_indent_and_time_rules_are_llama_cpps():
    from codellama.generation.stopping import check_stop, indent_cut

    text = "foo()\n    bar()\n  baz()\nqux"
    assert indent_cut(text, 4) == text.index("baz")  # cut at the under-indented line's first character
    assert indent_cut(text, 2) == text.index("qux")
    assert indent_cut("  x = 1 if y else 2", 8) is None  # the cursor's own line is never checked
    assert indent_cut("a\n\n    b", 4) == 2  # a blank line counts as indentation 0, as in llama.cpp
    params = SamplingParams(time_limit_ms=100)
    assert check_stop("a\nb", 2, params, 150.0) == ("a\nb", None)  # past the limit, but no new newline
    assert check_stop("a\nb\n", 3, params, 150.0) == ("a\nb\n", "time")
    assert check_stop("a\nb\n", 3, params, 50.0) == ("a\nb\n", None)
    stops = SamplingParams(stop=tuple(f"<{i}>" for i in range(7)))
    assert check_stop("x<5>y<2>", 0, stops, 0.0) == ("x", "stop")


def scripted(tiny_model_dir, text: str, prompt: str, monkeypatch, step_ms: float = 0.0):
    """A generator whose model writes `text` after `prompt`, each forward pass `step_ms` on its clock."""
    import types

    from _generation_helpers import ScriptedModel

    tok = load_tokenizer(tiny_model_dir)
    script = tok.encode_infilling(text)
    assert tok.decode_infilling(script) == text
    n_prompt = len(tok.encode(prompt, bos=True))
    model = ScriptedModel(load_model(tiny_model_dir), script, n_prompt, tok.eos_id, step_ms)
    monkeypatch.setattr("codellama.generation.hf.time", types.SimpleNamespace(perf_counter=model.clock))
    return HFGenerator(model, tok, batch_size=4)


def test_n_indent_and_the_time_limit_stop_a_real_decode(tiny_model_dir, monkeypatch):
    text = "if x:\n        y = 1\n        z = 2\n    w = 3\n" + "".join(f"v{i} = {i}\n" for i in range(30))
    gen = scripted(tiny_model_dir, text, "def f(x):\n    ", monkeypatch, step_ms=20)
    free, indented, timed = gen.generate(
        [
            GenerationRequest("def f(x):\n    ", params=SamplingParams(max_new_tokens=300)),
            GenerationRequest("def f(x):\n    ", params=SamplingParams(max_new_tokens=300, n_indent=8)),
            GenerationRequest("def f(x):\n    ", params=SamplingParams(max_new_tokens=300, time_limit_ms=150)),
        ]
    )
    assert free.text == text and free.finish_reason == "stop"
    # the line indented 4 (< 8) ends it; its indentation stays, as llama.cpp leaves it
    assert (indented.text, indented.finish_reason) == ("if x:\n        y = 1\n        z = 2\n    ", "indent")
    # token k comes 20 * (k - 1) ms after the first: past 150 ms from token 9 on; it stops at the first
    # newline from there
    tok = gen.tokenizer
    first_newline = next(
        k for k in range(9, len(free.token_ids) + 1) if "\n" in tok.decode_infilling(free.token_ids[k - 1 : k])
    )
    assert (timed.text, timed.finish_reason) == (tok.decode_infilling(free.token_ids[:first_newline]), "time")
    assert timed.text.count("\n") < text.count("\n") // 4


def test_a_stop_rule_ends_a_real_decode_where_it_says(tiny_model_dir, monkeypatch):
    answer = "Here it is:\n```python\ndef f(x):\n    return x\n```\n" + "It returns x. " * 20
    prompt = "Complete f."
    gen = scripted(tiny_model_dir, answer, prompt, monkeypatch)
    block_end = answer.index("```\n", answer.index("def")) + 3

    def after_the_block(text: str) -> int | None:
        close = text.find("```\n", text.find("def"))
        return close + 3 if "def" in text and close >= 0 else None

    free, ruled = gen.generate(
        [
            GenerationRequest(prompt, params=SamplingParams(max_new_tokens=300)),
            GenerationRequest(prompt, params=SamplingParams(max_new_tokens=300, stop_at=after_the_block)),
        ]
    )
    assert free.text == answer
    assert (ruled.text, ruled.finish_reason) == (answer[:block_end], "stop")
    assert len(ruled.token_ids) < len(free.token_ids) // 2  # the tokens after the block were never generated


def test_top_k_and_min_p_filter_before_sampling(generator):
    request = GenerationRequest(PROMPTS[1], params=SamplingParams(max_new_tokens=12))
    greedy = generator.generate([request])[0].token_ids
    for params in (dict(top_k=1), dict(min_p=1.0)):  # only the most likely token survives
        p = SamplingParams(max_new_tokens=12, temperature=1.5, seed=5, **params)
        assert generator.generate([GenerationRequest(PROMPTS[1], params=p)])[0].token_ids == greedy
    wild = SamplingParams(max_new_tokens=12, temperature=1.5, seed=5)
    assert generator.generate([GenerationRequest(PROMPTS[1], params=wild)])[0].token_ids != greedy


def test_a_failing_row_fails_alone(generator):
    class Exploding(Recorder):
        def text(self, delta):
            raise RuntimeError("the client's socket broke")

    good = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=10))
    alone = generator.generate([good])[0]
    decoder = generator.decoder()
    sinks = [Recorder(), Exploding(), Recorder(), Recorder()]
    bad_ids = GenerationRequest("x", prompt_ids=(1, 10**6))  # not in the vocabulary
    for request, sink in zip([good, good, bad_ids, GenerationRequest("a\ud800b")], sinks):
        decoder.add(request, sink)
    while decoder.busy:
        decoder.step()
    done = [s.completion for s in sinks]
    assert [d.finish_reason for d in done] == ["length", "error", "error", "error"]
    assert "socket broke" in done[1].error and "vocabulary" in done[2].error
    assert done[0].token_ids == alone.token_ids  # the batch-mate is unharmed
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=1 << 64)


def test_prompt_cache_reuses_the_longest_common_prefix(tiny_model_dir):
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    gen = HFGenerator(model, tok, batch_size=4, prefill_chunk=32, prompt_cache_bytes=64 << 20)
    plain = HFGenerator(model, tok, batch_size=4)
    file = PROMPTS[1] * 4
    keystrokes = [file + "    x", file + "    x =", file + "    x = 1"]
    params = SamplingParams(max_new_tokens=8)
    expected = [plain.generate([GenerationRequest(k, params=params)])[0] for k in keystrokes]
    got = []
    for k in keystrokes:
        with forward_shapes(model) as calls:
            [out] = gen.generate([GenerationRequest(k, params=params, cache_prompt=True)])
        got.append((out, [ids for ids, _ in calls]))
    n_prompt = [len(gen.prompt_ids(GenerationRequest(k))) for k in keystrokes]
    assert [o.token_ids for o, _ in got] == [e.token_ids for e in expected]  # same answers as without a cache
    assert got[0][0].cached_tokens == 0
    for (out, calls), n in zip(got[1:], n_prompt[1:]):
        assert n - 6 <= out.cached_tokens < n  # all but the last few tokens came from the cache
        assert calls[0] == (1, n - out.cached_tokens)  # and only the rest was fed
    assert len(gen.prompt_cache.entries) == 1  # each keystroke replaced the one before
    assert gen.prompt_cache.nbytes <= 64 << 20
    # Rows that start together from cached prefixes of different lengths (and one from none) decode as alone.
    gen.prompt_cache.store(gen.prompt_ids(GenerationRequest(PROMPTS[0] * 3)), _kv_of(gen, PROMPTS[0] * 3))
    mixed = [file + "    y = 2", PROMPTS[0] * 3 + "    return a", "import json\n"]
    sinks = [Recorder(cancel_after=None) for _ in mixed]
    decoder = gen.decoder()
    for text, sink in zip(mixed, sinks):
        decoder.add(GenerationRequest(text, params=params, cache_prompt=True), sink)
    decoder.add(GenerationRequest(file + "    z", params=params, cache_prompt=True), cancelled := Recorder(0))
    while decoder.busy:
        decoder.step()
    alone = [plain.generate([GenerationRequest(t, params=params)])[0] for t in mixed]
    assert [s.completion.token_ids for s in sinks] == [a.token_ids for a in alone]
    cached = [s.completion.cached_tokens for s in sinks]
    assert cached[0] > cached[1] > 10 > cached[2]  # from the keystrokes' entry, the stored one, (almost) none
    assert cancelled.completion.finish_reason == "cancelled"


def _kv_of(gen, text):
    """The KV of a prompt, computed alone."""
    decoder = gen.decoder()
    keep = gen.prompt_cache
    gen.prompt_cache = type(keep)(64 << 20)
    decoder.add(GenerationRequest(text, params=SamplingParams(max_new_tokens=0), cache_prompt=True), Recorder())
    while decoder.busy:
        decoder.step()
    [entry], gen.prompt_cache = gen.prompt_cache.entries, keep
    return entry.layers


def test_a_warm_up_request_fills_the_cache_and_a_cancelled_prefill_keeps_its_progress(tiny_model_dir):
    gen = HFGenerator(
        load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), prefill_chunk=16, prompt_cache_bytes=64 << 20
    )
    extra = PROMPTS[1] * 4
    warm = GenerationRequest(extra, params=SamplingParams(max_new_tokens=0), cache_prompt=True)
    [out] = gen.generate([warm])
    assert (out.text, out.finish_reason) == ("", "length")
    [entry] = gen.prompt_cache.entries
    assert len(entry.tokens) == out.prompt_tokens  # the whole prompt is in the cache
    # A long prompt cancelled after three chunks leaves those 3 x 16 tokens behind for the next request.
    gen.prompt_cache.entries.clear()

    class Impatient(Recorder):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def cancelled(self):
            return self.decoder.steps >= 3

    decoder = gen.decoder()
    decoder.add(GenerationRequest(extra * 2, cache_prompt=True), Impatient(decoder))
    while decoder.busy:
        decoder.step()
    [entry] = gen.prompt_cache.entries
    assert len(entry.tokens) == 48
    [out] = gen.generate([GenerationRequest(extra * 2, params=SamplingParams(max_new_tokens=2), cache_prompt=True)])
    assert out.cached_tokens == 48


def test_the_default_prompt_cache_holds_two_whole_context_prompts(tiny_model_dir):
    """An editor sends prompts up to the whole context; a default cache that cannot hold one caches nothing."""
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    gen = HFGenerator(model, tok, prompt_cache_bytes=None)
    [out] = gen.generate(
        [GenerationRequest(PROMPTS[1] * 4, params=SamplingParams(max_new_tokens=1), cache_prompt=True)]
    )
    [entry] = gen.prompt_cache.entries
    assert entry.nbytes == len(entry.tokens) * gen.kv_bytes_per_token()  # the real KV's size per token
    assert gen.prompt_cache.max_bytes == 2 * gen.max_context * gen.kv_bytes_per_token()
    assert HFGenerator(model, tok).prompt_cache is None  # evals: no cache unless asked


def test_the_prompt_cache_stays_within_its_bytes():
    from codellama.generation.cache import PromptCache

    def kv(n):  # 2 layers x (k, v) of [1 head, n, 4] float32 = 64 bytes per token
        return [(torch.zeros(1, n, 4), torch.zeros(1, n, 4)) for _ in range(2)]

    cache = PromptCache(max_bytes=64 * 100)
    cache.store(list(range(60)), kv(60))
    cache.store(list(range(1000, 1030)), kv(30))  # unrelated: both kept
    assert len(cache.entries) == 2 and cache.nbytes == 64 * 90
    cache.store(list(range(2000, 2050)), kv(50))  # over budget: the least recently used goes
    assert [int(e.tokens[0]) for e in cache.entries] == [1000, 2000]
    assert cache.lookup(list(range(1000, 1010)) + [7])[0] == 10
    cache.store(list(range(1000, 1020)), kv(20))  # already held by an entry
    assert len(cache.entries) == 2
    cache.store(list(range(5000, 5200)), kv(200))  # larger than the whole budget: its first 100 tokens kept
    assert cache.nbytes <= 64 * 100
    assert [len(e.tokens) for e in cache.entries] == [100]
    assert cache.lookup(list(range(5000, 5150)))[0] == 100  # the next keystroke reuses what fit
    assert cache.entries[0].layers[0][0].shape == (1, 100, 4)
