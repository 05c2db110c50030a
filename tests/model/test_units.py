"""Each unit, the matcher and the losses against plain loop-based computations of the facts' formulas."""
import pytest
import torch

from mimic.model.losses import mimic_loss
from mimic.model.matcher import Matcher, select
from tests.conftest import random_features, randomize_
from tests.reference import cmfu_side, dual_pair, matcher_pair, tglu_pair

DIMS = dict(text_embed_dim=12, text_token_dim=10, dv=8, tglu_dim=6, vdlu_dim=7, cmfu_dim=5)
TOL = dict(atol=1e-9, rtol=1e-9)
APPROX = dict(abs=1e-9, rel=1e-9)


@pytest.fixture()
def matcher():
    return randomize_(Matcher(**DIMS).double(), seed=3)


def test_tglu_equals_loop_formula(matcher):
    men, ent = random_features(3, 1), random_features(4, 2)
    g2g, g2l = matcher.tglu.score(matcher.tglu.mention_side(men.t_g, men.t_l),
                                  matcher.tglu.entity_side(ent.t_g, ent.t_l))
    assert g2g.shape == g2l.shape == (3, 4)
    for b in range(3):
        for n in range(4):
            ref = tglu_pair(matcher.tglu, ent.t_g[n], ent.t_l[n], men.t_g[b], men.t_l[b])
            assert g2g[b, n].item() == pytest.approx(ref[0], **APPROX)
            assert g2l[b, n].item() == pytest.approx(ref[1], **APPROX)


def test_tglu_attention_rows_are_softmax_over_mention_tokens(matcher):
    men, ent = random_features(2, 1), random_features(3, 2)
    m, e = matcher.tglu.mention_side(men.t_g, men.t_l), matcher.tglu.entity_side(ent.t_g, ent.t_l)
    att = matcher.tglu.attention(m, e)
    assert att.shape == (2, 3, 5, 5)  # [B, N, L_E, L_M]
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 3, 5, dtype=att.dtype))
    q = e["query"][1, 2]
    logits = torch.stack([q @ m["key"][0, j] for j in range(5)]) / 6 ** 0.5
    torch.testing.assert_close(att[0, 1, 2], torch.softmax(logits, 0))


def test_vdlu_equals_loop_formula(matcher):
    men, ent = random_features(3, 4), random_features(5, 5)
    e2m, m2e = matcher.vdlu.score(matcher.vdlu.mention_side(men.v_g, men.v_l),
                                  matcher.vdlu.entity_side(ent.v_g, ent.v_l))
    assert e2m.shape == m2e.shape == (3, 5)
    for b in range(3):
        for n in range(5):
            ref_e2m = dual_pair(matcher.vdlu.dual_ent2men, ent.v_g[n], men.v_g[b], men.v_l[b])
            ref_m2e = dual_pair(matcher.vdlu.dual_men2ent, men.v_g[b], ent.v_g[n], ent.v_l[n])
            assert e2m[b, n].item() == pytest.approx(ref_e2m, **APPROX)
            assert m2e[b, n].item() == pytest.approx(ref_m2e, **APPROX)


def test_the_two_duals_have_their_own_weights(matcher):
    men, ent = random_features(2, 4), random_features(2, 5)
    # DUAL is not symmetric: swapping the instances' weights changes the scores.
    before = matcher.vdlu.score(matcher.vdlu.mention_side(men.v_g, men.v_l), matcher.vdlu.entity_side(ent.v_g, ent.v_l))
    matcher.vdlu.dual_ent2men, matcher.vdlu.dual_men2ent = matcher.vdlu.dual_men2ent, matcher.vdlu.dual_ent2men
    after = matcher.vdlu.score(matcher.vdlu.mention_side(men.v_g, men.v_l), matcher.vdlu.entity_side(ent.v_g, ent.v_l))
    assert not torch.allclose(before[0], after[0])


