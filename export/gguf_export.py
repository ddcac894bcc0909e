"""The merged language model as a GGUF for llama.cpp, then quantized.

`write_gguf` converts a LLaMA-family Hugging Face directory (what `lvlm-var finetune` merges:
SmolLM2, LLaMA, Mistral, the language model of a LLaVA) with the `gguf` library: llama.cpp's
tensor names, the Q/K row permutation its rotary embedding expects, the byte-level BPE tokenizer
with the added action tokens at the ids training gave them, and the chat template. `quantize`
runs `llama_cpp.llama_model_quantize` on that F16 file. `logit_parity` and `label_agreement`
compare llama.cpp with transformers on the same ids.
"""

from __future__ import annotations

import json
import os

import numpy as np

QUANTS = {
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")


class ExportError(RuntimeError):
    """A model or bundle that cannot be exported: one clear line."""


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) -> llama.cpp's (interleaved pairs), per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pre_tokenizer(tok: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (the regex that splits text before BPE)."""
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    kinds = [(p.get("type"), p.get("individual_digits")) for p in parts]
    if kinds == [("Digits", True), ("ByteLevel", None)]:
        return "smollm"
    raise ExportError(
        f"the tokenizer's pre-tokenizer {json.dumps(pre)[:120]} is not supported by the GGUF export "
        "(byte-level BPE with the GPT-2 or SmolLM split is)"
    )


def _vocabulary(folder: str, vocab_size: int):
    """(tokens, token types, merges, pre) from tokenizer.json, in id order."""
    import gguf

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        raise ExportError(f"{folder}: no tokenizer.json (a fast byte-level BPE tokenizer is needed)")
    with open(path) as f:
        tok = json.load(f)
    model = tok["model"]
    if model.get("type") != "BPE":
        raise ExportError(f"{folder}: tokenizer model {model.get('type')} is not supported (byte-level BPE is)")
    tokens: list[str | None] = [None] * vocab_size
    types = [gguf.TokenType.NORMAL] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i] = text
    for added in tok.get("added_tokens", []):
        i = added["id"]
        if i >= vocab_size:
            raise ExportError(f"added token {added['content']!r} has id {i} beyond the embedding's {vocab_size} rows")
        tokens[i] = added["content"]
        types[i] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:  # rows without a token (padded embeddings): never produced, never fed
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    return tokens, types, merges, _pre_tokenizer(tok)


def write_gguf(folder: str, out: str, dtype: str = "F16", progress: bool = False) -> str:
    """Write `out` (F16 or F32 weights; norms stay F32) from a Hugging Face model directory."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(folder)
    arch = (cfg.architectures or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ExportError(
            f"{folder}: architecture {arch} is not supported by the GGUF export ({', '.join(ARCHITECTURES)} are)"
        )
    rope = getattr(cfg, "rope_parameters", None) or {
        "rope_type": "default",
        "rope_theta": getattr(cfg, "rope_theta", 10000.0),
    }
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"{folder}: rope scaling {rope.get('rope_type')!r} is not supported by the GGUF export")
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    tokens, types, merges, pre = _vocabulary(folder, cfg.vocab_size)
    hf_tok = AutoTokenizer.from_pretrained(folder)

    w = gguf.GGUFWriter(out, "llama")
    w.add_name(os.path.basename(os.path.abspath(folder)))
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "F16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for name, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("unk", w.add_unk_token_id),
        ("pad", w.add_pad_token_id),
    ):
        i = getattr(hf_tok, f"{name}_token_id", None)
        if i is not None:
            add(int(i))
    w.add_add_bos_token(False)  # lvlm.prompt starts with <|im_start|>; nothing is prepended
    w.add_add_space_prefix(False)
    if hf_tok.chat_template:
        w.add_chat_template(hf_tok.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise ExportError(f"{folder}: no .safetensors weights")
    float_type = np.float16 if dtype == "F16" else np.float32
    for file in files:
        with safe_open(os.path.join(folder, file), "pt") as st:
            for key in st.keys():
                if key == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # llama.cpp reuses token_embd
                if "rotary_emb" in key:
                    continue
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ExportError(f"{folder}: tensor {key} has no llama.cpp name")
                t = st.get_tensor(key).float().numpy()
                if key.endswith("q_proj.weight"):
                    t = permute_qk(t, heads)
                elif key.endswith("k_proj.weight"):
                    t = permute_qk(t, kv_heads)
                w.add_tensor(name, t.astype(float_type if t.ndim == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=progress)
    w.close()
    return out


def quantize(src: str, out: str, quant: str, threads: int = 0) -> str:
    import llama_cpp

    if quant not in QUANTS:
        raise ExportError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    try:  # llama.cpp logs every tensor's fallback type; keep errors only
        from llama_cpp import _logger

        _logger.set_verbose(False)
    except ImportError:
        pass
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = threads
    if llama_cpp.llama_model_quantize(src.encode(), out.encode(), params) != 0:
        raise ExportError(f"llama.cpp could not quantize {src} to {quant}")
    return out


TIE = 0.01  # reference probabilities this close count as a tie for the top-1 agreement


def logit_parity(hf_model, gguf: str, sequences: list[list[int]]) -> dict:
    """Top-1 agreement of the next-token prediction at every position, llama.cpp vs transformers:
    strict, and outside ties (llama.cpp's choice has a reference probability within TIE of the
    reference's top-1; a tiny or undertrained model has many near-ties that F16 rounding may
    flip), and the largest probability difference at a position: its maximum and 99th percentile
    over the positions (the maximum is one position's tail; the percentile is what F16 rounding
    does to most of them)."""
    import torch
    from llama_cpp import Llama

    from lvlm.reader import log_softmax

    llm = Llama(model_path=gguf, n_ctx=max(len(s) for s in sequences) + 8, logits_all=True, verbose=False)
    same = untied = total = 0
    per_position = []
    for ids in sequences:
        llm.reset()
        llm.eval(ids)
        ours = log_softmax(llm.scores[: len(ids)])
        with torch.no_grad():
            ref = hf_model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1).numpy()
        same += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        ref_p = np.exp(ref)
        untied += int((ref_p.max(-1) - ref_p[np.arange(len(ids)), ours.argmax(-1)] <= TIE).sum())
        total += len(ids)
        per_position.extend(np.abs(np.exp(ours) - ref_p).max(-1).tolist())
    llm.close()
    return {
        "positions": total,
        "top1_agreement": same / total,
        "top1_agreement_outside_ties": untied / total,
        "max_probability_difference": float(np.max(per_position)),
        "p99_probability_difference": float(np.percentile(per_position, 99)),
    }


def label_agreement(reference, candidate, windows: list[dict], progress: bool = False) -> dict:
    """Share of windows ({"tokens", "count"}) on which two Readers (e.g. transformers and a
    quantized GGUF) pick the same label."""
    from tqdm import tqdm

    same, diffs = 0, []
    for w in tqdm(windows, desc="label agreement", unit="window", disable=not progress):
        a, b = (r.label(w["tokens"], exhaustive=False, count=w.get("count"))[0] for r in (reference, candidate))
        same += a.label == b.label
        diffs.append(abs(a.probability - b.probability))
    return {
        "windows": len(windows),
        "label_agreement": same / max(len(windows), 1),
        "mean_probability_difference": float(np.mean(diffs)) if diffs else 0.0,
    }
