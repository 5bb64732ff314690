"""Fitted (scikit-learn) parts of a bundle, stored with skops: which types a file would build.

A bundle's fitted parts are loaded only after its skops schema has been read and every type in it
found on the model's own allow-list; skops then builds exactly those types. Plain pickle or joblib
files are never loaded.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any


def skops_types(path: Path) -> set[str]:
    """``module.Class`` of every node of a skops file's schema (objects, arrays, referenced types)."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
