"""FHIR version detection (:mod:`ehrfm.ingest.fhir.versions`) and validation with the matching models.

Real STU3 data: every mapped-type resource of real Synthea R4 bundles is rewritten into its STU3 form by the
documented STU3 -> R4 changes (hl7.org/fhir/R4/<type>-version-maps.html; the list is in :func:`to_stu3`).
The STU3 models must accept each rewritten resource (so the rewrite is real STU3), ``--validate full`` must
reject none of them (both engines), the R4 models alone must reject many of them (the bug this fixes), and
the STU3 bundles must map to the same MEDS events as the R4 originals; the same for R5 rewrites
(:func:`to_r5`). ``fhir.resources`` 8.3 ships no STU3 example files (its STU3 tests read the FHIR spec's
examples from a folder the wheel does not contain), so a few spec examples are written out below from the
STU3 specification.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.config.base import ConfigError
from ehrfm.config.ingest import FhirIngestConfig
from ehrfm.ingest.fhir import fastvalidate, spark_ingest
from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.rules import load_rules
from ehrfm.ingest.fhir.tables import sort_events
from ehrfm.ingest.fhir.validate import (
    validate_resource,
    validate_resource_reference,
    validator_engine,
)
from ehrfm.ingest.fhir.versions import (
    check_version,
    detect,
    model_class,
    profile_version,
    source_version,
)
from ehrfm.schema import EVENT_COLUMNS, EVENTS_SCHEMA

Resource = dict[str, Any]
RULES = load_rules()
PAT = {"reference": "Patient/p1"}
CVX = {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]}
FAR = 1 << 62  # max_time_us: nothing in the test data is "in the future"


# ---------------------------------------------------------------------------------------------- detection
def test_shape_decides_the_version() -> None:
    """Keys, primitive-vs-object and list-vs-single differences each point at the version that has them."""
    r4_imm = {"resourceType": "Immunization", "status": "completed", "patient": PAT, "vaccineCode": CVX,
              "occurrenceDateTime": "2015-06-01", "primarySource": True}
    stu3_imm = {"resourceType": "Immunization", "status": "completed", "patient": PAT, "vaccineCode": CVX,
                "date": "2015-06-01", "notGiven": False, "primarySource": True}
    assert detect(r4_imm, RULES) == "R4" and detect(stu3_imm, RULES) == "STU3"
    # Condition.clinicalStatus: an STU3 code, an R4 CodeableConcept
    cond = {"resourceType": "Condition", "subject": PAT, "code": {"text": "x"}}
    assert detect({**cond, "clinicalStatus": "active"}, RULES) == "STU3"
    assert detect({**cond, "clinicalStatus": {"coding": [{"code": "active"}]}}, RULES) == "R4"
    # a nested difference only: STU3 MedicationRequest.requester is {agent: Reference}
    mr = {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": PAT,
          "medicationCodeableConcept": {"text": "x"}}
    assert detect({**mr, "requester": {"reference": "Practitioner/1"}}, RULES) == "R4"
    assert detect({**mr, "requester": {"agent": {"reference": "Practitioner/1"}}}, RULES) == "STU3"
    # R5: Encounter.class is a list of CodeableConcepts, period became actualPeriod
    enc = {"resourceType": "Encounter", "status": "completed", "subject": PAT}
    assert detect({**enc, "class": [{"coding": [{"code": "IMP"}]}], "actualPeriod": {"start": "2020"}},
                  RULES) == "R5"
    assert detect({**enc, "status": "finished", "class": {"code": "IMP"}, "period": {"start": "2020"}},
                  RULES) == "R4"
    # a type only STU3 has
    assert detect({"resourceType": "ProcedureRequest", "status": "active", "intent": "order",
                   "subject": PAT, "code": {"text": "x"}}, RULES) == "STU3"


def test_fewest_misfits_win_when_no_version_fits() -> None:
    """An R4 resource with one stray STU3-only key stays R4 when the rest says R4 (and is then rejected)."""
    res = {"resourceType": "Immunization", "status": "completed", "patient": PAT, "vaccineCode": CVX,
           "occurrenceDateTime": "2015-06-01", "primarySource": True, "isSubpotent": False,
           "notGiven": False}  # isSubpotent: R4 only; notGiven: STU3 only; occurrenceDateTime: R4 only
    assert detect(res, RULES) == "R4"
    problem = validate_resource(res, RULES)
    assert problem is not None and problem[0] == "notGiven"
    assert problem[1].startswith("invalid R4B Immunization")


def test_profiles_explicit_versions_and_ties() -> None:
    """A profile or the source's version breaks ties; an explicit version is used as is."""
    pat: Resource = {"resourceType": "Patient", "gender": "female"}  # fits every version
    assert detect(pat, RULES) == "R4"
    core = "http://hl7.org/fhir/StructureDefinition/Patient"
    for profile, version in [(f"{core}|3.0.2", "STU3"), (f"{core}|4.0.1", "R4"), (f"{core}|4.3.0", "R4B"),
                             (f"{core}|5.0.0", "R5"),
                             ("http://example.org/fhir/STU3/StructureDefinition/p", "STU3"),
                             ("http://example.org/fhir/R5/StructureDefinition/p", "R5"),
                             ("http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|3.1.1", None)]:
        tagged = {**pat, "meta": {"profile": [profile]}}
        assert profile_version(tagged, RULES) == version, profile
        assert detect(tagged, RULES) == (version or "R4"), profile
    assert detect(pat, RULES, prefer="STU3") == "STU3" and detect(pat, RULES, prefer="R4B") == "R4B"
    # the shape outranks a profile and a preference that do not fit
    stu3_cond = {"resourceType": "Condition", "subject": PAT, "code": {"text": "x"},
                 "clinicalStatus": "active"}
    assert detect({**stu3_cond, "meta": {"profile": [f"{core}|4.0.1"]}}, RULES, prefer="R5") == "STU3"
    # an explicit version: no detection, and the matching models decide
    assert detect(stu3_cond, RULES, "R4") == "R4"
    assert validate_resource(stu3_cond, RULES, "STU3") is None
    problem = validate_resource(stu3_cond, RULES, "R4")
    assert problem is not None and problem[0] == "clinicalStatus"
    assert check_version("stu3") == "STU3" and check_version(" Auto ") == "auto"
    with pytest.raises(ValueError, match="fhir_version"):
        check_version("DSTU2")


