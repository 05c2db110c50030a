"""Readers for the authors' cleaned datasets (WikiMEL, RichpediaMEL, WikiDiverse) and their YAML configs.

    qid2id.json     {"Q42": 0, ...}                       QID -> entity index
    kb_entity.json  [{"id", "type", "entity_name" (URL-quoted), "attr", "image_list"}, ...]
    *_{train,dev,test}.json
                    [{"id", "sentence", "mentions" (URL-quoted), "imgPath", "answer" (QID or "nil")}, ...]

Entities are sorted by `id`; the list position is the entity index (the score column). qid2id's values
are entity ids: a QID belongs to the entity with that `id`, and a mention's gold entity is the position
of that entity. In the authors' released data the ids are 0..N-1, so id and position coincide; in a KB
with gaps (a subset, a filtered KB) only the mapping by id is right (their training code looks entities
up by id too; their evaluation uses the value as a position, which is wrong there). A mention's image
is read from the mention image folder as `<imgPath's base name up to its first dot>.jpg` (the authors
converted every mention image to JPEG and name them so). Every problem is reported with the file and
the entry.
"""
import contextlib
import json
import os
import random
from dataclasses import dataclass, field
from urllib.parse import unquote

from omegaconf import OmegaConf


class DataError(ValueError):
    """A data file that cannot be used, naming the file and the entry."""


@dataclass
class Entity:
    index: int
    name: str
    attr: str
    images: list = field(default_factory=list)  # file names inside the KB image folder
    qid: str = None
    credit: dict = None  # the picture's {"licence", "licence_url", "artist", "source"} (mimic/data/commons.py)
    aliases: list = None  # other names text uses for it (e.g. Wikidata's aliases): mention detection finds them


@dataclass
class Mention:
    id: object
    sentence: str
    mention: str
    image: str = None  # file name inside the mention image folder, or None
    answer: str = None  # QID, or "nil"


