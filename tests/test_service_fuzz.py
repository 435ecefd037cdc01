"""Fuzz the OpenAPI schema with schemathesis against the app served on 127.0.0.1.

Bounded: a few dozen generated requests per operation (positive and negative data). Every
response must be a non-5xx, documented status with a body matching its schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from melu.serving import Recommender
from service.app import create_app, model_version
from service.deps import Loaded
from service.settings import Settings

pytest_plugins = ["service_fixtures"]  # bundle_path, recommender

MAX_EXAMPLES = 25  # per operation and mode: 6 operations x 2 modes x 25 requests
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def base_url(bundle_path: Path, recommender: Recommender) -> Iterator[str]:
    from service_fixtures import serve_in_thread

    loaded = Loaded(recommender, model_version(recommender), "ml-100k")
    app = create_app(Settings(model=bundle_path, max_body_bytes=16384), loaded)
    with serve_in_thread(app) as url:
        yield url


def operations(base_url: str) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_api_never_fails_and_keeps_its_schema(base_url: str, mode: GenerationMode) -> None:
    """Every operation, schema-valid (positive) and schema-invalid (negative) requests."""
    found = operations(base_url)
    assert {op.label for op in found} >= {"POST /v1/recommendations", "GET /v1/items"}
    for operation in found:
        has_inputs = len(operation.query) + len(operation.body) > 0
        if mode is GenerationMode.NEGATIVE and not has_inputs:
            continue  # nothing to make invalid (GET /health, GET /v1/model)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)

        check()
