"""The sparse "from scratch" controls: random weights on a sparsity pattern (methods-spec section 7).

Three controls for a pruned parent, each a function of the pruned model and its keep-masks (parameter name ->
bool, as `prune_sparse` returns them). All draw on the CPU from a seeded `torch.Generator` in fp32 and then cast
to the model's dtype and device, so a seed gives the same weights on any device; the global RNG is not touched.

| function | linear weights | embeddings, norms | mask |
|---|---|---|---|
| `reinit_surviving` (the paper's `reinit`) | survivors redrawn from N(0, std^2) | parent's, bit-identical | parent's |
| `random_init_same_mask` | every weight random (HF-style init) | random / 1 | parent's |
| `random_init_random_mask` | every weight random (HF-style init) | random / 1 | fresh, same pattern and counts |

`reinit_surviving` reproduces the reference `reinit.py`: every `nn.Linear`, the decoder linears *and*
`lm_head`, gets its surviving entries redrawn from a normal truncated at +-2 (absolute, so effectively
untruncated at std 0.02); zeros stay zero; embeddings and RMSNorm gains keep the pruned parent's values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litprune.pruning.patterns import nm_mask, parse_pattern
from litprune.utils.suggest import suggestion


def _check_masks(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters(remove_duplicate=False))
    problems = []
    for name, mask in masks.items():
        if name not in params:
            # A name with or without the wrapper's prefix ("model.") is the likely slip, so suggest by suffix.
            hint = suggestion([p for p in params if p.endswith(name) or name.endswith(p)][:2], sentence=False)
            problems.append(f"{name!r} is not a parameter of the model{f' ({hint})' if hint else ''}")
        elif mask.shape != params[name].shape:
            problems.append(f"{name!r}: mask shape {tuple(mask.shape)} != weight shape {tuple(params[name].shape)}")
        elif mask.dtype != torch.bool:
            problems.append(f"{name!r}: mask dtype is {mask.dtype}, expected torch.bool (True = keep)")
    if problems:
        raise ValueError(
            "The masks do not fit this model; masks are keyed by parameter name, e.g. "
            "'model.layers.0.self_attn.q_proj.weight':\n- " + "\n- ".join(problems)
        )
    return {name: params[name] for name in masks}


def _draw(shape: torch.Size, generator: torch.Generator, std: float, truncate: bool = False) -> Tensor:
    values = torch.empty(shape, dtype=torch.float32)
    if truncate:
        return nn.init.trunc_normal_(values, mean=0.0, std=std, a=-2.0, b=2.0, generator=generator)
    return values.normal_(0.0, std, generator=generator)


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), nn.Parameter)


@torch.no_grad()
def _full_random_init(model: nn.Module, generator: torch.Generator, std: float) -> None:
    """HF-style init of every parameter: Linear/Embedding ~ N(0, std^2), biases 0, norm gains 1."""
    done: set[int] = set()

    def write(param: Tensor, value: Tensor) -> None:
        if id(param) not in done:
            param.copy_(value.to(device=param.device, dtype=param.dtype))
            done.add(id(param))

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if id(module.weight) in done:  # tied weights are drawn once
                continue
            weight = _draw(module.weight.shape, generator, std)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                weight[module.padding_idx] = 0
            write(module.weight, weight)
            if getattr(module, "bias", None) is not None:
                write(module.bias, torch.zeros(module.bias.shape))
        elif _is_norm(module):
            write(module.weight, torch.ones(module.weight.shape))
            if getattr(module, "bias", None) is not None:
                write(module.bias, torch.zeros(module.bias.shape))
    missed = [name for name, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise ValueError(
            f"Random init covers Linear, Embedding and *Norm modules only; {type(model).__name__} also has "
            f"{missed[:4]}. This control supports Llama-style models."
        )


@torch.no_grad()
def reinit_surviving(
    model: nn.Module, masks: dict[str, Tensor], std: float = 0.02, seed: int = 42
) -> dict[str, Tensor]:
    """The paper's sparse scratch control: redraw the surviving weights of every linear, keep everything else.

    Every `nn.Linear` (the masked decoder linears and `lm_head`) gets its surviving entries drawn from
    N(0, std^2) truncated at +-2 (absolute bounds, as the reference); entries outside the survivors stay exactly
    0. Survivors are the mask's True entries for a masked weight, and the nonzero entries otherwise (all of
    `lm_head`). Embeddings and norm gains are not touched (bit-identical); biases, if any, are not touched.

    Args:
        model: the pruned model, modified in place.
        masks: parameter name -> bool keep-mask, e.g. `SparseResult.masks`.
        std: standard deviation of the redrawn weights (reference 0.02).
        seed: generator seed (reference 42).

    Returns:
        The masks used (the given ones).

    Raises:
        ValueError: a mask does not fit the model, or `lm_head` is tied to the embeddings (redrawing it would
            overwrite the embeddings this control keeps).
    """
    _check_masks(model, masks)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    generator = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if id(weight) in embeddings:
            raise ValueError(
                f"{name}.weight is tied to the input embeddings (tie_word_embeddings=True); reinit_surviving redraws "
                "every linear but keeps the embeddings. Untie them first or use random_init_same_mask."
            )
        key = f"{name}.weight"
        surviving = masks[key].to(weight.device) if key in masks else weight != 0
        fresh = _draw(weight.shape, generator, std, truncate=True).to(device=weight.device, dtype=weight.dtype)
        weight.copy_(torch.where(surviving, fresh, torch.zeros_like(fresh)))
    return masks


@torch.no_grad()
def random_init_same_mask(
    model: nn.Module, masks: dict[str, Tensor], seed: int = 0, std: float = 0.02
) -> dict[str, Tensor]:
    """Full random init of every weight (HF-style), then the parent's masks applied.

    Linear and Embedding weights ~ N(0, std^2) (the embedding padding row 0), biases 0, norm gains 1; then
    each masked weight's pruned entries are set to 0.

    Args:
        model: modified in place.
        masks: parameter name -> bool keep-mask.
        seed: generator seed.
        std: init standard deviation (HF `initializer_range`, 0.02 for Llama).

    Returns:
        The masks used (the given ones).
    """
    params = _check_masks(model, masks)
    _full_random_init(model, torch.Generator().manual_seed(seed), std)
    for name, mask in masks.items():
        params[name].masked_fill_(~mask.to(params[name].device), 0)
    return masks


def _random_mask_like(mask: Tensor, pattern: str, generator: torch.Generator) -> Tensor:
    scores = torch.rand(mask.shape, generator=generator)
    parsed = parse_pattern(pattern)
    if parsed.is_nm:
        return nm_mask(scores, parsed.n, parsed.m).to(mask.device)
    flat_mask = mask.reshape(mask.shape[0], -1).cpu()
    pruned_per_row = (~flat_mask).sum(dim=1, keepdim=True)  # [out, 1]
    rank = torch.argsort(torch.argsort(scores.reshape(flat_mask.shape), dim=1), dim=1)  # rank of each entry in its row
    return (rank >= pruned_per_row).reshape(mask.shape).to(mask.device)


@torch.no_grad()
def random_init_random_mask(
    model: nn.Module, masks: dict[str, Tensor], seed: int = 0, pattern: str = "unstructured", std: float = 0.02
) -> dict[str, Tensor]:
    """Full random init (HF-style) and a fresh random mask with the same pattern and counts per target.

    Args:
        model: modified in place.
        masks: the parent's parameter name -> bool keep-mask; only their pattern and counts are reused.
        seed: generator seed (weights first, then masks, from one generator).
        pattern: the parent's pattern. `"N:M"`: N random entries pruned in every aligned group of M, so the
            fresh masks are valid N:M. `"unstructured"`: each row prunes as many random entries as the same row
            of the given mask (so per-row and per-matrix counts are preserved).
        std: init standard deviation.

    Returns:
        The fresh masks (parameter name -> bool keep-mask), already applied to the weights.
    """
    params = _check_masks(model, masks)
    parse_pattern(pattern)
    generator = torch.Generator().manual_seed(seed)
    _full_random_init(model, generator, std)
    fresh: dict[str, Tensor] = {}
    for name, mask in masks.items():
        new_mask = _random_mask_like(mask, pattern, generator)
        params[name].masked_fill_(~new_mask.to(params[name].device), 0)
        fresh[name] = new_mask
    return fresh
