"""The client: one httpx session, the service's routes as methods, results as plain dicts."""
from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import httpx

from .errors import JobFailed, ProblemError

PathLike = Union[str, "os.PathLike[str]"]

# The file names `gapmeter score` reads in a folder (the service rejects any other name).
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
# Upload requests stay well under the service's default limits; a failed request retries cheaper.
FILES_PER_REQUEST = 256
BYTES_PER_REQUEST = 512 << 20
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "dead"})

# The request fields this client sends, per request schema of openapi/openapi.json; the tests fail
# when the spec grows a field that is not listed here (so the client never silently lags it).
REQUEST_FIELDS: Dict[str, frozenset] = {
    "CreateDataset": frozenset({"name", "uri"}),
    "ScoreRequest": frozenset(
        {"source", "target", "extractor", "metrics", "parameters", "top_k", "bootstrap",
         "infinity_points", "precision"}
    ),
    "MatrixRequest": frozenset(
        {"datasets", "extractor", "metrics", "parameters", "bootstrap", "precision"}
    ),
    "AnalysisRequest": frozenset({"source", "target", "extractor", "analysis", "precision"}),
}


class Client:
    """A team's view of a gapmeter service.

    `url` is the service's base URL and `key` a team API key (`gm_...`); both default to the
    `GAPMETER_URL` and `GAPMETER_KEY` environment variables, as the Rust CLI's `client` does.
    Datasets are named by id or by unique name everywhere.
    """

    def __init__(self, url: Optional[str] = None, key: Optional[str] = None,
                 timeout: float = 120.0, transport: Optional[httpx.BaseTransport] = None):
        url = url or os.environ.get("GAPMETER_URL")
        key = key or os.environ.get("GAPMETER_KEY")
        if not url or not key:
            raise ValueError("pass url and key, or set GAPMETER_URL and GAPMETER_KEY")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {key}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- HTTP -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = self._http.request(method, path, **kw)
        if resp.is_success:
            return resp
        try:
            problem = resp.json()
        except ValueError:
            problem = {"type": "about:blank", "title": resp.reason_phrase, "detail": resp.text}
        if not isinstance(problem, dict):
            problem = {"type": "about:blank", "detail": str(problem)}
        retry = resp.headers.get("retry-after")
        raise ProblemError(problem, resp.status_code,
                           int(retry) if retry and retry.isdigit() else None)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    # --- datasets -------------------------------------------------------------------------

    def datasets(self) -> List[Dict[str, Any]]:
        """The team's datasets, newest first (every page)."""
        out: List[Dict[str, Any]] = []
        cursor: Optional[str] = None
        while True:
            params: Dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = self._json("GET", "/v1/datasets", params=params)
            out.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def dataset_id(self, dataset: str) -> str:
        """The id of a dataset given by id or by unique name."""
        try:
            uuid.UUID(dataset)
            return dataset
        except ValueError:
            pass
        ids = [d["id"] for d in self.datasets() if d["name"] == dataset]
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise ProblemError({"type": "/problems/not-found", "status": 404,
                                "detail": f"no dataset named {dataset!r}"})
        raise ProblemError({"type": "/problems/validation", "status": 422,
                            "detail": f"{len(ids)} datasets are named {dataset!r}: use an id"})

    def dataset(self, dataset: str) -> Dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{self.dataset_id(dataset)}")

    def create_dataset(self, name: str, uri: Optional[str] = None) -> Dict[str, Any]:
        """An empty dataset, or (with `uri`) one an ingest job fills; see `wait` for the job."""
        body: Dict[str, Any] = {"name": name}
        if uri is not None:
            body["uri"] = uri
        return self._json("POST", "/v1/datasets", json=body)

    def delete_dataset(self, dataset: str) -> None:
        self._request("DELETE", f"/v1/datasets/{self.dataset_id(dataset)}")

    def upload(self, folder: PathLike, name: Optional[str] = None,
               dataset: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
        """Uploads every image under `folder` (recursively, hidden files skipped) as a new
        dataset `name` (default: the folder's name), or into `dataset`. Each file becomes the
        member at its path relative to `folder`, so the service scores exactly what
        `gapmeter score folder` scores. Returns the dataset, with `files`: every file's outcome
        (accepted, duplicate, unchanged, rejected + reason)."""
        root = Path(folder)
        files = list(_images(root))
        if not files:
            raise ValueError(f"no images under {root}")
        if dataset is None:
            target = self.create_dataset(name or root.resolve().name)["id"]
        else:
            target = self.dataset_id(dataset)
        outcomes: List[Dict[str, Any]] = []
        bar = _Progress(len(files), "upload", progress)
        try:
            for batch in _batches(files):
                handles = [(rel, open(path, "rb")) for rel, path, _ in batch]
                try:
                    parts = [("file", (rel, fh, "application/octet-stream")) for rel, fh in handles]
                    result = self._json("POST", f"/v1/datasets/{target}/images", files=parts)
                finally:
                    for _, fh in handles:
                        fh.close()
                outcomes.extend(result["files"])
                bar.update(len(batch))
        finally:
            bar.close()
        out = self._json("GET", f"/v1/datasets/{target}")
        out["files"] = outcomes
        return out

    def statistics(self, dataset: str, path: PathLike, extractor: Optional[str] = None) -> Path:
        """Downloads a dataset's FID statistics as pytorch-fid's `.npz` (`mu`, `sigma`) to
        `path`. They exist once a job with FID has read the whole dataset with `extractor`."""
        params = {"extractor": extractor} if extractor else {}
        resp = self._request("GET", f"/v1/datasets/{self.dataset_id(dataset)}/statistics",
                             params=params)
        out = Path(path)
        out.write_bytes(resp.content)
        return out

    def register_statistics(self, name: str, npz: PathLike, extractor: str) -> Dict[str, Any]:
        """Registers an `.npz` (`mu`, `sigma`: e.g. a benchmark's published reference
        statistics) as a new statistics dataset: a FID source or target for `extractor`."""
        body = Path(npz).read_bytes()
        ds = self.create_dataset(name)
        try:
            return self._json("PUT", f"/v1/datasets/{ds['id']}/statistics",
                              params={"extractor": extractor}, content=body,
                              headers={"Content-Type": "application/octet-stream"})
        except ProblemError:
            self._request("DELETE", f"/v1/datasets/{ds['id']}")
            raise

    # --- jobs -----------------------------------------------------------------------------

    def score(self, source: str, target: str, *, extractor: Optional[str] = None,
              metrics: Optional[Sequence[str]] = None,
              parameters: Optional[Dict[str, Any]] = None, top_k: Optional[int] = None,
              bootstrap: Optional[int] = None, infinity_points: Optional[int] = None,
              precision: Optional[str] = None, idempotency_key: Optional[str] = None,
              wait: bool = True, progress: bool = True,
              timeout: Optional[float] = None) -> Dict[str, Any]:
        """Scores `source` against `target` (datasets by id or name) as a job. With `wait`
        (default), waits for it and returns its result: the JSON `gapmeter score --format json`
        prints. Otherwise returns the job. A failed job raises `JobFailed`."""
        body: Dict[str, Any] = {"source": self.dataset_id(source),
                                "target": self.dataset_id(target)}
        _options(body, extractor=extractor, metrics=metrics, parameters=parameters, top_k=top_k,
                 bootstrap=bootstrap, infinity_points=infinity_points, precision=precision)
        job = self._submit("/v1/jobs", body, idempotency_key)
        return self.wait(job["id"], progress=progress, timeout=timeout)["result"] if wait else job

    def matrix(self, datasets: Sequence[str], *, extractor: Optional[str] = None,
               metrics: Optional[Sequence[str]] = None,
               parameters: Optional[Dict[str, Any]] = None, bootstrap: Optional[int] = None,
               precision: Optional[str] = None, idempotency_key: Optional[str] = None,
               wait: bool = True, progress: bool = True,
               timeout: Optional[float] = None) -> Dict[str, Any]:
        """The pairwise gap table of two or more datasets as a job; see `matrix_frame` for a
        DataFrame per metric."""
        body: Dict[str, Any] = {"datasets": [self.dataset_id(d) for d in datasets]}
        _options(body, extractor=extractor, metrics=metrics, parameters=parameters,
                 bootstrap=bootstrap, precision=precision)
        job = self._submit("/v1/matrix", body, idempotency_key)
        return self.wait(job["id"], progress=progress, timeout=timeout)["result"] if wait else job

    def analyse(self, analysis: str, source: str, target: str, *,
                extractor: Optional[str] = None, precision: Optional[str] = None,
                idempotency_key: Optional[str] = None, wait: bool = True,
                progress: bool = True, timeout: Optional[float] = None,
                **options: Any) -> Dict[str, Any]:
        """Runs an analysis as a job: `selective_style`, `pad`, `select` (source = the pool;
        `k=` required), `transforms`, `sufficiency` or `explain` (an extractor with a text
        encoder). Keyword options are the analysis' own (docs/reduce.md), e.g.
        `analyse("select", "pool", "target", k=50)`. Returns the JSON report the CLI prints
        (`gapmeter reduce select ... --format json`)."""
        body: Dict[str, Any] = {"source": self.dataset_id(source),
                                "target": self.dataset_id(target),
                                "analysis": {analysis: options}}
        _options(body, extractor=extractor, precision=precision)
        job = self._submit("/v1/analyses", body, idempotency_key)
        return self.wait(job["id"], progress=progress, timeout=timeout)["result"] if wait else job

    def _submit(self, path: str, body: Dict[str, Any], key: Optional[str]) -> Dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        return self._json("POST", path, json=body, headers=headers)

    def job(self, job_id: str) -> Dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, status: Optional[str] = None, limit: int = 50) -> List[Dict[str, Any]]:
        params: Dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._json("GET", "/v1/jobs", params=params)["items"]

    def cancel(self, job_id: str) -> Dict[str, Any]:
        return self._json("DELETE", f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, progress: bool = True,
             timeout: Optional[float] = None) -> Dict[str, Any]:
        """Polls the job until it ends, drawing its progress; returns the succeeded job or
        raises `JobFailed` (with the job's problem details) and `TimeoutError`."""
        start = time.monotonic()
        delay = 0.1
        bar = _Progress(None, "job", progress)
        try:
            while True:
                job = self.job(job_id)
                p = job.get("progress") or {}
                bar.show(p.get("phase", ""), p.get("done", 0), p.get("total", 0))
                if job["status"] in TERMINAL:
                    if job["status"] != "succeeded":
                        raise JobFailed(job)
                    return job
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)
        finally:
            bar.close()

    def extractors(self) -> List[Dict[str, Any]]:
        return self._json("GET", "/v1/extractors")

    def quotas(self) -> Dict[str, Any]:
        """The team's limits in force (`limits`, 0 = unlimited), its own (`team`) and `usage`."""
        return self._json("GET", "/v1/quotas")


