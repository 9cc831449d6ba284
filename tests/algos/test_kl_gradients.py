"""Which gradient each KL estimator × placement follows on whole sequences (SCoRe's KL is sequence-level per turn).

SCoRe's objective (Eq. 3/4) penalises β·KL(π(·|x) ‖ π_ref(·|x)) over whole responses y = (y_1, …, y_T). On a small
autoregressive categorical model — the logits of token t are a free table indexed by the whole prefix y_<t, the
reference is a fixed random table of the same shape, no temperature — every sequence is enumerated, so every
expectation below is exact (no sampling). With log r_t = log π(y_t|y_<t) − log π_ref(y_t|y_<t) and KL_t(y_<t) the
exact KL of the next-token distributions after the prefix y_<t:

    ∇KL_seq     = ∇ Σ_y π(y) Σ_t log r_t                                 (the paper's objective, by autograd)
    g_rev_pos   = Σ_t E_{y_<t}[∇ KL(π(·|y_<t) ‖ π_ref(·|y_<t))]        (per-position reverse KL, prefixes held fixed)
    g_fwd_pos   = Σ_t E_{y_<t}[∇ KL(π_ref(·|y_<t) ‖ π(·|y_<t))]        (per-position forward KL, prefixes held fixed)
    g_prefix    = Σ_t E_y[KL_t(y_<t) · ∇ log π(y_<t)]                  (what moving the prefix distribution does)
    ∇KL_seq     = g_rev_pos + g_prefix                                  (chain rule; checked below)

What the trainer descends (β = 1; gradients of the loss, computed through score_rl.algos.losses.reinforce_kl_loss
with the π(y)-weights of the enumeration folded into the per-sequence coefficients):

    placement "loss"   (algo.kl_in_reward=false): g_loss[k]   = E_y[∇ Σ_t k_t(y)]
    placement "reward" (algo.kl_in_reward=true):  g_reward[k] = E_y[(Σ_t k_t(y)).detach() · ∇ log π(y)]
        (the advantage is A = −β·penalty and the loss −A·log π, so the KL part of its gradient is E[penalty·∇log π])

    g_loss[k] + g_reward[k] = ∇ E_y[Σ_t k_t(y)]    (product rule; for k1, k3, full the expected value is KL_seq)

Claims tested (each its own function): reward+k1 = ∇KL_seq exactly; loss+k1 = 0; loss+k2 = loss+full = g_rev_pos
≠ ∇KL_seq; loss+k3 = g_fwd_pos; reward+k3 = ∇KL_seq − g_fwd_pos; reward+full = g_prefix = ∇KL_seq − g_rev_pos;
reward+k2 = ∇(Σ_t E[½ log² r_t]) − g_rev_pos, no KL's gradient. At T = 1 there is no prefix: g_prefix = 0, so
loss+k2 = loss+full = reward+k1 = ∇KL and reward+full = 0. The table is in docs/config.md.

The reward placements other than k1 are not wired into the trainer (config validation allows the reward penalty with
k1 only); they are here to show why.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, List

import pytest
import torch

from score_rl.algos.advantages import compute_advantages
from score_rl.algos.kl import kl_full, kl_k1, kl_k2, kl_k3
from score_rl.algos.losses import per_token_kl, reinforce_kl_loss
from score_rl.episode import Episode, Turn

DT = torch.float64
SEEDS = (0, 1, 2)
SHAPES = ((2, 3), (2, 4), (3, 3))  # (T tokens per sequence, V vocabulary); T >= 2: a prefix exists
SAMPLED = ("k1", "k2", "k3")
ESTIMATORS = SAMPLED + ("full",)
EXACT = dict(atol=1e-11, rtol=1e-9)  # float64 end to end
FULL = dict(atol=1e-6, rtol=1e-5)  # kl_full computes in float32 (logits.float()) by design
# the smallest relative differences ‖g − ∇KL_seq‖/‖∇KL_seq‖ asserted where a claim is "≠": measured values on every
# seed × shape here are at least 3x larger (see test_loss_k2_and_full_are_not_the_sequence_kl_gradient)
MARGIN = 0.02


class SeqModel:
    """π(y) = Π_t softmax(θ_t[y_<t])[y_t] with θ_t a free table [V]*(t+1); π_ref the same with fixed random tables."""

    def __init__(self, T: int, V: int, seed: int, scale: float = 1.0):
        gen = torch.Generator().manual_seed(seed)
        self.T, self.V = T, V
        self.sizes = [V ** (t + 1) for t in range(T)]
        n = sum(self.sizes)
        self.theta0 = scale * torch.randn(n, generator=gen, dtype=DT)
        self.ref_theta = scale * torch.randn(n, generator=gen, dtype=DT)
        self.seqs = torch.tensor(list(itertools.product(range(V), repeat=T)))  # [N = V^T, T]: every sequence

    def theta(self) -> torch.Tensor:
        return self.theta0.clone().requires_grad_(True)

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        """[N, T, V]: the next-token logits at every position of every sequence."""
        n_seq, cols = len(self.seqs), []
        for t, table in enumerate(torch.split(flat, self.sizes)):
            table = table.reshape((self.V,) * (t + 1))
            prefix = tuple(self.seqs[:, s] for s in range(t))
            cols.append(table[prefix] if t else table.expand(n_seq, self.V))
        return torch.stack(cols, 1)

    def token_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, T]: log π(y_t | y_<t) of the tokens of every sequence."""
        return torch.log_softmax(logits, -1).gather(-1, self.seqs.unsqueeze(-1)).squeeze(-1)

    def parts(self, theta: torch.Tensor):
        logits, ref_logits = self.logits(theta), self.logits(self.ref_theta)
        return logits, ref_logits, self.token_logprobs(logits), self.token_logprobs(ref_logits)


