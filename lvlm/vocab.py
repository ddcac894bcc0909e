"""The action-token vocabulary: K new tokens <act_000>... plus <video>, </video> (and, for a VST
with a repetitions head, the count tokens <count_1>...), appended after the base vocabulary (ids
as `lvlm.prompt` lays them out), with embeddings initialised from words rather than zeros: each
code's row starts as the mean embedding of its glossary gloss and top class name, each count's
as that of its count words ("three times"), so the language model begins with a meaningful
guess of what a token stands for."""

from __future__ import annotations

from lvlm import prompt


def add_action_tokens(model, tokenizer, codes: int, glossary: dict | None = None, counts: int = 0) -> int:
    """Add the tokens, resize the embeddings, initialise the new rows; returns the id base."""
    import torch

    from vst.actions import times_word

    emb = model.get_input_embeddings()
    base = emb.weight.shape[0]
    if len(tokenizer) != base:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the embedding {base} rows; "
            "the action-token ids would not match between training and llama.cpp"
        )
    new = prompt.added_tokens(codes, counts)
    added = tokenizer.add_tokens(new, special_tokens=True)
    if added != len(new):
        raise ValueError(f"only {added} of {len(new)} action tokens were new; the tokenizer already has some")
    ids = tokenizer.convert_tokens_to_ids(new)
    if ids != list(range(base, base + len(new))):
        raise ValueError("added token ids are not contiguous after the base vocabulary")
    model.resize_token_embeddings(base + len(new), mean_resizing=False)
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        old = weight[:base]
        mean, std = old.mean(0), old.std(0)

        def words(text: str):
            tok = [t for t in tokenizer.encode(" " + text, add_special_tokens=False) if t < base]
            return old[tok].mean(0) if tok else mean

        weight[base] = words("video start")
        weight[base + 1] = words("video end")
        entries = (glossary or {}).get("codes", {})
        gen = torch.Generator().manual_seed(0)
        for i in range(codes):
            entry = entries.get(str(i))
            if entry:
                text = entry["gloss"] + " " + " ".join(name for _, name, _ in entry["classes"][:1])
                weight[base + 2 + i] = words(text)
            else:
                weight[base + 2 + i] = mean + 0.1 * std * torch.randn(mean.shape, generator=gen)
        for n in range(1, counts + 1):
            weight[base + 1 + codes + n] = words(times_word(n))
    return base
