"""SparseMask with a real Trainer: masked weights stay zero, both semantics match a hand-written loop,
schedules prune what they promise, sparsity logging is right, and misconfigurations fail clearly."""

from __future__ import annotations

import csv
import itertools
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from sparse_mask_models import (
    MLP,
    TinyLlamaLM,
    mlp_loader,
    random_llama_masks,
    single_thread,  # noqa: F401  (fixture)
    token_loader,
    trainer_kwargs,
)
from torch import nn

from litprune.callbacks.sparse_mask import SparseMask
from litprune.pruning.patterns import nm_mask, unstructured_mask
from litprune.pruning.schedules import cubic_ratio

pytestmark = pytest.mark.usefixtures("single_thread")


def fit(module: pl.LightningModule, callbacks: list, loader, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(**kwargs))
    trainer.fit(module, loader)
    return trainer


# ---------------------------------------------------------------------------------------------- invariant 20


def test_masked_weights_exactly_zero_after_100_adamw_steps():
    """methods-spec invariant 20, with weight decay 0.1 and gradient clipping, on the 7 decoder linears."""
    module = TinyLlamaLM()
    masks = random_llama_masks(module)
    module.pruning_masks = masks
    start = {name: p.detach().clone() for name, p in module.named_parameters()}
    callback = SparseMask()
    trainer = fit(module, [callback], token_loader(), max_steps=100, gradient_clip_val=1.0)

    assert len(masks) == 7 * 4
    optimizer_state = trainer.optimizers[0].state
    for name, param in module.named_parameters():
        if name in masks:
            assert torch.count_nonzero(param[~masks[name]]) == 0, name
            # Gradients were masked before each update, so AdamW never built momentum for pruned entries.
            assert torch.count_nonzero(optimizer_state[param]["exp_avg"][~masks[name]]) == 0, name
            moved = (param[masks[name]] != start[name][masks[name]]).float().mean()
            assert moved > 0.9, f"{name}: only {moved:.0%} of kept weights trained"
        else:
            assert not torch.equal(param, start[name]), f"{name} (not targeted) should train"
    assert callback.sparsity_report()["sparsity/global"] == pytest.approx(0.5, abs=0.01)


def test_without_masks_adamw_revives_pruned_weights():
    """The control for the test above: the same run without the callback leaves no pruned weight at zero."""
    module = TinyLlamaLM()
    masks = random_llama_masks(module)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    fit(module, [], token_loader(), max_steps=5)
    param = dict(module.named_parameters())["model.model.layers.0.mlp.down_proj.weight"]
    assert torch.count_nonzero(param[~masks["model.model.layers.0.mlp.down_proj.weight"]]) > 0


# ---------------------------------------------------------------------------------------------- semantics


def reference_loop(semantics: str, clip_on: str, steps: int) -> dict[str, torch.Tensor]:
    """The update rule written out by hand: clip (norm 1.0), mask, AdamW, re-mask (explicit only)."""
    module = TinyLlamaLM()
    masks = random_llama_masks(module)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    optimizer = module.configure_optimizers()
    batches = itertools.cycle(token_loader())
    for _ in range(steps):
        module.training_step(next(batches), 0).backward()
        with torch.no_grad():
            if clip_on == "masked":
                for name, mask in masks.items():
                    params[name].grad.mul_(mask)
            torch.nn.utils.clip_grad_norm_(list(module.parameters()), 1.0)
            for name, mask in masks.items():
                grad = params[name].grad
                grad.mul_(params[name] != 0) if semantics == "paper" else grad.mul_(mask)
        optimizer.step()
        if semantics == "explicit":
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
        optimizer.zero_grad(set_to_none=True)
    return {name: p.detach().clone() for name, p in params.items()}


@pytest.mark.parametrize(
    ("semantics", "clip_on"), [("explicit", "unmasked"), ("explicit", "masked"), ("paper", "unmasked")]
)
def test_update_rule_matches_hand_written_loop(semantics, clip_on):
    """Clipping sees the gradient the option promises, and paper semantics zero grads where weight == 0."""
    module = TinyLlamaLM()
    module.pruning_masks = random_llama_masks(module)
    fit(
        module,
        [SparseMask(semantics=semantics, clip_on=clip_on)],
        token_loader(),
        max_steps=8,
        gradient_clip_val=1.0,
    )
    expected = reference_loop(semantics, clip_on, steps=8)
    for name, param in module.named_parameters():
        assert torch.equal(param.detach(), expected[name]), name