@contextlib.contextmanager
def _reading(path: str, what: str, kind: str = ""):
    """Reading the `what` file at `path`: a missing file, a folder or bytes that are not UTF-8 -> DataError
    naming the file (`kind`, e.g. "JSON ", says what the folder should have been)."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found")
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected the {what} {kind}file")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})")


def read_json(path: str, what: str):
    with _reading(path, what, "JSON "):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")


def _json_list(path: str, what: str, items: str, data=None) -> list:
    """The JSON list of `items` in the `what` file at `path` (or `data`, already read from it)."""
    data = read_json(path, what) if data is None else data
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {items}")
    return data


def _field(path, position, entry, key, types, what):
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {what} #{position} is a {type(entry).__name__}, expected an object")
    if key not in entry:
        label = f" (id {entry['id']!r})" if "id" in entry else ""
        raise DataError(f"{path}: {what} #{position}{label} has no {key!r} field")
    value = entry[key]
    if not isinstance(value, types) or isinstance(value, bool):
        label = f" (id {entry.get('id')!r})"
        raise DataError(f"{path}: {what} #{position}{label}: {key!r} must be "
                        f"{' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")
    return value


def read_qid2id(path: str) -> dict:
    data = read_json(path, "qid2id")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping QIDs to entity indices")
    for qid, index in data.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise DataError(f"{path}: QID {qid!r} maps to {index!r}, expected an integer entity index")
    return data


def read_kb(path: str, qid2id: dict = None, data=None) -> list:
    """kb_entity.json -> Entities sorted by id (position = entity index), names unquoted, each with the
    QID that qid2id gives its id."""
    data = _json_list(path, "KB entity", "entities", data)
    by_id, seen = [], {}
    for position, entry in enumerate(data):
        ident = _field(path, position, entry, "id", (int,), "entity")
        if ident in seen:
            raise DataError(f"{path}: entities #{seen[ident]} and #{position} share the id {ident}")
        seen[ident] = position
        name = _field(path, position, entry, "entity_name", (str,), "entity")
        attr = entry.get("attr", "")
        if attr is None:
            attr = ""
        if not isinstance(attr, str):
            raise DataError(f"{path}: entity #{position} (id {ident}): 'attr' must be text")
        images = entry.get("image_list") or []
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise DataError(f"{path}: entity #{position} (id {ident}): 'image_list' must be a list of file names")
        by_id.append((ident, Entity(index=ident, name=unquote(name), attr=attr, images=list(images))))
    by_id.sort(key=lambda pair: pair[0])
    qid_of = {ident: qid for qid, ident in (qid2id or {}).items()}
    for position, (ident, entity) in enumerate(by_id):
        entity.index = position
        entity.qid = qid_of.get(ident)
    return [entity for _, entity in by_id]


def read_plain_entities(path: str, data=None) -> list:
    """A plain entity list: [{"name", "description", "image" (file name or null), "qid" or "id" (optional)}]."""
    data = _json_list(path, "entity", "entities", data)
    entities, seen = [], {}
    for position, entry in enumerate(data):
        name = _field(path, position, entry, "name", (str,), "entity")
        description = entry.get("description") or ""
        if not isinstance(description, str):
            raise DataError(f"{path}: entity #{position} ({name!r}): 'description' must be text")
        image = entry.get("image")
        if image is not None and not isinstance(image, str):
            raise DataError(f"{path}: entity #{position} ({name!r}): 'image' must be a file name or null")
        qid = entry.get("qid", entry.get("id"))
        if isinstance(qid, int) and not isinstance(qid, bool):
            qid = str(qid)
        if qid is not None:
            if not isinstance(qid, str):
                raise DataError(f"{path}: entity #{position} ({name!r}): 'qid' (or 'id') must be text")
            if qid in seen:
                raise DataError(f"{path}: entities #{seen[qid]} and #{position} share the qid {qid!r}")
            seen[qid] = position
        entities.append(Entity(index=position, name=name, attr=description, images=[image] if image else [],
                               qid=qid, credit=read_credit(path, position, name, entry.get("image_credit")),
                               aliases=read_aliases(path, position, name, entry.get("aliases"))))
    return entities


CREDIT_FIELDS = ("licence", "licence_url", "artist", "source")
MAX_ALIASES, MAX_ALIAS_CHARS = 100, 200  # an entity's other names: enough for Wikidata's, bounded for the index
MAX_CREDIT = 2000  # characters of one credit field (a page shows them; a URL can be long)


def read_aliases(path: str, position: int, name: str, aliases):
    """An entity's "aliases": null, or a list of names (texts); blanks and repeats dropped, the first
    MAX_ALIASES kept, each at most MAX_ALIAS_CHARS."""
    if aliases is None:
        return None
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise DataError(f"{path}: entity #{position} ({name!r}): 'aliases' must be a list of names or null")
    kept = list(dict.fromkeys(a.strip()[:MAX_ALIAS_CHARS] for a in aliases if a.strip()))[:MAX_ALIASES]
    return kept or None


def read_credit(path: str, position: int, name: str, credit):
    """An entity's "image_credit": null, or an object of text fields (CREDIT_FIELDS; others are dropped)."""
    if credit is None:
        return None
    if not isinstance(credit, dict) or not all(v is None or isinstance(v, str) for v in credit.values()):
        raise DataError(f"{path}: entity #{position} ({name!r}): 'image_credit' must be an object of texts or null")
    return {k: credit[k][:MAX_CREDIT] if credit.get(k) else None for k in CREDIT_FIELDS}


def read_jsonl(path: str, what: str) -> list:
    """A JSON Lines file (one value a line, blank lines skipped) -> the list of its values."""
    items = []
    with _reading(path, what), open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {number} is not valid JSON ({e.msg})")
    return items


