"""A tiny LLaMA with the real SmolLM2 tokenizer learns action tokens -> label through LoRA."""

import copy
import json
import os

import numpy as np
import pytest
import torch

from lvlm import prompt
from lvlm.finetune import FinetuneConfig, _batches, encode, finetune, shared_prefix_loss
from lvlm.vocab import add_action_tokens
from tests.tiny_models import tiny_llama

LABELS = ["drink water", "hand waving", "sitting down"]


CODEBOOK = torch.nn.functional.normalize(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)), dim=-1)


def examples(n, codes, seed=0, counts=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 3))
        tokens = [int(x) for x in rng.integers(k * 4, k * 4 + 4, 8)]  # each label has its own codes
        count = int(rng.integers(1, counts + 1)) if counts else None
        out.append(
            {"tokens": tokens, "count": count, "label": LABELS[k], "explanation": f"The person does {LABELS[k]}."}
        )
    return out


def test_loss_covers_the_answer_only(tokenizer):
    p = prompt.build(LABELS)
    ids, labels = encode(tokenizer, p, len(tokenizer), 16, examples(1, 16)[0])
    answer = [t for t in labels if t != -100]
    assert ids[-len(answer) :] == answer and labels[: len(ids) - len(answer)] == [-100] * (len(ids) - len(answer))
    assert tokenizer.decode(answer).startswith(" ") and "Explanation:" in tokenizer.decode(answer)


def test_count_token_ends_the_video_block_of_an_example(tokenizer):
    p = prompt.build(LABELS)
    ex = examples(1, 16, counts=6)[0]
    base = len(tokenizer)
    ids, _ = encode(tokenizer, p, base, 16, ex, counts=6)
    end = ids.index(base + 1)  # </video>
    assert ids[end - 9 : end] == [base + 2 + t for t in ex["tokens"]] + [base + 2 + 16 + ex["count"] - 1]
    assert encode(tokenizer, p, base, 16, ex)[0] == ids[: end - 1] + ids[end:]  # format 1 ignores the count


def test_shared_prefix_loss_equals_the_full_rows_loss(pristine_tokenizer):
    tok = copy.deepcopy(pristine_tokenizer)
    model = tiny_llama(len(tok))
    base = add_action_tokens(model, tok, 16)
    model.eval()
    p = prompt.build(LABELS)
    prefix = tok.encode(p.prefix, add_special_tokens=False)
    rows = [encode(tok, p, base, 16, ex) for ex in examples(5, 16)]
    rows[1] = (rows[1][0] + rows[1][0][-3:], rows[1][1] + rows[1][1][-3:])  # rows of different lengths: padding
    pad = tok.eos_token_id
    full_ids, full_lab, full_mask = next(_batches(rows, 5, pad, np.random.default_rng(0)))
    ids, lab, mask = next(
        _batches([(i[len(prefix) :], y[len(prefix) :]) for i, y in rows], 5, pad, np.random.default_rng(0))
    )
    embedded = []  # the input embedding's output, per forward (the prefix's run first)
    model.model.embed_tokens.register_forward_hook(lambda mod, args, out: embedded.append(out))
    grads = []
    for loss_fn in (
        lambda: model(input_ids=full_ids, attention_mask=full_mask, labels=full_lab).loss,
        lambda: shared_prefix_loss(model, torch.tensor(prefix), ids, lab, mask),
        lambda: shared_prefix_loss(model, torch.tensor(prefix), ids, lab, mask, prefix_grad=False),
    ):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    # the same loss all three ways
    assert abs(grads[0][0] - grads[1][0]) < 1e-5 and abs(grads[0][0] - grads[2][0]) < 1e-5, grads
    # the same gradients with prefix_grad: they reach the prefix through the shared cache
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-4)
    # without it the prefix runs outside autograd
    assert len(embedded) == 5 and embedded[1].requires_grad and not embedded[3].requires_grad
    assert not torch.allclose(grads[1][1], grads[2][1], atol=1e-6, rtol=1e-4)


