"""Deploy machine-learning models as HTTP APIs from Prefect flows.

`CortexCluster` is re-exported lazily (so `prefect block register -m cortex_flows` finds it) without
making every import of the package, such as a replica's, pay for importing Prefect.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "CortexCluster":
        from cortex_flows.blocks import CortexCluster

        return CortexCluster
    raise AttributeError(name)


def __dir__() -> list[str]:
    return ["CortexCluster", "__version__"]
