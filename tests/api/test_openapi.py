"""The backend API against its own OpenAPI document, with schemathesis: every
operation is called with generated requests on a real server, and each answer
must match the document (status codes, content types, JSON schemas) and never
be a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings


@pytest.fixture
def live(make_server):  # type: ignore[no-untyped-def]
    return make_server("--workers", "2", "--fsync", "normal")


@pytest.fixture
def api_schema(live):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{live.http}/api/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_matches_its_document(case, live) -> None:  # type: ignore[no-untyped-def]
    key = (live.data_dir / "api-key").read_text().strip()
    case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, timeout=15)