def test_code_tie_moves_the_action_rows_in_and_out_and_folds_into_them(pristine_tokenizer):
    from peft import LoraConfig, get_peft_model
    from torch.nn.utils import parametrize

    from lvlm.finetune import _code_tie

    tok = copy.deepcopy(pristine_tokenizer)
    model = tiny_llama(len(tok))
    base = add_action_tokens(model, tok, 16)
    lora = LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=list(range(base, base + 18)))
    peft_model = get_peft_model(model, lora)
    rows = next(m for n, m in peft_model.named_modules() if n.endswith("trainable_tokens_delta"))
    x = torch.tensor([[1, 2, base, base + 2, base + 9]])  # two words, <video>, <act_000>, <act_007>
    with torch.no_grad():
        before = peft_model(input_ids=x).logits
        parametrize.register_parametrization(rows, "default", _code_tie(CODEBOOK, rows["default"].shape[1]))
        assert torch.equal(peft_model(input_ids=x).logits, before)  # the map starts at zero
        rows.parametrizations["default"][0].map.normal_()
        tied = peft_model(input_ids=x).logits
        # before the first action token the inputs are unchanged: so are the logits of the other tokens
        assert torch.equal(tied[0, :3, : base + 2], before[0, :3, : base + 2])
        assert not torch.allclose(tied[0, 0, base + 2 :], before[0, 0, base + 2 :])  # the tied output rows moved
        assert not torch.allclose(tied[0, 3:, : base + 2], before[0, 3:, : base + 2])  # the action inputs moved
        parametrize.remove_parametrizations(rows, "default", leave_parametrized=True)
        assert torch.allclose(peft_model(input_ids=x).logits, tied, atol=1e-5)  # folded in: the same model
    # count tokens after the action tokens stay free rows: the map moves the action rows only
    tie = _code_tie(CODEBOOK, 8)
    with torch.no_grad():
        tie.map.normal_()
        free = torch.randn(2 + 16 + 6, 8)
        tied_rows = tie(free)
    assert torch.equal(tied_rows[:2], free[:2]) and torch.equal(tied_rows[18:], free[18:])
    assert not torch.allclose(tied_rows[2:18], free[2:18])


def test_sparse_token_rows_give_peft_s_values_and_gradients(pristine_tokenizer):
    """`_sparse_token_rows`: the trainable token rows without peft's copy of the whole embedding
    matrix per call give the same logits and the same gradients, through the input embedding and
    the tied output projection, with the code tie's parametrisation on the rows."""
    from peft import LoraConfig, get_peft_model
    from torch.nn.utils import parametrize

    from lvlm.finetune import _code_tie, _sparse_token_rows

    tok = copy.deepcopy(pristine_tokenizer)
    base = add_action_tokens(model := tiny_llama(len(tok)), tok, 16)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=list(range(base, base + 18)))
    )
    rows = next(m for n, m in peft_model.named_modules() if n.endswith("trainable_tokens_delta"))
    parametrize.register_parametrization(rows, "default", _code_tie(CODEBOOK, rows["default"].shape[1]))
    with torch.no_grad():
        rows.parametrizations["default"].original.normal_()  # rows and map away from their start
        rows.parametrizations["default"][0].map.normal_()
    x = torch.tensor([[1, 2, base, base + 2, base + 9, base + 1, 7]])
    target = torch.tensor([[2, base, base + 2, base + 9, base + 1, 7, base + 17]])
    trainable = {n: q for n, q in peft_model.named_parameters() if q.requires_grad}

    def run():
        peft_model.zero_grad()
        logits = peft_model(input_ids=x).logits
        torch.nn.functional.cross_entropy(logits[0], target[0]).backward()
        return logits.detach(), {n: q.grad.clone() for n, q in trainable.items()}

    logits, grads = run()
    _sparse_token_rows(peft_model)
    sparse_logits, sparse_grads = run()
    assert torch.allclose(sparse_logits, logits, atol=1e-5)
    assert len(grads) == 6 and all(torch.allclose(grads[n], sparse_grads[n], atol=1e-5) for n in grads), grads.keys()
    assert all(
        g.abs().sum() > 0 for n, g in grads.items() if "trainable_tokens" in n
    )  # the rows and the code map learn


@pytest.mark.slow
def test_finetune_with_count_tokens_trains_their_rows(pristine_tokenizer, tmp_path):
    tok = copy.deepcopy(pristine_tokenizer)
    model = tiny_llama(len(tok))
    base = add_action_tokens(model, tok, 16, counts=6)
    before = model.get_input_embeddings().weight[base + 18 : base + 24].detach().clone()
    r = finetune(
        model,
        tok,
        base,
        16,
        LABELS,
        examples(16, 16, counts=6),
        str(tmp_path),
        progress=False,
        codebook=CODEBOOK,
        cfg=FinetuneConfig(steps=4, batch=4, lr=1e-2),
        counts=6,
    )
    assert r["counts"] == 6 and r["prompt_format_version"] == 2
    after = r["model"].merge_and_unload().get_input_embeddings().weight[base + 18 : base + 24]
    seen = sorted({ex["count"] for ex in examples(16, 16, counts=6)})
    assert all(not torch.allclose(after[n - 1], before[n - 1]) for n in seen)  # the counts fed were trained
    with pytest.raises(ValueError, match="has none"):  # a model with count tokens needs every example's count
        finetune(
            model,
            tok,
            base,
            16,
            LABELS,
            examples(4, 16),
            str(tmp_path / "x"),
            FinetuneConfig(steps=1, batch=4),
            progress=False,
            counts=6,
        )


