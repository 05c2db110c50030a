"""Reproducing the authors: data check and their RichpediaMEL layout, QIDs by entity id, config values
honoured or refused, their weight decay, seeds, and the image mode carried by checkpoints and stores."""
import glob
import json
import os
import shutil

import pytest
import torch
from PIL import Image

from mimic import cli
from mimic.cli.common import load_model as cli_load_model
from mimic.data.readers import DataError, Dataset, load_config, read_kb, read_mentions
from mimic.data.runconfig import apply_run_config
from mimic.data.synthetic import make_dataset
from mimic.kb.fingerprint import model_fingerprints
from mimic.model.mimic import MIMIC, MIMICConfig
from mimic.train.checkpoint import load_checkpoint, save_model
from mimic.train.evaluate import evaluate
from mimic.train.loading import load_model
from mimic.train.trainer import _trainer_kwargs, parameter_groups, train


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture(scope="module")
def richpedia_layout(tmp_path_factory, tiny_clip):
    """A synthetic dataset shipped as the authors' RichpediaMEL archive is: mention images in
    mention_images/ while the config says mention_image; and a few awkward KB images."""
    folder = tmp_path_factory.mktemp("richpedia")
    config_path = make_dataset(str(folder), encoder=tiny_clip, mention_image_dir="mention_images")
    kb = json.load(open(folder / "kb_entity.json"))
    named = [e["image_list"][0] for e in kb if e["image_list"]]
    kb_images = folder / "kb_image"
    Image.open(kb_images / named[0]).convert("L").save(kb_images / named[0], "JPEG")  # grayscale
    Image.open(kb_images / named[1]).convert("CMYK").save(kb_images / named[1], "JPEG")  # CMYK
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(kb_images / named[2]).save(kb_images / named[2], "JPEG", exif=exif.tobytes())  # EXIF-rotated
    (kb_images / named[3]).write_bytes(b"not a picture")  # unreadable
    os.remove(kb_images / named[4])  # missing
    return config_path, folder


def run_cli(argv, capsys):
    status = cli.main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


# -- data check ------------------------------------------------------------------------------------

def test_data_check_reports_the_richpediamel_layout_loudly(richpedia_layout, capsys, tmp_path):
    config_path, folder = richpedia_layout
    status, out, _ = run_cli(["data", "check", "--config", config_path, "--no-progress",
                              "--out", str(tmp_path / "r.json")], capsys)
    assert status == 1
    assert ("!! 100 % of train mention images missing (144 of 144, e.g. " in out and
            "the configured folder `mention_image/` does not exist; the folder `mention_images/` exists beside "
            "the configured one `mention_image/` and holds 144 of the 144 missing images looked for there; set "
            f"data.mention_img_folder: {folder / 'mention_images'}" in out)
    assert "train and evaluate will refuse this dataset" in out
    report = json.load(open(tmp_path / "r.json"))
    kb, train_split, dev, test = report["reports"]
    named = sum(len(e["image_list"]) for e in json.load(open(folder / "kb_entity.json")))
    assert (kb["items"], kb["images"], kb["missing"], kb["unreadable"], kb["non_rgb"], kb["rotated"]) == \
        (48, named, 1, 1, 2, 1)
    assert kb["modes_differ"] == 3 and kb["over_cap"] == 0  # gray, CMYK -> zeros vs converted; rotated
    assert (train_split["items"], train_split["images"], train_split["missing"], train_split["nil"]) == (144, 144, 144, 0)
    assert (dev["items"], test["items"]) == (48, 48) and test["missing_share"] == 1.0
    assert report["kb"] == {"entities": 48, "qids_without_entity": 0, "entities_without_qid": 0}


def test_data_check_passes_once_the_folder_is_set(richpedia_layout, capsys):
    config_path, folder = richpedia_layout
    status, out, _ = run_cli(["data", "check", "--config", config_path, "--no-progress", "--set",
                              f"data.mention_img_folder={folder / 'mention_images'}"], capsys)
    assert status == 0 and "train and evaluate will refuse" not in out
    assert "!! 2 % of KB images missing" in out  # 1 of the KB's images is gone: said, but no refusal


def test_train_and_evaluate_refuse_mostly_missing_images(richpedia_layout, tiny_clip, tmp_path, capsys, caplog):
    config_path, folder = richpedia_layout
    config = load_config(config_path, [f"output_dir={tmp_path}"])
    model = MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=0)
    with pytest.raises(DataError, match=r"100 % of train mention images missing .*the folder `mention_images/` "
                                        r"exists beside the configured one.*--allow-missing-images"):
        train(model, config, progress=False)
    argv = ["evaluate", "--config", config_path, "--init", "random", "--device", "cpu", "--no-progress"]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and "100 % of test mention images missing" in err
    with caplog.at_level("WARNING"):
        status, out, err = run_cli(argv + ["--allow-missing-images"], capsys)
    assert status == 0 and "hits@1" in out
    assert "100 % of test mention images missing" in caplog.text and "They become the zero image" in caplog.text


