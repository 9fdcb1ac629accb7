"""DP-SGD per site: networks made DP-compatible, the noise chosen for a target, the privacy spent.

The RDP accounting is checked against the closed form of the Poisson-subsampled Gaussian mechanism
at integer orders [Mironov, Talwar & Zhang 2019, eq. in sec. 3.3], written out here, converted to
``(epsilon, delta)`` as Balle et al. 2020 (Thm 21) do; the PRV accountant against the same
accountant fed the configuration directly and against the exact epsilon of one full-batch
Gaussian step [Balle & Wang 2018, Thm 8].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medlens.errors import ConfigError
from medlens.federated.privacy import Private, default_delta, dp_compatible, privatise
from medlens.models import build_classifier

pytest.importorskip("opacus")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, SIZE, BATCH = 256, (12, 12), 32


def _data(seed: int = 0) -> TensorDataset:
    """Two classes of 1x12x12 images: class 1 has a bright square in its centre."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (N,), generator=g)
    x = torch.randn(N, 1, *SIZE, generator=g) * 0.5
    x[:, :, 4:8, 4:8] += 2.0 * y[:, None, None, None]
    return TensorDataset(x, y)


def _loader(seed: int = 0) -> DataLoader:
    return DataLoader(_data(seed), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model, _ = dp_compatible(build_classifier("seedcnn_2d", in_channels=1, num_classes=2, input_size=SIZE, width=0.25))
    return model


def _train_round(private: Private, model: nn.Module) -> list[float]:
    losses = []
    for x, y in private.loader:
        private.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        private.optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# ---- accounting ----------------------------------------------------------------------------------


def _rdp_subsampled_gaussian(q: float, sigma: float, steps: int, order: int) -> float:
    """RDP of ``steps`` Poisson-subsampled Gaussian steps at an integer order (Mironov et al. 2019)."""
    terms = [math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
             + (order - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
             for k in range(order + 1)]
    top = max(terms)
    return steps * (top + math.log(sum(math.exp(t - top) for t in terms))) / (order - 1)


def _rdp_epsilon(q: float, sigma: float, steps: int, delta: float, orders) -> float:
    """RDP -> (epsilon, delta), Balle et al. 2020 Thm 21 (the conversion Opacus uses)."""
    return min(_rdp_subsampled_gaussian(q, sigma, steps, a) + math.log((a - 1) / a)
               - (math.log(delta) + math.log(a)) / (a - 1) for a in orders)


def _gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of one Gaussian step of sensitivity 1 (Balle & Wang 2018), by bisection."""
    from scipy.stats import norm

    def delta_at(eps: float) -> float:
        return norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)

    low, high = 0.0, 50.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_at(mid) > delta else (low, mid)
    return high


def test_rdp_accounting_of_a_training_run_matches_the_closed_form():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private = privatise(model, optimizer, _loader(), epsilon=3.0, delta=1e-4, epochs=2, accountant="rdp")
    _train_round(private, model)
    q, sigma, steps = BATCH / N, private.noise_multiplier, private.steps
    assert (private.sample_rate, steps) == (q, N // BATCH)  # one epoch: one accounted step per batch
    orders = range(2, 64)
    expected = _rdp_epsilon(q, sigma, steps, 1e-4, orders)
    spent_at_integer_orders, _ = private.engine.accountant.get_privacy_spent(delta=1e-4, alphas=list(orders))
    assert spent_at_integer_orders == pytest.approx(expected, rel=1e-6)
    eps, delta = private.spent()  # Opacus also tries fractional orders: at most the integer-order figure
    assert delta == 1e-4 and expected - 0.1 <= eps <= expected + 1e-9
    assert eps <= 3.0


def test_rdp_epsilon_of_a_known_configuration():
    """q = 0.01, sigma = 1.1, 1000 steps (10 epochs), delta 1e-5: Opacus's RDP accountant, then ours."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.01, 1000)]
    expected = _rdp_epsilon(0.01, 1.1, 1000, 1e-5, range(2, 64))
    assert accountant.get_epsilon(1e-5, alphas=list(range(2, 64))) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.7253, abs=1e-4)  # the closed form's figure, written down
    assert expected - 0.2 < accountant.get_epsilon(1e-5) <= expected  # Opacus's fractional orders: a little lower


def test_prv_accounting_matches_opacus_and_the_exact_gaussian():
    from opacus.accountants import PRVAccountant

    model = _model()
    private = privatise(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), epsilon=4.0, delta=1e-4,
                        epochs=1)
    assert private.accountant == "prv" and private.spent() == (0.0, 1e-4)
    _train_round(private, model)
    fresh = PRVAccountant()
    fresh.history = [(private.noise_multiplier, BATCH / N, N // BATCH)]
    assert private.spent()[0] == pytest.approx(fresh.get_epsilon(1e-4), rel=1e-9)

    one_step = PRVAccountant()  # no subsampling, one step: the Gaussian mechanism, whose epsilon is exact
    one_step.history = [(2.0, 1.0, 1)]
    assert one_step.get_epsilon(1e-5) == pytest.approx(_gaussian_epsilon(2.0, 1e-5), abs=0.05)


def test_noise_multiplier_is_opacus_choice_for_the_target_and_keeps_within_it():
    from opacus.accountants.utils import get_noise_multiplier

    model = _model()
    private = privatise(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), epsilon=2.0,
                        delta=default_delta(N), epochs=6)
    expected = get_noise_multiplier(target_epsilon=2.0, target_delta=1 / (10 * N), sample_rate=BATCH / N,
                                    epochs=6, accountant="prv")
    assert private.noise_multiplier == pytest.approx(expected)
    assert private.planned_steps == 6 * N // BATCH
    private.engine.accountant.history = [(private.noise_multiplier, private.sample_rate, private.planned_steps)]
    assert 2.0 - 0.05 <= private.spent()[0] <= 2.0  # the whole run spends the target, not more


# ---- training ------------------------------------------------------------------------------------


def test_dp_training_over_rounds_learns_and_spends_at_most_the_target():
    """Two federated rounds of two local epochs at epsilon 8: the loss falls, the spend adds up to <= 8."""
    model = _model()
    private, spent, losses = None, [], []
    for _ in range(2):  # a new optimizer each round, as a site would make
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        private = privatise(model, optimizer, _loader(), epsilon=8.0, delta=default_delta(N), epochs=4,
                            resume=private)
        losses += _train_round(private, model) + _train_round(private, model)
        spent.append(private.spent()[0])
    assert private.steps == 4 * N // BATCH
    assert 0 < spent[0] < spent[1] <= 8.0
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4]), losses
    eval_model = model.eval()
    x, y = _data(1).tensors
    assert (eval_model(x).argmax(1) == y).float().mean() > 0.8  # it learned the bright square


