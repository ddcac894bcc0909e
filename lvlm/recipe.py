"""A fine-tune recipe: the research switches of `lvlm-var finetune` that the defaults settle, in a
TOML or JSON file (`finetune --recipe FILE`), validated like the runtime config (unknown keys and
out-of-range values are refused with one line naming the field). The command line keeps what a
user tunes (steps, batch, learning rate, seed, data)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lvlm.finetune import FinetuneConfig, FinetuneError

_D = FinetuneConfig()


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_r: int = Field(_D.lora_r, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(_D.lora_alpha, ge=1, le=4096)
    lora_dropout: float = Field(
        _D.lora_dropout, ge=0, lt=1, description="dropout on the LoRA branches' inputs (made a CPU step ~28 % dearer)"
    )
    schedule: Literal["one-cycle", "constant"] = Field(
        _D.schedule, description="one-cycle: 10 % warm-up to lr, cosine down to ~0; constant: lr throughout"
    )
    code_tie: bool = Field(_D.code_tie, description="each action token's row tied to its VST code vector")
    prefix_grad: bool = Field(
        _D.prefix_grad, description="gradients through the shared instruction prefix's positions too (~20 % dearer)"
    )
    count_token: bool = Field(
        _D.count_token, description="end each video block with the VST's count (prompt format 2; false: format 1)"
    )


def load_recipe(path: str | None) -> Recipe:
    if path is None:
        return Recipe()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise FinetuneError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    try:
        if path.endswith(".json"):
            data = json.loads(raw)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(raw.decode())
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise FinetuneError(f"{path}: {where}: {err['msg']}") from None
    except ValueError as exc:
        raise FinetuneError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'TOML'} ({exc})") from None
