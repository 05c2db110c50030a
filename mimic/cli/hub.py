"""`push-to-hub`: publish a checkpoint on the Hugging Face Hub."""
from .common import Formatter


def add_push_to_hub(sub):
    """`push-to-hub`."""
    p = sub.add_parser("push-to-hub", formatter_class=Formatter, help="publish a checkpoint on the Hugging Face Hub",
                       description="Upload a checkpoint as a Hugging Face Hub model repo: the self-contained mimic-el "
                                   "folder (an authors' .ckpt is converted first) with a generated model card "
                                   "(README.md: base model, tags, the datasets, metrics and training settings of the "
                                   "run when the checkpoint sits in a training run's folder, the NIL rule, how to "
                                   "load it). The repo is created when it does not exist. Log in first "
                                   "(`hf auth login`) or set HF_TOKEN. Others then use it with --checkpoint "
                                   "owner/name, MIMIC_CHECKPOINT=owner/name or Linker.open(kb, checkpoint=...).",
                       epilog="examples:\n"
                              "  mimic push-to-hub runs/WikiMEL/best alice/mimic-wikimel\n"
                              "  mimic push-to-hub runs/WikiMEL/checkpoints/best.ckpt alice/mimic-wikimel --private\n"
                              "  mimic push-to-hub runs/WikiMEL/best alice/mimic-wikimel --stage review/  # no upload")
    p.add_argument("checkpoint", metavar="K", help="a mimic-el checkpoint folder or a Lightning .ckpt file")
    p.add_argument("repo_id", metavar="owner/name", help="the Hub model repo to create or update")
    p.add_argument("--private", action="store_true", help="create the repo private (applies when it is created)")
    p.add_argument("--encoder", metavar="E", default=None,
                   help="for a .ckpt that does not record its backbone: the CLIP it was trained on")
    p.add_argument("--stage", metavar="DIR", default=None,
                   help="write the folder that would be uploaded (with its model card) to DIR and stop, to review it")


def cmd_push_to_hub(args):
    from ..train.hub import push_to_hub, stage
    if args.stage:
        stage(args.checkpoint, args.stage, args.repo_id, args.encoder)
        print(f"staged in {args.stage} (README.md is the model card); nothing was uploaded")
        return
    url = push_to_hub(args.checkpoint, args.repo_id, private=args.private, encoder=args.encoder)
    print(f"published: {url}")
