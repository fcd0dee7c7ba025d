"""The daemon's control API (FastAPI): status, trials and control routers, pydantic models as the contract.

Mutating calls need `Authorization: Bearer TOKEN` (compared in constant time). Handlers are plain
functions, so they run in the server's thread pool and read the store through read-only views: no
request waits for the policy or the instrument.
"""
from __future__ import annotations

import hmac
from contextlib import contextmanager
from typing import Any, Iterator

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from prometheus_client import CONTENT_TYPE_LATEST

from controller.daemon.service import DaemonService, RequestError
from controller.daemon.state import InvalidTransition
from controller.daemon.views import data_shape
from controller.store import TrialRecord

MAX_ID = 2**62
"""Trial ids beyond this are not SQLite integers; asking for one is a 422, not a server error."""


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str


class HealthOut(BaseModel):
    status: str = Field(description="'ok' while the process serves; see `state` for the campaign")
    state: str


class TrialBrief(BaseModel):
    id: int
    params: dict[str, Any]
    metrics: dict[str, float | None]


class TrialOut(TrialBrief):
    status: str
    attempts: int
    reason: dict[str, Any]
    sem: dict[str, float | None] = {}
    pool_index: int | None = None
    novelty: float | None = None
    pvalue: float | None = None
    kept: bool | None = Field(None, description="whether the data product was kept (novelty selection)")
    decision: str | None = None
    data: str | None = Field(None, description="the kept data product, relative to the store's folder")
    data_shape: list[int] | None = None
    data_dtype: str | None = None
    error: str | None = None
    worker: str | None = None
    proposed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


class TrialPage(BaseModel):
    trials: list[TrialOut]
    next_since: int | None = Field(description="pass as `since` for the next page; null when this is the last")


class BreakerOut(BaseModel):
    consecutive_failures: int
    threshold: int
    trips: int


class StatusOut(BaseModel):
    name: str
    store: str
    state: str
    reason: str
    since: float
    uptime: float
    counts: dict[str, int] = Field(description="trials by journaled status")
    completed: int
    failed: int
    rate: float = Field(description="trials completed per second over the last minute")
    budget: dict[str, Any]
    policy: dict[str, Any]
    best: TrialBrief | None = None
    pareto: list[TrialBrief] = []
    hypervolume: float | None = None
    last_error: str | None = None
    fallbacks: int
    breaker: BreakerOut


class ControlOut(BaseModel):
    state: str
    reason: str


class BudgetPatch(Closed):
    """Fields to change; null clears a limit. The result must still be a budget (or `open_ended: true`)."""

    trials: int | None = Field(None, ge=1, le=MAX_ID)
    wall_time: float | str | None = Field(None, description="seconds or a duration such as '2h'")
    max_failures: int | None = Field(None, ge=0, le=MAX_ID)
    open_ended: bool | None = None


class BudgetOut(BaseModel):
    budget: dict[str, Any]


class PointsIn(Closed):
    points: list[dict[str, str | int | float | bool]] = Field(min_length=1, max_length=1000)
    note: str = Field("", max_length=500, description="kept in the trials' reason")


class QueuedOut(BaseModel):
    queued: int
    state: str


class PolicyIn(Closed):
    kind: str = Field(min_length=1, max_length=64)
    options: dict[str, Any] = {}


class PolicyOut(BaseModel):
    policy: dict[str, Any]


