"""Differential privacy for one site: DP-SGD through Opacus, and the privacy it has spent.

DP-SGD [Abadi et al., "Deep Learning with Differential Privacy", CCS 2016] clips each example's
gradient to L2 norm ``max_grad_norm``, sums the clipped gradients of a batch drawn by Poisson
sampling (each training case joins a batch independently with probability ``q = 1 / steps per
epoch``) and adds Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm``.
An accountant turns ``(q, noise_multiplier, steps)`` into the ``(epsilon, delta)`` guarantee.

Opacus does the three parts: ``GradSampleModule`` (per-example gradients through hooks on every
trainable layer), ``DPOptimizer`` (clip, noise, then the wrapped optimiser's step) and
``DPDataLoader`` (Poisson batches), with its PRV accountant (privacy random variables, Gopi et
al., NeurIPS 2021: tighter than RDP for the same noise) as the default.

>>> model, changes = dp_compatible(build_classifier("resnet18_2d", in_channels=1, num_classes=2,
...                                                 input_size=(28, 28)))
>>> private = privatise(model, optimizer, loader, epsilon=8.0, delta=default_delta(len(train)),
...                     epochs=rounds * local_epochs, max_grad_norm=1.0)
>>> for x, y in private.loader: ...   # loss.backward(); private.optimizer.step()
>>> private.spent()                    # (epsilon, delta) spent so far

A federated site calls :func:`privatise` once per round with ``resume=`` the previous round's
:class:`Private` (or its JSON-able :meth:`Private.state`, when each round runs in a new process):
the noise multiplier is chosen once for the whole run (rounds x local epochs) and the accountant
keeps counting, so the guarantee covers every update the site ever sent.

Delta: :func:`default_delta` is ``1 / (10 n)`` for ``n`` training cases. ``delta`` bounds the
chance that the guarantee fails outright; a mechanism that publishes one random case in full is
``(0, 1/n)``-DP, so any useful delta must lie well below ``1 / n``. :func:`privatise` refuses
``delta >= 1 / n``; one tenth of that is the convention of the DP-SGD literature (Opacus
tutorials use ``1e-5`` for MNIST's 60,000 images, between ``1/(10 n)`` and ``1/n``).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from monai.networks.nets import resnet as monai_resnet
from torch import nn

from medlens.errors import ConfigError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

ACCOUNTANT = "prv"  # Opacus's default since 1.3; "rdp" (Mironov 2017) is looser for the same noise
_TRIAL_BATCH = 2


def default_delta(n_train: int) -> float:
    """``1 / (10 n)``: a tenth of the ``1 / n`` at which DP's failure chance means a leaked case."""
    if n_train < 1:
        raise ConfigError(f"DP needs the number of training cases to set delta; got {n_train}")
    return 1.0 / (10 * n_train)


# ---- making a network DP-compatible --------------------------------------------------------------


def dp_compatible(model: nn.Module, example: torch.Tensor | None = None) -> tuple[nn.Module, list[str]]:
    """The network with what DP-SGD cannot train replaced, and what was replaced, in words.

    Batch norm mixes the examples of a batch, so an example's gradient is no longer its own: it
    becomes group norm (Opacus ``ModuleValidator.fix``: ``gcd(32, channels)`` groups, same
    parameter names, no running statistics). In-place activations and residual additions that
    write into a trainable layer's output break Opacus's backward hooks: they are made out of place.

    Args:
        model: any ``nn.Module``.
        example: a batch ``(B, C, *spatial)`` to run once (forward and backward) under Opacus, to
            prove the fixed network trains; default for a medlens
            :class:`~medlens.models.Classifier`: ``(2, C, *input_size)`` zeros, for others no trial.

    Returns:
        ``(model, changes)``: a copy in training mode, fixed (the given model is left as it was),
        and one sentence per change (``[]`` when nothing needed changing).

    Raises:
        ConfigError: a layer Opacus cannot train even after the fixes, with Opacus's reason.
    """
    from opacus.validators import ModuleValidator

    model = copy.deepcopy(model).train()
    changes = _inplace_changes(model)
    if ModuleValidator.validate(model, strict=False):
        fixed = ModuleValidator.fix(model)
        changes = _norm_changes(model, fixed) + changes
        model = fixed
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ConfigError(
            f"{_name(model)} cannot be trained with DP-SGD: " + "; ".join(str(p) for p in problems)
            + ". Choose a network without these layers (e.g. `model.name: seedcnn_2d`) or train without DP "
            "(`dp_epsilon: null` in federation.yaml)."
        )
    _trial_step(model, example)
    return model, changes


