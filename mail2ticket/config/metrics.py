"""The [metrics] table: where the daemon writes its metrics for node_exporter's textfile
collector (docs/metrics.md). How often is [schedule] metrics (default every minute)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mail2ticket.config.checks import check_table, is_str
from mail2ticket.errors import ConfigError

METRICS_KEYS: dict[str, tuple[Any, Any, str]] = {
    "textfile": (is_str, None, 'a file path ending in .prom, such as '
                 '"/var/lib/node_exporter/textfile_collector/mail2ticket.prom"'),
}


def check_metrics(path: Path, data: Any) -> Path | None:
    """The checked [metrics] table: the textfile's absolute path (relative to the config file's
    folder), or None when the daemon writes none."""
    metrics = check_table(path, "metrics", data, METRICS_KEYS)
    textfile = metrics["textfile"]
    if textfile is None:
        return None
    if not textfile.endswith(".prom"):
        raise ConfigError(
            f"{path}: 'metrics.textfile' = {textfile!r} does not end in .prom",
            "node_exporter's textfile collector reads only *.prom files",
        )
    return (path.parent / os.path.expanduser(textfile)).resolve()
