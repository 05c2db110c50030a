"""Checkpoints: the authors' Lightning `.ckpt` files and the project's own folder format.

Own format, a folder:
    config.json         {"format": "mimic-el", "version": 1, "mimic": MIMICConfig (its `encoder` names the
                        backbone), "clip": the CLIP's architecture (a transformers CLIPConfig, or
                        {"open_clip": open_clip's model and preprocessing config})}
    model.safetensors   every weight, under the same keys as the authors' `state_dict`
    the tokenizer and the image settings, so that the folder loads with no hub and no encoder folder

A checkpoint runs on the backbone it was trained on: asking for another (`encoder=`) is refused
(mimic/model/backbones.py, `same_backbone`).

Authors' format: a PyTorch Lightning checkpoint whose `state_dict` holds `encoder.clip.*`,
`encoder.image_*_fc.*` and `matcher.*`; `hyper_parameters` is an OmegaConf DictConfig. It is read with
`torch.load(weights_only=True)`, allow-listing only OmegaConf's container and node classes: a file
that asks for anything else is refused, never unpickled.
"""
import collections
import json
import os
import pickle
import re
import typing
import zipfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..fileio import atomic_folder, mode_of_folder, write_json
from ..model.backbones import (
    architecture,
    from_architecture,
    is_open_clip,
    load_backbone,
    make_processor,
    same_backbone,
)
from ..model.encoder import DEFAULT_ENCODER
from ..model.mimic import MIMIC, MIMICConfig

FORMAT = "mimic-el"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# Buffers older transformers versions saved and current ones recompute.
IGNORED_SUFFIXES = (".position_ids",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


def omegaconf_globals() -> list:
    import omegaconf
    from omegaconf import base, nodes
    classes = [omegaconf.DictConfig, omegaconf.ListConfig, base.Metadata, base.ContainerMetadata]
    classes += [getattr(nodes, n) for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                            "BytesNode", "PathNode", "EnumNode", "ValueNode") if hasattr(nodes, n)]
    return classes + [typing.Any, collections.defaultdict, dict, list, tuple, set, int, float, str, bool]


def read_torch_file(path: str) -> dict:
    """torch.load(weights_only=True) with OmegaConf's classes allowed, and errors said plainly."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(omegaconf_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)|Trying to call reduce for (\S+)",
                           str(e))
        if unsafe:
            raise CheckpointError(f"{path}: refused to load: the file contains objects other than weights and "
                                  f"settings ({unsafe.group(0)}), which could run code when unpickled")
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another kind of file)")
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another kind of file): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")


def check_and_load_state(model: MIMIC, state: dict, source: str):
    """Load `state` into `model` after checking every key and shape; name the first problem."""
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES) or k in expected}
    for key, value in state.items():
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected key {key!r}: this is not a MIMIC checkpoint of this layout")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(value.shape)} but the model expects "
                                  f"{tuple(expected[key].shape)} (another encoder or hidden size?)")
    missing = [k for k in expected if k not in state and not k.endswith(IGNORED_SUFFIXES)]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    model.load_state_dict(state, strict=False)
    return model


def _dims_from_state(state: dict) -> dict:
    """The MIMIC hidden sizes, read off the weights (so any authors' config loads)."""
    def rows(key):
        if key not in state:
            raise CheckpointError(f"missing key {key!r}: this is not a MIMIC checkpoint")
        return state[key].shape[0]
    return {"dv": rows("encoder.image_cls_fc.weight"), "tglu_dim": rows("matcher.tglu.fc_query.weight"),
            "vdlu_dim": rows("matcher.vdlu.dual_ent2men.cls_fc.weight"), "cmfu_dim": rows("matcher.cmfu.text_fc.weight")}


def _plain(value):
    """OmegaConf containers -> plain Python (without resolving interpolations)."""
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=False)
    except ImportError:
        pass
    return value


def check_backbone(recorded: str, requested: str, source: str):
    """Refuse to run a checkpoint on another backbone than the one it was trained on."""
    if requested and recorded and not same_backbone(recorded, requested):
        raise CheckpointError(f"{source}: this checkpoint was trained on the backbone {recorded!r} and cannot run on "
                              f"{requested!r}; leave --encoder (MIMIC_ENCODER) out to use its own")


def load_authors_checkpoint(path: str, encoder: str = None) -> MIMIC:
    """A Lightning checkpoint written by the authors' code (or by our trainer, which uses the same keys).

    The CLIP architecture comes from `encoder` (a backbone name); by default from the run's
    `pretrained_model` when that is an open_clip backbone or a folder that exists here, else
    openai/clip-vit-base-patch32.
    """
    raw = read_torch_file(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a checkpoint (it holds a {type(raw).__name__})")
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not any(str(k).startswith("matcher.") for k in state):
        raise CheckpointError(f"{path}: no MIMIC weights in it (expected a 'state_dict' with 'matcher.*' keys)")
    hparams = _plain(raw.get("hyper_parameters")) or {}
    run_encoder = hparams.get("pretrained_model") if isinstance(hparams, dict) else None
    if isinstance(run_encoder, str) and is_open_clip(run_encoder):
        check_backbone(run_encoder, encoder, path)
    if encoder is None:
        usable = isinstance(run_encoder, str) and (is_open_clip(run_encoder) or os.path.isdir(run_encoder))
        encoder = run_encoder if usable else DEFAULT_ENCODER
    try:
        config = MIMICConfig(encoder=encoder, **_dims_from_state(state))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}")
    text_max_length = (hparams.get("data") or {}).get("text_max_length") if isinstance(hparams, dict) else None
    if isinstance(text_max_length, int):
        config.text_max_length = text_max_length
    if isinstance(hparams, dict) and isinstance(hparams.get("mimic_el"), dict):  # written by our trainer
        own = hparams["mimic_el"]
        config.units = tuple(own.get("units", config.units))
        config.image_mode = own.get("image_mode", config.image_mode)
        config.metadata = dict(own.get("metadata", {}))
    if os.path.isfile(_nil_sidecar(path)):
        config.metadata["nil"] = read_nil_rule(_nil_sidecar(path))
    model = MIMIC(config, load_backbone(encoder, pretrained=False))  # the architecture; the weights come from `state`
    return check_and_load_state(model, state, path).eval()