@pytest.fixture(scope="module")
def tuned(pristine_tokenizer, tmp_path_factory):
    tok = copy.deepcopy(pristine_tokenizer)
    model = tiny_llama(len(tok))
    base = add_action_tokens(model, tok, 16)
    out = str(tmp_path_factory.mktemp("adapter"))
    result = finetune(
        model,
        tok,
        base,
        16,
        LABELS,
        examples(48, 16),
        out,
        FinetuneConfig(steps=120, batch=8, lr=1e-2, schedule="constant"),
        progress=False,
        codebook=CODEBOOK,
    )
    return tok, base, out, result


@pytest.mark.slow
def test_tiny_llama_lora_finetune_lowers_the_loss(tuned):
    _, _, out, result = tuned
    assert result["last_loss"] < 0.6 * result["first_loss"]
    trainable = [n for n, q in result["model"].named_parameters() if q.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)
    # the code map was trained, then folded into the rows: no parametrisation is left in the model
    assert result["code_map_norm"] > 0 and not any("parametrizations" in n for n in trainable)
    assert {"adapter_config.json", "lvlm.json"} <= set(os.listdir(out))


@pytest.mark.slow
def test_constrained_decoding_reads_the_learned_labels(tuned):
    from lvlm.trie import LabelTrie, decode_label

    tok, base, _, result = tuned
    peft_model = result["model"].eval()
    trie = LabelTrie({lab: tok.encode(prompt.label_continuation(lab), add_special_tokens=False) for lab in LABELS})
    p = prompt.build(LABELS)
    correct = 0
    for ex in examples(12, 16, seed=1):  # windows not seen in training
        head = (
            tok.encode(p.prefix, add_special_tokens=False)
            + prompt.video_ids(ex["tokens"], base, 16)
            + tok.encode(p.suffix, add_special_tokens=False)
        )

        def logprobs(prefix, allowed, head=head):
            with torch.no_grad():
                out = peft_model(input_ids=torch.tensor([head + list(prefix)])).logits[0, -1].log_softmax(-1)
            return {a: float(out[a]) for a in allowed}

        r = decode_label(trie, logprobs)
        assert r.label in LABELS and 0 < sum(r.distribution.values()) <= 1 + 1e-6
        correct += r.label == ex["label"]
    assert correct >= 10, correct


@pytest.mark.slow
def test_label_temperature_is_fitted_on_held_out_windows(tuned):
    """The fitted temperature lowers the held-out NLL, and a model whose log-probabilities are
    three times sharper gets a temperature three times higher (to the grid's 7 % steps)."""
    from lvlm.evaluate import TEMPERATURES, fit_temperature
    from lvlm.reader import Reader, TransformersBackend, log_softmax, tempered

    tok, base, _, result = tuned
    model = result["model"].eval()

    class Sharper(TransformersBackend):
        def feed(self, ids, rows=1):
            return log_softmax(3.0 * super().feed(ids, rows))

        def feed_trees(self, contexts, tree, parents):
            return log_softmax(3.0 * super().feed_trees(contexts, tree, parents))

    held = examples(24, 16, seed=5)
    for ex in held[::3]:
        ex["label"] = LABELS[
            (LABELS.index(ex["label"]) + 1) % 3
        ]  # some wrong labels: a confident model is overconfident
    fits = [
        fit_temperature(Reader(cls(model, tok), LABELS, base, 16), held, progress=False)
        for cls in (TransformersBackend, Sharper)
    ]
    for fit in fits:
        assert fit["temperature"] in TEMPERATURES.round(4) and fit["windows"] == 24
        assert fit["nll"] <= fit["nll_t1"] and 0 <= fit["ece"] <= 1
    # the 3x sharper model is overconfident: its fitted temperature lowers both NLL and ECE
    assert fits[1]["nll"] < fits[1]["nll_t1"] and fits[1]["ece"] < fits[1]["ece_t1"], fits
    assert 3 / 1.08 <= fits[1]["temperature"] / fits[0]["temperature"] <= 3 * 1.08, fits
    # the closed-form NLL is the tempered label path's own
    reader = Reader(Sharper(model, tok), LABELS, base, 16)
    direct = 0.0
    for ex in held:
        lp = tempered(reader.label_nodes(ex["tokens"])[0], fits[1]["temperature"])
        path = reader.label_ids[ex["label"]]
        direct -= sum(lp(path[:k], [t])[t] for k, t in enumerate(path)) / len(held)
    assert direct == pytest.approx(fits[1]["nll"], rel=1e-3)


