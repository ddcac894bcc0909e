"""The Reader (label + explanation with a reused prefix cache), the faithfulness check, ROUGE-L and ECE."""

import math

import numpy as np
import pytest
import torch

from lvlm import prompt
from lvlm.evaluate import expected_calibration_error
from lvlm.faithfulness import check, rouge_l
from lvlm.reader import Reader, TransformersBackend, tempered
from lvlm.trie import decode_label
from lvlm.vocab import add_action_tokens
from tests.tiny_models import tiny_llama
from vst.actions import ACTIONS, TIMES, explain, limb_phrase

LABELS = ["drink water", "hand waving", "sitting down", "standing up (from sitting position)"]


@pytest.mark.slow
def test_reader_with_a_reused_prefix_cache_equals_full_forwards(tokenizer):
    model = tiny_llama(len(tokenizer)).eval()
    base = add_action_tokens(model, tokenizer, 16)
    reader = Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, explanation_tokens=6)

    def full(ids):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1).numpy()

    first = reader.read([1, 2, 3, 4])
    other = reader.read([9, 9, 0, 15])  # a different window in between reuses the same prefix
    again = reader.read([1, 2, 3, 4])
    assert (first.label, first.distribution, first.explanation) == (again.label, again.distribution, again.explanation)
    assert other.distribution != first.distribution
    ctx = reader.ids([1, 2, 3, 4])
    for label, ids in reader.label_ids.items():
        lp = sum(full(ctx + ids[:i])[t] for i, t in enumerate(ids))
        assert math.isclose(first.distribution[label], math.exp(lp), rel_tol=1e-3), label
    assert first.label == max(first.distribution, key=first.distribution.get)
    assert 0 < sum(first.distribution.values()) <= 1 + 1e-6 and first.probability == first.distribution[first.label]

    def greedy(seq, n=6):  # the explanation (n tokens at most) after a context and label, by full forwards
        seq, out = seq + reader.explanation_head, []
        for _ in range(n):
            t = int(np.argmax(full(seq)))
            if t == reader.stop:
                break
            out.append(t)
            seq.append(t)
        return prompt.parse_explanation(tokenizer.decode(out))

    assert first.explanation == greedy(ctx + reader.label_ids[first.label])
    assert first.label_s > 0 and first.explanation_s > 0
    no_text = reader.read([1, 2, 3, 4], explain=False)
    assert no_text.explanation is None and no_text.distribution == first.distribution
    with pytest.raises(ValueError, match="outside the codebook"):
        reader.read([16])
    # at a label temperature T, every label's probability is that of logits / T
    hot = Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, temperature=2.5).read(
        [1, 2, 3, 4], explain=False
    )
    for label, ids in reader.label_ids.items():
        lp = sum(torch.tensor(full(ctx + ids[:i]) / 2.5).log_softmax(-1)[t].item() for i, t in enumerate(ids))
        assert math.isclose(hot.distribution[label], math.exp(lp), rel_tol=1e-3), label
    assert hot.label == max(hot.distribution, key=hot.distribution.get) and hot.distribution != first.distribution
    manifest = {"labels": LABELS, "lvlm": {"token_id_base": base, "codes": 16, "label_temperature": 2.5}}
    from_bundle = Reader.for_bundle(TransformersBackend(model, tokenizer), manifest).read([1, 2, 3, 4], explain=False)
    assert from_bundle.distribution == hot.distribution
    with pytest.raises(ValueError, match="temperature"):
        Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, temperature=0)
    # pooled with the VST head: a * log p_llm + b * log p_head, normalised; the temperature is the pool's business
    head, pool = [0.1, 0.6, 0.2, 0.1], {"llm": 0.5, "head": 1.2}
    pooled_reader = Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, temperature=2.5, pool=pool)
    pooled = pooled_reader.read([1, 2, 3, 4], explain=False, head=head)
    expect = {lab: first.distribution[lab] ** 0.5 * h**1.2 for lab, h in zip(LABELS, head)}
    for lab in LABELS:
        assert math.isclose(pooled.distribution[lab], expect[lab] / sum(expect.values()), rel_tol=1e-4), lab
        assert math.isclose(pooled.model[lab], first.distribution[lab], rel_tol=1e-4), lab  # batched: float rounding
    assert pooled.label == max(expect, key=expect.get) and pooled.probability == pooled.distribution[pooled.label]
    fast = pooled_reader.read([1, 2, 3, 4], explain=False, exhaustive=False, head=head)
    # best-first stops once the labels left can hold at most ~1 % of the pool's mass found (the
    # trie's tolerance): the same label, its probability high by at most about that share
    assert fast.label == pooled.label and pooled.probability - 1e-4 <= fast.probability <= pooled.probability * 1.01
    # the explanation follows the pooled label
    explained = pooled_reader.read([1, 2, 3, 4], head=[0.0, 0.0, 0.0, 1.0])
    assert explained.label == LABELS[3] and explained.explanation == greedy(ctx + reader.label_ids[LABELS[3]], 48)
    # speculation: the head's label is fed with the context, one model call for its whole path
    feeds = []
    counted = Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, pool={"llm": 0.1, "head": 1.2})
    feed = counted.backend.feed
    counted.backend.feed = lambda ids, rows=1: feeds.append(len(ids)) or feed(ids, rows)
    confident = counted.read([1, 2, 3, 4], explain=False, exhaustive=False, head=[0.0, 0.0, 0.0, 1.0])
    assert confident.label == LABELS[3] and feeds[1:] == [
        len(reader.ids([1, 2, 3, 4])) - len(reader.prefix) + len(reader.label_ids[LABELS[3]]) - 1
    ]
    for guess in LABELS:  # every node read after a guessed path is the node read on its own
        nodes = reader.label_nodes([1, 2, 3, 4], guess=guess)[0]
        for ids in reader.label_ids.values():
            for i in range(len(ids)):
                assert np.allclose(nodes(ids[:i], [ids[i]]), full(ctx + ids[:i]), atol=1e-4), (guess, ids[:i])
    # every label's probability: a call feeds a label's whole path, where node by node each inner node costs one
    calls_by_way = {}
    for whole in (False, True):
        feeds.clear()
        nodes = counted.label_nodes([1, 2, 3, 4], whole=whole)[0]
        assert decode_label(counted.trie, tempered(nodes, 1.0)).distribution == pytest.approx(
            first.distribution, rel=1e-3
        )
        calls_by_way[whole] = len(feeds) - 1  # after the context's
    assert calls_by_way[True] <= len(LABELS) < calls_by_way[False] == counted.trie.nodes - 1, calls_by_way
    # speculation in the explanation: the last explanation of the same label is the draft
    drafted = Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, explanation_tokens=12)
    drafted_feed = drafted.backend.feed
    calls = []
    drafted.backend.feed = lambda ids, rows=1: calls.append(len(ids)) or drafted_feed(ids, rows)
    drafted.read([1, 2, 3, 4], explain=False)
    label_calls = len(calls) - 1  # after the prefix's
    calls.clear()
    once = drafted.read([1, 2, 3, 4])
    cold = len(calls) - label_calls  # the explanation's calls, no draft yet: one per token
    calls.clear()
    twice = drafted.read([1, 2, 3, 4])  # its own explanation is the draft: kept whole, in growing guesses
    warm = len(calls) - label_calls
    expect = (first.label, greedy(ctx + reader.label_ids[first.label], 12))
    assert (twice.label, twice.explanation) == (once.label, once.explanation) == expect
    assert warm == 3 < cold, (warm, cold)  # the label's end and `Explanation:`, then 8 and 3 tokens of the draft
    for window in ([9, 9, 0, 15], [3, 1, 4, 1], [2, 7, 1, 8]):  # other windows: the draft only saves calls
        drafted.speculate = True
        fast = drafted.read(window)
        drafted.speculate = False
        slow = drafted.read(window)
        assert (fast.label, fast.explanation) == (slow.label, slow.explanation)
    from lvlm.reader import _align

    assert _align([5, 6, 7, 8], 6, 1) == 2 and _align([5, 6, 7, 8], 7, 1) == 3  # found: after it
    assert _align([5, 6, 7, 8], 9, 1) == 2 and _align([], 9, 0) == 1  # a word replaced: one further
    low = min(first.distribution, key=first.distribution.get)  # a guess the model outweighs
    head = [0.4 if lab == low else 0.2 for lab in LABELS]
    wrong = pooled_reader.read([1, 2, 3, 4], exhaustive=False, head=head)
    assert wrong.label != low and wrong.label == pooled_reader.read([1, 2, 3, 4], explain=False, head=head).label
    assert wrong.explanation == greedy(ctx + reader.label_ids[wrong.label], 48)
    # a window without the head's probabilities: the model alone at its temperature
    assert pooled_reader.read([1, 2, 3, 4], explain=False).distribution == hot.distribution
    pooled_manifest = {**manifest, "lvlm": {**manifest["lvlm"], "label_pool": pool}}
    assert Reader.for_bundle(TransformersBackend(model, tokenizer), pooled_manifest).pool == pool
    with pytest.raises(ValueError, match="4 labels"):
        pooled_reader.read([1, 2, 3, 4], head=[1.0])
    with pytest.raises(ValueError, match="pool weights"):
        Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, pool={"llm": -1.0, "head": 1.0})


