"""Label decoding constrained to a closed label set: a trie over the labels' token ids.

Standard library only: the same code serves evaluation with transformers and the llama.cpp
worker. The model is asked only for the log-probabilities of the allowed next tokens at each
trie node (`logprobs(prefix_ids, allowed_ids) -> {id: logprob}`), and the probability of every
label is computed exactly as the product of its tokens' conditional probabilities. With a
shared prefix evaluated once per node, a label set of L labels costs one model call per trie
node (shared prefixes are shared calls). The probabilities are the model's own: they sum to at
most 1 (the rest of the mass went to text outside the label set).
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

LogProbs = Callable[[Sequence[int], Sequence[int]], Mapping[int, float]]


@dataclass
class _Node:
    children: dict[int, "_Node"] = field(default_factory=dict)
    label: str | None = None  # set where a label's token sequence ends


class LabelTrie:
    def __init__(self, sequences: Mapping[str, Sequence[int]]):
        if not sequences:
            raise ValueError("no labels")
        self.root = _Node()
        self.labels = list(sequences)
        for label, ids in sequences.items():
            if not ids:
                raise ValueError(f"label {label!r} has no tokens")
            node = self.root
            for i in ids:
                node = node.children.setdefault(int(i), _Node())
            if node.label is not None:
                raise ValueError(f"labels {node.label!r} and {label!r} have the same tokens")
            if node.children:
                raise ValueError(f"label {label!r} is a token prefix of another label; end every label with a terminator")
            node.label = label
        self._check_prefix_free(self.root)

    def _check_prefix_free(self, node: _Node) -> None:
        for child in node.children.values():
            if child.label is not None and child.children:
                raise ValueError(f"label {child.label!r} is a token prefix of another label; end every label with a terminator")
            self._check_prefix_free(child)

    @property
    def nodes(self) -> int:
        count, stack = 0, [self.root]
        while stack:
            n = stack.pop()
            if n.children:
                count += 1
            stack.extend(n.children.values())
        return count


@dataclass(frozen=True)
class LabelResult:
    label: str
    probability: float  # the model's probability of this label's tokens
    distribution: dict[str, float]  # every label's probability (sums to <= 1)

    @property
    def renormalised(self) -> float:
        """The label's share of the probability mass that fell on the label set."""
        total = sum(self.distribution.values())
        return self.probability / total if total > 0 else 0.0


def decode_label(trie: LabelTrie, logprobs: LogProbs, exhaustive: bool = True) -> LabelResult:
    """The most probable label and its exact probability.

    exhaustive: every label's exact probability (one model call per inner node).
    Otherwise best-first search: nodes are expanded in order of their prefix probability, and the
    first label completed is the most probable one (a prefix's probability bounds every label
    below it), usually after a handful of calls; the distribution then holds the labels completed
    so far (still exact, summing to <= 1)."""
    dist: dict[str, float] = {}
    heap: list[tuple[float, int, _Node, tuple[int, ...]]] = [(-0.0, 0, trie.root, ())]
    count = 1
    while heap:
        neg, _, node, prefix = heapq.heappop(heap) if not exhaustive else heap.pop()
        lp = -neg
        if node.label is not None:
            dist[node.label] = math.exp(lp)
            if not exhaustive:
                break
            continue
        allowed = list(node.children)
        scores = logprobs(prefix, allowed)
        for tok in allowed:
            s = scores.get(tok, -math.inf)
            if s > 0.0 + 1e-6:
                raise ValueError(f"logprob {s} > 0 for token {tok}: pass log-probabilities, not logits")
            item = (-(lp + s), count, node.children[tok], prefix + (tok,))
            count += 1
            if exhaustive:
                heap.append(item)
            else:
                heapq.heappush(heap, item)
    best = max(dist, key=dist.get)
    return LabelResult(best, dist[best], {lab: dist.get(lab, 0.0) for lab in trie.labels})
