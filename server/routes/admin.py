"""Administration: lifting a login lock-out."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..appkeys import THROTTLE
from ..exceptions import BadRequest
from ..request_helpers import json_body, log_access, require_role


class UnlockLogin(BaseModel):
    """Whose lock-out to lift, and from which address (as the login saw it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    username: str = Field(min_length=1, max_length=64)
    address: str = Field(min_length=1, max_length=64)


async def unlock_login(request: web.Request) -> web.Response:
    """``POST /api/admin/login-unlock {username, address}``: the username may try again from that
    address at once, and the address's failure count starts again (admins only, logged)."""
    user = await require_role(request, ("admin",), "only administrators can lift a lock-out")
    try:
        body = UnlockLogin.model_validate(await json_body(request))
    except ValidationError as exc:
        raise BadRequest(f"username and address are required: {exc.errors()[0]['msg']}") from None
    await request.app[THROTTLE].unlock(body.username, body.address)
    await log_access(request, user, "unlock_login", f"{body.username}@{body.address}")
    return web.json_response({"unlocked": True, "username": body.username})


def setup_admin_routes(app: web.Application) -> None:
    app.router.add_post("/api/admin/login-unlock", unlock_login)
