"""The README's Python example runs as written, on a real test film, with the bundled model."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_python_blocks_are_found() -> None:
    assert python_blocks("a\n```python\nx = 1\n```\nb\n```\nnot python\n```\n") == ["x = 1\n"]


@pytest.mark.needs_data
def test_readme_python_example_runs(dataset_root: Path, tmp_path: Path) -> None:
    blocks = python_blocks(README.read_text())
    assert blocks, "README has no ```python example"
    film = dataset_root / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
    shutil.copy(film, tmp_path / "scan.jpeg")
    code = blocks[0] + "\nprint(r.label, r.label_index)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    label, index = done.stdout.split()[-2:]
    assert (label, int(index)) in {("normal", 0), ("bacterial", 1), ("viral", 2)}
    # the example writes the heatmap overlay: an RGB PNG of the film's size
    png = Image.open(io.BytesIO((tmp_path / "overlay.png").read_bytes()))
    assert png.format == "PNG" and png.mode == "RGB" and png.size == Image.open(film).size
    assert np.asarray(png).std() > 0
