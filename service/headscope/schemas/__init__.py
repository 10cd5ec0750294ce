"""The JSON contract of the v1 API, as pydantic models (pydantic only: no torch, no FastAPI).

Requests forbid unknown fields so a typo is a 422, not a silently ignored option. The client
library parses responses with these same models.
"""

from headscope.schemas.ablation import *  # noqa: F403
from headscope.schemas.ablation import __all__ as _ablation_all
from headscope.schemas.core import *  # noqa: F403
from headscope.schemas.core import __all__ as _core_all
from headscope.schemas.corpus import *  # noqa: F403
from headscope.schemas.corpus import __all__ as _corpus_all
from headscope.schemas.jobs import *  # noqa: F403
from headscope.schemas.jobs import __all__ as _jobs_all
from headscope.schemas.output import *  # noqa: F403
from headscope.schemas.output import __all__ as _output_all
from headscope.schemas.probes import *  # noqa: F403
from headscope.schemas.probes import __all__ as _probes_all

__all__ = (
    list(_ablation_all)
    + list(_core_all)
    + list(_corpus_all)
    + list(_jobs_all)
    + list(_output_all)
    + list(_probes_all)
)