def test_clip_order_changes_the_update():
    """Guards the test above against vacuity: clipping masked vs unmasked gradients gives different weights."""
    unmasked = reference_loop("explicit", "unmasked", steps=3)
    masked = reference_loop("explicit", "masked", steps=3)
    assert any(not torch.equal(unmasked[name], masked[name]) for name in unmasked)


class ReviveOnePrunedWeight(pl.Callback):
    """Writes 0.5 into one pruned entry before the batch of step 3 (e.g. a buggy user hook)."""

    def __init__(self, name: str, index: tuple[int, int]) -> None:
        self.name, self.index = name, index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:
            with torch.no_grad():
                dict(pl_module.named_parameters())[self.name][self.index] = 0.5


@pytest.mark.parametrize("semantics", ["explicit", "paper"])
def test_paper_semantics_keep_zeros_without_remasking(semantics):
    module = TinyLlamaLM()
    masks = random_llama_masks(module)
    module.pruning_masks = masks
    name = "model.model.layers.1.self_attn.o_proj.weight"
    index = tuple(int(i) for i in (~masks[name]).nonzero()[0])
    fit(
        module,
        [ReviveOnePrunedWeight(name, index), SparseMask(semantics=semantics)],
        token_loader(),
        max_steps=30,
        gradient_clip_val=1.0,
    )
    params = dict(module.named_parameters())
    pruned_elsewhere = ~masks[name]
    pruned_elsewhere[index] = False
    # Every other pruned weight stays exactly zero in both semantics (AdamW moments of zeros stay zero).
    for other, mask in masks.items():
        region = ~mask if other != name else pruned_elsewhere
        assert torch.count_nonzero(params[other][region]) == 0, other
    revived = params[name][index].item()
    if semantics == "explicit":
        assert revived == 0.0  # re-masked after the next optimizer step
    else:
        assert revived != 0.0  # the paper's trainer never re-masks: a non-zero weight trains freely


# ---------------------------------------------------------------------------------------------- schedules


class RecordMasks(pl.Callback):
    """Copies SparseMask's masks at the start of every batch (runs after SparseMask's own batch-start hook)."""

    def __init__(self, sparse_mask: SparseMask) -> None:
        self.sparse_mask = sparse_mask
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.by_step[trainer.global_step] = {k: v.clone() for k, v in self.sparse_mask.masks.items()}


def test_one_shot_2of4_at_fit_start_on_tiny_llama():
    module = TinyLlamaLM()
    initial = {name: p.detach().clone() for name, p in module.named_parameters()}
    callback = SparseMask(mask_source="dense", schedule="one_shot", pattern="2:4")
    fit(module, [callback], token_loader(), max_steps=4)
    for name, mask in callback.masks.items():
        # Pruned before the first forward, from the initial weights; exactly 2 of every 4 inputs per row.
        assert torch.equal(mask, nm_mask(initial[name].abs(), 2, 4)), name
        assert torch.all((~mask).reshape(mask.shape[0], -1, 4).sum(-1) == 2)
        assert torch.count_nonzero(dict(module.named_parameters())[name][~mask]) == 0
    assert callback.current_ratio == 0.5 and callback.last_event_step == 0


def test_gradual_magnitude_follows_cubic_schedule_and_masks_only_shrink():
    module = MLP()
    callback = SparseMask(
        targets=r"net\.\d\.weight",
        mask_source="dense",
        schedule="gradual",
        ratio=0.8,
        start_step=0,
        end_step=8,
        frequency=2,
    )
    recorder = RecordMasks(callback)
    fit(module, [callback, recorder], mlp_loader(), max_steps=12)
    for step, masks in recorder.by_step.items():
        target = cubic_ratio(step, 0.0, 0.8, 0, 8, 2)
        for name, mask in masks.items():
            # Per-tensor magnitude (the reference rule) prunes exactly floor(s * numel) entries.
            assert (~mask).sum().item() == math.floor(target * mask.numel()), (step, name)
    steps = sorted(recorder.by_step)
    for before, after in zip(steps, steps[1:], strict=False):
        for name in recorder.by_step[before]:
            assert not torch.any(recorder.by_step[after][name] & ~recorder.by_step[before][name]), "a mask grew"
    assert callback.current_ratio == 0.8 and callback.last_event_step == 8