def test_source_version() -> None:
    """A Bundle's profile, else the majority of resources that fit one version only; ties say nothing."""
    stu3 = {"resourceType": "Condition", "subject": PAT, "code": {"text": "x"}, "clinicalStatus": "active"}
    # R4 only: STU3 called reasonCode "reason", R5 made class a list
    r4 = {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
          "reasonCode": [{"text": "x"}]}
    pat = {"resourceType": "Patient"}
    fits_r4_and_r5 = {"resourceType": "Condition", "subject": PAT, "clinicalStatus": {"text": "active"}}
    # the first two do not vote
    assert source_version([fits_r4_and_r5, fits_r4_and_r5, stu3], RULES) == "STU3"
    assert source_version([stu3, stu3, r4, pat, pat, pat], RULES) == "STU3"
    assert source_version([stu3, r4, pat], RULES) is None and source_version([pat], RULES) is None
    bundle = {"resourceType": "Bundle", "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/Bundle|5.0.0"]}}
    assert source_version([stu3], RULES, bundle) == "R5"


def test_misfit_counting() -> None:
    """The shape walk counts unknown keys, wrong kinds and wrong list-ness, not primitive values."""
    model = model_class("R4", "Observation")
    ok = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": PAT,
          "valueQuantity": {"value": "not a number"}, "_status": {"extension": []}}
    assert fastvalidate.mismatches(model, ok) == 0
    bad = {**ok, "context": PAT, "code": [{"text": "x"}], "status": {"code": "final"},
           "category": {"text": "single"}}
    assert fastvalidate.mismatches(model, bad) == 4
    assert fastvalidate.mismatches(model, bad, limit=1) <= 3  # stops early past the caller's best


