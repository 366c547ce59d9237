"""A Ray-free, in-process Flower ``Grid``: the default engine for a laptop and for tests.

Messages are executed one after another by calling the ClientApp directly with each node's
``Context`` (node ``i`` has ``partition-id = i``), so runs are deterministic. A ClientApp that
raises yields an error reply; one that runs past ``client_timeout_s`` is abandoned (its daemon
thread is left to finish on its own) and yields no reply, as a silent node would. It relies on
two flwr internals, as the facts file notes: the run identity and setting message ids.
"""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Iterable

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ERROR_CLIENT_APP_RAISED = 300  # the code Flower uses for "ClientApp raised an exception"


def as_delivered(content: RecordDict) -> RecordDict:
    """What a node receives over a network is its own copy: here its config and metric records are copied
    (a client mod may change them: SecAgg+'s pops its stage from the config), its arrays shared read-only
    (no copy of the global state per client)."""
    out = RecordDict()
    for key, record in content.items():
        out[key] = record if isinstance(record, ArrayRecord) else type(record)(dict(record))
    return out


class InProcessGrid(Grid):
    def __init__(self, client_app, num_nodes: int, client_timeout_s: float | None = None, run_config=None):
        self._client_app = client_app
        self._timeout = client_timeout_s
        self._run = Run.create_empty(run_id=1)
        TaskIdentity.run_id = 1  # flwr internal: Message() reads the run id of the current task
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = 1
        self._node_ids = list(range(1, num_nodes + 1))
        self._partition = {nid: i for i, nid in enumerate(self._node_ids)}
        self._run_config = dict(run_config or {})
        self._replies: dict[str, Message] = {}
        self._contexts: dict[int, Context] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def _context(self, node_id: int) -> Context:
        """The node's context, kept for the grid's life as a SuperNode keeps it (SecAgg+'s client mod keeps
        its protocol state there between a round's messages)."""
        if node_id not in self._contexts:
            node_config = {"partition-id": self._partition[node_id], "num-partitions": len(self._node_ids)}
            self._contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=node_config,
                                              state=RecordDict(), run_config=self._run_config)
        return self._contexts[node_id]

    def _execute(self, msg: Message) -> Message | None:
        box: dict[str, Message] = {}

        def target() -> None:
            try:
                reply = self._client_app(msg, self._context(msg.metadata.dst_node_id))
            except Exception as exc:  # noqa: BLE001 - a failing client becomes an error reply
                reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
                reply = Message(Error(code=ERROR_CLIENT_APP_RAISED, reason=reason), reply_to=msg)
            box["reply"] = reply

        if self._timeout is None:
            target()
        else:
            worker = threading.Thread(target=target, daemon=True, name=f"client-{msg.metadata.dst_node_id}")
            worker.start()
            worker.join(self._timeout)
        reply = box.get("reply")
        if reply is not None:
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_run_id"] = 1
            msg.content = as_delivered(msg.content)
            reply = self._execute(msg)
            if reply is not None:
                self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
