"""`cortex-flows migrate`: a Cortex project's spec rewritten as the native `cortex.yaml` it is read as."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cortex_flows.spec.load import read_apis, read_spec_file


class _Dumper(yaml.SafeDumper):
    """Block-style YAML without anchors: a value used twice (a YAML merge) is simply written twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def migrate_spec(path: str | Path) -> str:
    """The native spec equivalent to the one at `path` (a project directory or a spec file), as YAML text.

    Raises `SpecError` exactly as `load_spec` does. Each API read as a Cortex-era spec is converted (a
    native one is kept as written), under comments saying what was dropped and why. Saved as cortex.yaml
    in the same project, it loads to the same APIs, with the same identity hashes.
    """
    file, text = read_spec_file(path)
    header = [
        f"# cortex-flows spec, converted by `cortex-flows migrate` from {file}.",
        "# Comments above an API name the Cortex fields that have no effect here, and why.",
    ]
    blocks = []
    for item in read_apis(text, file, file.parent):
        notes = [f"# {notice.path}: {notice.message}" for notice in item.notices]
        body = yaml.dump([item.native], Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        blocks.append("\n".join([*notes, body.rstrip("\n")]))
    return "\n\n".join(["\n".join(header), *blocks]) + "\n"
