"""The built-in demo: a real run of the four agents, offline, on a small document folder.

Five steps (so the coordinator decomposes the goal), all four roles, and one high-risk action
(deleting a file) that waits for a human's approval. Everything runs locally: the SQLite log,
local Ray, the rule-based offline model.
"""

from __future__ import annotations

from pathlib import Path

DEMO_GOAL = (
    "Find what the docs say about the customer data retention policy. "
    "Then write a retention summary to report.md. "
    "Then check that report.md mentions retention. "
    'Then commit the report with message "Add retention summary". '
    "Then delete the scratch file notes.tmp"
)

_DOCS = {
    "retention-policy.md": """# Customer data retention policy

Customer records are kept for two years after the last order, then deleted.
Invoices are kept for ten years because tax law requires it.
Deletion of customer data needs the approval of the data protection officer.
""",
    "runbook.md": """# Operations runbook

Backups run nightly at 02:00 and are kept for 30 days.
Retention jobs run on the first day of each month and report what they removed.
""",
}


def prepare_demo(root: Path) -> tuple[Path, Path]:
    """Write the demo's document folder and a fresh workspace under ``root``; return both."""
    docs = root / "demo-docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name, text in _DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    n = 1
    while (root / "demo-workspaces" / f"demo-{n}").exists():
        n += 1
    workspace = root / "demo-workspaces" / f"demo-{n}"
    workspace.mkdir(parents=True)
    (workspace / "notes.tmp").write_text("scratch notes from an earlier session\n")
    return docs, workspace
