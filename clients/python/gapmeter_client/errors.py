"""Errors: every failure the service reports is a ProblemError carrying its problem details."""
from __future__ import annotations

from typing import Any, Mapping, Optional


class GapmeterError(Exception):
    """Base of the client's errors."""


class ProblemError(GapmeterError):
    """The service answered with `application/problem+json` (RFC 9457), or a job ended with one.

    `type` is the stable identifier (`/problems/not-found`, `/problems/validation`, ...),
    `status` the HTTP status, `detail` the human-readable reason. Over a quota or the rate
    limit (`/problems/quota-exceeded`, `/problems/rate-limited`), `limit` names the limit and
    `retry_after` is the server's `Retry-After` in seconds when waiting helps.
    """

    def __init__(self, problem: Mapping[str, Any], status: Optional[int] = None,
                 retry_after: Optional[int] = None):
        self.problem = dict(problem)
        self.limit: Optional[str] = problem.get("limit")
        self.retry_after: Optional[int] = retry_after
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", ""))
        self.status: int = int(problem.get("status", status or 0))
        self.detail: str = str(problem.get("detail", ""))
        super().__init__(f"{self.status} {self.type}: {self.detail or self.title}")


class JobFailed(ProblemError):
    """A job ended `failed`, `dead` or `cancelled`; `job` is the whole job resource."""

    def __init__(self, job: Mapping[str, Any]):
        self.job = dict(job)
        problem = job.get("error") or {"type": "about:blank", "detail": job.get("status", "")}
        super().__init__(problem)