def test_calibration_uses_augmented_windows_of_held_out_performers():
    from lvlm.finetune import calibration_split
    from vst.ntu import held_out_performers

    exs = [{"clip": f"S001C001P{p:03d}R001A001", "label": "x", "view": v} for v in range(3) for p in range(1, 21)]
    held = held_out_performers([x["clip"] for x in exs], 0.15)
    assert len(held) == 3
    for views in (1, 2):
        train, cal = calibration_split(exs, views, held)
        assert {x["view"] for x in train} == set(range(views)) and not held & {x["clip"][8:12] for x in train}
        assert {x["view"] for x in cal} == {1, 2} and {x["clip"][8:12] for x in cal} == held
    assert calibration_split(exs, 1, set()) == ([x for x in exs if x["view"] == 0], [])
    one = [{"clip": "door_cam", "label": "x", "view": 0}]  # no performer id: the clip is its own performer
    assert calibration_split(one * 3, 1, {"door_cam"}) == (one * 3, [])  # never holds out everything
    # performers the VST did not train on: their windows as recorded
    for views in (1, 2):
        train, cal = calibration_split(exs, views, {"P007", "P011"}, vst_unseen=True)
        assert {x["view"] for x in train} == set(range(views)) and {x["view"] for x in cal} == {0}
        assert {x["clip"][8:12] for x in cal} == {"P007", "P011"} and len(cal) == 2
        assert not {"P007", "P011"} & {x["clip"][8:12] for x in train}


def test_calibration_performers_and_their_mirror_read_head(tiny_run, cache32):
    """The calibration performers come from the training split (or the VST's own hold-out), and
    with `mirror` only their windows' head probabilities are the mirror reading's."""
    from lvlm.examples import build_examples
    from lvlm.finetune import calibration_performers
    from vst.cache import Cache
    from vst.ntu import held_out_performers, performer_of

    run = tiny_run[0]
    clips = Cache.open(cache32).split("train")
    held, unseen = calibration_performers(run, cache32, None, 0.5)
    assert not unseen and held == held_out_performers([c["name"] for c in clips], 0.5) and held
    assert calibration_performers(run, cache32, None, 0.0) == (set(), False)
    _, plain = build_examples(run, cache32, "train", windows_per_clip=1, progress=False)
    _, mixed = build_examples(run, cache32, "train", windows_per_clip=1, progress=False, mirror=held)
    assert [x["tokens"] for x in plain] == [x["tokens"] for x in mixed]  # the tokens stay the window's own
    for a, b in zip(plain, mixed):
        same = np.allclose(a["head_probs"], b["head_probs"])
        assert same == (performer_of(a["clip"]) not in held), a["clip"]


@pytest.mark.slow
def test_merge_round_trip_keeps_the_logits(tuned, tmp_path):
    from transformers import AutoModelForCausalLM

    from lvlm.finetune import merge

    tok, base, _, result = tuned
    peft_model = result["model"].eval()
    ex = examples(1, 16, seed=3)[0]
    ids, _ = encode(tok, prompt.build(LABELS), base, 16, ex)
    x = torch.tensor([ids])
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=x).logits
    out = merge(peft_model, tok, str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        merged_logits = merged(input_ids=x).logits
    assert merged.get_input_embeddings().weight.shape[0] == base + 18
    # float32 noise of folding B @ A into W, against logits of std ~2.4; a wrong merge is off by > 0.1
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-3), (adapter_logits - merged_logits).abs().max()


