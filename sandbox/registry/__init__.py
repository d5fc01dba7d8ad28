"""The Hokusai registry stand-in: a FastAPI app honouring docs/health-contract.md (or, with
REGISTRY_FLAVOR=legacy, reproducing the deployed version's deviations)."""

from sandbox.registry.app import create_app
from sandbox.registry.config import Flavor, RegistryConfig

__all__ = ["Flavor", "RegistryConfig", "create_app"]
