"""LoRA fine-tuning of the language model on action tokens, and the merge back into one model.

Training examples pair a window's action tokens (from a trained VST, run the runtime's way) with
the clip's label and the reference explanation of what the window shows. peft LoRA adapts the
attention and MLP projections; the new token rows (<video>, </video>, <act_i>, <count_n>) are
trainable through `trainable_token_indices`, and each action token's row is tied to its VST code
vector through a learned map (`_code_tie`); the loss covers the answer only (label line,
explanation, end of turn). With a VST that has a repetitions head, each window's video block ends
with the count token the head reads for it (`lvlm.prompt`, format 2), so the explanation can
state the count the VST counted rather than the one the class usually has. The prompt comes
from `lvlm.prompt`, the same text the llama.cpp worker feeds.

Every example starts with the same instruction prefix (~75 % of its tokens for SmolLM2), so a
training step runs the prefix once and shares its KV cache across the batch (gradients flow
through the shared cache), as the worker does at run time: a batch of 8 is 514 tokens instead
of 1,424, and a step 2.4x faster on a CPU.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from lvlm import prompt


class FinetuneError(RuntimeError):
    """Fine-tuning that cannot start as asked (e.g. a checkpoint from other settings): one line."""


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class FinetuneConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # dropout made a step ~28 % dearer, for < 1 epoch of data
    lr: float = 2e-3  # the peak of the one-cycle schedule (it read better than a constant 1e-3)
    schedule: str = "one-cycle"  # `vst.train.one_cycle`: 10 % warm-up to lr, cosine down to ~0; or "constant"
    batch: int = 8
    steps: int = 450  # 2.8-4.5 s each on 2 CPU cores: 21-41 min of steps
    seed: int = 0
    checkpoint_every: int = 25  # steps between resumable checkpoints (OUT/finetune_state.pt)
    code_tie: bool = True  # with a VST codebook: each action token's row + a learned map of its code vector
    prefix_grad: bool = False  # gradients through the shared instruction prefix too (~20 % dearer steps)
    count_token: bool = True  # with a VST repetitions head: the window's count token ends the video block


def encode(
    tokenizer, p: prompt.Prompt, base: int, codes: int, example: dict, counts: int = 0
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example; labels are -100 outside the answer."""
    video = prompt.video_ids(example["tokens"], base, codes, example.get("count") if counts else None, counts)
    head = (
        tokenizer.encode(p.prefix, add_special_tokens=False)
        + video
        + tokenizer.encode(p.suffix, add_special_tokens=False)
    )
    answer = tokenizer.encode(prompt.answer(example["label"], example["explanation"]), add_special_tokens=False)
    return head + answer, [-100] * len(head) + answer