def matrix_frame(result: Dict[str, Any], metric: str = "fid",
                 labels: Optional[Sequence[str]] = None) -> Any:
    """One metric of a matrix result as a pandas DataFrame, rows and columns labelled by
    `labels` (default: the datasets' ids, in the request's order). Without pandas, the nested
    lists as they are."""
    values = result["metrics"][metric]
    if labels is None:
        labels = [s["path"].rsplit("/", 1)[-1] for s in result["sets"]]
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for a {len(values)}-set matrix")
    try:
        import pandas as pd
    except ImportError:
        return values
    return pd.DataFrame(values, index=list(labels), columns=list(labels))


def per_image_frame(result: Dict[str, Any]) -> Any:
    """The per-image ranking of a score result (`top_k`) as a DataFrame (or the list without
    pandas), most out-of-domain first."""
    rows = (result.get("per_image") or {}).get("images", [])
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)


def _options(body: Dict[str, Any], **kw: Any) -> None:
    for k, v in kw.items():
        if v is None:
            continue
        if k == "metrics":
            v = list(v)
        elif k == "bootstrap":
            v = {"resamples": int(v)}
        body[k] = v


def _images(root: Path) -> Iterator[Tuple[str, Path, int]]:
    """(path relative to root, path, size) of every non-hidden image file, sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith(".") or f.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(dirpath) / f
            if path.is_file():
                found.append((path.relative_to(root).as_posix(), path, path.stat().st_size))
    return iter(sorted(found))


def _batches(files: List[Tuple[str, Path, int]]) -> Iterator[List[Tuple[str, Path, int]]]:
    batch: List[Tuple[str, Path, int]] = []
    size = 0
    for f in files:
        if batch and (len(batch) >= FILES_PER_REQUEST or size + f[2] > BYTES_PER_REQUEST):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += f[2]
    if batch:
        yield batch


class _Progress:
    """tqdm when it is installed, else one line on stderr; nothing when disabled."""

    def __init__(self, total: Optional[int], what: str, enabled: bool):
        self.enabled = enabled
        self.what = what
        self.bar = None
        self.phase = ""
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=what, leave=False)
            except ImportError:
                self.bar = None
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            print(f"\r{self.what}: {self.done}", end="", file=sys.stderr, flush=True)

    def show(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            if phase != self.phase:
                self.bar.reset(total=total or None)
                self.bar.set_description(phase)
                self.phase = phase
            self.bar.n = done
            self.bar.refresh()
        else:
            print(f"\r{phase}: {done}/{total}   ", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)
