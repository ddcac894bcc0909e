"""Tiny randomly initialised language models built from configs (no downloads): a LLaMA and a
LLaVA whose language model is a LLaMA, both over the real SmolLM2 tokenizer's vocabulary."""

from __future__ import annotations

import torch

LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    initializer_range=0.3,
)  # output logits able to be confident


def tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **LLAMA))


def tiny_llava(vocab: int, image_token_id: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=32,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(vocab_size=vocab, **LLAMA),
        image_token_id=image_token_id,
        tie_word_embeddings=True,
    )
    return LlavaForConditionalGeneration(cfg)


def save_tiny_llava(folder, tokenizer) -> None:
    """A LLaVA checkpoint folder: the tokenizer gains the <image> token the way LLaVA's does."""
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    model = tiny_llava(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
