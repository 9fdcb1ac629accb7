"""``medlens demo-data OUT``: write the embedded synthetic demo dataset."""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["out"], {"type": Path, "help": "folder to create (an earlier demo there is replaced, nothing else)"}),
    (["--seed"], {"type": int, "default": 0, "help": "random seed (default 0: the same files every time)"}),
]


def run(args) -> int:
    from medlens.data.synthetic import write_demo_data

    out = write_demo_data(args.out, seed=args.seed)
    print(f"demo data written to {out}/")
    print(f"  classification: {out}/classification/<normal|lesion>/*.png and {out}/classification.csv (patient ids)")
    print(f"  segmentation:   {out}/segmentation/ (Decathlon layout, 3D NIfTI + lesion masks)")
    print(f"  detection:      {out}/detection/*.png and {out}/detection.csv (a box manifest: cells and spots)")
    print(f"  DICOM:          {out}/dicom/series_001/ (one CT series)")
    return 0