def _norm_changes(before: nn.Module, after: nn.Module) -> list[str]:
    old = dict(before.named_modules())
    return [f"{name}: {_describe(old[name])} -> {_describe(new)} (batch statistics mix examples; "
            f"DP-SGD needs each example's own gradient)"
            for name, new in after.named_modules() if name in old and type(old[name]) is not type(new)]


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.GroupNorm):
        return f"GroupNorm({module.num_groups} groups, {module.num_channels} channels)"
    return type(module).__name__


def _inplace_changes(model: nn.Module) -> list[str]:
    """Turn off ``inplace=True`` activations and MONAI's ``out += residual`` (see :func:`dp_compatible`)."""
    changed = []
    for name, module in model.named_modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
            changed.append(name)
        elif type(module) in _OUT_OF_PLACE:
            module.__class__ = _OUT_OF_PLACE[type(module)]
            changed.append(name)
    if not changed:
        return []
    return [f"{len(changed)} in-place operation(s) made out of place ({_short(changed)}): an in-place write "
            f"into a layer's output breaks Opacus's per-example gradient hooks"]


def _short(names: list[str], keep: int = 3) -> str:
    shown = ", ".join(n or "<root>" for n in names[:keep])
    return shown + (f" and {len(names) - keep} more" if len(names) > keep else "")


def _name(model: nn.Module) -> str:
    return str(getattr(model, "name", type(model).__name__))


def _trial_step(model: nn.Module, example: torch.Tensor | None) -> None:
    """One forward/backward under Opacus of ``example`` (zeros of a Classifier's input size by default)."""
    size, channels = getattr(model, "input_size", None), getattr(model, "in_channels", None)
    if example is None and (size is None or channels is None):
        return
    if example is None:
        example = torch.zeros(_TRIAL_BATCH, channels, *size)
    from opacus import GradSampleModule

    wrapped = GradSampleModule(copy.deepcopy(model))  # a copy: no hook or per-example gradient stays behind
    try:
        wrapped(example.to(next(model.parameters()).device)).sum().backward()
    except RuntimeError as error:
        raise ConfigError(f"{_name(model)} cannot be trained with DP-SGD even after {dp_compatible.__name__}'s "
                          f"fixes: {error}. Choose another network (e.g. `model.name: seedcnn_2d`).") from error


# ---- DP-SGD and its accountant --------------------------------------------------------------------


