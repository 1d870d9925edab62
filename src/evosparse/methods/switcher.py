"""Switcher networks (SNN–TNN; Han, Liu, Hai, Li: "Explore the knowledge contained in network weights to
obtain sparse neural networks").

For every fully connected layer of the task network a small CNN, the *switcher*
(:class:`~evosparse.methods.switcher_net.SwitcherNet`), reads the layer's weight matrix W and outputs
gates: a matrix Z shaped like W (``mode="connection"``, effective weight W⊙Z) or one gate per input
neuron (``mode="neuron"``, that neuron's activation times its gate). A gate of 0 removes the
connection (or every connection of the neuron). Switchers and task network are trained alternately on
the task loss: even epochs train the switchers with the task network frozen, odd epochs the task network
with the gates fixed (the paper's Algorithm).

How it sits in a training loop that knows nothing about it (the user calls ``optimizer.step();
s.step()`` and ``s.end_epoch()``):

* hooks on the gated layers apply the gates. Connection mode: a forward hook recomputes the layer's
  output as ``F.linear(x, W⊙Z, b)`` (the masked layer holds on to the ``weight`` parameter, so the layer's
  own product is computed and discarded; ``bench/switcher_cost.py`` measures what that costs). Neuron
  mode: a forward pre-hook scales the layer's input by the gates (and in switcher epochs a forward
  hook adds the contribution of switched-off columns, see *dormant* weights below);
* in switcher epochs an optimizer step pre-hook removes every gradient of the user's optimizer, so
  SGD/Adam leave the task parameters and their state exactly as they are, and ``after_step`` steps the
  method's own optimizer of the switchers. The gates used in the forward pass are a leaf tensor; its
  gradient is pushed back through the switchers at their step, which allows accumulating it over
  ``switcher_interval`` batches (plain gradient accumulation: W is frozen, so Z is constant between
  switcher steps);
* at the end of a switcher epoch the gates for the coming task epoch are computed once and fixed (the
  task network "adapts to this new structure", section 3.1.2), and the masks are set to the non-zero
  gates through the layers' ``rewire``.

The switchers read the dense weight matrix W, so the method runs on the masked backend only
(``supports_csr`` is False): it reads W as the ``weight`` of each gated ``nn.Linear``.

The paper's task network keeps the weight of a switched-off connection (W_final = W⊙Z), while the
sparse-layer invariant makes masked weights 0. So the method keeps switched-off values aside as
*dormant* weights D: the switchers read the full matrix W + D, switcher epochs compute with (W + D)⊙Z
(a gate that turns a connection back on gets a gradient from its old weight), and a connection switched
back on at the end of a switcher epoch is regrown with its dormant value. In task epochs D⊙Z = 0.

Masks follow the gates at the end of every switcher epoch and are exact throughout task epochs; the
density the run reports counts the non-zero gates (``active_connections``), so it is exact in switcher
epochs too. A run that ends with a switcher epoch fixes its last gates as masks after it (the method's
``updates_after_final_epoch``); the task network has not adapted to them, but result and export are
those of the gated network W⊙Z that was evaluated.

Departures from the paper, all measured: the switchers' output convolution starts with bias 1 and
Kaiming weights scaled by 0.01, so every gate starts near 1 and training starts from the dense task
network (see ``SwitcherNet.reset_parameters``); their default learning rate is 0.01 (the paper: 0.1);
and the first epoch trains the task network (``first_phase="task"``; the paper's Algorithm starts with
the switchers). On a still random task network, shrinking every gate is the quickest way to lower the
loss, and a ReLU gate at 0 gets no gradient: on MNIST (784-300-100-10, batch 64) the paper's order
switched every input pixel off in the first epoch of neuron mode (accuracy 0.1135 for good, even at
learning rate 0.01), and at 0.1 whole layers of neuron gates died on digits. Finally the switchers step
once every 32 batches of a switcher epoch (``switcher_interval``, their gradient averaged; the paper:
every batch): a switcher epoch then costs 1.5–2.3 task epochs instead of 14, and on MNIST (3 seeds) the
final accuracy was 0.9697 ± 0.0035 against 0.9639 ± 0.0073 stepping every batch at density 0.05, and
0.9636 ± 0.0093 against 0.9678 ± 0.0015 at a budget of 47.7K weights (docs/results.md).

The paper's configuration is a choice of parameters: ``first_phase="switcher"`` (epoch 0 trains the
switchers), ``gate_init="kaiming"`` (the output convolution initialised like every other weight, so
the gates start wherever the random switcher puts them, many at 0) and no budget; with
``freeze_batchnorm`` the task network's BatchNorm running statistics, too, stay as they are through
switcher epochs (the paper does not say; it fixes the task network there). On MNIST this
configuration grew no sparsity: the density stayed that of the random initial gates or rose, and 6 of
10 runs without a budget ended near chance, most with a layer whose gates were all 0 (docs/results.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from evosparse.errors import UsageError
from evosparse.methods.base import Method, Param, register
from evosparse.methods.context import MethodContext
from evosparse.methods.switcher_net import GATE_INITS, MODES, SwitcherNet
from evosparse.topology.budget import BudgetRequest
from evosparse.topology.layer import SparseLayer, positions_by_parameter

SWITCHER_OPTIMIZERS = ("sgd", "adam")
PHASES = ("task", "switcher")


@register
class Switcher(Method):
    """Learned gates per connection or per input neuron of every linear layer, trained alternately.

    Dense to sparse with no fixed budget: the density is what the gates reach. With ``target_density``
    each gated layer keeps at most that fraction of its connections: its largest gates (for neurons,
    its largest neuron gates; that many columns), the others are forced to 0 in every forward pass.
    Only ``nn.Linear`` weights are gated; other sparsifiable layers (convolutions) stay dense.
    """

    name = "switcher"
    summary = "per-layer U-Net switchers learn gates of connections or neurons, trained alternately (Han et al.)"
    evolves = True
    supports_distributed = False
    fixed_budget = False
    starts_dense = True
    supports_csr = False
    needs_budget = False
    updates_after_final_epoch = True
    params = (
        Param("mode", "connection", "gate every connection (Z shaped like W) or every input neuron", choices=MODES),
        Param(
            "target_density",
            0.0,
            "keep at most this fraction of each linear layer's connections (the largest gates); 0 = no budget",
            minimum=0.0,
            maximum=1.0,
        ),
        Param(
            "first_phase",
            "task",
            "what the first epoch trains: the task network (ours, see the class notes) or the switchers (the paper)",
            choices=PHASES,
            paper="switcher",
        ),
        Param(
            "gate_init",
            "one",
            "gates start near 1 (ours, see the class notes) or from a Kaiming-initialised output layer (the paper)",
            choices=GATE_INITS,
            paper="kaiming",
        ),
        Param(
            "freeze_batchnorm",
            False,
            "keep the task network's BatchNorm running statistics unchanged in switcher epochs",
            paper=True,
        ),
        Param("switcher_optimizer", "sgd", "optimizer of the switchers (the paper: SGD)", choices=SWITCHER_OPTIMIZERS),
        Param(
            "switcher_lr",
            0.01,
            "learning rate of the switchers (see the class notes)",
            minimum=0.0,
            paper=0.1,
        ),
        Param("switcher_momentum", 0.0, "SGD momentum of the switchers (the paper names none)", minimum=0.0),
        Param("switcher_weight_decay", 0.0, "weight decay of the switchers", minimum=0.0),
        Param(
            "switcher_interval",
            32,
            "batches per switcher step in switcher epochs, gate gradients averaged over them",
            minimum=1,
            paper=1,
        ),
        Param("channels", 4, "feature channels of every switcher level", minimum=1),
        Param("depth", 3, "encoder levels of a switcher (fewer when a layer has few outputs)", minimum=1),
        Param("kernel", 3, "convolution kernel size of the switchers (odd)", minimum=1),
        Param("update_unit", "epoch", "fixed: the phases alternate every epoch", choices=("epoch",)),
        Param("update_interval", 1, "fixed: the phases alternate every epoch", minimum=1, maximum=1),
        Param("update_until", 1.0, "fixed: the phases alternate until the end", minimum=1.0, maximum=1.0),
    )

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.optimizer = context.require_optimizer(self.name, "freezes the task network through its optimizer")
        self.gated = [index for index, layer in enumerate(self.layers) if layer.is_linear]
        if not self.gated:
            raise UsageError("switcher gates fully connected layers, and the model has no nn.Linear layer")
        self.switchers = nn.ModuleList(self._build_switcher(index) for index in self.gated)
        self.switcher_optimizer = self._build_optimizer()
        self.target_density = context.plan.density or 0.0
        self.budgets = [self._gate_budget(index) for index in self.gated]
        #: Values of switched-off connections (0 elsewhere), one matrix per gated layer.
        self.dormant = [torch.zeros_like(self._weight(slot).detach()) for slot in range(len(self.gated))]
        #: Gates used by the forward hooks (None: compute them when next needed). In switcher epochs they
        #: are leaves that collect the task loss's gradient; ``_outputs`` holds the switchers' graphs.
        self._gates: list[torch.Tensor | None] = [None] * len(self.gated)
        self._outputs: list[torch.Tensor] | None = None
        self._accumulated = 0
        #: Each gated layer's mask as a dense boolean matrix, kept while the method alone rewires the layer
        #: (None: rebuild it from the active positions when next needed).
        self._masks: list[torch.Tensor | None] = [None] * len(self.gated)

    @classmethod
    def budget_request(cls, hparams: Mapping[str, Any], density: float | None, epsilon: float | None) -> BudgetRequest:
        """The budget: ``target_density``, else the run's ``--density`` (0 or 1 = none); both must agree."""
        own = hparams["target_density"]
        requested = density if density is not None and density < 1.0 else None
        if own > 0 and requested is not None and abs(own - requested) > 1e-12:
            raise UsageError(f"switcher got target_density={own} and density={requested}; give one of them")
        target = own if own > 0 else requested
        return BudgetRequest(cls.name, target, epsilon, required=False, starts_dense=cls.starts_dense)

    def attach(self) -> None:
        """The gating hooks; with a budget, or when training starts with a task epoch, masks from the
        initial gates (here, not in ``__init__``: the switchers must read the weights as initialised)."""
        self._install_hooks()
        if self.target_density > 0 or not self.in_switcher_phase():
            self._masks_follow_initial_gates()

    # -- construction ---------------------------------------------------------------------------

    def _layer(self, slot: int) -> SparseLayer:
        return self.layers[self.gated[slot]]

    def _weight(self, slot: int) -> nn.Parameter:
        """W of gated layer ``slot``: the dense weight of its ``nn.Linear`` (masked backend only)."""
        weight = self._layer(slot).module.weight
        assert isinstance(weight, nn.Parameter)
        return weight

    def _mask(self, slot: int) -> torch.Tensor:
        """The boolean mask of gated layer ``slot`` (its active positions, shaped like W).

        Read by every gated forward pass under a budget, so it is built once per topology change, not per pass.
        """
        mask = self._masks[slot]
        layer = self._layer(slot)
        if mask is None or mask.device != layer.device:
            mask = torch.zeros(layer.numel, dtype=torch.bool, device=layer.device)
            mask[layer.active_positions()] = True
            mask = self._masks[slot] = mask.view(layer.shape)
        return mask

    def _build_switcher(self, index: int) -> SwitcherNet:
        layer = self.layers[index]
        out_features, in_features = layer.shape
        net = SwitcherNet(
            out_features,
            in_features,
            self.hparams["mode"],
            channels=self.hparams["channels"],
            depth=self.hparams["depth"],
            kernel=self.hparams["kernel"],
            gate_init=self.hparams["gate_init"],
            generator=self.generator,
        )
        return net.to(layer.device, layer.dtype)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = self.switchers.parameters()
        lr, decay = self.hparams["switcher_lr"], self.hparams["switcher_weight_decay"]
        if self.hparams["switcher_optimizer"] == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.hparams["switcher_momentum"], weight_decay=decay)

    def _gate_budget(self, index: int) -> int | None:
        """How many gates layer ``index`` may keep under the budget (None: no budget).

        The global ``target_density`` is split over the layers by the run's ``distribution``, as for
        every other method, so that a comparison gives each layer the same budget whatever the method
        (a uniform split starved the 100×10 output layer of LeNet-300-100 at 2%: 20 weights).
        """
        if self.target_density <= 0:
            return None
        target = self.context.plan.densities[index]
        out_features, in_features = self.layers[index].shape
        gates = in_features if self.hparams["mode"] == "neuron" else out_features * in_features
        return max(1, round(target * gates))

    def _install_hooks(self) -> None:
        for slot in range(len(self.gated)):
            module = self._layer(slot).module
            if self.hparams["mode"] == "neuron":
                self.add_hook(module.register_forward_pre_hook(self._neuron_gating(slot)))
                self.add_hook(module.register_forward_hook(self._dormant_columns(slot)))
            else:
                self.add_hook(module.register_forward_hook(self._connection_gating(slot)))
        self.add_hook(self.optimizer.register_step_pre_hook(self._drop_task_gradients))
        if self.hparams["freeze_batchnorm"]:
            for module in self.context.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    self._keep_running_statistics(module)

    def _keep_running_statistics(self, module: nn.Module) -> None:
        """Hooks keeping the running statistics of ``module`` (a BatchNorm layer) out of its training-mode
        forward passes in switcher epochs: the pass updates copies, and the buffers are put back after it
        (not copied into: autograd may hold them). The pass itself normalises with the batch's
        statistics, as in a task epoch."""
        saved: list[tuple[str, torch.Tensor]] = []

        def save(module: nn.Module, args: tuple[Any, ...]) -> None:
            if module.training and self.in_switcher_phase():
                saved[:] = list(module.named_buffers(recurse=False))
                for name, buffer in saved:
                    setattr(module, name, buffer.clone())

        def restore(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            for name, buffer in saved:
                setattr(module, name, buffer)
            saved.clear()

        self.add_hook(module.register_forward_pre_hook(save))
        self.add_hook(module.register_forward_hook(restore))

    # -- the gated forward pass -----------------------------------------------------------------

    def _connection_gating(self, slot: int) -> Callable[..., torch.Tensor]:
        def hook(module: nn.Linear, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return F.linear(args[0], self.gated_weight(slot), module.bias)

        return hook

    def _neuron_gating(self, slot: int) -> Callable[..., tuple[Any, ...]]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0] * self.gate(slot), *args[1:])

        return hook

    def _dormant_columns(self, slot: int) -> Callable[..., torch.Tensor | None]:
        """Forward hook adding what switched-off neurons contribute while switcher epochs re-gate them."""

        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not self.in_switcher_phase() or not self.dormant[slot].any():
                return None
            return output + F.linear(args[0], self.dormant[slot])

        return hook

    def full_weight(self, slot: int) -> torch.Tensor:
        """W + D of gated layer ``slot``: the task network's matrix including switched-off values."""
        return self._weight(slot) + self.dormant[slot]

    def gated_weight(self, slot: int) -> torch.Tensor:
        """The effective weight (W + D)⊙Z; in task epochs D⊙Z = 0 (D lies where the fixed gates are 0).

        In switcher epochs W is frozen, so W + D is detached: the backward pass computes no dL/dW only
        for the optimizer step hook to drop it.
        """
        weight = self.full_weight(slot).detach() if self.in_switcher_phase() else self._weight(slot)
        return weight * self.gate(slot)

    def in_switcher_phase(self) -> bool:
        """Whether the current epoch trains the switchers: every other epoch, from the first or the second.

        With ``first_phase="switcher"`` these are the even epochs counted from 0 (the paper's Algorithm).
        """
        first = 0 if self.hparams["first_phase"] == "switcher" else 1
        return self.context.epoch % 2 == first

    def gate(self, slot: int) -> torch.Tensor:
        """The gates of gated layer ``slot`` as the forward pass uses them (computed when missing).

        Under a budget in a switcher epoch, only the connections (or neurons) selected when the epoch
        began take part in the forward pass, as in the task epoch before, and only their gates get a
        gradient; the selection follows the gates (the largest within the budget) at the end of the
        epoch. Two alternatives failed, measured: re-selecting the largest gates after every switcher
        step reshuffled the network from step to step while the gates were nearly tied (MNIST accuracy
        at chance within the first switcher epoch at density 0.05); and passing gradients straight
        through to the unselected gates let their mass (80% of the gates at density 0.2) drive the
        shared switcher weights until every gate was 0 (digits, both modes).
        """
        gates = self._gates[slot]
        if gates is None:
            self._compute_gates()
            gates = self._gates[slot]
            assert gates is not None
        if self.budgets[slot] is None or not self.in_switcher_phase():
            return gates
        return gates * self._selected(slot)

    def _selected(self, slot: int) -> torch.Tensor:
        """The gates kept under the budget since the last selection: the active connections (or neurons)."""
        mask = self._mask(slot)
        return mask.any(dim=0) if self.hparams["mode"] == "neuron" else mask

    def _compute_gates(self) -> None:
        """Run the switchers: with their graph kept in switcher epochs, without gradient otherwise.

        The gates are kept for later training steps, so they are never inference tensors, even when
        first needed by an evaluation under ``torch.inference_mode()``.
        """
        training = self.in_switcher_phase()
        with torch.inference_mode(False), torch.set_grad_enabled(training):
            outputs = [net(self.full_weight(slot).detach()) for slot, net in enumerate(self.switchers)]
        if not training:
            outputs = [self._within_budget(slot, gates) for slot, gates in enumerate(outputs)]
        self._outputs = outputs if training else None
        self._gates = [out.detach().requires_grad_(training) for out in outputs]

    def _within_budget(self, slot: int, gates: torch.Tensor) -> torch.Tensor:
        """``gates`` with all but the ``budget`` largest set to 0 (unchanged without a budget)."""
        budget = self.budgets[slot]
        if budget is None or budget >= gates.numel():
            return gates
        keep = torch.zeros(gates.numel(), dtype=torch.bool, device=gates.device)
        keep[torch.topk(gates.detach().flatten(), budget, sorted=False).indices] = True
        return gates * keep.view_as(gates)

    # -- alternating training -------------------------------------------------------------------

    def _drop_task_gradients(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer step pre-hook: in switcher epochs the task network gets no gradient, so no update."""
        if not self.in_switcher_phase():
            return
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None

    def after_step(self) -> None:
        if not self.in_switcher_phase() or self._gates[0] is None:
            return
        self._accumulated += 1
        if self._accumulated >= self.hparams["switcher_interval"]:
            self._step_switchers()

    def _step_switchers(self) -> None:
        """Back-propagate the gates' accumulated gradient (mean per batch) through the switchers; step."""
        if self._accumulated == 0:
            return
        grads = [None if gates is None else gates.grad for gates in self._gates]
        if self._outputs is None:  # restored from a checkpoint: same switchers and weights, same gates
            self._compute_gates()
        assert self._outputs is not None
        pairs = [(out, grad / self._accumulated) for out, grad in zip(self._outputs, grads) if grad is not None]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
            self.switcher_optimizer.step()
            self.switcher_optimizer.zero_grad(set_to_none=True)
        self._accumulated = 0
        self._forget_gates()

    def _forget_gates(self) -> None:
        self._gates = [None] * len(self.gated)
        self._outputs = None

    def update(self) -> int:
        """Called after every epoch: fix the gates and masks for a task epoch, or release them for training."""
        if self.in_switcher_phase():
            self._forget_gates()
            return 0
        if self._training_is_over():
            self._accumulated = 0  # a partial step now would change the gates the last evaluation used
        self._step_switchers()
        self._compute_gates()
        return sum(self._masks_follow(slot, self.connection_gates(slot) != 0) for slot in range(len(self.gated)))

    @torch.no_grad()
    def _masks_follow_initial_gates(self) -> None:
        """Masks for the first epoch: the initial gates' non-zero entries within the budget."""
        for slot, net in enumerate(self.switchers):
            gates = self._within_budget(slot, net(self.full_weight(slot)))
            self._masks_follow(slot, self._per_connection(slot, gates) != 0)

    def _training_is_over(self) -> bool:
        total = self.context.total_steps
        return total is not None and self.context.step >= total

    @torch.no_grad()
    def _masks_follow(self, slot: int, wanted: torch.Tensor) -> int:
        """Make the mask of gated layer ``slot`` ``wanted`` (its non-zero gates), moving values to and from D."""
        mask, dormant = self._mask(slot), self.dormant[slot].view(-1)
        prune = (mask & ~wanted).flatten().nonzero().squeeze(1)
        grow = (wanted & ~mask).flatten().nonzero().squeeze(1)
        dormant[prune] = self._weight(slot).detach().view(-1)[prune]
        revived = dormant[grow].clone()
        dormant[grow] = 0.0
        self._masks[slot] = None
        return self._layer(slot).rewire(prune, grow, revived)

    def connection_gates(self, slot: int) -> torch.Tensor:
        """The gate of every connection of gated layer ``slot`` (neuron gates repeated down the columns)."""
        return self._per_connection(slot, self.gate(slot).detach())

    def _per_connection(self, slot: int, gates: torch.Tensor) -> torch.Tensor:
        return gates.expand(self._layer(slot).shape) if self.hparams["mode"] == "neuron" else gates

    # -- results --------------------------------------------------------------------------------

    def extra_parameters(self) -> int:
        """Number of switcher parameters: trained alongside the task network, but not part of it."""
        return sum(p.numel() for p in self.switchers.parameters())

    def active_connections(self) -> int:
        """Connections with a non-zero gate now (other layers: their masks), in switcher epochs too.

        The masks follow the gates at the end of a switcher epoch and stay equal to them through the
        task epoch, when the masks' count is the answer; in a switcher epoch the gates are counted.
        """
        if not self.in_switcher_phase():
            return super().active_connections()
        gated = dict(zip(self.gated, range(len(self.gated))))
        active = 0
        for index, layer in enumerate(self.layers):
            slot = gated.get(index)
            active += layer.active if slot is None else int((self.connection_gates(slot) != 0).sum())
        return active

    @torch.no_grad()
    def export_model(self) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """A plain copy of the model with the gates folded into its weights, and its active positions (non-zero
        gates).

        Connection mode stores (W + D)⊙Z, neuron mode scales column j of W + D by gate j; switched-off
        entries are exactly 0. The copy has none of the method's hooks; the original is untouched.
        """
        folded = [self.full_weight(slot) * self.connection_gates(slot) for slot in range(len(self.gated))]
        positions = positions_by_parameter(self.layers)
        for slot in range(len(self.gated)):
            positions[self._layer(slot).name] = (self.connection_gates(slot) != 0).flatten().nonzero().squeeze(1)
        model = self.context.model
        names = {id(module): name for name, module in model.named_modules()}
        self.remove_hooks()
        try:
            plain = copy.deepcopy(model)
        finally:
            self._install_hooks()
        for slot, weight in enumerate(folded):
            plain_linear = plain.get_submodule(names[id(self._layer(slot).module)])
            assert isinstance(plain_linear, nn.Linear)  # a deep copy of a gated layer
            plain_linear.weight.copy_(weight)
        return plain, positions

    @torch.no_grad()
    def fold_into_weights(self) -> None:
        """W ← (W + D)⊙Z in place, the masks following the non-zero gates: what the gated forward computed."""
        folded = [self.full_weight(slot) * self.connection_gates(slot) for slot in range(len(self.gated))]
        for slot, weight in enumerate(folded):
            self._masks_follow(slot, self.connection_gates(slot) != 0)
            self._weight(slot).copy_(weight)
        self.dormant = [torch.zeros_like(values) for values in self.dormant]

    # -- persistence ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        gates = [g for g in self._gates if g is not None] if self._gates[0] is not None else None
        return {
            "switchers": {key: value.detach().clone() for key, value in self.switchers.state_dict().items()},
            "optimizer": self.switcher_optimizer.state_dict(),
            "dormant": [values.clone() for values in self.dormant],
            "gates": None if gates is None else [g.detach().clone() for g in gates],
            "gate_grads": None if gates is None else [None if g.grad is None else g.grad.clone() for g in gates],
            "gates_train": gates is not None and gates[0].requires_grad,
            "accumulated": self._accumulated,
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"switchers", "optimizer", "dormant", "gates", "gate_grads", "gates_train", "accumulated"} - set(
            state
        )
        if missing:
            raise UsageError(f"saved switcher state lacks {sorted(missing)[0]!r}")
        try:
            self.switchers.load_state_dict(state["switchers"])
            self.switcher_optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            reason = str(error).strip().splitlines()[0][:120]
            raise UsageError(f"saved switchers do not fit this model ({reason})") from None
        self._check_saved("dormant", state["dormant"], [tuple(d.shape) for d in self.dormant])
        for values, saved in zip(self.dormant, state["dormant"]):
            values.copy_(saved)
        self._masks = [None] * len(self.gated)  # the topology was restored before the method state
        self._forget_gates()
        self._accumulated = int(state["accumulated"])
        if state["gates"] is not None:
            self._restore_gates(state["gates"], state["gate_grads"], bool(state["gates_train"]))

    def _check_saved(self, what: str, tensors: object, shapes: list[tuple[int, ...]]) -> None:
        if not isinstance(tensors, list) or len(tensors) != len(shapes):
            raise UsageError(f"saved switcher {what} do not match the model's {len(shapes)} linear layers")
        for saved, shape in zip(tensors, shapes):
            if not torch.is_tensor(saved) or tuple(saved.shape) != shape:
                raise UsageError(f"saved switcher {what} do not have the shapes {shapes}")

    def _restore_gates(self, gates: list[torch.Tensor], grads: list[torch.Tensor | None], training: bool) -> None:
        """Gates as saved: leaves collecting gradients when saved in a switcher epoch, with what they held.

        (The sparsifier restores its epoch after the method, so the phase is taken from the save.)
        """
        self._check_saved("gates", gates, [self.gate_shape(slot) for slot in range(len(self.gated))])
        restored: list[torch.Tensor | None] = []
        for slot, (saved, grad) in enumerate(zip(gates, grads)):
            leaf = saved.to(self._layer(slot).device).clone().requires_grad_(training)
            if training and grad is not None:
                leaf.grad = grad.to(leaf.device).clone()
            restored.append(leaf)
        self._gates = restored

    def gate_shape(self, slot: int) -> tuple[int, ...]:
        """Shape of the gates of gated layer ``slot``: W's shape, or (in,) in neuron mode."""
        shape = tuple(self._layer(slot).shape)
        return shape[1:] if self.hparams["mode"] == "neuron" else shape
