"""``GET /v1/architectures``: the registry (built-ins and entry-point plugins) with arguments."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.common import AUTH_PROBLEMS
from service.api.deps import OwnerDep
from service.schemas import ArchitectureList, ArchitectureOut

router = APIRouter(prefix="/v1/architectures", tags=["architectures"], responses=AUTH_PROBLEMS)


@router.get("", response_model=ArchitectureList, summary="List the architectures a model can use")
def list_architectures(owner: OwnerDep) -> ArchitectureList:
    from gif.registry import list_architectures as registry_list

    return ArchitectureList(
        data=[ArchitectureOut.model_validate(a.to_dict()) for a in registry_list()]
    )