def read_entity_file(path: str, qid2id_path: str = None) -> list:
    """Entities from the authors' kb_entity.json (with an optional qid2id.json), a plain list, or a plain
    entity a line (.jsonl, what `kb from-wikidata` writes)."""
    data = read_jsonl(path, "entity") if path.endswith(".jsonl") else read_json(path, "entity")
    if isinstance(data, list) and data and isinstance(data[0], dict) and "entity_name" in data[0]:
        return read_kb(path, read_qid2id(qid2id_path) if qid2id_path else None, data)
    return read_plain_entities(path, data)


def read_mentions(path: str, qid2id: dict = None, skip_nil: bool = True) -> list:
    """A split file -> Mentions in file order (nil answers skipped unless asked). Every mention needs an
    "answer" (a QID, or "nil"); with `qid2id`, a QID it does not know is refused."""
    data = _json_list(path, "mention split", "mentions")
    mentions = []
    for position, entry in enumerate(data):
        sentence = _field(path, position, entry, "sentence", (str,), "mention")
        words = _field(path, position, entry, "mentions", (str,), "mention")
        answer = _field(path, position, entry, "answer", (str,), "mention")
        image = entry.get("imgPath") or None
        if image is not None and not isinstance(image, str):
            raise DataError(f"{path}: mention #{position} (id {entry.get('id')!r}): 'imgPath' must be text")
        if answer == "nil" and skip_nil:
            continue
        if qid2id is not None and answer != "nil" and answer not in qid2id:
            raise DataError(f"{path}: mention #{position} (id {entry.get('id')!r}): answer {answer!r} is not in qid2id")
        mentions.append(Mention(id=entry.get("id", position), sentence=sentence, mention=unquote(words),
                                image=image, answer=answer))
    return mentions


def split_files(value) -> list:
    """A config's split file entry: one path, or a list of them (read one after the other, as the authors do)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def mention_image_name(img_path: str) -> str:
    """The authors' rule: base name up to its first dot, plus '.jpg'."""
    return os.path.basename(img_path).split(".")[0] + ".jpg"


def mention_image_path(mention: Mention, folder: str):
    return os.path.join(folder, mention_image_name(mention.image)) if mention.image else None


def entity_image_path(entity: Entity, folder: str):
    """Evaluation and KB encoding use an entity's first image (training picks one at random)."""
    return os.path.join(folder, entity.images[0]) if entity.images else None


def subsample(items: list, fraction: float, seed: int) -> list:
    """A reproducible share of `items` (low-resource training), in their original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(items)
    count = max(1, round(len(items) * fraction))
    keep = sorted(random.Random(seed).sample(range(len(items)), count))
    return [items[i] for i in keep]


# ---------------------------------------------------------------------------------------------------
# Run configuration: the authors' YAML layout, accepted unchanged, plus a few optional keys of ours.

DEFAULTS = {
    "run_name": "mimic", "seed": 43, "pretrained_model": "openai/clip-vit-base-patch32", "lr": 1e-5,
    "data": {"num_entity": None, "kb_img_folder": None, "mention_img_folder": None, "qid2id": None,
             "entity": None, "train_file": None, "dev_file": None, "test_file": None, "batch_size": 128,
             "num_workers": 0, "text_max_length": 40, "eval_chunk_size": 6000, "eval_batch_size": 20,
             "embed_update_batch_size": 512},
    # widths of the encoder's outputs: null = the loaded encoder's (a value given is checked against it)
    "model": {"input_hidden_dim": None, "input_image_hidden_dim": None, "hidden_dim": 96, "dv": 96, "dt": None,
              "TGLU_hidden_dim": 96, "IDLU_hidden_dim": 96, "CMFU_hidden_dim": 96},
    "trainer": {"max_epochs": 20, "check_val_every_n_epoch": 2, "num_sanity_val_steps": 0, "log_every_n_steps": 30},
    # ours: ablations, low-resource share, optimiser constants and early stopping
    "ablation": {"units": ["tglu", "vdlu", "cmfu"], "unit_losses": ["tglu", "vdlu", "cmfu"]},
    "train_fraction": 1.0,
    # no_decay: "authors" (their name filter: biases only, in practice) or "norms" (biases and LayerNorm weights)
    "optim": {"betas": [0.9, 0.999], "eps": 1e-4, "weight_decay": 1e-4, "no_decay": "authors"},
    "early_stopping_patience": 3,
    "output_dir": "runs",
}


def load_config(path: str, overrides: list = ()):
    """An authors' YAML config (paths resolved against the file's folder) over our defaults."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: config file not found")
    try:
        user = OmegaConf.load(path)
    except Exception as e:  # yaml's and OmegaConf's errors share no useful base class
        raise DataError(f"{path}: not a valid YAML config ({e})")
    config = OmegaConf.merge(OmegaConf.create(DEFAULTS), user, OmegaConf.from_dotlist(list(overrides)))
    base = os.path.dirname(os.path.abspath(path))

    def resolve(value):
        return os.path.normpath(os.path.join(base, value)) if isinstance(value, str) and value else value
    for key in ("kb_img_folder", "mention_img_folder", "qid2id", "entity"):
        config.data[key] = resolve(config.data[key])
    for key in ("train_file", "dev_file", "test_file"):
        value = config.data[key]
        config.data[key] = [resolve(v) for v in value] if OmegaConf.is_list(value) else resolve(value)
    return config


