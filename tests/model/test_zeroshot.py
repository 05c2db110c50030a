"""Zero-shot initialisation: each unit equals its stated CLIP-cosine formula; S ranks like their mean.

Tolerance: the formulas are evaluated in float64 from the CLIP outputs, the model runs in float32
through two LayerNorms; 2e-3 on a scale of λ = 100 (2e-5 relative) covers float32 rounding, and the
one approximation the docstring names (a LayerNorm of an already normalised vector, < 1e-5).
"""
import pytest
import torch

from mimic.data.synthetic import make_tiny_clip
from mimic.model.mimic import MIMIC, MIMICConfig
from mimic.model.zeroshot import LOGIT_SCALE, blank_image_embedding, zero_shot_init

EPS = 1e-5
ATOL = 2e-3


def ln_cos(a, b):
    """ĉos: the cosine of the centred vectors with LayerNorm's ε, for all pairs of rows."""
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    var_a, var_b = (a * a).mean(-1), (b * b).mean(-1)
    return (a @ b.T) / (a.shape[-1] * torch.sqrt((var_a[:, None] + EPS) * (var_b[None, :] + EPS)))


@pytest.fixture(scope="module")
def zero_shot_model(tiny_clip):
    return zero_shot_init(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=5)).eval()


def image_input_norm(model, i):
    """m(i) = image_cls_layernorm(P i), in float64."""
    ln, p = model.matcher.image_cls_layernorm, model.encoder.image_cls_fc.weight.double()
    return torch.nn.functional.layer_norm(i @ p.T, ln.normalized_shape, ln.weight.double(), ln.bias.double(), ln.eps)


def clip_outputs(model, texts, images):
    batch = model.processor(texts, images)
    with torch.no_grad():
        out = model.encoder.clip(**batch)
        features = model.encode(batch)
    return out.text_embeds.double(), out.image_embeds.double(), features


def test_each_unit_equals_its_cosine_formula(zero_shot_model, synth_dataset):
    m = zero_shot_model
    entities = synth_dataset.entities[:20]
    texts = [f"{e.name} [SEP] {e.attr}" for e in entities]
    images = [synth_dataset.entity_image(e) for e in entities]
    t, i, features = clip_outputs(m, texts, images)
    with torch.no_grad():
        scores = m.matcher(features, features)
    assert torch.allclose(scores.s_t_g2l, torch.zeros_like(scores.s_t_g2l))
    torch.testing.assert_close(scores.s_t.double(), LOGIT_SCALE * ln_cos(t, t), atol=ATOL, rtol=0)
    image_norm = image_input_norm(m, i)
    with_images = torch.tensor([bool(e.images) for e in entities])
    pairs = with_images[:, None] & with_images[None, :]  # the formula is a cosine of two images
    assert pairs.sum() > 200
    torch.testing.assert_close(scores.s_v.double()[pairs], (LOGIT_SCALE * ln_cos(image_norm, image_norm))[pairs],
                               atol=ATOL, rtol=0)
    assert scores.s_v[~pairs].abs().max() < 0.1  # a missing image: no visual evidence
    ln = m.matcher.text_cls_layernorm
    n = torch.nn.functional.layer_norm(t, ln.normalized_shape, ln.weight.double(), ln.bias.double(), ln.eps)
    r = m.matcher.cmfu.text_fc.weight.double()
    torch.testing.assert_close(scores.s_c.double(), LOGIT_SCALE * ln_cos(n @ r.T, n @ r.T), atol=ATOL, rtol=0)
    # the three are on one scale: cosines times λ, 100 on the diagonal
    for unit in (scores.s_t, scores.s_v, scores.s_c):
        assert unit.abs().max() <= LOGIT_SCALE * (1 + 1e-4)


def test_projections_are_near_isometric_and_blind_to_the_missing_image(zero_shot_model):
    m = zero_shot_model
    p = m.encoder.image_cls_fc.weight  # 96 x 64 for the tiny CLIP: orthonormal columns, scaled
    gram = p.T @ p / (p.shape[0])
    blank = blank_image_embedding(m).float()
    # isometric on the complement of the blank-image embedding, zero on it
    complement = torch.eye(64) - torch.outer(blank, blank)
    torch.testing.assert_close(gram, complement, atol=1e-5, rtol=0)
    assert (p @ blank).abs().max() < 1e-4
    r = m.matcher.cmfu.text_fc.weight  # 96 x 64: orthonormal columns
    torch.testing.assert_close(r.T @ r, torch.eye(64), atol=1e-5, rtol=0)