def unprocessable(problems: list[tuple[str, str]]) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, so every 422 matches one schema."""
    return HTTPException(422, detail=[{"loc": ["body", *field.replace("[", ".").replace("]", "").split(".")],
                                       "msg": msg, "type": "value_error"} for field, msg in problems])


@contextmanager
def refusals() -> Iterator[None]:
    """A request the daemon refuses: RequestError (bad content) -> 422, InvalidTransition (wrong state) -> 409."""
    try:
        yield
    except RequestError as exc:
        raise unprocessable(exc.problems) from None
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None


def trial_out(rec: TrialRecord, service: DaemonService) -> TrialOut:
    shape = data_shape(service.view.store, rec.data_path)
    return TrialOut(id=rec.id, status=rec.status, attempts=rec.attempts, params=rec.params, metrics=rec.metrics,
                    reason=rec.reason, sem=rec.sem, pool_index=rec.pool_index, novelty=rec.novelty, pvalue=rec.pvalue,
                    kept=rec.kept, decision=rec.decision, data=rec.data_path, data_shape=shape[0] if shape else None,
                    data_dtype=shape[1] if shape else None, error=rec.error, worker=rec.worker,
                    proposed_at=rec.proposed_at, started_at=rec.started_at, finished_at=rec.finished_at)


def brief(rec: TrialRecord) -> TrialBrief:
    return TrialBrief(id=rec.id, params=rec.params, metrics=rec.metrics)


def create_app(service: DaemonService, token: str) -> FastAPI:
    """The app for one daemon: its state from `service`, mutating calls guarded by `token`."""
    bearer = HTTPBearer(auto_error=False, description="the daemon's token (token file or $AEC_DAEMON_TOKEN)")
    expected = token.encode()

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = {401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
               409: {"model": ErrorOut, "description": "not possible in the daemon's current state"}}
    status_router = APIRouter(tags=["status"])
    trials_router = APIRouter(tags=["trials"])
    control_router = APIRouter(tags=["control"], dependencies=[Depends(authorized)], responses=guarded)

    @status_router.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        return HealthOut(status="ok", state=service.machine.state.value)

    @status_router.get("/status", response_model=StatusOut)
    def status() -> StatusOut:
        snap = service.snapshot()
        counts = service.view.counts()
        best, front, hv = service.view.optimum()
        config = service.campaign.config
        return StatusOut(
            name=config.name, store=str(service.campaign.store.path), state=snap.state.state.value,
            reason=snap.state.reason, since=snap.state.time, uptime=snap.uptime, counts=counts,
            completed=counts.get("completed", 0), failed=counts.get("failed", 0), rate=snap.rate,
            budget=service.budget.model_dump(mode="json", exclude_none=True),
            policy=config.policy.model_dump(mode="json", exclude_none=True),
            best=brief(best) if best is not None else None, pareto=[brief(r) for r in front], hypervolume=hv,
            last_error=snap.last_error, fallbacks=service.view.fallbacks(),
            breaker=BreakerOut(consecutive_failures=snap.breaker, threshold=service.breaker.threshold,
                               trips=snap.breaker_trips))

    @status_router.get("/metrics", response_class=Response,
                       responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                                        "description": "Prometheus text exposition"}})
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @trials_router.get("/trials", response_model=TrialPage)
    def trials(since: int = Query(-1, ge=-1, le=MAX_ID, description="only trials with a larger id"),
               limit: int = Query(100, ge=1, le=1000)) -> TrialPage:
        recs = service.view.trials(since, limit)
        return TrialPage(trials=[trial_out(r, service) for r in recs],
                         next_since=recs[-1].id if len(recs) == limit else None)

    @trials_router.get("/trials/{trial_id}", response_model=TrialOut,
                       responses={404: {"model": ErrorOut, "description": "no such trial"}})
    def trial(trial_id: int = Path(ge=0, le=MAX_ID)) -> TrialOut:
        rec = service.view.trial(trial_id)
        if rec is None:
            raise HTTPException(404, f"no trial {trial_id}")
        return trial_out(rec, service)

    @trials_router.post("/trials", response_model=QueuedOut, status_code=202, dependencies=[Depends(authorized)],
                        responses=guarded)
    def queue(body: PointsIn) -> QueuedOut:
        """Queue points to measure next, with reason 'operator' (all or none: each is checked first); on disk
        before the 202, so a crash loses none and a resume measures them first, each once."""
        with refusals():
            n = service.queue_points(body.points, body.note)
        return QueuedOut(queued=n, state=service.machine.state.value)

    def control(action) -> ControlOut:
        with refusals():
            t = action()
        return ControlOut(state=t.state.value, reason=t.reason)

    @control_router.post("/pause", response_model=ControlOut)
    def pause() -> ControlOut:
        """Propose nothing new; the trials in flight finish and are recorded."""
        return control(service.pause)

    @control_router.post("/resume", response_model=ControlOut)
    def resume() -> ControlOut:
        """Leave paused or unhealthy (resets the circuit breaker)."""
        return control(service.resume)

    @control_router.post("/stop", response_model=ControlOut)
    def stop() -> ControlOut:
        """Finish the trials in flight, then stop the process (exit 0)."""
        return control(service.stop)

    @control_router.patch("/budget", response_model=BudgetOut)
    def budget(body: BudgetPatch) -> BudgetOut:
        with refusals():
            new = service.set_budget({k: getattr(body, k) for k in body.model_fields_set})
        return BudgetOut(budget=new.model_dump(mode="json", exclude_none=True))

    @control_router.post("/policy", response_model=PolicyOut)
    def policy(body: PolicyIn) -> PolicyOut:
        """Switch the policy from the next proposal on; the switch is kept in the store's policy history."""
        with refusals():
            new = service.switch_policy(body.kind, body.options)
        return PolicyOut(policy=new.model_dump(mode="json", exclude_none=True))

    app = FastAPI(title="aec daemon", version="1", description="Control API of one aec campaign running as a service.")
    for router in (status_router, trials_router, control_router):
        app.include_router(router)
    return app
