"""The client against a live service. The Rust suite (tests/api/client.rs) starts the service,
makes a team key and runs these with GAPMETER_URL and GAPMETER_KEY set."""
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gapmeter_client import Client, JobFailed, ProblemError, matrix_frame, per_image_frame
from gapmeter_client.client import REQUEST_FIELDS

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def gm():
    with Client() as client:
        yield client


@pytest.fixture(scope="module")
def datasets(gm):
    """examples/A and examples/B uploaded once for the module, under unique names."""
    suffix = uuid.uuid4().hex[:8]
    a = gm.upload(EXAMPLES / "A", name=f"A-{suffix}", progress=False)
    b = gm.upload(EXAMPLES / "B", name=f"B-{suffix}", progress=False)
    return a, b


def test_upload_reports_every_file(datasets):
    a, _ = datasets
    assert a["image_count"] == len([p for p in (EXAMPLES / "A").rglob("*") if p.is_file()])
    assert {f["outcome"] for f in a["files"]} == {"accepted"}
    assert a["status"] == "ready"


def test_score_by_name_returns_the_cli_json(gm, datasets):
    a, b = datasets
    result = gm.score(a["name"], b["name"], extractor="tiny-cnn", metrics=["fid", "kid"], top_k=3,
                      progress=True)
    assert result["metrics"]["fid"]["value"] > 0
    assert set(result["metrics"]) == {"fid", "kid"}
    assert result["source"]["count"] == a["image_count"]
    frame = per_image_frame(result)
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 3 and "path" in frame.columns
    # The same request again is answered from the result cache, with the same numbers.
    again = gm.score(a["id"], b["id"], extractor="tiny-cnn", metrics=["fid", "kid"], top_k=3,
                     progress=False)
    assert again["metrics"] == result["metrics"]


def test_matrix_to_a_dataframe(gm, datasets):
    a, b = datasets
    result = gm.matrix([a["name"], b["name"]], extractor="tiny-cnn", metrics=["fid"],
                       progress=False)
    frame = matrix_frame(result, "fid", labels=["A", "B"])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["A", "B"] and list(frame.columns) == ["A", "B"]
    assert frame.loc["A", "A"] == 0 and frame.loc["B", "B"] == 0
    assert frame.loc["A", "B"] == frame.loc["B", "A"] > 0


def test_job_without_waiting_then_wait(gm, datasets):
    a, b = datasets
    job = gm.score(a["id"], b["id"], extractor="tiny-cnn", metrics=["fid"],
                   parameters={"seed": 7}, wait=False)
    assert job["status"] in {"queued", "running", "succeeded"}
    done = gm.wait(job["id"], progress=False, timeout=300)
    assert done["status"] == "succeeded"
    assert done["result"]["metrics"]["fid"]["value"] > 0


def test_statistics_download_as_npz(gm, datasets, tmp_path):
    a, b = datasets
    gm.score(a["id"], b["id"], extractor="tiny-cnn", metrics=["fid"], progress=False)
    path = gm.statistics(a["name"], tmp_path / "a.npz", extractor="tiny-cnn")
    with np.load(path) as f:
        assert f["mu"].shape == (128,) and f["mu"].dtype == np.float64
        assert f["sigma"].shape == (128, 128)
    ref = gm.register_statistics(f"ref-{uuid.uuid4().hex[:8]}", path, "tiny-cnn")
    assert ref["kind"] == "statistics" and ref["statistics"] == ["tiny-cnn"]
    # FID against the registered file is FID against the images it summarises (24 images in 128
    # dimensions: from features and from the singular covariance, FID is computed two ways).
    against_file = gm.score(b["id"], ref["id"], extractor="tiny-cnn", metrics=["fid"],
                            progress=False)
    against_images = gm.score(b["id"], a["id"], extractor="tiny-cnn", metrics=["fid"],
                              progress=False)
    assert against_file["metrics"]["fid"]["value"] == pytest.approx(
        against_images["metrics"]["fid"]["value"], rel=1e-6)


def test_errors_are_problems_with_their_type(gm, datasets):
    a, _ = datasets
    with pytest.raises(ProblemError) as e:
        gm.dataset(str(uuid.uuid4()))
    assert e.value.status == 404 and e.value.type == "/problems/not-found"
    with pytest.raises(ProblemError) as e:
        gm.score(a["id"], a["id"], metrics=["no-such-metric"], progress=False)
    assert e.value.status == 422 and e.value.type == "/problems/validation"
    assert e.value.detail
    with pytest.raises(ProblemError) as e:
        gm.score(a["id"], "no dataset has this name", progress=False)
    assert e.value.status == 404
    # A statistics dataset answers FID only: KID is refused before any job exists.
    with pytest.raises(ProblemError) as e:
        gm.register_statistics("broken", EXAMPLES / "A" / os.listdir(EXAMPLES / "A")[0],
                               "tiny-cnn")
    assert e.value.status == 422
    assert all(d["name"] != "broken" for d in gm.datasets())
    assert issubclass(JobFailed, ProblemError)


def test_an_analysis_returns_the_cli_report(gm, datasets):
    a, b = datasets
    report = gm.analyse("select", a["name"], b["name"], extractor="tiny-cnn", k=8,
                        random_draws=5, progress=False)
    assert report["analysis"] == "select"
    assert len(report["result"]["chosen"]) == 8
    assert report["parameters"]["k"] == 8 and report["parameters"]["random_draws"] == 5
    assert "chose 8 of" in report["summary"]
    with pytest.raises(ProblemError) as e:
        gm.analyse("select", a["name"], b["name"], extractor="tiny-cnn", k=1, progress=False)
    assert e.value.status in (400, 422) and "k must be at least 2" in str(e.value)


def test_a_bad_key_is_a_401_problem():
    with Client(os.environ["GAPMETER_URL"], "gm_not_a_key") as bad:
        with pytest.raises(ProblemError) as e:
            bad.datasets()
    assert e.value.status == 401


def test_the_client_sends_every_request_field_of_the_spec():
    """Fails when openapi/openapi.json grows a request field the client does not know."""
    spec = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    schemas = spec["components"]["schemas"]
    for name, fields in REQUEST_FIELDS.items():
        assert set(schemas[name]["properties"]) == set(fields), name
    used = ["/v1/datasets", "/v1/datasets/{id}", "/v1/datasets/{id}/images",
            "/v1/datasets/{id}/statistics", "/v1/jobs", "/v1/jobs/{id}", "/v1/matrix",
            "/v1/analyses", "/v1/extractors"]
    for path in used:
        assert path in spec["paths"], path


def test_quotas_report_limits_and_usage_and_a_refusal_names_its_limit(gm, datasets):
    # tests/api/client.rs gives this team its own limit of 50 datasets; the rest are defaults.
    q = gm.quotas()
    assert q["limits"]["datasets"] == 50 and q["team"]["datasets"] == 50
    assert q["team"]["images"] is None
    assert q["usage"]["images"] >= 48 and q["usage"]["bytes"] > 0
    made = []
    try:
        for i in range(50 - q["usage"]["datasets"]):
            made.append(gm.create_dataset(f"filler-{i}-{uuid.uuid4().hex[:6]}")["id"])
        assert gm.quotas()["usage"]["datasets"] == 50
        with pytest.raises(ProblemError) as e:
            gm.create_dataset("one too many")
        assert e.value.status == 403 and e.value.type == "/problems/quota-exceeded"
        assert e.value.limit == "datasets" and e.value.retry_after is None
    finally:
        for d in made:
            gm.delete_dataset(d)
    assert gm.quotas()["usage"]["datasets"] == q["usage"]["datasets"]