# -------------------------------------------------------------------------------- STU3 from real R4 data
def _move(res: Resource, old: str, new: str) -> None:
    if old in res:
        res[new] = res.pop(old)


def _code(concept: Any) -> Any:
    """R4 CodeableConcept -> the STU3 code it replaced (first coding's code)."""
    return concept["coding"][0]["code"] if isinstance(concept, dict) and concept.get("coding") else concept


def to_stu3(r4: Resource) -> Resource:
    """The STU3 form of an R4 resource of a type ehrfm maps, by the STU3 -> R4 changes of the spec
    (R4 ``<type>-version-maps``), restricted to the elements Synthea writes:

    - ``encounter`` was ``context`` (Condition, Observation, Procedure, DiagnosticReport, MedicationRequest);
    - Condition: ``clinicalStatus``, ``verificationStatus`` were codes, ``recordedDate`` was ``assertedDate``;
    - Encounter: ``reasonCode`` was ``reason``;
    - Immunization: ``occurrenceDateTime`` was ``date``; ``notGiven`` (required) became ``status: not-done``;
    - MedicationRequest: ``requester`` was ``{agent: Reference}``; ``Dosage.doseAndRate[0].doseQuantity`` was
      ``Dosage.doseQuantity``;
    - DiagnosticReport: ``category`` was one CodeableConcept; ``performer`` was ``[{actor: Reference}]``.
    """
    res = copy.deepcopy(r4)
    rtype = res["resourceType"]
    if rtype in ("Condition", "Observation", "Procedure", "DiagnosticReport", "MedicationRequest"):
        _move(res, "encounter", "context")
    if rtype == "Condition":
        for key in ("clinicalStatus", "verificationStatus"):
            if key in res:
                res[key] = _code(res[key])
        _move(res, "recordedDate", "assertedDate")
    elif rtype == "Encounter":
        _move(res, "reasonCode", "reason")
    elif rtype == "Immunization":
        _move(res, "occurrenceDateTime", "date")
        res["notGiven"] = res.get("status") == "not-done"
        if res["notGiven"]:
            res["status"] = "completed"
    elif rtype == "MedicationRequest":
        if "requester" in res:
            res["requester"] = {"agent": res["requester"]}
        for dosage in res.get("dosageInstruction", []):
            rates = dosage.pop("doseAndRate", [])
            if rates and "doseQuantity" in rates[0]:
                dosage["doseQuantity"] = rates[0]["doseQuantity"]
    elif rtype == "DiagnosticReport":
        if isinstance(res.get("category"), list):
            res["category"] = res["category"][0]
        if "performer" in res:
            res["performer"] = [{"actor": p} for p in res["performer"]]
    return res


def _bundles(folder: Path, n: int) -> list[Path]:
    """``n`` patient bundles spread over the size range (compressed size; the two information bundles hold
    no patients and are left out)."""
    paths = sorted((p for p in folder.glob("*.json.gz") if "Information" not in p.name),
                   key=lambda p: p.stat().st_size)
    return paths[:: max(len(paths) // n, 1)][:n]


@pytest.fixture(scope="module")
def pairs(synthea_bundles: Path) -> list[tuple[Resource, Resource]]:
    """(R4 bundle, its STU3 rewrite) for 5 real bundles of different sizes."""
    out = []
    for path in _bundles(synthea_bundles, 5):
        with gzip.open(path) as fh:
            r4 = json.loads(fh.read())
        stu3 = {**r4, "entry": [{**e, "resource": to_stu3(e["resource"])} for e in r4["entry"]]}
        out.append((r4, stu3))
    return out


def _mapped(bundle: Resource) -> list[Resource]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] in RULES.resources]


