"""metadata/codes.parquet for a MIMIC-IV ingest: a description for every code the events hold, and parent
codes where the source has a hierarchy (ICD, LOINC), from the ``descriptions`` rules of rules.yaml.

This runs on the driver over the distinct codes (thousands on the demo, some hundred thousand on the full
database) and the dictionary tables (at most ~110k rows each): a dictionary is read once with pyarrow, every
code is matched in Python. No Spark job is needed for it, and each piece can be tested on its own.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import pyarrow as pa

from ehrfm.ingest.mimic.rules import PLACEHOLDER
from ehrfm.schema import CODES_SCHEMA

if TYPE_CHECKING:
    from ehrfm.ingest.mimic.rules import DescriptionRule, Dictionary, MimicRules

Fields = dict[str, str]
MISSING_CELL = "?"  # a blank cell of a dictionary row that exists


@dataclass(frozen=True)
class Chapter:
    """One row of icd_chapters.csv: codes whose first ``len(first)`` characters lie in [first, last]."""

    system: str
    first: str
    last: str
    title: str

    @property
    def parent(self) -> str:
        """The chapter as a parent code: ``ICD10CM/E00-E89`` (``ICD10PCS/0`` for a one-value range)."""
        span = self.first if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.system}/{span}"

    def holds(self, code: str) -> bool:
        """Whether ``code`` (undotted) falls in this chapter."""
        head = code[: len(self.first)]
        return len(head) == len(self.first) and self.first <= head <= self.last


@lru_cache(maxsize=1)
def icd_chapters() -> tuple[Chapter, ...]:
    """The chapter table shipped beside rules.yaml (ICD-9-CM, ICD-10-CM, ICD-9 procedures, ICD-10-PCS)."""
    text = resources.files("ehrfm.ingest.mimic").joinpath("icd_chapters.csv").read_text(encoding="utf-8")
    return tuple(Chapter(**row) for row in csv.DictReader(text.splitlines()))


def chapter_of(system: str, code: str) -> Chapter | None:
    """The chapter of ``code`` in ``system`` (e.g. ``ICD10CM``), None when no range holds it."""
    return next((c for c in icd_chapters() if c.system == system and c.holds(code)), None)


def _dot(code: str, at: int) -> str:
    return f"{code[:at]}.{code[at:]}" if len(code) > at else code


def derive_icd_diagnosis(fields: Mapping[str, str]) -> Fields:
    """``_icd_parent`` in the MEDS MIMIC-IV ETL's form (``ICD9CM/250.00``, ``ICD9CM/E849.0``,
    ``ICD10CM/E11.9``: a dot after the category, four characters for ICD-9 E codes, three otherwise) and
    ``_icd_chapter`` (the chapter range). Versions other than 9 and 10 derive nothing."""
    version, code = fields.get("icd_version"), fields.get("icd_code")
    if version not in ("9", "10") or not code:
        return {}
    system = f"ICD{version}CM"
    dotted = _dot(code, 4 if version == "9" and code.startswith("E") else 3)
    out = {"_icd_parent": f"{system}/{dotted}"}
    chapter = chapter_of(system, code)
    if chapter is not None:
        out["_icd_chapter"] = chapter.parent
    return out


def derive_icd_procedure(fields: Mapping[str, str]) -> Fields:
    """``_icd_parent`` as the ETL writes it (``ICD9Proc/54.91``: a dot after two digits; ``ICD10PCS/<code>``
    undotted) and ``_icd_chapter`` (ICD-9 procedure chapter range, or the ICD-10-PCS section)."""
    version, code = fields.get("icd_version"), fields.get("icd_code")
    if version not in ("9", "10") or not code:
        return {}
    system = "ICD9Proc" if version == "9" else "ICD10PCS"
    out = {"_icd_parent": f"{system}/{_dot(code, 2) if version == '9' else code}"}
    chapter = chapter_of(system, code)
    if chapter is not None:
        out["_icd_chapter"] = chapter.parent
    return out


DERIVED: dict[str, Callable[[Mapping[str, str]], Fields]] = {
    "icd_diagnosis": derive_icd_diagnosis,
    "icd_procedure": derive_icd_procedure,
}


def fill(template: str, fields: Mapping[str, str | None]) -> str | None:
    """``template`` with each ``{field}`` replaced; None when a field is absent or blank."""
    missing = False

    def one(m: re.Match[str]) -> str:
        nonlocal missing
        value = fields.get(m.group(1))
        if value is None or not value.strip():
            missing = True
            return ""
        return value

    out = PLACEHOLDER.sub(one, template)
    return None if missing else out


Lookup = Callable[["Dictionary"], "dict[tuple[str, ...], Fields] | None"]


def read_dictionary(root: str, path: str, key: tuple[str, ...], requires: str | None = None
                    ) -> dict[tuple[str, ...], Fields] | None:
    """``<root>/<path>.csv(.gz)`` as {key values: row}, every column a trimmed string (blank cells left
    out); None when the table is absent or lacks ``requires``. The first row of a repeated key wins."""
    import pyarrow.csv as pacsv

    from ehrfm.ingest.mimic.prepare import csv_header, find_table
    from ehrfm.ingest.writer import _fs

    uri = find_table(root, path)
    if uri is None:
        return None
    header = csv_header(uri)
    if requires is not None and requires not in header:
        return None
    missing = [k for k in key if k not in header]
    if missing:
        raise ValueError(f"MIMIC dictionary {path}: no key column(s) {missing}")
    fs, p = _fs(uri)
    # strings only: ICD and NDC codes keep their leading zeros
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=True)
    with fs.open_input_stream(p, compression="gzip" if uri.endswith(".gz") else None) as f:
        table = pacsv.read_csv(f, convert_options=convert)
    out: dict[tuple[str, ...], Fields] = {}
    for row in table.to_pylist():
        clean = {c: v.strip() for c, v in row.items() if v is not None and v.strip()}
        k = tuple(clean.get(c, "") for c in key)
        out.setdefault(k, clean)
    return out


@dataclass
class CodeMeta:
    """What the rules say about one code so far."""

    description: str | None = None
    parents: tuple[str, ...] = ()


def _apply(rule: DescriptionRule, m: re.Match[str], text: str | None, lookup: Lookup, meta: CodeMeta) -> None:
    """Fold one matching rule into ``meta``: the first rule (in file order) that describes the code wins,
    by its description or else its fallback; parents add up over all matching rules (a parent whose
    template has a blank or absent field is left out)."""
    fields: dict[str, str | None] = {k: v for k, v in m.groupdict().items() if v}
    fields["text_value"] = text
    if rule.derive is not None:
        fields.update(DERIVED[rule.derive]({k: v for k, v in fields.items() if v is not None}))
    row_found = True
    if rule.dictionary is not None:
        table = lookup(rule.dictionary)
        if table is None and rule.dictionary.requires is not None:
            return  # the dictionary lacks the column this rule is for (e.g. loinc_code in MIMIC-IV v2.x)
        row = None if table is None else table.get(tuple(fields.get(k) or "" for k in rule.dictionary.key))
        row_found = row is not None
        for c, v in (row or {}).items():
            fields.setdefault(c, v)
    if meta.description is None and rule.description is not None and row_found:
        # a dictionary row that exists but has a blank cell still describes the code
        cells = {c: MISSING_CELL for c in PLACEHOLDER.findall(rule.description) if not fields.get(c)}
        meta.description = fill(rule.description, {**fields, **cells} if rule.dictionary else fields)
    if meta.description is None and rule.fallback is not None:
        meta.description = fill(rule.fallback, fields)
    found = [p for p in (fill(t, fields) for t in rule.parents) if p is not None]
    meta.parents += tuple(p for p in found if p not in meta.parents)


def describe(codes: Mapping[str, str | None], rules: MimicRules, lookup: Lookup) -> pa.Table:
    """CODES_SCHEMA rows for ``codes`` (code -> a text_value of its events, or None), sorted by code.

    Raises ``ValueError`` when codes match no rule that describes them, naming their families (the part
    before the first ``//``) and how many, not the codes (they may hold source text)."""
    compiled = [(r, r.regex) for r in rules.descriptions]
    rows: list[tuple[str, str | None, list[str] | None]] = []
    undescribed: dict[str, int] = {}
    for code in sorted(codes):
        meta = CodeMeta()
        for rule, rx in compiled:
            m = rx.fullmatch(code)
            if m is not None:
                _apply(rule, m, codes[code], lookup, meta)
        desc = meta.description
        if desc is None:
            family = code.split("//", 1)[0]
            undescribed[family] = undescribed.get(family, 0) + 1
        rows.append((code, desc, sorted(meta.parents) or None))
    if undescribed:
        raise ValueError(f"MIMIC rules: codes match no description rule (family: count) {undescribed};"
                         " add a `descriptions` entry to rules.yaml")
    return pa.table({"code": [r[0] for r in rows], "description": [r[1] for r in rows],
                     "parent_codes": [r[2] for r in rows]}, schema=CODES_SCHEMA)


def dictionary_lookup(root: str) -> Lookup:
    """A lookup that reads each dictionary under ``root`` once (per path, key and required column)."""
    cache: dict[Dictionary, dict[tuple[str, ...], Fields] | None] = {}

    def lookup(d: Dictionary) -> dict[tuple[str, ...], Fields] | None:
        if d not in cache:
            cache[d] = read_dictionary(root, d.path, d.key, d.requires)
        return cache[d]

    return lookup


def code_metadata(codes: Mapping[str, str | None], root: str, rules: MimicRules) -> pa.Table:
    """CODES_SCHEMA table describing ``codes`` from the dictionaries under ``root`` (see :func:`describe`)."""
    return describe(codes, rules, dictionary_lookup(root))
