"""The FastAPI application: routes, settings and Redis on `app.state`, health endpoints."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app import __version__
from app.api.deps import RedisDep, SettingsDep
from app.api.metrics import Metrics, MetricsMiddleware
from app.api.routes import fisher, jobs, merge
from app.checkpoints.format import CheckpointError
from app.core.config import Settings, get_settings
from app.storage import ObjectNotFound, StorageError, open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.redis = Redis.from_url(settings.redis_url)
        metrics.watch(app.state.redis)
        yield
        app.state.redis.close()

    app = FastAPI(
        title="fisher-merge",
        version=__version__,
        lifespan=lifespan,
        description="Fisher-weighted and isotropic merging of transformers checkpoints: "
        "submit Fisher and merge jobs, poll or be called back, cancel.",
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for router in (fisher.router, merge.router, jobs.router):
        app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's own answer echoes each bad input back, which fails for the very values
        we must refuse (Infinity, NaN); location and message name the field well enough."""
        detail = [
            {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
            for item in error.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(ValueError)
    async def bad_input(_: Request, error: ValueError) -> JSONResponse:
        """Input that validates but cannot be used (a checkpoint or data set that is not
        there or malformed) is the caller's to fix: 422 with the reason."""
        kind = "CheckpointError" if isinstance(error, CheckpointError) else type(error).__name__
        return JSONResponse(status_code=422, content={"detail": str(error), "type": kind})

    @app.exception_handler(ObjectNotFound)
    async def not_there(_: Request, error: ObjectNotFound) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(error), "type": "NotFound"})

    @app.exception_handler(StorageError)
    async def storage_down(_: Request, error: StorageError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(error)})

    @app.exception_handler(RedisConnectionError)
    async def redis_down(_: Request, error: RedisConnectionError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"Redis unreachable: {error}"})

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics_text() -> Response:
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(settings: SettingsDep, redis: RedisDep) -> JSONResponse:
        checks = {}
        try:
            checks["redis"] = "ok" if redis.ping() else "no answer"
        except Exception as error:  # any failure means not ready
            checks["redis"] = f"{type(error).__name__}: {error}"
        try:
            open_store(settings.cache_uri, settings).list()
            checks["store"] = "ok"
        except Exception as error:
            checks["store"] = f"{type(error).__name__}: {error}"
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(status_code=200 if ready else 503, content=checks)

    return app
