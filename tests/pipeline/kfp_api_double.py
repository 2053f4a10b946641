"""A test double of the Kubeflow Pipelines v2beta1 REST API. It is not KFP.

A real HTTP server on ``127.0.0.1`` (ephemeral port, one thread) that answers the endpoints
the real ``kfp.Client`` (2.17) calls for submitting, scheduling and listing: healthz, pipeline
upload (multipart), experiments, runs and recurring runs. It keeps its state in memory,
answers with JSON shaped like the real API (field names from the ``kfp_server_api`` models,
including their oddities: the list of recurring runs is ``recurringRuns``, int64 fields such
as ``max_concurrency`` come back as strings, unset timestamps as the Unix epoch), and records
every request (method, path, query, headers, decoded JSON or multipart body) so that tests
can assert on what the client actually sent.

It runs nothing: a created run stays ``PENDING`` until a test calls :meth:`set_run_state`,
and a recurring run fires only when a test calls :meth:`fire`. Only the filter the client
itself builds (``EQUALS`` on one string key) is understood; anything else is a 400, so that a
test never passes on a filter the double silently ignored. Requests through the Kubernetes
API server's service proxy (``/api/v1/namespaces/<ns>/services/ml-pipeline:http/proxy/...``,
the path ``kfp.Client`` uses with a kubeconfig) are answered too, with the proxy's namespace
recorded. With ``token`` set, a request without that bearer token is answered 401.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"
EPOCH = "1970-01-01T00:00:00Z"  # how the real API writes a timestamp that is not set
PROXY = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/ml-pipeline:http/proxy/*")
FINAL_STATES = {"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"}
GRPC_CODES = {400: 3, 401: 16, 404: 5, 409: 6, 500: 13}  # the body carries google.rpc codes


@dataclass
class Request:
    """One request as the double received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any = None  # decoded JSON, or {field: {"filename", "content"}} for multipart
    proxy_namespace: str | None = None  # set when it came through the k8s service proxy


