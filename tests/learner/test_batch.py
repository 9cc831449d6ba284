"""Episodes -> padded per-token tensors (score_rl/learner/batch.py collate).

Per-token tensors are aligned with the targets input_ids[:, 1:]: the token at position p is predicted at index p-1.
"""

from __future__ import annotations

import pytest
import torch

from score_rl.learner.batch import collate
from score_rl.episode import Episode, Turn

PAD = 0


def _two_turn(p1, y1, correction, y2, lp1, lp2, adv=(0.5, -1.5), kl=(0.25, 0.01), pid="p") -> Episode:
    t1 = Turn(prompt_ids=list(p1), response_ids=list(y1), sampling_logprobs=list(lp1), response_text="a",
              reward=0.0, advantage=adv[0], kl_coef=kl[0])
    t2 = Turn(prompt_ids=list(p1) + list(y1) + list(correction), response_ids=list(y2), sampling_logprobs=list(lp2),
              response_text="b", reward=1.0, advantage=adv[1], kl_coef=kl[1])
    return Episode(problem_id=pid, sample_index=0, turns=[t1, t2])


# full ids [11, 12, 13 | 21, 22 | 31, 32 | 41, 42, 43]   (prompt | attempt 1 | correction | attempt 2)
EP_LONG = _two_turn([11, 12, 13], [21, 22], [31, 32], [41, 42, 43], [-0.1, -0.2], [-0.3, -0.4, -0.5])
# full ids [11, 12 | 21 | 31 | 41]
EP_SHORT = _two_turn([11, 12], [21], [31], [41], [-0.7], [-0.9], adv=(2.0, 3.0), kl=(0.1, 0.02))


@pytest.fixture
def batch():
    return collate([EP_LONG, EP_SHORT], pad_id=PAD)


def test_shapes_and_padding(batch):
    assert batch["input_ids"].shape == (2, 10)
    for key in ("turn", "advantage", "kl_coef", "sampling_logprobs"):
        assert batch[key].shape == (2, 9), f"per-token '{key}' must be aligned with the targets (length L-1)"
    assert batch["input_ids"][0].tolist() == [11, 12, 13, 21, 22, 31, 32, 41, 42, 43]
    assert batch["input_ids"][1].tolist() == [11, 12, 21, 31, 41] + [PAD] * 5, "right padding with pad_id"
    assert batch["attention_mask"].tolist() == [[1] * 10, [1] * 5 + [0] * 5]


def test_turn_marks_exactly_each_turns_response_tokens_at_position_minus_one(batch):
    assert batch["turn"][0].tolist() == [0, 0, 1, 1, 0, 0, 2, 2, 2]
    assert batch["turn"][1].tolist() == [0, 1, 0, 2, 0, 0, 0, 0, 0]


def test_targets_at_turn_positions_are_the_response_tokens(batch):
    targets = batch["input_ids"][:, 1:]
    for i, ep in enumerate([EP_LONG, EP_SHORT]):
        for t, turn in enumerate(ep.turns, start=1):
            assert targets[i][batch["turn"][i] == t].tolist() == turn.response_ids, (
                f"episode {i} turn {t}: the trained targets must be exactly the sampled response tokens"
            )


def test_advantage_and_kl_coef_are_placed_per_turn(batch):
    assert batch["advantage"][0].tolist() == pytest.approx([0, 0, 0.5, 0.5, 0, 0, -1.5, -1.5, -1.5])
    assert batch["kl_coef"][0].tolist() == pytest.approx([0, 0, 0.25, 0.25, 0, 0, 0.01, 0.01, 0.01])
    assert batch["advantage"][1].tolist() == pytest.approx([0, 2.0, 0, 3.0, 0, 0, 0, 0, 0])
    assert batch["kl_coef"][1].tolist() == pytest.approx([0, 0.1, 0, 0.02, 0, 0, 0, 0, 0])


def test_sampling_logprobs_are_placed_on_their_tokens(batch):
    assert batch["sampling_logprobs"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2, 0, 0, -0.3, -0.4, -0.5])
    assert batch["sampling_logprobs"][1].tolist() == pytest.approx([0, -0.7, 0, -0.9, 0, 0, 0, 0, 0])


def test_non_response_positions_are_zero(batch):
    outside = batch["turn"] == 0
    for key in ("advantage", "kl_coef", "sampling_logprobs"):
        assert (batch[key][outside] == 0).all(), f"'{key}' must be 0 on prompt, correction and padding positions"
    assert (batch["turn"][1, 4:] == 0).all(), "padding positions belong to no turn"


def test_unset_advantage_and_empty_response():
    ep = _two_turn([11, 12], [], [31], [41, 42], [], [-0.5, -0.6], adv=(None, None), kl=(None, None))
    b = collate([ep], pad_id=PAD)
    assert b["turn"][0].tolist() == [0, 0, 2, 2], "an empty attempt 1 marks no position"
    assert b["advantage"].abs().sum() == 0 and b["kl_coef"].abs().sum() == 0, "unset advantage/kl_coef read as 0"
    assert b["sampling_logprobs"][0].tolist() == pytest.approx([0, 0, -0.5, -0.6])


