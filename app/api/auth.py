"""Bearer API keys: with `FM_API_KEYS` set, the job routes need `Authorization: Bearer <key>`."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.deps import SettingsDep

_bearer = HTTPBearer(auto_error=False, description="One of the keys in FM_API_KEYS.")


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The caller's key (None when keys are off); 401 when keys are on and it is not one."""
    keys = settings.api_key_list
    if not keys:
        return None
    offered = credentials.credentials if credentials is not None else ""
    # compare with every key, in constant time, so timing reveals nothing about them
    matches = [hmac.compare_digest(offered.encode(), key.encode()) for key in keys]
    if not offered or not any(matches):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return offered


ApiKeyDep = Annotated[str | None, Depends(require_api_key)]
