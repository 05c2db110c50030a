"""`python -m mimic data check`: what a dataset in the authors' layout holds, and what each image mode
will make of its images, before anyone trains on it.

Per split and for the KB: items (mentions or entities), nil answers, answers not in qid2id, answers whose
entity is not in the KB, images named, and of those: missing, unreadable, non-RGB, EXIF-rotated, over the
default mode's cap, and how many the two image modes (default, authors) treat differently. Images are
judged from their headers (fast); `decode=True` decodes each one too, to catch truncated files.

The check that matters most: a folder of images that is not where the config says. The authors'
RichpediaMEL archive ships its mention images in `mention_images/` while their config says
`mention_image`, so every mention image silently becomes the zero image, in their code and here.
`train` and `evaluate` refuse to start when more than half of a split's (or the KB's) images are
missing, unless told to go on.
"""
import os
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from ..model.images import inspect_image
from .readers import SPLIT_KEYS, DataError, Dataset, check_num_entity, read_mentions, split_files

IMAGE_COUNTS = ("missing", "unreadable", "non_rgb", "rotated", "over_cap", "modes_differ")
REFUSE_MISSING_SHARE = 0.5
SAMPLE = 200  # missing names looked for in the neighbouring folders
NEIGHBOURS = 100  # neighbouring folders looked in, at most


@dataclass
class Report:
    """One split, or the KB."""
    name: str
    folder: str
    key: str  # the config key of the folder
    items: int = 0
    nil: int = 0
    not_in_qid2id: int = 0
    not_in_kb: int = 0
    images: int = 0
    missing: int = 0
    unreadable: int = 0
    non_rgb: int = 0
    rotated: int = 0
    over_cap: int = 0
    modes_differ: int = 0
    examples: dict = field(default_factory=dict)  # problem -> first example
    hint: str = None  # where the missing images are, when they are somewhere else

    @property
    def missing_share(self) -> float:
        return self.missing / self.images if self.images else 0.0

    def note(self, problem: str, example: str):
        self.examples.setdefault(problem, example)


def mention_image_paths(dataset: Dataset, mentions: list) -> list:
    return [dataset.mention_image(m) for m in mentions if m.image]


def kb_image_paths(dataset: Dataset) -> list:
    """Every image the KB names (training picks any of an entity's images)."""
    return [os.path.join(dataset.kb_images, name) for e in dataset.entities for name in e.images]


def where_missing_images_are(folder: str, missing: list, key: str) -> str:
    """A sentence naming a folder beside `folder` (the config's data.`key`) that holds the missing files,
    or saying that `folder` does not exist; None when there is nothing to say."""
    folder = os.path.normpath(folder or ".")
    parent, configured = os.path.dirname(folder), os.path.basename(folder)
    names = [os.path.basename(p) for p in missing[:SAMPLE]]
    best, found = None, 0
    if names and os.path.isdir(parent):
        neighbours = sorted((e for e in os.scandir(parent) if e.is_dir() and e.name != configured),
                            key=lambda e: e.name)
        for entry in neighbours[:NEIGHBOURS]:
            count = sum(os.path.isfile(os.path.join(entry.path, n)) for n in names)
            if count > found:
                best, found = entry.name, count
    absent = "" if os.path.isdir(folder) else f"the configured folder `{configured}/` does not exist; "
    if best:
        return (f"{absent}the folder `{best}/` exists beside the configured one `{configured}/` and holds "
                f"{found} of the {len(names)} missing images looked for there; set data.{key}: "
                f"{os.path.join(parent, best)}")
    return absent.rstrip("; ") or None


def missing_images_sentence(name: str, percent: float, missing: int, of: int, example: str, hint) -> str:
    """'N % of <the KB's or split `name`'s images> missing (m of n, e.g. <example>)', then ': <hint>' if any."""
    what = "KB images" if name == "KB" else f"{name} mention images"
    return f"{percent:.0f} % of {what} missing ({missing} of {of}, e.g. {example})" + (f": {hint}" if hint else "")


def _count_images(report: Report, paths: list, seen: dict, decode: bool, bar):
    missing = []
    for path in paths:
        if path not in seen:
            seen[path] = inspect_image(path, decode=decode)
            bar.update(1)
        facts = seen[path]
        report.images += 1
        name = os.path.basename(path)
        if not facts.exists:
            report.missing += 1
            missing.append(path)
            report.note("missing", name)
            continue
        for problem, happened in (("unreadable", not facts.readable), ("non_rgb", facts.non_rgb),
                                  ("rotated", facts.rotated), ("over_cap", facts.over_cap),
                                  ("modes_differ", facts.modes_differ)):
            if happened:
                setattr(report, problem, getattr(report, problem) + 1)
                detail = facts.problem if problem == "unreadable" else (f"mode {facts.mode}" if facts.mode else "")
                report.note(problem, f"{name} ({detail})" if detail else name)
    if report.missing:
        report.hint = where_missing_images_are(report.folder, missing, report.key)


