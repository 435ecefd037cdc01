"""GET /v1/model: which model is served (configs, data fingerprint, metrics)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import LoadedDep
from service.schemas import ModelInfo

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", response_model=ModelInfo)
def model(loaded: LoadedDep) -> ModelInfo:
    """The bundle's identity, configs, data fingerprint and evaluation metrics."""
    bundle = loaded.recommender.bundle
    info = {k: v for k, v in bundle.info.items() if k != "config"}
    return ModelInfo(
        version=loaded.version,
        dataset=loaded.dataset,
        n_items=loaded.recommender.n_items,
        rating_scale=list(bundle.features.rating_scale),
        inner_steps=loaded.recommender.steps,
        fast_params=bundle.config.model.fast_params,
        data_fingerprint=str(bundle.info.get("data_fingerprint", "")),
        config=bundle.config.to_dict(),
        metrics=bundle.metrics,
        info=info,
        user_values={
            f.name: list(f.vocab)
            for f in bundle.features.user_fields
            if f.name in ("gender", "occupation")
        },
    )