def test_resume_from_state_in_another_process_keeps_counting():
    """Each round in a new process (a new model each time): Private.state() as JSON carries the accountant on."""
    import json

    state, spent = None, []
    for _ in range(3):
        model = _model()
        private = privatise(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), epsilon=8.0,
                            delta=1e-4, epochs=3, resume=state)
        _train_round(private, model)
        state = json.loads(json.dumps(private.state()))
        spent.append(private.spent()[0])
    assert private.steps == 3 * N // BATCH and state["history"] == [[private.noise_multiplier, BATCH / N, 24]]
    assert spent[0] < spent[1] < spent[2] <= 8.0
    with pytest.raises(ConfigError, match="all the 24 its noise was chosen for"):
        privatise(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), epsilon=8.0, delta=1e-4, epochs=3,
                  resume=state)


def test_resume_refuses_other_targets_and_another_model():
    model = _model()
    first = privatise(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), epsilon=8.0, delta=1e-4,
                      epochs=2, accountant="rdp")
    with pytest.raises(ConfigError, match=r"were \(8.0, 0.0001, 2, 0.125\).*are \(4.0"):
        privatise(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), epsilon=4.0, delta=1e-4,
                  epochs=2, resume=first)
    other = _model()
    with pytest.raises(ConfigError, match="same model object every round"):
        privatise(other, torch.optim.SGD(other.parameters(), lr=0.1), _loader(), epsilon=8.0, delta=1e-4,
                  epochs=2, resume=first)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"epsilon": 0.0}, "dp_epsilon must be a positive number"),
    ({"delta": 1 / N}, r"dp_delta must lie in \(0, 1/n\) = \(0, 0.00391\) for this site's 256 .*1/\(10 n\) = 0.000391"),
    ({"epochs": 0}, "total epochs"),
    ({"max_grad_norm": float("nan")}, "dp_max_grad_norm"),
])
def test_bad_targets_refused(kwargs, match):
    model = _model()
    args = {"epsilon": 8.0, "delta": 1e-4, "epochs": 1, "max_grad_norm": 1.0} | kwargs
    with pytest.raises(ConfigError, match=match):
        privatise(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), **args)


def test_default_delta_is_a_tenth_of_one_over_n():
    assert default_delta(1000) == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="number of training cases"):
        default_delta(0)


# ---- DP-compatible networks ----------------------------------------------------------------------


def test_batchnorm_resnet_becomes_group_norm_with_the_changes_listed():
    from opacus.validators import ModuleValidator

    original = build_classifier("resnet18_2d", in_channels=1, num_classes=2, input_size=SIZE, width=0.25)
    with pytest.raises(ConfigError, match="not DP-compatible: .*BatchNorm"):
        privatise(original, torch.optim.SGD(original.parameters(), lr=0.1), _loader(), epsilon=8.0, delta=1e-4,
                  epochs=1)
    model, changes = dp_compatible(original)
    assert any("BatchNorm2d -> GroupNorm(" in c and "each example's own gradient" in c for c in changes), changes
    assert any("in-place operation(s) made out of place" in c for c in changes), changes
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in original.modules())  # the given model is left as it was
    assert ModuleValidator.is_valid(model)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in original.named_parameters()]
    assert model.cam_layer == original.cam_layer and model(torch.zeros(3, 1, *SIZE)).shape == (3, 2)
    _, again = dp_compatible(model)
    assert again == []  # nothing left to change


@pytest.mark.parametrize("name", ["densenet121_2d", "efficientnetb0_2d", "mobilenet_2d", "contextnet_2d"])
def test_registry_networks_train_under_dp_after_the_fixes(name):
    model, _ = dp_compatible(build_classifier(name, in_channels=1, num_classes=2, input_size=(32, 32)))
    from opacus.validators import ModuleValidator

    assert ModuleValidator.is_valid(model)  # and dp_compatible's own trial step (forward + backward) passed


class _WritesIntoItsLayer(nn.Module):
    """A layer's output changed in place by a tensor method: nothing Opacus or medlens can rewrite."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).clamp_(min=0)


def test_network_that_cannot_be_made_compatible_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="_WritesIntoItsLayer cannot be trained with DP-SGD.*modified inplace"):
        dp_compatible(_WritesIntoItsLayer(), example=torch.zeros(2, 4))
