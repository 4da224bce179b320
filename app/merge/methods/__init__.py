"""Merge methods, registered by name; importing this package registers every built-in one."""

from app.merge.methods import fisher, isotropic
from app.merge.methods.base import METHODS, MergeMethod, register

__all__ = ["METHODS", "MergeMethod", "fisher", "isotropic", "register"]
