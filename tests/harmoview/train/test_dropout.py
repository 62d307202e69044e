"""View dropout frequencies, and the per-step seeds that make dropout and noise resume exactly."""

from __future__ import annotations

import math

import pytest
import torch

from harmoview.train.dropout import ViewDropout
from harmoview.train.inputs import generator, seed_for


def test_seeds_are_stable_and_distinct():
    assert seed_for(0, 1, "smp_a") == seed_for(0, 1, "smp_a")
    assert seed_for(0, 1, "smp_a") != seed_for(0, 2, "smp_a")
    assert 0 <= seed_for("x") < 2**63


def test_view_dropout_frequencies_match_the_configured_probabilities():
    p, n = 0.3, 20000
    dropout = ViewDropout(p_view=p, p_all_refs=0.1, p_text=0.2)
    # identity 0 has 3 views, identity 1 only its frontal one, identity 2 none
    present = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    kept = torch.stack([dropout.drop_views(present, generator(7, i)) for i in range(n)]).double()  # (n, 3, 5)
    assert not bool((kept.bool() & ~present).any()), "an absent view was made present"
    assert bool((kept[:, :2].sum(-1) >= 1).all()), "an identity with views lost all of them"
    assert bool((kept[:, 2] == 0).all())
    # one of k present views is kept with (1 - p) + p^k / k (all dropped -> one restored uniformly)
    expected = (1 - p) + p**3 / 3
    tolerance = 4 * math.sqrt(expected * (1 - expected) / n)
    for view in (0, 1, 3):
        assert abs(float(kept[:, 0, view].mean()) - expected) < tolerance
    assert float(kept[:, 1, 0].mean()) == 1.0  # a single view is never dropped
    all_refs = torch.tensor([dropout.drop_all_refs(generator(8, i)) for i in range(n)]).double().mean()
    text = torch.tensor([dropout.drop_text(generator(9, i)) for i in range(n)]).double().mean()
    assert abs(float(all_refs) - 0.1) < 4 * math.sqrt(0.09 / n)
    assert abs(float(text) - 0.2) < 4 * math.sqrt(0.16 / n)


def test_no_dropout_keeps_everything_and_bad_probabilities_are_refused():
    present = torch.tensor([[1, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(ViewDropout().drop_views(present, generator(0)), present)
    with pytest.raises(ValueError, match="probability"):
        ViewDropout(p_view=1.5)