def test_stu3_rewrites_are_valid_stu3_and_validate_full_accepts_them(
        pairs: list[tuple[Resource, Resource]]) -> None:
    """Every rewritten resource is valid for the STU3 models; both engines accept all of them (none is
    validated as R4); the R4 models alone reject the types whose shape changed (the reported bug)."""
    by_type: dict[str, int] = {}
    r4_rejects: dict[str, int] = {}
    for _, stu3 in pairs:
        for res in _mapped(stu3):
            rtype = res["resourceType"]
            by_type[rtype] = by_type.get(rtype, 0) + 1
            model_class("STU3", rtype).model_validate(res)  # raises when the rewrite is not STU3
            assert validate_resource_reference(res, RULES) is None, rtype
            with validator_engine("fast"):
                assert validate_resource(res, RULES) is None, rtype
            if validate_resource_reference(res, RULES, "R4") is not None:
                r4_rejects[rtype] = r4_rejects.get(rtype, 0) + 1
    assert {"Patient", "Encounter", "Condition", "Observation", "Immunization", "MedicationRequest",
            "Procedure", "DiagnosticReport"} <= set(by_type)
    # with R4 models: every Immunization, MedicationRequest, Observation (context, date, requester.agent)
    for rtype in ("Immunization", "MedicationRequest", "Observation", "Condition", "DiagnosticReport"):
        assert r4_rejects.get(rtype) == by_type[rtype], rtype
    assert 0 < r4_rejects["Encounter"] < by_type["Encounter"]  # the ones with a reason
    assert "Patient" not in r4_rejects  # unchanged between the versions


def test_stu3_bundles_map_to_the_r4_events(pairs: list[tuple[Resource, Resource]]) -> None:
    """Validated in full, an STU3 bundle yields exactly the events, descriptions and counts of its R4
    original (nothing differs in the elements the mapper reads), and no rejects where R4 had none."""
    for r4, stu3 in pairs:
        a = bundle_to_events(r4, validate="full", max_time_us=FAR)
        b = bundle_to_events(stu3, validate="full", max_time_us=FAR)
        assert b.rejects.num_rows == a.rejects.num_rows == 0
        assert b.events.num_rows > 0 and b.events.to_pylist() == a.events.to_pylist()
        assert b.summary.to_dict() == a.summary.to_dict() and b.descriptions == a.descriptions


def to_r5(r4: Resource) -> Resource:
    """The R5 form of an R4 resource of a type ehrfm maps, by the R4 -> R5 changes of the spec
    (R5 ``<type>-version-maps``), restricted to the elements Synthea writes:

    - Encounter: ``status: finished`` became ``completed``; ``class`` a list of CodeableConcepts; ``period``
      became ``actualPeriod``, ``hospitalization`` ``admission``, ``participant.individual``
      ``participant.actor``; ``reasonCode`` became ``reason[].value[]`` (CodeableReference);
    - Procedure: ``performed[x]`` became ``occurrence[x]``;
    - Procedure, MedicationRequest: ``reasonCode``, ``reasonReference`` became ``reason`` (CodeableReference);
    - MedicationRequest: ``medication[x]`` became ``medication`` (CodeableReference);
      ``Dosage.asNeededBoolean`` became ``asNeeded``.
    """
    res = copy.deepcopy(r4)
    rtype = res["resourceType"]
    if rtype in ("Procedure", "MedicationRequest"):
        reasons = ([{"concept": c} for c in res.pop("reasonCode", [])]
                   + [{"reference": r} for r in res.pop("reasonReference", [])])
        if reasons:
            res["reason"] = reasons
    if rtype == "Encounter":
        if res.get("status") == "finished":
            res["status"] = "completed"
        if isinstance(res.get("class"), dict):
            res["class"] = [{"coding": [res["class"]]}]
        _move(res, "period", "actualPeriod")
        _move(res, "hospitalization", "admission")
        for part in res.get("participant", []):
            _move(part, "individual", "actor")
        if "reasonCode" in res:
            res["reason"] = [{"value": [{"concept": c} for c in res.pop("reasonCode")]}]
    elif rtype == "Procedure":
        _move(res, "performedPeriod", "occurrencePeriod")
        _move(res, "performedDateTime", "occurrenceDateTime")
    elif rtype == "MedicationRequest":
        if "medicationCodeableConcept" in res:
            res["medication"] = {"concept": res.pop("medicationCodeableConcept")}
        if "medicationReference" in res:
            res["medication"] = {"reference": res.pop("medicationReference")}
        for dosage in res.get("dosageInstruction", []):
            _move(dosage, "asNeededBoolean", "asNeeded")
    return res