def grad_of(fn: Callable[[torch.Tensor], torch.Tensor], model: SeqModel) -> torch.Tensor:
    theta = model.theta()
    (g,) = torch.autograd.grad(fn(theta), theta)
    return g


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())


# --- the targets, written out independently of the code under test --------------------------------------------
def seq_kl(model: SeqModel, theta: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref) over whole sequences: Σ_y π(y) log(π(y)/π_ref(y))."""
    _, _, logp, ref_logp = model.parts(theta)
    seq_logp, seq_ref = logp.sum(-1), ref_logp.sum(-1)
    return (seq_logp.exp() * (seq_logp - seq_ref)).sum()


def seq_forward_kl(model: SeqModel, theta: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π) over whole sequences."""
    _, _, logp, ref_logp = model.parts(theta)
    seq_logp, seq_ref = logp.sum(-1), ref_logp.sum(-1)
    return (seq_ref.exp() * (seq_ref - seq_logp)).sum()


def _position_kls(model: SeqModel, theta: torch.Tensor, forward: bool) -> torch.Tensor:
    """[N, T]: KL of the next-token distributions after each prefix y_<t of every sequence (reverse or forward)."""
    logits, ref_logits, _, _ = model.parts(theta)
    p, q = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    if forward:
        p, q = q, p
    return (p.exp() * (p - q)).sum(-1)


def per_position_kl(model: SeqModel, theta: torch.Tensor, forward: bool = False) -> torch.Tensor:
    """Σ_t E_{y_<t}[KL_t(y_<t)] with the prefix distribution detached: its gradient is g_rev_pos (or g_fwd_pos).

    Weighting each full sequence by π(y) is the same as weighting each prefix by its marginal, as KL_t depends on the
    prefix only."""
    _, _, logp, _ = model.parts(theta)
    weights = logp.sum(-1).exp().detach()
    return (weights.unsqueeze(-1) * _position_kls(model, theta, forward)).sum()


def prefix_score_surrogate(model: SeqModel, theta: torch.Tensor) -> torch.Tensor:
    """Its gradient is g_prefix = Σ_t E_y[KL_t(y_<t) · ∇ log π(y_<t)] (KL_t detached)."""
    _, _, logp, _ = model.parts(theta)
    weights = logp.sum(-1).exp().detach()
    kls = _position_kls(model, theta, forward=False).detach()
    prefix_logp = torch.cumsum(logp, -1) - logp  # log π(y_<t): the tokens before position t
    return (weights.unsqueeze(-1) * kls * prefix_logp).sum()


def expected_value(model: SeqModel, theta: torch.Tensor, name: str) -> torch.Tensor:
    """E_{y~π}[Σ_t k_t(y)], π not detached (the estimator's expected value as a function of θ)."""
    logits, ref_logits, logp, ref_logp = model.parts(theta)
    est = per_token_kl(name, logp, ref_logp, logits, ref_logits).to(DT)
    return (logp.sum(-1).exp() * est.sum(-1)).sum()


