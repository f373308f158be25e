"""Shared fixtures: everything offline, tiny random-init backbones unless a test needs real weights."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

from perceptlm import zoo


@pytest.fixture(scope="session")
def tiny_encoder():
    return zoo.load_encoder("test-tiny-vit")


@pytest.fixture(scope="session")
def tiny_llm():
    return zoo.load_llm("test-tiny-llama")


@pytest.fixture(scope="session")
def smollm2():
    return zoo.load_llm("smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