@dataclass
class Private:
    """A site's DP-SGD training objects and the accountant that counts what they spend.

    Attributes:
        module: the model wrapped in Opacus's ``GradSampleModule`` (per-example gradients); the
            given module's own layers carry the hooks, so calling the unwrapped module (or a
            LightningModule's ``training_step`` that calls it) is private as well.
        optimizer: ``DPOptimizer``: call ``zero_grad`` / ``step`` on this one, once per batch.
        loader: ``DPDataLoader``: Poisson batches of ``q * n`` cases on average (sizes vary).
        noise_multiplier: noise standard deviation over ``max_grad_norm``, chosen for ``epochs``.
        sample_rate: ``q``, a case's chance of joining each batch.
        epsilon, delta: the target for the whole run; :meth:`spent` reports what is spent so far.
        epochs: passes over the data the noise was chosen for (rounds x local epochs).
        accountant: ``"prv"`` or ``"rdp"``.
    """

    module: nn.Module
    optimizer: Any
    loader: DataLoader
    noise_multiplier: float
    sample_rate: float
    epsilon: float
    delta: float
    epochs: int
    max_grad_norm: float
    accountant: str
    engine: Any = field(repr=False)

    @property
    def steps(self) -> int:
        """Noisy optimiser steps taken so far, over every round."""
        return sum(steps for _, _, steps in self.engine.accountant.history)

    @property
    def planned_steps(self) -> int:
        """Steps the noise multiplier was chosen for: ``epochs / q``."""
        return int(self.epochs / self.sample_rate)

    def spent(self) -> tuple[float, float]:
        """``(epsilon, delta)`` spent so far by every step of every round (``(0.0, delta)`` before the first)."""
        if not self.engine.accountant.history:
            return 0.0, self.delta
        return float(self.engine.get_epsilon(self.delta)), self.delta

    def state(self) -> dict:
        """The targets, noise and accountant history as JSON-able values, for ``privatise(resume=...)`` in another
        process (e.g. kept in Flower's ``context.state`` between a SuperNode's rounds)."""
        return {"epsilon": self.epsilon, "delta": self.delta, "epochs": self.epochs,
                "sample_rate": self.sample_rate, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.max_grad_norm, "accountant": self.accountant,
                "history": [[float(sigma), float(q), int(steps)] for sigma, q, steps in self.engine.accountant.history]}


def privatise(
    module: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *, epsilon: float, delta: float,
    epochs: int, max_grad_norm: float = 1.0, resume: Private | dict | None = None, accountant: str = ACCOUNTANT,
) -> Private:
    """Make one site's training differentially private for a whole run of ``epochs`` passes.

    Opacus ``PrivacyEngine.make_private_with_epsilon`` with Poisson sampling: the noise multiplier
    is the smallest that keeps ``epochs`` passes of ``q = 1 / len(loader)`` within ``(epsilon, delta)``.

    Args:
        module: a DP-compatible model (see :func:`dp_compatible`) or a LightningModule holding one,
            in training mode.
        optimizer: a plain torch optimiser over ``module``'s parameters (a new one each round is fine).
        loader: the site's training loader; its batch size sets ``q`` (its sampler is replaced by
            Poisson sampling, as the accounting assumes).
        epsilon: target epsilon over the whole run, > 0.
        delta: target delta, ``0 < delta < 1 / n`` (see :func:`default_delta`).
        epochs: passes over the site's data in the whole run: rounds x local epochs.
        max_grad_norm: per-example gradient clipping bound ``C``.
        resume: the previous round's :class:`Private` (same process, same model object) or its
            :meth:`Private.state` (another process): its noise multiplier and accountant history
            carry on, so the epsilon spent adds up over every round. The targets must be the same.
        accountant: ``"prv"`` (Opacus's default) or ``"rdp"``; a resumed run keeps its own.

    Returns:
        A :class:`Private` whose ``module`` / ``optimizer`` / ``loader`` replace the given ones.

    Raises:
        ConfigError: an out-of-range target, ``delta >= 1 / n``, a layer Opacus cannot train, a
            ``resume`` whose targets or data differ, or one that has taken all its planned steps.
    """
    _check_targets(epsilon=epsilon, delta=delta, epochs=epochs, max_grad_norm=max_grad_norm,
                   n_train=len(loader.dataset))
    _check_module(module)
    if resume is None:
        engine = _engine(accountant, history=[])
        wrapped, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
            module=module, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
            epochs=epochs, max_grad_norm=max_grad_norm, poisson_sampling=True,
        )
        noise = float(dp_optimizer.noise_multiplier)
    else:
        state = resume.state() if isinstance(resume, Private) else resume
        _check_resume(state, epsilon=epsilon, delta=delta, epochs=epochs, sample_rate=1 / len(loader))
        engine = resume.engine if isinstance(resume, Private) else _engine(state["accountant"], state["history"])
        module = _reuse_wrapper(resume.module, module) if isinstance(resume, Private) else module
        noise, max_grad_norm, accountant = state["noise_multiplier"], state["max_grad_norm"], state["accountant"]
        wrapped, dp_optimizer, dp_loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
            max_grad_norm=max_grad_norm, poisson_sampling=True,
        )
    return Private(module=wrapped, optimizer=dp_optimizer, loader=dp_loader, noise_multiplier=noise,
                   sample_rate=1 / len(loader), epsilon=epsilon, delta=delta, epochs=epochs,
                   max_grad_norm=max_grad_norm, accountant=accountant, engine=engine)