def half_square_log_ratio(model: SeqModel, theta: torch.Tensor) -> torch.Tensor:
    """Σ_t E_π[½ (log r_t)²], written out (what k2 estimates: not a KL)."""
    _, _, logp, ref_logp = model.parts(theta)
    return (logp.sum(-1).exp() * (0.5 * (logp - ref_logp) ** 2).sum(-1)).sum()


# --- what the trainer descends -----------------------------------------------------------------------------------
def reward_side_advantages(penalties: List[float]) -> torch.Tensor:
    """The trainer's path for a reward-side KL: one single-turn episode per sequence, task reward 0, β = 1, the
    per-turn penalty subtracted by compute_advantages (no baseline, γ = 0) — so A = −β·penalty, sign included."""
    episodes = [Episode(problem_id=f"y{i}", sample_index=0, turns=[
        Turn(prompt_ids=[], response_ids=[], sampling_logprobs=[], response_text="", reward=0.0, shaped_reward=0.0,
             kl_coef=1.0)]) for i in range(len(penalties))]
    compute_advantages(episodes, "none", 0.0, [[p] for p in penalties])
    return torch.tensor([ep.turns[0].advantage for ep in episodes], dtype=DT)


def placement_grad(model: SeqModel, name: str, placement: str) -> torch.Tensor:
    """Exact expected gradient of the trainer's loss (KL part, β = 1) for estimator ``name`` in ``placement``.

    Every sequence is one row of a batch; its probability π(y) (detached) multiplies its coefficient, so the summed
    loss (denominator 1) is the expectation over y ~ π. Placement "loss": kl_coef = π(y), advantage 0. Placement
    "reward": the penalty Σ_t k_t(y) (detached, from the real estimator) enters the reward through compute_advantages,
    A = −β·penalty, and the loss is −A·log π — so its gradient is E_y[penalty · ∇log π(y)], the descent direction of
    the KL term.
    """
    theta = model.theta()
    logits, ref_logits, logp, ref_logp = model.parts(theta)
    weights = logp.sum(-1).exp().detach().unsqueeze(-1).expand_as(logp)
    mask, zeros = torch.ones_like(logp), torch.zeros_like(logp)
    if placement == "loss":
        advantage, kl_coef, kl_in_loss = zeros, weights, True
    elif placement == "reward":
        with torch.no_grad():
            penalty = per_token_kl(name, logp, ref_logp, logits, ref_logits).to(DT).sum(-1)
        advantage = reward_side_advantages(penalty.tolist()).unsqueeze(-1) * weights
        kl_coef, kl_in_loss = zeros, False
    else:
        raise ValueError(placement)
    loss, _ = reinforce_kl_loss(logp, ref_logp, advantage, kl_coef, mask, kl_estimator=name, kl_in_loss=kl_in_loss,
                                loss_agg="seq-mean-token-sum", denominator=1.0, logits=logits, ref_logits=ref_logits)
    (g,) = torch.autograd.grad(loss, theta)
    return g


def tol(name: str) -> dict:
    return FULL if name == "full" else EXACT


def cases() -> List[tuple]:
    return [pytest.param(seed, T, V, id=f"seed{seed}-T{T}-V{V}") for seed in SEEDS for T, V in SHAPES]


# --- the fixture itself ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,T,V", cases())
def test_setup_is_a_distribution_and_kl_chain_rule_holds(seed, T, V):
    model = SeqModel(T, V, seed)
    _, _, logp, ref_logp = model.parts(model.theta0)
    assert abs(float(logp.sum(-1).exp().sum()) - 1) < 1e-12, "π over all V^T sequences must sum to 1"
    assert abs(float(ref_logp.sum(-1).exp().sum()) - 1) < 1e-12, "π_ref over all V^T sequences must sum to 1"
    value = seq_kl(model, model.theta0)
    assert value > 0.05, f"the fixture needs π far enough from π_ref (KL_seq = {float(value):.4f})"
    torch.testing.assert_close(value, per_position_kl(model, model.theta0), **EXACT,
                               msg="value chain rule: KL_seq = Σ_t E_{y_<t}[KL_t(y_<t)]")