def test_a_missing_image_gives_no_visual_evidence(zero_shot_model):
    m = zero_shot_model
    from PIL import Image
    _, _, f = clip_outputs(m, ["a [SEP] b", "c [SEP] d"], [None, Image.new("RGB", (64, 64), (200, 30, 30))])
    with torch.no_grad():
        scores = m.matcher(f, f)
    assert scores.s_v[0].abs().max() < 0.1  # vs λ = 100 for a matching pair of images
    assert scores.s_v[1, 1] > 99


def test_ranking_equals_the_ranking_by_the_stated_combination(zero_shot_model, synth_dataset):
    """On all 48 entities of the synthetic KB plus 12 more of a second tiny KB (60 in all)."""
    m = zero_shot_model
    entities = synth_dataset.entities
    texts = [f"{e.name} [SEP] {e.attr}" for e in entities] + [f"extra {k} [SEP] item number {k}" for k in range(12)]
    images = [synth_dataset.entity_image(e) for e in entities] + [None] * 12
    mentions = synth_dataset.split("test")[:10]
    m_texts = [f"{x.mention} [SEP] {x.sentence}" for x in mentions]
    m_images = [synth_dataset.mention_image(x) for x in mentions]
    t_e, i_e, f_e = clip_outputs(m, texts, images)
    t_m, i_m, f_m = clip_outputs(m, m_texts, m_images)
    with torch.no_grad():
        s = m.matcher(f_m, f_e).s.double()
    ln = m.matcher.text_cls_layernorm
    norm = lambda t: torch.nn.functional.layer_norm(t, ln.normalized_shape, ln.weight.double(),  # noqa: E731
                                                    ln.bias.double(), ln.eps)
    r = m.matcher.cmfu.text_fc.weight.double()
    stated = LOGIT_SCALE / 3 * (ln_cos(t_m, t_e) + ln_cos(image_input_norm(m, i_m), image_input_norm(m, i_e)) +
                                ln_cos(norm(t_m) @ r.T, norm(t_e) @ r.T)).detach()
    assert len(texts) >= 50
    for row in range(len(mentions)):
        ours = sorted(range(len(texts)), key=lambda j: (-float(s[row, j]), j))
        theirs = sorted(range(len(texts)), key=lambda j: (-float(stated[row, j]), j))
        assert ours == theirs
    torch.testing.assert_close(s, stated, atol=0.05, rtol=0)  # missing images: rounding noise < 0.1 / 3


def test_zero_shot_layers_keep_a_gradient_path(zero_shot_model, synth_dataset):
    """Training starts from the initialisation: the layers the formulas zero still receive gradient."""
    from mimic.model.losses import mimic_loss
    m = zero_shot_model
    m.zero_grad()
    batch = m.processor([f"{e.name} [SEP] {e.attr}" for e in synth_dataset.entities[:6]],
                        [synth_dataset.entity_image(e) for e in synth_dataset.entities[:6]])
    features = m.encode(batch)
    loss, _ = mimic_loss(m.matcher(features, features))
    loss.backward()
    for name in ("matcher.tglu.fc_cls.weight", "matcher.vdlu.dual_ent2men.fc.weight",
                 "matcher.cmfu.image_fc.weight", "matcher.cmfu.gate_fc.weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().max() > 0, name
    m.zero_grad()


def test_zero_shot_works_with_other_clip_widths(tmp_path):
    wide = make_tiny_clip(str(tmp_path / "wide"), seed=2, projection_dim=128)  # 128 > 96: orthonormal rows
    model = zero_shot_init(MIMIC.from_encoder(MIMICConfig(encoder=wide)))
    p = model.encoder.image_cls_fc.weight
    assert p.shape == (96, 128)
    torch.testing.assert_close(p @ p.T / 128, torch.eye(96), atol=1e-5, rtol=0)


def test_training_starts_from_the_zero_shot_initialisation(synth_config_path, tiny_clip, tmp_path):
    """One epoch on the synthetic dataset from each initialisation (first-epoch losses in the closing note)."""
    import csv
    import glob

    from mimic.data.readers import load_config
    from mimic.train.trainer import train
    losses = {}
    for init in ("default", "zero-shot"):
        config = load_config(synth_config_path, [f"output_dir={tmp_path / init}", "trainer.max_epochs=1"])
        model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0)
        if init == "zero-shot":
            zero_shot_init(model)
        train(model, config, progress=False)
        (path,) = glob.glob(str(tmp_path / init / "Synthetic" / "version_*" / "metrics.csv"))
        losses[init] = [float(r["Train/loss_epoch"]) for r in csv.DictReader(open(path)) if r.get("Train/loss_epoch")]
    assert all(len(v) == 1 and 0 < v[0] < 100 for v in losses.values())
    assert losses["default"] != losses["zero-shot"]
