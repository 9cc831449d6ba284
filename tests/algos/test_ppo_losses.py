"""PPO's clipped surrogate and clipped value loss (score_rl/algos/losses.py): gradients of each term, on a free
logits tensor as in test_losses.py."""

from __future__ import annotations

import pytest
import torch

from score_rl.algos.losses import ppo_kl_loss, reinforce_kl_loss, value_loss

B, T, V = 2, 4, 6
TARGETS = torch.tensor([[1, 3, 0, 5], [2, 2, 4, 1]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def _logp(logits):
    return torch.log_softmax(logits, -1).gather(-1, TARGETS.unsqueeze(-1)).squeeze(-1)


def _params(seed=0):
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


def _grad(loss_fn):
    params = _params()
    loss, parts = loss_fn(params)
    loss.backward()
    return params.grad, parts


ADV = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 2.0, 1.0, 1.0]])
ZERO = torch.zeros(B, T)


@pytest.mark.parametrize("clip_eps", [0.0, 0.2])
def test_at_ratio_one_the_ppo_gradient_is_the_reinforce_gradient(clip_eps):
    """π_old = π (the first minibatch): −min(ρA, clip(ρ)A) has the gradient −A ∇log π, whatever ε."""
    old = _logp(_params()).detach()
    ppo, parts = _grad(lambda p: ppo_kl_loss(_logp(p), old, old, ADV, ZERO, MASK, clip_eps))
    reinforce, _ = _grad(lambda p: reinforce_kl_loss(_logp(p), old, ADV, ZERO, MASK, kl_estimator="k1",
                                                     kl_in_loss=False))
    assert torch.allclose(ppo, reinforce, atol=1e-7)
    assert float(parts["clipped"]) == 0 and float(parts["approx_kl"]) == 0 and float(parts["ratio_dev"]) == 0


def _shifted_old(shift):
    """log π_old = log π − shift: the ratio π/π_old is e^shift on every token."""
    return (_logp(_params()) - shift).detach()


@pytest.mark.parametrize("sign, shift", [(1.0, 0.5), (-1.0, -0.5)])
def test_clipped_tokens_give_no_gradient(sign, shift):
    """A > 0 and ρ > 1 + ε, or A < 0 and ρ < 1 − ε: the update has already gone far enough in the advantage's
    direction: no gradient."""
    adv = torch.full((B, T), sign)
    grad, parts = _grad(lambda p: ppo_kl_loss(_logp(p), _shifted_old(shift), _shifted_old(shift), adv, ZERO, MASK,
                                              0.2))
    assert grad.abs().sum() == 0
    assert float(parts["clipped"]) == float(MASK.sum())


@pytest.mark.parametrize("sign, shift", [(1.0, -0.5), (-1.0, 0.5)])
def test_the_pessimistic_side_is_not_clipped(sign, shift):
    """A > 0 and ρ < 1 − ε (or A < 0 and ρ > 1 + ε): the unclipped term is the min; the gradient is −A ρ ∇log π."""
    adv = torch.full((B, T), sign)
    old = _shifted_old(shift)
    grad, parts = _grad(lambda p: ppo_kl_loss(_logp(p), old, old, adv, ZERO, MASK, 0.2))
    ratio = torch.exp(torch.tensor(shift))
    want, _ = _grad(lambda p: reinforce_kl_loss(_logp(p), old, adv * ratio, ZERO, MASK, kl_estimator="k1",
                                                kl_in_loss=False))
    assert torch.allclose(grad, want, atol=1e-6) and grad.abs().sum() > 0
    assert float(parts["clipped"]) == 0


def test_no_clipping_with_eps_zero():
    adv = torch.ones(B, T)
    old = _shifted_old(0.5)
    grad, _ = _grad(lambda p: ppo_kl_loss(_logp(p), old, old, adv, ZERO, MASK, 0.0))
    assert grad.abs().sum() > 0


def test_approx_kl_is_that_of_the_ratio():
    old = _shifted_old(0.3)
    _, parts = _grad(lambda p: ppo_kl_loss(_logp(p), old, old, ADV, ZERO, MASK, 0.2))
    r = torch.exp(torch.tensor(0.3))
    assert float(parts["approx_kl"]) == pytest.approx(float((r - 1 - 0.3) * MASK.sum()), rel=1e-5)
    assert float(parts["ratio_dev"]) == pytest.approx(float((r - 1) * MASK.sum()), rel=1e-5)


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_the_kl_loss_term_is_added_as_for_reinforce(estimator):
    old = _logp(_params()).detach()
    ref = _logp(_params(seed=3)).detach()
    coef = torch.full((B, T), 0.3)
    ppo, _ = _grad(lambda p: ppo_kl_loss(_logp(p), old, ref, ZERO, coef, MASK, 0.2, kl_estimator=estimator,
                                         kl_in_loss=True))
    reinforce, _ = _grad(lambda p: reinforce_kl_loss(_logp(p), ref, ZERO, coef, MASK, kl_estimator=estimator,
                                                     kl_in_loss=True))
    assert torch.allclose(ppo, reinforce, atol=1e-7) and ppo.abs().sum() > 0


# --- the critic ------------------------------------------------------------------------------------------------------
def test_value_loss_pulls_values_towards_returns():
    values = torch.tensor([[0.0, 1.0, 2.0, 0.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 1.0, 0.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, parts = value_loss(values, values.detach(), returns, mask, value_clip=0.0)
    loss.backward()
    assert values.grad.tolist() == [[pytest.approx(-1 / 3), 0.0, pytest.approx(2 / 3), 0.0]]  # (V − R) / tokens
    assert float(parts["value_loss"]) == pytest.approx(0.5 * (1 + 0 + 4))


def test_value_clipping_stops_the_pull_beyond_the_clip_range():
    old = torch.zeros(1, 3)
    returns = torch.full((1, 3), 1.0)
    values = torch.tensor([[0.1, 0.5, -0.5]], requires_grad=True)  # inside, past (towards R), past (away from R)
    loss, _ = value_loss(values, old, returns, torch.ones(1, 3), value_clip=0.2)
    loss.backward()
    assert values.grad[0, 0] < 0, "inside the range: pulled towards the return"
    assert values.grad[0, 1] == 0, "moved more than c towards the return: no more pull"
    assert values.grad[0, 2] < 0, "moved away from the return: the unclipped (larger) error still pulls back"


def test_value_clipping_bounds_the_update_over_many_epochs():
    """Many SGD steps on the same targets (K epochs): with clipping every value stays within c (plus one step) of its
    old value; without, it goes all the way to the return."""
    old = torch.tensor([[0.0, 2.0, -1.0]])
    returns = torch.tensor([[3.0, -2.0, 4.0]])
    lr, c = 0.05, 0.25
    for clip, bound in ((c, c + lr * 5.0), (0.0, None)):
        values = old.clone().requires_grad_(True)
        for _ in range(1000):
            loss, _ = value_loss(values, old, returns, torch.ones(1, 3), value_clip=clip, denominator=1.0)
            values.grad = None
            loss.backward()
            with torch.no_grad():
                values -= lr * values.grad
        moved = (values.detach() - old).abs()
        if bound is not None:
            assert float(moved.max()) <= bound and float(moved.min()) >= c
        else:
            assert torch.allclose(values.detach(), returns, atol=1e-4)