# -- QIDs by entity id, answers required -------------------------------------------------------------

def test_qids_are_mapped_by_entity_id_not_by_position(tmp_path):
    path = write(tmp_path / "kb.json", [{"id": 2, "entity_name": "C", "attr": "", "image_list": []},
                                        {"id": 0, "entity_name": "A", "attr": "", "image_list": []}])
    kb = read_kb(path, {"QA": 0, "QB": 1, "QC": 2})
    assert [(e.index, e.name, e.qid) for e in kb] == [(0, "A", "QA"), (1, "C", "QC")]


def test_a_gap_in_the_kb_gives_gold_by_id_and_refuses_answers_without_entity(synth_config_path, tmp_path):
    config = load_config(synth_config_path)
    kb = json.load(open(config.data.entity))
    del kb[5]  # a filtered KB: id 5 is gone, later entities keep their ids
    config.data.entity = write(tmp_path / "kb_entity.json", kb)
    config.data.num_entity = 47
    rows = json.load(open(config.data.test_file))
    good = [r for r in rows if r["answer"] != "Q1005"]
    config.data.test_file = write(tmp_path / "test.json", good)
    dataset = Dataset(config)
    assert dataset.unmatched_qids == ["Q1005"]
    for m in dataset.split("test"):
        entity = dataset.entities[dataset.gold(m)]
        assert entity.qid == m.answer  # Q1007 is at position 6 now, and its name is the one of id 7
        assert entity.name == next(e["entity_name"] for e in kb if f"Q{1000 + e['id']}" == m.answer).replace("%20", " ")
    every = [r for name in ("train_file", "dev_file", "test_file") for r in json.load(open(load_config(
        synth_config_path).data[name]))]
    bad = [r for r in every if r["answer"] == "Q1005"][:1] + good
    config.data.dev_file = write(tmp_path / "dev.json", bad)
    with pytest.raises(DataError, match=rf"dev.json: mention '{bad[0]['id']}': answer 'Q1005' maps to entity id 5, "
                                        r"which is not in .*kb_entity.json"):
        dataset.split("dev")


def test_a_mention_without_answer_is_refused_when_read(tmp_path, synth_config_path, capsys):
    rows = [{"id": "m1", "sentence": "s", "mentions": "m", "imgPath": "", "answer": "Q1000"},
            {"id": "m2", "sentence": "s", "mentions": "m", "imgPath": ""}]
    path = write(tmp_path / "test.json", rows)
    with pytest.raises(DataError, match=r"test.json: mention #1 \(id 'm2'\) has no 'answer' field"):
        read_mentions(path)
    status, _, err = run_cli(["evaluate", "--config", synth_config_path, "--init", "random", "--set",
                              f"data.test_file={path}"], capsys)
    assert status == 2 and "mention #1 (id 'm2') has no 'answer' field" in err and "Traceback" not in err


def test_split_files_may_be_lists_as_in_the_authors_code(synth_config_path):
    config = load_config(synth_config_path)
    one = Dataset(config).split("test")
    config.data.test_file = [config.data.test_file, config.data.dev_file]
    both = Dataset(config).split("test")
    assert [m.id for m in both[:len(one)]] == [m.id for m in one] and len(both) == 96


# -- config values honoured or refused ---------------------------------------------------------------

def test_num_entity_must_be_the_kb_size(synth_config_path):
    config = load_config(synth_config_path, ["data.num_entity=5"])
    with pytest.raises(DataError, match="data.num_entity: 5 vs a KB of 48 entities"):
        Dataset(config)


@pytest.mark.parametrize("key,value,message", [
    ("model.input_image_hidden_dim", 1024, "model.input_image_hidden_dim: 1024 does not match the model's vision "
                                           "token width 48"),
    ("model.input_hidden_dim", 512, "model.input_hidden_dim: 512 does not match the model's image embedding width 64"),
    ("model.dt", 32, "model.dt: 32 does not match the model's text embedding width 64"),
    ("model.TGLU_hidden_dim", 64, "model.TGLU_hidden_dim: 64 does not match the model's TGLU width 96"),
    ("model.dv", 32, "model.dv: 32 does not match the model's image projection \\(dv\\) width 96"),
    ("data.text_max_length", 80, "data.text_max_length: 80 is more than the 77 token positions"),
    ("data.eval_chunk_size", 0, "data.eval_chunk_size: 0 must be a positive whole number"),
])
def test_config_values_a_model_cannot_honour_are_refused_by_name(synth_config_path, tiny_model, key, value, message):
    config = load_config(synth_config_path, [f"{key}={value}"])
    with pytest.raises(DataError, match=message):
        apply_run_config(tiny_model, config)


