"""A deterministic clinical dataset for the search benchmark: Patients and what refers to them.

Per Patient, on average: 1.5 RelatedPerson, 1 Consent (its provision actor is a RelatedPerson),
5 Encounters, 32.5 Observations (each in one of the Encounters), 3 Conditions, 4
MedicationRequests, 3 Immunizations and 2 Appointments (the Patient and a Practitioner as actors),
so 20,000 Patients make about 1.06 million resources; 200 Practitioners are shared by all.

The Practitioners go first, in a Bundle of their own; the server's ids for them are then written
into the Patients' Bundles as literal references. Everything of one Patient is in the same
transaction Bundle and refers to the rest of it by `urn:uuid:` full URLs, which the server resolves.
Everything comes from one seeded `random.Random`, so the same arguments give the same resources
(apart from the server's ids). `python -m bench.search_data 3` prints one Bundle of 3 Patients.
"""

from __future__ import annotations

import random
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from bench.patients import FAMILY, GIVEN, patient

SEED = 20241124
PATIENTS_PER_BUNDLE = 20  # about 1,060 entries
PRACTITIONERS = 200
MRN_SYSTEM = "http://hospital.example.org/mrn"
NATIONAL_ID_SYSTEM = "urn:oid:2.16.840.1.113883.4.1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
# Clinical data spans ten years.
FIRST_DAY = date(2015, 1, 1)
LAST_DAY = date(2024, 12, 31)


class Loinc(NamedTuple):
    code: str
    display: str
    unit: str  # UCUM
    low: float
    high: float
    decimals: int
    category: str  # observation-category


