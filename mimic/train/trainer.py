"""Training with PyTorch Lightning (multi-GPU, checkpointing, early stopping and resume come with it).

Paper settings (the authors' config and code): AdamW lr 1e-5, betas (0.9, 0.999), eps 1e-4, weight decay
1e-4 except on parameters whose names contain "bias" or "LayerNorm.weight" (in practice: biases only),
batch 128, at most 20 epochs, validation every 2 epochs, early stopping on validation MRR with patience
3, best checkpoint by validation MRR, seed 43 (which also draws the MIMIC layers), Lightning
`deterministic=True`.

The Lightning module registers `encoder` and `matcher` at top level, so the checkpoints it writes have
the authors' keys and load through the same code as theirs.
"""
import contextlib
import logging
import os
import random

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from ..data.readers import Dataset, subsample
from ..data.runconfig import apply_run_config
from ..fileio import write_json
from ..model.losses import mimic_loss
from ..model.matcher import map_terms
from ..model.processing import entity_text, mention_text
from .checkpoint import load_authors_checkpoint, omegaconf_globals, save_model
from .evaluate import encode_kb, metrics, ranks_of_gold, score_against_all

log = logging.getLogger(__name__)


class _Mentions(torch.utils.data.Dataset):
    """Evaluation items: a mention's text, its image and its gold entity index."""

    def __init__(self, dataset: Dataset, mentions: list):
        self.dataset, self.mentions = dataset, mentions

    def __len__(self):
        return len(self.mentions)

    def __getitem__(self, i):
        m = self.mentions[i]
        return mention_text(m.mention, m.sentence), self.dataset.mention_image(m), self.dataset.gold(m)


class _Pairs(_Mentions):
    """Training pairs: a mention and its gold entity (one of the entity's images at random)."""

    def __getitem__(self, i):
        m = self.mentions[i]
        e = self.dataset.entities[self.dataset.gold(m)]
        image = os.path.join(self.dataset.kb_images, random.choice(e.images)) if e.images else None
        return mention_text(m.mention, m.sentence), self.dataset.mention_image(m), entity_text(e.name, e.attr), image


class PairCollator:
    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items):
        m_text, m_image, e_text, e_image = zip(*items)
        return self.processor(list(m_text), list(m_image)), self.processor(list(e_text), list(e_image))


class MentionCollator(PairCollator):
    def __call__(self, items):
        text, image, gold = zip(*items)
        return self.processor(list(text), list(image)), torch.tensor(gold)


# The authors' filter: a name containing any of these is not decayed. No parameter is called
# "LayerNorm.weight" (CLIP's are layer_norm1, final_layer_norm, pre_layrnorm...; the matcher's *_layernorm,
# layer_norm), so only biases are exempt and every LayerNorm weight decays.
AUTHORS_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
NO_DECAY_CHOICES = ("authors", "norms")


