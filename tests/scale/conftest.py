"""A second deployed instance, on PostgreSQL with two `modoboa` workers (tests/scale)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..deployment import Stack, deployed_stack


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from deployed_stack(
        tmp_path_factory, postgres=True, modoboa_workers=2, web_ui=False
    )