def test_r5_rewrites_validate_as_r5_and_map_to_the_r4_events(pairs: list[tuple[Resource, Resource]]) -> None:
    """R5 rewrites of the same real bundles: valid for the R5 models, detected as R5 where their shape
    changed, accepted by ``--validate full``, and mapped to the events of the R4 originals."""
    detected: dict[str, set[str]] = {}
    for r4, _ in pairs[:3]:
        r5 = {**r4, "entry": [{**e, "resource": to_r5(e["resource"])} for e in r4["entry"]]}
        for res in _mapped(r5):
            model_class("R5", res["resourceType"]).model_validate(res)  # raises when the rewrite is not R5
            detected.setdefault(res["resourceType"], set()).add(detect(res, RULES))
        a = bundle_to_events(r4, validate="full", max_time_us=FAR)
        b = bundle_to_events(r5, validate="full", max_time_us=FAR)
        assert b.rejects.num_rows == 0 and b.events.num_rows > 0
        assert b.events.to_pylist() == a.events.to_pylist() and b.summary.to_dict() == a.summary.to_dict()
    assert detected["Encounter"] == detected["Procedure"] == {"R5"}
    assert detected["MedicationRequest"] == {"R5"}


# STU3 examples written out from the STU3 specification (hl7.org/fhir/STU3/<type>-example*.json), trimmed
# to the elements that differ from R4; fhir.resources does not ship them.
SPEC_EXAMPLES: list[Resource] = [
    {"resourceType": "Immunization", "id": "notGiven", "status": "completed", "notGiven": True,
     "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "01", "display": "DTP"}]},
     "patient": {"reference": "Patient/example"}, "date": "2013-01-10", "primarySource": True,
     "explanation": {"reasonNotGiven": [{"coding": [{"system": "http://hl7.org/fhir/v3/ActReason",
                                                     "code": "MEDPREC"}]}]}},
    {"resourceType": "Condition", "id": "example", "clinicalStatus": "active",
     "verificationStatus": "confirmed",
     "category": [{"coding": [{"system": "http://hl7.org/fhir/condition-category",
                               "code": "encounter-diagnosis"}]}],
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "39065001"}]},
     "subject": {"reference": "Patient/example"}, "onsetDateTime": "2012-05-24"},
    {"resourceType": "MedicationRequest", "id": "medrx0302", "status": "active", "intent": "order",
     "medicationReference": {"reference": "#med0310"}, "subject": {"reference": "Patient/pat1"},
     "context": {"reference": "Encounter/f001"}, "authoredOn": "2015-01-15",
     "requester": {"agent": {"reference": "Practitioner/f007"},
                   "onBehalfOf": {"reference": "Organization/f002"}},
     "dosageInstruction": [{"sequence": 1, "text": "6 mg PO daily for remission induction",
                            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                            "doseQuantity": {"value": 6, "unit": "mg", "system": "http://unitsofmeasure.org",
                                             "code": "mg"}}],
     "contained": [{"resourceType": "Medication", "id": "med0310",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "430127000"}]}}]},
    {"resourceType": "Encounter", "id": "f201", "status": "finished",
     "class": {"system": "http://hl7.org/fhir/v3/ActCode", "code": "AMB"},
     "subject": {"reference": "Patient/f201"}, "period": {"start": "2014-01-17", "end": "2014-01-17"},
     "reason": [{"coding": [{"system": "http://snomed.info/sct", "code": "34068001"}]}],
     "hospitalization": {"admitSource": {"text": "referral"}}},
    {"resourceType": "Procedure", "id": "f201", "status": "completed", "notDone": False,
     "subject": {"reference": "Patient/f201"}, "context": {"reference": "Encounter/f202"},
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "367336001"}]},
     "performedPeriod": {"start": "2013-01-28T13:31:00+01:00", "end": "2013-01-28T14:27:00+01:00"}},
]