@pytest.mark.parametrize("seed,T,V", cases())
def test_sequence_kl_gradient_is_per_position_plus_prefix_term(seed, T, V):
    """∇KL_seq = g_rev_pos + g_prefix, and g_prefix is not small here (else the ≠ claims below prove nothing)."""
    model = SeqModel(T, V, seed)
    g_seq = grad_of(lambda th: seq_kl(model, th), model)
    g_pos = grad_of(lambda th: per_position_kl(model, th), model)
    g_prefix = grad_of(lambda th: prefix_score_surrogate(model, th), model)
    torch.testing.assert_close(g_pos + g_prefix, g_seq, **EXACT,
                               msg="gradient chain rule: ∇KL_seq must equal g_rev_pos + g_prefix")
    assert g_prefix.norm() > MARGIN * g_seq.norm(), (
        f"fixture: the prefix term is only {float(g_prefix.norm() / g_seq.norm()):.4f} of ∇KL_seq "
        f"(seed {seed}, T={T}, V={V})")


# --- k1 ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,T,V", cases())
def test_reward_k1_follows_the_sequence_kl_gradient(seed, T, V):
    """The default (algo.kl_in_reward=true, k1): E_y[(Σ_t log r_t).detach() · ∇log π(y)] = ∇KL_seq, exactly."""
    model = SeqModel(T, V, seed)
    torch.testing.assert_close(placement_grad(model, "k1", "reward"), grad_of(lambda th: seq_kl(model, th), model),
                               **EXACT, msg="reward+k1 must follow ∇KL(π‖π_ref) over whole sequences exactly")


@pytest.mark.parametrize("seed,T,V", cases())
def test_loss_k1_expected_gradient_is_zero(seed, T, V):
    model = SeqModel(T, V, seed)
    g = placement_grad(model, "k1", "loss")
    assert g.abs().max() < 1e-12, f"loss+k1: E_y[∇ log π(y)] = 0, so its expected gradient must vanish; got {g}"


# --- k2 and full in the loss: the per-position reverse KL ------------------------------------------------------
@pytest.mark.parametrize("name", ["k2", "full"])
@pytest.mark.parametrize("seed,T,V", cases())
def test_loss_k2_and_full_follow_the_per_position_reverse_kl(seed, T, V, name):
    model = SeqModel(T, V, seed)
    g_pos = grad_of(lambda th: per_position_kl(model, th), model)
    torch.testing.assert_close(placement_grad(model, name, "loss"), g_pos, **tol(name),
                               msg=f"loss+{name} must follow Σ_t E_prefix[∇KL(π(·|y_<t) ‖ π_ref(·|y_<t))]")


@pytest.mark.parametrize("seed,T,V", cases())
def test_loss_k2_equals_loss_full(seed, T, V):
    model = SeqModel(T, V, seed)
    torch.testing.assert_close(placement_grad(model, "k2", "loss"), placement_grad(model, "full", "loss"), **FULL,
                               msg="loss+k2 and loss+full must have the same expected gradient")


@pytest.mark.parametrize("name", ["k2", "full"])
@pytest.mark.parametrize("seed,T,V", cases())
def test_loss_k2_and_full_are_not_the_sequence_kl_gradient(seed, T, V, name):
    """Measured ‖g − ∇KL_seq‖/‖∇KL_seq‖ (k2 and full alike), seeds 0 / 1 / 2: T=2,V=3: 0.121 / 0.797 / 0.066;
    T=2,V=4: 0.099 / 0.711 / 0.174; T=3,V=3: 1.491 / 0.535 / 0.743 (and 0 at T=1)."""
    model = SeqModel(T, V, seed)
    g, g_seq = placement_grad(model, name, "loss"), grad_of(lambda th: seq_kl(model, th), model)
    assert rel(g, g_seq) > MARGIN, f"loss+{name} must miss the prefix term of ∇KL_seq (rel. diff {rel(g, g_seq):.4f})"


