"""``medlens predict RUN_OR_BUNDLE FILE_OR_FOLDER...``: classes with calibrated probabilities, or masks.

A model of several inputs (issue 16) takes one case as ``--input NAME=FILE`` per view and ``--clinical JSON``
(a JSON object, or a file holding one), or a CSV of cases with the training manifest's columns (``image:NAME``
per view, or ``image``, and the clinical columns; paths relative to the CSV), one case per row.
"""

from __future__ import annotations

from pathlib import Path

ARGUMENTS = [
    (["run"], {"type": Path, "help": "a run folder from `medlens train`, or a bundle from `medlens export`"}),
    (["inputs"], {"type": lambda text: text if text.lower().startswith(("dicomweb:", "dicomwebs:")) else Path(text),
                  "nargs": "*", "help": "image files, DICOM series folders, folders of images, a CSV of cases "
                                        "(image:NAME / image and clinical columns), or a study on a DICOMweb server: "
                                        "dicomweb://HOST[:PORT]/PATH/studies/UID"}),
    (["--input"], {"action": "append", "default": [], "metavar": "NAME=FILE",
                   "help": "one view of one case (repeat for each view), for a model of several views"}),
    (["--clinical"], {"metavar": "JSON_OR_FILE",
                      "help": "the case's clinical values: a JSON object ('{\"Age\": 71}') or a file holding one"}),
    (["--out"], {"type": Path, "help": "classification: write predictions here (.csv or .json; default: print "
                                       "only); segmentation: the folder for the masks (default: predictions/)"}),
    (["--tta"], {"action": "store_true", "default": None, "help": "test-time augmentation (flips / mirroring)"}),
    (["--probabilities"], {"action": "store_true", "help": "segmentation: also write class probability maps"}),
    (["--dicom"], {"metavar": "KINDS", "help": "for DICOM series inputs, also write DICOM results into "
                                               "<out>/<series>_dicom/: a comma list of seg, rtstruct, sr, capture"}),
    (["--push"], {"action": "store_true", "help": "dicomweb:// inputs: store the DICOM results (--dicom, default "
                                                  "seg,sr / sr) back in their study over STOW-RS"}),
    (["--backend"], {"default": "torch", "choices": ["torch", "torchscript", "onnx"],
                     "help": "classification with a bundle: run its TorchScript or ONNX export (default: torch)"}),
]


def run(args) -> int:
    from medlens.deploy import Predictor

    views, clinical = parse_views(args.input), parse_clinical(args.clinical)
    if not args.inputs and not views:
        from medlens.errors import ConfigError

        raise ConfigError("nothing to predict: give image files / folders / a CSV of cases, or --input NAME=FILE")
    predictor = Predictor.from_path(args.run, backend=args.backend)
    from medlens.deploy.pacs.dicomweb import dicomweb_inputs

    with dicomweb_inputs(predictor, args.inputs, kinds=args.dicom, push=args.push, log=print) as pulled:
        inputs = case_sources(predictor, pulled.inputs, views, clinical)
        if pulled.kinds:
            from medlens.deploy.dicom.alongside import DicomAlongside

            base = (args.out if args.out and not args.out.suffix else args.out.parent if args.out
                    else Path("predictions"))
            predictor = DicomAlongside(predictor, pulled.kinds, base, print)
        failed = predictor.task.write_outputs(predictor, inputs, args.out, tta=args.tta,
                                              probabilities=args.probabilities, log=print)
        if args.push:
            failed = pulled.push(predictor.written, failed) or failed
    return 1 if failed else 0


def parse_views(entries: list[str]) -> dict[str, Path]:
    """``--input NAME=FILE`` entries as ``{NAME: FILE}``.

    Raises:
        ConfigError: an entry without ``=``, or a view named twice.
    """
    from medlens.errors import ConfigError

    views: dict[str, Path] = {}
    for entry in entries:
        name, sep, file = entry.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise ConfigError(f"--input {entry!r}: expected NAME=FILE, e.g. --input axial=a.png")
        if name.strip() in views:
            raise ConfigError(f"--input: view {name.strip()!r} given twice; give each view once")
        views[name.strip()] = Path(file.strip())
    return views


def parse_clinical(value: str | None) -> dict | None:
    """``--clinical``: a JSON object, or the path of a file holding one.

    Raises:
        ConfigError: neither a JSON object nor a readable file holding one.
    """
    from medlens.data.clinical import record_from_json
    from medlens.errors import ConfigError

    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"--clinical {value!r}: neither a JSON object nor a file; give e.g. "
                              "--clinical '{\"Age\": 71, \"M/F\": \"F\"}' or --clinical values.json")
        text = path.read_text(encoding="utf-8")
    try:
        return record_from_json(text)
    except ValueError as exc:
        raise ConfigError(f"--clinical: {exc}") from None


def case_sources(predictor, paths: list[Path], views: dict[str, Path], clinical: dict | None) -> list:
    """What ``write_outputs`` predicts: the ``--input`` views as one case; with ``--clinical``, each image path
    as a case with those values (a CSV of cases carries its own); with the plan's ``dataset.series_rules``, a folder
    of series folders is one study, its series picked by those rules."""
    paths = [study_source(predictor, p, clinical) or p for p in paths]
    if not views and clinical is None:
        return paths
    from medlens.errors import ConfigError
    from medlens.tasks.classification.predict import CaseSource

    if not predictor.fused:
        raise ConfigError("--input / --clinical: this model takes one image per case and no clinical values; give "
                          "the images as arguments (medlens predict MODEL FILE...)")

    cases = []
    if views:
        name = " ".join(f"{n}={p}" for n, p in views.items())
        cases.append(CaseSource({n: str(p) for n, p in views.items()}, clinical or {}, name))
    for path in paths:
        plain = not isinstance(path, Path) or path.suffix.lower() == ".csv"
        cases.append(path if plain else CaseSource(str(path), clinical or {}, str(path)))
    return cases


def study_source(predictor, path: Path, clinical: dict | None):
    """A DICOM study folder as one case of the views the model's series rules pick; ``None`` for anything else
    (a file, a series folder, or a model trained without series rules)."""
    rules = predictor.config.dataset.series_rules
    from medlens.data.inputs import is_series_folder

    if not rules or not isinstance(path, Path) or not path.is_dir() or is_series_folder(path):
        return None
    from medlens.tasks.classification.predict import CaseSource

    return CaseSource(None, clinical or {}, str(path), study=str(path))