def test_every_node_in_batched_trees_equals_the_nodes_read_one_by_one(tokenizer):
    """`Reader.every_node` through transformers: windows in batches, each window's context and
    the whole label trie in one row, give every inner node's log-probabilities as reading the
    window alone does, and leave the prefix cache as it was."""
    model = tiny_llama(len(tokenizer)).eval()
    base = add_action_tokens(model, tokenizer, 16, counts=6)
    reader = Reader(TransformersBackend(model, tokenizer), LABELS, base, 16, counts=6)
    windows = [
        {"tokens": [int(t) for t in np.random.default_rng(i).integers(0, 16, 4)], "count": i % 6 + 1} for i in range(5)
    ]
    calls = []
    trees = reader.backend.feed_trees
    reader.backend.feed_trees = lambda *a: calls.append(len(a[0])) or trees(*a)
    batched = list(reader.every_node(windows, batch=2))
    assert calls == [2, 2, 1]  # batches of two windows, the rest in the last
    inner = [key for key in reader._below]
    assert len(inner) == reader.trie.nodes
    for w, nodes in zip(windows, batched):
        alone = reader.label_nodes(w["tokens"], w["count"], whole=False)[0]
        for key in inner:
            assert np.allclose(nodes(list(key), []), alone(list(key), []), atol=1e-4), (w, key)
    before = reader.read([1, 2, 3, 4], explain=False, count=2).distribution
    list(reader.every_node(windows[:1]))
    assert reader.read([1, 2, 3, 4], explain=False, count=2).distribution == before
    with pytest.raises(ValueError, match="one length"):
        reader.backend.feed_trees([[1, 2], [1]], [3], [-1])
    with pytest.raises(ValueError, match="parent"):
        reader.backend.feed_trees([[1, 2]], [3, 4], [-1, 1])


