"""Training-loop hooks, registered in mmseg's HOOKS."""
from .hooks import *  # noqa: F401,F403