# --- k3 in the loss: the per-position forward KL ---------------------------------------------------------------
@pytest.mark.parametrize("seed,T,V", cases())
def test_loss_k3_follows_the_per_position_forward_kl(seed, T, V):
    model = SeqModel(T, V, seed)
    g = placement_grad(model, "k3", "loss")
    torch.testing.assert_close(g, grad_of(lambda th: per_position_kl(model, th, forward=True), model), **EXACT,
                               msg="loss+k3 must follow Σ_t E_prefix[∇KL(π_ref(·|y_<t) ‖ π(·|y_<t))]")
    g_seq = grad_of(lambda th: seq_kl(model, th), model)
    assert rel(g, g_seq) > MARGIN, f"loss+k3 is not ∇KL_seq (rel. diff {rel(g, g_seq):.4f})"


# --- the other estimators in the reward ------------------------------------------------------------------------
@pytest.mark.parametrize("seed,T,V", cases())
def test_reward_k3_follows_sequence_kl_minus_per_position_forward_kl(seed, T, V):
    """k3's value is unbiased for KL_seq but depends on θ: the score-function gradient misses E[∇Σ_t k3_t],
    which is g_fwd_pos."""
    model = SeqModel(T, V, seed)
    g = placement_grad(model, "k3", "reward")
    g_seq = grad_of(lambda th: seq_kl(model, th), model)
    g_fwd = grad_of(lambda th: per_position_kl(model, th, forward=True), model)
    torch.testing.assert_close(g, g_seq - g_fwd, **EXACT, msg="reward+k3 must equal ∇KL_seq − g_fwd_pos")
    assert rel(g, g_seq) > MARGIN, f"reward+k3 is not ∇KL_seq (rel. diff {rel(g, g_seq):.4f})"


@pytest.mark.parametrize("seed,T,V", cases())
def test_reward_full_follows_only_the_prefix_term(seed, T, V):
    """Σ_t KL_t(y_<t) is unbiased for KL_seq, but as a reward it only moves the prefixes: its gradient is g_prefix
    = ∇KL_seq − g_rev_pos, the complement of loss+full."""
    model = SeqModel(T, V, seed)
    g = placement_grad(model, "full", "reward")
    g_seq = grad_of(lambda th: seq_kl(model, th), model)
    torch.testing.assert_close(g, grad_of(lambda th: prefix_score_surrogate(model, th), model), **FULL,
                               msg="reward+full must equal Σ_t E[KL_t(y_<t) ∇log π(y_<t)]")
    torch.testing.assert_close(g + placement_grad(model, "full", "loss"), g_seq, **FULL,
                               msg="reward+full and loss+full must add up to ∇KL_seq")
    assert rel(g, g_seq) > MARGIN, f"reward+full is not ∇KL_seq (rel. diff {rel(g, g_seq):.4f})"


@pytest.mark.parametrize("seed,T,V", cases())
def test_reward_k2_is_not_a_kl_gradient(seed, T, V):
    """reward+k2 = ∇(Σ_t E_π[½ log² r_t]) − g_rev_pos: the gradient of no KL."""
    model = SeqModel(T, V, seed)
    g = placement_grad(model, "k2", "reward")
    expected = grad_of(lambda th: half_square_log_ratio(model, th), model) - grad_of(
        lambda th: per_position_kl(model, th), model)
    torch.testing.assert_close(g, expected, **EXACT, msg="reward+k2 must equal ∇E[Σ_t ½ log² r_t] − g_rev_pos")
    targets = {
        "∇KL_seq": grad_of(lambda th: seq_kl(model, th), model),
        "∇KL_seq(π_ref‖π)": grad_of(lambda th: seq_forward_kl(model, th), model),
        "g_rev_pos": grad_of(lambda th: per_position_kl(model, th), model),
        "g_fwd_pos": grad_of(lambda th: per_position_kl(model, th, forward=True), model),
    }
    for label, target in targets.items():
        assert rel(g, target) > MARGIN, f"reward+k2 must not follow {label} (rel. diff {rel(g, target):.4f})"


