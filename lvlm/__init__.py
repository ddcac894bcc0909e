"""The language-model side: action-token vocabulary, the prompt format, base-model loading,
LoRA fine-tuning and evaluation. `lvlm.prompt` and the label trie import the standard library only."""
