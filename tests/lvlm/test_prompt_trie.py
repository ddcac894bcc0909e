import math
import random
import subprocess
import sys

import pytest

from lvlm import prompt
from lvlm.trie import LabelTrie, decode_label


def test_prompt_module_imports_the_standard_library_only():
    code = "import sys, lvlm.prompt, lvlm.trie; assert not [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_token_id_layout():
    assert prompt.added_tokens(3) == ["<video>", "</video>", "<act_000>", "<act_001>", "<act_002>"]
    assert prompt.video_ids([0, 2, 2], base=100, codes=3) == [100, 102, 104, 104, 101]
    with pytest.raises(ValueError, match="outside the codebook"):
        prompt.video_ids([3], base=100, codes=3)


def test_count_tokens_follow_the_action_tokens_and_end_the_video_block():
    assert prompt.added_tokens(2, counts=3) == [
        "<video>",
        "</video>",
        "<act_000>",
        "<act_001>",
        "<count_1>",
        "<count_2>",
        "<count_3>",
    ]
    # <count_n> is base + 2 + K + n - 1, placed before </video>
    assert prompt.video_ids([1, 0], base=100, codes=2, count=3, counts=3) == [100, 103, 102, 106, 101]
    assert prompt.video_ids([1, 0], base=100, codes=2, count=1, counts=3)[-2] == 104
    # format 1: no count tokens, the block as before
    assert prompt.video_ids([1, 0], base=100, codes=2) == [100, 103, 102, 101]
    with pytest.raises(ValueError, match="has none"):
        prompt.video_ids([1], base=100, codes=2, count=None, counts=3)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="outside this model's count tokens 1..3"):
            prompt.video_ids([1], base=100, codes=2, count=bad, counts=3)
    with pytest.raises(ValueError, match="it has none"):
        prompt.video_ids([1], base=100, codes=2, count=2)
    p = prompt.build(["a", "b"])
    assert p.text([1], count=2) == p.prefix + "<video><act_001><count_2></video>" + p.suffix
    assert prompt.PROMPT_FORMAT_VERSION in prompt.READS_FORMATS and 1 in prompt.READS_FORMATS


def test_prompt_renders_identically_and_keeps_the_prefix_fixed():
    labels = ["drink water", "pickup", "sitting down"]
    a, b = prompt.build(labels), prompt.build(list(labels))
    assert a == b
    assert a.text([1, 2]) == a.prefix + "<video><act_001><act_002></video>" + a.suffix
    assert "drink water; pickup; sitting down" in a.prefix and "<video>" not in a.prefix
    assert a.suffix.endswith("Label:") and a.prefix.startswith("<|im_start|>system\n")
    assert (
        prompt.answer("pickup", "The person  bends\n down.") == " pickup\nExplanation: The person bends down.<|im_end|>"
    )
    assert prompt.parse_explanation("Explanation: It waves.<|im_end|>junk") == "It waves."
    with pytest.raises(ValueError):
        prompt.build(["a\nb"])


def brute_force(seqs, table):
    out = {}
    for label, ids in seqs.items():
        lp = sum(table[tuple(ids[:i])][t] for i, t in enumerate(ids))
        out[label] = math.exp(lp)
    return out


def test_constrained_decoding_returns_only_labels_with_exact_probabilities():
    rng = random.Random(0)
    vocab = list(range(12))
    seqs = {"drink water": [1, 2, 9], "drink": [1, 9], "pickup": [3, 9], "point": [3, 4, 9], "wave": [5, 6, 7, 9]}
    table = {}
    calls = []

    def logprobs(prefix, allowed):
        calls.append(tuple(prefix))
        key = tuple(prefix)
        if key not in table:
            w = [rng.random() + 0.01 for _ in vocab]
            z = math.log(sum(w))
            table[key] = {t: math.log(w[t]) - z for t in vocab}
        return {t: table[key][t] for t in allowed}

    trie = LabelTrie(seqs)
    result = decode_label(trie, logprobs)
    assert result.label in seqs
    assert set(result.distribution) == set(seqs)
    assert 0 < sum(result.distribution.values()) <= 1.0
    expected = brute_force(seqs, table)
    for label, p in expected.items():
        assert math.isclose(result.distribution[label], p, rel_tol=1e-9)
    assert result.label == max(expected, key=expected.get)
    assert math.isclose(sum(result.distribution[lab] / sum(expected.values()) for lab in seqs), 1.0)
    assert 0 < result.renormalised <= 1
    # one model call per inner node: (), (1,), (1,2), (3,), (3,4), (5,), (5,6), (5,6,7)
    assert trie.nodes == 8 and len(calls) == 8 and len(set(calls)) == 8


