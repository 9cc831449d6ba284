"""The per-token policy objective reinforce_kl_loss (score_rl/algos/losses.py).

The "model" is a free logits tensor [B, T, V]; log-probs are taken at fixed target tokens, as the learner does.
"""

from __future__ import annotations

from typing import Tuple

import pytest
import torch

from score_rl.algos.losses import reinforce_kl_loss

B, T, V = 2, 4, 6
TARGETS = torch.tensor([[1, 3, 0, 5], [2, 2, 4, 1]])
ESTIMATORS = ["k1", "k2", "k3", "full"]


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed))


def _logp(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, TARGETS.unsqueeze(-1)).squeeze(-1)


def _loss(params: torch.Tensor, ref_logits: torch.Tensor, advantage, kl_coef, mask, **kw):
    return reinforce_kl_loss(_logp(params), _logp(ref_logits), advantage, kl_coef, mask,
                             logits=params, ref_logits=ref_logits, **kw)


def _sgd_step(advantage, kl_coef, mask, ref_logits, lr=0.5, **kw) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logp before, logp after) one SGD step on the loss."""
    params = _logits().requires_grad_(True)
    loss, _ = _loss(params, ref_logits, advantage, kl_coef, mask, **kw)
    loss.backward()
    with torch.no_grad():
        before = _logp(params).clone()
        after = _logp(params - lr * params.grad)
    return before, after


def _one_hot(b: int, t: int, value: float = 1.0) -> torch.Tensor:
    x = torch.zeros(B, T)
    x[b, t] = value
    return x


# --- the policy-gradient term ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_advantage_sign_moves_the_tokens_logprob(sign):
    before, after = _sgd_step(_one_hot(0, 1, sign), torch.zeros(B, T), torch.ones(B, T), _logits(1))
    if sign > 0:
        assert after[0, 1] > before[0, 1], "a positive advantage must increase the token's log-prob"
    else:
        assert after[0, 1] < before[0, 1], "a negative advantage must decrease the token's log-prob"


def test_pg_gradient_is_minus_advantage_over_token_count():
    logp = torch.full((B, T), -1.0, requires_grad=True)
    adv = torch.tensor([[2.0, -1.0, 0.5, 0.0], [1.0, 1.0, -3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, parts = reinforce_kl_loss(logp, logp.detach(), adv, torch.zeros(B, T), mask, kl_in_loss=False)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * mask / 5)
    assert float(parts["pg"]) == pytest.approx(float((adv * mask).sum()))  # -A * logp with logp = -1


# --- the KL term -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["k2", "k3"])
@pytest.mark.parametrize("ref_shift", [2.0, -2.0])
def test_zero_advantage_kl_moves_logp_toward_ref(estimator, ref_shift):
    ref_logits = _logits().clone()
    ref_logits[0, 2, TARGETS[0, 2]] += ref_shift  # the reference likes (or dislikes) this token more than π does
    before, after = _sgd_step(torch.zeros(B, T), torch.full((B, T), 0.5), _one_hot(0, 2), ref_logits,
                              kl_estimator=estimator)
    ref = _logp(ref_logits)[0, 2]
    gap_before, gap_after = (before[0, 2] - ref).abs(), (after[0, 2] - ref).abs()
    assert gap_after < gap_before, f"{estimator}: with A=0 the KL term must pull log pi toward log pi_ref"
    assert torch.sign(after[0, 2] - before[0, 2]) == torch.sign(ref - before[0, 2])


def test_zero_advantage_full_kl_moves_the_distribution_toward_ref():
    ref_logits = _logits(1)
    params = _logits().requires_grad_(True)
    mask = torch.ones(B, T)
    loss, _ = _loss(params, ref_logits, torch.zeros(B, T), torch.full((B, T), 0.5), mask, kl_estimator="full")
    loss.backward()

    def kl(x):
        lp, lr = torch.log_softmax(x, -1), torch.log_softmax(ref_logits, -1)
        return (lp.exp() * (lp - lr)).sum(-1)

    with torch.no_grad():
        assert (kl(params - 0.5 * params.grad) < kl(params)).all(), "full KL: a step must reduce KL at every position"


@pytest.mark.parametrize("estimator", ["k2", "k3", "full"])
def test_zero_advantage_at_ref_gives_zero_gradient(estimator):
    params = _logits().requires_grad_(True)
    loss, _ = _loss(params, _logits().clone(), torch.zeros(B, T), torch.full((B, T), 0.5), torch.ones(B, T),
                    kl_estimator=estimator)
    loss.backward()
    assert params.grad.abs().max() < 1e-6, f"{estimator}: pi = ref must be a stationary point of the KL term"


def test_k2_kl_gradient_is_kl_coef_times_log_ratio():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5, -2.0]])
    coef = torch.tensor([[0.25, 0.25, 0.01, 0.01]])  # e.g. Stage I: beta2 on turn 1, beta1 on turn 2
    loss, _ = reinforce_kl_loss(logp, ref, torch.zeros(1, 4), coef, torch.ones(1, 4), kl_estimator="k2")
    loss.backward()
    torch.testing.assert_close(logp.grad, coef * (logp.detach() - ref) / 4)


# --- masking ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_masked_positions_get_zero_gradient(estimator):
    params = _logits().requires_grad_(True)
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    adv = torch.full((B, T), 5.0)  # large advantages and KL coefficients everywhere, also where masked
    loss, _ = _loss(params, _logits(1), adv, torch.full((B, T), 2.0), mask, kl_estimator=estimator)
    loss.backward()
    masked = ~mask.bool()
    assert params.grad[masked].abs().max() == 0, f"{estimator}: masked (prompt/padding) positions must get no gradient"
    assert params.grad[mask.bool()].abs().max() > 0, "sanity: unmasked positions do get a gradient"


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_extreme_log_ratio_at_a_masked_position_does_not_give_nan(estimator):
    logp = torch.tensor([[-1.0, -100.0]], requires_grad=True)  # a padding position the policy finds absurd
    ref = torch.tensor([[-1.2, -5.0]])  # exp(ref - logp) overflows float32 there
    loss, parts = reinforce_kl_loss(logp, ref, torch.ones(1, 2), torch.full((1, 2), 0.1), torch.tensor([[1, 0]]),
                                    kl_estimator=estimator)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), "masked positions must not poison the loss"
    assert logp.grad[0, 1] == 0
    assert torch.isfinite(parts["kl"])


# --- kl_in_loss=False ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "full"])
def test_kl_in_loss_false_removes_the_kl_term(estimator):
    params = _logits().requires_grad_(True)
    loss, parts = _loss(params, _logits(1), torch.zeros(B, T), torch.full((B, T), 1.0), torch.ones(B, T),
                        kl_estimator=estimator, kl_in_loss=False)
    loss.backward()
    assert float(loss.detach()) == 0.0 and params.grad.abs().max() == 0, \
        "kl_in_loss=False: no KL in the loss or its gradient"
    assert float(parts["kl"]) != 0.0, "the KL is still reported for logging"


def test_kl_in_loss_false_equals_pure_reinforce():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-3.0, -0.1, -2.0]])
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    loss, _ = reinforce_kl_loss(logp, ref, adv, torch.ones(1, 3), torch.ones(1, 3), kl_in_loss=False)
    assert float(loss) == pytest.approx(float((-adv * logp).mean()))
    with_kl, _ = reinforce_kl_loss(logp, ref, adv, torch.ones(1, 3), torch.ones(1, 3), kl_in_loss=True)
    assert float(with_kl) == pytest.approx(float((-adv * logp + 0.5 * (logp - ref) ** 2).mean()))


# --- aggregation -----------------------------------------------------------------------------------------------
PER_TOKEN_LOGP = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
AGG_MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # 3 tokens, 1 token, an all-padding row


def _agg_loss(**kw) -> float:
    z = torch.zeros_like(PER_TOKEN_LOGP)
    loss, _ = reinforce_kl_loss(PER_TOKEN_LOGP, PER_TOKEN_LOGP, torch.ones_like(z), z, AGG_MASK, **kw)
    return float(loss)


def test_token_mean_divides_by_the_number_of_trained_tokens():
    assert _agg_loss(loss_agg="token-mean") == pytest.approx(10.0 / 4), "token-mean: sum over tokens / #tokens"


def test_seq_mean_token_sum_divides_by_the_number_of_nonempty_sequences():
    assert _agg_loss(loss_agg="seq-mean-token-sum") == pytest.approx(10.0 / 2), (
        "seq-mean-token-sum: sum over tokens / #sequences with at least one trained token"
    )


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_explicit_denominator_overrides(agg):
    assert _agg_loss(loss_agg=agg, denominator=8.0) == pytest.approx(10.0 / 8)


def test_all_masked_batch_gives_zero_loss_not_nan():
    z = torch.zeros(2, 3)
    for agg in ("token-mean", "seq-mean-token-sum"):
        loss, _ = reinforce_kl_loss(z - 1, z, torch.ones(2, 3), z, z, loss_agg=agg)
        assert float(loss) == 0.0, f"{agg}: an all-masked micro-batch must contribute 0"


def test_unknown_aggregation_is_an_error():
    with pytest.raises(ValueError, match="aggregation"):
        _agg_loss(loss_agg="sum")


# --- one-step off-policy: the truncated importance weight (trainer.off_policy_steps=1) -------------------------
def test_importance_weight_scales_each_tokens_gradient_by_pi_over_pi_sampler():
    """d loss / d logp = -w * A / n with w = π/π_sampler (detached): a token the current policy likes twice as much as
    the sampler did counts twice; w = 1 (on-policy) gives the plain REINFORCE gradient."""
    logp = torch.full((B, T), -1.0, requires_grad=True)
    sampling = torch.tensor([[-1.0, -1.0 - 0.5, -1.0 + 0.5, -1.0], [-1.0 - 0.2, -1.0, -1.0, -1.0]])
    adv = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    loss, parts = reinforce_kl_loss(logp, logp.detach(), adv, torch.zeros(B, T), mask, kl_in_loss=False,
                                    sampling_logp=sampling, is_clip=10.0)
    loss.backward()
    w = torch.exp(logp.detach() - sampling)
    torch.testing.assert_close(logp.grad, -w * adv * mask / 5)
    assert float(parts["is_weight"]) == pytest.approx(float((w * mask).sum()))
    assert float(parts["is_clipped"]) == 0.0


def test_importance_weight_is_truncated_at_is_clip_and_counted():
    logp = torch.zeros(B, T, requires_grad=True)
    sampling = torch.full((B, T), -3.0)  # w = e^3 ≈ 20 everywhere
    sampling[1, 0] = 0.0  # w = 1
    adv = torch.ones(B, T)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    loss, parts = reinforce_kl_loss(logp, logp.detach(), adv, torch.zeros(B, T), mask, kl_in_loss=False,
                                    sampling_logp=sampling, is_clip=2.0)
    loss.backward()
    expected = -torch.tensor([[2.0, 2.0, 0, 0], [1.0, 0, 0, 0]]) / 3
    torch.testing.assert_close(logp.grad, expected)
    assert float(parts["is_clipped"]) == 2.0 and float(parts["is_weight"]) == pytest.approx(5.0)


def test_importance_weight_scales_the_kl_term_too_and_a_masked_extreme_ratio_is_harmless():
    """The weight multiplies the token's whole loss (the KL term is an expectation under π as well); an extreme
    log-ratio at a masked position gives neither inf nor NaN."""
    logp = torch.full((B, T), -1.0, requires_grad=True)
    ref = torch.full((B, T), -2.0)
    sampling = torch.full((B, T), -1.0 - 0.3)
    sampling[1, 3] = -1e4  # masked: exp(1e4) would overflow
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    kl_coef = torch.full((B, T), 0.5)
    plain, _ = reinforce_kl_loss(logp, ref, torch.zeros(B, T), kl_coef, mask, kl_estimator="k2")
    g_plain, = torch.autograd.grad(plain, logp)
    weighted, _ = reinforce_kl_loss(logp, ref, torch.zeros(B, T), kl_coef, mask, kl_estimator="k2",
                                    sampling_logp=sampling, is_clip=2.0)
    g_weighted, = torch.autograd.grad(weighted, logp)
    torch.testing.assert_close(g_weighted, g_plain * torch.exp(torch.tensor(0.3)) * mask)
    assert torch.isfinite(weighted) and torch.isfinite(g_weighted).all()
