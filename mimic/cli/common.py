"""What the commands share: the help formatter, the model options, and loading the model they ask for."""
import argparse
import os
import sys


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; shows a default only where there is one worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def model_options(p, checkpoint_required=False):
    p.add_argument("--checkpoint", required=checkpoint_required, metavar="K",
                   help="trained weights: an authors' Lightning .ckpt file, a mimic-el checkpoint folder, or a "
                        "Hugging Face Hub repo owner/name (or file owner/name/path.ckpt)")
    p.add_argument("--encoder", metavar="E", default=None,
                   help="the CLIP backbone: a transformers hub id or local folder, or open_clip:MODEL/PRETRAINED "
                        "(e.g. open_clip:ViT-B-32/laion2b_s34b_b79k; open_clip:MODEL alone = random weights); "
                        "default: the checkpoint's own, else the config's pretrained_model, else "
                        "openai/clip-vit-base-patch32. A checkpoint refuses another backbone than its own")
    p.add_argument("--init", choices=["zero-shot", "random"], default=None,
                   help="without --checkpoint: how to initialise the MIMIC layers on the pretrained CLIP "
                        "(zero-shot: every unit reduces to a CLIP similarity; random: untrained)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    p.add_argument("--image-mode", choices=["default", "authors"], default=None,
                   help="default: every image made upright RGB (grayscale, CMYK, 16-bit, palette, alpha "
                        "converted; EXIF orientation applied; size capped); authors: exactly the authors' "
                        "pipeline (non-RGB images become zeros, no EXIF rotation, only PIL's own size limit). "
                        "Default: the mode the checkpoint (or the store) records, else default")


def allow_missing_images(p):
    p.add_argument("--allow-missing-images", action="store_true",
                   help="go on when more than half of a split's (or the KB's) images are missing (they "
                        "become the zero image); without it the command refuses and says where they might be")


def prog() -> str:
    """"mimic" when run as the console command, "python -m mimic" as a module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m mimic" if name in ("__main__.py", "-c", "") else name


def wait_option(p):
    p.add_argument("--wait", type=float, default=600, metavar="SECONDS",
                   help="how long to wait while another command is changing the same store")


def load_model(args, config=None, apply_config: bool = True, warn: bool = True):
    """The model the options ask for: a checkpoint, or the pretrained CLIP with an initialisation; with a
    run `config`: sized by it, then checked against it and given its text length (apply_run_config) unless
    `apply_config` is False. `warn`: say what has random weights (not for training, which starts so)."""
    from ..train.loading import load_model as load
    if not args.checkpoint and not args.init:
        raise SystemExit("error: give --checkpoint K, or --init zero-shot (CLIP similarities) or --init random")
    encoder = args.encoder or (config.pretrained_model if config is not None and not args.checkpoint else None)
    if config is None:
        model = load(args.checkpoint, encoder, args.init, args.device, image_mode=args.image_mode)
    else:
        from ..data.runconfig import apply_run_config, mimic_sizes
        model = load(args.checkpoint, encoder, args.init, args.device, seed=config.seed, sizes=mimic_sizes(config),
                     image_mode=args.image_mode)
        model = apply_run_config(model, config) if apply_config else model
    return warn_if_random(model) if warn else model


def checked_image(path):
    """The image at `path` opened, or None without a path: a missing or damaged file is an error, not a
    text-only query."""
    from ..data.readers import DataError
    from ..model.images import open_image
    if not path:
        return None
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    return open_image(path)


def store_model(args, store):
    """The model the options ask for, else the one recorded in the store (in the store's image mode)."""
    from ..train.loading import load_recorded
    source = store.manifest.get("source") or {}
    stored_mode = source.get("image_mode", "default")
    image_mode = getattr(args, "image_mode", None)
    if image_mode and image_mode != stored_mode:
        raise SystemExit(f"error: the store was encoded with --image-mode {stored_mode}, not {image_mode}: "
                         f"link with --image-mode {stored_mode}, or re-encode the KB")
    return warn_if_random(load_recorded(source, args.checkpoint, args.encoder, args.init, args.device))


def warn_if_random(model):
    """Say on stderr, once, what in the model has random weights (its rankings mean little); the model."""
    from ..train.loading import random_parts
    for part in random_parts(model):
        print(f"warning: {part}", file=sys.stderr)
    return model


def check_store(path: str):
    """Refuse a KB that is not a store before anything heavy is imported or loaded (a refusal in a
    fraction of a second); the store is opened, checked in full, later."""
    from ..kb.versions import read_manifest
    read_manifest(path)


def check_output_file(path: str, option: str):
    """Refuse an output file that cannot be one (a folder, or in a folder that does not exist) before the work."""
    from ..fileio import OutputError
    if os.path.isdir(path):
        raise OutputError(21, f"{option} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(2, f"{option} {path}: the folder {folder} does not exist")
