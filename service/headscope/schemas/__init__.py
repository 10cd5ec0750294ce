"""The JSON contract of the v1 API, as pydantic models (pydantic only: no torch, no FastAPI).

Requests forbid unknown fields so a typo is a 422, not a silently ignored option. The client
library parses responses with these same models.
"""

from headscope.schemas.core import *  # noqa: F403
from headscope.schemas.core import __all__ as _core_all

__all__ = list(_core_all)
