"""`"fisher": "auto"` in a merge request: reuse or compute each model's Fisher, in this process.

The REST service enqueues these as jobs the merge depends on; the CLI runs them in turn.
"""

from app.core.config import Settings, get_settings
from app.fisher.engine import ProgressCallback, run_fisher
from app.schemas import FisherRequest, MergeRequest


def fisher_request_for(request: MergeRequest, index: int) -> FisherRequest:
    settings = request.fisher_settings(index)
    return FisherRequest.model_validate(
        {**settings.model_dump(), "model": request.models[index].uri}
    )


def resolve_auto_fishers(
    request: MergeRequest,
    settings: Settings | None = None,
    progress: ProgressCallback | None = None,
) -> MergeRequest:
    """The same request with every 'auto' Fisher replaced by the URI of a computed or cached one."""
    settings = settings or get_settings()
    models = []
    for i, model in enumerate(request.models):
        if model.fisher == "auto":
            result = run_fisher(fisher_request_for(request, i), settings, progress)
            model = model.model_copy(update={"fisher": result.fisher_uri})
        models.append(model)
    return request.model_copy(update={"models": models})