def shared_prefix_loss(model, prefix, ids, labels, mask, prefix_grad: bool = True):
    """Answer loss of a batch whose rows all continue the same prefix ids: the prefix runs once
    (batch 1), its KV cache is repeated over the rows and the rows run on top of it. Equals the
    loss of the full rows (tested). With `prefix_grad` gradients reach the prefix through the
    shared cache; without, the prefix runs without autograd (its cache still comes from the
    current weights, as the worker's does) and only the rows' positions train the weights."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.set_grad_enabled(prefix_grad and torch.is_grad_enabled()):
        model(input_ids=prefix[None], cache=cache, use_cache=True, logits_to_keep=1)  # fills the cache in place
    for layer in cache.layers:
        layer.batch_repeat_interleave(ids.shape[0])
    full_mask = torch.cat([torch.ones(ids.shape[0], prefix.numel(), dtype=mask.dtype, device=mask.device), mask], dim=1)
    # logits only where they predict an answer token (the label, explanation and end of turn: ~60 %
    # of a row's positions); the same loss, a little less work (not measurable alone on 2 cores)
    start = max(int((labels != -100).int().argmax(dim=1).min()), 1)
    keep = torch.arange(start - 1, ids.shape[1] - 1, device=ids.device)
    logits = model(input_ids=ids, attention_mask=full_mask, cache=cache, logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels[:, start:].flatten(), ignore_index=-100
    )


def _batches(encoded, batch: int, pad: int, rng):
    """Padded (ids, labels, attention mask) batches over shuffled epochs, forever (right padding)."""
    import torch

    while True:
        order = rng.permutation(len(encoded))
        for start in range(0, len(encoded), batch):
            chunk = [encoded[i] for i in order[start : start + batch]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (x, y) in enumerate(chunk):
                ids[row, : len(x)] = torch.tensor(x)
                labels[row, : len(y)] = torch.tensor(y)
                mask[row, : len(x)] = 1
            yield ids, labels, mask


STATE = "finetune_state.pt"


def _code_tie(codebook, hidden: int):
    """A parametrisation of the trainable token rows (<video>, </video>, <act_0>, ..., then any
    count tokens, which stay free rows): each action token's row is its own free row plus a
    learned linear map of its VST code vector (zero at the start, so training starts from the
    word initialisation). Every example trains the map for all
    codes at once, and a code seen rarely in training still reads like the codes near it in the
    VST's code space, as it does for the VST's own head. The map is folded into the rows before
    the adapter is saved: the rows, the merged model and the GGUF stay plain."""
    import torch

    class CodeTie(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("codebook", codebook.detach().float().clone())
            self.map = torch.nn.Parameter(torch.zeros(hidden, codebook.shape[1]))

        def forward(self, rows):
            k = self.codebook.shape[0]
            return torch.cat(
                [rows[:2], rows[2 : 2 + k] + self.codebook.to(rows) @ self.map.t().to(rows), rows[2 + k :]]
            )

    return CodeTie()


def _sparse_token_rows(peft_model) -> None:
    """Make peft's trainable token rows cost what they are: peft's own forward copies the whole
    embedding matrix with the rows written in (`index_copy`) on every call, for the input
    embedding and again for the tied output projection, and autograd then builds a gradient of
    the whole matrix to pick the rows from (15-20 % of a step for SmolLM2's 49k x 576 matrix on 2
    CPU cores). Here the frozen matrix is used as it is and only the rows' own positions (inputs) or
    columns (logits) come from the trainable rows: the same values and gradients."""
    import types

    import torch
    import torch.nn.functional as F
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    def forward(self, x, *args, **kwargs):
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return self.forward_adapters(x, self.active_adapters, *args, **kwargs)
        name, layer = self.active_adapters[0], self.base_layer
        index = torch.as_tensor(self.token_indices[name], device=layer.weight.device)
        rows = self.trainable_tokens_delta[name].to(layer.weight)
        if isinstance(layer, torch.nn.Embedding):
            slot = torch.full((layer.weight.shape[0],), -1, device=x.device)
            slot[index] = torch.arange(len(index), device=x.device)
            at = slot[x]
            out = torch.where(
                (at >= 0)[..., None], rows[at.clamp(min=0)], F.embedding(x, layer.weight, layer.padding_idx)
            )
            scale = self._get_embed_scale()
            return out if scale is None else out * scale.to(out.dtype)
        if isinstance(layer, torch.nn.Linear) and layer.bias is None:  # an output projection tied to the embedding
            return F.linear(x, layer.weight).index_copy_(-1, index, F.linear(x, rows))
        return self.forward_adapters(x, self.active_adapters, *args, **kwargs)

    for module in peft_model.modules():
        if isinstance(module, TrainableTokensLayer):
            module.forward = types.MethodType(forward, module)


def finetune(
    model,
    tokenizer,
    base: int,
    codes: int,
    labels: list[str],
    examples: list[dict],
    out: str,
    cfg: FinetuneConfig,
    progress: bool = True,
    resume: bool = False,
    codebook=None,
    counts: int = 0,
) -> dict:
    """Train a LoRA adapter on `examples`; saves it (adapter + tokenizer + lvlm.json) to `out`.
    `counts` > 0: the vocabulary has that many count tokens and every example a `count`.
    Every `checkpoint_every` steps the trainable weights, the optimizer and the step go to
    OUT/finetune_state.pt; `resume` continues from there (the batch order is replayed and the
    one-cycle schedule restored, so a resumed run equals an uninterrupted one; a one-cycle run
    cannot be resumed with other --steps or --lr, as the schedule depends on both).
    Runs on the first CUDA device when there is one (`vst.train.training_device`), else on every
    CPU core; the saved adapter and state load on either."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.nn.utils import parametrize
    from tqdm import tqdm

    from vst.train import training_device

    device = training_device()
    model.to(device)
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
        trainable_token_indices=list(range(base, base + codes + 2 + counts)),
    )
    peft_model = get_peft_model(model, lora)
    _sparse_token_rows(peft_model)
    tied_rows = None
    if codebook is not None and cfg.code_tie:
        if codebook.shape[0] != codes:
            raise FinetuneError(f"the VST codebook has {codebook.shape[0]} codes, not {codes}")
        tied_rows = next(m for n, m in peft_model.named_modules() if n.endswith("trainable_tokens_delta"))
        parametrize.register_parametrization(
            tied_rows, "default", _code_tie(codebook, tied_rows["default"].shape[1]).to(device)
        )
    p = prompt.build(labels)
    prefix = tokenizer.encode(p.prefix, add_special_tokens=False)
    encoded = [encode(tokenizer, p, base, codes, ex, counts) for ex in examples]
    if any(ids[: len(prefix)] != prefix for ids, _ in encoded):
        raise FinetuneError("the prompt prefix does not tokenize the same in every example")
    encoded = [(ids[len(prefix) :], lab[len(prefix) :]) for ids, lab in encoded]
    prefix = torch.tensor(prefix, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = _batches(encoded, cfg.batch, pad, np.random.default_rng(cfg.seed))
    trainable = {n: q for n, q in peft_model.named_parameters() if q.requires_grad}
    rows = [q for n, q in trainable.items() if "trainable_tokens" in n]
    rest = [q for n, q in trainable.items() if "trainable_tokens" not in n]
    opt = torch.optim.AdamW([{"params": rest}, {"params": rows, "weight_decay": 0.0}], lr=cfg.lr)  # rows: no decay to 0
    sched = None
    if cfg.schedule == "one-cycle":
        from vst.train import one_cycle

        sched = one_cycle(opt, cfg.lr, cfg.steps)
    elif cfg.schedule != "constant":
        raise FinetuneError(f"unknown learning-rate schedule {cfg.schedule!r}: constant or one-cycle")
    peft_model.train()
    losses, start = [], 0
    os.makedirs(out, exist_ok=True)
    state_path = os.path.join(out, STATE)
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location=device, weights_only=False)
        old = state["config"]
        if (
            state["examples"] != len(examples)
            or old["seed"] != cfg.seed
            or old["batch"] != cfg.batch
            or old.get("schedule", "constant") != cfg.schedule
            or old.get("prefix_grad", True) != cfg.prefix_grad
            or old.get("lora_dropout", 0.05) != cfg.lora_dropout
            or state.get("counts", 0) != counts
            or (cfg.schedule != "constant" and (old["steps"], old["lr"]) != (cfg.steps, cfg.lr))
            or set(state["trainable"]) != set(trainable)
        ):
            raise FinetuneError(f"{state_path} was made with other examples or settings; start without --resume")
        with torch.no_grad():
            for n, q in trainable.items():
                q.copy_(state["trainable"][n])
        opt.load_state_dict(state["opt"])
        if sched is not None:
            sched.load_state_dict(state["sched"])
        losses, start = state["losses"], state["step"]
        for _ in range(start):
            next(batches)
    t0 = time.monotonic()
    for step in tqdm(
        range(start, cfg.steps), desc="finetune", unit="step", disable=not progress, initial=start, total=cfg.steps
    ):
        ids, lab, mask = (t.to(device) for t in next(batches))
        loss = shared_prefix_loss(peft_model, prefix, ids, lab, mask, cfg.prefix_grad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None and step + 1 < cfg.steps:  # its state keeps the last step's rate
            sched.step()
        losses.append(loss.item())
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            torch.save(
                {
                    "step": step + 1,
                    "trainable": {n: q.detach().clone() for n, q in trainable.items()},
                    "opt": opt.state_dict(),
                    "sched": sched and sched.state_dict(),
                    "losses": losses,
                    "examples": len(examples),
                    "counts": counts,
                    "config": asdict(cfg),
                },
                state_path + ".part",
            )
            os.replace(state_path + ".part", state_path)
    step_seconds = time.monotonic() - t0
    code_map_norm = None
    if tied_rows is not None:  # fold the map into the rows: the adapter and the merged model are plain again
        code_map_norm = float(tied_rows.parametrizations["default"][0].map.detach().norm())
        parametrize.remove_parametrizations(tied_rows, "default", leave_parametrized=True)
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "prompt_format_version": prompt.PROMPT_FORMAT_VERSION,
        "token_id_base": base,
        "codes": codes,
        "counts": counts,
        "labels": labels,
        "config": asdict(cfg),
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-10:])),
        "code_map_norm": code_map_norm,
        "device": device.type,
        "steps_run": cfg.steps - start,
        "step_seconds": round(step_seconds, 3),
    }
    with open(os.path.join(out, "lvlm.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return {"model": peft_model, **meta}


def merge(model, tokenizer, out: str, meta: dict | None = None) -> str:
    """Fold the LoRA weights and the trained token rows into the base weights (a peft model, or
    one already merged); save a plain Hugging Face model directory (what the GGUF export reads)."""
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    os.makedirs(out, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if meta is not None:
        with open(os.path.join(out, "lvlm.json"), "w") as f:
            json.dump(meta, f, indent=1)
    return out


def calibration_split(
    examples: list[dict], views: int, held: set[str], vst_unseen: bool = False
) -> tuple[list[dict], list[dict]]:
    """(training, calibration) windows from `build_examples` output, for the calibration performers
    `held` (`calibration_performers`). Training: views 0..views-1 of the other performers.
    Calibration, when the VST was not trained on them either (`vst_unseen`: `train vst
    --hold-out`): their windows as recorded (view 0), new to both models like a test performer's.
    Otherwise (a VST trained on every performer; the examples then need more than `views` views):
    their augmented views (view > 0), which read more like a test performer's than their plain
    windows. Both still read better than the synthetic X-Sub test split, whose performers are harder
    (docs/experiments.md: 94.0 % label top-1 on the augmented ones, 92.7 % on ones the VST never saw,
    against 84.5-85.8 % on test windows), so the fitted temperature comes out too sharp there.
    Clips without a performer id count as their own performer; when `held` would leave no
    training window (one performer), nothing calibrates."""
    from vst.ntu import performer_of

    train = [ex for ex in examples if performer_of(ex["clip"]) not in held]
    if not train:
        return [ex for ex in examples if ex["view"] < views], []
    cal = [ex for ex in examples if performer_of(ex["clip"]) in held]
    return [ex for ex in train if ex["view"] < views], [ex for ex in cal if (ex["view"] == 0) == vst_unseen]


def calibration_performers(
    vst_run: str, cache_dir: str, protocol: str | None, share: float = 0.15
) -> tuple[set[str], bool]:
    """(performers whose windows calibrate the label, whether the VST was trained without them):
    those `train vst --hold-out` kept from the VST, else `share` of the training split's
    performers (`vst.ntu.held_out_performers`)."""
    from vst.cache import Cache
    from vst.ntu import held_out_performers
    from vst.run_record import held_out

    if share <= 0:
        return set(), False
    vst_held = held_out(vst_run)
    if vst_held:
        return vst_held, True
    return held_out_performers([c["name"] for c in Cache.open(cache_dir).split("train", protocol)], share), False
