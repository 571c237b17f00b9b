"""Fixtures of the serving tests: one tiny checkpoint per module."""

from pathlib import Path

import pytest

from tests.serving.helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")
