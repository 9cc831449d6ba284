"""selective_log_softmax: log_softmax at the chosen tokens, chunked, for any chunk size and dtype."""

import pytest
import torch

from score_rl.learner.logprobs import selective_log_softmax


def _reference(logits, index):
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk_tokens", [1, 5, 7, 2048])
def test_matches_log_softmax_for_any_chunk_size(chunk_tokens):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 5
    index = torch.randint(0, 11, (3, 7), generator=g)
    out = selective_log_softmax(logits, index, chunk_tokens=chunk_tokens)
    assert out.shape == index.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(logits, index), rtol=0, atol=1e-5)


def test_gradient_matches_log_softmax_and_chunking_is_invariant():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 9, 13, generator=g, dtype=torch.float64)
    index = torch.randint(0, 13, (2, 9), generator=g)
    weights = torch.randn(2, 9, generator=g, dtype=torch.float64)
    grads = []
    for chunk in (4, 18, 1000):
        logits = base.clone().requires_grad_(True)
        (selective_log_softmax(logits, index, chunk_tokens=chunk) * weights).sum().backward()
        grads.append(logits.grad)
    logits = base.clone().requires_grad_(True)
    (_reference(logits, index) * weights).sum().backward()
    for grad in grads:
        torch.testing.assert_close(grad, logits.grad, rtol=0, atol=1e-12)
    # d log p(i) / d logit(i) = 1 - p(i) > 0: raising the chosen token's logit raises its log-prob
    assert (logits.grad.gather(-1, index.unsqueeze(-1)).squeeze(-1) * weights.sign() > 0).all()


def test_low_precision_logits_are_upcast():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(4, 6, 50, generator=g) * 8).to(torch.bfloat16)
    index = torch.randint(0, 50, (4, 6), generator=g)
    out = selective_log_softmax(logits, index, chunk_tokens=5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(logits.float(), index), rtol=0, atol=1e-5)


def test_empty_and_mismatched_inputs():
    assert selective_log_softmax(torch.zeros(2, 0, 5), torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)
    with pytest.raises(ValueError, match="do not match index"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