def test_the_pool_weights_follow_the_reader_that_knows():
    """fit_pool weights the reader whose probabilities carry the label; the pool reads at least as well as it."""
    from lvlm.evaluate import fit_pool

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 400)

    def informed(sharp):
        z = rng.normal(size=(400, 5))
        z[np.arange(400), truth] += sharp
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    noise = np.exp(rng.normal(size=(400, 5)))
    noise /= noise.sum(1, keepdims=True)
    for model, head, knows in ((informed(3.0), noise, "llm"), (noise, informed(3.0), "head")):
        fit = fit_pool(model, head, truth)
        other = "head" if knows == "llm" else "llm"
        assert fit["weights"][knows] > fit["weights"][other], fit
        assert fit["top1"] >= fit[f"{knows}_alone"]["top1"] - 0.01 and fit["windows"] == 400
    both = fit_pool(informed(2.0), informed(2.0), truth)  # two independent readers: the pool beats either
    assert (
        both["top1"] > max(both["llm_alone"]["top1"], both["head_alone"]["top1"]) and min(both["weights"].values()) > 0
    )
    # a head that is right but too soft (as a mean of two readings is) is sharpened past the model's grid
    soft = informed(6.0) ** 0.4
    soft /= soft.sum(1, keepdims=True)
    fit = fit_pool(noise, soft, truth)
    assert 1.5 < fit["weights"]["head"] <= 3.0 and fit["weights"]["llm"] == 0, fit


def test_every_reference_explanation_is_faithful_and_wrong_details_are_not():
    for a in ACTIONS:
        for side in ("left", "right"):
            for reps in range(a.reps[0], a.reps[1] + 1):
                attrs = {"limb": limb_phrase(a, side), "motion": a.motion, "repetitions": reps}
                assert check(explain(a, side, reps), attrs) == {
                    "limb": True,
                    "motion": True,
                    "repetitions": True,
                    "faithful": True,
                }, (a.name, side, reps)
                other = TIMES[reps % 6 + 1]
                assert not check(explain(a, side, reps).replace(TIMES[reps], other), attrs)["repetitions"]
                if a.limb in ("hand", "leg"):
                    mirrored = explain(a, "left" if side == "right" else "right", reps)
                    assert check(mirrored, attrs) == {
                        "limb": False,
                        "motion": True,
                        "repetitions": True,
                        "faithful": False,
                    }
    wave = {"limb": "right hand", "motion": "side to side above the shoulder", "repetitions": 3}
    assert not check("The person waves.", wave)["faithful"]
    assert not check("The right hand and the left hand move side to side above the shoulder three times.", wave)[
        "limb"
    ]  # a second limb is a wrong statement
    # near the window's edge a count one off is accepted by faithful_near, never by faithful
    edge = {**wave, "repetitions_near": [2, 3]}
    said = {n: check(f"The right hand moves side to side above the shoulder {TIMES[n]}.", edge) for n in (1, 2, 3)}
    assert said[3] == {
        "limb": True,
        "motion": True,
        "repetitions": True,
        "faithful": True,
        "repetitions_near": True,
        "faithful_near": True,
    }
    assert not said[2]["faithful"] and said[2]["faithful_near"] and not said[1]["faithful_near"]
    assert not check("The right hand moves side to side above the shoulder twice, three times.", edge)["faithful_near"]


def test_rouge_l_and_expected_calibration_error():
    assert rouge_l("The person waves the right hand.", "the person waves the right hand") == 1.0
    assert rouge_l("abc", "xyz") == 0.0 and rouge_l("", "x") == 0.0
    assert math.isclose(rouge_l("a b c d", "a c d e"), 0.75)  # LCS 3 of 4 and 4
    assert math.isclose(expected_calibration_error([0.9] * 10, [1] * 9 + [0]), 0.0, abs_tol=1e-12)
    assert math.isclose(expected_calibration_error([1.0] * 4, [1, 0, 1, 0]), 0.5)
    assert math.isclose(expected_calibration_error([0.15, 0.15, 0.95, 0.95], [0, 0, 1, 1]), 0.1)
