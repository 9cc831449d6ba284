"""score_rl/compat.py: the K/V-cache keyword follows the installed transformers, and the suite's guard turns
transformers' deprecation messages about our own calls into errors."""

import pytest
import torch
import transformers
from packaging.version import Version

from score_rl.compat import accepts, cache_keyword, cache_kwargs, output_cache


def _model_with(*names):
    params = ", ".join(f"{n}=None" for n in names)
    namespace = {}
    exec(f"def forward(self, input_ids, {params}): return None" if names else
         "def forward(self, input_ids): return None", namespace)
    cls = type("Custom", (torch.nn.Module,), {"forward": namespace["forward"]})
    return cls()


def test_the_cache_keyword_is_the_one_the_forward_names():
    assert cache_keyword(_model_with("cache", "position_ids")) == "cache"
    assert cache_keyword(_model_with("past_key_values")) == "past_key_values"
    assert cache_keyword(_model_with("cache", "past_key_values")) == "cache"  # the newest spelling wins
    assert cache_keyword(_model_with()) is None
    with pytest.raises(ValueError, match="Custom.forward takes no K/V cache argument"):
        cache_kwargs(_model_with("position_ids"), object())
    assert cache_kwargs(_model_with("past_key_values"), "c") == {"past_key_values": "c"}


def test_the_installed_transformers_spelling(tiny_model_path):
    """transformers 5.24 renamed a causal LM's cache argument and output field; the quickstart's model gets the
    spelling of the installed version, and its output's cache is read without touching a deprecated alias."""
    from transformers.cache_utils import DynamicCache

    from score_rl.utils import load_model

    model = load_model(tiny_model_path)
    new = Version(transformers.__version__) >= Version("5.24")
    assert cache_keyword(model) == ("cache" if new else "past_key_values")
    assert accepts(model, "position_ids", "use_cache", "logits_to_keep")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        assert isinstance(output_cache(out), DynamicCache) and output_cache(out).get_seq_length() == 3
        more = model(input_ids=torch.tensor([[4]]), use_cache=True, **cache_kwargs(model, output_cache(out)))
    assert output_cache(more).get_seq_length() == 4
    assert output_cache(object()) is None


def test_the_suite_fails_on_a_deprecated_call_of_ours(tiny_model_path):
    """Where the installed transformers deprecates the old spelling, passing it from this repository raises
    (tests/conftest.py); where the old spelling is the current one, it is an ordinary call."""
    from tests.conftest import UpstreamDeprecation
    from transformers.cache_utils import DynamicCache

    from score_rl.utils import load_model

    model = load_model(tiny_model_path)
    ids = torch.tensor([[1, 2, 3]])
    if cache_keyword(model) == "cache":
        with pytest.raises(UpstreamDeprecation, match="deprecated"):
            model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    else:
        model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)


def test_the_guard_sees_a_notice_again_after_a_library_triggered_it(tiny_model_path):
    """transformers says each message once per process; a library's own deprecated call (let through) must not hide
    the same notice about a later call of ours."""
    from tests.conftest import UpstreamDeprecation

    from score_rl.utils import load_model

    model = load_model(tiny_model_path)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)
    if cache_keyword(model) != "cache":
        pytest.skip(f"transformers {transformers.__version__} has no deprecated cache alias (the drift venv has)")
    library = compile("out.past_key_values", "/venv/site-packages/peft/some_module.py", "eval")
    eval(library, {"out": out})  # a library's call: let through
    with pytest.raises(UpstreamDeprecation, match="deprecated"):
        out.past_key_values  # noqa: B018 - ours: the same notice raises
