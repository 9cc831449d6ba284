"""The comparison methods' data: presets, STaR's D / D+ filters, Pair-SFT's pairs, single-turn shaping."""

from __future__ import annotations

import pytest

from score_rl.algos import methods
from score_rl.config import ConfigError, load_config
from score_rl.episode import Episode, Turn
from score_rl.learner.learner import loss_denominator
from tests.conftest import QUICKSTART


def _turn(reward: float, text: str, n_tokens: int = 3, prompt=(1, 2)) -> Turn:
    return Turn(prompt_ids=list(prompt), response_ids=[7] * n_tokens, sampling_logprobs=[-0.5] * n_tokens,
                response_text=text, reward=reward)


def _episode(pid: str, k: int, *rewards: float) -> Episode:
    return Episode(problem_id=pid, sample_index=k, turns=[_turn(r, f"{pid}/{k}/{t}") for t, r in enumerate(rewards)])


def test_every_preset_is_a_valid_config_diff():
    for name, preset in methods.PRESETS.items():
        cfg = load_config(QUICKSTART, methods.preset_overrides(name))
        assert preset.description and preset.paper
        if name in ("single_turn_rl", "pair_sft", "self_refine"):
            assert cfg.method.name == name
    assert load_config(QUICKSTART, methods.preset_overrides("multi_turn_rl")).shaping.alpha == 0.0
    assert load_config(QUICKSTART, methods.preset_overrides("multi_turn_rl")).shaping.stage1_steps == 0
    assert load_config(QUICKSTART, methods.preset_overrides("star_d")).method.star_keep == "D"


def test_unknown_method_names_the_closest():
    with pytest.raises(ConfigError, match="unknown method 'pair-sft'.*did you mean 'pair_sft'"):
        methods.preset_overrides("pair-sft")


@pytest.mark.parametrize("keep, expected", [("D", [False, True, False, False]), ("D+", [False, True, False, True])])
def test_star_filters_D_and_D_plus(keep, expected):
    # (r1, r2) = wrong→wrong, wrong→right, right→wrong, right→right
    episodes = [_episode("p", i, r1, r2) for i, (r1, r2) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])]
    kept = methods.select_star(episodes, keep)
    assert kept == sum(expected)
    for ep, keep_it in zip(episodes, expected):
        assert ep.turns[0].trained is False, "attempt 1 is context only"
        assert ep.turns[1].trained is keep_it
        assert ep.turns[1].advantage == (1.0 if keep_it else 0.0) and ep.turns[1].kl_coef == 0.0
    # the loss is the NLL averaged over the kept attempt-2 tokens only
    assert loss_denominator(episodes, "token-mean") == 3 * sum(expected)
    assert loss_denominator(episodes, "seq-mean-token-sum") == sum(expected)


def test_pair_sft_pairs_come_only_from_the_models_own_samples():
    samples = [_episode("a", 0, 0), _episode("a", 1, 1), _episode("a", 2, 0), _episode("a", 3, 1),
               _episode("b", 0, 0), _episode("b", 1, 0),  # never right: no pair
               _episode("c", 0, 1), _episode("c", 1, 1)]  # never wrong: no pair
    pairs = methods.pair_sft_pairs(samples, seed=0)
    ids = {id(ep) for ep in samples}
    assert len(pairs) == 2, "each wrong sample of a problem with a right sample is paired once"
    assert sorted(w.sample_index for w, _ in pairs) == [0, 2]
    for wrong, right in pairs:
        assert id(wrong) in ids and id(right) in ids, "pairs are built from the sampled episodes themselves"
        assert wrong.problem_id == right.problem_id == "a"
        assert wrong.turns[0].reward == 0 and right.turns[0].reward == 1
    episode = methods.pair_episode(*pairs[0], correction_prompt_ids=[1, 2, 7, 7, 7, 9], index=5)
    first, second = episode.turns
    assert first.response_text == pairs[0][0].turns[0].response_text and not first.trained
    assert second.response_text == pairs[0][1].turns[0].response_text and second.trained
    assert second.prompt_ids == [1, 2, 7, 7, 7, 9] and second.advantage == 1.0 and second.kl_coef == 0.0
    assert methods.pair_sft_pairs(samples, seed=0) == pairs, "deterministic in the seed"


def test_single_turn_rl_shapes_one_attempt_only():
    episodes = [_episode("p", 0, 1.0), _episode("p", 1, 0.0)]
    methods.shape_single_turn(episodes, beta1=0.01)
    assert [ep.turns[0].shaped_reward for ep in episodes] == [1.0, 0.0]
    assert all(ep.turns[0].kl_coef == 0.01 for ep in episodes)
    with pytest.raises(ValueError, match="one-attempt"):
        methods.shape_single_turn([_episode("p", 0, 1.0, 1.0)], beta1=0.01)
