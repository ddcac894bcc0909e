"""The edge runtime: engines, windowing, message schema, ZeroMQ bus, LLM worker, sinks, config,
the `lvlm-var` command and service lifecycle. Never imports torch, transformers or peft."""