# --- identities across all estimators --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("seed,T,V", cases())
def test_loss_plus_reward_is_the_gradient_of_the_expected_value(seed, T, V, name):
    """Product rule: ∇E_π[Σ_t k_t] = E[∇Σ_t k_t] + E[(Σ_t k_t)·∇log π] — the two placements split one gradient."""
    model = SeqModel(T, V, seed)
    total = placement_grad(model, name, "loss") + placement_grad(model, name, "reward")
    torch.testing.assert_close(total, grad_of(lambda th: expected_value(model, th, name), model), **tol(name),
                               msg=f"{name}: loss and reward placements must add up to ∇E[Σ_t {name}_t]")


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("seed,T,V", cases())
def test_estimator_values_unbiased_for_sequence_kl(seed, T, V, name):
    """E_π[Σ_t k_t] = KL_seq for k1, k3 and full (and so their two placements add up to ∇KL_seq); not for k2, whose
    expected value Σ_t E[½ log² r_t] is a different function of θ (its value can come close to KL_seq at one θ — on
    seed 0, T=2, V=4 it is 1.7% off — so the test compares gradients)."""
    model = SeqModel(T, V, seed)
    value, kl = expected_value(model, model.theta0, name), seq_kl(model, model.theta0)
    if name == "k2":
        torch.testing.assert_close(value, half_square_log_ratio(model, model.theta0), **EXACT)
        g_value = grad_of(lambda th: expected_value(model, th, "k2"), model)
        g_seq = grad_of(lambda th: seq_kl(model, th), model)
        assert rel(g_value, g_seq) > MARGIN, (
            f"E[Σ_t k2_t] must not be KL_seq as a function of θ (rel. diff of gradients {rel(g_value, g_seq):.4f})")
    else:
        torch.testing.assert_close(value, kl, **tol(name), msg=f"E_π[Σ_t {name}_t] must equal KL_seq")


# --- one token (T = 1): no prefix, per-position = sequence ---------------------------------------------------------
@pytest.mark.parametrize("V", [3, 4])
@pytest.mark.parametrize("seed", SEEDS)
def test_single_token_coincidences(seed, V):
    """At T = 1: loss+k2 = loss+full = reward+k1 = ∇KL (exact); reward+full = 0; loss+k1 = 0; loss+k3 = ∇KL(π_ref‖π);
    reward+k3 = ∇KL − ∇KL(π_ref‖π); reward+k2 is none of these."""
    model = SeqModel(1, V, seed)
    g_kl = grad_of(lambda th: seq_kl(model, th), model)
    g_fwd = grad_of(lambda th: per_position_kl(model, th, forward=True), model)
    for name, placement in [("k2", "loss"), ("full", "loss"), ("k1", "reward")]:
        torch.testing.assert_close(placement_grad(model, name, placement), g_kl, **tol(name),
                                   msg=f"T=1: {placement}+{name} must equal ∇KL(π‖π_ref)")
    for name, placement in [("full", "reward"), ("k1", "loss")]:
        g = placement_grad(model, name, placement)
        assert g.abs().max() < 1e-6, f"T=1: {placement}+{name} must have zero expected gradient, got {g}"
    torch.testing.assert_close(placement_grad(model, "k3", "loss"), g_fwd, **EXACT,
                               msg="T=1: loss+k3 must equal ∇KL(π_ref‖π)")
    torch.testing.assert_close(placement_grad(model, "k3", "reward"), g_kl - g_fwd, **EXACT,
                               msg="T=1: reward+k3 must equal ∇KL(π‖π_ref) − ∇KL(π_ref‖π)")
    assert rel(g_fwd, g_kl) > MARGIN, "fixture: forward and reverse KL gradients must differ"
    g_k2 = placement_grad(model, "k2", "reward")
    for label, target in [("∇KL", g_kl), ("∇KL(π_ref‖π)", g_fwd)]:
        assert rel(g_k2, target) > MARGIN, f"T=1: reward+k2 must not follow {label} (rel. {rel(g_k2, target):.4f})"


def test_estimator_functions_are_the_ones_named():
    """The tests above go through per_token_kl / reinforce_kl_loss; pin that they dispatch to kl.py's estimators."""
    logits = torch.randn(2, 3, 4, dtype=DT, generator=torch.Generator().manual_seed(7))
    ref_logits = torch.randn(2, 3, 4, dtype=DT, generator=torch.Generator().manual_seed(8))
    logp, ref_logp = torch.log_softmax(logits, -1)[..., 0], torch.log_softmax(ref_logits, -1)[..., 0]
    for name, fn in [("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)]:
        torch.testing.assert_close(per_token_kl(name, logp, ref_logp), fn(logp, ref_logp))
    torch.testing.assert_close(per_token_kl("full", logp, ref_logp, logits, ref_logits), kl_full(logits, ref_logits))
    assert math.isfinite(float(kl_full(logits, ref_logits).sum()))