def test_labels_must_be_prefix_free():
    with pytest.raises(ValueError, match="prefix"):
        LabelTrie({"drink": [1], "drink water": [1, 2]})
    with pytest.raises(ValueError, match="same tokens"):
        LabelTrie({"a": [1, 9], "b": [1, 9]})


TWELVE = {f"label {i}": [i % 3, 3 + i % 5, 10 + i, 99] for i in range(12)}


def random_model(rng: random.Random, table: dict):
    """make(calls) -> a logprobs function of a random 100-token model (one distribution per
    prefix, kept in `table`) that records its calls in `calls`."""

    def make(calls):
        def logprobs(prefix, allowed):
            calls.append(tuple(prefix))
            key = tuple(prefix)
            if key not in table:
                w = [rng.random() ** 3 + 1e-3 for _ in range(100)]
                z = math.log(sum(w))
                table[key] = [math.log(x) - z for x in w]
            return {t: table[key][t] for t in allowed}

        return logprobs

    return make


def test_best_first_search_finds_the_same_label_with_fewer_calls():
    seqs, table = TWELVE, {}
    make = random_model(random.Random(1), table)

    trie = LabelTrie(seqs)
    for _ in range(5):
        table.clear()
        full_calls, fast_calls = [], []
        full = decode_label(trie, make(full_calls))
        fast = decode_label(trie, make(fast_calls), exhaustive=False)
        assert fast.label == full.label and math.isclose(fast.probability, full.probability)
        assert len(fast_calls) < len(full_calls) == trie.nodes
        assert all(p == 0 or math.isclose(p, full.distribution[lab]) for lab, p in fast.distribution.items())


def test_pooling_with_a_prior_is_exact_and_a_confident_prior_prunes_the_search():
    seqs, table, trie = TWELVE, {}, LabelTrie(TWELVE)
    make = random_model(random.Random(2), table)
    for trial in range(5):
        table.clear()
        fast_calls = []
        plain = decode_label(trie, make([]))
        model = plain.distribution
        # a confident prior on a label the model does not favour
        favoured = sorted(seqs, key=model.get)[trial]
        prior = {lab: (0.0 if lab == favoured else -12.0) for lab in seqs}
        weight = 0.4
        pooled = {lab: math.exp(weight * math.log(model[lab]) + prior[lab]) for lab in seqs}
        total = sum(pooled.values())
        full = decode_label(trie, make([]), prior=prior, weight=weight)
        assert full.label == max(pooled, key=pooled.get)
        for lab in seqs:
            assert math.isclose(full.distribution[lab], pooled[lab] / total, rel_tol=1e-9)
            assert math.isclose(full.model[lab], model[lab], rel_tol=1e-9)
        fast = decode_label(trie, make(fast_calls), exhaustive=False, prior=prior, weight=weight, tolerance=1e-3)
        assert fast.label == full.label
        assert full.probability <= fast.probability <= full.probability * (1 + 1e-3) + 1e-12
        assert len(set(fast_calls)) < trie.nodes
    # weight 0: the prior alone decides; a prior of zeros with weight 1: the model's renormalised distribution
    only_prior = decode_label(trie, make([]), prior={lab: -i for i, lab in enumerate(seqs)}, weight=0.0)
    assert only_prior.label == "label 0" and math.isclose(sum(only_prior.distribution.values()), 1.0)
    no_calls = []
    fast_prior = decode_label(
        trie, make(no_calls), exhaustive=False, prior={lab: -i for i, lab in enumerate(seqs)}, weight=0.0
    )
    assert not no_calls and fast_prior.distribution == pytest.approx(only_prior.distribution) and fast_prior.model == {}
    flat = decode_label(trie, make([]), prior=dict.fromkeys(seqs, 0.0))
    assert flat.label == plain.label and math.isclose(flat.probability, plain.renormalised, rel_tol=1e-9)
    with pytest.raises(ValueError, match="every label"):
        decode_label(trie, make([]), prior={"label 0": 0.0})
