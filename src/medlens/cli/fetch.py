"""``medlens fetch medmnist NAME`` / ``medlens fetch weights NAME``: download a known file and verify it.

MedMNIST files are checked against their official MD5; weights files against the SHA-256 (or the
SHA-256 prefix torch.hub reads from the file name) in :data:`medlens.models.pretrained.KNOWN_WEIGHTS`.
"""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["collection"], {"choices": ["medmnist", "weights"], "help": "what to fetch: a MedMNIST dataset, or "
                      "pretrained weights for --init-from"}),
    (["name"], {"help": "dataset name (pneumoniamnist, organmnist3d...) or weights name (resnet18-imagenet, "
                "densenet121-imagenet, efficientnetb0-imagenet, medicalnet-resnet18...)"}),
    (["--size"], {"type": int, "default": 28, "help": "MedMNIST image size: 28, 64, 128 or 224 (3D: 28 or 64)"}),
    (["--root"], {"type": Path, "help": "destination folder (default: MedMNIST in $MEDLENS_DATA_DIR or ~/.medmnist; "
                  "weights in $MEDLENS_DATA_DIR/weights or ~/.medlens/weights)"}),
    (["--url"], {"help": "download from this address instead of the official one (a mirror or file:// URL); the "
                 "checksum still applies"}),
]


def run(args) -> int:
    if args.collection == "weights":
        from medlens.models.pretrained import fetch_weights, known_weights

        path = fetch_weights(args.name, args.root, url=args.url)
        print(f"{path} ({known_weights(args.name).checksum.describe()} verified); use it with "
              f"`medlens train DATA --init-from {args.name} --set model.name={known_weights(args.name).network}`")
        return 0
    from medlens.data.medmnist import fetch_medmnist

    path = fetch_medmnist(args.name, args.size, args.root, url=args.url)
    print(f"{path} (MD5 verified)")
    return 0
