"""WordNet 3.0 for nltk's METEOR, assembled from Debian's ``wordnet-base`` and
``wordnet-sense-index`` packages (no nltk downloader, which needs the internet).

nltk reads ``$NLTK_DATA/corpora/wordnet/`` and also needs a ``lexnames`` file (the 45
lexicographer files, listed in the ``lexnames.5WN`` man page) that Debian does not ship
as a data file; it is generated here from the man page.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

from ..errors import UserError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_REQUIRED = ("data.noun", "index.noun", "index.sense", "adj.exc")


def nltk_data_dir() -> Path:
    from ..models.packaged import fedp2eft_home

    return Path(os.environ.get("NLTK_DATA", str(fedp2eft_home() / "nltk_data")))


def lexnames_lines(man_page: Path = LEXNAMES_MAN) -> list[str]:
    text = gzip.decompress(man_page.read_bytes()).decode("utf-8", "replace")
    lines = []
    for m in re.finditer(r"^(\d\d)\t(\w+)\.(\w+)", text, flags=re.MULTILINE):
        num, pos, name = m.groups()
        lines.append(f"{num}\t{pos}.{name}\t{_CATEGORY[pos]}")
    if len(lines) != 45:
        raise UserError(f"{man_page}: expected 45 lexicographer files, found {len(lines)}")
    return lines


def prepare_wordnet(target: Path | None = None) -> Path:
    """Build ``<NLTK_DATA>/corpora/wordnet`` from Debian's files; returns the folder."""
    missing = [f for f in _REQUIRED if not (DEBIAN_WORDNET / f).is_file()]
    if missing or not LEXNAMES_MAN.is_file():
        raise UserError(
            "WordNet files missing; run: apt-get install wordnet-base wordnet-sense-index (or bash scripts/setup.sh)"
        )
    root = (target or nltk_data_dir()) / "corpora" / "wordnet"
    root.mkdir(parents=True, exist_ok=True)
    # copies, not symlinks: nltk refuses corpus paths that resolve outside its root
    for f in DEBIAN_WORDNET.iterdir():
        dest = root / f.name
        if f.is_file() and (not dest.is_file() or dest.stat().st_size != f.stat().st_size):
            shutil.copyfile(f, dest)
    (root / "lexnames").write_text("\n".join(lexnames_lines()) + "\n")
    return root
