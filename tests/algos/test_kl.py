"""Gradient directions and values of every KL variant (score_rl/algos/kl.py and the KL part of losses.py).

A one-position categorical policy π = softmax(θ) over V = 5 tokens and a fixed reference π_ref. Expectations over
sampled tokens are computed exactly by enumerating the vocabulary with the (detached) sampling probabilities as
weights — this is the expected gradient of the loss on tokens sampled from π, the setting of the learner — and once
by Monte Carlo with many samples from torch.distributions (fixed seed).
"""

from __future__ import annotations

import pytest
import torch

from score_rl.algos.kl import SAMPLED_KL, kl_full, kl_k1, kl_k2, kl_k3
from score_rl.algos.losses import per_token_kl, reinforce_kl_loss

DT = torch.float64
THETA0 = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.2], dtype=DT)
REF_LOGITS = torch.tensor([0.2, 0.9, -0.7, 0.1, 0.5], dtype=DT)


def _theta() -> torch.Tensor:
    return THETA0.clone().requires_grad_(True)


def reverse_kl(theta: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref), written out independently of the code under test."""
    logp, ref = torch.log_softmax(theta, -1), torch.log_softmax(REF_LOGITS, -1)
    return (logp.exp() * (logp - ref)).sum()


def forward_kl(theta: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π)."""
    logp, ref = torch.log_softmax(theta, -1), torch.log_softmax(REF_LOGITS, -1)
    return (ref.exp() * (ref - logp)).sum()


def grad_of(fn, theta: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(fn(theta), theta)
    return g


def expected_estimator(name: str, theta: torch.Tensor) -> torch.Tensor:
    """E_{y~π}[k(y)] with π detached as weights: its gradient is the expected gradient of k as a sampled loss."""
    logp, ref = torch.log_softmax(theta, -1), torch.log_softmax(REF_LOGITS, -1)
    weights = logp.detach().exp()
    return (weights * SAMPLED_KL[name](logp, ref)).sum()


def expected_grad(name: str) -> torch.Tensor:
    return grad_of(lambda th: expected_estimator(name, th), _theta())


def descend(loss_fn, steps: int = 1, lr: float = 0.1) -> torch.Tensor:
    theta = _theta()
    for _ in range(steps):
        (g,) = torch.autograd.grad(loss_fn(theta), theta)
        theta = (theta - lr * g).detach().requires_grad_(True)
    return theta.detach()


def test_setup_reverse_and_forward_kl_gradients_differ():
    """The fixture must distinguish the two KL directions, or the direction tests below prove nothing."""
    g_rev, g_fwd = grad_of(reverse_kl, _theta()), grad_of(forward_kl, _theta())
    assert (g_rev - g_fwd).norm() > 0.1 * g_rev.norm()


# --- k2: the reverse KL ----------------------------------------------------------------------------------------
def test_k2_as_loss_has_the_gradient_of_reverse_kl():
    torch.testing.assert_close(expected_grad("k2"), grad_of(reverse_kl, _theta()), atol=1e-10, rtol=1e-8,
                               msg="E_pi[grad k2] must equal grad KL(pi || ref)")


def test_k2_descent_step_decreases_reverse_kl():
    theta = descend(lambda th: expected_estimator("k2", th))
    assert reverse_kl(theta) < reverse_kl(THETA0), "a gradient-descent step on the k2 loss must reduce KL(pi||ref)"


def test_k2_descent_converges_to_the_reference():
    theta = descend(lambda th: expected_estimator("k2", th), steps=300, lr=0.5)
    assert reverse_kl(theta) < 1e-4 * reverse_kl(THETA0), "descending the k2 loss must bring pi to pi_ref"


# --- k3: the forward KL ----------------------------------------------------------------------------------------
def test_k3_as_loss_follows_the_gradient_of_forward_kl():
    torch.testing.assert_close(expected_grad("k3"), grad_of(forward_kl, _theta()), atol=1e-10, rtol=1e-8,
                               msg="E_pi[grad k3] must equal grad KL(ref || pi) (the forward KL)")
    assert (expected_grad("k3") - grad_of(reverse_kl, _theta())).norm() > 1e-2, "k3's gradient is not reverse KL's"


def test_k3_descent_step_decreases_forward_kl():
    theta = descend(lambda th: expected_estimator("k3", th))
    assert forward_kl(theta) < forward_kl(THETA0), "a gradient-descent step on the k3 loss must reduce KL(ref||pi)"


# --- k1: zero expected gradient as a loss; unbiased in the reward ----------------------------------------------
def test_k1_as_loss_has_zero_expected_gradient():
    g = expected_grad("k1")
    assert g.abs().max() < 1e-12, f"E_pi[grad k1] must be 0 (k1 belongs in the reward, not the loss), got {g}"
    assert grad_of(reverse_kl, _theta()).abs().max() > 1e-2, "sanity: the true KL gradient is not zero here"


def test_k1_descent_does_not_reduce_kl():
    theta = descend(lambda th: expected_estimator("k1", th), steps=50, lr=0.5)
    torch.testing.assert_close(theta, THETA0, msg="the expected k1 loss gradient must not move the policy")


def test_k1_as_detached_reward_penalty_gives_the_reverse_kl_gradient():
    """Score-function form: E_pi[k1(y).detach() * grad log pi(y)] = grad KL(pi || ref) — why k1 lives in the reward."""
    theta = _theta()
    logp, ref = torch.log_softmax(theta, -1), torch.log_softmax(REF_LOGITS, -1)
    surrogate = (logp.detach().exp() * kl_k1(logp, ref).detach() * logp).sum()
    (g,) = torch.autograd.grad(surrogate, theta)
    torch.testing.assert_close(g, grad_of(reverse_kl, _theta()), atol=1e-10, rtol=1e-8)


# --- full: the exact KL ----------------------------------------------------------------------------------------
def test_full_equals_the_exact_kl():
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=THETA0), torch.distributions.Categorical(logits=REF_LOGITS)
    )
    torch.testing.assert_close(kl_full(THETA0, REF_LOGITS).double(), expected, atol=1e-6, rtol=1e-5)
    # batched [B, T, V] logits give one KL per position
    logits = torch.stack([THETA0, REF_LOGITS, THETA0 * 2]).reshape(1, 3, 5)
    ref = REF_LOGITS.expand(1, 3, 5)
    out = kl_full(logits, ref)
    assert out.shape == (1, 3)
    assert out[0, 1].abs() < 1e-6, "KL of the reference against itself must be 0"