# fmt: off
OBSERVATION_CODES: tuple[Loinc, ...] = (
    Loinc("8867-4", "Heart rate", "/min", 50, 110, 0, "vital-signs"),
    Loinc("9279-1", "Respiratory rate", "/min", 12, 24, 0, "vital-signs"),
    Loinc("8310-5", "Body temperature", "Cel", 36.0, 38.6, 1, "vital-signs"),
    Loinc("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 170, 0, "vital-signs"),
    Loinc("8462-4", "Diastolic blood pressure", "mm[Hg]", 55, 105, 0, "vital-signs"),
    Loinc("29463-7", "Body weight", "kg", 45, 130, 1, "vital-signs"),
    Loinc("8302-2", "Body height", "cm", 145, 200, 1, "vital-signs"),
    Loinc("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 17, 40, 1, "vital-signs"),
    Loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 90, 100, 0, "vital-signs"),
    Loinc("2708-6", "Oxygen saturation in Arterial blood", "%", 90, 100, 0, "vital-signs"),
    Loinc("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 65, 220, 0, "laboratory"),
    Loinc("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.5, 10.5, 1, "laboratory"),
    Loinc("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10.5, 17.5, 1, "laboratory"),
    Loinc("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 33, 52, 1, "laboratory"),
    Loinc("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.5, 12, 1, "laboratory"),
    Loinc("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 3.8, 6.0, 2, "laboratory"),
    Loinc("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 140, 420, 0, "laboratory"),
    Loinc("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 130, 290, 0, "laboratory"),
    Loinc("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 28, 95, 0, "laboratory"),
    Loinc("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL", 50, 200, 0, "laboratory"),
    Loinc("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 45, 320, 0, "laboratory"),
    Loinc("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6, 2, "laboratory"),
    Loinc("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 6, 26, 0, "laboratory"),
    Loinc("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 132, 148, 0, "laboratory"),
    Loinc("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.3, 5.4, 1, "laboratory"),
    Loinc("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 95, 109, 0, "laboratory"),
    Loinc("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 21, 31, 0, "laboratory"),
    Loinc("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.4, 10.6, 1, "laboratory"),
    Loinc("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 60, 0, "laboratory"),
    Loinc("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 10, 45, 0, "laboratory"),
    Loinc("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.3, 5.0, 2, "laboratory"),
)
CONDITIONS = (
    ("44054006", "Diabetes mellitus type 2"), ("38341003", "Hypertensive disorder, systemic arterial"),
    ("195967001", "Asthma"), ("13645005", "Chronic obstructive lung disease"),
    ("55822004", "Hyperlipidemia"), ("49436004", "Atrial fibrillation"),
    ("35489007", "Depressive disorder"), ("197480006", "Anxiety disorder"),
    ("444814009", "Viral sinusitis"), ("10509002", "Acute bronchitis"),
    ("162864005", "Body mass index 30+ - obesity"), ("239873007", "Osteoarthritis of knee"),
    ("431855005", "Chronic kidney disease stage 1"), ("233604007", "Pneumonia"),
    ("22298006", "Myocardial infarction"), ("230690007", "Cerebrovascular accident"),
    ("271737000", "Anemia"), ("68496003", "Polyp of colon"),
)
MEDICATIONS = (
    ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"), ("197361", "amlodipine 5 MG Oral Tablet"),
    ("259255", "atorvastatin 80 MG Oral Tablet"), ("312961", "simvastatin 20 MG Oral Tablet"),
    ("310798", "hydrochlorothiazide 25 MG Oral Tablet"), ("310965", "ibuprofen 200 MG Oral Tablet"),
    ("313782", "acetaminophen 325 MG Oral Tablet"), ("308182", "amoxicillin 250 MG Oral Capsule"),
    ("834061", "penicillin V potassium 250 MG Oral Tablet"),
    ("855332", "warfarin sodium 5 MG Oral Tablet"),
    ("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("895994", "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler"),
)
VACCINES = (
    ("140", "Influenza, seasonal, injectable, preservative free"), ("115", "Tdap"),
    ("113", "Td (adult) preservative free"), ("133", "Pneumococcal conjugate PCV 13"),
    ("33", "pneumococcal polysaccharide vaccine, 23 valent"), ("62", "HPV, quadrivalent"),
    ("121", "zoster"), ("03", "MMR"), ("21", "varicella"), ("08", "Hep B, adolescent or pediatric"),
    ("83", "Hep A, ped/adol, 2 dose"), ("10", "IPV"), ("114", "meningococcal MCV4P"),
    ("208", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose"),
)
ENCOUNTER_CLASSES = (
    ("AMB", "ambulatory", 70), ("EMER", "emergency", 10), ("IMP", "inpatient encounter", 8),
    ("VR", "virtual", 12),
)
ENCOUNTER_TYPES = (
    ("185349003", "Encounter for check up (procedure)"),
    ("162673000", "General examination of patient (procedure)"),
    ("185345009", "Encounter for symptom (procedure)"),
    ("390906007", "Follow-up encounter (procedure)"),
    ("50849002", "Emergency room admission (procedure)"),
    ("183452005", "Emergency hospital admission (procedure)"),
)
RELATIONSHIPS = (
    ("MTH", "mother", "female"), ("FTH", "father", "male"), ("SPS", "spouse", None),
    ("CHILD", "child", None), ("SIS", "sister", "female"), ("BRO", "brother", "male"),
)
APPOINTMENT_TYPES = (("ROUTINE", "Routine appointment"), ("FOLLOWUP", "A follow up visit"),
                     ("CHECKUP", "A routine check-up"), ("WALKIN", "A previously unscheduled walk-in visit"))
# fmt: on
MED_STATUS = ("active", "completed", "completed", "completed", "stopped", "active")


@dataclass(slots=True)
class PatientFacts:
    """What the queries draw their parameter values from, for one generated Patient."""

    number: int
    mrn: str
    family: str
    birth_date: str
    codes: bytes  # OBSERVATION_CODES index of each of its Observations
    first_day: date  # of its Observations
    last_day: date
    id: str = ""  # the server's id, set once its Bundle is stored


@dataclass(slots=True)
class Chunk:
    """One transaction Bundle and what it holds."""

    bundle: dict[str, Any]
    patients: list[tuple[int, PatientFacts]]  # (entry index of the Patient, its facts)
    counts: Counter[str] = field(default_factory=Counter)


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if display:
        out["text"] = display
    return out


def instant(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Dataset:
    """The generator. Call `practitioners()` first, then `bundles()` with the server's ids."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)

    def _urn(self) -> str:
        return f"urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def _moment(self, day: date, first_hour: int = 7, last_hour: int = 18) -> datetime:
        minute = self.rng.randrange(first_hour * 60, last_hour * 60)
        return datetime(day.year, day.month, day.day, minute // 60, minute % 60)

    def _day(self, earliest: date, latest: date = LAST_DAY) -> date:
        earliest = max(earliest, FIRST_DAY)
        return earliest + timedelta(days=self.rng.randrange((latest - earliest).days + 1))

    def practitioners(self, count: int = PRACTITIONERS) -> dict[str, Any]:
        """A transaction Bundle creating `count` Practitioners."""
        rng = self.rng
        entries = []
        for n in range(count):
            gender = rng.choice(("female", "male"))
            family = rng.choice(FAMILY)
            given = rng.choice(GIVEN[gender])
            resource = {
                "resourceType": "Practitioner",
                "active": True,
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": f"99{n:08d}"}],
                "name": [
                    {"use": "official", "family": family, "given": [given], "prefix": ["Dr."]}
                ],
                "gender": gender,
                "telecom": [
                    {
                        "system": "email",
                        "value": f"{given.lower()}.{family.lower()}.{n}@hospital.example.org",
                        "use": "work",
                    }
                ],
            }
            entries.append(
                {
                    "fullUrl": self._urn(),
                    "resource": resource,
                    "request": {"method": "POST", "url": "Practitioner"},
                }
            )
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    def bundles(
        self,
        patients: int,
        practitioners: Sequence[str],
        per_bundle: int = PATIENTS_PER_BUNDLE,
    ) -> Iterator[Chunk]:
        """Transaction Bundles of `per_bundle` Patients each with everything that refers to them.
        `practitioners` are references such as `Practitioner/123`."""
        for start in range(0, patients, per_bundle):
            chunk = Chunk({"resourceType": "Bundle", "type": "transaction", "entry": []}, [])
            entries: list[dict[str, Any]] = chunk.bundle["entry"]
            for n in range(start, min(patients, start + per_bundle)):
                chunk.patients.append((len(entries), self._patient(n, practitioners, entries)))
            chunk.counts.update(e["resource"]["resourceType"] for e in entries)
            yield chunk

    def _add(self, entries: list[dict[str, Any]], resource: dict[str, Any]) -> str:
        urn = self._urn()
        entries.append(
            {
                "fullUrl": urn,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
        return urn

    def _patient(
        self, n: int, practitioners: Sequence[str], entries: list[dict[str, Any]]
    ) -> PatientFacts:
        """The `n`th Patient and its resources, appended to `entries`."""
        rng = self.rng
        resource = patient(rng, n)
        national = (n * 7919 + 123_456_789) % 1_000_000_000  # distinct for every n
        resource["identifier"].append(
            {
                "use": "official",
                "type": concept(f"{TERMINOLOGY}/v2-0203", "SS", "Social Security number"),
                "system": NATIONAL_ID_SYSTEM,
                "value": f"{national // 1_000_000:03d}-{national // 10_000 % 100:02d}-{national % 10_000:04d}",
            }
        )
        gp = rng.choice(practitioners)
        resource["generalPractitioner"] = [{"reference": gp}]
        subject = {"reference": self._add(entries, resource)}
        born = date.fromisoformat(resource["birthDate"])
        family = resource["name"][0]["family"]

        related = [self._related(entries, subject, family) for _ in range(rng.randint(1, 2))]
        self._consent(entries, subject, rng.choice(related), born)

        encounters: list[tuple[str, datetime]] = []
        codes: list[int] = []
        days: list[date] = []
        for _ in range(rng.randint(3, 7)):
            doctor = gp if rng.random() < 0.7 else rng.choice(practitioners)
            ref, start = self._encounter(entries, subject, doctor, born)
            encounters.append((ref, start))
            days.append(start.date())
            for index in rng.sample(range(len(OBSERVATION_CODES)), rng.randint(4, 9)):
                self._observation(entries, subject, ref, start, index)
                codes.append(index)
        for _ in range(rng.randint(1, 5)):
            self._condition(entries, subject, rng.choice(encounters), born)
        for _ in range(rng.randint(2, 6)):
            self._medication_request(entries, subject, rng.choice(encounters), practitioners)
        for _ in range(rng.randint(1, 5)):
            self._immunization(entries, subject, born)
        for _ in range(rng.randint(1, 3)):
            self._appointment(
                entries, subject, gp if rng.random() < 0.6 else rng.choice(practitioners)
            )
        return PatientFacts(
            number=n,
            mrn=resource["identifier"][0]["value"],
            family=family,
            birth_date=resource["birthDate"],
            codes=bytes(codes),
            first_day=min(days),
            last_day=max(days),
        )

    def _related(self, entries: list[dict[str, Any]], subject: dict[str, Any], family: str) -> str:
        rng = self.rng
        code, display, gender = rng.choice(RELATIONSHIPS)
        gender = gender or rng.choice(("female", "male"))
        given = rng.choice(GIVEN[gender])
        resource = {
            "resourceType": "RelatedPerson",
            "active": True,
            "patient": subject,
            "relationship": [concept(f"{TERMINOLOGY}/v3-RoleCode", code, display)],
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": gender,
            "telecom": [
                {
                    "system": "phone",
                    "value": f"+1-555-{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}",
                    "use": "mobile",
                }
            ],
        }
        return self._add(entries, resource)

    def _consent(
        self, entries: list[dict[str, Any]], subject: dict[str, Any], actor: str, born: date
    ) -> None:
        signed = self._moment(self._day(born))
        resource = {
            "resourceType": "Consent",
            "status": "active",
            "scope": concept(f"{TERMINOLOGY}/consentscope", "patient-privacy", "Privacy Consent"),
            "category": [concept(LOINC, "59284-0", "Patient Consent")],
            "patient": subject,
            "dateTime": instant(signed),
            "policyRule": concept(f"{TERMINOLOGY}/v3-ActCode", "OPTIN", "opt-in"),
            "provision": {
                "type": "permit",
                "period": {"start": signed.date().isoformat()},
                "actor": [
                    {
                        "role": concept(
                            f"{TERMINOLOGY}/v3-ParticipationType", "IRCP", "information recipient"
                        ),
                        "reference": {"reference": actor},
                    }
                ],
                "action": [concept(f"{TERMINOLOGY}/consentaction", "access", "Access")],
            },
        }
        self._add(entries, resource)

    def _encounter(
        self, entries: list[dict[str, Any]], subject: dict[str, Any], doctor: str, born: date
    ) -> tuple[str, datetime]:
        rng = self.rng
        code, display, _ = rng.choices(ENCOUNTER_CLASSES, [c[2] for c in ENCOUNTER_CLASSES])[0]
        start = self._moment(self._day(born))
        if code == "IMP":
            end = start + timedelta(days=rng.randint(1, 9), minutes=rng.randrange(0, 600))
            kind = ENCOUNTER_TYPES[5]
        elif code == "EMER":
            end = start + timedelta(minutes=rng.randrange(60, 480))
            kind = ENCOUNTER_TYPES[4]
        else:
            end = start + timedelta(minutes=rng.choice((15, 20, 30, 45, 60)))
            kind = rng.choice(ENCOUNTER_TYPES[:4])
        resource = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": coding(f"{TERMINOLOGY}/v3-ActCode", code, display),
            "type": [concept(SNOMED, *kind)],
            "subject": subject,
            "participant": [
                {
                    "type": [
                        concept(f"{TERMINOLOGY}/v3-ParticipationType", "PPRF", "primary performer")
                    ],
                    "individual": {"reference": doctor},
                }
            ],
            "period": {"start": instant(start), "end": instant(end)},
        }
        return self._add(entries, resource), start

    def _observation(
        self,
        entries: list[dict[str, Any]],
        subject: dict[str, Any],
        encounter: str,
        start: datetime,
        index: int,
    ) -> None:
        rng = self.rng
        loinc = OBSERVATION_CODES[index]
        taken = start + timedelta(minutes=rng.randrange(0, 30))
        value = round(rng.uniform(loinc.low, loinc.high), loinc.decimals)
        category = "Vital Signs" if loinc.category == "vital-signs" else "Laboratory"
        resource = {
            "resourceType": "Observation",
            "status": "final",
            "category": [concept(f"{TERMINOLOGY}/observation-category", loinc.category, category)],
            "code": concept(LOINC, loinc.code, loinc.display),
            "subject": subject,
            "encounter": {"reference": encounter},
            "effectiveDateTime": instant(taken),
            "issued": instant(taken + timedelta(minutes=rng.randrange(5, 240))),
            "valueQuantity": {
                "value": int(value) if loinc.decimals == 0 else value,
                "unit": loinc.unit,
                "system": UCUM,
                "code": loinc.unit,
            },
        }
        self._add(entries, resource)

    def _condition(
        self,
        entries: list[dict[str, Any]],
        subject: dict[str, Any],
        encounter: tuple[str, datetime],
        born: date,
    ) -> None:
        rng = self.rng
        code, display = rng.choice(CONDITIONS)
        resolved = rng.random() < 0.3
        in_encounter = rng.random() < 0.6
        onset = encounter[1] if in_encounter else self._moment(self._day(born))
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "clinicalStatus": concept(
                f"{TERMINOLOGY}/condition-clinical",
                *(("resolved", "Resolved") if resolved else ("active", "Active")),
            ),
            "verificationStatus": concept(
                f"{TERMINOLOGY}/condition-ver-status", "confirmed", "Confirmed"
            ),
            "category": [
                concept(
                    f"{TERMINOLOGY}/condition-category",
                    "encounter-diagnosis",
                    "Encounter Diagnosis",
                )
                if in_encounter
                else concept(
                    f"{TERMINOLOGY}/condition-category", "problem-list-item", "Problem List Item"
                )
            ],
            "code": concept(SNOMED, code, display),
            "subject": subject,
            "onsetDateTime": instant(onset),
            "recordedDate": instant(onset + timedelta(hours=rng.randrange(0, 48))),
        }
        if in_encounter:
            resource["encounter"] = {"reference": encounter[0]}
        if resolved:
            resource["abatementDateTime"] = instant(onset + timedelta(days=rng.randint(7, 400)))
        self._add(entries, resource)

    def _medication_request(
        self,
        entries: list[dict[str, Any]],
        subject: dict[str, Any],
        encounter: tuple[str, datetime],
        practitioners: Sequence[str],
    ) -> None:
        rng = self.rng
        code, display = rng.choice(MEDICATIONS)
        resource = {
            "resourceType": "MedicationRequest",
            "status": rng.choice(MED_STATUS),
            "intent": "order",
            "medicationCodeableConcept": concept(RXNORM, code, display),
            "subject": subject,
            "encounter": {"reference": encounter[0]},
            "authoredOn": instant(encounter[1] + timedelta(minutes=rng.randrange(5, 60))),
            "requester": {"reference": rng.choice(practitioners)},
            "dosageInstruction": [
                {
                    "sequence": 1,
                    "text": rng.choice(
                        (
                            "1 tablet by mouth once daily",
                            "1 tablet by mouth twice daily",
                            "2 puffs every 4 to 6 hours as needed",
                            "1 capsule by mouth three times daily for 10 days",
                        )
                    ),
                }
            ],
        }
        self._add(entries, resource)

    def _immunization(
        self, entries: list[dict[str, Any]], subject: dict[str, Any], born: date
    ) -> None:
        rng = self.rng
        code, display = rng.choice(VACCINES)
        resource = {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": concept(CVX, code, display),
            "patient": subject,
            "occurrenceDateTime": instant(self._moment(self._day(born))),
            "primarySource": True,
            "lotNumber": f"{rng.choice('ABCDEFGHJK')}{rng.randrange(10_000, 100_000)}",
        }
        self._add(entries, resource)

    def _appointment(
        self, entries: list[dict[str, Any]], subject: dict[str, Any], doctor: str
    ) -> None:
        rng = self.rng
        kind, display = rng.choice(APPOINTMENT_TYPES)
        day = self._day(FIRST_DAY, LAST_DAY + timedelta(days=365))  # some in the future
        start = datetime(
            day.year, day.month, day.day, rng.randrange(8, 17), rng.choice((0, 15, 30, 45))
        )
        minutes = rng.choice((15, 20, 30, 45))
        resource = {
            "resourceType": "Appointment",
            "status": "booked",
            "appointmentType": concept(f"{TERMINOLOGY}/v2-0276", kind, display),
            "description": display,
            "start": instant(start),
            "end": instant(start + timedelta(minutes=minutes)),
            "minutesDuration": minutes,
            "created": instant(start - timedelta(days=rng.randint(1, 60))),
            "participant": [
                {"actor": subject, "required": "required", "status": "accepted"},
                {"actor": {"reference": doctor}, "required": "required", "status": "accepted"},
            ],
        }
        self._add(entries, resource)


def main(argv: Sequence[str]) -> None:
    """Print one transaction Bundle of N Patients (Practitioners as placeholders) and its counts."""
    patients = int(argv[0]) if argv else 1
    data = Dataset()
    data.practitioners()
    chunk = next(
        data.bundles(patients, [f"Practitioner/p{i}" for i in range(PRACTITIONERS)], patients)
    )
    sys.stdout.buffer.write(orjson.dumps(chunk.bundle, option=orjson.OPT_INDENT_2) + b"\n")
    print(dict(chunk.counts.most_common()), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