def test_spec_examples_are_stu3_and_valid() -> None:
    """The STU3 spec examples are detected as STU3 and validate; the R4 models reject each of them."""
    for res in SPEC_EXAMPLES:
        assert detect(res, RULES) == "STU3", res["id"]
        assert validate_resource_reference(res, RULES) is None, res["id"]
        with validator_engine("fast"):
            assert validate_resource(res, RULES) is None, res["id"]
        assert validate_resource_reference(res, RULES, "R4") is not None, res["id"]


@pytest.mark.spark
def test_spark_validate_full_on_an_stu3_export(spark: Any, pairs: list[tuple[Resource, Resource]],
                                               tmp_path: Path) -> None:
    """The population path (Spark, ``--validate full``) on an STU3 export of gzip bundles: no rejects, and
    the events of the R4 originals."""
    folder = tmp_path / "stu3"
    folder.mkdir()
    for i, (_, stu3) in enumerate(pairs[:3]):
        (folder / f"b{i}.json.gz").write_bytes(gzip.compress(json.dumps(stu3).encode()))
    summary = spark_ingest.ingest_fhir(spark, [str(folder)], str(tmp_path / "out"), max_time_us=FAR,
                                       validate="full")
    assert summary["reconciled"] and summary["totals"]["rejected"] == 0
    got = sort_events(pq.read_table(tmp_path / "out" / "data").select(EVENT_COLUMNS).cast(EVENTS_SCHEMA))
    want = sort_events(pa.concat_tables(
        [bundle_to_events(r4, validate="none", max_time_us=FAR).events for r4, _ in pairs[:3]]))
    assert got.num_rows == want.num_rows > 0 and got.to_pylist() == want.to_pylist()
    # fhir_version=R4: every resource validated with the R4 models, the STU3-shaped ones rejected
    forced = spark_ingest.ingest_fhir(spark, [str(folder)], str(tmp_path / "out_r4"), max_time_us=FAR,
                                      validate="full", fhir_version="R4")
    expected = sum(validate_resource_reference(res, RULES, "R4") is not None
                   for _, stu3 in pairs[:3] for res in _mapped(stu3))
    assert forced["reconciled"] and forced["fhir_version"] == "R4"
    assert forced["totals"]["rejected"] >= expected > 0  # (and the records of subjects whose Patient failed)


def test_fhir_version_setting() -> None:
    """``fhir_version``: a version for every resource of a run (one-patient path and config), checked."""
    stu3 = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"},
        {"resourceType": "Immunization", "id": "i1", "status": "completed", "notGiven": False,
         "primarySource": True, "patient": PAT, "vaccineCode": CVX, "date": "2015-06-01"}]]}
    assert bundle_to_events(stu3, validate="full", fhir_version="auto").rejects.num_rows == 0
    assert bundle_to_events(stu3, validate="full", fhir_version="STU3").rejects.num_rows == 0
    (rej,) = bundle_to_events(stu3, validate="full", fhir_version="R4").rejects.to_pylist()
    assert rej["resource_id"] == "i1" and rej["reason"].startswith("invalid R4B Immunization")
    with pytest.raises(ValueError, match="fhir_version"):
        bundle_to_events(stu3, fhir_version="DSTU2")
    assert FhirIngestConfig().fhir_version == "auto"
    assert FhirIngestConfig(fhir_version="STU3").fhir_version == "STU3"
    with pytest.raises(ConfigError, match="fhir_version"):
        FhirIngestConfig.from_dict({"fhir_version": "DSTU2"})
