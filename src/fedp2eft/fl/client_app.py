"""The ClientApp. Handlers only translate messages into ``worker`` calls and back.

A node serves one client: ``node_config["client-id"]`` names it (e.g. ``"hau-seen-00"``), or
``node_config["partition-id"]`` is its index in the federation's client list (all languages,
both pools; what the in-process and simulation engines set). ``query`` tells the server which client and pool the
node holds; ``train`` runs one local update of the job's stage (with FedProx's proximal term when the
strategy sends ``proximal-mu``); ``evaluate`` scores the global model on
the client's test split.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..memory import CLIENT_TRIM_BYTES, trim_freed_memory
from . import worker
from .privacy import dp_clipping_mod
from .records import RecordState, read_job, train_reply
from .secure_aggregation import secagg_mod

app = ClientApp()


def node_client(job, context: Context) -> tuple[str, str]:
    clients = worker.client_ids(job.experiment)
    if "client-id" in context.node_config:  # a SuperNode pinned to one client by name
        cid = str(context.node_config["client-id"])
        pools = dict(clients)
        if cid not in pools:
            raise ValueError(f"node client-id {cid!r} is not a client of this federation")
        return cid, pools[cid]
    pid = int(context.node_config.get("partition-id", -1))
    if not 0 <= pid < len(clients):
        raise ValueError(f"node partition-id {pid} outside the federation's {len(clients)} clients")
    return clients[pid]


@app.query()
def query(msg: Message, context: Context) -> Message:
    cid, pool = node_client(read_job(msg.content), context)
    return Message(RecordDict({"client": ConfigRecord({"client-id": cid, "pool": pool})}), reply_to=msg)


@app.train(mods=[secagg_mod, dp_clipping_mod])  # Flower's SecAgg+ and client-side DP clipping, when a round asks
def train(msg: Message, context: Context) -> Message:
    job = read_job(msg.content)
    cid, _ = node_client(job, context)
    state = RecordState(msg.content.array_records["arrays"])
    mu = float(msg.content.config_records["config"].get("proximal-mu", 0.0))  # FedProx's, set by the strategy
    new_state, n, metrics = worker.train(job, cid, state, mu)
    trim_freed_memory(CLIENT_TRIM_BYTES)  # a SuperNode or Ray worker serves many clients over its life
    return Message(train_reply(new_state, n, metrics), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    job = read_job(msg.content)
    cid, _ = node_client(job, context)
    sums, n = worker.evaluate(job, cid, RecordState(msg.content.array_records["arrays"]))
    trim_freed_memory(CLIENT_TRIM_BYTES)
    # per metric the task names: its sum over the rows (what the server pools) and the client's mean
    metrics = MetricRecord({"num-examples": n, **{f"sum-{m}": s for m, s in sums.items()},
                            **{m: s / max(n, 1) for m, s in sums.items()}})
    reply = RecordDict({"metrics": metrics, "client": ConfigRecord({"client-id": cid})})
    return Message(reply, reply_to=msg)