def check_dataset(config, splits=("train", "dev", "test"), decode: bool = False, progress: bool = True) -> dict:
    """The full report: {"kb": {...}, "splits": [Report...], "problems": [sentences], "refuse": bool}."""
    dataset = Dataset(config, strict=False)
    problems = []
    try:
        check_num_entity(config, len(dataset.entities))
    except DataError as e:
        problems.append(str(e))
    kb = Report("KB", dataset.kb_images, "kb_img_folder", items=len(dataset.entities))
    reports, todo = [kb], [(kb, kb_image_paths(dataset))]
    for name in splits:
        paths = split_files(config.data[SPLIT_KEYS[name]])
        if not paths:
            continue
        report = Report(name, dataset.mention_images, "mention_img_folder")
        mentions = [m for path in paths for m in read_mentions(path, None, skip_nil=False)]
        report.items = len(mentions)
        for m in mentions:
            if m.answer == "nil":
                report.nil += 1
            elif m.answer not in dataset.qid2id:
                report.not_in_qid2id += 1
                report.note("not_in_qid2id", f"mention {m.id!r}: {m.answer}")
            elif m.answer not in dataset.position:
                report.not_in_kb += 1
                report.note("not_in_kb", f"mention {m.id!r}: {m.answer} -> id {dataset.qid2id[m.answer]}")
        reports.append(report)
        todo.append((report, mention_image_paths(dataset, mentions)))
    seen = {}
    total = len({p for _, paths in todo for p in paths})
    with tqdm(total=total, desc="check images", unit="image", disable=not progress) as bar:
        for report, paths in todo:
            _count_images(report, paths, seen, decode, bar)
    refuse = bool(problems)
    for report in reports:
        if report.missing_share > REFUSE_MISSING_SHARE:
            refuse = True
        if report.missing:
            problems.append(missing_images_sentence(report.name, 100 * report.missing_share, report.missing,
                                                    report.images, report.examples["missing"], report.hint))
        for key, text in (("not_in_qid2id", "answers not in qid2id"), ("not_in_kb", "answers whose entity id "
                                                                                   "is not in the KB")):
            if getattr(report, key):
                refuse = True
                problems.append(f"{report.name}: {getattr(report, key)} {text} (first: {report.examples[key]})")
    ids_without_entity = len(dataset.unmatched_qids)
    return {"config": config.get("run_name"), "kb": {"entities": len(dataset.entities),
                                                      "qids_without_entity": ids_without_entity,
                                                      "entities_without_qid": sum(e.qid is None for e in dataset.entities)},
            "reports": [asdict(r) | {"missing_share": r.missing_share} for r in reports],
            "problems": problems, "refuse": refuse}


COLUMNS = [("items", "items"), ("nil", "nil"), ("not_in_qid2id", "not in qid2id"), ("not_in_kb", "not in KB"),
           ("images", "images"), ("missing", "missing"), ("unreadable", "unreadable"), ("non_rgb", "non-RGB"),
           ("rotated", "EXIF-rotated"), ("over_cap", "over cap"), ("modes_differ", "modes differ")]


def format_report(report: dict) -> str:
    widths = [max(len(title), 7) for _, title in COLUMNS]
    lines = [f"{'':<6}" + " ".join(f"{title:>{w}}" for (_, title), w in zip(COLUMNS, widths))]
    for r in report["reports"]:
        cells = [("-" if r["name"] == "KB" and key in ("nil", "not_in_qid2id", "not_in_kb") else str(r[key]))
                 for key, _ in COLUMNS]
        lines.append(f"{r['name']:<6}" + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    kb = report["kb"]
    lines.append(f"KB: {kb['entities']} entities, {kb['entities_without_qid']} without a QID; "
                 f"{kb['qids_without_entity']} QIDs of qid2id name an entity id the KB does not have")
    examples = [f"  {r['name']} {key.replace('_', ' ')}: {example}" for r in report["reports"]
                for key, example in r["examples"].items() if key in IMAGE_COUNTS[1:]]
    if examples:
        lines += ["first examples:"] + examples
    lines.append("non-RGB, EXIF-rotated and over-cap images are converted, turned or refused by the default "
                 "image mode; --image-mode authors takes them as the authors' code does (non-RGB -> zeros)")
    for problem in report["problems"]:
        lines.append(f"!! {problem}")
    if report["refuse"]:
        lines.append("!! train and evaluate will refuse this dataset until the problems above are fixed "
                     "(missing images: or run them with --allow-missing-images)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The quick check at the start of train and evaluate: file existence only.

def refuse_missing_images(dataset: Dataset, splits: list, allow: bool = False):
    """Raise DataError when more than half of the KB's or a split's images are missing (unless `allow`)."""
    import logging
    log = logging.getLogger(__name__)
    sides = [("KB", dataset.kb_images, "kb_img_folder", kb_image_paths(dataset))]
    sides += [(s, dataset.mention_images, "mention_img_folder", mention_image_paths(dataset, dataset.split(s)))
              for s in splits]
    for name, folder, key, paths in sides:
        missing = [p for p in paths if not os.path.isfile(p)]
        if not missing:
            continue
        message = missing_images_sentence(name, 100 * len(missing) / len(paths), len(missing), len(paths),
                                          f"{os.path.basename(missing[0])} in {folder}",
                                          where_missing_images_are(folder, missing, key))
        if len(missing) > REFUSE_MISSING_SHARE * len(paths) and not allow:
            raise DataError(f"{message}. They would all become the zero image. Fix the config's folder, or "
                            f"pass --allow-missing-images to go on anyway; 'python -m mimic data check' "
                            f"reports the whole dataset")
        log.warning("%s. They become the zero image, as in the authors' code", message)