def test_full_via_per_token_kl_descent_reduces_kl():
    def loss(theta):
        return per_token_kl("full", logp=None, ref_logp=None, logits=theta, ref_logits=REF_LOGITS)

    g = grad_of(loss, _theta())
    torch.testing.assert_close(g.double(), grad_of(reverse_kl, _theta()), atol=1e-5, rtol=1e-4)
    theta = descend(loss)
    assert reverse_kl(theta) < reverse_kl(THETA0), "a gradient-descent step on the full KL must reduce KL(pi||ref)"


def test_full_without_logits_is_an_error():
    with pytest.raises(ValueError, match="logits"):
        per_token_kl("full", torch.zeros(3), torch.zeros(3))


# --- estimator values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_expectation_equals_kl(name):
    value = expected_estimator(name, THETA0)
    torch.testing.assert_close(value, reverse_kl(THETA0), atol=1e-12, rtol=1e-10,
                               msg=f"E_pi[{name}] must equal KL(pi || ref)")


def test_estimator_per_token_values():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-2.0, -1.0, -0.5])
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(kl_k2(logp, ref), torch.tensor([0.5, 0.5, 0.0]))
    e = torch.exp(torch.tensor(1.0))
    torch.testing.assert_close(kl_k3(logp, ref), torch.stack([1 / e - 1 + 1, e - 1 - 1, torch.tensor(0.0)]))
    assert (kl_k3(logp, ref) >= 0).all() and (kl_k2(logp, ref) >= 0).all(), "k2 and k3 are non-negative per token"


# --- Monte Carlo: the loss function on sampled tokens ----------------------------------------------------------
@pytest.mark.parametrize("name,target", [("k2", reverse_kl), ("k3", forward_kl), ("k1", None)])
def test_sampled_kl_loss_gradient_direction_monte_carlo(name, target):
    gen = torch.Generator().manual_seed(1234)
    n = 200_000
    with torch.no_grad():
        samples = torch.multinomial(torch.softmax(THETA0, -1), n, replacement=True, generator=gen)
    theta = _theta()
    logp = torch.log_softmax(theta, -1)[samples].unsqueeze(0)  # [1, n]: one "sequence" of sampled tokens
    ref_logp = torch.log_softmax(REF_LOGITS, -1)[samples].unsqueeze(0)
    ones = torch.ones_like(logp)
    loss, parts = reinforce_kl_loss(logp, ref_logp, advantage=torch.zeros_like(logp), kl_coef=ones, mask=ones,
                                    kl_estimator=name)
    (g,) = torch.autograd.grad(loss, theta)
    if target is None:
        assert g.norm() < 0.005, f"k1 as a loss: the sampled gradient must average to ~0, got {g}"
        return
    exact = grad_of(target, _theta())
    cos = torch.dot(g, exact) / (g.norm() * exact.norm())
    assert cos > 0.999, f"{name}: sampled loss gradient must point along grad of {target.__name__} (cos={cos:.4f})"
    torch.testing.assert_close(g, exact, atol=0.005, rtol=0.02)
