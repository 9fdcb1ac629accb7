"""One site's side of a federated round: train the task's own module from the global weights, and score them.

A :class:`SiteTrainer` opens the site's data once, splits it as medlens splits any dataset (the split its
summary counted), and builds the task's training module and loaders through :meth:`medlens.tasks.Task.prepare_fit`
(the task's loss, augmentation, optimiser and sampler, exactly as ``medlens train`` uses them). Each round it
loads the global weights and trains ``local_epochs`` under a Lightning Trainer without checkpoints or logs:

- the learning rate follows the plan's schedule across rounds (constant within a round), and every random draw
  comes from ``(seed, round, epoch)``, so two rounds do not replay the same augmentations;
- FedProx adds ``mu / 2 * ||w - w_global||^2`` to the loss (its gradient ``mu * (w - w_global)`` is added to the
  parameters' gradients before each optimiser step, after mixed-precision unscaling);
- FedBN: batch-norm weights and statistics are sent like the rest but the site keeps its own between rounds
  (the server does not average them, :func:`local_keys`);
- residual clinical fusion: in round 1 the site trains on top of the logistic regression it fitted on its own
  training split (:func:`regression_state`); the server averages the sites' regressions like any weight, and
  from round 2 on every site keeps that average, fixed;
- differential privacy (``plan.dp_epsilon``): the network is made DP-compatible (:mod:`medlens.federated.privacy`)
  and trained with DP-SGD in a plain loop over the module's ``training_step``, the accountant kept across rounds.

Weights travel as ``{state_dict key: numpy array}``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from medlens.config import Config
from medlens.data import open_dataset
from medlens.data.prepared import check_plan_fits, split_cases
from medlens.errors import ConfigError
from medlens.federated.plan import FederationPlan
from medlens.federated.summaries import split_for
from medlens.tasks.optim import schedule_factor

Weights = dict[str, np.ndarray]


def local_keys(model: torch.nn.Module) -> set[str]:
    """The ``state_dict`` keys of the model's batch-norm layers (weights, biases, running statistics): what FedBN
    keeps at each site."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            keys |= {f"{name}.{k}" if name else k for k in module.state_dict()}
    return keys


def regression_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The ``state_dict`` entries of residual fusion's clinical regression (``clinical_logits``), copied; ``{}``
    for a network without one. Fitted at each site, averaged by the server after round 1, fixed from then on."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".clinical_logits." in f".{k}"}


def build_network(config: Config, plan: FederationPlan) -> torch.nn.Module:
    """The plan's network, seeded as training seeds it, DP-compatible when the plan asks for privacy (the same
    network at the server and at every site)."""
    from medlens.tasks import task_for
    from medlens.tasks.base import initial_model

    model = initial_model(task_for(config), config)
    return dp_network(model, plan)[0]


def initial_weights(config: Config, plan: FederationPlan) -> Weights:
    """The global model's first weights (round 0)."""
    return to_numpy(build_network(config, plan).state_dict())


def dp_network(model: torch.nn.Module, plan: FederationPlan) -> tuple[torch.nn.Module, list[str]]:
    """``model`` unchanged without DP; with it, :func:`medlens.federated.privacy.dp_compatible`'s copy."""
    if plan.dp_epsilon is None:
        return model, []
    try:
        import opacus  # noqa: F401 - DP-SGD's per-example gradients and accountant
    except ImportError:
        raise ConfigError(f"dp_epsilon={plan.dp_epsilon}: differential privacy needs Opacus, which is not installed; "
                          "pip install 'medlens[federated]', or set dp_epsilon: null in federation.yaml") from None
    from medlens.federated.privacy import dp_compatible

    return dp_compatible(model)


def to_numpy(state: dict) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


