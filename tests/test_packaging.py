"""The distributions PyPI would get: ``python -m build`` makes an sdist and a wheel that pass
``twine check --strict``; the wheel carries ``py.typed`` and the licence, with a PEP 639 licence
expression; the sdist leaves out the study's results (``benchmarks/results/``)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytest.importorskip("build")
pytest.importorskip("twine")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.slow
def test_twine_check_passes(dist) -> None:
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                             str(dist["wheel"]), str(dist["sdist"])],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


@pytest.mark.slow
def test_wheel_has_types_licence_and_metadata(dist) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence, sorted(names)
        assert "Apache License" in wheel.read(licence[0]).decode()
    assert "amosopt/py.typed" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE"
    python = metadata["Requires-Python"].removeprefix(">=")
    classifiers = metadata.get_all("Classifier")
    assert f"Programming Language :: Python :: {python}" in classifiers
    assert any(url.startswith("Source, https://") for url in metadata.get_all("Project-URL"))


@pytest.mark.slow
def test_sdist_has_no_benchmark_results(dist) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        names = [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]
    assert not [n for n in names if n.startswith("benchmarks/results")]
    assert {"LICENSE", "README.md", "CHANGELOG.md", "CITATION.cff", "amosopt/py.typed",
            "benchmarks/study.py"} <= set(names)
    # the results directory alone is several MB; the code, tests and docs are well under one
    assert dist["sdist"].stat().st_size < 1_000_000
