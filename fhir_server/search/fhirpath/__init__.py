"""Compile the FHIRPath subset of the R4 SearchParameters into plain Python accessors.

Interpreting FHIRPath per write costs about 30 µs per expression (fhirpathpy, DESIGN.md section 7),
which is more than the whole per-resource indexing budget. The R4 SearchParameter expressions use a
small subset of the language, so each expression is compiled once, at start, into closures that walk
the resource's JSON (dicts and lists) directly.

Supported: paths (``Observation.code.coding``), ``|`` unions, ``.where(criteria)``, ``as T``,
``.as(T)``, ``.ofType(T)``, ``[n]``, ``first()``, ``exists([criteria])``, ``empty()``, ``not()``,
``extension('url')``, ``=``/``!=`` against collections and literals, ``and``/``or``/``xor``/
``implies``, ``$this`` and ``%resource``, and ``resolve() is T`` as a reference-type test. Anything
else raises :class:`FhirPathUnsupported` when the expression is compiled, never a wrong answer
later.

Compilation is type-directed by the official R4 JSON Schema, so that FHIR choice elements work:
``Observation.effective`` reads ``effectiveDateTime``, ``effectivePeriod``, ``effectiveInstant``
and ``effectiveTiming``, and ``Observation.value as Quantity`` reads only ``valueQuantity``.
``as``/``ofType`` accept subtypes as FHIRPath says (``as Quantity`` also reads ``valueAge``;
``as uri`` also reads ``sourceCanonical``), as fhirpathpy and the FHIR type hierarchy do.

Decisions where this differs from a full FHIRPath engine, and why:

- ``resolve()`` never loads anything: ``x.resolve() is T`` is true when the Reference (or canonical)
  ``x`` names a resource of type ``T``: relative ``T/id``, absolute ``http://host/fhir/T/id``,
  versioned ``T/id/_history/v``. ``#id`` looks the type up among the resource's ``contained``
  resources. ``urn:uuid:``/``urn:oid:`` references, conditional references and identifier-only
  references have no type to test, so the test is false for them: a server rewrites transaction
  ``urn:uuid:`` references to ``T/id`` before it stores (and indexes) a resource.
- A System type name in a type test means the FHIR primitive of that name (``as DateTime`` is
  ``as dateTime``): the R4 composite ``Observation-code-value-date`` uses ``value.as(DateTime)`` and
  means ``valueDateTime``; a strict engine would select nothing there.
- ``X as T`` on a collection of several items filters like ``ofType`` instead of failing: R4
  expressions such as ``Observation.component.value as Quantity`` rely on it.
- A union does not remove duplicate values: the search index stores sets anyway, and comparing
  whole JSON objects for equality on every write is cost without benefit.
- Where FHIRPath would signal an error at run time (a boolean operator given several items), the
  accessor returns an empty collection: a stored resource must always be indexable.

The package, in the order the layers build on each other: ``base`` (the accessor types and the
error), ``lexer`` (tokens), ``parser`` (syntax tree), ``model`` (the type model read from the
JSON Schema), ``references`` (what a literal reference names), ``runtime`` (the closures a
compiled expression runs) and ``compiler`` (the syntax tree and the model in, closures out, and
the entry points re-exported here).
"""

from __future__ import annotations

from fhir_server.search.fhirpath.base import (
    Accessor,
    FhirPathUnsupported,
    RelativeAccessor,
    Resource,
)
from fhir_server.search.fhirpath.compiler import (
    compile_expression,
    compile_relative,
    restrict_expression,
    result_types,
    root_type,
    union_parts,
)
from fhir_server.search.fhirpath.model import PRIMITIVE_TYPES, element_keys
from fhir_server.search.fhirpath.references import reference_type, split_reference

__all__ = [
    "PRIMITIVE_TYPES",
    "Accessor",
    "FhirPathUnsupported",
    "RelativeAccessor",
    "Resource",
    "compile_expression",
    "compile_relative",
    "element_keys",
    "reference_type",
    "restrict_expression",
    "result_types",
    "root_type",
    "split_reference",
    "union_parts",
]
