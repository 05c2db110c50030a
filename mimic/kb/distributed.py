"""encode-kb on several processes, GPUs or machines, through PyTorch Lightning (`encode-kb --devices N`).

`Trainer.predict` runs one chunk of the KB per step on every rank (each rank takes every n-th of the
chunks still to encode), and a writer callback puts each finished chunk into the resumable work folder
`<out>.partial/chunks/`, one file per chunk written atomically, as `encode-kb --shard` does. Rank 0 holds
the store's locks for the whole job; after a barrier (every rank done) it merges the chunks into the store
(kb/encode.finish, the same code as --merge). A kill of any rank loses at most the chunks in flight: the
same command again, with any number of devices, encodes only the missing ones.

Lightning launches the processes on one machine, and joins the ones `torchrun` or SLURM's `srun` started
(docs/throughput.md). The work folder must be on a filesystem every rank sees: one machine's disk, or a
shared one across machines. Only this module of kb/ needs Lightning; serving never imports it.
"""
import contextlib
import logging
import os
import shutil

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from ..data.readers import entity_image_path
from ..model.processing import entity_text
from . import retrieval, versions
from .compression import DEFAULT_PRECISION, DERIVED
from .encode import _up_to_date, chunk_ranges, encode_terms, finish, pending_chunks, start_work, write_chunk
from .entity_images import check_all_inside
from .versions import DEFAULT_WAIT, StoreError

log = logging.getLogger(__name__)
NOTHING = -1  # the chunk id of a step that encodes nothing


class ChunkEncoder(pl.LightningModule):
    """A predict step = one chunk of the KB -> (chunk id, its float terms), batch by batch through the
    same `encode_terms` as one-process encoding (so the store is the same)."""

    def __init__(self, model, entities: list, image_folder: str, chunk_size: int, batch_size: int, autocast=None):
        super().__init__()
        self.mimic = model  # a registered child: Lightning moves it to the rank's device
        self.entities, self.image_folder, self.batch_size, self.autocast = entities, image_folder, batch_size, autocast
        self.ranges = chunk_ranges(len(entities), chunk_size)
        self.chunks = []  # this rank's chunks, set by the writer's setup once rank 0 has opened the work folder

    def predict_dataloader(self):
        # one chunk per step; no sampler from Lightning, the chunks are split between ranks already
        return DataLoader(self.chunks, batch_size=None, shuffle=False)

    def predict_step(self, chunk, batch_idx):
        if chunk == NOTHING:
            return None
        start, end = self.ranges[int(chunk)]
        part = self.entities[start:end]
        values = encode_terms(self.mimic, [entity_text(e.name, e.attr) for e in part],
                              [entity_image_path(e, self.image_folder) for e in part], self.batch_size, self.device,
                              self.autocast)
        return int(chunk), {k: v for k, v in values.items() if k not in DERIVED}


class ChunkWriter(BasePredictionWriter):
    """Opens the work folder (rank 0, holding the locks), gives each rank its chunks, writes each finished
    chunk, and at the end (rank 0, after a barrier) makes the store."""

    def __init__(self, job: dict):
        super().__init__(write_interval="batch")
        self.job = job
        self.result = {}
        self._locks = contextlib.ExitStack()

    def setup(self, trainer, pl_module, stage):
        job, rank, world = self.job, trainer.global_rank, trainer.world_size
        state, failure = None, None
        if rank == 0:
            try:
                state = self._open(pl_module)
            except Exception as e:  # told to every rank, so that none is left waiting for the others
                state, failure = {"error": str(e)}, e
        state = trainer.strategy.broadcast(state, src=0)
        if "error" in state:
            self._release()
            if failure is not None:
                raise failure
            raise StoreError(f"rank 0 stopped: {state['error']}")
        seen = os.path.isfile(os.path.join(job["work"], "partial.json")) or state["up_to_date"]
        if not trainer.strategy.reduce_boolean_decision(seen, all=True):
            self._release()
            raise StoreError(f"{job['work']}: some ranks do not see the work folder; with several machines, --out "
                             f"must be on a filesystem they all share")
        # a rank with nothing left gets the placeholder -1: Lightning refuses a rank whose loader is empty
        pl_module.chunks = state["todo"][rank::world] or [NOTHING]
        self.result = {"rank": rank, "world_size": world, **state}

    def _open(self, pl_module) -> dict:
        """Rank 0: lock the store and its work folder, write or check the plan; the chunks still to encode."""
        job = self.job
        self._locks.enter_context(versions.writing(job["out"], job["wait"]))
        ranges = pl_module.ranges
        if not job["restart"] and _up_to_date(job["out"], job["fingerprints"], len(pl_module.entities),
                                              job["precision"]):
            log.info("%s is up to date (same model, KB and precision): nothing to encode", job["out"])
            return {"up_to_date": True, "todo": [], "chunks": len(ranges), "done_before": len(ranges)}
        self._locks.enter_context(versions.working(job["work"], job["wait"]))
        plan = start_work(job["work"], pl_module.mimic, len(pl_module.entities), job["fingerprints"],
                          chunk_size=job["chunk_size"], precision=job["precision"], layout="chunks",
                          source=job["source"], restart=job["restart"])
        todo = pending_chunks(job["work"], plan, list(range(len(ranges))))
        return {"up_to_date": False, "todo": todo, "chunks": len(ranges), "done_before": len(ranges) - len(todo)}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if prediction is None:
            return
        chunk, values = prediction
        write_chunk(self.job["work"], chunk, values, self.job["precision"])

    def teardown(self, trainer, pl_module, stage):
        # every rank gets here after its chunks (even a rank that had none); an exception skips this
        trainer.strategy.barrier("mimic-el: every chunk written")
        if trainer.global_rank == 0 and not self.result["up_to_date"]:
            job = self.job
            model = pl_module.mimic.cpu()  # the retrieval index is built on the CPU
            finish([job["work"]], job["out"], pl_module.entities, pl_module.image_folder, job["kb_fingerprint"],
                   model, flat_limit=job["flat_limit"], progress=job["progress"])
            shutil.rmtree(job["work"], ignore_errors=True)
        self._release()

    def on_exception(self, trainer, pl_module, exception):
        self._release()

    def _release(self):
        self._locks.close()


