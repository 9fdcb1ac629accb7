"""The corpus itself (large, reproducible, every class and format, small files) and the judge's verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from adversarial.corpus import CLASSES, EXTENSIONS, fast_subset, manifest
from adversarial.forked import Ran
from adversarial.judge import fault_site, table
from adversarial.samples import MARKER
from adversarial.test_adversarial_cli import judge_cli


def test_the_corpus_is_large_and_covers_every_class_and_format(corpus):
    assert len(corpus) >= 300
    assert {c.kind for c in corpus} == set(CLASSES)
    assert {c.format for c in corpus} >= set(EXTENSIONS) - {"other"}
    assert len({c.name for c in corpus}) == len(corpus)
    assert max(len(c.data) for c in corpus) < 4 << 20  # a bomb is small compressed
    for target in ("service", "info", "predict"):
        assert sum(c.applies_to(target) for c in corpus) >= 150
    for kind in CLASSES:
        assert any(c.kind == kind for c in fast_subset(corpus, 1))


def test_the_corpus_is_the_same_bytes_each_time(corpus, tmp_path):
    script = Path(__file__).with_name("corpus.py")
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True, timeout=120)
    written = json.loads((tmp_path / "manifest.json").read_text())["cases"]
    assert written == json.loads(json.dumps(manifest(corpus)))
    for case in corpus[::17]:
        assert (tmp_path / "files" / case.file_name).read_bytes() == case.data, case.name


def test_the_judge_names_a_traceback_a_marker_a_wrong_status_and_the_module_at_fault(corpus, tmp_path):
    case = next(c for c in corpus if c.name == "lying_nifti_vox_offset_nan")
    traceback = ('Traceback (most recent call last):\n  File "/x/src/medlens/cli/__init__.py", line 9, in main\n'
                 '  File "/x/src/medlens/io/itk.py", line 70, in check_nifti\nValueError: cannot convert float NaN\n')
    crashed = judge_cli(case, "info", Ran(1, "", traceback, 0.2, 10.0, False), tmp_path)
    assert [(p.what.split(":")[0], p.where) for p in crashed] == [("traceback", "medlens/io/itk.py:check_nifti")]
    leaked = judge_cli(case, "info", Ran(2, "", f"medlens info: error: bad header {MARKER}\n", 0.2, 10.0, False),
                       tmp_path)
    assert [p.what for p in leaked] == [f"marker {MARKER} in the output"]
    accepted = judge_cli(case, "predict", Ran(0, "x: lesion\n", "", 6.5, 1500.0, False), tmp_path)
    assert [p.what.split(" ")[0] for p in accepted] == ["took", "peak", "exit"]
    clean = judge_cli(case, "info", Ran(2, "", "medlens info: error: vox_offset is NaN; export it again\n", 0.2, 1.0,
                                        False), tmp_path)
    assert clean == []
    assert "medlens/io/itk.py:check_nifti" in table(crashed, "t")


def test_a_stack_dump_names_its_innermost_medlens_frame():
    dump = ('Current thread 0x1 (most recent call first):\n  File "/v/monai/inferers/utils.py", line 5 in sliding\n'
            '  File "/w/src/medlens/models/sliding.py", line 40 in sliding_probs\n'
            '  File "/w/src/medlens/cli/predict.py", line 22 in run\n')
    assert fault_site(dump) == "medlens/models/sliding.py:sliding_probs"
    assert fault_site("nothing here") == "?"


def test_the_upload_stager_reads_a_deflate_bombs_header_without_inflating_it():
    """The server process stages every upload: pydicom's header read would inflate a deflated DICOM's whole
    data set (here 1 GiB from 1 MB) before the worker's bounded reader ever sees it."""
    import tracemalloc

    from adversarial.classes import _deflated_dicom
    from medlens.deploy.uploads import staged_upload

    bomb = _deflated_dicom(1024)
    tracemalloc.start()
    try:
        with staged_upload(bomb) as staged:
            assert (staged.kind, staged.voxels) == ("dicom", 64)  # the header's 8 x 8
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"staging allocated {peak / 2**20:.0f} MiB"
