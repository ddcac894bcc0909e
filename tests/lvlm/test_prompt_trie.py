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
    assert prompt.added_tokens(2, counts=3) == ["<video>", "</video>", "<act_000>", "<act_001>",
                                                "<count_1>", "<count_2>", "<count_3>"]
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
    assert prompt.answer("pickup", "The person  bends\n down.") == " pickup\nExplanation: The person bends down.<|im_end|>"
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


def test_best_first_search_finds_the_same_label_with_fewer_calls():
    rng = random.Random(1)
    seqs = {f"label {i}": [i % 3, 3 + i % 5, 10 + i, 99] for i in range(12)}
    table = {}

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

    trie = LabelTrie(seqs)
    for _ in range(5):
        table.clear()
        full_calls, fast_calls = [], []
        full = decode_label(trie, make(full_calls))
        fast = decode_label(trie, make(fast_calls), exhaustive=False)
        assert fast.label == full.label and math.isclose(fast.probability, full.probability)
        assert len(fast_calls) < len(full_calls) == trie.nodes
        assert all(p == 0 or math.isclose(p, full.distribution[lab]) for lab, p in fast.distribution.items())
