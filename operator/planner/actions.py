"""What a planner asks its shell (kopf handlers or the local runner) to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from exfm_operator.api.common import Resources, StatusBase
from exfm_operator.planner.world import JobKind

S = TypeVar("S", bound=StatusBase)


@dataclass(frozen=True)
class SubmitJob:
    """Launch ``python -m exfm_trainer --config <config as JSON>`` as a TorchX app named ``job_name``.

    ``config`` validates as an ``exfm_trainer.jobs`` job config; ``labels`` go on the job (and pods);
    ``env_from_secret`` names a Secret whose keys become environment variables (None: no secret).
    """

    job_name: str
    job_kind: JobKind
    config: dict[str, Any]
    windows: tuple[int, int]
    resources: Resources
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    env_from_secret: str | None = None
    attempt: int = 0

    @property
    def gpus(self) -> int:
        return self.resources.total_gpus


@dataclass(frozen=True)
class CancelJob:
    job_name: str
    handle: str | None
    reason: str


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = SubmitJob | CancelJob | EmitEvent


@dataclass
class Plan(Generic[S]):
    """Actions to carry out (in order), and the status to write (the whole ``status``)."""

    actions: list[Action]
    status: S

    def of_type(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]
