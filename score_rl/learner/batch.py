"""Episodes → padded per-token tensors for the learner. Every trained position knows its turn."""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from score_rl.episode import Episode


def collate(episodes: Sequence[Episode], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-padded tensors. Per-token fields are aligned with targets input_ids[:, 1:] (length L-1).

    turn: 0 where the token is not a response token, else the 1-based turn index; advantage / kl_coef: that turn's.
    trained: 1 where the token is a response token of a turn with ``trained`` set (the loss mask).
    loss_weight: that turn's ``loss_weight`` where ``trained``, else 0 (the learner's weighted loss mask).
    ref_logprobs: present only when every turn of every episode carries its reference log-probs.
    old_logprobs / values / returns (PPO): present when every turn carries them; a turn's ``token_advantages``, when
    set, replace its ``advantage`` token by token.
    """
    width = max(len(ep.full_ids()) for ep in episodes)
    n = len(episodes)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    turn = torch.zeros((n, width - 1), dtype=torch.long)
    trained = torch.zeros((n, width - 1), dtype=torch.bool)
    loss_weight = torch.zeros((n, width - 1))
    advantage = torch.zeros((n, width - 1))
    kl_coef = torch.zeros((n, width - 1))
    sampling_logprobs = torch.zeros((n, width - 1))
    optional = {name: torch.zeros((n, width - 1)) for name in PER_TOKEN_OPTIONAL
                if all(getattr(tr, name) is not None for ep in episodes for tr in ep.turns)}
    for i, ep in enumerate(episodes):
        ids = ep.full_ids()
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        for t, ((start, end), tr) in enumerate(zip(ep.response_spans(), ep.turns), start=1):
            if end == start:
                continue
            # token at position p is predicted by logits at p-1 → target index p-1
            sl = slice(start - 1, end - 1)
            turn[i, sl] = t
            trained[i, sl] = tr.trained
            loss_weight[i, sl] = tr.loss_weight if tr.trained else 0.0
            if tr.token_advantages is not None:
                advantage[i, sl] = torch.tensor(tr.token_advantages, dtype=torch.float32)
            else:
                advantage[i, sl] = tr.advantage if tr.advantage is not None else 0.0
            kl_coef[i, sl] = tr.kl_coef if tr.kl_coef is not None else 0.0
            sampling_logprobs[i, sl] = torch.tensor(tr.sampling_logprobs, dtype=torch.float32)
            for name, tensor in optional.items():
                tensor[i, sl] = torch.tensor(getattr(tr, name), dtype=torch.float32)
    out = dict(input_ids=input_ids, attention_mask=attention_mask, turn=turn, trained=trained, loss_weight=loss_weight, advantage=advantage,
               kl_coef=kl_coef, sampling_logprobs=sampling_logprobs)
    out.update(optional)  # e.g. ref_logprobs: every turn carries them, so the learner skips the reference pass
    return out


# per-token fields of a Turn that collate places when every turn of the batch carries them
PER_TOKEN_OPTIONAL = ("ref_logprobs", "old_logprobs", "values", "returns")