def encode_distributed(model, entities: list, image_folder: str, out: str, kb_fingerprint: str, *, devices=1,
                       num_nodes=1, accelerator="cpu", strategy="ddp", batch_size=64, chunk_size=1024,
                       precision=DEFAULT_PRECISION, restart=False, progress=True, source: dict = None, autocast=None,
                       flat_limit=retrieval.FLAT_LIMIT, wait=DEFAULT_WAIT) -> dict:
    """Encode a KB into a store at `out` on `devices` processes per machine times `num_nodes` machines
    (resumable). The same store as `kb.encode.encode_store`. Returns, on every rank, {"rank",
    "world_size", "chunks", "done_before" (chunks a previous run had finished), "todo", "up_to_date"}.

    strategy "ddp" launches the other processes of this machine by running this program again (as
    Lightning does): call it from a script or `python -m mimic`, not from a notebook."""
    from .fingerprint import model_fingerprints
    if not entities:
        raise StoreError("the KB has no entities")
    check_all_inside(entities, image_folder)
    versions.check_target(out)
    work = out.rstrip("/") + ".partial"
    versions.check_work_target(work)
    job = {"out": out, "work": work, "kb_fingerprint": kb_fingerprint, "wait": wait, "restart": restart,
           "fingerprints": {**model_fingerprints(model), "kb": kb_fingerprint}, "chunk_size": chunk_size,
           "precision": precision, "source": source, "flat_limit": flat_limit, "progress": progress}
    writer = ChunkWriter(job)
    module = ChunkEncoder(model.eval(), entities, image_folder, chunk_size, batch_size, autocast)
    multi = devices * num_nodes > 1
    try:
        with _quiet():
            trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                                 strategy=strategy if multi else "auto", logger=False, enable_checkpointing=False,
                                 enable_model_summary=False, enable_progress_bar=progress,
                                 use_distributed_sampler=False, callbacks=[writer])
            trainer.predict(module, return_predictions=False)
    except RuntimeError as e:
        if not (multi and _peer_lost(e)):
            raise
        kept = len(os.listdir(os.path.join(work, "chunks"))) if os.path.isdir(os.path.join(work, "chunks")) else 0
        raise StoreError(f"another process of this encoding stopped ({str(e).splitlines()[0][:200]}); the {kept} "
                         f"chunks finished are kept in {work}: run the same command again to encode the rest") from e
    finally:
        writer._release()
    return writer.result


def _peer_lost(error: RuntimeError) -> bool:
    """Did a collective fail because another rank died (killed, out of memory, its machine gone)?"""
    import torch.distributed
    text = str(error)
    return isinstance(error, torch.distributed.DistError) or "by peer" in text or "Connection reset" in text


@contextlib.contextmanager
def _quiet():
    """Lightning's notices (hardware found, tips) and warnings that do not apply here (no sampler of ours
    to infer batch indices from) only with --verbose."""
    import warnings
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    if not log.isEnabledFor(logging.INFO):
        for logger in loggers:
            logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Couldn't infer the batch indices.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*predict returned None.*")  # the step of a rank with nothing
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
