"""``medlens fetch medmnist NAME``: download an official MedMNIST file and verify its MD5."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["collection"], {"choices": ["medmnist"], "help": "what to fetch (medmnist)"}),
    (["name"], {"help": "dataset name, e.g. pneumoniamnist or organmnist3d"}),
    (["--size"], {"type": int, "default": 28, "help": "image size: 28, 64, 128 or 224 (3D: 28 or 64)"}),
    (["--root"], {"type": Path, "help": "destination folder (default: $MEDLENS_DATA_DIR or ~/.medmnist)"}),
    (["--url"], {"help": "download from this address instead of the official one (a mirror or file:// URL)"}),
]


def run(args) -> int:
    from medlens.data.medmnist import fetch_medmnist

    path = fetch_medmnist(args.name, args.size, args.root, url=args.url)
    print(f"{path} (MD5 verified)")
    return 0
