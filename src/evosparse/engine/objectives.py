"""What a run minimises and what it reports: classification (cross-entropy, accuracy) or a VAE's ELBO.

The training loop asks the model's :class:`Objective` for the training loss of a batch and for the
test-set numbers of an epoch, so it never assumes a classifier. A model chooses its objective with a
class attribute ``objective`` (``"classification"`` when absent). Whatever the objective, result.json
keeps its contract keys: ``test_acc``, ``final_test_acc``, ``best_test_acc`` and ``ara`` hold the
objective's :class:`Metric`, named in the top-level key ``metric``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from evosparse.data import Dataset
from evosparse.errors import UsageError
from evosparse.metrics import ACCURACY, NEGATIVE_ELBO, Metric
from evosparse.models.vae import VAE

#: Most test samples evaluated per forward pass.
EVAL_BATCH = 2048
#: Bytes that the widest activation of one evaluation pass may take: a wide model is evaluated in smaller
#: passes (:func:`evaluation_chunk`), so evaluation memory does not grow with width × test-set size (a
#: layer of 10⁶ float32 units: 8 samples a pass, 32 MiB, where 2048 would take 8 GiB). At 64 MiB the
#: evaluation of a 784-4000³-10 csr MLP set its training run's peak (+80 MiB over training's); at 16 MiB a pass
#: still holds 1048 samples of 4000 units, as fast per sample.
EVAL_ACTIVATION_BYTES = 16 * 2**20
#: Fewest samples per evaluation pass, whatever the width: below about 8 the sparse products cost more per
#: sample (a 2.5M-unit csr layer: one pass of 1 sample takes about half the time of a pass of 8).
EVAL_MIN_BATCH = 8
#: Seed of the latent noise drawn when the ELBO is evaluated, so that evaluation is deterministic.
EVAL_NOISE_SEED = 0


class Objective:
    """A training loss and the test-set evaluation that goes with it."""

    metric: Metric = ACCURACY

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The mean training loss of one batch (a scalar with a gradient)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        """(mean loss, metric) of ``model`` over (x, y); the caller sets eval mode and disables gradients.

        Sums are kept on x's device (float64, so they equal the same sums taken in Python floats) and read
        once at the end: one host synchronisation per evaluation, not one per pass of
        :func:`evaluation_chunk` samples.
        """
        raise NotImplementedError


def evaluation_chunk(model: nn.Module, forward_one: Callable[[], object]) -> int:
    """Samples per evaluation pass: :data:`EVAL_BATCH`, or fewer so that the widest module output of one pass
    stays within :data:`EVAL_ACTIVATION_BYTES`, but at least :data:`EVAL_MIN_BATCH`.

    ``forward_one`` runs ``model`` on one sample; hooks on every module measure the largest output it
    makes (in bytes, tensors inside tuple outputs included). Intermediates inside a module (attention
    scores, say) are not seen; module outputs are what grows with a wide layer.
    """
    widest = 0

    def record(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal widest
        for tensor in output if isinstance(output, tuple | list) else (output,):
            if isinstance(tensor, Tensor):
                widest = max(widest, tensor.numel() * tensor.element_size())

    handles = [module.register_forward_hook(record) for module in model.modules()]
    try:
        forward_one()
    finally:
        for handle in handles:
            handle.remove()
    return max(EVAL_MIN_BATCH, min(EVAL_BATCH, EVAL_ACTIVATION_BYTES // max(1, widest)))


def flat_predictions(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(N·T, C) logits and (N·T,) targets: sequence models are scored per time step (per character)."""
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


class Classification(Objective):
    """Cross-entropy per predicted label; accuracy is the share of labels predicted right."""

    metric = ACCURACY

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(*flat_predictions(model(x), y))

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        chunk = evaluation_chunk(model, lambda: model(x[:1]))
        for start in range(0, x.shape[0], chunk):
            logits, target = flat_predictions(model(x[start : start + chunk]), y[start : start + chunk])
            loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
            correct += (logits.argmax(dim=1) == target).sum()
        return float(loss_sum) / y.numel(), int(correct) / y.numel()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per sample, in closed form: ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)
    (Kingma & Welling 2013, Appendix B)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def negative_elbo(logits: Tensor, pixels: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """−ELBO per sample in nats: Bernoulli reconstruction cross-entropy summed over pixels, plus the KL
    of the approximate posterior from the prior (Kingma & Welling 2013, eq. 10 with one latent sample).

    ``pixels`` are intensities in [0, 1] used as Bernoulli targets (continuous cross-entropy, no
    binarisation); ``logits`` are the decoder's outputs for the same pixels.
    """
    reconstruction = F.binary_cross_entropy_with_logits(logits, pixels, reduction="none").sum(dim=1)
    return reconstruction + gaussian_kl(mu, logvar)


class Elbo(Objective):
    """A VAE's negative ELBO on inputs rescaled to [0, 1]; the reported metric is the test −ELBO.

    The loaders standardise images by one global mean and standard deviation; mapping the training
    split's minimum to 0 and maximum to 1 undoes that exactly (an affine map), so the VAE models pixel
    intensities. Test values outside the training range are clipped. Training draws one latent
    sample per input from the global generator (seeded and checkpointed by the loop); evaluation
    draws its samples from a generator seeded with :data:`EVAL_NOISE_SEED`, all in one draw before the
    passes, so the same model always gets the same test −ELBO whatever the passes' size.
    """

    metric = NEGATIVE_ELBO

    def __init__(self, low: float, high: float) -> None:
        if not high > low:
            raise UsageError("the VAE needs inputs that vary: the training split is constant")
        self.low, self.high = low, high

    def pixels(self, x: Tensor) -> Tensor:
        """Samples flattened and mapped to [0, 1]."""
        return ((x.flatten(1) - self.low) / (self.high - self.low)).clamp(0.0, 1.0)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self._batch(model, self.pixels(x), None).mean()

    def _batch(self, model: nn.Module, pixels: Tensor, noise: Tensor | None) -> Tensor:
        logits, mu, logvar = model(pixels, noise)
        return negative_elbo(logits, pixels, mu, logvar)

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        if not isinstance(model, VAE):
            raise UsageError(f"the ELBO objective needs the vae model, got {type(model).__name__}")
        generator = torch.Generator(x.device).manual_seed(EVAL_NOISE_SEED)
        noise = torch.randn(x.shape[0], model.latent, generator=generator, device=x.device)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        chunk = evaluation_chunk(model, lambda: model(self.pixels(x[:1]), noise[:1]))
        for start in range(0, x.shape[0], chunk):
            pixels = self.pixels(x[start : start + chunk])
            total += self._batch(model, pixels, noise[start : start + chunk]).sum().double()
        mean = float(total) / x.shape[0]
        return mean, mean


OBJECTIVES = ("classification", "elbo")


def objective_for(model: nn.Module, data: Dataset) -> Objective:
    """The objective ``model`` declares (class attribute ``objective``, default classification) for ``data``."""
    kind = getattr(model, "objective", "classification")
    if kind == "elbo":
        return Elbo(float(data.x_train.min()), float(data.x_train.max()))
    if kind == "classification":
        return Classification()
    raise UsageError(f"model {type(model).__name__} asks for objective {kind!r}; known: {', '.join(OBJECTIVES)}")
