"""Fed-Aya (FedLLM-Bench): multilingual instruction tuning, clients = Aya annotators.

Three sources, one federation (method-facts "Data setups", data README "aya/"):

- FedLLM-Bench's ``aya_38c_25k.json``: a JSON object whose values are the 38 clients' row lists
  (rows with ``instruction``, ``response`` and a two-letter ``language``), clients numbered in the
  file's key order as FedLLM-Bench's and the FedP²EFT authors' loaders do; the paper's unseen pool is
  clients 21–27 and 34, the other 30 are seen.
- The hub's ``CohereForAI/aya_dataset`` (train split, with ``user_id``): clients are the
  ``num_clients`` annotators with most rows in the 8 languages (as FedLLM-Bench chose its 38).
- A JSONL of Aya rows without annotator ids (``../shared/data/aya/aya_sample.jsonl``): clients are
  *simulated* — client k speaks m_k ∈ {1..4} languages (drawn in proportion to each language's
  rows) with its own Dirichlet(α) mix over them; every language's rows are then split among the
  clients that speak it in proportion to (client size × its share of that language), client sizes
  drawn log-normal, so sizes are unequal and languages mix as annotators' do.

Only the 8 Fed-Aya languages are kept (ar en es fr pt ru te zh; every Arabic variety is ``ar``).
Each client's rows are split 80/20 into train and test (seeded). Seen or unseen is decided per
client. Deterministic in ``partition_seed``.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .partition import Client, Federation, FederationSpec
from .records import Instruction
from .registry import DatasetSpec, register_dataset

AYA_LANGUAGES = ("ar", "en", "es", "fr", "pt", "ru", "te", "zh")
HUB_REPO = "CohereForAI/aya_dataset"
FEDAYA_CLIENTS = 38
FEDAYA_UNSEEN = (21, 22, 23, 24, 25, 26, 27, 34)  # the paper's unseen pool of Fed-Aya's 38 clients
_ARABIC = {"ar", "ara", "arb", "ary", "arz", "ars", "ajp", "acq", "apc", "acm", "aeb", "afb", "apd", "ayl", "acw"}
_ISO3 = {"eng": "en", "spa": "es", "fra": "fr", "por": "pt", "rus": "ru", "tel": "te", "zho": "zh", "cmn": "zh",
         "yue": "zh"}
_NAMES = {"english": "en", "spanish": "es", "french": "fr", "portuguese": "pt", "russian": "ru", "telugu": "te",
          "chinese": "zh", "simplified chinese": "zh", "traditional chinese": "zh"}


def fedaya_language(row: dict) -> str | None:
    """The Fed-Aya two-letter code of a row (``lang``, else ``language_code``, else ``language``: a code, as
    in FedLLM-Bench's file, or a name, as in Aya's), or None."""
    for key in ("lang", "language"):
        lang = str(row.get(key) or "").lower()
        if lang in AYA_LANGUAGES:
            return lang
    code = str(row.get("language_code") or "").lower()
    if code in _ARABIC:
        return "ar"
    if code in _ISO3:
        return _ISO3[code]
    name = str(row.get("language") or "").lower()
    return "ar" if "arabic" in name else _NAMES.get(name)


@dataclass(frozen=True)
class AyaRow:
    instruction: Instruction
    user: str | None


_FIELDS = (("inputs", "targets"), ("instruction", "response"))  # Aya's names, FedLLM-Bench's names


def parse_rows(records, where: str, keep: tuple[str, ...] = AYA_LANGUAGES, users: list | None = None) -> list[AyaRow]:
    """Aya records (dicts with ``inputs``/``targets`` or ``instruction``/``response``) → rows in the kept
    languages; ``users[i]`` (else the row's ``user_id``) is row i's client. A record that is not an
    object, lacks the fields or has an empty instruction or response is an error naming its row."""
    rows = []
    for i, rec in enumerate(records, start=1):
        if not isinstance(rec, dict):
            raise UserError(f"{where}: row {i} is not a JSON object")
        names = next((f for f in _FIELDS if all(k in rec for k in f)), None)
        if names is None:
            raise UserError(f"{where}: row {i} lacks an instruction and response (fields inputs/targets "
                            f"or instruction/response); it has {sorted(rec)}")
        prompt, response = (str(rec[k] or "").strip() for k in names)
        if not prompt or not response:
            raise UserError(f"{where}: row {i} has an empty {names[0] if not prompt else names[1]}")
        lang = fedaya_language(rec)
        if lang is None or lang not in keep:
            continue
        user = users[i - 1] if users is not None else rec.get("user_id")
        rows.append(AyaRow(Instruction(prompt, response, lang), None if user in (None, "") else str(user)))
    if not rows:
        raise UserError(f"{where}: no rows in the languages {list(keep)}")
    return rows


def read_json_rows(path: Path) -> tuple[list, list | None]:
    """``(records, users)`` of a FedLLM-Bench JSON object ({client: [rows]}: ``users`` are the keys, in
    file order), a JSON list of rows or JSON Lines (``users`` None: rows carry ``user_id`` or nothing)."""
    if not path.is_file():
        raise UserError(f"Aya data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"{path}: empty file")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {n} is not valid JSON ({exc.msg})") from None
        return records, None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):  # FedLLM-Bench: client -> its rows
        records, users = [], []
        for key, value in data.items():
            if not isinstance(value, list):
                raise UserError(f"{path}: client {key!r} is not a list of rows")
            records.extend(value)
            users.extend([str(key)] * len(value))
        return records, users
    if not isinstance(data, list):
        raise UserError(f"{path}: expected FedLLM-Bench's object of client row lists, or a list of rows")
    return data, None


def load_hub_rows() -> list[dict]:
    try:
        import datasets

        return list(datasets.load_dataset(HUB_REPO, split="train"))
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one line
        raise UserError(f"cannot load {HUB_REPO} from the hub ({type(exc).__name__}); "
                        "point data.path at FedLLM-Bench's aya_38c_25k.json or a JSONL of Aya rows") from None


def _seed(spec: FederationSpec, *parts: str) -> int:
    return zlib.crc32("|".join([str(spec.seed), *parts]).encode())


def group_by_user(rows: list[AyaRow], num_clients: int = 0, users: list[str] | None = None) -> list[list[Instruction]]:
    """Clients = annotators, in the order ``users`` gives (FedLLM-Bench's file order: a client keeps its
    number even when none of its rows is in the kept languages), else by first appearance;
    ``num_clients`` > 0 keeps the largest ones (ties by order), still in that order."""
    order: dict[str, list[Instruction]] = {u: [] for u in users or []}
    for r in rows:
        order.setdefault(r.user, []).append(r.instruction)
    users = list(order)
    if num_clients and len(users) > num_clients:
        keep = set(sorted(users, key=lambda u: (-len(order[u]), users.index(u)))[:num_clients])
        users = [u for u in users if u in keep]
    return [order[u] for u in users]


def simulate_clients(rows: list[Instruction], num_clients: int, alpha: float, spec: FederationSpec,
                     groups: list[set[int]] | None = None) -> list[list[Instruction]]:
    """Simulated annotators for rows without ids (module docstring). Every language reaches at least one
    client of each of ``groups`` (the pools; default: all clients as one group). A client's rows come in
    a seeded random order, so a cap on its rows keeps its language mix."""
    rng = np.random.default_rng(_seed(spec, "aya-simulate"))
    langs = sorted({r.language for r in rows})
    counts = np.array([sum(r.language == lang for r in rows) for lang in langs], dtype=float)
    size = rng.lognormal(0.0, 0.75, num_clients)
    share = np.zeros((num_clients, len(langs)))
    for k in range(num_clients):
        m = int(rng.integers(1, min(4, len(langs)) + 1))
        chosen = rng.choice(len(langs), size=m, replace=False, p=counts / counts.sum())
        share[k, chosen] = rng.dirichlet([alpha] * m)
    for group in [g for g in groups or [set(range(num_clients))] if g]:
        members = np.array(sorted(group))
        for j in np.flatnonzero(share[members].sum(0) == 0):  # reach a client of the group that speaks < 4
            open_ = members[(share[members] > 0).sum(1) < 4]
            k = int(rng.choice(open_)) if len(open_) else int(rng.choice(members))
            share[k, j] = share[k].sum() / max(1, (share[k] > 0).sum())
    clients: list[list[Instruction]] = [[] for _ in range(num_clients)]
    for j, lang in enumerate(langs):
        idx = [i for i, r in enumerate(rows) if r.language == lang]
        rng.shuffle(idx)
        weight = size * share[:, j]
        cuts = (np.cumsum(weight / weight.sum())[:-1] * len(idx)).round().astype(int)
        for k, part in enumerate(np.split(np.array(idx, dtype=int), cuts)):
            clients[k].extend(rows[i] for i in part)
    for client in clients:
        rng.shuffle(client)
    return clients


def unseen_indices(num_clients: int, given: list[int] | None, fraction: float = 8 / 38) -> set[int]:
    """The unseen pool: ``given``; by default Fed-Aya's 21–27 and 34 for 38 clients, else the last
    ``fraction`` of the clients (at least one)."""
    if given:
        bad = [i for i in given if not 0 <= i < num_clients]
        if bad:
            raise UserError(f"data.unseen_clients {bad}: there are {num_clients} clients (0..{num_clients - 1})")
        return set(given)
    if num_clients == FEDAYA_CLIENTS:
        return set(FEDAYA_UNSEEN)
    return set(range(num_clients - max(1, round(fraction * num_clients)), num_clients))


def split_client(rows: list[Instruction], test_fraction: float, rng: np.random.Generator) -> tuple[list, list]:
    order = rng.permutation(len(rows)).tolist()
    n_test = min(max(1, round(test_fraction * len(rows))), len(rows) - 1)
    return [rows[i] for i in sorted(order[n_test:])], [rows[i] for i in sorted(order[:n_test])]


def build_aya_federation(rows: list[AyaRow], spec: FederationSpec, num_clients: int = 0,
                         unseen: list[int] | None = None, test_fraction: float = 0.2,
                         languages: list[str] | None = None, users: list[str] | None = None) -> Federation:
    """Seen and unseen clients from Aya rows: annotators when every row has a ``user_id``, else simulated."""
    if languages:
        unknown = [lang for lang in languages if lang not in AYA_LANGUAGES]
        if unknown:
            raise UserError(f"unknown language(s) {unknown} for aya; languages are {list(AYA_LANGUAGES)}")
        rows = [r for r in rows if r.instruction.language in languages]
        if not rows:
            raise UserError(f"aya: no rows in the languages {languages}")
    if all(r.user is not None for r in rows):
        groups = group_by_user(rows, num_clients, users)
        source = "annotators"
    else:
        n = num_clients or FEDAYA_CLIENTS
        hidden = unseen_indices(n, unseen)
        groups = simulate_clients([r.instruction for r in rows], n, spec.alpha, spec,
                                  [set(range(n)) - hidden, hidden])
        source = "simulated"
    pools = unseen_indices(len(groups), unseen)
    fed = Federation(dataset="aya", label_names=[], spec=spec, source=source)
    for k, group in enumerate(groups):
        if not group:  # none of its rows is in the kept languages; the others keep their numbers
            continue
        if len(group) < spec.min_train_per_client + 1:
            raise UserError(f"aya client {k} ({source}) has {len(group)} rows: too few for >= "
                            f"{spec.min_train_per_client} train and 1 test row; lower data.num_clients")
        train, test = split_client(group, test_fraction, np.random.default_rng(_seed(spec, "aya-split", str(k))))
        main = Counter(r.language for r in group).most_common(1)[0][0]
        pool = "unseen" if k in pools else "seen"
        fed.clients.append(Client(cid=f"aya{k:02d}-{main}-{pool}", language=main, pool=pool, train=train, test=test))
    return fed


def load_aya_federation(path: str | None, spec: FederationSpec, num_clients: int = 0,
                        unseen: list[int] | None = None, languages: list[str] | None = None) -> Federation:
    """The Fed-Aya federation from ``path`` (FedLLM-Bench JSON or JSONL) or, without a path, the hub."""
    if path:
        p = Path(path).expanduser()
        if p.is_dir():
            found = sorted([*p.glob("*.json"), *p.glob("*.jsonl")])
            if len(found) != 1:
                raise UserError(f"{p}: expected one .json or .jsonl file of Aya rows, found {[f.name for f in found]}")
            p = found[0]
        records, users = read_json_rows(p)
        rows = parse_rows(records, str(p), users=users)
    else:
        users, rows = None, parse_rows(load_hub_rows(), f"hub:{HUB_REPO}")
    order = list(dict.fromkeys(users)) if users is not None else None
    return build_aya_federation(rows, spec, num_clients, unseen, languages=languages, users=order)


def _load_aya(d, spec: FederationSpec) -> Federation:
    return load_aya_federation(d.path or None, spec, d.num_clients, d.unseen_clients or None, d.languages or None)


# Fed-Aya: instruction rows of many annotators; clients are annotators (or simulated from rows without ids)
AYA = register_dataset(DatasetSpec(name="aya", task="generation", load=_load_aya, keys=("num_clients", "unseen_clients")))
