"""The dataset card (``README.md`` with Hub YAML metadata) of a published brainalign repo.

The card is rendered from the repo index (see :func:`brainalign.features.hub.build_index`) only,
so it never sees a token, and pushing the same tables twice renders the same card.
"""

from __future__ import annotations

import json
from typing import Any

_SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
]


def _size_category(rows: int) -> str:
    for limit, name in _SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "100M<n<1B"


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML flow scalar


def render_card(
    index: dict[str, Any], repo_id: str, *, license: str = "cc-by-4.0", pretty_name: str | None = None
) -> str:
    """The ``README.md`` text: YAML front matter, then schema, provenance and how to load."""
    tables = index["tables"]
    rows = sum(t["rows"] for t in tables.values())
    lines = [
        "---",
        f"license: {license}",
        f"pretty_name: {_yaml_str(pretty_name or repo_id.split('/')[-1])}",
        "task_categories:",
        "- feature-extraction",
        "tags:",
        "- brainalign",
        "- brain-alignment",
        "- fmri",
        "- neuroscience",
        "- embeddings",
        "- lance",
        "size_categories:",
        f"- {_size_category(rows)}",
        "configs:",
    ]
    for i, path in enumerate(sorted(tables)):
        name = "default" if i == 0 else path.removesuffix(".lance").replace("/", "-")
        lines += [
            f"- config_name: {name}",
            "  data_files:",
            "  - split: train",
            "    path:",
            f"    - {path}/_versions/*.manifest",
            f"    - {path}/data/*.lance",
        ]
    lines += [
        "---",
        "",
        f"# {repo_id}",
        "",
        "Layer embeddings published with [brainalign](https://pypi.org/project/brainalign-feature-store/): "
        "keyed, versioned [Lance](https://lancedb.github.io/lance/) tables that can be pulled partially "
        "(one model, instruction or layer at a time).",
        "",
    ]
    for path, t in sorted(tables.items()):
        lines += [
            f"## `{path}` ({t['kind']})",
            "",
            f"- rows: {t['rows']:,}; Lance version {t['version']}"
            + (f"; tags: {', '.join(sorted(t['tags']))}" if t.get("tags") else ""),
        ]
        if t["kind"] == "features":
            avail = t["available"]
            lines += [
                f"- embedding: {t['dim']} values stored as {t['dtype']} (read as float32)",
                f"- models: {', '.join(f'`{m}`' for m in avail['model'])}",
                f"- instructions: {', '.join(f'`{m}`' for m in avail['instruction_id'])}",
                f"- components: {', '.join(avail['component'])}; poolings: {', '.join(avail['pooling'])}",
                f"- layers: {', '.join(str(v) for v in avail['layer'])}",
                f"- stimulus sets: {', '.join(avail['stimulus_set'])}",
            ]
        lines += ["", "### Schema", "", "| column | type | nullable |", "|---|---|---|"]
        lines += [
            f"| `{f['name']}` | `{f['type']}` | {'yes' if f['nullable'] else 'no'} |" for f in t["schema"]
        ]
        lines += [
            "",
            "### Provenance",
            "",
            "```json",
            json.dumps(t["provenance"], indent=2, sort_keys=True),
            "```",
            "",
        ]
    feat = next((p for p, t in sorted(tables.items()) if t["kind"] == "features"), None)
    if feat is not None:
        avail = tables[feat]["available"]
        m, ins, layer = avail["model"][0], avail["instruction_id"][0], avail["layer"][-1]
        lines += [
            "## How to load",
            "",
            "With brainalign (downloads only the files holding the selected rows):",
            "",
            "```python",
            "from brainalign.features import pull",
            "",
            f"keys, X = pull({repo_id!r}, model={m!r}, instruction={ins!r}, layer={layer}, as_arrays=True)",
            f'store = pull({repo_id!r}, revision="main")  # the whole table as a local FeatureStore',
            "```",
            "",
            "With 🤗 datasets (main revision):",
            "",
            "```python",
            "from datasets import load_dataset",
            "",
            f'ds = load_dataset({repo_id!r}, split="train")',
            "```",
            "",
            "With DuckDB (float16 embeddings are read as float32):",
            "",
            "```python",
            "import duckdb",
            "from brainalign.features import pull",
            "",
            f"store = pull({repo_id!r}, instruction={ins!r})",
            "con = duckdb.connect()",
            'con.register("features", store.scannable())',
            'con.sql("SELECT layer, count(*) FROM features GROUP BY layer").show()',
            "```",
            "",
        ]
    lines += [
        "The file `brainalign.json` indexes the files of every table by (model, instruction, component, "
        "pooling, layer, stimulus set) with their sizes and SHA-256 digests.",
        "",
    ]
    return "\n".join(lines)
