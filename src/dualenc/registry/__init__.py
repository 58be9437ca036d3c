"""Plugin discovery: hookspecs, component protocols and the catalog of installed components."""

from dualenc.registry.catalog import Catalog, load_catalog
from dualenc.registry.hookspecs import API_VERSION, hookimpl

__all__ = ["API_VERSION", "Catalog", "hookimpl", "load_catalog"]