SPLIT_KEYS = {"train": "train_file", "dev": "dev_file", "val": "dev_file", "test": "test_file"}


def check_num_entity(config, count: int):
    """data.num_entity must be the KB's size: the authors' evaluation scores only the first num_entity."""
    declared = config.data.get("num_entity")
    if declared is not None and declared != count:
        raise DataError(f"data.num_entity: {declared} vs a KB of {count} entities ({config.data.entity}); "
                        f"their code would score only the first {min(declared, count)}: set it to {count} "
                        f"or remove it")


class Dataset:
    """One dataset in the authors' layout, read according to a run config.

    strict=False (for `data check`): a data.num_entity that does not match is left for the caller to report."""

    def __init__(self, config, strict: bool = True):
        data = config.data
        for key in ("qid2id", "entity"):
            if not data[key]:
                raise DataError(f"the config has no data.{key}")
        self.config = config
        self.qid2id = read_qid2id(data.qid2id)
        self.entities = read_kb(data.entity, self.qid2id)
        self.kb_images = data.kb_img_folder or ""
        self.mention_images = data.mention_img_folder or ""
        position_of_id = {self.qid2id[e.qid]: e.index for e in self.entities if e.qid is not None}
        # QID -> score column; a QID whose id has no entity (a subset KB) is absent
        self.position = {qid: position_of_id[ident] for qid, ident in self.qid2id.items() if ident in position_of_id}
        self.unmatched_qids = sorted(qid for qid in self.qid2id if qid not in self.position)
        if strict:
            check_num_entity(config, len(self.entities))
        self._splits = {}

    def split_paths(self, name: str) -> list:
        key = SPLIT_KEYS.get(name)
        if key is None:
            raise DataError(f"unknown split {name!r} (train, dev or test)")
        paths = split_files(self.config.data[key])
        if not paths:
            raise DataError(f"the config has no data.{key}")
        return paths

    def split(self, name: str) -> list:
        """The mentions of a split with a gold entity in the KB (nil skipped); a QID whose entity is not
        in the KB is refused, naming the mention."""
        if name not in self._splits:
            mentions = []
            for path in self.split_paths(name):
                read = read_mentions(path, self.qid2id)
                for m in read:
                    if m.answer not in self.position:
                        raise DataError(f"{path}: mention {m.id!r}: answer {m.answer!r} maps to entity id "
                                        f"{self.qid2id[m.answer]}, which is not in {self.config.data.entity}")
                mentions += read
            self._splits[name] = mentions
        return self._splits[name]

    def gold(self, mention: Mention) -> int:
        """The score column (KB position) of the mention's gold entity."""
        return self.position[mention.answer]

    def entity_image(self, entity: Entity):
        return entity_image_path(entity, self.kb_images)

    def mention_image(self, mention: Mention):
        return mention_image_path(mention, self.mention_images)
