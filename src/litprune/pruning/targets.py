"""Which weight matrices are pruned: `targets`, one regex with one meaning across litprune.

`targets` is a regular expression that must match a *parameter* name completely (`re.fullmatch`), such as
`model.layers.3.mlp.up_proj.weight`. The same rule holds for the `SparseMask` callback (on the LightningModule's
`named_parameters()`), the `SparsePrune` init and the pruning functions (on the Hugging Face model's parameter
names; they prune the `nn.Linear` modules whose `weight` matches). A LightningModule usually holds the HF model
under an attribute (litprune's `CausalLM`: `model.`), so its names carry one more prefix; a regex that starts with
`(?:.*\\.)?` works on both.

The default, `DEFAULT_TARGETS`, selects the 7 linears of every Llama decoder layer (q/k/v/o projections and the
gated MLP), as the reference does (`find_layers` in Wanda/SparseGPT). Embeddings, RMSNorm gains and `lm_head` are
never default targets; a regex can narrow the selection (e.g. only the MLP) or, for data-free magnitude pruning,
reach `lm_head`. Targets are plain strings so a run is expressible in YAML:

    targets: '.*\\.mlp\\.(gate|up|down)_proj\\.weight'    # the MLP projections of every layer
"""

from __future__ import annotations

import re

from torch import nn

DECODER_LINEARS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The 7 `nn.Linear` modules of a Llama decoder layer, in forward order."""

DEFAULT_TARGETS = r"(?:.*\.)?(?:" + "|".join(DECODER_LINEARS) + r")\.weight"
"""The default `targets`: the weights of the 7 decoder linears of Hugging Face Llama-family models, wherever they
sit in the module tree: `(?:.*\\.)?(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\\.weight`."""


def compile_targets(targets: str) -> re.Pattern:
    """Compile a `targets` regex (to be used with `fullmatch` on parameter names).

    Raises:
        ValueError: `targets` is not a non-empty string or not a valid regular expression.
    """
    if not isinstance(targets, str) or not targets:
        raise ValueError(f"targets={targets!r} must be a non-empty regex string (re.fullmatch on parameter names).")
    try:
        return re.compile(targets)
    except re.error as err:
        raise ValueError(f"targets={targets!r} is not a valid regex ({err}).") from err


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the module name and the list of decoder layers of a Hugging Face causal LM.

    Works for `LlamaForCausalLM` (`model.layers`), a bare `LlamaModel` (`layers`) and the families that share
    that layout.

    Raises:
        ValueError: the model has no `layers` ModuleList.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layers":
            return name, module
    raise ValueError(
        f"Cannot find the decoder layers of {type(model).__name__}: no nn.ModuleList named 'layers'. "
        "Sparse methods expect a Hugging Face decoder-only model such as LlamaForCausalLM."
    )


def layer_index_of(name: str, layers_prefix: str) -> int | None:
    """The decoder-layer index a module name lies in (e.g. 3 for `model.layers.3.mlp.up_proj`), else None."""
    prefix = f"{layers_prefix}." if layers_prefix else ""
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def find_targets(model: nn.Module, targets: str = DEFAULT_TARGETS) -> dict[str, nn.Linear]:
    """Select the linear layers a sparse method prunes, keyed by module name, in model order.

    Args:
        model: a Hugging Face causal LM, e.g. `LlamaForCausalLM`.
        targets: regex that must fully match (`re.fullmatch`) the parameter name `<module name>.weight` of an
            `nn.Linear`, e.g. `'.*\\.mlp\\..*\\.weight'` for every MLP projection or `'lm_head\\.weight'`. Default:
            `DEFAULT_TARGETS`, the 7 decoder linears (q/k/v/o/gate/up/down_proj) of every layer. Only `nn.Linear`
            weights are candidates, so embeddings and norms are never selected.

    Returns:
        Module name -> module, e.g. `{"model.layers.0.self_attn.q_proj": Linear(...), ...}`.

    Raises:
        ValueError: `targets` is not a valid regex, or it selects nothing (the message shows some parameter
            names it could have matched).
    """
    regex = compile_targets(targets)
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    found = {name: module for name, module in linears.items() if regex.fullmatch(f"{name}.weight")}
    if not found:
        examples = ", ".join(f"{name}.weight" for name in list(linears)[:6]) or "(the model has no nn.Linear modules)"
        raise ValueError(
            f"targets={targets!r} matches no nn.Linear weight (re.fullmatch on parameter names). Some linear weight "
            f"names of this model: {examples}."
        )
    return found
