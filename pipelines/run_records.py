"""What is on the cluster, as ``cxrflow pipeline schedule list`` and ``cxrflow pipeline runs``
show it: :class:`ScheduleInfo` and :class:`RunInfo` read from the API's objects, each with the
:class:`DataVersion` its ``params`` name (read leniently: runs of older packages must list).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# ------------------------------------------------------------------- what is on the cluster


@dataclass(frozen=True)
class DataVersion:
    """Which data a run read, from its ``params`` (``data.registry`` / ``data.version``)."""

    version: str  # a registry tag/commit, "HEAD" (unpinned), "local", "phantom" or "?"
    registry: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any] | None) -> DataVersion:
        """Read leniently (runs of older packages must still list); KFP's ``""`` is null."""
        if not isinstance(params, Mapping):
            return cls("?")
        data = params.get("data")
        data = data if isinstance(data, Mapping) else {}
        registry = data.get("registry") or None
        if registry:
            return cls(str(data.get("version") or "HEAD"), str(registry))
        return cls("local" if data.get("sources") else "phantom")


def _run_params(runtime_config: Any, pipeline_spec: Any) -> Mapping[str, Any] | None:
    """The ``params`` a run or schedule was given, else its inline package's default."""
    given = getattr(runtime_config, "parameters", None) or {}
    if isinstance(given.get("params"), Mapping):
        return dict(given["params"])
    spec = pipeline_spec or {}
    spec = spec.get("pipeline_spec", spec)  # {pipeline_spec, platform_spec} with a platform spec
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    default = declared.get("params", {}).get("defaultValue")
    return default if isinstance(default, Mapping) else None


def _time(value: Any) -> datetime | None:
    """A timestamp in UTC; the API's Unix epoch means "not set"."""
    if not isinstance(value, datetime) or value.timestamp() <= 0:
        return None
    return value.astimezone(UTC)


@dataclass(frozen=True)
class ScheduleInfo:
    """A recurring run, as ``cxrflow pipeline schedule list`` shows it."""

    recurring_run_id: str
    name: str
    enabled: bool
    cron: str
    max_concurrency: int
    catchup: bool
    data: DataVersion
    created_at: datetime | None

    @classmethod
    def of(cls, job: Any) -> ScheduleInfo:
        """From a ``V2beta1RecurringRun``."""
        trigger = job.trigger
        if trigger is not None and trigger.cron_schedule is not None:
            cron = str(trigger.cron_schedule.cron)
        elif trigger is not None and trigger.periodic_schedule is not None:
            cron = f"every {trigger.periodic_schedule.interval_second}s"
        else:
            cron = "?"
        status = job.status or ("ENABLED" if job.mode == "ENABLE" else "DISABLED")
        return cls(
            recurring_run_id=str(job.recurring_run_id),
            name=str(job.display_name),
            enabled=status == "ENABLED",
            cron=cron,
            max_concurrency=int(job.max_concurrency or 1),  # int64: a string in JSON
            catchup=not job.no_catchup,
            data=DataVersion.of(_run_params(job.runtime_config, job.pipeline_spec)),
            created_at=_time(job.created_at),
        )


@dataclass(frozen=True)
class RunInfo:
    """A run, as ``cxrflow pipeline runs`` shows it."""

    run_id: str
    name: str
    state: str
    created_at: datetime | None
    finished_at: datetime | None
    data: DataVersion
    recurring_run_id: str | None

    @classmethod
    def of(cls, run: Any) -> RunInfo:
        """From a ``V2beta1Run``."""
        return cls(
            run_id=str(run.run_id),
            name=str(run.display_name),
            state=str(run.state or "RUNTIME_STATE_UNSPECIFIED"),
            created_at=_time(run.created_at),
            finished_at=_time(run.finished_at),
            data=DataVersion.of(_run_params(run.runtime_config, run.pipeline_spec)),
            recurring_run_id=run.recurring_run_id or None,
        )
