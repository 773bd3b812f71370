"""GPT2Config refuses nonsense where it is built: in code, through ``from_name``, and from a
checkpoint's config.json, with an error naming the field and what is allowed (issue 16: a
negative or NaN layer_norm_epsilon used to give NaN logits on the eager path while the Triton
path raised, so the two paths disagreed)."""

import math

import pytest

from gpt2 import GPT2Config
from gpt2.checkpoint import config_from_hf, config_to_hf

TINY = dict(n_layer=1, n_head=2, n_embd=8, vocab_size=11, block_size=5)


@pytest.mark.parametrize("field", ["n_layer", "n_head", "n_embd", "vocab_size", "block_size"])
@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-3, ValueError),
    (2.0, TypeError), (2.5, TypeError), ("4", TypeError), (True, TypeError), (None, TypeError), (math.nan, TypeError),
])
def test_counts_are_positive_ints(field, value, error):
    with pytest.raises(error, match=rf"GPT2Config\.{field} must be"):
        GPT2Config(**{**TINY, field: value})


@pytest.mark.parametrize("value, error", [
    (-1e-5, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1e-5", TypeError), (None, TypeError),
    (False, TypeError),
])
def test_layer_norm_epsilon(value, error):
    with pytest.raises(error, match=r"GPT2Config\.layer_norm_epsilon must be"):
        GPT2Config(**TINY, layer_norm_epsilon=value)


@pytest.mark.parametrize("value, error", [
    (-0.1, ValueError), (1.0, ValueError), (math.nan, ValueError), ("0.1", TypeError), (None, TypeError),
])
def test_dropout(value, error):
    with pytest.raises(error, match=r"GPT2Config\.dropout must be"):
        GPT2Config(**TINY, dropout=value)


def test_heads_divide_the_width():
    with pytest.raises(ValueError, match=r"n_embd \(8\) must be divisible by n_head \(3\)"):
        GPT2Config(**{**TINY, "n_head": 3})


def test_valid_values_are_kept_and_normalised():
    cfg = GPT2Config(**TINY, layer_norm_epsilon=0, dropout=0)
    assert cfg.layer_norm_epsilon == 0.0 and isinstance(cfg.layer_norm_epsilon, float)
    assert isinstance(cfg.dropout, float)
    assert GPT2Config.from_name("gpt2", dropout=0.1).dropout == 0.1


def test_from_name_overrides_are_checked():
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        GPT2Config.from_name("gpt2", layer_norm_epsilon=-1.0)


@pytest.mark.parametrize("change, error, match", [
    (dict(layer_norm_epsilon=-1e-5), ValueError, "layer_norm_epsilon"),
    (dict(layer_norm_epsilon="tiny"), TypeError, "layer_norm_epsilon"),
    (dict(n_layer=2.5), TypeError, "n_layer"),
    (dict(n_positions=0, n_ctx=0), ValueError, "n_positions"),
    (dict(n_embd="8"), TypeError, "n_embd"),
    (dict(resid_pdrop=math.nan), ValueError, "resid_pdrop"),
    (dict(attn_pdrop="0.1"), TypeError, "attn_pdrop"),
])
def test_config_json_values(change, error, match):
    hf = {**config_to_hf(GPT2Config(**TINY)), **change}
    with pytest.raises(error, match=match):
        config_from_hf(hf)


def test_config_json_must_be_an_object():
    with pytest.raises(ValueError, match="JSON object"):
        config_from_hf([1, 2])