def test_pad_id_is_used_and_order_is_kept():
    b = collate([EP_SHORT, EP_LONG], pad_id=99)
    assert b["input_ids"][0].tolist() == [11, 12, 21, 31, 41] + [99] * 5
    assert b["turn"][1].tolist() == [0, 0, 1, 1, 0, 0, 2, 2, 2]
    assert b["input_ids"].dtype == torch.long and b["turn"].dtype == torch.long


def _collate_turn_by_turn(episodes, pad_id):
    """The straightforward layout, a turn at a time: what collate's one-pass version must equal exactly."""
    from score_rl.learner.batch import PER_TOKEN_OPTIONAL

    n, width = len(episodes), max(len(ep.full_ids()) for ep in episodes)
    out = dict(input_ids=torch.full((n, width), pad_id, dtype=torch.long),
               attention_mask=torch.zeros((n, width), dtype=torch.long),
               turn=torch.zeros((n, width - 1), dtype=torch.long),
               trained=torch.zeros((n, width - 1), dtype=torch.bool),
               **{k: torch.zeros((n, width - 1)) for k in ("loss_weight", "advantage", "kl_coef", "sampling_logprobs")})
    optional = [k for k in PER_TOKEN_OPTIONAL if all(getattr(t, k) is not None for ep in episodes for t in ep.turns)]
    out.update({k: torch.zeros((n, width - 1)) for k in optional})
    for i, ep in enumerate(episodes):
        ids = ep.full_ids()
        out["input_ids"][i, :len(ids)] = torch.tensor(ids)
        out["attention_mask"][i, :len(ids)] = 1
        for t, ((start, end), tr) in enumerate(zip(ep.response_spans(), ep.turns), start=1):
            sl = slice(start - 1, end - 1)
            out["turn"][i, sl] = t if end > start else 0
            out["trained"][i, sl] = tr.trained
            out["loss_weight"][i, sl] = tr.loss_weight if tr.trained else 0.0
            out["advantage"][i, sl] = torch.tensor(tr.token_advantages) if tr.token_advantages is not None \
                else (tr.advantage or 0.0)
            out["kl_coef"][i, sl] = tr.kl_coef or 0.0
            out["sampling_logprobs"][i, sl] = torch.tensor(tr.sampling_logprobs)
            for k in optional:
                out[k][i, sl] = torch.tensor(getattr(tr, k))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_collate_equals_the_turn_by_turn_layout(seed):
    """Random episodes: any lengths (empty responses too), untrained turns, loss weights, unset advantages, GAE token
    advantages, and the optional per-token fields present on all turns or missing on one."""
    import random

    rng = random.Random(seed)
    episodes = []
    for k in range(rng.randint(1, 7)):
        prompt = [rng.randint(2, 50) for _ in range(rng.randint(1, 6))]
        turns = []
        for _ in range(rng.randint(1, 3)):
            response = [rng.randint(2, 50) for _ in range(rng.randint(0, 5))]
            size = len(response)
            turns.append(Turn(
                prompt_ids=list(prompt), response_ids=response, sampling_logprobs=[-rng.random() for _ in range(size)],
                response_text="", reward=0.0, trained=rng.random() < 0.8, loss_weight=rng.choice([1.0, 0.5]),
                advantage=rng.choice([None, rng.uniform(-2, 2)]), kl_coef=rng.choice([None, 0.1]),
                ref_logprobs=[-rng.random() for _ in range(size)] if seed % 2 == 0 or k else None,
                token_advantages=[rng.uniform(-1, 1) for _ in range(size)] if seed == 2 else None))
            prompt = prompt + response + [rng.randint(2, 50) for _ in range(rng.randint(1, 3))]
        episodes.append(Episode(problem_id=str(k), sample_index=0, turns=turns))
    got, want = collate(episodes, pad_id=PAD), _collate_turn_by_turn(episodes, PAD)
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


def test_per_token_lists_of_the_wrong_length_are_refused():
    bad = _two_turn([11, 12], [21, 22], [31], [41], [-0.1], [-0.2])  # 1 log-prob for 2 tokens
    with pytest.raises(ValueError, match="episode 0 turn 1 has 1 sampling_logprobs for 2 response tokens"):
        collate([bad], pad_id=PAD)


def test_a_response_without_a_prompt_is_refused():
    """Its first token has no position predicting it: it must not wrap to the last column (a padded one)."""
    bad = Episode(problem_id="p", sample_index=0, turns=[
        Turn(prompt_ids=[], response_ids=[7, 8, 9], sampling_logprobs=[-1.0] * 3, response_text="", reward=0)])
    with pytest.raises(ValueError, match="episode 1 turn 1 has a response but an empty prompt"):
        collate([EP_SHORT, bad], pad_id=PAD)
