"""Checkpoints on the Hugging Face Hub: use one by name, publish one with a model card.

    resolve_checkpoint("owner/name")            -> the local snapshot of that model repo (downloaded or cached)
    resolve_checkpoint("owner/name/best.ckpt")  -> one file of it
    stage(K, folder, "owner/name")              -> the folder that `push_to_hub` uploads: the self-contained
                                                   mimic-el checkpoint + README.md (the model card)
    push_to_hub(K, "owner/name", private=False) -> creates the repo if needed, then one upload_folder call

K is any checkpoint `load_checkpoint` reads (a mimic-el folder, or a Lightning .ckpt, converted). The card
takes the datasets, metrics and training settings from the run around K when it is a training run's
output (runs/<run>/best/ or runs/<run>/checkpoints/*.ckpt): result.json and the logged hparams.yaml.
Local paths never go into the published files: the backbone is named by its Hub id when it has one (a
local folder that is a Hugging Face cache snapshot counts), else as "a local CLIP (<folder name>)" with its
shape in the card; a user needs neither, as the weights are in the checkpoint (`public_encoder`).
"""
import glob
import json
import logging
import math
import os
import re

import yaml

from ..data.hubrepo import HubError, check_repo_id, public, publish
from ..fileio import write_json
from .checkpoint import CONFIG, CheckpointError, load_checkpoint, save_model

log = logging.getLogger(__name__)

CARD = "README.md"
METRICS = ("hits@1", "hits@3", "hits@5", "hits@10", "hits@20", "mrr", "mr")
# the training settings a card shows (never the data paths, which name the publisher's folders)
SETTINGS = ("run_name", "seed", "lr", "optim.betas", "optim.eps", "optim.weight_decay", "data.batch_size",
            "data.text_max_length", "trainer.max_epochs", "trainer.check_val_every_n_epoch",
            "early_stopping_patience", "train_fraction", "ablation.units", "ablation.unit_losses")
CITATION = """\
@inproceedings{luo2023mimic,
  title     = {Multi-Grained Multimodal Interaction Network for Entity Linking},
  author    = {Pengfei Luo and Tong Xu and Shiwei Wu and Chen Zhu and Linli Xu and Enhong Chen},
  booktitle = {Proceedings of the 29th ACM SIGKDD Conference on Knowledge Discovery and Data Mining (KDD)},
  publisher = {ACM},
  year      = {2023},
  eprint    = {2307.09721},
  archivePrefix = {arXiv}
}"""


