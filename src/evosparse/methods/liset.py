"""LiSET: SET whose growth favours the inputs that dense skip layers find useful (Radu, 2021).

For every sparse layer k a dense *skip layer* Ŵ_k maps that layer's input straight to the model's
output; during training its output is added to the model's logits before the loss, so it learns which
inputs of layer k carry linear features the main network has not used yet. Growth in layer k then
favours connections from those inputs. Evaluation and saved models use the main network only: the
skip layers live in the method, not in the model, and act only while ``model.training``.

The topology update is written once against the layer views
(:class:`~evosparse.backends.layer_view.SparseLayerView`): SET's pruning
(:func:`~evosparse.backends.set_on_view.set_prune_positions`) and growth by source
(:meth:`~evosparse.backends.layer_view.SparseLayerView.sample_inactive_by_source`) read only the
active positions, so the masked and csr backends make the same choices and nothing of size out x in
is formed on csr. The skip layers are dense but small (inputs x outputs of the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from evosparse.backends.set_on_view import set_prune_positions
from evosparse.errors import UsageError
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, grow_params, register

if TYPE_CHECKING:
    from evosparse.sparsifier import Sparsifier

#: Skip weights are drawn from U(±SKIP_INIT_SCALE/√fan_in): PyTorch's default linear bound, shrunk
#: 100-fold as in the authors' code, so a freshly (re-)initialised skip layer barely moves the logits.
SKIP_INIT_SCALE = 0.01


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
    """

    name = "liset"
    summary = "SET whose growth favours inputs used by dense skip layers to the output (Radu 2021)"
    evolves = True
    supports_distributed = False
    supports_csr: ClassVar[bool] = True
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
        *grow_params("normal", "as the original SET"),
        Param(
            "output_size",
            0,
            "width of the model output the skip layers add to; 0 = out_features of the model's last linear layer",
            minimum=0,
        ),
        *SCHEDULE_PARAMS,
    )

    def __init__(self, sparsifier: Sparsifier) -> None:
        super().__init__(sparsifier)
        optimizer = self.topology.optimizer
        if optimizer is None:
            raise UsageError("liset trains skip layers with the model's optimizer: pass the optimizer to sparsify()")
        self.optimizer: torch.optim.Optimizer = optimizer
        self._require_linear_layers()
        outputs = self.hparams["output_size"] or self._last_linear_width()
        self.skip_layers = nn.ModuleList(
            nn.utils.skip_init(
                nn.Linear, layer.shape[1], outputs, bias=False, device=layer.weight.device, dtype=layer.weight.dtype
            )
            for layer in self.topology.layers
        )
        self._reinitialise_skip_layers()
        optimizer.add_param_group({"params": list(self.skip_layers.parameters())})
        self._inputs: dict[int, torch.Tensor] = {}
        self.add_hook(self.sparsifier.model.register_forward_hook(self._add_skip_outputs))

    def attach(self) -> None:
        """A forward pre-hook on every (final) sparse layer keeps its input for the skip layers."""
        for index, layer in enumerate(self.topology.layers):
            self.add_hook(layer.module.register_forward_pre_hook(self._input_catcher(index)))

    # -- construction ---------------------------------------------------------------------------

    def _require_linear_layers(self) -> None:
        if not self.topology.layers:
            raise UsageError(
                "liset builds its skip layers before the csr layers of a model on the meta device exist; "
                "build the model on a real device"
            )
        for layer in self.topology.layers:
            if not isinstance(layer.module, nn.Linear) or layer.attr != "weight":
                raise UsageError(
                    f"liset supports linear layers only; {layer.name} belongs to a {type(layer.module).__name__}"
                )

    def _last_linear_width(self) -> int:
        linears = [m for m in self.sparsifier.model.modules() if isinstance(m, nn.Linear)]
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
            if self.sparsifier.model.training and args:
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
        for index, features in inputs.items():
            if not kept[index]:
                continue
            extra = self.skip_layers[index](features)
            if extra.shape != output.shape:
                raise UsageError(
                    f"liset skip layer output {tuple(extra.shape)} does not match the model output "
                    f"{tuple(output.shape)}; set --param output_size"
                )
            output = output + extra
        return output

    def extra_parameters(self) -> int:
        """Number of skip-layer weights: trained alongside the model, but not part of it."""
        return sum(p.numel() for p in self.skip_layers.parameters())

    # -- evolution --------------------------------------------------------------------------------

    def growth_weights(self, index: int) -> torch.Tensor:
        """Per-source weights for growth by source giving each free position weight w̃_i.

        Growth by source spreads a source's weight over its free positions, so passing w̃_i · free_i
        makes every free position (i, j) weigh w̃_i, as eq. 2 asks.
        """
        free_per_source = self.sparsifier.views[index].free_per_source().to(torch.float64)
        return source_preference(self.skip_layers[index].weight, self.hparams["gamma"]).cpu() * free_per_source

    def growth_selection(self, index: int, count: int) -> torch.Tensor:
        """``count`` free flat positions of layer ``index``, each drawn with weight w̃ of its source."""
        view = self.sparsifier.views[index]
        return view.sample_inactive_by_source(count, self.growth_weights(index), self.generator)

    def update(self) -> int:
        changed = 0
        for index, view in enumerate(self.sparsifier.views):
            prune = set_prune_positions(view, self.hparams["zeta"])
            grow = self.growth_selection(index, prune.numel())
            changed += view.rewire(prune, grow, self.grown_values(view, grow.numel()))
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
