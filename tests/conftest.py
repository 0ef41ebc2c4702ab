"""Shared fixtures: the offline models are loaded once per session."""

from __future__ import annotations

import pytest
import torch

import ierf

torch.set_num_threads(2)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the full-size end-to-end runs marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="full-size run: use --slow (a smaller version runs by default)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lite0() -> ierf.Model:
    return ierf.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def resnet50_random() -> ierf.Model:
    torch.manual_seed(0)
    return ierf.load_model("resnet50", weights=None)


@pytest.fixture(scope="session")
def toy() -> ierf.Model:
    return ierf.load_model("toy-resnet")


@pytest.fixture(scope="session")
def toy_vit() -> ierf.Model:
    return ierf.load_model("toy-vit")
