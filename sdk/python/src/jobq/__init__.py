"""jobq's Python client: submit jobs and follow them over jobq's HTTP API; declare handlers.

import jobq

with jobq.Client.from_file(".jobq/admin.json", url="http://127.0.0.1:8080") as client:
    job = client.submit("send_email", {"to": "a@example.com"}, queue="default")
    done = client.wait(job.id, timeout=30)
"""

from jobq.calls import Credentials, RetryPolicy
from jobq.client import AsyncClient, Client
from jobq.errors import (
    Conflict,
    Forbidden,
    InvalidJob,
    JobqError,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from jobq.handlers import Handler, InvalidPayload, JobContext, PermanentError, handler
from jobq.http_worker import HttpWorker
from jobq.models import Job, JobProgress, JobStatus, Queue

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "Credentials",
    "Forbidden",
    "Handler",
    "HttpWorker",
    "InvalidJob",
    "InvalidPayload",
    "Job",
    "JobContext",
    "JobProgress",
    "JobStatus",
    "JobqError",
    "NotFound",
    "PermanentError",
    "Queue",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "handler",
]
