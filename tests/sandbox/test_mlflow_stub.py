"""The MLflow stand-in, run as its command line starts it (a real uvicorn subprocess)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
SEARCH = "/api/2.0/mlflow/experiments/search"


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.mlflow_stub", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if not wait_for_port("127.0.0.1", port, 20, alive=lambda: proc.poll() is None):
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"mlflow stub did not start: {err.decode(errors='replace')}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def client(stub_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stub_url, timeout=5, trust_env=False) as c:
        yield c


def test_health_answers_ok_as_text(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.text == "OK"
    assert response.headers["content-type"].startswith("text/plain")


def test_version_is_text(client: httpx.Client) -> None:
    response = client.get("/version")
    assert response.status_code == 200
    assert response.text and response.text[0].isdigit()


def test_search_returns_the_default_experiment(client: httpx.Client) -> None:
    response = client.post(SEARCH, json={"max_results": 1, "filter": "name = 'Default'"})
    assert response.status_code == 200
    body = response.json()
    assert "next_page_token" not in body
    [experiment] = body["experiments"]
    assert experiment["experiment_id"] == "0"
    assert experiment["name"] == "Default"
    assert experiment["lifecycle_stage"] == "active"
    assert experiment["artifact_location"]
    assert isinstance(experiment["creation_time"], int)
    assert isinstance(experiment["last_update_time"], int)
    # Milliseconds since the epoch, not seconds.
    assert experiment["creation_time"] > 10**12


def test_search_accepts_an_empty_body_and_string_max_results(client: httpx.Client) -> None:
    assert client.post(SEARCH).json()["experiments"][0]["name"] == "Default"
    assert len(client.post(SEARCH, json={"max_results": "5"}).json()["experiments"]) == 1


def test_search_honours_view_type(client: httpx.Client) -> None:
    assert client.post(SEARCH, json={"view_type": "DELETED_ONLY"}).json() == {}
    assert len(client.post(SEARCH, json={"view_type": "ALL"}).json()["experiments"]) == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"max_results": 0}, "INVALID_PARAMETER_VALUE"),
        ({"max_results": 50001}, "INVALID_PARAMETER_VALUE"),
        ({"max_results": "many"}, "INVALID_PARAMETER_VALUE"),
        ({"view_type": "SOME"}, "INVALID_PARAMETER_VALUE"),
    ],
)
def test_search_rejects_bad_parameters_like_mlflow(
    client: httpx.Client, body: dict[str, object], code: str
) -> None:
    response = client.post(SEARCH, json=body)
    assert response.status_code == 400
    assert response.json()["error_code"] == code
    assert response.json()["message"]


def test_search_rejects_a_malformed_body(client: httpx.Client) -> None:
    response = client.post(
        SEARCH, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error_code"] == "MALFORMED_REQUEST"


def test_removed_list_endpoint_is_not_found_with_mlflow_error_shape(client: httpx.Client) -> None:
    response = client.get("/api/2.0/mlflow/experiments/list")
    assert response.status_code == 404
    body = response.json()
    assert body["error_code"] == "ENDPOINT_NOT_FOUND"
    assert "/api/2.0/mlflow/experiments/list" in body["message"]


def test_unknown_api_routes_are_not_found(client: httpx.Client) -> None:
    response = client.post("/api/2.0/mlflow/runs/no-such-thing", json={})
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_ajax_api_prefix_serves_search_too(client: httpx.Client) -> None:
    response = client.post("/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 1})
    assert response.status_code == 200
    assert response.json()["experiments"][0]["name"] == "Default"