def test_config_sizes_build_a_new_model_and_text_length_is_honoured(synth_config_path, tiny_clip, synth_dataset):
    config = load_config(synth_config_path, ["model.TGLU_hidden_dim=64", "model.IDLU_hidden_dim=32",
                                             "model.CMFU_hidden_dim=48", "model.dv=80", "data.text_max_length=24"])
    args = cli.build_parser().parse_args(["evaluate", "--config", synth_config_path, "--init", "random",
                                          "--device", "cpu"])
    model = cli_load_model(args, config)
    assert model.matcher.tglu.fc_query.out_features == 64 and model.matcher.vdlu.dual_men2ent.fc.out_features == 32
    assert model.matcher.cmfu.gate_layer_norm.normalized_shape == (48,) and model.encoder.image_cls_fc.out_features == 80
    assert model.processor.tokenize(["a [SEP] b"])["input_ids"].shape == (1, 24)
    _, m = evaluate(model, synth_dataset, "test", progress=False)
    assert m["count"] == 48


def test_a_checkpoint_trained_with_another_text_length_takes_the_configs(synth_config_path, tiny_model, tmp_path, caplog):
    config = load_config(synth_config_path, ["data.text_max_length=16"])
    with caplog.at_level("WARNING"):
        apply_run_config(tiny_model, config)
    assert tiny_model.config.text_max_length == 16 and tiny_model.processor.max_length == 16
    assert "data.text_max_length: 16 tokens per text, where the model was built or trained with 40" in caplog.text
    save_model(tiny_model, str(tmp_path / "ckpt"))
    assert load_checkpoint(str(tmp_path / "ckpt")).processor.max_length == 16


def test_eval_chunk_size_is_the_entity_chunk_of_evaluation(tiny_model, synth_dataset, monkeypatch):
    reference, _ = evaluate(tiny_model, synth_dataset, "test", batch_size=16, progress=False)
    sizes = []
    real = tiny_model.matcher.score

    def spy(mention, entity):
        sizes.append(len(entity["cmfu"]["f"]))
        return real(mention, entity)
    monkeypatch.setattr(tiny_model.matcher, "score", spy)
    rows, _ = evaluate(tiny_model, synth_dataset, "test", batch_size=16, progress=False, chunk_size=20)
    assert sizes == [20, 20, 8] * 3  # 48 entities in chunks of 20, for each of 3 batches of 16 mentions
    assert [r["rank"] for r in rows] == [r["rank"] for r in reference]


# -- weight decay -----------------------------------------------------------------------------------

MATCHER_BIASES = [f"matcher.{n}.bias" for n in (
    "text_cls_layernorm", "text_tokens_layernorm", "image_cls_layernorm", "image_tokens_layernorm",
    "tglu.fc_query", "tglu.fc_key", "tglu.fc_value", "tglu.fc_cls", "tglu.layer_norm",
    *[f"vdlu.{d}.{layer}" for d in ("dual_ent2men", "dual_men2ent")
      for layer in ("cls_fc", "tokens_fc", "fc", "gate_fc", "add_layer_norm", "layer_norm")],
    "cmfu.text_fc", "cmfu.image_fc", "cmfu.gate_fc", "cmfu.gate_layer_norm", "cmfu.context_layer_norm")]
MATCHER_NORM_WEIGHTS = [n.replace(".bias", ".weight") for n in MATCHER_BIASES if "norm" in n]