def test_gradual_nm_reaches_exact_pattern_only_at_the_end():
    module = MLP()
    callback = SparseMask(
        targets=r"net\.[02]\.weight",
        mask_source="dense",
        schedule="gradual",
        pattern="2:4",
        start_step=0,
        end_step=6,
        frequency=2,
        initial_ratio=0.25,
    )
    recorder = RecordMasks(callback)
    fit(module, [callback, recorder], mlp_loader(), max_steps=8)
    for step, expected_per_group in ((0, 1), (2, 1), (4, 1), (6, 2), (7, 2)):
        for name, mask in recorder.by_step[step].items():
            per_group = (~mask).reshape(mask.shape[0], -1, 4).sum(-1)
            assert torch.all(per_group == expected_per_group), (step, name)


class RecordInputs(pl.Callback):
    """Captures what Wanda needs, independently of SparseMask: every Linear's inputs on training batches,
    and the weights right before each batch (this callback is listed before SparseMask)."""

    def __init__(self, module: MLP) -> None:
        self.linears = {f"net.{i}.weight": module.net[i] for i in (0, 2, 4)}
        self.inputs: dict[int, dict[str, list[torch.Tensor]]] = {}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.step = None
        for name, linear in self.linears.items():
            linear.register_forward_pre_hook(self._hook(name))

    def _hook(self, name):
        def hook(mod, args):
            if self.step is not None:
                self.inputs.setdefault(self.step, {}).setdefault(name, []).append(args[0].detach().clone())

        return hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step
        self.weights[self.step] = {n: m.weight.detach().clone() for n, m in self.linears.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step = None


def test_gradual_wanda_scores_use_training_inputs_since_previous_event():
    module = MLP()
    probe = RecordInputs(module)
    callback = SparseMask(
        targets=r"net\.\d\.weight",
        mask_source="dense",
        schedule="gradual",
        score="wanda",
        ratio=0.5,
        initial_ratio=0.25,
        start_step=2,
        end_step=4,
        frequency=2,
        log_every_n_steps=1,
    )
    recorder = RecordMasks(callback)
    # Validation batches (scaled x100) must not leak into the statistics.
    trainer = pl.Trainer(
        callbacks=[probe, callback, recorder], **trainer_kwargs(max_steps=6, val_check_interval=1, limit_val_batches=1)
    )
    trainer.fit(module, mlp_loader(), mlp_loader(seed=5, scale=100.0))

    previous = {name: torch.ones_like(w, dtype=torch.bool) for name, w in probe.weights[0].items()}
    for event, since, target in ((2, (0, 1), 0.25), (4, (2, 3), 0.5)):
        for name, weight in probe.weights[event].items():
            x = torch.cat([t for step in since for t in probe.inputs[step][name]])  # [tokens, in]
            scores = weight.abs() * x.pow(2).sum(0).sqrt()
            expected = unstructured_mask(scores.masked_fill(~previous[name], float("-inf")), target) & previous[name]
            assert torch.equal(recorder.by_step[event][name], expected), (event, name)
            assert torch.all((~expected).sum(1) == int(target * weight.shape[1]))  # Wanda: per row
            previous[name] = expected


# ---------------------------------------------------------------------------------------------- generic modules


def test_any_lightning_module_configured_by_kwargs_only():
    module = MLP()
    biases = {n: p.detach().clone() for n, p in module.named_parameters() if n.endswith("bias")}
    callback = SparseMask(targets=r".*\.weight", mask_source="dense", schedule="one_shot", ratio=0.5)
    fit(module, [callback], mlp_loader(), max_steps=20)
    assert set(callback.masks) == {"net.0.weight", "net.2.weight", "net.4.weight"}
    for name, param in module.named_parameters():
        if name in callback.masks:
            assert (param == 0).sum().item() == param.numel() // 2
        else:
            assert not torch.equal(param, biases[name])  # biases are not masked and keep training


class TwoMatrices(nn.Module):
    """One module holding two pruned parameters of different sizes (Lightning ModelPruning miscounts this)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(8, 16))
        self.b = nn.Parameter(torch.randn(4, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x @ self.a.T, x @ self.b.T], dim=-1)


class TwoMatrixModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = TwoMatrices()
        g = torch.Generator().manual_seed(3)
        keep_a = torch.ones(8 * 16, dtype=torch.bool)
        keep_a[torch.randperm(128, generator=g)[:32]] = False  # 25% pruned
        keep_b = torch.ones(4 * 16, dtype=torch.bool)
        keep_b[torch.randperm(64, generator=g)[:48]] = False  # 75% pruned
        self.pruning_masks = {"block.a": keep_a.reshape(8, 16), "block.b": keep_b.reshape(4, 16)}

    def training_step(self, batch, batch_idx):
        return self.block(batch[:, :16]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_sparsity_logged_per_parameter_and_globally_with_two_params_in_one_module(tmp_path):
    module = TwoMatrixModule()
    callback = SparseMask(targets=r"block\.(a|b)", log_every_n_steps=2)
    logger = CSVLogger(tmp_path, name="run")
    fit(module, [callback], mlp_loader(), max_steps=6, logger=logger)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("sparsity/global")]
    assert [int(row["step"]) for row in rows] == [1, 3, 5]  # optimizer steps 2, 4, 6 under Lightning's labels
    for row in rows:
        assert float(row["sparsity/block.a"]) == pytest.approx(0.25)
        assert float(row["sparsity/block.b"]) == pytest.approx(0.75)
        # (32 + 48) / (128 + 64), not the mean of the two fractions (0.5) nor either one alone.
        assert float(row["sparsity/global"]) == pytest.approx(80 / 192)


def test_bf16_mixed_keeps_masks_and_trains():
    module = TinyLlamaLM()
    start = {name: p.detach().clone() for name, p in module.named_parameters()}
    callback = SparseMask(
        mask_source="dense", schedule="gradual", score="wanda", ratio=0.5, start_step=1, end_step=5, frequency=2
    )
    fit(module, [callback], token_loader(), max_steps=12, precision="bf16-mixed", gradient_clip_val=1.0)
    params = dict(module.named_parameters())
    for name, mask in callback.masks.items():
        assert params[name].dtype == torch.float32  # bf16-mixed keeps fp32 master weights
        assert torch.count_nonzero(params[name][~mask]) == 0, name
        assert torch.all((~mask).sum(1) == mask.shape[1] // 2), name
        assert (params[name][mask] != start[name][mask]).float().mean() > 0.9, name


def test_callback_reused_across_fits_leaves_no_hooks_behind():
    module = MLP()
    callback = SparseMask(targets=r".*\.weight", mask_source="dense", schedule="one_shot", ratio=0.5)
    for _ in range(2):
        trainer = fit(module, [callback], mlp_loader(), max_steps=3)
        optimizer = trainer.optimizers[0]
        assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    assert all(torch.count_nonzero(module.net[i].weight) == module.net[i].weight.numel() // 2 for i in (0, 2, 4))


# ---------------------------------------------------------------------------------------------- errors


def test_regex_matching_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"targets='.*nothing.*' matches none of the MLP's parameters"):
        fit(MLP(), [SparseMask(targets="nothing", mask_source="zeros")], mlp_loader(), max_steps=1)


def test_module_without_masks_is_a_clear_error():
    with pytest.raises(ValueError, match="reads `pruning_masks`.*MLP has none.*mask_source='zeros'"):
        fit(MLP(), [SparseMask(targets=r".*\.weight")], mlp_loader(), max_steps=1)


def test_module_masks_must_cover_exactly_the_targets():
    module = MLP()
    module.pruning_masks = {"net.0.weight": torch.ones(32, 16, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"no mask for targeted parameters \['net.2.weight', 'net.4.weight'\]"):
        fit(module, [SparseMask(targets=r".*\.weight")], mlp_loader(), max_steps=1)


def test_wanda_needs_linear_targets():
    callback = SparseMask(
        targets=r"block\.a", mask_source="dense", schedule="one_shot", score="wanda", ratio=0.5, start_step=1
    )
    with pytest.raises(ValueError, match="score='wanda' needs every target to be the weight of an nn.Linear"):
        fit(TwoMatrixModule(), [callback], mlp_loader(), max_steps=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": "("}, "targets='\\(' is not a valid regex"),
        ({"mask_source": "parent"}, "mask_source='parent' is not one of 'module', 'zeros', 'dense'"),
        ({"schedule": "cubic"}, "schedule='cubic' is not one of 'none', 'one_shot', 'gradual'"),
        ({"semantics": "implicit"}, "semantics='implicit' is not one of 'explicit', 'paper'"),
        ({"schedule": "one_shot", "ratio": 1.5}, "ratio=1.5 must be a pruned fraction in"),
        ({"schedule": "one_shot"}, "schedule='one_shot': pattern='unstructured' needs a ratio"),
        ({"schedule": "one_shot", "pattern": "2:4", "ratio": 0.6}, "Pattern 2:4 prunes exactly 0.5.*ratio=0.6 cannot"),
        ({"schedule": "one_shot", "pattern": "4:2"}, "pattern='4:2'.*0 < N < M"),
        ({"schedule": "gradual", "ratio": 0.5}, "schedule='gradual' needs `end_step`"),
        ({"schedule": "gradual", "ratio": 0.5, "end_step": 5, "start_step": 9}, "end_step=5 must be greater"),
        ({"schedule": "one_shot", "ratio": 0.5, "score": "wanda"}, "needs start_step >= 1"),
        ({"mask_source": "dense"}, "mask_source='dense' with schedule='none' would never prune"),
        ({"ratio": 0.5}, "ratio=0.5 is only used by a schedule"),
        ({"semantics": "paper", "clip_on": "masked"}, "clip_on='masked' contradicts semantics='paper'"),
        ({"frequency": 0}, "frequency=0 must be an integer >= 1"),
        ({"log_every_n_steps": 0}, "log_every_n_steps=0 must be an integer >= 1"),
        ({"per_row": "yes"}, "per_row='yes' must be true or false"),
        ({"masks_attribute": "not a name"}, "masks_attribute='not a name' must be a Python attribute name"),
        (
            {"semantics": "paper", "schedule": "one_shot", "ratio": 0.5, "reset_optimizer_state": False},
            "semantics='paper' with a schedule needs reset_optimizer_state=true",
        ),
    ],
)
def test_invalid_arguments_name_argument_value_and_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseMask(**kwargs)


def test_all_argument_problems_reported_together():
    with pytest.raises(ValueError) as info:
        SparseMask(mask_source="x", schedule="y", frequency=-1)
    assert (
        "mask_source='x'" in str(info.value) and "schedule='y'" in str(info.value) and "frequency=-1" in str(info.value)
    )


class RecreateOptimizers(pl.Callback):
    """Re-runs `configure_optimizers` mid-fit (as callbacks that rebuild a model or an optimizer do)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2 and batch_idx == 2:
            trainer.strategy.setup_optimizers(trainer)


def test_masks_follow_optimizers_recreated_during_fit():
    module = MLP()
    callback = SparseMask(targets=r".*\.weight", mask_source="dense", schedule="one_shot", ratio=0.5)
    trainer = fit(module, [RecreateOptimizers(), callback], mlp_loader(), max_steps=6)
    state = trainer.optimizers[0].state
    for name, mask in callback.masks.items():
        param = dict(module.named_parameters())[name]
        assert torch.count_nonzero(param[~mask]) == 0, name
        assert torch.count_nonzero(state[param]["exp_avg"][~mask]) == 0, name  # the new optimizer's grads masked


class ManualMLP(MLP):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        optimizer.step()  # no closure: the step pre-hook masks the final gradients directly


def test_manual_optimization_is_masked_too():
    module = ManualMLP()
    callback = SparseMask(targets=r".*\.weight", mask_source="dense", schedule="one_shot", ratio=0.5)
    trainer = fit(module, [callback], mlp_loader(), max_steps=6)
    state = trainer.optimizers[0].state
    for name, mask in callback.masks.items():
        param = dict(module.named_parameters())[name]
        assert torch.count_nonzero(param[~mask]) == 0, name
        assert torch.count_nonzero(state[param]["exp_avg"][~mask]) == 0, name


def test_every_lightning_hook_is_marked_override():
    """A renamed or mistyped hook would silently never run; `@override` makes type checkers catch it."""
    overridden = [name for name in vars(SparseMask) if hasattr(pl.Callback, name) and not name.startswith("__")]
    assert {"setup", "state_dict", "load_state_dict", "on_fit_start", "teardown", "state_key"} <= set(overridden)
    for name in overridden:
        member = vars(SparseMask)[name]
        function = member.fget if isinstance(member, property) else member
        assert getattr(function, "__override__", False), f"SparseMask.{name} lacks @override"