def _engine(accountant: str, history: list) -> Any:
    """An Opacus PrivacyEngine whose accountant has already counted ``history`` ``[(sigma, q, steps)]``."""
    from opacus import PrivacyEngine

    if accountant not in ("prv", "rdp"):
        raise ConfigError(f"DP accountant must be 'prv' or 'rdp', got {accountant!r}")
    with warnings.catch_warnings():
        # "Secure RNG turned off": secure_mode needs torchcsprng; the noise comes from torch's generator
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=accountant)
    engine.accountant.history = [(float(sigma), float(q), int(steps)) for sigma, q, steps in history]
    return engine


def _check_resume(state: dict, *, epsilon: float, delta: float, epochs: int, sample_rate: float) -> None:
    before = tuple(state[k] for k in ("epsilon", "delta", "epochs", "sample_rate"))
    now = (epsilon, delta, epochs, sample_rate)
    if not all(math.isclose(a, b) for a, b in zip(before, now)):
        raise ConfigError(f"DP resume: (epsilon, delta, epochs, sample rate) were {before} in the first round and "
                          f"are {now} now; the noise was chosen for the first, so the whole run must keep them")
    steps, planned = sum(h[2] for h in state["history"]), int(epochs / sample_rate)
    if steps >= planned:
        raise ConfigError(f"DP: this site has taken {steps} noisy steps, all the {planned} its noise was chosen "
                          f"for (epsilon {epsilon}); more would spend more than the target")


def _reuse_wrapper(wrapper: nn.Module, module: nn.Module) -> nn.Module:
    """The previous round's GradSampleModule when it wraps ``module`` (wrapping twice would hook every layer twice)."""
    if module is wrapper or module is getattr(wrapper, "_module", None):
        return wrapper
    raise ConfigError("DP resume: pass the same model object every round (load the new global weights into it "
                      "with load_state_dict), or resume from Private.state() with a new one")


def _check_targets(*, epsilon: float, delta: float, epochs: int, max_grad_norm: float, n_train: int) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"dp_epsilon must be a positive number (e.g. 8.0), got {epsilon!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1 / max(n_train, 1)):
        raise ConfigError(f"dp_delta must lie in (0, 1/n) = (0, {1 / max(n_train, 1):.3g}) for this site's {n_train} "
                          f"training cases (a delta of 1/n allows leaking one whole case); got {delta!r}. "
                          f"Leave it unset for 1/(10 n) = {default_delta(max(n_train, 1)):.3g}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ConfigError(f"DP needs the run's total epochs (rounds x local_epochs), a whole number >= 1; "
                          f"got {epochs!r}")
    if not (isinstance(max_grad_norm, (int, float)) and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigError(f"dp_max_grad_norm must be a positive number (e.g. 1.0), got {max_grad_norm!r}")


def _check_module(module: nn.Module) -> None:
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(module, strict=False)
    if problems:
        raise ConfigError(f"{_name(module)} is not DP-compatible: " + "; ".join(str(p) for p in problems)
                          + f". Pass it through {dp_compatible.__module__}.dp_compatible first (and call .train())")


class _ResNetBlock(monai_resnet.ResNetBlock):
    """MONAI's basic ResNet block with ``out = out + residual`` instead of ``out += residual``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + residual)


class _ResNetBottleneck(monai_resnet.ResNetBottleneck):
    """MONAI's bottleneck ResNet block with ``out = out + residual`` instead of ``out += residual``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        return self.act(self.bn3(self.conv3(out)) + residual)


# Same parameters and state-dict keys, only the forward differs: swapping the class in place keeps
# every weight, name and cam_layer of the network.
_OUT_OF_PLACE = {monai_resnet.ResNetBlock: _ResNetBlock, monai_resnet.ResNetBottleneck: _ResNetBottleneck}
