"""The Kubernetes backend: APIs as Deployments per version behind Gateway API HTTPRoutes.

`manifests` renders the objects as plain dicts (pure, no client), so they can be validated against the
official schemas and printed by `cortex-flows render` without a cluster.
"""
