"""Which weight matrices a sparse method prunes: the decoder linears, selected by module name.

By default every decoder layer's 7 linears are targets (q/k/v/o projections and the gated MLP), as in the
reference (`find_layers` in Wanda/SparseGPT). Embeddings, RMSNorm gains and `lm_head` are never targets by
default; a regex can narrow the selection (e.g. only the MLP) or, for data-free magnitude pruning, reach
`lm_head`. Targets are plain strings so a run is expressible in YAML:

    targets: "mlp\\.(gate|up|down)_proj"    # re.search against names such as model.layers.3.mlp.up_proj
"""

from __future__ import annotations

import re

from torch import nn

DECODER_LINEARS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The 7 `nn.Linear` modules of a Llama decoder layer, in forward order."""


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


def find_targets(model: nn.Module, pattern: str | None = None) -> dict[str, nn.Linear]:
    """Select the linear layers a sparse method prunes, keyed by module name, in model order.

    Args:
        model: a Hugging Face causal LM, e.g. `LlamaForCausalLM`.
        pattern: regular expression matched with `re.search` against the full module name of every
            `nn.Linear` (so `"mlp"` selects all MLP projections; anchor with `^...$` for an exact name).
            None selects the 7 decoder linears (q/k/v/o/gate/up/down_proj) of every layer. Only `nn.Linear`
            modules are candidates, so embeddings and norms are never selected.

    Returns:
        Module name -> module, e.g. `{"model.layers.0.self_attn.q_proj": Linear(...), ...}`.

    Raises:
        ValueError: the pattern is not a valid regex, or it selects nothing (the message shows some names
            it could have matched).
    """
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if pattern is None:
        layers_prefix, _ = decoder_layers(model)
        found = {
            name: module
            for name, module in linears.items()
            if layer_index_of(name, layers_prefix) is not None and name.split(".")[-1] in DECODER_LINEARS
        }
        if not found:
            raise ValueError(
                f"No decoder linears ({', '.join(DECODER_LINEARS)}) found under '{layers_prefix}' in "
                f"{type(model).__name__}. Pass a `targets` regex that names this model's linear layers."
            )
        return found
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"targets={pattern!r} is not a valid regular expression: {err}.") from err
    found = {name: module for name, module in linears.items() if regex.search(name)}
    if not found:
        examples = ", ".join(list(linears)[:6]) or "(the model has no nn.Linear modules)"
        raise ValueError(
            f"targets={pattern!r} matches no nn.Linear module (matched with re.search on module names). "
            f"Some linear module names of this model: {examples}."
        )
    return found
