"""Reading a window's action tokens with a language model: the label (trie-constrained, with its
probability), then the explanation (greedy, bounded). One implementation for every backend:
evaluation runs it on transformers, the export's parity check and the edge runtime's worker on
llama.cpp.

A backend holds one KV cache and exposes five operations:

    tokenize(text) -> ids         special tokens parsed, no BOS
    detokenize(ids) -> str
    n                             tokens currently in the cache
    rewind(n)                     forget everything after the first n tokens
    feed(ids, rows=1) -> logprobs append ids; log-probabilities of the next token after each of
                                  the last `rows` of them (numpy, [rows, vocab])

The instruction prefix (`lvlm.prompt`) is fed once; every window rewinds to its end, so only the
video block, the short suffix and the label/explanation tokens are evaluated per window.

A window read with the VST head's label probabilities feeds the head's label after its context in
the same call (speculation): one model call of a few more tokens gives every trie node on that
label's path, where each node otherwise costs a call of its own (~8 ms for one token against ~45 ms
for the ~19 of the context, on a 2-core CPU with the default model). The head's label is the one
read in ~97 % of windows; where it is not, the search goes on from the nodes it already has, so
the label and its probability are the same either way. A node the search still needs comes with
the rest of a label's path below it in the same call. The explanation speculates the same way,
with the last explanation written for the label as its draft (`Reader._explanation`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lvlm import prompt
from lvlm.trie import LabelTrie, decode_label

SPAN = 8  # the first explanation guess's length in tokens (`Reader._explanation`)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis (each row of a 2-D array), in float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def tempered(nodes, temperature: float):
    """The trie's logprobs function at a temperature, from full next-token log-probabilities
    (each node's tempered vector computed once)."""
    done: dict[tuple, np.ndarray] = {}

    def logprobs(prefix, allowed):
        key = tuple(prefix)
        if key not in done:
            lp = nodes(prefix, allowed)
            done[key] = (
                lp if temperature == 1.0 else log_softmax(lp / temperature)
            )  # lp / T and logits / T differ by a constant
        return {a: float(done[key][a]) for a in allowed}

    return logprobs


@dataclass(frozen=True)
class Reading:
    label: str
    probability: float  # the model's own probability of the label's tokens (pooled: the pool's)
    distribution: dict[str, float]  # every label's probability (sums to <= 1)
    explanation: str | None
    label_s: float  # seconds from the window's tokens to the label
    explanation_s: float | None  # further seconds for the explanation
    model: dict[str, float] | None = None  # pooled: the language model's own probability of the labels computed


def head_prior(head: Sequence[float], labels: Sequence[str], weight: float) -> dict[str, float]:
    """The VST head's label probabilities as the log prior of a pool (`lvlm.trie.decode_label`)."""
    if len(head) != len(labels):
        raise ValueError(f"{len(head)} head probabilities for {len(labels)} labels")
    return {lab: weight * np.log(max(float(p), 1e-12)) for lab, p in zip(labels, head)}


class Reader:
    """temperature: the label's log-probabilities are those of logits / temperature (fitted after
    fine-tuning on held-out windows, `lvlm.evaluate.fit_temperature`, so that the probability
    means what it says); the label and explanation tokens themselves are the model's.

    pool: {"llm": a, "head": b}, fitted with the temperature: a window read with the VST head's
    label probabilities h (`head=`) gets the label of the log-linear pool
    a * log p_llm(label) + b * log h(label), normalised over the labels, and that probability;
    the explanation then follows that label. A window without them is read by the model alone.

    speculate: feed the head's label with the window's context, a missing trie node with a
    label's path below it, and draft the explanation from the label's last one (the module's
    docstring); False asks for every trie node and every explanation token on its own (the
    benchmark's baseline)."""

    def __init__(
        self,
        backend,
        labels: Sequence[str],
        base: int,
        codes: int,
        explanation_tokens: int = 48,
        temperature: float = 1.0,
        counts: int = 0,
        pool: dict | None = None,
    ):
        if not temperature > 0:
            raise ValueError(f"label temperature must be > 0, not {temperature}")
        if pool is not None and not (pool.get("llm", -1) >= 0 and pool.get("head", -1) >= 0):
            raise ValueError(f"label pool weights must be >= 0, not {pool}")
        self.backend, self.labels, self.base, self.codes, self.counts = backend, list(labels), base, codes, counts
        self.explanation_tokens, self.temperature = explanation_tokens, float(temperature)
        self.pool = {"llm": float(pool["llm"]), "head": float(pool["head"])} if pool else None
        p = prompt.build(self.labels)
        tok = backend.tokenize
        self.prefix, self.suffix = tok(p.prefix), tok(p.suffix)
        self.label_ids = {lab: tok(prompt.label_continuation(lab)) for lab in self.labels}
        self.trie = LabelTrie(self.label_ids)
        # every inner trie node -> the inner nodes of the first label below it (`label_nodes(whole=True)`)
        self._below: dict[tuple, list[int]] = {}
        for ids in self.label_ids.values():
            for k in range(len(ids)):
                self._below.setdefault(tuple(ids[:k]), ids[:-1])
        self.explanation_head = tok(prompt.ANSWER_EXPLANATION)
        stop = tok(prompt.END_OF_TURN)
        if len(stop) != 1:
            raise ValueError(
                f"{prompt.END_OF_TURN!r} is not one token for this model; its tokenizer lacks the chat tokens"
            )
        self.stop = stop[0]
        self._prefix_ready = False
        self.speculate = True
        self._path: list[int] = []  # the label tokens in the cache after the last window's context
        self._drafts: dict[str, list[int]] = {}  # the last explanation written for each label

    @classmethod
    def for_bundle(cls, backend, manifest: dict, explanation_tokens: int = 48) -> Reader:
        """The reader of a bundle's language model: labels, token ids and label temperature from its manifest."""
        lv = manifest["lvlm"]
        return cls(
            backend,
            manifest["labels"],
            lv["token_id_base"],
            lv["codes"],
            explanation_tokens,
            lv.get("label_temperature", 1.0),
            lv.get("counts", 0),
            lv.get("label_pool"),
        )

    def forget_prefix(self) -> None:
        """Make the next read evaluate the instruction prefix again (benchmarks compare with this)."""
        self._prefix_ready = False

    def ids(self, tokens: Sequence[int], count: int | None = None) -> list[int]:
        """The whole prompt for a window as ids (what `read` evaluates, for logs and parity checks)."""
        return self.prefix + self._video(tokens, count) + self.suffix

    def _video(self, tokens: Sequence[int], count: int | None) -> list[int]:
        """The video block; a count is ignored by a model without count tokens (format 1)."""
        return prompt.video_ids(tokens, self.base, self.codes, count if self.counts else None, self.counts)

    def _context(self, tokens: Sequence[int], count: int | None, guess: Sequence[int] = ()) -> np.ndarray:
        """Feed the window's context and then `guess` (label tokens); [1 + len(guess), vocab]
        log-probabilities: after the context, then after each guessed token."""
        video = self._video(tokens, count)  # validates before touching the cache
        self._at_prefix()
        return self.backend.feed(video + self.suffix + list(guess), rows=1 + len(guess))

    def _at_prefix(self) -> None:
        """Leave the cache holding the instruction prefix alone (fed once, kept after that)."""
        b = self.backend
        if not self._prefix_ready or b.n < len(self.prefix):
            b.rewind(0)
            b.feed(self.prefix)
            self._prefix_ready = True
        b.rewind(len(self.prefix))

    def label(
        self,
        tokens: Sequence[int],
        exhaustive: bool = True,
        count: int | None = None,
        head: Sequence[float] | None = None,
    ):
        """(LabelResult, context length) for a window (`count`: its count token, for a model that
        has them; `head`: the VST head's probability of every label, pooled with where the reader
        has a pool). Each trie node costs the tokens that differ from the path already in the
        cache; with speculation a call feeds a label's whole path (`label_nodes`)."""
        prior = head_prior(head, self.labels, self.pool["head"]) if self.pool and head is not None else None
        guess = self.labels[int(np.argmax(head))] if head is not None and self.speculate else None
        nodes, n_ctx = self.label_nodes(tokens, count, guess, whole=self.speculate)
        if prior is not None:
            return decode_label(self.trie, tempered(nodes, 1.0), exhaustive, prior, self.pool["llm"]), n_ctx
        return decode_label(self.trie, tempered(nodes, self.temperature), exhaustive), n_ctx

    def label_nodes(
        self, tokens: Sequence[int], count: int | None = None, guess: str | None = None, whole: bool = True
    ):
        """(logprobs(prefix, allowed) -> the full next-token log-probabilities after a trie node,
        context length): the window's context is evaluated now, with the nodes on the path of the
        label `guess` (speculation, see the module's docstring); every other node when first asked
        for (then kept, so the trie can be decoded again at other temperatures for free).

        whole: a node asked for comes with every node down the path of a label below it, in the
        same call (False: one call per node). Reading every label's probability then takes one
        call per label path instead of one per trie node (~17 calls instead of 46 for the default
        labels), and a pooled best-first search that must prove its label against others about a
        quarter of the calls, for about the same tokens."""
        b = self.backend
        spec = (
            self.label_ids[guess][:-1] if guess is not None else []
        )  # the last token ends the label: no node after it
        rows = self._context(tokens, count, spec)
        n_ctx = b.n - len(spec)
        cache = {tuple(spec[:i]): rows[i] for i in range(len(spec) + 1)}
        path = self._path = list(spec)  # the label tokens in the cache after the context

        def logprobs(prefix, allowed):
            key = tuple(prefix)
            if key not in cache:
                common = _shared(path, key)
                feed = self._below[key] if whole else key
                first = common if whole else len(key) - 1  # the first fed position whose row is kept
                b.rewind(n_ctx + common)
                got = b.feed(list(feed[common:]), rows=len(feed) - first)
                for i in range(first, len(feed)):
                    cache.setdefault(tuple(feed[: i + 1]), got[i - first])
                path[:] = feed
            return cache[key]

        return logprobs, n_ctx

    def every_node(self, windows: Sequence[dict], batch: int = 32):
        """For each window ({"tokens", "count"}), a `label_nodes` logprobs function that holds
        every inner trie node. A backend that reads a token tree (`feed_trees`) reads `batch`
        windows at a time, each window's context and the whole trie in one row (0.15-0.2 s a
        window for the default model on 2 CPU cores, against ~0.5 s for its ~17 label paths one
        llama.cpp call each); any other backend reads window by window, a node when first asked for."""
        if not hasattr(self.backend, "feed_trees"):
            for w in windows:
                yield self.label_nodes(w["tokens"], w.get("count"))[0]
            return
        inner = [key for key in self._below if key]  # every inner node but the root: one fed token each
        order = {key: i for i, key in enumerate(inner)}
        parents = [order[key[:-1]] if len(key) > 1 else -1 for key in inner]
        tree = [key[-1] for key in inner]
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            self._at_prefix()
            rows = self.backend.feed_trees(
                [self._video(w["tokens"], w.get("count")) + self.suffix for w in chunk], tree, parents
            )
            for row in rows:
                got = {(): row[0], **{key: row[1 + i] for i, key in enumerate(inner)}}
                yield lambda prefix, allowed, got=got: got[tuple(prefix)]

    def read(
        self,
        tokens: Sequence[int],
        explain: bool = True,
        exhaustive: bool = True,
        count: int | None = None,
        head: Sequence[float] | None = None,
    ) -> Reading:
        """exhaustive=False (the worker's way): best-first label search, exact label and probability,
        the other labels' probabilities only where the search computed them."""
        t0 = time.perf_counter()
        result, n_ctx = self.label(tokens, exhaustive, count, head)
        t1 = time.perf_counter()
        if not explain:
            return Reading(result.label, result.probability, result.distribution, None, t1 - t0, None, result.model)
        b = self.backend
        ids = self.label_ids[result.label]
        common = _shared(self._path, ids)  # the label's tokens already in the cache after the context
        b.rewind(n_ctx + common)
        out = self._explanation(b.feed(ids[common:] + self.explanation_head)[0], result.label)
        text = prompt.parse_explanation(b.detokenize(out))
        return Reading(
            result.label, result.probability, result.distribution, text, t1 - t0, time.perf_counter() - t1, result.model
        )

    def _explanation(self, lp: np.ndarray, label: str) -> list[int]:
        """The greedy explanation's tokens from the log-probabilities after `Explanation:`.

        With speculation, the last explanation written for the same label is the draft: after
        each token the model chose, the draft's tokens that follow it are fed in one call, and
        those the model would have chosen itself (its argmax at each position) are kept, the
        rest rewound. Explanations of one label differ in a word or two (the side, the count),
        so most of the sentence costs one call instead of one call per token, and the text is
        the plain greedy one. The guess is at most `span` tokens: doubled while guesses are kept
        whole, cut to what was kept after a miss, so a draft that does not fit costs little."""
        b, out = self.backend, []
        draft = self._drafts.get(label, []) if self.speculate else []
        at, span = 0, SPAN  # where in the draft the next token is expected; the next guess's length
        while len(out) < self.explanation_tokens:
            nxt = int(np.argmax(lp))
            if nxt == self.stop:
                break
            out.append(nxt)
            if len(out) == self.explanation_tokens:
                break
            at = _align(draft, nxt, at)
            guess = draft[at : at + min(span, self.explanation_tokens - len(out))]
            n = b.n
            rows = b.feed([nxt] + guess, rows=1 + len(guess))
            kept = 0
            while kept < len(guess) and guess[kept] != self.stop and int(np.argmax(rows[kept])) == guess[kept]:
                kept += 1
            if kept < len(guess):
                b.rewind(n + 1 + kept)
            out.extend(guess[:kept])
            at += kept
            span = 2 * span if kept == len(guess) else max(1, kept)
            lp = rows[kept]
        if self.speculate:
            self._drafts[label] = out + [self.stop]
        return out


class TransformersBackend:
    """A Hugging Face causal LM (float32, CPU or CUDA) with a cropped DynamicCache."""

    def __init__(self, model, tokenizer):
        import torch

        self.model, self.tokenizer, self.torch = model.eval(), tokenizer, torch
        self.device = next(model.parameters()).device
        self.cache = None
        self.n = 0

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def rewind(self, n: int) -> None:
        if n > self.n:
            raise ValueError(f"cannot rewind to {n} tokens: only {self.n} in the cache")
        if n == 0:
            self.cache = None
        elif n < self.n:
            self.cache.crop(n - self.n)  # a negative count removes that many tokens
        self.n = n

    def feed(self, ids: Sequence[int], rows: int = 1) -> np.ndarray:
        from transformers import DynamicCache

        _check_rows(ids, rows)
        torch = self.torch
        if self.cache is None:
            self.cache = DynamicCache()
        x = torch.tensor([list(ids)], device=self.device)
        with torch.no_grad():
            out = self.model(
                input_ids=x, cache=self.cache, use_cache=True, logits_to_keep=rows
            )  # the cache grows in place
        self.n += len(ids)
        return out.logits[0, -rows:].float().log_softmax(-1).cpu().numpy()

    def feed_trees(self, contexts: Sequence[Sequence[int]], tree: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Several continuations of the cache at once, the cache left as it was: row i is
        contexts[i] (all of one length) and then a tree of tokens, each seeing the context and
        the tokens on its way down (`parents[j]`: the index of token j's parent in `tree`, -1
        under the context; parents come before their children). [rows, 1 + len(tree), vocab]
        log-probabilities of the next token: after the context, then after each tree token."""
        import copy

        torch = self.torch
        rows, width = len(contexts), len(contexts[0])
        if any(len(c) != width for c in contexts) or not width:
            raise ValueError("the contexts of one tree feed must be of one length, not empty")
        depth, ancestors = [], []
        for j, parent in enumerate(parents):
            if not -1 <= parent < j:
                raise ValueError(f"tree token {j}'s parent {parent} does not come before it")
            depth.append(1 + (depth[parent] if parent >= 0 else 0))
            ancestors.append((ancestors[parent] if parent >= 0 else set()) | {j})
        n, q = self.n, width + len(tree)
        seen = torch.zeros(q, n + q, dtype=torch.bool)
        seen[:, :n] = True
        seen[:, n : n + width] = torch.ones(q, width, dtype=torch.bool).tril()  # the context: causal
        for j, up in enumerate(ancestors):
            seen[width + j, [n + width + a for a in up]] = True
        dev, dtype = self.device, next(self.model.parameters()).dtype
        mask = torch.zeros(q, n + q, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
        positions = torch.tensor(list(range(n, n + width)) + [n + width - 1 + d for d in depth], device=dev)
        cache = None
        if self.cache is not None and n:
            cache = copy.deepcopy(self.cache)
            for layer in cache.layers:
                layer.batch_repeat_interleave(rows)
        ids = torch.tensor([list(c) + list(tree) for c in contexts], device=dev)
        keep = torch.arange(width - 1, q, device=dev)
        with torch.no_grad():
            out = self.model(
                input_ids=ids,
                attention_mask=mask[None, None].expand(rows, 1, q, n + q).to(dev),
                position_ids=positions[None].expand(rows, q),
                cache=cache,
                use_cache=cache is not None,
                logits_to_keep=keep,
            )
        return out.logits.float().log_softmax(-1).cpu().numpy()


class LlamaCppBackend:
    """A llama.cpp model through llama-cpp-python: the KV cache is the context's own; rewinding
    sets n_tokens (the next eval drops the cache entries after it)."""

    def __init__(self, llm):
        self.llm = llm
        self.vocab = llm.n_vocab()

    @classmethod
    def open(cls, gguf: str, threads: int | None = None, n_ctx: int = 1024, n_gpu_layers: int = 0) -> LlamaCppBackend:
        """threads: None uses every core (llama-cpp-python's own default is half of them)."""
        from llama_cpp import Llama

        threads = threads or os.cpu_count()
        return cls(
            Llama(
                model_path=gguf,
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers,
                logits_all=False,
                verbose=False,
            )
        )

    @property
    def n(self) -> int:
        return self.llm.n_tokens

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def rewind(self, n: int) -> None:
        if n > self.llm.n_tokens:
            raise ValueError(f"cannot rewind to {n} tokens: only {self.llm.n_tokens} in the cache")
        self.llm.n_tokens = n

    def feed(self, ids: Sequence[int], rows: int = 1) -> np.ndarray:
        """`Llama.eval`, with logits computed for the last `rows` tokens only (eval computes the
        last one's, or with logits_all every token's)."""
        _check_rows(ids, rows)
        llm, ids = self.llm, list(ids)
        if rows == 1:
            llm.eval(ids)
            return log_softmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(1, self.vocab)))
        if len(ids) > llm.n_batch:
            raise ValueError(f"{rows} rows of logits from a feed longer than one batch ({llm.n_batch} tokens)")
        n_past = llm.n_tokens
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        llm._batch.set_batch(batch=ids, n_past=n_past, logits_all=False)
        for i in range(len(ids) - rows, len(ids)):
            llm._batch.batch.logits[i] = True
        llm._ctx.decode(llm._batch)
        llm.input_ids[n_past : n_past + len(ids)] = ids
        llm.n_tokens += len(ids)
        logits = [
            np.ctypeslib.as_array(llm._ctx.get_logits_ith(i), shape=(self.vocab,))
            for i in range(len(ids) - rows, len(ids))
        ]
        return log_softmax(np.stack(logits))


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token sequences."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _align(draft: list[int], token: int, at: int, reach: int = 3) -> int:
    """Where the draft goes on after the model chose `token` where the draft expected `at`:
    after that token's nearest occurrence within `reach` of `at`, or, where it has none, after
    `at` (a word replaced by another: the side, a count)."""
    near = [i for i in range(max(0, at - reach), min(len(draft), at + reach + 1)) if draft[i] == token]
    return min(near, key=lambda i: abs(i - at)) + 1 if near else at + 1


def _check_rows(ids: Sequence[int], rows: int) -> None:
    if not ids or not 1 <= rows <= len(ids):
        raise ValueError(f"{rows} rows of log-probabilities from a feed of {len(ids)} tokens")
