import contextlib

import pytest
import torch

from codellama.checkpoint import load_model
from codellama.generation import GenerationRequest, HFGenerator, SamplingParams, truncate_at_stop
from codellama.tokenizer import load_tokenizer


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


@pytest.mark.parametrize("joiner", [PROMPTS[2], PROMPTS[1] * 3])  # shorter and longer than the running row
def test_admitted_rows_join_a_running_batch_and_decode_as_alone(generator, joiner):
    first = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=20))
    late = [
        GenerationRequest(joiner, params=SamplingParams(max_new_tokens=8)),
        GenerationRequest(PROMPTS[3], params=SamplingParams(max_new_tokens=6, temperature=0.9, seed=3)),
    ]
    alone = [generator.generate([r])[0] for r in (first, *late)]
    admits, done = [], {}

    def admit(free):  # both arrive while the first request is decoding (its 3rd and 5th step)
        admits.append(free)
        return late[:1] if len(admits) == 3 else late[1:] if len(admits) == 5 else []

    with forward_shapes(generator.model) as calls:
        [out] = generator.generate([first], admit=admit, on_done=lambda i, c: done.setdefault(i, c))
    widths = [ids[0] for ids, _ in calls]
    assert out.token_ids == alone[0].token_ids and set(done) == {0, 1, 2}
    assert [done[i].token_ids for i in (1, 2)] == [alone[1].token_ids, alone[2].token_ids]
    assert done[1].text == alone[1].text and done[2].finish_reason == alone[2].finish_reason
    assert max(widths) >= 2  # the late rows decoded in the same forward passes as the first one


def test_the_batch_narrows_to_the_rows_still_decoding(generator):
    """When a long-prompt row leaves, the others' cache loses the columns only it needed."""
    long_first = GenerationRequest(PROMPTS[1] * 3, params=SamplingParams(max_new_tokens=3))
    late = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=12))
    alone = generator.generate([late])[0]
    done = {}
    with forward_shapes(generator.model) as calls:
        generator.generate(
            [long_first],
            admit=lambda free: [late] if not done and len(calls) == 1 else [],
            on_done=lambda i, c: done.setdefault(i, c),
        )
    widths = [mask[1] for _, mask in calls]
    assert done[1].token_ids == alone.token_ids
    # the last step's mask is exactly the late row's own prompt and tokens, not the long row's history
    assert widths[-1] == len(generator.prompt_ids(late)) + len(alone.token_ids) - 1 < max(widths)


def test_a_long_joining_prompt_is_prefilled_in_chunks_between_decode_steps(tiny_model_dir):
    gen = HFGenerator(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), batch_size=4, prefill_chunk=16)
    first = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=30))
    late = GenerationRequest(PROMPTS[1] * 3, params=SamplingParams(max_new_tokens=6))
    alone = [gen.generate([r])[0].token_ids for r in (first, late)]
    done = {}
    with forward_shapes(gen.model) as calls:
        [out] = gen.generate(
            [first], admit=lambda free: [late] if len(calls) == 2 else [], on_done=lambda i, c: done.setdefault(i, c)
        )
    calls = [ids for ids, _ in calls]
    assert out.token_ids == alone[0] and done[1].token_ids == alone[1]
    chunks = [i for i, shape in enumerate(calls) if shape == (1, 16)]
    n_prompt = len(gen.prompt_ids(late))
    assert len(chunks) == n_prompt // 16  # the late prompt went in 16 tokens at a time (plus its remainder)
    # and the running row kept decoding (one token per call) between the chunks
    assert all(calls[i + 1] == (1, 1) for i in chunks)


def test_streaming_deltas_add_up_to_the_text(generator):
    pieces = {}
    request = GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=16))
    [done] = generator.generate([request], on_text=lambda i, d: pieces.setdefault(i, []).append(d))
    assert "".join(pieces[0]) == done.text and len(pieces[0]) > 1


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
    out = generator.generate(
        [GenerationRequest(PROMPTS[0], params=SamplingParams(max_new_tokens=50))] * 2, is_cancelled=lambda i: i == 1
    )
    assert out[1].finish_reason == "cancelled" and out[1].token_ids == [] and out[0].finish_reason == "length"


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
