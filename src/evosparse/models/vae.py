"""Variational autoencoder (Kingma & Welling 2013), the generative model of the Adaptive Weight Sparsity paper.

AWS Table 1 trains a VAE on MNIST with layer sizes 256-10-256: an encoder 784-256 feeding the mean and
log-variance of a 10-dimensional Gaussian posterior, and a decoder 10-256-784 giving Bernoulli logits
per pixel. Every weight matrix is a ``nn.Linear``, so all of them are sparsifiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from evosparse.errors import UsageError


def _relu_stack(sizes: Sequence[int]) -> list[nn.Module]:
    """Linear layers between consecutive ``sizes``, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return layers


class VAE(nn.Module):
    """MLP encoder → (μ, log σ²) of the latent code → reparameterised sample → MLP decoder → pixel logits.

    ``hidden`` are the encoder's hidden widths; the decoder mirrors them. The model is trained by the
    ELBO objective (:class:`evosparse.engine.objectives.Elbo`), which feeds it inputs in [0, 1].
    """

    objective = "elbo"

    def __init__(self, input_size: int, hidden: Sequence[int] = (256,), latent: int = 10) -> None:
        super().__init__()
        if latent < 1 or any(width < 1 for width in hidden):
            raise UsageError(f"VAE widths must be positive, got hidden {list(hidden)} and latent {latent}")
        self.latent = latent
        encoder_sizes = [input_size, *hidden]
        self.encoder = nn.Sequential(*_relu_stack(encoder_sizes))
        self.posterior = nn.Linear(encoder_sizes[-1], 2 * latent)
        decoder_sizes = [latent, *reversed(hidden)]
        self.decoder = nn.Sequential(*_relu_stack(decoder_sizes), nn.Linear(decoder_sizes[-1], input_size))
        self.architecture = [input_size, *hidden, latent, *reversed(hidden), input_size]

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x) for flattened inputs ``x``."""
        mu, logvar = self.posterior(self.encoder(x.flatten(1))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli logits of every pixel given latent codes ``z``."""
        return self.decoder(z)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(pixel logits, μ, log σ²) for inputs ``x`` in [0, 1], decoding z = μ + σ·ε (the
        reparameterisation trick, Kingma & Welling 2013, Section 2.4).

        ``noise`` is ε, standard normal of shape (batch, latent); it is drawn from the global
        generator when not given (evaluation passes its own, seeded draws).
        """
        mu, logvar = self.encode(x)
        epsilon = noise if noise is not None else torch.randn_like(mu)
        z = mu + (0.5 * logvar).exp() * epsilon
        return self.decode(z), mu, logvar