@pytest.mark.slow
def test_examples_come_from_the_vst_windows(tiny_run, cache32):
    from lvlm.examples import build_examples
    from vst.actions import window_attributes
    from vst.cache import Cache
    from vst.model import load_checkpoint

    run, _ = tiny_run
    labels, exs = build_examples(run, cache32, "train", windows_per_clip=2, progress=False)
    assert labels == ["sitting down", "standing up (from sitting position)", "hand waving"]
    per_clip = {}
    for ex in exs:
        per_clip[ex["clip"]] = per_clip.get(ex["clip"], 0) + 1
    assert len(per_clip) == 36 and max(per_clip.values()) <= 2  # every training clip, at most 2 windows
    cfg = load_checkpoint(run).cfg
    cache = Cache.open(cache32)
    clips = {c["name"]: c for c in cache.split("train")}
    for ex in exs:
        assert len(ex["tokens"]) == cfg.T and all(0 <= t < cfg.K for t in ex["tokens"])
        assert ex["label"] in labels and ex["explanation"] == ex["attributes"]["explanation"]
        # the reference states the repetitions the window holds (the clip's own count kept beside it)
        clip = clips[ex["clip"]]
        assert ex["attributes"] == window_attributes(
            clip["attributes"], ex["start"], ex["start"] + cfg.W, clip["frames"]
        )
    # each window carries the count the VST's repetitions head reads for it
    from vst.model import read_count
    from vst.windows import clip_windows

    assert cfg.counts == cfg.max_reps and all(1 <= ex["count"] <= cfg.counts for ex in exs)
    first = exs[0]
    w = clip_windows(load_checkpoint(run), cache.clip_frames(clips[first["clip"]]))
    assert first["count"] == int(read_count(w["reps"][list(w["starts"]).index(first["start"])]))
    waves = [ex["attributes"] for ex in exs if ex["label"] == "hand waving"]
    assert waves and all(1 <= a["repetitions"] <= a["clip_repetitions"] for a in waves)
    _, two = build_examples(run, cache32, "train", windows_per_clip=2, progress=False, views=2)
    assert two[: len(exs)] == exs and len(two) == 2 * len(exs)  # view 0 as recorded, then an augmented view
    augmented = two[len(exs) :]
    assert any(a["tokens"] != b["tokens"] for a, b in zip(exs, augmented))
    mirrored = [
        a
        for a in augmented
        if a["attributes"]["side"] != next(e for e in exs if e["clip"] == a["clip"])["attributes"]["side"]
    ]
    assert 0 < len(mirrored) < len(augmented)  # about half the views are flipped; their side is swapped
    for a in mirrored:
        assert a["explanation"] == a["attributes"]["explanation"]
        if a["label"] == "hand waving":
            assert f"{a['attributes']['side']} hand" in a["explanation"]
    # the augmented view for some performers' clips only (the calibration's): the same windows as theirs above
    from vst.ntu import performer_of

    some = {performer_of(exs[0]["clip"])}
    _, part = build_examples(run, cache32, "train", windows_per_clip=2, progress=False, views=2, augmented=some)
    assert part == exs + [a for a in augmented if performer_of(a["clip"]) in some] and len(part) < len(two)


@pytest.fixture(scope="module")
def cli_adapter(tiny_run, cache32, pristine_tokenizer, tmp_path_factory):
    """`lvlm-var finetune` on a tiny local LLaMA base, as a user runs it."""
    from tests.helpers import run_cli

    tmp = tmp_path_factory.mktemp("cli")
    tiny_llama(len(pristine_tokenizer)).save_pretrained(tmp / "tiny-llama")
    pristine_tokenizer.save_pretrained(tmp / "tiny-llama")
    r = run_cli(
        "finetune",
        "--vst",
        tiny_run[0],
        "--data",
        cache32,
        "--base",
        str(tmp / "tiny-llama"),
        "--out",
        str(tmp / "ad"),
        "--steps",
        "30",
        "--batch",
        "8",
        "--lr",
        "1e-2",
        "--seed",
        "3",
        timeout=300,
    )
    return tmp / "ad", r