def parameter_groups(module: nn.Module, weight_decay: float, no_decay: str = "authors") -> list:
    """AdamW groups [decayed, not decayed]. no_decay="authors": their name filter (biases only, in
    practice); "norms": biases and every LayerNorm weight."""
    if no_decay not in NO_DECAY_CHOICES:
        raise ValueError(f"optim.no_decay must be one of {', '.join(NO_DECAY_CHOICES)}, got {no_decay!r}")
    norms = {id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None}

    def exempt(name, p):
        if no_decay == "authors":
            return any(part in name for part in AUTHORS_NO_DECAY)
        return name.endswith("bias") or id(p) in norms
    decay, plain = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (plain if exempt(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class LitMIMIC(pl.LightningModule):
    def __init__(self, model, run_config, dataset: Dataset = None):
        super().__init__()
        self.encoder = model.encoder  # top-level names = the authors' checkpoint keys
        self.matcher = model.matcher
        self._model = [model]  # a list, so that the wrapper is not registered twice
        self.run_config = run_config
        self.dataset = dataset
        own = {"units": list(model.config.units), "metadata": model.config.metadata,
               "image_mode": model.config.image_mode}
        self.save_hyperparameters(OmegaConf.merge(run_config, {"mimic_el": own}))
        self._entity_terms, self._ranks = None, []

    @property
    def model(self):
        return self._model[0]

    def training_step(self, batch, batch_idx):
        mentions, entities = batch
        scores = self.matcher(self.model.encode(mentions), self.model.encode(entities))
        ablation = self.run_config.ablation
        loss, parts = mimic_loss(scores, ablation.units, ablation.unit_losses)
        self.log("Train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(scores.s))
        for name, value in parts.items():
            self.log(f"Train/loss_{name}", value, on_epoch=True, batch_size=len(scores.s))
        return loss

    def on_validation_epoch_start(self):
        batch_size = self.run_config.data.embed_update_batch_size
        terms = encode_kb(self.model, self.dataset, batch_size, progress=False)
        self._entity_terms = map_terms(lambda t: t.to(self.device), terms)
        self._ranks = []

    def validation_step(self, batch, batch_idx):
        inputs, gold = batch
        mention_terms = self.matcher.mention_side(self.model.encode(inputs))
        scores = score_against_all(self.matcher, mention_terms, self._entity_terms,
                                   self.run_config.data.eval_chunk_size)
        self._ranks.append(ranks_of_gold(scores, gold.to(scores.device)))

    def on_validation_epoch_end(self):
        ranks = torch.cat(self._ranks) if self._ranks else torch.zeros(0, dtype=torch.long, device=self.device)
        ranks = self.all_gather(ranks).reshape(-1)
        for name, value in metrics(ranks.tolist()).items():
            if name != "count":
                self.log(f"Val/{name.replace('@', '')}", value, sync_dist=False, prog_bar=name in ("mrr", "hits@1"))
        self._entity_terms, self._ranks = None, []

    def configure_optimizers(self):
        o = self.run_config.optim
        groups = parameter_groups(self, o.weight_decay, o.no_decay)
        return torch.optim.AdamW(groups, lr=self.run_config.lr, betas=tuple(o.betas), eps=o.eps)


def _trainer_kwargs(config) -> dict:
    kwargs = OmegaConf.to_container(config.trainer, resolve=True)
    if kwargs.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        log.warning("the config asks for a GPU but none is available: training on the CPU")
        kwargs["accelerator"], kwargs["devices"] = "cpu", 1
    kwargs.setdefault("accelerator", "auto")
    kwargs.setdefault("deterministic", True)  # as the authors run it (torch's deterministic algorithms)
    return kwargs


@contextlib.contextmanager
def _torch_flags_restored():
    """Lightning switches torch's deterministic algorithms on for the whole process: back as they were after."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def train(model, config, resume: bool = False, progress: bool = True, allow_missing_images: bool = False) -> dict:
    """Fit `model` on the config's dataset; returns paths of the best checkpoint and its test metrics.
    Refuses a dataset where more than half of a split's (or the KB's) images are missing, unless
    `allow_missing_images`."""
    from ..data.check import refuse_missing_images
    apply_run_config(model, config)
    dataset = Dataset(config)
    refuse_missing_images(dataset, ["train", "dev"] + (["test"] if config.data.test_file else []),
                          allow=allow_missing_images)
    pl.seed_everything(config.seed, workers=True)
    train_mentions = subsample(dataset.split("train"), config.train_fraction, config.seed)
    if config.train_fraction < 1:
        log.warning("train_fraction %s: training on %d of %d mentions drawn with seed %s. This is NOT the "
                    "authors' low-resource subset: for the paper's 10 %%/20 %% tables put their released subset "
                    "file in data.train_file (and leave train_fraction at 1)", config.train_fraction,
                    len(train_mentions), len(dataset.split("train")), config.seed)
    log.info("training on %d of %d training mentions", len(train_mentions), len(dataset.split("train")))
    d = config.data
    processor = model.processor
    train_loader = DataLoader(_Pairs(dataset, train_mentions), batch_size=d.batch_size, shuffle=True,
                              num_workers=d.num_workers, collate_fn=PairCollator(processor), drop_last=False)
    val_loader = DataLoader(_Mentions(dataset, dataset.split("dev")), batch_size=d.eval_batch_size,
                            num_workers=d.num_workers, collate_fn=MentionCollator(processor))
    run_dir = os.path.join(config.output_dir, config.run_name)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="Val/mrr", mode="max", save_top_k=1,
                           save_weights_only=True, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, save_last=False,
                           enable_version_counter=False)
    stop = EarlyStopping(monitor="Val/mrr", mode="max", patience=config.early_stopping_patience, min_delta=0.0)
    resume_path = os.path.join(ckpt_dir, "last.ckpt") if resume else None
    if resume and not os.path.isfile(resume_path):
        raise FileNotFoundError(f"nothing to resume: {resume_path} does not exist")
    lit = LitMIMIC(model, config, dataset).train()
    with _torch_flags_restored(), torch.serialization.safe_globals(omegaconf_globals()):
        trainer = pl.Trainer(**_trainer_kwargs(config), default_root_dir=run_dir,
                             logger=CSVLogger(config.output_dir, name=config.run_name), callbacks=[best, last, stop],
                             enable_progress_bar=progress)
        trainer.fit(lit, train_loader, val_loader, ckpt_path=resume_path, weights_only=True)
    result = {"run_dir": run_dir, "best_checkpoint": best.best_model_path or None,
              "best_val_mrr": float(best.best_model_score) if best.best_model_score is not None else None}
    if trainer.is_global_zero and result["best_checkpoint"]:
        from .evaluate import evaluate
        best_model = load_authors_checkpoint(result["best_checkpoint"], encoder=model.config.encoder)
        save_model(best_model, os.path.join(run_dir, "best"))
        if d.test_file:
            _, test_metrics = evaluate(best_model, dataset, "test", d.eval_batch_size, progress=progress,
                                       entity_batch_size=d.embed_update_batch_size, chunk_size=d.eval_chunk_size)
            result["test_metrics"] = test_metrics
        result["best_model"] = os.path.join(run_dir, "best")
        write_json(os.path.join(run_dir, "result.json"), result)
    return result