def test_cmfu_equals_loop_formula(matcher):
    x = random_features(4, 6)
    side = matcher.cmfu.side(x.t_g, x.v_l)
    assert side["f"].shape == (4, 5) and side["alpha"].shape == (4, 4)
    for n in range(4):
        f, alpha = cmfu_side(matcher.cmfu, x.t_g[n], x.v_l[n])
        torch.testing.assert_close(side["f"][n], f, **TOL)
        torch.testing.assert_close(side["alpha"][n], torch.tensor(alpha, dtype=torch.float64), **TOL)
    s_c = matcher.cmfu.score(side, side)
    torch.testing.assert_close(s_c, side["f"] @ side["f"].T)


def test_context_layer_norm_is_unused(matcher):
    x = random_features(3, 6)
    before = matcher.cmfu.side(x.t_g, x.v_l)["f"]
    with torch.no_grad():
        matcher.cmfu.context_layer_norm.weight.mul_(7.0)
    torch.testing.assert_close(matcher.cmfu.side(x.t_g, x.v_l)["f"], before)


def test_matcher_equals_loop_formula_for_every_pair(matcher):
    men, ent = random_features(3, 7), random_features(4, 8)
    scores = matcher(men, ent)
    for b in range(3):
        for n in range(4):
            ref = matcher_pair(matcher, (ent.t_g[n], ent.t_l[n], ent.v_g[n], ent.v_l[n]),
                               (men.t_g[b], men.t_l[b], men.v_g[b], men.v_l[b]))
            for name, value in ref.items():
                assert getattr(scores, name)[b, n].item() == pytest.approx(value, **APPROX), name


def test_batched_scoring_equals_pair_by_pair(matcher):
    men, ent = random_features(5, 9), random_features(7, 10)
    batched = matcher(men, ent)
    for b in range(5):
        for n in range(7):
            single = matcher(men[b:b + 1], ent[n:n + 1])
            for name, value in single.as_dict().items():
                assert value.shape == (1, 1)
                assert getattr(batched, name)[b, n].item() == pytest.approx(value.item(), **APPROX)


def test_precomputed_sides_and_candidate_subsets_give_the_same_scores(matcher):
    men, ent = random_features(2, 11), random_features(9, 12)
    e_side = matcher.entity_side(ent)
    full = matcher.score(matcher.mention_side(men), e_side)
    index = torch.tensor([7, 2, 5])
    part = matcher.score(matcher.mention_side(men), select(e_side, index))
    torch.testing.assert_close(part.s, full.s[:, index], **TOL)


def test_ablation_drops_a_unit_from_the_overall_score():
    men, ent = random_features(3, 13), random_features(3, 14)
    full = randomize_(Matcher(**DIMS).double(), seed=5)
    for dropped in ("tglu", "vdlu", "cmfu"):
        kept = tuple(u for u in ("tglu", "vdlu", "cmfu") if u != dropped)
        ablated = Matcher(**DIMS, units=kept).double()
        ablated.load_state_dict(full.state_dict())
        s = ablated(men, ent)
        torch.testing.assert_close(s.s, (s.unit(kept[0]) + s.unit(kept[1])) / 2)
        # the dropped unit no longer influences S or the loss
        loss, parts = mimic_loss(s, kept, kept)
        assert set(parts) == {"overall", *kept}
        loss.backward()
        unit = getattr(ablated, dropped)
        assert all(p.grad is None or p.grad.abs().max() == 0 for p in unit.parameters())
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in getattr(ablated, kept[0]).parameters())


def test_unknown_units_are_refused():
    with pytest.raises(ValueError, match="units must be a non-empty subset"):
        Matcher(**DIMS, units=("tglu", "vision"))


def test_loss_is_cross_entropy_on_the_diagonal_for_s_and_each_unit(matcher):
    men, ent = random_features(4, 15), random_features(4, 16)
    scores = matcher(men, ent)

    def ce(m):  # plain cross entropy, row by row, gold on the diagonal
        return sum(-(m[i, i] - torch.logsumexp(m[i], 0)) for i in range(len(m))) / len(m)

    loss, parts = mimic_loss(scores)
    expected = ce(scores.s) + ce(scores.s_t) + ce(scores.s_v) + ce(scores.s_c)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss_without_text, parts = mimic_loss(scores, unit_losses=("vdlu", "cmfu"))
    assert set(parts) == {"overall", "vdlu", "cmfu"}
    assert loss_without_text.item() == pytest.approx((expected - ce(scores.s_t)).item(), rel=1e-12)