@pytest.mark.slow
def test_finetune_command_writes_adapter_and_merged_model(cli_adapter, tiny_run, cache32, pristine_tokenizer, tmp_path):
    from tests.helpers import run_cli

    ad, r = cli_adapter
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fine-tuned on" in r.stdout
    meta = json.load(open(ad / "merged" / "lvlm.json"))
    assert meta["codes"] == 32 and meta["token_id_base"] == len(pristine_tokenizer) and len(meta["labels"]) == 3
    assert (ad / "merged" / "model.safetensors").exists()
    assert meta["label_temperature"] > 0 and meta["calibration"]["windows"] > 0
    # the label pool with the VST head, fitted on every calibration window (the default)
    pool = meta["calibration"]["pool"]
    assert meta["label_pool"] == pool["weights"] and pool["windows"] == meta["calibration"]["windows"]
    assert 0 <= pool["weights"]["llm"] <= 1.5 and 0 <= pool["weights"]["head"] <= 3.0  # the fit's grids
    assert pool["nll"] > 0 and "label pool" in r.stdout
    assert meta["head_mirror"] is True and "(head: mirror reading)" in r.stdout  # the default, as the runtime reads it
    # the VST trained on every performer: augmented windows of one held back from the fine-tune
    assert meta["calibration"]["performers"] == ["P001"] and not meta["calibration"]["unseen_by_vst"]
    assert meta["calibration"]["backend"] == "transformers (label trie batched)"
    assert meta == json.load(open(ad / "lvlm.json"))
    assert meta["config"]["seed"] == 3 and meta["config"]["schedule"] == "one-cycle"
    # the tiny VST has a repetitions head: format 2, its counts as tokens after the action tokens
    assert meta["counts"] == 6 and meta["prompt_format_version"] == 2 and meta["config"]["count_token"]
    assert (
        pristine_tokenizer.__class__.from_pretrained(ad / "merged").convert_tokens_to_ids("<count_6>")
        == meta["token_id_base"] + 39
    )
    r = run_cli(
        "finetune", "--vst", tiny_run[0], "--data", cache32, "--base", "no-such-model", "--out", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "unknown base model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_temperature_fit_in_batched_trees_matches_llama_cpp(cli_adapter, tmp_path):
    """The fine-tune fits the label temperature and the pool through transformers, the label
    trie of many windows in one forward; llama.cpp on an F16 GGUF of the merged model, one call
    per label path, gives the same fit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export.gguf_export import write_gguf
    from lvlm.commands import _fit_temperature
    from lvlm.evaluate import fit_temperature
    from lvlm.reader import LlamaCppBackend, Reader

    ad, _ = cli_adapter
    meta = json.load(open(ad / "lvlm.json"))
    rng = np.random.default_rng(3)
    windows = [
        {
            "tokens": [int(t) for t in rng.integers(0, meta["codes"], 8)],
            "count": i % meta["counts"] + 1,
            "label": meta["labels"][i % 3],
            "head_probs": list(rng.dirichlet(np.ones(3))),
        }
        for i in range(9)
    ]
    model, tok = AutoModelForCausalLM.from_pretrained(ad / "merged"), AutoTokenizer.from_pretrained(ad / "merged")
    fast = _fit_temperature(
        model, tok, meta["labels"], meta["token_id_base"], meta["codes"], windows, meta["counts"], 9
    )
    backend = LlamaCppBackend.open(write_gguf(str(ad / "merged"), str(tmp_path / "m.gguf")))
    slow = fit_temperature(
        Reader(backend, meta["labels"], meta["token_id_base"], meta["codes"], counts=meta["counts"]),
        windows,
        progress=False,
        pool_windows=9,
    )
    backend.llm.close()
    assert fast["backend"] == "transformers (label trie batched)" and fast["windows"] == 9
    # F16 weights against float32: the NLL to 1 %, the temperature to one step of the grid (7 %)
    assert fast["nll_t1"] == pytest.approx(slow["nll_t1"], rel=1e-2)
    assert 1 / 1.08 <= fast["temperature"] / slow["temperature"] <= 1.08, (fast, slow)
    assert fast["pool"]["windows"] == 9 and fast["pool"]["nll"] == pytest.approx(slow["pool"]["nll"], rel=2e-2)


@pytest.mark.slow
def test_finetune_calibrates_on_the_performers_the_vst_did_not_train_on(tiny_run, cache32, cli_adapter, tmp_path):
    """A VST run that records held-out performers (`train vst --hold-out`): the fine-tune neither
    trains on them nor augments them; it fits the temperature on their windows as recorded."""
    import shutil

    from tests.helpers import run_cli

    run = tmp_path / "vst"
    shutil.copytree(tiny_run[0], run)
    record = json.load(open(run / "train_config.json"))
    json.dump({**record, "held_out": ["P002"]}, open(run / "train_config.json", "w"))
    base = cli_adapter[0].parent / "tiny-llama"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("prefix_grad = true\nlora_dropout = 0.1\ncount_token = false\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("lora_dropout = 2.0\n")
    r = run_cli("finetune", "--vst", str(run), "--data", cache32, "--out", str(tmp_path / "x"), "--recipe", str(bad))
    assert r.returncode == 2 and "bad.toml: lora_dropout: Input should be less than 1" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli(
        "finetune",
        "--vst",
        str(run),
        "--data",
        cache32,
        "--base",
        str(base),
        "--out",
        str(tmp_path / "ad"),
        "--steps",
        "2",
        "--batch",
        "4",
        "--calibration-windows",
        "6",
        "--recipe",
        str(recipe),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.load(open(tmp_path / "ad" / "lvlm.json"))
    assert meta["config"]["prefix_grad"] is True and meta["config"]["lora_dropout"] == 0.1
    assert meta["counts"] == 0 and not meta["config"]["count_token"]  # format 1's video block
    assert meta["calibration"]["performers"] == ["P002"] and meta["calibration"]["unseen_by_vst"]
    # trained on P001's windows alone: its 18 clips give 27 (up to 3 each; the short ones fewer)
    assert meta["calibration"]["windows"] == 6 and meta["examples"] == 27
    assert "held-out performers P002" in r.stdout


@pytest.mark.slow
def test_calibrate_command_fits_an_adapter_again(cli_adapter, tiny_run, cache32, tmp_path):
    """`lvlm-var calibrate`: the fine-tune's calibration step alone, rewriting lvlm.json."""
    import shutil

    from tests.helpers import run_cli

    ad = tmp_path / "ad"
    shutil.copytree(cli_adapter[0], ad)
    before = json.load(open(ad / "lvlm.json"))
    r = run_cli(
        "calibrate", "--adapter", str(ad), "--vst", tiny_run[0], "--data", cache32, "--pool-windows", "0", timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    after = json.load(open(ad / "lvlm.json"))
    assert after == json.load(open(ad / "merged" / "lvlm.json"))
    # the same windows and model: the same temperature; no pool asked for, none kept
    assert after["label_temperature"] == before["label_temperature"] and after["label_pool"] is None
    assert after["head_mirror"] is False  # no pool: the head is not read
    assert "pool" not in after["calibration"] and after["calibration"]["windows"] == before["calibration"]["windows"]
    fitted = ("calibration", "label_pool", "label_temperature", "head_mirror")
    assert {k: v for k, v in after.items() if k not in fitted} == {k: v for k, v in before.items() if k not in fitted}
    r = run_cli("calibrate", "--adapter", str(tmp_path / "nothing"), "--vst", tiny_run[0], "--data", cache32)
    assert r.returncode == 2 and "no lvlm.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_eval_command_reports_labels_calibration_and_explanations(cli_adapter, tiny_run, cache32, tmp_path):
    from tests.helpers import run_cli

    ad, _ = cli_adapter
    run, _ = tiny_run
    r = run_cli(
        "eval",
        "lvlm",
        "--adapter",
        str(ad),
        "--vst",
        run,
        "--data",
        cache32,
        "--max-windows",
        "8",
        "--explain",
        "8",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(ad / "eval" / "merged" / "metrics.json"))
    assert m["windows"] == 8 and m["explained"] == 8 and m["protocol"] == "xsub"
    assert 0 <= m["llm_top1"] <= 1 and 0 <= m["vst_head_top1"] <= 1 and 0 <= m["ece"] <= 1
    assert set(m["faithfulness"]) == {"faithful", "limb", "motion", "repetitions"} and 0 <= m["rouge_l"] <= 1
    assert 0 <= m["repetitions_clip_count"] <= 1
    near = m["faithfulness_edge_tolerant"]  # accepts more counts, never fewer
    assert set(near) == {"faithful", "repetitions"} and near["faithful"] >= m["faithfulness"]["faithful"]
    assert "accepting a count the window holds when moved by up to 2 frames" in r.stdout
    assert (ad / "eval" / "merged" / "reliability.png").stat().st_size > 5000
    rows = [json.loads(line) for line in open(ad / "eval" / "merged" / "readings.jsonl")]
    labels = json.load(open(ad / "lvlm.json"))["labels"]
    assert len(rows) == 8 and all(row["predicted"] in labels and 0 < row["probability"] <= 1 for row in rows)
    assert m["llm_top1"] == np.mean([row["predicted"] == row["label"] for row in rows])
    # read with the VST's count token; on the waving windows the metric says whether the explanation states it
    assert all(1 <= row["count"] <= 6 for row in rows)
    waving = [row for row in rows if row["label"] == "hand waving"]
    assert waving and m["count_token"]["windows"] == len(waving) == sum("count_token" in row for row in rows)
    from lvlm.faithfulness import COUNTS, _mentions
    from vst.actions import times_word

    for key in ("right", "stated"):
        assert m["count_token"][key] == pytest.approx(np.mean([row["count_token"][key] for row in waving]))
    for row in waving:  # stated: the explanation's one count word is the token's
        assert row["count_token"]["stated"] == (
            _mentions(row["explanation"].lower(), COUNTS) == {times_word(row["count"])}
        )
    assert "count token (the VST's count) on" in r.stdout
    assert "LLM label top-1" in r.stdout and "VST head" in r.stdout
    # the adapter has a pool with the VST head: the labels are the pool's, and the LLM alone is reported beside
    assert m["pool"] == json.load(open(ad / "lvlm.json"))["label_pool"]
    assert m["llm_alone"]["top1"] == np.mean([row["llm_alone"] == row["label"] for row in rows])
    assert 0 <= m["llm_alone"]["ece"] <= 1 and "language model alone" in r.stdout
    # labels only: the explanation metrics are null, and the file is strict JSON (no NaN)
    r = run_cli(
        "eval",
        "lvlm",
        "--adapter",
        str(ad),
        "--vst",
        run,
        "--data",
        cache32,
        "--max-windows",
        "4",
        "--explain",
        "0",
        "--out",
        str(tmp_path / "labels"),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(
        (tmp_path / "labels" / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json")
    )
    assert m["explained"] == 0 and m["faithfulness"] is None and m["faithfulness_when_label_correct"] is None
    assert m["faithfulness_edge_tolerant"] is None
    r = run_cli("eval", "lvlm", "--adapter", str(tmp_path / "nothing"), "--vst", run, "--data", cache32)
    assert r.returncode == 2 and "no lvlm.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_tiny_llava_language_model_loads_and_fine_tunes(tokenizer, tmp_path):
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    from lvlm.base import load
    from lvlm.finetune import merge
    from tests.tiny_models import save_tiny_llava

    save_tiny_llava(tmp_path / "llava", tokenizer)
    model, tok = load(str(tmp_path / "llava"))
    assert isinstance(model, LlamaForCausalLM) and model.config.vocab_size == len(tok)
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    ids = torch.tensor([tok.encode("The person waves", add_special_tokens=False)])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, llava(input_ids=ids).logits, atol=1e-5)
    base = add_action_tokens(model, tok, 16)
    result = finetune(
        model,
        tok,
        base,
        16,
        LABELS,
        examples(48, 16),
        str(tmp_path / "ad"),
        FinetuneConfig(steps=60, batch=8, lr=1e-2),
        progress=False,
    )
    assert result["last_loss"] < 0.6 * result["first_loss"]
    out = merge(result["model"], tok, str(tmp_path / "merged"))
    assert json.load(open(os.path.join(out, "config.json")))["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["constant", "one-cycle"])
def test_resumed_finetune_equals_an_uninterrupted_one(pristine_tokenizer, tmp_path, monkeypatch, schedule):
    import lvlm.finetune as ft
    from lvlm.finetune import FinetuneError

    def run(out, steps, resume, **other):
        tok = copy.deepcopy(pristine_tokenizer)
        model = tiny_llama(len(tok))
        base = add_action_tokens(model, tok, 16)
        cfg = FinetuneConfig(
            steps=steps, batch=4, lr=1e-2, lora_dropout=0.0, checkpoint_every=3, schedule=schedule, **other
        )
        r = finetune(
            model,
            tok,
            base,
            16,
            LABELS,
            examples(16, 16),
            str(out),
            cfg,
            progress=False,
            resume=resume,
            codebook=CODEBOOK,
        )
        return {n: q.detach().clone() for n, q in r["model"].named_parameters() if q.requires_grad}, r

    whole, _ = run(tmp_path / "a", 6, False)
    loss, calls = ft.shared_prefix_loss, []

    def killed_in_step_4(*a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return loss(*a)

    monkeypatch.setattr(ft, "shared_prefix_loss", killed_in_step_4)
    with pytest.raises(KeyboardInterrupt):  # interrupted after the checkpoint of step 3
        run(tmp_path / "b", 6, False)
    monkeypatch.setattr(ft, "shared_prefix_loss", loss)
    resumed, r = run(tmp_path / "b", 6, True)
    assert set(whole) == set(resumed)
    for n in whole:
        assert torch.allclose(whole[n], resumed[n], atol=1e-6), n
    if schedule == "one-cycle":  # it ends near 0, and a resume may not change its length
        assert torch.load(tmp_path / "b" / "finetune_state.pt", weights_only=False)["sched"]["_last_lr"][0] < 1e-5
        with pytest.raises(FinetuneError, match="other examples or settings"):
            run(tmp_path / "b", 9, True)
    assert len(json.load(open(tmp_path / "b" / "lvlm.json"))["config"]) and r["first_loss"] > 0
    with pytest.raises(FinetuneError, match="other examples or settings"):  # the other prefix_grad
        run(tmp_path / "b", 6, True, prefix_grad=not FinetuneConfig().prefix_grad)
    with pytest.raises(FinetuneError, match="other examples or settings"):  # count tokens the checkpoint lacks
        tok = copy.deepcopy(pristine_tokenizer)
        model = tiny_llama(len(tok))
        finetune(
            model,
            tok,
            add_action_tokens(model, tok, 16, counts=6),
            16,
            LABELS,
            examples(16, 16, counts=6),
            str(tmp_path / "b"),
            FinetuneConfig(steps=6, batch=4, lr=1e-2, lora_dropout=0.0, checkpoint_every=3, schedule=schedule),
            progress=False,
            resume=True,
            codebook=CODEBOOK,
            counts=6,
        )
    with pytest.raises(FinetuneError, match="other examples or settings"):  # the checkpoint has a code map
        tok = copy.deepcopy(pristine_tokenizer)
        model = tiny_llama(len(tok))
        finetune(
            model,
            tok,
            add_action_tokens(model, tok, 16),
            16,
            LABELS,
            examples(16, 16),
            str(tmp_path / "b"),
            FinetuneConfig(steps=6, batch=4, checkpoint_every=3),
            progress=False,
            resume=True,
        )
    with pytest.raises(FinetuneError, match="other examples or settings"):
        tok = copy.deepcopy(pristine_tokenizer)
        model = tiny_llama(len(tok))
        base = add_action_tokens(model, tok, 16)
        finetune(
            model,
            tok,
            base,
            16,
            LABELS,
            examples(8, 16),
            str(tmp_path / "b"),
            FinetuneConfig(steps=6, batch=4, checkpoint_every=3),
            progress=False,
            resume=True,
        )