def is_checkpoint_folder(folder: str) -> bool:
    """A mimic-el checkpoint folder (what save_model may replace); an empty folder counts as none."""
    try:
        with open(os.path.join(folder, CONFIG), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_model(model: MIMIC, folder: str):
    """Write the own format (atomically: the folder appears complete or not at all). An existing folder
    is replaced only if it is a mimic-el checkpoint: any other is refused, never deleted."""
    with atomic_folder(folder, replaceable=is_checkpoint_folder) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
                 if not k.endswith(IGNORED_SUFFIXES)}
        save_file(state, os.path.join(tmp, WEIGHTS), metadata={"format": FORMAT})
        mode_of_folder(os.path.join(tmp, WEIGHTS), tmp)  # safetensors writes it 0600, whatever the umask
        write_json(os.path.join(tmp, CONFIG), {"format": FORMAT, "version": VERSION,
                                               "mimic": model.config.to_dict(),
                                               "clip": architecture(model.encoder.clip)})
        model.processor.save(tmp)


def load_own_checkpoint(folder: str, encoder: str = None) -> MIMIC:
    """A mimic-el folder; `encoder`, when given, must name the backbone it was trained on."""
    config_path = os.path.join(folder, CONFIG)
    try:
        with open(config_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {CONFIG}; not a mimic-el checkpoint folder")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: not a mimic-el checkpoint (format is {meta.get('format')!r})"
                              if isinstance(meta, dict) else f"{config_path}: not a mimic-el checkpoint")
    version = meta.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{folder}: written by a newer mimic-el (format version {version!r})")
    for key, what in (("mimic", "MIMIC settings"), ("clip", "CLIP architecture")):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{config_path}: the {what} (\"{key}\") are missing or not an object; the file "
                                  "is damaged: save the checkpoint again")
    try:
        config = MIMICConfig.from_dict(meta["mimic"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{config_path}: unusable settings ({type(e).__name__}: {e}); the file is damaged: "
                              "save the checkpoint again")
    check_backbone(config.encoder, encoder, folder)
    try:
        clip = from_architecture(dict(meta["clip"]))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{config_path}: unusable CLIP architecture ({type(e).__name__}: {e}); the file is "
                              "damaged: save the checkpoint again")
    if not isinstance(config.metadata, dict):
        raise CheckpointError(f"{config_path}: \"mimic\".\"metadata\" must be an object; the file is damaged")
    if "nil" in config.metadata:
        config.metadata["nil"] = check_nil_rule(config.metadata["nil"], f"{config_path}: the NIL rule")
    try:
        state = load_file(os.path.join(folder, WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: {WEIGHTS} is missing")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(folder, WEIGHTS)}: damaged or truncated weights file ({e})")
    model = MIMIC(config, clip, make_processor(config.encoder, clip, config.text_max_length, folder=folder))
    return check_and_load_state(model, state, folder).eval()


def _nil_sidecar(path: str) -> str:
    return path + ".nil.json"


def check_nil_rule(rule, source: str) -> dict:
    """A NIL rule as `calibrate-nil` stores it ({"feature": "score" or "margin", "threshold": number, ...}),
    or CheckpointError naming `source`."""
    from ..nil import FEATURES
    if not isinstance(rule, dict):
        raise CheckpointError(f"{source}: expected a JSON object with \"feature\" and \"threshold\"; run "
                              "calibrate-nil again")
    if rule.get("feature") not in FEATURES:
        raise CheckpointError(f"{source}: \"feature\" must be one of {', '.join(FEATURES)}, got "
                              f"{str(rule.get('feature'))[:40]!r}; run calibrate-nil again")
    threshold = rule.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold != threshold:
        raise CheckpointError(f"{source}: \"threshold\" must be a number; run calibrate-nil again")
    return rule


def read_nil_rule(path: str) -> dict:
    """The NIL rule stored beside a .ckpt file, checked."""
    try:
        with open(path, encoding="utf-8") as f:
            rule = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); run calibrate-nil again, or delete the file to "
                              "link without a NIL rule")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})")
    return check_nil_rule(rule, path)


def save_nil_rule(path: str, rule: dict) -> str:
    """Store a NIL rule with a checkpoint: in a mimic-el folder's config.json, beside a .ckpt file."""
    if os.path.isdir(path):
        config_path = os.path.join(path, CONFIG)
        with open(config_path, encoding="utf-8") as f:
            meta = json.load(f)
        meta["mimic"].setdefault("metadata", {})["nil"] = rule
        write_json(config_path, meta)
        return config_path
    write_json(_nil_sidecar(path), rule)
    return _nil_sidecar(path)


def load_checkpoint(path: str, encoder: str = None) -> MIMIC:
    """A checkpoint of either format: a folder (own format) or a file (authors' Lightning .ckpt)."""
    if os.path.isdir(path):
        return load_own_checkpoint(path, encoder)
    if os.path.basename(path) in (WEIGHTS, CONFIG):
        return load_own_checkpoint(os.path.dirname(path) or ".", encoder)
    return load_authors_checkpoint(path, encoder)