def _groups(model, no_decay):
    names = {id(p): n for n, p in model.named_parameters()}
    decay, plain = parameter_groups(model, 1e-4, no_decay)
    assert decay["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in plain["params"]}


def test_weight_decay_by_default_spares_exactly_the_biases_as_the_authors_filter_does(tiny_model):
    decay, plain = _groups(tiny_model, "authors")
    everything = {n for n, _ in tiny_model.named_parameters()}
    matcher_plain = sorted(n for n in plain if n.startswith("matcher."))
    assert matcher_plain == sorted(MATCHER_BIASES)
    assert plain == {n for n in everything if n.endswith(".bias")} and decay == everything - plain
    assert set(MATCHER_NORM_WEIGHTS) <= decay and "encoder.clip.text_model.final_layer_norm.weight" in decay
    assert not any("LayerNorm.weight" in n for n in everything)  # why their filter spares no norm


def test_weight_decay_option_spares_every_layernorm_weight_too(tiny_model):
    decay, plain = _groups(tiny_model, "norms")
    norms = {n + ".weight" for n, m in tiny_model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    biases = {n for n, _ in tiny_model.named_parameters() if n.endswith(".bias")}
    assert plain == biases | norms and set(MATCHER_NORM_WEIGHTS) <= plain
    assert "encoder.clip.vision_model.pre_layrnorm.weight" in plain and "matcher.tglu.fc_key.weight" in decay
    with pytest.raises(ValueError, match="optim.no_decay must be one of authors, norms"):
        parameter_groups(tiny_model, 1e-4, "layernorm")


# -- seeds and determinism ----------------------------------------------------------------------------

def test_mimic_layers_are_drawn_from_the_run_seed(tiny_clip):
    def mimic_layers(seed, before):
        torch.manual_seed(before)  # whatever happened to the RNG before does not matter
        model = load_model(encoder=tiny_clip, init="random", device="cpu", seed=seed)
        return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.clip.")}
    a, b, c = mimic_layers(43, 0), mimic_layers(43, 123), mimic_layers(44, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["matcher.tglu.fc_query.weight"], c["matcher.tglu.fc_query.weight"])


def test_training_twice_with_the_seed_gives_the_same_weights(synth_config_path, tiny_clip, tmp_path, caplog):
    """deterministic=True works on the CPU; the same seed gives bit-identical weights; the authors' image
    mode is recorded in the checkpoint; --train-fraction says it is not the paper's subset."""
    states = []
    for run in ("a", "b"):
        config = load_config(synth_config_path, [f"output_dir={tmp_path / run}", "trainer.max_epochs=1",
                                                 "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1",
                                                 "train_fraction=0.5", "data.test_file=null"])
        assert _trainer_kwargs(config)["deterministic"] is True
        model = load_model(encoder=tiny_clip, init="random", device="cpu", seed=config.seed, image_mode="authors")
        with caplog.at_level("WARNING"):
            train(model, config, progress=False)
        assert not torch.are_deterministic_algorithms_enabled()  # switched back off after the run
        (last,) = glob.glob(str(tmp_path / run / "Synthetic" / "checkpoints" / "last.ckpt"))
        states.append(load_checkpoint(last))
    assert states[0].config.image_mode == "authors" and states[0].processor.images.mode == "authors"
    first, second = states[0].state_dict(), states[1].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert "This is NOT the authors' low-resource subset" in caplog.text


# -- the image mode in checkpoints and stores ----------------------------------------------------------

def test_image_mode_is_saved_with_a_checkpoint_and_changes_the_encoder_fingerprint(tiny_model, tmp_path):
    default = model_fingerprints(tiny_model)
    tiny_model.set_image_mode("authors")
    authors = model_fingerprints(tiny_model)
    assert authors["encoder"] != default["encoder"] and authors["checkpoint"] == default["checkpoint"]
    save_model(tiny_model, str(tmp_path / "ckpt"))
    loaded = load_checkpoint(str(tmp_path / "ckpt"))
    assert loaded.config.image_mode == "authors" and loaded.processor.images.mode == "authors"
    tiny_model.set_image_mode("default")
    assert model_fingerprints(tiny_model) == default  # the default mode's fingerprint is what it always was
    with pytest.raises(ValueError, match="image mode must be one of default, authors"):
        tiny_model.set_image_mode("exact")


def test_a_store_encoded_in_one_mode_is_refused_by_a_model_in_the_other(synth_config_path, tiny_model, tmp_path,
                                                                       capsys):
    from mimic.kb.store import KBStore, StoreError
    from mimic.linker import Linker
    ckpt = str(tmp_path / "ckpt")
    save_model(tiny_model, ckpt)
    status, _, err = run_cli(["encode-kb", "--config", synth_config_path, "--checkpoint", ckpt, "--image-mode",
                              "authors", "--out", str(tmp_path / "kb"), "--device", "cpu", "--no-progress"], capsys)
    assert status == 0, err
    store = KBStore.load(str(tmp_path / "kb"))
    assert store.manifest["source"]["image_mode"] == "authors"
    with pytest.raises(StoreError, match="encoder"):
        Linker(tiny_model, store)  # the default mode
    link = ["link", "--kb", str(tmp_path / "kb"), "--sentence", "the falcon in lima", "--mention", "falcon",
            "--device", "cpu"]
    with pytest.raises(SystemExit, match="the store was encoded with --image-mode authors, not default"):
        cli.main(link + ["--image-mode", "default"])
    status, out, err = run_cli(link, capsys)  # the store's mode by default, with its recorded checkpoint
    assert status == 0 and "falcon" in out.lower(), err
    shutil.rmtree(tmp_path / "kb")
