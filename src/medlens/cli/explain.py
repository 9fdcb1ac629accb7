"""``medlens explain RUN FILE_OR_FOLDER...``: Grad-CAM heat maps of a trained run, with a sanity check."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a run folder from `medlens train` (classification or segmentation)"}),
    (["inputs"], {"type": Path, "nargs": "+", "help": "image files, DICOM series folders, or folders of images"}),
    (["--out"], {"type": Path, "default": Path("explanations"),
                 "help": "folder for the overlays (PNG), 3D heat maps (NIfTI) and explanations.json "
                         "(default: explanations/)"}),
    (["--method"], {"default": "gradcam", "choices": ["gradcam", "gradcam++"], "help": "default: gradcam"}),
    (["--class"], {"dest": "class_name", "metavar": "NAME",
                   "help": "explain this class (default: the predicted class; segmentation: the largest "
                           "predicted foreground class)"}),
    (["--no-sanity"], {"action": "store_true", "help": "skip the model-parameter randomisation test"}),
]


def run(args) -> int:
    from medlens.engine.explain import explain_paths

    doc = explain_paths(args.run, args.inputs, args.out, method=args.method, class_name=args.class_name,
                        sanity=not args.no_sanity)
    failed = sum("error" in row for row in doc["inputs"])
    if failed:
        print(f"{failed} of {len(doc['inputs'])} input(s) could not be explained")
    return 1 if failed else 0