def resolve_checkpoint(spec: str) -> str:
    """A local file or folder as it is; "owner/name" or "owner/name/path/file" from the Hugging Face Hub
    (or, offline, from its local cache)."""
    if os.path.exists(spec):
        return spec
    parts = spec.strip("/").split("/")
    if len(parts) < 2:
        raise CheckpointError(f"{spec}: no such file or folder, and not a Hub repo (owner/name)")
    repo = "/".join(parts[:2])
    try:
        check_repo_id(repo)
    except HubError:
        raise CheckpointError(f"{spec}: no such file or folder, and not a Hub repo (owner/name)")
    from huggingface_hub import hf_hub_download, snapshot_download
    try:
        if len(parts) == 2:
            return snapshot_download(repo)
        return hf_hub_download(repo, "/".join(parts[2:]))
    except Exception as e:  # the hub client raises many kinds; all mean "not available here"
        raise CheckpointError(f"{spec}: no such file or folder here, and it could not be downloaded from the Hugging "
                              f"Face Hub: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


# -- what the run around a checkpoint tells ---------------------------------------------------------

def run_folder(checkpoint: str) -> str:
    """The training run a checkpoint came from (runs/<run>/best/ or runs/<run>/checkpoints/x.ckpt), or None."""
    path = os.path.abspath(checkpoint)
    for candidate in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        if os.path.isfile(os.path.join(candidate, "result.json")):
            return candidate
    return None


def _read_run(run: str) -> tuple:
    """(result.json as a dict, the logged run config as a dict); {} for what is missing or unreadable."""
    result, settings = {}, {}
    if not run:
        return result, settings
    try:
        with open(os.path.join(run, "result.json"), encoding="utf-8") as f:
            result = json.load(f)
        result = result if isinstance(result, dict) else {}
    except (OSError, ValueError) as e:
        log.warning("%s/result.json is not readable, the card has no results: %s", run, e)
    logged = sorted(glob.glob(os.path.join(run, "version_*", "hparams.yaml")), key=os.path.getmtime)
    if logged:
        try:
            with open(logged[-1], encoding="utf-8") as f:
                settings = yaml.safe_load(f)
            settings = settings if isinstance(settings, dict) else {}
        except (OSError, yaml.YAMLError) as e:
            log.warning("%s is not readable, the card has no training settings: %s", logged[-1], e)
    return result, settings


def _lookup(tree: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _text(value, limit: int = 80) -> str:
    """A value from a file, safe inside a Markdown table cell: one line, no table or HTML syntax, bounded."""
    text = re.sub(r"[\s|<>`\\]+", " ", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


# -- the card ---------------------------------------------------------------------------------------

# A local CLIP is published as this, with its folder's name: what the checkpoint was trained from, without
# a path of the publisher's machine (the weights are in the checkpoint; nothing needs to be found there).
LOCAL_CLIP = "a local CLIP ({})"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HF_CACHE_SNAPSHOT = re.compile(r"models--([\w.-]+)--([\w.-]+)/snapshots/[^/]+")


def public_encoder(encoder: str) -> str:
    """What a published checkpoint names as its backbone (config.json's "encoder", the card): an open_clip
    name or a Hub id as it is; a local folder by the Hub id it is a download of (a Hugging Face cache
    snapshot, .../models--org--name/snapshots/<commit>), else as LOCAL_CLIP with its folder's name only.
    A Hub-id-shaped relative path that does not exist where this runs is taken for a Hub id: publish from
    where the checkpoint was trained."""
    from ..model.backbones import is_open_clip
    if not encoder or is_open_clip(encoder):
        return encoder
    if os.path.exists(encoder):
        snapshot = HF_CACHE_SNAPSHOT.search(os.path.realpath(encoder).replace(os.sep, "/"))
        if snapshot:
            return f"{snapshot.group(1)}/{snapshot.group(2)}"
    elif HUB_ID.fullmatch(encoder) or encoder.startswith(LOCAL_CLIP.format("")[:-1]):
        return encoder  # a Hub id, or a checkpoint published before (downloaded, published again)
    return LOCAL_CLIP.format(os.path.basename(os.path.normpath(encoder)))


def _base_model(encoder: str):
    """The Hub id of the CLIP a backbone starts from, or None (a local folder, random weights)."""
    from ..model.backbones import is_open_clip
    if is_open_clip(encoder):
        from ..model.open_clip_encoder import parse_spec
        name, tag = parse_spec(encoder)
        if not tag:
            return None
        import open_clip
        parts = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub", "").strip("/").split("/")
        return "/".join(parts[:2]) if len(parts) >= 2 else None  # "org/repo/" or "org/repo/file"
    public = public_encoder(encoder)
    return public if HUB_ID.fullmatch(public) else None


def _architecture(clip) -> str:
    """A transformers CLIP's shape, for a reader of the card: what a local folder's name does not say."""
    vision, text = getattr(clip.config, "vision_config", None), getattr(clip.config, "text_config", None)
    if vision is None or text is None:
        return ""
    return (f"; image tower a ViT of {vision.num_hidden_layers} layers of width {vision.hidden_size}, "
            f"{vision.patch_size}-px patches of {vision.image_size}-px images; text tower {text.num_hidden_layers} "
            f"layers of width {text.hidden_size}")


def _describe_backbone(model, base_model: str) -> str:
    from ..model.backbones import has_pretrained_weights, is_open_clip
    encoder = model.config.encoder
    if is_open_clip(encoder):
        weights = f"pretrained weights of {base_model}" if base_model else (
            "pretrained weights" if has_pretrained_weights(encoder) else "trained from random weights")
        return f"`{_text(encoder)}` (open_clip; {weights})"
    if base_model:
        return f"`{base_model}` (transformers CLIP)"
    return (f"`{_text(public_encoder(encoder))}`, transformers format{_architecture(model.encoder.clip)}; its "
            f"weights are in this checkpoint")  # in a code span: a folder's name is never rendered as Markdown


_public = public  # a card and a config.json are published: local paths cut to their last part


def model_card(model, repo_id: str, run: str = None) -> str:
    """README.md for the Hub: metadata (library_name, base_model, tags, datasets, metrics, model-index) and
    what a user needs: how to load it, the backbone, the training settings, the results, the NIL rule."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    result, settings = _read_run(run)
    config = model.config
    dataset = _text(settings.get("run_name") or (os.path.basename(run) if run else ""), 60) or None
    test = result.get("test_metrics") if isinstance(result.get("test_metrics"), dict) else {}
    scores = {k: _number(test.get(k)) for k in METRICS if _number(test.get(k)) is not None}
    base_model = _base_model(config.encoder)
    eval_results = [EvalResult(task_type="entity-linking", task_name="Multimodal entity linking",
                               dataset_type=dataset, dataset_name=dataset, dataset_split="test", metric_type=k,
                               metric_name=k.upper() if k in ("mrr", "mr") else k.replace("hits", "H"),
                               metric_value=round(v if k == "mr" else 100 * v, 2))
                    for k, v in scores.items()] if dataset else None
    data = ModelCardData(library_name="mimic-el", license="mit", base_model=base_model,
                         tags=["entity-linking", "multimodal", "mimic", "clip"]
                         + (["open_clip"] if config.encoder.startswith("open_clip:") else []),
                         datasets=[dataset] if dataset else None, metrics=list(scores) or None,
                         model_name=repo_id, eval_results=eval_results or None)

    lines = [f"# {repo_id}", "",
             "MIMIC, the multimodal entity linker of Luo et al. (\"Multi-Grained Multimodal Interaction Network for "
             "Entity Linking\", KDD 2023), published with mimic-el. A mention (its words, the sentence, an optional "
             "image) is scored against every entity of a knowledge base (name, description, image) by three "
             "interaction units: S = (S_T + S_V + S_C) / 3.", "",
             "## Use it", "", "With mimic-el installed (`pip install .` in its repository):", "", "```bash",
             f"mimic encode-kb --entities my_entities.json --images photos/ --checkpoint {repo_id} --out kb/mine",
             f"mimic link --kb kb/mine --checkpoint {repo_id} --sentence \"Hopper painted Nighthawks.\" --mention Hopper",
             f"MIMIC_CHECKPOINT={repo_id} python app.py   # the demo, from the mimic-el repository", "```", "",
             "```python", "from mimic.linker import Linker",
             f"linker = Linker.open(\"kb/mine\", checkpoint=\"{repo_id}\")",
             "linker.link(\"Hopper painted Nighthawks in 1942.\", \"Hopper\", image=None, top_k=5)", "```", "",
             "The folder is self-contained (weights, backbone architecture, tokenizer, image settings): it loads "
             "offline once downloaded.", "",
             "## Model", "", "| | |", "|---|---|",
             f"| backbone | {_describe_backbone(model, base_model)} |",
             f"| MIMIC widths | dv {config.dv}, TGLU {config.tglu_dim}, VDLU {config.vdlu_dim}, CMFU {config.cmfu_dim} |",
             f"| units in S | {', '.join(config.units)} |",
             f"| text length | {config.text_max_length} tokens |", ""]
    shown = [(k, _lookup(settings, k)) for k in SETTINGS if _lookup(settings, k) is not None]
    lines += ["## Training", ""]
    if shown:
        lines += ["| setting | value |", "|---|---|"] + [f"| {k} | {_text(v)} |" for k, v in shown]
    else:
        lines += ["The training settings were not found beside this checkpoint."]
    lines += [""]
    if scores:
        lines += [f"## Results ({dataset or 'test'} test split)", "",
                  "| " + " | ".join(k for k in scores) + " |", "|" + "---|" * len(scores),
                  "| " + " | ".join(f"{v:.2f}" if k == "mr" else f"{100 * v:.2f}" for k, v in scores.items()) + " |",
                  "", "H@k and MRR in %, MR the mean rank of the gold entity among all KB entities.", ""]
    nil = config.metadata.get("nil") if isinstance(config.metadata, dict) else None
    lines += ["## NIL answers", ""]
    if isinstance(nil, dict) and _number(nil.get("threshold")) is not None:
        accuracy = _number(nil.get("accuracy"))
        lines += [f"The linker answers NIL (\"no matching entity in the KB\") when `{_text(nil.get('feature'), 20)}` < "
                  f"{nil['threshold']:.4f}, a rule calibrated on the {_text(nil.get('split', 'dev'), 20)} split"
                  + (f" (accuracy {100 * accuracy:.2f} %)" if accuracy is not None else "") + "."]
    else:
        lines += ["No NIL rule: the linker always answers the best entity. Calibrate one with "
                  "`mimic calibrate-nil --config C.yaml --checkpoint K`."]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


# -- staging and upload -----------------------------------------------------------------------------

def stage(checkpoint: str, folder: str, repo_id: str, encoder: str = None) -> str:
    """Write the folder `push_to_hub` uploads into `folder` (which must not exist or be empty): the
    checkpoint in the mimic-el format (a .ckpt is converted) and README.md. Returns `folder`."""
    check_repo_id(repo_id)
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise HubError(f"{folder} exists and is not an empty folder; choose a new one")
    source = resolve_checkpoint(checkpoint)
    model = load_checkpoint(source, encoder=encoder)
    save_model(model, folder)
    config_path = os.path.join(folder, CONFIG)
    with open(config_path, encoding="utf-8") as f:
        recorded = json.load(f)
    recorded["mimic"]["encoder"] = public_encoder(recorded["mimic"]["encoder"])
    if isinstance(recorded["clip"].get("_name_or_path"), str):  # transformers records where it was loaded from
        public = public_encoder(recorded["clip"]["_name_or_path"])
        recorded["clip"]["_name_or_path"] = public if HUB_ID.fullmatch(public) else ""
    write_json(config_path, _public(recorded))
    with open(os.path.join(folder, CARD), "w", encoding="utf-8") as f:
        f.write(model_card(model, repo_id, run_folder(source)))
    return folder


def push_to_hub(checkpoint: str, repo_id: str, private: bool = False, encoder: str = None, token: str = None) -> str:
    """Publish a checkpoint as the Hub model repo `repo_id` (created if needed; `private` applies then).
    Returns the repo's URL."""
    return publish(repo_id, "model", lambda folder: stage(checkpoint, folder, repo_id, encoder), private, token,
                   "Upload MIMIC checkpoint (mimic-el)")
