"""LiSET: SET whose growth favours the inputs that dense skip layers find useful (Radu, 2021).

For every sparse layer k a dense *skip layer* Ŵ_k maps that layer's input straight to the model's
output; during training its output is added to the model's logits before the loss, so it learns which
inputs of layer k carry linear features the main network has not used yet. Growth in layer k then
favours connections from those inputs. Evaluation and saved models use the main network only: the
skip layers live in the method, not in the model, and act only while ``model.training``.

The topology update is written once against the sparse-layer protocol
(:class:`~evosparse.topology.layer.SparseLayer`): SET's pruning
(:func:`~evosparse.criteria.magnitude.set_prune_positions`) and growth by source
(:meth:`~evosparse.topology.layer.SparseLayer.sample_inactive_by_source`) read only the active
positions, so every backend makes the same choices and nothing of size out x in is formed on csr. The
skip layers are dense but small (inputs x outputs of the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from evosparse.criteria.magnitude import set_prune_positions
from evosparse.errors import UsageError
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, grow_params, register
from evosparse.methods.context import MethodContext

#: Skip weights are drawn from U(±SKIP_INIT_SCALE/√fan_in): PyTorch's default linear bound, shrunk
#: 100-fold as in the authors' code, so a freshly (re-)initialised skip layer barely moves the logits.
SKIP_INIT_SCALE = 0.01

#: How the skip layers meet the training loss (the ``skip_mode`` parameter; see :class:`LiSET`).
SKIP_MODES = ("paper", "shadow")


def source_preference(skip_weight: torch.Tensor, gamma: float) -> torch.Tensor:
    """w̃ = σ(w / max(w) + γ) with w_i = ‖Ŵ[i, :]‖₁, one entry per input unit (LiSET, Algorithm 1).

    ``skip_weight`` is stored as PyTorch does, ``(outputs, inputs)``, so w_i is the L1 norm of column i.
    When every w_i is 0 the ratio w / max(w) is taken as 0, which makes all inputs equal.
    """
    norms = skip_weight.detach().abs().sum(dim=0).to(torch.float64)
    largest = norms.max()
    relative = norms / largest if largest > 0 else torch.zeros_like(norms)
    return torch.sigmoid(relative + gamma)


@register
class LiSET(Method):
    """SET pruning; growth draws connection (i, j) with probability ∝ σ(w_i / max w + γ) (LiSET, eq. 2).

    Eq. 2 states the ratio of the probabilities of two *connections* as the ratio of their sources'
    w̃, so each free position is weighted by its source's w̃; a large γ makes all w̃ equal and growth
    uniform over free positions, exactly SET's, as the paper says. The skip layers (no bias) are
    trained by the user's optimizer (a parameter group added here), each is dropped as a whole with
    probability ``skip_dropout`` per training forward pass, and all are re-initialised after every
    topology update.

    ``skip_mode="paper"`` adds the skip outputs to the logits the loss sees, as the paper does. Dense
    linear skip layers then learn faster than a very sparse main network and carry the training fit:
    on LeNet-300-100 at density 0.02 (MNIST, seed 1) the main network alone ended at 0.70 training
    accuracy where main + skips reached 0.94, and at 0.70 test accuracy where SET reached 0.93
    (docs/results.md, "LiSET at density 0.02"); the paper notes the delay ("the main network gets
    delayed from learning those features").
    ``skip_mode="shadow"`` keeps the logits' value the main network's own (the output is
    main + skips − skips.detach(), the skip layers reading detached inputs), so the main network trains
    exactly as it would alone, while each skip layer still receives the gradient it would get if its
    output were added: it learns which of its inputs would reduce the main network's loss, which is
    what growth reads.
    """

    name = "liset"
    summary = "SET whose growth favours inputs used by dense skip layers to the output (Radu 2021)"
    evolves = True
    supports_distributed = False
    params = (
        Param("gamma", 0.0, "γ: large → uniform growth (SET), small → growth concentrated on strong inputs"),
        Param("zeta", 0.3, "fraction of each layer's active weights replaced per update", minimum=0.0, maximum=1.0),
        Param(
            "skip_dropout",
            0.5,
            "probability that a skip layer is left out of a training forward pass",
            minimum=0.0,
            maximum=1.0,
        ),
        Param(
            "skip_mode",
            "paper",
            "paper: skip outputs are added to the training logits; shadow: the logits stay the main "
            "network's and the skip layers only receive the gradient they would get if added",
            choices=SKIP_MODES,
        ),
        *grow_params("normal", "as the original SET"),
        Param(
            "output_size",
            0,
            "width of the model output the skip layers add to; 0 = out_features of the model's last linear layer",
            minimum=0,
        ),
        *SCHEDULE_PARAMS,
    )

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.optimizer = context.require_optimizer(self.name, "trains skip layers with the model's optimizer")
        for layer in self.layers:
            if not layer.is_linear:
                raise UsageError(
                    f"liset supports linear layers only; {layer.name} belongs to a {type(layer.module).__name__}"
                )
        outputs = self.hparams["output_size"] or self._last_linear_width()
        self.skip_layers: list[nn.Linear] = [
            nn.utils.skip_init(nn.Linear, layer.shape[1], outputs, bias=False, device=layer.device, dtype=layer.dtype)
            for layer in self.layers
        ]
        self._reinitialise_skip_layers()
        self._inputs: dict[int, torch.Tensor] = {}

    def attach(self) -> None:
        """Train the skip layers with the user's optimizer; hooks keep each sparse layer's input and add the
        skip layers' outputs to the model's."""
        self.context.add_param_group(skip.weight for skip in self.skip_layers)
        self.add_hook(self.context.model.register_forward_hook(self._add_skip_outputs))
        for index, layer in enumerate(self.layers):
            self.add_hook(layer.module.register_forward_pre_hook(self._input_catcher(index)))

    def detach(self) -> None:
        """Also take the skip layers (training only) out of the user's optimizer."""
        super().detach()
        skip_weights = {id(skip.weight) for skip in self.skip_layers}
        for group in list(self.optimizer.param_groups):
            if {id(param) for param in group["params"]} == skip_weights:
                self.optimizer.param_groups.remove(group)
        for skip in self.skip_layers:
            self.optimizer.state.pop(skip.weight, None)

    # -- construction ---------------------------------------------------------------------------

    def _last_linear_width(self) -> int:
        """Output width of the model: that of its last ``nn.Linear`` (the model is untouched until ``attach``)."""
        linears = [m for m in self.context.model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UsageError("liset cannot tell the model's output width; give it with --param output_size=N")
        return linears[-1].out_features

    @torch.no_grad()
    def _reinitialise_skip_layers(self) -> None:
        """Fresh small uniform skip weights (from the method's generator) and no optimizer history."""
        for skip in self.skip_layers:
            bound = SKIP_INIT_SCALE / math.sqrt(skip.in_features)
            draws = (torch.rand(skip.weight.shape, generator=self.generator, dtype=torch.float64) * 2 - 1) * bound
            skip.weight.copy_(draws)
            self.optimizer.state.pop(skip.weight, None)

    # -- the training-time full network ---------------------------------------------------------

    def _input_catcher(self, index: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.context.model.training and args:
                self._inputs[index] = args[0]

        return hook

    def _add_skip_outputs(self, model: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook on the model: in training, add the outputs of the skip layers not dropped."""
        inputs, self._inputs = self._inputs, {}
        if not model.training:
            return None
        if not torch.is_tensor(output):
            raise UsageError("liset needs a model whose forward returns one tensor of logits")
        kept = torch.rand(len(self.skip_layers), generator=self.generator) >= self.hparams["skip_dropout"]
        shadow = self.hparams["skip_mode"] == "shadow"
        for index, features in inputs.items():
            if not kept[index]:
                continue
            extra = self.skip_layers[index](features.detach() if shadow else features)
            if extra.shape != output.shape:
                raise UsageError(
                    f"liset skip layer output {tuple(extra.shape)} does not match the model output "
                    f"{tuple(output.shape)}; set --param output_size"
                )
            output = output + (extra - extra.detach() if shadow else extra)
        return output

    def extra_parameters(self) -> int:
        """Number of skip-layer weights: trained alongside the model, but not part of it."""
        return sum(skip.weight.numel() for skip in self.skip_layers)

    # -- evolution --------------------------------------------------------------------------------

    def growth_weights(self, index: int) -> torch.Tensor:
        """Per-source weights for growth by source giving each free position weight w̃_i.

        Growth by source spreads a source's weight over its free positions, so passing w̃_i · free_i
        makes every free position (i, j) weigh w̃_i, as eq. 2 asks.
        """
        free_per_source = self.layers[index].free_per_source().cpu().to(torch.float64)
        return source_preference(self.skip_layers[index].weight, self.hparams["gamma"]).cpu() * free_per_source

    def growth_selection(self, index: int, count: int) -> torch.Tensor:
        """``count`` free flat positions of layer ``index``, each drawn with weight w̃ of its source."""
        return self.layers[index].sample_inactive_by_source(count, self.growth_weights(index), self.generator)

    def update(self) -> int:
        changed = 0
        for index, layer in enumerate(self.layers):
            free = layer.numel - layer.active
            prune = set_prune_positions(layer.active_positions(), layer.active_values(), free, self.hparams["zeta"])
            grow = self.growth_selection(index, prune.numel())
            changed += layer.rewire(prune, grow, self.grown_values(layer, grow.numel()))
        self._reinitialise_skip_layers()
        return changed

    # -- persistence ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"skip_weights": [skip.weight.detach().clone() for skip in self.skip_layers]}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("skip_weights")
        if not isinstance(saved, list) or len(saved) != len(self.skip_layers):
            raise UsageError(f"saved liset state does not hold {len(self.skip_layers)} skip layers")
        for skip, weight in zip(self.skip_layers, saved):
            if not torch.is_tensor(weight) or weight.shape != skip.weight.shape:
                raise UsageError(f"saved liset skip layer does not have shape {tuple(skip.weight.shape)}")
            skip.weight.copy_(weight)