class ApiError(Exception):
    """An error answer: HTTP status and a google.rpc.Status-like body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class KfpApiDouble:
    """In-memory state and request log of the test double; :meth:`start` serves it."""

    multi_user: bool = False
    token: str | None = None  # if set, a request without "Bearer <token>" gets a 401
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipeline_versions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tick = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/healthz"), self._healthz),
            ("POST", re.compile(r"/pipelines/upload"), self._upload_pipeline),
            ("POST", re.compile(r"/pipelines/upload_version"), self._upload_version),
            ("POST", re.compile(r"/experiments"), self._create_experiment),
            ("GET", re.compile(r"/experiments"), self._list_experiments),
            ("GET", re.compile(r"/experiments/(?P<rid>[^/:]+)"), self._get_experiment),
            ("POST", re.compile(r"/runs"), self._create_run),
            ("GET", re.compile(r"/runs"), self._list_runs),
            ("GET", re.compile(r"/runs/(?P<rid>[^/:]+)"), self._get_run),
            ("POST", re.compile(r"/recurringruns"), self._create_recurring_run),
            ("GET", re.compile(r"/recurringruns"), self._list_recurring_runs),
            ("GET", re.compile(r"/recurringruns/(?P<rid>[^/:]+)"), self._get_recurring_run),
            ("DELETE", re.compile(r"/recurringruns/(?P<rid>[^/:]+)"), self._delete_recurring_run),
            (
                "POST",
                re.compile(r"/recurringruns/(?P<rid>[^/:]+):(?P<mode>enable|disable)"),
                self._set_recurring_mode,
            ),
        ]

    # ----------------------------------------------------------------------------- serving

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the KFP API double is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> KfpApiDouble:
        """Serve on an ephemeral port of 127.0.0.1 in a daemon thread."""
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                status, payload = double._handle(self)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request log is double.requests

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KfpApiDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, http: BaseHTTPRequestHandler) -> tuple[int, Any]:
        parts = urlsplit(http.path)
        path, proxy_ns = parts.path, None
        if m := PROXY.match(path):
            proxy_ns, path = m["ns"], "/" + path[m.end() :]
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in http.headers.items()}
        raw = http.rfile.read(int(headers.get("content-length", 0) or 0))
        body = _decode_body(raw, headers.get("content-type", ""))
        with self._lock:
            self.requests.append(Request(http.command, path, query, headers, body, proxy_ns))
            try:
                if self.token and headers.get("authorization") != f"Bearer {self.token}":
                    raise ApiError(401, "Unauthenticated: no valid bearer token")
                if not path.startswith(API + "/"):
                    raise ApiError(404, f"not a KFP v2beta1 path: {path}")
                rest = path[len(API) :]
                for method, pattern, handler in self._routes:
                    if method == http.command and (m := pattern.fullmatch(rest)):
                        return 200, handler(body=body, query=query, **m.groupdict())
                raise ApiError(404, f"no such endpoint: {http.command} {path}")
            except ApiError as exc:
                body = {"code": GRPC_CODES[exc.status], "message": str(exc), "details": []}
                return exc.status, body
            except Exception as exc:  # a bug in the double: answer, so the test shows it
                return 500, {"code": 13, "message": f"KFP API double: {exc!r}", "details": []}

    # ----------------------------------------------------------------------- test helpers

    def sent(self, method: str, path: str) -> list[Request]:
        """The recorded requests with that method and path (``/apis/v2beta1`` may be left out)."""
        full = path if path.startswith(API) else API + path
        return [r for r in self.requests if r.method == method and r.path == full]

    def set_run_state(self, run_id: str, state: str) -> None:
        """Move a run to ``state`` (``RUNNING``, ``SUCCEEDED``...), as the backend would."""
        with self._lock:
            run = self.runs[run_id]
            run["state"] = state
            if state in FINAL_STATES:
                run["finished_at"] = self._now()

    def fire(self, recurring_run_id: str) -> str:
        """Start one run of a recurring run, as the scheduler would; returns its id."""
        with self._lock:
            job = self.recurring_runs[recurring_run_id]
            n = sum(r.get("recurring_run_id") == recurring_run_id for r in self.runs.values())
            run = self._new_run(
                {
                    "experiment_id": job["experiment_id"],
                    "display_name": f"{job['display_name']}-{n + 1}",
                    "pipeline_spec": job.get("pipeline_spec"),
                    "pipeline_version_reference": job.get("pipeline_version_reference"),
                    "runtime_config": job.get("runtime_config"),
                    "recurring_run_id": recurring_run_id,
                }
            )
            return str(run["run_id"])

    # -------------------------------------------------------------------------- endpoints

    def _now(self) -> str:
        # a clock that advances one second per event, so that sorting by time is deterministic
        t = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(self._tick))
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _healthz(self, **_: Any) -> dict[str, Any]:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    def _upload_pipeline(self, body: Any, query: dict[str, str], **_: Any) -> dict[str, Any]:
        spec = _uploaded_spec(body)
        name = query.get("name") or query.get("display_name") or spec["pipelineInfo"]["name"]
        if any(p["display_name"] == name for p in self.pipelines.values()):
            raise ApiError(409, f"a pipeline named {name!r} already exists")
        pipeline: dict[str, Any] = {
            "pipeline_id": str(uuid.uuid4()),
            "display_name": name,
            "name": name,
            "description": query.get("description", ""),
            "created_at": self._now(),
            "namespace": query.get("namespace", ""),
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, spec, query.get("description", ""))
        return pipeline

    def _upload_version(self, body: Any, query: dict[str, str], **_: Any) -> dict[str, Any]:
        pipeline_id = query.get("pipelineid", "")
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"pipeline {pipeline_id!r} not found")
        name = query.get("name") or query.get("display_name") or ""
        return self._add_version(
            pipeline_id, name, _uploaded_spec(body), query.get("description", "")
        )

    def _add_version(
        self, pipeline_id: str, name: str, spec: dict[str, Any], description: str
    ) -> dict[str, Any]:
        version: dict[str, Any] = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "name": name,
            "description": description,
            "created_at": self._now(),
            "pipeline_spec": spec,
        }
        self.pipeline_versions[version["pipeline_version_id"]] = version
        return version

    def _create_experiment(self, body: Any, **_: Any) -> dict[str, Any]:
        name, namespace = body.get("display_name", ""), body.get("namespace") or ""
        if not name:
            raise ApiError(400, "experiment display_name is empty")
        if any(
            e["display_name"] == name and e["namespace"] == namespace
            for e in self.experiments.values()
        ):
            raise ApiError(409, f"an experiment named {name!r} already exists")
        experiment: dict[str, Any] = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": name,
            "description": body.get("description") or "",
            "created_at": self._now(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
            "last_run_created_at": EPOCH,
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _list_experiments(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        namespace = query.get("namespace", "")
        rows = [
            e for e in self.experiments.values() if not namespace or e["namespace"] == namespace
        ]
        return _page(rows, query, "experiments")

    def _get_experiment(self, rid: str, **_: Any) -> dict[str, Any]:
        return _lookup(self.experiments, rid, "experiment")

    def _create_run(self, body: Any, **_: Any) -> dict[str, Any]:
        _lookup(self.experiments, body.get("experiment_id", ""), "experiment")
        if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
            raise ApiError(400, "a run needs pipeline_spec or pipeline_version_reference")
        return self._new_run(body)

    def _new_run(self, body: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        run = {
            **{k: v for k, v in body.items() if v is not None},
            "run_id": str(uuid.uuid4()),
            "storage_state": "AVAILABLE",
            "created_at": now,
            "scheduled_at": now,
            "finished_at": EPOCH,
            "state": "PENDING",
        }
        self.experiments[run["experiment_id"]]["last_run_created_at"] = now
        self.runs[run["run_id"]] = run
        return run

    def _list_runs(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        rows = list(self.runs.values())
        if experiment_id := query.get("experiment_id"):
            rows = [r for r in rows if r["experiment_id"] == experiment_id]
        elif namespace := query.get("namespace"):
            rows = [
                r for r in rows if self.experiments[r["experiment_id"]]["namespace"] == namespace
            ]
        return _page(rows, query, "runs")

    def _get_run(self, rid: str, **_: Any) -> dict[str, Any]:
        return _lookup(self.runs, rid, "run")

    def _create_recurring_run(self, body: Any, **_: Any) -> dict[str, Any]:
        experiment = _lookup(self.experiments, body.get("experiment_id", ""), "experiment")
        trigger = body.get("trigger") or {}
        cron = (trigger.get("cron_schedule") or {}).get("cron")
        if cron is not None and len(cron.split()) != 6:
            raise ApiError(400, f"invalid cron {cron!r}: KFP expects 6 fields")
        now = self._now()
        mode = body.get("mode") or "ENABLE"
        job = {
            **{k: v for k, v in body.items() if v is not None},
            "recurring_run_id": str(uuid.uuid4()),
            "max_concurrency": str(body.get("max_concurrency") or 1),  # int64: a JSON string
            "no_catchup": bool(body.get("no_catchup")),
            "mode": mode,
            "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
            "namespace": experiment["namespace"],
            "created_at": now,
            "updated_at": now,
        }
        self.recurring_runs[job["recurring_run_id"]] = job
        return job

    def _list_recurring_runs(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        rows = list(self.recurring_runs.values())
        if experiment_id := query.get("experiment_id"):
            rows = [r for r in rows if r["experiment_id"] == experiment_id]
        elif namespace := query.get("namespace"):
            rows = [r for r in rows if r["namespace"] == namespace]
        # the v2beta1 proto names this field recurringRuns, and the generated client expects it
        return _page(rows, query, "recurringRuns")

    def _get_recurring_run(self, rid: str, **_: Any) -> dict[str, Any]:
        return _lookup(self.recurring_runs, rid, "recurring run")

    def _delete_recurring_run(self, rid: str, **_: Any) -> dict[str, Any]:
        _lookup(self.recurring_runs, rid, "recurring run")
        del self.recurring_runs[rid]
        return {}

    def _set_recurring_mode(self, rid: str, mode: str, **_: Any) -> dict[str, Any]:
        job = _lookup(self.recurring_runs, rid, "recurring run")
        job["mode"] = "ENABLE" if mode == "enable" else "DISABLE"
        job["status"] = "ENABLED" if mode == "enable" else "DISABLED"
        job["updated_at"] = self._now()
        return {}


def _decode_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(head + raw)
        form: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            form[str(name)] = {"filename": part.get_filename(), "content": payload}
        return form
    return json.loads(raw)


def _uploaded_spec(body: Any) -> dict[str, Any]:
    upload = (body or {}).get("uploadfile")
    if not upload:
        raise ApiError(400, "no uploadfile in the multipart body")
    spec = next(iter(yaml.safe_load_all(upload["content"])), None)
    if not isinstance(spec, dict) or "pipelineInfo" not in spec:
        raise ApiError(400, f"{upload['filename']} is not a compiled pipeline")
    return spec


def _lookup(table: dict[str, dict[str, Any]], key: str, kind: str) -> dict[str, Any]:
    if key not in table:
        raise ApiError(404, f"{kind} {key!r} not found")
    return table[key]


def _matches(row: dict[str, Any], predicate: dict[str, Any]) -> bool:
    if predicate.get("operation") not in (1, "EQUALS") or "stringValue" not in predicate:
        raise ApiError(400, f"the KFP API double only supports EQUALS on strings: {predicate}")
    return bool(row.get(predicate["key"]) == predicate["stringValue"])


def _page(rows: list[dict[str, Any]], query: dict[str, str], key: str) -> dict[str, Any]:
    """Filter, sort and page ``rows`` like the API: ``filter``, ``sort_by``, ``page_*``."""
    if query.get("filter"):
        predicates = json.loads(query["filter"]).get("predicates", [])
        rows = [r for r in rows if all(_matches(r, p) for p in predicates)]
    sort_key, _, order = query.get("sort_by", "").partition(" ")
    if sort_key:
        if order not in ("", "asc", "desc"):
            raise ApiError(400, f"bad sort_by {query['sort_by']!r}")
        rows = sorted(rows, key=lambda r: str(r.get(sort_key, "")), reverse=order == "desc")
    else:
        rows = sorted(rows, key=lambda r: str(r.get("created_at", "")))
    start = int(base64.b64decode(query["page_token"]).decode()) if query.get("page_token") else 0
    size = int(query.get("page_size") or 0) or 20
    end = start + size
    token = base64.b64encode(str(end).encode()).decode() if end < len(rows) else ""
    out: dict[str, Any] = {"total_size": len(rows), "next_page_token": token}
    if rows[start:end]:  # the real API leaves an empty list out
        out[key] = rows[start:end]
    return out
