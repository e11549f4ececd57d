"""Walking a SavedModel's object graph (`SavedObjectGraph`, and the checkpoint's `TrackableObjectGraph`, which
shares its node ids): a node's named child, and the node at a Keras metadata path such as `root.layer-2`.
Pure proto reading, shared by the SavedModel reader (`toolkit.models.keras2.savedmodel`) and the Lambda
placeholders (`toolkit.models.keras2.traced_lambda`)."""

from __future__ import annotations

from typing import Any


def child_id(node: Any, name: str) -> int | None:
    """The node id of `node`'s child called `name` (`variables`, `keras_api`, `layer-2`), None if absent."""
    return next((c.node_id for c in node.children if c.local_name == name), None)


def object_node(graph: Any, path: str) -> Any:
    """The object graph node at a Keras metadata path (`root.layer-2`, `root.inner.layer-1`); None if absent."""
    node = graph.nodes[0] if graph.nodes else None
    for part in path.split(".")[1:]:
        child = child_id(node, part) if node is not None else None
        node = graph.nodes[child] if child is not None and child < len(graph.nodes) else None
    return node