class SiteTrainer:
    """A site's local training and evaluation under the federation's plans.

    Args:
        config: the task plan every site trains with (from :func:`~medlens.federated.plan.plan_federation`).
        plan: the federation plan.
        data: the site's data (anything :func:`medlens.data.open_dataset` opens).
        site: the site's name (in logs and errors).
        image_root: the folder a CSV's image paths are relative to (``""``: the CSV's own).
        log: where progress goes.
        kept_split: the site's split from an earlier message of the run (:func:`~medlens.federated.summaries.
            split_record`), used while the data it rests on is unchanged; else the data are audited and split again
            (``self.kept_split`` is what to keep for the next message).

    Raises:
        ConfigError: the site's data do not fit the plan (other classes), or a split is empty.
    """

    def __init__(self, config: Config, plan: FederationPlan, data: str | Path, *, site: str, image_root: str = "",
                 log=print, kept_split: dict | None = None):
        from medlens.tasks import task_for

        self.plan, self.site, self.log = plan, site, log
        from medlens.data.dataset import series_rules_in_force

        # a site's own --series-rule (in force in its ClientApp), else the plan's (the server calibrating on them)
        dataset = open_dataset(data, image_root=image_root or None,
                               series_rules=series_rules_in_force() or config.dataset.series_rules or None)
        config = replace(config, dataset=replace(config.dataset, source=str(data), image_root=image_root,
                                                 layout=dataset.layout))
        try:
            check_plan_fits(config, dataset)
        except ConfigError as exc:
            raise ConfigError(f"site {site}: {exc}; the server's plan was made from every site's summary, so the "
                              "data changed since the site joined: restart the site") from None
        self.kept_split, reused = split_for(dataset, seed=config.train.seed, kept=kept_split)
        self.splits, self.audited = self.kept_split["splits"], not reused
        if kept_split and kept_split.get("seed") == config.train.seed and not reused:
            log(f"site {site}: its data changed since its last message (cases, labels or files): audited and split "
                "again")
        self.cases = split_cases(dataset, self.splits, 0)
        torch.manual_seed(config.train.seed)
        self.fit_ = task_for(config).prepare_fit(config, dataset, self.cases, world_size=1, log=log)
        self.config = self.fit_.config
        self.module = self.fit_.module
        self.module.model, self.dp_changes = dp_network(self.module.model, plan)
        self.bn_keys = local_keys(self.module.model) if plan.strategy == "fedbn" else set()
        self.own_regression = regression_state(self.module.model)  # residual fusion: fitted on this site's split
        self.kept: dict[str, torch.Tensor] = {}  # FedBN: this site's batch-norm state between rounds
        self.private = None  # DP: the previous round's privacy.Private, or its state() from an earlier process

    @property
    def n_train(self) -> int:
        return len(self.cases["train"])

    @property
    def n_val(self) -> int:
        return len(self.cases["val"])

    def fit(self, weights: Weights, *, round: int) -> tuple[Weights, int, dict]:
        """Train ``plan.local_epochs`` from ``weights`` (round ``round``, counted from 1).

        Returns:
            ``(weights, n_train, metrics)``: the new weights (same keys and shapes), the training cases they were
            fitted on (FedAvg's weight), ``{"train_loss", "seconds", "epochs", "audited"}`` (``audited``: 1 when
            this message audited the site's data, 0 when it kept the split of an earlier one; and ``dp_epsilon``
            spent).
        """
        started = time.perf_counter()
        self.load(weights)
        if round == 1 and self.own_regression:  # residual fusion: the site's regression, averaged by the server
            self.module.model.load_state_dict(self.own_regression, strict=False)
        self.module.config = self._round_config(round)
        sampler = getattr(self.fit_.train_loader, "sampler", None)
        if hasattr(sampler, "seed"):  # the epoch sampler draws from (seed, epoch): a new seed each round
            sampler.seed = self.module.config.train.seed
        if self.plan.dp_epsilon is not None:
            loss = self._fit_private()
        else:
            loss = self._fit_lightning(weights)
        if self.bn_keys:
            state = self.module.model.state_dict()
            self.kept = {k: state[k].detach().clone() for k in self.bn_keys}
        metrics = {"train_loss": loss, "seconds": float(np.round(time.perf_counter() - started, 2)),
                   "epochs": self.plan.local_epochs, "audited": int(self.audited)}
        if (spent := self.privacy_spent()) is not None:
            metrics["dp_epsilon"], metrics["dp_delta"] = spent
        return to_numpy(self.module.model.state_dict()), self.n_train, metrics

    def evaluate(self, weights: Weights) -> dict:
        """The task's validation metrics of ``weights`` on this site's validation split (FedBN: with the site's
        own batch norm), and ``n`` (validation cases)."""
        self.load(weights)
        trainer = _trainer(1, [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = trainer.validate(self.module, self.fit_.val_loader, verbose=False)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        return {**metrics, "n": self.n_val}

    def privacy_spent(self) -> tuple[float, float] | None:
        """``(epsilon, delta)`` spent so far by this site's updates (``None`` without DP)."""
        if not hasattr(self.private, "spent"):  # none yet, or a previous process's state before this one's fit
            return None
        return tuple(float(v) for v in self.private.spent())

    def load(self, weights: Weights) -> None:
        """``weights`` into the site's network (FedBN: its own batch-norm state once it has one).

        Raises:
            ConfigError: keys or shapes that are not this network's (a plan the site cannot honour).
        """
        model = self.module.model
        own = model.state_dict()
        missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
        if missing or extra or wrong:
            raise ConfigError(f"site {self.site}: the global weights do not fit the planned network "
                              f"({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unknown, e.g. {extra[:2]}; "
                              f"{len(wrong)} of another shape, e.g. {wrong[:2]}); the server and the sites must "
                              "use the same plan and medlens version")
        state = {k: torch.as_tensor(np.asarray(v)).to(own[k].dtype) for k, v in weights.items()}
        state.update(self.kept)
        model.load_state_dict(state)

    def _round_config(self, round: int) -> Config:
        """The plan with this round's learning rate (the plan's schedule over rounds, constant within one) and
        seed."""
        t = self.config.train
        factor = schedule_factor(t.schedule, max(round - 1, 0), self.plan.rounds)
        return replace(self.config, train=replace(t, lr=t.lr * factor, schedule="constant",
                                                  seed=t.seed + 10_007 * round))

    def _fit_lightning(self, weights: Weights) -> float:
        callbacks = [Proximal(self.module.model, self.plan.proximal_mu)] if self.plan.proximal_mu > 0 else []
        trainer = _trainer(self.plan.local_epochs, callbacks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(self.module, self.fit_.train_loader)
        if trainer.interrupted:
            raise KeyboardInterrupt
        return float(trainer.callback_metrics.get("train_loss", float("nan")))

    def _fit_private(self) -> float:
        """DP-SGD (Opacus) in a plain loop over the module's ``training_step``; the accountant spans every round."""
        from medlens.federated.privacy import default_delta, privatise
        from medlens.tasks.optim import build_optimizer

        module, t = self.module, self.module.config.train
        module.trainer = None  # the steps run outside Lightning (an earlier evaluate left its Trainer attached)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module.to(device).train()
        optimizer = build_optimizer(module.model.parameters(), t)
        self.private = privatise(module, optimizer, self.fit_.train_loader, epsilon=self.plan.dp_epsilon,
                                 delta=self.plan.dp_delta or default_delta(self.n_train),
                                 epochs=self.plan.rounds * self.plan.local_epochs,
                                 max_grad_norm=self.plan.dp_max_grad_norm, resume=self.private)
        losses = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log outside a Trainer
            for _ in range(self.plan.local_epochs):
                module.on_train_epoch_start()
                for step, batch in enumerate(self.private.loader):
                    if len(batch[-1]) == 0:  # a Poisson batch may be empty
                        continue
                    self.private.optimizer.zero_grad()
                    loss = module.training_step([b.to(device) for b in batch], step)
                    loss.backward()
                    self.private.optimizer.step()
                    losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")


def _trainer(epochs: int, callbacks: list):
    """A Lightning Trainer for one round: no checkpoints, logs, progress bar or sanity validation."""
    import logging

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # as medlens train does
    gpu = torch.cuda.is_available()
    return pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, max_epochs=epochs, callbacks=callbacks,
                      precision="bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true",
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False)


class Proximal(pl.Callback):
    """FedProx: ``mu * (w - w_global)``, the gradient of ``mu / 2 * ||w - w_global||^2`` (Li et al., MLSys 2020),
    added to every trainable parameter's gradient before the optimiser steps (after mixed-precision unscaling).

    Args:
        model: the network, holding the global weights when the callback is made (the anchor).
        mu: the proximal weight.
    """

    def __init__(self, model: torch.nn.Module, mu: float):
        self.mu = mu
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        with torch.no_grad():
            for name, p in pl_module.model.named_parameters():
                if p.grad is not None:
                    p.grad.add_(p.detach() - self.anchor[name], alpha=self.mu)
