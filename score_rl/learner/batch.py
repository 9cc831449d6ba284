"""Episodes → padded per-token tensors for the learner. Every trained position knows its turn."""

from __future__ import annotations

from typing import Dict, List, Sequence

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
    n, width = len(episodes), max(len(ep.full_ids()) for ep in episodes)
    optional_names = [name for name in PER_TOKEN_OPTIONAL
                      if all(getattr(tr, name) is not None for ep in episodes for tr in ep.turns)]
    # flat lists of (row, column, value), converted to tensors once: one Python pass, no per-turn tensors
    id_rows, id_cols, id_vals = [], [], []
    rows, cols = [], []
    values = {name: [] for name in ("turn", "trained", "loss_weight", "advantage", "kl_coef", "sampling_logprobs",
                                    *optional_names)}
    for i, ep in enumerate(episodes):
        ids = ep.full_ids()
        id_rows += [i] * len(ids)
        id_cols += range(len(ids))
        id_vals += ids
        for t, ((start, end), tr) in enumerate(zip(ep.response_spans(), ep.turns), start=1):
            size = end - start
            if size == 0:
                continue
            if start < 1:  # its first token would sit at target index -1: nothing predicts it
                raise ValueError(f"collate: episode {i} turn {t} has a response but an empty prompt")
            # token at position p is predicted by logits at p-1 → target index p-1
            rows += [i] * size
            cols += range(start - 1, end - 1)
            values["turn"] += [t] * size
            values["trained"] += [tr.trained] * size
            values["loss_weight"] += [tr.loss_weight if tr.trained else 0.0] * size
            if tr.token_advantages is not None:
                values["advantage"] += _per_token(tr.token_advantages, size, "token_advantages", i, t)
            else:
                values["advantage"] += [tr.advantage if tr.advantage is not None else 0.0] * size
            values["kl_coef"] += [tr.kl_coef if tr.kl_coef is not None else 0.0] * size
            values["sampling_logprobs"] += _per_token(tr.sampling_logprobs, size, "sampling_logprobs", i, t)
            for name in optional_names:
                values[name] += _per_token(getattr(tr, name), size, name, i, t)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    where = (torch.tensor(id_rows, dtype=torch.long), torch.tensor(id_cols, dtype=torch.long))
    input_ids[where] = torch.tensor(id_vals, dtype=torch.long)
    attention_mask[where] = 1
    out = dict(input_ids=input_ids, attention_mask=attention_mask)
    where = (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))
    dtypes = {"turn": torch.long, "trained": torch.bool}
    for name, vals in values.items():  # the optional ones last, e.g. ref_logprobs: the learner then skips its pass
        dtype = dtypes.get(name, torch.float32)
        tensor = torch.zeros((n, width - 1), dtype=dtype)
        tensor[where] = torch.tensor(vals, dtype=dtype)
        out[name] = tensor
    return out


def _per_token(vals, size: int, name: str, episode: int, turn: int) -> list:
    if len(vals) != size:
        raise ValueError(f"collate: episode {episode} turn {turn} has {len(vals)} {name} for {size} response tokens")
    return list(vals)


# per-token fields of a Turn that collate places when every turn of the batch carries them
PER_TOKEN_OPTIONAL = ("ref_logprobs", "old_logprobs", "values", "returns")


def loss_mask(b: Dict[str, torch.Tensor]) -> torch.Tensor:
    """0 off trained turns' response tokens, else the turn's loss weight."""
    return b["loss_weight"] * ((b["turn"] > 0) & b["trained"])


def per_turn(rows: List[List[float]], episodes: Sequence[Episode]) -> List[List[List[float]]]:
    """Per-token values of collated rows (aligned with the targets) cut into each episode's turns: ``out[i][t]``
    lists those of episode i's turn t+1 (the token at position p sits at target index p-1, as collate places it)."""
    return [[row[start - 1:end - 1] for start, end in ep.response_spans()] for row, ep in zip(rows, episodes)]
